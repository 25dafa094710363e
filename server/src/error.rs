//! Why the market refused a request, and the one place that maps it to a gRPC status.

use tonic::{Code, Status};

/// A refused request. Messages name the field or record at fault, without a trailing period.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The signature does not verify, or is not 64 bytes.
    #[error("signature does not verify for participant {0:?}")]
    BadSignature(String),
    /// No participant with this id (so no key to verify with).
    #[error("unknown participant {0:?}")]
    UnknownParticipant(String),
    /// The operator signature on an admin request does not verify.
    #[error("admin request signature does not verify with the operator key")]
    BadOperatorSignature,
    /// The participant is suspended.
    #[error("participant {0:?} is suspended")]
    Suspended(String),
    /// The participant does not hold the role the request needs.
    #[error("participant {participant:?} lacks the {role} role (holds: {holds})")]
    MissingRole {
        /// The participant.
        participant: String,
        /// The role needed.
        role: &'static str,
        /// The roles it holds, comma-separated.
        holds: String,
    },
    /// The order is for a node that is not the participant's.
    #[error("node: {node:?} is not participant {participant:?}'s node")]
    WrongNode {
        /// The participant.
        participant: String,
        /// The node it named.
        node: String,
    },
    /// The order belongs to someone else.
    #[error("order {0:?} is not the caller's")]
    NotYourOrder(String),
    /// A field is missing, malformed or out of range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field, e.g. `blocks[1].price`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The nonce is not greater than the last one accepted.
    #[error("nonce: {nonce} is not greater than the last accepted nonce {last}")]
    ReplayedNonce {
        /// The nonce sent.
        nonce: u64,
        /// The last accepted.
        last: u64,
    },
    /// Already registered.
    #[error("participant {0:?} is already registered")]
    AlreadyRegistered(String),
    /// A meter reading names a meter not registered for its participant (so no key to verify
    /// it with).
    #[error("meter_id: {meter:?} is not a meter registered for participant {participant:?}")]
    UnknownMeter {
        /// The participant.
        participant: String,
        /// The meter named.
        meter: String,
    },
    /// The meter id is already registered for the participant.
    #[error("meter_id: {meter:?} is already registered for participant {participant:?}")]
    MeterRegistered {
        /// The participant.
        participant: String,
        /// The meter.
        meter: String,
    },
    /// A second reading for one participant, node and interval.
    #[error("a meter reading of participant {participant:?} at node {node:?} for interval {interval} is already recorded")]
    DuplicateReading {
        /// The participant.
        participant: String,
        /// The node.
        node: String,
        /// The interval.
        interval: i64,
    },
    /// The interval does not accept readings now: not ended, not cleared, or past its
    /// deadline (its delivery settled).
    #[error("interval_start: {0}")]
    ReadingWindow(String),
    /// The interval's gate has closed (or the interval is not yet open).
    #[error("interval_start: {0}")]
    GateClosed(String),
    /// The market is paused.
    #[error("the market is paused")]
    Paused,
    /// No network is loaded.
    #[error("no network is loaded")]
    NoNetwork,
    /// The order is already cancelled or cleared.
    #[error("order {0:?} is no longer open")]
    NotOpen(String),
    /// A per-participant or per-interval limit is reached.
    #[error("{what}: limit of {limit} reached")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The server's intake queue is full.
    #[error("intake queue is full; retry")]
    Busy,
    /// Nothing with this id.
    #[error("{0} not found")]
    NotFound(String),
    /// The ledger failed; nothing was acknowledged.
    #[error("ledger: {0}")]
    Storage(String),
    /// Several nodes: this request needs the leader, and this node is not it (or no longer
    /// is). Nothing was written; send it to the leader the message names, or retry.
    #[error("this node is not the market's leader: {0}")]
    NotLeader(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A task the market depends on died; nothing is acknowledged any more.
    #[error("the market has halted and acknowledges nothing: {0}")]
    Halted(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        use ServiceError as E;
        let code = match &e {
            E::BadSignature(_)
            | E::UnknownParticipant(_)
            | E::BadOperatorSignature
            | E::UnknownMeter { .. } => Code::Unauthenticated,
            E::Suspended(_) | E::MissingRole { .. } | E::WrongNode { .. } | E::NotYourOrder(_) => {
                Code::PermissionDenied
            }
            E::InvalidField { .. } => Code::InvalidArgument,
            E::ReplayedNonce { .. }
            | E::AlreadyRegistered(_)
            | E::MeterRegistered { .. }
            | E::DuplicateReading { .. } => Code::AlreadyExists,
            E::GateClosed(_) | E::Paused | E::NoNetwork | E::NotOpen(_) | E::ReadingWindow(_) => {
                Code::FailedPrecondition
            }
            E::Limit { .. } | E::Busy => Code::ResourceExhausted,
            E::NotFound(_) => Code::NotFound,
            E::Storage(_) => Code::Internal,
            E::ShuttingDown | E::Halted(_) | E::NotLeader(_) => Code::Unavailable,
        };
        super::metrics::METRICS.refused(code);
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::info!(code = ?code, reason = %e, "request refused");
        }
        Status::new(code, e.to_string())
    }
}

impl From<baton_ledger::LedgerError> for ServiceError {
    fn from(e: baton_ledger::LedgerError) -> Self {
        match e {
            baton_ledger::LedgerError::Fenced(why) => ServiceError::NotLeader(why),
            e => ServiceError::Storage(e.to_string()),
        }
    }
}

/// The engine's refusal of one order (`baton_engine::validate`), as the field at fault: intake
/// checks one record, so the record's name is the request itself.
impl From<baton_engine::MarketError> for ServiceError {
    fn from(e: baton_engine::MarketError) -> Self {
        use baton_engine::MarketError as M;
        match e {
            M::BadNumber { field, reason, .. } => invalid(field, reason),
            M::UnknownNode { node, .. } => {
                invalid("node", format!("{node:?} is not in the network"))
            }
            M::BadDevice { reason, .. } => invalid("device", reason),
            M::BlockCount { count, .. } => invalid(
                "blocks",
                format!(
                    "has {count} blocks (1 to {} allowed)",
                    baton_engine::model::BLOCKS_PER_CURVE_MAX
                ),
            ),
            M::BadId { kind, id } => invalid(kind, format!("{id:?} is not a valid id")),
            other => invalid("order", other.to_string()),
        }
    }
}

/// Shorthand for an [`ServiceError::InvalidField`].
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// gRPC's status for a message over the receiver's size limit is RESOURCE_EXHAUSTED; tonic's
/// decoder answers OUT_OF_RANGE ("decoded message length too large"). No Baton handler answers
/// OUT_OF_RANGE, so every such status in a response's headers (a unary or client-streaming
/// call refused before or while reading its request) is the decode limit: rewrite it.
/// Server-streaming calls meet the limit in the handler instead ([`oversize_status`]).
pub(crate) fn oversize_is_resource_exhausted(
    mut response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    const GRPC_STATUS: &str = "grpc-status";
    let out_of_range = Code::OutOfRange as i32;
    let is_oversize = response
        .headers()
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        == Some(out_of_range);
    if is_oversize {
        response.headers_mut().insert(
            GRPC_STATUS,
            tonic::codegen::http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}

/// A request stream's decode error as the client should see it: a message over the size
/// limit (tonic's OUT_OF_RANGE) is RESOURCE_EXHAUSTED, as gRPC specifies.
pub(crate) fn oversize_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        Status::new(Code::ResourceExhausted, status.message().to_string())
    } else {
        status
    }
}
