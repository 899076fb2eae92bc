//! `KvCache`: a GPU-resident KV cache for a whole model that quantizes each token once.
//!
//! Per layer the cache keeps, on the GPU: the exact (f16) attention sinks and recent window
//! in one pair of buffers (plus the window's f32 originals), and the quantized history in
//! one chunk of planes that grows as it fills (by a quarter, at least [`CHUNK_GROUPS`]
//! groups; its planes are re-strided on the GPU, never re-quantized). A new chunk starts
//! only where grown planes would pass the device's binding limit, or after a loaded run.
//! So attention reads a default-preset layer in one fused dispatch, the sinks and window
//! riding in it, and a combine (see [`crate::gpu::attention`]). Appended tokens — host slices, or wgpu buffers with
//! [`KvCache::append_buffers`] — wait in the window until at least `residual` newer tokens
//! exist; then whole groups are quantized on the GPU straight into the chunk. The key
//! channel split is frozen at the layer's first quantization (spec §2.5) and reused for
//! every later group. Attention reads the sinks, the chunks and the window in place; a
//! decode step uploads the new token and the query and reads back only the output.
//!
//! STP: [`KvCache::protect`] (before the prefill) keeps the chosen tokens' values at 2 bits
//! (ternary values) or adds a 1-bit refinement of each one's residual (rotated values, see
//! [`crate::packed::stp`]); the protected set applies to the prefill, whose quantized part
//! is then packed in one segment with its STP lists (the prefill's planes make one trip
//! through host memory); tokens appended later are never protected, as in the paper's code.
//!
//! Persistence: [`KvCache::save`] / [`KvCache::load`] store every quantized run (the
//! prefill, each chunk) in the `crate::persist` plane layout with the metadata of
//! [`KvCache::to_safetensors`]; [`KvCache::to_packed`] gives the contents as one
//! [`crate::PackedCache`] where they fit one run per head (not when STP tokens are
//! followed by later groups under ternary values: their ternary groups are not contiguous).
//!
//!
//! One file per job: this module holds the type, its state and accessors; `append` the
//! window and flushing (prefill, append, STP prefill), `attend` attention over the stored
//! segments, `convert` conversion to and from [`crate::PackedCache`], and `file` the
//! `vidkv-kvcache` file format. The kernels they run are in `crate::gpu::incremental`.
//! `reference` holds [`ReferenceCache`], the CPU oracle with the same flush rules, and the
//! [`ModelCache`] trait a decoder drives either through.

mod append;
mod attend;
mod convert;
mod file;
mod reference;
mod runs;
mod step;

pub use crate::gpu::incremental::CHUNK_GROUPS;
pub use file::{KVCACHE_FORMAT, KVCACHE_OLDEST_VERSION, KVCACHE_VERSION};
pub use reference::{ModelCache, ReferenceCache};
pub use step::DecodeStep;

use crate::config::{Grouping, KeyScheme, QuantConfig};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::{check_head_dim, KeyLayout, PackedPlanes};
use crate::gpu::incremental::{ExactStore, F32Rows, Heads, LayerStates, ROW_ALIGN};
use crate::gpu::GpuContext;
use crate::packed::stp::{takes_protection, unprotectable};
use crate::packed::{estimate_size, CacheShape};
use crate::tensor::check_quantizable;

/// The token count of appended rows `k`, `v` (`[kv_heads, n, head_dim]` each), checked:
/// equal lengths, whole rows, finite values in the f16 range.
pub(crate) fn appended_tokens(shape: ModelShape, k: &[f32], v: &[f32]) -> Result<usize> {
    let (h, d) = (shape.kv_heads, shape.head_dim);
    if k.len() != v.len() || k.len() % (h * d) != 0 {
        return Err(VidkvError::ShapeMismatch {
            tensor: "k/v".into(),
            detail: format!(
                "k and v must both be [{h} KV heads, n, {d}] (got {} and {} values)",
                k.len(),
                v.len()
            ),
        });
    }
    let n = k.len() / (h * d);
    check_quantizable("k", k, &[h, n, d])?;
    check_quantizable("v", v, &[h, n, d])?;
    Ok(n)
}

/// The attention shape of a model: layers, query heads, KV heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The most layers a cache takes (real models have up to ~130); a cache allocates per-layer
/// state at creation, so a larger claim is refused before anything is allocated.
pub const MAX_LAYERS: usize = 4096;
/// The most KV heads, and query heads, a cache takes (real models have up to ~128).
pub const MAX_HEADS: usize = 4096;
/// The largest head_dim a cache takes (the GPU kernels take up to 256).
pub const MAX_HEAD_DIM: usize = 4096;

