//! The GPU runtime: adapter and device selection, cached pipelines, pooled buffers,
//! dispatch batching with split grids, read-back, and GPU errors as typed errors.
//!
//! Adapter choice: high performance by default; [`GpuOptions::adapter`] or the
//! `VIDKV_ADAPTER` environment variable selects by backend (`vulkan`, `metal`, `dx12`,
//! `gl`) or by a case-insensitive substring of the adapter name. Software adapters
//! (lavapipe, SwiftShader) are allowed. Validation and out-of-memory errors are caught
//! with error scopes around every submission, and a device-lost callback turns a lost
//! device into [`VidkvError::DeviceLost`] on the next call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::shaders::Kernel;
use super::trace::Trace;
use crate::error::{Result, VidkvError};

/// Invocations per workgroup of every 1-D kernel (`WORKGROUP_SIZE` in `common.wgsl`).
pub const WORKGROUP_SIZE: u32 = 64;

/// Words of guard pattern written after every output region and checked on read-back.
pub const GUARD_WORDS: usize = 64;
/// The guard pattern.
pub const GUARD_VALUE: u32 = 0xDEAD_BEEF;

/// The uniform parameter block of every kernel (`Params` in `common.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub width: u32,
    pub rows: u32,
    pub len: u32,
    pub group_size: u32,
    pub groups: u32,
    pub group_offset: u32,
    pub group_count: u32,
    pub row_offset: u32,
    pub invocations: u32,
    pub gamma: f32,
    pub scale_rule: u32,
    pub dft_len: u32,
    pub outliers: u32,
    pub blocks: u32,
    pub block_tokens: u32,
    pub block_offset: u32,
    pub kv_heads: u32,
    pub rows_per_head: u32,
    pub queries: u32,
    pub tile_rows: u32,
    pub segment_start: u32,
    pub segment_len: u32,
    pub split_offset: u32,
    pub split_size: u32,
    pub total_splits: u32,
    pub segment_first: u32,
    pub stp: u32,
    pub scale: f32,
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
    /// Use only the portable kernels even where the adapter offers subgroups.
    pub portable_only: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            adapter: None,
            max_binding_bytes: None,
            portable_only: false,
        }
    }
}

/// A device, its queue, and the pipelines and buffers vidkv has made on it.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: wgpu::Features,
    max_binding: u64,
    max_workgroups: u32,
    subgroups: bool,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    buffers: Mutex<HashMap<&'static str, Arc<wgpu::Buffer>>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    exclusive: Mutex<()>,
    /// Accumulated GPU time of submitted batches, when profiling is on.
    profile: Mutex<Option<Profile>>,
    /// GPU time per kernel entry point, when kernel profiling is on.
    kernel_profile: Mutex<Option<KernelProfile>>,
    /// The command record, when tracing is on ([`GpuContext::start_trace`]).
    trace: Mutex<Option<Trace>>,
}

/// GPU-side timing of batches with timestamp queries.
struct Profile {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    nanoseconds: f64,
}

/// Passes timed per batch when kernel profiling is on (later passes of a batch go untimed).
const KERNEL_QUERIES: u32 = 1024;

/// GPU time per kernel entry point, from timestamps written at each pass's start and end.
struct KernelProfile {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// `kernel::entry` of each timed pass of the batch being recorded.
    pending: Vec<String>,
    /// Total milliseconds and pass count per `kernel::entry`.
    totals: std::collections::BTreeMap<String, (f64, u64)>,
}

/// A compute pipeline and the bindings of group 0 its entry point uses.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    /// Binding numbers the entry point reads or writes (its automatic layout holds only these).
    pub bindings: Vec<u32>,
}

