//! Market time. The scheduler and the gate checks read a [`Clock`], never the system time
//! directly, so demos and tests can run the market faster than real time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of market time, in unix milliseconds (UTC).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, unix milliseconds.
    fn now_ms(&self) -> i64;
    /// Market seconds per real second (1 for the wall clock); the scheduler polls faster when
    /// time runs faster.
    fn scale(&self) -> f64 {
        1.0
    }
    /// Whether this clock reads the real time of day. A restart over a ledger that already
    /// records later market time holds such a clock at that time until it catches up (the
    /// wall clock stepped back); any other clock is moved forward to it and runs on from there.
    fn tracks_wall_time(&self) -> bool {
        false
    }
}

/// Unix milliseconds of the system clock.
pub fn wall_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> i64 {
        wall_now_ms()
    }

    fn tracks_wall_time(&self) -> bool {
        true
    }
}

/// The clock the server runs on: the configured clock, never reading earlier than the market
/// time the ledger already records. A market clock never goes backwards: after a restart of an
/// accelerated clock (which starts again from the wall time) the scheduler would otherwise see
/// gates reopen that it has already closed, and `MarketInfo` would announce a time behind the
/// intervals it lists as cleared.
#[derive(Debug)]
pub(crate) struct MarketClock {
    inner: std::sync::Arc<dyn Clock>,
    /// Added to `inner`'s reading (clocks that do not track the wall time).
    shift_ms: i64,
    /// The reading never goes below this (clocks that track the wall time).
    floor_ms: i64,
}

impl MarketClock {
    /// `inner`, resumed at `floor_ms` if it reads earlier (see [`Clock::tracks_wall_time`]).
    pub(crate) fn resume(inner: std::sync::Arc<dyn Clock>, floor_ms: i64) -> Self {
        let now = inner.now_ms();
        let shift_ms = if inner.tracks_wall_time() {
            0
        } else {
            floor_ms.saturating_sub(now).max(0)
        };
        MarketClock {
            inner,
            shift_ms,
            floor_ms,
        }
    }
}

impl Clock for MarketClock {
    fn now_ms(&self) -> i64 {
        self.inner
            .now_ms()
            .saturating_add(self.shift_ms)
            .max(self.floor_ms)
    }

    fn scale(&self) -> f64 {
        self.inner.scale()
    }

    fn tracks_wall_time(&self) -> bool {
        self.inner.tracks_wall_time()
    }
}

/// A clock that starts at `origin_ms` and runs `scale` times faster than real time
/// (`--time-scale`): with scale 60 a five-minute interval lasts five real seconds.
#[derive(Clone, Debug)]
pub struct ScaledClock {
    origin_ms: i64,
    start: Instant,
    scale: f64,
}

impl ScaledClock {
    /// Starts at `origin_ms` now. A `scale` that is not finite and positive is taken as 1.
    pub fn new(origin_ms: i64, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        ScaledClock {
            origin_ms,
            start: Instant::now(),
            scale,
        }
    }

    /// Starts at the current wall time.
    pub fn from_now(scale: f64) -> Self {
        Self::new(wall_now_ms(), scale)
    }

    /// Reads `anchor_ms` at wall time `anchor_ms` and runs `scale` times faster from there:
    /// processes started at different moments with the same anchor read the same market time
    /// (as closely as their wall clocks agree).
    pub fn anchored(anchor_ms: i64, scale: f64) -> Self {
        let mut c = Self::new(0, scale);
        let since = (wall_now_ms() - anchor_ms) as f64 * c.scale;
        c.origin_ms = anchor_ms + since as i64;
        c
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        let elapsed_ms = self.start.elapsed().as_secs_f64() * 1000.0 * self.scale;
        self.origin_ms + elapsed_ms as i64
    }

    fn scale(&self) -> f64 {
        self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_and_starts_at_its_origin() {
        let c = ScaledClock::new(1_000_000, 1000.0);
        let a = c.now_ms();
        assert!((1_000_000..1_000_000 + 1_000).contains(&a), "{a}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        // 20 ms real × 1000 = at least 20 s of market time.
        assert!(c.now_ms() - a >= 20_000);
    }

    #[test]
    fn a_resumed_accelerated_clock_moves_forward_to_the_floor_and_runs_on() {
        let c = MarketClock::resume(std::sync::Arc::new(ScaledClock::new(1_000, 1000.0)), 50_000);
        let a = c.now_ms();
        assert!(a >= 50_000, "{a}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(c.now_ms() - a >= 20_000);
    }

    #[test]
    fn a_resumed_wall_clock_holds_at_the_floor() {
        let floor = wall_now_ms() + 3_600_000;
        let c = MarketClock::resume(std::sync::Arc::new(WallClock), floor);
        assert_eq!(c.now_ms(), floor);
        let past = MarketClock::resume(std::sync::Arc::new(WallClock), 0);
        assert!((past.now_ms() - wall_now_ms()).abs() < 1_000);
    }
}
