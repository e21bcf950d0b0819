//! The findings writer: a finding directory (`findings/<signature>/`) written atomically the
//! moment it is found, raw (`write_raw`), and replaced by its minimized one
//! (`place_finding`, for [`crate::minqueue`]); the record `verdict.json` holds ([`Finding`]);
//! and the recovery a campaign runs on start ([`recover`]). `crate::campaign` re-exports
//! [`Finding`] and [`recover`], so older paths keep working.

use crate::campaign::{io, CampaignConfig, CampaignError};
use crate::minimize::MinStats;
use crate::store::create_dir_atomic;
use crate::Backend;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use xsave_oracle::trace::Trace;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::Case;

/// A finding as `findings/<signature>/verdict.json` holds it: written by the campaign, read
/// back by reports (the one type for both).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    /// The verdict of the stored case (a divergence).
    pub verdict: Verdict,
    /// The backend that found it (`kvm`, `lab:debian:6.12`, `model:V2b`, ...).
    #[serde(default)]
    pub backend: String,
    /// The campaign's generator seed.
    #[serde(default)]
    pub seed: u64,
    /// The worker (of `--jobs`) that found it.
    #[serde(default)]
    pub worker: u64,
    /// The iteration that found it.
    #[serde(default)]
    pub iteration: u64,
    /// The oracle's prediction for the stored case.
    pub expected: Trace,
    /// What the backend returned for it.
    pub observed: Trace,
    /// True when the stored case, run again at write time, did not show the divergence: a
    /// nondeterministic finding, kept as found (the case, both traces of the finding run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreproduced: bool,
}

/// A divergence as a campaign found it: the case's first run.
pub(crate) struct Found<'a> {
    pub(crate) divergence: &'a xsave_oracle::verdict::Divergence,
    pub(crate) expected: &'a Trace,
    pub(crate) observed: &'a Trace,
}

