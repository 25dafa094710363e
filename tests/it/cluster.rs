//! Several `baton serve` processes on one PostgreSQL ledger (`--node-id`): orders streamed to
//! every node, the leader killed (SIGKILL) during intake and again while clearing, a stalled
//! leader (SIGSTOP past its lease) fenced when it resumes, a killed node restarted as a
//! follower, a watcher on a follower. Real processes, a real server; skipped loudly without
//! `BATON_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_ledger::{EntryKind, Ledger, OperatorKey};
use baton_proto::v1 as pb;
use baton_proto::v1::admin_request::Command as AdminCommand;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::market_service_client::MarketServiceClient;
use ed25519_dalek::SigningKey;
use tonic::Code;

use support::{key, sign_order, ServeProcess, TempLedger};

/// The leader's lease in these tests, ms: a dead leader is replaced within about this long.
const LEASE_MS: &str = "1000";
/// Longest wait for a leader to be elected or replaced, seconds.
const ELECTION_WAIT_S: u64 = 20;
/// Longest wait for an interval to be cleared, seconds.
const CLEAR_WAIT_S: u64 = 60;

/// One node: its process and every line of its standard error.
struct NodeProc {
    id: String,
    proc: ServeProcess,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    fn metrics_addr(&self) -> Option<String> {
        self.lines.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("baton: metrics on http://")
                .and_then(|r| r.strip_suffix("/metrics"))
                .map(str::to_string)
        })
    }

    fn signal(&self, sig: &str) {
        let pid = self.proc.child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }
}

