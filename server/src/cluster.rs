//! Several `baton serve` nodes on one PostgreSQL ledger (`--node-id`): every node takes orders
//! into the shared intake; one fenced leader sequences them into the chain, closes gates,
//! clears, settles and records; followers replay the chain and publish what it records.
//!
//! - **Intake** ([`intake`]): the group-commit task's counterpart. It batches accepted orders and
//!   cancels into one `baton_ledger::cluster::Cluster::intake` transaction, which checks nonces,
//!   gates and limits against every node's intake at once, and acknowledges them when it
//!   commits: an ack means durable in PostgreSQL, with an intake id; the chain seq comes when
//!   the leader sequences it.
//! - **Leadership** ([`run`]): a node tries to take the lease whenever it is free or expired,
//!   renews it every third of its length while leading, and steps down the moment it cannot:
//!   its scheduler and sequencer stop, and its state is rebuilt from the ledger. Every append a
//!   leader makes is fenced by its epoch (`baton_ledger::cluster::Fence`), so a leader that
//!   stalled past its lease and resumes has its appends refused.
//! - **Sequencing** ([`sequence_all`]): the leader appends intake rows in intake-id order
//!   (per participant, nonce order), marking each row sequenced in the same transaction.
//! - **Followers** ([`tail`]): replay new entries into their state on each ledger notification
//!   (PostgreSQL `NOTIFY`, sent in the append's transaction, so only for committed appends) and
//!   at least every `TAIL_POLL_MS`; each recorded interval is re-cleared
//!   ([`baton_audit::Replica`]) and published to this node's watchers.
//!
//! **Architecture Invariant:** the chain is the only record. A node's memory is rebuilt from
//! it; intake rows are acknowledged work the chain does not hold yet; the lease only decides
//! who may append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_audit::Replica;
use baton_engine::validate::RECORDS_PER_INTERVAL_MAX;
use baton_ledger::cluster::{
    Cluster, Fence, IntakeItem, IntakeKind, IntakeLimits, IntakeRefusal, Notifications,
    LEDGER_CHANNEL,
};
use baton_ledger::{EntryKind, NewEntry, ENTRIES_PER_READ_MAX};
use tokio::sync::{mpsc, watch};

use baton_proto::receipt::ReceiptLeaf;

use super::commit::{Accepted, CommitItem};
use super::error::ServiceError;
use super::{recover, scheduler, ClearNowReply, Shared, GROUP_COMMIT_ENTRIES_MAX};

/// Default: how long a leader's lease lasts without renewal, milliseconds. A leader that dies
/// is replaced within this plus one follower poll (`TAIL_POLL_MS`).
pub const LEASE_MS_DEFAULT: i64 = 3_000;
/// Shortest lease, milliseconds: renewals every third of it must fit a database round trip
/// under load.
pub const LEASE_MS_MIN: i64 = 300;
/// A follower replays the chain and tries the lease at least this often, milliseconds (a
/// notification may be lost while its listener reconnects).
const TAIL_POLL_MS: u64 = 200;
/// The leader's sequencer looks for intake at least this often, milliseconds (it is woken by
/// intake notifications sooner).
const SEQUENCE_POLL_MS: u64 = 50;

/// This node of several.
pub(crate) struct Node {
    /// Its id (`--node-id`), in the lease and in the intake rows it writes.
    pub(crate) id: String,
    /// Where it serves gRPC, for followers' "not the leader" answers.
    pub(crate) addr: String,
    pub(crate) cluster: Cluster,
    pub(crate) lease_ms: i64,
    /// The epoch while this node leads.
    pub(crate) leading: std::sync::Mutex<Option<u64>>,
    /// The last entry replayed into this node's state (followers).
    pub(crate) applied: AtomicU64,
    /// Serialises sequencing passes (the sequencer task and the scheduler's gate).
    pub(crate) sequencing: tokio::sync::Mutex<()>,
    /// A scenario to install when first elected on a ledger with no network.
    pub(crate) scenario: Option<String>,
}

