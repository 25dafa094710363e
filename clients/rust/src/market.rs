//! `baton.v1.MarketService`: [`MarketClient`] for one participant, [`PublicClient`] for the
//! unsigned calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier};
use pb::market_service_client::MarketServiceClient;
use prost::Message;
use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::nonce::unix_seconds;
use crate::receipt::Receipt;
use crate::{
    backoff, call, pb, retrying, wire, ClientError, NonceCounter, ParticipantKey, ResultStream,
    MESSAGE_BYTES_MAX, REQUEST_TIMEOUT_MS, RETRY_ATTEMPTS_MAX, STREAM_TIMEOUT_MS,
};
use baton_proto::receipt::SUBMIT_ORDERS_RECEIPTS_MAX;

/// Orders sent in one `SubmitOrders` stream; [`MarketClient::submit_many`] splits larger
/// batches. Ten thousand orders of a few hundred bytes keep one stream's acks within a
/// couple of group commits. The server answers streams of at most
/// [`SUBMIT_ORDERS_RECEIPTS_MAX`] orders with receipts, so `submit_many` sends streams of
/// that size.
pub const SUBMIT_STREAM_ORDERS_MAX: usize = 10_000;
/// `GetOrder` lookups when a retried submit is refused as a repeat: the earlier attempt's
/// order may still be on its way to the ledger (the server reserves the nonce before the
/// append and files the order after it), so the lookup waits for it with the retry backoff.
pub const LOOKUP_ATTEMPTS_MAX: u32 = 8;
/// Times one submit or cancel moves past a nonce the server already used (clock stepped
/// back, a second process with the same key) and signs anew.
pub const NONCE_RESYNCS_MAX: u32 = 2;

/// One block of an order's stepped curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// kW, positive, at most 6 decimals.
    pub quantity: Decimal,
    /// Currency per kWh within the market's floor and cap; `None`: must-take.
    pub price: Option<Decimal>,
}

impl BlockSpec {
    /// A block with a limit price.
    pub fn priced(quantity: Decimal, price: Decimal) -> Self {
        BlockSpec {
            quantity,
            price: Some(price),
        }
    }

    /// A must-take block (a buy at the cap, a sell at the floor).
    pub fn must_take(quantity: Decimal) -> Self {
        BlockSpec {
            quantity,
            price: None,
        }
    }
}

/// An order before it is given a nonce and signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// The interval (unix seconds, aligned, gate open).
    pub interval_start: i64,
    /// The participant's registered node.
    pub node: String,
    /// Buy or sell (flexibility is always a sell).
    pub side: pb::Side,
    /// Energy or flexibility.
    pub product: pb::Product,
    /// 1 to 16 blocks.
    pub blocks: Vec<BlockSpec>,
    /// A device of the network at the node whose capacity the order draws on.
    pub device: Option<String>,
}

impl NewOrder {
    /// An energy order.
    pub fn energy(
        interval_start: i64,
        node: impl Into<String>,
        side: pb::Side,
        blocks: Vec<BlockSpec>,
    ) -> Self {
        NewOrder {
            interval_start,
            node: node.into(),
            side,
            product: pb::Product::Energy,
            blocks,
            device: None,
        }
    }

    /// A flexibility offer (`product` is `FlexUp` or `FlexDown`; the side is sell).
    pub fn flex(
        interval_start: i64,
        node: impl Into<String>,
        product: pb::Product,
        blocks: Vec<BlockSpec>,
    ) -> Self {
        NewOrder {
            interval_start,
            node: node.into(),
            side: pb::Side::Sell,
            product,
            blocks,
            device: None,
        }
    }

    /// The same order drawing on `device`.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// The wire order for `participant` with `nonce`.
    pub fn to_proto(&self, participant: &str, nonce: u64) -> pb::Order {
        pb::Order {
            participant_id: participant.to_string(),
            nonce,
            interval_start: self.interval_start,
            node: self.node.clone(),
            side: self.side as i32,
            blocks: self
                .blocks
                .iter()
                .map(|b| pb::Block {
                    quantity: wire(b.quantity),
                    price: b.price.map(wire).unwrap_or_default(),
                })
                .collect(),
            device: self.device.clone(),
            product: self.product as i32,
        }
    }
}

