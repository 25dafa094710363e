//! `baton audit witness`: a regulator's witness following one ledger's servers over gRPC
//! (`baton.v1.AuditService`), and the half of `baton audit verify --checkpoint DIR` that reads
//! a witness's state. The checking, storing and cosigning is `baton_audit::witness`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use baton_audit::witness::{
    self, CheckpointSource, Outcome, RemoteConsistency, SourceError, Witness, WitnessError,
    WitnessState,
};
use baton_client::{AuditClient, ClientError, Code};
use baton_ledger::{Checkpoint, Hash, OperatorKey};

use super::audit::{hex_id, load_public_key};
use super::runtime;

/// Directory inside the state directory where a witness key is generated when `--witness-key`
/// is not given (as `baton keys generate` writes it: `operator.key`, `operator.pub`).
pub(crate) const GENERATED_KEY_DIR: &str = "witness-key";
/// The name cosignatures carry unless `--witness-name` is given.
pub(crate) const WITNESS_NAME_DEFAULT: &str = "baton-witness";

#[derive(clap::Args)]
pub(crate) struct WitnessArgs {
    /// A server of the witnessed ledger (`http://host:port`); repeat for several servers of
    /// one ledger, which must agree.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// The witness's state directory (`checkpoints/<size>.note`, `latest`).
    #[arg(long)]
    state: PathBuf,
    /// The operator's public key: hex, or a file holding it.
    #[arg(long)]
    operator_pubkey: String,
    /// The witness's private key (as `baton keys generate` writes it). Default: generated on
    /// first use in STATE/witness-key/.
    #[arg(long)]
    witness_key: Option<PathBuf>,
    /// The name on the witness's cosignature lines.
    #[arg(long, default_value = WITNESS_NAME_DEFAULT)]
    witness_name: String,
    /// Check the servers once and exit.
    #[arg(long, conflicts_with = "interval_ms")]
    once: bool,
    /// Check the servers every N milliseconds until a check fails.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
}

/// One server over gRPC.
struct GrpcSource {
    url: String,
    client: AuditClient,
}

fn source_error(e: ClientError) -> SourceError {
    match e {
        ClientError::Status {
            code: Code::NotFound,
            message,
        } => SourceError::NotFound(message),
        other => SourceError::Failed(other.to_string()),
    }
}

impl CheckpointSource for GrpcSource {
    fn name(&self) -> &str {
        &self.url
    }

    fn latest(&mut self) -> impl std::future::Future<Output = Result<String, SourceError>> + Send {
        let client = self.client.clone();
        async move {
            let head = client.head().await.map_err(source_error)?;
            if head.checkpoint.is_empty() {
                return Err(SourceError::Failed(
                    "the ledger has no checkpoint yet".into(),
                ));
            }
            Ok(head.checkpoint)
        }
    }

    fn consistency(
        &mut self,
        from: u64,
        to: u64,
    ) -> impl std::future::Future<Output = Result<RemoteConsistency, SourceError>> + Send {
        let client = self.client.clone();
        async move {
            let r = client
                .consistency_proof(from, to)
                .await
                .map_err(source_error)?;
            let path = r
                .path
                .iter()
                .map(|h| Hash::try_from(h.as_slice()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    SourceError::Failed("a consistency path hash is not 32 bytes".into())
                })?;
            Ok(RemoteConsistency {
                from_note: r.from_checkpoint,
                to_note: r.to_checkpoint,
                path,
            })
        }
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The witness key: `--witness-key`, or STATE/witness-key/operator.key (generated if missing).
fn witness_key(a: &WitnessArgs) -> Result<OperatorKey> {
    if let Some(p) = &a.witness_key {
        return OperatorKey::load(p)
            .with_context(|| format!("loading witness key {}", p.display()));
    }
    let dir = a.state.join(GENERATED_KEY_DIR);
    let file = dir.join(baton_ledger::key::OPERATOR_KEY_FILE);
    if file.exists() {
        return OperatorKey::load(&file)
            .with_context(|| format!("loading witness key {}", file.display()));
    }
    let key = OperatorKey::generate_to_dir(&dir)
        .with_context(|| format!("generating a witness key in {}", dir.display()))?;
    eprintln!(
        "baton: generated witness key {} (public key {}, key id {}) in {}",
        file.display(),
        key.public_key().to_hex(),
        hex_id(&key.public_key()),
        dir.display()
    );
    Ok(key)
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::First { checkpoint, path } => format!(
            "witnessed {checkpoint} (first checkpoint, trusted on first use); cosigned note {}",
            path.display()
        ),
        Outcome::Advanced {
            from,
            checkpoint,
            path,
        } => format!(
            "witnessed {checkpoint}, consistent with stored size {from}; cosigned note {}",
            path.display()
        ),
        Outcome::Unchanged { checkpoint } => format!("witnessed {checkpoint}: unchanged"),
    }
}

pub(crate) fn run(a: WitnessArgs) -> Result<()> {
    let operator = load_public_key(&a.operator_pubkey)?;
    let key = witness_key(&a)?;
    let witness = Witness::new(operator, key, &a.witness_name)?;
    runtime()?.block_on(async {
        let mut state = WitnessState::open(&a.state)?;
        let mut sources = Vec::with_capacity(a.servers.len());
        for url in &a.servers {
            let channel =
                baton_client::connect_lazy(url).with_context(|| format!("server {url}"))?;
            sources.push(GrpcSource {
                url: url.clone(),
                client: AuditClient::new(channel),
            });
        }
        loop {
            match witness
                .witness_once(&mut state, &mut sources, now_s())
                .await
            {
                Ok(o) => println!("{}", describe(&o)),
                // A server that cannot be reached is retried when following; anything else
                // the witness saw is a refusal and ends it.
                Err(e @ WitnessError::Source { .. }) if !a.once => {
                    eprintln!("baton: witness: {e}; retrying in {} ms", a.interval_ms);
                }
                Err(e) => bail!("witness refused: {e}"),
            }
            if a.once {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        }
    })
}

/// The checkpoints a witness stored in `dir`, for `baton audit verify --checkpoint DIR`; each
/// must carry a valid cosignature by `witness_pubkey` when given.
pub(crate) fn stored_checkpoints(
    dir: &Path,
    witness_pubkey: Option<&str>,
) -> Result<Vec<Checkpoint>> {
    let stored = witness::stored_checkpoints(dir)?;
    if stored.is_empty() {
        bail!("witness state {} holds no checkpoint", dir.display());
    }
    if let Some(k) = witness_pubkey {
        let key = load_public_key(k)?;
        for s in &stored {
            s.verify_cosignature(&key)?;
        }
    }
    Ok(stored.into_iter().map(|s| s.checkpoint).collect())
}
