//! Dispatches recorded into one command buffer and submitted together: grids split under the
//! per-dimension limit, bindings filtered to what each entry point uses, timestamps when
//! profiling. A batch's dispatches share one compute pass (a copy, or a kernel timed with
//! pass timestamps on a device without timestamps inside passes, ends it). Where the device
//! has immediates, each dispatch's `Params` is set in the command buffer; otherwise (WebGPU
//! in browsers, `GpuOptions::portable_only`) the batch's `Params` go into one uniform buffer,
//! a 256-byte-aligned slot per dispatch, written once at submission and bound with a dynamic
//! offset (the context's parameter buffer, or a fresh one while a decode step records: its
//! batches' host writes all land before the one submission). Either way a dispatch's bind
//! group is reused from the context's cache, so a repeated dispatch creates neither a buffer
//! nor a bind group.

use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::profiling::KERNEL_QUERIES;
use super::shaders::Kernel;
use crate::error::{Result, VidkvError};

/// Parameter slots of the context's parameter buffer (256 bytes each at most): a batch that
/// records more dispatches puts the rest in buffers of its own.
pub(crate) const PARAMS_SLOTS: u64 = 256;

/// Parameter slots of a buffer a batch makes for itself (while a decode step records, or
/// past the context buffer's slots): small, since a decode step's batches hold a few
/// dispatches each.
const BATCH_PARAMS_SLOTS: u64 = 16;

/// Bind groups the context keeps at most; the cache is emptied when full, and whenever the
/// buffer pool replaces a buffer, so that it never holds more than this many dispatches'
/// buffers alive.
const CACHED_BIND_GROUPS: usize = 256;

/// One buffer of a cached bind group: its binding, the buffer and its byte range.
type BoundBuffer = (u32, wgpu::Buffer, Option<(u64, u64)>);

/// What a cached bind group binds: the pipeline (kernel, entry point) and each buffer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    kernel: &'static str,
    entry: &'static str,
    buffers: Vec<BoundBuffer>,
}

impl GpuContext {
    /// Empties the bind-group cache (the buffers it held alive are released).
    pub(crate) fn forget_bind_groups(&self) {
        self.bind_groups.lock().expect("bind groups").clear();
    }

    /// The cached bind group for `key`, or the one `create` makes, kept for next time.
    fn cached_bind_group(
        &self,
        key: BindKey,
        create: impl FnOnce() -> Result<wgpu::BindGroup>,
    ) -> Result<wgpu::BindGroup> {
        if let Some(group) = self.bind_groups.lock().expect("bind groups").get(&key) {
            return Ok(group.clone());
        }
        let group = create()?;
        let mut cache = self.bind_groups.lock().expect("bind groups");
        if cache.len() >= CACHED_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, group.clone());
        Ok(group)
    }

    /// Starts a batch of dispatches recorded into one command buffer.
    pub(crate) fn batch(&self) -> Batch<'_> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("vidkv"),
            });
        // A decode step's batches are not timed: timing needs a read-back after each.
        let profiled = !self.is_deferring() && self.timestamp_pass(&mut encoder, 0);
        Batch {
            context: self,
            encoder,
            pass: None,
            error: None,
            profiled,
            params: Vec::new(),
        }
    }
}

/// A uniform buffer of `Params` slots and what the batch has put in them.
struct ParamsBlock {
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
    /// Whether dispatches bound to it may reuse cached bind groups (the context's own
    /// buffer, outside a decode step).
    shared: bool,
}

/// Dispatches recorded into one command buffer, submitted together.
pub struct Batch<'a> {
    context: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
    /// The compute pass the dispatches share, open until a copy or the submission.
    pass: Option<wgpu::ComputePass<'static>>,
    error: Option<VidkvError>,
    /// Whether the batch opened with a timestamp (profiling was on).
    profiled: bool,
    /// Without immediates: the parameter buffers of the batch's dispatches.
    params: Vec<ParamsBlock>,
}

