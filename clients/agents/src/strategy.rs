//! One prosumer: its devices, its state and the rules that turn them into orders.

use std::collections::VecDeque;

use baton_engine::model::{Direction, Side};
use baton_engine::units::{round_at, PRICE_SCALE};

/// One quantum at the price scale (1e-6 per kWh).
const PRICE_QUANTUM: Decimal = Decimal::from_parts(1, 0, 0, false, PRICE_SCALE);
use ed25519_dalek::SigningKey;
use rust_decimal::Decimal;

use super::devices::{ceil_kw, floor_kw, kw_from_f64, Battery, Ev, Household, Moment, Pv};
use super::population::{FlexFile, GridPrices, StrategyFile};
use super::AgentsError;

/// What an order is for. Each purpose is its own order, so a fill says exactly which device
/// it moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// The household's net load (buy) or net PV surplus (sell).
    Household,
    /// Charging the EV (buy).
    Ev,
    /// Charging the battery (buy).
    BatteryCharge,
    /// Discharging the battery (sell).
    BatteryDischarge,
}

impl Purpose {
    /// Every purpose, in the order an agent plans them (and its capacity is shared).
    pub const ALL: [Purpose; 4] = [
        Purpose::Household,
        Purpose::Ev,
        Purpose::BatteryCharge,
        Purpose::BatteryDischarge,
    ];

    /// A small fixed number per purpose (the runner derives nonces from it).
    pub fn slot(self) -> u64 {
        match self {
            Purpose::Household => 0,
            Purpose::Ev => 1,
            Purpose::BatteryCharge => 2,
            Purpose::BatteryDischarge => 3,
        }
    }

    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Household => "household",
            Purpose::Ev => "ev",
            Purpose::BatteryCharge => "battery-charge",
            Purpose::BatteryDischarge => "battery-discharge",
        }
    }
}

/// One block of a planned order: a quantity (kW, 6 decimals) and a limit price (6 decimals) or
/// none for must-take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBlock {
    /// kW, > 0.
    pub quantity: Decimal,
    /// Currency per kWh within the market's floor and cap; `None`: must-take.
    pub price: Option<Decimal>,
}

/// An order an agent wants to place for one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOrder {
    /// What it is for.
    pub purpose: Purpose,
    /// Buy or sell.
    pub side: Side,
    /// 1 to 16 blocks.
    pub blocks: Vec<PlannedBlock>,
}

impl PlannedOrder {
    /// Sum of the blocks' quantities, kW.
    pub fn quantity(&self) -> Decimal {
        self.blocks.iter().map(|b| b.quantity).sum()
    }
}

/// A flexibility offer a battery wants to make for one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFlex {
    /// Up (discharge more / charge less) or down.
    pub direction: Direction,
    /// kW.
    pub quantity: Decimal,
    /// Least price, currency per kWh.
    pub price: Decimal,
}

/// Everything one agent wants to place for one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The interval.
    pub at: Moment,
    /// Energy orders, at most one per purpose, in [`Purpose::ALL`] order.
    pub orders: Vec<PlannedOrder>,
    /// Flexibility offers (batteries, when enabled).
    pub flex: Vec<PlannedFlex>,
}

impl Plan {
    /// The planned quantity of a purpose (0 when not planned), kW.
    pub fn quantity(&self, purpose: Purpose) -> Decimal {
        self.orders
            .iter()
            .filter(|o| o.purpose == purpose)
            .map(PlannedOrder::quantity)
            .sum()
    }

    fn flex_quantity(&self, direction: Direction) -> Decimal {
        self.flex
            .iter()
            .filter(|f| f.direction == direction)
            .map(|f| f.quantity)
            .sum()
    }
}

/// The market as an agent sees it when it plans an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarketContext {
    /// The interval.
    pub at: Moment,
    /// Lowest price the market accepts.
    pub price_floor: Decimal,
    /// Highest price the market accepts.
    pub price_cap: Decimal,
    /// The grid connection's prices.
    pub grid: GridPrices,
}

impl MarketContext {
    fn spread(&self) -> Decimal {
        self.grid.import - self.grid.export
    }

    /// `export + fraction × (import − export)` at the price scale, within floor and cap.
    fn price_at(&self, fraction: Decimal) -> Decimal {
        self.clamp(self.grid.export + fraction * self.spread())
    }

