//! The operator's signed order receipts: verify one, keep it in a file, and prove from the
//! server's audit service that its order is in its interval's book with the recorded fill and
//! payment — or get the evidence that it was left out.
//!
//! The receipt format is `baton_proto::receipt` (re-exported here); `baton audit
//! check-receipt` reads the JSON files [`write_receipt`] writes.

use std::path::Path;

use baton_proto::receipt::{self, EntryView, Scan};
pub use baton_proto::receipt::{
    Contradiction, Included, Receipt, ReceiptError, ReceiptLeaf, Verdict,
    SUBMIT_ORDERS_RECEIPTS_MAX,
};
use ed25519_dalek::VerifyingKey;

use crate::{pb, AuditClient, ClientError};

/// Largest receipt file [`read_receipt`] reads, bytes (a receipt is about 3 KB).
pub const RECEIPT_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Checks a receipt's statement signature with the operator's public key and its audit path.
pub fn verify_receipt(r: &Receipt, operator: &VerifyingKey) -> Result<(), ClientError> {
    Ok(r.verify(operator)?)
}

/// Writes a receipt as JSON (what `baton audit check-receipt --receipt` reads).
pub fn write_receipt(path: &Path, r: &Receipt) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(r).expect("a receipt serialises");
    std::fs::write(path, text + "\n").map_err(|e| ClientError::Invalid {
        field: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads a receipt written by [`write_receipt`] (does not verify it).
pub fn read_receipt(path: &Path) -> Result<Receipt, ClientError> {
    let io = |reason: String| ClientError::Invalid {
        field: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| io(e.to_string()))?
        .len();
    if len > RECEIPT_FILE_BYTES_MAX {
        return Err(io(format!("larger than {RECEIPT_FILE_BYTES_MAX} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| io(e.to_string()))
}

/// What [`AuditClient::prove_receipt`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiptProof {
    /// Included (fill and payment), pending, cancelled, omitted or contradicted.
    pub verdict: Verdict,
    /// The server's entry at the receipt's seq (`None`: the ledger has none).
    pub entry: Option<pb::LedgerEntry>,
    /// Its inclusion proof against the operator's latest checkpoint: the path was checked to
    /// lead from the entry's hash to the root the checkpoint note signs.
    pub inclusion: Option<pb::GetInclusionProofResponse>,
}

fn view(e: &pb::LedgerEntry) -> EntryView<'_> {
    EntryView {
        seq: e.seq,
        kind: &e.kind,
        interval_start: e.interval_start,
        body: &e.body,
    }
}

fn invalid(field: &str, reason: impl ToString) -> ClientError {
    ClientError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

impl AuditClient {
    /// Proves a receipt against the server's ledger: verifies the receipt with `operator`,
    /// finds an intake receipt's entry (`ledger_seq` 0, from a node of several: the first
    /// `order` entry of its interval with its order hash, before the interval's gate),
    /// reads the entry at its seq and checks it is the receipt's order (`GetEntries`), checks
    /// that entry's inclusion proof against the operator-signed checkpoint
    /// (`GetInclusionProof`), then reads on to the interval's `interval_result` and
    /// `settlement` entries for the order's fill and payment.
    ///
    /// Trusted: that the server's entry bytes hash to the entry hash it reports (the SDK does
    /// not recompute the ledger's chain hash; `baton audit check-receipt` on the ledger file
    /// does).
    pub async fn prove_receipt(
        &self,
        r: &Receipt,
        operator: &VerifyingKey,
    ) -> Result<ReceiptProof, ClientError> {
        r.verify(operator)?;
        let head = self.head().await?.seq;
        let located;
        let r = if r.leaf.ledger_seq == 0 {
            // An intake receipt from a node of several: find where the leader sequenced it.
            let find = receipt::Locate::new(r);
            let mut from = 1;
            let mut found = None;
            'scan: while from <= head {
                let page = self.entries(from, head).await?;
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                for e in &page {
                    if let Some(f) = find.feed(view(e)) {
                        found = Some(f);
                        break 'scan;
                    }
                }
                from = last + 1;
            }
            match found {
                Some(Ok(seq)) => {
                    located = receipt::Locate::at(r, seq);
                    &located
                }
                Some(Err(contradiction)) => {
                    return Ok(ReceiptProof {
                        verdict: Verdict::Contradicted { contradiction },
                        entry: None,
                        inclusion: None,
                    })
                }
                None => {
                    return Ok(ReceiptProof {
                        verdict: Verdict::Pending,
                        entry: None,
                        inclusion: None,
                    })
                }
            }
        } else {
            r
        };
        let seq = r.leaf.ledger_seq;
        let entry = if seq >= 1 && seq <= head {
            self.entries(seq, seq).await?.into_iter().next()
        } else {
            None
        };
        let inclusion = match &entry {
            Some(e) => Some(self.checked_inclusion(e, operator).await?),
            None => None,
        };
        let verdict = match receipt::judge_order_entry(r, entry.as_ref().map(view)) {
            Err(contradiction) => Verdict::Contradicted { contradiction },
            Ok(order) => {
                let mut scan = Scan::new(order, r.leaf.interval_start);
                let mut from = seq + 1;
                'pages: while from <= head {
                    let page = self.entries(from, head).await?;
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
                scan.verdict().map_err(|e| invalid("ledger", e))?
            }
        };
        Ok(ReceiptProof {
            verdict,
            entry,
            inclusion,
        })
    }

    /// The inclusion proof of `e`, checked: its hash is `e`'s, its path leads to its root, and
    /// its checkpoint note signs that root and size with the operator key.
    async fn checked_inclusion(
        &self,
        e: &pb::LedgerEntry,
        operator: &VerifyingKey,
    ) -> Result<pb::GetInclusionProofResponse, ClientError> {
        let p = self.inclusion_proof(e.seq).await?;
        let (size, root) = receipt::verify_checkpoint_note(&p.checkpoint, operator)?;
        let entry_hash: receipt::Hash = e
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| invalid("entry hash", "not 32 bytes"))?;
        let path = p
            .path
            .iter()
            .map(|h| receipt::Hash::try_from(h.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("inclusion path", "a hash is not 32 bytes"))?;
        if p.entry_hash != e.hash || p.tree_size != size || p.root != root {
            return Err(invalid(
                "inclusion proof",
                "does not match the entry or the signed checkpoint",
            ));
        }
        if receipt::root_from_path(e.seq - 1, size, &entry_hash, &path) != Some(root) {
            return Err(invalid(
                "inclusion proof",
                "the path does not lead to the checkpoint's root",
            ));
        }
        Ok(p)
    }
}
