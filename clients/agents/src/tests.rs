//! The simulator's rules against hand-worked numbers and properties: battery energy is
//! conserved to the last digit and its state of charge never leaves its bounds whatever the
//! fills, an EV reaches its need by departure when the market lets it, PV is zero at night, the
//! same seed gives the same orders and another seed another population.

use std::collections::BTreeMap;

use baton_engine::model::{Direction, Side};
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::devices::{Battery, Ev, Moment};
use super::population::{GridPrices, Population, PopulationFile};
use super::strategy::{MarketContext, Plan, Purpose};

const POPULATION: &str = include_str!("../../../scenarios/ieee33-agents.toml");
const FEEDER: &str = include_str!("../../../scenarios/ieee33-feeder.toml");
/// Midnight UTC, aligned to five minutes.
const DAY0: i64 = 1_800_000_000 - 1_800_000_000 % 86_400;

/// The shipped population file with `seed` and `prosumers` households, without its clusters
/// and bus loads (tests of those use the whole file).
fn file(seed: u64, prosumers: usize) -> PopulationFile {
    let mut f = PopulationFile::parse(POPULATION).unwrap();
    f.seed = seed;
    f.prosumers = prosumers;
    f.cluster.clear();
    f.bus_load = None;
    f
}

fn population(seed: u64, prosumers: usize) -> Population {
    Population::generate(&file(seed, prosumers), FEEDER).unwrap()
}

fn ctx(p: &Population, interval_start: i64) -> MarketContext {
    MarketContext {
        at: Moment {
            interval_start,
            interval_minutes: 5,
            utc_offset_minutes: p.utc_offset_minutes,
        },
        price_floor: p.network.price_floor,
        price_cap: p.network.price_cap,
        grid: p.grid,
    }
}

/// A stand-in market that obeys the fill rule at a given price: buys priced above it and sells
/// below it are filled, must-take blocks always, anything else not at all.
fn fills_at(plan: &Plan, price: Decimal) -> Vec<(Purpose, Decimal)> {
    plan.orders
        .iter()
        .map(|o| {
            let q = o
                .blocks
                .iter()
                .filter(|b| match (o.side, b.price) {
                    (_, None) => true,
                    (Side::Buy, Some(p)) => p > price,
                    (Side::Sell, Some(p)) => p < price,
                })
                .map(|b| b.quantity)
                .sum();
            (o.purpose, q)
        })
        .collect()
}

/// A price that swings over the day between 0.06 and 0.26, so every strategy gets to trade.
fn swing_price(interval: i64) -> Decimal {
    let k = (interval.div_euclid(300)).rem_euclid(40);
    dec!(0.06) + Decimal::from(if k < 20 { k } else { 40 - k }) * dec!(0.01)
}

/// Runs a population for `intervals` against the stand-in market; returns every plan.
fn simulate(p: &mut Population, start: i64, intervals: i64) -> Vec<Vec<Plan>> {
    let mut all = Vec::new();
    for k in 0..intervals {
        let s = start + k * 300;
        let c = ctx(p, s);
        let price = swing_price(s);
        let (strategy, flex) = (p.strategy.clone(), p.flex.clone());
        let mut plans = Vec::new();
        for a in &mut p.agents {
            let plan = a.plan(&c, &strategy, &flex);
            a.apply(&plan, &fills_at(&plan, price), &[]).unwrap();
            a.observe_price(price);
            plans.push(plan);
        }
        all.push(plans);
    }
    all
}

