//! The rotated schemes (issue 12, `docs/rotated-2bit.md`): bit budget, the per-head state,
//! typed errors for what they cannot take, the GPU paths' refusal until their kernels
//! exist, and `ReferenceCache` (the CPU cache that runs them) against the batch quantizer
//! and against the GPU `KvCache`.

#[path = "common/data.rs"]
mod data;

#[path = "common/gpu.rs"]
mod gpu_context;

use data::shared_sample;
use gpu_context::gpu;

use vidkv::cache::{ModelCache, ReferenceCache};
use vidkv::config::{KeyScheme, ValueScheme, ROTATED_PRESET_NAMES};
use vidkv::gpu::attention::GpuLayer;
use vidkv::gpu::dequantize::dequantize_cache;
use vidkv::gpu::quantize::quantize_cache;
use vidkv::packed::{estimate_size, PackedKeys, PackedValues};
use vidkv::reference::attention::attend_dense;
use vidkv::report::relative_l2;
use vidkv::{CacheShape, KvCache, ModelShape, PackedCache, QuantConfig, Tensor, VidkvError};

fn tensor(shape: [usize; 4], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n as u32)
        .map(|i| {
            let x = i
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((x >> 8) % 2001) as f32 / 1000.0 - 1.0 + ((i as usize % shape[3]) as f32 * 0.01)
        })
        .collect();
    Tensor::new("x", shape.to_vec(), data).unwrap()
}

/// Gaussian-like rows (splitmix64 noise, sums of four uniforms) with per-channel scales.
fn noise_tensor(shape: [usize; 4], seed: u64) -> Tensor {
    let mut state = seed;
    let mut uniform = || {
        state = state.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let channel_scale = 1.0 + (i % shape[3] % 7) as f32 * 0.3;
            channel_scale * (0..4).map(|_| uniform()).sum::<f32>()
        })
        .collect();
    Tensor::new("x", shape.to_vec(), data).unwrap()
}

#[test]
fn rotated_preset_stays_within_2_2_bits_on_a_16k_cache() {
    let shape = CacheShape {
        layers: 28,
        kv_heads: 4,
        tokens: 16384,
        head_dim: 128,
    };
    let size = estimate_size(shape, &QuantConfig::preset("rotated").unwrap(), 0);
    assert!(size.all_bits() <= 2.2, "rotated: {} bits", size.all_bits());
    let flat = estimate_size(shape, &QuantConfig::preset("rotated-flat").unwrap(), 0);
    assert!(flat.all_bits() < size.all_bits());
    // The default is the rotated method across tokens, within the same budget.
    let default = QuantConfig::default();
    assert_eq!(default, QuantConfig::preset(vidkv::DEFAULT_PRESET).unwrap());
    assert_eq!(
        default,
        QuantConfig::preset("rotated-groups-k2.5v1.5").unwrap()
    );
    let bits = estimate_size(shape, &default, 0).all_bits();
    assert!(bits <= 2.2, "vidkv: {bits} bits");
}

#[test]
fn head_dims_the_rotation_cannot_take_are_typed_errors() {
    for preset in ROTATED_PRESET_NAMES {
        let config = QuantConfig::preset(preset).unwrap();
        let x = tensor([1, 1, 128, 72], 1);
        let err = PackedCache::quantize(&x, &x, &config, &[]).unwrap_err();
        assert!(
            matches!(&err, VidkvError::InvalidConfig(m) if m.contains("multiple of 16")),
            "{preset}: {err}"
        );
    }
}

#[test]
fn code_widths_outside_1_to_4_bits_are_typed_errors() {
    for bits in [0u8, 5, 8] {
        let mut config = QuantConfig::preset("rotated").unwrap();
        config.keys = KeyScheme::Rotated { bits };
        assert!(matches!(
            config.validate(),
            Err(VidkvError::InvalidConfig(_))
        ));
        let mut config = QuantConfig::preset("rotated").unwrap();
        config.values = ValueScheme::Rotated {
            bits,
            group_means: false,
        };
        assert!(matches!(
            config.validate(),
            Err(VidkvError::InvalidConfig(_))
        ));
    }
}

