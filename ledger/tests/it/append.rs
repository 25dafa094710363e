//! Append and read back.

use baton_ledger::entry::EntryKind;
use baton_ledger::{audit, Amount, Ledger, LedgerError, NewEntry, Posting, SettlementBody};

use crate::common::{self, interval_batch, operator, settlement, Backend, Participant, TestDb};
use crate::dual;

async fn round_trip(db: &TestDb) {
    let l = common::writer(&db.url).await;
    assert_eq!(l.head().await.unwrap(), None);
    assert_eq!(l.latest_checkpoint().await.unwrap(), None);
    let p1 = Participant::new(1);
    let batch = vec![p1.admit(), p1.order(0), p1.order(1)];
    let r1 = l.append(batch.clone()).await.unwrap();
    assert_eq!((r1.first_seq, r1.last_seq), (1, 3));
    assert_eq!(r1.checkpoint.size, 3);
    r1.checkpoint.verify(&operator().public_key()).unwrap();

    let r2 = l.append(interval_batch(300, 3)).await.unwrap();
    assert_eq!(
        (r2.first_seq, r2.last_seq),
        (4, 8),
        "gap-free after the first batch"
    );

    // Read back exactly what was written.
    let all = l.entries(1, u64::MAX).await.unwrap();
    assert_eq!(all.len(), 8);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.compute_hash(), e.hash);
    }
    for (e, n) in all
        .iter()
        .zip(batch.iter().chain(interval_batch(300, 3).iter()))
    {
        assert_eq!(
            (e.kind, e.interval_start, &e.body),
            (n.kind, n.interval_start, &n.body)
        );
    }
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert_eq!(l.entry(5).await.unwrap().unwrap(), all[4]);
    assert_eq!(l.entry(9).await.unwrap(), None);
    let head = l.head().await.unwrap().unwrap();
    assert_eq!((head.seq, head.hash), (8, all[7].hash));

    // One checkpoint per batch.
    let cps = l.checkpoints().await.unwrap();
    assert_eq!(cps.iter().map(|c| c.size).collect::<Vec<_>>(), vec![3, 8]);
    assert_eq!(l.latest_checkpoint().await.unwrap().unwrap(), r2.checkpoint);

    // Settlement read APIs.
    assert_eq!(l.intervals().await.unwrap(), vec![300]);
    assert!(l.has_interval(300).await.unwrap());
    assert!(!l.has_interval(600).await.unwrap());
    let b = l.balances().await.unwrap();
    // Postings: p0 +1.00, p1 +1.01, p2 +1.02, operator -3.03.
    assert_eq!(b["participant:p1"], Amount::from_minor(101));
    assert_eq!(b["operator:clearing"], Amount::from_minor(-303));
    let total = b
        .values()
        .try_fold(Amount::ZERO, |a, x| a.checked_add(*x))
        .unwrap();
    assert_eq!(total, Amount::ZERO);

    // A new handle picks up the head from the database and continues the chain.
    l.close().await;
    let l2 = common::writer(&db.url).await;
    let r3 = l2
        .append(vec![NewEntry::new(
            EntryKind::Note,
            None,
            b"hello".to_vec(),
        )])
        .await
        .unwrap();
    assert_eq!(r3.first_seq, 9);
    let report = audit::verify(&db.url, &operator().public_key(), Some(r1.checkpoint))
        .await
        .unwrap();
    assert_eq!(report.entries, 9);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.intervals, 1);
    assert_eq!(report.participant_signatures, 2);
    assert!(
        report.to_string().starts_with("ledger verified: 9 entries"),
        "{report}"
    );
    l2.close().await;
}
dual!(round_trip);

/// Regression (grpcio findings): verification counted only intervals with postings, so a
/// ledger of four recorded intervals that traded nothing reported "0 intervals".
async fn verify_counts_intervals_that_traded_nothing(db: &TestDb) {
    let l = common::writer(&db.url).await;
    for s in [300, 600, 900] {
        l.append(interval_batch(s, 0)).await.unwrap();
    }
    // An interval settled with no postings at all.
    let mut last = interval_batch(1200, 0);
    last.push(NewEntry::settlement(&SettlementBody {
        interval_start: 1200,
        postings: Vec::new(),
    }));
    l.append(last).await.unwrap();
    let report = audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
    assert_eq!(report.postings, 0);
    assert_eq!(report.intervals, 4);
    assert!(report.to_string().contains(", 4 intervals,"), "{report}");
    l.close().await;
}
dual!(verify_counts_intervals_that_traded_nothing);

