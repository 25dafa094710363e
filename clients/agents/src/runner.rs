//! Runs a population against a live market (`baton agents`, `baton demo`).
//!
//! The runner follows the **server's** market clock (`GetMarketInfo`), which may run faster
//! than real time; it never reads the wall clock to decide what to trade. For each interval it
//! trades in, it plans every agent's orders (pure, [`Agent::plan`]), signs them with the
//! agents' keys and sends them in a few `SubmitOrders` streams, waits for the interval's
//! result on `WatchResults`, reads each agent's fills (`ListOrders` of that interval), feeds
//! the fills to the devices and the node prices to the strategies, and moves on to the next
//! interval. Orders for interval `k + 1` are planned from the results of intervals up to `k`,
//! so a run is a deterministic function of the seed and the results.
//!
//! **Nonces** are derived, not counted: `interval_start × 1,000,000 + slot` with a slot per
//! order kind. The same run signs the same bytes; nonces still increase from interval to
//! interval, and (with the market on the wall clock) stay above the unix-microsecond nonces
//! of the SDK's own counter, which has not reached the start of the next open interval.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::{
    decimal, pb, sign_meter_reading, sign_order, AdminClient, AdminKey, BlockSpec, ClientError,
    MarketClient, NewOrder, NewParticipant, NewReading, ParticipantKey, PublicClient,
    SUBMIT_STREAM_ORDERS_MAX,
};
use baton_engine::model::{Direction, Side};
use rust_decimal::Decimal;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use super::devices::Moment;
use super::metering::{delivery_roles, meter, DeliveryRole, MeterReading};
use super::population::Population;
use super::strategy::{MarketContext, Plan, Purpose};
use super::AgentsError;

/// Nonce values per interval: the slot of an order kind is added to
/// `interval_start × NONCES_PER_INTERVAL`.
pub const NONCES_PER_INTERVAL: u64 = 1_000_000;
/// Intervals one run trades at most (a year of five-minute intervals).
pub const RUN_INTERVALS_MAX: u32 = 105_120;
/// `SubmitOrders` streams sent at once for one interval's orders.
pub const SUBMIT_STREAMS_MAX: usize = 16;
/// Fill reads (`ListOrders`) in flight at once: enough to read a few hundred agents in a few
/// round trips without taking every request slot of the connection.
pub const FILL_READS_CONCURRENT_MAX: usize = 32;
/// Real time the runner waits for an interval's result beyond its gate closure, seconds: the
/// clearing of a few thousand orders takes well under a second; a result that has not come in
/// a minute will not come.
pub const RESULT_WAIT_REAL_S_MAX: u64 = 60;
/// Real time that must be left before the gate of the first interval traded, milliseconds;
/// an interval closer to its gate is skipped, so the first orders are not refused half-way.
pub const FIRST_GATE_MARGIN_REAL_MS_MIN: i64 = 2_000;
/// Attempts at sending one stream of orders (the first included) when the connection fails.
pub const SUBMIT_ATTEMPTS_MAX: u32 = 3;
/// Orders one agent sends for one interval at most (four energy purposes, two flexibility
/// directions).
const LEGS_PER_AGENT_MAX: usize = 6;
/// Refusal messages kept per interval for the report.
const REFUSALS_KEPT_MAX: usize = 3;

/// What one order is for: an energy purpose or a flexibility offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// An energy order.
    Energy(Purpose),
    /// A flexibility offer.
    Flex(Direction),
}

impl Leg {
    fn slot(self) -> u64 {
        match self {
            Leg::Energy(p) => p.slot(),
            Leg::Flex(Direction::Up) => 4,
            Leg::Flex(Direction::Down) => 5,
        }
    }

    /// The leg a nonce was derived for (see [`order_nonce`]).
    pub fn of_nonce(nonce: u64) -> Option<Leg> {
        Some(match nonce % NONCES_PER_INTERVAL {
            0 => Leg::Energy(Purpose::Household),
            1 => Leg::Energy(Purpose::Ev),
            2 => Leg::Energy(Purpose::BatteryCharge),
            3 => Leg::Energy(Purpose::BatteryDischarge),
            4 => Leg::Flex(Direction::Up),
            5 => Leg::Flex(Direction::Down),
            _ => return None,
        })
    }
}

