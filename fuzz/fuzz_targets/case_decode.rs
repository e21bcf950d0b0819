//! The case decoder never panics; whatever decodes round-trips through binary and JSON.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xsave_oracle::case::check_round_trip(data));
