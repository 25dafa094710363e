//! `baton.v1.AdminService`: the operator's commands, each signed by the operator key.
//!
//! Replay protection: a request's nonce must exceed the last one accepted. Every command that
//! changes the market records its nonce in the ledger, in the same append as its effect (a
//! `participant` entry's `details.admin_nonce`, or the `admin_nonce` of a `market_event`), and
//! recovery restores the highest one, so a request captured before a restart is still refused
//! after it. Read-only commands (`Status`, the listings) advance the nonce in memory only:
//! replaying one after a restart reveals nothing its signer could not already read.

use std::str::FromStr;
use std::sync::Arc;

use baton_engine::model::NETWORK_OPERATOR_ACCOUNT;
use baton_engine::model::{BlockSpec, Direction, FlexRequirementSpec, MarketSpec};
use baton_engine::units::{PRICE_SCALE, QUANTITY_SCALE};
use baton_engine::Market;
use baton_ledger::{EntryKind, NewEntry, ParticipantBody, ParticipantStatus};
use baton_proto::v1 as pb;
use baton_proto::wire::admin_rpc_name;
use ed25519_dalek::Signature;
use pb::admin_request::Command;
use pb::admin_service_server::AdminService;
use prost::Message;
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::clock::wall_now_ms;
use super::error::{invalid, ServiceError};
use super::recover::{IntervalMeta, MarketEvent, ADMIN_NONCE_DETAIL};
use super::state::{
    check_participant_id, check_timestamp, parse_decimal, parse_key, Participant,
    ParticipantDetails,
};
use super::{Shared, ADMIN_REQUEST_BYTES_MAX};

/// Settlement accounts that are not participants and that a participant id could spell (the
/// engine's other system accounts hold a `:`, which participant ids cannot).
const RESERVED_ACCOUNTS: [&str; 1] = [NETWORK_OPERATOR_ACCOUNT];

/// The roles a registration asks for: the enum field and the v1 names must name the same set
/// if both are given; neither makes a prosumer. Returned as the names the ledger records, in
/// `ParticipantRole` order, without repeats.
fn requested_roles(r: &pb::RegisterParticipant) -> Result<Vec<String>, ServiceError> {
    let mut by_enum = Vec::new();
    for (i, v) in r.participant_roles.iter().enumerate() {
        match pb::ParticipantRole::try_from(*v) {
            Ok(pb::ParticipantRole::Unspecified) | Err(_) => {
                return Err(invalid(
                    format!("participant_roles[{i}]"),
                    format!("{v} is not a participant role"),
                ))
            }
            Ok(role) => by_enum.push(role),
        }
    }
    let mut by_name = Vec::new();
    for (i, name) in r.roles.iter().enumerate() {
        let role = pb::ParticipantRole::from_name(name)
            .map_err(|e| invalid(format!("roles[{i}]"), e.to_string()))?;
        by_name.push(role);
    }
    for set in [&mut by_enum, &mut by_name] {
        set.sort_unstable();
        set.dedup();
    }
    let roles = match (by_enum.is_empty(), by_name.is_empty()) {
        (true, true) => vec![pb::ParticipantRole::Prosumer],
        (false, true) => by_enum,
        (true, false) => by_name,
        (false, false) if by_enum == by_name => by_enum,
        (false, false) => {
            return Err(invalid(
                "participant_roles",
                format!(
                    "names {} but roles names {}",
                    names(&by_enum).join(","),
                    names(&by_name).join(",")
                ),
            ))
        }
    };
    Ok(names(&roles))
}

fn names(roles: &[pb::ParticipantRole]) -> Vec<String> {
    roles.iter().map(|r| r.name().to_string()).collect()
}

/// The enum form of recorded role names (names the wire does not know are left out).
fn role_enums(names: &[String]) -> Vec<i32> {
    names
        .iter()
        .filter_map(|n| pb::ParticipantRole::from_name(n).ok())
        .map(|r| r as i32)
        .collect()
}

