//! The GPU context: adapter and device selection, device-loss and error checks, and
//! submission. Buffers, pipelines, profiling and batches are in the sibling
//! modules `super::buffers`, `super::pipeline`, `super::profiling`, `super::batch`.
//!
//! Adapter choice: high performance by default; [`GpuOptions::adapter`] or the
//! `VIDKV_ADAPTER` environment variable selects by backend (`vulkan`, `metal`, `dx12`,
//! `gl`) or by a case-insensitive substring of the adapter name. Software adapters
//! (lavapipe, SwiftShader) are allowed. Validation and out-of-memory errors are caught
//! with error scopes around every submission, and a device-lost callback turns a lost
//! device into [`VidkvError::DeviceLost`] on the next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::batch::{BindKey, PARAMS_SLOTS};
use super::buffers::GUARD_WORDS;
use super::capabilities::AdapterOffer;
use super::params::{Params, WORKGROUP_SIZE};
use super::pipeline::Pipeline;
use super::profiling::{KernelProfile, Profile};
use crate::error::{Result, VidkvError};

/// Storage buffers per shader stage: the most any kernel binds (what Chrome exposes;
/// `src/gpu/shaders/tests.rs` checks every entry point), what [`GpuContext::required_limits`]
/// asks for and what [`GpuContext::new`] creates its device with, so that a kernel over
/// the browser's limit fails natively too.
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 10;

/// A device-lost or uncaptured-error message, set by a device callback.
type ErrorSlot = Arc<Mutex<Option<String>>>;

/// The limits of `limits` below what the kernels need ([`GpuContext::required_limits`]),
/// named.
fn missing_limits(limits: &wgpu::Limits) -> Vec<String> {
    let need = GpuContext::required_limits();
    let mut missing = Vec::new();
    for (name, have, want) in [
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
            need.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x,
            need.max_compute_workgroup_size_x,
        ),
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
            need.max_compute_invocations_per_workgroup,
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size,
            need.max_compute_workgroup_storage_size,
        ),
    ] {
        if have < want {
            missing.push(format!("{name} {have} < {want}"));
        }
    }
    missing
}

/// The largest storage binding a device with `limits` takes, in bytes (its binding limit,
/// within its buffer-size limit).
pub(super) fn storage_binding_limit(limits: &wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
}

/// How to pick the adapter and which limits to honour.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub power_preference: wgpu::PowerPreference,
    /// Backend name or adapter-name substring; `None` reads `VIDKV_ADAPTER`.
    pub adapter: Option<String>,
    /// Cap on the bytes of one storage binding, below the device's own limit (to exercise
    /// or emulate WebGPU's 128 MiB default on larger devices).
    pub max_binding_bytes: Option<u64>,
    /// Use only the portable kernels and uniform parameter blocks, even where the adapter
    /// offers subgroups, shader-f16 and immediates.
    pub portable_only: bool,
    /// Tokens per split of decode attention (a multiple of 256 from 256 to 65,536); `None`
    /// takes [`crate::gpu::attention::cpu_split_tokens`] of the host's threads on CPU
    /// adapters and [`crate::gpu::attention::GPU_SPLIT_TOKENS`] elsewhere.
    pub split_tokens: Option<usize>,
    /// Load the split kernels' exact (f16) rows as f16 on a CPU adapter too, where it offers
    /// `SHADER_F16` (on llvmpipe the native loads measured 1.5–1.7× slower than u32 words,
    /// so a CPU adapter keeps the words unless asked): to test and benchmark the fast path
    /// there.
    pub f16_loads_on_cpu: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            adapter: None,
            max_binding_bytes: None,
            portable_only: false,
            split_tokens: None,
            f16_loads_on_cpu: false,
        }
    }
}

/// A device, its queue, and the pipelines and buffers vidkv has made on it. A cheap handle:
/// clones share the device, its pipelines and its buffers, so a [`crate::KvCache`] keeps one
/// and a host can keep both in one struct.
#[derive(Clone)]
pub struct GpuContext {
    state: Arc<ContextState>,
}

impl std::ops::Deref for GpuContext {
    type Target = ContextState;

    fn deref(&self) -> &ContextState {
        &self.state
    }
}