/// `baton serve --node-id ID` on the ledger at `url`: one-minute intervals at 20× real time on
/// a clock shared through `anchor_ms` (a gate every 3 real seconds).
fn spawn_node(id: &str, url: &str, dir: &std::path::Path, anchor_ms: i64) -> NodeProc {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    std::thread::spawn(move || {
        for l in rx {
            kept.lock().unwrap().push(l);
        }
    });
    let mut c = Command::new(crate::BATON);
    c.arg("serve")
        .args(["--db", url, "--node-id", id, "--lease-ms", LEASE_MS])
        .arg("--operator-key")
        .arg(dir.join("operator.key"))
        .arg("--scenario")
        .arg(support::scenario_path("two-node.toml"))
        .args(["--interval-minutes", "1", "--gate-lead-seconds", "10"])
        .args(["--intervals-ahead", "2", "--time-scale", "20"])
        .args(["--time-anchor-ms", &anchor_ms.to_string()])
        .args(["--open-orders-max", "1000000"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            "warn,baton_server::cluster=info,baton_server::scheduler=info",
        );
    NodeProc {
        id: id.to_string(),
        proc: ServeProcess::spawn(c, Some(tx)),
        lines,
    }
}

/// The lease as stored (`None` until the first node has created the tables).
async fn try_lease(url: &str) -> Option<baton_ledger::cluster::LeaseView> {
    let l = Ledger::open_existing(url).await.ok()?;
    let v = l.cluster().ok()?.lease().await.ok();
    l.close().await;
    v
}

async fn lease(url: &str) -> baton_ledger::cluster::LeaseView {
    try_lease(url).await.expect("the lease is readable")
}

/// Waits until a node other than `not` holds a live lease; its id and epoch.
async fn await_leader(url: &str, not: Option<&str>) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(ELECTION_WAIT_S);
    loop {
        let l = try_lease(url).await;
        if let Some(l) = &l {
            if let Some(h) = &l.holder {
                if l.expires_in_ms > 0 && Some(h.as_str()) != not {
                    return (h.clone(), l.epoch);
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Admin {
    operator: OperatorKey,
    nonce: u64,
}

impl Admin {
    fn request(&mut self, command: AdminCommand) -> pb::SignedAdminRequest {
        self.nonce += 1;
        support::admin_request_by(&self.operator, self.nonce, command)
    }

    async fn status(&mut self, addr: &str) -> pb::StatusResponse {
        let r = self.request(AdminCommand::Status(pb::Status {}));
        AdminServiceClient::new(support::connect(addr).await)
            .status(r)
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls `addr`'s status until interval `t` is cleared there.
    async fn await_cleared(&mut self, addr: &str, t: i64) {
        let deadline = Instant::now() + Duration::from_secs(CLEAR_WAIT_S);
        while self.status(addr).await.last_cleared_interval < t {
            assert!(
                Instant::now() < deadline,
                "interval {t} not cleared at {addr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An acknowledged order.
#[derive(Clone, Debug)]
struct Ack {
    order_id: String,
    interval_start: i64,
    node: String,
    receipt: baton_proto::receipt::Receipt,
}

/// A trader at one node: alice sells at A, bob buys at B.
struct Trader {
    id: &'static str,
    key: SigningKey,
    node: &'static str,
    side: pb::Side,
    price: &'static str,
    nonce: u64,
}

impl Trader {
    fn order(&mut self, interval_start: i64) -> pb::SignedOrder {
        // Nonces from the wall clock in µs, like the SDK, so a second life never repeats one.
        self.nonce = (self.nonce + 1).max(support::wall_s() as u64 * 1_000_000);
        let o = pb::Order {
            participant_id: self.id.into(),
            nonce: self.nonce,
            interval_start,
            node: self.node.into(),
            side: self.side as i32,
            blocks: vec![pb::Block {
                quantity: "1".into(),
                price: self.price.into(),
            }],
            ..Default::default()
        };
        sign_order(&self.key, &o)
    }
}

/// Sends `rounds` orders to each node of `nodes` (by address), alternating the traders, for
/// the interval each node reports open; keeps every acknowledgement. Refusals must be a closed
/// gate (an interval closing between the info and the order) or an unreachable node.
async fn submit_round(
    nodes: &[(String, String)],
    traders: &mut [Trader],
    acks: &mut Vec<Ack>,
    rounds: usize,
) {
    for (id, addr) in nodes {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
        else {
            continue;
        };
        let mut m = MarketServiceClient::new(ch);
        let Ok(info) = m.get_market_info(pb::GetMarketInfoRequest {}).await else {
            continue;
        };
        let t = info.into_inner().next_open_interval;
        for i in 0..rounds {
            let tr = &mut traders[i % traders.len()];
            match m.submit_order(tr.order(t)).await {
                Ok(a) => {
                    let a = a.into_inner();
                    assert!(a.intake_id > 0, "{a:?}");
                    assert_eq!(a.ledger_seq, 0, "a node's ack precedes sequencing");
                    let receipt = baton_proto::receipt::Receipt::from_proto(
                        a.receipt.as_ref().expect("an intake receipt"),
                    )
                    .unwrap();
                    assert_eq!(receipt.leaf.ledger_seq, 0);
                    acks.push(Ack {
                        order_id: a.order_id,
                        interval_start: a.interval_start,
                        node: id.clone(),
                        receipt,
                    });
                }
                Err(e) if e.code() == Code::FailedPrecondition => {}
                Err(e) if e.code() == Code::Unavailable => break,
                Err(e) => panic!("node {id}: order refused: {e:?}"),
            }
        }
    }
}

fn traders() -> Vec<Trader> {
    vec![
        Trader {
            id: "alice",
            key: key(1),
            node: "A",
            side: pb::Side::Sell,
            price: "0.05",
            nonce: 0,
        },
        Trader {
            id: "bob",
            key: key(2),
            node: "B",
            side: pb::Side::Buy,
            price: "0.40",
            nonce: 0,
        },
    ]
}

/// Registers the traders through the leader at `addr`.
async fn register(admin: &mut Admin, addr: &str, traders: &[Trader]) {
    let mut a = AdminServiceClient::new(support::connect(addr).await);
    for t in traders {
        let r = admin.request(support::register_command(t.id, &t.key, t.node, "50"));
        a.register_participant(r).await.unwrap();
    }
}

/// Every acknowledged order is in the chain exactly once and in exactly one cleared book, and
/// the whole audit (chain, checkpoints, book binding, re-clear) passes.
async fn check_ledger(url: &str, acks: &[Ack], operator: &baton_ledger::PublicKey) -> usize {
    let ledger = Ledger::open_existing(url).await.unwrap();
    let entries = support::all_entries(&ledger).await;
    ledger.close().await;
    let mut in_chain: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_books: BTreeMap<String, usize> = BTreeMap::new();
    for e in &entries {
        match e.kind {
            EntryKind::Order => {
                let b = baton_ledger::SignedMessageBody::from_bytes(e.kind, &e.body).unwrap();
                *in_chain.entry(b.order_id.unwrap()).or_default() += 1;
            }
            EntryKind::IntervalResult => {
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                for o in v["orders"].as_array().cloned().unwrap_or_default() {
                    *in_books
                        .entry(o["id"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for a in acks {
        assert_eq!(in_chain.get(&a.order_id), Some(&1), "{a:?} in the chain");
        assert_eq!(
            in_books.get(&a.order_id),
            Some(&1),
            "{a:?} in a cleared book"
        );
    }
    let report = baton_audit::verify(url, operator, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("the ledger of several nodes verifies: {e}"));
    assert!(report.binding.in_progress.is_empty(), "{report}");
    let recleared = baton_audit::reclear_ledger(url, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut intervals: Vec<i64> = recleared.iter().map(|r| r.interval).collect();
    let n = intervals.len();
    intervals.dedup();
    assert_eq!(intervals.len(), n, "an interval was recorded twice");
    n
}

async fn metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// Three nodes; orders streamed to all of them; the leader SIGKILLed during intake and the
/// next one while clearing; the first restarted. Every acknowledged order is cleared exactly
/// once, the chain never forks, and a watcher on a follower sees every interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_and_clear_every_acknowledged_order_once() {
    let Some(db) = TempLedger::postgres("the three-node failover test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let anchor = support::wall_s() * 1000;
    let mut nodes: Vec<NodeProc> = vec![spawn_node("n1", &db.url, dir.path(), anchor)];
    nodes.push(spawn_node("n2", &db.url, dir.path(), anchor));
    nodes.push(spawn_node("n3", &db.url, dir.path(), anchor));
    let operator = OperatorKey::load(&dir.path().join("operator.key")).unwrap();
    let mut admin = Admin { operator, nonce: 0 };
    let addr_of = |nodes: &[NodeProc], id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.proc.addr.clone())
            .unwrap()
    };
    let (l1, e1) = await_leader(&db.url, None).await;
    let mut traders = traders();
    // A follower refuses operator commands, naming the leader.
    let follower = nodes.iter().find(|n| n.id != l1).unwrap();
    let r = admin.request(support::register_command("carol", &key(3), "A", "50"));
    let refused = AdminServiceClient::new(support::connect(&follower.proc.addr).await)
        .register_participant(r)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&format!("{l1:?}")),
        "{refused:?}"
    );
    // The leader loads the scenario when elected; wait for the network, then register.
    let l1_addr = addr_of(&nodes, &l1);
    let deadline = Instant::now() + Duration::from_secs(ELECTION_WAIT_S);
    while !admin.status(&l1_addr).await.network_loaded {
        assert!(Instant::now() < deadline, "the leader loaded no network");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    register(&mut admin, &l1_addr, &traders).await;

    let all = |nodes: &[NodeProc]| -> Vec<(String, String)> {
        nodes
            .iter()
            .map(|n| (n.id.clone(), n.proc.addr.clone()))
            .collect()
    };
    let mut acks = Vec::new();
    // Intake on every node, then SIGKILL the leader while intake goes on.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        submit_round(&all(&nodes), &mut traders, &mut acks, 5).await;
    }
    let ix = nodes.iter().position(|n| n.id == l1).unwrap();
    let killed_at = Instant::now();
    nodes[ix].proc.kill();
    let dead1 = nodes.remove(ix);
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        submit_round(&all(&nodes), &mut traders, &mut acks, 5).await;
    }
    let (l2, e2) = await_leader(&db.url, Some(&l1)).await;
    let failover_ms = killed_at.elapsed().as_millis();
    assert!(e2 > e1, "epoch {e2} after {e1}");
    // SIGKILL the second leader as it closes a gate and clears.
    let ix = nodes.iter().position(|n| n.id == l2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(CLEAR_WAIT_S);
    let before = nodes[ix]
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("gate closed; clearing"))
        .count();
    loop {
        submit_round(&all(&nodes), &mut traders, &mut acks, 3).await;
        let now = nodes[ix]
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("gate closed; clearing"))
            .count();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "{l2} closed no gate");
    }
    nodes[ix].proc.kill();
    nodes.remove(ix);
    // The first leader comes back; a watcher on whichever node follows sees every later
    // interval.
    nodes.push(spawn_node(&dead1.id, &db.url, dir.path(), anchor));
    drop(dead1);
    let (l3, e3) = await_leader(&db.url, Some(&l2)).await;
    assert!(e3 > e2);
    // Either the survivor or the restarted node leads now; the other follows.
    let watcher_node = nodes.iter().find(|n| n.id != l3).unwrap();
    let restarted_addr = addr_of(&nodes, &l1);
    let mut watch = MarketServiceClient::new(support::connect(&watcher_node.proc.addr).await)
        .watch_results(pb::WatchResultsRequest {})
        .await
        .unwrap()
        .into_inner();
    let seen = Arc::new(Mutex::new(Vec::<pb::IntervalResult>::new()));
    let seen_w = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(r)) = watch.message().await {
            seen_w.lock().unwrap().push(r);
        }
    });
    let until = Instant::now() + Duration::from_millis(4_000);
    while Instant::now() < until {
        submit_round(&all(&nodes), &mut traders, &mut acks, 5).await;
    }
    let last = acks.iter().map(|a| a.interval_start).max().unwrap();
    let l3_addr = addr_of(&nodes, &l3);
    admin.await_cleared(&l3_addr, last).await;
    admin.await_cleared(&watcher_node.proc.addr, last).await;
    // The restarted node rejoined: it has every interval too.
    admin.await_cleared(&restarted_addr, last).await;
    // The leader's metrics say it leads, at its epoch.
    let leader = nodes.iter().find(|n| n.id == l3).unwrap();
    let m = metrics(&leader.metrics_addr().expect("a metrics address")).await;
    assert!(m.contains("\nbaton_leader 1\n"), "{m}");
    assert!(m.contains(&format!("\nbaton_leader_epoch {e3}\n")), "{m}");
    assert!(m.contains("baton_intake_accepted_total"), "{m}");
    // Intake receipts (seq 0) prove inclusion once sequenced: the SDK against a follower's
    // audit service, for the first order each node acknowledged.
    let operator_key = *admin.operator.public_key().as_dalek();
    let audit = baton_client::AuditClient::new(support::connect(&watcher_node.proc.addr).await);
    for id in ["n1", "n2", "n3"] {
        let a = acks
            .iter()
            .find(|a| a.node == id)
            .expect("an ack from every node");
        let proof = audit
            .prove_receipt(&a.receipt, &operator_key)
            .await
            .unwrap();
        match &proof.verdict {
            baton_client::Verdict::Included(i) => assert_eq!(i.order_id, a.order_id),
            other => panic!("{a:?}: {other:?}"),
        }
        assert!(
            proof.inclusion.is_some(),
            "an inclusion proof for {}",
            a.order_id
        );
    }
    for n in &mut nodes {
        n.proc.terminate();
    }
    // And `baton audit check-receipt` on the ledger itself.
    let file = dir.path().join("receipt.json");
    baton_client::write_receipt(&file, &acks[acks.len() / 2].receipt).unwrap();
    let out = Command::new(crate::BATON)
        .args(["audit", "check-receipt", "--receipt"])
        .arg(&file)
        .args(["--db", &db.url, "--operator-pubkey"])
        .arg(admin.operator.public_key().to_hex())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is included in interval"), "{stdout}");
    // The watcher on the follower saw each interval recorded after it subscribed, in order,
    // with the seqs the chain holds.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the follower's watcher saw nothing");
    let starts: Vec<i64> = seen.iter().map(|r| r.interval_start).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    assert!(
        *starts.last().unwrap() >= last,
        "{starts:?} ends before {last}"
    );
    let ledger = Ledger::open_existing(&db.url).await.unwrap();
    let recorded: Vec<i64> = ledger
        .intervals()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| *t >= starts[0])
        .collect();
    ledger.close().await;
    assert_eq!(starts, recorded, "the watcher missed an interval");
    let intervals = check_ledger(&db.url, &acks, &admin.operator.public_key()).await;
    let by_node = acks.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.node.clone()).or_insert(0) += 1;
        m
    });
    assert!(by_node.len() == 3, "acks from every node: {by_node:?}");
    eprintln!(
        "three nodes: {} orders acknowledged ({by_node:?}), {intervals} intervals; leaders {l1} (epoch {e1}) → {l2} ({e2}) → {l3} ({e3}); first failover {failover_ms} ms after the kill",
        acks.len()
    );
}

/// A leader stopped (SIGSTOP) past its lease is replaced; resumed, its appends are refused
/// and it follows, and the ledger stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_is_fenced_when_it_resumes() {
    let Some(db) = TempLedger::postgres("the stalled-leader test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let anchor = support::wall_s() * 1000;
    let mut nodes = vec![spawn_node("s1", &db.url, dir.path(), anchor)];
    nodes.push(spawn_node("s2", &db.url, dir.path(), anchor));
    let operator = OperatorKey::load(&dir.path().join("operator.key")).unwrap();
    let mut admin = Admin { operator, nonce: 0 };
    let (l1, e1) = await_leader(&db.url, None).await;
    let stalled = nodes.iter().position(|n| n.id == l1).unwrap();
    let other = 1 - stalled;
    let deadline = Instant::now() + Duration::from_secs(ELECTION_WAIT_S);
    while !admin.status(&nodes[stalled].proc.addr).await.network_loaded {
        assert!(Instant::now() < deadline, "the leader loaded no network");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut traders = traders();
    register(&mut admin, &nodes[stalled].proc.addr.clone(), &traders).await;
    let mut acks = Vec::new();
    let pair = |nodes: &[NodeProc]| -> Vec<(String, String)> {
        nodes
            .iter()
            .map(|n| (n.id.clone(), n.proc.addr.clone()))
            .collect()
    };
    submit_round(&pair(&nodes), &mut traders, &mut acks, 10).await;
    nodes[stalled].signal("-STOP");
    let stopped_at = Instant::now();
    // Intake goes on at the other node while the leader is frozen.
    let other_addr = vec![(nodes[other].id.clone(), nodes[other].proc.addr.clone())];
    submit_round(&other_addr, &mut traders, &mut acks, 10).await;
    let (l2, e2) = await_leader(&db.url, Some(&l1)).await;
    let failover_ms = stopped_at.elapsed().as_millis();
    assert_eq!(l2, nodes[other].id);
    assert!(e2 > e1);
    let until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < until {
        submit_round(&other_addr, &mut traders, &mut acks, 5).await;
    }
    nodes[stalled].signal("-CONT");
    // Resumed, the old leader finds its lease taken and steps down; its appends fail.
    let deadline = Instant::now() + Duration::from_secs(ELECTION_WAIT_S);
    while !nodes[stalled].has_line("stepped down; state rebuilt from the ledger") {
        assert!(
            Instant::now() < deadline,
            "the resumed leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = admin.request(support::register_command("carol", &key(3), "A", "50"));
    let refused = AdminServiceClient::new(support::connect(&nodes[stalled].proc.addr).await)
        .register_participant(r)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(lease(&db.url).await.holder.as_deref(), Some(l2.as_str()));
    let until = Instant::now() + Duration::from_millis(2_000);
    while Instant::now() < until {
        submit_round(&pair(&nodes), &mut traders, &mut acks, 5).await;
    }
    let last = acks.iter().map(|a| a.interval_start).max().unwrap();
    admin
        .await_cleared(&nodes[other].proc.addr.clone(), last)
        .await;
    for n in &mut nodes {
        n.proc.terminate();
    }
    let intervals = check_ledger(&db.url, &acks, &admin.operator.public_key()).await;
    eprintln!(
        "stalled leader: {} orders acknowledged, {intervals} intervals; {l1} (epoch {e1}) stopped, {l2} (epoch {e2}) led {failover_ms} ms later",
        acks.len()
    );
}
