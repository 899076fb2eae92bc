//! The plane sizes of a cache chunk, its zeroed planes, and their growth: a chunk's planes
//! are re-strided into larger ones (every plane row's filled words copied on the GPU), so
//! that a layer's quantized history stays one segment, one dispatch of attention.

use super::{Heads, LayerStates};
use crate::config::{Grouping, KeyScheme, QuantConfig, ValueScheme};
use crate::error::Result;
use crate::gpu::attention::{
    GroupPlanes, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, RotatedPlanes, RotatedStates,
};
use crate::gpu::context::GpuContext;
use crate::packed::planes::{SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::rotated::{GroupMeans, RotatedRows};
use crate::packed::rotated_groups::group_budget;
use crate::reference::split::outlier_count;

/// Words per KV head of each plane array of a chunk of `capacity` groups (rotated schemes:
/// codes in `key_codes`/`value_codes`, scale bytes in `key_params`/`value_params`). Every
/// array is `[kv_heads][rows][capacity groups]` (`rows`: channels, sign or ternary records
/// of a per-channel plane, else 1), so a plane row's first groups are contiguous.
pub(crate) struct ChunkWords {
    /// Groups per plane row (the stride of every array).
    pub(super) capacity: usize,
    pub(super) key_codes: usize,
    pub(super) key_params: usize,
    pub(super) sign_codes: usize,
    pub(super) sign_scales: usize,
    pub(super) value_codes: usize,
    pub(super) value_params: usize,
    /// Rotated values with group means: mean codes and f16 steps.
    pub(super) mean_codes: usize,
    pub(super) mean_steps: usize,
    /// Codes across tokens: the width tables of keys and values.
    pub(super) key_widths: usize,
    pub(super) value_widths: usize,
}

impl ChunkWords {
    /// The plane sizes of a chunk of `capacity` groups under `config` at head dim `d`.
    pub fn of(config: &QuantConfig, d: usize, capacity: usize) -> Self {
        let g = config.group_size;
        let c = capacity;
        let rows = c * g;
        let (k, n) = key_channels(config, d);
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
            capacity,
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

    /// The words per KV head of every array, in the order of [`plane_arrays`].
    fn each(&self) -> [usize; ARRAYS] {
        [
            self.key_codes,
            self.key_params,
            self.sign_codes,
            self.sign_scales,
            self.value_codes,
            self.value_params,
            self.mean_codes,
            self.mean_steps,
            self.key_widths,
            self.value_widths,
        ]
    }

    /// The plane rows per KV head of every array, in the order of [`plane_arrays`].
    fn rows(config: &QuantConfig, d: usize) -> [usize; ARRAYS] {
        let (channels, n) = key_channels(config, d);
        let k = match config.keys {
            KeyScheme::Rotated { .. } | KeyScheme::RotatedGroups { .. } => 1,
            _ => channels,
        };
        let (value_codes, value_params) = match config.values {
            ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            } => (d, d),
            ValueScheme::Ternary { .. } => (d.div_ceil(5), d.div_ceil(2)),
            _ => (1, 1),
        };
        let at_least_one = |rows: usize| rows.max(1);
        [
            k,
            k,
            at_least_one(n),
            at_least_one(n.div_ceil(2)),
            value_codes,
            value_params,
            1,
            1,
            1,
            1,
        ]
    }

    /// Bytes of the largest plane array over `heads` KV heads.
    pub fn largest_bytes(&self, heads: usize) -> u64 {
        (self.each().into_iter().max().unwrap_or(0) * heads * 4) as u64
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
                tokens: self.capacity * g,
                groups: if means { self.capacity } else { 0 },
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
                groups: self.capacity,
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
                    Grouping::PerToken => self.capacity * g,
                },
                groups: match grouping {
                    Grouping::PerChannel => self.capacity,
                    Grouping::PerToken => d.div_ceil(g),
                },
                codes: zeroed("value codes", self.value_codes)?,
                scale_min: zeroed("value params", self.value_params)?,
            },
            _ => PackedValuePlanes::Ternary {
                groups: self.capacity,
                kept_groups: 0,
                plain: self.capacity * g,
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
            groups: self.capacity,
            keys,
            values,
            refinement: None,
        })
    }
}

