//! The built-in fuzz engine: seeded random generation, execution on a backend, judgement by
//! the oracle, atomic findings, resumable state.
//!
//! Workdir layout:
//! - `campaign.json`: seed, next iteration, counters (rewritten atomically every second);
//! - `findings/<signature>/{case.bin,case.json,verdict.json}`: one directory per distinct
//!   divergence, created atomically the moment it is found;
//! - `stats.jsonl`: one line per second (execs, execs/s, findings) for plotting.

use crate::minimize::{minimize, MinStats};
use crate::store::{create_dir_atomic, write_atomic};
use crate::{Backend, BackendError};
use arbitrary::Unstructured;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xsave_oracle::diff::{judge, Verdict};
use xsave_oracle::gen::GenOptions;
use xsave_oracle::trace::Trace;
use xsave_oracle::{Case, HostFacts, ModelConfig, Op};

/// The case for iteration `i` of a campaign seeded with `seed` (reproducible, O(1) to seek).
pub fn case_for(seed: u64, i: u64) -> Case {
    case_for_with(seed, i, GenOptions::default())
}

/// Case `i` of seed `seed` with generator options (guest runs or not).
pub fn case_for_with(seed: u64, i: u64, opts: GenOptions) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17));
    let mut bytes = [0u8; 1536];
    rng.fill_bytes(&mut bytes);
    xsave_oracle::gen::case(&mut Unstructured::new(&bytes), opts).unwrap_or_else(|_| Case { ops: vec![Op::GetXsave], ..Case::default() })
}

/// Make `case`'s guest CPUID strictly narrower than the host: its configuration exposes
/// FP|SSE plus a pseudo-random subset of `supported` that leaves out at least one supported
/// feature (when the host has any beyond FP|SSE). Deterministic in `(case, i)`.
pub fn narrow(mut case: Case, supported: u64, i: u64) -> Case {
    use xsave_oracle::case::{CpuidBase, CpuidTable};
    use xsave_oracle::xfeatures::FPSSE;
    let extra: Vec<u64> = (2..64).map(|b| 1u64 << b).filter(|b| supported & b != 0).collect();
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    let mut mask = FPSSE;
    for b in &extra {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x & 1 == 1 {
            mask |= b;
        }
    }
    if let Some(first) = extra.get((x as usize >> 8) % extra.len().max(1)) {
        mask &= !first;
    }
    let base = match case.config.cpuid.as_ref().map(|t| &t.base) {
        Some(CpuidBase::Supported { drop_leaves, .. }) => CpuidBase::Supported { xcr0_mask: mask, drop_leaves: drop_leaves.clone() },
        _ => CpuidBase::Subset { leaves: vec![1, 7, 0xd], xcr0_mask: mask },
    };
    case.config.cpuid = Some(CpuidTable { base, entries: vec![], reverse: false });
    case
}

/// A structure-aware mutant of a corpus entry, reproducible from `(seed, i)`.
pub fn mutated(corpus: &[Case], seed: u64, i: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed ^ i.wrapping_mul(0xa076_1d64_78bd_642f).rotate_left(29));
    let mut entropy = [0u8; 256];
    rng.fill_bytes(&mut entropy);
    let base = &corpus[(rng.next_u64() % corpus.len() as u64) as usize];
    Case::decode(&xsave_oracle::mutate::mutate_bytes(&base.encode(), &entropy)).unwrap_or_else(|_| base.clone())
}

/// Errors of a campaign (not findings).
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Workdir I/O.
    #[error("workdir {path}: {err}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// Workdir state mismatch.
    #[error("{0}")]
    State(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CampaignError + '_ {
    move |err| CampaignError::Io { path: path.to_path_buf(), err }
}

/// A live-progress callback.
pub type Progress = Box<dyn FnMut(&Summary)>;