/// The nonce of an agent's order for `leg` in the interval starting at `interval_start`.
pub fn order_nonce(interval_start: i64, leg: Leg) -> u64 {
    (interval_start.max(0) as u64) * NONCES_PER_INTERVAL + leg.slot()
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Stop after trading in this many cleared intervals (1 to [`RUN_INTERVALS_MAX`]).
    pub intervals: u32,
    /// `SubmitOrders` streams per interval (1 to [`SUBMIT_STREAMS_MAX`]).
    pub streams: usize,
    /// Trade from this interval on (it must still be open); `None`: the next open interval
    /// whose gate is at least [`FIRST_GATE_MARGIN_REAL_MS_MIN`] away.
    pub first_interval: Option<i64>,
    /// Send the batteries' flexibility offers (when the population enables them). Needs a
    /// server that clears `PRODUCT_FLEX_UP`/`PRODUCT_FLEX_DOWN` orders.
    pub flex_offers: bool,
    /// Submit each agent's meter reading ([`crate::metering::meter`]) once its interval has
    /// ended, signed by the agent, the last interval's after waiting for its end.
    pub meter_readings: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            intervals: 12,
            streams: 4,
            first_interval: None,
            flex_offers: true,
            meter_readings: true,
        }
    }
}

/// What happened in one interval, as the progress callback sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalReport {
    /// 1 for the first interval traded.
    pub index: u32,
    /// Interval start, unix seconds (market time).
    pub interval_start: i64,
    /// Orders sent (energy and flexibility).
    pub orders: usize,
    /// Orders the market acknowledged.
    pub accepted: usize,
    /// Orders it refused.
    pub refused: usize,
    /// The first few refusals' messages.
    pub refusals: Vec<String>,
    /// Energy the agents bought, kW (accepted totals).
    pub bought_kw: Decimal,
    /// Energy the agents sold, kW.
    pub sold_kw: Decimal,
    /// Flexibility allocated to the agents' offers, kW.
    pub flex_kw: Decimal,
    /// Energy bought in the whole market, kW (agents and grid connections).
    pub market_bought_kw: Decimal,
    /// Lowest, mean and highest nodal price over the agents' nodes.
    pub price_min: Decimal,
    /// Mean nodal price over the agents' nodes (each node once).
    pub price_mean: Decimal,
    /// Highest nodal price over the agents' nodes.
    pub price_max: Decimal,
    /// Distinct nodal prices over the agents' nodes.
    pub distinct_prices: usize,
    /// Lines at their limit: (line id, flow in kW from its `from` node to its `to` node), in
    /// result order.
    pub congested: Vec<(String, Decimal)>,
    /// Flexibility allocated to the agents' offers, kW, per node.
    pub flex_by_node: BTreeMap<String, Decimal>,
    /// Each agent's metered energy for the interval ([`crate::metering::meter`]), in
    /// population order.
    pub meter_readings: Vec<MeterReading>,
    /// Mean state of charge of the batteries after the fills (0 to 1), if any.
    pub battery_soc_mean: Option<Decimal>,
    /// Real milliseconds from planning to the last acknowledgement.
    pub submit_ms: u64,
    /// Real milliseconds from the result's arrival to every agent's fills applied.
    pub fills_ms: u64,
    /// Intervals passed over before this one because their gates had closed before the
    /// runner got to them (0 when it keeps up with the market's clock).
    pub skipped: u32,
}

