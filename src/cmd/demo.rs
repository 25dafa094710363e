//! `baton demo`: Baton's main job on one machine, in one command.
//!
//! Starts the live market in this process on loopback (embedded SQLite ledger in a directory it
//! creates), registers a population of simulated prosumers on the IEEE 33-bus feeder, lets them
//! trade over accelerated five-minute intervals, prints a line per interval as it clears, then
//! the summary, runs the regulator's `audit verify` and `audit reclear` on the ledger it produced
//! and writes an HTML report.
//!
//! The demo plays the network operator too: when a line congests, it posts (through the admin
//! API, as an operator would) a flexibility requirement on the area behind the line — up for
//! an area the line cannot feed enough, down for one it cannot export enough from — which the
//! batteries there compete for from the next intervals on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use baton_agents::{self as agents, Population, PopulationFile, RunConfig};
use baton_client::{AdminClient, AdminKey, Decimal, FlexDirection, FlexRequirement};
use baton_ledger::OperatorKey;
use baton_server::{self as server, Clock, ServerConfig};

/// The built-in population and the network it names (so the demo runs from any directory).
const POPULATION_TOML: &str = include_str!("../../scenarios/ieee33-agents.toml");
const NETWORK_TOML: &str = include_str!("../../scenarios/ieee33-feeder.toml");
/// Market seconds per real second: a five-minute interval passes in three real seconds.
const DEMO_TIME_SCALE_DEFAULT: f64 = 100.0;
/// Midnight UTC of the demo's day, unix seconds: 2026-06-21 (midsummer). Fixed, so every run
/// trades the same hours of the same day.
const DEMO_DAY_S: i64 = 1_782_000_000;
/// Once the prosumers are registered, the market clock starts this long before the first
/// interval traded, market seconds: three minutes, two before its gate (which closes a minute
/// before it starts), so at the default scale the agents have 1.2 real seconds to send their
/// first orders.
const DEMO_CLOCK_LEAD_S: i64 = 180;
/// Where the demo trades from by default, minutes after midnight: 17:00, the evening hour
/// (PV fading, households' evening peak, the estate's EVs arriving on the weak lateral).
const DEMO_START_MINUTE_DEFAULT: &str = "17:00";
/// The operator's flexibility requirement on the area behind a congested line, as a share of
/// the line's capacity.
const FLEX_REQUIREMENT_SHARE_OF_LIMIT: Decimal = Decimal::from_parts(5, 0, 0, false, 2);
/// The most the operator pays for that flexibility, currency per kW per hour.
const FLEX_REQUIREMENT_PRICE: Decimal = Decimal::from_parts(30, 0, 0, false, 2);
/// Intervals traded by default: one hour of five-minute intervals.
const DEMO_INTERVALS_DEFAULT: u32 = 12;
/// The demo market's settlement deadline for meter readings, market seconds after an
/// interval ends (two intervals).
const DEMO_METER_DEADLINE_S: i64 = 600;
/// Intervals listed beyond those traded when looking for their delivery: the market keeps
/// clearing (empty books) while the last interval's meters report.
const DELIVERY_LIST_EXTRA: u32 = 16;
/// Longest real wait for the last interval's delivery settlement after trading.
const DELIVERY_WAIT_REAL_S_MAX: u64 = 60;
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
    /// Time of day (UTC, HH:MM on a five-minute boundary) of the first interval traded.
    #[arg(long, default_value = DEMO_START_MINUTE_DEFAULT, value_parser = parse_start)]
    start: i64,
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

/// Market time held at its origin until [`HeldClock::release`], then running `scale` times
/// faster than real time: the prosumers register however long that takes, and the market's
/// hours start only then.
#[derive(Debug)]
struct HeldClock {
    origin_ms: i64,
    scale: f64,
    released: std::sync::OnceLock<Instant>,
}

impl HeldClock {
    fn new(origin_ms: i64, scale: f64) -> Self {
        HeldClock {
            origin_ms,
            scale,
            released: std::sync::OnceLock::new(),
        }
    }

    /// Starts the clock (once; later calls change nothing).
    fn release(&self) {
        let _ = self.released.set(Instant::now());
    }
}

impl Clock for HeldClock {
    fn now_ms(&self) -> i64 {
        let elapsed_ms = self
            .released
            .get()
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0 * self.scale);
        self.origin_ms + elapsed_ms as i64
    }

    fn scale(&self) -> f64 {
        self.scale
    }
}

