//! The plane sizes of a cache chunk and its zeroed planes.

use super::{Heads, LayerStates, CHUNK_GROUPS};
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

/// Words per KV head of each plane array of a chunk (rotated schemes: codes in
/// `key_codes`/`value_codes`, scale bytes in `key_params`/`value_params`).
pub(crate) struct ChunkWords {
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
            refinement: None,
        })
    }
}
