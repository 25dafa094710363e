//! The study interchange format `nodal-auction-market/v1` → [`MarketSpec`], and
//! [`Clearing`] → `nodal-auction-result/v1`.
//!
//! Input numbers are JSON numbers (binary floating point by the JSON spec's common reading);
//! each is taken at its shortest round-trip decimal text, so `7.920951` is exactly 7.920951,
//! then rounded to the fixed scales by [`Market::new_rounding`]. Output numbers are written
//! as exact decimal text at their fixed scale.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clearing::Clearing;
use crate::model::{BlockSpec, LineSpec, MarketSpec, NodeSpec, OrderSpec, Side};
use crate::settlement::Settlement;

/// Format tag of a study market.
pub const MARKET_FORMAT: &str = "nodal-auction-market/v1";
/// Format tag of a study result.
pub const RESULT_FORMAT: &str = "nodal-auction-result/v1";
/// Largest study file read, in bytes.
pub const STUDY_FILE_BYTES_MAX: usize = 1 << 30;

/// Why a study file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StudyError {
    /// Not JSON, or not the format's shape.
    #[error("malformed study market: {0}")]
    Json(#[from] serde_json::Error),
    /// A record is wrong; the message names it.
    #[error("{0}")]
    Record(String),
}

#[derive(Deserialize)]
struct MarketIn {
    format: Option<String>,
    name: Option<String>,
    nodes: Vec<IdIn>,
    #[serde(default)]
    lines: Vec<LineIn>,
    #[serde(default)]
    orders: Vec<OrderIn>,
    #[serde(default)]
    interval_minutes: Option<u32>,
}

#[derive(Deserialize)]
struct IdIn {
    id: IdValue,
}

/// Ids are strings; a number is accepted and taken as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    S(String),
    N(serde_json::Number),
}

impl IdValue {
    fn text(self) -> String {
        match self {
            IdValue::S(s) => s,
            IdValue::N(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct LineIn {
    id: IdValue,
    from: IdValue,
    to: IdValue,
    x: f64,
    capacity: Option<f64>,
}

#[derive(Deserialize)]
struct OrderIn {
    id: IdValue,
    node: IdValue,
    side: Side,
    blocks: Vec<BlockIn>,
}

#[derive(Deserialize)]
struct BlockIn {
    quantity: f64,
    price: f64,
}

/// A float from JSON as the decimal its shortest round-trip text denotes.
fn decimal(record: &str, field: &str, x: f64) -> Result<Decimal, StudyError> {
    if !x.is_finite() {
        return Err(StudyError::Record(format!(
            "{record}: {field} is not a finite number"
        )));
    }
    let text = format!("{x}");
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&format!("{x:e}")))
        .map_err(|_| StudyError::Record(format!("{record}: {field} {x} is out of range")))
}

/// Parses a study market.
pub fn parse_market(json: &[u8]) -> Result<MarketSpec, StudyError> {
    let m: MarketIn = serde_json::from_slice(json)?;
    if let Some(f) = &m.format {
        if f != MARKET_FORMAT {
            return Err(StudyError::Record(format!(
                "format is {f:?}, expected {MARKET_FORMAT:?}"
            )));
        }
    }
    let nodes: Vec<NodeSpec> = m
        .nodes
        .into_iter()
        .map(|n| NodeSpec { id: n.id.text() })
        .collect();
    let mut lines = Vec::with_capacity(m.lines.len());
    for l in m.lines {
        let id = l.id.text();
        let rec = format!("line {id:?}");
        let x = decimal(&rec, "x", l.x)?;
        let capacity = match l.capacity {
            None => None,
            Some(c) => Some(decimal(&rec, "capacity", c)?),
        };
        lines.push(LineSpec {
            id,
            from: l.from.text(),
            to: l.to.text(),
            x,
            capacity,
        });
    }
    let mut orders = Vec::with_capacity(m.orders.len());
    let (mut lo, mut hi) = (Decimal::ZERO, Decimal::ZERO);
    for o in m.orders {
        let id = o.id.text();
        let rec = format!("order {id:?}");
        let mut blocks = Vec::with_capacity(o.blocks.len());
        for (i, b) in o.blocks.into_iter().enumerate() {
            let quantity = decimal(&rec, &format!("blocks[{i}].quantity"), b.quantity)?;
            let price = decimal(&rec, &format!("blocks[{i}].price"), b.price)?;
            lo = lo.min(price);
            hi = hi.max(price);
            blocks.push(BlockSpec {
                quantity,
                price: Some(price),
            });
        }
        orders.push(OrderSpec {
            id,
            participant: None,
            node: o.node.text(),
            side: o.side,
            blocks,
            device: None,
        });
    }
    // The study format has no must-take blocks, so floor and cap only bound the prices given.
    let price_floor = lo.min(Decimal::ZERO);
    let price_cap = hi.max(price_floor + Decimal::ONE);
    Ok(MarketSpec {
        name: m.name.unwrap_or_else(|| "study".into()),
        interval_minutes: m.interval_minutes.unwrap_or(60),
        price_floor,
        price_cap,
        line_violation_penalty: None,
        nodes,
        lines,
        grid_connections: Vec::new(),
        devices: Vec::new(),
        orders,
        flex_requirements: Vec::new(),
        flex_offers: Vec::new(),
    })
}

/// A decimal written as an exact JSON number.
#[derive(Serialize)]
#[serde(transparent)]
struct Num(Box<RawValue>);

fn num(d: Decimal) -> Num {
    Num(RawValue::from_string(d.to_string()).expect("a decimal's text is a JSON number"))
}

#[derive(Serialize)]
struct ResultOut<'a> {
    format: &'static str,
    market: &'a str,
    status: &'static str,
    welfare: Num,
    nodes: Vec<NodeOut<'a>>,
    orders: Vec<OrderOut<'a>>,
    lines: Vec<LineOut<'a>>,
    relaxations: Vec<RelaxOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flex_requirements: Vec<FlexReqOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flex_offers: Vec<FlexOfferOut<'a>>,
    settlement: SettlementOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings_s: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct NodeOut<'a> {
    id: &'a str,
    lmp: Num,
    energy: Num,
    congestion: Num,
    island: usize,
}

#[derive(Serialize)]
struct OrderOut<'a> {
    id: &'a str,
    accepted: Vec<Num>,
    accepted_total: Num,
}