    fn clamp(&self, p: Decimal) -> Decimal {
        round_at(p, PRICE_SCALE).clamp(self.price_floor, self.price_cap)
    }
}

/// One prosumer: identity, devices, state.
#[derive(Clone, Debug)]
pub struct Agent {
    id: String,
    node: String,
    capacity_kw: Decimal,
    key: SigningKey,
    seed: u64,
    household: Household,
    pv: Option<Pv>,
    battery: Option<Battery>,
    ev: Option<Ev>,
    prices: VecDeque<Decimal>,
    history_len: usize,
}

impl Agent {
    /// The roles an agent registers with.
    pub const ROLES: [baton_client::pb::ParticipantRole; 1] =
        [baton_client::pb::ParticipantRole::Prosumer];

    /// An agent. `history_len` is K of the battery's moving average (≥ 1).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        node: String,
        capacity_kw: Decimal,
        key: SigningKey,
        seed: u64,
        household: Household,
        pv: Option<Pv>,
        battery: Option<Battery>,
        ev: Option<Ev>,
        history_len: usize,
    ) -> Self {
        Agent {
            id,
            node,
            capacity_kw,
            key,
            seed,
            household,
            pv,
            battery,
            ev,
            prices: VecDeque::with_capacity(history_len.max(1)),
            history_len: history_len.max(1),
        }
    }

    /// Participant id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Home node.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// Largest quantity per block and per side, kW.
    pub fn capacity_kw(&self) -> Decimal {
        self.capacity_kw
    }
    /// Signing key. Derived from (seed, id): a simulator key, never a real participant's.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
    /// The population's seed (selects the agent's noise streams).
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Household load.
    pub fn household(&self) -> &Household {
        &self.household
    }
    /// Rooftop PV, if any.
    pub fn pv(&self) -> Option<&Pv> {
        self.pv.as_ref()
    }
    /// Battery, if any.
    pub fn battery(&self) -> Option<&Battery> {
        self.battery.as_ref()
    }
    /// EV, if any.
    pub fn ev(&self) -> Option<&Ev> {
        self.ev.as_ref()
    }

    /// Records the cleared price of the agent's node for one interval.
    pub fn observe_price(&mut self, price: Decimal) {
        if self.prices.len() == self.history_len {
            self.prices.pop_front();
        }
        self.prices.push_back(price);
    }

    /// The moving average of the last K observed prices of the node (the midpoint of the grid
    /// prices before any is known), at the price scale.
    pub fn reference_price(&self, ctx: &MarketContext) -> Decimal {
        if self.prices.is_empty() {
            return ctx.price_at(Decimal::new(5, 1));
        }
        let sum: Decimal = self.prices.iter().sum();
        round_at(sum / Decimal::from(self.prices.len()), PRICE_SCALE)
    }

    /// The household's net load for the interval, kW: positive to buy, negative to sell.
    pub fn net_load_kw(&self, at: &Moment) -> Decimal {
        let load = self.household.demand_kw(self.seed, &self.id, at);
        let pv = self.pv.as_ref().map(|p| p.output_kw(at)).unwrap_or(0.0);
        kw_from_f64(load - pv)
    }

    /// The orders and offers for one interval. A pure function of the agent's state and the
    /// context: the same state and context give the same plan.
    pub fn plan(&self, ctx: &MarketContext, s: &StrategyFile, flex: &FlexFile) -> Plan {
        let mut orders = Vec::with_capacity(4);
        if let Some(o) = self.household_order(ctx) {
            orders.push(o);
        }
        if let Some(o) = self.ev_order(ctx, s) {
            orders.push(o);
        }
        let mut offers = Vec::new();
        if let Some(b) = &self.battery {
            let (charge, discharge, f) = battery_plan(b, self.reference_price(ctx), ctx, s, flex);
            orders.extend(charge);
            orders.extend(discharge);
            offers = f;
        }
        // The participant's capacity bounds each side's total: earlier purposes first.
        let (mut buy_room, mut sell_room) = (self.capacity_kw, self.capacity_kw);
        for o in &mut orders {
            let room = match o.side {
                Side::Buy => &mut buy_room,
                Side::Sell => &mut sell_room,
            };
            for b in &mut o.blocks {
                b.quantity = b.quantity.min(*room);
                *room -= b.quantity;
            }
            o.blocks.retain(|b| b.quantity > Decimal::ZERO);
        }
        orders.retain(|o| !o.blocks.is_empty());
        Plan {
            at: ctx.at,
            orders,
            flex: offers,
        }
    }

    /// The household's expected net position, so that every participant's physical load and
    /// surplus is in the market. A net load is inflexible: it is consumed whatever the price,
    /// so it is bought **must-take** in one block (served before any priced demand and paid
    /// the node's price, which is the import price wherever the grid connection is marginal:
    /// the grid supplies what the neighbours do not). A net surplus is produced whatever the
    /// price too, so it is offered in one block down to the feed-in: at one price quantum
    /// below the export price (at the export price exactly, exporting and curtailing are worth
    /// the same and a solver could leave it unsold). It earns its node's price, more than the
    /// export price wherever neighbours buy it; it is curtailed only where a line cannot carry
    /// it.
    fn household_order(&self, ctx: &MarketContext) -> Option<PlannedOrder> {
        let net = self.net_load_kw(&ctx.at);
        if net.is_zero() {
            return None;
        }
        let (side, quantity, price) = if net > Decimal::ZERO {
            (Side::Buy, net, None)
        } else {
            (
                Side::Sell,
                -net,
                Some(ctx.clamp(ctx.grid.export - PRICE_QUANTUM)),
            )
        };
        Some(PlannedOrder {
            purpose: Purpose::Household,
            side,
            blocks: vec![PlannedBlock { quantity, price }],
        })
    }

    /// EV charging with deadline urgency. With `r` kW·min still needed, `L` whole intervals
    /// left and `F = charger × minutes` the most one interval delivers:
    /// - must-take: `max(0, r − (L − 1) · F) / minutes` — what cannot wait, or the need is
    ///   missed even at full power afterwards;
    /// - the rest up to the charger (and the need) at `relaxed + (urgent − relaxed) · ρ` of the
    ///   spread, where `ρ = r / (L · F)` is the share of the remaining time it must charge.
    fn ev_order(&self, ctx: &MarketContext, s: &StrategyFile) -> Option<PlannedOrder> {
        let ev = self.ev.as_ref()?;
        let session = ev.session(&ctx.at)?;
        let remaining = ev.remaining_kwmin(&session, &ctx.at);
        if remaining.is_zero() {
            return None;
        }
        let m = Decimal::from(ctx.at.interval_minutes);
        let full = ev.charger_kw() * m;
        let later = full * Decimal::from(session.intervals_left - 1);
        let must = ceil_kw((remaining - later).max(Decimal::ZERO) / m).min(ev.charger_kw());
        let want = ceil_kw(remaining / m).min(ev.charger_kw());
        let rho = (remaining / (full * Decimal::from(session.intervals_left))).min(Decimal::ONE);
        let fraction = s.ev_relaxed_fraction + (s.ev_urgent_fraction - s.ev_relaxed_fraction) * rho;
        let mut blocks = Vec::with_capacity(2);
        if must > Decimal::ZERO {
            blocks.push(PlannedBlock {
                quantity: must,
                price: None,
            });
        }
        if want > must {
            blocks.push(PlannedBlock {
                quantity: want - must,
                price: Some(ctx.price_at(fraction)),
            });
        }
        (!blocks.is_empty()).then_some(PlannedOrder {
            purpose: Purpose::Ev,
            side: Side::Buy,
            blocks,
        })
    }

    /// Applies an interval's outcome: the accepted total of each of the plan's orders and the
    /// flexibility allocated to its offers. Refuses (changing nothing) a fill for a purpose not
    /// planned or above what was planned.
    pub fn apply(
        &mut self,
        plan: &Plan,
        fills: &[(Purpose, Decimal)],
        flex: &[(Direction, Decimal)],
    ) -> Result<(), AgentsError> {
        let over = |what: &str, got: Decimal, planned: Decimal| AgentsError::Fill {
            agent: self.id.clone(),
            reason: format!("{what} accepted {got} kW, more than the {planned} kW planned"),
        };
        let mut accepted = [Decimal::ZERO; 4];
        for (p, q) in fills {
            if *q < Decimal::ZERO {
                return Err(over(p.as_str(), *q, plan.quantity(*p)));
            }
            accepted[p.slot() as usize] += *q;
        }
        for p in Purpose::ALL {
            let planned = plan.quantity(p);
            if accepted[p.slot() as usize] > planned {
                return Err(over(p.as_str(), accepted[p.slot() as usize], planned));
            }
        }
        let mut allocated = [Decimal::ZERO; 2];
        for (d, q) in flex {
            if *q < Decimal::ZERO {
                return Err(over("flexibility", *q, plan.flex_quantity(*d)));
            }
            allocated[usize::from(*d == Direction::Down)] += *q;
        }
        for (i, d) in [Direction::Up, Direction::Down].into_iter().enumerate() {
            let planned = plan.flex_quantity(d);
            if allocated[i] > planned {
                return Err(over("flexibility", allocated[i], planned));
            }
        }
        let minutes = plan.at.interval_minutes;
        let device = |e: super::devices::DeviceError| AgentsError::Fill {
            agent: self.id.clone(),
            reason: e.to_string(),
        };
        if let Some(b) = &self.battery {
            // Check on a copy first so a refusal leaves the agent unchanged.
            let mut next = b.clone();
            next.apply(
                accepted[Purpose::BatteryCharge.slot() as usize] + allocated[1],
                accepted[Purpose::BatteryDischarge.slot() as usize] + allocated[0],
                minutes,
            )
            .map_err(device)?;
            let ev_fill = accepted[Purpose::Ev.slot() as usize];
            if let Some(ev) = &mut self.ev {
                ev.apply(&plan.at, ev_fill).map_err(device)?;
            }
            self.battery = Some(next);
        } else if let Some(ev) = &mut self.ev {
            ev.apply(&plan.at, accepted[Purpose::Ev.slot() as usize])
                .map_err(device)?;
        }
        Ok(())
    }
}

