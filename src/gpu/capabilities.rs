//! What a context's adapter offers that decides vidkv's kernels, and what the context
//! picked from it: [`GpuContext::capabilities`], printed by `vidkv adapter`.
//!
//! The fast paths are chosen at run time by feature (subgroups, shader-f16 loads,
//! immediates; see [`GpuOptions`](super::GpuOptions)). Cooperative-matrix configurations
//! are listed for the record: no kernel uses them yet.

use super::context::{storage_binding_limit, GpuContext};

/// One cooperative-matrix configuration an adapter offers: C (M×N) += A (M×K) · B (K×N).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixConfig {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// Element type of A and B (`f16`, `f32`, `i32`, `u32`).
    pub inputs: &'static str,
    /// Element type of C and the result.
    pub accumulator: &'static str,
}

impl MatrixConfig {
    fn from_wgpu(p: &wgpu::CooperativeMatrixProperties) -> Self {
        MatrixConfig {
            m: p.m_size,
            n: p.n_size,
            k: p.k_size,
            inputs: scalar_name(p.ab_type),
            accumulator: scalar_name(p.cr_type),
        }
    }
}

impl std::fmt::Display for MatrixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{} {}->{}",
            self.m, self.n, self.k, self.inputs, self.accumulator
        )
    }
}

fn scalar_name(t: wgpu::CooperativeScalarType) -> &'static str {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
}

/// What the adapter itself offers, known when the context opened the adapter
/// ([`GpuContext::new`]); a host's device ([`GpuContext::from_device`]) shows only the
/// features it was created with.
#[derive(Clone, Debug)]
pub(super) struct AdapterOffer {
    pub features: wgpu::Features,
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
}

