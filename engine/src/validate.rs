//! The checks [`Market::new`] makes, one record at a time, for callers that must agree with it.
//!
//! [`Network::new`] validates everything an interval's records are checked against (market
//! parameters, nodes, lines, devices, record counts); its methods [`Network::order`],
//! [`Network::flex_offer`], [`Network::flex_requirement`] and [`Network::grid_connection`]
//! validate one record each, naming the record and field at fault. `Market::new` is exactly
//! `Network::new` followed by those methods over every record plus the checks that span records
//! (duplicate ids). So a live market's intake that builds a `Network` once per loaded network
//! and checks each order with it accepts exactly the orders `Market::new` will accept at gate
//! closure, as long as it keeps ids unique and counts within [`RECORDS_PER_INTERVAL_MAX`].
//!
//! [`Market::new`]: crate::model::Market::new

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::model::{
    Block, BlockSpec, Device, DeviceSpec, FlexOffer, FlexOfferSpec, FlexRequirement,
    FlexRequirementSpec, GridConnectionSpec, Line, LineSpec, MarketError, MarketSpec, Order,
    OrderOrigin, OrderSpec, Side, BLOCKS_PER_CURVE_MAX, DEVICES_MAX, FLEX_AREA_NODES_MAX,
    FLEX_OFFERS_PER_INTERVAL_MAX, FLEX_REQUIREMENTS_PER_INTERVAL_MAX, GRID_ACCOUNT_PREFIX,
    GRID_CONNECTIONS_MAX, ID_LEN_MAX, INTERVAL_MINUTES_MAX, LINES_MAX, NETWORK_OPERATOR_ACCOUNT,
    NODES_MAX, ORDERS_PER_INTERVAL_MAX,
};
use crate::units::{PRICE_ABS_MAX, PRICE_SCALE, QUANTITY_ABS_MAX, QUANTITY_SCALE};

/// Most participant records (energy orders and flexibility offers together) one interval may
/// hold so that `Market::new` accepts the count whatever the mix: the smaller of the two kinds'
/// limits. A live market that counts both kinds together stays within this.
pub const RECORDS_PER_INTERVAL_MAX: usize =
    if ORDERS_PER_INTERVAL_MAX < FLEX_OFFERS_PER_INTERVAL_MAX {
        ORDERS_PER_INTERVAL_MAX
    } else {
        FLEX_OFFERS_PER_INTERVAL_MAX
    };

/// A market's parameters, nodes, lines and devices, validated: what every interval record is
/// checked against. Build it once per network; checking a record with it costs only that
/// record's size.
#[derive(Clone, Debug)]
pub struct Network {
    num: Numbers,
    pub(crate) interval_minutes: u32,
    pub(crate) price_floor: Decimal,
    pub(crate) price_cap: Decimal,
    pub(crate) line_violation_penalty: Option<Decimal>,
    pub(crate) node_ids: Vec<String>,
    node_index: HashMap<String, usize>,
    pub(crate) lines: Vec<Line>,
    pub(crate) devices: Vec<Device>,
    device_index: HashMap<String, usize>,
}

impl Network {
    /// Validates a spec's parameters, nodes, lines, devices and record counts. Decimals with
    /// more places than the fixed scales are refused, as by [`crate::Market::new`].
    pub fn new(spec: &MarketSpec) -> Result<Network, MarketError> {
        Self::build(spec, false)
    }

    /// As [`Network::new`], rounding excess decimal places as
    /// [`crate::Market::new_rounding`] does.
    pub fn new_rounding(spec: &MarketSpec) -> Result<Network, MarketError> {
        Self::build(spec, true)
    }

