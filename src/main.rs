//! `baton`: the market operator's, prosumer simulator's and regulator's command line. Each
//! subcommand is one module of [`cmd`]; the logic lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

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
    Clear(cmd::clear::ClearArgs),
    /// Operator keys.
    Keys(cmd::keys::KeysArgs),
    /// The regulator's tools: verify, re-clear, export and prove.
    Audit(cmd::audit::AuditArgs),
    /// Run the live market: gRPC order intake, interval scheduler, settlement to the ledger.
    Serve(Box<cmd::serve::ServeArgs>),
    /// The operator's commands against a running server (participants, network, market).
    Admin(cmd::admin::AdminArgs),
    /// Simulated prosumers (PV, batteries, EVs) trading on a live market.
    Agents(cmd::agents::AgentsArgs),
    /// Run the whole market on this machine: the server in-process on loopback, simulated
    /// prosumers on the IEEE 33-bus feeder, the regulator's audit and an HTML report.
    Demo(cmd::demo::DemoArgs),
    /// Summarise a ledger per interval (text or JSON) and write its HTML market report.
    Report(cmd::report::ReportArgs),
    /// Convert a MATPOWER case file into a study market (nodal-auction-market/v1).
    ImportMatpower(cmd::import_matpower::ImportMatpowerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Clear(args) => cmd::clear::run(args),
        Command::Keys(args) => cmd::keys::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Admin(args) => cmd::admin::run(args),
        Command::Agents(args) => cmd::agents::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::ImportMatpower(args) => cmd::import_matpower::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
