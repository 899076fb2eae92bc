//! A saved packed cache (`vidkv-cache`), as `vidkv inspect` and `PackedCache::load` read it;
//! what loads is dequantized and sized, as a caller would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cache) = vidkv::PackedCache::from_safetensors(data) {
        let _ = cache.size();
        let _ = cache.dequantize();
    }
});
