//! Several nodes on one PostgreSQL ledger (`ledger/DESIGN.md`, "Several nodes"): the leader
//! lease with its epoch, and the shared intake every node writes acknowledged orders to.
//!
//! The chain stays the record. These tables only coordinate: intake rows are what nodes have
//! acknowledged and the leader has yet to sequence; the lease says which node may append.
//!
//! Exactness rests on row locks, not on any node's memory:
//! - a participant's `intake_nonce` row is locked for the whole intake transaction, so its
//!   nonces increase and its intake ids follow them;
//! - an interval's `intake_interval` row is locked by every intake transaction that writes to
//!   the interval and by the gate closure, so once [`Cluster::close_gate`] returns nothing more
//!   for the interval can commit, and everything that did is visible to the leader;
//! - every cluster-mode append locks the lease row (`FOR SHARE`) and checks its epoch
//!   ([`Fence`]); a takeover updates that row, so it waits for appends in flight and every
//!   later append by the old leader fails with [`LedgerError::Fenced`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{PgPool, Row};

use crate::error::{LedgerError, Result};

/// Attempts of one intake batch when PostgreSQL aborts it as a deadlock or serialization
/// failure (both leave nothing written).
const INTAKE_ATTEMPTS_MAX: u32 = 3;

/// Longest a cluster-mode transaction (an append, an intake batch) may sit idle between its
/// statements, milliseconds (`idle_in_transaction_session_timeout`). A node frozen mid-
/// transaction (SIGSTOP, a stalled VM) would otherwise hold the lease row or an interval's row
/// until it resumed, and no takeover or gate could proceed; the server ends such a session and
/// its transaction writes nothing.
pub const TRANSACTION_IDLE_MS_MAX: u64 = 1_000;
/// Longest a lease takeover waits for the lease row, milliseconds; then it tries again later.
const ACQUIRE_LOCK_WAIT_MS: u64 = 500;

/// The PostgreSQL notification channel an append announces its new size on (cluster mode).
pub const LEDGER_CHANNEL: &str = "baton_ledger";
/// The notification channel intake announces new rows on, for the leader's sequencer.
pub const INTAKE_CHANNEL: &str = "baton_intake";

/// What the writer must prove before each append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fence {
    /// One process owns the ledger (the default): no lease is checked.
    #[default]
    None,
    /// A follower: every append is refused with [`LedgerError::Fenced`].
    Follower,
    /// The leader elected with `epoch`: each append checks, inside its transaction, that the
    /// lease still names `node` at `epoch`.
    Leader {
        /// This node.
        node: String,
        /// The epoch it was elected with.
        epoch: u64,
    },
}

/// The lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The node holding it, if any.
    pub holder: Option<String>,
    /// Its epoch.
    pub epoch: u64,
    /// Where the holder serves gRPC.
    pub addr: Option<String>,
    /// Milliseconds until it expires (negative: expired), by the database's clock.
    pub expires_in_ms: i64,
}

/// An order or cancel to acknowledge.
#[derive(Clone, Debug)]
pub struct IntakeItem {
    /// Order or cancel.
    pub kind: IntakeKind,
    /// Its signer.
    pub participant: String,
    /// Its signed nonce.
    pub nonce: u64,
    /// The order's id; for a cancel, the id of the order it cancels.
    pub order_id: String,
    /// An order's interval (ignored for a cancel: the cancelled order's is used).
    pub interval_start: i64,
    /// The ledger body the entry will carry (`SignedMessageBody` bytes).
    pub body: Vec<u8>,
    /// When the node accepted it, Unix ms (the node's wall clock).
    pub accepted_at_ms: i64,
}

/// Order or cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakeKind {
    /// A signed order.
    Order,
    /// A signed cancel.
    Cancel,
}

impl IntakeKind {
    fn as_str(self) -> &'static str {
        match self {
            IntakeKind::Order => "order",
            IntakeKind::Cancel => "cancel",
        }
    }
}

/// Intake limits checked against every node's intake together.
#[derive(Clone, Copy, Debug)]
pub struct IntakeLimits {
    /// Orders (not cancelled) one interval may hold.
    pub orders_per_interval_max: u64,
    /// Orders (not cancelled, gate not closed) one participant may hold.
    pub open_orders_per_participant_max: u64,
}

/// An acknowledged intake row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intaken {
    /// Its intake id: increasing per participant, unique, not the chain seq.
    pub intake_id: i64,
    /// The interval it belongs to (a cancel: its order's).
    pub interval_start: i64,
}

