//! A regulator's witness: follows the operator's signed checkpoints, checks that each new one
//! extends the last one it stored (an RFC 9162 consistency proof), stores it, and cosigns it
//! with its own key.
//!
//! An operator holding the key can rewrite history and re-sign every checkpoint, and the
//! rewritten ledger verifies on its own. A witness remembers what was signed before: a
//! checkpoint that does not extend the stored one, a different root at the stored size, a
//! smaller size, or two servers of one ledger that disagree is refused with an error naming the
//! sizes and roots.
//!
//! The logic here is pure over a [`CheckpointSource`] (the binary implements it over the
//! `baton.v1.AuditService` gRPC client), so it knows nothing of the wire.
//!
//! State directory:
//!
//! ```text
//! DIR/checkpoints/<size>.note   every checkpoint the witness accepted, cosigned
//! DIR/latest                    the latest of them (same text)
//! ```
//!
//! Cosignature (C2SP tlog-cosignature v1, ed25519): one more signature line on the note,
//! `— <witness name> <base64(key id ‖ timestamp u64 BE ‖ signature)>`, where the signature
//! covers `cosignature/v1\ntime <timestamp>\n` followed by the checkpoint text and the key id
//! is the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key).

use std::future::Future;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use baton_ledger::checkpoint::CheckpointError;
use baton_ledger::{merkle, Checkpoint, Hash, OperatorKey, PublicKey};
use sha2::{Digest, Sha256};