#[test]
fn the_per_head_state_comes_from_the_first_two_groups() {
    let x = tensor([1, 1, 257, 32], 3);
    let config = QuantConfig::preset("rotated").unwrap();
    let cache = PackedCache::quantize(&x, &x, &config, &[]).unwrap();
    let PackedKeys::Rotated(rows) = &cache.heads[0].keys else {
        panic!("rotated keys expected")
    };
    let start = cache.heads[0].plan.quantized_start();
    for c in 0..32 {
        let mean = (start..start + 64).map(|t| x.data[t * 32 + c]).sum::<f32>() / 64.0;
        assert!((rows.state.mean_value(c) - mean).abs() <= 1e-3 * (1.0 + mean.abs()));
    }
    // Changing a token after the first two groups leaves the state alone.
    let mut later = x.clone();
    later.data[(start + 100) * 32] += 5.0;
    let again = PackedCache::quantize(&later, &later, &config, &[]).unwrap();
    let PackedValues::Rotated { rows: v0, .. } = &cache.heads[0].values else {
        panic!("rotated values expected")
    };
    let PackedValues::Rotated { rows: v1, .. } = &again.heads[0].values else {
        panic!("rotated values expected")
    };
    assert_eq!(v0.state, v1.state);
}

/// Words of the GPU per-token kernels that differ from the CPU reference's, over all heads:
/// (code words, scale words, state and group-mean words) and their totals.
fn differing_words(cpu: &PackedCache, gpu_cache: &PackedCache) -> ([usize; 3], [usize; 3]) {
    let mut differ = [0usize; 3];
    let mut total = [0usize; 3];
    let mut count = |slot: usize, a: &[u32], b: &[u32]| {
        assert_eq!(a.len(), b.len(), "array lengths");
        differ[slot] += a.iter().zip(b).filter(|(x, y)| x != y).count();
        total[slot] += a.len();
    };
    for (c, g) in cpu.heads.iter().zip(&gpu_cache.heads) {
        assert_eq!(c.exact_keys, g.exact_keys);
        assert_eq!(c.exact_values, g.exact_values);
        let (PackedKeys::Rotated(ck), PackedKeys::Rotated(gk)) = (&c.keys, &g.keys) else {
            panic!("rotated keys expected")
        };
        let (
            PackedValues::Rotated {
                rows: cv,
                means: cm,
            },
            PackedValues::Rotated {
                rows: gv,
                means: gm,
            },
        ) = (&c.values, &g.values)
        else {
            panic!("rotated values expected")
        };
        for (a, b) in [(ck, gk), (cv, gv)] {
            count(0, &a.codes, &b.codes);
            count(1, &a.scales, &b.scales);
            count(2, &a.state.mean, &b.state.mean);
            count(2, &[a.state.base], &[b.state.base]);
        }
        if let (Some(a), Some(b)) = (cm, gm) {
            count(2, &a.codes, &b.codes);
            count(2, &a.steps, &b.steps);
        }
    }
    (differ, total)
}

#[test]
fn gpu_per_token_kernels_write_the_reference_words() {
    let cases = [
        (64usize, 100usize, 2usize, "rotated"),
        (80, 97, 1, "rotated-flat"),
        (96, 333, 3, "rotated-k3v1"),
        (112, 64, 1, "rotated"),
        (128, 250, 2, "rotated"),
        (160, 130, 1, "rotated-k3v1"),
        (256, 200, 1, "rotated-flat"),
        (256, 300, 1, "4-bit keys, 3-bit values, groups of 128"),
    ];
    for (case, &(d, tokens, heads, preset)) in cases.iter().enumerate() {
        let k = noise_tensor([2, heads, tokens, d], 40 + case as u64);
        let v = noise_tensor([2, heads, tokens, d], 60 + case as u64);
        let config = QuantConfig::preset(preset).unwrap_or(QuantConfig {
            group_size: 128,
            residual: 0,
            keys: KeyScheme::Rotated { bits: 4 },
            values: ValueScheme::Rotated {
                bits: 3,
                group_means: true,
            },
            ..QuantConfig::preset("rotated").unwrap()
        });
        let cpu = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        let on_gpu = quantize_cache(gpu(), &k, &v, &config, &[]).unwrap();
        let (differ, total) = differing_words(&cpu, &on_gpu);
        let what = format!(
            "{preset} d={d} tokens={tokens}: differing (codes, scales, state) words {differ:?} of {total:?}"
        );
        eprintln!("{what}");
        assert_eq!(differ, [0, 0, 0], "{what}");
        let (k_cpu, v_cpu) = cpu.dequantize();
        let (k_gpu, v_gpu) = dequantize_cache(gpu(), &on_gpu).unwrap();
        assert!(relative_l2(&k_gpu.data, &k_cpu.data) < 1e-6, "{what}");
        assert!(relative_l2(&v_gpu.data, &v_cpu.data) < 1e-6, "{what}");
    }
}

