//! Group commit: one task appends every accepted order and cancel to the ledger, batching
//! whatever has queued up while the previous append ran into one transaction (one fsync, one
//! checkpoint), and only then answers the waiting requests. Under load the batch grows and the
//! per-order cost of the transaction shrinks; when idle, a lone order is appended at once.
//!
//! Each committed batch's orders get signed receipts (`baton_proto::receipt`): one leaf per
//! order, one Merkle tree and one operator signature per batch, so the per-order cost is a few
//! SHA-256 compressions rather than an ed25519 signature.

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
    pub(crate) seq: u64,
    /// `None` only if signing failed (logged); the order is durable either way.
    pub(crate) receipt: Option<pb::Receipt>,
}

/// What the commit task is asked to do, in arrival order.
pub(crate) enum CommitItem {
    /// Append an order, then put it in its book and reply with its seq and receipt.
    Order(ValidOrder, oneshot::Sender<Result<Accepted, ServiceError>>),
    /// Append a cancel, then take the order out of its book and reply with its seq.
    Cancel(ValidCancel, oneshot::Sender<Result<u64, ServiceError>>),
    /// Reply once everything queued before it is appended (the scheduler's gate closure).
    Barrier(oneshot::Sender<()>),
    /// Stop after everything queued before it.
    Stop,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<CommitItem>) {
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
            tracing::debug!(
                entries = n,
                ms = t0.elapsed().as_millis() as u64,
                "group commit"
            );
            r.map(Some)
        };
        let mut receipts = match &appended {
            Ok(Some(r)) => sign_receipts(&shared, &batch, r.first_seq),
            _ => Vec::new(),
        }
        .into_iter();
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
                            st.insert_order(v.record, *s);
                            let _ = reply.send(Ok(Accepted {
                                seq: *s,
                                receipt: receipts.next(),
                            }));
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
                            let _ = reply.send(Ok(*s));
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
    }
}

/// The receipts of a committed batch's orders, in batch order: leaves from the orders' hashes,
/// seqs and intervals and one wall-clock time for the batch, one signature. Empty (logged) if
/// signing fails, which only an invalid origin could cause and `run` refuses those at start.
fn sign_receipts(shared: &Shared, batch: &[CommitItem], first_seq: u64) -> Vec<pb::Receipt> {
    let accepted_at_ms = wall_now_ms();
    let mut seq = first_seq;
    let mut leaves = Vec::with_capacity(batch.len());
    for item in batch {
        match item {
            CommitItem::Order(v, _) => {
                leaves.push(ReceiptLeaf {
                    order_hash: v.order_hash,
                    ledger_seq: seq,
                    interval_start: v.record.interval_start,
                    accepted_at_ms,
                });
                seq += 1;
            }
            CommitItem::Cancel(..) => seq += 1,
            CommitItem::Barrier(_) | CommitItem::Stop => {}
        }
    }
    let key = &shared.receipt_key;
    match receipt::issue(
        &leaves,
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
