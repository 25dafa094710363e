//! What a ledger says happened, interval by interval: [`IntervalSummary`] per recorded interval
//! and the [`Report`] over all of them, read from the ledger's entries. `baton-report` renders
//! it as a text table and a self-contained HTML market report.
//!
//! Works on any Baton ledger: intervals recorded by `baton clear --ledger` and by the live
//! market's scheduler are the same three entries ([`crate::record`]): `interval_input`,
//! `interval_result` (`nodal-auction-result/v1`) and `settlement`. The live market also writes
//! a `market_event` `{"event": "interval_not_cleared", "reason": …}` for an interval whose book
//! the engine refused; such intervals are reported as not cleared, with the `order` entries
//! minus the `cancel` entries recorded for them as their order count.
//!
//! Every figure is a `rust_decimal::Decimal` taken from the recorded text exactly; the only
//! rounding is the conversion of average power (kW over the interval) into energy, done once
//! per figure at [`ENERGY_SCALE`] by the engine's rounding rule ([`round_at`]).
//!
//! Units follow the market: quantities are average power in kW and prices currency per kWh in
//! native scenarios and the live market; a study-format market (MW, $/MWh) is reported in MW
//! and MWh instead ([`Report::units`]). The `_kw`/`_kwh` field names mean "the market's power and
//! energy unit".
//!
//! **Architecture Invariant:** reports are a pure function of the ledger's entries: no clock, no
//! hash-map iteration order, no floating point. The same ledger gives the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use baton_engine::study::RESULT_FORMAT;
use baton_engine::units::{round_at, MONEY_SCALE};
use baton_engine::MarketSpec;
use baton_ledger::{
    Checkpoint, Entry, EntryKind, Ledger, LedgerError, SettlementBody, SignedMessageBody,
    ENTRIES_PER_READ_MAX,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::record::{IntervalInput, INTERVAL_INPUT_FORMAT};

/// Decimal places of every energy figure (kWh): the quantity scale, since energy is a quantity
/// times `minutes / 60`, which is not exact in decimals for most interval lengths.
pub const ENERGY_SCALE: u32 = 6;
/// Most nodes (heat-map rows) whose prices the report keeps per interval; the rest are
/// counted, not kept.
pub const HEATMAP_NODES_MAX: usize = 200;
/// Most nodes of a network the report draws as a feeder (larger networks are not drawn).
pub const FEEDER_NODES_MAX: usize = 400;
/// Most lines of a network the report draws as a feeder.
pub const FEEDER_LINES_MAX: usize = 800;
/// Most nodes named with an interval's lowest or highest price (the count is always given).
pub const PRICE_NODES_LISTED_MAX: usize = 8;
/// Largest magnitude accepted for any recorded number. The engine's own limits are far below
/// (quantities 1e8, prices 1e7); this bound keeps every sum over a ledger of any realistic
/// length inside `Decimal`'s range.
pub const RECORDED_NUMBER_ABS_MAX: Decimal = Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0);
/// Longest interval accepted in a recorded result, in minutes (one day, the engine's limit).
pub const INTERVAL_MINUTES_MAX: u32 = baton_engine::model::INTERVAL_MINUTES_MAX;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The ledger could not be read.
    #[error("reading the ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// An interval entry does not parse.
    #[error("seq {seq} ({kind}): {reason}")]
    Entry {
        /// The entry.
        seq: u64,
        /// Its kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A sum left `Decimal`'s range.
    #[error("the {what} summed over the ledger overflows")]
    Overflow {
        /// Which total.
        what: &'static str,
    },
}

/// Whether an interval was cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum IntervalStatus {
    /// Cleared and settled: the figures are the recorded result's.
    Cleared,
    /// Recorded as not cleared; every figure but the order count is zero.
    NotCleared {
        /// The recorded reason.
        reason: String,
    },
}

/// An interval's lowest or highest nodal price and where it occurs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriceAt {
    /// The price, as recorded.
    pub price: Decimal,
    /// The first [`PRICE_NODES_LISTED_MAX`] nodes at exactly this price, in result order.
    pub nodes: Vec<String>,
    /// How many nodes have this price.
    pub node_count: usize,
}

