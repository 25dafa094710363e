//! `baton.v1.MarketService`: order intake, cancels, a participant's orders and fills, results.

use std::pin::Pin;
use std::sync::Arc;

use baton_proto::receipt::SUBMIT_ORDERS_RECEIPTS_MAX;
use baton_proto::v1 as pb;
use futures_util::FutureExt;
use pb::market_service_server::MarketService;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::clock::wall_now_ms;
use super::commit::{Accepted, CommitItem};
use super::error::{oversize_status, ServiceError};
use super::state::{preverify_order, OrderStatus, Preverified};
use super::{ClearedInterval, Shared, LIST_ORDERS_MAX, STREAM_ORDERS_MAX};

/// Orders read from a stream and verified together: large enough to keep both verification
/// threads busy, small enough that the first acks leave early.
const INTAKE_CHUNK_ORDERS_MAX: usize = 256;
/// Threads that check one chunk's signatures (this machine class has 2 cores).
const INTAKE_VERIFY_THREADS: usize = 2;
/// Outcomes an order stream buffers for a slow reader before intake waits.
const OUTCOME_STREAM_BUFFER: usize = 4_096;

/// Messages a watch stream buffers for a slow client before the forwarder waits.
const WATCH_STREAM_BUFFER: usize = 64;

pub(crate) struct MarketApi {
    pub(crate) shared: Arc<Shared>,
}

type Ack = oneshot::Receiver<Result<Accepted, ServiceError>>;

impl MarketApi {
    /// Decodes and verifies an order against a snapshot of its participant's key, without
    /// holding the state lock (signature checks are most of intake's work).
    fn preverify(&self, signed: &pb::SignedOrder) -> Result<Preverified, ServiceError> {
        preverify_order(signed, |pid| self.shared.lock().participant_key(pid))
    }

    /// Preverifies a chunk of orders, splitting the signature checks over
    /// `INTAKE_VERIFY_THREADS` threads off the async workers.
    async fn preverify_chunk(
        &self,
        chunk: Arc<Vec<pb::SignedOrder>>,
    ) -> Vec<Result<Preverified, ServiceError>> {
        let shared = self.shared.clone();
        let c = chunk.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let key_of = |pid: &str| shared.lock().participant_key(pid);
            let per = c.len().div_ceil(INTAKE_VERIFY_THREADS).max(1);
            std::thread::scope(|scope| {
                let parts: Vec<_> = c
                    .chunks(per)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .map(|m| preverify_order(m, key_of))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|h| h.join().expect("a verification thread panicked"))
                    .collect::<Vec<_>>()
            })
        })
        .await;
        match verified {
            Ok(v) => v,
            // Unreachable short of a panic; verify each under the normal path.
            Err(_) => chunk.iter().map(|m| self.preverify(m)).collect(),
        }
    }

    /// Validates an order and queues it for the ledger; the receiver yields its seq once
    /// durable. Validation, nonce reservation and queueing happen under one lock so a
    /// concurrent duplicate nonce is refused and the scheduler's barrier follows it.
    fn enqueue(
        &self,
        signed: &pb::SignedOrder,
        pre: Result<Preverified, ServiceError>,
    ) -> Result<(String, i64, Ack), ServiceError> {
        self.shared.check_running()?;
        let pre = pre?;
        let now = self.shared.clock.now_ms();
        let mut st = self.shared.lock();
        let v = st.validate_order(
            signed,
            Some(pre),
            &self.shared.timing,
            &self.shared.limits,
            now,
        )?;
        let (tx, rx) = oneshot::channel();
        let (id, interval) = (v.record.id.clone(), v.record.interval_start);
        // With several nodes the shared intake holds nonces and counts (the replica here only
        // learns the order once the leader sequences it).
        let reserve = self.shared.cluster.is_none();
        if reserve {
            st.reserve_order(&v);
        }
        if let Err(e) = self.shared.commit_tx.try_send(CommitItem::Order(v, tx)) {
            let (refusal, item) = match e {
                mpsc::error::TrySendError::Full(item) => (ServiceError::Busy, item),
                mpsc::error::TrySendError::Closed(item) => (self.shared.gone(), item),
            };
            if let (CommitItem::Order(v, _), true) = (item, reserve) {
                st.release_order(&v);
            }
            return Err(refusal);
        }
        Ok((id, interval, rx))
    }

    /// Reads the next message and whatever else the stream already holds, up to
    /// `INTAKE_CHUNK_ORDERS_MAX`. `None` at the end of the stream.
    async fn next_chunk(
        stream: &mut Streaming<pb::SignedOrder>,
    ) -> Result<Option<Vec<pb::SignedOrder>>, Status> {
        let Some(first) = stream.next().await else {
            return Ok(None);
        };
        let mut chunk = vec![first.map_err(oversize_status)?];
        while chunk.len() < INTAKE_CHUNK_ORDERS_MAX {
            match stream.next().now_or_never() {
                Some(Some(m)) => chunk.push(m.map_err(oversize_status)?),
                _ => break,
            }
        }
        Ok(Some(chunk))
    }

    fn wall_now_s(&self) -> i64 {
        wall_now_ms().div_euclid(1000)
    }
}