/// The durable acknowledgement of an order: it is in the ledger at `ledger_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    /// `<participant>-<nonce>`.
    pub order_id: String,
    /// The ledger entry holding the signed order.
    pub ledger_seq: u64,
    /// The interval it is for.
    pub interval_start: i64,
    /// The operator's signed receipt (check it with [`crate::verify_receipt`], keep it with
    /// [`crate::write_receipt`]). `None` when the acknowledgement was rebuilt from the server's
    /// books (a resend found the order already accepted: the first answer, which carried the
    /// receipt, was lost) or the server sent none or an unreadable one.
    pub receipt: Option<Receipt>,
}

impl From<pb::SubmitOrderResponse> for Ack {
    fn from(r: pb::SubmitOrderResponse) -> Self {
        Ack {
            order_id: r.order_id,
            ledger_seq: r.ledger_seq,
            interval_start: r.interval_start,
            receipt: r.receipt.as_ref().and_then(|p| Receipt::from_proto(p).ok()),
        }
    }
}

/// A cancel's acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelAck {
    /// The ledger entry holding the signed cancel; `None` when a retried cancel found the
    /// order already cancelled by an earlier attempt whose answer was lost.
    pub ledger_seq: Option<u64>,
}

/// What a client's delivery machinery did, since it was created (shared by clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Attempts repeated after a transient failure.
    pub retries: u64,
    /// Retries refused as repeats whose first attempt was found in the ledger and
    /// acknowledged from there.
    pub resolved: u64,
    /// Nonces moved past one the server had already used.
    pub nonce_resyncs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    resolved: AtomicU64,
    nonce_resyncs: AtomicU64,
}

/// The id the server gives a participant's order: `<participant>-<nonce>`.
pub fn order_id(participant: &str, nonce: u64) -> String {
    baton_proto::wire::order_id(participant, nonce)
}

/// Serializes `order` and signs exactly those bytes.
pub fn sign_order(key: &ParticipantKey, order: &pb::Order) -> pb::SignedOrder {
    let bytes = order.encode_to_vec();
    pb::SignedOrder {
        signature: key.sign(&bytes).to_vec(),
        order: bytes,
    }
}

/// A meter reading before it is given a nonce and signed: what the participant's connection
/// point measured over one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReading {
    /// The interval measured (unix seconds, aligned; it must have ended and been cleared).
    pub interval_start: i64,
    /// The participant's registered node.
    pub node: String,
    /// kWh drawn from the network, >= 0, at most 6 decimals.
    pub import_kwh: Decimal,
    /// kWh fed into the network, >= 0, at most 6 decimals.
    pub export_kwh: Decimal,
}

impl NewReading {
    /// The wire message, for `participant` with `nonce` (signed by a meter if `meter_id`).
    pub fn to_proto(
        &self,
        participant: &str,
        nonce: u64,
        meter_id: Option<&str>,
    ) -> pb::MeterReading {
        pb::MeterReading {
            participant_id: participant.to_string(),
            interval_start: self.interval_start,
            node: self.node.clone(),
            import_kwh: wire(self.import_kwh),
            export_kwh: wire(self.export_kwh),
            nonce,
            meter_id: meter_id.map(str::to_string),
        }
    }
}

/// Serializes `reading` and signs exactly those bytes (with the participant's key, or the key
/// of the meter `reading.meter_id` names).
pub fn sign_meter_reading(
    key: &ParticipantKey,
    reading: &pb::MeterReading,
) -> pb::SignedMeterReading {
    let bytes = reading.encode_to_vec();
    pb::SignedMeterReading {
        signature: key.sign(&bytes).to_vec(),
        reading: bytes,
    }
}

/// The unsigned part of `MarketService`: the market's clock and limits, interval results, and
/// delivery of orders signed elsewhere.
#[derive(Clone, Debug)]
pub struct PublicClient {
    inner: MarketServiceClient<Channel>,
}

