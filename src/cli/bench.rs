//! `vidkv bench quantize | attention | cache`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{open_device, resolve_presets, DeviceChoice};
use crate::bench::{attention_latency, quantize_throughput};
use crate::error::{Result, VidkvError};
use crate::gpu::{GpuContext, GpuOptions};
use crate::packed::CacheShape;
use crate::report::Device;

#[derive(Subcommand, Debug)]
pub(super) enum BenchCommand {
    /// Quantization throughput per preset, CPU reference and GPU kernels in one run, on one
    /// layer of a Qwen2-7B-shaped cache (4 KV heads, d = 128, 16k tokens by default).
    Quantize(BenchQuantizeArgs),
    /// Decode-attention latency on the GPU per preset and context, against the fp16
    /// baseline in the same run (Qwen2-7B shape: 28 query heads, 4 KV heads, d = 128).
    Attention(BenchAttentionArgs),
    /// One decode step of a whole-model KvCache (append one token to every layer, attend
    /// in every layer), vidkv against an f16 cache behind the same API, and their memory.
    Cache(BenchCacheArgs),
}

#[derive(Args, Debug)]
pub(super) struct BenchCacheArgs {
    #[arg(long, default_value_t = 28)]
    layers: usize,
    #[arg(long, default_value_t = 28)]
    q_heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Tokens per layer before the timed steps.
    #[arg(long, default_value_t = 16384)]
    context: usize,
    /// Timed steps per preset (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = run_count())]
    runs: usize,
    /// A preset besides the fp16 baseline (repeatable). Default: vidkv.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Run on a context with the portable kernels and uniform parameters (no subgroups, no
    /// immediates: each dispatch's parameters in a slot of a uniform buffer at a dynamic
    /// offset, as in a browser), to measure what they save.
    #[arg(long)]
    portable: bool,
    /// Tokens per split of decode attention (a multiple of 256 from 256 to 65,536) instead
    /// of the adapter's default (`GpuOptions::split_tokens`), to find the best size on a GPU.
    #[arg(long, value_name = "N")]
    split_tokens: Option<usize>,
    /// Load exact (f16) rows as f16 on a CPU adapter too (`GpuOptions::f16_loads_on_cpu`),
    /// to time the shader-f16 fast path against the portable rows there.
    #[arg(long)]
    f16_loads_on_cpu: bool,
    /// Protect this share of the tokens (STP: evenly spaced positions, 0 < share ≤ 1) in
    /// the caches of the presets whose values take protection (named `preset+STP`), to time
    /// the refinement passes.
    #[arg(long, value_name = "SHARE")]
    protect: Option<f64>,
}

#[derive(Args, Debug)]
pub(super) struct BenchAttentionArgs {
    /// Context length in tokens (repeatable). Default: 1024, 4096, 16384, 65536.
    #[arg(long = "context", value_name = "N")]
    contexts: Vec<usize>,
    #[arg(long, default_value_t = 28)]
    q_heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Timed runs per case (after two warm-ups); the median is reported.
    #[arg(long, default_value_t = 9, value_parser = run_count())]
    runs: usize,
    /// A preset besides the fp16 baseline (repeatable). Default: kivi2, vidkv-paper,
    /// vidkv-tuned, vidkv.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time every kernel with timestamps around its dispatch (inside the batch's compute
    /// pass where the device allows it, else in a pass of its own; `runs` more calls per
    /// case) and print GPU milliseconds per call of each kernel.
    #[arg(long)]
    kernels: bool,
    /// Also write an SVG chart (decode time against context) into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Tokens per split of decode attention (a multiple of 256 from 256 to 65,536) instead
    /// of the adapter's default (`GpuOptions::split_tokens`), to find the best size on a GPU.
    #[arg(long, value_name = "N")]
    split_tokens: Option<usize>,
    /// Load exact (f16) rows as f16 on a CPU adapter too (`GpuOptions::f16_loads_on_cpu`),
    /// to time the shader-f16 fast path against the portable rows there.
    #[arg(long)]
    f16_loads_on_cpu: bool,
    /// Protect this share of the tokens (STP: evenly spaced positions, 0 < share ≤ 1) in
    /// the caches of the presets whose values take protection (named `preset+STP`), to time
    /// the refinement passes.
    #[arg(long, value_name = "SHARE")]
    protect: Option<f64>,
}