/// Why intake refused one item; nothing of it was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntakeRefusal {
    /// The nonce is not above the participant's last.
    #[error("nonce {nonce} is not above the last nonce used, {last}")]
    NonceNotIncreasing {
        /// Offered.
        nonce: u64,
        /// The last one taken.
        last: u64,
    },
    /// The interval's gate has closed.
    #[error("the gate of interval {0} has closed")]
    GateClosed(i64),
    /// The interval holds its maximum of orders.
    #[error("the interval holds its limit of {0} orders")]
    IntervalFull(u64),
    /// The participant holds its maximum of open orders.
    #[error("the participant holds its limit of {0} open orders")]
    OpenOrdersFull(u64),
    /// A cancel names no order intake took.
    #[error("order {0:?} was not submitted through intake")]
    UnknownOrder(String),
    /// A cancel names another participant's order.
    #[error("order {0:?} is not this participant's")]
    NotYours(String),
    /// A cancel names an order already cancelled.
    #[error("order {0:?} is already cancelled")]
    AlreadyCancelled(String),
}

/// An intake row waiting to be sequenced.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Its intake id.
    pub intake_id: i64,
    /// Order or cancel.
    pub kind: IntakeKind,
    /// Its interval.
    pub interval_start: i64,
    /// The ledger body.
    pub body: Vec<u8>,
}

/// Notifications of one channel. A notification is sent only when its transaction commits;
/// one may be lost while the connection is re-established, so listeners also poll.
#[derive(Debug)]
pub struct Notifications(sqlx::postgres::PgListener);

impl Notifications {
    /// Waits for the next notification (reconnecting if the connection dropped).
    pub async fn recv(&mut self) -> Result<()> {
        self.0.recv().await.map(|_| ()).map_err(db)
    }
}

/// The coordination tables of a PostgreSQL ledger shared by several nodes.
#[derive(Clone, Debug)]
pub struct Cluster {
    pool: PgPool,
}

/// Bounds how long this transaction may idle ([`TRANSACTION_IDLE_MS_MAX`]).
pub(crate) async fn set_idle_limit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL idle_in_transaction_session_timeout = {TRANSACTION_IDLE_MS_MAX}"
    )))
    .execute(&mut **tx)
    .await
    .map(drop)
}

fn db(e: sqlx::Error) -> LedgerError {
    LedgerError::Database(e)
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if matches!(d.code().as_deref(), Some("40P01") | Some("40001")))
}

impl Cluster {
    pub(crate) fn new(pool: PgPool) -> Cluster {
        Cluster { pool }
    }

