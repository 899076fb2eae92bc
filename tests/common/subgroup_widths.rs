//! The GPU attention cases of the subgroup-width tests: every preset at d = 256 and 128 and
//! the default at d = 64 and G = 16 against the CPU reference (`attention::check`: ≤ 1e-4,
//! guard words, the fast, portable and three-pass kernels each), on lavapipe built for
//! vectors of another width. Lavapipe's subgroups are as wide as its vectors (8 invocations
//! at its default 256 bits); `LP_NATIVE_VECTOR_WIDTH` sets the width (LLVM splits vectors
//! wider than the CPU's). Mesa's shader cache is off for the process
//! (`MESA_SHADER_CACHE_DISABLE`): its keys do not include the width, so with it on such a
//! run executed the 8-wide code that other test binaries had cached for the same shaders
//! (and failed at d = 256), and the code it cached made later 256-bit runs of those shaders
//! three times slower. The including binary declares `attention`, `gpu_context` and
//! `noise`, and has no other test: nothing may load the driver before the variables are set.

use super::attention::{check, gpu_presets, random_tensor};
use super::gpu_context::gpu;

use vidkv::{PackedCache, QuantConfig};

/// Runs the cases on lavapipe with `bits`-bit vectors (subgroups of bits / 32 invocations;
/// the test fails if lavapipe's subgroups come out otherwise). On another adapter the cases
/// run on its own subgroups, and the test says so.
pub fn every_case_on_vectors_of(bits: u32) {
    std::env::set_var("LP_NATIVE_VECTOR_WIDTH", bits.to_string());
    std::env::set_var("MESA_SHADER_CACHE_DISABLE", "true");
    let ctx = gpu();
    let (name, size) = (ctx.adapter_name(), ctx.subgroup_min_size());
    if name.contains("llvmpipe") {
        assert!(
            ctx.uses_subgroups() && size == bits / 32,
            "{name}: subgroups of {size} invocations with LP_NATIVE_VECTOR_WIDTH={bits}"
        );
    } else {
        eprintln!("{name}: the adapter's own subgroups (at least {size} invocations)");
    }
    let (tokens, kv_heads, gqa, queries) = (1_500, 2, 7, 2);
    let visible = [(0, tokens as u32), (5, tokens as u32 - 70)];
    // (group size None: the preset's own.)
    let case = |d: usize, group_size: Option<usize>, presets: &[&str], seed: u64| {
        let k = random_tensor([1, kv_heads, tokens, d], seed, 1.0);
        let v = random_tensor([1, kv_heads, tokens, d], seed ^ 7, 1.0);
        let q = random_tensor([1, kv_heads * gqa, queries, d], seed ^ 11, 0.6);
        for preset in presets {
            let mut config = QuantConfig::preset(preset).unwrap();
            if let Some(group_size) = group_size {
                config.residual = config.residual / config.group_size * group_size;
                config.group_size = group_size;
            }
            let cache = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
            let what = format!(
                "{preset} d={d} G={}, subgroups of {size}",
                config.group_size
            );
            let worst = check(&cache, &q, &visible, &what);
            eprintln!("{what}: worst relative error {worst:.2e}");
        }
    };
    case(256, None, &gpu_presets(), 61);
    case(128, None, &gpu_presets(), 62);
    case(64, None, &["vidkv"], 63);
    case(128, Some(16), &["vidkv"], 64);
}
