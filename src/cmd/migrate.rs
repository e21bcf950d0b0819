//! `xsave-rig migrate`: migration pre-flight between two host fingerprints.

use crate::common::*;
use anyhow::{Context, Result};
use std::path::PathBuf;
use xsave_oracle::Case;
use xsave_runner::campaign::{self};
use xsave_runner::migrate::Preflight;

#[derive(clap::Args)]
pub struct Args {
    /// Source host fingerprint (`xsave-rig probe --json`).
    #[arg(long)]
    from: PathBuf,
    /// Destination host fingerprint.
    #[arg(long)]
    to: PathBuf,
    /// Case files to use (default: generated cases).
    #[arg(long, conflicts_with = "iterations")]
    cases: Option<PathBuf>,
    /// Number of generated cases.
    #[arg(long)]
    iterations: Option<u64>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { from, to, cases, iterations, seed, json } = args;
    let (src, dst) = (load_target(&from)?, load_target(&to)?);
    let list: Vec<(String, Case)> = match cases {
        Some(dir) => {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?.flatten().map(|e| e.path()).collect();
            files.sort();
            files.iter().map(|f| load_case(f).map(|c| (f.display().to_string(), c))).collect::<Result<_>>()?
        }
        None => (0..iterations.unwrap_or(1000)).map(|i| (format!("seed {seed} case {i}"), campaign::case_for(seed, i))).collect(),
    };
    let pre = Preflight::run(&list, &src, &dst);
    if json {
        let side = |f: &PathBuf, t: &xsave_runner::migrate::Target| serde_json::json!({"file": f, "contract": t.model.contract, "quirks": t.model.quirks});
        println!("{}", serde_json::to_string_pretty(&pre.summary(side(&from, &src), side(&to, &dst)))?);
    } else {
        println!(
            "from {} ({} [{}]) to {} ({} [{}])",
            from.display(),
            src.model.contract,
            quirk_names(&src.model.quirks),
            to.display(),
            dst.model.contract,
            quirk_names(&dst.model.quirks)
        );
        print!("{}", pre.text());
    }
    Ok(if pre.refused_or_lossy() { 1 } else { 0 })
}