/// Battery arbitrage against the node's moving-average price `avg`: charge (buy) at
/// `avg − margin·spread + lean`, discharge (sell) at `avg + margin·spread + lean`, where
/// `lean = (½ − soc) · margin · spread` makes an emptier battery keener to buy and a fuller one
/// keener to sell. Quantities are the SoC and power limits, less the share held back for
/// flexibility offers (which get that share at their own prices) when enabled.
fn battery_plan(
    b: &Battery,
    avg: Decimal,
    ctx: &MarketContext,
    s: &StrategyFile,
    flex: &FlexFile,
) -> (Option<PlannedOrder>, Option<PlannedOrder>, Vec<PlannedFlex>) {
    let minutes = ctx.at.interval_minutes;
    let band = s.battery_margin * ctx.spread();
    let lean = (Decimal::new(5, 1) - b.soc()) * band;
    let bounds = |p: Decimal| ctx.clamp(p.clamp(ctx.grid.export, ctx.grid.import));
    let charge_price = bounds(avg - band + lean);
    let discharge_price = bounds(avg + band + lean);
    let keep = if flex.enabled {
        Decimal::ONE - flex.reserve
    } else {
        Decimal::ONE
    };
    let (charge_max, discharge_max) = (b.charge_limit_kw(minutes), b.discharge_limit_kw(minutes));
    let charge_q = floor_kw(charge_max * keep);
    let discharge_q = floor_kw(discharge_max * keep);
    let order = |purpose, side, quantity: Decimal, price| {
        (quantity > Decimal::ZERO).then(|| PlannedOrder {
            purpose,
            side,
            blocks: vec![PlannedBlock {
                quantity,
                price: Some(price),
            }],
        })
    };
    // Never both at one price: a charge and a discharge could then both be partly filled.
    let charge = if charge_price < discharge_price {
        order(Purpose::BatteryCharge, Side::Buy, charge_q, charge_price)
    } else {
        None
    };
    let discharge = order(
        Purpose::BatteryDischarge,
        Side::Sell,
        discharge_q,
        discharge_price,
    );
    let mut offers = Vec::new();
    if flex.enabled {
        for (direction, q, price) in [
            (Direction::Up, discharge_max - discharge_q, flex.up_price),
            (Direction::Down, charge_max - charge_q, flex.down_price),
        ] {
            if q > Decimal::ZERO {
                offers.push(PlannedFlex {
                    direction,
                    quantity: q,
                    price: ctx.clamp(price),
                });
            }
        }
    }
    (charge, discharge, offers)
}
