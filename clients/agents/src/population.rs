//! The population file (TOML, e.g. `scenarios/ieee33-agents.toml`) and its deterministic
//! expansion into agents.
//!
//! The file names the network scenario the agents trade on (a path relative to the file), a
//! seed, the number of prosumers, the device mix and size distributions, the grid connection
//! whose prices bound the agents' bids, and the strategies' parameters. Every size is drawn
//! uniformly from a `{ min, max }` range of decimals and rounded to two decimals; every draw
//! comes from a seeded ChaCha8 stream per agent, so the same file gives the same population,
//! byte for byte, on every machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_engine::model::{MarketSpec, Side};
use baton_engine::units::round_at;
use ed25519_dalek::SigningKey;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

use super::devices::{ceil_kw, floor_kw, Battery, Ev, Household, Pv, MINUTES_PER_DAY};
use super::rng;
use super::strategy::Agent;
use super::AgentsError;

/// Most prosumers in one population.
pub const AGENTS_MAX: usize = 100_000;
/// Most market results a strategy averages over (a day of five-minute intervals).
pub const PRICE_HISTORY_MAX: usize = 288;
/// Decimal places of a drawn size (kW, kWh, hours, fractions).
pub const DRAW_SCALE: u32 = 2;
/// Largest size of any device or load, kW or kWh: anything above is a typo for a household.
pub const DEVICE_SIZE_MAX: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// Largest EV bid fraction of the export→import spread: 10 spreads above the export price is
/// far past any tariff (bids are clamped to the price cap in any case).
pub const EV_FRACTION_MAX: Decimal = Decimal::from_parts(10, 0, 0, false, 0);
/// Most clusters in one population file.
pub const CLUSTERS_MAX: usize = 64;
/// Longest cluster name, bytes (an agent id is `<name>-<number>`).
pub const CLUSTER_NAME_LEN_MAX: usize = 16;
/// Hours in a day, the bound of every local hour in the file.
const HOURS_PER_DAY: Decimal = Decimal::from_parts(24, 0, 0, false, 0);

/// A uniform range of decimals.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest value.
    pub min: Decimal,
    /// Largest value (≥ min).
    pub max: Decimal,
}

impl Range {
    fn draw(&self, r: &mut rand_chacha::ChaCha8Rng) -> Decimal {
        round_at(
            self.min + (self.max - self.min) * rng::unit_decimal(r),
            DRAW_SCALE,
        )
    }

    fn check(&self, field: &str, lo: Decimal, hi: Decimal) -> Result<(), AgentsError> {
        if self.min > self.max {
            return Err(invalid(
                field,
                format!("min {} > max {}", self.min, self.max),
            ));
        }
        if self.min < lo || self.max > hi {
            return Err(invalid(
                field,
                format!("[{}, {}] is outside [{lo}, {hi}]", self.min, self.max),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> AgentsError {
    AgentsError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Shares of the prosumers that own each device (each in [0, 1], drawn independently).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Rooftop PV.
    pub pv: Decimal,
    /// Home battery.
    pub battery: Decimal,
    /// Electric vehicle.
    pub ev: Decimal,
}

/// Household consumption.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HouseholdFile {
    /// Average consumption over a day, kW.
    pub mean_kw: Range,
    /// Relative noise per interval, in [0, 1).
    pub noise: Decimal,
}

/// Rooftop PV.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvFile {
    /// Peak output, kW.
    pub size_kw: Range,
    /// Local hour of sunrise.
    pub sunrise_h: Decimal,
    /// Local hour of sunset.
    pub sunset_h: Decimal,
}

/// Home batteries.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryFile {
    /// Energy capacity, kWh.
    pub energy_kwh: Range,
    /// Power limit, kW.
    pub power_kw: Range,
    /// Round-trip efficiency, in (0, 1].
    pub round_trip_efficiency: Decimal,
    /// State of charge at the start, fraction.
    pub initial_soc: Range,
}

/// Electric vehicles.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvFile {
    /// Energy needed per session, kWh.
    pub need_kwh: Range,
    /// Charger power, kW.
    pub charger_kw: Range,
    /// Local hour of arrival.
    pub arrival_h: Range,
    /// Local hour of departure (the next day when before arrival).
    pub departure_h: Range,
}

/// Strategy parameters (see the module documentation of `baton_agents`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyFile {
    /// K: market results in the moving average of the node's price.
    pub price_history: usize,
    /// A battery charges below `average − margin × spread` and discharges above
    /// `average + margin × spread` (spread = import − export price).
    pub battery_margin: Decimal,
    /// An EV's bid with all the time in the world, as a fraction of the spread above the
    /// export price (above 1: above the import price — it charges on arrival unless its
    /// lateral is congested).
    pub ev_relaxed_fraction: Decimal,
    /// An EV's bid when it must charge at full power from now on, as the same fraction.
    pub ev_urgent_fraction: Decimal,
}

