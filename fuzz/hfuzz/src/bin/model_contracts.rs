//! honggfuzz: oracle invariants on every input read as a case (no /dev/kvm).
fn main() {
    loop {
        honggfuzz::fuzz!(|data: &[u8]| {
            xsave_oracle::invariants::check(&xsave_oracle::case::from_fuzz_input(data));
        });
    }
}
