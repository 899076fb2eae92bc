//! Saving and loading compressed caches: exact round trips, the size of a 16k-token video
//! prefix against its f16 form, and corrupted files as typed errors (fuzzed).

#[path = "common/data.rs"]
mod data;

use data::shared_sample;

#[path = "common/metadata.rs"]
mod metadata;

use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;

use vidkv::packed::stp::takes_protection;
use vidkv::{PackedCache, QuantConfig, Tensor, VidkvError, PRESET_NAMES};

fn small_tensor(seed: u32) -> Tensor {
    let data = (0..2 * 2 * 100 * 16)
        .map(|i: u32| {
            ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 250.0 - 2.0
        })
        .collect();
    Tensor::new("x", vec![2, 2, 100, 16], data).unwrap()
}

#[test]
fn every_preset_round_trips_exactly() {
    let (k, v) = (small_tensor(1), small_tensor(2));
    for preset in PRESET_NAMES {
        let mut config = QuantConfig::preset(preset).unwrap();
        config.group_size = 16;
        config.residual = config.residual.min(16);
        let protected: Vec<u32> = if takes_protection(&config.values) {
            vec![3, 9, 40, 41]
        } else {
            vec![]
        };
        let cache = PackedCache::quantize(&k, &v, &config, &protected).unwrap();
        let bytes = cache.to_safetensors().unwrap();
        let loaded = PackedCache::from_safetensors(&bytes).unwrap();
        assert_eq!(loaded, cache, "{preset}");
        // The same cache gives the same bytes (the header's keys are sorted).
        assert_eq!(
            bytes,
            cache.to_safetensors().unwrap(),
            "{preset}: file bytes"
        );
    }
    for preset in vidkv::config::ROTATED_PRESET_NAMES {
        let mut config = QuantConfig::preset(preset).unwrap();
        config.group_size = 16;
        config.residual = 16;
        for protected in [&[][..], &[3, 9, 40, 41][..]] {
            let cache = PackedCache::quantize(&k, &v, &config, protected).unwrap();
            let loaded = PackedCache::from_safetensors(&cache.to_safetensors().unwrap()).unwrap();
            assert_eq!(loaded, cache, "{preset}");
        }
    }
}

#[test]
fn version_1_files_load_and_unknown_versions_are_refused() {
    let (k, v) = (small_tensor(1), small_tensor(2));
    let mut config = QuantConfig::preset("vidkv").unwrap();
    config.group_size = 16;
    config.residual = 16;
    let cache = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
    let bytes = cache.to_safetensors().unwrap();
    let current = format!("\"version\":\"{}\"", vidkv::packed::FILE_VERSION);
    let at = bytes
        .windows(current.len())
        .position(|w| w == current.as_bytes())
        .expect("the version is in the header");
    for (version, loads) in [(b'1', true), (b'9', false)] {
        let mut changed = bytes.clone();
        changed[at + current.len() - 2] = version;
        match PackedCache::from_safetensors(&changed) {
            Ok(loaded) => assert!(loads && loaded == cache, "version {}", version as char),
            Err(e) => assert!(
                !loads && matches!(e, VidkvError::CorruptPacked(_)),
                "version {}: {e}",
                version as char
            ),
        }
    }
}

#[test]
fn a_16k_token_video_prefix_is_at_least_7x_smaller_than_f16() {
    // The real video K/V (2,048 tokens of 8 frames) repeated to 16,384 tokens.
    let sample = shared_sample("dinov2_video_dev");
    let tile = |t: &Tensor| {
        let [l, h, tokens, d] = [0, 1, 2, 3].map(|i| t.dim(i));
        let mut data = Vec::with_capacity(t.data.len() * 8);
        for head in t.data.chunks_exact(tokens * d) {
            for _ in 0..8 {
                data.extend_from_slice(head);
            }
        }
        Tensor::new("x", vec![l, h, tokens * 8, d], data).unwrap()
    };
    let (k, v) = (tile(&sample.k), tile(&sample.v));
    let saved = |preset: &str| {
        PackedCache::quantize(&k, &v, &QuantConfig::preset(preset).unwrap(), &[])
            .unwrap()
            .to_safetensors()
            .unwrap()
            .len()
    };
    let (f16, vidkv) = (saved("fp16"), saved("vidkv-tuned"));
    let ratio = f16 as f64 / vidkv as f64;
    eprintln!("16k-token video prefix: fp16 {f16} bytes, vidkv {vidkv} bytes, {ratio:.2}x");
    assert!(ratio >= 7.0, "only {ratio:.2}x smaller");
}

