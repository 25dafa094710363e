//! What both ends of the wire must agree on, written once: the participant and order id
//! formats, the decimal-string grammar, the meter reading grammar, which RPC carries which
//! admin command, and the spellings of roles and flexibility directions. The server validates with these; the SDKs
//! build with them.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::v1 as pb;
use pb::admin_request::Command;

/// Longest participant id, bytes. Order ids are `<participant>-<nonce>` (at most 20 digits),
/// so they stay within the engine's 128-byte id limit.
pub const PARTICIPANT_ID_BYTES_MAX: usize = 64;
/// Longest decimal string accepted, characters: 1e8 with 6 decimals and a sign is 16.
pub const DECIMAL_CHARS_MAX: usize = 32;

/// An id that is not well formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty or longer than [`PARTICIPANT_ID_BYTES_MAX`].
    #[error("must be 1 to {PARTICIPANT_ID_BYTES_MAX} bytes")]
    Length,
    /// A character outside the allowed set.
    #[error("{0:?} may only hold ASCII letters, digits, '_', '.' and '-'")]
    Characters(String),
    /// Not `<participant>-<nonce>`.
    #[error("{0:?} is not <participant>-<nonce>")]
    OrderIdShape(String),
}

/// A participant id: 1 to [`PARTICIPANT_ID_BYTES_MAX`] bytes of ASCII letters, digits, `_`,
/// `.` and `-` — characters safe in ledger account names (`participant:<id>`) and order ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(String);

impl ParticipantId {
    /// Checks `id`.
    pub fn parse(id: &str) -> Result<ParticipantId, IdError> {
        if id.is_empty() || id.len() > PARTICIPANT_ID_BYTES_MAX {
            return Err(IdError::Length);
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(IdError::Characters(id.to_string()));
        }
        Ok(ParticipantId(id.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ParticipantId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ParticipantId::parse(s)
    }
}

/// An order id: `<participant>-<nonce>`, unique because a participant's nonces strictly
/// increase. The nonce is the decimal digits after the last `-` (participant ids may hold
/// `-` themselves), without leading zeros.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderId {
    text: String,
    split: usize,
}

impl OrderId {
    /// The id of `participant`'s order with `nonce`.
    pub fn new(participant: &ParticipantId, nonce: u64) -> OrderId {
        let text = order_id(participant.as_str(), nonce);
        OrderId {
            split: participant.as_str().len(),
            text,
        }
    }

    /// Parses an id, checking the participant part and the nonce's single spelling.
    pub fn parse(id: &str) -> Result<OrderId, IdError> {
        let shape = || IdError::OrderIdShape(id.to_string());
        let (p, n) = id.rsplit_once('-').ok_or_else(shape)?;
        let participant = ParticipantId::parse(p).map_err(|_| shape())?;
        let nonce: u64 = n.parse().map_err(|_| shape())?;
        if nonce.to_string() != n {
            return Err(shape());
        }
        Ok(OrderId::new(&participant, nonce))
    }

    /// The participant part.
    pub fn participant(&self) -> &str {
        &self.text[..self.split]
    }