/// What to run.
pub struct CampaignConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Stop after this many cases (total, including resumed ones).
    pub iterations: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Where state and findings go (none: keep findings in memory only).
    pub workdir: Option<PathBuf>,
    /// Continue the campaign in `workdir`.
    pub resume: bool,
    /// What the oracle predicts under.
    pub model: ModelConfig,
    /// Set to stop cleanly (SIGINT/SIGTERM).
    pub stop: std::sync::Arc<AtomicBool>,
    /// Called about once a second with the running summary (live progress).
    pub progress: Option<Progress>,
    /// Executions the minimizer may spend on each new finding (0: keep findings as found).
    pub minimize_budget: u64,
    /// Give every case a guest CPUID strictly narrower than the host ([`narrow`]).
    pub narrow_cpuid: bool,
    /// Contract-coverage feedback: keep cases reaching new points in `WORKDIR/corpus/` and
    /// derive half of the cases by structure-aware mutation of corpus entries.
    pub feedback: bool,
    /// Stop at the first divergence of this class (detection benchmarks).
    pub stop_on_class: Option<xsave_oracle::diff::Class>,
    /// Worker `k` of `n` in a parallel campaign: runs global iterations `k, k+n, k+2n, …`,
    /// keeps its state in `WORKDIR/workers/<k>/`, shares `findings/` and `corpus/`.
    pub worker: Option<(u64, u64)>,
    /// Generate guest runs (`KVM_RUN` of guest programs) in cases.
    pub guest: bool,
    /// Cases from elsewhere (the fleet hub's other hosts), already validated: polled about
    /// once a second and added to the mutation pool (not to `corpus/`: they are not this
    /// campaign's discoveries).
    pub inbox: Option<std::sync::mpsc::Receiver<Vec<Case>>>,
}

/// Persistent state (`campaign.json`) and the summary printed at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Backend name.
    pub backend: String,
    /// Contract the oracle predicted under.
    pub contract: String,
    /// Quirks modelled by the oracle.
    pub quirks: Vec<String>,
    /// Generator seed.
    pub seed: u64,
    /// Next iteration to run.
    pub next_iteration: u64,
    /// Cases executed (all sessions).
    pub execs: u64,
    /// Distinct findings (signatures) in the workdir.
    pub findings: u64,
    /// Diverging cases (including duplicates of known signatures).
    pub divergent_cases: u64,
    /// Guest runs executed (`KVM_RUN` steps).
    #[serde(default)]
    pub guest_runs: u64,
    /// Guest runs by how they ended (`end`, `shutdown`, ...), as observed.
    #[serde(default)]
    pub guest_exits: BTreeMap<String, u64>,
    /// Agreeing cases whose prediction left some bytes unpredicted (host-owned fields under a
    /// modelled quirk): counted apart from cases that agree on every byte.
    #[serde(default)]
    pub agree_unpredicted: u64,
    /// Diverging cases per class.
    pub by_class: BTreeMap<String, u64>,
    /// Diverging cases per signature (all sessions): what the fleet hub counts per host.
    #[serde(default)]
    pub by_signature: BTreeMap<String, u64>,
    /// Diverging cases a known host quirk explains.
    pub explained_by_quirk: u64,
    /// Seconds spent (all sessions).
    pub seconds: f64,
    /// Cases per second.
    pub execs_per_sec: f64,
    /// ioctls issued by the backend in this session.
    pub ioctls: u64,
    /// Contract rules reached so far (of [`xsave_oracle::coverage::rule_count`]).
    #[serde(default)]
    pub rules_covered: usize,
    /// Rules there are.
    #[serde(default)]
    pub rules_total: usize,
    /// Coverage points (rules and per-ioctl outcomes) reached.
    #[serde(default)]
    pub coverage_points: usize,
    /// Cases kept in the feedback corpus.
    #[serde(default)]
    pub corpus: usize,
    /// Execs and seconds at the first divergence of `stop_on_class`, when it was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_hit: Option<(u64, f64)>,
    /// Whether every case had a guest CPUID narrower than the host.
    #[serde(default)]
    pub narrow_cpuid: bool,
    /// Whether this session resumed an earlier one.
    pub resumed: bool,
    /// Whether the run was interrupted (SIGINT/SIGTERM).
    pub interrupted: bool,
    /// Signatures found, in order of discovery (this session). In the merged summary of a
    /// parallel campaign: sorted and deduplicated over the workers.
    pub new_signatures: Vec<String>,
    /// Worker processes of a parallel campaign (`fuzz --jobs N`): set in the merged
    /// `campaign.json` the parent writes, absent for a single campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
    /// Process resources at the start and end of this session.
    pub resources: Resources,
}