#[test]
fn the_shipped_population_expands_onto_the_feeder_by_load() {
    let p = population(33, 300);
    assert_eq!(p.agents.len(), 300);
    assert_eq!(p.agents[0].id(), "h001");
    assert_eq!(p.agents[299].id(), "h300");
    assert_eq!(
        p.grid,
        GridPrices {
            import: dec!(0.28),
            export: dec!(0.04)
        }
    );
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &p.agents {
        *per_node.entry(a.node()).or_default() += 1;
    }
    // The feeder head (bus 1) carries no load; every other bus of case33bw does.
    assert!(!per_node.contains_key("1"));
    assert_eq!(per_node.len(), 32);
    // Bus 24 carries 420 kW of the case's 3,715 kW: 300 × 420 / 3715 = 33.92, and its large
    // remainder earns it one of the 19 agents left after the floors: 34. Bus 30 (200 kW):
    // 16.15 → 16.
    assert_eq!(per_node["24"], 34);
    assert_eq!(per_node["30"], 16);
    assert_eq!(per_node["7"], 16);
    // Device counts are exact: round(share × 300).
    let count = |f: &dyn Fn(&super::Agent) -> bool| p.agents.iter().filter(|a| f(a)).count();
    assert_eq!(count(&|a| a.pv().is_some()), 150);
    assert_eq!(count(&|a| a.battery().is_some()), 60);
    assert_eq!(count(&|a| a.ev().is_some()), 75);
    for a in &p.agents {
        assert!(a.capacity_kw() >= Decimal::ONE);
        assert_eq!(a.capacity_kw().scale(), 0, "whole kW");
    }
}

#[test]
fn participants_csv_lists_every_agent_with_its_key() {
    let p = population(33, 30);
    let csv = p.participants_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,node,public_key,roles,capacity_kw");
    assert_eq!(lines.len(), 31);
    let whole = shipped().participants_csv();
    assert_eq!(whole.lines().count(), 1 + 300 + 144 + 32);
    assert!(whole.contains("\nbus-24,24,"));
    let f: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(f.len(), 5);
    assert_eq!(f[0], "h001");
    assert_eq!(f[1], p.agents[0].node());
    assert_eq!(
        f[2],
        hex::encode(p.agents[0].key().verifying_key().to_bytes())
    );
    assert_eq!(f[3], "prosumer");
    assert_eq!(f[4], p.agents[0].capacity_kw().to_string());
}

#[test]
fn same_seed_gives_the_same_orders() {
    let (mut a, mut b) = (population(7, 60), population(7, 60));
    let start = DAY0 + 6 * 3600;
    assert_eq!(simulate(&mut a, start, 288), simulate(&mut b, start, 288));
    for (x, y) in a.agents.iter().zip(&b.agents) {
        assert_eq!(x.battery(), y.battery());
        assert_eq!(x.key().to_bytes(), y.key().to_bytes());
    }
}

#[test]
fn different_seed_gives_a_different_population() {
    let (a, b) = (population(7, 60), population(8, 60));
    let keys_equal = a
        .agents
        .iter()
        .zip(&b.agents)
        .filter(|(x, y)| x.key().to_bytes() == y.key().to_bytes())
        .count();
    assert_eq!(keys_equal, 0);
    let sizes = |p: &Population| -> Vec<Decimal> {
        p.agents.iter().map(|a| a.household().mean_kw).collect()
    };
    assert_ne!(sizes(&a), sizes(&b));
    let owners =
        |p: &Population| -> Vec<bool> { p.agents.iter().map(|a| a.battery().is_some()).collect() };
    assert_ne!(owners(&a), owners(&b));
}

