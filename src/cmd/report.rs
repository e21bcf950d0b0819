//! `xsave-rig report`: the reports of a campaign workdir, or of the fleet in a hub.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xsave_runner::store::escape;

#[derive(clap::Args)]
pub struct Args {
    /// The campaign's workdir (or --hub for the fleet).
    workdir: Option<PathBuf>,
    /// Report the fleet in this hub instead of a workdir (PostgreSQL URL; without WORKDIR the
    /// default is $XSAVE_RIG_HUB). Read-only: the hub's reader role suffices. Messages show
    /// the URL with its password replaced by ***.
    #[arg(long, value_name = "URL")]
    hub: Option<String>,
    /// Output directory (default: WORKDIR/report, or fleet-report with --hub).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Heartbeats plotted per campaign (the latest).
const MAX_BEATS: i64 = 2000;
/// A host is alive when it synced within this many seconds (as `hub status`'s default).
const ALIVE_SECS: f64 = 120.0;

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { workdir, hub, output } = args;
    let hub = match (&workdir, hub) {
        (Some(_), Some(_)) => bail!("report takes a WORKDIR or --hub URL, not both"),
        (Some(_), None) => None,
        (None, Some(u)) => Some(u),
        (None, None) => match std::env::var("XSAVE_RIG_HUB").ok().filter(|u| !u.is_empty()) {
            Some(u) => Some(u),
            None => bail!("report needs a WORKDIR, or --hub URL (or $XSAVE_RIG_HUB) for the fleet"),
        },
    };
    if let Some(url) = hub {
        return fleet(&url, &output.unwrap_or_else(|| PathBuf::from("fleet-report")));
    }
    let workdir = workdir.unwrap_or_default();
    let r = xsave_reports::report::load(&workdir)?;
    let out = output.unwrap_or_else(|| workdir.join("report"));
    write_all(
        &out,
        [
            ("report.json", serde_json::to_vec_pretty(&r)?),
            ("report.md", xsave_reports::render::markdown(&r).into_bytes()),
            ("report.sarif", serde_json::to_vec_pretty(&xsave_reports::render::sarif(&r))?),
            ("report.html", xsave_reports::render::html(&r).into_bytes()),
        ],
    )?;
    println!("{} findings reported in {}", r.findings.len(), out.display());
    for sk in &r.skipped {
        eprintln!("xsave-rig: skipped {}", escape(sk));
    }
    Ok(0)
}

/// `report --hub URL`: the fleet in the four formats.
fn fleet(url: &str, out: &Path) -> Result<i32> {
    let mut hub = xsave_hub::Hub::connect(url)?;
    let f = xsave_hub::fleet::fleet(&mut hub, ALIVE_SECS, MAX_BEATS)?;
    let r = xsave_reports::fleet::FleetReport::new(&hub.url, f);
    write_all(
        out,
        [
            ("report.json", serde_json::to_vec_pretty(&r)?),
            ("report.md", xsave_reports::fleet::markdown(&r).into_bytes()),
            ("report.sarif", serde_json::to_vec_pretty(&xsave_reports::fleet::sarif(&r))?),
            ("report.html", xsave_reports::fleet::html(&r).into_bytes()),
        ],
    )?;
    println!(
        "{} findings on {} kernels from {} hosts in {} reported in {}",
        r.fleet.findings.len(),
        r.fleet.kernels.len(),
        r.fleet.status.hosts.len(),
        hub.url,
        out.display()
    );
    Ok(0)
}

/// Write each file atomically into `out` (created if missing).
fn write_all(out: &Path, files: [(&str, Vec<u8>); 4]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, bytes) in files {
        let p = out.join(name);
        xsave_runner::store::write_atomic(&p, &bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