/// The key channels of per-channel 2-bit rows (the outliers under mixed keys, else all
/// `d`) and of sign rows (the rest).
fn key_channels(config: &QuantConfig, d: usize) -> (usize, usize) {
    let k = match config.keys {
        KeyScheme::Mixed { outlier_ratio, .. } => outlier_count(d, outlier_ratio),
        _ => d,
    };
    (k, d - k)
}

/// Plane arrays a chunk may have (see [`ChunkWords::each`]).
const ARRAYS: usize = 10;

/// The plane arrays of chunk planes in the order of [`ChunkWords::each`] (`None` where the
/// scheme has no such array).
fn plane_arrays(planes: &PackedPlanes) -> [Option<&wgpu::Buffer>; ARRAYS] {
    let mut arrays = [None; ARRAYS];
    match &planes.keys {
        PackedKeyPlanes::Packed {
            codes,
            scale_min,
            sign_codes,
            sign_scales,
        } => {
            arrays[0] = Some(codes);
            arrays[1] = Some(scale_min);
            arrays[2] = Some(sign_codes);
            arrays[3] = Some(sign_scales);
        }
        PackedKeyPlanes::Rotated(p) => {
            arrays[0] = Some(&p.codes);
            arrays[1] = Some(&p.scales);
        }
        PackedKeyPlanes::RotatedGroups(p) => {
            arrays[0] = Some(&p.codes);
            arrays[1] = Some(&p.scales);
            arrays[8] = Some(&p.widths);
        }
    }
    match &planes.values {
        PackedValuePlanes::TwoBit {
            codes, scale_min, ..
        } => {
            arrays[4] = Some(codes);
            arrays[5] = Some(scale_min);
        }
        PackedValuePlanes::Ternary { codes, scales, .. } => {
            arrays[4] = Some(codes);
            arrays[5] = Some(scales);
        }
        PackedValuePlanes::Rotated(p) => {
            arrays[4] = Some(&p.codes);
            arrays[5] = Some(&p.scales);
            if let Some((codes, steps)) = &p.means {
                arrays[6] = Some(codes);
                arrays[7] = Some(steps);
            }
        }
        PackedValuePlanes::RotatedGroups(p) => {
            arrays[4] = Some(&p.codes);
            arrays[5] = Some(&p.scales);
            arrays[9] = Some(&p.widths);
        }
    }
    arrays
}

/// Chunk planes of `to` groups holding the `filled` groups of `planes` (chunk planes of
/// `from` groups): new zeroed planes, and each plane row's filled words of every head
/// copied into them, all in one submission. The old planes are the caller's to drop.
pub(crate) fn grow_planes(
    ctx: &GpuContext,
    (config, heads, states): (&QuantConfig, Heads, &LayerStates),
    planes: &PackedPlanes,
    (from, filled, to): (usize, usize, usize),
) -> Result<PackedPlanes> {
    let d = heads.dim;
    let (old, new) = (
        ChunkWords::of(config, d, from),
        ChunkWords::of(config, d, to),
    );
    let grown = new.new_planes(ctx, config, heads, states)?;
    let used = ChunkWords::of(config, d, filled);
    let rows = ChunkWords::rows(config, d);
    let mut batch = ctx.batch();
    let words = old.each().into_iter().zip(new.each()).zip(used.each());
    let buffers = plane_arrays(planes).into_iter().zip(plane_arrays(&grown));
    for ((((old_words, new_words), used_words), rows), buffers) in words.zip(rows).zip(buffers) {
        let (Some(source), Some(target)) = buffers else {
            continue;
        };
        let (old_row, new_row, used_row) = (old_words / rows, new_words / rows, used_words / rows);
        for head in 0..heads.count {
            for row in 0..rows {
                batch.copy(
                    source,
                    ((head * old_words + row * old_row) * 4) as u64,
                    target,
                    ((head * new_words + row * new_row) * 4) as u64,
                    (used_row * 4) as u64,
                );
            }
        }
    }
    batch.submit()?;
    // Cached bind groups may hold the old planes alive.
    ctx.forget_bind_groups();
    Ok(grown)
}