/// The requirement's direction: the enum field, the v1 string, or both agreeing.
fn requested_direction(r: &pb::PostFlexRequirement) -> Result<Direction, ServiceError> {
    let by_enum = match pb::FlexDirection::try_from(r.flex_direction) {
        Ok(pb::FlexDirection::Unspecified) => None,
        Ok(d) => Some(d),
        Err(_) => {
            return Err(invalid(
                "flex_direction",
                format!("{} is not a flexibility direction", r.flex_direction),
            ))
        }
    };
    let by_name = if r.direction.is_empty() {
        None
    } else {
        Some(
            pb::FlexDirection::from_name(&r.direction)
                .map_err(|e| invalid("direction", e.to_string()))?,
        )
    };
    let d = match (by_enum, by_name) {
        (None, None) => return Err(invalid("flex_direction", "is missing (up or down)")),
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                "flex_direction",
                format!("is {} but direction is {}", a.name(), b.name()),
            ))
        }
        (Some(d), _) | (None, Some(d)) => d,
    };
    Ok(match d {
        pb::FlexDirection::Down => Direction::Down,
        _ => Direction::Up,
    })
}

pub(crate) struct AdminApi {
    pub(crate) shared: Arc<Shared>,
}

/// Participants returned by one `ListParticipants` page at most.
const PARTICIPANTS_PER_PAGE_MAX: usize = 5_000;
/// Intervals `ListIntervals` returns when the request names no limit.
const INTERVALS_LISTED_DEFAULT: usize = 20;
/// Intervals one `ListIntervals` returns at most: each reads the interval's input and result
/// entries from the ledger, a day of five-minute intervals bounds that work.
const INTERVALS_LISTED_MAX: usize = 288;

/// An authenticated admin command, holding the admin lock so commands apply one at a time.
struct Authorized<'a> {
    command: Command,
    /// Its nonce, recorded in the ledger by commands that change the market.
    nonce: u64,
    guard: tokio::sync::MutexGuard<'a, u64>,
}

impl AdminApi {
    /// Pause or Resume: records the operator's request as a market event, then flips intake.
    async fn set_paused(
        &self,
        request: &pb::SignedAdminRequest,
        paused: bool,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let (command, event) = if paused {
            ("Pause", "pause")
        } else {
            ("Resume", "resume")
        };
        let a = self.authorize(request, command).await?;
        let origin = Origin {
            command,
            nonce: a.nonce,
        };
        let seq = market_event(&self.shared, origin, event).await?;
        self.shared.lock().paused = paused;
        tracing::info!(paused, "market {event}d");
        Ok(ack(seq, format!("{event}d")))
    }

    async fn authorize(
        &self,
        req: &pb::SignedAdminRequest,
        rpc: &str,
    ) -> Result<Authorized<'_>, ServiceError> {
        // Several nodes: the reads answer from any node's replica; every command that changes
        // the market goes to the leader, which alone appends.
        if !READ_ONLY_RPCS.contains(&rpc) {
            self.shared.check_leader().await?;
        }
        if req.request.len() > ADMIN_REQUEST_BYTES_MAX {
            return Err(invalid(
                "request",
                format!("is larger than {ADMIN_REQUEST_BYTES_MAX} bytes"),
            ));
        }
        let sig: [u8; 64] = req
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ServiceError::BadOperatorSignature)?;
        self.shared
            .operator
            .verify_strict(&req.request, &Signature::from_bytes(&sig))
            .map_err(|_| ServiceError::BadOperatorSignature)?;
        let r = pb::AdminRequest::decode(req.request.as_slice()).map_err(|e| {
            invalid(
                "request",
                format!("is not a serialized baton.v1.AdminRequest: {e}"),
            )
        })?;
        check_timestamp(
            r.timestamp,
            wall_now_ms().div_euclid(1000),
            self.shared.limits.request_timestamp_window_s,
        )?;
        let mut guard = self.shared.admin.lock().await;
        if r.nonce <= *guard {
            return Err(ServiceError::ReplayedNonce {
                nonce: r.nonce,
                last: *guard,
            });
        }
        let command = r.command.ok_or_else(|| invalid("command", "is missing"))?;
        if admin_rpc_name(&command) != rpc {
            return Err(invalid(
                "command",
                format!("is {} but the call is {rpc}", admin_rpc_name(&command)),
            ));
        }
        *guard = r.nonce;
        Ok(Authorized {
            command,
            nonce: r.nonce,
            guard,
        })
    }
}

