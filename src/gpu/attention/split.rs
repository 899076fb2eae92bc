//! The fused split-K skeleton (`attention_split.wgsl`) with its row decoders: one
//! dispatch per segment computes every split's scores, online softmax and Σ p·v for
//! blocks of 8 query rows of a KV head, reading the call's query itself. [`ExactSplit`]
//! decodes exact (f16) rows (the fp16 cache, sinks and windows riding nowhere else: one
//! dispatch per pair of buffers, the first such segment carrying the next as a rider),
//! read as u32 words or, on the shader-f16 fast path ([`SplitInputs::f16_loads`]), as f16;
//! [`TwoBitSplit`] 2-bit keys per channel and 2-bit values per token (`kivi2`) or per
//! channel (`k2v2-channel`), with up to two exact segments (the sinks, the window) riding
//! in its dispatch as splits of their own; [`SignsTritsSplit`] the VidKV paper's format
//! (2-bit outlier channels, sign rows and ternary values: `vidkv-tuned`, `vidkv-paper`)
//! against the queries pass's planar query; [`RotatedTokensSplit`] rotated per-token codes
//! (`rotated`, `rotated-flat`, `rotated-k3v1`) against its rotated query, the split's sums
//! rotated back at its end.

use super::planes::{LayerGeometry, PackedKeyPlanes, PackedPlanes, PackedValuePlanes};
use super::planes::{SegmentData, SegmentRef};
use super::rotated::{RefinementPlanes, RotatedPlanes};
use super::rotated_groups::{FusedExact, EXACT_RECORD_USED, STATES_UNIFORM_BYTES};
use super::Scratch;
use crate::config::Grouping;
use crate::gpu::batch::Batch;
use crate::gpu::binding::Bound;
use crate::gpu::params::Params;
use crate::gpu::shaders::{
    Kernel, ATTENTION_SPLIT, ATTENTION_SPLIT_HALVES, ATTENTION_SPLIT_ROTATED_TOKENS,
    ATTENTION_SPLIT_SIGNS_TRITS, ATTENTION_SPLIT_TWO_BIT_CHANNELS,
    ATTENTION_SPLIT_TWO_BIT_CHANNELS_HALVES, ATTENTION_SPLIT_TWO_BIT_TOKENS,
    ATTENTION_SPLIT_TWO_BIT_TOKENS_HALVES,
};

/// The buffers every split-skeleton dispatch of a call binds before its decoder's: the
/// call's query (f32, natural order, unscaled) and the visible ranges; and how the exact
/// rows are read: `f16_loads` picks the shader-f16 fast path (`_halves.wgsl`) over the
/// portable u32 words (`_words.wgsl`).
pub(super) struct SplitInputs<'a> {
    pub queries: &'a wgpu::Buffer,
    pub visible: &'a wgpu::Buffer,
    pub f16_loads: bool,
}

/// The buffers of an exact segment's f16 rows, `[kv_heads][rows_per_head][d/2]` words (its
/// first stored row is in its [`SegmentData::Exact`]).
pub(super) struct ExactSplit<'a> {
    pub keys: &'a wgpu::Buffer,
    pub values: &'a wgpu::Buffer,
    pub rows_per_head: usize,
}

impl<'a> ExactSplit<'a> {
    /// The exact rows of `segment`, if it is exact.
    pub fn of(segment: &SegmentRef<'a>) -> Option<Self> {
        match segment.data {
            SegmentData::Exact {
                keys,
                values,
                rows_per_head,
                ..
            } => Some(ExactSplit {
                keys,
                values,
                rows_per_head,
            }),
            SegmentData::Packed(_) => None,
        }
    }

