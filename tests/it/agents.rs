//! `baton agents` end to end: a real server on 127.0.0.1:0 with the IEEE 33-bus feeder, a
//! real SQLite ledger and an accelerated clock; a population of simulated prosumers registers
//! through the admin API and trades three intervals. The ledger — not the runner's own
//! report — is the judge: every order is in it, peers traded with each other, every battery's
//! state of charge is exactly what its recorded fills imply, and a second run with the same
//! seed on a fresh server records the very same intervals.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_agents::runner::{Leg, NONCES_PER_INTERVAL};
use baton_agents::{self as agents, Population, PopulationFile, Purpose, RunConfig, RunSummary};
use baton_client::AdminKey;
use baton_engine::model::Direction;
use baton_ledger::{EntryKind, Ledger};
use rust_decimal::Decimal;
use support::{FEEDER, INTERVAL_S, OPERATOR_SEED, T0_MIDDAY as T0};

const POPULATION: &str = include_str!("../../scenarios/ieee33-agents.toml");
/// Market seconds per real second: an interval lasts 7.5 s, the first gate (T0 + 240) is 6 s
/// after the server starts — ample for registering 30 agents and sending their orders.
const SCALE: f64 = 40.0;
const AGENTS: usize = 30;
const INTERVALS: u32 = 3;
const SEED: u64 = 2027;

/// The shipped population (flexibility offers on) with `seed`, cut to `AGENTS` households
/// (without its clusters and bus loads, which `tests/it/demo.rs` and `tests/it/feeder.rs` run).
fn population_of(seed: u64) -> Population {
    let mut f = PopulationFile::parse(POPULATION).unwrap();
    f.seed = seed;
    f.prosumers = AGENTS;
    f.cluster.clear();
    f.bus_load = None;
    Population::generate(&f, FEEDER).unwrap()
}

fn population() -> Population {
    population_of(SEED)
}

struct Run {
    summary: RunSummary,
    initial: Population,
    last: Population,
    db_url: String,
    _db: support::TempLedger,
}

/// Starts a fresh server, registers the population, trades `INTERVALS` intervals from
/// T0 + 300 on, stops the server.
async fn run_once() -> Run {
    let db = support::TempLedger::sqlite();
    let db_url = db.url.clone();
    // 11:00 UTC: the sun is up, so PV owners have a surplus to sell to their neighbours.
    let mut config = support::config(&db_url);
    config.clock = support::clock_from(T0, SCALE);
    config.scenario = Some(FEEDER.to_string());
    let mut server = support::Server::start(config).await;
    let channel = baton_client::connect(&server.url()).await.unwrap();
    let initial = population();
    let mut pop = initial.clone();
    let added = agents::register(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED), &pop)
        .await
        .unwrap();
    assert_eq!(added, AGENTS);
    // Registering again changes nothing: already registered with the same key is fine.
    let again = agents::register(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED), &pop)
        .await
        .unwrap();
    assert_eq!(again, 0);
    // The operator asks for up-flexibility on the far laterals (13-18 and 29-33), as
    // operators do, through the admin API.
    let admin =
        baton_client::AdminClient::new(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED));
    let nodes = (13..=18).chain(29..=33).map(|n| n.to_string()).collect();
    admin
        .post_flex_requirement(&baton_client::FlexRequirement {
            id: "evening-laterals".into(),
            nodes,
            direction: baton_client::FlexDirection::Up,
            blocks: vec![
                (Decimal::from(15), Decimal::new(50, 2)),
                (Decimal::from(20), Decimal::new(12, 2)),
            ],
            buyer: None,
        })
        .await
        .unwrap();
    let cfg = RunConfig {
        intervals: INTERVALS,
        streams: 3,
        first_interval: Some(T0 + INTERVAL_S),
        flex_offers: true,
        // Metering end to end is the demo's test (tests/it/demo.rs) and tests/it/metering.rs.
        meter_readings: false,
    };
    let mut lines = Vec::new();
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        agents::run(channel, &mut pop, &cfg, |r| lines.push(r.to_string())),
    )
    .await
    .expect("three intervals within two minutes")
    .unwrap();
    assert_eq!(lines.len(), INTERVALS as usize, "one progress line each");
    for l in &lines {
        eprintln!("{l}");
    }
    server.stop().await;
    Run {
        summary,
        initial,
        last: pop,
        db_url,
        _db: db,
    }
}

