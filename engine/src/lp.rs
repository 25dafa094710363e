//! The linear program, and the only module that touches `f64`.
//!
//! Formulation (see `docs/MARKET.md`): maximise
//! `Σ buy price·q − Σ sell price·q + Σ requirement price·z − Σ offer price·y
//!  − line penalty·overload − node penalty·|node slack|`
//! subject to, at every node, `injection − withdrawal + inflow − outflow = fixed net withdrawal`
//! (the balance row; its dual is `−price` because we maximise), DC flow
//! `f − (θ_from − θ_to)/x = 0` with one angle fixed at 0 per island, `|f| ≤ capacity`
//! (or `≤ capacity + overload` when limits are soft), device power ranges (rule 8), and for each
//! flexibility requirement `Σ offers − Σ demand blocks = 0` (dual `−flex price`).
//!
//! **Rounding rule** (the one rule by which solver output becomes money-grade decimals): every
//! value HiGHS returns is converted from its exact binary value (`Decimal::from_f64_retain`),
//! rounded half to even first at three places past its field's scale and then at that scale, by
//! [`crate::units::round_at`]; `-0` becomes `0`. Quantities use [`QUANTITY_SCALE`], prices
//! [`PRICE_SCALE`]. The first rounding absorbs floating-point noise: an exact vertex value that
//! lies on a half quantum (30.5871875, common with two-decimal bids and reactances) comes back
//! from HiGHS a few ulps either side of it depending on the order the records entered, and
//! would otherwise round up or down with that order; now it is the half quantum, and half to
//! even decides.

use good_lp::constraint::ConstraintReference;
use good_lp::solvers::highs::{highs, HighsSolution};
use good_lp::solvers::DualValues;
use good_lp::{
    constraint, variable, Constraint, Expression, ProblemVariables, Solution, SolutionWithDual,
    SolverModel, Variable,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::clearing::{Phase, PhaseHook};
use crate::model::{Direction, Market, Side};
use crate::units::{round_at, PRICE_SCALE, QUANTITY_SCALE};

/// HiGHS primal and dual feasibility tolerance. Tighter than HiGHS' default 1e-7 so that
/// rounding at six decimal places recovers the exact vertex.
const SOLVER_TOLERANCE: f64 = 1e-9;

/// LPs with at least this many columns are solved by HiGHS' interior-point method with
/// crossover (measured 1.3–2.5× faster than dual simplex from 50,000 columns on case2869).
pub const IPM_COLUMNS_MIN: usize = 10_000;

/// An LP column standing for one or more blocks at the same node, side and effective price
/// (and the same device, if any). Aggregating them is exact; the tie rule splits the result.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub(crate) node: usize,
    pub(crate) side: Side,
    pub(crate) price: Decimal,
    pub(crate) quantity: Decimal,
    pub(crate) device: Option<usize>,
}

/// How a step enters the LP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepMode {
    /// A column with bounds `0..=quantity`.
    Free,
    /// Fixed at its full quantity (a constant in the balance row).
    Full,
    /// Fixed at zero (left out).
    Zero,
}

/// The LP solution, rounded to decimals.
#[derive(Clone, Debug)]
pub(crate) struct LpSolution {
    /// Accepted quantity per step (fixed steps at their bound).
    pub(crate) step_accepted: Vec<Decimal>,
    /// Nodal price per node.
    pub(crate) node_price: Vec<Decimal>,
    /// Flow per line, positive from → to.
    pub(crate) flow: Vec<Decimal>,
    /// Overload per line (soft limits only).
    pub(crate) overload: Vec<Decimal>,
    /// Node slack (active-set LPs only): positive = missing injection.
    pub(crate) node_slack: Vec<Decimal>,
    /// Per node: the shortfall relaxation used (virtual injection priced at the cap), after
    /// netting against the node's own buys at the cap ([`net_relaxations`]).
    pub(crate) node_shortfall: Vec<Decimal>,
    /// Per node: the spill relaxation used (virtual withdrawal priced at the floor), after
    /// netting against the node's own sells at the floor.
    pub(crate) node_spill: Vec<Decimal>,
    /// Per flex offer, per block, per requirement index: accepted quantity.
    pub(crate) flex_offer_accepted: Vec<Vec<Vec<(usize, Decimal)>>>,
    /// Per requirement, per block: accepted quantity.
    pub(crate) flex_requirement_accepted: Vec<Vec<Decimal>>,
    /// Per requirement: its price.
    pub(crate) flex_price: Vec<Decimal>,
    /// Per device: shadow price of its (net + up ≤ C, −net + down ≤ C) rows, ≥ 0.
    pub(crate) device_shadow: Vec<(Decimal, Decimal)>,
    /// Per node: whether its price is unique, and its range (rule 6; [`publish_prices`]).
    pub(crate) node_range: Vec<PriceRange>,
    /// Per requirement: the same for its flexibility price.
    pub(crate) flex_range: Vec<PriceRange>,
    /// Solver statistics.
    pub(crate) stats: LpStats,
}

/// The solved LP's size (its timing is the caller's: [`PhaseHook`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LpStats {
    pub(crate) columns: usize,
    pub(crate) rows: usize,
}

/// Why the LP failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LpError {
    /// HiGHS did not reach an optimal solution.
    #[error("solver failed: {0}")]
    Solver(String),
    /// HiGHS returned a value that is not a finite number.
    #[error("solver returned a non-finite value for {0}")]
    NonFinite(&'static str),
}

fn f(d: Decimal) -> f64 {
    d.to_f64().expect("validated decimals fit in f64")
}

/// Decimal places past a field's scale at which an LP value is first rounded, absorbing the
/// solver's floating-point noise (see the rounding rule above).
const NOISE_DIGITS: u32 = 3;

fn dec(x: f64, scale: u32, what: &'static str) -> Result<Decimal, LpError> {
    let d = Decimal::from_f64_retain(x).ok_or(LpError::NonFinite(what))?;
    Ok(round_at(round_at(d, scale + NOISE_DIGITS), scale))
}

/// Indices of `ids` sorted by id: the canonical order in which records enter the model.
fn canonical_order<'a>(ids: impl Iterator<Item = &'a String>) -> Vec<usize> {
    let ids: Vec<&String> = ids.collect();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_unstable_by(|&a, &b| ids[a].cmp(ids[b]));
    order
}