#[derive(Serialize)]
struct LineOut<'a> {
    id: &'a str,
    flow: Num,
    congested: bool,
}

#[derive(Serialize)]
struct RelaxOut<'a> {
    kind: &'a str,
    id: &'a str,
    quantity: Num,
    penalty: Num,
}

#[derive(Serialize)]
struct FlexReqOut<'a> {
    id: &'a str,
    price: Num,
    procured: Num,
    accepted: Vec<Num>,
}

#[derive(Serialize)]
struct FlexOfferOut<'a> {
    id: &'a str,
    accepted: Vec<Num>,
    accepted_total: Num,
}

#[derive(Serialize)]
struct SettlementOut<'a> {
    interval_minutes: u32,
    postings: Vec<PostingOut<'a>>,
    attributions: Vec<AttributionOut<'a>>,
}

#[derive(Serialize)]
struct PostingOut<'a> {
    account: &'a str,
    amount: Num,
    memo: &'a str,
}

#[derive(Serialize)]
struct AttributionOut<'a> {
    buyer: &'a str,
    seller: &'a str,
    quantity: Num,
    buyer_price: Num,
    seller_price: Num,
    network_charge: Num,
}

/// Writes a result as `nodal-auction-result/v1` JSON (pretty, deterministic bytes). Grid
/// connection orders are left out: the study format has none. `timings` is added only when
/// given, since it varies from run to run.
pub fn write_result(
    clearing: &Clearing,
    settlement: &Settlement,
    participant_orders: usize,
    timings: Option<serde_json::Value>,
) -> String {
    let out = ResultOut {
        format: RESULT_FORMAT,
        market: &clearing.market,
        status: "optimal",
        welfare: num(clearing.welfare.normalize()),
        nodes: clearing
            .nodes
            .iter()
            .map(|n| NodeOut {
                id: &n.id,
                lmp: num(n.price),
                energy: num(n.energy),
                congestion: num(n.congestion),
                island: n.island,
            })
            .collect(),
        orders: clearing.orders[..participant_orders]
            .iter()
            .map(|o| OrderOut {
                id: &o.id,
                accepted: o.accepted.iter().map(|&a| num(a)).collect(),
                accepted_total: num(o.accepted_total),
            })
            .collect(),
        lines: clearing
            .lines
            .iter()
            .map(|l| LineOut {
                id: &l.id,
                flow: num(l.flow),
                congested: l.congested,
            })
            .collect(),
        relaxations: clearing
            .relaxations
            .iter()
            .map(|r| RelaxOut {
                kind: r.kind,
                id: &r.id,
                quantity: num(r.quantity),
                penalty: num(r.penalty),
            })
            .collect(),
        flex_requirements: clearing
            .flex_requirements
            .iter()
            .map(|r| FlexReqOut {
                id: &r.id,
                price: num(r.price),
                procured: num(r.procured),
                accepted: r.accepted.iter().map(|&a| num(a)).collect(),
            })
            .collect(),
        flex_offers: clearing
            .flex_offers
            .iter()
            .map(|o| FlexOfferOut {
                id: &o.id,
                accepted: o.accepted.iter().map(|&a| num(a)).collect(),
                accepted_total: num(o.accepted_total),
            })
            .collect(),
        settlement: SettlementOut {
            interval_minutes: settlement.interval_minutes,
            postings: settlement
                .postings
                .iter()
                .map(|p| PostingOut {
                    account: &p.account,
                    amount: num(p.amount),
                    memo: &p.memo,
                })
                .collect(),
            attributions: settlement
                .attributions
                .iter()
                .map(|a| AttributionOut {
                    buyer: &a.buyer,
                    seller: &a.seller,
                    quantity: num(a.quantity),
                    buyer_price: num(a.buyer_price),
                    seller_price: num(a.seller_price),
                    network_charge: num(a.network_charge),
                })
                .collect(),
        },
        timings_s: timings,
    };
    let mut s = serde_json::to_string_pretty(&out).expect("result serialises");
    s.push('\n');
    s
}

