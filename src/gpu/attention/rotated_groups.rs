//! Attention from codes across tokens ("T2"): a segment's group records on the GPU and
//! the dispatches of a call. Where keys and values are both codes across tokens (the
//! default preset), one fused split-K dispatch per segment
//! (`shaders/attention_split_groups.wgsl`, [`record_fused`]; with STP refinements it also
//! writes its logits, from which the refinement pass adds Σ p·r̂); otherwise, or for
//! [`super::Kernels::ThreePass`], two passes of `shaders/attention_rotated_groups.wgsl`
//! (appended to `attention_rotated.wgsl`) around the softmax: key scores (one G-point
//! transform of a group's row dots) and value sums (the weights transformed per group, one
//! rotation back per split), whose queries `attention_rotated.wgsl`'s `rotate_queries`
//! rotates; the fused kernel rotates its block's rows itself and takes the call's exact
//! sinks and window as splits of its own ([`exact_riders`]), within 10 storage buffers
//! (what Chrome allows): the key and value states reach it as one uniform
//! ([`SharedStates::record_states`]) and its partial sums, (m, l) pairs and logits as one
//! binding.
//! The CPU mirror is [`crate::packed::attend`].

use super::planes::{
    LayerGeometry, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, SegmentData, SegmentRef,
};
use super::rotated::{bindings, RotatedStates};
use super::split::{ExactSplit, RotatedTokensSplit};
use super::{row_quads, Scratch};
use crate::error::Result;
use crate::gpu::batch::Batch;
use crate::gpu::binding::Bound;
use crate::gpu::context::GpuContext;
use crate::gpu::params::Params;
use crate::gpu::rotated::group_kernel_table;
use crate::gpu::shaders::{
    Kernel, ATTENTION_ROTATED_GROUPS, ATTENTION_SPLIT_GROUPS, ATTENTION_SPLIT_GROUPS_32,
    ATTENTION_SPLIT_GROUPS_SUBGROUP, ATTENTION_SPLIT_GROUPS_SUBGROUP_ROWS,
    ATTENTION_SPLIT_GROUPS_SUBGROUP_TASKS,
};
use crate::packed::rotated::RotatedState;
use crate::packed::rotated_groups::GroupCodes;
use crate::packed::{PackedHead, PackedKeys, PackedValues};

/// The group records of one quantized segment, all KV heads (keys or values).
pub(crate) struct GroupPlanes {
    /// The group kernel table and every KV head's state (`bits` is unused).
    pub states: RotatedStates,
    pub group_size: usize,
    /// Groups per KV head (the stride of every array).
    pub groups: usize,
    /// Code bits per group.
    pub budget: usize,
    /// `[kv_heads][groups][budget·d/32]`.
    pub codes: wgpu::Buffer,
    /// `[kv_heads][groups][G/4]` scale bytes.
    pub scales: wgpu::Buffer,
    /// `[kv_heads][groups][⌈3G/32⌉]` three-bit row widths.
    pub widths: wgpu::Buffer,
}

impl GroupPlanes {
    /// The across-token keys of a layer's heads.
    pub fn keys(ctx: &GpuContext, heads: &[PackedHead]) -> Result<Self> {
        let codes: Vec<&GroupCodes> = heads
            .iter()
            .map(|h| match &h.keys {
                PackedKeys::RotatedGroups(codes) => codes,
                _ => unreachable!("all heads of a cache share a scheme"),
            })
            .collect();
        Self::upload(ctx, &codes)
    }

    /// The across-token values of a layer's heads.
    pub fn values(ctx: &GpuContext, heads: &[PackedHead]) -> Result<Self> {
        let codes: Vec<&GroupCodes> = heads
            .iter()
            .map(|h| match &h.values {
                PackedValues::RotatedGroups(codes) => codes,
                _ => unreachable!("all heads of a cache share a scheme"),
            })
            .collect();
        Self::upload(ctx, &codes)
    }

    fn upload(ctx: &GpuContext, heads: &[&GroupCodes]) -> Result<Self> {
        let concat = |f: &dyn Fn(&GroupCodes) -> &[u32]| -> Vec<u32> {
            heads.iter().flat_map(|c| f(c).iter().copied()).collect()
        };
        let states: Vec<u32> = heads.iter().flat_map(|c| c.state.to_words()).collect();
        let first = heads[0];
        Ok(GroupPlanes {
            states: RotatedStates {
                bits: 0,
                table: ctx.create_storage("rotated group table", &group_kernel_table())?,
                states: ctx.create_storage("rotated states", &states)?,
            },
            group_size: first.group_size,
            groups: first.groups,
            budget: first.budget,
            codes: ctx.create_storage("group codes", &concat(&|c| &c.codes))?,
            scales: ctx.create_storage("group scales", &concat(&|c| &c.scales))?,
            widths: ctx.create_storage("group widths", &concat(&|c| &c.widths))?,
        })
    }

