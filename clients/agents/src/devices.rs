//! Device physics: household load, rooftop PV, home battery, electric vehicle.
//!
//! Profiles (load, PV) are computed in `f64` — they are physics, not money — and become
//! decimals only through [`kw_from_f64`], the project's rounding rule at the quantity scale.
//! Stored energy (battery, EV) is kept exactly in decimals in kW·min (power × minutes), so
//! `5 min × 1.5 kW = 7.5 kW·min` needs no rounding and the battery's energy balance holds to
//! the last digit.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use baton_engine::units::{round_at, QUANTITY_SCALE};

use super::rng;

/// Minutes in a day.
pub const MINUTES_PER_DAY: i64 = 1440;
/// Minutes in an hour, as the decimal that turns kW·min into kWh.
const MINUTES_PER_HOUR: Decimal = Decimal::from_parts(60, 0, 0, false, 0);
/// One quantum at the quantity scale (1e-6 kW).
const QUANTUM_KW: Decimal = Decimal::from_parts(1, 0, 0, false, QUANTITY_SCALE);

/// Household profile: a night base plus a morning and an evening peak (Gaussian bumps in local
/// hours). Shape values are relative; [`SHAPE_MEAN`] is the shape's daily mean, so a household
/// with `mean_kw` uses `mean_kw × 24 h` a day on average.
const SHAPE_BASE: f64 = 0.5;
const MORNING_PEAK: (f64, f64, f64) = (7.5, 1.0, 0.8); // (hour, width h, height)
const EVENING_PEAK: (f64, f64, f64) = (19.0, 1.5, 1.4);
/// The shape's daily mean: base + Σ height × width × √(2π) / 24 (each bump integrates to
/// height × width × √(2π) hours; the tails beyond ±12 h are negligible).
const SHAPE_MEAN: f64 = SHAPE_BASE
    + (MORNING_PEAK.2 * MORNING_PEAK.1 + EVENING_PEAK.2 * EVENING_PEAK.1) * 2.506_628_274_631
        / 24.0;
/// An upper bound of the shape (base + both heights), used to size the participant's capacity.
const SHAPE_BOUND: f64 = SHAPE_BASE + MORNING_PEAK.2 + EVENING_PEAK.2;
/// The shape at the top of the evening peak (the morning bump has vanished 11.5 h away).
const SHAPE_EVENING_TOP: f64 = SHAPE_BASE + EVENING_PEAK.2;

/// Why a device refused an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A fill is negative.
    #[error("{what} fill {kw} kW is negative")]
    Negative {
        /// Which fill.
        what: &'static str,
        /// The fill.
        kw: Decimal,
    },
    /// A fill is more than the device can take.
    #[error("{what} fill {kw} kW exceeds the device's limit of {limit_kw} kW")]
    OverLimit {
        /// Which fill.
        what: &'static str,
        /// The fill.
        kw: Decimal,
        /// The limit at the time of the fill.
        limit_kw: Decimal,
    },
    /// The EV was charged while not plugged in.
    #[error("EV charged {kw} kW while not plugged in")]
    NotPlugged {
        /// The fill.
        kw: Decimal,
    },
}

/// A decimal kW at the quantity scale from a physics value (the project's rounding rule; a
/// non-finite value is a bug in the profile and becomes 0).
pub fn kw_from_f64(x: f64) -> Decimal {
    round_at(
        Decimal::from_f64_retain(x).unwrap_or(Decimal::ZERO),
        QUANTITY_SCALE,
    )
}

/// Rounds a non-negative quantity down to the quantity scale: a limit must never be rounded
/// up past what the device can do.
pub fn floor_kw(x: Decimal) -> Decimal {
    let mut d = x
        .max(Decimal::ZERO)
        .round_dp_with_strategy(QUANTITY_SCALE, RoundingStrategy::ToZero);
    d.rescale(QUANTITY_SCALE);
    d
}

/// Rounds a non-negative quantity up to the quantity scale.
pub fn ceil_kw(x: Decimal) -> Decimal {
    let mut d = x
        .max(Decimal::ZERO)
        .round_dp_with_strategy(QUANTITY_SCALE, RoundingStrategy::AwayFromZero);
    d.rescale(QUANTITY_SCALE);
    d
}

/// The local time of one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    /// Interval start, unix seconds (UTC).
    pub interval_start: i64,
    /// Interval length, minutes.
    pub interval_minutes: u32,
    /// Local time minus UTC, minutes (the population's time zone).
    pub utc_offset_minutes: i32,
}

