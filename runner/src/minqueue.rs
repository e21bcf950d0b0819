//! Minimization off the campaign's hot path.
//!
//! A new finding is written *raw* the moment it is found (`findings::write_raw`: the case as
//! found in `case.bin`, the finding run's verdict and traces in `verdict.json`, `host.json`;
//! no `minimize.json`, `original.bin` or `case.json`, which the final finding adds). It joins
//! this [`Queue`]; the campaign loop gives the queue time slices so that minimization takes at
//! most [`SHARE`] of the campaign's wall time ([`Share`]), one candidate execution at a time
//! ([`Shrinker`]), on the
//! campaign's own backend (a time share rather than a worker process: a second process would
//! need a second VM, or a second guest kernel booted under QEMU for a lab backend, and would
//! compete for the same cores without a bound). A finished minimization replaces the raw
//! directory atomically (an exchange under `WORKDIR/findings.lock`), adding `minimize.json`:
//! that file marks a finding final, for `--resume` (raw findings of this worker are queued
//! again from disk, [`Queue::from_disk`]) and for the hub's outbox (which delivers a raw
//! finding, then its minimized case once).
//!
//! At the natural end of a campaign (its iterations or duration done) the rest of the queue is
//! finished, each finding within `--minimize-budget` executions, so the end is bounded (by the
//! queue's length times the budget) and a completed campaign leaves only minimized findings,
//! as before this queue existed (reports, `compat-collect` and the tests read minimized cases
//! of finished campaigns); an interrupted one (SIGINT/SIGTERM, also during that drain) leaves
//! the rest raw on disk for `--resume`.
//!
//! Measured on this rig's own configurations (`bench --findings-load`: model:V2b against
//! model:V3; and KVM judged by V2b against KVM judged by V3): a minimization there takes a few
//! hundred fast executions, and writing each finding twice (raw, then final; every file an
//! fsync) costs more than the inline minimization did. In `bench --findings-load` (3 s
//! campaigns) the minimizer takes about 5 % of the loaded campaign's time and its queue is
//! empty at the stop; the rest of the gap is judging the diverging cases (one in three there;
//! campaigns now work out consequences only for a new signature,
//! `xsave_oracle::judge::judge_to`) and each finding's fsyncs, in similar parts. The share bounds the cost where one minimization takes
//! seconds (2000 executions on a slow kernel, as under the lab), which these configurations do
//! not reach.

use crate::campaign::CampaignError;
use crate::findings::{finding_files, place_finding, Finding};
use crate::minimize::{MinStats, Shrinker};
use crate::Backend;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xsave_oracle::judge::judge;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{Case, HostFacts, ModelConfig};

/// The largest share of a campaign's wall time its minimizer may take.
pub const SHARE: f64 = 0.2;

/// The time accounting of the minimizer's share: the campaign charges the time it spends
/// fuzzing and the time each minimizer step took; the minimizer may take its next step while
/// its time stays below `share` of the total. Over a run its share is at most `share` plus one
/// step.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    share: f64,
    fuzzing: Duration,
    minimizing: Duration,
}

impl Share {
    /// Accounting for a minimizer allowed `share` (0..1) of the time.
    pub fn new(share: f64) -> Share {
        Share { share: share.clamp(0.0, 1.0), fuzzing: Duration::ZERO, minimizing: Duration::ZERO }
    }

    /// Charge time spent on the campaign's own cases (everything but minimizer steps).
    pub fn fuzzed(&mut self, d: Duration) {
        self.fuzzing += d;
    }

    /// Charge time one minimizer step took.
    pub fn minimized(&mut self, d: Duration) {
        self.minimizing += d;
    }

    /// Whether the minimizer may take its next step now.
    pub fn may_minimize(&self) -> bool {
        self.minimizing.as_secs_f64() < self.share * (self.fuzzing + self.minimizing).as_secs_f64()
    }

