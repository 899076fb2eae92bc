//! The GPU-resident KvCache: incremental quantization matches quantizing all at once,
//! each group is quantized exactly once, memory accounting, and typed errors.

#[path = "common/metadata.rs"]
mod metadata;

#[path = "common/gpu.rs"]
mod gpu_context;

use gpu_context::{gpu, timed_passes};

use std::sync::OnceLock;

use vidkv::bench::synthetic_tensor;
use vidkv::cache::DecodeStep;
use vidkv::gpu::attention::{attend, GpuLayer};
use vidkv::packed::estimate_size;
use vidkv::report::relative_l2;
use vidkv::{CacheShape, KvCache, ModelShape, PackedCache, QuantConfig, Tensor, VidkvError};

const SHAPE: ModelShape = ModelShape {
    layers: 2,
    q_heads: 6,
    kv_heads: 2,
    head_dim: 64,
};

fn tensors(tokens: usize) -> (Tensor, Tensor) {
    let shape = CacheShape {
        layers: SHAPE.layers,
        kv_heads: SHAPE.kv_heads,
        tokens,
        head_dim: SHAPE.head_dim,
    };
    (
        synthetic_tensor(shape, 21).unwrap(),
        synthetic_tensor(shape, 22).unwrap(),
    )
}

/// Fills a cache with `prefill` tokens, then appends the rest in pieces of `step`.
fn fill(config: &QuantConfig, k: &Tensor, v: &Tensor, prefill: usize, step: usize) -> KvCache {
    fill_protected(config, &[], k, v, prefill, step)
}

/// [`fill`] with the STP positions `protected` set before the prefill.
fn fill_protected(
    config: &QuantConfig,
    protected: &[u32],
    k: &Tensor,
    v: &Tensor,
    prefill: usize,
    step: usize,
) -> KvCache {
    let tokens = k.dim(2);
    let mut cache = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
    cache.protect(protected).unwrap();
    for l in 0..SHAPE.layers {
        cache
            .prefill(
                l,
                &k.layer_tokens(l, 0..prefill).unwrap(),
                &v.layer_tokens(l, 0..prefill).unwrap(),
            )
            .unwrap();
        let mut at = prefill;
        while at < tokens {
            let to = (at + step).min(tokens);
            cache
                .append(
                    l,
                    &k.layer_tokens(l, at..to).unwrap(),
                    &v.layer_tokens(l, at..to).unwrap(),
                )
                .unwrap();
            at = to;
        }
    }
    cache
}

/// Attention of layer `l` of `packed`, uploaded whole, for `q` over `visible`.
fn attend_packed(packed: &PackedCache, l: usize, q: &[f32], visible: &[(u32, u32)]) -> Vec<f32> {
    attend(
        gpu(),
        &GpuLayer::upload(gpu(), packed, l).unwrap(),
        q,
        SHAPE.q_heads,
        visible,
    )
    .unwrap()
}

fn queries(m: usize) -> Vec<f32> {
    synthetic_tensor(
        CacheShape {
            layers: 1,
            kv_heads: SHAPE.q_heads,
            tokens: m,
            head_dim: SHAPE.head_dim,
        },
        23,
    )
    .unwrap()
    .data
    .iter()
    .map(|x| 0.3 * x)
    .collect()
}

#[test]
fn incremental_equals_all_at_once_where_the_split_cannot_differ() {
    let tokens = 700;
    let (k, v) = tensors(tokens);
    let q = queries(3);
    let visible = [(0u32, 700u32), (5, 650), (0, 1)];
    // Presets without a learned channel split, and vidkv filled by one prefill.
    for (preset, prefill, step) in [
        ("kivi2", 700, 1),
        ("k2v2-channel", 700, 1),
        ("kivi2", 100, 1),
        ("k2v2-channel", 37, 45),
        ("fp16", 10, 333),
        ("vidkv-tuned", 700, 1),
        ("vidkv-paper", 700, 1),
    ] {
        let config = QuantConfig::preset(preset).unwrap();
        let cache = fill(&config, &k, &v, prefill, step);
        let packed = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
        for l in 0..SHAPE.layers {
            let expected = attend_packed(&packed, l, &q, &visible);
            let got = cache.attend(l, &q, &visible).unwrap();
            let err = relative_l2(&got, &expected);
            assert!(err < 1e-5, "{preset} layer {l}: relative error {err}");
        }
        assert_eq!(cache.bytes(), packed.size().total_bytes(), "{preset}");
    }
}

#[test]
fn a_frozen_split_keeps_vidkv_close_to_all_at_once() {
    // Prefill 2,000 tokens, then 1,000 more one token at a time: the split comes from the
    // prefill only, so the result differs from quantizing everything at once, but not by
    // more than the quantization error itself.
    let tokens = 3000;
    let (k, v) = tensors(tokens);
    let q = queries(1);
    let visible = [(0u32, tokens as u32)];
    let config = QuantConfig::preset("vidkv-tuned").unwrap();
    let cache = fill(&config, &k, &v, 2000, 1);
    let exact = PackedCache::quantize(&k, &v, &QuantConfig::preset("fp16").unwrap(), &[]).unwrap();
    let packed = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
    for l in 0..SHAPE.layers {
        let reference = attend_packed(&exact, l, &q, &visible);
        let static_err = relative_l2(&attend_packed(&packed, l, &q, &visible), &reference);
        let incremental_err = relative_l2(&cache.attend(l, &q, &visible).unwrap(), &reference);
        assert!(
            incremental_err < 2.0 * static_err + 1e-3,
            "layer {l}: {incremental_err} vs {static_err}"
        );
    }
}