#[derive(Args, Debug)]
pub(super) struct BenchQuantizeArgs {
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Timed runs per case (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = run_count())]
    runs: usize,
    /// A preset (repeatable). Default: all of them.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Where to run besides the CPU reference (`cpu` runs the reference alone).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// The width of a table's name column: the longest row name (`rotated-groups+STP
/// (three-pass)`), at least `least`.
fn name_column<'a>(names: impl Iterator<Item = &'a str>, least: usize) -> usize {
    names.map(str::len).max().unwrap_or(0).max(least)
}

/// The parser of `--runs`: 1 to 10,000 timed runs (clap refuses 0, which would time
/// nothing, and counts that would run for days, with its own message).
fn run_count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=10_000)
}

/// The share of `--protect` (0 without it), checked: in (0, 1] (and above 0 as the f32 the
/// benchmarks take). An f64, so that the JSON reports the share as given (0.2, not the
/// f32's 0.20000000298023224).
fn protected_share(protect: Option<f64>) -> Result<f64> {
    match protect {
        None => Ok(0.0),
        Some(share) if share as f32 > 0.0 && share <= 1.0 => Ok(share),
        Some(share) => Err(VidkvError::InvalidConfig(format!(
            "--protect takes a share of the tokens in (0, 1], not {share}"
        ))),
    }
}

