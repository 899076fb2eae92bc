//! Synthetic K/V/Q for the GPU-vs-CPU tests: xorshift64 noise with a per-channel spread and
//! outlier channels, like real caches.

use vidkv::Tensor;

/// `[shape]` values: element i of channel c is scale·(u·(1 + c mod `spread`) + `outlier`
/// where c is a multiple of `period`), u uniform in [−½, ½) from xorshift64 started at
/// `state`.
pub fn structured_noise(
    shape: [usize; 4],
    mut state: u64,
    spread: usize,
    (period, outlier): (usize, f32),
    scale: f32,
) -> Tensor {
    let data = (0..shape.iter().product::<usize>())
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let channel = i % shape[3];
            scale
                * (noise * (1.0 + (channel % spread) as f32)
                    + if channel % period == 0 { outlier } else { 0.0 })
        })
        .collect();
    Tensor::new("x", shape.to_vec(), data).unwrap()
}