#[test]
fn each_group_is_quantized_once_when_it_completes() {
    let config = QuantConfig::preset("vidkv-tuned").unwrap(); // 1 sink, 64-token window, G = 32
    let (k, v) = tensors(400);
    let mut cache = KvCache::new(SHAPE, config, gpu()).unwrap();
    cache
        .prefill(
            0,
            &k.layer_tokens(0, 0..200).unwrap(),
            &v.layer_tokens(0, 0..200).unwrap(),
        )
        .unwrap();
    // 200 tokens: 1 sink, then ⌊(199 − 64) / 32⌋ = 4 groups.
    assert_eq!(cache.groups_quantized(), 4);
    let mut expected = 4;
    for t in 200..400 {
        cache
            .append(
                0,
                &k.layer_tokens(0, t..t + 1).unwrap(),
                &v.layer_tokens(0, t..t + 1).unwrap(),
            )
            .unwrap();
        let groups = ((t + 1 - 1 - 64) / 32) as u64;
        assert_eq!(cache.groups_quantized(), groups, "after token {t}");
        assert!(
            groups - expected <= 1,
            "at most one group per one-token append"
        );
        expected = groups;
    }
    assert_eq!(cache.len(0), 400);
    assert_eq!(cache.len(1), 0);
}

#[test]
fn memory_accounting_matches_the_format() {
    let config = QuantConfig::preset("vidkv-tuned").unwrap();
    let (k, v) = tensors(1000);
    let cache = fill(&config, &k, &v, 900, 7);
    let expected = estimate_size(
        CacheShape {
            layers: 2,
            kv_heads: 2,
            tokens: 1000,
            head_dim: 64,
        },
        &config,
        0,
    );
    assert_eq!(cache.bytes(), expected.total_bytes());
    assert!((cache.bits_per_element() - expected.all_bits()).abs() < 1e-12);
}

