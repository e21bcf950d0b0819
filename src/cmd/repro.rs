//! `xsave-rig repro`: a standalone C reproducer of a case.

use crate::args::*;
use crate::common::*;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The case (binary or JSON).
    case: PathBuf,
    /// Emit C (the only language so far).
    #[arg(long, required = true)]
    c: bool,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    oracle: OracleArgs,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { case, c: _, output, oracle } = args;
    let (cs, raw) = load_case_or_raw(&case)?;
    let (host, _) = host_facts(&oracle, false)?;
    let model = model_config(&oracle, &host)?;
    let expected = xsave_oracle::predict(&cs, &host, &model);
    let title = if raw { format!("case {} {RAW_LABEL}", case.display()) } else { format!("case {}", case.display()) };
    let src = xsave_reports::repro::c_reproducer(&cs, &host, &model, &expected, &title);
    write_file(&output, src.as_bytes())?;
    println!(
        "written {}{} (expectations: {} quirks [{}])",
        output.display(),
        if raw { format!(" from {} {RAW_LABEL}", case.display()) } else { String::new() },
        model.contract,
        quirk_names(&model.quirks)
    );
    Ok(0)
}
