//! The ledger's error type.

use crate::body::{Amount, BodyError};
use crate::checkpoint::CheckpointError;
use crate::entry::{BATCH_ENTRIES_MAX, BODY_BYTES_MAX};
use crate::key::KeyError;

/// Errors from [`crate::Ledger`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The URL names no supported backend.
    #[error("unsupported database url {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// A database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Running the schema migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another writer appended first; nothing was written. Retry (the handle has reloaded the
    /// head).
    #[error("append conflict: the ledger head moved away from seq {expected_head} ({reason}); nothing was written")]
    Conflict {
        /// The head this writer expected.
        expected_head: u64,
        /// What was observed.
        reason: String,
    },
    /// Cluster mode: this node does not hold the leader lease at the epoch it appends with (a
    /// follower, or a leader another node has replaced); nothing was written.
    #[error("fenced: {0}; nothing was written")]
    Fenced(String),
    /// A cluster feature on a backend that has none (only PostgreSQL coordinates nodes).
    #[error("several nodes need a PostgreSQL ledger")]
    ClusterNeedsPostgres,
    /// `append` on a handle opened without an operator key.
    #[error("this ledger handle has no operator key: call Ledger::with_operator to append")]
    ReadOnly,
    /// `append` with no entries.
    #[error("empty batch: append needs at least one entry")]
    EmptyBatch,
    /// Too many entries in one batch.
    #[error("batch of {0} entries exceeds the limit of {BATCH_ENTRIES_MAX}")]
    BatchTooLarge(usize),
    /// A body is larger than [`BODY_BYTES_MAX`].
    #[error("batch entry {index}: body of {len} bytes exceeds the limit of {BODY_BYTES_MAX}")]
    BodyTooLarge {
        /// Index in the batch.
        index: usize,
        /// Body length.
        len: usize,
    },
    /// A body of a kind the ledger understands is invalid or not canonical.
    #[error("batch entry {index}: {source}")]
    Body {
        /// Index in the batch.
        index: usize,
        /// What is wrong.
        source: BodyError,
    },
    /// A settlement or gate body's `interval_start` differs from its entry's.
    #[error("batch entry {index}: body interval_start {body} differs from entry interval_start {entry:?}")]
    IntervalMismatch {
        /// Index in the batch.
        index: usize,
        /// In the body.
        body: i64,
        /// On the entry.
        entry: Option<i64>,
    },
    /// The batch's postings of an interval do not sum to zero.
    #[error("settlement postings of interval {interval_start} sum to {}, not zero", sum.map_or("more than the largest amount".to_string(), |s| s.to_string()))]
    NotZeroSum {
        /// The interval.
        interval_start: i64,
        /// The sum (`None` if it overflowed).
        sum: Option<Amount>,
    },
    /// A correction references an entry that does not precede it.
    #[error("batch entry {index}: correction references seq {target}, which does not precede it")]
    BadCorrection {
        /// Index in the batch.
        index: usize,
        /// The referenced seq.
        target: u64,
    },
    /// Stored data contradicts itself (run `audit::verify`).
    #[error("stored ledger is inconsistent: {0}")]
    Corrupt(String),
    /// Checkpoint error.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Key error.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No entry with this seq.
    #[error("no entry with seq {0}")]
    NotFound(u64),
    /// The ledger has no checkpoint yet.
    #[error("the ledger has no checkpoint yet")]
    NoCheckpoint,
    /// No checkpoint covers exactly this many entries.
    #[error("no checkpoint of size {0}")]
    NoCheckpointAt(u64),
    /// A consistency proof from a larger tree to a smaller one.
    #[error("consistency proof from size {old} to the smaller size {new}")]
    ProofRange {
        /// The older (first) size asked for.
        old: u64,
        /// The newer (second) size asked for.
        new: u64,
    },
    /// Writing an export failed.
    #[error("export write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