impl PublicClient {
    /// A client over `channel` (clone a channel to share its connection).
    pub fn new(channel: Channel) -> Self {
        PublicClient {
            inner: MarketServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX),
        }
    }

    /// The market clock, timing, price limits and nodes. Follow `now` and
    /// `next_open_interval` (market time, possibly accelerated), not the local clock.
    pub async fn market_info(&self) -> Result<pb::MarketInfo, ClientError> {
        retrying(0, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetMarketInfo",
                    REQUEST_TIMEOUT_MS,
                    c.get_market_info(pb::GetMarketInfoRequest {}),
                )
                .await
            }
        })
        .await
    }

    /// The public result of a cleared interval (`NOT_FOUND` if it is not cleared, or older
    /// than the results the server keeps in memory).
    pub async fn interval_result(&self, start: i64) -> Result<pb::IntervalResult, ClientError> {
        retrying(start as u64, || {
            let mut c = self.inner.clone();
            async move {
                call(
                    "GetIntervalResult",
                    REQUEST_TIMEOUT_MS,
                    c.get_interval_result(pb::GetIntervalResultRequest {
                        interval_start: start,
                    }),
                )
                .await
            }
        })
        .await
    }

    /// Every interval's public result as it clears, until the server shuts down or the
    /// stream is dropped. Results of intervals cleared before the call are not replayed.
    pub async fn watch_results(&self) -> Result<ResultStream<pb::IntervalResult>, ClientError> {
        let mut c = self.inner.clone();
        let s = call(
            "WatchResults",
            REQUEST_TIMEOUT_MS,
            c.watch_results(pb::WatchResultsRequest {}),
        )
        .await?;
        Ok(Box::pin(s.map(|r| r.map_err(ClientError::from))))
    }

    /// Sends orders signed elsewhere — any participants' — in one `SubmitOrders` stream and
    /// returns one outcome per order, in order. One attempt: a gateway that retries must
    /// resend the same signed orders and treat `ALREADY_EXISTS` as "possibly accepted by the
    /// earlier attempt" (check with the participant's [`MarketClient::get_order`]), which is
    /// what [`MarketClient::submit_many`] does for its own orders.
    pub async fn submit_signed(
        &self,
        orders: Vec<pb::SignedOrder>,
    ) -> Result<Vec<Result<Ack, ClientError>>, ClientError> {
        if orders.len() > SUBMIT_STREAM_ORDERS_MAX {
            return Err(ClientError::invalid(
                "orders",
                format!(
                    "{} orders in one stream (at most {SUBMIT_STREAM_ORDERS_MAX})",
                    orders.len()
                ),
            ));
        }
        let n = orders.len();
        let mut c = self.inner.clone();
        let r = call(
            "SubmitOrders",
            STREAM_TIMEOUT_MS,
            c.submit_orders(tokio_stream::iter(orders)),
        )
        .await?;
        let mut out: Vec<Option<Result<Ack, ClientError>>> = vec![None; n];
        for o in r.outcomes {
            let Some(slot) = out.get_mut(o.index as usize) else {
                continue;
            };
            *slot = Some(match o.outcome {
                Some(pb::submit_outcome::Outcome::Accepted(a)) => Ok(a.into()),
                Some(pb::submit_outcome::Outcome::Refused(f)) => Err(ClientError::Status {
                    code: Code::from_i32(f.code),
                    message: f.message,
                }),
                None => Err(ClientError::invalid("outcome", "is empty")),
            });
        }
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| {
                    Err(ClientError::invalid(
                        "outcomes",
                        format!("the server sent no outcome for order {i}"),
                    ))
                })
            })
            .collect())
    }
}

