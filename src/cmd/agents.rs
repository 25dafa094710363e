//! `baton agents`: simulated prosumers trading on a live market.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baton_agents::{self as agents, Population, PopulationFile, RunConfig};

/// `baton agents` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct AgentsArgs {
    /// The population file (e.g. scenarios/ieee33-agents.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// The market server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: Option<String>,
    /// Overrides the population file's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the population file's number of prosumers.
    #[arg(long)]
    prosumers: Option<usize>,
    /// Cleared intervals to trade before stopping.
    #[arg(long, default_value_t = 12)]
    intervals: u32,
    /// Write the participants CSV (id,node,public_key,roles,capacity_kw) here; without
    /// --server, do only that.
    #[arg(long)]
    write_participants: Option<PathBuf>,
    /// Register the population through the admin API with this operator key before trading
    /// (already registered participants are left alone).
    #[arg(long)]
    operator_key: Option<PathBuf>,
    /// SubmitOrders streams per interval.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Trade from this interval (unix seconds, market time) instead of the next open one.
    #[arg(long)]
    first_interval: Option<i64>,
    /// Do not send the batteries' flexibility offers even if the population enables them.
    #[arg(long)]
    no_flex: bool,
}

pub(crate) fn run(a: AgentsArgs) -> Result<()> {
    let (mut file, network) = PopulationFile::read(&a.scenario)
        .with_context(|| format!("reading {}", a.scenario.display()))?;
    if let Some(s) = a.seed {
        file.seed = s;
    }
    if let Some(n) = a.prosumers {
        file.prosumers = n;
    }
    let mut population = Population::generate(&file, &network)
        .with_context(|| format!("generating the population of {}", a.scenario.display()))?;
    eprintln!(
        "baton agents: {} prosumers (seed {}) on {}: {} with PV, {} with a battery, {} with an EV",
        population.agents.len(),
        population.seed,
        population.network.name,
        population
            .agents
            .iter()
            .filter(|x| x.pv().is_some())
            .count(),
        population
            .agents
            .iter()
            .filter(|x| x.battery().is_some())
            .count(),
        population
            .agents
            .iter()
            .filter(|x| x.ev().is_some())
            .count(),
    );
    if let Some(p) = &a.write_participants {
        std::fs::write(p, population.participants_csv())
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("baton agents: wrote {}", p.display());
    }
    let Some(server) = a.server else {
        if a.write_participants.is_none() {
            bail!("give --server to trade, or --write-participants to write the CSV");
        }
        return Ok(());
    };
    let config = RunConfig {
        intervals: a.intervals,
        streams: a.streams,
        first_interval: a.first_interval,
        flex_offers: !a.no_flex,
        meter_readings: true,
    };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let channel = baton_client::connect(&server).await?;
        if let Some(k) = &a.operator_key {
            let key = baton_client::AdminKey::load(k)
                .with_context(|| format!("reading {}", k.display()))?;
            let added = agents::register(channel.clone(), key, &population).await?;
            eprintln!("baton agents: registered {added} participants");
        }
        let trading = agents::run(channel, &mut population, &config, |r| println!("{r}"));
        tokio::select! {
            r = trading => {
                let s = r?;
                eprintln!("baton agents: traded {} intervals", s.intervals.len());
            }
            _ = tokio::signal::ctrl_c() => eprintln!("baton agents: interrupted"),
        }
        Ok(())
    })
}
