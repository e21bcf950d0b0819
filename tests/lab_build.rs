//! `lab build` and the lab verification of the proposed KVM_SET_FPU fix (issue 14,
//! docs/findings/kvm-set-fpu-xstate-bv.md): one kernel built from Debian's linux-source-6.12
//! with `docs/findings/kvm-set-fpu-xstate-bv.patch`, compared with the stock Debian 6.12
//! kernel on the finding's C reproducer and on a short FPU campaign. Needs QEMU, busybox, a
//! C compiler and the Debian archive; skips elsewhere (fails under CI). The build is cached
//! in the run's `XSAVE_RIG_CACHE`, so CI compiles it once per run.

use std::path::Path;
use std::process::Output;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{Case, Op};
use xsave_testkit::{assert_one_line_error, lab_or_skip, repo, tempdir, text, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

fn ok(what: &str, o: &Output) -> String {
    assert!(o.status.success(), "{what}: exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A lab campaign on `kernel` (300 generated cases with FPU ops and guest runs, seed 14, no
/// feedback, through `--backend lab:<kernel>`): its new findings (neither a known issue nor
/// explained by a quirk) whose diverging step, a GET_XSAVE, GET_XSAVE2, GET_FPU or KVM_RUN,
/// follows a KVM_SET_FPU. Those are the SET_FPU/XSTATE_BV finding's symptoms (grouped under
/// `set_fpu.xfeatures|KVM_SET_FPU`); the test selects them by what the case does, so that a
/// symptom the grouping missed would count too.
fn set_fpu_findings(kernel: &str, wd: &Path) -> Vec<String> {
    let backend = format!("lab:{kernel}");
    let o = RIG.run(&["fuzz", "--backend", &backend, "--iterations", "300", "--seed", "14", "--no-feedback", "--json", "--workdir", s(wd)]);
    let out = text(&o.stdout);
    let json: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("campaign on {kernel}: no JSON summary ({e}): {out}\n{}", text(&o.stderr)));
    let keys: Vec<&str> = json["groups"].as_array().into_iter().flatten().filter_map(|g| g["key"].as_str()).collect();
    eprintln!("{kernel}: {} cases, exit {:?}, groups {keys:?}", json["execs"], o.status.code());
    let mut hits = Vec::new();
    for e in std::fs::read_dir(wd.join("findings")).into_iter().flatten().flatten() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path().join("verdict.json")).expect("verdict.json")).expect("json");
        let Ok(Verdict::Diverge(d)) = serde_json::from_value::<Verdict>(v["verdict"].clone()) else { continue };
        let case = Case::decode(&std::fs::read(e.path().join("case.bin")).expect("case.bin")).expect("case decodes");
        let steps = case.steps();
        let after_set_fpu = steps[..d.step.min(steps.len())].iter().any(|(_, op)| matches!(**op, Op::SetFpu(_)));
        let at = matches!(d.op.as_str(), "KVM_GET_XSAVE" | "KVM_GET_XSAVE2" | "KVM_GET_FPU" | "KVM_RUN");
        if d.known_issue.is_none() && d.explained_by.is_none() && after_set_fpu && at {
            hits.push(d.title.clone());
        }
    }
    hits
}

#[test]
fn bad_source_is_a_one_line_error() {
    assert_one_line_error(&RIG.run(&["lab", "build", "--source", "ubuntu:6.12"]), "expected debian:X.Y");
    let d = tempdir();
    let missing = d.path().join("none.patch");
    assert_one_line_error(&RIG.run(&["lab", "build", "--source", "debian:6.12", "--patch", s(&missing)]), "none.patch");
}

