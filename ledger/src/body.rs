//! Entry bodies whose schema the ledger owns, in canonical JSON.
//!
//! Canonical form: UTF-8 JSON as written by `serde_json::to_vec` of these types — object keys
//! in ascending byte order (struct fields are declared sorted, free-form objects use a sorted
//! map), no insignificant whitespace, absent optional fields omitted (never `null`), money as a
//! decimal string with exactly [`AMOUNT_SCALE`] fraction digits and no `+` or `-0.00`, bytes as
//! lowercase hex. A body is accepted only if decoding it and encoding it again gives the same
//! bytes, so every value has exactly one encoding and the hash chain pins it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::entry::{EntryKind, NewEntry};
use crate::key::PublicKey;

/// Fraction digits of every [`Amount`]: currency minor units (cents). Changing it changes what
/// every stored settlement means; don't.
pub const AMOUNT_SCALE: u32 = 2;
/// Longest participant id, account name, order id or memo, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Most postings in one settlement body.
pub const POSTINGS_PER_ENTRY_MAX: usize = 100_000;
/// Most entries one correction may reference.
pub const CORRECTED_SEQS_MAX: usize = 1_000;

/// A body that is not valid for its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Not JSON of the expected shape.
    #[error("invalid {kind} body: {reason}")]
    Invalid {
        /// The entry kind.
        kind: EntryKind,
        /// What is wrong.
        reason: String,
    },
    /// Valid, but not in canonical form.
    #[error("{kind} body is not canonical JSON")]
    NotCanonical {
        /// The entry kind.
        kind: EntryKind,
    },
}

/// Money at the fixed scale [`AMOUNT_SCALE`]; serialised as a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(Decimal);

/// The text is not a canonical amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {0:?}: expected a decimal with exactly {AMOUNT_SCALE} fraction digits")]
pub struct AmountError(pub String);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(Decimal::from_parts(0, 0, 0, false, AMOUNT_SCALE));

    /// An amount from minor units (cents).
    pub fn from_minor(minor: i64) -> Self {
        Amount(Decimal::new(minor, AMOUNT_SCALE))
    }

    /// Rescales `d` to [`AMOUNT_SCALE`]; refuses values that would lose digits.
    pub fn from_decimal(d: Decimal) -> Result<Self, AmountError> {
        let mut r = d;
        r.rescale(AMOUNT_SCALE);
        if r != d {
            return Err(AmountError(d.to_string()));
        }
        if r.is_zero() {
            r.set_sign_positive(true);
        }
        Ok(Amount(r))
    }

    /// The value.
    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// Checked sum.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0
            .checked_add(other.0)
            .and_then(|d| Amount::from_decimal(d).ok())
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = Decimal::from_str_exact(s).map_err(|_| AmountError(s.to_string()))?;
        let a = Amount::from_decimal(d).map_err(|_| AmountError(s.to_string()))?;
        if a.to_string() != s {
            return Err(AmountError(s.to_string()));
        }
        Ok(a)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > NAME_BYTES_MAX || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1..={NAME_BYTES_MAX} bytes without control characters"
        ));
    }
    Ok(())
}

/// Participant status in a `participant` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantStatus {
    /// May submit orders.
    Active,
    /// May not submit orders.
    Suspended,
}

/// Body of a `participant` entry: admission (or key rotation) and suspension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantBody {
    /// Opaque details (contact, node, limits…), canonicalised with sorted keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// The participant's id.
    pub participant_id: String,
    /// The ed25519 key that signs the participant's orders and cancellations.
    #[serde(with = "crate::hexser::array")]
    pub public_key: [u8; 32],
    /// Active or suspended.
    pub status: ParticipantStatus,
}

/// Body of an `order` or `cancel` entry: the participant-signed message byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedMessageBody {
    /// The order id, if the operator wants it indexed; the payload is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The signer.
    pub participant_id: String,
    /// The exact bytes the participant signed (opaque to the ledger).
    #[serde(with = "crate::hexser::vec")]
    pub payload: Vec<u8>,
    /// ed25519 signature over `payload`.
    #[serde(with = "crate::hexser::array")]
    pub signature: [u8; 64],
}

/// One leg of a double-entry payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Posting {
    /// The account (e.g. `participant:p1`, `operator:congestion`).
    pub account: String,
    /// Signed amount: positive credits the account, negative debits it.
    pub amount: Amount,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// Body of a `settlement` entry: postings of one interval. All postings of an interval sum to
/// exactly zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementBody {
    /// The interval, unix seconds; equals the entry's `interval_start`.
    pub interval_start: i64,
    /// The postings, in order.
    pub postings: Vec<Posting>,
}