    /// Bytes of the planes (the states included, the constant table not).
    pub fn bytes(&self) -> u64 {
        self.states.states.size() + self.codes.size() + self.scales.size() + self.widths.size()
    }

    fn params(&self, seg: Params) -> Params {
        Params {
            groups: self.groups as u32,
            group_size: self.group_size as u32,
            code_bits: self.budget as u32,
            ..seg
        }
    }

    /// The kernel's bindings 1…13 for a tile of `rows` query rows.
    fn bindings<'a>(&'a self, scratch: &'a Scratch, rows: usize) -> Vec<Bound<'a>> {
        let mut list = bindings(&self.states, None, &scratch.unused, (scratch, rows)).to_vec();
        list[3] = (&self.codes).into();
        list[4] = (&self.scales).into();
        list.push((&self.widths).into());
        list
    }
}

/// Records the logits of the segment `seg` of across-token keys for the tile's `rows` rows.
pub(super) fn record_scores(
    batch: &mut Batch<'_>,
    keys: &GroupPlanes,
    seg: Params,
    rows: usize,
    scratch: &Scratch,
) {
    let groups = seg.segment_len as usize / keys.group_size;
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED_GROUPS,
        "group_scores",
        keys.params(seg),
        &keys.bindings(scratch, rows),
        (groups as u32, row_quads(seg, rows)),
    );
}

/// Records Σ p·v̂ per split of the segment `seg` of across-token values (`splits` of them).
pub(super) fn record_values(
    batch: &mut Batch<'_>,
    values: &GroupPlanes,
    seg: Params,
    splits: usize,
    rows: usize,
    scratch: &Scratch,
) {
    batch.dispatch_grid_bound(
        &ATTENTION_ROTATED_GROUPS,
        "group_values",
        values.params(seg),
        &values.bindings(scratch, rows),
        (splits as u32, row_quads(seg, rows)),
    );
}

/// Bytes of the fused kernel's uniform binding of the key and value states (`states` in
/// `attention_split_groups.wgsl`): layers of more KV heads than fit take the separate
/// passes.
pub(super) const STATES_UNIFORM_BYTES: usize = 65536;
/// Bytes of the fused kernel's uniform binding of the visible ranges (two u32 per query position): calls
/// of more positions take the separate passes.
pub(super) const VISIBLE_UNIFORM_BYTES: usize = 65536;

/// The key and value planes of a segment that the fused kernel takes: both codes across
/// tokens, with the same groups (with STP refinements, the fused dispatch also writes its
/// logits, for the refinement pass that follows it).
pub(super) fn fused_planes<'a>(
    segment: &SegmentRef<'a>,
) -> Option<(&'a GroupPlanes, &'a GroupPlanes)> {
    match segment.data {
        SegmentData::Packed(PackedPlanes {
            keys: PackedKeyPlanes::RotatedGroups(keys),
            values: PackedValuePlanes::RotatedGroups(values),
            ..
        }) if keys.groups == values.groups && keys.group_size == values.group_size => {
            Some((keys, values))
        }
        _ => None,
    }
}

/// The fused kernel for head_dim `d` and group size `group_size`. With `subgroups`, where
/// the L = d/16 lanes that share a code row fit in the adapter's smallest subgroup: subgroup
/// row reads and row-dot sums (by halving shuffles for L = 8 and 16), and for G = 32 with
/// subgroups of at least 8 invocations the logits and weights phases by 8-invocation
/// clusters. Otherwise the portable kernel, with phases of its own for G = 32. (On llvmpipe
/// a branch never taken still costs its masked run, so each of these is a composition of
/// its own rather than a branch in one kernel.)
pub(super) fn fused_kernel(
    ctx: &GpuContext,
    subgroups: bool,
    d: usize,
    group_size: usize,
) -> &'static Kernel {
    let row_lanes = (d / 16) as u32;
    let min_size = ctx.subgroup_min_size();
    let subgroup_rows = subgroups && row_lanes.is_power_of_two() && row_lanes <= min_size;
    let clusters = min_size >= 8;
    match (subgroup_rows, group_size == 32) {
        (true, true) if clusters && row_lanes >= 8 => &ATTENTION_SPLIT_GROUPS_SUBGROUP,
        (true, true) if clusters => &ATTENTION_SPLIT_GROUPS_SUBGROUP_ROWS,
        (true, _) => &ATTENTION_SPLIT_GROUPS_SUBGROUP_TASKS,
        (false, true) => &ATTENTION_SPLIT_GROUPS_32,
        (false, false) => &ATTENTION_SPLIT_GROUPS,
    }
}

