//! Compute pipelines, created on first use and cached per (kernel, entry point), with the
//! group-0 bindings each entry point uses (from naga's analysis of the composed source).

use std::sync::Arc;

use super::context::GpuContext;
use super::params::Params;
use super::shaders::Kernel;
use crate::error::{Result, VidkvError};

/// A compute pipeline and the bindings of group 0 its entry point uses.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    /// Binding numbers the entry point reads or writes (its layout holds only these).
    pub bindings: Vec<u32>,
    /// The explicit layout of group 0 on a context without immediates, where `Params` at
    /// binding 0 is a uniform with a dynamic offset (one buffer for a batch's parameters,
    /// see `gpu::batch`); `None` where the pipeline's automatic layout serves.
    pub layout: Option<wgpu::BindGroupLayout>,
    /// How many group-0 bindings the module declares (0 is `Params`; every kernel numbers
    /// its buffers 1, 2, … without gaps, which `shader_bindings` checks).
    pub declared: usize,
}

impl Pipeline {
    /// Checks a wrapper's buffers against the shader: no more than the module declares
    /// after `Params` (bindings 1, 2, …), and every binding the entry point uses among them.
    /// A wrapper and its shader that disagree fail with the kernel, entry and counts named,
    /// instead of binding a buffer to the wrong slot or leaving a used slot empty.
    pub fn check_buffers(&self, kernel: &Kernel, entry: &str, buffers: usize) -> Result<()> {
        let highest_used = self.bindings.last().copied().unwrap_or(0) as usize;
        if buffers < self.declared && highest_used <= buffers {
            return Ok(());
        }
        Err(VidkvError::Gpu(format!(
            "kernel {}::{entry} declares {} buffers after Params and uses up to binding \
             {highest_used}, its wrapper passed {buffers}",
            kernel.name,
            self.declared.saturating_sub(1)
        )))
    }
}

impl GpuContext {
    /// The pipeline of `kernel`'s `entry` point, created on first use.
    pub(crate) fn pipeline(&self, kernel: &Kernel, entry: &'static str) -> Result<Arc<Pipeline>> {
        let key = (kernel.name, entry);
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(Arc::clone(p));
        }
        self.check_lost()?;
        // naga validates the composed source first (and reflects its bindings).
        let (used, declared) = shader_bindings(kernel, entry)?;
        let bindings: Vec<u32> = used.iter().map(|entry| entry.binding).collect();
        let (layout, pipeline) = self.validated(
            || format!("pipeline {}::{entry}", kernel.name),
            || {
                let layout = (!self.immediates).then(|| {
                    self.device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(kernel.name),
                            entries: &used,
                        })
                });
                let pipeline_layout = layout.as_ref().map(|layout| {
                    self.device
                        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                            label: Some(kernel.name),
                            bind_group_layouts: &[Some(layout)],
                            immediate_size: 0,
                        })
                });
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.name),
                        source: wgpu::ShaderSource::Wgsl(
                            if self.immediates {
                                kernel.composed_source_with_immediates()
                            } else {
                                kernel.composed_source()
                            }
                            .into(),
                        ),
                    });
                let pipeline =
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(kernel.name),
                            layout: pipeline_layout.as_ref(),
                            module: &module,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        });
                (layout, pipeline)
            },
        )?;
        let pipeline = Arc::new(Pipeline {
            pipeline,
            bindings,
            layout,
            declared,
        });
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, Arc::clone(&pipeline));
        Ok(pipeline)
    }
}

/// The group-0 bindings that `entry` of `kernel` uses, in binding order, as layout entries
/// of the uniform-parameter composition (`Params` at binding 0 with a dynamic offset), and
/// how many the module declares (numbered 0, 1, … without gaps), from naga's analysis of
/// the module.
fn shader_bindings(
    kernel: &Kernel,
    entry: &str,
) -> Result<(Vec<wgpu::BindGroupLayoutEntry>, usize)> {
    let source = kernel.composed_source();
    let invalid = |e: String| VidkvError::Gpu(format!("shader {}: {e}", kernel.name));
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| invalid(e.to_string()))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::all())
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| invalid(e.to_string()))?;
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry)
        .ok_or_else(|| invalid(format!("no entry point `{entry}`")))?;
    let uses = info.get_entry_point(index);
    let mut bindings = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !uses[*handle].is_empty())
        .filter_map(|(_, var)| {
            let binding = var.binding.as_ref()?.binding;
            Some(layout_entry(binding, var.space).ok_or_else(|| {
                invalid(format!(
                    "binding {binding} is neither a uniform nor a storage buffer"
                ))
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    bindings.sort_unstable_by_key(|entry| entry.binding);
    let mut declared: Vec<u32> = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| var.binding.as_ref())
        .map(|b| {
            if b.group == 0 {
                Ok(b.binding)
            } else {
                Err(invalid(format!(
                    "binding group {} (only 0 is bound)",
                    b.group
                )))
            }
        })
        .collect::<Result<_>>()?;
    declared.sort_unstable();
    if declared.iter().enumerate().any(|(i, &b)| b != i as u32) {
        return Err(invalid(format!("bindings {declared:?} have gaps")));
    }
    Ok((bindings, declared.len()))
}

/// The layout entry of a buffer at `binding` in address space `space` (`None` for any
/// other resource): `Params` at binding 0 with a dynamic offset, the others as declared.
fn layout_entry(binding: u32, space: naga::AddressSpace) -> Option<wgpu::BindGroupLayoutEntry> {
    let ty = match space {
        naga::AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
        naga::AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
            read_only: !access.contains(naga::StorageAccess::STORE),
        },
        _ => return None,
    };
    let params = binding == 0;
    Some(wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: params,
            min_binding_size: params
                .then(|| wgpu::BufferSize::new(std::mem::size_of::<Params>() as u64))
                .flatten(),
        },
        count: None,
    })
}
