//! `baton serve`: the live market.
//!
//! Participants submit signed orders over gRPC (`baton.v1.MarketService`); each accepted order
//! is appended to the signed ledger before it is acknowledged (group commit batches concurrent
//! submissions into one append). A scheduler closes each interval's gate a configurable lead
//! before it starts, clears the frozen book with the engine, settles it and records the three
//! interval entries in one append, then publishes the result and every participant's fills.
//! The operator drives the market through `baton.v1.AdminService` (requests signed by the
//! operator key); anyone can read and check the ledger through `baton.v1.AuditService`.
//!
//! **Architecture Invariant:** an acknowledgement means durable: no ack is sent before the
//! ledger append that holds the order has committed, and the in-memory book only ever holds
//! orders that are in the ledger. On restart the state is rebuilt from the ledger alone
//! (participants, network, nonces, open books, cleared intervals).
//!
//! **Architecture Invariant:** an interval is cleared at most once: only the scheduler task
//! clears, it skips intervals the ledger already records, and the gate of an interval is closed
//! (no more intake) and the intake queue drained before its book is frozen.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use baton_ledger::{Ledger, LedgerError, OperatorKey};
use baton_proto::v1 as pb;
use ed25519_dalek::VerifyingKey;
use rust_decimal::Decimal;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle};

pub mod clock;
pub mod error;

mod admin;
mod audit;
mod cluster;
mod commit;
mod connections;
mod market;
mod metering;
mod metrics;
mod recover;
mod scheduler;
mod state;

pub use clock::{Clock, ScaledClock, WallClock};
pub use cluster::{LEASE_MS_DEFAULT, LEASE_MS_MIN};
pub use error::ServiceError;

