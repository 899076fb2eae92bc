//! Attention straight from the packed cache on the GPU (and the f16 baseline with the same
//! structure): `softmax(q·Kᵀ/√d + mask)·V` for M query rows per query head, GQA, over the
//! exact sinks, the quantized history and the exact recent window, with no dense K̂ or V̂.
//!
//! A call (`call.rs`: sized once, then recorded tile by tile) runs, per tile of query rows:
//! 1. the query pass, where a segment reads its output: `attention_queries` (scale by 1/√d
//!    and bring each row into plane order: outlier channels, then Mᵀq over the DFT-domain
//!    normal channels) for the VidKV paper's format, or for rotated keys
//!    `attention_rotated::rotate_queries` (q/√d, its rotation and its centre term q·m);
//!    the kernels over exact rows, 2-bit codes and codes across tokens read the call's
//!    query and scale (and rotate) it themselves, so a call of those only has no such pass;
//! 2. per segment (sinks, quantized history, tail), one dispatch of the split skeleton,
//!    `attention_split` with that format's row decoder (`split.rs`; per split of the
//!    context's [`GpuContext::split_tokens`] and block of 8 rows of a KV head: scores,
//!    online softmax and Σ p·v, each value row decoded once for the block): exact (f16)
//!    rows; 2-bit keys per channel with values per token or channel (`kivi2`,
//!    `k2v2-channel`), carrying the exact sinks and window as splits of their own; the
//!    paper's format (`vidkv-tuned`, `vidkv-paper`) and rotated per-token codes (`rotated`,
//!    `rotated-flat`, `rotated-k3v1`: the split's sums rotated back at its end) after the
//!    query pass, their exact segments in one exact dispatch. A segment whose keys and
//!    values are both coded across tokens (the default preset) goes through the fused
//!    `attention_split_groups` (the same skeleton with that format's row decoder; a
//!    subgroup variant sums the row dots where the adapter allows), which rotates its rows
//!    itself and takes up to two exact segments in one pair of buffers (the sinks and the
//!    window) as splits of its own (`rotated_groups::exact_riders`). The rotated kernels
//!    read the key and value states from one uniform (`rotated_groups::SharedStates`), so
//!    each binds at most 10 storage buffers (Chrome's limit; the partial sums and (m, l)
//!    pairs, one buffer for every kernel of the call, are one binding of the fused kernel).
//!    A segment with STP refinements (rotated values) keeps its fused or split dispatch,
//!    which then also writes its masked logits into the scores, and `refinement_sums`
//!    follows it (Σ p·r̂ of the split's protected tokens, each weight e^(s − m) against
//!    the (m, l) the dispatch left for its split: no softmax pass). A paper-format segment with STP
//!    positions, or every segment for [`Kernels::ThreePass`], takes the separate passes:
//!    `attention_scores_*` or `attention_rotated*` (q·k for the segment's tokens),
//!    `attention_softmax` and `attention_values_*` (Σ p·v per split; with STP refinements,
//!    then `refinement_sums`);
//! 3. `attention_combine`: merges all splits flash-decoding style (rescaling by
//!    e^{mₛ − max m}), which keeps long contexts (128k tokens and more) stable.
//!
//! So a default-preset, fp16, `kivi2` or `k2v2-channel` layer is two dispatches on every
//! device, a paper-format or rotated per-token layer four; STP refinements add the
//! refinement pass.
//!
//! Bytes per token read (d = 128, one KV head): f16 K+V 512; `kivi2` 192; `vidkv` ~70.

mod call;
mod layer;
mod planes;
mod rotated;
mod rotated_groups;
mod split;

pub use layer::GpuLayer;
pub(crate) use planes::{
    check_head_dim, upload_planes, KeyLayout, LayerGeometry, PackedKeyPlanes, PackedPlanes,
    PackedValuePlanes, SegmentData, SegmentRef,
};
pub(crate) use rotated::{RotatedPlanes, RotatedStates};
pub(crate) use rotated_groups::GroupPlanes;

use std::sync::Arc;

use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::shaders::{
    ATTENTION_SCORES_EXACT, ATTENTION_SCORES_PACKED, ATTENTION_VALUES_EXACT,
    ATTENTION_VALUES_TERNARY, ATTENTION_VALUES_TERNARY_SUBGROUP, ATTENTION_VALUES_TWO_BIT,
};
use crate::config::Grouping;
use crate::error::{Result, VidkvError};
use crate::tensor::check_query;