/// Flexibility offers from batteries.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexFile {
    /// Whether batteries offer flexibility.
    pub enabled: bool,
    /// Share of a battery's headroom held back from energy orders and offered as flexibility.
    pub reserve: Decimal,
    /// Least price for up-flexibility (discharge more / charge less), currency per kWh.
    pub up_price: Decimal,
    /// Least price for down-flexibility (charge more / discharge less).
    pub down_price: Decimal,
}

/// The rest of each bus's load: the customers the population does not simulate.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusLoadFile {
    /// Share of each node's load in the network scenario (its buy orders: the Baran–Wu bus
    /// load at the evening peak) that one must-take participant per node (`bus-<node>`) buys,
    /// following the household profile with its evening peak at that share. In [0, 1].
    pub share: Decimal,
}

/// A group of prosumers placed on chosen nodes with their own device mix and sizes (a new
/// housing estate where every home has an EV, farms with large roofs of PV).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Name: the agents' ids are `<name>-001`, `<name>-002`, …
    pub name: String,
    /// Nodes the cluster's prosumers are spread over, in turn.
    pub nodes: Vec<String>,
    /// Number of prosumers in the cluster.
    pub prosumers: usize,
    /// Device ownership (default: the population's).
    #[serde(default)]
    pub mix: Option<Mix>,
    /// Household consumption (default: the population's).
    #[serde(default)]
    pub household: Option<HouseholdFile>,
    /// Rooftop PV (default: the population's).
    #[serde(default)]
    pub pv: Option<PvFile>,
    /// Electric vehicles (default: the population's).
    #[serde(default)]
    pub ev: Option<EvFile>,
}

/// How metered energy departs from the cleared positions ([`crate::metering`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFile {
    /// Share of the prosumers (exact count, seeded) whose metered net position deviates from
    /// their cleared one, in [0, 1].
    #[serde(default)]
    pub deviating_share: Decimal,
    /// How far a deviating prosumer's household load departs from what it planned, as a
    /// fraction of it (its load is scaled by a seeded factor in `[1 − d, 1 + d]`), in [0, 1].
    #[serde(default)]
    pub deviation: Decimal,
    /// Share of the prosumers (exact count, seeded) that fail to deliver flexibility they were
    /// allocated (their battery does not move for it), in [0, 1].
    #[serde(default)]
    pub flex_failure_share: Decimal,
}

/// A population file as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationFile {
    /// The network scenario (TOML), relative to the population file.
    pub network: PathBuf,
    /// Seed of every random draw.
    pub seed: u64,
    /// Number of prosumers.
    pub prosumers: usize,
    /// The grid connection (an id in the network) whose import and export prices bound bids.
    pub grid_connection: String,
    /// Local time minus UTC, minutes: where on the day the profiles are.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// Device ownership shares.
    pub mix: Mix,
    /// Household consumption.
    pub household: HouseholdFile,
    /// Rooftop PV.
    pub pv: PvFile,
    /// Home batteries.
    pub battery: BatteryFile,
    /// Electric vehicles.
    pub ev: EvFile,
    /// Strategies.
    pub strategy: StrategyFile,
    /// Flexibility offers.
    pub flex: FlexFile,
    /// The rest of each bus's load (none: only the prosumers' load is in the market).
    #[serde(default)]
    pub bus_load: Option<BusLoadFile>,
    /// Groups of prosumers placed on chosen nodes, after the population's own.
    #[serde(default)]
    pub cluster: Vec<ClusterFile>,
    /// Metered deviations from the cleared positions.
    #[serde(default)]
    pub delivery: DeliveryFile,
}

