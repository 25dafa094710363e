//! The market's in-memory state — participants, nonces, the open books, the loaded network —
//! and the intake checks that read it. Everything here can be rebuilt from the ledger
//! (`recover.rs`); the ledger, not this state, is the record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use baton_engine::model::{BlockSpec, Direction, FlexOfferSpec, MarketSpec, OrderSpec};
use baton_engine::units::{PRICE_SCALE, QUANTITY_ABS_MAX, QUANTITY_SCALE};
use baton_engine::validate::{self, RECORDS_PER_INTERVAL_MAX};
use baton_engine::{MarketError, Side};
use baton_ledger::SignedMessageBody;
use baton_proto::receipt;
use baton_proto::v1 as pb;
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use rust_decimal::Decimal;

use super::error::{invalid, ServiceError};
use super::{Limits, ORDER_BYTES_MAX, REQUEST_BYTES_MAX};
use baton_proto::wire::{self, ParticipantId};

/// A registered participant.
#[derive(Clone, Debug)]
pub(crate) struct Participant {
    pub(crate) key: VerifyingKey,
    pub(crate) node: String,
    pub(crate) roles: Vec<String>,
    pub(crate) capacity_kw: Option<Decimal>,
    pub(crate) active: bool,
}

impl Participant {
    /// Whether it holds `role`. A participant recorded without roles (before roles were
    /// enforced) is a prosumer, as registration without roles makes one today.
    pub(crate) fn has_role(&self, role: pb::ParticipantRole) -> bool {
        if self.roles.is_empty() {
            return role == pb::ParticipantRole::Prosumer;
        }
        self.roles.iter().any(|r| r == role.name())
    }

    /// Refuses a participant that lacks `role`.
    pub(crate) fn require(&self, id: &str, role: pb::ParticipantRole) -> Result<(), ServiceError> {
        if self.has_role(role) {
            return Ok(());
        }
        Err(ServiceError::MissingRole {
            participant: id.to_string(),
            role: role.name(),
            holds: if self.roles.is_empty() {
                "none".to_string()
            } else {
                self.roles.join(",")
            },
        })
    }
}

/// The `details` a `participant` ledger entry carries, so a restart knows node and limits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ParticipantDetails {
    pub(crate) node: String,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    #[serde(default)]
    pub(crate) capacity_kw: Option<Decimal>,
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OrderStatus {
    Open,
    Cancelled,
    Cleared,
}

/// What an order trades.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Product {
    /// Energy at the node, bought or sold.
    Energy,
    /// Flexibility offered (always a sell) to the requirements covering the node.
    Flex(Direction),
}

impl Product {
    /// The wire value; `PRODUCT_UNSPECIFIED` means energy.
    pub(crate) fn from_wire(v: i32) -> Option<Product> {
        match pb::Product::try_from(v).ok()? {
            pb::Product::Unspecified | pb::Product::Energy => Some(Product::Energy),
            pb::Product::FlexUp => Some(Product::Flex(Direction::Up)),
            pb::Product::FlexDown => Some(Product::Flex(Direction::Down)),
        }
    }

    pub(crate) fn to_wire(self) -> pb::Product {
        match self {
            Product::Energy => pb::Product::Energy,
            Product::Flex(Direction::Up) => pb::Product::FlexUp,
            Product::Flex(Direction::Down) => pb::Product::FlexDown,
        }
    }
}

/// The engine's form of one interval's book.
#[derive(Debug, Default)]
pub(crate) struct BookSpecs {
    pub(crate) orders: Vec<OrderSpec>,
    pub(crate) flex_offers: Vec<FlexOfferSpec>,
}

impl BookSpecs {
    /// The book in canonical order (by order id), as the audit rebuilds it
    /// (`baton_audit::book::market_spec`).
    pub(crate) fn from_records(records: &[OrderRecord]) -> BookSpecs {
        let mut b = BookSpecs::default();
        let mut sorted: Vec<&OrderRecord> = records.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        for r in sorted {
            match r.product {
                Product::Energy => b.orders.push(r.to_spec()),
                Product::Flex(direction) => b.flex_offers.push(r.to_flex_spec(direction)),
            }
        }
        b
    }
}

