//! `xsave-rig bench`: raw ioctl throughput next to the rig's, measured in the same run.

use crate::campaign::case_for;
use crate::kvm::KvmBackend;
use crate::sys::{self, AlignedBuf};
use crate::{open_kvm, Backend, BackendError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xsave_oracle::case::XsaveImage;
use xsave_oracle::judge::judge;
use xsave_oracle::xfeatures::FPSSE;
use xsave_oracle::{Case, HostFacts, ModelConfig, Op};

/// Bench result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// (a) raw `KVM_SET_XSAVE`+`KVM_GET_XSAVE` loop on one vCPU, ioctls/s.
    pub raw_ioctls_per_sec: f64,
    /// (b) the rig checking random cases, every ioctl it issues (case steps + vCPU resets)/s.
    pub rig_ioctls_per_sec: f64,
    /// rig / raw.
    pub ratio: f64,
    /// (b) counting only the ioctls of case steps (no resets), per second.
    pub rig_case_ioctls_per_sec: f64,
    /// Cases checked per second.
    pub cases_per_sec: f64,
    /// Share of the rig's wall time per phase: generate, execute (KVM), judge (oracle+diff).
    pub time_share: TimeShare,
    /// Share of the rig's wall time spent inside ioctls (the rest is the rig's own work).
    pub in_kernel_share: f64,
    /// Per ioctl kind in the rig loop: calls and mean microseconds per call.
    pub ioctls: BTreeMap<String, (u64, f64)>,
    /// Mean microseconds of one ioctl in the raw loop.
    pub raw_us_per_ioctl: f64,
    /// (c) the rig on random cases restricted to XSAVE ioctls (the raw loop's op mix): ioctls/s.
    pub xsave_only_ioctls_per_sec: f64,
    /// (c) / (a): the rig's own overhead on the same kind of ioctls.
    pub xsave_only_ratio: f64,
    /// Seconds measured per side.
    pub seconds: f64,
}

/// Where the rig's time goes.
#[derive(Clone, Debug, Serialize)]
pub struct TimeShare {
    /// Generating cases.
    pub generate: f64,
    /// Executing on KVM (ioctls, buffer rendering).
    pub execute: f64,
    /// Predicting and diffing.
    pub judge: f64,
}

/// Run both loops for `seconds` each.
pub fn bench(host: &HostFacts, model: &ModelConfig, seconds: f64) -> Result<BenchReport, BackendError> {
    let dur = Duration::from_secs_f64(seconds);
    // (a) raw loop.
    let kvm = open_kvm()?;
    let vm = kvm.create_vm().map_err(|e| BackendError::Setup(e.to_string()))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| BackendError::Setup(e.to_string()))?;
    let size = crate::kvm::xsave_buffer_size(&kvm);
    let mut buf = AlignedBuf::new(size);
    XsaveImage::init(FPSSE).render_into(host, buf.bytes_mut());
    let mut out = AlignedBuf::new(size);
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            sys::set_xsave(&vcpu, &mut buf).map_err(|e| BackendError::Setup(format!("KVM_SET_XSAVE errno {e}")))?;
            sys::get_xsave(&vcpu, &mut out).map_err(|e| BackendError::Setup(format!("KVM_GET_XSAVE errno {e}")))?;
        }
        raw += 512;
    }
    let raw_rate = raw as f64 / start.elapsed().as_secs_f64();
    drop((vcpu, vm));
    // (b) the rig on its normal case mix; (c) the rig on XSAVE-only cases.
    let b = rig_loop(host, model, dur, |c| c)?;
    let c = rig_loop(host, model, dur, xsave_only)?;
    Ok(BenchReport {
        raw_ioctls_per_sec: raw_rate,
        rig_ioctls_per_sec: b.ioctls_per_sec,
        ratio: b.ioctls_per_sec / raw_rate,
        rig_case_ioctls_per_sec: b.case_ioctls_per_sec,
        cases_per_sec: b.cases_per_sec,
        time_share: b.share,
        in_kernel_share: b.in_kernel,
        ioctls: b.ioctls,
        raw_us_per_ioctl: 1e6 / raw_rate,
        xsave_only_ioctls_per_sec: c.ioctls_per_sec,
        xsave_only_ratio: c.ioctls_per_sec / raw_rate,
        seconds,
    })
}

/// Keep only the XSAVE ioctls of a case (no CPUID, XCRS or new vCPUs).
fn xsave_only(mut case: Case) -> Case {
    case.config = Default::default();
    case.ops.retain(|op| matches!(op, Op::SetXsave(_) | Op::GetXsave | Op::GetXsave2 | Op::RestoreLast { .. }));
    if case.ops.is_empty() {
        case.ops.push(Op::GetXsave);
    }
    case
}

struct RigRun {
    ioctls_per_sec: f64,
    case_ioctls_per_sec: f64,
    cases_per_sec: f64,
    share: TimeShare,
    in_kernel: f64,
    ioctls: BTreeMap<String, (u64, f64)>,
}

