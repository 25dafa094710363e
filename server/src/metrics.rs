//! Prometheus metrics of this process (one node), served as text on `GET /metrics` from a
//! separate plain-HTTP listener (`baton serve --metrics-addr`).
//!
//! Counters are process-wide statics: the status mapping (`error.rs`) counts refusals without
//! a handle on the server, and a process is one node. Gauges that describe the market (queue
//! depth, unsequenced intake, leadership, ledger head) are read from the server when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Shared, INTAKE_QUEUE_DEPTH_MAX};

/// Upper bounds of the latency histograms, seconds.
const BUCKETS_S: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];
/// Longest request head the endpoint reads, bytes.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a scrape may take to send its request, milliseconds.
const REQUEST_READ_MS_MAX: u64 = 5_000;
/// gRPC status codes (0–16), for the refusal counters.
const GRPC_CODES: usize = 17;

/// A latency histogram in microseconds.
struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS_S.len()],
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, &le) in self.buckets.iter().zip(&BUCKETS_S) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS_S) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The process's counters.
pub(crate) struct Metrics {
    accepted: AtomicU64,
    refusals: [AtomicU64; GRPC_CODES],
    commit: Histogram,
    committed_items: AtomicU64,
    sequence: Histogram,
    sequenced: AtomicU64,
    /// -1: not leading (or a single process, which always leads: see `render`).
    epoch: AtomicI64,
    intervals: AtomicU64,
    clearing_ms_last: AtomicU64,
    gate_to_publish_ms_last: AtomicU64,
}

pub(crate) static METRICS: Metrics = Metrics {
    accepted: AtomicU64::new(0),
    refusals: [const { AtomicU64::new(0) }; GRPC_CODES],
    commit: Histogram::new(),
    committed_items: AtomicU64::new(0),
    sequence: Histogram::new(),
    sequenced: AtomicU64::new(0),
    epoch: AtomicI64::new(-1),
    intervals: AtomicU64::new(0),
    clearing_ms_last: AtomicU64::new(0),
    gate_to_publish_ms_last: AtomicU64::new(0),
};

impl Metrics {
    /// An order or cancel acknowledged.
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused with gRPC status `code`.
    pub(crate) fn refused(&self, code: tonic::Code) {
        if let Some(c) = self.refusals.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One durable intake commit (a ledger append, or a shared-intake transaction) of `items`.
    pub(crate) fn intake_commit(&self, d: Duration, items: usize) {
        self.commit.observe(d);
        self.committed_items
            .fetch_add(items as u64, Ordering::Relaxed);
    }

    /// One sequencing append of `items` intake rows.
    pub(crate) fn sequenced(&self, d: Duration, items: usize) {
        self.sequence.observe(d);
        self.sequenced.fetch_add(items as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_leader(&self, epoch: Option<u64>) {
        self.epoch
            .store(epoch.map_or(-1, |e| e as i64), Ordering::Relaxed);
    }

    /// One interval recorded: its clearing time and the time from its gate to its publication.
    pub(crate) fn interval(&self, clearing: Duration, gate_to_publish: Duration) {
        self.intervals.fetch_add(1, Ordering::Relaxed);
        self.clearing_ms_last
            .store(clearing.as_millis() as u64, Ordering::Relaxed);
        self.gate_to_publish_ms_last
            .store(gate_to_publish.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The text exposition of this node's metrics.
pub(crate) async fn render(shared: &Shared) -> String {
    let m = &METRICS;
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "baton_intake_accepted_total",
        "Orders and cancels acknowledged by this node.",
        m.accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "baton_intake_committed_total",
        "Orders and cancels written by this node's intake commits.",
        m.committed_items.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP baton_refusals_total Requests refused, by gRPC status.\n# TYPE baton_refusals_total counter"
    );
    for (code, c) in m.refusals.iter().enumerate() {
        let v = c.load(Ordering::Relaxed);
        if v > 0 {
            let name = format!("{:?}", tonic::Code::from(code as i32));
            let _ = writeln!(out, "baton_refusals_total{{code=\"{name}\"}} {v}");
        }
    }
    m.commit.write(
        &mut out,
        "baton_intake_commit_seconds",
        "Latency of one durable intake commit (one batch).",
    );
    counter(
        &mut out,
        "baton_sequenced_total",
        "Intake rows this node sequenced into the chain as leader.",
        m.sequenced.load(Ordering::Relaxed),
    );
    m.sequence.write(
        &mut out,
        "baton_sequence_append_seconds",
        "Latency of one sequencing append (one batch of intake rows).",
    );
    let gauge = |out: &mut String, name: &str, help: &str, v: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        &mut out,
        "baton_intake_queue_depth",
        "Accepted orders waiting for this node's intake commit.",
        (INTAKE_QUEUE_DEPTH_MAX - shared.commit_tx.capacity()).to_string(),
    );
    let (leader, epoch) = match &shared.cluster {
        None => (1, 0),
        Some(_) => {
            let e = m.epoch.load(Ordering::Relaxed);
            (i64::from(e >= 0), e.max(0))
        }
    };
    gauge(
        &mut out,
        "baton_leader",
        "1 while this node leads (a single process always does).",
        leader.to_string(),
    );
    gauge(
        &mut out,
        "baton_leader_epoch",
        "The lease epoch this node leads with (0: not leading, or a single process).",
        epoch.to_string(),
    );
    if let Some(node) = &shared.cluster {
        if let Ok(n) = node.cluster.pending_count().await {
            gauge(
                &mut out,
                "baton_intake_unsequenced",
                "Acknowledged intake rows (all nodes) the leader has not sequenced yet.",
                n.to_string(),
            );
        }
        if let Ok(l) = node.cluster.lease().await {
            gauge(
                &mut out,
                "baton_lease_epoch",
                "The lease's current epoch, whoever holds it.",
                l.epoch.to_string(),
            );
        }
    }
    if let Ok(Some(h)) = shared.ledger.head().await {
        gauge(
            &mut out,
            "baton_ledger_head_seq",
            "The ledger's last seq.",
            h.seq.to_string(),
        );
    }
    counter(
        &mut out,
        "baton_intervals_recorded_total",
        "Intervals this node cleared and recorded.",
        m.intervals.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "baton_clearing_seconds_last",
        "Build, solve and settle time of the last interval this node cleared.",
        (m.clearing_ms_last.load(Ordering::Relaxed) as f64 / 1e3).to_string(),
    );
    gauge(
        &mut out,
        "baton_gate_to_publish_seconds_last",
        "Time from the last interval's gate closure to its publication.",
        (m.gate_to_publish_ms_last.load(Ordering::Relaxed) as f64 / 1e3).to_string(),
    );
    out
}

/// Serves `GET /metrics` on `listener` until the server shuts down.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_millis(REQUEST_READ_MS_MAX), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await?;
                    if n == 0 || head.len() + n > REQUEST_HEAD_BYTES_MAX {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let mut parts = line.split(|&b| b == b' ');
            let (method, path) = (parts.next(), parts.next());
            let (status, body) = match (method, path) {
                (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render(&shared).await),
                _ => ("404 Not Found", "only GET /metrics is served\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
