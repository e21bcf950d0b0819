//! honggfuzz: every input read as a case, run on this host's /dev/kvm against the oracle; a
//! divergence is a crash.
fn main() {
    loop {
        honggfuzz::fuzz!(|data: &[u8]| {
            xsave_runner::differential::check_on_kvm(&xsave_oracle::case::from_fuzz_input(data));
        });
    }
}
