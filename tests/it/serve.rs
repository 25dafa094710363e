//! `baton serve` end to end: a real server on 127.0.0.1:0, a real ledger database, a real tonic
//! client over loopback, and an accelerated clock so gates close within seconds.

use std::time::Duration;

use baton_ledger::{EntryKind, Ledger, OperatorKey};
use baton_proto::v1 as pb;
use baton_server::Limits;
use ed25519_dalek::{Signer, SigningKey};
use pb::admin_request::Command;
use pb::admin_service_client::AdminServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::market_service_client::MarketServiceClient;
use support::{key, sign_order, TempLedger, INTERVAL_S, T0, TWO_NODE};
use tonic::transport::Channel;
use tonic::Code;

/// Real seconds a test waits for a result before failing.
const RESULT_WAIT_S: u64 = 30;

struct Options {
    scenario: bool,
    /// Tasks to make panic (supervision tests).
    faults: baton_server::FaultInjection,
    connections_max: usize,
    /// Market seconds per real second.
    scale: f64,
    open_orders_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: true,
            faults: baton_server::FaultInjection::default(),
            connections_max: baton_server::CONNECTIONS_MAX,
            // Slow enough that no gate closes during a refusal test.
            scale: 1.0,
            open_orders_max: 64,
        }
    }
}

struct Harness {
    addr: std::net::SocketAddr,
    channel: Channel,
    market: MarketServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    audit: AuditServiceClient<Channel>,
    admin_nonce: u64,
    db_url: String,
    server: support::Server,
}

async fn start(db_url: String, o: Options) -> Harness {
    let mut config = support::config(&db_url);
    // One second into T0: the first open interval is T0 + 300, whose gate closes at T0 + 240.
    config.clock = support::clock(o.scale);
    config.scenario = o.scenario.then(|| TWO_NODE.to_string());
    config.faults = o.faults.clone();
    config.connections_max = o.connections_max;
    config.limits = Limits {
        open_orders_per_participant_max: o.open_orders_max,
        ..Limits::default()
    };
    let server = support::Server::start(config).await;
    let channel = server.connect().await;
    Harness {
        addr: server.addr,
        channel: channel.clone(),
        market: MarketServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel.clone()),
        audit: AuditServiceClient::new(channel.clone()),
        admin_nonce: 0,
        db_url,
        server,
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    support::sqlite_url(dir.path())
}

impl Harness {
    async fn stop(&mut self) {
        self.server.stop().await;
    }

    fn admin_request(&mut self, command: Command) -> pb::SignedAdminRequest {
        self.admin_nonce += 1;
        support::admin_request(self.admin_nonce, command)
    }

    async fn register(&mut self, id: &str, key: &SigningKey, node: &str, capacity: &str) {
        let r = self.admin_request(support::register_command(id, key, node, capacity));
        let ack = self.admin.register_participant(r).await.unwrap();
        assert!(ack.get_ref().ledger_seq > 0);
    }

    async fn admin_call(&mut self, command: Command) -> Result<(), tonic::Status> {
        let r = self.admin_request(command);
        support::send_admin(&self.channel, r).await
    }

    async fn submit(
        &mut self,
        key: &SigningKey,
        order: &pb::Order,
    ) -> Result<pb::SubmitOrderResponse, tonic::Status> {
        self.market
            .submit_order(sign_order(key, order))
            .await
            .map(|r| r.into_inner())
    }
}

fn query(key: &SigningKey, participant: &str) -> pb::SignedRequest {
    support::query(key, participant, "")
}

fn order(
    participant: &str,
    nonce: u64,
    node: &str,
    side: pb::Side,
    blocks: &[(&str, &str)],
) -> pb::Order {
    pb::Order {
        participant_id: participant.into(),
        nonce,
        interval_start: T0 + INTERVAL_S,
        node: node.into(),
        side: side as i32,
        blocks: blocks
            .iter()
            .map(|(q, p)| pb::Block {
                quantity: q.to_string(),
                price: p.to_string(),
            })
            .collect(),
        device: None,
        product: pb::Product::Unspecified as i32,
    }
}

