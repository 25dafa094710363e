//! The shipped feeder and population as one physical market, cleared by the engine directly:
//! every agent's orders for one interval (the households' must-take net load, the bus loads,
//! the EVs, the batteries, the PV surplus) on the IEEE 33-bus feeder with its conductor
//! ratings. At the evening peak the flows respect every limit but bind on the weak lateral
//! (buses 23–25, ACSR Turkey, 1,973 kW), whose prices rise above the rest of the feeder's; at
//! midday the farms' PV pushes the rural lateral (19–22) to its reverse-flow limit.

use std::collections::{BTreeMap, BTreeSet};

use baton_agents::{MarketContext, Moment, Population, PopulationFile};
use baton_engine::model::{BlockSpec, MarketSpec, OrderSpec, Side};
use baton_engine::{clear, Market};
use rust_decimal::Decimal;

const POPULATION: &str = include_str!("../../scenarios/ieee33-agents.toml");
const FEEDER: &str = include_str!("../../scenarios/ieee33-feeder.toml");
/// 2026-06-21 00:00 UTC, the demo's day.
const DAY: i64 = 1_782_000_000;
/// The weak lateral's first line (3 → 23) and its nodes.
const WEAK_LINE: &str = "l22";
const WEAK_NODES: [&str; 3] = ["23", "24", "25"];
/// The rural lateral's first line (2 → 19).
const RURAL_LINE: &str = "l18";

fn population() -> Population {
    Population::generate(&PopulationFile::parse(POPULATION).unwrap(), FEEDER).unwrap()
}

/// The network with every agent's orders for the interval at `t` (no prior fills: each agent
/// as it starts), and each order's must-take quantity and priced quantity per node.
fn book(p: &Population, t: i64) -> (MarketSpec, BTreeMap<String, (Decimal, Decimal)>) {
    let mut m = p.network.clone();
    m.orders.clear();
    m.devices.clear();
    m.flex_offers.clear();
    m.flex_requirements.clear();
    let ctx = MarketContext {
        at: Moment {
            interval_start: t,
            interval_minutes: 5,
            utc_offset_minutes: p.utc_offset_minutes,
        },
        price_floor: m.price_floor,
        price_cap: m.price_cap,
        grid: p.grid,
    };
    let mut demand: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for a in &p.agents {
        let plan = a.plan(&ctx, &p.strategy, &p.flex);
        for o in &plan.orders {
            if o.side == Side::Buy {
                let e = demand.entry(a.node().to_string()).or_default();
                for b in &o.blocks {
                    match b.price {
                        None => e.0 += b.quantity,
                        Some(_) => e.1 += b.quantity,
                    }
                }
            }
            m.orders.push(OrderSpec {
                id: format!("{}-{}", a.id(), o.purpose.as_str()),
                participant: Some(a.id().to_string()),
                node: a.node().to_string(),
                side: o.side,
                blocks: o
                    .blocks
                    .iter()
                    .map(|b| BlockSpec {
                        quantity: b.quantity,
                        price: b.price,
                    })
                    .collect(),
                device: None,
            });
        }
    }
    (m, demand)
}

fn capacity(m: &MarketSpec, line: &str) -> Decimal {
    m.lines
        .iter()
        .find(|l| l.id == line)
        .and_then(|l| l.capacity)
        .unwrap()
}

#[test]
fn the_evening_peak_binds_the_weak_lateral_and_separates_its_prices() {
    let p = population();
    // 17:55: every estate EV has arrived (17:00–17:45) and is charging on track.
    let (m, demand) = book(&p, DAY + 17 * 3600 + 55 * 60);
    // Hand check: what the lateral must take fits its line; with the EVs' bids it does not.
    let limit = capacity(&m, WEAK_LINE);
    assert_eq!(
        limit,
        Decimal::from(1973),
        "ACSR Turkey, 100 A at 12.66 kV, pf 0.9"
    );
    let (must, priced) = WEAK_NODES
        .iter()
        .map(|n| demand[*n])
        .fold((Decimal::ZERO, Decimal::ZERO), |a, b| {
            (a.0 + b.0, a.1 + b.1)
        });
    assert!(
        must < limit,
        "must-take {must} kW on the lateral is within {limit} kW"
    );
    assert!(
        must + priced > limit,
        "must-take {must} + priced {priced} kW exceed {limit} kW"
    );

    let market = Market::new(&m).unwrap();
    let (c, _) = clear(&market).unwrap();
    // Limits hold everywhere, nothing is relaxed: every must-take load is served.
    for l in &c.lines {
        if let Some(cap) = capacity_of(&m, &l.id) {
            assert!(l.flow.abs() <= cap, "{} carries {} > {cap}", l.id, l.flow);
        }
    }
    assert!(c.relaxations.is_empty(), "{:?}", c.relaxations);
    let weak = c.lines.iter().find(|l| l.id == WEAK_LINE).unwrap();
    assert!(weak.congested, "the weak lateral binds");
    assert_eq!(weak.flow, limit, "at its limit, into the lateral");
    let congested: BTreeSet<&str> = c
        .lines
        .iter()
        .filter(|l| l.congested)
        .map(|l| l.id.as_str())
        .collect();
    assert_eq!(
        congested,
        BTreeSet::from([WEAK_LINE]),
        "only the weak lateral"
    );
    let price: BTreeMap<&str, Decimal> = c.nodes.iter().map(|n| (n.id.as_str(), n.price)).collect();
    // The head is priced by the grid's import; behind the line, by the marginal EV bid.
    assert_eq!(price["1"], p.grid.import);
    for n in WEAK_NODES {
        assert!(
            price[n] > price["1"],
            "node {n} at {} above the head",
            price[n]
        );
        assert!(c.nodes.iter().find(|x| x.id == n).unwrap().congestion > Decimal::ZERO);
    }
    let distinct: BTreeSet<Decimal> = price.values().copied().collect();
    assert!(distinct.len() >= 2, "{distinct:?}");
}

fn capacity_of(m: &MarketSpec, line: &str) -> Option<Decimal> {
    m.lines
        .iter()
        .find(|l| l.id == line)
        .and_then(|l| l.capacity)
}

#[test]
fn midday_pv_pushes_the_rural_lateral_to_its_reverse_flow_limit() {
    let p = population();
    let (m, _) = book(&p, DAY + 12 * 3600);
    let (c, _) = clear(&Market::new(&m).unwrap()).unwrap();
    let rural = c.lines.iter().find(|l| l.id == RURAL_LINE).unwrap();
    // Flow is positive from 2 to 19: the farms' surplus flows back up at the limit.
    assert!(rural.congested, "{rural:?}");
    assert_eq!(rural.flow, -capacity(&m, RURAL_LINE));
    for l in &c.lines {
        if let Some(cap) = capacity_of(&m, &l.id) {
            assert!(l.flow.abs() <= cap, "{} carries {} > {cap}", l.id, l.flow);
        }
    }
}
