//! MATPOWER case files → study markets.
//!
//! Mapping (from `nodal-auction-v1`): each bus is a node (id = bus number); each in-service
//! generator with Pmax > 0 is one sell block of quantity Pmax priced at the marginal cost of its
//! gencost curve at Pmax/2 (Pmin ignored); each bus load Pd > 0 is one buy block at
//! [`LOAD_PRICE`]; each in-service branch is a line with its x and capacity rateA (0 =
//! unlimited). Resistance, shunts, taps and phase shifts are ignored. Ids: generators `g<k>`,
//! loads `d<bus>`, lines `l<k>` with k the 1-based row. Prices are rounded to the price scale.
//!
//! The few MATLAB statements that real case files apply after the data (case33bw converts r/x
//! from ohms to per unit and Pd/Qd from kW to MW) are recognised and applied; any other
//! statement that assigns into `mpc` is refused rather than silently ignored.

use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;

use crate::model::{BlockSpec, LineSpec, MarketSpec, NodeSpec, OrderSpec, Side};
use crate::units::{round_at, PRICE_SCALE, QUANTITY_SCALE};

/// Price of every imported load block, $/MWh.
pub const LOAD_PRICE: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

/// Why a case could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MatpowerError {
    /// A matrix is missing.
    #[error("case has no mpc.{0} matrix")]
    Missing(&'static str),
    /// A row or value is malformed.
    #[error("mpc.{matrix} row {row}: {reason}")]
    Row {
        /// Matrix name.
        matrix: String,
        /// 1-based row.
        row: usize,
        /// What is wrong.
        reason: String,
    },
    /// A statement the importer does not understand changes the data.
    #[error("line {line}: unsupported statement {text:?}")]
    Unsupported {
        /// 1-based line number.
        line: usize,
        /// The statement.
        text: String,
    },
}

struct Case {
    base_mva: f64,
    bus: Vec<Vec<f64>>,
    gen: Vec<Vec<f64>>,
    gencost: Vec<Vec<f64>>,
    branch: Vec<Vec<f64>>,
}

/// Parses a case and maps it to a study market.
pub fn import(text: &str, name: &str) -> Result<MarketSpec, MatpowerError> {
    let case = parse(text)?;
    let col = |m: &str, rows: &Vec<Vec<f64>>, r: usize, c: usize| -> Result<f64, MatpowerError> {
        rows[r].get(c).copied().ok_or_else(|| MatpowerError::Row {
            matrix: m.into(),
            row: r + 1,
            reason: format!("has no column {}", c + 1),
        })
    };
    let d = |x: f64, scale: u32| round_at(Decimal::from_f64(x).unwrap_or_default(), scale);

    let mut nodes = Vec::with_capacity(case.bus.len());
    let mut loads = Vec::new();
    for r in 0..case.bus.len() {
        let id = fmt_id(col("bus", &case.bus, r, 0)?);
        let pd = col("bus", &case.bus, r, 2)?;
        if pd > 0.0 {
            loads.push(OrderSpec {
                id: format!("d{id}"),
                participant: None,
                node: id.clone(),
                side: Side::Buy,
                blocks: vec![BlockSpec {
                    quantity: d(pd, QUANTITY_SCALE),
                    price: Some(LOAD_PRICE),
                }],
                device: None,
            });
        }
        nodes.push(NodeSpec { id });
    }
    let mut gens = Vec::new();
    for r in 0..case.gen.len() {
        let status = col("gen", &case.gen, r, 7)?;
        let pmax = col("gen", &case.gen, r, 8)?;
        if status <= 0.0 || pmax <= 0.0 {
            continue;
        }
        let cost = case.gencost.get(r).ok_or_else(|| MatpowerError::Row {
            matrix: "gencost".into(),
            row: r + 1,
            reason: "missing for this generator".into(),
        })?;
        let price = marginal_cost(cost, pmax / 2.0).ok_or_else(|| MatpowerError::Row {
            matrix: "gencost".into(),
            row: r + 1,
            reason: "unsupported cost model".into(),
        })?;
        gens.push(OrderSpec {
            id: format!("g{}", r + 1),
            participant: None,
            node: fmt_id(col("gen", &case.gen, r, 0)?),
            side: Side::Sell,
            blocks: vec![BlockSpec {
                quantity: d(pmax, QUANTITY_SCALE),
                price: Some(d(price, PRICE_SCALE)),
            }],
            device: None,
        });
    }
    let mut lines = Vec::with_capacity(case.branch.len());
    for r in 0..case.branch.len() {
        if col("branch", &case.branch, r, 10)? <= 0.0 {
            continue;
        }
        let x = col("branch", &case.branch, r, 3)?;
        if x == 0.0 {
            return Err(MatpowerError::Row {
                matrix: "branch".into(),
                row: r + 1,
                reason: "reactance x is zero".into(),
            });
        }
        let rate = col("branch", &case.branch, r, 5)?;
        lines.push(LineSpec {
            id: format!("l{}", r + 1),
            from: fmt_id(col("branch", &case.branch, r, 0)?),
            to: fmt_id(col("branch", &case.branch, r, 1)?),
            x: Decimal::from_f64(x)
                .unwrap_or_default()
                .round_dp(12)
                .normalize(),
            capacity: (rate > 0.0).then(|| d(rate, QUANTITY_SCALE)),
        });
    }
    let mut all = gens;
    all.extend(loads);
    Ok(MarketSpec {
        name: name.to_string(),
        interval_minutes: 60,
        price_floor: Decimal::ZERO,
        price_cap: LOAD_PRICE,
        line_violation_penalty: None,
        nodes,
        lines,
        grid_connections: Vec::new(),
        devices: Vec::new(),
        orders: all,
        flex_requirements: Vec::new(),
        flex_offers: Vec::new(),
    })
}

