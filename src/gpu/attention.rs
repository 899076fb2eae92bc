//! Attention straight from the packed cache on the GPU (and the f16 baseline with the same
//! structure): `softmax(q·Kᵀ/√d + mask)·V` for M query rows per query head, GQA, over the
//! exact sinks, the quantized history and the exact recent window, with no dense K̂ or V̂.
//!
//! A call runs, per tile of query rows:
//! 1. `attention_queries`: scale by 1/√d and bring each row into plane order (outlier
//!    channels, then Mᵀq over the DFT-domain normal channels);
//! 2. per segment (sinks, quantized history, tail) — `attention_scores_*` writes q·k for the
//!    segment's tokens, `attention_softmax` turns each split of [`SPLIT_TOKENS`] into
//!    weights with a split-local maximum and sum, and `attention_values_*` accumulates
//!    Σ p·v per split;
//! 3. `attention_combine`: merges all splits flash-decoding style (rescaling by
//!    e^{mₛ − max m}), which keeps long contexts (128k tokens and more) stable.
//!
//! Bytes per token read (d = 128, one KV head): f16 K+V 512; `kivi2` 192; `vidkv` ~70.

use super::context::GpuContext;
use super::params::Params;
use super::quantize::twiddles;
use super::shaders::{
    ATTENTION_COMBINE, ATTENTION_QUERIES, ATTENTION_SCORES_EXACT, ATTENTION_SCORES_PACKED,
    ATTENTION_SOFTMAX, ATTENTION_VALUES_EXACT, ATTENTION_VALUES_TERNARY,
    ATTENTION_VALUES_TERNARY_SUBGROUP, ATTENTION_VALUES_TWO_BIT,
};
use crate::config::{Grouping, TokenPlan};
use crate::error::{Result, VidkvError};
use crate::packed::{PackedCache, PackedHead, PackedKeys, PackedValues, ValueSlot};
use crate::tensor::check_finite;

/// Tokens per split of the softmax (a multiple of every supported group size).
pub const SPLIT_TOKENS: usize = 1024;

/// Where a layer's keys come from, shared by all its quantized segments: how many 2-bit
/// outlier rows and sign rows each group has, and the channel order (per KV head: outliers
/// ascending, then normals ascending) with the twiddles of the normals' DFT.
pub(crate) struct KeyLayout {
    pub outliers: usize,
    pub normals: usize,
    pub fft: bool,
    pub order: wgpu::Buffer,
    pub twiddles: wgpu::Buffer,
}

impl KeyLayout {
    /// Layout of a layer whose keys are exact or 2-bit on every channel (identity order).
    pub fn identity(ctx: &GpuContext, kv_heads: usize, head_dim: usize) -> Result<Self> {
        let order: Vec<u32> = (0..kv_heads).flat_map(|_| 0..head_dim as u32).collect();
        Ok(KeyLayout {
            outliers: head_dim,
            normals: 0,
            fft: false,
            order: ctx.create_storage("channel order", &order)?,
            twiddles: ctx.create_storage("twiddles", &twiddles(1))?,
        })
    }
}

/// Packed keys of a quantized segment, all KV heads, planes of `groups` groups per row.
pub(crate) enum PackedKeyPlanes {
    /// 2-bit rows (the layout's outliers, or every channel) and sign rows.
    Packed {
        codes: wgpu::Buffer,
        scale_min: wgpu::Buffer,
        sign_codes: wgpu::Buffer,
        sign_scales: wgpu::Buffer,
    },
}

/// Packed values of a quantized segment, all KV heads.
pub(crate) enum PackedValuePlanes {
    TwoBit {
        grouping: Grouping,
        /// Plane rows per KV head (channels, or token capacity per token).
        rows: usize,
        /// Groups per plane row (capacity per channel, or channel groups per token).
        groups: usize,
        codes: wgpu::Buffer,
        scale_min: wgpu::Buffer,
    },
    Ternary {
        /// Groups per channel row of the ternary plane (its capacity).
        groups: usize,
        kept_groups: usize,
        /// Ternary elements (offset of the protected positions in `positions`).
        plain: usize,
        /// Whether STP positions are listed (else element i is position start + i).
        stp: bool,
        codes: wgpu::Buffer,
        scales: wgpu::Buffer,
        kept_codes: wgpu::Buffer,
        kept_params: wgpu::Buffer,
        positions: wgpu::Buffer,
        /// Per split under STP: (first ternary element, count, first protected, count).
        split_elements: wgpu::Buffer,
    },
}

