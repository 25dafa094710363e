//! `baton admin`: the operator's commands against a running `baton serve`, through the
//! `baton-client` SDK. Tables for people by default, `--json` for scripts.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use baton_client::{
    pb, AdminClient, AdminKey, AuditClient, ClientError, Code, Decimal, FlexDirection,
    FlexRequirement, NewParticipant, PublicClient,
};
use serde_json::{json, Value};

/// Rows one `participants import` file may hold: a feeder's worth of prosumers many times
/// over, and small enough to register one by one in a few minutes.
const IMPORT_ROWS_MAX: usize = 100_000;
/// The header `participants import` expects, in this order.
const IMPORT_HEADER: [&str; 5] = ["id", "node", "public_key", "roles", "capacity_kw"];

/// `baton admin` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct AdminArgs {
    /// The server's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The operator's private key file (the server's --operator-key).
    #[arg(long)]
    operator_key: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AdminCommand {
    /// Register, import, list and suspend participants.
    Participants {
        #[command(subcommand)]
        command: ParticipantsCommand,
    },
    /// Load or show the network.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Grid connection prices.
    Grid {
        #[command(subcommand)]
        command: GridCommand,
    },
    /// The network operator's flexibility requirements.
    Flex {
        #[command(subcommand)]
        command: FlexCommand,
    },
    /// Market state: status, pause, resume, clear now.
    Market {
        #[command(subcommand)]
        command: MarketCommand,
    },
    /// Cleared intervals.
    Intervals {
        #[command(subcommand)]
        command: IntervalsCommand,
    },
    /// Register a meter whose key may sign a participant's meter readings.
    RegisterMeter {
        /// The participant whose connection point the meter measures.
        #[arg(long)]
        participant: String,
        /// The meter's id (letters, digits, '_', '.', '-'), unique per participant.
        #[arg(long)]
        meter_id: String,
        /// The meter's ed25519 public key, 64 hex digits.
        #[arg(
            long,
            conflicts_with = "public_key_file",
            required_unless_present = "public_key_file"
        )]
        public_key: Option<String>,
        /// A file holding the meter's public key (e.g. METER.pub).
        #[arg(long)]
        public_key_file: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ParticipantsCommand {
    /// Admit one participant with its public key.
    Register {
        /// Participant id (letters, digits, '_', '.', '-').
        #[arg(long)]
        id: String,
        /// Its node in the loaded network.
        #[arg(long)]
        node: String,
        /// Its ed25519 public key, 64 hex digits.
        #[arg(
            long,
            conflicts_with = "public_key_file",
            required_unless_present = "public_key_file"
        )]
        public_key: Option<String>,
        /// A file holding its public key (e.g. NAME.pub).
        #[arg(long)]
        public_key_file: Option<PathBuf>,
        /// Roles, comma-separated. Only prosumers submit orders; a network operator may pay
        /// for flexibility requirements.
        #[arg(long, value_delimiter = ',', default_value = "prosumer")]
        roles: Vec<RoleArg>,
        /// Largest quantity per block, kW (default: the engine's limit).
        #[arg(long)]
        capacity_kw: Option<Decimal>,
    },
    /// Register every row of a CSV file (header id,node,public_key,roles,capacity_kw; roles
    /// separated by ';'). Rows already registered identically are reported and skipped.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Every participant.
    List,
    /// Suspend a participant: its orders are refused from now on.
    Suspend {
        /// Participant id.
        id: String,
    },
}

/// A participant role on the command line (the wire's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// Submits and cancels orders.
    #[value(name = "prosumer")]
    Prosumer,
    /// May be the buyer of a flexibility requirement.
    #[value(name = "network_operator")]
    NetworkOperator,
    /// Recorded for the ledger's readers.
    #[value(name = "grid_connection")]
    GridConnection,
    /// Recorded for the ledger's readers.
    #[value(name = "regulator")]
    Regulator,
}

impl RoleArg {
    fn to_wire(self) -> pb::ParticipantRole {
        match self {
            RoleArg::Prosumer => pb::ParticipantRole::Prosumer,
            RoleArg::NetworkOperator => pb::ParticipantRole::NetworkOperator,
            RoleArg::GridConnection => pb::ParticipantRole::GridConnection,
            RoleArg::Regulator => pb::ParticipantRole::Regulator,
        }
    }
}

