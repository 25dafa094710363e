//! The market of one interval: what comes in ([`MarketSpec`], plain serde data) and the
//! validated form the clearing works on ([`Market`]).
//!
//! **Architecture Invariant:** the clearing never sees a `MarketSpec`; `Market::new` is the only
//! way to build a `Market`, and it refuses anything the solver could choke on (unknown nodes,
//! zero reactance, negative or absurd quantities, duplicate ids, more records of a kind than its
//! limit, …), naming the offending record. Its per-record checks are [`crate::validate`]'s, public
//! so that a live market's intake makes exactly the same ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::validate::{dup, Network};

/// Most nodes in one network.
pub const NODES_MAX: usize = 200_000;
/// Most lines in one network.
pub const LINES_MAX: usize = 400_000;
/// Most energy orders in one interval (the benchmark clears 1,000,000).
pub const ORDERS_PER_INTERVAL_MAX: usize = 4_000_000;
/// Most flexibility offers in one interval. Offers are not aggregated into steps as energy
/// orders are: each block is an LP column per requirement covering its node, so the bound is a
/// quarter of the energy orders'.
pub const FLEX_OFFERS_PER_INTERVAL_MAX: usize = 1_000_000;
/// Most flexibility requirements in one interval: each is an LP row, posted by the network
/// operator per congested area, not per prosumer.
pub const FLEX_REQUIREMENTS_PER_INTERVAL_MAX: usize = 10_000;
/// Most devices in one network: one per prosumer, as many as a quarter of the orders.
pub const DEVICES_MAX: usize = 1_000_000;
/// Most grid connections (feeder heads, interconnectors) in one network; each adds two orders.
pub const GRID_CONNECTIONS_MAX: usize = 1_000;
/// Most blocks in one stepped curve: an energy order's, a flexibility offer's or a
/// requirement's.
pub const BLOCKS_PER_CURVE_MAX: usize = 16;
/// Most blocks in one order's stepped curve (the name before flexibility curves shared it).
pub const BLOCKS_PER_ORDER_MAX: usize = BLOCKS_PER_CURVE_MAX;
/// Most nodes in one flexibility requirement's area.
pub const FLEX_AREA_NODES_MAX: usize = 10_000;
/// Most characters in any id.
pub const ID_LEN_MAX: usize = 128;
/// Longest interval, in minutes (one day).
pub const INTERVAL_MINUTES_MAX: u32 = 1440;

/// Interval length when a market does not say: five minutes.
pub const INTERVAL_MINUTES_DEFAULT: u32 = 5;

/// Buy or sell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Withdraws energy at the node and pays.
    Buy,
    /// Injects energy at the node and is paid.
    Sell,
}

/// Direction of flexibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// More injection or less consumption.
    Up,
    /// Less injection or more consumption.
    Down,
}

/// One step of a curve. `price: None` is a price-taking (must-take) block: a buy that must be
/// served or a sell that must be taken; it enters the auction at the price cap (buy) or floor
/// (sell), and any part not accepted is reported as a relaxation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Average power over the interval, > 0.
    pub quantity: Decimal,
    /// Limit price; `None` for a must-take block.
    #[serde(default)]
    pub price: Option<Decimal>,
}

/// A network node (bus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique id.
    pub id: String,
}

/// A line (branch) between two nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineSpec {
    /// Unique id.
    pub id: String,
    /// From node; positive flow goes from → to.
    pub from: String,
    /// To node.
    pub to: String,
    /// Series reactance; only ratios matter; may be negative, never zero.
    pub x: Decimal,
    /// Thermal limit on |flow|; `None` is unlimited.
    #[serde(default)]
    pub capacity: Option<Decimal>,
}

/// An upstream connection (e.g. the feeder head) that imports and exports at set prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridConnectionSpec {
    /// Unique id; its account is `grid:<id>`.
    pub id: String,
    /// Node it connects at.
    pub node: String,
    /// Most power imported into the network.
    pub import_limit: Decimal,
    /// Price at which upstream sells into the network.
    pub import_price: Decimal,
    /// Most power exported out of the network.
    pub export_limit: Decimal,
    /// Price upstream pays for exports.
    pub export_price: Decimal,
}