/// What a [`GpuContext`] shares between its clones (reached through it; nothing here is for
/// callers).
#[doc(hidden)]
pub struct ContextState {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) info: wgpu::AdapterInfo,
    pub(super) features: wgpu::Features,
    /// What the adapter offers (`None` on a host's device: see `super::capabilities`).
    pub(super) offer: Option<AdapterOffer>,
    pub(super) max_binding: u64,
    pub(super) max_uniform_binding: u64,
    pub(super) max_workgroups: u32,
    pub(super) split_tokens: usize,
    pub(super) subgroups: bool,
    /// Whether the exact-row decoders load f16 natively (the device has `SHADER_F16`).
    pub(super) f16_loads: bool,
    /// Whether kernels read `Params` as immediates; otherwise from slots of a uniform
    /// buffer at dynamic offsets (`params_buffer`). Either way bind groups are reused
    /// (`bind_groups`, at most 256; see `gpu::batch`).
    pub(super) immediates: bool,
    pub(super) bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// Without immediates: the uniform buffer of a batch's `Params` slots (see
    /// `gpu::batch`), [`PARAMS_SLOTS`] of `params_stride` bytes.
    pub(super) params_buffer: wgpu::Buffer,
    /// Bytes between parameter slots: `Params` rounded up to the device's uniform offset
    /// alignment.
    pub(super) params_stride: u64,
    pub(super) pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    pub(super) buffers: Mutex<HashMap<&'static str, Arc<wgpu::Buffer>>>,
    pub(super) lost: ErrorSlot,
    pub(super) uncaptured: ErrorSlot,
    pub(super) exclusive: Mutex<()>,
    /// Accumulated GPU time of submitted batches, when profiling is on.
    pub(super) profile: Mutex<Option<Profile>>,
    /// GPU time per kernel entry point, when kernel profiling is on.
    pub(super) kernel_profile: Mutex<Option<KernelProfile>>,
    /// Submissions and read-backs so far ([`GpuContext::counts`]).
    pub(super) counters: Counters,
    /// Command buffers held back while a decode step records
    /// ([`GpuContext::defer_submissions`]); `None` outside a step.
    pub(super) deferred: Mutex<Option<Vec<wgpu::CommandBuffer>>>,
}

/// Running counts of a context's submissions and read-backs.
#[derive(Default)]
pub(super) struct Counters {
    pub submissions: AtomicU64,
    pub read_backs: AtomicU64,
}

/// How many submissions and read-backs a context has made ([`GpuContext::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounts {
    pub submissions: u64,
    pub read_backs: u64,
}

