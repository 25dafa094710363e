//! `baton audit check-receipt`: a participant proves, from the operator's signed receipt and
//! the ledger, that its order is in its interval's book with the recorded fill and payment —
//! or writes the evidence that the operator broke the receipt's promise.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baton_ledger::audit::InclusionProof;
use baton_ledger::{Checkpoint, Entry, Ledger, ENTRIES_PER_READ_MAX};
use baton_proto::receipt::{self, Contradiction, EntryView, Locate, Receipt, Scan, Verdict};
use serde::{Deserialize, Serialize};

use super::audit::load_public_key;
use super::runtime;

/// Format name in every evidence file.
pub(crate) const EVIDENCE_FORMAT: &str = "baton-receipt-evidence/1";

/// `baton audit check-receipt`.
#[derive(clap::Args)]
pub(crate) struct CheckReceiptArgs {
    /// The receipt (JSON, as the SDK writes it).
    #[arg(long)]
    receipt: PathBuf,
    /// Ledger URL.
    #[arg(long)]
    db: String,
    /// The operator's public key: hex, or a file holding it.
    #[arg(long)]
    operator_pubkey: String,
    /// Where to write the evidence when the ledger breaks the receipt's promise (JSON).
    #[arg(long)]
    evidence: Option<PathBuf>,
}

/// What a third party needs to see that the operator signed two contradicting statements: the
/// receipt (valid under the operator key), what the ledger holds at the receipt's seq (with an
/// inclusion proof against the operator's latest signed checkpoint), and for an omission the
/// interval result that leaves the order out (with its own inclusion proof).
#[derive(Serialize, Deserialize)]
pub(crate) struct Evidence {
    /// [`EVIDENCE_FORMAT`].
    pub(crate) format: String,
    /// The operator's signed receipt.
    pub(crate) receipt: Receipt,
    /// The receipt's signed statement as a note.
    pub(crate) statement_note: String,
    /// What the ledger says.
    pub(crate) verdict: Verdict,
    /// The ledger's entry at the receipt's seq, proven against the latest checkpoint; `None`
    /// when the ledger has no such entry.
    pub(crate) entry_at_seq: Option<InclusionProof>,
    /// For an omission: the interval result that leaves the order out, proven likewise.
    pub(crate) result: Option<InclusionProof>,
    /// The operator's latest signed checkpoint.
    pub(crate) checkpoint: Option<Checkpoint>,
}

fn view(e: &Entry) -> EntryView<'_> {
    EntryView {
        seq: e.seq,
        kind: e.kind.as_str(),
        interval_start: e.interval_start,
        body: &e.body,
    }
}

