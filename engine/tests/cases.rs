//! Hand-worked markets: each test states the arithmetic that fixes its expected numbers.

use std::collections::HashMap;

use baton_engine::clearing::{clear_with, Clearing, Method, ReferenceRule};
use baton_engine::model::{Market, MarketError};
use baton_engine::scenario;
use baton_engine::settlement::settle;
use baton_engine::study::write_result;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn market(toml: &str) -> Market {
    let s = scenario::parse(toml).expect("scenario parses");
    Market::new(&s.market).expect("market validates")
}

fn clear(m: &Market) -> Clearing {
    let (c, _) = clear_with(m, Method::Full).expect("clears");
    // Every hand case must also clear identically by the active-set method with a tiny band,
    // which forces it through several re-solves.
    let (a, _) = clear_with(
        m,
        Method::ActiveSet {
            band: Some(dec!(0.001)),
        },
    )
    .expect("clears by active set");
    assert_eq!(a.welfare, c.welfare, "active set welfare");
    c
}

fn price(c: &Clearing, node: &str) -> Decimal {
    c.nodes.iter().find(|n| n.id == node).expect("node").price
}

fn fill(c: &Clearing, order: &str) -> Decimal {
    c.orders
        .iter()
        .find(|o| o.id == order)
        .expect("order")
        .accepted_total
}

fn flow(c: &Clearing, line: &str) -> Decimal {
    c.lines.iter().find(|l| l.id == line).expect("line").flow
}

