//! Perplexity and greedy agreement of a model running on each preset's [`KvCache`].
//!
//! - Perplexity: the text's first N tokens stream through the cache in chunks of
//!   [`CHUNK_TOKENS`]; each chunk attends to the compressed history and to itself
//!   (causally), so the decode path is what is measured. Every token after the first is
//!   predicted once: perplexity = exp(mean negative log-likelihood over N − 1 predictions).
//! - Greedy agreement: [`GREEDY_TOKENS`] tokens generated greedily (one token per step,
//!   end-of-turn tokens included, never stopping early) from [`greedy_prompt`]; the number
//!   of leading tokens identical to the `fp16` run's, divided by [`GREEDY_TOKENS`].
//! - Bits per element: [`KvCache::bits_per_element`] once the text has streamed through.

use crate::cache::{KvCache, ModelCache, ReferenceCache};
use crate::config::QuantConfig;
use crate::error::{Result, VidkvError};
use crate::gpu::GpuContext;

use super::model::Llama;

/// Tokens per forward chunk while streaming a text (one group of the cache).
pub const CHUNK_TOKENS: usize = 32;

/// Tokens generated for greedy agreement.
pub const GREEDY_TOKENS: usize = 64;

/// The user turn of the greedy-agreement prompt.
pub const GREEDY_QUESTION: &str = "Explain in a few paragraphs how a refrigerator keeps food cold.";

/// SmolLM2's chat template around one user message, ready for the assistant's answer.
pub fn chat_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// The fixed chat prompt whose greedy continuation is compared across presets.
pub fn greedy_prompt() -> String {
    chat_prompt(GREEDY_QUESTION)
}

/// One preset's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetEval {
    pub preset: String,
    pub perplexity: f64,
    pub bits_per_element: f64,
    pub greedy_agreement: f64,
    /// The greedily generated token ids.
    pub generated: Vec<u32>,
}

/// Where each preset's cache runs.
#[derive(Clone, Copy)]
pub enum CacheDevice<'a> {
    /// [`KvCache`] on a GPU: the WGSL kernels.
    Gpu(&'a GpuContext),
    /// [`ReferenceCache`]: the CPU oracle, for every scheme the CPU reference takes
    /// (the rotated ones included).
    Cpu,
}

impl CacheDevice<'_> {
    /// A short description: the adapter's name or the CPU reference.
    pub fn describe(&self) -> String {
        match self {
            CacheDevice::Gpu(gpu) => gpu.adapter_name(),
            CacheDevice::Cpu => "cpu (ReferenceCache)".into(),
        }
    }
}

fn new_cache<'a>(
    model: &Llama,
    config: &QuantConfig,
    device: CacheDevice<'a>,
) -> Result<Box<dyn ModelCache + 'a>> {
    let shape = model.config.cache_shape();
    Ok(match device {
        CacheDevice::Gpu(gpu) => Box::new(KvCache::new(shape, config.clone(), gpu)?),
        CacheDevice::Cpu => Box::new(ReferenceCache::new(shape, config.clone())?),
    })
}

/// Perplexity of `tokens` streamed through a fresh [`KvCache`] with `config`, and the
/// cache's bits per element at the end.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    config: &QuantConfig,
    gpu: &GpuContext,
) -> Result<(f64, f64)> {
    perplexity_on(model, tokens, config, CacheDevice::Gpu(gpu))
}

/// [`perplexity`] with the cache on `device`.
pub fn perplexity_on(
    model: &Llama,
    tokens: &[u32],
    config: &QuantConfig,
    device: CacheDevice<'_>,
) -> Result<(f64, f64)> {
    perplexity_with(model, tokens, config, device, &mut || {})
}

/// [`perplexity_on`], calling `step` after each forward chunk.
fn perplexity_with(
    model: &Llama,
    tokens: &[u32],
    config: &QuantConfig,
    device: CacheDevice<'_>,
    step: &mut dyn FnMut(),
) -> Result<(f64, f64)> {
    if tokens.len() < 2 {
        return Err(VidkvError::InvalidConfig(format!(
            "perplexity needs at least 2 tokens (got {})",
            tokens.len()
        )));
    }
    let mut cache = new_cache(model, config, device)?;
    let vocab = model.config.vocab;
    let mut nll = 0.0f64;
    for (c, chunk) in tokens.chunks(CHUNK_TOKENS).enumerate() {
        let logits = model.forward(chunk, cache.as_mut())?;
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&next) = tokens.get(c * CHUNK_TOKENS + r + 1) {
                nll -= log_softmax_at(row, next as usize);
            }
        }
        step();
    }
    let perplexity = (nll / (tokens.len() - 1) as f64).exp();
    Ok((perplexity, cache.bits_per_element()))
}

