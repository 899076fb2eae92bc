//! A host that already runs on wgpu: it creates its own device, computes each step's keys,
//! values and query into its own buffers with a compute shader of its own, and decodes
//! through the vidkv cache on the same device without reading anything back.
//!
//! ```text
//! cargo run --release --example host_device
//! ```
//!
//! The host shares its device and queue (`GpuContext::from_device`, after creating the
//! device with `GpuContext::required_limits()`), keeps the context and the cache in one
//! struct, and records each decode step as one submission (`KvCache::begin_step`): for every
//! layer its own kernels (`push_commands`), then `append_buffers` and `attend_buffers`. It
//! checks `GpuContext::counts()`: one submission per step and no read-back (the process
//! exits with an error otherwise); only the final output is read, once, to print it.

use vidkv::{GpuContext, GpuOptions, KvCache, ModelShape, QuantConfig};

const SHAPE: ModelShape = ModelShape {
    layers: 4,
    q_heads: 8,
    kv_heads: 2,
    head_dim: 64,
};
const PROMPT: u32 = 256;
const STEPS: u32 = 16;

/// The host's own kernel: fills `rows` with `[heads, tokens, d]` values of token positions
/// `first..first + tokens` (a smooth function of position, channel and a seed).
const HOST_SHADER: &str = r#"
struct Fill { first: u32, tokens: u32, heads: u32, dim: u32, seed: f32, scale: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> fill: Fill;
@group(0) @binding(1) var<storage, read_write> rows: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= fill.heads * fill.tokens * fill.dim) { return; }
    let c = i % fill.dim;
    let t = fill.first + (i / fill.dim) % fill.tokens;
    let h = i / (fill.dim * fill.tokens);
    let x = f32(t) * 0.37 + f32(c) * 1.3 + f32(h) * 2.1 + fill.seed;
    rows[i] = fill.scale * (sin(x) + 0.5 * cos(2.7 * x + f32(c % 5u)));
}
"#;

/// The host's device and its own kernel.
struct HostKernel {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
}

/// The host: its device and kernel, and the cache that shares the device.
struct Host {
    kernel: HostKernel,
    cache: KvCache,
    gpu: GpuContext,
}

impl Host {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("host device"),
                required_limits: GpuContext::required_limits(),
                ..Default::default()
            }))?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("host fill"),
            source: wgpu::ShaderSource::Wgsl(HOST_SHADER.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("host fill"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let gpu = GpuContext::from_device(
            adapter.get_info(),
            device.clone(),
            queue.clone(),
            &GpuOptions::default(),
        )?;
        let cache = KvCache::new(SHAPE, QuantConfig::default(), &gpu)?;
        Ok(Host {
            kernel: HostKernel {
                device,
                queue,
                pipeline,
            },
            cache,
            gpu,
        })
    }
}

impl HostKernel {
    /// A STORAGE buffer of `floats` f32 that the host's kernel fills.
    fn rows(&self, floats: u32) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host rows"),
            size: u64::from(floats) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// The host's kernel recorded: `heads × tokens × d` values of positions `first..`.
    fn fill(
        &self,
        out: &wgpu::Buffer,
        (first, tokens, heads): (u32, u32, u32),
        seed: f32,
    ) -> wgpu::CommandBuffer {
        let d = SHAPE.head_dim as u32;
        let words: [u32; 8] = [
            first,
            tokens,
            heads,
            d,
            seed.to_bits(),
            0.8f32.to_bits(),
            0,
            0,
        ];
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host fill params"),
            size: 32,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.queue.write_buffer(&uniform, 0, &bytes);
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("host fill"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups((heads * tokens * d).div_ceil(64), 1, 1);
        }
        encoder.finish()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut host = Host::new()?;
    let (kv, q_heads, d) = (
        SHAPE.kv_heads as u32,
        SHAPE.q_heads as u32,
        SHAPE.head_dim as u32,
    );
    // The prompt: the host computes every layer's K/V on its device; the cache takes them
    // from the host's buffers.
    let kernel = &host.kernel;
    let (prompt_k, prompt_v) = (kernel.rows(kv * PROMPT * d), kernel.rows(kv * PROMPT * d));
    for layer in 0..SHAPE.layers {
        kernel.queue.submit([
            kernel.fill(&prompt_k, (0, PROMPT, kv), layer as f32),
            kernel.fill(&prompt_v, (0, PROMPT, kv), 10.0 + layer as f32),
        ]);
        host.cache
            .append_buffers(layer, &prompt_k, &prompt_v, PROMPT as usize)?;
    }
    // One set of K/V/Q buffers per layer: the step's commands all run in one submission,
    // after every host write of the step.
    let layer_rows =
        |floats| -> Vec<wgpu::Buffer> { (0..SHAPE.layers).map(|_| kernel.rows(floats)).collect() };
    let (k, v, q) = (
        layer_rows(kv * d),
        layer_rows(kv * d),
        layer_rows(q_heads * d),
    );
    let outputs = layer_rows(q_heads * d);
    let before = host.gpu.counts();
    for step in 0..STEPS {
        let position = PROMPT + step;
        let mut decode = host.cache.begin_step()?;
        for layer in 0..SHAPE.layers {
            // The host's own kernels for this layer, then the cache's, in one submission.
            for commands in [
                kernel.fill(&k[layer], (position, 1, kv), layer as f32),
                kernel.fill(&v[layer], (position, 1, kv), 10.0 + layer as f32),
                kernel.fill(&q[layer], (position, 1, q_heads), 20.0 + layer as f32),
            ] {
                decode.push_commands(commands)?;
            }
            decode.append_buffers(layer, &k[layer], &v[layer], 1)?;
            let visible = [(0, decode.cache().len(layer) as u32)];
            decode.attend_buffers(layer, &q[layer], &outputs[layer], &visible)?;
        }
        decode.submit()?;
    }
    let after = host.gpu.counts();
    println!(
        "{STEPS} decode steps x {} layers on {}: {} submissions, {} read-backs",
        SHAPE.layers,
        host.gpu.adapter_name(),
        after.submissions - before.submissions,
        after.read_backs - before.read_backs
    );
    if after.read_backs != before.read_backs {
        return Err("the decode steps read something back".into());
    }
    if after.submissions - before.submissions != u64::from(STEPS) {
        return Err("a decode step took more than one submission".into());
    }
    let last = host.gpu.read_floats(&outputs[SHAPE.layers - 1], 4)?;
    println!(
        "cache: {} tokens per layer, {:.3} bits per element; last layer's output starts {:.4?}",
        host.cache.len(0),
        host.cache.bits_per_element(),
        last
    );
    Ok(())
}
