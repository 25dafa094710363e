//! Serde helpers that write byte strings as lowercase hex.

use serde::{Deserialize, Deserializer, Serializer};

/// Fixed-size byte arrays as lowercase hex.
pub(crate) mod array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        // Keys and signatures fit on the stack: no allocation per field.
        let mut buf = [0u8; 128];
        if N <= 64 {
            let out = &mut buf[..N * 2];
            super::encode_into(bytes, out);
            s.serialize_str(std::str::from_utf8(out).expect("hex digits are ASCII"))
        } else {
            s.serialize_str(&super::encode(bytes))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = <&str>::deserialize(d)?;
        super::decode_array(s).map_err(serde::de::Error::custom)
    }
}

/// Variable-length byte strings as lowercase hex.
pub(crate) mod vec {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        super::decode_lower(s).map_err(serde::de::Error::custom)
    }
}

/// Lists of 32-byte hashes as lowercase hex strings.
pub(crate) mod hash_list {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(crate) fn serialize<S: Serializer>(hashes: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for h in hashes {
            seq.serialize_element(&super::encode(h))?;
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

/// Lowercase hex. A table lookup per nibble: `hex::encode` builds the string char by char,
/// which showed up in profiles of append and verify (every order body is hex-heavy).
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    encode_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Writes the lowercase hex of `bytes` into `out` (exactly twice as long).
pub(crate) fn encode_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (&b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Nibble value of each byte, or 0xff for anything but `0-9a-f`.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes lowercase hex only: uppercase would be a second spelling of the same bytes, which
/// canonical bodies forbid. Table-driven for the same reason as [`encode`].
pub(crate) fn decode_lower(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("hex has an odd number of digits".to_string());
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    for pair in b.chunks_exact(2) {
        let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        if (hi | lo) == 0xff {
            return Err("hex must be lowercase 0-9a-f digits".to_string());
        }
        out.push((hi << 4) | lo);
    }
    Ok(out)
}

pub(crate) fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let v = decode_lower(s)?;
    <[u8; N]>::try_from(v.as_slice())
        .map_err(|_| format!("expected {N} bytes of hex, got {}", v.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn encode_matches_the_hex_crate() {
        let v: Vec<u8> = (0..=255).collect();
        assert_eq!(super::encode(&v), hex::encode(&v));
        assert_eq!(super::decode_lower(&super::encode(&v)).unwrap(), v);
        assert!(super::decode_lower("abc").is_err());
        assert!(super::decode_lower("AB").is_err());
    }
}