impl Batch<'_> {
    /// Records `kernel::entry` over `params.invocations` invocations with `params` at
    /// binding 0 and `buffers` at bindings 1, 2, … (buffers at bindings the entry point
    /// does not use are left out of its bind group).
    pub fn dispatch(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[&wgpu::Buffer],
    ) {
        let bound: Vec<Bound<'_>> = buffers.iter().map(|&b| Bound::from(b)).collect();
        self.dispatch_bound(kernel, entry, params, &bound);
    }

    /// [`Batch::dispatch`] with buffers that may be bound by range.
    pub fn dispatch_bound(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[Bound<'_>],
    ) {
        if self.error.is_some() || params.invocations == 0 {
            return;
        }
        if let Err(e) = self.try_dispatch(kernel, entry, params, buffers) {
            self.error = Some(e);
        }
    }

    /// Records a kernel over an explicit (x, y) grid of workgroups; the kernel reads its
    /// coordinates from `workgroup_id`. Nothing is recorded when either side is 0.
    pub fn dispatch_grid(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[&wgpu::Buffer],
        grid: (u32, u32),
    ) {
        let bound: Vec<Bound<'_>> = buffers.iter().map(|&b| Bound::from(b)).collect();
        self.dispatch_grid_bound(kernel, entry, params, &bound, grid);
    }

    /// [`Batch::dispatch_grid`] with buffers that may be bound by range.
    pub fn dispatch_grid_bound(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[Bound<'_>],
        grid: (u32, u32),
    ) {
        if self.error.is_some() || grid.0 == 0 || grid.1 == 0 {
            return;
        }
        let limit = self.context.max_workgroups;
        let result = if grid.0 > limit || grid.1 > limit {
            Err(VidkvError::Gpu(format!(
                "grid {grid:?} of {} exceeds {limit} workgroups per dimension",
                kernel.name
            )))
        } else {
            self.record(kernel, entry, params, buffers, grid)
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    fn try_dispatch(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[Bound<'_>],
    ) -> Result<()> {
        let grid = self.context.grid(params.invocations)?;
        self.record(kernel, entry, params, buffers, grid)
    }

    fn record(
        &mut self,
        kernel: &Kernel,
        entry: &'static str,
        params: Params,
        buffers: &[Bound<'_>],
        grid: (u32, u32),
    ) -> Result<()> {
        let device = &self.context.device;
        let pipeline = self.context.pipeline(kernel, entry)?;
        pipeline.check_buffers(kernel, entry, buffers.len())?;
        // Buffers at bindings 1, 2, …, without those the entry point does not use.
        let bound: Vec<(u32, Bound<'_>)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32 + 1, *b))
            .filter(|(binding, _)| pipeline.bindings.contains(binding))
            .collect();
        let immediates = self.context.immediates;
        // Without immediates: the params' slot (buffer, offset), bound at binding 0.
        let slot = match (&pipeline.layout, pipeline.bindings.first()) {
            (Some(_), Some(0)) => Some(self.params_slot(&params)),
            _ => None,
        };
        let params_size = std::mem::size_of::<Params>() as u64;
        let mut buffers: Vec<BoundBuffer> = bound
            .iter()
            .map(|(binding, b)| (*binding, b.buffer.clone(), b.range))
            .collect();
        if let Some((buffer, _, _)) = &slot {
            buffers.insert(0, (0, buffer.clone(), Some((0, params_size))));
        }
        let create = || {
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = slot
                .iter()
                .map(|(buffer, _, _)| wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(params_size),
                    }),
                })
                .collect();
            entries.extend(bound.iter().map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.resource(),
            }));
            let automatic;
            let layout = match &pipeline.layout {
                Some(layout) => layout,
                None => {
                    automatic = pipeline.pipeline.get_bind_group_layout(0);
                    &automatic
                }
            };
            self.context.validated(
                || format!("binding {}::{entry}", kernel.name),
                || {
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name),
                        layout,
                        entries: &entries,
                    })
                },
            )
        };
        // A decode step's buffers are fresh for each step: caching them would only hold
        // them alive (and its parameters go to a buffer of the batch's own).
        let shared_params = slot.as_ref().is_none_or(|(_, _, shared)| *shared);
        let bind_group = if shared_params && !self.context.is_deferring() {
            let key = BindKey {
                kernel: kernel.name,
                entry,
                buffers,
            };
            self.context.cached_bind_group(key, create)?
        } else {
            create()?
        };
        let mut kernel_profile = self.context.kernel_profile.lock().expect("kernel profile");
        // Timed kernels: a timestamp before and after the dispatch, inside the shared pass
        // where the device allows it, else a pass of its own with timestamps at its ends.
        let timed = kernel_profile
            .as_mut()
            .filter(|_| !self.context.is_deferring())
            .and_then(|p| {
                let index = p.pending.len() as u32;
                (index < KERNEL_QUERIES).then(|| {
                    p.pending.push(format!("{}::{entry}", kernel.name));
                    (&p.queries, 2 * index)
                })
            });
        let inside = self
            .context
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        let own_pass = timed.is_some() && !inside;
        if own_pass {
            self.pass = None;
        }
        let encoder = &mut self.encoder;
        let pass = self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("vidkv"),
                    timestamp_writes: timed.filter(|_| own_pass).map(|(queries, index)| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: queries,
                            beginning_of_pass_write_index: Some(index),
                            end_of_pass_write_index: Some(index + 1),
                        }
                    }),
                })
                .forget_lifetime()
        });
        if let Some((queries, index)) = timed.filter(|_| inside) {
            pass.write_timestamp(queries, index);
        }
        pass.set_pipeline(&pipeline.pipeline);
        let offsets: Vec<u32> = slot.iter().map(|(_, offset, _)| *offset).collect();
        pass.set_bind_group(0, &bind_group, &offsets);
        if immediates {
            pass.set_immediates(0, bytemuck::bytes_of(&params));
        }
        pass.dispatch_workgroups(grid.0, grid.1, 1);
        if let Some((queries, index)) = timed.filter(|_| inside) {
            pass.write_timestamp(queries, index + 1);
        }
        if own_pass {
            self.pass = None;
        }
        drop(kernel_profile);
        Ok(())
    }

    /// A slot for `params` in the batch's parameter buffers: (buffer, byte offset, whether
    /// the buffer is the context's own). The bytes are written at submission.
    fn params_slot(&mut self, params: &Params) -> (wgpu::Buffer, u32, bool) {
        let stride = self.context.params_stride;
        let full = self
            .params
            .last()
            .is_none_or(|block| block.bytes.len() as u64 + stride > block.buffer.size());
        if full {
            let first = self.params.is_empty() && !self.context.is_deferring();
            let block = if first {
                ParamsBlock {
                    buffer: self.context.params_buffer.clone(),
                    bytes: Vec::new(),
                    shared: true,
                }
            } else {
                ParamsBlock {
                    buffer: self.context.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("params"),
                        size: BATCH_PARAMS_SLOTS * stride,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                    bytes: Vec::new(),
                    shared: false,
                }
            };
            self.params.push(block);
        }
        let block = self.params.last_mut().expect("a parameter block");
        let offset = block.bytes.len();
        block.bytes.extend_from_slice(bytemuck::bytes_of(params));
        block.bytes.resize(offset + stride as usize, 0);
        (block.buffer.clone(), offset as u32, block.shared)
    }

    /// Records a copy of `size` bytes between buffers (offsets and size multiples of 4).
    pub fn copy(
        &mut self,
        from: &wgpu::Buffer,
        from_offset: u64,
        to: &wgpu::Buffer,
        to_offset: u64,
        size: u64,
    ) {
        if self.error.is_none() && size > 0 {
            self.pass = None;
            self.encoder
                .copy_buffer_to_buffer(from, from_offset, to, to_offset, size);
        }
    }

    /// Submits the batch and waits for it.
    pub fn submit(mut self) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.pass = None;
        if self.profiled {
            self.context.timestamp_pass(&mut self.encoder, 1);
        }
        if let Some(p) = self
            .context
            .kernel_profile
            .lock()
            .expect("kernel profile")
            .as_ref()
        {
            let passes = p.pending.len() as u32;
            if passes > 0 {
                self.encoder
                    .resolve_query_set(&p.queries, 0..2 * passes, &p.resolve, 0);
            }
        }
        for block in &self.params {
            self.context
                .queue
                .write_buffer(&block.buffer, 0, &block.bytes);
        }
        self.context.submit(self.encoder)?;
        if self.profiled {
            self.context.record_gpu_time()?;
        }
        if !self.context.is_deferring() {
            self.context.record_kernel_times()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::shaders::PACK_EXACT;
    use crate::gpu::GpuOptions;

    /// Without immediates a batch's parameters share uniform buffers at dynamic offsets:
    /// 600 dispatches (past the context buffer's 256 slots, so 22 more buffers of the
    /// batch's own), each packing one row of its own, all land where their parameters say,
    /// in one batch and again in a second (the cached bind groups, the context's buffer
    /// rewritten).
    #[test]
    fn a_batch_of_many_dispatches_keeps_each_ones_parameters() {
        let ctx = GpuContext::new(&GpuOptions {
            portable_only: true,
            ..GpuOptions::default()
        })
        .unwrap();
        assert!(!ctx.uses_immediates());
        let rows = 600usize;
        let values: Vec<f32> = (0..2 * rows).map(|i| i as f32).collect();
        let input = ctx.create_storage("input", &values).unwrap();
        let output = ctx.buffer("output", 4 * rows as u64).unwrap();
        for round in 0..2 {
            let mut batch = ctx.batch();
            for row in 0..rows as u32 {
                let params = Params {
                    width: 2,
                    rows: 1,
                    kv_heads: 1,
                    len: rows as u32,
                    rows_per_head: rows as u32,
                    row_offset: row,
                    invocations: 1,
                    ..Default::default()
                };
                batch.dispatch(&PACK_EXACT, "heads", params, &[&input, &output]);
            }
            batch.submit().unwrap();
            let words = ctx.read_words(&output, rows).unwrap();
            for (row, &word) in words.iter().enumerate() {
                let expected = half::f16::from_f32(2.0 * row as f32).to_bits() as u32
                    | (half::f16::from_f32(2.0 * row as f32 + 1.0).to_bits() as u32) << 16;
                assert_eq!(word, expected, "round {round} row {row}");
            }
        }
    }

    /// `pack_exact::main` reads binding 1 and writes binding 2: a wrapper that passes a third
    /// buffer, or leaves the output out, is refused with the kernel and the counts named.
    #[test]
    fn a_wrapper_that_disagrees_with_its_shader_is_named() {
        let ctx = GpuContext::new(&GpuOptions::default()).unwrap();
        let input = ctx.buffer("input", 64).unwrap();
        let output = ctx.buffer("output", 64).unwrap();
        let params = Params {
            width: 2,
            rows: 1,
            invocations: 1,
            ..Default::default()
        };
        let run = |buffers: &[&wgpu::Buffer]| {
            let mut batch = ctx.batch();
            batch.dispatch(&PACK_EXACT, "main", params, buffers);
            batch.submit()
        };
        run(&[&input, &output]).unwrap();
        for buffers in [&[&*input, &*output, &*output][..], &[&*input][..]] {
            let message = run(buffers).unwrap_err().to_string();
            assert!(
                message.contains("pack_exact::main declares 2 buffers")
                    && message.contains(&format!("passed {}", buffers.len())),
                "{message}"
            );
        }
    }
}
