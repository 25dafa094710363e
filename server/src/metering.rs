//! Metered delivery: reading intake (`SubmitMeterReadings`) and the settlement of each
//! interval's delivery once its reading deadline has passed.
//!
//! A reading for interval T is accepted from the moment T ends until `meter_deadline_s` later,
//! only if T was cleared, once per participant, node and interval, signed by the participant's
//! key or a meter the operator registered for it, with a nonce above every earlier reading of
//! that signer. Each is durable in the ledger (`meter_reading`) before it is answered. When T's
//! deadline passes the scheduler appends T's `delivery_settlement`
//! (`baton_audit::delivery::delivery_entry`) from exactly the readings recorded for T;
//! [`Shared::metering`] keeps intake and settlement from interleaving, so no reading for T lands
//! after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use baton_engine::delivery::MeterReading;
use baton_engine::{Clearing, Market};
use baton_ledger::{EntryKind, MeterReadingBody, NewEntry};
use baton_proto::v1 as pb;
use baton_proto::wire::{self, METER_READINGS_PER_CALL_MAX, METER_READING_BYTES_MAX};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use tonic::Status;

use super::error::{invalid, ServiceError};
use super::recover::MarketEvent;
use super::state::{MarketState, Timing};
use super::Shared;

/// A cleared interval's market and clearing, held until its delivery is settled.
pub(crate) struct Cleared {
    pub(crate) market: Market,
    pub(crate) clearing: Clearing,
}

/// Who signs a reading: the participant (`None`) or one of its registered meters.
pub(crate) type Signer = (String, Option<String>);

/// Meters, reading nonces and the readings of intervals whose delivery is not settled yet.
#[derive(Debug, Default)]
pub(crate) struct Metering {
    /// (participant, meter id) → the meter's key.
    pub(crate) meters: HashMap<(String, String), VerifyingKey>,
    /// The last reading nonce per signer (reserved once a reading passed its checks).
    pub(crate) nonces: HashMap<Signer, u64>,
    /// Recorded readings per interval, ascending by seq.
    pub(crate) readings: BTreeMap<i64, Vec<(u64, MeterReading)>>,
    /// (participant, node) of every reading recorded or on its way, per interval.
    pub(crate) keys: BTreeMap<i64, HashSet<(String, String)>>,
    /// Cleared intervals whose delivery is not settled yet: they accept readings.
    pub(crate) awaiting: BTreeSet<i64>,
    /// Intervals whose delivery is settled (or could not be).
    pub(crate) delivered: BTreeSet<i64>,
}

impl Metering {
    /// Notes that interval `t` is recorded as cleared: its delivery is due later.
    pub(crate) fn cleared(&mut self, t: i64) {
        if !self.delivered.contains(&t) {
            self.awaiting.insert(t);
        }
    }

    /// Notes that interval `t`'s delivery is settled: nothing more for it is accepted.
    pub(crate) fn settled(&mut self, t: i64) {
        self.delivered.insert(t);
        self.awaiting.remove(&t);
        self.readings.remove(&t);
        self.keys.remove(&t);
    }

    /// Records a durable reading (at recovery, or once appended).
    pub(crate) fn insert(&mut self, t: i64, seq: u64, signer: Signer, nonce: u64, r: MeterReading) {
        let last = self.nonces.entry(signer).or_default();
        *last = (*last).max(nonce);
        self.keys
            .entry(t)
            .or_default()
            .insert((r.account.clone(), r.node.clone()));
        self.readings.entry(t).or_default().push((seq, r));
    }
}

/// A reading that passed every check, with the exact signed message to record.
#[derive(Debug)]
pub(crate) struct ValidReading {
    interval: i64,
    signer: Signer,
    nonce: u64,
    reading: MeterReading,
    body: MeterReadingBody,
}

/// A reading decoded and its signature verified against a snapshot of its signer's key.
struct Verified {
    reading: pb::MeterReading,
    signature: [u8; 64],
}

