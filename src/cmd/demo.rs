//! `baton demo`: Baton's main job on one machine, in one command.
//!
//! Starts the live market in this process on loopback (embedded SQLite ledger in a directory it
//! creates), registers a population of simulated prosumers on the IEEE 33-bus feeder, lets them
//! trade over accelerated five-minute intervals, prints a line per interval as it clears, then
//! the summary, runs the regulator's `audit verify` and `audit reclear` on the ledger it produced
//! and writes an HTML report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use baton_agents::{self as agents, Population, PopulationFile, RunConfig};
use baton_ledger::OperatorKey;
use baton_server::{self as server, ScaledClock, ServerConfig};

/// The built-in population and the network it names (so the demo runs from any directory).
const POPULATION_TOML: &str = include_str!("../../scenarios/ieee33-agents.toml");
const NETWORK_TOML: &str = include_str!("../../scenarios/ieee33-feeder.toml");
/// Market seconds per real second: a five-minute interval passes in three real seconds.
const DEMO_TIME_SCALE_DEFAULT: f64 = 100.0;
/// Where the demo's market clock starts, unix seconds: 2026-06-21 16:58 UTC, two minutes
/// before the evening hour it trades (PV fading, households' evening peak, EVs arriving).
/// Fixed, so every run trades the same hour of the same day.
const DEMO_CLOCK_START_S: i64 = 1_782_061_080;
/// Intervals traded by default: one hour of five-minute intervals.
const DEMO_INTERVALS_DEFAULT: u32 = 12;
/// Longest a demo may run, intervals (a day).
const DEMO_INTERVALS_MAX: u32 = 288;

/// `baton demo` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Directory for the ledger, keys and report (created; default: a new directory under the
    /// system's temporary directory, kept after the run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Prosumers on the feeder (default: the built-in population's 300).
    #[arg(long)]
    prosumers: Option<usize>,
    /// Five-minute intervals to trade (12 = one simulated hour).
    #[arg(long, default_value_t = DEMO_INTERVALS_DEFAULT)]
    intervals: u32,
    /// Market seconds per real second.
    #[arg(long, default_value_t = DEMO_TIME_SCALE_DEFAULT)]
    time_scale: f64,
    /// Seed of the population (default: the built-in population's).
    #[arg(long)]
    seed: Option<u64>,
    /// A population file instead of the built-in IEEE 33-bus one.
    #[arg(long)]
    population: Option<PathBuf>,
}

