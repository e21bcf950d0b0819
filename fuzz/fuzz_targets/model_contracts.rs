//! Oracle invariants on any decodable case (no /dev/kvm): see `xsave_oracle::invariants`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    xsave_oracle::invariants::check(&xsave_oracle::case::from_fuzz_input(data));
});
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    xsave_oracle::mutate::mutate_in_place(data, size, max_size, seed)
});
