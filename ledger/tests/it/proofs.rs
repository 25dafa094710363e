//! Inclusion and consistency proofs from a stored ledger; export.

use baton_ledger::audit::{self, ExportFormat, InclusionProof};

use crate::common::{self, operator, TestDb};
use crate::dual;

async fn inclusion_and_consistency_proofs(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let key = operator().public_key();
    let latest = l.latest_checkpoint().await.unwrap().unwrap();
    for seq in 1..=18 {
        let p = audit::prove_inclusion(&db.url, seq).await.unwrap();
        // A third party gets JSON and checks it against the published checkpoint.
        let json = serde_json::to_string(&p).unwrap();
        let p: InclusionProof = serde_json::from_str(&json).unwrap();
        p.verify(&latest, &key).unwrap();
        // Tampered entry or path fails.
        let mut bad = p.clone();
        bad.entry.body.push(b' ');
        assert!(bad.verify(&latest, &key).is_err());
        if !p.path.is_empty() {
            let mut bad = p.clone();
            bad.path[0][0] ^= 1;
            assert!(bad.verify(&latest, &key).is_err());
        }
    }
    assert!(audit::prove_inclusion(&db.url, 19).await.is_err());
    let other = baton_ledger::OperatorKey::from_seed(&[5; 32]).public_key();
    let p = l.inclusion_proof(3).await.unwrap();
    assert!(p.verify(&latest, &other).is_err());

    for old in l.checkpoints().await.unwrap() {
        let c = audit::prove_consistency(&db.url, old.size).await.unwrap();
        c.verify(&old, &latest, &key).unwrap();
        if !c.path.is_empty() {
            let mut bad = c.clone();
            bad.path[0][1] ^= 1;
            assert!(bad.verify(&old, &latest, &key).is_err());
        }
    }
}
dual!(inclusion_and_consistency_proofs);

async fn export_jsonl_and_csv(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    let mut out = Vec::new();
    let n = audit::export(&db.url, ExportFormat::Jsonl, 1, u64::MAX, &mut out)
        .await
        .unwrap();
    assert_eq!(n, 18);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 18);
    assert_eq!(lines[0]["kind"], "participant");
    assert_eq!(lines[8]["body"]["interval_start"], 300);
    let mut csv = Vec::new();
    let n = audit::export(&db.url, ExportFormat::Csv, 5, 9, &mut csv)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.lines().nth(1).unwrap().starts_with("5,order,,"));
}
dual!(export_jsonl_and_csv);

/// Leaves whose checkpoint sizes the next test uses: one checkpoint after every entry.
const BETWEEN_TREE_SIZE: u64 = 21;

async fn consistency_proofs_between_every_pair_of_checkpoints(db: &TestDb) {
    use baton_ledger::{merkle, EntryKind, LedgerError, NewEntry};
    let l = common::writer(&db.url).await;
    for i in 0..BETWEEN_TREE_SIZE {
        let note = NewEntry::new(EntryKind::Note, None, format!("note {i}").into_bytes());
        l.append(vec![note]).await.unwrap();
    }
    let key = operator().public_key();
    let hashes: Vec<_> = l
        .entries(1, BETWEEN_TREE_SIZE)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.hash)
        .collect();
    assert_eq!(hashes.len() as u64, BETWEEN_TREE_SIZE);
    for new in 1..=BETWEEN_TREE_SIZE {
        for old in 1..=new {
            let c = l.consistency_proof_between(old, new).await.unwrap();
            assert_eq!((c.old.size, c.new.size), (old, new));
            assert_eq!(c.old.root, merkle::root(&hashes[..old as usize]));
            assert_eq!(c.new.root, merkle::root(&hashes[..new as usize]));
            // The same path the merkle module computes over the same leaves.
            assert_eq!(
                c.proof.path,
                merkle::consistency_proof(&hashes[..new as usize], old).unwrap(),
                "({old}, {new})"
            );
            c.verify(&key).unwrap();
            if old == new {
                assert!(c.proof.path.is_empty());
            } else {
                // The proof does not link other trees: a flipped bit, or another old root.
                let mut bad = c.clone();
                bad.proof.path[0][3] ^= 1;
                assert!(bad.verify(&key).is_err(), "({old}, {new})");
                if old > 1 {
                    let other = l.consistency_proof_between(old - 1, new).await.unwrap();
                    let mut swapped = c.clone();
                    swapped.old = other.old;
                    assert!(swapped.verify(&key).is_err(), "({old}, {new})");
                }
            }
        }
    }
    // Refusals: a size without a checkpoint (0 included) and a backwards range.
    assert!(matches!(
        l.consistency_proof_between(0, 3).await,
        Err(LedgerError::NoCheckpointAt(0))
    ));
    assert!(matches!(
        l.consistency_proof_between(3, BETWEEN_TREE_SIZE + 1).await,
        Err(LedgerError::NoCheckpointAt(n)) if n == BETWEEN_TREE_SIZE + 1
    ));
    assert!(matches!(
        l.consistency_proof_between(5, 4).await,
        Err(LedgerError::ProofRange { old: 5, new: 4 })
    ));
    // The proof to the latest checkpoint still agrees.
    let latest = l.consistency_proof(7).await.unwrap();
    let between = l
        .consistency_proof_between(7, BETWEEN_TREE_SIZE)
        .await
        .unwrap();
    assert_eq!(latest, between.proof);
}
dual!(consistency_proofs_between_every_pair_of_checkpoints);

async fn verify_against_several_published_checkpoints(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let key = operator().public_key();
    let all = l.checkpoints().await.unwrap();
    let r = audit::verify_published(&db.url, &key, all.clone(), Default::default())
        .await
        .unwrap();
    assert_eq!(r.published_count, 4);
    assert!(
        r.to_string()
            .ends_with("consistent with 4 published checkpoints"),
        "{r}"
    );
    // One forged root among them is named by its size.
    let mut forged = all.clone();
    let k = operator();
    forged[1] = baton_ledger::Checkpoint::sign(&k, &forged[1].origin, 10, [9; 32]).unwrap();
    let f = audit::verify_published(&db.url, &key, forged, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        (f.seq, f.reason),
        (10, audit::FailureReason::PublishedRootMismatch { size: 10 })
    );
}
dual!(verify_against_several_published_checkpoints);
