//! The `baton` binary as a user runs it: bad input is refused with a message naming the
//! record, good input clears to the same bytes every time and whatever the record order.

use crate::baton;
use std::path::PathBuf;
use std::process::Output;

fn root() -> PathBuf {
    support::repo().to_path_buf()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn clear_json(name: &str, json: &str) -> Output {
    let p = tmp(name);
    std::fs::write(&p, json).unwrap();
    baton(&["clear", p.to_str().unwrap()])
}

const GOOD: &str = r#"{
  "format": "nodal-auction-market/v1",
  "name": "t",
  "nodes": [{"id": "1"}, {"id": "2"}, {"id": "3"}],
  "lines": [
    {"id": "12", "from": "1", "to": "2", "x": 1, "capacity": null},
    {"id": "23", "from": "2", "to": "3", "x": 1, "capacity": null},
    {"id": "13", "from": "1", "to": "3", "x": 1, "capacity": 40}
  ],
  "orders": [
    {"id": "G1", "node": "1", "side": "sell", "blocks": [{"quantity": 100, "price": 10}]},
    {"id": "G2", "node": "2", "side": "sell", "blocks": [{"quantity": 100, "price": 50}]},
    {"id": "D", "node": "3", "side": "buy", "blocks": [{"quantity": 90, "price": 1000}]}
  ]
}"#;

fn refused(name: &str, json: &str, needle: &str) {
    let out = clear_json(name, json);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name}: should fail");
    assert!(
        err.contains(needle),
        "{name}: stderr {err:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
}

#[test]
fn malformed_markets_are_refused_naming_the_record() {
    refused(
        "unknown-node.json",
        &GOOD.replace(r#""node": "3""#, r#""node": "9""#),
        "order \"D\": unknown node \"9\"",
    );
    refused(
        "zero-x.json",
        &GOOD.replace(
            r#""to": "3", "x": 1, "capacity": 40"#,
            r#""to": "3", "x": 0, "capacity": 40"#,
        ),
        "line \"13\": reactance x is zero",
    );
    refused(
        "nan.json",
        &GOOD.replace(r#""quantity": 90"#, r#""quantity": NaN"#),
        "malformed study market",
    );
    refused(
        "negative.json",
        &GOOD.replace(r#""quantity": 90"#, r#""quantity": -90"#),
        "order \"D\": blocks[0].quantity -90 is negative",
    );
    refused(
        "duplicate.json",
        &GOOD.replace(r#""id": "G2""#, r#""id": "G1""#),
        "duplicate order id \"G1\"",
    );
    refused(
        "absurd.json",
        &GOOD.replace(r#""quantity": 90"#, r#""quantity": 1e300"#),
        "order \"D\": blocks[0].quantity",
    );
    refused("truncated.json", &GOOD[..200], "malformed study market");
    let missing = baton(&["clear", "/nonexistent/market.json"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading /nonexistent/market.json"));
}

#[test]
fn clearing_is_byte_identical_across_runs_and_record_orders() {
    let a = clear_json("a.json", GOOD);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = clear_json("b.json", GOOD);
    assert_eq!(a.stdout, b.stdout, "same input, same bytes");
    let text = String::from_utf8(a.stdout.clone()).unwrap();
    assert!(text.contains("\"lmp\": 90.000000"), "{text}");

    // Shuffle orders and lines: the same result per id.
    let shuffled = GOOD
        .replace(
            r#"    {"id": "G1", "node": "1", "side": "sell", "blocks": [{"quantity": 100, "price": 10}]},
    {"id": "G2", "node": "2", "side": "sell", "blocks": [{"quantity": 100, "price": 50}]},
    {"id": "D", "node": "3", "side": "buy", "blocks": [{"quantity": 90, "price": 1000}]}"#,
            r#"    {"id": "D", "node": "3", "side": "buy", "blocks": [{"quantity": 90, "price": 1000}]},
    {"id": "G2", "node": "2", "side": "sell", "blocks": [{"quantity": 100, "price": 50}]},
    {"id": "G1", "node": "1", "side": "sell", "blocks": [{"quantity": 100, "price": 10}]}"#,
        );
    assert_ne!(shuffled, GOOD);
    let c = clear_json("c.json", &shuffled);
    let parse = |o: &Output| -> serde_json::Value { serde_json::from_slice(&o.stdout).unwrap() };
    let (ra, rc) = (parse(&a), parse(&c));
    assert_eq!(ra["nodes"], rc["nodes"]);
    assert_eq!(ra["welfare"], rc["welfare"]);
    let by_id = |r: &serde_json::Value| {
        let mut v: Vec<(String, String)> = r["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["id"].to_string(), o["accepted"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(by_id(&ra), by_id(&rc));
}

#[test]
fn import_then_clear_a_matpower_case_and_write_to_a_file() {
    let case = root().join("scenarios/cases/pglib/pglib_opf_case30_ieee.m");
    let market = tmp("case30.json");
    let out = baton(&[
        "import-matpower",
        case.to_str().unwrap(),
        "--out",
        market.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = tmp("case30.result.json");
    let out = baton(&[
        "clear",
        market.to_str().unwrap(),
        "--out",
        result.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(r["format"], "nodal-auction-result/v1");
    assert_eq!(r["nodes"].as_array().unwrap().len(), 30);
}

#[test]
fn native_scenarios_clear() {
    for s in ["scenarios/two-node.toml", "scenarios/ieee33-feeder.toml"] {
        let out = baton(&["clear", root().join(s).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let total: rust_decimal::Decimal = r["settlement"]["postings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["amount"]
                    .to_string()
                    .parse::<rust_decimal::Decimal>()
                    .unwrap()
            })
            .sum();
        assert!(total.is_zero(), "{s}: postings sum to {total}");
    }
}
