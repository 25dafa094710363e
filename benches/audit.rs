//! Audit benchmark harness (`cargo bench -p baton-benches --bench audit`): `baton audit verify`
//! — the ledger's checks and the book binding in one pass — on a SQLite ledger of signed,
//! gated, recorded orders. Prints figures; asserts nothing about speed.
//!
//! Env: `BATON_BENCH_ORDERS` (default 1,000,000 order entries), `BATON_BENCH_ORDERS_PER_INTERVAL`
//! (default 100,000), `BATON_BENCH_BATCH` (entries per append, default 10,000).

use std::time::Instant;

use baton_ledger::audit::{self, VerifyOptions};
use baton_ledger::{
    Ledger, NewEntry, OperatorKey, ParticipantBody, ParticipantStatus, SettlementBody,
    SignedMessageBody,
};
use baton_proto::v1 as pb;
use baton_test_support as support;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;

const ORIGIN: &str = "bench.baton/audit";
/// Participants whose signed orders fill the ledger.
const PARTICIPANTS: usize = 1_000;
const T0: i64 = 1_800_000_000;
const INTERVAL_S: i64 = 300;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ledger a live market would write: admissions, the network, then per interval its
/// signed orders, the gate, the (compact) input, a result listing the book and a settlement.
fn build(orders: usize, per_interval: usize) -> Vec<NewEntry> {
    let keys: Vec<SigningKey> = (0..PARTICIPANTS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let mut all: Vec<NewEntry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            NewEntry::participant(&ParticipantBody {
                details: Some(
                    serde_json::json!({"node": if i.is_multiple_of(2) { "A" } else { "B" }}),
                ),
                participant_id: format!("p{i}"),
                public_key: k.verifying_key().to_bytes(),
                status: ParticipantStatus::Active,
            })
        })
        .collect();
    let network = baton_engine::scenario::parse(support::TWO_NODE)
        .expect("the two-node scenario")
        .market;
    all.push(NewEntry::new(
        baton_ledger::EntryKind::Network,
        None,
        serde_json::to_vec(&network).unwrap(),
    ));
    let network_seq = all.len() as u64;
    let mut nonce = vec![0u64; PARTICIPANTS];
    let mut done = 0;
    let mut interval = T0;
    while done < orders {
        let n = per_interval.min(orders - done);
        let mut seqs = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for k in 0..n {
            let p = (done + k) % PARTICIPANTS;
            nonce[p] += 1;
            let o = pb::Order {
                participant_id: format!("p{p}"),
                nonce: nonce[p],
                interval_start: interval,
                node: if p.is_multiple_of(2) { "A" } else { "B" }.into(),
                side: if p.is_multiple_of(2) {
                    pb::Side::Sell
                } else {
                    pb::Side::Buy
                } as i32,
                blocks: vec![pb::Block {
                    quantity: "1.5".into(),
                    price: format!("0.{:02}", 10 + k % 80),
                }],
                device: None,
                product: pb::Product::Energy as i32,
            };
            let payload = o.encode_to_vec();
            let id = baton_proto::wire::order_id(&o.participant_id, o.nonce);
            all.push(NewEntry::order(
                Some(interval),
                &SignedMessageBody {
                    order_id: Some(id.clone()),
                    participant_id: o.participant_id.clone(),
                    signature: keys[p].sign(&payload).to_bytes(),
                    payload,
                },
            ));
            seqs.push(all.len() as u64);
            ids.push(id);
        }
        all.push(baton_audit::record::signed_gate(
            interval,
            network_seq,
            &seqs,
        ));
        all.push(NewEntry::new(
            baton_ledger::EntryKind::IntervalInput,
            Some(interval),
            br#"{"format":"baton-interval-input/v2","rounding":false}"#.to_vec(),
        ));
        let result = serde_json::json!({
            "orders": ids.iter().map(|id| serde_json::json!(
                {"id": id, "accepted": ["0"], "accepted_total": "0"}
            )).collect::<Vec<_>>(),
        });
        all.push(NewEntry::new(
            baton_ledger::EntryKind::IntervalResult,
            Some(interval),
            serde_json::to_vec(&result).unwrap(),
        ));
        all.push(NewEntry::settlement(&SettlementBody {
            interval_start: interval,
            postings: Vec::new(),
        }));
        done += n;
        interval += INTERVAL_S;
    }
    all
}

fn main() {
    let orders = env_usize("BATON_BENCH_ORDERS", 1_000_000);
    let per_interval = env_usize("BATON_BENCH_ORDERS_PER_INTERVAL", 100_000);
    let batch = env_usize("BATON_BENCH_BATCH", 10_000);
    // One worker thread: the figures are for one core of audit work (the signature batches
    // run on blocking threads, as `baton audit verify` runs them).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t = Instant::now();
        let entries = build(orders, per_interval);
        let n = entries.len();
        println!(
            "built {n} entries ({orders} signed orders, {per_interval} per interval) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let db = support::TempLedger::sqlite();
        let key = OperatorKey::from_seed(&[9; 32]);
        let public = key.public_key();
        let ledger = Ledger::open(&db.url)
            .await
            .expect("open")
            .with_operator(key, ORIGIN)
            .expect("origin");
        let mut it = entries.into_iter().peekable();
        while it.peek().is_some() {
            ledger
                .append(it.by_ref().take(batch).collect())
                .await
                .expect("append");
        }
        ledger.close().await;
        let t = Instant::now();
        let r = audit::verify_with(
            &db.url,
            &public,
            None,
            VerifyOptions {
                participant_signatures: true,
            },
        )
        .await
        .expect("verify");
        let s = t.elapsed().as_secs_f64();
        println!(
            "ledger checks only (chain, Merkle, checkpoints, {} participant signatures): {:.0} entries/s ({s:.1} s)",
            r.participant_signatures,
            r.entries as f64 / s
        );
        let t = Instant::now();
        let r = baton_audit::verify(&db.url, &public, Vec::new())
            .await
            .expect("the bound ledger verifies");
        let s = t.elapsed().as_secs_f64();
        println!(
            "baton audit verify including book binding ({} intervals, {} orders bound): {:.0} entries/s ({s:.1} s)",
            r.binding.intervals,
            r.binding.orders,
            r.ledger.entries as f64 / s
        );
    });
}
