//! Baton's integration tests, one binary (`cargo test -p baton --test it`): the built `baton`
//! binary as a user runs it, the live market in-process and as a child process, the Rust SDK
//! and the Python client against real servers. The harness they share — servers, signing,
//! clocks, temporary ledgers on both backends — is written once in `tests/support/`
//! (`baton-test-support`, imported here as `support`), which the live bench uses too.

mod admin_cli;
mod agents;
mod audit_cli;
mod book_binding;
mod browser;
mod cli;
mod client;
mod cluster;
mod demo;
mod feeder;
mod harness;
mod metering;
mod python_client;
mod receipts;
mod report;
mod serve;
mod tls;
mod witness;

/// The `baton` binary Cargo built for these tests.
const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// What the ledger's own verification, the full audit (with the book binding) and the
/// re-clear say of the ledger at `url`, signed by the test operator.
type Verdicts = (Result<(), String>, Result<(), String>, Result<(), String>);

async fn verdicts(url: &str) -> Verdicts {
    let key = support::operator().public_key();
    let ledger_only = baton_ledger::audit::verify(url, &key, None)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let audit = baton_audit::verify(url, &key, Vec::new())
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let reclear = baton_audit::reclear_ledger(url, None)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    (ledger_only, audit, reclear)
}

/// Runs the built `baton` with `args`.
fn baton(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BATON)
        .args(args)
        .output()
        .expect("runs baton")
}

/// Runs `baton args`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let out = baton(args);
    assert!(
        out.status.success(),
        "baton {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `baton args`, which must fail; its stderr.
fn fails(args: &[&str]) -> String {
    let out = baton(args);
    assert!(
        !out.status.success(),
        "baton {args:?} should fail; it printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}
