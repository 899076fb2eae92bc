//! The GPU side of a growing [`crate::KvCache`]: its exact f16 stores, its f32 window, and
//! the quantization of whole window groups into preallocated chunk planes.
//!
//! Everything here records kernels or copies into a [`Batch`]; the cache module only calls
//! these functions with its state, so a kernel change stops inside `gpu/`. The layouts:
//! - `ExactStore`: `[kv_heads][capacity][head_dim/2]` f16 pairs (sinks, window, fp16
//!   chunks); `capacity` is a multiple of `ROW_ALIGN` so every head starts aligned.
//! - `F32Rows`: `[kv_heads][capacity][head_dim]` f32, the window's originals.
//! - chunk planes (`PackedPlanes`): per KV head, room for [`CHUNK_GROUPS`] groups of each
//!   plane array (`ChunkWords` words), filled group by group in place.
//! - rotated schemes: the layer's `LayerStates` (kernel table and every head's state, fitted
//!   on the GPU at the first flush and shared by every chunk); chunk planes of per-token
//!   codes, scale bytes and (values) group means, written by
//!   [`super::rotated::ResidentGroups`], or of group records (codes, scale bytes, width
//!   tables) across tokens, written by [`super::rotated_groups::ResidentGroupRecords`].

use super::attention::{
    GroupPlanes, KeyLayout, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, RotatedPlanes,
    RotatedStates, SegmentData, SegmentRef,
};
use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::quantize::{
    channel_split_on_gpu, record_pack_exact, record_signs, record_ternary, record_two_bit_channels,
    record_two_bit_tokens, twiddles, GpuSplit, GroupWindow, NormalChannels,
};
use super::rotated::{
    group_kernel_table, kernel_table, record_fit_state, ResidentGroups, RotatedShape,
};
use super::rotated_groups::{GroupShape, ResidentGroupRecords};
use crate::config::{Grouping, KeyScheme, QuantConfig, SplitGranularity, ValueScheme};
use crate::error::Result;
use crate::packed::planes::{pack_f16_slice, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::rotated::{GroupMeans, RotatedRows, RotatedState, STATE_GROUPS};
use crate::packed::rotated_groups::group_budget;
use crate::reference::split::outlier_count;

/// Groups of quantized storage per chunk (8,192 tokens at the default group size).
pub const CHUNK_GROUPS: usize = 256;

/// Exact stores hold a multiple of this many rows per head, so that every head's slice
/// starts at a storage-offset-aligned byte offset.
pub(crate) const ROW_ALIGN: usize = 64;

/// KV heads and head dimension of a cache layer.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub count: usize,
    pub dim: usize,
}

/// Exact f16 rows of every KV head: `[kv_heads][capacity][head_dim/2]` u32 pairs.
pub(crate) struct ExactStore {
    pub keys: wgpu::Buffer,
    pub values: wgpu::Buffer,
    pub capacity: usize,
}

impl ExactStore {
    pub fn new(ctx: &GpuContext, heads: Heads, capacity: usize) -> Result<Self> {
        let words = heads.count * capacity * heads.dim / 2;
        Ok(ExactStore {
            keys: ctx.create_zeroed("exact keys", words)?,
            values: ctx.create_zeroed("exact values", words)?,
            capacity,
        })
    }

    /// Writes f16 words (`[rows][d/2]` per head, from `keys` and `values`) of head `head`
    /// from row `row` on.
    pub fn write_words(
        &self,
        ctx: &GpuContext,
        (head, row, d): (usize, usize, usize),
        keys: &[u32],
        values: &[u32],
    ) {
        let offset = ((head * self.capacity + row) * d / 2 * 4) as u64;
        ctx.write(&self.keys, offset, keys);
        ctx.write(&self.values, offset, values);
    }