/// `steps` tokens generated greedily after `prompt` (fed in chunks of [`CHUNK_TOKENS`]),
/// on a [`KvCache`].
pub fn greedy(
    model: &Llama,
    prompt: &[u32],
    steps: usize,
    config: &QuantConfig,
    gpu: &GpuContext,
) -> Result<Vec<u32>> {
    greedy_on(model, prompt, steps, config, CacheDevice::Gpu(gpu))
}

/// [`greedy`] with the cache on `device`.
pub fn greedy_on(
    model: &Llama,
    prompt: &[u32],
    steps: usize,
    config: &QuantConfig,
    device: CacheDevice<'_>,
) -> Result<Vec<u32>> {
    greedy_with(model, prompt, steps, config, device, &mut || {})
}

/// [`greedy_on`], calling `step` after each forward call.
fn greedy_with(
    model: &Llama,
    prompt: &[u32],
    steps: usize,
    config: &QuantConfig,
    device: CacheDevice<'_>,
    on_step: &mut dyn FnMut(),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(VidkvError::EmptyTensor("prompt".into()));
    }
    let mut cache = new_cache(model, config, device)?;
    let vocab = model.config.vocab;
    let mut last = Vec::new();
    for chunk in prompt.chunks(CHUNK_TOKENS) {
        last = model.forward(chunk, cache.as_mut())?;
        on_step();
    }
    let mut generated = Vec::with_capacity(steps);
    for step in 0..steps {
        let row = &last[last.len() - vocab..];
        let next = argmax(row);
        generated.push(next);
        if step + 1 < steps {
            last = model.forward(&[next], cache.as_mut())?;
            on_step();
        }
    }
    Ok(generated)
}

/// What [`evaluate_on`] reports while it runs.
pub enum EvalProgress<'a> {
    /// `done` of the `total` forward calls of `preset` (text chunks, then the prompt's
    /// chunks and the greedy tokens).
    Step {
        preset: &'a str,
        done: usize,
        total: usize,
    },
    /// A preset's results, when it is done.
    Finished(&'a PresetEval),
}

/// Runs every preset on `text_tokens` (perplexity) and on `prompt` (greedy), with `fp16`
/// first as the reference whether or not it is among `presets`; returns the reference and
/// the requested presets in order.
pub fn evaluate(
    model: &Llama,
    text_tokens: &[u32],
    prompt: &[u32],
    presets: &[(String, QuantConfig)],
    gpu: &GpuContext,
    progress: impl FnMut(EvalProgress<'_>),
) -> Result<Vec<PresetEval>> {
    evaluate_on(
        model,
        text_tokens,
        prompt,
        presets,
        CacheDevice::Gpu(gpu),
        progress,
    )
}

/// [`evaluate`] with every cache on `device`.
pub fn evaluate_on(
    model: &Llama,
    text_tokens: &[u32],
    prompt: &[u32],
    presets: &[(String, QuantConfig)],
    device: CacheDevice<'_>,
    mut progress: impl FnMut(EvalProgress<'_>),
) -> Result<Vec<PresetEval>> {
    let fp16 = QuantConfig::preset("fp16")?;
    let mut runs: Vec<(String, QuantConfig)> = vec![("fp16".into(), fp16.clone())];
    runs.extend(
        presets
            .iter()
            .filter(|(name, config)| !(name == "fp16" && *config == fp16))
            .cloned(),
    );
    let mut results: Vec<PresetEval> = Vec::with_capacity(runs.len());
    let total = text_tokens.len().div_ceil(CHUNK_TOKENS)
        + prompt.len().div_ceil(CHUNK_TOKENS)
        + GREEDY_TOKENS.saturating_sub(1);
    for (name, config) in &runs {
        let mut done = 0;
        let mut step = || {
            done += 1;
            progress(EvalProgress::Step {
                preset: name,
                done,
                total,
            });
        };
        let (perplexity, bits_per_element) =
            perplexity_with(model, text_tokens, config, device, &mut step)?;
        let generated = greedy_with(model, prompt, GREEDY_TOKENS, config, device, &mut step)?;
        let greedy_agreement = match results.first() {
            Some(reference) => leading_agreement(&reference.generated, &generated),
            None => 1.0,
        };
        let result = PresetEval {
            preset: name.clone(),
            perplexity,
            bits_per_element,
            greedy_agreement,
            generated,
        };
        progress(EvalProgress::Finished(&result));
        results.push(result);
    }
    Ok(results)
}

/// Leading tokens of `run` identical to `reference`, over the reference's length.
pub fn leading_agreement(reference: &[u32], run: &[u32]) -> f64 {
    if reference.is_empty() {
        return 1.0;
    }
    let same = reference
        .iter()
        .zip(run)
        .take_while(|(a, b)| a == b)
        .count();
    same as f64 / reference.len() as f64
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(row)[index]`, in f64.
fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}
