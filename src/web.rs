//! The browser demo's figures: what the library computes for each preset on a sample
//! through [`crate::KvCache`], the same code in the page (the crate compiled to wasm32,
//! `web/wasm`) and natively (the figures the browser test expects). A tool of the CLI's
//! `demo` and `export-web` and of the page, not needed by hosts.
//!
//! [`cache_figures`] prefills a cache of each of [`DEMO_PRESETS`] with a sample, attends its
//! stored queries through the non-blocking [`crate::KvCache::attend_async`], and measures
//! the error against exact attention; its effective bits and bytes are the cache's own.

use serde_json::{json, Value};

use crate::config::QuantConfig;
use crate::error::{Result, VidkvError};
use crate::gpu::GpuContext;
use crate::io::KvSample;
use crate::reference::attention::{dot, kv_head_for, softmax_weights};

/// The presets the page compares.
pub const DEMO_PRESETS: [&str; 4] = ["fp16", "kivi2", "vidkv-tuned", "vidkv"];

/// The (lo, hi) key range each stored query of `sample` sees.
pub fn visible_ranges(sample: &KvSample) -> Result<Vec<(u32, u32)>> {
    let tokens = sample.k.dim(2);
    sample
        .q_positions
        .iter()
        .map(|&p| {
            let (lo, hi) = sample.mask.visible_range(p, tokens).ok_or_else(|| {
                VidkvError::Sidecar(format!(
                    "query at position {p} does not see one contiguous range of keys"
                ))
            })?;
            Ok((lo as u32, hi as u32))
        })
        .collect()
}

/// What the library computes for one preset on a sample through [`crate::KvCache`]: the
/// figures the page shows, computed by the same code in the browser (wasm32, `web/wasm`)
/// and natively (the expected figures the browser test compares with).
#[derive(Clone, Debug, PartialEq)]
pub struct CacheFigures {
    pub preset: String,
    /// Bytes the cache stores for the whole sample ([`crate::KvCache::bytes`]).
    pub bytes: usize,
    /// [`crate::KvCache::bits_per_element`].
    pub bits_per_element: f64,
    /// Mean over layers, query heads and stored queries of ‖out − exact‖ / ‖exact‖, with
    /// `exact` the CPU reference attention over the sample's f32 keys and values.
    pub attention_error: f64,
    /// The cache's output of the first layer (`[q_heads, queries, head_dim]`).
    pub first_layer: Vec<f32>,
}

impl CacheFigures {
    /// The figures as JSON (without the output rows).
    pub fn to_json(&self) -> Value {
        json!({
            "preset": self.preset,
            "bytes": self.bytes,
            "bits_per_element": self.bits_per_element,
            "attention_error": self.attention_error,
        })
    }
}

/// Prefills a [`crate::KvCache`] of `preset` with every layer of `sample`, attends its
/// stored queries (each seeing [`visible_ranges`]) through
/// [`crate::KvCache::attend_async`], and compares with exact attention. Never blocks, so a
/// page awaits it; natively `pollster::block_on` runs it.
pub async fn cache_figures(
    gpu: &GpuContext,
    sample: &KvSample,
    preset: &str,
) -> Result<CacheFigures> {
    let config = QuantConfig::preset(preset)?;
    let (layers, kv_heads, tokens, d) = (
        sample.k.dim(0),
        sample.k.dim(1),
        sample.k.dim(2),
        sample.k.dim(3),
    );
    let (q_heads, queries) = (sample.q.dim(1), sample.q.dim(2));
    let shape = crate::ModelShape {
        layers,
        q_heads,
        kv_heads,
        head_dim: d,
    };
    let mut cache = crate::KvCache::new(shape, config, gpu)?;
    let visible = visible_ranges(sample)?;
    let (mut error_sum, mut count, mut first_layer) = (0.0, 0usize, Vec::new());
    for layer in 0..layers {
        let k = sample.k.layer_tokens(layer, 0..tokens)?;
        let v = sample.v.layer_tokens(layer, 0..tokens)?;
        cache.prefill(layer, &k, &v)?;
        let q = sample.q.layer_tokens(layer, 0..queries)?;
        let out = cache.attend_async(layer, &q, &visible).await?;
        for h in 0..q_heads {
            let head = kv_head_for(h, q_heads, kv_heads);
            for (m, &(lo, hi)) in visible.iter().enumerate() {
                let (lo, hi) = (lo as usize, hi as usize);
                let rows = (head * tokens + lo) * d..(head * tokens + hi) * d;
                let exact = crate::reference::attention::attend_dense(
                    &q[(h * queries + m) * d..][..d],
                    &k[rows.clone()],
                    &v[rows],
                    &vec![true; hi - lo],
                );
                let got = &out[(h * queries + m) * d..][..d];
                error_sum += crate::report::relative_l2(got, &exact);
                count += 1;
            }
        }
        if layer == 0 {
            first_layer = out;
        }
    }
    Ok(CacheFigures {
        preset: preset.to_string(),
        bytes: cache.bytes(),
        bits_per_element: cache.bits_per_element(),
        attention_error: error_sum / count.max(1) as f64,
        first_layer,
    })
}

/// The attention weights of stored query `query` of `layer` for every query head, over the
/// keys as `preset` stores them: `[q_heads][tokens]`, zero outside the query's visible
/// range. The keys are the CPU reference's decoding of the preset's codes
/// ([`crate::PackedCache::quantize`], `dequantize_keys`), which the GPU kernels match to
/// 1e-4; no GPU is needed, so a page computes them beside its GPU figures.
pub fn attention_weights(
    sample: &KvSample,
    preset: &str,
    layer: usize,
    query: usize,
) -> Result<Vec<f32>> {
    let (kv_heads, tokens, d) = (sample.k.dim(1), sample.k.dim(2), sample.k.dim(3));
    let (q_heads, queries) = (sample.q.dim(1), sample.q.dim(2));
    let (lo, hi) = *visible_ranges(sample)?.get(query).ok_or_else(|| {
        VidkvError::InvalidConfig(format!(
            "query {query} is outside the sample's {queries} queries"
        ))
    })?;
    let one_layer = |t: &crate::Tensor, name: &str| {
        crate::Tensor::new(
            name,
            vec![1, kv_heads, tokens, d],
            t.layer_tokens(layer, 0..tokens)?,
        )
    };
    let config = QuantConfig::preset(preset)?;
    let cache = crate::PackedCache::quantize(
        &one_layer(&sample.k, "k")?,
        &one_layer(&sample.v, "v")?,
        &config,
        &[],
    )?;
    let q = sample.q.layer_tokens(layer, 0..queries)?;
    let visible: Vec<bool> = (0..tokens)
        .map(|t| (lo as usize..hi as usize).contains(&t))
        .collect();
    let mut weights = Vec::with_capacity(q_heads * tokens);
    for h in 0..q_heads {
        let keys = cache.heads[kv_head_for(h, q_heads, kv_heads)].dequantize_keys();
        let q = &q[(h * queries + query) * d..][..d];
        let logits: Vec<f32> = keys.chunks_exact(d).map(|k| dot(q, k) as f32).collect();
        weights.extend(softmax_weights(&logits, &visible, d));
    }
    Ok(weights)
}
