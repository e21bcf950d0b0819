//! `xsave-rig bench`: raw ioctl throughput next to the rig's, and `bench detect`.

use crate::args::*;
use crate::common::*;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;
use xsave_oracle::{Contract, ModelConfig};
use xsave_runner::lab;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    sub: Option<BenchSub>,
    #[command(flatten)]
    backend: BenchBackend,
    /// Seconds per side (in 10 alternating slices: raw, rig, rig XSAVE-only, raw, …); with
    /// --findings-load, seconds per campaign.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Instead: a campaign's exec rate while it keeps finding new signatures (model:V2b judged
    /// by V3) over the same campaign on a clean backend (model:V3) run at the same time, in 5 rounds:
    /// `findings_load_ratio` (no /dev/kvm needed).
    #[arg(long)]
    findings_load: bool,
    #[command(flatten)]
    oracle: OracleArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum BenchSub {
    /// Each historical contract (model backend) against the V3 oracle: execs and seconds to
    /// the first divergence of its class, median over seeds.
    Detect {
        /// Seeds per contract.
        #[arg(long, default_value_t = 7)]
        seeds: u64,
        /// Execution budget per seed (a seed that finds nothing within it counts as not found).
        #[arg(long, default_value_t = 100_000)]
        budget: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Clone)]
