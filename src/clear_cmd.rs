//! `baton clear`: one-shot offline clearing.

use std::path::Path;
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

/// Reads a market file: study JSON or native TOML scenario. The flag says whether numbers were
/// rounded to the fixed scales (study JSON) rather than required exact (scenarios).
pub(crate) fn load_market(path: &Path) -> Result<(MarketSpec, Market, bool)> {
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

/// Where and how to record a one-shot clearing.
pub(crate) struct Record {
    pub(crate) db: String,
    pub(crate) key: std::path::PathBuf,
    pub(crate) interval_start: Option<i64>,
}

pub(crate) fn run(
    path: &Path,
    out: Option<&Path>,
    method: &str,
    timings: bool,
    record: Option<Record>,
) -> Result<()> {
    let t0 = Instant::now();
    let method = match method {
        "auto" => Method::Auto,
        "full" => Method::Full,
        "active-set" => Method::ActiveSet { band: None },
        other => bail!("unknown method {other:?} (auto, full, active-set)"),
    };
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
    crate::write_out(out, &json)?;
    if let Some(r) = record {
        let minutes = i64::from(market.interval_minutes());
        let interval = r.interval_start.unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            now - now.rem_euclid(minutes * 60)
        });
        crate::ledger_cmd::record_clearing(
            &r.db,
            &r.key,
            interval,
            baton::record::interval_entries(
                interval,
                &spec,
                rounding,
                &market,
                &clearing,
                &settlement,
            )?,
        )?;
    }
    Ok(())
}
