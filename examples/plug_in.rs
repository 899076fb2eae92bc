//! The few lines a host application writes to swap its f16 KV cache for vidkv.
//!
//! ```text
//! cargo run --release --example plug_in
//! ```
//!
//! Per layer, where the model used to concatenate keys and values into its f16 cache and
//! attend over it, it calls `prefill` (prompt), `append` (each new token) and
//! `attend_causal`. The keys, values and queries here are synthetic stand-ins for the
//! model's projections.

use vidkv::bench::synthetic_tensor;
use vidkv::{CacheShape, GpuContext, GpuOptions, KvCache, ModelShape, QuantConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = ModelShape {
        layers: 4,
        q_heads: 28,
        kv_heads: 4,
        head_dim: 128,
    };
    let gpu = GpuContext::new(&GpuOptions::default())?;
    // 1. Make the cache once per sequence.
    let mut cache = KvCache::new(shape, QuantConfig::preset("vidkv")?, &gpu)?;

    let prompt = 1000;
    let kv = |tokens, seed| {
        synthetic_tensor(
            CacheShape {
                layers: 1,
                kv_heads: shape.kv_heads,
                tokens,
                head_dim: shape.head_dim,
            },
            seed,
        )
        .map(|t| t.data)
    };
    let q = |seed| {
        synthetic_tensor(
            CacheShape {
                layers: 1,
                kv_heads: shape.q_heads,
                tokens: 1,
                head_dim: shape.head_dim,
            },
            seed,
        )
        .map(|t| t.data)
    };
    for layer in 0..shape.layers {
        // 2. Prompt: keys and values as [kv_heads, tokens, head_dim].
        cache.prefill(layer, &kv(prompt, 1)?, &kv(prompt, 2)?)?;
    }
    for step in 0..8u64 {
        for layer in 0..shape.layers {
            // 3. Each generated token: append its key and value, then attend.
            cache.append(layer, &kv(1, 10 + step)?, &kv(1, 20 + step)?)?;
            let out = cache.attend_causal(layer, &q(30 + step)?)?;
            assert_eq!(out.len(), shape.q_heads * shape.head_dim);
        }
    }
    println!(
        "{} tokens per layer on {}: {} bytes, {:.3} bits per element ({:.1}x smaller than f16)",
        cache.len(0),
        gpu.adapter_name(),
        cache.bytes(),
        cache.bits_per_element(),
        16.0 / cache.bits_per_element()
    );
    Ok(())
}
