//! `xsave-rig lab migrate --from K1 --to K2`: migration executed between two lab kernels, each
//! booted once as a lab backend; the result reads like `migrate`'s pre-flight, plus what the
//! pre-flight cannot see: divergences on either kernel and fates it did not predict.

use crate::common::*;
use anyhow::{Context, Result};
use xsave_oracle::{Contract, ModelConfig};
use xsave_runner::lab::{LabBackend, LabOptions};
use xsave_runner::migrate::{Executed, Target};
use xsave_runner::Backend;

#[derive(clap::Args)]
pub struct Args {
    /// Source kernel (saves): debian:5.10, debian:6.12, a cached id or an image path.
    #[arg(long)]
    from: String,
    /// Destination kernel (loads).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    source: crate::args::CaseSource,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A booted kernel as the oracle sees it: its probe's host facts, contract and quirks.
fn target(spec: &str, be: &LabBackend) -> Result<Target> {
    let r = be.probe_report();
    let contract = Contract::parse(&r.contract)
        .with_context(|| format!("{spec}: the guest's probe names contract {:?}, which the oracle cannot predict", r.contract))?;
    Ok(Target {
        name: be.kernel().id.clone(),
        host: be.host().clone(),
        model: ModelConfig { contract, quirks: r.quirks.clone(), ..ModelConfig::default() },
    })
}

/// Run the command; returns the exit status.
pub fn run(a: Args) -> Result<i32> {
    // The same input bytes on both kernels (CPUID bases rendered against one reference).
    let list = a.source.list()?;
    // One guest boots after the other: two TCG boots at once on 2 cores made the race the lab
    // init had with virtio_console's port naming (fixed: it now waits for the port) likely,
    // and a boot costs seconds against the minutes the cases take.
    let boot = |spec: &str| LabBackend::boot(spec, LabOptions::default()).with_context(|| format!("lab guest {spec}"));
    let mut src = boot(&a.from)?;
    let mut dst = boot(&a.to)?;
    let (st, dt) = (target(&a.from, &src)?, target(&a.to, &dst)?);
    let ex = Executed::run(&list, (&mut src, &st), (&mut dst, &dt))?;
    let side =
        |spec: &str, t: &Target| serde_json::json!({"kernel": spec, "id": t.name, "contract": t.model.contract, "quirks": t.model.quirks});
    let first = |v: &[(String, String)]| v.iter().take(10).map(|(c, s)| serde_json::json!({"case": c, "signature": s})).collect::<Vec<_>>();
    if a.json {
        let mut s = ex.pre.summary(side(&a.from, &st), side(&a.to, &dt));
        s["source_divergences"] = ex.source_divergences.len().into();
        s["load_divergences"] = ex.load_divergences.len().into();
        s["differs_from_simulation"] = ex.differs_from_simulation.len().into();
        s["divergence_examples"] = serde_json::json!({"source": first(&ex.source_divergences), "load": first(&ex.load_divergences)});
        s["simulation_examples"] = ex
            .differs_from_simulation
            .iter()
            .take(10)
            .map(|(c, v)| serde_json::json!({"case": c, "simulated": v}))
            .collect::<Vec<_>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "from {} ({} {} [{}]) to {} ({} {} [{}])",
            a.from,
            st.name,
            st.model.contract,
            quirk_names(&st.model.quirks),
            a.to,
            dt.name,
            dt.model.contract,
            quirk_names(&dt.model.quirks)
        );
        print!("{}", ex.pre.text());
        println!(
            "divergences from the contracts: source {}  load {}; fates the simulated pre-flight did not predict: {}",
            ex.source_divergences.len(),
            ex.load_divergences.len(),
            ex.differs_from_simulation.len()
        );
        for (side, v) in [("source", &ex.source_divergences), ("load", &ex.load_divergences)] {
            for (c, s) in v.iter().take(10) {
                println!("  {side}: {c}: {s}");
            }
        }
        for (c, v) in ex.differs_from_simulation.iter().take(10) {
            println!("  {c}: simulated {v}");
        }
    }
    Ok(if ex.notable() { 1 } else { 0 })
}