#[test]
fn a_day_of_trading_respects_capacity_floor_cap_and_pv_darkness() {
    let mut p = population(11, 120);
    let start = DAY0;
    let plans = simulate(&mut p, start, 288);
    let mut sold_by_households_at_noon = Decimal::ZERO;
    for (k, interval) in plans.iter().enumerate() {
        for (agent, plan) in p.agents.iter().zip(interval) {
            let mut side_total: BTreeMap<&str, Decimal> = BTreeMap::new();
            for o in &plan.orders {
                assert!(!o.blocks.is_empty() && o.blocks.len() <= 16);
                for b in &o.blocks {
                    assert!(b.quantity > Decimal::ZERO);
                    assert!(b.quantity.scale() <= 6);
                    if o.purpose == Purpose::Household && o.side == Side::Buy {
                        // A household's net load is inflexible: must-take.
                        assert_eq!(b.price, None);
                    }
                    if let Some(pr) = b.price {
                        assert!(pr >= p.network.price_floor && pr <= p.network.price_cap);
                        assert!(pr.scale() <= 6);
                        if o.purpose == Purpose::Household {
                            // Only a surplus is priced: a quantum below the export price.
                            assert_eq!(o.side, Side::Sell);
                            assert_eq!(pr, p.grid.export - dec!(0.000001));
                        }
                    }
                }
                let key = if o.side == Side::Buy { "buy" } else { "sell" };
                *side_total.entry(key).or_default() += o.quantity();
            }
            for (_, t) in side_total {
                assert!(t <= agent.capacity_kw(), "{} over capacity", agent.id());
            }
            let hour = (k as i64 * 5 + 2) / 60;
            let household_sells = plan
                .orders
                .iter()
                .any(|o| o.purpose == Purpose::Household && o.side == Side::Sell);
            if !(6..18).contains(&hour) {
                // No sun: no household has a surplus to sell.
                assert!(!household_sells, "{} sells at {hour} h", agent.id());
            }
            if hour == 12 && household_sells {
                sold_by_households_at_noon += plan.quantity(Purpose::Household);
            }
        }
    }
    assert!(
        sold_by_households_at_noon > Decimal::ZERO,
        "PV sells at noon"
    );
}

#[test]
fn an_ev_reaches_its_need_when_only_must_take_is_filled() {
    // Arrives 18:00, leaves 07:00, needs 20 kWh from a 7 kW charger (≈ 2.9 h of 13 h).
    let p = population(3, 1);
    let a = &p.agents[0];
    let ev = Ev::new(dec!(20), dec!(7), 18 * 60, 7 * 60);
    let mut agent = super::Agent::new(
        "e1".into(),
        "2".into(),
        dec!(100),
        a.key().clone(),
        3,
        a.household().clone(),
        None,
        None,
        Some(ev),
        12,
    );
    let (strategy, flex) = (p.strategy.clone(), p.flex.clone());
    let arrive = DAY0 + 18 * 3600;
    let mut must_take_seen = false;
    let mut last_delivered = Decimal::ZERO;
    for k in 0..156 {
        let c = ctx(&p, arrive + k * 300);
        let plan = agent.plan(&c, &strategy, &flex);
        // A stingy market: only must-take blocks are filled.
        let ev_fill: Decimal = plan
            .orders
            .iter()
            .filter(|o| o.purpose == Purpose::Ev)
            .flat_map(|o| &o.blocks)
            .filter(|b| b.price.is_none())
            .map(|b| b.quantity)
            .sum();
        must_take_seen |= ev_fill > Decimal::ZERO;
        if ev_fill > Decimal::ZERO {
            // Must-take starts only when the deadline binds: 20 kWh at 7 kW is 172 min,
            // 34.3 intervals, so from interval 156 − 35 = 121 on.
            assert!(k >= 120, "must-take at interval {k}");
        }
        agent.apply(&plan, &[(Purpose::Ev, ev_fill)], &[]).unwrap();
        last_delivered = agent.ev().unwrap().delivered_kwh(&c.at);
    }
    assert!(must_take_seen);
    assert!(last_delivered >= dec!(20), "delivered {last_delivered}");
    // …and not more than one rounding quantum per interval over it.
    assert!(last_delivered < dec!(20.001));
    // After departure the EV is gone: only the household trades.
    let gone = ctx(&p, arrive + 156 * 300);
    let plan = agent.plan(&gone, &strategy, &flex);
    assert_eq!(plan.quantity(Purpose::Ev), Decimal::ZERO);
}

