//! Bad input never panics: typed errors for malformed tensors and sidecars, and a
//! property test that feeds random and mutated bytes to the loader.

#[path = "common/cli.rs"]
mod cli_runner;

use std::collections::HashMap;
use std::process::Command;

use proptest::prelude::*;
use safetensors::tensor::{serialize, TensorView};
use safetensors::Dtype;

use vidkv::io::KvSample;
use vidkv::{PackedCache, QuantConfig, Tensor, VidkvError};

/// A small valid sample as safetensors bytes: k, v [1, 1, 64, 8], q [1, 2, 2, 8].
fn sample_bytes(dtype: Dtype, poison: Option<(&str, usize, f32)>) -> Vec<u8> {
    let make = |name: &str, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let mut values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        if let Some((target, at, value)) = poison {
            if target == name {
                values[at] = value;
            }
        }
        let bytes: Vec<u8> = match dtype {
            Dtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        (name.to_string(), shape, bytes)
    };
    let tensors = [
        make("k", vec![1, 1, 64, 8]),
        make("v", vec![1, 1, 64, 8]),
        make("q", vec![1, 2, 2, 8]),
    ];
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    serialize(&views, None).unwrap()
}

const SIDECAR: &str = r#"{"q_positions":[10,63],"attention":{"type":"causal"}}"#;

#[test]
fn every_supported_dtype_loads() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let sample = KvSample::from_bytes("s", &sample_bytes(dtype, None), Some(SIDECAR)).unwrap();
        assert_eq!(sample.k.shape, vec![1, 1, 64, 8]);
    }
}