/// Subdirectory of the state directory holding every accepted checkpoint.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// File in the state directory holding the latest accepted checkpoint.
pub const LATEST_FILE: &str = "latest";
/// Extension of a stored checkpoint note.
pub const NOTE_EXTENSION: &str = "note";
/// First line of the message a cosignature covers.
pub const COSIGNATURE_LABEL: &str = "cosignature/v1";
/// The C2SP signature-type byte of an ed25519 cosignature, hashed into its key id.
const COSIGNATURE_ALGORITHM: u8 = 0x04;
/// Latest cosignature timestamp, POSIX seconds: 2^63 − 1 (C2SP tlog-cosignature).
pub const COSIGNATURE_TIMESTAMP_MAX: u64 = i64::MAX as u64;
/// Bytes of a decoded cosignature: key id, timestamp, ed25519 signature.
const COSIGNATURE_BYTES: usize = 4 + 8 + 64;
/// Largest note file the witness reads, bytes (a checkpoint note is a few hundred).
pub const NOTE_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Longest witness name, bytes (it is a note signature line's name).
pub const WITNESS_NAME_BYTES_MAX: usize = 256;

/// Why the witness refused, or could not do its work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// Reading or writing the state directory failed.
    #[error("witness state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored note (or one a server sent) is not a checkpoint note.
    #[error("{what}: {source}")]
    Malformed {
        /// Which note.
        what: String,
        /// What is wrong.
        source: CheckpointError,
    },
    /// No server to follow.
    #[error("no server to follow")]
    NoServers,
    /// A cosignature timestamp above 2^63 − 1 (C2SP tlog-cosignature forbids it).
    #[error("cosignature timestamp {0} exceeds 2^63 - 1")]
    Timestamp(u64),
    /// The witness name cannot be a note signature line's name.
    #[error("invalid witness name {0:?}: 1..={WITNESS_NAME_BYTES_MAX} bytes without spaces or control characters")]
    InvalidName(String),
    /// A server could not be asked.
    #[error("{server}: {message}")]
    Source {
        /// The server.
        server: String,
        /// What failed.
        message: String,
    },
    /// A checkpoint's operator signature does not verify.
    #[error("{server}: checkpoint of size {size} (root {root}): bad operator signature: {source}")]
    OperatorSignature {
        /// The server that sent it.
        server: String,
        /// Its size.
        size: u64,
        /// Its root, hex.
        root: String,
        /// What is wrong.
        source: CheckpointError,
    },
    /// A server's checkpoints name another log.
    #[error("{server}: checkpoint origin {found:?} is not the witnessed log {expected:?}")]
    OriginMismatch {
        /// The server.
        server: String,
        /// The witnessed origin.
        expected: String,
        /// The server's.
        found: String,
    },
    /// The server's latest checkpoint is smaller than the one stored: the ledger was truncated
    /// or rolled back.
    #[error("rollback: {server} serves size {size} (root {root}) but the witness stored size {stored_size} (root {stored_root}): the ledger was truncated or rolled back")]
    Rollback {
        /// The server.
        server: String,
        /// The stored size.
        stored_size: u64,
        /// The stored root, hex.
        stored_root: String,
        /// The server's size.
        size: u64,
        /// The server's root, hex.
        root: String,
    },
    /// The server signs a different root at a size the witness stored: history was rewritten.
    #[error("history was rewritten: {server} signs size {size} with root {root} but the witness stored root {stored_root} at size {stored_size}{}", new.as_ref().map(|(s, r)| format!(" (while serving size {s} root {r})")).unwrap_or_default())]
    Rewritten {
        /// The server.
        server: String,
        /// The stored size (the server's checkpoint of the same size differs).
        stored_size: u64,
        /// The stored root, hex.
        stored_root: String,
        /// The size the server signed differently (= `stored_size`).
        size: u64,
        /// The root the server signs now, hex.
        root: String,
        /// The server's latest size and root, when it is larger.
        new: Option<(u64, String)>,
    },
    /// The server has no checkpoint of the stored size: history was rewritten in other
    /// batches.
    #[error("history was rewritten: {server} serves size {new_size} (root {new_root}) but has no checkpoint of the stored size {stored_size} (root {stored_root})")]
    MissingCheckpoint {
        /// The server.
        server: String,
        /// The stored size.
        stored_size: u64,
        /// The stored root, hex.
        stored_root: String,
        /// The server's latest size.
        new_size: u64,
        /// The server's latest root, hex.
        new_root: String,
    },
    /// The consistency proof does not link the stored checkpoint to the new one.
    #[error("not consistent: {server}'s checkpoint of size {new_size} (root {new_root}) does not extend the stored checkpoint of size {old_size} (root {old_root}): the consistency proof does not verify")]
    Inconsistent {
        /// The server.
        server: String,
        /// The stored size.
        old_size: u64,
        /// The stored root, hex.
        old_root: String,
        /// The new size.
        new_size: u64,
        /// The new root, hex.
        new_root: String,
    },
    /// Two servers of one ledger sign checkpoints that cannot both be true.
    #[error("{0}")]
    Fork(Box<Fork>),
    /// A stored note carries no cosignature by the given witness key.
    #[error("{path}: no cosignature by witness key {key_id}")]
    NoCosignature {
        /// The note.
        path: PathBuf,
        /// Hex of the key id looked for (`key_id_for_any_name` when names vary).
        key_id: String,
    },
    /// A cosignature by the witness key does not verify.
    #[error("{path}: cosignature of {name:?} does not verify")]
    BadCosignature {
        /// The note.
        path: PathBuf,
        /// The witness name on the line.
        name: String,
    },
}

/// Two servers' checkpoints of one ledger that cannot both be true.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fork: {a} signs size {a_size} (root {a_root}) and {b} signs size {b_size} (root {b_root}): {why}")]
pub struct Fork {
    /// One server.
    pub a: String,
    /// Its size.
    pub a_size: u64,
    /// Its root, hex.
    pub a_root: String,
    /// The other.
    pub b: String,
    /// Its size.
    pub b_size: u64,
    /// Its root, hex.
    pub b_root: String,
    /// What disagrees.
    pub why: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WitnessError + '_ {
    move |source| WitnessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex_root(c: &Checkpoint) -> String {
    hex::encode(c.root)
}

// ---------------------------------------------------------------------------------------------
// Cosignatures

/// One cosignature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's name.
    pub name: String,
    /// [`cosignature_key_id`] of the witness's name and key.
    pub key_id: [u8; 4],
    /// When the witness cosigned, Unix seconds.
    pub timestamp: u64,
    /// ed25519 signature over [`cosigned_message`].
    pub signature: [u8; 64],
}

