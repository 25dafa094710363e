//! Book binding: what each interval's book must be, derived from the ledger alone.
//!
//! The live market records participants' signed orders and cancels as they are accepted, a
//! `gate_closed` entry when it freezes an interval's book, and then the interval
//! (`interval_input`, `interval_result`, `settlement`). [`Binding`] replays those entries in seq
//! order and checks, for every interval T:
//!
//! - every `order` entry's payload agrees with the entry (participant, interval,
//!   `order_id = <participant>-<nonce>`), comes from an admitted, active participant at its
//!   registered node, and carries a nonce above every earlier one of that participant (orders
//!   and cancels share the sequence);
//! - no order or cancel for T is logged after T's gate; a cancel names an open order of its
//!   own participant;
//! - T's gate binds exactly the signed, uncancelled orders for T before it (count and
//!   [`baton_ledger::signed_book_digest`] of their seqs) and names the `network` entry in force;
//! - T is recorded once, after its gate (a second recording needs a `correction` entry that
//!   corrects the first), and its recorded result lists exactly the bound book: the same ids,
//!   energy orders as orders and flexibility offers as offers, one accepted quantity per block;
//! - every settlement account is an admitted participant or a system account: the network
//!   operator, the rounding account, or `grid:<id>` of a grid connection of the network in force.
//!
//! The same replay rebuilds each recorded interval's market ([`BoundInterval`]), which is what
//! [`crate::reclear_ledger`] re-clears: nothing an operator transcribes is trusted.
//!
//! Books the operator entered itself (the one-shot `baton clear --ledger`, gate source
//! `operator`) are carried in the `interval_input` and bound by their digest; their accounts are
//! the book's own. A regulator sees which intervals are operator-entered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use baton_engine::model::{
    BlockSpec, Direction, FlexOfferSpec, OrderSpec, GRID_ACCOUNT_PREFIX, NETWORK_OPERATOR_ACCOUNT,
    ROUNDING_ACCOUNT,
};
use baton_engine::units::{PRICE_SCALE, QUANTITY_SCALE};
use baton_engine::{MarketSpec, Side};
use baton_ledger::audit::{EntryCheck, EntryView};
use baton_ledger::{
    signed_book_digest, BookSource, CorrectionBody, EntryKind, GateClosedBody, ParticipantBody,
    ParticipantStatus, SettlementBody,
};
use baton_proto::v1 as pb;
use baton_proto::wire;
use prost::Message;
use serde::Deserialize;

use crate::delivery::{decode_reading, engine_reading, BoundDelivery};
use crate::order_view::OrderView;
use crate::record::{operator_book_digest, IntervalInput, INTERVAL_INPUT_FORMAT};
use baton_engine::delivery::{MeterReading, IMBALANCE_ACCOUNT};
use baton_ledger::{readings_digest, DeliverySettlementBody, MeterBody};

/// The role name (see `baton_proto::wire`) that may buy flexibility.
const NETWORK_OPERATOR_ROLE: &str = "network_operator";

/// What a participant order trades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// Energy at the order's node.
    Energy,
    /// Flexibility in one direction (always a sell).
    Flex(Direction),
}

/// A participant's order as it signed it, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedOrder {
    /// `<participant>-<nonce>`.
    pub id: String,
    /// The signer.
    pub participant: String,
    /// Its nonce.
    pub nonce: u64,
    /// The interval it is for.
    pub interval_start: i64,
    /// Its node.
    pub node: String,
    /// Buy or sell.
    pub side: Side,
    /// Energy or flexibility.
    pub product: Product,
    /// Its blocks.
    pub blocks: Vec<BlockSpec>,
    /// The device it draws on.
    pub device: Option<String>,
}

impl SignedOrder {
    /// Decodes the exact bytes a participant signed (a serialized `baton.v1.Order`).
    pub fn decode(payload: &[u8]) -> Result<SignedOrder, String> {
        let o = pb::Order::decode(payload).map_err(|e| format!("payload is not an Order: {e}"))?;
        SignedOrder::from_wire(o)
    }

    /// What an order's product is.
    fn product(o: &pb::Order) -> Result<Product, String> {
        SignedOrder::product_of(o.product)
    }

    /// What the `product` field's number means.
    fn product_of(product: i32) -> Result<Product, String> {
        Ok(match pb::Product::try_from(product) {
            Ok(pb::Product::Unspecified | pb::Product::Energy) => Product::Energy,
            Ok(pb::Product::FlexUp) => Product::Flex(Direction::Up),
            Ok(pb::Product::FlexDown) => Product::Flex(Direction::Down),
            Err(_) => return Err(format!("product {product} is unknown")),
        })
    }

