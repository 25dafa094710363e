//! Regulator functions: offline verification, inclusion and consistency proofs, export.
//!
//! Everything here needs only the database URL and the operator's public key; nothing trusts
//! the writer's caches (the stored Merkle frontier) or the postings index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Write;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::body::{
    parse_body, Amount, KnownBody, MeterReadingBody, ParticipantStatus, Posting, SignedMessageBody,
};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::entry::{entry_hash, Entry, EntryKind, Hash, GENESIS_PREV_HASH};
use crate::error::{LedgerError, Result};
use crate::key::PublicKey;
use crate::ledger::Ledger;
use crate::merkle::{self, Frontier};
use crate::store::{hash_col_bytes, PostingRow, Reader, ENTRIES_PER_PAGE_MAX};

/// Participant signatures verified per `ed25519_dalek::verify_batch` call. Batch throughput
/// rises with size (61k/s at 16, 91k/s at 1,024 on one core); beyond ~1,024 the gain is small
/// and a failing batch costs more to re-check one by one.
pub const SIGNATURE_BATCH_MAX: usize = 1_024;

/// What [`verify`] checks beyond the chain, Merkle tree and checkpoint signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Verify every order and cancellation signature against its participant's key.
    pub participant_signatures: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            participant_signatures: true,
        }
    }
}

/// A successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub entries: u64,
    /// Distinct intervals recorded (an `interval_input`, `interval_result` or `settlement`
    /// entry names them), whether or not they traded.
    pub intervals: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The latest checkpoint (covers every entry).
    pub last_checkpoint: Option<Checkpoint>,
    /// Participant signatures verified (0 if disabled).
    pub participant_signatures: u64,
    /// Postings verified.
    pub postings: u64,
    /// Balance per account, derived from the settlement bodies.
    pub balances: BTreeMap<String, Amount>,
    /// Whether a published checkpoint was checked against the ledger.
    pub published_checked: bool,
    /// How many published checkpoints were checked (a witness's state holds several).
    pub published_count: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ledger verified: {} entries, {} intervals, {} checkpoints",
            self.entries, self.intervals, self.checkpoints
        )?;
        if let Some(c) = &self.last_checkpoint {
            write!(f, " (last: size {} root {})", c.size, hex::encode(c.root))?;
        }
        write!(
            f,
            ", {} participant signatures, {} postings in {} accounts",
            self.participant_signatures,
            self.postings,
            self.balances.len()
        )?;
        match self.published_count {
            0 => {}
            1 => write!(f, ", consistent with the published checkpoint")?,
            n => write!(f, ", consistent with {n} published checkpoints")?,
        }
        Ok(())
    }
}

