//! Baton's clearing core: a network-constrained double auction with nodal prices,
//! co-optimised flexibility and exact settlement, for one market interval.
//!
//! Flow: [`MarketSpec`] (plain data from JSON, TOML or the wire) → [`Market::new`] (validation)
//! → [`clear`] (LP on HiGHS, exact active-set reduction for large books) → [`settle`]
//! (zero-sum postings and P2P attribution). See `docs/MARKET.md` for the formulation.
//!
//! **Architecture Invariant:** the engine does no I/O and holds no clock; only [`lp`] touches
//! `f64`. Everything that leaves it is a `rust_decimal::Decimal` at a fixed scale ([`units`]).

pub mod clearing;
pub mod delivery;
pub mod lp;
pub mod matpower;
pub mod model;
pub mod scenario;
pub mod settlement;
pub mod study;
pub mod units;
pub mod validate;

pub use clearing::{
    clear, clear_hooked, clear_with, ClearError, ClearStats, Clearing, Method, Phase, PhaseHook,
};
pub use delivery::{settle_delivery, Delivery, DeliveryRules, MeterReading};
pub use model::{Market, MarketError, MarketSpec, Side};
pub use settlement::{settle, Settlement};
