//! Property tests: packing round trips, quantizer bounds and thresholds, the DFT key path
//! for every supported head_dim, the compressed-domain attention, and the size estimate.

use approx::assert_relative_eq;
use proptest::prelude::*;

use vidkv::config::ROTATED_PRESET_NAMES;
use vidkv::config::{
    Grouping, KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme,
};
use vidkv::packed::attend::{attend_packed, packed_logits};
use vidkv::packed::planes::{GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use vidkv::packed::stp::takes_protection;
use vidkv::packed::{estimate_size, PackedCache, PackedKeys};
use vidkv::reference::attention::attend_dense;
use vidkv::reference::quantizers::{quantize_2bit, quantize_sign, quantize_ternary};
use vidkv::report::relative_l2;
use vidkv::{Tensor, PRESET_NAMES};

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// A `[rows, len]` matrix with a group size, as (data, shape).
fn grouped_matrix() -> impl Strategy<Value = (Vec<f32>, GroupedShape)> {
    (
        1usize..7,
        1usize..90,
        prop::sample::select(vec![8usize, 16, 32, 64]),
    )
        .prop_flat_map(|(rows, len, group_size)| {
            (
                prop::collection::vec(-8.0f32..8.0, rows * len),
                Just(GroupedShape {
                    rows,
                    len,
                    group_size,
                }),
            )
        })
}

fn groups_of(data: &[f32], shape: GroupedShape) -> impl Iterator<Item = (usize, usize, &[f32])> {
    (0..shape.rows).flat_map(move |r| {
        (0..shape.groups()).map(move |g| {
            let range = shape.group_range(g);
            (
                r,
                g,
                &data[r * shape.len + range.start..r * shape.len + range.end],
            )
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn two_bit_pack_unpack_is_exact_and_bounded((data, shape) in grouped_matrix()) {
        let plane = TwoBitPlane::quantize(&data, shape);
        plane.validate().unwrap();
        for (r, g, group) in groups_of(&data, shape) {
            let mut codes = vec![0u8; group.len()];
            let p = quantize_2bit(group, &mut codes);
            let stored = plane.params(r, g);
            prop_assert_eq!(stored.scale, f16_round(p.scale));
            prop_assert_eq!(stored.min, f16_round(p.min));
            for (i, (&c, &x)) in codes.iter().zip(group).enumerate() {
                let at = g * shape.group_size + i;
                prop_assert_eq!(plane.code(r, at), c);
                // The exact-math bound |x − x̂| ≤ scale/2 ...
                let x_hat = f32::from(c) * p.scale + p.min;
                prop_assert!((x - x_hat).abs() <= p.scale / 2.0 * (1.0 + 1e-5) + 1e-6);
                // ... and with the stored f16 metadata, plus its rounding.
                let slack = (p.min - stored.min).abs() + 3.0 * (p.scale - stored.scale).abs();
                prop_assert!((x - plane.value(r, at)).abs() <= p.scale / 2.0 + slack + 1e-5);
            }
        }
    }

    #[test]
    fn sign_codes_follow_the_sign((data, shape) in grouped_matrix()) {
        let plane = SignPlane::quantize(&data, shape);
        plane.validate().unwrap();
        for (r, g, group) in groups_of(&data, shape) {
            let mut codes = vec![0u8; group.len()];
            let s = quantize_sign(group, &mut codes);
            prop_assert_eq!(plane.scale(r, g), f16_round(s));
            for (i, &x) in group.iter().enumerate() {
                let at = g * shape.group_size + i;
                prop_assert_eq!(plane.code(r, at), u8::from(x >= 0.0));
                prop_assert_eq!(plane.value(r, at), if x >= 0.0 { f16_round(s) } else { -f16_round(s) });
            }
        }
    }

    #[test]
    fn ternary_codes_follow_their_thresholds(
        (data, shape) in grouped_matrix(),
        gamma in 0.0f32..1.5,
        least_squares in any::<bool>(),
    ) {
        let rule = if least_squares { TernaryScale::LeastSquares } else { TernaryScale::AbsMean };
        let plane = TernaryPlane::quantize(&data, shape, gamma, rule);
        plane.validate().unwrap();
        for (r, g, group) in groups_of(&data, shape) {
            let mut trits = vec![0i8; group.len()];
            let s = quantize_ternary(group, gamma, rule, &mut trits);
            prop_assert_eq!(plane.scale(r, g), f16_round(s));
            let mean = group.iter().fold(0.0f32, |s, v| s + v.abs()) / group.len() as f32;
            let alpha = gamma * mean;
            for (i, &x) in group.iter().enumerate() {
                let at = g * shape.group_size + i;
                let expected = if x > alpha { 1 } else if x < -alpha { -1 } else { 0 };
                prop_assert_eq!(plane.trit(r, at), expected);
                prop_assert_eq!(trits[i], expected);
            }
        }
    }
}

fn config(name: &str, group_size: usize, sinks: usize, residual: usize) -> QuantConfig {
    let mut c = QuantConfig::preset(name).unwrap();
    c.group_size = group_size;
    c.sinks = sinks;
    c.residual = residual;
    c
}

fn tensor(shape: [usize; 4], seed: u64) -> Tensor {
    // A deterministic mix of smooth structure, channel outliers and noise.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut data = Vec::with_capacity(shape.iter().product());
    for i in 0..shape.iter().product::<usize>() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
        let c = i % shape[3];
        let t = (i / shape[3]) % shape[2];
        let outlier = if c % 7 == 3 { 4.0 } else { 1.0 };
        data.push(outlier * ((t as f32 * 0.05 + c as f32).sin() + noise));
    }
    Tensor::new("x", shape.to_vec(), data).unwrap()
}

#[test]
fn dft_key_path_reconstructs_for_every_head_dim() {
    for d in [64usize, 80, 96, 112, 128, 256] {
        let k = tensor([1, 1, 64, d], d as u64);
        let mut cfg = config("vidkv-paper", 32, 0, 0);
        let cache = PackedCache::quantize(&k, &k, &cfg, &[]).unwrap();
        let PackedKeys::Mixed(mixed) = &cache.heads[0].keys else {
            panic!("mixed keys expected")
        };
        let split = mixed.split(d);
        let n = split.normals.len();
        assert_eq!(n, d / 2);
        // Inverse DFT of the dequantized coefficients, by the dense formula of spec §4.4.
        let (k_hat, _) = cache.dequantize();
        for t in 0..64 {
            let c: Vec<f64> = (0..n)
                .map(|j| f64::from(mixed.normals.value(j, t)))
                .collect();
            for (m, &channel) in split.normals.iter().enumerate() {
                let mut x = c[0];
                if n % 2 == 0 {
                    x += if m % 2 == 0 { c[n - 1] } else { -c[n - 1] };
                }
                for j in 1..=(n - 1) / 2 {
                    let angle = 2.0 * std::f64::consts::PI * (j * m) as f64 / n as f64;
                    x += 2.0 * (c[2 * j - 1] * angle.cos() - c[2 * j] * angle.sin());
                }
                x /= n as f64;
                assert_relative_eq!(
                    k_hat.data[t * d + channel],
                    x as f32,
                    epsilon = 1e-5,
                    max_relative = 1e-4
                );
            }
        }
        // Turning the FFT off must change the reconstruction and worsen it on smooth data.
        cfg.keys = KeyScheme::Mixed {
            outlier_ratio: 0.5,
            fft: false,
            split: SplitGranularity::PerHead,
        };
        let plain = PackedCache::quantize(&k, &k, &cfg, &[])
            .unwrap()
            .dequantize()
            .0;
        assert_ne!(plain.data, k_hat.data);
    }
}

fn all_configs() -> Vec<QuantConfig> {
    let mut configs: Vec<QuantConfig> = PRESET_NAMES.iter().map(|n| config(n, 32, 1, 32)).collect();
    configs.push(QuantConfig {
        keys: KeyScheme::Mixed {
            outlier_ratio: 0.25,
            fft: true,
            split: SplitGranularity::PerLayer,
        },
        values: ValueScheme::TwoBit {
            grouping: Grouping::PerChannel,
        },
        ..config("vidkv-tuned", 16, 3, 0)
    });
    configs.extend(ROTATED_PRESET_NAMES.iter().map(|n| config(n, 32, 1, 32)));
    configs.push(QuantConfig {
        keys: KeyScheme::Rotated { bits: 4 },
        values: ValueScheme::Ternary {
            gamma: 0.7,
            scale: TernaryScale::LeastSquares,
        },
        ..config("vidkv-tuned", 16, 0, 16)
    });
    configs.push(QuantConfig {
        keys: KeyScheme::TwoBit {
            grouping: Grouping::PerChannel,
        },
        values: ValueScheme::Rotated {
            bits: 3,
            group_means: true,
        },
        ..config("vidkv-tuned", 64, 2, 0)
    });
    configs
}

#[test]
fn packed_attention_equals_dequantize_then_attend() {
    for (case, (d, tokens, kv_heads)) in [
        (64usize, 300usize, 2usize),
        (80, 97, 1),
        (96, 1, 1),
        (112, 64, 3),
        (128, 250, 1),
        (160, 130, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let k = tensor([2, kv_heads, tokens, d], case as u64);
        let v = tensor([2, kv_heads, tokens, d], 100 + case as u64);
        let q = tensor([1, 1, 3, d], 200 + case as u64);
        for cfg in all_configs() {
            let protected: Vec<u32> = if takes_protection(&cfg.values) {
                (5..tokens as u32).step_by(7).collect()
            } else {
                Vec::new()
            };
            let cache = PackedCache::quantize(&k, &v, &cfg, &protected).unwrap();
            let (k_hat, v_hat) = cache.dequantize();
            let head_len = tokens * d;
            for (index, head) in cache.heads.iter().enumerate() {
                let kh = &k_hat.data[index * head_len..(index + 1) * head_len];
                let vh = &v_hat.data[index * head_len..(index + 1) * head_len];
                for query in q.data.chunks_exact(d) {
                    let dense_logits: Vec<f32> = kh
                        .chunks_exact(d)
                        .map(|k| k.iter().zip(query).map(|(a, b)| a * b).sum())
                        .collect();
                    let logits = packed_logits(head, query);
                    assert!(
                        relative_l2(&logits, &dense_logits) < 1e-5,
                        "{cfg:?}: logits differ"
                    );
                    let visible: Vec<bool> = (0..tokens).map(|t| t % 5 != 4 || t == 0).collect();
                    let dense = attend_dense(query, kh, vh, &visible);
                    let packed = attend_packed(head, &cache.protected, query, &visible);
                    let err = relative_l2(&packed, &dense);
                    assert!(
                        err < 1e-5,
                        "{cfg:?} d={d} tokens={tokens}: relative error {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn size_estimate_equals_the_stored_size() {
    for (d, tokens) in [(64usize, 512usize), (80, 333), (128, 1000), (96, 31)] {
        let k = tensor([2, 2, tokens, d], 7);
        for cfg in all_configs() {
            let protected: Vec<u32> = if takes_protection(&cfg.values) {
                (40..tokens as u32).step_by(3).collect()
            } else {
                Vec::new()
            };
            let cache = PackedCache::quantize(&k, &k, &cfg, &protected).unwrap();
            let estimate = estimate_size(cache.shape, &cfg, cache.protected.len());
            assert_eq!(estimate, cache.size(), "{cfg:?} d={d} tokens={tokens}");
        }
    }
}

#[test]
fn vidkv_preset_stays_within_2_2_bits_on_a_16k_cache() {
    let qwen2_7b = vidkv::CacheShape {
        layers: 28,
        kv_heads: 4,
        tokens: 16384,
        head_dim: 128,
    };
    let size = estimate_size(qwen2_7b, &QuantConfig::preset("vidkv-tuned").unwrap(), 0);
    assert!(
        size.all_bits() <= 2.2,
        "vidkv stores {} bits per element",
        size.all_bits()
    );
    let paper = estimate_size(qwen2_7b, &QuantConfig::preset("vidkv-paper").unwrap(), 0);
    assert!(
        (paper.key_bits() - 2.25).abs() < 0.01,
        "{}",
        paper.key_bits()
    );
}
