//! Group commit: one task appends every accepted order and cancel to the ledger, batching
//! whatever has queued up while the previous append ran into one transaction (one fsync, one
//! checkpoint), and only then answers the waiting requests. Under load the batch grows and the
//! per-order cost of the transaction shrinks; when idle, a lone order is appended at once.

use std::sync::Arc;

use baton_ledger::NewEntry;
use tokio::sync::{mpsc, oneshot};

use super::error::ServiceError;
use super::state::{ValidCancel, ValidOrder};
use super::{FaultInjection, Shared, GROUP_COMMIT_ENTRIES_MAX};

/// What the commit task is asked to do, in arrival order.
pub(crate) enum CommitItem {
    /// Append an order, then put it in its book and reply with its seq.
    Order(ValidOrder, oneshot::Sender<Result<u64, ServiceError>>),
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
                            let _ = reply.send(Ok(*s));
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
