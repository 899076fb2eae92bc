//! The packed cache format: quantize, store, dequantize, and account for every bit.
//!
//! A [`PackedCache`] holds one [`PackedHead`] per (layer, KV head), layer-major. Each head
//! splits its tokens by a [`TokenPlan`]: exact f16 sinks, a quantized range in whole
//! groups, and an exact f16 tail (residual window plus any incomplete group). The quantized
//! range is stored in the bit planes of [`planes`]. `docs/FORMAT.md` describes the layout
//! word by word; [`SizeReport`] counts every stored word, metadata included.

pub mod attend;
mod decode;
pub mod planes;
pub mod rotated;
pub mod rotated_groups;
mod size;
pub mod stp;

pub use size::{estimate_size, SizeReport};
use stp::protected_in_range;
pub(crate) use stp::split_value_rows;
pub use stp::ValueSlot;

/// The format name a saved packed cache carries in its metadata ([`PackedCache::to_safetensors`]).
pub const FILE_FORMAT: &str = "vidkv-cache";
/// The file version this library writes (2: rotated values may carry STP refinements).
pub const FILE_VERSION: u32 = 2;
/// The oldest file version this library reads (version 1 files load unchanged).
pub const FILE_OLDEST_VERSION: u32 = 1;

use crate::config::{Grouping, KeyScheme, QuantConfig, TokenPlan, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::reference::rdft::CompactRdft;
use crate::reference::rotation::Rotation;
use crate::reference::split::{
    accumulate_min_max, empty_min_max, outlier_count, split_by_range, ChannelSplit,
};
use crate::tensor::{check_quantizable, Tensor};
use planes::{ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use rotated::{GroupMeans, RotatedRows, RotatedState};
use rotated_groups::GroupCodes;

/// Dimensions of a cache: `[layers, kv_heads, tokens, head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
}

impl CacheShape {
    /// Elements in one of K or V.
    pub fn elements(&self) -> usize {
        self.layers * self.kv_heads * self.tokens * self.head_dim
    }

    /// [`CacheShape::elements`], checked: a typed error when a dimension is 0, or when the
    /// shape is so large that its sizes in bits (64 per element leaves room for every
    /// preset's metadata) would not fit a `usize`.
    pub fn checked_elements(&self) -> Result<usize> {
        let elements = [self.kv_heads, self.tokens, self.head_dim]
            .iter()
            .try_fold(self.layers, |n, &d| n.checked_mul(d))
            .filter(|n| n.checked_mul(64).is_some());
        match elements {
            Some(0) => Err(VidkvError::InvalidConfig(
                "every dimension of the cache shape must be at least 1".into(),
            )),
            Some(n) => Ok(n),
            None => Err(VidkvError::InvalidConfig(format!(
                "a cache of {self:?} is too large to size on this platform"
            ))),
        }
    }
}

/// Keys of the quantized range of one head.
#[derive(Clone, Debug, PartialEq)]
pub enum PackedKeys {
    /// Nothing quantized (`fp16`): every token is in the exact rows.
    Exact,
    /// 2-bit on every channel; rows are channels (per-channel) or tokens (per-token).
    TwoBit {
        grouping: Grouping,
        plane: TwoBitPlane,
    },
    /// VidKV mixed precision.
    Mixed(MixedKeys),
    /// Rotated per-token Lloyd-Max codes ([`rotated`]).
    Rotated(RotatedRows),
    /// Rotated codes across tokens too ([`rotated_groups`]).
    RotatedGroups(GroupCodes),
}

/// VidKV keys: 2-bit outlier channels and 1-bit (optionally DFT-domain) normal channels.
#[derive(Clone, Debug, PartialEq)]
pub struct MixedKeys {
    /// Bit c set when channel c is an outlier; ⌈d/32⌉ words.
    pub outlier_mask: Vec<u32>,
    /// Rows are the outlier channels in ascending order; elements run along tokens.
    pub outliers: TwoBitPlane,
    /// Rows are the compact DFT coefficients of the normal channels (or the normal channels
    /// themselves when `fft` is off); elements run along tokens.
    pub normals: SignPlane,
    pub fft: bool,
}

impl MixedKeys {
    /// The channel split recorded in the mask.
    pub fn split(&self, head_dim: usize) -> ChannelSplit {
        let (outliers, normals) =
            (0..head_dim).partition(|&c| self.outlier_mask[c / 32] >> (c % 32) & 1 == 1);
        ChannelSplit { outliers, normals }
    }
}

/// Values of the quantized range of one head.
#[derive(Clone, Debug, PartialEq)]
pub enum PackedValues {
    /// Nothing quantized (`fp16`).
    Exact,
    /// 2-bit; rows are channels (per-channel) or tokens (per-token).
    TwoBit {
        grouping: Grouping,
        plane: TwoBitPlane,
    },
    /// Ternary per channel over the unprotected tokens (in position order), and 2-bit per
    /// channel over the protected (STP) tokens (in position order).
    Ternary {
        plane: TernaryPlane,
        protected: TwoBitPlane,
    },
    /// Rotated per-token Lloyd-Max codes ([`rotated`]), centred on the per-group means
    /// when `means` is present, else on the per-head mean.
    Rotated {
        rows: RotatedRows,
        means: Option<GroupMeans>,
    },
    /// Rotated codes across tokens too ([`rotated_groups`]).
    RotatedGroups(GroupCodes),
}

/// One (layer, KV head) of a packed cache.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedHead {
    pub plan: TokenPlan,
    pub head_dim: usize,
    /// Exact keys: the sinks, then the tail.
    pub exact_keys: ExactRows,
    /// Exact values: the sinks, then the tail.
    pub exact_values: ExactRows,
    pub keys: PackedKeys,
    pub values: PackedValues,
    /// Under rotated values, the STP refinement of the protected tokens' values (one row
    /// per entry of the cache's protected list, see [`stp`]); `None` without protection.
    pub value_refinement: Option<RotatedRows>,
}