    /// The nonce part.
    pub fn nonce(&self) -> u64 {
        self.text[self.split + 1..]
            .parse()
            .expect("an OrderId's nonce was written by format! from a u64")
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The id, owned.
    pub fn into_string(self) -> String {
        self.text
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for OrderId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderId::parse(s)
    }
}

/// The one spelling of an order id, `<participant>-<nonce>`, for callers holding a participant
/// id as text (already checked, or about to be refused on its own account).
pub fn order_id(participant: &str, nonce: u64) -> String {
    format!("{participant}-{nonce}")
}

/// A decimal string that is not in the wire grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecimalError {
    /// The empty string.
    #[error("is empty")]
    Empty,
    /// Longer than [`DECIMAL_CHARS_MAX`].
    #[error("is longer than {DECIMAL_CHARS_MAX} characters")]
    TooLong,
    /// Not digits with an optional leading `-` and at most one inner `.`.
    #[error("{0:?} is not a decimal number (digits, optional '-' and '.')")]
    Malformed(String),
    /// Beyond what a `Decimal` holds.
    #[error("{0:?} is out of range")]
    OutOfRange(String),
    /// More fraction digits than the quantity's scale.
    #[error("{text:?} has more than {scale} decimal places")]
    TooManyPlaces {
        /// The text.
        text: String,
        /// The scale allowed.
        scale: u32,
    },
}

/// Parses a wire decimal: digits with an optional leading `-` and at most one `.` between
/// digits, at most `scale` fraction digits. Exponents, `NaN`, `inf`, spaces and `+` are
/// refused, so every accepted number means exactly what its digits say.
pub fn parse_decimal(text: &str, scale: u32) -> Result<Decimal, DecimalError> {
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    if text.len() > DECIMAL_CHARS_MAX {
        return Err(DecimalError::TooLong);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    if !well_formed {
        return Err(DecimalError::Malformed(text.to_string()));
    }
    let d =
        Decimal::from_str_exact(text).map_err(|_| DecimalError::OutOfRange(text.to_string()))?;
    if d.scale() > scale {
        return Err(DecimalError::TooManyPlaces {
            text: text.to_string(),
            scale,
        });
    }
    Ok(d)
}

/// The wire spelling of a decimal: no trailing zeros, never `-0`.
pub fn format_decimal(d: Decimal) -> String {
    let mut n = d.normalize();
    if n.is_zero() {
        n.set_sign_positive(true);
    }
    n.to_string()
}

/// The `AdminService` RPC that must carry `command` (a request signed for one command cannot
/// be replayed through another RPC).
pub fn admin_rpc_name(command: &Command) -> &'static str {
    match command {
        Command::RegisterParticipant(_) => "RegisterParticipant",
        Command::SuspendParticipant(_) => "SuspendParticipant",
        Command::LoadScenario(_) => "LoadScenario",
        Command::SetGridPrices(_) => "SetGridPrices",
        Command::PostFlexRequirement(_) => "PostFlexRequirement",
        Command::Pause(_) => "Pause",
        Command::Resume(_) => "Resume",
        Command::ClearNow(_) => "ClearNow",
        Command::Status(_) => "Status",
        Command::ListParticipants(_) => "ListParticipants",
        Command::ListIntervals(_) => "ListIntervals",
        Command::RegisterMeter(_) => "RegisterMeter",
    }
}

/// Largest serialized `MeterReading`, bytes: ids, two decimals and a nonce fit in 256; four
/// times that leaves room without letting a client make the ledger store kilobytes per reading.
pub const METER_READING_BYTES_MAX: usize = 1024;
/// Readings in one `SubmitMeterReadings` call: a gateway batching a feeder's meters for one
/// interval sends a few hundred; each is one ledger entry of the same append.
pub const METER_READINGS_PER_CALL_MAX: usize = 1024;
/// Fraction digits of a reading's kWh: the engine's quantity scale.
pub const METER_KWH_SCALE: u32 = 6;

/// A meter reading field that breaks the wire grammar: the field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field, e.g. `import_kwh`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn field(field: &'static str, reason: impl fmt::Display) -> FieldError {
    FieldError {
        field,
        reason: reason.to_string(),
    }
}

/// A meter reading whose every field follows the wire grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedReading {
    /// The measured participant.
    pub participant: ParticipantId,
    /// The interval measured.
    pub interval_start: i64,
    /// The node measured at (checked against the network by the caller).
    pub node: String,
    /// kWh drawn from the network, `0 ..= kwh_max`.
    pub import_kwh: Decimal,
    /// kWh fed into the network, `0 ..= kwh_max`.
    pub export_kwh: Decimal,
    /// The signer's nonce, `>= 1`.
    pub nonce: u64,
    /// The meter that signed it; `None`: the participant.
    pub meter_id: Option<ParticipantId>,
}