/// Flexibility procured for one requirement in one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlexProcured {
    /// Requirement id.
    pub requirement: String,
    /// Its clearing price: currency per kW per hour of availability (the provider is paid
    /// price × kW × minutes / 60).
    pub price: Decimal,
    /// Power procured, kW.
    pub procured_kw: Decimal,
}

/// One recorded interval, computed exactly from its ledger entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntervalSummary {
    /// Interval start, unix seconds.
    pub interval_start: i64,
    /// Interval length, minutes.
    pub interval_minutes: u32,
    /// Market name.
    pub market: String,
    /// Cleared or not.
    pub status: IntervalStatus,
    /// Participants' orders in the book (grid connections are not orders).
    pub orders: usize,
    /// Peer-to-peer power: the settlement's P2P attribution summed over every pair whose buyer
    /// and seller are both participants' orders (same node or across the network; a
    /// participant's own buy and sell matched together count too). Energy bought from or sold
    /// to a grid connection is not P2P. Average kW over the interval.
    pub p2p_kw: Decimal,
    /// Power attributed from a grid connection's import order to any buyer, kW.
    pub grid_import_kw: Decimal,
    /// Power attributed from any seller to a grid connection's export order, kW.
    pub grid_export_kw: Decimal,
    /// [`IntervalSummary::p2p_kw`] × minutes / 60, kWh, at [`ENERGY_SCALE`].
    pub p2p_volume_kwh: Decimal,
    /// [`IntervalSummary::grid_import_kw`] × minutes / 60, kWh, at [`ENERGY_SCALE`].
    pub grid_import_kwh: Decimal,
    /// [`IntervalSummary::grid_export_kw`] × minutes / 60, kWh, at [`ENERGY_SCALE`].
    pub grid_export_kwh: Decimal,
    /// Lowest nodal price, `None` when not cleared or no nodes.
    pub price_min: Option<PriceAt>,
    /// Highest nodal price.
    pub price_max: Option<PriceAt>,
    /// Lines at their limit, in result order.
    pub congested_lines: Vec<String>,
    /// Flexibility per requirement, in result order.
    pub flex: Vec<FlexProcured>,
    /// Flexibility procured over all requirements, kW.
    pub flex_procured_kw: Decimal,
    /// Money paid to flexibility providers (the settlement's `flex … for …` postings).
    pub flex_cost: Decimal,
    /// Welfare as the clearing states it (currency per hour).
    pub welfare: Decimal,
    /// Metered delivery, once the interval's `delivery_settlement` is recorded.
    pub delivery: Option<DeliveryFigures>,
    /// Every line's flow, kW from its `from` node to its `to` node, in result order (for the
    /// feeder drawing; not in the JSON).
    #[serde(skip)]
    pub line_flows: Vec<(String, Decimal)>,
}

/// The network the report draws: the latest one recorded (a `network` entry or an
/// operator-entered book), at most [`FEEDER_NODES_MAX`] nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feeder {
    /// Node ids, in the network's order.
    pub nodes: Vec<String>,
    /// Lines: id, from, to, limit (kW).
    pub lines: Vec<FeederLine>,
    /// Nodes of the grid connections (where the drawing is rooted), in the network's order.
    pub heads: Vec<String>,
}

/// One line of [`Feeder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeederLine {
    /// Line id.
    pub id: String,
    /// From node.
    pub from: String,
    /// To node.
    pub to: String,
    /// Thermal limit on |flow|, kW; `None`: unlimited.
    pub capacity: Option<Decimal>,
}

impl Feeder {
    fn of(m: &MarketSpec) -> Option<Feeder> {
        (m.nodes.len() <= FEEDER_NODES_MAX && m.lines.len() <= FEEDER_LINES_MAX).then(|| Feeder {
            nodes: m.nodes.iter().map(|n| n.id.clone()).collect(),
            lines: m
                .lines
                .iter()
                .map(|l| FeederLine {
                    id: l.id.clone(),
                    from: l.from.clone(),
                    to: l.to.clone(),
                    capacity: l.capacity,
                })
                .collect(),
            heads: m.grid_connections.iter().map(|g| g.node.clone()).collect(),
        })
    }
}

