//! Tampering behind the program's back is detected, and the right seq is named.
//!
//! Every case starts from `common::standard_ledger` (18 entries, checkpoints at 6, 10, 14, 18),
//! drops the append-only triggers with raw SQL, and edits the tables directly.

use baton_ledger::audit::{self, FailureReason, VerifyFailure};
use baton_ledger::entry::entry_hash;
use baton_ledger::{Checkpoint, NewEntry, OperatorKey, PublicKey};

use crate::common::{self, operator, Participant, TestDb};
use crate::dual;

fn key() -> PublicKey {
    operator().public_key()
}

async fn verify(db: &TestDb, published: Option<Checkpoint>) -> Result<(), VerifyFailure> {
    audit::verify(&db.url, &key(), published).await.map(|_| ())
}

async fn changed_body_byte(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let mut body = l.entry(12).await.unwrap().unwrap().body;
    body[20] ^= 0x01;
    db.drop_triggers().await;
    db.raw(&[&format!(
        "UPDATE entries SET body = {} WHERE seq = 12",
        db.blob(&body)
    )])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 12, "{f}");
    assert_eq!(f.reason, FailureReason::HashMismatch);
    assert_eq!(
        f.to_string(),
        "seq 12: stored hash does not match the entry's contents"
    );
}
dual!(changed_body_byte);

