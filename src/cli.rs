//! The `vidkv` command line: argument parsing, file reading and output formatting.
//!
//! Library modules never call into this module; it is compiled only with the `cli` feature.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bench::{attention_latency, quantize_throughput};
use crate::config::{QuantConfig, PRESET_NAMES};
use crate::error::{Result, VidkvError};
use crate::gpu::{GpuContext, GpuOptions};
use crate::io::KvSample;
use crate::packed::{estimate_size, CacheShape};
use crate::report::{evaluate_on, to_json, to_table, Device, FileReport};

/// The real samples bundled with the binary (cut from ../shared/data by scripts/make_sample.py).
const BUNDLED: [(&str, &[u8], &str); 2] = [
    (
        "smollm2_text_sample",
        include_bytes!("../data/smollm2_text_sample.safetensors"),
        include_str!("../data/smollm2_text_sample.json"),
    ),
    (
        "dinov2_video_sample",
        include_bytes!("../data/dinov2_video_sample.safetensors"),
        include_str!("../data/dinov2_video_sample.json"),
    ),
];

#[derive(Parser, Debug)]
#[command(
    name = "vidkv",
    version,
    about = "VidKV 1.x-bit KV-cache quantization: fidelity and size report",
    long_about = "VidKV 1.x-bit KV-cache quantization.\n\nWith no subcommand, runs `report` on the real samples bundled with the binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize K/V tensors with each preset and report errors and effective bits.
    Report(ReportArgs),
    /// Stored bytes and effective bits per element of each preset for a cache shape,
    /// without data (default: one Qwen2-7B-shaped model at 16k tokens).
    Sizes(SizesArgs),
    /// Benchmarks (`vidkv bench quantize`, `vidkv bench attention`).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Quantize the K/V of a safetensors file and save the compressed cache.
    Quantize(QuantizeArgs),
    /// Print the shape, configuration, bytes and bits per element of a saved cache.
    Inspect(InspectArgs),
    /// Write the browser demo (web/ page, shaders, bundled sample, traced plan) to a folder
    /// for any static web server.
    ExportWeb(ExportWebArgs),
    /// Serve the browser demo on 127.0.0.1 and print its URL.
    Demo(DemoArgs),
    /// Run SmolLM2-135M with each preset's KvCache: perplexity of a text, bits per element,
    /// and greedy agreement with the fp16 cache (feature `lm`).
    #[cfg(feature = "lm")]
    EvalLm(EvalLmArgs),
}