/// Sums and extremes over every interval of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Intervals recorded.
    pub intervals: usize,
    /// Of which not cleared.
    pub not_cleared: usize,
    /// Orders over all intervals.
    pub orders: usize,
    /// P2P energy: Σ kW × minutes / 60 over intervals, rounded once at [`ENERGY_SCALE`].
    pub p2p_volume_kwh: Decimal,
    /// Grid import energy, likewise.
    pub grid_import_kwh: Decimal,
    /// Grid export energy, likewise.
    pub grid_export_kwh: Decimal,
    /// Lowest nodal price in any interval.
    pub price_min: Option<Decimal>,
    /// Highest nodal price in any interval.
    pub price_max: Option<Decimal>,
    /// Every line congested in some interval, in order of first congestion.
    pub congested_lines: Vec<CongestedLine>,
    /// Most flexibility procured in one interval, kW.
    pub flex_procured_kw_peak: Decimal,
    /// Money paid for flexibility over all intervals.
    pub flex_cost: Decimal,
}

/// A line and the intervals in which it was congested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CongestedLine {
    /// Line id.
    pub line: String,
    /// Interval starts, ascending.
    pub intervals: Vec<i64>,
}

/// Unit labels of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Units {
    /// `kW` or `MW`.
    pub power: &'static str,
    /// `kWh` or `MWh`.
    pub energy: &'static str,
}

/// Facts about the market and the ledger the report was made from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Market names, in order of first appearance.
    pub markets: Vec<String>,
    /// Interval lengths seen, minutes, ascending.
    pub interval_minutes: Vec<u32>,
    /// Nodes in the latest recorded input.
    pub nodes: usize,
    /// Lines in the latest recorded input.
    pub lines: usize,
    /// Grid connections in the latest recorded input.
    pub grid_connections: usize,
    /// Distinct accounts with orders in any recorded input.
    pub participants: usize,
    /// Entries in the ledger.
    pub ledger_entries: u64,
    /// Size of the latest signed checkpoint.
    pub checkpoint_size: Option<u64>,
    /// Its Merkle root, lowercase hex.
    pub checkpoint_root: Option<String>,
    /// Its origin line.
    pub checkpoint_origin: Option<String>,
}

/// Nodal prices for the heat map: nodes (first seen, in result order) × intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceGrid {
    /// Node ids, at most [`HEATMAP_NODES_MAX`].
    pub nodes: Vec<String>,
    /// Distinct nodes over all intervals (rows beyond the limit are left out).
    pub nodes_total: usize,
    /// Per interval (as in [`Report::intervals`]), per node: the price, if it had one.
    pub prices: Vec<Vec<Option<Decimal>>>,
}

/// A whole report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Market and ledger facts.
    pub facts: Facts,
    /// Unit labels.
    pub units: Units,
    /// Every recorded interval, ascending by start.
    pub intervals: Vec<IntervalSummary>,
    /// Sums over them.
    pub totals: Totals,
    /// Nodal prices for the heat map.
    #[serde(skip)]
    pub prices: PriceGrid,
    /// The network to draw, if it is small enough.
    #[serde(skip)]
    pub feeder: Option<Feeder>,
}

/// A decimal read exactly from its JSON text (a number or a decimal string).
struct Num(Decimal);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get().trim_matches('"');
        let v = text
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| D::Error::custom(format!("{text:?} is not a decimal number")))?;
        if v.abs() > RECORDED_NUMBER_ABS_MAX {
            return Err(D::Error::custom(format!(
                "{text} exceeds {RECORDED_NUMBER_ABS_MAX} in magnitude"
            )));
        }
        Ok(Num(v))
    }
}

#[derive(Deserialize)]
struct ResultIn {
    format: String,
    market: String,
    welfare: Num,
    nodes: Vec<NodeIn>,
    orders: Vec<IdIn>,
    lines: Vec<LineIn>,
    #[serde(default)]
    flex_requirements: Vec<FlexIn>,
    settlement: SettlementIn,
}

#[derive(Deserialize)]
struct NodeIn {
    id: String,
    lmp: Num,
}

#[derive(Deserialize)]
struct IdIn {
    id: String,
}

#[derive(Deserialize)]
struct LineIn {
    id: String,
    flow: Num,
    congested: bool,
}

#[derive(Deserialize)]
struct FlexIn {
    id: String,
    price: Num,
    procured: Num,
}

#[derive(Deserialize)]
struct SettlementIn {
    interval_minutes: u32,
    postings: Vec<PostingIn>,
    attributions: Vec<AttributionIn>,
}