/// What is wrong at the failing sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The database could not be read.
    Storage(String),
    /// No entry with this seq; `next` is the next stored one.
    Missing {
        /// The next stored seq, if any.
        next: Option<u64>,
    },
    /// `prev_hash` differs from the previous entry's hash.
    ChainBroken {
        /// The previous entry's seq (0: the genesis value, 32 zero bytes).
        previous: u64,
    },
    /// The stored hash differs from the hash of the entry's contents.
    HashMismatch,
    /// The kind string is unknown.
    UnknownKind(String),
    /// The body is invalid for its kind.
    InvalidBody(String),
    /// An order or cancellation names a participant with no earlier admission.
    UnknownParticipant(String),
    /// An order from a participant whose latest status is suspended.
    ParticipantSuspended(String),
    /// The participant signature does not verify.
    BadParticipantSignature(String),
    /// A meter reading names a meter not registered for its participant before it.
    UnknownMeter {
        /// The participant.
        participant: String,
        /// The meter id.
        meter: String,
    },
    /// An interval's settlement postings do not sum to zero.
    NotZeroSum {
        /// The interval.
        interval_start: i64,
        /// The sum.
        sum: String,
    },
    /// The postings table does not match the settlement body.
    PostingsMismatch(String),
    /// A correction references an entry that does not precede it.
    BadCorrection(u64),
    /// The entry is not covered by any signed checkpoint.
    Uncovered {
        /// Size of the last checkpoint.
        last_checkpoint: u64,
    },
    /// A stored checkpoint's signature or key id is wrong.
    CheckpointSignature(CheckpointError),
    /// A stored checkpoint's root differs from the recomputed Merkle root.
    CheckpointRoot,
    /// A stored checkpoint covers entries that do not exist.
    CheckpointBeyondEnd {
        /// The checkpoint's size.
        size: u64,
    },
    /// The published checkpoint's signature is wrong.
    PublishedSignature(CheckpointError),
    /// The ledger's first `size` entries do not have the published root: history was
    /// rewritten.
    PublishedRootMismatch {
        /// The published size.
        size: u64,
    },
    /// The published checkpoint covers entries the ledger no longer has: the tail was
    /// truncated.
    PublishedTruncated {
        /// The published size.
        size: u64,
    },
    /// Balances aggregated by the database differ from those derived from the bodies.
    BalancesMismatch(String),
    /// The caller's [`EntryCheck`] refused the entry.
    Check(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FailureReason::*;
        match self {
            Storage(e) => write!(f, "cannot read the ledger: {e}"),
            Missing { next: Some(n) } => write!(f, "entry missing (next stored entry is {n})"),
            Missing { next: None } => write!(f, "entry missing (the ledger ends before it)"),
            ChainBroken { previous: 0 } => write!(
                f,
                "hash chain broken (prev_hash of the first entry is not 32 zero bytes)"
            ),
            ChainBroken { previous } => write!(
                f,
                "hash chain broken (prev_hash does not match entry {previous})"
            ),
            HashMismatch => write!(f, "stored hash does not match the entry's contents"),
            UnknownKind(k) => write!(f, "unknown entry kind {k:?}"),
            InvalidBody(e) => write!(f, "invalid body: {e}"),
            UnknownParticipant(p) => write!(f, "signed by unknown participant {p:?}"),
            ParticipantSuspended(p) => write!(f, "order from suspended participant {p:?}"),
            UnknownMeter { participant, meter } => write!(
                f,
                "meter reading signed by meter {meter:?}, which is not registered for participant {participant:?} before it"
            ),
            BadParticipantSignature(p) => {
                write!(f, "participant signature of {p:?} does not verify")
            }
            NotZeroSum {
                interval_start,
                sum,
            } => write!(
                f,
                "settlement postings of interval {interval_start} sum to {sum}, not zero"
            ),
            PostingsMismatch(e) => write!(f, "postings table does not match the body: {e}"),
            BadCorrection(t) => write!(
                f,
                "correction references seq {t}, which does not precede it"
            ),
            Uncovered { last_checkpoint } => write!(
                f,
                "not covered by any signed checkpoint (the last covers {last_checkpoint} entries)"
            ),
            CheckpointSignature(e) => write!(f, "checkpoint ending here: {e}"),
            CheckpointRoot => write!(
                f,
                "checkpoint ending here: signed Merkle root does not match the entries"
            ),
            CheckpointBeyondEnd { size } => write!(
                f,
                "entry missing: checkpoint at size {size} covers it but the ledger ends before it"
            ),
            PublishedSignature(e) => write!(f, "published checkpoint: {e}"),
            PublishedRootMismatch { size } => write!(
                f,
                "not consistent with the published checkpoint at size {size}: history was rewritten"
            ),
            PublishedTruncated { size } => write!(
                f,
                "entry missing: the published checkpoint covers {size} entries (tail truncated)"
            ),
            BalancesMismatch(e) => write!(f, "balances: {e}"),
            Check(e) => f.write_str(e),
        }
    }
}

/// Adds one entry's postings to the per-interval sums (overall and since the last
/// checkpoint), the balances and the postings rows the table must hold for it.
fn add_postings(
    seq: u64,
    interval_start: i64,
    postings: Vec<Posting>,
    sums: [&mut BTreeMap<i64, (Amount, u64)>; 2],
    balances: &mut BTreeMap<String, Amount>,
    rows: &mut Vec<PostingRow>,
) -> Result<(), VerifyFailure> {
    let [totals, batch_sums] = sums;
    for (idx, p) in postings.into_iter().enumerate() {
        let overflow = || VerifyFailure {
            seq,
            reason: FailureReason::InvalidBody("amount overflow".into()),
        };
        for map in [&mut *totals, &mut *batch_sums] {
            let slot = map.entry(interval_start).or_insert((Amount::ZERO, seq));
            slot.0 = slot.0.checked_add(p.amount).ok_or_else(overflow)?;
            slot.1 = seq;
        }
        let bal = balances.entry(p.account.clone()).or_insert(Amount::ZERO);
        *bal = bal.checked_add(p.amount).ok_or_else(overflow)?;
        rows.push(PostingRow {
            seq: seq as i64,
            idx: idx as i64,
            account: p.account,
            amount: p.amount.to_string(),
            interval_start,
        });
    }
    Ok(())
}

/// Verification failed at `seq` (0 when no single entry is to blame).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", if *seq == 0 { "ledger".to_string() } else { format!("seq {seq}") })]
pub struct VerifyFailure {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: FailureReason,
}

fn fail<T>(seq: u64, reason: FailureReason) -> Result<T, VerifyFailure> {
    Err(VerifyFailure { seq, reason })
}

fn storage(e: impl fmt::Display) -> VerifyFailure {
    VerifyFailure {
        seq: 0,
        reason: FailureReason::Storage(e.to_string()),
    }
}

/// Verifies the ledger at `url` with every check ([`VerifyOptions::default`]); see
/// [`verify_with`].
pub async fn verify(
    url: &str,
    operator: &PublicKey,
    published: Option<Checkpoint>,
) -> Result<VerifyReport, VerifyFailure> {
    verify_with(url, operator, published, VerifyOptions::default()).await
}

