//! The SDK against a real in-process `baton serve` (`baton_server::run` on 127.0.0.1:0, a
//! SQLite ledger in a temporary directory, the two-node scenario, a market clock that starts
//! at a fixed instant). Nothing is mocked: acks are checked against the ledger the server
//! wrote, and lost answers are produced by a real TCP proxy that drops them.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_client::{
    connect, pb, sign_order, Ack, AdminClient, AdminKey, AuditClient, BlockSpec, ClientError, Code,
    Decimal, FlexDirection, FlexRequirement, MarketClient, NewOrder, NewParticipant,
    ParticipantKey, PublicClient,
};
use baton_ledger::{EntryKind, Ledger, SignedMessageBody};
use prost::Message;
use support::{INTERVAL_S, OPERATOR_SEED, T0, TWO_NODE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// The first interval open for orders: the server starts one second into T0.
const OPEN: i64 = T0 + INTERVAL_S;
/// Real seconds a test waits for a stream message before failing.
const WAIT_S: u64 = 30;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Server {
    addr: SocketAddr,
    channel: baton_client::Channel,
    db_url: String,
    server: support::Server,
}

/// Starts a server on the ledger in `dir`, the market clock one second into T0 running
/// `scale` times faster than real time.
async fn start(dir: &tempfile::TempDir, scale: f64) -> Server {
    let mut config = support::config(&support::sqlite_url(dir.path()));
    config.clock = support::clock(scale);
    let server = support::Server::start(config).await;
    let channel = connect(&server.url()).await.unwrap();
    Server {
        addr: server.addr,
        channel,
        db_url: server.db_url.clone(),
        server,
    }
}

impl Server {
    async fn stop(&mut self) {
        self.server.stop().await;
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(self.channel.clone(), AdminKey::from_seed(&OPERATOR_SEED))
    }

    /// Registers `id` at `node` with the key from seed `[seed; 32]` and returns its client.
    async fn participant(&self, id: &str, seed: u8, node: &str) -> MarketClient {
        let key = ParticipantKey::from_seed(&[seed; 32]);
        self.admin()
            .register_participant(&NewParticipant {
                id: id.into(),
                node: node.into(),
                public_key_hex: key.public_key_hex(),
                roles: vec![pb::ParticipantRole::Prosumer],
                capacity_kw: Some(d("100")),
            })
            .await
            .unwrap();
        MarketClient::new(self.channel.clone(), id, key)
    }
}

fn sell_40_at_a() -> NewOrder {
    NewOrder::energy(
        OPEN,
        "A",
        pb::Side::Sell,
        vec![BlockSpec::priced(d("40"), d("0.04"))],
    )
}

fn buy_70_at_b() -> NewOrder {
    NewOrder::energy(
        OPEN,
        "B",
        pb::Side::Buy,
        vec![
            BlockSpec::priced(d("50"), d("0.45")),
            BlockSpec::priced(d("20"), d("0.35")),
        ],
    )
}

/// Every order entry in the ledger (read through the audit service), as (seq, signed body).
async fn order_entries(channel: &baton_client::Channel) -> Vec<(u64, SignedMessageBody)> {
    let audit = AuditClient::new(channel.clone());
    let head = audit.head().await.unwrap().seq;
    let mut out = Vec::new();
    let mut from = 1;
    while from <= head {
        let page = audit.entries(from, head).await.unwrap();
        from = page.last().unwrap().seq + 1;
        for e in page.into_iter().filter(|e| e.kind == "order") {
            out.push((
                e.seq,
                SignedMessageBody::from_bytes(EntryKind::Order, &e.body).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_is_acknowledged_once_its_order_is_in_the_sqlite_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let ack = alice.submit(sell_40_at_a()).await.unwrap();
    assert_eq!(ack.order_id, format!("alice-{}", alice.nonces().last()));
    assert_eq!(ack.interval_start, OPEN);
    let info = alice.get_order(&ack.order_id).await.unwrap();
    assert_eq!(info.ledger_seq, ack.ledger_seq);
    assert_eq!(info.status, pb::OrderStatus::Open as i32);
    assert_eq!(info.blocks[0].quantity, "40");
    s.stop().await;
    // The acknowledged entry is in the database file, holding alice's signed bytes.
    let ledger = Ledger::open_existing(&s.db_url).await.unwrap();
    let e = ledger.entry(ack.ledger_seq).await.unwrap().unwrap();
    ledger.close().await;
    assert_eq!(e.kind, EntryKind::Order);
    let body = SignedMessageBody::from_bytes(EntryKind::Order, &e.body).unwrap();
    assert_eq!(body.order_id.as_deref(), Some(ack.order_id.as_str()));
    let order = pb::Order::decode(body.payload.as_slice()).unwrap();
    assert_eq!(order.nonce, alice.nonces().last());
    assert_eq!(order.blocks[0].price, "0.04");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_the_same_signed_order_returns_its_first_ack_and_adds_no_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let order = alice.order(&sell_40_at_a());
    let signed = alice.sign(&order);
    let first = alice.submit_signed_order(signed.clone()).await.unwrap();
    assert_eq!(alice.stats().resolved, 0);
    // The same bytes again, as a retry after a lost answer would send them: the server
    // refuses the repeated nonce and the client answers with the order it finds.
    let second = alice.submit_signed_order(signed).await.unwrap();
    // The same acknowledgement, except that one rebuilt from the server's books carries no
    // receipt (receipts are signed at commit and not kept; the first answer had it).
    assert!(first.receipt.is_some());
    assert_eq!(
        Ack {
            receipt: first.receipt.clone(),
            ..second.clone()
        },
        first
    );
    assert!(second.receipt.is_none());
    assert_eq!(alice.stats().resolved, 1);
    let orders = order_entries(&s.channel).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0].0, first.ledger_seq);
    // Another participant's signed order is not this client's to deliver.
    let bob = s.participant("bob", 2, "B").await;
    let bobs = bob.sign(&bob.order(&buy_70_at_b()));
    let e = alice.submit_signed_order(bobs).await.unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    s.stop().await;
}

/// A TCP proxy that, once armed, loses the server's answer to the next request: it forwards
/// the request, drops everything the server sends back, and after `hold` closes the client's
/// connection, as a broken network would. Later connections pass through untouched.
async fn lossy_proxy(server: SocketAddr, hold: Duration) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let armed_for_task = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
            let armed = armed_for_task.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = upstream.into_split();
                let losing = Arc::new(AtomicBool::new(false));
                let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
                let losing_up = losing.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::SeqCst) {
                            losing_up.store(true, Ordering::SeqCst);
                            let cut_tx = cut_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(hold).await;
                                let _ = cut_tx.send(true);
                            });
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    tokio::select! {
                        r = sr.read(&mut buf) => {
                            let n = match r {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if losing.load(Ordering::SeqCst) {
                                continue;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        _ = cut_rx.changed() => break,
                    }
                }
                // Dropping both halves closes the client's connection mid-request.
                up.abort();
            });
        }
    });
    (addr, armed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_answer_is_lost_is_retried_and_acknowledged_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let key = ParticipantKey::from_seed(&[1; 32]);
    s.participant("alice", 1, "A").await;
    let (proxy, armed) = lossy_proxy(s.addr, Duration::from_millis(1_000)).await;
    let channel = connect(&proxy.to_string()).await.unwrap();
    let alice = MarketClient::new(channel, "alice", key);
    // Settle the connection (HTTP/2 settings, window updates) before arming.
    alice.market_info().await.unwrap();
    armed.store(true, Ordering::SeqCst);
    let ack = alice.submit(sell_40_at_a()).await.unwrap();
    let stats = alice.stats();
    assert!(
        !armed.load(Ordering::SeqCst),
        "the proxy never lost an answer"
    );
    assert!(stats.retries >= 1, "{stats:?}");
    assert_eq!(stats.resolved, 1, "{stats:?}");
    // One order in the ledger, and the ack is the one its first attempt earned.
    let orders = order_entries(&s.channel).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0].0, ack.ledger_seq);
    assert_eq!(orders[0].1.order_id.as_deref(), Some(ack.order_id.as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_the_server_already_used_is_skipped_and_the_order_signed_anew() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    // Another process with alice's key and a clock far ahead used a large nonce.
    let other = MarketClient::new(
        s.channel.clone(),
        "alice",
        ParticipantKey::from_seed(&[1; 32]),
    );
    other.nonces().observe(u64::MAX / 4);
    let far = other.submit(sell_40_at_a()).await.unwrap();
    assert_eq!(far.order_id, format!("alice-{}", u64::MAX / 4 + 1));
    let ack = alice.submit(sell_40_at_a()).await.unwrap();
    assert_eq!(alice.stats().nonce_resyncs, 1);
    assert_eq!(ack.order_id, format!("alice-{}", u64::MAX / 4 + 2));
    assert_eq!(order_entries(&s.channel).await.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_many_and_a_gateway_stream_report_each_order_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let bob = s.participant("bob", 2, "B").await;
    let bad = NewOrder::energy(
        OPEN,
        "A",
        pb::Side::Sell,
        vec![BlockSpec::priced(d("1"), d("99"))],
    );
    let out = alice
        .submit_many(vec![sell_40_at_a(), bad, sell_40_at_a()])
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    let (a0, a2) = (out[0].as_ref().unwrap(), out[2].as_ref().unwrap());
    assert!(a2.ledger_seq > a0.ledger_seq);
    let e = out[1].as_ref().unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("blocks[0].price"), "{e}");
    // A gateway: orders of two participants, signed by each, in one stream.
    let pa = alice.order(&sell_40_at_a());
    let pb_ = bob.order(&buy_70_at_b());
    let signed = vec![alice.sign(&pa), bob.sign(&pb_), alice.sign(&pa)];
    let out = PublicClient::new(s.channel.clone())
        .submit_signed(signed)
        .await
        .unwrap();
    assert_eq!(
        out[0].as_ref().unwrap().order_id,
        format!("alice-{}", pa.nonce)
    );
    assert_eq!(
        out[1].as_ref().unwrap().order_id,
        format!("bob-{}", pb_.nonce)
    );
    assert_eq!(
        out[2].as_ref().unwrap_err().code(),
        Some(Code::AlreadyExists)
    );
    assert_eq!(order_entries(&s.channel).await.len(), 4);
    // A free function signs too, with the same bytes.
    assert_eq!(
        sign_order(&ParticipantKey::from_seed(&[1; 32]), &pa),
        alice.sign(&pa)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_takes_an_order_out_of_the_book_and_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let keep = alice.submit(sell_40_at_a()).await.unwrap();
    let later = NewOrder {
        interval_start: OPEN + INTERVAL_S,
        ..sell_40_at_a()
    };
    let gone = alice.submit(later).await.unwrap();
    let c = alice.cancel(&gone.order_id).await.unwrap();
    assert!(c.ledger_seq.unwrap() > gone.ledger_seq);
    let all = alice.list_orders(None).await.unwrap();
    assert_eq!(all.len(), 2);
    // Open orders first.
    assert_eq!(all[0].order_id, keep.order_id);
    assert_eq!(all[1].status, pb::OrderStatus::Cancelled as i32);
    let one = alice.list_orders(Some(OPEN + INTERVAL_S)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].order_id, gone.order_id);
    // Cancelling again is refused with the server's code and message.
    let e = alice.cancel(&gone.order_id).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("no longer open"), "{e}");
    let e = alice.get_order("alice-1").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // An id that is not <participant>-<nonce> is refused as such, naming the field.
    for bad in ["alice", "alice-007", "alice-1e3"] {
        let e = alice.cancel(bad).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("order_id: {bad:?} is not <participant>-<nonce>")),
            "{e}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_the_result_and_fills_of_a_clear_now() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let bob = s.participant("bob", 2, "B").await;
    let mut results = alice.watch_results().await.unwrap();
    let mut fills = bob.watch_fills().await.unwrap();
    alice.submit(sell_40_at_a()).await.unwrap();
    let bought = bob.submit(buy_70_at_b()).await.unwrap();
    let cleared = s.admin().clear_now().await.unwrap();
    assert_eq!(cleared.interval_start, OPEN);
    let wait = Duration::from_secs(WAIT_S);
    let r = tokio::time::timeout(wait, results.next())
        .await
        .expect("a result in time")
        .unwrap()
        .unwrap();
    assert_eq!(r.interval_start, OPEN);
    assert_eq!(r.orders, 2);
    assert_eq!(r.ledger_last_seq, cleared.ledger_last_seq);
    let price = |n: &str| d(&r.prices.iter().find(|p| p.node == n).unwrap().price);
    // The cable A→B (60 kW) binds: B at bob's 0.35 block, A at the grid's 0.30 import.
    assert_eq!((price("A"), price("B")), (d("0.3"), d("0.35")));
    let f = tokio::time::timeout(wait, fills.next())
        .await
        .expect("a fill in time")
        .unwrap()
        .unwrap();
    assert_eq!(f.order_id, bought.order_id);
    // 60 kW at 0.35 for five minutes: 60 × 0.35 × 5/60 = 1.75 paid.
    assert_eq!(d(&f.accepted_total), d("60"));
    assert_eq!(d(&f.payment), d("-1.75"));
    assert_eq!(alice.interval_result(OPEN).await.unwrap(), r);
    let o = bob.get_order(&bought.order_id).await.unwrap();
    assert_eq!(o.status, pb::OrderStatus::Cleared as i32);
    assert_eq!(d(&o.accepted_total), d("60"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_info_follows_the_accelerated_market_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 60.0).await;
    let public = PublicClient::new(s.channel.clone());
    let a = public.market_info().await.unwrap();
    assert!((T0 + 1..T0 + 60).contains(&a.now), "{}", a.now);
    assert_eq!(a.time_scale, 60.0);
    assert_eq!(a.interval_minutes, 5);
    assert_eq!(a.gate_lead_s, 60);
    assert_eq!(a.intervals_ahead, 3);
    assert_eq!(a.next_open_interval, OPEN);
    assert_eq!((a.price_floor.as_str(), a.price_cap.as_str()), ("-1", "10"));
    assert_eq!(a.nodes, vec!["A", "B"]);
    assert!(a.network_loaded && !a.paused);
    assert!(a.network_version > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = public.market_info().await.unwrap();
    // Half a real second is at least 30 market seconds.
    assert!(b.now_ms - a.now_ms >= 30_000, "{} → {}", a.now_ms, b.now_ms);
    // A network change is a new version.
    s.admin()
        .set_grid_prices("feeder", d("0.31"), d("0.02"))
        .await
        .unwrap();
    let c = public.market_info().await.unwrap();
    assert!(c.network_version > a.network_version);
    assert_eq!(
        s.admin().status().await.unwrap().network_version,
        c.network_version
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_and_intervals_are_listed_and_their_summaries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let alice = s.participant("alice", 1, "A").await;
    let bob = s.participant("bob", 2, "B").await;
    s.participant("carol", 3, "B").await;
    let admin = s.admin();
    admin.suspend_participant("carol").await.unwrap();
    let page = admin.list_participants_page("", 2).await.unwrap();
    let ids: Vec<_> = page
        .participants
        .iter()
        .map(|p| p.participant_id.as_str())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert_eq!(page.next_after, "bob");
    let all = admin.list_participants().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].participant_id, "carol");
    assert!(!all[2].active && all[0].active);
    assert_eq!(all[0].node, "A");
    assert_eq!(all[0].capacity_kw, "100");
    assert_eq!(all[0].roles, ["prosumer"]);
    assert_eq!(
        all[1].public_key_hex,
        ParticipantKey::from_seed(&[2; 32]).public_key_hex()
    );

    alice.submit(sell_40_at_a()).await.unwrap();
    bob.submit(buy_70_at_b()).await.unwrap();
    let first = admin.clear_now().await.unwrap();
    let second = admin.clear_now().await.unwrap();
    assert_eq!(second.interval_start, OPEN + INTERVAL_S);
    let listed = admin.list_intervals(0, None).await.unwrap();
    assert_eq!(listed.len(), 2);
    let (newest, busy) = (&listed[0], &listed[1]);
    assert_eq!(newest.interval_start, OPEN + INTERVAL_S);
    assert_eq!(newest.orders, 0);
    assert_eq!(busy.interval_start, OPEN);
    assert_eq!(busy.orders, 2);
    // Participants only: bob bought 60 (50 + 10 of his 0.35 block), alice sold her 40; the
    // grid's 20 kW import is not a participant's.
    assert_eq!((busy.bought.as_str(), busy.sold.as_str()), ("60", "40"));
    assert_eq!(
        (busy.price_min.as_str(), busy.price_max.as_str()),
        ("0.3", "0.35")
    );
    assert_eq!(busy.congested_lines, ["A-B"]);
    assert_eq!(
        (busy.ledger_first_seq, busy.ledger_last_seq),
        (first.ledger_first_seq, first.ledger_last_seq)
    );
    let result = alice.interval_result(OPEN).await.unwrap();
    let procured: Decimal = result.flex.iter().map(|f| d(&f.procured)).sum();
    assert_eq!(d(&busy.flex_procured), procured);
    assert!(busy.clearing_ms.is_some() && newest.clearing_ms.is_some());
    assert_eq!(admin.list_intervals(1, None).await.unwrap().len(), 1);
    assert_eq!(
        admin
            .list_intervals(0, Some(OPEN + INTERVAL_S))
            .await
            .unwrap()[0]
            .interval_start,
        OPEN
    );
    s.stop().await;

    // After a restart the summaries come from the ledger alone; the clearing time, which the
    // ledger does not record, is absent.
    let mut s = start(&dir, 1.0).await;
    let again = s.admin().list_intervals(0, None).await.unwrap();
    assert_eq!(again.len(), 2);
    for (a, b) in again.iter().zip(&listed) {
        assert_eq!(a.clearing_ms, None);
        let mut b = b.clone();
        b.clearing_ms = None;
        assert_eq!(*a, b);
    }
    s.stop().await;
}

/// An admin request signed with an explicit nonce, so a test can replay its exact bytes.
fn admin_request(nonce: u64, command: pb::admin_request::Command) -> pb::SignedAdminRequest {
    support::admin_request(nonce, command)
}

/// Sends a signed admin request to the RPC its command names.
async fn send_admin(
    channel: &baton_client::Channel,
    r: pb::SignedAdminRequest,
) -> Result<(), tonic::Status> {
    support::send_admin(channel, r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_admin_command_is_refused_after_a_restart() {
    use pb::admin_request::Command as C;
    let dir = tempfile::tempdir().unwrap();
    let key = ParticipantKey::from_seed(&[1; 32]);
    let commands = vec![
        C::RegisterParticipant(pb::RegisterParticipant {
            participant_id: "alice".into(),
            public_key_hex: key.public_key_hex(),
            node: "A".into(),
            roles: vec!["prosumer".into()],
            capacity_kw: "50".into(),
            ..Default::default()
        }),
        C::SuspendParticipant(pb::SuspendParticipant {
            participant_id: "alice".into(),
        }),
        C::SetGridPrices(pb::SetGridPrices {
            connection_id: "feeder".into(),
            import_price: "0.31".into(),
            export_price: "0.02".into(),
        }),
        C::PostFlexRequirement(pb::PostFlexRequirement {
            id: "noon-A".into(),
            nodes: vec!["A".into()],
            direction: "down".into(),
            blocks: vec![pb::FlexBlock {
                quantity: "5".into(),
                price: "0.1".into(),
            }],
            buyer: String::new(),
            ..Default::default()
        }),
        C::LoadScenario(pb::LoadScenario {
            toml: TWO_NODE.into(),
        }),
        C::Pause(pb::Pause {}),
        C::Resume(pb::Resume {}),
        C::ClearNow(pb::ClearNow {}),
    ];
    let mut nonce = 1_000;
    for command in commands {
        let name = format!("{command:?}");
        let mut s = start(&dir, 1.0).await;
        nonce += 10;
        let r = admin_request(nonce, command);
        send_admin(&s.channel, r.clone()).await.unwrap();
        s.stop().await;
        // A captured copy replayed after the restart: refused by its nonce, not by luck (a
        // second registration would also be refused, as already registered).
        let mut s = start(&dir, 1.0).await;
        let head = AuditClient::new(s.channel.clone())
            .head()
            .await
            .unwrap()
            .seq;
        let e = ClientError::from(send_admin(&s.channel, r).await.unwrap_err());
        assert_eq!(e.code(), Some(Code::AlreadyExists), "{name}: {e}");
        assert_eq!(e.last_accepted_nonce(), Some(nonce), "{name}: {e}");
        assert_eq!(
            AuditClient::new(s.channel.clone())
                .head()
                .await
                .unwrap()
                .seq,
            head,
            "{name}: the replay appended to the ledger"
        );
        s.stop().await;
    }
    // A client with fresh, clock-based nonces carries on.
    let mut s = start(&dir, 1.0).await;
    let status = s.admin().status().await.unwrap();
    assert!(status.last_admin_nonce > nonce);
    assert_eq!(status.participants, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_grpc_code_and_the_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    s.participant("alice", 1, "A").await;
    // The wrong key for alice.
    let impostor = MarketClient::new(
        s.channel.clone(),
        "alice",
        ParticipantKey::from_seed(&[9; 32]),
    );
    let e = impostor.submit(sell_40_at_a()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    assert_eq!(
        e.to_string(),
        "UNAUTHENTICATED: signature does not verify for participant \"alice\""
    );
    assert_eq!(impostor.stats().retries, 0, "a refusal is not retried");
    // Admin requests signed by someone else.
    let e = AdminClient::new(s.channel.clone(), AdminKey::from_seed(&[8; 32]))
        .status()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    // A flexibility requirement with a bad direction never reaches the wire as such: the
    // typed API has only up and down; a node the network lacks is refused by the server.
    let e = s
        .admin()
        .post_flex_requirement(&FlexRequirement {
            id: "x".into(),
            nodes: vec!["Z".into()],
            direction: FlexDirection::Up,
            blocks: vec![(d("1"), d("0.1"))],
            buyer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    s.stop().await;
    // Nothing listens any more.
    let e = connect(&s.addr.to_string()).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.is_transient());
}

/// Participants trading over one shared connection in the scale test.
const SHARED_PARTICIPANTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_participants_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(&dir, 1.0).await;
    let admin = s.admin();
    let t = std::time::Instant::now();
    let mut clients = Vec::with_capacity(SHARED_PARTICIPANTS);
    for i in 0..SHARED_PARTICIPANTS {
        let id = format!("h{i:03}");
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let key = ParticipantKey::from_seed(&seed);
        let node = if i % 2 == 0 { "A" } else { "B" };
        admin
            .register_participant(&NewParticipant {
                id: id.clone(),
                node: node.into(),
                public_key_hex: key.public_key_hex(),
                roles: vec![pb::ParticipantRole::Prosumer],
                capacity_kw: None,
            })
            .await
            .unwrap();
        clients.push((MarketClient::new(s.channel.clone(), id, key), node));
    }
    let registered = t.elapsed();
    // Everyone watches its fills and submits at once, over the one channel.
    let t = std::time::Instant::now();
    let mut watches = Vec::new();
    for (c, _) in &clients {
        watches.push(c.watch_fills().await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (c, node) in clients.iter().cloned() {
        tasks.spawn(async move {
            let side = if node == "A" {
                pb::Side::Sell
            } else {
                pb::Side::Buy
            };
            c.submit(NewOrder::energy(
                OPEN,
                node,
                side,
                vec![BlockSpec::priced(d("1"), d("0.1"))],
            ))
            .await
        });
    }
    let mut seqs = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        seqs.insert(r.unwrap().unwrap().ledger_seq);
    }
    let submitted = t.elapsed();
    assert_eq!(seqs.len(), SHARED_PARTICIPANTS);
    s.admin().clear_now().await.unwrap();
    for (w, (c, _)) in watches.iter_mut().zip(&clients) {
        let f = tokio::time::timeout(Duration::from_secs(WAIT_S), w.next())
            .await
            .unwrap_or_else(|_| panic!("{}: no fill", c.participant_id()))
            .unwrap()
            .unwrap();
        assert!(f.order_id.starts_with(c.participant_id()));
    }
    eprintln!(
        "{SHARED_PARTICIPANTS} participants on one connection: registered in {:.2} s, \
         {SHARED_PARTICIPANTS} watches opened and orders acknowledged in {:.2} s, \
         every fill delivered",
        registered.as_secs_f64(),
        submitted.as_secs_f64()
    );
    s.stop().await;
}
