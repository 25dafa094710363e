//! The Python client (`clients/python/example.py`) against a real server: an in-process
//! `baton serve` on 127.0.0.1:0 with a temporary SQLite ledger, a participant registered through
//! the admin API with a key file the test writes, and the script run as a subprocess. What the
//! script claims is checked from the server's side: `ListOrders`, the ledger's entries and the
//! offline audit, which verifies every signature Python made.
//!
//! Needs `python3` with grpcio, grpcio-tools and cryptography
//! (`python3 -m pip install -r clients/python/requirements.txt`). Without them the test says so
//! loudly and passes, unless `BATON_REQUIRE_PYTHON=1` (CI), where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_ledger::{EntryKind, Ledger, SignedMessageBody};
use baton_proto::v1 as pb;
use ed25519_dalek::{Signature, SigningKey};
use pb::admin_request::Command;
use pb::admin_service_client::AdminServiceClient;
use pb::market_service_client::MarketServiceClient;
use prost::Message;
use rust_decimal::Decimal;
use support::{INTERVAL_S, T0};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tonic::transport::Channel;
use tonic::Code;

const PARTICIPANT_SEED: [u8; 32] = [11; 32];
const PARTICIPANT: &str = "py-alice";
/// The interval the script trades in: the first open one, whose gate (T0 + 240) is four real
/// minutes away at 1× time, so only `ClearNow` closes it during the test.
const INTERVAL: i64 = T0 + INTERVAL_S;
/// What the script buys and sells at node A: odd decimals, to show they arrive digit for digit.
const BUY: &str = "13.2@0.452";
const SELL: &str = "6.4@0.041";
/// Real seconds the script may take for one phase (interpreter start, stub generation, RPCs).
const SCRIPT_WAIT_S: u64 = 60;
/// What the script is told to wait for its fills; longer than the test waits for it.
const WATCH_S: u64 = 90;

fn repo() -> &'static Path {
    support::repo()
}

/// The Python interpreter if it has the client's modules. Otherwise: a loud skip (returns
/// `None`), or a failure naming the install command when `BATON_REQUIRE_PYTHON=1`.
fn python_or_skip() -> Option<String> {
    let python = std::env::var("BATON_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, cryptography"])
        .output();
    let problem = match probe {
        Ok(o) if o.status.success() => return Some(python),
        Ok(o) => format!(
            "{python} lacks the client's modules ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Err(e) => format!("{python} cannot run: {e}"),
    };
    let how = "install them with `python3 -m pip install -r clients/python/requirements.txt`";
    if std::env::var("BATON_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("BATON_REQUIRE_PYTHON=1 but {problem}; {how}");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: the Python client test did not run: {problem}\n\
         *** {how} (set BATON_REQUIRE_PYTHON=1 to make this a failure)\n"
    );
    None
}

/// A server at 1× market time from T0 + 1 s with the two-node network loaded.
struct Harness {
    addr: String,
    db_url: String,
    market: MarketServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    admin_nonce: u64,
    server: support::Server,
}

async fn start(dir: &Path) -> Harness {
    let server = support::Server::start(support::config(&support::sqlite_url(dir))).await;
    let channel = server.connect().await;
    Harness {
        addr: server.addr.to_string(),
        db_url: server.db_url.clone(),
        market: MarketServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel),
        admin_nonce: 0,
        server,
    }
}

impl Harness {
    fn admin_request(&mut self, command: Command) -> pb::SignedAdminRequest {
        self.admin_nonce += 1;
        support::admin_request(self.admin_nonce, command)
    }

    async fn stop(&mut self) {
        self.server.stop().await;
    }
}

/// One line of the script's output: `EVENT key=value ... message=free text`.
#[derive(Debug)]
struct Event {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Event {
    fn parse(line: &str) -> Event {
        let (head, message) = match line.split_once(" message=") {
            Some((h, m)) => (h, Some(m)),
            None => (line, None),
        };
        let mut words = head.split(' ');
        let name = words.next().unwrap_or_default().to_string();
        let mut fields: BTreeMap<String, String> = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(m) = message {
            fields.insert("message".into(), m.into());
        }
        Event { name, fields }
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}: {self:?}", self.name))
    }
}

