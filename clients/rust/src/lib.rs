//! `baton-client`: typed async clients for a Baton market server (`baton serve`).
//!
//! - [`MarketClient`]: one participant's orders, cancels, orders and fills, signed with its
//!   [`ParticipantKey`]; [`PublicClient`]: the unsigned reads (market clock and limits,
//!   interval results) and [`PublicClient::submit_signed`] for gateways.
//! - [`AdminClient`]: the operator's commands, signed with the operator key ([`AdminKey`]).
//! - [`AuditClient`]: the ledger's head, entries, inclusion proofs and consistency proofs
//!   between checkpoints.
//!
//! Every client is built from a [`Channel`] ([`connect`]) and is cheap to clone; clones and
//! clients built from clones of one channel share one HTTP/2 connection, so hundreds of
//! agents can trade over a single connection.
//!
//! **Delivery.** [`MarketClient::submit`] signs an order once and, on a transient failure
//! (server unreachable, connection broken, timeout, intake queue full), sends the *same
//! signed bytes* again with bounded exponential backoff ([`RETRY_ATTEMPTS_MAX`],
//! [`RETRY_BACKOFF_INITIAL_MS`], [`RETRY_BACKOFF_MAX_MS`]). The server refuses a repeated
//! nonce with `ALREADY_EXISTS`; the client then fetches the order (its id is
//! `<participant>-<nonce>`) and returns the acknowledgement of the attempt that landed. So a
//! retried submit never creates a second order and never reports a failure for an order the
//! ledger holds. Nonces: see [`NonceCounter`].
//!
//! **Numbers** are [`Decimal`]s in the typed API and decimal strings on the wire; the
//! [`pb`] types the reads return carry strings, which [`decimal`] parses.
//!
//! ```no_run
//! use baton_client::{connect, pb, AdminClient, AdminKey, BlockSpec, MarketClient, NewOrder,
//!     NewParticipant, ParticipantKey};
//! use rust_decimal::Decimal;
//! use tokio_stream::StreamExt;
//!
//! # async fn demo() -> Result<(), baton_client::ClientError> {
//! let channel = connect("http://127.0.0.1:50051").await?;
//!
//! // The operator admits a participant.
//! let key = ParticipantKey::generate_to("keys/alice.key")?;
//! let admin = AdminClient::new(channel.clone(), AdminKey::load("keys/operator.key")?);
//! admin
//!     .register_participant(&NewParticipant {
//!         id: "alice".into(),
//!         node: "A".into(),
//!         public_key_hex: key.public_key_hex(),
//!         roles: vec![pb::ParticipantRole::Prosumer],
//!         capacity_kw: Some(Decimal::new(50, 0)),
//!     })
//!     .await?;
//!
//! // Alice sells 40 kW at 0.04 for the next open interval of the market's clock.
//! let alice = MarketClient::new(channel.clone(), "alice", key);
//! let info = alice.market_info().await?;
//! let ack = alice
//!     .submit(NewOrder::energy(
//!         info.next_open_interval,
//!         "A",
//!         pb::Side::Sell,
//!         vec![BlockSpec::priced(Decimal::new(40, 0), Decimal::new(4, 2))],
//!     ))
//!     .await?;
//! println!("{} is in the ledger at seq {}", ack.order_id, ack.ledger_seq);
//!
//! // Her fills as intervals clear.
//! let mut fills = alice.watch_fills().await?;
//! while let Some(fill) = fills.next().await {
//!     let fill = fill?;
//!     println!("{}: {} kW, paid {}", fill.order_id, fill.accepted_total, fill.payment);
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

pub use baton_proto::v1 as pb;
pub use rust_decimal::Decimal;
pub use tonic::transport::Channel;
pub use tonic::Code;

mod admin;
mod audit;
pub mod error;
pub mod key;
mod market;
pub mod nonce;
pub mod receipt;

pub use admin::{
    AdminClient, FlexDirection, FlexRequirement, NewParticipant, ADMIN_NONCE_RESYNCS_MAX,
    CLEAR_NOW_TIMEOUT_MS, PARTICIPANT_PAGES_MAX,
};
pub use audit::AuditClient;
/// Most meter readings in one `SubmitMeterReadings` call.
pub use baton_proto::wire::METER_READINGS_PER_CALL_MAX;
pub use error::ClientError;
pub use key::{AdminKey, ParticipantKey};
pub use market::{
    order_id, sign_meter_reading, sign_order, Ack, BlockSpec, CancelAck, ClientStats, MarketClient,
    NewOrder, NewReading, PublicClient, LOOKUP_ATTEMPTS_MAX, NONCE_RESYNCS_MAX,
    SUBMIT_STREAM_ORDERS_MAX,
};
pub use nonce::NonceCounter;
pub use receipt::{read_receipt, verify_receipt, write_receipt, Receipt, ReceiptProof, Verdict};