impl Moment {
    /// Local minute of the day at the interval's start, 0..1440.
    pub fn minute_of_day(&self) -> i64 {
        (self.interval_start.div_euclid(60) + i64::from(self.utc_offset_minutes))
            .rem_euclid(MINUTES_PER_DAY)
    }

    /// Local hour at the interval's midpoint, in [0, 24) (profiles are sampled there).
    pub fn mid_hour(&self) -> f64 {
        let m = self.minute_of_day() as f64 + f64::from(self.interval_minutes) / 2.0;
        (m / 60.0).rem_euclid(24.0)
    }
}

fn bump(hour: f64, (centre, width, height): (f64, f64, f64)) -> f64 {
    // Distance on the 24-hour circle, so the evening peak's tail reaches past midnight.
    let d = (hour - centre + 12.0).rem_euclid(24.0) - 12.0;
    height * (-(d * d) / (2.0 * width * width)).exp()
}

/// A household's consumption.
#[derive(Clone, Debug, PartialEq)]
pub struct Household {
    /// Average consumption over a day, kW.
    pub mean_kw: Decimal,
    /// Relative noise: each interval's consumption is scaled by a seeded uniform factor in
    /// `[1 − noise, 1 + noise]`.
    pub noise: Decimal,
}

impl Household {
    /// Consumption during the interval, kW (physics: f64). `seed` and `id` select the noise
    /// stream; the same (seed, id, interval) always gives the same value.
    pub fn demand_kw(&self, seed: u64, id: &str, at: &Moment) -> f64 {
        let h = at.mid_hour();
        let shape = SHAPE_BASE + bump(h, MORNING_PEAK) + bump(h, EVENING_PEAK);
        let mut r = rng::stream("household-noise", seed, id, at.interval_start);
        let noise = self.noise.to_f64().unwrap_or(0.0);
        let factor = 1.0 + noise * (2.0 * rng::unit_f64(&mut r) - 1.0);
        self.mean_kw.to_f64().unwrap_or(0.0) * shape / SHAPE_MEAN * factor.max(0.0)
    }

    /// A noiseless load following the household profile whose evening peak (19:00 local) is
    /// `peak_kw`: the aggregate of many customers at a bus, whose noise averages out.
    pub fn with_evening_peak_kw(peak_kw: Decimal) -> Household {
        let mean = peak_kw.to_f64().unwrap_or(0.0) * SHAPE_MEAN / SHAPE_EVENING_TOP;
        Household {
            mean_kw: kw_from_f64(mean),
            noise: Decimal::ZERO,
        }
    }

    /// An upper bound of [`Household::demand_kw`] over the day, kW, rounded up.
    pub fn peak_kw(&self) -> Decimal {
        let f = SHAPE_BOUND / SHAPE_MEAN
            * (1.0 + self.noise.to_f64().unwrap_or(0.0))
            * self.mean_kw.to_f64().unwrap_or(0.0);
        ceil_kw(kw_from_f64(f) + QUANTUM_KW)
    }
}

/// Rooftop PV on a clear-sky day: `size × sin(π · (t − sunrise) / (sunset − sunrise))` between
/// sunrise and sunset (local hours), zero at night. No weather.
#[derive(Clone, Debug, PartialEq)]
pub struct Pv {
    /// Peak output, kW.
    pub size_kw: Decimal,
    /// Local hour of sunrise.
    pub sunrise_h: Decimal,
    /// Local hour of sunset (after sunrise).
    pub sunset_h: Decimal,
}

impl Pv {
    /// Output during the interval, kW (physics: f64), sampled at its midpoint.
    pub fn output_kw(&self, at: &Moment) -> f64 {
        let h = at.mid_hour();
        let rise = self.sunrise_h.to_f64().unwrap_or(6.0);
        let set = self.sunset_h.to_f64().unwrap_or(18.0);
        if h <= rise || h >= set || set <= rise {
            return 0.0;
        }
        let x = std::f64::consts::PI * (h - rise) / (set - rise);
        (self.size_kw.to_f64().unwrap_or(0.0) * x.sin()).max(0.0)
    }
}

/// A home battery. Round-trip losses are taken on charging: `c` kW for `m` minutes stores
/// `c · m · efficiency` kW·min; discharging `d` kW for `m` minutes takes exactly `d · m` out.
#[derive(Clone, Debug, PartialEq)]
pub struct Battery {
    energy_kwh: Decimal,
    power_kw: Decimal,
    efficiency: Decimal,
    stored_kwmin: Decimal,
}

