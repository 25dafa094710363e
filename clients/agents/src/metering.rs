//! What each agent's meter records for an interval: metered import and export energy from its
//! device physics, given what the market cleared for it.
//!
//! A pure, seeded function ([`meter`]) of the agent's state at the start of the interval, its
//! plan, its fills and flexibility allocations, and its [`DeliveryRole`]:
//!
//! - **Household**: an agent that follows its clearing consumes and produces exactly what was
//!   cleared for its household order (its load and PV are the same physics its plan was made
//!   from; a part not accepted is shed or curtailed). A *deviating* agent's actual load is its
//!   planned load — the profile with its own noise — scaled by a seeded factor in
//!   `[1 − deviation, 1 + deviation]` per interval, less its actual PV, whatever was cleared.
//! - **Battery**: it moves by its accepted charge and discharge and by the flexibility it was
//!   allocated (the meter takes procured flexibility as activated in full in its interval, as
//!   the operator calls it on the congested area): up-flexibility discharges, down-flexibility
//!   charges. An agent that *fails to deliver flexibility* moves for its energy fills only. The
//!   movement is netted (a battery does not charge and discharge at once) and held within its
//!   power and what its state of charge allows in the interval.
//! - **EV**: it charges its accepted fill, within its charger and only while plugged in.
//!
//! The metered net power is their sum; import is its positive part and export its negative
//! part, each × minutes / 60 as kWh at [`METER_SCALE`] decimals by the engine's rounding rule.
//! Both are ≥ 0 and at most one is non-zero.
//!
//! Which agents deviate and which fail to deliver flexibility are exact counts
//! (`round(share × agents)`) chosen by seeded shuffles ([`delivery_roles`]).

use baton_engine::model::{Direction, Side};
use baton_engine::units::round_at;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::devices::kw_from_f64;
use super::population::{owners, DeliveryFile, Population};
use super::rng;
use super::strategy::{Agent, Plan, Purpose};

/// Decimal places of a metered energy, kWh.
pub const METER_SCALE: u32 = 6;
/// Minutes in an hour, for kW × minutes → kWh.
const MINUTES_PER_HOUR: Decimal = Decimal::from_parts(60, 0, 0, false, 0);

/// How one agent departs from its cleared position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryRole {
    /// Its household load deviates from what it planned.
    pub deviates: bool,
    /// It does not deliver flexibility it was allocated.
    pub fails_flex: bool,
}

/// One agent's metered energy for one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterReading {
    /// Participant id.
    pub participant: String,
    /// Interval start, unix seconds.
    pub interval_start: i64,
    /// Energy drawn from the network, kWh (≥ 0, [`METER_SCALE`] decimals).
    pub import_kwh: Decimal,
    /// Energy fed into the network, kWh (≥ 0, [`METER_SCALE`] decimals).
    pub export_kwh: Decimal,
}

/// Each agent's role, in `population.agents` order: exactly
/// `round(deviating_share × agents)` deviate and `round(flex_failure_share × agents)` fail to
/// deliver flexibility, chosen by two independent seeded shuffles.
pub fn delivery_roles(population: &Population) -> Vec<DeliveryRole> {
    let n = population.agents.len();
    let d: &DeliveryFile = &population.delivery;
    let deviates = owners(population.seed, "delivery/deviating", d.deviating_share, n);
    let fails = owners(
        population.seed,
        "delivery/flex-failure",
        d.flex_failure_share,
        n,
    );
    deviates
        .into_iter()
        .zip(fails)
        .map(|(deviates, fails_flex)| DeliveryRole {
            deviates,
            fails_flex,
        })
        .collect()
}