/// The C2SP key id of a cosigner: SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key), first 4 bytes.
pub fn cosignature_key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', COSIGNATURE_ALGORITHM]);
    h.update(key.to_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The exact bytes a cosignature covers: `cosignature/v1\ntime <timestamp>\n` + checkpoint text.
pub fn cosigned_message(checkpoint: &Checkpoint, timestamp: u64) -> String {
    format!(
        "{COSIGNATURE_LABEL}\ntime {timestamp}\n{}",
        checkpoint.signed_text()
    )
}

fn check_name(name: &str) -> Result<(), WitnessError> {
    if name.is_empty()
        || name.len() > WITNESS_NAME_BYTES_MAX
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(WitnessError::InvalidName(name.to_string()));
    }
    Ok(())
}

impl Cosignature {
    /// Cosigns `checkpoint` at `timestamp` as `name` with `key`.
    pub fn sign(
        checkpoint: &Checkpoint,
        name: &str,
        key: &OperatorKey,
        timestamp: u64,
    ) -> Result<Cosignature, WitnessError> {
        check_name(name)?;
        if timestamp > COSIGNATURE_TIMESTAMP_MAX {
            return Err(WitnessError::Timestamp(timestamp));
        }
        Ok(Cosignature {
            name: name.to_string(),
            key_id: cosignature_key_id(name, &key.public_key()),
            timestamp,
            signature: key.sign(cosigned_message(checkpoint, timestamp).as_bytes()),
        })
    }

    /// Whether this is `key`'s cosignature (by key id) and its signature over `checkpoint`
    /// verifies (`verify_strict`).
    pub fn verify(&self, checkpoint: &Checkpoint, key: &PublicKey) -> bool {
        self.key_id == cosignature_key_id(&self.name, key)
            && key.verify_strict(
                cosigned_message(checkpoint, self.timestamp).as_bytes(),
                &self.signature,
            )
    }

    /// The note signature line, with its newline.
    pub fn to_line(&self) -> String {
        let mut b = Vec::with_capacity(COSIGNATURE_BYTES);
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&self.timestamp.to_be_bytes());
        b.extend_from_slice(&self.signature);
        format!("\u{2014} {} {}\n", self.name, B64.encode(b))
    }

    /// Every cosignature line of `note` (signature lines whose payload is key id, timestamp
    /// and signature; the operator's line is shorter and is skipped).
    pub fn parse_all(note: &str) -> Vec<Cosignature> {
        let Some((_, sigs)) = note.split_once("\n\n") else {
            return Vec::new();
        };
        sigs.lines()
            .filter_map(|line| {
                let (name, b64) = line.strip_prefix("\u{2014} ")?.rsplit_once(' ')?;
                let b = B64.decode(b64).ok()?;
                if b.len() != COSIGNATURE_BYTES {
                    return None;
                }
                let timestamp = u64::from_be_bytes(b[4..12].try_into().ok()?);
                if timestamp > COSIGNATURE_TIMESTAMP_MAX {
                    return None;
                }
                Some(Cosignature {
                    name: name.to_string(),
                    key_id: b[..4].try_into().ok()?,
                    timestamp,
                    signature: b[12..].try_into().ok()?,
                })
            })
            .collect()
    }
}

/// `checkpoint`'s note with `cosignature` as an extra signature line.
pub fn cosigned_note(checkpoint: &Checkpoint, cosignature: &Cosignature) -> String {
    format!("{}{}", checkpoint.to_note(), cosignature.to_line())
}

// ---------------------------------------------------------------------------------------------
// The state directory

/// A checkpoint the witness stored, with the file it is in.
#[derive(Clone, Debug)]
pub struct StoredCheckpoint {
    /// The note file.
    pub path: PathBuf,
    /// The checkpoint (the operator's signature line).
    pub checkpoint: Checkpoint,
    /// Its cosignatures.
    pub cosignatures: Vec<Cosignature>,
}

