//! The case decoder never panics; whatever decodes round-trips through binary and JSON.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xsave_oracle::case::check_round_trip(data));
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    xsave_oracle::mutate::mutate_in_place(data, size, max_size, seed)
});
