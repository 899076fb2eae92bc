//! `KvCache`: a GPU-resident KV cache for a whole model that quantizes each token once.
//!
//! Per layer the cache keeps, on the GPU: the exact (f16) attention sinks, the quantized
//! history in chunks of [`CHUNK_GROUPS`] groups (new chunks are allocated as the history
//! grows; old data is never copied or re-quantized), and the exact recent window (f16 for
//! attention, plus the f32 originals). Appended tokens — host slices, or wgpu buffers with
//! [`KvCache::append_buffers`] — wait in the window until at least `residual` newer tokens
//! exist; then whole groups are quantized on the GPU straight into the current chunk. The key channel split is frozen
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
//! Persistence: [`KvCache::save`] / [`KvCache::load`] store every quantized run (the
//! prefill, each chunk) in the [`crate::persist`] plane layout with the metadata of
//! [`KvCache::to_safetensors`]; [`KvCache::to_packed`] gives the contents as one
//! [`crate::PackedCache`] where they fit one run per head (not when STP tokens are
//! followed by later groups: their ternary groups are not contiguous).
//!
//! Not supported: per-token key grouping (attention reads per-channel keys).

use crate::config::{Grouping, KeyScheme, QuantConfig, SplitGranularity, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::{
    attend_segments, check_head_dim, upload_planes, Kernels, KeyLayout, LayerGeometry,
    PackedKeyPlanes, PackedPlanes, PackedValuePlanes, SegmentData, SegmentRef,
};
use crate::gpu::quantize::{
    channel_split_on_gpu, record_pack_exact, record_signs, record_ternary, record_two_bit_channels,
    record_two_bit_tokens, twiddles, GroupWindow, NormalChannels,
};
use crate::gpu::runtime::{Bound, GpuContext};
use crate::packed::planes::{
    pack_f16_slice, ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane,
};
use crate::packed::{
    estimate_size, CacheShape, MixedKeys, PackedCache, PackedHead, PackedKeys, PackedValues,
};
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

/// f32 rows of every KV head: `[kv_heads][capacity][head_dim]`.
struct F32Rows {
    keys: wgpu::Buffer,
    values: wgpu::Buffer,
    capacity: usize,
}

/// Rows `[kv_heads, n, head_dim]` of f32 keys or values, on the host or on the GPU.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Host(&'a [f32]),
    Gpu(&'a wgpu::Buffer),
}

/// Exact stores hold a multiple of this many rows per head, so that every head's slice
/// starts at a storage-offset-aligned byte offset.
const ROW_ALIGN: usize = 64;

/// A run of quantized groups starting at position `start`.
struct Chunk {
    start: usize,
    groups: usize,
    /// Groups the planes can hold (CHUNK_GROUPS, or exactly `groups` for a prefill run or
    /// a loaded run).
    capacity: usize,
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
    /// The exact recent window (quantized presets) as f16 rows, what attention reads.
    window: Option<ExactStore>,
    /// The window's f32 originals, waiting for their group to be quantized.
    window_f32: Option<F32Rows>,
    window_rows: usize,
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
        self.check_layer(layer)?;
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
        self.append_rows(layer, Rows::Host(k), Rows::Host(v), n)
    }

    /// Appends `tokens` tokens that already live on the GPU: `k` and `v` hold
    /// `[kv_heads, tokens, head_dim]` f32 from their first byte (a host application on wgpu
    /// never round-trips them through the CPU). The values are the caller's to keep finite
    /// and within ±65504; they are not read back to check. With protected (STP) tokens, a
    /// prefill from buffers is read back once to pack its STP lists.
    pub fn append_buffers(
        &mut self,
        layer: usize,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        self.check_layer(layer)?;
        let bytes = (h * tokens * d * 4) as u64;
        if k.size() < bytes || v.size() < bytes {
            return Err(VidkvError::ShapeMismatch {
                tensor: "k/v buffers".into(),
                detail: format!(
                    "{tokens} tokens of [{h} KV heads, {d}] f32 need {bytes} bytes; the buffers hold {} and {}",
                    k.size(),
                    v.size()
                ),
            });
        }
        if tokens == 0 {
            return Ok(());
        }
        if self.len(layer) == 0 && !self.protected.is_empty() && !self.config.is_fp16() {
            let plan = self.config.plan(tokens);
            if plan.quantized > 0 {
                let words = h * tokens * d;
                let read = |b: &wgpu::Buffer| -> Result<Vec<f32>> {
                    Ok(self
                        .gpu
                        .read_words(b, words)?
                        .into_iter()
                        .map(f32::from_bits)
                        .collect())
                };
                let (k, v) = (read(k)?, read(v)?);
                return self.append(layer, &k, &v);
            }
        }
        self.append_rows(layer, Rows::Gpu(k), Rows::Gpu(v), tokens)
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.shape.layers {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the model's {} layers",
                self.shape.layers
            )));
        }
        Ok(())
    }

    /// Appends `n` rows per head: sinks first, then the window, quantizing whole groups
    /// that leave the window.
    fn append_rows(&mut self, layer: usize, k: Rows<'_>, v: Rows<'_>, n: usize) -> Result<()> {
        // The quantization kernels use the context's pooled buffers.
        let _exclusive = self.gpu.exclusive();
        if self.config.is_fp16() {
            return self.append_exact(layer, k, v, n);
        }
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let ctx = self.gpu;
        let (sinks, residual) = (self.config.sinks, self.config.residual);
        let tokens = self.layers[layer].tokens;
        let to_sinks = n.min(sinks.saturating_sub(tokens));
        if to_sinks > 0 {
            if self.layers[layer].sinks.is_none() {
                self.layers[layer].sinks = Some(ExactStore::new(
                    ctx,
                    h,
                    d,
                    sinks.next_multiple_of(ROW_ALIGN),
                )?);
            }
            let store = self.layers[layer].sinks.as_ref().expect("just made");
            for head in 0..h {
                self.write_exact(store, head, tokens, (k, v), n, 0, to_sinks)?;
            }
        }
        let arriving = n - to_sinks;
        let before = self.layers[layer].window_rows;
        self.ensure_window(layer, before + arriving)?;
        self.copy_into_window(layer, before, (k, v), n, to_sinks, arriving)?;
        let state = &mut self.layers[layer];
        state.tokens += n;
        state.window_rows += arriving;
        let rows = state.window_rows;
        if rows >= residual + g {
            let groups = (rows - residual) / g;
            self.quantize_window(layer, groups)?;
            self.shift_window(layer, groups * g)?;
        }
        self.repack_window(layer)
    }

    /// Copies `count` key and value rows of every head, from row `from` of `n`-row
    /// sources, into the f32 window of `layer` after its first `at_row` rows (the window
    /// must already hold `at_row + count` rows).
    fn copy_into_window(
        &self,
        layer: usize,
        at_row: usize,
        (k, v): (Rows<'_>, Rows<'_>),
        n: usize,
        from: usize,
        count: usize,
    ) -> Result<()> {
        let d = self.shape.head_dim;
        let window = self.layers[layer].window_f32.as_ref().expect("ensured");
        let mut batch = self.gpu.batch();
        for head in 0..self.shape.kv_heads {
            let at = ((head * window.capacity + at_row) * d * 4) as u64;
            self.copy_rows(&mut batch, k, n, head, from, count, &window.keys, at);
            self.copy_rows(&mut batch, v, n, head, from, count, &window.values, at);
        }
        batch.submit()
    }

    /// Copies `count` rows of head `head` starting at row `from` of `n`-row source rows
    /// into `to` at byte `at` (host rows are written, GPU rows copied by the batch).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        batch: &mut crate::gpu::runtime::Batch<'_>,
        source: Rows<'_>,
        n: usize,
        head: usize,
        from: usize,
        count: usize,
        to: &wgpu::Buffer,
        at: u64,
    ) {
        let d = self.shape.head_dim;
        match source {
            Rows::Host(data) => self.gpu.write(
                to,
                at,
                &data[(head * n + from) * d..(head * n + from + count) * d],
            ),
            Rows::Gpu(buffer) => batch.copy(
                buffer,
                ((head * n + from) * d * 4) as u64,
                to,
                at,
                (count * d * 4) as u64,
            ),
        }
    }

    /// Stores `count` rows (from row `from` of `n`-row sources) of head `head` as f16 in
    /// `store` from row `row`.
    #[allow(clippy::too_many_arguments)]
    fn write_exact(
        &self,
        store: &ExactStore,
        head: usize,
        row: usize,
        (k, v): (Rows<'_>, Rows<'_>),
        n: usize,
        from: usize,
        count: usize,
    ) -> Result<()> {
        let d = self.shape.head_dim;
        let ctx = self.gpu;
        if let (Rows::Host(k), Rows::Host(v)) = (k, v) {
            let rows = (head * n + from) * d..(head * n + from + count) * d;
            store.write(ctx, head, row, d, &k[rows.clone()], &v[rows]);
            return Ok(());
        }
        let words = count * d / 2;
        let at = ((head * store.capacity + row) * d / 2 * 4) as u64;
        for (source, target) in [(k, &store.keys), (v, &store.values)] {
            let staging = ctx.buffer("cache exact staging", (count * d * 4) as u64)?;
            let packed = ctx.buffer("cache exact packed", (words * 4) as u64)?;
            let mut batch = ctx.batch();
            self.copy_rows(&mut batch, source, n, head, from, count, &staging, 0);
            record_pack_exact(&mut batch, d, count, (&*staging).into(), (&*packed).into());
            batch.copy(&packed, 0, target, at, (words * 4) as u64);
            batch.submit()?;
        }
        Ok(())
    }

    /// Grows the f32 window of `layer` to hold `rows` rows per head (old rows are copied).
    fn ensure_window(&mut self, layer: usize, rows: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let ctx = self.gpu;
        let floor = self.config.residual + self.config.group_size;
        let state = &mut self.layers[layer];
        let current = state.window_f32.as_ref().map_or(0, |w| w.capacity);
        if rows <= current {
            return Ok(());
        }
        let capacity = rows.max(2 * current).max(floor).next_multiple_of(ROW_ALIGN);
        let grown = F32Rows {
            keys: ctx.create_zeroed("window keys", h * capacity * d)?,
            values: ctx.create_zeroed("window values", h * capacity * d)?,
            capacity,
        };
        if let Some(old) = &state.window_f32 {
            let mut batch = ctx.batch();
            for head in 0..h {
                let size = (state.window_rows * d * 4) as u64;
                let (from, to) = (
                    (head * old.capacity * d * 4) as u64,
                    (head * capacity * d * 4) as u64,
                );
                batch.copy(&old.keys, from, &grown.keys, to, size);
                batch.copy(&old.values, from, &grown.values, to, size);
            }
            batch.submit()?;
        }
        state.window_f32 = Some(grown);
        Ok(())
    }

    /// Drops the first `rows` rows of the window (they were quantized), moving the rest to
    /// the front.
    fn shift_window(&mut self, layer: usize, rows: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let ctx = self.gpu;
        let state = &mut self.layers[layer];
        let window = state.window_f32.as_ref().expect("a window with rows");
        let keep = state.window_rows - rows;
        if keep > 0 {
            let size = (keep * d * 4) as u64;
            let temp = ctx.buffer("window shift", size)?;
            let mut batch = ctx.batch();
            for head in 0..h {
                let base = (head * window.capacity * d * 4) as u64;
                for buffer in [&window.keys, &window.values] {
                    batch.copy(buffer, base + (rows * d * 4) as u64, &temp, 0, size);
                    batch.copy(&temp, 0, buffer, base, size);
                }
            }
            batch.submit()?;
        }
        state.window_rows = keep;
        Ok(())
    }

    /// Rewrites the f16 window that attention reads from the f32 window.
    fn repack_window(&mut self, layer: usize) -> Result<()> {
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let ctx = self.gpu;
        let capacity = (self.config.residual + g).next_multiple_of(ROW_ALIGN);
        let state = &mut self.layers[layer];
        if state.window.is_none() {
            state.window = Some(ExactStore::new(ctx, h, d, capacity)?);
        }
        let rows = state.window_rows;
        if rows == 0 {
            return Ok(());
        }
        let (f32_rows, store) = (
            state.window_f32.as_ref().expect("a window with rows"),
            state.window.as_ref().expect("just made"),
        );
        let words = rows * d / 2;
        let mut batch = ctx.batch();
        for head in 0..h {
            let input_at = (head * f32_rows.capacity * d * 4) as u64;
            let output_at = (head * store.capacity * d / 2 * 4) as u64;
            for (input, output) in [
                (&f32_rows.keys, &store.keys),
                (&f32_rows.values, &store.values),
            ] {
                record_pack_exact(
                    &mut batch,
                    d,
                    rows,
                    Bound::range(input, input_at, (rows * d * 4) as u64),
                    Bound::range(output, output_at, (words * 4) as u64),
                );
            }
        }
        batch.submit()
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
            // Positions beyond the prefill are never protected (later tokens never are).
            &self
                .protected
                .iter()
                .copied()
                .filter(|&p| (p as usize) < n)
                .collect::<Vec<u32>>(),
        )?;
        let (layout, planes) = upload_planes(
            ctx,
            &packed.heads,
            &packed.protected,
            self.config.group_size,
        )?;
        let planes = planes.expect("a quantized preset with quantized tokens has planes");
        let _exclusive = ctx.exclusive();
        if plan.sinks > 0 {
            let store = ExactStore::new(ctx, h, d, self.config.sinks.next_multiple_of(ROW_ALIGN))?;
            for head in 0..h {
                self.write_exact(
                    &store,
                    head,
                    0,
                    (Rows::Host(k), Rows::Host(v)),
                    n,
                    0,
                    plan.sinks,
                )?;
            }
            self.layers[layer].sinks = Some(store);
        }
        let tail = plan.tail();
        self.ensure_window(layer, tail)?;
        self.copy_into_window(
            layer,
            0,
            (Rows::Host(k), Rows::Host(v)),
            n,
            plan.quantized_end(),
            tail,
        )?;
        self.layers[layer].window_rows = tail;
        self.repack_window(layer)?;
        let state = &mut self.layers[layer];
        state.layout = Some(layout);
        state.quantized = plan.quantized;
        state.prefill = Some((
            Chunk {
                start: plan.quantized_start(),
                groups: plan.quantized / self.config.group_size,
                capacity: plan.quantized / self.config.group_size,
                planes,
            },
            packed.protected.len(),
        ));
        state.tokens = n;
        self.groups_quantized += (plan.quantized / self.config.group_size) as u64;
        Ok(())
    }

    fn append_exact(&mut self, layer: usize, k: Rows<'_>, v: Rows<'_>, n: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let capacity = CHUNK_GROUPS * self.config.group_size;
        let ctx = self.gpu;
        let mut done = 0;
        while done < n {
            let state = &mut self.layers[layer];
            if state
                .exact_chunks
                .last()
                .is_none_or(|(_, used)| *used == capacity)
            {
                state
                    .exact_chunks
                    .push((ExactStore::new(ctx, h, d, capacity)?, 0));
            }
            let (store, used) = self.layers[layer].exact_chunks.last().expect("just made");
            let take = (capacity - *used).min(n - done);
            for head in 0..h {
                self.write_exact(store, head, *used, (k, v), n, done, take)?;
            }
            self.layers[layer]
                .exact_chunks
                .last_mut()
                .expect("present")
                .1 += take;
            done += take;
        }
        self.layers[layer].tokens += n;
        Ok(())
    }

    /// Quantizes the oldest `groups` groups of the window of `layer` into its chunks.
    fn quantize_window(&mut self, layer: usize, groups: usize) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let g = self.config.group_size;
        let ctx = self.gpu;
        if self.layers[layer].layout.is_none() {
            let layout = self.freeze_split(layer, groups * g)?;
            self.layers[layer].layout = Some(layout);
        }
        let words = self.chunk_words();
        let mut done = 0;
        while done < groups {
            let state = &self.layers[layer];
            if state.chunks.last().is_none_or(|c| c.groups == c.capacity) {
                let start = self.config.sinks + state.quantized;
                let planes = self.new_chunk_planes(&words)?;
                self.layers[layer].chunks.push(Chunk {
                    start,
                    groups: 0,
                    capacity: CHUNK_GROUPS,
                    planes,
                });
            }
            let state = &self.layers[layer];
            let chunk = state.chunks.last().expect("just made");
            let take = (chunk.capacity - chunk.groups).min(groups - done);
            let layout = state.layout.as_ref().expect("frozen above");
            let window = state
                .window_f32
                .as_ref()
                .expect("groups come from the window");
            let bytes = (take * g * d * 4) as u64;
            for head in 0..h {
                let input = ctx.buffer("input", bytes)?;
                let values = ctx.buffer("cache value input", bytes)?;
                let at = ((head * window.capacity + done * g) * d * 4) as u64;
                let mut batch = ctx.batch();
                batch.copy(&window.keys, at, &input, 0, bytes);
                batch.copy(&window.values, at, &values, 0, bytes);
                self.record_group_quantization(
                    &mut batch, chunk, layout, &words, head, take, &input, &values,
                )?;
                batch.submit()?;
            }
            let state = &mut self.layers[layer];
            state.chunks.last_mut().expect("present").groups += take;
            state.quantized += take * g;
            done += take;
        }
        self.groups_quantized += groups as u64;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record_group_quantization(
        &self,
        batch: &mut crate::gpu::runtime::Batch<'_>,
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
            batch,
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
                batch,
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
                batch,
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
                batch,
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
                batch,
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
        Ok(())
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
        let window = self.layers[layer]
            .window_f32
            .as_ref()
            .expect("the first groups come from the window");
        let order = ctx.create_zeroed("channel order", h * d)?;
        let rows = |head: usize| {
            (
                &window.keys,
                (head * window.capacity * d * 4) as u64,
                tokens,
            )
        };
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
                let inputs: Vec<_> = (0..h).map(rows).collect();
                let shared = channel_split_on_gpu(ctx, &inputs, d, k)?;
                for head in 0..h {
                    copy(&shared, head)?;
                }
            }
            SplitGranularity::PerHead => {
                for head in 0..h {
                    let own = channel_split_on_gpu(ctx, &[rows(head)], d, k)?;
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
            let window = state.window_rows;
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

/// One quantized run of a layer, as stored: its planes and how many groups it holds.
struct StoredRun<'a> {
    planes: &'a PackedPlanes,
    /// Filled groups of the key planes.
    groups: usize,
    /// Group stride and filled groups of per-channel value planes (a prefill run's ternary
    /// plane covers only its unprotected tokens).
    value_stride: usize,
    value_groups: usize,
}

impl<'g> KvCache<'g> {
    /// The cache as a [`PackedCache`] (every layer must hold the same number of tokens):
    /// the planes are read back from the GPU and laid out as one run per head.
    pub fn to_packed(&self) -> Result<PackedCache> {
        let tokens = self.len(0);
        if tokens == 0 || self.layers.iter().any(|l| l.tokens != tokens) {
            return Err(VidkvError::InvalidConfig(
                "saving needs every layer to hold the same, non-zero number of tokens".into(),
            ));
        }
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let plan = self.config.plan(tokens);
        let ctx = self.gpu;
        let mut heads = Vec::with_capacity(self.shape.layers * h);
        let mut protected = Vec::new();
        for state in &self.layers {
            if state.prefill.as_ref().is_some_and(|(_, p)| *p > 0) && !state.chunks.is_empty() {
                return Err(VidkvError::InvalidConfig(
                    "a cache with STP-protected tokens and groups quantized after the prefill cannot be saved in format version 1"
                        .into(),
                ));
            }
            if let Some((chunk, _)) = &state.prefill {
                let end = chunk.start + chunk.groups * g;
                protected = self
                    .protected
                    .iter()
                    .copied()
                    .filter(|&p| (chunk.start..end).contains(&(p as usize)))
                    .collect();
            }
            let runs: Vec<StoredRun<'_>> = state
                .prefill
                .iter()
                .map(|(c, _)| StoredRun::of(c, true))
                .chain(state.chunks.iter().map(|c| StoredRun::of(c, false)))
                .collect();
            let exact_words =
                |store: &Option<ExactStore>, rows: usize, keys: bool| -> Result<Vec<Vec<u32>>> {
                    let Some(store) = store else {
                        return Ok(vec![Vec::new(); h]);
                    };
                    let buffer = if keys { &store.keys } else { &store.values };
                    let all = ctx.read_words(buffer, h * store.capacity * d / 2)?;
                    Ok((0..h)
                        .map(|head| all[head * store.capacity * d / 2..][..rows * d / 2].to_vec())
                        .collect())
                };
            let (sink_keys, sink_values) = if self.config.is_fp16() {
                (vec![Vec::new(); h], vec![Vec::new(); h])
            } else {
                (
                    exact_words(&state.sinks, plan.sinks, true)?,
                    exact_words(&state.sinks, plan.sinks, false)?,
                )
            };
            let fp16_rows = |keys: bool| -> Result<Vec<Vec<u32>>> {
                let mut out = vec![Vec::new(); h];
                for (store, used) in &state.exact_chunks {
                    for (head, rows) in exact_words(
                        &Some(ExactStore {
                            keys: store.keys.clone(),
                            values: store.values.clone(),
                            capacity: store.capacity,
                        }),
                        *used,
                        keys,
                    )?
                    .into_iter()
                    .enumerate()
                    {
                        out[head].extend(rows);
                    }
                }
                Ok(out)
            };
            let (fp16_keys, fp16_values) = if self.config.is_fp16() {
                (fp16_rows(true)?, fp16_rows(false)?)
            } else {
                (vec![Vec::new(); h], vec![Vec::new(); h])
            };
            let order = match &state.layout {
                Some(layout)
                    if layout.normals > 0
                        || matches!(self.config.keys, KeyScheme::Mixed { .. }) =>
                {
                    Some((
                        ctx.read_words(&layout.order, h * d)?,
                        layout.outliers,
                        layout.fft,
                    ))
                }
                _ => None,
            };
            let (window_keys, window_values) = (
                exact_words(&state.window, state.window_rows, true)?,
                exact_words(&state.window, state.window_rows, false)?,
            );
            let reads = RunReads::read(ctx, &runs)?;
            for head in 0..h {
                let mut exact_keys = sink_keys[head].clone();
                let mut exact_values = sink_values[head].clone();
                exact_keys.extend(&fp16_keys[head]);
                exact_values.extend(&fp16_values[head]);
                exact_keys.extend(&window_keys[head]);
                exact_values.extend(&window_values[head]);
                heads.push(self.packed_head(
                    plan,
                    head,
                    exact_keys,
                    exact_values,
                    &reads,
                    &runs,
                    order.as_ref(),
                    protected.len(),
                )?);
            }
        }
        Ok(PackedCache {
            shape: CacheShape {
                layers: self.shape.layers,
                kv_heads: h,
                tokens,
                head_dim: d,
            },
            config: self.config.clone(),
            protected,
            heads,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn packed_head(
        &self,
        plan: crate::config::TokenPlan,
        head: usize,
        exact_keys: Vec<u32>,
        exact_values: Vec<u32>,
        reads: &RunReads,
        runs: &[StoredRun<'_>],
        order: Option<&(Vec<u32>, usize, bool)>,
        protected: usize,
    ) -> Result<PackedHead> {
        let (d, g) = (self.shape.head_dim, self.config.group_size);
        let nq = plan.quantized;
        let shape = |rows, len| GroupedShape {
            rows,
            len,
            group_size: g,
        };
        let wpg2 = TwoBitPlane::words_per_group(g);
        let keys = match self.config.keys {
            KeyScheme::Fp16 => PackedKeys::Exact,
            KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
                grouping,
                plane: TwoBitPlane {
                    shape: shape(d, nq),
                    codes: reads.rows(RunArray::KeyCodes, runs, head, d, wpg2),
                    params: reads.rows(RunArray::KeyParams, runs, head, d, 1),
                },
            },
            KeyScheme::Mixed { .. } => {
                let (order, k, fft) = order
                    .ok_or_else(|| VidkvError::InvalidConfig("no channel split to save".into()))?;
                let mut outlier_mask = vec![0u32; d.div_ceil(32)];
                for &c in &order[head * d..head * d + k] {
                    outlier_mask[c as usize / 32] |= 1 << (c % 32);
                }
                let n = d - k;
                PackedKeys::Mixed(MixedKeys {
                    outlier_mask,
                    outliers: TwoBitPlane {
                        shape: shape(*k, nq),
                        codes: reads.rows(RunArray::KeyCodes, runs, head, *k, wpg2),
                        params: reads.rows(RunArray::KeyParams, runs, head, *k, 1),
                    },
                    normals: SignPlane {
                        shape: shape(n, nq),
                        codes: reads.rows(
                            RunArray::SignCodes,
                            runs,
                            head,
                            n,
                            SignPlane::words_per_group(g),
                        ),
                        scales: reads.rows(RunArray::SignScales, runs, head, n.div_ceil(2), 1),
                    },
                    fft: *fft,
                })
            }
        };
        let values = match self.config.values {
            ValueScheme::Fp16 => PackedValues::Exact,
            ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            } => PackedValues::TwoBit {
                grouping: Grouping::PerChannel,
                plane: TwoBitPlane {
                    shape: shape(d, nq),
                    codes: reads.rows(RunArray::ValueCodes, runs, head, d, wpg2),
                    params: reads.rows(RunArray::ValueParams, runs, head, d, 1),
                },
            },
            ValueScheme::TwoBit {
                grouping: Grouping::PerToken,
            } => {
                let cg = d.div_ceil(g);
                PackedValues::TwoBit {
                    grouping: Grouping::PerToken,
                    plane: TwoBitPlane {
                        shape: GroupedShape {
                            rows: nq,
                            len: d,
                            group_size: g,
                        },
                        codes: reads.token_rows(RunArray::ValueCodes, runs, head, g, cg * wpg2),
                        params: reads.token_rows(RunArray::ValueParams, runs, head, g, cg),
                    },
                }
            }
            ValueScheme::Ternary { .. } => {
                let plain = shape(d, nq - protected);
                let (kept_codes, kept_params) = reads.kept(head, protected, d, g)?;
                PackedValues::Ternary {
                    plane: TernaryPlane {
                        shape: plain,
                        codes: reads.rows(
                            RunArray::ValueCodes,
                            runs,
                            head,
                            d.div_ceil(5),
                            TernaryPlane::words_per_record(g),
                        ),
                        scales: reads.rows(RunArray::ValueParams, runs, head, d.div_ceil(2), 1),
                    },
                    protected: TwoBitPlane {
                        shape: shape(d, protected),
                        codes: kept_codes,
                        params: kept_params,
                    },
                }
            }
        };
        Ok(PackedHead {
            plan,
            head_dim: d,
            exact_keys: ExactRows {
                rows: plan.exact(),
                width: d,
                data: exact_keys,
            },
            exact_values: ExactRows {
                rows: plan.exact(),
                width: d,
                data: exact_values,
            },
            keys,
            values,
        })
    }

    /// A cache holding the contents of `packed` (the model has `q_heads` query heads).
    /// Quantized tokens become one stored run per layer; later tokens go to new chunks.
    pub fn from_packed(packed: &PackedCache, q_heads: usize, gpu: &'g GpuContext) -> Result<Self> {
        let s = packed.shape;
        let shape = ModelShape {
            layers: s.layers,
            q_heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
        };
        let mut cache = KvCache::new(shape, packed.config.clone(), gpu)?;
        let (h, g) = (s.kv_heads, packed.config.group_size);
        let plan = packed.config.plan(s.tokens);
        cache.protected = packed.protected.clone();
        for l in 0..s.layers {
            let heads = &packed.heads[l * h..(l + 1) * h];
            let keys: Vec<Vec<u32>> = heads
                .iter()
                .map(|head| head.exact_keys.data.clone())
                .collect();
            let values: Vec<Vec<u32>> = heads
                .iter()
                .map(|head| head.exact_values.data.clone())
                .collect();
            cache.restore_exact(l, s.tokens, &keys, &values)?;
            if plan.quantized > 0 {
                let (layout, planes) = upload_planes(gpu, heads, &packed.protected, g)?;
                let state = &mut cache.layers[l];
                state.layout = Some(layout);
                state.quantized = plan.quantized;
                state.prefill = Some((
                    Chunk {
                        start: plan.quantized_start(),
                        groups: plan.quantized / g,
                        capacity: plan.quantized / g,
                        planes: planes.expect("quantized tokens have planes"),
                    },
                    packed.protected.len(),
                ));
            }
        }
        Ok(cache)
    }

    /// Saves the cache to `path` atomically (see [`KvCache::to_safetensors`] and
    /// [`crate::persist::write_atomic`]).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        crate::persist::write_atomic(path, &self.to_safetensors()?)
    }

    /// Loads a cache saved by [`KvCache::save`] (or a [`PackedCache`] file that names the
    /// model's `q_heads`), validating every field.
    pub fn load(path: &std::path::Path, gpu: &'g GpuContext) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| VidkvError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_safetensors(&bytes, gpu)
    }

    /// The cache as safetensors bytes: the [`crate::persist`] layout with one quantized
    /// run per chunk (`l{layer}.h{head}.r{run}.{array}`), each run's STP list
    /// (`l{layer}.r{run}.protected`), the exact sinks and window of each head
    /// (`l{layer}.h{head}.exact_keys` / `exact_values`), and metadata: `format` =
    /// `vidkv-kvcache`, `version` = 2, `shape` (with `q_heads`), `config`, and per layer its
    /// tokens and runs (`[start, groups, protected]`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let ctx = self.gpu;
        let mut arrays: Vec<(String, Vec<u32>)> = Vec::new();
        let mut layers_meta = Vec::with_capacity(self.shape.layers);
        for (l, state) in self.layers.iter().enumerate() {
            let plan = self.config.plan(state.tokens);
            let exact = |store: &ExactStore, rows: usize, keys: bool| -> Result<Vec<Vec<u32>>> {
                let buffer = if keys { &store.keys } else { &store.values };
                let all = ctx.read_words(buffer, h * store.capacity * d / 2)?;
                Ok((0..h)
                    .map(|head| all[head * store.capacity * d / 2..][..rows * d / 2].to_vec())
                    .collect())
            };
            let mut exact_keys = vec![Vec::new(); h];
            let mut exact_values = vec![Vec::new(); h];
            let mut add = |store: &ExactStore, rows: usize| -> Result<()> {
                for (head, (k, v)) in exact(store, rows, true)?
                    .into_iter()
                    .zip(exact(store, rows, false)?)
                    .enumerate()
                {
                    exact_keys[head].extend(k);
                    exact_values[head].extend(v);
                }
                Ok(())
            };
            for (store, used) in &state.exact_chunks {
                add(store, *used)?;
            }
            if let Some(store) = &state.sinks {
                add(store, plan.sinks)?;
            }
            if let Some(store) = &state.window {
                add(store, state.window_rows)?;
            }
            for head in 0..h {
                arrays.push((
                    format!("l{l}.h{head}.exact_keys"),
                    std::mem::take(&mut exact_keys[head]),
                ));
                arrays.push((
                    format!("l{l}.h{head}.exact_values"),
                    std::mem::take(&mut exact_values[head]),
                ));
            }
            let order = match &state.layout {
                Some(layout) if matches!(self.config.keys, KeyScheme::Mixed { .. }) => Some((
                    ctx.read_words(&layout.order, h * d)?,
                    layout.outliers,
                    layout.fft,
                )),
                _ => None,
            };
            let runs: Vec<(&Chunk, usize, bool)> = state
                .prefill
                .iter()
                .map(|(c, p)| (c, *p, true))
                .chain(state.chunks.iter().map(|c| (c, 0, false)))
                .filter(|(c, _, _)| c.groups > 0)
                .collect();
            let mut runs_meta = Vec::with_capacity(runs.len());
            for (r, &(chunk, protected, prefill)) in runs.iter().enumerate() {
                let run = [StoredRun::of(chunk, prefill)];
                let reads = RunReads::read(ctx, &run)?;
                let tokens = chunk.groups * g;
                let run_plan = crate::config::TokenPlan {
                    tokens,
                    sinks: 0,
                    quantized: tokens,
                };
                for head in 0..h {
                    let planes = self.packed_head(
                        run_plan,
                        head,
                        Vec::new(),
                        Vec::new(),
                        &reads,
                        &run,
                        order.as_ref(),
                        protected,
                    )?;
                    for (name, words) in crate::persist::head_arrays(&planes).into_iter().skip(2) {
                        arrays.push((format!("l{l}.h{head}.r{r}.{name}"), words.to_vec()));
                    }
                }
                let list: Vec<u32> = self
                    .protected
                    .iter()
                    .copied()
                    .filter(|&p| (chunk.start..chunk.start + tokens).contains(&(p as usize)))
                    .take(protected)
                    .collect();
                arrays.push((format!("l{l}.r{r}.protected"), list));
                runs_meta.push(serde_json::json!([chunk.start, chunk.groups, protected]));
            }
            layers_meta.push(serde_json::json!({"tokens": state.tokens, "runs": runs_meta}));
        }
        let views = arrays
            .iter()
            .map(|(name, words)| {
                let bytes: &[u8] = bytemuck::cast_slice(words);
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U32,
                    vec![words.len()],
                    bytes,
                )
                .map(|view| (name.clone(), view))
                .map_err(|e| VidkvError::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let s = self.shape;
        let metadata = std::collections::HashMap::from([
            ("format".to_string(), KVCACHE_FORMAT.to_string()),
            ("version".to_string(), KVCACHE_VERSION.to_string()),
            (
                "shape".to_string(),
                serde_json::json!({"layers": s.layers, "q_heads": s.q_heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim}).to_string(),
            ),
            ("config".to_string(), crate::persist::config_to_json(&self.config).to_string()),
            ("layers".to_string(), serde_json::Value::Array(layers_meta).to_string()),
        ]);
        safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| VidkvError::Safetensors(e.to_string()))
    }

    /// Parses and validates bytes written by [`KvCache::to_safetensors`] (or a
    /// [`PackedCache`] file with a `q_heads` metadata entry) into a cache on `gpu`.
    pub fn from_safetensors(bytes: &[u8], gpu: &'g GpuContext) -> Result<Self> {
        use crate::persist::{corrupt, read_planes, usize_field, SavedFile};
        let file = SavedFile::parse(bytes, "saved KvCache")?;
        if file.meta("format")? == crate::persist::FORMAT {
            let (packed, meta) = PackedCache::from_saved(file)?;
            let q_heads = meta
                .get("q_heads")
                .and_then(|q| q.parse::<usize>().ok())
                .ok_or_else(|| {
                    corrupt("a packed-cache file needs a `q_heads` entry to load as a KvCache")
                })?;
            return KvCache::from_packed(&packed, q_heads, gpu);
        }
        if file.meta("format")? != KVCACHE_FORMAT
            || file.meta("version")? != KVCACHE_VERSION.to_string()
        {
            return Err(corrupt(format!(
                "format `{}` version {} is not a saved KvCache this library reads ({KVCACHE_FORMAT} {KVCACHE_VERSION})",
                file.meta("format")?,
                file.meta("version")?
            )));
        }
        let shape_json = file.json("shape")?;
        let shape = ModelShape {
            layers: usize_field(&shape_json, "layers")?,
            q_heads: usize_field(&shape_json, "q_heads")?,
            kv_heads: usize_field(&shape_json, "kv_heads")?,
            head_dim: usize_field(&shape_json, "head_dim")?,
        };
        let config = crate::persist::config_from_json(&file.json("config")?)?;
        let mut cache = KvCache::new(shape, config.clone(), gpu)?;
        let layers = file.json("layers")?;
        let layers = layers
            .as_array()
            .filter(|a| a.len() == shape.layers)
            .ok_or_else(|| corrupt("`layers` does not list every layer"))?;
        let (h, d, g) = (shape.kv_heads, shape.head_dim, config.group_size);
        let array = |name: &str, expected: usize| file.u32_array(name, Some(expected));
        for (l, layer_meta) in layers.iter().enumerate() {
            let tokens = usize_field(layer_meta, "tokens")?;
            if tokens > u32::MAX as usize {
                return Err(corrupt(format!("layer {l} claims {tokens} tokens")));
            }
            let plan = config.plan(tokens);
            let runs = layer_meta
                .get("runs")
                .and_then(|r| r.as_array())
                .ok_or_else(|| corrupt(format!("layer {l} lists no runs")))?;
            let exact_rows = if config.is_fp16() {
                tokens
            } else {
                plan.exact()
            };
            let mut exact_keys = Vec::with_capacity(h);
            let mut exact_values = Vec::with_capacity(h);
            for head in 0..h {
                for (name, out) in [
                    ("exact_keys", &mut exact_keys),
                    ("exact_values", &mut exact_values),
                ] {
                    let words = array(&format!("l{l}.h{head}.{name}"), exact_rows * d / 2)?;
                    crate::persist::check_f16_words(&words, name)?;
                    out.push(words);
                }
            }
            cache.restore_exact(l, tokens, &exact_keys, &exact_values)?;
            let mut position = plan.quantized_start();
            for (r, run) in runs.iter().enumerate() {
                let field = |i: usize| run.get(i).and_then(|x| x.as_u64()).map(|x| x as usize);
                let (Some(start), Some(groups), Some(protected)) = (field(0), field(1), field(2))
                else {
                    return Err(corrupt(format!(
                        "layer {l} run {r} is not [start, groups, protected]"
                    )));
                };
                let run_tokens = groups
                    .checked_mul(g)
                    .filter(|&t| t > 0 && t <= plan.quantized)
                    .ok_or_else(|| corrupt(format!("layer {l} run {r} has {groups} groups")))?;
                if start != position || protected > run_tokens {
                    return Err(corrupt(format!(
                        "layer {l} run {r} starts at {start}, expected {position}"
                    )));
                }
                let list = array(&format!("l{l}.r{r}.protected"), protected)?;
                if list.windows(2).any(|w| w[0] >= w[1])
                    || list
                        .iter()
                        .any(|&p| !(start..start + run_tokens).contains(&(p as usize)))
                {
                    return Err(corrupt(format!(
                        "layer {l} run {r}: STP positions unsorted or outside the run"
                    )));
                }
                if protected > 0
                    && (r != 0 || !matches!(config.values, ValueScheme::Ternary { .. }))
                {
                    return Err(corrupt(format!(
                        "layer {l} run {r}: STP positions outside a ternary prefill run"
                    )));
                }
                let run_plan = crate::config::TokenPlan {
                    tokens: start + run_tokens,
                    sinks: start,
                    quantized: run_tokens,
                };
                let mut heads = Vec::with_capacity(h);
                for head in 0..h {
                    let prefix = format!("l{l}.h{head}.r{r}.");
                    let named =
                        |name: &str, expected: usize| array(&format!("{prefix}{name}"), expected);
                    let (keys, values) = read_planes(&named, &config, d, run_tokens, protected)?;
                    heads.push(PackedHead {
                        plan: run_plan,
                        head_dim: d,
                        exact_keys: ExactRows {
                            rows: 0,
                            width: d,
                            data: Vec::new(),
                        },
                        exact_values: ExactRows {
                            rows: 0,
                            width: d,
                            data: Vec::new(),
                        },
                        keys,
                        values,
                    });
                }
                let (layout, planes) = upload_planes(gpu, &heads, &list, g)?;
                let chunk = Chunk {
                    start,
                    groups,
                    capacity: groups,
                    planes: planes.ok_or_else(|| corrupt("a quantized run of an fp16 cache"))?,
                };
                let state = &mut cache.layers[l];
                if state.layout.is_none() {
                    state.layout = Some(layout);
                }
                state.quantized += run_tokens;
                if protected > 0 {
                    cache.protected = list;
                    state.prefill = Some((chunk, protected));
                } else {
                    state.chunks.push(chunk);
                }
                position += run_tokens;
            }
            if position != plan.quantized_end() {
                return Err(corrupt(format!(
                    "layer {l}: the runs cover {} tokens, the plan {}",
                    position - plan.quantized_start(),
                    plan.quantized
                )));
            }
        }
        Ok(cache)
    }

    /// Restores a layer's token count and exact rows (f16 words per head: every token for
    /// fp16, else the sinks then the window).
    fn restore_exact(
        &mut self,
        l: usize,
        tokens: usize,
        keys: &[Vec<u32>],
        values: &[Vec<u32>],
    ) -> Result<()> {
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let gpu = self.gpu;
        let plan = self.config.plan(tokens);
        let words_per_row = d / 2;
        self.layers[l].tokens = tokens;
        if self.config.is_fp16() {
            let capacity = CHUNK_GROUPS * g;
            let mut at = 0;
            while at < tokens {
                let take = capacity.min(tokens - at);
                let store = ExactStore::new(gpu, h, d, capacity)?;
                for head in 0..h {
                    let offset = (head * capacity * words_per_row * 4) as u64;
                    gpu.write(
                        &store.keys,
                        offset,
                        &keys[head][at * words_per_row..(at + take) * words_per_row],
                    );
                    gpu.write(
                        &store.values,
                        offset,
                        &values[head][at * words_per_row..(at + take) * words_per_row],
                    );
                }
                self.layers[l].exact_chunks.push((store, take));
                at += take;
            }
            return Ok(());
        }
        if plan.sinks > 0 {
            let store = ExactStore::new(gpu, h, d, self.config.sinks.next_multiple_of(ROW_ALIGN))?;
            for head in 0..h {
                let offset = (head * store.capacity * words_per_row * 4) as u64;
                gpu.write(
                    &store.keys,
                    offset,
                    &keys[head][..plan.sinks * words_per_row],
                );
                gpu.write(
                    &store.values,
                    offset,
                    &values[head][..plan.sinks * words_per_row],
                );
            }
            self.layers[l].sinks = Some(store);
        }
        // The window's f32 rows come back from its f16 form.
        let unpack = |words: &[u32]| -> Vec<f32> {
            words
                .iter()
                .flat_map(|&w| {
                    let (a, b) = crate::packed::planes::unpack_f16_pair(w);
                    [a, b]
                })
                .collect()
        };
        let tail = plan.tail();
        let rows = |all: &[Vec<u32>]| -> Vec<f32> {
            all.iter()
                .flat_map(|head| unpack(&head[plan.sinks * words_per_row..]))
                .collect()
        };
        let (window_keys, window_values) = (rows(keys), rows(values));
        self.ensure_window(l, tail)?;
        self.copy_into_window(
            l,
            0,
            (Rows::Host(&window_keys), Rows::Host(&window_values)),
            tail,
            0,
            tail,
        )?;
        self.layers[l].window_rows = tail;
        self.repack_window(l)
    }
}

/// The format name of a saved [`KvCache`].
pub const KVCACHE_FORMAT: &str = "vidkv-kvcache";
/// The version of a saved [`KvCache`] this library writes and reads.
pub const KVCACHE_VERSION: u32 = 2;

impl<'a> StoredRun<'a> {
    /// The run of a chunk, or of a layer's prefill (`prefill`: its planes are exactly full).
    fn of(c: &'a Chunk, prefill: bool) -> Self {
        let value_stride = match &c.planes.values {
            PackedValuePlanes::Ternary { groups, .. } => *groups,
            PackedValuePlanes::TwoBit { .. } => c.planes.groups,
        };
        StoredRun {
            planes: &c.planes,
            groups: c.groups,
            value_stride,
            value_groups: if prefill { value_stride } else { c.groups },
        }
    }
}

/// The arrays of a stored run.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum RunArray {
    KeyCodes,
    KeyParams,
    SignCodes,
    SignScales,
    ValueCodes,
    ValueParams,
}

/// Every array of every run, read back once.
struct RunReads {
    /// Per run, per array: the whole buffer's words.
    arrays: Vec<std::collections::HashMap<RunArray, Vec<u32>>>,
    kept: Vec<(Vec<u32>, Vec<u32>)>,
}

impl RunReads {
    fn read(ctx: &GpuContext, runs: &[StoredRun<'_>]) -> Result<Self> {
        let mut arrays = Vec::with_capacity(runs.len());
        let mut kept = Vec::with_capacity(runs.len());
        for run in runs {
            let mut map = std::collections::HashMap::new();
            let all = |b: &wgpu::Buffer| ctx.read_words(b, (b.size() / 4) as usize);
            let PackedKeyPlanes::Packed {
                codes,
                scale_min,
                sign_codes,
                sign_scales,
            } = &run.planes.keys;
            map.insert(RunArray::KeyCodes, all(codes)?);
            map.insert(RunArray::KeyParams, all(scale_min)?);
            map.insert(RunArray::SignCodes, all(sign_codes)?);
            map.insert(RunArray::SignScales, all(sign_scales)?);
            match &run.planes.values {
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                } => {
                    map.insert(RunArray::ValueCodes, all(codes)?);
                    map.insert(RunArray::ValueParams, all(scale_min)?);
                    kept.push((Vec::new(), Vec::new()));
                }
                PackedValuePlanes::Ternary {
                    codes,
                    scales,
                    kept_codes,
                    kept_params,
                    ..
                } => {
                    map.insert(RunArray::ValueCodes, all(codes)?);
                    map.insert(RunArray::ValueParams, all(scales)?);
                    kept.push((all(kept_codes)?, all(kept_params)?));
                }
            }
            arrays.push(map);
        }
        Ok(RunReads { arrays, kept })
    }

    /// Rows `0..rows` of head `head` of a `[head][row][stride][per_group]` array, each row
    /// the concatenation of the runs' filled groups.
    fn rows(
        &self,
        array: RunArray,
        runs: &[StoredRun<'_>],
        head: usize,
        rows: usize,
        per_group: usize,
    ) -> Vec<u32> {
        let values = matches!(array, RunArray::ValueCodes | RunArray::ValueParams);
        let mut out = Vec::new();
        for row in 0..rows {
            for (run, map) in runs.iter().zip(&self.arrays) {
                let words = &map[&array];
                let (stride, filled) = if values {
                    (run.value_stride, run.value_groups)
                } else {
                    (run.planes.groups, run.groups)
                };
                let base = (head * rows + row) * stride * per_group;
                out.extend_from_slice(&words[base..base + filled * per_group]);
            }
        }
        out
    }

    /// The token rows of head `head` of a per-token `[head][token][groups][..]` array.
    fn token_rows(
        &self,
        array: RunArray,
        runs: &[StoredRun<'_>],
        head: usize,
        g: usize,
        per_token: usize,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for (run, map) in runs.iter().zip(&self.arrays) {
            let PackedValuePlanes::TwoBit { rows, .. } = &run.planes.values else {
                unreachable!("per-token planes are 2-bit");
            };
            let base = head * rows * per_token;
            out.extend_from_slice(&map[&array][base..base + run.groups * g * per_token]);
        }
        out
    }

    /// The protected plane of head `head` (only a prefill run has one).
    fn kept(
        &self,
        head: usize,
        protected: usize,
        d: usize,
        g: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        if protected == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let (codes, params) = self
            .kept
            .first()
            .ok_or_else(|| VidkvError::InvalidConfig("no protected plane".into()))?;
        let groups = protected.div_ceil(g);
        let wpg = TwoBitPlane::words_per_group(g);
        let per_head_codes = d * groups * wpg;
        let per_head_params = d * groups;
        Ok((
            codes[head * per_head_codes..(head + 1) * per_head_codes].to_vec(),
            params[head * per_head_params..(head + 1) * per_head_params].to_vec(),
        ))
    }
}
