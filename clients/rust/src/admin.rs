//! `baton.v1.AdminService`: the operator's commands.

use std::sync::Arc;

use pb::admin_request::Command;
use pb::admin_service_client::AdminServiceClient;
use prost::Message;
use rust_decimal::Decimal;
use tonic::transport::Channel;

use crate::nonce::unix_seconds;
use crate::{
    call, pb, retrying, wire, AdminKey, ClientError, NonceCounter, MESSAGE_BYTES_MAX,
    REQUEST_TIMEOUT_MS,
};

/// Pages [`AdminClient::list_participants`] reads at most: with the server's page of 5,000
/// that is ten million participants, far beyond a distribution feeder.
pub const PARTICIPANT_PAGES_MAX: usize = 2_000;
/// Times one admin command moves past a nonce the server already accepted (another operator
/// tool signed in between) and signs anew. Safe: a refused request changed nothing.
pub const ADMIN_NONCE_RESYNCS_MAX: u32 = 3;
/// How long `ClearNow` may take, milliseconds: it waits for a whole interval's clearing.
pub const CLEAR_NOW_TIMEOUT_MS: u64 = 600_000;

/// A participant to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewParticipant {
    /// ASCII letters, digits, `_`, `.`, `-`; at most 64 bytes.
    pub id: String,
    /// Its node in the loaded network.
    pub node: String,
    /// Its ed25519 public key, 64 hex digits.
    pub public_key_hex: String,
    /// What it may do (empty: a prosumer). Only prosumers submit and cancel orders.
    pub roles: Vec<pb::ParticipantRole>,
    /// Largest quantity per block, kW (`None`: the engine's limit).
    pub capacity_kw: Option<Decimal>,
}

/// Up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlexDirection {
    /// More injection or less consumption.
    Up,
    /// Less injection or more consumption.
    Down,
}

impl FlexDirection {
    /// The wire enum.
    pub fn to_wire(self) -> pb::FlexDirection {
        match self {
            FlexDirection::Up => pb::FlexDirection::Up,
            FlexDirection::Down => pb::FlexDirection::Down,
        }
    }

    /// `up` or `down`, as the wire's v1 string field spells it.
    pub fn as_str(self) -> &'static str {
        self.to_wire().name()
    }
}

/// A network operator's flexibility requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlexRequirement {
    /// Replaces a requirement with the same id.
    pub id: String,
    /// The nodes where flexibility counts.
    pub nodes: Vec<String>,
    /// Up or down.
    pub direction: FlexDirection,
    /// (quantity kW, highest price) blocks.
    pub blocks: Vec<(Decimal, Decimal)>,
    /// The paying account (`None`: network-operator).
    pub buyer: Option<String>,
}

/// The operator's client. Every request is signed with the operator key and carries a fresh
/// nonce ([`NonceCounter`]); read-only commands are retried on transient failures, commands
/// that change the market are sent once (the caller decides, e.g. after checking `status`).
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
    key: Arc<AdminKey>,
    nonces: NonceCounter,
}

