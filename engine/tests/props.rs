//! Property tests of the clearing core: feasibility, the fill rule, individual rationality,
//! zero-sum settlement, determinism under reordering, optimality against an independent
//! reference LP solver (a dense two-phase simplex in `f64`, no HiGHS), and exactness of the
//! active-set method.

use std::collections::{BTreeMap, HashMap};

use baton_engine::model::{
    BlockSpec, DeviceSpec, Direction, FlexOfferSpec, FlexRequirementSpec, GridConnectionSpec,
    LineSpec, NodeSpec, OrderSpec,
};
use baton_engine::study::write_result;
use baton_engine::{clear_with, settle, Clearing, Market, MarketSpec, Method, Side};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const PRICE_FLOOR: i64 = -1000;
const PRICE_CAP: i64 = 1000;

/// A decimal with two places from an integer count of cents.
fn cents(c: i64) -> Decimal {
    Decimal::new(c, 2)
}

/// A line as generated: (from, to, x, capacity).
type RawLine = (usize, usize, Decimal, Option<Decimal>);
/// An order as generated: (side, node, blocks).
type RawOrder = (Side, usize, Vec<BlockSpec>);

/// Line capacities from 1 to 50, biased low so that congestion is common.
fn capacity() -> impl Strategy<Value = Option<Decimal>> {
    prop::option::weighted(
        0.6,
        prop_oneof![
            (100i64..=800).prop_map(cents),
            (100i64..=5000).prop_map(cents)
        ],
    )
}

/// One line with positive x, sometimes followed by a parallel series capacitor: a line with
/// negative x whose |x| is larger, so the pair's combined susceptance 1/x₊ − 1/|x₋| stays
/// positive and the network's susceptance matrix stays non-singular.
fn line_group(n: usize) -> impl Strategy<Value = Vec<RawLine>> {
    (
        0..n,
        1..n,
        1i64..=200,
        capacity(),
        prop::option::weighted(0.2, (0i64..200, capacity(), any::<bool>())),
    )
        .prop_map(move |(a, off, x, cap, companion)| {
            let b = (a + off) % n;
            let mut group = vec![(a, b, cents(x), cap)];
            if let Some((extra, cap2, flip)) = companion {
                if x < 200 {
                    let magnitude = x + 1 + extra % (200 - x);
                    let (f, t) = if flip { (b, a) } else { (a, b) };
                    group.push((f, t, cents(-magnitude), cap2));
                }
            }
            group
        })
}

fn lines(n: usize, max: usize) -> BoxedStrategy<Vec<RawLine>> {
    if n < 2 {
        return Just(Vec::new()).boxed();
    }
    prop::collection::vec(line_group(n), 0..=max)
        .prop_map(move |groups| {
            let mut v: Vec<RawLine> = groups.into_iter().flatten().collect();
            // Truncation only ever drops a capacitor after its partner, or whole groups.
            v.truncate(max);
            v
        })
        .boxed()
}

/// Limit prices on a 0.01 tick, often from a small pool so that ties occur; now and then a
/// must-take block.
fn price() -> impl Strategy<Value = Option<Decimal>> {
    prop_oneof![
        6 => (0i64..=10_000).prop_map(|c| Some(cents(c))),
        3 => prop::sample::select(vec![1000i64, 2550, 5000]).prop_map(|c| Some(cents(c))),
        1 => Just(None),
    ]
}

fn block() -> impl Strategy<Value = BlockSpec> {
    ((100i64..=2000).prop_map(cents), price())
        .prop_map(|(quantity, price)| BlockSpec { quantity, price })
}

fn order(n: usize) -> impl Strategy<Value = RawOrder> {
    (
        prop_oneof![Just(Side::Buy), Just(Side::Sell)],
        0..n,
        prop::collection::vec(block(), 1..=3),
    )
}

fn build(n: usize, lines: Vec<RawLine>, orders: Vec<RawOrder>) -> MarketSpec {
    MarketSpec {
        name: "prop".into(),
        interval_minutes: 15,
        price_floor: Decimal::from(PRICE_FLOOR),
        price_cap: Decimal::from(PRICE_CAP),
        line_violation_penalty: None,
        nodes: (0..n)
            .map(|i| NodeSpec {
                id: format!("n{i}"),
            })
            .collect(),
        lines: lines
            .into_iter()
            .enumerate()
            .map(|(i, (a, b, x, capacity))| LineSpec {
                id: format!("l{i}"),
                from: format!("n{a}"),
                to: format!("n{b}"),
                x,
                capacity,
            })
            .collect(),
        grid_connections: Vec::new(),
        devices: Vec::new(),
        orders: orders
            .into_iter()
            .enumerate()
            .map(|(i, (side, node, blocks))| OrderSpec {
                id: format!("o{i}"),
                participant: None,
                node: format!("n{node}"),
                side,
                blocks,
                device: None,
            })
            .collect(),
        flex_requirements: Vec::new(),
        flex_offers: Vec::new(),
    }
}

fn market_spec(
    nodes: std::ops::RangeInclusive<usize>,
    lines_max: usize,
    orders: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = MarketSpec> {
    nodes.prop_flat_map(move |n| {
        (
            Just(n),
            lines(n, lines_max),
            prop::collection::vec(order(n), orders.clone()),
        )
            .prop_map(|(n, l, o)| build(n, l, o))
    })
}

/// Small markets: 1–4 nodes, 0–5 lines, 0–8 orders.
fn small_market() -> impl Strategy<Value = MarketSpec> {
    market_spec(1..=4, 5, 0..=8)
}

/// Books large enough for the active-set method to have something to fix: 2–5 nodes, 20–60
/// orders.
fn large_market() -> impl Strategy<Value = MarketSpec> {
    market_spec(2..=5, 6, 20..=60)
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties and the regression tests
// ---------------------------------------------------------------------------------------------

fn market(spec: &MarketSpec) -> Market {
    Market::new(spec).expect("generated markets are valid")
}

fn clear(m: &Market, method: Method) -> Result<Clearing, TestCaseError> {
    clear_with(m, method)
        .map(|(c, _)| c)
        .map_err(|e| TestCaseError::fail(format!("clearing failed: {e}")))
}

fn f64_of(d: Decimal) -> f64 {
    d.to_f64().expect("decimal fits in f64")
}

/// Island of each node index, by a union-find of our own (not the engine's).
fn island_of(spec: &MarketSpec) -> Vec<usize> {
    let index: HashMap<&str, usize> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..spec.nodes.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            i = p[i];
        }
        i
    }
    for l in &spec.lines {
        let a = find(&mut parent, index[l.from.as_str()]);
        let b = find(&mut parent, index[l.to.as_str()]);
        parent[a] = b;
    }
    (0..spec.nodes.len())
        .map(|i| find(&mut parent, i))
        .collect()
}

