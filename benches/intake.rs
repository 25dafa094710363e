//! Live-market load generator (`cargo bench -p baton-benches --bench intake`). Prints figures;
//! asserts only that every order was accepted and the interval published.
//!
//! A real `baton serve` (in this process, its own runtime) on 127.0.0.1:0 with a SQLite ledger
//! file, the IEEE 33-bus feeder, and signed orders over real gRPC from client streams
//! (`SubmitOrderStream`: each ack streams back once its order is durable in the ledger).
//!
//! Phases:
//! 1. **Burst**: every pre-signed order sent as fast as the streams take them; orders/s from the
//!    first send to the last durable ack, and ack latency (send → durable ack) percentiles.
//! 2. **Paced**: the same count again for the next interval, offered at
//!    `BATON_BENCH_RATE` orders/s (default 20,000), to state the ack latency at that load.
//! 3. **Gate closure → published result**: `ClearNow` on the first interval (all burst orders),
//!    timed from the request until its result arrives on `WatchResults`.
//!
//! Env: `BATON_BENCH_ORDERS` (default 100,000 per phase), `BATON_BENCH_STREAMS` (default 4),
//! `BATON_BENCH_RATE`, `BATON_BENCH_PARTICIPANTS` (default 500).
//! Signing happens before the clock starts: a real client signs its own orders on its own CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_server::Limits;
use baton_test_support::{self as support, FEEDER, INTERVAL_S, T0};
use ed25519_dalek::SigningKey;
use pb::admin_request::Command;
use pb::admin_service_client::AdminServiceClient;
use pb::market_service_client::MarketServiceClient;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Orders per paced tick per stream are sent together; the tick is this long.
const PACE_TICK_MS: u64 = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Admin {
    client: AdminServiceClient<Channel>,
    nonce: u64,
}

impl Admin {
    fn signed(&mut self, command: Command) -> pb::SignedAdminRequest {
        self.nonce += 1;
        support::admin_request(self.nonce, command)
    }
}

/// Pre-signed orders for `interval`, round-robin over participants, split into `streams`.
fn sign_orders(
    keys: &[(String, SigningKey, String)],
    interval: i64,
    n: usize,
    streams: usize,
    first_nonce: u64,
    seed: u64,
) -> Vec<Vec<pb::SignedOrder>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![Vec::with_capacity(n / streams + 1); streams];
    for i in 0..n {
        let (pid, key, node) = &keys[i % keys.len()];
        let buy = rng.gen_bool(0.5);
        let cents: i64 = if buy {
            rng.gen_range(5..30)
        } else {
            rng.gen_range(3..25)
        };
        let order = pb::Order {
            participant_id: pid.clone(),
            nonce: first_nonce + (i / keys.len()) as u64,
            interval_start: interval,
            node: node.clone(),
            side: if buy { pb::Side::Buy } else { pb::Side::Sell } as i32,
            blocks: vec![pb::Block {
                quantity: format!("{}.{:03}", rng.gen_range(0..5), rng.gen_range(1..1000)),
                price: format!("0.{cents:02}"),
            }],
            device: None,
            product: pb::Product::Energy as i32,
        };
        out[i % streams].push(support::sign_order(key, &order));
    }
    out
}

/// Sends each stream's orders (paced at `rate` orders/s overall if given) and returns the
/// wall time from the first send to the last ack and every order's ack latency.
async fn run_phase(
    channel: &Channel,
    streams: Vec<Vec<pb::SignedOrder>>,
    rate: Option<f64>,
) -> (Duration, Vec<Duration>, usize) {
    let n_streams = streams.len();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for orders in streams {
        let mut client = MarketServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let n = orders.len();
            let sent_at = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
            let sent = sent_at.clone();
            let per_tick = rate.map(|r| {
                ((r / n_streams as f64) * PACE_TICK_MS as f64 / 1000.0)
                    .ceil()
                    .max(1.0) as usize
            });
            let outbound = async_stream(orders, sent, per_tick);
            let mut inbound = client
                .submit_order_stream(outbound)
                .await
                .expect("stream opens")
                .into_inner();
            let mut latencies = Vec::with_capacity(n);
            let mut refused = 0usize;
            while let Some(o) = inbound.next().await {
                let o = o.expect("stream stays healthy");
                let at = Instant::now();
                let sent = sent_at.lock().unwrap()[o.index as usize];
                match o.outcome {
                    Some(pb::submit_outcome::Outcome::Accepted(_)) => latencies.push(at - sent),
                    other => {
                        if refused == 0 {
                            eprintln!("refused: {other:?}");
                        }
                        refused += 1;
                    }
                }
            }
            (latencies, refused)
        }));
    }
    let mut all = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await.expect("client task");
        all.extend(l);
        refused += r;
    }
    (t0.elapsed(), all, refused)
}