#[derive(Deserialize)]
struct PostingIn {
    amount: Num,
    memo: String,
}

#[derive(Deserialize)]
struct AttributionIn {
    buyer: String,
    seller: String,
    quantity: Num,
}

#[derive(Deserialize)]
struct MarketEventIn {
    event: String,
    #[serde(default)]
    reason: Option<String>,
}

/// What one interval's input says, kept for the facts.
struct InputFacts {
    nodes: usize,
    lines: usize,
    grid_connections: usize,
    study_units: bool,
}

/// What an interval's result entry gave.
struct ResultRead {
    summary: IntervalSummary,
    /// (index into the heat-map nodes, price).
    prices: Vec<(usize, Decimal)>,
    /// The flexibility cost from the result's own postings (used without a settlement entry).
    flex_cost: Decimal,
}

/// An interval as read so far.
#[derive(Default)]
struct Partial {
    result: Option<ResultRead>,
    input: Option<(u64, InputFacts)>,
    settlement_flex_cost: Option<Decimal>,
    not_cleared: Option<String>,
    orders_recorded: usize,
    cancels_recorded: usize,
    delivery: Option<DeliveryFigures>,
}

/// Builds a [`Report`] from entries given in sequence order (see [`read`]).
#[derive(Default)]
pub struct ReportBuilder {
    intervals: BTreeMap<i64, Partial>,
    markets: Vec<String>,
    participants: BTreeSet<String>,
    node_index: BTreeMap<String, usize>,
    node_ids: Vec<String>,
    entries: u64,
    /// The facts of the latest `network` entry.
    network: Option<(usize, usize, usize)>,
    /// Per gated interval: the facts of the network its gate closed in.
    gated: BTreeMap<i64, (usize, usize, usize)>,
    /// Per interval: who signed orders for it.
    signers: BTreeMap<i64, BTreeSet<String>>,
    /// The latest network recorded, as drawn.
    feeder: Option<Feeder>,
}

fn entry_error(e: &Entry, reason: impl std::fmt::Display) -> ReportError {
    ReportError::Entry {
        seq: e.seq,
        kind: e.kind.as_str(),
        reason: reason.to_string(),
    }
}

/// The money of the `flex … for …` posting pairs: each allocation is posted as the provider's
/// receipt followed by the payer's equal and opposite payment under the same memo; the cost is
/// the sum of the receipts.
fn flex_cost<'a>(postings: impl Iterator<Item = (&'a str, Decimal)>) -> Decimal {
    let postings: Vec<(&str, Decimal)> = postings.collect();
    let mut cost = Decimal::ZERO;
    let mut i = 0;
    while i + 1 < postings.len() {
        let ((m1, a1), (m2, a2)) = (postings[i], postings[i + 1]);
        if m1.starts_with("flex ") && m1 == m2 && a1 + a2 == Decimal::ZERO {
            cost += a1;
            i += 2;
        } else {
            i += 1;
        }
    }
    cost
}

fn energy(kw_minutes: Decimal) -> Decimal {
    round_at(kw_minutes / Decimal::from(60), ENERGY_SCALE)
}

/// The extreme price among `nodes` and where it occurs.
fn extreme(nodes: &[NodeIn], pick: fn(Decimal, Decimal) -> bool) -> Option<PriceAt> {
    let mut best = nodes.first()?.lmp.0;
    for n in nodes {
        if pick(n.lmp.0, best) {
            best = n.lmp.0;
        }
    }
    let at: Vec<&NodeIn> = nodes.iter().filter(|n| n.lmp.0 == best).collect();
    Some(PriceAt {
        price: best,
        nodes: at
            .iter()
            .take(PRICE_NODES_LISTED_MAX)
            .map(|n| n.id.clone())
            .collect(),
        node_count: at.len(),
    })
}