impl PopulationFile {
    /// Parses and checks a population file.
    pub fn parse(text: &str) -> Result<Self, AgentsError> {
        let f: PopulationFile =
            toml::from_str(text).map_err(|e| AgentsError::Toml(e.to_string()))?;
        f.check()?;
        Ok(f)
    }

    /// Reads and checks a population file, and reads the network scenario it names (relative
    /// to the file): the file and the scenario's TOML text.
    pub fn read(path: &Path) -> Result<(PopulationFile, String), AgentsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| AgentsError::Io {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        let file = PopulationFile::parse(&read(path)?)?;
        let net_path = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(&file.network);
        let network = read(&net_path)?;
        Ok((file, network))
    }

    fn check(&self) -> Result<(), AgentsError> {
        let (zero, one) = (Decimal::ZERO, Decimal::ONE);
        if self.prosumers == 0 || self.prosumers > AGENTS_MAX {
            return Err(invalid(
                "prosumers",
                format!("{} is not 1 to {AGENTS_MAX}", self.prosumers),
            ));
        }
        if self.utc_offset_minutes.abs() > 14 * 60 {
            return Err(invalid("utc_offset_minutes", "is beyond ±14 h"));
        }
        check_mix(&self.mix, "mix")?;
        check_household(&self.household, "household")?;
        check_pv(&self.pv, "pv")?;
        let small = Decimal::new(1, DRAW_SCALE);
        self.battery
            .energy_kwh
            .check("battery.energy_kwh", small, DEVICE_SIZE_MAX)?;
        self.battery
            .power_kw
            .check("battery.power_kw", small, DEVICE_SIZE_MAX)?;
        self.battery
            .initial_soc
            .check("battery.initial_soc", zero, one)?;
        let eta = self.battery.round_trip_efficiency;
        if eta <= zero || eta > one {
            return Err(invalid("battery.round_trip_efficiency", "is not in (0, 1]"));
        }
        check_ev(&self.ev, "ev")?;
        let s = &self.strategy;
        if s.price_history == 0 || s.price_history > PRICE_HISTORY_MAX {
            return Err(invalid(
                "strategy.price_history",
                format!("is not 1 to {PRICE_HISTORY_MAX}"),
            ));
        }
        if s.battery_margin <= zero || s.battery_margin > one {
            return Err(invalid("strategy.battery_margin", "is not in (0, 1]"));
        }
        for (f, v) in [
            ("strategy.ev_relaxed_fraction", s.ev_relaxed_fraction),
            ("strategy.ev_urgent_fraction", s.ev_urgent_fraction),
        ] {
            if v < zero || v > EV_FRACTION_MAX {
                return Err(invalid(f, format!("{v} is not in [0, {EV_FRACTION_MAX}]")));
            }
        }
        if s.ev_relaxed_fraction > s.ev_urgent_fraction {
            return Err(invalid(
                "strategy.ev_relaxed_fraction",
                "is above ev_urgent_fraction: urgency must raise the bid",
            ));
        }
        let d = &self.delivery;
        for (f, v) in [
            ("flex.reserve", self.flex.reserve),
            ("delivery.deviating_share", d.deviating_share),
            ("delivery.deviation", d.deviation),
            ("delivery.flex_failure_share", d.flex_failure_share),
        ] {
            if v < zero || v > one {
                return Err(invalid(f, format!("{v} is not in [0, 1]")));
            }
        }
        if let Some(b) = &self.bus_load {
            if b.share < zero || b.share > one {
                return Err(invalid(
                    "bus_load.share",
                    format!("{} is not in [0, 1]", b.share),
                ));
            }
        }
        if self.cluster.len() > CLUSTERS_MAX {
            return Err(invalid(
                "cluster",
                format!("{} clusters, at most {CLUSTERS_MAX}", self.cluster.len()),
            ));
        }
        let mut total = self.prosumers;
        for (i, c) in self.cluster.iter().enumerate() {
            let at = format!("cluster[{i}]");
            let name_ok = !c.name.is_empty()
                && c.name.len() <= CLUSTER_NAME_LEN_MAX
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !name_ok || c.name == "bus" || c.name == "h" {
                return Err(invalid(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is not 1 to {CLUSTER_NAME_LEN_MAX} lowercase letters and digits \
                         (and neither \"bus\" nor \"h\")",
                        c.name
                    ),
                ));
            }
            if self.cluster[..i].iter().any(|o| o.name == c.name) {
                return Err(invalid(&format!("{at}.name"), "is used twice"));
            }
            if c.nodes.is_empty() {
                return Err(invalid(&format!("{at}.nodes"), "is empty"));
            }
            if c.prosumers == 0 {
                return Err(invalid(&format!("{at}.prosumers"), "is 0"));
            }
            total = total.saturating_add(c.prosumers);
            if let Some(m) = &c.mix {
                check_mix(m, &format!("{at}.mix"))?;
            }
            if let Some(h) = &c.household {
                check_household(h, &format!("{at}.household"))?;
            }
            if let Some(pv) = &c.pv {
                check_pv(pv, &format!("{at}.pv"))?;
            }
            if let Some(ev) = &c.ev {
                check_ev(ev, &format!("{at}.ev"))?;
            }
        }
        if total > AGENTS_MAX {
            return Err(invalid(
                "cluster",
                format!("{total} prosumers in all, more than {AGENTS_MAX}"),
            ));
        }
        Ok(())
    }
}

