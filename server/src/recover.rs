//! Rebuilds the market's state from the ledger on start: the ledger is the record, memory is a
//! cache of it.

use std::collections::BTreeMap;

use baton_engine::MarketSpec;
use baton_ledger::{
    EntryKind, GateClosedBody, Ledger, LedgerError, ParticipantBody, ParticipantStatus,
    SignedMessageBody, ENTRIES_PER_READ_MAX,
};
use baton_proto::v1 as pb;
use ed25519_dalek::VerifyingKey;
use prost::Message;

use super::state::{
    MarketState, OrderRecord, OrderStatus, Participant, ParticipantDetails, Product,
};

/// What the rebuild read, beyond the market state.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) entries: u64,
    /// The seq of the last entry read (0: an empty ledger).
    pub(crate) last_seq: u64,
    /// The highest admin nonce a recorded operator command carried: the server refuses every
    /// admin request at or below it, so a request captured before a restart cannot be
    /// replayed after it.
    pub(crate) admin_nonce: u64,
    pub(crate) index: LedgerIndex,
}

/// Where things are in the ledger, for the operator's listings and the network version.
#[derive(Debug, Default)]
pub(crate) struct LedgerIndex {
    /// The seq of the entry that installed the network in force (0: none).
    pub(crate) network_seq: u64,
    /// Every recorded (cleared) interval.
    pub(crate) intervals: BTreeMap<i64, IntervalMeta>,
    /// Intervals whose delivery is settled → their `delivery_settlement` entry.
    pub(crate) deliveries: BTreeMap<i64, u64>,
}

/// Where a cleared interval's entries are, and how long its clearing took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IntervalMeta {
    /// Its `interval_input` entry.
    pub(crate) first_seq: u64,
    /// Its `settlement` entry.
    pub(crate) last_seq: u64,
    /// Build, solve and settle, wall milliseconds. The ledger does not record timings (they
    /// would make the record vary between runs), so this is known only for intervals this
    /// process cleared; `None` for those rebuilt from the ledger.
    pub(crate) clearing_ms: Option<u32>,
}

/// A `market_event` entry's body. Fields are declared in key order so the JSON is canonical.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct MarketEvent {
    /// The nonce of the operator's request that caused the event, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) admin_nonce: Option<u64>,
    /// The admin RPC that caused the event, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<String>,
    pub(crate) event: String,
}

/// The `details` key of a `participant` entry that carries the admin nonce of the operator's
/// request that wrote it.
pub(crate) const ADMIN_NONCE_DETAIL: &str = "admin_nonce";

pub(crate) async fn rebuild(
    ledger: &Ledger,
    st: &mut MarketState,
) -> Result<Recovered, LedgerError> {
    rebuild_with(ledger, st, |_| {}).await
}

/// [`rebuild`], handing every entry to `each` too (a follower's replica).
pub(crate) async fn rebuild_with(
    ledger: &Ledger,
    st: &mut MarketState,
    mut each: impl FnMut(&baton_ledger::Entry),
) -> Result<Recovered, LedgerError> {
    let mut out = Recovered::default();
    let mut from = 1u64;
    loop {
        let page = ledger
            .entries(from, from.saturating_add(ENTRIES_PER_READ_MAX - 1))
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        from = last.seq + 1;
        for e in &page {
            out.entries += 1;
            out.last_seq = e.seq;
            apply(st, e.seq, e.kind, e.interval_start, &e.body);
            index(
                &mut out.index,
                &mut out.admin_nonce,
                e.seq,
                e.kind,
                e.interval_start,
                &e.body,
            );
            each(e);
        }
    }
    Ok(out)
}

/// Notes the admin nonce an entry carries and where networks and intervals are recorded.
pub(crate) fn index(
    index: &mut LedgerIndex,
    admin_nonce: &mut u64,
    seq: u64,
    kind: EntryKind,
    interval: Option<i64>,
    body: &[u8],
) {
    let nonce = match kind {
        EntryKind::Participant => ParticipantBody::from_bytes(body)
            .ok()
            .and_then(|b| b.details)
            .and_then(|d| d.get(ADMIN_NONCE_DETAIL).and_then(|n| n.as_u64())),
        EntryKind::MarketEvent => serde_json::from_slice::<MarketEvent>(body)
            .ok()
            .and_then(|e| e.admin_nonce),
        EntryKind::Network => {
            index.network_seq = seq;
            None
        }
        EntryKind::IntervalInput => {
            if let Some(s) = interval {
                index.intervals.insert(
                    s,
                    IntervalMeta {
                        first_seq: seq,
                        last_seq: seq,
                        clearing_ms: None,
                    },
                );
            }
            None
        }
        EntryKind::Settlement => {
            if let Some(m) = interval.and_then(|s| index.intervals.get_mut(&s)) {
                m.last_seq = seq;
            }
            None
        }
        EntryKind::DeliverySettlement => {
            if let Some(s) = interval {
                index.deliveries.insert(s, seq);
            }
            None
        }
        EntryKind::Meter => baton_ledger::MeterBody::from_bytes(body)
            .ok()
            .and_then(|b| b.details)
            .and_then(|d| d.get(ADMIN_NONCE_DETAIL).and_then(|n| n.as_u64())),
        _ => None,
    };
    *admin_nonce = (*admin_nonce).max(nonce.unwrap_or(0));
}