/// Verifies the ledger at `url`:
///
/// - sequence numbers are gap-free from 1; each `prev_hash` is the previous entry's hash and
///   each stored hash is the hash of the entry's contents;
/// - every stored checkpoint is signed by `operator` (`verify_strict`) and its root equals the
///   Merkle root recomputed over the entries it covers; every entry is covered;
/// - bodies of kinds the ledger owns are valid canonical JSON; every order and cancellation
///   signature verifies against the key of the latest preceding `participant` entry for that id
///   (batch verification, falling back to `verify_strict` one by one to name the bad entry);
/// - every checkpointed batch's settlement postings sum to zero per interval, and so does every
///   interval overall; the postings table matches the bodies row for row, and the database's
///   balances match those derived from the bodies;
/// - if `published` is given (a checkpoint the operator published earlier), it is signed by
///   `operator` and the ledger's first `published.size` entries have its root.
///
/// Reads in one snapshot transaction; memory is O(page + participants + accounts).
pub async fn verify_with(
    url: &str,
    operator: &PublicKey,
    published: Option<Checkpoint>,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyFailure> {
    verify_published(url, operator, published.into_iter().collect(), opts).await
}

/// [`verify_with`] against several published checkpoints (e.g. every checkpoint a witness
/// stored): each must be signed by `operator` and the ledger's first `size` entries must have
/// its root.
pub async fn verify_published(
    url: &str,
    operator: &PublicKey,
    published: Vec<Checkpoint>,
    opts: VerifyOptions,
) -> Result<VerifyReport, VerifyFailure> {
    let ledger = Ledger::open_existing(url).await.map_err(storage)?;
    let r = ledger.verify_published(operator, published, opts).await;
    ledger.close().await;
    r
}

/// One entry as [`EntryCheck::check`] sees it: its chain position, hash and body (for kinds the
/// ledger owns) already verified.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: EntryKind,
    /// The entry's interval.
    pub interval_start: Option<i64>,
    /// The body bytes.
    pub body: &'a [u8],
    /// The parsed body of an `order` or `cancel` entry.
    pub signed: Option<&'a SignedMessageBody>,
    /// The parsed body of a `meter_reading` entry.
    pub reading: Option<&'a MeterReadingBody>,
}

/// Checks of entry contents the ledger does not own (what an interval's book and result must
/// be), run in the same pass as [`Ledger::verify_checking`]'s own checks, entry by entry in seq
/// order. An error fails verification at that entry with [`FailureReason::Check`].
pub trait EntryCheck: Send {
    /// Checks one entry.
    fn check(&mut self, entry: EntryView<'_>) -> std::result::Result<(), String>;
}

/// The check that accepts everything.
struct NoCheck;

impl EntryCheck for NoCheck {
    fn check(&mut self, _: EntryView<'_>) -> std::result::Result<(), String> {
        Ok(())
    }
}

struct PendingSig {
    seq: u64,
    participant: String,
    key: VerifyingKey,
    msg: Vec<u8>,
    sig: Signature,
}

/// Verifies one batch of participant signatures; returns the first bad one.
fn check_batch(batch: &[PendingSig]) -> Result<(), VerifyFailure> {
    if batch.is_empty() {
        return Ok(());
    }
    let msgs: Vec<&[u8]> = batch.iter().map(|p| p.msg.as_slice()).collect();
    let sigs: Vec<Signature> = batch.iter().map(|p| p.sig).collect();
    let keys: Vec<VerifyingKey> = batch.iter().map(|p| p.key).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return Ok(());
    }
    // Find the first culprit with the strict single check.
    match batch
        .iter()
        .find(|p| p.key.verify_strict(&p.msg, &p.sig).is_err())
    {
        Some(p) => fail(
            p.seq,
            FailureReason::BadParticipantSignature(p.participant.clone()),
        ),
        None => Ok(()),
    }
}

/// Participant signature batches being verified on blocking threads while the scan goes on.
/// Bounds memory at about this many batches of [`SIGNATURE_BATCH_MAX`] signatures.
const SIGNATURE_BATCHES_IN_FLIGHT_MAX: usize = 4;

/// Queues participant signatures, verifies full batches off the scanning task, and reports
/// failures in seq order.
#[derive(Default)]
struct SigQueue {
    pending: Vec<PendingSig>,
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<Result<(), VerifyFailure>>>,
}

impl SigQueue {
    async fn push(&mut self, sig: PendingSig) -> Result<(), VerifyFailure> {
        self.pending.push(sig);
        if self.pending.len() >= SIGNATURE_BATCH_MAX {
            let batch = std::mem::take(&mut self.pending);
            self.in_flight
                .push_back(tokio::task::spawn_blocking(move || check_batch(&batch)));
            if self.in_flight.len() > SIGNATURE_BATCHES_IN_FLIGHT_MAX {
                // Batches complete in order of submission, so the first failure seen is the
                // earliest bad signature.
                let oldest = self.in_flight.pop_front().expect("non-empty");
                oldest.await.map_err(storage)??;
            }
        }
        Ok(())
    }

