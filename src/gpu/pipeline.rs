//! Compute pipelines, created on first use and cached per (kernel, entry point), with the
//! group-0 bindings each entry point uses (from naga's analysis of the composed source).

use std::sync::Arc;

use super::context::GpuContext;
use super::shaders::Kernel;
use crate::error::{Result, VidkvError};

/// A compute pipeline and the bindings of group 0 its entry point uses.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    /// Binding numbers the entry point reads or writes (its automatic layout holds only these).
    pub bindings: Vec<u32>,
}

impl GpuContext {
    /// The pipeline of `kernel`'s `entry` point, created on first use.
    pub fn pipeline(&self, kernel: &Kernel, entry: &'static str) -> Result<Arc<Pipeline>> {
        let key = (kernel.name, entry);
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(Arc::clone(p));
        }
        self.check_lost()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(kernel.composed_source().into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(VidkvError::Gpu(format!(
                "pipeline {}::{entry}: {e}",
                kernel.name
            )));
        }
        let pipeline = Arc::new(Pipeline {
            pipeline,
            bindings: used_bindings(kernel, entry)?,
        });
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, Arc::clone(&pipeline));
        Ok(pipeline)
    }
}

/// The group-0 bindings that `entry` of `kernel` uses, from naga's analysis of the module.
fn used_bindings(kernel: &Kernel, entry: &str) -> Result<Vec<u32>> {
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
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !uses[*handle].is_empty())
        .filter_map(|(_, var)| var.binding.as_ref().map(|b| b.binding))
        .collect();
    bindings.sort_unstable();
    Ok(bindings)
}