/// `HH:MM` → seconds after midnight, on a five-minute boundary.
fn parse_start(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not HH:MM (00:00 to 23:55, a multiple of 5 minutes)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) || m % 5 != 0 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
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
    let first = DEMO_DAY_S + a.start;
    let clock = Arc::new(HeldClock::new(
        (first - DEMO_CLOCK_LEAD_S) * 1000,
        a.time_scale,
    ));
    config.clock = clock.clone();
    config.intervals_ahead = 2;
    // The agents send an interval's readings at their first look at the clock after it ends,
    // about an interval later; two intervals leave a margin and keep the wait for the last
    // interval's delivery short.
    config.meter_deadline_s = DEMO_METER_DEADLINE_S;
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
    let buses = population
        .agents
        .iter()
        .filter(|x| x.id().starts_with("bus-"))
        .count();
    if buses > 0 {
        println!("  bus loads   {buses} (the rest of each bus's load, must-take)");
    }
    println!(
        "  clock       {} intervals of 5 minutes from 2026-06-21 {:02}:{:02} UTC, {}x real time",
        a.intervals,
        a.start / 3600,
        a.start % 3600 / 60,
        a.time_scale
    );
    println!();

    let outcome = trade(&a, &dir, addr, first, &clock, &mut population).await;
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
    let verified = baton_audit::verify(&db, &public, Vec::new()).await;
    let recleared = baton_audit::reclear_ledger(&db, None).await;
    let (passed, audit_text) = match (&verified, &recleared) {
        (Ok(v), Ok(r)) => (
            true,
            format!(
                "audit verify: {} entries, hash chain, Merkle checkpoints, every signature and every book bound to its signed orders check; audit reclear: {} intervals re-cleared with identical prices, fills and payments",
                v.ledger.entries,
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

/// Registers the population and trades the intervals, printing a line per interval, while
/// the operator posts a flexibility requirement behind each line the first time it congests.
async fn trade(
    a: &DemoArgs,
    dir: &Path,
    addr: std::net::SocketAddr,
    first: i64,
    clock: &HeldClock,
    population: &mut Population,
) -> Result<()> {
    let channel = baton_client::connect(&format!("http://{addr}"))
        .await
        .context("connecting to the demo market")?;
    let key_path = dir.join(baton_ledger::key::OPERATOR_KEY_FILE);
    let operator = AdminKey::load(&key_path).context("loading the operator key")?;
    let t = Instant::now();
    let added = agents::register(channel.clone(), operator, population)
        .await
        .context("registering the prosumers")?;
    println!(
        "registered {added} prosumers with their public keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    clock.release();
    let config = RunConfig {
        intervals: a.intervals,
        first_interval: Some(first),
        ..RunConfig::default()
    };
    let admin = AdminClient::new(
        channel.clone(),
        AdminKey::load(&key_path).context("loading the operator key")?,
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(String, Decimal)>>();
    let network = population.network.clone();
    let head = population
        .network
        .grid_connections
        .iter()
        .find(|g| g.id == population.grid_connection)
        .map(|g| g.node.clone())
        .context("the population's grid connection is not in its network")?;
    let watcher = AdminClient::new(
        channel.clone(),
        AdminKey::load(&key_path).context("loading the operator key")?,
    );
    let operator_task = tokio::spawn(operate(admin, network, head, rx));
    let traded = agents::run(channel, population, &config, |r| {
        println!("{}", progress_line(r));
        let _ = tx.send(r.congested.clone());
    })
    .await
    .context("trading");
    drop(tx);
    let operated = operator_task.await.context("the operator task")?;
    let summary = traded?;
    operated?;
    println!(
        "meters: {} readings acknowledged, {} refused{}",
        summary.readings_accepted,
        summary.readings_refused,
        summary
            .reading_refusals
            .first()
            .map(|m| format!(" (first: {m})"))
            .unwrap_or_default()
    );
    if let (Some(first), Some(last)) = (summary.intervals.first(), summary.intervals.last()) {
        delivered(
            &watcher,
            summary.intervals.len(),
            first.interval_start,
            last.interval_start,
        )
        .await?;
    }
    Ok(())
}

/// Waits until the market has settled the delivery of the `intervals` traded, `first` to
/// `last` (the last one's
/// meter deadline is [`DEMO_METER_DEADLINE_S`] after it ends), then prints each one's delivery.
async fn delivered(admin: &AdminClient, intervals: usize, first: i64, last: i64) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let list = admin
            .list_intervals(intervals as u32 + DELIVERY_LIST_EXTRA, None)
            .await
            .context("listing the intervals")?;
        if list
            .iter()
            .any(|i| i.interval_start == last && i.delivery.is_some())
        {
            let mut list = list;
            list.sort_by_key(|i| i.interval_start);
            for i in list
                .iter()
                .filter(|i| (first..=last).contains(&i.interval_start))
            {
                let Some(d) = &i.delivery else { continue };
                println!(
                    "{} delivery: {} readings, {} missing; imbalance {} kWh, paid {}; flexibility delivered {} of {} kWh, penalties {}",
                    hhmm(i.interval_start),
                    d.readings_received,
                    d.readings_missing,
                    d.imbalance_kwh,
                    d.imbalance_cost,
                    d.flex_delivered_kwh,
                    d.flex_procured_kwh,
                    d.flex_penalties
                );
            }
            return Ok(());
        }
        if t0.elapsed().as_secs() >= DELIVERY_WAIT_REAL_S_MAX {
            bail!("the market did not settle the last interval's delivery within {DELIVERY_WAIT_REAL_S_MAX} s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `HH:MM` (UTC) of a unix time.
fn hhmm(t: i64) -> String {
    format!(
        "{:02}:{:02}",
        t.rem_euclid(86_400) / 3600,
        t.rem_euclid(3600) / 60
    )
}

/// The operator: the first time a line congests, posts a flexibility requirement on the area
/// behind it — up-flexibility when the flow into the area is at the limit, down when the flow
/// out of it is — for `FLEX_REQUIREMENT_SHARE_OF_LIMIT` of the line's capacity at up to
/// `FLEX_REQUIREMENT_PRICE`.
async fn operate(
    admin: AdminClient,
    network: baton_engine::MarketSpec,
    head: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(String, Decimal)>>,
) -> Result<()> {
    let mut posted: BTreeSet<String> = BTreeSet::new();
    while let Some(congested) = rx.recv().await {
        for (line, flow) in congested {
            if posted.contains(&line) {
                continue;
            }
            let Some(area) = agents::feeder::behind(&network, &head, &line) else {
                continue;
            };
            let Some(capacity) = network
                .lines
                .iter()
                .find(|l| l.id == line)
                .and_then(|l| l.capacity)
            else {
                continue;
            };
            let into_area = (flow > Decimal::ZERO) == area.forward;
            let direction = if into_area {
                FlexDirection::Up
            } else {
                FlexDirection::Down
            };
            let quantity = (capacity * FLEX_REQUIREMENT_SHARE_OF_LIMIT).round_dp(0);
            let requirement = FlexRequirement {
                id: format!("relieve-{line}"),
                nodes: area.nodes.clone(),
                direction,
                blocks: vec![(quantity, FLEX_REQUIREMENT_PRICE)],
                buyer: None,
            };
            admin
                .post_flex_requirement(&requirement)
                .await
                .with_context(|| format!("posting {}", requirement.id))?;
            println!(
                "      operator: {line} congested ({} kW {} nodes {}): posted {} {} kW of {}-flexibility at up to {}",
                flow.abs().round_dp(0),
                if into_area { "into" } else { "out of" },
                area.nodes.join(","),
                requirement.id,
                quantity,
                if into_area { "up" } else { "down" },
                FLEX_REQUIREMENT_PRICE,
            );
            posted.insert(line);
        }
    }
    Ok(())
}

/// One line per cleared interval: the book, the price range across nodes, the congested lines
/// and the flexibility procured. (Delivered flexibility and imbalance volume and cost belong
/// here too once intervals are settled against meter readings: they will come from the
/// ledger's delivery settlement, not from the runner.)
fn progress_line(r: &agents::IntervalReport) -> String {
    let hm = r.interval_start.rem_euclid(86_400);
    let congested = if r.congested.is_empty() {
        "-".to_string()
    } else {
        r.congested
            .iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let flex_nodes = if r.flex_by_node.is_empty() {
        String::new()
    } else {
        format!(
            " at {}",
            r.flex_by_node.keys().cloned().collect::<Vec<_>>().join(",")
        )
    };
    format!(
        "[{:>3}] {:02}:{:02} UTC  {:>4} orders ({} refused)  agents bought {:>7} kW, sold {:>7} kW  price {}..{} /kWh ({} prices)  congested {}  flex {} kW{}  ({} ms)",
        r.index,
        hm / 3600,
        hm % 3600 / 60,
        r.orders,
        r.refused,
        r.bought_kw.round_dp(1),
        r.sold_kw.round_dp(1),
        r.price_min.round_dp(4),
        r.price_max.round_dp(4),
        r.distinct_prices,
        congested,
        r.flex_kw.round_dp(1),
        flex_nodes,
        r.submit_ms,
    )
}