    /// Waits for every queued signature with seq below `before` and reports the first bad one.
    async fn drain(&mut self, before: u64) -> Result<(), VerifyFailure> {
        while let Some(h) = self.in_flight.pop_front() {
            match h.await.map_err(storage)? {
                Err(f) if f.seq < before => return Err(f),
                _ => {}
            }
        }
        let rest: Vec<PendingSig> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|p| p.seq < before)
            .collect();
        check_batch(&rest)
    }
}

impl Ledger {
    /// [`verify_with`] on an open handle.
    pub async fn verify(
        &self,
        operator: &PublicKey,
        published: Option<Checkpoint>,
        opts: VerifyOptions,
    ) -> Result<VerifyReport, VerifyFailure> {
        self.verify_published(operator, published.into_iter().collect(), opts)
            .await
    }

    /// [`verify_published`] on an open handle.
    pub async fn verify_published(
        &self,
        operator: &PublicKey,
        published: Vec<Checkpoint>,
        opts: VerifyOptions,
    ) -> Result<VerifyReport, VerifyFailure> {
        self.verify_checking(operator, published, opts, &mut NoCheck)
            .await
    }

    /// [`Ledger::verify_published`], also running `check` on every entry in the same pass.
    pub async fn verify_checking(
        &self,
        operator: &PublicKey,
        mut published: Vec<Checkpoint>,
        opts: VerifyOptions,
        check: &mut dyn EntryCheck,
    ) -> Result<VerifyReport, VerifyFailure> {
        published.sort_by_key(|c| c.size);
        let mut reader = self.reader().await.map_err(storage)?;
        let mut sigs = SigQueue::default();
        let result = run_verify(&mut reader, operator, published, opts, &mut sigs, check).await;
        let _ = reader.finish().await;
        match result {
            Ok(report) => Ok(report),
            Err(failure) => {
                // Signatures still queued belong to entries before the failure: report the
                // earliest problem.
                sigs.drain(failure.seq).await?;
                Err(failure)
            }
        }
    }
}