impl Battery {
    /// A battery of `energy_kwh` and `power_kw` (both > 0), `efficiency` in (0, 1], holding
    /// `soc` (a fraction, clamped to [0, 1]) of its energy.
    pub fn new(energy_kwh: Decimal, power_kw: Decimal, efficiency: Decimal, soc: Decimal) -> Self {
        let soc = soc.clamp(Decimal::ZERO, Decimal::ONE);
        Battery {
            energy_kwh,
            power_kw,
            efficiency,
            stored_kwmin: energy_kwh * MINUTES_PER_HOUR * soc,
        }
    }

    /// Energy capacity, kWh.
    pub fn energy_kwh(&self) -> Decimal {
        self.energy_kwh
    }

    /// Power limit (charge and discharge), kW.
    pub fn power_kw(&self) -> Decimal {
        self.power_kw
    }

    /// Round-trip efficiency.
    pub fn efficiency(&self) -> Decimal {
        self.efficiency
    }

    /// Stored energy, kW·min (exact).
    pub fn stored_kwmin(&self) -> Decimal {
        self.stored_kwmin
    }

    /// Stored energy, kWh.
    pub fn stored_kwh(&self) -> Decimal {
        self.stored_kwmin / MINUTES_PER_HOUR
    }

    /// State of charge, fraction of the energy capacity.
    pub fn soc(&self) -> Decimal {
        self.stored_kwmin / (self.energy_kwh * MINUTES_PER_HOUR)
    }

    fn capacity_kwmin(&self) -> Decimal {
        self.energy_kwh * MINUTES_PER_HOUR
    }

    /// The most it can charge for `minutes` without exceeding its capacity, kW (rounded down).
    pub fn charge_limit_kw(&self, minutes: u32) -> Decimal {
        let per_kw = self.efficiency * Decimal::from(minutes);
        let room = self.capacity_kwmin() - self.stored_kwmin;
        let mut q = floor_kw(room / per_kw).min(self.power_kw);
        // Division rounds at 28 digits: step back a quantum if that rounded past the room.
        while q > Decimal::ZERO && q * per_kw > room {
            q -= QUANTUM_KW;
        }
        q.max(Decimal::ZERO)
    }

    /// The most it can discharge for `minutes` without going below empty, kW (rounded down).
    pub fn discharge_limit_kw(&self, minutes: u32) -> Decimal {
        let m = Decimal::from(minutes);
        let mut q = floor_kw(self.stored_kwmin / m).min(self.power_kw);
        while q > Decimal::ZERO && q * m > self.stored_kwmin {
            q -= QUANTUM_KW;
        }
        q.max(Decimal::ZERO)
    }

    /// Applies an interval's fills: `charged_kw` bought into it and `discharged_kw` sold out of
    /// it for `minutes`. Refuses (and changes nothing) if a fill is negative, above the power
    /// limit, or would take the stored energy outside [0, capacity].
    pub fn apply(
        &mut self,
        charged_kw: Decimal,
        discharged_kw: Decimal,
        minutes: u32,
    ) -> Result<(), DeviceError> {
        for (what, kw) in [("charge", charged_kw), ("discharge", discharged_kw)] {
            if kw < Decimal::ZERO {
                return Err(DeviceError::Negative { what, kw });
            }
            if kw > self.power_kw {
                return Err(DeviceError::OverLimit {
                    what,
                    kw,
                    limit_kw: self.power_kw,
                });
            }
        }
        let m = Decimal::from(minutes);
        let stored = self.stored_kwmin + charged_kw * m * self.efficiency - discharged_kw * m;
        if stored > self.capacity_kwmin() {
            return Err(DeviceError::OverLimit {
                what: "charge",
                kw: charged_kw,
                limit_kw: self.charge_limit_kw(minutes),
            });
        }
        if stored < Decimal::ZERO {
            return Err(DeviceError::OverLimit {
                what: "discharge",
                kw: discharged_kw,
                limit_kw: self.discharge_limit_kw(minutes),
            });
        }
        self.stored_kwmin = stored;
        Ok(())
    }
}

/// One plug-in session of an EV: plugged in for the whole interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Unix seconds of the session's arrival (identifies the session).
    pub arrival: i64,
    /// Whole intervals left before departure, this one included (≥ 1).
    pub intervals_left: i64,
}

