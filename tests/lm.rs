//! SmolLM2-135M end to end (feature `lm`; run in release, it is slow in debug): the
//! tokenizer and the forward pass against the real dev file, which was extracted with an
//! independent float64 forward pass verified against llama.cpp; the fp16 cache's greedy
//! answer; `vidkv eval-lm` for every preset. The model comes from `scripts/fetch-smollm2.sh`.

#[path = "common/data.rs"]
mod data;
#[path = "common/gpu.rs"]
mod gpu;

use std::path::PathBuf;
use std::process::Command;

use vidkv::lm::eval::{chat_prompt, greedy};
use vidkv::lm::model::{GgufFile, Llama};
use vidkv::lm::tokenizer::Tokenizer;
use vidkv::{KvCache, QuantConfig};

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(vidkv::lm::DEFAULT_MODEL)
}

fn load() -> (Llama, Tokenizer) {
    let mut gguf = GgufFile::open(&model_path()).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let model = Llama::load(&mut gguf).unwrap();
    (model, tokenizer)
}

fn dev_sidecar() -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/smollm2_text_dev.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A JSON array of non-negative integers.
fn numbers(array: &serde_json::Value) -> Vec<u32> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// The dev file's ids were made segment by segment (chat template, document, template), so
/// each segment is encoded on its own; together they spell the decoded prompt.
#[test]
fn tokenizer_matches_the_dev_prompt_ids_and_round_trips() {
    let (_, tokenizer) = load();
    let sidecar = dev_sidecar();
    let expected = numbers(&sidecar["token_ids"]);
    let mut spelled = String::new();
    for segment in sidecar["text_segments"].as_array().unwrap() {
        let (from, to) = (
            segment[0].as_u64().unwrap() as usize,
            segment[1].as_u64().unwrap() as usize,
        );
        let text = tokenizer.decode(&expected[from..to]).unwrap();
        assert_eq!(
            tokenizer.encode(&text).unwrap(),
            &expected[from..to],
            "{text:?}"
        );
        spelled.push_str(&text);
    }
    assert_eq!(spelled, sidecar["decoded_prompt"].as_str().unwrap());
    let whole = tokenizer.encode(&spelled).unwrap();
    assert_eq!(tokenizer.decode(&whole).unwrap(), spelled);
}

/// The keys and values the forward pass puts in an fp16 cache equal the dev file's (post-RoPE,
/// Hugging Face channel order) in every stored layer, up to f16 storage and f32 arithmetic.
#[test]
fn forward_pass_reproduces_the_dev_keys_and_values() {
    let (model, _) = load();
    let sample = data::shared_sample("smollm2_text_dev");
    let sidecar = dev_sidecar();
    let ids = numbers(&sidecar["token_ids"]);
    let layers: Vec<usize> = numbers(&sidecar["layers"])
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let ctx = gpu::gpu();
    let mut cache = KvCache::new(
        model.config.cache_shape(),
        QuantConfig::preset("fp16").unwrap(),
        ctx,
    )
    .unwrap();
    for chunk in ids.chunks(32) {
        model.forward(chunk, &mut cache).unwrap();
    }
    let (k, v) = cache.to_packed().unwrap().dequantize();
    let per_layer = 3 * ids.len() * 64;
    for (stored, &layer) in layers.iter().enumerate() {
        let ours_k = &k.data[layer * per_layer..(layer + 1) * per_layer];
        let ours_v = &v.data[layer * per_layer..(layer + 1) * per_layer];
        let dev_k = &sample.k.data[stored * per_layer..(stored + 1) * per_layer];
        let dev_v = &sample.v.data[stored * per_layer..(stored + 1) * per_layer];
        let (ek, ev) = (relative_error(ours_k, dev_k), relative_error(ours_v, dev_v));
        eprintln!("layer {layer}: k rel error {ek:.2e}, v rel error {ev:.2e}");
        assert!(ek < 2e-3 && ev < 2e-3, "layer {layer}: k {ek}, v {ev}");
    }
}

#[test]
fn fp16_cache_gives_the_expected_greedy_answer() {
    let (model, tokenizer) = load();
    let ctx = gpu::gpu();
    let prompt = tokenizer
        .encode(&chat_prompt("What is the capital of France?"))
        .unwrap();
    let fp16 = QuantConfig::preset("fp16").unwrap();
    let answer = greedy(&model, &prompt, 8, &fp16, ctx).unwrap();
    let text = tokenizer.decode(&answer).unwrap();
    assert_eq!(text, "The capital of France is Paris.<|im_end|>");
}

#[test]
fn eval_lm_runs_every_preset_on_a_short_text() {
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/apache-2.0-excerpt.txt");
    let output = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(["eval-lm", "--tokens", "160", "--json", "--text"])
        .arg(&text)
        .arg("--model")
        .arg(model_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval-lm failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(doc["tokens"], 160);
    let presets = doc["presets"].as_array().unwrap();
    let names: Vec<&str> = presets
        .iter()
        .map(|p| p["preset"].as_str().unwrap())
        .collect();
    assert_eq!(names, vidkv::config::PRESET_NAMES);
    for p in presets {
        let perplexity = p["perplexity"].as_f64().unwrap();
        let bits = p["bits_per_element"].as_f64().unwrap();
        let agreement = p["greedy_agreement"].as_f64().unwrap();
        assert!(perplexity.is_finite() && perplexity > 1.0, "{p}");
        assert!(bits > 1.0 && bits <= 16.5, "{p}");
        assert!((0.0..=1.0).contains(&agreement), "{p}");
    }
    assert_eq!(presets[0]["bits_per_element"], 16.0);
    assert_eq!(presets[0]["greedy_agreement"], 1.0);
}

/// The GPU cache gives the CPU reference cache's perplexity for every kind of preset
/// (with an exact sink: without one the model is in the unstable regime where summation
/// order moves perplexity).
#[test]
fn eval_lm_on_the_gpu_matches_the_cpu_reference_cache() {
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/apache-2.0-excerpt.txt");
    let presets = ["kivi2", "rotated", "rotated-groups-k2.5v1.5"];
    let run = |device: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vidkv"));
        command
            .args(["eval-lm", "--tokens", "160", "--json", "--device", device])
            .args(["--sinks", "1", "--residual", "64"])
            .arg("--text")
            .arg(&text)
            .arg("--model")
            .arg(model_path());
        for preset in presets {
            command.args(["--preset", preset]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "eval-lm --device {device} failed: {stderr}"
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let (cpu, gpu) = (run("cpu"), run("gpu"));
    for (i, name) in presets.iter().enumerate() {
        let (a, b) = (
            gpu["presets"][i + 1]["perplexity"].as_f64().unwrap(),
            cpu["presets"][i + 1]["perplexity"].as_f64().unwrap(),
        );
        assert!(a.is_finite() && a > 1.0, "{name}: {a}");
        assert!((a - b).abs() < 0.01 * a, "{name}: gpu {a}, cpu {b}");
    }
}

#[test]
fn eval_lm_names_the_fetch_script_when_the_model_is_missing() {
    let output = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args([
            "eval-lm",
            "--text",
            "Cargo.toml",
            "--model",
            "no/such/model.gguf",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scripts/fetch-smollm2.sh"), "{stderr}");
}