impl std::fmt::Display for IntervalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interval {:>3} ({}): {} orders ({} accepted, {} refused), agents bought {} kW, sold {} kW, flex {} kW; market {} kW; price {}/{}/{} (min/mean/max)",
            self.index,
            self.interval_start,
            self.orders,
            self.accepted,
            self.refused,
            self.bought_kw.round_dp(1),
            self.sold_kw.round_dp(1),
            self.flex_kw.round_dp(1),
            self.market_bought_kw.round_dp(1),
            self.price_min.round_dp(4),
            self.price_mean.round_dp(4),
            self.price_max.round_dp(4),
        )?;
        if let Some(s) = self.battery_soc_mean {
            write!(f, ", battery SoC {}%", (s * Decimal::from(100)).round_dp(1))?;
        }
        write!(
            f,
            ", submit {} ms, fills {} ms",
            self.submit_ms, self.fills_ms
        )?;
        if self.skipped > 0 {
            write!(
                f,
                "; {} interval(s) skipped: behind the market",
                self.skipped
            )?;
        }
        if let Some(r) = self.refusals.first() {
            write!(f, "; first refusal: {r}")?;
        }
        Ok(())
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A call to the server failed.
    #[error("{what}: {source}")]
    Client {
        /// What the runner was doing.
        what: String,
        /// The client's error.
        source: ClientError,
    },
    /// The market cannot be traded on as configured.
    #[error("{0}")]
    Market(String),
    /// An agent refused a fill or a population problem.
    #[error(transparent)]
    Agents(#[from] AgentsError),
}

fn client(what: impl Into<String>) -> impl FnOnce(ClientError) -> RunError {
    let what = what.into();
    move |source| RunError::Client { what, source }
}

/// One order on its way: which agent, which leg, the signed bytes.
struct Pending {
    agent: usize,
    leg: Leg,
    order_id: String,
    signed: pb::SignedOrder,
}

/// Registers every agent through the admin API (the operator's key). Idempotent: an agent
/// already registered with the same key and node is left alone; one registered with another
/// key or node is an error (someone else has that id). Returns how many were registered now.
pub async fn register(
    channel: Channel,
    operator: AdminKey,
    population: &Population,
) -> Result<usize, RunError> {
    let admin = AdminClient::new(channel, operator);
    let known: HashMap<String, pb::ParticipantInfo> = admin
        .list_participants()
        .await
        .map_err(client("listing participants"))?
        .into_iter()
        .map(|p| (p.participant_id.clone(), p))
        .collect();
    let mut added = 0;
    for a in &population.agents {
        let key_hex = hex::encode(a.key().verifying_key().to_bytes());
        if let Some(p) = known.get(a.id()) {
            if p.public_key_hex != key_hex || p.node != a.node() {
                return Err(RunError::Market(format!(
                    "participant {} is registered with another key or node ({}); \
                     is this the population it was registered from?",
                    a.id(),
                    p.node
                )));
            }
            continue;
        }
        let r = admin
            .register_participant(&NewParticipant {
                id: a.id().to_string(),
                node: a.node().to_string(),
                public_key_hex: key_hex,
                roles: super::Agent::ROLES.to_vec(),
                capacity_kw: Some(a.capacity_kw()),
            })
            .await;
        match r {
            Ok(_) => added += 1,
            // Registered between the listing and now (another registrar): fine.
            Err(e) if e.code() == Some(Code::AlreadyExists) => {}
            Err(e) => return Err(client(format!("registering {}", a.id()))(e)),
        }
    }
    Ok(added)
}

/// What a whole run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// One report per interval traded, in order.
    pub intervals: Vec<IntervalReport>,
    /// Meter readings the market acknowledged.
    pub readings_accepted: usize,
    /// Meter readings it refused, and the first few refusals' messages.
    pub readings_refused: usize,
    /// The first few refusals of meter readings.
    pub reading_refusals: Vec<String>,
}

/// What the meter task tallied.
#[derive(Default)]
struct ReadingTally {
    accepted: usize,
    refused: usize,
    refusals: Vec<String>,
}