/// An accepted order.
#[derive(Clone, Debug)]
pub(crate) struct OrderRecord {
    pub(crate) id: String,
    pub(crate) participant: String,
    pub(crate) interval_start: i64,
    pub(crate) node: String,
    pub(crate) side: Side,
    pub(crate) product: Product,
    pub(crate) blocks: Vec<BlockSpec>,
    pub(crate) device: Option<String>,
    pub(crate) status: OrderStatus,
    pub(crate) ledger_seq: u64,
    pub(crate) accepted: Vec<Decimal>,
    pub(crate) accepted_total: Option<Decimal>,
}

impl OrderRecord {
    pub(crate) fn to_spec(&self) -> OrderSpec {
        OrderSpec {
            id: self.id.clone(),
            participant: Some(self.participant.clone()),
            node: self.node.clone(),
            side: self.side,
            blocks: self.blocks.clone(),
            device: self.device.clone(),
        }
    }

    pub(crate) fn to_flex_spec(&self, direction: Direction) -> FlexOfferSpec {
        FlexOfferSpec {
            id: self.id.clone(),
            participant: Some(self.participant.clone()),
            node: self.node.clone(),
            direction,
            blocks: self.blocks.clone(),
            device: self.device.clone(),
        }
    }

    /// The engine's own checks of the record as it will enter `Market::new` (through
    /// [`BookSpecs::from_records`]), so intake accepts only what clearing accepts.
    fn check(&self, network: &validate::Network) -> Result<(), MarketError> {
        match self.product {
            Product::Energy => network.order(&self.to_spec()).map(drop),
            Product::Flex(direction) => network.flex_offer(&self.to_flex_spec(direction)).map(drop),
        }
    }

    pub(crate) fn to_proto(&self) -> pb::OrderInfo {
        pb::OrderInfo {
            order_id: self.id.clone(),
            participant_id: self.participant.clone(),
            interval_start: self.interval_start,
            node: self.node.clone(),
            side: side_to_proto(self.side) as i32,
            blocks: self
                .blocks
                .iter()
                .map(|b| pb::Block {
                    quantity: b.quantity.to_string(),
                    price: b.price.map(|p| p.to_string()).unwrap_or_default(),
                })
                .collect(),
            device: self.device.clone(),
            status: match self.status {
                OrderStatus::Open => pb::OrderStatus::Open,
                OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
                OrderStatus::Cleared => pb::OrderStatus::Cleared,
            } as i32,
            ledger_seq: self.ledger_seq,
            accepted: self.accepted.iter().map(|d| d.to_string()).collect(),
            accepted_total: self
                .accepted_total
                .map(|d| d.to_string())
                .unwrap_or_default(),
            product: self.product.to_wire() as i32,
        }
    }
}

pub(crate) fn side_to_proto(s: Side) -> pb::Side {
    match s {
        Side::Buy => pb::Side::Buy,
        Side::Sell => pb::Side::Sell,
    }
}

/// An order that passed every intake check, with the exact signed message to record.
#[derive(Clone, Debug)]
pub(crate) struct ValidOrder {
    pub(crate) record: OrderRecord,
    pub(crate) nonce: u64,
    pub(crate) signed: SignedMessageBody,
    /// SHA-256 of the signed order bytes, for its receipt (hashed on the verification
    /// threads, not in the group commit).
    pub(crate) order_hash: receipt::Hash,
}

/// A cancellation that passed every check.
#[derive(Clone, Debug)]
pub(crate) struct ValidCancel {
    pub(crate) order_id: String,
    pub(crate) participant: String,
    pub(crate) interval_start: i64,
    pub(crate) nonce: u64,
    pub(crate) signed: SignedMessageBody,
}

/// The interval timing rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) interval_s: i64,
    pub(crate) gate_lead_s: i64,
    pub(crate) intervals_ahead: i64,
}

impl Timing {
    /// The gate of interval `start` closes at this unix second.
    pub(crate) fn gate_s(&self, start: i64) -> i64 {
        start - self.gate_lead_s
    }

