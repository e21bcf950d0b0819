//! The worker pool of a parallel campaign (`xsave-rig fuzz --jobs N`): N worker processes
//! (`--worker K/N`) share the workdir's `findings/` and `corpus/`, each with its own resumable
//! state in `WORKDIR/workers/<k>/`; the parent merges their summaries into
//! `WORKDIR/campaign.json` ([`Summary::merge`]).

use crate::campaign::{self, Summary};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the pool could not produce a merged summary.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A worker process could not be started.
    #[error("cannot start worker {k}")]
    Start {
        /// The worker's index.
        k: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Waiting for a worker or reading its output failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Workers ended without a summary.
    #[error("{} failed; their state is kept in {}/workers/ (rerun with --resume)", failed.join(", "), workdir.display())]
    Failed {
        /// `worker K (<exit status>)` for each.
        failed: Vec<String>,
        /// The campaign's workdir.
        workdir: PathBuf,
    },
    /// The merged `campaign.json` could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The merged summary could not be serialized.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// How a running pool is doing, for live progress.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Cases executed over all workers (from their checkpointed states).
    pub execs: u64,
    /// Entries in `WORKDIR/findings/`.
    pub findings: usize,
    /// Time since the workers started.
    pub elapsed: Duration,
}

/// The arguments every worker gets, from the parent's own (`argv` without the program name):
/// the same command without `--jobs`, `--worker`, `--json`, `--seed` and the campaign totals,
/// then the seed and totals as resolved in `main` (given, drawn at random, or stored on
/// resume), then `--host-facts HOST_FACTS`
/// when given, so every worker judges under the facts the parent recorded.
pub fn worker_args(argv: impl IntoIterator<Item = String>, main: &Summary, host_facts: Option<&Path>) -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" | "--worker" | "--iterations" | "--duration" | "--seed" => {
                it.next();
            }
            "--json" => {}
            _ if ["--jobs=", "--worker=", "--iterations=", "--duration=", "--seed="].iter().any(|p| a.starts_with(p)) => {}
            _ => base.push(a),
        }
    }
    base.extend(["--seed".into(), main.seed.to_string()]);
    if let Some(n) = main.iterations {
        base.extend(["--iterations".into(), n.to_string()]);
    }
    if let Some(d) = main.duration_secs {
        base.extend(["--duration".into(), format!("{d}s")]);
    }
    if let Some(p) = host_facts {
        base.push("--host-facts".into());
        base.push(p.display().to_string());
    }
    base
}

