//! `KvCache`: a GPU-resident KV cache for a whole model that quantizes each token once.
//!
//! Per layer the cache keeps, on the GPU: the exact (f16) attention sinks, the quantized
//! history in chunks of [`CHUNK_GROUPS`] groups (new chunks are allocated as the history
//! grows; old data is never copied or re-quantized), and the exact recent window. Appended
//! tokens wait in the window (and, as f32 originals, in a host-side mirror that is only
//! ever uploaded) until at least `residual` newer tokens exist; then whole groups are
//! quantized on the GPU straight into the current chunk. The key channel split is frozen
//! at the layer's first quantization (spec §2.5) and reused for every later group.
//! Attention reads the sinks, every chunk and the window in place
//! ([`crate::gpu::attention`]); a decode step uploads the new token and the query and
//! reads back only the output.
//!
//! STP: [`KvCache::protect`] (before the prefill) keeps the chosen tokens' values at 2 bits;
//! the protected set applies to the prefill, whose quantized part is then packed in one
//! segment with its STP lists (the prefill's planes make one trip through host memory);
//! tokens appended later are never protected, as in the paper's code.
//!
//! Not yet supported: per-token key grouping, inputs that are already wgpu buffers, and
//! saving a growing cache (a [`crate::PackedCache`] saves and loads).

use crate::config::{Grouping, KeyScheme, QuantConfig, SplitGranularity, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::{
    attend_segments, check_head_dim, upload_planes, Kernels, KeyLayout, LayerGeometry,
    PackedKeyPlanes, PackedPlanes, PackedValuePlanes, SegmentData, SegmentRef,
};
use crate::gpu::quantize::{
    channel_split, record_signs, record_ternary, record_two_bit_channels, record_two_bit_tokens,
    twiddles, GroupWindow, NormalChannels,
};
use crate::gpu::runtime::{Bound, GpuContext};
use crate::packed::planes::{pack_f16_slice, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::{estimate_size, CacheShape};
use crate::reference::split::outlier_count;
use crate::tensor::{check_quantizable, Tensor};

/// Groups of quantized storage per chunk (8,192 tokens at the default group size).
pub const CHUNK_GROUPS: usize = 256;

/// The attention shape of a model: layers, query heads, KV heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Exact f16 rows of every KV head: `[kv_heads][capacity][head_dim/2]` u32 pairs.
struct ExactStore {
    keys: wgpu::Buffer,
    values: wgpu::Buffer,
    capacity: usize,
}

impl ExactStore {
    fn new(ctx: &GpuContext, kv_heads: usize, d: usize, capacity: usize) -> Result<Self> {
        let words = kv_heads * capacity * d / 2;
        Ok(ExactStore {
            keys: ctx.create_zeroed("exact keys", words)?,
            values: ctx.create_zeroed("exact values", words)?,
            capacity,
        })
    }

    /// Writes `rows` rows (`[rows][d]` f32 each) of head `head` from row `row` on.
    fn write(&self, ctx: &GpuContext, head: usize, row: usize, d: usize, k: &[f32], v: &[f32]) {
        let offset = ((head * self.capacity + row) * d / 2 * 4) as u64;
        ctx.write(&self.keys, offset, &pack_f16_slice(k));
        ctx.write(&self.values, offset, &pack_f16_slice(v));
    }

    fn segment(&self, start: usize, len: usize) -> SegmentRef<'_> {
        SegmentRef {
            start,
            len,
            data: SegmentData::Exact {
                keys: &self.keys,
                values: &self.values,
                rows_per_head: self.capacity,
                first_row: 0,
            },
        }
    }
}

/// A run of quantized groups starting at position `start`.
struct Chunk {
    start: usize,
    groups: usize,
    planes: PackedPlanes,
}

/// Words per KV head of each plane array of a chunk.
struct ChunkWords {
    key_codes: usize,
    key_params: usize,
    sign_codes: usize,
    sign_scales: usize,
    value_codes: usize,
    value_params: usize,
}

#[derive(Default)]
struct LayerState {
    tokens: usize,
    sinks: Option<ExactStore>,
    /// The exact recent window (quantized presets) on the GPU.
    window: Option<ExactStore>,
    /// f32 originals of the window, per KV head `[rows][d]`, waiting to be quantized.
    window_keys: Vec<Vec<f32>>,
    window_values: Vec<Vec<f32>>,
    /// All tokens of an fp16 cache, in chunks of `CHUNK_GROUPS · group_size` rows.
    exact_chunks: Vec<(ExactStore, usize)>,
    chunks: Vec<Chunk>,
    layout: Option<KeyLayout>,
    /// Tokens quantized so far (they follow the sinks).
    quantized: usize,
    /// The prefill's quantized tokens packed with their STP lists, when tokens are protected.
    prefill: Option<(Chunk, usize)>,
}

/// A KV cache for a whole model, resident on the GPU (see the module docs).
pub struct KvCache<'g> {
    gpu: &'g GpuContext,
    shape: ModelShape,
    config: QuantConfig,
    layers: Vec<LayerState>,
    identity: wgpu::Buffer,
    groups_quantized: u64,
    /// STP-protected positions (ascending), applied to each layer's prefill.
    protected: Vec<u32>,
}