/// The key and value states that a call's rotated split dispatches read from one uniform:
/// the fused kernel over codes across tokens, and the split skeleton's decoder of rotated
/// per-token codes (each such segment's planes carry these states; a segment with other
/// states takes the separate passes).
pub(super) struct SharedStates<'a> {
    keys: &'a RotatedStates,
    values: &'a RotatedStates,
    /// Bytes of the keys' states, and of the values': `[kv_heads][RotatedState::words]`.
    state_bytes: u64,
}

/// The key and value states of `segment` if one of the states-uniform dispatches takes it.
fn uniform_states<'a>(
    layer: &LayerGeometry<'_>,
    segment: &SegmentRef<'a>,
) -> Option<(&'a RotatedStates, &'a RotatedStates)> {
    fused_planes(segment)
        .map(|(keys, values)| (&keys.states, &values.states))
        .or_else(|| {
            RotatedTokensSplit::of(layer, segment).map(|s| (&s.keys.states, &s.values.states))
        })
}

impl<'a> SharedStates<'a> {
    /// The shared states of `call`, or `None` where its segments take the separate passes:
    /// for [`super::Kernels::ThreePass`], where no segment reads them ([`fused_planes`],
    /// [`RotatedTokensSplit::of`]), or where the visible ranges (a uniform of the fused
    /// kernel) or the states do not fit the uniform bindings.
    pub fn plan(ctx: &GpuContext, call: &super::Call<'a, '_>) -> Option<Self> {
        let state_bytes = call.layer.kv_heads * RotatedState::words(call.layer.head_dim) * 4;
        // The uniforms are buffers of the context's own, within its binding cap too.
        let uniform = ctx.max_uniform_binding_bytes().min(ctx.max_data_bytes());
        if call.kernels == super::Kernels::ThreePass
            || call.visible.len() * 8 > VISIBLE_UNIFORM_BYTES
            || uniform < VISIBLE_UNIFORM_BYTES.max(STATES_UNIFORM_BYTES) as u64
            || 2 * state_bytes > STATES_UNIFORM_BYTES
        {
            return None;
        }
        let (keys, values) = call
            .segments
            .iter()
            .find_map(|s| uniform_states(call.layer, s))?;
        Some(SharedStates {
            keys,
            values,
            state_bytes: state_bytes as u64,
        })
    }

    fn shares(&self, (keys, values): (&RotatedStates, &RotatedStates)) -> bool {
        keys.states == self.keys.states && values.states == self.values.states
    }

    /// The key and value planes of `segment` if it takes a fused dispatch.
    pub fn takes(&self, segment: &SegmentRef<'a>) -> Option<(&'a GroupPlanes, &'a GroupPlanes)> {
        fused_planes(segment).filter(|(keys, values)| self.shares((&keys.states, &values.states)))
    }

    /// The planes of `segment` if it takes a rotated per-token split dispatch.
    pub fn takes_tokens(
        &self,
        layer: &LayerGeometry<'_>,
        segment: &SegmentRef<'a>,
    ) -> Option<RotatedTokensSplit<'a>> {
        RotatedTokensSplit::of(layer, segment)
            .filter(|s| self.shares((&s.keys.states, &s.values.states)))
    }

    /// A pooled uniform buffer of [`STATES_UNIFORM_BYTES`] for the states.
    pub fn states_uniform(ctx: &GpuContext) -> Result<std::sync::Arc<wgpu::Buffer>> {
        ctx.buffer("attention fused states", STATES_UNIFORM_BYTES as u64)
    }

    /// Records the copy of the states into `uniform`: the keys' `[kv_heads][d/2 + 1]` words,
    /// then the values' (before the batch's first dispatch, so that no copy splits its
    /// compute pass).
    pub fn record_states(&self, batch: &mut Batch<'_>, uniform: &wgpu::Buffer) {
        let bytes = self.state_bytes;
        batch.copy(&self.keys.states, 0, uniform, 0, bytes);
        batch.copy(&self.values.states, 0, uniform, bytes, bytes);
    }
}

