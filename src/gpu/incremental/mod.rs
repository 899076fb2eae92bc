//! The GPU side of a growing [`crate::KvCache`]: its exact f16 stores, its f32 window, the
//! quantization of whole window groups into chunk planes, and the growth of both.
//!
//! Everything here records kernels or copies into a [`Batch`]; the cache module only calls
//! these functions with its state, so a kernel change stops inside `gpu/`. The layouts:
//! - `ExactStore`: `[kv_heads][capacity][head_dim/2]` f16 pairs (a quantized layer's sinks
//!   and window in one store, the window from an aligned row after the sinks; an fp16
//!   layer's tokens); `capacity` is a multiple of `ROW_ALIGN` so every head starts aligned.
//! - `F32Rows`: `[kv_heads][capacity][head_dim]` f32, the window's originals.
//! - chunk planes (`PackedPlanes`): per KV head, room for `capacity` groups of each plane
//!   array (`ChunkWords` words, `chunk.rs`), filled group by group in place by
//!   `GroupFlush` (`flush.rs`).
//! - growth (`Growth`): a full chunk's planes are re-strided into larger ones
//!   (`grow_planes`: every plane row's filled words copied on the GPU, nothing
//!   re-quantized), by a quarter and at least [`CHUNK_GROUPS`] groups, and an fp16 store's
//!   rows likewise (`ExactStore::grown`, at least `EXACT_MIN_STEP` rows), so that a layer's
//!   history stays one segment (one attention dispatch) until an array would pass the
//!   binding limit.
//! - what a layer fixes at its first flush (`states.rs`): the key channel split and, for the
//!   rotated schemes, `LayerStates` (kernel table and every head's state, fitted on the GPU
//!   and shared by every chunk); chunk planes of per-token
//!   codes, scale bytes and (values) group means, written by
//!   `gpu::rotated::ResidentGroups`, or of group records (codes, scale bytes, width
//!   tables) across tokens, written by `gpu::rotated_groups::ResidentGroupRecords`.

mod chunk;
mod flush;
mod states;

pub(crate) use chunk::{grow_planes, ChunkWords};
pub(crate) use flush::GroupFlush;
pub(crate) use states::{freeze_split, LayerStates};

use super::attention::{SegmentData, SegmentRef};
use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::grouped::{PackExact, PackHeads};
use crate::error::Result;
use crate::packed::planes::pack_f16_slice;

/// The least step, in groups, by which a cache's quantized history grows (8,192 tokens at
/// the default group size); a chunk's capacity is a multiple of it.
pub const CHUNK_GROUPS: usize = 256;

/// The least step, in rows, by which an fp16 store grows (its rows need no alignment
/// beyond [`ROW_ALIGN`], so it wastes at most a quarter, or this many rows).
pub(crate) const EXACT_MIN_STEP: usize = 1024;

/// How a store grows: by a quarter of its capacity, at least `min_step` units, to a
/// multiple of `align` units (chunk groups, or exact rows).
#[derive(Clone, Copy)]
pub(crate) struct Growth {
    pub min_step: usize,
    pub align: usize,
}

impl Growth {
    /// A chunk's planes: by at least [`CHUNK_GROUPS`] groups, to a multiple of it (so that
    /// every head's range of every array stays storage-offset aligned).
    pub const CHUNK: Growth = Growth {
        min_step: CHUNK_GROUPS,
        align: CHUNK_GROUPS,
    };

    /// An fp16 store: by at least [`EXACT_MIN_STEP`] rows, to a multiple of [`ROW_ALIGN`]
    /// rows.
    pub const EXACT: Growth = Growth {
        min_step: EXACT_MIN_STEP,
        align: ROW_ALIGN,
    };

    /// The capacity a store of `capacity` units (0 for a new store) grows to so that
    /// `needed` more units fit, no larger than `fits` allows (it says whether a capacity
    /// keeps every array within the binding limit). `None` when no larger capacity fits:
    /// the history then continues in a new store.
    pub fn capacity(
        self,
        capacity: usize,
        needed: usize,
        fits: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let step = (capacity / 4).max(self.min_step).max(needed);
        let mut to = (capacity + step).next_multiple_of(self.align);
        while to > capacity && !fits(to) {
            to -= self.align;
        }
        (to > capacity).then_some(to)
    }