#[test]
fn an_ev_bids_more_as_its_slack_shrinks() {
    let p = population(3, 1);
    let a = &p.agents[0];
    let mut agent = super::Agent::new(
        "e1".into(),
        "2".into(),
        dec!(100),
        a.key().clone(),
        3,
        a.household().clone(),
        None,
        None,
        Some(Ev::new(dec!(20), dec!(7), 18 * 60, 7 * 60)),
        12,
    );
    // Plugged in at 18:00 and never filled: the later, the less time, the higher the bid.
    let mut bids = Vec::new();
    for k in 0..=110 {
        let plan = agent.plan(&ctx(&p, DAY0 + 18 * 3600 + k * 300), &p.strategy, &p.flex);
        let bid = plan
            .orders
            .iter()
            .find(|o| o.purpose == Purpose::Ev)
            .and_then(|o| o.blocks.iter().find_map(|b| b.price))
            .unwrap();
        bids.push(bid);
        agent.apply(&plan, &[], &[]).unwrap();
    }
    assert!(bids[0] < bids[60]);
    assert!(bids[60] < bids[110]);
    assert!(bids.windows(2).all(|w| w[0] <= w[1]), "never falls");
    // ρ = 1200 kW·min / (156 × 35) = 0.219780 at the start: 1.1 + 1.4 × 0.219780 = 1.407692
    // of the 0.24 spread above 0.04 → 0.377846, above the 0.28 import price.
    assert_eq!(bids[0], dec!(0.377846));
}

#[test]
fn battery_prices_follow_the_moving_average() {
    let p = population(3, 1);
    let a = &p.agents[0];
    let mut agent = super::Agent::new(
        "b1".into(),
        "2".into(),
        dec!(100),
        a.key().clone(),
        3,
        a.household().clone(),
        None,
        Some(Battery::new(dec!(10), dec!(5), dec!(0.9), dec!(0.5))),
        None,
        3,
    );
    let mut no_flex = p.flex.clone();
    no_flex.enabled = false;
    let c = ctx(&p, DAY0 + 12 * 3600);
    let prices = |agent: &super::Agent| {
        let plan = agent.plan(&c, &p.strategy, &no_flex);
        let get = |pur| {
            plan.orders
                .iter()
                .find(|o| o.purpose == pur)
                .map(|o| (o.blocks[0].quantity, o.blocks[0].price.unwrap()))
                .unwrap()
        };
        (get(Purpose::BatteryCharge), get(Purpose::BatteryDischarge))
    };
    // No history: reference 0.16 (midpoint of 0.04 and 0.28), band 0.1 × 0.24 = 0.024, half
    // full so no lean: charge at 0.136, discharge at 0.184, 5 kW each way.
    assert_eq!(
        prices(&agent),
        ((dec!(5), dec!(0.136)), (dec!(5), dec!(0.184)))
    );
    // K = 3: after 0.10, 0.20, 0.30, 0.12 the average is (0.20 + 0.30 + 0.12) / 3 = 0.206667.
    for x in [dec!(0.10), dec!(0.20), dec!(0.30), dec!(0.12)] {
        agent.observe_price(x);
    }
    assert_eq!(
        prices(&agent),
        ((dec!(5), dec!(0.182667)), (dec!(5), dec!(0.230667)))
    );
    // With flexibility, a quarter of each headroom is offered instead.
    let plan = agent.plan(&c, &p.strategy, &p.flex);
    assert_eq!(plan.quantity(Purpose::BatteryCharge), dec!(3.75));
    let up: Vec<_> = plan
        .flex
        .iter()
        .map(|f| (f.direction, f.quantity, f.price))
        .collect();
    assert_eq!(
        up,
        vec![
            (Direction::Up, dec!(1.25), dec!(0.03)),
            (Direction::Down, dec!(1.25), dec!(0.02))
        ]
    );
}

#[test]
fn fills_above_the_plan_are_refused_and_change_nothing() {
    let mut p = population(5, 40);
    let c = ctx(&p, DAY0 + 12 * 3600);
    let (s, f) = (p.strategy.clone(), p.flex.clone());
    let a = p.agents.iter_mut().find(|a| a.battery().is_some()).unwrap();
    let plan = a.plan(&c, &s, &f);
    let before = a.battery().cloned();
    let too_much = plan.quantity(Purpose::BatteryDischarge) + dec!(0.000001);
    assert!(a
        .apply(&plan, &[(Purpose::BatteryDischarge, too_much)], &[])
        .is_err());
    // Two fills for one order that sum past it are refused too.
    let half = plan.quantity(Purpose::BatteryDischarge) / dec!(2) + dec!(0.000001);
    assert!(a
        .apply(
            &plan,
            &[
                (Purpose::BatteryDischarge, half),
                (Purpose::BatteryDischarge, half)
            ],
            &[]
        )
        .is_err());
    assert_eq!(a.battery().cloned(), before);
    assert!(a.apply(&plan, &[(Purpose::Ev, dec!(1))], &[]).is_err());
}