pub(crate) fn run(a: CheckReceiptArgs) -> Result<()> {
    let key = load_public_key(&a.operator_pubkey)?;
    let text = std::fs::read_to_string(&a.receipt)
        .with_context(|| format!("reading {}", a.receipt.display()))?;
    let r: Receipt = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a receipt", a.receipt.display()))?;
    r.verify(key.as_dalek())
        .context("the receipt does not verify with the operator key")?;
    let rt = runtime()?;
    let ((verdict, seq), evidence) = rt.block_on(async {
        let ledger = Ledger::open_existing(&a.db)
            .await
            .with_context(|| format!("opening ledger {}", a.db))?;
        let out = judge(&ledger, &r).await;
        let evidence = match &out {
            // An intake receipt left out of its book is proven by the ledger itself (the
            // audit binds each book to its gate), not by a file of a few proven entries.
            Ok((
                Verdict::Contradicted {
                    contradiction: Contradiction::NotSequenced { .. },
                },
                _,
            )) => None,
            Ok((v, seq)) if v.is_breach() => {
                Some(evidence(&ledger, &Locate::at(&r, *seq), v).await?)
            }
            _ => None,
        };
        ledger.close().await;
        Ok::<_, anyhow::Error>((out?, evidence))
    })?;
    let interval = r.leaf.interval_start;
    match verdict {
        Verdict::Included(i) => {
            println!(
                "receipt verified: order {} at seq {seq} is included in interval {interval} ({} result at seq {}): accepted {} kW, payment {}",
                i.order_id,
                i.product,
                i.result_seq,
                i.accepted_total.normalize(),
                i.payment
            );
            Ok(())
        }
        Verdict::Pending => {
            println!(
                "receipt verified: the order at seq {seq} is in the ledger; interval {interval} is not recorded yet (pending)"
            );
            Ok(())
        }
        Verdict::Cancelled { cancel_seq } => {
            println!(
                "receipt verified: the order at seq {seq} was cancelled by its participant (signed cancel at seq {cancel_seq})"
            );
            Ok(())
        }
        Verdict::Contradicted {
            contradiction: c @ Contradiction::NotSequenced { .. },
        } => bail!(
            "NOT SEQUENCED: the intake receipt is valid but {c}; `baton audit verify` on this ledger shows the book the gate bound"
        ),
        v @ (Verdict::Omitted { .. } | Verdict::Contradicted { .. }) => {
            let evidence = evidence.expect("written for every breach");
            let written = match &a.evidence {
                Some(p) => {
                    write_evidence(p, &evidence)?;
                    format!("; evidence written to {}", p.display())
                }
                None => "; pass --evidence PATH to keep the evidence".into(),
            };
            match v {
                Verdict::Omitted { result_seq } => bail!(
                    "OMITTED: the receipt for seq {seq} is valid but interval {interval}'s result (seq {result_seq}) does not list its order{written}"
                ),
                Verdict::Contradicted { contradiction } => bail!(
                    "CONTRADICTED: the receipt for seq {seq} is valid but {contradiction}{written}"
                ),
                _ => unreachable!("matched above"),
            }
        }
    }
}

/// What the ledger says about the receipt's order: its entry at the seq, then the later
/// entries up to the interval's result and settlement.
/// What the ledger says about the receipt's order, and the seq of its entry (an intake
/// receipt's is looked up; 0 while it is not found).
async fn judge(ledger: &Ledger, r: &Receipt) -> Result<(Verdict, u64)> {
    let located;
    let r = if r.leaf.ledger_seq == 0 {
        // An intake receipt (a node of several): find where the leader sequenced the order.
        match locate(ledger, r).await? {
            Some(Ok(seq)) => {
                located = Locate::at(r, seq);
                &located
            }
            Some(Err(contradiction)) => return Ok((Verdict::Contradicted { contradiction }, 0)),
            None => return Ok((Verdict::Pending, 0)),
        }
    } else {
        r
    };
    let seq = r.leaf.ledger_seq;
    let entry = ledger.entry(seq).await?;
    let order = match receipt::judge_order_entry(r, entry.as_ref().map(view)) {
        Ok(o) => o,
        Err(contradiction) => return Ok((Verdict::Contradicted { contradiction }, seq)),
    };
    let head = ledger.head().await?.map_or(0, |h| h.seq);
    let mut scan = Scan::new(order, r.leaf.interval_start);
    let mut from = seq + 1;
    'pages: while from <= head {
        let to = head.min(from + ENTRIES_PER_READ_MAX - 1);
        let page = ledger.entries(from, to).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in &page {
            if scan.feed(view(e)) {
                break 'pages;
            }
        }
        from = last + 1;
    }
    Ok((scan.verdict()?, seq))
}

/// An intake receipt's order entry, or its interval's gate without it (`None`: neither yet).
async fn locate(ledger: &Ledger, r: &Receipt) -> Result<Option<Result<u64, Contradiction>>> {
    let find = Locate::new(r);
    let mut from = 1;
    loop {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            return Ok(None);
        };
        if let Some(found) = page.iter().find_map(|e| find.feed(view(e))) {
            return Ok(Some(found));
        }
        from = last + 1;
    }
}