/// Admin RPCs that only read, so any node of several answers them.
const READ_ONLY_RPCS: [&str; 3] = ["Status", "ListParticipants", "ListIntervals"];

/// The operator's request behind a ledger append: its RPC and nonce.
#[derive(Clone, Copy)]
struct Origin<'a> {
    command: &'a str,
    nonce: u64,
}

impl Origin<'_> {
    /// The `market_event` that records this request's nonce next to its effect.
    fn event(&self, event: &str) -> NewEntry {
        let body = serde_json::to_vec(&MarketEvent {
            admin_nonce: Some(self.nonce),
            command: Some(self.command.to_string()),
            event: event.to_string(),
        })
        .expect("an event serialises");
        NewEntry::new(EntryKind::MarketEvent, None, body)
    }
}

/// Validates a network and records it; the intervals cleared from now on use it. An operator's
/// request (`origin`) is recorded in the same append, so its nonce survives a restart.
async fn install_network(
    shared: &Shared,
    mut spec: MarketSpec,
    origin: Option<Origin<'_>>,
) -> Result<u64, ServiceError> {
    // Participants' energy and flexibility come as signed orders, never from the network file.
    spec.orders.clear();
    spec.flex_offers.clear();
    spec.interval_minutes = shared.interval_minutes;
    if let Some(f) = shared.price_floor {
        spec.price_floor = f;
    }
    if let Some(c) = shared.price_cap {
        spec.price_cap = c;
    }
    Market::new(&spec).map_err(|e| invalid("network", e.to_string()))?;
    check_participant_nodes(shared, &spec)?;
    let body = serde_json::to_vec(&spec).expect("a market spec serialises");
    let mut entries = vec![NewEntry::new(EntryKind::Network, None, body)];
    entries.extend(origin.map(|o| o.event("network")));
    let r = shared.ledger.append(entries).await?;
    tracing::info!(
        market = %spec.name,
        nodes = spec.nodes.len(),
        seq = r.first_seq,
        "network loaded"
    );
    shared.index().network_seq = r.first_seq;
    shared
        .lock()
        .set_network(spec)
        .map_err(|e| invalid("network", e.to_string()))?;
    Ok(r.first_seq)
}

/// Refuses a network that lacks the node of an active participant. A participant registered
/// while no network was loaded is checked here, when one is; and a new network cannot strand
/// participants at nodes it no longer has.
fn check_participant_nodes(shared: &Shared, spec: &MarketSpec) -> Result<(), ServiceError> {
    let st = shared.lock();
    let mut stranded: Vec<(&String, &String)> = st
        .participants
        .iter()
        .filter(|(_, p)| p.active && !spec.nodes.iter().any(|n| n.id == p.node))
        .map(|(id, p)| (id, &p.node))
        .collect();
    stranded.sort();
    match stranded.first() {
        None => Ok(()),
        Some((id, node)) => Err(invalid(
            "nodes",
            format!(
                "the network has no node {node:?}, where participant {id:?} is registered \
                 ({} participant(s) at nodes it lacks)",
                stranded.len()
            ),
        )),
    }
}