impl StoredCheckpoint {
    /// Checks that the checkpoint carries a valid cosignature by `witness`.
    pub fn verify_cosignature(&self, witness: &PublicKey) -> Result<(), WitnessError> {
        let mine: Vec<&Cosignature> = self
            .cosignatures
            .iter()
            .filter(|c| c.key_id == cosignature_key_id(&c.name, witness))
            .collect();
        match mine.iter().find(|c| !c.verify(&self.checkpoint, witness)) {
            Some(bad) => Err(WitnessError::BadCosignature {
                path: self.path.clone(),
                name: bad.name.clone(),
            }),
            None if mine.is_empty() => Err(WitnessError::NoCosignature {
                path: self.path.clone(),
                key_id: hex::encode(witness.key_id()),
            }),
            None => Ok(()),
        }
    }
}

fn read_note(path: &Path) -> Result<StoredCheckpoint, WitnessError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > NOTE_FILE_BYTES_MAX {
        return Err(WitnessError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "note is larger than {NOTE_FILE_BYTES_MAX} bytes"
            )),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let checkpoint = Checkpoint::from_note(&text).map_err(|source| WitnessError::Malformed {
        what: path.display().to_string(),
        source,
    })?;
    Ok(StoredCheckpoint {
        path: path.to_path_buf(),
        checkpoint,
        cosignatures: Cosignature::parse_all(&text),
    })
}

/// Every checkpoint stored in the state directory `dir`, by size.
pub fn stored_checkpoints(dir: &Path) -> Result<Vec<StoredCheckpoint>, WitnessError> {
    let cps = dir.join(CHECKPOINTS_DIR);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&cps).map_err(io(&cps))? {
        let path = e.map_err(io(&cps))?.path();
        if path.extension().and_then(|x| x.to_str()) == Some(NOTE_EXTENSION) {
            out.push(read_note(&path)?);
        }
    }
    out.sort_by_key(|s| s.checkpoint.size);
    Ok(out)
}

/// The witness's memory: the state directory and the latest checkpoint it accepted.
#[derive(Debug)]
pub struct WitnessState {
    dir: PathBuf,
    latest: Option<Checkpoint>,
}

impl WitnessState {
    /// Opens (creating if needed) the state directory `dir`.
    pub fn open(dir: &Path) -> Result<WitnessState, WitnessError> {
        let cps = dir.join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(&cps).map_err(io(&cps))?;
        let latest_path = dir.join(LATEST_FILE);
        let latest = if latest_path.exists() {
            Some(read_note(&latest_path)?.checkpoint)
        } else {
            None
        };
        Ok(WitnessState {
            dir: dir.to_path_buf(),
            latest,
        })
    }