pub struct BenchBackend {
    /// `lab:<kernel>`: measure inside that kernel's lab guest too, next to this host.
    #[arg(long)]
    backend: Option<String>,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    match args {
        Args { sub: Some(BenchSub::Detect { seeds, budget, json }), .. } => {
            // The libFuzzer row needs the detect_model target built (cd fuzz && cargo fuzz build -s none).
            let lf = std::env::var_os("XSAVE_RIG_DETECT_BIN").map(PathBuf::from).or_else(|| {
                let exe = std::env::current_exe().ok()?;
                let repo = exe.parent()?.parent()?.parent()?;
                Some(repo.join("fuzz/target/x86_64-unknown-linux-gnu/release/detect_model"))
            });
            let lf = lf.filter(|p| p.is_file());
            let rows = xsave_runner::bench::detect(seeds, budget, lf.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<10} {:<5} {:<12} {:>6} {:>12} {:>12}", "engine", "model", "class", "found", "median execs", "median s");
                for r in &rows {
                    println!(
                        "{:<10} {:<5} {:<12} {:>3}/{:<2} {:>12} {:>12}",
                        r.engine,
                        r.contract,
                        r.class,
                        r.found,
                        r.seeds,
                        r.median_execs.map_or("-".into(), |e| e.to_string()),
                        r.median_seconds.map_or("-".into(), |s| format!("{s:.4}"))
                    );
                }
                if lf.is_none() {
                    println!("libFuzzer: not measured (build it first: cd fuzz && cargo fuzz build -s none)");
                }
            }
            Ok(0)
        }
        Args { backend: BenchBackend { backend: Some(k) }, seconds, .. } => {
            let k = k.strip_prefix("lab:").ok_or_else(|| anyhow::anyhow!("bench --backend takes lab:<kernel>"))?.to_string();
            let kern = lab::kernel(&k)?;
            let job =
                lab::Job { args: vec!["bench".into(), "--json".into(), "--seconds".into(), seconds.to_string()], ..lab::Job::default() };
            let out = lab::run(&kern, &job, &lab::Scratch::fresh(&kern), Duration::from_secs(1800))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let lab_r: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("lab bench output: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
            let host_r = match xsave_runner::kvm_unavailable() {
                None => {
                    let (host, _) = host_facts(
                        &OracleArgs { contract: Contract::V3, quirks: "auto".into(), host_facts: None, force_host_facts: false },
                        true,
                    )?;
                    let model = ModelConfig { quirks: host.quirks.clone(), ..ModelConfig::default() };
                    serde_json::to_value(xsave_runner::bench::bench(&host, &model, seconds)?)?
                }
                Some(why) => serde_json::json!({ "unavailable": why }),
            };
            // The same case mix through the lab backend: generated and judged here, run there.
            let mut be = lab::LabBackend::boot(&k, lab::LabOptions::default())?;
            let model = ModelConfig { quirks: xsave_runner::Backend::host(&be).quirks.clone(), ..ModelConfig::default() };
            let rate = xsave_runner::bench::backend_cases_per_sec(&mut be, &model, seconds)?;
            let backend_r = serde_json::json!({ "name": xsave_runner::Backend::name(&be), "cases_per_sec": rate });
            drop(be);
            let both = serde_json::json!({ "lab": { "kernel": kern.id, "bench": lab_r, "backend": backend_r }, "host": host_r });
            println!("{}", serde_json::to_string_pretty(&both)?);
            Ok(0)
        }
        Args { findings_load: true, seconds, oracle, json, .. } => {
            let (host, _) = host_facts(&oracle, false)?;
            let scratch = std::env::temp_dir().join(format!("xsave-rig-findings-load-{}", std::process::id()));
            let r = xsave_runner::bench::findings_load(&host, seconds, &scratch);
            let _ = std::fs::remove_dir_all(&scratch);
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let rates = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
                println!(
                    "findings_load_ratio {:.3}  (median of {} rounds: {})",
                    r.findings_load_ratio,
                    r.rounds,
                    r.round_ratios.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
                );
                println!(
                    "loaded execs/s      {}  ({} judged by V3, {:.0} s each)",
                    rates(&r.loaded_execs_per_sec),
                    r.loaded_backend,
                    r.seconds
                );
                println!("clean execs/s       {}  ({} judged by V3)", rates(&r.clean_execs_per_sec), r.clean_backend);
                println!(
                    "signatures          {:.1} per campaign, one per {:.0} cases; minimizer {:.2} s per campaign, {:.1} left raw at the stop",
                    r.signatures, r.execs_per_signature, r.minimize_seconds, r.minimize_pending
                );
            }
            Ok(0)
        }
        Args { seconds, oracle, json, .. } => {
            let (host, _) = host_facts(&oracle, true)?;
            let model = model_config(&oracle, &host)?;
            let r = xsave_runner::bench::bench(&host, &model, seconds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("raw ioctls/s        {:.0}  (KVM_SET_XSAVE+KVM_GET_XSAVE loop, one vCPU, no oracle)", r.raw_ioctls_per_sec);
                println!("rig ioctls/s        {:.0}  (all ioctls incl. vCPU resets)", r.rig_ioctls_per_sec);
                let spread = |s: &xsave_runner::bench::Spread| format!("min {:.3}  IQR {:.3}–{:.3}  max {:.3}", s.min, s.q1, s.q3, s.max);
                println!("ratio               {:.3}  (median of {} A/B slices; {})", r.ratio, r.slices, spread(&r.ratio_spread));
                println!("rig case ioctls/s   {:.0}  (case steps only)", r.rig_case_ioctls_per_sec);
                println!("cases/s             {:.0}", r.cases_per_sec);
                println!(
                    "time share          generate {:.1}%  execute {:.1}%  judge {:.1}%  (inside ioctls {:.1}%)",
                    r.time_share.generate * 100.0,
                    r.time_share.execute * 100.0,
                    r.time_share.judge * 100.0,
                    r.in_kernel_share * 100.0
                );
                println!("raw loop            {:.2} us per ioctl", r.raw_us_per_ioctl);
                println!(
                    "xsave-only rig      {:.0} ioctls/s, ratio {:.3} (cases restricted to the raw loop's ioctls; {})",
                    r.xsave_only_ioctls_per_sec,
                    r.xsave_only_ratio,
                    spread(&r.xsave_only_ratio_spread)
                );
                for (k, (n, us)) in &r.ioctls {
                    println!("  {k:<20} {n:>9} calls  {us:>7.2} us each");
                }
            }
            Ok(0)
        }
    }
}