/// The grammar of a `MeterReading`, field by field in declaration order: `participant_id`
/// and `meter_id` are ids ([`ParticipantId`]'s characters and length); `interval_start` is
/// aligned to `interval_s`; `node` is not empty; `import_kwh` and `export_kwh` are wire
/// decimals with at most [`METER_KWH_SCALE`] places, not negative and at most `kwh_max` (the
/// engine's `delivery::METER_KWH_MAX`); `nonce` is at least 1. The server and the audit check
/// readings with this one function.
pub fn check_meter_reading(
    r: &pb::MeterReading,
    interval_s: i64,
    kwh_max: Decimal,
) -> Result<CheckedReading, FieldError> {
    let participant =
        ParticipantId::parse(&r.participant_id).map_err(|e| field("participant_id", e))?;
    if interval_s <= 0 || r.interval_start.rem_euclid(interval_s) != 0 {
        return Err(field(
            "interval_start",
            format!(
                "{} is not aligned to the {interval_s} s interval",
                r.interval_start
            ),
        ));
    }
    if r.node.is_empty() {
        return Err(field("node", "is empty"));
    }
    let kwh = |name: &'static str, text: &str| -> Result<Decimal, FieldError> {
        let d = parse_decimal(text, METER_KWH_SCALE).map_err(|e| field(name, e))?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(field(name, format!("{text} is negative")));
        }
        if d > kwh_max {
            return Err(field(
                name,
                format!("{text} exceeds the largest reading of {kwh_max} kWh"),
            ));
        }
        Ok(d)
    };
    let import_kwh = kwh("import_kwh", &r.import_kwh)?;
    let export_kwh = kwh("export_kwh", &r.export_kwh)?;
    if r.nonce == 0 {
        return Err(field("nonce", "must be at least 1"));
    }
    let meter_id = r
        .meter_id
        .as_deref()
        .map(|m| ParticipantId::parse(m).map_err(|e| field("meter_id", e)))
        .transpose()?;
    Ok(CheckedReading {
        participant,
        interval_start: r.interval_start,
        node: r.node.clone(),
        import_kwh,
        export_kwh,
        nonce: r.nonce,
        meter_id,
    })
}

/// A role or direction spelled in a way the wire does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not one of {expected}")]
pub struct UnknownName {
    /// The text.
    pub text: String,
    /// The accepted spellings.
    pub expected: &'static str,
}

impl pb::ParticipantRole {
    /// Every role a participant can hold.
    pub const ALL: [pb::ParticipantRole; 4] = [
        pb::ParticipantRole::Prosumer,
        pb::ParticipantRole::NetworkOperator,
        pb::ParticipantRole::GridConnection,
        pb::ParticipantRole::Regulator,
    ];

    /// The name the ledger records and the deprecated string field carries.
    pub fn name(self) -> &'static str {
        match self {
            pb::ParticipantRole::Unspecified => "unspecified",
            pb::ParticipantRole::Prosumer => "prosumer",
            pb::ParticipantRole::NetworkOperator => "network_operator",
            pb::ParticipantRole::GridConnection => "grid_connection",
            pb::ParticipantRole::Regulator => "regulator",
        }
    }

    /// Parses [`pb::ParticipantRole::name`]'s spelling.
    pub fn from_name(text: &str) -> Result<pb::ParticipantRole, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| UnknownName {
                text: text.to_string(),
                expected: "prosumer, network_operator, grid_connection, regulator",
            })
    }
}