/// A native TOML scenario, or a study JSON market (`baton import-matpower` writes one) when the
/// text is a JSON object.
fn parse_scenario(text: &str) -> Result<MarketSpec, ServiceError> {
    if text.trim_start().starts_with('{') {
        return baton_engine::study::parse_market(text.as_bytes())
            .map_err(|e| invalid("json", e.to_string()));
    }
    baton_engine::scenario::parse(text)
        .map(|s| s.market)
        .map_err(|e| invalid("toml", e.to_string()))
}

/// Loads `--scenario` at start, unless the ledger's network (with the operator's later
/// changes) already came from it.
pub(crate) async fn load_scenario_at_start(
    shared: &Shared,
    text: &str,
) -> Result<(), ServiceError> {
    let _guard = shared.admin.lock().await;
    let mut spec = parse_scenario(text)?;
    spec.orders.clear();
    spec.interval_minutes = shared.interval_minutes;
    if shared.lock().network.is_some() {
        tracing::info!("network restored from the ledger; --scenario ignored");
        return Ok(());
    }
    install_network(shared, spec, None).await.map(|_| ())
}

fn network(shared: &Shared) -> Result<MarketSpec, ServiceError> {
    shared
        .lock()
        .network
        .as_ref()
        .map(|n| (**n).clone())
        .ok_or(ServiceError::NoNetwork)
}

fn ack(seq: u64, detail: impl Into<String>) -> Response<pb::AdminResponse> {
    Response::new(pb::AdminResponse {
        ledger_seq: seq,
        detail: detail.into(),
    })
}

async fn market_event(
    shared: &Shared,
    origin: Origin<'_>,
    event: &str,
) -> Result<u64, ServiceError> {
    let r = shared.ledger.append(vec![origin.event(event)]).await?;
    Ok(r.last_seq)
}