/// A whole quantized K/V cache.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedCache {
    pub shape: CacheShape,
    pub config: QuantConfig,
    /// STP-protected token positions inside the quantized range, ascending, shared by all
    /// layers and heads.
    pub protected: Vec<u32>,
    /// Layer-major: head `(l, h)` is at `l * kv_heads + h`.
    pub heads: Vec<PackedHead>,
}

impl PackedCache {
    /// Quantizes `k` and `v` (`[layers, kv_heads, tokens, head_dim]`).
    ///
    /// `protected` lists STP token positions (ascending, unique, < tokens); positions that
    /// fall in the exact sinks or tail are already exact and are dropped. It must be empty
    /// unless the values are ternary or rotated ([`stp`]).
    pub fn quantize(
        k: &Tensor,
        v: &Tensor,
        config: &QuantConfig,
        protected: &[u32],
    ) -> Result<Self> {
        let Prepared {
            shape,
            plan,
            protected,
        } = prepare(k, v, config, protected)?;
        let head_len = shape.tokens * shape.head_dim;
        let layer_len = shape.kv_heads * head_len;
        let mut heads = Vec::with_capacity(shape.layers * shape.kv_heads);
        for l in 0..shape.layers {
            let k_layer = &k.data[l * layer_len..(l + 1) * layer_len];
            let v_layer = &v.data[l * layer_len..(l + 1) * layer_len];
            heads.extend(quantize_layer(
                k_layer, v_layer, shape, config, plan, &protected,
            ));
        }
        Ok(PackedCache {
            shape,
            config: config.clone(),
            protected,
            heads,
        })
    }

    /// Head `(layer, kv_head)`.
    pub fn head(&self, layer: usize, kv_head: usize) -> &PackedHead {
        &self.heads[layer * self.shape.kv_heads + kv_head]
    }

    /// Dense K̂ and V̂, `[layers, kv_heads, tokens, head_dim]`.
    pub fn dequantize(&self) -> (Tensor, Tensor) {
        let Ok(dense) = self.dense_from_heads(|head| {
            Ok::<_, std::convert::Infallible>((
                head.dequantize_keys(),
                head.dequantize_values(&self.protected),
            ))
        });
        dense
    }