/// Writes a market spec as study JSON (energy orders only; grid connections, devices and
/// flexibility are not part of the study format and are refused).
pub fn write_market(spec: &MarketSpec) -> Result<String, StudyError> {
    if !spec.grid_connections.is_empty()
        || !spec.flex_offers.is_empty()
        || !spec.flex_requirements.is_empty()
    {
        return Err(StudyError::Record(
            "the study format carries energy orders only".into(),
        ));
    }
    #[derive(Serialize)]
    struct Out<'a> {
        format: &'static str,
        name: &'a str,
        units: serde_json::Value,
        nodes: Vec<serde_json::Value>,
        lines: Vec<LineW<'a>>,
        orders: Vec<OrderW<'a>>,
    }
    #[derive(Serialize)]
    struct LineW<'a> {
        id: &'a str,
        from: &'a str,
        to: &'a str,
        x: Num,
        capacity: Option<Num>,
    }
    #[derive(Serialize)]
    struct OrderW<'a> {
        id: &'a str,
        node: &'a str,
        side: Side,
        blocks: Vec<BlockW>,
    }
    #[derive(Serialize)]
    struct BlockW {
        quantity: Num,
        price: Num,
    }
    let mut seen = HashSet::new();
    let out = Out {
        format: MARKET_FORMAT,
        name: &spec.name,
        units: serde_json::json!({"quantity": "MW", "price": "$/MWh", "capacity": "MW"}),
        nodes: spec
            .nodes
            .iter()
            .filter(|n| seen.insert(n.id.as_str()))
            .map(|n| serde_json::json!({ "id": n.id }))
            .collect(),
        lines: spec
            .lines
            .iter()
            .map(|l| LineW {
                id: &l.id,
                from: &l.from,
                to: &l.to,
                x: num(l.x.normalize()),
                capacity: l.capacity.map(|c| num(c.normalize())),
            })
            .collect(),
        orders: spec
            .orders
            .iter()
            .map(|o| OrderW {
                id: &o.id,
                node: &o.node,
                side: o.side,
                blocks: o
                    .blocks
                    .iter()
                    .map(|b| BlockW {
                        quantity: num(b.quantity.normalize()),
                        price: num(b.price.unwrap_or_default().normalize()),
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut s = serde_json::to_string_pretty(&out)?;
    s.push('\n');
    Ok(s)
}
