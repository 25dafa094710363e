//! Delivery settlement, worked by hand (docs/MARKET.md, "Delivery").
//!
//! One market for every case, cleared over 60 minutes so a kW of schedule is a kWh of meter:
//!
//! ```text
//!   A ──(cap 5)──► B
//!   A: alice sells 20 @ 0.10, bob buys 2 @ 0.40, grid import 100 @ 1.00, export 100 @ 0.05
//!   B: dave buys 10 @ 0.50, erin sells 3 @ 0.20
//!      requirement up-B: up 4 kW at up to 0.30; erin's battery offers up 6 @ 0.12
//! ```
//! A is served by alice (bob 2 + 5 over the line = 7 of her 20: marginal, λA = 0.10); B gets 5
//! over the line plus erin's 3, so dave's bid is marginal at 8 of 10: λB = 0.50. The
//! requirement takes 4 of erin's 6 flexible kW: π = 0.12, paid 0.48 at clearing. The island's
//! grid prices are 1.00 (import) and 0.05 (export), so with the default spread s = 0.05:
//! at B `p_short = max(0.50, min(0.55, 1.00)) = 0.55`, `p_long = min(0.50, max(0.45, 0.05)) =
//! 0.45`; at A `p_short = 0.15`, `p_long = min(0.10, max(0.05, 0.05)) = 0.05`.

use baton_engine::clearing::{clear_with, Clearing, Method};
use baton_engine::delivery::{
    settle_delivery, Delivery, DeliveryError, DeliveryRules, MeterReading, IMBALANCE_ACCOUNT,
};
use baton_engine::model::Market;
use baton_engine::scenario;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

const MARKET: &str = r#"
name = "delivery"
interval_minutes = 60
price_floor = "-1"
price_cap = "10"
nodes = [{ id = "A" }, { id = "B" }]
lines = [{ id = "A-B", from = "A", to = "B", x = "0.1", capacity = "5" }]
grid_connections = [
  { id = "feeder", node = "A", import_limit = "100", import_price = "1.00", export_limit = "100", export_price = "0.05" },
]
devices = [{ id = "bat", node = "B", capacity = "20" }]
orders = [
  { id = "alice-1", participant = "alice", node = "A", side = "sell", blocks = [{ quantity = "20", price = "0.10" }] },
  { id = "bob-1", participant = "bob", node = "A", side = "buy", blocks = [{ quantity = "2", price = "0.40" }] },
  { id = "dave-1", participant = "dave", node = "B", side = "buy", blocks = [{ quantity = "10", price = "0.50" }] },
  { id = "erin-1", participant = "erin", node = "B", side = "sell", device = "bat", blocks = [{ quantity = "3", price = "0.20" }] },
]
flex_requirements = [
  { id = "up-B", nodes = ["B"], direction = "up", blocks = [{ quantity = "4", price = "0.30" }] },
]
flex_offers = [
  { id = "erin-f", participant = "erin", node = "B", direction = "up", device = "bat", blocks = [{ quantity = "6", price = "0.12" }] },
]
"#;

fn cleared() -> (Market, Clearing) {
    let s = scenario::parse(MARKET).expect("scenario parses");
    let m = Market::new(&s.market).expect("market validates");
    let (c, _) = clear_with(&m, Method::Full).expect("clears");
    let price = |id: &str| c.nodes.iter().find(|n| n.id == id).expect("node").price;
    // The premises the hand arithmetic rests on.
    assert_eq!(price("A"), dec!(0.10));
    assert_eq!(price("B"), dec!(0.50));
    assert_eq!(c.flex_requirements[0].price, dec!(0.12));
    assert_eq!(c.flex_requirements[0].procured, dec!(4));
    (m, c)
}

fn reading(account: &str, node: &str, import: Decimal, export: Decimal) -> MeterReading {
    MeterReading {
        account: account.into(),
        node: node.into(),
        import_kwh: import,
        export_kwh: export,
    }
}

fn settle(readings: &[MeterReading]) -> Delivery {
    let (m, c) = cleared();
    let d = settle_delivery(&m, &c, readings, &DeliveryRules::default()).expect("settles");
    assert_eq!(d.total(), Decimal::ZERO, "delivery postings sum to zero");
    for p in &d.postings {
        assert!(!p.amount.is_zero(), "zero posting {p:?}");
    }
    d
}

