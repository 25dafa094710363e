//! The interval scheduler: at each gate closure, freeze the book, clear, settle, record the
//! interval in one ledger append and publish it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_engine::units::{round_at, MONEY_SCALE};
use baton_engine::{clear, settle, Market, MarketSpec, Side};
use baton_ledger::{EntryKind, NewEntry};
use baton_proto::v1 as pb;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot, watch};

use super::commit::CommitItem;
use super::error::ServiceError;
use super::state::{side_to_proto, BookSpecs, Product};
use super::{ClearNowReply, ClearedInterval, FaultInjection, Shared, RESULTS_KEPT_MAX};

/// One participant order's outcome in a cleared interval, in the engine's decimals; strings
/// only at the wire edge ([`Fill::to_proto`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fill {
    pub(crate) interval_start: i64,
    pub(crate) order_id: String,
    pub(crate) side: Side,
    pub(crate) node: String,
    pub(crate) product: Product,
    /// Accepted quantity per block, kW.
    pub(crate) accepted: Vec<Decimal>,
    pub(crate) accepted_total: Decimal,
    /// The node's price (energy orders).
    pub(crate) node_price: Option<Decimal>,
    /// What the participant is paid (negative: pays), at `MONEY_SCALE`.
    pub(crate) payment: Decimal,
    /// The requirement price earned (flexibility offers that were procured).
    pub(crate) flex_price: Option<Decimal>,
}

impl Fill {
    pub(crate) fn to_proto(&self) -> pb::Fill {
        pb::Fill {
            interval_start: self.interval_start,
            order_id: self.order_id.clone(),
            side: side_to_proto(self.side) as i32,
            node: self.node.clone(),
            accepted: self.accepted.iter().map(|d| d.to_string()).collect(),
            accepted_total: self.accepted_total.to_string(),
            node_price: self.node_price.map(|p| p.to_string()).unwrap_or_default(),
            payment: self.payment.to_string(),
            product: self.product.to_wire() as i32,
            flex_price: self.flex_price.map(|p| p.to_string()).unwrap_or_default(),
        }
    }
}

/// Slowest poll of the clock, real time: a gate closes at most this late.
const TICK_REAL_MS_MAX: f64 = 250.0;
/// Fastest poll of the clock, real time.
const TICK_REAL_MS_MIN: f64 = 2.0;

/// Runs until `shutdown` (or, with several nodes, until this node's appends are fenced: another
/// node leads now). Returns the `ClearNow` queue for the next term.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut clear_now: mpsc::Receiver<ClearNowReply>,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<ClearNowReply> {
    let timing = shared.timing;
    // Poll often enough that a gate closes within 1% of an interval, real time.
    let tick_ms = (timing.interval_s as f64 * 1000.0 / shared.clock.scale() / 100.0)
        .clamp(TICK_REAL_MS_MIN, TICK_REAL_MS_MAX);
    let tick = Duration::from_secs_f64(tick_ms / 1000.0);
    let now = shared.clock.now_ms();
    // Never reopen an interval the ledger already records, even if the clock now reads earlier
    // than when it was cleared (a restart of an accelerated clock, a wall clock stepped back).
    let last_cleared = shared.lock().cleared.last().copied();
    let mut next = timing.earliest_open(now);
    if let Some(c) = last_cleared {
        next = next.max(c + timing.interval_s);
    }
    // Intervals whose gate closed while the server was down and that still hold orders.
    let overdue: Vec<i64> = {
        let mut st = shared.lock();
        st.closed_through = st.closed_through.max(next - timing.interval_s);
        let mut overdue: BTreeSet<i64> = st
            .books
            .iter()
            .filter(|(s, b)| **s < next && !b.is_empty())
            .map(|(s, _)| *s)
            .collect();
        // A gate recorded before the restart binds its book: finish that interval, empty or not.
        overdue.extend(st.gated.keys().copied());
        overdue.into_iter().collect()
    };
    for s in overdue {
        tracing::info!(
            interval = s,
            "clearing an interval whose gate closed while down"
        );
        if let Err(e) = clear_interval(&shared, s).await {
            if let ServiceError::NotLeader(why) = e {
                tracing::warn!(interval = s, %why, "no longer the leader; not clearing");
                return clear_now;
            }
            tracing::error!(interval = s, error = %e, "interval not cleared");
        }
    }
    // Cleared intervals whose delivery the ledger does not settle yet: their clearings, rebuilt
    // from the ledger, settle it once their deadline passes (exactly once: the entry marks it).
    super::metering::rebuild_awaiting(&shared).await;
    super::metering::settle_due(&shared).await;
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(reply) = clear_now.recv() => {
                let s = next;
                next += timing.interval_s;
                let r = clear_interval(&shared, s).await.map(|c| pb::ClearNowResponse {
                    interval_start: s,
                    ledger_first_seq: c.as_ref().map(|c| c.result.ledger_first_seq).unwrap_or(0),
                    ledger_last_seq: c.as_ref().map(|c| c.result.ledger_last_seq).unwrap_or(0),
                });
                let fenced = matches!(r, Err(ServiceError::NotLeader(_)));
                let _ = reply.send(r);
                if fenced {
                    return clear_now;
                }
            }
            _ = tokio::time::sleep(tick) => {}
        }
        FaultInjection::check(&shared.faults.scheduler_panics, "scheduler");
        let now = shared.clock.now_ms();
        while timing.gate_s(next) * 1000 <= now {
            let s = next;
            next += timing.interval_s;
            if let Err(e) = clear_interval(&shared, s).await {
                if let ServiceError::NotLeader(why) = e {
                    tracing::warn!(interval = s, %why, "no longer the leader; not clearing");
                    return clear_now;
                }
                tracing::error!(interval = s, error = %e, "interval not cleared");
            }
        }
        super::metering::settle_due(&shared).await;
    }
    clear_now
}

