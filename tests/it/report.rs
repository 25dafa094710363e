//! `baton report` on real SQLite ledgers: ledgers written by `baton clear --ledger` and by the
//! live market, summaries checked against the two-node market worked by hand, the HTML heat
//! map cell by cell, byte-identical reruns, the audit line, and hostile ids escaped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{baton, ok};
use baton_audit::summary::{self as report, IntervalStatus, Report};
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn scenario_text(name: &str) -> String {
    std::fs::read_to_string(support::scenario_path(name)).unwrap()
}

/// 2027-01-15 08:00 UTC, and the next interval.
const T1: i64 = support::T0;
const T2: i64 = T1 + 300;

/// A ledger in `dir` with `scenario` (TOML text) cleared at each of `starts`; its URL and the
/// operator's public key file.
fn ledger(dir: &Path, scenario: &str, starts: &[i64]) -> (String, PathBuf) {
    let keys = dir.join("keys");
    ok(&["keys", "generate", "--out", keys.to_str().unwrap()]);
    let market = dir.join("market.toml");
    std::fs::write(&market, scenario).unwrap();
    let db = format!("sqlite://{}", dir.join("ledger.db").display());
    for t in starts {
        ok(&[
            "clear",
            market.to_str().unwrap(),
            "--ledger",
            &db,
            "--operator-key",
            keys.join("operator.key").to_str().unwrap(),
            "--interval-start",
            &t.to_string(),
            "--out",
            dir.join("result.json").to_str().unwrap(),
        ]);
    }
    (db, keys.join("operator.pub"))
}

/// The fill colour of the heat-map cell of `node` at interval `t`.
fn cell_fill(html: &str, node: &str, t: i64) -> String {
    let at = html
        .find(&format!("data-node=\"{node}\" data-interval=\"{t}\""))
        .unwrap_or_else(|| panic!("no cell for {node} at {t}"));
    let rest = &html[at..];
    let end = rest.find('>').unwrap();
    let fill = rest[..end].split("fill=\"").nth(1).expect("a fill");
    fill[..fill.find('"').unwrap()].to_string()
}

fn read(db: &str) -> Report {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(report::read(db))
        .unwrap()
}