impl PublicClient {
    /// Submits readings signed elsewhere (by participants or their meters) in one
    /// `SubmitMeterReadings` call, once: a resend of a reading that landed is refused
    /// `ALREADY_EXISTS` (its nonce). One result per reading, in order: its ledger seq, or the
    /// server's refusal as [`ClientError::Status`].
    pub async fn submit_signed_readings(
        &self,
        readings: Vec<pb::SignedMeterReading>,
    ) -> Result<Vec<Result<u64, ClientError>>, ClientError> {
        let n = readings.len();
        if n > baton_proto::wire::METER_READINGS_PER_CALL_MAX {
            return Err(ClientError::invalid(
                "readings",
                format!(
                    "{n} readings in one call (at most {})",
                    baton_proto::wire::METER_READINGS_PER_CALL_MAX
                ),
            ));
        }
        let mut c = self.inner.clone();
        let r = call(
            "SubmitMeterReadings",
            REQUEST_TIMEOUT_MS,
            c.submit_meter_readings(pb::SubmitMeterReadingsRequest { readings }),
        )
        .await?;
        let mut out: Vec<Option<Result<u64, ClientError>>> = (0..n).map(|_| None).collect();
        for o in r.outcomes {
            let Some(slot) = out.get_mut(o.index as usize) else {
                continue;
            };
            *slot = Some(match o.outcome {
                Some(pb::meter_reading_outcome::Outcome::LedgerSeq(seq)) => Ok(seq),
                Some(pb::meter_reading_outcome::Outcome::Refused(f)) => Err(ClientError::Status {
                    code: Code::from_i32(f.code),
                    message: f.message,
                }),
                None => Err(ClientError::invalid("outcome", "is empty")),
            });
        }
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| {
                    Err(ClientError::invalid(
                        "outcomes",
                        format!("the server sent no outcome for reading {i}"),
                    ))
                })
            })
            .collect())
    }
}

