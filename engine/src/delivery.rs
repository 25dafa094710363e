//! Delivery settlement: what each participant's meter says it really did, against what the
//! market cleared for it, settled to the cent (docs/MARKET.md, "Delivery").
//!
//! The clearing pays on the schedule; this pass corrects it once the meters are in.
//!
//! - A **position** is one account at one node. Its cleared energy `C` is its accepted sells
//!   minus its accepted buys over the interval; its metered energy `M` is the reading's export
//!   minus its import. Both are held exactly in kW·min (a kWh is 60 kW·min), so nothing is
//!   rounded before money.
//! - **Flexibility** is verified against the cleared position as baseline: an up allocation of
//!   `q` asks for `M − C ≥ q·m`, a down allocation for `C − M ≥ q·m`. The deviation in the
//!   allocation's direction delivers the account's allocations in canonical order (offer id,
//!   then requirement id), each up to its size. A shortfall is not paid (the clearing's payment
//!   for it is returned to the requirement's account) and is penalised at
//!   [`DeliveryRules::flex_shortfall_penalty`] × the requirement's price.
//! - **Imbalance** is what remains, `I = M − C − delivered` (signed, up positive). A long
//!   position (`I > 0`) is paid `p_long × I`, a short one pays `p_short × |I|`, against
//!   [`IMBALANCE_ACCOUNT`]:
//!   `p_short = max(λ, min(λ + s, G_import))`, `p_long = min(λ, max(λ − s, G_export))`,
//!   where `λ` is the node's price, `s` the spread, and `G_import`/`G_export` the highest import
//!   and lowest export price of the grid connections in the node's island (the market's cap and
//!   floor where it has none). So `p_short ≥ λ ≥ p_long`: deviating never pays better than the
//!   market, and the spread never reaches past the grid's own tariffs.
//! - **A missing reading** (a position with cleared energy or flexibility and no reading) is
//!   estimated as the schedule, `M = C`: no imbalance, and no flexibility delivered, so all of
//!   it is a shortfall.
//!
//! Every posting is one of a pair of exact opposites, each rounded once by the one rule, so an
//! interval's delivery postings sum to exactly zero with no residue.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clearing::Clearing;
use crate::model::{Direction, Market, Side};
use crate::settlement::Posting;
use crate::units::{round_at, MONEY_SCALE, PRICE_SCALE, QUANTITY_SCALE};

/// The account on the other side of every imbalance posting: the market's balancing account,
/// whose balance is the net deviation the market operator settles upstream.
pub const IMBALANCE_ACCOUNT: &str = "market-operator:imbalance";

/// Largest import or export in one reading, kWh (10 MWh: a typo, not a household).
pub const METER_KWH_MAX: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

/// Decimal places of a reading's kWh.
pub const METER_KWH_SCALE: u32 = QUANTITY_SCALE;

/// One meter's measured energy at one account's connection point over the interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterReading {
    /// The account (a participant id).
    pub account: String,
    /// The connection node's id.
    pub node: String,
    /// Energy drawn from the network, kWh.
    pub import_kwh: Decimal,
    /// Energy fed into the network, kWh.
    pub export_kwh: Decimal,
}

/// The parameters of delivery settlement, recorded with each settlement so a re-clear uses the
/// same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRules {
    /// `s`: how far the imbalance prices sit from the nodal price, currency per kWh.
    pub imbalance_spread: Decimal,
    /// Penalty on undelivered flexibility, as a fraction of the requirement's price.
    pub flex_shortfall_penalty: Decimal,
}

impl Default for DeliveryRules {
    /// A spread of 0.05 per kWh and a penalty of half the flexibility price.
    fn default() -> Self {
        DeliveryRules {
            imbalance_spread: Decimal::new(5, 2),
            flex_shortfall_penalty: Decimal::new(5, 1),
        }
    }
}

