//! PostgreSQL backend: BYTEA hashes and bodies, NUMERIC(30,2) amounts, writers serialised by
//! locking the one-row `ledger_head` table (`SELECT … FOR UPDATE`) inside the append
//! transaction, with the primary key on `seq` as a second line of defence.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};

use super::{
    amount_text_sum, hash_col, to_hash, write_error, Batch, OpenMode, PostingRow, RawEntry,
    StoredCheckpoint, ROWS_PER_INSERT_MAX,
};
use crate::body::Amount;
use crate::checkpoint::Checkpoint;
use crate::cluster::Fence;
use crate::entry::EntryKind;
use crate::error::{LedgerError, Result};

/// Pool size: one writer plus a few readers for the live API.
const POOL_CONNECTIONS_MAX: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub(crate) async fn connect(url: &str, mode: OpenMode) -> Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .connect_with(opts)
        .await?;
    if mode == OpenMode::CreateAndMigrate {
        MIGRATOR.run(&pool).await?;
    }
    Ok(pool)
}

pub(crate) async fn write_batch(pool: &PgPool, b: &Batch<'_>) -> Result<()> {
    let werr = |e| write_error(e, b.expected_size);
    let mut tx = pool.begin().await.map_err(werr)?;
    if *b.fence != Fence::None {
        // A leader frozen mid-append must not hold the head and lease rows past its lease.
        crate::cluster::set_idle_limit(&mut tx)
            .await
            .map_err(werr)?;
    }
    // Serialise writers: a second writer blocks here until the first commits, then (READ
    // COMMITTED takes a fresh snapshot per statement) sees the new head and loses the check.
    sqlx::query("SELECT id FROM ledger_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .map_err(werr)?;
    // Cluster mode: the lease row, shared-locked until commit, must still name this writer at
    // its epoch. A takeover's UPDATE of the row waits for this transaction, and every append
    // after the takeover sees the new epoch here and is refused.
    if let Fence::Leader { node, epoch } = b.fence {
        let r = sqlx::query("SELECT holder, epoch FROM cluster_lease WHERE id = 1 FOR SHARE")
            .fetch_one(&mut *tx)
            .await
            .map_err(werr)?;
        let holder: Option<String> = r.try_get(0).map_err(werr)?;
        let now: i64 = r.try_get(1).map_err(werr)?;
        if holder.as_deref() != Some(node.as_str()) || now as u64 != *epoch {
            return Err(LedgerError::Fenced(format!(
                "node {node:?} was elected at epoch {epoch}, but the lease is now epoch {now} held by {}",
                holder.map_or("nobody".to_string(), |h| format!("{h:?}"))
            )));
        }
    }
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
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
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
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO postings (seq, idx, account, amount, interval_start) ");
        q.push_values(chunk, |mut row, p| {
            row.push_bind(p.seq)
                .push_bind(p.idx as i32)
                .push_bind(p.account.as_str())
                .push_bind(p.amount.as_str())
                .push_unseparated("::numeric")
                .push_bind(p.interval_start);
        });
        q.build().execute(&mut *tx).await.map_err(werr)?;
    }
    if !b.intake_ids.is_empty() {
        let seqs: Vec<i64> = b.entries[..b.intake_ids.len()]
            .iter()
            .map(|e| e.seq as i64)
            .collect();
        let marked = sqlx::query(
            "UPDATE intake SET seq = v.s FROM unnest($1::bigint[], $2::bigint[]) AS v(id, s) \
             WHERE intake.id = v.id AND intake.seq IS NULL",
        )
        .bind(b.intake_ids)
        .bind(&seqs)
        .execute(&mut *tx)
        .await
        .map_err(werr)?
        .rows_affected();
        if marked != b.intake_ids.len() as u64 {
            return Err(LedgerError::Conflict {
                expected_head: b.expected_size,
                reason: format!(
                    "{} of {} intake rows were already sequenced",
                    b.intake_ids.len() as u64 - marked,
                    b.intake_ids.len()
                ),
            });
        }
    }
    if *b.fence != Fence::None {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::cluster::LEDGER_CHANNEL)
            .bind(b.checkpoint.size.to_string())
            .execute(&mut *tx)
            .await
            .map_err(werr)?;
    }
    let c = b.checkpoint;
    sqlx::query(
        "INSERT INTO checkpoints (size, root_hash, signature, key_id, origin, frontier, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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

fn raw_entry(r: &sqlx::postgres::PgRow) -> Result<RawEntry> {
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
    c: &mut PgConnection,
    from: i64,
    to: i64,
    limit: u32,
) -> Result<Vec<RawEntry>> {
    let rows = sqlx::query(
        "SELECT seq, kind, interval_start, body, prev_hash, hash FROM entries \
         WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(i64::from(limit))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(raw_entry).collect()
}

pub(crate) async fn postings(c: &mut PgConnection, from: i64, to: i64) -> Result<Vec<PostingRow>> {
    let rows = sqlx::query(
        "SELECT seq, idx, account, amount::text, interval_start FROM postings \
         WHERE seq >= $1 AND seq <= $2 ORDER BY seq, idx",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PostingRow {
                seq: r.try_get(0)?,
                idx: i64::from(r.try_get::<i32, _>(1)?),
                account: r.try_get(2)?,
                amount: r.try_get(3)?,
                interval_start: r.try_get(4)?,
            })
        })
        .collect()
}