    pub(crate) fn build(spec: &MarketSpec, round: bool) -> Result<Network, MarketError> {
        let num = Numbers { round };
        if spec.interval_minutes == 0 || spec.interval_minutes > INTERVAL_MINUTES_MAX {
            return Err(MarketError::Parameters(format!(
                "interval_minutes {} outside 1..={INTERVAL_MINUTES_MAX}",
                spec.interval_minutes
            )));
        }
        let price_floor = num.price(
            &|| "market".into(),
            &|| "price_floor".into(),
            spec.price_floor,
        )?;
        let price_cap = num.price(&|| "market".into(), &|| "price_cap".into(), spec.price_cap)?;
        if price_floor >= price_cap {
            return Err(MarketError::Parameters(format!(
                "price_floor {price_floor} must be below price_cap {price_cap}"
            )));
        }
        let line_violation_penalty = match spec.line_violation_penalty {
            None => None,
            Some(p) => {
                let p = num.price(&|| "market".into(), &|| "line_violation_penalty".into(), p)?;
                if p <= Decimal::ZERO {
                    return Err(MarketError::Parameters(
                        "line_violation_penalty must be positive".into(),
                    ));
                }
                Some(p)
            }
        };
        counts(spec)?;

        let mut node_index: HashMap<String, usize> = HashMap::with_capacity(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            id("node", &n.id)?;
            if node_index.insert(n.id.clone(), i).is_some() {
                return Err(dup("node", &n.id));
            }
        }
        let mut net = Network {
            num,
            interval_minutes: spec.interval_minutes,
            price_floor,
            price_cap,
            line_violation_penalty,
            node_ids: spec.nodes.iter().map(|n| n.id.clone()).collect(),
            node_index,
            lines: Vec::with_capacity(spec.lines.len()),
            devices: Vec::with_capacity(spec.devices.len()),
            device_index: HashMap::with_capacity(spec.devices.len()),
        };

        let mut line_ids = std::collections::HashSet::with_capacity(spec.lines.len());
        for l in &spec.lines {
            let line = net.line(l)?;
            if !line_ids.insert(l.id.as_str()) {
                return Err(dup("line", &l.id));
            }
            net.lines.push(line);
        }
        for d in &spec.devices {
            let device = net.device(d)?;
            if net
                .device_index
                .insert(d.id.clone(), net.devices.len())
                .is_some()
            {
                return Err(dup("device", &d.id));
            }
            net.devices.push(device);
        }
        Ok(net)
    }

    /// Lowest price, at [`PRICE_SCALE`].
    pub fn price_floor(&self) -> Decimal {
        self.price_floor
    }

    /// Highest price, at [`PRICE_SCALE`].
    pub fn price_cap(&self) -> Decimal {
        self.price_cap
    }

    fn node_of(&self, record: Name<'_>, node: &str) -> Result<usize, MarketError> {
        self.node_index
            .get(node)
            .copied()
            .ok_or_else(|| MarketError::UnknownNode {
                record: record(),
                node: node.to_string(),
            })
    }

    fn device_of(
        &self,
        record: Name<'_>,
        dev: &Option<String>,
        node: usize,
    ) -> Result<Option<usize>, MarketError> {
        match dev {
            None => Ok(None),
            Some(id) => match self.device_index.get(id.as_str()) {
                None => Err(MarketError::BadDevice {
                    record: record(),
                    reason: format!("unknown device {id:?}"),
                }),
                Some(&i) if self.devices[i].node != node => Err(MarketError::BadDevice {
                    record: record(),
                    reason: format!("device {id:?} is at another node"),
                }),
                Some(&i) => Ok(Some(i)),
            },
        }
    }

    /// Checks one line: id, both ends known and distinct, reactance non-zero and within
    /// 1e-12..=1e8 in magnitude, capacity a non-negative quantity.
    pub fn line(&self, l: &LineSpec) -> Result<Line, MarketError> {
        id("line", &l.id)?;
        let rec = || format!("line {:?}", l.id);
        let from = self.node_of(&rec, &l.from)?;
        let to = self.node_of(&rec, &l.to)?;
        if from == to {
            return Err(MarketError::SelfLoop { line: l.id.clone() });
        }
        if l.x.is_zero() {
            return Err(MarketError::ZeroReactance { line: l.id.clone() });
        }
        if l.x.abs() > QUANTITY_ABS_MAX || l.x.abs() < Decimal::new(1, 12) {
            return Err(MarketError::BadNumber {
                record: rec(),
                field: "x".into(),
                reason: format!("{} outside 1e-12..=1e8 in magnitude", l.x),
            });
        }
        let capacity = match l.capacity {
            None => None,
            Some(c) => Some(self.num.quantity_nonneg(&rec, &|| "capacity".into(), c)?),
        };
        Ok(Line {
            id: l.id.clone(),
            from,
            to,
            x: l.x.normalize(),
            capacity,
        })
    }

