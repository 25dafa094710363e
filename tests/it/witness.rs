//! Witnessing end to end: real servers on loopback, real ledgers, the built `baton audit
//! witness` as a regulator runs it. An honest market's checkpoints are stored and cosigned;
//! an operator who rewrites history and re-signs every checkpoint passes `audit verify` alone
//! but not the witness; two servers of one ledger that diverge are a fork; and the
//! consistency-proof RPC refuses what it cannot prove, naming the field.

use std::path::Path;
use std::process::Command;

use crate::{fails, ok};
use baton_audit::witness;
use baton_ledger::{merkle, Checkpoint, Ledger, NewEntry, ParticipantBody};
use baton_proto::v1 as pb;
use pb::admin_request::Command as AdminCommand;
use pb::audit_service_client::AuditServiceClient;
use support::{key, sign_order, TempLedger, INTERVAL_S, T0};
use tonic::transport::Channel;
use tonic::Code;

fn operator_hex() -> String {
    support::operator().public_key().to_hex()
}

/// `baton audit witness --once` of `servers` into `state`; `key` is the witness key file
/// (`None`: the one generated in the state directory).
fn witness_args(state: &Path, servers: &[String], key: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = ["audit", "witness", "--once", "--operator-pubkey"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(operator_hex());
    a.push("--state".into());
    a.push(state.display().to_string());
    for s in servers {
        a.push("--server".into());
        a.push(s.clone());
    }
    if let Some(k) = key {
        a.push("--witness-key".into());
        a.push(k.display().to_string());
    }
    a
}

fn witness_ok(state: &Path, servers: &[String], key: Option<&Path>) -> String {
    let a = witness_args(state, servers, key);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

fn witness_fails(state: &Path, servers: &[String], key: Option<&Path>) -> String {
    let a = witness_args(state, servers, key);
    fails(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A witness key pair from `baton keys generate`: (private key file, public key file).
fn witness_keys(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = dir.join("witness-keys");
    ok(&["keys", "generate", "--out", d.to_str().unwrap()]);
    (d.join("operator.key"), d.join("operator.pub"))
}

/// Signs admin requests with increasing nonces (one counter across servers of one ledger).
struct Admin {
    nonce: u64,
}

impl Admin {
    async fn send(&mut self, channel: &Channel, command: AdminCommand) {
        self.nonce += 1;
        support::send_admin(channel, support::admin_request(self.nonce, command))
            .await
            .unwrap_or_else(|e| panic!("admin command {}: {e:?}", self.nonce));
    }

    async fn register(&mut self, channel: &Channel, id: &str, seed: u8, node: &str) {
        self.send(
            channel,
            support::register_command(id, &key(seed), node, "50"),
        )
        .await;
    }
}

async fn head(channel: &Channel) -> Checkpoint {
    let h = AuditServiceClient::new(channel.clone())
        .get_head(pb::GetHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    Checkpoint::from_note(&h.checkpoint).unwrap()
}

fn stored_sizes(state: &Path) -> Vec<u64> {
    witness::stored_checkpoints(state)
        .unwrap()
        .iter()
        .map(|s| s.checkpoint.size)
        .collect()
}

/// The honest market: registrations, an order and a forced clearing, witnessed as they
/// happen; every stored checkpoint is cosigned and the ledger verifies against them all.
async fn honest_market(ledger: &TempLedger, work: &Path, explicit_key: bool) {
    let mut server = support::Server::start(support::config(&ledger.url)).await;
    let channel = server.connect().await;
    let url = vec![server.url()];
    let (wkey, wpub) = witness_keys(work);
    let key_arg = explicit_key.then_some(wkey.as_path());
    let state = work.join("state");
    let mut admin = Admin { nonce: 0 };

    admin.register(&channel, "alice", 1, "A").await;
    let first = head(&channel).await;
    let out = witness_ok(&state, &url, key_arg);
    assert!(
        out.contains(&format!("size {}", first.size)) && out.contains("trusted on first use"),
        "{out}"
    );

    admin.register(&channel, "bob", 2, "B").await;
    let order = pb::Order {
        participant_id: "alice".into(),
        nonce: 1,
        interval_start: T0 + INTERVAL_S,
        node: "A".into(),
        side: pb::Side::Sell as i32,
        blocks: vec![pb::Block {
            quantity: "10".into(),
            price: "0.05".into(),
        }],
        ..Default::default()
    };
    pb::market_service_client::MarketServiceClient::new(channel.clone())
        .submit_order(sign_order(&key(1), &order))
        .await
        .unwrap();
    let second = head(&channel).await;
    assert!(second.size > first.size);
    let out = witness_ok(&state, &url, key_arg);
    assert!(
        out.contains(&format!(
            "size {} root {}, consistent with stored size {}",
            second.size,
            hex::encode(second.root),
            first.size
        )),
        "{out}"
    );

    admin
        .send(&channel, AdminCommand::ClearNow(pb::ClearNow {}))
        .await;
    let third = head(&channel).await;
    assert!(third.size > second.size);
    let out = witness_ok(&state, &url, key_arg);
    assert!(
        out.contains(&format!("consistent with stored size {}", second.size)),
        "{out}"
    );
    // Nothing new: nothing stored.
    let out = witness_ok(&state, &url, key_arg);
    assert!(out.contains(": unchanged"), "{out}");
    assert_eq!(
        stored_sizes(&state),
        vec![first.size, second.size, third.size]
    );
    let latest = std::fs::read_to_string(state.join(witness::LATEST_FILE)).unwrap();
    assert_eq!(Checkpoint::from_note(&latest).unwrap(), third);

    // Each stored note is the operator's checkpoint plus the witness's cosignature.
    let witness_pub = if explicit_key {
        wpub
    } else {
        state.join("witness-key").join("operator.pub")
    };
    let wk = baton_ledger::PublicKey::from_file(&witness_pub).unwrap();
    for s in witness::stored_checkpoints(&state).unwrap() {
        s.verify_cosignature(&wk).unwrap();
        s.checkpoint
            .verify(&support::operator().public_key())
            .unwrap();
    }
    server.stop().await;

    let db = ledger.url.as_str();
    let (op, st, wp) = (
        operator_hex(),
        state.display().to_string(),
        witness_pub.display().to_string(),
    );
    let v = ok(&[
        "audit",
        "verify",
        "--db",
        db,
        "--operator-pubkey",
        &op,
        "--checkpoint",
        &st,
        "--witness-pubkey",
        &wp,
    ]);
    assert!(v.contains("consistent with 3 published checkpoints"), "{v}");
    // Another witness's key finds no cosignature of its own.
    let other = work.join("other");
    ok(&["keys", "generate", "--out", other.to_str().unwrap()]);
    let e = fails(&[
        "audit",
        "verify",
        "--db",
        db,
        "--operator-pubkey",
        &op,
        "--checkpoint",
        &st,
        "--witness-pubkey",
        other.join("operator.pub").to_str().unwrap(),
    ]);
    assert!(e.contains("no cosignature by witness key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_market_is_witnessed_and_cosigned_on_sqlite() {
    let ledger = TempLedger::sqlite();
    let work = tempfile::tempdir().unwrap();
    honest_market(&ledger, work.path(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_market_is_witnessed_and_cosigned_on_postgres() {
    let Some(ledger) = TempLedger::postgres("the PostgreSQL witness test") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // And with the witness key generated in the state directory on first use.
    honest_market(&ledger, work.path(), false).await;
}

/// What a dishonest operator holding the key does to the SQLite ledger at `db_file`: builds
/// the same history with `rewrite` applied to every entry, batch for batch (so every
/// checkpoint size is the same), signs every checkpoint again, and swaps the file in.
async fn rewrite_and_re_sign(db_file: &Path, rewrite: impl Fn(&baton_ledger::Entry) -> Vec<u8>) {
    let url = format!("sqlite://{}", db_file.display());
    let old = Ledger::open_existing(&url).await.unwrap();
    let checkpoints = old.checkpoints().await.unwrap();
    let last = checkpoints.last().unwrap().size;
    let entries = old.entries(1, last).await.unwrap();
    assert_eq!(
        entries.len() as u64,
        last,
        "one page holds this small ledger"
    );
    old.close().await;
    let forged_file = db_file.with_file_name("forged.db");
    let forged_url = format!("sqlite://{}", forged_file.display());
    let forged = Ledger::open(&forged_url)
        .await
        .unwrap()
        .with_operator(support::operator(), &checkpoints[0].origin)
        .unwrap();
    let mut from = 0usize;
    for c in &checkpoints {
        let batch = entries[from..c.size as usize]
            .iter()
            .map(|e| NewEntry::new(e.kind, e.interval_start, rewrite(e)))
            .collect();
        forged.append(batch).await.unwrap();
        from = c.size as usize;
    }
    forged.close().await;
    for suffix in ["-wal", "-shm"] {
        let mut p = db_file.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(&p);
    }
    std::fs::rename(&forged_file, db_file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_signed_rewrite_passes_verify_alone_but_not_the_witness() {
    let ledger = TempLedger::sqlite();
    let db_file = ledger.dir().unwrap().join("baton.db");
    let work = tempfile::tempdir().unwrap();
    let (wkey, _) = witness_keys(work.path());
    let state = work.path().join("state");
    let mut admin = Admin { nonce: 0 };

    let mut server = support::Server::start(support::config(&ledger.url)).await;
    let channel = server.connect().await;
    admin.register(&channel, "alice", 1, "A").await;
    admin.register(&channel, "bob", 2, "B").await;
    let witnessed = head(&channel).await;
    witness_ok(&state, &[server.url()], Some(&wkey));
    admin.register(&channel, "carol", 3, "A").await;
    server.stop().await;

    // Alice's capacity was 50 kW; the rewritten history says 5000.
    rewrite_and_re_sign(&db_file, |e| {
        if e.kind != baton_ledger::EntryKind::Participant {
            return e.body.clone();
        }
        let mut p = ParticipantBody::from_bytes(&e.body).unwrap();
        if p.participant_id == "alice" {
            let d = p.details.as_mut().unwrap();
            d["capacity_kw"] = serde_json::json!("5000");
        }
        p.to_bytes()
    })
    .await;

    // The rewritten ledger is internally consistent and correctly signed: that is the point.
    let op = operator_hex();
    let v = ok(&[
        "audit",
        "verify",
        "--db",
        &ledger.url,
        "--operator-pubkey",
        &op,
    ]);
    assert!(v.starts_with("ledger verified:"), "{v}");

    let mut server = support::Server::start(support::config(&ledger.url)).await;
    let channel = server.connect().await;
    let rewritten = head(&channel).await;
    let at_witnessed = AuditServiceClient::new(channel.clone())
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            from_size: witnessed.size,
            to_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let forged_old = Checkpoint::from_note(&at_witnessed.from_checkpoint).unwrap();
    assert_eq!(forged_old.size, witnessed.size);
    assert_ne!(
        forged_old.root, witnessed.root,
        "the rewrite changed the witnessed prefix"
    );
    let e = witness_fails(&state, &[server.url()], Some(&wkey));
    assert!(
        e.contains(&format!(
            "history was rewritten: {} signs size {} with root {} but the witness stored root {} at size {}",
            server.url(),
            witnessed.size,
            hex::encode(forged_old.root),
            hex::encode(witnessed.root),
            witnessed.size
        )) && e.contains(&format!(
            "(while serving size {} root {})",
            rewritten.size,
            hex::encode(rewritten.root)
        )),
        "{e}"
    );
    // Nothing was stored from the rewritten history.
    assert_eq!(stored_sizes(&state), vec![witnessed.size]);
    server.stop().await;

    let st = state.display().to_string();
    let e = fails(&[
        "audit",
        "verify",
        "--db",
        &ledger.url,
        "--operator-pubkey",
        &op,
        "--checkpoint",
        &st,
    ]);
    assert!(
        e.contains(&format!(
            "verification failed: seq {0}: not consistent with the published checkpoint at size {0}: history was rewritten",
            witnessed.size
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_of_one_ledger_that_diverge_are_a_fork() {
    let first = TempLedger::sqlite();
    let second = TempLedger::sqlite();
    let work = tempfile::tempdir().unwrap();
    let (wkey, _) = witness_keys(work.path());
    let state = work.path().join("state");
    let mut admin = Admin { nonce: 0 };

    // One ledger, witnessed…
    let mut a = support::Server::start(support::config(&first.url)).await;
    let ca = a.connect().await;
    admin.register(&ca, "alice", 1, "A").await;
    let shared = head(&ca).await;
    witness_ok(&state, &[a.url()], Some(&wkey));
    a.stop().await;
    // …copied to a second server, the same operator key and origin.
    std::fs::copy(
        first.dir().unwrap().join("baton.db"),
        second.dir().unwrap().join("baton.db"),
    )
    .unwrap();
    let mut a = support::Server::start(support::config(&first.url)).await;
    let mut b = support::Server::start(support::config(&second.url)).await;
    let (ca, cb) = (a.connect().await, b.connect().await);
    let servers = vec![a.url(), b.url()];
    // Both agree so far.
    let out = witness_ok(&state, &servers, Some(&wkey));
    assert!(out.contains(": unchanged"), "{out}");

    // The copies diverge: one registers bob, the other carol, at the same size.
    admin.register(&ca, "bob", 2, "B").await;
    admin.register(&cb, "carol", 3, "B").await;
    let (ha, hb) = (head(&ca).await, head(&cb).await);
    assert_eq!(ha.size, hb.size);
    assert!(ha.size > shared.size);
    let e = witness_fails(&state, &servers, Some(&wkey));
    assert!(
        e.contains(&format!(
            "fork: {} signs size {} (root {}) and {} signs size {} (root {}): the same size with different roots",
            a.url(),
            ha.size,
            hex::encode(ha.root),
            b.url(),
            hb.size,
            hex::encode(hb.root)
        )),
        "{e}"
    );

    // The second moves ahead: the first's checkpoint is not a prefix of it.
    admin.register(&cb, "dave", 4, "A").await;
    let hb2 = head(&cb).await;
    let e = witness_fails(&state, &servers, Some(&wkey));
    assert!(
        e.contains(&format!(
            "fork: {} signs size {} (root {}) and {} signs size {} (root {}): {} signs size {} with root {}",
            b.url(),
            hb2.size,
            hex::encode(hb2.root),
            a.url(),
            ha.size,
            hex::encode(ha.root),
            b.url(),
            hb.size,
            hex::encode(hb.root)
        )),
        "{e}"
    );
    // Each server alone is a consistent extension of what was witnessed; together, a fork.
    assert_eq!(stored_sizes(&state), vec![shared.size]);
    witness_ok(&state, &[b.url()], Some(&wkey));
    let e = witness_fails(&state, &[a.url()], Some(&wkey));
    assert!(e.contains("rollback:"), "{e}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_proof_refusals_name_the_field() {
    let ledger = TempLedger::sqlite();
    let mut server = support::Server::start(support::config(&ledger.url)).await;
    let channel = server.connect().await;
    let mut admin = Admin { nonce: 0 };
    admin.register(&channel, "alice", 1, "A").await;
    admin.register(&channel, "bob", 2, "B").await;
    admin
        .send(&channel, AdminCommand::ClearNow(pb::ClearNow {}))
        .await;
    let latest = head(&channel).await;
    let mut audit = AuditServiceClient::new(channel.clone());
    let ask = |from_size, to_size| pb::GetConsistencyProofRequest { from_size, to_size };

    let e = audit.get_consistency_proof(ask(3, 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), "from_size: 3 is after to_size 2");
    let e = audit.get_consistency_proof(ask(0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("from_size: "), "{e:?}");
    let beyond = latest.size + 5;
    let e = audit
        .get_consistency_proof(ask(1, beyond))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        format!("to_size: checkpoint of size {beyond} not found")
    );
    let e = audit
        .get_consistency_proof(ask(beyond, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "from_size: {beyond} is after the latest checkpoint's size {}",
            latest.size
        )
    );

    // Every size either has a checkpoint (and a proof that verifies) or is NOT_FOUND by name.
    let reader = Ledger::open_existing(&ledger.url).await.unwrap();
    let sizes: Vec<u64> = reader
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| c.size)
        .collect();
    let hashes: Vec<_> = reader
        .entries(1, latest.size)
        .await
        .unwrap()
        .iter()
        .map(|e| e.hash)
        .collect();
    reader.close().await;
    let mut without = 0;
    for s in 1..=latest.size {
        match audit.get_consistency_proof(ask(s, 0)).await {
            Ok(r) => {
                let r = r.into_inner();
                assert!(
                    sizes.contains(&s),
                    "size {s} has no checkpoint but was proved"
                );
                let (old, new) = (
                    Checkpoint::from_note(&r.from_checkpoint).unwrap(),
                    Checkpoint::from_note(&r.to_checkpoint).unwrap(),
                );
                assert_eq!((old.size, new.size), (s, latest.size));
                assert_eq!(new, latest);
                assert_eq!(old.root, merkle::root(&hashes[..s as usize]));
                let path: Vec<_> = r
                    .path
                    .iter()
                    .map(|h| <[u8; 32]>::try_from(h.as_slice()).unwrap())
                    .collect();
                assert!(merkle::verify_consistency(
                    s,
                    latest.size,
                    &old.root,
                    &new.root,
                    &path
                ));
            }
            Err(e) => {
                assert!(!sizes.contains(&s), "size {s} has a checkpoint: {e:?}");
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                assert_eq!(
                    e.message(),
                    format!("from_size: checkpoint of size {s} not found")
                );
                without += 1;
            }
        }
    }
    assert!(
        without > 0,
        "the clearing's batch leaves sizes without a checkpoint: {sizes:?}"
    );
    server.stop().await;
}

/// Real seconds a following witness gets to notice a fork.
const FOLLOW_WAIT_S: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_witness_stops_loudly_at_a_fork() {
    let first = TempLedger::sqlite();
    let second = TempLedger::sqlite();
    let work = tempfile::tempdir().unwrap();
    let (wkey, _) = witness_keys(work.path());
    let state = work.path().join("state");
    let mut admin = Admin { nonce: 0 };
    let mut a = support::Server::start(support::config(&first.url)).await;
    admin.register(&a.connect().await, "alice", 1, "A").await;
    a.stop().await;
    std::fs::copy(
        first.dir().unwrap().join("baton.db"),
        second.dir().unwrap().join("baton.db"),
    )
    .unwrap();
    let mut a = support::Server::start(support::config(&first.url)).await;
    let mut b = support::Server::start(support::config(&second.url)).await;
    let (ca, cb) = (a.connect().await, b.connect().await);

    let mut args = witness_args(&state, &[a.url(), b.url()], Some(&wkey));
    args.retain(|x| x != "--once");
    args.extend(["--interval-ms".into(), "50".into()]);
    let mut child = Command::new(crate::BATON)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It follows while both agree…
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(FOLLOW_WAIT_S);
    while !state.join(witness::LATEST_FILE).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the witness stored nothing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the witness ended early"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // …and ends, non-zero, once they diverge.
    admin.register(&ca, "bob", 2, "B").await;
    admin.register(&cb, "carol", 3, "B").await;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the witness did not stop at the fork within {FOLLOW_WAIT_S} s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("witness refused: fork: ")
            && stderr.contains(&a.url())
            && stderr.contains(&b.url()),
        "{stderr}"
    );
    a.stop().await;
    b.stop().await;
}