/// A flexibility direction on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DirectionArg {
    /// More injection or less consumption.
    Up,
    /// Less injection or more consumption.
    Down,
}

#[derive(clap::Subcommand, Debug)]
enum NetworkCommand {
    /// Load a native TOML scenario's network (its orders and participants are ignored).
    Load {
        /// The scenario file.
        file: PathBuf,
    },
    /// The network in force, as recorded in the ledger.
    Show,
}

#[derive(clap::Subcommand, Debug)]
enum GridCommand {
    /// Set a grid connection's import and export prices.
    SetPrices {
        /// Grid connection id.
        #[arg(long)]
        connection: String,
        /// Import price, currency per kWh.
        #[arg(long)]
        import: Decimal,
        /// Export price, currency per kWh.
        #[arg(long)]
        export: Decimal,
    },
}

#[derive(clap::Subcommand, Debug)]
enum FlexCommand {
    /// Add or replace a flexibility requirement.
    Post {
        /// Requirement id (replaces one with the same id).
        #[arg(long)]
        id: String,
        /// Nodes where flexibility counts, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Which way the flexibility moves the node's net injection.
        #[arg(long)]
        direction: DirectionArg,
        /// Blocks QUANTITY@PRICE (kW at most this price): `--block 5@0.2 3@0.3`, or repeat
        /// the flag.
        #[arg(long = "block", required = true, num_args = 1..)]
        blocks: Vec<String>,
        /// Paying account (default network-operator).
        #[arg(long)]
        buyer: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum MarketCommand {
    /// The market's state.
    Status,
    /// Refuse orders until resumed.
    Pause,
    /// Accept orders again.
    Resume,
    /// Close the next open interval's gate now and clear it.
    ClearNow,
}

#[derive(clap::Subcommand, Debug)]
enum IntervalsCommand {
    /// Cleared intervals, newest first.
    List {
        /// How many (the server caps it).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// What a command prints: a table or a line for people, JSON for scripts.
struct Output {
    human: String,
    json: Value,
}

impl Output {
    fn line(human: impl Into<String>, json: Value) -> Output {
        Output {
            human: human.into(),
            json,
        }
    }
}

pub(crate) fn run(a: AdminArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let json = a.json;
    let (out, ok) = rt.block_on(run_async(a))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out.json)?);
    } else if !out.human.is_empty() {
        println!("{}", out.human.trim_end());
    }
    if !ok {
        bail!("some rows failed (see above)");
    }
    Ok(())
}

/// Runs the command; `false` with the output when some of its parts failed.
async fn run_async(a: AdminArgs) -> Result<(Output, bool)> {
    let key = AdminKey::load(&a.operator_key).context("loading the operator key")?;
    let channel = baton_client::connect(&a.server)
        .await
        .map_err(|e| match e {
            ClientError::Connect { reason, .. } => {
                anyhow!("cannot reach the server at {}: {reason}", a.server)
            }
            other => anyhow!("{other}"),
        })?;
    let admin = AdminClient::new(channel.clone(), key);
    let refused = |e: ClientError| refused(e, &a.operator_key);
    let out = match a.command {
        AdminCommand::Participants { command } => match command {
            ParticipantsCommand::Register {
                id,
                node,
                public_key,
                public_key_file,
                roles,
                capacity_kw,
            } => {
                let public_key_hex = match (public_key, public_key_file) {
                    (Some(k), _) => {
                        baton_client::key::parse_public_key_hex(&k).context("--public-key")?
                    }
                    (None, Some(f)) => {
                        baton_client::key::read_public_key_hex(&f).context("--public-key-file")?
                    }
                    (None, None) => bail!("--public-key or --public-key-file is required"),
                };
                let p = NewParticipant {
                    id,
                    node,
                    public_key_hex,
                    roles: roles.into_iter().map(RoleArg::to_wire).collect(),
                    capacity_kw,
                };
                let r = admin.register_participant(&p).await.map_err(refused)?;
                Output::line(
                    format!(
                        "registered {} at {} (ledger seq {})",
                        p.id, p.node, r.ledger_seq
                    ),
                    json!({"participant_id": p.id, "ledger_seq": r.ledger_seq}),
                )
            }
            ParticipantsCommand::Import { file } => {
                return import(&admin, &file, &a.operator_key).await;
            }
            ParticipantsCommand::List => {
                let all = admin.list_participants().await.map_err(refused)?;
                participants_output(&all)
            }
            ParticipantsCommand::Suspend { id } => {
                let r = admin.suspend_participant(&id).await.map_err(refused)?;
                Output::line(
                    format!("suspended {id} (ledger seq {})", r.ledger_seq),
                    json!({"participant_id": id, "ledger_seq": r.ledger_seq}),
                )
            }
        },
        AdminCommand::RegisterMeter {
            participant,
            meter_id,
            public_key,
            public_key_file,
        } => {
            let public_key_hex = match (public_key, public_key_file) {
                (Some(k), _) => {
                    baton_client::key::parse_public_key_hex(&k).context("--public-key")?
                }
                (None, Some(f)) => {
                    baton_client::key::read_public_key_hex(&f).context("--public-key-file")?
                }
                (None, None) => bail!("--public-key or --public-key-file is required"),
            };
            let r = admin
                .register_meter(&participant, &meter_id, &public_key_hex)
                .await
                .map_err(refused)?;
            Output::line(
                format!(
                    "registered meter {meter_id} for {participant} (ledger seq {})",
                    r.ledger_seq
                ),
                json!({"participant_id": participant, "meter_id": meter_id,
                       "ledger_seq": r.ledger_seq}),
            )
        }
        AdminCommand::Network { command } => match command {
            NetworkCommand::Load { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let r = admin.load_scenario(&text).await.map_err(refused)?;
                Output::line(
                    format!(
                        "network loaded from {} (network version {})",
                        file.display(),
                        r.ledger_seq
                    ),
                    json!({"network_version": r.ledger_seq}),
                )
            }
            NetworkCommand::Show => network_show(&admin, &channel, &a.operator_key).await?,
        },
        AdminCommand::Grid {
            command:
                GridCommand::SetPrices {
                    connection,
                    import,
                    export,
                },
        } => {
            let r = admin
                .set_grid_prices(&connection, import, export)
                .await
                .map_err(refused)?;
            Output::line(
                format!(
                    "grid connection {connection}: import {import}, export {export} (network version {})",
                    r.ledger_seq
                ),
                json!({"connection": connection, "import_price": import.to_string(),
                       "export_price": export.to_string(), "network_version": r.ledger_seq}),
            )
        }
        AdminCommand::Flex {
            command:
                FlexCommand::Post {
                    id,
                    nodes,
                    direction,
                    blocks,
                    buyer,
                },
        } => {
            let direction = match direction {
                DirectionArg::Up => FlexDirection::Up,
                DirectionArg::Down => FlexDirection::Down,
            };
            let blocks = blocks
                .iter()
                .map(|b| parse_block(b).with_context(|| format!("--block {b:?}")))
                .collect::<Result<Vec<_>>>()?;
            let f = FlexRequirement {
                id,
                nodes,
                direction,
                blocks,
                buyer,
            };
            let r = admin.post_flex_requirement(&f).await.map_err(refused)?;
            let total: Decimal = f.blocks.iter().map(|(q, _)| *q).sum();
            Output::line(
                format!(
                    "flexibility requirement {} posted: {} {} kW at {} (network version {})",
                    f.id,
                    direction.as_str(),
                    total,
                    f.nodes.join(","),
                    r.ledger_seq
                ),
                json!({"id": f.id, "network_version": r.ledger_seq}),
            )
        }
        AdminCommand::Market { command } => match command {
            MarketCommand::Status => {
                let s = admin.status().await.map_err(refused)?;
                status_output(&s)
            }
            MarketCommand::Pause => {
                let r = admin.pause().await.map_err(refused)?;
                Output::line(
                    format!("market paused (ledger seq {})", r.ledger_seq),
                    json!({"paused": true, "ledger_seq": r.ledger_seq}),
                )
            }
            MarketCommand::Resume => {
                let r = admin.resume().await.map_err(refused)?;
                Output::line(
                    format!("market resumed (ledger seq {})", r.ledger_seq),
                    json!({"paused": false, "ledger_seq": r.ledger_seq}),
                )
            }
            MarketCommand::ClearNow => {
                let r = admin.clear_now().await.map_err(refused)?;
                let human = if r.ledger_last_seq == 0 {
                    format!(
                        "interval {} ({}) closed; nothing recorded (no network loaded, or already recorded)",
                        r.interval_start,
                        utc(r.interval_start)
                    )
                } else {
                    format!(
                        "cleared interval {} ({}): ledger seqs {}..{}",
                        r.interval_start,
                        utc(r.interval_start),
                        r.ledger_first_seq,
                        r.ledger_last_seq
                    )
                };
                Output::line(
                    human,
                    json!({"interval_start": r.interval_start,
                           "ledger_first_seq": r.ledger_first_seq,
                           "ledger_last_seq": r.ledger_last_seq}),
                )
            }
        },
        AdminCommand::Intervals {
            command: IntervalsCommand::List { limit },
        } => {
            let all = admin.list_intervals(limit, None).await.map_err(refused)?;
            intervals_output(&all)
        }
    };
    Ok((out, true))
}

/// Turns a refused admin call into one clear line; a refused signature names the key file.
fn refused(e: ClientError, key: &Path) -> anyhow::Error {
    match e.code() {
        Some(Code::Unauthenticated) => anyhow!(
            "the server refused the operator key {} (is it the server's --operator-key?): {}",
            key.display(),
            e.message().unwrap_or_default()
        ),
        _ => anyhow!(e),
    }
}

/// `QUANTITY@PRICE`.
fn parse_block(b: &str) -> Result<(Decimal, Decimal)> {
    let (q, p) = b
        .split_once('@')
        .ok_or_else(|| anyhow!("expected QUANTITY@PRICE, e.g. 10@0.2"))?;
    let q = Decimal::from_str(q.trim()).map_err(|_| anyhow!("quantity {q:?} is not a number"))?;
    let p = Decimal::from_str(p.trim()).map_err(|_| anyhow!("price {p:?} is not a number"))?;
    Ok((q, p))
}

/// One data row of an import file.
struct ImportRow {
    line: usize,
    participant: Result<NewParticipant, String>,
    id: String,
}

fn parse_import(text: &str) -> Result<Vec<ImportRow>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().ok_or_else(|| anyhow!("the file is empty"))?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    if names != IMPORT_HEADER {
        bail!(
            "the header is {header:?}; expected {:?}",
            IMPORT_HEADER.join(",")
        );
    }
    let mut rows = Vec::new();
    for (line, l) in lines {
        if rows.len() >= IMPORT_ROWS_MAX {
            bail!("more than {IMPORT_ROWS_MAX} rows");
        }
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        let id = f.first().copied().unwrap_or_default().to_string();
        let participant = (|| {
            let [id, node, key, roles, capacity] = f.as_slice() else {
                return Err(format!(
                    "{} fields where {} are expected",
                    f.len(),
                    IMPORT_HEADER.len()
                ));
            };
            let public_key_hex =
                baton_client::key::parse_public_key_hex(key).map_err(|e| e.to_string())?;
            let capacity_kw = match *capacity {
                "" => None,
                c => Some(
                    Decimal::from_str(c)
                        .map_err(|_| format!("capacity_kw: {c:?} is not a number"))?,
                ),
            };
            Ok(NewParticipant {
                id: id.to_string(),
                node: node.to_string(),
                public_key_hex,
                roles: roles
                    .split(';')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(|r| pb::ParticipantRole::from_name(r).map_err(|e| format!("roles: {e}")))
                    .collect::<Result<_, _>>()?,
                capacity_kw,
            })
        })();
        rows.push(ImportRow {
            line,
            participant,
            id,
        });
    }
    Ok(rows)
}

