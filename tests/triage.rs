//! Triage: minimization keeps the signature and is deterministic; generated C reproducers
//! (guest runs included) compile warning-free everywhere and reproduce on this host's KVM, in
//! plain mode and in bisect mode (TAP, exit 0 / 1 / 125).

use std::path::Path;
use std::process::Command;
use xsave_oracle::judge::judge;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{predict, Case, Contract, HostFacts, ModelConfig};
use xsave_runner::campaign::case_for;
use xsave_runner::minimize::{minimize, signature_of};
use xsave_runner::seeds::seed_corpus;
use xsave_runner::ModelBackend;
use xsave_testkit::{kvm_or_skip, tempdir};

fn v2b_finding() -> (Case, String) {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut be = ModelBackend::new(host.clone(), ModelConfig { contract: Contract::V2b, quirks: vec![] });
    for i in 0..5000 {
        let case = case_for(99, i);
        if let Some(sig) = signature_of(&mut be, &host, &ModelConfig::default(), &case).expect("run") {
            if sig.starts_with("errno-") && case.ops.len() > 6 {
                return (case, sig);
            }
        }
    }
    panic!("no V2b errno finding in 5000 cases");
}

#[test]
fn minimizer_keeps_signature_and_is_deterministic() {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let (case, sig) = v2b_finding();
    let run = || {
        let mut be = ModelBackend::new(host.clone(), ModelConfig { contract: Contract::V2b, quirks: vec![] });
        minimize(&mut be, &host, &ModelConfig::default(), &case, &sig, 20_000).expect("minimize")
    };
    let (a, stats) = run();
    let (b, _) = run();
    assert_eq!(a.encode(), b.encode(), "minimization is deterministic");
    assert!(stats.steps_after <= 4, "minimized to {} steps: {}", stats.steps_after, a.to_json());
    assert!(stats.steps_after < stats.steps_before && stats.bytes_after < stats.bytes_before, "{stats:?}");
    let mut be = ModelBackend::new(host.clone(), ModelConfig { contract: Contract::V2b, quirks: vec![] });
    assert_eq!(signature_of(&mut be, &host, &ModelConfig::default(), &a).expect("run").as_deref(), Some(sig.as_str()));
    eprintln!("V2b finding minimized: {stats:?}");
}

fn compile(src: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&c, src).expect("write C");
    let o = Command::new("gcc").args(["-Wall", "-Werror", "-O1", "-o"]).arg(&bin).arg(&c).output().expect("gcc");
    assert!(o.status.success(), "{name}.c does not compile cleanly:\n{}", String::from_utf8_lossy(&o.stderr));
    bin
}

#[test]
fn reproducers_compile_warning_free() {
    let dir = tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let model = ModelConfig::default();
    let mut cases: Vec<(String, Case)> = seed_corpus();
    cases.extend((0..20).map(|i| (format!("gen{i}"), case_for(5, i))));
    for (name, case) in cases {
        let exp = predict(&case, &host, &model);
        let src = xsave_reports::repro::c_reproducer(&case, &host, &model, &exp, &name);
        assert!(!src.contains("not reproduced in C"), "{name}: every op is reproduced");
        compile(&src, dir.path(), &name);
    }
}

