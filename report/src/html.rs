//! The HTML market report: one self-contained file — inline CSS, inline SVG and one small inline
//! script (the feeder drawing's interval control), no fonts, images, styles or scripts fetched
//! from anywhere — so it can be mailed, archived and opened offline; without scripts it still
//! shows everything but the feeder's other intervals. Every piece of recorded text is escaped; numbers are the recorded decimals.

use std::fmt::Write as _;

use baton_engine::units::round_at;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use baton_audit::summary::{IntervalStatus, IntervalSummary, PriceAt, Report};

use super::{date, hhmm, price_range, show_fixed, show_price, title_line};

/// Most intervals drawn in the charts and listed in the interval table (the latest ones; two
/// days of five-minute intervals). Totals and facts always cover every interval.
pub const CHART_INTERVALS_MAX: usize = 576;
/// Most heat-map cells, which bounds the file to a few megabytes: fewer intervals are drawn
/// when there are many nodes.
pub const HEATMAP_CELLS_MAX: usize = 60_000;
/// Most congested lines listed in the congested-lines table.
pub const CONGESTED_LINES_LISTED_MAX: usize = 500;
/// Most interval times listed per congested line.
pub const CONGESTED_TIMES_LISTED_MAX: usize = 24;
/// Characters of a node id shown as a heat-map row label (the tooltip has it all).
const NODE_LABEL_CHARS_MAX: usize = 20;

/// The outcome of `baton audit verify` / `reclear`, as the caller ran them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditStatus {
    /// Whether every check passed.
    pub passed: bool,
    /// What was checked and what it found, one line.
    pub text: String,
}

/// Escapes text for HTML element content and quoted attribute values. Control characters
/// (which HTML does not allow) become U+FFFD.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A pixel coordinate, to one decimal place.
fn px(d: Decimal) -> String {
    round_at(d, 1).normalize().to_string()
}

/// Low, middle and high colours of the price scale (ColorBrewer RdYlBu, reversed: cheap is
/// blue, dear is red).
const SCALE_RGB: [[u8; 3]; 3] = [[44, 123, 182], [255, 255, 191], [215, 25, 28]];
/// Fill of a heat-map cell without a price.
const NO_PRICE_FILL: &str = "#d9d9d9";

/// The colour at `t` ∈ [0, 1] of the price scale, interpolated exactly and rounded.
pub(crate) fn colour(t: Decimal) -> String {
    let t = t.clamp(Decimal::ZERO, Decimal::ONE);
    let half = Decimal::new(5, 1);
    let (a, b, u) = if t <= half {
        (SCALE_RGB[0], SCALE_RGB[1], t * Decimal::TWO)
    } else {
        (SCALE_RGB[1], SCALE_RGB[2], t * Decimal::TWO - Decimal::ONE)
    };
    let mut out = String::from("#");
    for i in 0..3 {
        let (x, y) = (Decimal::from(a[i]), Decimal::from(b[i]));
        let c = round_at(x + (y - x) * u, 0).to_u8().unwrap_or(0);
        let _ = write!(out, "{c:02x}");
    }
    out
}

