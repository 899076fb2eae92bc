//! `vidkv report` (the main job) and `vidkv sizes`.

use std::path::PathBuf;

use clap::Args;

use super::{open_device, read_sample, resolve_presets, DeviceChoice, BUNDLED};
use crate::error::Result;
use crate::io::KvSample;
use crate::packed::{estimate_size, CacheShape};
use crate::report::{evaluate_on, to_json, to_table, Device, FileReport};

#[derive(Args, Debug)]
pub(super) struct SizesArgs {
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
pub(super) struct ReportArgs {
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

pub(super) fn run_report(args: &ReportArgs) -> Result<()> {
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
    let bar = super::progress::Progress::new((samples.len() * presets.len()) as u64, args.json);
    for sample in &samples {
        warn_underflow(sample);
        let presets = presets
            .iter()
            .map(|(name, config)| {
                let metrics = evaluate_on(device, sample, name, config);
                bar.tick(&format!("{} {name}", sample.name));
                metrics
            })
            .collect::<Result<Vec<_>>>()?;
        reports.push(FileReport {
            file: sample.name.clone(),
            presets,
        });
    }
    bar.finish();
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

/// Warns on stderr about tensors of `sample` below f16's normal range.
pub(super) fn warn_underflow(sample: &KvSample) {
    for name in crate::report::sample_underflow(sample) {
        eprintln!(
            "warning: {}: every value of `{name}` is below f16's normal range ({:e}); the \
             f16 scales of every scheme underflow, so its quantized values are imprecise or \
             zero (scale the tensor up before quantizing)",
            sample.name,
            crate::tensor::F16_MIN_NORMAL
        );
    }
}

pub(super) fn run_sizes(args: &SizesArgs) -> Result<()> {
    let presets = resolve_presets(&args.presets, None, None)?;
    let mut rows = Vec::new();
    for &tokens in &args.tokens {
        let shape = CacheShape {
            layers: args.layers,
            kv_heads: args.kv_heads,
            tokens,
            head_dim: args.head_dim,
        };
        shape.checked_elements()?;
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
            "  {:<24} {:>8} {:>14} {:>7} {:>7} {:>7} {:>8}",
            "preset", "tokens", "bytes", "bits_k", "bits_v", "bits", "vs fp16"
        );
        for (name, tokens, s) in &rows {
            println!(
                "  {:<24} {:>8} {:>14} {:>7.3} {:>7.3} {:>7.3} {:>7.1}%",
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