    /// The latest accepted checkpoint.
    pub fn latest(&self) -> Option<&Checkpoint> {
        self.latest.as_ref()
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the cosigned note as `checkpoints/<size>.note` and `latest` (each written to a
    /// temporary file, synced and renamed, so a crash leaves the old or the new note).
    fn store(&mut self, checkpoint: &Checkpoint, note: &str) -> Result<PathBuf, WitnessError> {
        let path = self
            .dir
            .join(CHECKPOINTS_DIR)
            .join(format!("{}.{NOTE_EXTENSION}", checkpoint.size));
        write_atomic(&path, note)?;
        write_atomic(&self.dir.join(LATEST_FILE), note)?;
        self.latest = Some(checkpoint.clone());
        Ok(path)
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), WitnessError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

// ---------------------------------------------------------------------------------------------
// Following servers

/// Why a server could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The server has no such checkpoint.
    NotFound(String),
    /// Anything else (unreachable, refused, malformed answer).
    Failed(String),
}

/// What a server answers to a consistency-proof request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConsistency {
    /// The checkpoint of the older size, as a signed note.
    pub from_note: String,
    /// The checkpoint of the newer size, as a signed note.
    pub to_note: String,
    /// The RFC 9162 consistency path.
    pub path: Vec<Hash>,
}

/// A server of the witnessed ledger.
pub trait CheckpointSource {
    /// How errors name it (its URL).
    fn name(&self) -> &str;
    /// Its latest checkpoint as a signed note.
    fn latest(&mut self) -> impl Future<Output = Result<String, SourceError>> + Send;
    /// A consistency proof between its checkpoints of sizes `from` and `to`.
    fn consistency(
        &mut self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<RemoteConsistency, SourceError>> + Send;
}

/// What one round of witnessing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first checkpoint seen (trusted on first use), stored and cosigned.
    First {
        /// It.
        checkpoint: Checkpoint,
        /// Where it was stored.
        path: PathBuf,
    },
    /// A new checkpoint consistent with the stored one, stored and cosigned.
    Advanced {
        /// The size of the previously stored checkpoint.
        from: u64,
        /// The new one.
        checkpoint: Checkpoint,
        /// Where it was stored.
        path: PathBuf,
    },
    /// Nothing new: the servers' latest is the stored checkpoint.
    Unchanged {
        /// The stored checkpoint.
        checkpoint: Checkpoint,
    },
}

/// A witness: whose checkpoints it checks, and the key and name it cosigns with.
pub struct Witness {
    operator: PublicKey,
    key: OperatorKey,
    name: String,
}

fn parse_verified(
    server: &str,
    what: &str,
    note: &str,
    operator: &PublicKey,
) -> Result<Checkpoint, WitnessError> {
    let c = Checkpoint::from_note(note).map_err(|source| WitnessError::Malformed {
        what: format!("{server}: {what}"),
        source,
    })?;
    c.verify(operator)
        .map_err(|source| WitnessError::OperatorSignature {
            server: server.to_string(),
            size: c.size,
            root: hex_root(&c),
            source,
        })?;
    Ok(c)
}

fn source_error(server: &str, e: SourceError) -> WitnessError {
    let message = match e {
        SourceError::NotFound(m) | SourceError::Failed(m) => m,
    };
    WitnessError::Source {
        server: server.to_string(),
        message,
    }
}

impl Witness {
    /// A witness of the ledger signed by `operator`, cosigning as `name` with `key`.
    pub fn new(operator: PublicKey, key: OperatorKey, name: &str) -> Result<Witness, WitnessError> {
        check_name(name)?;
        Ok(Witness {
            operator,
            key,
            name: name.to_string(),
        })
    }

    /// Asks `server` for its proof from `old` to `new` (both its own checkpoints already
    /// verified) and checks the proof's checkpoints are `old` and `new` and the path links
    /// them. `Ok(Err(reason))` is a disagreement the caller names (a rewrite or a fork).
    async fn check_extends<S: CheckpointSource>(
        &self,
        server: &mut S,
        old: &Checkpoint,
        new: &Checkpoint,
    ) -> Result<Result<(), Disagreement>, WitnessError> {
        let name = server.name().to_string();
        let c = match server.consistency(old.size, new.size).await {
            Ok(c) => c,
            Err(SourceError::NotFound(_)) => return Ok(Err(Disagreement::NoCheckpoint)),
            Err(e) => return Err(source_error(&name, e)),
        };
        let from = parse_verified(
            &name,
            "consistency proof's from_checkpoint",
            &c.from_note,
            &self.operator,
        )?;
        let to = parse_verified(
            &name,
            "consistency proof's to_checkpoint",
            &c.to_note,
            &self.operator,
        )?;
        if from.size != old.size || from.root != old.root {
            return Ok(Err(Disagreement::OtherRoot(from)));
        }
        if to.size != new.size || to.root != new.root {
            return Err(WitnessError::Source {
                server: name,
                message: format!(
                    "asked for a proof to size {} (root {}) and got one to size {} (root {})",
                    new.size,
                    hex_root(new),
                    to.size,
                    hex_root(&to)
                ),
            });
        }
        if !merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &c.path) {
            return Ok(Err(Disagreement::Path));
        }
        Ok(Ok(()))
    }

