//! The subgroup kernels on 16-invocation subgroups, against the CPU reference (≤ 1e-4, guard
//! words checked, the fast, portable and three-pass kernels each): the shapes where a row's
//! lanes fill a whole subgroup of 16 (d = 256: the 16-lane steps of the row reads and of
//! `_dots8`), where two or four rows share one (d = 128, 64), and the 8-invocation clusters
//! inside wider subgroups. Lavapipe's subgroups are as wide as its vectors, 8 invocations
//! at its default 256 bits, so this binary asks it for 512-bit vectors
//! (`LP_NATIVE_VECTOR_WIDTH=512`, which LLVM splits where the CPU lacks AVX-512) before
//! the driver loads; on lavapipe the test fails if the subgroups are still narrower than
//! 16. On other adapters it runs the same cases on the adapter's own subgroups and says so.
//! Mesa's shader cache is off for this process (`MESA_SHADER_CACHE_DISABLE`): its keys do
//! not include the vector width, so with it on this test ran the 8-wide code that the other
//! test binaries had cached for the same shaders (and failed at d = 256), and the 16-wide
//! code it cached made later 256-bit runs of those shaders three times slower.

#[path = "common/noise.rs"]
mod noise;

#[path = "common/gpu.rs"]
mod gpu_context;

#[path = "common/attention.rs"]
mod attention;

use attention::{check, gpu_presets, random_tensor};
use gpu_context::gpu;

use vidkv::{PackedCache, QuantConfig};

/// One test in this binary, so that nothing has loaded the Vulkan driver before the
/// variable is set.
#[test]
fn sixteen_invocation_subgroups_match_the_cpu() {
    std::env::set_var("LP_NATIVE_VECTOR_WIDTH", "512");
    std::env::set_var("MESA_SHADER_CACHE_DISABLE", "true");
    let ctx = gpu();
    let (name, size) = (ctx.adapter_name(), ctx.subgroup_min_size());
    if name.contains("llvmpipe") {
        assert!(
            ctx.uses_subgroups() && size >= 16,
            "{name}: subgroups of {size} invocations with LP_NATIVE_VECTOR_WIDTH=512; the \
             16-invocation paths would not run"
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