fn check_mix(m: &Mix, at: &str) -> Result<(), AgentsError> {
    for (f, v) in [("pv", m.pv), ("battery", m.battery), ("ev", m.ev)] {
        if v < Decimal::ZERO || v > Decimal::ONE {
            return Err(invalid(
                &format!("{at}.{f}"),
                format!("{v} is not in [0, 1]"),
            ));
        }
    }
    Ok(())
}

fn check_household(h: &HouseholdFile, at: &str) -> Result<(), AgentsError> {
    h.mean_kw.check(
        &format!("{at}.mean_kw"),
        Decimal::new(1, DRAW_SCALE),
        DEVICE_SIZE_MAX,
    )?;
    if h.noise < Decimal::ZERO || h.noise >= Decimal::ONE {
        return Err(invalid(&format!("{at}.noise"), "is not in [0, 1)"));
    }
    Ok(())
}

fn check_pv(pv: &PvFile, at: &str) -> Result<(), AgentsError> {
    pv.size_kw.check(
        &format!("{at}.size_kw"),
        Decimal::new(1, DRAW_SCALE),
        DEVICE_SIZE_MAX,
    )?;
    if !(Decimal::ZERO <= pv.sunrise_h
        && pv.sunrise_h < pv.sunset_h
        && pv.sunset_h <= HOURS_PER_DAY)
    {
        return Err(invalid(
            &format!("{at}.sunset_h"),
            "sunrise and sunset must satisfy 0 ≤ sunrise < sunset ≤ 24",
        ));
    }
    Ok(())
}

fn check_ev(ev: &EvFile, at: &str) -> Result<(), AgentsError> {
    let small = Decimal::new(1, DRAW_SCALE);
    ev.need_kwh
        .check(&format!("{at}.need_kwh"), small, DEVICE_SIZE_MAX)?;
    ev.charger_kw
        .check(&format!("{at}.charger_kw"), small, DEVICE_SIZE_MAX)?;
    ev.arrival_h
        .check(&format!("{at}.arrival_h"), Decimal::ZERO, HOURS_PER_DAY)?;
    ev.departure_h
        .check(&format!("{at}.departure_h"), Decimal::ZERO, HOURS_PER_DAY)?;
    if ev.arrival_h.min <= ev.departure_h.max && ev.departure_h.min <= ev.arrival_h.max {
        return Err(invalid(
            &format!("{at}.departure_h"),
            "overlaps arrival_h: an EV would leave as it arrives",
        ));
    }
    Ok(())
}

