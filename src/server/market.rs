//! `baton.v1.MarketService`: order intake, cancels, a participant's orders and fills, results.

use std::pin::Pin;
use std::sync::Arc;

use baton_proto::v1 as pb;
use pb::market_service_server::MarketService;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::clock::wall_now_ms;
use super::commit::CommitItem;
use super::error::ServiceError;
use super::state::OrderStatus;
use super::{ClearedInterval, Shared, LIST_ORDERS_MAX, STREAM_ORDERS_MAX};

/// Messages a watch stream buffers for a slow client before the forwarder waits.
const WATCH_STREAM_BUFFER: usize = 64;

pub(crate) struct MarketApi {
    pub(crate) shared: Arc<Shared>,
}

type Ack = oneshot::Receiver<Result<u64, ServiceError>>;

impl MarketApi {
    /// Validates an order and queues it for the ledger; the receiver yields its seq once
    /// durable. Validation, nonce reservation and queueing happen under one lock so a
    /// concurrent duplicate nonce is refused and the scheduler's barrier follows it.
    fn enqueue(&self, signed: &pb::SignedOrder) -> Result<(String, i64, Ack), ServiceError> {
        let now = self.shared.clock.now_ms();
        let mut st = self.shared.lock();
        let v = st.validate_order(signed, &self.shared.timing, &self.shared.limits, now)?;
        let (tx, rx) = oneshot::channel();
        let (id, interval) = (v.record.id.clone(), v.record.interval_start);
        st.reserve_order(&v);
        if let Err(e) = self.shared.commit_tx.try_send(CommitItem::Order(v, tx)) {
            let (mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item)) =
                e;
            if let CommitItem::Order(v, _) = item {
                st.release_order(&v);
            }
            return Err(ServiceError::Busy);
        }
        Ok((id, interval, rx))
    }

    fn wall_now_s(&self) -> i64 {
        wall_now_ms().div_euclid(1000)
    }
}

async fn acked(
    (order_id, interval_start, rx): (String, i64, Ack),
) -> Result<pb::SubmitOrderResponse, ServiceError> {
    let seq = rx.await.map_err(|_| ServiceError::ShuttingDown)??;
    Ok(pb::SubmitOrderResponse {
        order_id,
        ledger_seq: seq,
        interval_start,
    })
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
        let queued = self.enqueue(request.get_ref())?;
        Ok(Response::new(acked(queued).await?))
    }

    async fn submit_orders(
        &self,
        request: Request<Streaming<pb::SignedOrder>>,
    ) -> Result<Response<pb::SubmitOrdersResponse>, Status> {
        let mut stream = request.into_inner();
        // Validate and queue each order as it arrives without waiting for its append, so one
        // stream fills a group commit; then wait for every ack.
        let mut pending = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            if pending.len() >= STREAM_ORDERS_MAX {
                return Err(ServiceError::Limit {
                    what: "orders per SubmitOrders stream",
                    limit: STREAM_ORDERS_MAX,
                }
                .into());
            }
            pending.push(self.enqueue(&msg));
        }
        let mut out = pb::SubmitOrdersResponse::default();
        for (i, p) in pending.into_iter().enumerate() {
            let r = match p {
                Ok(q) => acked(q).await,
                Err(e) => Err(e),
            };
            let outcome = match r {
                Ok(a) => {
                    out.accepted += 1;
                    pb::submit_outcome::Outcome::Accepted(a)
                }
                Err(e) => {
                    out.refused += 1;
                    let s = Status::from(e);
                    pb::submit_outcome::Outcome::Refused(pb::Refusal {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    })
                }
            };
            out.outcomes.push(pb::SubmitOutcome {
                index: i as u64,
                outcome: Some(outcome),
            });
        }
        Ok(Response::new(out))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::SignedRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let now = self.shared.clock.now_ms();
        let rx = {
            let mut st = self.shared.lock();
            let c = st.validate_cancel(
                request.get_ref(),
                &self.shared.timing,
                now,
                self.wall_now_s(),
                self.shared.limits.request_timestamp_window_s,
            )?;
            let (tx, rx) = oneshot::channel();
            let (pid, nonce) = (c.participant.clone(), c.nonce);
            self.shared
                .commit_tx
                .try_send(CommitItem::Cancel(c, tx))
                .map_err(|_| ServiceError::Busy)?;
            st.nonces.insert(pid, nonce);
            rx
        };
        let seq = rx.await.map_err(|_| ServiceError::ShuttingDown)??;
        Ok(Response::new(pb::CancelOrderResponse { ledger_seq: seq }))
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
            move |c| c.fills.get(&pid).cloned().unwrap_or_default(),
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
        let next_open = sh
            .timing
            .earliest_open(now)
            .max(st.closed_through + sh.timing.interval_s);
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
        }))
    }
}
