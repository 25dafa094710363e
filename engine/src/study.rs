//! The study interchange format `nodal-auction-market/v1` → [`MarketSpec`], and
//! [`Clearing`] → `nodal-auction-result/v1`.
//!
//! Input numbers are JSON numbers, usually written from binary floating point. Each is read as
//! the exact decimal its text denotes, never through `f64` (for a file written from floats
//! that text is the float's shortest round-trip decimal), so `7.920951` is exactly 7.920951;
//! it is then rounded to the fixed scales by [`crate::Market::new_rounding`]. Output numbers
//! are written as exact decimal text at their fixed scale.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clearing::{Clearing, ReferenceRule};
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
struct MarketIn<'a> {
    format: Option<String>,
    name: Option<String>,
    #[serde(borrow)]
    nodes: Vec<IdIn<'a>>,
    #[serde(default, borrow)]
    lines: Vec<LineIn<'a>>,
    #[serde(default, borrow)]
    orders: Vec<OrderIn<'a>>,
    #[serde(default)]
    interval_minutes: Option<u32>,
}

#[derive(Deserialize)]
struct IdIn<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
}

#[derive(Deserialize)]
struct LineIn<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    from: &'a RawValue,
    #[serde(borrow)]
    to: &'a RawValue,
    #[serde(borrow)]
    x: &'a RawValue,
    #[serde(default, borrow)]
    capacity: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OrderIn<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    node: &'a RawValue,
    side: Side,
    #[serde(borrow)]
    blocks: Vec<BlockIn<'a>>,
}

#[derive(Deserialize)]
struct BlockIn<'a> {
    #[serde(borrow)]
    quantity: &'a RawValue,
    #[serde(borrow)]
    price: &'a RawValue,
}

/// Whether a JSON value's text is a number (serde_json has checked it is a JSON value).
fn is_number(raw: &RawValue) -> bool {
    raw.get()
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
}

/// An id: a JSON string, or a number taken as its text.
fn id_text(field: &str, raw: &RawValue) -> Result<String, StudyError> {
    if is_number(raw) {
        return Ok(raw.get().to_string());
    }
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| StudyError::Record(format!("{field} {} is not a string or number", raw.get())))
}

/// Exponents beyond this are refused (a magnitude above `Decimal`'s 7.9e28) or, when negative,
/// read as zero (a magnitude below 1e-28, which any fixed scale rounds to zero).
const JSON_EXPONENT_ABS_MAX: i64 = 1000;

/// A JSON number as the exact decimal its text denotes (never through binary floating point),
/// rounded to 28 decimal places if it has more.
fn decimal(record: &str, field: &str, raw: &RawValue) -> Result<Decimal, StudyError> {
    let text = raw.get();
    let out_of_range = || StudyError::Record(format!("{record}: {field} {text} is out of range"));
    if !is_number(raw) {
        return Err(StudyError::Record(format!(
            "{record}: {field} {text} is not a number"
        )));
    }
    let (mantissa, exp) = match text.find(['e', 'E']) {
        None => (text, 0),
        Some(k) => {
            let e = text[k + 1..].strip_prefix('+').unwrap_or(&text[k + 1..]);
            let e: i64 = match e.parse() {
                Ok(e) if (-JSON_EXPONENT_ABS_MAX..=JSON_EXPONENT_ABS_MAX).contains(&e) => e,
                Ok(e) if e < 0 => return Ok(Decimal::ZERO),
                _ if e.starts_with('-') => return Ok(Decimal::ZERO),
                _ => return Err(out_of_range()),
            };
            (&text[..k], e)
        }
    };
    let (negative, digits) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    // Move the decimal point by the exponent, in text, then parse the plain decimal.
    let all: String = [int, frac].concat();
    let point = int.len() as i64 + exp;
    let plain = if point <= 0 {
        format!("0.{}{all}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= all.len() {
        format!("{all}{}", "0".repeat(point as usize - all.len()))
    } else {
        format!("{}.{}", &all[..point as usize], &all[point as usize..])
    };
    let plain = plain.trim_start_matches('0');
    let plain = if plain.is_empty() || plain.starts_with('.') {
        format!("0{plain}")
    } else {
        plain.to_string()
    };
    let mut d = plain.parse::<Decimal>().map_err(|_| out_of_range())?;
    d.set_sign_negative(negative && !d.is_zero());
    Ok(d)
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
        .map(|n| id_text("node id", n.id).map(|id| NodeSpec { id }))
        .collect::<Result<_, _>>()?;
    let mut lines = Vec::with_capacity(m.lines.len());
    for l in m.lines {
        let id = id_text("line id", l.id)?;
        let rec = format!("line {id:?}");
        let x = decimal(&rec, "x", l.x)?;
        let capacity = match l.capacity {
            None => None,
            Some(c) => Some(decimal(&rec, "capacity", c)?),
        };
        lines.push(LineSpec {
            id,
            from: id_text(&format!("{rec}: from"), l.from)?,
            to: id_text(&format!("{rec}: to"), l.to)?,
            x,
            capacity,
        });
    }
    let mut orders = Vec::with_capacity(m.orders.len());
    let (mut lo, mut hi) = (Decimal::ZERO, Decimal::ZERO);
    for o in m.orders {
        let id = id_text("order id", o.id)?;
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
            node: id_text(&format!("{rec}: node"), o.node)?,
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
    islands: Vec<IslandOut<'a>>,
    relaxations: Vec<RelaxOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flex_requirements: Vec<FlexReqOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flex_offers: Vec<FlexOfferOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    devices: Vec<DeviceOut<'a>>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    unique: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lmp_range: Option<[Num; 2]>,
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
struct IslandOut<'a> {
    island: usize,
    reference: &'a str,
    rule: ReferenceRule,
}

#[derive(Serialize)]
struct DeviceOut<'a> {
    id: &'a str,
    capacity: Num,
    up_used: Num,
    down_used: Num,
    up_shadow_price: Num,
    down_shadow_price: Num,
}

#[derive(Serialize)]
struct AllocationOut<'a> {
    requirement: &'a str,
    quantity: Num,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    unique: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_range: Option<[Num; 2]>,
    procured: Num,
    accepted: Vec<Num>,
}