/// On the real dev files the GPU writes the reference's words for every per-token preset.
#[test]
fn gpu_per_token_kernels_match_the_reference_on_the_dev_files() {
    for file in ["smollm2_text_dev", "dinov2_video_dev"] {
        let sample = shared_sample(file);
        for preset in ["rotated", "rotated-flat", "rotated-k3v1"] {
            let config = QuantConfig::preset(preset).unwrap();
            let cpu = PackedCache::quantize(&sample.k, &sample.v, &config, &[]).unwrap();
            let on_gpu = quantize_cache(gpu(), &sample.k, &sample.v, &config, &[]).unwrap();
            let (differ, total) = differing_words(&cpu, &on_gpu);
            eprintln!("{file} {preset}: differing words {differ:?} of {total:?}");
            assert_eq!(differ, [0, 0, 0], "{file} {preset}: of {total:?}");
        }
    }
}

/// Differing words of two caches coded across tokens: ([codes, scales, widths, states],
/// totals).
fn differing_group_words(cpu: &PackedCache, on_gpu: &PackedCache) -> ([usize; 4], [usize; 4]) {
    let mut differ = [0usize; 4];
    let mut total = [0usize; 4];
    let mut count = |slot: usize, a: &[u32], b: &[u32]| {
        assert_eq!(a.len(), b.len(), "array lengths");
        differ[slot] += a.iter().zip(b).filter(|(x, y)| x != y).count();
        total[slot] += a.len();
    };
    for (c, g) in cpu.heads.iter().zip(&on_gpu.heads) {
        assert_eq!(c.exact_keys, g.exact_keys);
        assert_eq!(c.exact_values, g.exact_values);
        let pairs = [(&c.keys, &g.keys)].map(|(a, b)| match (a, b) {
            (PackedKeys::RotatedGroups(a), PackedKeys::RotatedGroups(b)) => (a.clone(), b.clone()),
            _ => panic!("group keys expected"),
        });
        let values = match (&c.values, &g.values) {
            (PackedValues::RotatedGroups(a), PackedValues::RotatedGroups(b)) => {
                (a.clone(), b.clone())
            }
            _ => panic!("group values expected"),
        };
        for (a, b) in pairs.into_iter().chain([values]) {
            count(0, &a.codes, &b.codes);
            count(1, &a.scales, &b.scales);
            count(2, &a.widths, &b.widths);
            count(3, &a.state.to_words(), &b.state.to_words());
        }
    }
    (differ, total)
}