/// Body of a `correction` entry. The corrected entries stay; this records what replaces them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionBody {
    /// Sequence numbers of the corrected entries; each must precede the correction.
    pub corrects: Vec<u64>,
    /// Opaque details (e.g. the replacement values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Why.
    pub reason: String,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("body types always serialise")
}

fn decode<T: Serialize + for<'de> Deserialize<'de>>(
    kind: EntryKind,
    bytes: &[u8],
) -> Result<T, BodyError> {
    let v: T = serde_json::from_slice(bytes).map_err(|e| BodyError::Invalid {
        kind,
        reason: e.to_string(),
    })?;
    // Re-encode into a buffer sized like the input (no regrowth) and compare.
    let mut again = Vec::with_capacity(bytes.len());
    serde_json::to_writer(&mut again, &v).expect("body types always serialise");
    if again != bytes {
        return Err(BodyError::NotCanonical { kind });
    }
    Ok(v)
}

fn invalid(kind: EntryKind, reason: String) -> BodyError {
    BodyError::Invalid { kind, reason }
}

impl ParticipantBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body (including that the key is a valid, non-weak key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::Participant;
        let b: Self = decode(k, bytes)?;
        check_name("participant_id", &b.participant_id).map_err(|r| invalid(k, r))?;
        PublicKey::from_bytes(&b.public_key).map_err(|e| invalid(k, e.to_string()))?;
        Ok(b)
    }

    /// The participant's key.
    pub fn key(&self) -> Option<PublicKey> {
        PublicKey::from_bytes(&self.public_key).ok()
    }
}

impl SignedMessageBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body (as kind `kind`, `order` or `cancel`).
    pub fn from_bytes(kind: EntryKind, bytes: &[u8]) -> Result<Self, BodyError> {
        let b: Self = decode(kind, bytes)?;
        check_name("participant_id", &b.participant_id).map_err(|r| invalid(kind, r))?;
        if let Some(id) = &b.order_id {
            check_name("order_id", id).map_err(|r| invalid(kind, r))?;
        }
        Ok(b)
    }
}

/// Sum of `postings` (`None` on overflow): a settlement's or a delivery settlement's total.
fn postings_total(postings: &[Posting]) -> Option<Amount> {
    postings
        .iter()
        .try_fold(Amount::ZERO, |acc, p| acc.checked_add(p.amount))
}

impl SettlementBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::Settlement;
        let b: Self = decode(k, bytes)?;
        check_postings(k, &b.postings)?;
        Ok(b)
    }

    /// Sum of the postings (`None` on overflow).
    pub fn total(&self) -> Option<Amount> {
        postings_total(&self.postings)
    }
}

impl CorrectionBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::Correction;
        let b: Self = decode(k, bytes)?;
        if b.corrects.is_empty() || b.corrects.len() > CORRECTED_SEQS_MAX {
            return Err(invalid(
                k,
                format!("corrects must list 1..={CORRECTED_SEQS_MAX} entries"),
            ));
        }
        Ok(b)
    }
}

/// Who entered the orders of a frozen book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookSource {
    /// The participants: the book is the signed `order` entries for the interval that precede
    /// the gate and were not cancelled before it (the live market).
    Signed,
    /// The operator: the book is carried in the interval's `interval_input` entry, signed by
    /// nobody but the operator's checkpoint (the one-shot `baton clear --ledger`).
    Operator,
}

/// Body of a `gate_closed` entry: the book of one interval, frozen before it is cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateClosedBody {
    /// [`signed_book_digest`] of the book's order seqs ([`BookSource::Signed`]), or SHA-256 of
    /// the canonical JSON of the operator's book ([`BookSource::Operator`]).
    #[serde(with = "crate::hexser::array")]
    pub book_digest: [u8; 32],
    /// The interval, unix seconds; equals the entry's `interval_start`.
    pub interval_start: i64,
    /// The `network` entry in force at the gate: the latest one before this entry (0: the
    /// operator's book carries its own network).
    pub network_seq: u64,
    /// Orders in the book, energy and flexibility.
    pub orders: u64,
    /// Who entered the orders.
    pub source: BookSource,
}

/// Domain separation of [`signed_book_digest`].
const BOOK_DIGEST_DOMAIN: &[u8] = b"baton book v1\n";