/// Builds and solves the LP. `node_slack_penalty` adds a penalised slack to every balance row
/// (used by the active-set method so a wrong guess never makes the LP infeasible).
pub(crate) fn solve(
    market: &Market,
    islands: &[Vec<usize>],
    steps: &[Step],
    modes: &[StepMode],
    node_slack_penalty: Option<Decimal>,
    hook: &mut dyn PhaseHook,
) -> Result<LpSolution, LpError> {
    hook.enter(Phase::Build);
    let n_nodes = market.node_ids().len();
    let lines = market.lines();
    let mut vars = ProblemVariables::new();
    let mut objective = Expression::with_capacity(steps.len() + lines.len());
    let mut balance: Vec<Expression> = (0..n_nodes).map(|_| Expression::default()).collect();
    let mut fixed_net_withdrawal = vec![0.0f64; n_nodes];

    // Step columns.
    let mut step_var: Vec<Option<Variable>> = Vec::with_capacity(steps.len());
    for (s, &mode) in steps.iter().zip(modes) {
        let sign = match s.side {
            Side::Sell => 1.0,
            Side::Buy => -1.0,
        };
        match mode {
            StepMode::Free => {
                let v = vars.add(variable().min(0.0).max(f(s.quantity)));
                objective.add_mul(-sign * f(s.price), v);
                balance[s.node].add_mul(sign, v);
                step_var.push(Some(v));
            }
            StepMode::Full => {
                fixed_net_withdrawal[s.node] -= sign * f(s.quantity);
                step_var.push(None);
            }
            StepMode::Zero => step_var.push(None),
        }
    }

    // Angles: one reference per island, fixed at 0.
    let mut theta: Vec<Option<Variable>> = vec![None; n_nodes];
    for island in islands {
        for (k, &node) in island.iter().enumerate() {
            let def = if k == 0 {
                variable().min(0.0).max(0.0)
            } else {
                variable()
            };
            theta[node] = Some(vars.add(def));
        }
    }

    // Nodes and lines enter the model in canonical order (by id), like the steps: HiGHS picks
    // among tied vertices and duals by column and row order, so the order of input records must
    // not reach it (pinned by `reordering_nodes_changes_a_degenerate_nodal_price`).
    let node_order = canonical_order(market.node_ids().iter());
    let line_order = canonical_order(lines.iter().map(|l| &l.id));

    // Flows, with soft or hard limits.
    let penalty = market.line_violation_penalty().map(f);
    let mut flow_slot: Vec<Option<Variable>> = vec![None; lines.len()];
    let mut overload_var: Vec<Option<(Variable, Variable)>> = vec![None; lines.len()];
    for &li in &line_order {
        let l = &lines[li];
        let def = match (l.capacity, penalty) {
            (Some(c), None) => variable().min(-f(c)).max(f(c)),
            _ => variable(),
        };
        let fl = vars.add(def);
        balance[l.from].add_mul(-1.0, fl);
        balance[l.to].add_mul(1.0, fl);
        flow_slot[li] = Some(fl);
        overload_var[li] = match (l.capacity, penalty) {
            (Some(_), Some(p)) => {
                let up = vars.add(variable().min(0.0));
                let down = vars.add(variable().min(0.0));
                objective.add_mul(-p, up);
                objective.add_mul(-p, down);
                Some((up, down))
            }
            _ => None,
        };
    }
    let flow_var: Vec<Variable> = flow_slot
        .into_iter()
        .map(|v| v.expect("every line has a flow column"))
        .collect();

    // Rule 7: at every node, a shortfall column (an injection priced at the cap) and a spill
    // column (a withdrawal priced at the floor), both unbounded. A node whose price would rise
    // above the cap takes the shortfall instead, one that would fall below the floor spills: so
    // every nodal price lies in [floor, cap] by construction, and the LP is always feasible.
    let (cap, floor) = (f(market.price_cap()), f(market.price_floor()));
    let mut relax_var: Vec<Option<(Variable, Variable)>> = vec![None; n_nodes];
    for &node in &node_order {
        let short = vars.add(variable().min(0.0));
        let spill = vars.add(variable().min(0.0));
        objective.add_mul(-cap, short);
        objective.add_mul(floor, spill);
        balance[node].add_mul(1.0, short);
        balance[node].add_mul(-1.0, spill);
        relax_var[node] = Some((short, spill));
    }
    let relax_var: Vec<(Variable, Variable)> = relax_var
        .into_iter()
        .map(|v| v.expect("every node has relaxation columns"))
        .collect();

    // Node slacks.
    let mut slack_var: Vec<Option<(Variable, Variable)>> = vec![None; n_nodes];
    if let Some(p) = node_slack_penalty.map(f) {
        for &node in &node_order {
            let slot = &mut slack_var[node];
            let plus = vars.add(variable().min(0.0));
            let minus = vars.add(variable().min(0.0));
            objective.add_mul(-p, plus);
            objective.add_mul(-p, minus);
            balance[node].add_mul(1.0, plus);
            balance[node].add_mul(-1.0, minus);
            *slot = Some((plus, minus));
        }
    }

    // Flexibility: one column per (offer block, matching requirement).
    // Requirements, offers and devices enter in canonical order (by id) too, and an offer's
    // matching requirements in requirement id order (pinned by
    // `reversing_flex_offers_changes_nothing_but_record_order`).
    let reqs = market.flex_requirements();
    let offers = market.flex_offers();
    let req_order = canonical_order(reqs.iter().map(|r| &r.id));
    let offer_order = canonical_order(offers.iter().map(|o| &o.id));
    let mut req_supply: Vec<Expression> = reqs.iter().map(|_| Expression::default()).collect();
    let mut req_block_var: Vec<Vec<Variable>> = vec![Vec::new(); reqs.len()];
    for &ri in &req_order {
        let r = &reqs[ri];
        let mut bv = Vec::with_capacity(r.blocks.len());
        for b in &r.blocks {
            let v = vars.add(variable().min(0.0).max(f(b.quantity)));
            objective.add_mul(f(b.price), v);
            req_supply[ri].add_mul(-1.0, v);
            bv.push(v);
        }
        req_block_var[ri] = bv;
    }
    let mut offer_vars: Vec<Vec<Vec<(usize, Variable)>>> = vec![Vec::new(); offers.len()];
    let mut offer_block_rows: Vec<Constraint> = Vec::new();
    let devices = market.devices();
    let device_order = canonical_order(devices.iter().map(|d| &d.id));
    let mut dev_up: Vec<Expression> = devices.iter().map(|_| Expression::default()).collect();
    let mut dev_down: Vec<Expression> = devices.iter().map(|_| Expression::default()).collect();
    let mut dev_used = vec![(false, false); devices.len()];
    for &oi in &offer_order {
        let o = &offers[oi];
        let matching: Vec<usize> = req_order
            .iter()
            .copied()
            .filter(|&ri| {
                reqs[ri].direction == o.direction && reqs[ri].nodes.binary_search(&o.node).is_ok()
            })
            .collect();
        let mut per_block = Vec::with_capacity(o.blocks.len());
        for b in &o.blocks {
            let mut cols = Vec::with_capacity(matching.len());
            let mut total = Expression::default();
            for &ri in &matching {
                let v = vars.add(variable().min(0.0).max(f(b.quantity)));
                objective.add_mul(-f(b.price), v);
                req_supply[ri].add_mul(1.0, v);
                total.add_mul(1.0, v);
                if let Some(d) = o.device {
                    match o.direction {
                        Direction::Up => {
                            dev_up[d].add_mul(1.0, v);
                            dev_used[d].0 = true;
                        }
                        Direction::Down => {
                            dev_down[d].add_mul(1.0, v);
                            dev_used[d].1 = true;
                        }
                    }
                }
                cols.push((ri, v));
            }
            if cols.len() > 1 {
                offer_block_rows.push(constraint::leq(total, f(b.quantity)));
            }
            per_block.push(cols);
        }
        offer_vars[oi] = per_block;
    }
    // Rule 8: a device is a power range −C..+C around zero; energy on it is netted
    // (`net = sells − buys`) and flexibility is measured from that schedule:
    // `net + up ≤ C` and `−net + down ≤ C`.
    for (s, v) in steps.iter().zip(&step_var) {
        if let (Some(d), Some(v)) = (s.device, v) {
            let sign = match s.side {
                Side::Sell => 1.0,
                Side::Buy => -1.0,
            };
            dev_up[d].add_mul(sign, *v);
            dev_down[d].add_mul(-sign, *v);
            dev_used[d] = (true, true);
        }
    }

    let columns = vars.len();
    let mut problem = vars
        .maximise(objective)
        .using(highs)
        .set_option("solver", "simplex")
        .set_option("parallel", "off")
        .set_option("threads", 1)
        .set_option("random_seed", 0)
        .set_option("primal_feasibility_tolerance", SOLVER_TOLERANCE)
        .set_option("dual_feasibility_tolerance", SOLVER_TOLERANCE);
    // Large LPs solve faster by interior point; crossover still ends on a vertex (a basic
    // solution), so prices are duals of a basis and fills obey the fill rule either way.
    if columns >= IPM_COLUMNS_MIN {
        problem = problem.set_option("solver", "ipm");
    }

    let mut balance_slot: Vec<Option<Expression>> = balance.into_iter().map(Some).collect();
    let mut balance_row: Vec<Option<ConstraintReference>> = vec![None; n_nodes];
    for &node in &node_order {
        let expr = balance_slot[node].take().expect("one balance row per node");
        balance_row[node] =
            Some(problem.add_constraint(constraint::eq(expr, fixed_net_withdrawal[node])));
    }
    let balance_rows: Vec<ConstraintReference> = balance_row
        .into_iter()
        .map(|r| r.expect("every node has a balance row"))
        .collect();
    for &li in &line_order {
        let (l, fl) = (&lines[li], flow_var[li]);
        let b = 1.0 / f(l.x);
        let mut e = Expression::with_capacity(3);
        e.add_mul(1.0, fl);
        if let Some(t) = theta[l.from] {
            e.add_mul(-b, t);
        }
        if let Some(t) = theta[l.to] {
            e.add_mul(b, t);
        }
        problem.add_constraint(constraint::eq(e, 0.0));
    }
    for &li in &line_order {
        let (l, fl, ov) = (&lines[li], flow_var[li], &overload_var[li]);
        if let (Some(c), Some((up, down))) = (l.capacity, ov) {
            problem.add_constraint(constraint::leq(Expression::from(fl) - *up, f(c)));
            problem.add_constraint(constraint::geq(Expression::from(fl) + *down, -f(c)));
        }
    }
    let mut req_slot: Vec<Option<Expression>> = req_supply.into_iter().map(Some).collect();
    let mut req_row: Vec<Option<ConstraintReference>> = vec![None; reqs.len()];
    for &ri in &req_order {
        let e = req_slot[ri].take().expect("one row per requirement");
        req_row[ri] = Some(problem.add_constraint(constraint::eq(e, 0.0)));
    }
    let req_rows: Vec<ConstraintReference> = req_row
        .into_iter()
        .map(|r| r.expect("every requirement has a row"))
        .collect();
    for row in offer_block_rows {
        problem.add_constraint(row);
    }
    let mut dev_rows: Vec<(Option<ConstraintReference>, Option<ConstraintReference>)> =
        vec![(None, None); devices.len()];
    let mut dev_exprs: Vec<Option<(Expression, Expression)>> =
        dev_up.into_iter().zip(dev_down).map(Some).collect();
    for &di in &device_order {
        let (up, down) = dev_exprs[di].take().expect("one pair of rows per device");
        let cap = f(devices[di].capacity);
        let used = dev_used[di];
        let r_up = used
            .0
            .then(|| problem.add_constraint(constraint::leq(up, cap)));
        let r_down = used
            .1
            .then(|| problem.add_constraint(constraint::leq(down, cap)));
        dev_rows[di] = (r_up, r_down);
    }
    let rows = n_nodes + lines.len() + req_rows.len();

    hook.enter(Phase::Solve);
    let mut solution: HighsSolution = problem
        .solve()
        .map_err(|e| LpError::Solver(e.to_string()))?;

    hook.enter(Phase::Extract);
    let mut step_accepted = Vec::with_capacity(steps.len());
    for ((s, &mode), v) in steps.iter().zip(modes).zip(&step_var) {
        step_accepted.push(match (mode, v) {
            (StepMode::Free, Some(v)) => {
                dec(solution.value(*v), QUANTITY_SCALE, "step")?.clamp(Decimal::ZERO, s.quantity)
            }
            (StepMode::Full, _) => s.quantity,
            _ => Decimal::ZERO,
        });
    }
    let flow = flow_var
        .iter()
        .map(|v| dec(solution.value(*v), QUANTITY_SCALE, "flow"))
        .collect::<Result<Vec<_>, _>>()?;
    let overload = overload_var
        .iter()
        .map(|ov| match ov {
            Some((up, down)) => dec(
                solution.value(*up) + solution.value(*down),
                QUANTITY_SCALE,
                "overload",
            ),
            None => Ok(Decimal::ZERO),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let node_slack = slack_var
        .iter()
        .map(|sv| match sv {
            Some((p, m)) => dec(
                solution.value(*p) - solution.value(*m),
                QUANTITY_SCALE,
                "slack",
            ),
            None => Ok(Decimal::ZERO),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut node_shortfall = relax_var
        .iter()
        .map(|&(short, _)| dec(solution.value(short), QUANTITY_SCALE, "shortfall"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut node_spill = relax_var
        .iter()
        .map(|&(_, spill)| dec(solution.value(spill), QUANTITY_SCALE, "spill"))
        .collect::<Result<Vec<_>, _>>()?;
    net_relaxations(
        market,
        steps,
        &mut step_accepted,
        &mut node_shortfall,
        &mut node_spill,
    );
    let flex_offer_accepted = offer_vars
        .iter()
        .map(|blocks| {
            blocks
                .iter()
                .map(|cols| {
                    cols.iter()
                        .map(|&(ri, v)| Ok((ri, dec(solution.value(v), QUANTITY_SCALE, "flex")?)))
                        .collect::<Result<Vec<_>, LpError>>()
                })
                .collect::<Result<Vec<_>, LpError>>()
        })
        .collect::<Result<Vec<_>, LpError>>()?;
    let flex_requirement_accepted = req_block_var
        .iter()
        .map(|bv| {
            bv.iter()
                .map(|&v| dec(solution.value(v), QUANTITY_SCALE, "flex requirement"))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;

    let duals = solution.compute_dual();
    // Maximising with rows written as injection − withdrawal = constant, HiGHS returns the
    // row dual as −price (pinned by `lp_dual_sign_is_minus_price` in the tests).
    let node_price = balance_rows
        .iter()
        .map(|r| dec(-duals.dual(r.clone()), PRICE_SCALE, "nodal price"))
        .collect::<Result<Vec<_>, _>>()?;
    let flex_price = req_rows
        .iter()
        .map(|r| dec(-duals.dual(r.clone()), PRICE_SCALE, "flex price"))
        .collect::<Result<Vec<_>, _>>()?;
    let device_shadow = dev_rows
        .iter()
        .map(|(u, d)| {
            let g = |r: &Option<ConstraintReference>| match r {
                Some(r) => dec(
                    duals.dual(r.clone()).abs(),
                    PRICE_SCALE,
                    "device shadow price",
                ),
                None => Ok(Decimal::ZERO),
            };
            Ok((g(u)?, g(d)?))
        })
        .collect::<Result<Vec<_>, LpError>>()?;
    hook.enter(Phase::Other);

    Ok(LpSolution {
        step_accepted,
        node_price,
        flow,
        overload,
        node_slack,
        node_shortfall,
        node_spill,
        flex_offer_accepted,
        flex_requirement_accepted,
        flex_price,
        device_shadow,
        node_range: vec![PriceRange::default(); n_nodes],
        flex_range: vec![PriceRange::default(); reqs.len()],
        stats: LpStats { columns, rows },
    })
}

/// Nets each node's relaxations against its own orders at the penalty price: a shortfall at a
/// node is first taken as less of that node's demand priced at the cap (must-take buys enter
/// there), and a spill as less of its supply priced at the floor. Both pairs are worth the same
/// and leave the balance unchanged, so the solution stays optimal with the same prices; the rest
/// is what the network could not honour anywhere but by a virtual injection or withdrawal.
/// Steps on a device are never netted: their device's rows tie them to its other orders (less
/// of a must-take sell on a battery that also buys can push the battery past its capacity), so
/// the relaxation stays as reported.
fn net_relaxations(
    market: &Market,
    steps: &[Step],
    accepted: &mut [Decimal],
    shortfall: &mut [Decimal],
    spill: &mut [Decimal],
) {
    for (s, a) in steps.iter().zip(accepted.iter_mut()) {
        let (relax, penalty) = match s.side {
            Side::Buy => (&mut shortfall[s.node], market.price_cap()),
            Side::Sell => (&mut spill[s.node], market.price_floor()),
        };
        if relax.is_zero() || s.price != penalty || a.is_zero() || s.device.is_some() {
            continue;
        }
        let moved = (*relax).min(*a);
        *a -= moved;
        *relax -= moved;
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 6: a solver-independent choice among the optimal prices
// ---------------------------------------------------------------------------------------------

/// Most max-min rounds of the price rule. Each round fixes at least one price; in practice one
/// or two rounds fix them all. Past this many, the prices not yet fixed are those of the last
/// round's vertex and are reported as of unknown uniqueness.
pub const PRICE_RULE_ROUNDS_MAX: usize = 8;

/// Markets with at most this many priced rows (nodes plus flexibility requirements) get every
/// price's exact range over the optimal set: two small LPs per row. Larger ones report a price
/// as unique only when an equality of the optimality conditions pins it.
pub const PRICE_RANGE_ROWS_MAX: usize = 64;

/// Tolerance on the dual of a margin row in the price rule's LPs: a margin whose dual exceeds
/// it is tight at every max-min optimum, so its price is fixed.
const MARGIN_DUAL_MIN: f64 = 1e-7;

/// What the optimality conditions say about one published price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriceRange {
    /// Whether the price is the only one consistent with the optimal dispatch (`None`: not
    /// computed for a market this large, see [`PRICE_RANGE_ROWS_MAX`]).
    pub unique: Option<bool>,
    /// Lowest and highest optimal price, when computed.
    pub range: Option<(Decimal, Decimal)>,
}

/// A term of the optimal price face: a price (node, then requirement) or an auxiliary dual
/// (a line's congestion value `μ`, a device row's shadow price, an offer block row's).
#[derive(Clone, Copy, Debug)]
enum Term {
    Price(usize),
    Aux(usize),
}

/// A face row: `lo ≤ Σ coefficient·term ≤ hi`.
type FaceRow = (Vec<(Term, f64)>, f64, f64);
/// A price's (lowest, highest) value over the face; `None` for an unbounded side.
type Extremes = (Option<f64>, Option<f64>);

/// One inequality of the face: `Σ terms ≥ bound` (`lower`) or `≤ bound`; its slack is its
/// margin.
#[derive(Clone, Debug)]
struct Margin {
    terms: Vec<(Term, f64)>,
    bound: f64,
    lower: bool,
}

/// The set of optimal prices, written out from the optimality conditions of the solved LP with
/// its primal solution fixed (complementary slackness): every optimal dual satisfies them with
/// every optimal primal, so this set does not depend on which optimum HiGHS returned.
struct Face {
    /// Bounds on each price variable (nodes, then requirements) implied by single-row columns.
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// The inequalities whose slacks the price rule maximises.
    margins: Vec<Margin>,
    /// Bounds of each auxiliary dual.
    aux: Vec<(f64, f64)>,
    /// Rows `lo ≤ Σ coefficient·term ≤ hi`.
    rows: Vec<FaceRow>,
    /// Per device: the auxiliaries of its up and down rows, when those rows bind.
    device_aux: Vec<(Option<usize>, Option<usize>)>,
}

/// The interval in which a maximising LP's reduced cost must lie for a column at `value` within
/// `[lo, hi]`: at its lower bound ≤ 0, at its upper bound ≥ 0, strictly between = 0.
fn reduced_cost_interval(value: Decimal, lo: Decimal, hi: Decimal) -> (f64, f64) {
    if lo == hi {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else if value <= lo {
        (f64::NEG_INFINITY, 0.0)
    } else if value >= hi {
        (0.0, f64::INFINITY)
    } else {
        (0.0, 0.0)
    }
}

fn build_face(market: &Market, islands: &[Vec<usize>], steps: &[Step], sol: &LpSolution) -> Face {
    let n_nodes = market.node_ids().len();
    let reqs = market.flex_requirements();
    let n_prices = n_nodes + reqs.len();
    let (cap, floor) = (market.price_cap(), market.price_floor());
    let mut lo = vec![f64::NEG_INFINITY; n_prices];
    let mut hi = vec![f64::INFINITY; n_prices];
    let mut aux: Vec<(f64, f64)> = Vec::new();
    let mut rows: Vec<FaceRow> = Vec::new();
    let tighten = |lo: &mut f64, hi: &mut f64, (dlo, dhi): (f64, f64), price: f64, sign: f64| {
        // The reduced cost is sign·(λ − price) ∈ [dlo, dhi].
        let (a, b) = if sign > 0.0 {
            (price + dlo, price + dhi)
        } else {
            (price - dhi, price - dlo)
        };
        *lo = lo.max(a);
        *hi = hi.min(b);
    };

    // Node relaxations: shortfall (reduced cost λ − cap), spill (reduced cost floor − λ).
    for n in 0..n_nodes {
        let huge = Decimal::MAX;
        let short = reduced_cost_interval(sol.node_shortfall[n], Decimal::ZERO, huge);
        tighten(&mut lo[n], &mut hi[n], short, f(cap), 1.0);
        let spill = reduced_cost_interval(sol.node_spill[n], Decimal::ZERO, huge);
        tighten(&mut lo[n], &mut hi[n], spill, f(floor), -1.0);
    }

    // Devices: a shadow price for each binding row in use (rule 8: `net + up ≤ C`,
    // `−net + down ≤ C`).
    let devices = market.devices();
    let mut usage = vec![(Decimal::ZERO, Decimal::ZERO); devices.len()];
    let mut used = vec![(false, false); devices.len()];
    for (s, &a) in steps.iter().zip(&sol.step_accepted) {
        if let Some(d) = s.device {
            let net = match s.side {
                Side::Sell => a,
                Side::Buy => -a,
            };
            usage[d].0 += net;
            usage[d].1 -= net;
            used[d] = (true, true);
        }
    }
    let offers = market.flex_offers();
    for (o, blocks) in offers.iter().zip(&sol.flex_offer_accepted) {
        if let Some(d) = o.device {
            for cols in blocks {
                for &(_, q) in cols {
                    match o.direction {
                        Direction::Up => (usage[d].0 += q, used[d].0 = true),
                        Direction::Down => (usage[d].1 += q, used[d].1 = true),
                    };
                }
            }
        }
    }
    let mut device_aux = Vec::with_capacity(devices.len());
    for ((dev, u), used) in devices.iter().zip(&usage).zip(&used) {
        let mut one = |in_use: bool, usage: Decimal| {
            (in_use && usage >= dev.capacity).then(|| {
                aux.push((0.0, f64::INFINITY));
                aux.len() - 1
            })
        };
        let up = one(used.0, u.0);
        let down = one(used.1, u.1);
        device_aux.push((up, down));
    }

    // Steps: a single-row column bounds its node's price; a device step is a row.
    for (s, &a) in steps.iter().zip(&sol.step_accepted) {
        let d = reduced_cost_interval(a, Decimal::ZERO, s.quantity);
        // Reduced cost: sell λ − p (− σ_up), buy p − λ (− σ_down).
        let sign = match s.side {
            Side::Sell => 1.0,
            Side::Buy => -1.0,
        };
        // On a device: sign·(λ − p) − sign·(σ_up − σ_down) ∈ d.
        let (up, down) = s.device.map_or((None, None), |dv| device_aux[dv]);
        if up.is_none() && down.is_none() {
            tighten(&mut lo[s.node], &mut hi[s.node], d, f(s.price), sign);
        } else {
            let p = sign * f(s.price);
            let mut row = vec![(Term::Price(s.node), sign)];
            row.extend(up.map(|x| (Term::Aux(x), -sign)));
            row.extend(down.map(|x| (Term::Aux(x), sign)));
            rows.push((row, d.0 + p, d.1 + p));
        }
    }

    // Lines: a congestion value μ per line at (or beyond) its limit; φ = λ_to − λ_from − μ is the
    // dual of its flow row, and every non-reference angle column gives Σ ±b·φ = 0.
    let penalty = market.line_violation_penalty();
    let lines = market.lines();
    let mut mu: Vec<Option<usize>> = vec![None; lines.len()];
    for (li, l) in lines.iter().enumerate() {
        let Some(c) = l.capacity else { continue };
        let flow = sol.flow[li];
        let bounds = match penalty.map(f) {
            None if flow >= c => Some((0.0, f64::INFINITY)),
            None if flow <= -c => Some((f64::NEG_INFINITY, 0.0)),
            None => None,
            Some(p) if flow > c => Some((p, p)),
            Some(p) if flow == c => Some((0.0, p)),
            Some(p) if flow < -c => Some((-p, -p)),
            Some(p) if flow == -c => Some((-p, 0.0)),
            Some(_) => None,
        };
        if let Some(b) = bounds {
            aux.push(b);
            mu[li] = Some(aux.len() - 1);
        }
    }
    let mut is_reference = vec![false; n_nodes];
    for island in islands {
        is_reference[island[0]] = true;
    }
    let mut kvl: Vec<Vec<(Term, f64)>> = vec![Vec::new(); n_nodes];
    for (li, l) in lines.iter().enumerate() {
        let b = 1.0 / f(l.x);
        for (end, coef) in [(l.from, -b), (l.to, b)] {
            if is_reference[end] {
                continue;
            }
            let row = &mut kvl[end];
            row.push((Term::Price(l.to), coef));
            row.push((Term::Price(l.from), -coef));
            if let Some(x) = mu[li] {
                row.push((Term::Aux(x), -coef));
            }
        }
    }
    for row in kvl.into_iter().filter(|r| !r.is_empty()) {
        rows.push((row, 0.0, 0.0));
    }

    // Flexibility: demand blocks bound their requirement's price (reduced cost p − π); each
    // offer column is a row π − σ − β ∈ d + p.
    for (ri, (r, acc)) in reqs.iter().zip(&sol.flex_requirement_accepted).enumerate() {
        for (b, &a) in r.blocks.iter().zip(acc) {
            let d = reduced_cost_interval(a, Decimal::ZERO, b.quantity);
            let k = n_nodes + ri;
            tighten(&mut lo[k], &mut hi[k], d, f(b.price), -1.0);
        }
    }
    for (o, blocks) in offers.iter().zip(&sol.flex_offer_accepted) {
        for (b, cols) in o.blocks.iter().zip(blocks) {
            let total: Decimal = cols.iter().map(|c| c.1).sum();
            let beta = (cols.len() > 1 && total >= b.quantity).then(|| {
                aux.push((0.0, f64::INFINITY));
                aux.len() - 1
            });
            let sigma = o.device.and_then(|dv| match o.direction {
                Direction::Up => device_aux[dv].0,
                Direction::Down => device_aux[dv].1,
            });
            for &(ri, q) in cols {
                let d = reduced_cost_interval(q, Decimal::ZERO, b.quantity);
                let mut row = vec![(Term::Price(n_nodes + ri), 1.0)];
                row.extend(sigma.map(|x| (Term::Aux(x), -1.0)));
                row.extend(beta.map(|x| (Term::Aux(x), -1.0)));
                let p = f(b.price);
                rows.push((row, d.0 + p, d.1 + p));
            }
        }
    }

    // Margins: the published quantities' inequalities, in price units: each price's nearest
    // bid on either side (with the floor and cap), each binding line's congestion value's
    // bounds. Device and offer-block shadow prices are not centred: they are private to one
    // participant and would pull public prices towards their own range.
    let mut margins = Vec::new();
    let mut one_sided = |terms: Vec<(Term, f64)>, lo: f64, hi: f64| {
        if lo < hi {
            if lo.is_finite() {
                margins.push(Margin {
                    terms: terms.clone(),
                    bound: lo,
                    lower: true,
                });
            }
            if hi.is_finite() {
                margins.push(Margin {
                    terms,
                    bound: hi,
                    lower: false,
                });
            }
        }
    };
    for k in (0..n_prices).filter(|&k| lo[k].is_finite() && hi[k].is_finite()) {
        // A price bounded by bids on one side only (a requirement) has its own rule.
        one_sided(vec![(Term::Price(k), 1.0)], lo[k], hi[k]);
    }
    for &i in mu.iter().flatten() {
        let (a, b) = aux[i];
        one_sided(vec![(Term::Aux(i), 1.0)], a, b);
    }
    Face {
        lo,
        hi,
        margins,
        aux,
        rows,
        device_aux,
    }
}

/// What a face LP optimises.
#[derive(Clone, Copy)]
enum Goal<'a> {
    /// Maximise the smallest slack of the margins marked `true` (the others are either fixed,
    /// `Some(slack)`, or free).
    MaxMin(&'a [bool]),
    /// Minimise (`false`) or maximise (`true`) one price.
    Extreme(usize, bool),
}

/// A face LP's solution: prices, auxiliaries, the smallest slack, and for `MaxMin` the margins
/// whose row has a positive dual (tight at every optimum of that LP).
struct FaceSolution {
    prices: Vec<f64>,
    aux: Vec<f64>,
    t: f64,
    tight: Vec<usize>,
}

/// Solves one face LP with the given prices and margin slacks fixed; `None` when the goal is
/// unbounded (an extreme of a price the optimal set does not bound).
fn solve_face(
    face: &Face,
    fixed_price: &[Option<f64>],
    fixed_margin: &[Option<f64>],
    goal: Goal<'_>,
) -> Result<Option<FaceSolution>, LpError> {
    let mut vars = ProblemVariables::new();
    let bounded = |lo: f64, hi: f64| {
        let mut v = variable();
        if lo.is_finite() {
            v = v.min(lo);
        }
        if hi.is_finite() {
            v = v.max(hi);
        }
        v
    };
    let price: Vec<Variable> = (0..face.lo.len())
        .map(|k| match fixed_price[k] {
            Some(x) => vars.add(variable().min(x).max(x)),
            None => vars.add(bounded(face.lo[k], face.hi[k])),
        })
        .collect();
    let aux: Vec<Variable> = face
        .aux
        .iter()
        .map(|&(lo, hi)| vars.add(bounded(lo, hi)))
        .collect();
    let t = vars.add(variable());
    let (objective, maximise): (Expression, bool) = match goal {
        Goal::MaxMin(_) => (t.into(), true),
        Goal::Extreme(k, up) => (price[k].into(), up),
    };
    let problem = if maximise {
        vars.maximise(objective)
    } else {
        vars.minimise(objective)
    };
    // HiGHS' default tolerances (1e-7): the face is written from values rounded at six
    // decimals, and its fixed prices carry the previous round's floating-point noise.
    let mut problem = problem
        .using(highs)
        .set_option("solver", "simplex")
        .set_option("parallel", "off")
        .set_option("threads", 1)
        .set_option("random_seed", 0);
    let expr = |terms: &[(Term, f64)]| {
        let mut e = Expression::with_capacity(terms.len() + 1);
        for &(x, c) in terms {
            e.add_mul(
                c,
                match x {
                    Term::Price(k) => price[k],
                    Term::Aux(i) => aux[i],
                },
            );
        }
        e
    };
    for (terms, lo, hi) in &face.rows {
        if lo == hi {
            problem.add_constraint(constraint::eq(expr(terms), *lo));
        } else {
            if lo.is_finite() {
                problem.add_constraint(constraint::geq(expr(terms), *lo));
            }
            if hi.is_finite() {
                problem.add_constraint(constraint::leq(expr(terms), *hi));
            }
        }
    }
    let mut margin_rows: Vec<(usize, ConstraintReference)> = Vec::new();
    for (i, m) in face.margins.iter().enumerate() {
        // Slack: Σ − bound (lower) or bound − Σ (upper).
        let sign = if m.lower { 1.0 } else { -1.0 };
        let slack = expr(&m.terms) * sign;
        let rhs = sign * m.bound;
        if let Some(v) = fixed_margin[i] {
            // An earlier round's max-min value: the margin stays at least there (an
            // inequality, so that the rounds' floating-point noise cannot make it infeasible).
            problem.add_constraint(constraint::geq(slack.clone(), rhs + v));
        }
        if matches!(goal, Goal::MaxMin(active) if active[i]) {
            margin_rows.push((i, problem.add_constraint(constraint::geq(slack - t, rhs))));
        }
    }
    let mut solution = match problem.solve() {
        Ok(s) => s,
        Err(good_lp::ResolutionError::Unbounded) => return Ok(None),
        Err(e) => return Err(LpError::Solver(format!("price rule: {e}"))),
    };
    let prices = price.iter().map(|&v| solution.value(v)).collect();
    let aux_values = aux.iter().map(|&v| solution.value(v)).collect();
    let t_value = solution.value(t);
    let duals = solution.compute_dual();
    let tight = margin_rows
        .into_iter()
        .filter(|(_, r)| duals.dual(r.clone()).abs() > MARGIN_DUAL_MIN)
        .map(|(i, _)| i)
        .collect();
    Ok(Some(FaceSolution {
        prices,
        aux: aux_values,
        t: t_value,
        tight,
    }))
}

/// Rule 6: replaces the solver's vertex prices by the published ones and says per price
/// whether it was unique (see `docs/MARKET.md`). The published prices are the
/// **lexicographic max-min** point of the set of optimal prices: with the dispatch fixed, the
/// optimal prices are those satisfying the optimality conditions, a polytope. Its margins are
/// inequalities in price units: each node's nearest bid on either side (the floor and cap
/// included), each requirement's demand blocks, each binding line's congestion value ≥ 0 (and
/// ≤ the penalty when soft). The smallest margin is maximised; the margins tight at every
/// optimum of that LP are fixed there, and the rest maximised again, until every price is
/// fixed. On one node this is the midpoint of the price range (EUPHEMIA's rule).
/// It depends on the optimal set only, never on the vertex HiGHS returns.
pub(crate) fn publish_prices(
    market: &Market,
    islands: &[Vec<usize>],
    steps: &[Step],
    sol: &mut LpSolution,
) -> Result<(), LpError> {
    let n_nodes = market.node_ids().len();
    let face = build_face(market, islands, steps, sol);
    let n_prices = face.lo.len();
    let n_margins = face.margins.len();
    let mut fixed: Vec<Option<f64>> = (0..n_prices)
        .map(|k| (face.lo[k] == face.hi[k]).then_some(face.lo[k]))
        .collect();
    let mut fixed_margin: Vec<Option<f64>> = vec![None; n_margins];
    let pinned: Vec<bool> = fixed.iter().map(Option::is_some).collect();
    let mut ranges: Vec<PriceRange> = fixed
        .iter()
        .map(|x| match x {
            Some(x) => dec(*x, PRICE_SCALE, "price range").map(|v| PriceRange {
                unique: Some(true),
                range: Some((v, v)),
            }),
            None => Ok(PriceRange::default()),
        })
        .collect::<Result<_, _>>()?;
    if pinned.iter().all(|&p| p) {
        // The optimality conditions pin every price: HiGHS' duals are the only optimal ones.
        split(sol, ranges, n_nodes);
        return Ok(());
    }
    if face.rows.is_empty() && face.aux.is_empty() {
        // No network, device or flexibility couplings (one node, say): every price is free in
        // its own interval, and the max-min point is each interval's midpoint (a one-sided
        // requirement's finite end). No LP needed.
        for k in (0..n_prices).filter(|&k| !pinned[k]) {
            let (a, b) = (face.lo[k], face.hi[k]);
            let x = match (a.is_finite(), b.is_finite()) {
                (true, true) => (a + b) / 2.0,
                (true, false) => a,
                (false, true) => b,
                (false, false) => {
                    return Err(LpError::Solver("price rule: an unbounded price".into()))
                }
            };
            let p = dec(x, PRICE_SCALE, "published price")?;
            ranges[k] = if a.is_finite() && b.is_finite() {
                let (a, b) = (
                    dec(a, PRICE_SCALE, "price range")?,
                    dec(b, PRICE_SCALE, "price range")?,
                );
                PriceRange {
                    unique: Some(a == b),
                    range: Some((a, b)),
                }
            } else {
                PriceRange {
                    unique: Some(false),
                    range: None,
                }
            };
            if k < n_nodes {
                sol.node_price[k] = p;
            } else {
                sol.flex_price[k - n_nodes] = p;
            }
        }
        split(sol, ranges, n_nodes);
        return Ok(());
    }
    let small = n_prices <= PRICE_RANGE_ROWS_MAX;
    let extreme = |fixed: &[Option<f64>], fm: &[Option<f64>], k: usize, up: bool| {
        solve_face(&face, fixed, fm, Goal::Extreme(k, up)).map(|s| s.map(|s| s.prices[k]))
    };
    // Fixes every price whose range on the current face is one point (small markets only);
    // returns the ranges.
    let pin = |fixed: &mut Vec<Option<f64>>,
               fm: &[Option<f64>]|
     -> Result<Vec<Option<Extremes>>, LpError> {
        let mut out = vec![None; n_prices];
        for k in 0..n_prices {
            if fixed[k].is_some() {
                continue;
            }
            let low = extreme(fixed, fm, k, false)?;
            let high = extreme(fixed, fm, k, true)?;
            if let (Some(a), Some(b)) = (low, high) {
                if round_at(
                    Decimal::from_f64_retain(b - a).unwrap_or(Decimal::ONE),
                    PRICE_SCALE,
                )
                .is_zero()
                {
                    fixed[k] = Some(a);
                }
            }
            out[k] = Some((low, high));
        }
        Ok(out)
    };

    // Exact ranges over the whole optimal set, where cheap.
    if small {
        for (k, r) in pin(&mut fixed, &fixed_margin)?.into_iter().enumerate() {
            if let Some((low, high)) = r {
                ranges[k] = match (low, high) {
                    (Some(a), Some(b)) => {
                        let (a, b) = (
                            dec(a, PRICE_SCALE, "price range")?,
                            dec(b, PRICE_SCALE, "price range")?,
                        );
                        PriceRange {
                            unique: Some(a == b),
                            range: Some((a, b)),
                        }
                    }
                    _ => PriceRange {
                        unique: Some(false),
                        range: None,
                    },
                };
            }
        }
    }

    // Every price with a margin on both sides (all nodal prices, requirements with demand
    // on both sides of their price) takes part in the max-min rounds.
    let two_sided: Vec<bool> = (0..n_prices)
        .map(|k| face.lo[k].is_finite() && face.hi[k].is_finite())
        .collect();
    // A price is settled once fixed or once one of its own margins is tight at a round's optimum.
    let mut settled: Vec<bool> = fixed.iter().map(Option::is_some).collect();
    let mut done = vec![false; n_margins];
    for _round in 0..PRICE_RULE_ROUNDS_MAX {
        if (0..n_prices).all(|k| settled[k] || !two_sided[k]) {
            break;
        }
        // Margins still free: not fixed, and not of a settled price (a constant).
        let active: Vec<bool> = face
            .margins
            .iter()
            .zip(&done)
            .map(|(m, &d)| !d && !matches!(m.terms[..], [(Term::Price(k), _)] if settled[k]))
            .collect();
        if !active.iter().any(|&a| a) {
            break;
        }
        let s = solve_face(&face, &fixed, &fixed_margin, Goal::MaxMin(&active))?
            .ok_or_else(|| LpError::Solver("price rule: the max-min LP is unbounded".into()))?;
        if s.tight.is_empty() {
            return Err(LpError::Solver(
                "price rule: no margin is tight at the max-min optimum".into(),
            ));
        }
        // Every margin still in play keeps at least this round's value from now on.
        for (i, &a) in active.iter().enumerate() {
            if a {
                fixed_margin[i] = Some(s.t);
            }
        }
        for &i in &s.tight {
            done[i] = true;
            if let [(Term::Price(k), _)] = face.margins[i].terms[..] {
                settled[k] = true;
            }
        }
        if small {
            pin(&mut fixed, &fixed_margin)?;
            for (k, x) in fixed.iter().enumerate() {
                settled[k] |= x.is_some();
            }
        }
    }

    // A requirement whose demand bounds its price on one side only (all its demand accepted,
    // or all rejected) is published at the end of its optimal range on that side, given the
    // prices above: its marginal demand block's price when nothing else binds it.
    for k in n_nodes..n_prices {
        if fixed[k].is_some() || two_sided[k] {
            continue;
        }
        let up = face.hi[k].is_finite();
        match extreme(&fixed, &fixed_margin, k, up)? {
            Some(x) => fixed[k] = Some(x),
            None => {
                return Err(LpError::Solver(format!(
                    "price rule: requirement {} has an unbounded price",
                    k - n_nodes
                )))
            }
        }
    }

    // The published point: the rounds' constraints pin every settled price; one more LP reads
    // it, with auxiliaries (device shadow prices) consistent with it.
    let s = solve_face(&face, &fixed, &fixed_margin, Goal::Extreme(0, false))?
        .ok_or_else(|| LpError::Solver("price rule: the published point is unbounded".into()))?;
    for (k, x) in fixed.iter().enumerate() {
        let p = dec(x.unwrap_or(s.prices[k]), PRICE_SCALE, "published price")?;
        if k < n_nodes {
            sol.node_price[k] = p;
        } else {
            sol.flex_price[k - n_nodes] = p;
        }
    }
    for (d, (up, down)) in face.device_aux.iter().enumerate() {
        let g = |x: &Option<usize>| match x {
            Some(i) => dec(s.aux[*i], PRICE_SCALE, "device shadow price"),
            None => Ok(Decimal::ZERO),
        };
        sol.device_shadow[d] = (g(up)?, g(down)?);
    }
    split(sol, ranges, n_nodes);
    Ok(())
}

fn split(sol: &mut LpSolution, mut ranges: Vec<PriceRange>, n_nodes: usize) {
    sol.flex_range = ranges.split_off(n_nodes);
    sol.node_range = ranges;
}