impl ModelShape {
    /// Checks the shape before anything is allocated from it: every count positive and at
    /// most [`MAX_LAYERS`], [`MAX_HEADS`] or [`MAX_HEAD_DIM`], and the query heads a multiple of
    /// the KV heads.
    pub fn validate(&self) -> Result<()> {
        let within = |n: usize, max: usize| (1..=max).contains(&n);
        if !within(self.layers, MAX_LAYERS)
            || !within(self.kv_heads, MAX_HEADS)
            || !within(self.q_heads, MAX_HEADS)
            || !within(self.head_dim, MAX_HEAD_DIM)
            || self.q_heads % self.kv_heads != 0
        {
            return Err(VidkvError::InvalidConfig(format!(
                "model shape {self:?}: layers (1 to {MAX_LAYERS}), KV and query heads (1 to \
                 {MAX_HEADS}) and head_dim (1 to {MAX_HEAD_DIM}) must be in range, and the query \
                 heads a multiple of the KV heads"
            )));
        }
        Ok(())
    }
}

/// A run of quantized groups starting at position `start`.
struct Chunk {
    start: usize,
    groups: usize,
    /// Groups the planes can hold.
    capacity: usize,
    /// Whether the planes grow when full (chunk planes; not a prefill or a loaded run).
    growable: bool,
    planes: PackedPlanes,
}

#[derive(Default)]
struct LayerState {
    tokens: usize,
    /// The exact rows attention reads (quantized presets), f16: the sinks in rows
    /// `0..sink_rows` and the recent window after them, one pair of buffers so that both
    /// ride in one attention dispatch.
    exact: Option<ExactStore>,
    /// The window's f32 originals, waiting for their group to be quantized.
    window_f32: Option<F32Rows>,
    window_rows: usize,
    /// All tokens of an fp16 cache with each store's rows used: one store, grown as it
    /// fills, and another only where a store reaches the binding limit.
    exact_chunks: Vec<(ExactStore, usize)>,
    chunks: Vec<Chunk>,
    layout: Option<KeyLayout>,
    /// The rotated schemes' states, fixed with the layout at the first flush.
    states: LayerStates,
    /// Tokens quantized so far (they follow the sinks).
    quantized: usize,
    /// The prefill's quantized tokens packed with their STP lists, when tokens are protected.
    prefill: Option<(Chunk, usize)>,
}

/// A KV cache for a whole model, resident on the GPU (see the module docs). It keeps a
/// handle on its [`GpuContext`] (no borrow), so a host can keep both in one struct.
pub struct KvCache {
    /// A handle on the context (clones share the device).
    gpu: GpuContext,
    shape: ModelShape,
    config: QuantConfig,
    layers: Vec<LayerState>,
    identity: wgpu::Buffer,
    groups_quantized: u64,
    /// STP-protected positions (ascending), applied to each layer's prefill.
    protected: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `shape` under `config` on `gpu`.
    pub fn new(shape: ModelShape, config: QuantConfig, gpu: &GpuContext) -> Result<Self> {
        config.validate()?;
        shape.validate()?;
        check_head_dim(shape.head_dim)?;
        if config.uses_rotation() {
            crate::reference::rotation::Rotation::new(shape.head_dim)?;
        }
        if matches!(
            config.keys,
            KeyScheme::TwoBit {
                grouping: Grouping::PerToken
            }
        ) {
            return Err(VidkvError::InvalidConfig(
                "the cache attends from per-channel keys; per-token key grouping is not supported"
                    .into(),
            ));
        }
        let identity: Vec<u32> = (0..shape.head_dim as u32).collect();
        let mut cache = KvCache {
            gpu: gpu.clone(),
            shape,
            config,
            layers: Vec::new(),
            identity: gpu.create_storage("identity channels", &identity)?,
            groups_quantized: 0,
            protected: Vec::new(),
        };
        cache.clear();
        Ok(cache)
    }

    /// The model shape.
    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    /// The quantization configuration.
    pub fn config(&self) -> &QuantConfig {
        &self.config
    }

