//! Crash atomicity: a child process appending interval batches is killed with SIGKILL
//! mid-write; afterwards the ledger verifies and every recorded interval is complete.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_ledger::{audit, Ledger};

use crate::common::{self, interval_batch, operator, TestDb};
use crate::dual;

/// Env var that turns `crash_child` into the writer process; holds the database URL.
const CHILD_ENV: &str = "BATON_LEDGER_CRASH_CHILD";
/// Settlement entries per interval; plus input and result that makes the batch size.
const SETTLEMENTS_PER_INTERVAL: u64 = 2_998;
const ENTRIES_PER_INTERVAL: u64 = SETTLEMENTS_PER_INTERVAL + 2;
/// Intervals the child writes at most (it is killed long before).
const CHILD_INTERVALS_MAX: i64 = 10_000;
/// Complete intervals to wait for (per round) before killing the child.
const INTERVALS_BEFORE_KILL: u64 = 2;
/// Spawn-and-kill rounds: each kill lands at a different point of a batch.
const KILL_ROUNDS: u64 = 3;
/// Give up waiting for the child after this long.
const CHILD_WAIT_S: u64 = 120;

/// The child: appends interval batches until killed. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let l = common::writer(&url).await;
        // Continue after the intervals earlier children completed.
        let done = l.head().await.unwrap().map_or(0, |h| h.seq) / ENTRIES_PER_INTERVAL;
        for i in done as i64..CHILD_INTERVALS_MAX {
            l.append(interval_batch(i * 300, SETTLEMENTS_PER_INTERVAL))
                .await
                .unwrap();
        }
    });
}

async fn killed_writer_leaves_only_whole_intervals(db: &TestDb) {
    // Create the schema first so the child never races the migration.
    Ledger::open(&db.url).await.unwrap().close().await;
    let reader = Ledger::open_existing(&db.url).await.unwrap();
    for round in 0..KILL_ROUNDS {
        let before = reader.head().await.unwrap().map_or(0, |h| h.seq);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let seq = reader.head().await.unwrap().map_or(0, |h| h.seq);
            if seq >= before + INTERVALS_BEFORE_KILL * ENTRIES_PER_INTERVAL {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(CHILD_WAIT_S),
                "round {round}: child wrote only {seq} entries"
            );
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Land the kill at a varying point inside the next batch's transaction.
        let jitter: u64 = rand::random::<u64>() % 150;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        audit::verify(&db.url, &operator().public_key(), None)
            .await
            .unwrap_or_else(|f| panic!("round {round}: {f}"));
    }
    reader.close().await;

    let report = audit::verify(&db.url, &operator().public_key(), None)
        .await
        .unwrap();
    assert_eq!(report.entries % ENTRIES_PER_INTERVAL, 0, "{report}");
    assert!(report.intervals >= KILL_ROUNDS * INTERVALS_BEFORE_KILL);
    let l = Ledger::open_existing(&db.url).await.unwrap();
    let mut per_interval: BTreeMap<i64, u64> = BTreeMap::new();
    let mut next = 1;
    loop {
        let page = l.entries(next, u64::MAX).await.unwrap();
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for e in page {
            *per_interval.entry(e.interval_start.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(per_interval.len() as u64, report.intervals);
    for (start, n) in per_interval {
        assert_eq!(n, ENTRIES_PER_INTERVAL, "interval {start} is incomplete");
        assert!(l.has_interval(start).await.unwrap());
    }
    // The balances derived from complete intervals sum to zero.
    let total = l
        .balances()
        .await
        .unwrap()
        .values()
        .try_fold(baton_ledger::Amount::ZERO, |a, x| a.checked_add(*x))
        .unwrap();
    assert_eq!(total, baton_ledger::Amount::ZERO);
    // And the killed writer's successor continues the chain.
    let w = common::writer(&db.url).await;
    let r = w.append(interval_batch(-300, 1)).await.unwrap();
    assert_eq!(r.first_seq, report.entries + 1);
    eprintln!(
        "{:?}: killed after {} entries; {report}",
        db.backend, report.entries
    );
}
dual!(killed_writer_leaves_only_whole_intervals);
