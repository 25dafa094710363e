//! Metered delivery in the ledger: how readings and an interval's delivery settlement are
//! recorded, and the checks the book binding makes of them.
//!
//! A participant (or a meter the operator registered for it, a `meter` entry) signs a
//! `baton.v1.MeterReading` of what its connection point imported and exported over interval T;
//! the live market records it as a `meter_reading` entry byte for byte
//! ([`baton_ledger::MeterReadingBody`]). Once T's reading deadline has passed, the scheduler
//! settles T's metered delivery against T's clearing with the engine
//! ([`baton_engine::delivery::settle_delivery`]) and appends one `delivery_settlement` entry
//! ([`delivery_entry`]): the readings it settled (count and [`baton_ledger::readings_digest`]
//! of their seqs), the rules, the engine's positions and the zero-sum postings.
//!
//! [`crate::book::Binding`] replays them and fails, naming the seq, on: a reading whose payload
//! disagrees with its entry (participant, meter, interval) or breaks the wire grammar
//! ([`baton_proto::wire::check_meter_reading`]); a nonce that does not increase for its signer
//! (the participant's key, or each meter: a sequence apart from order nonces); a reading from an
//! unknown participant or away from its registered node; a second reading for one participant,
//! node and interval; a reading for T before T is recorded (cleared) or after T's delivery
//! settlement; a delivery settlement for an interval not recorded, settled twice, or whose count
//! or digest is not exactly the readings for T before it; a delivery posting to an account that
//! is neither an admitted participant nor a system account (including
//! [`baton_engine::delivery::IMBALANCE_ACCOUNT`]). [`redeliver`] recomputes a delivery settlement
//! from the readings and compares byte for byte.

use baton_engine::delivery::{settle_delivery, Delivery, DeliveryRules, MeterReading};
use baton_engine::{Clearing, Market};
use baton_ledger::{readings_digest, Amount, DeliverySettlementBody, NewEntry, Posting};
use baton_proto::v1 as pb;
use baton_proto::wire::{self, CheckedReading};
use prost::Message;

use crate::record::RecordError;

/// A signed meter reading's bytes decoded and checked by the wire grammar.
pub fn decode_reading(payload: &[u8], interval_s: i64) -> Result<CheckedReading, String> {
    let r = pb::MeterReading::decode(payload)
        .map_err(|e| format!("payload is not a MeterReading: {e}"))?;
    wire::check_meter_reading(&r, interval_s, baton_engine::delivery::METER_KWH_MAX)
        .map_err(|e| e.to_string())
}

/// The engine's form of a checked reading: the participant's account is its id.
pub fn engine_reading(r: &CheckedReading) -> MeterReading {
    MeterReading {
        account: r.participant.as_str().to_string(),
        node: r.node.clone(),
        import_kwh: r.import_kwh,
        export_kwh: r.export_kwh,
    }
}

/// The `delivery_settlement` body of interval `interval`: `delivery` settled from the
/// `meter_reading` entries at `reading_seqs` (any order) under `rules`.
pub fn delivery_body(
    interval: i64,
    reading_seqs: &[u64],
    rules: &DeliveryRules,
    delivery: &Delivery,
) -> Result<DeliverySettlementBody, RecordError> {
    let mut seqs = reading_seqs.to_vec();
    seqs.sort_unstable();
    let mut positions = serde_json::to_value(delivery).expect("a delivery serialises");
    if let Some(m) = positions.as_object_mut() {
        m.remove("postings");
    }
    let postings = delivery
        .postings
        .iter()
        .map(|p| {
            Ok(Posting {
                account: p.account.clone(),
                amount: Amount::from_decimal(p.amount).map_err(|_| RecordError::Amount {
                    interval,
                    amount: p.amount.to_string(),
                })?,
                memo: (!p.memo.is_empty()).then(|| p.memo.clone()),
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(DeliverySettlementBody {
        delivery: positions,
        interval_start: interval,
        postings,
        readings: seqs.len() as u64,
        readings_digest: readings_digest(seqs.iter().copied()),
        rules: serde_json::to_value(rules).expect("rules serialise"),
    })
}

/// Settles interval `interval`'s metered delivery: the `delivery_settlement` entry for the
/// readings at `readings` (seq and reading, ascending by seq) against the interval's clearing.
pub fn delivery_entry(
    interval: i64,
    market: &Market,
    clearing: &Clearing,
    readings: &[(u64, MeterReading)],
    rules: &DeliveryRules,
) -> Result<(NewEntry, Delivery), RecordError> {
    let engine: Vec<MeterReading> = readings.iter().map(|(_, r)| r.clone()).collect();
    let d =
        settle_delivery(market, clearing, &engine, rules).map_err(|e| RecordError::Delivery {
            interval,
            reason: e.to_string(),
        })?;
    let seqs: Vec<u64> = readings.iter().map(|(s, _)| *s).collect();
    let body = delivery_body(interval, &seqs, rules, &d)?;
    Ok((NewEntry::delivery_settlement(&body), d))
}

/// One recorded delivery settlement rebuilt from the ledger, ready to recompute.
#[derive(Clone, Debug)]
pub struct BoundDelivery {
    /// Interval start.
    pub interval: i64,
    /// The readings the binding found for it before the settlement, ascending by seq.
    pub readings: Vec<(u64, MeterReading)>,
    /// The recorded body.
    pub body: Vec<u8>,
}

/// Recomputes a recorded delivery settlement from its readings and the interval's
/// (re-cleared) clearing, under the rules it records; the bytes must be identical. Returns
/// the postings checked.
pub fn redeliver(
    bound: &BoundDelivery,
    market: &Market,
    clearing: &Clearing,
) -> Result<usize, RecordError> {
    let interval = bound.interval;
    let recorded =
        DeliverySettlementBody::from_bytes(&bound.body).map_err(|e| RecordError::Delivery {
            interval,
            reason: e.to_string(),
        })?;
    let rules: DeliveryRules =
        serde_json::from_value(recorded.rules.clone()).map_err(|e| RecordError::Delivery {
            interval,
            reason: format!("recorded rules unreadable: {e}"),
        })?;
    let (entry, _) = delivery_entry(interval, market, clearing, &bound.readings, &rules)?;
    if entry.body != bound.body {
        return Err(RecordError::Mismatch {
            interval,
            what: "delivery settlement",
            detail: crate::record::first_difference(&bound.body, &entry.body),
        });
    }
    Ok(recorded.postings.len())
}