#[test]
fn gpu_group_kernels_write_the_reference_words() {
    let preset = |name: &str| QuantConfig::preset(name).unwrap();
    let groups_of = |group_size: usize, keys: f32, values: f32| QuantConfig {
        group_size,
        residual: 0,
        keys: KeyScheme::RotatedGroups { bits: keys },
        values: ValueScheme::RotatedGroups { bits: values },
        ..preset("rotated-groups")
    };
    let cases = [
        (64usize, 100usize, 2usize, preset("rotated-groups")),
        (80, 97, 1, preset("rotated-groups-k2.5v1.5")),
        (96, 333, 3, preset("rotated-groups-k3v1")),
        (112, 64, 1, preset("rotated-groups")),
        (128, 250, 2, preset("rotated-groups-k2.5v1.5")),
        (160, 130, 1, groups_of(16, 4.0, 1.0)),
        (256, 300, 1, groups_of(128, 3.5, 2.5)),
    ];
    for (case, (d, tokens, heads, config)) in cases.into_iter().enumerate() {
        let k = noise_tensor([2, heads, tokens, d], 80 + case as u64);
        let v = noise_tensor([2, heads, tokens, d], 90 + case as u64);
        let cpu = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        let on_gpu = quantize_cache(gpu(), &k, &v, &config, &[]).unwrap();
        let (differ, total) = differing_group_words(&cpu, &on_gpu);
        let what = format!(
            "case {case}: d={d} tokens={tokens}: differing (codes, scales, widths, state) words {differ:?} of {total:?}"
        );
        eprintln!("{what}");
        assert_eq!(differ, [0, 0, 0, 0], "{what}");
        let (k_cpu, v_cpu) = cpu.dequantize();
        let (k_gpu, v_gpu) = dequantize_cache(gpu(), &on_gpu).unwrap();
        assert!(relative_l2(&k_gpu.data, &k_cpu.data) < 1e-6, "{what}");
        assert!(relative_l2(&v_gpu.data, &v_cpu.data) < 1e-6, "{what}");
    }
}

/// On the real dev files the GPU writes the reference's words for every across-token preset.
#[test]
fn gpu_group_kernels_match_the_reference_on_the_dev_files() {
    for file in ["smollm2_text_dev", "dinov2_video_dev"] {
        let sample = shared_sample(file);
        for preset in [
            "rotated-groups",
            "rotated-groups-k3v1",
            "rotated-groups-k2.5v1.5",
        ] {
            let config = QuantConfig::preset(preset).unwrap();
            let cpu = PackedCache::quantize(&sample.k, &sample.v, &config, &[]).unwrap();
            let on_gpu = quantize_cache(gpu(), &sample.k, &sample.v, &config, &[]).unwrap();
            let (differ, total) = differing_group_words(&cpu, &on_gpu);
            eprintln!("{file} {preset}: differing words {differ:?} of {total:?}");
            assert_eq!(differ, [0, 0, 0, 0], "{file} {preset}: of {total:?}");
        }
    }
}

#[test]
fn every_gpu_path_takes_the_rotated_presets() {
    let x = tensor([1, 1, 128, 64], 5);
    let groups = QuantConfig::preset("rotated-groups").unwrap();
    assert!(quantize_cache(gpu(), &x, &x, &groups, &[]).is_ok());
    let packed = PackedCache::quantize(&x, &x, &groups, &[]).unwrap();
    assert!(GpuLayer::upload(gpu(), &packed, 0).is_ok());
    let shape = ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    for name in ROTATED_PRESET_NAMES {
        let config = QuantConfig::preset(name).unwrap();
        assert!(KvCache::new(shape, config, gpu()).is_ok(), "{name}");
    }
    // A head_dim the rotation cannot take is refused up front, not at the first flush.
    let odd = ModelShape {
        head_dim: 72,
        ..shape
    };
    let err = KvCache::new(odd, groups, gpu()).err().expect("refused");
    assert!(matches!(err, VidkvError::InvalidConfig(_)), "{err}");
}

#[test]
fn smooth_groups_take_the_sequency_mode_and_spend_the_budget() {
    // Tokens that drift slowly: the transform across tokens concentrates their energy.
    let (tokens, d) = (161, 64);
    let data: Vec<f32> = (0..tokens * d)
        .map(|i| {
            let (t, c) = (i / d, i % d);
            ((c as f32 * 0.7).sin() * 2.0 + (t as f32 * 0.02 + c as f32).cos() * 0.3)
                + ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.05
        })
        .collect();
    let x = Tensor::new("x", vec![1, 1, tokens, d], data).unwrap();
    let config = QuantConfig::preset("rotated-groups").unwrap();
    let cache = PackedCache::quantize(&x, &x, &config, &[]).unwrap();
    let PackedKeys::RotatedGroups(codes) = &cache.heads[0].keys else {
        panic!("group codes expected")
    };
    codes.validate().unwrap();
    assert!(codes.groups >= 2);
    for g in 0..codes.groups {
        assert!(
            !codes.is_token_mode(g),
            "group {g} fell back to per-token codes"
        );
        let spent: usize = (0..32).map(|j| usize::from(codes.row_bits(g, j))).sum();
        assert_eq!(spent, 64);
        assert!(codes.row_bits(g, 0) >= codes.row_bits(g, 31));
    }
}

