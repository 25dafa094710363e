//! Several nodes on one PostgreSQL ledger (`cargo bench -p baton-benches --bench cluster`).
//! Prints figures; asserts only that every order was acknowledged, sequenced and cleared.
//!
//! Two `baton_server::run` nodes (`NodeConfig`, each on its own runtime, as two processes
//! would be) on a fresh schema of the PostgreSQL server named by `BATON_TEST_POSTGRES_URL`;
//! signed orders over real gRPC streams (`SubmitOrderStream`), half of the streams to each node.
//!
//! Phases:
//! 1. **Intake**: every pre-signed order streamed to the two nodes at once; durable (shared
//!    intake) acks per second, overall and per node.
//! 2. **Sequencing**: from the first ack until the leader has sequenced every intake row into
//!    the chain; rows per second.
//! 3. **Gate closure → published prices**: `ClearNow` on the leader, timed until the result
//!    arrives on the leader's `WatchResults`, and on the follower's (which re-clears the
//!    interval from the ledger before it publishes); ledger bytes per order of the recording.
//! 4. **Failover**: the leader's runtime is dropped without releasing its lease (a crash, as
//!    the database sees it); time until the other node holds the lease.
//!
//! Env: `BATON_BENCH_ORDERS` (default 100,000), `BATON_BENCH_STREAMS` (per node, default 2),
//! `BATON_BENCH_PARTICIPANTS` (default 1,000), `BATON_BENCH_NETWORK` (`feeder`, the default,
//! or `case2869` for pglib_opf_case2869_pegase), `BATON_BENCH_LEASE_MS` (default 1,000).

use std::time::{Duration, Instant};

use baton_ledger::Ledger;
use baton_proto::v1 as pb;
use baton_server::{Limits, NodeConfig};
use baton_test_support::{self as support, FEEDER, INTERVAL_S, T0};
use ed25519_dalek::SigningKey;
use pb::admin_request::Command;
use pb::admin_service_client::AdminServiceClient;
use pb::market_service_client::MarketServiceClient;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The network to run on, as scenario text, and its node ids for participants.
fn network() -> (String, Vec<String>, &'static str) {
    match std::env::var("BATON_BENCH_NETWORK").as_deref() {
        Ok("case2869") => {
            let path = support::repo().join("scenarios/cases/pglib/pglib_opf_case2869_pegase.m");
            let text = std::fs::read_to_string(&path).expect("case2869 is in scenarios/cases");
            let spec = baton_engine::matpower::import(&text, "pglib_opf_case2869_pegase")
                .expect("imports");
            let nodes = spec.nodes.iter().map(|n| n.id.clone()).collect();
            let json = baton_engine::study::write_market(&spec).expect("writes");
            (json, nodes, "pglib_opf_case2869_pegase")
        }
        _ => (
            FEEDER.to_string(),
            (2..=33).map(|i| i.to_string()).collect(),
            "the IEEE 33-bus feeder",
        ),
    }
}

/// Pre-signed orders (1–3 blocks, prices on a 0.01 tick) for `interval`, round-robin over the
/// participants, signed on every core, split into `streams`.
fn sign_orders(
    keys: &[(String, SigningKey, String)],
    interval: i64,
    n: usize,
    streams: usize,
) -> Vec<Vec<pb::SignedOrder>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = n.div_ceil(threads);
    let parts: Vec<Vec<(usize, pb::SignedOrder)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64 + 1);
                    (t * per..((t + 1) * per).min(n))
                        .map(|i| {
                            let (pid, key, node) = &keys[i % keys.len()];
                            let buy = rng.gen_bool(0.5);
                            let blocks = (0..rng.gen_range(1..=3))
                                .map(|_| pb::Block {
                                    quantity: format!(
                                        "{}.{:02}",
                                        rng.gen_range(0..3),
                                        rng.gen_range(1..100)
                                    ),
                                    price: format!(
                                        "0.{:02}",
                                        if buy {
                                            rng.gen_range(5..40)
                                        } else {
                                            rng.gen_range(2..30)
                                        }
                                    ),
                                })
                                .collect();
                            let order = pb::Order {
                                participant_id: pid.clone(),
                                nonce: 1 + (i / keys.len()) as u64,
                                interval_start: interval,
                                node: node.clone(),
                                side: if buy { pb::Side::Buy } else { pb::Side::Sell } as i32,
                                blocks,
                                device: None,
                                product: pb::Product::Energy as i32,
                            };
                            (i, support::sign_order(key, &order))
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("signer")).collect()
    });
    let mut out = vec![Vec::with_capacity(n / streams + 1); streams];
    for (i, o) in parts.into_iter().flatten() {
        out[i % streams].push(o);
    }
    out
}