/// A device (battery, EV charger, inverter) whose power capacity bounds both its energy orders
/// and its flexibility offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Unique id.
    pub id: String,
    /// Node it sits at.
    pub node: String,
    /// Power capacity C: the device is a range −C..+C of net injection; with `net = sells − buys`
    /// on it, `net + flex up ≤ C` and `−net + flex down ≤ C` (rule 8).
    pub capacity: Decimal,
}

/// An energy order: a stepped curve at one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderSpec {
    /// Unique id.
    pub id: String,
    /// Who pays or is paid; defaults to the order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// Node of delivery.
    pub node: String,
    /// Buy or sell.
    pub side: Side,
    /// The curve's blocks, each accepted independently.
    pub blocks: Vec<BlockSpec>,
    /// Device whose capacity this order shares, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The network operator's demand for flexibility in an area.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlexRequirementSpec {
    /// Unique id.
    pub id: String,
    /// Account that pays providers; defaults to the network operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer: Option<String>,
    /// Nodes whose offers count towards it.
    pub nodes: Vec<String>,
    /// Up or down.
    pub direction: Direction,
    /// A stepped demand curve: quantity and the most it will pay.
    pub blocks: Vec<BlockSpec>,
}

/// A prosumer's offer of flexibility (availability) at its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlexOfferSpec {
    /// Unique id.
    pub id: String,
    /// Who is paid; defaults to the offer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// Node of the device.
    pub node: String,
    /// Up or down.
    pub direction: Direction,
    /// Stepped supply curve: quantity and the least it accepts.
    pub blocks: Vec<BlockSpec>,
    /// Device whose capacity this offer shares, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Everything one interval's clearing needs, as plain data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarketSpec {
    /// Name, echoed in results.
    pub name: String,
    /// Interval length in minutes.
    #[serde(default = "default_interval_minutes")]
    pub interval_minutes: u32,
    /// Lowest price; must-take sells enter at this price.
    pub price_floor: Decimal,
    /// Highest price (value of lost load); must-take buys enter at this price.
    pub price_cap: Decimal,
    /// Penalty per unit of line overload; `None` makes line limits hard.
    #[serde(default)]
    pub line_violation_penalty: Option<Decimal>,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Lines.
    #[serde(default)]
    pub lines: Vec<LineSpec>,
    /// Upstream connections.
    #[serde(default)]
    pub grid_connections: Vec<GridConnectionSpec>,
    /// Devices with a shared capacity.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Energy orders.
    #[serde(default)]
    pub orders: Vec<OrderSpec>,
    /// Flexibility requirements.
    #[serde(default)]
    pub flex_requirements: Vec<FlexRequirementSpec>,
    /// Flexibility offers.
    #[serde(default)]
    pub flex_offers: Vec<FlexOfferSpec>,
}

fn default_interval_minutes() -> u32 {
    INTERVAL_MINUTES_DEFAULT
}

/// Why a market was refused. Each names the offending record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// A record names a node the network does not have.
    #[error("{record}: unknown node {node:?}")]
    UnknownNode {
        /// The record, e.g. `order "o7"`.
        record: String,
        /// The node it named.
        node: String,
    },
    /// A record names a device that is not declared, or is at another node.
    #[error("{record}: {reason}")]
    BadDevice {
        /// The record.
        record: String,
        /// What is wrong.
        reason: String,
    },
    /// Two records of one kind share an id.
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId {
        /// Kind of record.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// An id is empty or too long.
    #[error("{kind} id {id:?} is empty or longer than {ID_LEN_MAX} characters")]
    BadId {
        /// Kind of record.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// A numeric field is out of range or has too many decimals.
    #[error("{record}: {field} {reason}")]
    BadNumber {
        /// The record.
        record: String,
        /// The field, e.g. `blocks[2].quantity`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line's reactance is zero.
    #[error("line {line:?}: reactance x is zero")]
    ZeroReactance {
        /// The line.
        line: String,
    },
    /// A line connects a node to itself.
    #[error("line {line:?}: from and to are the same node")]
    SelfLoop {
        /// The line.
        line: String,
    },
    /// A curve has no blocks or too many.
    #[error("{record}: has {count} blocks (1 to {BLOCKS_PER_CURVE_MAX} allowed)")]
    BlockCount {
        /// The record.
        record: String,
        /// How many it had.
        count: usize,
    },
    /// A collection is larger than its limit.
    #[error("too many {what}: {count} (limit {name} = {limit})")]
    TooMany {
        /// What.
        what: &'static str,
        /// The limit's name, e.g. `FLEX_OFFERS_PER_INTERVAL_MAX`.
        name: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The market-wide parameters are inconsistent.
    #[error("market: {0}")]
    Parameters(String),
}

/// A validated block: quantity and effective price at their fixed scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Quantity, > 0, at [`QUANTITY_SCALE`](crate::units::QUANTITY_SCALE).
    pub quantity: Decimal,
    /// Effective price at [`PRICE_SCALE`](crate::units::PRICE_SCALE) (cap or floor for must-take blocks).
    pub price: Decimal,
    /// Whether this block was must-take.
    pub must_take: bool,
}

/// What kind of party an order belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderOrigin {
    /// A prosumer's own order.
    Participant,
    /// The import (sell) or export (buy) side of a grid connection.
    Grid {
        /// Index of the grid connection.
        connection: usize,
    },
}

/// A validated energy order. Grid connections appear here too, as one sell (import) and one
/// buy (export) order each, after the participants' orders.
#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    /// Id (for grid connections `<grid id>/import` or `<grid id>/export`).
    pub id: String,
    /// Settlement account.
    pub account: String,
    /// Node index.
    pub node: usize,
    /// Side.
    pub side: Side,
    /// Blocks, in input order.
    pub blocks: Vec<Block>,
    /// Device index.
    pub device: Option<usize>,
    /// Participant or grid.
    pub origin: OrderOrigin,
}

