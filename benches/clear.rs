//! Clearing benchmarks: `cargo bench -p baton-benches --bench clear` (release profile).
//!
//! Prints, for the record in the issue notes:
//! 1. PGLib case2869 (study format, from the MATPOWER import): the `baton clear` pipeline
//!    in-process (read, parse, validate, clear, settle, write JSON), median of several runs,
//!    with HiGHS' own solve time against model building + result extraction; and, when
//!    `target/release/baton` exists, the whole process timed from outside.
//! 2. 1,000,000 prosumer orders (1–3 blocks, prices on a 0.01 tick) spread over case2869's
//!    nodes on top of its generators and loads: validation + clearing + settlement time and the
//!    process's peak resident memory.
//!
//! `BATON_BENCH_ORDERS` overrides the order count (e.g. 200000 for a quick look).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use baton_engine::model::{BlockSpec, MarketSpec, OrderSpec, Side};
use baton_engine::{clear_hooked, matpower, settle, study, Market, Method, Phase, PhaseHook};
use rust_decimal::Decimal;

/// Runs of the case2869 pipeline; the median is reported.
const CASE_RUNS: usize = 5;
/// Orders in the large-book benchmark.
const LARGE_BOOK_ORDERS: usize = 1_000_000;

/// Seconds per clearing phase, timed here: the engine reads no clock, it only says when each
/// phase begins.
#[derive(Default)]
struct PhaseTimer {
    current: Option<(Phase, Instant)>,
    build_s: f64,
    extract_s: f64,
    /// Seconds inside HiGHS, per LP solve.
    solves_s: Vec<f64>,
}

impl PhaseTimer {
    fn solve_s(&self) -> f64 {
        self.solves_s.iter().sum()
    }
}

