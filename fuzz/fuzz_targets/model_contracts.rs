//! Oracle invariants on any decodable case (no /dev/kvm): see `xsave_oracle::invariants`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(case) = xsave_oracle::Case::decode(data) {
        xsave_oracle::invariants::check(&case);
    }
});