    /// The earliest aligned interval whose gate is still open at `now_ms`.
    pub(crate) fn earliest_open(&self, now_ms: i64) -> i64 {
        // Gate open ⇔ (start − lead)·1000 > now_ms ⇔ start > now_s + lead for integer seconds.
        let t = now_ms.div_euclid(1000) + self.gate_lead_s;
        (t.div_euclid(self.interval_s) + 1) * self.interval_s
    }

    /// The first and last interval that accept orders at `now_ms` when every interval up to
    /// `closed_through` is closed: `intervals_ahead` aligned intervals. `MarketInfo` announces
    /// exactly this window and intake accepts exactly it.
    pub(crate) fn open_window(&self, now_ms: i64, closed_through: i64) -> (i64, i64) {
        let after_closed = (closed_through.div_euclid(self.interval_s) + 1) * self.interval_s;
        let first = self.earliest_open(now_ms).max(after_closed);
        (first, first + (self.intervals_ahead - 1) * self.interval_s)
    }
}

/// Everything the intake checks and the scheduler share.
#[derive(Debug, Default)]
pub(crate) struct MarketState {
    /// The loaded network (its `orders` are always empty; the books fill them at clearing).
    /// Set with [`MarketState::set_network`].
    pub(crate) network: Option<Arc<MarketSpec>>,
    /// The engine's validation of `network`: what intake checks each order with.
    checks: Option<Arc<validate::Network>>,
    pub(crate) paused: bool,
    pub(crate) participants: HashMap<String, Participant>,
    /// Last nonce accepted (or reserved by an order in flight to the ledger) per participant.
    pub(crate) nonces: HashMap<String, u64>,
    pub(crate) orders: HashMap<String, OrderRecord>,
    /// Open order ids per interval.
    pub(crate) books: BTreeMap<i64, BTreeSet<String>>,
    /// Open orders per participant, including those in flight to the ledger.
    pub(crate) open_per_participant: HashMap<String, usize>,
    /// Orders per interval, including those in flight.
    pub(crate) per_interval: HashMap<i64, usize>,
    /// Every interval starting at or before this is closed (its gate has closed or it was
    /// cleared); nothing for it is accepted any more.
    pub(crate) closed_through: i64,
    /// Intervals recorded in the ledger (cleared or skipped).
    pub(crate) cleared: BTreeSet<i64>,
    /// Intervals whose `gate_closed` entry is in the ledger but which are not recorded yet
    /// (a clearing in progress, or interrupted by a restart), with the gate's seq.
    pub(crate) gated: BTreeMap<i64, u64>,
    /// Meters, reading nonces and the readings of intervals awaiting delivery settlement.
    pub(crate) metering: super::metering::Metering,
}

/// Parses a wire decimal by the one grammar (`baton_proto::wire::parse_decimal`), naming
/// `field` in the refusal.
pub(crate) fn parse_decimal(field: &str, text: &str, scale: u32) -> Result<Decimal, ServiceError> {
    wire::parse_decimal(text, scale).map_err(|e| invalid(field, e.to_string()))
}

/// Checks a participant id (`baton_proto::wire::ParticipantId`): the characters that are safe
/// in ledger accounts and order ids.
pub(crate) fn check_participant_id(id: &str) -> Result<ParticipantId, ServiceError> {
    ParticipantId::parse(id).map_err(|e| invalid("participant_id", e.to_string()))
}

/// The id of a participant's order: unique because nonces are.
pub(crate) fn order_id(participant: &str, nonce: u64) -> String {
    wire::order_id(participant, nonce)
}

fn signature(bytes: &[u8], who: &str) -> Result<[u8; 64], ServiceError> {
    bytes
        .try_into()
        .map_err(|_| ServiceError::BadSignature(who.to_string()))
}

/// A signed order decoded and checked against a snapshot of its participant's key.
#[derive(Debug)]
pub(crate) struct Preverified {
    pub(crate) order: pb::Order,
    pub(crate) key: VerifyingKey,
    pub(crate) signature: [u8; 64],
    pub(crate) order_hash: receipt::Hash,
}