/// The patched kernel builds (a second build is a cache hit), boots in the lab, and fixes the
/// finding: the C reproducer exits 0 on it and 1 on stock 6.12, and a campaign finds the
/// SET_FPU/XSTATE_BV divergence on stock 6.12 only. A patch that does not apply is a one-line
/// error.
#[test]
fn patched_debian_6_12_fixes_set_fpu_xstate_bv() {
    if !lab_or_skip("patched_debian_6_12_fixes_set_fpu_xstate_bv") {
        return;
    }
    let findings = repo().join("docs/findings");
    let patch = findings.join("kvm-set-fpu-xstate-bv.patch");
    let t = std::time::Instant::now();
    let id = ok("lab build", &RIG.run(&["lab", "build", "--source", "debian:6.12", "--patch", s(&patch)])).trim().to_string();
    eprintln!("lab build: {id} in {:.0} s", t.elapsed().as_secs_f64());
    assert!(id.starts_with("build-6.12-") && id.len() == "build-6.12-".len() + 12, "{id}");
    let again = RIG.run(&["lab", "build", "--source", "debian:6.12", "--patch", s(&patch)]);
    assert_eq!(ok("lab build (again)", &again).trim(), id);
    assert!(text(&again.stderr).contains("from the cache"), "{}", text(&again.stderr));

    // A patch whose context is not in the source fails with one error line (after the
    // progress lines), and leaves no kernel behind.
    let d = tempdir();
    let bad = d.path().join("bad.patch");
    let text_patch = std::fs::read_to_string(&patch).expect("patch");
    assert!(text_patch.contains(" \tfxsave->rip = fpu->last_ip;"), "the patch's context changed");
    // (Its first line names this run's directory: a patch no earlier run can have cached.)
    let broken = text_patch.replace(" \tfxsave->rip = fpu->last_ip;", " \tfxsave->rip = fpu->no_such_field;");
    std::fs::write(&bad, format!("not applicable, made in {}\n{broken}", d.path().display())).expect("write");
    let o = RIG.run(&["lab", "build", "--source", "debian:6.12", "--patch", s(&bad)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("xsave-rig: error: patch ") && last.contains("does not apply to linux-source-6.12="), "{err}");
    assert!(err.lines().filter(|l| l.starts_with("xsave-rig: error")).count() == 1, "{err}");

    // The reproducer, generated in the stock guest (its expectations use that guest's probe),
    // compiled once, run in both guests.
    let case = d.path().join("c.case");
    ok("case encode", &RIG.run(&["case", "encode", s(&findings.join("kvm-set-fpu-xstate-bv.case.json")), "-o", s(&case)]));
    let gen = d.path().join("gen");
    std::fs::create_dir_all(&gen).expect("mkdir");
    let src = gen.join("repro.c");
    ok(
        "repro --c in the stock guest",
        &RIG.run(&[
            "lab",
            "run",
            "--kernel",
            "debian:6.12",
            "--timeout",
            "300",
            "--input",
            s(&case),
            "--input",
            s(&gen),
            "--output",
            s(&gen),
            "--",
            "repro",
            "--c",
            "--quirks",
            "none",
            s(&case),
            "-o",
            s(&src),
        ]),
    );
    let exe = d.path().join("repro");
    let cc = std::process::Command::new("cc").args(["-Wall", "-Werror", "-static", "-o", s(&exe), s(&src)]).output().expect("run cc");
    ok("cc -Wall -Werror repro.c", &cc);
    let run =
        |kernel: &str| RIG.run(&["lab", "run", "--kernel", kernel, "--timeout", "300", "--input", s(&exe), "--", "lab", "exec", s(&exe)]);
    let patched = run(&id);
    assert_eq!(patched.status.code(), Some(0), "reproducer on {id}:\n{}\n{}", text(&patched.stdout), text(&patched.stderr));
    assert!(text(&patched.stdout).contains("all results as expected"), "{}", text(&patched.stdout));
    let stock = run("debian:6.12");
    assert_eq!(stock.status.code(), Some(1), "reproducer on debian:6.12:\n{}\n{}", text(&stock.stdout), text(&stock.stderr));
    assert!(text(&stock.stdout).contains("DIVERGENCE: the kernel departs"), "{}", text(&stock.stdout));

    // The same campaign: SET_FPU/XSTATE_BV findings on stock 6.12 only.
    let stock_hits = set_fpu_findings("debian:6.12", &d.path().join("stock"));
    assert!(!stock_hits.is_empty(), "no SET_FPU/XSTATE_BV finding on stock 6.12");
    let patched_hits = set_fpu_findings(&id, &d.path().join("patched"));
    assert!(patched_hits.is_empty(), "SET_FPU/XSTATE_BV findings on {id}: {patched_hits:?}");
}