fn balances(m: &Market, c: &Clearing) -> HashMap<String, Decimal> {
    let s = settle(m, c);
    assert_eq!(s.total(), Decimal::ZERO, "postings sum to zero");
    s.balances()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

const HEADER: &str = r#"
name = "t"
interval_minutes = 60
price_floor = "-1000"
price_cap = "1000"
"#;

#[test]
fn uncongested_two_nodes_share_one_price() {
    // S1 10@20 at A, S2 10@30 at B, D 15@50 at B, line unlimited.
    // Merit order: S1 all 10, S2 5 of 10 (marginal) → price 30 at both nodes.
    // Welfare = 50·15 − 20·10 − 30·5 = 750 − 200 − 150 = 400. Flow A→B = 10.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}, {{ id = "B" }}]
lines = [{{ id = "AB", from = "A", to = "B", x = "0.1" }}]
orders = [
  {{ id = "S1", node = "A", side = "sell", blocks = [{{ quantity = "10", price = "20" }}] }},
  {{ id = "S2", node = "B", side = "sell", blocks = [{{ quantity = "10", price = "30" }}] }},
  {{ id = "D",  node = "B", side = "buy",  blocks = [{{ quantity = "15", price = "50" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "A"), dec!(30));
    assert_eq!(price(&c, "B"), dec!(30));
    assert_eq!(fill(&c, "S1"), dec!(10));
    assert_eq!(fill(&c, "S2"), dec!(5));
    assert_eq!(fill(&c, "D"), dec!(15));
    assert_eq!(flow(&c, "AB"), dec!(10));
    assert_eq!(c.welfare, dec!(400));
    assert!(c.nodes.iter().all(|n| n.congestion.is_zero()));
    // Hourly interval: D pays 30·15 = 450; S1 gets 300, S2 150; no congestion rent.
    let b = balances(&m, &c);
    assert_eq!(b["D"], dec!(-450));
    assert_eq!(b["S1"], dec!(300));
    assert_eq!(b["S2"], dec!(150));
    assert!(!b.contains_key("network-operator"));
}

/// The three-node loop with equal reactances: an injection at node 1 withdrawn at node 3 sends
/// 2/3 along 1→3 and 1/3 around 1→2→3; from node 2, 1/3 goes along 1→3.
const LOOP: &str = r#"
nodes = [{ id = "1" }, { id = "2" }, { id = "3" }]
lines = [
  { id = "12", from = "1", to = "2", x = "1" },
  { id = "23", from = "2", to = "3", x = "1" },
  { id = "13", from = "1", to = "3", x = "1", capacity = "40" },
]
"#;

#[test]
fn congested_loop_splits_prices_and_pins_the_dual_sign() {
    // G1 100@10 at 1, G2 100@50 at 2, D 90@1000 at 3, line 1→3 limited to 40.
    // Flow 1→3 = (2·g1 + g2)/3 ≤ 40 with g1 + g2 = 90 ⇒ g1 ≤ 30: g1 = 30, g2 = 60.
    // Prices λn = λ3 − μ·PTDFn: λ1 = λ3 − 2μ/3 = 10, λ2 = λ3 − μ/3 = 50 ⇒ μ = 120, λ3 = 90.
    // These are positive prices: the LP's balance duals came back as −price and were negated.
    let m = market(&format!(
        r#"{HEADER}{LOOP}
orders = [
  {{ id = "G1", node = "1", side = "sell", blocks = [{{ quantity = "100", price = "10" }}] }},
  {{ id = "G2", node = "2", side = "sell", blocks = [{{ quantity = "100", price = "50" }}] }},
  {{ id = "D",  node = "3", side = "buy",  blocks = [{{ quantity = "90", price = "1000" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(
        (price(&c, "1"), price(&c, "2"), price(&c, "3")),
        (dec!(10), dec!(50), dec!(90))
    );
    assert_eq!((fill(&c, "G1"), fill(&c, "G2")), (dec!(30), dec!(60)));
    assert_eq!(flow(&c, "13"), dec!(40));
    assert!(c.lines.iter().find(|l| l.id == "13").unwrap().congested);
    // No grid connection: the reference is the node of the largest accepted supply, "2" (G2
    // sells 60): energy 50, congestion −40 / 0 / +40.
    let n3 = c.nodes.iter().find(|n| n.id == "3").unwrap();
    assert_eq!((n3.energy, n3.congestion), (dec!(50), dec!(40)));
    // Rent = 90·90 − (10·30 + 50·60) = 8100 − 3300 = 4800 = μ·40.
    let b = balances(&m, &c);
    assert_eq!(b["network-operator"], dec!(4800));
}

#[test]
fn congested_loop_prices_a_node_negative() {
    // G2 100@10 at 2, G3 100@50 at 3, D3 90@1000 at 3, B1 10@0 at 1 (a battery that charges
    // at any price up to 0); line 1→3 limited to 20.
    // With node 3 as reference, flow 1→3 = (2/3)·inj1 + (1/3)·inj2 = (−2·10 + g2)/3 ≤ 20
    // ⇒ g2 ≤ 80, g3 = 100 − 80 = 20. Marginal units at 2 and 3: λ3 = 50, λ2 = λ3 − μ/3 = 10
    // ⇒ μ = 120, λ1 = λ3 − 2μ/3 = −30: the battery at 1 is paid 30 per unit to charge, because
    // each unit it takes lets two more cheap units from 2 replace one dear unit at 3.
    // Flows: f12 = −30, f23 = 50, f13 = 20. Welfare = 90000 + 0 − 800 − 1000 = 88200.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "1" }}, {{ id = "2" }}, {{ id = "3" }}]
lines = [
  {{ id = "12", from = "1", to = "2", x = "1" }},
  {{ id = "23", from = "2", to = "3", x = "1" }},
  {{ id = "13", from = "1", to = "3", x = "1", capacity = "20" }},
]
orders = [
  {{ id = "G2", node = "2", side = "sell", blocks = [{{ quantity = "100", price = "10" }}] }},
  {{ id = "G3", node = "3", side = "sell", blocks = [{{ quantity = "100", price = "50" }}] }},
  {{ id = "D3", node = "3", side = "buy",  blocks = [{{ quantity = "90", price = "1000" }}] }},
  {{ id = "B1", node = "1", side = "buy",  blocks = [{{ quantity = "10", price = "0" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "1"), dec!(-30));
    assert_eq!(price(&c, "2"), dec!(10));
    assert_eq!(price(&c, "3"), dec!(50));
    assert_eq!(
        (fill(&c, "G2"), fill(&c, "G3"), fill(&c, "B1")),
        (dec!(80), dec!(20), dec!(10))
    );
    assert_eq!(
        (flow(&c, "12"), flow(&c, "23"), flow(&c, "13")),
        (dec!(-30), dec!(50), dec!(20))
    );
    assert_eq!(c.welfare, dec!(88200));
    // B1 "pays" −30·10 = −300, i.e. receives 300. Rent = (4500 − 300) − (800 + 1000) = 2400
    // = μ·20.
    let b = balances(&m, &c);
    assert_eq!(b["B1"], dec!(300));
    assert_eq!(b["D3"], dec!(-4500));
    assert_eq!(b["network-operator"], dec!(2400));
}

#[test]
fn grid_import_limit_binds() {
    // Feeder head H: grid imports ≤ 50 at 0.30. Local S 10@0.10, D 80@0.40.
    // Supply 10 + 50 = 60 < 80: D is cut to 60 and sets the price 0.40; import at its limit.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "H" }}]
grid_connections = [{{ id = "up", node = "H", import_limit = "50", import_price = "0.30", export_limit = "20", export_price = "0.05" }}]
orders = [
  {{ id = "S", node = "H", side = "sell", blocks = [{{ quantity = "10", price = "0.10" }}] }},
  {{ id = "D", node = "H", side = "buy",  blocks = [{{ quantity = "80", price = "0.40" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "H"), dec!(0.40));
    assert_eq!(fill(&c, "up/import"), dec!(50));
    assert_eq!(fill(&c, "up/export"), dec!(0));
    assert_eq!(fill(&c, "D"), dec!(60));
    // Grid account is paid 0.40·50 = 20 for its import.
    let b = balances(&m, &c);
    assert_eq!(b["grid:up"], dec!(20.00));
}

#[test]
fn grid_export_limit_binds() {
    // Sellers 100@0.02, D 30@0.50, export ≤ 20 at 0.05 (in the money at any price < 0.05).
    // The sellers serve 30 + 20 = 50 of 100: they are marginal, price 0.02; export at its limit.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "H" }}]
grid_connections = [{{ id = "up", node = "H", import_limit = "50", import_price = "0.30", export_limit = "20", export_price = "0.05" }}]
orders = [
  {{ id = "S", node = "H", side = "sell", blocks = [{{ quantity = "100", price = "0.02" }}] }},
  {{ id = "D", node = "H", side = "buy",  blocks = [{{ quantity = "30", price = "0.50" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "H"), dec!(0.02));
    assert_eq!(fill(&c, "up/export"), dec!(20));
    assert_eq!(fill(&c, "S"), dec!(50));
}

const FLEX_BASE: &str = r#"
nodes = [{ id = "A" }]
orders = [
  { id = "D", node = "A", side = "buy",  blocks = [{ quantity = "10", price = "1.00" }] },
  { id = "G", node = "A", side = "sell", blocks = [{ quantity = "10", price = "0.30" }] },
  { id = "BE", participant = "bat", node = "A", side = "sell", device = "bat1", blocks = [{ quantity = "10", price = "0.10" }] },
]
devices = [{ id = "bat1", node = "A", capacity = "10" }]
"#;

#[test]
fn flexibility_binds_the_device_and_is_co_optimised() {
    // Battery capacity 10 shared by energy x (0.10) and flex up y (0.02); requirement up 4 at
    // most 0.50. D 10@1.00, G 10@0.30.
    // y = 4: x = 6, G = 4 → welfare 10 − 0.6 − 1.2 + 2.0 − 0.08 = 10.12 (vs 9.0 with y = 0).
    // λ = 0.30 (G partial); x partial ⇒ 0.10 + μ = 0.30 ⇒ μ = 0.20; y partial ⇒ π = 0.02 + μ
    // = 0.22.
    let m = market(&format!(
        r#"{HEADER}{FLEX_BASE}
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "4", price = "0.50" }}] }}]
flex_offers = [{{ id = "BF", participant = "bat", node = "A", direction = "up", device = "bat1", blocks = [{{ quantity = "10", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "A"), dec!(0.30));
    assert_eq!((fill(&c, "BE"), fill(&c, "G")), (dec!(6), dec!(4)));
    let r = &c.flex_requirements[0];
    assert_eq!((r.procured, r.price), (dec!(4), dec!(0.22)));
    assert_eq!(c.flex_offers[0].accepted_total, dec!(4));
    assert_eq!(c.welfare, dec!(10.12));
    // Hourly: bat gets energy 0.30·6 = 1.80 plus flex 0.22·4 = 0.88; the operator pays 0.88.
    let b = balances(&m, &c);
    assert_eq!(b["bat"], dec!(2.68));
    assert_eq!(b["network-operator"], dec!(-0.88));
}

#[test]
fn flexibility_requirement_not_met_prices_at_its_cap() {
    // Requirement up 4 at most 0.50 plus a second step 6 at most 0.01; the battery offers up
    // to 10 at 0.02 and its energy is worth μ. Step 2 (0.01) is below any offer: rejected.
    // Step 1 is met (4). Same energy as above, so π = 0.22 again and step 2 stays out.
    // Then a requirement the offers cannot reach: area {A} but direction down with no offer
    // ⇒ procured 0 and its price is its own cap (the demand block is marginal at zero).
    let m = market(&format!(
        r#"{HEADER}{FLEX_BASE}
flex_requirements = [
  {{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "4", price = "0.50" }}, {{ quantity = "6", price = "0.01" }}] }},
  {{ id = "R2", nodes = ["A"], direction = "down", blocks = [{{ quantity = "3", price = "0.40" }}] }},
]
flex_offers = [{{ id = "BF", participant = "bat", node = "A", direction = "up", device = "bat1", blocks = [{{ quantity = "10", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    let r = &c.flex_requirements[0];
    assert_eq!(r.accepted, vec![dec!(4), dec!(0)]);
    assert_eq!(r.price, dec!(0.22));
    let r2 = &c.flex_requirements[1];
    assert_eq!(r2.procured, dec!(0));
    assert!(
        r2.price >= dec!(0.40),
        "unmet requirement priced at least at its bid"
    );
}

#[test]
fn flexibility_not_binding_leaves_energy_alone() {
    // Requirement up 2 at most 0.50; an offer from a separate device with capacity 5: no
    // coupling binds, the battery sells all 10 of its energy, the offer is marginal: π = 0.02.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
devices = [{{ id = "ev", node = "A", capacity = "5" }}]
orders = [
  {{ id = "D", node = "A", side = "buy",  blocks = [{{ quantity = "10", price = "1.00" }}] }},
  {{ id = "G", node = "A", side = "sell", blocks = [{{ quantity = "10", price = "0.10" }}] }},
]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "2", price = "0.50" }}] }}]
flex_offers = [{{ id = "EF", node = "A", direction = "up", device = "ev", blocks = [{{ quantity = "5", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!(fill(&c, "G"), dec!(10));
    assert_eq!(c.flex_requirements[0].price, dec!(0.02));
    assert_eq!(c.flex_offers[0].accepted_total, dec!(2));
}

#[test]
fn infeasible_book_clears_with_unserved_demand_reported() {
    // A must-take buy of 15 at B, supply only at A (100@1) over a line limited to 10.
    // Hard limits: 10 served, 5 unserved at the cap 100 ⇒ λB = 100, λA = 1.
    let base = r#"
name = "t"
interval_minutes = 60
price_floor = "-10"
price_cap = "100"
nodes = [{ id = "A" }, { id = "B" }, { id = "X" }]
lines = [{ id = "AB", from = "A", to = "B", x = "1", capacity = "10" }]
orders = [
  { id = "S", node = "A", side = "sell", blocks = [{ quantity = "100", price = "1" }] },
  { id = "L", node = "B", side = "buy", blocks = [{ quantity = "15" }] },
  { id = "I", node = "X", side = "buy", blocks = [{ quantity = "2" }] },
]
"#;
    let c = clear(&market(base));
    assert_eq!(price(&c, "B"), dec!(100));
    assert_eq!(price(&c, "A"), dec!(1));
    assert_eq!(fill(&c, "L"), dec!(10));
    let unserved: Vec<_> = c
        .relaxations
        .iter()
        .map(|r| (r.kind, r.id.as_str(), r.quantity))
        .collect();
    // X is an island with demand and nothing to serve it.
    assert!(unserved.contains(&("unserved_demand", "L", dec!(5))));
    assert!(unserved.contains(&("unserved_demand", "I", dec!(2))));
    assert_eq!(price(&c, "X"), dec!(100));

    // Soft limits at 20 per unit: overloading by 5 costs 1 + 20 = 21 < 100, so the line
    // carries 15 and λB = 21.
    let soft = base.replace(
        "price_cap = \"100\"",
        "price_cap = \"100\"\nline_violation_penalty = \"20\"",
    );
    let c = clear(&market(&soft));
    assert_eq!(fill(&c, "L"), dec!(15));
    assert_eq!(price(&c, "B"), dec!(21));
    assert!(c
        .relaxations
        .iter()
        .any(|r| r.kind == "line_overload" && r.id == "AB" && r.quantity == dec!(5)));
}

fn single_node(orders: &str) -> Market {
    market(&format!(
        "{HEADER}\nnodes = [{{ id = \"N\" }}]\norders = [{orders}]"
    ))
}

#[test]
fn duplicate_sell_blocks_at_one_price_split_pro_rata() {
    // S1 10@20 and S2 30@20 tie; D 20@50 takes 20 of their 40: each gets half its quantity.
    let m = single_node(
        r#"{ id = "S1", node = "N", side = "sell", blocks = [{ quantity = "10", price = "20" }] },
           { id = "S2", node = "N", side = "sell", blocks = [{ quantity = "30", price = "20" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "20", price = "50" }] }"#,
    );
    let c = clear(&m);
    assert_eq!((fill(&c, "S1"), fill(&c, "S2")), (dec!(5), dec!(15)));
    assert_eq!(price(&c, "N"), dec!(20));
}

#[test]
fn equal_buy_prices_when_supply_equals_the_first_buyer() {
    // S 10@20; B1 and B2 each 10@50. Supply equals B1's quantity, but the tie rule shares it:
    // 5 each, never 10/0 by solver luck. Buyers are marginal: price 50.
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "20" }] },
           { id = "B1", node = "N", side = "buy", blocks = [{ quantity = "10", price = "50" }] },
           { id = "B2", node = "N", side = "buy", blocks = [{ quantity = "10", price = "50" }] }"#,
    );
    let c = clear(&m);
    assert_eq!((fill(&c, "B1"), fill(&c, "B2")), (dec!(5), dec!(5)));
    assert_eq!(price(&c, "N"), dec!(50));
}

#[test]
fn pro_rata_remainders_are_exact_and_deterministic() {
    // Three equal sells of 1 share 1 unit of demand: 1/3 each is not representable, so the
    // quanta left after rounding down go to the earliest ids.
    let m = single_node(
        r#"{ id = "c", node = "N", side = "sell", blocks = [{ quantity = "1", price = "20" }] },
           { id = "a", node = "N", side = "sell", blocks = [{ quantity = "1", price = "20" }] },
           { id = "b", node = "N", side = "sell", blocks = [{ quantity = "1", price = "20" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "1", price = "50" }] }"#,
    );
    let c = clear(&m);
    assert_eq!(fill(&c, "a"), dec!(0.333334));
    assert_eq!(fill(&c, "b"), dec!(0.333333));
    assert_eq!(fill(&c, "c"), dec!(0.333333));
}

#[test]
fn one_sided_books_trade_nothing_and_price_consistently() {
    let only_buyers = single_node(
        r#"{ id = "B", node = "N", side = "buy", blocks = [{ quantity = "10", price = "50" }] }"#,
    );
    let c = clear(&only_buyers);
    assert_eq!(fill(&c, "B"), dec!(0));
    assert!(price(&c, "N") >= dec!(50), "no buyer is left in the money");
    let only_sellers = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "50" }] }"#,
    );
    let c = clear(&only_sellers);
    assert_eq!(fill(&c, "S"), dec!(0));
    assert!(price(&c, "N") <= dec!(50), "no seller is left in the money");
}

#[test]
fn nothing_crosses() {
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "30" }] },
           { id = "B", node = "N", side = "buy", blocks = [{ quantity = "10", price = "20" }] }"#,
    );
    let c = clear(&m);
    assert_eq!((fill(&c, "S"), fill(&c, "B")), (dec!(0), dec!(0)));
    let p = price(&c, "N");
    assert!(
        p >= dec!(20) && p <= dec!(30),
        "price {p} between the best bid and ask"
    );
    assert_eq!(c.welfare, dec!(0));
}

#[test]
fn inelastic_buyer_is_served_at_the_marginal_offer() {
    // A must-take buy of 10 against S 20@30: served in full at 30; no relaxation.
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "20", price = "30" }] },
           { id = "L", node = "N", side = "buy", blocks = [{ quantity = "10" }] }"#,
    );
    let c = clear(&m);
    assert_eq!(fill(&c, "L"), dec!(10));
    assert_eq!(price(&c, "N"), dec!(30));
    assert!(c.relaxations.is_empty());
}

#[test]
fn stepped_curves_fill_block_by_block() {
    // Buy curve 5@60, 5@40; sell curve 4@10, 4@50. Crossing: sell 4@10 < 60, then 50 < 60:
    // 5 traded at... buy 5@60 is filled by sell 4@10 + 1@50; next buy 40 < 50 stops.
    // Marginal sell block 50 (1 of 4) ⇒ price 50.
    let m = single_node(
        r#"{ id = "B", node = "N", side = "buy", blocks = [{ quantity = "5", price = "60" }, { quantity = "5", price = "40" }] },
           { id = "S", node = "N", side = "sell", blocks = [{ quantity = "4", price = "10" }, { quantity = "4", price = "50" }] }"#,
    );
    let c = clear(&m);
    let b = c.orders.iter().find(|o| o.id == "B").unwrap();
    let s = c.orders.iter().find(|o| o.id == "S").unwrap();
    assert_eq!(b.accepted, vec![dec!(5), dec!(0)]);
    assert_eq!(s.accepted, vec![dec!(4), dec!(1)]);
    assert_eq!(price(&c, "N"), dec!(50));
}

#[test]
fn zero_negative_and_absurd_quantities_are_refused_naming_the_record() {
    let bad = |block: &str| {
        let s = scenario::parse(&format!(
            "{HEADER}\nnodes = [{{ id = \"N\" }}]\norders = [{{ id = \"o1\", node = \"N\", side = \"buy\", blocks = [{block}] }}]"
        ))
        .unwrap();
        Market::new(&s.market).unwrap_err()
    };
    let e = bad(r#"{ quantity = "0", price = "1" }"#);
    assert!(matches!(e, MarketError::BadNumber { .. }));
    assert_eq!(e.to_string(), "order \"o1\": blocks[0].quantity is zero");
    assert!(bad(r#"{ quantity = "-1", price = "1" }"#)
        .to_string()
        .contains("is negative"));
    assert!(bad(r#"{ quantity = "1e12", price = "1" }"#)
        .to_string()
        .contains("exceeds"));
    assert!(bad(r#"{ quantity = "1", price = "5000" }"#)
        .to_string()
        .contains("outside the price floor"));
    assert!(bad(r#"{ quantity = "0.0000001", price = "1" }"#)
        .to_string()
        .contains("more than 6 decimal places"));
}

#[test]
fn structural_errors_are_refused_naming_the_record() {
    let err = |body: &str| {
        let s = scenario::parse(&format!("{HEADER}\n{body}")).unwrap();
        Market::new(&s.market).unwrap_err().to_string()
    };
    assert_eq!(
        err(r#"nodes = [{ id = "A" }, { id = "A" }]"#),
        "duplicate node id \"A\""
    );
    assert_eq!(
        err(r#"nodes = [{ id = "A" }, { id = "B" }]
lines = [{ id = "l", from = "A", to = "B", x = "0" }]"#),
        "line \"l\": reactance x is zero"
    );
    assert_eq!(
        err(r#"nodes = [{ id = "A" }]
orders = [{ id = "o", node = "Z", side = "buy", blocks = [{ quantity = "1", price = "1" }] }]"#),
        "order \"o\": unknown node \"Z\""
    );
    assert_eq!(
        err(r#"nodes = [{ id = "A" }]
orders = [
  { id = "o", node = "A", side = "buy", blocks = [{ quantity = "1", price = "1" }] },
  { id = "o", node = "A", side = "sell", blocks = [{ quantity = "1", price = "1" }] },
]"#),
        "duplicate order id \"o\""
    );
}

#[test]
fn parallel_lines_and_islands_clear() {
    // Two parallel lines A–B (x 1 and 3: flows split 3:1) limited to 6 and 10; an island C–D
    // of its own. A sells 100@10, B buys 20@100: the x=1 line binds at 6, the other carries 2:
    // total 8 ⇒ B buys 8, marginal buyer at B ⇒ λB = 100, λA = 10.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}, {{ id = "B" }}, {{ id = "C" }}, {{ id = "D" }}]
lines = [
  {{ id = "p1", from = "A", to = "B", x = "1", capacity = "6" }},
  {{ id = "p2", from = "A", to = "B", x = "3", capacity = "10" }},
  {{ id = "cd", from = "C", to = "D", x = "-0.5" }},
]
orders = [
  {{ id = "S", node = "A", side = "sell", blocks = [{{ quantity = "100", price = "10" }}] }},
  {{ id = "B", node = "B", side = "buy",  blocks = [{{ quantity = "20", price = "100" }}] }},
  {{ id = "SC", node = "C", side = "sell", blocks = [{{ quantity = "5", price = "7" }}] }},
  {{ id = "BD", node = "D", side = "buy",  blocks = [{{ quantity = "3", price = "9" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(fill(&c, "B"), dec!(8));
    assert_eq!((flow(&c, "p1"), flow(&c, "p2")), (dec!(6), dec!(2)));
    assert_eq!((price(&c, "A"), price(&c, "B")), (dec!(10), dec!(100)));
    // Island C–D (negative reactance is fine): SC sells 3 of 5 ⇒ λ = 7 at both.
    assert_eq!(fill(&c, "BD"), dec!(3));
    assert_eq!((price(&c, "C"), price(&c, "D")), (dec!(7), dec!(7)));
    let islands: std::collections::HashSet<usize> = c.nodes.iter().map(|n| n.island).collect();
    assert_eq!(islands.len(), 2);
    // Attribution: every buyer's energy comes from its own island.
    let s = settle(&m, &c);
    for a in &s.attributions {
        let island = |o: &str| {
            let node = m.orders().iter().find(|x| x.id == o).unwrap().node;
            c.nodes[node].island
        };
        assert_eq!(island(&a.buyer), island(&a.seller));
    }
}

#[test]
fn attribution_matches_same_node_first_and_sums_exactly() {
    // Node A: S1 4@10, D1 3@90. Node B: D2 5@90, S2 10@20. Unlimited line A–B.
    // Price 20 (S2 marginal). Same node first: D1 ← S1 3; D2 ← S2 5. Then across the island:
    // S1's remaining 1 goes to nobody left... D total 8 = S1 4 + S2 4, so S2 sells 4, and the
    // same-node pass gives D2 ← S2 4, leaving D2 1 which is matched with S1's remaining 1.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}, {{ id = "B" }}]
lines = [{{ id = "AB", from = "A", to = "B", x = "1" }}]
orders = [
  {{ id = "S1", node = "A", side = "sell", blocks = [{{ quantity = "4", price = "10" }}] }},
  {{ id = "D1", node = "A", side = "buy",  blocks = [{{ quantity = "3", price = "90" }}] }},
  {{ id = "D2", node = "B", side = "buy",  blocks = [{{ quantity = "5", price = "90" }}] }},
  {{ id = "S2", node = "B", side = "sell", blocks = [{{ quantity = "10", price = "20" }}] }},
]"#
    ));
    let c = clear(&m);
    let s = settle(&m, &c);
    let lines: Vec<(&str, &str, Decimal)> = s
        .attributions
        .iter()
        .map(|a| (a.buyer.as_str(), a.seller.as_str(), a.quantity))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("D1", "S1", dec!(3)),
            ("D2", "S2", dec!(4)),
            ("D2", "S1", dec!(1)),
        ]
    );
}

#[test]
fn two_node_teaching_scenario_matches_its_worked_comment() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/two-node.toml"
    ))
    .unwrap();
    let m = market(&text);
    let c = clear(&m);
    assert_eq!((price(&c, "A"), price(&c, "B")), (dec!(0.30), dec!(0.35)));
    assert_eq!(node_price(&c, "B").unique, Some(true));
    assert_eq!(fill(&c, "shops-B"), dec!(50));
    assert_eq!(fill(&c, "feeder/import"), dec!(20));
    assert_eq!(flow(&c, "A-B"), dec!(60));
    assert_eq!(c.flex_requirements[0].procured, dec!(0));
    assert_eq!(c.flex_requirements[0].price, dec!(0.20));
    let b = balances(&m, &c);
    assert_eq!(b["network-operator"], dec!(0.25));
}

#[test]
fn clearing_announces_its_phases_to_the_caller_and_reads_no_clock() {
    use baton_engine::{clear_hooked, Phase, PhaseHook};
    struct Record(Vec<Phase>);
    impl PhaseHook for Record {
        fn enter(&mut self, phase: Phase) {
            self.0.push(phase);
        }
    }
    use Phase::{Build, Done, Extract, Other, Solve};
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "20" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "5", price = "50" }] }"#,
    );
    let mut full = Record(Vec::new());
    let (c, stats) = clear_hooked(&m, Method::Full, &mut full).unwrap();
    assert_eq!(fill(&c, "D"), dec!(5));
    assert_eq!(full.0, [Other, Build, Solve, Extract, Other, Done]);
    assert_eq!(stats.rounds.len(), 1);
    // The active set: one estimate LP, then rounds, each Build → Solve → Extract → Other.
    let mut act = Record(Vec::new());
    let (_, stats) = clear_hooked(&m, Method::ActiveSet { band: None }, &mut act).unwrap();
    let lp = [Build, Solve, Extract, Other];
    let mut expected = vec![Other];
    for _ in 0..stats.lp_solves {
        expected.extend(lp);
    }
    expected.push(Done);
    assert_eq!(act.0, expected);
    assert!(stats.lp_solves >= 2, "estimate and at least one round");
}

#[test]
fn must_take_behind_congestion_prices_at_the_cap_with_a_node_shortfall() {
    // Rule 7. Triangle A, B, C, every x = 1; supply 100@1 at A, a must-take load of 30 at C;
    // line AB limited to 5, cap 10. Injecting at A and withdrawing at C puts 1/3 on AB (A→B),
    // injecting at B puts −1/3 on it.
    //
    // Without relaxations: AB binds at g_A = 15, C is short (load partial ⇒ λC = 10), λA = 1, so
    // μ = 3·(10 − 1) = 27 and λB = λC + μ/3 = 19: a *unique* price above the cap.
    //
    // With a shortfall column at the cap at every node, a unit at B (10) plus a unit from A (1)
    // serve two units at C without moving AB: worth 20 for 11, so C is served in full:
    // g_A − u_B = 15 (AB at 5) and g_A + u_B = 30 ⇒ g_A = 22.5, u_B = 7.5. Prices: λB = 10 (the
    // shortfall is marginal), λA = 1, λC = (λA + λB)/2 = 5.5.
    // Flows: AB = 5, AC = 17.5, BC = 12.5 (A: 5 + 17.5 = 22.5; B: −5 + 12.5 = 7.5; C: 30).
    // Welfare = 10·30 − 1·22.5 − 10·7.5 = 202.5.
    let m = market(
        r#"
name = "t"
interval_minutes = 60
price_floor = "-10"
price_cap = "10"
nodes = [{ id = "A" }, { id = "B" }, { id = "C" }]
lines = [
  { id = "AB", from = "A", to = "B", x = "1", capacity = "5" },
  { id = "AC", from = "A", to = "C", x = "1" },
  { id = "BC", from = "B", to = "C", x = "1" },
]
orders = [
  { id = "S", node = "A", side = "sell", blocks = [{ quantity = "100", price = "1" }] },
  { id = "L", node = "C", side = "buy", blocks = [{ quantity = "30" }] },
]
"#,
    );
    let c = clear(&m);
    assert_eq!(price(&c, "B"), dec!(10));
    assert_eq!(price(&c, "A"), dec!(1));
    assert_eq!(price(&c, "C"), dec!(5.5));
    assert_eq!(fill(&c, "S"), dec!(22.5));
    assert_eq!(fill(&c, "L"), dec!(30));
    assert_eq!(flow(&c, "AB"), dec!(5));
    assert_eq!(flow(&c, "AC"), dec!(17.5));
    assert_eq!(flow(&c, "BC"), dec!(12.5));
    assert_eq!(c.welfare, dec!(202.5));
    let relaxations: Vec<_> = c
        .relaxations
        .iter()
        .map(|r| (r.kind, r.id.as_str(), r.quantity, r.penalty))
        .collect();
    assert_eq!(
        relaxations,
        vec![("node_shortfall", "B", dec!(7.5), dec!(10))]
    );
}

#[test]
fn surplus_behind_congestion_prices_at_the_floor_with_a_node_spill() {
    // The mirror image: a must-take sell of 30 at C (enters at the floor −10), demand 100@−1
    // at A, AB limited to 5. Withdrawing at A and injecting at C puts 1/3 on AB (B→A); a
    // withdrawal at B puts −1/3 on it. Without relaxations λA = −1, λC = −10 (both partial)
    // and λB = 2·λC − λA = −19, unique and below the floor; with them, a spill of 7.5 at B (at −10) lets A take 22.5: λB = −10, λA = −1,
    // λC = −5.5, welfare = −1·22.5 + 10·30 − 10·7.5 = 202.5.
    let m = market(
        r#"
name = "t"
interval_minutes = 60
price_floor = "-10"
price_cap = "10"
nodes = [{ id = "A" }, { id = "B" }, { id = "C" }]
lines = [
  { id = "AB", from = "A", to = "B", x = "1", capacity = "5" },
  { id = "AC", from = "A", to = "C", x = "1" },
  { id = "BC", from = "B", to = "C", x = "1" },
]
orders = [
  { id = "D", node = "A", side = "buy", blocks = [{ quantity = "100", price = "-1" }] },
  { id = "G", node = "C", side = "sell", blocks = [{ quantity = "30" }] },
]
"#,
    );
    let c = clear(&m);
    assert_eq!(price(&c, "B"), dec!(-10));
    assert_eq!(price(&c, "A"), dec!(-1));
    assert_eq!(price(&c, "C"), dec!(-5.5));
    assert_eq!(fill(&c, "D"), dec!(22.5));
    assert_eq!(fill(&c, "G"), dec!(30));
    assert_eq!(c.welfare, dec!(202.5));
    let relaxations: Vec<_> = c
        .relaxations
        .iter()
        .map(|r| (r.kind, r.id.as_str(), r.quantity, r.penalty))
        .collect();
    assert_eq!(relaxations, vec![("node_spill", "B", dec!(7.5), dec!(-10))]);
}

#[test]
fn grid_connection_prices_outside_the_floor_and_cap_are_refused() {
    // Rule 7: a grid connection is an order like any other, so its prices obey the bounds.
    let base = |import: &str, export: &str| {
        format!(
            r#"{HEADER}
nodes = [{{ id = "A" }}]
grid_connections = [{{ id = "g", node = "A", import_limit = "10", import_price = "{import}", export_limit = "10", export_price = "{export}" }}]
"#
        )
    };
    let ok = scenario::parse(&base("1000", "-1000")).expect("parses");
    assert!(Market::new(&ok.market).is_ok());
    for (import, export, field) in [
        ("1000.01", "0", "import_price"),
        ("10", "-1000.01", "export_price"),
    ] {
        let s = scenario::parse(&base(import, export)).expect("parses");
        match Market::new(&s.market) {
            Err(MarketError::BadNumber { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{import}/{export}: expected BadNumber, got {other:?}"),
        }
    }
}

fn node_price<'a>(c: &'a Clearing, node: &str) -> &'a baton_engine::clearing::NodePrice {
    c.nodes.iter().find(|n| n.id == node).expect("node")
}

#[test]
fn degenerate_price_is_the_midpoint_of_its_range_and_ignores_irrelevant_orders() {
    // Rule 6. D 10@50 and S 10@20 at one node: both fully accepted, so any λ in [20, 50]
    // supports the dispatch (S full ⇒ λ ≥ 20, D full ⇒ λ ≤ 50). Independently: one more unit
    // of demand could only displace D (worth 50), one more unit of supply only S (costing 20).
    // The rule publishes the midpoint, 35, and says it is not unique.
    let base = r#"
  { id = "D", node = "N", side = "buy",  blocks = [{ quantity = "10", price = "50" }] },
  { id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "20" }] },"#;
    let c = clear(&single_node(base));
    let n = node_price(&c, "N");
    assert_eq!(n.price, dec!(35));
    assert_eq!(n.unique, Some(false));
    assert_eq!(n.range, Some((dec!(20), dec!(50))));
    // Orders out of the money by a wide margin change neither the range nor the price (the
    // solver's vertex may move with them: a new column is a new basis to end on).
    for extra in [
        r#"{ id = "B0", node = "N", side = "buy", blocks = [{ quantity = "5", price = "10" }] },"#,
        r#"{ id = "S9", node = "N", side = "sell", blocks = [{ quantity = "3", price = "60" }] },"#,
        r#"{ id = "A1", node = "N", side = "buy", blocks = [{ quantity = "1", price = "-1000" }] },"#,
    ] {
        let c = clear(&single_node(&format!("{base}\n  {extra}")));
        let n = node_price(&c, "N");
        assert_eq!(
            (n.price, n.range),
            (dec!(35), Some((dec!(20), dec!(50)))),
            "{extra}"
        );
    }
    // A bid inside the range narrows it: B 5@30 rejected ⇒ λ ≥ 30, so [30, 50] and 40.
    let c = clear(&single_node(&format!(
        "{base}\n  {{ id = \"B\", node = \"N\", side = \"buy\", blocks = [{{ quantity = \"5\", price = \"30\" }}] }},"
    )));
    assert_eq!(fill(&c, "B"), dec!(0));
    let n = node_price(&c, "N");
    assert_eq!((n.price, n.range), (dec!(40), Some((dec!(30), dec!(50)))));
}

#[test]
fn congested_line_price_is_central_between_its_bid_and_the_far_side() {
    // Rule 6 on a network. S 10@20 at A, D 5@50 at B, line AB limited to 5: D is served in
    // full over the full line, S is marginal at A ⇒ λA = 20, unique. At B, D full ⇒ λB ≤ 50
    // and the line at its limit ⇒ its congestion value μ = λB − λA ≥ 0 ⇒ λB ≥ 20: the range is
    // [20, 50]. The max-min point maximises min(50 − λB, λB − 20, …) ⇒ λB = 35.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}, {{ id = "B" }}]
lines = [{{ id = "AB", from = "A", to = "B", x = "0.1", capacity = "5" }}]
orders = [
  {{ id = "S", node = "A", side = "sell", blocks = [{{ quantity = "10", price = "20" }}] }},
  {{ id = "D", node = "B", side = "buy",  blocks = [{{ quantity = "5", price = "50" }}] }},
]"#
    ));
    let c = clear(&m);
    let (a, b) = (node_price(&c, "A"), node_price(&c, "B"));
    assert_eq!(
        (a.price, a.unique, a.range),
        (dec!(20), Some(true), Some((dec!(20), dec!(20))))
    );
    assert_eq!(
        (b.price, b.unique, b.range),
        (dec!(35), Some(false), Some((dec!(20), dec!(50))))
    );
    assert_eq!(b.congestion, dec!(15));
}

#[test]
fn a_second_round_centres_the_wider_range() {
    // Rule 6, lexicographic. Two islands: P with D 10@50, S 10@20 (range [20, 50]) and Q with
    // D 10@40, S 10@38 (range [38, 40]). The smallest margin is at most 1 (Q at 39); any
    // λP in [21, 49] achieves it, so a second round maximises P's margin alone: λP = 35.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "P" }}, {{ id = "Q" }}]
orders = [
  {{ id = "DP", node = "P", side = "buy",  blocks = [{{ quantity = "10", price = "50" }}] }},
  {{ id = "SP", node = "P", side = "sell", blocks = [{{ quantity = "10", price = "20" }}] }},
  {{ id = "DQ", node = "Q", side = "buy",  blocks = [{{ quantity = "10", price = "40" }}] }},
  {{ id = "SQ", node = "Q", side = "sell", blocks = [{{ quantity = "10", price = "38" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(price(&c, "Q"), dec!(39));
    assert_eq!(price(&c, "P"), dec!(35));
}

#[test]
fn a_charging_battery_offers_its_charge_plus_its_capacity_as_up_flexibility() {
    // Rule 8. A battery of capacity 10 (a power range −10..+10) charges 10 (buy 10@0.50, on the
    // device) from G (20@0.10); the operator wants 15 of up-flexibility at up to 1.00 and the
    // battery offers 20 at 0.02. Its net schedule is −10, so it can move up by 10 + 10 = 20:
    // stop charging (10) and discharge (10). Old rule (`buy + down ≤ C`, `sell + up ≤ C`): up
    // ≤ 10.
    // Optimum: charge 10, up 15 (net −10 + 15 = 5 ≤ 10, the row is slack). G 10 of 20 ⇒
    // λ = 0.10; the offer is partial ⇒ π = 0.02. Welfare = 0.50·10 − 0.10·10 + 1.00·15 −
    // 0.02·15 = 18.70.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
devices = [{{ id = "bat", node = "A", capacity = "10" }}]
orders = [
  {{ id = "G", node = "A", side = "sell", blocks = [{{ quantity = "20", price = "0.10" }}] }},
  {{ id = "BC", participant = "b", node = "A", side = "buy", device = "bat", blocks = [{{ quantity = "10", price = "0.50" }}] }},
]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "15", price = "1.00" }}] }}]
flex_offers = [{{ id = "BF", participant = "b", node = "A", direction = "up", device = "bat", blocks = [{{ quantity = "20", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!((fill(&c, "BC"), fill(&c, "G")), (dec!(10), dec!(10)));
    assert_eq!(c.flex_offers[0].accepted_total, dec!(15));
    let r = &c.flex_requirements[0];
    assert_eq!((r.procured, r.price), (dec!(15), dec!(0.02)));
    assert_eq!(price(&c, "A"), dec!(0.10));
    assert_eq!(c.welfare, dec!(18.70));

    // With 25 wanted (offer 30), the device's room binds: charging 10, the most it bids for,
    // leaves 10 + 10 = 20 of up-flex (net −10 + 20 = C). R is partial at 20 ⇒ π = 1.00, and
    // the partial offer prices the device's up row at 1.00 − 0.02 = 0.98.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
devices = [{{ id = "bat", node = "A", capacity = "10" }}]
orders = [
  {{ id = "G", node = "A", side = "sell", blocks = [{{ quantity = "20", price = "0.10" }}] }},
  {{ id = "BC", participant = "b", node = "A", side = "buy", device = "bat", blocks = [{{ quantity = "10", price = "0.50" }}] }},
]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "25", price = "1.00" }}] }}]
flex_offers = [{{ id = "BF", participant = "b", node = "A", direction = "up", device = "bat", blocks = [{{ quantity = "30", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!(fill(&c, "BC"), dec!(10));
    assert_eq!(c.flex_offers[0].accepted_total, dec!(20));
    let r = &c.flex_requirements[0];
    assert_eq!((r.procured, r.price), (dec!(20), dec!(1.00)));
}

#[test]
fn buy_and_sell_on_one_device_are_netted() {
    // Rule 8. A device of capacity 5 carries a sell 8@0.10 and a buy 4@0.60: netted, the
    // schedule sell 8 − buy 4 = 4 is within −5..+5, so both fill (the old rule capped the
    // sell at 5). D 10@1.00 takes the rest: supply 8 (device) vs demand 4 + 10 ⇒ 6 short
    // from G 20@0.30 ⇒ G 6, λ = 0.30.
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
devices = [{{ id = "dev", node = "A", capacity = "5" }}]
orders = [
  {{ id = "D", node = "A", side = "buy", blocks = [{{ quantity = "10", price = "1.00" }}] }},
  {{ id = "G", node = "A", side = "sell", blocks = [{{ quantity = "20", price = "0.30" }}] }},
  {{ id = "DS", participant = "p", node = "A", side = "sell", device = "dev", blocks = [{{ quantity = "8", price = "0.10" }}] }},
  {{ id = "DB", participant = "p", node = "A", side = "buy", device = "dev", blocks = [{{ quantity = "4", price = "0.60" }}] }},
]
"#
    ));
    let c = clear(&m);
    assert_eq!((fill(&c, "DS"), fill(&c, "DB")), (dec!(8), dec!(4)));
    assert_eq!((fill(&c, "D"), fill(&c, "G")), (dec!(10), dec!(6)));
    assert_eq!(price(&c, "A"), dec!(0.30));
}

// ---------------------------------------------------------------------------------------------
// Defects an independent reference LP found (issue 10), each named after its defect
// ---------------------------------------------------------------------------------------------

/// The study-format bytes of a clearing and its settlement.
fn output(m: &Market) -> String {
    let c = clear(m);
    write_result(&c, &settle(m, &c), m.participant_order_count(), None)
}

/// A JSON value with every array of records (objects) sorted by the records' text: two
/// outputs that differ only in the order of their records become equal, bit for bit in every
/// record.
fn records_sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(records_sorted).collect();
            if items.iter().all(Value::is_object) {
                items.sort_by_cached_key(|i| i.to_string());
            }
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, records_sorted(v)))
                .collect(),
        ),
        v => v,
    }
}

fn same_records(a: &str, b: &str) {
    let parse = |s: &str| records_sorted(serde_json::from_str(s).expect("result is JSON"));
    assert_eq!(parse(a), parse(b));
}

/// Issue 10, defect 1: reversing the feeder's `flex_offers` moved 5 kW of flexibility and 5 kW
/// of energy between the batteries at buses 16 and 32 and changed two line flows: offers and
/// requirements reached HiGHS in input order.
#[test]
fn reversing_flex_offers_changes_nothing_but_record_order() {
    let text = include_str!("../../scenarios/ieee33-feeder.toml");
    let spec = scenario::parse(text).expect("parses").market;
    let mut reversed = spec.clone();
    reversed.flex_offers.reverse();
    reversed.devices.reverse();
    let (a, b) = (
        Market::new(&spec).expect("valid"),
        Market::new(&reversed).expect("valid"),
    );
    same_records(&output(&a), &output(&b));
}

/// Issue 10, defect 1 (minimal): two interchangeable offers (same node, direction and price,
/// no device) for one requirement of 6. The LP takes either; the tie rule shares the 6 pro rata
/// to 5 : 10 = 2 and 4, whatever the record order. π = 0.03 (the offers are marginal), so the
/// hourly payments are 0.06 and 0.12.
#[test]
fn interchangeable_flex_offers_share_pro_rata_in_either_order() {
    let offers = [
        r#"{ id = "f1", node = "A", direction = "up", blocks = [{ quantity = "5", price = "0.03" }] }"#,
        r#"{ id = "f2", node = "A", direction = "up", blocks = [{ quantity = "10", price = "0.03" }] }"#,
    ];
    let with = |first: &str, second: &str| {
        market(&format!(
            r#"{HEADER}
nodes = [{{ id = "A" }}]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "6", price = "0.50" }}] }}]
flex_offers = [{first}, {second}]
"#
        ))
    };
    let (m, swapped) = (with(offers[0], offers[1]), with(offers[1], offers[0]));
    for m in [&m, &swapped] {
        let c = clear(m);
        let got = |id: &str| {
            c.flex_offers
                .iter()
                .find(|o| o.id == id)
                .expect("offer")
                .accepted_total
        };
        assert_eq!((got("f1"), got("f2")), (dec!(2), dec!(4)));
        assert_eq!(c.flex_requirements[0].price, dec!(0.03));
        let b = balances(m, &c);
        assert_eq!((b["f1"], b["f2"]), (dec!(0.06), dec!(0.12)));
    }
    same_records(&output(&m), &output(&swapped));
}

/// Issue 10, defect 3: s1 10, s2 10 and s3 40 at one price share 40 of their 60. Exact shares
/// 6.666666⅔, 6.666666⅔ and 26.666666⅔: the floors leave 2 quanta, and all three dropped
/// remainders are exactly ⅔ of a quantum, so the ties go to the earliest ids, s1 and s2.
/// Computed as 28-digit decimals, s3's remainder (fewer fraction digits, rounded up earlier)
/// looked larger and took a quantum from s2.
#[test]
fn equal_pro_rata_remainders_go_to_the_earliest_ids() {
    let m = single_node(
        r#"{ id = "s3", node = "N", side = "sell", blocks = [{ quantity = "40", price = "10" }] },
           { id = "s2", node = "N", side = "sell", blocks = [{ quantity = "10", price = "10" }] },
           { id = "s1", node = "N", side = "sell", blocks = [{ quantity = "10", price = "10" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "40", price = "20" }] }"#,
    );
    let c = clear(&m);
    assert_eq!(fill(&c, "s1"), dec!(6.666667));
    assert_eq!(fill(&c, "s2"), dec!(6.666667));
    assert_eq!(fill(&c, "s3"), dec!(26.666666));
}

/// Issue 10, item 3: blocks of one order at one price are members of one step like any other;
/// members are ordered by order id, then block index, so among one order's blocks an exact tie
/// goes to the earlier block. o has two blocks of 1 at 20 and p one of 1: the 1 of demand gives
/// ⅓ each; the one leftover quantum goes to o's first block.
#[test]
fn tied_blocks_of_one_order_favour_the_earlier_block() {
    let m = single_node(
        r#"{ id = "p", node = "N", side = "sell", blocks = [{ quantity = "1", price = "20" }] },
           { id = "o", node = "N", side = "sell", blocks = [{ quantity = "1", price = "20" }, { quantity = "1", price = "20" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "1", price = "50" }] }"#,
    );
    let c = clear(&m);
    let o = c.orders.iter().find(|o| o.id == "o").expect("order");
    assert_eq!(o.accepted, vec![dec!(0.333334), dec!(0.333333)]);
    assert_eq!(fill(&c, "p"), dec!(0.333333));
}

/// The device test market: loop 1–2–3 with x₁₂ = 3, x₂₃ = x₁₃ = 0.5 and line 13 limited to 4.
/// An injection at 1 withdrawn at 3 puts 3.5/4 = ⅞ of itself on line 13 (the other path is
/// 3.5 long, line 13 0.5); one at 2 puts ⅛ there (path 2–1–3 is 3.5 long, line 23 0.5).
const DEVICE_LOOP: &str = r#"
nodes = [{ id = "1" }, { id = "2" }, { id = "3" }]
lines = [
  { id = "12", from = "1", to = "2", x = "3" },
  { id = "23", from = "2", to = "3", x = "0.5" },
  { id = "13", from = "1", to = "3", x = "0.5", capacity = "4" },
]
devices = [{ id = "bat", node = "1", capacity = "9" }]
"#;

/// Issue 10, defect 2: the battery at node 1 sells energy x (0.10) and up-flexibility y (0.01)
/// from one capacity of 9; G at node 2 (0.50) and D, 10.000001 at node 3. Line 13:
/// ⅞x + ⅛G ≤ 4 with x + G = D ⇒ x = (32 − D)/6 = 3.6666665, G = 6.3333345, and the battery
/// fills the rest with flexibility (requirement 20 at 0.20, worth 0.19 a unit): y = 5.3333335.
/// HiGHS' binary values lie just above the halves, so each rounded up on its own (x 3.666667,
/// G 6.333334, y 5.333334) and the battery was reported at 9.000001 of 9. The rounding rule now
/// takes a value within the solver's noise of a half quantum as the half quantum, and half to
/// even splits the halves: x 3.666666, y 5.333334 (the battery at exactly 9), G 6.333334; the
/// island is a quantum short of D's 10.000001, which the island balance puts on G, the
/// partially accepted step with room: 6.333335. (Where rounding does overfill a device, the
/// quantum comes off its flexibility first; the island residue may raise a device's step only
/// where its capacity leaves room — `clearing::tests`.)
#[test]
fn rounding_residue_never_overfills_a_device() {
    let m = market(&format!(
        r#"{HEADER}{DEVICE_LOOP}
orders = [
  {{ id = "B", node = "1", side = "sell", device = "bat", blocks = [{{ quantity = "20", price = "0.10" }}] }},
  {{ id = "G", node = "2", side = "sell", blocks = [{{ quantity = "20", price = "0.50" }}] }},
  {{ id = "D", node = "3", side = "buy", blocks = [{{ quantity = "10.000001", price = "1.00" }}] }},
]
flex_requirements = [{{ id = "R", nodes = ["1"], direction = "up", blocks = [{{ quantity = "20", price = "0.20" }}] }}]
flex_offers = [{{ id = "BF", node = "1", direction = "up", device = "bat", blocks = [{{ quantity = "20", price = "0.01" }}] }}]
"#
    ));
    let c = clear(&m);
    let used = fill(&c, "B") + c.flex_offers[0].accepted_total;
    assert!(used <= dec!(9), "battery reports {used} of 9");
    assert_eq!(fill(&c, "B") + fill(&c, "G"), fill(&c, "D"));
    assert_eq!(fill(&c, "D"), dec!(10.000001));
    assert_eq!(
        (fill(&c, "B"), fill(&c, "G")),
        (dec!(3.666666), dec!(6.333335))
    );
    assert_eq!(c.flex_offers[0].accepted_total, dec!(5.333334));
    assert_eq!(c.flex_requirements[0].procured, dec!(5.333334));
}

/// Issue 10, defect 4: D buys 0.001 at 0.001 for an hour, a payment of 0.000001 that rounds
/// to nothing. It was posted as `-0.00` (the rounded amount negated) for D and `0.00` for S;
/// neither may be posted at all, and no amount may read `-0`.
#[test]
fn payments_that_round_to_nothing_are_not_posted() {
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "0.001" }] },
           { id = "D", node = "N", side = "buy", blocks = [{ quantity = "0.001", price = "1" }] }"#,
    );
    let c = clear(&m);
    assert_eq!((fill(&c, "D"), price(&c, "N")), (dec!(0.001), dec!(0.001)));
    let s = settle(&m, &c);
    assert!(
        s.postings.iter().all(|p| !p.amount.is_zero()),
        "{:?}",
        s.postings
    );
    assert!(
        !output(&m).contains("-0."),
        "a negative zero in {}",
        output(&m)
    );
}

/// Issue 10, defect 5: the offer's two cheap blocks of 0.0375 are both taken and its dearer
/// block is marginal (0.025 of 1 at 0.10), so π = 0.10. Paid per block, each 0.10 × 0.0375 =
/// 0.00375 rounded half to even to 0.00, and the third 0.0025 to 0.00: nothing. MARKET.md pays
/// the offer's allocation, 0.10 × 0.1 = 0.01, once.
#[test]
fn flexibility_is_paid_on_the_offer_allocation_not_per_block() {
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "0.1", price = "0.50" }}] }}]
flex_offers = [{{ id = "F", node = "A", direction = "up", blocks = [{{ quantity = "0.0375", price = "0.01" }}, {{ quantity = "0.0375", price = "0.02" }}, {{ quantity = "1", price = "0.10" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!(c.flex_requirements[0].price, dec!(0.10));
    assert_eq!(
        c.flex_offers[0].accepted,
        vec![dec!(0.0375), dec!(0.0375), dec!(0.025)]
    );
    assert_eq!(c.flex_offers[0].allocations, vec![(0, dec!(0.1))]);
    let b = balances(&m, &c);
    assert_eq!((b["F"], b["network-operator"]), (dec!(0.01), dec!(-0.01)));
}

/// Issue 10, rule 9: the energy component is read at the feeder head. Node "9" has the grid
/// connection (imports at 0.30), line 9→10 carries at most 5 to D at "10" (10 at 1.00): λ9 =
/// 0.30, λ10 = 1.00 (D marginal). The reference was the first id in string order, "10", which
/// made the feeder head's congestion −0.70; it is "9", so energy 0.30 and node 10's congestion
/// +0.70. The island a–b has no grid connection: its reference is b, the node of its largest
/// accepted supply (S sells 3), not a.
#[test]
fn the_reference_node_is_the_feeder_head() {
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "10" }}, {{ id = "9" }}, {{ id = "a" }}, {{ id = "b" }}]
lines = [
  {{ id = "l", from = "9", to = "10", x = "0.1", capacity = "5" }},
  {{ id = "ab", from = "a", to = "b", x = "0.1" }},
]
grid_connections = [{{ id = "head", node = "9", import_limit = "100", import_price = "0.30", export_limit = "100", export_price = "0.01" }}]
orders = [
  {{ id = "D", node = "10", side = "buy", blocks = [{{ quantity = "10", price = "1.00" }}] }},
  {{ id = "S", node = "b", side = "sell", blocks = [{{ quantity = "5", price = "0.10" }}] }},
  {{ id = "B", node = "a", side = "buy", blocks = [{{ quantity = "3", price = "0.50" }}] }},
]"#
    ));
    let c = clear(&m);
    let node = |id: &str| c.nodes.iter().find(|n| n.id == id).expect("node").clone();
    let (n9, n10) = (node("9"), node("10"));
    assert_eq!((n9.price, n10.price), (dec!(0.30), dec!(1.00)));
    assert_eq!((n9.energy, n9.congestion), (dec!(0.30), dec!(0)));
    assert_eq!((n10.energy, n10.congestion), (dec!(0.30), dec!(0.70)));
    let refs: Vec<(&str, ReferenceRule)> = c
        .references
        .iter()
        .map(|r| (r.reference.as_str(), r.rule))
        .collect();
    assert_eq!(
        refs,
        vec![
            ("9", ReferenceRule::GridConnection),
            ("b", ReferenceRule::LargestSupply)
        ]
    );
    assert!(output(&m).contains(r#""reference": "9""#));
}

/// Issue 10, rule 10: S supplies 10; the must-take M (8, entered at the cap 1000) and P, 8
/// priced at exactly the cap, tie. Pro rata they got 5 and 5 and M was reported unserved by 3;
/// must-take demand comes first: M 8, P 2, no relaxation. The buyers are marginal: λ = 1000.
#[test]
fn must_take_demand_comes_before_priced_demand_at_the_cap() {
    let m = single_node(
        r#"{ id = "S", node = "N", side = "sell", blocks = [{ quantity = "10", price = "0" }] },
           { id = "P", node = "N", side = "buy", blocks = [{ quantity = "8", price = "1000" }] },
           { id = "M", node = "N", side = "buy", blocks = [{ quantity = "8" }] }"#,
    );
    let c = clear(&m);
    assert_eq!((fill(&c, "M"), fill(&c, "P")), (dec!(8), dec!(2)));
    assert_eq!(price(&c, "N"), dec!(1000));
    assert!(c.relaxations.is_empty(), "{:?}", c.relaxations);
}

/// Issue 10, rule 10: a must-take flexibility requirement (5, entered at the cap) that the only
/// offer (3 at 0.02) cannot meet is reported as a relaxation of 2 at the cap.
#[test]
fn a_must_take_flexibility_shortfall_is_a_relaxation() {
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "A" }}]
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "5" }}] }}]
flex_offers = [{{ id = "F", node = "A", direction = "up", blocks = [{{ quantity = "3", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    assert_eq!(c.flex_requirements[0].procured, dec!(3));
    let r: Vec<(&str, &str, Decimal, Decimal)> = c
        .relaxations
        .iter()
        .map(|r| (r.kind, r.id.as_str(), r.quantity, r.penalty))
        .collect();
    assert_eq!(
        r,
        vec![("unprocured_flexibility", "R", dec!(2), dec!(1000))]
    );
}

/// Issue 10, rule 11: the auditor's view of `flexibility_binds_the_device_and_is_co_optimised`
/// (energy 6 + flex 4 on the 10 kW battery, μ = 0.20, π = 0.22): the result file names the
/// device's use and shadow prices, and the offer's allocation to each requirement, so the fill
/// rule net of μ (0.10 + 0.20 = λ 0.30; 0.02 + 0.20 = π 0.22) can be checked from it alone.
#[test]
fn the_result_shows_device_shadow_prices_and_flex_allocations() {
    let m = market(&format!(
        r#"{HEADER}{FLEX_BASE}
flex_requirements = [{{ id = "R", nodes = ["A"], direction = "up", blocks = [{{ quantity = "4", price = "0.50" }}] }}]
flex_offers = [{{ id = "BF", participant = "bat", node = "A", direction = "up", device = "bat1", blocks = [{{ quantity = "10", price = "0.02" }}] }}]
"#
    ));
    let c = clear(&m);
    let d = &c.devices[0];
    assert_eq!(
        (d.id.as_str(), d.capacity, d.up_used, d.down_used),
        // Rule 8: up row net + up = 6 + 4; down row −net + down = −6 + 0.
        ("bat1", dec!(10), dec!(10), dec!(-6))
    );
    assert_eq!(
        (d.up_shadow_price, d.down_shadow_price),
        (dec!(0.2), dec!(0))
    );
    let v: serde_json::Value = serde_json::from_str(&output(&m)).expect("JSON");
    assert_eq!(
        v["flex_offers"][0]["allocations"],
        serde_json::json!([{ "requirement": "R", "quantity": 4.000000 }])
    );
    assert_eq!(
        v["devices"][0]["up_shadow_price"],
        serde_json::json!(0.200000)
    );
}

/// Found by `determinism_under_shuffling_of_every_record_list`: two must-take sells (one on a
/// device) and a buy on the same device at 0; 1 kW more supply than demand must spill at the
/// floor. The clearing failed with `island 0 out of balance by 0.010000 after the solve`.
#[test]
fn must_take_supply_beyond_demand_on_a_device_spills_exactly() {
    let m = market(&format!(
        r#"{HEADER}
nodes = [{{ id = "n0" }}, {{ id = "n1" }}]
lines = [{{ id = "l0", from = "n0", to = "n1", x = "0.01" }}]
devices = [{{ id = "d0", node = "n1", capacity = "1.00" }}]
orders = [
  {{ id = "o0", node = "n1", side = "sell", device = "d0", blocks = [{{ quantity = "1.00" }}] }},
  {{ id = "o1", node = "n0", side = "sell", blocks = [{{ quantity = "1.01" }}] }},
  {{ id = "o2", node = "n1", side = "buy", device = "d0", blocks = [{{ quantity = "1.01", price = "0.00" }}] }},
]"#
    ));
    let c = clear(&m);
    assert_eq!(fill(&c, "o2"), dec!(1.01));
    assert_eq!(fill(&c, "o0") + fill(&c, "o1"), dec!(2.01));
}