    /// Records the dispatch of exact segments `riders` (one pair of buffers, among them the
    /// host segment, which carries itself): `seg` holds the call's place, `grid` is (the
    /// riders' splits, `row_blocks`).
    pub fn record_riders(
        batch: &mut Batch<'_>,
        (seg, grid): (Params, (u32, u32)),
        inputs: &SplitInputs<'_>,
        riders: &FusedExact<'_>,
        scratch: &Scratch,
    ) {
        let params = Params {
            rows: riders.rows_per_head as u32,
            ..seg
        };
        let planes = rider_bindings(riders);
        let kernel = if inputs.f16_loads {
            &ATTENTION_SPLIT_HALVES
        } else {
            &ATTENTION_SPLIT
        };
        record_split(batch, kernel, (params, grid), inputs, scratch, planes);
    }
}

/// A quantized segment with 2-bit keys on every channel (grouped over G ≥ 32 tokens) and
/// 2-bit values per token: the planes `attention_split_two_bit.wgsl` decodes.
pub(super) struct TwoBitSplit<'a> {
    key_codes: &'a wgpu::Buffer,
    key_scale_min: &'a wgpu::Buffer,
    key_groups: usize,
    value_codes: &'a wgpu::Buffer,
    value_scale_min: &'a wgpu::Buffer,
    /// Values per token (`kivi2`) or per channel (`k2v2-channel`).
    value_grouping: Grouping,
    value_groups: usize,
}

impl<'a> TwoBitSplit<'a> {
    /// The planes of `segment` if its format is the 2-bit decoder's: every key channel a
    /// 2-bit row in natural order (no sign rows), groups of at least 32 tokens, values
    /// 2-bit per token with as many rows as the key planes hold tokens, or per channel with
    /// as many groups as the key planes.
    pub fn of(layer: &LayerGeometry<'_>, segment: &SegmentRef<'a>) -> Option<Self> {
        let layout = layer.layout;
        if layout.outliers != layer.head_dim
            || layout.normals != 0
            || layout.rotated.is_some()
            || layer.group_size < 32
        {
            return None;
        }
        match segment.data {
            SegmentData::Packed(PackedPlanes {
                groups,
                keys:
                    PackedKeyPlanes::Packed {
                        codes: key_codes,
                        scale_min: key_scale_min,
                        ..
                    },
                values:
                    PackedValuePlanes::TwoBit {
                        grouping,
                        rows,
                        groups: value_groups,
                        codes,
                        scale_min,
                    },
                refinement: None,
            }) if match grouping {
                Grouping::PerToken => *rows == groups * layer.group_size,
                Grouping::PerChannel => *rows == layer.head_dim && value_groups == groups,
            } =>
            {
                Some(TwoBitSplit {
                    key_codes,
                    key_scale_min,
                    key_groups: *groups,
                    value_codes: codes,
                    value_scale_min: scale_min,
                    value_grouping: *grouping,
                    value_groups: *value_groups,
                })
            }
            _ => None,
        }
    }

    /// Records the segment's dispatch and its riders' (`exact`; `grid` counts their splits
    /// after the segment's), as [`ExactSplit::record_riders`].
    pub fn record(
        &self,
        batch: &mut Batch<'_>,
        (seg, grid): (Params, (u32, u32)),
        inputs: &SplitInputs<'_>,
        exact: &FusedExact<'_>,
        scratch: &Scratch,
    ) {
        let params = Params {
            groups: self.key_groups as u32,
            rows: exact.rows_per_head as u32,
            group_count: self.value_groups as u32,
            ..seg
        };
        let [keys, values, records] = rider_bindings(exact);
        let planes = [
            keys,
            values,
            records,
            self.key_codes.into(),
            self.key_scale_min.into(),
            self.value_codes.into(),
            self.value_scale_min.into(),
        ];
        let kernel = match (self.value_grouping, inputs.f16_loads) {
            (Grouping::PerToken, false) => &ATTENTION_SPLIT_TWO_BIT_TOKENS,
            (Grouping::PerToken, true) => &ATTENTION_SPLIT_TWO_BIT_TOKENS_HALVES,
            (Grouping::PerChannel, false) => &ATTENTION_SPLIT_TWO_BIT_CHANNELS,
            (Grouping::PerChannel, true) => &ATTENTION_SPLIT_TWO_BIT_CHANNELS_HALVES,
        };
        record_split(batch, kernel, (params, grid), inputs, scratch, planes);
    }
}