/// The grid connection's prices: a household's fallback tariff (import) and feed-in (export).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridPrices {
    /// Price at which the grid sells into the network, currency per kWh.
    pub import: Decimal,
    /// Price at which the grid buys exports.
    pub export: Decimal,
}

/// A generated population: the agents and what they trade on.
#[derive(Clone, Debug)]
pub struct Population {
    /// The seed everything was drawn from.
    pub seed: u64,
    /// The network scenario (its orders and participants are ignored).
    pub network: MarketSpec,
    /// The network scenario's TOML text, for an operator who loads it.
    pub network_toml: String,
    /// The grid connection's id.
    pub grid_connection: String,
    /// Its prices in the scenario (the runner may update them).
    pub grid: GridPrices,
    /// Local time minus UTC, minutes.
    pub utc_offset_minutes: i32,
    /// Strategy parameters.
    pub strategy: StrategyFile,
    /// Flexibility offers.
    pub flex: FlexFile,
    /// Metered deviations from the cleared positions.
    pub delivery: DeliveryFile,
    /// The prosumers: the population's households (`h001`…), then each cluster's
    /// (`<name>-001`…), then the bus loads (`bus-<node>`, in node order).
    pub agents: Vec<Agent>,
}

impl Population {
    /// Reads a population file and the network scenario it names, and generates the agents.
    pub fn load(path: &Path) -> Result<Population, AgentsError> {
        let (file, network) = PopulationFile::read(path)?;
        Population::generate(&file, &network)
    }

    /// Generates the agents from a checked file and the network scenario's TOML (pure).
    pub fn generate(file: &PopulationFile, network_toml: &str) -> Result<Population, AgentsError> {
        file.check()?;
        let network = baton_engine::scenario::parse(network_toml)
            .map_err(|e| AgentsError::Network(e.to_string()))?
            .market;
        let grid = network
            .grid_connections
            .iter()
            .find(|g| g.id == file.grid_connection)
            .map(|g| GridPrices {
                import: g.import_price,
                export: g.export_price,
            })
            .ok_or_else(|| {
                invalid(
                    "grid_connection",
                    format!("{:?} is not in the network", file.grid_connection),
                )
            })?;
        if grid.import <= grid.export {
            return Err(invalid(
                "grid_connection",
                format!(
                    "import price {} is not above export price {}: no room to trade",
                    grid.import, grid.export
                ),
            ));
        }
        let weights = load_weights(&network)?;
        let nodes = apportion(&weights, file.prosumers);
        let n = file.prosumers;
        let width = n.to_string().len().max(3);
        let ids: Vec<String> = (1..=n).map(|i| format!("h{i:0width$}")).collect();
        let mut agents = Vec::with_capacity(n);
        let general = Sections {
            mix: &file.mix,
            household: &file.household,
            pv: &file.pv,
            ev: &file.ev,
        };
        agents.extend(general.agents(file, "mix", ids, nodes));
        for c in &file.cluster {
            if let Some(bad) = c
                .nodes
                .iter()
                .find(|id| !network.nodes.iter().any(|n| &n.id == *id))
            {
                return Err(invalid(
                    &format!("cluster {}", c.name),
                    format!("node {bad:?} is not in the network"),
                ));
            }
            let width = c.prosumers.to_string().len().max(3);
            let ids = (1..=c.prosumers)
                .map(|i| format!("{}-{i:0width$}", c.name))
                .collect();
            let nodes = (0..c.prosumers)
                .map(|k| c.nodes[k % c.nodes.len()].clone())
                .collect();
            let sections = Sections {
                mix: c.mix.as_ref().unwrap_or(&file.mix),
                household: c.household.as_ref().unwrap_or(&file.household),
                pv: c.pv.as_ref().unwrap_or(&file.pv),
                ev: c.ev.as_ref().unwrap_or(&file.ev),
            };
            agents.extend(sections.agents(file, &format!("cluster/{}", c.name), ids, nodes));
        }
        if let Some(b) = &file.bus_load {
            for (node, load) in &scenario_loads(&network) {
                let peak_kw = floor_kw(b.share * *load);
                if peak_kw.is_zero() {
                    continue;
                }
                let id = format!("bus-{node}");
                let household = Household::with_evening_peak_kw(peak_kw);
                let capacity_kw = capacity(&household, None, None, None);
                let key = SigningKey::from_bytes(&rng::derive("key", file.seed, &id, 0));
                agents.push(Agent::new(
                    id,
                    node.clone(),
                    capacity_kw,
                    key,
                    file.seed,
                    household,
                    None,
                    None,
                    None,
                    file.strategy.price_history,
                ));
            }
        }
        Ok(Population {
            seed: file.seed,
            network,
            network_toml: network_toml.to_string(),
            grid_connection: file.grid_connection.clone(),
            grid,
            utc_offset_minutes: file.utc_offset_minutes,
            strategy: file.strategy.clone(),
            flex: file.flex.clone(),
            delivery: file.delivery.clone(),
            agents,
        })
    }