async fn run_verify(
    reader: &mut Reader,
    operator: &PublicKey,
    published: Vec<Checkpoint>,
    opts: VerifyOptions,
    sigs: &mut SigQueue,
    check: &mut dyn EntryCheck,
) -> Result<VerifyReport, VerifyFailure> {
    for p in &published {
        p.verify(operator).map_err(|e| VerifyFailure {
            seq: 0,
            reason: FailureReason::PublishedSignature(e),
        })?;
    }
    let checkpoints = reader.checkpoints().await.map_err(storage)?;
    let last_cp_size = checkpoints.last().map_or(0, |c| c.size);
    let mut cp_iter = checkpoints.iter().peekable();
    // Sorted by size; a published checkpoint of size 0 (the empty tree) is checked first.
    let mut published_iter = published.iter().filter(|p| p.size > 0).peekable();
    if let Some(p) = published.iter().find(|p| p.size == 0) {
        if p.root != merkle::empty_root() {
            return fail(0, FailureReason::PublishedRootMismatch { size: 0 });
        }
    }
    let mut checkpoints_ok = 0u64;

    let mut frontier = Frontier::new();
    let mut prev_hash: Hash = GENESIS_PREV_HASH;
    let mut expected: u64 = 1;
    let mut participants: HashMap<String, (VerifyingKey, ParticipantStatus)> = HashMap::new();
    // Registered meters: (participant, meter id) → key.
    let mut meters: HashMap<(String, String), VerifyingKey> = HashMap::new();
    // Per interval: running total and last settlement seq, overall and since the last checkpoint.
    let mut totals: BTreeMap<i64, (Amount, u64)> = BTreeMap::new();
    let mut batch_sums: BTreeMap<i64, (Amount, u64)> = BTreeMap::new();
    let mut balances: BTreeMap<String, Amount> = BTreeMap::new();
    let mut recorded_intervals: BTreeSet<i64> = BTreeSet::new();
    let mut sig_count = 0u64;
    let mut posting_count = 0u64;

    loop {
        let page = reader
            .entries(expected, u64::MAX, ENTRIES_PER_PAGE_MAX)
            .await
            .map_err(storage)?;
        let Some(last) = page.last() else { break };
        let page_last = last.seq as u64;
        let rows = reader
            .postings(expected, page_last)
            .await
            .map_err(storage)?;
        let mut rows_by_seq: BTreeMap<i64, Vec<PostingRow>> = BTreeMap::new();
        for r in rows {
            rows_by_seq.entry(r.seq).or_default().push(r);
        }
        for raw in page {
            let seq = raw.seq as u64;
            if seq != expected {
                return fail(expected, FailureReason::Missing { next: Some(seq) });
            }
            if seq > last_cp_size {
                return fail(
                    seq,
                    FailureReason::Uncovered {
                        last_checkpoint: last_cp_size,
                    },
                );
            }
            if raw.prev_hash.as_ref() != Ok(&prev_hash) {
                return fail(seq, FailureReason::ChainBroken { previous: seq - 1 });
            }
            let hash = entry_hash(
                &prev_hash,
                seq,
                raw.kind_str(),
                raw.interval_start,
                &raw.body,
            );
            if raw.hash.as_ref() != Ok(&hash) {
                return fail(seq, FailureReason::HashMismatch);
            }
            let kind: EntryKind = match raw.kind {
                Ok(k) => k,
                Err(unknown) => return fail(seq, FailureReason::UnknownKind(unknown)),
            };
            frontier.push(&hash);
            prev_hash = hash;
            if matches!(
                kind,
                EntryKind::IntervalInput | EntryKind::IntervalResult | EntryKind::Settlement
            ) {
                recorded_intervals.extend(raw.interval_start);
            }

            let body = match parse_body(kind, &raw.body) {
                Ok(b) => b,
                Err(e) => return fail(seq, FailureReason::InvalidBody(e.to_string())),
            };
            let view = EntryView {
                seq,
                kind,
                interval_start: raw.interval_start,
                body: &raw.body,
                signed: match &body {
                    KnownBody::Signed(m) => Some(m),
                    _ => None,
                },
                reading: match &body {
                    KnownBody::Reading(r) => Some(r),
                    _ => None,
                },
            };
            if let Err(e) = check.check(view) {
                return fail(seq, FailureReason::Check(e));
            }
            let mut expected_rows: Vec<PostingRow> = Vec::new();
            match body {
                KnownBody::Participant(p) => {
                    let key = p
                        .key()
                        .expect("parse_body checked the key")
                        .as_dalek()
                        .to_owned();
                    participants.insert(p.participant_id, (key, p.status));
                }
                KnownBody::Signed(m) => {
                    let Some((key, status)) = participants.get(&m.participant_id) else {
                        return fail(seq, FailureReason::UnknownParticipant(m.participant_id));
                    };
                    if kind == EntryKind::Order && *status == ParticipantStatus::Suspended {
                        return fail(seq, FailureReason::ParticipantSuspended(m.participant_id));
                    }
                    if opts.participant_signatures {
                        sigs.push(PendingSig {
                            seq,
                            participant: m.participant_id,
                            key: *key,
                            msg: m.payload,
                            sig: Signature::from_bytes(&m.signature),
                        })
                        .await?;
                        sig_count += 1;
                    }
                }
                KnownBody::Meter(m) => {
                    let key = m
                        .key()
                        .expect("parse_body checked the key")
                        .as_dalek()
                        .to_owned();
                    meters.insert((m.participant_id, m.meter_id), key);
                }
                KnownBody::Reading(r) => {
                    // Signed by the meter registered for the participant, or by the
                    // participant's own key: whichever the entry names.
                    let key = match &r.meter_id {
                        Some(meter) => match meters.get(&(r.participant_id.clone(), meter.clone()))
                        {
                            Some(k) => *k,
                            None => {
                                return fail(
                                    seq,
                                    FailureReason::UnknownMeter {
                                        participant: r.participant_id,
                                        meter: meter.clone(),
                                    },
                                )
                            }
                        },
                        None => match participants.get(&r.participant_id) {
                            Some((k, _)) => *k,
                            None => {
                                return fail(
                                    seq,
                                    FailureReason::UnknownParticipant(r.participant_id),
                                )
                            }
                        },
                    };
                    if opts.participant_signatures {
                        sigs.push(PendingSig {
                            seq,
                            participant: match &r.meter_id {
                                Some(m) => format!("{} (meter {m})", r.participant_id),
                                None => r.participant_id,
                            },
                            key,
                            msg: r.payload,
                            sig: Signature::from_bytes(&r.signature),
                        })
                        .await?;
                        sig_count += 1;
                    }
                }
                KnownBody::Delivery(d) => {
                    if raw.interval_start != Some(d.interval_start) {
                        return fail(
                            seq,
                            FailureReason::InvalidBody(format!(
                                "delivery_settlement interval_start {} differs from the entry's {:?}",
                                d.interval_start, raw.interval_start
                            )),
                        );
                    }
                    add_postings(
                        seq,
                        d.interval_start,
                        d.postings,
                        [&mut totals, &mut batch_sums],
                        &mut balances,
                        &mut expected_rows,
                    )?;
                }
                KnownBody::Settlement(s) => {
                    if raw.interval_start != Some(s.interval_start) {
                        return fail(
                            seq,
                            FailureReason::InvalidBody(format!(
                                "settlement interval_start {} differs from the entry's {:?}",
                                s.interval_start, raw.interval_start
                            )),
                        );
                    }
                    add_postings(
                        seq,
                        s.interval_start,
                        s.postings,
                        [&mut totals, &mut batch_sums],
                        &mut balances,
                        &mut expected_rows,
                    )?;
                }
                KnownBody::Correction(c) => {
                    if let Some(&t) = c.corrects.iter().find(|&&t| t == 0 || t >= seq) {
                        return fail(seq, FailureReason::BadCorrection(t));
                    }
                }
                KnownBody::Gate(g) => {
                    if raw.interval_start != Some(g.interval_start) {
                        return fail(
                            seq,
                            FailureReason::InvalidBody(format!(
                                "gate_closed interval_start {} differs from the entry's {:?}",
                                g.interval_start, raw.interval_start
                            )),
                        );
                    }
                }
                KnownBody::Opaque => {}
            }
            let stored_rows = rows_by_seq.remove(&(seq as i64)).unwrap_or_default();
            if stored_rows != expected_rows {
                return fail(
                    seq,
                    FailureReason::PostingsMismatch(describe_rows_diff(
                        &expected_rows,
                        &stored_rows,
                    )),
                );
            }
            posting_count += expected_rows.len() as u64;

            // Checkpoints ending at this entry.
            while let Some(cp) = cp_iter.peek() {
                if cp.size > seq {
                    break;
                }
                if cp.size < seq {
                    // Unreachable: sizes are checked as they are passed.
                    return fail(cp.size, FailureReason::CheckpointRoot);
                }
                if let Err(e) = cp.verify(operator) {
                    return fail(seq, FailureReason::CheckpointSignature(e));
                }
                if cp.root != frontier.root() {
                    return fail(seq, FailureReason::CheckpointRoot);
                }
                // The batch this checkpoint closes must settle each interval to zero.
                if let Some((&interval_start, &(sum, at))) =
                    batch_sums.iter().find(|(_, (s, _))| *s != Amount::ZERO)
                {
                    return fail(
                        at,
                        FailureReason::NotZeroSum {
                            interval_start,
                            sum: sum.to_string(),
                        },
                    );
                }
                batch_sums.clear();
                checkpoints_ok += 1;
                cp_iter.next();
            }
            while let Some(p) = published_iter.peek() {
                if p.size > seq {
                    break;
                }
                if p.root != frontier.root() {
                    return fail(seq, FailureReason::PublishedRootMismatch { size: p.size });
                }
                published_iter.next();
            }
            expected += 1;
        }
        if let Some((&s, _)) = rows_by_seq.iter().next() {
            return fail(
                s as u64,
                FailureReason::PostingsMismatch("postings rows for an entry that has none".into()),
            );
        }
    }
    let entries = expected - 1;
    if let Some(cp) = cp_iter.next() {
        return fail(
            entries + 1,
            FailureReason::CheckpointBeyondEnd { size: cp.size },
        );
    }
    if let Some(p) = published.last() {
        if p.size > entries {
            return fail(
                entries + 1,
                FailureReason::PublishedTruncated { size: p.size },
            );
        }
    }
    sigs.drain(u64::MAX).await?;
    if let Some((&interval_start, &(sum, at))) =
        totals.iter().find(|(_, (s, _))| *s != Amount::ZERO)
    {
        return fail(
            at,
            FailureReason::NotZeroSum {
                interval_start,
                sum: sum.to_string(),
            },
        );
    }
    let stray = reader
        .postings(entries + 1, u64::MAX)
        .await
        .map_err(storage)?;
    if let Some(r) = stray.first() {
        return fail(
            r.seq.max(0) as u64,
            FailureReason::PostingsMismatch("postings rows for a missing entry".into()),
        );
    }
    let db_balances = reader.balances().await.map_err(storage)?;
    let nonzero = |m: &BTreeMap<String, Amount>| -> BTreeMap<String, Amount> {
        m.iter()
            .filter(|(_, a)| **a != Amount::ZERO)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    if nonzero(&db_balances) != nonzero(&balances) {
        return fail(
            0,
            FailureReason::BalancesMismatch(
                "the database's per-account sums differ from the settlement bodies".into(),
            ),
        );
    }
    Ok(VerifyReport {
        entries,
        intervals: recorded_intervals.len() as u64,
        checkpoints: checkpoints_ok,
        last_checkpoint: checkpoints.last().cloned(),
        participant_signatures: sig_count,
        postings: posting_count,
        balances,
        published_checked: !published.is_empty(),
        published_count: published.len() as u64,
    })
}

fn describe_rows_diff(expected: &[PostingRow], stored: &[PostingRow]) -> String {
    if expected.len() != stored.len() {
        return format!(
            "body has {} postings, table has {}",
            expected.len(),
            stored.len()
        );
    }
    for (e, s) in expected.iter().zip(stored) {
        if e != s {
            return format!(
                "posting {}: body says {} {} (interval {}), table says {} {} (interval {})",
                e.idx, e.account, e.amount, e.interval_start, s.account, s.amount, s.interval_start
            );
        }
    }
    "rows differ".into()
}

/// Errors checking a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The checkpoint does not verify.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The proof is for a different tree size than the checkpoint.
    #[error("proof is for tree size {proof} but the checkpoint covers {checkpoint}")]
    SizeMismatch {
        /// In the proof.
        proof: u64,
        /// In the checkpoint.
        checkpoint: u64,
    },
    /// The entry's stored hash is not the hash of its contents.
    #[error("entry hash does not match its contents")]
    EntryHash,
    /// The path does not lead to the checkpoint's root.
    #[error("proof does not lead to the checkpoint's root")]
    Path,
}

