//! `xsave-rig bench`: raw ioctl throughput next to the rig's, measured in the same run, in
//! alternating slices; the exec rate of a campaign under a steady stream of findings next to
//! a clean one ([`findings_load`]); and the detection benchmark ([`detect`]).

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
    /// rig / raw: the median over the A/B slices of each slice pair's ratio.
    pub ratio: f64,
    /// Spread of `ratio` over the slices.
    pub ratio_spread: Spread,
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
    /// (c) / (a): the rig's own overhead on the same kind of ioctls; median over the slices.
    pub xsave_only_ratio: f64,
    /// Spread of `xsave_only_ratio` over the slices.
    pub xsave_only_ratio_spread: Spread,
    /// Seconds measured per side.
    pub seconds: f64,
    /// Slices per side: the sides run alternately, (a) (b) (c) (a) (b) (c) …, each slice
    /// `seconds / slices` long, so drift of a noisy machine hits all sides alike.
    pub slices: usize,
}

/// The spread of a ratio measured once per slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (quartiles by nearest rank); all zero when `v` is empty.
    pub fn of(v: &[f64]) -> Spread {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let Some(&max) = v.last() else { return Spread::default() };
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Spread { min: v[0], q1: at(0.25), median: at(0.5), q3: at(0.75), max }
    }
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

/// Slices per side of [`bench`].
pub const SLICES: usize = 10;

