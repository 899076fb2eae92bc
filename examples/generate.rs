//! SmolLM2-135M answering a question with its KV cache in vidkv, next to an f16 cache.
//!
//! ```text
//! bash scripts/fetch-smollm2.sh
//! cargo run --release --features lm --example generate -- "Why is the sky blue?"
//! ```
//!
//! The forward pass (`vidkv::lm::model::Llama`) appends each chunk's keys and values to a
//! `KvCache` and attends through it, so the answer is generated from the compressed cache.

use vidkv::lm::eval::{chat_prompt, greedy};
use vidkv::lm::model::{GgufFile, Llama};
use vidkv::lm::tokenizer::Tokenizer;
use vidkv::QuantConfig;
use vidkv::{GpuContext, GpuOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".to_string());
    let mut gguf = GgufFile::open(std::path::Path::new(vidkv::lm::DEFAULT_MODEL))?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let model = Llama::load(&mut gguf)?;
    let gpu = GpuContext::new(&GpuOptions::default())?;
    let prompt = tokenizer.encode(&chat_prompt(&question))?;
    println!("question: {question}");
    for preset in ["fp16", "vidkv"] {
        let answer = greedy(&model, &prompt, 48, &QuantConfig::preset(preset)?, &gpu)?;
        let end = answer.iter().position(|&t| t == 2).unwrap_or(answer.len());
        println!("{preset:>6}: {}", tokenizer.decode(&answer[..end])?);
    }
    Ok(())
}
