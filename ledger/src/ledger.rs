//! The [`Ledger`] handle: append and read.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::body::{parse_body, Amount, IntervalSums, KnownBody};
use crate::checkpoint::{check_origin, Checkpoint};
use crate::cluster::{Cluster, Fence};
use crate::entry::{entry_hash, Entry, Hash, NewEntry, BATCH_ENTRIES_MAX, BODY_BYTES_MAX};
use crate::error::{LedgerError, Result};
use crate::key::OperatorKey;
use crate::merkle::Frontier;
use crate::store::{to_hash, Batch, OpenMode, Pool, PostingRow, Reader};

/// Most entries one call to [`Ledger::entries`] returns.
pub const ENTRIES_PER_READ_MAX: u64 = 10_000;

/// The last entry of the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq (= number of entries).
    pub seq: u64,
    /// Its chain hash.
    #[serde(with = "crate::hexser::array")]
    pub hash: Hash,
}

/// What [`Ledger::append`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Seq of the first entry written.
    pub first_seq: u64,
    /// Seq of the last entry written (= the checkpoint's size).
    pub last_seq: u64,
    /// Chain hashes of the written entries, in order.
    pub hashes: Vec<Hash>,
    /// The signed checkpoint written in the same transaction.
    pub checkpoint: Checkpoint,
}

/// The writer's view of the head, kept between appends so the writer never re-reads old
/// entries. Checked against the database inside every append transaction.
#[derive(Clone, Debug)]
struct HeadState {
    hash: Hash,
    frontier: Frontier,
}

struct Writer {
    key: OperatorKey,
    origin: String,
    /// `None` until loaded, and again after any failed append (forces a reload).
    head: tokio::sync::Mutex<Option<HeadState>>,
    /// What each append must prove (cluster mode).
    fence: std::sync::Mutex<Fence>,
}

/// A handle on a ledger database. Reads need nothing else; appends need the operator key
/// ([`Ledger::with_operator`]). Share one handle (e.g. in an `Arc`) per process: appends through
/// one handle are queued, appends through different handles race and the losers get
/// [`LedgerError::Conflict`].
pub struct Ledger {
    pool: Pool,
    writer: Option<Writer>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("pool", &self.pool)
            .field("writer", &self.writer.as_ref().map(|w| &w.origin))
            .finish()
    }
}

