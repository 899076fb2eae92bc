//! One decode step of a whole model in one submission: [`KvCache::begin_step`] holds back
//! the GPU commands of every append and attend until [`DecodeStep::submit`] sends them
//! together, or [`DecodeStep::finish`] hands them to the host to submit with its own work.

use super::KvCache;
use crate::error::Result;

/// A decode step being recorded: the appends and attends of any layers, from and into GPU
/// buffers, go to the GPU in one submission. Nothing is read back. The cache's state
/// advances as each call is recorded, so the commands must reach the GPU: dropping a step
/// submits what it recorded. While a step records, its context holds back every
/// submission (other users of the same context included) and refuses read-backs.
pub struct DecodeStep<'a> {
    cache: &'a mut KvCache,
    open: bool,
}

impl KvCache {
    /// Starts a decode step on this cache's context (one step at a time per context).
    pub fn begin_step(&mut self) -> Result<DecodeStep<'_>> {
        self.gpu.defer_submissions()?;
        Ok(DecodeStep {
            cache: self,
            open: true,
        })
    }
}

impl DecodeStep<'_> {
    /// [`KvCache::append_buffers`], recorded into the step.
    pub fn append_buffers(
        &mut self,
        layer: usize,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        self.cache.append_buffers(layer, k, v, tokens)
    }

    /// [`KvCache::attend_buffers`], recorded into the step.
    pub fn attend_buffers(
        &self,
        layer: usize,
        q: &wgpu::Buffer,
        out: &wgpu::Buffer,
        visible: &[(u32, u32)],
    ) -> Result<()> {
        self.cache.attend_buffers(layer, q, out, visible)
    }

    /// Adds the host's own commands at this point of the step (for example the kernels that
    /// compute the next layer's K/V/Q from this layer's attention output): they go to the
    /// GPU in the same submission, in order with the cache's.
    pub fn push_commands(&mut self, commands: wgpu::CommandBuffer) -> Result<()> {
        self.cache.gpu.enqueue(commands)
    }

    /// The cache the step records into (its sizes and lengths already count the step).
    pub fn cache(&self) -> &KvCache {
        self.cache
    }

    /// Sends the step's commands to the GPU in one submission and returns without waiting.
    pub fn submit(mut self) -> Result<()> {
        self.open = false;
        let buffers = self.cache.gpu.take_deferred();
        self.cache.gpu.submit_held(buffers)
    }

    /// Ends the step and returns its command buffers, in order, for the host to submit
    /// (after its own work in the same `queue.submit`, for example). They must be
    /// submitted: the cache already counts what they write.
    pub fn finish(mut self) -> Vec<wgpu::CommandBuffer> {
        self.open = false;
        self.cache.gpu.take_deferred()
    }
}

impl Drop for DecodeStep<'_> {
    fn drop(&mut self) {
        if self.open {
            let buffers = self.cache.gpu.take_deferred();
            // The error of a dropped step has no caller; the next call on the context
            // reports a lost device.
            let _ = self.cache.gpu.submit_held(buffers);
        }
    }
}