/// The whole path on one database: register, submit, gate closure, result and fills on the
/// watch streams, then an offline audit and a re-clear of every recorded interval.
async fn end_to_end(db_url: String) {
    // 60× real time: the gate of T0 + 300 closes 239 market seconds (≈ 4 s) after start.
    let mut h = start(
        db_url.clone(),
        Options {
            scale: 60.0,
            ..Options::default()
        },
    )
    .await;
    let (alice, bob) = (key(1), key(2));
    h.register("alice", &alice, "A", "50").await;
    h.register("bob", &bob, "B", "100").await;
    let mut results = h
        .market
        .watch_results(pb::WatchResultsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut fills = h
        .market
        .watch_fills(query(&bob, "bob"))
        .await
        .unwrap()
        .into_inner();
    let a = h
        .submit(
            &alice,
            &order("alice", 1, "A", pb::Side::Sell, &[("40", "0.04")]),
        )
        .await
        .unwrap();
    assert_eq!(a.order_id, "alice-1");
    assert!(a.ledger_seq > 0);
    // Bob's order through the client stream, with one refused (replayed nonce) beside it.
    let bob_order = order(
        "bob",
        1,
        "B",
        pb::Side::Buy,
        &[("50", "0.45"), ("20", "0.35")],
    );
    let stream = tokio_stream::iter(vec![
        sign_order(&bob, &bob_order),
        sign_order(&bob, &bob_order),
    ]);
    let out = h.market.submit_orders(stream).await.unwrap().into_inner();
    assert_eq!((out.accepted, out.refused), (1, 1));
    match &out.outcomes[1].outcome {
        Some(pb::submit_outcome::Outcome::Refused(r)) => {
            assert_eq!(r.code, Code::AlreadyExists as i32, "{}", r.message)
        }
        other => panic!("second copy should be refused: {other:?}"),
    }
    let result = tokio::time::timeout(Duration::from_secs(RESULT_WAIT_S), results.message())
        .await
        .expect("a result within the wait")
        .unwrap()
        .expect("a result");
    assert_eq!(result.interval_start, T0 + INTERVAL_S);
    assert_eq!(result.orders, 2);
    // The cable A→B (60 kW) is congested: B is priced by bob's 0.35 block, A by the grid's
    // 0.30 import (solar 40 + grid 20 = the 60 that flow to B).
    let price = |n: &str| {
        result
            .prices
            .iter()
            .find(|p| p.node == n)
            .unwrap()
            .price
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    assert_eq!(price("B"), rust_decimal::Decimal::new(35, 2));
    assert_eq!(price("A"), rust_decimal::Decimal::new(30, 2));
    assert!(result.ledger_last_seq >= result.ledger_first_seq + 2);
    let fill = tokio::time::timeout(Duration::from_secs(RESULT_WAIT_S), fills.message())
        .await
        .expect("a fill within the wait")
        .unwrap()
        .expect("a fill");
    assert_eq!(fill.order_id, "bob-1");
    // 50 + 10 kW at 0.35 for 5 minutes: 60 × 0.35 × 5/60 = 1.75 paid.
    assert_eq!(
        fill.accepted_total
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        60.into()
    );
    assert_eq!(fill.payment, "-1.75");
    let again = h
        .market
        .get_interval_result(pb::GetIntervalResultRequest {
            interval_start: T0 + INTERVAL_S,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, result);
    // The audit service proves the settlement entry is in the checkpointed tree.
    let proof = h
        .audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            seq: result.ledger_last_seq,
        })
        .await
        .unwrap()
        .into_inner();
    let entry_hash: [u8; 32] = proof.entry_hash.as_slice().try_into().unwrap();
    let root: [u8; 32] = proof.root.as_slice().try_into().unwrap();
    let path: Vec<[u8; 32]> = proof
        .path
        .iter()
        .map(|p| p.as_slice().try_into().unwrap())
        .collect();
    assert!(baton_ledger::merkle::verify_inclusion(
        proof.seq - 1,
        proof.tree_size,
        &entry_hash,
        &path,
        &root
    ));
    h.stop().await;
    check_ledger(&db_url, 1, &support::operator().public_key()).await;
}

/// Every entry, paging through the ledger's read limit.
/// Verifies the ledger offline and re-clears every recorded interval; returns the intervals.
async fn check_ledger(
    db_url: &str,
    intervals_min: usize,
    operator: &baton_ledger::PublicKey,
) -> Vec<i64> {
    // The whole audit: chain, signatures, zero-sum and every book bound to its signed orders.
    let report = baton_audit::verify(db_url, operator, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("ledger verifies: {e}"));
    assert!(report.ledger.participant_signatures >= 1);
    assert!(report.binding.in_progress.is_empty(), "{report}");
    let intervals: Vec<i64> = baton_audit::reclear_ledger(db_url, None)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .iter()
        .map(|r| r.interval)
        .collect();
    assert_eq!(report.binding.intervals, intervals.len() as u64);
    let mut unique = intervals.clone();
    unique.dedup();
    assert_eq!(unique, intervals, "an interval was recorded twice");
    assert!(intervals.len() >= intervals_min, "{intervals:?}");
    intervals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_clear_at_the_gate_and_the_ledger_reclears_on_sqlite() {
    let db = TempLedger::sqlite();
    end_to_end(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_clear_at_the_gate_and_the_ledger_reclears_on_postgres() {
    let Some(db) = TempLedger::postgres("the PostgreSQL serve test") else {
        return;
    };
    end_to_end(db.url.clone()).await;
}

/// A server with alice at A and bob at B registered, nothing submitted.
async fn with_participants(o: Options) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(sqlite_url(&dir), o).await;
    h.register("alice", &key(1), "A", "50").await;
    h.register("bob", &key(2), "B", "100").await;
    (dir, h)
}

fn sell(nonce: u64, q: &str, p: &str) -> pb::Order {
    order("alice", nonce, "A", pb::Side::Sell, &[(q, p)])
}

#[tokio::test]
async fn a_bad_signature_is_unauthenticated() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let e = h.submit(&key(9), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn an_unknown_participant_is_unauthenticated() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let mut o = sell(1, "10", "0.05");
    o.participant_id = "mallory".into();
    let e = h.submit(&key(9), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn a_suspended_participant_is_permission_denied() {
    let (_d, mut h) = with_participants(Options::default()).await;
    h.admin_call(Command::SuspendParticipant(pb::SuspendParticipant {
        participant_id: "alice".into(),
    }))
    .await
    .unwrap();
    let e = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn another_participants_node_is_permission_denied() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let o = order("alice", 1, "B", pb::Side::Sell, &[("10", "0.05")]);
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn a_replayed_nonce_is_already_exists() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let o = sell(5, "10", "0.05");
    h.submit(&key(1), &o).await.unwrap();
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = h.submit(&key(1), &sell(4, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
}

#[tokio::test]
async fn bad_numbers_are_invalid_arguments_naming_the_field() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let cases = [
        (("12,5", "0.05"), "blocks[0].quantity"),
        (("NaN", "0.05"), "blocks[0].quantity"),
        (("-5", "0.05"), "blocks[0].quantity"),
        (("0", "0.05"), "blocks[0].quantity"),
        (("1e3", "0.05"), "blocks[0].quantity"),
        (("0.0000001", "0.05"), "blocks[0].quantity"),
        (("51", "0.05"), "blocks[0].quantity"),
        (("10", "inf"), "blocks[0].price"),
        (("10", "99"), "blocks[0].price"),
    ];
    for (i, ((q, p), field)) in cases.iter().enumerate() {
        let e = h
            .submit(&key(1), &sell(i as u64 + 1, q, p))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{q} {p}: {e:?}");
        assert!(e.message().starts_with(field), "{q} {p}: {}", e.message());
    }
}

#[tokio::test]
async fn malformed_order_bytes_are_invalid_argument() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let bytes = vec![0xff, 0xff, 0xff, 0x0f, 0x01];
    let e = h
        .market
        .submit_order(pb::SignedOrder {
            signature: key(1).sign(&bytes).to_bytes().to_vec(),
            order: bytes,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("order"), "{}", e.message());
}

/// Regression (issue 9): a message over the server's decode limit is RESOURCE_EXHAUSTED, as
/// gRPC specifies (tonic alone answers OUT_OF_RANGE), on unary, client-streaming and
/// bidirectional calls; the connection stays usable.
#[tokio::test]
async fn an_oversize_message_is_resource_exhausted() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let huge = || pb::SignedOrder {
        order: vec![0; baton_server::GRPC_MESSAGE_BYTES_MAX + 1],
        signature: vec![0; 64],
    };
    let e = h.market.submit_order(huge()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());
    let e = h
        .market
        .submit_orders(tokio_stream::iter(vec![huge()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut outcomes = h
        .market
        .submit_order_stream(tokio_stream::iter(vec![huge()]))
        .await
        .unwrap()
        .into_inner();
    let e = outcomes.message().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // An ordinary order on the same connection is still accepted.
    h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap();
}

/// The health service's status for `service` ("" for the whole server).
async fn health(
    channel: &Channel,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let r = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.status()
}

/// Makes one server task panic through the test hook and checks the supervision: health turns
/// NOT_SERVING, orders and cancels are refused UNAVAILABLE naming the reason, and `run` returns
/// `Halted` with it within `HALTED_SERVE_MS`.
async fn a_dead_task_halts_the_market(task: &str, arm: impl FnOnce(&baton_server::FaultInjection)) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let faults = baton_server::FaultInjection::default();
    let (_d, mut h) = with_participants(Options {
        faults: faults.clone(),
        ..Options::default()
    })
    .await;
    let market = "baton.v1.MarketService";
    assert_eq!(health(&h.channel, market).await, ServingStatus::Serving);
    h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap();
    arm(&faults);
    // The group commit panics on the batch holding this order; the scheduler at its next tick.
    let _ = h.submit(&key(1), &sell(2, "10", "0.05")).await;
    let deadline = std::time::Instant::now() + Duration::from_millis(baton_server::HALTED_SERVE_MS);
    while health(&h.channel, market).await != ServingStatus::NotServing {
        assert!(std::time::Instant::now() < deadline, "health still SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&h.channel, "").await, ServingStatus::NotServing);
    let e = h.submit(&key(1), &sell(3, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let reason = format!("the {task} task panicked: fault injection");
    assert!(e.message().contains(&reason), "{}", e.message());
    let mut stream = h
        .market
        .submit_order_stream(tokio_stream::iter(vec![sign_order(
            &key(1),
            &sell(4, "10", "0.05"),
        )]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().outcome {
        Some(pb::submit_outcome::Outcome::Refused(r)) => {
            assert_eq!(r.code, Code::Unavailable as i32, "{r:?}");
            assert!(r.message.contains(&reason), "{r:?}");
        }
        other => panic!("acknowledged after the halt: {other:?}"),
    }
    // `run` ends on its own, with the reason.
    let run = tokio::time::timeout(
        Duration::from_millis(baton_server::HALTED_SERVE_MS + 10_000),
        h.server.take_task().unwrap(),
    )
    .await
    .expect("a halted server stops by itself")
    .unwrap();
    match run {
        Err(baton_server::ServeError::Halted(r)) => assert!(r.contains(&reason), "{r}"),
        other => panic!("run returned {other:?}"),
    }
}

/// Issue 9 (supervision): a panicking group-commit task halts the market.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_group_commit_halts_the_market() {
    a_dead_task_halts_the_market("group-commit", |f| {
        f.commit_panics
            .store(true, std::sync::atomic::Ordering::Relaxed)
    })
    .await;
}

/// Issue 9 (supervision): a panicking scheduler halts the market (it used to be
/// `let _ = scheduler_task.await`, and intake went on acknowledging orders that never clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_scheduler_halts_the_market() {
    a_dead_task_halts_the_market("scheduler", |f| {
        f.scheduler_panics
            .store(true, std::sync::atomic::Ordering::Relaxed)
    })
    .await;
}

/// Issue 9: with `connections_max` connections open, the next client is not served until one
/// of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_waits_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(
        sqlite_url(&dir),
        Options {
            connections_max: 2,
            ..Options::default()
        },
    )
    .await;
    let url = format!("http://{}", h.addr);
    let info = |channel: Channel| async move {
        MarketServiceClient::new(channel)
            .get_market_info(pb::GetMarketInfoRequest {})
            .await
            .map(|r| r.into_inner())
    };
    // The harness's connection and a second one: both served.
    info(h.channel.clone()).await.unwrap();
    let second = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    info(second.clone()).await.unwrap();
    // A third waits.
    let third = tokio::spawn(async move {
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        info(channel).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served at a limit of two"
    );
    // Closing the second lets it in.
    drop(second);
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third connection is served once the second closes")
        .unwrap()
        .unwrap();
}

/// The services one reflection version lists.
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version as r;
        let mut client = r::server_reflection_client::ServerReflectionClient::new($channel);
        let request = r::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(r::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("not a service list: {other:?}"),
        }
    }};
}

/// Regression (issue 9): server reflection answers in v1 and in v1alpha (what Python's
/// grpcio-reflection, older grpcurl and Postman speak), listing every service.
#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(sqlite_url(&dir), Options::default()).await;
    let ours = [
        "baton.v1.AdminService",
        "baton.v1.AuditService",
        "baton.v1.MarketService",
        "grpc.health.v1.Health",
    ];
    let v1 = reflected_services!(v1, h.channel.clone());
    let v1alpha = reflected_services!(v1alpha, h.channel.clone());
    for s in ours {
        assert!(v1.iter().any(|n| n == s), "v1 lacks {s}: {v1:?}");
        assert!(
            v1alpha.iter().any(|n| n == s),
            "v1alpha lacks {s}: {v1alpha:?}"
        );
    }
    assert!(
        v1.iter()
            .any(|n| n == "grpc.reflection.v1.ServerReflection"),
        "{v1:?}"
    );
    assert!(
        v1alpha
            .iter()
            .any(|n| n == "grpc.reflection.v1alpha.ServerReflection"),
        "{v1alpha:?}"
    );
}

#[tokio::test]
async fn a_closed_gate_is_failed_precondition() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let mut o = sell(1, "10", "0.05");
    // T0 started a second ago; its gate closed a minute before that.
    o.interval_start = T0;
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Too far ahead: three intervals are open, the fourth is not.
    o.interval_start = T0 + 4 * INTERVAL_S;
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    o.interval_start = T0 + 3 * INTERVAL_S;
    h.submit(&key(1), &o).await.unwrap();
}

/// Regression (grpcio findings): after a `ClearNow`, MarketInfo announced `intervals_ahead`
/// intervals from `next_open_interval` but intake refused the last of them, and the refusal
/// for the cleared interval said its gate "closed at" a time still in the future.
#[tokio::test]
async fn after_clear_now_market_info_and_intake_agree() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let r = h.admin_request(Command::ClearNow(pb::ClearNow {}));
    let cleared = h.admin.clear_now(r).await.unwrap().into_inner();
    assert_eq!(cleared.interval_start, T0 + INTERVAL_S);
    let info = h
        .market
        .get_market_info(pb::GetMarketInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.next_open_interval, T0 + 2 * INTERVAL_S);
    let mut o = sell(1, "10", "0.05");
    for i in 0..i64::from(info.intervals_ahead) {
        o.nonce += 1;
        o.interval_start = info.next_open_interval + i * INTERVAL_S;
        h.submit(&key(1), &o)
            .await
            .unwrap_or_else(|e| panic!("announced interval {} refused: {e:?}", o.interval_start));
    }
    o.nonce += 1;
    o.interval_start += INTERVAL_S;
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The cleared interval's gate time (T0 + 240) is still ahead of the clock (T0 + 1).
    o.nonce += 1;
    o.interval_start = T0 + INTERVAL_S;
    let e = h.submit(&key(1), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(!e.message().contains("closed at"), "{}", e.message());
    assert!(e.message().contains("already closed"), "{}", e.message());
    h.stop().await;
}

#[tokio::test]
async fn a_paused_market_is_failed_precondition() {
    let (_d, mut h) = with_participants(Options::default()).await;
    h.admin_call(Command::Pause(pb::Pause {})).await.unwrap();
    let e = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    h.admin_call(Command::Resume(pb::Resume {})).await.unwrap();
    h.submit(&key(1), &sell(2, "10", "0.05")).await.unwrap();
}

#[tokio::test]
async fn no_network_is_failed_precondition_until_a_scenario_loads() {
    let (_d, mut h) = with_participants(Options {
        scenario: false,
        ..Options::default()
    })
    .await;
    let e = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    h.admin_call(Command::LoadScenario(pb::LoadScenario {
        toml: TWO_NODE.into(),
    }))
    .await
    .unwrap();
    h.submit(&key(1), &sell(2, "10", "0.05")).await.unwrap();
}

/// Regression (grpcio findings): a participant registered with no network loaded could sit
/// at a node that the network loaded afterwards does not have. Both orders are checked: a load
/// that strands an active participant is refused, naming the field, the node and the
/// participant; with a network loaded, registration refuses an unknown node.
#[tokio::test]
async fn participants_and_the_network_agree_on_nodes_in_either_order() {
    let (_d, mut h) = with_participants(Options {
        scenario: false,
        ..Options::default()
    })
    .await;
    h.register("carol", &key(3), "Z", "10").await;
    let e = h
        .admin_call(Command::LoadScenario(pb::LoadScenario {
            toml: TWO_NODE.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("nodes:"), "{}", e.message());
    assert!(
        e.message().contains("\"Z\"") && e.message().contains("\"carol\""),
        "{}",
        e.message()
    );
    // Nothing was installed.
    let e = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Once carol is suspended the network loads, and registration checks nodes against it.
    h.admin_call(Command::SuspendParticipant(pb::SuspendParticipant {
        participant_id: "carol".into(),
    }))
    .await
    .unwrap();
    h.admin_call(Command::LoadScenario(pb::LoadScenario {
        toml: TWO_NODE.into(),
    }))
    .await
    .unwrap();
    let r = h.admin_request(Command::RegisterParticipant(pb::RegisterParticipant {
        participant_id: "dan".into(),
        public_key_hex: hex::encode(key(4).verifying_key().to_bytes()),
        node: "Z".into(),
        roles: vec!["prosumer".into()],
        capacity_kw: "10".into(),
        ..Default::default()
    }));
    let e = h.admin.register_participant(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("node:"), "{}", e.message());
    h.submit(&key(1), &sell(2, "10", "0.05")).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn the_open_order_limit_is_resource_exhausted() {
    let (_d, mut h) = with_participants(Options {
        open_orders_max: 2,
        ..Options::default()
    })
    .await;
    h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap();
    h.submit(&key(1), &sell(2, "10", "0.05")).await.unwrap();
    let e = h.submit(&key(1), &sell(3, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
}

#[tokio::test]
async fn an_admin_request_not_signed_by_the_operator_is_unauthenticated() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let mut r = h.admin_request(Command::Pause(pb::Pause {}));
    r.signature = key(1).sign(&r.request).to_bytes().to_vec();
    let e = h.admin.pause(r).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test]
async fn a_restart_keeps_participants_nonces_and_open_orders() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(sqlite_url(&dir), Options::default()).await;
    h.register("alice", &key(1), "A", "50").await;
    let ack = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap();
    h.stop().await;
    let mut h = start(sqlite_url(&dir), Options::default()).await;
    // The nonce survived: a replay is refused; the participant is known without registering.
    let e = h.submit(&key(1), &sell(1, "10", "0.05")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let listed = h
        .market
        .list_orders(query(&key(1), "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.orders.len(), 1);
    assert_eq!(listed.orders[0].order_id, ack.order_id);
    assert_eq!(listed.orders[0].ledger_seq, ack.ledger_seq);
    h.stop().await;
    let _ = h.db_url;
}

/// Regression (grpcio findings): an accelerated clock starts again from its origin on a
/// restart, so the market clock read earlier than intervals the ledger already recorded. A
/// market clock never goes backwards.
#[tokio::test]
async fn a_restart_never_moves_the_market_clock_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(sqlite_url(&dir), Options::default()).await;
    for _ in 0..2 {
        let r = h.admin_request(Command::ClearNow(pb::ClearNow {}));
        h.admin.clear_now(r).await.unwrap();
    }
    let info = |h: &mut Harness| {
        let mut m = h.market.clone();
        async move {
            m.get_market_info(pb::GetMarketInfoRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let before = info(&mut h).await;
    assert_eq!(before.last_cleared_interval, T0 + 2 * INTERVAL_S);
    h.stop().await;
    // The same clock configuration again: it starts at T0 + 1 s.
    let mut h = start(sqlite_url(&dir), Options::default()).await;
    let after = info(&mut h).await;
    assert_eq!(after.last_cleared_interval, T0 + 2 * INTERVAL_S);
    assert!(
        after.now_ms >= before.now_ms,
        "{} < {}",
        after.now_ms,
        before.now_ms
    );
    // Market time is at least the gate of the last recorded interval.
    assert!(
        after.now >= T0 + 2 * INTERVAL_S - support::GATE_LEAD_S,
        "now {} is behind the recorded interval {}",
        after.now,
        after.last_cleared_interval
    );
    assert_eq!(after.next_open_interval, T0 + 3 * INTERVAL_S);
    h.stop().await;
}

/// A flexibility offer (product FLEX_UP, a sell) is procured for the operator's requirement and
/// paid its price; flexibility cannot be bought with an order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flexibility_offer_is_procured_and_paid_the_requirement_price() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(sqlite_url(&dir), Options::default()).await;
    let dave = key(4);
    h.register("dave", &dave, "B", "50").await;
    let mut fills = h
        .market
        .watch_fills(query(&dave, "dave"))
        .await
        .unwrap()
        .into_inner();
    // The two-node scenario's requirement `evening-B`: up to 10 kW at B at most 0.20.
    let mut flex = order("dave", 1, "B", pb::Side::Sell, &[("15", "0.12")]);
    flex.product = pb::Product::FlexUp as i32;
    let ack = h.submit(&dave, &flex).await.unwrap();
    let mut bad = order("dave", 2, "B", pb::Side::Buy, &[("5", "0.12")]);
    bad.product = pb::Product::FlexUp as i32;
    let e = h.submit(&dave, &bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("side"), "{}", e.message());
    let mut unknown = order("dave", 3, "B", pb::Side::Sell, &[("5", "0.12")]);
    unknown.product = 99;
    let e = h.submit(&dave, &unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("product"), "{}", e.message());

    let r = h.admin_request(Command::ClearNow(pb::ClearNow {}));
    h.admin.clear_now(r).await.unwrap();
    let fill = tokio::time::timeout(Duration::from_secs(RESULT_WAIT_S), fills.message())
        .await
        .expect("a fill within the wait")
        .unwrap()
        .expect("a fill");
    assert_eq!(fill.order_id, ack.order_id);
    assert_eq!(fill.product, pb::Product::FlexUp as i32);
    // 10 of the 15 kW are needed; the offer is marginal, so the requirement's price is its
    // 0.12, and it earns 10 kW × 0.12 × 5/60 h = 0.10.
    assert_eq!(
        fill.accepted_total
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        10.into()
    );
    assert_eq!(
        fill.flex_price.parse::<rust_decimal::Decimal>().unwrap(),
        rust_decimal::Decimal::new(12, 2)
    );
    assert_eq!(fill.payment, "0.10");
    h.stop().await;
    check_ledger(&sqlite_url(&dir), 1, &support::operator().public_key()).await;
}

fn spawn_serve(dir: &std::path::Path) -> support::ServeProcess {
    spawn_serve_with(dir, "20", None)
}

/// `baton serve` on two-node with one-minute intervals at `time_scale`; each stderr line is
/// also sent to `lines`.
fn spawn_serve_with(
    dir: &std::path::Path,
    time_scale: &str,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> support::ServeProcess {
    let key = dir.join("operator.key");
    let mut serve = support::serve_command(crate::BATON, dir, &key, "two-node.toml");
    serve
        // One-minute intervals at 20× real time: a gate closes every 3 real seconds.
        .args(["--interval-minutes", "1", "--gate-lead-seconds", "10"])
        .args(["--intervals-ahead", "2", "--time-scale", time_scale])
        .args(["--open-orders-max", "1000000"])
        .env("RUST_LOG", "warn,baton_server::scheduler=info");
    support::ServeProcess::spawn(serve, lines)
}

async fn connect(addr: &str) -> Channel {
    support::connect(addr).await
}

fn signed_admin(key: &OperatorKey, nonce: u64, command: Command) -> pb::SignedAdminRequest {
    support::admin_request_by(key, nonce, command)
}

/// Polls the server's status (admin nonces above `nonce_floor`) until `interval` is cleared.
async fn wait_until_cleared(addr: &str, operator: &OperatorKey, nonce_floor: u64, interval: i64) {
    let mut admin = AdminServiceClient::new(connect(addr).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(RESULT_WAIT_S);
    let mut nonce = nonce_floor;
    loop {
        nonce += 1;
        let s = admin
            .status(signed_admin(
                operator,
                nonce,
                Command::Status(pb::Status {}),
            ))
            .await
            .unwrap()
            .into_inner();
        if s.last_cleared_interval >= interval {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "interval {interval} not cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers `alice` at node A (admin nonce 1) on a spawned server.
async fn register_alice(
    admin: &mut AdminServiceClient<Channel>,
    operator: &OperatorKey,
    alice: &SigningKey,
) {
    admin
        .register_participant(signed_admin(
            operator,
            1,
            support::register_command("alice", alice, "A", "50"),
        ))
        .await
        .unwrap();
}

/// SIGKILL during intake loses no acknowledged order and clears no interval twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_order_and_clears_each_interval_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = spawn_serve(dir.path());
    let operator = OperatorKey::load(&dir.path().join("operator.key")).unwrap();
    let ch = connect(&c.addr).await;
    let mut admin = AdminServiceClient::new(ch.clone());
    let mut market = MarketServiceClient::new(ch);
    let alice = key(1);
    register_alice(&mut admin, &operator, &alice).await;
    // Submit for whatever interval is open until the kill; remember every ack.
    let mut acked: Vec<pb::SubmitOrderResponse> = Vec::new();
    let t_kill = std::time::Instant::now() + Duration::from_millis(2_500);
    let mut nonce = 0;
    let mut admin_nonce = 1;
    while std::time::Instant::now() < t_kill {
        admin_nonce += 1;
        let status = admin
            .status(signed_admin(
                &operator,
                admin_nonce,
                Command::Status(pb::Status {}),
            ))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..20 {
            nonce += 1;
            let mut o = order("alice", nonce, "A", pb::Side::Sell, &[("1", "0.05")]);
            o.interval_start = status.next_interval_start;
            match market.submit_order(sign_order(&alice, &o)).await {
                Ok(a) => acked.push(a.into_inner()),
                Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
            }
        }
    }
    c.kill();
    assert!(acked.len() > 20, "only {} orders acknowledged", acked.len());

    // Restart on the same ledger; wait until every acknowledged interval is cleared.
    let mut c = spawn_serve(dir.path());
    let last = acked.iter().map(|a| a.interval_start).max().unwrap();
    wait_until_cleared(&c.addr, &operator, 1, last).await;
    c.terminate();

    let url = support::sqlite_url(dir.path());
    let ledger = Ledger::open_existing(&url).await.unwrap();
    let entries = support::all_entries(&ledger).await;
    ledger.close().await;
    for a in &acked {
        let e = &entries[(a.ledger_seq - 1) as usize];
        assert_eq!(e.kind, EntryKind::Order, "{a:?}");
        let body = baton_ledger::SignedMessageBody::from_bytes(EntryKind::Order, &e.body).unwrap();
        assert_eq!(body.order_id.as_deref(), Some(a.order_id.as_str()));
    }
    // Every acknowledged order was in exactly one cleared book.
    let mut cleared_orders = std::collections::BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == EntryKind::IntervalResult)
    {
        for id in book_ids(&e.body) {
            *cleared_orders.entry(id).or_insert(0) += 1;
        }
    }
    for a in &acked {
        assert_eq!(cleared_orders.get(&a.order_id), Some(&1), "{}", a.order_id);
    }
    let intervals = check_ledger(&url, 1, &operator.public_key()).await;
    eprintln!(
        "crash test: {} orders acknowledged, {} intervals recorded",
        acked.len(),
        intervals.len()
    );
}

/// SIGKILL while an interval with a large book is being cleared: on restart the interval is
/// recorded exactly once (never half), with every acknowledged order in its book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_clearing_records_the_interval_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (clearing_tx, clearing_rx) = std::sync::mpsc::channel();
    // Six real seconds per one-minute interval: time to submit a large book before its gate.
    let mut c = spawn_serve_with(dir.path(), "10", Some(clearing_tx));
    let operator = OperatorKey::load(&dir.path().join("operator.key")).unwrap();
    let ch = connect(&c.addr).await;
    let mut admin = AdminServiceClient::new(ch.clone());
    let mut market = MarketServiceClient::new(ch);
    let alice = key(1);
    register_alice(&mut admin, &operator, &alice).await;
    let status = admin
        .status(signed_admin(&operator, 2, Command::Status(pb::Status {})))
        .await
        .unwrap()
        .into_inner();
    // One stream of distinct orders (many price levels) for the interval after the next: its
    // gate is at least one interval (6 real seconds) away.
    let target = status.next_interval_start + 60;
    const BOOK_ORDERS: u64 = 12_000;
    let orders: Vec<pb::SignedOrder> = (1..=BOOK_ORDERS)
        .map(|n| {
            let side = if n % 2 == 0 {
                pb::Side::Buy
            } else {
                pb::Side::Sell
            };
            let price = format!("0.{:04}", 100 + n % 3_000);
            let mut o = order("alice", n, "A", side, &[("0.5", &price)]);
            o.interval_start = target;
            sign_order(&alice, &o)
        })
        .collect();
    let outcome = market
        .submit_orders(tokio_stream::iter(orders))
        .await
        .unwrap()
        .into_inner();
    let acked: Vec<pb::SubmitOrderResponse> = outcome
        .outcomes
        .into_iter()
        .filter_map(|o| match o.outcome {
            Some(pb::submit_outcome::Outcome::Accepted(a)) => Some(a),
            _ => None,
        })
        .collect();
    assert!(
        acked.len() > 1_000,
        "only {} of {BOOK_ORDERS} orders acknowledged before the gate",
        acked.len()
    );
    // Kill the moment the scheduler starts clearing the interval that holds the book.
    let needle = format!("interval={target}");
    let deadline = std::time::Instant::now() + Duration::from_secs(RESULT_WAIT_S);
    loop {
        let line = clearing_rx
            .recv_timeout(Duration::from_secs(RESULT_WAIT_S))
            .expect("the scheduler clears the interval");
        if line.contains("gate closed; clearing") && line.contains(&needle) {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    c.kill();
    let url = support::sqlite_url(dir.path());
    let recorded_at_kill = {
        let ledger = Ledger::open_existing(&url).await.unwrap();
        let r = ledger.has_interval(target).await.unwrap();
        ledger.close().await;
        r
    };

    // Restart: the interval whose gate closed while down is cleared (or was, before the kill).
    let mut c = spawn_serve_with(dir.path(), "10", None);
    wait_until_cleared(&c.addr, &operator, 2, target).await;
    c.terminate();

    let ledger = Ledger::open_existing(&url).await.unwrap();
    let entries = support::all_entries(&ledger).await;
    ledger.close().await;
    for kind in [
        EntryKind::IntervalInput,
        EntryKind::IntervalResult,
        EntryKind::Settlement,
    ] {
        let n = entries
            .iter()
            .filter(|e| e.kind == kind && e.interval_start == Some(target))
            .count();
        assert_eq!(n, 1, "interval {target}: {n} {kind:?} entries");
    }
    let result = entries
        .iter()
        .find(|e| e.kind == EntryKind::IntervalResult && e.interval_start == Some(target))
        .unwrap();
    let in_book: std::collections::HashSet<String> = book_ids(&result.body).into_iter().collect();
    for a in &acked {
        assert!(
            in_book.contains(&a.order_id),
            "{} missing from the book",
            a.order_id
        );
    }
    assert_eq!(in_book.len(), acked.len());
    check_ledger(&url, 1, &operator.public_key()).await;
    eprintln!(
        "crash while clearing: {} orders in the book; interval recorded before the kill: {recorded_at_kill}",
        acked.len()
    );
}

fn register_with(
    id: &str,
    key: &SigningKey,
    roles: &[&str],
    enums: &[pb::ParticipantRole],
) -> Command {
    Command::RegisterParticipant(pb::RegisterParticipant {
        participant_id: id.into(),
        public_key_hex: hex::encode(key.verifying_key().to_bytes()),
        node: "B".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        participant_roles: enums.iter().map(|r| *r as i32).collect(),
        capacity_kw: String::new(),
    })
}

fn flex_requirement(buyer: &str, direction: &str, flex_direction: pb::FlexDirection) -> Command {
    Command::PostFlexRequirement(pb::PostFlexRequirement {
        id: "evening-B".into(),
        nodes: vec!["B".into()],
        direction: direction.into(),
        blocks: vec![pb::FlexBlock {
            quantity: "5".into(),
            price: "0.2".into(),
        }],
        buyer: buyer.into(),
        flex_direction: flex_direction as i32,
    })
}

/// Roles are consulted: only prosumers trade, only network operators pay for flexibility; the
/// enum and the v1 names are one set; a participant cannot take a system account's name.
#[tokio::test]
async fn roles_decide_who_may_trade_and_who_may_buy_flexibility() {
    let (_d, mut h) = with_participants(Options::default()).await;
    let dso = key(5);
    h.admin_call(register_with(
        "dso",
        &dso,
        &[],
        &[pb::ParticipantRole::NetworkOperator],
    ))
    .await
    .unwrap();
    // A network operator may not submit (or cancel) orders.
    let o = order("dso", 1, "B", pb::Side::Buy, &[("5", "0.3")]);
    let e = h.submit(&dso, &o).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "participant \"dso\" lacks the prosumer role (holds: network_operator)"
    );
    // Registered with neither field: a prosumer, listed with both spellings.
    h.admin_call(register_with("erin", &key(6), &[], &[]))
        .await
        .unwrap();
    let o = order("erin", 1, "B", pb::Side::Buy, &[("5", "0.3")]);
    h.submit(&key(6), &o).await.unwrap();
    let r = h.admin_request(Command::ListParticipants(pb::ListParticipants::default()));
    let listed = h.admin.list_participants(r).await.unwrap().into_inner();
    let erin = listed
        .participants
        .iter()
        .find(|p| p.participant_id == "erin")
        .unwrap();
    assert_eq!(erin.roles, ["prosumer"]);
    assert_eq!(
        erin.participant_roles,
        [pb::ParticipantRole::Prosumer as i32]
    );
    // Both fields must name one set; unknown names and enum values are refused by field.
    let bad = [
        (
            register_with("f1", &key(7), &["regulator"], &[pb::ParticipantRole::Prosumer]),
            "participant_roles: names prosumer but roles names regulator",
        ),
        (
            register_with("f2", &key(7), &["prosumer", "admin"], &[]),
            "roles[1]: \"admin\" is not one of prosumer, network_operator, grid_connection, regulator",
        ),
        (
            register_with("network-operator", &key(7), &[], &[]),
            "participant_id: \"network-operator\" is a system account's name (a participant's account is its id)",
        ),
    ];
    for (command, message) in bad {
        let e = h.admin_call(command).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(e.message(), message);
    }
    let mut enum_nine = pb::RegisterParticipant {
        participant_id: "f3".into(),
        public_key_hex: hex::encode(key(7).verifying_key().to_bytes()),
        node: "B".into(),
        ..Default::default()
    };
    enum_nine.participant_roles = vec![9];
    let e = h
        .admin_call(Command::RegisterParticipant(enum_nine))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "participant_roles[0]: 9 is not a participant role"
    );
    // Flexibility: a prosumer may not be the buyer, a network operator may; the direction may
    // come as the enum, the v1 string, or both agreeing.
    let e = h
        .admin_call(flex_requirement("alice", "", pb::FlexDirection::Up))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "participant \"alice\" lacks the network_operator role (holds: prosumer)"
    );
    let e = h
        .admin_call(flex_requirement("nobody", "", pb::FlexDirection::Up))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e
        .message()
        .starts_with("buyer: \"nobody\" is not an active participant"));
    let e = h
        .admin_call(flex_requirement("dso", "down", pb::FlexDirection::Up))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "flex_direction: is up but direction is down");
    let e = h
        .admin_call(flex_requirement("dso", "", pb::FlexDirection::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "flex_direction: is missing (up or down)");
    h.admin_call(flex_requirement("dso", "", pb::FlexDirection::Down))
        .await
        .unwrap();
    h.admin_call(flex_requirement("", "up", pb::FlexDirection::Unspecified))
        .await
        .unwrap();
    h.stop().await;
}

/// Issue 9: a real `baton serve` whose scheduler dies exits non-zero, saying why — so a
/// process supervisor (systemd, Kubernetes) restarts it instead of leaving a market that
/// acknowledges orders it will never clear.
#[test]
fn a_baton_serve_whose_scheduler_dies_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let key = dir.path().join("operator.key");
    let mut serve = support::serve_command(crate::BATON, dir.path(), &key, "two-node.toml");
    serve.args(["--inject-fault", "scheduler"]);
    let mut p = support::ServeProcess::spawn(serve, Some(tx));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "baton serve still running 60 s after its scheduler panicked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Let the reader thread pass on the last lines.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stderr: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(1), "{status}: {stderr:#?}");
    let last = stderr.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("baton: error: market halted: ") && last.contains("scheduler"),
        "{stderr:#?}"
    );
}

/// The ids of the orders and flexibility offers a recorded result lists: the cleared book.
fn book_ids(result: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(result).unwrap();
    ["orders", "flex_offers"]
        .iter()
        .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}