/// The planes of one quantized segment (a chunk of a cache, or a whole packed layer).
pub(crate) struct PackedPlanes {
    /// Groups per plane row of the key planes and of per-channel value planes.
    pub groups: usize,
    pub keys: PackedKeyPlanes,
    pub values: PackedValuePlanes,
}

/// How a segment of positions is stored.
pub(crate) enum SegmentData<'a> {
    /// Exact f16 rows `[kv_heads][rows_per_head][d/2]`, starting at `first_row`.
    Exact {
        keys: &'a wgpu::Buffer,
        values: &'a wgpu::Buffer,
        rows_per_head: usize,
        first_row: usize,
    },
    /// Whole quantized groups.
    Packed(&'a PackedPlanes),
}

/// A run of `len` positions from `start`, stored one way.
pub(crate) struct SegmentRef<'a> {
    pub start: usize,
    pub len: usize,
    pub data: SegmentData<'a>,
}

impl SegmentRef<'_> {
    pub(crate) fn splits(&self) -> usize {
        self.len.div_ceil(SPLIT_TOKENS)
    }
}

/// What an attention call needs to know about a layer beyond its segments.
pub(crate) struct LayerGeometry<'a> {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub group_size: usize,
    pub tokens: usize,
    pub layout: &'a KeyLayout,
}

/// One layer of a packed cache resident on the GPU, ready for [`attend`].
pub struct GpuLayer {
    kv_heads: usize,
    head_dim: usize,
    group_size: usize,
    plan: TokenPlan,
    exact_keys: wgpu::Buffer,
    exact_values: wgpu::Buffer,
    layout: KeyLayout,
    planes: Option<PackedPlanes>,
}

impl GpuLayer {
    /// Uploads layer `layer` of `cache`. The fused kernels need per-channel keys and a
    /// head_dim that is a multiple of 8 (every supported model's is).
    pub fn upload(ctx: &GpuContext, cache: &PackedCache, layer: usize) -> Result<Self> {
        let shape = cache.shape;
        let d = shape.head_dim;
        check_head_dim(d)?;
        if layer >= shape.layers {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the cache's {} layers",
                shape.layers
            )));
        }
        let heads = &cache.heads[layer * shape.kv_heads..(layer + 1) * shape.kv_heads];
        let plan = heads[0].plan;
        let concat = |f: &dyn Fn(&PackedHead) -> Vec<u32>| -> Vec<u32> {
            heads.iter().flat_map(f).collect()
        };
        let exact_keys =
            ctx.create_storage("exact keys", &concat(&|h| h.exact_keys.data.clone()))?;
        let exact_values =
            ctx.create_storage("exact values", &concat(&|h| h.exact_values.data.clone()))?;
        let (layout, planes) =
            upload_planes(ctx, heads, &cache.protected, cache.config.group_size)?;
        Ok(GpuLayer {
            kv_heads: shape.kv_heads,
            head_dim: d,
            group_size: cache.config.group_size,
            plan,
            exact_keys,
            exact_values,
            layout,
            planes,
        })
    }

    /// Tokens in the layer.
    pub fn tokens(&self) -> usize {
        self.plan.tokens
    }

    /// Bytes of cache this layer stores on the GPU (what one full attention pass reads).
    pub fn cache_bytes(&self) -> u64 {
        self.exact_keys.size()
            + self.exact_values.size()
            + self.planes.as_ref().map_or(0, PackedPlanes::bytes)
    }

    pub(crate) fn segments(&self) -> Vec<SegmentRef<'_>> {
        let plan = self.plan;
        let exact = |first_row| SegmentData::Exact {
            keys: &self.exact_keys,
            values: &self.exact_values,
            rows_per_head: plan.exact(),
            first_row,
        };
        let mut segments = vec![SegmentRef {
            start: 0,
            len: plan.sinks,
            data: exact(0),
        }];
        if let Some(planes) = &self.planes {
            segments.push(SegmentRef {
                start: plan.quantized_start(),
                len: plan.quantized,
                data: SegmentData::Packed(planes),
            });
        }
        segments.push(SegmentRef {
            start: plan.quantized_end(),
            len: plan.tail(),
            data: exact(plan.sinks),
        });
        segments.retain(|s| s.len > 0);
        segments
    }

    pub(crate) fn geometry(&self) -> LayerGeometry<'_> {
        LayerGeometry {
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            group_size: self.group_size,
            tokens: self.plan.tokens,
            layout: &self.layout,
        }
    }
}