    /// Checks one device: id, known node, capacity a non-negative quantity.
    pub fn device(&self, d: &DeviceSpec) -> Result<Device, MarketError> {
        id("device", &d.id)?;
        let rec = || format!("device {:?}", d.id);
        let node = self.node_of(&rec, &d.node)?;
        let capacity = self
            .num
            .quantity_nonneg(&rec, &|| "capacity".into(), d.capacity)?;
        Ok(Device {
            id: d.id.clone(),
            node,
            capacity,
        })
    }

    /// Checks one energy order: id, known node, 1 to [`BLOCKS_PER_CURVE_MAX`] blocks of
    /// positive quantity priced within floor and cap, device (if any) declared at the order's
    /// node, participant id.
    pub fn order(&self, o: &OrderSpec) -> Result<Order, MarketError> {
        id("order", &o.id)?;
        let rec = || format!("order {:?}", o.id);
        let node = self.node_of(&rec, &o.node)?;
        let must_take_price = match o.side {
            Side::Buy => self.price_cap,
            Side::Sell => self.price_floor,
        };
        let blocks = self.blocks(&rec, &o.blocks, must_take_price)?;
        let device = self.device_of(&rec, &o.device, node)?;
        if let Some(p) = &o.participant {
            id("participant", p)?;
        }
        Ok(Order {
            id: o.id.clone(),
            account: o.participant.clone().unwrap_or_else(|| o.id.clone()),
            node,
            side: o.side,
            blocks,
            device,
            origin: OrderOrigin::Participant,
        })
    }

    /// Checks one grid connection (index `gi` among the market's): id, known node, limits and
    /// prices within the floor and cap, export price not above import price. Returns it at its fixed scales with its
    /// import (sell) and export (buy) orders, ids `<id>/import` and `<id>/export`.
    pub fn grid_connection(
        &self,
        gi: usize,
        g: &GridConnectionSpec,
    ) -> Result<(GridConnectionSpec, [Order; 2]), MarketError> {
        id("grid connection", &g.id)?;
        let rec = || format!("grid connection {:?}", g.id);
        let node = self.node_of(&rec, &g.node)?;
        let num = &self.num;
        let import_limit = num.quantity_nonneg(&rec, &|| "import_limit".into(), g.import_limit)?;
        let export_limit = num.quantity_nonneg(&rec, &|| "export_limit".into(), g.export_limit)?;
        let import_price = num.price(&rec, &|| "import_price".into(), g.import_price)?;
        let export_price = num.price(&rec, &|| "export_price".into(), g.export_price)?;
        // Rule 7: every price that can reach a node lies within the floor and cap.
        for (field, p) in [
            ("import_price", import_price),
            ("export_price", export_price),
        ] {
            if p < self.price_floor || p > self.price_cap {
                return Err(MarketError::BadNumber {
                    record: rec(),
                    field: field.into(),
                    reason: format!(
                        "{p} outside the price floor {} and cap {}",
                        self.price_floor, self.price_cap
                    ),
                });
            }
        }
        if export_price > import_price {
            return Err(MarketError::BadNumber {
                record: rec(),
                field: "export_price".into(),
                reason: format!("{export_price} is above import_price {import_price}"),
            });
        }
        let order = |side, suffix: &str, q: Decimal, p| {
            let blocks = if q.is_zero() {
                Vec::new()
            } else {
                vec![Block {
                    quantity: q,
                    price: p,
                    must_take: false,
                }]
            };
            Order {
                id: format!("{}/{suffix}", g.id),
                account: format!("{GRID_ACCOUNT_PREFIX}{}", g.id),
                node,
                side,
                blocks,
                device: None,
                origin: OrderOrigin::Grid { connection: gi },
            }
        };
        let orders = [
            order(Side::Sell, "import", import_limit, import_price),
            order(Side::Buy, "export", export_limit, export_price),
        ];
        let valid = GridConnectionSpec {
            id: g.id.clone(),
            node: g.node.clone(),
            import_limit,
            import_price,
            export_limit,
            export_price,
        };
        Ok((valid, orders))
    }

