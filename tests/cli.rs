//! The command line as a user meets it: bad input gives one line and a non-zero exit, case
//! files round-trip, replay exit codes, findings survive SIGKILL and campaigns resume, and a
//! long real-KVM campaign leaks nothing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use xsave_testkit::{assert_one_line_error, kvm_or_skip, tempdir, Rig, V2B_CASE};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

#[test]
fn missing_kvm_device_is_one_line() {
    let o = RIG.command().args(["probe"]).env("XSAVE_RIG_DEV_KVM", "/nonexistent/kvm").output().expect("run");
    assert_one_line_error(&o, "/nonexistent/kvm");
    let o = RIG
        .command()
        .args(["fuzz", "--iterations", "1", "--workdir", "/tmp/unused"])
        .env("XSAVE_RIG_DEV_KVM", "/nonexistent/kvm")
        .output()
        .expect("run");
    assert_one_line_error(&o, "cannot use KVM");
}

#[test]
fn unreadable_kvm_device_is_one_line() {
    let dir = tempdir();
    let f = dir.path().join("kvm");
    std::fs::write(&f, b"").expect("file");
    let o = RIG.command().args(["probe"]).env("XSAVE_RIG_DEV_KVM", &f).output().expect("run");
    assert_one_line_error(&o, "cannot use KVM");
}

#[test]
fn bad_flags_are_one_line() {
    assert_one_line_error(&RIG.run(&["fuzz", "--contract", "V9"]), "V9");
    assert_one_line_error(&RIG.run(&["fuzz", "--backend", "qemu"]), "qemu");
    assert_one_line_error(&RIG.run(&["fuzz", "--duration", "soon"]), "soon");
    assert_one_line_error(&RIG.run(&["fuzz", "--duration", "1e30"]), "1e30");
    assert_one_line_error(&RIG.run(&["fuzz", "--guest-timeout", "500us"]), "500us");
    assert_one_line_error(&RIG.run(&["fuzz", "--guest-timeout", "0.5ms"]), "below the minimum of 1ms");
    assert_one_line_error(&RIG.run(&["replay", "--guest-timeout", "0", "x.case"]), "below the minimum of 1ms");
    assert_one_line_error(&RIG.run(&["fuzz", "--frobnicate"]), "frobnicate");
    assert_one_line_error(&RIG.run(&["fuzz", "--backend", "model:V3+get=V9"]), "V9");
    assert_one_line_error(&RIG.run(&["fuzz", "--backend", "model:V3+put=V1"]), "put");
    assert_one_line_error(&RIG.run(&["fuzz", "--backend", "model:V3+set=V1+set=V2b"]), "twice");
    assert_one_line_error(
        &RIG.run(&["fuzz", "--backend", "model:V3", "--quirks", "bogus", "--iterations", "1", "--workdir", "/tmp/unused2"]),
        "bogus",
    );
}

#[test]
fn corrupt_case_files_are_one_line() {
    let dir = tempdir();
    // (Bytes that are neither XSRC nor JSON are raw fuzzer inputs, read structurally: see
    // tests/fresh.rs.)
    for (name, bytes) in
        [("junk", &b"{not a case"[..]), ("trunc", &b"XSRC\x01\x05"[..]), ("version", &b"XSRC\x63"[..]), ("empty", &b""[..])]
    {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        let o = RIG.run(&["replay", "--backend", "model:V3", p.to_str().expect("utf8")]);
        assert_one_line_error(&o, name);
        let o = RIG.run(&["case", "show", p.to_str().expect("utf8")]);
        assert_one_line_error(&o, name);
    }
    assert_one_line_error(&RIG.run(&["case", "show", "/nonexistent/case"]), "/nonexistent/case");
}

