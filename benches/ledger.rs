//! Ledger benchmark harness (`cargo bench -p baton-benches --bench ledger`). Prints figures;
//! asserts nothing about speed.
//!
//! Env: `BATON_BENCH_ENTRIES` (default 200,000), `BATON_BENCH_BATCH` (default 10,000),
//! `BATON_TEST_POSTGRES_URL` to include PostgreSQL (a fresh schema is created and dropped).

use std::time::Instant;

use baton_ledger::audit::{self, VerifyOptions};
use baton_ledger::entry::{entry_hash, EntryKind};
use baton_ledger::{
    Ledger, NewEntry, OperatorKey, ParticipantBody, ParticipantStatus, SignedMessageBody,
};
use ed25519_dalek::{Signer, SigningKey};

const ORIGIN: &str = "bench.baton/ledger";
/// Participants whose signed orders fill the ledger.
const PARTICIPANTS: usize = 100;

/// CPU seconds (user + system, all threads) this process has used: the machine is shared, so
/// wall-clock rates understate what the code does on an idle core. Linux only; 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on every Linux we run on.
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall and CPU time of one phase.
struct Timer(Instant, f64);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), cpu_seconds())
    }

    /// "X s wall = N/s; Y s CPU = M/s".
    fn report(&self, n: u64) -> String {
        let wall = self.0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.1;
        format!(
            "{wall:.2} s wall = {:.0} entries/s; {cpu:.2} s CPU = {:.0} entries/CPU-s",
            n as f64 / wall,
            n as f64 / cpu.max(1e-9)
        )
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pre-signed batches: participant signing is the participants' work, not the ledger's.
fn build_batches(entries: usize, batch: usize) -> (Vec<Vec<NewEntry>>, usize) {
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
                details: None,
                participant_id: format!("p{i}"),
                public_key: k.verifying_key().to_bytes(),
                status: ParticipantStatus::Active,
            })
        })
        .collect();
    let mut body_bytes = 0usize;
    for n in 0..entries.saturating_sub(PARTICIPANTS) {
        let p = n % PARTICIPANTS;
        // A compact signed order payload (binary in production; ~30 bytes here).
        let payload = format!("o{n}|n7|b|42.17|1.500").into_bytes();
        let body = SignedMessageBody {
            order_id: None,
            participant_id: format!("p{p}"),
            signature: keys[p].sign(&payload).to_bytes(),
            payload,
        };
        let e = NewEntry::order(Some(1_700_000_000), &body);
        body_bytes += e.body.len();
        all.push(e);
    }
    let avg = body_bytes / entries.saturating_sub(PARTICIPANTS).max(1);
    let mut batches = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(it.by_ref().take(batch).collect());
    }
    (batches, avg)
}

/// Per-entry CPU costs of the pieces of append and verify, without any database.
fn components(batches: &[Vec<NewEntry>]) {
    let orders: Vec<&NewEntry> = batches
        .iter()
        .flatten()
        .filter(|e| e.kind == EntryKind::Order)
        .collect();
    let n = orders.len() as u64;
    let t = Timer::start();
    for e in &orders {
        std::hint::black_box(SignedMessageBody::from_bytes(EntryKind::Order, &e.body).unwrap());
    }
    println!(
        "component: parse + canonical check of order bodies: {}",
        t.report(n)
    );
    let t = Timer::start();
    let mut prev = [0u8; 32];
    let mut frontier = baton_ledger::merkle::Frontier::new();
    for (i, e) in orders.iter().enumerate() {
        prev = entry_hash(&prev, i as u64 + 1, "order", e.interval_start, &e.body);
        frontier.push(&prev);
    }
    std::hint::black_box(frontier.root());
    println!("component: chain hash + Merkle frontier: {}", t.report(n));
}

async fn run(name: &str, url: &str, entries: usize, batch: usize) {
    let (batches, avg) = build_batches(entries, batch);
    if name == "sqlite" {
        components(&batches);
    }
    let key = OperatorKey::from_seed(&[9; 32]);
    let public = key.public_key();
    let ledger = Ledger::open(url)
        .await
        .expect("open")
        .with_operator(key, ORIGIN)
        .expect("origin");
    let n: usize = batches.iter().map(Vec::len).sum();
    let t = Timer::start();
    for b in batches {
        ledger.append(b).await.expect("append");
    }
    println!(
        "{name}: append {n} entries (avg body {avg} B) in batches of {batch}: {}",
        t.report(n as u64)
    );
    ledger.close().await;

    let t = Timer::start();
    let r = audit::verify_with(
        url,
        &public,
        None,
        VerifyOptions {
            participant_signatures: false,
        },
    )
    .await
    .expect("verify");
    println!(
        "{name}: verify chain + Merkle + operator signatures ({} checkpoints): {}",
        r.checkpoints,
        t.report(r.entries)
    );
    let t = Timer::start();
    let r = audit::verify(url, &public, None).await.expect("verify");
    println!(
        "{name}: verify with {} participant signatures (batches of {}): {}",
        r.participant_signatures,
        audit::SIGNATURE_BATCH_MAX,
        t.report(r.entries)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let entries = env_usize("BATON_BENCH_ENTRIES", 200_000);
    let batch = env_usize("BATON_BENCH_BATCH", 10_000);
    // One worker thread: the figures are for one core of ledger work (sqlx's SQLite driver
    // still runs each connection on its own thread).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        run("sqlite", &url, entries, batch).await;

        // Empty (as `VAR= ./.ci/test` leaves it) is unset.
        match std::env::var("BATON_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            None => println!("postgres: skipped (BATON_TEST_POSTGRES_URL unset or empty)"),
            Some(base) => {
                let schema = format!("bench_{}", hex::encode(rand::random::<[u8; 4]>()));
                let admin = sqlx_exec(&base, &format!("CREATE SCHEMA {schema}")).await;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                run("postgres", &url, entries, batch).await;
                if admin {
                    sqlx_exec(&base, &format!("DROP SCHEMA {schema} CASCADE")).await;
                }
            }
        }
    });
}

async fn sqlx_exec(url: &str, sql: &str) -> bool {
    let Ok(pool) = sqlx::PgPool::connect(url).await else {
        return false;
    };
    let ok = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .is_ok();
    pool.close().await;
    ok
}