/// A quantized segment in the VidKV paper's format: 2-bit outlier rows and sign rows
/// (grouped over G tokens, a multiple of 32) and ternary values without STP-protected
/// tokens, the planes `attention_split_signs_trits.wgsl` decodes. It reads the planar query
/// of the queries pass (bound where the other decoders bind the call's query), so no exact
/// segment rides in its dispatch.
pub(super) struct SignsTritsSplit<'a> {
    key_codes: &'a wgpu::Buffer,
    key_scale_min: &'a wgpu::Buffer,
    sign_codes: &'a wgpu::Buffer,
    sign_scales: &'a wgpu::Buffer,
    key_groups: usize,
    trit_codes: &'a wgpu::Buffer,
    trit_scales: &'a wgpu::Buffer,
    trit_groups: usize,
}

impl<'a> SignsTritsSplit<'a> {
    /// The planes of `segment` if its format is this decoder's: packed keys (any split of
    /// outlier and sign rows, not rotated), groups of a multiple of 32 tokens, ternary
    /// values with no STP positions listed, no refinements.
    pub fn of(layer: &LayerGeometry<'_>, segment: &SegmentRef<'a>) -> Option<Self> {
        if layer.layout.rotated.is_some() || layer.group_size % 32 != 0 {
            return None;
        }
        match segment.data {
            SegmentData::Packed(PackedPlanes {
                groups,
                keys:
                    PackedKeyPlanes::Packed {
                        codes: key_codes,
                        scale_min: key_scale_min,
                        sign_codes,
                        sign_scales,
                    },
                values:
                    PackedValuePlanes::Ternary {
                        groups: trit_groups,
                        stp: false,
                        codes,
                        scales,
                        ..
                    },
                refinement: None,
            }) => Some(SignsTritsSplit {
                key_codes,
                key_scale_min,
                sign_codes,
                sign_scales,
                key_groups: *groups,
                trit_codes: codes,
                trit_scales: scales,
                trit_groups: *trit_groups,
            }),
            _ => None,
        }
    }

    /// Records the segment's dispatch, as [`ExactSplit::record_riders`]; `inputs.queries` is the
    /// planar query of the queries pass.
    pub fn record(
        &self,
        batch: &mut Batch<'_>,
        (seg, grid): (Params, (u32, u32)),
        inputs: &SplitInputs<'_>,
        scratch: &Scratch,
    ) {
        let params = Params {
            groups: self.key_groups as u32,
            group_count: self.trit_groups as u32,
            ..seg
        };
        let planes = [
            self.key_codes.into(),
            self.key_scale_min.into(),
            self.sign_codes.into(),
            self.sign_scales.into(),
            self.trit_codes.into(),
            self.trit_scales.into(),
        ];
        let kernel = &ATTENTION_SPLIT_SIGNS_TRITS;
        record_split(batch, kernel, (params, grid), inputs, scratch, planes);
    }
}

/// A quantized segment of rotated per-token keys and values (`rotated`, `rotated-flat`,
/// `rotated-k3v1`): codes of 1 to 3 bits, groups of a multiple of 32 tokens; the planes
/// `attention_split_rotated_tokens.wgsl` decodes (with STP refinements, the dispatch also
/// writes its logits, and the refinement pass follows it). It reads the
/// rotated query and centre terms of the queries pass (bound where the other decoders bind
/// the call's query) and the key and value states from the call's states uniform, so no
/// exact segment rides in its dispatch.
pub(super) struct RotatedTokensSplit<'a> {
    pub keys: &'a RotatedPlanes,
    pub values: &'a RotatedPlanes,
    /// STP refinements: the dispatch then writes its logits, for the refinement pass that
    /// follows it.
    pub refinement: Option<&'a RefinementPlanes>,
}