/// Tokens per split of the softmax on CPU adapters (lavapipe, SwiftShader) of more than 4
/// threads: a few long splits, since a CPU runs few workgroups at once and each split's end
/// (rotating its sums back, writing them) costs the same however long it is. `bench
/// attention` at 16k on lavapipe (2 threads): the default preset 39 ms with 4096-token
/// splits against 46 ms with 1024, at an earlier stop.
pub const CPU_SPLIT_TOKENS: usize = 4096;
/// Tokens per split on CPU adapters of at most 4 threads: still two workgroups per thread
/// for the 7B shape (4 KV heads) at 16k tokens. On lavapipe with 2 threads, 16k: the default
/// preset 19.4-20.4 ms against 21.2-21.4 with 4096-token splits, fp16 unchanged (two
/// alternating runs each).
pub const FEW_THREADS_SPLIT_TOKENS: usize = 8192;

/// Tokens per split on a CPU adapter whose host has `threads` hardware threads (the CPU
/// drivers run a worker per thread).
pub fn cpu_split_tokens(threads: usize) -> usize {
    if threads <= 4 {
        FEW_THREADS_SPLIT_TOKENS
    } else {
        CPU_SPLIT_TOKENS
    }
}
/// Tokens per split elsewhere: 512 gives the 7B shape (4 KV heads) 128 workgroups at 16k
/// tokens and 1,024 at 128k, enough to fill a GPU of about a hundred compute units (a model
/// from `../shared/docs/decode-kernel-notes.md`, not yet measured on a GPU). Both are
/// multiples of every kernel's tile (256 tokens) and of every supported group size.
pub const GPU_SPLIT_TOKENS: usize = 512;

/// Which kernels an attention call may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fast paths the context uses (subgroups, shader-f16 row loads), else the portable
    /// kernels.
    Fastest,
    /// The portable kernels only.
    Portable,
    /// The portable kernels, with every segment through the three passes that preceded
    /// the fused split kernels (scores, softmax, values): kept to benchmark against in the
    /// same run.
    ThreePass,
}

/// Attention of `q` (`[q_heads, queries, head_dim]`, f32) over `layer`, where query
/// position index m sees the positions `visible[m] = (lo, hi)`, `lo..hi`. Returns
/// `[q_heads, queries, head_dim]`. Query head h reads KV head h / (q_heads / kv_heads).
pub fn attend(
    ctx: &GpuContext,
    layer: &GpuLayer,
    q: &[f32],
    q_heads: usize,
    visible: &[(u32, u32)],
) -> Result<Vec<f32>> {
    attend_with(ctx, layer, q, q_heads, visible, Kernels::Fastest)
}

/// [`attend`] with a choice of kernels (to test or benchmark the portable path on an
/// adapter that has fast paths).
pub fn attend_with(
    ctx: &GpuContext,
    layer: &GpuLayer,
    q: &[f32],
    q_heads: usize,
    visible: &[(u32, u32)],
    kernels: Kernels,
) -> Result<Vec<f32>> {
    let call = Call {
        layer: &layer.geometry(),
        segments: &layer.segments(),
        q_heads,
        visible,
        kernels,
    };
    attend_segments(ctx, &call, q)
}

/// Attention over the segments of one layer (see [`attend`] for `q` and `visible`).
pub(crate) fn attend_segments(
    ctx: &GpuContext,
    call: &Call<'_, '_>,
    q: &[f32],
) -> Result<Vec<f32>> {
    let words = check_host_query(call, q)?;
    let _exclusive = ctx.exclusive();
    let q_buffer = ctx.upload("attention q", q)?;
    let output = ctx.output("attention output", words)?;
    call::record_call(ctx, call, &q_buffer, &output)?;
    let words = ctx.read_output(&output, "attention output", words)?;
    Ok(words.into_iter().map(f32::from_bits).collect())
}

/// [`attend_segments`] without the read-back: the query is uploaded into a buffer of its
/// own, the call recorded and submitted into a new output buffer, which is returned with
/// its word count for the caller to await ([`GpuContext::read_floats_async`]).
pub(crate) fn record_segments(
    ctx: &GpuContext,
    call: &Call<'_, '_>,
    q: &[f32],
) -> Result<(wgpu::Buffer, usize)> {
    let words = check_host_query(call, q)?;
    let q_buffer = ctx.create_storage("attention q", q)?;
    let output = ctx.create_zeroed("attention output", words)?;
    let _exclusive = ctx.exclusive();
    call::record_call(ctx, call, &q_buffer, &output)?;
    Ok((output, words))
}

