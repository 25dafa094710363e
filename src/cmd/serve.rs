//! `baton serve`: runs the live market until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use baton_ledger::OperatorKey;
use baton_server::{self as server, Clock, Limits, ScaledClock, ServerConfig, WallClock};
use rust_decimal::Decimal;
use serde::Deserialize;

/// `baton serve` flags; each overrides the same key in `--config`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the keys below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:50051).
    #[arg(long)]
    listen: Option<String>,
    /// Ledger database (default sqlite://baton.db).
    #[arg(long)]
    db: Option<String>,
    /// The operator's ed25519 key file (created with its .pub if missing).
    #[arg(long)]
    operator_key: Option<PathBuf>,
    /// Native TOML scenario to load at start.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Interval length, minutes (default 5).
    #[arg(long)]
    interval_minutes: Option<u32>,
    /// Gate closure before interval start, seconds (default 60).
    #[arg(long)]
    gate_lead_seconds: Option<i64>,
    /// Intervals ahead that accept orders (default 12).
    #[arg(long)]
    intervals_ahead: Option<u32>,
    /// Meter readings for an interval are accepted until this many seconds after it ends;
    /// then its delivery is settled (default 900).
    #[arg(long)]
    meter_deadline_s: Option<i64>,
    /// Run market time this many times faster than real time (demos, tests).
    #[arg(long)]
    time_scale: Option<f64>,
    /// Price floor, overriding the scenario's.
    #[arg(long)]
    price_floor: Option<Decimal>,
    /// Price cap, overriding the scenario's.
    #[arg(long)]
    price_cap: Option<Decimal>,
    /// Open orders per participant.
    #[arg(long)]
    open_orders_max: Option<usize>,
    /// Serve over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Once listening, write the bound address to this file (for scripts and tests that
    /// listen on port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Run as this node of several on one postgres:// ledger: any node takes orders, one
    /// leader (elected by a lease in the database) clears.
    #[arg(long)]
    node_id: Option<String>,
    /// With --node-id: the gRPC address other nodes name for this one (default: the
    /// listening address).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// With --node-id: the leader's lease, milliseconds (default 3000): a dead leader is
    /// replaced within about this long.
    #[arg(long)]
    lease_ms: Option<i64>,
    /// Serve Prometheus metrics (GET /metrics, plain HTTP) on this address.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// With --time-scale: the Unix time (ms) at which market time equals wall time, so that
    /// several nodes started at different moments share one accelerated clock.
    #[arg(long)]
    time_anchor_ms: Option<i64>,
    /// Test only: make one of the server's tasks panic once it runs, to check that the market
    /// halts and the process exits non-zero.
    #[arg(long, hide = true, value_enum)]
    inject_fault: Option<Fault>,
}

/// A task `--inject-fault` makes panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Fault {
    /// The interval scheduler, at its next clock tick.
    Scheduler,
    /// The group-commit task, on the next batch of orders.
    Commit,
}

/// `--config` file keys: the flag names with underscores.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    db: Option<String>,
    operator_key: Option<PathBuf>,
    scenario: Option<PathBuf>,
    interval_minutes: Option<u32>,
    gate_lead_seconds: Option<i64>,
    intervals_ahead: Option<u32>,
    meter_deadline_s: Option<i64>,
    time_scale: Option<f64>,
    price_floor: Option<Decimal>,
    price_cap: Option<Decimal>,
    open_orders_max: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    node_id: Option<String>,
    advertise_addr: Option<String>,
    lease_ms: Option<i64>,
    metrics_addr: Option<String>,
    time_anchor_ms: Option<i64>,
}

pub(crate) fn run(a: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and pipes get plain `key=value` fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let f: FileConfig = match &a.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?,
        None => FileConfig::default(),
    };
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let db = a.db.or(f.db).unwrap_or_else(|| "sqlite://baton.db".into());
    let key_path = a
        .operator_key
        .or(f.operator_key)
        .unwrap_or_else(|| PathBuf::from(baton_ledger::key::OPERATOR_KEY_FILE));
    let key = if key_path.exists() {
        OperatorKey::load(&key_path).with_context(|| format!("{}", key_path.display()))?
    } else {
        let dir = key_path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(std::path::Path::new("."));
        eprintln!(
            "baton: no operator key at {}: generating one",
            key_path.display()
        );
        OperatorKey::generate_to_dir(dir).context("generating the operator key")?
    };
    let mut config = ServerConfig::new(db, key);
    if let Some(p) = a.scenario.or(f.scenario) {
        config.scenario =
            Some(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    if let Some(m) = a.interval_minutes.or(f.interval_minutes) {
        config.interval_minutes = m;
    }
    if let Some(g) = a.gate_lead_seconds.or(f.gate_lead_seconds) {
        config.gate_lead_s = g;
    }
    if let Some(s) = a.meter_deadline_s.or(f.meter_deadline_s) {
        config.meter_deadline_s = s;
    }
    if let Some(n) = a.intervals_ahead.or(f.intervals_ahead) {
        config.intervals_ahead = n;
    }
    let clock: Arc<dyn Clock> = match (
        a.time_scale.or(f.time_scale),
        a.time_anchor_ms.or(f.time_anchor_ms),
    ) {
        (Some(s), Some(anchor)) if s != 1.0 => Arc::new(ScaledClock::anchored(anchor, s)),
        (Some(s), None) if s != 1.0 => Arc::new(ScaledClock::from_now(s)),
        _ => Arc::new(WallClock),
    };
    if let Some(id) = a.node_id.or(f.node_id) {
        let mut node = server::NodeConfig::new(id);
        node.advertise_addr = a.advertise_addr.or(f.advertise_addr);
        if let Some(ms) = a.lease_ms.or(f.lease_ms) {
            node.lease_ms = ms;
        }
        config.node = Some(node);
    }
    let metrics_addr = a.metrics_addr.or(f.metrics_addr);
    config.clock = clock;
    config.price_floor = a.price_floor.or(f.price_floor);
    config.price_cap = a.price_cap.or(f.price_cap);
    config.limits = Limits {
        open_orders_per_participant_max: a
            .open_orders_max
            .or(f.open_orders_max)
            .unwrap_or(Limits::default().open_orders_per_participant_max),
        ..Limits::default()
    };
    config.tls = match (a.tls_cert.or(f.tls_cert), a.tls_key.or(f.tls_key)) {
        (Some(c), Some(k)) => Some(server::TlsIdentity {
            cert_pem: std::fs::read(&c).with_context(|| format!("reading {}", c.display()))?,
            key_pem: std::fs::read(&k).with_context(|| format!("reading {}", k.display()))?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    match a.inject_fault {
        Some(Fault::Scheduler) => config
            .faults
            .scheduler_panics
            .store(true, Ordering::Relaxed),
        Some(Fault::Commit) => config.faults.commit_panics.store(true, Ordering::Relaxed),
        None => {}
    }
    let ready_file = a.ready_file.or(f.ready_file);
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        eprintln!("baton: listening on {addr}");
        if let Some(m) = &metrics_addr {
            let l = tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("metrics: listening on {m}"))?;
            eprintln!("baton: metrics on http://{}/metrics", l.local_addr()?);
            config.metrics_listener = Some(l);
        }
        if let Some(p) = &ready_file {
            write_ready_file(p, addr).with_context(|| format!("writing {}", p.display()))?;
        }
        server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Writes `ADDR\n` to `path` through a temporary file beside it and a rename, so a reader
/// polling for the file never sees it half written.
fn write_ready_file(path: &std::path::Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