/// Checks an envelope's size and decodes its order.
pub(crate) fn decode_order(signed: &pb::SignedOrder) -> Result<pb::Order, ServiceError> {
    if signed.order.len() > ORDER_BYTES_MAX {
        return Err(invalid(
            "order",
            format!("is larger than {ORDER_BYTES_MAX} bytes"),
        ));
    }
    pb::Order::decode(signed.order.as_slice())
        .map_err(|e| invalid("order", format!("is not a serialized baton.v1.Order: {e}")))
}

/// Decodes a signed order and verifies its signature (`verify_strict`) with `key_of` — the
/// expensive part of intake, done without holding the state lock.
pub(crate) fn preverify_order(
    signed: &pb::SignedOrder,
    key_of: impl FnOnce(&str) -> Result<VerifyingKey, ServiceError>,
) -> Result<Preverified, ServiceError> {
    let order = decode_order(signed)?;
    let key = key_of(&order.participant_id)?;
    let sig = signature(&signed.signature, &order.participant_id)?;
    key.verify_strict(&signed.order, &Signature::from_bytes(&sig))
        .map_err(|_| ServiceError::BadSignature(order.participant_id.clone()))?;
    Ok(Preverified {
        order,
        key,
        signature: sig,
        order_hash: receipt::order_hash(&signed.order),
    })
}

impl MarketState {
    /// Installs a network with the engine's checks of it; refused as `Market::new` refuses it.
    pub(crate) fn set_network(&mut self, spec: MarketSpec) -> Result<(), MarketError> {
        self.checks = Some(Arc::new(validate::Network::new(&spec)?));
        self.network = Some(Arc::new(spec));
        Ok(())
    }

    /// Verifies a participant's signature over `payload`, returning the participant.
    fn authenticate(
        &self,
        participant_id: &str,
        payload: &[u8],
        sig: &[u8],
    ) -> Result<(&Participant, [u8; 64]), ServiceError> {
        let p = self
            .participants
            .get(participant_id)
            .ok_or_else(|| ServiceError::UnknownParticipant(participant_id.to_string()))?;
        let sig = signature(sig, participant_id)?;
        p.key
            .verify_strict(payload, &Signature::from_bytes(&sig))
            .map_err(|_| ServiceError::BadSignature(participant_id.to_string()))?;
        Ok((p, sig))
    }

    fn check_nonce(&self, participant: &str, nonce: u64) -> Result<(), ServiceError> {
        let last = self.nonces.get(participant).copied().unwrap_or(0);
        if nonce <= last {
            return Err(ServiceError::ReplayedNonce { nonce, last });
        }
        Ok(())
    }

    /// Whether interval `start` accepts orders and cancels at `now_ms`.
    pub(crate) fn check_open(
        &self,
        timing: &Timing,
        start: i64,
        now_ms: i64,
    ) -> Result<(), ServiceError> {
        if start.rem_euclid(timing.interval_s) != 0 {
            return Err(invalid(
                "interval_start",
                format!(
                    "{start} is not aligned to the {} s interval",
                    timing.interval_s
                ),
            ));
        }
        if timing.gate_s(start) * 1000 <= now_ms {
            return Err(ServiceError::GateClosed(format!(
                "the gate of interval {start} closed at {}",
                timing.gate_s(start)
            )));
        }
        if start <= self.closed_through {
            // Closed before its gate time: an operator's ClearNow cleared it early, or the
            // ledger records it (a restart of an accelerated clock that reads earlier).
            return Err(ServiceError::GateClosed(format!(
                "interval {start} is already closed (cleared ahead of its gate time {})",
                timing.gate_s(start)
            )));
        }
        let (_, last) = timing.open_window(now_ms, self.closed_through);
        if start > last {
            return Err(ServiceError::GateClosed(format!(
                "interval {start} is not open yet (orders are accepted up to {last})"
            )));
        }
        Ok(())
    }

    /// The registered key of a participant (for verifying outside the state lock).
    pub(crate) fn participant_key(
        &self,
        participant_id: &str,
    ) -> Result<VerifyingKey, ServiceError> {
        self.participants
            .get(participant_id)
            .map(|p| p.key)
            .ok_or_else(|| ServiceError::UnknownParticipant(participant_id.to_string()))
    }

