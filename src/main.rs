//! `xsave-rig`: differential fuzzing rig for the Linux KVM x86 XSAVE userspace ABI.

mod hub_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use xsave_oracle::diff::{judge, Verdict};
use xsave_oracle::{Case, Contract, HostFacts, ModelConfig, Quirk};
use xsave_runner::campaign::{self, CampaignConfig, Summary};
use xsave_runner::kvm::KvmBackend;
use xsave_runner::lab;
use xsave_runner::minimize;
use xsave_runner::probe::{self, ProbeReport};
use xsave_runner::store::{caps, escape};
use xsave_runner::{Backend, ModelBackend};

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
                         its N-th case (provokes a kernel-splat finding)
  XSAVE_RIG_DETECT_BIN   the libFuzzer detect_model binary `bench detect` runs (default: fuzz/target/…/release/detect_model)
  XSAVE_RIG_REQUIRE_KVM  tests only: 1 makes a real-KVM test fail instead of skipping when /dev/kvm is unusable
  XSAVE_RIG_CHECKPOINT_MS  tests only: milliseconds between campaign checkpoints (default 1000)

Exit statuses: 0 success (fuzz: no new finding; replay: agreement), 1 a result to look at (fuzz: new
findings; replay: divergence; migrate/check-state: a refused or lossy load), 2 error, 130 interrupted (fuzz).";

#[derive(clap::Args, Clone)]
struct OracleArgs {
    /// Contract version the oracle predicts under: V0, V1, V2a, V2b or V3.
    #[arg(long, default_value = "V3", value_parser = parse_contract)]
    contract: Contract,
    /// Host quirks the oracle models: `auto` (those the probe found), `none` (strict
    /// upstream), or a comma-separated list of quirk names.
    #[arg(long, default_value = "auto")]
    quirks: String,
    /// Host facts from a saved `probe --json` (default: probe this host, or a synthetic
    /// Intel-layout host for model backends when /dev/kvm is absent). With `--backend kvm`
    /// they must describe this host (supported XCR0, host XCR0, component layout, MXCSR mask).
    #[arg(long)]
    host_facts: Option<PathBuf>,
    /// Use `--host-facts` with `--backend kvm` even where they differ from this host's.
    #[arg(long)]
    force_host_facts: bool,
}

