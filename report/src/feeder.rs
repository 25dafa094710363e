//! The feeder drawing of the HTML report: a one-line diagram of the recorded network, its nodes
//! coloured by nodal price and its lines drawn by loading (|flow| / limit), congested lines
//! marked, one interval at a time, with a small inline control to step through the intervals.
//!
//! **Layout** (deterministic, from the network alone): a depth-first walk from the first grid
//! connection's node, neighbours in line order. A node's first unvisited neighbour continues
//! its row one column to the right; every further one starts a new row below everything drawn
//! so far, one column to the right of its parent. On a radial feeder the trunk is the top row
//! and each lateral a row of its own, branching down from where it leaves. Nodes the walk does
//! not reach (another island) are walked the same way after it; a line that closes a loop is
//! drawn straight between its ends.
//!
//! The SVG holds the latest shown interval; the script (inline, a few lines, nothing fetched)
//! only swaps colours, widths and tooltips for the interval the control selects, from values
//! computed here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use baton_audit::summary::{Feeder, IntervalStatus, IntervalSummary, Report};
use baton_engine::units::round_at;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::html::{colour, esc, fraction};
use super::show_price;

/// Column and row pitch of the drawing, pixels.
const COLUMN_PX: usize = 46;
const ROW_PX: usize = 54;
/// Margin around the drawing, pixels.
const MARGIN_PX: usize = 24;
/// Node radius, pixels.
const NODE_RADIUS_PX: usize = 8;
/// Width of a line at no load and the extra width at its limit, pixels.
const LINE_WIDTH_MIN_PX: Decimal = Decimal::from_parts(15, 0, 0, false, 1);
const LINE_WIDTH_SPAN_PX: Decimal = Decimal::from_parts(7, 0, 0, false, 0);
/// Colour of an unlimited line and of a line with no recorded flow.
const LINE_PLAIN: &str = "#9e9e9e";
/// Colours of line loading: light at no load, dark orange near the limit, red when congested.
const LOADING_RGB: [[u8; 3]; 2] = [[189, 189, 189], [230, 85, 13]];
const CONGESTED: &str = "#b2182b";
/// Fill of a node without a price.
const NO_PRICE_FILL: &str = "#d9d9d9";

/// Grid positions (column, row) of every node.
fn layout(f: &Feeder) -> BTreeMap<&str, (usize, usize)> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in &f.lines {
        adj.entry(l.from.as_str()).or_default().push(l.to.as_str());
        adj.entry(l.to.as_str()).or_default().push(l.from.as_str());
    }
    let mut pos: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    // Nodes whose row has been continued by a child already.
    let mut row_taken: BTreeSet<&str> = BTreeSet::new();
    let mut next_row = 0usize;
    let roots: Vec<&str> = f
        .heads
        .iter()
        .map(String::as_str)
        .chain(f.nodes.iter().map(String::as_str))
        .collect();
    for root in roots {
        if pos.contains_key(root) || !f.nodes.iter().any(|n| n == root) {
            continue;
        }
        pos.insert(root, (0, next_row));
        next_row += 1;
        // Depth-first with an explicit stack: (node, index of the next neighbour to try).
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some((node, i)) = stack.pop() {
            let neighbours = adj.get(node).map(Vec::as_slice).unwrap_or(&[]);
            let Some(&m) = neighbours.get(i) else {
                continue;
            };
            stack.push((node, i + 1));
            if pos.contains_key(m) {
                continue;
            }
            let (c, r) = pos[node];
            let row = if row_taken.insert(node) {
                r
            } else {
                next_row += 1;
                next_row - 1
            };
            pos.insert(m, (c + 1, row));
            stack.push((m, 0));
        }
    }
    pos
}