/// An adapter's description, the features and limits that decide vidkv's kernels, and
/// what a context picked ([`GpuContext::capabilities`]).
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12`, `Gl` or `BrowserWebGpu`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// Driver name and version, as the backend reports them (may be empty).
    pub driver: String,
    /// Whether the features below are the adapter's offer (`true`) or only those a
    /// host's device was created with (`false`, [`GpuContext::from_device`]).
    pub offer_known: bool,
    /// Subgroup operations (`Features::SUBGROUP`).
    pub subgroups: bool,
    /// Native f16 in shaders (`Features::SHADER_F16`).
    pub shader_f16: bool,
    /// Parameters set in the command buffer (`Features::IMMEDIATES`).
    pub immediates: bool,
    /// GPU timestamps, between passes and inside them (`TIMESTAMP_QUERY`,
    /// `TIMESTAMP_QUERY_INSIDE_PASSES`).
    pub timestamps: (bool, bool),
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub cooperative_matrix: bool,
    /// The cooperative-matrix configurations offered (empty without the feature).
    pub matrix_configs: Vec<MatrixConfig>,
    /// Smallest and largest subgroup the adapter may run.
    pub subgroup_sizes: (u32, u32),
    /// The device's largest storage binding, in bytes.
    pub max_storage_binding_bytes: u64,
    /// Storage buffers per shader stage the device was created with.
    pub storage_buffers_per_stage: u32,
    /// Workgroup memory per workgroup, in bytes.
    pub workgroup_memory_bytes: u32,
    /// The fast paths this context uses (`subgroups`, `shader-f16 loads`, `immediates`).
    pub fast_paths: Vec<&'static str>,
    /// Tokens per split of decode attention on this context.
    pub split_tokens: usize,
}

impl GpuContext {
    /// The adapter's description, the features and limits that decide the kernels, and
    /// what this context picked (its fast paths and split size).
    pub fn capabilities(&self) -> Capabilities {
        let info = self.adapter_info();
        let limits = self.device().limits();
        let device_features = self.adapter_features();
        let (features, configs) = match &self.offer {
            Some(offer) => (offer.features, offer.cooperative_matrix.as_slice()),
            None => (device_features, &[][..]),
        };
        let has = |f: wgpu::Features| features.contains(f);
        Capabilities {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            offer_known: self.offer.is_some(),
            subgroups: has(wgpu::Features::SUBGROUP),
            shader_f16: has(wgpu::Features::SHADER_F16),
            immediates: has(wgpu::Features::IMMEDIATES),
            timestamps: (
                has(wgpu::Features::TIMESTAMP_QUERY),
                has(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            ),
            cooperative_matrix: has(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            matrix_configs: configs.iter().map(MatrixConfig::from_wgpu).collect(),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            max_storage_binding_bytes: storage_binding_limit(&limits),
            storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            workgroup_memory_bytes: limits.max_compute_workgroup_storage_size,
            fast_paths: self.fast_paths(),
            split_tokens: self.split_tokens(),
        }
    }

    /// The fast paths this context uses (what a benchmark's fastest rows run with):
    /// subgroups, shader-f16 row loads, parameters as immediates.
    pub fn fast_paths(&self) -> Vec<&'static str> {
        [
            (self.uses_subgroups(), "subgroups"),
            (self.uses_f16_loads(), "shader-f16 loads"),
            (self.uses_immediates(), "immediates"),
        ]
        .into_iter()
        .filter_map(|(used, name)| used.then_some(name))
        .collect()
    }
}

impl Capabilities {
    /// One JSON object (`vidkv adapter --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "backend": self.backend,
            "device_type": self.device_type,
            "driver": self.driver,
            "offer_known": self.offer_known,
            "features": {
                "subgroups": self.subgroups,
                "shader_f16": self.shader_f16,
                "immediates": self.immediates,
                "timestamp_query": self.timestamps.0,
                "timestamp_query_inside_passes": self.timestamps.1,
                "cooperative_matrix": self.cooperative_matrix,
            },
            "cooperative_matrix_configs": self
                .matrix_configs
                .iter()
                .map(|c| serde_json::json!({
                    "m": c.m, "n": c.n, "k": c.k,
                    "inputs": c.inputs, "accumulator": c.accumulator,
                }))
                .collect::<Vec<_>>(),
            "subgroup_sizes": [self.subgroup_sizes.0, self.subgroup_sizes.1],
            "max_storage_binding_bytes": self.max_storage_binding_bytes,
            "storage_buffers_per_stage": self.storage_buffers_per_stage,
            "workgroup_memory_bytes": self.workgroup_memory_bytes,
            "fast_paths": self.fast_paths,
            "split_tokens": self.split_tokens,
        })
    }
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        writeln!(f, "adapter      {} ({})", self.name, self.backend)?;
        writeln!(f, "type         {}", self.device_type)?;
        writeln!(
            f,
            "driver       {}",
            if self.driver.is_empty() {
                "(not reported)"
            } else {
                &self.driver
            }
        )?;
        if !self.offer_known {
            writeln!(f, "(a host's device: the features it was created with)")?;
        }
        writeln!(
            f,
            "subgroups    {} (sizes {} to {})",
            yes(self.subgroups),
            self.subgroup_sizes.0,
            self.subgroup_sizes.1
        )?;
        writeln!(f, "shader-f16   {}", yes(self.shader_f16))?;
        writeln!(f, "immediates   {}", yes(self.immediates))?;
        writeln!(
            f,
            "timestamps   {} (inside passes: {})",
            yes(self.timestamps.0),
            yes(self.timestamps.1)
        )?;
        writeln!(
            f,
            "coop matrix  {} ({})",
            yes(self.cooperative_matrix),
            list(self.matrix_configs.iter().map(|c| c.to_string()).collect())
        )?;
        writeln!(
            f,
            "limits       {} bytes per storage binding, {} storage buffers per stage, {} bytes \
             of workgroup memory",
            self.max_storage_binding_bytes,
            self.storage_buffers_per_stage,
            self.workgroup_memory_bytes
        )?;
        writeln!(
            f,
            "vidkv uses   fast paths: {}; {}-token splits",
            list(self.fast_paths.iter().map(|s| s.to_string()).collect()),
            self.split_tokens
        )
    }
}
