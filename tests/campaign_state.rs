//! Campaign state you can trust (issue 11): one owner per workdir, bounded non-blocking
//! reads, resume equals never stopping (kill trials), disk full, corrupt state refused.
//! About 600 lines: the kill-trial harness is shared by every test here.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use xsave_testkit::{seed_files, tempdir, text, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const SYNTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json");

fn rig() -> Command {
    let mut c = RIG.command();
    c.env("XSAVE_RIG_CHECKPOINT_MS", "20");
    c
}

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !ok && std::env::var("XSAVE_RIG_REQUIRE_KVM").is_ok_and(|v| v == "1") {
        panic!("XSAVE_RIG_REQUIRE_KVM=1 but /dev/kvm is unusable");
    }
    ok
}

/// Run with a deadline; the child is killed (and the test fails) if it overruns.
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    loop {
        if child.try_wait().expect("wait").is_some() {
            return (child.wait_with_output().expect("output"), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!("{cmd:?} still running after {limit:?}; stderr {}", text(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn seed_case() -> PathBuf {
    seed_files().remove(0)
}

/// Names and contents under `dir` (relative), temporaries included.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn debris(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    fn walk(d: &Path, v: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.contains(".tmp.") {
                v.push(e.path().display().to_string());
            }
            if e.path().is_dir() {
                walk(&e.path(), v);
            }
        }
    }
    walk(dir, &mut v);
    v
}

/// What must equal an uninterrupted run: the signatures with the (worker, iteration) that
/// found each, and the corpus (names and bytes).
/// Signatures with their (worker, iteration), and the corpus files.
type Outcome = (Vec<(String, String)>, BTreeMap<String, Vec<u8>>);

fn outcome(dir: &Path) -> Outcome {
    let mut sigs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("findings")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with('.') {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("verdict.json")).unwrap_or_default()).unwrap_or_default();
            sigs.push((n, format!("{}/{}", v["worker"], v["iteration"])));
        }
    }
    sigs.sort();
    (sigs, tree(&dir.join("corpus")))
}