    /// The decoded order, its numbers parsed by the wire's one grammar.
    pub fn from_wire(o: pb::Order) -> Result<SignedOrder, String> {
        let side = match pb::Side::try_from(o.side) {
            Ok(pb::Side::Buy) => Side::Buy,
            Ok(pb::Side::Sell) => Side::Sell,
            _ => return Err(format!("side {} is not SIDE_BUY or SIDE_SELL", o.side)),
        };
        let product = SignedOrder::product(&o)?;
        let blocks = o
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(BlockSpec {
                    quantity: wire::parse_decimal(&b.quantity, QUANTITY_SCALE)
                        .map_err(|e| format!("blocks[{i}].quantity: {e}"))?,
                    price: if b.price.is_empty() {
                        None
                    } else {
                        Some(
                            wire::parse_decimal(&b.price, PRICE_SCALE)
                                .map_err(|e| format!("blocks[{i}].price: {e}"))?,
                        )
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SignedOrder {
            id: wire::order_id(&o.participant_id, o.nonce),
            participant: o.participant_id,
            nonce: o.nonce,
            interval_start: o.interval_start,
            node: o.node,
            side,
            product,
            blocks,
            device: o.device,
        })
    }

    /// The engine's form of an energy order.
    pub fn to_order_spec(&self) -> OrderSpec {
        OrderSpec {
            id: self.id.clone(),
            participant: Some(self.participant.clone()),
            node: self.node.clone(),
            side: self.side,
            blocks: self.blocks.clone(),
            device: self.device.clone(),
        }
    }

    /// The engine's form of a flexibility offer.
    pub fn to_flex_spec(&self, direction: Direction) -> FlexOfferSpec {
        FlexOfferSpec {
            id: self.id.clone(),
            participant: Some(self.participant.clone()),
            node: self.node.clone(),
            direction,
            blocks: self.blocks.clone(),
            device: self.device.clone(),
        }
    }
}

/// The market a book of signed orders clears in: `network` (the spec in force, whose own
/// orders are ignored) with the orders in canonical order (by id), energy orders as orders and
/// flexibility as offers. The live market and the audit build it with this one function.
pub fn market_spec<'a>(
    network: &MarketSpec,
    orders: impl IntoIterator<Item = &'a SignedOrder>,
) -> MarketSpec {
    let mut sorted: Vec<&SignedOrder> = orders.into_iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut spec = network.clone();
    spec.orders.clear();
    spec.flex_offers.clear();
    for o in sorted {
        match o.product {
            Product::Energy => spec.orders.push(o.to_order_spec()),
            Product::Flex(d) => spec.flex_offers.push(o.to_flex_spec(d)),
        }
    }
    spec
}

/// One recorded interval rebuilt from the ledger, ready to re-clear.
#[derive(Clone, Debug)]
pub struct BoundInterval {
    /// Interval start.
    pub interval: i64,
    /// Who entered the book.
    pub source: BookSource,
    /// The market: the network in force at the gate and the bound book.
    pub market: MarketSpec,
    /// Whether numbers are rounded to the fixed scales on the way in.
    pub rounding: bool,
    /// The recorded result.
    pub result: Vec<u8>,
    /// The recorded settlement body.
    pub settlement: Vec<u8>,
}

/// An order in an interval's open book.
#[derive(Clone, Debug)]
struct Open {
    seq: u64,
    flex: bool,
    blocks: usize,
    /// The whole order, kept only to rebuild the market ([`Binding::rebuilding`]).
    order: Option<SignedOrder>,
}

#[derive(Clone, Debug, Default)]
struct ParticipantState {
    active: bool,
    node: Option<String>,
}

/// A frozen book.
#[derive(Debug)]
struct Gate {
    seq: u64,
    source: BookSource,
    /// The gate body's count and digest.
    claimed: (u64, [u8; 32]),
    /// Signed books: the orders, by id.
    book: HashMap<String, Open>,
    network: Option<Arc<MarketSpec>>,
    /// Why the gate's count or digest disagrees with the signed orders, if it does; reported
    /// once the recorded result shows which orders differ, or at the end.
    mismatch: Option<String>,
    /// The operator's market (operator books), from the `interval_input`.
    operator_market: Option<MarketSpec>,
    rounding: bool,
    input_seq: Option<u64>,
    result: Option<Vec<u8>>,
    /// A settlement or an `interval_not_cleared` event closed the interval.
    done: bool,
    /// A settlement closed it: the interval was cleared, so its delivery can be metered.
    settled: bool,
}

/// The meter readings of one interval so far.
#[derive(Debug, Default)]
struct IntervalReadings {
    /// Their entries' seqs, ascending.
    seqs: Vec<u64>,
    /// (participant, node) of each, to refuse a second.
    keys: HashSet<(String, String)>,
    /// The readings, kept only to recompute the delivery ([`Binding::rebuilding`]).
    readings: Vec<(u64, MeterReading)>,
}

/// The minimal view of a result the binding needs.
#[derive(Deserialize)]
struct ResultBook<'a> {
    #[serde(default, borrow)]
    orders: Vec<ResultOrder<'a>>,
    /// Absent when the market has no flexibility.
    #[serde(default, borrow)]
    flex_offers: Vec<ResultOrder<'a>>,
}

