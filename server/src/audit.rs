//! `baton.v1.AuditService`: the ledger's head, entries, inclusion proofs and consistency proofs
//! between checkpoints, for anyone who holds the operator's public key and wants to check what
//! the market recorded (a regulator's witness follows the checkpoints with them).

use std::sync::Arc;

use baton_ledger::merkle;
use baton_proto::v1 as pb;
use pb::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::error::{invalid, ServiceError};
use super::{
    Shared, AUDIT_ENTRIES_PER_READ_MAX, CONSISTENCY_PROOF_TREE_SIZE_MAX,
    INCLUSION_PROOF_TREE_SIZE_MAX,
};

pub(crate) struct AuditApi {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_head(
        &self,
        _request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        let ledger = &self.shared.ledger;
        let head = ledger.head().await.map_err(ServiceError::from)?;
        let cp = ledger
            .latest_checkpoint()
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetHeadResponse {
            seq: head.as_ref().map(|h| h.seq).unwrap_or(0),
            hash: head.map(|h| h.hash.to_vec()).unwrap_or_default(),
            checkpoint: cp.map(|c| c.to_note()).unwrap_or_default(),
        }))
    }

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let r = request.get_ref();
        if r.from == 0 || r.to < r.from {
            return Err(invalid("from", "must be at least 1 and not after to").into());
        }
        let to =
            r.to.min(r.from.saturating_add(AUDIT_ENTRIES_PER_READ_MAX - 1));
        let entries = self
            .shared
            .ledger
            .entries(r.from, to)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetEntriesResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::LedgerEntry {
                    seq: e.seq,
                    kind: e.kind.as_str().to_string(),
                    interval_start: e.interval_start,
                    body: e.body,
                    prev_hash: e.prev_hash.to_vec(),
                    hash: e.hash.to_vec(),
                })
                .collect(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        let seq = request.get_ref().seq;
        let ledger = &self.shared.ledger;
        let cp = ledger
            .latest_checkpoint()
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound("checkpoint".into()))?;
        if seq == 0 || seq > cp.size {
            return Err(ServiceError::NotFound(format!(
                "entry {seq} in the latest checkpoint (size {})",
                cp.size
            ))
            .into());
        }
        if cp.size > INCLUSION_PROOF_TREE_SIZE_MAX {
            return Err(ServiceError::Limit {
                what: "inclusion proof tree size",
                limit: INCLUSION_PROOF_TREE_SIZE_MAX as usize,
            }
            .into());
        }
        let mut hashes = Vec::with_capacity(cp.size as usize);
        let mut from = 1;
        while from <= cp.size {
            let page = ledger
                .entries(from, cp.size)
                .await
                .map_err(ServiceError::from)?;
            let Some(last) = page.last() else {
                break;
            };
            from = last.seq + 1;
            hashes.extend(page.iter().map(|e| e.hash));
        }
        let path = merkle::inclusion_proof(&hashes, seq - 1)
            .ok_or_else(|| ServiceError::Storage("ledger shorter than its checkpoint".into()))?;
        Ok(Response::new(pb::GetInclusionProofResponse {
            seq,
            entry_hash: hashes[(seq - 1) as usize].to_vec(),
            tree_size: cp.size,
            root: cp.root.to_vec(),
            path: path.into_iter().map(|h| h.to_vec()).collect(),
            checkpoint: cp.to_note(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let r = request.get_ref();
        let ledger = &self.shared.ledger;
        if r.from_size == 0 {
            return Err(invalid(
                "from_size",
                "must be the size of a stored checkpoint (at least 1)",
            )
            .into());
        }
        if r.to_size != 0 && r.from_size > r.to_size {
            return Err(invalid(
                "from_size",
                format!("{} is after to_size {}", r.from_size, r.to_size),
            )
            .into());
        }
        // Checkpoints are append-only: what is read here is what the proof below reads.
        let to = if r.to_size == 0 {
            ledger
                .latest_checkpoint()
                .await
                .map_err(ServiceError::from)?
                .ok_or_else(|| {
                    ServiceError::NotFound("to_size: a checkpoint (the ledger has none yet)".into())
                })?
        } else {
            ledger
                .checkpoint_at(r.to_size)
                .await
                .map_err(ServiceError::from)?
                .ok_or_else(|| {
                    ServiceError::NotFound(format!("to_size: checkpoint of size {}", r.to_size))
                })?
        };
        if r.from_size > to.size {
            return Err(invalid(
                "from_size",
                format!(
                    "{} is after the latest checkpoint's size {}",
                    r.from_size, to.size
                ),
            )
            .into());
        }
        if ledger
            .checkpoint_at(r.from_size)
            .await
            .map_err(ServiceError::from)?
            .is_none()
        {
            return Err(ServiceError::NotFound(format!(
                "from_size: checkpoint of size {}",
                r.from_size
            ))
            .into());
        }
        if to.size > CONSISTENCY_PROOF_TREE_SIZE_MAX {
            return Err(ServiceError::Limit {
                what: "consistency proof tree size",
                limit: CONSISTENCY_PROOF_TREE_SIZE_MAX as usize,
            }
            .into());
        }
        let c = ledger
            .consistency_proof_between(r.from_size, to.size)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            from_size: c.old.size,
            to_size: c.new.size,
            from_checkpoint: c.old.to_note(),
            to_checkpoint: c.new.to_note(),
            path: c.proof.path.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }
}
