//! `xsave-rig minimize`: shrink a diverging case.

use crate::args::*;
use crate::common::*;
use anyhow::{bail, Result};
use std::path::PathBuf;
use xsave_runner::minimize;

#[derive(clap::Args)]
pub struct Args {
    /// The case (binary or JSON).
    case: PathBuf,
    /// Output file (default: CASE.min).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Maximum executions.
    #[arg(long, default_value_t = 20_000)]
    budget: u64,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    oracle: OracleArgs,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { case, output, budget, backend, oracle } = args;
    let (c, raw) = load_case_or_raw(&case)?;
    let (mut be, host, _) = open_backend(&backend, &oracle)?;
    let model = model_config(&oracle, &host)?;
    let Some(sig) = minimize::signature_of(be.as_mut(), &host, &model, &c)? else {
        bail!("{}: the case does not diverge on {} (oracle {}), nothing to minimize", case.display(), be.name(), model.contract);
    };
    let (min, stats) = minimize::minimize(be.as_mut(), &host, &model, &c, &sig, budget)?;
    let out = output.unwrap_or_else(|| case.with_extension("min"));
    write_file(&out, &min.encode())?;
    if raw {
        println!("input      {} {RAW_LABEL}", case.display());
    }
    println!("signature  {sig}");
    println!("steps      {} -> {}", stats.steps_before, stats.steps_after);
    println!("bytes      {} -> {}", stats.bytes_before, stats.bytes_after);
    println!("execs      {}{}", stats.execs, if stats.budget_exhausted { " (budget exhausted)" } else { "" });
    println!("written    {}", out.display());
    Ok(0)
}
