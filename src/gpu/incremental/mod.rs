//! The GPU side of a growing [`crate::KvCache`]: its exact f16 stores, its f32 window, and
//! the quantization of whole window groups into preallocated chunk planes.
//!
//! Everything here records kernels or copies into a [`Batch`]; the cache module only calls
//! these functions with its state, so a kernel change stops inside `gpu/`. The layouts:
//! - `ExactStore`: `[kv_heads][capacity][head_dim/2]` f16 pairs (sinks, window, fp16
//!   chunks); `capacity` is a multiple of `ROW_ALIGN` so every head starts aligned.
//! - `F32Rows`: `[kv_heads][capacity][head_dim]` f32, the window's originals.
//! - chunk planes (`PackedPlanes`): per KV head, room for [`CHUNK_GROUPS`] groups of each
//!   plane array (`ChunkWords` words, `chunk.rs`), filled group by group in place by
//!   `GroupFlush` (`flush.rs`).
//! - what a layer fixes at its first flush (`states.rs`): the key channel split and, for the
//!   rotated schemes, `LayerStates` (kernel table and every head's state, fitted on the GPU
//!   and shared by every chunk); chunk planes of per-token
//!   codes, scale bytes and (values) group means, written by
//!   `gpu::rotated::ResidentGroups`, or of group records (codes, scale bytes, width
//!   tables) across tokens, written by `gpu::rotated_groups::ResidentGroupRecords`.

mod chunk;
mod flush;
mod states;

pub(crate) use chunk::ChunkWords;
pub(crate) use flush::GroupFlush;
pub(crate) use states::{freeze_split, LayerStates};

use super::attention::{SegmentData, SegmentRef};
use super::batch::Batch;
use super::context::GpuContext;
use super::grouped::{PackExact, PackHeads};
use crate::error::Result;
use crate::packed::planes::pack_f16_slice;

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

/// Rewrites rows `rows` of every head of the f16 `store` from the f32 `window`: one
/// dispatch for the keys and one for the values, whatever the number of heads.
pub(crate) fn repack_window(
    ctx: &GpuContext,
    window: &F32Rows,
    store: &ExactStore,
    heads: Heads,
    rows: std::ops::Range<usize>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
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
            output,
        }
        .record(&mut batch);
    }
    batch.submit()
}
