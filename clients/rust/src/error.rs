//! [`ClientError`]: why a call failed, keeping the server's gRPC code and message.

use std::path::PathBuf;

use tonic::Code;

/// The message prefix of the server's `RESOURCE_EXHAUSTED` when its intake queue is full (the
/// only `RESOURCE_EXHAUSTED` worth retrying; the others are limits the caller reached).
pub const INTAKE_BUSY_MESSAGE_PREFIX: &str = "intake queue is full";

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server (or the transport under it) answered with a gRPC status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC code, e.g. `AlreadyExists`.
        code: Code,
        /// The server's message: it names the field or record at fault.
        message: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint URL.
        endpoint: String,
        /// The transport's reason, with its causes.
        reason: String,
    },
    /// The endpoint is not a valid URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is refused.
        reason: String,
    },
    /// A key file could not be read, written or parsed.
    #[error("key file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A receipt that does not verify (or a checkpoint note that does not).
    #[error("receipt: {0}")]
    Receipt(#[from] baton_proto::receipt::ReceiptError),
    /// A value the client refuses to send, or a server answer it cannot read.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// The gRPC code, if the server (or the transport) answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's message, if it answered with a status.
    pub fn message(&self) -> Option<&str> {
        match self {
            ClientError::Status { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed: the server was unreachable or
    /// overloaded, the connection broke, or no answer came in time. Only idempotent requests
    /// are retried (the same signed bytes, or reads).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Status { code, message } => match code {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    true
                }
                Code::ResourceExhausted => message.starts_with(INTAKE_BUSY_MESSAGE_PREFIX),
                _ => false,
            },
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }

    /// The server's last accepted nonce when it refused a request's nonce as not increasing
    /// (`ALREADY_EXISTS`, "… not greater than the last accepted nonce N").
    pub fn last_accepted_nonce(&self) -> Option<u64> {
        let ClientError::Status {
            code: Code::AlreadyExists,
            message,
        } = self
        else {
            return None;
        };
        let (_, tail) = message.rsplit_once("last accepted nonce ")?;
        tail.trim().parse().ok()
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ClientError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn timeout(what: &str, ms: u64) -> Self {
        ClientError::Status {
            code: Code::DeadlineExceeded,
            message: format!("{what}: no answer within {ms} ms"),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let mut message = s.message().to_string();
        // Transport failures come back as a status whose message is terse; the cause chain
        // says what actually happened (refused, reset, DNS).
        let mut cause = std::error::Error::source(&s);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            cause = c.source();
        }
        ClientError::Status {
            code: s.code(),
            message,
        }
    }
}

/// The canonical upper-case name of a gRPC code (`ALREADY_EXISTS`), as grpcurl and the gRPC
/// specification spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Joins an error and its causes into one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_accepted_nonce_is_read_from_the_servers_refusal() {
        let e = ClientError::Status {
            code: Code::AlreadyExists,
            message: "nonce: 5 is not greater than the last accepted nonce 1700000000123456".into(),
        };
        assert_eq!(e.last_accepted_nonce(), Some(1_700_000_000_123_456));
        let other = ClientError::Status {
            code: Code::AlreadyExists,
            message: "participant \"p1\" is already registered".into(),
        };
        assert_eq!(other.last_accepted_nonce(), None);
        assert_eq!(e.to_string().split(':').next(), Some("ALREADY_EXISTS"));
    }

    #[test]
    fn only_the_intake_queue_makes_resource_exhausted_transient() {
        let busy = ClientError::Status {
            code: Code::ResourceExhausted,
            message: "intake queue is full; retry".into(),
        };
        let limit = ClientError::Status {
            code: Code::ResourceExhausted,
            message: "open orders per participant: limit of 64 reached".into(),
        };
        assert!(busy.is_transient());
        assert!(!limit.is_transient());
        assert!(!ClientError::Status {
            code: Code::InvalidArgument,
            message: "x".into()
        }
        .is_transient());
    }
}
