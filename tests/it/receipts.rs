//! Signed order receipts end to end: a real in-process server on loopback gRPC and a real
//! ledger, on SQLite and on PostgreSQL. Every acknowledged order carries the operator's receipt; `baton audit
//! check-receipt` and the SDK's `prove_receipt` show it included with the server's fill and
//! payment, and catch an operator who rewrites the ledger (with valid signatures throughout)
//! to leave the order out, writing evidence a third party can check.

use std::path::Path;
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::Duration;

use baton_client::{
    connect, pb, write_receipt, AdminClient, AdminKey, AuditClient, BlockSpec, Decimal,
    MarketClient, NewOrder, NewParticipant, ParticipantKey, Receipt, Verdict,
};
use baton_ledger::audit::InclusionProof;
use baton_ledger::{Entry, Ledger};
use baton_proto::receipt::{judge_order_entry, EntryView};
use support::{TempLedger, INTERVAL_S, OPERATOR_SEED, T0};
use tokio_stream::StreamExt;

/// The first interval open for orders: the server starts one second into T0.
const OPEN: i64 = T0 + INTERVAL_S;
/// Real seconds a test waits for a stream message before failing.
const WAIT_S: u64 = 30;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn operator_hex() -> String {
    support::operator().public_key().to_hex()
}

fn operator_dalek() -> ed25519_dalek::VerifyingKey {
    *support::operator().public_key().as_dalek()
}

fn check_receipt(receipt: &Path, db: &str, evidence: &Path) -> Output {
    Command::new(crate::BATON)
        .args([
            "audit",
            "check-receipt",
            "--receipt",
            receipt.to_str().unwrap(),
            "--db",
            db,
            "--operator-pubkey",
            &operator_hex(),
            "--evidence",
            evidence.to_str().unwrap(),
        ])
        .output()
        .expect("runs baton")
}

struct Market {
    server: support::Server,
    channel: baton_client::Channel,
}

