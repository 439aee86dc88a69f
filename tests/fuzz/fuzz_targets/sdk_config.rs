#![no_main]
//! The SDK's typed settings (`qu_sdk::Config`): every `FromValue` type on
//! arbitrary text, as a plugin reads the operator's `--set KEY=VALUE`.
//! Input: lines of `KEY=VALUE`. The corpus is replayed by the SDK's
//! `config` tests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| qu_sdk::__fuzz_config(data));
