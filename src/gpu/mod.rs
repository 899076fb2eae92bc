//! GPU execution through wgpu and WGSL.
//!
//! The runtime, one job per module (leaves first):
//! - [`params`]: the uniform parameter block every kernel reads; [`binding`]: a buffer bound
//!   whole or by range; [`shaders`]: the WGSL sources and their composition rule.
//! - [`context`]: adapter/device selection, errors, submission; [`buffers`]: storage
//!   buffers, the pool, guarded outputs, read-back; [`pipeline`]: the pipeline cache;
//!   [`profiling`]: timestamp queries; [`batch`]: dispatches recorded into one submission;
//!   [`trace`]: a record of a context's commands for another WebGPU host to replay (the
//!   browser demo). `trace` imports only `params`, `binding` and `shaders`.
//!
//! The kernel families, each with its typed dispatch wrappers:
//! - [`quantize`]: channel split, 2-bit, real DFT + sign, ternary and exact-row kernels that
//!   write exactly the packed format of [`crate::packed`].
//! - [`incremental`]: the same kernels recorded into a growing [`crate::KvCache`]'s chunks,
//!   its f32 window and its exact stores (the cache never records a kernel itself).
//! - [`rotated`]: the rotated per-token scheme's state, group means, codes and decoding.
//! - [`dequantize`]: packed planes back to dense f32.
//! - [`attention`]: fused attention on the packed cache (rotated per-token codes included),
//!   and the f16 baseline.

pub mod attention;
pub mod batch;
pub mod binding;
pub mod buffers;
pub mod context;
pub mod dequantize;
pub mod incremental;
pub mod params;
pub mod pipeline;
pub mod profiling;
pub mod quantize;
pub mod rotated;
pub mod shaders;
pub mod trace;

pub use context::{GpuContext, GpuOptions};

use crate::config::QuantConfig;
use crate::error::{Result, VidkvError};

/// Refuses a configuration whose kernels are not all built yet: [`crate::KvCache`] has no
/// incremental path for the rotated schemes (GPU quantization, decoding and attention of
/// the per-token scheme exist; the across-token scheme has no GPU kernels), so it refuses
/// them; the CPU reference runs all of them.
pub fn check_supported(config: &QuantConfig) -> Result<()> {
    if config.uses_rotation() {
        Err(rotated_unsupported())
    } else {
        Ok(())
    }
}

/// Why a `KvCache` path never meets rotated planes.
pub(crate) const KV_CACHE_REFUSES_ROTATED: &str =
    "KvCache refuses the rotated schemes (gpu::check_supported)";

/// The error for a rotated scheme on a GPU path that does not take it.
pub(crate) fn rotated_unsupported() -> VidkvError {
    VidkvError::Unsupported(
        "KvCache does not take the rotated schemes yet, and the across-token scheme has no GPU \
         kernels: quantize and attend with the CPU reference (PackedCache::quantize, \
         ReferenceCache, `report --device cpu`, `eval-lm --device cpu`), or, for per-token \
         codes, with gpu::quantize and gpu::attention::GpuLayer"
            .into(),
    )
}