#[test]
fn population_file_errors_name_the_field() {
    let bad = |from: &str, to: &str, field: &str| {
        let text = POPULATION.replacen(from, to, 1);
        assert_ne!(text, POPULATION, "{from} not found");
        let e = PopulationFile::parse(&text).unwrap_err().to_string();
        assert!(e.contains(field), "{e} lacks {field}");
    };
    bad("prosumers = 300", "prosumers = 0", "prosumers");
    bad("pv = \"0.5\"", "pv = \"1.5\"", "mix.pv");
    bad(
        "battery_margin = \"0.1\"",
        "battery_margin = \"1.5\"",
        "strategy.battery_margin",
    );
    bad("share = \"0.6\"", "share = \"1.2\"", "bus_load.share");
    bad(
        "deviating_share = \"0.1\"",
        "deviating_share = \"-0.1\"",
        "delivery.deviating_share",
    );
    bad("name = \"farm\"", "name = \"estate\"", "cluster[1].name");
    bad(
        "charger_kw = { min = \"11\", max = \"11\" }",
        "charger_kw = { min = \"11\", max = \"10\" }",
        "cluster[0].ev.charger_kw",
    );
    bad(
        "departure_h = { min = \"6\", max = \"8.5\" }",
        "departure_h = { min = \"6\", max = \"18\" }",
        "ev.departure_h",
    );
    bad("seed = 33", "seed = 33\ncolour = 1", "colour");
    let mut f = file(1, 10);
    f.grid_connection = "nowhere".into();
    let e = Population::generate(&f, FEEDER).unwrap_err().to_string();
    assert!(e.contains("grid_connection"), "{e}");
}

/// Battery fills as a property: any sequence of fills within what the plan offered keeps the
/// state of charge in [0, capacity] and conserves energy exactly; a fill it cannot take is
/// refused and changes nothing.
/// (energy kWh, power kW, efficiency, initial soc, fills as (charge ‰, discharge ‰, past the
/// limits)).
type BatteryCase = (Decimal, Decimal, Decimal, Decimal, Vec<(u32, u32, bool)>);

fn battery_case() -> impl Strategy<Value = BatteryCase> {
    (
        1u32..2000,  // energy, 0.01 kWh
        1u32..1000,  // power, 0.01 kW
        50u32..=100, // efficiency, %
        0u32..=100,  // initial soc, %
        prop::collection::vec((0u32..=1000, 0u32..=1000, any::<bool>()), 1..60),
    )
        .prop_map(|(e, pw, eta, soc, fills)| {
            (
                Decimal::new(e.into(), 2),
                Decimal::new(pw.into(), 2),
                Decimal::new(eta.into(), 2),
                Decimal::new(soc.into(), 2),
                fills,
            )
        })
}

