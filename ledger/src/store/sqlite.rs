//! SQLite backend: one file, WAL journal, `synchronous = FULL` (a commit survives power loss,
//! not just a process crash), writers serialised by `BEGIN IMMEDIATE`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::{
    amount_text_sum, hash_col, to_hash, write_error, Batch, OpenMode, PostingRow, RawEntry,
    StoredCheckpoint, ROWS_PER_INSERT_MAX,
};
use crate::body::Amount;
use crate::checkpoint::Checkpoint;
use crate::entry::EntryKind;
use crate::error::{LedgerError, Result};

/// How long a writer waits for another writer's transaction before giving up with a conflict.
/// Interval batches commit in well under a second; 30 s only trips if a writer is stuck.
const BUSY_TIMEOUT_S: u64 = 30;
/// Rows the SQLite worker thread may queue ahead of the reader. sqlx's default of 50 makes the
/// worker and the reader hand over (futex + wakeup) every few rows; a full page fits here, which
/// measured ~2× faster scans in `audit::verify`.
const ROW_CHANNEL_ROWS: usize = super::ENTRIES_PER_PAGE_MAX as usize;
/// Pool size: SQLite has one writer anyway; a few readers serve the live API.
const POOL_CONNECTIONS_MAX: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub(crate) async fn connect(url: &str, mode: OpenMode) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(mode == OpenMode::CreateAndMigrate)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(BUSY_TIMEOUT_S))
        .row_buffer_size(ROW_CHANNEL_ROWS);
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .connect_with(opts)
        .await?;
    if mode == OpenMode::CreateAndMigrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(pool)
}

pub(crate) async fn write_batch(pool: &SqlitePool, b: &Batch<'_>) -> Result<()> {
    let werr = |e| write_error(e, b.expected_size);
    if *b.fence != crate::cluster::Fence::None || !b.intake_ids.is_empty() {
        return Err(LedgerError::ClusterNeedsPostgres);
    }
    // BEGIN IMMEDIATE takes the write lock now, so the head we read below cannot change
    // before we commit.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(werr)?;
    let head = head(&mut tx).await.map_err(|e| match e {
        LedgerError::Database(e) => werr(e),
        other => other,
    })?;
    let (found_size, found_hash) = match &head {
        None => (0u64, crate::entry::GENESIS_PREV_HASH.to_vec()),
        Some((s, h)) => (*s as u64, h.clone()),
    };
    if found_size != b.expected_size || found_hash != b.expected_hash {
        return Err(LedgerError::Conflict {
            expected_head: b.expected_size,
            reason: format!("stored head is seq {found_size}"),
        });
    }
    for chunk in b.entries.chunks(ROWS_PER_INSERT_MAX) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO entries (seq, kind, interval_start, body, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.seq as i64)
                .push_bind(e.kind.as_str())
                .push_bind(e.interval_start)
                .push_bind(e.body.as_slice())
                .push_bind(e.prev_hash.as_slice())
                .push_bind(e.hash.as_slice());
        });
        q.build().execute(&mut *tx).await.map_err(werr)?;
    }
    for chunk in b.postings.chunks(ROWS_PER_INSERT_MAX) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO postings (seq, idx, account, amount, interval_start) ");
        q.push_values(chunk, |mut row, p| {
            row.push_bind(p.seq)
                .push_bind(p.idx)
                .push_bind(p.account.as_str())
                .push_bind(p.amount.as_str())
                .push_bind(p.interval_start);
        });
        q.build().execute(&mut *tx).await.map_err(werr)?;
    }
    let c = b.checkpoint;
    sqlx::query(
        "INSERT INTO checkpoints (size, root_hash, signature, key_id, origin, frontier, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(c.size as i64)
    .bind(c.root.as_slice())
    .bind(c.signature.as_slice())
    .bind(c.key_id.as_slice())
    .bind(c.origin.as_str())
    .bind(b.frontier)
    .bind(b.created_at)
    .execute(&mut *tx)
    .await
    .map_err(werr)?;
    tx.commit().await.map_err(werr)?;
    Ok(())
}

fn raw_entry(r: &sqlx::sqlite::SqliteRow) -> Result<RawEntry> {
    let kind: &str = r.try_get(1)?;
    Ok(RawEntry {
        seq: r.try_get(0)?,
        kind: kind.parse::<EntryKind>().map_err(|_| kind.to_string()),
        interval_start: r.try_get(2)?,
        body: r.try_get(3)?,
        prev_hash: hash_col(r.try_get::<&[u8], _>(4)?),
        hash: hash_col(r.try_get::<&[u8], _>(5)?),
    })
}