/// The agent's cleared net position for the interval, kW (positive: it draws from the
/// network): accepted buys less accepted sells, with allocated flexibility activated
/// (up-flexibility injects, down-flexibility draws).
pub fn cleared_net_kw(
    plan: &Plan,
    fills: &[(Purpose, Decimal)],
    flex: &[(Direction, Decimal)],
) -> Decimal {
    let mut net = Decimal::ZERO;
    for (p, q) in fills {
        match side_of(plan, *p) {
            Some(Side::Buy) => net += *q,
            Some(Side::Sell) => net -= *q,
            None => {}
        }
    }
    for (d, q) in flex {
        match d {
            Direction::Up => net -= *q,
            Direction::Down => net += *q,
        }
    }
    net
}

fn side_of(plan: &Plan, purpose: Purpose) -> Option<Side> {
    plan.orders
        .iter()
        .find(|o| o.purpose == purpose)
        .map(|o| o.side)
}

fn accepted(fills: &[(Purpose, Decimal)], purpose: Purpose) -> Decimal {
    fills
        .iter()
        .filter(|(p, _)| *p == purpose)
        .map(|(_, q)| (*q).max(Decimal::ZERO))
        .sum()
}

/// What the agent's meter records for the interval of `plan`. `agent` is its state at the
/// start of the interval (before the fills are applied to it); `fills` and `flex` are what the
/// market cleared for the plan's orders and offers. Pure: the same inputs give the same
/// reading.
pub fn meter(
    agent: &Agent,
    role: DeliveryRole,
    plan: &Plan,
    fills: &[(Purpose, Decimal)],
    flex: &[(Direction, Decimal)],
    delivery: &DeliveryFile,
) -> MeterReading {
    let at = plan.at;
    let minutes = at.interval_minutes;
    // Household: the cleared position, or the deviating physics.
    let household_cleared = match side_of(plan, Purpose::Household) {
        Some(Side::Buy) => accepted(fills, Purpose::Household),
        Some(Side::Sell) => -accepted(fills, Purpose::Household),
        None => Decimal::ZERO,
    };
    let household = if role.deviates {
        let load = agent.household().demand_kw(agent.seed(), agent.id(), &at);
        let mut r = rng::stream(
            "delivery-deviation",
            agent.seed(),
            agent.id(),
            at.interval_start,
        );
        let d = delivery.deviation.to_f64().unwrap_or(0.0);
        let factor = 1.0 + d * (2.0 * rng::unit_f64(&mut r) - 1.0);
        let pv = agent.pv().map(|p| p.output_kw(&at)).unwrap_or(0.0);
        kw_from_f64(load * factor.max(0.0) - pv)
    } else {
        household_cleared
    };
    // Battery: energy fills, plus activated flexibility unless it fails to deliver.
    let battery = match agent.battery() {
        Some(b) => {
            let (mut charge, mut discharge) = (
                accepted(fills, Purpose::BatteryCharge),
                accepted(fills, Purpose::BatteryDischarge),
            );
            if !role.fails_flex {
                for (d, q) in flex {
                    match d {
                        Direction::Up => discharge += (*q).max(Decimal::ZERO),
                        Direction::Down => charge += (*q).max(Decimal::ZERO),
                    }
                }
            }
            (charge - discharge).clamp(-b.discharge_limit_kw(minutes), b.charge_limit_kw(minutes))
        }
        None => Decimal::ZERO,
    };
    // EV: its fill, within the charger, only while plugged in.
    let ev = match agent.ev() {
        Some(e) if e.session(&at).is_some() => accepted(fills, Purpose::Ev).min(e.charger_kw()),
        _ => Decimal::ZERO,
    };
    let net_kw = household + battery + ev;
    let kwh = |kw: Decimal| round_at(kw * Decimal::from(minutes) / MINUTES_PER_HOUR, METER_SCALE);
    let mut reading = MeterReading {
        participant: agent.id().to_string(),
        interval_start: at.interval_start,
        import_kwh: kwh(net_kw.max(Decimal::ZERO)),
        export_kwh: kwh((-net_kw).max(Decimal::ZERO)),
    };
    reading.import_kwh.rescale(METER_SCALE);
    reading.export_kwh.rescale(METER_SCALE);
    reading
}
