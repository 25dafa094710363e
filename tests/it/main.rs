//! Baton's integration tests, one binary (`cargo test -p baton --test it`): the built `baton`
//! binary as a user runs it, the live market in-process and as a child process, the Rust SDK
//! and the Python client against real servers. The harness they share — servers, signing,
//! clocks, temporary ledgers on both backends — is written once in `tests/support/`
//! (`baton-test-support`, imported here as `support`), which the live bench uses too.

mod admin_cli;
mod agents;
mod audit_cli;
mod book_binding;
mod cli;
mod client;
mod demo;
mod harness;
mod python_client;
mod receipts;
mod report;
mod serve;
mod tls;
mod witness;

/// The `baton` binary Cargo built for these tests.
const BATON: &str = env!("CARGO_BIN_EXE_baton");
