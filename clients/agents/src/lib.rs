//! Simulated prosumers that trade on a live Baton market (`baton agents`, `baton demo`).
//!
//! A population file ([`PopulationFile`], e.g. `scenarios/ieee33-agents.toml`) names a
//! network scenario and describes a few hundred households; [`Population::generate`] expands it
//! deterministically into [`Agent`]s, each with an id (`h001`…), a node (spread over the
//! feeder's load buses in proportion to the case's load), a capacity, devices and an ed25519 key
//! derived from (seed, id). **Those keys are simulator keys only**: anyone with the population
//! file can recompute them, so they must never be registered on a market with real money.
//! [`Population::participants_csv`] writes the registration list for the operator.
//!
//! [`metering::meter`] gives each agent's metered import and export energy for an interval
//! from its device physics, with a seeded share of agents deviating from their cleared
//! position or failing to deliver flexibility (`[delivery]`); [`feeder::behind`] names the
//! nodes behind a line of a radial feeder.
//!
//! # Devices
//!
//! - **Household load**: a daily profile with a morning and an evening peak, scaled to the
//!   household's mean, times a seeded noise factor per interval.
//! - **Rooftop PV**: clear-sky, `size × sin(π · (t − sunrise) / (sunset − sunrise))` in
//!   daylight, zero at night.
//! - **Battery**: energy (kWh), power limit (kW), round-trip efficiency (taken on charging) and a
//!   state of charge that only the agent's actual fills change.
//! - **EV**: arrives and leaves at the same local times every day, needs a set energy per
//!   session, charges up to its charger's power.
//!
//! # Physical balance
//!
//! Every participant's expected net position enters the market, so the flows the market
//! computes are the feeder's physical flows: a household's net load is bought must-take, its PV
//! surplus offered down to the feed-in price, and the load of each bus that the population
//! does not simulate (the population file's `[bus_load]`: a share of the network scenario's
//! bus load, the Baran–Wu case's) is one must-take participant per bus, `bus-<node>`,
//! following the household profile. `[[cluster]]` sections place further groups of prosumers
//! on chosen nodes with their own devices (the shipped file: an estate of EV owners on the
//! weak lateral, farms with large PV on the rural one). The grid connection supplies what the
//! neighbours do not, at its import price.
//!
//! # Strategies
//!
//! Prices are placed against the grid connection's export price `e` (what surplus fetches
//! outside the market) and import price `i` (what the grid supplies at the feeder head).
//!
//! - **Household**: net load `load − pv` > 0 is inflexible and bought must-take in one block
//!   (it is consumed whatever the price; it pays its node's price, `i` wherever the grid is
//!   marginal); a net surplus is produced whatever the price too and offered in one block
//!   down to the feed-in, a price quantum below `e` (at `e` exactly, exporting and curtailing
//!   are worth the same to the solver): it earns its node's price and is curtailed only where
//!   a line cannot carry it.
//! - **Battery arbitrage**: against the moving average `p̄` of the node's last K cleared
//!   prices (the spread's midpoint until one is known), charge at `p̄ − m·(i − e) + lean` and
//!   discharge at `p̄ + m·(i − e) + lean`, `lean = (½ − soc) · m · (i − e)`, each for as much as
//!   power and state of charge allow (rounded down, so no fill can overfill or overdrain it).
//! - **EV**: what cannot wait — the energy that full-power charging in the remaining intervals
//!   could no longer deliver — is bid must-take; the rest of what is needed, up to the charger,
//!   is bid at `e + f · (i − e)` with `f` rising from `ev_relaxed_fraction` to
//!   `ev_urgent_fraction` as the share of the remaining time it must charge rises to 1
//!   (fractions above 1 bid above the import price: such an EV charges on arrival and waits
//!   only where a congested line raises its node's price past its bid). An EV found plugged
//!   in when the simulation starts is assumed to have charged on track until then (a share of
//!   its need in proportion to the time it has been plugged in).
//! - **Flexibility** (when enabled): a battery holds `reserve` of its headroom back from its
//!   energy orders and offers it as up-flexibility (discharge) and down-flexibility (charge) at
//!   the file's prices.
//!
//! Every quantity is a decimal at the engine's quantity scale and every price at its price scale;
//! `f64` is used only inside the load and PV profiles and rounded by
//! [`baton_engine::units::round_at`] before it becomes an order. Each side's orders together stay
//! within the participant's capacity, and every price within the market's floor and cap.
//!
//! **Determinism:** an agent's plan is a pure function of its state and the market context
//! (interval, floor, cap, grid prices); its state changes only through the results and fills it
//! is given. The same seed and the same sequence of results give the same orders.

use thiserror::Error;

pub mod devices;
pub mod feeder;
pub mod metering;
pub mod population;
mod rng;
pub mod runner;
pub mod strategy;

#[cfg(test)]
mod tests;

pub use devices::{Battery, Ev, Household, Moment, Pv};
pub use metering::{cleared_net_kw, delivery_roles, meter, DeliveryRole, MeterReading};
pub use population::{GridPrices, Population, PopulationFile};
pub use runner::{register, run, IntervalReport, RunConfig, RunError, RunSummary};
pub use strategy::{Agent, MarketContext, Plan, PlannedBlock, PlannedFlex, PlannedOrder, Purpose};

/// Why a population could not be built or an agent could not take a result.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentsError {
    /// A file could not be read.
    #[error("reading {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The population file is not TOML of the right shape.
    #[error("malformed population file: {0}")]
    Toml(String),
    /// A field of the population file is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `mix.pv`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The network scenario is unusable.
    #[error("network scenario: {0}")]
    Network(String),
    /// A fill the agent cannot have received (more than it ordered, or more than its device
    /// can take).
    #[error("agent {agent}: {reason}")]
    Fill {
        /// The agent.
        agent: String,
        /// What was wrong.
        reason: String,
    },
}
