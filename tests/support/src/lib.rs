//! Baton's integration-test harness, written once: used by every integration test (the `it`
//! binary in `tests/it/`) and by the live bench (`benches/intake.rs`).
//!
//! - **Clocks**: [`T0`], [`INTERVAL_S`], [`wall_s`], [`clock`]: the market under test runs on
//!   its own clock from a fixed instant; signed requests carry the real wall time.
//! - **Keys and signing**: the operator's seed ([`OPERATOR_SEED`]), participant keys
//!   ([`key`]), signed orders, queries and admin requests, and [`send_admin`], which sends a
//!   signed admin request to the RPC its command names.
//! - **Servers**: [`Server`] runs `baton_server::run` in-process on a loopback listener;
//!   [`ServeProcess`] runs the built `baton serve` as a child process and waits for the address
//!   it writes to `--ready-file` (a real readiness signal, not a scraped log line).
//! - **Ledgers**: [`TempLedger`] is a fresh ledger on SQLite (a file in a temporary directory)
//!   or PostgreSQL (a fresh schema, when `BATON_TEST_POSTGRES_URL` is set and non-empty; a
//!   loud SKIPPED line otherwise).

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_ledger::OperatorKey;
use baton_proto::v1 as pb;
use baton_server::{Clock, ScaledClock, ServeError, ServerConfig};
use ed25519_dalek::{Signer, SigningKey};
use pb::admin_request::Command as AdminCommand;
use pb::admin_service_client::AdminServiceClient;
use prost::Message;
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------------
// Paths and scenarios

/// The repository root (the `baton` package's directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("tests/support sits two levels below the repository root")
}

/// A file in `scenarios/`.
pub fn scenario_path(name: &str) -> PathBuf {
    repo().join("scenarios").join(name)
}

/// The two-node market (`scenarios/two-node.toml`): the hand-worked case most tests trade on.
pub const TWO_NODE: &str = include_str!("../../../scenarios/two-node.toml");
/// The IEEE 33-bus feeder (`scenarios/ieee33-feeder.toml`).
pub const FEEDER: &str = include_str!("../../../scenarios/ieee33-feeder.toml");

// ---------------------------------------------------------------------------------------------
// Clocks

/// The interval length of every test market, seconds.
pub const INTERVAL_S: i64 = 300;
/// The gate lead of in-process test servers, seconds.
pub const GATE_LEAD_S: i64 = 60;
/// Intervals ahead an in-process test server accepts orders for.
pub const INTERVALS_AHEAD: u32 = 3;
/// An aligned market instant well away from the real one (2027-01-15 08:00 UTC): the market
/// under test runs on its own clock, which starts one second into `T0` (see [`clock`]), so the
/// first open interval is `T0 + INTERVAL_S`, whose gate closes at `T0 + 240`.
pub const T0: i64 = 1_800_000_000 - 1_800_000_000 % INTERVAL_S;
/// 11:00 UTC on `T0`'s day: the sun is up, so PV owners have a surplus to sell.
pub const T0_MIDDAY: i64 = T0 - T0 % 86_400 + 11 * 3600;
/// Real seconds a test waits for a server to stop.
pub const STOP_WAIT_S: u64 = 30;
/// Real seconds a test waits for a `baton serve` child to be ready (a cold start may replay a
/// ledger).
pub const READY_WAIT_S: u64 = 60;

/// The real wall clock, Unix seconds: what signed requests carry as their timestamp.
pub fn wall_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A market clock one second into [`T0`], running `scale` market seconds per real second.
pub fn clock(scale: f64) -> Arc<dyn Clock> {
    clock_from(T0, scale)
}

/// A market clock one second into `t0`, running `scale` market seconds per real second.
pub fn clock_from(t0: i64, scale: f64) -> Arc<dyn Clock> {
    Arc::new(ScaledClock::new((t0 + 1) * 1000, scale))
}

/// A market clock the test moves by hand ([`ManualClock::set_s`]); clones share the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicI64>);

impl ManualClock {
    /// A clock reading `t` unix seconds.
    pub fn at_s(t: i64) -> ManualClock {
        ManualClock(Arc::new(std::sync::atomic::AtomicI64::new(t * 1000)))
    }

