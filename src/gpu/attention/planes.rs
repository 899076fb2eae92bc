//! The packed planes of a quantized segment on the GPU (keys, values, the layer's key
//! layout), how a layer's segments are described to an attention call, and their upload.

use super::rotated::{RefinementPlanes, RotatedPlanes, RotatedStates};
use super::rotated_groups::GroupPlanes;
use crate::config::Grouping;
use crate::error::{Result, VidkvError};
use crate::gpu::context::GpuContext;
use crate::gpu::quantize::twiddles;
use crate::packed::{PackedHead, PackedKeys, PackedValues, ValueSlot};

/// Where a layer's keys come from, shared by all its quantized segments: how many 2-bit
/// outlier rows and sign rows each group has, and the channel order (per KV head: outliers
/// ascending, then normals ascending) with the twiddles of the normals' DFT; for rotated
/// keys, the key states that the queries are rotated against.
pub(crate) struct KeyLayout {
    pub outliers: usize,
    pub normals: usize,
    pub fft: bool,
    pub order: wgpu::Buffer,
    pub twiddles: wgpu::Buffer,
    pub rotated: Option<RotatedStates>,
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
            rotated: None,
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
    /// Rotated per-token codes.
    Rotated(RotatedPlanes),
    /// Rotated codes across tokens (group records).
    RotatedGroups(GroupPlanes),
}

/// Packed values of a quantized segment, all KV heads.
pub(crate) enum PackedValuePlanes {
    /// Rotated per-token codes (with group means where the scheme has them).
    Rotated(RotatedPlanes),
    /// Rotated codes across tokens (group records).
    RotatedGroups(GroupPlanes),
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
    /// STP refinements of the protected tokens' values (rotated values with protection).
    pub refinement: Option<RefinementPlanes>,
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
    /// Splits of `split_tokens` tokens that cover the segment.
    pub(crate) fn splits(&self, split_tokens: usize) -> usize {
        self.len.div_ceil(split_tokens)
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

impl PackedPlanes {
    /// Bytes of the planes (positions only when STP lists them).
    pub(crate) fn bytes(&self) -> u64 {
        let keys = match &self.keys {
            PackedKeyPlanes::Packed {
                codes,
                scale_min,
                sign_codes,
                sign_scales,
            } => codes.size() + scale_min.size() + sign_codes.size() + sign_scales.size(),
            PackedKeyPlanes::Rotated(planes) => planes.bytes(),
            PackedKeyPlanes::RotatedGroups(planes) => planes.bytes(),
        };
        let refinement = self.refinement.as_ref().map_or(0, RefinementPlanes::bytes);
        keys + refinement
            + match &self.values {
                PackedValuePlanes::Rotated(planes) => planes.bytes(),
                PackedValuePlanes::RotatedGroups(planes) => planes.bytes(),
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
    let concat =
        |f: &dyn Fn(&PackedHead) -> Vec<u32>| -> Vec<u32> { heads.iter().flat_map(f).collect() };
    let mut layout = match &heads[0].keys {
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
                rotated: None,
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
                PackedKeys::Rotated(_) => {
                    PackedKeyPlanes::Rotated(RotatedPlanes::keys(ctx, heads)?)
                }
                PackedKeys::RotatedGroups(_) => {
                    PackedKeyPlanes::RotatedGroups(GroupPlanes::keys(ctx, heads)?)
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
                    let (positions, split_elements) =
                        stp_layout(&slots, plan.quantized_start(), ctx.split_tokens());
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
                PackedValues::Rotated { .. } => {
                    PackedValuePlanes::Rotated(RotatedPlanes::values(ctx, heads)?)
                }
                PackedValues::RotatedGroups(_) => {
                    PackedValuePlanes::RotatedGroups(GroupPlanes::values(ctx, heads)?)
                }
                PackedValues::Exact => {
                    unreachable!("keys and values are quantized together")
                }
            };
            Some(PackedPlanes {
                groups,
                keys,
                values,
                refinement: RefinementPlanes::upload(
                    ctx,
                    heads,
                    protected_positions,
                    (plan.quantized_start(), plan.quantized),
                )?,
            })
        }
    };
    match planes.as_ref().map(|p| &p.keys) {
        Some(PackedKeyPlanes::Rotated(keys)) => layout.rotated = Some(keys.states.clone()),
        Some(PackedKeyPlanes::RotatedGroups(keys)) => layout.rotated = Some(keys.states.clone()),
        _ => {}
    }
    Ok((layout, planes))
}

/// The ternary elements' positions (then the protected ones) and, per split of the
/// quantized segment, which elements of each plane fall in it.
fn stp_layout(slots: &[ValueSlot], start: usize, split_tokens: usize) -> (Vec<u32>, Vec<[u32; 4]>) {
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    let mut splits = Vec::new();
    for (chunk_index, chunk) in slots.chunks(split_tokens).enumerate() {
        let (plain_first, kept_first) = (plain.len(), kept.len());
        for (i, slot) in chunk.iter().enumerate() {
            let position = (start + chunk_index * split_tokens + i) as u32;
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
    if d % 8 != 0 || d > crate::gpu::quantize::MAX_HEAD_DIM {
        return Err(VidkvError::InvalidConfig(format!(
            "GPU attention needs a head_dim that is a multiple of 8 up to {}, got {d}",
            crate::gpu::quantize::MAX_HEAD_DIM
        )));
    }
    Ok(())
}