/// The call's buffers the fused kernel binds besides the planes and the scratch: the
/// query (`[q_heads][queries][d]` f32, which it scales and rotates itself), the visible
/// ranges, the states ([`SharedStates::record_states`]) and its exact splits' bindings.
pub(super) struct FusedBuffers<'a> {
    pub queries: &'a wgpu::Buffer,
    pub visible: &'a wgpu::Buffer,
    pub states: &'a wgpu::Buffer,
    pub exact: FusedExact<'a>,
}

/// Bytes between the exact-segment records of a call's fused dispatches in their uniform
/// buffer (256: the largest uniform offset alignment WebGPU allows).
pub(super) const EXACT_RECORD_BYTES: u64 = 256;
/// Bytes of one record: (first position, tokens, first stored row, splits before it) for
/// each of two exact segments (`exact_segments` in `attention_split_groups_riders.wgsl`).
pub(super) const EXACT_RECORD_USED: u64 = 32;

/// The exact segments (sinks, window) that a fused dispatch takes as splits of its own: at
/// most two, stored in one pair of buffers.
pub(super) struct ExactRiders<'a> {
    pub keys: &'a wgpu::Buffer,
    pub values: &'a wgpu::Buffer,
    /// Exact rows per KV head of both buffers.
    pub rows_per_head: usize,
    /// The riders' indices among the call's segments.
    pub segments: Vec<usize>,
}

impl ExactRiders<'_> {
    /// The riders' record for the kernel (see [`EXACT_RECORD_USED`]), given each segment's
    /// splits before it.
    pub fn record(&self, segments: &[SegmentRef<'_>], split_offsets: &[usize]) -> [u32; 8] {
        let mut words = [0; 8];
        for (slot, &i) in self.segments.iter().enumerate() {
            let SegmentData::Exact { first_row, .. } = segments[i].data else {
                unreachable!("riders are exact segments");
            };
            words[4 * slot..][..4].copy_from_slice(&[
                segments[i].start as u32,
                segments[i].len as u32,
                first_row as u32,
                split_offsets[i] as u32,
            ]);
        }
        words
    }

    /// The splits the riders add to the dispatch.
    pub fn splits(&self, segments: &[SegmentRef<'_>], split_tokens: usize) -> usize {
        self.segments
            .iter()
            .map(|&i| segments[i].splits(split_tokens))
            .sum()
    }
}

/// Which exact segments ride in which dispatch, for each of `segments` (`None` for a
/// segment that is no host, or that carries none). The quantized hosts first, in order:
/// each takes the exact segments not yet taken of the pair of buffers that holds most of
/// their tokens, up to two: a [`crate::gpu::attention::GpuLayer`]'s sinks and window (one
/// pair) ride in its one fused dispatch, and so do a `KvCache`'s (one pair too) in its
/// history's (its first, where the binding limit made more chunks). Then each exact host
/// not taken carries itself and the next exact segment of its own pair, so that exact
/// segments that ride nowhere else are one dispatch per pair of buffers.
fn exact_riders<'a>(segments: &[SegmentRef<'a>], hosts: &[bool]) -> Vec<Option<ExactRiders<'a>>> {
    let exact = |i: usize| {
        ExactSplit::of(&segments[i]).map(|rows| (rows.keys, rows.values, rows.rows_per_head))
    };
    let mut taken = vec![false; segments.len()];
    let mut riders: Vec<Option<ExactRiders<'a>>> = (0..segments.len()).map(|_| None).collect();
    let quantized_hosts = (0..segments.len()).filter(|&i| hosts[i] && exact(i).is_none());
    let exact_hosts = (0..segments.len()).filter(|&i| hosts[i] && exact(i).is_some());
    for host in quantized_hosts.chain(exact_hosts) {
        let open = |i: &usize| !taken[*i] && exact(*i).is_some();
        if exact(host).is_some() && !open(&host) {
            continue;
        }
        let tokens_in = |keys: &wgpu::Buffer| -> usize {
            (0..segments.len())
                .filter(open)
                .filter(|&i| exact(i).is_some_and(|(k, _, _)| k == keys))
                .map(|i| segments[i].len)
                .sum()
        };
        // An exact host's riders share its own buffers, which it binds.
        let Some(pair) = exact(host).or_else(|| {
            (0..segments.len())
                .filter(open)
                .filter_map(exact)
                .max_by_key(|(keys, _, _)| tokens_in(keys))
        }) else {
            continue;
        };
        let first = exact(host).map(|_| host);
        let chosen: Vec<usize> = first
            .into_iter()
            .chain(
                (0..segments.len())
                    .filter(open)
                    .filter(|&i| Some(i) != first)
                    .filter(|&i| exact(i).is_some_and(|(k, _, _)| k == pair.0)),
            )
            .take(2)
            .collect();
        for &i in &chosen {
            taken[i] = true;
        }
        riders[host] = Some(ExactRiders {
            keys: pair.0,
            values: pair.1,
            rows_per_head: pair.2,
            segments: chosen,
        });
    }
    riders
}

