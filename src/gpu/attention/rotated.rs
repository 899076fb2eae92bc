//! Attention from rotated per-token codes (`shaders/attention_rotated.wgsl` with its
//! `tokens` variant): a segment's planes on the GPU, and the three dispatches of a call —
//! the query rotation (in place of `attention_queries` when the keys are rotated, per-token
//! or across tokens), key scores and value sums, and the STP refinement sums of protected
//! tokens ([`RefinementPlanes`]). The CPU mirror is
//! [`crate::packed::attend`].

use super::{row_blocks, row_quads, Scratch};
use crate::error::Result;
use crate::gpu::batch::Batch;
use crate::gpu::binding::Bound;
use crate::gpu::context::GpuContext;
use crate::gpu::params::Params;
use crate::gpu::rotated::kernel_table;
use crate::gpu::shaders::ATTENTION_ROTATED;
use crate::packed::rotated::{GroupMeans, RotatedRows};
use crate::packed::{PackedHead, PackedKeys, PackedValues};

/// The per-head side of rotated codes: the codebook's kernel table and every KV head's
/// [`crate::packed::rotated::RotatedState`] (`[kv_heads][d/2 + 1]` words).
#[derive(Clone)]
pub(crate) struct RotatedStates {
    pub bits: u8,
    pub table: wgpu::Buffer,
    pub states: wgpu::Buffer,
}

/// Rotated per-token rows of one quantized segment, all KV heads (keys or values).
pub(crate) struct RotatedPlanes {
    pub states: RotatedStates,
    /// Token rows per KV head (the stride of `codes` and `scales`).
    pub tokens: usize,
    /// Groups per KV head of the group means (0 without them).
    pub groups: usize,
    /// `[kv_heads][tokens][⌈bits·d/32⌉]`.
    pub codes: wgpu::Buffer,
    /// `[kv_heads][⌈tokens/4⌉]` scale bytes.
    pub scales: wgpu::Buffer,
    /// Values with group means: their codes `[kv_heads][groups][⌈d/10⌉]` and steps
    /// `[kv_heads][⌈groups/2⌉]`.
    pub means: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl RotatedPlanes {
    /// The rotated keys of a layer's heads.
    pub fn keys(ctx: &GpuContext, heads: &[PackedHead]) -> Result<Self> {
        let rows: Vec<&RotatedRows> = heads
            .iter()
            .map(|h| match &h.keys {
                PackedKeys::Rotated(rows) => rows,
                _ => unreachable!("all heads of a cache share a scheme"),
            })
            .collect();
        Self::upload(ctx, &rows, None)
    }

    /// The rotated values of a layer's heads.
    pub fn values(ctx: &GpuContext, heads: &[PackedHead]) -> Result<Self> {
        let (rows, means): (Vec<&RotatedRows>, Vec<Option<&GroupMeans>>) = heads
            .iter()
            .map(|h| match &h.values {
                PackedValues::Rotated { rows, means } => (rows, means.as_ref()),
                _ => unreachable!("all heads of a cache share a scheme"),
            })
            .unzip();
        let means: Option<Vec<&GroupMeans>> = means.into_iter().collect();
        Self::upload(ctx, &rows, means.as_deref())
    }

    fn upload(
        ctx: &GpuContext,
        rows: &[&RotatedRows],
        means: Option<&[&GroupMeans]>,
    ) -> Result<Self> {
        let concat = |f: &dyn Fn(&RotatedRows) -> &[u32]| -> Vec<u32> {
            rows.iter().flat_map(|r| f(r).iter().copied()).collect()
        };
        let states: Vec<u32> = rows.iter().flat_map(|r| r.state.to_words()).collect();
        let means_buffers = match means {
            Some(means) => {
                let codes: Vec<u32> = means.iter().flat_map(|m| m.codes.clone()).collect();
                let steps: Vec<u32> = means.iter().flat_map(|m| m.steps.clone()).collect();
                Some((
                    ctx.create_storage("group mean codes", &codes)?,
                    ctx.create_storage("group mean steps", &steps)?,
                ))
            }
            None => None,
        };
        Ok(RotatedPlanes {
            states: RotatedStates {
                bits: rows[0].bits,
                table: ctx.create_storage("rotated table", &kernel_table(rows[0].bits))?,
                states: ctx.create_storage("rotated states", &states)?,
            },
            tokens: rows[0].tokens,
            groups: means.map_or(0, |m| m[0].groups),
            codes: ctx.create_storage("rotated codes", &concat(&|r| &r.codes))?,
            scales: ctx.create_storage("rotated scales", &concat(&|r| &r.scales))?,
            means: means_buffers,
        })
    }

    /// Bytes of the planes (the states included, the constant table not).
    pub fn bytes(&self) -> u64 {
        self.states.states.size()
            + self.codes.size()
            + self.scales.size()
            + self.means.as_ref().map_or(0, |(c, s)| c.size() + s.size())
    }

    /// The group means' codes and steps, or `unused` for both where the planes have none.
    pub fn means_or<'a>(
        &'a self,
        unused: &'a wgpu::Buffer,
    ) -> (&'a wgpu::Buffer, &'a wgpu::Buffer) {
        self.means
            .as_ref()
            .map_or((unused, unused), |(c, s)| (c, s))
    }

