//! Book binding against a dishonest operator (issue: prove from the ledger that every cleared
//! book is exactly what participants signed before the gate).
//!
//! Each test runs a real market in-process on a real ledger (SQLite and PostgreSQL), then acts
//! as an operator holding the key and write access to the database would: edits the entries,
//! makes the gate agree with the altered book, and re-appends everything into a fresh ledger
//! with the operator key, so the hash chain, the Merkle tree and every checkpoint signature are
//! valid. The ledger's own checks pass on such a ledger; the book binding must not.

use std::str::FromStr;

use baton_client::{
    connect, pb, AdminClient, AdminKey, BlockSpec, Decimal, MarketClient, NewOrder, NewParticipant,
    ParticipantKey,
};
use baton_ledger::{
    Entry, EntryKind, GateClosedBody, Ledger, NewEntry, ParticipantBody, SettlementBody,
    SignedMessageBody,
};
use support::{TempLedger, INTERVAL_S, OPERATOR_SEED, T0};

/// The first interval open for orders: the server starts one second into T0.
const OPEN: i64 = T0 + INTERVAL_S;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn participant(
    channel: &baton_client::Channel,
    id: &str,
    seed: u8,
    node: &str,
) -> MarketClient {
    let key = ParticipantKey::from_seed(&[seed; 32]);
    AdminClient::new(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED))
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

fn energy(node: &str, side: pb::Side, blocks: &[(&str, &str)]) -> NewOrder {
    NewOrder::energy(
        OPEN,
        node,
        side,
        blocks
            .iter()
            .map(|(q, p)| BlockSpec::priced(d(q), d(p)))
            .collect(),
    )
}

/// The honest market: Alice sells 40 kW at A (filled), Bob buys up to 70 kW at B (filled),
/// Carol bids 10 kW at 0.01 at B (out of the money), Alice offers 5 kW more and cancels it,
/// then the interval is cleared. Returns the
/// ledger's entries.
async fn honest(ledger: &TempLedger) -> Vec<Entry> {
    let mut server = support::Server::start(support::config(&ledger.url)).await;
    let channel = connect(&server.url()).await.unwrap();
    let alice = participant(&channel, "alice", 1, "A").await;
    let bob = participant(&channel, "bob", 2, "B").await;
    let carol = participant(&channel, "carol", 3, "B").await;
    alice
        .submit(energy("A", pb::Side::Sell, &[("40", "0.04")]))
        .await
        .unwrap();
    bob.submit(energy(
        "B",
        pb::Side::Buy,
        &[("50", "0.45"), ("20", "0.35")],
    ))
    .await
    .unwrap();
    carol
        .submit(energy("B", pb::Side::Buy, &[("10", "0.01")]))
        .await
        .unwrap();
    // An order Alice cancels before the gate: signed, in the ledger, not in the book.
    let withdrawn = alice
        .submit(energy("A", pb::Side::Sell, &[("5", "0.02")]))
        .await
        .unwrap();
    alice.cancel(&withdrawn.order_id).await.unwrap();
    let cleared = AdminClient::new(channel.clone(), AdminKey::from_seed(&OPERATOR_SEED))
        .clear_now()
        .await
        .unwrap();
    assert_eq!(cleared.interval_start, OPEN);
    server.stop().await;
    let l = Ledger::open_existing(&ledger.url).await.unwrap();
    let entries = support::all_entries(&l).await;
    l.close().await;
    entries
}

fn order_id(e: &Entry) -> Option<String> {
    (e.kind == EntryKind::Order)
        .then(|| {
            SignedMessageBody::from_bytes(e.kind, &e.body)
                .ok()?
                .order_id
        })
        .flatten()
}

/// The id of `participant`'s (only) order in the ledger.
fn id_of(entries: &[Entry], participant: &str) -> String {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Order)
        .map(|e| SignedMessageBody::from_bytes(e.kind, &e.body).unwrap())
        .find(|m| m.participant_id == participant)
        .and_then(|m| m.order_id)
        .expect("the participant's order")
}

/// The position of `participant`'s order entry.
fn order_at(entries: &[Entry], participant: &str) -> usize {
    let id = id_of(entries, participant);
    position(entries, |e| order_id(e).as_deref() == Some(id.as_str()))
}

fn position(entries: &[Entry], f: impl Fn(&Entry) -> bool) -> usize {
    entries.iter().position(f).expect("the entry is there")
}

fn result_of(entries: &mut [Entry]) -> (&mut Entry, serde_json::Value) {
    let i = position(entries, |e| e.kind == EntryKind::IntervalResult);
    let v = serde_json::from_slice(&entries[i].body).unwrap();
    (&mut entries[i], v)
}