    /// One round: asks every server for its latest checkpoint, checks they agree (the smaller
    /// ones are prefixes of the largest, proved by the largest's server), checks the largest
    /// extends the stored checkpoint, and stores and cosigns it at `now` (Unix seconds).
    pub async fn witness_once<S: CheckpointSource>(
        &self,
        state: &mut WitnessState,
        servers: &mut [S],
        now: u64,
    ) -> Result<Outcome, WitnessError> {
        if servers.is_empty() {
            return Err(WitnessError::NoServers);
        }
        let mut heads = Vec::with_capacity(servers.len());
        for s in servers.iter_mut() {
            let name = s.name().to_string();
            let note = s.latest().await.map_err(|e| source_error(&name, e))?;
            heads.push(parse_verified(
                &name,
                "latest checkpoint",
                &note,
                &self.operator,
            )?);
        }
        let origin = state
            .latest()
            .map_or_else(|| heads[0].origin.clone(), |c| c.origin.clone());
        for (s, h) in servers.iter().zip(&heads) {
            if h.origin != origin {
                return Err(WitnessError::OriginMismatch {
                    server: s.name().to_string(),
                    expected: origin,
                    found: h.origin.clone(),
                });
            }
        }
        // The leader: the largest checkpoint (the first server's on a tie).
        let lead = (0..heads.len())
            .max_by_key(|&i| (heads[i].size, std::cmp::Reverse(i)))
            .expect("at least one server");
        let leader = heads[lead].clone();
        for (i, h) in heads.iter().enumerate() {
            if i == lead {
                continue;
            }
            let (a, b) = (
                servers[lead].name().to_string(),
                servers[i].name().to_string(),
            );
            let fork = |why: String| {
                WitnessError::Fork(Box::new(Fork {
                    a: a.clone(),
                    a_size: leader.size,
                    a_root: hex_root(&leader),
                    b: b.clone(),
                    b_size: h.size,
                    b_root: hex_root(h),
                    why,
                }))
            };
            if h.size == leader.size {
                if h.root != leader.root {
                    return Err(fork("the same size with different roots".into()));
                }
                continue;
            }
            match self.check_extends(&mut servers[lead], h, &leader).await? {
                Ok(()) => {}
                Err(Disagreement::NoCheckpoint) => {
                    return Err(fork(format!("{a} has no checkpoint of size {}", h.size)))
                }
                Err(Disagreement::OtherRoot(other)) => {
                    return Err(fork(format!(
                        "{a} signs size {} with root {}",
                        other.size,
                        hex_root(&other)
                    )))
                }
                Err(Disagreement::Path) => {
                    return Err(fork(format!(
                        "{a}'s consistency proof from size {} does not verify",
                        h.size
                    )))
                }
            }
        }
        let server = servers[lead].name().to_string();
        let from = match state.latest().cloned() {
            None => None,
            Some(stored) => {
                if leader.size < stored.size {
                    return Err(WitnessError::Rollback {
                        server,
                        stored_size: stored.size,
                        stored_root: hex_root(&stored),
                        size: leader.size,
                        root: hex_root(&leader),
                    });
                }
                if leader.size == stored.size {
                    if leader.root != stored.root {
                        return Err(WitnessError::Rewritten {
                            server,
                            stored_size: stored.size,
                            stored_root: hex_root(&stored),
                            size: leader.size,
                            root: hex_root(&leader),
                            new: None,
                        });
                    }
                    return Ok(Outcome::Unchanged { checkpoint: stored });
                }
                match self
                    .check_extends(&mut servers[lead], &stored, &leader)
                    .await?
                {
                    Ok(()) => {}
                    Err(Disagreement::NoCheckpoint) => {
                        return Err(WitnessError::MissingCheckpoint {
                            server,
                            stored_size: stored.size,
                            stored_root: hex_root(&stored),
                            new_size: leader.size,
                            new_root: hex_root(&leader),
                        })
                    }
                    Err(Disagreement::OtherRoot(other)) => {
                        return Err(WitnessError::Rewritten {
                            server,
                            stored_size: stored.size,
                            stored_root: hex_root(&stored),
                            size: other.size,
                            root: hex_root(&other),
                            new: Some((leader.size, hex_root(&leader))),
                        })
                    }
                    Err(Disagreement::Path) => {
                        return Err(WitnessError::Inconsistent {
                            server,
                            old_size: stored.size,
                            old_root: hex_root(&stored),
                            new_size: leader.size,
                            new_root: hex_root(&leader),
                        })
                    }
                }
                Some(stored.size)
            }
        };
        let cosignature = Cosignature::sign(&leader, &self.name, &self.key, now)?;
        let path = state.store(&leader, &cosigned_note(&leader, &cosignature))?;
        Ok(match from {
            None => Outcome::First {
                checkpoint: leader,
                path,
            },
            Some(from) => Outcome::Advanced {
                from,
                checkpoint: leader,
                path,
            },
        })
    }
}