impl<'g> KvCache<'g> {
    /// An empty cache for `shape` under `config` on `gpu`.
    pub fn new(shape: ModelShape, config: QuantConfig, gpu: &'g GpuContext) -> Result<Self> {
        config.validate()?;
        check_head_dim(shape.head_dim)?;
        if shape.layers == 0 || shape.kv_heads == 0 || shape.q_heads % shape.kv_heads != 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "model shape {shape:?}: layers and KV heads must be positive and query heads a multiple of KV heads"
            )));
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
            gpu,
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

    /// Protects token positions (STP: their values keep 2 bits instead of ternary). Call it
    /// before any layer is filled; it applies to the prefills. Needs ternary values.
    pub fn protect(&mut self, positions: &[u32]) -> Result<()> {
        if !self.is_empty() {
            return Err(VidkvError::InvalidConfig(
                "protect the tokens before the prefill (the cache already holds tokens)".into(),
            ));
        }
        if !matches!(self.config.values, ValueScheme::Ternary { .. }) && !positions.is_empty() {
            return Err(VidkvError::InvalidConfig(
                "protected (STP) tokens need the ternary value scheme".into(),
            ));
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

    /// Fills an empty layer with a prompt's keys and values (`[kv_heads, tokens, head_dim]`
    /// row-major f32): the complete groups beyond the residual window are quantized at once.
    pub fn prefill(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        if self.len(layer) != 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "prefill needs an empty layer; layer {layer} holds {} tokens (use append)",
                self.len(layer)
            )));
        }
        self.append(layer, k, v)
    }

    /// Appends any number of tokens (`[kv_heads, n, head_dim]` row-major f32) to `layer`.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        if layer >= self.shape.layers {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the model's {} layers",
                self.shape.layers
            )));
        }
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
        if n == 0 {
            return Ok(());
        }
        if self.len(layer) == 0 && !self.protected.is_empty() && !self.config.is_fp16() {
            let plan = self.config.plan(n);
            if plan.quantized > 0 {
                return self.prefill_protected(layer, k, v, n);
            }
        }
        // The quantization kernels use the context's pooled buffers.
        let _exclusive = self.gpu.exclusive();
        if self.config.is_fp16() {
            return self.append_exact(layer, k, v, n);
        }
        let ctx = self.gpu;
        let g = self.config.group_size;
        let sinks = self.config.sinks;
        let state = &mut self.layers[layer];
        let to_sinks = n.min(sinks.saturating_sub(state.tokens));
        if to_sinks > 0 {
            if state.sinks.is_none() {
                state.sinks = Some(ExactStore::new(ctx, h, d, sinks)?);
            }
            let store = state.sinks.as_ref().expect("just made");
            for head in 0..h {
                let rows = head * n * d..(head * n + to_sinks) * d;
                store.write(ctx, head, state.tokens, d, &k[rows.clone()], &v[rows]);
            }
        }
        if state.window_keys.is_empty() {
            state.window_keys = vec![Vec::new(); h];
            state.window_values = vec![Vec::new(); h];
        }
        let before = state.window_keys[0].len() / d;
        for head in 0..h {
            let rows = (head * n + to_sinks) * d..(head + 1) * n * d;
            state.window_keys[head].extend_from_slice(&k[rows.clone()]);
            state.window_values[head].extend_from_slice(&v[rows]);
        }
        state.tokens += n;
        let window = state.window_keys[0].len() / d;
        let residual = self.config.residual;
        let flush = if window >= residual + g {
            (window - residual) / g
        } else {
            0
        };
        if flush > 0 {
            self.quantize_window(layer, flush)?;
        }
        let state = &mut self.layers[layer];
        if state.window.is_none() {
            state.window = Some(ExactStore::new(ctx, h, d, residual + g)?);
        }
        let store = state.window.as_ref().expect("just made");
        let rows = state.window_keys[0].len() / d;
        let first = if flush > 0 { 0 } else { before };
        for head in 0..h {
            let range = first * d..rows * d;
            store.write(
                ctx,
                head,
                first,
                d,
                &state.window_keys[head][range.clone()],
                &state.window_values[head][range],
            );
        }
        Ok(())
    }

    /// A prefill with protected tokens: its quantized part is packed with STP lists.
    fn prefill_protected(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let ctx = self.gpu;
        let plan = self.config.plan(n);
        let dims = vec![1, h, n, d];
        let packed = crate::gpu::quantize::quantize_cache(
            ctx,
            &Tensor::new("k", dims.clone(), k.to_vec())?,
            &Tensor::new("v", dims, v.to_vec())?,
            &self.config,
            &self.protected,
        )?;
        let (layout, planes) = upload_planes(
            ctx,
            &packed.heads,
            &packed.protected,
            self.config.group_size,
        )?;
        let planes = planes.expect("a quantized preset with quantized tokens has planes");
        let _exclusive = ctx.exclusive();
        let state = &mut self.layers[layer];
        if plan.sinks > 0 {
            let store = ExactStore::new(ctx, h, d, self.config.sinks)?;
            for head in 0..h {
                let rows = head * n * d..(head * n + plan.sinks) * d;
                store.write(ctx, head, 0, d, &k[rows.clone()], &v[rows]);
            }
            state.sinks = Some(store);
        }
        state.window_keys = (0..h)
            .map(|head| k[(head * n + plan.quantized_end()) * d..(head + 1) * n * d].to_vec())
            .collect();
        state.window_values = (0..h)
            .map(|head| v[(head * n + plan.quantized_end()) * d..(head + 1) * n * d].to_vec())
            .collect();
        let window = ExactStore::new(ctx, h, d, self.config.residual + self.config.group_size)?;
        for head in 0..h {
            window.write(
                ctx,
                head,
                0,
                d,
                &state.window_keys[head],
                &state.window_values[head],
            );
        }
        state.window = Some(window);
        state.layout = Some(layout);
        state.quantized = plan.quantized;
        state.prefill = Some((
            Chunk {
                start: plan.quantized_start(),
                groups: plan.quantized / self.config.group_size,
                planes,
            },
            packed.protected.len(),
        ));
        state.tokens = n;
        self.groups_quantized += (plan.quantized / self.config.group_size) as u64;
        Ok(())
    }

    fn append_exact(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let capacity = CHUNK_GROUPS * self.config.group_size;
        let ctx = self.gpu;
        let state = &mut self.layers[layer];
        let mut done = 0;
        while done < n {
            if state
                .exact_chunks
                .last()
                .is_none_or(|(_, used)| *used == capacity)
            {
                state
                    .exact_chunks
                    .push((ExactStore::new(ctx, h, d, capacity)?, 0));
            }
            let (store, used) = state.exact_chunks.last_mut().expect("just made");
            let take = (capacity - *used).min(n - done);
            for head in 0..h {
                let rows = (head * n + done) * d..(head * n + done + take) * d;
                store.write(ctx, head, *used, d, &k[rows.clone()], &v[rows]);
            }
            *used += take;
            done += take;
        }
        state.tokens += n;
        Ok(())
    }

    /// Quantizes the oldest `groups` groups of the window of `layer` into its chunks.
    fn quantize_window(&mut self, layer: usize, groups: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let g = self.config.group_size;
        let ctx = self.gpu;
        let tokens = groups * g;
        if self.layers[layer].layout.is_none() {
            let layout = self.freeze_split(layer, tokens)?;
            self.layers[layer].layout = Some(layout);
        }
        let words = self.chunk_words();
        let mut done = 0;
        while done < groups {
            let state = &mut self.layers[layer];
            if state.chunks.last().is_none_or(|c| c.groups == CHUNK_GROUPS) {
                let start =
                    self.config.sinks + state.chunks.iter().map(|c| c.groups * g).sum::<usize>();
                let planes = self.new_chunk_planes(&words)?;
                self.layers[layer].chunks.push(Chunk {
                    start,
                    groups: 0,
                    planes,
                });
            }
            let state = &self.layers[layer];
            let chunk = state.chunks.last().expect("just made");
            let take = (CHUNK_GROUPS - chunk.groups).min(groups - done);
            let layout = state.layout.as_ref().expect("frozen above");
            for head in 0..h {
                let rows = done * g * d..(done + take) * g * d;
                let input = ctx.upload("input", &state.window_keys[head][rows.clone()])?;
                let values = ctx.upload("cache value input", &state.window_values[head][rows])?;
                self.record_group_quantization(
                    layer, chunk, layout, &words, head, take, &input, &values,
                )?;
            }
            self.layers[layer]
                .chunks
                .last_mut()
                .expect("present")
                .groups += take;
            done += take;
        }
        let state = &mut self.layers[layer];
        for head in 0..h {
            state.window_keys[head].drain(..tokens * d);
            state.window_values[head].drain(..tokens * d);
        }
        self.groups_quantized += groups as u64;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record_group_quantization(
        &self,
        _layer: usize,
        chunk: &Chunk,
        layout: &KeyLayout,
        words: &ChunkWords,
        head: usize,
        take: usize,
        keys_input: &wgpu::Buffer,
        values_input: &wgpu::Buffer,
    ) -> Result<()> {
        let ctx = self.gpu;
        let (d, g) = (self.shape.head_dim, self.config.group_size);
        let window = GroupWindow {
            len: CHUNK_GROUPS * g,
            groups: CHUNK_GROUPS,
            group_offset: chunk.groups,
            group_count: take,
        };
        fn head_range(buffer: &wgpu::Buffer, head: usize, per_head: usize) -> Bound<'_> {
            let bytes = (per_head * 4) as u64;
            Bound::range(buffer, head as u64 * bytes, bytes.max(4))
        }
        let range = |buffer, per_head| head_range(buffer, head, per_head);
        let mut batch = ctx.batch();
        let channels = ctx.buffer("cache head channels", (d * 4) as u64)?;
        batch.copy(
            &layout.order,
            (head * d * 4) as u64,
            &channels,
            0,
            (d * 4) as u64,
        );
        let PackedKeyPlanes::Packed {
            codes,
            scale_min,
            sign_codes,
            sign_scales,
        } = &chunk.planes.keys;
        record_two_bit_channels(
            &mut batch,
            keys_input,
            d,
            &channels,
            layout.outliers,
            g,
            window,
            [
                range(codes, words.key_codes),
                range(scale_min, words.key_params),
            ],
        );
        if layout.normals > 0 {
            let normals = NormalChannels {
                order: &channels,
                outliers: layout.outliers,
                fft: layout.fft,
                twiddles: &layout.twiddles,
            };
            record_signs(
                ctx,
                &mut batch,
                keys_input,
                d,
                &normals,
                g,
                window,
                take * g,
                [
                    range(sign_codes, words.sign_codes),
                    range(sign_scales, words.sign_scales),
                ],
            )?;
        }
        match (&chunk.planes.values, self.config.values) {
            (
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                },
                ValueScheme::TwoBit {
                    grouping: Grouping::PerChannel,
                },
            ) => record_two_bit_channels(
                &mut batch,
                values_input,
                d,
                &self.identity,
                d,
                g,
                window,
                [
                    range(codes, words.value_codes),
                    range(scale_min, words.value_params),
                ],
            ),
            (
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                },
                ValueScheme::TwoBit {
                    grouping: Grouping::PerToken,
                },
            ) => record_two_bit_tokens(
                &mut batch,
                values_input,
                d,
                &self.identity,
                take * g,
                chunk.groups * g,
                g,
                [
                    range(codes, words.value_codes),
                    range(scale_min, words.value_params),
                ],
            ),
            (
                PackedValuePlanes::Ternary { codes, scales, .. },
                ValueScheme::Ternary { gamma, scale },
            ) => record_ternary(
                &mut batch,
                values_input,
                d,
                g,
                gamma,
                scale,
                window,
                [
                    range(codes, words.value_codes),
                    range(scales, words.value_params),
                ],
            ),
            _ => unreachable!("chunk planes follow the configuration"),
        }
        batch.submit()
    }

    /// Computes the layer's key channel split from the first `tokens` window tokens and
    /// keeps it for the rest of the cache's life.
    fn freeze_split(&self, layer: usize, tokens: usize) -> Result<KeyLayout> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let ctx = self.gpu;
        let (outlier_ratio, fft, split) = match self.config.keys {
            KeyScheme::Mixed {
                outlier_ratio,
                fft,
                split,
            } => (outlier_ratio, fft, split),
            _ => return KeyLayout::identity(ctx, h, d),
        };
        let k = outlier_count(d, outlier_ratio);
        let window = &self.layers[layer].window_keys;
        let order = ctx.create_zeroed("channel order", h * d)?;
        let rows = |head: usize| &window[head][..tokens * d];
        let copy = |split: &crate::gpu::quantize::GpuSplit, head: usize| -> Result<()> {
            let mut batch = ctx.batch();
            batch.copy(
                &split.order,
                0,
                &order,
                (head * d * 4) as u64,
                (d * 4) as u64,
            );
            batch.submit()
        };
        match split {
            SplitGranularity::PerLayer => {
                let inputs: Vec<&[f32]> = (0..h).map(rows).collect();
                let shared = channel_split(ctx, &inputs, d, k, self.config.group_size)?;
                for head in 0..h {
                    copy(&shared, head)?;
                }
            }
            SplitGranularity::PerHead => {
                for head in 0..h {
                    let own = channel_split(ctx, &[rows(head)], d, k, self.config.group_size)?;
                    copy(&own, head)?;
                }
            }
        }
        Ok(KeyLayout {
            outliers: k,
            normals: d - k,
            fft,
            order,
            twiddles: ctx.create_storage("twiddles", &twiddles((d - k).max(1)))?,
        })
    }

    fn chunk_words(&self) -> ChunkWords {
        let (d, g) = (self.shape.head_dim, self.config.group_size);
        let c = CHUNK_GROUPS;
        let k = match self.config.keys {
            KeyScheme::Mixed { outlier_ratio, .. } => outlier_count(d, outlier_ratio),
            _ => d,
        };
        let n = d - k;
        let (value_codes, value_params) = match self.config.values {
            ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            } => (d * c * TwoBitPlane::words_per_group(g), d * c),
            ValueScheme::TwoBit {
                grouping: Grouping::PerToken,
            } => {
                let rows = c * g;
                (
                    rows * d.div_ceil(g) * TwoBitPlane::words_per_group(g),
                    rows * d.div_ceil(g),
                )
            }
            _ => (
                d.div_ceil(5) * c * TernaryPlane::words_per_record(g),
                d.div_ceil(2) * c,
            ),
        };
        ChunkWords {
            key_codes: k * c * TwoBitPlane::words_per_group(g),
            key_params: k * c,
            sign_codes: n * c * SignPlane::words_per_group(g),
            sign_scales: n.div_ceil(2) * c,
            value_codes,
            value_params,
        }
    }

    fn new_chunk_planes(&self, words: &ChunkWords) -> Result<PackedPlanes> {
        let ctx = self.gpu;
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let zeroed = |label, per_head: usize| ctx.create_zeroed(label, h * per_head);
        let keys = PackedKeyPlanes::Packed {
            codes: zeroed("key codes", words.key_codes)?,
            scale_min: zeroed("key params", words.key_params)?,
            sign_codes: zeroed("key sign codes", words.sign_codes)?,
            sign_scales: zeroed("key sign scales", words.sign_scales)?,
        };
        let values = match self.config.values {
            ValueScheme::TwoBit { grouping } => PackedValuePlanes::TwoBit {
                grouping,
                rows: match grouping {
                    Grouping::PerChannel => d,
                    Grouping::PerToken => CHUNK_GROUPS * g,
                },
                groups: match grouping {
                    Grouping::PerChannel => CHUNK_GROUPS,
                    Grouping::PerToken => d.div_ceil(g),
                },
                codes: zeroed("value codes", words.value_codes)?,
                scale_min: zeroed("value params", words.value_params)?,
            },
            _ => PackedValuePlanes::Ternary {
                groups: CHUNK_GROUPS,
                kept_groups: 0,
                plain: CHUNK_GROUPS * g,
                stp: false,
                codes: zeroed("value codes", words.value_codes)?,
                scales: zeroed("value scales", words.value_params)?,
                kept_codes: ctx.create_zeroed("unused protected codes", 1)?,
                kept_params: ctx.create_zeroed("unused protected params", 1)?,
                positions: ctx.create_zeroed("unused positions", 1)?,
                split_elements: ctx.create_zeroed("unused split elements", 4)?,
            },
        };
        Ok(PackedPlanes {
            groups: CHUNK_GROUPS,
            keys,
            values,
        })
    }

    /// Attention of `q` (`[q_heads, queries, head_dim]`) over `layer`, where query index m
    /// sees positions `visible[m].0 .. visible[m].1`. Returns `[q_heads, queries, head_dim]`.
    pub fn attend(&self, layer: usize, q: &[f32], visible: &[(u32, u32)]) -> Result<Vec<f32>> {
        let state = self.layers.get(layer).ok_or_else(|| {
            VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the model's {} layers",
                self.shape.layers
            ))
        })?;
        if state.tokens == 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} holds no token"
            )));
        }
        let identity;
        let layout = match &state.layout {
            Some(layout) => layout,
            None => {
                identity = KeyLayout::identity(self.gpu, self.shape.kv_heads, self.shape.head_dim)?;
                &identity
            }
        };
        let g = self.config.group_size;
        let mut segments = Vec::new();
        if self.config.is_fp16() {
            let capacity = CHUNK_GROUPS * g;
            for (i, (store, used)) in state.exact_chunks.iter().enumerate() {
                segments.push(store.segment(i * capacity, *used));
            }
        } else {
            let sinks = self.config.sinks.min(state.tokens);
            if let Some(store) = &state.sinks {
                segments.push(store.segment(0, sinks));
            }
            for chunk in state.prefill.iter().map(|(c, _)| c).chain(&state.chunks) {
                segments.push(SegmentRef {
                    start: chunk.start,
                    len: chunk.groups * g,
                    data: SegmentData::Packed(&chunk.planes),
                });
            }
            let window = state
                .window_keys
                .first()
                .map_or(0, |w| w.len() / self.shape.head_dim);
            if let Some(store) = &state.window {
                segments.push(store.segment(state.tokens - window, window));
            }
        }
        segments.retain(|s| s.len > 0);
        let geometry = LayerGeometry {
            kv_heads: self.shape.kv_heads,
            head_dim: self.shape.head_dim,
            group_size: g,
            tokens: state.tokens,
            layout,
        };
        attend_segments(
            self.gpu,
            &geometry,
            &segments,
            q,
            self.shape.q_heads,
            visible,
            Kernels::Fastest,
        )
    }

    /// Attention of the last `queries` positions of `layer` (the tokens just appended) with
    /// a causal mask: query m, at position len − queries + m, sees positions 0..=that.
    pub fn attend_causal(&self, layer: usize, q: &[f32]) -> Result<Vec<f32>> {
        let per_query = self.shape.q_heads * self.shape.head_dim;
        let queries = q.len() / per_query.max(1);
        let tokens = self.len(layer);
        if queries == 0 || queries > tokens || q.len() != queries * per_query {
            return Err(VidkvError::ShapeMismatch {
                tensor: "q".into(),
                detail: format!(
                    "q must be [{} query heads, M ≤ {tokens}, {}] (got {} values)",
                    self.shape.q_heads,
                    self.shape.head_dim,
                    q.len()
                ),
            });
        }
        let visible: Vec<(u32, u32)> = (0..queries)
            .map(|m| (0, (tokens - queries + m + 1) as u32))
            .collect();
        self.attend(layer, q, &visible)
    }
}