/// Largest serialized `Order` accepted, bytes. Sixteen blocks with long decimals and ids stay
/// under 1 KiB; four times that leaves room without letting a client make the ledger store
/// megabytes per order.
pub const ORDER_BYTES_MAX: usize = 4 * 1024;
/// Largest serialized `CancelRequest` or `ParticipantQuery`, bytes.
pub const REQUEST_BYTES_MAX: usize = 1024;
/// Largest serialized `AdminRequest`, bytes: a scenario's TOML text rides in it.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest gRPC message the server decodes, bytes (an admin request plus framing).
pub const GRPC_MESSAGE_BYTES_MAX: usize = ADMIN_REQUEST_BYTES_MAX + 64 * 1024;
/// The wire's own limits (`baton_proto::wire`): longest decimal string and participant id.
pub use baton_proto::wire::{DECIMAL_CHARS_MAX, PARTICIPANT_ID_BYTES_MAX};
/// Orders waiting for the group-commit task. When full, intake answers RESOURCE_EXHAUSTED
/// rather than queueing without bound.
pub const INTAKE_QUEUE_DEPTH_MAX: usize = 8_192;
/// Entries in one group-commit append: bounds one transaction's size and latency.
pub const GROUP_COMMIT_ENTRIES_MAX: usize = 2_048;
/// Orders in one `SubmitOrders` stream.
pub const STREAM_ORDERS_MAX: usize = 100_000;
/// Orders returned by one `ListOrders`.
pub const LIST_ORDERS_MAX: usize = 10_000;
/// Cleared intervals whose results stay in memory for `GetIntervalResult` (a day of
/// five-minute intervals).
pub const RESULTS_KEPT_MAX: usize = 288;
/// Results a slow watcher may fall behind before it misses some.
pub const WATCH_BUFFER_INTERVALS: usize = 64;
/// Concurrent requests per connection: one client cannot occupy every worker.
pub const CONCURRENT_REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// HTTP/2 flow-control window of one stream, bytes: how much of one call's request stream a
/// client may send before the server has read it.
///
/// Sized against h2's small-DATA-frame flood guard (h2 0.4.20, `Counts::record_data_frame`):
/// every unread DATA frame of under 256 bytes charges `256 - payload` bytes to a per-connection
/// budget of half the connection window (`DataFrameBudget::Auto`), refunded as the server reads
/// it; an empty budget closes the connection with `GOAWAY ENHANCE_YOUR_CALM
/// "too_many_data_frames"`. A client streaming one-block orders sends about one frame per
/// order (grpcio: 109-byte messages, 114-byte frames); taking 105 bytes as the smallest, a
/// frame charges 151 bytes per 105 bytes of window (1.44×). With hyper's default
/// 1 MiB stream and connection windows, one stalled stream may hold 1 MiB of such frames,
/// charging 1.44 MiB against a 512 KiB budget: the connection was cut whenever intake fell
/// behind for about a second. A stream window of 1/16 of the connection window keeps
/// `HTTP2_STALLED_STREAMS_SAFE` streams full of the smallest orders under the budget, so a
/// slow server slows its clients through flow control instead. 256 KiB in flight is still
/// 2,500 orders per stream: on a 50 ms round trip, 50,000 orders/s, more than intake verifies.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 flow-control window of one connection, bytes: the most unread request data one
/// connection holds in the server's memory (see `HTTP2_STREAM_WINDOW_BYTES`). Fixed: an
/// adaptive window would move the budget and the windows apart again.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Streams of one connection that may all stall full of ~105-byte order frames without
/// tripping h2's small-frame budget.
pub const HTTP2_STALLED_STREAMS_SAFE: u64 = 5;
/// Framing overhead h2 charges per byte of a ~105-byte DATA frame, as a ratio: 151 / 105.
const H2_SMALL_FRAME_CHARGE_PER_BYTE: (u64, u64) = (256 - 105, 105);
const _: () = assert!(
    HTTP2_STALLED_STREAMS_SAFE
        * HTTP2_STREAM_WINDOW_BYTES as u64
        * H2_SMALL_FRAME_CHARGE_PER_BYTE.0
        / H2_SMALL_FRAME_CHARGE_PER_BYTE.1
        <= HTTP2_CONNECTION_WINDOW_BYTES as u64 / 2
);
/// Default: connections open at once (`ServerConfig::connections_max`); further clients wait
/// in the listen backlog until one closes. Each connection may hold up to
/// `HTTP2_CONNECTION_WINDOW_BYTES` (4 MiB) of unread requests, so 512 bound that memory at
/// 2 GiB, and stay under the common 1,024 open-file limit with room for the ledger's files and
/// database pool. Participants' agents and gateways multiplex their calls over one connection
/// each (the simulator runs its whole population over one), so 512 is many clients, not calls.
pub const CONNECTIONS_MAX: usize = 512;
/// Entries returned by one `GetEntries`.
pub const AUDIT_ENTRIES_PER_READ_MAX: u64 = 1_000;
/// Largest tree an inclusion proof is computed over, entries: the proof is computed from every
/// entry hash (32 bytes each, so 32 MB at this size); larger ledgers need a stored tree.
pub const INCLUSION_PROOF_TREE_SIZE_MAX: u64 = 1_000_000;
/// Largest tree a consistency proof is computed to, entries: like an inclusion proof, it is
/// computed from every entry hash up to the newer size (32 bytes each, 32 MB at this size).
pub const CONSISTENCY_PROOF_TREE_SIZE_MAX: u64 = 1_000_000;
/// Longest gate lead, seconds (a day).
pub const GATE_LEAD_S_MAX: i64 = 86_400;
/// How long a server whose scheduler or group-commit task has died keeps answering before it
/// exits, milliseconds: long enough for health checks and clients in flight to see
/// NOT_SERVING and the reason orders are refused, short enough that a supervisor restarts it
/// promptly (recovery from the ledger is the way back).
pub const HALTED_SERVE_MS: u64 = 3_000;
/// Default: intervals ahead that accept orders.
pub const INTERVALS_AHEAD_DEFAULT: u32 = 12;
/// Default: seconds before an interval starts that its gate closes.
pub const GATE_LEAD_S_DEFAULT: i64 = 60;
/// Default: open orders per participant.
pub const OPEN_ORDERS_PER_PARTICIPANT_DEFAULT: usize = 256;
/// Default: orders one interval's book may hold in the live market. Each cleared interval is
/// recorded in the ledger, whose entries are bounded (`baton_ledger::entry::BODY_BYTES_MAX`,
/// 256 MiB): the compact result is about 160 bytes per order and the settlement less, so a
/// book of 1,000,000 orders records each entry well under the bound (`benches/cluster.rs`
/// prints the bytes per order).
pub const ORDERS_PER_INTERVAL_LIVE_DEFAULT: usize = 1_000_000;
/// Default: how far a signed request's timestamp may be from the server's wall clock, seconds.
pub const REQUEST_TIMESTAMP_WINDOW_S_DEFAULT: i64 = 300;

