//! `ReferenceCache`: the CPU oracle of [`KvCache`], for every scheme the CPU reference takes.
//!
//! It follows the same rules as [`KvCache`]: the plan of [`QuantConfig::plan`] (exact sinks,
//! whole groups, an exact window of at least `residual` tokens), each group quantized once
//! when it leaves the window, all groups due after one append quantized as one run, the key
//! channel split and the rotated schemes' per-head states fixed at the layer's first run.
//! The quantization is [`crate::packed::quantize_run`]; exact tokens are stored as f16.
//!
//! Attention is dense over the stored rows: the quantized groups are kept decoded, which
//! equals attention straight from their codes to 1e-5 (`tests/properties.rs` checks
//! [`crate::packed::attend`] against it). This is a measurement tool (perplexity on the CPU,
//! `eval-lm --device cpu`), not a fast path; heads are attended on two threads where the
//! platform has them (one elsewhere, e.g. wasm32).
//! STP is not taken.

use half::f16;

use super::{KvCache, ModelShape};
use crate::config::{KeyScheme, QuantConfig, SplitGranularity};
use crate::error::{Result, VidkvError};
use crate::packed::{estimate_size, quantize_run, CacheShape, HeadStates};
use crate::reference::attention::{attend_dense, kv_head_for};
use crate::reference::split::{
    accumulate_min_max, empty_min_max, outlier_count, split_by_range, ChannelSplit,
};

/// What a decoder needs from a KV cache: [`KvCache`] on a GPU, [`ReferenceCache`] on the CPU.
pub trait ModelCache {
    /// The model shape the cache was made for.
    fn shape(&self) -> ModelShape;
    /// Tokens held by `layer`.
    fn len(&self, layer: usize) -> usize;
    /// Appends `k`, `v` (`[kv_heads, n, head_dim]`) to `layer`.
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()>;
    /// Causal attention of the last `M` positions (`q`: `[q_heads, M, head_dim]`).
    fn attend_causal(&self, layer: usize, q: &[f32]) -> Result<Vec<f32>>;
    /// Effective bits per element over K and V, every stored word counted.
    fn bits_per_element(&self) -> f64;
}

impl ModelCache for KvCache {
    fn shape(&self) -> ModelShape {
        KvCache::shape(self)
    }
    fn len(&self, layer: usize) -> usize {
        KvCache::len(self, layer)
    }
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        KvCache::append(self, layer, k, v)
    }
    fn attend_causal(&self, layer: usize, q: &[f32]) -> Result<Vec<f32>> {
        KvCache::attend_causal(self, layer, q)
    }
    fn bits_per_element(&self) -> f64 {
        KvCache::bits_per_element(self)
    }
}

/// One layer: per KV head the rows attention reads and the window's f32 originals.
#[derive(Default)]
struct Layer {
    tokens: usize,
    /// Tokens quantized so far (they follow the sinks).
    quantized: usize,
    /// Per head `[tokens, d]`: exact rows as f16, quantized groups decoded.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per head the f32 originals of the tokens after the quantized ones.
    pending_keys: Vec<Vec<f32>>,
    pending_values: Vec<Vec<f32>>,
    /// Frozen at the first run: the key channel split per head (mixed keys) and the
    /// rotated states per head.
    splits: Option<Vec<ChannelSplit>>,
    states: Vec<HeadStates>,
}

/// The CPU oracle of [`KvCache`] (see the module docs).
pub struct ReferenceCache {
    shape: ModelShape,
    config: QuantConfig,
    layers: Vec<Layer>,
}

fn f16_rows(rows: &[f32]) -> impl Iterator<Item = f32> + '_ {
    rows.iter().map(|&x| f16::from_f32(x).to_f32())
}

impl ReferenceCache {
    /// An empty cache for `shape` under `config`.
    pub fn new(shape: ModelShape, config: QuantConfig) -> Result<Self> {
        config.validate()?;
        shape.validate()?;
        if config.uses_rotation() {
            crate::reference::rotation::Rotation::new(shape.head_dim)?;
        }
        let h = shape.kv_heads;
        let layers = (0..shape.layers)
            .map(|_| Layer {
                keys: vec![Vec::new(); h],
                values: vec![Vec::new(); h],
                pending_keys: vec![Vec::new(); h],
                pending_values: vec![Vec::new(); h],
                states: vec![HeadStates::default(); h],
                ..Layer::default()
            })
            .collect();
        Ok(ReferenceCache {
            shape,
            config,
            layers,
        })
    }

    fn layer(&self, layer: usize) -> Result<&Layer> {
        self.layers.get(layer).ok_or_else(|| {
            VidkvError::InvalidConfig(format!(
                "layer {layer} is outside the cache's {} layers",
                self.shape.layers
            ))
        })
    }

