//! What a cleared interval is in the ledger, and how a regulator checks it.
//!
//! - [`record`]: the entries an interval is recorded as (`gate_closed` when its book freezes;
//!   `interval_input`, `interval_result`, `settlement`, appended together once cleared) and
//!   [`record::reclear`], which re-clears one interval and compares byte for byte.
//! - [`book`]: book binding — each interval's book is exactly the signed orders accepted before
//!   its gate, rebuilt from the ledger alone.
//! - [`verify`]: the ledger's own verification and the book binding in one pass;
//!   [`reclear_ledger`]: every recorded interval re-cleared from its bound book.
//! - [`summary`]: what a ledger says happened, interval by interval (the data of `baton report`).
//! - [`witness`]: a regulator's witness of the operator's checkpoints (consistency, cosigning).
//!
//! **Architecture Invariant:** an interval is recorded by [`record::interval_entries`] and
//! checked by [`record::reclear`], whoever cleared it (the one-shot `baton clear --ledger` or the
//! live market), so one re-clear checks both. This crate reads the ledger and runs the engine; it
//! knows nothing of the server, the wire or the simulator.

use baton_ledger::audit::{
    EntryCheck, EntryView, FailureReason, VerifyFailure, VerifyOptions, VerifyReport,
};
use baton_ledger::{
    Checkpoint, EntryKind, Ledger, LedgerError, MeterReadingBody, PublicKey, SignedMessageBody,
    ENTRIES_PER_READ_MAX,
};

pub mod book;
pub mod delivery;
pub mod order_view;
pub mod record;
pub mod summary;
pub mod witness;

pub use book::{Binding, BindingReport};
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
    /// An entry breaks the book binding ([`book::Binding`]); seq 0: found at the end.
    #[error("seq {seq}: {reason}")]
    Binding {
        /// The entry.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Re-clears every recorded interval of the ledger at `db` (or only `only`): each book is
/// rebuilt from the signed order entries its gate binds and the network entry in force
/// ([`book::Binding`]), cleared, and the recorded result and settlement must be identical; the
/// first difference, or the first entry that breaks the book binding, is an error naming the
/// interval.
pub async fn reclear_ledger(db: &str, only: Option<i64>) -> Result<Vec<Recleared>, ReclearError> {
    let ledger_error = |source| ReclearError::Ledger {
        db: db.to_string(),
        source,
    };
    let ledger = Ledger::open_existing(db).await.map_err(ledger_error)?;
    let done = reclear_open(&ledger, only).await;
    ledger.close().await;
    let done = done?;
    if let Some(t) = only {
        if done.is_empty() {
            return Err(ReclearError::NotRecorded(t));
        }
    }
    Ok(done)
}

async fn reclear_open(ledger: &Ledger, only: Option<i64>) -> Result<Vec<Recleared>, ReclearError> {
    let ledger_error = |source| ReclearError::Ledger {
        db: String::new(),
        source,
    };
    let mut binding = Binding::rebuilding();
    let mut done = Vec::new();
    let mut cleared: std::collections::HashMap<
        i64,
        (usize, baton_engine::Market, baton_engine::Clearing),
    > = std::collections::HashMap::new();
    let mut from = 1u64;
    loop {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await
            .map_err(ledger_error)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in &page {
            check_entry(&mut binding, e)?;
            for b in binding.take_ready() {
                if only.is_some_and(|t| t != b.interval) {
                    continue;
                }
                let (r, market, clearing) = record::reclear_keeping(
                    b.interval,
                    &b.market,
                    b.rounding,
                    &b.result,
                    &b.settlement,
                )?;
                // Kept until the interval's delivery settlement is recomputed against it.
                cleared.insert(b.interval, (done.len(), market, clearing));
                done.push(r);
            }
            for d in binding.take_ready_deliveries() {
                let Some((at, market, clearing)) = cleared.remove(&d.interval) else {
                    continue;
                };
                done[at].delivery_postings = Some(delivery::redeliver(&d, &market, &clearing)?);
            }
        }
    }
    binding
        .finish()
        .map_err(|reason| ReclearError::Binding { seq: 0, reason })?;
    Ok(done)
}

/// The markets and clearings of the recorded intervals in `wanted`, rebuilt from the ledger
/// as [`reclear_ledger`] rebuilds them (the bound book, re-cleared and checked against the
/// recording): what the live market settles an interval's delivery against after a restart.
/// An interval whose re-clear differs from its recording is an error.
pub async fn rebuild_clearings(
    ledger: &Ledger,
    wanted: &std::collections::BTreeSet<i64>,
) -> Result<
    std::collections::BTreeMap<i64, (baton_engine::Market, baton_engine::Clearing)>,
    ReclearError,
> {
    let ledger_error = |source| ReclearError::Ledger {
        db: String::new(),
        source,
    };
    let mut binding = Binding::rebuilding();
    let mut out = std::collections::BTreeMap::new();
    let mut from = 1u64;
    while out.len() < wanted.len() {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await
            .map_err(ledger_error)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in &page {
            check_entry(&mut binding, e)?;
            for b in binding.take_ready() {
                if !wanted.contains(&b.interval) {
                    continue;
                }
                let (_, market, clearing) = record::reclear_keeping(
                    b.interval,
                    &b.market,
                    b.rounding,
                    &b.result,
                    &b.settlement,
                )?;
                out.insert(b.interval, (market, clearing));
            }
            binding.take_ready_deliveries();
        }
    }
    Ok(out)
}

/// A follower's copy of the recorded intervals (several nodes on one ledger): fed every entry
/// in seq order from the first, it hands out each interval once its recording is complete, so
/// the follower can publish it. [`Replica::reclear`] rebuilds the interval's market and
/// clearing the way [`reclear_ledger`] does, checked against the recording: a follower publishes
/// only what it has re-cleared itself, never bytes it did not check.
pub struct Replica {
    binding: Binding,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").finish_non_exhaustive()
    }
}

