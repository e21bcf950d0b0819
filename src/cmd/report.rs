//! `xsave-rig report`: the reports of a campaign workdir.

use anyhow::{Context, Result};
use std::path::PathBuf;
use xsave_runner::store::escape;

#[derive(clap::Args)]
pub struct Args {
    /// The campaign's workdir.
    workdir: PathBuf,
    /// Output directory (default: WORKDIR/report).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { workdir, output } = args;
    let r = xsave_reports::report::load(&workdir)?;
    let out = output.unwrap_or_else(|| workdir.join("report"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let files: [(&str, Vec<u8>); 4] = [
        ("report.json", serde_json::to_vec_pretty(&r)?),
        ("report.md", xsave_reports::render::markdown(&r).into_bytes()),
        ("report.sarif", serde_json::to_vec_pretty(&xsave_reports::render::sarif(&r))?),
        ("report.html", xsave_reports::render::html(&r).into_bytes()),
    ];
    for (name, bytes) in files {
        let p = out.join(name);
        xsave_runner::store::write_atomic(&p, &bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{} findings reported in {}", r.findings.len(), out.display());
    for sk in &r.skipped {
        eprintln!("xsave-rig: skipped {}", escape(sk));
    }
    Ok(0)
}
