//! Detection benchmark: a historical contract's model (XSAVE_RIG_DETECT_CONTRACT) against the
//! V3 oracle; the expected divergence class (XSAVE_RIG_DETECT_CLASS) is a crash.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    xsave_runner::differential::check_detect(&xsave_oracle::case::from_fuzz_input(data));
});
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    xsave_oracle::mutate::mutate_in_place(data, size, max_size, seed)
});