impl pb::FlexDirection {
    /// `up` or `down`, as the deprecated string field spells it.
    pub fn name(self) -> &'static str {
        match self {
            pb::FlexDirection::Unspecified => "unspecified",
            pb::FlexDirection::Up => "up",
            pb::FlexDirection::Down => "down",
        }
    }

    /// Parses `up` or `down`.
    pub fn from_name(text: &str) -> Result<pb::FlexDirection, UnknownName> {
        match text {
            "up" => Ok(pb::FlexDirection::Up),
            "down" => Ok(pb::FlexDirection::Down),
            _ => Err(UnknownName {
                text: text.to_string(),
                expected: "up, down",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_round_trip_and_have_one_spelling() {
        let p = ParticipantId::parse("home-7.a_b").unwrap();
        let id = OrderId::new(&p, 1_700_000_000_000_123);
        assert_eq!(id.as_str(), "home-7.a_b-1700000000000123");
        let back = OrderId::parse(id.as_str()).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.participant(), "home-7.a_b");
        assert_eq!(back.nonce(), 1_700_000_000_000_123);
        for bad in [
            "p1",
            "p1-",
            "-5",
            "p1-05",
            "p1-+5",
            "p1-5x",
            "p 1-5",
            "p1-18446744073709551616",
        ] {
            assert!(OrderId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn participant_ids_are_bounded_and_plain() {
        assert!(ParticipantId::parse(&"a".repeat(PARTICIPANT_ID_BYTES_MAX)).is_ok());
        assert_eq!(
            ParticipantId::parse(&"a".repeat(PARTICIPANT_ID_BYTES_MAX + 1)),
            Err(IdError::Length)
        );
        assert_eq!(ParticipantId::parse(""), Err(IdError::Length));
        for bad in ["a:b", "a b", "é", "a/b", "a\n"] {
            assert!(
                matches!(ParticipantId::parse(bad), Err(IdError::Characters(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn decimals_follow_the_grammar() {
        assert_eq!(parse_decimal("-12.50", 2).unwrap(), Decimal::new(-1250, 2));
        assert_eq!(parse_decimal("7", 0).unwrap(), Decimal::from(7));
        assert!(matches!(
            parse_decimal("0.125", 2),
            Err(DecimalError::TooManyPlaces { scale: 2, .. })
        ));
        assert_eq!(parse_decimal("", 2), Err(DecimalError::Empty));
        assert_eq!(
            parse_decimal(&"1".repeat(33), 2),
            Err(DecimalError::TooLong)
        );
        for bad in [
            "1e3", "NaN", "inf", " 1", "+1", ".5", "5.", "1.2.3", "-", "--1",
        ] {
            assert!(
                matches!(parse_decimal(bad, 6), Err(DecimalError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_decimal("99999999999999999999999999999999", 0),
            Err(DecimalError::OutOfRange(_))
        ));
        assert_eq!(format_decimal(Decimal::new(-0, 3)), "0");
        assert_eq!(format_decimal(Decimal::new(12_500, 3)), "12.5");
    }

    #[test]
    fn meter_readings_follow_the_grammar() {
        let ok = pb::MeterReading {
            participant_id: "p1".into(),
            interval_start: 600,
            node: "n1".into(),
            import_kwh: "1.25".into(),
            export_kwh: "0".into(),
            nonce: 7,
            meter_id: Some("m-1".into()),
        };
        let max = Decimal::from(1000);
        let c = check_meter_reading(&ok, 300, max).unwrap();
        assert_eq!(c.import_kwh, Decimal::new(125, 2));
        assert_eq!(c.meter_id.unwrap().as_str(), "m-1");
        let bad = |f: fn(&mut pb::MeterReading), field: &str| {
            let mut r = ok.clone();
            f(&mut r);
            let e = check_meter_reading(&r, 300, max).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(|r| r.participant_id = "a b".into(), "participant_id");
        bad(|r| r.interval_start = 601, "interval_start");
        bad(|r| r.node.clear(), "node");
        bad(|r| r.import_kwh = "-1".into(), "import_kwh");
        bad(|r| r.import_kwh = "1e3".into(), "import_kwh");
        bad(|r| r.export_kwh = "1000.000001".into(), "export_kwh");
        bad(|r| r.export_kwh = "0.0000001".into(), "export_kwh");
        bad(|r| r.export_kwh = String::new(), "export_kwh");
        bad(|r| r.nonce = 0, "nonce");
        bad(|r| r.meter_id = Some(String::new()), "meter_id");
        // "-0" is zero, not negative.
        let mut z = ok.clone();
        z.export_kwh = "-0".into();
        assert!(check_meter_reading(&z, 300, max).is_ok());
    }

    #[test]
    fn role_and_direction_names_round_trip() {
        for r in pb::ParticipantRole::ALL {
            assert_eq!(pb::ParticipantRole::from_name(r.name()), Ok(r));
        }
        assert!(pb::ParticipantRole::from_name("admin").is_err());
        assert!(pb::ParticipantRole::from_name("unspecified").is_err());
        for d in [pb::FlexDirection::Up, pb::FlexDirection::Down] {
            assert_eq!(pb::FlexDirection::from_name(d.name()), Ok(d));
        }
        assert!(pb::FlexDirection::from_name("sideways").is_err());
    }
}