/// Closes, clears, records and publishes interval `s`. `Ok(None)`: nothing to record (no
/// network loaded) or already recorded.
pub(crate) async fn clear_interval(
    shared: &Arc<Shared>,
    s: i64,
) -> Result<Option<Arc<ClearedInterval>>, ServiceError> {
    let gate_at = Instant::now();
    {
        let mut st = shared.lock();
        st.closed_through = st.closed_through.max(s);
    }
    if let Some(node) = &shared.cluster {
        // Several nodes: close the gate for all of them in the database (it waits for intake in
        // flight), then sequence everything acknowledged, so the frozen book is exactly the
        // acknowledged orders.
        node.cluster.close_gate(s).await?;
        super::cluster::sequence_all(shared, node).await?;
    } else {
        // Orders validated before the gate closed may still be on their way to the ledger:
        // wait for them so the frozen book is exactly the acknowledged orders.
        let (tx, rx) = oneshot::channel();
        shared
            .commit_tx
            .send(CommitItem::Barrier(tx))
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        rx.await.map_err(|_| ServiceError::ShuttingDown)?;
    }
    let already = shared.lock().cleared.contains(&s) || shared.ledger.has_interval(s).await?;
    if already {
        shared.lock().freeze(s);
        tracing::warn!(
            interval = s,
            "interval already recorded; not clearing it again"
        );
        return Ok(None);
    }
    // The gate: freeze the book and record it, with the network in force, before clearing.
    // Holding the admin lock keeps a network install from landing between reading the network
    // and appending the gate, so the gate names the network entry really in force.
    let (orders, network) = {
        let _admin = shared.admin.lock().await;
        let (orders, network, gated) = {
            let mut st = shared.lock();
            let gated = st.gated.contains_key(&s);
            (st.freeze(s), st.network.clone(), gated)
        };
        let Some(network) = network else {
            return Ok(None);
        };
        if gated {
            // Gated before a restart: the ledger already binds this book.
            tracing::info!(interval = s, "gate already recorded; clearing its book");
        } else {
            let network_seq = shared.index().network_seq;
            let seqs: Vec<u64> = orders.iter().map(|o| o.ledger_seq).collect();
            let r = shared
                .ledger
                .append(vec![baton_audit::record::signed_gate(
                    s,
                    network_seq,
                    &seqs,
                )])
                .await?;
            shared.lock().gated.insert(s, r.first_seq);
        }
        (orders, network)
    };
    tracing::info!(interval = s, orders = orders.len(), "gate closed; clearing");
    let t0 = Instant::now();
    let mut spec: MarketSpec = (*network).clone();
    let book = BookSpecs::from_records(&orders);
    spec.orders = book.orders;
    spec.flex_offers = book.flex_offers;
    let order_count = spec.orders.len() + spec.flex_offers.len();
    let built = tokio::task::spawn_blocking(move || build(s, spec))
        .await
        .map_err(|e| ServiceError::Storage(format!("clearing task failed: {e}")))?;
    let (entries, mut cleared, held) = match built {
        Ok(x) => x,
        Err(reason) => {
            // A book the engine refuses (a bug in intake) is recorded as not cleared so the
            // regulator sees it and the interval is never retried with a different book.
            tracing::error!(interval = s, %reason, "interval not cleared");
            let body = serde_json::json!({
                "event": "interval_not_cleared",
                "interval_start": s,
                "reason": reason,
            });
            shared
                .ledger
                .append(vec![NewEntry::new(
                    EntryKind::MarketEvent,
                    Some(s),
                    body.to_string().into_bytes(),
                )])
                .await?;
            {
                let mut st = shared.lock();
                st.cleared.insert(s);
                st.gated.remove(&s);
            }
            return Ok(None);
        }
    };
    let clear_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let receipt = shared.ledger.append(entries).await?;
    cleared.result.ledger_first_seq = receipt.first_seq;
    cleared.result.ledger_last_seq = receipt.last_seq;
    shared.index().intervals.insert(
        s,
        super::recover::IntervalMeta {
            first_seq: receipt.first_seq,
            last_seq: receipt.last_seq,
            clearing_ms: Some(clear_ms.round() as u32),
        },
    );
    shared
        .awaiting_delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(s, Arc::new(held));
    {
        let mut st = shared.lock();
        st.cleared.insert(s);
        st.gated.remove(&s);
        st.metering.cleared(s);
    }
    let cleared = publish(shared, s, cleared);
    super::metrics::METRICS.interval(
        Duration::from_secs_f64(clear_ms / 1000.0),
        gate_at.elapsed(),
    );
    tracing::info!(
        interval = s,
        orders = order_count,
        clear_ms = format!("{clear_ms:.1}"),
        total_ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1000.0),
        ledger_last_seq = receipt.last_seq,
        "interval cleared"
    );
    Ok(Some(cleared))
}