/// The drawing for one interval: per node (fill, tooltip), per line (colour, width, class,
/// tooltip), and a caption.
struct Frame {
    nodes: Vec<(String, String)>,
    lines: Vec<(String, String, &'static str, String)>,
    caption: String,
}

fn frame(
    f: &Feeder,
    s: &IntervalSummary,
    prices: &BTreeMap<&str, Decimal>,
    (lo, hi): (Decimal, Decimal),
    time: &dyn Fn(i64) -> String,
) -> Frame {
    let nodes = f
        .nodes
        .iter()
        .map(|n| match prices.get(n.as_str()) {
            Some(p) => (
                colour(fraction(*p, lo, hi)),
                format!("node {n}: {} per kWh", show_price(*p)),
            ),
            None => (NO_PRICE_FILL.to_string(), format!("node {n}: no price")),
        })
        .collect();
    let flows: BTreeMap<&str, Decimal> =
        s.line_flows.iter().map(|(l, q)| (l.as_str(), *q)).collect();
    let congested: BTreeSet<&str> = s.congested_lines.iter().map(String::as_str).collect();
    let lines = f
        .lines
        .iter()
        .map(|l| {
            let flow = flows.get(l.id.as_str()).copied();
            let is_congested = congested.contains(l.id.as_str());
            let loading = match (flow, l.capacity) {
                (Some(q), Some(c)) if c > Decimal::ZERO => Some((q.abs() / c).min(Decimal::ONE)),
                _ => None,
            };
            let stroke = if is_congested {
                CONGESTED.to_string()
            } else {
                match loading {
                    Some(u) => mix(u),
                    None => LINE_PLAIN.to_string(),
                }
            };
            let width = LINE_WIDTH_MIN_PX + LINE_WIDTH_SPAN_PX * loading.unwrap_or_default();
            let class = if is_congested { "ln cong" } else { "ln" };
            let tip = match (flow, l.capacity) {
                (Some(q), Some(c)) => format!(
                    "line {} ({}→{}): {} of {} kW ({}%){}",
                    l.id,
                    l.from,
                    l.to,
                    round_at(q, 1),
                    c,
                    round_at(loading.unwrap_or_default() * Decimal::ONE_HUNDRED, 0),
                    if is_congested { ", congested" } else { "" }
                ),
                (Some(q), None) => format!(
                    "line {} ({}→{}): {} kW, unlimited",
                    l.id,
                    l.from,
                    l.to,
                    round_at(q, 1)
                ),
                (None, _) => format!("line {}: no flow recorded", l.id),
            };
            (stroke, px(width), class, tip)
        })
        .collect();
    let caption = match &s.status {
        IntervalStatus::Cleared => format!(
            "{} UTC: prices {}..{}; congested: {}; flexibility procured {} kW",
            time(s.interval_start),
            s.price_min
                .as_ref()
                .map_or("-".into(), |p| show_price(p.price)),
            s.price_max
                .as_ref()
                .map_or("-".into(), |p| show_price(p.price)),
            if s.congested_lines.is_empty() {
                "none".to_string()
            } else {
                s.congested_lines.join(", ")
            },
            s.flex_procured_kw
        ),
        IntervalStatus::NotCleared { reason } => {
            format!("{} UTC: not cleared ({reason})", time(s.interval_start))
        }
    };
    Frame {
        nodes,
        lines,
        caption,
    }
}

/// The loading colour at `u` ∈ [0, 1].
fn mix(u: Decimal) -> String {
    let mut out = String::from("#");
    for (lo, hi) in LOADING_RGB[0].iter().zip(&LOADING_RGB[1]) {
        let (a, b) = (Decimal::from(*lo), Decimal::from(*hi));
        let c = round_at(a + (b - a) * u, 0).to_u8().unwrap_or(0);
        let _ = write!(out, "{c:02x}");
    }
    out
}

fn px(d: Decimal) -> String {
    round_at(d, 1).normalize().to_string()
}

/// A JSON string literal that is also safe inside a `<script>` element.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the feeder section for the intervals `first..` of the report (nothing when the
/// report has no drawable network).
pub(crate) fn feeder(o: &mut String, r: &Report, first: usize, time: &dyn Fn(i64) -> String) {
    let Some(f) = &r.feeder else {
        return;
    };
    let shown = &r.intervals[first..];
    if f.nodes.is_empty() || shown.is_empty() {
        return;
    }
    let _ = writeln!(o, "<h2>Feeder</h2>");
    let _ = writeln!(
        o,
        "<p class=\"note\">Nodes coloured by nodal price (the heat map's scale), lines by loading \
(|flow| / limit: wider and darker as they fill), congested lines in red and dashed. Step \
through the intervals with the buttons or the slider.</p>"
    );
    let pos = layout(f);
    let cols = pos.values().map(|p| p.0).max().unwrap_or(0) + 1;
    let rows = pos.values().map(|p| p.1).max().unwrap_or(0) + 1;
    let width = 2 * MARGIN_PX + (cols - 1) * COLUMN_PX + 40;
    let height = 2 * MARGIN_PX + (rows - 1) * ROW_PX + 16;
    let at = |n: &str| {
        let (c, r) = pos.get(n).copied().unwrap_or((0, 0));
        (MARGIN_PX + c * COLUMN_PX, MARGIN_PX + r * ROW_PX)
    };
    // Prices per interval, by node id, and the scale over the shown intervals.
    let g = &r.prices;
    let mut per_interval: Vec<BTreeMap<&str, Decimal>> = Vec::with_capacity(shown.len());
    let (mut lo, mut hi): (Option<Decimal>, Option<Decimal>) = (None, None);
    for row in &g.prices[first..] {
        let mut m = BTreeMap::new();
        for (node, p) in g.nodes.iter().zip(row) {
            if let Some(p) = p {
                m.insert(node.as_str(), *p);
                lo = Some(lo.map_or(*p, |l| l.min(*p)));
                hi = Some(hi.map_or(*p, |h| h.max(*p)));
            }
        }
        per_interval.push(m);
    }
    let scale = (lo.unwrap_or_default(), hi.unwrap_or_default());
    let frames: Vec<Frame> = shown
        .iter()
        .zip(&per_interval)
        .map(|(s, p)| frame(f, s, p, scale, time))
        .collect();
    let last = frames.len() - 1;
    let now = &frames[last];
    let _ = writeln!(
        o,
        "<div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" id=\"feeder\" \
width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"feeder one-line diagram\">"
    );
    for (k, l) in f.lines.iter().enumerate() {
        let ((x1, y1), (x2, y2)) = (at(&l.from), at(&l.to));
        let (stroke, w, class, tip) = &now.lines[k];
        // A lateral leaves its parent downwards, then runs along its row.
        let path = if y1 == y2 || x1 == x2 {
            format!("M{x1} {y1}L{x2} {y2}")
        } else if y2 > y1 {
            format!("M{x1} {y1}L{x1} {y2}L{x2} {y2}")
        } else {
            format!("M{x2} {y2}L{x2} {y1}L{x1} {y1}")
        };
        let _ = writeln!(
            o,
            "<path class=\"{class}\" data-line=\"{}\" d=\"{path}\" fill=\"none\" \
stroke=\"{stroke}\" stroke-width=\"{w}\"><title>{}</title></path>",
            esc(&l.id),
            esc(tip)
        );
    }
    for (k, n) in f.nodes.iter().enumerate() {
        let (x, y) = at(n);
        let (fill, tip) = &now.nodes[k];
        let head = f.heads.iter().any(|h| h == n);
        let _ = writeln!(
            o,
            "<circle class=\"nd{}\" data-node=\"{}\" cx=\"{x}\" cy=\"{y}\" r=\"{}\" \
fill=\"{fill}\" stroke=\"#333\"><title>{}</title></circle><text x=\"{}\" y=\"{}\">{}</text>",
            if head { " head" } else { "" },
            esc(n),
            NODE_RADIUS_PX + usize::from(head) * 3,
            esc(tip),
            x - 6,
            y + NODE_RADIUS_PX + 13,
            esc(n)
        );
    }
    let _ = writeln!(o, "</svg></div>");
    let _ = writeln!(
        o,
        "<p><button type=\"button\" id=\"feeder-prev\">&larr;</button> \
<input type=\"range\" id=\"feeder-step\" min=\"0\" max=\"{last}\" value=\"{last}\" \
aria-label=\"interval\"> <button type=\"button\" id=\"feeder-next\">&rarr;</button> \
<span id=\"feeder-caption\">{}</span></p>",
        esc(&now.caption)
    );
    // The frames as data: [caption, [node fill, node tip]…, [line stroke, width, class, tip]…].
    let mut data = String::from("[");
    for (i, fr) in frames.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        let _ = write!(data, "[{},[", js(&fr.caption));
        for (j, (fill, tip)) in fr.nodes.iter().enumerate() {
            let _ = write!(
                data,
                "{}[{},{}]",
                if j > 0 { "," } else { "" },
                js(fill),
                js(tip)
            );
        }
        data.push_str("],[");
        for (j, (stroke, w, class, tip)) in fr.lines.iter().enumerate() {
            let _ = write!(
                data,
                "{}[{},{},{},{}]",
                if j > 0 { "," } else { "" },
                js(stroke),
                js(w),
                js(class),
                js(tip)
            );
        }
        data.push_str("]]");
    }
    data.push(']');
    let _ = writeln!(
        o,
        "<script>(function(){{var F={data};\
var s=document.getElementById('feeder-step'),c=document.getElementById('feeder-caption'),\
g=document.getElementById('feeder'),N=g.querySelectorAll('circle'),L=g.querySelectorAll('path');\
function show(i){{var f=F[i];c.textContent=f[0];\
for(var j=0;j<N.length;j++){{N[j].setAttribute('fill',f[1][j][0]);N[j].firstChild.textContent=f[1][j][1];}}\
for(var k=0;k<L.length;k++){{var l=f[2][k];L[k].setAttribute('stroke',l[0]);\
L[k].setAttribute('stroke-width',l[1]);L[k].setAttribute('class',l[2]);L[k].firstChild.textContent=l[3];}}\
g.setAttribute('data-interval',i);}}\
function go(d){{var i=Math.max(0,Math.min(F.length-1,+s.value+d));s.value=i;show(i);}}\
s.addEventListener('input',function(){{show(+s.value);}});\
document.getElementById('feeder-prev').addEventListener('click',function(){{go(-1);}});\
document.getElementById('feeder-next').addEventListener('click',function(){{go(1);}});\
show({last});}})();</script>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_audit::summary::FeederLine;

    fn line(id: &str, from: &str, to: &str) -> FeederLine {
        FeederLine {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            capacity: None,
        }
    }

    #[test]
    fn a_radial_feeder_lays_out_its_trunk_on_the_top_row_and_laterals_below() {
        // 1-2-3-4 trunk; 2-5-6 and 3-7 laterals.
        let f = Feeder {
            nodes: ["1", "2", "3", "4", "5", "6", "7"]
                .map(String::from)
                .to_vec(),
            lines: vec![
                line("a", "1", "2"),
                line("b", "2", "3"),
                line("c", "3", "4"),
                line("d", "2", "5"),
                line("e", "5", "6"),
                line("f", "3", "7"),
            ],
            heads: vec!["1".into()],
        };
        let p = layout(&f);
        assert_eq!(p["1"], (0, 0));
        assert_eq!(p["4"], (3, 0));
        // The walk finishes the trunk first, then the lateral at 3, then the one at 2.
        assert_eq!(p["7"], (3, 1));
        assert_eq!((p["5"], p["6"]), ((2, 2), (3, 2)));
    }

    #[test]
    fn script_strings_cannot_close_the_script() {
        assert_eq!(js("</script>\"\\"), "\"\\u003c/script\\u003e\\\"\\\\\"");
    }
}
