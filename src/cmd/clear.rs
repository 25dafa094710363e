//! `baton clear`: one-shot offline clearing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_engine::{clear_hooked, settle, study, Market, MarketSpec, Method, Phase, PhaseHook};

/// Times the clearing's phases with the wall clock: the engine reads no clock, it only says
/// when each phase begins.
#[derive(Default)]
struct PhaseTimer {
    current: Option<(Phase, Instant)>,
    build: Duration,
    solve: Duration,
    extract: Duration,
    other: Duration,
}

impl PhaseHook for PhaseTimer {
    fn enter(&mut self, phase: Phase) {
        let now = Instant::now();
        if let Some((was, since)) = self.current.take() {
            let spent = now.saturating_duration_since(since);
            match was {
                Phase::Build => self.build += spent,
                Phase::Solve => self.solve += spent,
                Phase::Extract => self.extract += spent,
                Phase::Other | Phase::Done => self.other += spent,
            }
        }
        if phase != Phase::Done {
            self.current = Some((phase, now));
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct ClearArgs {
    /// Market file: `.json` (study format) or `.toml` (native scenario).
    market: PathBuf,
    /// Where to write the result (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Solution method.
    #[arg(long, value_enum, default_value_t = MethodArg::Auto)]
    method: MethodArg,
    /// Add solver timings to the result (makes the output vary between runs).
    #[arg(long)]
    timings: bool,
    /// Also record the clearing (market, result, settlement, checkpoint) in this ledger:
    /// `sqlite://path` or `postgres://…`.
    #[arg(long, requires = "operator_key")]
    ledger: Option<String>,
    /// The operator's private key file (from `baton keys generate`).
    #[arg(long)]
    operator_key: Option<PathBuf>,
    /// Interval start recorded in the ledger, unix seconds (default: now, floored to the
    /// interval length).
    #[arg(long)]
    interval_start: Option<i64>,
}

/// `--method`: how the LP is solved.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MethodArg {
    /// The active set for large books, the whole LP for small ones.
    Auto,
    /// One LP with every step.
    Full,
    /// The exact active-set method, whatever the book's size.
    ActiveSet,
}

/// Reads a market file: study JSON or native TOML scenario. The flag says whether numbers were
/// rounded to the fixed scales (study JSON) rather than required exact (scenarios).
fn load_market(path: &Path) -> Result<(MarketSpec, Market, bool)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > study::STUDY_FILE_BYTES_MAX {
        bail!(
            "{} is larger than {} bytes",
            path.display(),
            study::STUDY_FILE_BYTES_MAX
        );
    }
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let spec = if is_toml {
        let text = std::str::from_utf8(&bytes).context("scenario is not UTF-8")?;
        baton_engine::scenario::parse(text)
            .with_context(|| format!("{}", path.display()))?
            .market
    } else {
        study::parse_market(&bytes).with_context(|| format!("{}", path.display()))?
    };
    let market = if is_toml {
        Market::new(&spec)
    } else {
        Market::new_rounding(&spec)
    }
    .with_context(|| format!("{}", path.display()))?;
    Ok((spec, market, !is_toml))
}

pub(crate) fn run(a: ClearArgs) -> Result<()> {
    let t0 = Instant::now();
    let (path, out, timings) = (a.market.as_path(), a.out.as_deref(), a.timings);
    let method = match a.method {
        MethodArg::Auto => Method::Auto,
        MethodArg::Full => Method::Full,
        MethodArg::ActiveSet => Method::ActiveSet { band: None },
    };
    // `requires` makes clap refuse --ledger without --operator-key.
    let record = a.ledger.zip(a.operator_key);
    if record.is_some() && method != Method::Auto {
        bail!("--ledger records clearings by the default method only (the one re-clear uses)");
    }
    let (spec, market, rounding) = load_market(path)?;
    let t_load = t0.elapsed().as_secs_f64();
    let mut timer = PhaseTimer::default();
    let (clearing, stats) = clear_hooked(&market, method, &mut timer).context("clearing failed")?;
    let settlement = settle(&market, &clearing);
    let total = t0.elapsed().as_secs_f64();
    let timing_json = serde_json::json!({
        "total": total,
        "load": t_load,
        "build": timer.build.as_secs_f64(),
        "solve": timer.solve.as_secs_f64(),
        "extract": timer.extract.as_secs_f64(),
        "other": timer.other.as_secs_f64(),
        "method": stats.method,
        "lp_solves": stats.lp_solves,
        "lp_columns": stats.lp_columns,
    });
    eprintln!(
        "baton: cleared {} ({} blocks, {} steps) by {} in {:.3} s: {} LP solve(s), HiGHS {:.3} s, build {:.3} s, extract {:.3} s",
        market.name(),
        stats.blocks,
        stats.steps,
        stats.method,
        total,
        stats.lp_solves,
        timer.solve.as_secs_f64(),
        timer.build.as_secs_f64(),
        timer.extract.as_secs_f64()
    );
    let json = study::write_result(
        &clearing,
        &settlement,
        market.participant_order_count(),
        timings.then_some(timing_json),
    );
    super::write_out(out, &json)?;
    if let Some((db, key)) = record {
        let minutes = i64::from(market.interval_minutes());
        let interval = a.interval_start.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            now - now.rem_euclid(minutes * 60)
        });
        super::audit::record_clearing(
            &db,
            &key,
            interval,
            // An operator-entered book: its gate binds the market the input carries.
            std::iter::once(baton_audit::record::operator_gate(interval, &spec))
                .chain(baton_audit::record::interval_entries(
                    interval,
                    Some(&spec),
                    rounding,
                    &market,
                    &clearing,
                    &settlement,
                )?)
                .collect(),
        )?;
    }
    Ok(())
}