/// Default: seconds (market time) after an interval ends that its meter readings are
/// accepted; then the scheduler settles its delivery. Fifteen minutes gives meters and their
/// gateways three five-minute intervals to report, and keeps an interval's clearing in memory
/// (for settling its delivery) no longer than that.
pub const METER_DEADLINE_S_DEFAULT: i64 = 900;
/// Longest reading deadline, seconds (a week): the clearings of every interval still open
/// for readings stay in memory until their delivery is settled.
pub const METER_DEADLINE_S_MAX: i64 = 7 * 86_400;
/// The wire's limits on meter readings (`baton_proto::wire`).
pub use baton_proto::wire::{METER_READINGS_PER_CALL_MAX, METER_READING_BYTES_MAX};

/// Intake limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open orders one participant may hold across all intervals.
    pub open_orders_per_participant_max: usize,
    /// Orders one interval's book may hold.
    pub orders_per_interval_max: usize,
    /// How far a signed request's timestamp may be from the server's wall clock, seconds.
    pub request_timestamp_window_s: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            open_orders_per_participant_max: OPEN_ORDERS_PER_PARTICIPANT_DEFAULT,
            orders_per_interval_max: ORDERS_PER_INTERVAL_LIVE_DEFAULT,
            request_timestamp_window_s: REQUEST_TIMESTAMP_WINDOW_S_DEFAULT,
        }
    }
}

/// How to run the market.
pub struct ServerConfig {
    /// Ledger database: `sqlite://PATH` or `postgres://…`.
    pub db_url: String,
    /// Signs checkpoints and authenticates admin requests (its public key).
    pub operator_key: OperatorKey,
    /// The ledger's log name in checkpoints.
    pub origin: String,
    /// A native TOML scenario to load at start (network, grid, devices, flexibility).
    pub scenario: Option<String>,
    /// Interval length, minutes; intervals are aligned to UTC.
    pub interval_minutes: u32,
    /// The gate of an interval closes this many seconds before it starts.
    pub gate_lead_s: i64,
    /// Orders are accepted for this many intervals ahead.
    pub intervals_ahead: u32,
    /// Market time.
    pub clock: Arc<dyn Clock>,
    /// Overrides the scenario's price floor.
    pub price_floor: Option<Decimal>,
    /// Overrides the scenario's price cap.
    pub price_cap: Option<Decimal>,
    /// Intake limits.
    pub limits: Limits,
    /// Serve gRPC over TLS with this certificate chain and key (PEM); plaintext when `None`.
    pub tls: Option<TlsIdentity>,
    /// Connections open at once (default `CONNECTIONS_MAX`).
    pub connections_max: usize,
    /// Meter readings for an interval are accepted until this many seconds after it ends
    /// (default `METER_DEADLINE_S_DEFAULT`); then its delivery is settled.
    pub meter_deadline_s: i64,
    /// How metered delivery is settled (imbalance spread, flexibility shortfall penalty).
    pub delivery_rules: baton_engine::delivery::DeliveryRules,
    /// Run as one node of several on one PostgreSQL ledger (`None`: the only process).
    pub node: Option<NodeConfig>,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this listener.
    pub metrics_listener: Option<tokio::net::TcpListener>,
    /// Test hook: make a server task panic. Leave at the default.
    #[doc(hidden)]
    pub faults: FaultInjection,
}

/// One node of several `baton serve` processes on one PostgreSQL ledger.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id: unique among the nodes, in the lease and the intake rows it writes.
    pub id: String,
    /// Where other nodes' clients can reach this node's gRPC (default: the listener's
    /// address), named in followers' "not the leader" answers.
    pub advertise_addr: Option<String>,
    /// How long the leader's lease lasts without renewal, milliseconds
    /// (`LEASE_MS_DEFAULT`; at least `LEASE_MS_MIN`).
    pub lease_ms: i64,
}