impl AdminClient {
    /// A client over `channel` signing with the operator's `key`.
    pub fn new(channel: Channel, key: AdminKey) -> Self {
        AdminClient {
            inner: AdminServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX),
            key: Arc::new(key),
            nonces: NonceCounter::new(),
        }
    }

    fn sign(&self, nonce: u64, command: &Command) -> pb::SignedAdminRequest {
        let request = pb::AdminRequest {
            timestamp: unix_seconds(),
            nonce,
            command: Some(command.clone()),
        }
        .encode_to_vec();
        pb::SignedAdminRequest {
            signature: self.key.sign(&request).to_vec(),
            request,
        }
    }

    /// Sends one command, signing it anew above the server's last nonce if that was refused.
    async fn send<T, F, Fut>(
        &self,
        command: Command,
        timeout_ms: u64,
        rpc: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<Channel>, pb::SignedAdminRequest) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut resyncs = 0;
        loop {
            let req = self.sign(self.nonces.next(), &command);
            match call(
                baton_proto::wire::admin_rpc_name(&command),
                timeout_ms,
                rpc(self.inner.clone(), req),
            )
            .await
            {
                Err(e) => match e.last_accepted_nonce() {
                    Some(last) if resyncs < ADMIN_NONCE_RESYNCS_MAX => {
                        self.nonces.observe(last);
                        resyncs += 1;
                    }
                    _ => return Err(e),
                },
                r => return r,
            }
        }
    }

    /// A read-only command, retried on transient failures (each attempt signed anew).
    async fn read<T, F, Fut>(&self, command: Command, rpc: F) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<Channel>, pb::SignedAdminRequest) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        retrying(self.nonces.last(), || {
            self.send(command.clone(), REQUEST_TIMEOUT_MS, &rpc)
        })
        .await
    }

    /// Admits a participant with its key, node, roles and capacity.
    pub async fn register_participant(
        &self,
        p: &NewParticipant,
    ) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::RegisterParticipant(pb::RegisterParticipant {
            participant_id: p.id.clone(),
            public_key_hex: p.public_key_hex.clone(),
            node: p.node.clone(),
            // Both fields, so servers from before the enum read the same set.
            roles: p.roles.iter().map(|r| r.name().to_string()).collect(),
            participant_roles: p.roles.iter().map(|r| *r as i32).collect(),
            capacity_kw: p.capacity_kw.map(wire).unwrap_or_default(),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.register_participant(r).await
        })
        .await
    }

    /// Suspends a participant: its orders are refused from now on.
    pub async fn suspend_participant(&self, id: &str) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::SuspendParticipant(pb::SuspendParticipant {
            participant_id: id.to_string(),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.suspend_participant(r).await
        })
        .await
    }

    /// Registers a meter whose key (64 hex digits) may sign `participant`'s meter readings.
    pub async fn register_meter(
        &self,
        participant: &str,
        meter_id: &str,
        public_key_hex: &str,
    ) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::RegisterMeter(pb::RegisterMeter {
            participant_id: participant.to_string(),
            meter_id: meter_id.to_string(),
            public_key_hex: public_key_hex.to_string(),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.register_meter(r).await
        })
        .await
    }

    /// Loads a native TOML scenario's network (its orders and participants are ignored).
    pub async fn load_scenario(&self, toml: &str) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::LoadScenario(pb::LoadScenario {
            toml: toml.to_string(),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.load_scenario(r).await
        })
        .await
    }

    /// Sets a grid connection's import and export prices.
    pub async fn set_grid_prices(
        &self,
        connection_id: &str,
        import_price: Decimal,
        export_price: Decimal,
    ) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::SetGridPrices(pb::SetGridPrices {
            connection_id: connection_id.to_string(),
            import_price: wire(import_price),
            export_price: wire(export_price),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.set_grid_prices(r).await
        })
        .await
    }

    /// Adds or replaces a flexibility requirement for the intervals cleared from now on.
    pub async fn post_flex_requirement(
        &self,
        f: &FlexRequirement,
    ) -> Result<pb::AdminResponse, ClientError> {
        let cmd = Command::PostFlexRequirement(pb::PostFlexRequirement {
            id: f.id.clone(),
            nodes: f.nodes.clone(),
            direction: f.direction.as_str().to_string(),
            flex_direction: f.direction.to_wire() as i32,
            blocks: f
                .blocks
                .iter()
                .map(|(q, p)| pb::FlexBlock {
                    quantity: wire(*q),
                    price: wire(*p),
                })
                .collect(),
            buyer: f.buyer.clone().unwrap_or_default(),
        });
        self.send(cmd, REQUEST_TIMEOUT_MS, |mut c, r| async move {
            c.post_flex_requirement(r).await
        })
        .await
    }

    /// Pauses intake (orders are refused; scheduled clearing goes on).
    pub async fn pause(&self) -> Result<pb::AdminResponse, ClientError> {
        self.send(
            Command::Pause(pb::Pause {}),
            REQUEST_TIMEOUT_MS,
            |mut c, r| async move { c.pause(r).await },
        )
        .await
    }

    /// Resumes intake.
    pub async fn resume(&self) -> Result<pb::AdminResponse, ClientError> {
        self.send(
            Command::Resume(pb::Resume {}),
            REQUEST_TIMEOUT_MS,
            |mut c, r| async move { c.resume(r).await },
        )
        .await
    }

    /// Closes the gate of the next open interval now and clears it; returns once it is in
    /// the ledger.
    pub async fn clear_now(&self) -> Result<pb::ClearNowResponse, ClientError> {
        self.send(
            Command::ClearNow(pb::ClearNow {}),
            CLEAR_NOW_TIMEOUT_MS,
            |mut c, r| async move { c.clear_now(r).await },
        )
        .await
    }

    /// The market's state.
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.read(Command::Status(pb::Status {}), |mut c, r| async move {
            c.status(r).await
        })
        .await
    }

    /// One page of participants in id order, after `after` (empty: from the first).
    pub async fn list_participants_page(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<pb::ListParticipantsResponse, ClientError> {
        let cmd = Command::ListParticipants(pb::ListParticipants {
            after: after.to_string(),
            limit,
        });
        self.read(cmd, |mut c, r| async move { c.list_participants(r).await })
            .await
    }

    /// Every participant, in id order (read page by page).
    pub async fn list_participants(&self) -> Result<Vec<pb::ParticipantInfo>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        for _ in 0..PARTICIPANT_PAGES_MAX {
            let page = self.list_participants_page(&after, 0).await?;
            out.extend(page.participants);
            if page.next_after.is_empty() {
                return Ok(out);
            }
            after = page.next_after;
        }
        Err(ClientError::invalid(
            "participants",
            format!("more than {PARTICIPANT_PAGES_MAX} pages"),
        ))
    }

    /// Cleared intervals, newest first: at most `limit` (0: the server's default), only
    /// those starting before `before` if given.
    pub async fn list_intervals(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<pb::IntervalSummary>, ClientError> {
        let cmd = Command::ListIntervals(pb::ListIntervals {
            limit,
            before: before.unwrap_or(0),
        });
        let r = self
            .read(cmd, |mut c, r| async move { c.list_intervals(r).await })
            .await?;
        Ok(r.intervals)
    }
}