/// Makes each signed gate bind what its interval's recorded result lists, as an operator
/// covering its tracks would: the count and the digest over those orders' seqs (after any
/// renumbering the edit caused).
fn regate(entries: &mut [Entry]) {
    let seq_of: std::collections::HashMap<String, u64> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| order_id(e).map(|id| (id, i as u64 + 1)))
        .collect();
    for gi in 0..entries.len() {
        if entries[gi].kind != EntryKind::GateClosed {
            continue;
        }
        let mut g = GateClosedBody::from_bytes(&entries[gi].body).unwrap();
        let t = g.interval_start;
        let Some(r) = entries
            .iter()
            .find(|e| e.kind == EntryKind::IntervalResult && e.interval_start == Some(t))
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut seqs: Vec<u64> = ["orders", "flex_offers"]
            .iter()
            .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|o| seq_of.get(o["id"].as_str().unwrap()).copied())
            .collect();
        seqs.sort_unstable();
        g.orders = seqs.len() as u64;
        g.book_digest = baton_ledger::signed_book_digest(seqs);
        // The network in force may have moved with the renumbering too.
        g.network_seq = entries[..gi]
            .iter()
            .rposition(|e| e.kind == EntryKind::Network)
            .map_or(0, |i| i as u64 + 1);
        entries[gi].body = g.to_bytes();
    }
}

/// What the ledger's own verification, the full audit and the re-clear said (`None`: the
/// backend is not available).
type Outcome = Option<crate::Verdicts>;

/// Builds the honest ledger on `backend`, applies `attack`, re-signs, and returns what the
/// ledger's own verification and the full audit say.
async fn dishonest(
    backend: fn() -> Option<TempLedger>,
    attack: impl FnOnce(&mut Vec<Entry>),
) -> Outcome {
    let (src, dst) = (backend()?, backend()?);
    let mut entries = honest(&src).await;
    attack(&mut entries);
    regate(&mut entries);
    support::re_sign(entries, &dst.url).await;
    Some(crate::verdicts(&dst.url).await)
}

fn sqlite() -> Option<TempLedger> {
    Some(TempLedger::sqlite())
}

fn postgres() -> Option<TempLedger> {
    TempLedger::postgres("book binding attack")
}