fn check_feasible(spec: &MarketSpec, m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    let n = m.node_ids().len();
    prop_assert_eq!(c.nodes.len(), n);
    prop_assert_eq!(c.lines.len(), m.lines().len());
    prop_assert_eq!(c.orders.len(), m.orders().len());
    // Blocks within bounds, totals consistent.
    for (o, fill) in m.orders().iter().zip(&c.orders) {
        prop_assert_eq!(&o.id, &fill.id);
        prop_assert_eq!(o.blocks.len(), fill.accepted.len());
        for (b, &a) in o.blocks.iter().zip(&fill.accepted) {
            prop_assert!(a >= Decimal::ZERO, "order {} accepted {} < 0", o.id, a);
            prop_assert!(
                a <= b.quantity,
                "order {} accepted {} > {}",
                o.id,
                a,
                b.quantity
            );
        }
        prop_assert_eq!(
            fill.accepted.iter().copied().sum::<Decimal>(),
            fill.accepted_total
        );
    }
    // Nodal balance, within flow rounding, counting the node relaxations (rule 7).
    let mut net = vec![Decimal::ZERO; n];
    let node_index: HashMap<&str, usize> = m
        .node_ids()
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    for r in &c.relaxations {
        match r.kind {
            "node_shortfall" => net[node_index[r.id.as_str()]] += r.quantity,
            "node_spill" => net[node_index[r.id.as_str()]] -= r.quantity,
            _ => {}
        }
    }
    for (o, fill) in m.orders().iter().zip(&c.orders) {
        match o.side {
            Side::Sell => net[o.node] += fill.accepted_total,
            Side::Buy => net[o.node] -= fill.accepted_total,
        }
    }
    for (l, flow) in m.lines().iter().zip(&c.lines) {
        net[l.to] += flow.flow;
        net[l.from] -= flow.flow;
        if let Some(cap) = l.capacity {
            prop_assert!(
                flow.flow.abs() <= cap + Decimal::new(1, 6),
                "line {} flow {} exceeds capacity {}",
                l.id,
                flow.flow,
                cap
            );
        }
    }
    for (i, r) in net.iter().enumerate() {
        prop_assert!(
            r.abs() <= Decimal::new(1, 5),
            "node {} out of balance by {}",
            m.node_ids()[i],
            r
        );
    }
    // Each island balances exactly in decimals.
    let island = island_of(spec);
    let mut island_net: BTreeMap<usize, Decimal> = BTreeMap::new();
    for r in &c.relaxations {
        let sign = match r.kind {
            "node_shortfall" => Decimal::ONE,
            "node_spill" => Decimal::NEGATIVE_ONE,
            _ => continue,
        };
        *island_net
            .entry(island[node_index[r.id.as_str()]])
            .or_default() += sign * r.quantity;
    }
    for (o, fill) in m.orders().iter().zip(&c.orders) {
        let e = island_net.entry(island[o.node]).or_default();
        match o.side {
            Side::Sell => *e += fill.accepted_total,
            Side::Buy => *e -= fill.accepted_total,
        }
    }
    for (k, r) in island_net {
        prop_assert!(r.is_zero(), "island of node {} nets {}", m.node_ids()[k], r);
    }
    // Kirchhoff's voltage law: the flows derive from angles. Walk a spanning forest from each
    // island's first node and check every line against the angles it implies.
    let mut theta: Vec<Option<f64>> = vec![None; n];
    for start in 0..n {
        if theta[start].is_some() {
            continue;
        }
        theta[start] = Some(0.0);
        let mut stack = vec![start];
        while let Some(u) = stack.pop() {
            for (l, flow) in m.lines().iter().zip(&c.lines) {
                let (x, f) = (f64_of(l.x), f64_of(flow.flow));
                // flow = (θ_from − θ_to)/x
                if l.from == u && theta[l.to].is_none() {
                    theta[l.to] = Some(theta[u].unwrap() - x * f);
                    stack.push(l.to);
                } else if l.to == u && theta[l.from].is_none() {
                    theta[l.from] = Some(theta[u].unwrap() + x * f);
                    stack.push(l.from);
                }
            }
        }
    }
    for (l, flow) in m.lines().iter().zip(&c.lines) {
        let drop = theta[l.from].unwrap() - theta[l.to].unwrap();
        let err = drop - f64_of(l.x) * f64_of(flow.flow);
        prop_assert!(
            err.abs() <= 2e-5,
            "line {}: angle drop {} but x·flow {}",
            l.id,
            drop,
            f64_of(l.x) * f64_of(flow.flow)
        );
    }
    Ok(())
}