/// The digest a `gate_closed` entry binds a signed book with: SHA-256 of
/// `"baton book v1\n"` followed by each order entry's seq, ascending, as 8 bytes big-endian.
/// `seqs` must be ascending; the caller sorts.
pub fn signed_book_digest(seqs: impl IntoIterator<Item = u64>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(BOOK_DIGEST_DOMAIN);
    for s in seqs {
        h.update(s.to_be_bytes());
    }
    h.finalize().into()
}

impl GateClosedBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        decode(EntryKind::GateClosed, bytes)
    }
}

/// Body of a `meter` entry: a meter the operator registers for a participant. The meter's key
/// may sign that participant's `meter_reading`s (as may the participant's own key). A meter id
/// is registered once per participant; a new key means a new meter id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterBody {
    /// Opaque details (the operator's request nonce…), canonicalised with sorted keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// The meter's id, unique per participant.
    pub meter_id: String,
    /// The participant whose connection point it measures.
    pub participant_id: String,
    /// The ed25519 key that signs the meter's readings.
    #[serde(with = "crate::hexser::array")]
    pub public_key: [u8; 32],
}

impl MeterBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body (including that the key is a valid, non-weak key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::Meter;
        let b: Self = decode(k, bytes)?;
        check_name("participant_id", &b.participant_id).map_err(|r| invalid(k, r))?;
        check_name("meter_id", &b.meter_id).map_err(|r| invalid(k, r))?;
        PublicKey::from_bytes(&b.public_key).map_err(|e| invalid(k, e.to_string()))?;
        Ok(b)
    }

    /// The meter's key.
    pub fn key(&self) -> Option<PublicKey> {
        PublicKey::from_bytes(&self.public_key).ok()
    }
}

/// Body of a `meter_reading` entry: the signed reading byte for byte. Signed by the meter
/// `meter_id` registered for `participant_id` (a `meter` entry before it) or, without
/// `meter_id`, by the participant's own key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterReadingBody {
    /// The registered meter that signed it; absent: the participant signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_id: Option<String>,
    /// The participant whose connection point was measured.
    pub participant_id: String,
    /// The exact bytes the signer signed (opaque to the ledger).
    #[serde(with = "crate::hexser::vec")]
    pub payload: Vec<u8>,
    /// ed25519 signature over `payload`.
    #[serde(with = "crate::hexser::array")]
    pub signature: [u8; 64],
}

impl MeterReadingBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::MeterReading;
        let b: Self = decode(k, bytes)?;
        check_name("participant_id", &b.participant_id).map_err(|r| invalid(k, r))?;
        if let Some(m) = &b.meter_id {
            check_name("meter_id", m).map_err(|r| invalid(k, r))?;
        }
        Ok(b)
    }
}

/// Body of a `delivery_settlement` entry: interval T's metered delivery settled against its
/// clearing, appended once T's reading deadline has passed. The postings sum to exactly zero
/// (the append refuses the batch otherwise, the verifier checks it) and are indexed like a
/// settlement's; `delivery` and `rules` are the engine's, opaque to the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettlementBody {
    /// The engine's delivery result without its postings (positions, interval length).
    pub delivery: serde_json::Value,
    /// The interval, unix seconds; equals the entry's `interval_start`.
    pub interval_start: i64,
    /// The delivery payments, in order.
    pub postings: Vec<Posting>,
    /// Readings settled: the `meter_reading` entries for T before this one.
    pub readings: u64,
    /// [`readings_digest`] of those entries' seqs.
    #[serde(with = "crate::hexser::array")]
    pub readings_digest: [u8; 32],
    /// The delivery rules the engine applied.
    pub rules: serde_json::Value,
}

impl DeliverySettlementBody {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and checks a canonical body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let k = EntryKind::DeliverySettlement;
        let b: Self = decode(k, bytes)?;
        check_postings(k, &b.postings)?;
        Ok(b)
    }

    /// Sum of the postings (`None` on overflow).
    pub fn total(&self) -> Option<Amount> {
        postings_total(&self.postings)
    }
}

/// Domain separation of [`readings_digest`].
const READINGS_DIGEST_DOMAIN: &[u8] = b"baton readings v1\n";

/// The digest a `delivery_settlement` entry binds its readings with: SHA-256 of
/// `"baton readings v1\n"` followed by each `meter_reading` entry's seq, ascending, as 8 bytes
/// big-endian. `seqs` must be ascending; the caller sorts.
pub fn readings_digest(seqs: impl IntoIterator<Item = u64>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(READINGS_DIGEST_DOMAIN);
    for s in seqs {
        h.update(s.to_be_bytes());
    }
    h.finalize().into()
}