    /// The participants CSV for `baton admin participants import`:
    /// `id,node,public_key,roles,capacity_kw` with roles `;`-separated.
    pub fn participants_csv(&self) -> String {
        let mut out = String::from("id,node,public_key,roles,capacity_kw\n");
        for a in &self.agents {
            out.push_str(&format!(
                "{},{},{},{},{}\n",
                a.id(),
                a.node(),
                hex::encode(a.key().verifying_key().to_bytes()),
                Agent::ROLES.map(|r| r.name()).join(";"),
                a.capacity_kw()
            ));
        }
        out
    }
}

/// The device sections a group of agents is drawn from (the population's or a cluster's).
struct Sections<'a> {
    mix: &'a Mix,
    household: &'a HouseholdFile,
    pv: &'a PvFile,
    ev: &'a EvFile,
}

impl Sections<'_> {
    /// Agents with these ids at these nodes; `domain` separates the ownership shuffles of
    /// groups.
    fn agents(
        &self,
        file: &PopulationFile,
        domain: &str,
        ids: Vec<String>,
        nodes: Vec<String>,
    ) -> Vec<Agent> {
        let n = ids.len();
        let has = |device: &str, share: Decimal| {
            owners(file.seed, &format!("{domain}/{device}"), share, n)
        };
        let (has_pv, has_bat, has_ev) = (
            has("pv", self.mix.pv),
            has("battery", self.mix.battery),
            has("ev", self.mix.ev),
        );
        let mut agents = Vec::with_capacity(n);
        for (i, (id, node)) in ids.into_iter().zip(nodes).enumerate() {
            // Every agent draws every parameter in this fixed order, whether or not it owns the
            // device, so owning a battery never shifts another draw.
            let mut r = rng::stream("agent", file.seed, &id, 0);
            let household = Household {
                mean_kw: self.household.mean_kw.draw(&mut r),
                noise: self.household.noise,
            };
            let pv = Pv {
                size_kw: self.pv.size_kw.draw(&mut r),
                sunrise_h: self.pv.sunrise_h,
                sunset_h: self.pv.sunset_h,
            };
            let battery = Battery::new(
                file.battery.energy_kwh.draw(&mut r),
                file.battery.power_kw.draw(&mut r),
                file.battery.round_trip_efficiency,
                file.battery.initial_soc.draw(&mut r),
            );
            let minutes = |h: Decimal| {
                (h * Decimal::from(60))
                    .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
                    .to_i64()
                    .unwrap_or(0)
                    .rem_euclid(MINUTES_PER_DAY)
            };
            let ev = Ev::new(
                self.ev.need_kwh.draw(&mut r),
                self.ev.charger_kw.draw(&mut r),
                minutes(self.ev.arrival_h.draw(&mut r)),
                minutes(self.ev.departure_h.draw(&mut r)),
            );
            let pv = has_pv[i].then_some(pv);
            let battery = has_bat[i].then_some(battery);
            let ev = has_ev[i].then_some(ev);
            let capacity_kw = capacity(&household, pv.as_ref(), battery.as_ref(), ev.as_ref());
            let key = SigningKey::from_bytes(&rng::derive("key", file.seed, &id, 0));
            agents.push(Agent::new(
                id,
                node,
                capacity_kw,
                key,
                file.seed,
                household,
                pv,
                battery,
                ev,
                file.strategy.price_history,
            ));
        }
        agents
    }
}

