//! Cleared intervals in the ledger.
//!
//! An interval's book is frozen by a `gate_closed` entry ([`signed_gate`] for the live market's
//! signed orders, [`operator_gate`] for a book the operator entered), appended before clearing.
//! The cleared interval is then three entries appended in one transaction (with the checkpoint
//! that ends every append):
//!
//! 1. `interval_input` — JSON `{"format": "baton-interval-input/v2", "market": …,
//!    "rounding": bool}`: whether numbers were rounded to the fixed scales on the way in (study
//!    files) or had to be exact (scenarios, the wire), and — only for an operator-entered book
//!    — the whole market as cleared. A signed book is not repeated: it is the signed orders the
//!    gate binds, in the network entry the gate names ([`crate::book`]).
//! 2. `interval_result` — the `nodal-auction-result/v1` JSON of the clearing (no timings), the
//!    exact bytes `baton clear` writes.
//! 3. `settlement` — the postings, zero-sum, in the ledger's own settlement schema.
//!
//! [`reclear`] re-runs the clearing of the market [`crate::book::Binding`] rebuilt from the
//! ledger and checks entries 2 and 3 byte for byte.

use baton_engine::{clear, settle, study, Clearing, Market, MarketSpec, Settlement};
use baton_ledger::{
    signed_book_digest, Amount, BookSource, EntryKind, GateClosedBody, NewEntry, Posting,
    SettlementBody,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format tag of an `interval_input` body.
pub const INTERVAL_INPUT_FORMAT: &str = "baton-interval-input/v2";

/// The body of an `interval_input` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalInput {
    /// [`INTERVAL_INPUT_FORMAT`].
    pub format: String,
    /// The market as cleared, for a book the operator entered; absent for signed books.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<MarketSpec>,
    /// Whether numbers were rounded to the fixed scales ([`Market::new_rounding`]).
    pub rounding: bool,
}

/// SHA-256 of the canonical JSON of an operator-entered market: what its gate binds.
pub fn operator_book_digest(market: &MarketSpec) -> [u8; 32] {
    let bytes = serde_json::to_vec(market).expect("a market spec serialises");
    Sha256::digest(&bytes).into()
}

/// The `gate_closed` entry freezing interval `interval`'s signed book: the order entries at
/// `order_seqs` (any order), cleared in the network entry at `network_seq`.
pub fn signed_gate(interval: i64, network_seq: u64, order_seqs: &[u64]) -> NewEntry {
    let mut seqs = order_seqs.to_vec();
    seqs.sort_unstable();
    NewEntry::gate_closed(&GateClosedBody {
        book_digest: signed_book_digest(seqs.iter().copied()),
        interval_start: interval,
        network_seq,
        orders: seqs.len() as u64,
        source: BookSource::Signed,
    })
}

/// The `gate_closed` entry of a book the operator entered (`market` carries it).
pub fn operator_gate(interval: i64, market: &MarketSpec) -> NewEntry {
    NewEntry::gate_closed(&GateClosedBody {
        book_digest: operator_book_digest(market),
        interval_start: interval,
        network_seq: 0,
        orders: (market.orders.len() + market.flex_offers.len()) as u64,
        source: BookSource::Operator,
    })
}

/// Why an interval could not be recorded or re-cleared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The recorded input no longer validates.
    #[error("interval {interval}: recorded market is invalid: {source}")]
    Invalid {
        /// Interval start.
        interval: i64,
        /// The validation error.
        source: baton_engine::MarketError,
    },
    /// Clearing failed.
    #[error("interval {interval}: clearing failed: {source}")]
    Clear {
        /// Interval start.
        interval: i64,
        /// The clearing error.
        source: baton_engine::ClearError,
    },
    /// An amount cannot be represented in the ledger.
    #[error("interval {interval}: amount {amount} is not a ledger amount")]
    Amount {
        /// Interval start.
        interval: i64,
        /// The amount.
        amount: String,
    },
    /// The engine refused to settle an interval's metered delivery.
    #[error("interval {interval}: delivery settlement failed: {reason}")]
    Delivery {
        /// Interval start.
        interval: i64,
        /// The engine's reason.
        reason: String,
    },
    /// Re-clearing gave something else than was recorded.
    #[error("interval {interval}: {what} differs from the recording{detail}")]
    Mismatch {
        /// Interval start.
        interval: i64,
        /// `result` or `settlement`.
        what: &'static str,
        /// Where the first difference is.
        detail: String,
    },
}

/// The result JSON recorded for a clearing: compact ([`study::write_result_compact`]).
pub fn result_bytes(market: &Market, clearing: &Clearing, settlement: &Settlement) -> Vec<u8> {
    study::write_result_compact(clearing, settlement, market.participant_order_count())
}

/// The result bytes a re-clear compares with `recorded`: compact, or — for an interval recorded
/// before results were compact, whose bytes begin `{` and a newline — the pretty text of the
/// same result. Either way the comparison is byte for byte.
fn result_bytes_like(
    recorded: &[u8],
    market: &Market,
    clearing: &Clearing,
    settlement: &Settlement,
) -> Vec<u8> {
    if recorded.starts_with(b"{\n") {
        study::write_result(clearing, settlement, market.participant_order_count(), None)
            .into_bytes()
    } else {
        result_bytes(market, clearing, settlement)
    }
}

