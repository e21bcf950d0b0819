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
    /// Make bisect mode the program's default (it is always available as `./repro --bisect`):
    /// TAP output, one `ok`/`not ok` line per step with its expectation; exit 0 as expected,
    /// 1 divergence, 125 when the test cannot run here (no /dev/kvm, a missing capability,
    /// other host xfeatures), for `git bisect run ./repro`. Without it the default is plain
    /// mode (`--plain`: one line per result, exit 0, 1, or 2 when it cannot run).
    #[arg(long)]
    bisect: bool,
    #[command(flatten)]
    oracle: OracleArgs,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { case, c: _, output, bisect, oracle } = args;
    let (cs, raw) = load_case_or_raw(&case)?;
    let (host, _) = host_facts(&oracle, false)?;
    let model = model_config(&oracle, &host)?;
    let expected = xsave_oracle::predict(&cs, &host, &model);
    let title = if raw { format!("case {} {RAW_LABEL}", case.display()) } else { format!("case {}", case.display()) };
    let src = xsave_reports::repro::c_reproducer_with(&cs, &host, &model, &expected, &title, xsave_reports::repro::Options { bisect });
    write_file(&output, src.as_bytes())?;
    println!(
        "written {}{} (expectations: {} quirks [{}]; default mode {})",
        output.display(),
        if raw { format!(" from {} {RAW_LABEL}", case.display()) } else { String::new() },
        model.contract,
        quirk_names(&model.quirks),
        if bisect { "--bisect" } else { "--plain" }
    );
    Ok(0)
}