/// Registers each row; a failed row is reported and the import goes on.
async fn import(admin: &AdminClient, file: &Path, key: &Path) -> Result<(Output, bool)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rows = parse_import(&text).with_context(|| format!("{}", file.display()))?;
    // Rows registered before (a re-run after a partial import) are fine if identical.
    let known: std::collections::HashMap<String, pb::ParticipantInfo> = admin
        .list_participants()
        .await
        .map_err(|e| refused(e, key))?
        .into_iter()
        .map(|p| (p.participant_id.clone(), p))
        .collect();
    let mut table = Vec::new();
    let mut json_rows = Vec::new();
    let (mut registered, mut unchanged, mut failed) = (0usize, 0usize, 0usize);
    for row in rows {
        let outcome: Result<(String, Option<u64>), String> = match &row.participant {
            Err(e) => Err(e.clone()),
            Ok(p) => match known.get(&p.id) {
                Some(k) if same_participant(k, p) => Ok(("already registered".into(), None)),
                Some(_) => Err(format!(
                    "{} is already registered with another key, node, roles or capacity",
                    p.id
                )),
                None => match admin.register_participant(p).await {
                    Ok(r) => Ok(("registered".into(), Some(r.ledger_seq))),
                    Err(e) if e.code() == Some(Code::Unauthenticated) => {
                        return Err(refused(e, key));
                    }
                    Err(e) => Err(e.to_string()),
                },
            },
        };
        match &outcome {
            Ok((_, Some(_))) => registered += 1,
            Ok((_, None)) => unchanged += 1,
            Err(_) => failed += 1,
        }
        let (text, seq, error) = match outcome {
            Ok((t, s)) => (t, s, None),
            Err(e) => (format!("FAILED: {e}"), None, Some(e)),
        };
        table.push(vec![
            row.line.to_string(),
            row.id.clone(),
            text,
            seq.map(|s| s.to_string()).unwrap_or_default(),
        ]);
        json_rows.push(
            json!({"line": row.line, "id": row.id, "ok": error.is_none(),
                              "ledger_seq": seq, "error": error}),
        );
    }
    let mut human = format_table(&["LINE", "ID", "OUTCOME", "LEDGER_SEQ"], &table);
    human.push_str(&format!(
        "\n{registered} registered, {unchanged} already registered, {failed} failed\n"
    ));
    Ok((
        Output {
            human,
            json: json!({"rows": json_rows, "registered": registered,
                         "already_registered": unchanged, "failed": failed}),
        },
        failed == 0,
    ))
}