impl Ledger {
    /// Opens (creating if missing) and migrates the ledger at `url`: `sqlite://PATH` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<Ledger> {
        Ok(Ledger {
            pool: Pool::connect(url, OpenMode::CreateAndMigrate).await?,
            writer: None,
        })
    }

    /// Opens an existing ledger without creating or migrating anything (for auditors).
    pub async fn open_existing(url: &str) -> Result<Ledger> {
        Ok(Ledger {
            pool: Pool::connect(url, OpenMode::Existing).await?,
            writer: None,
        })
    }

    /// Enables appends, signing checkpoints with `key` under the log name `origin`.
    pub fn with_operator(mut self, key: OperatorKey, origin: &str) -> Result<Ledger> {
        check_origin(origin)?;
        self.writer = Some(Writer {
            key,
            origin: origin.to_string(),
            head: tokio::sync::Mutex::new(None),
            fence: std::sync::Mutex::new(Fence::None),
        });
        Ok(self)
    }

    /// The coordination tables of several nodes, on a PostgreSQL ledger.
    pub fn cluster(&self) -> Result<Cluster> {
        match &self.pool {
            Pool::Postgres(p) => Ok(Cluster::new(p.clone())),
            Pool::Sqlite(_) => Err(LedgerError::ClusterNeedsPostgres),
        }
    }

    /// Sets what every later append must prove, and forgets the cached head (a new leader
    /// reads the head the last one left). `Fence::Leader` needs PostgreSQL.
    pub async fn set_fence(&self, fence: Fence) -> Result<()> {
        let writer = self.writer.as_ref().ok_or(LedgerError::ReadOnly)?;
        if fence != Fence::None && matches!(self.pool, Pool::Sqlite(_)) {
            return Err(LedgerError::ClusterNeedsPostgres);
        }
        let mut head = writer.head.lock().await;
        *head = None;
        *writer.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn reader(&self) -> Result<Reader> {
        self.pool.reader().await
    }

    /// Appends `entries` in one transaction, ending with a signed checkpoint covering them.
    /// Either all of it is durable or none of it is.
    ///
    /// Checks before writing: batch size and body size limits; bodies of kinds the ledger owns
    /// parse and are canonical; each settlement's `interval_start` equals its entry's; for every
    /// interval, this batch's settlement postings sum to exactly zero; corrections reference
    /// earlier entries. Inside the transaction, the stored head must be the one this handle
    /// computed against, else [`LedgerError::Conflict`] and nothing is written.
    pub async fn append(&self, entries: Vec<NewEntry>) -> Result<AppendReceipt> {
        self.append_sequenced(entries, &[]).await
    }

    /// [`Ledger::append`] of entries taken from the shared intake (cluster mode): entry `i`
    /// is intake row `intake_ids[i]`, marked sequenced (with its seq) in the same transaction,
    /// which fails if any of them already is.
    pub async fn append_sequenced(
        &self,
        entries: Vec<NewEntry>,
        intake_ids: &[i64],
    ) -> Result<AppendReceipt> {
        let writer = self.writer.as_ref().ok_or(LedgerError::ReadOnly)?;
        let fence = writer
            .fence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if fence == Fence::Follower {
            return Err(LedgerError::Fenced(
                "this node is a follower; the leader appends".into(),
            ));
        }
        if intake_ids.len() > entries.len() {
            return Err(LedgerError::Fenced(
                "more intake rows than entries in one append".into(),
            ));
        }
        let postings_by_entry = validate_batch(&entries)?;
        let mut guard = writer.head.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_head().await?);
        }
        let state = guard.as_ref().expect("loaded above").clone();
        let expected_size = state.frontier.size();
        let mut frontier = state.frontier;
        let mut prev = state.hash;
        let mut rows = Vec::with_capacity(entries.len());
        let mut postings = Vec::new();
        for (i, (e, p)) in entries.into_iter().zip(postings_by_entry).enumerate() {
            let seq = expected_size + 1 + i as u64;
            if let Some(targets) = p.corrects {
                if let Some(&t) = targets.iter().find(|&&t| t == 0 || t >= seq) {
                    return Err(LedgerError::BadCorrection {
                        index: i,
                        target: t,
                    });
                }
            }
            let hash = entry_hash(&prev, seq, e.kind.as_str(), e.interval_start, &e.body);
            frontier.push(&hash);
            for (idx, (account, amount, interval_start)) in p.postings.into_iter().enumerate() {
                postings.push(PostingRow {
                    seq: seq as i64,
                    idx: idx as i64,
                    account,
                    amount: amount.to_string(),
                    interval_start,
                });
            }
            rows.push(Entry {
                seq,
                kind: e.kind,
                interval_start: e.interval_start,
                body: e.body,
                prev_hash: prev,
                hash,
            });
            prev = hash;
        }
        let size = frontier.size();
        let checkpoint = Checkpoint::sign(&writer.key, &writer.origin, size, frontier.root())?;
        let frontier_bytes = frontier.peaks_bytes();
        let batch = Batch {
            expected_size,
            expected_hash: state.hash,
            entries: &rows,
            postings: &postings,
            checkpoint: &checkpoint,
            frontier: &frontier_bytes,
            fence: &fence,
            intake_ids,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        if let Err(e) = self.pool.write_batch(&batch).await {
            // Whatever happened, the cached head may be stale: reload before the next append.
            *guard = None;
            return Err(e);
        }
        *guard = Some(HeadState {
            hash: prev,
            frontier,
        });
        Ok(AppendReceipt {
            first_seq: expected_size + 1,
            last_seq: size,
            hashes: rows.iter().map(|e| e.hash).collect(),
            checkpoint,
        })
    }

    /// Loads the head and Merkle frontier from the latest checkpoint, checking that the
    /// checkpoint covers exactly the stored entries and that the cached frontier reproduces
    /// the signed root.
    async fn load_head(&self) -> Result<HeadState> {
        let mut r = self.reader().await?;
        let head = r.head().await?;
        let cp = r.latest_checkpoint().await?;
        r.finish().await?;
        match (head, cp) {
            (None, None) => Ok(HeadState {
                hash: crate::entry::GENESIS_PREV_HASH,
                frontier: Frontier::new(),
            }),
            (Some((seq, hash)), Some(cp)) => {
                let size = cp.checkpoint.size;
                if seq as u64 != size {
                    return Err(LedgerError::Corrupt(format!(
                        "head is seq {seq} but the latest checkpoint covers {size} entries"
                    )));
                }
                let frontier = Frontier::from_parts(size, &cp.frontier)
                    .filter(|f| f.root() == cp.checkpoint.root)
                    .ok_or_else(|| {
                        LedgerError::Corrupt(format!(
                            "stored frontier at size {size} does not reproduce the signed root"
                        ))
                    })?;
                let hash = to_hash(&hash)
                    .ok_or_else(|| LedgerError::Corrupt(format!("seq {seq}: hash not 32 bytes")))?;
                Ok(HeadState { hash, frontier })
            }
            (h, c) => Err(LedgerError::Corrupt(format!(
                "head {:?} without matching checkpoint {:?}",
                h.map(|h| h.0),
                c.map(|c| c.checkpoint.size)
            ))),
        }
    }

    /// The last entry, if any.
    pub async fn head(&self) -> Result<Option<Head>> {
        let mut r = self.reader().await?;
        let h = r.head().await?;
        r.finish().await?;
        h.map(|(seq, hash)| {
            Ok(Head {
                seq: seq as u64,
                hash: to_hash(&hash)
                    .ok_or_else(|| LedgerError::Corrupt(format!("seq {seq}: hash not 32 bytes")))?,
            })
        })
        .transpose()
    }

    /// The latest signed checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let mut r = self.reader().await?;
        let c = r.latest_checkpoint().await?;
        r.finish().await?;
        Ok(c.map(|c| c.checkpoint))
    }

    /// Every checkpoint, by size.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut r = self.reader().await?;
        let c = r.checkpoints().await?;
        r.finish().await?;
        Ok(c)
    }

    /// Entries with `from <= seq <= to`, at most [`ENTRIES_PER_READ_MAX`] of them (page with
    /// `from = last.seq + 1`).
    pub async fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry>> {
        let mut r = self.reader().await?;
        let raw = r.entries(from, to, ENTRIES_PER_READ_MAX as u32).await?;
        r.finish().await?;
        raw.into_iter().map(|e| e.into_entry()).collect()
    }

    /// One entry.
    pub async fn entry(&self, seq: u64) -> Result<Option<Entry>> {
        Ok(self.entries(seq, seq).await?.into_iter().next())
    }

    /// Balance per account: the sum of its postings (positive = the account is owed).
    pub async fn balances(&self) -> Result<BTreeMap<String, Amount>> {
        let mut r = self.reader().await?;
        let b = r.balances().await?;
        r.finish().await?;
        Ok(b)
    }

    /// Interval starts that have settlement entries, ascending.
    pub async fn intervals(&self) -> Result<Vec<i64>> {
        let mut r = self.reader().await?;
        let v = r.intervals().await?;
        r.finish().await?;
        Ok(v)
    }

    /// Whether interval `start` has settlement entries (i.e. was settled).
    pub async fn has_interval(&self, start: i64) -> Result<bool> {
        let mut r = self.reader().await?;
        let v = r.has_interval(start).await?;
        r.finish().await?;
        Ok(v)
    }
}