/// The three recorded entries (input, result, settlement) of each traded interval.
async fn recorded(db_url: &str) -> BTreeMap<i64, Vec<(EntryKind, Vec<u8>)>> {
    let ledger = Ledger::open_existing(db_url).await.unwrap();
    let mut out: BTreeMap<i64, Vec<(EntryKind, Vec<u8>)>> = BTreeMap::new();
    for e in ledger.entries(1, u64::MAX).await.unwrap() {
        let traded = (1..=i64::from(INTERVALS)).map(|k| T0 + k * INTERVAL_S);
        match (e.kind, e.interval_start) {
            (
                EntryKind::IntervalInput | EntryKind::IntervalResult | EntryKind::Settlement,
                Some(s),
            ) if traded.clone().any(|t| t == s) => {
                out.entry(s).or_default().push((e.kind, e.body));
            }
            _ => {}
        }
    }
    ledger.close().await;
    out
}

fn result_json(entries: &[(EntryKind, Vec<u8>)]) -> serde_json::Value {
    let body = &entries
        .iter()
        .find(|(k, _)| *k == EntryKind::IntervalResult)
        .expect("a result entry")
        .1;
    serde_json::from_slice(body).unwrap()
}

fn dec(v: &serde_json::Value) -> Decimal {
    v.to_string().trim_matches('"').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_trade_on_the_ieee33_feeder_and_replay_identically() {
    let first = run_once().await;

    // Every order was accepted, in every interval.
    assert_eq!(first.summary.intervals.len(), INTERVALS as usize);
    for r in &first.summary.intervals {
        assert!(r.orders > 0, "{r}");
        assert_eq!(r.refused, 0, "{r}");
        assert_eq!(r.accepted, r.orders, "{r}");
        assert_eq!(r.skipped, 0, "{r}");
    }
    assert_eq!(first.summary.intervals[0].interval_start, T0 + INTERVAL_S);

    let ledger = recorded(&first.db_url).await;
    assert_eq!(
        ledger.len(),
        INTERVALS as usize,
        "all three intervals recorded"
    );
    let order_count: usize = first.summary.intervals.iter().map(|r| r.orders).sum();
    let mut recorded_orders = 0;
    // Accepted totals per order id, from the ledger's results.
    let mut accepted: BTreeMap<String, Decimal> = BTreeMap::new();
    for (s, entries) in &ledger {
        assert_eq!(entries.len(), 3, "interval {s}: input, result, settlement");
        let r = result_json(entries);
        // Peer-to-peer volume: attributions between two prosumers' orders (grid connection
        // orders are `<id>/import` and `<id>/export`).
        let p2p: Decimal = r["settlement"]["attributions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                let b = a["buyer"].as_str().unwrap();
                let s = a["seller"].as_str().unwrap();
                !b.contains('/') && !s.contains('/')
            })
            .map(|a| dec(&a["quantity"]))
            .sum();
        assert!(p2p > Decimal::ZERO, "interval {s}: no peer-to-peer volume");
        // Energy orders and flexibility offers alike.
        let offers = r["flex_offers"].as_array().cloned().unwrap_or_default();
        for o in r["orders"].as_array().unwrap().iter().chain(&offers) {
            let id = o["id"].as_str().unwrap().to_string();
            recorded_orders += 1;
            accepted.insert(id, dec(&o["accepted_total"]));
        }
    }
    assert_eq!(
        recorded_orders, order_count,
        "every acknowledged order was cleared"
    );

    // Every battery holds exactly what its recorded fills imply:
    // start + 5 min × (charged × efficiency − discharged), in kW·min, where flexibility
    // allocated up is discharged and down is charged.
    let mut batteries = 0;
    for (before, after) in first.initial.agents.iter().zip(&first.last.agents) {
        let (Some(b0), Some(b1)) = (before.battery(), after.battery()) else {
            continue;
        };
        batteries += 1;
        let mut expected = b0.stored_kwmin();
        for (id, q) in &accepted {
            let Some((agent, nonce)) = id.rsplit_once('-') else {
                continue;
            };
            if agent != before.id() {
                continue;
            }
            let nonce: u64 = nonce.parse().unwrap();
            assert!(
                nonce / NONCES_PER_INTERVAL > T0 as u64,
                "nonce from the interval"
            );
            match Leg::of_nonce(nonce) {
                Some(Leg::Energy(Purpose::BatteryCharge) | Leg::Flex(Direction::Down)) => {
                    expected += *q * Decimal::from(5) * b0.efficiency()
                }
                Some(Leg::Energy(Purpose::BatteryDischarge) | Leg::Flex(Direction::Up)) => {
                    expected -= *q * Decimal::from(5)
                }
                _ => {}
            }
        }
        assert_eq!(b1.stored_kwmin(), expected, "battery of {}", before.id());
        assert!(b1.soc() >= Decimal::ZERO && b1.soc() <= Decimal::ONE);
    }
    assert!(batteries > 0, "the population has batteries");
    let moved = first
        .initial
        .agents
        .iter()
        .zip(&first.last.agents)
        .filter(|(a, b)| a.battery() != b.battery())
        .count();
    assert!(moved > 0, "some battery traded");
    // The operator's evening-laterals requirement (up, nodes 13-18 and 29-33, posted above)
    // buys from the batteries there.
    let flex: Decimal = first.summary.intervals.iter().map(|r| r.flex_kw).sum();
    assert!(flex > Decimal::ZERO, "some flexibility was allocated");

    // The same seed against a fresh server records the very same intervals, byte for byte.
    let second = run_once().await;
    assert_eq!(second.summary, {
        let mut s = first.summary.clone();
        // Only the wall-clock timings may differ.
        for (a, b) in s.intervals.iter_mut().zip(&second.summary.intervals) {
            a.submit_ms = b.submit_ms;
            a.fills_ms = b.fills_ms;
        }
        s
    });
    let again = recorded(&second.db_url).await;
    assert_eq!(ledger, again, "same seed, same recorded intervals");
}