#[test]
fn a_second_campaign_on_a_held_workdir_is_refused_and_readers_see_complete_findings() {
    let t = tempdir();
    let w = t.path().join("w");
    let ws = w.display().to_string();
    let mut first = rig()
        .args(["fuzz", "--backend", "model:V2b", "--workdir", &ws, "--iterations", "12000", "--seed", "1", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while !w.join("campaign.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "first campaign never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    for args in [
        vec!["fuzz", "--backend", "model:V3", "--workdir", &ws, "--iterations", "3000", "--seed", "2"],
        vec!["fuzz", "--backend", "model:V2b", "--workdir", &ws, "--resume"],
        vec!["fuzz", "--backend", "model:V2b", "--workdir", &ws, "--resume", "--jobs", "2"],
    ] {
        let mut c = rig();
        c.args(&args);
        let (o, took) = run_within(c, Duration::from_secs(10));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(err.contains(&format!("in use by pid {}", first.id())), "{err:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Readers during the campaign: report and corpus coverage work, and only ever see
    // complete findings (nothing skipped).
    let mut reports = 0;
    while first.try_wait().expect("wait").is_none() {
        let out = t.path().join("rep");
        let o = rig().args(["report", &ws, "--output", &out.display().to_string()]).output().expect("report");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("skipped"), "report saw an incomplete finding: {}", text(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json")).expect("json");
        for f in r["findings"].as_array().expect("findings") {
            assert!(f["divergence"].is_object() && f["case"].is_object(), "incomplete finding {f}");
        }
        let c =
            rig().args(["corpus", "coverage", &w.join("corpus").display().to_string(), "--host-facts", SYNTH]).output().expect("coverage");
        assert_eq!(c.status.code(), Some(0), "{}", text(&c.stderr));
        reports += 1;
    }
    assert!(reports >= 1);
    assert!(matches!(first.wait().expect("wait").code(), Some(0 | 1)));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join("campaign.json")).expect("state")).expect("json");
    assert_eq!(state["backend"], "model:V2b");
    assert_eq!(state["seed"], 1);
    assert_eq!(state["execs"], 12000);
    for e in
        std::fs::read_dir(w.join("findings")).expect("findings").flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
    {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path().join("verdict.json")).expect("verdict")).expect("json");
        assert_eq!(v["backend"], "model:V2b", "{}", e.path().display());
    }
}

#[test]
fn fifo_device_socket_and_huge_file_are_refused_in_one_line_within_a_second() {
    let t = tempdir();
    let d = t.path();
    let fifo = d.join("fifo.case");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let zero = d.join("zero.case");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let sock = d.join("sock.case");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
    let huge = d.join("huge.case");
    std::fs::File::create(&huge).expect("huge").set_len(100_000_000).expect("set_len");
    let out = d.join("out");
    let o = out.display().to_string();
    let mut checked = 0;
    for bad in [&fifo, &zero, &sock, &huge] {
        let p = bad.display().to_string();
        // Workdirs whose state file, host fingerprint or finding is the bad file.
        let wd = d.join(format!("wd-{}", bad.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::create_dir_all(wd.join("findings/sig")).expect("wd");
        std::os::unix::fs::symlink(bad, wd.join("campaign.json")).expect("link");
        let w = wd.display().to_string();
        let commands: Vec<Vec<&str>> = vec![
            vec!["case", "show", &p],
            vec!["case", "encode", &p, "-o", &o],
            vec!["replay", "--backend", "model:V3", "--host-facts", SYNTH, &p],
            vec!["minimize", "--backend", "model:V3", "--host-facts", SYNTH, &p],
            vec!["repro", &p, "--c", "-o", &o, "--host-facts", SYNTH],
            vec!["check-state", &p, "--target", SYNTH],
            vec!["migrate", "--from", &p, "--to", SYNTH],
            vec!["migrate", "--from", SYNTH, "--to", &p],
            vec!["corpus", "unpack", &p, "-o", &o],
            vec!["fuzz", "--backend", "model:V3", "--host-facts", &p, "--workdir", &o, "--iterations", "1"],
            vec!["report", &w, "--output", &o],
            vec!["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--workdir", &w, "--resume"],
        ];
        for args in commands {
            let mut c = Command::new("sh");
            // Bounded memory: an unbounded read of /dev/zero would fail the allocation.
            c.args(["-c", "ulimit -v 2000000; exec \"$0\" \"$@\"", RIG.bin()]).args(&args);
            let (out, took) = run_within(c, Duration::from_secs(5));
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err:?}");
            assert!(err.contains("not a regular file") || err.contains("over the limit"), "{args:?}: {err:?}");
            assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
            checked += 1;
        }
        // Directory readers name the bad entry and go on.
        let cdir = d.join(format!("cdir-{}", bad.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::create_dir_all(&cdir).expect("cdir");
        std::fs::copy(seed_case(), cdir.join("good.case")).expect("copy");
        std::os::unix::fs::symlink(bad, cdir.join("bad.case")).expect("link");
        let c = cdir.display().to_string();
        std::os::unix::fs::symlink(bad, wd.join("findings/sig/case.bin")).expect("link");
        std::fs::remove_file(wd.join("campaign.json")).expect("rm");
        std::fs::write(wd.join("campaign.json"), "{\"backend\":\"kvm\",\"contract\":\"V3\",\"quirks\":[],\"seed\":1,\"next_iteration\":0,\"execs\":0,\"findings\":0,\"divergent_cases\":0,\"by_class\":{},\"explained_by_quirk\":0,\"seconds\":0.0,\"execs_per_sec\":0.0,\"ioctls\":0,\"resumed\":false,\"interrupted\":false,\"new_signatures\":[],\"resources\":{\"fds_start\":0,\"fds_end\":0,\"kvm_vm_fds_end\":0,\"peak_rss_kib\":0}}").expect("state");
        let merged = d.join(format!("merged-{}", bad.file_name().unwrap_or_default().to_string_lossy())).display().to_string();
        let packed = d.join(format!("pack-{}", bad.file_name().unwrap_or_default().to_string_lossy())).display().to_string();
        for args in [
            vec!["corpus", "coverage", &c, "--host-facts", SYNTH],
            vec!["corpus", "merge", &c, "-o", &merged],
            vec!["corpus", "pack", &c, "-o", &packed, "--host-facts", SYNTH],
            vec!["report", &w, "--output", &o],
        ] {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "ulimit -v 2000000; exec \"$0\" \"$@\"", RIG.bin()]).args(&args);
            let (out, took) = run_within(cmd, Duration::from_secs(5));
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
            let skipped: Vec<&str> = err.lines().filter(|l| l.contains("skipped")).collect();
            assert_eq!(skipped.len(), 1, "{args:?}: {err:?}");
            assert!(skipped[0].contains("not a regular file") || skipped[0].contains("over the limit"), "{args:?}: {err:?}");
            assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 16);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Parent,
    Workers,
    Both,
}

fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn send(pid: i32, sig: i32) {
    let _ = Command::new("kill").args([&format!("-{sig}"), "--", &pid.to_string()]).status();
}

fn fuzz_args(backend: &str, w: &Path, jobs: u64, iterations: u64) -> Vec<String> {
    let mut v: Vec<String> =
        ["fuzz", "--backend", backend, "--workdir", &w.display().to_string(), "--seed", "7", "--jobs", &jobs.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    if backend == "kvm" {
        v.extend(["--quirks".into(), "none".into()]);
    } else {
        v.extend(["--host-facts".into(), SYNTH.into()]);
    }
    v.extend(["--iterations".into(), iterations.to_string()]);
    v
}

/// Start a campaign, kill it per (signal, target) after `delay` from its first state, resume
/// it (without --iterations: the total is stored), and return whether the outcome equals
/// `baseline` and the debris left.
#[allow(clippy::too_many_arguments)]
fn trial(
    backend: &str,
    jobs: u64,
    iterations: u64,
    sig: i32,
    target: Target,
    delay: Duration,
    dir: &Path,
    baseline: &Outcome,
) -> (bool, Vec<String>) {
    let w = dir.to_path_buf();
    let mut child: Child = rig()
        .args(fuzz_args(backend, &w, jobs, iterations))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let start = Instant::now();
    while !w.join("campaign.json").exists() && child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(delay);
    if child.try_wait().expect("wait").is_none() {
        match target {
            Target::Parent => send(pid as i32, sig),
            Target::Both => send(-(pid as i32), sig),
            Target::Workers => {
                let t = Instant::now();
                let mut ws = children(pid);
                while ws.len() < jobs as usize && t.elapsed() < Duration::from_secs(2) && child.try_wait().expect("wait").is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                    ws = children(pid);
                }
                for w in ws {
                    send(w, sig);
                }
            }
        }
    }
    let _ = child.wait();
    let mut resume = rig();
    let mut args = fuzz_args(backend, &w, jobs, iterations);
    args.truncate(args.len() - 2);
    resume.args(&args).arg("--resume");
    let (o, _) = run_within(resume, Duration::from_secs(60));
    assert!(matches!(o.status.code(), Some(0 | 1)), "resume: {}", text(&o.stderr));
    (outcome(&w) == *baseline, debris(&w))
}

#[test]
fn killed_and_resumed_campaigns_equal_uninterrupted_ones() {
    let trials: usize = std::env::var("XSAVE_RIG_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut backends = vec![("model:V2b", 300u64, 150u64)];
    if kvm_usable() {
        backends.push(("kvm", 120, 150));
    }
    let t = tempdir();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (backend, iterations, max_delay_ms) in backends {
        for jobs in [1u64, 2] {
            let base_dir = t.path().join(format!("base-{}-{jobs}", backend.replace(':', "")));
            let o = rig().args(fuzz_args(backend, &base_dir, jobs, iterations)).output().expect("baseline");
            assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
            let baseline = outcome(&base_dir);
            assert!(!baseline.0.is_empty() && !baseline.1.is_empty(), "baseline found nothing");
            let targets: &[Target] = if jobs == 1 { &[Target::Parent] } else { &[Target::Parent, Target::Workers, Target::Both] };
            for &sig in &[15, 9] {
                for &target in targets {
                    // Run the trials of a mode three at a time.
                    let results: Vec<(bool, Vec<String>)> = std::thread::scope(|s| {
                        let handles: Vec<_> = (0..3)
                            .map(|lane| {
                                let baseline = &baseline;
                                let root = t.path().to_path_buf();
                                s.spawn(move || {
                                    (0..trials)
                                        .filter(|n| n % 3 == lane)
                                        .map(|n| {
                                            // Kill points spread over the run, deterministic per trial.
                                            let delay = Duration::from_millis((n as u64 * 7919 + sig as u64 * 31) % max_delay_ms);
                                            let dir = root.join(format!("t-{}-{jobs}-{sig}-{target:?}-{n}", backend.replace(':', "")));
                                            let r = trial(backend, jobs, iterations, sig, target, delay, &dir, baseline);
                                            let _ = std::fs::remove_dir_all(&dir);
                                            r
                                        })
                                        .collect::<Vec<_>>()
                                })
                            })
                            .collect();
                        handles.into_iter().flat_map(|h| h.join().expect("trial thread")).collect()
                    });
                    let equal = results.iter().filter(|(e, _)| *e).count();
                    let clean = results.iter().filter(|(_, d)| d.is_empty()).count();
                    let mode = format!("{backend} --jobs {jobs} SIG{} {target:?}", if sig == 9 { "KILL" } else { "TERM" });
                    table.push(format!("| {mode:<34} | {:>6} | {equal:>5} | {clean:>9} |", results.len()));
                    if equal != results.len() || clean != results.len() {
                        failures.push(format!(
                            "{mode}: {equal}/{} equal, {clean} without debris {:?}",
                            results.len(),
                            results.iter().flat_map(|r| r.1.clone()).take(3).collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
    }
    eprintln!("| mode                               | trials | equal | no debris |");
    for row in &table {
        eprintln!("{row}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn disk_full_at_several_fill_levels_errs_in_one_line_and_resumes_to_the_same_outcome() {
    if unsafe_is_not_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let t = tempdir();
    let base = t.path().join("base");
    let o = rig().args(fuzz_args("model:V2b", &base, 1, 600)).output().expect("baseline");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    let baseline = outcome(&base);
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&mnt).status().expect("mount");
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let mut full_seen = 0;
        for free_kib in [64u64, 160, 320, 640] {
            let w = mnt.join("w");
            let filler = mnt.join("filler");
            let _ = std::fs::remove_dir_all(&w);
            let _ = std::fs::remove_file(&filler);
            // Fill the tmpfs to leave about `free_kib` KiB.
            let mut f = std::fs::File::create(&filler).expect("filler");
            let chunk = vec![0xa5u8; 64 << 10];
            let total = 4u64 << 20;
            let mut written = 0;
            while written + (free_kib << 10) + chunk.len() as u64 <= total {
                if std::io::Write::write_all(&mut f, &chunk).is_err() {
                    break;
                }
                written += chunk.len() as u64;
            }
            drop(f);
            let o = rig().args(fuzz_args("model:V2b", &w, 1, 600)).output().expect("fuzz");
            let err = text(&o.stderr);
            if o.status.code() == Some(2) {
                full_seen += 1;
                // Besides the campaign's plain log lines (stderr is not a terminal), one error line.
                let errors: Vec<&str> =
                    err.lines().filter(|l| !l.split(' ').nth(1).is_some_and(|w| w == "finding" || w == "status")).collect();
                assert_eq!(errors.len(), 1, "{free_kib} KiB: {err:?}");
                assert!(errors[0].contains("No space left"), "{free_kib} KiB: {err:?}");
                // Nothing lost: what is on disk is a valid state, and every finding complete.
                let rep = t.path().join(format!("rep-{free_kib}"));
                let r = rig().args(["report", &w.display().to_string(), "--output", &rep.display().to_string()]).output().expect("report");
                if w.join("campaign.json").exists() {
                    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
                    assert!(!text(&r.stderr).contains("skipped"), "{}", text(&r.stderr));
                }
            } else {
                assert!(matches!(o.status.code(), Some(0 | 1)), "{free_kib} KiB: {err}");
            }
            std::fs::remove_file(&filler).expect("free space");
            let mut args = fuzz_args("model:V2b", &w, 1, 600);
            if w.join("campaign.json").exists() {
                args.truncate(args.len() - 2);
                args.push("--resume".into());
            }
            let o = rig().args(&args).output().expect("resume");
            assert!(matches!(o.status.code(), Some(0 | 1)), "{free_kib} KiB resume: {}", text(&o.stderr));
            assert!(outcome(&w) == baseline, "{free_kib} KiB: outcome differs from the uninterrupted run");
            assert!(debris(&w).is_empty(), "{free_kib} KiB: debris {:?}", debris(&w));
        }
        assert!(full_seen >= 3, "only {full_seen} fill levels ran out of space");
    });
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn unsafe_is_not_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| text(&o.stdout).trim() != "0").unwrap_or(true)
}

/// A finished campaign's state, to corrupt.
fn good_state(dir: &Path) -> serde_json::Value {
    let o = rig().args(fuzz_args("model:V2b", dir, 1, 300)).output().expect("fuzz");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    serde_json::from_slice(&std::fs::read(dir.join("campaign.json")).expect("state")).expect("json")
}

fn refused_in_one_line(args: &[String], what: &str) {
    let o = rig().args(args).output().expect("run");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: accepted ({:?}); stderr {err:?}", args.first());
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err:?}");
    assert!(!err.contains('\x1b'), "{what}: raw escape on the terminal: {err:?}");
}

#[test]
fn corrupt_state_values_are_refused_in_one_line() {
    let t = tempdir();
    let w = t.path().join("w");
    let good = good_state(&w);
    let rep = t.path().join("rep").display().to_string();
    let ws = w.display().to_string();
    let mut resume = fuzz_args("model:V2b", &w, 1, 300);
    resume.truncate(resume.len() - 2);
    resume.push("--resume".into());
    let report: Vec<String> = ["report", &ws, "--output", &rep].iter().map(|s| s.to_string()).collect();
    let mut bad: Vec<(String, serde_json::Value)> =
        vec![("null".into(), serde_json::Value::Null), ("{}".into(), serde_json::json!({})), ("[]".into(), serde_json::json!([]))];
    let huge = serde_json::json!(u64::MAX);
    for (field, v) in [
        ("next_iteration", huge.clone()),
        ("execs", huge.clone()),
        ("next_iteration", serde_json::json!(1u64 << 50)),
        ("next_iteration", serde_json::json!(-1)),
        ("execs", serde_json::json!(1)),
        ("divergent_cases", huge.clone()),
        ("findings", huge.clone()),
        ("seconds", serde_json::json!(-5.0)),
        ("seconds", serde_json::json!(1e300)),
        ("execs_per_sec", serde_json::json!("fast")),
        ("iterations", huge.clone()),
        ("duration_secs", serde_json::json!(-1.0)),
        ("jobs", serde_json::json!(0)),
        ("contract", serde_json::json!("V9\u{1b}[31m")),
        ("backend", serde_json::json!("\u{1b}]0;pwned\u{7}")),
        ("backend", serde_json::json!("")),
        ("quirks", serde_json::json!(["no-such-quirk"])),
        ("by_class", serde_json::json!({"state": u64::MAX})),
        ("guest_exits", serde_json::json!({"end": 3})),
        ("rules_covered", serde_json::json!(100000)),
        ("corpus_order", serde_json::json!(["../../etc/passwd"])),
        ("own_signatures", serde_json::json!([".hidden"])),
        ("first_hit", serde_json::json!([u64::MAX, 1.0])),
        ("explained_by_quirk", huge.clone()),
    ] {
        let mut d = good.clone();
        d.as_object_mut().expect("object").insert(field.to_string(), v.clone());
        bad.push((format!("{field} = {v}"), d));
    }
    for (what, doc) in &bad {
        std::fs::write(w.join("campaign.json"), serde_json::to_vec(doc).expect("json")).expect("write");
        refused_in_one_line(&resume, what);
        refused_in_one_line(&report, what);
    }
    // Byte-level fuzz of the state: every variant is refused in one line or is a valid state.
    let bytes = serde_json::to_vec_pretty(&good).expect("json");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..40 {
        let mut b = bytes.clone();
        for _ in 0..1 + n % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % b.len();
            b[at] = [b'9', b'-', b'"', b'}', 0x1b, b'e', b'0', b'x'][(x >> 40) as usize % 8];
        }
        std::fs::write(w.join("campaign.json"), &b).expect("write");
        let o = rig().args(&report).output().expect("report");
        let err = text(&o.stderr);
        assert!(!err.contains('\x1b'), "{err:?}");
        match o.status.code() {
            Some(0) => {
                let v: serde_json::Value = serde_json::from_slice(&b).expect("accepted state is JSON");
                assert_eq!(v["execs"], v["next_iteration"], "accepted an inconsistent state");
            }
            Some(2) => assert_eq!(err.trim_end().lines().count(), 1, "{err:?}"),
            c => panic!("report exited {c:?}: {err}"),
        }
    }
}

fn tar_entry(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut v = h.to_vec();
    v.extend(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

#[test]
fn corpus_unpack_escapes_archive_bytes_before_they_reach_the_terminal() {
    let t = tempdir();
    let manifest = |format: &str| {
        serde_json::to_vec(&serde_json::json!({"format": format, "format_version": 1, "case_format_version": 2, "rig_version": "0.1.0\u{1b}[2J", "host": null, "contract": "V3", "cases": 0, "members": []})).expect("json")
    };
    let out = t.path().join("out").display().to_string();
    // A manifest whose format carries an escape sequence: refused in one line, escaped.
    let mut a = tar_entry(b"manifest.json", &manifest("\u{1b}]0;pwned\u{7}\u{1b}[2J"));
    a.extend([0u8; 1024]);
    let p = t.path().join("a.tar");
    std::fs::write(&p, &a).expect("write");
    let o = rig().args(["corpus", "unpack", &p.display().to_string(), "-o", &out]).output().expect("unpack");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains('\x1b') && !err.contains('\x07') && err.contains("\\u{1b}"), "{err:?}");
    // A member whose name carries one: skipped and named, escaped; the manifest's own strings
    // are escaped in the summary line.
    let mut b = tar_entry(b"manifest.json", &manifest("xsave-rig-corpus"));
    b.extend(tar_entry(b"cases/\x1b[31mred\x1b[0m.case", b"XSRC"));
    b.extend([0u8; 1024]);
    let p = t.path().join("b.tar");
    std::fs::write(&p, &b).expect("write");
    let o = rig().args(["corpus", "unpack", &p.display().to_string(), "-o", &out]).output().expect("unpack");
    let (err, so) = (text(&o.stderr), text(&o.stdout));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("skipped") && !err.contains('\x1b'), "{err:?}");
    assert!(!so.contains('\x1b'), "{so:?}");
}
