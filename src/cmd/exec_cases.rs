//! `xsave-rig exec-cases` (internal, run inside lab guests by `lab matrix`).

use crate::common::*;
use anyhow::{Context, Result};
use std::path::PathBuf;
use xsave_runner::probe::{self};
use xsave_runner::store::caps;

#[derive(clap::Args)]
pub struct Args {
    /// Directory of case files.
    dir: PathBuf,
    /// Output directory (probe.json, records.jsonl).
    #[arg(long)]
    workdir: PathBuf,
    /// Only the cases named in this file (one per line).
    #[arg(long)]
    only: Option<PathBuf>,
    /// Keep full traces.
    #[arg(long)]
    full: bool,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { dir, workdir, only, full } = args;
    let only: Option<Vec<String>> = match only {
        Some(p) => Some(read_text(&p, caps::JSON)?.lines().map(str::to_string).collect()),
        None => None,
    };
    let cases = read_case_dir(&dir)?.into_iter().filter(|(n, _)| only.as_ref().is_none_or(|o| o.contains(n))).collect::<Vec<_>>();
    let report = probe::probe()?;
    let recs = xsave_runner::matrix::exec_cases(&report, &cases, full)?;
    std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
    write_file(&workdir.join("probe.json"), &serde_json::to_vec_pretty(&report)?)?;
    let mut lines = String::new();
    for r in &recs {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    write_file(&workdir.join("records.jsonl"), lines.as_bytes())?;
    Ok(0)
}