impl GpuContext {
    /// Opens the adapter chosen by `options` (see the module docs).
    pub fn new(options: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    async fn new_async(options: &GpuOptions) -> Result<Self> {
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
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("vidkv"),
                // Optional features, requested where offered: timestamp queries (for
                // benchmarks) and subgroups (for the fast paths).
                required_features: features
                    & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP),
                required_limits: limits.clone(),
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
        let device_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = options
            .max_binding_bytes
            .map_or(device_binding, |cap| cap.min(device_binding));
        Ok(GpuContext {
            device,
            queue,
            info,
            features,
            max_binding,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            subgroups: !options.portable_only && features.contains(wgpu::Features::SUBGROUP),
            pipelines: Mutex::new(HashMap::new()),
            buffers: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            exclusive: Mutex::new(()),
            profile: Mutex::new(None),
            kernel_profile: Mutex::new(None),
            trace: Mutex::new(None),
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

    /// Optional features the adapter offers (fast paths check these).
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
    pub fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
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
    fn check_lost(&self) -> Result<()> {
        if let Some(message) = self.lost.lock().ok().and_then(|slot| slot.clone()) {
            return Err(VidkvError::DeviceLost(message));
        }
        match self.uncaptured.lock().ok().and_then(|mut slot| slot.take()) {
            Some(message) => Err(VidkvError::Gpu(message)),
            None => Ok(()),
        }
    }

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

    /// A new storage buffer of exactly `size` bytes, within the storage binding limit.
    fn new_storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        if size > self.max_binding {
            return Err(VidkvError::Gpu(format!(
                "buffer `{label}` needs {size} bytes, over the {} byte storage binding limit",
                self.max_binding
            )));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.traced(|t| {
            t.created(&buffer, label);
        });
        Ok(buffer)
    }

    fn traced(&self, record: impl FnOnce(&mut Trace)) {
        if let Some(trace) = self.trace.lock().expect("trace").as_mut() {
            record(trace);
        }
    }

    /// Writes `bytes` into `buffer` at `offset` (applied before the next submission).
    fn write_bytes(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.traced(|t| t.write(buffer, offset, bytes));
            self.queue.write_buffer(buffer, offset, bytes);
        }
    }

    /// Starts recording every command into a [`Trace`] whose writes refer to `sources`
    /// where their bytes match. Profiling stays off while tracing.
    pub fn start_trace(&self, sources: Vec<(String, Vec<u8>)>) {
        *self.trace.lock().expect("trace") = Some(Trace::new(sources));
    }

    /// Marks the start of a named step in the trace (no-op when not tracing).
    pub fn trace_step(&self, name: &str) {
        self.traced(|t| t.step(name));
    }

    /// Adds a note for the replaying host to the trace (no-op when not tracing).
    pub fn trace_note(&self, note: serde_json::Value) {
        self.traced(|t| t.note(note));
    }

    /// Stops tracing and returns the record.
    pub fn finish_trace(&self) -> Option<Trace> {
        self.trace.lock().expect("trace").take()
    }

    /// A storage buffer of at least `bytes` for `role`, reused across calls.
    pub fn buffer(&self, role: &'static str, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
        let bytes = bytes.max(16).next_multiple_of(4);
        let mut pool = self.buffers.lock().expect("buffer pool");
        if let Some(b) = pool.get(role) {
            if b.size() >= bytes {
                return Ok(Arc::clone(b));
            }
        }
        let buffer = Arc::new(self.new_storage(role, bytes)?);
        pool.insert(role, Arc::clone(&buffer));
        Ok(buffer)
    }

    /// The pooled buffer for `role`, filled with `data`.
    pub fn upload<T: Pod>(&self, role: &'static str, data: &[T]) -> Result<Arc<wgpu::Buffer>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.buffer(role, bytes.len() as u64)?;
        self.write_bytes(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// Starts measuring GPU time with timestamp queries, if the adapter has them; returns
    /// whether it does. [`GpuContext::take_gpu_time_ms`] reads and resets the total.
    pub fn start_profiling(&self) -> bool {
        let Some((queries, resolve)) = self.timestamp_queries("vidkv timestamps", 2) else {
            return false;
        };
        *self.profile.lock().expect("profile") = Some(Profile {
            queries,
            resolve,
            nanoseconds: 0.0,
        });
        true
    }

    /// A query set of `count` timestamps and a buffer to resolve them into, or None when the
    /// adapter has no timestamp queries.
    fn timestamp_queries(&self, label: &str, count: u32) -> Option<(wgpu::QuerySet, wgpu::Buffer)> {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return None;
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: u64::from(count) * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some((queries, resolve))
    }

    /// Starts timing every kernel pass with timestamp queries, if the adapter has them;
    /// returns whether it does. [`GpuContext::take_kernel_times`] reads and resets the totals.
    pub fn start_kernel_profiling(&self) -> bool {
        let Some((queries, resolve)) =
            self.timestamp_queries("vidkv kernel timestamps", 2 * KERNEL_QUERIES)
        else {
            return false;
        };
        *self.kernel_profile.lock().expect("kernel profile") = Some(KernelProfile {
            queries,
            resolve,
            pending: Vec::new(),
            totals: Default::default(),
        });
        true
    }

    /// Stops kernel profiling.
    pub fn stop_kernel_profiling(&self) {
        *self.kernel_profile.lock().expect("kernel profile") = None;
    }

    /// Per `kernel::entry`: total GPU milliseconds and passes since the last call.
    pub fn take_kernel_times(&self) -> Vec<(String, f64, u64)> {
        let mut profile = self.kernel_profile.lock().expect("kernel profile");
        profile.as_mut().map_or_else(Vec::new, |p| {
            std::mem::take(&mut p.totals)
                .into_iter()
                .map(|(name, (ms, passes))| (name, ms, passes))
                .collect()
        })
    }

    /// Adds the timed passes of the batch just waited for to the kernel totals.
    fn record_kernel_times(&self) -> Result<()> {
        let (resolve, count) = match self.kernel_profile.lock().expect("kernel profile").as_ref() {
            Some(p) if !p.pending.is_empty() => (p.resolve.clone(), p.pending.len()),
            _ => return Ok(()),
        };
        let stamps = self.read_words(&resolve, count * 4)?;
        if let Some(p) = self.kernel_profile.lock().expect("kernel profile").as_mut() {
            for (i, name) in std::mem::take(&mut p.pending).into_iter().enumerate() {
                let total = p.totals.entry(name).or_insert((0.0, 0));
                total.0 += self.span_nanoseconds(&stamps, i) / 1e6;
                total.1 += 1;
            }
        }
        Ok(())
    }

    /// GPU time of the batches submitted since the last call, in milliseconds (None when
    /// profiling is off).
    pub fn take_gpu_time_ms(&self) -> Option<f64> {
        let mut profile = self.profile.lock().expect("profile");
        profile
            .as_mut()
            .map(|p| std::mem::take(&mut p.nanoseconds) / 1e6)
    }

    /// A storage buffer owned by the caller (not pooled), filled with `data`.
    pub fn create_storage<T: Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.create_zeroed(label, bytes.len().div_ceil(4))?;
        self.write_bytes(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// A zero-filled storage buffer of `words` u32 owned by the caller (wgpu zero-fills
    /// new buffers, so nothing is uploaded).
    pub fn create_zeroed(&self, label: &str, words: usize) -> Result<wgpu::Buffer> {
        let size = ((words * 4) as u64).max(16).next_multiple_of(16);
        self.check_lost()?;
        self.new_storage(label, size)
    }

    /// Writes `data` into `buffer` at byte `offset` (applied before the next submission).
    pub fn write<T: Pod>(&self, buffer: &wgpu::Buffer, offset: u64, data: &[T]) {
        self.write_bytes(buffer, offset, bytemuck::cast_slice(data));
    }

    /// A pooled buffer for an output of `words` u32, with [`GUARD_WORDS`] guard words
    /// written right after it; [`GpuContext::read_output`] checks them.
    pub fn output(&self, role: &'static str, words: usize) -> Result<Arc<wgpu::Buffer>> {
        let buffer = self.buffer(role, ((words + GUARD_WORDS) * 4) as u64)?;
        self.write_bytes(
            &buffer,
            (words * 4) as u64,
            bytemuck::cast_slice(&[GUARD_VALUE; GUARD_WORDS]),
        );
        Ok(buffer)
    }

    /// Reads an output of `words` u32 written into a buffer from [`GpuContext::output`],
    /// failing if any guard word after it changed (an out-of-bounds write).
    pub fn read_output(&self, buffer: &wgpu::Buffer, role: &str, words: usize) -> Result<Vec<u32>> {
        let mut data = self.read_labelled(buffer, role, words + GUARD_WORDS)?;
        if let Some(i) = data[words..].iter().position(|&w| w != GUARD_VALUE) {
            return Err(VidkvError::Gpu(format!(
                "out-of-bounds write: guard word {i} after `{role}` was overwritten"
            )));
        }
        data.truncate(words);
        Ok(data)
    }

    /// Starts a batch of dispatches recorded into one command buffer.
    pub fn batch(&self) -> Batch<'_> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("vidkv"),
            });
        let profiled = self.timestamp_pass(&mut encoder, 0);
        Batch {
            context: self,
            encoder,
            error: None,
            profiled,
        }
    }

    /// Records an empty pass that writes timestamp `index` when profiling; returns whether
    /// it did.
    fn timestamp_pass(&self, encoder: &mut wgpu::CommandEncoder, index: u32) -> bool {
        let profile = self.profile.lock().expect("profile");
        let Some(p) = profile.as_ref() else {
            return false;
        };
        let writes = wgpu::ComputePassTimestampWrites {
            query_set: &p.queries,
            beginning_of_pass_write_index: (index == 0).then_some(0),
            end_of_pass_write_index: (index == 1).then_some(1),
        };
        drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timestamp"),
            timestamp_writes: Some(writes),
        }));
        if index == 1 {
            encoder.resolve_query_set(&p.queries, 0..2, &p.resolve, 0);
        }
        true
    }

    /// Adds the GPU time of the batch just waited for to the profile.
    fn record_gpu_time(&self) -> Result<()> {
        let resolve = match self.profile.lock().expect("profile").as_ref() {
            Some(p) => p.resolve.clone(),
            None => return Ok(()),
        };
        let stamps = self.read_words(&resolve, 4)?;
        let nanoseconds = self.span_nanoseconds(&stamps, 0);
        if let Some(p) = self.profile.lock().expect("profile").as_mut() {
            p.nanoseconds += nanoseconds;
        }
        Ok(())
    }

    /// Nanoseconds between the begin and end timestamps of span `i` of resolved queries
    /// (`stamps` holds u64 pairs as u32 words: begin, end, begin, end, …).
    fn span_nanoseconds(&self, stamps: &[u32], i: usize) -> f64 {
        let at = |j: usize| u64::from(stamps[j]) | (u64::from(stamps[j + 1]) << 32);
        let ticks = at(4 * i + 2).saturating_sub(at(4 * i));
        ticks as f64 * f64::from(self.queue.get_timestamp_period())
    }

    /// Reads the first `words` u32 of the pooled buffer of `role` (named `role` in the trace).
    pub fn read_pooled(&self, role: &str, words: usize) -> Result<Vec<u32>> {
        let buffer = self
            .buffers
            .lock()
            .expect("buffer pool")
            .get(role)
            .cloned()
            .ok_or_else(|| VidkvError::Gpu(format!("no pooled buffer `{role}`")))?;
        self.read_labelled(&buffer, role, words)
    }

    /// Copies the first `words` u32 of `buffer` back to the host.
    pub fn read_words(&self, buffer: &wgpu::Buffer, words: usize) -> Result<Vec<u32>> {
        self.read_labelled(buffer, "words", words)
    }

    /// [`GpuContext::read_words`], named `label` in the trace.
    fn read_labelled(&self, buffer: &wgpu::Buffer, label: &str, words: usize) -> Result<Vec<u32>> {
        let bytes = (words * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        self.check_lost()?;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read-back"),
            });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
        self.submit(encoder)?;
        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.wait()?;
        receiver
            .recv()
            .map_err(|_| VidkvError::Gpu("read-back was never answered".into()))?
            .map_err(|e| VidkvError::Gpu(format!("read-back failed: {e}")))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| VidkvError::Gpu(format!("read-back mapping failed: {e}")))?;
        let words = bytemuck::cast_slice::<u8, u32>(&data).to_vec();
        drop(data);
        staging.unmap();
        self.traced(|t| t.read(buffer, label, &words));
        Ok(words)
    }

    /// Copies the first `count` f32 of `buffer` back to the host.
    pub fn read_floats(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>> {
        Ok(self
            .read_words(buffer, count)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }

    fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.check_lost()?;
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.queue.submit([encoder.finish()]);
        let memory_error = pollster::block_on(memory.pop());
        let validation_error = pollster::block_on(validation.pop());
        if let Some(e) = memory_error.or(validation_error) {
            return Err(VidkvError::Gpu(e.to_string()));
        }
        self.wait()
    }

    /// Blocks until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| VidkvError::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check_lost()
    }

    /// The (x, y) workgroup grid for `invocations` invocations of WORKGROUP_SIZE.
    fn grid(&self, invocations: u32) -> Result<(u32, u32)> {
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

/// A buffer bound to a kernel: whole, or a byte range (offset aligned to the device's
/// `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy)]
pub struct Bound<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub range: Option<(u64, u64)>,
}

