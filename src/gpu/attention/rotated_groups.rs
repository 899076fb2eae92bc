//! Attention from codes across tokens ("T2", `shaders/attention_rotated_groups.wgsl`,
//! appended to `attention_rotated.wgsl`): a segment's group records on the GPU and the two
//! dispatches of a call, key scores (one G-point transform of a group's row dots) and value
//! sums (the weights transformed per group, one rotation back per split). The queries are
//! rotated by the base file's `rotate_queries`. The CPU mirror is
//! [`crate::packed::attend`].

use super::rotated::{bindings, RotatedStates};
use super::{row_quads, Scratch};
use crate::error::Result;
use crate::gpu::batch::Batch;
use crate::gpu::context::GpuContext;
use crate::gpu::params::Params;
use crate::gpu::rotated::group_kernel_table;
use crate::gpu::shaders::ATTENTION_ROTATED_GROUPS;
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

    /// The kernel's bindings 1…13.
    fn bindings<'a>(&'a self, scratch: &'a Scratch) -> Vec<&'a wgpu::Buffer> {
        let mut list = bindings(&self.states, None, &scratch.unused, scratch).to_vec();
        list[3] = &self.codes;
        list[4] = &self.scales;
        list.push(&self.widths);
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
    batch.dispatch_grid(
        &ATTENTION_ROTATED_GROUPS,
        "group_scores",
        keys.params(seg),
        &keys.bindings(scratch),
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
    batch.dispatch_grid(
        &ATTENTION_ROTATED_GROUPS,
        "group_values",
        values.params(seg),
        &values.bindings(scratch),
        (splits as u32, row_quads(seg, rows)),
    );
}