/// The meters: for each interval's readings received on `rx`, waits until the interval has
/// ended in market time (looking at the market's clock at least every
/// [`READING_WAIT_REAL_MS_MAX`]), then submits them, each signed by its agent with the
/// interval's start as its nonce (one reading per agent per interval, so the nonces increase),
/// at most [`baton_client::METER_READINGS_PER_CALL_MAX`] per call. Ends when `rx` closes and
/// every interval received has been sent.
async fn meters(
    public: PublicClient,
    signers: Vec<(String, ParticipantKey)>,
    interval_s: i64,
    scale: f64,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(i64, Vec<MeterReading>)>,
) -> Result<ReadingTally, RunError> {
    let mut tally = ReadingTally::default();
    while let Some((t, readings)) = rx.recv().await {
        let end_ms = (t + interval_s) * 1000;
        loop {
            let now = public
                .market_info()
                .await
                .map_err(client("reading the market's clock"))?;
            if now.now_ms >= end_ms {
                break;
            }
            let real_ms = ((end_ms - now.now_ms) as f64 / scale).ceil() as u64 + 1;
            tokio::time::sleep(Duration::from_millis(real_ms.min(READING_WAIT_REAL_MS_MAX))).await;
        }
        let signed: Vec<pb::SignedMeterReading> = readings
            .iter()
            .zip(&signers)
            .map(|(r, (node, key))| {
                let reading = NewReading {
                    interval_start: t,
                    node: node.clone(),
                    import_kwh: r.import_kwh,
                    export_kwh: r.export_kwh,
                };
                sign_meter_reading(
                    key,
                    &reading.to_proto(&r.participant, t.max(0) as u64, None),
                )
            })
            .collect();
        for chunk in signed.chunks(baton_client::METER_READINGS_PER_CALL_MAX) {
            let outcomes = public
                .submit_signed_readings(chunk.to_vec())
                .await
                .map_err(client(format!("submitting the meter readings of {t}")))?;
            for o in outcomes {
                match o {
                    Ok(_) => tally.accepted += 1,
                    Err(e) => {
                        tally.refused += 1;
                        if tally.refusals.len() < REFUSALS_KEPT_MAX {
                            tally.refusals.push(e.to_string());
                        }
                    }
                }
            }
        }
    }
    Ok(tally)
}

/// Longest real wait between two looks at the market's clock while readings wait for their
/// interval's end.
const READING_WAIT_REAL_MS_MAX: u64 = 200;

