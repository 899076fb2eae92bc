//! The fidelity report: reconstruction error, attention error and effective bits per preset.
//!
//! For one sample and one configuration: K and V are quantized, dequantized, and compared
//! with the originals (`k_rel_mse`, `v_rel_mse` = Σ‖X̂−X‖² / Σ‖X‖²); every stored query of
//! every layer and query head attends over the exact and the quantized cache under the
//! sample's mask, and `attn_rel_err` is the mean of ‖ô − o‖ / ‖o‖.

use serde_json::json;

use crate::config::QuantConfig;
use crate::error::Result;
use crate::gpu::dequantize::dequantize_cache;
use crate::gpu::quantize::quantize_cache;
use crate::gpu::GpuContext;
use crate::io::KvSample;
use crate::packed::{estimate_size, CacheShape, PackedCache};
use crate::reference::attention::{attend_dense, kv_head_for};
use crate::tensor::underflows_scales;

/// Metrics of one preset on one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetMetrics {
    pub preset: String,
    pub k_rel_mse: f64,
    pub v_rel_mse: f64,
    pub attn_rel_err: f64,
    /// The attention error of each stored layer (mean over its query heads and queries).
    pub attn_rel_err_per_layer: Vec<f64>,
    pub bits_k: f64,
    pub bits_v: f64,
    pub bits_all: f64,
    /// Bits per element of the same configuration on [`LONG_CACHE`]: a short sample pays
    /// its exact sinks and window over few tokens, a long cache does not.
    pub bits_long_cache: f64,
    /// The tensors (`k`, `v`) whose values all lie below f16's normal range, so that their
    /// scales underflow ([`crate::tensor::underflows_scales`]): their errors above are the
    /// format's limit, not the method's.
    pub underflow: Vec<String>,
}

/// The cache the `bits_16k` column is for: 28 layers × 4 KV heads × d 128 (Qwen2-7B) at
/// 16,384 tokens.
pub const LONG_CACHE: CacheShape = CacheShape {
    layers: 28,
    kv_heads: 4,
    tokens: 16384,
    head_dim: 128,
};

/// Metrics of several presets on one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct FileReport {
    pub file: String,
    pub presets: Vec<PresetMetrics>,
}

/// Where quantization and dequantization run.
#[derive(Clone, Copy)]
pub enum Device<'a> {
    /// The CPU reference.
    Cpu,
    /// The WGSL kernels on a GPU.
    Gpu(&'a GpuContext),
}

impl Device<'_> {
    /// A short description for reports: `cpu` or the adapter's name.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu (reference)".into(),
            Device::Gpu(ctx) => ctx.adapter_name(),
        }
    }
}

/// Quantizes `sample` under `config` on the CPU and measures it.
pub fn evaluate(sample: &KvSample, preset: &str, config: &QuantConfig) -> Result<PresetMetrics> {
    evaluate_on(Device::Cpu, sample, preset, config)
}

/// Quantizes and dequantizes `sample` under `config` on `device` and measures it.
pub fn evaluate_on(
    device: Device<'_>,
    sample: &KvSample,
    preset: &str,
    config: &QuantConfig,
) -> Result<PresetMetrics> {
    let (cache, (k_hat, v_hat)) = match device {
        Device::Cpu => {
            let cache = PackedCache::quantize(&sample.k, &sample.v, config, &[])?;
            let dense = cache.dequantize();
            (cache, dense)
        }
        Device::Gpu(ctx) => {
            let cache = quantize_cache(ctx, &sample.k, &sample.v, config, &[])?;
            let dense = dequantize_cache(ctx, &cache)?;
            (cache, dense)
        }
    };
    let size = cache.size();
    let per_layer = attention_error_per_layer(sample, &k_hat.data, &v_hat.data);
    Ok(PresetMetrics {
        preset: preset.to_string(),
        k_rel_mse: rel_mse(&k_hat.data, &sample.k.data),
        v_rel_mse: rel_mse(&v_hat.data, &sample.v.data),
        attn_rel_err: mean(&per_layer),
        attn_rel_err_per_layer: per_layer,
        bits_k: size.key_bits(),
        bits_v: size.value_bits(),
        bits_all: size.all_bits(),
        bits_long_cache: estimate_size(LONG_CACHE, config, 0).all_bits(),
        underflow: sample_underflow(sample),
    })
}