/// How long establishing a connection may take, milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one unary call may wait for its answer, milliseconds. An order's ack waits for
/// the ledger's group commit, normally milliseconds; thirty seconds only trips on a server
/// that is stuck, and the submit is then retried.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long one `SubmitOrders` stream may take, milliseconds: up to
/// [`SUBMIT_STREAM_ORDERS_MAX`] orders validated and committed.
pub const STREAM_TIMEOUT_MS: u64 = 300_000;
/// HTTP/2 keep-alive ping interval, milliseconds: a broken connection under a long watch is
/// noticed within this plus [`KEEPALIVE_TIMEOUT_MS`].
pub const KEEPALIVE_INTERVAL_MS: u64 = 20_000;
/// How long a keep-alive ping may go unanswered, milliseconds.
pub const KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
/// Largest message a client decodes, bytes. Audit pages carry up to a thousand ledger
/// entries and an interval's input entry can be megabytes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Attempts of one idempotent call (the first included) before a transient failure is
/// returned.
pub const RETRY_ATTEMPTS_MAX: u32 = 8;
/// Wait before the first retry, milliseconds; it doubles for each further retry.
pub const RETRY_BACKOFF_INITIAL_MS: u64 = 50;
/// Longest wait between two attempts, milliseconds (before the spread added per client).
pub const RETRY_BACKOFF_MAX_MS: u64 = 2_000;

/// A stream of server messages (`WatchResults`, `WatchFills`).
pub type ResultStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, ClientError>> + Send + 'static>>;

/// The endpoint for `url` with the client's timeouts and keep-alive. A URL without a scheme
/// (`127.0.0.1:50051`) is taken as `http://`.
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, ClientError> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let ep = tonic::transport::Endpoint::from_shared(full).map_err(|e| ClientError::Endpoint {
        endpoint: url.to_string(),
        reason: error::chain(&e),
    })?;
    Ok(ep
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true))
}

/// Connects to a server now, so an unreachable one is reported here
/// ([`ClientError::Connect`]). The channel reconnects by itself after a broken connection.
pub async fn connect(url: &str) -> Result<Channel, ClientError> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            endpoint: url.to_string(),
            reason: error::chain(&e),
        })
}

/// Connects over TLS (an `https://` URL, or a bare `host:port`), trusting only the PEM
/// certificate authority `ca_pem` — a server started with `baton serve --tls-cert/--tls-key`.
/// `domain` overrides the name checked against the server's certificate (default: the URL's
/// host).
pub async fn connect_tls(
    url: &str,
    ca_pem: &[u8],
    domain: Option<&str>,
) -> Result<Channel, ClientError> {
    let https = if url.contains("://") {
        url.replacen("http://", "https://", 1)
    } else {
        format!("https://{url}")
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    if let Some(d) = domain {
        tls = tls.domain_name(d);
    }
    let failed = |e: tonic::transport::Error| ClientError::Connect {
        endpoint: url.to_string(),
        reason: error::chain(&e),
    };
    endpoint(&https)?
        .tls_config(tls)
        .map_err(failed)?
        .connect()
        .await
        .map_err(failed)
}

/// A channel that connects on first use (an unreachable server is then reported by the
/// first call, as `UNAVAILABLE`).
pub fn connect_lazy(url: &str) -> Result<Channel, ClientError> {
    Ok(endpoint(url)?.connect_lazy())
}

/// Parses a decimal string from the server (a price, quantity or amount); `field` names it in
/// the error.
pub fn decimal(field: &str, text: &str) -> Result<Decimal, ClientError> {
    Decimal::from_str(text)
        .map_err(|_| ClientError::invalid(field, format!("{text:?} is not a decimal number")))
}

/// The wire spelling of a decimal: no trailing zeros, never `-0`.
pub(crate) fn wire(d: Decimal) -> String {
    baton_proto::wire::format_decimal(d)
}

/// The wait before retry number `attempt` (1 for the first retry): exponential and capped,
/// plus a spread of up to half of it derived from `salt`, so clients that failed together do
/// not all come back at the same instant (deterministic: no random source).
pub(crate) fn backoff(attempt: u32, salt: u64) -> Duration {
    let base = RETRY_BACKOFF_INITIAL_MS
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(RETRY_BACKOFF_MAX_MS);
    let spread = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (base / 2 + 1);
    Duration::from_millis(base + spread)
}

/// One unary call with a deadline.
pub(crate) async fn call<T, Fut>(what: &str, timeout_ms: u64, fut: Fut) -> Result<T, ClientError>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.into()),
        Err(_) => Err(ClientError::timeout(what, timeout_ms)),
    }
}

/// Runs an idempotent call until it succeeds, fails for good, or [`RETRY_ATTEMPTS_MAX`]
/// attempts failed transiently.
pub(crate) async fn retrying<T, F, Fut>(salt: u64, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < RETRY_ATTEMPTS_MAX => {
                tokio::time::sleep(backoff(attempt, salt)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_a_bounded_spread() {
        for salt in [0u64, 1, 42, u64::MAX] {
            let waits: Vec<u64> = (1..=RETRY_ATTEMPTS_MAX)
                .map(|a| backoff(a, salt).as_millis() as u64)
                .collect();
            assert!(waits[0] >= RETRY_BACKOFF_INITIAL_MS);
            assert!(waits[0] <= RETRY_BACKOFF_INITIAL_MS * 3 / 2);
            for w in &waits {
                assert!(*w <= RETRY_BACKOFF_MAX_MS * 3 / 2, "{waits:?}");
            }
            assert!(waits[RETRY_ATTEMPTS_MAX as usize - 1] >= RETRY_BACKOFF_MAX_MS);
        }
    }

    #[test]
    fn endpoints_without_a_scheme_are_http_and_junk_is_refused() {
        assert_eq!(
            endpoint("127.0.0.1:1").unwrap().uri().scheme_str(),
            Some("http")
        );
        assert!(matches!(
            endpoint("http://exa mple"),
            Err(ClientError::Endpoint { .. })
        ));
    }
}
