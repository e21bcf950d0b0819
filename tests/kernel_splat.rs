//! The kernel's own signals are a second oracle: a WARN logged while a case runs is a
//! `kernel-splat` finding attributed to that case. The splat is provoked on purpose through the
//! test hook `XSAVE_RIG_TEST_KMSG_AT=N`, which logs a WARN-shaped record to `/dev/kmsg` while
//! the backend runs its N-th case. What this adds to the real splat of `tests/lab_build.rs` (a
//! kernel built to WARN on a marked KVM_SET_XSAVE, in the lab): it runs on this host's own
//! `/dev/kmsg` reader, needs no special kernel, and checks a campaign's finding on disk and
//! `replay` of that finding.

use xsave_testkit::{injected_splat, kvm_or_skip, tempdir, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

#[test]
fn a_splat_is_a_finding_of_the_case_that_ran() {
    if !kvm_or_skip("a_splat_is_a_finding_of_the_case_that_ran") {
        return;
    }
    if std::fs::OpenOptions::new().write(true).open("/dev/kmsg").is_err() {
        panic!("/dev/kmsg is not writable here although KVM is usable (run as root)");
    }
    let dir = tempdir();
    let wd = dir.path().join("w");
    let o = RIG
        .command()
        .args(["fuzz", "--iterations", "40", "--seed", "3", "--no-feedback", "--no-fpu", "--minimize-budget", "0", "--json", "--workdir"])
        .arg(&wd)
        .env("XSAVE_RIG_TEST_KMSG_AT", "11")
        .output()
        .expect("fuzz");
    assert_eq!(o.status.code(), Some(1), "a new finding: exit 1\n{}", String::from_utf8_lossy(&o.stderr));
    let (splat, v) = injected_splat(&wd);
    // Attributed to the case that ran: the finding's case is the campaign's case of that
    // iteration, and replaying it with the hook at its first case shows the splat again.
    let i = v["iteration"].as_u64().expect("iteration");
    let case = xsave_runner::campaign::case_for(3, i);
    assert_eq!(std::fs::read(splat.join("case.bin")).expect("case.bin"), case.encode());
    let o = RIG.command().arg("replay").arg(splat.join("case.bin")).env("XSAVE_RIG_TEST_KMSG_AT", "0").output().expect("replay");
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("[kernel-splat]") && text.contains("kernel: WARNING:"), "{text}");
}
