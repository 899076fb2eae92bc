//! A [`KvCache`] as a [`PackedCache`] and back: its runs read back and laid out as one run per
//! head, or a packed cache's planes uploaded as one run per layer.

use super::runs::{RunArray, RunReads, StoredRun};
use super::{Chunk, KvCache, ModelShape};
use crate::config::{Grouping, KeyScheme, TokenPlan, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::upload_planes;
use crate::gpu::GpuContext;
use crate::packed::planes::{ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::{CacheShape, MixedKeys, PackedCache, PackedHead, PackedKeys, PackedValues};

/// Where a head's quantized planes are read from: the stored runs, the words read back
/// from them, the key split's channel order (order, outliers, fft) and how many protected
/// tokens the runs hold.
#[derive(Clone, Copy)]
pub(super) struct RunSource<'a> {
    pub reads: &'a RunReads,
    pub runs: &'a [StoredRun<'a>],
    pub order: Option<&'a (Vec<u32>, usize, bool)>,
    pub protected: usize,
}

impl KvCache {
    /// The cache as a [`PackedCache`] (every layer must hold the same number of tokens):
    /// the planes are read back from the GPU and laid out as one run per head.
    pub fn to_packed(&self) -> Result<PackedCache> {
        let tokens = self.len(0);
        if tokens == 0 || self.layers.iter().any(|l| l.tokens != tokens) {
            return Err(VidkvError::InvalidConfig(
                "saving needs every layer to hold the same, non-zero number of tokens".into(),
            ));
        }
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let plan = self.config.plan(tokens);
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        let mut heads = Vec::with_capacity(self.shape.layers * h);
        let mut protected = Vec::new();
        for state in &self.layers {
            if state.prefill.as_ref().is_some_and(|(_, p)| *p > 0)
                && !state.chunks.is_empty()
                && matches!(self.config.values, ValueScheme::Ternary { .. })
            {
                return Err(VidkvError::InvalidConfig(
                    "a ternary cache with STP-protected tokens and groups quantized after the \
                     prefill has no single-run packed form (save it with KvCache::save)"
                        .into(),
                ));
            }
            if let Some((chunk, _)) = &state.prefill {
                let end = chunk.start + chunk.groups * g;
                protected = self
                    .protected
                    .iter()
                    .copied()
                    .filter(|&p| (chunk.start..end).contains(&(p as usize)))
                    .collect();
            }
            let runs: Vec<StoredRun<'_>> = state
                .prefill
                .iter()
                .map(|(c, _)| StoredRun::of(c, true))
                .chain(state.chunks.iter().map(|c| StoredRun::of(c, false)))
                .collect();
            let heads_of = self.heads();
            let exact_words = |rows: std::ops::Range<usize>, keys: bool| -> Result<Vec<Vec<u32>>> {
                match &state.exact {
                    Some(store) => store.read_heads(ctx, heads_of, rows, keys),
                    None => Ok(vec![Vec::new(); h]),
                }
            };
            let (sink_keys, sink_values) = if self.config.is_fp16() {
                (vec![Vec::new(); h], vec![Vec::new(); h])
            } else {
                (
                    exact_words(0..plan.sinks, true)?,
                    exact_words(0..plan.sinks, false)?,
                )
            };
            let fp16_rows = |keys: bool| -> Result<Vec<Vec<u32>>> {
                let mut out = vec![Vec::new(); h];
                for (store, used) in &state.exact_chunks {
                    let read = store.read_heads(ctx, heads_of, 0..*used, keys)?;
                    for (head, rows) in read.into_iter().enumerate() {
                        out[head].extend(rows);
                    }
                }
                Ok(out)
            };
            let (fp16_keys, fp16_values) = if self.config.is_fp16() {
                (fp16_rows(true)?, fp16_rows(false)?)
            } else {
                (vec![Vec::new(); h], vec![Vec::new(); h])
            };
            let order = match &state.layout {
                Some(layout)
                    if layout.normals > 0
                        || matches!(self.config.keys, KeyScheme::Mixed { .. }) =>
                {
                    Some((
                        ctx.read_words(&layout.order, h * d)?,
                        layout.outliers,
                        layout.fft,
                    ))
                }
                _ => None,
            };
            let window = self.sink_rows()..self.sink_rows() + state.window_rows;
            let (window_keys, window_values) = (
                exact_words(window.clone(), true)?,
                exact_words(window, false)?,
            );
            let reads = RunReads::read(ctx, &runs)?;
            for head in 0..h {
                let mut exact_keys = sink_keys[head].clone();
                let mut exact_values = sink_values[head].clone();
                exact_keys.extend(&fp16_keys[head]);
                exact_values.extend(&fp16_values[head]);
                exact_keys.extend(&window_keys[head]);
                exact_values.extend(&window_values[head]);
                heads.push(self.packed_head(
                    plan,
                    head,
                    (exact_keys, exact_values),
                    RunSource {
                        reads: &reads,
                        runs: &runs,
                        order: order.as_ref(),
                        protected: protected.len(),
                    },
                )?);
            }
        }
        Ok(PackedCache {
            shape: CacheShape {
                layers: self.shape.layers,
                kv_heads: h,
                tokens,
                head_dim: d,
            },
            config: self.config.clone(),
            protected,
            heads,
        })
    }