#[derive(Deserialize)]
struct ResultOrder<'a> {
    /// Borrowed from the body unless it holds escapes.
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    accepted: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct DetailsIn {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct EventIn {
    event: String,
}

/// What the binding saw, once the whole ledger passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingReport {
    /// Intervals whose book was bound to their gate and recording.
    pub intervals: u64,
    /// Of those, books the operator entered.
    pub operator_intervals: u64,
    /// Orders in the bound books.
    pub orders: u64,
    /// Intervals gated but not (yet) recorded: a clearing in progress.
    pub in_progress: Vec<i64>,
    /// Meter readings bound to their signer, node and interval.
    pub readings: u64,
    /// Intervals whose delivery settlement was bound to exactly their readings.
    pub deliveries: u64,
}

/// The replay of a ledger that binds each interval's book; an [`EntryCheck`] for
/// [`baton_ledger::Ledger::verify_checking`], or driven directly by [`Binding::check`] to rebuild
/// the books for re-clearing.
#[derive(Default)]
pub struct Binding {
    participants: HashMap<String, ParticipantState>,
    network_operators: HashSet<String>,
    nonces: HashMap<String, u64>,
    network: Option<(u64, Arc<MarketSpec>)>,
    open: BTreeMap<i64, HashMap<String, Open>>,
    gates: BTreeMap<i64, Gate>,
    /// Recorded intervals → their latest `interval_input` seq (kept after the gate is dropped).
    recorded: HashMap<i64, u64>,
    corrected: HashSet<u64>,
    /// Keep every recorded interval's market for re-clearing.
    keep: bool,
    ready: Vec<BoundInterval>,
    report: BindingReport,
    /// Registered meters: (participant, meter id).
    meters: HashSet<(String, String)>,
    /// Last reading nonce per signer: (participant, meter id or none for its own key).
    reading_nonces: HashMap<(String, Option<String>), u64>,
    readings: BTreeMap<i64, IntervalReadings>,
    /// Intervals whose delivery is settled → the `delivery_settlement` seq.
    delivered: HashMap<i64, u64>,
    ready_deliveries: Vec<BoundDelivery>,
}

impl Binding {
    /// A binding that only checks.
    pub fn new() -> Self {
        Binding::default()
    }

    /// A binding that also hands out each recorded interval ([`Binding::take_ready`]).
    pub fn rebuilding() -> Self {
        Binding {
            keep: true,
            ..Binding::default()
        }
    }

    /// Intervals completely recorded since the last call (with [`Binding::rebuilding`]).
    pub fn take_ready(&mut self) -> Vec<BoundInterval> {
        std::mem::take(&mut self.ready)
    }

    /// Delivery settlements completely bound since the last call (with
    /// [`Binding::rebuilding`]).
    pub fn take_ready_deliveries(&mut self) -> Vec<BoundDelivery> {
        std::mem::take(&mut self.ready_deliveries)
    }

    /// The checks that need the whole ledger: a gate whose count or digest is wrong is an error
    /// even if its interval was never recorded.
    pub fn finish(mut self) -> Result<BindingReport, String> {
        for (t, g) in &self.gates {
            if let Some(m) = &g.mismatch {
                return Err(m.clone());
            }
            if !g.done {
                self.report.in_progress.push(*t);
            }
        }
        Ok(self.report)
    }