pub(crate) async fn entries(
    c: &mut SqliteConnection,
    from: i64,
    to: i64,
    limit: u32,
) -> Result<Vec<RawEntry>> {
    let rows = sqlx::query(
        "SELECT seq, kind, interval_start, body, prev_hash, hash FROM entries \
         WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
    )
    .bind(from)
    .bind(to)
    .bind(i64::from(limit))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(raw_entry).collect()
}

pub(crate) async fn postings(
    c: &mut SqliteConnection,
    from: i64,
    to: i64,
) -> Result<Vec<PostingRow>> {
    let rows = sqlx::query(
        "SELECT seq, idx, account, amount, interval_start FROM postings \
         WHERE seq >= ? AND seq <= ? ORDER BY seq, idx",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PostingRow {
                seq: r.try_get(0)?,
                idx: r.try_get(1)?,
                account: r.try_get(2)?,
                amount: r.try_get(3)?,
                interval_start: r.try_get(4)?,
            })
        })
        .collect()
}

fn checkpoint_row(r: &sqlx::sqlite::SqliteRow) -> Result<StoredCheckpoint> {
    let size: i64 = r.try_get(0)?;
    let corrupt = |w: &str| LedgerError::Corrupt(format!("checkpoint {size}: {w}"));
    let root: Vec<u8> = r.try_get(1)?;
    let sig: Vec<u8> = r.try_get(2)?;
    let key_id: Vec<u8> = r.try_get(3)?;
    Ok(StoredCheckpoint {
        checkpoint: Checkpoint {
            origin: r.try_get(4)?,
            size: u64::try_from(size).map_err(|_| corrupt("negative size"))?,
            root: to_hash(&root).ok_or_else(|| corrupt("root not 32 bytes"))?,
            key_id: key_id
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("key id not 4 bytes"))?,
            signature: sig
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("signature not 64 bytes"))?,
        },
        frontier: r.try_get(5)?,
    })
}

pub(crate) async fn checkpoints(c: &mut SqliteConnection) -> Result<Vec<Checkpoint>> {
    let rows = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints ORDER BY size",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| checkpoint_row(r).map(|s| s.checkpoint))
        .collect()
}

pub(crate) async fn checkpoint_at(
    c: &mut SqliteConnection,
    size: i64,
) -> Result<Option<Checkpoint>> {
    let row = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints \
         WHERE size = ?",
    )
    .bind(size)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref()
        .map(|r| checkpoint_row(r).map(|s| s.checkpoint))
        .transpose()
}

pub(crate) async fn latest_checkpoint(
    c: &mut SqliteConnection,
) -> Result<Option<StoredCheckpoint>> {
    let row = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints \
         ORDER BY size DESC LIMIT 1",
    )
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(checkpoint_row).transpose()
}

pub(crate) async fn head(c: &mut SqliteConnection) -> Result<Option<(i64, Vec<u8>)>> {
    let row = sqlx::query("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *c)
        .await?;
    Ok(match row {
        None => None,
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
    })
}

pub(crate) async fn entry_hashes(
    c: &mut SqliteConnection,
    size: i64,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let rows = sqlx::query("SELECT seq, hash FROM entries WHERE seq <= ? ORDER BY seq")
        .bind(size)
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

pub(crate) async fn balances(c: &mut SqliteConnection) -> Result<BTreeMap<String, Amount>> {
    // Amounts are decimal text: summing in SQL would go through floating point.
    let rows = sqlx::query("SELECT account, amount FROM postings")
        .fetch_all(&mut *c)
        .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>>>()?;
    amount_text_sum(rows)
}

pub(crate) async fn intervals(c: &mut SqliteConnection) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT DISTINCT interval_start FROM entries \
         WHERE kind = 'settlement' AND interval_start IS NOT NULL ORDER BY interval_start",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

pub(crate) async fn has_interval(c: &mut SqliteConnection, start: i64) -> Result<bool> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM entries WHERE kind = 'settlement' AND interval_start = ?)",
    )
    .bind(start)
    .fetch_one(&mut *c)
    .await?;
    Ok(row.try_get::<i64, _>(0)? != 0)
}
