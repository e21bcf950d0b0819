//! "Fresh machine, honest output": errors name what is missing, closed pipes end output
//! quietly, bare relative output names work, raw fuzzer inputs are read structurally, and the
//! exit statuses a pipeline can gate on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use xsave_testkit::{assert_one_line_error, kvm_or_skip, seed_files, tempdir, text, Rig, V2B_CASE};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const SYNTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json");
const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/seed");

fn seed_case() -> PathBuf {
    seed_files()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("set-xsave")))
        .unwrap_or_else(|| seed_files().remove(0))
}

#[test]
fn missing_arguments_are_named() {
    let o = RIG.run(&["repro", "c.case", "-o", "r.c"]);
    assert_one_line_error(&o, "--c");
    let o = RIG.run(&["case", "encode", "x.json"]);
    assert_one_line_error(&o, "--output");
    let o = RIG.run(&["fuzz", "--frobnicate"]);
    assert_one_line_error(&o, "--frobnicate");
    for a in [&["--help"][..], &["--version"], &["fuzz", "--help"]] {
        let o = RIG.run(a);
        assert_eq!(o.status.code(), Some(0), "{a:?}");
        assert!(!o.stdout.is_empty());
    }
}

#[test]
fn check_state_refuses_meaningless_sizes() {
    let dir = tempdir();
    let st = dir.path().join("state.json");
    std::fs::write(&st, vec![b' '; 19_588]).expect("write");
    let o = RIG.run(&["check-state", st.to_str().expect("utf8"), "--target", SYNTH]);
    assert_one_line_error(&o, "19588 bytes");
    std::fs::write(&st, vec![0u8; 4096]).expect("write");
    let o = RIG.run(&["check-state", st.to_str().expect("utf8"), "--target", SYNTH]);
    assert_ne!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn raw_fuzzer_inputs_are_read_structurally() {
    let dir = tempdir();
    let raw = dir.path().join("crash-0123456789abcdef");
    std::fs::write(&raw, b"\x00\x01\x02\xff\x10garbage bytes from libFuzzer\x07\x08\x09").expect("write");
    let rawp = raw.to_str().expect("utf8");
    let o = RIG.run(&["replay", "--backend", "model:V3", "--host-facts", SYNTH, rawp]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("(raw fuzzer input, read structurally)"), "{}", text(&o.stdout));
    let o = RIG.run(&["replay", "--backend", "model:V3", "--host-facts", SYNTH, "--json", rawp]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v[0]["raw_input"], true);
    let o = RIG.run(&["case", "show", rawp]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("case show prints JSON");
    assert!(text(&o.stderr).contains("raw fuzzer input"));
    let out = dir.path().join("r.c");
    let o = RIG.run(&["repro", rawp, "--c", "-o", out.to_str().expect("utf8"), "--host-facts", SYNTH]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("raw fuzzer input"));
    assert!(std::fs::read_to_string(&out).expect("repro").contains("raw fuzzer input"));
    // minimize: the raw input is read (it may or may not diverge; either way not "not a case").
    let o =
        RIG.run(&["minimize", "--backend", "model:V2b", "--host-facts", SYNTH, rawp, "-o", dir.path().join("m").to_str().expect("utf8")]);
    assert!(!text(&o.stderr).contains("not a case"), "{}", text(&o.stderr));
    // corpus coverage counts and names it.
    let cdir = dir.path().join("corpus");
    std::fs::create_dir(&cdir).expect("dir");
    std::fs::copy(&raw, cdir.join("crash-0123456789abcdef")).expect("copy");
    std::fs::copy(seed_case(), cdir.join("seed.case")).expect("copy");
    std::fs::write(cdir.join("bad.json"), "{\"not\": \"a case\"}").expect("write");
    let o = RIG.run(&["corpus", "coverage", "--json", "--host-facts", SYNTH, cdir.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["cases"], 2, "{v}");
    assert_eq!(v["raw_inputs"][0], "crash-0123456789abcdef");
    assert!(v["skipped"][0].as_str().expect("skipped").contains("bad.json"));
    let o = RIG.run(&["corpus", "coverage", "--host-facts", SYNTH, cdir.to_str().expect("utf8")]);
    assert!(text(&o.stdout).contains("raw fuzzer inputs, read structurally: crash-0123456789abcdef"), "{}", text(&o.stdout));
    // A JSON file that is not a case is still an error, and so is a corrupt XSRC file.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"ops\": 3}").expect("write");
    assert_one_line_error(&RIG.run(&["replay", "--backend", "model:V3", bad.to_str().expect("utf8")]), "bad.json");
    let trunc = dir.path().join("trunc");
    std::fs::write(&trunc, b"XSRC\x01\x05").expect("write");
    assert_one_line_error(&RIG.run(&["case", "show", trunc.to_str().expect("utf8")]), "trunc");
}

#[test]
fn bare_relative_output_names() {
    let dir = tempdir();
    let d = dir.path();
    let case = seed_case();
    let case = case.to_str().expect("utf8");
    std::fs::write(d.join("c.json"), V2B_CASE).expect("write");
    let cmds: Vec<(Vec<&str>, &str)> = vec![
        (vec!["case", "encode", "c.json", "-o", "c.bin"], "c.bin"),
        (vec!["repro", case, "--c", "-o", "r.c", "--host-facts", SYNTH], "r.c"),
        (vec!["minimize", "--backend", "model:V2b", "--host-facts", SYNTH, "c.json", "-o", "min.bin"], "min.bin"),
        (vec!["corpus", "pack", SEEDS, "-o", "seed.tar", "--host-facts", SYNTH], "seed.tar"),
        (vec!["corpus", "unpack", "seed.tar", "-o", "unpacked"], "unpacked"),
        (vec!["corpus", "merge", SEEDS, "-o", "merged"], "merged"),
        (vec!["corpus", "minimize", "merged", "-o", "kept", "--host-facts", SYNTH], "kept"),
        (
            vec!["fuzz", "--backend", "model:V2b", "--host-facts", SYNTH, "--iterations", "200", "--seed", "1", "--workdir", "W"],
            "W/campaign.json",
        ),
        (vec!["report", "W", "-o", "rep"], "rep/report.html"),
    ];
    for (args, out) in &cmds {
        let o = RIG.run_in(d, args);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {}", text(&o.stderr));
        assert!(o.stderr.is_empty() || !text(&o.stderr).contains("error"), "{args:?}: {}", text(&o.stderr));
        assert!(d.join(out).exists(), "{args:?} wrote no {out}");
    }
    // No temporary files are left behind.
    for e in std::fs::read_dir(d).expect("dir").flatten() {
        assert!(!e.file_name().to_string_lossy().contains(".tmp."), "left behind: {:?}", e.file_name());
    }
    // A directory where a file is expected: one line, nothing written.
    std::fs::create_dir(d.join("adir")).expect("dir");
    for args in [
        vec!["case", "encode", "c.json", "-o", "adir"],
        vec!["repro", case, "--c", "-o", "adir", "--host-facts", SYNTH],
        vec!["corpus", "pack", SEEDS, "-o", "adir", "--host-facts", SYNTH],
    ] {
        assert_one_line_error(&RIG.run_in(d, &args), "adir");
    }
    assert_eq!(std::fs::read_dir(d.join("adir")).expect("dir").count(), 0);
}

/// Spawn with stdout piped, read `lines` lines (0: none), close the pipe, and wait.
fn closed_pipe(args: &[&str], lines: usize) -> Output {
    use std::io::BufRead;
    let mut child = RIG.command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    {
        let out = child.stdout.take().expect("stdout");
        let mut r = std::io::BufReader::new(out);
        for _ in 0..lines {
            let mut l = String::new();
            r.read_line(&mut l).expect("read");
            assert!(!l.is_empty(), "no output line");
        }
    }
    child.wait_with_output().expect("wait")
}

#[test]
fn closed_stdout_ends_output_quietly() {
    let dir = tempdir();
    let case = seed_case();
    // Far more than a pipe buffer of output: the writer meets the closed pipe for sure.
    let mut args: Vec<&str> = vec!["replay", "--backend", "model:V3", "--host-facts", SYNTH];
    let c = case.to_str().expect("utf8");
    args.extend(std::iter::repeat_n(c, 3000));
    let o = closed_pipe(&args, 1);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(o.stderr.is_empty(), "stderr: {}", text(&o.stderr));
    // `case show … | head -1` and `fuzz … | head -4`: the pipe is closed before they print.
    let o = closed_pipe(&["case", "show", c], 0);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(o.stderr.is_empty(), "stderr: {}", text(&o.stderr));
    let wd = dir.path().join("w");
    let o = closed_pipe(
        &[
            "fuzz",
            "--backend",
            "model:V2b",
            "--host-facts",
            SYNTH,
            "--iterations",
            "300",
            "--seed",
            "1",
            "--workdir",
            wd.to_str().expect("utf8"),
        ],
        0,
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    // stderr is not a terminal: the campaign's plain log lines (`<time> finding …`,
    // `<time> status …`), and nothing else.
    let err = text(&o.stderr);
    assert!(
        err.lines().all(|l| l.split(' ').nth(1).is_some_and(|w| w == "finding" || w == "status") && l.starts_with("20")),
        "stderr: {err}"
    );
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {} / {}", text(&o.stdout), text(&o.stderr)))
}

#[test]
fn fuzz_exit_statuses() {
    let dir = tempdir();
    let wd = |n: &str| dir.path().join(n).to_str().expect("utf8").to_string();
    // No divergence: exit 0; new findings: exit 1; the summary's last line says which.
    let o = RIG.run(&["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--iterations", "300", "--workdir", &wd("a")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).trim_end().ends_with("no new findings (exit 0)"), "{}", text(&o.stdout));
    let o =
        RIG.run(&["fuzz", "--backend", "model:V2b", "--host-facts", SYNTH, "--iterations", "300", "--seed", "1", "--workdir", &wd("b")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let last = text(&o.stdout).trim_end().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("result") && last.contains("new finding") && last.ends_with("(exit 1)"), "{last}");
    let o = RIG.run(&[
        "fuzz",
        "--backend",
        "model:V2b",
        "--host-facts",
        SYNTH,
        "--iterations",
        "300",
        "--seed",
        "1",
        "--json",
        "--workdir",
        &wd("c"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_of(&o)["exit_status"], 1);
    // Resuming with nothing new to find: exit 0.
    let o = RIG.run(&[
        "fuzz",
        "--backend",
        "model:V2b",
        "--host-facts",
        SYNTH,
        "--iterations",
        "300",
        "--json",
        "--resume",
        "--workdir",
        &wd("c"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // SIGTERM: a clean stop, exit 130, state saved.
    let child = RIG
        .command()
        .args(["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--duration", "60s", "--workdir", &wd("d")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    xsave_runner::sys::terminate(child.id());
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("interrupted") && text(&o.stdout).contains("(exit 130)"), "{}", text(&o.stdout));
    assert!(dir.path().join("d/campaign.json").exists());
}

#[test]
fn parallel_campaign_writes_a_reportable_campaign_json() {
    let dir = tempdir();
    let wd = dir.path().join("J2");
    let w = wd.to_str().expect("utf8");
    let args = [
        "fuzz",
        "--jobs",
        "2",
        "--backend",
        "model:V2b",
        "--host-facts",
        SYNTH,
        "--minimize-budget",
        "50",
        "--seed",
        "1",
        "--json",
        "--workdir",
        w,
    ];
    let o = RIG.command().args(args).args(["--iterations", "3000"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let s = json_of(&o);
    assert_eq!(s["exit_status"], 1);
    let sigs: Vec<String> = s["new_signatures"].as_array().expect("sigs").iter().map(|v| v.as_str().expect("str").to_string()).collect();
    let mut sorted = sigs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sigs, sorted, "new_signatures sorted and deduplicated");
    assert_eq!(sigs.len() as u64, s["findings"].as_u64().expect("findings"));
    let workers: u64 = (0..2)
        .map(|k| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(wd.join(format!("workers/{k}/campaign.json"))).expect("worker")).expect("json");
            v["next_iteration"].as_u64().expect("n")
        })
        .sum();
    assert_eq!(s["next_iteration"].as_u64(), Some(workers));
    assert_eq!(workers, 3000);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wd.join("campaign.json")).expect("merged campaign.json")).expect("json");
    assert_eq!(stored["jobs"], 2);
    assert_eq!(stored["next_iteration"], s["next_iteration"]);
    let o = RIG.run(&["report", w]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(wd.join("report/report.html").exists());
    // Resume continues all workers; nothing new: exit 0.
    let o = RIG.command().args(args).args(["--iterations", "3000", "--resume"]).output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json_of(&o)["new_signatures"], serde_json::json!([]));
}

#[test]
fn resume_refuses_a_different_campaign() {
    let dir = tempdir();
    let wd = dir.path().join("W");
    let w = wd.to_str().expect("utf8");
    let base = ["fuzz", "--host-facts", SYNTH, "--iterations", "200", "--workdir", w];
    // --resume on a missing or empty workdir is an error, not a fresh start.
    assert_one_line_error(&RIG.command().args(base).args(["--backend", "model:V2b", "--resume"]).output().expect("run"), "no campaign");
    assert!(!wd.exists());
    std::fs::create_dir(&wd).expect("mkdir");
    assert_one_line_error(&RIG.command().args(base).args(["--backend", "model:V2b", "--resume"]).output().expect("run"), "no campaign");
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--seed", "7"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let o = RIG.command().args(base).args(["--backend", "model:V3", "--resume"]).output().expect("run");
    assert_one_line_error(&o, &format!("--resume: the campaign in {w} ran backend model:V2b, not model:V3"));
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--resume", "--seed", "8"]).output().expect("run");
    assert_one_line_error(&o, "ran seed 7, not 8");
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--resume", "--contract", "V2b"]).output().expect("run");
    assert_one_line_error(&o, "ran contract V3, not V2b");
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--resume", "--quirks", "pvm-cpuid-rewrite"]).output().expect("run");
    assert_one_line_error(&o, "ran quirks [], not [pvm-cpuid-rewrite]");
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--resume", "--jobs", "2"]).output().expect("run");
    assert_one_line_error(&o, "--jobs 1, not 2");
    // The same campaign (seed given or not) resumes.
    let o = RIG.command().args(base).args(["--backend", "model:V2b", "--resume", "--seed", "7"]).output().expect("run");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    let o = RIG
        .command()
        .args(["fuzz", "--host-facts", SYNTH, "--iterations", "400", "--workdir", w, "--backend", "model:V2b", "--resume", "--json"])
        .output()
        .expect("run");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    assert_eq!(json_of(&o)["seed"], 7);
}

#[test]
fn kvm_refuses_another_hosts_facts() {
    if !kvm_or_skip("kvm_refuses_another_hosts_facts") {
        return;
    }
    let dir = tempdir();
    let p = RIG.run(&["probe", "--json"]);
    assert!(p.status.success());
    let mine = dir.path().join("mine.json");
    std::fs::write(&mine, &p.stdout).expect("write");
    let mut other: serde_json::Value = serde_json::from_slice(&p.stdout).expect("json");
    let sup = u64::from_str_radix(other["host"]["supported_xcr0"].as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex");
    other["host"]["supported_xcr0"] = serde_json::json!(format!("{:#x}", sup ^ (1 << 9)));
    let theirs = dir.path().join("theirs.json");
    std::fs::write(&theirs, other.to_string()).expect("write");
    let wd = |n: &str| dir.path().join(n).to_str().expect("utf8").to_string();
    let t = theirs.to_str().expect("utf8");
    assert_one_line_error(&RIG.run(&["fuzz", "--host-facts", t, "--iterations", "5", "--workdir", &wd("a")]), "supported_xcr0");
    assert_one_line_error(&RIG.run(&["fuzz", "--host-facts", SYNTH, "--iterations", "5", "--workdir", &wd("b")]), "describes another host");
    let mut mx: serde_json::Value = serde_json::from_slice(&p.stdout).expect("json");
    mx["host"]["mxcsr_feature_mask"] = serde_json::json!("0x1");
    std::fs::write(&theirs, mx.to_string()).expect("write");
    assert_one_line_error(&RIG.run(&["fuzz", "--host-facts", t, "--iterations", "5", "--workdir", &wd("c")]), "mxcsr mask");
    // This host's own fingerprint is fine; --force-host-facts overrides; model backends never check.
    let o = RIG.run(&["fuzz", "--host-facts", mine.to_str().expect("utf8"), "--iterations", "5", "--workdir", &wd("d")]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    let o = RIG.run(&["fuzz", "--host-facts", t, "--force-host-facts", "--iterations", "5", "--workdir", &wd("e")]);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    let o = RIG.run(&["fuzz", "--backend", "model:V3", "--host-facts", t, "--iterations", "5", "--workdir", &wd("f")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn lab_fetch_without_the_archive_is_one_bounded_line() {
    let have = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg").exists()
        && Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("SKIPPED lab_fetch_without_the_archive_is_one_bounded_line: apt-get or debian-archive-keyring missing");
        return;
    }
    let cache = tempdir();
    let t = std::time::Instant::now();
    // Port 9 (discard) on localhost: nothing listens, connections are refused.
    let o = RIG
        .command()
        .args(["lab", "fetch", "debian:6.1"])
        .env("XSAVE_RIG_CACHE", cache.path())
        .env("XSAVE_RIG_APT_MIRROR", "http://127.0.0.1:9")
        .output()
        .expect("run");
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "took {:?}", t.elapsed());
    assert_one_line_error(&o, "linux-image-amd64");
    let err = text(&o.stderr);
    assert!(err.contains("127.0.0.1:9") && (err.contains("refused") || err.contains("Could not connect")), "{err}");
}

#[test]
fn help_documents_every_flag_and_variable() {
    let top = text(&RIG.run(&["--help"]).stdout);
    for v in ["XSAVE_RIG_CACHE", "XSAVE_RIG_DETECT_BIN", "XSAVE_RIG_DEV_KVM", "XSAVE_RIG_APT_MIRROR", "exec-cases", "Exit statuses"] {
        assert!(top.contains(v), "--help lacks {v}");
    }
    let fuzz = text(&RIG.run(&["fuzz", "--help"]).stdout);
    for f in ["lab:<kernel>", "--worker", "--backend-label", "--force-host-facts", "Internal ("] {
        assert!(fuzz.contains(f), "fuzz --help lacks {f}");
    }
    assert!(text(&RIG.run(&["lab", "run", "--help"]).stdout).contains("--init-script"));
    assert!(text(&RIG.run(&["lab", "run", "--help"]).stdout).contains("--scratch"));
    assert!(text(&RIG.run(&["bench", "detect", "--help"]).stdout).contains("--budget"));
    assert!(text(&RIG.run(&["migrate", "--help"]).stdout).contains("--json"));
    assert!(text(&RIG.run(&["check-state", "--help"]).stdout).contains("--json"));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for w in [
        "exec-cases",
        "--worker",
        "--init-script",
        "--scratch",
        "--budget",
        "--backend-label",
        "XSAVE_RIG_CACHE",
        "XSAVE_RIG_DETECT_BIN",
        "XSAVE_RIG_APT_MIRROR",
        "## Exit statuses",
        "## Environment variables",
        "corpus/model_contracts ../corpus/seed",
    ] {
        assert!(readme.contains(w), "README lacks {w}");
    }
    assert!(!readme.contains("-s none model_contracts ../corpus/seed"), "seeds must not be libFuzzer's first corpus directory");
}

/// `--backend lab:K` runs the guest's command with `--backend kvm --backend-label lab:K`: the
/// summary, campaign.json and findings name `lab:K` (shown here on a model backend).
#[test]
fn backend_label_names_the_backend() {
    let dir = tempdir();
    let wd = dir.path().join("w");
    let w = wd.to_str().expect("utf8");
    let base = ["fuzz", "--backend", "model:V2b", "--host-facts", SYNTH, "--iterations", "200", "--seed", "1", "--workdir", w];
    let o = RIG.command().args(base).args(["--backend-label", "lab:debian:6.1"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("backend          lab:debian:6.1"), "{}", text(&o.stdout));
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(wd.join("campaign.json")).expect("state")).expect("json");
    assert_eq!(c["backend"], "lab:debian:6.1");
    let f = std::fs::read_dir(wd.join("findings")).expect("findings").flatten().next().expect("a finding").path();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f.join("verdict.json")).expect("verdict")).expect("json");
    assert_eq!(v["backend"], "lab:debian:6.1");
    // Resuming it under its own name works; under another backend it is refused.
    let o = RIG.command().args(base).args(["--backend-label", "lab:debian:6.1", "--resume"]).output().expect("run");
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o.stderr));
    assert_one_line_error(&RIG.command().args(base).args(["--resume"]).output().expect("run"), "ran backend lab:debian:6.1, not model:V2b");
}
