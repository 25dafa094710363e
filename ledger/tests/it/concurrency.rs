//! Two handles racing appends: the chain stays linear, losers get typed conflicts.

use std::sync::Arc;

use baton_ledger::entry::EntryKind;
use baton_ledger::{audit, LedgerError, NewEntry};

use crate::common::{self, operator, TestDb};
use crate::dual;

/// Tasks per handle.
const TASKS_PER_HANDLE: usize = 6;
/// Successful appends each task makes.
const APPENDS_PER_TASK: usize = 8;
/// Entries per append.
const ENTRIES_PER_APPEND: usize = 3;
/// Retries before a task gives up (a livelock would fail the test, not hang it).
const RETRIES_MAX: usize = 1_000;

async fn conflict_is_typed_and_nothing_is_written(db: &TestDb) {
    let a = common::writer(&db.url).await;
    let b = common::writer(&db.url).await;
    let note = |s: &str| NewEntry::new(EntryKind::Note, None, s.as_bytes().to_vec());
    a.append(vec![note("a1")]).await.unwrap();
    b.append(vec![note("b1")]).await.unwrap(); // b loads the head (seq 1) fresh
                                               // a still believes the head is seq 1.
    let e = a.append(vec![note("a2"), note("a3")]).await.unwrap_err();
    assert!(
        matches!(
            e,
            LedgerError::Conflict {
                expected_head: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(a.head().await.unwrap().unwrap().seq, 2);
    // The loser reloaded the head; a retry succeeds and continues the chain.
    let r = a.append(vec![note("a2"), note("a3")]).await.unwrap();
    assert_eq!((r.first_seq, r.last_seq), (3, 4));
    audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
}
dual!(conflict_is_typed_and_nothing_is_written);

async fn racing_handles_keep_the_chain_linear(db: &TestDb) {
    let handles = [
        Arc::new(common::writer(&db.url).await),
        Arc::new(common::writer(&db.url).await),
    ];
    let mut tasks = Vec::new();
    for (h, ledger) in handles.iter().enumerate() {
        for t in 0..TASKS_PER_HANDLE {
            let ledger = Arc::clone(ledger);
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0usize;
                for i in 0..APPENDS_PER_TASK {
                    let batch: Vec<NewEntry> = (0..ENTRIES_PER_APPEND)
                        .map(|j| {
                            NewEntry::new(
                                EntryKind::Note,
                                None,
                                format!("h{h} t{t} i{i} j{j}").into_bytes(),
                            )
                        })
                        .collect();
                    let mut tries = 0;
                    loop {
                        match ledger.append(batch.clone()).await {
                            Ok(_) => break,
                            Err(LedgerError::Conflict { .. }) if tries < RETRIES_MAX => {
                                conflicts += 1;
                                tries += 1;
                            }
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                }
                conflicts
            }));
        }
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let expected = (2 * TASKS_PER_HANDLE * APPENDS_PER_TASK * ENTRIES_PER_APPEND) as u64;
    let head = handles[0].head().await.unwrap().unwrap();
    assert_eq!(head.seq, expected);
    let cps = handles[0].checkpoints().await.unwrap();
    assert_eq!(cps.len(), 2 * TASKS_PER_HANDLE * APPENDS_PER_TASK);
    let all = handles[0].entries(1, u64::MAX).await.unwrap();
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let report = audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
    assert_eq!(report.entries, expected);
    eprintln!("{:?}: {conflicts} conflicts, {report}", db.backend);
}
dual!(racing_handles_keep_the_chain_linear);