/// Streams `orders` to `channel`; (acks, refusals, time of the last ack).
async fn stream(channel: Channel, orders: Vec<pb::SignedOrder>) -> (usize, usize, Instant) {
    let mut client = MarketServiceClient::new(channel);
    let outbound = tokio_stream::iter(orders);
    let mut inbound = client
        .submit_order_stream(outbound)
        .await
        .expect("stream opens")
        .into_inner();
    let (mut ok, mut refused) = (0, 0);
    while let Some(o) = inbound.next().await {
        match o.expect("stream stays healthy").outcome {
            Some(pb::submit_outcome::Outcome::Accepted(_)) => ok += 1,
            other => {
                if refused == 0 {
                    eprintln!("refused: {other:?}");
                }
                refused += 1;
            }
        }
    }
    (ok, refused, Instant::now())
}

async fn lease(url: &str) -> Option<baton_ledger::cluster::LeaseView> {
    let l = Ledger::open_existing(url).await.ok()?;
    let v = l.cluster().ok()?.lease().await.ok();
    l.close().await;
    v
}

/// A node on its own runtime (as its own process would be).
struct Node {
    rt: tokio::runtime::Runtime,
    server: support::Server,
    id: String,
}

fn start_node(id: &str, url: &str, scenario: &str, limits: &Limits, lease_ms: i64) -> Node {
    let rt = tokio::runtime::Runtime::new().expect("node runtime");
    let mut config = support::config(url);
    // Market time stands just after T0: no gate closes by itself.
    config.clock = support::clock(0.0001);
    config.scenario = Some(scenario.to_string());
    config.limits = limits.clone();
    let mut node = NodeConfig::new(id);
    node.lease_ms = lease_ms;
    config.node = Some(node);
    let server = rt.block_on(support::Server::start(config));
    Node {
        rt,
        server,
        id: id.to_string(),
    }
}