impl ReportBuilder {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one entry into account. Entries of kinds a report does not use are skipped.
    pub fn add(&mut self, e: &Entry) -> Result<(), ReportError> {
        self.entries = self.entries.max(e.seq);
        if e.kind == EntryKind::Network {
            if let Ok(m) = serde_json::from_slice::<MarketSpec>(&e.body) {
                self.network = Some((m.nodes.len(), m.lines.len(), m.grid_connections.len()));
                self.feeder = Feeder::of(&m);
            }
        }
        let Some(t) = e.interval_start else {
            return Ok(());
        };
        match e.kind {
            EntryKind::IntervalInput => self.add_input(e, t)?,
            EntryKind::IntervalResult => self.add_result(e, t)?,
            EntryKind::Settlement => {
                let body = SettlementBody::from_bytes(&e.body).map_err(|r| entry_error(e, r))?;
                let cost = flex_cost(
                    body.postings
                        .iter()
                        .map(|p| (p.memo.as_deref().unwrap_or_default(), p.amount.as_decimal())),
                );
                self.intervals.entry(t).or_default().settlement_flex_cost = Some(cost);
            }
            EntryKind::DeliverySettlement => {
                let f = delivery_figures(&e.body).map_err(|r| entry_error(e, r))?;
                self.intervals.entry(t).or_default().delivery = Some(f);
            }
            EntryKind::MarketEvent => {
                // Other events (pause, resume) are market-wide and not about an interval.
                if let Ok(ev) = serde_json::from_slice::<MarketEventIn>(&e.body) {
                    if ev.event == "interval_not_cleared" {
                        self.intervals.entry(t).or_default().not_cleared =
                            Some(ev.reason.unwrap_or_else(|| "no reason recorded".into()));
                    }
                }
            }
            EntryKind::GateClosed => {
                if let Some(f) = self.network {
                    self.gated.insert(t, f);
                }
            }
            EntryKind::Order => {
                if let Ok(b) = SignedMessageBody::from_bytes(e.kind, &e.body) {
                    self.signers.entry(t).or_default().insert(b.participant_id);
                }
                self.intervals.entry(t).or_default().orders_recorded += 1
            }
            EntryKind::Cancel => self.intervals.entry(t).or_default().cancels_recorded += 1,
            _ => {}
        }
        Ok(())
    }

    fn add_input(&mut self, e: &Entry, t: i64) -> Result<(), ReportError> {
        let input: IntervalInput =
            serde_json::from_slice(&e.body).map_err(|r| entry_error(e, r))?;
        if input.format != INTERVAL_INPUT_FORMAT {
            return Err(entry_error(e, format!("format {:?}", input.format)));
        }
        let (nodes, lines, grid_connections) = match &input.market {
            // An operator-entered book carries its market.
            Some(m) => {
                self.feeder = Feeder::of(m);
                for o in &m.orders {
                    self.participants
                        .insert(o.participant.clone().unwrap_or_else(|| o.id.clone()));
                }
                (m.nodes.len(), m.lines.len(), m.grid_connections.len())
            }
            // A signed book: its signers, in the network its gate closed in.
            None => {
                self.participants
                    .extend(self.signers.remove(&t).unwrap_or_default());
                self.gated
                    .get(&t)
                    .copied()
                    .ok_or_else(|| entry_error(e, "no gate_closed entry in a network before it"))?
            }
        };
        let facts = InputFacts {
            nodes,
            lines,
            grid_connections,
            study_units: input.rounding,
        };
        self.intervals.entry(t).or_default().input = Some((e.seq, facts));
        Ok(())
    }

