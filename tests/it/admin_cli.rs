//! `baton admin` end to end: a real `baton serve` child process (the built binary, a SQLite
//! ledger in a temporary directory, an accelerated clock), driven by `baton admin` child
//! processes whose output — tables and `--json` — is checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use baton_client::{pb, BlockSpec, Decimal, MarketClient, NewOrder, ParticipantKey};
use serde_json::Value;

/// A `baton serve` child (killed on drop, so a failed test never leaves a server running) and
/// the directory holding its ledger and keys.
struct Serve {
    process: support::ServeProcess,
    dir: tempfile::TempDir,
}

fn spawn_serve() -> Serve {
    let dir = tempfile::tempdir().unwrap();
    // A missing key is generated (with its .pub) where the operator will read it.
    let key = dir.path().join("keys").join("operator.key");
    let mut serve = support::serve_command(crate::BATON, dir.path(), &key, "two-node.toml");
    // Twice real time: gates may close while the test runs, and it must not matter.
    serve.args(["--time-scale", "2"]);
    Serve {
        process: support::ServeProcess::spawn(serve, None),
        dir,
    }
}

fn scenario() -> PathBuf {
    support::scenario_path("two-node.toml")
}

impl Serve {
    fn url(&self) -> String {
        self.process.url()
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("keys").join("operator.key")
    }

    /// Runs `baton admin ARGS` with the server's key.
    fn admin(&self, args: &[&str]) -> Output {
        admin(&self.url(), &self.key(), args)
    }