    fn params(&self, seg: Params) -> Params {
        Params {
            rows: self.tokens as u32,
            groups: self.groups as u32,
            code_bits: u32::from(self.states.bits),
            centre_rows: u32::from(self.means.is_some()),
            ..seg
        }
    }
}

/// STP refinements of one quantized segment's protected tokens (rotated values,
/// [`crate::packed::stp`]): their per-token rows, all KV heads, and where they sit.
pub(crate) struct RefinementPlanes {
    /// One row per protected token, in list order (`tokens` = the list's length).
    pub rows: RotatedPlanes,
    /// Per split of the segment its `[first, end)` refinement rows, then each row's
    /// position relative to the segment's start.
    pub positions: wgpu::Buffer,
}

impl RefinementPlanes {
    /// The refinements of a layer's heads over the segment of `len` tokens from `start`,
    /// where `protected` (ascending, inside the segment) is the STP list; `None` when the
    /// heads carry none.
    pub fn upload(
        ctx: &GpuContext,
        heads: &[PackedHead],
        protected: &[u32],
        (start, len): (usize, usize),
    ) -> Result<Option<Self>> {
        let rows: Option<Vec<&RotatedRows>> =
            heads.iter().map(|h| h.value_refinement.as_ref()).collect();
        let Some(rows) = rows.filter(|r| !r.is_empty() && r[0].tokens > 0) else {
            return Ok(None);
        };
        let relative: Vec<u32> = protected.iter().map(|&p| p - start as u32).collect();
        let split_tokens = ctx.split_tokens();
        let mut list = Vec::with_capacity(2 * len.div_ceil(split_tokens) + relative.len());
        for split in 0..len.div_ceil(split_tokens) {
            let before = |t: usize| relative.partition_point(|&r| (r as usize) < t) as u32;
            list.push(before(split * split_tokens));
            list.push(before((split + 1) * split_tokens));
        }
        list.extend(&relative);
        Ok(Some(RefinementPlanes {
            rows: RotatedPlanes::upload(ctx, &rows, None)?,
            positions: ctx.create_storage("refinement positions", &list)?,
        }))
    }

    /// Bytes of the rows and the position list.
    pub fn bytes(&self) -> u64 {
        self.rows.bytes() + self.positions.size()
    }
}

/// The kernel's bindings 1…12 (see the shader header) for a tile of `rows` query rows; what
/// an entry point does not use is bound to `scratch.unused`.
pub(super) fn bindings<'a>(
    states: &'a RotatedStates,
    planes: Option<&'a RotatedPlanes>,
    q: &'a wgpu::Buffer,
    (scratch, rows): (&'a Scratch, usize),
) -> [Bound<'a>; 12] {
    let unused = &*scratch.unused;
    let (codes, scales) = planes.map_or((unused, unused), |p| (&p.codes, &p.scales));
    let (mean_codes, mean_steps) = planes.map_or((unused, unused), |p| p.means_or(unused));
    [
        q.into(),
        (&states.table).into(),
        (&states.states).into(),
        codes.into(),
        scales.into(),
        mean_codes.into(),
        mean_steps.into(),
        (&*scratch.natural).into(),
        scratch.rotated_rows(rows),
        scratch.centre_terms(rows),
        scratch.scores(),
        scratch.partial_sums(),
    ]
}