/// The stdout lines of one run of the script.
struct Run {
    lines: Vec<String>,
}

impl Run {
    fn events(&self, name: &str) -> Vec<Event> {
        self.lines
            .iter()
            .map(|l| Event::parse(l))
            .filter(|e| e.name == name)
            .collect()
    }

    fn one(&self, name: &str, key: &str, value: &str) -> Event {
        let mut found: Vec<Event> = self
            .events(name)
            .into_iter()
            .filter(|e| e.fields.get(key).map(String::as_str) == Some(value))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "want one {name} with {key}={value} in:\n{}",
            self.lines.join("\n")
        );
        found.pop().unwrap()
    }
}

/// Runs the example script with `args`; see [`run_python`].
async fn run_script<F, Fut>(python: &str, args: &[String], cache: &Path, on_line: F) -> Run
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let script = repo().join("clients/python/example.py");
    let mut argv = vec![script.into_os_string()];
    argv.extend(args.iter().map(Into::into));
    run_python(python, &argv, cache, on_line).await
}

/// Runs `python ARGV` with the client on its path; `on_line` sees each stdout line as it
/// arrives and may act on it (close the gate when the script says it is watching, stop the
/// server while it streams). Fails the test if the script goes quiet for `SCRIPT_WAIT_S` or
/// does not exit 0.
async fn run_python<F, Fut>(
    python: &str,
    argv: &[std::ffi::OsString],
    cache: &Path,
    mut on_line: F,
) -> Run
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut child = tokio::process::Command::new(python)
        .args(argv)
        .env("PYTHONPATH", repo().join("clients/python"))
        // Generated stubs go to the test's directory, not the user's cache.
        .env("BATON_PROTO_CACHE", cache)
        // Leave no __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(SCRIPT_WAIT_S), out.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the script printed nothing for {SCRIPT_WAIT_S} s after:\n{}",
                    lines.join("\n")
                )
            })
            .unwrap();
        let Some(line) = next else { break };
        eprintln!("python: {line}");
        lines.push(line.clone());
        on_line(line).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(SCRIPT_WAIT_S), child.wait())
        .await
        .expect("the script exits after closing its output")
        .unwrap();
    let err = stderr_task.await.unwrap();
    assert!(
        status.success(),
        "python {argv:?} failed ({status}):\n{}\nstderr:\n{err}",
        lines.join("\n")
    );
    Run { lines }
}

fn query(key: &SigningKey, order_id: &str) -> pb::SignedRequest {
    support::query(key, PARTICIPANT, order_id)
}

fn blocks(spec: &str) -> Vec<pb::Block> {
    spec.split(',')
        .map(|b| {
            let (q, p) = b.split_once('@').unwrap_or((b, ""));
            pb::Block {
                quantity: q.into(),
                price: p.into(),
            }
        })
        .collect()
}

