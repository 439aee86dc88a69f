#![no_main]
//! See `qu_fuzz_targets::cluster_yaml`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| qu_fuzz_targets::cluster_yaml(data));
