//! `baton.v1.AuditService`: the ledger's head, entries, inclusion and consistency proofs
//! (public).

use pb::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

use crate::{call, pb, retrying, ClientError, MESSAGE_BYTES_MAX, REQUEST_TIMEOUT_MS};

/// A regulator's (or anyone's) read access to the ledger. Every call is a read and is
/// retried on transient failures.
#[derive(Clone, Debug)]
pub struct AuditClient {
    inner: AuditServiceClient<Channel>,
}

impl AuditClient {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        AuditClient {
            inner: AuditServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX),
        }
    }

    /// The last entry's seq and hash, and the latest signed checkpoint.
    pub async fn head(&self) -> Result<pb::GetHeadResponse, ClientError> {
        retrying(0, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetHead",
                    REQUEST_TIMEOUT_MS,
                    c.get_head(pb::GetHeadRequest {}),
                )
                .await
            }
        })
        .await
    }

    /// Entries `from..=to`, at most the server's page (page on with `from = last + 1`).
    pub async fn entries(&self, from: u64, to: u64) -> Result<Vec<pb::LedgerEntry>, ClientError> {
        let r = retrying(from, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetEntries",
                    REQUEST_TIMEOUT_MS,
                    c.get_entries(pb::GetEntriesRequest { from, to }),
                )
                .await
            }
        })
        .await?;
        Ok(r.entries)
    }

    /// An RFC 9162 inclusion proof of entry `seq` in the tree of the latest checkpoint.
    pub async fn inclusion_proof(
        &self,
        seq: u64,
    ) -> Result<pb::GetInclusionProofResponse, ClientError> {
        retrying(seq, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetInclusionProof",
                    REQUEST_TIMEOUT_MS,
                    c.get_inclusion_proof(pb::GetInclusionProofRequest { seq }),
                )
                .await
            }
        })
        .await
    }

    /// An RFC 9162 consistency proof between the server's checkpoints of sizes `from_size`
    /// and `to_size` (0: the latest), with both checkpoints as signed notes.
    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<pb::GetConsistencyProofResponse, ClientError> {
        retrying(from_size, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetConsistencyProof",
                    REQUEST_TIMEOUT_MS,
                    c.get_consistency_proof(pb::GetConsistencyProofRequest { from_size, to_size }),
                )
                .await
            }
        })
        .await
    }
}
