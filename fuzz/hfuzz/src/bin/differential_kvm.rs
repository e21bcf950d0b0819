//! honggfuzz: every input read as a case, run on this host's /dev/kvm against the oracle; a
//! divergence is a crash.
fn main() {
    // honggfuzz starts this process stopped and continues it with ptrace: end the group stop,
    // or KVM's per-VM vhost task joins it and every VM teardown hangs (see `continue_self`).
    xsave_runner::sys::continue_self();
    loop {
        honggfuzz::fuzz!(|data: &[u8]| {
            xsave_runner::differential::check_on_kvm(&xsave_oracle::case::from_fuzz_input(data));
        });
    }
}