    /// The frozen key channel split of each head from the first run's keys.
    fn freeze_splits(&self, runs: &[Vec<f32>]) -> Option<Vec<ChannelSplit>> {
        let KeyScheme::Mixed {
            outlier_ratio,
            split,
            ..
        } = self.config.keys
        else {
            return None;
        };
        let d = self.shape.head_dim;
        let k = outlier_count(d, outlier_ratio);
        let of = |rows: &[&Vec<f32>]| {
            let mut min_max = empty_min_max(d);
            for r in rows {
                accumulate_min_max(r, d, &mut min_max);
            }
            split_by_range(&min_max, k)
        };
        Some(match split {
            SplitGranularity::PerLayer => {
                let shared = of(&runs.iter().collect::<Vec<_>>());
                vec![shared; runs.len()]
            }
            SplitGranularity::PerHead => runs.iter().map(|r| of(&[r])).collect(),
        })
    }

    /// Quantizes the groups of `layer` that the plan says have left the window.
    fn flush(&mut self, layer: usize) -> Result<()> {
        let d = self.shape.head_dim;
        let due = self.config.plan(self.layers[layer].tokens).quantized;
        let run_tokens = due - self.layers[layer].quantized;
        if run_tokens == 0 {
            return Ok(());
        }
        let take = |pending: &mut Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            pending
                .iter_mut()
                .map(|rows| rows.drain(..run_tokens * d).collect())
                .collect()
        };
        let keys = take(&mut self.layers[layer].pending_keys);
        let values = take(&mut self.layers[layer].pending_values);
        if self.layers[layer].splits.is_none() {
            self.layers[layer].splits = self.freeze_splits(&keys);
        }
        let at = (self.config.sinks + self.layers[layer].quantized) * d;
        let state = &mut self.layers[layer];
        for (head, (k, v)) in keys.iter().zip(&values).enumerate() {
            let split = state.splits.as_ref().map(|s| &s[head]);
            let packed = quantize_run(k, v, d, &self.config, split, &mut state.states[head])?;
            let span = at..at + run_tokens * d;
            state.keys[head].splice(span.clone(), packed.dequantize_keys());
            state.values[head].splice(span, packed.dequantize_values(&[]));
        }
        state.quantized = due;
        Ok(())
    }
}

impl ModelCache for ReferenceCache {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.tokens)
    }

    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        self.layer(layer)?;
        let n = super::appended_tokens(self.shape, k, v)?;
        let sinks = self.config.sinks;
        let state = &mut self.layers[layer];
        let quantizing = !self.config.is_fp16();
        for head in 0..h {
            let rows = head * n * d..(head + 1) * n * d;
            state.keys[head].extend(f16_rows(&k[rows.clone()]));
            state.values[head].extend(f16_rows(&v[rows.clone()]));
            if quantizing {
                let first_pending = sinks.saturating_sub(state.tokens).min(n);
                let pending = rows.start + first_pending * d..rows.end;
                state.pending_keys[head].extend_from_slice(&k[pending.clone()]);
                state.pending_values[head].extend_from_slice(&v[pending]);
            }
        }
        state.tokens += n;
        if quantizing {
            self.flush(layer)?;
        }
        Ok(())
    }

    fn attend_causal(&self, layer: usize, q: &[f32]) -> Result<Vec<f32>> {
        let state = self.layer(layer)?;
        let s = self.shape;
        let per_query = s.q_heads * s.head_dim;
        let queries = q.len() / per_query;
        let tokens = state.tokens;
        if queries == 0 || queries > tokens || q.len() != queries * per_query {
            return Err(VidkvError::ShapeMismatch {
                tensor: "q".into(),
                detail: format!(
                    "q must be [{} query heads, M ≤ {tokens}, {}] (got {} values)",
                    s.q_heads,
                    s.head_dim,
                    q.len()
                ),
            });
        }
        crate::tensor::check_query("q", q, &[s.q_heads, queries, s.head_dim])?;
        let d = s.head_dim;
        let attend_head = |qh: usize| -> Vec<f32> {
            let kv = kv_head_for(qh, s.q_heads, s.kv_heads);
            let mut out = Vec::with_capacity(queries * d);
            for m in 0..queries {
                let at = (qh * queries + m) * d;
                let seen = tokens - queries + m + 1;
                let visible: Vec<bool> = (0..tokens).map(|t| t < seen).collect();
                out.extend(attend_dense(
                    &q[at..at + d],
                    &state.keys[kv],
                    &state.values[kv],
                    &visible,
                ));
            }
            out
        };
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return Ok((0..s.q_heads).flat_map(attend_head).collect());
        }
        let half = s.q_heads.div_ceil(2);
        let (first, second) = std::thread::scope(|scope| {
            let second =
                scope.spawn(|| (half..s.q_heads).flat_map(attend_head).collect::<Vec<_>>());
            let first: Vec<f32> = (0..half).flat_map(attend_head).collect();
            (first, second.join())
        });
        let second = second.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok(first.into_iter().chain(second).collect())
    }

    fn bits_per_element(&self) -> f64 {
        let s = self.shape;
        let tokens = self.len(0);
        if tokens == 0 {
            return 0.0;
        }
        let shape = CacheShape {
            layers: s.layers,
            kv_heads: s.kv_heads,
            tokens,
            head_dim: s.head_dim,
        };
        estimate_size(shape, &self.config, 0).all_bits()
    }
}