#[test]
fn damaged_files_are_typed_errors() {
    let cache = PackedCache::quantize(
        &small_tensor(1),
        &small_tensor(2),
        &QuantConfig::preset("vidkv-tuned").unwrap(),
        &[],
    )
    .unwrap();
    let bytes = cache.to_safetensors().unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            PackedCache::from_safetensors(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // A model input file is not a cache.
    let sample = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/smollm2_text_sample.safetensors"),
    )
    .unwrap();
    assert!(matches!(
        PackedCache::from_safetensors(&sample),
        Err(VidkvError::CorruptPacked(_))
    ));
}

/// A header that claims far more layers, heads, tokens or head_dim than the file holds is
/// refused before anything is allocated from the claim (it used to abort the process).
#[test]
fn claimed_sizes_are_checked_before_allocating() {
    let cache = PackedCache::quantize(
        &small_tensor(1),
        &small_tensor(2),
        &QuantConfig::preset("vidkv").unwrap(),
        &[],
    )
    .unwrap();
    let bytes = cache.to_safetensors().unwrap();
    let huge = [1u64 << 40, 1 << 62, u64::MAX];
    for field in ["layers", "kv_heads", "tokens", "head_dim"] {
        for value in huge {
            let bad = metadata::with_json_field(&bytes, "shape", field, value.into());
            match PackedCache::from_safetensors(&bad) {
                Err(VidkvError::CorruptPacked(_)) => {}
                other => panic!("{field} = {value}: {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        preset in prop::sample::select(
            PRESET_NAMES.iter().chain(&vidkv::config::ROTATED_PRESET_NAMES).copied().collect::<Vec<_>>()
        ),
    ) {
        let cache = PackedCache::quantize(&small_tensor(3), &small_tensor(4), &QuantConfig::preset(preset).unwrap(), &[]).unwrap();
        let mut bytes = cache.to_safetensors().unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(loaded) = PackedCache::from_safetensors(&bytes) {
            // Whatever loads is usable.
            let _ = loaded.dequantize();
            let _ = loaded.size();
        }
    }
}

#[test]
fn cli_quantize_then_inspect() {
    let dir = std::env::temp_dir().join(format!("vidkv-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("cache.safetensors");
    let input =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/dinov2_video_sample.safetensors");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vidkv"))
            .args(args)
            .output()
            .unwrap()
    };
    let q = run(&[
        "quantize",
        "--input",
        input.to_str().unwrap(),
        "--preset",
        "vidkv-tuned",
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let i = run(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(i.status.success(), "{}", String::from_utf8_lossy(&i.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(doc["preset"], "vidkv-tuned");
    assert_eq!(doc["shape"]["tokens"], 1024);
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not a cache").unwrap();
    let b = run(&["inspect", bad.to_str().unwrap()]);
    assert!(!b.status.success());
    assert!(String::from_utf8_lossy(&b.stderr).contains("error:"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn atomic_writes_replace_whole_files_and_fail_without_touching_them() {
    let dir = std::env::temp_dir().join(format!("vidkv-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.vidkv.safetensors");
    vidkv::io::write_atomic(&path, b"first version").unwrap();
    vidkv::io::write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file stays behind");

    // A directory in the way of the rename: a typed error, and the directory is untouched.
    let blocked = dir.join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"data").unwrap();
    let err = vidkv::io::write_atomic(&blocked, b"x").unwrap_err();
    assert!(matches!(err, VidkvError::UnsafeOutput { .. }), "{err}");
    assert_eq!(std::fs::read(blocked.join("keep")).unwrap(), b"data");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Outputs a save must not write are refused before anything is written, and stay as
/// they were: a symbolic link (its target untouched), a FIFO (still a FIFO, nothing
/// blocks), and, for `vidkv quantize`, the input itself through another path or a hard link.
#[test]
fn saves_refuse_links_special_files_and_the_input() {
    let dir = std::env::temp_dir().join(format!("vidkv-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("target.bin");
    std::fs::write(&target, b"keep me").unwrap();
    let unsafe_output = |path: &std::path::Path| {
        let err = vidkv::io::write_atomic(path, b"x").unwrap_err();
        assert!(matches!(err, VidkvError::UnsafeOutput { .. }), "{err}");
    };
    #[cfg(unix)]
    {
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        unsafe_output(&link);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let fifo = dir.join("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        unsafe_output(&fifo);
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

    let input = dir.join("input.safetensors");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/dinov2_video_sample.safetensors"),
        &input,
    )
    .unwrap();
    let original = std::fs::read(&input).unwrap();
    let mut outputs = vec![input.clone(), dir.join(".").join("input.safetensors")];
    let hard_link = dir.join("hard-link.safetensors");
    if std::fs::hard_link(&input, &hard_link).is_ok() {
        outputs.push(hard_link);
    }
    for output in outputs {
        let run = Command::new(env!("CARGO_BIN_EXE_vidkv"))
            .args(["quantize", "--device", "cpu", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        assert!(!run.status.success(), "{}", output.display());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("is the input file"), "{stderr}");
        assert_eq!(
            std::fs::read(&input).unwrap(),
            original,
            "the input survives"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