/// The two-node market as its comments work it out: the cable A→B (60 kW) is congested, so
/// λA = 0.30 (the grid's import price: solar 40 kW + grid 20 kW feed the cable) and
/// λB = 0.35 (the shops' partially served 0.35 block). P2P: solar-A's 40 kW to shops-B across the
/// cable, battery-B's 10 kW to bakery-B at B: 50 kW, i.e. 50 × 5/60 = 4.1666… → 4.166667 kWh.
/// The grid's 20 kW: 20 × 5/60 = 1.666667 kWh. The flexibility requirement goes unmet at its
/// 0.20 cap. Welfare per hour: buys 45 × 0.45 + 5 × 0.35 + 20 × 10 (the bakery's must-take
/// block at the price cap) = 222.0, sells 40 × 0.04 + 10 × 0.12 + 20 × 0.30 = 8.8: 213.2.
#[test]
fn summaries_match_the_hand_worked_two_node_market() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = ledger(dir.path(), &scenario_text("two-node.toml"), &[T1, T2]);
    let r = read(&db);
    assert_eq!(r.intervals.len(), 2);
    for (s, t) in r.intervals.iter().zip([T1, T2]) {
        assert_eq!(s.interval_start, t);
        assert_eq!(s.status, IntervalStatus::Cleared);
        assert_eq!(s.market, "two-node");
        assert_eq!(s.interval_minutes, 5);
        assert_eq!(s.orders, 4);
        assert_eq!(s.p2p_kw, d("50"));
        assert_eq!(s.grid_import_kw, d("20"));
        assert_eq!(s.grid_export_kw, d("0"));
        assert_eq!(s.p2p_volume_kwh.to_string(), "4.166667");
        assert_eq!(s.grid_import_kwh.to_string(), "1.666667");
        assert_eq!(s.grid_export_kwh, d("0"));
        let (min, max) = (s.price_min.as_ref().unwrap(), s.price_max.as_ref().unwrap());
        assert_eq!(
            (min.price, min.nodes.clone()),
            (d("0.30"), vec!["A".into()])
        );
        assert_eq!(
            (max.price, max.nodes.clone()),
            (d("0.35"), vec!["B".into()])
        );
        assert_eq!(s.congested_lines, ["A-B"]);
        assert_eq!(s.flex.len(), 1);
        assert_eq!(s.flex[0].requirement, "evening-B");
        assert_eq!(s.flex[0].price, d("0.20"));
        assert_eq!(s.flex[0].procured_kw, d("0"));
        assert_eq!(s.flex_procured_kw, d("0"));
        assert_eq!(s.flex_cost.to_string(), "0.00");
        assert_eq!(s.welfare, d("213.2"));
    }
    let t = &r.totals;
    assert_eq!((t.intervals, t.not_cleared, t.orders), (2, 0, 8));
    // Summed exactly in kW·min, rounded once: 100 × 5 / 60 and 40 × 5 / 60.
    assert_eq!(t.p2p_volume_kwh.to_string(), "8.333333");
    assert_eq!(t.grid_import_kwh.to_string(), "3.333333");
    assert_eq!(
        (t.price_min, t.price_max),
        (Some(d("0.30")), Some(d("0.35")))
    );
    assert_eq!(t.congested_lines.len(), 1);
    assert_eq!(t.congested_lines[0].line, "A-B");
    assert_eq!(t.congested_lines[0].intervals, [T1, T2]);
    assert_eq!(r.facts.markets, ["two-node"]);
    assert_eq!((r.facts.nodes, r.facts.lines), (2, 1));
    assert_eq!(r.facts.grid_connections, 1);
    assert_eq!(r.facts.participants, 4);
    assert_eq!(r.facts.ledger_entries, 8);
    assert_eq!(r.facts.checkpoint_size, Some(8));
    assert_eq!((r.units.power, r.units.energy), ("kW", "kWh"));

    // The text table as the binary prints it.
    let text = ok(&["report", "--db", &db]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "market: two-node");
    assert_eq!(
        lines[1],
        "2 interval(s), 2027-01-15 08:00 to 08:05 UTC (5 min); ledger 8 entries"
    );
    for l in &lines {
        assert!(l.chars().count() <= 100, "wider than 100: {l:?}");
    }
    let row = |label: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label}: {text}"))
            .split_whitespace()
            .collect()
    };
    let interval = [
        "4",
        "4.167",
        "1.667",
        "0.000",
        "0.30..0.35",
        "1",
        "A-B",
        "0.000",
    ];
    assert_eq!(row("08:00")[1..], interval);
    assert_eq!(row("08:05")[1..], interval);
    assert_eq!(
        row("total")[1..],
        [
            "8",
            "8.333",
            "3.333",
            "0.000",
            "0.30..0.35",
            "1",
            "A-B",
            "0.000"
        ]
    );
    // Aligned: header, rows and totals end in the same column (the last is right-aligned).
    let table = &lines[2..6];
    assert!(table[0].starts_with("time"), "{text}");
    let width = table[0].chars().count();
    for l in table {
        assert_eq!(l.chars().count(), width, "{text}");
    }
    assert!(text.contains("flexibility paid in total: 0.00"), "{text}");

    // The JSON carries the same numbers as exact decimal strings.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["report", "--db", &db, "--json"])).expect("--json prints JSON");
    assert_eq!(json["intervals"][0]["p2p_volume_kwh"], "4.166667");
    assert_eq!(json["intervals"][1]["price_max"]["price"], "0.350000");
    assert_eq!(json["totals"]["grid_import_kwh"], "3.333333");
    assert_eq!(json["audit"], serde_json::Value::Null);
}