/// Trades `population` on the market behind `channel` for `config.intervals` cleared
/// intervals, calling `progress` after each. The agents' state (batteries, EVs, price
/// histories) is left in `population`. Stop early by dropping the future (e.g. on Ctrl-C):
/// orders already acknowledged stay in the market.
pub async fn run(
    channel: Channel,
    population: &mut Population,
    config: &RunConfig,
    mut progress: impl FnMut(&IntervalReport) + Send,
) -> Result<RunSummary, RunError> {
    if config.intervals == 0 || config.intervals > RUN_INTERVALS_MAX {
        return Err(RunError::Market(format!(
            "intervals must be 1 to {RUN_INTERVALS_MAX}"
        )));
    }
    if config.streams == 0 || config.streams > SUBMIT_STREAMS_MAX {
        return Err(RunError::Market(format!(
            "streams must be 1 to {SUBMIT_STREAMS_MAX}"
        )));
    }
    let public = PublicClient::new(channel.clone());
    let info = public
        .market_info()
        .await
        .map_err(client("reading the market's clock"))?;
    if !info.network_loaded {
        return Err(RunError::Market(
            "the market has no network loaded (start baton serve with --scenario)".into(),
        ));
    }
    if let Some(a) = population
        .agents
        .iter()
        .find(|a| !info.nodes.iter().any(|n| n == a.node()))
    {
        return Err(RunError::Market(format!(
            "agent {} is at node {:?}, which the market's network does not have",
            a.id(),
            a.node()
        )));
    }
    let floor = decimal("price_floor", &info.price_floor).map_err(client("market info"))?;
    let cap = decimal("price_cap", &info.price_cap).map_err(client("market info"))?;
    let interval_s = i64::from(info.interval_minutes) * 60;
    let scale = if info.time_scale.is_finite() && info.time_scale > 0.0 {
        info.time_scale
    } else {
        1.0
    };
    // Subscribe before the first order so no result can slip by.
    let mut results = public
        .watch_results()
        .await
        .map_err(client("watching results"))?;
    let mut target = match config.first_interval {
        Some(s) => s,
        None => {
            let first = info.next_open_interval;
            let margin_real_ms = ((first - info.gate_lead_s) * 1000 - info.now_ms) as f64 / scale;
            if margin_real_ms < FIRST_GATE_MARGIN_REAL_MS_MIN as f64 {
                first + interval_s
            } else {
                first
            }
        }
    };
    let clients: Vec<MarketClient> = population
        .agents
        .iter()
        .map(|a| {
            MarketClient::new(
                channel.clone(),
                a.id(),
                ParticipantKey::from_seed(&a.key().to_bytes()),
            )
        })
        .collect();
    let keys: Vec<ParticipantKey> = population
        .agents
        .iter()
        .map(|a| ParticipantKey::from_seed(&a.key().to_bytes()))
        .collect();
    let flex_on = config.flex_offers && population.flex.enabled;
    let roles = delivery_roles(population);
    let mut summary = RunSummary::default();
    let (meter_tx, meter_rx) = tokio::sync::mpsc::unbounded_channel();
    let signers = population
        .agents
        .iter()
        .zip(&keys)
        .map(|(a, k)| (a.node().to_string(), k.clone()))
        .collect();
    let meter_task = tokio::spawn(meters(public.clone(), signers, interval_s, scale, meter_rx));
    for index in 1..=config.intervals {
        let t0 = Instant::now();
        // Behind the market (a slow machine, a fast clock): trade in the next interval still
        // open rather than send orders the gate would refuse.
        let now = public
            .market_info()
            .await
            .map_err(client("reading the market's clock"))?;
        let mut skipped = 0;
        if (target - now.gate_lead_s) * 1000 <= now.now_ms && now.next_open_interval > target {
            skipped = (now.next_open_interval - target) / interval_s;
            target = now.next_open_interval;
        }
        let ctx = MarketContext {
            at: Moment {
                interval_start: target,
                interval_minutes: info.interval_minutes,
                utc_offset_minutes: population.utc_offset_minutes,
            },
            price_floor: floor,
            price_cap: cap,
            grid: population.grid,
        };
        let (strategy, flex) = (&population.strategy, &population.flex);
        let plans: Vec<Plan> = population
            .agents
            .iter()
            .map(|a| a.plan(&ctx, strategy, flex))
            .collect();
        let pending = sign_all(population, &keys, &plans, target, flex_on);
        let (acked, refusals) = submit(&public, pending, config.streams).await?;
        let submit_ms = t0.elapsed().as_millis() as u64;
        let result = wait_result(&public, &mut results, target, &info, scale).await?;
        let t1 = Instant::now();
        let fills = read_fills(&clients, &acked, target).await?;
        let mut report = settle_interval(
            population, &roles, &plans, &acked, &fills, &result, index, refusals,
        )?;
        report.submit_ms = submit_ms;
        report.skipped = skipped as u32;
        report.fills_ms = t1.elapsed().as_millis() as u64;
        progress(&report);
        if config.meter_readings {
            // The task only ends with an error (or when this sender closes).
            let _ = meter_tx.send((report.interval_start, report.meter_readings.clone()));
        }
        summary.intervals.push(report);
        target += interval_s;
    }
    // The last intervals' meters report once those intervals are over.
    drop(meter_tx);
    let tally = meter_task
        .await
        .map_err(|e| RunError::Market(format!("the meter task failed: {e}")))??;
    summary.readings_accepted = tally.accepted;
    summary.readings_refused = tally.refused;
    summary.reading_refusals = tally.refusals;
    Ok(summary)
}

