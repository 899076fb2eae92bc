//! Honest size accounting: every stored u32 word counts, metadata included.
//!
//! Counted: code words, f16 scales and minimums (with the padding of odd group counts and
//! of partial trit blocks), outlier-channel masks, exact sink and tail rows, and the STP
//! position list (one u32 per protected token, once per cache, charged to V), and the
//! rotated schemes' per-token scale bytes, per-group means and per-head state, and their STP
//! refinement rows (codes, scale bytes and state of each head). Not counted:
//! the fixed-size header (shape and configuration), which does not grow with the cache.

use super::planes::{ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use super::rotated::{GroupMeans, RotatedRows};
use super::rotated_groups::{group_budget, GroupCodes};
use super::stp::REFINEMENT_BITS;
use super::{CacheShape, PackedCache, PackedKeys, PackedValues};
use crate::config::{Grouping, KeyScheme, QuantConfig, ValueScheme};
use crate::reference::split::outlier_count;

/// Stored size of a cache and its effective bits per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeReport {
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// Elements in K (equal to V's).
    pub elements: usize,
}

impl SizeReport {
    /// Bits per key element.
    pub fn key_bits(&self) -> f64 {
        self.key_bytes as f64 * 8.0 / self.elements as f64
    }
    /// Bits per value element.
    pub fn value_bits(&self) -> f64 {
        self.value_bytes as f64 * 8.0 / self.elements as f64
    }
    /// Bits per element over K and V together.
    pub fn all_bits(&self) -> f64 {
        (self.key_bytes + self.value_bytes) as f64 * 8.0 / (2 * self.elements) as f64
    }
    /// Total stored bytes.
    pub fn total_bytes(&self) -> usize {
        self.key_bytes + self.value_bytes
    }
}

pub(super) fn measure(cache: &PackedCache) -> SizeReport {
    let mut key_words = 0;
    let mut value_words = cache.protected.len();
    for head in &cache.heads {
        key_words += head.exact_keys.data.len();
        value_words += head.exact_values.data.len();
        key_words += match &head.keys {
            PackedKeys::Exact => 0,
            PackedKeys::TwoBit { plane, .. } => plane.codes.len() + plane.params.len(),
            PackedKeys::Mixed(m) => {
                m.outlier_mask.len()
                    + m.outliers.codes.len()
                    + m.outliers.params.len()
                    + m.normals.codes.len()
                    + m.normals.scales.len()
            }
            PackedKeys::Rotated(rows) => rotated_words(rows),
            PackedKeys::RotatedGroups(codes) => group_words(codes),
        };
        value_words += match &head.values {
            PackedValues::Exact => 0,
            PackedValues::TwoBit { plane, .. } => plane.codes.len() + plane.params.len(),
            PackedValues::Ternary { plane, protected } => {
                plane.codes.len()
                    + plane.scales.len()
                    + protected.codes.len()
                    + protected.params.len()
            }
            PackedValues::Rotated { rows, means } => {
                rotated_words(rows) + means.as_ref().map_or(0, |m| m.codes.len() + m.steps.len())
            }
            PackedValues::RotatedGroups(codes) => group_words(codes),
        };
        value_words += head.value_refinement.as_ref().map_or(0, rotated_words);
    }
    SizeReport {
        key_bytes: 4 * key_words,
        value_bytes: 4 * value_words,
        elements: cache.shape.elements(),
    }
}

fn rotated_words(rows: &RotatedRows) -> usize {
    rows.codes.len() + rows.scales.len() + rows.state.mean.len() + 1
}

fn group_words(codes: &GroupCodes) -> usize {
    codes.codes.len() + codes.scales.len() + codes.widths.len() + codes.state.mean.len() + 1
}

/// The size a cache of `shape` would have under `config` with `protected` STP tokens inside
/// the quantized range, without quantizing anything. Equal to [`PackedCache::size`] of the
/// real thing (a test checks it).
pub fn estimate_size(shape: CacheShape, config: &QuantConfig, protected: usize) -> SizeReport {
    let plan = config.plan(shape.tokens);
    let d = shape.head_dim;
    let g = config.group_size;
    let nq = plan.quantized;
    let exact = ExactRows::words(plan.exact(), d);
    let two_bit = |grouping: Grouping| match grouping {
        Grouping::PerChannel => TwoBitPlane::words(GroupedShape {
            rows: d,
            len: nq,
            group_size: g,
        }),
        Grouping::PerToken => TwoBitPlane::words(GroupedShape {
            rows: nq,
            len: d,
            group_size: g,
        }),
    };
    let per_channel = |len: usize| GroupedShape {
        rows: d,
        len,
        group_size: g,
    };
    let refinement = |protected: usize| {
        if protected == 0 {
            0
        } else {
            RotatedRows::words(REFINEMENT_BITS, d, protected)
        }
    };
    let key_plane = match config.keys {
        KeyScheme::Fp16 => 0,
        KeyScheme::TwoBit { grouping } => two_bit(grouping),
        KeyScheme::Mixed { outlier_ratio, .. } => {
            let k = outlier_count(d, outlier_ratio);
            d.div_ceil(32)
                + TwoBitPlane::words(GroupedShape {
                    rows: k,
                    len: nq,
                    group_size: g,
                })
                + SignPlane::words(GroupedShape {
                    rows: d - k,
                    len: nq,
                    group_size: g,
                })
        }
        KeyScheme::Rotated { bits } => RotatedRows::words(bits, d, nq),
        KeyScheme::RotatedGroups { bits } => GroupCodes::words(group_budget(bits, g), g, d, nq / g),
    };
    let (value_plane, list) = match config.values {
        ValueScheme::Fp16 => (0, 0),
        ValueScheme::TwoBit { grouping } => (two_bit(grouping), 0),
        ValueScheme::Ternary { .. } => (
            TernaryPlane::words(per_channel(nq - protected))
                + TwoBitPlane::words(per_channel(protected)),
            protected,
        ),
        ValueScheme::Rotated { bits, group_means } => (
            RotatedRows::words(bits, d, nq)
                + if group_means {
                    GroupMeans::words(d, nq / g)
                } else {
                    0
                }
                + refinement(protected),
            protected,
        ),
        ValueScheme::RotatedGroups { bits } => (
            GroupCodes::words(group_budget(bits, g), g, d, nq / g) + refinement(protected),
            protected,
        ),
    };
    let heads = shape.layers * shape.kv_heads;
    SizeReport {
        key_bytes: 4 * heads * (exact + key_plane),
        value_bytes: 4 * (heads * (exact + value_plane) + list),
        elements: shape.elements(),
    }
}