/// One account at one node: schedule, measurement and what was settled. Energies in kWh,
/// rounded to [`METER_KWH_SCALE`] for reading; the money was computed from the exact values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Account.
    pub account: String,
    /// Node id.
    pub node: String,
    /// Net cleared energy (export positive).
    pub cleared_kwh: Decimal,
    /// Net metered energy (export positive); `None` when no reading arrived.
    pub metered_kwh: Option<Decimal>,
    /// Flexibility procured, signed (up positive).
    pub flex_procured_kwh: Decimal,
    /// Flexibility delivered, signed like the procurement.
    pub flex_delivered_kwh: Decimal,
    /// Flexibility not delivered (non-negative).
    pub flex_shortfall_kwh: Decimal,
    /// `M − C − delivered`: long positive, short negative.
    pub imbalance_kwh: Decimal,
    /// The price the imbalance settled at (`p_long` or `p_short`); `None` when there is none.
    pub imbalance_price: Option<Decimal>,
    /// What the account received for its imbalance (negative: paid).
    pub imbalance_amount: Decimal,
    /// Flexibility payments returned for the shortfall, and penalties (non-positive).
    pub flex_amount: Decimal,
}

/// One interval's delivery settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Interval length in minutes.
    pub interval_minutes: u32,
    /// Positions by account, then node id.
    pub positions: Vec<Position>,
    /// Postings (amounts received), in position order; they sum to exactly zero.
    pub postings: Vec<Posting>,
}

impl Delivery {
    /// Sum of all postings (always zero).
    pub fn total(&self) -> Decimal {
        self.postings.iter().map(|p| p.amount).sum()
    }

    /// Total |imbalance| over all positions, kWh (from the rounded positions).
    pub fn imbalance_volume_kwh(&self) -> Decimal {
        self.positions.iter().map(|p| p.imbalance_kwh.abs()).sum()
    }

    /// Positions that had no reading.
    pub fn missing_readings(&self) -> usize {
        self.positions
            .iter()
            .filter(|p| p.metered_kwh.is_none())
            .count()
    }
}

/// Why a set of readings cannot be settled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Two readings for one account at one node.
    #[error("reading for account `{account}` at node `{node}`: duplicate reading")]
    Duplicate {
        /// Account.
        account: String,
        /// Node.
        node: String,
    },
    /// The node is not in the network.
    #[error("reading for account `{account}`: node `{node}` is not in the network")]
    UnknownNode {
        /// Account.
        account: String,
        /// Node.
        node: String,
    },
    /// An energy out of range or finer than the meter scale.
    #[error("reading for account `{account}` at node `{node}`: {field} {reason}")]
    Energy {
        /// Account.
        account: String,
        /// Node.
        node: String,
        /// `import_kwh` or `export_kwh`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The rules are out of range.
    #[error("delivery rules: {0}")]
    Rules(String),
}

/// Checks one reading's energies: non-negative, at most [`METER_KWH_MAX`], at most
/// [`METER_KWH_SCALE`] decimals. The live market's intake calls this too.
pub fn check_energy(field: &'static str, kwh: Decimal) -> Result<(), String> {
    if kwh.is_sign_negative() && !kwh.is_zero() {
        return Err(format!("{kwh} is negative"));
    }
    if kwh > METER_KWH_MAX {
        return Err(format!("{kwh} exceeds {METER_KWH_MAX} kWh"));
    }
    if kwh.normalize().scale() > METER_KWH_SCALE {
        return Err(format!(
            "{kwh} has more than {METER_KWH_SCALE} decimals ({field} is metered to the Wh/1000)"
        ));
    }
    Ok(())
}

/// A flexibility allocation of one position, in canonical order.
struct Allocation<'a> {
    offer: &'a str,
    requirement: usize,
    up: bool,
    /// Size, kW·min.
    size: Decimal,
}

#[derive(Default)]
struct Acc<'a> {
    cleared: Decimal,
    metered: Option<Decimal>,
    allocations: Vec<Allocation<'a>>,
}

