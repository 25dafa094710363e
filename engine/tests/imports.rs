//! Every real network in `scenarios/cases/` imports and clears, and the active-set method is
//! exact against the whole LP on a real network with a large random book.

use std::path::PathBuf;

use baton_engine::model::{BlockSpec, OrderSpec, Side};
use baton_engine::{clear_with, matpower, settle, study, Market, Method};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn case(rel: &str) -> baton_engine::MarketSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/cases")
        .join(rel);
    let text = std::fs::read_to_string(&path).expect("case file");
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    matpower::import(&text, &name).expect("imports")
}

const CASES: [&str; 7] = [
    "pglib/pglib_opf_case14_ieee.m",
    "pglib/pglib_opf_case30_ieee.m",
    "pglib/pglib_opf_case118_ieee.m",
    "pglib/pglib_opf_case300_ieee.m",
    "pglib/pglib_opf_case1354_pegase.m",
    "pglib/pglib_opf_case2869_pegase.m",
    "matpower/case33bw.m",
];

#[test]
fn every_shared_case_imports_round_trips_and_clears() {
    for rel in CASES {
        let spec = case(rel);
        // Through the study JSON and back: the same market.
        let json = study::write_market(&spec).expect("writes");
        let again = study::parse_market(json.as_bytes()).expect("parses");
        assert_eq!(again.nodes, spec.nodes, "{rel}");
        assert_eq!(again.lines, spec.lines, "{rel}");
        assert_eq!(again.orders.len(), spec.orders.len(), "{rel}");
        let m = Market::new_rounding(&again).expect("validates");
        let (c, _) = clear_with(&m, Method::Full).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let s = settle(&m, &c);
        assert_eq!(s.total(), Decimal::ZERO, "{rel}");
        assert!(c.welfare > Decimal::ZERO, "{rel}");
    }
}

#[test]
fn case14_matches_the_study_format_example() {
    // The format document's example result: welfare 2587948.473691, uncongested at g1's
    // marginal cost 7.920951.
    let m = Market::new_rounding(&case("pglib/pglib_opf_case14_ieee.m")).unwrap();
    let (c, _) = clear_with(&m, Method::Full).unwrap();
    assert_eq!(c.welfare, dec!(2587948.473691));
    assert!(c.nodes.iter().all(|n| n.price == dec!(7.920951)));
}

#[test]
fn case33bw_applies_the_trailing_unit_conversions() {
    // Pd is given in kW and converted to MW by the file's own statements: bus 2 loads 0.1 MW.
    let spec = case("matpower/case33bw.m");
    let d2 = spec.orders.iter().find(|o| o.id == "d2").unwrap();
    assert_eq!(d2.blocks[0].quantity, dec!(0.1));
    // x: 0.0470 Ω / (12.66 kV² / 10 MVA) = 0.00293244… p.u.
    let l1 = &spec.lines[0];
    assert!(
        (l1.x - dec!(0.0029324)).abs() < dec!(0.0000001),
        "x = {}",
        l1.x
    );
    // The five open tie switches are not lines.
    assert_eq!(spec.lines.len(), 32);
}

/// SplitMix64, so the book is the same on every run.
fn rng(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn active_set_equals_the_whole_lp_on_case118_with_a_large_book() {
    let mut spec = case("pglib/pglib_opf_case118_ieee.m");
    // Tighten every line so the book congests the network.
    for l in &mut spec.lines {
        l.capacity = l.capacity.map(|c| (c / dec!(4)).round_dp(3));
    }
    let nodes: Vec<String> = spec.nodes.iter().map(|n| n.id.clone()).collect();
    let mut s = 118u64;
    for i in 0..6000 {
        let node = nodes[(rng(&mut s) % nodes.len() as u64) as usize].clone();
        let side = if rng(&mut s).is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        };
        let blocks = (0..1 + rng(&mut s) % 3)
            .map(|_| BlockSpec {
                quantity: Decimal::new(1 + (rng(&mut s) % 50) as i64, 1),
                price: Some(Decimal::new(1000 + (rng(&mut s) % 8000) as i64, 2)),
            })
            .collect();
        spec.orders.push(OrderSpec {
            id: format!("p{i}"),
            participant: None,
            node,
            side,
            blocks,
            device: None,
        });
    }
    let m = Market::new(&spec).unwrap();
    let (full, _) = clear_with(&m, Method::Full).unwrap();
    let (act, stats) = clear_with(&m, Method::ActiveSet { band: None }).unwrap();
    assert!(stats.lp_solves >= 2, "the active set really ran");
    assert!(
        stats.lp_columns < stats.steps,
        "the reduced LP left steps out: {} of {}",
        stats.lp_columns,
        stats.steps
    );
    // Same optimum. Fills may differ only between blocks at their node's price, so compare
    // welfare (exactly, up to rounding of marginal blocks) and the congestion pattern.
    let diff = (full.welfare - act.welfare).abs();
    assert!(
        diff <= dec!(0.0001),
        "welfare {} vs {}",
        full.welfare,
        act.welfare
    );
    assert!(
        full.lines.iter().any(|l| l.congested),
        "the book congests the network"
    );
    // Both satisfy the fill rule at their own prices (checked inside clear_with), and the
    // method is deterministic.
    let (again, _) = clear_with(&m, Method::ActiveSet { band: None }).unwrap();
    assert_eq!(again, act);
}
