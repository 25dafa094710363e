//! MATPOWER case files → study markets.
//!
//! Mapping (from `nodal-auction-v1`): each bus is a node (id = bus number); each in-service
//! generator with Pmax > 0 is one sell block of quantity Pmax priced at the marginal cost of its
//! gencost curve at Pmax/2 (Pmin ignored); each bus load Pd > 0 is one buy block at
//! [`LOAD_PRICE`]; each in-service branch is a line with its x and capacity rateA (0 =
//! unlimited). Resistance, shunts, taps and phase shifts are ignored. Ids: generators `g<k>`,
//! loads `d<bus>`, lines `l<k>` with k the 1-based row. Prices are rounded to the price scale.
//!
//! Numbers are read as the exact decimals their text denotes and computed with in decimals (the
//! marginal costs, the unit conversions): no binary floating point. An entry the importer reads
//! that has no exact decimal — `NaN`, `Inf`, `1e400` — is refused naming its matrix, row and
//! column.
//!
//! The few MATLAB statements that real case files apply after the data (case33bw converts r/x
//! from ohms to per unit and Pd/Qd from kW to MW) are recognised and applied; any other
//! statement that assigns into `mpc` is refused rather than silently ignored.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::model::{BlockSpec, LineSpec, MarketSpec, NodeSpec, OrderSpec, Side};
use crate::units::{round_at, PRICE_SCALE, QUANTITY_SCALE};

