//! Records the GPU commands of a quantization with `gpu::trace`, for another WebGPU host to
//! replay (this is how the browser demo gets its dispatch plan).
//!
//! ```text
//! cargo run --release --example trace
//! ```
//!
//! Prints each dispatch (kernel, entry point, workgroup grid) and where the trace found the
//! written bytes: in the named source (the input tensor), in an earlier read-back, or in the
//! blob of literal bytes.

use vidkv::bench::synthetic_tensor;
use vidkv::gpu::quantize::quantize_cache;
use vidkv::{CacheShape, GpuContext, GpuOptions, QuantConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = CacheShape {
        layers: 1,
        kv_heads: 2,
        tokens: 256,
        head_dim: 64,
    };
    let k = synthetic_tensor(shape, 1)?;
    let v = synthetic_tensor(shape, 2)?;
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })?;
    let bytes = |data: &[f32]| bytemuck::cast_slice::<f32, u8>(data).to_vec();
    gpu.start_trace(vec![
        ("k".into(), bytes(&k.data)),
        ("v".into(), bytes(&v.data)),
    ]);
    quantize_cache(&gpu, &k, &v, &QuantConfig::preset("vidkv")?, &[])?;
    let trace = gpu.finish_trace().expect("tracing was on");
    let (plan, blob) = trace.to_plan();
    let mut from = std::collections::BTreeMap::<&str, u64>::new();
    for event in plan["events"].as_array().into_iter().flatten() {
        match event["op"].as_str() {
            Some("dispatch") => println!(
                "dispatch {}::{} grid {}",
                event["kernel"].as_str().unwrap_or_default(),
                event["entry"].as_str().unwrap_or_default(),
                event["grid"]
            ),
            Some("write") => {
                for piece in event["data"].as_array().into_iter().flatten() {
                    let kind = ["source", "read", "blob"]
                        .into_iter()
                        .find(|k| piece.get(*k).is_some())
                        .unwrap_or("?");
                    *from.entry(kind).or_default() += piece["len"].as_u64().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    println!(
        "written bytes by origin: {from:?}; blob {} bytes",
        blob.len()
    );
    Ok(())
}