/// An electric vehicle that arrives every day at the same local time, needs a set energy and
/// leaves at the same local time (the next morning when departure is before arrival).
#[derive(Clone, Debug, PartialEq)]
pub struct Ev {
    need_kwh: Decimal,
    charger_kw: Decimal,
    arrival_min: i64,
    departure_min: i64,
    session: Option<i64>,
    delivered_kwmin: Decimal,
    /// The first interval the EV was given a fill for: a session that began before it began
    /// before the simulation, and is assumed to have charged on track until then.
    first_seen: Option<i64>,
}

impl Ev {
    /// An EV needing `need_kwh` per session, charging at most `charger_kw`, arriving and
    /// leaving at local minutes of the day (taken modulo 1440; equal minutes: never plugged).
    pub fn new(
        need_kwh: Decimal,
        charger_kw: Decimal,
        arrival_min: i64,
        departure_min: i64,
    ) -> Self {
        Ev {
            need_kwh,
            charger_kw,
            arrival_min: arrival_min.rem_euclid(MINUTES_PER_DAY),
            departure_min: departure_min.rem_euclid(MINUTES_PER_DAY),
            session: None,
            delivered_kwmin: Decimal::ZERO,
            first_seen: None,
        }
    }

    /// Energy needed per session, kWh.
    pub fn need_kwh(&self) -> Decimal {
        self.need_kwh
    }

    /// Charger power, kW.
    pub fn charger_kw(&self) -> Decimal {
        self.charger_kw
    }

    /// Local arrival and departure, minutes of the day.
    pub fn window_min(&self) -> (i64, i64) {
        (self.arrival_min, self.departure_min)
    }

    /// The session the interval falls in, if the EV is plugged in for all of it.
    pub fn session(&self, at: &Moment) -> Option<Session> {
        let m = i64::from(at.interval_minutes);
        let now = at.minute_of_day();
        let since_arrival = (now - self.arrival_min).rem_euclid(MINUTES_PER_DAY);
        let length = (self.departure_min - self.arrival_min).rem_euclid(MINUTES_PER_DAY);
        if since_arrival + m > length {
            return None;
        }
        Some(Session {
            arrival: at.interval_start - since_arrival * 60,
            intervals_left: (length - since_arrival) / m,
        })
    }

    /// Energy delivered in `session` by the start of the interval `at`, kW·min: what the fills
    /// brought, or for a session the EV has had no fill in yet, what it is assumed to have had
    /// before the simulation began (a share of its need in proportion to the time plugged in,
    /// if the session began before the first interval the EV was given; else nothing). Without
    /// that assumption every EV found plugged in at the start would need its whole energy in
    /// what is left of the night.
    fn delivered_kwmin(&self, session: &Session, at: &Moment) -> Decimal {
        if self.session == Some(session.arrival) {
            return self.delivered_kwmin;
        }
        let first = self.first_seen.unwrap_or(at.interval_start);
        if session.arrival >= first {
            return Decimal::ZERO;
        }
        let m = i64::from(at.interval_minutes);
        let since_min = (at.interval_start - session.arrival) / 60;
        let length_min = since_min + session.intervals_left * m;
        floor_kw(
            self.need_kwh * MINUTES_PER_HOUR * Decimal::from(since_min)
                / Decimal::from(length_min.max(1)),
        )
    }

    /// Energy still needed in `session` from the interval `at` on, kW·min (never negative).
    pub fn remaining_kwmin(&self, session: &Session, at: &Moment) -> Decimal {
        (self.need_kwh * MINUTES_PER_HOUR - self.delivered_kwmin(session, at)).max(Decimal::ZERO)
    }

    /// Energy delivered in the current session by the start of `at`, kWh.
    pub fn delivered_kwh(&self, at: &Moment) -> Decimal {
        match self.session(at) {
            Some(s) => self.delivered_kwmin(&s, at) / MINUTES_PER_HOUR,
            None => Decimal::ZERO,
        }
    }

