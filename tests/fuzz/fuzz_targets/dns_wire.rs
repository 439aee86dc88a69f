#![no_main]
//! The dns plugin's parser of DNS responses (a resolver's answer is
//! arbitrary bytes): the first two bytes are the query id, the rest the
//! response. The corpus is replayed by the plugin's `wire` tests.
#[path = "../../../plugins/dns/src/wire.rs"]
#[allow(dead_code)]
mod wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let id = u16::from_be_bytes([data[0], data[1]]);
    let _ = wire::parse(&data[2..], id);
});