proptest! {
    #[test]
    fn battery_conserves_energy_and_never_leaves_its_bounds(
        (energy, power, eta, soc, fills) in battery_case()
    ) {
        let mut b = Battery::new(energy, power, eta, soc);
        let start = b.stored_kwmin();
        let (mut into, mut out) = (Decimal::ZERO, Decimal::ZERO);
        for (c, d, overshoot) in fills {
            // A share (‰) of each limit, or past it.
            let cl = b.charge_limit_kw(5);
            let dl = b.discharge_limit_kw(5);
            let mut charge = (cl * Decimal::new(c.into(), 3)).round_dp(6);
            let mut discharge = (dl * Decimal::new(d.into(), 3)).round_dp(6);
            if overshoot {
                charge = cl + Decimal::new(1, 6);
                discharge = dl + Decimal::new(1, 6);
            }
            let before = b.clone();
            match b.apply(charge, discharge, 5) {
                Ok(()) => {
                    // Past both limits can still be fine when the two nearly cancel out.
                    into += charge * Decimal::from(5);
                    out += discharge * Decimal::from(5);
                }
                Err(_) => {
                    prop_assert!(overshoot);
                    prop_assert_eq!(&b, &before);
                }
            }
            prop_assert!(b.stored_kwmin() >= Decimal::ZERO);
            prop_assert!(b.stored_kwmin() <= energy * Decimal::from(60));
            // Energy balance, exact: stored = start + in × efficiency − out (kW·min).
            prop_assert_eq!(b.stored_kwmin(), start + into * eta - out);
        }
    }

    #[test]
    fn agents_take_any_fill_within_their_plan_and_stay_in_bounds(
        seed in 0u64..1000,
        hour in 0i64..24,
        shares in prop::collection::vec(0u32..=1000, 4),
    ) {
        let mut p = population(seed, 12);
        let c = ctx(&p, DAY0 + hour * 3600);
        let (s, f) = (p.strategy.clone(), p.flex.clone());
        for a in &mut p.agents {
            let plan = a.plan(&c, &s, &f);
            let fills: Vec<(Purpose, Decimal)> = plan
                .orders
                .iter()
                .enumerate()
                .map(|(i, o)| (o.purpose, (o.quantity() * Decimal::new(shares[i].into(), 3)).round_dp_with_strategy(6, rust_decimal::RoundingStrategy::ToZero)))
                .collect();
            let flex: Vec<(Direction, Decimal)> =
                plan.flex.iter().map(|x| (x.direction, x.quantity)).collect();
            a.apply(&plan, &fills, &flex).unwrap();
            if let Some(b) = a.battery() {
                prop_assert!(b.soc() >= Decimal::ZERO && b.soc() <= Decimal::ONE);
            }
        }
    }
}

#[test]
fn an_ev_found_plugged_in_at_the_start_is_assumed_on_track() {
    // Arrives 18:00, leaves 07:00 (780 min), needs 20 kWh. Found at 04:00, 600 min in: it is
    // assumed to hold 20 × 600 / 780 = 15.384615 kWh, so 4.615385 kWh are left for 3 h at up
    // to 7 kW — nothing must be taken yet.
    let p = population(3, 1);
    let a = &p.agents[0];
    let mut agent = super::Agent::new(
        "e1".into(),
        "2".into(),
        dec!(100),
        a.key().clone(),
        3,
        a.household().clone(),
        None,
        None,
        Some(Ev::new(dec!(20), dec!(7), 18 * 60, 7 * 60)),
        12,
    );
    let c = ctx(&p, DAY0 + 4 * 3600);
    let ev = agent.ev().unwrap();
    assert_eq!(ev.delivered_kwh(&c.at).round_dp(6), dec!(15.384615));
    let plan = agent.plan(&c, &p.strategy, &p.flex);
    let ev_order = plan
        .orders
        .iter()
        .find(|o| o.purpose == Purpose::Ev)
        .unwrap();
    assert!(
        ev_order.blocks.iter().all(|b| b.price.is_some()),
        "no must-take"
    );
    // A fill of 7 kW for 5 minutes adds 35 kW·min (0.583333 kWh) to that.
    agent.apply(&plan, &[(Purpose::Ev, dec!(7))], &[]).unwrap();
    let later = ctx(&p, DAY0 + 4 * 3600 + 300);
    let got = agent.ev().unwrap().delivered_kwh(&later.at);
    // 923.076923 + 35 = 958.076923 kW·min = 15.967949 kWh.
    assert_eq!(got.round_dp(6), dec!(15.967949));
    // The next evening's session starts from nothing.
    let evening = ctx(&p, DAY0 + 18 * 3600);
    assert_eq!(
        agent.ev().unwrap().delivered_kwh(&evening.at),
        Decimal::ZERO
    );
}