impl Default for Replica {
    fn default() -> Self {
        Replica {
            binding: Binding::rebuilding(),
        }
    }
}

impl Replica {
    /// An empty replica (feed it from seq 1).
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Feeds one entry; returns the intervals whose recording it completes.
    pub fn add(
        &mut self,
        e: &baton_ledger::Entry,
    ) -> Result<Vec<book::BoundInterval>, ReclearError> {
        check_entry(&mut self.binding, e)?;
        self.binding.take_ready_deliveries();
        Ok(self.binding.take_ready())
    }

    /// Re-clears one completed interval: its market and clearing, identical to the recording.
    pub fn reclear(
        b: &book::BoundInterval,
    ) -> Result<(baton_engine::Market, baton_engine::Clearing), ReclearError> {
        let (_, market, clearing) =
            record::reclear_keeping(b.interval, &b.market, b.rounding, &b.result, &b.settlement)?;
        Ok((market, clearing))
    }
}

/// Runs the binding on one entry read from the ledger.
fn check_entry(binding: &mut Binding, e: &baton_ledger::Entry) -> Result<(), ReclearError> {
    let bad = |err: baton_ledger::body::BodyError| ReclearError::Binding {
        seq: e.seq,
        reason: err.to_string(),
    };
    let signed = match e.kind {
        EntryKind::Order | EntryKind::Cancel => {
            Some(SignedMessageBody::from_bytes(e.kind, &e.body).map_err(bad)?)
        }
        _ => None,
    };
    let reading = match e.kind {
        EntryKind::MeterReading => Some(MeterReadingBody::from_bytes(&e.body).map_err(bad)?),
        _ => None,
    };
    binding
        .check(EntryView {
            seq: e.seq,
            kind: e.kind,
            interval_start: e.interval_start,
            body: &e.body,
            signed: signed.as_ref(),
            reading: reading.as_ref(),
        })
        .map_err(|reason| ReclearError::Binding { seq: e.seq, reason })
}

/// What [`verify`] found: the ledger's own checks and the book binding.
#[derive(Clone, Debug)]
pub struct AuditReport {
    /// Chain, checkpoints, signatures, zero-sum, balances.
    pub ledger: VerifyReport,
    /// Every interval's book bound to its gate, signed orders and recording.
    pub binding: BindingReport,
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; books bound: {} intervals ({} operator-entered), {} orders; delivery: {} readings, {} intervals settled",
            self.ledger,
            self.binding.intervals,
            self.binding.operator_intervals,
            self.binding.orders,
            self.binding.readings,
            self.binding.deliveries
        )?;
        if !self.binding.in_progress.is_empty() {
            write!(
                f,
                "; gated, not yet recorded: {:?}",
                self.binding.in_progress
            )?;
        }
        Ok(())
    }
}

/// Verifies the ledger at `db` with every check the ledger makes
/// ([`baton_ledger::audit::verify`]) and, in the same pass, the book binding of every interval
/// ([`book::Binding`]): the first failure names its seq. `published`: checkpoints published
/// earlier (or stored by a witness) the ledger must be consistent with.
pub async fn verify(
    db: &str,
    operator: &PublicKey,
    published: Vec<Checkpoint>,
) -> Result<AuditReport, VerifyFailure> {
    let ledger = Ledger::open_existing(db).await.map_err(|e| VerifyFailure {
        seq: 0,
        reason: FailureReason::Storage(e.to_string()),
    })?;
    let mut binding = Binding::new();
    let r = ledger
        .verify_checking(operator, published, VerifyOptions::default(), &mut binding)
        .await;
    ledger.close().await;
    let ledger_report = r?;
    let binding = binding.finish().map_err(|reason| VerifyFailure {
        seq: 0,
        reason: FailureReason::Check(reason),
    })?;
    Ok(AuditReport {
        ledger: ledger_report,
        binding,
    })
}