impl MarketState {
    /// The key that must have signed `r`: its meter's, or its participant's.
    fn reading_key(&self, r: &pb::MeterReading) -> Result<VerifyingKey, ServiceError> {
        let p = self
            .participants
            .get(&r.participant_id)
            .ok_or_else(|| ServiceError::NotFound(format!("participant {:?}", r.participant_id)))?;
        match &r.meter_id {
            None => Ok(p.key),
            Some(m) => self
                .metering
                .meters
                .get(&(r.participant_id.clone(), m.clone()))
                .copied()
                .ok_or_else(|| ServiceError::UnknownMeter {
                    participant: r.participant_id.clone(),
                    meter: m.clone(),
                }),
        }
    }

    /// The checks of a verified reading that read the market's state, in the order that keeps
    /// the status honest: the fields, the node, the signer's nonce, the interval's window, one
    /// reading per participant, node and interval.
    fn check_reading(
        &self,
        v: Verified,
        timing: &Timing,
        deadline_s: i64,
        now_ms: i64,
    ) -> Result<ValidReading, ServiceError> {
        let r = wire::check_meter_reading(
            &v.reading,
            timing.interval_s,
            baton_engine::delivery::METER_KWH_MAX,
        )
        .map_err(|e| invalid(e.field, e.reason))?;
        let pid = r.participant.as_str();
        let participant = &self.participants[pid];
        if r.node != participant.node {
            return Err(invalid(
                "node",
                format!(
                    "{:?} is not participant {pid:?}'s registered node {:?}",
                    r.node, participant.node
                ),
            ));
        }
        let signer: Signer = (pid.to_string(), r.meter_id.as_ref().map(|m| m.to_string()));
        let last = self.metering.nonces.get(&signer).copied().unwrap_or(0);
        if r.nonce <= last {
            return Err(ServiceError::ReplayedNonce {
                nonce: r.nonce,
                last,
            });
        }
        let t = r.interval_start;
        let end = t + timing.interval_s;
        if now_ms < end * 1000 {
            return Err(ServiceError::ReadingWindow(format!(
                "interval {t} has not ended (it ends at {end}); readings are accepted from then"
            )));
        }
        let deadline = end + deadline_s;
        if self.metering.delivered.contains(&t) || now_ms >= deadline * 1000 {
            return Err(ServiceError::ReadingWindow(format!(
                "the reading deadline of interval {t} passed at {deadline}; its delivery is settled"
            )));
        }
        if !self.metering.awaiting.contains(&t) {
            return Err(ServiceError::ReadingWindow(format!(
                "interval {t} was not cleared, so it has no delivery to settle"
            )));
        }
        if self
            .metering
            .keys
            .get(&t)
            .is_some_and(|k| k.contains(&(pid.to_string(), r.node.clone())))
        {
            return Err(ServiceError::DuplicateReading {
                participant: pid.to_string(),
                node: r.node.clone(),
                interval: t,
            });
        }
        let reading = baton_audit::delivery::engine_reading(&r);
        Ok(ValidReading {
            interval: t,
            nonce: r.nonce,
            body: MeterReadingBody {
                meter_id: signer.1.clone(),
                participant_id: pid.to_string(),
                payload: Vec::new(),
                signature: v.signature,
            },
            signer,
            reading,
        })
    }

    /// Holds the nonce and the (participant, node, interval) of a reading on its way to the
    /// ledger, so a duplicate in the same call is refused.
    fn reserve_reading(&mut self, v: &ValidReading) {
        self.metering.nonces.insert(v.signer.clone(), v.nonce);
        self.metering
            .keys
            .entry(v.interval)
            .or_default()
            .insert((v.reading.account.clone(), v.reading.node.clone()));
    }

    /// Gives back the (participant, node, interval) of a reading the ledger did not take (its
    /// nonce stays used).
    fn release_reading(&mut self, v: &ValidReading) {
        if let Some(k) = self.metering.keys.get_mut(&v.interval) {
            k.remove(&(v.reading.account.clone(), v.reading.node.clone()));
        }
    }
}

/// Decodes a signed reading and verifies its signature (`verify_strict`).
fn verify(shared: &Shared, signed: &pb::SignedMeterReading) -> Result<Verified, ServiceError> {
    if signed.reading.len() > METER_READING_BYTES_MAX {
        return Err(invalid(
            "reading",
            format!("is larger than {METER_READING_BYTES_MAX} bytes"),
        ));
    }
    let reading = pb::MeterReading::decode(signed.reading.as_slice()).map_err(|e| {
        invalid(
            "reading",
            format!("is not a serialized baton.v1.MeterReading: {e}"),
        )
    })?;
    let key = shared.lock().reading_key(&reading)?;
    let who = match &reading.meter_id {
        Some(m) => format!("{} (meter {m})", reading.participant_id),
        None => reading.participant_id.clone(),
    };
    let signature: [u8; 64] = signed
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| ServiceError::BadSignature(who.clone()))?;
    key.verify_strict(&signed.reading, &Signature::from_bytes(&signature))
        .map_err(|_| ServiceError::BadSignature(who))?;
    Ok(Verified { reading, signature })
}