    /// The first `rows` rows of every head, as f16 words, read back (keys or values).
    pub fn read_heads(
        &self,
        ctx: &GpuContext,
        heads: Heads,
        rows: usize,
        keys: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let buffer = if keys { &self.keys } else { &self.values };
        let per_head = self.capacity * heads.dim / 2;
        let all = ctx.read_words(buffer, heads.count * per_head)?;
        Ok((0..heads.count)
            .map(|head| all[head * per_head..][..rows * heads.dim / 2].to_vec())
            .collect())
    }

    /// The store as an attention segment of `len` tokens from position `start`.
    pub fn segment(&self, start: usize, len: usize) -> SegmentRef<'_> {
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
pub(crate) struct F32Rows {
    pub keys: wgpu::Buffer,
    pub values: wgpu::Buffer,
    pub capacity: usize,
}

/// Rows `[kv_heads, n, head_dim]` of f32 keys or values, on the host or on the GPU.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    Host(&'a [f32]),
    Gpu(&'a wgpu::Buffer),
}

/// Rows `from .. from + count` of key and value sources that hold `n` rows per head.
#[derive(Clone, Copy)]
pub(crate) struct RowSpan<'a> {
    pub k: Rows<'a>,
    pub v: Rows<'a>,
    pub n: usize,
    pub from: usize,
    pub count: usize,
}

impl RowSpan<'_> {
    /// Copies this span's rows of `source` (its `k` or `v`) for head `head` to `to` at byte
    /// `at`: host rows are written, GPU rows copied by the batch.
    fn copy_head(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        source: Rows<'_>,
        d: usize,
        head: usize,
        (to, at): (&wgpu::Buffer, u64),
    ) {
        let first = head * self.n + self.from;
        match source {
            Rows::Host(data) => ctx.write(to, at, &data[first * d..(first + self.count) * d]),
            Rows::Gpu(buffer) => batch.copy(
                buffer,
                (first * d * 4) as u64,
                to,
                at,
                (self.count * d * 4) as u64,
            ),
        }
    }
}

/// Copies `span`'s key and value rows of every head into `window` after its first
/// `at_row` rows (the window must hold `at_row + span.count` rows).
pub(crate) fn copy_into_window(
    ctx: &GpuContext,
    window: &F32Rows,
    heads: Heads,
    at_row: usize,
    span: RowSpan<'_>,
) -> Result<()> {
    let d = heads.dim;
    let mut batch = ctx.batch();
    for head in 0..heads.count {
        let at = ((head * window.capacity + at_row) * d * 4) as u64;
        span.copy_head(ctx, &mut batch, span.k, d, head, (&window.keys, at));
        span.copy_head(ctx, &mut batch, span.v, d, head, (&window.values, at));
    }
    batch.submit()
}

/// Stores `span`'s rows of head `head` as f16 in `store` from row `row` (host rows are
/// converted on the host, GPU rows by the exact-row packing kernel).
pub(crate) fn write_exact(
    ctx: &GpuContext,
    store: &ExactStore,
    heads: Heads,
    (head, row): (usize, usize),
    span: RowSpan<'_>,
) -> Result<()> {
    let d = heads.dim;
    if let (Rows::Host(k), Rows::Host(v)) = (span.k, span.v) {
        let first = head * span.n + span.from;
        let rows = first * d..(first + span.count) * d;
        store.write_words(
            ctx,
            (head, row, d),
            &pack_f16_slice(&k[rows.clone()]),
            &pack_f16_slice(&v[rows]),
        );
        return Ok(());
    }
    let words = span.count * d / 2;
    let at = ((head * store.capacity + row) * d / 2 * 4) as u64;
    for (source, target) in [(span.k, &store.keys), (span.v, &store.values)] {
        let staging = ctx.buffer("cache exact staging", (span.count * d * 4) as u64)?;
        let packed = ctx.buffer("cache exact packed", (words * 4) as u64)?;
        let mut batch = ctx.batch();
        span.copy_head(ctx, &mut batch, source, d, head, (&staging, 0));
        record_pack_exact(
            &mut batch,
            d,
            span.count,
            (&*staging).into(),
            (&*packed).into(),
        );
        batch.copy(&packed, 0, target, at, (words * 4) as u64);
        batch.submit()?;
    }
    Ok(())
}

