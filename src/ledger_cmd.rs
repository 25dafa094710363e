//! `baton keys`, `baton clear --ledger` and `baton audit …`: the ledger from the command line.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use baton::record;
use baton_ledger::audit::{self, ExportFormat};
use baton_ledger::{Checkpoint, EntryKind, Ledger, OperatorKey, PublicKey, ENTRIES_PER_READ_MAX};

/// Origin line of the checkpoints `baton clear --ledger` signs.
pub(crate) const CLEAR_ORIGIN: &str = "baton/clear";

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `baton keys generate --out DIR`.
pub(crate) fn keys_generate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = OperatorKey::generate_to_dir(dir)
        .with_context(|| format!("writing a key pair into {}", dir.display()))?;
    println!(
        "wrote {}/operator.key (private, mode 0600) and {}/operator.pub\npublic key {} (key id {})",
        dir.display(),
        dir.display(),
        key.public_key().to_hex(),
        hex_id(&key.public_key())
    );
    Ok(())
}

fn hex_id(k: &PublicKey) -> String {
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
pub(crate) fn verify(db: &str, pubkey: &str, published: Option<&Path>) -> Result<()> {
    let key = load_public_key(pubkey)?;
    let published = match published {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading checkpoint {}", p.display()))?;
            Some(Checkpoint::from_note(&text).with_context(|| format!("{}", p.display()))?)
        }
    };
    let outcome = runtime()?.block_on(audit::verify(db, &key, published));
    match outcome {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(failure) => bail!("verification failed: {failure}"),
    }
}

/// Every entry of the ledger, in pages.
async fn all_entries(ledger: &Ledger) -> Result<Vec<baton_ledger::Entry>> {
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let page = ledger
            .entries(from, from + ENTRIES_PER_READ_MAX - 1)
            .await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        out.extend(page);
    }
    Ok(out)
}

/// `baton audit reclear`.
pub(crate) fn reclear(db: &str, only: Option<i64>) -> Result<()> {
    let done = runtime()?.block_on(reclear_intervals(db, only))?;
    for r in &done {
        println!(
            "interval {}: re-cleared {} orders; prices, fills and {} postings identical",
            r.interval, r.orders, r.postings
        );
    }
    println!("reclear: {} interval(s) reproduced exactly", done.len());
    Ok(())
}

/// Re-clears every recorded interval (or only `only`) from its recorded input and checks the
/// recorded result and settlement are identical; the first difference is an error.
pub(crate) async fn reclear_intervals(
    db: &str,
    only: Option<i64>,
) -> Result<Vec<record::Recleared>> {
    let ledger = Ledger::open_existing(db)
        .await
        .with_context(|| format!("opening ledger {db}"))?;
    let entries = all_entries(&ledger).await;
    ledger.close().await;
    let entries = entries?;
    // Latest entry of each kind per interval (a re-recorded interval would be a correction).
    let mut by_interval: std::collections::BTreeMap<i64, [Option<&[u8]>; 3]> = Default::default();
    for e in &entries {
        let Some(t) = e.interval_start else { continue };
        let slot = match e.kind {
            EntryKind::IntervalInput => 0,
            EntryKind::IntervalResult => 1,
            EntryKind::Settlement => 2,
            _ => continue,
        };
        by_interval.entry(t).or_default()[slot] = Some(&e.body);
    }
    if let Some(t) = only {
        by_interval.retain(|k, _| *k == t);
        if by_interval.is_empty() {
            bail!("interval {t} is not in the ledger");
        }
    }
    let mut done = Vec::with_capacity(by_interval.len());
    for (t, [input, result, settlement]) in &by_interval {
        let missing = |what| record::RecordError::Missing { interval: *t, what };
        done.push(record::reclear(
            *t,
            input.ok_or_else(|| missing("interval_input"))?,
            result.ok_or_else(|| missing("interval_result"))?,
            settlement.ok_or_else(|| missing("settlement"))?,
        )?);
    }
    Ok(done)
}

/// `baton audit export`.
pub(crate) fn export(db: &str, format: &str, from: u64, to: u64) -> Result<()> {
    let format = match format {
        "jsonl" => ExportFormat::Jsonl,
        "csv" => ExportFormat::Csv,
        other => bail!("unknown format {other:?} (jsonl, csv)"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    runtime()?.block_on(audit::export(db, format, from, to, &mut out))?;
    out.flush()?;
    Ok(())
}

/// `baton audit prove`: the proof carries the entry and the signed checkpoint it is against.
pub(crate) fn prove(db: &str, seq: u64) -> Result<()> {
    let proof = runtime()?
        .block_on(audit::prove_inclusion(db, seq))
        .with_context(|| format!("proving entry {seq}"))?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(())
}

/// `baton audit check-proof`: what a third party runs on a proof it was handed.
pub(crate) fn check_proof(path: &Path, pubkey: &str) -> Result<()> {
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