/// Every agent's orders for `target`, signed.
fn sign_all(
    population: &Population,
    keys: &[ParticipantKey],
    plans: &[Plan],
    target: i64,
    flex_on: bool,
) -> Vec<Pending> {
    let mut out = Vec::new();
    for (i, (a, plan)) in population.agents.iter().zip(plans).enumerate() {
        let mut push = |leg: Leg, order: NewOrder| {
            let nonce = order_nonce(target, leg);
            let proto = order.to_proto(a.id(), nonce);
            out.push(Pending {
                agent: i,
                leg,
                order_id: baton_client::order_id(a.id(), nonce),
                signed: sign_order(&keys[i], &proto),
            });
        };
        for o in &plan.orders {
            let side = match o.side {
                Side::Buy => pb::Side::Buy,
                Side::Sell => pb::Side::Sell,
            };
            let blocks = o
                .blocks
                .iter()
                .map(|b| BlockSpec {
                    quantity: b.quantity,
                    price: b.price,
                })
                .collect();
            push(
                Leg::Energy(o.purpose),
                NewOrder::energy(target, a.node(), side, blocks),
            );
        }
        if flex_on {
            for f in &plan.flex {
                let product = match f.direction {
                    Direction::Up => pb::Product::FlexUp,
                    Direction::Down => pb::Product::FlexDown,
                };
                push(
                    Leg::Flex(f.direction),
                    NewOrder::flex(
                        target,
                        a.node(),
                        product,
                        vec![BlockSpec::priced(f.quantity, f.price)],
                    ),
                );
            }
        }
    }
    out
}

/// An acknowledged order: agent, leg, order id.
type Acked = Vec<(usize, Leg, String)>;

/// Sends the orders in `streams` concurrent `SubmitOrders` streams; returns the acknowledged
/// ones and the refusals' messages.
async fn submit(
    public: &PublicClient,
    pending: Vec<Pending>,
    streams: usize,
) -> Result<(Acked, Vec<String>), RunError> {
    // An agent's orders stay in one stream, in nonce order: the server refuses a nonce that
    // is not above the last one it accepted, and concurrent streams arrive in any order.
    let per_stream = pending
        .len()
        .div_ceil(streams)
        .clamp(1, SUBMIT_STREAM_ORDERS_MAX - LEGS_PER_AGENT_MAX);
    let mut set = JoinSet::new();
    let mut chunks: Vec<Vec<Pending>> = vec![Vec::new()];
    for p in pending {
        let last = chunks.last_mut().expect("one chunk at least");
        let same_agent = last.last().is_some_and(|q| q.agent == p.agent);
        if last.len() >= per_stream && !same_agent {
            chunks.push(vec![p]);
        } else {
            last.push(p);
        }
    }
    chunks.retain(|c| !c.is_empty());
    for (k, chunk) in chunks.into_iter().enumerate() {
        let public = public.clone();
        set.spawn(async move {
            let signed: Vec<pb::SignedOrder> = chunk.iter().map(|p| p.signed.clone()).collect();
            let mut attempt = 1;
            loop {
                match public.submit_signed(signed.clone()).await {
                    Ok(outcomes) => return Ok((k, chunk, outcomes, attempt)),
                    Err(e) if e.is_transient() && attempt < SUBMIT_ATTEMPTS_MAX => {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        });
    }
    let mut done = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r.map_err(|e| RunError::Market(format!("a submit task failed: {e}")))?;
        done.push(r.map_err(client("submitting orders"))?);
    }
    done.sort_by_key(|d| d.0);
    let (mut acked, mut refusals) = (Vec::new(), Vec::new());
    for (_, chunk, outcomes, attempt) in done {
        for (p, o) in chunk.into_iter().zip(outcomes) {
            match o {
                Ok(_) => acked.push((p.agent, p.leg, p.order_id)),
                // A resent stream meets the orders its first attempt landed: the same signed
                // bytes, so the same order (the nonce is unique to this order of this run).
                Err(e) if attempt > 1 && e.code() == Some(Code::AlreadyExists) => {
                    acked.push((p.agent, p.leg, p.order_id))
                }
                Err(e) => refusals.push(format!("{}: {e}", p.order_id)),
            }
        }
    }
    Ok((acked, refusals))
}

/// Waits for the result of `target` on the watch stream (resubscribing if it breaks), within
/// the time its gate and [`RESULT_WAIT_REAL_S_MAX`] allow.
async fn wait_result(
    public: &PublicClient,
    results: &mut baton_client::ResultStream<pb::IntervalResult>,
    target: i64,
    info: &pb::MarketInfo,
    scale: f64,
) -> Result<pb::IntervalResult, RunError> {
    let now = public
        .market_info()
        .await
        .map_err(client("reading the market's clock"))?;
    let gate_ms = (target - info.gate_lead_s) * 1000;
    let wait_real_ms =
        ((gate_ms - now.now_ms).max(0) as f64 / scale) as u64 + RESULT_WAIT_REAL_S_MAX * 1000;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_real_ms);
    loop {
        let next = tokio::time::timeout_at(deadline, results.next()).await;
        match next {
            Err(_) => {
                return Err(RunError::Market(format!(
                    "no result for interval {target} within {wait_real_ms} ms"
                )))
            }
            Ok(Some(Ok(r))) if r.interval_start == target => return Ok(r),
            Ok(Some(Ok(r))) if r.interval_start < target => continue,
            Ok(Some(Ok(r))) => {
                return Err(RunError::Market(format!(
                    "the market cleared interval {} before {target}'s result came",
                    r.interval_start
                )))
            }
            Ok(Some(Err(_))) | Ok(None) => {
                // The stream broke: resubscribe, then ask for the result in case it was
                // published in between.
                *results = public
                    .watch_results()
                    .await
                    .map_err(client("watching results"))?;
                match public.interval_result(target).await {
                    Ok(r) => return Ok(r),
                    Err(e) if e.code() == Some(Code::NotFound) => {}
                    Err(e) => return Err(client("reading a result")(e)),
                }
            }
        }
    }
}

/// Each acknowledged order's accepted total, read with `ListOrders` of the interval.
async fn read_fills(
    clients: &[MarketClient],
    acked: &Acked,
    target: i64,
) -> Result<HashMap<String, Decimal>, RunError> {
    let mut agents: Vec<usize> = acked.iter().map(|a| a.0).collect();
    agents.dedup();
    let gate = Arc::new(Semaphore::new(FILL_READS_CONCURRENT_MAX));
    let mut set = JoinSet::new();
    for i in agents {
        let c = clients[i].clone();
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            c.list_orders(Some(target))
                .await
                .map_err(|e| client(format!("reading the fills of {}", c.participant_id()))(e))
        });
    }
    let mut fills = HashMap::new();
    while let Some(r) = set.join_next().await {
        let orders = r.map_err(|e| RunError::Market(format!("a fill read failed: {e}")))??;
        for o in orders {
            if o.status != pb::OrderStatus::Cleared as i32 {
                continue;
            }
            let q = decimal("accepted_total", &o.accepted_total)
                .map_err(client(format!("order {}", o.order_id)))?;
            fills.insert(o.order_id, q);
        }
    }
    Ok(fills)
}