    /// Every intake check of a signed order, in the order that makes the status honest:
    /// authenticity first, then the market's state, then the fields. `pre`, if given, is the
    /// same envelope already decoded and verified (`preverify_order`) against a key snapshot;
    /// it is trusted only if that key is still the participant's.
    pub(crate) fn validate_order(
        &self,
        signed: &pb::SignedOrder,
        pre: Option<Preverified>,
        timing: &Timing,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<ValidOrder, ServiceError> {
        let (order, participant, sig, order_hash) = match pre {
            Some(pre)
                if self
                    .participants
                    .get(&pre.order.participant_id)
                    .is_some_and(|p| p.key == pre.key) =>
            {
                let p = &self.participants[&pre.order.participant_id];
                (pre.order, p, pre.signature, pre.order_hash)
            }
            _ => {
                let order = decode_order(signed)?;
                let (p, sig) =
                    self.authenticate(&order.participant_id, &signed.order, &signed.signature)?;
                (order, p, sig, receipt::order_hash(&signed.order))
            }
        };
        let pid = order.participant_id.as_str();
        if !participant.active {
            return Err(ServiceError::Suspended(pid.to_string()));
        }
        participant.require(pid, pb::ParticipantRole::Prosumer)?;
        let checks = self.checks.as_ref().ok_or(ServiceError::NoNetwork)?;
        if self.paused {
            return Err(ServiceError::Paused);
        }
        self.check_nonce(pid, order.nonce)?;
        if order.node != participant.node {
            return Err(ServiceError::WrongNode {
                participant: pid.to_string(),
                node: order.node.clone(),
            });
        }
        self.check_open(timing, order.interval_start, now_ms)?;
        let side = match pb::Side::try_from(order.side) {
            Ok(pb::Side::Buy) => Side::Buy,
            Ok(pb::Side::Sell) => Side::Sell,
            _ => return Err(invalid("side", "must be SIDE_BUY or SIDE_SELL")),
        };
        let product = Product::from_wire(order.product).ok_or_else(|| {
            invalid(
                "product",
                format!("{} is not a baton.v1.Product", order.product),
            )
        })?;
        if matches!(product, Product::Flex(_)) && side != Side::Sell {
            return Err(invalid(
                "side",
                "flexibility is offered with SIDE_SELL (the network operator posts requirements)",
            ));
        }
        // The wire's spelling and the participant's capacity here; everything else (block
        // count, signs, ranges, floor and cap, node, device) is the engine's check below.
        let mut blocks = Vec::with_capacity(order.blocks.len());
        for (i, b) in order.blocks.iter().enumerate() {
            let qf = format!("blocks[{i}].quantity");
            let q = parse_decimal(&qf, &b.quantity, QUANTITY_SCALE)?;
            let cap = participant.capacity_kw.unwrap_or(QUANTITY_ABS_MAX);
            if q > cap {
                return Err(invalid(
                    qf,
                    format!("{q} exceeds the participant's capacity of {cap} kW"),
                ));
            }
            let price = if b.price.is_empty() {
                None
            } else {
                let pf = format!("blocks[{i}].price");
                Some(parse_decimal(&pf, &b.price, PRICE_SCALE)?)
            };
            blocks.push(BlockSpec { quantity: q, price });
        }
        let id = order_id(pid, order.nonce);
        let record = OrderRecord {
            id: id.clone(),
            participant: pid.to_string(),
            interval_start: order.interval_start,
            node: order.node.clone(),
            side,
            product,
            blocks,
            device: order.device.clone(),
            status: OrderStatus::Open,
            ledger_seq: 0,
            accepted: Vec::new(),
            accepted_total: None,
        };
        record.check(checks)?;
        let open = self.open_per_participant.get(pid).copied().unwrap_or(0);
        if open >= limits.open_orders_per_participant_max {
            return Err(ServiceError::Limit {
                what: "open orders per participant",
                limit: limits.open_orders_per_participant_max,
            });
        }
        let in_interval = self
            .per_interval
            .get(&order.interval_start)
            .copied()
            .unwrap_or(0);
        // The engine bounds each kind of record; counting both together keeps within both.
        let interval_max = limits.orders_per_interval_max.min(RECORDS_PER_INTERVAL_MAX);
        if in_interval >= interval_max {
            return Err(ServiceError::Limit {
                what: "orders per interval",
                limit: interval_max,
            });
        }
        Ok(ValidOrder {
            record,
            order_hash,
            nonce: order.nonce,
            signed: SignedMessageBody {
                order_id: Some(id),
                participant_id: pid.to_string(),
                payload: signed.order.clone(),
                signature: sig,
            },
        })
    }

    /// Holds the nonce and the limits' counts for an order on its way to the ledger, so a
    /// concurrent duplicate is refused before either is durable.
    pub(crate) fn reserve_order(&mut self, v: &ValidOrder) {
        self.nonces.insert(v.record.participant.clone(), v.nonce);
        *self
            .open_per_participant
            .entry(v.record.participant.clone())
            .or_default() += 1;
        *self
            .per_interval
            .entry(v.record.interval_start)
            .or_default() += 1;
    }

    /// Gives back the counts of an order the ledger did not take (its nonce stays used: a
    /// client retries with a new nonce).
    pub(crate) fn release_order(&mut self, v: &ValidOrder) {
        if let Some(n) = self.open_per_participant.get_mut(&v.record.participant) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self.per_interval.get_mut(&v.record.interval_start) {
            *n = n.saturating_sub(1);
        }
    }

    /// Puts a durable order into its book.
    pub(crate) fn insert_order(&mut self, mut record: OrderRecord, seq: u64) {
        record.ledger_seq = seq;
        self.books
            .entry(record.interval_start)
            .or_default()
            .insert(record.id.clone());
        self.orders.insert(record.id.clone(), record);
    }

    /// Checks a signed cancel.
    pub(crate) fn validate_cancel(
        &self,
        signed: &pb::SignedRequest,
        timing: &Timing,
        now_ms: i64,
        wall_now_s: i64,
        window_s: i64,
        shared_intake: bool,
    ) -> Result<ValidCancel, ServiceError> {
        if signed.request.len() > REQUEST_BYTES_MAX {
            return Err(invalid(
                "request",
                format!("is larger than {REQUEST_BYTES_MAX} bytes"),
            ));
        }
        let req = pb::CancelRequest::decode(signed.request.as_slice()).map_err(|e| {
            invalid(
                "request",
                format!("is not a serialized baton.v1.CancelRequest: {e}"),
            )
        })?;
        let pid = req.participant_id.as_str();
        let (participant, sig) = self.authenticate(pid, &signed.request, &signed.signature)?;
        if !participant.active {
            return Err(ServiceError::Suspended(pid.to_string()));
        }
        participant.require(pid, pb::ParticipantRole::Prosumer)?;
        check_timestamp(req.timestamp, wall_now_s, window_s)?;
        self.check_nonce(pid, req.nonce)?;
        wire::OrderId::parse(&req.order_id).map_err(|e| invalid("order_id", e.to_string()))?;
        let interval_start = match self.orders.get(&req.order_id) {
            Some(order) => {
                if order.participant != pid {
                    return Err(ServiceError::NotYourOrder(req.order_id.clone()));
                }
                if order.status != OrderStatus::Open {
                    return Err(ServiceError::NotOpen(req.order_id.clone()));
                }
                self.check_open(timing, order.interval_start, now_ms)?;
                order.interval_start
            }
            // Several nodes: an order acknowledged by another node may not be sequenced yet;
            // the shared intake checks the cancel against it (and takes its interval from it).
            None if shared_intake => 0,
            None => return Err(ServiceError::NotFound(format!("order {:?}", req.order_id))),
        };
        Ok(ValidCancel {
            order_id: req.order_id.clone(),
            participant: pid.to_string(),
            interval_start,
            nonce: req.nonce,
            signed: SignedMessageBody {
                order_id: Some(req.order_id.clone()),
                participant_id: pid.to_string(),
                payload: signed.request.clone(),
                signature: sig,
            },
        })
    }

    /// Applies a durable cancel.
    pub(crate) fn apply_cancel(&mut self, order_id: &str) {
        let Some(o) = self.orders.get_mut(order_id) else {
            return;
        };
        if o.status != OrderStatus::Open {
            return;
        }
        o.status = OrderStatus::Cancelled;
        if let Some(b) = self.books.get_mut(&o.interval_start) {
            b.remove(order_id);
        }
        if let Some(n) = self.open_per_participant.get_mut(&o.participant) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self.per_interval.get_mut(&o.interval_start) {
            *n = n.saturating_sub(1);
        }
    }

    /// Checks a signed read and returns the query.
    pub(crate) fn authenticate_query(
        &self,
        signed: &pb::SignedRequest,
        wall_now_s: i64,
        window_s: i64,
    ) -> Result<pb::ParticipantQuery, ServiceError> {
        if signed.request.len() > REQUEST_BYTES_MAX {
            return Err(invalid(
                "request",
                format!("is larger than {REQUEST_BYTES_MAX} bytes"),
            ));
        }
        let q = pb::ParticipantQuery::decode(signed.request.as_slice()).map_err(|e| {
            invalid(
                "request",
                format!("is not a serialized baton.v1.ParticipantQuery: {e}"),
            )
        })?;
        self.authenticate(&q.participant_id, &signed.request, &signed.signature)?;
        check_timestamp(q.timestamp, wall_now_s, window_s)?;
        Ok(q)
    }

    /// Takes the open book of `start` out for clearing: its orders become cleared.
    pub(crate) fn freeze(&mut self, start: i64) -> Vec<OrderRecord> {
        let ids = self.books.remove(&start).unwrap_or_default();
        self.per_interval.remove(&start);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(o) = self.orders.get_mut(&id) {
                o.status = OrderStatus::Cleared;
                if let Some(n) = self.open_per_participant.get_mut(&o.participant) {
                    *n = n.saturating_sub(1);
                }
                out.push(o.clone());
            }
        }
        out
    }
}

