//! Command-line argument types and value parsers shared by several commands.

use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;
use xsave_oracle::{Contract, ModelConfig, Quirk};

#[derive(clap::Args, Clone)]
pub struct OracleArgs {
    /// Contract version the oracle predicts under: V0, V1, V2a, V2b or V3.
    #[arg(long, default_value = "V3", value_parser = parse_contract)]
    pub contract: Contract,
    /// Host quirks the oracle models: `auto` (those the probe found), `none` (strict
    /// upstream), or a comma-separated list of quirk names.
    #[arg(long, default_value = "auto")]
    pub quirks: String,
    /// Host facts from a saved `probe --json` (default: probe this host, or a synthetic
    /// Intel-layout host for model backends when /dev/kvm is absent). With `--backend kvm`
    /// they must describe this host (supported XCR0, host XCR0, component layout, MXCSR mask).
    #[arg(long)]
    pub host_facts: Option<PathBuf>,
    /// Use `--host-facts` with `--backend kvm` even where they differ from this host's.
    #[arg(long)]
    pub force_host_facts: bool,
}

#[derive(clap::Args, Clone)]
pub struct BackendArgs {
    /// Where cases run: `kvm` (this host's /dev/kvm), `model:V0`…`model:V3` (the oracle
    /// under that contract, standing in for a historical kernel; `+quirk` models a quirk too,
    /// e.g. `model:V3+kvm-fpu-legacy` for today's KVM_GET/SET_FPU; `+get=V`/`+set=V` take
    /// KVM_GET_XSAVE(2)'s or KVM_SET_XSAVE's contract from version V, a composite carrying two
    /// defects, e.g. `model:V3+get=V1+set=V2b`), or `lab:<kernel>` (the cases
    /// run on the KVM of that kernel's lab guest under QEMU, booted once, e.g. `lab:debian:6.1`;
    /// see `lab fetch`).
    #[arg(long, default_value = "kvm", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Create a fresh VM for every case instead of resetting a pooled vCPU.
    #[arg(long)]
    pub no_pool: bool,
    /// Internal (for commands run in a guest with `lab run`): the name summaries,
    /// campaign.json and findings give the backend.
    #[arg(long)]
    pub backend_label: Option<String>,
    /// CPU-time bound of one guest run (KVM_RUN of a guest program) on `kvm` and `lab:`
    /// backends, e.g. 100ms, 2ms (at least 1ms). A guest stopped there (one that loops or never
    /// reaches its end) gets the `timeout` exit whatever the bound, so the bound changes what a
    /// looping guest costs, never a verdict; a bound too short for a program to finish (KVM's
    /// entry work counts: 2-5ms cut about 1 run in 10 000 on a loaded host) turns its end into a
    /// timeout (a divergence).
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_guest_timeout)]
    pub guest_timeout: Duration,
}

/// The shortest `--guest-timeout`: below it a program that ends could be cut short by its own
/// KVM_RUN entry costs.
pub const MIN_GUEST_TIMEOUT: Duration = Duration::from_millis(1);

/// `--guest-timeout`: a duration ([`parse_duration`]) of at least [`MIN_GUEST_TIMEOUT`].
pub fn parse_guest_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_GUEST_TIMEOUT {
        return Err(format!("guest timeout {s:?} is below the minimum of 1ms"));
    }
    Ok(d)
}

#[derive(Clone, PartialEq, Eq)]
pub enum BackendKind {
    Kvm,
    /// The oracle under a contract, with the quirks and per-family contracts after `+` (e.g.
    /// `model:V3+kvm-fpu-legacy`, today's KVM_GET/SET_FPU; `model:V3+get=V1+set=V2b`).
    Model(ModelConfig),
    Lab(String),
}

