//! Storage buffers: creation within the binding limit, the role-keyed pool, uploads, guarded
//! outputs and read-back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytemuck::Pod;

use super::context::GpuContext;
use crate::error::{Result, VidkvError};

/// Words of guard pattern written after every output region and checked on read-back.
pub const GUARD_WORDS: usize = 64;
/// The guard pattern.
pub const GUARD_VALUE: u32 = 0xDEAD_BEEF;

impl GpuContext {
    /// A new storage buffer of exactly `size` bytes, within the storage binding limit.
    pub(super) fn new_storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        if size > self.max_binding {
            return Err(VidkvError::Gpu(format!(
                "buffer `{label}` needs {size} bytes, over the {} byte storage binding limit",
                self.max_binding
            )));
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            // Uniform too: small read-mostly arrays (rotated queries, code tables) are bound
            // as uniforms where kernels read them at the same index in every invocation.
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Ok(buffer)
    }

    /// A storage buffer of at least `bytes` for `role`, reused across calls.
    pub(crate) fn buffer(&self, role: &'static str, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
        let bytes = bytes.max(16).next_multiple_of(4);
        if self.is_deferring() {
            // Host writes land before the step's one submission: a reused buffer would
            // hold only the last write when the first command reads it.
            return Ok(Arc::new(self.new_storage(role, bytes)?));
        }
        let mut pool = self.buffers.lock().expect("buffer pool");
        if let Some(b) = pool.get(role) {
            if b.size() >= bytes {
                return Ok(Arc::clone(b));
            }
        }
        let buffer = Arc::new(self.new_storage(role, bytes)?);
        if pool.insert(role, Arc::clone(&buffer)).is_some() {
            // Cached bind groups may hold the replaced buffer alive.
            self.forget_bind_groups();
        }
        Ok(buffer)
    }

    /// The pooled buffer for `role`, filled with `data`.
    pub(crate) fn upload<T: Pod>(
        &self,
        role: &'static str,
        data: &[T],
    ) -> Result<Arc<wgpu::Buffer>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.buffer(role, bytes.len() as u64)?;
        self.write_bytes(&buffer, 0, bytes);
        Ok(buffer)
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
    pub(crate) fn write<T: Pod>(&self, buffer: &wgpu::Buffer, offset: u64, data: &[T]) {
        self.write_bytes(buffer, offset, bytemuck::cast_slice(data));
    }

    /// A pooled buffer for an output of `words` u32, with [`GUARD_WORDS`] guard words
    /// written right after it; [`GpuContext::read_output`] checks them.
    pub(crate) fn output(&self, role: &'static str, words: usize) -> Result<Arc<wgpu::Buffer>> {
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
    pub(crate) fn read_output(
        &self,
        buffer: &wgpu::Buffer,
        role: &str,
        words: usize,
    ) -> Result<Vec<u32>> {
        let mut data = self.read_words(buffer, words + GUARD_WORDS)?;
        if let Some(i) = data[words..].iter().position(|&w| w != GUARD_VALUE) {
            return Err(VidkvError::Gpu(format!(
                "out-of-bounds write: guard word {i} after `{role}` was overwritten"
            )));
        }
        data.truncate(words);
        Ok(data)
    }

    /// Copies the first `words` u32 of `buffer` back to the host.
    pub fn read_words(&self, buffer: &wgpu::Buffer, words: usize) -> Result<Vec<u32>> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (buffer, words);
            Err(VidkvError::Gpu(
                "a blocking read-back cannot finish in a browser: use the async read-backs \
                 (read_words_async, read_floats_async)"
                    .into(),
            ))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let Some(pending) = self.begin_read(buffer, words)? else {
                return Ok(Vec::new());
            };
            self.wait()?;
            let answer = futures::executor::block_on(pending.answer);
            self.finish_read(pending.staging, answer)
        }
    }

    /// Copies the first `words` u32 of `buffer` back to the host without blocking: the
    /// read-back to await on wasm32, where a page may not block (native hosts may await it
    /// too; it polls the device first).
    pub async fn read_words_async(&self, buffer: &wgpu::Buffer, words: usize) -> Result<Vec<u32>> {
        let Some(pending) = self.begin_read(buffer, words)? else {
            return Ok(Vec::new());
        };
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        let answer = pending.answer.await;
        self.finish_read(pending.staging, answer)
    }

    /// [`GpuContext::read_floats`] without blocking (see [`GpuContext::read_words_async`]).
    pub async fn read_floats_async(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<f32>> {
        let words = self.read_words_async(buffer, count).await?;
        Ok(words.into_iter().map(f32::from_bits).collect())
    }

    /// Submits the copy of `words` u32 of `buffer` into a mappable staging buffer and asks
    /// for its mapping; `None` for an empty read.
    fn begin_read(&self, buffer: &wgpu::Buffer, words: usize) -> Result<Option<PendingRead>> {
        let bytes = (words * 4) as u64;
        if bytes == 0 {
            return Ok(None);
        }
        self.check_lost()?;
        if self.is_deferring() {
            return Err(VidkvError::InvalidConfig(
                "a read-back cannot run inside a decode step (its commands are not submitted \
                 yet): submit the step first"
                    .into(),
            ));
        }
        self.counters.read_backs.fetch_add(1, Ordering::Relaxed);
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
        let (sender, answer) = futures::channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        Ok(Some(PendingRead { staging, answer }))
    }

    /// The words of a mapped staging buffer, once its mapping was answered.
    fn finish_read(
        &self,
        staging: wgpu::Buffer,
        answer: std::result::Result<MapAnswer, futures::channel::oneshot::Canceled>,
    ) -> Result<Vec<u32>> {
        answer
            .map_err(|_| VidkvError::Gpu("read-back was never answered".into()))?
            .map_err(|e| VidkvError::Gpu(format!("read-back failed: {e}")))?;
        self.check_lost()?;
        let data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| VidkvError::Gpu(format!("read-back mapping failed: {e}")))?;
        let words = bytemuck::cast_slice::<u8, u32>(&data).to_vec();
        drop(data);
        staging.unmap();
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
}

/// The answer of a staging buffer's `map_async`.
type MapAnswer = std::result::Result<(), wgpu::BufferAsyncError>;

/// A read-back whose copy was submitted and whose mapping was requested.
struct PendingRead {
    staging: wgpu::Buffer,
    answer: futures::channel::oneshot::Receiver<MapAnswer>,
}
