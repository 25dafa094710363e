//! Native scenarios (TOML): a full market — network, grid connections, devices, orders,
//! flexibility — plus the participants a live market registers.
//!
//! Numbers may be written as TOML numbers or, to keep them exact, as strings (`"0.25"`).
//! Quantities are in kW, prices in currency per kWh, the interval in minutes.

use serde::{Deserialize, Serialize};

use crate::model::MarketSpec;

/// A participant as a scenario declares it (the live market registers these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParticipantSpec {
    /// Participant id.
    pub id: String,
    /// Home node.
    pub node: String,
    /// Roles: `prosumer`, `network_operator`, `grid_connection`, `regulator`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Largest quantity it may bid or offer in one block, kW.
    #[serde(default)]
    pub capacity_kw: Option<rust_decimal::Decimal>,
}

/// A native scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// The market of one interval.
    #[serde(flatten)]
    pub market: MarketSpec,
    /// Participants to register.
    #[serde(default)]
    pub participants: Vec<ParticipantSpec>,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// Not TOML, or not a scenario's shape.
    #[error("malformed scenario: {0}")]
    Toml(#[from] toml::de::Error),
}

/// Parses a scenario.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Ok(toml::from_str(text)?)
}
