//! Nonces that keep increasing across process restarts without any stored state.
//!
//! The server refuses a participant's order or cancel (and an operator's admin request) whose
//! nonce is not greater than the last one it accepted. [`NonceCounter`] hands out
//! `next = max(last + 1, unix time in microseconds)`: within a process it is strictly
//! increasing; across a restart the clock has moved on, so the new process starts above
//! everything the old one used. This holds as long as the system clock is not stepped back
//! and a process does not use nonces faster than one per microsecond on average (a batch of
//! `n` orders takes `n` consecutive nonces, running at most `n` µs ahead of the clock).
//! When it does not hold — the clock was stepped back, or two processes share a key — the
//! server's refusal says which nonce it last accepted, and the clients move past it
//! ([`NonceCounter::observe`]) before signing anew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A participant's (or the operator's) nonce sequence. Clones share the sequence.
#[derive(Clone, Debug, Default)]
pub struct NonceCounter(Arc<AtomicU64>);

impl NonceCounter {
    /// A fresh sequence: its first nonce is the current unix time in microseconds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next nonce.
    pub fn next(&self) -> u64 {
        self.reserve(1)
    }

    /// Reserves `n` consecutive nonces (for a stream that the server checks in order) and
    /// returns the first. `n` of 0 is taken as 1.
    pub fn reserve(&self, n: u64) -> u64 {
        let n = n.max(1);
        let mut last = self.0.load(Ordering::Relaxed);
        loop {
            let first = last.saturating_add(1).max(unix_micros());
            let new_last = first.saturating_add(n - 1);
            match self
                .0
                .compare_exchange_weak(last, new_last, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return first,
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the sequence past `used` (a nonce the server says it has already accepted).
    pub fn observe(&self, used: u64) {
        self.0.fetch_max(used, Ordering::AcqRel);
    }

    /// The last nonce handed out (0 before the first).
    pub fn last(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Microseconds since the unix epoch (0 if the clock reads before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Seconds since the unix epoch: the timestamp signed requests carry (wall time, whatever the
/// market clock says).
pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_increase_strictly_and_a_new_counter_starts_above_an_old_one() {
        let c = NonceCounter::new();
        let a = c.next();
        let first = c.reserve(1_000);
        assert!(first > a);
        assert_eq!(c.last(), first + 999);
        let b = c.next();
        assert!(b > first + 999);
        // A "restarted process": a fresh counter starts at the clock, above every nonce the
        // old one handed out once the clock has passed them.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let fresh = NonceCounter::new();
        assert!(fresh.next() > b);
        // Clones share the sequence.
        let clone = c.clone();
        let x = clone.next();
        assert!(c.next() > x);
        // A server's refusal moves it on.
        c.observe(u64::MAX / 2);
        assert_eq!(c.next(), u64::MAX / 2 + 1);
    }

    #[test]
    fn concurrent_clones_never_hand_out_the_same_nonce() {
        let c = NonceCounter::new();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