/// Price of every imported load block, $/MWh.
pub const LOAD_PRICE: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// Most coefficients (polynomial) or points (piecewise linear) of one gencost curve.
pub const GENCOST_TERMS_MAX: usize = 64;

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
    /// A number the importer reads is not finite or not representable as an exact decimal.
    #[error(
        "mpc.{matrix} row {row} column {column}: {text:?} is not a finite number within ±7.9e28"
    )]
    NotFinite {
        /// Matrix name.
        matrix: String,
        /// 1-based row.
        row: usize,
        /// 1-based column.
        column: usize,
        /// The number as written.
        text: String,
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

/// One matrix entry: the exact decimal it denotes, or, for a number with no exact decimal
/// (`NaN`, `Inf`, `1e400`), its text, refused if the importer ever reads it.
#[derive(Clone, Debug)]
enum Cell {
    Num(Decimal),
    NotFinite(String),
}

type Matrix = Vec<Vec<Cell>>;

struct Case {
    base_mva: Decimal,
    bus: Matrix,
    gen: Matrix,
    gencost: Matrix,
    branch: Matrix,
}

/// Reads entry (`r`, `c`) (0-based) of matrix `m`, refusing a missing or non-finite one.
fn col(m: &str, rows: &Matrix, r: usize, c: usize) -> Result<Decimal, MatpowerError> {
    match rows[r].get(c) {
        None => Err(MatpowerError::Row {
            matrix: m.into(),
            row: r + 1,
            reason: format!("has no column {}", c + 1),
        }),
        Some(Cell::Num(d)) => Ok(*d),
        Some(Cell::NotFinite(text)) => Err(MatpowerError::NotFinite {
            matrix: m.into(),
            row: r + 1,
            column: c + 1,
            text: text.clone(),
        }),
    }
}

fn overflow(m: &str, r: usize, what: &str) -> MatpowerError {
    MatpowerError::Row {
        matrix: m.into(),
        row: r + 1,
        reason: format!("{what} overflows a decimal"),
    }
}

/// Parses a case and maps it to a study market.
pub fn import(text: &str, name: &str) -> Result<MarketSpec, MatpowerError> {
    let case = parse(text)?;
    let d = |x: Decimal, scale: u32| round_at(x, scale);

    let mut nodes = Vec::with_capacity(case.bus.len());
    let mut loads = Vec::new();
    for r in 0..case.bus.len() {
        let id = fmt_id(col("bus", &case.bus, r, 0)?);
        let pd = col("bus", &case.bus, r, 2)?;
        if pd > Decimal::ZERO {
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
        if status <= Decimal::ZERO || pmax <= Decimal::ZERO {
            continue;
        }
        if r >= case.gencost.len() {
            return Err(MatpowerError::Row {
                matrix: "gencost".into(),
                row: r + 1,
                reason: "missing for this generator".into(),
            });
        }
        let price = marginal_cost(&case.gencost, r, pmax / Decimal::TWO)?;
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
        if col("branch", &case.branch, r, 10)? <= Decimal::ZERO {
            continue;
        }
        let x = col("branch", &case.branch, r, 3)?;
        if x.is_zero() {
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
            x: x.round_dp(12).normalize(),
            capacity: (rate > Decimal::ZERO).then(|| d(rate, QUANTITY_SCALE)),
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

/// A bus number as an id: integers without a decimal point, others as their shortest text.
fn fmt_id(x: Decimal) -> String {
    if x.fract().is_zero() {
        x.trunc().normalize().to_string()
    } else {
        x.normalize().to_string()
    }
}

/// Marginal cost of gencost row `r` at output `p` (MW), in exact decimals.
fn marginal_cost(gencost: &Matrix, r: usize, p: Decimal) -> Result<Decimal, MatpowerError> {
    const M: &str = "gencost";
    let unsupported = || MatpowerError::Row {
        matrix: M.into(),
        row: r + 1,
        reason: "unsupported cost model".into(),
    };
    let model = col(M, gencost, r, 0)?;
    let n = col(M, gencost, r, 3)?;
    let n = n
        .fract()
        .is_zero()
        .then(|| n.to_usize())
        .flatten()
        .filter(|&n| n <= GENCOST_TERMS_MAX)
        .ok_or_else(|| MatpowerError::Row {
            matrix: M.into(),
            row: r + 1,
            reason: format!("NCOST {n} is not a whole number from 0 to {GENCOST_TERMS_MAX}"),
        })?;
    let two = Decimal::TWO;
    let width = if model == Decimal::ONE { 2 * n } else { n };
    if gencost[r].len() < 4 + width {
        return Err(unsupported());
    }
    let coeffs = (4..4 + width)
        .map(|c| col(M, gencost, r, c))
        .collect::<Result<Vec<_>, _>>()?;
    if model == two {
        // c(n-1) … c0: d/dp Σ c_k p^k = Σ k c_k p^(k-1).
        let mut mc = Decimal::ZERO;
        for (i, &c) in coeffs.iter().enumerate() {
            let k = n - 1 - i;
            if k >= 1 {
                let mut term = Decimal::from(k)
                    .checked_mul(c)
                    .ok_or_else(|| overflow(M, r, "the marginal cost"))?;
                for _ in 1..k {
                    term = term
                        .checked_mul(p)
                        .ok_or_else(|| overflow(M, r, "the marginal cost"))?;
                }
                mc = mc
                    .checked_add(term)
                    .ok_or_else(|| overflow(M, r, "the marginal cost"))?;
            }
        }
        Ok(mc)
    } else if model == Decimal::ONE {
        let pts: Vec<(Decimal, Decimal)> = coeffs.chunks(2).map(|c| (c[0], c[1])).collect();
        let seg = pts
            .windows(2)
            .find(|w| p <= w[1].0)
            .or_else(|| pts.windows(2).last())
            .ok_or_else(unsupported)?;
        let dx = seg[1].0 - seg[0].0;
        if dx.is_zero() {
            return Err(unsupported());
        }
        (seg[1].1 - seg[0].1)
            .checked_div(dx)
            .ok_or_else(|| overflow(M, r, "the marginal cost"))
    } else {
        Err(unsupported())
    }
}

/// Whether `t` is written as a number: `[+-]digits[.digits][e[+-]digits]` (either digit run
/// may be empty, not both), or `Inf`/`NaN` in any case with an optional sign.
fn is_number_text(t: &str) -> bool {
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("nan") {
        return true;
    }
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(k) => (&t[..k], Some(&t[k + 1..])),
        None => (t, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// Parses a number as the exact decimal its text denotes; `None` when it has none (`NaN`,
/// `Inf`, magnitudes beyond `Decimal`'s range, or more than 28 places after an exponent).
fn exact_decimal(t: &str) -> Option<Decimal> {
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.contains(['e', 'E']) {
        let t = t.replace('E', "e").replace("e+", "e");
        Decimal::from_scientific(&t).ok()
    } else {
        t.parse::<Decimal>().ok()
    }
}

fn cell(t: &str) -> Option<Cell> {
    if !is_number_text(t) {
        return None;
    }
    Some(match exact_decimal(t) {
        Some(d) => Cell::Num(d),
        None => Cell::NotFinite(t.to_string()),
    })
}

fn parse(text: &str) -> Result<Case, MatpowerError> {
    let mut base_mva = Decimal::ONE_HUNDRED;
    let mut mats: std::collections::HashMap<&'static str, Matrix> = Default::default();
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
            base_mva = match cell(v) {
                Some(Cell::Num(d)) if d > Decimal::ZERO => d,
                _ => {
                    return Err(MatpowerError::Unsupported {
                        line: i,
                        text: line.into(),
                    })
                }
            };
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
                    let parsed: Option<Vec<Cell>> =
                        vals.iter().map(|v| cell(v.trim_end_matches(','))).collect();
                    rows.push(parsed.ok_or_else(|| MatpowerError::Row {
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
    let take = |mats: &mut std::collections::HashMap<&'static str, Matrix>, m| {
        mats.remove(m).ok_or(MatpowerError::Missing(m))
    };
    let mut case = Case {
        base_mva,
        bus: take(&mut mats, "bus")?,
        gen: take(&mut mats, "gen")?,
        gencost: take(&mut mats, "gencost")?,
        branch: take(&mut mats, "branch")?,
    };
    let thousand = Decimal::ONE_THOUSAND;
    // A non-finite entry stays non-finite through the conversions (refused if read).
    if pd_in_kw {
        for b in &mut case.bus {
            if b.len() > 3 {
                for c in [2, 3] {
                    if let Cell::Num(v) = b[c] {
                        b[c] = Cell::Num(v / thousand);
                    }
                }
            }
        }
    }
    if branch_in_ohms {
        let vbase = if case.bus.first().is_some_and(|b| b.len() > 9) {
            col("bus", &case.bus, 0, 9)?
        } else {
            Decimal::ONE
        }
        .checked_mul(thousand)
        .ok_or_else(|| overflow("bus", 0, "the base voltage in volts"))?;
        let sbase = case
            .base_mva
            .checked_mul(Decimal::from(1_000_000))
            .ok_or_else(|| overflow("bus", 0, "the base power in VA"))?;
        let zbase = vbase
            .checked_mul(vbase)
            .and_then(|v2| v2.checked_div(sbase))
            .filter(|z| !z.is_zero())
            .ok_or_else(|| overflow("bus", 0, "the base impedance"))?;
        for (r, br) in case.branch.iter_mut().enumerate() {
            if br.len() > 3 {
                for c in [2, 3] {
                    if let Cell::Num(v) = br[c] {
                        let pu = v
                            .checked_div(zbase)
                            .ok_or_else(|| overflow("branch", r, "the per-unit impedance"))?;
                        br[c] = Cell::Num(pu);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// Two buses, one generator at bus 2 (Pmax 100, cost `gencost`), 50 MW of load at bus 1.
    fn case(gen_qmax: &str, gencost: &str) -> String {
        format!(
            "function mpc = t
mpc.baseMVA = 100;
mpc.bus = [
\t1\t3\t50\t0\t0\t0\t1\t1\t0\t135\t1\t1.1\t0.9;
\t2\t1\t0\t0\t0\t0\t1\t1\t0\t135\t1\t1.1\t0.9;
];
mpc.gen = [
\t2\t0\t0\t{gen_qmax}\t0\t1\t100\t1\t100\t0;
];
mpc.branch = [
\t1\t2\t0.01\t0.1\t0\t80\t0\t0\t0\t0\t1\t-360\t360;
];
mpc.gencost = [
\t{gencost};
];
"
        )
    }

    #[test]
    fn marginal_costs_are_exact_decimals() {
        // Quadratic 0.01 p² + 20 p at Pmax/2 = 50: 2 × 0.01 × 50 + 20 = 21.
        let m = import(&case("0", "2\t0\t0\t3\t0.01\t20\t0"), "t").unwrap();
        let g = m.orders.iter().find(|o| o.id == "g1").unwrap();
        assert_eq!(g.node, "2");
        assert_eq!(g.blocks[0].quantity, dec!(100));
        assert_eq!(g.blocks[0].price, Some(dec!(21)));
        assert_eq!(m.lines[0].x, dec!(0.1));
        assert_eq!(m.lines[0].capacity, Some(dec!(80)));
        // Piecewise (0, 0), (60, 1800), (100, 4600): 50 falls in the first segment, 30 $/MWh.
        let m = import(&case("0", "1\t0\t0\t3\t0\t0\t60\t1800\t100\t4600"), "t").unwrap();
        assert_eq!(m.orders[0].blocks[0].price, Some(dec!(30)));
        // Cubic 0.0001 p³ + 0.1 p² + 3 p: 3 × 0.0001 × 2500 + 2 × 0.1 × 50 + 3 = 0.75 + 10 + 3.
        let m = import(&case("0", "2\t0\t0\t4\t0.0001\t0.1\t3\t0"), "t").unwrap();
        assert_eq!(m.orders[0].blocks[0].price, Some(dec!(13.75)));
    }

    #[test]
    fn a_non_finite_gencost_is_refused_naming_matrix_row_and_column() {
        // Before: NaN, Inf and 1e400 went through f64 and imported as an offer at price 0.
        for bad in ["NaN", "Inf", "-Inf", "nan", "1e400", "-1e400"] {
            let e = import(&case("0", &format!("2\t0\t0\t3\t{bad}\t20\t0")), "t").unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "mpc.gencost row 1 column 5: {bad:?} is not a finite number within ±7.9e28"
                ),
                "{bad}"
            );
        }
        // The number of terms is read too: a non-finite NCOST is refused the same way.
        let e = import(&case("0", "2\t0\t0\tInf\t0.01\t20\t0"), "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mpc.gencost row 1 column 4: \"Inf\" is not a finite number within ±7.9e28"
        );
    }

    #[test]
    fn a_non_finite_number_in_a_column_never_read_is_no_obstacle() {
        // Qmax (gen column 4) is ignored by the mapping; MATPOWER files write Inf there.
        let m = import(&case("Inf", "2\t0\t0\t3\t0.01\t20\t0"), "t").unwrap();
        assert_eq!(m.orders[0].blocks[0].price, Some(dec!(21)));
        // Text that is not a number at all is still refused for the whole row.
        let e = import(&case("abc", "2\t0\t0\t3\t0.01\t20\t0"), "t").unwrap_err();
        assert!(
            e.to_string().starts_with("mpc.gen row 1: not numbers"),
            "{e}"
        );
    }

    #[test]
    fn a_non_finite_pmax_or_reactance_is_refused() {
        let text = case("0", "2\t0\t0\t3\t0.01\t20\t0");
        let e = import(&text.replace("1\t100\t1\t100\t0", "1\t100\t1\tNaN\t0"), "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mpc.gen row 1 column 9: \"NaN\" is not a finite number within ±7.9e28"
        );
        let e = import(&text.replace("0.01\t0.1\t0\t80", "0.01\t1e400\t0\t80"), "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mpc.branch row 1 column 4: \"1e400\" is not a finite number within ±7.9e28"
        );
    }

    #[test]
    fn numbers_in_exponent_form_are_exact() {
        assert!(matches!(cell("1e-05"), Some(Cell::Num(d)) if d == dec!(0.00001)));
        assert!(matches!(cell("2.5E+3"), Some(Cell::Num(d)) if d == dec!(2500)));
        assert!(matches!(cell("-.5"), Some(Cell::Num(d)) if d == dec!(-0.5)));
        assert!(cell("Infinity").is_none());
        assert!(cell("1e").is_none());
    }
}