impl Node {
    pub(crate) fn epoch(&self) -> Option<u64> {
        *self.leading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` while this node leads; else who does, as the refusal.
    pub(crate) async fn check_leader(&self) -> Result<(), ServiceError> {
        if self.epoch().is_some() {
            return Ok(());
        }
        let who = match self.cluster.lease().await {
            Ok(l) => match (l.holder, l.addr) {
                (Some(h), Some(a)) if l.expires_in_ms > 0 => {
                    format!("node {h:?} at {a} leads (epoch {})", l.epoch)
                }
                _ => "no node leads right now; retry shortly".to_string(),
            },
            Err(e) => format!("the lease cannot be read: {e}"),
        };
        Err(ServiceError::NotLeader(who))
    }
}

/// The intake task of a node of several: takes accepted orders and cancels from the intake
/// queue, writes each batch to the shared intake in one transaction, answers each.
pub(crate) async fn intake(shared: Arc<Shared>, mut rx: mpsc::Receiver<CommitItem>) {
    let node = shared.cluster.clone().expect("cluster mode");
    let limits = IntakeLimits {
        orders_per_interval_max: shared
            .limits
            .orders_per_interval_max
            .min(RECORDS_PER_INTERVAL_MAX) as u64,
        open_orders_per_participant_max: shared.limits.open_orders_per_participant_max as u64,
    };
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_ENTRIES_MAX {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let now_ms = super::clock::wall_now_ms();
        let mut items = Vec::with_capacity(batch.len());
        for item in &batch {
            match item {
                CommitItem::Order(v, _) => items.push(IntakeItem {
                    kind: IntakeKind::Order,
                    participant: v.record.participant.clone(),
                    nonce: v.nonce,
                    order_id: v.record.id.clone(),
                    interval_start: v.record.interval_start,
                    body: v.signed.to_bytes(),
                    accepted_at_ms: now_ms,
                }),
                CommitItem::Cancel(c, _) => items.push(IntakeItem {
                    kind: IntakeKind::Cancel,
                    participant: c.participant.clone(),
                    nonce: c.nonce,
                    order_id: c.order_id.clone(),
                    interval_start: c.interval_start,
                    body: c.signed.to_bytes(),
                    accepted_at_ms: now_ms,
                }),
                CommitItem::Barrier(_) | CommitItem::Stop => {}
            }
        }
        let outcome = if items.is_empty() {
            Ok(Vec::new())
        } else {
            let t0 = Instant::now();
            let r = node.cluster.intake(&node.id, &items, &limits).await;
            super::metrics::METRICS.intake_commit(t0.elapsed(), items.len());
            r
        };
        let results = match &outcome {
            Ok(v) => v.clone().into_iter().map(Some).collect::<Vec<_>>(),
            Err(e) => {
                tracing::error!(error = %e, "intake failed; the batch was refused");
                Vec::new()
            }
        };
        // Receipts for the batch's acknowledged orders (one signature): `ledger_seq` 0, as
        // the chain seq is the leader's to assign; the receipt's order hash and interval find
        // the entry once sequenced (`baton_proto::receipt::Locate`).
        let accepted_at_ms = super::clock::wall_now_ms();
        let leaves: Vec<ReceiptLeaf> = batch
            .iter()
            .filter(|i| !matches!(i, CommitItem::Barrier(_) | CommitItem::Stop))
            .zip(&results)
            .filter_map(|(item, r)| match (item, r) {
                (CommitItem::Order(v, _), Some(Ok(_))) => Some(ReceiptLeaf {
                    order_hash: v.order_hash,
                    ledger_seq: 0,
                    interval_start: v.record.interval_start,
                    accepted_at_ms,
                }),
                _ => None,
            })
            .collect();
        let mut receipts = if leaves.is_empty() {
            Vec::new()
        } else {
            super::commit::sign_receipts(&shared, &leaves)
        }
        .into_iter();
        let mut results = results.into_iter();
        let mut stop = false;
        for item in batch {
            let reply_of =
                |r: Option<Result<baton_ledger::cluster::Intaken, IntakeRefusal>>| match r {
                    Some(Ok(i)) => {
                        super::metrics::METRICS.accepted();
                        Ok(Accepted {
                            seq: 0,
                            intake_id: i.intake_id as u64,
                            receipt: None,
                        })
                    }
                    Some(Err(refusal)) => Err(refused(refusal)),
                    None => Err(ServiceError::Storage(match &outcome {
                        Err(e) => e.to_string(),
                        Ok(_) => "intake answered fewer items than it was given".into(),
                    })),
                };
            match item {
                CommitItem::Order(_, reply) => {
                    let mut r = reply_of(results.next().flatten());
                    if let Ok(a) = &mut r {
                        a.receipt = receipts.next();
                    }
                    let _ = reply.send(r);
                }
                CommitItem::Cancel(_, reply) => {
                    let _ = reply.send(reply_of(results.next().flatten()));
                }
                CommitItem::Barrier(reply) => {
                    let _ = reply.send(());
                }
                CommitItem::Stop => stop = true,
            }
        }
        if stop {
            return;
        }
    }
}

/// A shared-intake refusal as the participant sees it (the same statuses as one process).
fn refused(r: IntakeRefusal) -> ServiceError {
    match r {
        IntakeRefusal::NonceNotIncreasing { nonce, last } => {
            ServiceError::ReplayedNonce { nonce, last }
        }
        IntakeRefusal::GateClosed(t) => {
            ServiceError::GateClosed(format!("the gate of interval {t} has closed"))
        }
        IntakeRefusal::IntervalFull(limit) => ServiceError::Limit {
            what: "orders per interval",
            limit: limit as usize,
        },
        IntakeRefusal::OpenOrdersFull(limit) => ServiceError::Limit {
            what: "open orders per participant",
            limit: limit as usize,
        },
        IntakeRefusal::UnknownOrder(id) => ServiceError::NotFound(format!("order {id:?}")),
        IntakeRefusal::NotYours(id) => ServiceError::NotYourOrder(id),
        IntakeRefusal::AlreadyCancelled(id) => ServiceError::NotOpen(id),
    }
}

/// Sequences every intake row not yet in the chain, in intake-id order, and applies each to
/// this (the leader's) state. Returns how many it sequenced.
pub(crate) async fn sequence_all(shared: &Shared, node: &Node) -> Result<usize, ServiceError> {
    let _one = node.sequencing.lock().await;
    let mut total = 0;
    loop {
        let rows = node
            .cluster
            .pending(GROUP_COMMIT_ENTRIES_MAX as u32)
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let n = rows.len();
        let entries: Vec<NewEntry> = rows
            .iter()
            .map(|r| {
                let kind = match r.kind {
                    IntakeKind::Order => EntryKind::Order,
                    IntakeKind::Cancel => EntryKind::Cancel,
                };
                NewEntry::new(kind, Some(r.interval_start), r.body.clone())
            })
            .collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.intake_id).collect();
        let t0 = Instant::now();
        let appended = shared.ledger.append_sequenced(entries, &ids).await?;
        super::metrics::METRICS.sequenced(t0.elapsed(), n);
        {
            let mut st = shared.lock();
            for (r, seq) in rows.iter().zip(appended.first_seq..) {
                let kind = match r.kind {
                    IntakeKind::Order => EntryKind::Order,
                    IntakeKind::Cancel => EntryKind::Cancel,
                };
                recover::apply(&mut st, seq, kind, Some(r.interval_start), &r.body);
            }
        }
        node.applied.store(appended.last_seq, Ordering::Release);
        total += n;
        if n < GROUP_COMMIT_ENTRIES_MAX {
            return Ok(total);
        }
    }
}

/// The leader's sequencer: sequences intake as it arrives until the term ends or another node
/// fences it.
async fn sequencer(shared: Arc<Shared>, node: Arc<Node>, mut term: watch::Receiver<bool>) {
    let mut listener = listen(&node, baton_ledger::cluster::INTAKE_CHANNEL).await;
    loop {
        match sequence_all(&shared, &node).await {
            Ok(_) => {}
            Err(ServiceError::NotLeader(why)) => {
                tracing::warn!(%why, "sequencer fenced: another node leads");
                return;
            }
            Err(e) => tracing::error!(error = %e, "sequencing failed; retrying"),
        }
        tokio::select! {
            _ = wait_notification(&mut listener) => {}
            _ = tokio::time::sleep(Duration::from_millis(SEQUENCE_POLL_MS)) => {}
            _ = term.changed() => return,
        }
        if *term.borrow() {
            return;
        }
    }
}

async fn listen(node: &Node, channel: &str) -> Option<Notifications> {
    match node.cluster.listen(channel).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, channel, "LISTEN failed; polling instead");
            None
        }
    }
}

/// Waits for the next notification (never, without a listener: the caller's poll decides).
async fn wait_notification(listener: &mut Option<Notifications>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                // Reconnects on the next call; meanwhile poll.
                tokio::time::sleep(Duration::from_millis(TAIL_POLL_MS)).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Replays entries after `node.applied` into this node's state; re-clears and publishes each
/// interval whose recording completes.
pub(crate) async fn tail(
    shared: &Shared,
    node: &Node,
    replica: &mut Replica,
) -> Result<(), ServiceError> {
    loop {
        let from = node.applied.load(Ordering::Acquire) + 1;
        let page = shared
            .ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await?;
        if page.is_empty() {
            return Ok(());
        }
        for e in &page {
            {
                let mut st = shared.lock();
                recover::apply(&mut st, e.seq, e.kind, e.interval_start, &e.body);
            }
            {
                let mut admin = shared.admin.lock().await;
                let mut index = shared.index();
                recover::index(
                    &mut index,
                    &mut admin,
                    e.seq,
                    e.kind,
                    e.interval_start,
                    &e.body,
                );
            }
            let ready = replica
                .add(e)
                .map_err(|err| ServiceError::Storage(format!("replaying seq {}: {err}", e.seq)))?;
            node.applied.store(e.seq, Ordering::Release);
            for b in ready {
                let s = b.interval;
                let rebuilt = tokio::task::spawn_blocking(move || {
                    let r = Replica::reclear(&b);
                    (b, r)
                })
                .await
                .map_err(|err| ServiceError::Storage(format!("re-clearing {s}: {err}")))?;
                match rebuilt {
                    (b, Ok((market, clearing))) => {
                        let settlement = baton_engine::settle(&market, &clearing);
                        let mut cleared =
                            scheduler::publication(s, &b.market, &market, &clearing, &settlement);
                        if let Some(m) = shared.index().intervals.get(&s) {
                            cleared.result.ledger_first_seq = m.first_seq;
                            cleared.result.ledger_last_seq = m.last_seq;
                        }
                        scheduler::publish(shared, s, cleared);
                        tracing::info!(interval = s, "follower: interval re-cleared and published");
                    }
                    (_, Err(err)) => {
                        tracing::error!(interval = s, error = %err, "follower: the recorded interval does not re-clear; not publishing it");
                    }
                }
            }
        }
    }
}

/// A node's life: follower until it takes the lease, leader until it loses it, again and again,
/// until `shutdown`. Returns when shut down.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut clear_now: mpsc::Receiver<ClearNowReply>,
    mut shutdown: watch::Receiver<bool>,
    mut replica: Replica,
) {
    let node = shared.cluster.clone().expect("cluster mode");
    let mut listener = listen(&node, LEDGER_CHANNEL).await;
    loop {
        // Follower: replay, and take the lease when it is free.
        let epoch = loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = tail(&shared, &node, &mut replica).await {
                tracing::error!(error = %e, "follower: replay failed; retrying");
            }
            match node
                .cluster
                .try_acquire(&node.id, &node.addr, node.lease_ms)
                .await
            {
                Ok(Some(epoch)) => break epoch,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "the lease cannot be read"),
            }
            tokio::select! {
                _ = wait_notification(&mut listener) => {}
                _ = tokio::time::sleep(Duration::from_millis(TAIL_POLL_MS)) => {}
                _ = shutdown.changed() => {}
            }
        };
        let elected = Instant::now();
        // Leader. From here no other node can append: the last leader's appends are fenced.
        if let Err(e) = shared
            .ledger
            .set_fence(Fence::Leader {
                node: node.id.clone(),
                epoch,
            })
            .await
        {
            tracing::error!(error = %e, "cannot fence the ledger; stepping down");
            continue;
        }
        // Catch up with what the last leader appended, then sequence what it left.
        if let Err(e) = tail(&shared, &node, &mut replica).await {
            tracing::error!(error = %e, "new leader: replay failed; stepping down");
            step_down(&shared, &node, &mut replica, epoch).await;
            continue;
        }
        *node.leading.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch);
        super::metrics::METRICS.set_leader(Some(epoch));
        if shared.lock().network.is_none() {
            if let Some(text) = &node.scenario {
                if let Err(e) = super::admin::load_scenario_at_start(&shared, text).await {
                    tracing::error!(error = %e, "the start-up scenario was refused");
                }
            }
        }
        let drained = sequence_all(&shared, &node).await;
        tracing::info!(
            node = %node.id,
            epoch,
            sequenced = drained.as_ref().copied().unwrap_or(0),
            takeover_ms = elected.elapsed().as_millis() as u64,
            "elected leader"
        );
        let (term_tx, term_rx) = watch::channel(false);
        let mut seq_task = tokio::spawn(sequencer(shared.clone(), node.clone(), term_rx.clone()));
        let mut sched_task = tokio::spawn(scheduler::run(shared.clone(), clear_now, term_rx));
        let renew_every = Duration::from_millis((node.lease_ms / 3).max(1) as u64);
        let mut renewed = Instant::now();
        let mut seq_done = false;
        let mut sched_result = None;
        let why = loop {
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {
                    match node.cluster.renew(&node.id, epoch, node.lease_ms).await {
                        Ok(true) => renewed = Instant::now(),
                        Ok(false) => break "another node holds the lease".to_string(),
                        Err(e) if renewed.elapsed() >= Duration::from_millis(node.lease_ms as u64) => {
                            break format!("the lease could not be renewed in time: {e}");
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break "shutting down".to_string();
                    }
                }
                _ = &mut seq_task, if !seq_done => {
                    seq_done = true;
                    break "the sequencer stopped (fenced)".to_string();
                }
                r = &mut sched_task => {
                    sched_result = Some(r);
                    break "the scheduler stopped".to_string();
                }
            }
        };
        tracing::warn!(node = %node.id, epoch, reason = %why, "leader term ends");
        *node.leading.lock().unwrap_or_else(|e| e.into_inner()) = None;
        super::metrics::METRICS.set_leader(None);
        let _ = term_tx.send(true);
        if !seq_done {
            let _ = (&mut seq_task).await;
        }
        let sched_result = match sched_result {
            Some(r) => r,
            None => sched_task.await,
        };
        clear_now = match sched_result {
            Ok(rx) => rx,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the scheduler task failed: {e}"),
        };
        if *shutdown.borrow() {
            if let Err(e) = node.cluster.release(&node.id, epoch).await {
                tracing::warn!(error = %e, "could not release the lease");
            }
            return;
        }
        step_down(&shared, &node, &mut replica, epoch).await;
    }
}

/// Back to follower: refuse appends, and rebuild the state from the ledger (a term cut short
/// may have left memory ahead of what it recorded).
async fn step_down(shared: &Shared, node: &Node, replica: &mut Replica, epoch: u64) {
    *node.leading.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(e) = shared.ledger.set_fence(Fence::Follower).await {
        tracing::error!(error = %e, "cannot fence the ledger");
    }
    loop {
        let mut st = super::state::MarketState::default();
        let mut fresh = Replica::new();
        let mut bad = None;
        match recover::rebuild_with(&shared.ledger, &mut st, |e| {
            if let Err(err) = fresh.add(e) {
                bad.get_or_insert(format!("seq {}: {err}", e.seq));
            }
        })
        .await
        {
            Ok(rec) => {
                if let Some(b) = bad {
                    tracing::error!(error = %b, "replaying the ledger for the replica failed");
                }
                *shared.lock() = st;
                *shared.index() = rec.index;
                {
                    let mut admin = shared.admin.lock().await;
                    *admin = (*admin).max(rec.admin_nonce);
                }
                shared
                    .awaiting_delivery
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                node.applied.store(rec.last_seq, Ordering::Release);
                *replica = fresh;
                tracing::info!(
                    node = %node.id,
                    epoch,
                    entries = rec.entries,
                    "stepped down; state rebuilt from the ledger"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "rebuilding after stepping down failed; retrying");
                tokio::time::sleep(Duration::from_millis(TAIL_POLL_MS)).await;
            }
        }
    }
}
