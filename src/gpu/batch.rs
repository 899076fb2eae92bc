//! Dispatches recorded into one command buffer and submitted together: grids split under the
//! per-dimension limit, bindings filtered to what each entry point uses, timestamps when
//! profiling. A batch's dispatches share one compute pass (a copy, or a kernel timed with
//! pass timestamps on a device without timestamps inside passes, ends it). Where the device
//! has immediates, each dispatch's `Params` is set in the command buffer and its bind group
//! (buffers only) is reused from the context's cache, so a repeated dispatch creates neither
//! a buffer nor a bind group; otherwise each dispatch makes a uniform buffer and a bind
//! group.

use wgpu::util::DeviceExt;

use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::profiling::KERNEL_QUERIES;
use super::shaders::Kernel;
use crate::error::{Result, VidkvError};

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
        }
    }
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
        let uniform = (!immediates).then(|| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });
        let create = || {
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = uniform
                .iter()
                .map(|u| wgpu::BindGroupEntry {
                    binding: 0,
                    resource: u.as_entire_binding(),
                })
                .collect();
            entries.extend(bound.iter().map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.resource(),
            }));
            self.context.validated(
                || format!("binding {}::{entry}", kernel.name),
                || {
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name),
                        layout: &pipeline.pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
                },
            )
        };
        // A decode step's buffers are fresh for each step: caching them would only hold
        // them alive.
        let bind_group = if immediates && !self.context.is_deferring() {
            let key = BindKey {
                kernel: kernel.name,
                entry,
                buffers: bound
                    .iter()
                    .map(|(binding, b)| (*binding, b.buffer.clone(), b.range))
                    .collect(),
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
        pass.set_bind_group(0, &bind_group, &[]);
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