fn balance(d: &Delivery, account: &str) -> Decimal {
    d.postings
        .iter()
        .filter(|p| p.account == account)
        .map(|p| p.amount)
        .sum()
}

fn position<'a>(d: &'a Delivery, account: &str) -> &'a baton_engine::delivery::Position {
    d.positions
        .iter()
        .find(|p| p.account == account)
        .expect("position")
}

/// Everyone meters their schedule, erin delivers her 4 kWh of flexibility: nothing moves.
fn on_schedule() -> Vec<MeterReading> {
    vec![
        reading("alice", "A", dec!(0), dec!(7)),
        reading("bob", "A", dec!(2), dec!(0)),
        reading("dave", "B", dec!(8), dec!(0)),
        reading("erin", "B", dec!(0), dec!(7)),
    ]
}

#[test]
fn delivery_to_schedule_settles_nothing() {
    let d = settle(&on_schedule());
    assert!(d.postings.is_empty(), "{:?}", d.postings);
    let erin = position(&d, "erin");
    assert_eq!(erin.cleared_kwh, dec!(3));
    assert_eq!(erin.metered_kwh, Some(dec!(7)));
    assert_eq!(erin.flex_procured_kwh, dec!(4));
    assert_eq!(erin.flex_delivered_kwh, dec!(4));
    assert_eq!(erin.flex_shortfall_kwh, dec!(0));
    assert_eq!(erin.imbalance_kwh, dec!(0));
    assert_eq!(d.missing_readings(), 0);
}

#[test]
fn short_and_long_imbalances_settle_at_the_spread_prices() {
    let mut r = on_schedule();
    // dave draws 8.5 instead of 8: short 0.5 at 0.55 = 0.275, half-even to 0.28.
    r[2] = reading("dave", "B", dec!(8.5), dec!(0));
    // alice exports 7.2 instead of 7: long 0.2 at 0.05 = 0.01.
    r[0] = reading("alice", "A", dec!(0), dec!(7.2));
    // frank has no orders and draws 1 at B: short 1 at 0.55.
    r.push(reading("frank", "B", dec!(1), dec!(0)));
    let d = settle(&r);
    assert_eq!(balance(&d, "dave"), dec!(-0.28));
    assert_eq!(position(&d, "dave").imbalance_kwh, dec!(-0.5));
    assert_eq!(position(&d, "dave").imbalance_price, Some(dec!(0.55)));
    assert_eq!(balance(&d, "alice"), dec!(0.01));
    assert_eq!(position(&d, "alice").imbalance_price, Some(dec!(0.05)));
    assert_eq!(balance(&d, "frank"), dec!(-0.55));
    assert_eq!(position(&d, "frank").cleared_kwh, dec!(0));
    assert_eq!(
        balance(&d, IMBALANCE_ACCOUNT),
        dec!(0.28) - dec!(0.01) + dec!(0.55)
    );
}

#[test]
fn partial_flexibility_delivery_is_paid_for_what_arrived_and_penalised_for_the_rest() {
    let mut r = on_schedule();
    // erin exports 5: 2 of her 4 flexible kWh arrived. The 2 missing are returned
    // (0.12 × 2 = 0.24) and penalised at half the price (0.06 × 2 = 0.12), both to the
    // requirement's account; no imbalance, because the deviation is all flexibility.
    r[3] = reading("erin", "B", dec!(0), dec!(5));
    let d = settle(&r);
    let erin = position(&d, "erin");
    assert_eq!(erin.flex_delivered_kwh, dec!(2));
    assert_eq!(erin.flex_shortfall_kwh, dec!(2));
    assert_eq!(erin.imbalance_kwh, dec!(0));
    assert_eq!(erin.flex_amount, dec!(-0.36));
    assert_eq!(balance(&d, "erin"), dec!(-0.36));
    assert_eq!(balance(&d, "network-operator"), dec!(0.36));
    let memos: Vec<(&str, Decimal)> = d
        .postings
        .iter()
        .map(|p| (p.memo.as_str(), p.amount))
        .collect();
    assert_eq!(
        memos,
        [
            ("flex shortfall erin-f for up-B", dec!(-0.24)),
            ("flex shortfall erin-f for up-B", dec!(0.24)),
            ("flex penalty erin-f for up-B", dec!(-0.12)),
            ("flex penalty erin-f for up-B", dec!(0.12)),
        ]
    );
}