impl PackedPlanes {
    /// Bytes of the planes (positions only when STP lists them).
    pub(crate) fn bytes(&self) -> u64 {
        let PackedKeyPlanes::Packed {
            codes,
            scale_min,
            sign_codes,
            sign_scales,
        } = &self.keys;
        let keys = codes.size() + scale_min.size() + sign_codes.size() + sign_scales.size();
        keys + match &self.values {
            PackedValuePlanes::TwoBit {
                codes, scale_min, ..
            } => codes.size() + scale_min.size(),
            PackedValuePlanes::Ternary {
                codes,
                scales,
                kept_codes,
                kept_params,
                positions,
                stp,
                ..
            } => {
                codes.size()
                    + scales.size()
                    + if *stp {
                        kept_codes.size() + kept_params.size() + positions.size()
                    } else {
                        0
                    }
            }
        }
    }
}

/// Uploads the quantized planes of one layer's heads (all sharing a plan and scheme) and
/// its key layout; `None` planes for an fp16 layer.
pub(crate) fn upload_planes(
    ctx: &GpuContext,
    heads: &[PackedHead],
    protected_positions: &[u32],
    group_size: usize,
) -> Result<(KeyLayout, Option<PackedPlanes>)> {
    let d = heads[0].head_dim;
    let plan = heads[0].plan;
    if heads[0].uses_rotation() {
        return Err(super::rotated_unsupported());
    }
    let concat =
        |f: &dyn Fn(&PackedHead) -> Vec<u32>| -> Vec<u32> { heads.iter().flat_map(f).collect() };
    let layout = match &heads[0].keys {
        PackedKeys::Mixed(first) => {
            let mut order = Vec::with_capacity(d * heads.len());
            for head in heads {
                let PackedKeys::Mixed(m) = &head.keys else {
                    unreachable!("all heads of a cache share a scheme")
                };
                let split = m.split(d);
                order.extend(
                    split
                        .outliers
                        .iter()
                        .chain(&split.normals)
                        .map(|&c| c as u32),
                );
            }
            let normals = d - first.outliers.shape.rows;
            KeyLayout {
                outliers: first.outliers.shape.rows,
                normals,
                fft: first.fft,
                order: ctx.create_storage("channel order", &order)?,
                twiddles: ctx.create_storage("twiddles", &twiddles(normals.max(1)))?,
            }
        }
        PackedKeys::TwoBit {
            grouping: Grouping::PerToken,
            ..
        } => {
            return Err(VidkvError::InvalidConfig(
                "GPU attention reads per-channel keys; per-token key grouping is not supported"
                    .into(),
            ))
        }
        _ => KeyLayout::identity(ctx, heads.len(), d)?,
    };
    let planes = match (&heads[0].keys, &heads[0].values) {
        (PackedKeys::Exact, _) => None,
        (first_keys, first_values) => {
            let groups = plan.quantized / group_size;
            let keys = match first_keys {
                PackedKeys::TwoBit { .. } => {
                    let plane = |h: &PackedHead| match &h.keys {
                        PackedKeys::TwoBit { plane, .. } => plane.clone(),
                        _ => unreachable!("all heads of a cache share a scheme"),
                    };
                    PackedKeyPlanes::Packed {
                        codes: ctx.create_storage("key codes", &concat(&|h| plane(h).codes))?,
                        scale_min: ctx
                            .create_storage("key params", &concat(&|h| plane(h).params))?,
                        sign_codes: ctx.create_storage("key sign codes", &[0u32])?,
                        sign_scales: ctx.create_storage("key sign scales", &[0u32])?,
                    }
                }
                _ => {
                    let mixed = |h: &PackedHead| match &h.keys {
                        PackedKeys::Mixed(m) => m.clone(),
                        _ => unreachable!("all heads of a cache share a scheme"),
                    };
                    PackedKeyPlanes::Packed {
                        codes: ctx
                            .create_storage("key codes", &concat(&|h| mixed(h).outliers.codes))?,
                        scale_min: ctx
                            .create_storage("key params", &concat(&|h| mixed(h).outliers.params))?,
                        sign_codes: ctx.create_storage(
                            "key sign codes",
                            &concat(&|h| mixed(h).normals.codes),
                        )?,
                        sign_scales: ctx.create_storage(
                            "key sign scales",
                            &concat(&|h| mixed(h).normals.scales),
                        )?,
                    }
                }
            };
            let values = match first_values {
                PackedValues::TwoBit { grouping, plane } => {
                    let two_bit = |h: &PackedHead| match &h.values {
                        PackedValues::TwoBit { plane, .. } => plane.clone(),
                        _ => unreachable!("all heads of a cache share a scheme"),
                    };
                    PackedValuePlanes::TwoBit {
                        grouping: *grouping,
                        rows: plane.shape.rows,
                        groups: plane.shape.groups(),
                        codes: ctx.create_storage("value codes", &concat(&|h| two_bit(h).codes))?,
                        scale_min: ctx
                            .create_storage("value params", &concat(&|h| two_bit(h).params))?,
                    }
                }
                PackedValues::Ternary { plane, protected } => {
                    let ternary = |h: &PackedHead| match &h.values {
                        PackedValues::Ternary { plane, protected } => {
                            (plane.clone(), protected.clone())
                        }
                        _ => unreachable!("all heads of a cache share a scheme"),
                    };
                    let slots: Vec<ValueSlot> = heads[0].value_slots(protected_positions).collect();
                    let (positions, split_elements) = stp_layout(&slots, plan.quantized_start());
                    let stp = protected.shape.len > 0;
                    PackedValuePlanes::Ternary {
                        groups: plane.shape.groups(),
                        kept_groups: protected.shape.groups(),
                        plain: plane.shape.len,
                        stp,
                        codes: ctx
                            .create_storage("value codes", &concat(&|h| ternary(h).0.codes))?,
                        scales: ctx
                            .create_storage("value scales", &concat(&|h| ternary(h).0.scales))?,
                        kept_codes: ctx
                            .create_storage("protected codes", &concat(&|h| ternary(h).1.codes))?,
                        kept_params: ctx.create_storage(
                            "protected params",
                            &concat(&|h| ternary(h).1.params),
                        )?,
                        positions: ctx.create_storage(
                            "value positions",
                            if stp { &positions[..] } else { &[0u32][..] },
                        )?,
                        split_elements: ctx.create_storage("split elements", &split_elements)?,
                    }
                }
                PackedValues::Exact
                | PackedValues::Rotated { .. }
                | PackedValues::RotatedGroups(_) => {
                    unreachable!("keys and values are quantized together; rotated was refused")
                }
            };
            Some(PackedPlanes {
                groups,
                keys,
                values,
            })
        }
    };
    Ok((layout, planes))
}

