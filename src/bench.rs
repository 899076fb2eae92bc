//! Benchmarks behind `vidkv bench` (a tool of the CLI and the examples, not needed by
//! hosts): quantization throughput (CPU reference against the GPU kernels) and
//! decode-attention latency of each preset against the fp16 baseline, each measured in one
//! run on the same synthetic cache.
//!
//! Timings are wall clock around whole calls (upload, kernels and read-back included for the
//! GPU), after one warm-up call that pays the pipelines' compilation. Compare figures only
//! within one run: absolute times on shared machines are noise.

use std::time::Instant;

use crate::cache::{KvCache, ModelShape};
use crate::config::QuantConfig;
use crate::error::Result;
use crate::gpu::attention::{attend_with, GpuLayer, Kernels};
use crate::gpu::quantize::quantize_cache;
use crate::gpu::GpuContext;
use crate::packed::stp::takes_protection;
use crate::packed::{CacheShape, PackedCache};
use crate::tensor::{check_host_memory, Tensor};

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
/// like a real cache (the values do not change the work done). A shape whose f32 data would
/// not fit the free host memory is a [`crate::error::VidkvError::TooLarge`], before anything is allocated.
pub fn synthetic_tensor(shape: CacheShape, seed: u64) -> Result<Tensor> {
    check_host_memory("a synthetic tensor", host_bytes(shape, 4))?;
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
    Ok(Tensor {
        shape: dims.to_vec(),
        data,
    })
}

/// `per_element` bytes for every element of `shape` (`None` on overflow).
fn host_bytes(shape: CacheShape, per_element: u64) -> Option<u64> {
    let elements = shape.checked_elements().ok()?;
    u64::try_from(elements).ok()?.checked_mul(per_element)
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
    // K and V in f32, their packed caches and the quantizers' working copies.
    check_host_memory("the quantization benchmark", host_bytes(shape, 24))?;
    let k = synthetic_tensor(shape, 1)?;
    let v = synthetic_tensor(shape, 2)?;
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

/// One decode-attention case.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionResult {
    pub preset: String,
    pub context: usize,
    /// Median time of one decode step (GPU timestamps when available, else wall clock).
    pub median_ms: f64,
    /// Median wall-clock time of the call (upload of the query and read-back included).
    pub wall_median_ms: f64,
    /// fp16 median at the same context divided by this median (> 1: faster than fp16): the
    /// faster of fp16's fast-path and portable rows.
    pub ratio_to_fp16: f64,
    /// Bytes of cache the step reads (every stored word of the layer).
    pub bytes_read: u64,
    pub gb_per_s: f64,
    /// With kernel profiling: GPU milliseconds per call of each `kernel::entry` (mean over
    /// the profiled calls, each dispatch between two timestamps), in name order.
    pub kernels: Vec<(String, f64)>,
}

/// What [`attention_latency`] measures: one layer of `kv_heads` KV heads and `q_heads` query
/// heads of `head_dim`, at each context, `runs` timed calls per case.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionBench {
    pub contexts: Vec<usize>,
    pub kv_heads: usize,
    pub q_heads: usize,
    pub head_dim: usize,
    pub runs: usize,
    /// Afterwards, `runs` more calls per case timed pass by pass (with timestamp queries).
    pub per_kernel: bool,
    /// The share of the tokens protected (STP, evenly spaced) in the caches of the presets
    /// whose values take protection (0: none).
    pub protected_share: f32,
}

/// The protected positions of a preset's cache of `tokens` tokens ([`spaced_positions`]
/// where its values take protection, else none) and the name of its rows (`name+STP` where
/// some are protected).
fn protected_case(
    (name, config): &(String, QuantConfig),
    tokens: usize,
    share: f32,
) -> (String, Vec<u32>) {
    let protected = if takes_protection(&config.values) {
        spaced_positions(tokens, share)
    } else {
        Vec::new()
    };
    let name = if protected.is_empty() {
        name.clone()
    } else {
        format!("{name}+STP")
    };
    (name, protected)
}

/// Evenly spaced positions, `share` of `tokens` (none for a share of 0).
pub fn spaced_positions(tokens: usize, share: f32) -> Vec<u32> {
    if share <= 0.0 {
        return Vec::new();
    }
    let step = (1.0 / share).round().max(1.0) as usize;
    (0..tokens as u32).step_by(step).collect()
}