async fn changed_amount_in_body_and_postings(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    // Seq 9 is interval 300's first settlement: p0 +1.00 / operator -1.00.
    let body = String::from_utf8(l.entry(9).await.unwrap().unwrap().body).unwrap();
    assert!(body.contains(r#""amount":"1.00""#), "{body}");
    let forged = body
        .replace(r#""amount":"1.00""#, r#""amount":"9.00""#)
        .replace(r#""amount":"-1.00""#, r#""amount":"-9.00""#);
    db.drop_triggers().await;
    db.raw(&[
        &format!(
            "UPDATE entries SET body = {} WHERE seq = 9",
            db.blob(forged.as_bytes())
        ),
        "UPDATE postings SET amount = '9.00' WHERE seq = 9 AND idx = 0",
        "UPDATE postings SET amount = '-9.00' WHERE seq = 9 AND idx = 1",
    ])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!((f.seq, &f.reason), (9, &FailureReason::HashMismatch), "{f}");
}
dual!(changed_amount_in_body_and_postings);

async fn changed_amount_in_postings_table_only(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    db.drop_triggers().await;
    // Seq 10: p1 +1.01 / operator -1.01. Move money in the query index only, keeping the sum.
    db.raw(&[
        "UPDATE postings SET amount = '5.01' WHERE seq = 10 AND idx = 0",
        "UPDATE postings SET amount = '-5.01' WHERE seq = 10 AND idx = 1",
    ])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 10, "{f}");
    assert!(
        matches!(f.reason, FailureReason::PostingsMismatch(_)),
        "{f}"
    );
}
dual!(changed_amount_in_postings_table_only);

async fn deleted_middle_entry(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    db.drop_triggers().await;
    db.raw(&["DELETE FROM entries WHERE seq = 8"])
        .await
        .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 8, "{f}");
    assert_eq!(f.reason, FailureReason::Missing { next: Some(9) });
    assert_eq!(
        f.to_string(),
        "seq 8: entry missing (next stored entry is 9)"
    );
}
dual!(deleted_middle_entry);

async fn swapped_entries(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    db.drop_triggers().await;
    db.raw(&[
        "UPDATE entries SET seq = 1000 WHERE seq = 4",
        "UPDATE entries SET seq = 4 WHERE seq = 3",
        "UPDATE entries SET seq = 3 WHERE seq = 1000",
    ])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(
        (f.seq, &f.reason),
        (3, &FailureReason::ChainBroken { previous: 2 }),
        "{f}"
    );
    assert_eq!(
        f.to_string(),
        "seq 3: hash chain broken (prev_hash does not match entry 2)"
    );
}
dual!(swapped_entries);

async fn inserted_forged_entry(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    // A well-formed entry that continues the chain correctly, but no checkpoint covers it
    // (the attacker cannot sign one).
    let head = l.head().await.unwrap().unwrap();
    let body = b"forged payout".to_vec();
    let hash = entry_hash(&head.hash, 19, "note", None, &body);
    db.drop_triggers().await;
    db.raw(&[&format!(
        "INSERT INTO entries (seq, kind, interval_start, body, prev_hash, hash) \
         VALUES (19, 'note', NULL, {}, {}, {})",
        db.blob(&body),
        db.blob(&head.hash),
        db.blob(&hash)
    )])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 19, "{f}");
    assert_eq!(
        f.reason,
        FailureReason::Uncovered {
            last_checkpoint: 18
        }
    );
}
dual!(inserted_forged_entry);

async fn rewritten_history_with_recomputed_chain(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    // A careful attacker rewrites entry 12 and recomputes every later hash, so the chain is
    // internally consistent; only the operator-signed checkpoint roots betray it.
    let published = l.latest_checkpoint().await.unwrap().unwrap();
    let entries = l.entries(1, 18).await.unwrap();
    db.drop_triggers().await;
    let mut prev = entries[10].hash;
    let mut stmts = Vec::new();
    for e in &entries[11..] {
        let mut body = e.body.clone();
        if e.seq == 12 {
            body = Participant::new(9).signed(99).to_bytes();
        }
        let h = entry_hash(&prev, e.seq, e.kind.as_str(), e.interval_start, &body);
        stmts.push(format!(
            "UPDATE entries SET body = {}, prev_hash = {}, hash = {} WHERE seq = {}",
            db.blob(&body),
            db.blob(&prev),
            db.blob(&h),
            e.seq
        ));
        prev = h;
    }
    let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
    db.raw(&refs).await.unwrap();
    let f = verify(db, Some(published)).await.unwrap_err();
    // Entry 12 now names an unknown participant p9 — the first inconsistency in order.
    assert_eq!(f.seq, 12, "{f}");
    assert!(
        matches!(f.reason, FailureReason::UnknownParticipant(_)),
        "{f}"
    );
}
dual!(rewritten_history_with_recomputed_chain);

async fn rewritten_opaque_entry_caught_by_checkpoint_root(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    // Rewrite seq 16 (interval 600's opaque result) and recompute hashes 16..=18.
    let entries = l.entries(1, 18).await.unwrap();
    db.drop_triggers().await;
    let mut prev = entries[14].hash;
    let mut stmts = Vec::new();
    for e in &entries[15..] {
        let body = if e.seq == 16 {
            b"a different clearing result".to_vec()
        } else {
            e.body.clone()
        };
        let h = entry_hash(&prev, e.seq, e.kind.as_str(), e.interval_start, &body);
        stmts.push(format!(
            "UPDATE entries SET body = {}, prev_hash = {}, hash = {} WHERE seq = {}",
            db.blob(&body),
            db.blob(&prev),
            db.blob(&h),
            e.seq
        ));
        prev = h;
    }
    let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
    db.raw(&refs).await.unwrap();
    let f = verify(db, None).await.unwrap_err();
    // The checkpoint covering 15..=18 ends at 18; its signed root no longer matches.
    assert_eq!(
        (f.seq, &f.reason),
        (18, &FailureReason::CheckpointRoot),
        "{f}"
    );
}
dual!(rewritten_opaque_entry_caught_by_checkpoint_root);

async fn truncated_tail_versus_published_checkpoint(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let published = l.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(published.size, 18);
    let note = published.to_note();
    db.drop_triggers().await;
    db.raw(&[
        "DELETE FROM postings WHERE seq > 14",
        "DELETE FROM entries WHERE seq > 14",
        "DELETE FROM checkpoints WHERE size > 14",
    ])
    .await
    .unwrap();
    // Internally the truncated ledger is consistent…
    verify(db, None).await.unwrap();
    // …but not with what the operator published.
    let published = Checkpoint::from_note(&note).unwrap();
    let f = verify(db, Some(published)).await.unwrap_err();
    assert_eq!(f.seq, 15, "{f}");
    assert_eq!(f.reason, FailureReason::PublishedTruncated { size: 18 });
}
dual!(truncated_tail_versus_published_checkpoint);

async fn wrong_operator_key(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    let other = OperatorKey::from_seed(&[2; 32]).public_key();
    let f = audit::verify(&db.url, &other, None).await.unwrap_err();
    // The first checkpoint ends at seq 6.
    assert_eq!(f.seq, 6, "{f}");
    assert!(
        matches!(f.reason, FailureReason::CheckpointSignature(_)),
        "{f}"
    );
}
dual!(wrong_operator_key);

async fn forged_checkpoint_signature(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    db.drop_triggers().await;
    db.raw(&[&format!(
        "UPDATE checkpoints SET signature = {} WHERE size = 10",
        db.blob(&[7u8; 64])
    )])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 10, "{f}");
    assert!(
        matches!(f.reason, FailureReason::CheckpointSignature(_)),
        "{f}"
    );
}
dual!(forged_checkpoint_signature);

