//! `baton report`: the per-interval summary of a ledger and its HTML market report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baton_ledger::audit;
use baton_report::AuditStatus;

/// `baton report` options.
#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// Ledger URL: `sqlite://PATH` or `postgres://…`.
    #[arg(long)]
    db: String,
    /// The operator's public key (hex, or a file holding it). When given, the ledger is also
    /// verified and every interval re-cleared, and the outcome goes into the report; the
    /// command fails if either check does.
    #[arg(long)]
    operator_pub: Option<String>,
    /// Also write the HTML market report (one self-contained file) here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print the summaries as JSON instead of the text table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ReportArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let r = rt
        .block_on(baton_audit::summary::read(&args.db))
        .with_context(|| format!("reporting on {}", args.db))?;
    let audit = match &args.operator_pub {
        Some(key) => Some(rt.block_on(audit_ledger(&args.db, key))?),
        None => None,
    };
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        v["audit"] = match &audit {
            Some(a) => serde_json::json!({ "passed": a.passed, "text": a.text }),
            None => serde_json::Value::Null,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", baton_report::text(&r));
        if let Some(a) = &audit {
            println!(
                "audit {}: {}",
                if a.passed { "passed" } else { "FAILED" },
                a.text
            );
        }
    }
    if let Some(path) = &args.html {
        std::fs::write(path, baton_report::html(&r, audit.as_ref()))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("baton: wrote the market report to {}", path.display());
    }
    if let Some(a) = audit.filter(|a| !a.passed) {
        bail!("audit failed: {}", a.text);
    }
    Ok(())
}

/// Runs what `baton audit verify` and `baton audit reclear` run, and says what they found. A
/// failing check is an outcome to report, not an error; only an unreadable key is.
async fn audit_ledger(db: &str, key: &str) -> Result<AuditStatus> {
    let key = super::audit::load_public_key(key)?;
    let verified = match audit::verify(db, &key, None).await {
        Ok(v) => v,
        Err(failure) => {
            return Ok(AuditStatus {
                passed: false,
                text: format!("verification failed: {failure}"),
            })
        }
    };
    let checked = format!(
        "ledger verified ({} entries, {} checkpoints, {} participant signatures, {} postings)",
        verified.entries, verified.checkpoints, verified.participant_signatures, verified.postings
    );
    let text = match baton_audit::reclear_ledger(db, None).await {
        Ok(done) => format!("{checked}; {} interval(s) re-cleared exactly", done.len()),
        Err(e) => {
            return Ok(AuditStatus {
                passed: false,
                text: format!("{checked}; re-clear failed: {e:#}"),
            })
        }
    };
    Ok(AuditStatus { passed: true, text })
}