pub(super) fn run_bench_cache(args: &BenchCacheArgs) -> Result<()> {
    let shape = crate::cache::ModelShape {
        layers: args.layers,
        q_heads: args.q_heads,
        kv_heads: args.kv_heads,
        head_dim: args.head_dim,
    };
    if args.context == 0 {
        return Err(VidkvError::InvalidConfig(
            "the context must hold at least one token".into(),
        ));
    }
    let mut names = vec!["fp16".to_string()];
    if args.presets.is_empty() {
        names.push("vidkv".to_string());
    }
    names.extend(args.presets.iter().filter(|p| *p != "fp16").cloned());
    let presets = resolve_presets(&names, None, None)?;
    let protected_share = protected_share(args.protect)?;
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: args.portable,
        split_tokens: args.split_tokens,
        f16_loads_on_cpu: args.f16_loads_on_cpu,
        ..GpuOptions::default()
    })?;
    // One preset at a time (as the benchmark runs them), with progress between.
    let bar = super::progress::Progress::new(presets.len() as u64, args.json);
    let mut results = Vec::with_capacity(presets.len());
    for preset in &presets {
        bar.tick(&preset.0);
        results.extend(crate::bench::cache_decode_step(
            &gpu,
            shape,
            (args.context, protected_share as f32),
            std::slice::from_ref(preset),
            args.runs,
        )?);
    }
    bar.finish();
    let fp16 = &results[0];
    let speed = |r: &crate::bench::CacheStepResult| fp16.wall_median_ms / r.wall_median_ms;
    if args.json {
        let doc = serde_json::json!({
            "adapter": gpu.adapter_name(),
            "fast_paths": gpu.fast_paths(),
            "split_tokens": gpu.split_tokens(),
            "protected_share": protected_share,
            "shape": {"layers": args.layers, "q_heads": args.q_heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim},
            "context": args.context,
            "results": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "wall_median_ms": r.wall_median_ms,
                "gpu_median_ms": r.gpu_median_ms,
                "ratio_to_fp16": speed(r),
                "buffers_wall_median_ms": r.buffers_wall_median_ms,
                "buffers_ratio_to_fp16": fp16.buffers_wall_median_ms / r.buffers_wall_median_ms,
                "bytes": r.bytes,
                "allocated_bytes": r.allocated_bytes,
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "decode step, {} layers x {} query / {} KV heads x d {} at {} tokens; adapter: {}; fast paths: {}; splits of {} tokens",
        args.layers,
        args.q_heads,
        args.kv_heads,
        args.head_dim,
        args.context,
        gpu.adapter_name(),
        fast_paths_line(&gpu),
        gpu.split_tokens()
    );
    let name = name_column(results.iter().map(|r| r.preset.as_str()), 14);
    println!(
        "  {:<name$} {:>12} {:>12} {:>9} {:>16} {:>9} {:>14} {:>14}",
        "cache", "wall ms", "gpu ms", "vs fp16", "buffer API ms", "vs fp16", "bytes", "GPU bytes"
    );
    for r in &results {
        let gpu_ms = r
            .gpu_median_ms
            .map_or("-".to_string(), |ms| format!("{ms:.1}"));
        println!(
            "  {:<name$} {:>12.1} {:>12} {:>8.2}x {:>16.1} {:>8.2}x {:>14} {:>14}",
            r.preset,
            r.wall_median_ms,
            gpu_ms,
            speed(r),
            r.buffers_wall_median_ms,
            fp16.buffers_wall_median_ms / r.buffers_wall_median_ms,
            r.bytes,
            r.allocated_bytes
        );
    }
    Ok(())
}

pub(super) fn run_bench_attention(args: &BenchAttentionArgs) -> Result<()> {
    let mut names = vec!["fp16".to_string()];
    if args.presets.is_empty() {
        names.extend(["kivi2", "vidkv-paper", "vidkv-tuned", "vidkv"].map(String::from));
    } else {
        names.extend(args.presets.iter().filter(|p| *p != "fp16").cloned());
    }
    let presets = resolve_presets(&names, None, None)?;
    let contexts = if args.contexts.is_empty() {
        vec![1024, 4096, 16384, 65536]
    } else {
        args.contexts.clone()
    };
    if contexts.contains(&0)
        || args.kv_heads == 0
        || args.head_dim == 0
        || args.q_heads % args.kv_heads.max(1) != 0
    {
        return Err(VidkvError::InvalidConfig(
            "contexts and head counts must be positive, q_heads a multiple of kv_heads".into(),
        ));
    }
    let protected_share = protected_share(args.protect)?;
    let gpu = GpuContext::new(&GpuOptions {
        split_tokens: args.split_tokens,
        f16_loads_on_cpu: args.f16_loads_on_cpu,
        ..GpuOptions::default()
    })?;
    // One context at a time (every preset of a context runs round-robin, as in one call),
    // with progress between.
    let bar = super::progress::Progress::new(contexts.len() as u64, args.json);
    let (mut results, mut timestamps) = (Vec::new(), true);
    for &context in &contexts {
        bar.tick(&format!("{context} tokens"));
        let (some, timed) = attention_latency(
            &gpu,
            &presets,
            &crate::bench::AttentionBench {
                contexts: vec![context],
                kv_heads: args.kv_heads,
                q_heads: args.q_heads,
                head_dim: args.head_dim,
                runs: args.runs,
                per_kernel: args.kernels,
                protected_share: protected_share as f32,
            },
        )?;
        results.extend(some);
        timestamps &= timed;
    }
    bar.finish();
    let timing = if timestamps {
        "gpu timestamps"
    } else {
        "wall clock"
    };
    if let Some(dir) = &args.plot {
        let path = crate::plot::attention_chart(&results, &gpu.adapter_name(), dir)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        let doc = serde_json::json!({
            "adapter": gpu.adapter_name(),
            "fast_paths": gpu.fast_paths(),
            "timing": timing,
            "split_tokens": gpu.split_tokens(),
            "protected_share": protected_share,
            "shape": {"q_heads": args.q_heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "layers": 1},
            "results": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "context": r.context,
                "median_ms": r.median_ms,
                "wall_median_ms": r.wall_median_ms,
                "ratio_to_fp16": r.ratio_to_fp16,
                "bytes_read": r.bytes_read,
                "gb_per_s": r.gb_per_s,
                "kernels": r.kernels.iter().map(|(k, ms)| serde_json::json!({"kernel": k, "ms_per_call": ms})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "decode attention, one layer: {} query heads, {} KV heads, d {}; adapter: {}; fast paths: {}; timing: {timing}; splits of {} tokens",
        args.q_heads,
        args.kv_heads,
        args.head_dim,
        gpu.adapter_name(),
        fast_paths_line(&gpu),
        gpu.split_tokens()
    );
    let name = name_column(results.iter().map(|r| r.preset.as_str()), 24);
    println!(
        "  {:<name$} {:>8} {:>11} {:>9} {:>9} {:>13} {:>8}",
        "preset", "context", "median ms", "wall ms", "vs fp16", "bytes read", "GB/s"
    );
    for r in &results {
        println!(
            "  {:<name$} {:>8} {:>11.3} {:>9.3} {:>8.2}x {:>13} {:>8.2}",
            r.preset,
            r.context,
            r.median_ms,
            r.wall_median_ms,
            r.ratio_to_fp16,
            r.bytes_read,
            r.gb_per_s
        );
    }
    if results.iter().any(|r| !r.kernels.is_empty()) {
        println!("GPU ms per call of each kernel (timestamps around each dispatch):");
        for r in results.iter().filter(|r| !r.kernels.is_empty()) {
            let total: f64 = r.kernels.iter().map(|(_, ms)| ms).sum();
            let parts: Vec<String> = r
                .kernels
                .iter()
                .map(|(kernel, ms)| format!("{kernel} {ms:.3}"))
                .collect();
            println!(
                "  {:<name$} {:>8}  total {total:.3}: {}",
                r.preset,
                r.context,
                parts.join(", ")
            );
        }
    } else if args.kernels {
        println!("(no per-kernel times: the adapter has no timestamp queries)");
    }
    Ok(())
}

pub(super) fn run_bench_quantize(args: &BenchQuantizeArgs) -> Result<()> {
    let presets = resolve_presets(&args.presets, None, None)?;
    let shape = CacheShape {
        layers: 1,
        kv_heads: args.kv_heads,
        tokens: args.tokens,
        head_dim: args.head_dim,
    };
    if shape.elements() == 0 {
        return Err(VidkvError::InvalidConfig(
            "tokens, kv_heads and head_dim must be at least 1".into(),
        ));
    }
    let gpu = open_device(args.device)?;
    let device = gpu.as_ref().map_or(Device::Cpu, Device::Gpu).describe();
    let bar = super::progress::Progress::new(presets.len() as u64, args.json);
    let mut results = Vec::with_capacity(presets.len());
    for preset in &presets {
        bar.tick(&preset.0);
        results.extend(quantize_throughput(
            gpu.as_ref(),
            shape,
            std::slice::from_ref(preset),
            args.runs,
        )?);
    }
    bar.finish();
    if args.json {
        let doc = serde_json::json!({
            "adapter": device,
            "shape": {"layers": 1, "kv_heads": args.kv_heads, "tokens": args.tokens, "head_dim": args.head_dim},
            "results": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "cpu_median_ms": r.cpu_median_ms,
                "cpu_tokens_per_s": r.cpu_tokens_per_s(),
                "gpu_median_ms": r.gpu_median_ms,
                "gpu_tokens_per_s": r.gpu_tokens_per_s(),
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "quantize one layer: {} KV heads x {} tokens x d {}; device: {device}",
        args.kv_heads, args.tokens, args.head_dim
    );
    println!(
        "  {:<14} {:>12} {:>14} {:>12} {:>14} {:>9}",
        "preset", "cpu ms", "cpu tokens/s", "gpu ms", "gpu tokens/s", "gpu/cpu"
    );
    for r in &results {
        let (gpu_ms, gpu_rate, ratio) = match (r.gpu_median_ms, r.gpu_tokens_per_s()) {
            (Some(ms), Some(rate)) => (
                format!("{ms:.1}"),
                format!("{rate:.0}"),
                format!("{:.2}x", r.cpu_median_ms / ms),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "  {:<14} {:>12.1} {:>14.0} {:>12} {:>14} {:>9}",
            r.preset,
            r.cpu_median_ms,
            r.cpu_tokens_per_s(),
            gpu_ms,
            gpu_rate,
            ratio
        );
    }
    Ok(())
}

/// [`GpuContext::fast_paths`] for a table's header line ("none" where there are none).
fn fast_paths_line(gpu: &GpuContext) -> String {
    let paths = gpu.fast_paths();
    if paths.is_empty() {
        "none".to_string()
    } else {
        paths.join(", ")
    }
}