/// Records the rotation of the tile's `rows` query rows against the key `states`:
/// `natural` gets q/√d, `planar` (q/√d)·Rot and `centre_terms` (q/√d)·m. Every rotated
/// kernel runs one workgroup row per quad of query rows that share a KV head.
pub(super) fn record_queries(
    batch: &mut Batch<'_>,
    states: &RotatedStates,
    q: &wgpu::Buffer,
    tile: Params,
    rows: usize,
    scratch: &Scratch,
) {
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED,
        "rotate_queries",
        Params {
            code_bits: u32::from(states.bits),
            ..tile
        },
        &bindings(states, None, q, (scratch, rows)),
        (1, row_quads(tile, rows)),
    );
}

/// Records the logits of the segment `seg` of rotated keys for the tile's `rows` rows.
pub(super) fn record_scores(
    batch: &mut Batch<'_>,
    keys: &RotatedPlanes,
    seg: Params,
    rows: usize,
    scratch: &Scratch,
) {
    let blocks = (seg.segment_len as usize).div_ceil(crate::gpu::params::WORKGROUP_SIZE as usize);
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED,
        "key_scores",
        keys.params(seg),
        &bindings(&keys.states, Some(keys), &scratch.unused, (scratch, rows)),
        (blocks as u32, row_quads(seg, rows)),
    );
}

/// Records Σ p·v̂ per split of the segment `seg` of rotated values (`splits` of them).
pub(super) fn record_values(
    batch: &mut Batch<'_>,
    values: &RotatedPlanes,
    seg: Params,
    splits: usize,
    rows: usize,
    scratch: &Scratch,
) {
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED,
        "value_sums",
        values.params(seg),
        &bindings(
            &values.states,
            Some(values),
            &scratch.unused,
            (scratch, rows),
        ),
        (splits as u32, row_quads(seg, rows)),
    );
}

/// Records the addition of Σ p·r̂ over each split's protected tokens to the split's value
/// sums (after [`record_values`] or the group kernel wrote them). `weights` says what the
/// scores hold: [`RefinementWeights::Softmax`] after the separate passes, or
/// [`RefinementWeights::Logits`] after a fused or split dispatch that wrote its masked
/// logits, which the pass weighs against each split's m itself (no softmax pass). A
/// workgroup serves two quads of query rows of a KV head (up to 8 rows), each refinement
/// code decoded once for them.
pub(super) fn record_refinement(
    batch: &mut Batch<'_>,
    refinement: &RefinementPlanes,
    (seg, weights): (Params, RefinementWeights),
    splits: usize,
    rows: usize,
    scratch: &Scratch,
) {
    let planes = &refinement.rows;
    let mut list = bindings(
        &planes.states,
        Some(planes),
        &scratch.unused,
        (scratch, rows),
    )
    .to_vec();
    let stp = match weights {
        RefinementWeights::Softmax => 0,
        RefinementWeights::Logits => {
            // Binding 11 (the scores) reaches back over the (m, l) pairs.
            list[10] = scratch.stats_and_scores();
            2 * scratch.scores_after_stats()
        }
    };
    list.push((&refinement.positions).into());
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED,
        "refinement_sums",
        Params {
            stp,
            ..planes.params(seg)
        },
        &list,
        (splits as u32, row_blocks(seg, rows)),
    );
}

// `refinement_sums` finds the refinement codes' levels by select, for codes of 1 or 2 bits.
const _: () = assert!(crate::packed::stp::REFINEMENT_BITS <= 2);

/// What the scores hold when the STP refinement pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefinementWeights {
    /// The split softmax's weights (the separate passes).
    Softmax,
    /// A fused or split dispatch's masked logits, with each split's (m, l) before them.
    Logits,
}