    fn add_result(&mut self, e: &Entry, t: i64) -> Result<(), ReportError> {
        let r: ResultIn = serde_json::from_slice(&e.body).map_err(|r| entry_error(e, r))?;
        if r.format != RESULT_FORMAT {
            return Err(entry_error(e, format!("format {:?}", r.format)));
        }
        let minutes = r.settlement.interval_minutes;
        if minutes == 0 || minutes > INTERVAL_MINUTES_MAX {
            return Err(entry_error(
                e,
                format!("interval_minutes {minutes} outside 1..={INTERVAL_MINUTES_MAX}"),
            ));
        }
        // Attributions name accepted orders: participants' (the result's `orders`) and grid
        // connections' (`<id>/import`, `<id>/export`, never a participant's id).
        let participant: HashSet<&str> = r.orders.iter().map(|o| o.id.as_str()).collect();
        let (mut p2p, mut import, mut export) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        for a in &r.settlement.attributions {
            let (b, s) = (
                participant.contains(a.buyer.as_str()),
                participant.contains(a.seller.as_str()),
            );
            if b && s {
                p2p += a.quantity.0;
            }
            if !s {
                import += a.quantity.0;
            }
            if !b {
                export += a.quantity.0;
            }
        }
        let m = Decimal::from(minutes);
        let flex: Vec<FlexProcured> = r
            .flex_requirements
            .iter()
            .map(|f| FlexProcured {
                requirement: f.id.clone(),
                price: f.price.0,
                procured_kw: f.procured.0,
            })
            .collect();
        let summary = IntervalSummary {
            interval_start: t,
            interval_minutes: minutes,
            market: r.market.clone(),
            status: IntervalStatus::Cleared,
            orders: r.orders.len(),
            p2p_kw: p2p,
            grid_import_kw: import,
            grid_export_kw: export,
            p2p_volume_kwh: energy(p2p * m),
            grid_import_kwh: energy(import * m),
            grid_export_kwh: energy(export * m),
            price_min: extreme(&r.nodes, |a, b| a < b),
            price_max: extreme(&r.nodes, |a, b| a > b),
            congested_lines: r
                .lines
                .iter()
                .filter(|l| l.congested)
                .map(|l| l.id.clone())
                .collect(),
            flex_procured_kw: flex.iter().map(|f| f.procured_kw).sum(),
            flex,
            flex_cost: Decimal::ZERO,
            welfare: r.welfare.0,
            delivery: None,
            line_flows: r.lines.iter().map(|l| (l.id.clone(), l.flow.0)).collect(),
        };
        let mut prices = Vec::new();
        for n in &r.nodes {
            let i = match self.node_index.get(&n.id) {
                Some(&i) => i,
                None => {
                    let i = self.node_ids.len();
                    self.node_index.insert(n.id.clone(), i);
                    self.node_ids.push(n.id.clone());
                    i
                }
            };
            if i < HEATMAP_NODES_MAX {
                prices.push((i, n.lmp.0));
            }
        }
        if !self.markets.contains(&r.market) {
            self.markets.push(r.market);
        }
        let from_result = flex_cost(
            r.settlement
                .postings
                .iter()
                .map(|p| (p.memo.as_str(), p.amount.0)),
        );
        self.intervals.entry(t).or_default().result = Some(ResultRead {
            summary,
            prices,
            flex_cost: from_result,
        });
        Ok(())
    }

    /// The report; `checkpoint` is the ledger's latest, for the facts.
    pub fn finish(self, checkpoint: Option<&Checkpoint>) -> Result<Report, ReportError> {
        let heat_nodes = self.node_ids.len().min(HEATMAP_NODES_MAX);
        let mut intervals = Vec::new();
        let mut grid = PriceGrid {
            nodes: self.node_ids[..heat_nodes].to_vec(),
            nodes_total: self.node_ids.len(),
            prices: Vec::new(),
        };
        let mut latest_input: Option<(u64, InputFacts)> = None;
        let (mut minutes_seen, mut study, mut scenario) = (BTreeSet::new(), false, false);
        for (t, p) in self.intervals {
            if let Some((seq, f)) = p.input {
                study |= f.study_units;
                scenario |= !f.study_units;
                if latest_input.as_ref().is_none_or(|(s, _)| seq > *s) {
                    latest_input = Some((seq, f));
                }
            }
            let mut row = vec![None; heat_nodes];
            let summary = match (p.result, p.not_cleared) {
                (
                    Some(ResultRead {
                        summary: mut s,
                        prices,
                        flex_cost: from_result,
                    }),
                    _,
                ) => {
                    // Postings are at the money scale; padding shows `0.00`, never `0`.
                    s.flex_cost =
                        round_at(p.settlement_flex_cost.unwrap_or(from_result), MONEY_SCALE);
                    for (i, price) in prices {
                        row[i] = Some(price);
                    }
                    s.delivery = p.delivery;
                    s
                }
                (None, Some(reason)) => not_cleared(
                    t,
                    reason,
                    p.orders_recorded.saturating_sub(p.cancels_recorded),
                ),
                (None, None) => continue,
            };
            minutes_seen.insert(summary.interval_minutes);
            intervals.push(summary);
            grid.prices.push(row);
        }
        // Intervals with an input but neither result nor not-cleared event are incomplete
        // recordings; `baton audit reclear` names them. They are left out here.
        let totals = totals(&intervals)?;
        let (nodes, lines, grid_connections) = latest_input
            .map(|(_, f)| (f.nodes, f.lines, f.grid_connections))
            .unwrap_or((grid.nodes_total, 0, 0));
        let facts = Facts {
            markets: self.markets,
            interval_minutes: minutes_seen.into_iter().filter(|m| *m > 0).collect(),
            nodes,
            lines,
            grid_connections,
            participants: self.participants.len(),
            ledger_entries: self.entries,
            checkpoint_size: checkpoint.map(|c| c.size),
            checkpoint_root: checkpoint.map(|c| hex::encode(c.root)),
            checkpoint_origin: checkpoint.map(|c| c.origin.clone()),
        };
        let units = if study && !scenario {
            Units {
                power: "MW",
                energy: "MWh",
            }
        } else {
            Units {
                power: "kW",
                energy: "kWh",
            }
        };
        Ok(Report {
            facts,
            units,
            intervals,
            totals,
            prices: grid,
            feeder: self.feeder,
        })
    }
}