impl<'a> Bound<'a> {
    /// `size` bytes of `buffer` from `offset`.
    pub fn range(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        Bound {
            buffer,
            range: Some((offset, size)),
        }
    }

    fn resource(&self) -> wgpu::BindingResource<'a> {
        match self.range {
            None => self.buffer.as_entire_binding(),
            Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset,
                size: std::num::NonZeroU64::new(size),
            }),
        }
    }
}

impl<'a> From<&'a wgpu::Buffer> for Bound<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Bound {
            buffer,
            range: None,
        }
    }
}

/// Dispatches recorded into one command buffer, submitted together.
pub struct Batch<'a> {
    context: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
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
        if self.error.is_some() || grid.0 == 0 || grid.1 == 0 {
            return;
        }
        let limit = self.context.max_workgroups;
        let bound: Vec<Bound<'_>> = buffers.iter().map(|&b| Bound::from(b)).collect();
        let result = if grid.0 > limit || grid.1 > limit {
            Err(VidkvError::Gpu(format!(
                "grid {grid:?} of {} exceeds {limit} workgroups per dimension",
                kernel.name
            )))
        } else {
            self.record(kernel, entry, params, &bound, grid)
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
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        // Buffers at bindings 1, 2, …, without those the entry point does not use.
        let bound: Vec<(u32, Bound<'_>)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32 + 1, *b))
            .filter(|(binding, _)| pipeline.bindings.contains(binding))
            .collect();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bound.iter().map(|(binding, b)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: b.resource(),
        }));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &pipeline.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(VidkvError::Gpu(format!(
                "binding {}::{entry}: {e}",
                kernel.name
            )));
        }
        let mut kernel_profile = self.context.kernel_profile.lock().expect("kernel profile");
        let timestamp_writes = kernel_profile.as_mut().and_then(|p| {
            let index = p.pending.len() as u32;
            (index < KERNEL_QUERIES).then(|| {
                p.pending.push(format!("{}::{entry}", kernel.name));
                wgpu::ComputePassTimestampWrites {
                    query_set: &p.queries,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                }
            })
        });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.name),
                timestamp_writes,
            });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(grid.0, grid.1, 1);
        drop(pass);
        drop(kernel_profile);
        self.context
            .traced(|t| t.dispatch(kernel, entry, &params, &bound, grid));
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
            self.context
                .traced(|t| t.copy(from, from_offset, to, to_offset, size));
            self.encoder
                .copy_buffer_to_buffer(from, from_offset, to, to_offset, size);
        }
    }

    /// Submits the batch and waits for it.
    pub fn submit(mut self) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
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
        self.context.traced(|t| t.submit());
        self.context.submit(self.encoder)?;
        if self.profiled {
            self.context.record_gpu_time()?;
        }
        self.context.record_kernel_times()?;
        Ok(())
    }
}