/// Decode latency (one query position per query head, all of the context visible) of each
/// preset at each context of `bench`. The first preset should be `fp16`, the baseline of
/// `ratio_to_fp16`.
pub fn attention_latency(
    ctx: &GpuContext,
    presets: &[(String, QuantConfig)],
    bench: &AttentionBench,
) -> Result<(Vec<AttentionResult>, bool)> {
    let AttentionBench {
        ref contexts,
        kv_heads,
        q_heads,
        head_dim,
        runs,
        per_kernel,
        protected_share,
    } = *bench;
    let timestamps = ctx.start_profiling();
    let mut results = Vec::new();
    for &context in contexts {
        let shape = CacheShape {
            layers: 1,
            kv_heads,
            tokens: context,
            head_dim,
        };
        // K and V in f32, each preset's packed cache and its working copies.
        check_host_memory(
            &format!("the attention benchmark at {context} tokens"),
            host_bytes(shape, 24),
        )?;
        let k = synthetic_tensor(shape, 3)?;
        let v = synthetic_tensor(shape, 4)?;
        let q: Vec<f32> = synthetic_tensor(
            CacheShape {
                layers: 1,
                kv_heads: q_heads,
                tokens: 1,
                head_dim,
            },
            5,
        )?
        .data
        .iter()
        .map(|x| x * 0.3)
        .collect();
        let visible = [(0u32, context as u32)];
        // Each preset with the fastest kernels, and also with the portable kernels when
        // the adapter has a fast path for it (subgroups for the quantized presets,
        // shader-f16 for every preset's exact rows).
        let (mut cases, mut baseline_cases) = (Vec::new(), 0);
        for preset in presets {
            let config = &preset.1;
            let (name, protected) = &protected_case(preset, context, protected_share);
            let cache = PackedCache::quantize(&k, &v, config, protected)?;
            let layer = GpuLayer::upload(ctx, &cache, 0)?;
            if (ctx.uses_subgroups() && !config.is_fp16()) || ctx.uses_f16_loads() {
                cases.push((name.clone(), Kernels::Fastest, layer));
                let layer = GpuLayer::upload(ctx, &cache, 0)?;
                cases.push((format!("{name} (portable)"), Kernels::Portable, layer));
            } else {
                cases.push((name.clone(), Kernels::Fastest, layer));
            }
            // The three passes that preceded the fused split kernels (exact and 2-bit rows),
            // timed in the same run (after the current kernels: the first row, fp16, is
            // the baseline).
            let layer = GpuLayer::upload(ctx, &cache, 0)?;
            cases.push((format!("{name} (three-pass)"), Kernels::ThreePass, layer));
            if baseline_cases == 0 {
                baseline_cases = cases.len();
            }
        }
        for (_, kernels, layer) in &cases {
            for _ in 0..2 {
                attend_with(ctx, layer, &q, q_heads, &visible, *kernels)?;
            }
        }
        ctx.take_gpu_time_ms();
        // Round-robin over the presets, so that drift of a shared machine hits all alike.
        let mut gpu_times = vec![Vec::with_capacity(runs); cases.len()];
        let mut wall_times = vec![Vec::with_capacity(runs); cases.len()];
        for _ in 0..runs.max(1) {
            for (i, (_, kernels, layer)) in cases.iter().enumerate() {
                let start = Instant::now();
                attend_with(ctx, layer, &q, q_heads, &visible, *kernels)?;
                wall_times[i].push(start.elapsed().as_secs_f64() * 1e3);
                if let Some(ms) = ctx.take_gpu_time_ms() {
                    gpu_times[i].push(ms);
                }
            }
        }
        let mut kernel_times = vec![Vec::new(); cases.len()];
        if per_kernel && ctx.start_kernel_profiling() {
            for (i, (_, kernels, layer)) in cases.iter().enumerate() {
                for _ in 0..runs.max(1) {
                    attend_with(ctx, layer, &q, q_heads, &visible, *kernels)?;
                }
                kernel_times[i] = ctx
                    .take_kernel_times()
                    .into_iter()
                    .map(|(name, ms, _)| (name, ms / runs.max(1) as f64))
                    .collect();
            }
            ctx.stop_kernel_profiling();
            ctx.take_gpu_time_ms();
        }
        let medians: Vec<(f64, f64)> = (0..cases.len())
            .map(|i| {
                let wall = median(wall_times[i].clone());
                let gpu = if gpu_times[i].is_empty() {
                    wall
                } else {
                    median(gpu_times[i].clone())
                };
                (gpu, wall)
            })
            .collect();
        // The baseline: the faster of the first preset's (fp16's) current kernels, its fast
        // path and its portable rows, so that a fast path slower on this adapter never
        // flatters the ratios; the three passes they replaced are timed but not the baseline.
        let fp16 = cases[..baseline_cases]
            .iter()
            .zip(&medians)
            .filter(|((_, kernels, _), _)| *kernels != Kernels::ThreePass)
            .map(|(_, (ms, _))| *ms)
            .fold(f64::INFINITY, f64::min);
        for (i, (name, _, layer)) in cases.iter().enumerate() {
            let (median_ms, wall_median_ms) = medians[i];
            let bytes_read = layer.cache_bytes();
            results.push(AttentionResult {
                preset: name.clone(),
                context,
                median_ms,
                wall_median_ms,
                ratio_to_fp16: fp16 / median_ms,
                bytes_read,
                gb_per_s: bytes_read as f64 / (median_ms / 1e3) / 1e9,
                kernels: std::mem::take(&mut kernel_times[i]),
            });
        }
    }
    Ok((results, timestamps))
}

