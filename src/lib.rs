//! # vidkv
//!
//! VidKV (arXiv 2503.16257) KV-cache quantization for video LLMs: keys at ~1.5 bits (2-bit
//! outlier channels plus 1-bit signs of a real DFT over the other channels), values at
//! 1.58 bits (ternary per channel, 2-bit for semantically protected tokens), exact
//! attention sinks and a recent-token window.
//!
//! Data flow (see `docs/ARCHITECTURE.md`): [`io`] loads tensors → [`config`] plans which
//! tokens are quantized → [`packed`] quantizes with the [`mod@reference`] math and stores bit
//! planes → [`packed::attend`] (CPU) and [`gpu::attention`] attend straight from the packed
//! codes → [`report`] measures error and effective bits. [`KvCache`] is the GPU-resident
//! whole-model cache built on [`gpu`].
//!
//! A host needs only the re-exports below ([`KvCache`], [`ModelShape`], [`QuantConfig`],
//! [`PackedCache`], [`GpuContext`], [`Tensor`], the errors). The GPU runtime the kernels are
//! made of is private to the crate; [`mod@bench`] and [`web`] are tools of the CLI and the demo,
//! not needed by hosts.

pub mod bench;
pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod error;
pub mod gpu;
pub mod io;
#[cfg(feature = "lm")]
pub mod lm;
pub mod packed;
pub(crate) mod persist;
#[cfg(feature = "cli")]
pub mod plot;
pub mod reference;
pub mod report;
pub mod tensor;
pub mod web;

pub use cache::{DecodeStep, KvCache, ModelShape};
pub use config::{QuantConfig, TokenPlan, DEFAULT_PRESET, PRESET_NAMES};
pub use error::{Result, VidkvError};
pub use gpu::{GpuContext, GpuCounts, GpuOptions};
pub use packed::{CacheShape, PackedCache, SizeReport};
pub use tensor::Tensor;