/// One participant's view of the market: its orders, cancels, reads and fills, signed with
/// its key. Clones share the nonce sequence and the statistics, and the channel's
/// connection.
#[derive(Clone)]
pub struct MarketClient {
    public: PublicClient,
    participant: Arc<str>,
    key: Arc<ParticipantKey>,
    nonces: NonceCounter,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for MarketClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketClient")
            .field("participant", &self.participant)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl MarketClient {
    /// A client for `participant_id` signing with `key`, over `channel`.
    pub fn new(channel: Channel, participant_id: impl Into<String>, key: ParticipantKey) -> Self {
        MarketClient {
            public: PublicClient::new(channel),
            participant: Arc::from(participant_id.into()),
            key: Arc::new(key),
            nonces: NonceCounter::new(),
            counters: Arc::default(),
        }
    }

    /// The participant.
    pub fn participant_id(&self) -> &str {
        &self.participant
    }

    /// The participant's nonce sequence (shared by clones).
    pub fn nonces(&self) -> &NonceCounter {
        &self.nonces
    }

    /// The unsigned calls, over the same connection.
    pub fn public(&self) -> &PublicClient {
        &self.public
    }

    /// What retries and lookups this client (and its clones) did.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            retries: self.counters.retries.load(Ordering::Relaxed),
            resolved: self.counters.resolved.load(Ordering::Relaxed),
            nonce_resyncs: self.counters.nonce_resyncs.load(Ordering::Relaxed),
        }
    }

    /// The wire order for `order` with the next nonce (for callers that sign and deliver
    /// themselves, e.g. through [`PublicClient::submit_signed`]).
    pub fn order(&self, order: &NewOrder) -> pb::Order {
        order.to_proto(&self.participant, self.nonces.next())
    }

    /// Signs `order` with this participant's key.
    pub fn sign(&self, order: &pb::Order) -> pb::SignedOrder {
        sign_order(&self.key, order)
    }

    /// Submits an order and returns its durable acknowledgement. Signs once and resends the
    /// same bytes on transient failures; a resend refused as a repeat is resolved from the
    /// ledger (see the crate docs), so the order is never duplicated.
    pub async fn submit(&self, order: NewOrder) -> Result<Ack, ClientError> {
        let o = self.order(&order);
        let signed = self.sign(&o);
        self.deliver(o, signed, true).await
    }

    /// Delivers an order this participant signed earlier, with the same retry and
    /// resolution as [`submit`](Self::submit): sending the same signed order twice returns
    /// the same acknowledgement twice and leaves one order in the ledger.
    pub async fn submit_signed_order(&self, signed: pb::SignedOrder) -> Result<Ack, ClientError> {
        let order = pb::Order::decode(signed.order.as_slice())
            .map_err(|e| ClientError::invalid("order", format!("not a baton.v1.Order: {e}")))?;
        if order.participant_id != *self.participant {
            return Err(ClientError::invalid(
                "order.participant_id",
                format!(
                    "{:?} is not this client's participant {:?}",
                    order.participant_id, self.participant
                ),
            ));
        }
        let sig = <[u8; 64]>::try_from(signed.signature.as_slice())
            .map_err(|_| ClientError::invalid("signature", "is not 64 bytes"))?;
        self.key
            .verifying_key()
            .verify(&signed.order, &Signature::from_bytes(&sig))
            .map_err(|_| ClientError::invalid("signature", "is not this participant's key's"))?;
        self.deliver(order, signed, false).await
    }

    async fn deliver(
        &self,
        mut order: pb::Order,
        mut signed: pb::SignedOrder,
        may_resign: bool,
    ) -> Result<Ack, ClientError> {
        let mut attempt = 1u32;
        let mut resyncs = 0u32;
        loop {
            let mut c = self.public.inner.clone();
            let r = call(
                "SubmitOrder",
                REQUEST_TIMEOUT_MS,
                c.submit_order(signed.clone()),
            )
            .await;
            match r {
                Ok(a) => return Ok(a.into()),
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    if let Some(ack) = self.find_landed(&order, attempt > 1).await? {
                        return Ok(ack);
                    }
                    // Only a first attempt is certainly not in the ledger (a retried one may
                    // still be on its way): then it is safe to sign the order anew above the
                    // nonce the server last accepted.
                    match e.last_accepted_nonce() {
                        Some(last) if may_resign && attempt == 1 && resyncs < NONCE_RESYNCS_MAX => {
                            self.nonces.observe(last);
                            order.nonce = self.nonces.next();
                            signed = self.sign(&order);
                            resyncs += 1;
                            self.counters.nonce_resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) if e.is_transient() && attempt < RETRY_ATTEMPTS_MAX => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, order.nonce)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Looks for `order` in the server's books (it was refused as a repeat: an earlier
    /// attempt, or someone else delivering the same signed bytes, may have landed). `wait`:
    /// keep looking while an earlier attempt may be in flight.
    async fn find_landed(&self, order: &pb::Order, wait: bool) -> Result<Option<Ack>, ClientError> {
        let id = order_id(&order.participant_id, order.nonce);
        let tries = if wait { LOOKUP_ATTEMPTS_MAX } else { 1 };
        for i in 1..=tries {
            match self.get_order(&id).await {
                Ok(info) if same_order(&info, order) => {
                    self.counters.resolved.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Ack {
                        order_id: info.order_id,
                        ledger_seq: info.ledger_seq,
                        interval_start: info.interval_start,
                        receipt: None,
                    }));
                }
                // The nonce went to another order of this participant.
                Ok(_) => return Ok(None),
                Err(e) if e.code() == Some(Code::NotFound) => {
                    if i < tries {
                        tokio::time::sleep(backoff(i, order.nonce)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Submits several orders in `SubmitOrders` streams of at most
    /// [`SUBMIT_ORDERS_RECEIPTS_MAX`] (so every ack carries its receipt), one outcome per
    /// order, in order. Each order is signed
    /// once with consecutive nonces; a stream that fails transiently is resent as is, and
    /// orders the resend finds already accepted are acknowledged from the ledger.
    pub async fn submit_many(
        &self,
        orders: Vec<NewOrder>,
    ) -> Result<Vec<Result<Ack, ClientError>>, ClientError> {
        let mut out = Vec::with_capacity(orders.len());
        for chunk in orders.chunks(SUBMIT_ORDERS_RECEIPTS_MAX) {
            let first = self.nonces.reserve(chunk.len() as u64);
            let protos: Vec<pb::Order> = chunk
                .iter()
                .enumerate()
                .map(|(i, o)| o.to_proto(&self.participant, first + i as u64))
                .collect();
            let signed: Vec<pb::SignedOrder> = protos.iter().map(|o| self.sign(o)).collect();
            let mut attempt = 1u32;
            let outcomes = loop {
                match self.public.submit_signed(signed.clone()).await {
                    Ok(o) => break o,
                    Err(e) if e.is_transient() && attempt < RETRY_ATTEMPTS_MAX => {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff(attempt, first)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            for (o, outcome) in protos.iter().zip(outcomes) {
                out.push(match outcome {
                    Err(e) if e.code() == Some(Code::AlreadyExists) => {
                        match self.find_landed(o, attempt > 1).await? {
                            Some(ack) => Ok(ack),
                            None => Err(e),
                        }
                    }
                    r => r,
                });
            }
        }
        Ok(out)
    }

    fn signed_request(&self, request: Vec<u8>) -> pb::SignedRequest {
        pb::SignedRequest {
            signature: self.key.sign(&request).to_vec(),
            request,
        }
    }

    fn query(&self, order_id: &str, interval_start: i64) -> pb::SignedRequest {
        self.signed_request(
            pb::ParticipantQuery {
                participant_id: self.participant.to_string(),
                timestamp: unix_seconds(),
                order_id: order_id.to_string(),
                interval_start,
            }
            .encode_to_vec(),
        )
    }

    /// Cancels an open order (before its gate closes). Resent as is on transient failures; a
    /// resend refused as a repeat succeeds if the order is found cancelled.
    pub async fn cancel(&self, order_id: &str) -> Result<CancelAck, ClientError> {
        let sign = |nonce| {
            self.signed_request(
                pb::CancelRequest {
                    participant_id: self.participant.to_string(),
                    nonce,
                    order_id: order_id.to_string(),
                    timestamp: unix_seconds(),
                }
                .encode_to_vec(),
            )
        };
        let mut nonce = self.nonces.next();
        let mut signed = sign(nonce);
        let mut attempt = 1u32;
        let mut resyncs = 0u32;
        loop {
            let mut c = self.public.inner.clone();
            match call(
                "CancelOrder",
                REQUEST_TIMEOUT_MS,
                c.cancel_order(signed.clone()),
            )
            .await
            {
                Ok(r) => {
                    return Ok(CancelAck {
                        ledger_seq: Some(r.ledger_seq),
                    })
                }
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    if attempt > 1 {
                        for i in 1..=LOOKUP_ATTEMPTS_MAX {
                            let o = self.get_order(order_id).await?;
                            if o.status == pb::OrderStatus::Cancelled as i32 {
                                self.counters.resolved.fetch_add(1, Ordering::Relaxed);
                                return Ok(CancelAck { ledger_seq: None });
                            }
                            if o.status != pb::OrderStatus::Open as i32 {
                                break;
                            }
                            tokio::time::sleep(backoff(i, nonce)).await;
                        }
                        return Err(e);
                    }
                    match e.last_accepted_nonce() {
                        Some(last) if resyncs < NONCE_RESYNCS_MAX => {
                            self.nonces.observe(last);
                            nonce = self.nonces.next();
                            signed = sign(nonce);
                            resyncs += 1;
                            self.counters.nonce_resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) if e.is_transient() && attempt < RETRY_ATTEMPTS_MAX => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt, nonce)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One of this participant's orders.
    pub async fn get_order(&self, order_id: &str) -> Result<pb::OrderInfo, ClientError> {
        let r = retrying(self.nonces.last(), || {
            let mut c = self.public.inner.clone();
            let q = self.query(order_id, 0);
            async move { call("GetOrder", REQUEST_TIMEOUT_MS, c.get_order(q)).await }
        })
        .await?;
        r.order
            .ok_or_else(|| ClientError::invalid("order", "the server's answer holds no order"))
    }

    /// This participant's orders: open ones first, then the most recent; only those of
    /// `interval` if given.
    pub async fn list_orders(
        &self,
        interval: Option<i64>,
    ) -> Result<Vec<pb::OrderInfo>, ClientError> {
        let r = retrying(self.nonces.last(), || {
            let mut c = self.public.inner.clone();
            let q = self.query("", interval.unwrap_or(0));
            async move { call("ListOrders", REQUEST_TIMEOUT_MS, c.list_orders(q)).await }
        })
        .await?;
        Ok(r.orders)
    }

    /// This participant's fills and payments as intervals clear.
    pub async fn watch_fills(&self) -> Result<ResultStream<pb::Fill>, ClientError> {
        let mut c = self.public.inner.clone();
        let s = call(
            "WatchFills",
            REQUEST_TIMEOUT_MS,
            c.watch_fills(self.query("", 0)),
        )
        .await?;
        Ok(Box::pin(s.map(|r| r.map_err(ClientError::from))))
    }

    /// See [`PublicClient::market_info`].
    pub async fn market_info(&self) -> Result<pb::MarketInfo, ClientError> {
        self.public.market_info().await
    }

    /// See [`PublicClient::interval_result`].
    pub async fn interval_result(&self, start: i64) -> Result<pb::IntervalResult, ClientError> {
        self.public.interval_result(start).await
    }

    /// See [`PublicClient::watch_results`].
    pub async fn watch_results(&self) -> Result<ResultStream<pb::IntervalResult>, ClientError> {
        self.public.watch_results().await
    }

    /// Signs each reading with the participant's key (nonces from the participant's one
    /// sequence, [`MarketClient::nonces`]) and submits them in one call
    /// ([`PublicClient::submit_signed_readings`]): per reading its ledger seq or the refusal.
    pub async fn submit_meter_readings(
        &self,
        readings: &[NewReading],
    ) -> Result<Vec<Result<u64, ClientError>>, ClientError> {
        let signed = readings
            .iter()
            .map(|r| {
                let msg = r.to_proto(&self.participant, self.nonces.next(), None);
                sign_meter_reading(&self.key, &msg)
            })
            .collect();
        self.public.submit_signed_readings(signed).await
    }

    /// See [`PublicClient::submit_signed`]: orders signed by any participants, one stream,
    /// one attempt.
    pub async fn submit_signed(
        &self,
        orders: Vec<pb::SignedOrder>,
    ) -> Result<Vec<Result<Ack, ClientError>>, ClientError> {
        self.public.submit_signed(orders).await
    }
}

/// Whether the server's record of an order is `order` (same interval, node, side, device and
/// blocks; decimals compared by value).
fn same_order(info: &pb::OrderInfo, order: &pb::Order) -> bool {
    let dec = |s: &str| s.parse::<Decimal>().ok();
    info.participant_id == order.participant_id
        && info.interval_start == order.interval_start
        && info.node == order.node
        && info.side == order.side
        && info.device == order.device
        && info.blocks.len() == order.blocks.len()
        && info.blocks.iter().zip(&order.blocks).all(|(a, b)| {
            dec(&a.quantity) == dec(&b.quantity)
                && a.price.is_empty() == b.price.is_empty()
                && (a.price.is_empty() || dec(&a.price) == dec(&b.price))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_goes_on_the_wire_with_one_spelling_per_number() {
        let o = NewOrder::energy(
            600,
            "B",
            pb::Side::Buy,
            vec![
                BlockSpec::priced(Decimal::new(1500, 2), Decimal::new(-30, 2)),
                BlockSpec::must_take(Decimal::new(2, 0)),
            ],
        )
        .with_device("bat-B");
        let p = o.to_proto("bob", 7);
        assert_eq!(p.blocks[0].quantity, "15");
        assert_eq!(p.blocks[0].price, "-0.3");
        assert_eq!(p.blocks[1].price, "");
        assert_eq!(p.device.as_deref(), Some("bat-B"));
        assert_eq!(p.product, pb::Product::Energy as i32);
        assert_eq!(order_id("bob", 7), "bob-7");
        let key = ParticipantKey::from_seed(&[3; 32]);
        let s = sign_order(&key, &p);
        assert_eq!(pb::Order::decode(s.order.as_slice()).unwrap(), p);
        let sig = Signature::from_bytes(&s.signature.clone().try_into().unwrap());
        assert!(key.verifying_key().verify_strict(&s.order, &sig).is_ok());
    }
}