fn not_cleared(t: i64, reason: String, orders: usize) -> IntervalSummary {
    IntervalSummary {
        interval_start: t,
        interval_minutes: 0,
        market: String::new(),
        status: IntervalStatus::NotCleared { reason },
        orders,
        p2p_kw: Decimal::ZERO,
        grid_import_kw: Decimal::ZERO,
        grid_export_kw: Decimal::ZERO,
        p2p_volume_kwh: Decimal::ZERO,
        grid_import_kwh: Decimal::ZERO,
        grid_export_kwh: Decimal::ZERO,
        price_min: None,
        price_max: None,
        congested_lines: Vec::new(),
        flex: Vec::new(),
        flex_procured_kw: Decimal::ZERO,
        flex_cost: round_at(Decimal::ZERO, MONEY_SCALE),
        welfare: Decimal::ZERO,
        delivery: None,
        line_flows: Vec::new(),
    }
}

fn totals(intervals: &[IntervalSummary]) -> Result<Totals, ReportError> {
    let add = |a: Decimal, b: Decimal, what| a.checked_add(b).ok_or(ReportError::Overflow { what });
    let kw_min = |kw: Decimal, s: &IntervalSummary, what| {
        kw.checked_mul(Decimal::from(s.interval_minutes))
            .ok_or(ReportError::Overflow { what })
    };
    let mut t = Totals {
        intervals: intervals.len(),
        ..Totals::default()
    };
    let (mut p2p, mut import, mut export) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    let mut lines: Vec<CongestedLine> = Vec::new();
    let mut line_index: BTreeMap<&str, usize> = BTreeMap::new();
    for s in intervals {
        if matches!(s.status, IntervalStatus::NotCleared { .. }) {
            t.not_cleared += 1;
        }
        t.orders += s.orders;
        p2p = add(p2p, kw_min(s.p2p_kw, s, "P2P energy")?, "P2P energy")?;
        import = add(import, kw_min(s.grid_import_kw, s, "import")?, "import")?;
        export = add(export, kw_min(s.grid_export_kw, s, "export")?, "export")?;
        if let Some(p) = &s.price_min {
            t.price_min = Some(t.price_min.map_or(p.price, |m| m.min(p.price)));
        }
        if let Some(p) = &s.price_max {
            t.price_max = Some(t.price_max.map_or(p.price, |m| m.max(p.price)));
        }
        for l in &s.congested_lines {
            let i = *line_index.entry(l.as_str()).or_insert_with(|| {
                lines.push(CongestedLine {
                    line: l.clone(),
                    intervals: Vec::new(),
                });
                lines.len() - 1
            });
            lines[i].intervals.push(s.interval_start);
        }
        t.flex_cost = add(t.flex_cost, s.flex_cost, "flexibility cost")?;
    }
    t.p2p_volume_kwh = energy(p2p);
    t.grid_import_kwh = energy(import);
    t.grid_export_kwh = energy(export);
    t.congested_lines = lines;
    t.flex_procured_kw_peak = intervals
        .iter()
        .map(|s| s.flex_procured_kw)
        .max()
        .unwrap_or_default();
    t.flex_cost = round_at(t.flex_cost, MONEY_SCALE);
    Ok(t)
}

/// Reads the ledger at `db_url` (`sqlite://PATH` or `postgres://…`) page by page and builds its
/// report. Memory is one page of entries plus the summaries.
pub async fn read(db_url: &str) -> Result<Report, ReportError> {
    let ledger = Ledger::open_existing(db_url).await?;
    let r = read_from(&ledger).await;
    ledger.close().await;
    r
}