/// Process resources (Linux `/proc/self`): to show a long campaign leaks nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Open file descriptors at the start.
    pub fds_start: usize,
    /// Open file descriptors at the end.
    pub fds_end: usize,
    /// KVM VM file descriptors open at the end.
    pub kvm_vm_fds_end: usize,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

fn fd_links() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).map(|p| p.to_string_lossy().to_string()).collect())
        .unwrap_or_default()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// What a finding's `verdict.json` holds.
#[derive(Serialize)]
struct FindingRecord<'a> {
    verdict: &'a Verdict,
    backend: String,
    seed: u64,
    iteration: u64,
    expected: &'a Trace,
    observed: &'a Trace,
}

/// Run a campaign.
pub fn run(backend: &mut dyn Backend, mut cfg: CampaignConfig) -> Result<Summary, CampaignError> {
    let host = backend.host().clone();
    let mut s = Summary {
        backend: backend.name(),
        contract: cfg.model.contract.name().to_string(),
        quirks: cfg.model.quirks.iter().map(|q| q.name().to_string()).collect(),
        seed: cfg.seed,
        narrow_cpuid: cfg.narrow_cpuid,
        ..Summary::default()
    };
    let mut known: std::collections::HashSet<String> = Default::default();
    if let Some(dir) = &cfg.workdir {
        let state = state_dir(&cfg).unwrap_or_else(|| dir.clone()).join("campaign.json");
        std::fs::create_dir_all(dir.join("findings")).map_err(io(dir))?;
        if let Some(sd) = state_dir(&cfg) {
            std::fs::create_dir_all(&sd).map_err(io(&sd))?;
        }
        if state.exists() {
            if !cfg.resume {
                return Err(CampaignError::State(format!(
                    "{} holds a campaign: pass --resume to continue it, or use another --workdir",
                    dir.display()
                )));
            }
            let text = std::fs::read_to_string(&state).map_err(io(&state))?;
            let old: Summary = serde_json::from_str(&text)
                .map_err(|e| CampaignError::State(format!("{}: corrupt campaign state: {e}", state.display())))?;
            if old.contract != s.contract || old.quirks != s.quirks {
                return Err(CampaignError::State(format!(
                    "{}: campaign was run with contract {} quirks {:?}",
                    state.display(),
                    old.contract,
                    old.quirks
                )));
            }
            s = Summary {
                backend: s.backend,
                resumed: true,
                new_signatures: Vec::new(),
                interrupted: false,
                ioctls: 0,
                resources: Resources::default(),
                ..old
            };
            cfg.seed = s.seed;
        }
        for e in std::fs::read_dir(dir.join("findings")).map_err(io(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                known.insert(name);
            }
        }
        s.findings = known.len() as u64;
    }
    let mut points: std::collections::BTreeSet<String> = Default::default();
    let mut shapes: std::collections::HashSet<u64> = Default::default();
    let mut corpus: Vec<Case> = Vec::new();
    let corpus_dir = cfg.workdir.as_ref().map(|d| d.join("corpus"));
    if let (true, Some(cd)) = (cfg.feedback, &corpus_dir) {
        std::fs::create_dir_all(cd).map_err(io(cd))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(cd)
            .map_err(io(cd))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "case"))
            .collect();
        files.sort();
        for f in files {
            // Unreadable entries are skipped here; `corpus coverage` names them.
            if let Ok(c) = std::fs::read(&f).map_err(|_| ()).and_then(|b| Case::decode(&b).map_err(|_| ())) {
                let exp = xsave_oracle::predict(&c, &host, &cfg.model);
                points.extend(xsave_oracle::coverage::points(&c, &exp).iter().map(|p| p.to_string()));
                shapes.insert(xsave_oracle::coverage::shape(&c));
                corpus.push(c);
            }
        }
    }
    s.rules_total = xsave_oracle::coverage::rule_count();
    s.resources.fds_start = fd_links().len();
    let start = Instant::now();
    let base_seconds = s.seconds;
    let base_ioctls = backend.ioctls();
    let mut last_tick = Instant::now();
    let mut last_execs = s.execs;
    save(&cfg, &s)?;
    loop {
        if cfg.stop.load(Ordering::Relaxed) {
            s.interrupted = true;
            break;
        }
        if cfg.iterations.is_some_and(|n| s.next_iteration >= n)
            || cfg.duration.is_some_and(|d| start.elapsed() >= d)
            || s.first_hit.is_some()
        {
            break;
        }
        let i = match cfg.worker {
            Some((k, n)) => k + n * s.next_iteration,
            None => s.next_iteration,
        };
        let mut case = if cfg.feedback && !corpus.is_empty() && i % 2 == 1 {
            mutated(&corpus, cfg.seed, i)
        } else {
            case_for_with(cfg.seed, i, GenOptions { guest: cfg.guest })
        };
        if cfg.narrow_cpuid {
            case = narrow(case, host.supported_xcr0, i);
        }
        let observed = backend.execute(&case)?;
        let (expected, verdict) = judge(&case, &host, &cfg.model, &observed);
        if cfg.feedback {
            let before = points.len();
            points.extend(xsave_oracle::coverage::points(&case, &expected).iter().map(|p| p.to_string()));
            let new_shape = shapes.insert(xsave_oracle::coverage::shape(&case));
            if points.len() > before || new_shape {
                if let Some(cd) = &corpus_dir {
                    let bytes = case.encode();
                    let path = cd.join(format!("{:016x}.case", xsave_oracle::diff::fnv1a(&bytes)));
                    write_atomic(&path, &bytes).map_err(io(&path))?;
                }
                corpus.push(case.clone());
            }
            s.coverage_points = points.len();
            s.rules_covered = points.iter().filter(|p| xsave_oracle::rules::Rule::from_id(p).is_some()).count();
            s.corpus = corpus.len();
        }
        s.next_iteration += 1;
        s.execs += 1;
        for (k, (_, op)) in case.steps().iter().enumerate() {
            if let (xsave_oracle::Op::RunGuest(_), Some(r)) = (&**op, observed.results.get(k)) {
                s.guest_runs += 1;
                let name = match r.ret {
                    xsave_oracle::Ret::Ok(v) => xsave_oracle::guest::Exit::from_code(v).map_or("other", |e| e.name()).to_string(),
                    xsave_oracle::Ret::Err(e) => format!("error {}", xsave_oracle::trace::errno_name(e)),
                };
                *s.guest_exits.entry(name).or_default() += 1;
            }
        }
        if verdict == Verdict::Agree && expected.results.iter().any(|r| !r.unpredicted.is_empty()) {
            s.agree_unpredicted += 1;
        }
        if let Verdict::Diverge(d) = &verdict {
            if cfg.stop_on_class == Some(d.class) && s.first_hit.is_none() {
                s.first_hit = Some((s.execs, start.elapsed().as_secs_f64()));
            }
            s.divergent_cases += 1;
            *s.by_class.entry(d.class.name().to_string()).or_default() += 1;
            *s.by_signature.entry(d.signature.clone()).or_default() += 1;
            if d.explained_by.is_some() {
                s.explained_by_quirk += 1;
            }
            if known.insert(d.signature.clone()) {
                s.findings += 1;
                s.new_signatures.push(d.signature.clone());
                if let Some(dir) = &cfg.workdir {
                    let dest = dir.join("findings").join(&d.signature);
                    write_finding(backend, &host, &cfg, &dest, &case, &d.signature, i)?;
                }
            }
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            if let Some(rx) = &cfg.inbox {
                while let Ok(cases) = rx.try_recv() {
                    for c in cases {
                        let exp = xsave_oracle::predict(&c, &host, &cfg.model);
                        points.extend(xsave_oracle::coverage::points(&c, &exp).iter().map(|p| p.to_string()));
                        shapes.insert(xsave_oracle::coverage::shape(&c));
                        corpus.push(c);
                    }
                }
            }
            let dt = last_tick.elapsed().as_secs_f64();
            s.seconds = base_seconds + start.elapsed().as_secs_f64();
            s.execs_per_sec = (s.execs - last_execs) as f64 / dt;
            s.ioctls = backend.ioctls() - base_ioctls;
            last_tick = Instant::now();
            last_execs = s.execs;
            save(&cfg, &s)?;
            if let Some(p) = cfg.progress.as_mut() {
                p(&s);
            }
        }
    }
    s.seconds = base_seconds + start.elapsed().as_secs_f64();
    s.ioctls = backend.ioctls() - base_ioctls;
    s.execs_per_sec = if s.seconds > 0.0 { s.execs as f64 / s.seconds } else { 0.0 };
    if let Some(dir) = &cfg.workdir {
        // Workers share findings/: count what is on disk.
        s.findings = std::fs::read_dir(dir.join("findings"))
            .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() as u64)
            .unwrap_or(s.findings);
    }
    let links = fd_links();
    s.resources.fds_end = links.len();
    s.resources.kvm_vm_fds_end = links.iter().filter(|l| l.contains("kvm-vm")).count();
    s.resources.peak_rss_kib = peak_rss_kib();
    save(&cfg, &s)?;
    Ok(s)
}