    /// Seconds charged to the minimizer.
    pub fn minimizing_secs(&self) -> f64 {
        self.minimizing.as_secs_f64()
    }

    /// The minimizer's fraction of all charged time (0 before anything was charged).
    pub fn fraction(&self) -> f64 {
        let total = (self.fuzzing + self.minimizing).as_secs_f64();
        if total > 0.0 {
            self.minimizing.as_secs_f64() / total
        } else {
            0.0
        }
    }
}

/// A raw finding being minimized.
struct Job {
    dir: PathBuf,
    key: (u64, u64),
    signature: String,
    original: Case,
    found: Finding,
    /// None: `--minimize-budget 0` (the case is only checked again and made final).
    shrinker: Option<Shrinker>,
}

/// A minimized finding that replaced its raw one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// Its signature.
    pub signature: String,
    /// Steps of the stored (minimized) case.
    pub steps: usize,
}

/// The raw findings a campaign (worker) still has to minimize, in order of discovery.
pub struct Queue {
    pending: VecDeque<PathBuf>,
    current: Option<Job>,
    worker: u64,
    budget: u64,
}

/// Whether `dir` is a raw finding (no `minimize.json`).
pub fn is_raw(dir: &Path) -> bool {
    dir.is_dir() && !dir.join("minimize.json").exists()
}

fn read_finding(dir: &Path) -> Option<(Finding, Case)> {
    let v = crate::store::read_bounded(&dir.join("verdict.json"), crate::store::caps::JSON).ok()?;
    let found: Finding = serde_json::from_slice(&v).ok()?;
    let b = crate::store::read_bounded(&dir.join("case.bin"), crate::store::caps::CASE).ok()?;
    Some((found, Case::decode(&b).ok()?))
}

impl Queue {
    /// An empty queue for worker `worker` (0 for a single campaign), `budget` executions per
    /// finding.
    pub fn new(worker: u64, budget: u64) -> Queue {
        Queue { pending: VecDeque::new(), current: None, worker, budget }
    }

    /// The raw findings in `WORKDIR/findings/` that worker `worker` wrote, in order of
    /// iteration: what a resumed campaign still has to minimize.
    pub fn from_disk(workdir: &Path, worker: u64, budget: u64) -> Queue {
        let mut q = Queue::new(worker, budget);
        let mut raw: Vec<(u64, PathBuf)> = std::fs::read_dir(workdir.join("findings"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .filter(|p| is_raw(p))
                    .filter_map(|p| read_finding(&p).filter(|(f, _)| f.worker == worker).map(|(f, _)| (f.iteration, p)))
                    .collect()
            })
            .unwrap_or_default();
        raw.sort();
        q.pending.extend(raw.into_iter().map(|(_, p)| p));
        q
    }

    /// Queue the raw finding at `dir`.
    pub fn push(&mut self, dir: PathBuf) {
        if !self.pending.contains(&dir) && self.current.as_ref().is_none_or(|j| j.dir != dir) {
            self.pending.push_back(dir);
        }
    }

    /// Findings queued or being minimized.
    pub fn len(&self) -> usize {
        self.pending.len() + usize::from(self.current.is_some())
    }

    /// Whether nothing is left to minimize.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One unit of work: start the next queued finding (one that is no longer raw or no longer
    /// this worker's is dropped), or run one candidate execution, or check the minimized case
    /// once more and replace the raw finding with it. Returns the finding when it was replaced.
    pub fn step(&mut self, backend: &mut dyn Backend, host: &HostFacts, model: &ModelConfig) -> Result<Option<Done>, CampaignError> {
        let Some(job) = self.current.as_mut() else {
            if let Some(dir) = self.pending.pop_front() {
                self.current = self.start(dir);
            }
            return Ok(None);
        };
        if let Some(m) = job.shrinker.as_mut() {
            let done = m.step(backend, host, model)?;
            // A splat a candidate provoked is not the next case's.
            let _ = backend.kernel_log();
            if !done {
                return Ok(None);
            }
        }
        let job = self.current.take().expect("checked above");
        finish(job, backend, host, model)
    }