async fn refuses_bad_batches(db: &TestDb) {
    let l = common::writer(&db.url).await;
    l.append(interval_batch(0, 1)).await.unwrap();
    let before = l.head().await.unwrap();

    // Postings of interval 300 sum to 0.01, not zero.
    let mut bad = interval_batch(300, 2);
    bad.push(NewEntry::settlement(&SettlementBody {
        interval_start: 300,
        postings: vec![Posting {
            account: "x".into(),
            amount: Amount::from_minor(1),
            memo: None,
        }],
    }));
    let e = l.append(bad).await.unwrap_err();
    assert!(
        matches!(e, LedgerError::NotZeroSum { interval_start: 300, sum: Some(s) } if s == Amount::from_minor(1)),
        "{e}"
    );

    // A settlement split so each entry is unbalanced but the batch is balanced is fine.
    let mut split = vec![];
    for (acct, cents) in [("a", 500), ("b", -200), ("c", -300)] {
        split.push(NewEntry::settlement(&SettlementBody {
            interval_start: 600,
            postings: vec![Posting {
                account: acct.into(),
                amount: Amount::from_minor(cents),
                memo: None,
            }],
        }));
    }
    l.append(split).await.unwrap();

    // Non-canonical body of a kind the ledger owns.
    let noncanon = NewEntry::new(
        EntryKind::Settlement,
        Some(900),
        br#"{"interval_start": 900, "postings": []}"#.to_vec(),
    );
    assert!(matches!(
        l.append(vec![noncanon]).await.unwrap_err(),
        LedgerError::Body { index: 0, .. }
    ));
    // Settlement whose body names another interval than the entry.
    let mut s = settlement(900, 0, 5);
    s.interval_start = Some(901);
    assert!(matches!(
        l.append(vec![s]).await.unwrap_err(),
        LedgerError::IntervalMismatch { index: 0, .. }
    ));
    // Correction of an entry that does not exist yet.
    let c = NewEntry::correction(
        None,
        &baton_ledger::CorrectionBody {
            corrects: vec![1000],
            details: None,
            reason: "typo".into(),
        },
    );
    assert!(matches!(
        l.append(vec![c]).await.unwrap_err(),
        LedgerError::BadCorrection { target: 1000, .. }
    ));
    assert!(matches!(
        l.append(vec![]).await.unwrap_err(),
        LedgerError::EmptyBatch
    ));

    // Nothing of the refused batches was written; the chain continues gap-free.
    assert_eq!(
        l.head().await.unwrap().unwrap().seq,
        before.unwrap().seq + 3
    );
    let ok = NewEntry::correction(
        None,
        &baton_ledger::CorrectionBody {
            corrects: vec![2],
            details: Some(serde_json::json!({"replaces": "result"})),
            reason: "wrong result recorded".into(),
        },
    );
    assert_eq!(l.append(vec![ok]).await.unwrap().first_seq, 7);
    audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();

    // A handle without the operator key cannot append.
    let ro = Ledger::open(&db.url).await.unwrap();
    assert!(matches!(
        ro.append(interval_batch(1200, 1)).await.unwrap_err(),
        LedgerError::ReadOnly
    ));
}
dual!(refuses_bad_batches);

/// Delivery settlements are zero-sum per interval like settlements, and their postings are
/// indexed and counted in the balances; a reading needs its interval.
async fn delivery_postings_are_zero_sum_and_indexed(db: &TestDb) {
    use baton_ledger::{readings_digest, DeliverySettlementBody, MeterReadingBody};
    let l = common::writer(&db.url).await;
    let delivery = |cents: [i64; 2]| {
        NewEntry::delivery_settlement(&DeliverySettlementBody {
            delivery: serde_json::json!({"interval_minutes": 5, "positions": []}),
            interval_start: 300,
            postings: cents
                .iter()
                .zip(["bob", "market-operator:imbalance"])
                .map(|(c, a)| Posting {
                    account: a.into(),
                    amount: Amount::from_minor(*c),
                    memo: Some("imbalance".into()),
                })
                .collect(),
            readings: 0,
            readings_digest: readings_digest([]),
            rules: serde_json::json!({}),
        })
    };
    let e = l.append(vec![delivery([-12, 11])]).await.unwrap_err();
    assert!(
        matches!(e, LedgerError::NotZeroSum { interval_start: 300, sum: Some(s) } if s == Amount::from_minor(-1)),
        "{e}"
    );
    let reading = MeterReadingBody {
        meter_id: None,
        participant_id: "bob".into(),
        payload: vec![1],
        signature: [0; 64],
    };
    let no_interval = NewEntry::new(
        baton_ledger::EntryKind::MeterReading,
        None,
        reading.to_bytes(),
    );
    assert!(l.append(vec![no_interval]).await.is_err());
    l.append(vec![delivery([-12, 12])]).await.unwrap();
    let balances = l.balances().await.unwrap();
    assert_eq!(balances["bob"], Amount::from_minor(-12));
    assert_eq!(
        balances["market-operator:imbalance"],
        Amount::from_minor(12)
    );
    let report = audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
    assert_eq!(report.postings, 2);
    l.close().await;
}
dual!(delivery_postings_are_zero_sum_and_indexed);

async fn database_rejects_update_and_delete(db: &TestDb) {
    let _l = common::standard_ledger(&db.url).await;
    let statements = [
        "UPDATE entries SET kind = 'note' WHERE seq = 3",
        "DELETE FROM entries WHERE seq = 18",
        "UPDATE postings SET amount = '9.99' WHERE seq = 9",
        "DELETE FROM postings WHERE seq = 9",
        "UPDATE checkpoints SET size = 99 WHERE size = 18",
        "DELETE FROM checkpoints WHERE size = 18",
    ];
    for s in statements {
        let e = db.raw(&[s]).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{s}: {e}");
    }
    if db.backend == Backend::Postgres {
        for t in ["entries", "postings", "checkpoints", "ledger_head"] {
            let s = format!("TRUNCATE {t} CASCADE");
            let e = db.raw(&[&s]).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{s}: {e}");
        }
        let e = db
            .raw(&["UPDATE ledger_head SET id = 1"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
}
dual!(database_rejects_update_and_delete);

#[tokio::test]
async fn unsupported_urls_and_missing_files_are_errors() {
    assert!(matches!(
        Ledger::open("mysql://localhost/x").await.unwrap_err(),
        LedgerError::UnsupportedUrl(_)
    ));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("absent.db").display());
    // Auditors never create a ledger by accident.
    assert!(Ledger::open_existing(&url).await.is_err());
    let f = audit::verify(&url, &operator().public_key(), None)
        .await
        .unwrap_err();
    assert_eq!(f.seq, 0);
    assert!(
        f.to_string().starts_with("ledger: cannot read the ledger"),
        "{f}"
    );
}