/// Applies an interval's fills and prices to the agents and builds its report (without its
/// timings).
#[allow(clippy::too_many_arguments)]
fn settle_interval(
    population: &mut Population,
    roles: &[DeliveryRole],
    plans: &[Plan],
    acked: &Acked,
    fills: &HashMap<String, Decimal>,
    result: &pb::IntervalResult,
    index: u32,
    refusals: Vec<String>,
) -> Result<IntervalReport, RunError> {
    let prices: BTreeMap<&str, Decimal> = result
        .prices
        .iter()
        .filter_map(|p| Some((p.node.as_str(), p.price.parse::<Decimal>().ok()?)))
        .collect();
    let mut energy: Vec<Vec<(Purpose, Decimal)>> = vec![Vec::new(); population.agents.len()];
    let mut flex: Vec<Vec<(Direction, Decimal)>> = vec![Vec::new(); population.agents.len()];
    let (mut bought, mut sold, mut flex_kw) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    let mut flex_by_node: BTreeMap<String, Decimal> = BTreeMap::new();
    for (agent, leg, id) in acked {
        let Some(q) = fills.get(id).copied() else {
            return Err(RunError::Market(format!(
                "order {id} was acknowledged but has no fill in interval {}",
                result.interval_start
            )));
        };
        match leg {
            Leg::Energy(p) => {
                energy[*agent].push((*p, q));
                let side = plans[*agent]
                    .orders
                    .iter()
                    .find(|o| o.purpose == *p)
                    .map(|o| o.side);
                match side {
                    Some(Side::Buy) => bought += q,
                    Some(Side::Sell) => sold += q,
                    None => {}
                }
            }
            Leg::Flex(d) => {
                flex[*agent].push((*d, q));
                flex_kw += q;
                if q > Decimal::ZERO {
                    *flex_by_node
                        .entry(population.agents[*agent].node().to_string())
                        .or_default() += q;
                }
            }
        }
    }
    let meter_readings: Vec<MeterReading> = population
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            meter(
                a,
                roles[i],
                &plans[i],
                &energy[i],
                &flex[i],
                &population.delivery,
            )
        })
        .collect();
    let mut node_prices: BTreeMap<&str, Decimal> = BTreeMap::new();
    let (mut soc_sum, mut batteries) = (Decimal::ZERO, 0u32);
    for (i, a) in population.agents.iter_mut().enumerate() {
        a.apply(&plans[i], &energy[i], &flex[i])?;
        let price = prices.get(a.node()).copied().ok_or_else(|| {
            RunError::Market(format!("the result has no price for node {}", a.node()))
        })?;
        a.observe_price(price);
        if let Some(b) = a.battery() {
            soc_sum += b.soc();
            batteries += 1;
        }
    }
    for a in &population.agents {
        node_prices.insert(a.node(), prices[a.node()]);
    }
    let n = Decimal::from(node_prices.len().max(1));
    let orders = acked.len() + refusals.len();
    let mut congested = Vec::new();
    for l in result.lines.iter().filter(|l| l.congested) {
        let flow = decimal("flow", &l.flow).map_err(client(format!("line {}", l.line)))?;
        congested.push((l.line.clone(), flow));
    }
    Ok(IntervalReport {
        index,
        interval_start: result.interval_start,
        orders,
        accepted: acked.len(),
        refused: refusals.len(),
        refusals: refusals.into_iter().take(REFUSALS_KEPT_MAX).collect(),
        bought_kw: bought,
        sold_kw: sold,
        flex_kw,
        market_bought_kw: result.bought.parse().unwrap_or_default(),
        price_min: node_prices.values().min().copied().unwrap_or_default(),
        price_mean: node_prices.values().sum::<Decimal>() / n,
        price_max: node_prices.values().max().copied().unwrap_or_default(),
        distinct_prices: node_prices
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        congested,
        flex_by_node,
        meter_readings,
        battery_soc_mean: (batteries > 0).then(|| soc_sum / Decimal::from(batteries)),
        submit_ms: 0,
        fills_ms: 0,
        skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `baton demo` spawns the run on its runtime: the future must be `Send`.
    #[allow(dead_code)]
    fn run_is_send(channel: Channel, population: &mut Population) {
        fn send<T: Send>(_: T) {}
        send(run(channel, population, &RunConfig::default(), |_| {}));
    }

    #[test]
    fn nonces_name_their_interval_and_leg_and_increase() {
        let legs = [
            Leg::Energy(Purpose::Household),
            Leg::Energy(Purpose::Ev),
            Leg::Energy(Purpose::BatteryCharge),
            Leg::Energy(Purpose::BatteryDischarge),
            Leg::Flex(Direction::Up),
            Leg::Flex(Direction::Down),
        ];
        let mut last = 0;
        for start in [1_800_000_000, 1_800_000_300] {
            for leg in legs {
                let n = order_nonce(start, leg);
                assert!(n > last, "strictly increasing in sending order");
                last = n;
                assert_eq!(Leg::of_nonce(n), Some(leg));
                assert_eq!(n / NONCES_PER_INTERVAL, start as u64);
            }
        }
        // Above the SDK's unix-microsecond nonces for any interval not yet begun.
        assert!(order_nonce(1_800_000_000, legs[0]) > 1_700_000_000_000_000);
    }
}
