//! `xsave-rig corpus …`: merge, minimize, pack, unpack and coverage of case directories.

use crate::args::*;
use crate::common::*;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use xsave_runner::store::escape;

#[derive(Subcommand)]
pub enum CorpusCmd {
    /// Merge corpus directories (also libFuzzer/honggfuzz output folders) into OUT, one file
    /// per distinct case.
    Merge {
        /// Input directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Read files that are not case files (e.g. honggfuzz's raw inputs) the way the fuzz
        /// harnesses do, instead of skipping them.
        #[arg(long)]
        structural: bool,
    },
    /// Keep the smallest set of cases with the same contract coverage (in place, or into -o).
    Minimize {
        /// Corpus directory.
        dir: PathBuf,
        /// Write the kept cases here instead of deleting the others from DIR.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        oracle: OracleArgs,
    },
    /// Pack a corpus into one archive with a manifest (format, rig version, host fingerprint,
    /// contract, counts).
    Pack {
        /// Corpus directory.
        dir: PathBuf,
        /// Archive to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        oracle: OracleArgs,
    },
    /// Unpack an archive, validating it; bad members are named and skipped.
    Unpack {
        /// The archive.
        file: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Contract coverage of a directory of cases (also libFuzzer/honggfuzz output folders):
    /// every rule with the cases that reach it, and the rules no case reaches.
    Coverage {
        /// Directory of case files.
        dir: PathBuf,
        #[command(flatten)]
        oracle: OracleArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `corpus` subcommand; returns the exit status.
pub fn run(cmd: CorpusCmd) -> Result<i32> {
    match cmd {
        CorpusCmd::Merge { dirs, output, structural } => {
            let (added, skipped) = xsave_runner::corpus::merge(&dirs, &output, structural)?;
            for sk in &skipped {
                eprintln!("xsave-rig: skipped {}", escape(sk));
            }
            println!("{added} new cases merged into {}", output.display());
            Ok(0)
        }
        CorpusCmd::Minimize { dir, output, oracle } => {
            let (host, _) = host_facts(&oracle, false)?;
            let model = model_config(&oracle, &host)?;
            let (cases, skipped) = xsave_runner::corpus::read_dir(&dir)?;
            for sk in &skipped {
                eprintln!("xsave-rig: skipped {}", escape(sk));
            }
            let cov = xsave_runner::corpus::coverage_of(&cases, &host, &model);
            let keep = xsave_runner::corpus::minimize(&cases, &cov);
            match &output {
                Some(out) => {
                    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
                    for (n, b, _) in cases.iter().filter(|(n, _, _)| keep.contains(n)) {
                        xsave_runner::store::write_atomic(&out.join(n), b)?;
                    }
                }
                None => {
                    for (n, _, _) in cases.iter().filter(|(n, _, _)| !keep.contains(n)) {
                        std::fs::remove_file(dir.join(n)).with_context(|| format!("cannot remove {n}"))?;
                    }
                }
            }
            let points: std::collections::BTreeSet<&String> = cov.iter().flatten().collect();
            println!("kept {} of {} cases, {} coverage points", keep.len(), cases.len(), points.len());
            Ok(0)
        }
        CorpusCmd::Pack { dir, output, oracle } => {
            let fp = match (&oracle.host_facts, xsave_runner::kvm_unavailable()) {
                (Some(_), _) | (None, None) => Some(host_facts(&oracle, false)?.1),
                (None, Some(_)) => None,
            };
            let (n, skipped) = xsave_runner::corpus::pack(&dir, &output, fp, oracle.contract.name())?;
            for sk in &skipped {
                eprintln!("xsave-rig: skipped {}", escape(sk));
            }
            println!("packed {n} cases into {}", output.display());
            Ok(0)
        }
        CorpusCmd::Unpack { file, output } => {
            let (m, n, skipped) = xsave_runner::corpus::unpack(&file, &output)?;
            for sk in &skipped {
                eprintln!("xsave-rig: skipped {}", escape(sk));
            }
            println!(
                "unpacked {n} of {} cases into {} (rig {}, contract {})",
                m.cases,
                output.display(),
                escape(&m.rig_version),
                escape(&m.contract)
            );
            Ok(if skipped.is_empty() { 0 } else { 1 })
        }
        CorpusCmd::Coverage { dir, oracle, json } => {
            let (host, _) = host_facts(&oracle, false)?;
            let model = model_config(&oracle, &host)?;
            let (cases, skipped, raw) = xsave_runner::corpus::read_dir_structural(&dir)?;
            let cov = xsave_runner::corpus::coverage(&cases, &host, &model);
            let (reach, rules, unreached) = (&cov.reach, &cov.rules, cov.unreached());
            if json {
                let v = serde_json::json!({
                    "cases": cases.len(), "skipped": skipped, "raw_inputs": raw,
                    "rules_covered": rules.len() - unreached.len(), "rules_total": rules.len(),
                    "points": reach.iter().map(|(p, cs)| serde_json::json!({"point": p, "cases": cs.len(), "examples": cs.iter().take(3).collect::<Vec<_>>()})).collect::<Vec<_>>(),
                    "unreached_rules": unreached,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{} cases, contract rules {}/{} reached (oracle {} quirks [{}])",
                    cases.len(),
                    rules.len() - unreached.len(),
                    rules.len(),
                    model.contract,
                    quirk_names(&model.quirks)
                );
                for (p, cs) in reach {
                    println!("  {:<34} {:>6} cases  e.g. {}", p, cs.len(), cs.iter().take(2).cloned().collect::<Vec<_>>().join(", "));
                }
                for u in &unreached {
                    println!("  {u:<34}      0 cases  UNREACHED");
                }
                if !raw.is_empty() {
                    println!("{} of the cases are raw fuzzer inputs, read structurally: {}", raw.len(), raw.join(", "));
                }
                for sk in &skipped {
                    eprintln!("xsave-rig: skipped {}", escape(sk));
                }
            }
            Ok(0)
        }
    }
}