/// Settles one cleared interval's metered delivery. `readings` may come in any order; the
/// result does not depend on it.
pub fn settle_delivery(
    market: &Market,
    clearing: &Clearing,
    readings: &[MeterReading],
    rules: &DeliveryRules,
) -> Result<Delivery, DeliveryError> {
    if rules.imbalance_spread.is_sign_negative() && !rules.imbalance_spread.is_zero() {
        return Err(DeliveryError::Rules("imbalance_spread is negative".into()));
    }
    if rules.flex_shortfall_penalty.is_sign_negative() && !rules.flex_shortfall_penalty.is_zero() {
        return Err(DeliveryError::Rules(
            "flex_shortfall_penalty is negative".into(),
        ));
    }
    let minutes = Decimal::from(clearing.interval_minutes);
    let node_ids = market.node_ids();
    let node_index: HashMap<&str, usize> = node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    // (account, node id) → accumulated position; BTreeMap gives the canonical order.
    let mut acc: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
    let participant_orders = market.participant_order_count();
    for fill in clearing.orders.iter().take(participant_orders) {
        if fill.accepted_total.is_zero() {
            continue;
        }
        let e = fill.accepted_total * minutes;
        let slot = acc
            .entry((fill.account.as_str(), node_ids[fill.node].as_str()))
            .or_default();
        match fill.side {
            Side::Sell => slot.cleared += e,
            Side::Buy => slot.cleared -= e,
        }
    }
    for (offer, result) in market.flex_offers().iter().zip(&clearing.flex_offers) {
        for &(ri, q) in &result.allocations {
            if q.is_zero() {
                continue;
            }
            acc.entry((offer.account.as_str(), node_ids[offer.node].as_str()))
                .or_default()
                .allocations
                .push(Allocation {
                    offer: offer.id.as_str(),
                    requirement: ri,
                    up: offer.direction == Direction::Up,
                    size: q * minutes,
                });
        }
    }
    for r in readings {
        let node = r.node.as_str();
        if !node_index.contains_key(node) {
            return Err(DeliveryError::UnknownNode {
                account: r.account.clone(),
                node: r.node.clone(),
            });
        }
        for (field, v) in [("import_kwh", r.import_kwh), ("export_kwh", r.export_kwh)] {
            check_energy(field, v).map_err(|reason| DeliveryError::Energy {
                account: r.account.clone(),
                node: r.node.clone(),
                field,
                reason,
            })?;
        }
        let slot = acc.entry((r.account.as_str(), node)).or_default();
        if slot.metered.is_some() {
            return Err(DeliveryError::Duplicate {
                account: r.account.clone(),
                node: r.node.clone(),
            });
        }
        slot.metered = Some((r.export_kwh - r.import_kwh) * Decimal::from(60));
    }

    let bounds = grid_bounds(market, clearing, &node_index);
    let mut positions = Vec::with_capacity(acc.len());
    let mut postings = Vec::new();
    for ((account, node), mut a) in acc {
        let ni = node_index[node];
        let lambda = clearing.nodes[ni].price;
        let metered = a.metered.unwrap_or(a.cleared);
        let deviation = metered - a.cleared;
        a.allocations.sort_by(|x, y| {
            (x.offer, &clearing.flex_requirements[x.requirement].id)
                .cmp(&(y.offer, &clearing.flex_requirements[y.requirement].id))
        });
        // What the deviation offers in each direction; a missing reading delivers nothing.
        let (mut up_left, mut down_left) = if a.metered.is_some() {
            (
                deviation.max(Decimal::ZERO),
                (-deviation).max(Decimal::ZERO),
            )
        } else {
            (Decimal::ZERO, Decimal::ZERO)
        };
        let mut procured = Decimal::ZERO;
        let mut delivered = Decimal::ZERO;
        let mut shortfall_total = Decimal::ZERO;
        let mut flex_amount = Decimal::ZERO;
        for al in &a.allocations {
            let left = if al.up { &mut up_left } else { &mut down_left };
            let got = (*left).min(al.size);
            *left -= got;
            let sign = if al.up { Decimal::ONE } else { -Decimal::ONE };
            procured += sign * al.size;
            delivered += sign * got;
            let shortfall = al.size - got;
            if shortfall.is_zero() {
                continue;
            }
            shortfall_total += shortfall;
            let req = &clearing.flex_requirements[al.requirement];
            let returned = kwmin_money(req.price, shortfall);
            let penalty = kwmin_money(req.price * rules.flex_shortfall_penalty, shortfall);
            for (amount, what) in [(returned, "shortfall"), (penalty, "penalty")] {
                if amount.is_zero() {
                    continue;
                }
                let memo = format!("flex {what} {} for {}", al.offer, req.id);
                flex_amount -= amount;
                pair(&mut postings, account, &req.account, amount, memo);
            }
        }
        let imbalance = deviation - delivered;
        let (price, amount) = if imbalance.is_zero() {
            (None, Decimal::ZERO)
        } else {
            let (g_import, g_export) = bounds[clearing.nodes[ni].island];
            let s = rules.imbalance_spread;
            let p = if imbalance > Decimal::ZERO {
                lambda.min((lambda - s).max(g_export))
            } else {
                lambda.max((lambda + s).min(g_import))
            };
            let amount = kwmin_money(p, imbalance);
            if !amount.is_zero() {
                let memo = format!("imbalance {account} at {node}");
                pair(&mut postings, IMBALANCE_ACCOUNT, account, amount, memo);
            }
            (Some(round_at(p, PRICE_SCALE)), amount)
        };
        positions.push(Position {
            account: account.to_string(),
            node: node.to_string(),
            cleared_kwh: kwh(a.cleared),
            metered_kwh: a.metered.map(kwh),
            flex_procured_kwh: kwh(procured),
            flex_delivered_kwh: kwh(delivered),
            flex_shortfall_kwh: kwh(shortfall_total),
            imbalance_kwh: kwh(imbalance),
            imbalance_price: price,
            imbalance_amount: amount,
            flex_amount: round_at(flex_amount, MONEY_SCALE),
        });
    }
    debug_assert!(postings.iter().map(|p| p.amount).sum::<Decimal>().is_zero());
    Ok(Delivery {
        interval_minutes: clearing.interval_minutes,
        positions,
        postings,
    })
}