    /// Dense K̂ and V̂ assembled from `dequantize_head`'s keys and values of every head,
    /// in storage order.
    pub(crate) fn dense_from_heads<E>(
        &self,
        mut dequantize_head: impl FnMut(&PackedHead) -> std::result::Result<(Vec<f32>, Vec<f32>), E>,
    ) -> std::result::Result<(Tensor, Tensor), E> {
        let s = self.shape;
        let dims = vec![s.layers, s.kv_heads, s.tokens, s.head_dim];
        let mut k = Vec::with_capacity(s.elements());
        let mut v = Vec::with_capacity(s.elements());
        for head in &self.heads {
            let (keys, values) = dequantize_head(head)?;
            k.extend(keys);
            v.extend(values);
        }
        Ok((
            Tensor {
                shape: dims.clone(),
                data: k,
            },
            Tensor {
                shape: dims,
                data: v,
            },
        ))
    }

    /// Stored bytes and effective bits per element, every word counted.
    pub fn size(&self) -> SizeReport {
        size::measure(self)
    }
}

/// Validated inputs of a quantization: shape, token plan and in-range STP positions.
pub(crate) struct Prepared {
    pub shape: CacheShape,
    pub plan: TokenPlan,
    pub protected: Vec<u32>,
}

/// Checks the configuration, shapes, values and STP list shared by the CPU and GPU paths.
pub(crate) fn prepare(
    k: &Tensor,
    v: &Tensor,
    config: &QuantConfig,
    protected: &[u32],
) -> Result<Prepared> {
    config.validate()?;
    let shape = cache_shape(k, v)?;
    check_quantizable("k", &k.data, &k.shape)?;
    check_quantizable("v", &v.data, &v.shape)?;
    if config.uses_rotation() {
        Rotation::new(shape.head_dim)?;
    }
    let plan = config.plan(shape.tokens);
    let protected = protected_in_range(protected, plan, config)?;
    Ok(Prepared {
        shape,
        plan,
        protected,
    })
}

fn cache_shape(k: &Tensor, v: &Tensor) -> Result<CacheShape> {
    if k.shape.len() != 4 {
        return Err(VidkvError::ShapeMismatch {
            tensor: "k".into(),
            detail: format!(
                "expected [layers, kv_heads, tokens, head_dim], got {:?}",
                k.shape
            ),
        });
    }
    if v.shape != k.shape {
        return Err(VidkvError::ShapeMismatch {
            tensor: "v".into(),
            detail: format!("v has shape {:?} but k has {:?}", v.shape, k.shape),
        });
    }
    let shape = CacheShape {
        layers: k.shape[0],
        kv_heads: k.shape[1],
        tokens: k.shape[2],
        head_dim: k.shape[3],
    };
    if shape.elements() == 0 {
        return Err(VidkvError::EmptyTensor("k".into()));
    }
    Ok(shape)
}

/// The per-head states of the rotated schemes, fixed at a head's first quantization and
/// reused for every later run of the same head (`None` until then, and for other schemes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadStates {
    pub keys: Option<RotatedState>,
    pub values: Option<RotatedState>,
}

/// Quantizes one run of whole groups of one head as a streaming cache does: `k`, `v` are
/// `[n, d]` with n a multiple of the group size; `split` is the frozen key channel split
/// (mixed keys only) and `states` the head's rotated states, fixed by its first run. The
/// result holds only quantized tokens (no exact rows). STP is not taken here.
pub fn quantize_run(
    k: &[f32],
    v: &[f32],
    d: usize,
    config: &QuantConfig,
    split: Option<&ChannelSplit>,
    states: &mut HeadStates,
) -> Result<PackedHead> {
    config.validate()?;
    if config.uses_rotation() {
        Rotation::new(d)?;
    }
    let tokens = k.len() / d.max(1);
    if d == 0 || k.len() != v.len() || k.len() % d != 0 || tokens % config.group_size != 0 {
        return Err(VidkvError::ShapeMismatch {
            tensor: "k/v".into(),
            detail: format!(
                "a run must be whole groups of {} rows of {d} (got {} and {} values)",
                config.group_size,
                k.len(),
                v.len()
            ),
        });
    }
    if matches!(config.keys, KeyScheme::Mixed { .. }) && split.is_none() {
        return Err(VidkvError::InvalidConfig(
            "mixed keys need the frozen channel split".into(),
        ));
    }
    if config.is_fp16() {
        return Err(VidkvError::InvalidConfig(
            "fp16 keeps every token exact: there is no run to quantize".into(),
        ));
    }
    let plan = TokenPlan {
        tokens,
        sinks: 0,
        quantized: tokens,
    };
    Ok(PackedHead {
        plan,
        head_dim: d,
        exact_keys: ExactRows::from_rows(&[], d),
        exact_values: ExactRows::from_rows(&[], d),
        keys: quantize_keys(k, d, config, split, &mut states.keys),
        values: quantize_values(v, d, config, plan, &[], &mut states.values),
        value_refinement: None,
    })
}

