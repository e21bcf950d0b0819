//! A case on this host's /dev/kvm against the oracle; a divergence is a crash, so libFuzzer
//! saves the input (a case file `xsave-rig replay` reads).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    xsave_runner::differential::check_on_kvm(&xsave_oracle::case::from_fuzz_input(data));
});
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    xsave_oracle::mutate::mutate_in_place(data, size, max_size, seed)
});