/// The participant's capacity: enough for its whole household peak, EV charger and battery
/// charging at once (buying), or its PV and battery at full output (selling), rounded up to a
/// whole kW.
fn capacity(h: &Household, pv: Option<&Pv>, bat: Option<&Battery>, ev: Option<&Ev>) -> Decimal {
    let bat_kw = bat.map(|b| b.power_kw()).unwrap_or_default();
    let buy = h.peak_kw() + ev.map(|e| e.charger_kw()).unwrap_or_default() + bat_kw;
    let sell = pv.map(|p| p.size_kw).unwrap_or_default() + bat_kw;
    let mut c = ceil_kw(buy.max(sell)).round_dp_with_strategy(0, RoundingStrategy::AwayFromZero);
    c.rescale(0);
    c.max(Decimal::ONE)
}

/// Each node's load in the network scenario: the sum of its buy orders (the scenario generator
/// puts each bus's load there), for the nodes with any, in network order.
fn scenario_loads(network: &MarketSpec) -> Vec<(String, Decimal)> {
    let mut load: BTreeMap<&str, Decimal> = BTreeMap::new();
    for o in network.orders.iter().filter(|o| o.side == Side::Buy) {
        let q: Decimal = o.blocks.iter().map(|b| b.quantity).sum();
        *load.entry(o.node.as_str()).or_default() += q;
    }
    network
        .nodes
        .iter()
        .filter_map(|n| {
            let q = load.get(n.id.as_str()).copied().unwrap_or_default();
            (q > Decimal::ZERO).then(|| (n.id.clone(), q))
        })
        .collect()
}

/// Each node's weight: its share of the case's load ([`scenario_loads`]); without any, every
/// node except those of grid connections, equally.
fn load_weights(network: &MarketSpec) -> Result<Vec<(String, Decimal)>, AgentsError> {
    let mut weights = scenario_loads(network);
    if weights.is_empty() {
        weights = network
            .nodes
            .iter()
            .filter(|n| !network.grid_connections.iter().any(|g| g.node == n.id))
            .map(|n| (n.id.clone(), Decimal::ONE))
            .collect();
    }
    if weights.is_empty() {
        return Err(AgentsError::Network(
            "no node to place prosumers on (every node hosts a grid connection)".into(),
        ));
    }
    Ok(weights)
}

/// Spreads `n` agents over the nodes in proportion to their weights by the largest-remainder
/// method (ties to the earlier node), then lists each agent's node in node order.
fn apportion(weights: &[(String, Decimal)], n: usize) -> Vec<String> {
    let total: Decimal = weights.iter().map(|(_, w)| *w).sum();
    let n_dec = Decimal::from(n);
    let mut counts: Vec<(usize, Decimal)> = weights
        .iter()
        .map(|(_, w)| {
            let exact = *w * n_dec / total;
            let floor = exact.floor();
            (floor.to_usize().unwrap_or(0), exact - floor)
        })
        .collect();
    let given: usize = counts.iter().map(|c| c.0).sum();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|a, b| counts[*b].1.cmp(&counts[*a].1).then(a.cmp(b)));
    for &i in order.iter().cycle().take(n.saturating_sub(given)) {
        counts[i].0 += 1;
    }
    weights
        .iter()
        .zip(&counts)
        .flat_map(|((node, _), (c, _))| std::iter::repeat_n(node.clone(), *c))
        .collect()
}

/// Which of `n` agents own a device: exactly `round(share × n)` of them, chosen by a seeded
/// shuffle.
pub(crate) fn owners(seed: u64, domain: &str, share: Decimal, n: usize) -> Vec<bool> {
    let k = round_at(share * Decimal::from(n), 0)
        .to_usize()
        .unwrap_or(0)
        .min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut r = rng::stream(domain, seed, "", 0);
    for i in (1..n).rev() {
        idx.swap(i, rng::index(&mut r, i + 1));
    }
    let mut out = vec![false; n];
    for &i in &idx[..k] {
        out[i] = true;
    }
    out
}
