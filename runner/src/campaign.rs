//! The built-in fuzz engine: seeded random generation, execution on a backend, judgement by
//! the oracle, atomic findings, resumable state.
//!
//! Workdir layout:
//! - `campaign.json`: seed, next iteration, counters (rewritten atomically every second);
//! - `findings/<signature>/{case.bin,case.json,verdict.json}`: one directory per distinct
//!   divergence, created atomically the moment it is found, raw (the case as found); the
//!   minimizer replaces it with the minimized case off the hot path ([`crate::minqueue`]);
//! - `stats.jsonl`: one line per second (execs, execs/s, findings, coverage, corpus) for
//!   plotting, with the wall-clock time (`time`, RFC 3339 UTC; `unix`, seconds) and the host
//!   id (`host`, [`crate::stamp::host_id`]) when the campaign was given one.
//!
//! Over 600 lines (by a few dozen): the engine loop, its checkpoints (`save`, `state_dir`) and
//! the batched generation (`generate_batch`) whose speculative feedback the loop checks case by
//! case stay together. The state it checkpoints ([`Summary`], with its schema check and the
//! merge of parallel workers) lives in `crate::summary`, the findings writer and the recovery
//! on start in `crate::findings`, the groups and hit counts in `crate::groups`.

use crate::findings::{finding_names, write_raw, Found};
pub use crate::findings::{recover, Finding};
pub use crate::groups::{merge_groups, note_group, note_minimized, Group, Hits, Seen};
use crate::minqueue::{Queue, Share, SHARE};
use crate::store::write_atomic;
pub use crate::summary::{Resources, Summary, MAX_COUNTER, MAX_TITLE};
use crate::{Backend, BackendError, Executed};
use arbitrary::Unstructured;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xsave_oracle::gen::GenOptions;
use xsave_oracle::judge::{complete, judge_to, kernel_splat, Depth};
use xsave_oracle::verdict::Verdict;
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
        x = xsave_oracle::pattern::xorshift64(x);
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

/// A fresh generator seed from the OS (`/dev/urandom`): what `fuzz` runs without `--seed`.
/// Below 2^53, so JSON readers that hold numbers as doubles keep it exact.
pub fn random_seed() -> std::io::Result<u64> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b) & ((1 << 53) - 1))
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

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CampaignError + '_ {
    move |err| CampaignError::Io { path: path.to_path_buf(), err }
}

/// A live-progress callback.
pub type Progress = Box<dyn FnMut(&Summary)>;

/// Called once per new signature, the moment it is found (before it is minimized).
pub type FindingNote = Box<dyn FnMut(&xsave_oracle::verdict::Divergence)>;

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
    pub stop_on_class: Option<xsave_oracle::verdict::Class>,
    /// Worker `k` of `n` in a parallel campaign: runs global iterations `k, k+n, k+2n, …`,
    /// keeps its state in `WORKDIR/workers/<k>/`, shares `findings/` and `corpus/`.
    pub worker: Option<(u64, u64)>,
    /// Generate guest runs (`KVM_RUN` of guest programs) in cases.
    pub guest: bool,
    /// Generate `KVM_GET_FPU`/`KVM_SET_FPU` ops in cases.
    pub fpu: bool,
    /// A fresh campaign's corpus view (names in `WORKDIR/corpus/` without `.case`, in order);
    /// none: the corpus directory as it is at the start. Parallel workers get the view the
    /// parent recorded before starting them, so none sees another's entries.
    pub initial_corpus: Option<Vec<String>>,
    /// Cases from elsewhere (the fleet hub's other hosts), already validated: polled about
    /// once a second and added to the mutation pool (not to `corpus/`: they are not this
    /// campaign's discoveries).
    pub inbox: Option<std::sync::mpsc::Receiver<Vec<Case>>>,
    /// The host id stamped on `stats.jsonl` rows ([`crate::stamp::host_id`]).
    pub host_id: Option<String>,
    /// Told of every new signature (e.g. a plain log line when stderr is not a terminal).
    pub on_finding: Option<FindingNote>,
}