/// A window of `capacity` rows per head holding the first `used` rows of `old`.
pub(crate) fn grow_window(
    ctx: &GpuContext,
    old: Option<&F32Rows>,
    used: usize,
    heads: Heads,
    capacity: usize,
) -> Result<F32Rows> {
    let (h, d) = (heads.count, heads.dim);
    let grown = F32Rows {
        keys: ctx.create_zeroed("window keys", h * capacity * d)?,
        values: ctx.create_zeroed("window values", h * capacity * d)?,
        capacity,
    };
    if let Some(old) = old {
        let mut batch = ctx.batch();
        for head in 0..h {
            let size = (used * d * 4) as u64;
            let (from, to) = (
                (head * old.capacity * d * 4) as u64,
                (head * capacity * d * 4) as u64,
            );
            batch.copy(&old.keys, from, &grown.keys, to, size);
            batch.copy(&old.values, from, &grown.values, to, size);
        }
        batch.submit()?;
    }
    Ok(grown)
}

/// Drops the first `rows` of the `used` rows of every head of `window`, moving the rest to
/// the front.
pub(crate) fn shift_window(
    ctx: &GpuContext,
    window: &F32Rows,
    heads: Heads,
    used: usize,
    rows: usize,
) -> Result<()> {
    let (h, d) = (heads.count, heads.dim);
    let keep = used - rows;
    if keep == 0 {
        return Ok(());
    }
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
    batch.submit()
}

