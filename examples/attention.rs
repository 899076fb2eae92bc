//! Attention straight from a quantized cache on the GPU, checked against the CPU.
//!
//! ```text
//! cargo run --release --example attention
//! ```
//!
//! Quantizes one Qwen2-7B-shaped layer (4 KV heads, d = 128, 4,096 tokens) with the
//! `vidkv` preset, uploads it, attends with 28 query heads at the last position (decode),
//! and compares with the reference attention over the dequantized cache.

use vidkv::bench::synthetic_tensor;
use vidkv::gpu::attention::{attend, GpuLayer};
use vidkv::reference::attention::attend_dense;
use vidkv::report::relative_l2;
use vidkv::{CacheShape, GpuContext, GpuOptions, PackedCache, QuantConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = CacheShape {
        layers: 1,
        kv_heads: 4,
        tokens: 4096,
        head_dim: 128,
    };
    let (q_heads, d) = (28, shape.head_dim);
    let k = synthetic_tensor(shape, 1)?;
    let v = synthetic_tensor(shape, 2)?;
    let q: Vec<f32> = synthetic_tensor(
        CacheShape {
            kv_heads: q_heads,
            tokens: 1,
            ..shape
        },
        3,
    )?
    .data
    .iter()
    .map(|x| 0.3 * x)
    .collect();

    let cache = PackedCache::quantize(&k, &v, &QuantConfig::preset("vidkv")?, &[])?;
    let gpu = GpuContext::new(&GpuOptions::default())?;
    let layer = GpuLayer::upload(&gpu, &cache, 0)?;
    // One query position per head (decode) seeing the whole context.
    let out = attend(&gpu, &layer, &q, q_heads, &[(0, shape.tokens as u32)])?;

    let (k_hat, v_hat) = cache.dequantize();
    let head_len = shape.tokens * d;
    let visible = vec![true; shape.tokens];
    let mut worst = 0.0f64;
    for h in 0..q_heads {
        let kv = h / (q_heads / shape.kv_heads);
        let expected = attend_dense(
            &q[h * d..(h + 1) * d],
            &k_hat.data[kv * head_len..(kv + 1) * head_len],
            &v_hat.data[kv * head_len..(kv + 1) * head_len],
            &visible,
        );
        worst = worst.max(relative_l2(&out[h * d..(h + 1) * d], &expected));
    }
    println!(
        "{}: {} bytes of packed cache ({:.3} bits/element), worst relative error vs CPU {worst:.2e}",
        gpu.adapter_name(),
        layer.cache_bytes(),
        cache.size().all_bits()
    );
    // What the adapter offers and what the context chose for it: the fast paths (GpuOptions
    // can ask for portable kernels only, or for f16 row loads on a CPU adapter too) and the
    // split size (`vidkv adapter` prints the whole report).
    let capabilities = gpu.capabilities();
    println!(
        "fast paths: {:?}; {}-token splits; cooperative matrices offered: {}",
        capabilities.fast_paths, capabilities.split_tokens, capabilities.cooperative_matrix
    );
    Ok(())
}