    /// Moves the clock to `t` unix seconds (forward or back).
    pub fn set_s(&self, t: i64) {
        self.0.store(t * 1000, std::sync::atomic::Ordering::SeqCst);
    }

    /// The clock as a server's [`Clock`].
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `reading` encoded and signed by `key` (the participant's or its meter's).
pub fn sign_reading(key: &SigningKey, reading: &pb::MeterReading) -> pb::SignedMeterReading {
    let bytes = reading.encode_to_vec();
    pb::SignedMeterReading {
        signature: key.sign(&bytes).to_bytes().to_vec(),
        reading: bytes,
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and signing

/// The seed of the operator key every in-process test server trusts.
pub const OPERATOR_SEED: [u8; 32] = [7; 32];

/// The operator key of in-process test servers.
pub fn operator() -> OperatorKey {
    OperatorKey::from_seed(&OPERATOR_SEED)
}

/// A participant key from the seed `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// `order` encoded and signed by `key`.
pub fn sign_order(key: &SigningKey, order: &pb::Order) -> pb::SignedOrder {
    let bytes = order.encode_to_vec();
    pb::SignedOrder {
        signature: key.sign(&bytes).to_bytes().to_vec(),
        order: bytes,
    }
}

/// A participant query (fills, orders, one order when `order_id` is not empty) signed now.
pub fn query(key: &SigningKey, participant: &str, order_id: &str) -> pb::SignedRequest {
    let request = pb::ParticipantQuery {
        participant_id: participant.into(),
        timestamp: wall_s(),
        order_id: order_id.into(),
        interval_start: 0,
    }
    .encode_to_vec();
    pb::SignedRequest {
        signature: key.sign(&request).to_bytes().to_vec(),
        request,
    }
}

/// An admin request with `nonce`, signed now by the test operator ([`OPERATOR_SEED`]).
pub fn admin_request(nonce: u64, command: AdminCommand) -> pb::SignedAdminRequest {
    admin_request_by(&operator(), nonce, command)
}

/// An admin request with `nonce`, signed now by `operator`.
pub fn admin_request_by(
    operator: &OperatorKey,
    nonce: u64,
    command: AdminCommand,
) -> pb::SignedAdminRequest {
    let request = pb::AdminRequest {
        timestamp: wall_s(),
        nonce,
        command: Some(command),
    }
    .encode_to_vec();
    pb::SignedAdminRequest {
        signature: operator.sign(&request).to_vec(),
        request,
    }
}

/// The command registering `id` (a prosumer with `key`) at `node` with `capacity_kw`.
pub fn register_command(id: &str, key: &SigningKey, node: &str, capacity_kw: &str) -> AdminCommand {
    AdminCommand::RegisterParticipant(pb::RegisterParticipant {
        participant_id: id.into(),
        public_key_hex: hex::encode(key.verifying_key().to_bytes()),
        node: node.into(),
        roles: vec!["prosumer".into()],
        capacity_kw: capacity_kw.into(),
        ..Default::default()
    })
}

/// Sends a signed mutating admin request to the RPC its command names.
pub async fn send_admin(channel: &Channel, r: pb::SignedAdminRequest) -> Result<(), tonic::Status> {
    use AdminCommand as C;
    let mut c = AdminServiceClient::new(channel.clone());
    let cmd = pb::AdminRequest::decode(r.request.as_slice())
        .expect("an admin request the harness encoded")
        .command
        .expect("an admin request with a command");
    match cmd {
        C::RegisterParticipant(_) => c.register_participant(r).await.map(|_| ()),
        C::SuspendParticipant(_) => c.suspend_participant(r).await.map(|_| ()),
        C::LoadScenario(_) => c.load_scenario(r).await.map(|_| ()),
        C::SetGridPrices(_) => c.set_grid_prices(r).await.map(|_| ()),
        C::PostFlexRequirement(_) => c.post_flex_requirement(r).await.map(|_| ()),
        C::Pause(_) => c.pause(r).await.map(|_| ()),
        C::Resume(_) => c.resume(r).await.map(|_| ()),
        C::ClearNow(_) => c.clear_now(r).await.map(|_| ()),
        C::RegisterMeter(_) => c.register_meter(r).await.map(|_| ()),
        other => panic!("not a mutating command: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

/// The configuration of an in-process test server on `db_url`: the test operator, the market
/// clock one second into [`T0`] at real speed, a [`GATE_LEAD_S`] gate, [`INTERVALS_AHEAD`]
/// open intervals and the two-node market. Tests change fields as they need.
pub fn config(db_url: &str) -> ServerConfig {
    let mut c = ServerConfig::new(db_url, operator());
    c.clock = clock(1.0);
    c.gate_lead_s = GATE_LEAD_S;
    c.intervals_ahead = INTERVALS_AHEAD;
    c.scenario = Some(TWO_NODE.to_string());
    c
}

/// Opens a plaintext channel to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// `baton_server::run` in this process on 127.0.0.1:0, as a tokio task. Dropping it asks the
/// server to stop without waiting; [`Server::stop`] waits and checks it stopped cleanly.
pub struct Server {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The ledger it writes.
    pub db_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and spawns the server with `config` on the current runtime.
    pub async fn start(config: ServerConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let db_url = config.db_url.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(baton_server::run(listener, config, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            db_url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Opens a plaintext channel to the server.
    pub async fn connect(&self) -> Channel {
        connect(&self.addr.to_string()).await
    }

    /// The server's task, to await what `run` returns by itself (e.g. a halted market's
    /// error); [`Server::stop`] then has nothing to wait for.
    pub fn take_task(&mut self) -> Option<tokio::task::JoinHandle<Result<(), ServeError>>> {
        self.task.take()
    }

    /// Asks the server to stop and waits until it has, checking it returned no error.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(STOP_WAIT_S), t)
                .await
                .expect("the server stops within the wait")
                .expect("the server task did not panic")
                .unwrap_or_else(|e| panic!("the server stopped with an error: {e}"));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `baton serve` command line (the binary at `baton`) on a SQLite ledger in `dir`, with
/// the operator key at `key` (generated with its `.pub` if missing) and `scenarios/SCENARIO`
/// loaded, logging warnings only. Callers add their own flags; [`ServeProcess::spawn`] adds
/// where to listen.
pub fn serve_command(baton: &str, dir: &Path, key: &Path, scenario: &str) -> Command {
    let mut c = Command::new(baton);
    c.arg("serve")
        .arg("--db")
        .arg(sqlite_url(dir))
        .arg("--operator-key")
        .arg(key)
        .arg("--scenario")
        .arg(scenario_path(scenario))
        .env("RUST_LOG", "warn");
    c
}

/// Standard-error lines kept from a `baton serve` child, to explain a failed start.
const SERVE_STDERR_LINES_KEPT_MAX: usize = 40;

/// The built `baton serve` as a child process on 127.0.0.1:0. Killed on drop, so a failed test
/// never leaves a server running.
pub struct ServeProcess {
    /// The child process.
    pub child: std::process::Child,
    /// The address the server listens on, as it wrote it to its ready file.
    pub addr: String,
    _ready_dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Spawns `command` — the `baton serve` command line with everything but where to listen
    /// (e.g. `Command::new(env!("CARGO_BIN_EXE_baton")).arg("serve").args([..])`) — with
    /// `--listen 127.0.0.1:0 --ready-file FILE`, and waits until FILE names the address.
    /// Standard error is drained (so the child never blocks on a full pipe) and every line is
    /// also sent to `lines` if given.
    pub fn spawn(mut command: Command, lines: Option<mpsc::Sender<String>>) -> ServeProcess {
        let ready_dir = tempfile::Builder::new()
            .prefix("baton-ready")
            .tempdir()
            .expect("a temporary directory");
        let ready = ready_dir.path().join("addr");
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baton serve starts");
        let stderr = child.stderr.take().expect("a piped stderr");
        let kept = Arc::new(Mutex::new(Vec::<String>::new()));
        let kept_by_reader = kept.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                {
                    let mut k = kept_by_reader.lock().unwrap_or_else(|e| e.into_inner());
                    if k.len() == SERVE_STDERR_LINES_KEPT_MAX {
                        k.remove(0);
                    }
                    k.push(line.clone());
                }
                if let Some(tx) = &lines {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(READY_WAIT_S);
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text.trim().to_string();
            }
            let early = child.try_wait().expect("polling the child");
            if early.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader see the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let k = kept.lock().unwrap_or_else(|e| e.into_inner());
                panic!(
                    "baton serve was not ready ({}); its stderr ended:\n{}",
                    early.map_or_else(
                        || format!("no ready file within {READY_WAIT_S} s"),
                        |s| format!("exited: {s}")
                    ),
                    k.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ServeProcess {
            child,
            addr,
            _ready_dir: ready_dir,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL (a crash), then waits for the child.
    pub fn kill(&mut self) {
        self.child.kill().expect("killing baton serve");
        self.child.wait().expect("waiting for baton serve");
    }

    /// SIGTERM (a graceful stop), then waits for the child.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("waiting for baton serve");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Ledgers

/// The environment variable naming the PostgreSQL server for tests; unset or empty skips them.
pub const PG_ENV: &str = "BATON_TEST_POSTGRES_URL";

/// A fresh, empty ledger database; removed on drop (the directory, or the schema).
pub struct TempLedger {
    /// The ledger's URL (`sqlite://…` or `postgres://…`).
    pub url: String,
    dir: Option<tempfile::TempDir>,
    /// The server URL and the schema to drop.
    pg: Option<(String, String)>,
}

impl TempLedger {
    /// A ledger file `baton.db` in a fresh temporary directory.
    pub fn sqlite() -> TempLedger {
        let dir = tempfile::tempdir().expect("a temporary directory");
        TempLedger {
            url: sqlite_url(dir.path()),
            dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh schema on the PostgreSQL server named by [`PG_ENV`]; `None` with a loud
    /// SKIPPED line naming `what` (the test that did not run) when it is unset or empty.
    pub fn postgres(what: &str) -> Option<TempLedger> {
        let base = match std::env::var(PG_ENV) {
            Ok(u) if !u.trim().is_empty() => u,
            _ => {
                // Straight to the process's stderr: libtest captures `eprintln!` of passing
                // tests, and a skipped backend must not pass silently.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: {PG_ENV} unset or empty \u{2014} {what} did not run"
                );
                return None;
            }
        };
        let schema = format!("t_{}", hex::encode(rand::random::<[u8; 6]>()));
        let statement = format!("CREATE SCHEMA {schema}");
        let b = base.clone();
        on_own_runtime(async move {
            let pool = sqlx::PgPool::connect(&b)
                .await
                .unwrap_or_else(|e| panic!("connecting to {PG_ENV}: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .expect("creating the test schema");
            pool.close().await;
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(TempLedger {
            url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            dir: None,
            pg: Some((base, schema)),
        })
    }

    /// The temporary directory of a SQLite ledger (room for keys and other files).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for TempLedger {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg.take() {
            on_own_runtime(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&base).await {
                    let _ =
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                            .execute(&pool)
                            .await;
                    pool.close().await;
                }
            });
        }
    }
}

/// `sqlite://DIR/baton.db`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("baton.db").display())
}

/// Runs `f` to completion on a runtime of its own thread: callable from synchronous tests and
/// from inside a tokio runtime alike.
fn on_own_runtime(f: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Every entry of an open ledger, page by page.
pub async fn all_entries(ledger: &baton_ledger::Ledger) -> Vec<baton_ledger::Entry> {
    let mut out: Vec<baton_ledger::Entry> = Vec::new();
    loop {
        let from = out.last().map_or(1, |e| e.seq + 1);
        let page = ledger
            .entries(from, u64::MAX)
            .await
            .expect("reading the ledger");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Appends `entries` afresh into the empty ledger at `url` with the test operator's key, as a
/// dishonest operator rewriting history would: every hash, Merkle root and checkpoint
/// signature of the result is valid.
pub async fn re_sign(entries: Vec<baton_ledger::Entry>, url: &str) {
    let l = baton_ledger::Ledger::open(url)
        .await
        .expect("opening the rewritten ledger")
        .with_operator(operator(), "baton/ledger")
        .expect("the origin");
    l.append(
        entries
            .into_iter()
            .map(|e| baton_ledger::NewEntry::new(e.kind, e.interval_start, e.body))
            .collect(),
    )
    .await
    .expect("appending the rewritten entries");
    l.close().await;
}