async fn evidence(ledger: &Ledger, r: &Receipt, v: &Verdict) -> Result<Evidence> {
    let checkpoint = ledger.latest_checkpoint().await?;
    let size = checkpoint.as_ref().map_or(0, |c| c.size);
    let seq = r.leaf.ledger_seq;
    let entry_at_seq = if seq >= 1 && seq <= size {
        Some(ledger.inclusion_proof(seq).await?)
    } else {
        None
    };
    let result = match v {
        Verdict::Omitted { result_seq } => Some(ledger.inclusion_proof(*result_seq).await?),
        _ => None,
    };
    Ok(Evidence {
        format: EVIDENCE_FORMAT.into(),
        receipt: r.clone(),
        statement_note: r.statement.to_note(),
        verdict: v.clone(),
        entry_at_seq,
        result,
        checkpoint,
    })
}

/// `baton audit check-evidence`: what a third party runs on an evidence file.
#[derive(clap::Args)]
pub(crate) struct CheckEvidenceArgs {
    /// The evidence file (as `check-receipt --evidence` writes it).
    evidence: PathBuf,
    /// The operator's public key: hex, or a file holding it.
    #[arg(long)]
    operator_pubkey: String,
}

/// Checks, with nothing but the operator's public key, that the evidence holds two statements
/// the operator signed that cannot both be true: the receipt, and the ledger (entries proven
/// against signed checkpoints) that contradicts it at the receipt's seq or leaves its order
/// out of the interval's result.
pub(crate) fn check_evidence(a: CheckEvidenceArgs) -> Result<()> {
    let key = load_public_key(&a.operator_pubkey)?;
    let text = std::fs::read_to_string(&a.evidence)
        .with_context(|| format!("reading {}", a.evidence.display()))?;
    let e: Evidence = serde_json::from_str(&text)
        .with_context(|| format!("{} is not receipt evidence", a.evidence.display()))?;
    if e.format != EVIDENCE_FORMAT {
        bail!("unknown evidence format {:?}", e.format);
    }
    let r = &e.receipt;
    r.verify(key.as_dalek())
        .context("the receipt does not verify with the operator key")?;
    let seq = r.leaf.ledger_seq;
    let proven = |p: &InclusionProof, what: &str| -> Result<()> {
        p.verify(&p.checkpoint, &key)
            .map_err(|err| anyhow::anyhow!("the {what} proof does not verify: {err}"))
    };
    let breach = match (&e.entry_at_seq, &e.result) {
        // Nothing at the seq: a signed checkpoint that stops before it.
        (None, _) => {
            let c = e
                .checkpoint
                .as_ref()
                .context("no entry at the seq and no checkpoint")?;
            c.verify(&key).context("the checkpoint does not verify")?;
            if c.size >= seq {
                bail!("the checkpoint covers seq {seq} but the evidence holds no entry for it");
            }
            format!(
                "the operator's checkpoint of size {} has no entry {seq}",
                c.size
            )
        }
        (Some(at), None) => {
            proven(at, "entry")?;
            match receipt::judge_order_entry(r, Some(view(&at.entry))) {
                Err(contradiction) => contradiction.to_string(),
                Ok(_) => bail!("the ledger's entry at seq {seq} is the receipt's order"),
            }
        }
        (Some(at), Some(result)) => {
            proven(at, "entry")?;
            proven(result, "result")?;
            let order = receipt::judge_order_entry(r, Some(view(&at.entry)))
                .map_err(|c| anyhow::anyhow!("{c}"))?;
            if result.entry.kind.as_str() != "interval_result"
                || result.entry.interval_start != Some(r.leaf.interval_start)
            {
                bail!(
                    "the result proof is not interval {}'s result",
                    r.leaf.interval_start
                );
            }
            let v = receipt::judge_result(
                &order.order_id,
                &order.participant_id,
                view(&result.entry),
                None,
            )?;
            if !matches!(v, Verdict::Omitted { .. }) {
                bail!("the interval's result lists the order");
            }
            format!(
                "interval {}'s result at seq {} leaves out order {} accepted at seq {seq}",
                r.leaf.interval_start, result.entry.seq, order.order_id
            )
        }
    };
    println!(
        "evidence holds: the operator (key {}) signed the receipt for seq {seq} and a ledger in which {breach}",
        super::audit::hex_id(&key)
    );
    Ok(())
}

fn write_evidence(path: &Path, e: &Evidence) -> Result<()> {
    let text = serde_json::to_string_pretty(e)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
