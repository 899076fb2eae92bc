//! What the GPU attention tests share: the presets, random K/V/Q, and `check`, which runs
//! every kernel path on a packed cache against the CPU reference. The including test binary
//! declares the modules `noise` (common/noise.rs) and `gpu_context` (common/gpu.rs).

use super::gpu_context::gpu;
use super::noise;

use vidkv::config::ROTATED_PRESET_NAMES;
use vidkv::gpu::attention::{attend_with, GpuLayer, Kernels};
use vidkv::reference::attention::attend_dense;
use vidkv::report::relative_l2;
use vidkv::{PackedCache, Tensor, PRESET_NAMES};

/// Every preset: the plain ones and the rotated ones (per token and across tokens).
pub fn gpu_presets() -> Vec<&'static str> {
    PRESET_NAMES
        .iter()
        .chain(&ROTATED_PRESET_NAMES)
        .copied()
        .collect()
}

/// GPU attention of every layer against the reference; returns the worst relative error.
pub fn check(cache: &PackedCache, q: &Tensor, visible: &[(u32, u32)], what: &str) -> f64 {
    let ctx = gpu();
    let shape = cache.shape;
    let (k_hat, v_hat) = cache.dequantize();
    let (q_heads, queries, d) = (q.dim(1), q.dim(2), q.dim(3));
    let head_len = shape.tokens * d;
    let mut worst = 0.0f64;
    for layer in 0..shape.layers {
        let gpu_layer = GpuLayer::upload(ctx, cache, layer).unwrap();
        let q_layer = &q.data[layer * q_heads * queries * d..(layer + 1) * q_heads * queries * d];
        // The fast paths the adapter offers, the portable kernels, and the three passes that
        // preceded the fused split kernels (exact and 2-bit segments), always all.
        let outputs: Vec<(Kernels, Vec<f32>)> =
            [Kernels::Fastest, Kernels::Portable, Kernels::ThreePass]
                .into_iter()
                .map(|k| {
                    (
                        k,
                        attend_with(ctx, &gpu_layer, q_layer, q_heads, visible, k).unwrap(),
                    )
                })
                .collect();
        for qh in 0..q_heads {
            let h = qh / (q_heads / shape.kv_heads);
            let at = (layer * shape.kv_heads + h) * head_len;
            for (m, &(lo, hi)) in visible.iter().enumerate() {
                let row = (qh * queries + m) * d;
                let mask: Vec<bool> = (0..shape.tokens)
                    .map(|t| (lo as usize..hi as usize).contains(&t))
                    .collect();
                let expected = attend_dense(
                    &q_layer[row..row + d],
                    &k_hat.data[at..at + head_len],
                    &v_hat.data[at..at + head_len],
                    &mask,
                );
                for (kernels, out) in &outputs {
                    let err = relative_l2(&out[row..row + d], &expected);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-4,
                        "{what} ({kernels:?}): layer {layer} head {qh} query {m}: relative error {err}"
                    );
                }
            }
        }
    }
    worst
}

/// The GPU attention tests' K/V/Q ([`noise::structured_noise`]).
pub fn random_tensor(shape: [usize; 4], seed: u64, scale: f32) -> Tensor {
    noise::structured_noise(
        shape,
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        3,
        (9, 2.0),
        scale,
    )
}