#[derive(Serialize)]
struct FlexOfferOut<'a> {
    id: &'a str,
    accepted: Vec<Num>,
    accepted_total: Num,
    allocations: Vec<AllocationOut<'a>>,
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
    let out = result_out(clearing, settlement, participant_orders, timings);
    let mut s = serde_json::to_string_pretty(&out).expect("result serialises");
    s.push('\n');
    s
}

/// The same result as [`write_result`], as compact JSON: no whitespace between tokens, no
/// timings. These are the bytes the ledger records (`benches/clear.rs` prints both sizes for a
/// large book), deterministic like the pretty ones.
pub fn write_result_compact(
    clearing: &Clearing,
    settlement: &Settlement,
    participant_orders: usize,
) -> Vec<u8> {
    let out = result_out(clearing, settlement, participant_orders, None);
    serde_json::to_vec(&out).expect("result serialises")
}

fn result_out<'a>(
    clearing: &'a Clearing,
    settlement: &'a Settlement,
    participant_orders: usize,
    timings: Option<serde_json::Value>,
) -> ResultOut<'a> {
    ResultOut {
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
                unique: n.unique,
                lmp_range: n.range.map(|(a, b)| [num(a), num(b)]),
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
        islands: clearing
            .references
            .iter()
            .enumerate()
            .map(|(k, r)| IslandOut {
                island: k,
                reference: &r.reference,
                rule: r.rule,
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
                unique: r.unique,
                price_range: r.range.map(|(a, b)| [num(a), num(b)]),
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
                allocations: o
                    .allocations
                    .iter()
                    .map(|&(ri, q)| AllocationOut {
                        requirement: &clearing.flex_requirements[ri].id,
                        quantity: num(q),
                    })
                    .collect(),
            })
            .collect(),
        devices: clearing
            .devices
            .iter()
            .map(|d| DeviceOut {
                id: &d.id,
                capacity: num(d.capacity),
                up_used: num(d.up_used),
                down_used: num(d.down_used),
                up_shadow_price: num(d.up_shadow_price),
                down_shadow_price: num(d.down_shadow_price),
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Market;
    use rust_decimal_macros::dec;

    fn one_block(quantity: &str, price: &str) -> Result<MarketSpec, StudyError> {
        parse_market(
            format!(
                r#"{{"nodes": [{{"id": 1}}], "orders": [{{"id": "o", "node": 1, "side": "buy",
                "blocks": [{{"quantity": {quantity}, "price": {price}}}]}}]}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn numbers_are_read_as_their_exact_decimal_text() {
        let q = |text: &str| one_block(text, "1").unwrap().orders[0].blocks[0].quantity;
        assert_eq!(q("7.920951"), dec!(7.920951));
        assert_eq!(q("1e-05"), dec!(0.00001));
        assert_eq!(q("2.5E+3"), dec!(2500));
        assert_eq!(q("-0.0"), Decimal::ZERO);
        assert_eq!(q("1e-400"), Decimal::ZERO);
        assert_eq!(q("0.000001e6"), dec!(1));
        // Through f64 this is 2.0000015 (the nearest double's shortest text), which rounds
        // half to even up to 2.000002; the exact decimal is below the midpoint.
        assert_eq!(
            q("2.0000014999999999999999"),
            dec!(2.0000014999999999999999)
        );
        let m = Market::new_rounding(&one_block("2.0000014999999999999999", "1").unwrap());
        assert_eq!(m.unwrap().orders()[0].blocks[0].quantity, dec!(2.000001));
        let spec = one_block("1", "2").unwrap();
        assert_eq!(spec.nodes[0].id, "1");
        assert_eq!(spec.orders[0].node, "1");
    }

    #[test]
    fn out_of_range_and_non_numbers_are_refused_naming_the_field() {
        let e = one_block("1e400", "1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "order \"o\": blocks[0].quantity 1e400 is out of range"
        );
        let e = one_block("1", "1e29").unwrap_err();
        assert_eq!(
            e.to_string(),
            "order \"o\": blocks[0].price 1e29 is out of range"
        );
        let e = one_block("\"5\"", "1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "order \"o\": blocks[0].quantity \"5\" is not a number"
        );
        // JSON has no NaN or Infinity: those are not JSON at all.
        assert!(matches!(one_block("NaN", "1"), Err(StudyError::Json(_))));
    }
}