    /// Subscribes to `channel` (`LEDGER_CHANNEL`, `INTAKE_CHANNEL`) on a connection of its own.
    pub async fn listen(&self, channel: &str) -> Result<Notifications> {
        let mut l = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db)?;
        l.listen(channel).await.map_err(db)?;
        Ok(Notifications(l))
    }

    /// Takes the lease for `node` if nobody holds it or it has expired, for `lease_ms`;
    /// the new epoch, or `None` if another node holds a live lease.
    pub async fn try_acquire(&self, node: &str, addr: &str, lease_ms: i64) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = {ACQUIRE_LOCK_WAIT_MS}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let row = sqlx::query(
            "UPDATE cluster_lease SET holder = $1, addr = $2, epoch = epoch + 1, \
             expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = 1 AND (holder IS NULL OR expires_at < clock_timestamp()) RETURNING epoch",
        )
        .bind(node)
        .bind(addr)
        .bind(lease_ms as f64)
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            // 55P03 lock_not_available: a writer holds the row; try again on the next poll.
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("55P03") => {
                return Ok(None)
            }
            r => r.map_err(db)?,
        };
        tx.commit().await.map_err(db)?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Extends `node`'s lease at `epoch` by `lease_ms`; `false` if it no longer holds it.
    pub async fn renew(&self, node: &str, epoch: u64, lease_ms: i64) -> Result<bool> {
        let row = sqlx::query(
            "UPDATE cluster_lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = 1 AND holder = $1 AND epoch = $2 RETURNING 1",
        )
        .bind(node)
        .bind(epoch as i64)
        .bind(lease_ms as f64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.is_some())
    }

    /// Gives the lease up at once (a clean shutdown), so another node need not wait for it to
    /// expire. The epoch stays: the next leader's is higher.
    pub async fn release(&self, node: &str, epoch: u64) -> Result<()> {
        sqlx::query(
            "UPDATE cluster_lease SET holder = NULL, expires_at = 'epoch' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(node)
        .bind(epoch as i64)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// The lease as stored now.
    pub async fn lease(&self) -> Result<LeaseView> {
        let r = sqlx::query(
            "SELECT holder, epoch, addr, \
             (extract(epoch FROM (expires_at - clock_timestamp())) * 1000)::bigint \
             FROM cluster_lease WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(LeaseView {
            holder: r.get(0),
            epoch: r.get::<i64, _>(1) as u64,
            addr: r.get(2),
            expires_in_ms: r.get(3),
        })
    }

    /// Closes the gate of `interval_start` for every node: waits for intake transactions that
    /// hold the interval's row, then no more intake for it commits. Idempotent. Returns the
    /// interval's intake count (orders not cancelled).
    pub async fn close_gate(&self, interval_start: i64) -> Result<u64> {
        let r = sqlx::query(
            "INSERT INTO intake_interval (interval_start, orders, closed) VALUES ($1, 0, true) \
             ON CONFLICT (interval_start) DO UPDATE SET closed = true RETURNING orders",
        )
        .bind(interval_start)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(r.get::<i64, _>(0) as u64)
    }

    /// Intake rows not yet sequenced, in intake-id order, at most `limit`.
    pub async fn pending(&self, limit: u32) -> Result<Vec<Pending>> {
        let rows = sqlx::query(
            "SELECT id, kind, interval_start, body FROM intake WHERE seq IS NULL \
             ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let kind: &str = r.get(1);
                Ok(Pending {
                    intake_id: r.get(0),
                    kind: if kind == "order" {
                        IntakeKind::Order
                    } else {
                        IntakeKind::Cancel
                    },
                    interval_start: r.get(2),
                    body: r.get(3),
                })
            })
            .collect()
    }

    /// The chain seq of an acknowledged order, once sequenced: `None` if intake never took
    /// it, `Some(None)` while it waits for the leader.
    pub async fn order_seq(&self, order_id: &str) -> Result<Option<Option<u64>>> {
        let r = sqlx::query("SELECT seq FROM intake WHERE kind = 'order' AND order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.map(|r| r.get::<Option<i64>, _>(0).map(|s| s as u64)))
    }

    /// Intake rows not yet sequenced.
    pub async fn pending_count(&self) -> Result<u64> {
        let r = sqlx::query("SELECT count(*) FROM intake WHERE seq IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.get::<i64, _>(0) as u64)
    }

    /// Acknowledges `items` for every node at once: each either gets an intake row (durable
    /// when this returns) or a refusal, in `items`' order. One transaction, retried on a
    /// deadlock.
    pub async fn intake(
        &self,
        node: &str,
        items: &[IntakeItem],
        limits: &IntakeLimits,
    ) -> Result<Vec<std::result::Result<Intaken, IntakeRefusal>>> {
        let mut attempt = 1;
        loop {
            match self.intake_once(node, items, limits).await {
                Err(e) if attempt < INTAKE_ATTEMPTS_MAX && is_retryable(&e) => attempt += 1,
                r => return r.map_err(db),
            }
        }
    }

    async fn intake_once(
        &self,
        node: &str,
        items: &[IntakeItem],
        limits: &IntakeLimits,
    ) -> std::result::Result<Vec<std::result::Result<Intaken, IntakeRefusal>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        set_idle_limit(&mut tx).await?;
        // The orders cancels name, to learn their intervals (read again under the lock below).
        let cancel_targets: Vec<String> = items
            .iter()
            .filter(|i| i.kind == IntakeKind::Cancel)
            .map(|i| i.order_id.clone())
            .collect();
        let target_rows = |rows: Vec<sqlx::postgres::PgRow>| {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        (
                            r.get::<String, _>(1),
                            r.get::<i64, _>(2),
                            r.get::<bool, _>(3),
                        ),
                    )
                })
                .collect::<HashMap<String, (String, i64, bool)>>()
        };
        const TARGETS: &str = "SELECT o.order_id, o.participant, o.interval_start, \
             EXISTS (SELECT 1 FROM intake c WHERE c.kind = 'cancel' AND c.order_id = o.order_id) \
             FROM intake o WHERE o.kind = 'order' AND o.order_id = ANY($1)";
        let mut targets = if cancel_targets.is_empty() {
            HashMap::new()
        } else {
            target_rows(
                sqlx::query(TARGETS)
                    .bind(&cancel_targets)
                    .fetch_all(&mut *tx)
                    .await?,
            )
        };
        // Lock order, the same in every transaction: intervals, then participants.
        let intervals: BTreeSet<i64> = items
            .iter()
            .filter(|i| i.kind == IntakeKind::Order)
            .map(|i| i.interval_start)
            .chain(targets.values().map(|t| t.1))
            .collect();
        let intervals: Vec<i64> = intervals.into_iter().collect();
        sqlx::query(
            "INSERT INTO intake_interval (interval_start, orders, closed) \
             SELECT t, 0, false FROM unnest($1::bigint[]) AS t ORDER BY t ON CONFLICT DO NOTHING",
        )
        .bind(&intervals)
        .execute(&mut *tx)
        .await?;
        let mut interval_state: BTreeMap<i64, (i64, bool)> = sqlx::query(
            "SELECT interval_start, orders, closed FROM intake_interval \
             WHERE interval_start = ANY($1) ORDER BY interval_start FOR UPDATE",
        )
        .bind(&intervals)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>(0),
                (r.get::<i64, _>(1), r.get::<bool, _>(2)),
            )
        })
        .collect();
        let participants: Vec<String> = items
            .iter()
            .map(|i| i.participant.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        sqlx::query(
            "INSERT INTO intake_nonce (participant, nonce) \
             SELECT p, 0 FROM unnest($1::text[]) AS p ORDER BY p ON CONFLICT DO NOTHING",
        )
        .bind(&participants)
        .execute(&mut *tx)
        .await?;
        let mut last_nonce: HashMap<String, u64> = sqlx::query(
            "SELECT participant, nonce::text FROM intake_nonce WHERE participant = ANY($1) \
             ORDER BY participant FOR UPDATE",
        )
        .bind(&participants)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let n: String = r.get(1);
            (r.get::<String, _>(0), n.parse::<u64>().unwrap_or(u64::MAX))
        })
        .collect();
        let mut open: HashMap<String, i64> = sqlx::query(
            "SELECT i.participant, count(*) FROM intake i \
             JOIN intake_interval v ON v.interval_start = i.interval_start AND NOT v.closed \
             WHERE i.kind = 'order' AND i.participant = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM intake c WHERE c.kind = 'cancel' AND c.order_id = i.order_id) \
             GROUP BY i.participant",
        )
        .bind(&participants)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
        if !cancel_targets.is_empty() {
            // Under the participants' locks: only their own intake changes these rows' state.
            targets = target_rows(
                sqlx::query(TARGETS)
                    .bind(&cancel_targets)
                    .fetch_all(&mut *tx)
                    .await?,
            );
        }
        // Decide each item, per participant in nonce order.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| {
            (&items[a].participant, items[a].nonce).cmp(&(&items[b].participant, items[b].nonce))
        });
        let mut out: Vec<Option<std::result::Result<Intaken, IntakeRefusal>>> =
            vec![None; items.len()];
        let mut accepted: Vec<(usize, i64)> = Vec::new();
        // Orders accepted in this batch, for a cancel of one later in it.
        let mut batch_orders: HashMap<String, (String, i64)> = HashMap::new();
        for &ix in &order {
            let it = &items[ix];
            let last = last_nonce.get(&it.participant).copied().unwrap_or(0);
            let decided: std::result::Result<i64, IntakeRefusal> = if it.nonce <= last {
                Err(IntakeRefusal::NonceNotIncreasing {
                    nonce: it.nonce,
                    last,
                })
            } else {
                match it.kind {
                    IntakeKind::Order => {
                        let (count, closed) = interval_state
                            .get(&it.interval_start)
                            .copied()
                            .unwrap_or((0, true));
                        let held = open.get(&it.participant).copied().unwrap_or(0);
                        if closed {
                            Err(IntakeRefusal::GateClosed(it.interval_start))
                        } else if count as u64 >= limits.orders_per_interval_max {
                            Err(IntakeRefusal::IntervalFull(limits.orders_per_interval_max))
                        } else if held as u64 >= limits.open_orders_per_participant_max {
                            Err(IntakeRefusal::OpenOrdersFull(
                                limits.open_orders_per_participant_max,
                            ))
                        } else {
                            interval_state.insert(it.interval_start, (count + 1, false));
                            open.insert(it.participant.clone(), held + 1);
                            batch_orders.insert(
                                it.order_id.clone(),
                                (it.participant.clone(), it.interval_start),
                            );
                            Ok(it.interval_start)
                        }
                    }
                    IntakeKind::Cancel => {
                        let target = targets.get(&it.order_id).cloned().or_else(|| {
                            batch_orders
                                .get(&it.order_id)
                                .map(|(p, t)| (p.clone(), *t, false))
                        });
                        match target {
                            None => Err(IntakeRefusal::UnknownOrder(it.order_id.clone())),
                            Some((p, _, _)) if p != it.participant => {
                                Err(IntakeRefusal::NotYours(it.order_id.clone()))
                            }
                            Some((_, _, true)) => {
                                Err(IntakeRefusal::AlreadyCancelled(it.order_id.clone()))
                            }
                            Some((_, t, false)) => {
                                let (count, closed) =
                                    interval_state.get(&t).copied().unwrap_or((0, true));
                                if closed {
                                    Err(IntakeRefusal::GateClosed(t))
                                } else {
                                    interval_state.insert(t, ((count - 1).max(0), false));
                                    if let Some(h) = open.get_mut(&it.participant) {
                                        *h = (*h - 1).max(0);
                                    }
                                    targets.insert(
                                        it.order_id.clone(),
                                        (it.participant.clone(), t, true),
                                    );
                                    batch_orders.remove(&it.order_id);
                                    Ok(t)
                                }
                            }
                        }
                    }
                }
            };
            match decided {
                Ok(t) => {
                    last_nonce.insert(it.participant.clone(), it.nonce);
                    accepted.push((ix, t));
                }
                Err(r) => out[ix] = Some(Err(r)),
            }
        }
        if !accepted.is_empty() {
            let mut kinds = Vec::with_capacity(accepted.len());
            let mut pids = Vec::with_capacity(accepted.len());
            let mut nonces = Vec::with_capacity(accepted.len());
            let mut oids = Vec::with_capacity(accepted.len());
            let mut ts = Vec::with_capacity(accepted.len());
            let mut bodies = Vec::with_capacity(accepted.len());
            let mut times = Vec::with_capacity(accepted.len());
            for &(ix, t) in &accepted {
                let it = &items[ix];
                kinds.push(it.kind.as_str());
                pids.push(it.participant.as_str());
                nonces.push(it.nonce.to_string());
                oids.push(it.order_id.as_str());
                ts.push(t);
                bodies.push(it.body.as_slice());
                times.push(it.accepted_at_ms);
            }
            let ids: HashMap<(String, String), i64> = sqlx::query(
                "INSERT INTO intake (kind, participant, nonce, order_id, interval_start, body, \
                 node_id, accepted_at_ms) \
                 SELECT k, p, n::numeric, o, t, b, $8, a \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                 $6::bytea[], $7::bigint[]) WITH ORDINALITY AS v(k, p, n, o, t, b, a, ord) \
                 ORDER BY ord RETURNING id, participant, nonce::text",
            )
            .bind(&kinds)
            .bind(&pids)
            .bind(&nonces)
            .bind(&oids)
            .bind(&ts)
            .bind(&bodies)
            .bind(&times)
            .bind(node)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                (
                    (r.get::<String, _>(1), r.get::<String, _>(2)),
                    r.get::<i64, _>(0),
                )
            })
            .collect();
            if ids.len() != accepted.len() {
                return Err(sqlx::Error::Protocol(format!(
                    "intake inserted {} rows of {}",
                    ids.len(),
                    accepted.len()
                )));
            }
            let (np, nn): (Vec<String>, Vec<String>) = last_nonce
                .iter()
                .map(|(p, n)| (p.clone(), n.to_string()))
                .unzip();
            sqlx::query(
                "UPDATE intake_nonce n SET nonce = v.nonce::numeric \
                 FROM unnest($1::text[], $2::text[]) AS v(p, nonce) \
                 WHERE n.participant = v.p AND n.nonce < v.nonce::numeric",
            )
            .bind(&np)
            .bind(&nn)
            .execute(&mut *tx)
            .await?;
            let (it, ic): (Vec<i64>, Vec<i64>) =
                interval_state.iter().map(|(t, (c, _))| (*t, *c)).unzip();
            sqlx::query(
                "UPDATE intake_interval s SET orders = v.c \
                 FROM unnest($1::bigint[], $2::bigint[]) AS v(t, c) WHERE s.interval_start = v.t",
            )
            .bind(&it)
            .bind(&ic)
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(INTAKE_CHANNEL)
                .execute(&mut *tx)
                .await?;
            for &(ix, t) in &accepted {
                let it = &items[ix];
                let id = ids[&(it.participant.clone(), it.nonce.to_string())];
                out[ix] = Some(Ok(Intaken {
                    intake_id: id,
                    interval_start: t,
                }));
            }
        }
        tx.commit().await?;
        Ok(out
            .into_iter()
            .map(|o| o.expect("every item decided"))
            .collect())
    }
}