impl PhaseHook for PhaseTimer {
    fn enter(&mut self, phase: Phase) {
        let now = Instant::now();
        if let Some((was, since)) = self.current.take() {
            let spent = now.saturating_duration_since(since).as_secs_f64();
            match was {
                Phase::Build => self.build_s += spent,
                Phase::Solve => self.solves_s.push(spent),
                Phase::Extract => self.extract_s += spent,
                Phase::Other | Phase::Done => {}
            }
        }
        if phase != Phase::Done {
            self.current = Some((phase, now));
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

fn case2869() -> MarketSpec {
    let path = repo_root().join("scenarios/cases/pglib/pglib_opf_case2869_pegase.m");
    let text = std::fs::read_to_string(&path).expect("case2869 is in scenarios/cases");
    matpower::import(&text, "pglib_opf_case2869_pegase").expect("imports")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bench_case2869() {
    let dir = std::env::temp_dir().join(format!("baton-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("case2869.json");
    std::fs::write(
        &json_path,
        study::write_market(&case2869()).expect("writes"),
    )
    .expect("write");

    let mut totals = Vec::new();
    let mut solves = Vec::new();
    let mut overheads = Vec::new();
    for _ in 0..CASE_RUNS {
        let t0 = Instant::now();
        let bytes = std::fs::read(&json_path).expect("read");
        let spec = study::parse_market(&bytes).expect("parses");
        let market = Market::new_rounding(&spec).expect("validates");
        let mut timer = PhaseTimer::default();
        let (c, _) = clear_hooked(&market, Method::Auto, &mut timer).expect("clears");
        let s = settle(&market, &c);
        let out = study::write_result(&c, &s, market.participant_order_count(), None);
        std::hint::black_box(out);
        totals.push(t0.elapsed().as_secs_f64());
        solves.push(timer.solve_s());
        overheads.push(timer.build_s + timer.extract_s);
    }
    let (total, solve, overhead) = (median(totals), median(solves), median(overheads));
    println!(
        "case2869 in-process pipeline: median {total:.3} s over {CASE_RUNS} runs; HiGHS solve {solve:.3} s; model build + extraction {overhead:.3} s = {:.1}% of the solve",
        100.0 * overhead / solve
    );

    let exe = repo_root().join("target/release/baton");
    if exe.exists() {
        let mut walls = Vec::new();
        for _ in 0..CASE_RUNS {
            let t0 = Instant::now();
            let st = Command::new(&exe)
                .arg("clear")
                .arg(&json_path)
                .arg("--out")
                .arg(dir.join("result.json"))
                .stderr(std::process::Stdio::null())
                .status()
                .expect("runs baton");
            assert!(st.success());
            walls.push(t0.elapsed().as_secs_f64());
        }
        println!(
            "case2869 `baton clear` whole process: median {:.3} s over {CASE_RUNS} runs",
            median(walls)
        );
    } else {
        println!("(build `cargo build --release` to also time the `baton clear` process)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SplitMix64: a tiny deterministic generator, so the book is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Adds `n` prosumer orders to the case: node uniform, side even, 1–3 blocks of 0.1–5.0 MW,
/// prices on a 0.01 tick in 10–90 $/MWh (buy curves descending, sell curves ascending).
fn large_book(n: usize) -> MarketSpec {
    let mut spec = case2869();
    let mut rng = Rng(2869);
    let nodes: Vec<String> = spec.nodes.iter().map(|n| n.id.clone()).collect();
    spec.orders.reserve(n);
    for i in 0..n {
        let node = nodes[rng.below(nodes.len() as u64) as usize].clone();
        let side = if rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let k = 1 + rng.below(3) as usize;
        let mut price = 1000 + rng.below(8000) as i64; // cents
        let mut blocks = Vec::with_capacity(k);
        for _ in 0..k {
            let quantity = Decimal::new(1 + rng.below(50) as i64, 1);
            blocks.push(BlockSpec {
                quantity,
                price: Some(Decimal::new(price, 2)),
            });
            let step = 1 + rng.below(500) as i64;
            price = match side {
                Side::Buy => (price - step).max(1000),
                Side::Sell => (price + step).min(9000),
            };
        }
        spec.orders.push(OrderSpec {
            id: format!("p{i}"),
            participant: None,
            node,
            side,
            blocks,
            device: None,
        });
    }
    spec
}

fn bench_large_book() {
    let n = std::env::var("BATON_BENCH_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LARGE_BOOK_ORDERS);
    let spec = large_book(n);
    let t0 = Instant::now();
    let market = Market::new(&spec).expect("validates");
    let t_validate = t0.elapsed().as_secs_f64();
    drop(spec);
    let t1 = Instant::now();
    let mut timer = PhaseTimer::default();
    let (c, stats) = clear_hooked(&market, Method::Auto, &mut timer).expect("clears");
    let t_clear = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let s = settle(&market, &c);
    let t_settle = t2.elapsed().as_secs_f64();
    assert_eq!(s.total(), Decimal::ZERO);
    println!(
        "{n} orders ({} blocks, {} steps) on case2869: validate {t_validate:.2} s + clear {t_clear:.2} s + settle {t_settle:.2} s = {:.2} s; {} by {} LP solves, last LP {} columns; HiGHS {:.2} s, build {:.2} s, extract {:.2} s; {} postings, {} attributions; peak RSS {:.0} MiB",
        stats.blocks,
        stats.steps,
        t_validate + t_clear + t_settle,
        stats.method,
        stats.lp_solves,
        stats.lp_columns,
        timer.solve_s(),
        timer.build_s,
        timer.extract_s,
        s.postings.len(),
        s.attributions.len(),
        peak_rss_mib()
    );
    let rounds: Vec<(usize, f64, usize)> = stats
        .rounds
        .iter()
        .zip(&timer.solves_s)
        .map(|(&(columns, freed), &s)| (columns, s, freed))
        .collect();
    println!("  LP solves (columns, HiGHS s, steps freed after): {rounds:?}");
    // What the ledger records for this interval (compact) against the pretty study file.
    let t3 = Instant::now();
    let compact = study::write_result_compact(&c, &s, market.participant_order_count());
    let t_compact = t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    let pretty = study::write_result(&c, &s, market.participant_order_count(), None);
    let t_pretty = t4.elapsed().as_secs_f64();
    println!(
        "  interval_result: {} bytes compact ({:.0} B/order, {t_compact:.2} s), {} bytes pretty ({:.0} B/order, {t_pretty:.2} s)",
        compact.len(),
        compact.len() as f64 / n as f64,
        pretty.len(),
        pretty.len() as f64 / n as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with no flag: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("clear bench: run with `cargo bench -p baton-benches --bench clear`");
        return;
    }
    bench_case2869();
    bench_large_book();
}
