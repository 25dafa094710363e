//! The operator's and regulator's ledger commands end to end, on a real SQLite file and (when
//! `BATON_TEST_POSTGRES_URL` is set) a real PostgreSQL server: clear into the ledger, verify,
//! re-clear, prove; then tamper behind the program's back and watch the audit name it.

use std::path::Path;

use crate::{fails, ok};
use sqlx::AssertSqlSafe;

fn scenario(name: &str) -> String {
    support::scenario_path(name).display().to_string()
}

/// Records two intervals and runs every regulator command on them.
fn record_and_audit(db: &str, dir: &Path) -> String {
    let keys = dir.join("keys");
    ok(&["keys", "generate", "--out", keys.to_str().unwrap()]);
    let key = keys.join("operator.key");
    let public = keys.join("operator.pub");
    for (s, t) in [
        ("ieee33-feeder.toml", "1800000000"),
        ("two-node.toml", "1800000300"),
    ] {
        ok(&[
            "clear",
            &scenario(s),
            "--ledger",
            db,
            "--operator-key",
            key.to_str().unwrap(),
            "--interval-start",
            t,
        ]);
    }
    // The same interval twice is refused.
    let err = fails(&[
        "clear",
        &scenario("two-node.toml"),
        "--ledger",
        db,
        "--operator-key",
        key.to_str().unwrap(),
        "--interval-start",
        "1800000300",
    ]);
    assert!(err.contains("already recorded"), "{err}");

    let pubkey = public.to_str().unwrap();
    let v = ok(&["audit", "verify", "--db", db, "--operator-pubkey", pubkey]);
    assert!(
        v.starts_with("ledger verified: 8 entries, 2 intervals, 2 checkpoints"),
        "{v}"
    );
    let r = ok(&["audit", "reclear", "--db", db]);
    assert!(
        r.contains("reclear: 2 interval(s) reproduced exactly"),
        "{r}"
    );
    let proof = ok(&["audit", "prove", "--db", db, "--seq", "7"]);
    let proof_path = dir.join("proof.json");
    std::fs::write(&proof_path, &proof).unwrap();
    let c = ok(&[
        "audit",
        "check-proof",
        proof_path.to_str().unwrap(),
        "--operator-pubkey",
        pubkey,
    ]);
    assert!(c.contains("entry 7 (interval_result) is included"), "{c}");
    // A proof checked against another operator's key fails.
    let other = dir.join("other");
    ok(&["keys", "generate", "--out", other.to_str().unwrap()]);
    let e = fails(&[
        "audit",
        "check-proof",
        proof_path.to_str().unwrap(),
        "--operator-pubkey",
        other.join("operator.pub").to_str().unwrap(),
    ]);
    assert!(e.contains("proof does not verify"), "{e}");
    let jsonl = ok(&["audit", "export", "--db", db, "--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 8);
    let csv = ok(&[
        "audit", "export", "--db", db, "--format", "csv", "--from", "6",
    ]);
    assert_eq!(csv.lines().count(), 4, "header + entries 6..=8");
    pubkey.to_string()
}

async fn raw(url: &str, statements: &[&str]) {
    if url.starts_with("sqlite:") {
        let p = sqlx::SqlitePool::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(AssertSqlSafe(s.to_string()))
                .execute(&p)
                .await
                .unwrap();
        }
        p.close().await;
    } else {
        let p = sqlx::PgPool::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(AssertSqlSafe(s.to_string()))
                .execute(&p)
                .await
                .unwrap();
        }
        p.close().await;
    }
}

fn tamper_then_audit(db: &str, pubkey: &str, drop_guards: &[&str], change: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut statements: Vec<&str> = drop_guards.to_vec();
    statements.push(change);
    rt.block_on(raw(db, &statements));
    let e = fails(&["audit", "verify", "--db", db, "--operator-pubkey", pubkey]);
    assert!(e.contains("verification failed: seq 7"), "{e}");
}