fn check_postings(k: EntryKind, postings: &[Posting]) -> Result<(), BodyError> {
    if postings.len() > POSTINGS_PER_ENTRY_MAX {
        return Err(invalid(
            k,
            format!("more than {POSTINGS_PER_ENTRY_MAX} postings"),
        ));
    }
    for p in postings {
        check_name("account", &p.account).map_err(|r| invalid(k, r))?;
        if let Some(m) = &p.memo {
            check_name("memo", m).map_err(|r| invalid(k, r))?;
        }
    }
    Ok(())
}

/// A body the ledger understands, parsed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KnownBody {
    Participant(ParticipantBody),
    Signed(SignedMessageBody),
    Settlement(SettlementBody),
    Correction(CorrectionBody),
    Gate(GateClosedBody),
    Meter(MeterBody),
    Reading(MeterReadingBody),
    Delivery(DeliverySettlementBody),
    Opaque,
}

/// Parses the body of a kind whose schema the ledger owns; other kinds are opaque.
pub(crate) fn parse_body(kind: EntryKind, bytes: &[u8]) -> Result<KnownBody, BodyError> {
    Ok(match kind {
        EntryKind::Participant => KnownBody::Participant(ParticipantBody::from_bytes(bytes)?),
        EntryKind::Order | EntryKind::Cancel => {
            KnownBody::Signed(SignedMessageBody::from_bytes(kind, bytes)?)
        }
        EntryKind::Settlement => KnownBody::Settlement(SettlementBody::from_bytes(bytes)?),
        EntryKind::Correction => KnownBody::Correction(CorrectionBody::from_bytes(bytes)?),
        EntryKind::GateClosed => KnownBody::Gate(GateClosedBody::from_bytes(bytes)?),
        EntryKind::Meter => KnownBody::Meter(MeterBody::from_bytes(bytes)?),
        EntryKind::MeterReading => KnownBody::Reading(MeterReadingBody::from_bytes(bytes)?),
        EntryKind::DeliverySettlement => {
            KnownBody::Delivery(DeliverySettlementBody::from_bytes(bytes)?)
        }
        _ => KnownBody::Opaque,
    })
}

impl NewEntry {
    /// A `participant` entry.
    pub fn participant(body: &ParticipantBody) -> Self {
        NewEntry::new(EntryKind::Participant, None, body.to_bytes())
    }

    /// An `order` entry.
    pub fn order(interval_start: Option<i64>, body: &SignedMessageBody) -> Self {
        NewEntry::new(EntryKind::Order, interval_start, body.to_bytes())
    }

    /// A `cancel` entry.
    pub fn cancel(interval_start: Option<i64>, body: &SignedMessageBody) -> Self {
        NewEntry::new(EntryKind::Cancel, interval_start, body.to_bytes())
    }

    /// A `settlement` entry for `body.interval_start`.
    pub fn settlement(body: &SettlementBody) -> Self {
        NewEntry::new(
            EntryKind::Settlement,
            Some(body.interval_start),
            body.to_bytes(),
        )
    }

    /// A `gate_closed` entry for `body.interval_start`.
    pub fn gate_closed(body: &GateClosedBody) -> Self {
        NewEntry::new(
            EntryKind::GateClosed,
            Some(body.interval_start),
            body.to_bytes(),
        )
    }

    /// A `meter` entry.
    pub fn meter(body: &MeterBody) -> Self {
        NewEntry::new(EntryKind::Meter, None, body.to_bytes())
    }

    /// A `meter_reading` entry for the reading's interval.
    pub fn meter_reading(interval_start: i64, body: &MeterReadingBody) -> Self {
        NewEntry::new(
            EntryKind::MeterReading,
            Some(interval_start),
            body.to_bytes(),
        )
    }

    /// A `delivery_settlement` entry for `body.interval_start`.
    pub fn delivery_settlement(body: &DeliverySettlementBody) -> Self {
        NewEntry::new(
            EntryKind::DeliverySettlement,
            Some(body.interval_start),
            body.to_bytes(),
        )
    }

    /// A `correction` entry.
    pub fn correction(interval_start: Option<i64>, body: &CorrectionBody) -> Self {
        NewEntry::new(EntryKind::Correction, interval_start, body.to_bytes())
    }
}

