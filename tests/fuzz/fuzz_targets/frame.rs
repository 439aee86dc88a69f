#![no_main]
//! See `qu_fuzz_targets::frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| qu_fuzz_targets::frame(data));
