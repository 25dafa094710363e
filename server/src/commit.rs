//! Group commit: one task appends every accepted order and cancel to the ledger, batching
//! whatever has queued up while the previous append ran into one transaction (one fsync, one
//! checkpoint), and only then answers the waiting requests. Under load the batch grows and the
//! per-order cost of the transaction shrinks; when idle, a lone order is appended at once.
//!
//! Each committed batch's orders get signed receipts (`baton_proto::receipt`): one leaf per
//! order, one Merkle tree and one operator signature per batch, so the per-order cost is a few
//! SHA-256 compressions rather than an ed25519 signature. A second task signs them and answers
//! the orders while this one appends the next batch; it answers batches in commit order.

use std::sync::Arc;

use baton_ledger::NewEntry;
use baton_proto::receipt::{self, ReceiptLeaf};
use baton_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use super::clock::wall_now_ms;
use super::error::ServiceError;
use super::state::{ValidCancel, ValidOrder};
use super::{FaultInjection, Shared, GROUP_COMMIT_ENTRIES_MAX};

/// A durable order: its seq and its signed receipt.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// Its chain seq; 0 from a node of several (sequenced later by the leader).
    pub(crate) seq: u64,
    /// Its id in the shared intake of several nodes; 0 from a single process.
    pub(crate) intake_id: u64,
    /// `None` only if signing failed (logged); the order is durable either way.
    pub(crate) receipt: Option<pb::Receipt>,
}

/// What the commit task is asked to do, in arrival order.
pub(crate) enum CommitItem {
    /// Append an order, then put it in its book and reply with its seq and receipt.
    Order(ValidOrder, oneshot::Sender<Result<Accepted, ServiceError>>),
    /// Append a cancel, then take the order out of its book and reply with its seq.
    Cancel(ValidCancel, oneshot::Sender<Result<Accepted, ServiceError>>),
    /// Reply once everything queued before it is appended (the scheduler's gate closure).
    Barrier(oneshot::Sender<()>),
    /// Stop after everything queued before it.
    Stop,
}

/// Committed batches whose receipts wait for the signer before the commit task waits for it.
const RECEIPT_QUEUE_BATCHES: usize = 4;

type OrderReply = oneshot::Sender<Result<Accepted, ServiceError>>;

/// One committed batch's orders, for the signer: their leaves and who waits for each.
struct ToSign {
    leaves: Vec<ReceiptLeaf>,
    replies: Vec<OrderReply>,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<CommitItem>) {
    // Receipts are signed and the orders answered by a second task, so that building one
    // batch's receipts overlaps the next batch's append instead of delaying it.
    let (sign_tx, sign_rx) = mpsc::channel(RECEIPT_QUEUE_BATCHES);
    let mut signer = tokio::spawn(sign_and_reply(shared.clone(), sign_rx));
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else {
            break;
        };
        FaultInjection::check(&shared.faults.commit_panics, "group-commit");
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_ENTRIES_MAX {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut entries = Vec::with_capacity(batch.len());
        for item in &batch {
            match item {
                CommitItem::Order(v, _) => {
                    entries.push(NewEntry::order(Some(v.record.interval_start), &v.signed))
                }
                CommitItem::Cancel(c, _) => {
                    entries.push(NewEntry::cancel(Some(c.interval_start), &c.signed))
                }
                CommitItem::Barrier(_) | CommitItem::Stop => {}
            }
        }
        let appended = if entries.is_empty() {
            Ok(None)
        } else {
            let n = entries.len();
            let t0 = std::time::Instant::now();
            let r = shared.ledger.append(entries).await;
            super::metrics::METRICS.intake_commit(t0.elapsed(), n);
            tracing::debug!(
                entries = n,
                ms = t0.elapsed().as_millis() as u64,
                "group commit"
            );
            r.map(Some)
        };
        // One acceptance time for the whole batch: when it became durable.
        let accepted_at_ms = wall_now_ms();
        let mut to_sign = ToSign {
            leaves: Vec::new(),
            replies: Vec::new(),
        };
        let mut barriers = Vec::new();
        {
            let mut st = shared.lock();
            let mut seq = appended
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref().map(|r| r.first_seq));
            for item in batch {
                match item {
                    CommitItem::Order(v, reply) => match (&appended, seq.as_mut()) {
                        (Ok(_), Some(s)) => {
                            to_sign.leaves.push(ReceiptLeaf {
                                order_hash: v.order_hash,
                                ledger_seq: *s,
                                interval_start: v.record.interval_start,
                                accepted_at_ms,
                            });
                            to_sign.replies.push(reply);
                            st.insert_order(v.record, *s);
                            *s += 1;
                        }
                        (Err(e), _) => {
                            st.release_order(&v);
                            let _ = reply.send(Err(ServiceError::Storage(e.to_string())));
                        }
                        (Ok(_), None) => unreachable!("an order makes the batch non-empty"),
                    },
                    CommitItem::Cancel(c, reply) => match (&appended, seq.as_mut()) {
                        (Ok(_), Some(s)) => {
                            st.apply_cancel(&c.order_id);
                            super::metrics::METRICS.accepted();
                            let _ = reply.send(Ok(Accepted {
                                seq: *s,
                                intake_id: 0,
                                receipt: None,
                            }));
                            *s += 1;
                        }
                        (Err(e), _) => {
                            let _ = reply.send(Err(ServiceError::Storage(e.to_string())));
                        }
                        (Ok(_), None) => unreachable!("a cancel makes the batch non-empty"),
                    },
                    CommitItem::Barrier(reply) => barriers.push(reply),
                    CommitItem::Stop => stop = true,
                }
            }
        }
        if let Err(e) = &appended {
            tracing::error!(error = %e, "group commit failed; the batch was refused");
        }
        for b in barriers {
            let _ = b.send(());
        }
        if !to_sign.replies.is_empty() && sign_tx.send(to_sign).await.is_err() {
            // The signer is gone: only a panic ends it early. Die with it, so the
            // supervisor halts the market rather than accept orders nobody answers.
            break;
        }
    }
    drop(sign_tx);
    if let Err(e) = (&mut signer).await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// The signer: for each committed batch, in order, its receipts (one signature) and then the
/// answers to the orders' waiting requests.
async fn sign_and_reply(shared: Arc<Shared>, mut rx: mpsc::Receiver<ToSign>) {
    while let Some(batch) = rx.recv().await {
        let mut receipts = sign_receipts(&shared, &batch.leaves).into_iter();
        for (reply, leaf) in batch.replies.into_iter().zip(&batch.leaves) {
            super::metrics::METRICS.accepted();
            let _ = reply.send(Ok(Accepted {
                seq: leaf.ledger_seq,
                intake_id: 0,
                receipt: receipts.next(),
            }));
        }
    }
}

/// A committed batch's receipts, in batch order: one signature. Empty (logged) if signing
/// fails, which only an invalid origin could cause, and `run` refuses those at start.
pub(crate) fn sign_receipts(shared: &Shared, leaves: &[ReceiptLeaf]) -> Vec<pb::Receipt> {
    let key = &shared.receipt_key;
    match receipt::issue(
        leaves,
        &shared.origin,
        key.public_key().as_dalek(),
        |text| key.sign(text),
    ) {
        Ok(rs) => rs.into_iter().map(receipt::Receipt::into_proto).collect(),
        Err(e) => {
            tracing::error!(error = %e, "signing the batch's receipts failed");
            Vec::new()
        }
    }
}
