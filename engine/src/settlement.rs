//! Settlement of one cleared interval: who pays whom, exactly, and who supplied whom.
//!
//! Sign convention: a posting's amount is what the account *receives*; payments are negative.
//! Every interval's postings sum to exactly zero: each amount is rounded to the minor unit by
//! [`crate::units::money`], and whatever the roundings leave over is posted explicitly to
//! [`ROUNDING_ACCOUNT`].
//!
//! - Energy: every accepted order pays (buy) or receives (sell) its node's price × accepted
//!   quantity × duration.
//! - Congestion rent: buyers pay more, in total, than sellers receive wherever prices differ;
//!   that surplus (computed exactly, then rounded) goes to [`NETWORK_OPERATOR_ACCOUNT`].
//! - Flexibility: each accepted offer is paid its requirement's price × quantity × duration by
//!   the requirement's account (the network operator unless it names another).
//! - P2P attribution: each island's accepted buys are matched with its accepted sells, first
//!   among orders at the same node, then across the island, each time walking both sides in
//!   canonical order (nodes by id, then orders by id) and pairing the head of each list for the
//!   smaller of their remaining quantities. Every attribution carries both nodal prices and the
//!   network charge `(buyer price − seller price) × quantity × duration`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::clearing::Clearing;
use crate::model::{Market, Side, NETWORK_OPERATOR_ACCOUNT, ROUNDING_ACCOUNT};
use crate::units::money;

/// One posting of double-entry settlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Posting {
    /// Account credited (positive) or debited (negative).
    pub account: String,
    /// Amount at the money scale.
    pub amount: Decimal,
    /// What it is for, e.g. `energy o17`, `flex f3 for r1`, `congestion rent`.
    pub memo: String,
}

/// A buyer's energy attributed to a seller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Buy order id.
    pub buyer: String,
    /// Sell order id.
    pub seller: String,
    /// Quantity (power over the interval).
    pub quantity: Decimal,
    /// Nodal price at the buyer.
    pub buyer_price: Decimal,
    /// Nodal price at the seller.
    pub seller_price: Decimal,
    /// `(buyer price − seller price) × quantity × duration`, rounded to the money scale.
    pub network_charge: Decimal,
}

/// The settlement of one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settlement {
    /// Interval length in minutes.
    pub interval_minutes: u32,
    /// All postings, zero-sum.
    pub postings: Vec<Posting>,
    /// P2P attributions.
    pub attributions: Vec<Attribution>,
}

impl Settlement {
    /// Sum of all postings (always zero for a settlement built by [`settle`]).
    pub fn total(&self) -> Decimal {
        self.postings.iter().map(|p| p.amount).sum()
    }

    /// Net amount per account.
    pub fn balances(&self) -> BTreeMap<&str, Decimal> {
        let mut b: BTreeMap<&str, Decimal> = BTreeMap::new();
        for p in &self.postings {
            *b.entry(p.account.as_str()).or_default() += p.amount;
        }
        b
    }
}

/// Settles a clearing of `market`.
pub fn settle(market: &Market, clearing: &Clearing) -> Settlement {
    let minutes = clearing.interval_minutes;
    let mut postings = Vec::new();
    let mut rent_rate = Decimal::ZERO;
    for fill in &clearing.orders {
        if fill.accepted_total.is_zero() {
            continue;
        }
        let price = clearing.nodes[fill.node].price;
        let rate = price * fill.accepted_total;
        // Rounded after the sign is applied, so that a payment that rounds to nothing is
        // `0.00`, never `-0.00`; and a zero amount is not posted at all.
        let amount = match fill.side {
            Side::Buy => {
                rent_rate += rate;
                money(-rate, minutes)
            }
            Side::Sell => {
                rent_rate -= rate;
                money(rate, minutes)
            }
        };
        if amount.is_zero() {
            continue;
        }
        postings.push(Posting {
            account: fill.account.clone(),
            amount,
            memo: format!("energy {}", fill.id),
        });
    }
    let rent = money(rent_rate, minutes);
    if !rent.is_zero() {
        postings.push(Posting {
            account: NETWORK_OPERATOR_ACCOUNT.to_string(),
            amount: rent,
            memo: "congestion rent".into(),
        });
    }
    for offer in &clearing.flex_offers {
        for &(ri, q) in &offer.allocations {
            let req = &clearing.flex_requirements[ri];
            let amount = money(req.price * q, minutes);
            if amount.is_zero() {
                continue;
            }
            let memo = format!("flex {} for {}", offer.id, req.id);
            postings.push(Posting {
                account: offer.account.clone(),
                amount,
                memo: memo.clone(),
            });
            postings.push(Posting {
                account: req.account.clone(),
                amount: money(-req.price * q, minutes),
                memo,
            });
        }
    }
    let residue: Decimal = postings.iter().map(|p| p.amount).sum();
    if !residue.is_zero() {
        postings.push(Posting {
            account: ROUNDING_ACCOUNT.to_string(),
            amount: -residue,
            memo: "rounding residue".into(),
        });
    }
    debug_assert!(postings.iter().map(|p| p.amount).sum::<Decimal>().is_zero());
    Settlement {
        interval_minutes: minutes,
        postings,
        attributions: attribute(market, clearing),
    }
}

