//! Operator keys: the ed25519 key that signs checkpoints.
//!
//! Files: `operator.key` holds the 32-byte secret seed as 64 lowercase hex characters plus a
//! newline, created with mode 0600; `operator.pub` holds the 32-byte public key the same way.
//! Keys are read from files only, never from command-line arguments (which leak through `ps`
//! and shell history).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File name of the operator's private key inside a key directory.
pub const OPERATOR_KEY_FILE: &str = "operator.key";
/// File name of the operator's public key inside a key directory.
pub const OPERATOR_PUB_FILE: &str = "operator.pub";
/// Largest key file we read, in bytes: 64 hex characters plus whitespace.
pub const KEY_FILE_BYTES_MAX: u64 = 256;

/// Errors reading, writing or parsing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not 64 hex characters.
    #[error("key is not 32 bytes of hex: {0}")]
    Hex(String),
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    /// The public key has small order; any signature would verify under it.
    #[error("weak ed25519 public key (small order)")]
    WeakPublicKey,
    /// The key file is larger than [`KEY_FILE_BYTES_MAX`].
    #[error("key file {0} is larger than {KEY_FILE_BYTES_MAX} bytes")]
    TooLarge(PathBuf),
}

/// The first 4 bytes of SHA-256 of the 32-byte public key: a hint naming which key signed a
/// checkpoint (not a security boundary; the signature is).
pub type KeyId = [u8; 4];

/// An ed25519 public key that verifies with `verify_strict`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses and checks 32 raw bytes; rejects weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let vk = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        if vk.is_weak() {
            return Err(KeyError::WeakPublicKey);
        }
        Ok(PublicKey(vk))
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let bytes: [u8; 32] = decode_key_hex(s)?;
        Self::from_bytes(&bytes)
    }

    /// Reads a public key file (hex, as written by [`OperatorKey::generate_to_dir`]).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::from_hex(&read_small(path)?)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Lowercase hex of the raw bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The key id, see [`KeyId`].
    pub fn key_id(&self) -> KeyId {
        let d = Sha256::digest(self.0.as_bytes());
        [d[0], d[1], d[2], d[3]]
    }

    /// Verifies with `verify_strict` (rejects malleable and small-order signatures).
    pub fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// The underlying dalek key.
    pub fn as_dalek(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The operator's signing key. Its `Debug` never prints the secret. `Clone` so that one
/// process can sign checkpoints (the ledger's writer) and order receipts (the server) with it.
#[derive(Clone)]
pub struct OperatorKey(SigningKey);

impl OperatorKey {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> Self {
        OperatorKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a 32-byte secret seed (tests and benchmarks).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        OperatorKey(SigningKey::from_bytes(seed))
    }

    /// Generates a key and writes `operator.key` (mode 0600, created exclusively: an existing
    /// key is never overwritten) and `operator.pub` into `dir`, creating `dir` if needed.
    pub fn generate_to_dir(dir: &Path) -> Result<Self, KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let key = Self::generate();
        let key_path = dir.join(OPERATOR_KEY_FILE);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&key_path).map_err(io(&key_path))?;
        writeln!(f, "{}", hex::encode(key.0.to_bytes())).map_err(io(&key_path))?;
        f.sync_all().map_err(io(&key_path))?;
        let pub_path = dir.join(OPERATOR_PUB_FILE);
        fs::write(&pub_path, format!("{}\n", key.public_key().to_hex())).map_err(io(&pub_path))?;
        Ok(key)
    }

    /// Loads a private key file (64 hex characters).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let seed: [u8; 32] = decode_key_hex(&read_small(path)?)?;
        Ok(Self::from_seed(&seed))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorKey(public {})", self.public_key().to_hex())
    }
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = fs::metadata(path).map_err(io)?.len();
    if len > KEY_FILE_BYTES_MAX {
        return Err(KeyError::TooLarge(path.to_path_buf()));
    }
    fs::read_to_string(path).map_err(io)
}

fn decode_key_hex(s: &str) -> Result<[u8; 32], KeyError> {
    let v = hex::decode(s.trim()).map_err(|e| KeyError::Hex(e.to_string()))?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyError::Hex(format!("{} bytes", v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_the_secret_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let k = OperatorKey::generate_to_dir(dir.path()).unwrap();
        let loaded = OperatorKey::load(&dir.path().join(OPERATOR_KEY_FILE)).unwrap();
        assert_eq!(k.public_key(), loaded.public_key());
        let p = PublicKey::from_file(&dir.path().join(OPERATOR_PUB_FILE)).unwrap();
        assert_eq!(p, k.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(OPERATOR_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwrite an existing key.
        assert!(OperatorKey::generate_to_dir(dir.path()).is_err());
        assert!(!format!("{k:?}").contains(&hex::encode(k.0.to_bytes())));
    }

    #[test]
    fn weak_public_keys_are_rejected() {
        // The identity point (small order) encodes as 0x01 followed by zeros.
        let mut b = [0u8; 32];
        b[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&b),
            Err(KeyError::WeakPublicKey)
        ));
    }
}
