//! Test databases and fixtures.

use baton_ledger::entry::EntryKind;
use baton_ledger::{
    Amount, Ledger, NewEntry, OperatorKey, ParticipantBody, ParticipantStatus, Posting,
    SettlementBody, SignedMessageBody,
};
use ed25519_dalek::{Signer, SigningKey};
use sqlx::AssertSqlSafe;

/// Env var naming the PostgreSQL server for tests.
pub(crate) const PG_ENV: &str = "BATON_TEST_POSTGRES_URL";
/// Checkpoint origin used by every test.
pub(crate) const ORIGIN: &str = "baton.test/ledger";

/// The PostgreSQL server to test against: `PG_ENV`, where empty (as `VAR= ./.ci/test` leaves
/// it) means unset.
pub(crate) fn postgres_base_url() -> Option<String> {
    std::env::var(PG_ENV).ok().filter(|u| !u.trim().is_empty())
}

/// Runs `$name(&TestDb)` once per backend.
#[macro_export]
macro_rules! dual {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::common::TestDb::sqlite().await;
                super::$name(&db).await;
                db.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::common::TestDb::postgres().await else {
                    return;
                };
                super::$name(&db).await;
                db.cleanup().await;
            }
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

fn random_suffix() -> String {
    let b: [u8; 6] = rand::random();
    hex::encode(b)
}

impl TestDb {
    pub(crate) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            pg: None,
        }
    }

    pub(crate) async fn postgres() -> Option<TestDb> {
        let Some(base) = postgres_base_url() else {
            // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
            // and a skipped backend must not pass silently.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {PG_ENV} unset or empty \u{2014} PostgreSQL ledger tests did not run"
            );
            return None;
        };
        let schema = format!("t_{}", random_suffix());
        let c = sqlx::PgPool::connect(&base)
            .await
            .expect("connect to postgres");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&c)
            .await
            .unwrap();
        c.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            _dir: None,
            pg: Some((base, schema)),
        })
    }

    pub(crate) async fn cleanup(&self) {
        if let Some((base, schema)) = &self.pg {
            if let Ok(c) = sqlx::PgPool::connect(base).await {
                let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&c)
                    .await;
                c.close().await;
            }
        }
    }

    /// Runs raw SQL statements behind the ledger's back, one at a time.
    pub(crate) async fn raw(&self, statements: &[&str]) -> Result<(), sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let p = sqlx::SqlitePool::connect(&self.url).await?;
                for s in statements {
                    sqlx::query(AssertSqlSafe(s.to_string()))
                        .execute(&p)
                        .await?;
                }
                p.close().await;
            }
            Backend::Postgres => {
                let p = sqlx::PgPool::connect(&self.url).await?;
                for s in statements {
                    sqlx::query(AssertSqlSafe(s.to_string()))
                        .execute(&p)
                        .await?;
                }
                p.close().await;
            }
        }
        Ok(())
    }

    /// A blob literal for raw SQL.
    pub(crate) fn blob(&self, bytes: &[u8]) -> String {
        match self.backend {
            Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
            Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        }
    }

    /// Drops the append-only triggers, as an attacker with file or owner access would.
    pub(crate) async fn drop_triggers(&self) {
        match self.backend {
            Backend::Sqlite => {
                let mut v = Vec::new();
                for t in ["entries", "postings", "checkpoints"] {
                    for op in ["update", "delete"] {
                        v.push(format!("DROP TRIGGER {t}_no_{op}"));
                    }
                }
                let refs: Vec<&str> = v.iter().map(String::as_str).collect();
                self.raw(&refs).await.unwrap();
            }
            Backend::Postgres => {
                let mut v = Vec::new();
                for t in ["entries", "postings", "checkpoints"] {
                    v.push(format!("DROP TRIGGER {t}_append_only ON {t}"));
                    v.push(format!("DROP TRIGGER {t}_no_truncate ON {t}"));
                }
                let refs: Vec<&str> = v.iter().map(String::as_str).collect();
                self.raw(&refs).await.unwrap();
            }
        }
    }
}

pub(crate) fn operator() -> OperatorKey {
    OperatorKey::from_seed(&[1; 32])
}

pub(crate) async fn writer(url: &str) -> Ledger {
    Ledger::open(url)
        .await
        .unwrap()
        .with_operator(operator(), ORIGIN)
        .unwrap()
}

/// A market participant with its own signing key.
pub(crate) struct Participant {
    pub(crate) id: String,
    pub(crate) key: SigningKey,
}

