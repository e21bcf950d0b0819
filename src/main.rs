//! `xsave-rig`: differential fuzzing rig for the Linux KVM x86 XSAVE userspace ABI.
//!
//! This file parses the command line and dispatches: each command lives in its own module
//! under `cmd/`, the helpers they share in `common.rs` and `args.rs`, and the logic a library
//! user or a test needs in the library crates. The binary has no unsafe code of its own: the
//! few system calls it needs go through safe functions of `xsave-runner`.

#![forbid(unsafe_code)]

mod args;
mod cmd;
mod common;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cmd::{bench, case, check_state, corpus, exec_cases, fuzz, hub, lab, migrate, minimize, probe, replay, report, repro};
use xsave_runner::store::escape;

#[derive(Parser)]
#[command(name = "xsave-rig", version, about = "Differential fuzzing rig for the Linux KVM x86 XSAVE userspace ABI", long_about = None, after_help = ENV_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Environment variables and exit statuses, shown under `--help`.
const ENV_HELP: &str = "\
Environment variables:
  XSAVE_RIG_DEV_KVM      the KVM device node (default /dev/kvm)
  XSAVE_RIG_HUB          the fleet hub's PostgreSQL URL (`hub …`, and `fuzz`, which syncs with it when set)
  XSAVE_RIG_CACHE        the lab's cache directory (default $XDG_CACHE_HOME/xsave-rig, else ~/.cache/xsave-rig)
  XSAVE_RIG_APT_MIRROR   the Debian archive `lab fetch` downloads from (default http://deb.debian.org)
  XSAVE_RIG_TEST_KMSG_AT tests: log a WARN-shaped record to /dev/kmsg while the KVM backend runs
                         its N-th case (provokes a kernel-splat finding); `--backend lab:K` passes
                         it to the guest, whose own kernel log gets the record
  XSAVE_RIG_DETECT_BIN   the libFuzzer detect_model binary `bench detect` runs (default: fuzz/target/…/release/detect_model)
  XSAVE_RIG_REQUIRE_KVM  tests only: 1 makes a real-KVM test fail instead of skipping when /dev/kvm is unusable
  XSAVE_RIG_CHECKPOINT_MS  tests only: milliseconds between campaign checkpoints (default 1000)

Exit statuses: 0 success (fuzz: no new finding; replay: agreement), 1 a result to look at (fuzz: new
findings; replay: divergence; migrate/check-state: a refused or lossy load), 2 error, 130 interrupted (fuzz).";

#[derive(Subcommand)]
enum Cmd {
    /// Measure this host: capabilities, supported XCR0, layout, contract version, quirks.
    Probe(probe::Args),
    /// Run a fuzz campaign: random cases on a backend, judged by the oracle.
    Fuzz(fuzz::Args),
    /// Shrink a diverging case while it keeps the same signature (deterministic).
    Minimize(minimize::Args),
    /// Write a standalone C reproducer of a case (libc and <linux/kvm.h> only).
    Repro(repro::Args),
    /// Write report.json, report.md, report.sarif and report.html for a campaign workdir, or
    /// (--hub URL) for the fleet in a hub: findings by signature, the signatures × kernels
    /// matrix and per-host campaign plots.
    Report(report::Args),
    /// Migration pre-flight: simulate save on one host and load on another, over cases.
    Migrate(migrate::Args),
    /// Predict whether a saved `kvm_xsave` image loads on a target host, and what reads back.
    CheckState(check_state::Args),
    /// The kernel lab: stock or own kernels under QEMU TCG, the rig running inside.
    Lab {
        #[command(subcommand)]
        cmd: lab::LabCmd,
    },
    /// Internal (run inside lab guests by `lab matrix`): run case files on this machine's KVM
    /// and record per-step digests and verdicts.
    ExecCases(exec_cases::Args),
    /// Internal (what `--backend lab:K` runs inside the lab guest): probe the guest's KVM, then
    /// execute the cases the host sends on the control port.
    LabServe,
    /// Run case files and print observation, prediction and verdict (exit 0 agree, 1 divergence).
    Replay(replay::Args),
    /// Corpus tools.
    Corpus {
        #[command(subcommand)]
        cmd: corpus::CorpusCmd,
    },
    /// Inspect or write case files.
    Case {
        #[command(subcommand)]
        cmd: case::CaseCmd,
    },
    /// The fleet hub (PostgreSQL): schema and roles, push/pull, fleet status and findings.
    Hub {
        #[command(subcommand)]
        cmd: hub::HubCmd,
    },
    /// Raw ioctl throughput next to the rig's, measured in the same run (`bench detect`: how fast
    /// the engine finds each historical contract).
    Bench(bench::Args),
}

/// Run the command; returns the exit status.
fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Probe(a) => probe::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Minimize(a) => minimize::run(a),
        Cmd::Repro(a) => repro::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Migrate(a) => migrate::run(a),
        Cmd::CheckState(a) => check_state::run(a),
        Cmd::Lab { cmd } => lab::run(cmd),
        Cmd::ExecCases(a) => exec_cases::run(a),
        Cmd::LabServe => {
            xsave_runner::lab::serve()?;
            Ok(0)
        }
        Cmd::Replay(a) => replay::run(a),
        Cmd::Corpus { cmd } => corpus::run(cmd),
        Cmd::Case { cmd } => case::run(cmd),
        Cmd::Hub { cmd } => hub::run(cmd),
        Cmd::Bench(a) => bench::run(a),
    }
}

/// Clap's error as one line: every line before the usage block (the message and what it
/// names, e.g. the missing `--output <OUTPUT>`), joined with single spaces.
fn clap_one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = parts.join(" ");
    let joined = joined.trim_start_matches("error: ").trim();
    if joined.is_empty() {
        "invalid arguments".into()
    } else {
        joined.to_string()
    }
}

/// A closed stdout (`xsave-rig … | head -1`) ends the output quietly with status 0: Rust
/// ignores SIGPIPE, so `println!` on a closed pipe panics with "failed printing to stdout:
/// Broken pipe"; this hook turns exactly that panic into `exit(0)` and leaves every other
/// panic to the default hook.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() {
    quiet_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => e.exit(),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            eprintln!("xsave-rig: error: {} (see --help)", clap_one_line(&e.to_string()));
            std::process::exit(2);
        }
    };
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xsave-rig: error: {}", escape(&format!("{e:#}").replace('\n', " ")));
            std::process::exit(2);
        }
    }
}