/// Asserts the ledger's own checks pass (the operator re-signed everything) while the audit
/// and the re-clear both fail, the audit's message containing every one of `named`.
fn caught(outcome: Outcome, named: &[&str]) {
    let Some((ledger_only, audit, reclear)) = outcome else {
        return;
    };
    ledger_only.expect("the re-signed ledger passes the ledger's own checks");
    let err = audit.expect_err("the audit catches the altered book");
    for n in named {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    reclear.expect_err("the re-clear from the signed orders refuses it too");
}

fn drop_from_result(entries: &mut [Entry], participant: &str) {
    let id = id_of(entries, participant);
    let (e, mut v) = result_of(entries);
    v["orders"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["id"] != id);
    e.body = serde_json::to_vec_pretty(&v).unwrap();
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
    an_honest_ledger_binds_and_reclears => |b: fn() -> Option<TempLedger>| async move {
        let Some((ledger_only, audit, reclear)) = dishonest(b, |_| {}).await else { return };
        ledger_only.unwrap();
        audit.unwrap();
        reclear.unwrap();
    };
    removing_an_unfilled_signed_order_is_caught => |b| async move {
        caught(
            dishonest(b, |e| drop_from_result(e, "carol")).await,
            &["interval", "\"carol-", "missing from the recorded book"],
        );
    };
    removing_a_filled_signed_order_is_caught => |b| async move {
        caught(
            dishonest(b, |e| drop_from_result(e, "alice")).await,
            &["\"alice-", "missing from the recorded book"],
        );
    };
    adding_an_unsigned_zero_filled_order_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let (e, mut v) = result_of(entries);
                v["orders"].as_array_mut().unwrap().push(serde_json::json!(
                    {"id": "mallory-1", "accepted": ["0"], "accepted_total": "0"}
                ));
                e.body = serde_json::to_vec_pretty(&v).unwrap();
            })
            .await,
            &["\"mallory-1\"", "no signed order entry"],
        );
    };
    paying_an_account_never_admitted_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let i = position(entries, |e| e.kind == EntryKind::Settlement);
                let mut s = SettlementBody::from_bytes(&entries[i].body).unwrap();
                // Mallory is paid what the network operator's congestion rent would have been.
                let rent = s.postings.iter().position(|p| p.account == "network-operator").unwrap();
                s.postings[rent].account = "mallory".into();
                entries[i].body = NewEntry::settlement(&s).body;
            })
            .await,
            &["\"mallory\"", "neither an admitted participant nor a system account"],
        );
    };
    an_altered_signed_order_fails_its_signature => |b: fn() -> Option<TempLedger>| async move {
        // Raising Bob's limit price inside the signed bytes: the operator cannot re-sign them.
        let Some((ledger_only, audit, _)) = dishonest(b, |entries| {
            let i = order_at(entries, "bob");
            let mut m = SignedMessageBody::from_bytes(EntryKind::Order, &entries[i].body).unwrap();
            let at = m.payload.windows(4).position(|w| w == b"0.35").unwrap();
            m.payload[at..at + 4].copy_from_slice(b"0.40");
            entries[i].body = m.to_bytes();
        })
        .await else { return };
        let err = ledger_only.expect_err("a participant signature no longer verifies");
        assert!(err.contains("signature of \"bob\""), "{err}");
        assert!(audit.is_err());
    };
    an_order_logged_after_its_gate_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let i = order_at(entries, "carol");
                let o = entries.remove(i);
                let g = position(entries, |e| e.kind == EntryKind::GateClosed);
                entries.insert(g + 1, o);
            })
            .await,
            &["order carol-", "after that interval's gate"],
        );
    };
    a_gate_that_leaves_out_a_signed_order_is_caught => |b: fn() -> Option<TempLedger>| async move {
        // The result still lists Carol, but the gate binds two orders, not three.
        let Some((src, dst)) = b().zip(b()) else { return };
        let mut entries = honest(&src).await;
        regate(&mut entries);
        let g = position(&entries, |e| e.kind == EntryKind::GateClosed);
        let mut body = GateClosedBody::from_bytes(&entries[g].body).unwrap();
        body.orders = 2;
        entries[g].body = body.to_bytes();
        support::re_sign(entries, &dst.url).await;
        let key = support::operator().public_key();
        let err = baton_audit::verify(&dst.url, &key, Vec::new()).await.unwrap_err().to_string();
        assert!(err.contains("binds 2 orders"), "{err}");
        assert!(err.contains("are 3"), "{err}");
    };
    a_gate_naming_a_network_no_longer_in_force_is_caught => |b: fn() -> Option<TempLedger>| async move {
        // The operator installs a second network before the gate but clears in the first.
        let Some((src, dst)) = b().zip(b()) else { return };
        let mut entries = honest(&src).await;
        let net = position(&entries, |e| e.kind == EntryKind::Network);
        let g = position(&entries, |e| e.kind == EntryKind::GateClosed);
        let again = entries[net].clone();
        entries.insert(g, again);
        regate(&mut entries);
        let g = position(&entries, |e| e.kind == EntryKind::GateClosed);
        let mut body = GateClosedBody::from_bytes(&entries[g].body).unwrap();
        body.network_seq = net as u64 + 1;
        entries[g].body = body.to_bytes();
        support::re_sign(entries, &dst.url).await;
        let key = support::operator().public_key();
        let err = baton_audit::verify(&dst.url, &key, Vec::new()).await.unwrap_err().to_string();
        assert!(err.contains(&format!("names network seq {}", net + 1)), "{err}");
        assert!(err.contains(&format!("in force is seq {}", g)), "{err}");
    };
    a_cancel_logged_after_its_gate_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let i = position(entries, |e| e.kind == EntryKind::Cancel);
                let c = entries.remove(i);
                let g = position(entries, |e| e.kind == EntryKind::GateClosed);
                entries.insert(g + 1, c);
            })
            .await,
            &["cancel of order \"alice-", "after that interval's gate"],
        );
    };
    an_interval_recorded_twice_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let first = position(entries, |e| e.kind == EntryKind::IntervalInput);
                let again: Vec<Entry> = entries[first..first + 3].to_vec();
                entries.extend(again);
            })
            .await,
            &["recorded twice", "without a correction"],
        );
    };
    an_order_whose_entry_names_another_interval_is_caught => |b| async move {
        caught(
            dishonest(b, |entries| {
                let i = order_at(entries, "carol");
                entries[i].interval_start = Some(OPEN + INTERVAL_S);
            })
            .await,
            &["carol-", "its entry says"],
        );
    };
    reordering_a_participants_orders_so_a_nonce_falls_is_caught => |b| async move {
        // Alice's two orders swap places: each still verifies, but her nonces now fall, which
        // no honest intake ever appends (a replayed or back-dated order looks exactly so).
        caught(
            dishonest(b, |entries| {
                let alice: Vec<usize> = (0..entries.len())
                    .filter(|&i| {
                        order_id(&entries[i]).is_some_and(|id| id.starts_with("alice-"))
                    })
                    .collect();
                assert_eq!(alice.len(), 2, "alice signed two orders");
                entries.swap(alice[0], alice[1]);
            })
            .await,
            &["participant \"alice\" does not increase"],
        );
    };
    replaying_a_signed_order_under_a_sybil_account_is_caught => |b| async move {
        // The operator admits "mallory" with Bob's public key, then logs Bob's signed order
        // again as Mallory's: the signature verifies under Mallory's (Bob's) key, but the
        // payload names Bob.
        caught(
            dishonest(b, |entries| {
                let p = position(entries, |e| {
                    e.kind == EntryKind::Participant
                        && ParticipantBody::from_bytes(&e.body).unwrap().participant_id == "bob"
                });
                let mut mallory = ParticipantBody::from_bytes(&entries[p].body).unwrap();
                mallory.participant_id = "mallory".into();
                let mut admitted = entries[p].clone();
                admitted.body = mallory.to_bytes();
                entries.insert(p + 1, admitted);
                let i = order_at(entries, "bob");
                let mut m = SignedMessageBody::from_bytes(EntryKind::Order, &entries[i].body).unwrap();
                m.participant_id = "mallory".into();
                m.order_id = None;
                let mut replay = entries[i].clone();
                replay.body = m.to_bytes();
                entries.insert(i + 1, replay);
            })
            .await,
            &["names participant \"bob\" but the entry is signed by \"mallory\""],
        );
    };
}
