//! `baton demo` at a reduced size, as a user runs it (the built binary, a fresh directory), and
//! the README's quick start: exactly two `sh` blocks, the demo first, then the tests.

use std::collections::BTreeSet;
use std::process::Command;

use rust_decimal::Decimal;

/// Prosumers and intervals of the reduced demo: small enough for CI, large enough that every
/// part (P2P trades, batteries, EVs, congestion, flexibility, several intervals) shows up. The
/// estate's EVs (a cluster of the population, not cut by `--prosumers`) have all arrived by
/// 17:45, so the weak lateral congests from the first interval.
const DEMO_PROSUMERS: &str = "40";
const DEMO_INTERVALS: &str = "4";
const DEMO_START: &str = "17:45";
const FEEDER: &str = include_str!("../../scenarios/ieee33-feeder.toml");

#[test]
fn the_demo_trades_audits_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(crate::BATON)
        .args([
            "demo",
            "--prosumers",
            DEMO_PROSUMERS,
            "--intervals",
            DEMO_INTERVALS,
            "--start",
            DEMO_START,
        ])
        .args(["--time-scale", "100"])
        .arg("--dir")
        .arg(&demo_dir)
        .output()
        .expect("baton demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "baton demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // A progress line per interval, then the summary, the audit and the report's path.
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(progress.len(), 4, "{stdout}");
    // 40 households, the estate's 120 and the 24 farms, and 32 bus loads.
    assert!(stdout.contains("registered 216 prosumers"), "{stdout}");
    assert!(stdout.contains("audit verify: "), "{stdout}");
    // The market keeps clearing (empty books) while the last interval's meters report.
    let recleared: usize = stdout
        .split("audit reclear: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an audit reclear line: {stdout}"));
    assert!(recleared >= 4, "{stdout}");
    // Every agent's meter reported every traded interval, and each was settled on delivery.
    assert!(
        stdout.contains(&format!(
            "meters: {} readings acknowledged, 0 refused",
            4 * 216
        )),
        "{stdout}"
    );
    let delivery: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" delivery: 216 readings, 0 missing; imbalance "))
        .collect();
    assert!(delivery.len() >= 4, "{stdout}");
    assert!(
        delivery
            .iter()
            .any(|l| !l.contains("flexibility delivered 0 of")),
        "flexibility was delivered and measured: {stdout}"
    );
    // The market, interval by interval: the weak lateral congests and prices separate.
    let field = |line: &str, key: &str| -> String {
        let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        line[at..].split_whitespace().next().unwrap().to_string()
    };
    let congested: Vec<String> = progress.iter().map(|l| field(l, "congested ")).collect();
    assert!(
        congested.iter().any(|c| c.split(',').any(|l| l == "l22")),
        "the weak lateral congests: {stdout}"
    );
    let prices: Vec<usize> = progress
        .iter()
        .map(|l| field(l, "/kWh (").parse().unwrap())
        .collect();
    assert!(prices.iter().any(|&n| n >= 2), "prices separate: {stdout}");
    // The operator posted its requirement behind the line, and flexibility was procured there.
    assert!(
        stdout.contains("operator: l22 congested") && stdout.contains("relieve-l22"),
        "{stdout}"
    );
    let network = baton_engine::scenario::parse(FEEDER).unwrap().market;
    let behind: BTreeSet<String> = baton_agents::feeder::behind(&network, "1", "l22")
        .unwrap()
        .nodes
        .into_iter()
        .collect();
    let procured_behind = progress.iter().any(|l| {
        let kw: Decimal = field(l, " flex ").parse().unwrap();
        let at = l.find(" kW at ").map(|i| &l[i + 7..]);
        kw > Decimal::ZERO
            && at.is_some_and(|a| {
                let nodes = a.split_whitespace().next().unwrap();
                nodes.split(',').any(|n| behind.contains(n))
            })
    });
    assert!(procured_behind, "flexibility procured behind l22: {stdout}");
    // The summary table has a row per interval and a totals line.
    assert!(stdout.contains("\ntotal "), "{stdout}");
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("the report's path is printed");
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("<svg"), "the report draws its heat map");
    assert!(html.contains("id=\"feeder\""), "and the feeder");
    // And delivery against the clearing: every agent's reading, no missing one.
    let table = html
        .split("<h2>Delivery against the clearing</h2>")
        .nth(1)
        .expect("a delivery section");
    assert!(table.contains("<td>216</td><td>0</td>"), "{table}");
    // The ledger says the same: a congested interval with distinct prices, and the
    // requirement procured.
    let db = format!("sqlite://{}", demo_dir.join("baton.db").display());
    let rep = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(baton_audit::summary::read(&db))
        .unwrap();
    assert!(rep.intervals.iter().any(|s| {
        s.congested_lines.iter().any(|l| l == "l22")
            && s.price_min.as_ref().map(|p| p.price) < s.price_max.as_ref().map(|p| p.price)
    }));
    assert!(rep.intervals.iter().any(|s| s
        .flex
        .iter()
        .any(|f| f.requirement == "relieve-l22" && f.procured_kw > Decimal::ZERO)));
    // The ledger verifies on its own, with the public key the demo wrote.
    let verify = Command::new(crate::BATON)
        .args(["audit", "verify", "--db", &db, "--operator-pubkey"])
        .arg(demo_dir.join("operator.pub"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // A second run into the same directory refuses rather than mixing two ledgers.
    let again = Command::new(crate::BATON)
        .args(["demo", "--intervals", "1", "--dir"])
        .arg(&demo_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a ledger"));
}

/// The README's quick start is exactly two `sh` blocks — the demo command, then the test
/// command — and both name scripts that exist, are executable and do what the README says.
#[test]
fn the_readme_quick_start_names_the_demo_and_the_test_commands() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim())
        .collect();
    assert_eq!(blocks, ["./.ci/demo", "./.ci/test"], "{section}");
    for (script, must_run) in [
        (".ci/demo", "target/release/baton demo"),
        (".ci/test", "cargo test --workspace"),
    ] {
        let path = format!("{root}/{script}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("bash .ci/setup"),
            "{script} installs what it needs"
        );
        assert!(text.contains(must_run), "{script} runs {must_run}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert!(mode & 0o111 != 0, "{script} is executable");
        }
    }
    // CI runs the README's test command.
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    assert!(ci.contains("bash .ci/test"));
}
