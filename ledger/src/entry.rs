//! Entries, entry kinds and the hash chain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first entry (seq 1): 32 zero bytes.
pub const GENESIS_PREV_HASH: Hash = [0u8; 32];

/// Largest body the ledger accepts, in bytes. An interval's result is the biggest body: in its
/// compact form about 160 bytes per order, so the live market's default of 1,000,000 orders
/// per interval needs about 160 MB. 256 MiB stays well under both backends' hard limits
/// (SQLite's 1,000,000,000-byte `SQLITE_MAX_LENGTH`, PostgreSQL's 1 GB `bytea`).
pub const BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Largest number of entries in one `append` call (one transaction). Bounds the memory and the
/// transaction size of a batch; an interval with more entries than this is a bug upstream.
pub const BATCH_ENTRIES_MAX: usize = 200_000;

/// What an entry records. Stored as a short string (see [`EntryKind::as_str`]), which is also
/// what the hash chain covers, so new kinds can be added without changing old hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryKind {
    /// Participant admission or suspension (body: [`crate::ParticipantBody`]).
    Participant,
    /// A network model version (opaque body).
    Network,
    /// An accepted order, exactly as signed (body: [`crate::SignedMessageBody`]).
    Order,
    /// An accepted cancellation, exactly as signed (body: [`crate::SignedMessageBody`]).
    Cancel,
    /// The frozen book/market of an interval as the operator cleared it (opaque body).
    IntervalInput,
    /// An interval's clearing result (opaque body).
    IntervalResult,
    /// Double-entry payments of an interval (body: [`crate::SettlementBody`]).
    Settlement,
    /// A correction of earlier entries (body: [`crate::CorrectionBody`]).
    Correction,
    /// A free-form operator note (opaque body).
    Note,
    /// A market event such as pause, resume or fallback (opaque body).
    MarketEvent,
    /// An interval's book frozen at its gate, before clearing (body:
    /// [`crate::GateClosedBody`]).
    GateClosed,
    /// A meter the operator registers for a participant (body: [`crate::MeterBody`]).
    Meter,
    /// A metered reading exactly as signed by the participant or its meter (body:
    /// [`crate::MeterReadingBody`]).
    MeterReading,
    /// An interval's metered delivery settled against its clearing (body:
    /// [`crate::DeliverySettlementBody`]).
    DeliverySettlement,
}

impl EntryKind {
    /// Every kind, in a stable order.
    pub const ALL: [EntryKind; 14] = [
        EntryKind::Participant,
        EntryKind::Network,
        EntryKind::Order,
        EntryKind::Cancel,
        EntryKind::IntervalInput,
        EntryKind::IntervalResult,
        EntryKind::Settlement,
        EntryKind::Correction,
        EntryKind::Note,
        EntryKind::MarketEvent,
        EntryKind::GateClosed,
        EntryKind::Meter,
        EntryKind::MeterReading,
        EntryKind::DeliverySettlement,
    ];

    /// The stored (and hashed) name of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Participant => "participant",
            EntryKind::Network => "network",
            EntryKind::Order => "order",
            EntryKind::Cancel => "cancel",
            EntryKind::IntervalInput => "interval_input",
            EntryKind::IntervalResult => "interval_result",
            EntryKind::Settlement => "settlement",
            EntryKind::Correction => "correction",
            EntryKind::Note => "note",
            EntryKind::MarketEvent => "market_event",
            EntryKind::GateClosed => "gate_closed",
            EntryKind::Meter => "meter",
            EntryKind::MeterReading => "meter_reading",
            EntryKind::DeliverySettlement => "delivery_settlement",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not a known [`EntryKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entry kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for EntryKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// An entry to append. The ledger assigns its sequence number and hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// What the entry records.
    pub kind: EntryKind,
    /// Start of the market interval it belongs to, unix seconds.
    pub interval_start: Option<i64>,
    /// The body bytes, hashed exactly as given.
    pub body: Vec<u8>,
}

impl NewEntry {
    /// An entry with an arbitrary body. Bodies of kinds the ledger understands are checked at
    /// append time; prefer the typed constructors for those.
    pub fn new(kind: EntryKind, interval_start: Option<i64>, body: Vec<u8>) -> Self {
        NewEntry {
            kind,
            interval_start,
            body,
        }
    }
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number, gap-free from 1.
    pub seq: u64,
    /// What the entry records.
    pub kind: EntryKind,
    /// Start of the market interval it belongs to, unix seconds.
    pub interval_start: Option<i64>,
    /// The body bytes.
    #[serde(with = "crate::hexser::vec")]
    pub body: Vec<u8>,
    /// Hash of the previous entry ([`GENESIS_PREV_HASH`] for seq 1).
    #[serde(with = "crate::hexser::array")]
    pub prev_hash: Hash,
    /// This entry's chain hash, see [`entry_hash`].
    #[serde(with = "crate::hexser::array")]
    pub hash: Hash,
}

impl Entry {
    /// Recomputes this entry's hash from its contents.
    pub fn compute_hash(&self) -> Hash {
        entry_hash(
            &self.prev_hash,
            self.seq,
            self.kind.as_str(),
            self.interval_start,
            &self.body,
        )
    }
}

/// The chain hash of an entry:
///
/// ```text
/// SHA-256( prev_hash            32 bytes
///        ‖ seq                  u64 big-endian
///        ‖ len(kind)            u64 big-endian ‖ kind (UTF-8)
///        ‖ 0x00                 if interval_start is absent, or
///          0x01 ‖ interval_start i64 big-endian (two's complement)
///        ‖ len(body)            u64 big-endian ‖ body )
/// ```
pub fn entry_hash(
    prev_hash: &Hash,
    seq: u64,
    kind: &str,
    interval_start: Option<i64>,
    body: &[u8],
) -> Hash {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update((kind.len() as u64).to_be_bytes());
    h.update(kind.as_bytes());
    match interval_start {
        None => h.update([0u8]),
        Some(t) => {
            h.update([1u8]);
            h.update(t.to_be_bytes());
        }
    }
    h.update((body.len() as u64).to_be_bytes());
    h.update(body);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in EntryKind::ALL {
            assert_eq!(k.as_str().parse::<EntryKind>().unwrap(), k);
        }
        assert!("orders".parse::<EntryKind>().is_err());
    }

    #[test]
    fn hash_covers_every_field() {
        let base = entry_hash(&GENESIS_PREV_HASH, 1, "note", None, b"x");
        assert_ne!(base, entry_hash(&[1; 32], 1, "note", None, b"x"));
        assert_ne!(base, entry_hash(&GENESIS_PREV_HASH, 2, "note", None, b"x"));
        assert_ne!(base, entry_hash(&GENESIS_PREV_HASH, 1, "order", None, b"x"));
        assert_ne!(
            base,
            entry_hash(&GENESIS_PREV_HASH, 1, "note", Some(0), b"x")
        );
        assert_ne!(base, entry_hash(&GENESIS_PREV_HASH, 1, "note", None, b"y"));
        // Length prefixes keep kind and body from sliding into each other.
        assert_ne!(
            entry_hash(&GENESIS_PREV_HASH, 1, "note", None, b"ab"),
            entry_hash(&GENESIS_PREV_HASH, 1, "notea", None, b"b")
        );
    }
}
