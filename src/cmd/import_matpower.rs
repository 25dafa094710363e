//! `baton import-matpower`: a MATPOWER case as a study market (`nodal-auction-market/v1`).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub(crate) struct ImportMatpowerArgs {
    /// The `.m` case file.
    case: PathBuf,
    /// Where to write the market (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run(a: ImportMatpowerArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.case)
        .with_context(|| format!("reading {}", a.case.display()))?;
    let name = a
        .case
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "case".into());
    let spec = baton_engine::matpower::import(&text, &name)
        .with_context(|| format!("importing {}", a.case.display()))?;
    let json = baton_engine::study::write_market(&spec)?;
    super::write_out(a.out.as_deref(), &json)
}