/// A side's remaining quantity, walked in canonical order.
struct Queue {
    items: Vec<(usize, Decimal)>,
    head: usize,
}

impl Queue {
    fn remaining(&self) -> impl Iterator<Item = &(usize, Decimal)> {
        self.items[self.head..].iter().filter(|i| !i.1.is_zero())
    }
}

fn attribute(market: &Market, clearing: &Clearing) -> Vec<Attribution> {
    let minutes = clearing.interval_minutes;
    let node_ids = market.node_ids();
    let mut by_node: Vec<(Vec<usize>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); node_ids.len()];
    let mut order_idx: Vec<usize> = (0..clearing.orders.len()).collect();
    order_idx.sort_by(|&a, &b| clearing.orders[a].id.cmp(&clearing.orders[b].id));
    for i in order_idx {
        let f = &clearing.orders[i];
        if f.accepted_total.is_zero() {
            continue;
        }
        match f.side {
            Side::Buy => by_node[f.node].0.push(i),
            Side::Sell => by_node[f.node].1.push(i),
        }
    }
    let mut out = Vec::new();
    let pair = |b: usize, s: usize, q: Decimal, out: &mut Vec<Attribution>| {
        let (fb, fs) = (&clearing.orders[b], &clearing.orders[s]);
        let (pb, ps) = (clearing.nodes[fb.node].price, clearing.nodes[fs.node].price);
        out.push(Attribution {
            buyer: fb.id.clone(),
            seller: fs.id.clone(),
            quantity: q,
            buyer_price: pb,
            seller_price: ps,
            network_charge: money((pb - ps) * q, minutes),
        });
    };
    for island in &clearing.islands {
        let mut left_buy = Vec::new();
        let mut left_sell = Vec::new();
        // Same node first.
        for &n in island {
            let mut buys = Queue {
                items: by_node[n]
                    .0
                    .iter()
                    .map(|&i| (i, clearing.orders[i].accepted_total))
                    .collect(),
                head: 0,
            };
            let mut sells = Queue {
                items: by_node[n]
                    .1
                    .iter()
                    .map(|&i| (i, clearing.orders[i].accepted_total))
                    .collect(),
                head: 0,
            };
            match_queues(&mut buys, &mut sells, &mut |b, s, q| {
                pair(b, s, q, &mut out)
            });
            left_buy.extend(buys.remaining().copied());
            left_sell.extend(sells.remaining().copied());
        }
        // Then across the island.
        let mut buys = Queue {
            items: left_buy,
            head: 0,
        };
        let mut sells = Queue {
            items: left_sell,
            head: 0,
        };
        match_queues(&mut buys, &mut sells, &mut |b, s, q| {
            pair(b, s, q, &mut out)
        });
        // Rule 7: demand served by a node shortfall, or supply taken by a spill, has no
        // counterparty and stays unattributed; everything else is matched.
        let (mut shortfall, mut spill) = (Decimal::ZERO, Decimal::ZERO);
        for r in &clearing.relaxations {
            let at = |id: &str| island.iter().any(|&n| node_ids[n] == id);
            match r.kind {
                "node_shortfall" if at(&r.id) => shortfall += r.quantity,
                "node_spill" if at(&r.id) => spill += r.quantity,
                _ => {}
            }
        }
        let left = |q: &Queue| q.remaining().map(|i| i.1).sum::<Decimal>();
        debug_assert_eq!(left(&buys) - left(&sells), shortfall - spill);
    }
    out
}

fn match_queues(buys: &mut Queue, sells: &mut Queue, emit: &mut dyn FnMut(usize, usize, Decimal)) {
    while buys.head < buys.items.len() && sells.head < sells.items.len() {
        let (b, qb) = buys.items[buys.head];
        let (s, qs) = sells.items[sells.head];
        let q = qb.min(qs);
        if !q.is_zero() {
            emit(b, s, q);
        }
        buys.items[buys.head].1 -= q;
        sells.items[sells.head].1 -= q;
        if buys.items[buys.head].1.is_zero() {
            buys.head += 1;
        }
        if sells.items[sells.head].1.is_zero() {
            sells.head += 1;
        }
    }
}