/// The ternary elements' positions (then the protected ones) and, per split of the
/// quantized segment, which elements of each plane fall in it.
fn stp_layout(slots: &[ValueSlot], start: usize) -> (Vec<u32>, Vec<[u32; 4]>) {
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    let mut splits = Vec::new();
    for (chunk_index, chunk) in slots.chunks(SPLIT_TOKENS).enumerate() {
        let (plain_first, kept_first) = (plain.len(), kept.len());
        for (i, slot) in chunk.iter().enumerate() {
            let position = (start + chunk_index * SPLIT_TOKENS + i) as u32;
            match slot {
                ValueSlot::Plain(_) => plain.push(position),
                ValueSlot::Protected(_) => kept.push(position),
            }
        }
        splits.push([
            plain_first as u32,
            (plain.len() - plain_first) as u32,
            kept_first as u32,
            (kept.len() - kept_first) as u32,
        ]);
    }
    plain.extend(kept);
    (plain, splits)
}

/// The fused kernels' requirement on head_dim.
pub(crate) fn check_head_dim(d: usize) -> Result<()> {
    if d % 8 != 0 || d > super::quantize::MAX_HEAD_DIM {
        return Err(VidkvError::InvalidConfig(format!(
            "GPU attention needs a head_dim that is a multiple of 8 up to {}, got {d}",
            super::quantize::MAX_HEAD_DIM
        )));
    }
    Ok(())
}