#[test]
fn over_delivery_is_long_imbalance() {
    let mut r = on_schedule();
    // erin exports 9: flexibility fully delivered (4), the other 2 are long at 0.45 = 0.90.
    r[3] = reading("erin", "B", dec!(0), dec!(9));
    let d = settle(&r);
    let erin = position(&d, "erin");
    assert_eq!(erin.flex_delivered_kwh, dec!(4));
    assert_eq!(erin.imbalance_kwh, dec!(2));
    assert_eq!(erin.imbalance_price, Some(dec!(0.45)));
    assert_eq!(balance(&d, "erin"), dec!(0.90));
    assert_eq!(balance(&d, IMBALANCE_ACCOUNT), dec!(-0.90));
}

#[test]
fn moving_the_wrong_way_forfeits_the_flexibility_and_is_short() {
    let mut r = on_schedule();
    // erin exports 2, below her schedule of 3: nothing delivered (returned 0.48, penalty 0.24)
    // and short 1 at 0.55.
    r[3] = reading("erin", "B", dec!(0), dec!(2));
    let d = settle(&r);
    let erin = position(&d, "erin");
    assert_eq!(erin.flex_delivered_kwh, dec!(0));
    assert_eq!(erin.flex_shortfall_kwh, dec!(4));
    assert_eq!(erin.imbalance_kwh, dec!(-1));
    assert_eq!(balance(&d, "erin"), dec!(-0.48) - dec!(0.24) - dec!(0.55));
}

#[test]
fn a_missing_reading_is_the_schedule_and_delivers_no_flexibility() {
    // Only alice and dave read. bob is estimated at his schedule (no imbalance); erin too, but
    // her flexibility is unproven: all 4 kWh are a shortfall (0.48 returned, 0.24 penalty).
    let r = vec![
        reading("alice", "A", dec!(0), dec!(7)),
        reading("dave", "B", dec!(8), dec!(0)),
    ];
    let d = settle(&r);
    assert_eq!(d.missing_readings(), 2);
    let bob = position(&d, "bob");
    assert_eq!(bob.metered_kwh, None);
    assert_eq!(bob.imbalance_kwh, dec!(0));
    assert_eq!(balance(&d, "bob"), dec!(0));
    let erin = position(&d, "erin");
    assert_eq!(erin.metered_kwh, None);
    assert_eq!(erin.flex_shortfall_kwh, dec!(4));
    assert_eq!(balance(&d, "erin"), dec!(-0.72));
}

#[test]
fn reading_order_changes_nothing() {
    let mut r = on_schedule();
    r[2] = reading("dave", "B", dec!(8.123457), dec!(0.5));
    r[3] = reading("erin", "B", dec!(0), dec!(5.5));
    let a = settle(&r);
    r.reverse();
    assert_eq!(settle(&r), a);
}

#[test]
fn bad_readings_are_refused_naming_the_field() {
    let (m, c) = cleared();
    let rules = DeliveryRules::default();
    let dup = [
        reading("dave", "B", dec!(1), dec!(0)),
        reading("dave", "B", dec!(2), dec!(0)),
    ];
    assert!(matches!(
        settle_delivery(&m, &c, &dup, &rules),
        Err(DeliveryError::Duplicate { .. })
    ));
    let node = [reading("dave", "Z", dec!(1), dec!(0))];
    assert!(matches!(
        settle_delivery(&m, &c, &node, &rules),
        Err(DeliveryError::UnknownNode { .. })
    ));
    for (import, export, field) in [
        (dec!(-1), dec!(0), "import_kwh"),
        (dec!(0), dec!(10000.000001), "export_kwh"),
        (dec!(0.0000001), dec!(0), "import_kwh"),
    ] {
        let r = [reading("dave", "B", import, export)];
        match settle_delivery(&m, &c, &r, &rules) {
            Err(DeliveryError::Energy { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{import}/{export}: {other:?}"),
        }
    }
}
