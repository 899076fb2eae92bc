//! GPU execution through wgpu and WGSL: the runtime and one module per kernel family.
//!
//! - [`runtime`]: adapter/device selection, pipelines, buffers, dispatch, errors.
//! - [`quantize`]: channel split, 2-bit, real DFT + sign, ternary and exact-row kernels that
//!   write exactly the packed format of [`crate::packed`].
//! - [`dequantize`]: packed planes back to dense f32.
//! - [`attention`]: fused attention on the packed cache, and the f16 baseline.
//! - [`shaders`]: the WGSL sources.
//! - [`trace`]: a record of a context's commands for another WebGPU host to replay (the
//!   browser demo).

pub mod attention;
pub mod dequantize;
pub mod quantize;
pub mod runtime;
pub mod shaders;
pub mod trace;

pub use runtime::{GpuContext, GpuOptions};