/// Which kernels an attention call may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The fast paths the adapter supports (subgroups), else the portable kernels.
    Fastest,
    /// The portable kernels only.
    Portable,
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
    attend_segments(
        ctx,
        &layer.geometry(),
        &layer.segments(),
        q,
        q_heads,
        visible,
        kernels,
    )
}

/// Attention over the segments of one layer (see [`attend`] for `q` and `visible`).
pub(crate) fn attend_segments(
    ctx: &GpuContext,
    layer: &LayerGeometry<'_>,
    segments: &[SegmentRef<'_>],
    q: &[f32],
    q_heads: usize,
    visible: &[(u32, u32)],
    kernels: Kernels,
) -> Result<Vec<f32>> {
    let subgroups = kernels == Kernels::Fastest && ctx.uses_subgroups();
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
    if queries == 0 || q.len() != q_heads * queries * d {
        return Err(VidkvError::ShapeMismatch {
            tensor: "q".into(),
            detail: format!(
                "expected {q_heads} heads × {queries} queries × {d} = {} values, got {}",
                q_heads * queries * d,
                q.len()
            ),
        });
    }
    check_finite("q", q, &[q_heads, queries, d])?;
    if let Some(&(lo, hi)) = visible
        .iter()
        .find(|&&(lo, hi)| lo >= hi || hi as usize > layer.tokens)
    {
        return Err(VidkvError::InvalidConfig(format!(
            "visible range {lo}..{hi} is empty or beyond the {} tokens",
            layer.tokens
        )));
    }
    let _exclusive = ctx.exclusive();
    let rows_per_head = (q_heads / layer.kv_heads) * queries;
    let total_rows = rows_per_head * layer.kv_heads;
    let mut split_offsets = Vec::with_capacity(segments.len());
    let mut total_splits = 0;
    for segment in segments {
        split_offsets.push(total_splits);
        total_splits += segment.splits();
    }
    // Score rows are padded to a multiple of 4 floats (`score_stride` in the shaders).
    let longest = segments
        .iter()
        .map(|s| s.len.next_multiple_of(4))
        .max()
        .unwrap_or(4);
    let per_row = (longest.max(total_splits * d) * 4) as u64;
    // Tiles hold whole runs of the `gqa` rows that share a KV head and a query position.
    let gqa = q_heads / layer.kv_heads;
    let tile_rows = ((ctx.max_data_bytes() / per_row) as usize)
        .clamp(1, total_rows)
        .min(ctx.max_workgroups_per_dimension() as usize);
    let tile_rows = (tile_rows / gqa).max(1) * gqa;

    let q_buffer = ctx.upload("attention q", q)?;
    let visible_flat: Vec<u32> = visible.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
    let visible_buffer = ctx.upload("attention visible", &visible_flat)?;
    let output_words = q_heads * queries * d;
    let output = ctx.output("attention output", output_words)?;
    let scratch = Scratch {
        natural: ctx.buffer("attention q natural", (tile_rows * d * 4) as u64)?,
        planar: ctx.buffer("attention q planar", (tile_rows * d * 4) as u64)?,
        scores: ctx.buffer("attention scores", (tile_rows * longest * 4) as u64)?,
        partial: ctx.buffer(
            "attention partial",
            (tile_rows * total_splits * d * 4) as u64,
        )?,
    };
    let stats = ctx.buffer("attention stats", (tile_rows * total_splits * 8) as u64)?;
    let base = Params {
        width: d as u32,
        group_size: layer.group_size as u32,
        outliers: layer.layout.outliers as u32,
        dft_len: layer.layout.normals as u32,
        scale_rule: u32::from(layer.layout.fft),
        scale: 1.0 / (d as f32).sqrt(),
        kv_heads: layer.kv_heads as u32,
        rows_per_head: rows_per_head as u32,
        queries: queries as u32,
        total_splits: total_splits as u32,
        split_size: SPLIT_TOKENS as u32,
        ..Default::default()
    };
    let mut row_offset = 0;
    while row_offset < total_rows {
        let rows = tile_rows.min(total_rows - row_offset);
        let tile = Params {
            row_offset: row_offset as u32,
            tile_rows: rows as u32,
            ..base
        };
        let mut batch = ctx.batch();
        batch.dispatch(
            &ATTENTION_QUERIES,
            "main",
            Params {
                invocations: (rows * d) as u32,
                ..tile
            },
            &[
                &q_buffer,
                &layer.layout.order,
                &layer.layout.twiddles,
                &scratch.natural,
                &scratch.planar,
            ],
        );
        for (segment, &split_offset) in segments.iter().zip(&split_offsets) {
            let seg = Params {
                segment_start: segment.start as u32,
                segment_len: segment.len as u32,
                split_offset: split_offset as u32,
                ..tile
            };
            record_scores(&mut batch, layer, segment, seg, rows, &scratch);
            batch.dispatch(
                &ATTENTION_SOFTMAX,
                "main",
                Params {
                    invocations: (rows * segment.splits()) as u32,
                    ..seg
                },
                &[&visible_buffer, &scratch.scores, &stats],
            );
            record_values(subgroups, &mut batch, segment, seg, rows, &scratch);
        }
        batch.dispatch(
            &ATTENTION_COMBINE,
            "main",
            Params {
                invocations: (rows * d) as u32,
                ..tile
            },
            &[&stats, &scratch.partial, &output],
        );
        batch.submit()?;
        row_offset += rows;
    }
    let words = ctx.read_output(&output, "attention output", output_words)?;
    Ok(words.into_iter().map(f32::from_bits).collect())
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
    natural: std::sync::Arc<wgpu::Buffer>,
    planar: std::sync::Arc<wgpu::Buffer>,
    scores: std::sync::Arc<wgpu::Buffer>,
    partial: std::sync::Arc<wgpu::Buffer>,
}

fn record_scores(
    batch: &mut super::batch::Batch<'_>,
    layer: &LayerGeometry<'_>,
    segment: &SegmentRef<'_>,
    seg: Params,
    rows: usize,
    scratch: &Scratch,
) {
    let (natural, planar, scores) = (&*scratch.natural, &*scratch.planar, &*scratch.scores);
    match &segment.data {
        SegmentData::Exact {
            keys,
            rows_per_head,
            first_row,
            ..
        } => {
            let blocks = segment.len.div_ceil(32);
            batch.dispatch_grid(
                &ATTENTION_SCORES_EXACT,
                "main",
                Params {
                    rows: *rows_per_head as u32,
                    segment_first: *first_row as u32,
                    invocations: blocks as u32,
                    ..seg
                },
                &[natural, keys, scores],
                per_row_grid(blocks, rows),
            )
        }
        SegmentData::Packed(planes) => {
            let PackedKeyPlanes::Packed {
                codes,
                scale_min,
                sign_codes,
                sign_scales,
            } = &planes.keys;
            let slices = (segment.len / layer.group_size) * layer.group_size.div_ceil(32);
            batch.dispatch_grid(
                &ATTENTION_SCORES_PACKED,
                "main",
                Params {
                    groups: planes.groups as u32,
                    invocations: slices as u32,
                    ..seg
                },
                &[planar, codes, scale_min, sign_codes, sign_scales, scores],
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
    let (scores, partial) = (&*scratch.scores, &*scratch.partial);
    let grid = (segment.splits() as u32, rows as u32);
    match &segment.data {
        SegmentData::Exact {
            values,
            rows_per_head,
            first_row,
            ..
        } => batch.dispatch_grid(
            &ATTENTION_VALUES_EXACT,
            "main",
            Params {
                rows: *rows_per_head as u32,
                segment_first: *first_row as u32,
                ..seg
            },
            &[scores, values, partial],
            grid,
        ),
        SegmentData::Packed(planes) => match &planes.values {
            PackedValuePlanes::TwoBit {
                grouping,
                rows: plane_rows,
                groups,
                codes,
                scale_min,
            } => batch.dispatch_grid(
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
                &[scores, codes, scale_min, partial],
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
            } => batch.dispatch_grid(
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
                    split_elements,
                    codes,
                    scales,
                    kept_codes,
                    kept_params,
                    positions,
                    partial,
                ],
                (grid.0, row_quads(seg, rows)),
            ),
        },
    }
}

/// Workgroup rows of the ternary value kernel: the KV heads that the tile of `rows` query
/// rows from `seg.row_offset` touches, times ⌈rows_per_head / 4⌉ quads of rows each.
fn row_quads(seg: Params, rows: usize) -> u32 {
    let per_head = seg.rows_per_head;
    let first_head = seg.row_offset / per_head;
    let last_head = (seg.row_offset + rows as u32 - 1) / per_head;
    (last_head - first_head + 1) * per_head.div_ceil(4)
}