/// `[kv_heads, n, d]` rows `from..from + n` of a `[1, kv_heads, tokens, d]` tensor.
fn rows_of(x: &Tensor, from: usize, n: usize) -> Vec<f32> {
    let (h, tokens, d) = (x.shape[1], x.shape[2], x.shape[3]);
    (0..h)
        .flat_map(|head| {
            let at = (head * tokens + from) * d;
            x.data[at..at + n * d].iter().copied()
        })
        .collect()
}

#[test]
fn reference_cache_streams_what_the_batch_quantizer_writes() {
    // A prefill that flushes at least two groups fixes the same per-head state as the
    // batch quantizer; later tokens (appended one at a time) are then coded identically.
    let (h, d, tokens) = (2usize, 64usize, 300usize);
    let k = tensor([1, h, tokens, d], 11);
    let v = tensor([1, h, tokens, d], 12);
    let shape = ModelShape {
        layers: 1,
        q_heads: 4,
        kv_heads: h,
        head_dim: d,
    };
    for preset in ROTATED_PRESET_NAMES.iter().chain(&["kivi2"]) {
        let config = QuantConfig::preset(preset).unwrap();
        let mut cache = ReferenceCache::new(shape, config.clone()).unwrap();
        cache
            .append(0, &rows_of(&k, 0, 160), &rows_of(&v, 0, 160))
            .unwrap();
        for t in 160..tokens {
            cache
                .append(0, &rows_of(&k, t, 1), &rows_of(&v, t, 1))
                .unwrap();
        }
        let q = tensor([1, 4, 1, d], 13);
        let streamed = cache.attend_causal(0, &q.data).unwrap();
        let packed = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        let (k_hat, v_hat) = packed.dequantize();
        let visible = vec![true; tokens];
        for qh in 0..4 {
            let kv = qh / 2;
            let span = kv * tokens * d..(kv + 1) * tokens * d;
            let batch = attend_dense(
                &q.data[qh * d..(qh + 1) * d],
                &k_hat.data[span.clone()],
                &v_hat.data[span],
                &visible,
            );
            let err = relative_l2(&streamed[qh * d..(qh + 1) * d], &batch);
            assert!(err < 1e-6, "{preset}: query head {qh} differs by {err}");
        }
    }
}

/// Differing words of two caches of the same rotated scheme, per-token or across tokens.
fn any_differing_words(a: &PackedCache, b: &PackedCache) -> usize {
    if matches!(a.heads[0].keys, PackedKeys::RotatedGroups(_)) {
        differing_group_words(a, b).0.iter().sum()
    } else {
        differing_words(a, b).0.iter().sum()
    }
}

/// The configurations `KvCache` is checked with against its CPU oracle: the VidKV-structure
/// and KIVI presets, every rotated preset, and rotated keys or values mixed with the other
/// schemes.
fn gpu_cache_configs() -> Vec<(String, QuantConfig)> {
    let preset = |name: &str| QuantConfig::preset(name).unwrap();
    let mut configs: Vec<(String, QuantConfig)> = ["kivi2", "vidkv-tuned", "fp16"]
        .iter()
        .chain(&ROTATED_PRESET_NAMES)
        .map(|name| (name.to_string(), preset(name)))
        .collect();
    configs.push((
        "rotated keys + ternary values".into(),
        QuantConfig {
            keys: KeyScheme::Rotated { bits: 2 },
            ..preset("vidkv-tuned")
        },
    ));
    configs.push((
        "across-token keys + ternary values".into(),
        QuantConfig {
            keys: preset("rotated-groups-k2.5v1.5").keys,
            ..preset("vidkv-tuned")
        },
    ));
    configs.push((
        "2-bit keys + rotated values".into(),
        QuantConfig {
            values: preset("rotated").values,
            ..preset("kivi2")
        },
    ));
    configs
}

