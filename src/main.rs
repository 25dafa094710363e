//! `baton`: the market operator's and regulator's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod clear_cmd;
mod serve_cmd;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Transactive energy market clearing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Clear one interval offline: a study JSON (nodal-auction-market/v1) or a native TOML
    /// scenario in, a nodal-auction-result/v1 JSON out.
    Clear {
        /// Market file: `.json` (study format) or `.toml` (native scenario).
        market: PathBuf,
        /// Where to write the result (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Solution method: auto, full or active-set.
        #[arg(long, default_value = "auto")]
        method: String,
        /// Add solver timings to the result (makes the output vary between runs).
        #[arg(long)]
        timings: bool,
    },
    /// Run the live market: gRPC order intake, interval scheduler, settlement to the ledger.
    Serve(serve_cmd::ServeArgs),
    /// Convert a MATPOWER case file into a study market (nodal-auction-market/v1).
    ImportMatpower {
        /// The `.m` case file.
        case: PathBuf,
        /// Where to write the market (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Clear {
            market,
            out,
            method,
            timings,
        } => clear_cmd::run(&market, out.as_deref(), &method, timings),
        Command::Serve(args) => serve_cmd::run(args),
        Command::ImportMatpower { case, out } => {
            let text = std::fs::read_to_string(&case)
                .with_context(|| format!("reading {}", case.display()))?;
            let name = case
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "case".into());
            let spec = baton_engine::matpower::import(&text, &name)
                .with_context(|| format!("importing {}", case.display()))?;
            let json = baton_engine::study::write_market(&spec)?;
            write_out(out.as_deref(), &json)
        }
    }
}

/// Writes to a file, or standard output when no path is given.
fn write_out(path: Option<&std::path::Path>, text: &str) -> Result<()> {
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

#[allow(dead_code)]
fn never(_: &str) -> Result<()> {
    bail!("unreachable")
}