    fn participant(&mut self, body: &[u8]) -> Result<(), String> {
        let b = ParticipantBody::from_bytes(body).map_err(|e| e.to_string())?;
        let details: DetailsIn = b
            .details
            .clone()
            .and_then(|d| serde_json::from_value(d).ok())
            .unwrap_or_default();
        if details.roles.iter().any(|r| r == NETWORK_OPERATOR_ROLE) {
            self.network_operators.insert(b.participant_id.clone());
        } else {
            self.network_operators.remove(&b.participant_id);
        }
        self.participants.insert(
            b.participant_id,
            ParticipantState {
                active: b.status == ParticipantStatus::Active,
                node: details.node,
            },
        );
        Ok(())
    }

    fn next_nonce(&mut self, participant: &str, nonce: u64) -> Result<(), String> {
        let last = match self.nonces.get_mut(participant) {
            Some(last) => last,
            None => self.nonces.entry(participant.to_string()).or_insert(0),
        };
        if nonce <= *last {
            return Err(format!(
                "nonce {nonce} of participant {participant:?} does not increase (the last was {last})"
            ));
        }
        *last = nonce;
        Ok(())
    }

    fn order(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        let signed = e.signed.ok_or("order entry without a signed body")?;
        // The borrowed decode: no copy of the payload's strings for an order the audit only
        // checks (a rebuilding binding decodes it in full below).
        let o = OrderView::decode(&signed.payload)
            .map_err(|err| format!("payload is not an Order: {err}"))?;
        let id = wire::order_id(o.participant_id, o.nonce);
        if o.participant_id != signed.participant_id {
            return Err(format!(
                "order {id} names participant {:?} but the entry is signed by {:?}",
                o.participant_id, signed.participant_id
            ));
        }
        if e.interval_start != Some(o.interval_start) {
            return Err(format!(
                "order {id} is for interval {} but its entry says {:?}",
                o.interval_start, e.interval_start
            ));
        }
        if let Some(named) = &signed.order_id {
            if *named != id {
                return Err(format!(
                    "entry names order {named:?} but the signed payload is order {id}"
                ));
            }
        }
        self.next_nonce(o.participant_id, o.nonce)?;
        match self.participants.get(o.participant_id) {
            Some(p) if !p.active => {
                return Err(format!(
                    "order {id} from suspended participant {:?}",
                    o.participant_id
                ))
            }
            Some(ParticipantState {
                node: Some(node), ..
            }) if *node != o.node => {
                return Err(format!(
                    "order {id} is at node {:?} but participant {:?} is registered at {node:?}",
                    o.node, o.participant_id
                ))
            }
            Some(_) => {}
            None => return Err(format!("order {id} from unknown participant")),
        }
        let t = o.interval_start;
        if let Some(g) = self.gates.get(&t) {
            return Err(format!(
                "order {id} for interval {t} is logged after that interval's gate (seq {})",
                g.seq
            ));
        }
        if self.recorded.contains_key(&t) {
            return Err(format!(
                "order {id} for interval {t} is logged after that interval was recorded"
            ));
        }
        let flex = matches!(SignedOrder::product_of(o.product)?, Product::Flex(_));
        let blocks = o.blocks;
        let order = if self.keep {
            let full = pb::Order::decode(signed.payload.as_slice())
                .map_err(|err| format!("payload is not an Order: {err}"))?;
            Some(SignedOrder::from_wire(full).map_err(|err| format!("order {id}: {err}"))?)
        } else {
            None
        };
        self.open.entry(t).or_default().insert(
            id,
            Open {
                seq: e.seq,
                flex,
                blocks,
                order,
            },
        );
        Ok(())
    }

    fn cancel(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        let signed = e.signed.ok_or("cancel entry without a signed body")?;
        let c = pb::CancelRequest::decode(signed.payload.as_slice())
            .map_err(|err| format!("payload is not a CancelRequest: {err}"))?;
        if c.participant_id != signed.participant_id {
            return Err(format!(
                "cancel names participant {:?} but the entry is signed by {:?}",
                c.participant_id, signed.participant_id
            ));
        }
        self.next_nonce(&c.participant_id, c.nonce)?;
        let owner = wire::OrderId::parse(&c.order_id)
            .map_err(|err| format!("cancel names order {:?}: {err}", c.order_id))?;
        if owner.participant() != c.participant_id {
            return Err(format!(
                "participant {:?} cancels order {:?}, which is not its own",
                c.participant_id, c.order_id
            ));
        }
        // A cancel entry names its order's interval; the order must be open in that book.
        let Some(t) = e.interval_start else {
            return Err(format!(
                "cancel of order {:?} has no interval on its entry",
                c.order_id
            ));
        };
        if let Some(g) = self.gates.get(&t) {
            return Err(format!(
                "cancel of order {:?} for interval {t} is logged after that interval's gate (seq {})",
                c.order_id, g.seq
            ));
        }
        match self.open.get_mut(&t).and_then(|b| b.remove(&c.order_id)) {
            Some(_) => Ok(()),
            None => Err(format!(
                "cancel of order {:?}, which is not open in interval {t} (unknown, cancelled or for another interval)",
                c.order_id
            )),
        }
    }

