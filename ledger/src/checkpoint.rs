//! Signed checkpoints (transparency-log / C2SP signed-note style).
//!
//! The signed text is exactly
//!
//! ```text
//! <origin>\n<size in decimal>\n<base64(root), standard alphabet, padded>\n
//! ```
//!
//! signed with ed25519 by the operator key. As a note it is rendered as that text, an empty
//! line, and one signature line `— <origin> <base64(key_id ‖ signature)>\n` where `key_id` is
//! the first 4 bytes of SHA-256 of the 32-byte public key (simpler than C2SP's key hash, which
//! also covers the key name and algorithm byte).

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::entry::Hash;
use crate::key::{KeyId, OperatorKey, PublicKey};

/// Longest origin line, in bytes.
pub const ORIGIN_BYTES_MAX: usize = 256;

/// Errors parsing or checking a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The origin is empty, too long or contains a newline or control character.
    #[error(
        "invalid origin {0:?}: must be 1..={ORIGIN_BYTES_MAX} bytes without control characters"
    )]
    InvalidOrigin(String),
    /// The note text is malformed.
    #[error("malformed checkpoint note: {0}")]
    Malformed(String),
    /// The key id does not name the given public key.
    #[error("checkpoint key id {found} does not match operator key id {expected}")]
    WrongKey {
        /// Hex of the key id of the key we verify with.
        expected: String,
        /// Hex of the key id in the checkpoint.
        found: String,
    },
    /// The signature does not verify.
    #[error("checkpoint signature does not verify with the operator key")]
    BadSignature,
}

/// A signed statement by the operator: "the ledger's first `size` entries have Merkle root
/// `root`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Names the log (e.g. `baton.example.org/ledger`).
    pub origin: String,
    /// Number of entries covered.
    pub size: u64,
    /// RFC 9162 Merkle root over those entries.
    #[serde(with = "crate::hexser::array")]
    pub root: Hash,
    /// Which key signed, see [`KeyId`].
    #[serde(with = "crate::hexser::array")]
    pub key_id: KeyId,
    /// ed25519 signature over [`Checkpoint::signed_text`].
    #[serde(with = "crate::hexser::array")]
    pub signature: [u8; 64],
}

pub(crate) fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() || origin.len() > ORIGIN_BYTES_MAX || origin.chars().any(char::is_control)
    {
        return Err(CheckpointError::InvalidOrigin(origin.to_string()));
    }
    Ok(())
}

/// The exact text a checkpoint signature covers.
pub fn signed_text(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

impl Checkpoint {
    /// Signs a checkpoint.
    pub fn sign(
        key: &OperatorKey,
        origin: &str,
        size: u64,
        root: Hash,
    ) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        let signature = key.sign(signed_text(origin, size, &root).as_bytes());
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            key_id: key.public_key().key_id(),
            signature,
        })
    }

    /// The text the signature covers.
    pub fn signed_text(&self) -> String {
        signed_text(&self.origin, self.size, &self.root)
    }

    /// Checks the key id and the signature (`verify_strict`).
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        check_origin(&self.origin)?;
        if self.key_id != key.key_id() {
            return Err(CheckpointError::WrongKey {
                expected: hex::encode(key.key_id()),
                found: hex::encode(self.key_id),
            });
        }
        if !key.verify_strict(self.signed_text().as_bytes(), &self.signature) {
            return Err(CheckpointError::BadSignature);
        }
        Ok(())
    }

    /// Renders the signed note (text, blank line, signature line).
    pub fn to_note(&self) -> String {
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&self.key_id);
        sig.extend_from_slice(&self.signature);
        format!(
            "{}\n\u{2014} {} {}\n",
            self.signed_text(),
            self.origin,
            B64.encode(sig)
        )
    }

    /// Parses a note produced by [`Checkpoint::to_note`]. Does not verify the signature.
    pub fn from_note(note: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_string());
        let (text, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the signature"))?;
        let mut lines = text.split('\n');
        let origin = lines.next().ok_or_else(|| bad("missing origin"))?;
        check_origin(origin)?;
        let size: u64 = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("missing or invalid size"))?;
        let root_b64 = lines.next().ok_or_else(|| bad("missing root"))?;
        let root: Hash = B64
            .decode(root_b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("root is not base64 of 32 bytes"))?;
        if lines.next().is_some() {
            return Err(bad("extension lines are not supported"));
        }
        let line = sigs
            .lines()
            .next()
            .ok_or_else(|| bad("missing signature line"))?;
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| bad("signature line must start with an em dash"))?;
        let (name, sig_b64) = rest
            .rsplit_once(' ')
            .ok_or_else(|| bad("signature line has no signature"))?;
        if name != origin {
            return Err(bad("signature line names a different origin"));
        }
        let sig = B64
            .decode(sig_b64)
            .map_err(|_| bad("signature is not base64"))?;
        if sig.len() != 68 {
            return Err(bad(
                "signature must be 4-byte key id plus 64-byte signature",
            ));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            key_id: sig[..4].try_into().expect("4 bytes"),
            signature: sig[4..].try_into().expect("64 bytes"),
        })
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} size {} root {}",
            self.origin,
            self.size,
            hex::encode(self.root)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_round_trips_and_verifies() {
        let k = OperatorKey::from_seed(&[7; 32]);
        let c = Checkpoint::sign(&k, "baton.test/ledger", 42, [9; 32]).unwrap();
        let note = c.to_note();
        assert!(note.starts_with("baton.test/ledger\n42\nCQkJ"));
        let back = Checkpoint::from_note(&note).unwrap();
        assert_eq!(back, c);
        back.verify(&k.public_key()).unwrap();
        let other = OperatorKey::from_seed(&[8; 32]).public_key();
        assert!(matches!(
            back.verify(&other),
            Err(CheckpointError::WrongKey { .. })
        ));
        let mut forged = c.clone();
        forged.size = 43;
        assert_eq!(
            forged.verify(&k.public_key()),
            Err(CheckpointError::BadSignature)
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), c);
    }

    #[test]
    fn origins_with_newlines_are_refused() {
        let k = OperatorKey::from_seed(&[7; 32]);
        assert!(Checkpoint::sign(&k, "a\nb", 1, [0; 32]).is_err());
        assert!(Checkpoint::sign(&k, "", 1, [0; 32]).is_err());
    }
}