fn main() {
    let Some(db) = support::TempLedger::postgres("the cluster bench") else {
        return;
    };
    let n = env_usize("BATON_BENCH_ORDERS", 100_000);
    let streams = env_usize("BATON_BENCH_STREAMS", 2).max(1);
    let participants = env_usize("BATON_BENCH_PARTICIPANTS", 1_000).max(1);
    let lease_ms = env_usize("BATON_BENCH_LEASE_MS", 1_000) as i64;
    let (scenario, nodes, network_name) = network();
    let limits = Limits {
        open_orders_per_participant_max: n / participants + 16,
        ..Limits::default()
    };
    let mut a = Some(start_node("a", &db.url, &scenario, &limits, lease_ms));
    let b = start_node("b", &db.url, &scenario, &limits, lease_ms);
    let rt = tokio::runtime::Runtime::new().expect("client runtime");
    let url = db.url.clone();
    let addrs = (
        a.as_ref().unwrap().server.addr.to_string(),
        b.server.addr.to_string(),
    );
    let (leader_id, follower_addr, leader_addr) = rt.block_on(async {
        let t = Instant::now();
        let (leader, addr_l, addr_f) = loop {
            if let Some(l) = lease(&url).await {
                match l.holder.as_deref() {
                    Some("a") => break ("a", addrs.0.clone(), addrs.1.clone()),
                    Some("b") => break ("b", addrs.1.clone(), addrs.0.clone()),
                    _ => {}
                }
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (leader.to_string(), addr_f, addr_l)
    });
    let leader_is_a = leader_id == "a";
    rt.block_on(async move {
        let lch = support::connect(&leader_addr).await;
        let fch = support::connect(&follower_addr).await;
        let mut admin = AdminServiceClient::new(lch.clone());
        let mut nonce = 0u64;
        let mut signed = |c| {
            nonce += 1;
            support::admin_request(nonce, c)
        };
        // The leader installs the network when elected.
        let t = Instant::now();
        while !admin
            .status(signed(Command::Status(pb::Status {})))
            .await
            .expect("status")
            .into_inner()
            .network_loaded
        {
            assert!(t.elapsed() < Duration::from_secs(120), "no network");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut keys = Vec::with_capacity(participants);
        for i in 0..participants {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let key = SigningKey::from_bytes(&seed);
            let id = format!("p{i:05}");
            let node = nodes[i % nodes.len()].clone();
            admin
                .register_participant(signed(Command::RegisterParticipant(
                    pb::RegisterParticipant {
                        participant_id: id.clone(),
                        public_key_hex: hex::encode(key.verifying_key().to_bytes()),
                        node: node.clone(),
                        roles: vec!["prosumer".into()],
                        capacity_kw: "10".into(),
                        ..Default::default()
                    },
                )))
                .await
                .expect("register");
            keys.push((id, key, node));
        }
        // Followers learn participants from the chain: wait until the follower knows them all.
        let mut fadmin = AdminServiceClient::new(fch.clone());
        let t = Instant::now();
        while fadmin
            .status(signed(Command::Status(pb::Status {})))
            .await
            .expect("status")
            .into_inner()
            .participants
            < participants as u32
        {
            assert!(t.elapsed() < Duration::from_secs(60), "the follower lags");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        let interval = T0 + INTERVAL_S;
        let mut per_stream = sign_orders(&keys, interval, n, 2 * streams);
        println!(
            "setup: two nodes on PostgreSQL, {network_name}, {participants} participants, {n} orders in {} streams per node (signed in {:.2} s, not timed below); lease {lease_ms} ms",
            streams,
            t.elapsed().as_secs_f64()
        );

        // 1. Intake on both nodes at once.
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (i, orders) in per_stream.drain(..).enumerate() {
            let ch = if i % 2 == 0 { lch.clone() } else { fch.clone() };
            tasks.push((i % 2, tokio::spawn(stream(ch, orders))));
        }
        let (mut acked, mut refused) = ([0usize; 2], 0);
        let mut last_ack = [t0; 2];
        for (node, task) in tasks {
            let (ok, r, at) = task.await.expect("stream task");
            acked[node] += ok;
            refused += r;
            last_ack[node] = last_ack[node].max(at);
        }
        let intake_s = last_ack[0].max(last_ack[1]).duration_since(t0).as_secs_f64();
        println!(
            "intake: {} orders acknowledged in {intake_s:.2} s = {:.0} orders/s over both nodes; leader {} in {:.2} s ({:.0}/s), follower {} in {:.2} s ({:.0}/s); refused {refused}",
            acked[0] + acked[1],
            (acked[0] + acked[1]) as f64 / intake_s,
            acked[0],
            last_ack[0].duration_since(t0).as_secs_f64(),
            acked[0] as f64 / last_ack[0].duration_since(t0).as_secs_f64(),
            acked[1],
            last_ack[1].duration_since(t0).as_secs_f64(),
            acked[1] as f64 / last_ack[1].duration_since(t0).as_secs_f64(),
        );
        assert_eq!(refused, 0, "every order is acknowledged");

        // 2. Sequencing: until no intake row waits.
        let ledger = Ledger::open_existing(&url).await.expect("ledger");
        let cluster = ledger.cluster().expect("postgres");
        while cluster.pending_count().await.expect("pending") > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seq_s = t0.elapsed().as_secs_f64();
        println!(
            "sequencing: all {n} intake rows in the chain {seq_s:.2} s after the first send = {:.0} rows/s (concurrently with intake); {:.2} s after the last ack",
            n as f64 / seq_s,
            seq_s - intake_s
        );

        // 3. Gate closure → published prices.
        let mut watch_l = MarketServiceClient::new(lch.clone())
            .watch_results(pb::WatchResultsRequest {})
            .await
            .expect("watch")
            .into_inner();
        let mut watch_f = MarketServiceClient::new(fch.clone())
            .watch_results(pb::WatchResultsRequest {})
            .await
            .expect("watch")
            .into_inner();
        let t = Instant::now();
        let cleared = admin
            .clear_now(signed(Command::ClearNow(pb::ClearNow {})))
            .await
            .expect("clear now")
            .into_inner();
        let t_reply = t.elapsed();
        let r = watch_l.next().await.expect("a result").expect("result");
        let t_leader = t.elapsed();
        assert_eq!(r.interval_start, cleared.interval_start);
        assert_eq!(r.orders as usize, n, "every order in the book");
        let rf = watch_f.next().await.expect("a result").expect("result");
        let t_follower = t.elapsed();
        assert_eq!(rf.prices, r.prices, "the follower publishes the leader's prices");
        let entries = ledger
            .entries(r.ledger_first_seq, r.ledger_last_seq)
            .await
            .expect("entries");
        let bytes: usize = entries.iter().map(|e| e.body.len()).sum();
        let per_kind: Vec<String> = entries
            .iter()
            .map(|e| format!("{} {:.0}", e.kind.as_str(), e.body.len() as f64 / n as f64))
            .collect();
        println!(
            "gate closure -> published prices, {n} orders on {network_name}: leader {:.3} s (ClearNow reply {:.3} s), follower {:.3} s (it re-clears from the ledger); interval records {:.0} bytes/order ({})",
            t_leader.as_secs_f64(),
            t_reply.as_secs_f64(),
            t_follower.as_secs_f64(),
            bytes as f64 / n as f64,
            per_kind.join(", ")
        );
        ledger.close().await;
    });

    // 4. Failover: the leader stops dead (its runtime dropped, its lease not released).
    let mut pair = [a.take(), Some(b)];
    let dead = pair[usize::from(!leader_is_a)].take().expect("the leader");
    let alive_id = pair
        .iter()
        .flatten()
        .next()
        .map(|n| n.id.clone())
        .expect("the follower");
    let killed = Instant::now();
    let Node {
        rt: dead_rt,
        server,
        ..
    } = dead;
    // Nothing of the dead node runs again: no shutdown, no lease release.
    std::mem::forget(server);
    dead_rt.shutdown_background();
    let took = rt.block_on(async {
        loop {
            if let Some(l) = lease(&db.url).await {
                if l.holder.as_deref() == Some(alive_id.as_str()) {
                    return killed.elapsed();
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    println!(
        "failover: node {alive_id} holds the lease {:.0} ms after the leader stopped (lease {lease_ms} ms; followers poll every 200 ms)",
        took.as_secs_f64() * 1000.0
    );
}