/// The whole shipped file: its 300 households, then the estate and the farms on their
/// laterals, then one must-take bus load per loaded bus.
fn shipped() -> Population {
    let mut f = PopulationFile::parse(POPULATION).unwrap();
    f.prosumers = 300;
    Population::generate(&f, FEEDER).unwrap()
}

#[test]
fn clusters_and_bus_loads_complete_the_feeder() {
    let p = shipped();
    assert_eq!(p.agents.len(), 300 + 120 + 24 + 32);
    let of = |prefix: &str| -> Vec<&super::Agent> {
        p.agents
            .iter()
            .filter(|a| a.id().starts_with(prefix))
            .collect()
    };
    let estate = of("estate-");
    assert_eq!(estate.len(), 120);
    assert_eq!(estate[0].id(), "estate-001");
    // Spread over 23, 24, 25 in turn; every home has its 11 kW wallbox, 24 have PV, 36 a
    // battery (exact shares).
    assert_eq!(
        (
            estate[0].node(),
            estate[1].node(),
            estate[2].node(),
            estate[3].node()
        ),
        ("23", "24", "25", "23")
    );
    assert!(estate
        .iter()
        .all(|a| a.ev().is_some_and(|e| e.charger_kw() == dec!(11))));
    assert_eq!(estate.iter().filter(|a| a.pv().is_some()).count(), 24);
    assert_eq!(estate.iter().filter(|a| a.battery().is_some()).count(), 36);
    for a in &estate {
        let (arrive, _) = a.ev().unwrap().window_min();
        assert!((17 * 60..=17 * 60 + 45).contains(&arrive), "{arrive}");
    }
    let farms = of("farm-");
    assert_eq!(farms.len(), 24);
    assert!(farms
        .iter()
        .all(|a| a.pv().is_some_and(|pv| pv.size_kw >= dec!(110)) && a.ev().is_none()));
    // Bus 24's scenario load is 546 kW (420 × 1.3); its bus load peaks at 0.6 of it, 327.6 kW
    // at 19:00, and carries no noise.
    let bus = p.agents.iter().find(|a| a.id() == "bus-24").unwrap();
    assert_eq!(bus.node(), "24");
    let at19 = ctx(&p, DAY0 + 19 * 3600 - 150).at;
    let peak = bus.net_load_kw(&at19);
    assert!((peak - dec!(327.6)).abs() < dec!(0.5), "{peak}");
    let plan = bus.plan(&ctx(&p, DAY0 + 19 * 3600 - 150), &p.strategy, &p.flex);
    assert_eq!(plan.orders.len(), 1);
    assert_eq!(plan.orders[0].side, Side::Buy);
    assert_eq!(plan.orders[0].blocks[0].price, None, "must-take");
    assert_eq!(plan.orders[0].quantity(), peak);
    assert!(of("bus-").iter().all(|a| a.node() != "1"));
}