/// Proof that an entry is in the tree a checkpoint signs. Self-contained JSON; a third party
/// checks it with [`InclusionProof::verify`] and the operator's public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The entry, in full (its hash is recomputed from the contents).
    pub entry: Entry,
    /// Tree size the path is for.
    pub tree_size: u64,
    /// RFC 9162 audit path, leaf to root.
    #[serde(with = "crate::hexser::hash_list")]
    pub path: Vec<Hash>,
    /// The checkpoint the proof was made against.
    pub checkpoint: Checkpoint,
}

impl InclusionProof {
    /// Checks that `checkpoint` is signed by `key` and that the entry, hashed from its
    /// contents, is leaf `seq - 1` of the tree whose root `checkpoint` signs.
    pub fn verify(&self, checkpoint: &Checkpoint, key: &PublicKey) -> Result<(), ProofError> {
        checkpoint.verify(key)?;
        if self.tree_size != checkpoint.size {
            return Err(ProofError::SizeMismatch {
                proof: self.tree_size,
                checkpoint: checkpoint.size,
            });
        }
        if self.entry.compute_hash() != self.entry.hash {
            return Err(ProofError::EntryHash);
        }
        if self.entry.seq == 0
            || !merkle::verify_inclusion(
                self.entry.seq - 1,
                self.tree_size,
                &self.entry.hash,
                &self.path,
                &checkpoint.root,
            )
        {
            return Err(ProofError::Path);
        }
        Ok(())
    }
}