impl Market {
    async fn start(url: &str) -> Market {
        let server = support::Server::start(support::config(url)).await;
        let channel = connect(&server.url()).await.unwrap();
        Market { server, channel }
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(self.channel.clone(), AdminKey::from_seed(&OPERATOR_SEED))
    }

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

fn buy_70_at_b(interval: i64) -> NewOrder {
    NewOrder::energy(
        interval,
        "B",
        pb::Side::Buy,
        vec![
            BlockSpec::priced(d("50"), d("0.45")),
            BlockSpec::priced(d("20"), d("0.35")),
        ],
    )
}

/// Alice sells 40 kW at A, Bob buys up to 70 kW at B; cleared: Bob gets 60 kW at 0.35 and pays
/// 1.75 (see tests/it/client.rs). Returns Bob's receipt, his fill and the stopped market's
/// ledger URL, plus the receipt of an order for a later interval that is not cleared.
async fn trade_and_clear(ledger: &TempLedger) -> (Receipt, pb::Fill, Receipt, String) {
    let mut m = Market::start(&ledger.url).await;
    let alice = m.participant("alice", 1, "A").await;
    let bob = m.participant("bob", 2, "B").await;
    let mut fills = bob.watch_fills().await.unwrap();
    let sold = alice.submit(sell_40_at_a()).await.unwrap();
    let bought = bob.submit(buy_70_at_b(OPEN)).await.unwrap();
    let later = bob.submit(buy_70_at_b(OPEN + INTERVAL_S)).await.unwrap();
    let key = operator_dalek();
    for ack in [&sold, &bought, &later] {
        let r = ack
            .receipt
            .as_ref()
            .expect("every accepted order has a receipt");
        r.verify(&key).unwrap();
        assert_eq!(r.leaf.ledger_seq, ack.ledger_seq);
        assert_eq!(r.leaf.interval_start, ack.interval_start);
    }
    // A stream's orders share one group-commit batch or a few: every one has its own leaf.
    let many = alice
        .submit_many(
            (0..5)
                .map(|_| {
                    NewOrder::energy(
                        OPEN + INTERVAL_S,
                        "A",
                        pb::Side::Sell,
                        vec![BlockSpec::priced(d("1"), d("0.20"))],
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for a in many {
        let a = a.unwrap();
        let r = a.receipt.expect("a streamed order has a receipt");
        r.verify(&key).unwrap();
        assert!(r.leaf_index < r.statement.leaf_count);
        seqs.push(r.leaf.ledger_seq);
    }
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let cleared = m.admin().clear_now().await.unwrap();
    assert_eq!(cleared.interval_start, OPEN);
    let fill = tokio::time::timeout(Duration::from_secs(WAIT_S), fills.next())
        .await
        .expect("a fill in time")
        .unwrap()
        .unwrap();
    assert_eq!(fill.order_id, bought.order_id);

    // The SDK proves the same from the server's audit service.
    let audit = AuditClient::new(m.channel.clone());
    let bought_receipt = bought.receipt.clone().unwrap();
    let proof = audit.prove_receipt(&bought_receipt, &key).await.unwrap();
    match &proof.verdict {
        Verdict::Included(i) => {
            assert_eq!(i.order_id, fill.order_id);
            assert_eq!(i.accepted_total, d(&fill.accepted_total));
            assert_eq!(i.payment, d(&fill.payment));
        }
        v => panic!("expected included, got {v:?}"),
    }
    assert_eq!(proof.entry.as_ref().unwrap().seq, bought.ledger_seq);
    assert!(proof.inclusion.is_some());
    let later_receipt = later.receipt.clone().unwrap();
    assert_eq!(
        audit
            .prove_receipt(&later_receipt, &key)
            .await
            .unwrap()
            .verdict,
        Verdict::Pending
    );
    let url = m.server.db_url.clone();
    m.server.stop().await;
    (bought_receipt, fill, later_receipt, url)
}

async fn check_receipt_shows_an_order_included_with_the_servers_fill_and_payment(
    backend: fn() -> Option<TempLedger>,
) {
    let Some(ledger) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (receipt, fill, later, db) = trade_and_clear(&ledger).await;
    // 60 kW at 0.35 for five minutes: 1.75 paid.
    assert_eq!(d(&fill.accepted_total), d("60"));
    assert_eq!(d(&fill.payment), d("-1.75"));
    let file = dir.path().join("bob.receipt.json");
    write_receipt(&file, &receipt).unwrap();
    let evidence = dir.path().join("evidence.json");
    let out = check_receipt(&file, &db, &evidence);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "order {} at seq {} is included in interval {OPEN}",
            fill.order_id, receipt.leaf.ledger_seq
        )) && stdout.contains("accepted 60 kW, payment -1.75"),
        "{stdout}"
    );
    assert!(!evidence.exists(), "no evidence for an honest ledger");

    write_receipt(&file, &later).unwrap();
    let out = check_receipt(&file, &db, &evidence);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not recorded yet (pending)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A receipt tampered with after the fact is refused before the ledger is consulted.
    let mut forged = receipt.clone();
    forged.leaf.ledger_seq += 1;
    write_receipt(&file, &forged).unwrap();
    let out = check_receipt(&file, &db, &evidence);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewrites the ledger at `src` into `dst`, a fresh ledger on the same backend, the way a
/// dishonest operator would: `change` edits the list of entries, then every entry is appended
/// afresh with the operator key, so the chain, the Merkle tree and every checkpoint signature
/// are valid.
async fn rewrite(src: &str, dst: &TempLedger, change: impl FnOnce(&mut Vec<Entry>)) -> String {
    let from = Ledger::open_existing(src).await.unwrap();
    let mut entries = support::all_entries(&from).await;
    from.close().await;
    change(&mut entries);
    support::re_sign(entries, &dst.url).await;
    dst.url.clone()
}

/// `baton audit verify` on a rewritten ledger: its signatures are all valid, but the book
/// binding sees the book differs from the signed orders, naming `needle`.
fn verify_fails(db: &str, needle: &str) {
    let out = Command::new(crate::BATON)
        .args([
            "audit",
            "verify",
            "--db",
            db,
            "--operator-pubkey",
            &operator_hex(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the book binding catches it");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

/// `baton audit check-evidence` on an evidence file: what a third party runs.
fn check_evidence(path: &Path) -> Output {
    Command::new(crate::BATON)
        .args([
            "audit",
            "check-evidence",
            path.to_str().unwrap(),
            "--operator-pubkey",
            &operator_hex(),
        ])
        .output()
        .expect("runs baton")
}

fn holds(path: &Path) -> String {
    let out = check_evidence(path);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read_evidence(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("evidence written")).unwrap()
}

/// An inclusion proof inside the evidence (its hex fields borrow, so parse from text).
fn proof(v: &serde_json::Value) -> InclusionProof {
    serde_json::from_str(&v.to_string()).unwrap()
}

fn view(e: &Entry) -> EntryView<'_> {
    EntryView {
        seq: e.seq,
        kind: e.kind.as_str(),
        interval_start: e.interval_start,
        body: &e.body,
    }
}

async fn an_operator_who_leaves_an_order_out_is_caught_with_checkable_evidence(
    backend: fn() -> Option<TempLedger>,
) {
    let Some((ledger, dropped_to, omitted_to)) = backend()
        .zip(backend())
        .zip(backend())
        .map(|((a, b), c)| (a, b, c))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (receipt, fill, _, honest) = trade_and_clear(&ledger).await;
    let seq = receipt.leaf.ledger_seq;
    let file = dir.path().join("bob.receipt.json");
    write_receipt(&file, &receipt).unwrap();
    let key = support::operator().public_key();

    // 1. The order entry dropped: every later entry moves up one seq.
    let dropped = rewrite(&honest, &dropped_to, |es| es.retain(|e| e.seq != seq)).await;
    // The result still lists the order: the audit alone names it (an operator who also
    // re-cleared without it would pass the audit; the receipt still catches that).
    verify_fails(&dropped, "no signed order entry");
    let evidence = dir.path().join("dropped-evidence.json");
    let out = check_receipt(&file, &dropped, &evidence);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("CONTRADICTED: the receipt for seq {seq} is valid")),
        "{stderr}"
    );
    let e = read_evidence(&evidence);
    assert_eq!(e["verdict"]["status"], "contradicted");
    // A third party's check: the receipt is the operator's, and so is the ledger's entry at
    // that seq, and they disagree.
    let r: Receipt = serde_json::from_value(e["receipt"].clone()).unwrap();
    assert_eq!(r, receipt);
    r.verify(key.as_dalek()).unwrap();
    let p = proof(&e["entry_at_seq"]);
    p.verify(&p.checkpoint, &key).unwrap();
    assert_eq!(p.entry.seq, seq);
    assert!(judge_order_entry(&r, Some(view(&p.entry))).is_err());
    let said = holds(&evidence);
    assert!(
        said.contains(&format!(
            "signed the receipt for seq {seq} and a ledger in which"
        )),
        "{said}"
    );
    // Evidence doctored to pair the receipt with its own true entry does not hold.
    let mut doctored = e.clone();
    let honest_proof = {
        let l = Ledger::open_existing(&honest).await.unwrap();
        let p = l.inclusion_proof(seq).await.unwrap();
        l.close().await;
        p
    };
    doctored["entry_at_seq"] = serde_json::to_value(&honest_proof).unwrap();
    let doctored_path = dir.path().join("doctored.json");
    std::fs::write(&doctored_path, doctored.to_string()).unwrap();
    let out = check_evidence(&doctored_path);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the receipt's order"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. The order entry kept but the interval's result rewritten without it.
    let omitted = rewrite(&honest, &omitted_to, |es| {
        let result = es
            .iter_mut()
            .find(|e| e.kind.as_str() == "interval_result" && e.interval_start == Some(OPEN))
            .expect("the interval's result");
        let mut v: serde_json::Value = serde_json::from_slice(&result.body).unwrap();
        let orders = v["orders"].as_array_mut().unwrap();
        let before = orders.len();
        orders.retain(|o| o["id"] != fill.order_id.as_str());
        assert_eq!(orders.len(), before - 1);
        result.body = serde_json::to_vec(&v).unwrap();
    })
    .await;
    verify_fails(&omitted, "missing from the recorded book");
    let evidence = dir.path().join("omitted-evidence.json");
    let out = check_receipt(&file, &omitted, &evidence);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("OMITTED: the receipt for seq {seq} is valid")),
        "{stderr}"
    );
    let e = read_evidence(&evidence);
    assert_eq!(e["verdict"]["status"], "omitted");
    let at_seq = proof(&e["entry_at_seq"]);
    at_seq.verify(&at_seq.checkpoint, &key).unwrap();
    assert_eq!(
        judge_order_entry(&receipt, Some(view(&at_seq.entry)))
            .unwrap()
            .order_id,
        fill.order_id
    );
    let result = proof(&e["result"]);
    result.verify(&result.checkpoint, &key).unwrap();
    assert_eq!(result.entry.kind.as_str(), "interval_result");
    assert_eq!(result.entry.interval_start, Some(OPEN));
    let said = holds(&evidence);
    assert!(
        said.contains(&format!(
            "result at seq {} leaves out order {} accepted at seq {seq}",
            result.entry.seq, fill.order_id
        )),
        "{said}"
    );
    let listed: serde_json::Value = serde_json::from_slice(&result.entry.body).unwrap();
    assert!(!listed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == fill.order_id.as_str()));
}

fn sqlite() -> Option<TempLedger> {
    Some(TempLedger::sqlite())
}

fn postgres() -> Option<TempLedger> {
    TempLedger::postgres("receipt test")
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_ledger {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite).await })*
        }
        mod postgres_ledger {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres).await })*
        }
    };
}

on_both_backends!(
    check_receipt_shows_an_order_included_with_the_servers_fill_and_payment,
    an_operator_who_leaves_an_order_out_is_caught_with_checkable_evidence,
);
