//! A case on this host's /dev/kvm against the oracle; a divergence is a crash, so libFuzzer
//! saves the input (a case file `xsave-rig replay` reads).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(case) = xsave_oracle::Case::decode(data) {
        xsave_runner::differential::check_on_kvm(&case);
    }
});