/// Per-interval sums, used to enforce and check the zero-sum rule.
pub(crate) type IntervalSums = BTreeMap<i64, Amount>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_have_one_spelling() {
        assert_eq!("12.50".parse::<Amount>().unwrap(), Amount::from_minor(1250));
        assert_eq!(Amount::from_minor(-5).to_string(), "-0.05");
        assert_eq!(Amount::from_minor(0).to_string(), "0.00");
        for bad in [
            "12.5", "12.500", "+1.00", "-0.00", "1e2", "1.0e0", " 1.00", "01.00",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
        assert!(Amount::from_decimal(Decimal::new(1, 3)).is_err());
        let negzero = Amount::from_decimal(Decimal::new(-0, 2)).unwrap();
        assert_eq!(negzero.to_string(), "0.00");
    }

    #[test]
    fn settlement_bytes_are_canonical_and_sorted() {
        let b = SettlementBody {
            interval_start: 300,
            postings: vec![
                Posting {
                    account: "a".into(),
                    amount: Amount::from_minor(150),
                    memo: None,
                },
                Posting {
                    account: "b".into(),
                    amount: Amount::from_minor(-150),
                    memo: Some("x".into()),
                },
            ],
        };
        let bytes = b.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"interval_start":300,"postings":[{"account":"a","amount":"1.50"},{"account":"b","amount":"-1.50","memo":"x"}]}"#
        );
        assert_eq!(SettlementBody::from_bytes(&bytes).unwrap(), b);
        assert_eq!(b.total(), Some(Amount::ZERO));
        // Whitespace, reordered keys, null options and short scales are refused.
        for bad in [
            r#"{ "interval_start":300,"postings":[]}"#,
            r#"{"postings":[],"interval_start":300}"#,
            r#"{"interval_start":300,"postings":[{"account":"a","amount":"1.50","memo":null}]}"#,
            r#"{"interval_start":300,"postings":[{"account":"a","amount":"1.5"}]}"#,
        ] {
            assert!(SettlementBody::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn metering_bodies_have_one_spelling() {
        let key = crate::key::OperatorKey::from_seed(&[4; 32]).public_key();
        let m = MeterBody {
            details: Some(serde_json::json!({"admin_nonce": 7})),
            meter_id: "m1".into(),
            participant_id: "bob".into(),
            public_key: key.to_bytes(),
        };
        assert_eq!(MeterBody::from_bytes(&m.to_bytes()).unwrap(), m);
        assert!(MeterBody::from_bytes(
            &MeterBody {
                meter_id: String::new(),
                ..m.clone()
            }
            .to_bytes()
        )
        .is_err());
        let r = MeterReadingBody {
            meter_id: None,
            participant_id: "bob".into(),
            payload: vec![1, 2],
            signature: [0; 64],
        };
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with(r#"{"participant_id":"bob","payload":"0102","signature":"#));
        assert_eq!(MeterReadingBody::from_bytes(text.as_bytes()).unwrap(), r);
        let d = DeliverySettlementBody {
            delivery: serde_json::json!({"positions": [{"node": "B", "account": "bob"}]}),
            interval_start: 300,
            postings: vec![Posting {
                account: "bob".into(),
                amount: Amount::from_minor(-5),
                memo: None,
            }],
            readings: 1,
            readings_digest: readings_digest([3]),
            rules: serde_json::json!({"b": "1", "a": "0.5"}),
        };
        let bytes = d.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        // Free-form parts are re-serialised with sorted keys.
        assert!(text.starts_with(
            r#"{"delivery":{"positions":[{"account":"bob","node":"B"}]},"interval_start":300,"#
        ));
        assert!(text.ends_with(r#""rules":{"a":"0.5","b":"1"}}"#));
        assert_eq!(DeliverySettlementBody::from_bytes(&bytes).unwrap(), d);
        assert_eq!(d.total(), Some(Amount::from_minor(-5)));
        // The digest covers the seqs in order, under its own domain.
        assert_ne!(readings_digest([1, 2]), readings_digest([2, 1]));
        assert_ne!(readings_digest([1, 2]), signed_book_digest([1, 2]));
    }

    #[test]
    fn participant_details_are_sorted_and_hex_is_lowercase() {
        let key = crate::key::OperatorKey::from_seed(&[3; 32]).public_key();
        let b = ParticipantBody {
            details: Some(serde_json::json!({"z": 1, "a": {"y": true, "b": "x"}})),
            participant_id: "p1".into(),
            public_key: key.to_bytes(),
            status: ParticipantStatus::Active,
        };
        let s = String::from_utf8(b.to_bytes()).unwrap();
        assert!(s.starts_with(
            r#"{"details":{"a":{"b":"x","y":true},"z":1},"participant_id":"p1","public_key":""#
        ));
        assert_eq!(ParticipantBody::from_bytes(s.as_bytes()).unwrap(), b);
        let upper = s.replace(&key.to_hex(), &key.to_hex().to_uppercase());
        assert!(ParticipantBody::from_bytes(upper.as_bytes()).is_err());
    }
}
