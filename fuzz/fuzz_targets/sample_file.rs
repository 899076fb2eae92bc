//! A K/V/Q input file (safetensors bytes), as `vidkv report` and `quantize` read one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vidkv::io::KvSample::from_bytes("fuzz", data, None);
});