impl NodeConfig {
    /// A node with the default lease.
    pub fn new(id: impl Into<String>) -> NodeConfig {
        NodeConfig {
            id: id.into(),
            advertise_addr: None,
            lease_ms: LEASE_MS_DEFAULT,
        }
    }
}

/// Test hook: makes one of the server's tasks panic, to exercise its supervision. Not a
/// setting: nothing outside tests sets it.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct FaultInjection {
    /// Once set, the scheduler panics at its next clock tick.
    pub scheduler_panics: Arc<AtomicBool>,
    /// Once set, the group-commit task panics on the next batch it takes.
    pub commit_panics: Arc<AtomicBool>,
}

impl FaultInjection {
    pub(crate) fn check(flag: &AtomicBool, task: &str) {
        if flag.load(Ordering::Relaxed) {
            panic!("fault injection: the {task} task panics");
        }
    }
}

/// A server certificate chain and its private key, PEM encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults: five-minute intervals, a 60 s gate lead, 12 intervals ahead, the wall clock.
    pub fn new(db_url: impl Into<String>, operator_key: OperatorKey) -> Self {
        ServerConfig {
            db_url: db_url.into(),
            operator_key,
            origin: "baton/ledger".into(),
            scenario: None,
            interval_minutes: baton_engine::model::INTERVAL_MINUTES_DEFAULT,
            gate_lead_s: GATE_LEAD_S_DEFAULT,
            intervals_ahead: INTERVALS_AHEAD_DEFAULT,
            clock: Arc::new(WallClock),
            price_floor: None,
            price_cap: None,
            limits: Limits::default(),
            tls: None,
            connections_max: CONNECTIONS_MAX,
            meter_deadline_s: METER_DEADLINE_S_DEFAULT,
            delivery_rules: baton_engine::delivery::DeliveryRules::default(),
            node: None,
            metrics_listener: None,
            faults: FaultInjection::default(),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The ledger could not be opened or read.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The start-up scenario was refused.
    #[error("scenario: {0}")]
    Scenario(ServiceError),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A task the market depends on (the scheduler, the group commit) ended or panicked while
    /// serving; the server refused orders, reported NOT_SERVING and stopped.
    #[error("market halted: {0}")]
    Halted(String),
}

/// One cleared interval as published.
#[derive(Debug)]
pub(crate) struct ClearedInterval {
    pub(crate) result: pb::IntervalResult,
    /// Fills per participant id.
    pub(crate) fills: BTreeMap<String, Vec<scheduler::Fill>>,
}

/// What `ClearNow` waits for.
pub(crate) type ClearNowReply = oneshot::Sender<Result<pb::ClearNowResponse, ServiceError>>;

/// Shared by the services, the scheduler and the group-commit task.
pub(crate) struct Shared {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) state: Mutex<state::MarketState>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) timing: state::Timing,
    pub(crate) limits: Limits,
    pub(crate) operator: VerifyingKey,
    /// Signs order receipts (the ledger's writer holds its own copy for checkpoints).
    pub(crate) receipt_key: OperatorKey,
    /// The ledger's log name, also the receipts' origin.
    pub(crate) origin: String,
    pub(crate) interval_minutes: u32,
    pub(crate) price_floor: Option<Decimal>,
    pub(crate) price_cap: Option<Decimal>,
    /// Serialises admin commands; holds the last admin nonce accepted.
    pub(crate) admin: tokio::sync::Mutex<u64>,
    pub(crate) commit_tx: mpsc::Sender<commit::CommitItem>,
    pub(crate) results_tx: broadcast::Sender<Arc<ClearedInterval>>,
    pub(crate) results: Mutex<BTreeMap<i64, Arc<ClearedInterval>>>,
    pub(crate) clear_now_tx: mpsc::Sender<ClearNowReply>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Where the network and the cleared intervals are in the ledger.
    pub(crate) index: Mutex<recover::LedgerIndex>,
    /// Why the market stopped, once a task it depends on has died: intake refuses everything
    /// with this reason from then on.
    pub(crate) halted: OnceLock<String>,
    pub(crate) faults: FaultInjection,
    /// Seconds after an interval ends that its readings are accepted.
    pub(crate) meter_deadline_s: i64,
    pub(crate) delivery_rules: baton_engine::delivery::DeliveryRules,
    /// Serialises reading intake with delivery settlement: held from checking a batch of
    /// readings to appending it, and from reading an interval's readings to appending its
    /// delivery settlement, so no reading lands after the settlement that leaves it out.
    pub(crate) metering: tokio::sync::Mutex<()>,
    /// Cleared intervals whose delivery is not settled yet: their market and clearing.
    pub(crate) awaiting_delivery: Mutex<BTreeMap<i64, Arc<metering::Cleared>>>,
    /// This node, when it is one of several on one database.
    pub(crate) cluster: Option<Arc<cluster::Node>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, state::MarketState> {
        // A panic while holding the lock is a bug already logged; the state itself stays
        // consistent between statements, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn index(&self) -> std::sync::MutexGuard<'_, recover::LedgerIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(Halted)` once the market has halted.
    pub(crate) fn check_running(&self) -> Result<(), ServiceError> {
        match self.halted.get() {
            Some(reason) => Err(ServiceError::Halted(reason.clone())),
            None => Ok(()),
        }
    }

    /// `Ok` unless this is a node of several that does not lead now (then who does).
    pub(crate) async fn check_leader(&self) -> Result<(), ServiceError> {
        match &self.cluster {
            Some(node) => node.check_leader().await,
            None => Ok(()),
        }
    }

    /// Why a task the request waited on went away: the market halted, or it is shutting down.
    pub(crate) fn gone(&self) -> ServiceError {
        self.check_running()
            .err()
            .unwrap_or(ServiceError::ShuttingDown)
    }
}

