//! The GPU attention kernels on 16-invocation subgroups (lavapipe built for 512-bit
//! vectors; tests/common/subgroup_widths.rs says how and why), against the CPU reference:
//! a d = 256 row's 16 lanes fill a subgroup (the 16-lane steps of the row reads and of
//! `_dots8`), d = 128 and 64 rows share one, and the 8-invocation clusters run inside
//! wider subgroups.

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
fn sixteen_invocation_subgroups_match_the_cpu() {
    subgroup_widths::every_case_on_vectors_of(512);
}