fn fmt_id(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Marginal cost of a gencost row at output `p` (MW).
fn marginal_cost(row: &[f64], p: f64) -> Option<f64> {
    let model = *row.first()?;
    let n = *row.get(3)? as usize;
    let coeffs = row.get(4..4 + if model == 1.0 { 2 * n } else { n })?;
    if model == 2.0 {
        // c(n-1) … c0: d/dp Σ c_k p^k = Σ k c_k p^(k-1).
        let mut mc = 0.0;
        for (i, &c) in coeffs.iter().enumerate() {
            let k = (n - 1 - i) as i32;
            if k >= 1 {
                mc += f64::from(k) * c * p.powi(k - 1);
            }
        }
        Some(mc)
    } else if model == 1.0 {
        let pts: Vec<(f64, f64)> = coeffs.chunks(2).map(|c| (c[0], c[1])).collect();
        let seg = pts
            .windows(2)
            .find(|w| p <= w[1].0)
            .or_else(|| pts.windows(2).last())?;
        let dx = seg[1].0 - seg[0].0;
        (dx != 0.0).then(|| (seg[1].1 - seg[0].1) / dx)
    } else {
        None
    }
}

fn parse(text: &str) -> Result<Case, MatpowerError> {
    let mut base_mva = 100.0;
    let mut mats: std::collections::HashMap<&'static str, Vec<Vec<f64>>> = Default::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut pd_in_kw = false;
    let mut branch_in_ohms = false;
    while i < lines.len() {
        let raw = lines[i];
        let line = strip_comment(raw).trim();
        i += 1;
        if line.is_empty() || line.starts_with("function") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("mpc.baseMVA") {
            let v = rest
                .trim_start_matches([' ', '='])
                .trim_end_matches(';')
                .trim();
            base_mva = v.parse().map_err(|_| MatpowerError::Unsupported {
                line: i,
                text: line.into(),
            })?;
            continue;
        }
        let matrix = ["bus", "gencost", "gen", "branch"].into_iter().find(|m| {
            line.strip_prefix("mpc.")
                .and_then(|r| r.strip_prefix(m))
                .is_some_and(|r| r.trim_start().starts_with('=') && r.contains('['))
        });
        if let Some(m) = matrix {
            let mut rows = Vec::new();
            let after = &line[line.find('[').unwrap_or(0) + 1..];
            let mut buf = after.to_string();
            loop {
                let done = buf.contains(']');
                let body = buf.split(']').next().unwrap_or("").to_string();
                for row in body.split(';') {
                    let vals: Vec<&str> = row.split_whitespace().collect();
                    if vals.is_empty() {
                        continue;
                    }
                    let parsed: Result<Vec<f64>, _> = vals
                        .iter()
                        .map(|v| v.trim_end_matches(',').parse::<f64>())
                        .collect();
                    rows.push(parsed.map_err(|_| MatpowerError::Row {
                        matrix: m.into(),
                        row: rows.len() + 1,
                        reason: format!("not numbers: {row:?}"),
                    })?);
                }
                if done || i >= lines.len() {
                    break;
                }
                buf = strip_comment(lines[i]).to_string();
                i += 1;
            }
            mats.insert(m, rows);
            continue;
        }
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.starts_with("mpc.bus(:,[PD,QD])=mpc.bus(:,[PD,QD])/1e3") {
            pd_in_kw = true;
        } else if compact
            .starts_with("mpc.branch(:,[BR_RBR_X])=mpc.branch(:,[BR_RBR_X])/(Vbase^2/Sbase)")
        {
            branch_in_ohms = true;
        } else if compact.starts_with("mpc.")
            && compact.contains('=')
            && !compact.starts_with("mpc.version")
        {
            if compact.starts_with("mpc.areas") || compact.starts_with("mpc.bus_name") {
                continue;
            }
            return Err(MatpowerError::Unsupported {
                line: i,
                text: line.into(),
            });
        }
    }
    let take = |mats: &mut std::collections::HashMap<&'static str, Vec<Vec<f64>>>, m| {
        mats.remove(m).ok_or(MatpowerError::Missing(m))
    };
    let mut case = Case {
        base_mva,
        bus: take(&mut mats, "bus")?,
        gen: take(&mut mats, "gen")?,
        gencost: take(&mut mats, "gencost")?,
        branch: take(&mut mats, "branch")?,
    };
    if pd_in_kw {
        for b in &mut case.bus {
            if b.len() > 3 {
                b[2] /= 1e3;
                b[3] /= 1e3;
            }
        }
    }
    if branch_in_ohms {
        let vbase = case
            .bus
            .first()
            .and_then(|b| b.get(9))
            .copied()
            .unwrap_or(1.0)
            * 1e3;
        let sbase = case.base_mva * 1e6;
        for br in &mut case.branch {
            if br.len() > 3 {
                br[2] /= vbase * vbase / sbase;
                br[3] /= vbase * vbase / sbase;
            }
        }
    }
    Ok(case)
}

fn strip_comment(line: &str) -> &str {
    match line.find('%') {
        Some(k) => &line[..k],
        None => line,
    }
}
