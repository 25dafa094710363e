//! Participant and operator keys, in the ledger's key file format.
//!
//! A private key file holds the 32-byte ed25519 seed as 64 lowercase hex characters and a
//! newline, created with mode 0600 and never overwritten; the public key file beside it
//! (`NAME.pub` for `NAME.key`) holds the 32-byte public key the same way. This is the format
//! of `baton keys generate` (`operator.key`, `operator.pub`), so [`AdminKey::load`] reads the
//! operator's key file as written there.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::ClientError;

/// Largest key file read, bytes: 64 hex characters and some whitespace.
pub const KEY_FILE_BYTES_MAX: u64 = 256;

/// The public key file beside a private key file: `NAME.pub` for `NAME.key` (or `NAME`).
pub fn public_key_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("pub")
}

/// Reads a public key file (or any file holding 64 hex digits) and returns the key as
/// lowercase hex, checked to be a usable ed25519 key.
pub fn read_public_key_hex(path: &Path) -> Result<String, ClientError> {
    let bytes = decode_hex32(&read_small(path)?).map_err(|reason| key_err(path, reason))?;
    check_public_key(&bytes).map_err(|reason| key_err(path, reason))?;
    Ok(hex::encode(bytes))
}

/// Checks 64 hex digits name a usable ed25519 public key (not small-order) and returns them
/// in lowercase.
pub fn parse_public_key_hex(text: &str) -> Result<String, ClientError> {
    let bytes = decode_hex32(text).map_err(|r| ClientError::invalid("public_key", r))?;
    check_public_key(&bytes).map_err(|r| ClientError::invalid("public_key", r))?;
    Ok(hex::encode(bytes))
}

fn check_public_key(bytes: &[u8; 32]) -> Result<(), String> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| "not an ed25519 public key")?;
    if key.is_weak() {
        return Err("a weak (small-order) ed25519 key".into());
    }
    Ok(())
}

/// An ed25519 signing key with the file handling both key kinds share.
#[derive(Clone)]
struct Seed(SigningKey);

impl Seed {
    fn generate() -> Self {
        Seed(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn generate_to(path: &Path) -> Result<Self, ClientError> {
        if path.extension().is_some_and(|e| e == "pub") {
            return Err(key_err(
                path,
                "a private key file must not end in .pub (its public key goes there)",
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| key_err(dir, e.to_string()))?;
        }
        let seed = Seed::generate();
        let mut opts = fs::OpenOptions::new();
        // Never overwrite a key: losing one locks its participant out.
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| key_err(path, e.to_string()))?;
        writeln!(f, "{}", hex::encode(seed.0.to_bytes()))
            .map_err(|e| key_err(path, e.to_string()))?;
        f.sync_all().map_err(|e| key_err(path, e.to_string()))?;
        let pub_path = public_key_path(path);
        fs::write(&pub_path, format!("{}\n", seed.public_key_hex()))
            .map_err(|e| key_err(&pub_path, e.to_string()))?;
        Ok(seed)
    }

    fn load(path: &Path) -> Result<Self, ClientError> {
        let seed = decode_hex32(&read_small(path)?).map_err(|r| key_err(path, r))?;
        Ok(Seed(SigningKey::from_bytes(&seed)))
    }

    fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// A participant's key: signs its orders, cancels and reads.
#[derive(Clone)]
pub struct ParticipantKey(Seed);

impl ParticipantKey {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> Self {
        ParticipantKey(Seed::generate())
    }

    /// Generates a key and writes it to `path` (mode 0600; an existing file is never
    /// overwritten) and its public key to [`public_key_path`]`(path)`.
    pub fn generate_to(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Seed::generate_to(path.as_ref()).map(ParticipantKey)
    }

    /// Loads a private key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Seed::load(path.as_ref()).map(ParticipantKey)
    }

    /// A key from its 32-byte seed (tests, simulators that derive keys).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        ParticipantKey(Seed(SigningKey::from_bytes(seed)))
    }

    /// The public key as 64 lowercase hex digits, as the operator registers it.
    pub fn public_key_hex(&self) -> String {
        self.0.public_key_hex()
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0 .0.verifying_key()
    }

    /// Signs `message` (ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message)
    }
}

impl fmt::Debug for ParticipantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParticipantKey(public {})", self.public_key_hex())
    }
}

/// The market operator's key, which signs admin requests: the `operator.key` file of
/// `baton keys generate` (the server's `--operator-key`).
#[derive(Clone)]
pub struct AdminKey(Seed);

impl AdminKey {
    /// Loads the operator's private key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Seed::load(path.as_ref()).map(AdminKey)
    }

    /// A key from its 32-byte seed (tests).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        AdminKey(Seed(SigningKey::from_bytes(seed)))
    }

    /// The public key as 64 lowercase hex digits.
    pub fn public_key_hex(&self) -> String {
        self.0.public_key_hex()
    }

    /// Signs `message` (ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message)
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminKey(public {})", self.public_key_hex())
    }
}

fn key_err(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_small(path: &Path) -> Result<String, ClientError> {
    let len = fs::metadata(path)
        .map_err(|e| key_err(path, e.to_string()))?
        .len();
    if len > KEY_FILE_BYTES_MAX {
        return Err(key_err(
            path,
            format!("larger than {KEY_FILE_BYTES_MAX} bytes: not a key file"),
        ));
    }
    fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))
}

fn decode_hex32(text: &str) -> Result<[u8; 32], String> {
    let v = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| format!("{} bytes of hex where 32 are expected", v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_with_its_public_file_and_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("alice.key");
        let k = ParticipantKey::generate_to(&path).unwrap();
        let loaded = ParticipantKey::load(&path).unwrap();
        assert_eq!(k.public_key_hex(), loaded.public_key_hex());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65, "64 hex digits and a newline");
        assert!(text.ends_with('\n'));
        assert_eq!(
            read_public_key_hex(&dir.path().join("keys").join("alice.pub")).unwrap(),
            k.public_key_hex()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // An existing key is never overwritten.
        assert!(ParticipantKey::generate_to(&path).is_err());
        assert_eq!(
            ParticipantKey::load(&path).unwrap().public_key_hex(),
            k.public_key_hex()
        );
        // The secret never shows in Debug.
        assert!(!format!("{k:?}").contains(text.trim()));
    }

    #[test]
    fn bad_key_files_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.key");
        fs::write(&p, "abcd\n").unwrap();
        let e = ParticipantKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.key") && e.contains("2 bytes"), "{e}");
        let missing = AdminKey::load(dir.path().join("none.key")).unwrap_err();
        assert!(matches!(missing, ClientError::Key { .. }), "{missing}");
        // The identity point is a weak key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(parse_public_key_hex(&hex::encode(weak)).is_err());
    }
}