    fn gate(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        let g = GateClosedBody::from_bytes(e.body).map_err(|err| err.to_string())?;
        let t = g.interval_start;
        if let Some(prev) = self.gates.get(&t) {
            return Err(format!(
                "interval {t}: gate closed twice (seq {} and {})",
                prev.seq, e.seq
            ));
        }
        if self.recorded.contains_key(&t) {
            return Err(format!("interval {t}: gate closed after it was recorded"));
        }
        let book = self.open.remove(&t).unwrap_or_default();
        let (network, mismatch) = match g.source {
            BookSource::Signed => {
                let Some((nseq, net)) = &self.network else {
                    return Err(format!(
                        "interval {t}: gate at seq {} with no network entry before it",
                        e.seq
                    ));
                };
                if g.network_seq != *nseq {
                    return Err(format!(
                        "interval {t}: gate at seq {} names network seq {} but the network in force is seq {nseq}",
                        e.seq, g.network_seq
                    ));
                }
                let mut seqs: Vec<u64> = book.values().map(|o| o.seq).collect();
                seqs.sort_unstable();
                let digest = signed_book_digest(seqs.iter().copied());
                let mismatch = (g.orders != seqs.len() as u64 || g.book_digest != digest).then(|| {
                    format!(
                        "interval {t}: the gate at seq {} binds {} orders (digest {}) but the signed, uncancelled orders for {t} before it are {} (digest {})",
                        e.seq,
                        g.orders,
                        hex::encode(g.book_digest),
                        seqs.len(),
                        hex::encode(digest)
                    )
                });
                (Some(net.clone()), mismatch)
            }
            BookSource::Operator => {
                if !book.is_empty() {
                    return Err(format!(
                        "interval {t}: operator-entered gate at seq {} while {} signed orders for it are open",
                        e.seq,
                        book.len()
                    ));
                }
                (None, None)
            }
        };
        self.gates.insert(
            t,
            Gate {
                seq: e.seq,
                source: g.source,
                claimed: (g.orders, g.book_digest),
                book,
                network,
                mismatch,
                operator_market: None,
                rounding: false,
                input_seq: None,
                result: None,
                done: false,
                settled: false,
            },
        );
        Ok(())
    }

    fn input(&mut self, e: &EntryView<'_>, t: i64) -> Result<(), String> {
        let input: IntervalInput =
            serde_json::from_slice(e.body).map_err(|err| format!("interval {t}: input: {err}"))?;
        if input.format != INTERVAL_INPUT_FORMAT {
            return Err(format!(
                "interval {t}: input format {:?} (expected {INTERVAL_INPUT_FORMAT})",
                input.format
            ));
        }
        if let Some(prev) = self.recorded.get(&t) {
            if !self.corrected.contains(prev) {
                return Err(format!(
                    "interval {t} is recorded twice (seq {prev} and {}) without a correction of the first",
                    e.seq
                ));
            }
        }
        let Some(gate) = self.gates.get_mut(&t) else {
            return Err(format!(
                "interval {t} is recorded without a gate_closed entry before it"
            ));
        };
        match (gate.source, input.market) {
            (BookSource::Signed, None) => {}
            (BookSource::Signed, Some(_)) => {
                return Err(format!(
                    "interval {t}: the input carries a market, but its gate (seq {}) binds signed orders",
                    gate.seq
                ))
            }
            (BookSource::Operator, None) => {
                return Err(format!(
                    "interval {t}: operator-entered gate (seq {}) but the input carries no market",
                    gate.seq
                ))
            }
            (BookSource::Operator, Some(m)) => {
                let n = (m.orders.len() + m.flex_offers.len()) as u64;
                let digest = operator_book_digest(&m);
                if gate.claimed != (n, digest) {
                    return Err(format!(
                        "interval {t}: the operator's book in the input ({n} orders, digest {}) is not the one its gate at seq {} binds ({} orders, digest {})",
                        hex::encode(digest),
                        gate.seq,
                        gate.claimed.0,
                        hex::encode(gate.claimed.1)
                    ));
                }
                gate.operator_market = Some(m);
            }
        }
        gate.rounding = input.rounding;
        gate.input_seq = Some(e.seq);
        gate.result = None;
        gate.done = false;
        gate.settled = false;
        self.recorded.insert(t, e.seq);
        Ok(())
    }