impl Participant {
    pub(crate) fn new(n: u8) -> Self {
        Participant {
            id: format!("p{n}"),
            key: SigningKey::from_bytes(&[100 + n; 32]),
        }
    }

    pub(crate) fn admit(&self) -> NewEntry {
        NewEntry::participant(&ParticipantBody {
            details: Some(serde_json::json!({"node": "n1"})),
            participant_id: self.id.clone(),
            public_key: self.key.verifying_key().to_bytes(),
            status: ParticipantStatus::Active,
        })
    }

    pub(crate) fn suspend(&self) -> NewEntry {
        NewEntry::participant(&ParticipantBody {
            details: None,
            participant_id: self.id.clone(),
            public_key: self.key.verifying_key().to_bytes(),
            status: ParticipantStatus::Suspended,
        })
    }

    pub(crate) fn signed(&self, i: u64) -> SignedMessageBody {
        let payload = format!(
            r#"{{"order_id":"{}-{i}","node":"n1","side":"buy","price":"42.00","qty":"1.5"}}"#,
            self.id
        )
        .into_bytes();
        SignedMessageBody {
            order_id: Some(format!("{}-{i}", self.id)),
            participant_id: self.id.clone(),
            signature: self.key.sign(&payload).to_bytes(),
            payload,
        }
    }

    pub(crate) fn order(&self, i: u64) -> NewEntry {
        NewEntry::order(None, &self.signed(i))
    }
}

/// Settlement with two postings that cancel.
pub(crate) fn settlement(interval_start: i64, pair: u64, cents: i64) -> NewEntry {
    NewEntry::settlement(&SettlementBody {
        interval_start,
        postings: vec![
            Posting {
                account: format!("participant:p{}", pair % 5),
                amount: Amount::from_minor(cents),
                memo: None,
            },
            Posting {
                account: "operator:clearing".into(),
                amount: Amount::from_minor(-cents),
                memo: Some(format!("pair {pair}")),
            },
        ],
    })
}

/// An interval as the operator records it: input, result, `settlements` settlement entries.
pub(crate) fn interval_batch(interval_start: i64, settlements: u64) -> Vec<NewEntry> {
    let mut v = vec![
        NewEntry::new(
            EntryKind::IntervalInput,
            Some(interval_start),
            format!("book of {interval_start}").into_bytes(),
        ),
        NewEntry::new(
            EntryKind::IntervalResult,
            Some(interval_start),
            format!("result of {interval_start}").into_bytes(),
        ),
    ];
    for i in 0..settlements {
        v.push(settlement(interval_start, i, 100 + i as i64));
    }
    v
}

/// The standard 18-entry ledger used by the tamper tests:
///
/// | seq   | what                                | batch / checkpoint |
/// |-------|-------------------------------------|--------------------|
/// | 1–2   | participants p1, p2                 | 1 → size 6         |
/// | 3–6   | orders p1-0, p2-1, p1-2, p2-3       | 1                  |
/// | 7–10  | interval 300: input, result, 2 settlements (1.00, 1.01) | 2 → size 10 |
/// | 11–14 | orders                              | 3 → size 14        |
/// | 15–18 | interval 600: input, result, 2 settlements | 4 → size 18 |
pub(crate) async fn standard_ledger(url: &str) -> Ledger {
    let l = writer(url).await;
    let (p1, p2) = (Participant::new(1), Participant::new(2));
    let mut b1 = vec![p1.admit(), p2.admit()];
    for i in 0..4 {
        b1.push(if i % 2 == 0 { p1.order(i) } else { p2.order(i) });
    }
    l.append(b1).await.unwrap();
    l.append(interval_batch(300, 2)).await.unwrap();
    let b3 = (4..8)
        .map(|i| if i % 2 == 0 { p1.order(i) } else { p2.order(i) })
        .collect();
    l.append(b3).await.unwrap();
    let r = l.append(interval_batch(600, 2)).await.unwrap();
    assert_eq!(r.last_seq, 18);
    l
}

/// Regression (grpcio findings): an empty `BATON_TEST_POSTGRES_URL` (as `VAR= ./.ci/test`
/// leaves it) was taken as a URL and the PostgreSQL tests failed instead of skipping loudly.
/// Runs one PostgreSQL test of this binary in a child with the variable empty.
#[test]
fn an_empty_postgres_url_skips_loudly() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "append::round_trip::postgres",
            "--test-threads=1",
        ])
        .env(PG_ENV, "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child failed: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("SKIPPED"), "no skip notice: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the test did not run: {stdout}"
    );
}
