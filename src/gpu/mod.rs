//! GPU execution through wgpu and WGSL.
//!
//! The runtime, one job per module (leaves first):
//! - `params`: the uniform parameter block every kernel reads; `binding`: a buffer bound
//!   whole or by range; `shaders`: the WGSL sources and their composition rule.
//! - `context`: adapter/device selection, errors, submission; [`capabilities`]: what the
//!   adapter offers and what a context picked from it; `buffers`: storage
//!   buffers, the pool, guarded outputs, read-back; `pipeline`: the pipeline cache;
//!   `profiling`: timestamp queries; `batch`: dispatches recorded into one submission.
//!
//! The kernel families, each with its typed dispatch wrappers (`grouped`: one parameter
//! struct per grouped quantization kernel):
//! - [`quantize`]: channel split, 2-bit, real DFT + sign, ternary and exact-row kernels that
//!   write exactly the packed format of [`crate::packed`].
//! - `incremental`: the same kernels recorded into a growing [`crate::KvCache`]'s chunks,
//!   its f32 window and its exact stores (the cache never records a kernel itself).
//! - `rotated`: the rotated per-token scheme's state, group means, codes and decoding,
//!   on uploaded rows or recorded on a growing cache's GPU-resident rows.
//! - `rotated_groups`: codes across tokens ("T2"), quantization and decoding.
//! - [`dequantize`]: packed planes back to dense f32.
//! - [`attention`]: fused attention on the packed cache (rotated per-token codes included),
//!   and the f16 baseline.

pub mod attention;
pub(crate) mod batch;
pub(crate) mod binding;
pub(crate) mod buffers;
pub mod capabilities;
pub mod context;
pub mod dequantize;
pub(crate) mod grouped;
pub(crate) mod incremental;
pub(crate) mod params;
pub(crate) mod pipeline;
pub(crate) mod profiling;
pub mod quantize;
pub(crate) mod rotated;
pub(crate) mod rotated_groups;
pub(crate) mod shaders;
pub(crate) mod split;
pub(crate) mod stp;

pub use capabilities::{Capabilities, MatrixConfig};
pub use context::{GpuContext, GpuCounts, GpuOptions};