/// The outbound stream: records each order's send time as the transport takes it.
fn async_stream(
    orders: Vec<pb::SignedOrder>,
    sent_at: Arc<std::sync::Mutex<Vec<Instant>>>,
    per_tick: Option<usize>,
) -> impl tokio_stream::Stream<Item = pb::SignedOrder> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(PACE_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (i, o) in orders.into_iter().enumerate() {
            if let Some(k) = per_tick {
                if i % k == 0 {
                    tick.tick().await;
                }
            }
            sent_at.lock().unwrap().push(Instant::now());
            if tx.send(o).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn report(name: &str, n: usize, wall: Duration, mut lat: Vec<Duration>, refused: usize) {
    lat.sort();
    println!(
        "{name}: {n} orders in {:.2} s = {:.0} durable orders/s; ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; refused {refused}",
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
}

fn main() {
    let n = env_usize("BATON_BENCH_ORDERS", 100_000);
    let streams = env_usize("BATON_BENCH_STREAMS", 4).max(1);
    let participants = env_usize("BATON_BENCH_PARTICIPANTS", 500).max(1);
    let rate = env_usize("BATON_BENCH_RATE", 20_000) as f64;
    let db = support::TempLedger::sqlite();

    // The server on its own runtime, as in `baton serve`.
    let server_rt = tokio::runtime::Runtime::new().expect("server runtime");
    let mut config = support::config(&db.url);
    // Market time stands just after T0 for the whole run: no gate closes by itself.
    config.clock = support::clock(0.0001);
    config.scenario = Some(FEEDER.to_string());
    config.limits = Limits {
        open_orders_per_participant_max: 2 * n / participants + 16,
        ..Limits::default()
    };
    let mut server = server_rt.block_on(support::Server::start(config));
    let addr = server.addr;

    let rt = tokio::runtime::Runtime::new().expect("client runtime");
    rt.block_on(async move {
        let channel = support::connect(&addr.to_string()).await;
        let mut admin = Admin {
            client: AdminServiceClient::new(channel.clone()),
            nonce: 0,
        };
        let nodes: Vec<String> = (2..=33).map(|i| i.to_string()).collect();
        let mut keys = Vec::with_capacity(participants);
        let t = Instant::now();
        for i in 0..participants {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let key = SigningKey::from_bytes(&seed);
            let id = format!("p{i:04}");
            let node = nodes[i % nodes.len()].clone();
            let req = admin.signed(Command::RegisterParticipant(pb::RegisterParticipant {
                participant_id: id.clone(),
                public_key_hex: hex::encode(key.verifying_key().to_bytes()),
                node: node.clone(),
                roles: vec!["prosumer".into()],
                capacity_kw: "10".into(),
                ..Default::default()
            }));
            admin
                .client
                .register_participant(req)
                .await
                .expect("register");
            keys.push((id, key, node));
        }
        println!(
            "setup: {participants} participants registered in {:.2} s; {streams} streams; {n} orders per phase",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        let burst = sign_orders(&keys, T0 + INTERVAL_S, n, streams, 1, 1);
        let paced = sign_orders(
            &keys,
            T0 + 2 * INTERVAL_S,
            n,
            streams,
            (n / participants + 2) as u64,
            2,
        );
        println!(
            "signing (client side, not timed below): {:.2} s",
            t.elapsed().as_secs_f64()
        );

        let (wall, lat, refused) = run_phase(&channel, burst, None).await;
        report("burst", n, wall, lat, refused);
        assert_eq!(refused, 0, "every burst order is accepted");

        let (wall, lat, refused) = run_phase(&channel, paced, Some(rate)).await;
        report(&format!("paced at {rate:.0}/s"), n, wall, lat, refused);
        assert_eq!(refused, 0, "every paced order is accepted");

        let mut watch = MarketServiceClient::new(channel.clone())
            .watch_results(pb::WatchResultsRequest {})
            .await
            .expect("watch")
            .into_inner();
        let t = Instant::now();
        let req = admin.signed(Command::ClearNow(pb::ClearNow {}));
        let cleared = admin.client.clear_now(req).await.expect("clear now");
        let t_reply = t.elapsed();
        let result = watch
            .next()
            .await
            .expect("a result")
            .expect("result stream");
        let t_published = t.elapsed();
        assert_eq!(result.interval_start, cleared.get_ref().interval_start);
        println!(
            "gate closure -> published result, {} orders on the IEEE 33-bus feeder: {:.3} s (ClearNow reply {:.3} s); ledger entries {}..{}",
            result.orders,
            t_published.as_secs_f64(),
            t_reply.as_secs_f64(),
            result.ledger_first_seq,
            result.ledger_last_seq,
        );
    });
    server_rt.block_on(server.stop());
}