/// The names of the sample's K and V tensors whose values underflow the f16 scale format.
pub fn sample_underflow(sample: &KvSample) -> Vec<String> {
    [("k", &sample.k), ("v", &sample.v)]
        .into_iter()
        .filter(|(_, t)| underflows_scales(&t.data))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Σ(x̂ − x)² / Σx².
pub fn rel_mse(approx: &[f32], exact: &[f32]) -> f64 {
    let (err, norm) = approx
        .iter()
        .zip(exact)
        .fold((0.0f64, 0.0f64), |(e, n), (&a, &x)| {
            let diff = f64::from(a) - f64::from(x);
            (e + diff * diff, n + f64::from(x) * f64::from(x))
        });
    err / norm
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Mean over layers, query heads and stored queries of ‖attn(K̂,V̂) − attn(K,V)‖ / ‖attn(K,V)‖.
pub fn attention_error(sample: &KvSample, k_hat: &[f32], v_hat: &[f32]) -> f64 {
    mean(&attention_error_per_layer(sample, k_hat, v_hat))
}

/// [`attention_error`] per stored layer (every layer has the same number of queries, so
/// the mean of these is the overall error).
pub fn attention_error_per_layer(sample: &KvSample, k_hat: &[f32], v_hat: &[f32]) -> Vec<f64> {
    let [layers, kv_heads, tokens, d] = [0, 1, 2, 3].map(|i| sample.k.dim(i));
    let q_heads = sample.q.dim(1);
    let n_queries = sample.q.dim(2);
    let head_len = tokens * d;
    let mut per_layer = Vec::with_capacity(layers);
    for l in 0..layers {
        let mut total = 0.0f64;
        let mut count = 0usize;
        for qh in 0..q_heads {
            let h = kv_head_for(qh, q_heads, kv_heads);
            let at = (l * kv_heads + h) * head_len;
            let (k, v) = (
                &sample.k.data[at..at + head_len],
                &sample.v.data[at..at + head_len],
            );
            let (kh, vh) = (&k_hat[at..at + head_len], &v_hat[at..at + head_len]);
            for (i, &pos) in sample.q_positions.iter().enumerate() {
                let q_at = ((l * q_heads + qh) * n_queries + i) * d;
                let q = &sample.q.data[q_at..q_at + d];
                let visible = sample.mask.row(pos, tokens);
                let exact = attend_dense(q, k, v, &visible);
                let approx = attend_dense(q, kh, vh, &visible);
                total += relative_l2(&approx, &exact);
                count += 1;
            }
        }
        per_layer.push(total / count as f64);
    }
    per_layer
}

/// ‖a − b‖ / ‖b‖ (0 when both are zero).
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    if norm == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (diff / norm).sqrt()
    }
}

/// The report as one JSON document (the CLI's `--json` format); `device` names where it ran.
pub fn to_json(reports: &[FileReport], device: &str) -> serde_json::Value {
    json!({
        "device": device,
        "files": reports.iter().map(|r| json!({
            "file": r.file,
            "presets": r.presets.iter().map(|m| json!({
                "preset": m.preset,
                "k_rel_mse": m.k_rel_mse,
                "v_rel_mse": m.v_rel_mse,
                "attn_rel_err": m.attn_rel_err,
                "bits_per_element": {"k": m.bits_k, "v": m.bits_v, "all": m.bits_all},
                "bits_per_element_16k": m.bits_long_cache,
                "underflow": m.underflow,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The report as an aligned text table; `device` names where it ran.
pub fn to_table(reports: &[FileReport], device: &str) -> String {
    let mut out = format!("device: {device}\n");
    for r in reports {
        out.push_str(&format!("{}\n", r.file));
        out.push_str(&format!(
            "  {:<24} {:>10} {:>10} {:>13} {:>7} {:>7} {:>7} {:>9}\n",
            "preset",
            "k_rel_mse",
            "v_rel_mse",
            "attn_rel_err",
            "bits_k",
            "bits_v",
            "bits",
            "bits_16k"
        ));
        for m in &r.presets {
            out.push_str(&format!(
                "  {:<24} {:>10.4} {:>10.4} {:>13.4} {:>7.3} {:>7.3} {:>7.3} {:>9.3}\n",
                m.preset,
                m.k_rel_mse,
                m.v_rel_mse,
                m.attn_rel_err,
                m.bits_k,
                m.bits_v,
                m.bits_all,
                m.bits_long_cache
            ));
        }
    }
    out
}