    /// Checks one flexibility requirement: id, buyer id, an area of 1 to
    /// [`FLEX_AREA_NODES_MAX`] known nodes, a demand curve within floor and cap.
    pub fn flex_requirement(
        &self,
        r: &FlexRequirementSpec,
    ) -> Result<FlexRequirement, MarketError> {
        id("flex requirement", &r.id)?;
        let rec = || format!("flex requirement {:?}", r.id);
        if r.nodes.is_empty() || r.nodes.len() > FLEX_AREA_NODES_MAX {
            return Err(MarketError::Parameters(format!(
                "{}: area has {} nodes (1 to {FLEX_AREA_NODES_MAX} allowed)",
                rec(),
                r.nodes.len()
            )));
        }
        let mut nodes = r
            .nodes
            .iter()
            .map(|n| self.node_of(&rec, n))
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort_unstable();
        nodes.dedup();
        let blocks = self.blocks(&rec, &r.blocks, self.price_cap)?;
        if let Some(b) = &r.buyer {
            id("buyer", b)?;
        }
        Ok(FlexRequirement {
            id: r.id.clone(),
            account: r
                .buyer
                .clone()
                .unwrap_or_else(|| NETWORK_OPERATOR_ACCOUNT.to_string()),
            nodes,
            direction: r.direction,
            blocks,
        })
    }

    /// Checks one flexibility offer: id, known node, a supply curve within floor and cap,
    /// device (if any) declared at the offer's node, participant id.
    pub fn flex_offer(&self, f: &FlexOfferSpec) -> Result<FlexOffer, MarketError> {
        id("flex offer", &f.id)?;
        let rec = || format!("flex offer {:?}", f.id);
        let node = self.node_of(&rec, &f.node)?;
        let blocks = self.blocks(&rec, &f.blocks, self.price_floor)?;
        let device = self.device_of(&rec, &f.device, node)?;
        if let Some(p) = &f.participant {
            id("participant", p)?;
        }
        Ok(FlexOffer {
            id: f.id.clone(),
            account: f.participant.clone().unwrap_or_else(|| f.id.clone()),
            node,
            direction: f.direction,
            blocks,
            device,
        })
    }

    fn blocks(
        &self,
        record: Name<'_>,
        blocks: &[BlockSpec],
        must_take_price: Decimal,
    ) -> Result<Vec<Block>, MarketError> {
        self.num.blocks(
            record,
            blocks,
            must_take_price,
            self.price_floor,
            self.price_cap,
        )
    }
}

/// Every record count of a spec against its limit.
fn counts(spec: &MarketSpec) -> Result<(), MarketError> {
    limit("nodes", "NODES_MAX", spec.nodes.len(), NODES_MAX)?;
    limit("lines", "LINES_MAX", spec.lines.len(), LINES_MAX)?;
    limit(
        "orders",
        "ORDERS_PER_INTERVAL_MAX",
        spec.orders.len(),
        ORDERS_PER_INTERVAL_MAX,
    )?;
    limit("devices", "DEVICES_MAX", spec.devices.len(), DEVICES_MAX)?;
    limit(
        "grid connections",
        "GRID_CONNECTIONS_MAX",
        spec.grid_connections.len(),
        GRID_CONNECTIONS_MAX,
    )?;
    limit(
        "flex requirements",
        "FLEX_REQUIREMENTS_PER_INTERVAL_MAX",
        spec.flex_requirements.len(),
        FLEX_REQUIREMENTS_PER_INTERVAL_MAX,
    )?;
    limit(
        "flex offers",
        "FLEX_OFFERS_PER_INTERVAL_MAX",
        spec.flex_offers.len(),
        FLEX_OFFERS_PER_INTERVAL_MAX,
    )
}