/// A validated line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Id.
    pub id: String,
    /// From node index.
    pub from: usize,
    /// To node index.
    pub to: usize,
    /// Reactance, non-zero.
    pub x: Decimal,
    /// Limit on |flow|.
    pub capacity: Option<Decimal>,
}

/// A validated flexibility requirement.
#[derive(Clone, Debug, PartialEq)]
pub struct FlexRequirement {
    /// Id.
    pub id: String,
    /// Paying account.
    pub account: String,
    /// Area: sorted, deduplicated node indices.
    pub nodes: Vec<usize>,
    /// Direction.
    pub direction: Direction,
    /// Demand curve.
    pub blocks: Vec<Block>,
}

/// A validated flexibility offer.
#[derive(Clone, Debug, PartialEq)]
pub struct FlexOffer {
    /// Id.
    pub id: String,
    /// Paid account.
    pub account: String,
    /// Node index.
    pub node: usize,
    /// Direction.
    pub direction: Direction,
    /// Supply curve.
    pub blocks: Vec<Block>,
    /// Device index.
    pub device: Option<usize>,
}

/// A validated device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Id.
    pub id: String,
    /// Node index.
    pub node: usize,
    /// Capacity.
    pub capacity: Decimal,
}

/// A market that passed validation: every reference resolved to an index, every number at its
/// fixed scale and within its limits.
#[derive(Clone, Debug)]
pub struct Market {
    spec_name: String,
    interval_minutes: u32,
    price_floor: Decimal,
    price_cap: Decimal,
    line_violation_penalty: Option<Decimal>,
    node_ids: Vec<String>,
    lines: Vec<Line>,
    orders: Vec<Order>,
    participant_orders: usize,
    grid_connections: Vec<GridConnectionSpec>,
    devices: Vec<Device>,
    flex_requirements: Vec<FlexRequirement>,
    flex_offers: Vec<FlexOffer>,
}

/// Prefix of a grid connection's settlement account.
pub const GRID_ACCOUNT_PREFIX: &str = "grid:";
/// The network operator's account: congestion rent in, flexibility payments out.
pub const NETWORK_OPERATOR_ACCOUNT: &str = "network-operator";
/// Where the rounding residue of each interval is posted.
pub const ROUNDING_ACCOUNT: &str = "market-operator:rounding";

impl Market {
    /// Validates a spec. Decimals with more places than the fixed scales are refused.
    pub fn new(spec: &MarketSpec) -> Result<Market, MarketError> {
        Self::build(spec, false)
    }

    /// Validates a spec, rounding quantities and prices with more decimal places than the
    /// fixed scales by [`crate::units::round_at`] instead of refusing them. For imported study
    /// files whose numbers went through binary floating point.
    pub fn new_rounding(spec: &MarketSpec) -> Result<Market, MarketError> {
        Self::build(spec, true)
    }