/// [`check_call`] for a query from host memory, and its values ([`check_query`]); returns
/// the words of the query (and of the output).
fn check_host_query(call: &Call<'_, '_>, q: &[f32]) -> Result<usize> {
    let words = check_call(call.layer, call.q_heads, call.visible, Some(q.len()))?;
    check_query(
        "q",
        q,
        &[call.q_heads, call.visible.len(), call.layer.head_dim],
    )?;
    Ok(words)
}

/// [`attend_segments`] with the query read from `q` and the output written to `out`, both
/// GPU buffers (STORAGE usage, f32 `[q_heads, queries, head_dim]` from byte 0): nothing is
/// read back, and the query's values are not checked (they never reach the host).
pub(crate) fn attend_segments_into(
    ctx: &GpuContext,
    call: &Call<'_, '_>,
    q: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let words = check_call(call.layer, call.q_heads, call.visible, None)?;
    for (name, buffer) in [("query", q), ("output", out)] {
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE)
            || buffer.size() < (words * 4) as u64
        {
            return Err(VidkvError::ShapeMismatch {
                tensor: name.into(),
                detail: format!(
                    "the {name} buffer must be a STORAGE buffer of at least {} bytes (got {} \
                     bytes, {:?})",
                    words * 4,
                    buffer.size(),
                    buffer.usage()
                ),
            });
        }
    }
    let _exclusive = ctx.exclusive();
    call::record_call(ctx, call, q, out)
}

/// One attention call: the layer, its segments, and the queries' heads and visible ranges.
pub(crate) struct Call<'a, 'b> {
    pub layer: &'a LayerGeometry<'b>,
    pub segments: &'a [SegmentRef<'b>],
    pub q_heads: usize,
    pub visible: &'a [(u32, u32)],
    pub kernels: Kernels,
}

/// Checks the heads, the query count (`q_len` values; `None` when the query lives on the
/// GPU and its length is checked against its buffer) and the visible ranges; returns the
/// words of the query (and of the output).
fn check_call(
    layer: &LayerGeometry<'_>,
    q_heads: usize,
    visible: &[(u32, u32)],
    q_len: Option<usize>,
) -> Result<usize> {
    let d = layer.head_dim;
    let queries = visible.len();
    if q_heads == 0 || q_heads % layer.kv_heads != 0 {
        return Err(VidkvError::ShapeMismatch {
            tensor: "q".into(),
            detail: format!(
                "{q_heads} query heads are not a positive multiple of {} KV heads",
                layer.kv_heads
            ),
        });
    }
    let words = q_heads * queries * d;
    if queries == 0 || q_len.is_some_and(|n| n != words) {
        return Err(VidkvError::ShapeMismatch {
            tensor: "q".into(),
            detail: format!(
                "expected {q_heads} heads × {queries} queries × {d} = {words} values, got {}",
                q_len.map_or("a GPU buffer".to_string(), |n| n.to_string())
            ),
        });
    }
    if let Some(&(lo, hi)) = visible
        .iter()
        .find(|&&(lo, hi)| lo >= hi || hi as usize > layer.tokens)
    {
        return Err(VidkvError::InvalidConfig(format!(
            "visible range {lo}..{hi} is empty or beyond the {} tokens",
            layer.tokens
        )));
    }
    Ok(words)
}

/// The grid of a per-row kernel: `items` invocations in x for each of `rows` rows in y.
fn per_row_grid(items: usize, rows: usize) -> (u32, u32) {
    (
        items.div_ceil(super::params::WORKGROUP_SIZE as usize) as u32,
        rows as u32,
    )
}

/// The intermediate buffers of one attention call.
struct Scratch {
    /// Query rows scaled by 1/√d, in channel order.
    natural: Arc<wgpu::Buffer>,
    /// The same rows in plane order, or rotated for rotated keys; for rotated keys, the
    /// rows' dots with the keys' mean (their centre terms) follow a tile's rows from the
    /// next [`STATS_ALIGN`] boundary ([`Scratch::centre_terms`]).
    planar: Arc<wgpu::Buffer>,
    /// Bytes of one query row (f32 × head_dim).
    row_bytes: u64,
    /// The split outputs and the scores: the partial sums Σ p·v `[tile rows][splits][d]` in
    /// the first `partial_bytes`, then the (m, l) pairs `[tile rows][splits]` at `stats`
    /// (byte offset, bytes), then the separate passes' scores `[tile rows][score_stride]`
    /// (logits, then softmax weights) at `scores`. A kernel that writes more than one
    /// region through one binding (the fused kernel) binds it all; the others bind the
    /// ranges.
    partial: Arc<wgpu::Buffer>,
    partial_bytes: u64,
    stats: (u64, u64),
    scores: (u64, u64),
    /// Bound where a kernel's entry point does not read a binding.
    unused: Arc<wgpu::Buffer>,
}