/// A `baton serve` child process on the feeder, 60× real time (killed on drop), and its
/// directory.
struct Serve {
    process: support::ServeProcess,
    dir: tempfile::TempDir,
}

fn spawn_serve() -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("operator.key");
    let mut serve = support::serve_command(crate::BATON, dir.path(), &key, "ieee33-feeder.toml");
    serve.args(["--time-scale", "60"]);
    Serve {
        process: support::ServeProcess::spawn(serve, None),
        dir,
    }
}

/// The operator's path with the binaries alone: `baton agents --write-participants` writes
/// the registration CSV (the same bytes the library generates), `baton admin participants
/// import` registers it, and `baton agents --server` trades with one progress line per
/// interval and no refusal.
#[test]
fn the_cli_writes_the_csv_the_operator_imports_and_trades() {
    let baton = || std::process::Command::new(crate::BATON);
    let population = support::scenario_path("ieee33-agents.toml");
    let serve = spawn_serve();
    let csv = serve.dir.path().join("participants.csv");
    let out = baton()
        .args(["agents", "--scenario"])
        .arg(&population)
        .args([
            "--seed",
            "2027",
            "--prosumers",
            "30",
            "--write-participants",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    // The whole file: the 30 households, the estate's 120 and the 24 farms, 32 bus loads.
    let mut f = PopulationFile::parse(POPULATION).unwrap();
    f.seed = SEED;
    f.prosumers = AGENTS;
    let whole = Population::generate(&f, FEEDER).unwrap();
    assert_eq!(text, whole.participants_csv());
    assert_eq!(text.lines().count(), AGENTS + 120 + 24 + 32 + 1);

    let url = serve.process.url();
    let out = baton()
        .args(["admin", "--server", &url, "--operator-key"])
        .arg(serve.dir.path().join("operator.key"))
        .args(["participants", "import"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = baton()
        .args(["agents", "--server", &url, "--scenario"])
        .arg(&population)
        .args(["--seed", "2027", "--prosumers", "30", "--intervals", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.starts_with("interval "), "{l}");
        assert!(l.contains(" 0 refused"), "{l}");
    }

    // Without --server or --write-participants there is nothing to do: refused.
    let out = baton()
        .args(["agents", "--scenario"])
        .arg(&population)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server"));
}
