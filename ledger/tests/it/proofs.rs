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
