//! `xsave-rig replay`: run case files and print observation, prediction and verdict.

use crate::args::*;
use crate::common::*;
use anyhow::Result;
use std::path::PathBuf;
use xsave_oracle::judge::judge;
use xsave_oracle::verdict::Verdict;

#[derive(clap::Args)]
pub struct Args {
    /// Case files (binary or .json).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    oracle: OracleArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { files, backend, oracle, json } = args;
    let cases = files.iter().map(|f| load_case_or_raw(f).map(|(c, raw)| (f.clone(), c, raw))).collect::<Result<Vec<_>>>()?;
    let (mut be, host, _) = open_backend(&backend, &oracle)?;
    let model = model_config(&oracle, &host)?;
    let mut code = 0;
    let mut out = Vec::new();
    for (f, case, raw) in cases {
        let observed = be.execute(&case)?;
        let (expected, verdict) = judge(&case, &host, &model, &observed);
        let log = be.kernel_log();
        let verdict =
            if log.is_empty() { verdict } else { Verdict::Diverge(Box::new(xsave_oracle::judge::kernel_splat(&case, &model, log))) };
        if verdict != Verdict::Agree {
            code = 1;
        }
        if json {
            let unpredicted = xsave_oracle::diff::unpredicted(&case, &host, &expected);
            out.push(serde_json::json!({"file": f, "raw_input": raw, "backend": be.name(), "contract": model.contract, "quirks": model.quirks, "verdict": verdict, "unpredicted": unpredicted, "expected": expected, "observed": observed}));
        } else {
            println!(
                "== {}{} on {} (oracle {} quirks [{}])",
                f.display(),
                if raw { format!(" {RAW_LABEL}") } else { String::new() },
                be.name(),
                model.contract,
                quirk_names(&model.quirks)
            );
            print!("{}", xsave_reports::verdict_text(&case, &host, &verdict, &expected, &observed));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}