    /// The capacity of a new store for `needed` units: [`Growth::capacity`] from nothing,
    /// or the least step where not even one unit fits (its allocation then names the
    /// limit).
    pub fn initial(self, needed: usize, fits: impl Fn(usize) -> bool) -> usize {
        self.capacity(0, needed, fits).unwrap_or(self.min_step)
    }
}

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

    /// A store of `capacity` rows per head holding this one's first `used` rows (copied on
    /// the GPU in one submission; the old store is the caller's to drop).
    pub fn grown(
        &self,
        ctx: &GpuContext,
        heads: Heads,
        used: usize,
        capacity: usize,
    ) -> Result<Self> {
        let grown = ExactStore::new(ctx, heads, capacity)?;
        let rows = HeadRows {
            heads: heads.count,
            rows: used,
            row_bytes: heads.dim / 2 * 4,
        };
        let mut batch = ctx.batch();
        rows.copy(
            &mut batch,
            (&self.keys, self.capacity),
            (&grown.keys, capacity),
        );
        rows.copy(
            &mut batch,
            (&self.values, self.capacity),
            (&grown.values, capacity),
        );
        batch.submit()?;
        // Cached bind groups may hold the old store alive.
        ctx.forget_bind_groups();
        Ok(grown)
    }

    /// A new store for at least one of `needed` rows per head, sized by
    /// [`Growth::EXACT`] within the context's binding limit.
    pub fn sized_for(ctx: &GpuContext, heads: Heads, needed: usize) -> Result<Self> {
        Self::new(
            ctx,
            heads,
            Growth::EXACT.initial(needed, Self::fits(ctx, heads)),
        )
    }

    /// The rows per head this full store grows to for `needed` more ([`Growth::EXACT`]),
    /// or `None` at the binding limit (the rows then go to a new store).
    pub fn growth(&self, ctx: &GpuContext, heads: Heads, needed: usize) -> Option<usize> {
        Growth::EXACT.capacity(self.capacity, needed, Self::fits(ctx, heads))
    }

    /// Whether a store of a given number of rows per head fits the binding limit.
    fn fits(ctx: &GpuContext, heads: Heads) -> impl Fn(usize) -> bool {
        let max = ctx.max_binding_bytes();
        move |rows| Self::head_bytes(heads, rows) * heads.count as u64 <= max
    }

    /// Bytes of `rows` rows of one head.
    fn head_bytes(heads: Heads, rows: usize) -> u64 {
        (rows * heads.dim / 2 * 4) as u64
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

    /// Rows `rows` of every head, as f16 words, read back (keys or values).
    pub fn read_heads(
        &self,
        ctx: &GpuContext,
        heads: Heads,
        rows: std::ops::Range<usize>,
        keys: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let buffer = if keys { &self.keys } else { &self.values };
        let (per_head, per_row) = (self.capacity * heads.dim / 2, heads.dim / 2);
        let all = ctx.read_words(buffer, heads.count * per_head)?;
        Ok((0..heads.count)
            .map(|head| all[head * per_head..][rows.start * per_row..rows.end * per_row].to_vec())
            .collect())
    }

    /// Rows `first_row .. first_row + len` of the store as an attention segment of
    /// positions `start .. start + len`.
    pub fn segment(&self, first_row: usize, start: usize, len: usize) -> SegmentRef<'_> {
        SegmentRef {
            start,
            len,
            data: SegmentData::Exact {
                keys: &self.keys,
                values: &self.values,
                rows_per_head: self.capacity,
                first_row,
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
        PackExact {
            width: d,
            rows: span.count,
            input: (&*staging).into(),
            output: (&*packed).into(),
        }
        .record(&mut batch);
        batch.copy(&packed, 0, target, at, (words * 4) as u64);
        batch.submit()?;
    }
    Ok(())
}

/// A window of `capacity` rows per head (larger or smaller than `old`'s) holding the first
/// `used` rows of `old` (`used` ≤ `capacity`).
pub(crate) fn resized_window(
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
        for (from, to) in [(&old.keys, &grown.keys), (&old.values, &grown.values)] {
            let rows = HeadRows {
                heads: h,
                rows: used,
                row_bytes: d * 4,
            };
            rows.copy(&mut batch, (from, old.capacity), (to, capacity));
        }
        batch.submit()?;
    }
    Ok(grown)
}

/// The first `rows` rows of every one of `heads` heads of a `[heads][capacity][row]` array.
struct HeadRows {
    heads: usize,
    rows: usize,
    row_bytes: usize,
}

impl HeadRows {
    /// Copies these rows from `from` (`from_rows` rows per head) to `to` (`to_rows` per
    /// head).
    fn copy(
        &self,
        batch: &mut Batch<'_>,
        (from, from_rows): (&wgpu::Buffer, usize),
        (to, to_rows): (&wgpu::Buffer, usize),
    ) {
        for head in 0..self.heads {
            batch.copy(
                from,
                (head * from_rows * self.row_bytes) as u64,
                to,
                (head * to_rows * self.row_bytes) as u64,
                (self.rows * self.row_bytes) as u64,
            );
        }
    }
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

/// Rewrites rows `rows` of every head of the f16 `store` from the f32 `window`, window row
/// r into store row `at_row` + r (`at_row` a multiple of [`ROW_ALIGN`]): one dispatch for
/// the keys and one for the values, whatever the number of heads.
pub(crate) fn repack_window(
    ctx: &GpuContext,
    window: &F32Rows,
    (store, at_row): (&ExactStore, usize),
    heads: Heads,
    rows: std::ops::Range<usize>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let offset = ExactStore::head_bytes(heads, at_row);
    let mut batch = ctx.batch();
    for (input, output) in [(&window.keys, &store.keys), (&window.values, &store.values)] {
        PackHeads {
            width: heads.dim,
            kv_heads: heads.count,
            first: rows.start,
            rows: rows.len(),
            input_rows: window.capacity,
            output_rows: store.capacity,
            input,
            output: Bound::range(output, offset, output.size() - offset),
        }
        .record(&mut batch);
    }
    batch.submit()
}