#[derive(Args, Debug)]
struct ExportWebArgs {
    /// The folder to write (created if absent; files in it are replaced).
    #[arg(long, value_name = "DIR", default_value = "web/site")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[cfg(feature = "lm")]
#[derive(Args, Debug)]
struct EvalLmArgs {
    /// The model (a llama GGUF; `bash scripts/fetch-smollm2.sh` fetches SmolLM2-135M).
    #[arg(long, value_name = "GGUF", default_value = crate::lm::DEFAULT_MODEL)]
    model: PathBuf,
    /// A UTF-8 text whose first tokens are streamed through the cache for perplexity.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// How many of the text's tokens to score.
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Presets to run (repeatable; default: all). fp16 always runs first as the reference.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Override the sink count of every preset.
    #[arg(long)]
    sinks: Option<usize>,
    /// Override the residual window of every preset.
    #[arg(long)]
    residual: Option<usize>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct QuantizeArgs {
    /// A safetensors file with `k` and `v` [layers, kv_heads, tokens, head_dim].
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The preset to quantize with.
    #[arg(long, default_value = "vidkv")]
    preset: String,
    /// Where to write the compressed cache (safetensors).
    #[arg(long, value_name = "OUT")]
    output: PathBuf,
    /// Where quantization runs (default: gpu when an adapter exists, else cpu).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A cache written by `vidkv quantize`.
    file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
struct BenchCacheArgs {
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
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BenchAttentionArgs {
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
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// A preset besides the fp16 baseline (repeatable). Default: kivi2, vidkv-paper, vidkv.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time every kernel pass with its own timestamps (`runs` more calls per case)
    /// and print GPU milliseconds per call of each kernel.
    #[arg(long)]
    kernels: bool,
    /// Also write an SVG chart (decode time against context) into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchQuantizeArgs {
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Timed runs per case (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
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

#[derive(Args, Debug)]
struct SizesArgs {
    #[arg(long, default_value_t = 28)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Context length in tokens (repeatable).
    #[arg(long = "tokens", default_values_t = [4096usize, 16384, 65536])]
    tokens: Vec<usize>,
    /// A preset (repeatable). Default: all of them.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Default)]
struct ReportArgs {
    /// A safetensors file with `k`, `v` [layers, kv_heads, tokens, head_dim] and `q`
    /// [layers, q_heads, n_queries, head_dim]; FILE.json beside it is read as the sidecar.
    /// Repeatable. Default: the bundled samples.
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// A preset to evaluate (repeatable). Default: all of them.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Override the number of exact attention-sink tokens of every preset.
    #[arg(long)]
    sinks: Option<usize>,
    /// Override the exact residual window of every preset (a multiple of the group size).
    #[arg(long)]
    residual: Option<usize>,
    /// Where quantization runs: `gpu` (the WGSL kernels) or `cpu` (the reference).
    /// Default: gpu when an adapter exists, else cpu with a notice.
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// Also write SVG charts into this directory (error against bits, error per layer).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceChoice {
    Gpu,
    Cpu,
}

/// Opens the GPU for `--device gpu`, or when no device was asked for and one exists.
fn open_device(choice: Option<DeviceChoice>) -> Result<Option<GpuContext>> {
    match choice {
        Some(DeviceChoice::Cpu) => Ok(None),
        Some(DeviceChoice::Gpu) => GpuContext::new(&GpuOptions::default()).map(Some),
        None => match GpuContext::new(&GpuOptions::default()) {
            Ok(ctx) => Ok(Some(ctx)),
            Err(e) => {
                eprintln!("notice: running on the CPU reference ({e})");
                Ok(None)
            }
        },
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    // Mesa prints a harmless warning on every start when XDG_RUNTIME_DIR is unset (as on
    // headless servers); point it at the temporary directory before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Report(args)) => run_report(&args),
        Some(Command::Sizes(args)) => run_sizes(&args),
        Some(Command::Bench(BenchCommand::Quantize(args))) => run_bench_quantize(&args),
        Some(Command::Bench(BenchCommand::Attention(args))) => run_bench_attention(&args),
        Some(Command::Bench(BenchCommand::Cache(args))) => run_bench_cache(&args),
        Some(Command::Quantize(args)) => run_quantize(&args),
        Some(Command::Inspect(args)) => run_inspect(&args),
        Some(Command::ExportWeb(args)) => run_export_web(&args),
        Some(Command::Demo(args)) => run_demo(&args),
        #[cfg(feature = "lm")]
        Some(Command::EvalLm(args)) => run_eval_lm(&args),
        None => run_report(&ReportArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_report(args: &ReportArgs) -> Result<()> {
    let presets = resolve_presets(&args.presets, args.sinks, args.residual)?;
    let samples = if args.inputs.is_empty() {
        BUNDLED
            .iter()
            .map(|(name, bytes, sidecar)| KvSample::from_bytes(name, bytes, Some(sidecar)))
            .collect::<Result<Vec<_>>>()?
    } else {
        args.inputs
            .iter()
            .map(|p| read_sample(p))
            .collect::<Result<Vec<_>>>()?
    };
    let gpu = open_device(args.device)?;
    let device = gpu.as_ref().map_or(Device::Cpu, Device::Gpu);
    let mut reports = Vec::with_capacity(samples.len());
    for sample in &samples {
        let presets = presets
            .iter()
            .map(|(name, config)| evaluate_on(device, sample, name, config))
            .collect::<Result<Vec<_>>>()?;
        reports.push(FileReport {
            file: sample.name.clone(),
            presets,
        });
    }
    if args.json {
        println!("{}", to_json(&reports, &device.describe()));
    } else {
        print!("{}", to_table(&reports, &device.describe()));
    }
    if let Some(dir) = &args.plot {
        for path in crate::plot::report_charts(&reports, dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn run_bench_cache(args: &BenchCacheArgs) -> Result<()> {
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
    let presets = resolve_presets(&["fp16".to_string(), "vidkv".to_string()], None, None)?;
    let gpu = GpuContext::new(&GpuOptions::default())?;
    let results = crate::bench::cache_decode_step(&gpu, shape, args.context, &presets, args.runs)?;
    let fp16 = &results[0];
    let speed = |r: &crate::bench::CacheStepResult| fp16.wall_median_ms / r.wall_median_ms;
    if args.json {
        let doc = serde_json::json!({
            "adapter": gpu.adapter_name(),
            "shape": {"layers": args.layers, "q_heads": args.q_heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim},
            "context": args.context,
            "results": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "wall_median_ms": r.wall_median_ms,
                "gpu_median_ms": r.gpu_median_ms,
                "ratio_to_fp16": speed(r),
                "bytes": r.bytes,
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "decode step, {} layers x {} query / {} KV heads x d {} at {} tokens; adapter: {}",
        args.layers,
        args.q_heads,
        args.kv_heads,
        args.head_dim,
        args.context,
        gpu.adapter_name()
    );
    println!(
        "  {:<8} {:>12} {:>12} {:>9} {:>14}",
        "cache", "wall ms", "gpu ms", "vs fp16", "bytes"
    );
    for r in &results {
        let gpu_ms = r
            .gpu_median_ms
            .map_or("-".to_string(), |ms| format!("{ms:.1}"));
        println!(
            "  {:<8} {:>12.1} {:>12} {:>8.2}x {:>14}",
            r.preset,
            r.wall_median_ms,
            gpu_ms,
            speed(r),
            r.bytes
        );
    }
    Ok(())
}

fn run_quantize(args: &QuantizeArgs) -> Result<()> {
    let config = QuantConfig::preset(&args.preset)?;
    let sample = read_sample(&args.input)?;
    let gpu = open_device(args.device)?;
    let cache = match &gpu {
        Some(ctx) => crate::gpu::quantize::quantize_cache(ctx, &sample.k, &sample.v, &config, &[])?,
        None => crate::packed::PackedCache::quantize(&sample.k, &sample.v, &config, &[])?,
    };
    let bytes = cache.to_safetensors()?;
    crate::persist::write_atomic(&args.output, &bytes)?;
    let f16_bytes = 2 * 2 * cache.shape.elements();
    println!(
        "wrote {} ({} bytes, {:.3} bits per element, {:.2}x smaller than f16's {} bytes)",
        args.output.display(),
        bytes.len(),
        cache.size().all_bits(),
        f16_bytes as f64 / bytes.len() as f64,
        f16_bytes
    );
    Ok(())
}

fn run_inspect(args: &InspectArgs) -> Result<()> {
    let bytes = std::fs::read(&args.file).map_err(|source| VidkvError::Io {
        path: args.file.display().to_string(),
        source,
    })?;
    let cache = crate::packed::PackedCache::from_safetensors(&bytes)?;
    let s = cache.shape;
    let size = cache.size();
    let preset = PRESET_NAMES
        .iter()
        .find(|name| QuantConfig::preset(name).is_ok_and(|c| c == cache.config))
        .copied()
        .unwrap_or("custom");
    if args.json {
        let doc = serde_json::json!({
            "file": args.file.display().to_string(),
            "shape": {"layers": s.layers, "kv_heads": s.kv_heads, "tokens": s.tokens, "head_dim": s.head_dim},
            "preset": preset,
            "config": crate::persist::config_to_json(&cache.config),
            "file_bytes": bytes.len(),
            "stored_bytes": size.total_bytes(),
            "protected_tokens": cache.protected.len(),
            "bits_per_element": {"k": size.key_bits(), "v": size.value_bits(), "all": size.all_bits()},
        });
        println!("{doc}");
    } else {
        println!("{}", args.file.display());
        println!(
            "  shape        {} layers x {} KV heads x {} tokens x head_dim {}",
            s.layers, s.kv_heads, s.tokens, s.head_dim
        );
        println!("  preset       {preset}");
        println!("  file bytes   {}", bytes.len());
        println!(
            "  stored bytes {} (K {}, V {})",
            size.total_bytes(),
            size.key_bytes,
            size.value_bytes
        );
        println!(
            "  bits/element K {:.3}, V {:.3}, all {:.3}",
            size.key_bits(),
            size.value_bits(),
            size.all_bits()
        );
        println!("  STP tokens   {}", cache.protected.len());
    }
    Ok(())
}

fn run_bench_attention(args: &BenchAttentionArgs) -> Result<()> {
    let mut names = vec!["fp16".to_string()];
    if args.presets.is_empty() {
        names.extend(["kivi2", "vidkv-paper", "vidkv"].map(String::from));
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
    let gpu = GpuContext::new(&GpuOptions::default())?;
    let (results, timestamps) = attention_latency(
        &gpu,
        &presets,
        &crate::bench::AttentionBench {
            contexts,
            kv_heads: args.kv_heads,
            q_heads: args.q_heads,
            head_dim: args.head_dim,
            runs: args.runs,
            per_kernel: args.kernels,
        },
    )?;
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
            "timing": timing,
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
        "decode attention, one layer: {} query heads, {} KV heads, d {}; adapter: {}; timing: {timing}",
        args.q_heads,
        args.kv_heads,
        args.head_dim,
        gpu.adapter_name()
    );
    println!(
        "  {:<24} {:>8} {:>11} {:>9} {:>9} {:>13} {:>8}",
        "preset", "context", "median ms", "wall ms", "vs fp16", "bytes read", "GB/s"
    );
    for r in &results {
        println!(
            "  {:<24} {:>8} {:>11.3} {:>9.3} {:>8.2}x {:>13} {:>8.2}",
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
        println!("GPU ms per call of each kernel (every pass timed on its own):");
        for r in results.iter().filter(|r| !r.kernels.is_empty()) {
            let total: f64 = r.kernels.iter().map(|(_, ms)| ms).sum();
            let parts: Vec<String> = r
                .kernels
                .iter()
                .map(|(kernel, ms)| format!("{kernel} {ms:.3}"))
                .collect();
            println!(
                "  {:<24} {:>8}  total {total:.3}: {}",
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

fn run_bench_quantize(args: &BenchQuantizeArgs) -> Result<()> {
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
    let results = quantize_throughput(gpu.as_ref(), shape, &presets, args.runs)?;
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

fn run_sizes(args: &SizesArgs) -> Result<()> {
    let presets = resolve_presets(&args.presets, None, None)?;
    let mut rows = Vec::new();
    for &tokens in &args.tokens {
        let shape = CacheShape {
            layers: args.layers,
            kv_heads: args.kv_heads,
            tokens,
            head_dim: args.head_dim,
        };
        if shape.elements() == 0 {
            return Err(VidkvError::InvalidConfig(
                "every dimension of the cache shape must be at least 1".into(),
            ));
        }
        for (name, config) in &presets {
            rows.push((name.clone(), tokens, estimate_size(shape, config, 0)));
        }
    }
    if args.json {
        let doc = serde_json::json!({
            "shape": {"layers": args.layers, "kv_heads": args.kv_heads, "head_dim": args.head_dim},
            "sizes": rows.iter().map(|(name, tokens, s)| serde_json::json!({
                "preset": name, "tokens": tokens, "bytes": s.total_bytes(),
                "bits_per_element": {"k": s.key_bits(), "v": s.value_bits(), "all": s.all_bits()},
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        println!(
            "{} layers x {} KV heads x head_dim {}",
            args.layers, args.kv_heads, args.head_dim
        );
        println!(
            "  {:<14} {:>8} {:>14} {:>7} {:>7} {:>7} {:>8}",
            "preset", "tokens", "bytes", "bits_k", "bits_v", "bits", "vs fp16"
        );
        for (name, tokens, s) in &rows {
            println!(
                "  {:<14} {:>8} {:>14} {:>7.3} {:>7.3} {:>7.3} {:>7.1}%",
                name,
                tokens,
                s.total_bytes(),
                s.key_bits(),
                s.value_bits(),
                s.all_bits(),
                s.all_bits() / 16.0 * 100.0
            );
        }
    }
    Ok(())
}

/// The demo's page files, embedded from `web/`.
const WEB_FILES: [(&str, &str); 2] = [
    ("index.html", include_str!("../web/index.html")),
    ("app.js", include_str!("../web/app.js")),
];

/// The sample the demo runs on (the text sample of the main job).
const DEMO_SAMPLE: usize = 0;

/// Every file of the demo site: (path, bytes). The shaders are the files of `shaders/`
/// byte for byte; the plan is traced now, on this machine's adapter.
fn demo_site() -> Result<Vec<(String, Vec<u8>)>> {
    let (name, tensors, sidecar) = BUNDLED[DEMO_SAMPLE];
    let sample = KvSample::from_bytes(name, tensors, Some(sidecar))?;
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })?;
    eprintln!("tracing the demo plan on {}", gpu.adapter_name());
    let demo = crate::web::demo_plan(&gpu, &sample)?;
    let mut files: Vec<(String, Vec<u8>)> = WEB_FILES
        .iter()
        .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
        .collect();
    files.push((
        "shaders/common.wgsl".into(),
        crate::gpu::shaders::COMMON.as_bytes().to_vec(),
    ));
    for kernel in crate::gpu::shaders::ALL {
        let (base, variant) = kernel.name.split_once('+').unwrap_or((kernel.name, ""));
        files.push((
            format!("shaders/{base}.wgsl"),
            kernel.source.as_bytes().to_vec(),
        ));
        if !variant.is_empty() {
            files.push((
                format!("shaders/{base}_{variant}.wgsl"),
                kernel.variant.as_bytes().to_vec(),
            ));
        }
    }
    files.push((format!("data/{name}.safetensors"), tensors.to_vec()));
    files.push((format!("data/{name}.json"), sidecar.as_bytes().to_vec()));
    let mut plan = demo.plan;
    plan["sample_file"] = format!("data/{name}.safetensors").into();
    if let Ok(sidecar) = serde_json::from_str::<serde_json::Value>(sidecar) {
        plan["model_layers"] = sidecar["layers"].clone();
    }
    files.push(("plan.json".into(), plan.to_string().into_bytes()));
    files.push(("plan.bin".into(), demo.blob));
    files.push((
        "expected.json".into(),
        demo.expected.to_string().into_bytes(),
    ));
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

fn run_export_web(args: &ExportWebArgs) -> Result<()> {
    for (path, bytes) in demo_site()? {
        let target = args.out.join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| VidkvError::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        }
        crate::persist::write_atomic(&target, &bytes)?;
    }
    println!("wrote the demo to {}", args.out.display());
    Ok(())
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("wgsl") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn run_demo(args: &DemoArgs) -> Result<()> {
    let files: HashMap<String, Vec<u8>> = demo_site()?.into_iter().collect();
    let server = tiny_http::Server::http(("127.0.0.1", args.port)).map_err(|e| VidkvError::Io {
        path: format!("127.0.0.1:{}", args.port),
        source: std::io::Error::other(e.to_string()),
    })?;
    let port = server
        .server_addr()
        .to_ip()
        .map_or(args.port, |addr| addr.port());
    println!("vidkv demo: http://127.0.0.1:{port}/ (Ctrl-C stops it)");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("/");
        let path = match path.trim_start_matches('/') {
            "" => "index.html",
            other => other,
        };
        let response = match files.get(path) {
            Some(bytes) => tiny_http::Response::from_data(bytes.clone()).with_header(
                tiny_http::Header::from_bytes("Content-Type", content_type(path))
                    .expect("static header"),
            ),
            None => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
        };
        let _ = request.respond(response);
    }
    Ok(())
}

#[cfg(feature = "lm")]
fn run_eval_lm(args: &EvalLmArgs) -> Result<()> {
    use crate::lm::{eval, model::GgufFile, model::Llama, tokenizer::Tokenizer};
    let presets = resolve_presets(&args.presets, args.sinks, args.residual)?;
    let text = std::fs::read_to_string(&args.text).map_err(|e| VidkvError::Io {
        path: args.text.display().to_string(),
        source: e,
    })?;
    let mut gguf = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let model = Llama::load(&mut gguf)?;
    let mut text_tokens = tokenizer.encode(&text)?;
    text_tokens.truncate(args.tokens);
    if text_tokens.len() < 2 {
        return Err(VidkvError::InvalidConfig(format!(
            "{} gives {} tokens; perplexity needs at least 2 (and --tokens ≥ 2)",
            args.text.display(),
            text_tokens.len()
        )));
    }
    let prompt = tokenizer.encode(&eval::greedy_prompt())?;
    let gpu = GpuContext::new(&GpuOptions::default())?;
    eprintln!(
        "{} tokens of {} on {}",
        text_tokens.len(),
        args.text.display(),
        gpu.adapter_name()
    );
    let results = eval::evaluate(&model, &text_tokens, &prompt, &presets, &gpu, |r| {
        eprintln!(
            "{}: perplexity {:.3}, {:.3} bits, greedy agreement {:.3}",
            r.preset, r.perplexity, r.bits_per_element, r.greedy_agreement
        )
    })?;
    let model_name = args.model.file_name().map_or_else(
        || args.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    if args.json {
        let doc = serde_json::json!({
            "model": model_name,
            "tokens": text_tokens.len(),
            "presets": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "perplexity": r.perplexity,
                "bits_per_element": r.bits_per_element,
                "greedy_agreement": r.greedy_agreement,
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        println!(
            "{model_name}, {} tokens of {}, {} greedy tokens",
            text_tokens.len(),
            args.text.display(),
            eval::GREEDY_TOKENS
        );
        println!(
            "{:<14} {:>11} {:>9} {:>17}",
            "preset", "perplexity", "bits", "greedy agreement"
        );
        for r in &results {
            println!(
                "{:<14} {:>11.3} {:>9.3} {:>17.3}",
                r.preset, r.perplexity, r.bits_per_element, r.greedy_agreement
            );
        }
        if let Some(reference) = results.first() {
            println!("fp16 answer: {:?}", tokenizer.decode(&reference.generated)?);
        }
    }
    Ok(())
}

fn resolve_presets(
    requested: &[String],
    sinks: Option<usize>,
    residual: Option<usize>,
) -> Result<Vec<(String, QuantConfig)>> {
    let names: Vec<String> = if requested.is_empty() {
        PRESET_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        requested.to_vec()
    };
    names
        .into_iter()
        .map(|name| {
            let mut config = QuantConfig::preset(&name)?;
            if let Some(s) = sinks {
                config.sinks = s;
            }
            if let Some(r) = residual {
                config.residual = r;
            }
            config.validate()?;
            Ok((name, config))
        })
        .collect()
}

/// Reads FILE.safetensors and, when it exists, FILE.json.
pub fn read_sample(path: &Path) -> Result<KvSample> {
    let read_err = |p: &Path| {
        let p = p.display().to_string();
        move |source| VidkvError::Io { path: p, source }
    };
    let bytes = std::fs::read(path).map_err(read_err(path))?;
    let sidecar_path = path.with_extension("json");
    let sidecar = if sidecar_path.exists() {
        Some(std::fs::read_to_string(&sidecar_path).map_err(read_err(&sidecar_path))?)
    } else {
        None
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    KvSample::from_bytes(&name, &bytes, sidecar.as_deref())
}