/// How a server's consistency answer disagrees with what the witness holds.
enum Disagreement {
    /// It has no checkpoint of the older size.
    NoCheckpoint,
    /// Its checkpoint of the older size has another root.
    OtherRoot(Checkpoint),
    /// The path does not link the two roots.
    Path,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosignature_round_trips_and_binds_key_time_and_checkpoint() {
        let op = OperatorKey::from_seed(&[1; 32]);
        let w = OperatorKey::from_seed(&[2; 32]);
        let cp = Checkpoint::sign(&op, "baton.test/ledger", 9, [3; 32]).unwrap();
        let c = Cosignature::sign(&cp, "regulator.example/w1", &w, 1_800_000_000).unwrap();
        let note = cosigned_note(&cp, &c);
        // Still a checkpoint note to the operator's parser; the cosignature is the last line.
        assert_eq!(Checkpoint::from_note(&note).unwrap(), cp);
        assert!(note.ends_with(&c.to_line()));
        let back = Cosignature::parse_all(&note);
        assert_eq!(back, vec![c.clone()]);
        assert!(back[0].verify(&cp, &w.public_key()));
        // Another key, another time, another checkpoint: no.
        assert!(!c.verify(&cp, &op.public_key()));
        let mut later = c.clone();
        later.timestamp += 1;
        assert!(!later.verify(&cp, &w.public_key()));
        let other = Checkpoint::sign(&op, "baton.test/ledger", 10, [3; 32]).unwrap();
        assert!(!c.verify(&other, &w.public_key()));
        assert_eq!(
            cosigned_message(&cp, 7),
            format!("cosignature/v1\ntime 7\n{}", cp.signed_text())
        );
        assert!(Cosignature::sign(&cp, "two words", &w, 1).is_err());
        assert!(Cosignature::sign(&cp, "w", &w, COSIGNATURE_TIMESTAMP_MAX + 1).is_err());
    }

    /// The line's layout, spelled out from C2SP tlog-cosignature (not from this module): the
    /// key id is SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[:4], then the timestamp as a big-endian u64,
    /// then the 64-byte ed25519 signature over `cosignature/v1\ntime <t>\n` + the note body.
    #[test]
    fn cosignature_line_follows_the_c2sp_layout() {
        let op = OperatorKey::from_seed(&[1; 32]);
        let w = OperatorKey::from_seed(&[2; 32]);
        let cp = Checkpoint::sign(&op, "baton.test/ledger", 9, [3; 32]).unwrap();
        let c = Cosignature::sign(&cp, "regulator.example/w1", &w, 1_679_315_147).unwrap();
        let line = c.to_line();
        let rest = line.strip_prefix("\u{2014} regulator.example/w1 ").unwrap();
        let b = B64.decode(rest.trim_end()).unwrap();
        assert_eq!(b.len(), 4 + 8 + 64);
        let mut id_input = b"regulator.example/w1\n\x04".to_vec();
        id_input.extend_from_slice(&w.public_key().to_bytes());
        assert_eq!(b[..4], Sha256::digest(&id_input)[..4]);
        assert_eq!(b[4..12], 1_679_315_147u64.to_be_bytes());
        let message = format!(
            "cosignature/v1\ntime 1679315147\nbaton.test/ledger\n9\n{}\n",
            B64.encode([3u8; 32])
        );
        let sig: [u8; 64] = b[12..].try_into().unwrap();
        assert!(w.public_key().verify_strict(message.as_bytes(), &sig));
        // A timestamp past 2^63 − 1 is not a cosignature.
        let mut late = b.clone();
        late[4..12].copy_from_slice(&(1u64 << 63).to_be_bytes());
        let forged = format!(
            "{}\n\u{2014} regulator.example/w1 {}\n",
            cp.to_note(),
            B64.encode(late)
        );
        assert!(Cosignature::parse_all(&forged).is_empty());
    }

