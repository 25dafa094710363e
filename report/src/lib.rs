//! Renders a ledger's [`Report`] (read by `baton_audit::summary`): a text table ([`text`]) and
//! one self-contained HTML market report ([`html`]).
//!
//! **Architecture Invariant:** rendering is a pure function of the [`Report`]: no clock, no
//! hash-map iteration order, no floating point. The same ledger gives the same bytes.

use std::fmt::Write as _;

use baton_audit::summary::{IntervalStatus, Report};
use baton_engine::units::round_at;
use rust_decimal::Decimal;

mod feeder;
mod html;

pub use baton_audit::summary::HEATMAP_NODES_MAX;
pub use html::{
    html, AuditStatus, CHART_INTERVALS_MAX, CONGESTED_LINES_LISTED_MAX, CONGESTED_TIMES_LISTED_MAX,
    HEATMAP_CELLS_MAX,
};

/// Widest line of the text summary, in characters.
pub const TEXT_WIDTH_MAX: usize = 100;

/// Date and time of a unix timestamp, UTC: (year, month, day, hour, minute).
pub(crate) fn utc(ts: i64) -> (i64, i64, i64, i64, i64) {
    // Days to civil date: Howard Hinnant's `civil_from_days`, exact for every i64 day count
    // a timestamp can give.
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3_600, secs % 3_600 / 60)
}