impl CampaignConfig {
    /// A campaign of `iterations` cases (none: until `duration` or `stop`) from generator
    /// `seed`, with every other setting at its plainest: no workdir (findings in memory only),
    /// no resume, the V3 oracle without quirks, no progress, no minimization, no CPUID
    /// narrowing, no coverage feedback, no stop class, not a worker, guest runs and FPU ops
    /// generated, no initial corpus, no inbox, no host id and no finding callback. Change fields with struct update syntax.
    pub fn new(seed: u64, iterations: Option<u64>) -> CampaignConfig {
        CampaignConfig {
            seed,
            iterations,
            duration: None,
            workdir: None,
            resume: false,
            model: ModelConfig::default(),
            stop: std::sync::Arc::new(AtomicBool::new(false)),
            progress: None,
            minimize_budget: 0,
            narrow_cpuid: false,
            feedback: false,
            stop_on_class: None,
            worker: None,
            guest: true,
            fpu: true,
            initial_corpus: None,
            inbox: None,
            host_id: None,
            on_finding: None,
        }
    }
}

/// Read and check a stored campaign state (`campaign.json`): bounded read, schema, ranges.
pub fn load_state(path: &Path) -> Result<Summary, CampaignError> {
    let bytes = crate::store::read_bounded(path, crate::store::caps::JSON).map_err(io(path))?;
    let s: Summary =
        serde_json::from_slice(&bytes).map_err(|e| CampaignError::State(format!("{}: corrupt campaign state: {e}", path.display())))?;
    s.validate().map_err(|e| CampaignError::State(format!("{}: corrupt campaign state: {e}", path.display())))?;
    Ok(s)
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

/// Seconds between checkpoints of a campaign's state (tests lower it with
/// `XSAVE_RIG_CHECKPOINT_MS`).
fn checkpoint_interval() -> Duration {
    std::env::var("XSAVE_RIG_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), |ms| Duration::from_millis(ms.clamp(1, 60_000)))
}

fn overflow() -> CampaignError {
    CampaignError::State("campaign counter overflow".into())
}

/// Run a campaign.
pub fn run(backend: &mut dyn Backend, mut cfg: CampaignConfig) -> Result<Summary, CampaignError> {
    let host = backend.host().clone();
    let mut s = Summary {
        backend: backend.name(),
        contract: cfg.model.contract.name().to_string(),
        quirks: crate::quirk_list(&cfg.model.quirks),
        seed: cfg.seed,
        narrow_cpuid: cfg.narrow_cpuid,
        ..Summary::default()
    };
    // This campaign's own signatures: in a parallel campaign each worker writes the findings
    // it finds itself, whatever the others found, so that the lowest (worker, iteration) wins
    // whatever the timing.
    let mut known: std::collections::HashSet<String> = Default::default();
    let mut stored_order: Option<Vec<String>> = None;
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
            let old = load_state(&state)?;
            if old.contract != s.contract || old.quirks != s.quirks {
                return Err(CampaignError::State(format!(
                    "{}: campaign was run with contract {} quirks {:?}",
                    state.display(),
                    old.contract,
                    old.quirks
                )));
            }
            if cfg.iterations.is_none() && cfg.duration.is_none() {
                cfg.iterations = old.iterations;
                cfg.duration = old.duration_secs.map(Duration::from_secs_f64);
            }
            stored_order = old.corpus_order.clone().or_else(|| Some(corpus_names(&dir.join("corpus"))));
            match &old.own_signatures {
                Some(own) => known.extend(own.iter().cloned()),
                None => known.extend(finding_names(dir)),
            }
            s = Summary {
                backend: s.backend,
                resumed: true,
                new_signatures: Vec::new(),
                known_signatures: Vec::new(),
                interrupted: false,
                ioctls: 0,
                resources: Resources::default(),
                ..old
            };
            cfg.seed = s.seed;
        }
        if !s.resumed {
            stored_order = cfg.initial_corpus.clone();
        }
        s.findings = finding_names(dir).len() as u64;
    }
    if cfg.iterations.is_none() && cfg.duration.is_none() {
        cfg.iterations = Some(10_000);
    }
    s.iterations = cfg.iterations;
    s.duration_secs = cfg.duration.map(|d| d.as_secs_f64());
    let mut fb = crate::feedback::Feedback::default();
    let corpus_dir = cfg.workdir.as_ref().map(|d| d.join("corpus"));
    if let (true, Some(cd)) = (cfg.feedback, &corpus_dir) {
        std::fs::create_dir_all(cd).map_err(io(cd))?;
        let names: Vec<String> = match &stored_order {
            // Exactly the checkpointed view, in its order: entries written after the
            // checkpoint are found again by the iterations that follow it.
            Some(o) => o.clone(),
            None => corpus_names(cd),
        };
        for name in names {
            let f = cd.join(format!("{name}.case"));
            // Unreadable entries are skipped here; `corpus coverage` names them.
            if let Ok(c) =
                crate::store::read_bounded(&f, crate::store::caps::CASE).map_err(|_| ()).and_then(|b| Case::decode(&b).map_err(|_| ()))
            {
                let exp = xsave_oracle::predict(&c, &host, &cfg.model);
                fb.seed(c, name, &exp);
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
    let every = checkpoint_interval();
    let mut own: Vec<String> = s.own_signatures.take().unwrap_or_else(|| {
        let mut v: Vec<String> = known.iter().cloned().collect();
        v.sort();
        v
    });
    s.corpus_order = Some(fb.order.clone());
    s.own_signatures = Some(own.clone());
    save(&cfg, &s)?;
    // Raw findings of this campaign (worker) left by an earlier session are minimized first.
    let mut queue = match &cfg.workdir {
        Some(dir) => Queue::from_disk(dir, cfg.worker.map_or(0, |(k, _)| k), cfg.minimize_budget),
        None => Queue::new(0, cfg.minimize_budget),
    };
    let mut share = Share::new(SHARE);
    let mut mark = Instant::now();
    // Cases generated and executed ahead, in iteration order, when the backend batches.
    let batch = backend.batch_size().max(1);
    let mut pending: std::collections::VecDeque<Pending> = Default::default();
    let mut inbox_due = false;
    loop {
        if cfg.stop.load(Ordering::Relaxed) {
            s.interrupted = true;
            break;
        }
        if cfg.iterations.is_some_and(|n| s.next_iteration >= n)
            || cfg.duration.is_some_and(|d| base_seconds + start.elapsed().as_secs_f64() >= d.as_secs_f64())
            || s.first_hit.is_some()
        {
            break;
        }
        if pending.is_empty() {
            if std::mem::take(&mut inbox_due) {
                if let Some(rx) = &cfg.inbox {
                    while let Ok(cases) = rx.try_recv() {
                        for c in cases {
                            let exp = xsave_oracle::predict(&c, &host, &cfg.model);
                            fb.absorb(c, &exp);
                        }
                    }
                }
            }
            pending = generate_batch(backend, &cfg, &host, &mut fb, s.next_iteration, batch)?;
        }
        let Some(Pending { i, case, added, result }) = pending.pop_front() else { break };
        let Executed { trace: observed, kernel_log: log } = result?;
        // Worked out to what every diverging case is counted and grouped by; a new signature
        // is completed below, before it is written.
        let (expected, verdict) = judge_to(&case, &host, &cfg.model, &observed, Depth::Triage);
        // The kernel's own signal outranks the oracle's: a splat is the case's finding.
        let mut verdict = if log.is_empty() { verdict } else { Verdict::Diverge(Box::new(kernel_splat(&case, &cfg.model, log))) };
        if cfg.feedback {
            let points = crate::feedback::Feedback::points_of(&case, &expected);
            let added = match added {
                Some(a) if a.points == points => a,
                speculated => {
                    // The observation changed what the case covers: the cases generated after
                    // it came from the wrong corpus. Drop them (and what they added) and add
                    // this case as judged; generation resumes after it.
                    while let Some(p) = pending.pop_back() {
                        if let Some(a) = p.added {
                            fb.undo(&p.case, a);
                        }
                    }
                    if let Some(a) = speculated {
                        fb.undo(&case, a);
                    }
                    fb.add(&case, points)
                }
            };
            fb.commit(&case, &added, corpus_dir.as_deref()).map_err(|(path, err)| CampaignError::Io { path, err })?;
            s.coverage_points = added.coverage_points;
            s.rules_covered = added.rules_covered;
            s.corpus = added.corpus_len;
        }
        s.next_iteration = s.next_iteration.checked_add(1).ok_or_else(overflow)?;
        s.execs = s.execs.checked_add(1).ok_or_else(overflow)?;
        for (k, (_, op)) in case.steps().iter().enumerate() {
            if let (xsave_oracle::Op::RunGuest(_), Some(r)) = (&**op, observed.results.get(k)) {
                s.guest_runs = s.guest_runs.checked_add(1).ok_or_else(overflow)?;
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
        if let Verdict::Diverge(d) = &mut verdict {
            if cfg.stop_on_class == Some(d.class) && s.first_hit.is_none() {
                s.first_hit = Some((s.execs, start.elapsed().as_secs_f64()));
            }
            s.divergent_cases += 1;
            *s.by_class.entry(d.class.name().to_string()).or_default() += 1;
            *s.by_signature.entry(d.signature.clone()).or_default() += 1;
            if d.explained_by.is_some() {
                s.explained_by_quirk += 1;
            }
            let steps = case.steps().len();
            if d.known_issue.is_some() {
                s.known_issue_cases += 1;
            }
            if known.insert(d.signature.clone()) {
                if d.class != xsave_oracle::verdict::Class::KernelSplat {
                    complete(&case, &host, &cfg.model, &expected, &observed, d);
                }
                if d.known_issue.is_some() {
                    s.known_signatures.push(d.signature.clone());
                } else {
                    s.new_signatures.push(d.signature.clone());
                }
                own.push(d.signature.clone());
                if let Some(note) = cfg.on_finding.as_mut() {
                    note(d);
                }
                if let Some(dir) = &cfg.workdir {
                    let dest = dir.join("findings").join(&d.signature);
                    let found = Found { divergence: d, expected: &expected, observed: &observed };
                    let (new, placed) = write_raw(&*backend, &cfg, &dest, &case, found, i)?;
                    if placed && d.class != xsave_oracle::verdict::Class::KernelSplat {
                        queue.push(dest);
                    }
                    if new {
                        s.findings += 1;
                    }
                } else {
                    s.findings += 1;
                }
            }
            let at = Seen::now(i);
            note_group(&mut s.groups, d, steps, at);
            s.signature_hits.entry(d.signature.clone()).or_default().hit(at);
        }
        // The minimizer's time slice: everything since the last slice was fuzzing.
        share.fuzzed(mark.elapsed());
        while !queue.is_empty() && share.may_minimize() {
            let t = Instant::now();
            let done = queue.step(backend, &host, &cfg.model)?;
            share.minimized(t.elapsed());
            if let Some(done) = done {
                note_minimized(&mut s.groups, &done.signature, done.steps);
            }
        }
        mark = Instant::now();
        if last_tick.elapsed() >= every {
            // Other workers' entries join before the next cases are generated.
            inbox_due = true;
            let dt = last_tick.elapsed().as_secs_f64();
            s.seconds = base_seconds + start.elapsed().as_secs_f64();
            s.execs_per_sec = (s.execs - last_execs) as f64 / dt;
            s.ioctls = backend.ioctls() - base_ioctls;
            last_tick = Instant::now();
            last_execs = s.execs;
            // One checkpoint: counters, corpus view and own signatures, in one atomic write.
            s.corpus_order = Some(fb.order.clone());
            s.own_signatures = Some(own.clone());
            save(&cfg, &s)?;
            if let Some(p) = cfg.progress.as_mut() {
                p(&s);
            }
        }
    }
    // At the natural end the queue is finished (each finding within its budget); a stop
    // leaves the rest raw on disk for --resume.
    while !queue.is_empty() && !s.interrupted {
        if cfg.stop.load(Ordering::Relaxed) {
            s.interrupted = true;
            break;
        }
        let t = Instant::now();
        let done = queue.step(backend, &host, &cfg.model)?;
        share.minimized(t.elapsed());
        if let Some(done) = done {
            note_minimized(&mut s.groups, &done.signature, done.steps);
        }
    }
    s.minimize_pending = queue.len() as u64;
    s.minimize_seconds = share.minimizing_secs();
    s.seconds = base_seconds + start.elapsed().as_secs_f64();
    s.ioctls = backend.ioctls() - base_ioctls;
    s.execs_per_sec = if s.seconds > 0.0 { s.execs as f64 / s.seconds } else { 0.0 };
    if let Some(dir) = &cfg.workdir {
        // Workers share findings/: count what is on disk.
        s.findings = finding_names(dir).len() as u64;
    }
    let links = fd_links();
    s.resources.fds_end = links.len();
    s.resources.kvm_vm_fds_end = links.iter().filter(|l| l.contains("kvm-vm")).count();
    s.resources.peak_rss_kib = peak_rss_kib();
    s.corpus_order = Some(fb.order);
    s.own_signatures = Some(own);
    save(&cfg, &s)?;
    Ok(s)
}

/// A case generated (and executed) ahead of its turn.
struct Pending {
    i: u64,
    case: Case,
    /// What it added to the feedback, speculatively (batched campaigns only).
    added: Option<crate::feedback::Added>,
    result: Result<Executed, BackendError>,
}

/// The next `batch` cases from iteration `next` (fewer at the iteration limit), executed in one
/// [`Backend::execute_batch`]. With more than one case, each case's points are added to the
/// feedback as the plain prediction gives them before the next is generated, so the batch is
/// what an unbatched campaign would generate if every observation kept to that prediction;
/// `run` checks that case by case.
fn generate_batch(
    backend: &mut dyn Backend,
    cfg: &CampaignConfig,
    host: &HostFacts,
    fb: &mut crate::feedback::Feedback,
    next: u64,
    batch: usize,
) -> Result<std::collections::VecDeque<Pending>, CampaignError> {
    let mut gen: Vec<(u64, Case, Option<crate::feedback::Added>)> = Vec::with_capacity(batch);
    for j in 0..batch as u64 {
        let n = next.checked_add(j).ok_or_else(overflow)?;
        if j > 0 && cfg.iterations.is_some_and(|lim| n >= lim) {
            break;
        }
        let i = match cfg.worker {
            Some((k, w)) => w.checked_mul(n).and_then(|x| x.checked_add(k)).ok_or_else(overflow)?,
            None => n,
        };
        let mut case = if cfg.feedback && !fb.corpus.is_empty() && i % 2 == 1 {
            mutated(&fb.corpus, cfg.seed, i)
        } else {
            case_for_with(cfg.seed, i, GenOptions { guest: cfg.guest, fpu: cfg.fpu })
        };
        if cfg.narrow_cpuid {
            case = narrow(case, host.supported_xcr0, i);
        }
        let added = (cfg.feedback && batch > 1).then(|| {
            let exp = xsave_oracle::predict(&case, host, &cfg.model);
            fb.add(&case, crate::feedback::Feedback::points_of(&case, &exp))
        });
        gen.push((i, case, added));
    }
    let cases: Vec<Case> = gen.iter().map(|(_, c, _)| c.clone()).collect();
    let results = backend.execute_batch(&cases);
    let mut results = results.into_iter();
    Ok(gen
        .into_iter()
        .map(|(i, case, added)| {
            let result = results.next().unwrap_or_else(|| Err(BackendError::Lab("the backend returned fewer results than cases".into())));
            Pending { i, case, added, result }
        })
        .collect())
}

/// The entries of a corpus directory (names without `.case`), sorted: the initial corpus view
/// of a fresh campaign.
pub fn corpus_names(cd: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cd)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".case")).map(str::to_string))
                .filter(|n| !n.starts_with('.') && !n.is_empty() && n.len() <= 200 && !n.chars().any(char::is_control))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
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
    // Never write a state that `--resume` would refuse.
    s.validate().map_err(|e| CampaignError::State(format!("{}: the campaign's own state is invalid: {e}", state.display())))?;
    let json = serde_json::to_vec_pretty(s).map_err(|e| CampaignError::State(e.to_string()))?;
    write_atomic(&state, &json).map_err(io(&state))?;
    let stats = dir.join("stats.jsonl");
    let unix = crate::stamp::unix_now();
    let mut line = serde_json::json!({"seconds": s.seconds, "execs": s.execs, "execs_per_sec": s.execs_per_sec, "findings": s.findings, "rules_covered": s.rules_covered, "coverage_points": s.coverage_points, "corpus": s.corpus, "time": crate::stamp::rfc3339(unix), "unix": (unix * 1000.0).round() / 1000.0});
    if let Some(h) = &cfg.host_id {
        line["host"] = serde_json::json!(h);
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&stats).map_err(io(&stats))?;
    writeln!(f, "{line}").map_err(io(&stats))?;
    Ok(())
}