/// `SubmitMeterReadings`: checks each reading, appends the accepted ones in one ledger append
/// and answers each with its seq or its refusal.
pub(crate) async fn submit(
    shared: &Shared,
    req: pb::SubmitMeterReadingsRequest,
) -> Result<pb::SubmitMeterReadingsResponse, ServiceError> {
    shared.check_running()?;
    // Several nodes: readings are appended (and delivery settled) by the leader.
    shared.check_leader().await?;
    if req.readings.len() > METER_READINGS_PER_CALL_MAX {
        return Err(invalid(
            "readings",
            format!(
                "holds {} readings (at most {METER_READINGS_PER_CALL_MAX} per call)",
                req.readings.len()
            ),
        ));
    }
    let n = req.readings.len();
    let verified: Vec<Result<Verified, ServiceError>> =
        req.readings.iter().map(|r| verify(shared, r)).collect();
    let _metering = shared.metering.lock().await;
    let now = shared.clock.now_ms();
    let mut outcomes: Vec<Option<Result<u64, ServiceError>>> = (0..n).map(|_| None).collect();
    let mut valid: Vec<(usize, ValidReading)> = Vec::new();
    {
        let mut st = shared.lock();
        for (i, v) in verified.into_iter().enumerate() {
            let checked =
                v.and_then(|v| st.check_reading(v, &shared.timing, shared.meter_deadline_s, now));
            match checked {
                Ok(mut v) => {
                    st.reserve_reading(&v);
                    v.body.payload = req.readings[i].reading.clone();
                    valid.push((i, v));
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
    }
    if !valid.is_empty() {
        let entries: Vec<NewEntry> = valid
            .iter()
            .map(|(_, v)| NewEntry::meter_reading(v.interval, &v.body))
            .collect();
        let appended = shared.ledger.append(entries).await;
        let mut st = shared.lock();
        match appended {
            Ok(r) => {
                for (k, (i, v)) in valid.into_iter().enumerate() {
                    let seq = r.first_seq + k as u64;
                    st.metering
                        .insert(v.interval, seq, v.signer, v.nonce, v.reading);
                    outcomes[i] = Some(Ok(seq));
                }
            }
            Err(e) => {
                let e = ServiceError::from(e);
                for (i, v) in valid {
                    st.release_reading(&v);
                    outcomes[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    let mut resp = pb::SubmitMeterReadingsResponse::default();
    for (i, o) in outcomes.into_iter().enumerate() {
        let outcome = match o.expect("every reading has an outcome") {
            Ok(seq) => {
                resp.accepted += 1;
                pb::meter_reading_outcome::Outcome::LedgerSeq(seq)
            }
            Err(e) => {
                resp.refused += 1;
                let s = Status::from(e);
                pb::meter_reading_outcome::Outcome::Refused(pb::Refusal {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                })
            }
        };
        resp.outcomes.push(pb::MeterReadingOutcome {
            index: i as u64,
            outcome: Some(outcome),
        });
    }
    Ok(resp)
}

/// Settles the delivery of every cleared interval whose reading deadline has passed, oldest
/// first.
pub(crate) async fn settle_due(shared: &Arc<Shared>) {
    let now = shared.clock.now_ms();
    let timing = shared.timing;
    let due: Vec<i64> = shared
        .lock()
        .metering
        .awaiting
        .iter()
        .copied()
        .filter(|t| (t + timing.interval_s + shared.meter_deadline_s) * 1000 <= now)
        .collect();
    for t in due {
        if let Err(e) = settle_interval(shared, t).await {
            tracing::error!(interval = t, error = %e, "delivery not settled");
            // Retried after a restart, which rebuilds the clearing from the ledger.
            shared.lock().metering.awaiting.remove(&t);
        }
    }
}

/// Appends interval `t`'s `delivery_settlement` from the readings recorded for it.
async fn settle_interval(shared: &Arc<Shared>, t: i64) -> Result<(), ServiceError> {
    let _metering = shared.metering.lock().await;
    let readings = {
        let st = shared.lock();
        if st.metering.delivered.contains(&t) {
            return Ok(());
        }
        st.metering.readings.get(&t).cloned().unwrap_or_default()
    };
    let cleared = shared
        .awaiting_delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&t)
        .cloned()
        .ok_or_else(|| {
            ServiceError::Storage(format!(
                "interval {t}: its clearing is not held (it could not be rebuilt from the ledger)"
            ))
        })?;
    let rules = shared.delivery_rules.clone();
    let count = readings.len();
    let built = tokio::task::spawn_blocking(move || {
        baton_audit::delivery::delivery_entry(
            t,
            &cleared.market,
            &cleared.clearing,
            &readings,
            &rules,
        )
    })
    .await
    .map_err(|e| ServiceError::Storage(format!("delivery task failed: {e}")))?;
    let entry = match built {
        Ok((entry, _)) => entry,
        Err(e) => {
            // Recorded so the regulator sees it and the interval is not retried with other
            // readings.
            tracing::error!(interval = t, error = %e, "delivery not settled");
            let body = serde_json::to_vec(&MarketEvent {
                admin_nonce: None,
                command: None,
                event: DELIVERY_NOT_SETTLED.into(),
            })
            .expect("an event serialises");
            NewEntry::new(EntryKind::MarketEvent, Some(t), body)
        }
    };
    let r = shared.ledger.append(vec![entry]).await?;
    shared.lock().metering.settled(t);
    shared
        .awaiting_delivery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&t);
    shared.index().deliveries.insert(t, r.first_seq);
    tracing::info!(
        interval = t,
        readings = count,
        seq = r.first_seq,
        "delivery settled"
    );
    Ok(())
}

/// How long after an interval's reading deadline a restarted server still settles its
/// delivery, seconds (a day): a server down for longer, or a ledger recorded before metering,
/// leaves older intervals unsettled rather than settling them as if no meter had reported.
pub(crate) const DELIVERY_CATCH_UP_S_MAX: i64 = 86_400;

/// The `market_event` recording that an interval's delivery could not be settled.
pub(crate) const DELIVERY_NOT_SETTLED: &str = "delivery_not_settled";

/// Rebuilds the markets and clearings of the intervals awaiting delivery from the ledger (after
/// a restart), by the audit's own replay and re-clear.
pub(crate) async fn rebuild_awaiting(shared: &Arc<Shared>) {
    // Intervals whose deadline passed long before this start are left unsettled: a ledger
    // recorded before metering existed would otherwise have every interval settled now, as if
    // no meter had reported, with every flexibility allocation penalised.
    let now_s = shared.clock.now_ms().div_euclid(1000);
    let stale_before = now_s - DELIVERY_CATCH_UP_S_MAX;
    let stale: Vec<i64> = shared
        .lock()
        .metering
        .awaiting
        .iter()
        .copied()
        .filter(|t| t + shared.timing.interval_s + shared.meter_deadline_s < stale_before)
        .collect();
    if let (Some(first), Some(last)) = (stale.first(), stale.last()) {
        tracing::warn!(
            intervals = stale.len(),
            first,
            last,
            "cleared intervals whose reading deadline passed more than {DELIVERY_CATCH_UP_S_MAX} s ago have no delivery settlement; leaving them unsettled"
        );
        let mut st = shared.lock();
        for t in &stale {
            st.metering.awaiting.remove(t);
        }
    }
    let wanted: BTreeSet<i64> = shared.lock().metering.awaiting.clone();
    if wanted.is_empty() {
        return;
    }
    match baton_audit::rebuild_clearings(&shared.ledger, &wanted).await {
        Ok(map) => {
            let mut held = shared
                .awaiting_delivery
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (t, (market, clearing)) in map {
                held.insert(t, Arc::new(Cleared { market, clearing }));
            }
            tracing::info!(
                intervals = held.len(),
                "clearings awaiting delivery rebuilt from the ledger"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "clearings awaiting delivery could not be rebuilt");
        }
    }
}
