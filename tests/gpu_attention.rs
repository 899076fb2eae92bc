//! Fused GPU attention on the packed cache against the CPU reference attention over the
//! dequantized cache: relative error ≤ 1e-4 per output row, on the real dev files for every
//! preset and on generated cases (head_dim 64–256, GQA 1/2/3/7, M = 1…64, contexts 1…20k),
//! a 512-position frame and a 128k context (`tests/gpu_wide_subgroups.rs` and
//! `tests/gpu_narrow_subgroups.rs` run the kernels on subgroups of 16 and 4 invocations).
//! The output is read back with its guard words checked. Every case runs with the fast
//! paths the adapter offers (subgroups on lavapipe) and with the portable kernels. The
//! presets include the rotated ones (per-token keys and values with and without group
//! means, and codes across tokens), alone and mixed with the other schemes.

#[path = "common/noise.rs"]
mod noise;

#[path = "common/data.rs"]
mod data;

#[path = "common/gpu.rs"]
mod gpu_context;

#[path = "common/attention.rs"]
mod attention;

use attention::{check, gpu_presets, random_tensor};
use gpu_context::{gpu, timed_passes};

use data::shared_sample;

use proptest::prelude::*;

use vidkv::config::QuantConfig;
use vidkv::gpu::attention::{attend_with, GpuLayer, Kernels};
use vidkv::gpu::{GpuContext, GpuOptions};
use vidkv::packed::stp::takes_protection;
use vidkv::report::relative_l2;
use vidkv::PackedCache;