#[test]
fn kv_cache_writes_the_reference_words_and_saves_them() {
    // A prefill that flushes two groups fixes the batch quantizer's per-head state; the
    // tokens appended one at a time then flush one group each (chunks filled from odd and
    // even groups). The cache's words equal the CPU reference's, and survive a save. The
    // rows are f16 values, so that the window a file restores from f16 is the same.
    let (h, tokens) = (2usize, 300usize);
    let f16_tensor = |shape, seed| {
        let mut x = noise_tensor(shape, seed);
        for e in &mut x.data {
            *e = half::f16::from_f32(*e).to_f32();
        }
        x
    };
    for (preset, d) in [
        ("rotated", 64usize),
        ("rotated-flat", 80),
        ("rotated-k3v1", 96),
    ] {
        let config = QuantConfig::preset(preset).unwrap();
        let k = f16_tensor([1, h, tokens, d], 31);
        let v = f16_tensor([1, h, tokens, d], 32);
        let shape = ModelShape {
            layers: 1,
            q_heads: 2 * h,
            kv_heads: h,
            head_dim: d,
        };
        let mut cache = KvCache::new(shape, config.clone(), gpu()).unwrap();
        cache
            .append(0, &rows_of(&k, 0, 160), &rows_of(&v, 0, 160))
            .unwrap();
        for t in 160..tokens {
            cache
                .append(0, &rows_of(&k, t, 1), &rows_of(&v, t, 1))
                .unwrap();
        }
        assert_eq!(cache.groups_quantized(), 7, "{preset}");
        let reference = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        let differ = any_differing_words(&reference, &cache.to_packed().unwrap());
        assert_eq!(differ, 0, "{preset} d {d}");

        let loaded = KvCache::from_safetensors(&cache.to_safetensors().unwrap(), gpu()).unwrap();
        let differ = any_differing_words(&reference, &loaded.to_packed().unwrap());
        assert_eq!(differ, 0, "{preset}: loaded");
        let q = tensor([1, 2 * h, 2, d], 33);
        let before = cache.attend_causal(0, &q.data).unwrap();
        let after = loaded.attend_causal(0, &q.data).unwrap();
        assert!(
            relative_l2(&before, &after) < 1e-6,
            "{preset}: loaded attention"
        );

        // Both keep growing with the state they hold.
        let mut loaded = loaded;
        let extra = f16_tensor([1, h, 64, d], 34);
        for c in [&mut cache, &mut loaded] {
            c.append(0, &rows_of(&extra, 0, 64), &rows_of(&extra, 0, 64))
                .unwrap();
        }
        let grown = cache.attend_causal(0, &q.data).unwrap();
        let grown_loaded = loaded.attend_causal(0, &q.data).unwrap();
        assert!(
            relative_l2(&grown, &grown_loaded) < 1e-6,
            "{preset}: grown after loading"
        );
    }
}

#[test]
fn reference_cache_agrees_with_the_gpu_kv_cache() {
    let (h, d, tokens) = (2usize, 64usize, 250usize);
    let k = tensor([1, h, tokens, d], 21);
    let v = tensor([1, h, tokens, d], 22);
    let shape = ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: h,
        head_dim: d,
    };
    for (preset, config) in gpu_cache_configs() {
        let mut oracle = ReferenceCache::new(shape, config.clone()).unwrap();
        let mut gpu_cache = KvCache::new(shape, config, gpu()).unwrap();
        // Flushes of 1, 1 and 3 groups: chunks filled from odd and even groups.
        for (from, n) in [(0usize, 100usize), (100, 32), (132, 118)] {
            let (kr, vr) = (rows_of(&k, from, n), rows_of(&v, from, n));
            ModelCache::append(&mut oracle, 0, &kr, &vr).unwrap();
            gpu_cache.append(0, &kr, &vr).unwrap();
        }
        let q = tensor([1, 2, 3, d], 23);
        let ours = oracle.attend_causal(0, &q.data).unwrap();
        let theirs = gpu_cache.attend_causal(0, &q.data).unwrap();
        let err = relative_l2(&ours, &theirs);
        assert!(err < 1e-4, "{preset}: {err}");
        assert_eq!(
            ModelCache::bits_per_element(&oracle),
            gpu_cache.bits_per_element()
        );
    }
}

