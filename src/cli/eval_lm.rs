//! `vidkv eval-lm` (feature `lm`): SmolLM2-135M with each preset's KvCache.

use std::path::PathBuf;

use clap::Args;

use super::{resolve_presets, DeviceChoice};
use crate::error::{Result, VidkvError};
use crate::gpu::{GpuContext, GpuOptions};

#[derive(Args, Debug)]
pub(super) struct EvalLmArgs {
    /// The model (a llama GGUF; `bash scripts/fetch-smollm2.sh` fetches SmolLM2-135M).
    #[arg(long, value_name = "GGUF", default_value = crate::lm::DEFAULT_MODEL)]
    model: PathBuf,
    /// A UTF-8 text whose first tokens are streamed through the cache for perplexity.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// How many of the text's tokens to score.
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Presets to run (repeatable; default: all). fp16 always runs first as the reference.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Override the sink count of every preset.
    #[arg(long)]
    sinks: Option<usize>,
    /// Override the residual window of every preset.
    #[arg(long)]
    residual: Option<usize>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Where the caches run: `gpu` (KvCache, the WGSL kernels; the default) or `cpu`
    /// (ReferenceCache, the CPU oracle, which also takes the rotated presets).
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
}

pub(super) fn run_eval_lm(args: &EvalLmArgs) -> Result<()> {
    use crate::lm::{eval, model::GgufFile, model::Llama, tokenizer::Tokenizer};
    let presets = resolve_presets(&args.presets, args.sinks, args.residual)?;
    let text = std::fs::read_to_string(&args.text).map_err(|e| VidkvError::Io {
        path: args.text.display().to_string(),
        source: e,
    })?;
    let mut gguf = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let model = Llama::load(&mut gguf)?;
    let mut text_tokens = tokenizer.encode(&text)?;
    text_tokens.truncate(args.tokens);
    if text_tokens.len() < 2 {
        return Err(VidkvError::InvalidConfig(format!(
            "{} gives {} tokens; perplexity needs at least 2 (and --tokens ≥ 2)",
            args.text.display(),
            text_tokens.len()
        )));
    }
    let prompt = tokenizer.encode(&eval::greedy_prompt())?;
    let gpu = match args.device {
        Some(DeviceChoice::Cpu) => None,
        _ => Some(GpuContext::new(&GpuOptions::default())?),
    };
    let device = gpu
        .as_ref()
        .map_or(eval::CacheDevice::Cpu, eval::CacheDevice::Gpu);
    eprintln!(
        "{} tokens of {} on {}",
        text_tokens.len(),
        args.text.display(),
        device.describe()
    );
    let bar = super::progress::Progress::new(1, args.json);
    let results =
        eval::evaluate_on(
            &model,
            &text_tokens,
            &prompt,
            &presets,
            device,
            |event| match event {
                eval::EvalProgress::Step {
                    preset,
                    done,
                    total,
                } => bar.set(done as u64, total as u64, preset),
                eval::EvalProgress::Finished(r) => bar.line(&format!(
                    "{}: perplexity {:.3}, {:.3} bits, greedy agreement {:.3}",
                    r.preset, r.perplexity, r.bits_per_element, r.greedy_agreement
                )),
            },
        )?;
    bar.finish();
    let model_name = args.model.file_name().map_or_else(
        || args.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let fp16 = results.first().map_or(1.0, |r| r.perplexity);
    if args.json {
        let doc = serde_json::json!({
            "model": model_name,
            "tokens": text_tokens.len(),
            "device": device.describe(),
            "presets": results.iter().map(|r| serde_json::json!({
                "preset": r.preset,
                "perplexity": r.perplexity,
                "perplexity_vs_fp16": r.perplexity / fp16,
                "bits_per_element": r.bits_per_element,
                "greedy_agreement": r.greedy_agreement,
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        println!(
            "{model_name}, {} tokens of {}, {} greedy tokens",
            text_tokens.len(),
            args.text.display(),
            eval::GREEDY_TOKENS
        );
        println!(
            "{:<24} {:>11} {:>8} {:>9} {:>17}",
            "preset", "perplexity", "× fp16", "bits", "greedy agreement"
        );
        for r in &results {
            println!(
                "{:<24} {:>11.3} {:>8.3} {:>9.3} {:>17.3}",
                r.preset,
                r.perplexity,
                r.perplexity / fp16,
                r.bits_per_element,
                r.greedy_agreement
            );
        }
        if let Some(reference) = results.first() {
            println!("fp16 answer: {:?}", tokenizer.decode(&reference.generated)?);
        }
    }
    Ok(())
}