/// Proof that the tree of an older checkpoint is a prefix of a newer one's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// RFC 9162 consistency path.
    #[serde(with = "crate::hexser::hash_list")]
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks both checkpoints' signatures and that `old` is a prefix of `new`.
    pub fn verify(
        &self,
        old: &Checkpoint,
        new: &Checkpoint,
        key: &PublicKey,
    ) -> Result<(), ProofError> {
        old.verify(key)?;
        new.verify(key)?;
        for (proof, checkpoint) in [(self.old_size, old.size), (self.new_size, new.size)] {
            if proof != checkpoint {
                return Err(ProofError::SizeMismatch { proof, checkpoint });
            }
        }
        if !merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &self.path) {
            return Err(ProofError::Path);
        }
        Ok(())
    }
}

/// A consistency proof between two stored checkpoints, with the checkpoints it links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointConsistency {
    /// The older checkpoint.
    pub old: Checkpoint,
    /// The newer checkpoint.
    pub new: Checkpoint,
    /// The RFC 9162 proof from `old` to `new`.
    pub proof: ConsistencyProof,
}

impl CheckpointConsistency {
    /// Checks both signatures and the path ([`ConsistencyProof::verify`]).
    pub fn verify(&self, key: &PublicKey) -> Result<(), ProofError> {
        self.proof.verify(&self.old, &self.new, key)
    }
}

async fn tree_hashes(reader: &mut Reader, size: u64) -> Result<Vec<Hash>> {
    let raw = reader.entry_hashes(size).await?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, (seq, h)) in raw.into_iter().enumerate() {
        if seq as u64 != i as u64 + 1 {
            return Err(LedgerError::Corrupt(format!("entry {} missing", i + 1)));
        }
        out.push(
            crate::store::to_hash(&h)
                .ok_or_else(|| LedgerError::Corrupt(format!("seq {seq}: hash not 32 bytes")))?,
        );
    }
    if out.len() as u64 != size {
        return Err(LedgerError::Corrupt(format!(
            "checkpoint covers {size} entries, ledger has {}",
            out.len()
        )));
    }
    Ok(out)
}

impl Ledger {
    /// Inclusion proof of entry `seq` against the latest checkpoint.
    pub async fn inclusion_proof(&self, seq: u64) -> Result<InclusionProof> {
        let mut r = self.reader().await?;
        let cp = r
            .latest_checkpoint()
            .await?
            .ok_or(LedgerError::NoCheckpoint)?
            .checkpoint;
        if seq == 0 || seq > cp.size {
            return Err(LedgerError::NotFound(seq));
        }
        let hashes = tree_hashes(&mut r, cp.size).await?;
        let entry = r
            .entries(seq, seq, 1)
            .await?
            .into_iter()
            .next()
            .ok_or(LedgerError::NotFound(seq))?
            .into_entry()?;
        r.finish().await?;
        let path = merkle::inclusion_proof(&hashes, seq - 1).ok_or(LedgerError::NotFound(seq))?;
        Ok(InclusionProof {
            entry,
            tree_size: cp.size,
            path,
            checkpoint: cp,
        })
    }