/// Minimize a new finding (if a budget is set) and write it atomically: `case.bin` and
/// `case.json` (minimized), `original.bin`, `verdict.json` (verdict and both traces of the
/// minimized case), `minimize.json`.
fn write_finding(
    backend: &mut dyn Backend,
    host: &HostFacts,
    cfg: &CampaignConfig,
    dest: &Path,
    case: &Case,
    sig: &str,
    i: u64,
) -> Result<(), CampaignError> {
    let (min, stats) = if cfg.minimize_budget > 0 {
        minimize(backend, host, &cfg.model, case, sig, cfg.minimize_budget)?
    } else {
        (case.clone(), MinStats::default())
    };
    let observed = backend.execute(&min)?;
    let (expected, verdict) = judge(&min, host, &cfg.model, &observed);
    let rec = FindingRecord {
        verdict: &verdict,
        backend: backend.name(),
        seed: cfg.seed,
        iteration: i,
        expected: &expected,
        observed: &observed,
    };
    let json = serde_json::to_vec_pretty(&rec).map_err(|e| CampaignError::State(e.to_string()))?;
    let mjson = serde_json::to_vec_pretty(&stats).map_err(|e| CampaignError::State(e.to_string()))?;
    create_dir_atomic(
        dest,
        &[
            ("case.bin", &min.encode()),
            ("case.json", min.to_json().as_bytes()),
            ("original.bin", &case.encode()),
            ("verdict.json", &json),
            ("minimize.json", &mjson),
        ],
    )
    .map_err(io(dest))?;
    Ok(())
}

/// Where a campaign keeps `campaign.json` and `stats.jsonl`: the workdir, or the worker's
/// own directory under it.
fn state_dir(cfg: &CampaignConfig) -> Option<PathBuf> {
    let dir = cfg.workdir.as_ref()?;
    Some(match cfg.worker {
        Some((k, _)) => dir.join("workers").join(k.to_string()),
        None => dir.clone(),
    })
}

fn save(cfg: &CampaignConfig, s: &Summary) -> Result<(), CampaignError> {
    let Some(dir) = state_dir(cfg) else {
        return Ok(());
    };
    let state = dir.join("campaign.json");
    let json = serde_json::to_vec_pretty(s).map_err(|e| CampaignError::State(e.to_string()))?;
    write_atomic(&state, &json).map_err(io(&state))?;
    let stats = dir.join("stats.jsonl");
    let line = serde_json::json!({"seconds": s.seconds, "execs": s.execs, "execs_per_sec": s.execs_per_sec, "findings": s.findings, "rules_covered": s.rules_covered, "coverage_points": s.coverage_points, "corpus": s.corpus});
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&stats).map_err(io(&stats))?;
    writeln!(f, "{line}").map_err(io(&stats))?;
    Ok(())
}