/// Where `p` sits between `lo` and `hi`.
pub(crate) fn fraction(p: Decimal, lo: Decimal, hi: Decimal) -> Decimal {
    if hi <= lo {
        Decimal::new(5, 1)
    } else {
        (p - lo) / (hi - lo)
    }
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;\
color:#222;margin:2em auto;max-width:1200px;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:2em;\
border-bottom:1px solid #ddd;padding-bottom:.2em}.sub{color:#555;margin-top:0}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 9px;text-align:right;\
border-bottom:1px solid #eee;vertical-align:top}th{background:#f4f4f4;font-weight:600}\
.l{text-align:left}table.facts th{text-align:left;background:none;font-weight:normal;\
color:#555}.audit{padding:.5em .8em;border-radius:4px;font-weight:600}\
.ok{background:#e6f4ea;color:#14532d}.fail{background:#fde8e6;color:#7f1d1d}\
.none{background:#f1f3f4;color:#444;font-weight:normal}.scroll{overflow-x:auto}\
svg text{font:11px system-ui,sans-serif;fill:#333}.p2p{fill:#1a9850}.imp{fill:#f46d43}\
.exp{fill:#4575b4}.flex{fill:#762a83}.axis{stroke:#999;stroke-width:1}\
.note{color:#666;font-size:.9em}.ln.cong{stroke-dasharray:6 3}.nd.head{stroke-width:2}.mono{font-family:ui-monospace,monospace;font-size:.9em}\
tr.nc td{color:#7f1d1d}";

/// The HTML report: title, market and run facts, the audit status if given, a nodal price heat
/// map (nodes × intervals, colour legend, each cell's price in its tooltip), P2P and grid energy
/// bars, flexibility procured, the congested lines and the interval table. The same report
/// gives the same bytes.
pub fn html(report: &Report, audit: Option<&AuditStatus>) -> String {
    let name = if report.facts.markets.is_empty() {
        "baton ledger".to_string()
    } else {
        report.facts.markets.join(", ")
    };
    let n_all = report.intervals.len();
    let heat_rows = report.prices.nodes.len().max(1);
    let n = n_all
        .min(CHART_INTERVALS_MAX)
        .min((HEATMAP_CELLS_MAX / heat_rows).max(1));
    let first = n_all - n;
    let shown = &report.intervals[first..];
    let one_day = shown
        .first()
        .zip(shown.last())
        .is_none_or(|(a, b)| date(a.interval_start) == date(b.interval_start));
    let time = |t: i64| -> String {
        if one_day {
            hhmm(t)
        } else {
            format!("{} {}", &date(t)[5..], hhmm(t))
        }
    };

    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>Baton market report: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&name)
    );
    let _ = writeln!(o, "<h1>Baton market report: {}</h1>", esc(&name));
    let _ = writeln!(o, "<p class=\"sub\">{}</p>", esc(&title_line(report)));
    match audit {
        Some(a) => {
            let _ = writeln!(
                o,
                "<p class=\"audit {}\">Audit {}: {}</p>",
                if a.passed { "ok" } else { "fail" },
                if a.passed { "passed" } else { "FAILED" },
                esc(&a.text)
            );
        }
        None => {
            let _ = writeln!(
                o,
                "<p class=\"audit none\">Audit: not run for this report \
(<span class=\"mono\">baton audit verify</span> and \
<span class=\"mono\">baton audit reclear</span> check the ledger).</p>"
            );
        }
    }
    facts(&mut o, report);
    if n < n_all {
        let _ = writeln!(
            o,
            "<p class=\"note\">The charts and the interval table show the latest {n} of {n_all} \
intervals; the facts, totals and congested lines cover all of them.</p>"
        );
    }
    heat_map(&mut o, report, first, &time);
    super::feeder::feeder(&mut o, report, first, &time);
    volumes(&mut o, report, shown, &time);
    flexibility(&mut o, report, shown, &time);
    congestion(&mut o, report, &time);
    delivery(&mut o, shown, &time);
    interval_table(&mut o, report, shown, &time);
    let _ = writeln!(
        o,
        "<p class=\"note\">Made by <span class=\"mono\">baton report</span> from the ledger's \
entries alone. Prices are the recorded nodal prices; energy is average power × interval \
length, rounded to 6 places; P2P is energy the settlement attributes from a participant's sell \
to a participant's buy.</p>\n</body>\n</html>"
    );
    o
}

fn facts(o: &mut String, r: &Report) {
    let f = &r.facts;
    let t = &r.totals;
    let u = r.units;
    let _ = writeln!(o, "<h2>Market and run</h2>\n<table class=\"facts\">");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(o, "<tr><th>{}</th><td class=\"l\">{v}</td></tr>", esc(k));
    };
    row(
        "Market",
        if f.markets.is_empty() {
            "-".into()
        } else {
            esc(&f.markets.join(", "))
        },
    );
    let span = match (r.intervals.first(), r.intervals.last()) {
        (Some(a), Some(b)) => format!(
            "{} {} to {} {} UTC",
            date(a.interval_start),
            hhmm(a.interval_start),
            date(b.interval_start),
            hhmm(b.interval_start)
        ),
        _ => "none recorded".into(),
    };
    row(
        "Intervals",
        format!("{} ({} not cleared), {span}", t.intervals, t.not_cleared),
    );
    let minutes: Vec<String> = f.interval_minutes.iter().map(|m| m.to_string()).collect();
    row(
        "Interval length",
        if minutes.is_empty() {
            "-".into()
        } else {
            format!("{} min", minutes.join(", "))
        },
    );
    row(
        "Network",
        format!(
            "{} node(s), {} line(s), {} grid connection(s)",
            f.nodes, f.lines, f.grid_connections
        ),
    );
    row("Participants with orders", f.participants.to_string());
    row("Orders", t.orders.to_string());
    row(
        "Energy",
        format!(
            "P2P {} {e}, grid import {} {e}, grid export {} {e}",
            t.p2p_volume_kwh,
            t.grid_import_kwh,
            t.grid_export_kwh,
            e = u.energy
        ),
    );
    row(
        "Nodal prices",
        format!("{} per {}", price_range(t.price_min, t.price_max), u.energy),
    );
    row(
        "Flexibility",
        format!(
            "paid {} in total; most procured in one interval {} {}",
            t.flex_cost, t.flex_procured_kw_peak, u.power
        ),
    );
    row(
        "Ledger",
        match (&f.checkpoint_size, &f.checkpoint_root, &f.checkpoint_origin) {
            (Some(size), Some(root), Some(origin)) => format!(
                "{} entries; latest checkpoint <span class=\"mono\">{}</span> size {size}, \
root <span class=\"mono\">{}</span>",
                f.ledger_entries,
                esc(origin),
                esc(root)
            ),
            _ => format!("{} entries; no checkpoint", f.ledger_entries),
        },
    );
    let _ = writeln!(o, "</table>");
}

fn heat_map(o: &mut String, r: &Report, first: usize, time: &dyn Fn(i64) -> String) {
    let _ = writeln!(o, "<h2>Nodal prices</h2>");
    let g = &r.prices;
    let shown = &r.intervals[first..];
    if g.nodes.is_empty() || shown.is_empty() {
        let _ = writeln!(o, "<p>No prices recorded.</p>");
        return;
    }
    if g.nodes_total > g.nodes.len() {
        let _ = writeln!(
            o,
            "<p class=\"note\">The first {} of {} nodes (in network order).</p>",
            g.nodes.len(),
            g.nodes_total
        );
    }
    let rows = &g.prices[first..];
    let (mut lo, mut hi): (Option<Decimal>, Option<Decimal>) = (None, None);
    for p in rows.iter().flatten().flatten() {
        lo = Some(lo.map_or(*p, |l| l.min(*p)));
        hi = Some(hi.map_or(*p, |h| h.max(*p)));
    }
    let (lo, hi) = (lo.unwrap_or_default(), hi.unwrap_or_default());
    let n = shown.len();
    let cw: usize = if n <= 16 {
        44
    } else if n <= 48 {
        18
    } else if n <= 200 {
        10
    } else {
        6
    };
    let ch: usize = 16;
    let label_chars = g
        .nodes
        .iter()
        .map(|id| id.chars().count().min(NODE_LABEL_CHARS_MAX))
        .max()
        .unwrap_or(1);
    let lw = 12 + 7 * label_chars;
    let top = 22;
    let width = lw + n * cw + 40;
    let height = top + g.nodes.len() * ch + 6;
    let _ = writeln!(
        o,
        "<div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heatmap\" \
width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"nodal prices, nodes by \
intervals\">"
    );
    // Time labels every `step` columns so they never overlap (a label is ~40 px).
    let step = 44usize.div_ceil(cw);
    for (c, s) in shown.iter().enumerate() {
        if c % step == 0 {
            let _ = writeln!(
                o,
                "<text x=\"{}\" y=\"14\">{}</text>",
                lw + c * cw,
                esc(&time(s.interval_start))
            );
        }
    }
    let u = r.units;
    for (ri, node) in g.nodes.iter().enumerate() {
        let y = top + ri * ch;
        let label: String = if node.chars().count() > NODE_LABEL_CHARS_MAX {
            let mut l: String = node.chars().take(NODE_LABEL_CHARS_MAX - 1).collect();
            l.push('…');
            l
        } else {
            node.clone()
        };
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}<title>{}</title></text>",
            lw - 6,
            y + ch - 4,
            esc(&label),
            esc(node)
        );
        for (c, s) in shown.iter().enumerate() {
            let x = lw + c * cw;
            let when = format!("{} {} UTC", date(s.interval_start), hhmm(s.interval_start));
            match rows[c].get(ri).copied().flatten() {
                Some(p) => {
                    let _ = writeln!(
                        o,
                        "<rect class=\"cell\" data-node=\"{}\" data-interval=\"{}\" \
data-price=\"{p}\" x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{}\">\
<title>{}, {when}: {} per {}</title></rect>",
                        esc(node),
                        s.interval_start,
                        colour(fraction(p, lo, hi)),
                        esc(node),
                        show_price(p),
                        u.energy
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "<rect class=\"cell none\" data-node=\"{}\" data-interval=\"{}\" \
x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{NO_PRICE_FILL}\">\
<title>{}, {when}: no price</title></rect>",
                        esc(node),
                        s.interval_start,
                        esc(node)
                    );
                }
            }
        }
    }
    let _ = writeln!(o, "</svg></div>");
    legend(o, lo, hi, u.energy);
}

fn legend(o: &mut String, lo: Decimal, hi: Decimal, energy: &str) {
    let steps: Vec<Decimal> = if hi > lo {
        (0..=4).map(|i| Decimal::new(i * 25, 2)).collect()
    } else {
        vec![Decimal::new(5, 1)]
    };
    let sw = 64;
    let width = (steps.len() + 1) * sw + 120;
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"legend\" width=\"{width}\" \
height=\"40\" role=\"img\" aria-label=\"price colour scale\">"
    );
    for (i, t) in steps.iter().enumerate() {
        let p = if hi > lo {
            round_at(lo + (hi - lo) * t, 6)
        } else {
            lo
        };
        let x = i * sw;
        let _ = writeln!(
            o,
            "<rect x=\"{x}\" y=\"2\" width=\"{}\" height=\"14\" fill=\"{}\"/>\
<text x=\"{x}\" y=\"32\">{}</text>",
            sw - 4,
            colour(*t),
            show_price(p)
        );
    }
    let x = steps.len() * sw;
    let _ = writeln!(
        o,
        "<rect x=\"{x}\" y=\"2\" width=\"{}\" height=\"14\" fill=\"{NO_PRICE_FILL}\"/>\
<text x=\"{x}\" y=\"32\">no price</text>\
<text x=\"{}\" y=\"13\">per {energy}</text>\n</svg>",
        sw - 4,
        x + sw + 4
    );
}

/// Bar width in px for `n` intervals.
fn bar_width(n: usize) -> usize {
    if n <= 48 {
        10
    } else if n <= 150 {
        4
    } else {
        2
    }
}

/// Narrowest left margin of a bar chart (the axis label sets it).
const CHART_LEFT_MIN: usize = 40;
/// Height of a chart's plot area.
const CHART_HEIGHT: usize = 160;
/// Space above the plot (legend).
const CHART_TOP: usize = 26;

fn bar_height(v: Decimal, max: Decimal) -> Decimal {
    if max <= Decimal::ZERO || v <= Decimal::ZERO {
        Decimal::ZERO
    } else {
        v / max * Decimal::from(CHART_HEIGHT)
    }
}

/// The axis label of a chart's top and the left margin it needs (~7 px a character).
fn chart_axis(max: Decimal, unit: &str) -> (String, usize) {
    let label = format!("{} {unit}", show_fixed(max, 3));
    let left = (12 + 7 * label.chars().count()).max(CHART_LEFT_MIN);
    (label, left)
}

fn chart_open(o: &mut String, width: usize, label: &str, axis: &str, left: usize) {
    let base = CHART_TOP + CHART_HEIGHT;
    let _ = writeln!(
        o,
        "<div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
height=\"{}\" role=\"img\" aria-label=\"{}\">\
<line class=\"axis\" x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/>\
<line class=\"axis\" x1=\"{left}\" y1=\"{CHART_TOP}\" x2=\"{left}\" y2=\"{base}\"/>\
<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
<text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        base + 22,
        esc(label),
        width - 10,
        left - 4,
        CHART_TOP + 8,
        esc(axis),
        left - 4,
    );
}

fn time_labels(
    o: &mut String,
    shown: &[IntervalSummary],
    (left, group): (usize, usize),
    time: &dyn Fn(i64) -> String,
) {
    let step = 44usize.div_ceil(group);
    for (c, s) in shown.iter().enumerate() {
        if c % step == 0 {
            let _ = writeln!(
                o,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                left + 4 + c * group,
                CHART_TOP + CHART_HEIGHT + 16,
                esc(&time(s.interval_start))
            );
        }
    }
}

fn volumes(o: &mut String, r: &Report, shown: &[IntervalSummary], time: &dyn Fn(i64) -> String) {
    let e = r.units.energy;
    let _ = writeln!(o, "<h2>P2P and grid energy per interval</h2>");
    if shown.is_empty() {
        let _ = writeln!(o, "<p>No intervals recorded.</p>");
        return;
    }
    let max = shown
        .iter()
        .flat_map(|s| [s.p2p_volume_kwh, s.grid_import_kwh, s.grid_export_kwh])
        .max()
        .unwrap_or_default();
    let bw = bar_width(shown.len());
    let group = 3 * bw + bw.max(3);
    let (axis, left) = chart_axis(max, e);
    let width = left + 8 + shown.len() * group + 20;
    chart_open(
        o,
        width.max(420),
        "P2P and grid energy per interval",
        &axis,
        left,
    );
    for (i, (class, what)) in [
        ("p2p", "P2P"),
        ("imp", "grid import"),
        ("exp", "grid export"),
    ]
    .iter()
    .enumerate()
    {
        let x = left + 10 + i * 110;
        let _ = writeln!(
            o,
            "<rect class=\"{class}\" x=\"{x}\" y=\"4\" width=\"12\" height=\"12\"/>\
<text x=\"{}\" y=\"14\">{what}</text>",
            x + 16
        );
    }
    let base = Decimal::from(CHART_TOP + CHART_HEIGHT);
    for (c, s) in shown.iter().enumerate() {
        let x0 = left + 4 + c * group;
        let when = format!("{} {} UTC", date(s.interval_start), hhmm(s.interval_start));
        for (i, (class, what, v)) in [
            ("p2p", "P2P", s.p2p_volume_kwh),
            ("imp", "grid import", s.grid_import_kwh),
            ("exp", "grid export", s.grid_export_kwh),
        ]
        .into_iter()
        .enumerate()
        {
            let h = bar_height(v, max);
            let _ = writeln!(
                o,
                "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{bw}\" height=\"{}\">\
<title>{when}: {what} {v} {e}</title></rect>",
                x0 + i * bw,
                px(base - h),
                px(h)
            );
        }
    }
    time_labels(o, shown, (left, group), time);
    let _ = writeln!(o, "</svg></div>");
}

fn flexibility(
    o: &mut String,
    r: &Report,
    shown: &[IntervalSummary],
    time: &dyn Fn(i64) -> String,
) {
    let p = r.units.power;
    let _ = writeln!(o, "<h2>Flexibility procured per interval</h2>");
    let requested = shown.iter().filter(|s| !s.flex.is_empty()).count();
    if requested == 0 {
        let _ = writeln!(o, "<p>No flexibility was requested.</p>");
        return;
    }
    let procured = shown
        .iter()
        .filter(|s| s.flex_procured_kw > Decimal::ZERO)
        .count();
    let _ = writeln!(
        o,
        "<p>Requested in {requested} interval(s), procured in {procured}; paid {} in total.</p>",
        r.totals.flex_cost
    );
    let max = shown
        .iter()
        .map(|s| s.flex_procured_kw)
        .max()
        .unwrap_or_default();
    let bw = bar_width(shown.len()) * 2;
    let group = bw + (bw / 2).max(3);
    let (axis, left) = chart_axis(max, p);
    let width = left + 8 + shown.len() * group + 20;
    chart_open(
        o,
        width.max(420),
        "flexibility procured per interval",
        &axis,
        left,
    );
    let base = Decimal::from(CHART_TOP + CHART_HEIGHT);
    for (c, s) in shown.iter().enumerate() {
        let h = bar_height(s.flex_procured_kw, max);
        let mut tip = format!(
            "{} {} UTC: {} {p} procured, paid {}",
            date(s.interval_start),
            hhmm(s.interval_start),
            s.flex_procured_kw,
            s.flex_cost
        );
        for f in &s.flex {
            let _ = write!(
                tip,
                "\n{}: {} {p} at {}",
                f.requirement,
                f.procured_kw,
                show_price(f.price)
            );
        }
        let _ = writeln!(
            o,
            "<rect class=\"flex\" x=\"{}\" y=\"{}\" width=\"{bw}\" height=\"{}\">\
<title>{}</title></rect>",
            left + 4 + c * group,
            px(base - h),
            px(h),
            esc(&tip)
        );
    }
    time_labels(o, shown, (left, group), time);
    let _ = writeln!(o, "</svg></div>");
}

fn congestion(o: &mut String, r: &Report, time: &dyn Fn(i64) -> String) {
    let _ = writeln!(o, "<h2>Congested lines</h2>");
    let lines = &r.totals.congested_lines;
    if lines.is_empty() {
        let _ = writeln!(o, "<p>No line was congested.</p>");
        return;
    }
    let _ = writeln!(
        o,
        "<table class=\"congested\">\n<tr><th class=\"l\">line</th><th>intervals</th>\
<th class=\"l\">when (UTC)</th></tr>"
    );
    for l in lines.iter().take(CONGESTED_LINES_LISTED_MAX) {
        let mut when: Vec<String> = l
            .intervals
            .iter()
            .take(CONGESTED_TIMES_LISTED_MAX)
            .map(|t| time(*t))
            .collect();
        if l.intervals.len() > CONGESTED_TIMES_LISTED_MAX {
            when.push(format!(
                "and {} more",
                l.intervals.len() - CONGESTED_TIMES_LISTED_MAX
            ));
        }
        let _ = writeln!(
            o,
            "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(&l.line),
            l.intervals.len(),
            esc(&when.join(", "))
        );
    }
    let _ = writeln!(o, "</table>");
    if lines.len() > CONGESTED_LINES_LISTED_MAX {
        let _ = writeln!(
            o,
            "<p class=\"note\">{} more congested lines are not listed.</p>",
            lines.len() - CONGESTED_LINES_LISTED_MAX
        );
    }
}

/// Metered delivery against what was cleared, per interval whose delivery settlement is
/// recorded: readings received and missing, imbalance volume and what participants paid for
/// it, flexibility delivered against procured, and the shortfall penalties.
fn delivery(o: &mut String, shown: &[IntervalSummary], time: &dyn Fn(i64) -> String) {
    let rows: Vec<_> = shown
        .iter()
        .filter_map(|s| s.delivery.as_ref().map(|d| (s.interval_start, d)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "<h2>Delivery against the clearing</h2>\n<table class=\"delivery\">\n<tr>\
<th class=\"l\">interval</th><th>readings</th><th>missing</th><th>imbalance kWh</th>\
<th>imbalance paid</th><th>flexibility procured kWh</th><th>delivered kWh</th>\
<th>delivered %</th><th>penalties</th></tr>"
    );
    for (t, d) in rows {
        let share = if d.flex_procured_kwh.is_zero() {
            "–".to_string()
        } else {
            show_fixed(
                d.flex_delivered_kwh * Decimal::ONE_HUNDRED / d.flex_procured_kwh,
                DELIVERY_SHARE_DP,
            )
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&time(t)),
            d.readings,
            d.missing,
            show_fixed(d.imbalance_kwh, DELIVERY_KWH_DP),
            show_fixed(d.imbalance_cost, super::MONEY_DP),
            show_fixed(d.flex_procured_kwh, DELIVERY_KWH_DP),
            show_fixed(d.flex_delivered_kwh, DELIVERY_KWH_DP),
            share,
            show_fixed(d.flex_penalties, super::MONEY_DP),
        );
    }
    let _ = writeln!(
        o,
        "</table>\n<p class=\"note\">From each interval's <span class=\"mono\">\
delivery_settlement</span> entry: imbalance is metered minus cleared energy beyond the \
flexibility delivered; a missing reading is settled as its schedule with its flexibility \
undelivered (docs/MARKET.md, Delivery).</p>"
    );
}

/// Decimal places of the delivery table's kWh.
const DELIVERY_KWH_DP: u32 = 3;
/// Decimal places of the delivered share, percent.
const DELIVERY_SHARE_DP: u32 = 1;

/// `price (node, node, … +N)`.
fn price_at(p: &Option<PriceAt>) -> String {
    match p {
        None => "-".into(),
        Some(p) => {
            let mut s = format!("{} ({}", show_price(p.price), esc(&p.nodes.join(", ")));
            if p.node_count > p.nodes.len() {
                let _ = write!(s, " +{}", p.node_count - p.nodes.len());
            }
            s.push(')');
            s
        }
    }
}

fn interval_table(
    o: &mut String,
    r: &Report,
    shown: &[IntervalSummary],
    time: &dyn Fn(i64) -> String,
) {
    let (e, p) = (r.units.energy, r.units.power);
    let _ = writeln!(
        o,
        "<h2>Intervals</h2>\n<div class=\"scroll\"><table class=\"intervals\">\n<tr>\
<th class=\"l\">start (UTC)</th><th>orders</th><th>P2P {e}</th><th>import {e}</th>\
<th>export {e}</th><th class=\"l\">lowest price</th><th class=\"l\">highest price</th>\
<th class=\"l\">congested lines</th><th>flex {p}</th><th>flex paid</th><th>welfare /h</th></tr>"
    );
    for s in shown {
        match &s.status {
            IntervalStatus::Cleared => {
                let _ = writeln!(
                    o,
                    "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
<td>{}</td></tr>",
                    esc(&time(s.interval_start)),
                    s.orders,
                    s.p2p_volume_kwh,
                    s.grid_import_kwh,
                    s.grid_export_kwh,
                    price_at(&s.price_min),
                    price_at(&s.price_max),
                    if s.congested_lines.is_empty() {
                        "-".into()
                    } else {
                        esc(&s.congested_lines.join(", "))
                    },
                    s.flex_procured_kw,
                    s.flex_cost,
                    s.welfare
                );
            }
            IntervalStatus::NotCleared { reason } => {
                let _ = writeln!(
                    o,
                    "<tr class=\"nc\"><td class=\"l\">{}</td><td>{}</td>\
<td class=\"l\" colspan=\"9\">not cleared: {}</td></tr>",
                    esc(&time(s.interval_start)),
                    s.orders,
                    esc(reason)
                );
            }
        }
    }
    let _ = writeln!(o, "</table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>alert('x\"&')</script>\u{1b}"),
            "&lt;script&gt;alert(&#39;x&quot;&amp;&#39;)&lt;/script&gt;\u{fffd}"
        );
    }

    #[test]
    fn the_colour_scale_runs_blue_to_yellow_to_red() {
        assert_eq!(colour(Decimal::ZERO), "#2c7bb6");
        assert_eq!(colour(Decimal::new(5, 1)), "#ffffbf");
        assert_eq!(colour(Decimal::ONE), "#d7191c");
        // Outside [0, 1] is clamped.
        assert_eq!(colour(Decimal::TWO), "#d7191c");
    }
}
