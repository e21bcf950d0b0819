//! Minimization off the campaign's hot path (issue 13, item 5) and the random default seed
//! (item 7): a raw finding is on disk before it is minimized, a SIGKILL while findings wait
//! for the minimizer loses nothing, `--resume` finishes them; `fuzz` without `--seed` draws a
//! seed and keeps it on resume.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xsave_testkit::{tempdir, text, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const SYNTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json");

fn rig() -> Command {
    let mut c = RIG.command();
    c.env("XSAVE_RIG_CHECKPOINT_MS", "20").env_remove("XSAVE_RIG_HUB");
    c
}

fn fuzz(w: &Path, iterations: &str) -> Vec<String> {
    ["fuzz", "--backend", "model:V2b", "--host-facts", SYNTH, "--seed", "7", "--iterations", iterations, "--workdir"]
        .iter()
        .map(|s| s.to_string())
        .chain([w.display().to_string()])
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Finding directories (temporaries left out), sorted.
fn findings(w: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(w.join("findings"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Per finding: signature, (worker, iteration), case.bin, original.bin, whether minimized.
type Outcome = Vec<(String, String, Vec<u8>, Vec<u8>, bool)>;

fn outcome(w: &Path) -> Outcome {
    findings(w)
        .iter()
        .map(|d| {
            let v = json(&d.join("verdict.json"));
            (
                d.file_name().expect("name").to_string_lossy().to_string(),
                format!("{}/{}", v["worker"], v["iteration"]),
                read(&d.join("case.bin")),
                read(&d.join("original.bin")),
                d.join("minimize.json").exists(),
            )
        })
        .collect()
}

/// A raw finding as the campaign writes it the moment it is found: the case as found in
/// `case.bin`, a diverging verdict under its own signature, `host.json`; no `minimize.json`
/// (nor `original.bin`, which the minimized finding adds).
fn assert_raw(d: &Path) {
    assert!(!d.join("minimize.json").exists() && !d.join("original.bin").exists());
    let v = json(&d.join("verdict.json"));
    assert_eq!(v["verdict"]["verdict"], "diverge", "{v}");
    assert_eq!(v["verdict"]["signature"].as_str(), d.file_name().and_then(|n| n.to_str()));
    assert!(d.join("host.json").exists());
}

#[test]
fn raw_findings_are_on_disk_before_minimization_and_a_kill_loses_none() {
    let t = tempdir();
    // The uninterrupted campaign: every finding minimized by its natural end.
    let base = t.path().join("base");
    let o = rig().args(fuzz(&base, "1500")).arg("--json").output().expect("baseline");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert!(s.get("minimize_pending").is_none(), "a completed campaign leaves nothing raw: {s}");
    let baseline = outcome(&base);
    assert!(baseline.len() >= 2, "baseline found {} findings", baseline.len());
    assert!(baseline.iter().all(|f| f.4), "all minimized at the end");
    assert!(baseline.iter().any(|f| f.2.len() < f.3.len()), "something was actually minimized");

    // Kill the same campaign the moment a raw finding is on disk (its minimization pending
    // or running), then resume it.
    let mut caught = 0;
    for attempt in 0..5 {
        if caught == 2 {
            break;
        }
        let w = t.path().join(format!("k{attempt}"));
        let mut child = rig().args(fuzz(&w, "1500")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let start = Instant::now();
        let mut raw = None;
        while raw.is_none() && child.try_wait().expect("wait").is_none() && start.elapsed() < Duration::from_secs(60) {
            raw = findings(&w).into_iter().find(|d| d.join("verdict.json").exists() && !d.join("minimize.json").exists());
        }
        let _ = child.kill();
        let _ = child.wait();
        let Some(raw) = raw else { continue };
        if !raw.exists() || raw.join("minimize.json").exists() {
            continue; // minimized between the look and the kill: try again
        }
        caught += 1;
        assert_raw(&raw);
        let found_bytes = read(&raw.join("case.bin"));
        // Readers see it: a report lists the raw finding (not minimized yet).
        let r =
            rig().args(["report", &w.display().to_string(), "-o", &t.path().join(format!("r{attempt}")).display().to_string()]).output();
        let r = r.expect("report");
        assert!(r.status.success(), "report of a raw finding: {}", text(&r.stderr));
        let sig = raw.file_name().expect("name").to_string_lossy().to_string();
        let md = String::from_utf8_lossy(&read(&t.path().join(format!("r{attempt}/report.md")))).to_string();
        assert!(md.contains(&sig), "report lists {sig}");
        // Resume: raw findings are queued again from disk and minimized.
        let mut args = fuzz(&w, "1500");
        let at = args.iter().position(|a| a == "--iterations").expect("iterations");
        args.drain(at..at + 2);
        let o = rig().args(&args).arg("--resume").output().expect("resume");
        assert!(matches!(o.status.code(), Some(0 | 1)), "resume: {}", text(&o.stderr));
        let after = outcome(&w);
        assert_eq!(after, baseline, "resumed campaign equals the uninterrupted one");
        let kept = after.iter().find(|f| f.0 == sig).expect("the raw finding is kept");
        assert_eq!(kept.3, found_bytes, "original.bin keeps the case as found");
    }
    assert!(caught >= 1, "never saw a raw finding before its minimization ended in 5 campaigns");
}

#[test]
fn without_seed_campaigns_draw_different_seeds_and_resume_keeps_them() {
    let t = tempdir();
    let run = |w: &Path, extra: &[&str]| {
        let o = rig()
            .args(["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--workdir", &w.display().to_string(), "--json"])
            .args(extra)
            .output()
            .expect("fuzz");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("summary")
    };
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let sa = run(&a, &["--iterations", "30"]);
    let sb = run(&b, &["--iterations", "30"]);
    let seed = |s: &serde_json::Value| s["seed"].as_u64().expect("seed");
    assert_ne!(seed(&sa), seed(&sb), "two campaigns without --seed run different cases");
    assert_eq!(json(&a.join("campaign.json"))["seed"], sa["seed"], "recorded in campaign.json");
    let resumed = run(&a, &["--iterations", "60", "--resume"]);
    assert_eq!(resumed["seed"], sa["seed"], "--resume keeps the stored seed");
    assert_eq!(resumed["next_iteration"], 60);
    // The text summary names it.
    let o = rig()
        .args(["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--iterations", "90", "--resume", "--workdir"])
        .arg(&a)
        .output()
        .expect("fuzz");
    assert!(text(&o.stdout).contains(&format!("seed             {}", seed(&sa))), "{}", text(&o.stdout));
    // A parallel campaign's workers all run the parent's drawn seed.
    let j = t.path().join("j");
    let sj = run(&j, &["--iterations", "40", "--jobs", "2"]);
    for k in 0..2 {
        assert_eq!(json(&j.join(format!("workers/{k}/campaign.json")))["seed"], sj["seed"], "worker {k}");
    }
    let resumed = run(&j, &["--iterations", "80", "--jobs", "2", "--resume"]);
    assert_eq!(resumed["seed"], sj["seed"]);
}

/// `bench --findings-load`: both campaigns measured in the same run, the loaded one finding
/// signatures and the clean one none (what the ratio is, is the benchmark's, not the test's).
#[test]
fn findings_load_bench_reports_its_ratio() {
    let o = rig().args(["bench", "--findings-load", "--seconds", "0.4", "--json", "--host-facts", SYNTH]).output().expect("bench");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let ratio = r["findings_load_ratio"].as_f64().expect("findings_load_ratio");
    assert!(ratio.is_finite() && ratio > 0.0, "{r}");
    assert_eq!(r["round_ratios"].as_array().map(Vec::len), Some(5), "{r}");
    assert!(r["signatures"].as_f64().expect("signatures") >= 1.0, "the loaded backend finds signatures: {r}");
    assert_eq!(r["loaded_backend"], "model:V2b");
}