/// Per-entry facts extracted during validation.
#[derive(Default)]
struct Extracted {
    postings: Vec<(String, Amount, i64)>,
    corrects: Option<Vec<u64>>,
}

fn validate_batch(entries: &[NewEntry]) -> Result<Vec<Extracted>> {
    if entries.is_empty() {
        return Err(LedgerError::EmptyBatch);
    }
    if entries.len() > BATCH_ENTRIES_MAX {
        return Err(LedgerError::BatchTooLarge(entries.len()));
    }
    let mut sums = IntervalSums::new();
    let mut out = Vec::with_capacity(entries.len());
    for (index, e) in entries.iter().enumerate() {
        if e.body.len() > BODY_BYTES_MAX {
            return Err(LedgerError::BodyTooLarge {
                index,
                len: e.body.len(),
            });
        }
        let body =
            parse_body(e.kind, &e.body).map_err(|source| LedgerError::Body { index, source })?;
        let mut x = Extracted::default();
        match body {
            KnownBody::Settlement(s) => {
                if e.interval_start != Some(s.interval_start) {
                    return Err(LedgerError::IntervalMismatch {
                        index,
                        body: s.interval_start,
                        entry: e.interval_start,
                    });
                }
                let sum = sums.entry(s.interval_start).or_insert(Amount::ZERO);
                for p in s.postings {
                    *sum = sum.checked_add(p.amount).ok_or(LedgerError::NotZeroSum {
                        interval_start: s.interval_start,
                        sum: None,
                    })?;
                    x.postings.push((p.account, p.amount, s.interval_start));
                }
            }
            KnownBody::Delivery(d) => {
                if e.interval_start != Some(d.interval_start) {
                    return Err(LedgerError::IntervalMismatch {
                        index,
                        body: d.interval_start,
                        entry: e.interval_start,
                    });
                }
                let sum = sums.entry(d.interval_start).or_insert(Amount::ZERO);
                for p in d.postings {
                    *sum = sum.checked_add(p.amount).ok_or(LedgerError::NotZeroSum {
                        interval_start: d.interval_start,
                        sum: None,
                    })?;
                    x.postings.push((p.account, p.amount, d.interval_start));
                }
            }
            KnownBody::Reading(_) => {
                if e.interval_start.is_none() {
                    return Err(LedgerError::Body {
                        index,
                        source: crate::body::BodyError::Invalid {
                            kind: e.kind,
                            reason: "a meter_reading entry needs its interval_start".into(),
                        },
                    });
                }
            }
            KnownBody::Correction(c) => x.corrects = Some(c.corrects),
            KnownBody::Gate(g) => {
                if e.interval_start != Some(g.interval_start) {
                    return Err(LedgerError::IntervalMismatch {
                        index,
                        body: g.interval_start,
                        entry: e.interval_start,
                    });
                }
            }
            KnownBody::Participant(_)
            | KnownBody::Signed(_)
            | KnownBody::Meter(_)
            | KnownBody::Opaque => {}
        }
        out.push(x);
    }
    if let Some((&interval_start, &sum)) = sums.iter().find(|(_, s)| **s != Amount::ZERO) {
        return Err(LedgerError::NotZeroSum {
            interval_start,
            sum: Some(sum),
        });
    }
    Ok(out)
}
