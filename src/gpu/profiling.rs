//! GPU timing with timestamp queries: whole batches ([`GpuContext::start_profiling`]) and
//! each kernel pass ([`GpuContext::start_kernel_profiling`]).

use super::context::GpuContext;
use crate::error::Result;

/// GPU-side timing of batches with timestamp queries.
pub(super) struct Profile {
    pub(super) queries: wgpu::QuerySet,
    pub(super) resolve: wgpu::Buffer,
    pub(super) nanoseconds: f64,
}

/// Passes timed per batch when kernel profiling is on (later passes of a batch go untimed).
pub(super) const KERNEL_QUERIES: u32 = 1024;

/// GPU time per kernel entry point, from timestamps written at each pass's start and end.
pub(super) struct KernelProfile {
    pub(super) queries: wgpu::QuerySet,
    pub(super) resolve: wgpu::Buffer,
    /// `kernel::entry` of each timed pass of the batch being recorded.
    pub(super) pending: Vec<String>,
    /// Total milliseconds and pass count per `kernel::entry`.
    pub(super) totals: std::collections::BTreeMap<String, (f64, u64)>,
}

impl GpuContext {
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
    pub(super) fn record_kernel_times(&self) -> Result<()> {
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

    /// Records an empty pass that writes timestamp `index` when profiling; returns whether
    /// it did.
    pub(super) fn timestamp_pass(&self, encoder: &mut wgpu::CommandEncoder, index: u32) -> bool {
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
    pub(super) fn record_gpu_time(&self) -> Result<()> {
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
}
