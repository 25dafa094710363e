//! What a cleared interval is in the ledger, and how a regulator checks it.
//!
//! - [`record`]: the entries an interval is recorded as (`interval_input`, `interval_result`,
//!   `settlement`, appended together) and [`record::reclear`], which re-clears one interval and
//!   compares byte for byte.
//! - [`reclear_ledger`]: every recorded interval of a ledger re-cleared.
//! - [`summary`]: what a ledger says happened, interval by interval (the data of `baton report`).
//! - [`witness`]: a regulator's witness of the operator's checkpoints (consistency, cosigning).
//!
//! **Architecture Invariant:** an interval is recorded by [`record::interval_entries`] and
//! checked by [`record::reclear`], whoever cleared it (the one-shot `baton clear --ledger` or the
//! live market), so one re-clear checks both. This crate reads the ledger and runs the engine; it
//! knows nothing of the server, the wire or the simulator.

use std::collections::BTreeMap;

use baton_ledger::{EntryKind, Ledger, LedgerError, ENTRIES_PER_READ_MAX};

pub mod record;
pub mod summary;
pub mod witness;

pub use record::{Recleared, RecordError};

/// Why a ledger could not be re-cleared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReclearError {
    /// The ledger could not be opened or read.
    #[error("reading ledger {db}: {source}")]
    Ledger {
        /// The ledger URL.
        db: String,
        /// What the ledger said.
        #[source]
        source: LedgerError,
    },
    /// The interval asked for is not recorded.
    #[error("interval {0} is not in the ledger")]
    NotRecorded(i64),
    /// An interval did not re-clear to what was recorded.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// The latest `interval_input`, `interval_result` and `settlement` body of every interval, read
/// page by page so that memory holds those bodies and one page.
async fn interval_bodies(
    ledger: &Ledger,
) -> Result<BTreeMap<i64, [Option<Vec<u8>>; 3]>, LedgerError> {
    let mut by_interval: BTreeMap<i64, [Option<Vec<u8>>; 3]> = BTreeMap::new();
    let mut from = 1u64;
    loop {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in page {
            let Some(t) = e.interval_start else { continue };
            let slot = match e.kind {
                EntryKind::IntervalInput => 0,
                EntryKind::IntervalResult => 1,
                EntryKind::Settlement => 2,
                _ => continue,
            };
            // Latest of each kind (a re-recorded interval would be a correction).
            by_interval.entry(t).or_default()[slot] = Some(e.body);
        }
    }
    Ok(by_interval)
}

/// Re-clears every recorded interval of the ledger at `db` (or only `only`) from its recorded
/// input and checks the recorded result and settlement are identical; the first difference is
/// an error naming the interval.
pub async fn reclear_ledger(db: &str, only: Option<i64>) -> Result<Vec<Recleared>, ReclearError> {
    let ledger_error = |source| ReclearError::Ledger {
        db: db.to_string(),
        source,
    };
    let ledger = Ledger::open_existing(db).await.map_err(ledger_error)?;
    let read = interval_bodies(&ledger).await;
    ledger.close().await;
    let mut by_interval = read.map_err(ledger_error)?;
    if let Some(t) = only {
        by_interval.retain(|k, _| *k == t);
        if by_interval.is_empty() {
            return Err(ReclearError::NotRecorded(t));
        }
    }
    let mut done = Vec::with_capacity(by_interval.len());
    for (t, [input, result, settlement]) in &by_interval {
        let missing = |what| RecordError::Missing { interval: *t, what };
        done.push(record::reclear(
            *t,
            input.as_deref().ok_or_else(|| missing("interval_input"))?,
            result
                .as_deref()
                .ok_or_else(|| missing("interval_result"))?,
            settlement.as_deref().ok_or_else(|| missing("settlement"))?,
        )?);
    }
    Ok(done)
}