/// Quantizes the heads of one layer (`k_layer`, `v_layer`: `[kv_heads, tokens, head_dim]`).
fn quantize_layer(
    k_layer: &[f32],
    v_layer: &[f32],
    shape: CacheShape,
    config: &QuantConfig,
    plan: TokenPlan,
    protected: &[u32],
) -> Vec<PackedHead> {
    let d = shape.head_dim;
    let head_len = shape.tokens * d;
    let range = plan.quantized_start() * d..plan.quantized_end() * d;
    let quantized_rows = |x: &[f32]| x[range.clone()].to_vec();
    let layer_split = match config.keys {
        KeyScheme::Mixed {
            outlier_ratio,
            split: crate::config::SplitGranularity::PerLayer,
            ..
        } => {
            let mut min_max = empty_min_max(d);
            for head in k_layer.chunks_exact(head_len) {
                accumulate_min_max(&quantized_rows(head), d, &mut min_max);
            }
            Some(split_by_range(&min_max, outlier_count(d, outlier_ratio)))
        }
        _ => None,
    };
    k_layer
        .chunks_exact(head_len)
        .zip(v_layer.chunks_exact(head_len))
        .map(|(k_head, v_head)| {
            let mut states = HeadStates::default();
            let keys = quantize_keys(
                &quantized_rows(k_head),
                d,
                config,
                layer_split.as_ref(),
                &mut states.keys,
            );
            let values = quantize_values(
                &quantized_rows(v_head),
                d,
                config,
                plan,
                protected,
                &mut states.values,
            );
            let mut head = PackedHead {
                plan,
                head_dim: d,
                exact_keys: exact_rows(k_head, d, plan),
                exact_values: exact_rows(v_head, d, plan),
                keys,
                values,
                value_refinement: None,
            };
            head.refine(&quantized_rows(v_head), protected, config);
            head
        })
        .collect()
}

fn exact_rows(head: &[f32], d: usize, plan: TokenPlan) -> ExactRows {
    ExactRows::from_rows(&exact_source_rows(head, d, plan), d)
}

/// The rows of a `[tokens, d]` head that stay exact: the sinks, then the tail.
pub(crate) fn exact_source_rows(head: &[f32], d: usize, plan: TokenPlan) -> Vec<f32> {
    let mut rows = head[..plan.sinks * d].to_vec();
    rows.extend_from_slice(&head[plan.quantized_end() * d..]);
    rows
}

/// Columns `channels` of a row-major `[tokens, d]` matrix, as rows `[channels, tokens]`.
fn gather_channels(x: &[f32], d: usize, channels: impl Iterator<Item = usize>) -> Vec<f32> {
    channels
        .flat_map(|c| x.chunks_exact(d).map(move |row| row[c]))
        .collect()
}

fn quantize_keys(
    x: &[f32],
    d: usize,
    config: &QuantConfig,
    layer_split: Option<&ChannelSplit>,
    state: &mut Option<RotatedState>,
) -> PackedKeys {
    let tokens = x.len() / d;
    let g = config.group_size;
    match config.keys {
        KeyScheme::Fp16 => PackedKeys::Exact,
        KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
            grouping,
            plane: two_bit_plane(x, d, grouping, g),
        },
        KeyScheme::Mixed {
            outlier_ratio, fft, ..
        } => {
            let split = layer_split.cloned().unwrap_or_else(|| {
                let mut min_max = empty_min_max(d);
                accumulate_min_max(x, d, &mut min_max);
                split_by_range(&min_max, outlier_count(d, outlier_ratio))
            });
            let mut outlier_mask = vec![0u32; d.div_ceil(32)];
            for &c in &split.outliers {
                outlier_mask[c / 32] |= 1 << (c % 32);
            }
            let outlier_rows = gather_channels(x, d, split.outliers.iter().copied());
            let outliers = TwoBitPlane::quantize(
                &outlier_rows,
                GroupedShape {
                    rows: split.outliers.len(),
                    len: tokens,
                    group_size: g,
                },
            );
            let n = split.normals.len();
            let mut normal_tokens: Vec<f32> = x
                .chunks_exact(d)
                .flat_map(|row| split.normals.iter().map(move |&c| row[c]))
                .collect();
            if fft && n > 0 {
                let rdft = CompactRdft::new(n);
                let mut coefficients = vec![0.0; n];
                for row in normal_tokens.chunks_exact_mut(n) {
                    rdft.forward(row, &mut coefficients);
                    row.copy_from_slice(&coefficients);
                }
            }
            let normal_rows = gather_channels(&normal_tokens, n.max(1), 0..n);
            let normals = SignPlane::quantize(
                &normal_rows,
                GroupedShape {
                    rows: n,
                    len: tokens,
                    group_size: g,
                },
            );
            PackedKeys::Mixed(MixedKeys {
                outlier_mask,
                outliers,
                normals,
                fft,
            })
        }
        KeyScheme::Rotated { bits } => {
            PackedKeys::Rotated(rotated::quantize_head(x, &rotation(d), bits, g, false, state).0)
        }
        KeyScheme::RotatedGroups { bits } => PackedKeys::RotatedGroups(
            rotated_groups::quantize_head(x, &rotation(d), bits, g, state),
        ),
    }
}