    /// Consistency proof from the tree of size `old_size` to the latest checkpoint.
    pub async fn consistency_proof(&self, old_size: u64) -> Result<ConsistencyProof> {
        let mut r = self.reader().await?;
        let cp = r
            .latest_checkpoint()
            .await?
            .ok_or(LedgerError::NoCheckpoint)?
            .checkpoint;
        let hashes = tree_hashes(&mut r, cp.size).await?;
        r.finish().await?;
        let path =
            merkle::consistency_proof(&hashes, old_size).ok_or(LedgerError::NotFound(old_size))?;
        Ok(ConsistencyProof {
            old_size,
            new_size: cp.size,
            path,
        })
    }

    /// The checkpoint covering exactly `size` entries, if the ledger stored one.
    pub async fn checkpoint_at(&self, size: u64) -> Result<Option<Checkpoint>> {
        let mut r = self.reader().await?;
        let c = r.checkpoint_at(size).await?;
        r.finish().await?;
        Ok(c)
    }

    /// Consistency proof between two stored checkpoints, of sizes `old_size <= new_size`
    /// (equal sizes give the empty proof), with both checkpoints, read in one snapshot.
    ///
    /// Reads the `new_size` entry hashes (32 bytes each); callers bound `new_size`.
    pub async fn consistency_proof_between(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<CheckpointConsistency> {
        if old_size > new_size {
            return Err(LedgerError::ProofRange {
                old: old_size,
                new: new_size,
            });
        }
        let mut r = self.reader().await?;
        let old = r
            .checkpoint_at(old_size)
            .await?
            .ok_or(LedgerError::NoCheckpointAt(old_size))?;
        let new = r
            .checkpoint_at(new_size)
            .await?
            .ok_or(LedgerError::NoCheckpointAt(new_size))?;
        let hashes = tree_hashes(&mut r, new_size).await?;
        r.finish().await?;
        let path = merkle::consistency_proof(&hashes, old_size)
            .ok_or(LedgerError::NoCheckpointAt(old_size))?;
        Ok(CheckpointConsistency {
            proof: ConsistencyProof {
                old_size,
                new_size,
                path,
            },
            old,
            new,
        })
    }

    /// Writes entries `from..=to` to `out`; returns how many were written.
    pub async fn export(
        &self,
        format: ExportFormat,
        from: u64,
        to: u64,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let mut r = self.reader().await?;
        if format == ExportFormat::Csv {
            writeln!(out, "seq,kind,interval_start,prev_hash,hash,body_hex")?;
        }
        let mut next = from.max(1);
        let mut n = 0u64;
        while next <= to {
            let page = r.entries(next, to, ENTRIES_PER_PAGE_MAX).await?;
            let Some(last) = page.last() else { break };
            next = last.seq as u64 + 1;
            for raw in page {
                match format {
                    ExportFormat::Jsonl => {
                        let body_json = serde_json::from_slice::<serde_json::Value>(&raw.body).ok();
                        let mut line = serde_json::json!({
                            "seq": raw.seq,
                            "kind": raw.kind_str(),
                            "interval_start": raw.interval_start,
                            "prev_hash": hex::encode(hash_col_bytes(&raw.prev_hash)),
                            "hash": hex::encode(hash_col_bytes(&raw.hash)),
                            "body_hex": hex::encode(&raw.body),
                        });
                        if let Some(v) = body_json {
                            line["body"] = v;
                        }
                        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
                        writeln!(out)?;
                    }
                    ExportFormat::Csv => writeln!(
                        out,
                        "{},{},{},{},{},{}",
                        raw.seq,
                        csv_field(raw.kind_str()),
                        raw.interval_start
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        hex::encode(hash_col_bytes(&raw.prev_hash)),
                        hex::encode(hash_col_bytes(&raw.hash)),
                        hex::encode(&raw.body)
                    )?,
                }
                n += 1;
            }
        }
        r.finish().await?;
        out.flush()?;
        Ok(n)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportFormat {
    /// One JSON object per line: seq, kind, interval_start, prev_hash, hash, body_hex, and
    /// `body` (the parsed JSON) when the body is JSON.
    Jsonl,
    /// `seq,kind,interval_start,prev_hash,hash,body_hex` with a header line.
    Csv,
}

/// Inclusion proof of entry `seq` against the latest checkpoint of the ledger at `url`.
pub async fn prove_inclusion(url: &str, seq: u64) -> Result<InclusionProof> {
    let l = Ledger::open_existing(url).await?;
    let r = l.inclusion_proof(seq).await;
    l.close().await;
    r
}

/// Consistency proof from size `old_size` to the latest checkpoint of the ledger at `url`.
pub async fn prove_consistency(url: &str, old_size: u64) -> Result<ConsistencyProof> {
    let l = Ledger::open_existing(url).await?;
    let r = l.consistency_proof(old_size).await;
    l.close().await;
    r
}

/// Exports entries `from..=to` of the ledger at `url`.
pub async fn export(
    url: &str,
    format: ExportFormat,
    from: u64,
    to: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let l = Ledger::open_existing(url).await?;
    let r = l.export(format, from, to, out).await;
    l.close().await;
    r
}