/// A participant entry's details, with the nonce of the operator's request that wrote it.
fn details_json(details: &ParticipantDetails, nonce: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(details).expect("details serialise");
    if let Some(m) = v.as_object_mut() {
        m.insert(ADMIN_NONCE_DETAIL.into(), nonce.into());
    }
    v
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn register_participant(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self
            .authorize(request.get_ref(), "RegisterParticipant")
            .await?;
        let Command::RegisterParticipant(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        check_participant_id(&r.participant_id)?;
        if RESERVED_ACCOUNTS.contains(&r.participant_id.as_str()) {
            return Err(invalid(
                "participant_id",
                format!(
                    "{:?} is a system account's name (a participant's account is its id)",
                    r.participant_id
                ),
            )
            .into());
        }
        let key = parse_key("public_key_hex", &r.public_key_hex)?;
        if r.node.is_empty() {
            return Err(invalid("node", "is empty").into());
        }
        let roles = requested_roles(&r)?;
        let capacity_kw = if r.capacity_kw.is_empty() {
            None
        } else {
            let c = parse_decimal("capacity_kw", &r.capacity_kw, QUANTITY_SCALE)?;
            if c <= rust_decimal::Decimal::ZERO {
                return Err(invalid("capacity_kw", "is not positive").into());
            }
            Some(c)
        };
        {
            let st = self.shared.lock();
            if st.participants.contains_key(&r.participant_id) {
                return Err(ServiceError::AlreadyRegistered(r.participant_id).into());
            }
            if let Some(n) = &st.network {
                if !n.nodes.iter().any(|x| x.id == r.node) {
                    return Err(
                        invalid("node", format!("{:?} is not in the network", r.node)).into(),
                    );
                }
            }
        }
        let details = ParticipantDetails {
            node: r.node.clone(),
            roles,
            capacity_kw,
        };
        let body = ParticipantBody {
            details: Some(details_json(&details, a.nonce)),
            participant_id: r.participant_id.clone(),
            public_key: key.to_bytes(),
            status: ParticipantStatus::Active,
        };
        let receipt = self
            .shared
            .ledger
            .append(vec![NewEntry::participant(&body)])
            .await
            .map_err(ServiceError::from)?;
        self.shared.lock().participants.insert(
            r.participant_id.clone(),
            Participant {
                key,
                node: details.node,
                roles: details.roles,
                capacity_kw,
                active: true,
            },
        );
        tracing::info!(participant = %r.participant_id, seq = receipt.last_seq, "participant registered");
        Ok(ack(receipt.last_seq, "registered"))
    }

    async fn register_meter(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self.authorize(request.get_ref(), "RegisterMeter").await?;
        let Command::RegisterMeter(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        check_participant_id(&r.participant_id)?;
        baton_proto::wire::ParticipantId::parse(&r.meter_id)
            .map_err(|e| invalid("meter_id", e.to_string()))?;
        let key = parse_key("public_key_hex", &r.public_key_hex)?;
        {
            let st = self.shared.lock();
            if !st.participants.contains_key(&r.participant_id) {
                return Err(
                    ServiceError::NotFound(format!("participant {:?}", r.participant_id)).into(),
                );
            }
            if st
                .metering
                .meters
                .contains_key(&(r.participant_id.clone(), r.meter_id.clone()))
            {
                return Err(ServiceError::MeterRegistered {
                    participant: r.participant_id,
                    meter: r.meter_id,
                }
                .into());
            }
        }
        let mut details = serde_json::Map::new();
        details.insert(ADMIN_NONCE_DETAIL.into(), a.nonce.into());
        let body = baton_ledger::MeterBody {
            details: Some(serde_json::Value::Object(details)),
            meter_id: r.meter_id.clone(),
            participant_id: r.participant_id.clone(),
            public_key: key.to_bytes(),
        };
        let receipt = self
            .shared
            .ledger
            .append(vec![NewEntry::meter(&body)])
            .await
            .map_err(ServiceError::from)?;
        self.shared
            .lock()
            .metering
            .meters
            .insert((r.participant_id.clone(), r.meter_id.clone()), key);
        tracing::info!(participant = %r.participant_id, meter = %r.meter_id, seq = receipt.last_seq, "meter registered");
        Ok(ack(receipt.last_seq, "meter registered"))
    }

    async fn suspend_participant(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self
            .authorize(request.get_ref(), "SuspendParticipant")
            .await?;
        let Command::SuspendParticipant(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        let p = self
            .shared
            .lock()
            .participants
            .get(&r.participant_id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("participant {:?}", r.participant_id)))?;
        let details = ParticipantDetails {
            node: p.node.clone(),
            roles: p.roles.clone(),
            capacity_kw: p.capacity_kw,
        };
        let body = ParticipantBody {
            details: Some(details_json(&details, a.nonce)),
            participant_id: r.participant_id.clone(),
            public_key: p.key.to_bytes(),
            status: ParticipantStatus::Suspended,
        };
        let receipt = self
            .shared
            .ledger
            .append(vec![NewEntry::participant(&body)])
            .await
            .map_err(ServiceError::from)?;
        if let Some(p) = self.shared.lock().participants.get_mut(&r.participant_id) {
            p.active = false;
        }
        tracing::info!(participant = %r.participant_id, "participant suspended");
        Ok(ack(receipt.last_seq, "suspended"))
    }

    async fn load_scenario(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self.authorize(request.get_ref(), "LoadScenario").await?;
        let Command::LoadScenario(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        let spec = parse_scenario(&r.toml)?;
        let origin = Origin {
            command: "LoadScenario",
            nonce: a.nonce,
        };
        let seq = install_network(&self.shared, spec, Some(origin)).await?;
        Ok(ack(seq, "network loaded"))
    }

    async fn set_grid_prices(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self.authorize(request.get_ref(), "SetGridPrices").await?;
        let Command::SetGridPrices(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        let mut spec = network(&self.shared)?;
        let import = parse_decimal("import_price", &r.import_price, PRICE_SCALE)?;
        let export = parse_decimal("export_price", &r.export_price, PRICE_SCALE)?;
        let g = spec
            .grid_connections
            .iter_mut()
            .find(|g| g.id == r.connection_id)
            .ok_or_else(|| {
                invalid(
                    "connection_id",
                    format!("{:?} is not a grid connection", r.connection_id),
                )
            })?;
        g.import_price = import;
        g.export_price = export;
        let origin = Origin {
            command: "SetGridPrices",
            nonce: a.nonce,
        };
        let seq = install_network(&self.shared, spec, Some(origin)).await?;
        Ok(ack(seq, "grid prices set"))
    }

    async fn post_flex_requirement(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let a = self
            .authorize(request.get_ref(), "PostFlexRequirement")
            .await?;
        let Command::PostFlexRequirement(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        let mut spec = network(&self.shared)?;
        let direction = requested_direction(&r)?;
        if !r.buyer.is_empty() {
            let st = self.shared.lock();
            let p = st
                .participants
                .get(&r.buyer)
                .filter(|p| p.active)
                .ok_or_else(|| {
                    invalid(
                        "buyer",
                        format!(
                            "{:?} is not an active participant (empty: the {NETWORK_OPERATOR_ACCOUNT} account)",
                            r.buyer
                        ),
                    )
                })?;
            p.require(&r.buyer, pb::ParticipantRole::NetworkOperator)?;
        }
        let blocks = r
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(BlockSpec {
                    quantity: parse_decimal(
                        &format!("blocks[{i}].quantity"),
                        &b.quantity,
                        QUANTITY_SCALE,
                    )?,
                    price: Some(parse_decimal(
                        &format!("blocks[{i}].price"),
                        &b.price,
                        PRICE_SCALE,
                    )?),
                })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let req = FlexRequirementSpec {
            id: r.id.clone(),
            buyer: (!r.buyer.is_empty()).then(|| r.buyer.clone()),
            nodes: r.nodes.clone(),
            direction,
            blocks,
        };
        spec.flex_requirements.retain(|f| f.id != r.id);
        spec.flex_requirements.push(req);
        let origin = Origin {
            command: "PostFlexRequirement",
            nonce: a.nonce,
        };
        let seq = install_network(&self.shared, spec, Some(origin)).await?;
        Ok(ack(seq, "flexibility requirement posted"))
    }

    async fn pause(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.set_paused(request.get_ref(), true).await
    }

    async fn resume(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        self.set_paused(request.get_ref(), false).await
    }

    async fn clear_now(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::ClearNowResponse>, Status> {
        let a = self.authorize(request.get_ref(), "ClearNow").await?;
        // Recorded before the clearing: a forced gate closure is the operator's act, and its
        // nonce must survive a restart like any other command's.
        let origin = Origin {
            command: "ClearNow",
            nonce: a.nonce,
        };
        market_event(&self.shared, origin, "clear_now").await?;
        drop(a);
        let (tx, rx) = oneshot::channel();
        self.shared
            .clear_now_tx
            .send(tx)
            .await
            .map_err(|_| self.shared.gone())?;
        let r = rx.await.map_err(|_| self.shared.gone())??;
        Ok(Response::new(r))
    }

    async fn status(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let a = self.authorize(request.get_ref(), "Status").await?;
        let last_admin_nonce = *a.guard;
        drop(a);
        let network_version = self.shared.index().network_seq;
        let head = self
            .shared
            .ledger
            .head()
            .await
            .map_err(ServiceError::from)?
            .map(|h| h.seq)
            .unwrap_or(0);
        let now = self.shared.clock.now_ms();
        let st = self.shared.lock();
        Ok(Response::new(pb::StatusResponse {
            paused: st.paused,
            network_loaded: st.network.is_some(),
            market: st
                .network
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            participants: st.participants.len() as u32,
            open_orders: st.books.values().map(|b| b.len() as u32).sum(),
            next_interval_start: self.shared.timing.open_window(now, st.closed_through).0,
            last_cleared_interval: st.cleared.last().copied().unwrap_or(0),
            ledger_head_seq: head,
            now: now.div_euclid(1000),
            network_version,
            last_admin_nonce,
        }))
    }

    async fn list_participants(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        let a = self
            .authorize(request.get_ref(), "ListParticipants")
            .await?;
        let Command::ListParticipants(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        drop(a.guard);
        let limit = match r.limit as usize {
            0 => PARTICIPANTS_PER_PAGE_MAX,
            n => n.min(PARTICIPANTS_PER_PAGE_MAX),
        };
        let st = self.shared.lock();
        let mut ids: Vec<&String> = st
            .participants
            .keys()
            .filter(|id| r.after.is_empty() || id.as_str() > r.after.as_str())
            .collect();
        ids.sort_unstable();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let participants: Vec<pb::ParticipantInfo> = ids
            .iter()
            .map(|id| {
                let p = &st.participants[*id];
                pb::ParticipantInfo {
                    participant_id: (*id).clone(),
                    node: p.node.clone(),
                    roles: p.roles.clone(),
                    capacity_kw: p.capacity_kw.map(|c| c.to_string()).unwrap_or_default(),
                    public_key_hex: hex::encode(p.key.to_bytes()),
                    active: p.active,
                    participant_roles: role_enums(&p.roles),
                }
            })
            .collect();
        let next_after = if more {
            participants
                .last()
                .map(|p| p.participant_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListParticipantsResponse {
            participants,
            next_after,
        }))
    }

    async fn list_intervals(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::ListIntervalsResponse>, Status> {
        let a = self.authorize(request.get_ref(), "ListIntervals").await?;
        let Command::ListIntervals(r) = a.command else {
            unreachable!("authorize checked the command")
        };
        drop(a.guard);
        let limit = match r.limit as usize {
            0 => INTERVALS_LISTED_DEFAULT,
            n => n.min(INTERVALS_LISTED_MAX),
        };
        let before = if r.before == 0 { i64::MAX } else { r.before };
        let metas: Vec<(i64, IntervalMeta)> = self
            .shared
            .index()
            .intervals
            .range(..before)
            .rev()
            .take(limit)
            .map(|(s, m)| (*s, *m))
            .collect();
        let mut intervals = Vec::with_capacity(metas.len());
        for (start, meta) in metas {
            let mut summary = summarize(&self.shared, start, meta).await?;
            let delivery = self.shared.index().deliveries.get(&start).copied();
            if let Some(seq) = delivery {
                summary.delivery = Some(summarize_delivery(&self.shared, start, seq).await?);
            }
            intervals.push(summary);
        }
        Ok(Response::new(pb::ListIntervalsResponse { intervals }))
    }
}

/// The parts of a `nodal-auction-result/v1` body a summary needs. Numbers stay raw JSON text
/// and become decimals, never floats.
#[derive(serde::Deserialize)]
struct ResultView {
    nodes: Vec<NodeView>,
    orders: Vec<OrderView>,
    #[serde(default)]
    lines: Vec<LineView>,
    #[serde(default)]
    flex_requirements: Vec<FlexView>,
}

#[derive(serde::Deserialize)]
struct NodeView {
    lmp: Box<RawValue>,
}

#[derive(serde::Deserialize)]
struct OrderView {
    id: String,
    accepted_total: Box<RawValue>,
}

#[derive(serde::Deserialize)]
struct LineView {
    id: String,
    congested: bool,
}

#[derive(serde::Deserialize)]
struct FlexView {
    procured: Box<RawValue>,
}

fn raw_decimal(start: i64, v: &RawValue) -> Result<Decimal, ServiceError> {
    Decimal::from_str(v.get()).map_err(|_| {
        ServiceError::Storage(format!(
            "interval {start}: result number {} is not a decimal",
            v.get()
        ))
    })
}

/// Summarises a cleared interval from what the ledger recorded for it: the input names each
/// order's side, the result its fills, prices, lines and flexibility.
async fn summarize(
    shared: &Shared,
    start: i64,
    meta: IntervalMeta,
) -> Result<pb::IntervalSummary, ServiceError> {
    let corrupt = |what: &str| ServiceError::Storage(format!("interval {start}: {what}"));
    let entries = shared.ledger.entries(meta.first_seq, meta.last_seq).await?;
    let body = |kind: EntryKind| {
        entries
            .iter()
            .find(|e| e.kind == kind && e.interval_start == Some(start))
            .map(|e| e.body.as_slice())
            .ok_or_else(|| corrupt(&format!("no {} entry", kind.as_str())))
    };
    let result: ResultView = serde_json::from_slice(body(EntryKind::IntervalResult)?)
        .map_err(|e| corrupt(&format!("result entry unreadable: {e}")))?;
    // Each order's side, from the book the market holds (rebuilt from the signed orders).
    let sides: std::collections::HashMap<&str, baton_engine::Side> = {
        let st = shared.lock();
        result
            .orders
            .iter()
            .filter_map(|o| st.orders.get(&o.id).map(|r| (o.id.as_str(), r.side)))
            .collect()
    };
    let (mut bought, mut sold) = (Decimal::ZERO, Decimal::ZERO);
    for o in &result.orders {
        let q = raw_decimal(start, &o.accepted_total)?;
        match sides.get(o.id.as_str()) {
            Some(baton_engine::Side::Buy) => bought += q,
            Some(baton_engine::Side::Sell) => sold += q,
            None => return Err(corrupt(&format!("order {:?} is not in the book", o.id))),
        }
    }
    let prices = result
        .nodes
        .iter()
        .map(|n| raw_decimal(start, &n.lmp))
        .collect::<Result<Vec<_>, _>>()?;
    let flex_procured = result
        .flex_requirements
        .iter()
        .map(|f| raw_decimal(start, &f.procured))
        .sum::<Result<Decimal, _>>()?;
    let text = |d: Option<&Decimal>| d.map(|d| d.normalize().to_string()).unwrap_or_default();
    Ok(pb::IntervalSummary {
        interval_start: start,
        clearing_ms: meta.clearing_ms,
        orders: result.orders.len() as u32,
        bought: bought.normalize().to_string(),
        sold: sold.normalize().to_string(),
        price_min: text(prices.iter().min()),
        price_max: text(prices.iter().max()),
        congested_lines: result
            .lines
            .iter()
            .filter(|l| l.congested)
            .map(|l| l.id.clone())
            .collect(),
        flex_procured: flex_procured.normalize().to_string(),
        ledger_first_seq: meta.first_seq,
        ledger_last_seq: meta.last_seq,
        delivery: None,
    })
}

/// An interval's metered delivery from its `delivery_settlement` entry, by the audit's one
/// reading of it (`baton_audit::summary::delivery_figures`).
async fn summarize_delivery(
    shared: &Shared,
    start: i64,
    seq: u64,
) -> Result<pb::DeliverySummary, ServiceError> {
    let corrupt = |what: String| ServiceError::Storage(format!("interval {start}: {what}"));
    let e = shared
        .ledger
        .entry(seq)
        .await?
        .filter(|e| e.kind == EntryKind::DeliverySettlement)
        .ok_or_else(|| corrupt(format!("no delivery_settlement entry at seq {seq}")))?;
    let f = baton_audit::summary::delivery_figures(&e.body).map_err(corrupt)?;
    let text = |d: Decimal| baton_proto::wire::format_decimal(d);
    Ok(pb::DeliverySummary {
        readings_received: f.readings as u32,
        readings_missing: f.missing as u32,
        imbalance_kwh: text(f.imbalance_kwh),
        imbalance_cost: text(f.imbalance_cost),
        flex_procured_kwh: text(f.flex_procured_kwh),
        flex_delivered_kwh: text(f.flex_delivered_kwh),
        flex_penalties: text(f.flex_penalties),
        ledger_seq: seq,
    })
}
