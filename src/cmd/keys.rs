//! `baton keys`: the operator's key pair.

use std::path::PathBuf;

use anyhow::{Context, Result};
use baton_ledger::OperatorKey;

#[derive(clap::Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Write a new ed25519 key pair: operator.key (private, mode 0600) and operator.pub (hex).
    Generate {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn run(a: KeysArgs) -> Result<()> {
    let KeysCommand::Generate { out: dir } = a.command;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = OperatorKey::generate_to_dir(&dir)
        .with_context(|| format!("writing a key pair into {}", dir.display()))?;
    println!(
        "wrote {}/operator.key (private, mode 0600) and {}/operator.pub\npublic key {} (key id {})",
        dir.display(),
        dir.display(),
        key.public_key().to_hex(),
        super::audit::hex_id(&key.public_key())
    );
    Ok(())
}