fn rig_loop(host: &HostFacts, model: &ModelConfig, dur: Duration, shape: impl Fn(Case) -> Case) -> Result<RigRun, BackendError> {
    let mut backend = KvmBackend::new(host.clone(), true)?;
    let (mut tg, mut te, mut tj) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut cases, mut steps) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        let t0 = Instant::now();
        let case = shape(case_for(0xbe4c, cases));
        let t1 = Instant::now();
        let obs = backend.execute(&case)?;
        let t2 = Instant::now();
        let _ = judge(&case, host, model, &obs);
        let t3 = Instant::now();
        tg += t1 - t0;
        te += t2 - t1;
        tj += t3 - t2;
        cases += 1;
        steps += case.steps().iter().filter(|(_, op)| **op != Op::NewVcpu).count() as u64;
    }
    let el = start.elapsed().as_secs_f64();
    let kernel_ns: u64 = backend.ioctl_stats().values().map(|s| s.nanos).sum();
    let total = (tg + te + tj).as_secs_f64().max(1e-9);
    Ok(RigRun {
        ioctls_per_sec: backend.ioctls() as f64 / el,
        case_ioctls_per_sec: steps as f64 / el,
        cases_per_sec: cases as f64 / el,
        share: TimeShare { generate: tg.as_secs_f64() / total, execute: te.as_secs_f64() / total, judge: tj.as_secs_f64() / total },
        in_kernel: kernel_ns as f64 / 1e9 / el,
        ioctls: backend
            .ioctl_stats()
            .iter()
            .map(|(k, s)| (k.to_string(), (s.count, s.nanos as f64 / 1e3 / s.count.max(1) as f64)))
            .collect(),
    })
}

/// Cases checked per second through any backend (the rig's normal case mix, generated and
/// judged here, executed by `backend`) over `seconds`: for the lab backend, where execution
/// crosses into a guest.
pub fn backend_cases_per_sec(backend: &mut dyn Backend, model: &ModelConfig, seconds: f64) -> Result<f64, BackendError> {
    let dur = Duration::from_secs_f64(seconds);
    let host = backend.host().clone();
    let start = Instant::now();
    let mut cases = 0u64;
    while start.elapsed() < dur {
        let case = case_for(0xbe4c, cases);
        let obs = backend.execute(&case)?;
        let _ = backend.kernel_log();
        let _ = judge(&case, &host, model, &obs);
        cases += 1;
    }
    Ok(cases as f64 / start.elapsed().as_secs_f64())
}

/// One row of the detection benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct DetectRow {
    /// Engine.
    pub engine: String,
    /// Historical contract the model backend runs.
    pub contract: String,
    /// Class counted as detection.
    pub class: String,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that found it within the budget.
    pub found: usize,
    /// Median execs to the first divergence of the class.
    pub median_execs: Option<u64>,
    /// Median seconds.
    pub median_seconds: Option<f64>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

/// Each historical contract (model backend) judged by the V3 oracle, with the built-in
/// engine (feedback on), over `seeds` seeds: execs and seconds to the first divergence of the
/// class that contract's bug shows as.
pub fn detect(seeds: u64, budget: u64, libfuzzer: Option<&std::path::Path>) -> Result<Vec<DetectRow>, crate::campaign::CampaignError> {
    use crate::campaign::{run, CampaignConfig};
    use xsave_oracle::verdict::Class;
    use xsave_oracle::Contract;
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut rows = Vec::new();
    for (contract, class) in
        [(Contract::V2b, Class::Errno), (Contract::V2a, Class::Errno), (Contract::V1, Class::Header), (Contract::V0, Class::LegacyArea)]
    {
        let mut hits = Vec::new();
        for seed in 0..seeds {
            let mut be = crate::ModelBackend::new(host.clone(), ModelConfig::new(contract, vec![]));
            let cfg = CampaignConfig {
                guest: false,
                feedback: true,
                stop_on_class: Some(class),
                ..CampaignConfig::new(1000 + seed, Some(budget))
            };
            if let Some(h) = run(&mut be, cfg)?.first_hit {
                hits.push(h);
            }
        }
        let row = |engine: &str, hits: &[(u64, f64)]| DetectRow {
            engine: engine.into(),
            contract: contract.name().into(),
            class: class.name().into(),
            seeds: seeds as usize,
            found: hits.len(),
            median_execs: median(hits.iter().map(|h| h.0).collect()),
            median_seconds: median(hits.iter().map(|h| h.1).collect()),
        };
        rows.push(row("built-in", &hits));
        if let Some(bin) = libfuzzer {
            let hits: Vec<(u64, f64)> = (0..seeds).filter_map(|seed| libfuzzer_hit(bin, contract, class, seed, budget)).collect();
            rows.push(row("libFuzzer", &hits));
        }
    }
    Ok(rows)
}

/// Run the `detect_model` libFuzzer target from an empty corpus until it crashes (detects).
fn libfuzzer_hit(
    bin: &std::path::Path,
    contract: xsave_oracle::Contract,
    class: xsave_oracle::verdict::Class,
    seed: u64,
    budget: u64,
) -> Option<(u64, f64)> {
    let dir = std::env::temp_dir().join(format!("xsave-rig-detect-{}-{}-{seed}", std::process::id(), contract.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("corpus")).ok()?;
    let start = Instant::now();
    let out = std::process::Command::new(bin)
        .env("XSAVE_RIG_DETECT_CONTRACT", contract.name())
        .env("XSAVE_RIG_DETECT_CLASS", class.name())
        .arg(format!("-seed={}", seed + 1))
        .arg(format!("-runs={budget}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", dir.display()))
        .arg(dir.join("corpus"))
        .output()
        .ok()?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    let crashed = text.contains("deadly signal");
    let execs = text.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")).and_then(|v| v.trim().parse().ok());
    match (crashed, execs) {
        (true, Some(e)) => Some((e, secs)),
        _ => None,
    }
}
