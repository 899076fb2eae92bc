//! Streams the real video and text K/V through a vidkv cache and an f16 cache side by side.
//!
//! ```text
//! cargo run --release --example streaming_video [-- FILE.safetensors ...]
//! ```
//!
//! Default input: the bundled samples in `data/` (DINOv2 video, 4 frames of 256 tokens;
//! SmolLM2 text). The first frame (or the first 480 text tokens) is prefilled, then the rest
//! arrives in frame-sized chunks (one token at a time for text). After each step the stored
//! queries whose positions have arrived attend under the sample's mask in both caches; the
//! line shows the relative error of vidkv against f16 and the memory of both.

use std::io::Write;
use std::path::PathBuf;

use vidkv::io::KvSample;
use vidkv::reference::attention::AttentionMask;
use vidkv::report::relative_l2;
use vidkv::{GpuContext, GpuOptions, KvCache, ModelShape, QuantConfig};

fn progress(done: usize, total: usize, line: &str) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\r[{}{}] {done}/{total} {line}",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    std::io::stderr().flush().ok();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut inputs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if inputs.is_empty() {
        inputs = ["dinov2_video_sample", "smollm2_text_sample"]
            .iter()
            .map(|n| root.join(format!("data/{n}.safetensors")))
            .collect();
    }
    let gpu = GpuContext::new(&GpuOptions::default())?;
    println!("adapter: {}", gpu.adapter_name());
    for path in inputs {
        let bytes = std::fs::read(&path)?;
        let sidecar = std::fs::read_to_string(path.with_extension("json")).ok();
        let sample = KvSample::from_bytes(&path.display().to_string(), &bytes, sidecar.as_deref())?;
        let [layers, kv_heads, tokens, d] = [0, 1, 2, 3].map(|i| sample.k.dim(i));
        let q_heads = sample.q.dim(1);
        let shape = ModelShape {
            layers,
            q_heads,
            kv_heads,
            head_dim: d,
        };
        let mut vidkv = KvCache::new(shape, QuantConfig::preset("vidkv")?, &gpu)?;
        let mut fp16 = KvCache::new(shape, QuantConfig::preset("fp16")?, &gpu)?;
        // Frames for video (block mask), single tokens for text (causal).
        let (first, step) = match &sample.mask {
            AttentionMask::Block(blocks) => (blocks[0].1, blocks[0].1 - blocks[0].0),
            _ => (tokens.saturating_sub(32).max(1), 1),
        };
        println!(
            "{}: {layers} layers, {kv_heads} KV heads, {tokens} tokens",
            path.display()
        );
        let mut end = 0;
        let mut steps = 0;
        let total = 1 + (tokens - first).div_ceil(step);
        while end < tokens {
            let next = if end == 0 {
                first
            } else {
                (end + step).min(tokens)
            };
            for l in 0..layers {
                let (k, v) = (
                    sample.k.layer_tokens(l, end..next)?,
                    sample.v.layer_tokens(l, end..next)?,
                );
                if end == 0 {
                    vidkv.prefill(l, &k, &v)?;
                    fp16.prefill(l, &k, &v)?;
                } else {
                    vidkv.append(l, &k, &v)?;
                    fp16.append(l, &k, &v)?;
                }
            }
            end = next;
            steps += 1;
            // The stored queries that have arrived, with their visible ranges now.
            let arrived: Vec<(usize, (u32, u32))> = sample
                .q_positions
                .iter()
                .enumerate()
                .filter(|&(_, &p)| p < end)
                .map(|(i, &p)| {
                    let range = match &sample.mask {
                        AttentionMask::Block(blocks) => {
                            let &(s, e) = blocks
                                .iter()
                                .find(|&&(s, e)| (s..e).contains(&p))
                                .expect("validated");
                            (s as u32, e as u32)
                        }
                        AttentionMask::Causal => (0, p as u32 + 1),
                        AttentionMask::Full => (0, end as u32),
                    };
                    (i, range)
                })
                .collect();
            let mut errors = Vec::new();
            if !arrived.is_empty() {
                let n_queries = sample.q.dim(2);
                let visible: Vec<(u32, u32)> = arrived.iter().map(|&(_, r)| r).collect();
                for l in 0..layers {
                    let stored = &sample.q.data;
                    let mut q = Vec::with_capacity(q_heads * arrived.len() * d);
                    for h in 0..q_heads {
                        for &(i, _) in &arrived {
                            let at = ((l * q_heads + h) * n_queries + i) * d;
                            q.extend_from_slice(&stored[at..at + d]);
                        }
                    }
                    errors.push(relative_l2(
                        &vidkv.attend(l, &q, &visible)?,
                        &fp16.attend(l, &q, &visible)?,
                    ));
                }
            }
            let error = if errors.is_empty() {
                "no query yet".to_string()
            } else {
                format!(
                    "attention error vs f16 {:.4}",
                    errors.iter().sum::<f64>() / errors.len() as f64
                )
            };
            progress(
                steps,
                total,
                &format!(
                    "{end} tokens, {error}, memory {} B vs f16 {} B ({:.3} bits/element)",
                    vidkv.bytes(),
                    fp16.bytes(),
                    vidkv.bits_per_element()
                ),
            );
        }
        eprintln!();
    }
    Ok(())
}
