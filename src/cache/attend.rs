//! Attention over a [`KvCache`] layer: the sinks, every quantized run and the window as
//! segments of one fused attention call.

use super::KvCache;
use crate::error::{Result, VidkvError};
use crate::gpu::attention::{
    attend_segments, attend_segments_into, record_segments, Call, Kernels, KeyLayout,
    LayerGeometry, SegmentData, SegmentRef,
};

impl KvCache {
    /// Attention of `q` (`[q_heads, queries, head_dim]`) over `layer`, where query index m
    /// sees positions `visible[m].0 .. visible[m].1`. Returns `[q_heads, queries, head_dim]`.
    pub fn attend(&self, layer: usize, q: &[f32], visible: &[(u32, u32)]) -> Result<Vec<f32>> {
        self.with_call(layer, visible, |call| attend_segments(&self.gpu, call, q))
    }

    /// [`KvCache::attend`] without blocking: the call is recorded and submitted, and the
    /// output is awaited through [`crate::GpuContext::read_floats_async`]. This is the entry
    /// point a browser page uses (wasm32 cannot block on a read-back); native hosts may
    /// await it too.
    pub async fn attend_async(
        &self,
        layer: usize,
        q: &[f32],
        visible: &[(u32, u32)],
    ) -> Result<Vec<f32>> {
        let (output, words) =
            self.with_call(layer, visible, |call| record_segments(&self.gpu, call, q))?;
        self.gpu.read_floats_async(&output, words).await
    }

    /// [`KvCache::attend`] with the query read from the GPU buffer `q` and the output
    /// written into the GPU buffer `out` (both STORAGE buffers of f32
    /// `[q_heads, queries, head_dim]` from byte 0): one submission, nothing read back, so a
    /// decode step whose K/V come through [`KvCache::append_buffers`] never waits on a
    /// read-back. The query's values are not checked (they never reach the host).
    pub fn attend_buffers(
        &self,
        layer: usize,
        q: &wgpu::Buffer,
        out: &wgpu::Buffer,
        visible: &[(u32, u32)],
    ) -> Result<()> {
        self.with_call(layer, visible, |call| {
            attend_segments_into(&self.gpu, call, q, out)
        })
    }

    /// Runs `attend` on the attention call of `layer` (its sinks, every quantized run and the
    /// window as segments) for queries seeing `visible`, with the fastest kernels the
    /// context allows.
    fn with_call<T>(
        &self,
        layer: usize,
        visible: &[(u32, u32)],
        attend: impl FnOnce(&Call<'_, '_>) -> Result<T>,
    ) -> Result<T> {
        let state = self.layers.get(layer).ok_or_else(|| {
            VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the model's {} layers",
                self.shape.layers
            ))
        })?;
        if state.tokens == 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} holds no token"
            )));
        }
        let identity;
        let layout = match &state.layout {
            Some(layout) => layout,
            None => {
                identity =
                    KeyLayout::identity(&self.gpu, self.shape.kv_heads, self.shape.head_dim)?;
                &identity
            }
        };
        let g = self.config.group_size;
        let mut segments = Vec::new();
        if self.config.is_fp16() {
            let mut start = 0;
            for (store, used) in &state.exact_chunks {
                segments.push(store.segment(0, start, *used));
                start += used;
            }
        } else {
            let sinks = self.config.sinks.min(state.tokens);
            if let Some(store) = &state.exact {
                segments.push(store.segment(0, 0, sinks));
            }
            for chunk in state.prefill.iter().map(|(c, _)| c).chain(&state.chunks) {
                segments.push(SegmentRef {
                    start: chunk.start,
                    len: chunk.groups * g,
                    data: SegmentData::Packed(&chunk.planes),
                });
            }
            let window = state.window_rows;
            if let Some(store) = &state.exact {
                let first_row = self.sink_rows();
                segments.push(store.segment(first_row, state.tokens - window, window));
            }
        }
        segments.retain(|s| s.len > 0);
        let geometry = LayerGeometry {
            kv_heads: self.shape.kv_heads,
            head_dim: self.shape.head_dim,
            group_size: g,
            tokens: state.tokens,
            layout,
        };
        attend(&Call {
            layer: &geometry,
            segments: &segments,
            q_heads: self.shape.q_heads,
            visible,
            kernels: Kernels::Fastest,
        })
    }

    /// Attention of the last `queries` positions of `layer` (the tokens just appended) with
    /// a causal mask: query m, at position len − queries + m, sees positions 0..=that.
    pub fn attend_causal(&self, layer: usize, q: &[f32]) -> Result<Vec<f32>> {
        let per_query = self.shape.q_heads * self.shape.head_dim;
        let queries = q.len() / per_query.max(1);
        let tokens = self.len(layer);
        if queries == 0 || queries > tokens || q.len() != queries * per_query {
            return Err(VidkvError::ShapeMismatch {
                tensor: "q".into(),
                detail: format!(
                    "q must be [{} query heads, M ≤ {tokens}, {}] (got {} values)",
                    self.shape.q_heads,
                    self.shape.head_dim,
                    q.len()
                ),
            });
        }
        let visible: Vec<(u32, u32)> = (0..queries)
            .map(|m| (0, (tokens - queries + m + 1) as u32))
            .collect();
        self.attend(layer, q, &visible)
    }
}
