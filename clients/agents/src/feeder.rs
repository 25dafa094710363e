//! The radial structure of a feeder, as the operator of the demo reads it: which nodes lie
//! behind a line, seen from the grid connection.

use std::collections::{BTreeMap, VecDeque};

use baton_engine::model::MarketSpec;

/// The nodes behind a line, seen from the feeder head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    /// The line's end farther from the head.
    pub child: String,
    /// Whether the line is entered from `from` to `to` walking away from the head (a positive
    /// flow then flows into the area).
    pub forward: bool,
    /// Every node reached from `child` without crossing the line (`child` first, then
    /// breadth-first, neighbours in line order).
    pub nodes: Vec<String>,
}

/// The area behind `line` seen from `head`, or `None` when the line is not in the network,
/// is a loop's (both ends stay connected without it) or does not touch the head's island.
pub fn behind(network: &MarketSpec, head: &str, line: &str) -> Option<Behind> {
    let l = network.lines.iter().find(|l| l.id == line)?;
    let depth = depths(network, head, None);
    let (df, dt) = (depth.get(l.from.as_str())?, depth.get(l.to.as_str())?);
    let (child, forward) = if dt > df {
        (l.to.clone(), true)
    } else {
        (l.from.clone(), false)
    };
    let area = depths(network, &child, Some(line));
    if area.contains_key(head) {
        return None;
    }
    let mut nodes: Vec<(usize, String)> =
        area.into_iter().map(|(n, d)| (d, n.to_string())).collect();
    nodes.sort();
    Some(Behind {
        child,
        forward,
        nodes: nodes.into_iter().map(|(_, n)| n).collect(),
    })
}

/// Hops from `start` to every node it reaches, not crossing `without`.
fn depths<'a>(
    network: &'a MarketSpec,
    start: &str,
    without: Option<&str>,
) -> BTreeMap<&'a str, usize> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in &network.lines {
        if Some(l.id.as_str()) == without {
            continue;
        }
        adj.entry(l.from.as_str()).or_default().push(l.to.as_str());
        adj.entry(l.to.as_str()).or_default().push(l.from.as_str());
    }
    let mut out = BTreeMap::new();
    let Some(s) = network.nodes.iter().find(|n| n.id == start) else {
        return out;
    };
    out.insert(s.id.as_str(), 0);
    let mut queue = VecDeque::from([s.id.as_str()]);
    while let Some(n) = queue.pop_front() {
        let d = out[n];
        for m in adj.get(n).into_iter().flatten() {
            if !out.contains_key(m) {
                out.insert(m, d + 1);
                queue.push_back(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEEDER: &str = include_str!("../../../scenarios/ieee33-feeder.toml");

    #[test]
    fn the_weak_lateral_is_behind_its_first_line() {
        let net = baton_engine::scenario::parse(FEEDER).unwrap().market;
        let b = behind(&net, "1", "l22").unwrap();
        assert_eq!(b.child, "23");
        assert!(b.forward);
        assert_eq!(b.nodes, ["23", "24", "25"]);
        // Everything past bus 6 on the trunk and the 26-33 lateral.
        let b = behind(&net, "1", "l6").unwrap();
        assert_eq!(b.nodes.len(), 12);
        assert!(behind(&net, "1", "l99").is_none());
    }
}