    fn result(&mut self, e: &EntryView<'_>, t: i64) -> Result<(), String> {
        let Some(gate) = self.gates.get_mut(&t).filter(|g| g.input_seq.is_some()) else {
            return Err(format!(
                "interval {t}: result without an interval_input before it"
            ));
        };
        if gate.result.is_some() {
            return Err(format!("interval {t}: a second result without a new input"));
        }
        let r: ResultBook<'_> =
            serde_json::from_slice(e.body).map_err(|err| format!("interval {t}: result: {err}"))?;
        // What the book must be: (id → (is flexibility, blocks)).
        let expected: HashMap<&str, (bool, usize, Option<u64>)> = match &gate.operator_market {
            Some(m) => m
                .orders
                .iter()
                .map(|o| (o.id.as_str(), (false, o.blocks.len(), None)))
                .chain(
                    m.flex_offers
                        .iter()
                        .map(|o| (o.id.as_str(), (true, o.blocks.len(), None))),
                )
                .collect(),
            None => gate
                .book
                .iter()
                .map(|(id, o)| (id.as_str(), (o.flex, o.blocks, Some(o.seq))))
                .collect(),
        };
        let mut seen: HashSet<&str> = HashSet::with_capacity(expected.len());
        for (flex, list) in [(false, &r.orders), (true, &r.flex_offers)] {
            for o in list {
                let Some(&(is_flex, blocks, _)) = expected.get(o.id.as_ref()) else {
                    return Err(format!(
                        "interval {t}: order {:?} in the recorded book has no signed order entry for the interval",
                        o.id
                    ));
                };
                if !seen.insert(o.id.as_ref()) {
                    return Err(format!(
                        "interval {t}: order {:?} is in the book twice",
                        o.id
                    ));
                }
                if is_flex != flex {
                    return Err(format!(
                        "interval {t}: order {:?} is recorded as {} but was signed as {}",
                        o.id,
                        if flex { "flexibility" } else { "energy" },
                        if is_flex { "flexibility" } else { "energy" }
                    ));
                }
                if o.accepted.len() != blocks {
                    return Err(format!(
                        "interval {t}: order {:?} has {} accepted quantities but was signed with {blocks} blocks",
                        o.id,
                        o.accepted.len()
                    ));
                }
            }
        }
        // The earliest missing order (by seq, then id): the same message on every run.
        if let Some((id, (_, _, seq))) = expected
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .min_by_key(|(id, (_, _, seq))| (*seq, **id))
        {
            let at = seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
            return Err(format!(
                "interval {t}: signed order {id:?}{at} accepted before the gate is missing from the recorded book"
            ));
        }
        if let Some(m) = gate.mismatch.take() {
            return Err(m);
        }
        gate.result = Some(if self.keep {
            e.body.to_vec()
        } else {
            Vec::new()
        });
        Ok(())
    }

    /// Every account a settlement of `gate`'s interval may pay.
    fn account_allowed(&self, gate: &Gate, account: &str) -> bool {
        if account == NETWORK_OPERATOR_ACCOUNT || account == ROUNDING_ACCOUNT {
            return true;
        }
        let market = gate.operator_market.as_ref().or(gate.network.as_deref());
        if let Some(grid) = account.strip_prefix(GRID_ACCOUNT_PREFIX) {
            return market.is_some_and(|m| m.grid_connections.iter().any(|g| g.id == grid));
        }
        match &gate.operator_market {
            Some(m) => {
                m.orders
                    .iter()
                    .any(|o| o.participant.as_deref().unwrap_or(&o.id) == account)
                    || m.flex_offers
                        .iter()
                        .any(|o| o.participant.as_deref().unwrap_or(&o.id) == account)
                    || m.flex_requirements
                        .iter()
                        .any(|r| r.buyer.as_deref() == Some(account))
            }
            None => {
                self.participants.contains_key(account)
                    || (self.network_operators.contains(account)
                        && market.is_some_and(|m| {
                            m.flex_requirements
                                .iter()
                                .any(|r| r.buyer.as_deref() == Some(account))
                        }))
            }
        }
    }