async fn acked(
    shared: &Shared,
    (order_id, interval_start, rx): (String, i64, Ack),
) -> Result<pb::SubmitOrderResponse, ServiceError> {
    let a = rx.await.map_err(|_| shared.gone())??;
    Ok(pb::SubmitOrderResponse {
        order_id,
        ledger_seq: a.seq,
        interval_start,
        receipt: a.receipt,
        intake_id: a.intake_id,
    })
}

/// One order's outcome in a stream's answer.
fn outcome(index: u64, r: Result<pb::SubmitOrderResponse, ServiceError>) -> pb::SubmitOutcome {
    let outcome = match r {
        Ok(a) => pb::submit_outcome::Outcome::Accepted(a),
        Err(e) => {
            let s = Status::from(e);
            pb::submit_outcome::Outcome::Refused(pb::Refusal {
                code: s.code() as i32,
                message: s.message().to_string(),
            })
        }
    };
    pb::SubmitOutcome {
        index,
        outcome: Some(outcome),
    }
}

/// Forwards a broadcast of cleared intervals to a client stream until the client goes away or
/// the server shuts down (so graceful shutdown never waits on an idle watcher).
fn forward<T: Send + 'static>(
    mut rx: broadcast::Receiver<Arc<ClearedInterval>>,
    mut shutdown: watch::Receiver<bool>,
    pick: impl Fn(&ClearedInterval) -> Vec<T> + Send + 'static,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, out) = mpsc::channel(WATCH_STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                r = rx.recv() => match r {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a watcher fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
            };
            for item in pick(&c) {
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(out)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MarketService for MarketApi {
    async fn submit_order(
        &self,
        request: Request<pb::SignedOrder>,
    ) -> Result<Response<pb::SubmitOrderResponse>, Status> {
        let pre = self.preverify(request.get_ref());
        let queued = self.enqueue(request.get_ref(), pre)?;
        Ok(Response::new(acked(&self.shared, queued).await?))
    }

    async fn submit_orders(
        &self,
        request: Request<Streaming<pb::SignedOrder>>,
    ) -> Result<Response<pb::SubmitOrdersResponse>, Status> {
        let mut stream = request.into_inner();
        // Validate and queue each order as it arrives without waiting for its append, so one
        // stream fills a group commit; then wait for every ack.
        let mut pending = Vec::new();
        while let Some(chunk) = Self::next_chunk(&mut stream).await? {
            if pending.len() + chunk.len() > STREAM_ORDERS_MAX {
                return Err(ServiceError::Limit {
                    what: "orders per SubmitOrders stream",
                    limit: STREAM_ORDERS_MAX,
                }
                .into());
            }
            let chunk = Arc::new(chunk);
            let verified = self.preverify_chunk(chunk.clone()).await;
            for (msg, pre) in chunk.iter().zip(verified) {
                pending.push(self.enqueue(msg, pre));
            }
        }
        let mut out = pb::SubmitOrdersResponse::default();
        let receipts = pending.len() <= SUBMIT_ORDERS_RECEIPTS_MAX;
        for (i, p) in pending.into_iter().enumerate() {
            let r = match p {
                Ok(q) => acked(&self.shared, q).await.map(|mut a| {
                    if !receipts {
                        a.receipt = None;
                    }
                    a
                }),
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => out.accepted += 1,
                Err(_) => out.refused += 1,
            }
            out.outcomes.push(outcome(i as u64, r));
        }
        Ok(Response::new(out))
    }

    type SubmitOrderStreamStream = BoxStream<pb::SubmitOutcome>;

    async fn submit_order_stream(
        &self,
        request: Request<Streaming<pb::SignedOrder>>,
    ) -> Result<Response<Self::SubmitOrderStreamStream>, Status> {
        let mut stream = request.into_inner();
        let (queued_tx, mut queued_rx) = mpsc::channel(OUTCOME_STREAM_BUFFER);
        let (out_tx, out_rx) = mpsc::channel(OUTCOME_STREAM_BUFFER);
        let api = MarketApi {
            shared: self.shared.clone(),
        };
        // Reader: verify and queue each chunk as it arrives.
        let end_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut index = 0u64;
            loop {
                let chunk = match Self::next_chunk(&mut stream).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = end_tx.send(Err(status)).await;
                        break;
                    }
                };
                if index as usize + chunk.len() > STREAM_ORDERS_MAX {
                    let e: Status = ServiceError::Limit {
                        what: "orders per SubmitOrderStream stream",
                        limit: STREAM_ORDERS_MAX,
                    }
                    .into();
                    let _ = end_tx.send(Err(e)).await;
                    break;
                }
                let chunk = Arc::new(chunk);
                let verified = api.preverify_chunk(chunk.clone()).await;
                for (msg, pre) in chunk.iter().zip(verified) {
                    let q = api.enqueue(msg, pre);
                    if queued_tx.send((index, q)).await.is_err() {
                        return;
                    }
                    index += 1;
                }
            }
        });
        // Writer: answer in order as each append commits (the commit task answers in order).
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some((index, q)) = queued_rx.recv().await {
                let r = match q {
                    Ok(q) => acked(&shared, q).await,
                    Err(e) => Err(e),
                };
                if out_tx.send(Ok(outcome(index, r))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        self.shared.check_running()?;
        let now = self.shared.clock.now_ms();
        let rx = {
            let mut st = self.shared.lock();
            let c = st.validate_cancel(
                request.get_ref(),
                &self.shared.timing,
                now,
                self.wall_now_s(),
                self.shared.limits.request_timestamp_window_s,
                self.shared.cluster.is_some(),
            )?;
            let (tx, rx) = oneshot::channel();
            let (pid, nonce) = (c.participant.clone(), c.nonce);
            self.shared
                .commit_tx
                .try_send(CommitItem::Cancel(c, tx))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => ServiceError::Busy,
                    mpsc::error::TrySendError::Closed(_) => self.shared.gone(),
                })?;
            if self.shared.cluster.is_none() {
                st.nonces.insert(pid, nonce);
            }
            rx
        };
        let a = rx.await.map_err(|_| self.shared.gone())??;
        Ok(Response::new(pb::CancelOrderResponse {
            ledger_seq: a.seq,
            intake_id: a.intake_id,
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let st = self.shared.lock();
        let q = st.authenticate_query(
            request.get_ref(),
            self.wall_now_s(),
            self.shared.limits.request_timestamp_window_s,
        )?;
        let o = st
            .orders
            .get(&q.order_id)
            .ok_or_else(|| ServiceError::NotFound(format!("order {:?}", q.order_id)))?;
        if o.participant != q.participant_id {
            return Err(ServiceError::NotYourOrder(q.order_id).into());
        }
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(o.to_proto()),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let st = self.shared.lock();
        let q = st.authenticate_query(
            request.get_ref(),
            self.wall_now_s(),
            self.shared.limits.request_timestamp_window_s,
        )?;
        let mut orders: Vec<_> = st
            .orders
            .values()
            .filter(|o| o.participant == q.participant_id)
            .filter(|o| q.interval_start == 0 || o.interval_start == q.interval_start)
            .collect();
        // Open orders first, then the most recent.
        orders.sort_by_key(|o| {
            (
                o.status != OrderStatus::Open,
                -o.interval_start,
                o.ledger_seq,
            )
        });
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders
                .into_iter()
                .take(LIST_ORDERS_MAX)
                .map(|o| o.to_proto())
                .collect(),
        }))
    }

    async fn get_interval_result(
        &self,
        request: Request<pb::GetIntervalResultRequest>,
    ) -> Result<Response<pb::IntervalResult>, Status> {
        let s = request.get_ref().interval_start;
        let results = self
            .shared
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let r = results
            .get(&s)
            .ok_or_else(|| ServiceError::NotFound(format!("result of interval {s}")))?;
        Ok(Response::new(r.result.clone()))
    }

    type WatchResultsStream = BoxStream<pb::IntervalResult>;

    async fn watch_results(
        &self,
        _request: Request<pb::WatchResultsRequest>,
    ) -> Result<Response<Self::WatchResultsStream>, Status> {
        let s = forward(
            self.shared.results_tx.subscribe(),
            self.shared.shutdown.clone(),
            |c| vec![c.result.clone()],
        );
        Ok(Response::new(Box::pin(s)))
    }

    type WatchFillsStream = BoxStream<pb::Fill>;

    async fn watch_fills(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<Self::WatchFillsStream>, Status> {
        let q = self.shared.lock().authenticate_query(
            request.get_ref(),
            self.wall_now_s(),
            self.shared.limits.request_timestamp_window_s,
        )?;
        let pid = q.participant_id;
        let s = forward(
            self.shared.results_tx.subscribe(),
            self.shared.shutdown.clone(),
            move |c| {
                c.fills
                    .get(&pid)
                    .map(|fs| fs.iter().map(|f| f.to_proto()).collect())
                    .unwrap_or_default()
            },
        );
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_market_info(
        &self,
        _request: Request<pb::GetMarketInfoRequest>,
    ) -> Result<Response<pb::MarketInfo>, Status> {
        let sh = &self.shared;
        let now = sh.clock.now_ms();
        let network_version = sh.index().network_seq;
        let st = sh.lock();
        let net = st.network.as_deref();
        let (next_open, _) = sh.timing.open_window(now, st.closed_through);
        Ok(Response::new(pb::MarketInfo {
            now: now.div_euclid(1000),
            now_ms: now,
            time_scale: sh.clock.scale(),
            interval_minutes: sh.interval_minutes,
            gate_lead_s: sh.timing.gate_lead_s,
            intervals_ahead: sh.timing.intervals_ahead as u32,
            next_open_interval: if net.is_some() { next_open } else { 0 },
            last_cleared_interval: st.cleared.last().copied().unwrap_or(0),
            price_floor: net.map(|n| n.price_floor.to_string()).unwrap_or_default(),
            price_cap: net.map(|n| n.price_cap.to_string()).unwrap_or_default(),
            nodes: net
                .map(|n| n.nodes.iter().map(|x| x.id.clone()).collect())
                .unwrap_or_default(),
            network_loaded: net.is_some(),
            paused: st.paused,
            network_version,
            request_timestamp_window_s: sh.limits.request_timestamp_window_s,
            meter_deadline_s: sh.meter_deadline_s,
        }))
    }

    async fn submit_meter_readings(
        &self,
        request: Request<pb::SubmitMeterReadingsRequest>,
    ) -> Result<Response<pb::SubmitMeterReadingsResponse>, Status> {
        let r = super::metering::submit(&self.shared, request.into_inner()).await?;
        Ok(Response::new(r))
    }
}