#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// Where cases run: `kvm` (this host's /dev/kvm), `model:V0`…`model:V3` (the oracle
    /// under that contract, standing in for a historical kernel; `+quirk` models a quirk too,
    /// e.g. `model:V3+kvm-fpu-legacy` for today's KVM_GET/SET_FPU), or `lab:<kernel>` (the cases
    /// run on the KVM of that kernel's lab guest under QEMU, booted once, e.g. `lab:debian:6.1`;
    /// see `lab fetch`).
    #[arg(long, default_value = "kvm", value_parser = parse_backend)]
    backend: BackendKind,
    /// Create a fresh VM for every case instead of resetting a pooled vCPU.
    #[arg(long)]
    no_pool: bool,
    /// Internal (for commands run in a guest with `lab run`): the name summaries,
    /// campaign.json and findings give the backend.
    #[arg(long)]
    backend_label: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure this host: capabilities, supported XCR0, layout, contract version, quirks.
    Probe {
        /// Print one JSON object (a portable host fingerprint).
        #[arg(long)]
        json: bool,
    },
    /// Run a fuzz campaign: random cases on a backend, judged by the oracle.
    Fuzz {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        oracle: OracleArgs,
        /// Total cases of the campaign (default 10000 when no --duration; on --resume the
        /// stored total, unless given again).
        #[arg(long, conflicts_with = "duration")]
        iterations: Option<u64>,
        /// Total run time of the campaign, e.g. 60s, 1m30s, 2h, or `forever` (until SIGINT or
        /// SIGTERM); kept on --resume unless given again.
        #[arg(long, value_parser = parse_run_time)]
        duration: Option<Duration>,
        /// Generator seed (default 1; with --resume, the stored campaign's, which a different
        /// --seed may not change).
        #[arg(long)]
        seed: Option<u64>,
        /// Workdir for state and findings (findings/<signature>/).
        #[arg(long, default_value = "xsave-work")]
        workdir: PathBuf,
        /// Continue the campaign stored in --workdir (an error if there is none, or if its
        /// backend, contract, quirks or seed differ from this command's).
        #[arg(long)]
        resume: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Executions the minimizer may spend on each new finding (0: no minimization).
        #[arg(long, default_value_t = 2000)]
        minimize_budget: u64,
        /// Give every case a guest CPUID strictly narrower than the host's supported set.
        #[arg(long)]
        narrow_cpuid: bool,
        /// Pure random generation: no contract-coverage feedback, no corpus.
        #[arg(long)]
        no_feedback: bool,
        /// Generate no guest runs (KVM_RUN of guest programs that write registers and store the
        /// guest's own XSAVE image): only the userspace-buffer ioctls, as before version 2.
        #[arg(long)]
        no_guest: bool,
        /// Generate no legacy FPU ops (KVM_GET_FPU/KVM_SET_FPU).
        #[arg(long)]
        no_fpu: bool,
        /// Worker processes sharing the workdir's findings and corpus (each resumable).
        #[arg(long, default_value_t = 1)]
        jobs: u64,
        /// Internal (set by --jobs for its worker processes): run as worker K of N (`K/N`).
        #[arg(long)]
        worker: Option<String>,
        #[command(flatten)]
        hub: hub_cmd::FuzzHubArgs,
    },
    /// Shrink a diverging case while it keeps the same signature (deterministic).
    Minimize {
        /// The case (binary or JSON).
        case: PathBuf,
        /// Output file (default: CASE.min).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Maximum executions.
        #[arg(long, default_value_t = 20_000)]
        budget: u64,
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        oracle: OracleArgs,
    },
    /// Write a standalone C reproducer of a case (libc and <linux/kvm.h> only).
    Repro {
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
    },
    /// Write report.json, report.md, report.sarif and report.html for a campaign workdir.
    Report {
        /// The campaign's workdir.
        workdir: PathBuf,
        /// Output directory (default: WORKDIR/report).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Migration pre-flight: simulate save on one host and load on another, over cases.
    Migrate {
        /// Source host fingerprint (`xsave-rig probe --json`).
        #[arg(long)]
        from: PathBuf,
        /// Destination host fingerprint.
        #[arg(long)]
        to: PathBuf,
        /// Case files to use (default: generated cases).
        #[arg(long, conflicts_with = "iterations")]
        cases: Option<PathBuf>,
        /// Number of generated cases.
        #[arg(long)]
        iterations: Option<u64>,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Predict whether a saved `kvm_xsave` image loads on a target host, and what reads back.
    CheckState {
        /// The state: 4096 bytes or the XSAVE2 size, as a VMM writes it.
        state: PathBuf,
        /// Target host fingerprint (`xsave-rig probe --json`).
        #[arg(long)]
        target: PathBuf,
        /// Guest CPUID: a JSON CPUID table (as in a case) or a JSON array of entries.
        #[arg(long)]
        guest_cpuid: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The kernel lab: stock or own kernels under QEMU TCG, the rig running inside.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Internal (run inside lab guests by `lab matrix`): run case files on this machine's KVM
    /// and record per-step digests and verdicts.
    ExecCases {
        /// Directory of case files.
        dir: PathBuf,
        /// Output directory (probe.json, records.jsonl).
        #[arg(long)]
        workdir: PathBuf,
        /// Only the cases named in this file (one per line).
        #[arg(long)]
        only: Option<PathBuf>,
        /// Keep full traces.
        #[arg(long)]
        full: bool,
    },
    /// Internal (what `--backend lab:K` runs inside the lab guest): probe the guest's KVM, then
    /// execute the cases the host sends on the control port.
    LabServe,
    /// Run case files and print observation, prediction and verdict (exit 0 agree, 1 divergence).
    Replay {
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
    },
    /// Corpus tools.
    Corpus {
        #[command(subcommand)]
        cmd: CorpusCmd,
    },
    /// Inspect or write case files.
    Case {
        #[command(subcommand)]
        cmd: CaseCmd,
    },
    /// The fleet hub (PostgreSQL): schema and roles, push/pull, fleet status and findings.
    Hub {
        #[command(subcommand)]
        cmd: hub_cmd::HubCmd,
    },
    /// Raw ioctl throughput next to the rig's, measured in the same run (`bench detect`: how fast
    /// the engine finds each historical contract).
    Bench {
        #[command(subcommand)]
        sub: Option<BenchSub>,
        #[command(flatten)]
        backend: BenchBackend,
        /// Seconds per side.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[command(flatten)]
        oracle: OracleArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchSub {
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
struct BenchBackend {
    /// `lab:<kernel>`: measure inside that kernel's lab guest too, next to this host.
    #[arg(long)]
    backend: Option<String>,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Download and prepare a kernel: debian:5.10, debian:6.1, debian:6.12, debian:7 or an
    /// exact Debian linux-image-amd64 version; or --kernel-image PATH [--modules DIR].
    Fetch {
        /// Kernel spec.
        kernel: Option<String>,
        /// A kernel image of your own (bzImage).
        #[arg(long)]
        kernel_image: Option<PathBuf>,
        /// Its modules directory (lib/modules/<release>), unless KVM is built in.
        #[arg(long)]
        modules: Option<PathBuf>,
    },
    /// Boot a kernel and run `xsave-rig ARGS` inside; results come back to the host.
    Run {
        /// Kernel: debian:X, a cached id, or an image path.
        #[arg(long)]
        kernel: String,
        /// Seconds before the guest counts as hung.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Where the initramfs, console log and results go (default: a fresh directory
        /// runs/<kernel>/<pid>-<n> under the cache, cleaned but for the console log on success).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// A file or directory the command reads: shipped into the guest at the same path
        /// (the guest runs in this working directory, so relative paths work). Repeatable;
        /// nothing else is shipped.
        #[arg(long)]
        input: Vec<PathBuf>,
        /// A directory the command writes (e.g. its --workdir): copied back to the same path.
        /// Repeatable.
        #[arg(long)]
        output: Vec<PathBuf>,
        /// Internal (for testing failure handling): replace the guest's /init with this script.
        #[arg(long)]
        init_script: Option<PathBuf>,
        /// The xsave-rig subcommand and its arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// The same cases on several kernels (and this host): per-kernel verdicts and the cases
    /// whose behaviour differs between kernels.
    Matrix {
        /// Comma-separated kernels (debian:5.10,debian:6.1,…, cached ids or image paths).
        #[arg(long, value_delimiter = ',', required = true)]
        kernels: Vec<String>,
        /// Also run the cases on this host's /dev/kvm.
        #[arg(long)]
        host: bool,
        /// Case files to run (default: generated cases).
        #[arg(long, conflicts_with = "iterations")]
        cases: Option<PathBuf>,
        /// Number of generated cases.
        #[arg(long, default_value_t = 1000)]
        iterations: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give generated cases a guest CPUID narrower than the lab's supported set.
        #[arg(long)]
        narrow_cpuid: bool,
        /// Generate guest runs and legacy FPU ops too (off by default for the matrix: the guest
        /// model's remaining gaps on stock kernels under QEMU TCG are listed in
        /// docs/CONTRACT-RUN.md, and every stock kernel departs on KVM_SET_FPU).
        #[arg(long)]
        guest: bool,
        /// Where cases, per-kernel results and matrix.{json,md} go.
        #[arg(long, default_value = "xsave-matrix")]
        workdir: PathBuf,
        /// Seconds per guest before it counts as hung.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Print the matrix as JSON instead of Markdown.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CorpusCmd {
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

#[derive(Subcommand)]
enum CaseCmd {
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

#[derive(Clone, PartialEq, Eq)]
enum BackendKind {
    Kvm,
    /// The oracle under a contract, with the quirks after `+` (e.g. `model:V3+kvm-fpu-legacy`,
    /// today's KVM_GET/SET_FPU).
    Model(Contract, Vec<Quirk>),
    Lab(String),
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    match s {
        "kvm" => Ok(BackendKind::Kvm),
        _ => match (s.strip_prefix("model:"), s.strip_prefix("lab:")) {
            (Some(v), _) => {
                let mut parts = v.split('+');
                let contract = parse_contract(parts.next().unwrap_or(""))?;
                let quirks = parts
                    .map(|q| Quirk::from_name(q).ok_or_else(|| format!("unknown quirk {q:?} in {s:?}")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(BackendKind::Model(contract, quirks))
            }
            (_, Some(k)) if !k.is_empty() => Ok(BackendKind::Lab(k.to_string())),
            _ => Err(format!("unknown backend {s:?} (expected kvm, model:V0..V3 or lab:<kernel>)")),
        },
    }
}

fn parse_contract(s: &str) -> Result<Contract, String> {
    Contract::parse(s).ok_or_else(|| format!("unknown contract {s:?} (expected V0, V1, V2a, V2b or V3)"))
}

/// A campaign's run time: a duration ([`parse_duration`]) or `forever`.
/// `--duration forever`: about 317 years, so it stays a valid stored total (campaign.json keeps
/// durations in seconds up to 1e10) and survives a resume.
const FOREVER: Duration = Duration::from_secs(10_000_000_000);

fn parse_run_time(s: &str) -> Result<Duration, String> {
    if s.trim() == "forever" {
        Ok(FOREVER)
    } else {
        parse_duration(s).map_err(|e| format!("{e}, or forever"))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?} (expected e.g. 90s, 1m30s, 500ms, 2h)");
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        return if v.is_finite() && v >= 0.0 { Ok(Duration::from_secs_f64(v)) } else { Err(bad()) };
    }
    // A sequence of <number><unit>, unit one of ms, s, m, h, d.
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let v: f64 = rest[..n].parse().map_err(|_| bad())?;
        let after = &rest[n..];
        let (mult, len) = if after.starts_with("ms") {
            (0.001, 2)
        } else {
            match after.chars().next() {
                Some('s') => (1.0, 1),
                Some('m') => (60.0, 1),
                Some('h') => (3600.0, 1),
                Some('d') => (86400.0, 1),
                _ => return Err(bad()),
            }
        };
        total += v * mult;
        rest = &after[len..];
    }
    if t.is_empty() || !total.is_finite() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename): a failure leaves
/// nothing half-written, and a directory where a file is expected is a one-line error.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    xsave_runner::store::write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A file given as input, read bounded and without blocking ([`xsave_runner::store::read_bounded`]).
fn read_input(path: &Path, cap: u64) -> Result<Vec<u8>> {
    xsave_runner::store::read_bounded(path, cap).with_context(|| format!("cannot read {}", path.display()))
}

/// [`read_input`] as UTF-8 text.
fn read_text(path: &Path, cap: u64) -> Result<String> {
    xsave_runner::store::read_bounded_string(path, cap).with_context(|| format!("cannot read {}", path.display()))
}

fn load_case(path: &Path) -> Result<Case> {
    let bytes = read_input(path, caps::CASE)?;
    let case = if bytes.starts_with(xsave_oracle::case::MAGIC) {
        Case::decode(&bytes)
    } else {
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not a case file (neither XSRC binary nor JSON)", path.display()))?;
        Case::from_json(&text)
    };
    case.with_context(|| format!("{}: corrupt case", path.display()))
}

/// The label a raw fuzzer input gets wherever it is shown.
const RAW_LABEL: &str = "(raw fuzzer input, read structurally)";

/// A case file, or a raw libFuzzer/honggfuzz input (neither `XSRC` nor JSON, not empty) read
/// the way the fuzz harnesses read it; the flag says which. A corrupt `XSRC` file or a JSON
/// file that is not a case stays an error.
fn load_case_or_raw(path: &Path) -> Result<(Case, bool)> {
    let bytes = read_input(path, caps::CASE)?;
    let json_name = path.extension().is_some_and(|e| e == "json");
    if !json_name && xsave_runner::corpus::is_raw_input(&bytes) {
        return Ok((xsave_oracle::case::from_fuzz_input(&bytes), true));
    }
    if bytes.is_empty() {
        bail!("{}: empty file, not a case", path.display());
    }
    load_case(path).map(|c| (c, false))
}

/// Host facts, and the fingerprint they came from (a probe report, the file given, or a
/// synthetic host marked as such).
fn host_facts(o: &OracleArgs, need_kvm: bool) -> Result<(HostFacts, serde_json::Value)> {
    if let Some(p) = &o.host_facts {
        let text = read_text(p, caps::JSON)?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
        let host = v.get("host").cloned().unwrap_or_else(|| v.clone());
        let host: HostFacts = serde_json::from_value(host).with_context(|| format!("{}: not a probe report or host facts", p.display()))?;
        let fp = if v.get("host").is_some() { v } else { serde_json::json!({ "host": v }) };
        return Ok((host, fp));
    }
    match xsave_runner::kvm_unavailable() {
        Some(why) if need_kvm => bail!("{why}"),
        Some(_) => {
            let host = HostFacts::synthetic(0x2e7, 0xffff);
            let fp = serde_json::json!({ "synthetic": true, "contract": "V3", "host": host });
            Ok((host, fp))
        }
        None => {
            let r = probe::probe()?;
            Ok((r.host.clone(), serde_json::to_value(&r)?))
        }
    }
}

fn model_config(o: &OracleArgs, host: &HostFacts) -> Result<ModelConfig> {
    let quirks = match o.quirks.as_str() {
        "auto" => host.quirks.clone(),
        "none" => Vec::new(),
        list => list
            .split(',')
            .map(|n| {
                Quirk::from_name(n.trim()).ok_or_else(|| {
                    anyhow::anyhow!("unknown quirk {n:?} (known: {})", Quirk::ALL.iter().map(|q| q.name()).collect::<Vec<_>>().join(", "))
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(ModelConfig { contract: o.contract, quirks })
}

/// A backend under another name (`lab:K` for the guest's `kvm`).
struct Labelled {
    inner: Box<dyn Backend>,
    label: String,
}

impl Backend for Labelled {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn host(&self) -> &HostFacts {
        self.inner.host()
    }
    fn execute(&mut self, case: &Case) -> Result<xsave_oracle::trace::Trace, xsave_runner::BackendError> {
        self.inner.execute(case)
    }
    fn ioctls(&self) -> u64 {
        self.inner.ioctls()
    }
    fn kernel_log(&mut self) -> Vec<String> {
        self.inner.kernel_log()
    }
}

fn make_backend(b: &BackendArgs, host: &HostFacts) -> Result<Box<dyn Backend>> {
    let be = make_backend_unlabelled(b, host)?;
    Ok(match &b.backend_label {
        Some(label) => Box::new(Labelled { inner: be, label: label.clone() }),
        None => be,
    })
}

fn make_backend_unlabelled(b: &BackendArgs, host: &HostFacts) -> Result<Box<dyn Backend>> {
    Ok(match &b.backend {
        BackendKind::Kvm => Box::new(KvmBackend::new(host.clone(), !b.no_pool)?),
        BackendKind::Model(contract, quirks) => {
            Box::new(ModelBackend::new(host.clone(), ModelConfig { contract: *contract, quirks: quirks.clone() }))
        }
        BackendKind::Lab(k) => bail!("lab:{k}: the lab backend is opened with its host facts (internal error)"),
    })
}

/// The backend, the host facts it renders cases with and their fingerprint. `lab:K` boots
/// K's guest once and takes its probe report (or `--host-facts`, checked against the guest's
/// unless `--force-host-facts`).
fn open_backend(b: &BackendArgs, o: &OracleArgs) -> Result<(Box<dyn Backend>, HostFacts, serde_json::Value)> {
    let BackendKind::Lab(k) = &b.backend else {
        let (host, fp) = backend_host(b, o)?;
        return Ok((make_backend(b, &host)?, host, fp));
    };
    let given = if o.host_facts.is_some() { Some(host_facts(o, false)?) } else { None };
    let opts = lab::LabOptions { host: given.as_ref().map(|(h, _)| h.clone()), no_pool: b.no_pool, ..lab::LabOptions::default() };
    let be = lab::LabBackend::boot(k, opts)?;
    let fp = match (given, &o.host_facts) {
        (Some((g, fp)), Some(p)) => {
            if let (Some(d), false) = (host_difference(&g, &be.probe_report().host), o.force_host_facts) {
                bail!(
                    "--host-facts {} describes another host than lab:{k} ({d}); pass --force-host-facts to run its KVM against it anyway",
                    p.display()
                );
            }
            fp
        }
        _ => serde_json::to_value(be.probe_report())?,
    };
    let host = be.host().clone();
    Ok((Box::new(be), host, fp))
}

/// Run `job` in `k`'s lab guest: print its output (its outputs are copied back), report
/// timings, and return the guest's exit status.
fn run_in_lab(k: &lab::Kernel, job: &lab::Job, scratch: &lab::Scratch, timeout: Duration) -> Result<i32> {
    let out = lab::run(k, job, scratch, timeout)?;
    lab::passthrough(&out.stdout);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "xsave-rig lab: {} booted in {:.1} s, ran {:.1} s, {:.1} s wall; console log {}",
        k.id,
        out.boot_seconds,
        out.run_seconds,
        out.wall_seconds,
        out.console.display()
    );
    Ok(out.status)
}

/// The first difference between host facts `given` (from `--host-facts`) and this host's
/// measured ones: supported XCR0, host XCR0, component layout, MXCSR mask.
fn host_difference(given: &HostFacts, here: &HostFacts) -> Option<String> {
    if given.supported_xcr0 != here.supported_xcr0 {
        return Some(format!("supported_xcr0 {:#x} there, {:#x} here", given.supported_xcr0, here.supported_xcr0));
    }
    if given.host_xcr0 != here.host_xcr0 {
        return Some(format!("host_xcr0 {:#x} there, {:#x} here", given.host_xcr0, here.host_xcr0));
    }
    let sorted = |h: &HostFacts| {
        let mut c: Vec<(u8, u32, u32, bool)> = h.components.iter().map(|c| (c.bit, c.offset, c.size, c.align64)).collect();
        c.sort();
        c
    };
    let (a, b) = (sorted(given), sorted(here));
    if a != b {
        let d = a.iter().zip(&b).find(|(x, y)| x != y);
        return Some(match d {
            Some((x, y)) => {
                format!("component layout: bit {} offset {} size {} there, bit {} offset {} size {} here", x.0, x.1, x.2, y.0, y.1, y.2)
            }
            None => format!("component layout: {} components there, {} here", a.len(), b.len()),
        });
    }
    if given.mxcsr_feature_mask != here.mxcsr_feature_mask || given.init_mxcsr_mask != here.init_mxcsr_mask {
        return Some(format!(
            "mxcsr mask {:#x}/{:#x} there, {:#x}/{:#x} here",
            given.mxcsr_feature_mask, given.init_mxcsr_mask, here.mxcsr_feature_mask, here.init_mxcsr_mask
        ));
    }
    None
}

/// Host facts for a backend (a model backend has no host quirks) and their fingerprint.
/// `--host-facts` of another host on the kvm backend is refused unless `--force-host-facts`.
fn backend_host(b: &BackendArgs, o: &OracleArgs) -> Result<(HostFacts, serde_json::Value)> {
    let (mut host, mut fp) = host_facts(o, b.backend == BackendKind::Kvm)?;
    if let (BackendKind::Kvm, Some(p), false) = (&b.backend, &o.host_facts, o.force_host_facts) {
        if let Some(why) = xsave_runner::kvm_unavailable() {
            bail!("{why}");
        }
        let here = probe::host_facts()?;
        if let Some(d) = host_difference(&host, &here) {
            bail!(
                "--host-facts {} describes another host ({d}); pass --force-host-facts to run this host's KVM against it anyway",
                p.display()
            );
        }
    }
    if let BackendKind::Model(c, _) = &b.backend {
        host.quirks.clear();
        host.pvm_dropped_leaves.clear();
        fp["host"] = serde_json::to_value(&host)?;
        fp["model_backend"] = serde_json::json!(c.name());
    }
    Ok((host, fp))
}

/// `fuzz --jobs N`: this command N times as workers (`--worker K/N`), sharing the workdir.
/// The parent merges the workers' summaries into `WORKDIR/campaign.json` (written
/// atomically, so `report WORKDIR` works): counts are summed (`next_iteration` is the sum of
/// the workers' `next_iteration`, i.e. the cases run over all workers), `new_signatures` are
/// deduplicated and sorted, and `jobs` is N. Exit status as for one campaign.
fn run_jobs(jobs: u64, workdir: &Path, json: bool, stop: &AtomicBool, pass_host: bool, main: &Summary) -> Result<i32> {
    use std::sync::atomic::Ordering;
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let mut base: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" | "--worker" | "--iterations" | "--duration" => {
                it.next();
            }
            "--json" => {}
            _ if ["--jobs=", "--worker=", "--iterations=", "--duration="].iter().any(|p| a.starts_with(p)) => {}
            _ => base.push(a),
        }
    }
    // The campaign's totals, resolved (given, or stored on resume).
    if let Some(n) = main.iterations {
        base.extend(["--iterations".into(), n.to_string()]);
    }
    if let Some(d) = main.duration_secs {
        base.extend(["--duration".into(), format!("{d}s")]);
    }
    if pass_host && workdir.join("host.json").exists() {
        base.push("--host-facts".into());
        base.push(workdir.join("host.json").display().to_string());
    }
    let mut children = Vec::new();
    for k in 0..jobs {
        let child = std::process::Command::new(&exe)
            .args(&base)
            .args(["--json", "--worker", &format!("{k}/{jobs}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start worker {k}"))?;
        children.push(child);
    }
    let tty = std::io::stderr().is_terminal() && !json;
    let mut outputs = vec![None; children.len()];
    let started = std::time::Instant::now();
    let mut signalled = false;
    while outputs.iter().any(|o| o.is_none()) {
        if stop.load(Ordering::Relaxed) && !signalled {
            for c in &children {
                xsave_runner::sys::terminate(c.id());
            }
            signalled = true;
        }
        for (k, c) in children.iter_mut().enumerate() {
            if outputs[k].is_none() {
                if let Some(st) = c.try_wait()? {
                    let mut out = String::new();
                    if let Some(mut so) = c.stdout.take() {
                        std::io::Read::read_to_string(&mut so, &mut out)?;
                    }
                    outputs[k] = Some((st, out));
                }
            }
        }
        if tty {
            let execs: u64 = (0..jobs)
                .filter_map(|k| campaign::load_state(&workdir.join("workers").join(k.to_string()).join("campaign.json")).ok())
                .map(|s| s.execs)
                .sum();
            let findings = std::fs::read_dir(workdir.join("findings")).map(|d| d.count()).unwrap_or(0);
            eprint!(
                "\r[{:>6.0}s] {jobs} workers  execs {:>9}  {:>7.0}/s  findings {:>4}   ",
                started.elapsed().as_secs_f64(),
                execs,
                execs as f64 / started.elapsed().as_secs_f64().max(1e-3),
                findings
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if tty {
        eprintln!();
    }
    let mut total = Summary::default();
    let mut failed = Vec::new();
    for (k, o) in outputs.into_iter().enumerate() {
        let (st, out) = o.unwrap_or_default();
        match serde_json::from_str::<Summary>(out.trim()) {
            Ok(s) => {
                total.backend = s.backend;
                total.contract = s.contract;
                total.quirks = s.quirks;
                total.seed = s.seed;
                total.next_iteration += s.next_iteration;
                total.narrow_cpuid = s.narrow_cpuid;
                total.ioctls += s.ioctls;
                total.execs += s.execs;
                total.divergent_cases += s.divergent_cases;
                total.agree_unpredicted += s.agree_unpredicted;
                total.guest_runs += s.guest_runs;
                for (k, n) in &s.guest_exits {
                    *total.guest_exits.entry(k.clone()).or_default() += n;
                }
                total.explained_by_quirk += s.explained_by_quirk;
                total.execs_per_sec += s.execs_per_sec;
                total.seconds = total.seconds.max(s.seconds);
                total.findings = total.findings.max(s.findings);
                total.rules_covered = total.rules_covered.max(s.rules_covered);
                total.rules_total = s.rules_total;
                total.coverage_points = total.coverage_points.max(s.coverage_points);
                total.corpus = total.corpus.max(s.corpus);
                total.resumed |= s.resumed;
                total.interrupted |= s.interrupted;
                total.new_signatures.extend(s.new_signatures);
                total.known_signatures.extend(s.known_signatures);
                total.known_issue_cases += s.known_issue_cases;
                total.resources.peak_rss_kib = total.resources.peak_rss_kib.max(s.resources.peak_rss_kib);
                total.groups = campaign::merge_groups([total.groups.as_slice(), s.groups.as_slice()]);
                for (c, n) in s.by_class {
                    *total.by_class.entry(c).or_default() += n;
                }
            }
            Err(_) => failed.push(format!("worker {k} ({st})")),
        }
    }
    if !failed.is_empty() {
        bail!("{} failed; their state is kept in {}/workers/ (rerun with --resume)", failed.join(", "), workdir.display());
    }
    total.findings = std::fs::read_dir(workdir.join("findings"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() as u64)
        .unwrap_or(0);
    total.new_signatures.sort();
    total.new_signatures.dedup();
    total.known_signatures.sort();
    total.known_signatures.dedup();
    total.jobs = Some(jobs);
    total.iterations = main.iterations;
    total.corpus_order = main.corpus_order.clone();
    total.duration_secs = main.duration_secs;
    let state = workdir.join("campaign.json");
    xsave_runner::store::write_atomic(&state, &serde_json::to_vec_pretty(&total)?)
        .with_context(|| format!("cannot write {}", state.display()))?;
    let code = exit_status(&total);
    if json {
        let mut v = serde_json::to_value(&total)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("corpus_order");
        }
        v["exit_status"] = serde_json::json!(code);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("workers          {jobs}");
        print_summary(&total);
        println!("{}", result_line(&total, code));
    }
    Ok(code)
}

fn read_case_dir(dir: &Path) -> Result<Vec<(String, Case)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|f| load_case(f).map(|c| (f.file_name().and_then(|n| n.to_str()).unwrap_or("case").to_string(), c))).collect()
}

fn read_records(dir: &Path) -> Result<(ProbeReport, Vec<xsave_runner::matrix::ExecRecord>)> {
    let p: ProbeReport = serde_json::from_slice(&read_input(&dir.join("probe.json"), caps::JSON)?)?;
    let text = read_text(&dir.join("records.jsonl"), caps::STATS)?;
    let recs = text
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{}: corrupt records", dir.display()))?;
    Ok((p, recs))
}

#[allow(clippy::too_many_arguments)]
fn run_matrix(
    kernels: &[String],
    host: bool,
    cases: Option<PathBuf>,
    iterations: u64,
    seed: u64,
    narrow: bool,
    guest: bool,
    workdir: &Path,
    timeout: Duration,
) -> Result<xsave_runner::matrix::Matrix> {
    use xsave_runner::matrix::{build, exec_cases};
    let cdir = workdir.join("cases");
    let list: Vec<(String, Case)> = match cases {
        Some(d) => read_case_dir(&d)?,
        None => (0..iterations)
            .map(|i| {
                let c = campaign::case_for_with(seed, i, xsave_oracle::gen::GenOptions { guest, fpu: guest });
                let c = if narrow { campaign::narrow(c, 0x207, i) } else { c };
                (format!("{i:06}.case"), c)
            })
            .collect(),
    };
    // Every kernel must get the same input bytes: render CPUID bases (which depend on each
    // kernel's KVM_GET_SUPPORTED_CPUID) against one fixed reference table.
    let reference = HostFacts::synthetic(0x207, 0xffff);
    let list: Vec<(String, Case)> = list.into_iter().map(|(n, c)| (n, materialize(c, &reference))).collect();
    let _ = std::fs::remove_dir_all(&cdir);
    std::fs::create_dir_all(&cdir).with_context(|| format!("cannot create {}", cdir.display()))?;
    for (n, c) in &list {
        std::fs::write(cdir.join(n), c.encode())?;
    }
    // Pass 1: every case on every column.
    let mut columns = Vec::new();
    let mut hosts = Vec::new();
    let mut pass1 = Vec::new();
    let mut kernels_used = Vec::new();
    for spec in kernels {
        let k = lab::kernel(spec)?;
        let out = workdir.join("kernels").join(&k.id).join("pass1");
        let _ = std::fs::remove_dir_all(&out);
        let job = lab::Job {
            args: vec!["exec-cases".into(), cdir.display().to_string(), "--workdir".into(), out.display().to_string()],
            inputs: vec![cdir.clone()],
            outputs: vec![out.clone()],
            init: None,
        };
        let r = lab::run(&k, &job, &lab::Scratch::at(&workdir.join("kernels").join(&k.id).join("scratch")), timeout)?;
        if r.status != 0 {
            bail!(
                "{}: exec-cases exited {} in the guest: {} (console log {})",
                k.id,
                r.status,
                String::from_utf8_lossy(&r.stderr).trim(),
                r.console.display()
            );
        }
        let (p, recs) = read_records(&out)?;
        columns.push(column(&k.id, &p, &recs, r.boot_seconds, r.run_seconds));
        hosts.push(p.host.clone());
        pass1.push(recs);
        kernels_used.push(Some(k));
    }
    if host {
        let p = probe::probe()?;
        let t = std::time::Instant::now();
        let recs = exec_cases(&p, &list, false)?;
        columns.push(column("host", &p, &recs, 0.0, t.elapsed().as_secs_f64()));
        hosts.push(p.host.clone());
        pass1.push(recs);
        kernels_used.push(None);
    }
    // Pass 2: full traces of the cases that differ.
    let differing: Vec<String> = (0..list.len())
        .filter(|&i| pass1.iter().filter_map(|r| r.get(i)).map(|r| &r.digest).collect::<std::collections::BTreeSet<_>>().len() > 1)
        .map(|i| list[i].0.clone())
        .take(100)
        .collect();
    let mut full = std::collections::BTreeMap::new();
    if !differing.is_empty() {
        let only = workdir.join("differing.txt");
        std::fs::write(&only, differing.join("\n"))?;
        for (col, k) in columns.iter().zip(&kernels_used) {
            let recs = match k {
                Some(k) => {
                    let out = workdir.join("kernels").join(&k.id).join("pass2");
                    let _ = std::fs::remove_dir_all(&out);
                    let job = lab::Job {
                        args: vec![
                            "exec-cases".into(),
                            cdir.display().to_string(),
                            "--workdir".into(),
                            out.display().to_string(),
                            "--only".into(),
                            only.display().to_string(),
                            "--full".into(),
                        ],
                        inputs: vec![cdir.clone(), only.clone()],
                        outputs: vec![out.clone()],
                        init: None,
                    };
                    lab::run(k, &job, &lab::Scratch::at(&workdir.join("kernels").join(&k.id).join("scratch")), timeout)?;
                    read_records(&out)?.1
                }
                None => {
                    let sel: Vec<(String, Case)> = list.iter().filter(|(n, _)| differing.contains(n)).cloned().collect();
                    exec_cases(&probe::probe()?, &sel, true)?
                }
            };
            for r in recs {
                if let Some(t) = r.trace {
                    full.insert((col.kernel.clone(), r.case.clone()), t);
                }
            }
        }
    }
    let m = build(&list, columns, &hosts, &pass1, &full);
    xsave_runner::store::write_atomic(&workdir.join("matrix.json"), &serde_json::to_vec_pretty(&m)?)?;
    xsave_runner::store::write_atomic(&workdir.join("matrix.md"), xsave_runner::matrix::markdown(&m).as_bytes())?;
    Ok(m)
}

/// Replace every CPUID base by the explicit entries it renders to on `reference`.
fn materialize(mut case: Case, reference: &HostFacts) -> Case {
    use xsave_oracle::case::{CpuidBase, CpuidTable};
    let fix = |t: &CpuidTable| CpuidTable { base: CpuidBase::Empty, entries: t.render(reference), reverse: false };
    case.config.cpuid = case.config.cpuid.as_ref().map(fix);
    for op in &mut case.ops {
        if let xsave_oracle::Op::SetCpuid2(t) = op {
            *t = fix(t);
        }
    }
    case
}

fn column(name: &str, p: &ProbeReport, recs: &[xsave_runner::matrix::ExecRecord], boot: f64, run: f64) -> xsave_runner::matrix::Column {
    xsave_runner::matrix::Column {
        kernel: name.to_string(),
        contract: p.contract.clone(),
        quirks: p.quirks.iter().map(|q| q.name().to_string()).collect(),
        release: p.kernel_release.clone(),
        v3_divergences: recs.iter().filter(|r| r.v3 != "agree").count(),
        own_divergences: recs.iter().filter(|r| r.own != "agree").count(),
        boot_seconds: boot,
        run_seconds: run,
    }
}

fn load_target(p: &Path) -> Result<xsave_runner::migrate::Target> {
    let text = read_text(p, caps::JSON)?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
    xsave_runner::migrate::Target::from_fingerprint(&p.display().to_string(), &v).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

/// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on a host: the standard-format size of the
/// xfeatures KVM supports (XTILE_DATA only with the guest permission), at least 4096.
fn xsave2_size(host: &HostFacts) -> usize {
    use xsave_oracle::xfeatures::{XTILE_CFG, XTILE_DATA};
    let mut filtered = host.supported_xcr0;
    if filtered & XTILE_DATA != 0 {
        filtered &= host.guest_perm;
        if filtered & XTILE_DATA == 0 {
            filtered &= !XTILE_CFG;
        }
    }
    (xsave_oracle::layout::xstate_required_size(&host.components, filtered, false) as usize).max(4096)
}

fn quirk_names(m: &ModelConfig) -> String {
    m.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
}

fn print_probe(r: &ProbeReport) {
    println!("kernel           {}", r.kernel_release);
    println!("kvm module       {}", r.kvm_module);
    println!("capabilities     XSAVE={} XCRS={} XSAVE2={}", r.capabilities.xsave, r.capabilities.xcrs, r.capabilities.xsave2);
    println!(
        "supported XCR0   {} (device attr)  {} (KVM_GET_SUPPORTED_CPUID)  [{}]",
        r.supported_xcr0,
        r.supported_xcr0_cpuid,
        xsave_oracle::xfeatures::describe(r.host.supported_xcr0)
    );
    println!("host XCR0        {}", r.host_xcr0);
    println!("XSAVE2 size      {}", r.xsave_size);
    println!("MXCSR mask       {}", r.mxcsr_mask);
    println!(
        "CPUID 0x12.1     {}",
        if r.host.cpuid_sgx_xfrm_masked { "masked by guest XCR0, FP|SSE forced (6.1-era)" } else { "stored as given" }
    );
    println!(
        "GET_CPUID2 nent  {}",
        if r.host.get_cpuid2_keeps_nent { "left as the caller's on success (before 6.5)" } else { "written back on success (6.5+)" }
    );
    for c in &r.components {
        println!(
            "component        bit {:>2} {:<10} offset {:>5} size {:>5}",
            c.bit,
            xsave_oracle::xfeatures::name(c.bit),
            c.offset,
            c.size
        );
    }
    if r.contract_matches.is_empty() {
        match &r.nearest {
            Some(n) => println!("contract         unknown; {n}"),
            None => println!("contract         unknown (matches: none)"),
        }
    } else {
        println!("contract         {} (matches: {})", r.contract, r.contract_matches.join(", "));
    }
    let q: Vec<&str> = r.quirks.iter().map(|q| q.name()).collect();
    println!("quirks           {}", if q.is_empty() { "none".into() } else { q.join(", ") });
    if let Some(g) = &r.guest {
        println!(
            "guest            {} at CPL{}; guest-writable xfeatures {}; hardware XCR0 {}",
            if g.runs { "programs run" } else { "programs do not run" },
            g.cpl,
            g.writable,
            if g.hw_xcr0_follows_guest { "follows the guest's" } else { "stays the host's (pvm-hw-xcr0)" }
        );
    }
    for e in &r.quirk_evidence {
        println!("  evidence: {e}");
    }
}

/// `fuzz`'s exit status: 130 if interrupted (SIGINT/SIGTERM), else 1 with new findings, else 0.
fn exit_status(s: &Summary) -> i32 {
    if s.interrupted {
        130
    } else if s.new_signatures.is_empty() {
        0
    } else {
        1
    }
}

/// The summary's last line: what the exit status means.
fn result_line(s: &Summary, code: i32) -> String {
    let n = s.new_signatures.len();
    let found = match n {
        0 => "no new findings".to_string(),
        1 => "1 new finding".to_string(),
        n => format!("{n} new findings"),
    };
    if code == 130 {
        format!("result           interrupted, {found} (exit 130)")
    } else {
        format!("result           {found} (exit {code})")
    }
}

/// `fuzz --resume` must find a campaign in `workdir` run the same way (backend, contract,
/// quirks, seed if given, jobs); without `--resume` a stored campaign is refused. Returns the
/// stored state (checked against its schema) when resuming.
fn check_resume(workdir: &Path, resume: bool, backend: &str, model: &ModelConfig, seed: Option<u64>, jobs: u64) -> Result<Option<Summary>> {
    let main = workdir.join("campaign.json");
    let worker0 = workdir.join("workers").join("0").join("campaign.json");
    let state = [&main, &worker0].into_iter().find(|p| p.exists());
    let Some(state) = state else {
        if resume {
            bail!("--resume: {} holds no campaign to continue (no {})", workdir.display(), main.display());
        }
        return Ok(None);
    };
    if !resume {
        bail!("{} holds a campaign: pass --resume to continue it, or use another --workdir", workdir.display());
    }
    let old = campaign::load_state(state)?;
    let w = workdir.display();
    // `kvm` and `kvm(fresh)` (--no-pool) run the same kernel.
    let base = |b: &str| b.trim_end_matches("(fresh)").to_string();
    if base(&old.backend) != base(backend) {
        bail!("--resume: the campaign in {w} ran backend {}, not {backend}", old.backend);
    }
    if old.contract != model.contract.name() {
        bail!("--resume: the campaign in {w} ran contract {}, not {}", old.contract, model.contract.name());
    }
    let quirks: Vec<String> = model.quirks.iter().map(|q| q.name().to_string()).collect();
    if old.quirks != quirks {
        bail!("--resume: the campaign in {w} ran quirks [{}], not [{}]", old.quirks.join(", "), quirks.join(", "));
    }
    if let Some(seed) = seed.filter(|s| *s != old.seed) {
        bail!("--resume: the campaign in {w} ran seed {}, not {seed}", old.seed);
    }
    let old_jobs = if state == &worker0 { old.jobs.unwrap_or(2) } else { old.jobs.unwrap_or(1) };
    if state == &main && old_jobs != jobs {
        bail!("--resume: the campaign in {w} ran --jobs {old_jobs}, not {jobs}");
    }
    Ok(Some(old))
}

/// Take the lock at `path` (waiting up to `wait`), or fail with one line naming the holder.
fn lock_workdir(path: &Path, workdir: &Path, wait: Duration, stop: &AtomicBool) -> Result<xsave_runner::store::Lock> {
    match xsave_runner::store::lock_waiting(path, wait, stop).with_context(|| format!("cannot lock {}", path.display()))? {
        Ok(l) => Ok(l),
        Err(holder) => bail!("{} is in use by {holder} (lock {}); wait for it or use another --workdir", workdir.display(), path.display()),
    }
}

fn print_summary(s: &Summary) {
    if !s.groups.is_empty() {
        println!("groups           {} (one per violated rule, ioctl and class)", s.groups.len());
        for g in &s.groups {
            println!("  {}", g.title);
            println!("    key {}  cases {}", g.key, g.cases);
            if let Some((sig, n)) = &g.smallest {
                println!("    smallest reproducer {sig} ({n} steps)");
            }
            for sig in &g.signatures {
                println!("      {sig}");
            }
        }
    }
    println!("backend          {}", s.backend);
    println!("oracle           {} quirks [{}]", s.contract, s.quirks.join(", "));
    println!("seed             {}", s.seed);
    println!("execs            {}{}", s.execs, if s.resumed { " (resumed)" } else { "" });
    println!("execs/s          {:.0}", s.execs_per_sec);
    println!("divergent cases  {}", s.divergent_cases);
    if s.guest_runs > 0 {
        let exits: Vec<String> = s.guest_exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("guest runs       {} ({})", s.guest_runs, exits.join(", "));
    }
    if s.agree_unpredicted > 0 {
        println!("agree, partly    {} (cases that agree but left host-owned bytes unpredicted)", s.agree_unpredicted);
    }
    for (c, n) in &s.by_class {
        println!("  {c:<15} {n}");
    }
    if s.explained_by_quirk > 0 {
        println!("  explained by a host quirk: {}", s.explained_by_quirk);
    }
    println!("findings         {} ({} new, {} known issues)", s.findings, s.new_signatures.len(), s.known_signatures.len());
    if s.known_issue_cases > 0 {
        println!("  known issues (not new): {} cases", s.known_issue_cases);
    }
    if s.corpus > 0 {
        println!(
            "contract rules   {}/{} reached, {} coverage points, corpus {}",
            s.rules_covered, s.rules_total, s.coverage_points, s.corpus
        );
    }
    if s.interrupted {
        println!("interrupted      yes (state saved; continue with --resume)");
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Probe { json } => {
            let r = probe::probe()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_probe(&r);
            }
            Ok(0)
        }
        Cmd::Bench { sub: Some(BenchSub::Detect { seeds, budget, json }), .. } => {
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
        Cmd::Bench { backend: BenchBackend { backend: Some(k) }, seconds, .. } => {
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
            let model = ModelConfig { quirks: be.host().quirks.clone(), ..ModelConfig::default() };
            let rate = xsave_runner::bench::backend_cases_per_sec(&mut be, &model, seconds)?;
            let backend_r = serde_json::json!({ "name": be.name(), "cases_per_sec": rate });
            drop(be);
            let both = serde_json::json!({ "lab": { "kernel": kern.id, "bench": lab_r, "backend": backend_r }, "host": host_r });
            println!("{}", serde_json::to_string_pretty(&both)?);
            Ok(0)
        }
        Cmd::Fuzz {
            backend,
            oracle,
            iterations,
            duration,
            seed,
            workdir,
            resume,
            json,
            minimize_budget,
            narrow_cpuid,
            no_feedback,
            no_guest,
            no_fpu,
            jobs,
            worker,
            hub,
        } => {
            let (mut be, host, fingerprint) = open_backend(&backend, &oracle)?;
            let model = model_config(&oracle, &host)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install signal handler")?;
            }
            // One owner per workdir: the campaign (the parent of a parallel one) holds
            // WORKDIR/lock; each worker holds WORKDIR/workers/<k>/lock.
            let mut _locks = Vec::new();
            let mut stored = None;
            if worker.is_none() {
                if resume && !workdir.join("campaign.json").exists() && !workdir.join("workers").exists() {
                    check_resume(&workdir, resume, &be.name(), &model, seed, jobs)?;
                }
                std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
                _locks.push(lock_workdir(&workdir.join("lock"), &workdir, Duration::ZERO, &stop)?);
                stored = check_resume(&workdir, resume, &be.name(), &model, seed, jobs)?;
                // Workers of an earlier run (their parent killed) may still be finishing:
                // wait for them before touching the shared directories.
                if let Ok(d) = std::fs::read_dir(workdir.join("workers")) {
                    for e in d.flatten().filter(|e| e.path().is_dir()) {
                        lock_workdir(&e.path().join("lock"), &workdir, Duration::from_secs(30), &stop)?;
                    }
                }
                for line in campaign::recover(&workdir) {
                    eprintln!("xsave-rig: {}", escape(&line));
                }
            }
            // Totals for the campaign: as given, else as stored (on resume), else 10000 cases.
            let (iterations, duration) = match (iterations, duration, &stored) {
                (None, None, Some(old)) => (old.iterations, old.duration_secs.map(Duration::from_secs_f64)),
                (i, d, _) => (i, d),
            };
            let (iterations, duration) = match (iterations, duration) {
                (None, None) => (Some(10_000), None),
                (i, d) => (i, d),
            };
            let seed = seed.unwrap_or(1);
            std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
            let fp_path = workdir.join("host.json");
            if !fp_path.exists() {
                xsave_runner::store::write_atomic(&fp_path, &serde_json::to_vec_pretty(&fingerprint)?)
                    .with_context(|| format!("cannot write {}", fp_path.display()))?;
            }
            let mut sync = match worker {
                None => hub_cmd::start_fuzz_sync(&hub, &workdir, &fingerprint, &be.name(), &host, &model, jobs <= 1)?,
                Some(_) => None,
            };
            let inbox = sync.as_mut().and_then(|s| s.inbox.take());
            if jobs > 1 && worker.is_none() {
                let mut main = stored.unwrap_or_else(|| Summary {
                    backend: be.name(),
                    contract: model.contract.name().to_string(),
                    quirks: model.quirks.iter().map(|q| q.name().to_string()).collect(),
                    seed,
                    jobs: Some(jobs),
                    corpus_order: Some(campaign::corpus_names(&workdir.join("corpus"))),
                    ..Summary::default()
                });
                main.iterations = iterations;
                main.duration_secs = duration.map(|d| d.as_secs_f64());
                let state = workdir.join("campaign.json");
                xsave_runner::store::write_atomic(&state, &serde_json::to_vec_pretty(&main)?)
                    .with_context(|| format!("cannot write {}", state.display()))?;
                // The workers open backends of their own (a lab guest each).
                drop(be);
                let code = run_jobs(jobs, &workdir, json, &stop, oracle.host_facts.is_none(), &main);
                if let Some(s) = sync {
                    eprintln!("{}", hub_cmd::summary_line(&s.finish()));
                }
                return code;
            }
            let worker = match worker
                .as_deref()
                .map(|w| w.split_once('/').and_then(|(k, n)| Some((k.parse::<u64>().ok()?, n.parse::<u64>().ok()?))))
            {
                None => None,
                Some(Some((k, n))) if k < n => {
                    xsave_runner::sys::die_with_parent();
                    let dir = workdir.join("workers").join(k.to_string());
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    _locks.push(lock_workdir(&dir.join("lock"), &workdir, Duration::from_secs(30), &stop)?);
                    Some((k, n))
                }
                Some(_) => bail!("--worker takes K/N with K < N"),
            };
            let tty = std::io::stderr().is_terminal() && !json;
            let progress: Option<campaign::Progress> = if tty {
                Some(Box::new(|s: &Summary| {
                    eprint!(
                        "\r[{:>6.0}s] execs {:>9}  {:>7.0}/s  rules {}/{}  corpus {:>5}  divergent {:>6}  findings {:>4}   ",
                        s.seconds, s.execs, s.execs_per_sec, s.rules_covered, s.rules_total, s.corpus, s.divergent_cases, s.findings
                    )
                }))
            } else {
                None
            };
            let total = iterations;
            // A parallel campaign's workers start from the corpus view the parent recorded.
            let initial_corpus = match worker {
                Some(_) => campaign::load_state(&workdir.join("campaign.json"))?.corpus_order,
                None => None,
            };
            let cfg = CampaignConfig {
                initial_corpus,
                seed,
                iterations: match (total, worker) {
                    (Some(t), Some((k, n))) => Some(t.saturating_sub(k).div_ceil(n)),
                    (t, _) => t,
                },
                duration,
                workdir: Some(workdir),
                resume,
                model,
                stop,
                progress,
                minimize_budget,
                narrow_cpuid,
                feedback: !no_feedback,
                stop_on_class: None,
                worker,
                guest: !no_guest,
                fpu: !no_fpu,
                inbox,
            };
            let s = campaign::run(be.as_mut(), cfg);
            let hub_stats = sync.map(|x| x.finish());
            let s = s?;
            if tty {
                eprintln!();
            }
            let code = exit_status(&s);
            if json {
                let mut v = serde_json::to_value(&s)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("corpus_order");
                    o.remove("own_signatures");
                }
                v["exit_status"] = serde_json::json!(code);
                if let Some(h) = &hub_stats {
                    v["hub"] = serde_json::to_value(h)?;
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_summary(&s);
                if let Some(h) = &hub_stats {
                    println!("{}", hub_cmd::summary_line(h));
                }
                println!("{}", result_line(&s, code));
            }
            Ok(code)
        }
        Cmd::Hub { cmd } => hub_cmd::run(cmd),
        Cmd::Replay { files, backend, oracle, json } => {
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
                    if log.is_empty() { verdict } else { Verdict::Diverge(Box::new(xsave_oracle::diff::kernel_splat(&case, &model, log))) };
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
                        model.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
                    );
                    print!("{}", xsave_reports::verdict_text(&case, &host, &verdict, &expected, &observed));
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(code)
        }
        Cmd::Minimize { case, output, budget, backend, oracle } => {
            let (c, raw) = load_case_or_raw(&case)?;
            let (mut be, host, _) = open_backend(&backend, &oracle)?;
            let model = model_config(&oracle, &host)?;
            let Some(sig) = minimize::signature_of(be.as_mut(), &host, &model, &c)? else {
                bail!("{}: the case does not diverge on {} (oracle {}), nothing to minimize", case.display(), be.name(), model.contract);
            };
            let (min, stats) = minimize::minimize(be.as_mut(), &host, &model, &c, &sig, budget)?;
            let out = output.unwrap_or_else(|| case.with_extension("min"));
            write_file(&out, &min.encode())?;
            if raw {
                println!("input      {} {RAW_LABEL}", case.display());
            }
            println!("signature  {sig}");
            println!("steps      {} -> {}", stats.steps_before, stats.steps_after);
            println!("bytes      {} -> {}", stats.bytes_before, stats.bytes_after);
            println!("execs      {}{}", stats.execs, if stats.budget_exhausted { " (budget exhausted)" } else { "" });
            println!("written    {}", out.display());
            Ok(0)
        }
        Cmd::Repro { case, c: _, output, oracle } => {
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
                model.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
            );
            Ok(0)
        }
        Cmd::Report { workdir, output } => {
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
        Cmd::Migrate { from, to, cases, iterations, seed, json } => {
            let (src, dst) = (load_target(&from)?, load_target(&to)?);
            let list: Vec<(String, Case)> = match cases {
                Some(dir) => {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                        .with_context(|| format!("cannot read {}", dir.display()))?
                        .flatten()
                        .map(|e| e.path())
                        .collect();
                    files.sort();
                    files.iter().map(|f| load_case(f).map(|c| (f.display().to_string(), c))).collect::<Result<_>>()?
                }
                None => (0..iterations.unwrap_or(1000)).map(|i| (format!("seed {seed} case {i}"), campaign::case_for(seed, i))).collect(),
            };
            let results: Vec<xsave_runner::migrate::Migration> =
                list.iter().filter_map(|(l, c)| xsave_runner::migrate::migrate_case(l, c, &src, &dst)).collect();
            let count = |v: &str| results.iter().filter(|m| m.check.verdict == v).count();
            let unmasked = results.iter().filter(|m| !m.unmasked.is_empty()).count();
            let summary = serde_json::json!({
                "from": {"file": from, "contract": src.model.contract, "quirks": src.model.quirks},
                "to": {"file": to, "contract": dst.model.contract, "quirks": dst.model.quirks},
                "cases": list.len(), "saved_states": results.len(),
                "loads": count("loads"), "loads_with_loss": count("loads-with-loss"), "refused": count("refused"), "config_refused": count("config-refused"),
                "unmasked_saves": unmasked,
                "examples": results.iter().filter(|m| m.check.verdict != "loads" || !m.unmasked.is_empty()).take(10).collect::<Vec<_>>(),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "from {} ({} [{}]) to {} ({} [{}])",
                    from.display(),
                    src.model.contract,
                    quirk_names(&src.model),
                    to.display(),
                    dst.model.contract,
                    quirk_names(&dst.model)
                );
                println!("cases {}  saved states {}", list.len(), results.len());
                println!(
                    "loads {}  loads with loss {}  refused {}  guest config refused {}",
                    count("loads"),
                    count("loads-with-loss"),
                    count("refused"),
                    count("config-refused")
                );
                println!("unmasked saves (source saved features its guest does not have): {unmasked}");
                for m in results.iter().filter(|m| m.check.verdict != "loads" || !m.unmasked.is_empty()).take(10) {
                    println!(
                        "  {}: saved {} -> {} ({}){}",
                        m.case,
                        m.saved_xstate_bv,
                        m.check.verdict,
                        m.check.reason,
                        if m.unmasked.is_empty() { String::new() } else { format!(" [unmasked save: {}]", m.unmasked.join("|")) }
                    );
                }
            }
            Ok(if count("refused") + count("loads-with-loss") > 0 { 1 } else { 0 })
        }
        Cmd::CheckState { state, target, guest_cpuid, json } => {
            let bytes = read_input(&state, caps::STATE)?;
            let dst = load_target(&target)?;
            let xsave2 = xsave2_size(&dst.host);
            if bytes.len() != 4096 && bytes.len() != xsave2 {
                bail!(
                    "{}: {} bytes; a saved kvm_xsave image is 4096 bytes or the target's XSAVE2 size ({xsave2})",
                    state.display(),
                    bytes.len()
                );
            }
            let cpuid = match guest_cpuid {
                None => None,
                Some(p) => {
                    let text = read_text(&p, caps::JSON)?;
                    let t = match serde_json::from_str::<xsave_oracle::case::CpuidTable>(&text) {
                        Ok(t) => t,
                        Err(_) => {
                            let entries: Vec<xsave_oracle::case::CpuidEntry> = serde_json::from_str(&text)
                                .with_context(|| format!("{}: neither a CPUID table nor an array of entries", p.display()))?;
                            xsave_oracle::case::CpuidTable { base: xsave_oracle::case::CpuidBase::Empty, entries, reverse: false }
                        }
                    };
                    Some(t)
                }
            };
            let setup: Vec<xsave_oracle::Op> = cpuid.into_iter().map(xsave_oracle::Op::SetCpuid2).collect();
            let r = xsave_runner::migrate::check_state(&bytes, &setup, &dst, None);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("target            {} ({} [{}])", target.display(), dst.model.contract, quirk_names(&dst.model));
                println!("state XSTATE_BV   {}", r.state_xstate_bv);
                println!("KVM_SET_XSAVE     {} ({})", r.set_ret, r.verdict);
                println!("reason            {}", r.reason);
                if let Some(rule) = &r.rule {
                    println!("rule              {rule}");
                }
                if let Some(bv) = &r.restored_xstate_bv {
                    println!("KVM_GET_XSAVE     XSTATE_BV {bv}");
                }
                if !r.lost.is_empty() {
                    println!("lost              {}", r.lost.join(", "));
                }
            }
            Ok(if r.verdict == "loads" { 0 } else { 1 })
        }
        Cmd::Lab { cmd: LabCmd::Fetch { kernel, kernel_image, modules } } => {
            let k = match (kernel, kernel_image) {
                (_, Some(img)) => lab::local_kernel(&img, modules.as_deref())?,
                (Some(spec), None) => lab::kernel(&spec)?,
                (None, None) => bail!("lab fetch needs a kernel spec (debian:6.12, …) or --kernel-image PATH"),
            };
            println!("{}  release {}  {} modules  ({})", k.id, k.release, k.modules.len(), k.packages.join(", "));
            Ok(0)
        }
        Cmd::Lab { cmd: LabCmd::Run { kernel, timeout, scratch, init_script, input, output, args } } => {
            let k = lab::kernel(&kernel)?;
            let init = match init_script {
                Some(p) => Some(read_text(&p, caps::JSON)?),
                None => None,
            };
            let scratch = scratch.map_or_else(|| lab::Scratch::fresh(&k), |s| lab::Scratch::at(&s));
            let job = lab::Job { args, inputs: input, outputs: output, init };
            run_in_lab(&k, &job, &scratch, Duration::from_secs(timeout))
        }
        Cmd::LabServe => {
            lab::serve()?;
            Ok(0)
        }
        Cmd::ExecCases { dir, workdir, only, full } => {
            let only: Option<Vec<String>> = match only {
                Some(p) => Some(read_text(&p, caps::JSON)?.lines().map(str::to_string).collect()),
                None => None,
            };
            let cases = read_case_dir(&dir)?.into_iter().filter(|(n, _)| only.as_ref().is_none_or(|o| o.contains(n))).collect::<Vec<_>>();
            let report = probe::probe()?;
            let recs = xsave_runner::matrix::exec_cases(&report, &cases, full)?;
            std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
            write_file(&workdir.join("probe.json"), &serde_json::to_vec_pretty(&report)?)?;
            let mut lines = String::new();
            for r in &recs {
                lines.push_str(&serde_json::to_string(r)?);
                lines.push('\n');
            }
            write_file(&workdir.join("records.jsonl"), lines.as_bytes())?;
            Ok(0)
        }
        Cmd::Lab { cmd: LabCmd::Matrix { kernels, host, cases, iterations, seed, narrow_cpuid, guest, workdir, timeout, json } } => {
            let m = run_matrix(&kernels, host, cases, iterations, seed, narrow_cpuid, guest, &workdir, Duration::from_secs(timeout))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print!("{}", xsave_runner::matrix::markdown(&m));
            }
            Ok(0)
        }
        Cmd::Corpus { cmd: CorpusCmd::Merge { dirs, output, structural } } => {
            let (added, skipped) = xsave_runner::corpus::merge(&dirs, &output, structural)?;
            for sk in &skipped {
                eprintln!("xsave-rig: skipped {}", escape(sk));
            }
            println!("{added} new cases merged into {}", output.display());
            Ok(0)
        }
        Cmd::Corpus { cmd: CorpusCmd::Minimize { dir, output, oracle } } => {
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
        Cmd::Corpus { cmd: CorpusCmd::Pack { dir, output, oracle } } => {
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
        Cmd::Corpus { cmd: CorpusCmd::Unpack { file, output } } => {
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
        Cmd::Corpus { cmd: CorpusCmd::Coverage { dir, oracle, json } } => {
            let (host, _) = host_facts(&oracle, false)?;
            let model = model_config(&oracle, &host)?;
            let (cases, skipped, raw) = xsave_runner::corpus::read_dir_structural(&dir)?;
            let mut reach: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (name, _, c) in &cases {
                let exp = xsave_oracle::predict(c, &host, &model);
                for p in xsave_oracle::coverage::points(c, &exp) {
                    reach.entry(p.to_string()).or_default().push(name.clone());
                }
            }
            let rules: Vec<(&str, usize)> =
                xsave_oracle::rules::Rule::ALL.iter().map(|r| (r.id(), reach.get(r.id()).map_or(0, |v| v.len()))).collect();
            let unreached: Vec<&str> = rules.iter().filter(|(_, n)| *n == 0).map(|(id, _)| *id).collect();
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
                    quirk_names(&model)
                );
                for (p, cs) in &reach {
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
        Cmd::Case { cmd: CaseCmd::Show { file } } => {
            let (case, raw) = load_case_or_raw(&file)?;
            if raw {
                eprintln!("xsave-rig: {} {RAW_LABEL}", file.display());
            }
            println!("{}", case.to_json());
            Ok(0)
        }
        Cmd::Case { cmd: CaseCmd::Encode { file, output } } => {
            let case = load_case(&file)?;
            write_file(&output, &case.encode())?;
            Ok(0)
        }
        Cmd::Bench { seconds, oracle, json, .. } => {
            let (host, _) = host_facts(&oracle, true)?;
            let model = model_config(&oracle, &host)?;
            let r = xsave_runner::bench::bench(&host, &model, seconds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("raw ioctls/s        {:.0}  (KVM_SET_XSAVE+KVM_GET_XSAVE loop, one vCPU, no oracle)", r.raw_ioctls_per_sec);
                println!("rig ioctls/s        {:.0}  (all ioctls incl. vCPU resets)", r.rig_ioctls_per_sec);
                println!("ratio               {:.3}", r.ratio);
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
                    "xsave-only rig      {:.0} ioctls/s, ratio {:.3} (cases restricted to the raw loop's ioctls)",
                    r.xsave_only_ioctls_per_sec, r.xsave_only_ratio
                );
                for (k, (n, us)) in &r.ioctls {
                    println!("  {k:<20} {n:>9} calls  {us:>7.2} us each");
                }
            }
            Ok(0)
        }
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
