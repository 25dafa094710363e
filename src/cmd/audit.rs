//! `baton audit …` (the regulator's tools) and the recording half of `baton clear --ledger`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baton_ledger::audit::{self, ExportFormat};
use baton_ledger::{Checkpoint, Ledger, OperatorKey, PublicKey};

use super::runtime;

#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain, Merkle tree, every signature, zero-sum and balances.
    Verify {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// The operator's public key: hex, or a file holding it.
        #[arg(long)]
        operator_pubkey: String,
        /// A checkpoint published earlier (signed note), or a witness's state directory: the
        /// ledger must be consistent with it (with every checkpoint the witness stored).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// With a witness state directory: every stored checkpoint must carry a valid
        /// cosignature by this witness key (hex, or a file holding it).
        #[arg(long, requires = "checkpoint")]
        witness_pubkey: Option<String>,
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
    /// Follow the servers' signed checkpoints as a witness: check each extends the last one
    /// stored, store it and cosign it; fail on a rewrite, a rollback or a fork.
    Witness(super::witness::WitnessArgs),
    /// Export entries for other tools.
    Export {
        /// Ledger URL.
        #[arg(long)]
        db: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormatArg::Jsonl)]
        format: ExportFormatArg,
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
    /// Check an order receipt against the ledger: included (with fill and payment), pending,
    /// or OMITTED/CONTRADICTED with evidence (exit status non-zero).
    CheckReceipt(super::receipt::CheckReceiptArgs),
    /// Check a check-receipt evidence file with nothing but the operator's public key.
    CheckEvidence(super::receipt::CheckEvidenceArgs),
}

/// `--format` of `baton audit export`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormatArg {
    /// One JSON object per entry.
    Jsonl,
    /// Comma-separated, one row per entry, the body in hex.
    Csv,
}

pub(crate) fn run(a: AuditArgs) -> Result<()> {
    match a.command {
        AuditCommand::Verify {
            db,
            operator_pubkey,
            checkpoint,
            witness_pubkey,
        } => verify(
            &db,
            &operator_pubkey,
            checkpoint.as_deref(),
            witness_pubkey.as_deref(),
        ),
        AuditCommand::Witness(w) => super::witness::run(w),
        AuditCommand::Reclear { db, interval } => reclear(&db, interval),
        AuditCommand::Export {
            db,
            format,
            from,
            to,
        } => export(&db, format, from, to),
        AuditCommand::Prove { db, seq } => prove(&db, seq),
        AuditCommand::CheckProof {
            proof,
            operator_pubkey,
        } => check_proof(&proof, &operator_pubkey),
        AuditCommand::CheckReceipt(args) => super::receipt::run(args),
        AuditCommand::CheckEvidence(args) => super::receipt::check_evidence(args),
    }
}

/// Origin line of the checkpoints `baton clear --ledger` signs.
pub(crate) const CLEAR_ORIGIN: &str = "baton/clear";

pub(crate) fn hex_id(k: &PublicKey) -> String {
    k.key_id().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a public key given as hex or as a file holding hex.
pub(crate) fn load_public_key(arg: &str) -> Result<PublicKey> {
    let p = Path::new(arg);
    if p.exists() {
        return PublicKey::from_file(p).with_context(|| format!("reading public key {arg}"));
    }
    PublicKey::from_hex(arg.trim()).with_context(|| {
        format!("{arg:?} is neither a file nor a 64-character hex ed25519 public key")
    })
}

/// Records a one-shot clearing in the ledger.
pub(crate) fn record_clearing(
    db: &str,
    key_path: &Path,
    interval: i64,
    entries: Vec<baton_ledger::NewEntry>,
) -> Result<()> {
    let key = OperatorKey::load(key_path)
        .with_context(|| format!("loading operator key {}", key_path.display()))?;
    runtime()?.block_on(async {
        let ledger = Ledger::open(db)
            .await
            .with_context(|| format!("opening ledger {db}"))?
            .with_operator(key, CLEAR_ORIGIN)?;
        if ledger.has_interval(interval).await? {
            bail!("interval {interval} is already recorded in {db}; pass another --interval-start");
        }
        let receipt = ledger
            .append(entries)
            .await
            .context("appending the interval")?;
        ledger.close().await;
        eprintln!(
            "baton: recorded interval {interval} as entries {}..={} in {db}; checkpoint size {}",
            receipt.first_seq, receipt.last_seq, receipt.checkpoint.size
        );
        Ok(())
    })
}

/// `baton audit verify`.
fn verify(
    db: &str,
    pubkey: &str,
    published: Option<&Path>,
    witness_pubkey: Option<&str>,
) -> Result<()> {
    let key = load_public_key(pubkey)?;
    let published = match published {
        None => Vec::new(),
        Some(p) if p.is_dir() => super::witness::stored_checkpoints(p, witness_pubkey)?,
        Some(p) => {
            if witness_pubkey.is_some() {
                bail!("--witness-pubkey needs a witness state directory as --checkpoint");
            }
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading checkpoint {}", p.display()))?;
            vec![Checkpoint::from_note(&text).with_context(|| format!("{}", p.display()))?]
        }
    };
    let outcome = runtime()?.block_on(baton_audit::verify(db, &key, published));
    match outcome {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(failure) => bail!("verification failed: {failure}"),
    }
}

/// `baton audit reclear`.
fn reclear(db: &str, only: Option<i64>) -> Result<()> {
    let done = runtime()?.block_on(baton_audit::reclear_ledger(db, only))?;
    for r in &done {
        println!(
            "interval {}: re-cleared {} orders; prices, fills and {} postings identical",
            r.interval, r.orders, r.postings
        );
    }
    println!("reclear: {} interval(s) reproduced exactly", done.len());
    Ok(())
}

/// `baton audit export`.
fn export(db: &str, format: ExportFormatArg, from: u64, to: u64) -> Result<()> {
    let format = match format {
        ExportFormatArg::Jsonl => ExportFormat::Jsonl,
        ExportFormatArg::Csv => ExportFormat::Csv,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    runtime()?.block_on(audit::export(db, format, from, to, &mut out))?;
    out.flush()?;
    Ok(())
}

/// `baton audit prove`: the proof carries the entry and the signed checkpoint it is against.
fn prove(db: &str, seq: u64) -> Result<()> {
    let proof = runtime()?
        .block_on(audit::prove_inclusion(db, seq))
        .with_context(|| format!("proving entry {seq}"))?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(())
}

/// `baton audit check-proof`: what a third party runs on a proof it was handed.
fn check_proof(path: &Path, pubkey: &str) -> Result<()> {
    let key = load_public_key(pubkey)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let proof: audit::InclusionProof = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a proof", path.display()))?;
    proof
        .verify(&proof.checkpoint, &key)
        .map_err(|e| anyhow::anyhow!("proof does not verify: {e}"))?;
    println!(
        "entry {} ({}) is included in the ledger of size {} signed by key {}",
        proof.entry.seq,
        proof.entry.kind.as_str(),
        proof.checkpoint.size,
        hex_id(&key)
    );
    Ok(())
}