    /// Tokens stored in `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.tokens)
    }

    /// Whether no layer holds a token.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.tokens == 0)
    }

    /// Groups quantized since the cache was made (each group of each layer counts once,
    /// all its KV heads together).
    pub fn groups_quantized(&self) -> u64 {
        self.groups_quantized
    }

    /// Protects token positions (STP, [`crate::packed::stp`]): under ternary values their
    /// values keep 2 bits instead; under rotated values (the default) each also stores a
    /// 1-bit refinement of its residual. Call it before any layer is filled; it applies to
    /// the prefills. 2-bit and f16 values give [`VidkvError::InvalidConfig`].
    pub fn protect(&mut self, positions: &[u32]) -> Result<()> {
        if !self.is_empty() {
            return Err(VidkvError::InvalidConfig(
                "protect the tokens before the prefill (the cache already holds tokens)".into(),
            ));
        }
        if !takes_protection(&self.config.values) && !positions.is_empty() {
            return Err(unprotectable());
        }
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(VidkvError::InvalidConfig(
                "protected positions must be ascending and unique".into(),
            ));
        }
        self.protected = positions.to_vec();
        Ok(())
    }

    /// The visual tokens to protect: the configured share (`stp_ratio`) of the visual
    /// tokens with the largest mean dot product with the text tokens (see
    /// [`crate::reference::stp::select_salient_tokens`]); `visual` and `text` are row-major
    /// `[tokens, dim]` embeddings and `visual_start` the position of the first visual token.
    pub fn salient_tokens(
        &self,
        visual: &[f32],
        text: &[f32],
        dim: usize,
        visual_start: usize,
    ) -> Result<Vec<u32>> {
        crate::reference::stp::select_salient_tokens(
            visual,
            text,
            dim,
            self.config.stp_ratio,
            visual_start,
        )
    }

    /// Drops every token (and the frozen channel splits).
    pub fn clear(&mut self) {
        self.layers = (0..self.shape.layers)
            .map(|_| LayerState::default())
            .collect();
    }

    /// Stored bytes of K and V over all layers, every word counted as in
    /// [`crate::packed::SizeReport`].
    pub fn bytes(&self) -> usize {
        self.size().total_bytes()
    }

    /// Effective bits per element over K and V.
    pub fn bits_per_element(&self) -> f64 {
        let size = self.size();
        if size.elements == 0 {
            0.0
        } else {
            size.all_bits()
        }
    }

    /// GPU memory the cache holds, in bytes: every buffer it allocated — the quantized
    /// planes with their room to grow (at most a quarter of a layer's history, or 256
    /// groups, whichever is more), the exact sinks and window, the window's f32
    /// originals, an fp16 cache's rows with theirs (a quarter, or 1,024 rows). At least
    /// [`KvCache::bytes`].
    pub fn allocated_bytes(&self) -> u64 {
        let pair = |keys: &wgpu::Buffer, values: &wgpu::Buffer| keys.size() + values.size();
        self.layers
            .iter()
            .map(|layer| {
                let exact = layer.exact.iter().map(|e| pair(&e.keys, &e.values));
                let window = layer.window_f32.iter().map(|w| pair(&w.keys, &w.values));
                let fp16 = layer
                    .exact_chunks
                    .iter()
                    .map(|(e, _)| pair(&e.keys, &e.values));
                let runs = layer.prefill.iter().map(|(c, _)| c).chain(&layer.chunks);
                let planes = runs.map(|c| c.planes.bytes());
                exact.chain(window).chain(fp16).chain(planes).sum::<u64>()
            })
            .sum()
    }

    fn size(&self) -> crate::packed::SizeReport {
        let mut total = crate::packed::SizeReport {
            key_bytes: 0,
            value_bytes: 0,
            elements: 0,
        };
        // The STP list is stored once per cache (as in the format), not once per layer.
        let mut list_charged = false;
        for layer in &self.layers {
            let protected = layer
                .prefill
                .as_ref()
                .map_or(0, |(_, protected)| *protected);
            let s = estimate_size(
                CacheShape {
                    layers: 1,
                    kv_heads: self.shape.kv_heads,
                    tokens: layer.tokens,
                    head_dim: self.shape.head_dim,
                },
                &self.config,
                protected,
            );
            total.key_bytes += s.key_bytes;
            total.value_bytes += s.value_bytes;
            total.elements += s.elements;
            if protected > 0 {
                if list_charged {
                    total.value_bytes -= 4 * protected;
                }
                list_charged = true;
            }
        }
        total
    }

    pub(super) fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.shape.layers {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the model's {} layers",
                self.shape.layers
            )));
        }
        Ok(())
    }

    /// The rows of a layer's exact store before its window: the sinks, aligned.
    fn sink_rows(&self) -> usize {
        self.config.sinks.next_multiple_of(ROW_ALIGN)
    }

    /// The rows a layer's window needs at least (the residual and a group, aligned): the
    /// exact store's room after the sinks, and the f32 window's usual size.
    fn window_floor(&self) -> usize {
        (self.config.residual + self.config.group_size).next_multiple_of(ROW_ALIGN)
    }

    /// KV heads and head dimension, as the GPU helpers take them.
    fn heads(&self) -> Heads {
        Heads {
            count: self.shape.kv_heads,
            dim: self.shape.head_dim,
        }
    }
}