    /// Applies an interval's fill: `charged_kw` bought for the EV during `at`.
    pub fn apply(&mut self, at: &Moment, charged_kw: Decimal) -> Result<(), DeviceError> {
        if charged_kw < Decimal::ZERO {
            return Err(DeviceError::Negative {
                what: "EV",
                kw: charged_kw,
            });
        }
        if charged_kw > self.charger_kw {
            return Err(DeviceError::OverLimit {
                what: "EV",
                kw: charged_kw,
                limit_kw: self.charger_kw,
            });
        }
        let Some(s) = self.session(at) else {
            if charged_kw.is_zero() {
                self.first_seen.get_or_insert(at.interval_start);
                return Ok(());
            }
            return Err(DeviceError::NotPlugged { kw: charged_kw });
        };
        if self.session != Some(s.arrival) {
            let before = self.delivered_kwmin(&s, at);
            self.session = Some(s.arrival);
            self.delivered_kwmin = before;
        }
        self.first_seen.get_or_insert(at.interval_start);
        self.delivered_kwmin += charged_kw * Decimal::from(at.interval_minutes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn at(hour: i64, minute: i64) -> Moment {
        Moment {
            interval_start: 1_800_000_000 - 1_800_000_000 % 86_400 + hour * 3600 + minute * 60,
            interval_minutes: 5,
            utc_offset_minutes: 0,
        }
    }

    #[test]
    fn pv_is_zero_at_night_and_peaks_at_noon() {
        let pv = Pv {
            size_kw: dec!(5),
            sunrise_h: dec!(6),
            sunset_h: dec!(18),
        };
        for m in (0..MINUTES_PER_DAY).step_by(5) {
            let a = at(0, m);
            let h = a.mid_hour();
            let out = pv.output_kw(&a);
            if !(6.0..=18.0).contains(&h) {
                assert_eq!(out, 0.0, "night at {h}");
            }
            assert!((0.0..=5.0).contains(&out));
        }
        // 11:57:30 is almost exactly the top of the sine.
        assert!(pv.output_kw(&at(11, 55)) > 4.99);
        assert_eq!(kw_from_f64(pv.output_kw(&at(3, 0))), Decimal::ZERO);
    }

    #[test]
    fn household_has_an_evening_peak_and_stays_under_its_bound() {
        let h = Household {
            mean_kw: dec!(1.5),
            noise: dec!(0.1),
        };
        let peak = h.peak_kw().to_f64().unwrap();
        let mut sum = 0.0;
        for m in (0..MINUTES_PER_DAY).step_by(5) {
            let d = h.demand_kw(1, "h001", &at(0, m));
            assert!(d > 0.0 && d <= peak, "{d} vs {peak}");
            sum += d;
        }
        let mean = sum / 288.0;
        assert!((mean - 1.5).abs() < 0.1, "daily mean {mean}");
        assert!(h.demand_kw(1, "h001", &at(19, 0)) > h.demand_kw(1, "h001", &at(3, 0)) * 2.0);
    }

    #[test]
    fn battery_limits_round_down_and_apply_is_exact() {
        // 10 kWh at 90 %: 600 kW·min capacity, half full = 300.
        let mut b = Battery::new(dec!(10), dec!(5), dec!(0.9), dec!(0.5));
        assert_eq!(b.stored_kwmin(), dec!(300));
        // Room 300 / (0.9 × 5) = 66.67 kW, limited by power 5.
        assert_eq!(b.charge_limit_kw(5), dec!(5));
        b.apply(dec!(5), Decimal::ZERO, 5).unwrap();
        // 5 kW × 5 min × 0.9 = 22.5 kW·min stored.
        assert_eq!(b.stored_kwmin(), dec!(322.5));
        let mut nearly = Battery::new(dec!(1), dec!(50), dec!(0.9), dec!(0.999));
        // Room 0.06 kW·min / 4.5 = 0.01333… kW, rounded down.
        assert_eq!(nearly.charge_limit_kw(5), dec!(0.013333));
        let q = nearly.charge_limit_kw(5);
        nearly.apply(q, Decimal::ZERO, 5).unwrap();
        // 59.94 + 0.013333 × 5 × 0.9 = 59.9999985 kW·min: 0.0000015 of room, less than the
        // 0.0000045 one more quantum would store.
        assert_eq!(nearly.stored_kwmin(), dec!(59.9999985));
        assert_eq!(nearly.charge_limit_kw(5), Decimal::ZERO);
        let before = nearly.clone();
        assert!(nearly.apply(dec!(0.000001), Decimal::ZERO, 5).is_err());
        assert_eq!(nearly, before, "a refused fill changes nothing");
    }

    #[test]
    fn ev_sessions_span_midnight() {
        // Arrives 18:00, leaves 07:00.
        let ev = Ev::new(dec!(20), dec!(7), 18 * 60, 7 * 60);
        assert!(ev.session(&at(17, 55)).is_none());
        let s = ev.session(&at(18, 0)).unwrap();
        assert_eq!(s.intervals_left, 13 * 12);
        let late = ev.session(&at(6, 55)).unwrap();
        assert_eq!(late.intervals_left, 1);
        // 06:55 of the same calendar day belongs to the session that began the evening before.
        assert_eq!(late.arrival, s.arrival - 86_400);
        assert!(ev.session(&at(7, 0)).is_none());
    }
}
