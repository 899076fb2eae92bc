//! One GPU context per test binary, shared by the GPU integration tests.

use std::sync::OnceLock;

use vidkv::gpu::{GpuContext, GpuOptions};

/// The process-wide context; a missing adapter fails the test with the install hint. It
/// takes every fast path lavapipe offers, the shader-f16 row loads included (which a CPU
/// adapter leaves off by default), so that the tests' fastest kernels cover them all.
pub fn gpu() -> &'static GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        GpuContext::new(&GpuOptions {
            f16_loads_on_cpu: true,
            ..GpuOptions::default()
        })
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
    })
}

/// The passes `ctx` timed since the last call (kernel profiling on), as `kernel::entry
/// ×passes` in name order. (Not every binary that shares this file profiles.)
#[allow(dead_code)]
pub fn timed_passes(ctx: &GpuContext) -> Vec<String> {
    ctx.take_kernel_times()
        .into_iter()
        .map(|(name, _, passes)| format!("{name} ×{passes}"))
        .collect()
}