#[test]
fn bad_calls_are_typed_errors() {
    let config = QuantConfig::preset("vidkv-tuned").unwrap();
    let mut cache = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
    let (k, v) = tensors(64);
    assert!(matches!(
        cache.attend(0, &queries(1), &[(0, 1)]),
        Err(VidkvError::InvalidConfig(_))
    ));
    assert!(matches!(
        cache.append(0, &[1.0; 5], &[1.0; 5]),
        Err(VidkvError::ShapeMismatch { .. })
    ));
    assert!(cache
        .append(
            9,
            &k.layer_tokens(0, 0..1).unwrap(),
            &v.layer_tokens(0, 0..1).unwrap()
        )
        .is_err());
    let mut bad = k.layer_tokens(0, 0..2).unwrap();
    bad[3] = f32::NAN;
    assert!(matches!(
        cache.append(0, &bad, &v.layer_tokens(0, 0..2).unwrap()),
        Err(VidkvError::NonFinite { .. })
    ));
    cache
        .prefill(
            0,
            &k.layer_tokens(0, 0..64).unwrap(),
            &v.layer_tokens(0, 0..64).unwrap(),
        )
        .unwrap();
    assert!(cache
        .prefill(
            0,
            &k.layer_tokens(0, 0..1).unwrap(),
            &v.layer_tokens(0, 0..1).unwrap()
        )
        .is_err());
    assert!(cache.attend(0, &queries(1), &[(0, 65)]).is_err());
    assert!(cache.attend_causal(0, &[0.0; 3]).is_err());
    assert!(KvCache::new(
        ModelShape {
            head_dim: 60,
            ..SHAPE
        },
        config.clone(),
        gpu()
    )
    .is_err());
    assert!(KvCache::new(
        ModelShape {
            q_heads: 5,
            ..SHAPE
        },
        config,
        gpu()
    )
    .is_err());
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn protected_tokens_attend_like_the_packed_cache() {
    // Ternary values keep protected tokens at 2 bits; rotated ones add a refinement.
    for preset in ["vidkv-tuned", "vidkv", "rotated"] {
        check_protected_prefill(preset);
    }
    let mut kivi = KvCache::new(SHAPE, QuantConfig::preset("kivi2").unwrap(), gpu()).unwrap();
    assert!(
        matches!(kivi.protect(&[1, 2]), Err(VidkvError::InvalidConfig(_))),
        "STP needs ternary or rotated values"
    );
}

fn check_protected_prefill(preset: &str) {
    let (k, v) = tensors(700);
    let q = queries(2);
    let visible = [(0u32, 700u32), (100, 600)];
    let config = QuantConfig::preset(preset).unwrap();
    let protected: Vec<u32> = (0..700).filter(|t| t % 5 == 2).collect();
    let mut cache = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
    cache.protect(&protected).unwrap();
    for l in 0..SHAPE.layers {
        cache
            .prefill(
                l,
                &k.layer_tokens(l, 0..700).unwrap(),
                &v.layer_tokens(l, 0..700).unwrap(),
            )
            .unwrap();
    }
    let packed = PackedCache::quantize(&k, &v, &config, &protected).unwrap();
    assert_eq!(cache.bytes(), packed.size().total_bytes());
    for l in 0..SHAPE.layers {
        let expected = attend_packed(&packed, l, &q, &visible);
        let err = relative_l2(&cache.attend(l, &q, &visible).unwrap(), &expected);
        assert!(err < 1e-5, "{preset} layer {l}: relative error {err}");
    }
    // Later tokens go to ordinary chunks after the protected prefill.
    let (k2, v2) = tensors(900);
    for t in 700..900 {
        cache
            .append(
                0,
                &k2.layer_tokens(0, t..t + 1).unwrap(),
                &v2.layer_tokens(0, t..t + 1).unwrap(),
            )
            .unwrap();
    }
    let out = cache.attend_causal(0, &queries(1)).unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
    assert!(cache.protect(&[1]).is_err(), "protect after the prefill");
}

#[test]
fn save_and_load_round_trip() {
    let dir = std::env::temp_dir().join(format!("vidkv-kvcache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (k, v) = tensors(900);
    let q = queries(2);
    let visible = [(0u32, 900u32), (10, 400)];
    for (preset, prefill, step, stp) in [
        ("vidkv-tuned", 900, 1, true),
        ("vidkv-tuned", 500, 33, true),
        ("vidkv-tuned", 300, 41, false),
        ("kivi2", 100, 9, false),
        ("k2v2-channel", 500, 100, false),
        ("vidkv-paper", 900, 1, false),
        ("fp16", 300, 250, false),
        ("rotated", 900, 1, false),
        ("rotated-k3v1", 300, 41, false),
        ("vidkv", 900, 1, false),
        ("vidkv", 500, 33, false),
        ("vidkv", 900, 1, true),
        ("vidkv", 500, 33, true),
    ] {
        let config = QuantConfig::preset(preset).unwrap();
        let protected: Vec<u32> = if stp {
            (0..900).filter(|t| t % 7 == 3).collect()
        } else {
            vec![]
        };
        let cache = fill_protected(&config, &protected, &k, &v, prefill, step);
        // Where the split (or the rotated state) cannot differ, the cache's contents are
        // exactly the packed form.
        // (STP applies to the prefill only, so only a whole prefill matches it.)
        let comparable =
            prefill == 900 || !(preset.starts_with("vidkv-tuned") || preset.starts_with("rotated"));
        if comparable && (prefill == 900 || !stp) {
            let packed = PackedCache::quantize(&k, &v, &config, &protected).unwrap();
            assert_eq!(cache.to_packed().unwrap(), packed, "{preset}");
        }
        let path = dir.join(format!("{preset}-{prefill}.safetensors"));
        cache.save(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            cache.to_safetensors().unwrap(),
            "{preset}: the same cache gives the same file bytes"
        );
        let loaded = KvCache::load(&path, gpu()).unwrap();
        assert_eq!(loaded.bytes(), cache.bytes(), "{preset}");
        assert_eq!(loaded.len(1), 900);
        for l in 0..SHAPE.layers {
            let a = cache.attend(l, &q, &visible).unwrap();
            let b = loaded.attend(l, &q, &visible).unwrap();
            assert!(relative_l2(&b, &a) < 1e-5, "{preset} layer {l}");
        }
    }
    // A packed-cache file that names the model's query heads loads as a cache too.
    let packed =
        PackedCache::quantize(&k, &v, &QuantConfig::preset("vidkv-tuned").unwrap(), &[]).unwrap();
    let file = dir.join("packed.safetensors");
    let extra =
        std::collections::HashMap::from([("q_heads".to_string(), SHAPE.q_heads.to_string())]);
    std::fs::write(&file, packed.to_safetensors_with(extra).unwrap()).unwrap();
    let loaded = KvCache::load(&file, gpu()).unwrap();
    assert_eq!(loaded.to_packed().unwrap(), packed);
    std::fs::write(&file, packed.to_safetensors().unwrap()).unwrap();
    assert!(KvCache::load(&file, gpu()).is_err(), "q_heads is needed");
    // Version 2 files (before rotated runs) load; unknown versions are refused.
    let cache = fill_protected(
        &QuantConfig::preset("vidkv-tuned").unwrap(),
        &[],
        &k,
        &v,
        300,
        41,
    );
    let bytes = cache.to_safetensors().unwrap();
    let current = format!("\"version\":\"{}\"", vidkv::cache::KVCACHE_VERSION);
    let with_version = |version: u32| {
        let text = replaced(&bytes, &current, &format!("\"version\":\"{version}\""));
        KvCache::from_safetensors(&text, gpu())
    };
    let old = with_version(vidkv::cache::KVCACHE_OLDEST_VERSION).unwrap();
    assert_eq!(old.to_packed().unwrap(), cache.to_packed().unwrap());
    assert!(matches!(
        with_version(9).err().expect("refused"),
        VidkvError::CorruptPacked(_)
    ));
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    assert!(KvCache::load(&bad, gpu()).is_err());
    assert!(KvCache::load(&dir.join("missing"), gpu()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bytes` with the one occurrence of `from` replaced by `to` (same length).
fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

/// `rows` as a GPU buffer.
fn gpu_buffer(rows: &[f32]) -> wgpu::Buffer {
    gpu().create_storage("test rows", rows).unwrap()
}

#[test]
fn tokens_from_gpu_buffers_equal_tokens_from_the_host() {
    let (k, v) = tensors(800);
    for (preset, stp) in [
        ("vidkv-tuned", false),
        ("vidkv-tuned", true),
        ("kivi2", false),
        ("fp16", false),
        ("rotated", false),
        ("vidkv", false),
        ("vidkv", true),
    ] {
        let config = QuantConfig::preset(preset).unwrap();
        let protected: Vec<u32> = if stp {
            (0..600).filter(|t| t % 9 == 4).collect()
        } else {
            vec![]
        };
        let mut host = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
        let mut device = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
        host.protect(&protected).unwrap();
        device.protect(&protected).unwrap();
        for l in 0..SHAPE.layers {
            for (from, to) in [(0, 600), (600, 601), (601, 700), (700, 800)] {
                let (ks, vs) = (
                    k.layer_tokens(l, from..to).unwrap(),
                    v.layer_tokens(l, from..to).unwrap(),
                );
                host.append(l, &ks, &vs).unwrap();
                device
                    .append_buffers(l, &gpu_buffer(&ks), &gpu_buffer(&vs), to - from)
                    .unwrap();
            }
        }
        if !stp {
            assert_eq!(
                device.to_packed().unwrap(),
                host.to_packed().unwrap(),
                "{preset}"
            );
        }
        let q = queries(1);
        for l in 0..SHAPE.layers {
            let a = host.attend_causal(l, &q).unwrap();
            let b = device.attend_causal(l, &q).unwrap();
            assert!(relative_l2(&b, &a) < 1e-6, "{preset} stp={stp} layer {l}");
        }
    }
    let mut cache =
        KvCache::new(SHAPE, QuantConfig::preset("vidkv-tuned").unwrap(), gpu()).unwrap();
    let small = gpu_buffer(&[0.0; 16]);
    assert!(matches!(
        cache.append_buffers(0, &small, &small, 4),
        Err(VidkvError::ShapeMismatch { .. })
    ));
}

#[test]
fn groups_after_a_protected_prefill_attend_correctly() {
    // A protected prefill, then more groups in chunks: the chunk positions must follow the
    // prefill's quantized run. Compare with the same tokens without protection: both are
    // quantizations of one cache, so their attention must agree to the quantization error.
    for preset in ["vidkv-tuned", "vidkv"] {
        check_groups_after_protected_prefill(preset);
    }
}

fn check_groups_after_protected_prefill(preset: &str) {
    let (k, v) = tensors(1200);
    let q = queries(1);
    let config = QuantConfig::preset(preset).unwrap();
    let protected: Vec<u32> = (0..600).filter(|t| t % 4 == 1).collect();
    let fill = |protect: &[u32]| {
        let mut cache = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
        cache.protect(protect).unwrap();
        cache
            .prefill(
                0,
                &k.layer_tokens(0, 0..600).unwrap(),
                &v.layer_tokens(0, 0..600).unwrap(),
            )
            .unwrap();
        cache
            .append(
                0,
                &k.layer_tokens(0, 600..1200).unwrap(),
                &v.layer_tokens(0, 600..1200).unwrap(),
            )
            .unwrap();
        cache
    };
    let (with, without) = (fill(&protected), fill(&[]));
    let mut exact = KvCache::new(SHAPE, QuantConfig::preset("fp16").unwrap(), gpu()).unwrap();
    exact
        .prefill(
            0,
            &k.layer_tokens(0, 0..1200).unwrap(),
            &v.layer_tokens(0, 0..1200).unwrap(),
        )
        .unwrap();
    let reference = exact.attend_causal(0, &q).unwrap();
    let err_with = relative_l2(&with.attend_causal(0, &q).unwrap(), &reference);
    let err_without = relative_l2(&without.attend_causal(0, &q).unwrap(), &reference);
    assert!(
        err_with <= err_without * 1.5 + 1e-3,
        "{preset}: with STP {err_with}, without {err_without}"
    );
}

/// A saved cache whose header claims more than the file holds, or a model shape no cache
/// takes (`q_heads` 0 or huge), is a typed error before anything is allocated from it.
#[test]
fn claimed_sizes_and_query_heads_are_checked_on_load() {
    let (k, v) = tensors(300);
    let cache = fill(&QuantConfig::preset("vidkv").unwrap(), &k, &v, 300, 1);
    let bytes = cache.to_safetensors().unwrap();
    let refused = |bad: &[u8], what: &str| match KvCache::from_safetensors(bad, gpu()) {
        Err(VidkvError::CorruptPacked(_)) => {}
        Err(e) => panic!("{what}: {e}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    for field in ["layers", "kv_heads", "q_heads", "head_dim"] {
        for value in [0u64, 1 << 40, u64::MAX] {
            let bad = metadata::with_json_field(&bytes, "shape", field, value.into());
            refused(&bad, &format!("{field} = {value}"));
        }
    }
    // A packed-cache file loaded as a cache: its `q_heads` entry is checked the same way.
    let packed = cache.to_packed().unwrap();
    for q_heads in ["0", "5", "99999999999"] {
        let bad = metadata::with_metadata(&packed.to_safetensors().unwrap(), "q_heads", q_heads);
        refused(&bad, &format!("q_heads = {q_heads}"));
    }
    assert!(matches!(
        KvCache::new(
            ModelShape {
                layers: 1 << 40,
                ..SHAPE
            },
            QuantConfig::default(),
            gpu()
        ),
        Err(VidkvError::InvalidConfig(_))
    ));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn saved() -> &'static Vec<u8> {
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES.get_or_init(|| {
            let (k, v) = tensors(300);
            let config = QuantConfig::preset("vidkv-tuned").unwrap();
            let mut cache = KvCache::new(SHAPE, config, gpu()).unwrap();
            cache.protect(&[5, 9, 40]).unwrap();
            for l in 0..SHAPE.layers {
                cache
                    .prefill(
                        l,
                        &k.layer_tokens(l, 0..200).unwrap(),
                        &v.layer_tokens(l, 0..200).unwrap(),
                    )
                    .unwrap();
                cache
                    .append(
                        l,
                        &k.layer_tokens(l, 200..300).unwrap(),
                        &v.layer_tokens(l, 200..300).unwrap(),
                    )
                    .unwrap();
            }
            cache.to_safetensors().unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]

        #[test]
        fn mutated_cache_files_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = saved().clone();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(cache) = KvCache::from_safetensors(&bytes, gpu()) {
                let _ = cache.attend_causal(0, &queries(1));
            }
        }
    }
}

/// A host that already runs on wgpu shares its own device and queue with the cache
/// (`GpuContext::from_device`), and keeps the context and the cache in one struct; the
/// cache gives the same attention as on a context vidkv opened itself. A device made with
/// WebGPU's default limits is refused with the limit it lacks.
#[test]
fn a_host_device_runs_the_cache() {
    struct Host {
        cache: KvCache,
        _gpu: vidkv::gpu::GpuContext,
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter (lavapipe in CI)");
    let device_with = |limits: wgpu::Limits| {
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("host"),
            required_limits: limits,
            ..Default::default()
        }))
        .expect("a device")
    };
    let (device, queue) = device_with(wgpu::Limits::default());
    let refused =
        vidkv::gpu::GpuContext::from_device(adapter.get_info(), device, queue, &Default::default());
    match refused {
        Err(VidkvError::InvalidConfig(message)) => {
            assert!(
                message.contains("max_storage_buffers_per_shader_stage"),
                "{message}"
            )
        }
        other => panic!("default limits accepted: {:?}", other.err()),
    }
    let (device, queue) = device_with(vidkv::gpu::GpuContext::required_limits());
    let host_gpu =
        vidkv::gpu::GpuContext::from_device(adapter.get_info(), device, queue, &Default::default())
            .unwrap();
    // What it reports is the host's device: created without features, it has no fast path.
    let seen = host_gpu.capabilities();
    assert!(
        !seen.offer_known && !seen.subgroups && seen.fast_paths.is_empty(),
        "{seen:?}"
    );
    let (k, v) = tensors(300);
    let config = QuantConfig::default();
    let mut host = Host {
        cache: KvCache::new(SHAPE, config.clone(), &host_gpu).unwrap(),
        _gpu: host_gpu.clone(),
    };
    let own = fill(&config, &k, &v, 300, 1);
    for l in 0..SHAPE.layers {
        let rows = |t: &Tensor| t.layer_tokens(l, 0..300).unwrap();
        host.cache.prefill(l, &rows(&k), &rows(&v)).unwrap();
    }
    let q = queries(1);
    for l in 0..SHAPE.layers {
        let a = own.attend_causal(l, &q).unwrap();
        let b = host.cache.attend_causal(l, &q).unwrap();
        assert!(relative_l2(&b, &a) < 1e-6, "layer {l}");
    }
}

/// The setting of the buffer-API decode tests: a 300-token prefill of the default preset
/// on a context of its own (the tests of this binary run in parallel on the shared one, and
/// the counts are per context), its host-API twin, the query and one output buffer per
/// layer; the steps take tokens 300..340 of `k` and `v`.
struct BufferDecode {
    k: Tensor,
    v: Tensor,
    q: Vec<f32>,
    config: QuantConfig,
    host: KvCache,
    own: vidkv::GpuContext,
    device: KvCache,
    q_buffer: wgpu::Buffer,
    outs: Vec<wgpu::Buffer>,
}

impl BufferDecode {
    /// Two default-preset caches holding the first `prefill` of `tokens` tokens: one on the
    /// shared context (the host API's twin), one on a context of its own.
    fn new(prefill: usize, tokens: usize) -> Self {
        Self::on(prefill, tokens, &Default::default())
    }

    /// [`BufferDecode::new`] with the device cache's context opened with `options`.
    fn on(prefill: usize, tokens: usize, options: &vidkv::GpuOptions) -> Self {
        let (k, v) = tensors(tokens);
        let q = queries(1);
        let config = QuantConfig::default();
        let own = vidkv::GpuContext::new(options).unwrap();
        let mut host = KvCache::new(SHAPE, config.clone(), gpu()).unwrap();
        let mut device = KvCache::new(SHAPE, config.clone(), &own).unwrap();
        for l in 0..SHAPE.layers {
            let rows = |t: &Tensor| t.layer_tokens(l, 0..prefill).unwrap();
            host.prefill(l, &rows(&k), &rows(&v)).unwrap();
            device.prefill(l, &rows(&k), &rows(&v)).unwrap();
        }
        let q_buffer = own.create_storage("test rows", &q).unwrap();
        let outs = (0..SHAPE.layers)
            .map(|_| {
                own.create_storage("test rows", &vec![0.0; q.len()])
                    .unwrap()
            })
            .collect();
        BufferDecode {
            k,
            v,
            q,
            config,
            host,
            own,
            device,
            q_buffer,
            outs,
        }
    }

    fn buffer(&self, rows: &[f32]) -> wgpu::Buffer {
        self.own.create_storage("test rows", rows).unwrap()
    }

    /// Every layer's K and V of token `t`, in GPU buffers.
    fn inputs(&self, t: usize) -> Vec<(wgpu::Buffer, wgpu::Buffer)> {
        (0..SHAPE.layers)
            .map(|l| {
                (
                    self.buffer(&self.k.layer_tokens(l, t..t + 1).unwrap()),
                    self.buffer(&self.v.layer_tokens(l, t..t + 1).unwrap()),
                )
            })
            .collect()
    }

    /// A step of the device cache with `inputs` (a token's K and V of every layer) appended
    /// and every layer's attention over all its tokens written to `outs`.
    fn record_step(&mut self, inputs: &[(wgpu::Buffer, wgpu::Buffer)]) -> DecodeStep<'_> {
        let mut step = self.device.begin_step().unwrap();
        for (l, (kb, vb)) in inputs.iter().enumerate() {
            step.append_buffers(l, kb, vb, 1).unwrap();
            let visible = [(0u32, step.cache().len(l) as u32)];
            step.attend_buffers(l, &self.q_buffer, &self.outs[l], &visible)
                .unwrap();
        }
        step
    }

    /// Step `t` of both caches: the device cache's recorded and submitted in one submission
    /// (checked), token `t` appended to the host-API twin.
    fn submitted_step(&mut self, t: usize) {
        let inputs = self.inputs(t);
        let before = self.own.counts();
        self.record_step(&inputs).submit().unwrap();
        assert_eq!(self.own.counts().submissions - before.submissions, 1);
        self.append_to_host(t);
    }

    /// Every layer's output of step `t` equals the host-API twin's attention to 1e-6.
    fn check_outputs(&self, t: usize) {
        for (l, out) in self.outs.iter().enumerate() {
            let got = self.own.read_floats(out, self.q.len()).unwrap();
            let expected = self.host.attend_causal(l, &self.q).unwrap();
            let err = relative_l2(&got, &expected);
            assert!(err < 1e-6, "step {t} layer {l}: relative error {err}");
        }
    }

    /// Appends token `t` to every layer of the host-API twin.
    fn append_to_host(&mut self, t: usize) {
        for l in 0..SHAPE.layers {
            self.host
                .append(
                    l,
                    &self.k.layer_tokens(l, t..t + 1).unwrap(),
                    &self.v.layer_tokens(l, t..t + 1).unwrap(),
                )
                .unwrap();
        }
    }
}

/// A decode step through the buffer API: K/V appended from GPU buffers and attention read
/// from and written to GPU buffers reads nothing back (the context's counts), and gives what
/// the host API gives. Bad buffers are typed errors.
#[test]
fn decode_steps_through_buffers_read_nothing_back() {
    let mut f = BufferDecode::new(300, 400);
    for t in 300..340 {
        let step = f.inputs(t);
        let before = f.own.counts();
        for (l, (kb, vb)) in step.iter().enumerate() {
            f.device.append_buffers(l, kb, vb, 1).unwrap();
            let visible = [(0u32, f.device.len(l) as u32)];
            f.device
                .attend_buffers(l, &f.q_buffer, &f.outs[l], &visible)
                .unwrap();
        }
        let after = f.own.counts();
        assert_eq!(
            after.read_backs, before.read_backs,
            "step {t} read something back"
        );
        f.append_to_host(t);
    }
    for (l, out) in f.outs.iter().enumerate() {
        let got: Vec<f32> = f
            .own
            .read_words(out, f.q.len())
            .unwrap()
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let expected = f.host.attend_causal(l, &f.q).unwrap();
        assert!(relative_l2(&got, &expected) < 1e-6, "layer {l}");
    }
    let small = f.buffer(&[0.0; 4]);
    assert!(matches!(
        f.device.attend_buffers(0, &small, &f.outs[0], &[(0, 10)]),
        Err(VidkvError::ShapeMismatch { .. })
    ));
}

/// A whole model's decode step (every layer's append and attend through buffers) is one
/// submission with no read-back, and gives what the per-call host API gives; a step handed
/// to the host (`finish`) is submitted by the host; a read-back or a second step while one
/// records is a typed error.
#[test]
fn a_whole_model_step_is_one_submission() {
    let mut f = BufferDecode::new(300, 400);
    // Steps 300..340 cross the group boundary at 320 (a flush inside a step).
    for t in 300..340 {
        let inputs = f.inputs(t);
        let before = f.own.counts();
        let step = f.record_step(&inputs);
        if t == 310 {
            // Handed to the host, which submits it with its own work.
            let buffers = step.finish();
            assert!(!buffers.is_empty());
            f.own.queue().submit(buffers);
            assert_eq!(f.own.counts().submissions, before.submissions);
        } else {
            step.submit().unwrap();
            let after = f.own.counts();
            assert_eq!(after.submissions - before.submissions, 1, "step {t}");
            assert_eq!(after.read_backs, before.read_backs, "step {t}");
        }
        f.append_to_host(t);
        if t % 10 == 9 {
            f.check_outputs(t);
        }
    }
    let step = f.device.begin_step().unwrap();
    assert!(matches!(
        f.own.read_words(&f.outs[0], 4),
        Err(VidkvError::InvalidConfig(_))
    ));
    let mut other = KvCache::new(SHAPE, f.config.clone(), &f.own).unwrap();
    assert!(matches!(
        other.begin_step(),
        Err(VidkvError::InvalidConfig(_))
    ));
    drop(step);
    assert!(other.begin_step().is_ok());
}

/// The same steps on a context without immediates (what a browser gives): every dispatch's
/// parameters go to a slot of a uniform buffer at a dynamic offset, a fresh buffer for each
/// batch of a step (their host writes all land before the step's one submission), so no
/// batch overwrites another's.
#[test]
fn a_whole_model_step_on_uniform_parameters() {
    let options = vidkv::GpuOptions {
        portable_only: true,
        ..Default::default()
    };
    let mut f = BufferDecode::on(300, 400, &options);
    assert!(!f.own.uses_immediates());
    for t in 300..330 {
        f.submitted_step(t);
        if t % 10 == 9 || t == 320 {
            f.check_outputs(t);
        }
    }
}

/// A decode step whose flush finds the history's planes full grows them inside the step
/// (the copy and the flush in its one submission), to the host API's attention.
#[test]
fn a_step_grows_the_history_in_its_submission() {
    // 8,288 tokens: 1 sink, 256 groups (planes sized for them, full) and 95 rows in the
    // window; the next token flushes a group, which first grows the planes.
    let mut f = BufferDecode::new(8288, 8292);
    for t in 8288..8292 {
        f.submitted_step(t);
        f.check_outputs(t);
    }
    assert_eq!(f.device.len(0), 8292);
    assert_eq!(f.device.groups_quantized(), f.host.groups_quantized());
    // The planes grew to 512 groups (257 used); the f32 window went back to its usual size
    // after the 8,288-token prefill passed through it (it held 17 MB, 28 times the cache).
    let (held, stored) = (f.device.allocated_bytes(), f.device.bytes() as u64);
    assert!(held < 3 * stored, "{held} bytes held for {stored} stored");
}

/// `examples/host_device.rs` (which `cargo test` builds) runs: a host device, the host's
/// own kernel writing K/V/Q, and decode steps with no read-back.
#[test]
fn the_host_device_example_decodes_without_read_backs() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("host_device"))
        .unwrap();
    let out = std::process::Command::new(&example)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo test builds the examples)",
                example.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(", 0 read-backs"), "{stdout}");
}

/// A cache whose history grows past one step of its planes (8,192 tokens) still decodes
/// a layer in two dispatches: the planes grow in place (re-strided on the GPU), so the
/// history stays one segment, and the sinks and window ride in its fused dispatch
/// (`vidkv`, and `kivi2`'s 2-bit dispatch); fp16 keeps one exact store. A context whose binding limit stops the growth
/// continues in new chunks (a dispatch each) to the same contents and attention. (Contexts
/// of their own, so that no other test's kernels enter their profiles.)
#[test]
fn a_growing_history_decodes_in_two_dispatches() {
    let grown = vidkv::gpu::GpuContext::new(&Default::default()).unwrap();
    let chunked = vidkv::gpu::GpuContext::new(&vidkv::gpu::GpuOptions {
        max_binding_bytes: Some(600 * 1024),
        ..Default::default()
    })
    .unwrap();
    let tokens = 8192 + 900;
    let (k, v) = tensors(tokens);
    let q = queries(2);
    let visible = [(0u32, tokens as u32), (3, tokens as u32 - 50)];
    // Every plane layout re-strides: group records (vidkv), per-token rows with group means
    // (rotated), per-channel rows (kivi2 keys, k2v2-channel values), signs and ternary
    // records (vidkv-paper), exact rows (fp16). Only the fused presets' passes are counted
    // (kivi2's planes stay under the limited context's binding limit: one chunk there too).
    for (preset, passes) in [
        ("vidkv", Some(("attention_split_groups+", 2))),
        (
            "fp16",
            Some(("attention_split+exact+words+exact_only::", 4)),
        ),
        ("rotated", None),
        (
            "kivi2",
            Some(("attention_split+exact+words+two_bit+value_tokens::", 1)),
        ),
        (
            "k2v2-channel",
            Some(("attention_split+exact+words+two_bit+value_channels::", 1)),
        ),
        ("vidkv-paper", None),
    ] {
        let config = QuantConfig::preset(preset).unwrap();
        let fill_on = |ctx: &vidkv::gpu::GpuContext| {
            let mut cache = KvCache::new(SHAPE, config.clone(), ctx).unwrap();
            for l in 0..SHAPE.layers {
                let rows = |t: &Tensor, r| t.layer_tokens(l, r).unwrap();
                cache
                    .prefill(l, &rows(&k, 0..300), &rows(&v, 0..300))
                    .unwrap();
                for at in (300..tokens).step_by(200) {
                    let r = at..(at + 200).min(tokens);
                    cache.append(l, &rows(&k, r.clone()), &rows(&v, r)).unwrap();
                }
            }
            cache
        };
        let (one, many) = (fill_on(&grown), fill_on(&chunked));
        // GPU memory: the stored bytes and the room to grow. An fp16 layer's one store grew
        // by a quarter or 1,024 rows at a time, so it holds at most that more than its rows.
        let (held, stored) = (one.allocated_bytes(), one.bytes() as u64);
        assert!(held >= stored, "{preset}: {held}");
        if preset == "fp16" {
            let row_bytes = (SHAPE.layers * SHAPE.kv_heads * SHAPE.head_dim * 2 * 2) as u64;
            assert!(
                held <= stored + (stored / 4).max(1024 * row_bytes),
                "{held}, {stored}"
            );
        }
        let contents = one.to_packed().unwrap();
        // (Compared with `==`: the contents are megabytes of words to print.)
        assert!(
            contents == many.to_packed().unwrap(),
            "{preset}: contents differ"
        );
        if !preset.contains("vidkv") && preset != "rotated" {
            // No learned split or fitted state: the contents are the all-at-once packing.
            let packed = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
            assert!(
                contents == packed,
                "{preset}: contents differ from the packing"
            );
        }
        for (ctx, cache, one_chunk) in [(&grown, &one, true), (&chunked, &many, false)] {
            if let Some((kernel, chunks)) = passes {
                assert!(
                    ctx.start_kernel_profiling(),
                    "lavapipe has timestamp queries"
                );
                cache.attend(0, &q, &visible).unwrap();
                let dispatches = if one_chunk { 1 } else { chunks };
                let passes = timed_passes(ctx);
                assert_eq!(passes.len(), 2, "{preset}: {passes:?}");
                assert_eq!(passes[0], "attention_combine::main ×1", "{passes:?}");
                assert!(
                    passes[1].starts_with(kernel)
                        && passes[1].ends_with(&format!("::main ×{dispatches}")),
                    "{preset}: {passes:?}"
                );
            }
            for l in 0..SHAPE.layers {
                let got = cache.attend(l, &q, &visible).unwrap();
                let expected = one.attend(l, &q, &visible).unwrap();
                let err = relative_l2(&got, &expected);
                assert!(err < 1e-5, "{preset} layer {l}: relative error {err}");
            }
        }
    }
}

/// A host device of exactly [`GpuContext::required_limits`] (10 storage buffers per stage,
/// Chrome's count) runs a default-preset cache of 8,492 tokens, to the same attention as
/// the context vidkv makes for itself.
#[test]
fn a_host_device_of_the_required_limits_runs_the_cache() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter (lavapipe in CI)");
    let required = vidkv::gpu::GpuContext::required_limits();
    assert_eq!(required.max_storage_buffers_per_shader_stage, 10);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("required limits"),
        required_limits: required,
        ..Default::default()
    }))
    .expect("a device");
    let host =
        vidkv::gpu::GpuContext::from_device(adapter.get_info(), device, queue, &Default::default())
            .unwrap();
    let tokens = 8192 + 300;
    let (k, v) = tensors(tokens);
    let config = QuantConfig::default();
    let mut on_host = KvCache::new(SHAPE, config.clone(), &host).unwrap();
    let mut own = KvCache::new(SHAPE, config, gpu()).unwrap();
    for l in 0..SHAPE.layers {
        let rows = |t: &Tensor| t.layer_tokens(l, 0..tokens).unwrap();
        on_host.prefill(l, &rows(&k), &rows(&v)).unwrap();
        own.prefill(l, &rows(&k), &rows(&v)).unwrap();
    }
    let q = queries(3);
    for l in 0..SHAPE.layers {
        let a = own.attend_causal(l, &q).unwrap();
        let b = on_host.attend_causal(l, &q).unwrap();
        let err = relative_l2(&b, &a);
        assert!(err < 1e-5, "layer {l}: relative error {err}");
    }
}