#[test]
fn html_has_a_priced_cell_per_node_and_interval_and_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let (db, public) = ledger(dir.path(), &scenario_text("two-node.toml"), &[T1, T2]);
    let out = dir.path().join("report.html");
    let stdout = ok(&[
        "report",
        "--db",
        &db,
        "--html",
        out.to_str().unwrap(),
        "--operator-pub",
        public.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains(
            "audit passed: ledger verified (8 entries, 2 checkpoints, 0 participant signatures, \
12 postings); 2 interval(s) re-cleared exactly"
        ),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(
        html.matches("<rect class=\"cell\"").count(),
        4,
        "2 nodes × 2 intervals"
    );
    for (node, price, shown) in [("A", "0.300000", "0.30"), ("B", "0.350000", "0.35")] {
        for (t, hhmm) in [(T1, "08:00"), (T2, "08:05")] {
            let cell = format!("data-node=\"{node}\" data-interval=\"{t}\" data-price=\"{price}\"");
            assert_eq!(html.matches(&cell).count(), 1, "{cell}");
            let tip = format!("<title>{node}, 2027-01-15 {hhmm} UTC: {shown} per kWh</title>");
            assert_eq!(html.matches(&tip).count(), 1, "{tip}");
        }
    }
    // The colour scale: the cheapest node at the low end, the dearest at the high end, and a
    // legend from 0.30 to 0.35.
    for t in [T1, T2] {
        assert_eq!(cell_fill(&html, "A", t), "#2c7bb6");
        assert_eq!(cell_fill(&html, "B", t), "#d7191c");
    }
    assert!(html.contains("<text x=\"0\" y=\"32\">0.30</text>"));
    assert!(html.contains("<text x=\"256\" y=\"32\">0.35</text>"));
    // Energy bars, the congested-lines table and the audit line.
    assert!(html.contains("<title>2027-01-15 08:05 UTC: P2P 4.166667 kWh</title>"));
    assert!(html.contains("<title>2027-01-15 08:00 UTC: grid import 1.666667 kWh</title>"));
    assert!(html
        .contains("<tr><td class=\"l\">A-B</td><td>2</td><td class=\"l\">08:00, 08:05</td></tr>"));
    assert!(html.contains("<p class=\"audit ok\">Audit passed: ledger verified (8 entries"));
    // The feeder drawing: both nodes, the line, and its control.
    assert!(html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"feeder\""));
    assert_eq!(html.matches("<circle class=\"nd").count(), 2);
    assert!(html.contains("data-line=\"A-B\""));
    assert!(html.contains("id=\"feeder-step\" min=\"0\" max=\"1\" value=\"1\""));
    // Self-contained: nothing is fetched; the one script is inline (no attributes, so no src).
    assert_eq!(html.matches("<script").count(), 1);
    assert_eq!(html.matches("<script>").count(), 1);
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for banned in [
        "http:", "https:", "src=", "<link", "@import", "url(", "<iframe",
    ] {
        assert!(
            !without_ns.contains(banned),
            "the report contains {banned:?}"
        );
    }
}

#[test]
fn the_same_ledger_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, public) = ledger(dir.path(), &scenario_text("two-node.toml"), &[T1, T2]);
    let run = |name: &str| {
        let out = dir.path().join(name);
        let stdout = ok(&[
            "report",
            "--db",
            &db,
            "--html",
            out.to_str().unwrap(),
            "--operator-pub",
            public.to_str().unwrap(),
        ]);
        (stdout, std::fs::read(&out).unwrap())
    };
    let (text1, html1) = run("a.html");
    let (text2, html2) = run("b.html");
    assert_eq!(text1, text2);
    assert!(html1 == html2, "the HTML differs between two runs");
    assert!(html1.len() > 4_000, "a real report, {} bytes", html1.len());
    assert_eq!(
        ok(&["report", "--db", &db, "--json"]),
        ok(&["report", "--db", &db, "--json"])
    );
}

/// Flexibility: a heat pump at B offers 15 kW up at 0.05 besides the battery. The battery's
/// kW earns 0.23 as energy, so the requirement's 10 kW come from the heat pump, which stays
/// marginal (5 kW unused) and sets the price: 0.05. Paid 0.05 × 10 kW × 5/60 h = 0.041666… →
/// 0.04. Energy is untouched (P2P 50 kW, import 20 kW).
#[test]
fn flexibility_procured_and_paid_is_reported_and_a_failed_audit_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario_text("two-node.toml").replace(
        "flex_offers = [\n",
        "flex_offers = [\n  { id = \"heat-pump-B-flex\", participant = \"erin\", node = \"B\", \
direction = \"up\", blocks = [{ quantity = \"15\", price = \"0.05\" }] },\n",
    );
    let (db, _) = ledger(dir.path(), &scenario, &[T1]);
    let r = read(&db);
    let s = &r.intervals[0];
    assert_eq!(s.flex.len(), 1);
    assert_eq!(s.flex[0].price, d("0.05"));
    assert_eq!(s.flex[0].procured_kw, d("10"));
    assert_eq!(s.flex_procured_kw, d("10"));
    assert_eq!(s.flex_cost.to_string(), "0.04");
    assert_eq!((s.p2p_kw, s.grid_import_kw), (d("50"), d("20")));
    assert_eq!(r.totals.flex_cost.to_string(), "0.04");
    assert_eq!(r.totals.flex_procured_kw_peak, d("10"));

    // Audited against another operator's key: the report is still written, says FAILED, and
    // the command fails.
    let other = dir.path().join("other");
    ok(&["keys", "generate", "--out", other.to_str().unwrap()]);
    let out = dir.path().join("report.html");
    let run = baton(&[
        "report",
        "--db",
        &db,
        "--html",
        out.to_str().unwrap(),
        "--operator-pub",
        other.join("operator.pub").to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("audit failed: verification failed"),
        "{stderr}"
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<p class=\"audit fail\">Audit FAILED: verification failed"));
    assert!(html.contains("Requested in 1 interval(s), procured in 1; paid 0.04 in total."));
    assert!(html.contains("evening-B: 10.000000 kW at 0.05"), "{html}");
}