/// Run the three loops for `seconds` each, alternating in [`SLICES`] slices.
pub fn bench(host: &HostFacts, model: &ModelConfig, seconds: f64) -> Result<BenchReport, BackendError> {
    let slice = Duration::from_secs_f64(seconds / SLICES as f64);
    // (a) raw loop.
    let kvm = open_kvm()?;
    let vm = kvm.create_vm().map_err(|e| BackendError::Setup(e.to_string()))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| BackendError::Setup(e.to_string()))?;
    let size = crate::kvm::xsave_buffer_size(&kvm);
    let mut buf = AlignedBuf::new(size);
    XsaveImage::init(FPSSE).render_into(host, buf.bytes_mut());
    let mut out = AlignedBuf::new(size);
    let mut raw_slice = |dur: Duration| -> Result<(u64, f64), BackendError> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            for _ in 0..256 {
                sys::set_xsave(&vcpu, &mut buf).map_err(|e| BackendError::Setup(format!("KVM_SET_XSAVE errno {e}")))?;
                sys::get_xsave(&vcpu, &mut out).map_err(|e| BackendError::Setup(format!("KVM_GET_XSAVE errno {e}")))?;
            }
            n += 512;
        }
        Ok((n, start.elapsed().as_secs_f64()))
    };
    // (b) the rig on its normal case mix; (c) the rig on XSAVE-only cases.
    let mut b = RigLoop::new(host, model, |c| c)?;
    let mut c = RigLoop::new(host, model, xsave_only)?;
    let (mut raw, mut raw_secs) = (0u64, 0.0f64);
    let (mut ratios, mut xratios) = (Vec::new(), Vec::new());
    for _ in 0..SLICES {
        let (n, t) = raw_slice(slice)?;
        let rate = n as f64 / t;
        (raw, raw_secs) = (raw + n, raw_secs + t);
        ratios.push(b.slice(slice)? / rate);
        xratios.push(c.slice(slice)? / rate);
    }
    let raw_rate = raw as f64 / raw_secs;
    let (b, c) = (b.finish(), c.finish());
    let (spread, xspread) = (Spread::of(&ratios), Spread::of(&xratios));
    Ok(BenchReport {
        raw_ioctls_per_sec: raw_rate,
        rig_ioctls_per_sec: b.ioctls_per_sec,
        ratio: spread.median,
        ratio_spread: spread,
        rig_case_ioctls_per_sec: b.case_ioctls_per_sec,
        cases_per_sec: b.cases_per_sec,
        time_share: b.share,
        in_kernel_share: b.in_kernel,
        ioctls: b.ioctls,
        raw_us_per_ioctl: 1e6 / raw_rate,
        xsave_only_ioctls_per_sec: c.ioctls_per_sec,
        xsave_only_ratio: xspread.median,
        xsave_only_ratio_spread: xspread,
        seconds,
        slices: SLICES,
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

/// The rig's loop, run in slices: its backend and counters live across them.
struct RigLoop<'a, F: Fn(Case) -> Case> {
    host: &'a HostFacts,
    model: &'a ModelConfig,
    shape: F,
    backend: KvmBackend,
    times: [Duration; 3],
    cases: u64,
    steps: u64,
    elapsed: Duration,
}

impl<'a, F: Fn(Case) -> Case> RigLoop<'a, F> {
    fn new(host: &'a HostFacts, model: &'a ModelConfig, shape: F) -> Result<Self, BackendError> {
        let backend = KvmBackend::new(host.clone(), true)?;
        Ok(RigLoop { host, model, shape, backend, times: [Duration::ZERO; 3], cases: 0, steps: 0, elapsed: Duration::ZERO })
    }

    /// Run for `dur`; the slice's ioctls per second.
    fn slice(&mut self, dur: Duration) -> Result<f64, BackendError> {
        let ioctls = self.backend.ioctls();
        let start = Instant::now();
        while start.elapsed() < dur {
            let t0 = Instant::now();
            let case = (self.shape)(case_for(0xbe4c, self.cases));
            let t1 = Instant::now();
            let obs = self.backend.execute(&case)?;
            let t2 = Instant::now();
            let _ = judge(&case, self.host, self.model, &obs);
            let t3 = Instant::now();
            self.times[0] += t1 - t0;
            self.times[1] += t2 - t1;
            self.times[2] += t3 - t2;
            self.cases += 1;
            self.steps += case.steps().iter().filter(|(_, op)| **op != Op::NewVcpu).count() as u64;
        }
        let el = start.elapsed();
        self.elapsed += el;
        Ok((self.backend.ioctls() - ioctls) as f64 / el.as_secs_f64())
    }

    fn finish(self) -> RigRun {
        let el = self.elapsed.as_secs_f64().max(1e-9);
        let kernel_ns: u64 = self.backend.ioctl_stats().values().map(|s| s.nanos).sum();
        let [tg, te, tj] = self.times;
        let total = (tg + te + tj).as_secs_f64().max(1e-9);
        RigRun {
            ioctls_per_sec: self.backend.ioctls() as f64 / el,
            case_ioctls_per_sec: self.steps as f64 / el,
            cases_per_sec: self.cases as f64 / el,
            share: TimeShare { generate: tg.as_secs_f64() / total, execute: te.as_secs_f64() / total, judge: tj.as_secs_f64() / total },
            in_kernel: kernel_ns as f64 / 1e9 / el,
            ioctls: self
                .backend
                .ioctl_stats()
                .iter()
                .map(|(k, s)| (k.to_string(), (s.count, s.nanos as f64 / 1e3 / s.count.max(1) as f64)))
                .collect(),
        }
    }
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

/// `bench --findings-load`: a campaign's exec rate while it keeps finding new signatures,
/// next to the same campaign on a clean backend.
#[derive(Clone, Debug, Serialize)]
pub struct FindingsLoad {
    /// The backend with findings (the oracle under a historical contract, judged by V3).
    pub loaded_backend: String,
    /// The clean backend (the V3 model, judged by V3: no divergence).
    pub clean_backend: String,
    /// Cases per second of the loaded campaign, per round.
    pub loaded_execs_per_sec: Vec<f64>,
    /// Cases per second of the clean campaign, per round.
    pub clean_execs_per_sec: Vec<f64>,
    /// loaded / clean per round.
    pub round_ratios: Vec<f64>,
    /// The median of `round_ratios`.
    pub findings_load_ratio: f64,
    /// Distinct signatures the loaded campaigns found (mean per round).
    pub signatures: f64,
    /// Cases per new signature in the loaded campaigns.
    pub execs_per_signature: f64,
    /// Seconds the loaded campaigns' minimizer took, of their `seconds` (mean per round).
    pub minimize_seconds: f64,
    /// Findings left raw at the stop (mean per round).
    pub minimize_pending: f64,
    /// Seconds per campaign.
    pub seconds: f64,
    /// Rounds: each runs the clean and the loaded campaign at the same time, on two threads,
    /// so both see the same machine (on a shared, noisy machine, runs one after the other
    /// differ by more than the effect measured).
    pub rounds: usize,
}

/// Rounds of [`findings_load`].
pub const LOAD_ROUNDS: usize = 5;

/// Run, [`LOAD_ROUNDS`] times, the same campaign (seed, feedback, guest runs, a workdir under
/// `scratch`, the default `--minimize-budget` 2000) for `seconds` on a clean backend (`model:V3`)
/// and, at the same time on another thread, on one where a third of the cases diverge and new
/// signatures keep coming (`model:V2b`, the 5.17–6.5 restrictive-load regression), both with
/// `host`'s quirks and judged by the V3 oracle modelling them (as `--quirks auto`). Each campaign is stopped from outside after `seconds`
/// (as an interrupt: the minimizer's queue is left, not drained), so each rate is the rate
/// while it fuzzes.
pub fn findings_load(host: &HostFacts, seconds: f64, scratch: &std::path::Path) -> Result<FindingsLoad, crate::campaign::CampaignError> {
    use crate::campaign::{run, CampaignConfig, Summary};
    use xsave_oracle::Contract;
    let campaign = |contract: Contract, dir: std::path::PathBuf| -> Result<Summary, crate::campaign::CampaignError> {
        let _ = std::fs::remove_dir_all(&dir);
        // The host's quirks on both sides, as `fuzz --quirks auto` runs on a kernel with them:
        // the backend shows them and the oracle models them (judging a quirky backend with a
        // quirk-free oracle would make every divergence try each quirk, which no real
        // campaign does).
        let mut be = crate::ModelBackend::new(host.clone(), ModelConfig::new(contract, host.quirks.clone()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cfg = CampaignConfig {
            model: ModelConfig::new(Contract::V3, host.quirks.clone()),
            workdir: Some(dir.clone()),
            feedback: true,
            minimize_budget: 2000,
            duration: Some(Duration::from_secs_f64(seconds * 20.0 + 60.0)),
            stop: stop.clone(),
            ..CampaignConfig::new(0x10ad, None)
        };
        let timer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let s = run(&mut be, cfg);
        let _ = timer.join();
        let _ = std::fs::remove_dir_all(&dir);
        s
    };
    let (mut loaded, mut clean, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sigs, mut execs, mut min_secs, mut pending) = (0u64, 0u64, 0.0, 0u64);
    for r in 0..LOAD_ROUNDS {
        let (c, l) = std::thread::scope(|t| {
            let c = t.spawn(|| campaign(Contract::V3, scratch.join(format!("clean-{r}"))));
            let l = campaign(Contract::V2b, scratch.join(format!("loaded-{r}")));
            (c.join().unwrap_or_else(|_| Err(crate::campaign::CampaignError::State("clean campaign thread panicked".into()))), l)
        });
        let (c, l) = (c?, l?);
        ratios.push(l.execs_per_sec / c.execs_per_sec);
        clean.push(c.execs_per_sec);
        loaded.push(l.execs_per_sec);
        sigs += l.new_signatures.len() as u64;
        execs += l.execs;
        min_secs += l.minimize_seconds;
        pending += l.minimize_pending;
    }
    let n = LOAD_ROUNDS as f64;
    Ok(FindingsLoad {
        loaded_backend: "model:V2b".into(),
        clean_backend: "model:V3".into(),
        findings_load_ratio: Spread::of(&ratios).median,
        loaded_execs_per_sec: loaded,
        clean_execs_per_sec: clean,
        round_ratios: ratios,
        signatures: sigs as f64 / n,
        execs_per_signature: execs as f64 / sigs.max(1) as f64,
        minimize_seconds: min_secs / n,
        minimize_pending: pending as f64 / n,
        seconds,
        rounds: LOAD_ROUNDS,
    })
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

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_is_order_free_and_ignores_non_finite_values() {
        let s = Spread::of(&[0.9, 0.5, f64::NAN, 0.7, 0.6, 0.8]);
        assert_eq!(s, Spread { min: 0.5, q1: 0.6, median: 0.7, q3: 0.8, max: 0.9 });
        assert_eq!(Spread::of(&[]), Spread::default());
        assert_eq!(Spread::of(&[2.0]).median, 2.0);
    }
}