fn dec(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

/// The script signs and submits a buy and a sell, a forged order is refused, a third order is
/// cancelled, and after `ClearNow` it receives both fills; the server, the ledger and the
/// offline audit agree with every claim it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_signs_orders_the_ledger_records_and_sees_its_fills() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("stubs");
    let mut h = start(dir.path()).await;

    // The participant's key file, in the ledger's format: 64 lowercase hex and a newline.
    let key = SigningKey::from_bytes(&PARTICIPANT_SEED);
    let key_file: PathBuf = dir.path().join("py-alice.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode(PARTICIPANT_SEED))).unwrap();
    let r = h.admin_request(Command::RegisterParticipant(pb::RegisterParticipant {
        participant_id: PARTICIPANT.into(),
        public_key_hex: hex::encode(key.verifying_key().to_bytes()),
        node: "A".into(),
        roles: vec!["prosumer".into()],
        capacity_kw: "50".into(),
        ..Default::default()
    }));
    h.admin.register_participant(r).await.unwrap();

    let base: Vec<String> = [
        "--server",
        &format!("http://{}", h.addr),
        "--participant",
        PARTICIPANT,
        "--key",
        &key_file.display().to_string(),
        "--node",
        "A",
        "--interval-start",
        &INTERVAL.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut args = base.clone();
    for a in ["--buy", BUY, "--sell", SELL, "--cancel", "--watch-seconds"] {
        args.push(a.into());
    }
    args.push(WATCH_S.to_string());

    // When the script says it is watching, close the gate of its interval.
    let clear_request = h.admin_request(Command::ClearNow(pb::ClearNow {}));
    let admin = h.admin.clone();
    let cleared = Arc::new(std::sync::Mutex::new(None));
    let run = run_script(&python, &args, &cache, |line| {
        let (mut admin, cleared) = (admin.clone(), cleared.clone());
        let request = line.starts_with("watching ").then(|| clear_request.clone());
        async move {
            if let Some(r) = request {
                let c = admin.clear_now(r).await.unwrap().into_inner();
                *cleared.lock().unwrap() = Some(c);
            }
        }
    })
    .await;
    let cleared = cleared
        .lock()
        .unwrap()
        .take()
        .expect("the script reached its watch and the gate was closed");
    assert_eq!(cleared.interval_start, INTERVAL);
    assert!(cleared.ledger_last_seq > cleared.ledger_first_seq);

    // What the script claims.
    let buy = run.one("accepted", "blocks", BUY);
    let sell = run.one("accepted", "blocks", SELL);
    assert_eq!(buy.get("side"), "buy");
    assert_eq!(sell.get("side"), "sell");
    for a in [&buy, &sell] {
        assert_eq!(a.get("interval_start"), INTERVAL.to_string());
    }
    let refused = run.events("refused");
    assert_eq!(refused.len(), 1, "{:?}", run.lines);
    assert_eq!(refused[0].get("code"), "UNAUTHENTICATED");
    let forged_id = format!("{PARTICIPANT}-{}", refused[0].get("nonce"));
    let cancelled = run.events("cancelled");
    assert_eq!(cancelled.len(), 1, "{:?}", run.lines);
    let cancelled_id = cancelled[0].get("order_id").to_string();
    // Both fills, at A's price: solar 6.4 kW and the grid's import (0.30, marginal) serve the
    // 13.2 kW buy. Payments over 5 minutes: 13.2 × 0.30 / 12 = 0.33 paid, 6.4 × 0.30 / 12 =
    // 0.16 received.
    let buy_fill = run.one("fill", "order_id", buy.get("order_id"));
    let sell_fill = run.one("fill", "order_id", sell.get("order_id"));
    assert_eq!(dec(buy_fill.get("accepted_total")), dec("13.2"));
    assert_eq!(dec(sell_fill.get("accepted_total")), dec("6.4"));
    assert_eq!(dec(buy_fill.get("node_price")), dec("0.3"));
    assert_eq!(dec(buy_fill.get("payment")), dec("-0.33"));
    assert_eq!(dec(sell_fill.get("payment")), dec("0.16"));
    // Every fill of the interval is printed: one per cleared order, none for the cancelled one.
    assert_eq!(run.events("fill").len(), 2, "{:?}", run.lines);
    let result = run.one("result", "interval_start", &INTERVAL.to_string());
    assert_eq!(result.get("cleared"), "yes");
    assert_eq!(result.get("orders"), "2");

    // The server's side: exactly the three accepted orders, with the script's exact decimals.
    let listed = h
        .market
        .list_orders(query(&key, ""))
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let find = |id: &str| {
        listed
            .iter()
            .find(|o| o.order_id == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"))
    };
    let (b, s, c) = (
        find(buy.get("order_id")),
        find(sell.get("order_id")),
        find(&cancelled_id),
    );
    assert_eq!(b.blocks, blocks(BUY));
    assert_eq!(s.blocks, blocks(SELL));
    assert_eq!(
        (b.side, s.side),
        (pb::Side::Buy as i32, pb::Side::Sell as i32)
    );
    assert_eq!(b.status, pb::OrderStatus::Cleared as i32);
    assert_eq!(s.status, pb::OrderStatus::Cleared as i32);
    assert_eq!(c.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(dec(&b.accepted_total), dec("13.2"));
    assert_eq!(dec(&s.accepted_total), dec("6.4"));
    assert_eq!(b.ledger_seq.to_string(), buy.get("ledger_seq"));
    assert_eq!(s.ledger_seq.to_string(), sell.get("ledger_seq"));
    // The forgery left nothing behind.
    let e = h
        .market
        .get_order(query(&key, &forged_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // A second run that submits nothing sees the cleared orders and the result.
    let report = run_script(
        &python,
        &[base, vec!["--report-only".into()]].concat(),
        &cache,
        |_| async {},
    )
    .await;
    assert_eq!(report.events("accepted").len(), 0);
    let o = report.one("order", "order_id", buy.get("order_id"));
    assert_eq!(o.get("status"), "cleared");
    assert_eq!(o.get("blocks"), BUY);
    assert_eq!(dec(o.get("accepted_total")), dec("13.2"));
    let o = report.one("order", "order_id", &cancelled_id);
    assert_eq!(o.get("status"), "cancelled");
    let r = report.one("result", "interval_start", &INTERVAL.to_string());
    assert_eq!(r.get("cleared"), "yes");

    h.stop().await;

    // The ledger holds the bytes Python signed: they decode to the script's orders and verify
    // under the participant's key; the forged order is nowhere.
    let ledger = Ledger::open_existing(&h.db_url).await.unwrap();
    let entries = ledger.entries(1, u64::MAX).await.unwrap();
    ledger.close().await;
    for (ack, spec) in [(&buy, BUY), (&sell, SELL)] {
        let seq: u64 = ack.get("ledger_seq").parse().unwrap();
        let e = &entries[(seq - 1) as usize];
        assert_eq!(e.kind, EntryKind::Order);
        let body = SignedMessageBody::from_bytes(EntryKind::Order, &e.body).unwrap();
        assert_eq!(body.order_id.as_deref(), Some(ack.get("order_id")));
        let order = pb::Order::decode(body.payload.as_slice()).unwrap();
        assert_eq!(order.participant_id, PARTICIPANT);
        assert_eq!(order.interval_start, INTERVAL);
        assert_eq!(order.node, "A");
        assert_eq!(order.blocks, blocks(spec));
        key.verifying_key()
            .verify_strict(&body.payload, &Signature::from_bytes(&body.signature))
            .expect("the ledger's copy verifies under the participant key");
    }
    let signed: Vec<(EntryKind, SignedMessageBody)> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Order | EntryKind::Cancel))
        .map(|e| {
            (
                e.kind,
                SignedMessageBody::from_bytes(e.kind, &e.body).unwrap(),
            )
        })
        .collect();
    assert_eq!(signed.len(), 4, "three orders and one cancel");
    assert!(signed
        .iter()
        .all(|(_, b)| b.order_id.as_deref() != Some(forged_id.as_str())));
    // Orders and the cancel share one nonce sequence, strictly increasing in sending order.
    let nonces: Vec<u64> = signed
        .iter()
        .map(|(kind, b)| match kind {
            EntryKind::Order => pb::Order::decode(b.payload.as_slice()).unwrap().nonce,
            _ => {
                pb::CancelRequest::decode(b.payload.as_slice())
                    .unwrap()
                    .nonce
            }
        })
        .collect();
    assert!(nonces.windows(2).all(|w| w[0] < w[1]), "{nonces:?}");
    // The regulator's offline audit re-verifies all four Python signatures.
    let report = baton_ledger::audit::verify(&h.db_url, &support::operator().public_key(), None)
        .await
        .unwrap_or_else(|e| panic!("ledger verifies: {e}"));
    assert_eq!(report.participant_signatures, 4);
}

/// Orders the stall test streams: at about 105 bytes each (a one-block order, its signature
/// and gRPC framing), 2 MB, more than the server's windows hold while it is stopped.
const STALL_ORDERS: usize = 20_000;
/// How long the stall test stops the server, real milliseconds.
const STALL_MS: u64 = 1_000;

/// Streams `count` pre-signed one-block sells over one `SubmitOrderStream` call with grpcio
/// and reports every outcome: `progress outcomes=N` each thousand, then `done acked=N
/// refused=M`, or `cut code=… acked=N message=…` (exit 1) if the call fails.
const STREAM_SCRIPT: &str = r#"
import sys
import grpc
import baton_client as bc

server, participant, key_path, node, interval, count = sys.argv[1:7]
client = bc.MarketClient(bc.connect(server), participant, bc.ParticipantKey.load(key_path))
signed = [
    client.sign_order(client.order(int(interval), node, "sell", [("1", "0.05")]))
    for _ in range(int(count))
]
print(f"signed orders={len(signed)} bytes={signed[0].ByteSize()}", flush=True)
acked = refused = 0
try:
    for i, outcome in enumerate(client.submit_stream(signed, timeout_s=120)):
        assert outcome.index == i, (outcome.index, i)
        if outcome.HasField("accepted"):
            acked += 1
        else:
            refused += 1
            if refused == 1:
                print(f"refused code={outcome.refused.code} message={outcome.refused.message}", flush=True)
        if i % 1000 == 999:
            print(f"progress outcomes={i + 1}", flush=True)
except grpc.RpcError as e:
    print(f"cut code={e.code().name} acked={acked} message={e.details()}", flush=True)
    sys.exit(1)
print(f"done acked={acked} refused={refused}", flush=True)
"#;

/// A `baton serve` child process on two-node at 1× wall-clock time; killed when dropped.
struct ServeChild {
    serve: support::ServeProcess,
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        // Continue a SIGSTOPped child so that it dies (and is reaped) promptly.
        signal(self.serve.child.id(), "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid}");
}

fn spawn_serve(dir: &Path) -> ServeChild {
    let key = dir.join("operator.key");
    let mut command = support::serve_command(crate::BATON, dir, &key, "two-node.toml");
    command.args(["--open-orders-max", "1000000"]);
    ServeChild {
        serve: support::ServeProcess::spawn(command, None),
    }
}

/// Regression (issue 9, "streams cut under load"): a grpcio client streams small orders while
/// the server process is stopped for a second. The client fills the server's HTTP/2 windows
/// with small DATA frames meanwhile; when the server resumes it must take them and slow the
/// client through flow control, not close the connection with `GOAWAY ENHANCE_YOUR_CALM
/// "too_many_data_frames"` (h2's small-frame budget). Every order is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_order_stream_survives_a_stopped_server() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = spawn_serve(dir.path());
    let operator = baton_ledger::OperatorKey::load(&dir.path().join("operator.key")).unwrap();
    let channel = Channel::from_shared(format!("http://{}", serve.serve.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&PARTICIPANT_SEED);
    let request = pb::AdminRequest {
        timestamp: support::wall_s(),
        nonce: 1,
        command: Some(Command::RegisterParticipant(pb::RegisterParticipant {
            participant_id: PARTICIPANT.into(),
            public_key_hex: hex::encode(key.verifying_key().to_bytes()),
            node: "A".into(),
            roles: vec!["prosumer".into()],
            capacity_kw: "50".into(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    AdminServiceClient::new(channel.clone())
        .register_participant(pb::SignedAdminRequest {
            signature: operator.sign(&request).to_vec(),
            request,
        })
        .await
        .unwrap();
    // Two intervals after the first open one: its gate is minutes away at 1× time.
    let info = MarketServiceClient::new(channel)
        .get_market_info(pb::GetMarketInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let interval = info.next_open_interval + 2 * INTERVAL_S;
    let key_file = dir.path().join("py-alice.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode(PARTICIPANT_SEED))).unwrap();

    let argv: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        STREAM_SCRIPT.into(),
        format!("http://{}", serve.serve.addr).into(),
        PARTICIPANT.into(),
        key_file.into(),
        "A".into(),
        interval.to_string().into(),
        STALL_ORDERS.to_string().into(),
    ];
    // Once the stream is flowing, stop the server while the client keeps sending.
    let stalled = std::sync::atomic::AtomicBool::new(false);
    let pid = serve.serve.child.id();
    let run = run_python(&python, &argv, &dir.path().join("stubs"), |line| {
        let stalled = &stalled;
        async move {
            if line.starts_with("progress ") && !stalled.swap(true, Ordering::SeqCst) {
                signal(pid, "STOP");
                tokio::time::sleep(Duration::from_millis(STALL_MS)).await;
                signal(pid, "CONT");
            }
        }
    })
    .await;
    let lines = run.lines;
    let log = lines.join("\n");
    assert!(
        stalled.load(Ordering::SeqCst),
        "the stream never got going:\n{log}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("done acked={STALL_ORDERS} refused=0").as_str()),
        "{log}"
    );
    drop(serve);
}
