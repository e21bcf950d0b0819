//! `xsave-rig migrate`: migration pre-flight between two host fingerprints.

use crate::common::*;
use anyhow::{Context, Result};
use std::path::PathBuf;
use xsave_oracle::Case;
use xsave_runner::campaign::{self};

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
    let results: Vec<xsave_runner::migrate::Migration> =
        list.iter().filter_map(|(l, c)| xsave_runner::migrate::migrate_case(l, c, &src, &dst)).collect();
    let count = |v: &str| results.iter().filter(|m| m.check.verdict == v).count();
    let unmasked = results.iter().filter(|m| !m.unmasked.is_empty()).count();
    let summary = serde_json::json!({
        "from": {"file": from, "contract": src.model.contract, "quirks": src.model.quirks},
        "to": {"file": to, "contract": dst.model.contract, "quirks": dst.model.quirks},
        "cases": list.len(), "saved_states": results.len(),
        "loads": count("loads"), "loads_with_loss": count("loads-with-loss"), "refused": count("refused"), "config_refused": count("config-refused"),
        "unmasked_saves": unmasked,
        "examples": results.iter().filter(|m| m.check.verdict != "loads" || !m.unmasked.is_empty()).take(10).collect::<Vec<_>>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "from {} ({} [{}]) to {} ({} [{}])",
            from.display(),
            src.model.contract,
            quirk_names(&src.model),
            to.display(),
            dst.model.contract,
            quirk_names(&dst.model)
        );
        println!("cases {}  saved states {}", list.len(), results.len());
        println!(
            "loads {}  loads with loss {}  refused {}  guest config refused {}",
            count("loads"),
            count("loads-with-loss"),
            count("refused"),
            count("config-refused")
        );
        println!("unmasked saves (source saved features its guest does not have): {unmasked}");
        for m in results.iter().filter(|m| m.check.verdict != "loads" || !m.unmasked.is_empty()).take(10) {
            println!(
                "  {}: saved {} -> {} ({}){}",
                m.case,
                m.saved_xstate_bv,
                m.check.verdict,
                m.check.reason,
                if m.unmasked.is_empty() { String::new() } else { format!(" [unmasked save: {}]", m.unmasked.join("|")) }
            );
        }
    }
    Ok(if count("refused") + count("loads-with-loss") > 0 { 1 } else { 0 })
}