    fn start(&self, dir: PathBuf) -> Option<Job> {
        if !is_raw(&dir) {
            return None;
        }
        let (found, original) = read_finding(&dir)?;
        let Verdict::Diverge(d) = &found.verdict else { return None };
        if found.worker != self.worker {
            return None;
        }
        let signature = d.signature.clone();
        let shrinker = (self.budget > 0).then(|| Shrinker::new(&original, &signature, self.budget));
        Some(Job { key: (found.worker, found.iteration), dir, signature, original, found, shrinker })
    }
}

/// Run the minimized case once more: if it shows the signature, it replaces the raw finding
/// with its own traces; if not (a nondeterministic finding), the finding is made final as found
/// and marked `unreproduced`.
fn finish(job: Job, backend: &mut dyn Backend, host: &HostFacts, model: &ModelConfig) -> Result<Option<Done>, CampaignError> {
    let (min, stats) = match job.shrinker {
        Some(m) => m.finish(),
        None => (job.original.clone(), MinStats::default()),
    };
    let observed = backend.execute(&min)?;
    let _ = backend.kernel_log();
    let (expected, verdict) = judge(&min, host, model, &observed);
    let reproduced = matches!(&verdict, Verdict::Diverge(d) if d.signature == job.signature);
    let (case, stats, rec) = if reproduced {
        (min, stats, Finding { verdict, expected, observed, ..job.found })
    } else {
        (job.original.clone(), MinStats::default(), Finding { unreproduced: true, ..job.found })
    };
    let host_json = crate::store::read_bounded(&job.dir.join("host.json"), crate::store::caps::JSON).ok();
    let files = finding_files(&rec, &case, &job.original, Some(&stats), host_json)?;
    let (_, placed) = place_finding(&job.dir, &files, job.key, true)?;
    Ok(placed.then(|| Done { signature: job.signature, steps: case.steps().len() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the accounting as the campaign loop does, with made-up step times: the
    /// minimizer's share never passes `SHARE` by more than one step, and it gets its share.
    #[test]
    fn the_minimizer_gets_at_most_its_share_of_the_time() {
        let ms = Duration::from_millis;
        for (case_ms, step_ms) in [(1, 1), (1, 7), (5, 1), (3, 40)] {
            let mut s = Share::new(SHARE);
            for _ in 0..10_000 {
                s.fuzzed(ms(case_ms));
                while s.may_minimize() {
                    s.minimized(ms(step_ms));
                }
                let total = (s.fuzzing + s.minimizing).as_secs_f64();
                let overshoot = ms(step_ms).as_secs_f64() / total;
                assert!(s.fraction() <= SHARE + overshoot + 1e-9, "{case_ms}/{step_ms}: {}", s.fraction());
            }
            // Over a long run, the share converges to SHARE from below plus one step.
            assert!((s.fraction() - SHARE).abs() < 0.01, "{case_ms}/{step_ms}: {}", s.fraction());
        }
    }

    #[test]
    fn nothing_charged_nothing_allowed_and_no_share_never_minimizes() {
        assert!(!Share::new(SHARE).may_minimize(), "no time spent fuzzing yet");
        assert_eq!(Share::new(SHARE).fraction(), 0.0);
        let mut s = Share::new(0.0);
        s.fuzzed(Duration::from_secs(100));
        assert!(!s.may_minimize());
        let mut s = Share::new(SHARE);
        s.fuzzed(Duration::from_secs(4));
        s.minimized(Duration::from_secs(1));
        assert!(!s.may_minimize(), "exactly at its share: 1 of 5 s");
        s.fuzzed(Duration::from_millis(1));
        assert!(s.may_minimize());
        assert_eq!(s.minimizing_secs(), 1.0);
    }
}