/// `--worker K/N` as `(K, N)`; `None` unless both are numbers (the caller checks `K < N`).
pub fn parse_worker(s: &str) -> Option<(u64, u64)> {
    let (k, n) = s.split_once('/')?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

/// For a worker process: die (SIGTERM) when the parent dies, so a killed campaign leaves no
/// worker behind.
pub fn die_with_parent() {
    crate::sys::die_with_parent();
}

/// The running campaign of `jobs` workers in `workdir` as one summary: the workers' latest
/// checkpoints merged ([`Summary::merge`]), `findings` counted in `findings/`.
pub fn current(workdir: &Path, jobs: u64) -> Summary {
    let mut total = Summary::default();
    for k in 0..jobs {
        if let Ok(s) = campaign::load_state(&workdir.join("workers").join(k.to_string()).join("campaign.json")) {
            total.merge(s);
        }
    }
    total.findings = finding_count(workdir);
    total
}

fn finding_count(workdir: &Path) -> u64 {
    finding_names(workdir).len() as u64
}

/// The findings in `workdir` (directory names under `findings/`, temporaries left out).
pub fn finding_names(workdir: &Path) -> Vec<String> {
    std::fs::read_dir(workdir.join("findings"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

/// Run `exe ARGS --json --worker K/JOBS` for every K, sharing `workdir`, until all have ended;
/// when `stop` is set, each is sent SIGTERM once (they checkpoint and exit). `progress` is
/// called about five times a second. Then the workers' JSON summaries are merged
/// ([`Summary::merge`]) with the campaign's totals from `main`, and the result is written
/// atomically to `WORKDIR/campaign.json` (so `report WORKDIR` works) and returned: counts
/// summed, `findings` counted in `findings/`, `new_signatures` and `known_signatures` sorted
/// and deduplicated, `jobs` set to `jobs`.
pub fn run(
    exe: &Path,
    args: &[String],
    jobs: u64,
    workdir: &Path,
    main: &Summary,
    stop: &AtomicBool,
    mut progress: Option<&mut dyn FnMut(&Progress)>,
) -> Result<Summary, JobsError> {
    let mut children: Vec<Child> = Vec::new();
    for k in 0..jobs {
        let child = Command::new(exe)
            .args(args)
            .args(["--json", "--worker", &format!("{k}/{jobs}")])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| JobsError::Start { k, source })?;
        children.push(child);
    }
    let mut outputs: Vec<Option<(ExitStatus, String)>> = vec![None; children.len()];
    let started = Instant::now();
    let mut signalled = false;
    while outputs.iter().any(|o| o.is_none()) {
        if stop.load(Ordering::Relaxed) && !signalled {
            for c in &children {
                crate::sys::terminate(c.id());
            }
            signalled = true;
        }
        for (k, c) in children.iter_mut().enumerate() {
            if outputs[k].is_none() {
                if let Some(st) = c.try_wait()? {
                    let mut out = String::new();
                    if let Some(mut so) = c.stdout.take() {
                        io::Read::read_to_string(&mut so, &mut out)?;
                    }
                    outputs[k] = Some((st, out));
                }
            }
        }
        if let Some(p) = progress.as_mut() {
            let execs: u64 = (0..jobs)
                .filter_map(|k| campaign::load_state(&workdir.join("workers").join(k.to_string()).join("campaign.json")).ok())
                .map(|s| s.execs)
                .sum();
            let findings = std::fs::read_dir(workdir.join("findings")).map(|d| d.count()).unwrap_or(0);
            p(&Progress { execs, findings, elapsed: started.elapsed() });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut total = Summary::default();
    let mut failed = Vec::new();
    for (k, o) in outputs.into_iter().enumerate() {
        let (st, out) = o.unwrap_or_default();
        match serde_json::from_str::<Summary>(out.trim()) {
            Ok(s) => total.merge(s),
            Err(_) => failed.push(format!("worker {k} ({st})")),
        }
    }
    if !failed.is_empty() {
        return Err(JobsError::Failed { failed, workdir: workdir.to_path_buf() });
    }
    total.findings = finding_count(workdir);
    total.new_signatures.sort();
    total.new_signatures.dedup();
    total.known_signatures.sort();
    total.known_signatures.dedup();
    total.jobs = Some(jobs);
    total.iterations = main.iterations;
    total.corpus_order = main.corpus_order.clone();
    total.duration_secs = main.duration_secs;
    let state = workdir.join("campaign.json");
    crate::store::write_atomic(&state, &serde_json::to_vec_pretty(&total)?).map_err(|source| JobsError::Write { path: state, source })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_the_command_without_pool_flags_and_with_the_resolved_totals() {
        let argv = ["fuzz", "--jobs", "4", "--json", "--iterations=9", "--workdir", "w", "--duration", "1s", "--worker=0/2", "--seed", "3"];
        let main = Summary { iterations: Some(100), duration_secs: Some(2.5), seed: 77, ..Summary::default() };
        let args = worker_args(argv.iter().map(|a| a.to_string()), &main, Some(Path::new("w/host.json")));
        assert_eq!(
            args,
            ["fuzz", "--workdir", "w", "--seed", "77", "--iterations", "100", "--duration", "2.5s", "--host-facts", "w/host.json"]
        );
    }

    #[test]
    fn worker_spec() {
        assert_eq!(parse_worker("1/3"), Some((1, 3)));
        assert_eq!(parse_worker("1"), None);
        assert_eq!(parse_worker("a/3"), None);
    }

    #[test]
    fn merge_sums_counts_and_keeps_maxima() {
        let a = Summary { execs: 3, seconds: 2.0, findings: 1, new_signatures: vec!["b".into()], ..Summary::default() };
        let b = Summary { execs: 4, seconds: 1.0, findings: 2, new_signatures: vec!["a".into()], interrupted: true, ..Summary::default() };
        let mut m = Summary::default();
        m.merge(a);
        m.merge(b);
        assert_eq!((m.execs, m.seconds, m.findings, m.interrupted), (7, 2.0, 2, true));
        assert_eq!(m.new_signatures, ["b", "a"]);
    }
}