fn same_participant(k: &pb::ParticipantInfo, p: &NewParticipant) -> bool {
    let capacity = |s: &str| Decimal::from_str(s).ok();
    k.node == p.node
        && k.public_key_hex == p.public_key_hex
        && same_roles(&k.roles, &p.roles)
        && capacity(&k.capacity_kw) == p.capacity_kw
}

/// Whether recorded role names are the set `roles` asks for (none asks for a prosumer).
fn same_roles(recorded: &[String], roles: &[pb::ParticipantRole]) -> bool {
    let mut want: Vec<&str> = if roles.is_empty() {
        vec![pb::ParticipantRole::Prosumer.name()]
    } else {
        roles.iter().map(|r| r.name()).collect()
    };
    let mut have: Vec<&str> = recorded.iter().map(String::as_str).collect();
    for v in [&mut want, &mut have] {
        v.sort_unstable();
        v.dedup();
    }
    want == have
}

fn participants_output(all: &[pb::ParticipantInfo]) -> Output {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|p| {
            vec![
                p.participant_id.clone(),
                p.node.clone(),
                p.roles.join(","),
                p.capacity_kw.clone(),
                if p.active { "active" } else { "suspended" }.to_string(),
                p.public_key_hex.clone(),
            ]
        })
        .collect();
    let json = Value::Array(
        all.iter()
            .map(|p| {
                json!({"id": p.participant_id, "node": p.node, "roles": p.roles,
                       "capacity_kw": p.capacity_kw, "active": p.active,
                       "public_key": p.public_key_hex})
            })
            .collect(),
    );
    Output {
        human: format_table(
            &["ID", "NODE", "ROLES", "CAPACITY_KW", "STATUS", "PUBLIC_KEY"],
            &rows,
        ),
        json,
    }
}