#[test]
fn real_dev_files_for_every_preset() {
    for file in ["smollm2_text_dev", "dinov2_video_dev"] {
        let sample = shared_sample(file);
        let tokens = sample.k.dim(2);
        let visible: Vec<(u32, u32)> = sample
            .q_positions
            .iter()
            .map(|&p| {
                let (lo, hi) = sample.mask.visible_range(p, tokens).unwrap();
                (lo as u32, hi as u32)
            })
            .collect();
        for preset in gpu_presets() {
            let cache = PackedCache::quantize(
                &sample.k,
                &sample.v,
                &QuantConfig::preset(preset).unwrap(),
                &[],
            )
            .unwrap();
            let worst = check(&cache, &sample.q, &visible, &format!("{file} {preset}"));
            eprintln!("{file} {preset}: worst relative error {worst:.2e}");
        }
        let protected: Vec<u32> = (3..tokens as u32).step_by(5).collect();
        for preset in ["vidkv-tuned", "vidkv", "rotated"] {
            let cache = PackedCache::quantize(
                &sample.k,
                &sample.v,
                &QuantConfig::preset(preset).unwrap(),
                &protected,
            )
            .unwrap();
            let worst = check(&cache, &sample.q, &visible, &format!("{file} {preset}+STP"));
            eprintln!("{file} {preset}+STP: worst relative error {worst:.2e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20))]

    #[test]
    fn generated_cases(
        d in prop::sample::select(vec![64usize, 80, 96, 112, 128, 256]),
        kv_heads in 1usize..3,
        gqa in prop::sample::select(vec![1usize, 2, 3, 7]),
        queries in 1usize..65,
        tokens in 1usize..20_000,
        preset in prop::sample::select(gpu_presets()),
        sinks in 0usize..6,
        residual_groups in 0usize..4,
        causal in any::<bool>(),
        stp in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Bound the CPU reference's work.
        let tokens = tokens.min(6_000_000 / (d * kv_heads * gqa * queries)).max(1);
        let k = random_tensor([1, kv_heads, tokens, d], seed, 1.0);
        let v = random_tensor([1, kv_heads, tokens, d], seed ^ 7, 1.0);
        let q = random_tensor([1, kv_heads * gqa, queries, d], seed ^ 11, 0.6);
        let mut config = QuantConfig::preset(preset).unwrap();
        config.sinks = sinks;
        config.residual = residual_groups * config.group_size;
        let protected: Vec<u32> = if stp && takes_protection(&config.values) {
            (0..tokens as u32).filter(|t| t % 6 == 1).collect()
        } else {
            Vec::new()
        };
        let cache = PackedCache::quantize(&k, &v, &config, &protected).unwrap();
        let visible: Vec<(u32, u32)> = (0..queries)
            .map(|m| {
                if causal {
                    let end = tokens - (m * 37) % tokens;
                    (0, end as u32)
                } else {
                    ((m * 13 % tokens) as u32 / 2, tokens as u32)
                }
            })
            .collect();
        check(&cache, &q, &visible, &format!("{preset} d={d} kv={kv_heads} gqa={gqa} M={queries} T={tokens} S={sinks} R={}", config.residual));
    }
}

/// Rotated keys (per token, across tokens) with ternary values, and 2-bit keys with rotated
/// values (with group means, across tokens), on a head_dim that is not a power of two,
/// GQA 3 and a partial last split.
#[test]
fn rotated_halves_mix_with_the_other_schemes() {
    let (tokens, d, kv_heads, gqa, queries) = (2_345, 96, 2, 3, 4);
    let k = random_tensor([1, kv_heads, tokens, d], 31, 1.0);
    let v = random_tensor([1, kv_heads, tokens, d], 32, 1.0);
    let q = random_tensor([1, kv_heads * gqa, queries, d], 33, 0.6);
    let rotated = QuantConfig::preset("rotated").unwrap();
    let mut rotated_keys = QuantConfig::preset("vidkv-tuned").unwrap();
    rotated_keys.keys = rotated.keys;
    let mut rotated_values = QuantConfig::preset("kivi2").unwrap();
    rotated_values.values = rotated.values;
    let across = QuantConfig::preset("rotated-groups-k2.5v1.5").unwrap();
    let mut across_keys = QuantConfig::preset("vidkv-tuned").unwrap();
    across_keys.keys = across.keys;
    let mut across_values = QuantConfig::preset("kivi2").unwrap();
    across_values.values = across.values;
    let visible: Vec<(u32, u32)> = (0..queries)
        .map(|m| (0, (tokens - 300 * m) as u32))
        .collect();
    for (what, config) in [
        ("rotated keys + ternary values", rotated_keys),
        ("2-bit keys + rotated values", rotated_values),
        ("across-token keys + ternary values", across_keys),
        ("2-bit keys + across-token values", across_values),
    ] {
        let cache = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        check(&cache, &q, &visible, what);
    }
}

/// A frame of 512 query positions: 2,048 query rows, more than one tile of the fused
/// kernel's uniform query binding holds, each position seeing its own causal prefix; on the
/// default preset (codes across tokens), `kivi2` (the 2-bit decoder with its exact tail
/// riding), `vidkv-tuned` (the signs-and-trits decoder after the queries pass), `rotated`
/// (the rotated per-token decoder after the query rotation) and fp16 (the exact decoder).
#[test]
fn a_512_position_frame() {
    let (tokens, d, kv_heads, gqa, queries) = (700, 64, 2, 2, 512);
    let k = random_tensor([1, kv_heads, tokens, d], 41, 1.0);
    let v = random_tensor([1, kv_heads, tokens, d], 42, 1.0);
    let q = random_tensor([1, kv_heads * gqa, queries, d], 43, 0.6);
    let visible: Vec<(u32, u32)> = (0..queries)
        .map(|m| (0, (tokens - queries + 1 + m) as u32))
        .collect();
    for preset in ["vidkv", "kivi2", "vidkv-tuned", "rotated", "fp16"] {
        let config = QuantConfig::preset(preset).unwrap();
        let cache = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        check(&cache, &q, &visible, &format!("{preset} M=512"));
    }
}

/// Group sizes other than 32. The default preset: the fused kernel's transforms across
/// tokens then run as butterflies in workgroup memory, with 1 to 16 groups per tile, on the
/// subgroup (d = 128) and portable (d = 80) row sums. `kivi2`: groups of 64 and 128 tokens
/// go through the 2-bit row decoder (a lane's 32 tokens a slice of one group), groups of 8
/// and 16 through the three passes; `k2v2-channel` the same with values per channel;
/// `vidkv-tuned` and `vidkv-paper` the same through the signs-and-trits decoder (d = 80:
/// sixteen whole trit bytes; d = 128: a last byte of three channels); `rotated` and
/// `rotated-k3v1` the same through the rotated per-token decoder (d = 80: rotation blocks of
/// 64 and 16 channels, the sums rotated back block by block; group means per 64 or 128
/// tokens).
#[test]
fn group_sizes_other_than_32() {
    for preset in [
        "vidkv",
        "kivi2",
        "k2v2-channel",
        "vidkv-tuned",
        "vidkv-paper",
        "rotated",
        "rotated-k3v1",
    ] {
        for (group_size, d) in [(8, 128), (16, 80), (64, 128), (128, 80)] {
            let (tokens, kv_heads, gqa, queries) = (1_000, 2, 7, 2);
            let k = random_tensor([1, kv_heads, tokens, d], 51, 1.0);
            let v = random_tensor([1, kv_heads, tokens, d], 52, 1.0);
            let q = random_tensor([1, kv_heads * gqa, queries, d], 53, 0.6);
            let mut config = QuantConfig::preset(preset).unwrap();
            config.residual = config.residual / config.group_size * group_size;
            config.group_size = group_size;
            let cache = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
            let visible = [(0, tokens as u32), (3, tokens as u32 - 40)];
            check(
                &cache,
                &q,
                &visible,
                &format!("{preset} G={group_size} d={d}"),
            );
        }
    }
}

#[test]
fn a_128k_context_stays_stable() {
    let tokens = 131_072;
    let k = random_tensor([1, 1, tokens, 64], 3, 1.0);
    let v = random_tensor([1, 1, tokens, 64], 4, 1.0);
    let q = random_tensor([1, 2, 1, 64], 5, 1.0);
    for preset in ["vidkv-tuned", "kivi2", "vidkv"] {
        let cache =
            PackedCache::quantize(&k, &v, &QuantConfig::preset(preset).unwrap(), &[]).unwrap();
        check(&cache, &q, &[(0, tokens as u32)], &format!("128k {preset}"));
    }
}

/// Tiles of query rows that start and end inside a KV head's rows (a small binding cap forces
/// them) give the same outputs as one tile: the row quads of the ternary value kernel and of
/// the rotated value and STP refinement kernels are masked to the tile and the head. Under
/// a cap of 48 KB the rotated kernels' 64 KB states uniform does not fit, so they take the
/// separate passes; under 80 KB the split and fused dispatches run in tiles too.
#[test]
fn tiles_that_split_a_kv_head_match_one_tile() {
    // The default preset's group codes (55 KB) need the larger cap.
    for (cap, default_preset) in [(48 * 1024, false), (80 * 1024, true)] {
        let capped = GpuContext::new(&GpuOptions {
            max_binding_bytes: Some(cap),
            ..GpuOptions::default()
        })
        .unwrap();
        tiles_match_one_tile(&capped, default_preset);
    }
}

fn tiles_match_one_tile(capped: &GpuContext, default_preset: bool) {
    let (tokens, d, kv_heads) = (1500, 64, 2);
    for (gqa, queries) in [(2usize, 5usize), (7, 3)] {
        let q_heads = kv_heads * gqa;
        let k = random_tensor([1, kv_heads, tokens, d], 21, 1.0);
        let v = random_tensor([1, kv_heads, tokens, d], 22, 1.0);
        let q = random_tensor([1, q_heads, queries, d], 23, 0.6);
        let visible: Vec<(u32, u32)> = (0..queries)
            .map(|m| (0, (tokens - 100 * m) as u32))
            .collect();
        let protected: Vec<u32> = (0..tokens as u32).filter(|t| t % 9 == 4).collect();
        for (preset, stp) in [
            ("vidkv-tuned", &protected[..]),
            ("vidkv-paper", &[][..]),
            ("rotated", &protected[..]),
            ("rotated", &[][..]),
            ("vidkv", &protected[..]),
        ]
        .into_iter()
        .filter(|(preset, _)| default_preset || *preset != "vidkv")
        {
            let config = QuantConfig::preset(preset).unwrap();
            let cache = PackedCache::quantize(&k, &v, &config, stp).unwrap();
            let whole = GpuLayer::upload(gpu(), &cache, 0).unwrap();
            let tiled = GpuLayer::upload(capped, &cache, 0).unwrap();
            for kernels in [Kernels::Fastest, Kernels::Portable, Kernels::ThreePass] {
                let expected =
                    attend_with(gpu(), &whole, &q.data, q_heads, &visible, kernels).unwrap();
                let got = attend_with(capped, &tiled, &q.data, q_heads, &visible, kernels).unwrap();
                let err = relative_l2(&got, &expected);
                assert!(
                    err <= 1e-6,
                    "{preset} gqa {gqa} M {queries} {kernels:?}: {err}"
                );
            }
        }
    }
}

/// Split lengths other than the adapter's default (512, the GPU default, and 256, the
/// shortest) give the same outputs as the default one for every kind of segment (exact rows,
/// codes across tokens, ternary values with STP, rotated values with STP refinements); a
/// length that is not a multiple of 256 is refused.
#[test]
fn split_lengths_agree() {
    let (tokens, d, kv_heads, gqa, queries) = (2300, 64, 2, 3, 2);
    let k = random_tensor([1, kv_heads, tokens, d], 51, 1.0);
    let v = random_tensor([1, kv_heads, tokens, d], 52, 1.0);
    let q = random_tensor([1, kv_heads * gqa, queries, d], 53, 0.6);
    let visible = [(0, tokens as u32), (0, tokens as u32 - 700)];
    let protected: Vec<u32> = (0..tokens as u32).filter(|t| t % 7 == 3).collect();
    for split in [256, 512] {
        let short = GpuContext::new(&GpuOptions {
            split_tokens: Some(split),
            ..GpuOptions::default()
        })
        .unwrap();
        for (preset, stp) in [
            ("fp16", &[][..]),
            ("vidkv", &[][..]),
            ("vidkv-tuned", &protected[..]),
            ("rotated", &protected[..]),
        ] {
            let config = QuantConfig::preset(preset).unwrap();
            let cache = PackedCache::quantize(&k, &v, &config, stp).unwrap();
            let default = GpuLayer::upload(gpu(), &cache, 0).unwrap();
            let layer = GpuLayer::upload(&short, &cache, 0).unwrap();
            for kernels in [Kernels::Fastest, Kernels::Portable, Kernels::ThreePass] {
                let expected =
                    attend_with(gpu(), &default, &q.data, kv_heads * gqa, &visible, kernels)
                        .unwrap();
                let got = attend_with(&short, &layer, &q.data, kv_heads * gqa, &visible, kernels)
                    .unwrap();
                let err = relative_l2(&got, &expected);
                assert!(err <= 1e-5, "{preset} split {split} {kernels:?}: {err}");
            }
        }
    }
    let refused = GpuContext::new(&GpuOptions {
        split_tokens: Some(300),
        ..GpuOptions::default()
    });
    assert!(matches!(refused, Err(vidkv::VidkvError::InvalidConfig(_))));
}

/// A context with uniform parameters (slots of a uniform buffer at dynamic offsets) and the
/// portable kernels (what browsers get) gives the same outputs as the shared one
/// (immediates where the adapter has them), call after call, its bind groups reused.
#[test]
fn uniform_parameters_agree_with_immediates() {
    let uniform = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })
    .unwrap();
    let (tokens, d, kv_heads, gqa) = (900, 64, 2, 2);
    let k = random_tensor([1, kv_heads, tokens, d], 61, 1.0);
    let v = random_tensor([1, kv_heads, tokens, d], 62, 1.0);
    for preset in ["fp16", "vidkv", "vidkv-tuned"] {
        let cache =
            PackedCache::quantize(&k, &v, &QuantConfig::preset(preset).unwrap(), &[]).unwrap();
        let shared = GpuLayer::upload(gpu(), &cache, 0).unwrap();
        let plain = GpuLayer::upload(&uniform, &cache, 0).unwrap();
        for call in 0..3u64 {
            let q = random_tensor([1, kv_heads * gqa, 1, d], 63 + call, 0.6);
            let visible = [(0, tokens as u32 - 100 * call as u32)];
            let expected = attend_with(
                &uniform,
                &plain,
                &q.data,
                kv_heads * gqa,
                &visible,
                Kernels::Portable,
            )
            .unwrap();
            let got = attend_with(
                gpu(),
                &shared,
                &q.data,
                kv_heads * gqa,
                &visible,
                Kernels::Portable,
            )
            .unwrap();
            let err = relative_l2(&got, &expected);
            assert!(err <= 1e-6, "{preset} call {call}: {err}");
        }
    }
}

/// The default preset decodes a layer in two dispatches, as issue 13 asks: one fused split-K
/// dispatch (which scales and rotates its query rows itself, and whose last splits are the
/// exact sinks and window) and the combine; so does the fp16 baseline (its split kernel
/// scales the rows itself; its rows loaded as f16 on the fast path, lavapipe having
/// shader-f16, and as u32 words by the portable kernels). (A context of its own, so that no
/// other test's kernels enter its profile.) A CPU adapter loads f16 only when asked.
#[test]
fn a_layer_decodes_in_two_dispatches() {
    let by_default = GpuContext::new(&GpuOptions::default()).unwrap();
    assert_eq!(by_default.adapter_info().device_type, wgpu::DeviceType::Cpu);
    assert!(!by_default.uses_f16_loads());
    drop(by_default);
    let ctx = GpuContext::new(&GpuOptions {
        f16_loads_on_cpu: true,
        ..GpuOptions::default()
    })
    .unwrap();
    assert!(ctx.uses_f16_loads(), "lavapipe has shader-f16");
    for (preset, kernels, fused) in [
        ("vidkv", Kernels::Fastest, "attention_split_groups+"),
        ("vidkv", Kernels::Portable, "attention_split_groups+"),
        (
            "fp16",
            Kernels::Fastest,
            "attention_split+exact+halves+exact_only::",
        ),
        (
            "fp16",
            Kernels::Portable,
            "attention_split+exact+words+exact_only::",
        ),
    ] {
        let passes = decode_passes(&ctx, preset, kernels);
        assert_eq!(passes.len(), 2, "{preset} {kernels:?}: {passes:?}");
        assert_eq!(passes[0], "attention_combine::main ×1", "{passes:?}");
        assert!(
            passes[1].starts_with(fused) && passes[1].ends_with("::main ×1"),
            "{preset}: {passes:?}"
        );
    }
}

/// The 2-bit presets' layers (2-bit keys per channel; values per token for `kivi2`, per
/// channel for `k2v2-channel`) decode in two dispatches too: the quantized groups through
/// the 2-bit row decoders, with the exact tail riding as a split of its own (its rows
/// loaded as f16 on the fast path), then the combine; [`Kernels::ThreePass`] keeps the
/// separate passes.
#[test]
fn two_bit_layers_decode_in_two_dispatches() {
    let ctx = GpuContext::new(&GpuOptions {
        f16_loads_on_cpu: true,
        ..GpuOptions::default()
    })
    .unwrap();
    for (preset, values, three_pass) in [
        (
            "kivi2",
            "value_tokens",
            "attention_values_two_bit::per_token",
        ),
        (
            "k2v2-channel",
            "value_channels",
            "attention_values_two_bit::per_channel",
        ),
    ] {
        for (kernels, rows) in [(Kernels::Fastest, "halves"), (Kernels::Portable, "words")] {
            let passes = decode_passes(&ctx, preset, kernels);
            assert_eq!(
                passes,
                [
                    "attention_combine::main ×1".to_string(),
                    format!("attention_split+exact+{rows}+two_bit+{values}::main ×1"),
                ],
                "{preset} {kernels:?}"
            );
        }
        let passes = decode_passes(&ctx, preset, Kernels::ThreePass);
        assert!(
            passes.iter().any(|p| p.starts_with(three_pass)),
            "{passes:?}"
        );
        assert!(
            passes.iter().all(|p| !p.starts_with("attention_split")),
            "{passes:?}"
        );
    }
}

/// The VidKV paper's presets decode a layer in the queries pass (their keys are scored
/// against Mᵀq), one signs-and-trits split dispatch for the quantized groups, one exact
/// split dispatch for the exact segments (`vidkv-tuned`'s sinks and tail, the first
/// carrying the second; `vidkv-paper`'s tail: none rides in the signs-and-trits dispatch,
/// whose bindings are full), and the combine; [`Kernels::ThreePass`] keeps the separate
/// passes.
#[test]
fn paper_layers_decode_in_one_split_dispatch() {
    let ctx = GpuContext::new(&GpuOptions::default()).unwrap();
    for preset in ["vidkv-tuned", "vidkv-paper"] {
        for kernels in [Kernels::Fastest, Kernels::Portable] {
            let passes = decode_passes(&ctx, preset, kernels);
            assert_eq!(
                passes,
                [
                    "attention_combine::main ×1".to_string(),
                    "attention_queries::main ×1".to_string(),
                    "attention_split+exact+words+exact_only::main ×1".to_string(),
                    "attention_split+signs_trits::main ×1".to_string(),
                ],
                "{preset} {kernels:?}"
            );
        }
        let passes = decode_passes(&ctx, preset, Kernels::ThreePass);
        assert!(
            passes
                .iter()
                .any(|p| p.starts_with("attention_values_ternary")),
            "{passes:?}"
        );
        assert!(
            passes.iter().all(|p| !p.starts_with("attention_split")),
            "{passes:?}"
        );
    }
}

/// The rotated per-token presets decode a layer in the query rotation pass, one rotated
/// split dispatch for the quantized groups, one exact split dispatch for the sinks and the
/// window (the first carrying the second), and the combine (with STP refinements, also the
/// refinement pass); [`Kernels::ThreePass`] keeps the separate passes.
#[test]
fn rotated_token_layers_decode_in_one_split_dispatch() {
    let ctx = GpuContext::new(&GpuOptions::default()).unwrap();
    for preset in ["rotated", "rotated-flat", "rotated-k3v1"] {
        for kernels in [Kernels::Fastest, Kernels::Portable] {
            let passes = decode_passes(&ctx, preset, kernels);
            assert_eq!(
                passes,
                [
                    "attention_combine::main ×1".to_string(),
                    "attention_rotated+tokens::rotate_queries ×1".to_string(),
                    "attention_split+exact+words+exact_only::main ×1".to_string(),
                    "attention_split+rotated_tokens::main ×1".to_string(),
                ],
                "{preset} {kernels:?}"
            );
        }
        // With STP refinements, the split dispatch also writes its logits, which the
        // refinement pass weighs against each split's maximum (no softmax pass).
        let protected: Vec<u32> = (40..600).step_by(7).collect();
        let passes = decode_passes_protected(&ctx, preset, Kernels::Fastest, &protected);
        assert_eq!(
            passes,
            [
                "attention_combine::main ×1".to_string(),
                "attention_rotated+tokens::refinement_sums ×1".to_string(),
                "attention_rotated+tokens::rotate_queries ×1".to_string(),
                "attention_split+exact+words+exact_only::main ×1".to_string(),
                "attention_split+rotated_tokens::main ×1".to_string(),
            ],
            "{preset} STP"
        );
        let passes = decode_passes(&ctx, preset, Kernels::ThreePass);
        assert!(
            passes.iter().any(|p| p.ends_with("value_sums ×1")),
            "{passes:?}"
        );
        assert!(
            passes.iter().all(|p| !p.starts_with("attention_split")),
            "{passes:?}"
        );
    }
}

/// A default-preset layer with STP-protected tokens keeps its fused dispatch, which then
/// writes its logits; the refinement pass weighs them against each split's maximum and adds
/// Σ p·r̂ of the protected tokens: three dispatches, where the separate passes were six (the
/// query rotation, key scores, softmax, value sums, refinements, the exact segments'
/// dispatch) and the combine.
#[test]
fn protected_default_layers_keep_the_fused_dispatch() {
    let ctx = GpuContext::new(&GpuOptions::default()).unwrap();
    let protected: Vec<u32> = (40..600).step_by(7).collect();
    for kernels in [Kernels::Fastest, Kernels::Portable] {
        let passes = decode_passes_protected(&ctx, "vidkv", kernels, &protected);
        assert_eq!(passes.len(), 3, "{kernels:?}: {passes:?}");
        assert_eq!(passes[0], "attention_combine::main ×1", "{passes:?}");
        assert_eq!(
            passes[1], "attention_rotated+tokens::refinement_sums ×1",
            "{passes:?}"
        );
        assert!(
            passes[2].starts_with("attention_split_groups+") && passes[2].ends_with("::main ×1"),
            "{passes:?}"
        );
    }
}

/// The passes one decode call on a layer of `preset` runs on `ctx` (1,000 tokens, d = 128,
/// 2 KV heads, GQA 3, one query position seeing them all), by kernel profiling.
fn decode_passes(ctx: &GpuContext, preset: &str, kernels: Kernels) -> Vec<String> {
    decode_passes_protected(ctx, preset, kernels, &[])
}

/// [`decode_passes`] on a cache whose tokens `protected` are STP-protected.
fn decode_passes_protected(
    ctx: &GpuContext,
    preset: &str,
    kernels: Kernels,
    protected: &[u32],
) -> Vec<String> {
    let (tokens, d, kv_heads, gqa) = (1000, 128, 2, 3);
    let k = random_tensor([1, kv_heads, tokens, d], 71, 1.0);
    let v = random_tensor([1, kv_heads, tokens, d], 72, 1.0);
    let q = random_tensor([1, kv_heads * gqa, 1, d], 73, 0.6);
    let config = QuantConfig::preset(preset).unwrap();
    let cache = PackedCache::quantize(&k, &v, &config, protected).unwrap();
    let layer = GpuLayer::upload(ctx, &cache, 0).unwrap();
    assert!(
        ctx.start_kernel_profiling(),
        "lavapipe has timestamp queries"
    );
    let visible = [(0, tokens as u32)];
    attend_with(ctx, &layer, &q.data, kv_heads * gqa, &visible, kernels).unwrap();
    let passes = timed_passes(ctx);
    ctx.stop_kernel_profiling();
    passes
}