    /// Runs `baton admin ARGS`, expects success and returns standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "baton admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `baton admin --json ARGS` and parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn admin(url: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(crate::BATON)
        .args(["admin", "--server", url, "--operator-key"])
        .arg(key)
        .args(args)
        .output()
        .expect("baton admin runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pubkey(seed: u8) -> String {
    ParticipantKey::from_seed(&[seed; 32]).public_key_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_drive_a_live_server() {
    let s = spawn_serve();
    let dir = s.dir.path();

    // Import: two good rows, one on a node the network lacks, one with a broken key.
    let csv = dir.join("participants.csv");
    std::fs::write(
        &csv,
        format!(
            "id,node,public_key,roles,capacity_kw\n\
             alice,A,{},prosumer,50\n\
             bob,B,{},prosumer;regulator,\n\
             zed,Z,{},prosumer,5\n\
             bad,A,xyz,prosumer,1\n",
            pubkey(1),
            pubkey(2),
            pubkey(3)
        ),
    )
    .unwrap();
    let out = s.admin(&["participants", "import", csv.to_str().unwrap()]);
    assert!(!out.status.success(), "a failed row makes the import fail");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["LINE", "ID", "OUTCOME", "LEDGER_SEQ"]);
    // Aligned: every outcome starts under its header, every seq under its own.
    assert_eq!(
        lines[1].find("registered"),
        lines[0].find("OUTCOME"),
        "{text}"
    );
    let seq_col = lines[0].find("LEDGER_SEQ").unwrap();
    assert!(lines[1][seq_col..].parse::<u64>().is_ok(), "{text}");
    assert!(lines[1].starts_with("2     alice  registered"), "{text}");
    assert!(lines[2].starts_with("3     bob    registered"), "{text}");
    assert_eq!(
        lines[3],
        "4     zed    FAILED: INVALID_ARGUMENT: node: \"Z\" is not in the network"
    );
    assert!(
        lines[4].starts_with("5     bad    FAILED: public_key: not hex"),
        "{text}"
    );
    assert_eq!(lines[6], "2 registered, 0 already registered, 2 failed");
    assert!(stderr_of_failed_import(&s, &csv).contains("some rows failed"));
    // Re-running it is idempotent for the rows that went in.
    let again = s.admin(&["--json", "participants", "import", csv.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["registered"], 0);
    assert_eq!(v["already_registered"], 2);
    assert_eq!(v["failed"], 2);
    assert_eq!(v["rows"][2]["ok"], false);

    // Register from a public key file, then suspend.
    let carol_key = dir.join("carol.key");
    ParticipantKey::generate_to(&carol_key).unwrap();
    let out = s.ok(&[
        "participants",
        "register",
        "--id",
        "carol",
        "--node",
        "B",
        "--public-key-file",
        dir.join("carol.pub").to_str().unwrap(),
        "--roles",
        "prosumer,regulator",
        "--capacity-kw",
        "30",
    ]);
    assert!(
        out.starts_with("registered carol at B (ledger seq "),
        "{out}"
    );
    // Roles and directions are checked by name before anything is sent.
    for (args, name) in [
        (
            vec![
                "participants",
                "register",
                "--id",
                "dan",
                "--node",
                "B",
                "--public-key",
                &pubkey(3),
                "--roles",
                "prosumer,admin",
            ],
            "'admin' for '--roles <ROLES>'",
        ),
        (
            vec![
                "flex",
                "post",
                "--id",
                "x",
                "--nodes",
                "B",
                "--direction",
                "sideways",
                "--block",
                "1@0.1",
            ],
            "'sideways' for '--direction <DIRECTION>'",
        ),
    ] {
        let out = s.admin(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(name), "{err}");
        assert!(err.contains("[possible values: "), "{err}");
    }
    let out = s.ok(&["participants", "suspend", "carol"]);
    assert!(out.starts_with("suspended carol (ledger seq "), "{out}");
    let table = s.ok(&["participants", "list"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert_eq!(
        rows[0],
        "ID     NODE  ROLES               CAPACITY_KW  STATUS     PUBLIC_KEY"
    );
    assert_eq!(
        rows[1],
        format!(
            "alice  A     prosumer            50           active     {}",
            pubkey(1)
        )
    );
    assert_eq!(
        rows[2],
        format!(
            "bob    B     prosumer,regulator               active     {}",
            pubkey(2)
        )
    );
    assert!(rows[3].starts_with("carol  B     prosumer,regulator  30           suspended  "));
    let list = s.json(&["participants", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[2]["id"], "carol");
    assert_eq!(list[2]["active"], false);
    assert_eq!(
        list[1]["roles"],
        serde_json::json!(["prosumer", "regulator"])
    );

    // The network: shown from the ledger, changed by grid prices, flexibility and a reload.
    let shown = s.ok(&["network", "show"]);
    assert!(shown.starts_with("market           two-node\n"), "{shown}");
    assert!(
        shown.contains("\nfeeder           A     0.30          100           0.03          50\n"),
        "{shown}"
    );
    let v1 = s.json(&["network", "show"])["network_version"]
        .as_u64()
        .unwrap();
    let out = s.ok(&[
        "grid",
        "set-prices",
        "--connection",
        "feeder",
        "--import",
        "0.31",
        "--export",
        "0.02",
    ]);
    assert!(out.starts_with("grid connection feeder: import 0.31, export 0.02 (network version "));
    let net = s.json(&["network", "show"]);
    assert!(net["network_version"].as_u64().unwrap() > v1);
    assert_eq!(net["grid_connections"][0]["import_price"], "0.31");
    let out = s.ok(&[
        "flex",
        "post",
        "--id",
        "noon-A",
        "--nodes",
        "A,B",
        "--direction",
        "down",
        "--block",
        "5@0.2",
        "3@0.3",
    ]);
    assert!(
        out.starts_with("flexibility requirement noon-A posted: down 8 kW at A,B"),
        "{out}"
    );
    // The flag may also repeat.
    s.ok(&[
        "flex",
        "post",
        "--id",
        "up-B",
        "--nodes",
        "B",
        "--direction",
        "up",
        "--block",
        "1@0.5",
        "--block",
        "2@0.6",
    ]);
    let reqs = s.json(&["network", "show"])["flex_requirements"].clone();
    let up_b = reqs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "up-B")
        .unwrap();
    assert_eq!(up_b["blocks"].as_array().unwrap().len(), 2, "{reqs}");
    assert!(s
        .ok(&["network", "show"])
        .contains("\nnoon-A            down       A,B    5@0.2 3@0.3\n"));
    let out = s.ok(&["network", "load", scenario().to_str().unwrap()]);
    assert!(out.starts_with("network loaded from "), "{out}");
    assert_eq!(
        s.json(&["network", "show"])["grid_connections"][0]["import_price"],
        "0.30"
    );

    // Pause and resume.
    assert!(s
        .ok(&["market", "pause"])
        .starts_with("market paused (ledger seq "));
    let status = s.ok(&["market", "status"]);
    // Keys padded to the longest, "last cleared interval".
    assert!(
        status.contains(&format!("\n{:21}  yes\n", "paused")),
        "{status}"
    );
    assert!(
        status.contains(&format!("\n{:21}  3\n", "participants")),
        "{status}"
    );
    s.ok(&["market", "resume"]);
    assert_eq!(s.json(&["market", "status"])["paused"], false);

    // Orders through the SDK, then clear the interval they are for now.
    let channel = baton_client::connect(&s.url()).await.unwrap();
    let alice = MarketClient::new(
        channel.clone(),
        "alice",
        ParticipantKey::from_seed(&[1; 32]),
    );
    let bob = MarketClient::new(channel, "bob", ParticipantKey::from_seed(&[2; 32]));
    let d = |t: &str| t.parse::<Decimal>().unwrap();
    // At twice real time a gate may close between two submits; then try the next interval.
    let mut interval = None;
    for _ in 0..3 {
        let next = alice.market_info().await.unwrap().next_open_interval;
        let a = alice
            .submit(NewOrder::energy(
                next,
                "A",
                pb::Side::Sell,
                vec![BlockSpec::priced(d("40"), d("0.04"))],
            ))
            .await;
        let b = bob
            .submit(NewOrder::energy(
                next,
                "B",
                pb::Side::Buy,
                vec![BlockSpec::priced(d("50"), d("0.45"))],
            ))
            .await;
        match (a, b) {
            (Ok(_), Ok(_)) => {
                interval = Some(next);
                break;
            }
            (a, b) => eprintln!("retrying with the next interval: {a:?} {b:?}"),
        }
    }
    let interval = interval.expect("both orders accepted for one interval");
    let out = s.ok(&["market", "clear-now"]);
    assert!(
        out.starts_with("cleared interval ") || out.contains("closed"),
        "{out}"
    );
    // By the time clear-now answers, the orders' interval is recorded (by it or by its gate).
    let listed = s.json(&["intervals", "list", "--limit", "50"]);
    let ours = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["interval_start"] == interval)
        .unwrap_or_else(|| panic!("interval {interval} not listed: {listed}"));
    assert_eq!(ours["orders"], 2);
    assert_eq!(ours["bought_kw"], "50");
    assert_eq!(ours["sold_kw"], "40");
    assert!(ours["clearing_ms"].as_u64().is_some());
    let table = s.ok(&["intervals", "list"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "INTERVAL",
            "ORDERS",
            "BOUGHT_KW",
            "SOLD_KW",
            "PRICE_MIN",
            "PRICE_MAX",
            "CONGESTED",
            "FLEX_KW",
            "CLEAR_MS",
            "LEDGER",
            "READ/MISS",
            "IMB_KWH",
            "IMB_COST",
            "FLEX_DLV",
            "PENALTY"
        ],
        "{table}"
    );
    assert!(
        table.starts_with("INTERVAL              ORDERS  BOUGHT_KW  SOLD_KW  PRICE_MIN"),
        "{table}"
    );
    // Not yet metered: its delivery columns are dashes.
    assert!(ours["delivery"].is_null(), "{ours}");
}

fn stderr_of_failed_import(s: &Serve, csv: &Path) -> String {
    stderr(&s.admin(&["participants", "import", csv.to_str().unwrap()]))
}

#[test]
fn an_unreachable_server_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("operator.key");
    ParticipantKey::generate_to(&key).unwrap();
    // Port 1 on loopback: nothing listens there.
    let out = admin("http://127.0.0.1:1", &key, &["market", "status"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.starts_with("baton: error: cannot reach the server at http://127.0.0.1:1: "),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn a_wrong_key_or_a_missing_file_is_one_clear_line() {
    let s = spawn_serve();
    let other = s.dir.path().join("other.key");
    ParticipantKey::generate_to(&other).unwrap();
    let out = admin(&s.url(), &other, &["market", "status"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(
        e.trim_end(),
        format!(
            "baton: error: the server refused the operator key {} (is it the server's \
             --operator-key?): admin request signature does not verify with the operator key",
            other.display()
        )
    );
    let out = s.admin(&["network", "load", "/nonexistent/market.toml"]);
    assert_eq!(
        stderr(&out).trim_end(),
        "baton: error: reading /nonexistent/market.toml: No such file or directory (os error 2)"
    );
    let out = admin(
        &s.url(),
        &s.dir.path().join("none.key"),
        &["market", "status"],
    );
    let e = stderr(&out);
    assert!(
        e.starts_with("baton: error: loading the operator key: key file "),
        "{e}"
    );
    let out = s.admin(&["participants", "suspend", "nobody"]);
    assert_eq!(
        stderr(&out).trim_end(),
        "baton: error: NOT_FOUND: participant \"nobody\" not found"
    );
    // The key files the server generated are the ones `baton admin` reads.
    assert!(s
        .ok(&["market", "status"])
        .starts_with(&format!("{:21}  two-node\n", "market")));
}