    /// The packed planes of `head`: its exact rows (keys, values) and its quantized groups
    /// read from `source`.
    pub(super) fn packed_head(
        &self,
        plan: TokenPlan,
        head: usize,
        (exact_keys, exact_values): (Vec<u32>, Vec<u32>),
        source: RunSource<'_>,
    ) -> Result<PackedHead> {
        let RunSource {
            reads,
            runs,
            order,
            protected,
        } = source;
        let (d, g) = (self.shape.head_dim, self.config.group_size);
        let nq = plan.quantized;
        let shape = |rows, len| GroupedShape {
            rows,
            len,
            group_size: g,
        };
        let wpg2 = TwoBitPlane::words_per_group(g);
        let keys = match self.config.keys {
            KeyScheme::Fp16 => PackedKeys::Exact,
            KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
                grouping,
                plane: TwoBitPlane {
                    shape: shape(d, nq),
                    codes: reads.rows(RunArray::KeyCodes, runs, head, d, wpg2),
                    params: reads.rows(RunArray::KeyParams, runs, head, d, 1),
                },
            },
            KeyScheme::Mixed { .. } => {
                let (order, k, fft) = order
                    .ok_or_else(|| VidkvError::InvalidConfig("no channel split to save".into()))?;
                let mut outlier_mask = vec![0u32; d.div_ceil(32)];
                for &c in &order[head * d..head * d + k] {
                    outlier_mask[c as usize / 32] |= 1 << (c % 32);
                }
                let n = d - k;
                PackedKeys::Mixed(MixedKeys {
                    outlier_mask,
                    outliers: TwoBitPlane {
                        shape: shape(*k, nq),
                        codes: reads.rows(RunArray::KeyCodes, runs, head, *k, wpg2),
                        params: reads.rows(RunArray::KeyParams, runs, head, *k, 1),
                    },
                    normals: SignPlane {
                        shape: shape(n, nq),
                        codes: reads.rows(
                            RunArray::SignCodes,
                            runs,
                            head,
                            n,
                            SignPlane::words_per_group(g),
                        ),
                        scales: reads.rows(RunArray::SignScales, runs, head, n.div_ceil(2), 1),
                    },
                    fft: *fft,
                })
            }
            KeyScheme::Rotated { .. } => {
                PackedKeys::Rotated(reads.rotated(true, runs, head, d, g).0)
            }
            KeyScheme::RotatedGroups { .. } => {
                PackedKeys::RotatedGroups(reads.across(true, runs, head, d, g))
            }
        };
        let values = match self.config.values {
            ValueScheme::Fp16 => PackedValues::Exact,
            ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            } => PackedValues::TwoBit {
                grouping: Grouping::PerChannel,
                plane: TwoBitPlane {
                    shape: shape(d, nq),
                    codes: reads.rows(RunArray::ValueCodes, runs, head, d, wpg2),
                    params: reads.rows(RunArray::ValueParams, runs, head, d, 1),
                },
            },
            ValueScheme::TwoBit {
                grouping: Grouping::PerToken,
            } => {
                let cg = d.div_ceil(g);
                PackedValues::TwoBit {
                    grouping: Grouping::PerToken,
                    plane: TwoBitPlane {
                        shape: GroupedShape {
                            rows: nq,
                            len: d,
                            group_size: g,
                        },
                        codes: reads.token_rows(RunArray::ValueCodes, runs, head, g, cg * wpg2),
                        params: reads.token_rows(RunArray::ValueParams, runs, head, g, cg),
                    },
                }
            }
            ValueScheme::Rotated { .. } => {
                let (rows, means) = reads.rotated(false, runs, head, d, g);
                PackedValues::Rotated { rows, means }
            }
            ValueScheme::RotatedGroups { .. } => {
                PackedValues::RotatedGroups(reads.across(false, runs, head, d, g))
            }
            ValueScheme::Ternary { .. } => {
                let plain = shape(d, nq - protected);
                let (kept_codes, kept_params) = reads.kept(head, protected, d, g)?;
                PackedValues::Ternary {
                    plane: TernaryPlane {
                        shape: plain,
                        codes: reads.rows(
                            RunArray::ValueCodes,
                            runs,
                            head,
                            d.div_ceil(5),
                            TernaryPlane::words_per_record(g),
                        ),
                        scales: reads.rows(RunArray::ValueParams, runs, head, d.div_ceil(2), 1),
                    },
                    protected: TwoBitPlane {
                        shape: shape(d, protected),
                        codes: kept_codes,
                        params: kept_params,
                    },
                }
            }
        };
        Ok(PackedHead {
            plan,
            head_dim: d,
            exact_keys: ExactRows {
                rows: plan.exact(),
                width: d,
                data: exact_keys,
            },
            exact_values: ExactRows {
                rows: plan.exact(),
                width: d,
                data: exact_values,
            },
            keys,
            values,
            value_refinement: if protected > 0 {
                reads.refinement(head, protected, d)
            } else {
                None
            },
        })
    }

    /// A cache holding the contents of `packed` (the model has `q_heads` query heads).
    /// Quantized tokens become one stored run per layer; later tokens go to new chunks.
    pub fn from_packed(packed: &PackedCache, q_heads: usize, gpu: &GpuContext) -> Result<Self> {
        let s = packed.shape;
        let shape = ModelShape {
            layers: s.layers,
            q_heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
        };
        let mut cache = KvCache::new(shape, packed.config.clone(), gpu)?;
        let (h, g) = (s.kv_heads, packed.config.group_size);
        let plan = packed.config.plan(s.tokens);
        cache.protected = packed.protected.clone();
        for l in 0..s.layers {
            let heads = &packed.heads[l * h..(l + 1) * h];
            let keys: Vec<Vec<u32>> = heads
                .iter()
                .map(|head| head.exact_keys.data.clone())
                .collect();
            let values: Vec<Vec<u32>> = heads
                .iter()
                .map(|head| head.exact_values.data.clone())
                .collect();
            cache.restore_exact(l, s.tokens, &keys, &values)?;
            if plan.quantized > 0 {
                let (layout, planes) = upload_planes(gpu, heads, &packed.protected, g)?;
                let planes = planes.expect("quantized tokens have planes");
                let state = &mut cache.layers[l];
                state.layout = Some(layout);
                state.states = crate::gpu::incremental::LayerStates::of_planes(&planes);
                state.quantized = plan.quantized;
                state.prefill = Some((
                    Chunk {
                        start: plan.quantized_start(),
                        groups: plan.quantized / g,
                        capacity: plan.quantized / g,
                        growable: false,
                        planes,
                    },
                    packed.protected.len(),
                ));
            }
        }
        Ok(cache)
    }
}