#[test]
fn a_household_that_follows_its_clearing_meters_its_cleared_position() {
    use super::metering::{cleared_net_kw, meter, DeliveryRole};
    let p = shipped();
    let follow = DeliveryRole::default();
    let mut checked = 0;
    for hour in [3, 12, 18] {
        let c = ctx(&p, DAY0 + hour * 3600);
        for a in &p.agents {
            let plan = a.plan(&c, &p.strategy, &p.flex);
            // Filled exactly at what a market at 0.20 accepts, with every offer allocated.
            let fills = fills_at(&plan, dec!(0.20));
            let flex: Vec<(Direction, Decimal)> = plan
                .flex
                .iter()
                .map(|f| (f.direction, f.quantity))
                .collect();
            let m = meter(a, follow, &plan, &fills, &flex, &p.delivery);
            let net = cleared_net_kw(&plan, &fills, &flex);
            let kwh = baton_engine::units::round_at(net * Decimal::from(5) / dec!(60), 6);
            assert_eq!(m.import_kwh - m.export_kwh, kwh, "{} at {hour} h", a.id());
            assert!(m.import_kwh >= Decimal::ZERO && m.export_kwh >= Decimal::ZERO);
            assert!(m.import_kwh.is_zero() || m.export_kwh.is_zero());
            assert_eq!((m.import_kwh.scale(), m.export_kwh.scale()), (6, 6));
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * p.agents.len());
    // A household without devices, fully served, meters its physical net load.
    let h = p
        .agents
        .iter()
        .find(|a| a.pv().is_none() && a.battery().is_none() && a.ev().is_none())
        .unwrap();
    let c = ctx(&p, DAY0 + 19 * 3600);
    let plan = h.plan(&c, &p.strategy, &p.flex);
    let m = meter(
        h,
        follow,
        &plan,
        &fills_at(&plan, dec!(0.28)),
        &[],
        &p.delivery,
    );
    let load = h.net_load_kw(&c.at);
    assert_eq!(
        m.import_kwh,
        baton_engine::units::round_at(load / dec!(12), 6)
    );
}

#[test]
fn the_deviating_shares_are_exact_and_deviators_depart_from_their_clearing() {
    use super::metering::{delivery_roles, meter};
    let p = shipped();
    let n = p.agents.len();
    let roles = delivery_roles(&p);
    assert_eq!(roles.len(), n);
    // round(0.1 × 476) = 48 of each, chosen by independent shuffles.
    assert_eq!(roles.iter().filter(|r| r.deviates).count(), 48);
    assert_eq!(roles.iter().filter(|r| r.fails_flex).count(), 48);
    assert_ne!(
        roles.iter().map(|r| r.deviates).collect::<Vec<_>>(),
        roles.iter().map(|r| r.fails_flex).collect::<Vec<_>>()
    );
    assert_eq!(
        delivery_roles(&shipped()),
        roles,
        "the same seed, the same roles"
    );
    let mut other = PopulationFile::parse(POPULATION).unwrap();
    other.seed = 34;
    let other = Population::generate(&other, FEEDER).unwrap();
    assert_ne!(delivery_roles(&other), roles, "another seed, others");

    // A deviator's meter departs from its cleared position (at most by the deviation), and a
    // flexibility failure keeps its battery still for the allocation.
    let c = ctx(&p, DAY0 + 19 * 3600);
    let mut departed = 0;
    for (a, r) in p.agents.iter().zip(&roles) {
        let plan = a.plan(&c, &p.strategy, &p.flex);
        let fills = fills_at(&plan, dec!(0.30));
        let follows = meter(a, Default::default(), &plan, &fills, &[], &p.delivery);
        let got = meter(a, *r, &plan, &fills, &[], &p.delivery);
        let (f, g) = (
            follows.import_kwh - follows.export_kwh,
            got.import_kwh - got.export_kwh,
        );
        if r.deviates {
            let load_kwh = a.household().demand_kw(a.seed(), a.id(), &c.at) / 12.0;
            let bound = Decimal::from_f64_retain(load_kwh * 0.2).unwrap() + dec!(0.000002);
            assert!((g - f).abs() <= bound, "{}: {g} vs {f}", a.id());
            departed += usize::from(g != f);
        } else {
            assert_eq!(g, f);
        }
    }
    assert!(
        departed > 30,
        "{departed} of 48 deviators metered something else"
    );
    let b = p
        .agents
        .iter()
        .zip(&roles)
        .find(|(a, _)| a.battery().is_some())
        .unwrap()
        .0;
    let plan = b.plan(&c, &p.strategy, &p.flex);
    let up = [(Direction::Up, dec!(1.2))];
    let fails = super::metering::DeliveryRole {
        deviates: false,
        fails_flex: true,
    };
    let delivered = meter(b, Default::default(), &plan, &[], &up, &p.delivery);
    let failed = meter(b, fails, &plan, &[], &up, &p.delivery);
    // Delivering 1.2 kW of up-flexibility discharges 1.2 kW for 5 minutes: 0.1 kWh less drawn.
    assert_eq!(
        (failed.import_kwh - failed.export_kwh) - (delivered.import_kwh - delivered.export_kwh),
        dec!(0.1)
    );
}