/// `debtor` pays `amount` (> 0) to `creditor`: two postings of exact opposites. A negative
/// `amount` reverses the direction.
fn pair(postings: &mut Vec<Posting>, debtor: &str, creditor: &str, amount: Decimal, memo: String) {
    let (from, to, a) = if amount.is_sign_negative() {
        (creditor, debtor, -amount)
    } else {
        (debtor, creditor, amount)
    };
    postings.push(Posting {
        account: from.to_string(),
        amount: -a,
        memo: memo.clone(),
    });
    postings.push(Posting {
        account: to.to_string(),
        amount: a,
        memo,
    });
}

/// Money for `price` (per kWh) × `kwmin` kW·min, rounded once by the one rule. `price × kwmin`
/// has at most 12 decimals, so dividing by 60 at 28 digits cannot move the result across a
/// half-cent: the rounding is exact.
fn kwmin_money(price: Decimal, kwmin: Decimal) -> Decimal {
    round_at(price * kwmin / Decimal::from(60), MONEY_SCALE)
}

fn kwh(kwmin: Decimal) -> Decimal {
    round_at(kwmin / Decimal::from(60), METER_KWH_SCALE)
}

/// Per island: (highest grid import price, lowest grid export price), or (cap, floor) where
/// the island has no grid connection.
fn grid_bounds(
    market: &Market,
    clearing: &Clearing,
    node_index: &HashMap<&str, usize>,
) -> Vec<(Decimal, Decimal)> {
    let islands = clearing.islands.len().max(
        clearing
            .nodes
            .iter()
            .map(|n| n.island + 1)
            .max()
            .unwrap_or(0),
    );
    let mut bounds: Vec<Option<(Decimal, Decimal)>> = vec![None; islands];
    for g in market.grid_connections() {
        let Some(&ni) = node_index.get(g.node.as_str()) else {
            continue;
        };
        let slot = &mut bounds[clearing.nodes[ni].island];
        *slot = Some(match *slot {
            None => (g.import_price, g.export_price),
            Some((i, e)) => (i.max(g.import_price), e.min(g.export_price)),
        });
    }
    bounds
        .into_iter()
        .map(|b| b.unwrap_or((market.price_cap(), market.price_floor())))
        .collect()
}
