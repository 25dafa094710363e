//! Metering and delivery settlement over real gRPC: every refusal of a meter reading with its
//! exact status, a delivery settled exactly once across a restart, and the audit of readings
//! against a dishonest operator on both ledger backends.

use std::str::FromStr;
use std::time::{Duration, Instant};

use baton_client::{
    pb, AdminClient, AdminKey, BlockSpec, Channel, Code, Decimal, MarketClient, NewOrder,
    NewParticipant, NewReading, ParticipantKey, PublicClient,
};
use baton_ledger::{DeliverySettlementBody, Entry, EntryKind, Ledger, MeterReadingBody};
use ed25519_dalek::SigningKey;
use support::{ManualClock, Server, TempLedger, INTERVAL_S, OPERATOR_SEED, T0};

/// The first interval open for orders: the server starts one second into T0.
const OPEN: i64 = T0 + INTERVAL_S;
/// When OPEN ends: readings for it are accepted from here.
const OPEN_END: i64 = OPEN + INTERVAL_S;
/// The reading deadline the tests configure, seconds after an interval ends.
const DEADLINE_S: i64 = 600;
/// How long a test waits for the scheduler to act on a clock it moved.
const SCHEDULER_WAIT_S: u64 = 30;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The participant key from seed `[n; 32]`, as the SDK and as the harness hold it.
fn keys(n: u8) -> (ParticipantKey, SigningKey) {
    (ParticipantKey::from_seed(&[n; 32]), support::key(n))
}

fn admin(channel: &Channel) -> AdminClient {
    AdminClient::new(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED))
}

async fn start(url: &str, clock: &ManualClock) -> Server {
    let mut c = support::config(url);
    c.clock = clock.clock();
    c.meter_deadline_s = DEADLINE_S;
    Server::start(c).await
}

async fn participant(channel: &Channel, id: &str, seed: u8, node: &str) -> MarketClient {
    let (key, _) = keys(seed);
    admin(channel)
        .register_participant(&NewParticipant {
            id: id.into(),
            node: node.into(),
            public_key_hex: key.public_key_hex(),
            roles: vec![pb::ParticipantRole::Prosumer],
            capacity_kw: Some(d("100")),
        })
        .await
        .unwrap();
    MarketClient::new(channel.clone(), id, key)
}

fn reading(
    participant: &str,
    node: &str,
    import: &str,
    export: &str,
    nonce: u64,
) -> pb::MeterReading {
    pb::MeterReading {
        participant_id: participant.into(),
        interval_start: OPEN,
        node: node.into(),
        import_kwh: import.into(),
        export_kwh: export.into(),
        nonce,
        meter_id: None,
    }
}

/// Submits one signed reading; its seq, or the refusal's code and message.
async fn submit(channel: &Channel, signed: pb::SignedMeterReading) -> Result<u64, (Code, String)> {
    let mut out = PublicClient::new(channel.clone())
        .submit_signed_readings(vec![signed])
        .await
        .expect("the call itself is answered");
    assert_eq!(out.len(), 1);
    out.pop().unwrap().map_err(|e| match e {
        baton_client::ClientError::Status { code, message } => (code, message),
        other => panic!("not a refusal: {other}"),
    })
}

/// Asserts `r` is refused with `code` and a message containing `needle`.
fn refused(r: Result<u64, (Code, String)>, code: Code, needle: &str) {
    match r {
        Ok(seq) => panic!("accepted at seq {seq}, expected {code:?} ({needle})"),
        Err((c, m)) => {
            assert_eq!(c, code, "{m}");
            assert!(m.contains(needle), "{needle:?} not in {m:?}");
        }
    }
}