pub fn parse_backend(s: &str) -> Result<BackendKind, String> {
    match s {
        "kvm" => Ok(BackendKind::Kvm),
        _ => match (s.strip_prefix("model:"), s.strip_prefix("lab:")) {
            (Some(v), _) => {
                let mut parts = v.split('+');
                let mut cfg = ModelConfig::new(parse_contract(parts.next().unwrap_or(""))?, Vec::new());
                for p in parts {
                    let slot = match p.split_once('=') {
                        Some(("get", c)) => Some((&mut cfg.families.get, c)),
                        Some(("set", c)) => Some((&mut cfg.families.set, c)),
                        Some((f, _)) => return Err(format!("unknown ioctl family {f:?} in {s:?} (expected get= or set=)")),
                        None => None,
                    };
                    match slot {
                        Some((slot, _)) if slot.is_some() => return Err(format!("{p:?} given twice in {s:?}")),
                        Some((slot, c)) => *slot = Some(parse_contract(c)?),
                        None => cfg.quirks.push(Quirk::from_name(p).ok_or_else(|| format!("unknown quirk {p:?} in {s:?}"))?),
                    }
                }
                Ok(BackendKind::Model(cfg))
            }
            (_, Some(k)) if !k.is_empty() => Ok(BackendKind::Lab(k.to_string())),
            _ => Err(format!("unknown backend {s:?} (expected kvm, model:V0..V3[+quirk|+get=V|+set=V] or lab:<kernel>)")),
        },
    }
}

pub fn parse_contract(s: &str) -> Result<Contract, String> {
    Contract::parse(s).ok_or_else(|| format!("unknown contract {s:?} (expected V0, V1, V2a, V2b or V3)"))
}

/// A campaign's run time: a duration ([`parse_duration`]) or `forever`.
/// `--duration forever`: about 317 years, so it stays a valid stored total (campaign.json keeps
/// durations in seconds up to 1e10) and survives a resume.
pub const FOREVER: Duration = Duration::from_secs(10_000_000_000);

pub fn parse_run_time(s: &str) -> Result<Duration, String> {
    if s.trim() == "forever" {
        Ok(FOREVER)
    } else {
        parse_duration(s).map_err(|e| format!("{e}, or forever"))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?} (expected e.g. 90s, 1m30s, 500ms, 2h)");
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        return if v.is_finite() && v >= 0.0 { Duration::try_from_secs_f64(v).map_err(|_| bad()) } else { Err(bad()) };
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
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The cases of `lab matrix` and `lab migrate`: a directory of case files, or generated ones.
#[derive(clap::Args, Clone, Debug)]
pub struct CaseSource {
    /// Case files to run (default: generated cases).
    #[arg(long, conflicts_with = "iterations")]
    pub cases: Option<PathBuf>,
    /// Number of generated cases.
    #[arg(long, default_value_t = 1000)]
    pub iterations: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Give generated cases a guest CPUID narrower than the lab's supported set (what makes
    /// masked and unmasked saves differ).
    #[arg(long)]
    pub narrow_cpuid: bool,
    /// Generate guest runs and legacy FPU ops too (off by default: the guest model's remaining
    /// gaps on stock kernels under QEMU TCG are listed in docs/CONTRACT-RUN.md, and every
    /// stock kernel departs on KVM_SET_FPU).
    #[arg(long)]
    pub guest: bool,
    /// With --guest: guest runs only, no legacy FPU ops (every stock kernel departs on
    /// KVM_SET_FPU, docs/findings/kvm-set-fpu-xstate-bv.md).
    #[arg(long, requires = "guest")]
    pub no_fpu: bool,
}

impl CaseSource {
    /// The cases, named, with their CPUID bases rendered against one reference (the same
    /// input bytes on every kernel).
    pub fn list(&self) -> Result<Vec<(String, xsave_oracle::Case)>> {
        use xsave_oracle::gen::GenOptions;
        use xsave_runner::matrix::{generated, materialized};
        let list = match &self.cases {
            Some(d) => crate::common::read_case_dir(d)?,
            None => {
                generated(self.iterations, self.seed, self.narrow_cpuid, GenOptions { guest: self.guest, fpu: self.guest && !self.no_fpu })
            }
        };
        Ok(materialized(list))
    }
}
