//! Seeded randomness for the simulator: every draw comes from a ChaCha8 stream whose seed is a
//! SHA-256 of (domain, population seed, agent id, extra), so one agent's draws never depend on
//! another's, on how many agents there are, or on the order in which they are computed.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

/// Domain separator of every derived seed: changing it changes every population.
const DOMAIN: &[u8] = b"baton-agents/v1";

/// 32 bytes derived from (domain, seed, id, extra).
pub(crate) fn derive(domain: &str, seed: u64, id: &str, extra: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0]);
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    h.update([0]);
    h.update(extra.to_le_bytes());
    h.finalize().into()
}

/// The random stream for (domain, seed, id, extra).
pub(crate) fn stream(domain: &str, seed: u64, id: &str, extra: i64) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(derive(domain, seed, id, extra))
}

/// Uniform in [0, 1), 53 bits (for device physics only).
pub(crate) fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Uniform in [0, 1] on a grid of 10^-6, exact in decimals.
pub(crate) fn unit_decimal(rng: &mut ChaCha8Rng) -> Decimal {
    // The modulo bias over 2^64 is below 1e-13: irrelevant for a simulator.
    Decimal::new((rng.next_u64() % 1_000_001) as i64, 6)
}

/// Uniform index in 0..n (n > 0).
pub(crate) fn index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_separated_by_every_input() {
        let a = derive("agent", 1, "h001", 0);
        assert_eq!(a, derive("agent", 1, "h001", 0));
        assert_ne!(a, derive("agent", 2, "h001", 0));
        assert_ne!(a, derive("agent", 1, "h002", 0));
        assert_ne!(a, derive("agent", 1, "h001", 1));
        assert_ne!(a, derive("key", 1, "h001", 0));
        // "h0" + "01" must not collide with "h00" + "1": the id is terminated.
        assert_ne!(derive("a", 1, "h0", 0), derive("a", 1, "h00", 0));
    }

    #[test]
    fn unit_draws_stay_in_range() {
        let mut r = stream("t", 7, "x", 0);
        for _ in 0..1000 {
            let u = unit_f64(&mut r);
            assert!((0.0..1.0).contains(&u));
            let d = unit_decimal(&mut r);
            assert!(d >= Decimal::ZERO && d <= Decimal::ONE);
            assert!(index(&mut r, 5) < 5);
        }
    }
}
