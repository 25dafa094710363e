//! `baton demo` at a reduced size, as a user runs it (the built binary, a fresh directory), and
//! the README's quick start: exactly two `sh` blocks, the demo first, then the tests.

use std::process::Command;

/// Prosumers and intervals of the reduced demo: small enough for CI, large enough that every
/// part (P2P trades, batteries, EVs, flexibility, several intervals) shows up.
const DEMO_PROSUMERS: &str = "40";
const DEMO_INTERVALS: &str = "3";

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
    let progress = stdout.lines().filter(|l| l.starts_with('[')).count();
    assert_eq!(progress, 3, "{stdout}");
    assert!(stdout.contains("registered 40 prosumers"), "{stdout}");
    assert!(stdout.contains("audit verify: "), "{stdout}");
    // The three traded intervals and the empty one before the agents' first, all re-cleared.
    assert!(
        stdout.contains("audit reclear: 4 interval(s) re-cleared"),
        "{stdout}"
    );
    // The summary table has a row per interval and a totals line.
    assert!(stdout.contains("\ntotal "), "{stdout}");
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("the report's path is printed");
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("<svg"), "the report draws its heat map");
    // The ledger verifies on its own, with the public key the demo wrote.
    let db = format!("sqlite://{}", demo_dir.join("baton.db").display());
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