impl GpuContext {
    /// Opens the adapter chosen by `options` (see the module docs), blocking until it is
    /// ready: [`GpuContext::new_async`] awaited. Native only (a page cannot block).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// Opens the adapter chosen by `options` without blocking: the constructor a browser
    /// page awaits (on wasm32 the adapter is WebGPU's; `WGPU_BACKEND` and `VIDKV_ADAPTER`
    /// are not read there).
    pub async fn new_async(options: &GpuOptions) -> Result<Self> {
        // wgpu ignores backend names it does not know, and an empty set would otherwise
        // surface as "no adapter" with an install hint that does not fit.
        if let Some(value) = std::env::var("WGPU_BACKEND")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            if wgpu::Backends::from_comma_list(&value).is_empty() {
                return Err(VidkvError::InvalidConfig(format!(
                    "WGPU_BACKEND=`{value}` names no backend wgpu knows (vulkan, metal, dx12, \
                     gl, webgpu; comma-separated), or unset it"
                )));
            }
        }
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let wanted = options
            .adapter
            .clone()
            .or_else(|| std::env::var("VIDKV_ADAPTER").ok())
            .filter(|s| !s.trim().is_empty());
        let adapter = match &wanted {
            Some(wanted) => {
                let needle = wanted.to_lowercase();
                let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let names: Vec<String> = adapters
                    .iter()
                    .map(|a| {
                        let i = a.get_info();
                        format!("{} ({:?})", i.name, i.backend)
                    })
                    .collect();
                adapters
                    .into_iter()
                    .find(|a| {
                        let info = a.get_info();
                        info.backend.to_str() == needle
                            || info.name.to_lowercase().contains(&needle)
                    })
                    .ok_or_else(|| VidkvError::NoAdapter {
                        detail: format!(
                            " matching VIDKV_ADAPTER=`{wanted}` (available: {})",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    })?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: options.power_preference,
                    ..Default::default()
                })
                .await
                .map_err(|e| VidkvError::NoAdapter {
                    detail: format!(" ({e})"),
                })?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let offer = AdapterOffer {
            features,
            cooperative_matrix: adapter.cooperative_matrix_properties(),
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("vidkv"),
                // Optional features, requested where offered: timestamp queries (for
                // benchmarks, inside passes too), subgroups and shader-f16 (for the fast
                // paths) and immediates (parameters set in the command buffer).
                required_features: features
                    & (wgpu::Features::TIMESTAMP_QUERY
                        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
                        | wgpu::Features::SUBGROUP
                        | wgpu::Features::SHADER_F16
                        | wgpu::Features::IMMEDIATES),
                // The adapter's limits, but storage buffers as many as the kernels bind
                // (Chrome's count), so that a kernel beyond it fails here too.
                required_limits: wgpu::Limits {
                    max_storage_buffers_per_shader_stage: STORAGE_BUFFERS_PER_STAGE
                        .min(limits.max_storage_buffers_per_shader_stage),
                    ..limits
                },
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| VidkvError::Gpu(format!("cannot open a device on {}: {e}", info.name)))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = lost_flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_slot = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut slot) = uncaptured_slot.lock() {
                slot.get_or_insert_with(|| error.to_string());
            }
        }));
        Self::on_device(
            info,
            device,
            queue,
            options,
            (lost, uncaptured),
            Some(offer),
        )
    }

    /// A context on a host's own device, so that a host whose model already runs on wgpu
    /// shares its device and queue with the cache (no K/V crosses to the CPU): vidkv makes
    /// its buffers and pipelines on `device` and submits to `queue`. `adapter_info` names the
    /// adapter in reports. Request [`GpuContext::required_limits`] when creating the device
    /// (WebGPU's defaults allow too few storage buffers per stage); a device that lacks any
    /// is an [`VidkvError::InvalidConfig`] naming each one. The fast paths and GPU
    /// timestamps are used where the device was created with `SUBGROUP`, `SHADER_F16` and
    /// `TIMESTAMP_QUERY`. The host's device-lost and uncaptured-error handlers stay the
    /// host's: vidkv catches its own errors with error scopes around every submission.
    pub fn from_device(
        adapter_info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &GpuOptions,
    ) -> Result<Self> {
        let missing = missing_limits(&device.limits());
        if !missing.is_empty() {
            return Err(VidkvError::InvalidConfig(format!(
                "the device on {} lacks limits the kernels need: {} (create it with \
                 GpuContext::required_limits())",
                adapter_info.name,
                missing.join(", ")
            )));
        }
        let empty = || Arc::new(Mutex::new(None));
        Self::on_device(
            adapter_info,
            device,
            queue,
            options,
            (empty(), empty()),
            None,
        )
    }

    /// The limits every kernel needs, on top of WebGPU's defaults: [`STORAGE_BUFFERS_PER_STAGE`]
    /// storage buffers per shader stage, and workgroups of 256 invocations (WebGPU's
    /// defaults). A host creating its own device for [`GpuContext::from_device`] requests
    /// these (or its adapter's own, larger limits).
    pub fn required_limits() -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffers_per_shader_stage: STORAGE_BUFFERS_PER_STAGE,
            ..wgpu::Limits::default()
        }
    }

    fn on_device(
        info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &GpuOptions,
        (lost, uncaptured): (ErrorSlot, ErrorSlot),
        offer: Option<AdapterOffer>,
    ) -> Result<Self> {
        let split_tokens = match options.split_tokens {
            Some(n) if n % 256 == 0 && (256..=65536).contains(&n) => n,
            Some(n) => {
                return Err(VidkvError::InvalidConfig(format!(
                    "split_tokens must be a multiple of 256 from 256 to 65536, got {n}"
                )))
            }
            None if info.device_type == wgpu::DeviceType::Cpu => {
                crate::gpu::attention::cpu_split_tokens(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )
            }
            None => crate::gpu::attention::GPU_SPLIT_TOKENS,
        };
        let limits = device.limits();
        let features = device.features();
        let f16_loads = !options.portable_only
            && features.contains(wgpu::Features::SHADER_F16)
            && (options.f16_loads_on_cpu || info.device_type != wgpu::DeviceType::Cpu);
        let device_binding = storage_binding_limit(&limits);
        let max_binding = options
            .max_binding_bytes
            .map_or(device_binding, |cap| cap.min(device_binding));
        let params_stride = (std::mem::size_of::<Params>() as u64)
            .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let params_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: PARAMS_SLOTS * params_stride,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuContext {
            state: Arc::new(ContextState {
                device,
                queue,
                info,
                features,
                offer,
                max_binding,
                max_uniform_binding: limits.max_uniform_buffer_binding_size,
                max_workgroups: limits.max_compute_workgroups_per_dimension,
                split_tokens,
                subgroups: !options.portable_only && features.contains(wgpu::Features::SUBGROUP),
                f16_loads,
                immediates: !options.portable_only
                    && features.contains(wgpu::Features::IMMEDIATES)
                    && limits.max_immediate_size as usize >= std::mem::size_of::<Params>(),
                bind_groups: Mutex::new(HashMap::new()),
                params_buffer,
                params_stride,
                pipelines: Mutex::new(HashMap::new()),
                buffers: Mutex::new(HashMap::new()),
                lost,
                uncaptured,
                exclusive: Mutex::new(()),
                profile: Mutex::new(None),
                kernel_profile: Mutex::new(None),
                counters: Counters::default(),
                deferred: Mutex::new(None),
            }),
        })
    }

    /// Adapter name and backend, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Features of the device (the fast paths and timestamps check these).
    pub fn adapter_features(&self) -> wgpu::Features {
        self.features
    }

    /// Largest storage binding the kernels may use, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    /// Whether the subgroup fast paths are used (the adapter has subgroups and the options
    /// did not ask for portable kernels only).
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether the shader-f16 fast path is used: the split kernels' exact (f16) rows loaded
    /// as f16 rather than as u32 words (the adapter has `SHADER_F16`, is no CPU adapter
    /// unless [`GpuOptions::f16_loads_on_cpu`], and the options did not ask for portable
    /// kernels only).
    pub fn uses_f16_loads(&self) -> bool {
        self.f16_loads
    }

    /// Largest uniform binding the kernels may use, in bytes.
    pub fn max_uniform_binding_bytes(&self) -> u64 {
        self.max_uniform_binding
    }

    /// The smallest subgroup the adapter may run (the subgroup fast paths that share work
    /// between a fixed number of invocations need at least that many).
    pub fn subgroup_min_size(&self) -> u32 {
        self.info.subgroup_min_size
    }

    /// Tokens per split of decode attention on this context ([`GpuOptions::split_tokens`]).
    pub fn split_tokens(&self) -> usize {
        self.split_tokens
    }

    /// Whether kernels take their parameters as immediates (set per dispatch in the
    /// command buffer) rather than from slots of a uniform buffer at dynamic offsets.
    pub fn uses_immediates(&self) -> bool {
        self.immediates
    }

    /// Workgroups allowed per grid dimension.
    pub fn max_workgroups_per_dimension(&self) -> u32 {
        self.max_workgroups
    }

    /// Bytes of one binding left for data once the guard words are reserved.
    pub fn max_data_bytes(&self) -> u64 {
        self.max_binding.saturating_sub((GUARD_WORDS * 4) as u64)
    }

    /// Serializes whole operations on this context: the pooled buffers are shared, so a
    /// caller holds this guard from its first upload to its last read-back.
    pub(crate) fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
        self.exclusive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The wgpu device (for callers that bring their own buffers).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Fails if the device was lost or an error escaped the error scopes.
    pub(super) fn check_lost(&self) -> Result<()> {
        if let Some(message) = self.lost.lock().ok().and_then(|slot| slot.clone()) {
            return Err(VidkvError::DeviceLost(message));
        }
        match self.uncaptured.lock().ok().and_then(|mut slot| slot.take()) {
            Some(message) => Err(VidkvError::Gpu(message)),
            None => Ok(()),
        }
    }

    /// Writes `bytes` into `buffer` at `offset` (applied before the next submission).
    pub(super) fn write_bytes(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.queue.write_buffer(buffer, offset, bytes);
        }
    }

    /// Submissions and read-backs made on this context (all clones together) so far: a
    /// host can check that a decode step through the buffer API reads nothing back.
    pub fn counts(&self) -> GpuCounts {
        GpuCounts {
            submissions: self.counters.submissions.load(Ordering::Relaxed),
            read_backs: self.counters.read_backs.load(Ordering::Relaxed),
        }
    }

    /// Runs `make` inside a validation error scope and returns its error, prefixed with
    /// `what()`. On wasm32 a scope can only be awaited, so there `make` runs bare and its
    /// error reaches the uncaptured-error slot (returned by the next device check).
    pub(super) fn validated<T>(
        &self,
        what: impl FnOnce() -> String,
        make: impl FnOnce() -> T,
    ) -> Result<T> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let made = make();
            match pollster::block_on(scope.pop()) {
                Some(e) => Err(VidkvError::Gpu(format!("{}: {e}", what()))),
                None => Ok(made),
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = what;
            Ok(make())
        }
    }

    /// Submits `encoder`'s commands without waiting for them (or holds them back while a
    /// decode step records, [`GpuContext::enqueue`]): the queue orders every later
    /// write, dispatch and read-back after them, and only a read-back waits. Natively a
    /// validation or out-of-memory error of the submission is returned here; on wasm32
    /// (where an error scope can only be awaited) it reaches the uncaptured-error slot and
    /// the next call that checks the device returns it.
    pub(super) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.enqueue(encoder.finish())
    }

    /// Submits `commands` (see [`GpuContext::submit`]), or holds them back with the decode
    /// step's while one records.
    pub(crate) fn enqueue(&self, commands: wgpu::CommandBuffer) -> Result<()> {
        self.check_lost()?;
        if let Some(held) = self.deferred.lock().expect("deferred").as_mut() {
            held.push(commands);
            return Ok(());
        }
        self.submit_all(vec![commands])
    }

    /// Submits `buffers` in one `queue.submit` (one submission).
    fn submit_all(&self, buffers: Vec<wgpu::CommandBuffer>) -> Result<()> {
        self.counters.submissions.fetch_add(1, Ordering::Relaxed);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            self.queue.submit(buffers);
            let memory_error = pollster::block_on(memory.pop());
            let validation_error = pollster::block_on(validation.pop());
            if let Some(e) = memory_error.or(validation_error) {
                return Err(VidkvError::Gpu(e.to_string()));
            }
        }
        #[cfg(target_arch = "wasm32")]
        self.queue.submit(buffers);
        self.check_lost()
    }

    /// Starts holding back every submission of this context (all clones) until
    /// [`GpuContext::take_deferred`]: a decode step's commands then go to the GPU together.
    /// Meanwhile pooled buffers are not reused (each request gets a fresh buffer, since
    /// host writes land before the one submission) and a read-back is refused.
    pub(crate) fn defer_submissions(&self) -> Result<()> {
        let mut deferred = self.deferred.lock().expect("deferred");
        if deferred.is_some() {
            return Err(VidkvError::InvalidConfig(
                "a decode step is already recording on this GPU context".into(),
            ));
        }
        *deferred = Some(Vec::new());
        Ok(())
    }

    /// Ends holding back and returns the held command buffers, in order.
    pub(crate) fn take_deferred(&self) -> Vec<wgpu::CommandBuffer> {
        self.deferred
            .lock()
            .expect("deferred")
            .take()
            .unwrap_or_default()
    }

    /// Submits held command buffers in one submission (none: nothing is submitted).
    pub(crate) fn submit_held(&self, buffers: Vec<wgpu::CommandBuffer>) -> Result<()> {
        if buffers.is_empty() {
            return Ok(());
        }
        self.submit_all(buffers)
    }

    /// Whether submissions are being held back for a decode step.
    pub(crate) fn is_deferring(&self) -> bool {
        self.deferred.lock().expect("deferred").is_some()
    }

    /// Blocks until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| VidkvError::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check_lost()
    }

    /// The (x, y) workgroup grid for `invocations` invocations of WORKGROUP_SIZE.
    pub(super) fn grid(&self, invocations: u32) -> Result<(u32, u32)> {
        let groups = invocations.div_ceil(WORKGROUP_SIZE);
        let x = groups.clamp(1, self.max_workgroups);
        let y = groups.div_ceil(x).max(1);
        if y > self.max_workgroups {
            return Err(VidkvError::Gpu(format!(
                "{invocations} invocations exceed the dispatch grid"
            )));
        }
        Ok((x, y))
    }
}
