//! The linear program, and the only module that touches `f64`.
//!
//! Formulation (see `docs/MARKET.md`): maximise
//! `Σ buy price·q − Σ sell price·q + Σ requirement price·z − Σ offer price·y
//!  − line penalty·overload − node penalty·|node slack|`
//! subject to, at every node, `injection − withdrawal + inflow − outflow = fixed net withdrawal`
//! (the balance row; its dual is `−price` because we maximise), DC flow
//! `f − (θ_from − θ_to)/x = 0` with one angle fixed at 0 per island, `|f| ≤ capacity`
//! (or `≤ capacity + overload` when limits are soft), device capacity couplings, and for each
//! flexibility requirement `Σ offers − Σ demand blocks = 0` (dual `−flex price`).
//!
//! **Rounding rule** (the one rule by which solver output becomes money-grade decimals): every
//! value HiGHS returns is converted from its exact binary value (`Decimal::from_f64_retain`) and
//! rounded half to even at its field's fixed scale by [`crate::units::round_at`]; `-0` becomes
//! `0`. Quantities use [`QUANTITY_SCALE`], prices [`PRICE_SCALE`].

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
    /// Per flex offer, per block, per requirement index: accepted quantity.
    pub(crate) flex_offer_accepted: Vec<Vec<Vec<(usize, Decimal)>>>,
    /// Per requirement, per block: accepted quantity.
    pub(crate) flex_requirement_accepted: Vec<Vec<Decimal>>,
    /// Per requirement: its price.
    pub(crate) flex_price: Vec<Decimal>,
    /// Per device: shadow price of its (sell + up, buy + down) capacity rows, ≥ 0.
    pub(crate) device_shadow: Vec<(Decimal, Decimal)>,
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

fn dec(x: f64, scale: u32, what: &'static str) -> Result<Decimal, LpError> {
    let d = Decimal::from_f64_retain(x).ok_or(LpError::NonFinite(what))?;
    Ok(round_at(d, scale))
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
    for (s, v) in steps.iter().zip(&step_var) {
        if let (Some(d), Some(v)) = (s.device, v) {
            match s.side {
                Side::Sell => {
                    dev_up[d].add_mul(1.0, *v);
                    dev_used[d].0 = true;
                }
                Side::Buy => {
                    dev_down[d].add_mul(1.0, *v);
                    dev_used[d].1 = true;
                }
            }
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
        flex_offer_accepted,
        flex_requirement_accepted,
        flex_price,
        device_shadow,
        stats: LpStats { columns, rows },
    })
}
