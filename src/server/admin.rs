//! `baton.v1.AdminService`: the operator's commands, each signed by the operator key.

use std::sync::Arc;

use baton_engine::model::{BlockSpec, Direction, FlexRequirementSpec, MarketSpec};
use baton_engine::units::{PRICE_SCALE, QUANTITY_SCALE};
use baton_engine::Market;
use baton_ledger::{EntryKind, NewEntry, ParticipantBody, ParticipantStatus};
use baton_proto::v1 as pb;
use ed25519_dalek::Signature;
use pb::admin_request::Command;
use pb::admin_service_server::AdminService;
use prost::Message;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::clock::wall_now_ms;
use super::error::{invalid, ServiceError};
use super::recover::MarketEvent;
use super::state::{
    check_participant_id, check_timestamp, parse_decimal, parse_key, Participant,
    ParticipantDetails,
};
use super::{Shared, ADMIN_REQUEST_BYTES_MAX};

/// Roles a participant may hold.
const ROLES: [&str; 4] = [
    "prosumer",
    "network_operator",
    "grid_connection",
    "regulator",
];

pub(crate) struct AdminApi {
    pub(crate) shared: Arc<Shared>,
}

/// An authenticated admin command, holding the admin lock so commands apply one at a time.
struct Authorized<'a> {
    command: Command,
    _guard: tokio::sync::MutexGuard<'a, u64>,
}

impl AdminApi {
    async fn authorize(
        &self,
        req: &pb::SignedAdminRequest,
        rpc: &str,
    ) -> Result<Authorized<'_>, ServiceError> {
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
        if command_name(&command) != rpc {
            return Err(invalid(
                "command",
                format!("is {} but the call is {rpc}", command_name(&command)),
            ));
        }
        *guard = r.nonce;
        Ok(Authorized {
            command,
            _guard: guard,
        })
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::RegisterParticipant(_) => "RegisterParticipant",
        Command::SuspendParticipant(_) => "SuspendParticipant",
        Command::LoadScenario(_) => "LoadScenario",
        Command::SetGridPrices(_) => "SetGridPrices",
        Command::PostFlexRequirement(_) => "PostFlexRequirement",
        Command::Pause(_) => "Pause",
        Command::Resume(_) => "Resume",
        Command::ClearNow(_) => "ClearNow",
        Command::Status(_) => "Status",
    }
}

/// Validates a network and records it; the intervals cleared from now on use it.
async fn install_network(shared: &Shared, mut spec: MarketSpec) -> Result<u64, ServiceError> {
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
    let body = serde_json::to_vec(&spec).expect("a market spec serialises");
    let r = shared
        .ledger
        .append(vec![NewEntry::new(EntryKind::Network, None, body)])
        .await?;
    tracing::info!(
        market = %spec.name,
        nodes = spec.nodes.len(),
        seq = r.last_seq,
        "network loaded"
    );
    shared.lock().network = Some(Arc::new(spec));
    Ok(r.last_seq)
}

fn parse_scenario(text: &str) -> Result<MarketSpec, ServiceError> {
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
    install_network(shared, spec).await.map(|_| ())
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

async fn market_event(shared: &Shared, event: &str) -> Result<u64, ServiceError> {
    let body = serde_json::to_vec(&MarketEvent {
        event: event.to_string(),
    })
    .expect("an event serialises");
    let r = shared
        .ledger
        .append(vec![NewEntry::new(EntryKind::MarketEvent, None, body)])
        .await?;
    Ok(r.last_seq)
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
        let key = parse_key("public_key_hex", &r.public_key_hex)?;
        if r.node.is_empty() {
            return Err(invalid("node", "is empty").into());
        }
        if let Some(role) = r.roles.iter().find(|x| !ROLES.contains(&x.as_str())) {
            return Err(invalid("roles", format!("unknown role {role:?}")).into());
        }
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
            roles: r.roles.clone(),
            capacity_kw,
        };
        let body = ParticipantBody {
            details: Some(serde_json::to_value(&details).expect("details serialise")),
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
            details: Some(serde_json::to_value(&details).expect("details serialise")),
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
        let seq = install_network(&self.shared, spec).await?;
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
        let seq = install_network(&self.shared, spec).await?;
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
        let direction = match r.direction.as_str() {
            "up" => Direction::Up,
            "down" => Direction::Down,
            other => {
                return Err(invalid("direction", format!("{other:?} is not up or down")).into())
            }
        };
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
        let seq = install_network(&self.shared, spec).await?;
        Ok(ack(seq, "flexibility requirement posted"))
    }

    async fn pause(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let _a = self.authorize(request.get_ref(), "Pause").await?;
        let seq = market_event(&self.shared, "pause").await?;
        self.shared.lock().paused = true;
        tracing::info!("market paused");
        Ok(ack(seq, "paused"))
    }

    async fn resume(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let _a = self.authorize(request.get_ref(), "Resume").await?;
        let seq = market_event(&self.shared, "resume").await?;
        self.shared.lock().paused = false;
        tracing::info!("market resumed");
        Ok(ack(seq, "resumed"))
    }

    async fn clear_now(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::ClearNowResponse>, Status> {
        let a = self.authorize(request.get_ref(), "ClearNow").await?;
        drop(a);
        let (tx, rx) = oneshot::channel();
        self.shared
            .clear_now_tx
            .send(tx)
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        let r = rx.await.map_err(|_| ServiceError::ShuttingDown)??;
        Ok(Response::new(r))
    }

    async fn status(
        &self,
        request: Request<pb::SignedAdminRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _a = self.authorize(request.get_ref(), "Status").await?;
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
            next_interval_start: self
                .shared
                .timing
                .earliest_open(now)
                .max(st.closed_through + self.shared.timing.interval_s),
            last_cleared_interval: st.cleared.last().copied().unwrap_or(0),
            ledger_head_seq: head,
            now: now.div_euclid(1000),
        }))
    }
}