    fn settlement(&mut self, e: &EntryView<'_>, t: i64) -> Result<(), String> {
        let body = SettlementBody::from_bytes(e.body).map_err(|err| err.to_string())?;
        let Some(gate) = self.gates.get(&t).filter(|g| g.result.is_some() && !g.done) else {
            return Err(format!(
                "interval {t}: settlement without a recorded result before it"
            ));
        };
        if let Some(p) = body
            .postings
            .iter()
            .find(|p| !self.account_allowed(gate, &p.account))
        {
            return Err(format!(
                "interval {t}: settlement pays account {:?}, which is neither an admitted participant nor a system account",
                p.account
            ));
        }
        let keep = self.keep;
        let gate = self.gates.get_mut(&t).expect("checked above");
        gate.done = true;
        gate.settled = true;
        self.report.intervals += 1;
        self.report.orders += match &gate.operator_market {
            Some(m) => (m.orders.len() + m.flex_offers.len()) as u64,
            None => gate.book.len() as u64,
        };
        if gate.source == BookSource::Operator {
            self.report.operator_intervals += 1;
        }
        if keep {
            let market = match &gate.operator_market {
                Some(m) => m.clone(),
                None => market_spec(
                    gate.network
                        .as_deref()
                        .expect("signed gates have a network"),
                    gate.book.values().filter_map(|o| o.order.as_ref()),
                ),
            };
            self.ready.push(BoundInterval {
                interval: t,
                source: gate.source,
                market,
                rounding: gate.rounding,
                result: gate.result.clone().unwrap_or_default(),
                settlement: e.body.to_vec(),
            });
        }
        Ok(())
    }

    fn meter(&mut self, body: &[u8]) -> Result<(), String> {
        let m = MeterBody::from_bytes(body).map_err(|e| e.to_string())?;
        if !self.participants.contains_key(&m.participant_id) {
            return Err(format!(
                "meter {:?} registered for unknown participant {:?}",
                m.meter_id, m.participant_id
            ));
        }
        if !self
            .meters
            .insert((m.participant_id.clone(), m.meter_id.clone()))
        {
            return Err(format!(
                "meter {:?} of participant {:?} is registered twice",
                m.meter_id, m.participant_id
            ));
        }
        Ok(())
    }

    fn reading(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        let body = e
            .reading
            .ok_or("meter_reading entry without a reading body")?;
        let Some(t) = e.interval_start else {
            return Err("meter_reading entry without an interval".into());
        };
        let Some(gate) = self.gates.get(&t).filter(|g| g.done && g.settled) else {
            return Err(format!(
                "meter reading for interval {t}, which is not recorded (cleared) before it"
            ));
        };
        let interval_s = i64::from(
            gate.operator_market
                .as_ref()
                .or(gate.network.as_deref())
                .map(|m| m.interval_minutes)
                .unwrap_or(0),
        ) * 60;
        let r = decode_reading(&body.payload, interval_s)?;
        let who = r.participant.as_str();
        if who != body.participant_id {
            return Err(format!(
                "reading names participant {who:?} but the entry is signed for {:?}",
                body.participant_id
            ));
        }
        let meter = r.meter_id.as_ref().map(|m| m.as_str().to_string());
        if meter != body.meter_id {
            return Err(format!(
                "reading names meter {meter:?} but the entry is signed by {:?}",
                body.meter_id
            ));
        }
        if r.interval_start != t {
            return Err(format!(
                "reading is for interval {} but its entry says {t}",
                r.interval_start
            ));
        }
        if let Some(d) = self.delivered.get(&t) {
            return Err(format!(
                "meter reading of {who:?} for interval {t} is logged after that interval's delivery settlement (seq {d})"
            ));
        }
        match self.participants.get(who) {
            None => return Err(format!("meter reading of unknown participant {who:?}")),
            Some(ParticipantState {
                node: Some(node), ..
            }) if *node != r.node => {
                return Err(format!(
                    "meter reading of {who:?} is at node {:?} but it is registered at {node:?}",
                    r.node
                ))
            }
            Some(_) => {}
        }
        let signer = (who.to_string(), meter.clone());
        let last = self.reading_nonces.entry(signer).or_insert(0);
        if r.nonce <= *last {
            let by = match &meter {
                Some(m) => format!("meter {m:?} of {who:?}"),
                None => format!("participant {who:?}"),
            };
            return Err(format!(
                "reading nonce {} of {by} does not increase (the last was {last})",
                r.nonce
            ));
        }
        *last = r.nonce;
        let set = self.readings.entry(t).or_default();
        if !set.keys.insert((who.to_string(), r.node.clone())) {
            return Err(format!(
                "a second meter reading of {who:?} at node {:?} for interval {t}",
                r.node
            ));
        }
        set.seqs.push(e.seq);
        if self.keep {
            set.readings.push((e.seq, engine_reading(&r)));
        }
        self.report.readings += 1;
        Ok(())
    }