#[test]
fn non_finite_values_name_the_tensor_and_index() {
    let bytes = sample_bytes(Dtype::F32, Some(("v", 8 * 5 + 3, f32::NAN)));
    match KvSample::from_bytes("s", &bytes, None) {
        Err(VidkvError::NonFinite { tensor, index, .. }) => {
            assert_eq!(tensor, "v");
            assert_eq!(index, vec![0, 0, 5, 3]);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let bytes = sample_bytes(Dtype::F16, Some(("q", 0, f32::INFINITY)));
    assert!(matches!(
        KvSample::from_bytes("s", &bytes, None),
        Err(VidkvError::NonFinite { .. })
    ));
}

/// Finite queries so large that a logit could overflow f32 (≈ 3e38) are refused with a
/// typed error that names the tensor, on loading a sample and in every attention path,
/// instead of attention answering NaN.
#[test]
fn huge_finite_queries_are_refused_not_turned_into_nan() {
    let bytes = sample_bytes(Dtype::F32, Some(("q", 5, 3.0e38)));
    match KvSample::from_bytes("s", &bytes, None) {
        Err(VidkvError::QueryOutOfRange { tensor, index, .. }) => {
            assert_eq!(tensor, "q");
            assert_eq!(index, vec![0, 0, 0, 5]);
        }
        other => panic!("expected QueryOutOfRange, got {other:?}"),
    }
    let shape = vidkv::ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let rows: Vec<f32> = (0..100 * 64).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let mut q = vec![0.25f32; 2 * 64];
    q[70] = -3.0e38;
    let gpu = vidkv::gpu::GpuContext::new(&vidkv::gpu::GpuOptions::default()).unwrap();
    for preset in ["kivi2", "vidkv"] {
        let config = QuantConfig::preset(preset).unwrap();
        let mut cache = vidkv::KvCache::new(shape, config.clone(), &gpu).unwrap();
        cache.append(0, &rows, &rows).unwrap();
        let err = cache.attend_causal(0, &q).unwrap_err();
        assert!(
            matches!(err, VidkvError::QueryOutOfRange { .. }),
            "{preset}: {err}"
        );
        let mut oracle = vidkv::cache::ReferenceCache::new(shape, config).unwrap();
        vidkv::cache::ModelCache::append(&mut oracle, 0, &rows, &rows).unwrap();
        let err = vidkv::cache::ModelCache::attend_causal(&oracle, 0, &q).unwrap_err();
        assert!(
            matches!(err, VidkvError::QueryOutOfRange { .. }),
            "{preset}: {err}"
        );
        // The largest accepted magnitude still gives finite outputs.
        let mut q = q.clone();
        q[70] = -vidkv::tensor::QUERY_MAX;
        let out = cache.attend_causal(0, &q).unwrap();
        assert!(out.iter().all(|x| x.is_finite()), "{preset}");
    }
}

#[test]
fn out_of_f16_range_values_are_rejected_by_the_quantizer() {
    let mut data = vec![0.5f32; 64 * 8];
    data[17] = 1.0e6;
    let k = Tensor::new("k", vec![1, 1, 64, 8], data).unwrap();
    let err =
        PackedCache::quantize(&k, &k, &QuantConfig::preset("kivi2").unwrap(), &[]).unwrap_err();
    assert!(
        matches!(err, VidkvError::OutOfRange { ref tensor, .. } if tensor == "k"),
        "{err}"
    );
}

#[test]
fn structural_problems_are_typed_errors() {
    assert!(matches!(
        KvSample::from_bytes("s", &[], None),
        Err(VidkvError::Safetensors(_))
    ));
    let good = sample_bytes(Dtype::F32, None);
    assert!(matches!(
        KvSample::from_bytes("s", &good[..good.len() - 3], None),
        Err(VidkvError::Safetensors(_))
    ));

    let missing = {
        let data = vec![0u8; 64 * 8 * 4];
        let view = TensorView::new(Dtype::F32, vec![1, 1, 64, 8], &data).unwrap();
        serialize([("k", view.clone()), ("v", view)], None).unwrap()
    };
    assert!(
        matches!(KvSample::from_bytes("s", &missing, None), Err(VidkvError::MissingTensor(ref n)) if n == "q")
    );

    let ints = {
        let data = vec![0u8; 64 * 8 * 4];
        let view = TensorView::new(Dtype::I32, vec![1, 1, 64, 8], &data).unwrap();
        serialize(
            [("k", view.clone()), ("v", view.clone()), ("q", view)],
            None,
        )
        .unwrap()
    };
    assert!(matches!(
        KvSample::from_bytes("s", &ints, None),
        Err(VidkvError::UnsupportedDtype { .. })
    ));

    let mismatched = {
        let kv = vec![0u8; 64 * 8 * 4];
        let q = vec![0u8; 3 * 2 * 8 * 4];
        // 3 query heads cannot share 2 KV heads.
        let kv = TensorView::new(Dtype::F32, vec![1, 2, 32, 8], &kv).unwrap();
        let q = TensorView::new(Dtype::F32, vec![1, 3, 2, 8], &q).unwrap();
        serialize([("k", kv.clone()), ("v", kv), ("q", q)], None).unwrap()
    };
    assert!(matches!(
        KvSample::from_bytes("s", &mismatched, None),
        Err(VidkvError::ShapeMismatch { .. })
    ));

    let empty = {
        let view = TensorView::new(Dtype::F32, vec![1, 1, 0, 8], &[]).unwrap();
        serialize(
            [("k", view.clone()), ("v", view.clone()), ("q", view)],
            None,
        )
        .unwrap()
    };
    assert!(matches!(
        KvSample::from_bytes("s", &empty, None),
        Err(VidkvError::EmptyTensor(_))
    ));
}

#[test]
fn malformed_sidecars_are_typed_errors() {
    let good = sample_bytes(Dtype::F32, None);
    for sidecar in [
        "not json",
        "{}",
        r#"{"q_positions":[1],"attention":{"type":"causal"}}"#,
        r#"{"q_positions":[1,64],"attention":{"type":"causal"}}"#,
        r#"{"q_positions":[1,-2],"attention":{"type":"causal"}}"#,
        r#"{"q_positions":[1,2],"attention":{"type":"sliding"}}"#,
        r#"{"q_positions":[1,2],"attention":{"type":"block","blocks":[[0,2,3]]}}"#,
        r#"{"q_positions":[1,40],"attention":{"type":"block","blocks":[[0,32]]}}"#,
        r#"{"q_positions":[1,2],"attention":{"type":"block","blocks":[[0,100]]}}"#,
    ] {
        let result = KvSample::from_bytes("s", &good, Some(sidecar));
        assert!(
            matches!(result, Err(VidkvError::Sidecar(_))),
            "{sidecar}: {result:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = KvSample::from_bytes("fuzz", &bytes, None);
    }

    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        dtype in prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::BF16]),
    ) {
        let mut bytes = sample_bytes(dtype, None);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(sample) = KvSample::from_bytes("fuzz", &bytes, Some(SIDECAR)) {
            for name in vidkv::PRESET_NAMES {
                let _ = PackedCache::quantize(&sample.k, &sample.v, &QuantConfig::preset(name).unwrap(), &[]);
            }
        }
    }

    #[test]
    fn mutated_sidecars_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
    ) {
        let mut text: Vec<char> = SIDECAR.chars().collect();
        for (at, c) in edits {
            let i = at.index(text.len());
            text[i] = c;
        }
        let text: String = text.into_iter().collect();
        let _ = KvSample::from_bytes("fuzz", &sample_bytes(Dtype::F32, None), Some(&text));
    }
}

