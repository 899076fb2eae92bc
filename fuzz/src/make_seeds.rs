//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: small valid
//! inputs (several presets, STP, a window and chunks) for the fuzzer to mutate.
//! Run from `fuzz/`: `cargo run --release --bin make_seeds` (needs a wgpu adapter).

use std::collections::HashMap;
use std::path::Path;

use vidkv::gpu::{GpuContext, GpuOptions};
use vidkv::{KvCache, ModelShape, PackedCache, QuantConfig, Tensor};

fn tensor(shape: [usize; 4], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n as u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503));
            ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::new("x", shape.to_vec(), data).expect("a valid shape")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("a corpus folder");
    std::fs::write(dir.join(name), bytes).expect("a seed file");
}

fn sample(tokens: usize, d: usize) -> Vec<u8> {
    let (k, v, q) = (
        tensor([1, 1, tokens, d], 1),
        tensor([1, 1, tokens, d], 2),
        tensor([1, 2, 3, d], 3),
    );
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = [("k", &k), ("v", &v), ("q", &q)]
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .expect("a consistent view");
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serializable")
}

/// A tiny llama GGUF (one block, hidden 32, 2 query heads and 1 KV head, a 6-token
/// byte-level BPE vocabulary) that `Llama::load` and `Tokenizer::from_gguf` accept.
fn tiny_gguf() -> Vec<u8> {
    use candle_core::quantized::gguf_file::{write, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor as CandleTensor};
    let strings = |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let tokens = ["a", "b", "c", "ab", "Ġ", "<|im_start|>"];
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1), Value::I32(1), Value::I32(1), Value::I32(1), Value::I32(1), Value::I32(3)])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ];
    let weight = |rows: usize, cols: usize| {
        let t = CandleTensor::ones((rows, cols), DType::F32, &Device::Cpu).expect("a tensor");
        QTensor::quantize(&t, GgmlDType::F32).expect("f32 storage")
    };
    let norm = || {
        let t = CandleTensor::ones(32, DType::F32, &Device::Cpu).expect("a tensor");
        QTensor::quantize(&t, GgmlDType::F32).expect("f32 storage")
    };
    let tensors: Vec<(&str, QTensor)> = vec![
        ("token_embd.weight", weight(tokens.len(), 32)),
        ("blk.0.attn_norm.weight", norm()),
        ("blk.0.attn_q.weight", weight(32, 32)),
        ("blk.0.attn_k.weight", weight(16, 32)),
        ("blk.0.attn_v.weight", weight(16, 32)),
        ("blk.0.attn_output.weight", weight(32, 32)),
        ("blk.0.ffn_norm.weight", norm()),
        ("blk.0.ffn_gate.weight", weight(64, 32)),
        ("blk.0.ffn_up.weight", weight(64, 32)),
        ("blk.0.ffn_down.weight", weight(32, 64)),
        ("output_norm.weight", norm()),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    write(&mut out, &metadata, &tensors).expect("a GGUF");
    out.into_inner()
}

fn main() {
    let gguf = tiny_gguf();
    let mut loaded = vidkv::lm::model::GgufFile::from_bytes(gguf.clone(), "seed").expect("a GGUF");
    vidkv::lm::tokenizer::Tokenizer::from_gguf(&loaded).expect("its tokenizer");
    vidkv::lm::model::Llama::load(&mut loaded).expect("its weights");
    write("gguf_file", "tiny-llama", &gguf);
    write("sample_file", "small", &sample(40, 16));
    write("sample_file", "window", &sample(100, 32));
    for (name, text) in [
        ("causal", "\u{3}\u{4}{\"q_positions\":[10,11,12],\"attention\":{\"type\":\"causal\"}}"),
        ("full", "\u{2}\u{2}{\"q_positions\":[5,6],\"attention\":{\"type\":\"full\"}}"),
    ] {
        write("sidecar", name, text.as_bytes());
    }
    let (k, v) = (tensor([2, 2, 100, 16], 4), tensor([2, 2, 100, 16], 5));
    for preset in ["vidkv", "vidkv-tuned", "kivi2", "fp16", "rotated", "vidkv-paper"] {
        let mut config = QuantConfig::preset(preset).expect("a preset");
        config.group_size = 16;
        config.residual = config.residual.min(16);
        let protected: &[u32] = if preset == "kivi2" || preset == "fp16" {
            &[]
        } else {
            &[3, 9, 40, 41]
        };
        let cache = PackedCache::quantize(&k, &v, &config, protected).expect("quantized");
        write("packed_cache_file", preset, &cache.to_safetensors().expect("bytes"));
        let extra = HashMap::from([("q_heads".to_string(), "4".to_string())]);
        write(
            "kvcache_file",
            &format!("packed-{preset}"),
            &cache.to_safetensors_with(extra).expect("bytes"),
        );
    }
    let gpu = GpuContext::new(&GpuOptions::default()).expect("a wgpu adapter");
    let shape = ModelShape {
        layers: 1,
        q_heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let (k, v) = (tensor([1, 1, 200, 64], 6), tensor([1, 1, 200, 64], 7));
    for preset in ["vidkv", "vidkv-tuned", "kivi2", "fp16"] {
        let mut cache = KvCache::new(shape, QuantConfig::preset(preset).expect("a preset"), &gpu)
            .expect("a cache");
        if preset.starts_with("vidkv") {
            cache.protect(&[2, 7, 30]).expect("protectable");
        }
        let rows = |t: &Tensor, range: std::ops::Range<usize>| t.data[range.start * 64..range.end * 64].to_vec();
        cache.prefill(0, &rows(&k, 0..120), &rows(&v, 0..120)).expect("prefill");
        cache.append(0, &rows(&k, 120..200), &rows(&v, 120..200)).expect("append");
        write("kvcache_file", preset, &cache.to_safetensors().expect("bytes"));
    }
}