/// What a reproducer printed and how it exited.
fn run_repro(bin: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().expect("run repro");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// Bisect-mode output is TAP: the plan `1..steps`, then one `ok`/`not ok` line per step in
/// order, each naming the step and its expectation; `not ok` exactly when the exit is 1.
fn check_tap(text: &str, steps: usize, code: Option<i32>, what: &str) {
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    assert_eq!(lines.next(), Some(format!("1..{steps}").as_str()), "{what}: TAP plan\n{text}");
    let points: Vec<&str> = lines.collect();
    assert_eq!(points.len(), steps, "{what}: one test point per step\n{text}");
    for (k, l) in points.iter().enumerate() {
        let rest = l.strip_prefix("not ok ").or_else(|| l.strip_prefix("ok ")).unwrap_or_else(|| panic!("{what}: not a test point: {l}"));
        assert!(rest.starts_with(&format!("{} - step {k}: ", k + 1)), "{what}: {l}");
        assert!(rest.contains(" returns ") || rest.contains(" ends with exit "), "{what}: names the expectation: {l}");
    }
    let failed = points.iter().any(|l| l.starts_with("not ok"));
    assert_eq!(failed, code == Some(1), "{what}: not ok lines iff exit 1\n{text}");
}

/// Every seed (guest runs included) under the auto, strict and V2b expectations: the C
/// reproducer's exit, plain and bisect, is the rig's verdict of the same case on this host's
/// KVM (0 agree, 1 divergence), and bisect mode prints TAP. Guest-run cases must give both
/// outcomes somewhere (the V2b expectations refuse the forced load the kernel accepts).
#[test]
fn reproducers_reproduce_on_kvm() {
    if !kvm_or_skip("reproducers_reproduce_on_kvm") {
        return;
    }
    let dir = tempdir();
    let host = xsave_runner::probe::probe().expect("probe").host;
    let auto = ModelConfig { quirks: host.quirks.clone(), ..ModelConfig::default() };
    let strict = ModelConfig::default();
    let v2b = ModelConfig { contract: Contract::V2b, quirks: host.quirks.clone() };
    let mut be = xsave_runner::kvm::KvmBackend::new(host.clone(), false).expect("kvm");
    let mut guest_outcomes = std::collections::BTreeSet::new();
    for (name, case) in seed_corpus() {
        for (model, tag) in [(&auto, "auto"), (&strict, "strict"), (&v2b, "v2b")] {
            use xsave_runner::Backend;
            let obs = be.execute(&case).expect("run");
            let (exp, verdict) = judge(&case, &host, model, &obs);
            let bin = compile(&xsave_reports::repro::c_reproducer(&case, &host, model, &exp, &name), dir.path(), &format!("{name}-{tag}"));
            let want = if verdict == Verdict::Agree { 0 } else { 1 };
            let (code, text) = run_repro(&bin, &[]);
            assert_eq!(code, Some(want), "{name} ({tag}): the C reproducer disagrees with the rig:\n{text}");
            if want == 1 && !host.quirks.is_empty() && name == "probe-cpuid-fp-sse-set-fp-sse-ymm-get" {
                assert!(text.contains("bytes 512..513: observed"), "XSTATE_BV difference printed:\n{text}");
            }
            let (bcode, tap) = run_repro(&bin, &["--bisect"]);
            assert_eq!(bcode, Some(want), "{name} ({tag}) --bisect:\n{tap}");
            check_tap(&tap, case.steps().len(), bcode, &format!("{name} ({tag})"));
            if case.ops.iter().any(|o| matches!(o, xsave_oracle::Op::RunGuest(_))) {
                guest_outcomes.insert(want);
            }
        }
    }
    assert_eq!(guest_outcomes.into_iter().collect::<Vec<_>>(), [0, 1], "guest-run reproducers both agree and diverge");
}

/// A reproducer whose expectations were computed for other xfeatures than this host's KVM
/// supports cannot judge this host: bisect mode skips (exit 125, TAP `1..0 # SKIP`), plain mode
/// exits 2; and `repro --c --bisect` makes bisect the default.
#[test]
fn reproducers_skip_where_the_host_lacks_the_xfeatures() {
    if !kvm_or_skip("reproducers_skip_where_the_host_lacks_the_xfeatures") {
        return;
    }
    let dir = tempdir();
    let mut host = xsave_runner::probe::probe().expect("probe").host;
    host.supported_xcr0 ^= 1 << 9; // PKRU: present here or not, the expectations now differ
    let model = ModelConfig::default();
    let (name, case) = seed_corpus().into_iter().find(|(n, _)| n == "guest-force-load-beyond-guest-cpuid").expect("seed");
    let exp = predict(&case, &host, &model);
    let opts = xsave_reports::repro::Options { bisect: true };
    let bin = compile(&xsave_reports::repro::c_reproducer_with(&case, &host, &model, &exp, &name, opts), dir.path(), "skip");
    let (code, text) = run_repro(&bin, &[]);
    assert_eq!(code, Some(125), "bisect by default:\n{text}");
    assert!(text.starts_with("1..0 # SKIP the host's KVM supports XCR0"), "{text}");
    let (code, _) = run_repro(&bin, &["--plain"]);
    assert_eq!(code, Some(2));
}

/// `repro --c --bisect` through the CLI: the program defaults to bisect mode (TAP on stdout,
/// the exit a `git bisect run` understands) and `--plain` still gives the plain lines.
#[test]
fn repro_cli_bisect_makes_tap_the_default() {
    if !kvm_or_skip("repro_cli_bisect_makes_tap_the_default") {
        return;
    }
    let dir = tempdir();
    let case = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/seed/guest-touch-save-restore-readback.case");
    let src = dir.path().join("r.c");
    let o = Command::new(env!("CARGO_BIN_EXE_xsave-rig"))
        .args(["repro", case, "--c", "--bisect", "-o"])
        .arg(&src)
        .output()
        .expect("xsave-rig repro");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("default mode --bisect"));
    let bin = compile(&std::fs::read_to_string(&src).expect("r.c"), dir.path(), "cli");
    let steps = Case::decode(&std::fs::read(case).expect("case")).expect("decode").steps().len();
    let (code, tap) = run_repro(&bin, &[]);
    assert!(matches!(code, Some(0 | 1)), "{tap}");
    check_tap(&tap, steps, code, "cli --bisect");
    let (plain, text) = run_repro(&bin, &["--plain"]);
    assert_eq!(plain, code);
    assert!(text.contains("step  0 ") && !text.starts_with("1.."), "{text}");
}