/// Refuses a request signed too far from now (wall time: a replay window, not market time).
pub(crate) fn check_timestamp(ts: i64, now_s: i64, window_s: i64) -> Result<(), ServiceError> {
    if (ts - now_s).abs() > window_s {
        return Err(invalid(
            "timestamp",
            format!("{ts} is more than {window_s} s from the server's time {now_s}"),
        ));
    }
    Ok(())
}

/// Parses a hex ed25519 public key.
pub(crate) fn parse_key(field: &str, hex_text: &str) -> Result<VerifyingKey, ServiceError> {
    let bytes: [u8; 32] = hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid(field, "must be 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| invalid(field, "is not an ed25519 public key"))?;
    if key.is_weak() {
        return Err(invalid(field, "is a weak key"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_have_one_spelling() {
        assert_eq!(parse_decimal("q", "12.5", 6).unwrap().to_string(), "12.5");
        assert_eq!(parse_decimal("q", "-0.03", 6).unwrap().to_string(), "-0.03");
        for bad in [
            "", "NaN", "nan", "inf", "-inf", "1e3", "+1", " 1", "1.", ".5", "1.2.3", "0x10", "1,5",
            "--1",
        ] {
            let e = parse_decimal("blocks[0].quantity", bad, 6).unwrap_err();
            assert!(
                e.to_string().starts_with("blocks[0].quantity"),
                "{bad}: {e}"
            );
        }
        assert!(parse_decimal("q", "0.0000001", 6).is_err());
        assert!(parse_decimal("q", "99999999999999999999999999999999", 6).is_err());
    }

    #[test]
    fn earliest_open_interval_is_after_the_gate() {
        let t = Timing {
            interval_s: 300,
            gate_lead_s: 60,
            intervals_ahead: 3,
        };
        // At 00:03:59.999 the gate of 00:05 (closing 00:04) is open.
        assert_eq!(t.earliest_open(239_999), 300);
        // At 00:04:00.000 it has closed; 00:10 is next.
        assert_eq!(t.earliest_open(240_000), 600);
    }
}

#[cfg(test)]
mod agree;