/// The complete findings of a workdir (directory names, temporaries left out).
pub(crate) fn finding_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("findings"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

/// The (worker, iteration) a finding's `verdict.json` records, if it records them.
fn finding_key(dir: &Path) -> Option<(u64, u64)> {
    let bytes = crate::store::read_bounded(&dir.join("verdict.json"), crate::store::caps::JSON).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((v.get("worker")?.as_u64()?, v.get("iteration")?.as_u64()?))
}

/// Write a new finding atomically the moment it is found, without minimizing it (that is
/// [`crate::minqueue`]'s job, off the hot path): `case.bin` (the case as found),
/// `verdict.json` (the finding run's verdict and traces, and the worker and iteration that
/// found it), `host.json`. A raw finding has no `minimize.json`. A kernel
/// splat is final as found: it gets an empty `minimize.json` at once and is never queued.
///
/// First writer wins deterministically: a finding already on disk is replaced (atomically,
/// by exchanging the directories) only by one with a lower (worker, iteration), under the
/// lock `WORKDIR/findings.lock` that serializes the workers' decisions. Returns whether the
/// signature was new on disk and whether this campaign's finding is on disk now (so it is to
/// be minimized).
pub(crate) fn write_raw(
    backend: &dyn Backend,
    cfg: &CampaignConfig,
    dest: &Path,
    case: &Case,
    found: Found<'_>,
    i: u64,
) -> Result<(bool, bool), CampaignError> {
    let worker = cfg.worker.map_or(0, |(k, _)| k);
    if finding_key(dest).is_some_and(|key| key <= (worker, i)) {
        return Ok((false, false));
    }
    let splat = found.divergence.class == xsave_oracle::verdict::Class::KernelSplat;
    let rec = Finding {
        verdict: Verdict::Diverge(Box::new(found.divergence.clone())),
        backend: backend.name(),
        seed: cfg.seed,
        worker,
        iteration: i,
        expected: found.expected.clone(),
        observed: found.observed.clone(),
        unreproduced: false,
    };
    let files = finding_files(&rec, case, case, splat.then(MinStats::default).as_ref(), host_json(dest))?;
    place_finding(dest, &files, (worker, i), false)
}

/// The workdir's `host.json` (probe report: kernel, module, CPU, layout, quirks) for a finding
/// directory `dest`, so a finding is self-contained when shared.
fn host_json(dest: &Path) -> Option<Vec<u8>> {
    let workdir = crate::store::parent_dir(crate::store::parent_dir(dest));
    crate::store::read_bounded(&workdir.join("host.json"), crate::store::caps::JSON).ok()
}

/// The files of a finding directory. Final (`stats` given): `case.bin` and `case.json`
/// (`case`), `original.bin`, `verdict.json` (`rec`), `minimize.json`, `host.json`. Raw: only
/// `case.bin` (the case as found), `verdict.json` and `host.json`: every file costs an fsync
/// on the hot path, and the final finding adds the rest.
pub(crate) fn finding_files(
    rec: &Finding,
    case: &Case,
    original: &Case,
    stats: Option<&MinStats>,
    host_json: Option<Vec<u8>>,
) -> Result<Vec<(&'static str, Vec<u8>)>, CampaignError> {
    let mut files = vec![("case.bin", case.encode()), ("verdict.json", pretty(rec)?)];
    if let Some(st) = stats {
        files.push(("case.json", case.to_json().into_bytes()));
        files.push(("original.bin", original.encode()));
        files.push(("minimize.json", pretty(st)?));
    }
    if let Some(h) = host_json {
        files.push(("host.json", h));
    }
    Ok(files)
}

fn pretty<T: Serialize>(v: &T) -> Result<Vec<u8>, CampaignError> {
    serde_json::to_vec_pretty(v).map_err(|e| CampaignError::State(e.to_string()))
}

/// Put a finding directory at `dest` atomically, under `WORKDIR/findings.lock`. A raw finding
/// (`minimized` false) found at `key` = (worker, iteration) is created, or replaces one with a
/// higher key. A minimized one replaces only the raw finding of the same key (a lower key's
/// finding that replaced it meanwhile, or a finding already final, wins). Returns whether the
/// directory was created and whether `files` are on disk now.
pub(crate) fn place_finding(
    dest: &Path,
    files: &[(&str, Vec<u8>)],
    key: (u64, u64),
    minimized: bool,
) -> Result<(bool, bool), CampaignError> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let parent = crate::store::parent_dir(dest);
    let lock_path = crate::store::parent_dir(parent).join("findings.lock");
    let _lock = match crate::store::lock_waiting(&lock_path, Duration::from_secs(30), &AtomicBool::new(false)).map_err(io(&lock_path))? {
        Ok(l) => l,
        Err(holder) => return Err(CampaignError::State(format!("{}: held for 30 s by {holder}", lock_path.display()))),
    };
    if !dest.exists() {
        if minimized {
            return Ok((false, false));
        }
        return create_dir_atomic(dest, &files).map(|new| (new, true)).map_err(io(dest));
    }
    let on_disk = finding_key(dest);
    let replace = if minimized { on_disk == Some(key) && !dest.join("minimize.json").exists() } else { on_disk.is_none_or(|k| k > key) };
    if !replace {
        return Ok((false, false));
    }
    let sig = dest.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
    let tmp = parent.join(format!(".{sig}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let swapped = crate::store::build_dir(&tmp, &files).and_then(|()| crate::sys::rename_exchange(&tmp, dest));
    // After the exchange `tmp` holds the finding it replaced; on failure, the partial build.
    let _ = std::fs::remove_dir_all(&tmp);
    swapped.map_err(io(dest))?;
    crate::store::sync_dir(parent).map_err(io(dest))?;
    Ok((false, true))
}

/// Recovery on start, by the process holding the workdir lock: temporary files and
/// directories (`.<name>.tmp.<pid>`) left by a killed or disk-full campaign are removed,
/// finding directories without a readable `case.bin` and `verdict.json` are removed (the
/// campaign finds them again), and a `stats.jsonl` cut mid-line loses its partial last line.
/// Returns one line per thing done.
pub fn recover(workdir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut dirs = vec![workdir.to_path_buf(), workdir.join("findings"), workdir.join("corpus"), workdir.join("report")];
    if let Ok(d) = std::fs::read_dir(workdir.join("workers")) {
        dirs.extend(d.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in &dirs {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !(name.starts_with('.') && name.contains(".tmp.")) {
                continue;
            }
            let p = e.path();
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match removed {
                Ok(()) => lines.push(format!("recovered: removed temporary {}", p.display())),
                Err(err) => lines.push(format!("recovery: cannot remove temporary {}: {err}", p.display())),
            }
        }
        let stats = d.join("stats.jsonl");
        if let Ok(bytes) = crate::store::read_bounded(&stats, crate::store::caps::STATS) {
            if bytes.last().is_some_and(|b| *b != b'\n') {
                let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |n| n + 1);
                match crate::store::write_atomic(&stats, &bytes[..keep]) {
                    Ok(()) => lines.push(format!("recovered: completed {} (cut a partial last line)", stats.display())),
                    Err(err) => lines.push(format!("recovery: cannot repair {}: {err}", stats.display())),
                }
            }
        }
    }
    for name in finding_names(workdir) {
        let p = workdir.join("findings").join(&name);
        if !p.is_dir() {
            continue;
        }
        let case_ok = crate::store::read_bounded(&p.join("case.bin"), crate::store::caps::CASE).is_ok_and(|b| Case::decode(&b).is_ok());
        let verdict_ok = crate::store::read_bounded(&p.join("verdict.json"), crate::store::caps::JSON)
            .is_ok_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok_and(|v| v.get("verdict").is_some()));
        if !(case_ok && verdict_ok) {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => lines.push(format!("recovered: removed incomplete finding {}", p.display())),
                Err(err) => lines.push(format!("recovery: cannot remove incomplete finding {}: {err}", p.display())),
            }
        }
    }
    lines
}
