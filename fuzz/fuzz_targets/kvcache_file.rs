//! A saved `KvCache` (`vidkv-kvcache`, or a packed cache with `q_heads`), loaded onto the GPU
//! (lavapipe here); what loads is attended, as a decoder would.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vidkv::gpu::{GpuContext, GpuOptions};

fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| GpuContext::new(&GpuOptions::default()).expect("a wgpu adapter"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cache) = vidkv::KvCache::from_safetensors(data, gpu()) {
        let shape = cache.shape();
        let q = vec![0.5f32; shape.q_heads * shape.head_dim];
        let _ = cache.attend(0, &q, &[(0, cache.len(0) as u32)]);
    }
});
