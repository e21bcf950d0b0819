//! `xsave-rig case …`: case files as JSON, and back.

use crate::common::*;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CaseCmd {
    /// Print a case (binary or JSON) as JSON.
    Show {
        /// Case file.
        file: PathBuf,
    },
    /// Encode a JSON case to the binary format.
    Encode {
        /// JSON case.
        file: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Run a `case` subcommand; returns the exit status.
pub fn run(cmd: CaseCmd) -> Result<i32> {
    match cmd {
        CaseCmd::Show { file } => {
            let (case, raw) = load_case_or_raw(&file)?;
            if raw {
                eprintln!("xsave-rig: {} {RAW_LABEL}", file.display());
            }
            println!("{}", case.to_json());
            Ok(0)
        }
        CaseCmd::Encode { file, output } => {
            let case = load_case(&file)?;
            write_file(&output, &case.encode())?;
            Ok(0)
        }
    }
}