#[test]
fn fractional_group_budgets_need_a_whole_even_bit_count_per_group() {
    let with = |bits: f32, group_size: usize| QuantConfig {
        group_size,
        keys: KeyScheme::RotatedGroups { bits },
        ..QuantConfig::preset("rotated-groups").unwrap()
    };
    assert!(with(2.5, 32).validate().is_ok());
    assert!(with(1.25, 8).validate().is_ok());
    for (bits, g) in [(2.3f32, 32usize), (1.125, 8), (0.5, 32), (4.5, 32)] {
        assert!(
            matches!(with(bits, g).validate(), Err(VidkvError::InvalidConfig(_))),
            "{bits} bits with groups of {g}"
        );
    }
    // Per-token fallback groups give the first tokens the extra bit: 80 bits over 32 tokens.
    let config = QuantConfig::preset("rotated-groups-k2.5v1.5").unwrap();
    let x = noise_tensor([1, 1, 200, 64], 9);
    let cache = PackedCache::quantize(&x, &x, &config, &[]).unwrap();
    let PackedKeys::RotatedGroups(codes) = &cache.heads[0].keys else {
        panic!("group codes expected")
    };
    codes.validate().unwrap();
    assert_eq!(codes.budget, 80);
    assert_eq!(
        (0..32)
            .map(|t| usize::from(codes.token_bits(t)))
            .sum::<usize>(),
        80
    );
    assert_eq!((codes.token_bits(15), codes.token_bits(16)), (3, 2));
}

/// STP under rotated values: each protected token's value gains a 1-bit refinement of its
/// residual, which must cut that token's error (a 1-bit Gaussian code keeps ~36 % of the
/// residual's energy, so about 0.6× in L2) and leave every other token's value untouched;
/// 2-bit values cannot protect tokens.
#[test]
fn protected_tokens_decode_closer_under_rotated_values() {
    let sample = shared_sample("dinov2_video_dev");
    let tokens = sample.k.dim(2);
    let protected: Vec<u32> = (100..tokens as u32).step_by(5).collect();
    for preset in ["vidkv", "rotated"] {
        let config = QuantConfig::preset(preset).unwrap();
        let plain = PackedCache::quantize(&sample.k, &sample.v, &config, &[]).unwrap();
        let stp = PackedCache::quantize(&sample.k, &sample.v, &config, &protected).unwrap();
        assert_eq!(
            plain.heads[0].keys, stp.heads[0].keys,
            "{preset}: keys unchanged"
        );
        let (_, v_plain) = plain.dequantize();
        let (_, v_stp) = stp.dequantize();
        let d = sample.k.dim(3);
        let (mut err_plain, mut err_stp, mut energy) = (0.0f64, 0.0f64, 0.0f64);
        for (row, ((x, a), b)) in sample
            .v
            .data
            .chunks_exact(d)
            .zip(v_plain.data.chunks_exact(d))
            .zip(v_stp.data.chunks_exact(d))
            .enumerate()
        {
            let t = (row % tokens) as u32;
            if stp.protected.binary_search(&t).is_ok() {
                for ((&x, &a), &b) in x.iter().zip(a).zip(b) {
                    err_plain += f64::from(x - a).powi(2);
                    err_stp += f64::from(x - b).powi(2);
                    energy += f64::from(x).powi(2);
                }
            } else {
                assert_eq!(a, b, "{preset}: an unprotected token's value changed");
            }
        }
        let ratio = (err_stp / err_plain).sqrt();
        eprintln!(
            "{preset}: protected values' relative error {:.4} -> {:.4} (x{ratio:.3})",
            (err_plain / energy).sqrt(),
            (err_stp / energy).sqrt()
        );
        assert!(
            ratio < 0.7,
            "{preset}: the refinement only reached x{ratio}"
        );
        let bits = |c: &PackedCache| c.size().value_bits();
        eprintln!(
            "{preset}: value bits {:.4} -> {:.4}",
            bits(&plain),
            bits(&stp)
        );
    }
    let kivi = QuantConfig::preset("kivi2").unwrap();
    assert!(matches!(
        PackedCache::quantize(&sample.k, &sample.v, &kivi, &protected),
        Err(VidkvError::InvalidConfig(_))
    ));
}