fn checkpoint_row(r: &sqlx::postgres::PgRow) -> Result<StoredCheckpoint> {
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

pub(crate) async fn checkpoints(c: &mut PgConnection) -> Result<Vec<Checkpoint>> {
    let rows = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints ORDER BY size",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|r| checkpoint_row(r).map(|s| s.checkpoint))
        .collect()
}

pub(crate) async fn checkpoint_at(c: &mut PgConnection, size: i64) -> Result<Option<Checkpoint>> {
    let row = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints \
         WHERE size = $1",
    )
    .bind(size)
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref()
        .map(|r| checkpoint_row(r).map(|s| s.checkpoint))
        .transpose()
}

pub(crate) async fn latest_checkpoint(c: &mut PgConnection) -> Result<Option<StoredCheckpoint>> {
    let row = sqlx::query(
        "SELECT size, root_hash, signature, key_id, origin, frontier FROM checkpoints \
         ORDER BY size DESC LIMIT 1",
    )
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(checkpoint_row).transpose()
}

pub(crate) async fn head(c: &mut PgConnection) -> Result<Option<(i64, Vec<u8>)>> {
    let row = sqlx::query("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *c)
        .await?;
    Ok(match row {
        None => None,
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
    })
}

pub(crate) async fn entry_hashes(c: &mut PgConnection, size: i64) -> Result<Vec<(i64, Vec<u8>)>> {
    let rows = sqlx::query("SELECT seq, hash FROM entries WHERE seq <= $1 ORDER BY seq")
        .bind(size)
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

pub(crate) async fn balances(c: &mut PgConnection) -> Result<BTreeMap<String, Amount>> {
    // NUMERIC sums exactly; rendered as text and parsed into the fixed-scale Amount.
    let rows = sqlx::query("SELECT account, SUM(amount)::text FROM postings GROUP BY account")
        .fetch_all(&mut *c)
        .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>>>()?;
    amount_text_sum(rows)
}

pub(crate) async fn intervals(c: &mut PgConnection) -> Result<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT DISTINCT interval_start FROM entries \
         WHERE kind = 'settlement' AND interval_start IS NOT NULL ORDER BY interval_start",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

pub(crate) async fn has_interval(c: &mut PgConnection, start: i64) -> Result<bool> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM entries WHERE kind = 'settlement' AND interval_start = $1)",
    )
    .bind(start)
    .fetch_one(&mut *c)
    .await?;
    Ok(row.try_get::<bool, _>(0)?)
}
