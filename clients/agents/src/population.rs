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

use super::devices::{ceil_kw, Battery, Ev, Household, Pv, MINUTES_PER_DAY};
use super::rng;
use super::strategy::{Agent, Preferences};
use super::AgentsError;

/// Most prosumers in one population.
pub const AGENTS_MAX: usize = 100_000;
/// Most market results a strategy averages over (a day of five-minute intervals).
pub const PRICE_HISTORY_MAX: usize = 288;
/// Most blocks in a household's buy or sell curve (the engine allows 16 per order).
pub const HOUSEHOLD_STEPS_MAX: usize = 8;
/// Decimal places of a drawn size (kW, kWh, hours, fractions).
pub const DRAW_SCALE: u32 = 2;
/// Largest size of any device or load, kW or kWh: anything above is a typo for a household.
pub const DEVICE_SIZE_MAX: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

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
    /// Blocks in a household's buy or sell curve.
    pub household_steps: usize,
    /// A household's highest bid, as a fraction of the way from the grid export price to the
    /// grid import price (below 1: a household never bids above its fallback tariff).
    pub bid_fraction: Range,
    /// A household's highest ask, as the same fraction (above 0: never below the export price).
    pub ask_fraction: Range,
    /// A battery charges below `average − margin × spread` and discharges above
    /// `average + margin × spread` (spread = import − export price).
    pub battery_margin: Decimal,
    /// An EV's bid with all the time in the world, as a fraction of the spread.
    pub ev_relaxed_fraction: Decimal,
    /// An EV's bid when it must charge at full power from now on, as a fraction of the spread.
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
        for (f, v) in [
            ("mix.pv", self.mix.pv),
            ("mix.battery", self.mix.battery),
            ("mix.ev", self.mix.ev),
        ] {
            if v < zero || v > one {
                return Err(invalid(f, format!("{v} is not in [0, 1]")));
            }
        }
        let small = Decimal::new(1, DRAW_SCALE);
        self.household
            .mean_kw
            .check("household.mean_kw", small, DEVICE_SIZE_MAX)?;
        if self.household.noise < zero || self.household.noise >= one {
            return Err(invalid("household.noise", "is not in [0, 1)"));
        }
        self.pv
            .size_kw
            .check("pv.size_kw", small, DEVICE_SIZE_MAX)?;
        let day = Decimal::from(24);
        if !(zero <= self.pv.sunrise_h
            && self.pv.sunrise_h < self.pv.sunset_h
            && self.pv.sunset_h <= day)
        {
            return Err(invalid(
                "pv.sunset_h",
                "sunrise and sunset must satisfy 0 ≤ sunrise < sunset ≤ 24",
            ));
        }
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
        self.ev
            .need_kwh
            .check("ev.need_kwh", small, DEVICE_SIZE_MAX)?;
        self.ev
            .charger_kw
            .check("ev.charger_kw", small, DEVICE_SIZE_MAX)?;
        self.ev.arrival_h.check("ev.arrival_h", zero, day)?;
        self.ev.departure_h.check("ev.departure_h", zero, day)?;
        if self.ev.arrival_h.min <= self.ev.departure_h.max
            && self.ev.departure_h.min <= self.ev.arrival_h.max
        {
            return Err(invalid(
                "ev.departure_h",
                "overlaps ev.arrival_h: an EV would leave as it arrives",
            ));
        }
        let s = &self.strategy;
        if s.price_history == 0 || s.price_history > PRICE_HISTORY_MAX {
            return Err(invalid(
                "strategy.price_history",
                format!("is not 1 to {PRICE_HISTORY_MAX}"),
            ));
        }
        if s.household_steps == 0 || s.household_steps > HOUSEHOLD_STEPS_MAX {
            return Err(invalid(
                "strategy.household_steps",
                format!("is not 1 to {HOUSEHOLD_STEPS_MAX}"),
            ));
        }
        s.bid_fraction.check("strategy.bid_fraction", zero, one)?;
        s.ask_fraction.check("strategy.ask_fraction", zero, one)?;
        if s.bid_fraction.max >= one {
            return Err(invalid(
                "strategy.bid_fraction",
                "must stay below 1 (a bid at the import price)",
            ));
        }
        if s.ask_fraction.min <= zero {
            return Err(invalid(
                "strategy.ask_fraction",
                "must stay above 0 (an ask at the export price)",
            ));
        }
        if s.battery_margin <= zero || s.battery_margin > one {
            return Err(invalid("strategy.battery_margin", "is not in (0, 1]"));
        }
        for (f, v) in [
            ("strategy.ev_relaxed_fraction", s.ev_relaxed_fraction),
            ("strategy.ev_urgent_fraction", s.ev_urgent_fraction),
            ("flex.reserve", self.flex.reserve),
        ] {
            if v < zero || v > one {
                return Err(invalid(f, format!("{v} is not in [0, 1]")));
            }
        }
        if s.ev_relaxed_fraction > s.ev_urgent_fraction {
            return Err(invalid(
                "strategy.ev_relaxed_fraction",
                "is above ev_urgent_fraction: urgency must raise the bid",
            ));
        }
        Ok(())
    }
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
    /// The prosumers, ids ascending.
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
        let nodes = apportion(&load_weights(&network)?, file.prosumers);
        let n = file.prosumers;
        let width = n.to_string().len().max(3);
        let ids: Vec<String> = (1..=n).map(|i| format!("h{i:0width$}")).collect();
        let has = |domain: &str, share: Decimal| owners(file.seed, domain, share, n);
        let (has_pv, has_bat, has_ev) = (
            has("mix/pv", file.mix.pv),
            has("mix/battery", file.mix.battery),
            has("mix/ev", file.mix.ev),
        );
        let mut agents = Vec::with_capacity(n);
        for (i, id) in ids.into_iter().enumerate() {
            // Every agent draws every parameter in this fixed order, whether or not it owns the
            // device, so owning a battery never shifts another draw.
            let mut r = rng::stream("agent", file.seed, &id, 0);
            let household = Household {
                mean_kw: file.household.mean_kw.draw(&mut r),
                noise: file.household.noise,
            };
            let pv = Pv {
                size_kw: file.pv.size_kw.draw(&mut r),
                sunrise_h: file.pv.sunrise_h,
                sunset_h: file.pv.sunset_h,
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
                file.ev.need_kwh.draw(&mut r),
                file.ev.charger_kw.draw(&mut r),
                minutes(file.ev.arrival_h.draw(&mut r)),
                minutes(file.ev.departure_h.draw(&mut r)),
            );
            let prefs = Preferences {
                bid_fraction: file.strategy.bid_fraction.draw(&mut r),
                ask_fraction: file.strategy.ask_fraction.draw(&mut r),
            };
            let pv = has_pv[i].then_some(pv);
            let battery = has_bat[i].then_some(battery);
            let ev = has_ev[i].then_some(ev);
            let capacity_kw = capacity(&household, pv.as_ref(), battery.as_ref(), ev.as_ref());
            let key = SigningKey::from_bytes(&rng::derive("key", file.seed, &id, 0));
            agents.push(Agent::new(
                id,
                nodes[i].clone(),
                capacity_kw,
                key,
                file.seed,
                household,
                pv,
                battery,
                ev,
                prefs,
                file.strategy.price_history,
            ));
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

/// Each node's weight: its share of the case's load, read from the network scenario's buy
/// orders (the scenario generator puts each bus's load there); without any, every node except
/// those of grid connections, equally.
fn load_weights(network: &MarketSpec) -> Result<Vec<(String, Decimal)>, AgentsError> {
    let mut load: BTreeMap<&str, Decimal> = BTreeMap::new();
    for o in network.orders.iter().filter(|o| o.side == Side::Buy) {
        let q: Decimal = o.blocks.iter().map(|b| b.quantity).sum();
        *load.entry(o.node.as_str()).or_default() += q;
    }
    let weights: Vec<(String, Decimal)> = if load.values().any(|q| *q > Decimal::ZERO) {
        network
            .nodes
            .iter()
            .filter_map(|n| {
                let q = load.get(n.id.as_str()).copied().unwrap_or_default();
                (q > Decimal::ZERO).then(|| (n.id.clone(), q))
            })
            .collect()
    } else {
        network
            .nodes
            .iter()
            .filter(|n| !network.grid_connections.iter().any(|g| g.node == n.id))
            .map(|n| (n.id.clone(), Decimal::ONE))
            .collect()
    };
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
fn owners(seed: u64, domain: &str, share: Decimal, n: usize) -> Vec<bool> {
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