/// Rewrites the first `rows` rows of every head of the f16 `store` from the f32 `window`.
pub(crate) fn repack_window(
    ctx: &GpuContext,
    window: &F32Rows,
    store: &ExactStore,
    heads: Heads,
    rows: usize,
) -> Result<()> {
    let (h, d) = (heads.count, heads.dim);
    if rows == 0 {
        return Ok(());
    }
    let words = rows * d / 2;
    let mut batch = ctx.batch();
    for head in 0..h {
        let input_at = (head * window.capacity * d * 4) as u64;
        let output_at = (head * store.capacity * d / 2 * 4) as u64;
        for (input, output) in [(&window.keys, &store.keys), (&window.values, &store.values)] {
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

/// Words per KV head of each plane array of a chunk (rotated schemes: codes in
/// `key_codes`/`value_codes`, scale bytes in `key_params`/`value_params`).
pub(crate) struct ChunkWords {
    key_codes: usize,
    key_params: usize,
    sign_codes: usize,
    sign_scales: usize,
    value_codes: usize,
    value_params: usize,
    /// Rotated values with group means: mean codes and f16 steps.
    mean_codes: usize,
    mean_steps: usize,
    /// Codes across tokens: the width tables of keys and values.
    key_widths: usize,
    value_widths: usize,
}

impl ChunkWords {
    /// The plane sizes of a [`CHUNK_GROUPS`]-group chunk under `config` at head dim `d`.
    pub fn of(config: &QuantConfig, d: usize) -> Self {
        let g = config.group_size;
        let c = CHUNK_GROUPS;
        let rows = c * g;
        let k = match config.keys {
            KeyScheme::Mixed { outlier_ratio, .. } => outlier_count(d, outlier_ratio),
            _ => d,
        };
        let n = d - k;
        let group_codes = |bits: f32| c * group_budget(bits, g) * d / 32;
        let widths = c * (3 * g).div_ceil(32);
        let (key_codes, key_params) = match config.keys {
            KeyScheme::Rotated { bits } => (rows * RotatedRows::words_per_token(bits, d), rows / 4),
            KeyScheme::RotatedGroups { bits } => (group_codes(bits), rows / 4),
            _ => (k * c * TwoBitPlane::words_per_group(g), k * c),
        };
        let (value_codes, value_params) = match config.values {
            ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            } => (d * c * TwoBitPlane::words_per_group(g), d * c),
            ValueScheme::TwoBit {
                grouping: Grouping::PerToken,
            } => (
                rows * d.div_ceil(g) * TwoBitPlane::words_per_group(g),
                rows * d.div_ceil(g),
            ),
            ValueScheme::Rotated { bits, .. } => {
                (rows * RotatedRows::words_per_token(bits, d), rows / 4)
            }
            ValueScheme::RotatedGroups { bits } => (group_codes(bits), rows / 4),
            _ => (
                d.div_ceil(5) * c * TernaryPlane::words_per_record(g),
                d.div_ceil(2) * c,
            ),
        };
        ChunkWords {
            key_codes,
            key_params,
            sign_codes: n * c * SignPlane::words_per_group(g),
            sign_scales: n.div_ceil(2) * c,
            value_codes,
            value_params,
            mean_codes: c * GroupMeans::words_per_group(d),
            mean_steps: c.div_ceil(2),
            key_widths: widths,
            value_widths: widths,
        }
    }

    /// Zeroed planes for one chunk of every head (rotated schemes share the layer's
    /// `states`).
    pub fn new_planes(
        &self,
        ctx: &GpuContext,
        config: &QuantConfig,
        heads: Heads,
        states: &LayerStates,
    ) -> Result<PackedPlanes> {
        let (h, d, g) = (heads.count, heads.dim, config.group_size);
        let zeroed = |label, per_head: usize| ctx.create_zeroed(label, h * per_head);
        let rotated = |states: &Option<RotatedStates>,
                       (codes, scales): (usize, usize),
                       means: bool|
         -> Result<RotatedPlanes> {
            Ok(RotatedPlanes {
                states: states
                    .clone()
                    .expect("the states are fixed before the first chunk"),
                tokens: CHUNK_GROUPS * g,
                groups: if means { CHUNK_GROUPS } else { 0 },
                codes: zeroed("rotated codes", codes)?,
                scales: zeroed("rotated scales", scales)?,
                means: if means {
                    Some((
                        zeroed("group mean codes", self.mean_codes)?,
                        zeroed("group mean steps", self.mean_steps)?,
                    ))
                } else {
                    None
                },
            })
        };
        let across = |states: &Option<RotatedStates>,
                      bits: f32,
                      (codes, scales, widths): (usize, usize, usize)|
         -> Result<GroupPlanes> {
            Ok(GroupPlanes {
                states: states
                    .clone()
                    .expect("the states are fixed before the first chunk"),
                group_size: g,
                groups: CHUNK_GROUPS,
                budget: group_budget(bits, g),
                codes: zeroed("group codes", codes)?,
                scales: zeroed("group scales", scales)?,
                widths: zeroed("group widths", widths)?,
            })
        };
        let keys = match config.keys {
            KeyScheme::RotatedGroups { bits } => PackedKeyPlanes::RotatedGroups(across(
                &states.keys,
                bits,
                (self.key_codes, self.key_params, self.key_widths),
            )?),
            KeyScheme::Rotated { .. } => PackedKeyPlanes::Rotated(rotated(
                &states.keys,
                (self.key_codes, self.key_params),
                false,
            )?),
            _ => PackedKeyPlanes::Packed {
                codes: zeroed("key codes", self.key_codes)?,
                scale_min: zeroed("key params", self.key_params)?,
                sign_codes: zeroed("key sign codes", self.sign_codes)?,
                sign_scales: zeroed("key sign scales", self.sign_scales)?,
            },
        };
        let values = match config.values {
            ValueScheme::RotatedGroups { bits } => PackedValuePlanes::RotatedGroups(across(
                &states.values,
                bits,
                (self.value_codes, self.value_params, self.value_widths),
            )?),
            ValueScheme::Rotated { group_means, .. } => PackedValuePlanes::Rotated(rotated(
                &states.values,
                (self.value_codes, self.value_params),
                group_means,
            )?),
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
                codes: zeroed("value codes", self.value_codes)?,
                scale_min: zeroed("value params", self.value_params)?,
            },
            _ => PackedValuePlanes::Ternary {
                groups: CHUNK_GROUPS,
                kept_groups: 0,
                plain: CHUNK_GROUPS * g,
                stp: false,
                codes: zeroed("value codes", self.value_codes)?,
                scales: zeroed("value scales", self.value_params)?,
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
}

/// A layer's rotated key and value states (rotated per-token schemes only), fixed at its
/// first flush and shared by every chunk.
#[derive(Clone, Default)]
pub(crate) struct LayerStates {
    pub keys: Option<RotatedStates>,
    pub values: Option<RotatedStates>,
}

impl LayerStates {
    /// The states of `config`'s rotated schemes, each head's fitted on the GPU to the first
    /// [`STATE_GROUPS`] groups of the first `tokens` rows of `window` (the first flush), as
    /// [`crate::packed::rotated::head_state`] fits them on the CPU. Nothing is read back.
    pub fn fit(
        ctx: &GpuContext,
        config: &QuantConfig,
        window: &F32Rows,
        heads: Heads,
        tokens: usize,
    ) -> Result<Self> {
        // `bits` 0: codes across tokens, whose kernels read the table of every width.
        let fit = |keys: bool, bits: u8| -> Result<RotatedStates> {
            let (h, d) = (heads.count, heads.dim);
            let shape = RotatedShape {
                head_dim: d,
                group_size: config.group_size,
                bits: bits.max(1),
            };
            let n = (STATE_GROUPS * config.group_size).min(tokens);
            let words = RotatedState::words(d);
            let table = if bits == 0 {
                ctx.create_storage("rotated group table", &group_kernel_table())?
            } else {
                ctx.create_storage("rotated table", &kernel_table(bits))?
            };
            let states = ctx.create_zeroed("rotated states", h * words)?;
            let source = if keys { &window.keys } else { &window.values };
            for head in 0..h {
                let rows = ctx.buffer("state rows", (n * d * 4) as u64)?;
                let fitted = ctx.buffer("fitted state", (words * 4) as u64)?;
                let mut batch = ctx.batch();
                let at = (head * window.capacity * d * 4) as u64;
                batch.copy(source, at, &rows, 0, (n * d * 4) as u64);
                record_fit_state(ctx, &mut batch, shape, &table, (&rows, n), &fitted)?;
                let bytes = (words * 4) as u64;
                batch.copy(&fitted, 0, &states, head as u64 * bytes, bytes);
                batch.submit()?;
            }
            Ok(RotatedStates {
                bits,
                table,
                states,
            })
        };
        Ok(LayerStates {
            keys: match config.keys {
                KeyScheme::Rotated { bits } => Some(fit(true, bits)?),
                KeyScheme::RotatedGroups { .. } => Some(fit(true, 0)?),
                _ => None,
            },
            values: match config.values {
                ValueScheme::Rotated { bits, .. } => Some(fit(false, bits)?),
                ValueScheme::RotatedGroups { .. } => Some(fit(false, 0)?),
                _ => None,
            },
        })
    }

    /// The states a stored run's planes carry (a loaded or converted cache).
    pub fn of_planes(planes: &PackedPlanes) -> Self {
        LayerStates {
            keys: match &planes.keys {
                PackedKeyPlanes::Rotated(p) => Some(p.states.clone()),
                PackedKeyPlanes::RotatedGroups(p) => Some(p.states.clone()),
                PackedKeyPlanes::Packed { .. } => None,
            },
            values: match &planes.values {
                PackedValuePlanes::Rotated(p) => Some(p.states.clone()),
                PackedValuePlanes::RotatedGroups(p) => Some(p.states.clone()),
                _ => None,
            },
        }
    }
}

/// Whole window groups to quantize into a chunk: `take` groups starting at window row
/// `first_row`, written after the chunk's `filled` groups.
pub(crate) struct GroupFlush<'a> {
    pub config: &'a QuantConfig,
    pub heads: Heads,
    pub window: &'a F32Rows,
    pub first_row: usize,
    pub planes: &'a PackedPlanes,
    pub words: &'a ChunkWords,
    pub filled: usize,
    pub take: usize,
    pub layout: &'a KeyLayout,
    /// `[0, 1, …, head_dim)`: the channel order of value planes.
    pub identity: &'a wgpu::Buffer,
}

impl GroupFlush<'_> {
    /// Quantizes the groups of every head into the chunk planes (one submission per head).
    pub fn run(&self, ctx: &GpuContext) -> Result<()> {
        let (d, g) = (self.heads.dim, self.config.group_size);
        let bytes = (self.take * g * d * 4) as u64;
        for head in 0..self.heads.count {
            let keys = ctx.buffer("input", bytes)?;
            let values = ctx.buffer("cache value input", bytes)?;
            let at = ((head * self.window.capacity + self.first_row) * d * 4) as u64;
            let mut batch = ctx.batch();
            batch.copy(&self.window.keys, at, &keys, 0, bytes);
            batch.copy(&self.window.values, at, &values, 0, bytes);
            self.record_head(ctx, &mut batch, head, &keys, &values)?;
            batch.submit()?;
        }
        Ok(())
    }

    fn record_head(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        head: usize,
        keys_input: &wgpu::Buffer,
        values_input: &wgpu::Buffer,
    ) -> Result<()> {
        let (d, g) = (self.heads.dim, self.config.group_size);
        let (layout, words, take) = (self.layout, self.words, self.take);
        let window = GroupWindow {
            len: CHUNK_GROUPS * g,
            groups: CHUNK_GROUPS,
            group_offset: self.filled,
            group_count: take,
        };
        let range = |buffer, per_head| head_range(buffer, head, per_head);
        match &self.planes.keys {
            PackedKeyPlanes::RotatedGroups(planes) => self.record_across(
                ctx,
                batch,
                (head, keys_input),
                planes,
                [
                    range(&planes.codes, words.key_codes),
                    range(&planes.scales, words.key_params),
                    range(&planes.widths, words.key_widths),
                ],
            )?,
            PackedKeyPlanes::Rotated(planes) => self.record_rotated(
                ctx,
                batch,
                (head, keys_input),
                planes,
                [
                    range(&planes.codes, words.key_codes),
                    range(&planes.scales, words.key_params),
                ],
            )?,
            PackedKeyPlanes::Packed {
                codes,
                scale_min,
                sign_codes,
                sign_scales,
            } => {
                let channels = ctx.buffer("cache head channels", (d * 4) as u64)?;
                batch.copy(
                    &layout.order,
                    (head * d * 4) as u64,
                    &channels,
                    0,
                    (d * 4) as u64,
                );
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
            }
        }
        match (&self.planes.values, self.config.values) {
            (PackedValuePlanes::RotatedGroups(planes), ValueScheme::RotatedGroups { .. }) => self
                .record_across(
                ctx,
                batch,
                (head, values_input),
                planes,
                [
                    range(&planes.codes, words.value_codes),
                    range(&planes.scales, words.value_params),
                    range(&planes.widths, words.value_widths),
                ],
            )?,
            (PackedValuePlanes::Rotated(planes), ValueScheme::Rotated { .. }) => self
                .record_rotated(
                    ctx,
                    batch,
                    (head, values_input),
                    planes,
                    [
                        range(&planes.codes, words.value_codes),
                        range(&planes.scales, words.value_params),
                    ],
                )?,
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
                self.identity,
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
                self.identity,
                take * g,
                self.filled * g,
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

    /// Records the rotated codes of `take` groups of one head (`input` holds their rows)
    /// into `planes`' ranges `[codes, scales]` of that head, with the head's fixed state.
    fn record_rotated(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        (head, input): (usize, &wgpu::Buffer),
        planes: &RotatedPlanes,
        [codes, scales]: [Bound<'_>; 2],
    ) -> Result<()> {
        let d = self.heads.dim;
        let state = head_state(ctx, batch, &planes.states.states, (head, d))?;
        let means = planes.means.as_ref().map(|(mean_codes, steps)| {
            [
                head_range(mean_codes, head, self.words.mean_codes),
                head_range(steps, head, self.words.mean_steps),
            ]
        });
        ResidentGroups {
            shape: RotatedShape {
                head_dim: d,
                group_size: self.config.group_size,
                bits: planes.states.bits,
            },
            table: &planes.states.table,
            state: &state,
            rows: input,
            tokens: self.take * self.config.group_size,
            first_group: self.filled,
            plane_groups: CHUNK_GROUPS,
            codes,
            scales,
            means,
        }
        .record(ctx, batch)
    }

    /// Records the group records of `take` groups of one head (`input` holds their rows) into
    /// `planes`' ranges `[codes, scales, widths]` of that head, with the head's fixed state.
    fn record_across(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        (head, input): (usize, &wgpu::Buffer),
        planes: &GroupPlanes,
        records: [Bound<'_>; 3],
    ) -> Result<()> {
        let d = self.heads.dim;
        let state = head_state(ctx, batch, &planes.states.states, (head, d))?;
        ResidentGroupRecords {
            shape: GroupShape {
                head_dim: d,
                group_size: self.config.group_size,
                budget: planes.budget,
            },
            table: &planes.states.table,
            state: &state,
            rows: input,
            tokens: self.take * self.config.group_size,
            first_group: self.filled,
            records,
        }
        .record(ctx, batch)
    }
}

/// The head's state, copied out of the layer's states (`[kv_heads][words]`) for a kernel
/// that binds one head's.
fn head_state(
    ctx: &GpuContext,
    batch: &mut Batch<'_>,
    states: &wgpu::Buffer,
    (head, d): (usize, usize),
) -> Result<std::sync::Arc<wgpu::Buffer>> {
    let bytes = (RotatedState::words(d) * 4) as u64;
    let state = ctx.buffer("rotated head state", bytes)?;
    batch.copy(states, head as u64 * bytes, &state, 0, bytes);
    Ok(state)
}

/// Head `head`'s range of a plane array that holds `per_head` words per KV head.
fn head_range(buffer: &wgpu::Buffer, head: usize, per_head: usize) -> Bound<'_> {
    let bytes = (per_head * 4) as u64;
    Bound::range(buffer, head as u64 * bytes, bytes.max(4))
}

/// The layer's key channel split from the first `tokens` rows of `window` (spec §2.5): the
/// identity layout for presets without mixed keys.
pub(crate) fn freeze_split(
    ctx: &GpuContext,
    config: &QuantConfig,
    window: &F32Rows,
    heads: Heads,
    tokens: usize,
) -> Result<KeyLayout> {
    let (h, d) = (heads.count, heads.dim);
    let KeyScheme::Mixed {
        outlier_ratio,
        fft,
        split,
    } = config.keys
    else {
        return KeyLayout::identity(ctx, h, d);
    };
    let k = outlier_count(d, outlier_ratio);
    let order = ctx.create_zeroed("channel order", h * d)?;
    let rows = |head: usize| {
        (
            &window.keys,
            (head * window.capacity * d * 4) as u64,
            tokens,
        )
    };
    let copy = |split: &GpuSplit, head: usize| -> Result<()> {
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
        rotated: None,
    })
}
