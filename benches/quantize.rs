//! Criterion benchmarks of quantization, CPU reference and GPU kernels, on one layer of a
//! Qwen2-7B-shaped cache (4 KV heads, d = 128) at 4k tokens. `vidkv bench quantize` runs
//! the same code on the full 16k-token layer and prints tokens per second.

use criterion::{criterion_group, criterion_main, Criterion};

use vidkv::bench::synthetic_tensor;
use vidkv::gpu::quantize::quantize_cache;
use vidkv::gpu::{GpuContext, GpuOptions};
use vidkv::{CacheShape, PackedCache, QuantConfig};

fn quantize(c: &mut Criterion) {
    let shape = CacheShape {
        layers: 1,
        kv_heads: 4,
        tokens: 4096,
        head_dim: 128,
    };
    let k = synthetic_tensor(shape, 1).expect("a 4k-token layer fits in memory");
    let v = synthetic_tensor(shape, 2).expect("a 4k-token layer fits in memory");
    let gpu = GpuContext::new(&GpuOptions::default())
        .unwrap_or_else(|e| panic!("the GPU benchmarks need an adapter: {e}"));
    let mut group = c.benchmark_group("quantize_4k_tokens");
    group.sample_size(10);
    for preset in ["kivi2", "vidkv"] {
        let config = QuantConfig::preset(preset).unwrap();
        group.bench_function(format!("{preset}/cpu"), |b| {
            b.iter(|| PackedCache::quantize(&k, &v, &config, &[]).unwrap())
        });
        group.bench_function(format!("{preset}/gpu {}", gpu.adapter_info().name), |b| {
            b.iter(|| quantize_cache(&gpu, &k, &v, &config, &[]).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, quantize);
criterion_main!(benches);