fn limit(
    what: &'static str,
    name: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), MarketError> {
    if count > limit {
        return Err(MarketError::TooMany {
            what,
            name,
            count,
            limit,
        });
    }
    Ok(())
}

pub(crate) fn dup(kind: &'static str, id: &str) -> MarketError {
    MarketError::DuplicateId {
        kind,
        id: id.to_string(),
    }
}

/// Checks an id: 1 to [`ID_LEN_MAX`] characters, none a control character.
pub fn id(kind: &'static str, id: &str) -> Result<(), MarketError> {
    if id.is_empty() || id.chars().count() > ID_LEN_MAX || id.chars().any(char::is_control) {
        return Err(MarketError::BadId {
            kind,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Scale checks for numbers, strict or rounding. Record and field names are built only when
/// something is wrong (validation runs over millions of blocks).
#[derive(Clone, Copy, Debug)]
struct Numbers {
    round: bool,
}

type Name<'a> = &'a dyn Fn() -> String;

fn bad(record: Name<'_>, field: Name<'_>, reason: String) -> MarketError {
    MarketError::BadNumber {
        record: record(),
        field: field(),
        reason,
    }
}

impl Numbers {
    fn scaled(
        &self,
        record: Name<'_>,
        field: Name<'_>,
        v: Decimal,
        scale: u32,
    ) -> Result<Decimal, MarketError> {
        if v.scale() > scale {
            let n = v.normalize();
            if n.scale() > scale && !self.round {
                return Err(bad(
                    record,
                    field,
                    format!("{v} has more than {scale} decimal places"),
                ));
            }
            return Ok(crate::units::round_at(n, scale));
        }
        let mut d = v;
        d.rescale(scale);
        if d.is_zero() {
            d.set_sign_positive(true);
        }
        Ok(d)
    }

    fn price(&self, record: Name<'_>, field: Name<'_>, p: Decimal) -> Result<Decimal, MarketError> {
        if p.abs() > PRICE_ABS_MAX {
            return Err(bad(
                record,
                field,
                format!("{p} exceeds {PRICE_ABS_MAX} in magnitude"),
            ));
        }
        self.scaled(record, field, p, PRICE_SCALE)
    }

    fn quantity_nonneg(
        &self,
        record: Name<'_>,
        field: Name<'_>,
        q: Decimal,
    ) -> Result<Decimal, MarketError> {
        if q.is_sign_negative() && !q.is_zero() {
            return Err(bad(record, field, format!("{q} is negative")));
        }
        if q > QUANTITY_ABS_MAX {
            return Err(bad(
                record,
                field,
                format!("{q} exceeds {QUANTITY_ABS_MAX}"),
            ));
        }
        self.scaled(record, field, q, QUANTITY_SCALE)
    }

    fn blocks(
        &self,
        record: Name<'_>,
        blocks: &[BlockSpec],
        must_take_price: Decimal,
        floor: Decimal,
        cap: Decimal,
    ) -> Result<Vec<Block>, MarketError> {
        if blocks.is_empty() || blocks.len() > BLOCKS_PER_CURVE_MAX {
            return Err(MarketError::BlockCount {
                record: record(),
                count: blocks.len(),
            });
        }
        blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let qfield = || format!("blocks[{i}].quantity");
                let quantity = self.quantity_nonneg(record, &qfield, b.quantity)?;
                if quantity.is_zero() {
                    return Err(bad(record, &qfield, "is zero".into()));
                }
                let (price, must_take) = match b.price {
                    None => (must_take_price, true),
                    Some(p) => {
                        let pfield = || format!("blocks[{i}].price");
                        let p = self.price(record, &pfield, p)?;
                        if p < floor || p > cap {
                            return Err(bad(
                                record,
                                &pfield,
                                format!("{p} outside the price floor {floor} and cap {cap}"),
                            ));
                        }
                        (p, false)
                    }
                };
                Ok(Block {
                    quantity,
                    price,
                    must_take,
                })
            })
            .collect()
    }
}
