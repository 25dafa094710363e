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
}