/// Publishes a recorded interval: its fills onto the orders, its result to `GetIntervalResult`
/// and to every watcher.
pub(crate) fn publish(shared: &Shared, s: i64, cleared: ClearedInterval) -> Arc<ClearedInterval> {
    let cleared = Arc::new(cleared);
    {
        let mut st = shared.lock();
        for fills in cleared.fills.values() {
            for f in fills {
                if let Some(o) = st.orders.get_mut(&f.order_id) {
                    o.accepted = f.accepted.clone();
                    o.accepted_total = Some(f.accepted_total);
                }
            }
        }
    }
    {
        let mut results = shared.results.lock().unwrap_or_else(|e| e.into_inner());
        results.insert(s, cleared.clone());
        while results.len() > RESULTS_KEPT_MAX {
            results.pop_first();
        }
    }
    let _ = shared.results_tx.send(cleared.clone());
    cleared
}

/// Validates, clears and settles one interval's market; the ledger entries and the published
/// result. Runs on a blocking thread: HiGHS may take seconds on a large book.
fn build(
    s: i64,
    spec: MarketSpec,
) -> Result<(Vec<NewEntry>, ClearedInterval, super::metering::Cleared), String> {
    let market = Market::new(&spec).map_err(|e| e.to_string())?;
    let (clearing, _stats) = clear(&market).map_err(|e| e.to_string())?;
    let settlement = settle(&market, &clearing);
    let entries =
        baton_audit::record::interval_entries(s, None, false, &market, &clearing, &settlement)
            .map_err(|e| e.to_string())?;
    let published = publication(s, &spec, &market, &clearing, &settlement);
    Ok((
        entries,
        published,
        super::metering::Cleared { market, clearing },
    ))
}

