//! Serde helpers that write byte strings as lowercase hex.

use serde::{Deserialize, Deserializer, Serializer};

/// Fixed-size byte arrays as lowercase hex.
pub(crate) mod array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        super::decode_array(&s).map_err(serde::de::Error::custom)
    }
}

/// Variable-length byte strings as lowercase hex.
pub(crate) mod vec {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode_lower(&s).map_err(serde::de::Error::custom)
    }
}

/// Lists of 32-byte hashes as lowercase hex strings.
pub(crate) mod hash_list {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(crate) fn serialize<S: Serializer>(hashes: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for h in hashes {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| super::decode_array(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Decodes lowercase hex only: uppercase would be a second spelling of the same bytes, which
/// canonical bodies forbid.
pub(crate) fn decode_lower(s: &str) -> Result<Vec<u8>, String> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("hex must be lowercase".to_string());
    }
    hex::decode(s).map_err(|e| format!("invalid hex: {e}"))
}

pub(crate) fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let v = decode_lower(s)?;
    <[u8; N]>::try_from(v.as_slice())
        .map_err(|_| format!("expected {N} bytes of hex, got {}", v.len()))
}