/// The alignment of the (m, l) pairs in the split outputs: WebGPU's largest storage-offset
/// alignment.
const STATS_ALIGN: u64 = 256;

impl Scratch {
    /// The (m, l) pairs of the split outputs.
    fn stats(&self) -> Bound<'_> {
        Bound::range(&self.partial, self.stats.0, self.stats.1.max(8))
    }

    /// The partial sums of the split outputs.
    fn partial_sums(&self) -> Bound<'_> {
        Bound::range(&self.partial, 0, self.partial_bytes.max(4))
    }

    /// The scores of the separate passes.
    fn scores(&self) -> Bound<'_> {
        Bound::range(&self.partial, self.scores.0, self.scores.1.max(4))
    }

    /// The (m, l) pairs and the scores after them, which the split skeleton binds as one
    /// (it writes logits there for a segment with STP refinements).
    fn stats_and_scores(&self) -> Bound<'_> {
        let end = self.scores.0 + self.scores.1.max(4);
        Bound::range(&self.partial, self.stats.0, end - self.stats.0)
    }

    /// Where the scores start in the split outputs, as an f32 index (the fused kernel's
    /// `params.stp`).
    fn scores_index(&self) -> u32 {
        (self.scores.0 / 4) as u32
    }

    /// Where the scores start in [`Scratch::stats_and_scores`], as a vec2 index (the split
    /// skeleton's `params.stp`).
    fn scores_after_stats(&self) -> u32 {
        ((self.scores.0 - self.stats.0) / 8) as u32
    }

    /// Where a tile of `rows` query rows' centre terms start in `planar`: the first
    /// [`STATS_ALIGN`] boundary after the rows (`centre_term` in
    /// `attention_split_rotated_tokens.wgsl` computes the same).
    fn centre_offset(row_bytes: u64, rows: usize) -> u64 {
        (rows as u64 * row_bytes).next_multiple_of(STATS_ALIGN)
    }

    /// Bytes of `planar` for tiles of up to `rows` rows of `row_bytes`.
    fn planar_bytes(row_bytes: u64, rows: usize) -> u64 {
        Self::centre_offset(row_bytes, rows) + rows as u64 * 4
    }

    /// The rotated query rows of a tile of `rows` rows.
    fn rotated_rows(&self, rows: usize) -> Bound<'_> {
        Bound::range(&self.planar, 0, rows as u64 * self.row_bytes)
    }

    /// The centre terms of a tile of `rows` rows.
    fn centre_terms(&self, rows: usize) -> Bound<'_> {
        let offset = Self::centre_offset(self.row_bytes, rows);
        Bound::range(&self.planar, offset, (rows as u64 * 4).max(4))
    }
}

fn record_scores(
    batch: &mut super::batch::Batch<'_>,
    layer: &LayerGeometry<'_>,
    segment: &SegmentRef<'_>,
    seg: Params,
    rows: usize,
    scratch: &Scratch,
) {
    let (natural, planar, scores) = (&*scratch.natural, &*scratch.planar, scratch.scores());
    match &segment.data {
        SegmentData::Exact {
            keys,
            rows_per_head,
            first_row,
            ..
        } => {
            let blocks = segment.len.div_ceil(32);
            batch.dispatch_grid_bound(
                &ATTENTION_SCORES_EXACT,
                "main",
                Params {
                    rows: *rows_per_head as u32,
                    segment_first: *first_row as u32,
                    invocations: blocks as u32,
                    ..seg
                },
                &[natural.into(), (*keys).into(), scores],
                per_row_grid(blocks, rows),
            )
        }
        SegmentData::Packed(PackedPlanes {
            keys: PackedKeyPlanes::Rotated(keys),
            ..
        }) => rotated::record_scores(batch, keys, seg, rows, scratch),
        SegmentData::Packed(PackedPlanes {
            keys: PackedKeyPlanes::RotatedGroups(keys),
            ..
        }) => rotated_groups::record_scores(batch, keys, seg, rows, scratch),
        SegmentData::Packed(
            planes @ PackedPlanes {
                keys:
                    PackedKeyPlanes::Packed {
                        codes,
                        scale_min,
                        sign_codes,
                        sign_scales,
                    },
                ..
            },
        ) => {
            let slices = (segment.len / layer.group_size) * layer.group_size.div_ceil(32);
            batch.dispatch_grid_bound(
                &ATTENTION_SCORES_PACKED,
                "main",
                Params {
                    groups: planes.groups as u32,
                    invocations: slices as u32,
                    ..seg
                },
                &[
                    planar.into(),
                    codes.into(),
                    scale_min.into(),
                    sign_codes.into(),
                    sign_scales.into(),
                    scores,
                ],
                per_row_grid(slices, rows),
            );
        }
    }
}

