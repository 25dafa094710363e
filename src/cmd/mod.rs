//! One module per subcommand, each with its clap arguments and a `run`; and what several share.

use std::path::Path;

use anyhow::{Context, Result};

pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod clear;
pub(crate) mod demo;
pub(crate) mod import_matpower;
pub(crate) mod keys;
pub(crate) mod receipt;
pub(crate) mod report;
pub(crate) mod serve;
pub(crate) mod witness;

/// A single-threaded runtime for the commands that make a few ledger calls.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes to a file, or standard output when no path is given.
pub(crate) fn write_out(path: Option<&Path>, text: &str) -> Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}