#[test]
fn case_encode_show_round_trip_and_replay_exit_codes() {
    let dir = tempdir();
    let json = dir.path().join("c.json");
    let bin = dir.path().join("c.bin");
    std::fs::write(&json, V2B_CASE).expect("write");
    let o = RIG.run(&["case", "encode", json.to_str().expect("utf8"), "-o", bin.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&bin).expect("bin").starts_with(b"XSRC"));
    let shown = RIG.run(&["case", "show", bin.to_str().expect("utf8")]);
    assert!(shown.status.success());
    let a: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show prints JSON");
    let b: serde_json::Value = serde_json::from_slice(&RIG.run(&["case", "show", json.to_str().expect("utf8")]).stdout).expect("json");
    assert_eq!(a, b);
    // V3 model agrees with the V3 oracle (exit 0); the V2b model rejects the SET (exit 1).
    let o = RIG.run(&["replay", "--backend", "model:V3", bin.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let o = RIG.run(&["replay", "--backend", "model:V2b", "--json", bin.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("replay --json");
    assert_eq!(v[0]["verdict"]["class"], "errno");
    assert_eq!(v[0]["verdict"]["op"], "KVM_SET_XSAVE");
}

fn finding_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("findings")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

fn assert_findings_valid(dir: &Path) -> usize {
    let f = finding_dirs(dir);
    for p in &f {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(!name.starts_with('.'), "temporary directory left behind: {name}");
        let case = xsave_oracle::Case::decode(&std::fs::read(p.join("case.bin")).expect("case.bin")).expect("decodes");
        // A raw finding (not minimized yet: no minimize.json) is case.bin, verdict.json and
        // host.json; a final one adds case.json.
        if p.join("minimize.json").exists() {
            let json = std::fs::read_to_string(p.join("case.json")).expect("case.json");
            assert_eq!(xsave_oracle::Case::from_json(&json).expect("json"), case);
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("verdict.json")).expect("verdict")).expect("verdict json");
        assert_eq!(v["verdict"]["signature"], name);
    }
    f.len()
}

#[test]
fn composite_model_backend_runs_names_itself_and_resumes_only_as_itself() {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8");
    let composite = "model:V3+get=V1+set=V2b";
    let o = RIG.run(&["fuzz", "--backend", composite, "--iterations", "400", "--seed", "3", "--json", "--workdir", wd]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s["backend"], composite);
    // Only the two carried defects' groups (runner/tests/groups.rs pins the full set).
    let keys: Vec<&str> = s["groups"].as_array().expect("groups").iter().map(|g| g["key"].as_str().expect("key")).collect();
    assert!(!keys.is_empty());
    for k in &keys {
        assert!(k.starts_with("set.accept|KVM_SET_XSAVE|") || k.starts_with("get.mask.v3|KVM_GET_XSAVE"), "{k}");
    }
    assert_findings_valid(dir.path());
    // Resuming under another composite is refused; under the same one it continues.
    assert_one_line_error(
        &RIG.run(&["fuzz", "--backend", "model:V3+get=V1", "--resume", "--iterations", "500", "--workdir", wd]),
        composite,
    );
    let o = RIG.run(&["fuzz", "--backend", composite, "--resume", "--json", "--iterations", "500", "--seed", "3", "--workdir", wd]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert_eq!(s["resumed"], true, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sigkill_then_resume_loses_nothing() {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8");
    let mut child = RIG
        .command()
        .args(["fuzz", "--backend", "model:V2b", "--duration", "60s", "--seed", "9", "--workdir", wd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let before = assert_findings_valid(dir.path());
    assert!(before > 0, "no finding within 2.5 s of a V2b campaign");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("campaign.json")).expect("state")).expect("state json");
    let done = state["next_iteration"].as_u64().expect("next_iteration");
    assert!(done > 0);
    // Without --resume the workdir is refused; with it the campaign continues.
    let o = RIG.run(&["fuzz", "--backend", "model:V2b", "--iterations", "10", "--seed", "9", "--workdir", wd]);
    assert_one_line_error(&o, "--resume");
    let target = done + 2000;
    let o = RIG.run(&["fuzz", "--backend", "model:V2b", "--resume", "--json", "--iterations", &target.to_string(), "--workdir", wd]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert_eq!(o.status.code(), s["exit_status"].as_i64().map(|c| c as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(matches!(o.status.code(), Some(0 | 1)));
    assert_eq!(s["resumed"], true);
    assert_eq!(s["next_iteration"].as_u64(), Some(target));
    assert!(s["execs"].as_u64().expect("execs") >= target);
    let after = assert_findings_valid(dir.path());
    assert!(after >= before);
    assert_eq!(s["findings"].as_u64(), Some(after as u64));
}

#[test]
fn long_kvm_campaign_leaks_nothing() {
    if !kvm_or_skip("long_kvm_campaign_leaks_nothing") {
        return;
    }
    let dir = tempdir();
    // The KVM_SET_FPU departure (docs/findings) would be found here: left out, so 0 divergences
    // keeps its meaning.
    let o =
        RIG.run(&["fuzz", "--iterations", "100000", "--seed", "3", "--no-fpu", "--json", "--workdir", dir.path().to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert_eq!(s["execs"].as_u64(), Some(100_000));
    let r = &s["resources"];
    eprintln!("100k-case campaign: {r} execs/s {}", s["execs_per_sec"]);
    // Open beyond the start: the current VM and vCPU fds, and the guest memory's handle on
    // that VM (kept while its memory slot exists); nothing grows with the case count.
    assert!(r["fds_end"].as_u64() <= r["fds_start"].as_u64().map(|n| n + 3), "fd growth: {r}");
    assert!(r["kvm_vm_fds_end"].as_u64() <= Some(2), "VM leak: {r}");
    assert!(r["peak_rss_kib"].as_u64().expect("rss") < 100 * 1024, "peak RSS {r}");
    assert_eq!(s["divergent_cases"], 0, "{s}");
}

#[test]
fn corpus_coverage_lists_points_and_names_bad_files() {
    let dir = tempdir();
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/seed")).expect("seeds").flatten() {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
    }
    std::fs::write(dir.path().join("crash-deadbeef"), b"{\"not\": \"a case\"}").expect("write");
    let o = RIG.run(&[
        "corpus",
        "coverage",
        "--json",
        "--host-facts",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json"),
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let seeds = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/seed")).expect("seeds").count();
    assert_eq!(v["cases"].as_u64(), Some(seeds as u64));
    assert!(v["skipped"][0].as_str().expect("skipped").contains("crash-deadbeef"));
    assert!(v["rules_covered"].as_u64().expect("n") > 30);
    assert!(v["points"].as_array().expect("points").iter().any(|p| p["point"] == "set.reject.xcomp_bv"));
}

#[test]
fn sigkill_during_parallel_campaign_then_resume() {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8");
    let mut parent = RIG
        .command()
        .args([
            "fuzz",
            "--jobs",
            "2",
            "--backend",
            "model:V2b",
            "--duration",
            "60s",
            "--seed",
            "21",
            "--workdir",
            wd,
            "--minimize-budget",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(3000));
    parent.kill().expect("SIGKILL the parent");
    parent.wait().expect("wait");
    // Workers die with their parent (SIGTERM) and save their state.
    std::thread::sleep(Duration::from_millis(1500));
    let before = assert_findings_valid(dir.path());
    assert!(before > 0, "no finding before the kill");
    let done: Vec<u64> = (0..2)
        .map(|k| {
            let p = dir.path().join(format!("workers/{k}/campaign.json"));
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("worker state")).expect("json");
            v["next_iteration"].as_u64().expect("n")
        })
        .collect();
    let target = (done[0].max(done[1]) + 1000) * 2;
    let o = RIG.run(&[
        "fuzz",
        "--jobs",
        "2",
        "--backend",
        "model:V2b",
        "--resume",
        "--json",
        "--iterations",
        &target.to_string(),
        "--seed",
        "21",
        "--workdir",
        wd,
    ]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("summary");
    assert_eq!(o.status.code(), s["exit_status"].as_i64().map(|c| c as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(matches!(o.status.code(), Some(0 | 1)));
    assert_eq!(s["resumed"], true);
    assert_eq!(s["jobs"], 2);
    for (k, before_kill) in done.iter().enumerate() {
        let p = dir.path().join(format!("workers/{k}/campaign.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("state")).expect("json");
        assert_eq!(v["next_iteration"].as_u64(), Some(target / 2), "worker {k} continued to its share");
        assert!(v["next_iteration"].as_u64() > Some(*before_kill));
    }
    let after = assert_findings_valid(dir.path());
    assert!(after >= before);
    assert_eq!(s["findings"].as_u64(), Some(after as u64));
}

/// `--guest-timeout` changes how long a looping guest runs, never its verdict: a guest that
/// writes XMM, spins and would then XSAVE agrees with the oracle at 1ms and at 300ms.
#[test]
fn guest_timeout_bounds_a_spinning_guest_whatever_the_bound() {
    if !kvm_or_skip("guest_timeout_bounds_a_spinning_guest_whatever_the_bound") {
        return;
    }
    let dir = tempdir();
    let f = dir.path().join("spin.json");
    let case = r#"{"config": {"cpuid": {"base": {"Supported": {"xcr0_mask": "0xffffffffffffffff", "drop_leaves": []}}, "entries": [], "reverse": false}},
        "ops": [{"run_guest": {"actions": [{"xmm": {"seed": "0x5"}}, "spin", "xsave"]}}, "get_xsave", {"run_guest": {"actions": ["xsave"]}}]}"#;
    std::fs::write(&f, case).expect("case");
    for bound in ["1ms", "300ms"] {
        let o = RIG.run(&["replay", "--guest-timeout", bound, "--json", f.to_str().expect("path")]);
        assert_eq!(o.status.code(), Some(0), "bound {bound}: {}{}", xsave_testkit::text(&o.stdout), xsave_testkit::text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let run = |side: &str| {
            v[0][side]["results"].as_array().and_then(|r| r.iter().find(|r| r["origin"] == serde_json::json!({"Op": 0})).cloned())
        };
        // Exit code 3: timeout.
        assert_eq!(run("observed").map(|r| r["ret"].clone()), Some(serde_json::json!({"Ok": 3})), "bound {bound}");
        let rules = run("expected").map(|r| r["rules"].to_string()).unwrap_or_default();
        assert!(rules.contains("run.timeout"), "bound {bound}: rules {rules}");
    }
}