/// One decode step of a whole-model cache.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheStepResult {
    pub preset: String,
    /// Median wall-clock time of a step: append one token to every layer, then attend in
    /// every layer (uploads and output read-backs included).
    pub wall_median_ms: f64,
    /// Median GPU time of a step (sum of its batches), when timestamps are available.
    pub gpu_median_ms: Option<f64>,
    /// Median wall-clock time of the same step through the buffer API in one submission
    /// ([`KvCache::begin_step`]: K/V already in GPU buffers, the query and the outputs in GPU
    /// buffers), until the GPU has finished it: no read-back, no host sync per layer.
    pub buffers_wall_median_ms: f64,
    /// Stored bytes of the cache after the steps.
    pub bytes: usize,
    /// GPU memory the cache holds after the steps ([`KvCache::allocated_bytes`]).
    pub allocated_bytes: u64,
}

/// Decode-step latency of a [`KvCache`] per preset for a model of `shape` filled with
/// `context` tokens per layer, `protected_share` of them protected (STP, evenly spaced:
/// [`spaced_positions`]) where the preset's values take protection (rows named
/// `preset+STP`).
pub fn cache_decode_step(
    ctx: &GpuContext,
    shape: ModelShape,
    (context, protected_share): (usize, f32),
    presets: &[(String, QuantConfig)],
    runs: usize,
) -> Result<Vec<CacheStepResult>> {
    let timestamps = ctx.start_profiling();
    let layer_shape = CacheShape {
        layers: 1,
        kv_heads: shape.kv_heads,
        tokens: context,
        head_dim: shape.head_dim,
    };
    let step_shape = CacheShape {
        tokens: 1,
        ..layer_shape
    };
    shape.validate()?;
    // One layer's K and V in f32 at a time, and the f16 cache of every layer (on a GPU that
    // shares host memory, as integrated GPUs and lavapipe do).
    let per_layer = host_bytes(layer_shape, 8);
    let whole_cache = host_bytes(layer_shape, 4).and_then(|b| b.checked_mul(shape.layers as u64));
    check_host_memory(
        &format!("the cache benchmark at {context} tokens"),
        per_layer
            .zip(whole_cache)
            .and_then(|(a, b)| a.checked_add(b)),
    )?;
    let query = synthetic_tensor(
        CacheShape {
            kv_heads: shape.q_heads,
            ..step_shape
        },
        9,
    )?
    .data
    .iter()
    .map(|x| 0.3 * x)
    .collect::<Vec<f32>>();
    let mut results = Vec::new();
    for preset in presets {
        let mut cache = KvCache::new(shape, preset.1.clone(), ctx)?;
        let (name, protected) = &protected_case(preset, context, protected_share);
        cache.protect(protected)?;
        for layer in 0..shape.layers {
            let k = synthetic_tensor(layer_shape, 100 + layer as u64)?;
            let v = synthetic_tensor(layer_shape, 200 + layer as u64)?;
            cache.prefill(layer, &k.data, &v.data)?;
        }
        let mut walls = Vec::with_capacity(runs);
        let mut gpus = Vec::with_capacity(runs);
        let mut buffer_walls = Vec::with_capacity(runs);
        let q_buffer = ctx.create_storage("bench query", &query)?;
        let outputs = (0..shape.layers)
            .map(|_| ctx.create_storage("bench output", &vec![0f32; query.len()]))
            .collect::<Result<Vec<_>>>()?;
        // Each run: one step through the host API, then one through the buffer API (both
        // append a token to every layer, so both see the same cache length).
        for run in 0..runs.max(1) + 1 {
            let k = synthetic_tensor(step_shape, 300 + run as u64)?.data;
            let v = synthetic_tensor(step_shape, 400 + run as u64)?.data;
            ctx.take_gpu_time_ms();
            let start = Instant::now();
            for layer in 0..shape.layers {
                cache.append(layer, &k, &v)?;
                cache.attend_causal(layer, &query)?;
            }
            let host_ms = start.elapsed().as_secs_f64() * 1e3;
            let gpu_ms = ctx.take_gpu_time_ms();
            let (k_buffer, v_buffer) = (
                ctx.create_storage("bench k", &k)?,
                ctx.create_storage("bench v", &v)?,
            );
            // The whole step in one submission, timed until the GPU has finished it.
            let start = Instant::now();
            let mut step = cache.begin_step()?;
            for (layer, output) in outputs.iter().enumerate() {
                step.append_buffers(layer, &k_buffer, &v_buffer, 1)?;
                let visible = [(0, step.cache().len(layer) as u32)];
                step.attend_buffers(layer, &q_buffer, output, &visible)?;
            }
            step.submit()?;
            ctx.wait()?;
            let buffers_ms = start.elapsed().as_secs_f64() * 1e3;
            ctx.take_gpu_time_ms();
            // The first run warms the pipelines up and is not counted.
            if run > 0 {
                walls.push(host_ms);
                buffer_walls.push(buffers_ms);
                gpus.extend(gpu_ms);
            }
        }
        results.push(CacheStepResult {
            preset: name.clone(),
            wall_median_ms: median(walls),
            gpu_median_ms: (timestamps && !gpus.is_empty()).then(|| median(gpus)),
            buffers_wall_median_ms: median(buffer_walls),
            bytes: cache.bytes(),
            allocated_bytes: cache.allocated_bytes(),
        });
    }
    Ok(results)
}