use cli_runner::vidkv;

/// An unknown `WGPU_BACKEND` is named in the error, not answered with a driver install hint.
#[test]
fn an_unknown_wgpu_backend_is_named_in_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(["report", "--device", "gpu"])
        .env("WGPU_BACKEND", "vulkann")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WGPU_BACKEND=`vulkann`"), "{stderr}");
    assert!(!stderr.contains("apt-get"), "{stderr}");
}

#[test]
fn cli_bad_files_exit_non_zero_with_a_message() {
    let dir = std::env::temp_dir().join(format!("vidkv-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.safetensors");
    let good = sample_bytes(Dtype::F32, None);
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let nan = dir.join("nan.safetensors");
    std::fs::write(&nan, sample_bytes(Dtype::F32, Some(("k", 9, f32::NAN)))).unwrap();
    let missing = dir.join("missing.safetensors");

    for (path, needle) in [
        (&truncated, "safetensors"),
        (&nan, "non-finite"),
        (&missing, "missing.safetensors"),
    ] {
        let out = vidkv(&["report", "--input", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path:?} should fail");
        assert!(stderr.contains(needle), "{path:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = vidkv(&["report", "--preset", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
    let out = vidkv(&["report", "--residual", "33"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of group_size"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layer_tokens_checks_rank_and_ranges() {
    let t = Tensor::new("k", vec![2, 3, 4, 2], (0..48).map(|i| i as f32).collect()).unwrap();
    assert_eq!(
        t.layer_tokens(1, 1..3).unwrap(),
        [26.0, 27.0, 28.0, 29.0, 34.0, 35.0, 36.0, 37.0, 42.0, 43.0, 44.0, 45.0]
    );
    assert!(t.layer_tokens(0, 2..2).unwrap().is_empty());
    for bad in [t.layer_tokens(2, 0..1), t.layer_tokens(0, 3..5)] {
        assert!(
            matches!(bad, Err(VidkvError::ShapeMismatch { .. })),
            "{bad:?}"
        );
    }
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = t.layer_tokens(0, 3..1);
    assert!(matches!(reversed, Err(VidkvError::ShapeMismatch { .. })));
    let flat = Tensor::new("x", vec![48], vec![0.0; 48]).unwrap();
    assert!(matches!(
        flat.layer_tokens(0, 0..1),
        Err(VidkvError::ShapeMismatch { .. })
    ));
}

/// A sample whose values all lie below f16's normal range (here 1e-9 × the usual sample):
/// the f16 scales underflow, which the report names per tensor and the CLI warns about.
#[test]
fn values_below_the_f16_scale_range_are_reported_and_warned() {
    let tiny = |x: f32| x * 1e-9;
    let good = KvSample::from_bytes("good", &sample_bytes(Dtype::F32, None), None).unwrap();
    let scaled = |t: &Tensor| {
        Tensor::new(
            "x",
            t.shape.clone(),
            t.data.iter().map(|&x| tiny(x)).collect(),
        )
        .unwrap()
    };
    let bytes = {
        let (k, v) = (scaled(&good.k), scaled(&good.v));
        let raw = |t: &Tensor| -> Vec<u8> { t.data.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (kb, vb, qb) = (raw(&k), raw(&v), raw(&good.q));
        let views: HashMap<String, TensorView<'_>> =
            [("k", &k, &kb), ("v", &v, &vb), ("q", &good.q, &qb)]
                .into_iter()
                .map(|(n, t, b)| {
                    (
                        n.to_string(),
                        TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap(),
                    )
                })
                .collect();
        serialize(&views, None).unwrap()
    };
    let sample = KvSample::from_bytes("tiny", &bytes, None).unwrap();
    // (head_dim 8: the rotated schemes need multiples of 16, so the 2-bit preset here.)
    let config = QuantConfig::preset("kivi2").unwrap();
    let metrics = vidkv::report::evaluate(&sample, "kivi2", &config).unwrap();
    assert_eq!(metrics.underflow, ["k", "v"]);
    let normal = vidkv::report::evaluate(&good, "kivi2", &config).unwrap();
    assert!(normal.underflow.is_empty());
    let dir = std::env::temp_dir().join(format!("vidkv-underflow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("tiny.safetensors");
    std::fs::write(&input, &bytes).unwrap();
    let output = dir.join("tiny-cache.safetensors");
    let out = vidkv(&[
        "quantize",
        "--device",
        "cpu",
        "--preset",
        "kivi2",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("below f16's normal range"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
