//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, minimized from the campaign
//! in the README's "Fuzzing" section) through the calls the fuzz targets in `fuzz/` make,
//! so every input the fuzzer found interesting stays a regression test on stable Rust:
//! each must give a result or a typed error, never a panic. An empty corpus fails. (The
//! GGUF target needs the `lm` feature, which the README's test command turns on.)

#[path = "common/gpu.rs"]
mod gpu_context;

use std::path::PathBuf;

use gpu_context::gpu;
use vidkv::io::{parse_sidecar, KvSample};
use vidkv::{KvCache, PackedCache};

/// Every file of the committed corpus of `target`, with its name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

#[test]
fn sample_file_corpus_replays() {
    for (_, bytes) in corpus("sample_file") {
        let _ = KvSample::from_bytes("replay", &bytes, None);
    }
}

#[test]
fn sidecar_corpus_replays() {
    for (_, bytes) in corpus("sidecar") {
        let (Some(&queries), Some(&tokens)) = (bytes.first(), bytes.get(1)) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes[2..]) else {
            continue;
        };
        if let Ok((positions, mask)) = parse_sidecar(text, usize::from(queries)) {
            let _ = mask.validate(usize::from(tokens).max(1) * 16, &positions);
        }
    }
}

#[test]
fn packed_cache_file_corpus_replays() {
    let mut loaded = 0;
    for (_, bytes) in corpus("packed_cache_file") {
        if let Ok(cache) = PackedCache::from_safetensors(&bytes) {
            let _ = cache.size();
            let _ = cache.dequantize();
            loaded += 1;
        }
    }
    assert!(loaded > 0, "the corpus keeps valid files too");
}

#[test]
fn kvcache_file_corpus_replays() {
    let mut loaded = 0;
    for (_, bytes) in corpus("kvcache_file") {
        if let Ok(cache) = KvCache::from_safetensors(&bytes, gpu()) {
            let shape = cache.shape();
            let q = vec![0.5f32; shape.q_heads * shape.head_dim];
            let _ = cache.attend(0, &q, &[(0, cache.len(0) as u32)]);
            loaded += 1;
        }
    }
    assert!(loaded > 0, "the corpus keeps valid files too");
}

#[cfg(feature = "lm")]
#[test]
fn gguf_file_corpus_replays() {
    use vidkv::lm::model::{GgufFile, Llama};
    use vidkv::lm::tokenizer::Tokenizer;
    let mut loaded = 0;
    for (name, bytes) in corpus("gguf_file") {
        if let Ok(mut gguf) = GgufFile::from_bytes(bytes, &name) {
            if let Ok(tokenizer) = Tokenizer::from_gguf(&gguf) {
                let _ = tokenizer.encode("ab <|im_start|>");
            }
            loaded += usize::from(Llama::load(&mut gguf).is_ok());
        }
    }
    assert!(loaded > 0, "the corpus keeps valid files too");
}