fn status_output(s: &pb::StatusResponse) -> Output {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = vec![
        vec!["market".into(), s.market.clone()],
        vec!["network loaded".into(), yes(s.network_loaded)],
        vec!["network version".into(), s.network_version.to_string()],
        vec!["paused".into(), yes(s.paused)],
        vec!["participants".into(), s.participants.to_string()],
        vec!["open orders".into(), s.open_orders.to_string()],
        vec!["market time".into(), format!("{} ({})", s.now, utc(s.now))],
        vec![
            "next open interval".into(),
            format!("{} ({})", s.next_interval_start, utc(s.next_interval_start)),
        ],
        vec![
            "last cleared interval".into(),
            if s.last_cleared_interval == 0 {
                "none".into()
            } else {
                format!(
                    "{} ({})",
                    s.last_cleared_interval,
                    utc(s.last_cleared_interval)
                )
            },
        ],
        vec!["ledger head".into(), s.ledger_head_seq.to_string()],
    ];
    Output {
        human: format_rows(&rows),
        json: json!({
            "market": s.market, "network_loaded": s.network_loaded,
            "network_version": s.network_version, "paused": s.paused,
            "participants": s.participants, "open_orders": s.open_orders,
            "now": s.now, "next_interval_start": s.next_interval_start,
            "last_cleared_interval": s.last_cleared_interval,
            "ledger_head_seq": s.ledger_head_seq, "last_admin_nonce": s.last_admin_nonce,
        }),
    }
}