/// The exact segments of a call that ride in its fused dispatches, and their records.
pub(super) struct RiderPlan<'a> {
    /// For each segment, the riders its fused dispatch carries.
    pub carried: Vec<Option<ExactRiders<'a>>>,
    /// For each segment, whether it rides in another's dispatch.
    pub riding: Vec<bool>,
    /// The record of segment i's riders at byte i · [`EXACT_RECORD_BYTES`] (a uniform).
    pub records: std::sync::Arc<wgpu::Buffer>,
}

impl<'a> RiderPlan<'a> {
    /// The riders of `segments` in the dispatches of the segments flagged in `hosts` (the
    /// fused codes-across-tokens and 2-bit dispatches, and exact segments, which carry
    /// themselves), each segment's splits before it in
    /// `split_offsets`; their records are written to a pooled buffer.
    pub fn new(
        ctx: &GpuContext,
        segments: &[SegmentRef<'a>],
        split_offsets: &[usize],
        hosts: &[bool],
    ) -> Result<Self> {
        let with_riders = hosts.contains(&true);
        let carried = exact_riders(segments, hosts);
        // An exact host carries itself: it rides in no other's dispatch.
        let riding = (0..segments.len())
            .map(|i| {
                carried.iter().enumerate().any(|(host, r)| {
                    host != i && r.as_ref().is_some_and(|r| r.segments.contains(&i))
                })
            })
            .collect();
        let record_words = EXACT_RECORD_BYTES as usize / 4;
        let mut words = vec![
            0u32;
            if with_riders {
                record_words * segments.len()
            } else {
                0
            }
        ];
        for (i, rider) in carried.iter().enumerate() {
            if let Some(rider) = rider {
                words[i * record_words..][..8]
                    .copy_from_slice(&rider.record(segments, split_offsets));
            }
        }
        let records = ctx.buffer("attention exact segments", (words.len() * 4) as u64)?;
        if with_riders {
            ctx.write(&records, 0, &words);
        }
        Ok(RiderPlan {
            carried,
            riding,
            records,
        })
    }
}

/// The exact splits' bindings of a fused dispatch: the riders' rows (or `unused` where it
/// carries none), their record at `record` in the call's record buffer.
pub(super) struct FusedExact<'a> {
    pub keys: &'a wgpu::Buffer,
    pub values: &'a wgpu::Buffer,
    pub rows_per_head: usize,
    pub records: &'a wgpu::Buffer,
    pub record: u64,
}

/// Records the fused split kernel over the segment `seg` (keys and values from
/// [`fused_planes`]) and the exact segments riding in it for the tile's `rows` query rows:
/// one dispatch, grid (the segment's splits and the riders', row blocks).
pub(super) fn record_fused(
    batch: &mut Batch<'_>,
    kernel: &Kernel,
    (keys, values): (&GroupPlanes, &GroupPlanes),
    seg: Params,
    grid: (u32, u32),
    buffers: &FusedBuffers<'_>,
    scratch: &Scratch,
) {
    let exact = &buffers.exact;
    let params = Params {
        value_code_bits: values.budget as u32,
        rows: exact.rows_per_head as u32,
        ..keys.params(seg)
    };
    let bindings = [
        Bound::from(&keys.states.table),
        Bound::range(buffers.visible, 0, VISIBLE_UNIFORM_BYTES as u64),
        Bound::from(buffers.queries),
        Bound::range(buffers.states, 0, STATES_UNIFORM_BYTES as u64),
        Bound::from(&keys.codes),
        Bound::from(&keys.scales),
        Bound::from(&keys.widths),
        Bound::from(&values.codes),
        Bound::from(&values.scales),
        Bound::from(&values.widths),
        Bound::from(&*scratch.partial),
        Bound::range(exact.records, exact.record, EXACT_RECORD_USED),
        Bound::from(exact.keys),
        Bound::from(exact.values),
    ];
    batch.dispatch_grid_bound(kernel, "main", params, &bindings, grid);
}