    /// A log in memory: leaves `0..size`, a checkpoint at every size, a knob to corrupt paths.
    struct FakeLog {
        name: String,
        key: OperatorKey,
        leaves: Vec<Hash>,
        corrupt_path: bool,
    }

    impl FakeLog {
        fn new(size: u8) -> FakeLog {
            FakeLog {
                name: "fake".into(),
                key: OperatorKey::from_seed(&[1; 32]),
                leaves: (0..size).map(|i| [i; 32]).collect(),
                corrupt_path: false,
            }
        }

        fn checkpoint(&self, size: u64) -> Checkpoint {
            let root = merkle::root(&self.leaves[..size as usize]);
            Checkpoint::sign(&self.key, "baton.test/ledger", size, root).unwrap()
        }
    }

    impl CheckpointSource for FakeLog {
        fn name(&self) -> &str {
            &self.name
        }

        fn latest(&mut self) -> impl Future<Output = Result<String, SourceError>> + Send {
            let note = self.checkpoint(self.leaves.len() as u64).to_note();
            async move { Ok(note) }
        }

        fn consistency(
            &mut self,
            from: u64,
            to: u64,
        ) -> impl Future<Output = Result<RemoteConsistency, SourceError>> + Send {
            let mut path = merkle::consistency_proof(&self.leaves[..to as usize], from).unwrap();
            if self.corrupt_path {
                path[0][0] ^= 1;
            }
            let r = RemoteConsistency {
                from_note: self.checkpoint(from).to_note(),
                to_note: self.checkpoint(to).to_note(),
                path,
            };
            async move { Ok(r) }
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_witness_refuses_a_bad_path_a_rollback_and_a_foreign_signature() {
        let dir = tempfile::tempdir().unwrap();
        let operator = OperatorKey::from_seed(&[1; 32]).public_key();
        let w = Witness::new(operator, OperatorKey::from_seed(&[2; 32]), "w1").unwrap();
        let mut state = WitnessState::open(dir.path()).unwrap();
        let mut log = [FakeLog::new(5)];
        let o = run(w.witness_once(&mut state, &mut log, 10)).unwrap();
        assert!(matches!(o, Outcome::First { .. }), "{o:?}");
        log[0].leaves.extend([[9; 32], [10; 32]]);
        let o = run(w.witness_once(&mut state, &mut log, 11)).unwrap();
        assert!(matches!(o, Outcome::Advanced { from: 5, .. }), "{o:?}");
        // A path that does not link the stored root to the new one.
        log[0].leaves.push([11; 32]);
        log[0].corrupt_path = true;
        let e = run(w.witness_once(&mut state, &mut log, 12)).unwrap_err();
        assert!(
            matches!(
                e,
                WitnessError::Inconsistent {
                    old_size: 7,
                    new_size: 8,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("does not extend the stored checkpoint of size 7"),
            "{e}"
        );
        // A truncated log.
        log[0].corrupt_path = false;
        log[0].leaves.truncate(6);
        let e = run(w.witness_once(&mut state, &mut log, 13)).unwrap_err();
        assert!(
            matches!(
                e,
                WitnessError::Rollback {
                    stored_size: 7,
                    size: 6,
                    ..
                }
            ),
            "{e}"
        );
        // A checkpoint signed by someone else.
        log[0].leaves.extend([[12; 32], [13; 32]]);
        log[0].key = OperatorKey::from_seed(&[3; 32]);
        let e = run(w.witness_once(&mut state, &mut log, 14)).unwrap_err();
        assert!(
            matches!(e, WitnessError::OperatorSignature { size: 8, .. }),
            "{e}"
        );
        // What was stored survives a reopen, cosigned at the time it was accepted.
        let state = WitnessState::open(dir.path()).unwrap();
        assert_eq!(state.latest().unwrap().size, 7);
        let stored = stored_checkpoints(dir.path()).unwrap();
        assert_eq!(stored.len(), 2);
        let wk = OperatorKey::from_seed(&[2; 32]).public_key();
        for s in &stored {
            s.verify_cosignature(&wk).unwrap();
        }
        assert_eq!(stored[1].cosignatures[0].timestamp, 11);
    }
}