fn intervals_output(all: &[pb::IntervalSummary]) -> Output {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|i| {
            let mut row = vec![
                utc(i.interval_start),
                i.orders.to_string(),
                i.bought.clone(),
                i.sold.clone(),
                i.price_min.clone(),
                i.price_max.clone(),
                if i.congested_lines.is_empty() {
                    "-".into()
                } else {
                    i.congested_lines.join(",")
                },
                i.flex_procured.clone(),
                i.clearing_ms
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!("{}..{}", i.ledger_first_seq, i.ledger_last_seq),
            ];
            match &i.delivery {
                Some(d) => row.extend([
                    format!("{}/{}", d.readings_received, d.readings_missing),
                    d.imbalance_kwh.clone(),
                    d.imbalance_cost.clone(),
                    format!("{}/{}", d.flex_delivered_kwh, d.flex_procured_kwh),
                    d.flex_penalties.clone(),
                ]),
                None => row.extend(std::iter::repeat_n("-".to_string(), 5)),
            }
            row
        })
        .collect();
    let json = Value::Array(
        all.iter()
            .map(|i| {
                json!({"interval_start": i.interval_start, "clearing_ms": i.clearing_ms,
                       "orders": i.orders, "bought_kw": i.bought, "sold_kw": i.sold,
                       "price_min": i.price_min, "price_max": i.price_max,
                       "congested_lines": i.congested_lines,
                       "flex_procured_kw": i.flex_procured,
                       "ledger_first_seq": i.ledger_first_seq,
                       "ledger_last_seq": i.ledger_last_seq,
                       "delivery": i.delivery.as_ref().map(|d| json!({
                           "readings_received": d.readings_received,
                           "readings_missing": d.readings_missing,
                           "imbalance_kwh": d.imbalance_kwh,
                           "imbalance_cost": d.imbalance_cost,
                           "flex_procured_kwh": d.flex_procured_kwh,
                           "flex_delivered_kwh": d.flex_delivered_kwh,
                           "flex_penalties": d.flex_penalties,
                           "ledger_seq": d.ledger_seq}))})
            })
            .collect(),
    );
    Output {
        human: format_table(
            &[
                "INTERVAL",
                "ORDERS",
                "BOUGHT_KW",
                "SOLD_KW",
                "PRICE_MIN",
                "PRICE_MAX",
                "CONGESTED",
                "FLEX_KW",
                "CLEAR_MS",
                "LEDGER",
                "READ/MISS",
                "IMB_KWH",
                "IMB_COST",
                "FLEX_DLV",
                "PENALTY",
            ],
            &rows,
        ),
        json,
    }
}