fn record_values(
    subgroups: bool,
    batch: &mut super::batch::Batch<'_>,
    segment: &SegmentRef<'_>,
    seg: Params,
    rows: usize,
    scratch: &Scratch,
) {
    let (scores, partial) = (scratch.scores(), scratch.partial_sums());
    let splits = segment.splits(seg.split_size as usize);
    let grid = (splits as u32, rows as u32);
    match &segment.data {
        SegmentData::Exact {
            values,
            rows_per_head,
            first_row,
            ..
        } => batch.dispatch_grid_bound(
            &ATTENTION_VALUES_EXACT,
            "main",
            Params {
                rows: *rows_per_head as u32,
                segment_first: *first_row as u32,
                ..seg
            },
            &[scores, (*values).into(), partial],
            grid,
        ),
        SegmentData::Packed(planes) => match &planes.values {
            PackedValuePlanes::Rotated(values) => {
                rotated::record_values(batch, values, seg, splits, rows, scratch)
            }
            PackedValuePlanes::RotatedGroups(values) => {
                rotated_groups::record_values(batch, values, seg, splits, rows, scratch)
            }
            PackedValuePlanes::TwoBit {
                grouping,
                rows: plane_rows,
                groups,
                codes,
                scale_min,
            } => batch.dispatch_grid_bound(
                &ATTENTION_VALUES_TWO_BIT,
                match grouping {
                    Grouping::PerChannel => "per_channel",
                    Grouping::PerToken => "per_token",
                },
                Params {
                    rows: *plane_rows as u32,
                    groups: *groups as u32,
                    ..seg
                },
                &[scores, codes.into(), scale_min.into(), partial],
                grid,
            ),
            PackedValuePlanes::Ternary {
                groups,
                kept_groups,
                plain,
                stp,
                codes,
                scales,
                kept_codes,
                kept_params,
                positions,
                split_elements,
            } => batch.dispatch_grid_bound(
                if subgroups {
                    &ATTENTION_VALUES_TERNARY_SUBGROUP
                } else {
                    &ATTENTION_VALUES_TERNARY
                },
                "main",
                Params {
                    groups: *groups as u32,
                    blocks: *kept_groups as u32,
                    len: *plain as u32,
                    stp: u32::from(*stp),
                    ..seg
                },
                &[
                    scores,
                    split_elements.into(),
                    codes.into(),
                    scales.into(),
                    kept_codes.into(),
                    kept_params.into(),
                    positions.into(),
                    partial,
                ],
                (grid.0, row_quads(seg, rows)),
            ),
        },
    }
}

/// Workgroup rows of the fused split kernel: the KV heads that the tile of `rows` query rows
/// from `seg.row_offset` touches, times ⌈rows_per_head / 8⌉ blocks of rows each.
fn row_blocks(seg: Params, rows: usize) -> u32 {
    let per_head = seg.rows_per_head;
    let first_head = seg.row_offset / per_head;
    let last_head = (seg.row_offset + rows as u32 - 1) / per_head;
    (last_head - first_head + 1) * per_head.div_ceil(8)
}

/// Workgroup rows of the kernels that serve a quad of query rows (the ternary value kernel,
/// the rotated kernels): the KV heads that the tile of `rows` query rows from
/// `seg.row_offset` touches, times ⌈rows_per_head / 4⌉ quads of rows each.
fn row_quads(seg: Params, rows: usize) -> u32 {
    let per_head = seg.rows_per_head;
    let first_head = seg.row_offset / per_head;
    let last_head = (seg.row_offset + rows as u32 - 1) / per_head;
    (last_head - first_head + 1) * per_head.div_ceil(4)
}