// The engine settles money at `MONEY_SCALE` decimals and the ledger records amounts at exactly
// `AMOUNT_SCALE`: were they to differ, every settlement would be refused (or, at a larger
// ledger scale, silently padded) when recorded. This crate sees both, so it ties them here.
const _: () = assert!(
    baton_engine::units::MONEY_SCALE == baton_ledger::AMOUNT_SCALE,
    "the engine's MONEY_SCALE must equal the ledger's AMOUNT_SCALE"
);

/// The ledger settlement body for an engine settlement.
pub fn settlement_body(interval: i64, s: &Settlement) -> Result<SettlementBody, RecordError> {
    let postings = s
        .postings
        .iter()
        .map(|p| {
            Ok(Posting {
                account: p.account.clone(),
                amount: Amount::from_decimal(p.amount).map_err(|_| RecordError::Amount {
                    interval,
                    amount: p.amount.to_string(),
                })?,
                memo: Some(p.memo.clone()),
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(SettlementBody {
        interval_start: interval,
        postings,
    })
}

/// The three entries that record one cleared interval. `operator_market` is the market of an
/// operator-entered book (its gate is [`operator_gate`]); `None` for a signed book.
pub fn interval_entries(
    interval: i64,
    operator_market: Option<&MarketSpec>,
    rounding: bool,
    market: &Market,
    clearing: &Clearing,
    settlement: &Settlement,
) -> Result<Vec<NewEntry>, RecordError> {
    let input = IntervalInput {
        format: INTERVAL_INPUT_FORMAT.to_string(),
        market: operator_market.cloned(),
        rounding,
    };
    let input_bytes = serde_json::to_vec(&input).expect("a market spec serialises");
    Ok(vec![
        NewEntry::new(EntryKind::IntervalInput, Some(interval), input_bytes),
        NewEntry::new(
            EntryKind::IntervalResult,
            Some(interval),
            result_bytes(market, clearing, settlement),
        ),
        NewEntry::settlement(&settlement_body(interval, settlement)?),
    ])
}

/// What a re-clear found for one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recleared {
    /// Interval start.
    pub interval: i64,
    /// Orders in the book.
    pub orders: usize,
    /// Postings checked.
    pub postings: usize,
    /// Postings of the interval's delivery settlement checked, once it is recorded.
    pub delivery_postings: Option<usize>,
}

/// Re-clears one interval from the market the ledger binds it to (`spec`, see
/// [`crate::book::BoundInterval`]) and checks the recorded result and settlement are identical.
pub fn reclear(
    interval: i64,
    spec: &MarketSpec,
    rounding: bool,
    result: &[u8],
    settlement: &[u8],
) -> Result<Recleared, RecordError> {
    reclear_keeping(interval, spec, rounding, result, settlement).map(|(r, _, _)| r)
}

/// [`reclear`], also handing back the market and its clearing (what the interval's delivery
/// settlement is recomputed against, [`crate::delivery::redeliver`]).
pub fn reclear_keeping(
    interval: i64,
    spec: &MarketSpec,
    rounding: bool,
    result: &[u8],
    settlement: &[u8],
) -> Result<(Recleared, Market, Clearing), RecordError> {
    let market = if rounding {
        Market::new_rounding(spec)
    } else {
        Market::new(spec)
    }
    .map_err(|source| RecordError::Invalid { interval, source })?;
    let (clearing, _) = clear(&market).map_err(|source| RecordError::Clear { interval, source })?;
    let s = settle(&market, &clearing);
    let again = result_bytes_like(result, &market, &clearing, &s);
    if again != result {
        return Err(RecordError::Mismatch {
            interval,
            what: "result",
            detail: first_difference(result, &again),
        });
    }
    let body = settlement_body(interval, &s)?;
    let recorded = NewEntry::settlement(&body).body;
    if recorded != settlement {
        return Err(RecordError::Mismatch {
            interval,
            what: "settlement",
            detail: first_difference(settlement, &recorded),
        });
    }
    let r = Recleared {
        interval,
        orders: market.participant_order_count(),
        postings: body.postings.len(),
        delivery_postings: None,
    };
    Ok((r, market, clearing))
}

/// Where two recorded texts first differ: the byte offset and, from each, the text around it
/// from the record it falls in (the last `{` before it, at most 80 bytes back) to 40 bytes on,
/// e.g. ` at byte 212: recorded "{\"id\":\"B\",\"lmp\":0.450000,…" but re-cleared "…0.350000…"`.
pub(crate) fn first_difference(recorded: &[u8], again: &[u8]) -> String {
    const BACK_BYTES_MAX: usize = 80;
    const ON_BYTES: usize = 40;
    let Some(i) = recorded
        .iter()
        .zip(again)
        .position(|(x, y)| x != y)
        .or_else(|| (recorded.len() != again.len()).then(|| recorded.len().min(again.len())))
    else {
        return String::new();
    };
    let from = i.saturating_sub(BACK_BYTES_MAX);
    let start = recorded[from..i]
        .iter()
        .rposition(|&b| b == b'{')
        .map_or(from, |k| from + k);
    let window = |t: &[u8]| {
        let end = (i + ON_BYTES).min(t.len());
        String::from_utf8_lossy(&t[start.min(end)..end]).into_owned()
    };
    format!(
        " at byte {i}: recorded {:?} but re-cleared {:?} ({} and {} bytes)",
        window(recorded),
        window(again),
        recorded.len(),
        again.len()
    )
}