    fn delivery(&mut self, e: &EntryView<'_>, t: i64) -> Result<(), String> {
        let body = DeliverySettlementBody::from_bytes(e.body).map_err(|err| err.to_string())?;
        let Some(gate) = self.gates.get(&t).filter(|g| g.done && g.settled) else {
            return Err(format!(
                "interval {t}: delivery settlement of an interval not recorded (cleared) before it"
            ));
        };
        if let Some(prev) = self.delivered.get(&t) {
            return Err(format!(
                "interval {t}: delivery settled twice (seq {prev} and {})",
                e.seq
            ));
        }
        let set = self.readings.remove(&t).unwrap_or_default();
        let digest = readings_digest(set.seqs.iter().copied());
        if body.readings != set.seqs.len() as u64 || body.readings_digest != digest {
            return Err(format!(
                "interval {t}: the delivery settlement at seq {} binds {} readings (digest {}) but the meter readings for {t} before it are {} (digest {})",
                e.seq,
                body.readings,
                hex::encode(body.readings_digest),
                set.seqs.len(),
                hex::encode(digest)
            ));
        }
        if let Some(p) = body
            .postings
            .iter()
            .find(|p| p.account != IMBALANCE_ACCOUNT && !self.account_allowed(gate, &p.account))
        {
            return Err(format!(
                "interval {t}: delivery settlement pays account {:?}, which is neither an admitted participant nor a system account",
                p.account
            ));
        }
        self.delivered.insert(t, e.seq);
        self.report.deliveries += 1;
        if self.keep {
            self.ready_deliveries.push(BoundDelivery {
                interval: t,
                readings: set.readings,
                body: e.body.to_vec(),
            });
        }
        Ok(())
    }

    fn event(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        let Some(t) = e.interval_start else {
            return Ok(());
        };
        let Ok(ev) = serde_json::from_slice::<EventIn>(e.body) else {
            return Ok(());
        };
        if ev.event != "interval_not_cleared" {
            return Ok(());
        }
        let Some(gate) = self.gates.get_mut(&t) else {
            return Err(format!(
                "interval {t}: marked not cleared without a gate_closed entry before it"
            ));
        };
        if let Some(m) = gate.mismatch.take() {
            return Err(m);
        }
        gate.done = true;
        self.recorded.insert(t, e.seq);
        Ok(())
    }
}

impl EntryCheck for Binding {
    fn check(&mut self, e: EntryView<'_>) -> Result<(), String> {
        match (e.kind, e.interval_start) {
            (EntryKind::Participant, _) => self.participant(e.body),
            (EntryKind::Network, _) => {
                let spec: MarketSpec = serde_json::from_slice(e.body)
                    .map_err(|err| format!("network entry unreadable: {err}"))?;
                self.network = Some((e.seq, Arc::new(spec)));
                Ok(())
            }
            (EntryKind::Order, _) => self.order(&e),
            (EntryKind::Cancel, _) => self.cancel(&e),
            (EntryKind::GateClosed, _) => self.gate(&e),
            (EntryKind::IntervalInput, Some(t)) => self.input(&e, t),
            (EntryKind::IntervalResult, Some(t)) => self.result(&e, t),
            (EntryKind::Settlement, Some(t)) => self.settlement(&e, t),
            (EntryKind::IntervalInput | EntryKind::IntervalResult, None) => {
                Err(format!("{} entry without an interval", e.kind))
            }
            (EntryKind::MarketEvent, _) => self.event(&e),
            (EntryKind::Meter, _) => self.meter(e.body),
            (EntryKind::MeterReading, _) => self.reading(&e),
            (EntryKind::DeliverySettlement, Some(t)) => self.delivery(&e, t),
            (EntryKind::DeliverySettlement, None) => {
                Err("delivery_settlement entry without an interval".into())
            }
            (EntryKind::Correction, _) => {
                let c = CorrectionBody::from_bytes(e.body).map_err(|err| err.to_string())?;
                self.corrected.extend(c.corrects);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