/// Applies one entry. Entries this server did not write (or cannot read) are skipped with a
/// warning: they stay in the ledger for the auditor, but cannot make the market refuse to start.
pub(crate) fn apply(
    st: &mut MarketState,
    seq: u64,
    kind: EntryKind,
    interval: Option<i64>,
    body: &[u8],
) {
    match kind {
        EntryKind::Participant => {
            let Ok(b) = ParticipantBody::from_bytes(body) else {
                tracing::warn!(seq, "participant entry unreadable");
                return;
            };
            let details: Option<ParticipantDetails> = b
                .details
                .clone()
                .and_then(|d| serde_json::from_value(d).ok());
            let (Some(details), Ok(key)) = (details, VerifyingKey::from_bytes(&b.public_key))
            else {
                tracing::warn!(seq, "participant entry without node details");
                return;
            };
            st.participants.insert(
                b.participant_id.clone(),
                Participant {
                    key,
                    node: details.node,
                    roles: details.roles,
                    capacity_kw: details.capacity_kw,
                    active: b.status == ParticipantStatus::Active,
                },
            );
        }
        EntryKind::Network => match serde_json::from_slice::<MarketSpec>(body) {
            Ok(spec) => {
                if let Err(e) = st.set_network(spec) {
                    tracing::warn!(seq, error = %e, "network entry refused by the engine");
                }
            }
            Err(e) => tracing::warn!(seq, error = %e, "network entry unreadable"),
        },
        EntryKind::Order => {
            let Some((signed, order)) = SignedMessageBody::from_bytes(kind, body)
                .ok()
                .and_then(|s| pb::Order::decode(s.payload.as_slice()).ok().map(|o| (s, o)))
            else {
                tracing::warn!(seq, "order entry unreadable");
                return;
            };
            let nonce = st.nonces.entry(signed.participant_id.clone()).or_default();
            *nonce = (*nonce).max(order.nonce);
            let Some(record) = record_from_wire(&signed.payload) else {
                tracing::warn!(seq, "order entry with unreadable fields");
                return;
            };
            *st.open_per_participant
                .entry(record.participant.clone())
                .or_default() += 1;
            *st.per_interval.entry(record.interval_start).or_default() += 1;
            st.insert_order(record, seq);
        }
        EntryKind::Cancel => {
            let Some(req) = SignedMessageBody::from_bytes(kind, body)
                .ok()
                .and_then(|s| pb::CancelRequest::decode(s.payload.as_slice()).ok())
            else {
                tracing::warn!(seq, "cancel entry unreadable");
                return;
            };
            let nonce = st.nonces.entry(req.participant_id.clone()).or_default();
            *nonce = (*nonce).max(req.nonce);
            st.apply_cancel(&req.order_id);
        }
        EntryKind::GateClosed => match GateClosedBody::from_bytes(body) {
            Ok(g) => {
                // Nothing for a gated interval is accepted any more, whatever the clock says.
                st.closed_through = st.closed_through.max(g.interval_start);
                st.gated.insert(g.interval_start, seq);
            }
            Err(e) => tracing::warn!(seq, error = %e, "gate_closed entry unreadable"),
        },
        EntryKind::IntervalInput => {
            if let Some(s) = interval {
                st.cleared.insert(s);
                st.gated.remove(&s);
                st.freeze(s);
            }
        }
        EntryKind::Settlement => {
            if let Some(s) = interval {
                st.metering.cleared(s);
            }
        }
        EntryKind::DeliverySettlement => {
            if let Some(s) = interval {
                st.metering.settled(s);
            }
        }
        EntryKind::Meter => match baton_ledger::MeterBody::from_bytes(body) {
            Ok(m) => match VerifyingKey::from_bytes(&m.public_key) {
                Ok(key) => {
                    st.metering
                        .meters
                        .insert((m.participant_id, m.meter_id), key);
                }
                Err(_) => tracing::warn!(seq, "meter entry with an unreadable key"),
            },
            Err(e) => tracing::warn!(seq, error = %e, "meter entry unreadable"),
        },
        EntryKind::MeterReading => {
            let interval_s = st
                .network
                .as_ref()
                .map_or(0, |n| i64::from(n.interval_minutes) * 60);
            let Some(r) = baton_ledger::MeterReadingBody::from_bytes(body)
                .ok()
                .and_then(|b| baton_audit::delivery::decode_reading(&b.payload, interval_s).ok())
            else {
                tracing::warn!(seq, "meter_reading entry unreadable");
                return;
            };
            let signer = (
                r.participant.as_str().to_string(),
                r.meter_id.as_ref().map(|m| m.to_string()),
            );
            st.metering.insert(
                r.interval_start,
                seq,
                signer,
                r.nonce,
                baton_audit::delivery::engine_reading(&r),
            );
        }
        EntryKind::MarketEvent => {
            let Ok(ev) = serde_json::from_slice::<MarketEvent>(body) else {
                return;
            };
            match ev.event.as_str() {
                super::metering::DELIVERY_NOT_SETTLED => {
                    if let Some(s) = interval {
                        st.metering.settled(s);
                    }
                }
                "pause" => st.paused = true,
                "resume" => st.paused = false,
                "interval_not_cleared" => {
                    if let Some(s) = interval {
                        st.cleared.insert(s);
                        st.gated.remove(&s);
                        st.freeze(s);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// The record of an order as it was accepted (its fields passed intake then), read by the
/// audit's one decoding of signed order bytes.
pub(crate) fn record_from_wire(payload: &[u8]) -> Option<OrderRecord> {
    let o = baton_audit::book::SignedOrder::decode(payload).ok()?;
    Some(OrderRecord {
        id: o.id,
        participant: o.participant,
        interval_start: o.interval_start,
        node: o.node,
        side: o.side,
        product: match o.product {
            baton_audit::book::Product::Energy => Product::Energy,
            baton_audit::book::Product::Flex(d) => Product::Flex(d),
        },
        blocks: o.blocks,
        device: o.device,
        status: OrderStatus::Open,
        ledger_seq: 0,
        accepted: Vec::new(),
        accepted_total: None,
    })
}