pub(crate) fn run(a: DemoArgs) -> Result<()> {
    if a.intervals == 0 || a.intervals > DEMO_INTERVALS_MAX {
        bail!("--intervals must be 1 to {DEMO_INTERVALS_MAX}");
    }
    if !(a.time_scale.is_finite() && a.time_scale > 0.0) {
        bail!("--time-scale must be a positive number");
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "baton-demo-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db_path = dir.join("baton.db");
    if db_path.exists() {
        bail!(
            "{} already holds a ledger; give the demo an empty --dir",
            dir.display()
        );
    }
    let (mut file, network) = match &a.population {
        Some(p) => PopulationFile::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => (
            PopulationFile::parse(POPULATION_TOML).context("the built-in population")?,
            NETWORK_TOML.to_string(),
        ),
    };
    if let Some(s) = a.seed {
        file.seed = s;
    }
    if let Some(n) = a.prosumers {
        file.prosumers = n;
    }
    let population = Population::generate(&file, &network).context("generating the population")?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(demo(a, dir, db_path, population))
}

async fn demo(
    a: DemoArgs,
    dir: PathBuf,
    db_path: PathBuf,
    mut population: Population,
) -> Result<()> {
    let t_start = Instant::now();
    let key = OperatorKey::generate_to_dir(&dir).context("generating the operator key")?;
    let public = key.public_key();
    let db = format!("sqlite://{}", db_path.display());
    let mut config = ServerConfig::new(db.clone(), key);
    config.scenario = Some(population.network_toml.clone());
    config.clock = Arc::new(ScaledClock::new(DEMO_CLOCK_START_S * 1000, a.time_scale));
    config.intervals_ahead = 2;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on loopback")?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::run(listener, config, async move {
        let _ = stop_rx.await;
    }));
    let with_pv = population
        .agents
        .iter()
        .filter(|x| x.pv().is_some())
        .count();
    let with_battery = population
        .agents
        .iter()
        .filter(|x| x.battery().is_some())
        .count();
    let with_ev = population
        .agents
        .iter()
        .filter(|x| x.ev().is_some())
        .count();
    println!("Baton demo");
    println!("  directory   {}", dir.display());
    println!(
        "  market      {} on gRPC at http://{addr}, ledger {db}",
        population.network.name
    );
    println!(
        "  prosumers   {} (seed {}): {with_pv} with PV, {with_battery} with a battery, {with_ev} with an EV",
        population.agents.len(),
        population.seed
    );
    println!(
        "  clock       {} intervals of 5 minutes from 2026-06-21 17:00 UTC, {}x real time",
        a.intervals, a.time_scale
    );
    println!();

    let outcome = trade(&a, &dir, addr, &mut population).await;
    let _ = stop_tx.send(());
    let stopped = server_task.await;
    outcome?;
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the market server failed: {e}"),
        Err(e) => bail!("the market server task failed: {e}"),
    }

    // The regulator's view: only the ledger file and the operator's public key.
    let rep = baton_audit::summary::read(&db)
        .await
        .context("reading the ledger for the report")?;
    println!();
    println!("{}", baton_report::text(&rep));
    let verified = baton_ledger::audit::verify(&db, &public, None).await;
    let recleared = baton_audit::reclear_ledger(&db, None).await;
    let (passed, audit_text) = match (&verified, &recleared) {
        (Ok(v), Ok(r)) => (
            true,
            format!(
                "audit verify: {} entries, hash chain, Merkle checkpoints and every signature check; audit reclear: {} intervals re-cleared with identical prices, fills and payments",
                v.entries,
                r.len()
            ),
        ),
        (Err(e), _) => (false, format!("audit verify FAILED: {e}")),
        (_, Err(e)) => (false, format!("audit reclear FAILED: {e:#}")),
    };
    if let Ok(v) = &verified {
        println!("audit verify: {v}");
    }
    if let Ok(r) = &recleared {
        println!(
            "audit reclear: {} interval(s) re-cleared; prices, fills and payments identical",
            r.len()
        );
    }
    let html = baton_report::html(
        &rep,
        Some(&baton_report::AuditStatus {
            passed,
            text: audit_text.clone(),
        }),
    );
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    println!();
    println!("report: {}", html_path.display());
    println!(
        "ledger: {db} (check it yourself: baton audit verify --db {db} --operator-pubkey {})",
        dir.join(baton_ledger::key::OPERATOR_PUB_FILE).display()
    );
    println!("done in {:.1} s", t_start.elapsed().as_secs_f64());
    if !passed {
        bail!("{audit_text}");
    }
    Ok(())
}

/// Registers the population and trades the intervals, printing a line per interval.
async fn trade(
    a: &DemoArgs,
    dir: &Path,
    addr: std::net::SocketAddr,
    population: &mut Population,
) -> Result<()> {
    let channel = baton_client::connect(&format!("http://{addr}"))
        .await
        .context("connecting to the demo market")?;
    let operator = baton_client::AdminKey::load(dir.join(baton_ledger::key::OPERATOR_KEY_FILE))
        .context("loading the operator key")?;
    let t = Instant::now();
    let added = agents::register(channel.clone(), operator, population)
        .await
        .context("registering the prosumers")?;
    println!(
        "registered {added} prosumers with their public keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let config = RunConfig {
        intervals: a.intervals,
        ..RunConfig::default()
    };
    agents::run(channel, population, &config, |r| {
        println!("{}", progress_line(r));
    })
    .await
    .context("trading")?;
    Ok(())
}

/// One line per cleared interval: `[ 3/12] 17:10 UTC  412 orders …`.
fn progress_line(r: &agents::IntervalReport) -> String {
    let hm = r.interval_start.rem_euclid(86_400);
    format!(
        "[{:>3}] {:02}:{:02} UTC  {:>4} orders ({} refused)  agents bought {:>7} kW, sold {:>7} kW, flex {:>6} kW  price {}..{} /kWh  ({} ms)",
        r.index,
        hm / 3600,
        hm % 3600 / 60,
        r.orders,
        r.refused,
        r.bought_kw.round_dp(1),
        r.sold_kw.round_dp(1),
        r.flex_kw.round_dp(1),
        r.price_min.round_dp(4),
        r.price_max.round_dp(4),
        r.submit_ms,
    )
}
