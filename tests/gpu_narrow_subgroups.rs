//! The GPU attention kernels on 4-invocation subgroups (lavapipe built for 128-bit
//! vectors; tests/common/subgroup_widths.rs says how and why), against the CPU reference:
//! no 8-invocation cluster fits, so the G = 32 phases of d = 64 go through the task file
//! with subgroup row reads, and d = 128 and 256 (L = 8, 16) take the portable kernel.

#[path = "common/noise.rs"]
mod noise;

#[path = "common/gpu.rs"]
mod gpu_context;

#[path = "common/attention.rs"]
mod attention;

#[path = "common/subgroup_widths.rs"]
mod subgroup_widths;

/// The only test in this binary (see subgroup_widths).
#[test]
fn four_invocation_subgroups_match_the_cpu() {
    subgroup_widths::every_case_on_vectors_of(128);
}