/// What is published of a cleared interval: its public result and each participant's fills.
/// `spec` is the market as cleared (network and book); the ledger seqs are filled in by the
/// caller once recorded.
pub(crate) fn publication(
    s: i64,
    spec: &MarketSpec,
    market: &Market,
    clearing: &baton_engine::Clearing,
    settlement: &baton_engine::Settlement,
) -> ClearedInterval {
    let node_ids = market.node_ids();
    let (mut bought, mut sold) = (Decimal::ZERO, Decimal::ZERO);
    for f in &clearing.orders {
        match f.side {
            Side::Buy => bought += f.accepted_total,
            Side::Sell => sold += f.accepted_total,
        }
    }
    let result = pb::IntervalResult {
        interval_start: s,
        interval_minutes: clearing.interval_minutes,
        welfare: clearing.welfare.to_string(),
        prices: clearing
            .nodes
            .iter()
            .map(|n| pb::NodePrice {
                node: n.id.clone(),
                price: n.price.to_string(),
                energy: n.energy.to_string(),
                congestion: n.congestion.to_string(),
            })
            .collect(),
        lines: clearing
            .lines
            .iter()
            .map(|l| pb::LineFlow {
                line: l.id.clone(),
                flow: l.flow.to_string(),
                congested: l.congested,
            })
            .collect(),
        flex: clearing
            .flex_requirements
            .iter()
            .map(|r| pb::FlexPrice {
                requirement: r.id.clone(),
                price: r.price.to_string(),
                procured: r.procured.to_string(),
            })
            .collect(),
        bought: bought.to_string(),
        sold: sold.to_string(),
        orders: market.participant_order_count() as u32,
        ledger_first_seq: 0,
        ledger_last_seq: 0,
    };
    let payments: BTreeMap<&str, Decimal> = settlement
        .postings
        .iter()
        .filter_map(|p| p.memo.strip_prefix("energy ").map(|id| (id, p.amount)))
        .collect();
    let mut fills: BTreeMap<String, Vec<Fill>> = BTreeMap::new();
    let participant_orders: std::collections::HashSet<&str> =
        spec.orders.iter().map(|o| o.id.as_str()).collect();
    for f in &clearing.orders {
        if !participant_orders.contains(f.id.as_str()) {
            continue;
        }
        fills.entry(f.account.clone()).or_default().push(Fill {
            interval_start: s,
            order_id: f.id.clone(),
            side: f.side,
            node: node_ids[f.node].clone(),
            product: Product::Energy,
            accepted: f.accepted.clone(),
            accepted_total: f.accepted_total,
            node_price: Some(clearing.nodes[f.node].price),
            payment: round_at(
                payments
                    .get(f.id.as_str())
                    .copied()
                    .unwrap_or(Decimal::ZERO),
                MONEY_SCALE,
            ),
            flex_price: None,
        });
    }
    // Flexibility offers: paid per requirement allocation (memo `flex <offer> for <req>`).
    let participant_flex: std::collections::HashSet<&str> =
        spec.flex_offers.iter().map(|o| o.id.as_str()).collect();
    for f in &clearing.flex_offers {
        if !participant_flex.contains(f.id.as_str()) {
            continue;
        }
        let memo = format!("flex {} for ", f.id);
        let paid: Decimal = settlement
            .postings
            .iter()
            .filter(|p| p.account == f.account && p.memo.starts_with(&memo))
            .map(|p| p.amount)
            .sum();
        // The requirement price an offer earned: that of its largest allocation (offers at a
        // node covered by several requirements can be paid by more than one).
        let price = f
            .allocations
            .iter()
            .filter(|(_, q)| !q.is_zero())
            .max_by(|a, b| a.1.cmp(&b.1))
            .map(|(ri, _)| clearing.flex_requirements[*ri].price);
        let node = spec
            .flex_offers
            .iter()
            .find(|o| o.id == f.id)
            .map(|o| o.node.clone())
            .unwrap_or_default();
        fills.entry(f.account.clone()).or_default().push(Fill {
            interval_start: s,
            order_id: f.id.clone(),
            side: Side::Sell,
            node,
            product: Product::Flex(f.direction),
            accepted: f.accepted.clone(),
            accepted_total: f.accepted_total,
            node_price: None,
            payment: round_at(paid, MONEY_SCALE),
            flex_price: price,
        });
    }
    ClearedInterval { result, fills }
}
