//! The uniform parameter block every kernel reads at binding 0, and the 1-D workgroup size.
//!
//! `src/gpu/shaders/tests.rs` reflects `Params` in `shaders/common.wgsl` with naga and checks that
//! its members and offsets equal this struct's.

use bytemuck::{Pod, Zeroable};

/// Invocations per workgroup of every 1-D kernel (`WORKGROUP_SIZE` in `common.wgsl`).
pub const WORKGROUP_SIZE: u32 = 64;

/// The uniform parameter block of every kernel (`Params` in `common.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub width: u32,
    pub rows: u32,
    pub len: u32,
    pub group_size: u32,
    pub groups: u32,
    pub group_offset: u32,
    pub group_count: u32,
    pub row_offset: u32,
    pub invocations: u32,
    pub gamma: f32,
    pub scale_rule: u32,
    pub dft_len: u32,
    pub outliers: u32,
    pub blocks: u32,
    pub block_tokens: u32,
    pub block_offset: u32,
    pub kv_heads: u32,
    pub rows_per_head: u32,
    pub queries: u32,
    pub tile_rows: u32,
    pub segment_start: u32,
    pub segment_len: u32,
    pub split_offset: u32,
    pub split_size: u32,
    pub total_splits: u32,
    pub segment_first: u32,
    /// Whether values carry an STP position list; for the fused decode kernels, where they
    /// write their logits for the STP refinement pass (0: nowhere): an f32 index of the
    /// fused kernel's split outputs, a vec2 index of the split skeleton's stats binding.
    pub stp: u32,
    pub scale: f32,
    pub code_bits: u32,
    pub centre_rows: u32,
    /// Code bits per group of the values where one kernel reads keys and values of codes
    /// across tokens (`code_bits` is then the keys').
    pub value_code_bits: u32,
    /// The fused decode kernel: the f32 index at which the (m, l) pairs start in its split
    /// outputs, after the partial sums.
    pub stats_offset: u32,
}