/// Ids are the participants' and the operator's free text: in the HTML they must stay text.
#[test]
fn hostile_ids_are_escaped_in_the_html() {
    let dir = tempfile::tempdir().unwrap();
    let node = "B<script>alert(1)</script>";
    let scenario = scenario_text("two-node.toml")
        .replace("\"B\"", &format!("\"{node}\""))
        .replace("\"A-B\"", "\"A-B</title><script>alert(2)</script>\"")
        .replace("\"two-node\"", "\"two-node<img src=x onerror=alert(3)>\"")
        .replace(
            "\"evening-B\"",
            "\"evening-B\\\"><script>alert(4)</script>\"",
        )
        .replace("\"bob\"", "\"<script>alert(5)</script>&bob\"");
    assert!(scenario.contains(node));
    let (db, _) = ledger(dir.path(), &scenario, &[T1]);
    let out = dir.path().join("report.html");
    let text = ok(&["report", "--db", &db, "--html", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(&out).unwrap();
    for raw in ["<script>alert", "<img", "</title><script", "\"><script"] {
        assert!(!html.contains(raw), "raw {raw:?} in the HTML");
    }
    // The feeder's script is the only one, and the ids in its data cannot close it.
    assert_eq!(html.matches("<script").count(), 1);
    assert_eq!(html.matches("</script>").count(), 1);
    assert!(html.contains("data-node=\"B&lt;script&gt;alert(1)&lt;/script&gt;\""));
    assert!(html.contains(
        "<title>B&lt;script&gt;alert(1)&lt;/script&gt;, 2027-01-15 08:00 UTC: 0.35 per kWh</title>"
    ));
    assert!(html
        .contains("<td class=\"l\">A-B&lt;/title&gt;&lt;script&gt;alert(2)&lt;/script&gt;</td>"));
    assert!(html.contains(
        "<title>Baton market report: two-node&lt;img src=x onerror=alert(3)&gt;</title>"
    ));
    assert!(html
        .contains("evening-B&quot;&gt;&lt;script&gt;alert(4)&lt;/script&gt;: 0.000000 kW at 0.20"));
    // The text summary is for a terminal: the ids are shown as they are (cut to the column,
    // with an ellipsis).
    assert!(text.contains("1 A-B</title><script>alert…"), "{text}");
}

mod live {
    //! A ledger written by the live market (`baton serve`'s scheduler), plus the
    //! `interval_not_cleared` event it records when the engine refuses a book.

    use super::*;
    use baton_ledger::{EntryKind, Ledger, NewEntry};
    use baton_proto::v1 as pb;
    use ed25519_dalek::SigningKey;
    use pb::admin_request::Command as AdminCommand;
    use pb::admin_service_client::AdminServiceClient;
    use pb::market_service_client::MarketServiceClient;
    use support::{INTERVAL_S, T0};

    /// Real seconds to wait for the first gate.
    const RESULT_WAIT_S: u64 = 30;

    fn admin(nonce: u64, command: AdminCommand) -> pb::SignedAdminRequest {
        support::admin_request(nonce, command)
    }

    fn signed(
        key: &SigningKey,
        participant: &str,
        node: &str,
        side: pb::Side,
        blocks: &[(&str, &str)],
    ) -> pb::SignedOrder {
        let order = pb::Order {
            participant_id: participant.into(),
            nonce: 1,
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
            product: pb::Product::Energy as i32,
        };
        support::sign_order(key, &order)
    }

    /// Alice sells 40 kW at A, Bob buys 50 + 20 kW at B; the gate of T0 + 300 closes about
    /// four real seconds after start (60× market time). As in the two-node market, the cable
    /// carries 60 kW: alice's 40 (P2P) and the grid's 20, and prices are 0.30 at A and 0.35 at
    /// B. Then an `interval_not_cleared` event is recorded for a later interval.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_market_intervals_and_refused_books_are_reported() {
        let live = support::TempLedger::sqlite();
        let db = live.url.clone();
        let mut config = support::config(&db);
        config.clock = support::clock(60.0);
        config.scenario = Some(scenario_text("two-node.toml"));
        let mut server = support::Server::start(config).await;
        let channel = server.connect().await;
        let mut market = MarketServiceClient::new(channel.clone());
        let mut admin_client = AdminServiceClient::new(channel);
        let (alice, bob) = (support::key(1), support::key(2));
        for (nonce, (id, key, node, cap)) in
            [("alice", &alice, "A", "50"), ("bob", &bob, "B", "100")]
                .into_iter()
                .enumerate()
        {
            let r = admin(
                nonce as u64 + 1,
                AdminCommand::RegisterParticipant(pb::RegisterParticipant {
                    participant_id: id.into(),
                    public_key_hex: hex::encode(key.verifying_key().to_bytes()),
                    node: node.into(),
                    roles: vec!["prosumer".into()],
                    capacity_kw: cap.into(),
                    ..Default::default()
                }),
            );
            admin_client.register_participant(r).await.unwrap();
        }
        let mut results = market
            .watch_results(pb::WatchResultsRequest {})
            .await
            .unwrap()
            .into_inner();
        market
            .submit_order(signed(
                &alice,
                "alice",
                "A",
                pb::Side::Sell,
                &[("40", "0.04")],
            ))
            .await
            .unwrap();
        market
            .submit_order(signed(
                &bob,
                "bob",
                "B",
                pb::Side::Buy,
                &[("50", "0.45"), ("20", "0.35")],
            ))
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(RESULT_WAIT_S), results.message())
            .await
            .expect("a result within the wait")
            .unwrap()
            .expect("a result");
        assert_eq!(result.interval_start, T0 + INTERVAL_S);
        server.stop().await;

        // What the scheduler writes when the engine refuses a book, for a later interval.
        let refused_at = T0 + 20 * INTERVAL_S;
        let ledger = Ledger::open(&db)
            .await
            .unwrap()
            .with_operator(support::operator(), "baton/test")
            .unwrap();
        let body = serde_json::json!({
            "event": "interval_not_cleared",
            "interval_start": refused_at,
            "reason": "order \"x\": blocks[0].quantity is zero",
        });
        ledger
            .append(vec![NewEntry::new(
                EntryKind::MarketEvent,
                Some(refused_at),
                body.to_string().into_bytes(),
            )])
            .await
            .unwrap();
        ledger.close().await;

        let r = report::read(&db).await.unwrap();
        let s = r
            .intervals
            .iter()
            .find(|s| s.interval_start == T0 + INTERVAL_S)
            .expect("the cleared interval is reported");
        assert_eq!(s.status, IntervalStatus::Cleared);
        assert_eq!(s.orders, 2);
        assert_eq!((s.p2p_kw, s.grid_import_kw), (d("40"), d("20")));
        // 40 × 5/60 and 20 × 5/60 kWh.
        assert_eq!(s.p2p_volume_kwh.to_string(), "3.333333");
        assert_eq!(s.grid_import_kwh.to_string(), "1.666667");
        assert_eq!(s.price_min.as_ref().unwrap().price, d("0.30"));
        assert_eq!(s.price_max.as_ref().unwrap().price, d("0.35"));
        assert_eq!(s.congested_lines, ["A-B"]);
        let last = r.intervals.last().unwrap();
        assert_eq!(last.interval_start, refused_at);
        assert_eq!(
            last.status,
            IntervalStatus::NotCleared {
                reason: "order \"x\": blocks[0].quantity is zero".into()
            }
        );
        assert_eq!(r.totals.not_cleared, 1);
        let text = baton_report::text(&r);
        assert!(
            text.contains("not cleared: order \"x\": blocks[0].quantity is zero"),
            "{text}"
        );
        assert!(text.contains("1 interval(s) not cleared"), "{text}");
        let html = baton_report::html(&r, None);
        assert!(html.contains("not cleared: order &quot;x&quot;: blocks[0].quantity is zero"));
        assert!(html.contains("<p class=\"audit none\">Audit: not run"));
    }
}