/// Waits until the ledger at `url` holds a `delivery_settlement` for `interval`.
async fn await_delivery(server: &Server, interval: i64) -> Entry {
    let channel = server.connect().await;
    let until = Instant::now() + Duration::from_secs(SCHEDULER_WAIT_S);
    loop {
        let listed = admin(&channel).list_intervals(20, None).await.unwrap();
        if let Some(seq) = listed
            .iter()
            .find(|i| i.interval_start == interval)
            .and_then(|i| i.delivery.as_ref())
            .map(|d| d.ledger_seq)
        {
            let l = Ledger::open_existing(&server.db_url).await.unwrap();
            let e = l.entry(seq).await.unwrap().unwrap();
            l.close().await;
            assert_eq!(e.kind, EntryKind::DeliverySettlement);
            return e;
        }
        assert!(
            Instant::now() < until,
            "no delivery settlement for {interval}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Alice sells 40 kW at A, Bob buys 50 kW at B; OPEN is cleared at once (ClearNow).
async fn trade(channel: &Channel) -> (MarketClient, MarketClient) {
    let alice = participant(channel, "alice", 1, "A").await;
    let bob = participant(channel, "bob", 2, "B").await;
    alice
        .submit(NewOrder::energy(
            OPEN,
            "A",
            pb::Side::Sell,
            vec![BlockSpec::priced(d("40"), d("0.04"))],
        ))
        .await
        .unwrap();
    bob.submit(NewOrder::energy(
        OPEN,
        "B",
        pb::Side::Buy,
        vec![BlockSpec::priced(d("50"), d("0.45"))],
    ))
    .await
    .unwrap();
    let c = admin(channel).clear_now().await.unwrap();
    assert_eq!(c.interval_start, OPEN);
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_reading_has_its_exact_status() {
    let ledger = TempLedger::sqlite();
    let clock = ManualClock::at_s(T0 + 1);
    let mut server = start(&ledger.url, &clock).await;
    let channel = server.connect().await;
    let (alice_sdk, _bob) = trade(&channel).await;
    let (_, alice) = keys(1);
    let (_, bob) = keys(2);
    let meter = support::key(9);
    let info = PublicClient::new(channel.clone())
        .market_info()
        .await
        .unwrap();
    assert_eq!(info.meter_deadline_s, DEADLINE_S);

    // The meter registration and its refusals.
    let a = admin(&channel);
    let meter_hex = hex::encode(meter.verifying_key().to_bytes());
    let r = a.register_meter("bob", "m1", &meter_hex).await.unwrap();
    assert!(r.ledger_seq > 0);
    let status = |e: baton_client::ClientError| match e {
        baton_client::ClientError::Status { code, message } => (code, message),
        other => panic!("not a refusal: {other}"),
    };
    let e = status(a.register_meter("bob", "m1", &meter_hex).await.unwrap_err());
    assert_eq!(e.0, Code::AlreadyExists, "{}", e.1);
    let e = status(
        a.register_meter("nobody", "m1", &meter_hex)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, Code::NotFound, "{}", e.1);
    let e = status(
        a.register_meter("bob", "m 2", &meter_hex)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, Code::InvalidArgument, "{}", e.1);
    assert!(e.1.starts_with("meter_id"), "{}", e.1);
    let e = status(a.register_meter("bob", "m2", "zz").await.unwrap_err());
    assert_eq!(e.0, Code::InvalidArgument, "{}", e.1);
    assert!(e.1.starts_with("public_key_hex"), "{}", e.1);

    // Early: OPEN has not ended.
    let sign = support::sign_reading;
    refused(
        submit(
            &channel,
            sign(&alice, &reading("alice", "A", "0", "3.3", 1)),
        )
        .await,
        Code::FailedPrecondition,
        "has not ended",
    );
    clock.set_s(OPEN_END + 1);
    // An interval that ended but was never cleared (the server started after its gate).
    let mut never = reading("alice", "A", "0", "1", 2);
    never.interval_start = T0;
    refused(
        submit(&channel, sign(&alice, &never)).await,
        Code::FailedPrecondition,
        "was not cleared",
    );

    // Accepted: Alice's own key, then Bob's meter.
    let first = sign(&alice, &reading("alice", "A", "0", "3.3", 5));
    let seq = submit(&channel, first.clone()).await.unwrap();
    assert!(seq > 0);
    let mut by_meter = reading("bob", "B", "4.1", "0", 1);
    by_meter.meter_id = Some("m1".into());
    let bob_seq = submit(&channel, sign(&meter, &by_meter)).await.unwrap();
    assert_eq!(bob_seq, seq + 1);

    // Replays and duplicates.
    refused(submit(&channel, first).await, Code::AlreadyExists, "nonce");
    refused(
        submit(
            &channel,
            sign(&alice, &reading("alice", "A", "0", "3.4", 4)),
        )
        .await,
        Code::AlreadyExists,
        "nonce: 4 is not greater than the last accepted nonce 5",
    );
    refused(
        submit(
            &channel,
            sign(&alice, &reading("alice", "A", "0", "3.4", 6)),
        )
        .await,
        Code::AlreadyExists,
        "already recorded",
    );
    // Bob's own key keeps its own nonce sequence apart from his meter's: nonce 1 is new for
    // it, but Bob at B already has a reading.
    refused(
        submit(&channel, sign(&bob, &reading("bob", "B", "4.1", "0", 1))).await,
        Code::AlreadyExists,
        "already recorded",
    );

    // Authenticity.
    refused(
        submit(&channel, sign(&alice, &reading("bob", "B", "1", "0", 9))).await,
        Code::Unauthenticated,
        "signature does not verify",
    );
    let mut unknown_meter = reading("bob", "B", "1", "0", 9);
    unknown_meter.meter_id = Some("m7".into());
    refused(
        submit(&channel, sign(&meter, &unknown_meter)).await,
        Code::Unauthenticated,
        "meter_id: \"m7\" is not a meter registered for participant \"bob\"",
    );
    let mut short_sig = sign(&bob, &reading("bob", "B", "1", "0", 9));
    short_sig.signature.truncate(10);
    refused(
        submit(&channel, short_sig).await,
        Code::Unauthenticated,
        "signature",
    );
    refused(
        submit(
            &channel,
            sign(&alice, &reading("mallory", "A", "1", "0", 1)),
        )
        .await,
        Code::NotFound,
        "participant \"mallory\" not found",
    );

    // Fields, each named.
    let garbage = pb::SignedMeterReading {
        reading: vec![0xff, 0xff, 0xff],
        signature: vec![0; 64],
    };
    refused(
        submit(&channel, garbage).await,
        Code::InvalidArgument,
        "reading:",
    );
    let huge = pb::SignedMeterReading {
        reading: vec![0; baton_server::METER_READING_BYTES_MAX + 1],
        signature: vec![0; 64],
    };
    refused(
        submit(&channel, huge).await,
        Code::InvalidArgument,
        "reading: is larger",
    );
    let field_cases: [(pb::MeterReading, &str); 6] = [
        (
            reading("bob", "B", "-1", "0", 9),
            "import_kwh: -1 is negative",
        ),
        (reading("bob", "B", "1e3", "0", 9), "import_kwh:"),
        (reading("bob", "B", "1", "0.0000001", 9), "export_kwh:"),
        (
            reading(
                "bob",
                "B",
                "0",
                &(baton_engine::delivery::METER_KWH_MAX + Decimal::ONE).to_string(),
                9,
            ),
            "export_kwh:",
        ),
        (
            pb::MeterReading {
                interval_start: OPEN + 1,
                ..reading("bob", "B", "1", "0", 9)
            },
            "interval_start:",
        ),
        (
            reading("bob", "A", "1", "0", 9),
            "node: \"A\" is not participant \"bob\"'s",
        ),
    ];
    for (r, needle) in field_cases {
        refused(
            submit(&channel, sign(&bob, &r)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    // Too many readings in one call: the call is refused, naming the field.
    let many: Vec<pb::SignedMeterReading> = (0..=baton_server::METER_READINGS_PER_CALL_MAX)
        .map(|i| sign(&bob, &reading("bob", "B", "1", "0", 100 + i as u64)))
        .collect();
    let e = pb::market_service_client::MarketServiceClient::new(channel.clone())
        .submit_meter_readings(pb::SubmitMeterReadingsRequest { readings: many })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().starts_with("readings: holds 1025"),
        "{}",
        e.message()
    );

    // Refusals left the state intact: the SDK's own reading (Dave is not registered; Alice
    // has hers) — a refused reading consumed nothing but nonces.
    let dave = participant(&channel, "dave", 4, "B").await;
    let r = dave
        .submit_meter_readings(&[NewReading {
            interval_start: OPEN,
            node: "B".into(),
            import_kwh: d("0"),
            export_kwh: d("0.5"),
        }])
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let _ = alice_sdk;

    // Late: past the deadline the delivery is settled, and nothing more is accepted.
    clock.set_s(OPEN_END + DEADLINE_S);
    let e = await_delivery(&server, OPEN).await;
    let body = DeliverySettlementBody::from_bytes(&e.body).unwrap();
    assert_eq!(body.readings, 3);
    refused(
        submit(&channel, sign(&bob, &reading("bob", "B", "2", "0", 50))).await,
        Code::FailedPrecondition,
        "deadline",
    );
    server.stop().await;

    let key = support::operator().public_key();
    let report = baton_audit::verify(&ledger.url, &key, Vec::new())
        .await
        .unwrap();
    assert_eq!(report.binding.readings, 3);
    assert_eq!(report.binding.deliveries, 1);
    let recleared = baton_audit::reclear_ledger(&ledger.url, None)
        .await
        .unwrap();
    let open = recleared.iter().find(|r| r.interval == OPEN).unwrap();
    assert!(open.delivery_postings.is_some(), "{recleared:?}");
}

/// Readings accepted before a restart are settled after it, once the deadline passes, in
/// exactly one delivery settlement, and a second restart adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_settled_exactly_once_across_restarts() {
    let ledger = TempLedger::sqlite();
    let clock = ManualClock::at_s(T0 + 1);
    let mut server = start(&ledger.url, &clock).await;
    let channel = server.connect().await;
    let (alice, bob) = trade(&channel).await;
    clock.set_s(OPEN_END + 1);
    for (who, node, import, export) in [(&alice, "A", "0", "3.3"), (&bob, "B", "4.1", "0")] {
        let r = who
            .submit_meter_readings(&[NewReading {
                interval_start: OPEN,
                node: node.into(),
                import_kwh: d(import),
                export_kwh: d(export),
            }])
            .await
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    }
    server.stop().await;
    // Down past the deadline: the restarted scheduler rebuilds OPEN's clearing from the
    // ledger and settles it.
    clock.set_s(OPEN_END + DEADLINE_S + 30);
    let mut server = start(&ledger.url, &clock).await;
    let e = await_delivery(&server, OPEN).await;
    assert_eq!(
        DeliverySettlementBody::from_bytes(&e.body)
            .unwrap()
            .readings,
        2
    );
    server.stop().await;
    clock.set_s(OPEN_END + DEADLINE_S + 600);
    let mut server = start(&ledger.url, &clock).await;
    // Give the scheduler a few ticks to (not) act.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.stop().await;
    let l = Ledger::open_existing(&ledger.url).await.unwrap();
    let all = support::all_entries(&l).await;
    l.close().await;
    let deliveries: Vec<&Entry> = all
        .iter()
        .filter(|e| e.kind == EntryKind::DeliverySettlement && e.interval_start == Some(OPEN))
        .collect();
    assert_eq!(deliveries.len(), 1);
    let key = support::operator().public_key();
    baton_audit::verify(&ledger.url, &key, Vec::new())
        .await
        .unwrap();
    baton_audit::reclear_ledger(&ledger.url, None)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The audit of readings against a dishonest operator (the style of `book_binding.rs`).

/// The honest run: Alice (own key) and Bob (meter m1) read OPEN; its delivery is settled.
async fn honest(ledger: &TempLedger) -> Vec<Entry> {
    let clock = ManualClock::at_s(T0 + 1);
    let mut server = start(&ledger.url, &clock).await;
    let channel = server.connect().await;
    let (alice, _bob) = trade(&channel).await;
    let meter = support::key(9);
    admin(&channel)
        .register_meter("bob", "m1", &hex::encode(meter.verifying_key().to_bytes()))
        .await
        .unwrap();
    clock.set_s(OPEN_END + 1);
    let r = alice
        .submit_meter_readings(&[NewReading {
            interval_start: OPEN,
            node: "A".into(),
            import_kwh: d("0"),
            export_kwh: d("3.3"),
        }])
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let mut by_meter = reading("bob", "B", "4.1", "0", 1);
    by_meter.meter_id = Some("m1".into());
    submit(&channel, support::sign_reading(&meter, &by_meter))
        .await
        .unwrap();
    clock.set_s(OPEN_END + DEADLINE_S);
    await_delivery(&server, OPEN).await;
    server.stop().await;
    let l = Ledger::open_existing(&ledger.url).await.unwrap();
    let entries = support::all_entries(&l).await;
    l.close().await;
    entries
}

fn position(entries: &[Entry], f: impl Fn(&Entry) -> bool) -> usize {
    entries.iter().position(f).expect("the entry is there")
}

fn reading_of(entries: &[Entry], participant: &str) -> usize {
    position(entries, |e| {
        e.kind == EntryKind::MeterReading
            && MeterReadingBody::from_bytes(&e.body)
                .unwrap()
                .participant_id
                == participant
    })
}

/// Makes each delivery settlement bind the readings before it, as an operator covering its
/// tracks would (count and digest over their seqs after any renumbering).
fn rebind(entries: &mut [Entry]) {
    for di in 0..entries.len() {
        if entries[di].kind != EntryKind::DeliverySettlement {
            continue;
        }
        let t = entries[di].interval_start;
        let seqs: Vec<u64> = entries[..di]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::MeterReading && e.interval_start == t)
            .map(|(i, _)| i as u64 + 1)
            .collect();
        let mut b = DeliverySettlementBody::from_bytes(&entries[di].body).unwrap();
        b.readings = seqs.len() as u64;
        b.readings_digest = baton_ledger::readings_digest(seqs);
        entries[di].body = b.to_bytes();
    }
    // Gates bind order seqs: renumbering moves them; the attacks here only touch entries
    // after every gate.
}

type Outcome = Option<crate::Verdicts>;

async fn dishonest(
    backend: fn() -> Option<TempLedger>,
    rebinds: bool,
    attack: impl FnOnce(&mut Vec<Entry>),
) -> Outcome {
    let (src, dst) = (backend()?, backend()?);
    let mut entries = honest(&src).await;
    attack(&mut entries);
    if rebinds {
        rebind(&mut entries);
    }
    support::re_sign(entries, &dst.url).await;
    Some(crate::verdicts(&dst.url).await)
}

fn sqlite() -> Option<TempLedger> {
    Some(TempLedger::sqlite())
}

fn postgres() -> Option<TempLedger> {
    TempLedger::postgres("metering audit")
}

/// The re-signed ledger passes the ledger's own checks; the audit fails naming `named`.
fn caught(outcome: Outcome, named: &[&str]) {
    let Some((ledger_only, audit, _)) = outcome else {
        return;
    };
    ledger_only.expect("the re-signed ledger passes the ledger's own checks");
    let err = audit.expect_err("the audit catches it");
    for n in named {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

/// The ledger's own verification already fails, naming `named`.
fn refused_by_ledger(outcome: Outcome, named: &[&str]) {
    let Some((ledger_only, audit, _)) = outcome else {
        return;
    };
    let err = ledger_only.expect_err("the ledger's own verification catches it");
    for n in named {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    audit.expect_err("so does the audit");
}

macro_rules! on_both_backends {
    ($($name:ident => $body:expr;)*) => {
        mod sqlite_ledger {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { ($body)(sqlite).await })*
        }
        mod postgres_ledger {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { ($body)(postgres).await })*
        }
    };
}

on_both_backends! {
    an_honest_metered_ledger_verifies_and_recomputes => |b: fn() -> Option<TempLedger>| async move {
        let Some((ledger_only, audit, reclear)) = dishonest(b, false, |_| {}).await else { return };
        ledger_only.unwrap();
        audit.unwrap();
        reclear.unwrap();
    };
    a_dropped_reading_is_caught => |b: fn() -> Option<TempLedger>| async move {
        // Without rebinding, the settlement's digest names a reading that is gone.
        caught(
            dishonest(b, false, |es| { let i = reading_of(es, "bob"); es.remove(i); }).await,
            &["binds 2 readings", "are 1"],
        );
    };
    a_dropped_reading_with_a_rebound_settlement_fails_the_recomputation => |b: fn() -> Option<TempLedger>| async move {
        let Some((ledger_only, audit, reclear)) =
            dishonest(b, true, |es| { let i = reading_of(es, "bob"); es.remove(i); }).await
        else { return };
        ledger_only.unwrap();
        audit.unwrap();
        let err = reclear.expect_err("the settlement no longer follows from the readings");
        assert!(err.contains("delivery settlement differs"), "{err}");
    };
    an_altered_reading_is_caught => |b: fn() -> Option<TempLedger>| async move {
        refused_by_ledger(
            dishonest(b, false, |es| {
                let i = reading_of(es, "alice");
                let mut body = MeterReadingBody::from_bytes(&es[i].body).unwrap();
                let mut r: pb::MeterReading = prost::Message::decode(body.payload.as_slice()).unwrap();
                r.export_kwh = "33.3".into();
                body.payload = prost::Message::encode_to_vec(&r);
                es[i].body = body.to_bytes();
            }).await,
            &["signature of \"alice\" does not verify"],
        );
    };
    a_reading_after_the_deadline_is_caught => |b: fn() -> Option<TempLedger>| async move {
        caught(
            dishonest(b, true, |es| {
                let i = reading_of(es, "bob");
                let r = es.remove(i);
                es.push(r);
            }).await,
            &["logged after that interval's delivery settlement"],
        );
    };
    a_forged_meter_signature_is_caught => |b: fn() -> Option<TempLedger>| async move {
        refused_by_ledger(
            dishonest(b, false, |es| {
                let i = reading_of(es, "bob");
                let mut body = MeterReadingBody::from_bytes(&es[i].body).unwrap();
                let forger = support::key(66);
                let signed = support::sign_reading(
                    &forger,
                    &prost::Message::decode(body.payload.as_slice()).unwrap(),
                );
                body.signature = signed.signature.try_into().unwrap();
                es[i].body = body.to_bytes();
            }).await,
            &["meter m1", "does not verify"],
        );
    };
    altered_delivery_payments_fail_the_recomputation => |b: fn() -> Option<TempLedger>| async move {
        let Some((ledger_only, audit, reclear)) = dishonest(b, false, |es| {
            let i = position(es, |e| e.kind == EntryKind::DeliverySettlement);
            let mut body = DeliverySettlementBody::from_bytes(&es[i].body).unwrap();
            // Moves a cent between two postings: still zero-sum, still admitted accounts.
            assert!(body.postings.len() >= 2, "{body:?}");
            let cent = baton_ledger::Amount::from_minor(1);
            body.postings[0].amount = body.postings[0].amount.checked_add(cent).unwrap();
            body.postings[1].amount = body.postings[1]
                .amount
                .checked_add(baton_ledger::Amount::from_minor(-1))
                .unwrap();
            es[i].body = body.to_bytes();
        }).await else { return };
        ledger_only.unwrap();
        audit.unwrap();
        let err = reclear.expect_err("the recomputed settlement differs");
        assert!(err.contains("delivery settlement differs"), "{err}");
    };
}

// ---------------------------------------------------------------------------------------------
// End to end: a congested two-node market, a battery procured for flexibility, metered.

/// Two nodes over a 30 kW cable; the grid at A (import 0.30, export 0.03); a 10 kW up
/// flexibility requirement at B (at most 0.20) that Dave's battery serves.
const METERED_TWO_NODE: &str = r#"
name = "metered-two-node"
interval_minutes = 5
price_floor = "-1"
price_cap = "10"
line_violation_penalty = "20"
nodes = [{ id = "A" }, { id = "B" }]
lines = [{ id = "A-B", from = "A", to = "B", x = "0.05", capacity = "30" }]
grid_connections = [
  { id = "feeder", node = "A", import_limit = "100", import_price = "0.30", export_limit = "50", export_price = "0.03" },
]
devices = [{ id = "bat-B", node = "B", capacity = "10" }]
flex_requirements = [
  { id = "relief-B", nodes = ["B"], direction = "up", blocks = [{ quantity = "10", price = "0.20" }] },
]
"#;

/// The clearing: Erin sells 5 kW at A at 0.01 and Alice 40 kW at 0.04, Bob buys 50 kW at B at
/// 0.45, Dave offers 10 kW of up flexibility at B at 0.05 from his battery. The cable carries
/// 30 kW: Erin 5 + Alice 25 at A (λA = 0.04, Alice marginal), Bob gets 30 (λB = 0.45, Bob
/// marginal), and Dave's 10 kW are procured at the requirement's 0.20.
///
/// In kW·min over 5 minutes: C(alice) = 125, C(bob) = −150, C(erin) = 25, C(dave) = 0 with an
/// up allocation of 50. Imbalance prices (s = 0.05, grid 0.30/0.03 in the island):
/// at A p_short = max(0.04, min(0.09, 0.30)) = 0.09; at B p_short = max(0.45, min(0.50, 0.30))
/// = 0.45.
///
/// Meters: Alice exports 2.0 kWh (120): short 5 → pays 0.09 × 5/60 = 0.0075 → 0.01. Bob imports
/// 2.7 kWh (−162): short 12 → pays 0.45 × 12/60 = 0.09. Dave exports 0.5 kWh (30) against 50
/// procured: delivers 30, falls 20 short (0.333333 kWh): returns 0.20 × 20/60 = 0.0667 → 0.07
/// and pays a penalty of 0.5 × 0.20 × 20/60 = 0.0333 → 0.03, both to the network operator.
/// Erin sends no reading: estimated as her schedule, nothing to settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_flexibility_market_pays_and_penalises_to_the_cent() {
    let ledger = TempLedger::sqlite();
    let clock = ManualClock::at_s(T0 + 1);
    let mut c = support::config(&ledger.url);
    c.clock = clock.clock();
    c.meter_deadline_s = DEADLINE_S;
    c.scenario = Some(METERED_TWO_NODE.to_string());
    let mut server = Server::start(c).await;
    let channel = server.connect().await;
    let alice = participant(&channel, "alice", 1, "A").await;
    let bob = participant(&channel, "bob", 2, "B").await;
    let dave = participant(&channel, "dave", 4, "B").await;
    let erin = participant(&channel, "erin", 5, "A").await;
    let sell = |node: &str, q: &str, p: &str| {
        NewOrder::energy(
            OPEN,
            node,
            pb::Side::Sell,
            vec![BlockSpec::priced(d(q), d(p))],
        )
    };
    alice.submit(sell("A", "40", "0.04")).await.unwrap();
    erin.submit(sell("A", "5", "0.01")).await.unwrap();
    bob.submit(NewOrder::energy(
        OPEN,
        "B",
        pb::Side::Buy,
        vec![BlockSpec::priced(d("50"), d("0.45"))],
    ))
    .await
    .unwrap();
    let flex = dave
        .submit(
            NewOrder::flex(
                OPEN,
                "B",
                pb::Product::FlexUp,
                vec![BlockSpec::priced(d("10"), d("0.05"))],
            )
            .with_device("bat-B"),
        )
        .await
        .unwrap();
    assert_eq!(
        admin(&channel).clear_now().await.unwrap().interval_start,
        OPEN
    );
    let result = PublicClient::new(channel.clone())
        .interval_result(OPEN)
        .await
        .unwrap();
    let price = |n: &str| d(&result.prices.iter().find(|p| p.node == n).unwrap().price);
    assert_eq!((price("A"), price("B")), (d("0.04"), d("0.45")));
    assert!(result.lines[0].congested);
    assert_eq!(d(&result.flex[0].price), d("0.2"));
    assert_eq!(d(&result.flex[0].procured), d("10"));

    clock.set_s(OPEN_END + 1);
    for (who, node, import, export) in [
        (&alice, "A", "0", "2.0"),
        (&bob, "B", "2.7", "0"),
        (&dave, "B", "0", "0.5"),
    ] {
        let r = who
            .submit_meter_readings(&[NewReading {
                interval_start: OPEN,
                node: node.into(),
                import_kwh: d(import),
                export_kwh: d(export),
            }])
            .await
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    }
    clock.set_s(OPEN_END + DEADLINE_S);
    let e = await_delivery(&server, OPEN).await;
    let body = DeliverySettlementBody::from_bytes(&e.body).unwrap();
    let postings: Vec<(String, String, String)> = body
        .postings
        .iter()
        .map(|p| {
            (
                p.account.clone(),
                p.amount.to_string(),
                p.memo.clone().unwrap_or_default(),
            )
        })
        .collect();
    let f = &flex.order_id;
    let own = |a: &str, m: String| (a.to_string(), m);
    let expected: Vec<(String, String, String)> = [
        (own("alice", "imbalance alice at A".into()), "-0.01"),
        (
            own("market-operator:imbalance", "imbalance alice at A".into()),
            "0.01",
        ),
        (own("bob", "imbalance bob at B".into()), "-0.09"),
        (
            own("market-operator:imbalance", "imbalance bob at B".into()),
            "0.09",
        ),
        (
            own("dave", format!("flex shortfall {f} for relief-B")),
            "-0.07",
        ),
        (
            own(
                "network-operator",
                format!("flex shortfall {f} for relief-B"),
            ),
            "0.07",
        ),
        (
            own("dave", format!("flex penalty {f} for relief-B")),
            "-0.03",
        ),
        (
            own("network-operator", format!("flex penalty {f} for relief-B")),
            "0.03",
        ),
    ]
    .into_iter()
    .map(|((a, m), amt)| (a, amt.to_string(), m))
    .collect();
    assert_eq!(postings, expected);
    // Erin's position: cleared, no reading, estimated as scheduled.
    let positions = body.delivery["positions"].as_array().unwrap();
    let erin_pos = positions.iter().find(|p| p["account"] == "erin").unwrap();
    assert!(erin_pos["metered_kwh"].is_null(), "{erin_pos}");
    assert_eq!(erin_pos["cleared_kwh"], "0.416667");
    assert_eq!(erin_pos["imbalance_kwh"], "0.000000");

    // The operator's listing and the report show the same figures.
    let listed = admin(&channel).list_intervals(20, None).await.unwrap();
    let dl = listed
        .iter()
        .find(|i| i.interval_start == OPEN)
        .and_then(|i| i.delivery.clone())
        .unwrap();
    assert_eq!(
        (dl.readings_received, dl.readings_missing),
        (3, 1),
        "{dl:?}"
    );
    assert_eq!(dl.imbalance_kwh, "0.283333");
    assert_eq!(dl.imbalance_cost, "0.1");
    assert_eq!(dl.flex_procured_kwh, "0.833333");
    assert_eq!(dl.flex_delivered_kwh, "0.5");
    assert_eq!(dl.flex_penalties, "0.03");
    server.stop().await;

    let report = baton_audit::summary::read(&ledger.url).await.unwrap();
    let text = baton_report::text(&report);
    let line = text
        .lines()
        .find(|l| l.contains("3/1"))
        .unwrap_or_else(|| panic!("no delivery line in\n{text}"));
    for figure in ["0.283", "0.10", "0.500/0.833", "0.03"] {
        assert!(line.contains(figure), "{figure:?} not in {line:?}\n{text}");
    }
    assert!(text
        .lines()
        .all(|l| l.chars().count() <= baton_report::TEXT_WIDTH_MAX));
    // Balances: Bob paid for his 30 kW (30 × 0.45 × 5/60 = 1.125 → 1.13 by the settlement's
    // rule, whatever its rounding) and for his imbalance, 0.09, on top.
    let l = Ledger::open_existing(&ledger.url).await.unwrap();
    let balances = l.balances().await.unwrap();
    l.close().await;
    assert_eq!(
        balances["market-operator:imbalance"],
        baton_ledger::Amount::from_minor(10)
    );
    let key = support::operator().public_key();
    baton_audit::verify(&ledger.url, &key, Vec::new())
        .await
        .unwrap();
    let recleared = baton_audit::reclear_ledger(&ledger.url, Some(OPEN))
        .await
        .unwrap();
    assert_eq!(recleared[0].delivery_postings, Some(8));
}
