//! Benchmarks behind `vidkv bench`: quantization throughput, CPU reference against the GPU
//! kernels, measured in one run on the same synthetic cache.
//!
//! Timings are wall clock around whole calls (upload, kernels and read-back included for the
//! GPU), after one warm-up call that pays the pipelines' compilation. Compare figures only
//! within one run: absolute times on shared machines are noise.

use std::time::Instant;

use crate::config::QuantConfig;
use crate::error::Result;
use crate::gpu::quantize::quantize_cache;
use crate::gpu::GpuContext;
use crate::packed::{CacheShape, PackedCache};
use crate::tensor::Tensor;

/// One preset's quantization throughput.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeResult {
    pub preset: String,
    pub cpu_median_ms: f64,
    pub gpu_median_ms: Option<f64>,
    /// Tokens of the cache (all KV heads of the layer count once per token).
    pub tokens: usize,
}

impl QuantizeResult {
    /// Tokens per second on the CPU reference.
    pub fn cpu_tokens_per_s(&self) -> f64 {
        self.tokens as f64 / (self.cpu_median_ms / 1e3)
    }
    /// Tokens per second on the GPU, when one ran.
    pub fn gpu_tokens_per_s(&self) -> Option<f64> {
        self.gpu_median_ms.map(|ms| self.tokens as f64 / (ms / 1e3))
    }
}

/// A deterministic K or V tensor with per-channel structure and outlier channels, shaped
/// like a real cache (the values do not change the work done).
pub fn synthetic_tensor(shape: CacheShape, seed: u64) -> Tensor {
    let dims = [shape.layers, shape.kv_heads, shape.tokens, shape.head_dim];
    let mut state = seed | 1;
    let data = (0..shape.elements())
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let channel = i % shape.head_dim;
            noise * (1.0 + (channel % 7) as f32) + if channel % 13 == 0 { 4.0 } else { 0.0 }
        })
        .collect();
    Tensor {
        shape: dims.to_vec(),
        data,
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Times `f` `runs` times after one warm-up call; returns the median in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(samples))
}

/// Quantization throughput of each preset on a cache of `shape`, CPU and (if given) GPU.
pub fn quantize_throughput(
    gpu: Option<&GpuContext>,
    shape: CacheShape,
    presets: &[(String, QuantConfig)],
    runs: usize,
) -> Result<Vec<QuantizeResult>> {
    let k = synthetic_tensor(shape, 1);
    let v = synthetic_tensor(shape, 2);
    presets
        .iter()
        .map(|(name, config)| {
            let cpu_median_ms = time_ms(runs, || {
                PackedCache::quantize(&k, &v, config, &[]).map(drop)
            })?;
            let gpu_median_ms = gpu
                .map(|ctx| time_ms(runs, || quantize_cache(ctx, &k, &v, config, &[]).map(drop)))
                .transpose()?;
            Ok(QuantizeResult {
                preset: name.clone(),
                cpu_median_ms,
                gpu_median_ms,
                tokens: shape.tokens,
            })
        })
        .collect()
}