/// The network in force: its recorded entry (the seq is the network version) read through
/// the audit service, summarised.
async fn network_show(
    admin: &AdminClient,
    channel: &baton_client::Channel,
    key: &Path,
) -> Result<Output> {
    let status = admin.status().await.map_err(|e| refused(e, key))?;
    let v = status.network_version;
    if v == 0 {
        return Ok(Output::line(
            "no network loaded",
            json!({"network_loaded": false}),
        ));
    }
    let entry = AuditClient::new(channel.clone())
        .entries(v, v)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("ledger entry {v} (the network) is missing"))?;
    let spec: baton_engine::MarketSpec = serde_json::from_slice(&entry.body)
        .with_context(|| format!("ledger entry {v} is not a network"))?;
    let info = PublicClient::new(channel.clone()).market_info().await?;
    let mut human = format_rows(&[
        vec!["market".into(), spec.name.clone()],
        vec!["network version".into(), v.to_string()],
        vec![
            "interval".into(),
            format!(
                "{} min, gate closes {} s before, {} intervals ahead",
                spec.interval_minutes, info.gate_lead_s, info.intervals_ahead
            ),
        ],
        vec![
            "prices".into(),
            format!("floor {}, cap {}", spec.price_floor, spec.price_cap),
        ],
        vec!["nodes".into(), spec.nodes.len().to_string()],
        vec!["lines".into(), spec.lines.len().to_string()],
        vec!["devices".into(), spec.devices.len().to_string()],
    ]);
    if !spec.grid_connections.is_empty() {
        human.push('\n');
        human.push_str(&format_table(
            &[
                "GRID_CONNECTION",
                "NODE",
                "IMPORT_PRICE",
                "IMPORT_LIMIT",
                "EXPORT_PRICE",
                "EXPORT_LIMIT",
            ],
            &spec
                .grid_connections
                .iter()
                .map(|g| {
                    vec![
                        g.id.clone(),
                        g.node.clone(),
                        g.import_price.to_string(),
                        g.import_limit.to_string(),
                        g.export_price.to_string(),
                        g.export_limit.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    if !spec.flex_requirements.is_empty() {
        human.push('\n');
        human.push_str(&format_table(
            &["FLEX_REQUIREMENT", "DIRECTION", "NODES", "BLOCKS"],
            &spec
                .flex_requirements
                .iter()
                .map(|f| {
                    vec![
                        f.id.clone(),
                        match f.direction {
                            baton_engine::model::Direction::Up => "up",
                            baton_engine::model::Direction::Down => "down",
                        }
                        .to_string(),
                        f.nodes.join(","),
                        f.blocks
                            .iter()
                            .map(|b| {
                                format!(
                                    "{}@{}",
                                    b.quantity,
                                    b.price.map(|p| p.to_string()).unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    let mut json = serde_json::to_value(&spec)?;
    if let Some(m) = json.as_object_mut() {
        m.insert("network_version".into(), v.into());
    }
    Ok(Output { human, json })
}

/// Aligned columns, two spaces apart, a header row first.
fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: Vec<&str>| {
        let n = cells.len();
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            line.push_str(c);
            if i + 1 < n {
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push(headers.to_vec());
    for r in rows {
        push(r.iter().map(String::as_str).collect());
    }
    out
}

/// `key  value` lines with the keys padded to one width.
fn format_rows(rows: &[Vec<String>]) -> String {
    let w = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:w$}  {}\n", r[0], r[1]))
        .collect()
}

/// Unix seconds as an ISO 8601 UTC time (`2027-01-15T08:05:00Z`).
fn utc(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn tables_align_every_column_to_its_widest_cell() {
        let t = format_table(
            &["ID", "NODE"],
            &[
                vec!["alice".into(), "A".into()],
                vec!["b".into(), "node-7".into()],
                vec!["carol".into(), String::new()],
            ],
        );
        assert_eq!(t, "ID     NODE\nalice  A\nb      node-7\ncarol\n");
    }

    #[test]
    fn import_rows_are_checked_one_by_one() {
        let key = baton_client::ParticipantKey::from_seed(&[1; 32]).public_key_hex();
        let text = format!(
            "# a comment\nid,node,public_key,roles,capacity_kw\n\
             alice,A,{key},prosumer;regulator,50\n\
             bob,B,nothex,prosumer,\n\
             carol,B,{key},prosumer\n\
             dave,B,{key},prosumer;admin,\n"
        );
        let rows = parse_import(&text).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows[3]
            .participant
            .as_ref()
            .unwrap_err()
            .contains("roles: \"admin\" is not one of"));
        let a = rows[0].participant.as_ref().unwrap();
        assert_eq!(
            a.roles,
            [
                pb::ParticipantRole::Prosumer,
                pb::ParticipantRole::Regulator
            ]
        );
        assert_eq!(a.capacity_kw, Some(Decimal::new(50, 0)));
        assert_eq!(rows[0].line, 3);
        assert!(rows[1].participant.as_ref().unwrap_err().contains("hex"));
        assert!(rows[2]
            .participant
            .as_ref()
            .unwrap_err()
            .contains("4 fields"));
        assert!(parse_import("id,node\n").is_err());
        assert_eq!(
            parse_block("10@0.2").unwrap(),
            (Decimal::new(10, 0), Decimal::new(2, 1))
        );
        assert!(parse_block("10").is_err());
    }
}