/// The rotation of a head_dim that [`prepare`] or [`quantize_run`] checked.
fn rotation(d: usize) -> Rotation {
    Rotation::new(d).expect("the head_dim was checked")
}

fn two_bit_plane(x: &[f32], d: usize, grouping: Grouping, group_size: usize) -> TwoBitPlane {
    let tokens = x.len() / d;
    match grouping {
        Grouping::PerChannel => TwoBitPlane::quantize(
            &gather_channels(x, d, 0..d),
            GroupedShape {
                rows: d,
                len: tokens,
                group_size,
            },
        ),
        Grouping::PerToken => TwoBitPlane::quantize(
            x,
            GroupedShape {
                rows: tokens,
                len: d,
                group_size,
            },
        ),
    }
}

fn quantize_values(
    x: &[f32],
    d: usize,
    config: &QuantConfig,
    plan: TokenPlan,
    protected: &[u32],
    state: &mut Option<RotatedState>,
) -> PackedValues {
    let g = config.group_size;
    match config.values {
        ValueScheme::Fp16 => PackedValues::Exact,
        ValueScheme::TwoBit { grouping } => PackedValues::TwoBit {
            grouping,
            plane: two_bit_plane(x, d, grouping, g),
        },
        ValueScheme::Ternary { gamma, scale } => {
            let (plain_rows, kept_rows) = split_value_rows(x, d, plan, protected);
            PackedValues::Ternary {
                plane: TernaryPlane::quantize(
                    &gather_channels(&plain_rows, d, 0..d),
                    GroupedShape {
                        rows: d,
                        len: plain_rows.len() / d,
                        group_size: g,
                    },
                    gamma,
                    scale,
                ),
                protected: TwoBitPlane::quantize(
                    &gather_channels(&kept_rows, d, 0..d),
                    GroupedShape {
                        rows: d,
                        len: kept_rows.len() / d,
                        group_size: g,
                    },
                ),
            }
        }
        ValueScheme::Rotated { bits, group_means } => {
            let (rows, means) =
                rotated::quantize_head(x, &rotation(d), bits, g, group_means, state);
            PackedValues::Rotated { rows, means }
        }
        ValueScheme::RotatedGroups { bits } => PackedValues::RotatedGroups(
            rotated_groups::quantize_head(x, &rotation(d), bits, g, state),
        ),
    }
}

impl PackedHead {
    /// Whether keys or values are stored in a rotated scheme.
    pub fn uses_rotation(&self) -> bool {
        matches!(
            self.keys,
            PackedKeys::Rotated(_) | PackedKeys::RotatedGroups(_)
        ) || matches!(
            self.values,
            PackedValues::Rotated { .. } | PackedValues::RotatedGroups(_)
        )
    }

    /// The head_dim rotation of the rotated schemes (checked when the head was made).
    pub fn rotation(&self) -> Rotation {
        rotation(self.head_dim)
    }

    /// Positions of the exact rows, in storage order (sinks, then tail).
    pub fn exact_positions(&self) -> impl Iterator<Item = usize> {
        (0..self.plan.sinks).chain(self.plan.quantized_end()..self.plan.tokens)
    }
}