#[test]
fn clear_record_verify_reclear_prove_and_catch_tampering_on_sqlite() {
    let ledger = support::TempLedger::sqlite();
    let (db, dir) = (ledger.url.clone(), ledger.dir().unwrap());
    let pubkey = record_and_audit(&db, dir);
    // A regulator's copy altered behind the program's back: the result of interval 2 (seq 7)
    // rewritten to claim another price.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let triggers: Vec<String> = rt.block_on(async {
        let p = sqlx::SqlitePool::connect(&db).await.unwrap();
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                .fetch_all(&p)
                .await
                .unwrap();
        p.close().await;
        rows.into_iter()
            .map(|(n,)| format!("DROP TRIGGER {n}"))
            .collect()
    });
    let drops: Vec<&str> = triggers.iter().map(String::as_str).collect();
    tamper_then_audit(
        &db,
        &pubkey,
        &drops,
        "UPDATE entries SET body = CAST(REPLACE(CAST(body AS TEXT), '0.350000', '0.340000') AS BLOB) WHERE seq = 7",
    );
}

#[test]
fn clear_record_verify_reclear_prove_and_catch_tampering_on_postgres() {
    let Some(ledger) = support::TempLedger::postgres("the PostgreSQL audit CLI test") else {
        return;
    };
    let db = ledger.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pubkey = record_and_audit(&db, dir.path());
    let triggers: Vec<String> = rt.block_on(async {
        let p = sqlx::PgPool::connect(&db).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT tgname::text, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'entries%'",
        )
        .fetch_all(&p)
        .await
        .unwrap();
        p.close().await;
        rows.into_iter()
            .map(|(n, t)| format!("DROP TRIGGER {n} ON {t}"))
            .collect()
    });
    let drops: Vec<&str> = triggers.iter().map(String::as_str).collect();
    tamper_then_audit(
        &db,
        &pubkey,
        &drops,
        "UPDATE entries SET body = convert_to(replace(convert_from(body, 'UTF8'), '0.350000', '0.340000'), 'UTF8') WHERE seq = 7",
    );
}

#[test]
fn reclear_catches_an_operator_who_signed_a_wrong_price() {
    // The operator's own signatures are all valid, so verify passes; but the recorded result
    // is not what the recorded book clears to, and the regulator's re-clear says where.
    use baton_engine::{clear, scenario, settle, Market};
    use baton_ledger::{Ledger, OperatorKey};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let text = std::fs::read_to_string(scenario("two-node.toml")).unwrap();
    let spec = scenario::parse(&text).unwrap().market;
    let market = Market::new(&spec).unwrap();
    let (c, _) = clear(&market).unwrap();
    let s = settle(&market, &c);
    let mut entries = vec![baton_audit::record::operator_gate(1800000000, &spec)];
    entries.extend(
        baton_audit::record::interval_entries(1800000000, Some(&spec), false, &market, &c, &s)
            .unwrap(),
    );
    let forged = String::from_utf8(entries[2].body.clone())
        .unwrap()
        .replacen("\"lmp\":0.350000", "\"lmp\":0.450000", 1);
    entries[2].body = forged.into_bytes();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = OperatorKey::generate_to_dir(&keys).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = Ledger::open(&db)
            .await
            .unwrap()
            .with_operator(key, "test")
            .unwrap();
        l.append(entries).await.unwrap();
        l.close().await;
    });
    let pubkey = keys.join("operator.pub");
    ok(&[
        "audit",
        "verify",
        "--db",
        &db,
        "--operator-pubkey",
        pubkey.to_str().unwrap(),
    ]);
    let e = fails(&["audit", "reclear", "--db", &db]);
    assert!(
        e.contains("interval 1800000000: result differs from the recording at byte")
            && e.contains(r#"recorded "{\"id\":\"B\",\"lmp\":0.4"#)
            && e.contains(r#"but re-cleared "{\"id\":\"B\",\"lmp\":0.3"#),
        "{e}"
    );
}
