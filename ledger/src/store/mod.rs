//! Storage backends. Each backend is written natively (its own SQL, types and locking); this
//! module only dispatches.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::collections::BTreeMap;

use crate::body::Amount;
use crate::checkpoint::Checkpoint;
use crate::entry::{Entry, EntryKind, Hash};
use crate::error::{LedgerError, Result};

/// Entries fetched per page when scanning (verify, export, proofs). Bounds memory per page at
/// roughly 10,000 × (body size + 100) bytes.
pub(crate) const ENTRIES_PER_PAGE_MAX: u32 = 10_000;

/// Rows per multi-row INSERT statement. SQLite allows 32,766 bound parameters and PostgreSQL
/// 65,535; 1,000 rows × 6 columns stays far below both while amortising per-statement cost.
pub(crate) const ROWS_PER_INSERT_MAX: usize = 1_000;

/// A column that should hold a 32-byte hash: the array when it does (no allocation on the hot
/// path), the raw bytes when it does not.
pub(crate) type HashCol = std::result::Result<Hash, Vec<u8>>;

pub(crate) fn hash_col(b: &[u8]) -> HashCol {
    to_hash(b).ok_or_else(|| b.to_vec())
}

/// Bytes of a hash column, for display.
pub(crate) fn hash_col_bytes(h: &HashCol) -> &[u8] {
    match h {
        Ok(a) => a,
        Err(v) => v,
    }
}

/// An entry as stored, before any interpretation (the verifier must see even invalid rows).
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) seq: i64,
    /// The kind, or the unknown string.
    pub(crate) kind: std::result::Result<EntryKind, String>,
    pub(crate) interval_start: Option<i64>,
    pub(crate) body: Vec<u8>,
    pub(crate) prev_hash: HashCol,
    pub(crate) hash: HashCol,
}

impl RawEntry {
    pub(crate) fn kind_str(&self) -> &str {
        match &self.kind {
            Ok(k) => k.as_str(),
            Err(s) => s,
        }
    }

    pub(crate) fn into_entry(self) -> Result<Entry> {
        let corrupt = |what: &str| LedgerError::Corrupt(format!("seq {}: {what}", self.seq));
        Ok(Entry {
            seq: u64::try_from(self.seq).map_err(|_| corrupt("negative seq"))?,
            kind: self
                .kind
                .clone()
                .map_err(|k| corrupt(&format!("unknown kind {k:?}")))?,
            interval_start: self.interval_start,
            prev_hash: self
                .prev_hash
                .clone()
                .map_err(|_| corrupt("prev_hash not 32 bytes"))?,
            hash: self
                .hash
                .clone()
                .map_err(|_| corrupt("hash not 32 bytes"))?,
            body: self.body,
        })
    }
}

pub(crate) fn to_hash(b: &[u8]) -> Option<Hash> {
    b.try_into().ok()
}

/// A postings-table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PostingRow {
    pub(crate) seq: i64,
    pub(crate) idx: i64,
    pub(crate) account: String,
    /// Canonical decimal text (SQLite stores it; PostgreSQL renders NUMERIC as text).
    pub(crate) amount: String,
    pub(crate) interval_start: i64,
}

/// A stored checkpoint plus the writer's frontier cache.
#[derive(Debug, Clone)]
pub(crate) struct StoredCheckpoint {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) frontier: Vec<u8>,
}

/// What a batch writes, prepared outside the transaction.
pub(crate) struct Batch<'a> {
    /// Head the writer computed against: (size, hash of entry `size`).
    pub(crate) expected_size: u64,
    pub(crate) expected_hash: Hash,
    pub(crate) entries: &'a [Entry],
    pub(crate) postings: &'a [PostingRow],
    pub(crate) checkpoint: &'a Checkpoint,
    pub(crate) frontier: &'a [u8],
    /// What the writer must prove inside the transaction (cluster mode).
    pub(crate) fence: &'a crate::cluster::Fence,
    /// Intake rows the first entries sequence, in order (cluster mode).
    pub(crate) intake_ids: &'a [i64],
    pub(crate) created_at: i64,
}

