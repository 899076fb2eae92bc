//! `vidkv quantize` (save a compressed cache) and `vidkv inspect`.

use std::path::PathBuf;

use clap::Args;

use super::{open_device, read_sample, DeviceChoice};
use crate::config::{QuantConfig, PRESET_NAMES};
use crate::error::{Result, VidkvError};

#[derive(Args, Debug)]
pub(super) struct QuantizeArgs {
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
pub(super) struct InspectArgs {
    /// A cache written by `vidkv quantize`.
    file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) fn run_quantize(args: &QuantizeArgs) -> Result<()> {
    let config = QuantConfig::preset(&args.preset)?;
    crate::io::check_output(&args.output, Some(&args.input))?;
    let sample = read_sample(&args.input)?;
    super::report::warn_underflow(&sample);
    let gpu = open_device(args.device)?;
    let cache = match &gpu {
        Some(ctx) => crate::gpu::quantize::quantize_cache(ctx, &sample.k, &sample.v, &config, &[])?,
        None => crate::packed::PackedCache::quantize(&sample.k, &sample.v, &config, &[])?,
    };
    let bytes = cache.to_safetensors()?;
    crate::io::write_atomic(&args.output, &bytes)?;
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

pub(super) fn run_inspect(args: &InspectArgs) -> Result<()> {
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
            "config": cache.config.to_json(),
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