    /// [`Network::build`], then each record by its [`crate::validate`] check, then the checks
    /// that span records (duplicate ids).
    fn build(spec: &MarketSpec, round: bool) -> Result<Market, MarketError> {
        let net = Network::build(spec, round)?;

        let mut orders = Vec::with_capacity(spec.orders.len() + 2 * spec.grid_connections.len());
        let mut order_ids: HashSet<&str> = HashSet::with_capacity(spec.orders.len());
        for o in &spec.orders {
            let order = net.order(o)?;
            if !order_ids.insert(o.id.as_str()) {
                return Err(dup("order", &o.id));
            }
            orders.push(order);
        }
        let participant_orders = orders.len();
        let mut grid_ids = HashSet::new();
        let mut grid_connections = Vec::with_capacity(spec.grid_connections.len());
        for (gi, g) in spec.grid_connections.iter().enumerate() {
            let (valid, pair) = net.grid_connection(gi, g)?;
            if !grid_ids.insert(g.id.as_str()) {
                return Err(dup("grid connection", &g.id));
            }
            for o in pair {
                if order_ids.contains(o.id.as_str()) {
                    return Err(dup("order", &o.id));
                }
                orders.push(o);
            }
            grid_connections.push(valid);
        }

        let mut flex_requirements = Vec::with_capacity(spec.flex_requirements.len());
        let mut req_ids = HashSet::new();
        for r in &spec.flex_requirements {
            let req = net.flex_requirement(r)?;
            if !req_ids.insert(r.id.as_str()) {
                return Err(dup("flex requirement", &r.id));
            }
            flex_requirements.push(req);
        }
        let mut flex_offers = Vec::with_capacity(spec.flex_offers.len());
        let mut offer_ids = HashSet::new();
        for f in &spec.flex_offers {
            let offer = net.flex_offer(f)?;
            if !offer_ids.insert(f.id.as_str()) {
                return Err(dup("flex offer", &f.id));
            }
            flex_offers.push(offer);
        }

        Ok(Market {
            spec_name: spec.name.clone(),
            interval_minutes: net.interval_minutes,
            price_floor: net.price_floor,
            price_cap: net.price_cap,
            line_violation_penalty: net.line_violation_penalty,
            node_ids: net.node_ids,
            lines: net.lines,
            orders,
            participant_orders,
            grid_connections,
            devices: net.devices,
            flex_requirements,
            flex_offers,
        })
    }

    /// Market name.
    pub fn name(&self) -> &str {
        &self.spec_name
    }
    /// Interval length in minutes.
    pub fn interval_minutes(&self) -> u32 {
        self.interval_minutes
    }
    /// Price floor.
    pub fn price_floor(&self) -> Decimal {
        self.price_floor
    }
    /// Price cap.
    pub fn price_cap(&self) -> Decimal {
        self.price_cap
    }
    /// Penalty per unit of line overload, if limits are soft.
    pub fn line_violation_penalty(&self) -> Option<Decimal> {
        self.line_violation_penalty
    }
    /// Node ids, in input order.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }
    /// Lines, in input order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }
    /// Energy orders: the participants' in input order, then two per grid connection.
    pub fn orders(&self) -> &[Order] {
        &self.orders
    }
    /// How many of [`Market::orders`] are participants' (the rest are grid connections').
    pub fn participant_order_count(&self) -> usize {
        self.participant_orders
    }
    /// Grid connections, validated.
    pub fn grid_connections(&self) -> &[GridConnectionSpec] {
        &self.grid_connections
    }
    /// Devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
    /// Flexibility requirements.
    pub fn flex_requirements(&self) -> &[FlexRequirement] {
        &self.flex_requirements
    }
    /// Flexibility offers.
    pub fn flex_offers(&self) -> &[FlexOffer] {
        &self.flex_offers
    }
}

/// Node indices grouped by island (connected component), each island's nodes ascending by id
/// (the canonical order), islands ordered by their first node id.
pub fn islands(market: &Market) -> Vec<Vec<usize>> {
    let n = market.node_ids.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for l in &market.lines {
        let (a, b) = (find(&mut parent, l.from), find(&mut parent, l.to));
        if a != b {
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut root_key: HashMap<usize, &str> = HashMap::new();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| market.node_ids[a].cmp(&market.node_ids[b]));
    for i in order {
        let r = find(&mut parent, i);
        let key = *root_key.entry(r).or_insert(market.node_ids[i].as_str());
        groups.entry(key).or_default().push(i);
    }
    groups.into_values().collect()
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}