async fn read_from(ledger: &Ledger) -> Result<Report, ReportError> {
    let mut b = ReportBuilder::new();
    let mut from = 1u64;
    loop {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in &page {
            b.add(e)?;
        }
    }
    let checkpoint = ledger.latest_checkpoint().await?;
    b.finish(checkpoint.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn flex_cost_sums_the_providers_side_of_each_pair() {
        let postings = [
            ("energy o1", d("1.00")),
            ("flex f1 for r1", d("0.04")),
            ("flex f1 for r1", d("-0.04")),
            ("flex f2 for r1", d("0.10")),
            ("flex f2 for r1", d("-0.10")),
            ("congestion rent", d("0.25")),
        ];
        assert_eq!(flex_cost(postings.into_iter()), d("0.14"));
    }

    #[test]
    fn energy_is_rounded_once_half_to_even() {
        // 50 kW for 5 minutes: 250 / 60 = 4.1666… kWh.
        assert_eq!(energy(d("250")), d("4.166667"));
        assert_eq!(energy(d("250")).to_string(), "4.166667");
    }

    #[test]
    fn the_number_bound_is_ten_to_the_fifteenth() {
        assert_eq!(
            RECORDED_NUMBER_ABS_MAX,
            Decimal::from(1_000_000_000_000_000_i64)
        );
    }
}

/// An interval's metered delivery in figures, read from its `delivery_settlement` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryFigures {
    /// Readings settled.
    pub readings: u64,
    /// Positions settled by the missing-reading rule (cleared energy or flexibility, no
    /// reading: estimated as the schedule, its flexibility undelivered).
    pub missing: u64,
    /// Sum of |imbalance| over the positions, kWh.
    pub imbalance_kwh: Decimal,
    /// Net amount the participants paid for their imbalance: what
    /// `market-operator:imbalance` received (negative: it paid out more than it took).
    pub imbalance_cost: Decimal,
    /// Flexibility procured in the clearing, kWh (up and down together).
    pub flex_procured_kwh: Decimal,
    /// Flexibility the meters show delivered, kWh.
    pub flex_delivered_kwh: Decimal,
    /// Penalties charged for flexibility not delivered (the `flex penalty …` postings).
    pub flex_penalties: Decimal,
}

/// The figures of a `delivery_settlement` body, from its positions (the engine's
/// `delivery::Position`, as recorded) and its postings.
pub fn delivery_figures(body: &[u8]) -> Result<DeliveryFigures, String> {
    use baton_engine::delivery::IMBALANCE_ACCOUNT;
    let b = baton_ledger::DeliverySettlementBody::from_bytes(body).map_err(|e| e.to_string())?;
    let positions = b
        .delivery
        .get("positions")
        .and_then(|p| p.as_array())
        .ok_or("delivery has no positions")?;
    let num = |p: &serde_json::Value, key: &str| -> Result<Decimal, String> {
        match p.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Decimal::ZERO),
            Some(serde_json::Value::String(s)) => s
                .parse::<Decimal>()
                .map_err(|e| format!("position {key} {s:?}: {e}")),
            Some(other) => Err(format!("position {key} is not a decimal string: {other}")),
        }
    };
    let mut f = DeliveryFigures {
        readings: b.readings,
        ..DeliveryFigures::default()
    };
    for p in positions {
        if p.get("metered_kwh").is_none_or(|m| m.is_null()) {
            f.missing += 1;
        }
        f.imbalance_kwh += num(p, "imbalance_kwh")?.abs();
        f.flex_procured_kwh += num(p, "flex_procured_kwh")?.abs();
        f.flex_delivered_kwh += num(p, "flex_delivered_kwh")?.abs();
    }
    for p in &b.postings {
        let memo = p.memo.as_deref().unwrap_or("");
        let amount = p.amount.as_decimal();
        if p.account == IMBALANCE_ACCOUNT {
            f.imbalance_cost += amount;
        } else if memo.starts_with("flex penalty ") && amount > Decimal::ZERO {
            // Each penalty is a pair: the provider pays, the requirement's account receives.
            f.flex_penalties += amount;
        }
    }
    Ok(f)
}
