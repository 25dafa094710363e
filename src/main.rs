//! `baton`: the market operator's and regulator's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod clear_cmd;
mod ledger_cmd;
mod report_cmd;
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
        /// Also record the clearing (market, result, settlement, checkpoint) in this ledger:
        /// `sqlite://path` or `postgres://…`.
        #[arg(long, requires = "operator_key")]
        ledger: Option<String>,
        /// The operator's private key file (from `baton keys generate`).
        #[arg(long)]
        operator_key: Option<PathBuf>,
        /// Interval start recorded in the ledger, unix seconds (default: now, floored to the
        /// interval length).
        #[arg(long)]
        interval_start: Option<i64>,
    },
    /// Operator keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The regulator's tools: verify, re-clear, export and prove.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the live market: gRPC order intake, interval scheduler, settlement to the ledger.
    Serve(serve_cmd::ServeArgs),
    /// Summarise a ledger per interval (text or JSON) and write its HTML market report.
    Report(report_cmd::ReportArgs),
    /// Convert a MATPOWER case file into a study market (nodal-auction-market/v1).
    ImportMatpower {
        /// The `.m` case file.
        case: PathBuf,
        /// Where to write the market (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new ed25519 key pair: operator.key (private, mode 0600) and operator.pub (hex).
    Generate {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain, Merkle tree, every signature, zero-sum and balances.
    Verify {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// The operator's public key: hex, or a file holding it.
        #[arg(long)]
        operator_pubkey: String,
        /// A checkpoint published earlier (signed note): the ledger must be consistent with it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Re-clear recorded intervals and check prices, fills and payments are identical.
    Reclear {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// Only this interval (unix seconds).
        #[arg(long)]
        interval: Option<i64>,
    },
    /// Export entries for other tools.
    Export {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last sequence number.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
    },
    /// Print an inclusion proof of entry SEQ against the latest signed checkpoint.
    Prove {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// Sequence number.
        #[arg(long)]
        seq: u64,
    },
    /// Check an inclusion proof (as printed by `prove`) against the operator's public key.
    CheckProof {
        /// The proof file.
        proof: PathBuf,
        /// The operator's public key: hex, or a file holding it.
        #[arg(long)]
        operator_pubkey: String,
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
            ledger,
            operator_key,
            interval_start,
        } => {
            let record = match (ledger, operator_key) {
                (Some(db), Some(key)) => Some(clear_cmd::Record {
                    db,
                    key,
                    interval_start,
                }),
                _ => None,
            };
            clear_cmd::run(&market, out.as_deref(), &method, timings, record)
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => ledger_cmd::keys_generate(&out),
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                db,
                operator_pubkey,
                checkpoint,
            } => ledger_cmd::verify(&db, &operator_pubkey, checkpoint.as_deref()),
            AuditCommand::Reclear { db, interval } => ledger_cmd::reclear(&db, interval),
            AuditCommand::Export {
                db,
                format,
                from,
                to,
            } => ledger_cmd::export(&db, &format, from, to),
            AuditCommand::Prove { db, seq } => ledger_cmd::prove(&db, seq),
            AuditCommand::CheckProof {
                proof,
                operator_pubkey,
            } => ledger_cmd::check_proof(&proof, &operator_pubkey),
        },
        Command::Serve(args) => serve_cmd::run(args),
        Command::Report(args) => report_cmd::run(args),
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
