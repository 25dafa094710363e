//! The harness's own promises, checked where they can break: here, that an empty
//! `BATON_TEST_POSTGRES_URL` (what `VAR= ./.ci/test` leaves) skips the PostgreSQL tests loudly
//! instead of failing them.

use std::process::Command;

/// A PostgreSQL test of this binary, run as a child of it with `BATON_TEST_POSTGRES_URL=`:
/// it passes, and says on stderr that it did not run.
#[test]
fn an_empty_postgres_url_skips_the_postgres_tests_loudly() {
    let test = "audit_cli::clear_record_verify_reclear_prove_and_catch_tampering_on_postgres";
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads", "1"])
        .env(support::PG_ENV, "")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        stderr.contains("SKIPPED: BATON_TEST_POSTGRES_URL unset or empty"),
        "{stderr}"
    );
}