async fn forged_participant_signature(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let (p1, p2) = (Participant::new(1), Participant::new(2));
    // 1,500 valid orders (more than one verification batch) with one forgery among them:
    // p2's order signed by p1's key, at batch index 1,200 → seq 18 + 1 + 1,200 = 1,219.
    let mut batch: Vec<NewEntry> = (0..1500).map(|i| p1.order(100 + i)).collect();
    let mut forged = p2.signed(7);
    forged.signature = ed25519_dalek::Signer::sign(&p1.key, &forged.payload).to_bytes();
    batch[1200] = NewEntry::order(None, &forged);
    l.append(batch).await.unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 1219, "{f}");
    assert_eq!(
        f.reason,
        FailureReason::BadParticipantSignature("p2".into())
    );
    // Without participant checks the rest of the ledger is fine.
    audit::verify_with(
        &db.url,
        &key(),
        None,
        audit::VerifyOptions {
            participant_signatures: false,
        },
    )
    .await
    .unwrap();
}
dual!(forged_participant_signature);

async fn order_from_suspended_participant(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    let p1 = Participant::new(1);
    l.append(vec![p1.suspend(), p1.order(50)]).await.unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 20, "{f}");
    assert_eq!(f.reason, FailureReason::ParticipantSuspended("p1".into()));
}
dual!(order_from_suspended_participant);

async fn extra_postings_row(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    db.drop_triggers().await;
    // Seq 7 is interval 300's (opaque) input: it has no postings. Sneak a payout into the index.
    db.raw(&[
        "INSERT INTO postings (seq, idx, account, amount, interval_start) \
         VALUES (7, 0, 'participant:mallory', '1000.00', 300)",
    ])
    .await
    .unwrap();
    let f = verify(db, None).await.unwrap_err();
    assert_eq!(f.seq, 7, "{f}");
    assert!(
        matches!(f.reason, FailureReason::PostingsMismatch(_)),
        "{f}"
    );
}
dual!(extra_postings_row);

async fn tampered_frontier_cache_stops_the_writer(db: &TestDb) {
    let l = common::standard_ledger(&db.url).await;
    l.close().await;
    db.drop_triggers().await;
    // The writer's cached Merkle frontier is not trusted: a restarted writer checks it against
    // the signed root before extending the tree.
    db.raw(&[&format!(
        "UPDATE checkpoints SET frontier = {} WHERE size = 18",
        db.blob(&[0u8; 64])
    )])
    .await
    .unwrap();
    let w = common::writer(&db.url).await;
    let e = w.append(common::interval_batch(900, 1)).await.unwrap_err();
    assert!(matches!(e, baton_ledger::LedgerError::Corrupt(_)), "{e}");
    // The verifier ignores the cache: the ledger itself is intact.
    verify(db, None).await.unwrap();
}
dual!(tampered_frontier_cache_stops_the_writer);

async fn operator_rewrites_history_and_re_signs(db: &TestDb) {
    // The operator itself (holding the real key) publishes checkpoint 18 of one history…
    let published = {
        let other = TestDb::sqlite().await;
        let l = common::standard_ledger(&other.url).await;
        l.latest_checkpoint().await.unwrap().unwrap()
    };
    // …and later presents a ledger where interval 600's result (seq 16) is different, with
    // every hash and checkpoint validly recomputed and re-signed.
    let l = common::writer(&db.url).await;
    let (p1, p2) = (Participant::new(1), Participant::new(2));
    let mut b1 = vec![p1.admit(), p2.admit()];
    for i in 0..4 {
        b1.push(if i % 2 == 0 { p1.order(i) } else { p2.order(i) });
    }
    l.append(b1).await.unwrap();
    l.append(common::interval_batch(300, 2)).await.unwrap();
    let b3 = (4..8)
        .map(|i| if i % 2 == 0 { p1.order(i) } else { p2.order(i) })
        .collect();
    l.append(b3).await.unwrap();
    let mut b4 = common::interval_batch(600, 2);
    b4[1].body = b"a more convenient result".to_vec();
    l.append(b4).await.unwrap();
    // Internally consistent and correctly signed…
    verify(db, None).await.unwrap();
    // …but not the history that was published.
    let f = verify(db, Some(published)).await.unwrap_err();
    assert_eq!(f.seq, 18, "{f}");
    assert_eq!(f.reason, FailureReason::PublishedRootMismatch { size: 18 });
    assert!(f.to_string().contains("history was rewritten"), "{f}");
}
dual!(operator_rewrites_history_and_re_signs);