fn check_fill_rule(m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    for (o, fill) in m.orders().iter().zip(&c.orders) {
        let lambda = c.nodes[o.node].price;
        for (k, (b, &a)) in o.blocks.iter().zip(&fill.accepted).enumerate() {
            let what = format!(
                "order {} {} block {} at {} (node {} price {}) accepted {} of {}",
                o.id, o.side, k, b.price, c.nodes[o.node].id, lambda, a, b.quantity
            );
            match o.side {
                Side::Buy if b.price > lambda => prop_assert_eq!(a, b.quantity, "{}", what),
                Side::Buy if b.price < lambda => prop_assert!(a.is_zero(), "{}", what),
                Side::Sell if b.price < lambda => prop_assert_eq!(a, b.quantity, "{}", what),
                Side::Sell if b.price > lambda => prop_assert!(a.is_zero(), "{}", what),
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_rational(m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    for (o, fill) in m.orders().iter().zip(&c.orders) {
        let lambda = c.nodes[o.node].price;
        for (b, &a) in o.blocks.iter().zip(&fill.accepted) {
            if a.is_zero() {
                continue;
            }
            match o.side {
                Side::Buy => prop_assert!(
                    lambda <= b.price,
                    "buyer {} pays {} above its bid {}",
                    o.id,
                    lambda,
                    b.price
                ),
                Side::Sell => prop_assert!(
                    lambda >= b.price,
                    "seller {} receives {} below its offer {}",
                    o.id,
                    lambda,
                    b.price
                ),
            }
        }
    }
    Ok(())
}

fn check_settlement(m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    let s = settle(m, c);
    let total: Decimal = s.postings.iter().map(|p| p.amount).sum();
    prop_assert_eq!(total, Decimal::ZERO, "postings sum to {}", total);
    for p in &s.postings {
        prop_assert_eq!(
            p.amount.round_dp(2),
            p.amount,
            "posting {:?} has more than 2 decimals",
            p
        );
    }
    let mut bought: HashMap<&str, Decimal> = HashMap::new();
    let mut sold: HashMap<&str, Decimal> = HashMap::new();
    for a in &s.attributions {
        prop_assert!(a.quantity > Decimal::ZERO, "attribution {:?}", a);
        prop_assert_eq!(a.network_charge.round_dp(2), a.network_charge);
        *bought.entry(a.buyer.as_str()).or_default() += a.quantity;
        *sold.entry(a.seller.as_str()).or_default() += a.quantity;
    }
    // Rule 7: what a node relaxation served or took has no counterparty.
    let relaxed = c
        .relaxations
        .iter()
        .any(|r| r.kind == "node_shortfall" || r.kind == "node_spill");
    for fill in &c.orders {
        let attributed = match fill.side {
            Side::Buy => bought.get(fill.id.as_str()),
            Side::Sell => sold.get(fill.id.as_str()),
        }
        .copied()
        .unwrap_or_default();
        if relaxed {
            prop_assert!(attributed <= fill.accepted_total);
            continue;
        }
        prop_assert_eq!(
            attributed,
            fill.accepted_total,
            "order {} attributed {} of {}",
            &fill.id,
            attributed,
            fill.accepted_total
        );
    }
    Ok(())
}

fn check_all(spec: &MarketSpec) -> Result<(), TestCaseError> {
    let m = market(spec);
    let c = clear(&m, Method::Full)?;
    check_feasible(spec, &m, &c)?;
    check_price_bounds(&m, &c)?;
    check_fill_rule(&m, &c)?;
    check_rational(&m, &c)?;
    check_settlement(&m, &c)?;
    check_optimal(spec, &c)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reference solver: a dense two-phase simplex with Bland's rule, in f64
// ---------------------------------------------------------------------------------------------

/// Pivot and reduced-cost tolerance.
const EPS: f64 = 1e-9;
/// A basic variable at or below this is taken as degenerate (at a bound).
const DEGENERATE: f64 = 1e-7;
/// Pivots before the reference solver gives up (Bland's rule cannot cycle; this guards
/// against a defect in this file).
const PIVOTS_MAX: usize = 20_000;

/// An optimal basic solution of `min c·x, A x = b, x ≥ 0`.
struct LpOptimum {
    objective: f64,
    /// Row duals: the sensitivity of the optimal objective to each `b_i`.
    duals: Vec<f64>,
    /// Whether every basic variable is strictly positive (then the duals are unique).
    nondegenerate: bool,
}

struct Tableau {
    /// m rows of `[A | I | b]`, kept as `B⁻¹ [A | I | b]`.
    rows: Vec<Vec<f64>>,
    basis: Vec<usize>,
}

impl Tableau {
    fn rhs(&self, i: usize) -> f64 {
        *self.rows[i].last().unwrap()
    }

    fn pivot(&mut self, r: usize, col: usize) {
        let p = self.rows[r][col];
        for v in self.rows[r].iter_mut() {
            *v /= p;
        }
        let pivot_row = self.rows[r].clone();
        for (i, row) in self.rows.iter_mut().enumerate() {
            if i == r {
                continue;
            }
            let f = row[col];
            if f != 0.0 {
                for (v, &pv) in row.iter_mut().zip(&pivot_row) {
                    *v -= f * pv;
                }
            }
        }
        self.basis[r] = col;
    }

    /// Runs the simplex with Bland's rule over the columns `allowed` admits.
    fn run(&mut self, cost: &[f64], allowed: impl Fn(usize) -> bool) -> Result<(), String> {
        let width = cost.len();
        for _ in 0..PIVOTS_MAX {
            let mut enter = None;
            for j in (0..width).filter(|&j| allowed(j)) {
                if self.basis.contains(&j) {
                    continue;
                }
                let d = cost[j]
                    - self
                        .rows
                        .iter()
                        .zip(&self.basis)
                        .map(|(row, &b)| cost[b] * row[j])
                        .sum::<f64>();
                if d < -EPS {
                    enter = Some(j);
                    break;
                }
            }
            let Some(j) = enter else { return Ok(()) };
            let mut leave: Option<(usize, f64)> = None;
            for i in 0..self.rows.len() {
                let a = self.rows[i][j];
                if a <= EPS {
                    continue;
                }
                let ratio = self.rhs(i) / a;
                leave = match leave {
                    None => Some((i, ratio)),
                    Some((l, best)) => {
                        if ratio < best - 1e-12
                            || (ratio <= best + 1e-12 && self.basis[i] < self.basis[l])
                        {
                            Some((i, ratio))
                        } else {
                            Some((l, best))
                        }
                    }
                };
            }
            let Some((r, _)) = leave else {
                return Err("unbounded".into());
            };
            self.pivot(r, j);
        }
        Err("too many pivots".into())
    }
}

fn simplex(a: &[Vec<f64>], b: &[f64], c: &[f64]) -> Result<LpOptimum, String> {
    let (m, n) = (a.len(), c.len());
    // Rows with b ≥ 0, artificial identity columns n..n+m.
    let sign: Vec<f64> = b
        .iter()
        .map(|&v| if v < 0.0 { -1.0 } else { 1.0 })
        .collect();
    let rows = (0..m)
        .map(|i| {
            let mut row: Vec<f64> = a[i].iter().map(|&v| sign[i] * v).collect();
            row.extend((0..m).map(|k| if k == i { 1.0 } else { 0.0 }));
            row.push(sign[i] * b[i]);
            row
        })
        .collect();
    let mut t = Tableau {
        rows,
        basis: (n..n + m).collect(),
    };
    // Phase 1: minimise the sum of artificials.
    let mut cost1 = vec![0.0; n];
    cost1.extend(std::iter::repeat_n(1.0, m));
    t.run(&cost1, |_| true)?;
    let infeasibility: f64 = (0..m).filter(|&i| t.basis[i] >= n).map(|i| t.rhs(i)).sum();
    if infeasibility > DEGENERATE {
        return Err(format!("infeasible ({infeasibility})"));
    }
    // Drive artificials out of the basis where a structural column can replace them; a row
    // where none can is redundant and keeps its artificial at zero.
    for i in 0..m {
        if t.basis[i] >= n {
            if let Some(j) = (0..n).find(|&j| t.rows[i][j].abs() > EPS) {
                t.pivot(i, j);
            }
        }
    }
    // Phase 2.
    let mut cost2 = c.to_vec();
    cost2.extend(std::iter::repeat_n(0.0, m));
    t.run(&cost2, |j| j < n)?;
    let objective = (0..m).map(|i| cost2[t.basis[i]] * t.rhs(i)).sum();
    // y = c_B B⁻¹ for the sign-adjusted rows; the artificial columns hold B⁻¹.
    let duals = (0..m)
        .map(|k| {
            sign[k]
                * (0..m)
                    .map(|i| cost2[t.basis[i]] * t.rows[i][n + k])
                    .sum::<f64>()
        })
        .collect();
    let nondegenerate = (0..m).all(|i| t.basis[i] < n && t.rhs(i) > DEGENERATE);
    Ok(LpOptimum {
        objective,
        duals,
        nondegenerate,
    })
}

/// The reference answer: the optimal welfare, and each node's price when it is unique.
struct Reference {
    welfare: f64,
    prices: Option<Vec<f64>>,
}

/// Writes the welfare maximisation out by hand, from the spec, in standard form:
/// columns: each block's accepted `q` and its slack `u` (`q + u = quantity`); each line's flow
/// `f⁺ − f⁻` and, for limited lines, two slacks (`±f + s = capacity`); each non-reference
/// node's angle `θ⁺ − θ⁻`. Rows: node balance (`Σ sell − Σ buy + inflow − outflow = 0`), line
/// flow (`f − (θ_from − θ_to)/x = 0`), then the bound rows.
fn reference(spec: &MarketSpec) -> Result<Reference, String> {
    let index: HashMap<&str, usize> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let n_nodes = spec.nodes.len();
    let island = island_of(spec);
    // One reference node per island: its first node.
    let mut is_reference = vec![false; n_nodes];
    let mut seen = std::collections::HashSet::new();
    for (i, &k) in island.iter().enumerate() {
        if seen.insert(k) {
            is_reference[i] = true;
        }
    }

    let mut cost: Vec<f64> = Vec::new();
    let mut new_col = |c: f64| {
        cost.push(c);
        cost.len() - 1
    };
    // (row entries, rhs): rows built as sparse lists first.
    let mut balance: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n_nodes];
    let mut bound_rows: Vec<(Vec<(usize, f64)>, f64)> = Vec::new();
    let floor = f64_of(spec.price_floor);
    let cap = f64_of(spec.price_cap);
    for o in &spec.orders {
        let node = index[o.node.as_str()];
        for b in &o.blocks {
            let quantity = f64_of(b.quantity);
            let (sign, price) = match o.side {
                Side::Buy => (-1.0, b.price.map_or(cap, f64_of)),
                Side::Sell => (1.0, b.price.map_or(floor, f64_of)),
            };
            // Minimise −welfare: a buy block contributes −price·q, a sell block +price·q.
            let q = new_col(sign * price);
            let u = new_col(0.0);
            balance[node].push((q, sign));
            bound_rows.push((vec![(q, 1.0), (u, 1.0)], quantity));
        }
    }
    // Rule 7: at every node an unbounded shortfall (injection at the cap) and spill
    // (withdrawal at the floor).
    for row in balance.iter_mut() {
        let short = new_col(cap);
        let spill = new_col(-floor);
        row.push((short, 1.0));
        row.push((spill, -1.0));
    }
    let mut theta: Vec<Option<(usize, usize)>> = vec![None; n_nodes];
    for (i, t) in theta.iter_mut().enumerate() {
        if !is_reference[i] {
            *t = Some((new_col(0.0), new_col(0.0)));
        }
    }
    let mut flow_rows: Vec<Vec<(usize, f64)>> = Vec::new();
    for l in &spec.lines {
        let (from, to) = (index[l.from.as_str()], index[l.to.as_str()]);
        let (fp, fm) = (new_col(0.0), new_col(0.0));
        balance[from].push((fp, -1.0));
        balance[from].push((fm, 1.0));
        balance[to].push((fp, 1.0));
        balance[to].push((fm, -1.0));
        let susceptance = 1.0 / f64_of(l.x);
        let mut row = vec![(fp, 1.0), (fm, -1.0)];
        if let Some((tp, tm)) = theta[from] {
            row.push((tp, -susceptance));
            row.push((tm, susceptance));
        }
        if let Some((tp, tm)) = theta[to] {
            row.push((tp, susceptance));
            row.push((tm, -susceptance));
        }
        flow_rows.push(row);
        if let Some(c) = l.capacity {
            let c = f64_of(c);
            let (s1, s2) = (new_col(0.0), new_col(0.0));
            bound_rows.push((vec![(fp, 1.0), (fm, -1.0), (s1, 1.0)], c));
            bound_rows.push((vec![(fp, -1.0), (fm, 1.0), (s2, 1.0)], c));
        }
    }
    let n_cols = cost.len();
    let dense = |entries: &[(usize, f64)]| {
        let mut row = vec![0.0; n_cols];
        for &(j, v) in entries {
            row[j] += v;
        }
        row
    };
    let mut a = Vec::new();
    let mut b = Vec::new();
    for row in balance.iter().chain(&flow_rows) {
        a.push(dense(row));
        b.push(0.0);
    }
    for (row, rhs) in &bound_rows {
        a.push(dense(row));
        b.push(*rhs);
    }
    let opt = simplex(&a, &b, &cost)?;
    // The balance row's dual is d(−welfare)/d(fixed demand): the nodal price.
    let prices = opt.nondegenerate.then(|| opt.duals[..n_nodes].to_vec());
    Ok(Reference {
        welfare: -opt.objective,
        prices,
    })
}

fn check_optimal(spec: &MarketSpec, c: &Clearing) -> Result<(), TestCaseError> {
    let r = reference(spec).map_err(|e| TestCaseError::fail(format!("reference: {e}")))?;
    let w = f64_of(c.welfare);
    // Welfare is that of the reported fills, rounded to six decimals (docs/MARKET.md): it may
    // sit below the LP optimum by up to one quantum (1e-6) times each block's price, beyond
    // the study format's 1e-6 relative tolerance.
    let rounding_allowance: f64 = spec
        .orders
        .iter()
        .flat_map(|o| &o.blocks)
        .map(|b| f64_of(b.price.unwrap_or(spec.price_cap)).abs() * 1e-6)
        .sum::<f64>()
        // and each node's two relaxations, rounded the same way
        + (f64_of(spec.price_cap).abs() + f64_of(spec.price_floor).abs())
            * 1e-6
            * spec.nodes.len() as f64;
    prop_assert!(
        (w - r.welfare).abs() <= 1e-6 * r.welfare.abs().max(1.0) + rounding_allowance,
        "welfare {} but the reference finds {}",
        w,
        r.welfare
    );
    if let Some(prices) = r.prices {
        for (node, p) in c.nodes.iter().zip(prices) {
            prop_assert!(
                (f64_of(node.price) - p).abs() <= 1e-5,
                "node {} price {} but the reference's unique price is {}",
                node.id,
                node.price,
                p
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// `cases` unless `PROPTEST_CASES` asks for another number (for longer hunts).
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        // Integration tests have no lib.rs beside them for proptest's default lookup.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/props.txt",
        ))),
        ..default
    }
}

/// Rule 7: every nodal price lies within the market's floor and cap, and every relaxation used
/// is priced at the bound its node's price sits on.
fn check_price_bounds(m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    for node in &c.nodes {
        prop_assert!(
            node.price >= m.price_floor() && node.price <= m.price_cap(),
            "node {} price {} outside [{}, {}]",
            node.id,
            node.price,
            m.price_floor(),
            m.price_cap()
        );
    }
    for r in &c.relaxations {
        let bound = match r.kind {
            "node_shortfall" => m.price_cap(),
            "node_spill" => m.price_floor(),
            _ => continue,
        };
        prop_assert!(r.quantity > Decimal::ZERO, "{:?}", r);
        prop_assert_eq!(r.penalty, bound);
        let node = c.nodes.iter().find(|n| n.id == r.id).expect("relaxed node");
        prop_assert_eq!(
            node.price,
            bound,
            "relaxation {:?} at a node priced {}",
            r,
            node.price
        );
    }
    Ok(())
}

/// Rule 6, against an independent computation: each node's reported price range is
/// `[lo, hi]` where `hi` is the marginal cost of one more unit of demand at the node and `lo`
/// the marginal value of one more unit of supply there, both from the reference solver's
/// optimal welfare with a small probe order (a buy at the cap, a sell at the floor). A probe
/// of ε and of 2ε giving the same slope shows the welfare is linear there (it is concave in
/// the probe), so the slope is the one-sided derivative itself; otherwise the node is skipped.
/// The published price lies in its range.
fn check_price_ranges(spec: &MarketSpec, c: &Clearing) -> Result<(), TestCaseError> {
    let fail = |e: String| TestCaseError::fail(format!("reference: {e}"));
    let w0 = reference(spec).map_err(fail)?.welfare;
    let probe = |node: &str, side: Side, eps: Decimal| -> Result<f64, TestCaseError> {
        let mut s = spec.clone();
        s.orders.push(OrderSpec {
            id: "probe".into(),
            participant: None,
            node: node.into(),
            side,
            blocks: vec![BlockSpec {
                quantity: eps,
                price: Some(match side {
                    Side::Buy => spec.price_cap,
                    Side::Sell => spec.price_floor,
                }),
            }],
            device: None,
        });
        Ok((reference(&s).map_err(fail)?.welfare - w0) / f64_of(eps))
    };
    let (e1, e2) = (Decimal::new(1, 3), Decimal::new(2, 3));
    for node in &c.nodes {
        let (lo, hi) = node.range.expect("small markets report every range");
        prop_assert!(
            lo <= node.price && node.price <= hi,
            "node {} price {} outside its range [{}, {}]",
            node.id,
            node.price,
            lo,
            hi
        );
        prop_assert_eq!(node.unique, Some(lo == hi));
        let (d1, d2) = (
            probe(&node.id, Side::Buy, e1)?,
            probe(&node.id, Side::Buy, e2)?,
        );
        if (d1 - d2).abs() < 1e-6 {
            let want = f64_of(spec.price_cap) - d1;
            prop_assert!(
                (f64_of(hi) - want).abs() < 1e-4,
                "node {}: highest optimal price {} but one more unit of demand costs {}",
                node.id,
                hi,
                want
            );
        }
        let (s1, s2) = (
            probe(&node.id, Side::Sell, e1)?,
            probe(&node.id, Side::Sell, e2)?,
        );
        if (s1 - s2).abs() < 1e-6 {
            let want = s1 + f64_of(spec.price_floor);
            prop_assert!(
                (f64_of(lo) - want).abs() < 1e-4,
                "node {}: lowest optimal price {} but one more unit of supply is worth {}",
                node.id,
                lo,
                want
            );
        }
    }
    Ok(())
}

/// Rule 6: an order that cannot change the set of optimal prices — a buy at the floor or a sell
/// at the cap, whose bound the node's relaxation columns already impose — moves no published
/// price (a solver's vertex may move: the new column is a new basis to end on).
fn check_irrelevant_order(spec: &MarketSpec, node: usize, side: Side) -> Result<(), TestCaseError> {
    let m = market(spec);
    let a = clear(&m, Method::Full)?;
    let node_id = spec.nodes[node % spec.nodes.len()].id.clone();
    let bound = match side {
        Side::Buy => spec.price_floor,
        Side::Sell => spec.price_cap,
    };
    let at = a
        .nodes
        .iter()
        .find(|n| n.id == node_id)
        .expect("node")
        .price;
    prop_assume!(at != bound);
    let mut s = spec.clone();
    s.orders.push(OrderSpec {
        id: "zz-irrelevant".into(),
        participant: None,
        node: node_id,
        side,
        blocks: vec![BlockSpec {
            quantity: Decimal::from(5),
            price: Some(bound),
        }],
        device: None,
    });
    let b = clear(&market(&s), Method::Full)?;
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        prop_assert_eq!(
            (x.price, x.range),
            (y.price, y.range),
            "node {} moved by an irrelevant order",
            &x.id
        );
    }
    Ok(())
}

/// Small markets whose limit prices span the whole band between floor (0) and cap (100), so
/// that must-take blocks behind congested loops push prices against the bounds.
fn tight_market() -> impl Strategy<Value = MarketSpec> {
    market_spec(3..=4, 6, 2..=8).prop_map(|mut spec| {
        spec.price_floor = Decimal::ZERO;
        spec.price_cap = Decimal::from(100);
        spec
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn prices_within_floor_and_cap(spec in tight_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_price_bounds(&m, &c)?;
        check_feasible(&spec, &m, &c)?;
        check_fill_rule(&m, &c)?;
        check_optimal(&spec, &c)?;
    }

    #[test]
    fn price_ranges_match_the_welfare_derivatives(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_price_ranges(&spec, &c)?;
    }

    #[test]
    fn irrelevant_orders_move_no_price(
        spec in small_market(),
        node in 0usize..4,
        buy in any::<bool>(),
    ) {
        check_irrelevant_order(&spec, node, if buy { Side::Buy } else { Side::Sell })?;
    }

    #[test]
    fn feasibility(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_feasible(&spec, &m, &c)?;
    }

    #[test]
    fn fill_rule(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_fill_rule(&m, &c)?;
    }

    #[test]
    fn individual_rationality(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_rational(&m, &c)?;
    }

    #[test]
    fn zero_sum_settlement(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_settlement(&m, &c)?;
    }

    #[test]
    fn optimal_against_reference_solver(spec in small_market()) {
        let m = market(&spec);
        let c = clear(&m, Method::Full)?;
        check_optimal(&spec, &c)?;
    }
}

/// A market and permutations of its nodes, lines and orders.
fn shuffled_market() -> impl Strategy<Value = (MarketSpec, Vec<usize>, Vec<usize>, Vec<usize>)> {
    small_market().prop_flat_map(|spec| {
        let nodes = Just((0..spec.nodes.len()).collect::<Vec<_>>()).prop_shuffle();
        let lines = Just((0..spec.lines.len()).collect::<Vec<_>>()).prop_shuffle();
        let orders = Just((0..spec.orders.len()).collect::<Vec<_>>()).prop_shuffle();
        (Just(spec), nodes, lines, orders)
    })
}

fn permuted<T: Clone>(v: &[T], p: &[usize]) -> Vec<T> {
    p.iter().map(|&i| v[i].clone()).collect()
}

fn check_deterministic(
    spec: &MarketSpec,
    node_perm: &[usize],
    line_perm: &[usize],
    order_perm: &[usize],
) -> Result<(), TestCaseError> {
    let m = market(spec);
    let a = clear(&m, Method::Full)?;
    let b = clear(&m, Method::Full)?;
    prop_assert_eq!(&a, &b);
    let bytes = |c: &Clearing| write_result(c, &settle(&m, c), m.participant_order_count(), None);
    prop_assert_eq!(bytes(&a), bytes(&b));

    let mut shuffled = spec.clone();
    shuffled.nodes = permuted(&spec.nodes, node_perm);
    shuffled.lines = permuted(&spec.lines, line_perm);
    shuffled.orders = permuted(&spec.orders, order_perm);
    let ms = market(&shuffled);
    let s = clear(&ms, Method::Full)?;
    let prices = |c: &Clearing| {
        c.nodes
            .iter()
            .map(|n| (n.id.clone(), n.price))
            .collect::<BTreeMap<_, _>>()
    };
    let fills = |c: &Clearing| {
        c.orders
            .iter()
            .map(|o| (o.id.clone(), o.accepted.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    prop_assert_eq!(prices(&a), prices(&s), "prices differ after reordering");
    prop_assert_eq!(fills(&a), fills(&s), "fills differ after reordering");
    prop_assert_eq!(a.welfare, s.welfare, "welfare differs after reordering");
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn determinism((spec, nodes, lines, orders) in shuffled_market()) {
        check_deterministic(&spec, &nodes, &lines, &orders)?;
    }
}

fn check_active_set_exact(spec: &MarketSpec) -> Result<(), TestCaseError> {
    let m = market(spec);
    let full = clear(&m, Method::Full)?;
    let active = clear(
        &m,
        Method::ActiveSet {
            band: Some(Decimal::new(1, 2)),
        },
    )?;
    let (wf, wa) = (full.welfare, active.welfare);
    prop_assert!(
        wf == wa || (f64_of(wf) - f64_of(wa)).abs() <= 1e-6 * f64_of(wf).abs().max(1.0),
        "full welfare {} but active-set welfare {}",
        wf,
        wa
    );
    check_fill_rule(&m, &full)?;
    check_fill_rule(&m, &active)?;
    check_feasible(spec, &m, &active)?;
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn active_set_is_exact(spec in large_market()) {
        check_active_set_exact(&spec)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made sanity checks of the reference solver itself
// ---------------------------------------------------------------------------------------------

#[test]
fn reference_solver_clears_a_two_node_congested_market() {
    // n0: sell 10 @ 10; n1: sell 10 @ 30, buy 20 @ 50; line n0→n1 capacity 5.
    // Optimum: 5 from n0 over the line, 10 from n1's seller, the buyer gets 15 of 20;
    // welfare 15·50 − 5·10 − 10·30 = 400. Prices: n0 = 10 and n1 = 50 (partial blocks there).
    let spec = build(
        2,
        vec![(0, 1, cents(10), Some(cents(500)))],
        vec![
            (
                Side::Sell,
                0,
                vec![BlockSpec {
                    quantity: cents(1000),
                    price: Some(cents(1000)),
                }],
            ),
            (
                Side::Sell,
                1,
                vec![BlockSpec {
                    quantity: cents(1000),
                    price: Some(cents(3000)),
                }],
            ),
            (
                Side::Buy,
                1,
                vec![BlockSpec {
                    quantity: cents(2000),
                    price: Some(cents(5000)),
                }],
            ),
        ],
    );
    let r = reference(&spec).unwrap();
    assert!((r.welfare - 400.0).abs() < 1e-9, "{}", r.welfare);
    let p = r.prices.expect("non-degenerate");
    assert!(
        (p[0] - 10.0).abs() < 1e-9 && (p[1] - 50.0).abs() < 1e-9,
        "{p:?}"
    );
    check_all(&spec).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Regressions: minimised failures of the properties above, each named after its defect
// ---------------------------------------------------------------------------------------------

fn blk(quantity_cents: i64, price_cents: i64) -> BlockSpec {
    BlockSpec {
        quantity: cents(quantity_cents),
        price: Some(cents(price_cents)),
    }
}

/// Found by `determinism`. n1–n2 joined by one line, n0 alone; the only order is a sell at n2
/// (11.68 @ 48.17, 11.26 @ 61.19). Nothing trades, so any price ≤ 48.17 at n1 and n2 is a
/// correct dual; the engine must still pick the same one whatever the input order. Listing the
/// nodes as n0, n2, n1 instead of n0, n1, n2 moved n1's and n2's price from 48.17 to 0: the LP's
/// balance rows and flow columns followed the input order, so HiGHS saw a different model.
#[test]
fn reordering_nodes_changes_a_degenerate_nodal_price() {
    let spec = build(
        3,
        vec![(2, 1, cents(1), None)],
        vec![(Side::Sell, 2, vec![blk(1168, 4817), blk(1126, 6119)])],
    );
    check_deterministic(&spec, &[0, 2, 1], &[0], &[0]).unwrap();
}

/// Found by `optimal_against_reference_solver`. n2→n0 over a line (x 1.45, capacity 1.61) in
/// parallel with a series capacitor (x −1.46, unlimited): their net susceptance is tiny, so l0
/// carries 146 times the transfer T and T ≤ 1.61/146 = 0.01102739…; a buy 1 @ 25.77 at n0, a
/// sell 1 @ 0 at n2. Optimal welfare 25.77·T = 0.2841760…; the engine's fills at six decimals
/// (T = 0.011027) give 0.28416579, 1.0e-5 short: more than the 1e-6·max(1, |welfare|) the
/// study format promises. No six-decimal fill can do better here (0.011028 overloads l0), so
/// the promise cannot hold for small welfare whenever the optimum is not a six-decimal point:
/// the documented rule is now that welfare is that of the rounded fills, within one quantum
/// times each block's price of the optimum, which `check_optimal` allows for.
#[test]
fn six_decimal_fills_stay_within_one_quantum_of_the_optimum() {
    let spec = build(
        3,
        vec![
            (2, 0, cents(145), Some(cents(161))),
            (2, 0, cents(-146), None),
        ],
        vec![
            (Side::Buy, 0, vec![blk(100, 2577)]),
            (Side::Sell, 2, vec![blk(100, 0)]),
        ],
    );
    check_all(&spec).unwrap();
}

/// Found by `determinism` and `active_set_is_exact` when many tests clear at once: `clear_with`
/// computed its `other_s` statistic as `t0.elapsed() − t1.elapsed()` with two clock reads, and
/// `Duration` subtraction panics ("overflow when subtracting durations") whenever the thread is
/// held up between the two reads for longer than the solve took. Clearing many tiny markets on
/// busy threads makes that likely.
#[test]
fn clearing_statistics_never_panic_on_a_busy_machine() {
    // Empty markets: the shorter the solve, the narrower the margin.
    let spec = build(1, Vec::new(), Vec::new());
    let m = market(&spec);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..2000 {
                    clear_with(&m, Method::Full).expect("clears");
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Markets with flexibility, devices and grid connections
// ---------------------------------------------------------------------------------------------

/// A flexibility curve's block: 0.5 to 10 at 0 to 2 (prices on a coarse grid so ties are
/// common), sometimes must-take when `must_take` allows it.
fn flex_block(must_take: bool) -> impl Strategy<Value = BlockSpec> {
    (
        (50i64..=1000).prop_map(cents),
        prop_oneof![
            4 => prop::sample::select(vec![0i64, 10, 20, 50, 100, 200]).prop_map(|c| Some(cents(c))),
            if must_take { 1 } else { 0 } => Just(None),
        ],
    )
        .prop_map(|(quantity, price)| BlockSpec { quantity, price })
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Up), Just(Direction::Down)]
}

/// A small market of [`small_market`]'s shape plus 0–3 devices (capacity 1–20), energy orders
/// and flexibility offers on them, 0–1 grid connection, 0–2 flexibility requirements and 0–5
/// offers.
fn flex_market() -> impl Strategy<Value = MarketSpec> {
    (1usize..=4).prop_flat_map(|n| {
        let devices = prop::collection::vec((0..n, (100i64..=2000).prop_map(cents)), 0..=3);
        let grid = prop::option::of((0..n, (0i64..=3000).prop_map(cents), 0i64..=100));
        let orders = prop::collection::vec((order(n), prop::option::of(0usize..3)), 0..=8);
        let reqs = prop::collection::vec(
            (
                prop::collection::btree_set(0..n, 1..=n),
                direction(),
                prop::collection::vec(flex_block(true), 1..=2),
            ),
            0..=2,
        );
        let offers = prop::collection::vec(
            (
                0..n,
                direction(),
                prop::collection::vec(flex_block(false), 1..=2),
                prop::option::of(0usize..3),
            ),
            0..=5,
        );
        (Just(n), lines(n, 5), devices, grid, orders, reqs, offers).prop_map(
            |(n, lines, devices, grid, orders, reqs, offers)| {
                let on_device = |node: usize, d: Option<usize>| {
                    d.filter(|&d| devices.get(d).is_some_and(|dev| dev.0 == node))
                        .map(|d| format!("d{d}"))
                };
                let mut spec = build(n, lines, orders.iter().map(|(o, _)| o.clone()).collect());
                for (o, (raw, d)) in spec.orders.iter_mut().zip(&orders) {
                    o.device = on_device(raw.1, *d);
                }
                spec.devices = devices
                    .iter()
                    .enumerate()
                    .map(|(i, &(node, capacity))| DeviceSpec {
                        id: format!("d{i}"),
                        node: format!("n{node}"),
                        capacity,
                    })
                    .collect();
                spec.grid_connections = grid
                    .into_iter()
                    .map(|(node, limit, price)| GridConnectionSpec {
                        id: "g".into(),
                        node: format!("n{node}"),
                        import_limit: limit,
                        import_price: cents(price + 5),
                        export_limit: limit,
                        export_price: cents(price),
                    })
                    .collect();
                spec.flex_requirements = reqs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (nodes, direction, blocks))| FlexRequirementSpec {
                        id: format!("r{i}"),
                        buyer: None,
                        nodes: nodes.into_iter().map(|k| format!("n{k}")).collect(),
                        direction,
                        blocks,
                    })
                    .collect();
                spec.flex_offers = offers
                    .into_iter()
                    .enumerate()
                    .map(|(i, (node, direction, blocks, d))| FlexOfferSpec {
                        id: format!("f{i}"),
                        participant: None,
                        node: format!("n{node}"),
                        direction,
                        blocks,
                        device: on_device(node, d),
                    })
                    .collect();
                spec
            },
        )
    })
}

/// A JSON value with every array of records (objects) sorted by the records' text.
fn records_sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(records_sorted).collect();
            if items.iter().all(Value::is_object) {
                items.sort_by_cached_key(|i| i.to_string());
            }
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, records_sorted(v)))
                .collect(),
        ),
        v => v,
    }
}

/// The result file's records, order aside.
fn result_records(m: &Market) -> Result<serde_json::Value, TestCaseError> {
    let c = clear(m, Method::Full)?;
    let text = write_result(&c, &settle(m, &c), m.participant_order_count(), None);
    Ok(records_sorted(
        serde_json::from_str(&text).expect("result is JSON"),
    ))
}

/// Every record list of the spec shuffled by `seed`'s permutations.
fn shuffle_all(spec: &MarketSpec, seed: u64) -> MarketSpec {
    // A small deterministic permutation (an LCG's Fisher–Yates) so the shrinker keeps the seed.
    fn shuffled<T: Clone>(v: &[T], seed: &mut u64) -> Vec<T> {
        let mut v = v.to_vec();
        for i in (1..v.len()).rev() {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = (*seed >> 33) as usize % (i + 1);
            v.swap(i, j);
        }
        v
    }
    let mut s = seed;
    let mut out = spec.clone();
    out.nodes = shuffled(&spec.nodes, &mut s);
    out.lines = shuffled(&spec.lines, &mut s);
    out.grid_connections = shuffled(&spec.grid_connections, &mut s);
    out.devices = shuffled(&spec.devices, &mut s);
    out.orders = shuffled(&spec.orders, &mut s);
    out.flex_requirements = shuffled(&spec.flex_requirements, &mut s);
    out.flex_offers = shuffled(&spec.flex_offers, &mut s);
    for r in &mut out.flex_requirements {
        r.nodes = shuffled(&r.nodes, &mut s);
    }
    out
}

fn check_deterministic_everywhere(spec: &MarketSpec, seed: u64) -> Result<(), TestCaseError> {
    let a = result_records(&market(spec))?;
    let b = result_records(&market(&shuffle_all(spec, seed)))?;
    prop_assert_eq!(a, b, "the result's records differ after shuffling");
    Ok(())
}

/// No device is reported beyond its capacity, counted from the fills and flexibility offers
/// (not from the engine's own device summary, which must agree).
fn check_devices(m: &Market, c: &Clearing) -> Result<(), TestCaseError> {
    let mut used = vec![(Decimal::ZERO, Decimal::ZERO); m.devices().len()];
    for (o, f) in m.orders().iter().zip(&c.orders) {
        if let Some(d) = o.device {
            // Rule 8: `net + up ≤ C` and `−net + down ≤ C`, `net = sells − buys`.
            let net = match o.side {
                Side::Sell => f.accepted_total,
                Side::Buy => -f.accepted_total,
            };
            used[d].0 += net;
            used[d].1 -= net;
        }
    }
    for (o, f) in m.flex_offers().iter().zip(&c.flex_offers) {
        if let Some(d) = o.device {
            match o.direction {
                Direction::Up => used[d].0 += f.accepted_total,
                Direction::Down => used[d].1 += f.accepted_total,
            }
        }
    }
    for ((d, (up, down)), r) in m.devices().iter().zip(used).zip(&c.devices) {
        prop_assert!(
            up <= d.capacity && down <= d.capacity,
            "device {} uses {} up and {} down of {}",
            d.id,
            up,
            down,
            d.capacity
        );
        prop_assert_eq!((r.up_used, r.down_used), (up, down), "device {}", &d.id);
    }
    // Each requirement's procurement is exactly what the offers' allocations supply.
    let mut supplied = vec![Decimal::ZERO; m.flex_requirements().len()];
    for o in &c.flex_offers {
        for &(ri, q) in &o.allocations {
            supplied[ri] += q;
        }
        prop_assert_eq!(
            o.allocations.iter().map(|a| a.1).sum::<Decimal>(),
            o.accepted_total
        );
    }
    for (r, s) in c.flex_requirements.iter().zip(supplied) {
        prop_assert_eq!(r.procured, s, "requirement {}", &r.id);
    }
    Ok(())
}

fn check_flex_market(spec: &MarketSpec) -> Result<(), TestCaseError> {
    let m = market(spec);
    let c = clear(&m, Method::Full)?;
    check_feasible(spec, &m, &c)?;
    check_devices(&m, &c)?;
    check_settlement(&m, &c)?;
    let s = settle(&m, &c);
    for p in &s.postings {
        prop_assert!(
            !p.amount.is_zero() && p.amount.to_string() != "-0.00",
            "{:?}",
            p
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn determinism_under_shuffling_of_every_record_list(spec in flex_market(), seed in any::<u64>()) {
        check_deterministic_everywhere(&spec, seed)?;
    }

    #[test]
    fn devices_never_exceed_capacity(spec in flex_market()) {
        check_flex_market(&spec)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery settlement on random markets and random meter readings
// ---------------------------------------------------------------------------------------------

/// Every position the clearing gives (accounts with accepted energy or flexibility, at their
/// nodes), read or not by `deviations` (`None`: no reading; `Some(d)`: the schedule plus
/// `d` hundredths of a kWh, rounded to the meter scale), plus one reading of an account with
/// no orders. Checks zero-sum, the flexibility identity `|delivered| + shortfall = |procured|`,
/// the energy identity `M − C = delivered + imbalance`, the imbalance prices' side of the
/// nodal price, each account's postings against its position, and that shuffling the
/// readings changes nothing.
fn check_delivery(
    spec: &MarketSpec,
    deviations: &[Option<i64>],
    seed: u64,
) -> Result<(), TestCaseError> {
    use baton_engine::delivery::{settle_delivery, DeliveryRules, MeterReading};
    use baton_engine::units::round_at;
    let m = market(spec);
    let c = clear(&m, Method::Full)?;
    let minutes = Decimal::from(c.interval_minutes);
    let mut cleared: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for f in c.orders.iter().take(m.participant_order_count()) {
        if !f.accepted_total.is_zero() {
            let e = f.accepted_total * minutes / Decimal::from(60);
            *cleared
                .entry((f.account.clone(), m.node_ids()[f.node].clone()))
                .or_default() += if f.side == Side::Sell { e } else { -e };
        }
    }
    for (o, r) in m.flex_offers().iter().zip(&c.flex_offers) {
        if !r.accepted_total.is_zero() {
            cleared
                .entry((o.account.clone(), m.node_ids()[o.node].clone()))
                .or_default();
        }
    }
    let mut readings = Vec::new();
    for (((account, node), e), d) in cleared.iter().zip(deviations.iter().cycle()) {
        let Some(d) = d else { continue };
        let net = round_at(*e + Decimal::new(*d, 2), 6);
        let (import_kwh, export_kwh) = if net.is_sign_negative() {
            (-net, Decimal::ZERO)
        } else {
            (Decimal::ZERO, net)
        };
        readings.push(MeterReading {
            account: account.clone(),
            node: node.clone(),
            import_kwh,
            export_kwh,
        });
    }
    readings.push(MeterReading {
        account: "outsider".into(),
        node: "n0".into(),
        import_kwh: Decimal::new(125, 2),
        export_kwh: Decimal::new(25, 2),
    });
    let rules = DeliveryRules::default();
    let d = settle_delivery(&m, &c, &readings, &rules)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(d.total(), Decimal::ZERO, "delivery postings sum to zero");
    let quantum = Decimal::new(3, 6);
    for p in &d.positions {
        let lambda = c.nodes[m.node_ids().iter().position(|n| *n == p.node).unwrap()].price;
        prop_assert!(
            (p.flex_delivered_kwh.abs() + p.flex_shortfall_kwh - p.flex_procured_kwh.abs()).abs()
                <= quantum,
            "{:?}",
            p
        );
        prop_assert!(
            p.flex_delivered_kwh * p.flex_procured_kwh >= Decimal::ZERO,
            "{:?}",
            p
        );
        prop_assert!(
            p.flex_delivered_kwh.abs() <= p.flex_procured_kwh.abs(),
            "{:?}",
            p
        );
        prop_assert!(p.flex_shortfall_kwh >= Decimal::ZERO, "{:?}", p);
        let metered = p.metered_kwh.unwrap_or(p.cleared_kwh);
        prop_assert!(
            (metered - p.cleared_kwh - p.flex_delivered_kwh - p.imbalance_kwh).abs() <= quantum,
            "{:?}",
            p
        );
        if p.metered_kwh.is_none() {
            prop_assert_eq!(p.imbalance_kwh, Decimal::ZERO);
            prop_assert_eq!(p.flex_delivered_kwh, Decimal::ZERO);
        }
        if let Some(price) = p.imbalance_price {
            if p.imbalance_kwh > Decimal::ZERO {
                prop_assert!(price <= lambda, "long above λ: {:?}", p);
            } else if p.imbalance_kwh < Decimal::ZERO {
                prop_assert!(price >= lambda, "short below λ: {:?}", p);
            }
        }
    }
    // Each account's postings are exactly its positions' amounts.
    let mut by_account: BTreeMap<&str, Decimal> = BTreeMap::new();
    for p in &d.postings {
        *by_account.entry(p.account.as_str()).or_default() += p.amount;
    }
    let mut expected: BTreeMap<&str, Decimal> = BTreeMap::new();
    for p in &d.positions {
        *expected.entry(p.account.as_str()).or_default() += p.imbalance_amount + p.flex_amount;
    }
    for (account, amount) in &expected {
        // A requirement's account also receives what the offers forfeit; skip it.
        if !m.flex_requirements().iter().any(|r| r.account == *account) {
            let got = by_account.get(account).copied().unwrap_or_default();
            prop_assert_eq!(got, *amount, "account {}", account);
        }
    }
    for p in &d.postings {
        prop_assert!(!p.amount.is_zero(), "zero posting {:?}", p);
    }
    // Shuffled readings, same bytes.
    let mut shuffled = readings.clone();
    let mut s = seed;
    for i in (1..shuffled.len()).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        shuffled.swap(i, (s >> 33) as usize % (i + 1));
    }
    let e = settle_delivery(&m, &c, &shuffled, &rules)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(d, e, "shuffled readings settle differently");
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn delivery_settlement_is_zero_sum_and_consistent(
        spec in flex_market(),
        deviations in prop::collection::vec(prop::option::weighted(0.8, -500i64..=500), 1..=8),
        seed in any::<u64>(),
    ) {
        check_delivery(&spec, &deviations, seed)?;
    }
}