/// A connection pool of either backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A read transaction (a consistent snapshot while it lives).
pub(crate) enum Reader {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Whether `connect` may create and migrate the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create if missing and run migrations (the operator's server).
    CreateAndMigrate,
    /// Open an existing database untouched (auditors).
    Existing,
}

impl Pool {
    pub(crate) async fn connect(url: &str, mode: OpenMode) -> Result<Pool> {
        if url.starts_with("sqlite:") {
            Ok(Pool::Sqlite(sqlite::connect(url, mode).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Pool::Postgres(postgres::connect(url, mode).await?))
        } else {
            Err(LedgerError::UnsupportedUrl(url.to_string()))
        }
    }

    pub(crate) async fn reader(&self) -> Result<Reader> {
        Ok(match self {
            Pool::Sqlite(p) => Reader::Sqlite(p.begin().await?),
            Pool::Postgres(p) => Reader::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    pub(crate) async fn write_batch(&self, batch: &Batch<'_>) -> Result<()> {
        match self {
            Pool::Sqlite(p) => sqlite::write_batch(p, batch).await,
            Pool::Postgres(p) => postgres::write_batch(p, batch).await,
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match $self {
            Reader::Sqlite(tx) => sqlite::$f(&mut **tx $(, $arg)*).await,
            Reader::Postgres(tx) => postgres::$f(&mut **tx $(, $arg)*).await,
        }
    };
}

impl Reader {
    /// Entries with `from <= seq <= to`, at most `limit`, in seq order.
    pub(crate) async fn entries(
        &mut self,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<RawEntry>> {
        let (from, to) = (clamp(from), clamp(to));
        dispatch!(self, entries(from, to, limit))
    }

    /// Postings rows with `from <= seq <= to`, ordered by (seq, idx).
    pub(crate) async fn postings(&mut self, from: u64, to: u64) -> Result<Vec<PostingRow>> {
        let (from, to) = (clamp(from), clamp(to));
        dispatch!(self, postings(from, to))
    }

    /// Every checkpoint, by size.
    pub(crate) async fn checkpoints(&mut self) -> Result<Vec<Checkpoint>> {
        dispatch!(self, checkpoints())
    }

    /// The checkpoint of exactly `size` entries, if one was stored.
    pub(crate) async fn checkpoint_at(&mut self, size: u64) -> Result<Option<Checkpoint>> {
        let size = clamp(size);
        dispatch!(self, checkpoint_at(size))
    }

    pub(crate) async fn latest_checkpoint(&mut self) -> Result<Option<StoredCheckpoint>> {
        dispatch!(self, latest_checkpoint())
    }

    /// (seq, hash) of the last entry.
    pub(crate) async fn head(&mut self) -> Result<Option<(i64, Vec<u8>)>> {
        dispatch!(self, head())
    }

    /// Chain hashes of entries 1..=size in order (raw, possibly short if rows are missing).
    pub(crate) async fn entry_hashes(&mut self, size: u64) -> Result<Vec<(i64, Vec<u8>)>> {
        let size = clamp(size);
        dispatch!(self, entry_hashes(size))
    }

    pub(crate) async fn balances(&mut self) -> Result<BTreeMap<String, Amount>> {
        dispatch!(self, balances())
    }

    pub(crate) async fn intervals(&mut self) -> Result<Vec<i64>> {
        dispatch!(self, intervals())
    }

    pub(crate) async fn has_interval(&mut self, start: i64) -> Result<bool> {
        dispatch!(self, has_interval(start))
    }

    pub(crate) async fn finish(self) -> Result<()> {
        match self {
            Reader::Sqlite(tx) => tx.rollback().await?,
            Reader::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

fn clamp(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// Maps errors from the write transaction: losing a race shows up as a unique violation (two
/// writers inserting the same seq) or, on SQLite, as a busy/locked database.
pub(crate) fn write_error(e: sqlx::Error, expected_head: u64) -> LedgerError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        // SQLite: 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED, 517 = SQLITE_BUSY_SNAPSHOT.
        // PostgreSQL: 40001 serialization_failure, 40P01 deadlock_detected.
        if db.is_unique_violation()
            || matches!(code.as_str(), "5" | "6" | "517" | "40001" | "40P01")
        {
            return LedgerError::Conflict {
                expected_head,
                reason: db.message().to_string(),
            };
        }
    }
    LedgerError::Database(e)
}

pub(crate) fn amount_text_sum(rows: Vec<(String, String)>) -> Result<BTreeMap<String, Amount>> {
    let mut out: BTreeMap<String, Amount> = BTreeMap::new();
    for (account, amount) in rows {
        let a: Amount = amount
            .parse()
            .map_err(|e| LedgerError::Corrupt(format!("postings amount: {e}")))?;
        let slot = out.entry(account).or_insert(Amount::ZERO);
        *slot = slot
            .checked_add(a)
            .ok_or_else(|| LedgerError::Corrupt("balance overflow".into()))?;
    }
    Ok(out)
}