/// Waits for a task that has not been joined yet; never completes once it has.
async fn join(task: &mut Option<JoinHandle<()>>) -> Result<(), JoinError> {
    let Some(t) = task.as_mut() else {
        return std::future::pending().await;
    };
    let r = t.await;
    *task = None;
    r
}

/// How a task ended, for the log and the exit status.
fn task_end(name: &str, r: Result<(), JoinError>) -> String {
    match r {
        Ok(()) => format!("the {name} task ended"),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            format!("the {name} task panicked: {msg}")
        }
        Err(e) => format!("the {name} task failed: {e}"),
    }
}

/// Serves the market on `listener` until `shutdown` completes, then stops intake, lets the
/// scheduler finish an interval in progress and returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.interval_minutes == 0
        || config.interval_minutes > baton_engine::model::INTERVAL_MINUTES_MAX
    {
        return Err(ServeError::Config(format!(
            "interval_minutes must be 1 to {}",
            baton_engine::model::INTERVAL_MINUTES_MAX
        )));
    }
    if config.connections_max == 0 {
        return Err(ServeError::Config(
            "connections_max must be at least 1".into(),
        ));
    }
    if config.intervals_ahead == 0 {
        return Err(ServeError::Config(
            "intervals_ahead must be at least 1".into(),
        ));
    }
    let interval_s = i64::from(config.interval_minutes) * 60;
    if !(0..=METER_DEADLINE_S_MAX).contains(&config.meter_deadline_s) {
        return Err(ServeError::Config(format!(
            "meter_deadline_s must be 0 to {METER_DEADLINE_S_MAX}"
        )));
    }
    if !(0..=GATE_LEAD_S_MAX).contains(&config.gate_lead_s) {
        return Err(ServeError::Config(format!(
            "gate_lead_s must be 0 to {GATE_LEAD_S_MAX}"
        )));
    }
    let operator = *config.operator_key.public_key().as_dalek();
    let receipt_key = config.operator_key.clone();
    let origin = config.origin.clone();
    let ledger = Arc::new(
        Ledger::open(&config.db_url)
            .await?
            .with_operator(config.operator_key, &config.origin)?,
    );
    let node = match &config.node {
        None => None,
        Some(n) => {
            if n.lease_ms < LEASE_MS_MIN {
                return Err(ServeError::Config(format!(
                    "lease_ms must be at least {LEASE_MS_MIN}"
                )));
            }
            if n.id.is_empty() || n.id.len() > baton_proto::wire::PARTICIPANT_ID_BYTES_MAX {
                return Err(ServeError::Config(format!(
                    "node id must be 1 to {} bytes",
                    baton_proto::wire::PARTICIPANT_ID_BYTES_MAX
                )));
            }
            let c = ledger.cluster().map_err(|_| {
                ServeError::Config("several nodes (--node-id) need a postgres:// ledger".into())
            })?;
            // A follower until elected: nothing this node appends lands before then.
            ledger
                .set_fence(baton_ledger::cluster::Fence::Follower)
                .await?;
            let addr = match (&n.advertise_addr, listener.local_addr()) {
                (Some(a), _) => a.clone(),
                (None, Ok(a)) => a.to_string(),
                (None, Err(_)) => String::new(),
            };
            Some(Arc::new(cluster::Node {
                id: n.id.clone(),
                addr,
                cluster: c,
                lease_ms: n.lease_ms,
                leading: Mutex::new(None),
                applied: std::sync::atomic::AtomicU64::new(0),
                sequencing: tokio::sync::Mutex::new(()),
                scenario: config.scenario.clone(),
            }))
        }
    };
    let mut st = state::MarketState::default();
    let mut replica = baton_audit::Replica::new();
    let recovered = match &node {
        None => recover::rebuild(&ledger, &mut st).await?,
        Some(_) => {
            let mut bad = None;
            let r = recover::rebuild_with(&ledger, &mut st, |e| {
                if let Err(err) = replica.add(e) {
                    bad.get_or_insert(format!("seq {}: {err}", e.seq));
                }
            })
            .await?;
            if let Some(b) = bad {
                tracing::error!(error = %b, "the follower's replica does not replay the ledger");
            }
            r
        }
    };
    if let Some(n) = &node {
        n.applied
            .store(recovered.last_seq, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(
        entries = recovered.entries,
        participants = st.participants.len(),
        open_orders = st.books.values().map(|b| b.len()).sum::<usize>(),
        cleared = st.cleared.len(),
        "state rebuilt from the ledger"
    );
    let timing = state::Timing {
        interval_s,
        gate_lead_s: config.gate_lead_s,
        intervals_ahead: i64::from(config.intervals_ahead),
    };
    // The ledger records every interval up to the last one as closed, so market time had passed
    // at least its gate: resume there if the configured clock reads earlier.
    let recorded_ms = st
        .cleared
        .last()
        .map_or(i64::MIN, |&s| timing.gate_s(s).saturating_mul(1000));
    let clock: Arc<dyn Clock> = Arc::new(clock::MarketClock::resume(
        config.clock.clone(),
        recorded_ms,
    ));
    let (commit_tx, commit_rx) = mpsc::channel(INTAKE_QUEUE_DEPTH_MAX);
    let (results_tx, _) = broadcast::channel(WATCH_BUFFER_INTERVALS);
    let (clear_now_tx, clear_now_rx) = mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        ledger: ledger.clone(),
        state: Mutex::new(st),
        clock,
        timing,
        limits: config.limits.clone(),
        operator,
        receipt_key,
        origin,
        interval_minutes: config.interval_minutes,
        price_floor: config.price_floor,
        price_cap: config.price_cap,
        admin: tokio::sync::Mutex::new(recovered.admin_nonce),
        commit_tx,
        results_tx,
        results: Mutex::new(BTreeMap::new()),
        clear_now_tx,
        shutdown: shutdown_rx.clone(),
        index: Mutex::new(recovered.index),
        halted: OnceLock::new(),
        faults: config.faults.clone(),
        meter_deadline_s: config.meter_deadline_s,
        delivery_rules: config.delivery_rules.clone(),
        metering: tokio::sync::Mutex::new(()),
        awaiting_delivery: Mutex::new(BTreeMap::new()),
        cluster: node.clone(),
    });
    // Several nodes: the scenario is installed by the first node elected on a ledger without
    // a network (`cluster::run`).
    if let (Some(text), None) = (&config.scenario, &node) {
        admin::load_scenario_at_start(&shared, text)
            .await
            .map_err(ServeError::Scenario)?;
    }
    let (mut commit_task, mut scheduler_task) = if node.is_some() {
        (
            Some(tokio::spawn(cluster::intake(shared.clone(), commit_rx))),
            Some(tokio::spawn(cluster::run(
                shared.clone(),
                clear_now_rx,
                shutdown_rx.clone(),
                replica,
            ))),
        )
    } else {
        let (sh, down) = (shared.clone(), shutdown_rx.clone());
        (
            Some(tokio::spawn(commit::run(shared.clone(), commit_rx))),
            Some(tokio::spawn(async move {
                scheduler::run(sh, clear_now_rx, down).await;
            })),
        )
    };
    if let Some(l) = config.metrics_listener {
        tracing::info!(addr = ?l.local_addr().ok(), "metrics: serving GET /metrics");
        tokio::spawn(metrics::serve(l, shared.clone()));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::market_service_server::MarketServiceServer<market::MarketApi>>()
        .await;
    // Reflection in both versions: grpcurl and current clients speak v1; Python's
    // grpcio-reflection, older grpcurl and Postman speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;
    let market = pb::market_service_server::MarketServiceServer::new(market::MarketApi {
        shared: shared.clone(),
    })
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let admin = pb::admin_service_server::AdminServiceServer::new(admin::AdminApi {
        shared: shared.clone(),
    })
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let audit = pb::audit_service_server::AuditServiceServer::new(audit::AuditApi {
        shared: shared.clone(),
    });
    let addr = listener.local_addr().ok();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        ))?;
    }
    tracing::info!(?addr, tls = config.tls.is_some(), "baton serve: listening");
    let incoming = connections::incoming(listener, config.connections_max);
    // The supervisor's way to stop the server after a task died.
    let (halt_stop_tx, halt_stop_rx) = oneshot::channel::<()>();
    let served = builder
        .layer(tower::util::MapResponseLayer::new(
            error::oversize_is_resource_exhausted,
        ))
        .concurrency_limit_per_connection(CONCURRENT_REQUESTS_PER_CONNECTION_MAX)
        .http2_adaptive_window(Some(false))
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(market)
        .add_service(admin)
        .add_service(audit)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => tracing::info!("baton serve: shutting down"),
                _ = halt_stop_rx => tracing::error!("baton serve: stopping a halted market"),
            }
            let _ = shutdown_tx.send(true);
        });
    tokio::pin!(served);
    // Supervise the scheduler and the group commit while serving: if either ends (other than
    // the scheduler at shutdown) or panics, stop acknowledging, report NOT_SERVING, keep
    // answering for `HALTED_SERVE_MS` so clients and health checks see why, then stop and
    // return the reason.
    let mut halt_stop_tx = Some(halt_stop_tx);
    let mut failure: Option<String> = None;
    let served = loop {
        let reason = tokio::select! {
            r = &mut served => break r,
            r = join(&mut scheduler_task) => {
                if r.is_ok() && *shutdown_rx.borrow() {
                    continue;
                }
                task_end("scheduler", r)
            }
            r = join(&mut commit_task) => task_end("group-commit", r),
        };
        tracing::error!(%reason, "baton serve: market halted; refusing orders and stopping");
        let _ = shared.halted.set(reason.clone());
        health_reporter
            .set_not_serving::<pb::market_service_server::MarketServiceServer<market::MarketApi>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        failure.get_or_insert(reason);
        if let Some(tx) = halt_stop_tx.take() {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(HALTED_SERVE_MS)).await;
                let _ = tx.send(());
            });
        }
    };
    // The scheduler sees the shutdown signal (or its sender dropped) and finishes an interval
    // it is clearing; then the commit task drains what is queued before `Stop`.
    if let Some(t) = scheduler_task.take() {
        if let Err(e) = t.await {
            failure.get_or_insert(task_end("scheduler", Err(e)));
        }
    }
    let _ = shared.commit_tx.send(commit::CommitItem::Stop).await;
    if let Some(t) = commit_task.take() {
        if let Err(e) = t.await {
            failure.get_or_insert(task_end("group-commit", Err(e)));
        }
    }
    ledger.close().await;
    served?;
    match failure {
        Some(reason) => Err(ServeError::Halted(reason)),
        None => Ok(()),
    }
}