/// The widest codes the rotated per-token decoder reads (a select tree over eight levels).
const ROTATED_TOKENS_MAX_BITS: u8 = 3;

impl<'a> RotatedTokensSplit<'a> {
    /// The planes of `segment` if its format is this decoder's.
    pub fn of(layer: &LayerGeometry<'_>, segment: &SegmentRef<'a>) -> Option<Self> {
        if layer.group_size % 32 != 0 {
            return None;
        }
        match segment.data {
            SegmentData::Packed(PackedPlanes {
                keys: PackedKeyPlanes::Rotated(keys),
                values: PackedValuePlanes::Rotated(values),
                refinement,
                ..
            }) if keys.tokens == values.tokens
                && keys.states.bits <= ROTATED_TOKENS_MAX_BITS
                && values.states.bits <= ROTATED_TOKENS_MAX_BITS =>
            {
                Some(RotatedTokensSplit {
                    keys,
                    values,
                    refinement: refinement.as_ref(),
                })
            }
            _ => None,
        }
    }

    /// Records the segment's dispatch, as [`ExactSplit::record_riders`]; `inputs.queries` is
    /// the rotated query of the queries pass (with the centre terms after it), `states` the
    /// call's states uniform (`rotated_groups::SharedStates::record_states`).
    pub fn record(
        &self,
        batch: &mut Batch<'_>,
        (seg, grid): (Params, (u32, u32)),
        inputs: &SplitInputs<'_>,
        states: &wgpu::Buffer,
        scratch: &Scratch,
    ) {
        let (keys, values) = (self.keys, self.values);
        let params = Params {
            code_bits: u32::from(keys.states.bits),
            value_code_bits: u32::from(values.states.bits),
            rows: keys.tokens as u32,
            groups: values.groups as u32,
            centre_rows: u32::from(values.means.is_some()),
            stp: self.refinement.map_or(0, |_| scratch.scores_after_stats()),
            ..seg
        };
        let (mean_codes, mean_steps) = values.means_or(&scratch.unused);
        let planes = [
            (&keys.states.table).into(),
            (&values.states.table).into(),
            Bound::range(states, 0, STATES_UNIFORM_BYTES as u64),
            (&keys.codes).into(),
            (&keys.scales).into(),
            (&values.codes).into(),
            (&values.scales).into(),
            mean_codes.into(),
            mean_steps.into(),
        ];
        let kernel = &ATTENTION_SPLIT_ROTATED_TOKENS;
        record_split(batch, kernel, (params, grid), inputs, scratch, planes);
    }
}

/// The riders' bindings of `_exact.wgsl`: their rows (5, 6) and their record (7).
fn rider_bindings<'b>(riders: &FusedExact<'b>) -> [Bound<'b>; 3] {
    [
        riders.keys.into(),
        riders.values.into(),
        Bound::range(riders.records, riders.record, EXACT_RECORD_USED),
    ]
}

/// One dispatch of the skeleton composed with a decoder: the skeleton's bindings (query,
/// visible ranges, the split outputs' (m, l) pairs with the scores after them, and sums),
/// then the decoder's from binding 5 on.
fn record_split<const N: usize>(
    batch: &mut Batch<'_>,
    kernel: &Kernel,
    (params, grid): (Params, (u32, u32)),
    inputs: &SplitInputs<'_>,
    scratch: &Scratch,
    planes: [Bound<'_>; N],
) {
    let mut bound = vec![
        inputs.queries.into(),
        inputs.visible.into(),
        scratch.stats_and_scores(),
        scratch.partial_sums(),
    ];
    bound.extend(planes);
    batch.dispatch_grid_bound(kernel, "main", params, &bound, grid);
}