/// `YYYY-MM-DD`.
pub(crate) fn date(ts: i64) -> String {
    let (y, m, d, _, _) = utc(ts);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM`.
pub(crate) fn hhmm(ts: i64) -> String {
    let (_, _, _, h, mi) = utc(ts);
    format!("{h:02}:{mi:02}")
}

/// A price as people write it: the recorded value without trailing zeros, but at least two
/// decimal places (`0.300000` → `0.30`, `0.123456` → `0.123456`).
pub(crate) fn show_price(p: Decimal) -> String {
    let mut n = p.normalize();
    if n.scale() < 2 {
        n.rescale(2);
    }
    n.to_string()
}

/// A quantity for display, rounded by the engine's rule to `dp` places.
pub(crate) fn show_fixed(d: Decimal, dp: u32) -> String {
    round_at(d, dp).to_string()
}

/// `min..max`, or the one price when they are equal.
pub(crate) fn price_range(min: Option<Decimal>, max: Option<Decimal>) -> String {
    match (min, max) {
        (Some(a), Some(b)) if a == b => show_price(a),
        (Some(a), Some(b)) => format!("{}..{}", show_price(a), show_price(b)),
        _ => "-".into(),
    }
}

/// Text safe for a terminal: control characters become U+FFFD (ids from an untrusted ledger
/// could otherwise move the cursor or recolour the screen).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `s` cut to `width` characters, ending in `…` when cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `count first, second, …` for a list of ids.
fn count_and_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    format!("{} {}", ids.len(), clean(&ids.join(", ")))
}

/// Decimal places of energy and power in the text table (the JSON and HTML carry them all).
const TEXT_QUANTITY_DP: u32 = 3;
/// Narrowest the congested-lines column gets before the table may exceed its width.
const TEXT_CONGESTED_WIDTH_MIN: usize = 9;

/// The text summary: a header, one aligned row per interval (start time UTC, orders, P2P and
/// grid energy, price range, congested lines as a count and the first ids, flexibility
/// procured) and a totals line, every line at most [`TEXT_WIDTH_MAX`] characters.
pub fn text(report: &Report) -> String {
    let u = report.units;
    let one_day = report
        .intervals
        .first()
        .zip(report.intervals.last())
        .is_none_or(|(a, b)| date(a.interval_start) == date(b.interval_start));
    let time = |t: i64| {
        if one_day {
            hhmm(t)
        } else {
            format!("{} {}", &date(t)[5..], hhmm(t))
        }
    };
    let header: [String; 8] = [
        "time".into(),
        "orders".into(),
        format!("P2P {}", u.energy),
        format!("import {}", u.energy),
        format!("export {}", u.energy),
        "price min..max".into(),
        "congested lines".into(),
        format!("flex {}", u.power),
    ];
    let q = |d: Decimal| show_fixed(d, TEXT_QUANTITY_DP);
    // A row is either the eight cells, or time, orders and a note spanning the rest.
    let mut rows: Vec<Result<[String; 8], (String, String, String)>> = Vec::new();
    for s in &report.intervals {
        match &s.status {
            IntervalStatus::Cleared => rows.push(Ok([
                time(s.interval_start),
                s.orders.to_string(),
                q(s.p2p_volume_kwh),
                q(s.grid_import_kwh),
                q(s.grid_export_kwh),
                price_range(
                    s.price_min.as_ref().map(|p| p.price),
                    s.price_max.as_ref().map(|p| p.price),
                ),
                count_and_ids(&s.congested_lines),
                q(s.flex_procured_kw),
            ])),
            IntervalStatus::NotCleared { reason } => rows.push(Err((
                time(s.interval_start),
                s.orders.to_string(),
                format!("not cleared: {}", clean(reason)),
            ))),
        }
    }
    let t = &report.totals;
    let lines: Vec<String> = t.congested_lines.iter().map(|l| l.line.clone()).collect();
    rows.push(Ok([
        "total".into(),
        t.orders.to_string(),
        q(t.p2p_volume_kwh),
        q(t.grid_import_kwh),
        q(t.grid_export_kwh),
        price_range(t.price_min, t.price_max),
        count_and_ids(&lines),
        q(t.flex_procured_kw_peak),
    ]));
    let mut w = header.clone().map(|h| h.chars().count());
    for r in &rows {
        match r {
            Ok(cells) => {
                for (i, c) in cells.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            Err((a, b, _)) => {
                w[0] = w[0].max(a.chars().count());
                w[1] = w[1].max(b.chars().count());
            }
        }
    }
    const GAP: usize = 2;
    let others: usize = w
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 6)
        .map(|(_, x)| x)
        .sum();
    let budget = TEXT_WIDTH_MAX.saturating_sub(others + GAP * 7);
    w[6] = w[6].min(budget.max(TEXT_CONGESTED_WIDTH_MIN));
    let right = [false, true, true, true, true, false, false, true];
    let render = |cells: &[String; 8]| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            let c = fit(c, w[i]);
            let pad = " ".repeat(w[i] - c.chars().count());
            if right[i] {
                line.push_str(&pad);
                line.push_str(&c);
            } else {
                line.push_str(&c);
                if i + 1 < cells.len() {
                    line.push_str(&pad);
                }
            }
        }
        line.trim_end().to_string()
    };
    let mut out = String::new();
    let markets = if report.facts.markets.is_empty() {
        "-".to_string()
    } else {
        report.facts.markets.join(", ")
    };
    let _ = writeln!(
        out,
        "{}",
        fit(&clean(&format!("market: {markets}")), TEXT_WIDTH_MAX)
    );
    let _ = writeln!(out, "{}", fit(&title_line(report), TEXT_WIDTH_MAX));
    let _ = writeln!(out, "{}", render(&header));
    for r in &rows {
        let line = match r {
            Ok(cells) => render(cells),
            Err((a, b, note)) => {
                let lead = format!("{a:<w0$}  {b:>w1$}  ", w0 = w[0], w1 = w[1]);
                let room = TEXT_WIDTH_MAX.saturating_sub(lead.chars().count());
                format!("{lead}{}", fit(note, room))
            }
        };
        let _ = writeln!(out, "{line}");
    }
    let foot = format!(
        "flex {} on the total line is the most in one interval; flexibility paid in total: {}",
        u.power, t.flex_cost
    );
    let _ = writeln!(out, "{}", fit(&foot, TEXT_WIDTH_MAX));
    if t.not_cleared > 0 {
        let _ = writeln!(out, "{} interval(s) not cleared", t.not_cleared);
    }
    delivery_text(report, &time, &mut out);
    out
}

/// The metered delivery of each interval whose delivery settlement is recorded: readings
/// received and missing, imbalance volume and what the participants paid for it, flexibility
/// delivered against procured and the shortfall penalties. Nothing when no interval has one
/// (a ledger from before metering, or the one-shot `baton clear`).
fn delivery_text(report: &Report, time: &dyn Fn(i64) -> String, out: &mut String) {
    let rows: Vec<[String; 6]> = report
        .intervals
        .iter()
        .filter_map(|s| {
            let d = s.delivery.as_ref()?;
            Some([
                time(s.interval_start),
                format!("{}/{}", d.readings, d.missing),
                show_fixed(d.imbalance_kwh, TEXT_QUANTITY_DP),
                show_fixed(d.imbalance_cost, MONEY_DP),
                format!(
                    "{}/{}",
                    show_fixed(d.flex_delivered_kwh, TEXT_QUANTITY_DP),
                    show_fixed(d.flex_procured_kwh, TEXT_QUANTITY_DP)
                ),
                show_fixed(d.flex_penalties, MONEY_DP),
            ])
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let header: [String; 6] = [
        "delivery".into(),
        "read/miss".into(),
        "imbalance kWh".into(),
        "imbalance cost".into(),
        "flex kWh dlv/proc".into(),
        "penalties".into(),
    ];
    let mut w = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let render = |cells: &[String; 6]| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(w[i] - c.chars().count());
            if i == 0 {
                line.push_str(c);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(c);
            }
        }
        fit(line.trim_end(), TEXT_WIDTH_MAX)
    };
    let _ = writeln!(out, "{}", render(&header));
    for r in &rows {
        let _ = writeln!(out, "{}", render(r));
    }
}

/// Decimal places of money in the text table.
const MONEY_DP: u32 = 2;

/// `N interval(s), DATE HH:MM to HH:MM UTC (M min); ledger E entries`.
pub(crate) fn title_line(report: &Report) -> String {
    let f = &report.facts;
    let mut s = format!("{} interval(s)", report.intervals.len());
    if let (Some(a), Some(b)) = (report.intervals.first(), report.intervals.last()) {
        let (da, db) = (date(a.interval_start), date(b.interval_start));
        if a.interval_start == b.interval_start {
            let _ = write!(s, ", {da} {} UTC", hhmm(a.interval_start));
        } else if da == db {
            let _ = write!(
                s,
                ", {da} {} to {} UTC",
                hhmm(a.interval_start),
                hhmm(b.interval_start)
            );
        } else {
            let _ = write!(
                s,
                ", {da} {} to {db} {} UTC",
                hhmm(a.interval_start),
                hhmm(b.interval_start)
            );
        }
    }
    if !f.interval_minutes.is_empty() {
        let m: Vec<String> = f.interval_minutes.iter().map(|m| m.to_string()).collect();
        let _ = write!(s, " ({} min)", m.join("/"));
    }
    let _ = write!(s, "; ledger {} entries", f.ledger_entries);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0));
        // 1_800_000_000 is 2027-01-15 08:00:00 UTC.
        assert_eq!(utc(1_800_000_000), (2027, 1, 15, 8, 0));
        // A leap day and a time before the epoch.
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0));
        assert_eq!(utc(-60), (1969, 12, 31, 23, 59));
    }

    #[test]
    fn prices_show_at_least_two_places_and_no_trailing_zeros() {
        assert_eq!(show_price(d("0.300000")), "0.30");
        assert_eq!(show_price(d("0.123450")), "0.12345");
        assert_eq!(show_price(d("10")), "10.00");
        assert_eq!(price_range(Some(d("-0.1")), Some(d("0.35"))), "-0.10..0.35");
    }
}
