//! One layer of a [`PackedCache`] resident on the GPU.

use super::planes::{
    check_head_dim, upload_planes, KeyLayout, LayerGeometry, PackedPlanes, SegmentData, SegmentRef,
};
use crate::config::TokenPlan;
use crate::error::{Result, VidkvError};
use crate::gpu::context::GpuContext;
use crate::packed::{PackedCache, PackedHead};

/// One layer of a packed cache resident on the GPU, ready for [`super::attend`].
pub struct GpuLayer {
    kv_heads: usize,
    head_dim: usize,
    group_size: usize,
    plan: TokenPlan,
    exact_keys: wgpu::Buffer,
    exact_values: wgpu::Buffer,
    layout: KeyLayout,
    planes: Option<PackedPlanes>,
}

impl GpuLayer {
    /// Uploads layer `layer` of `cache`. The fused kernels need per-channel keys and a
    /// head_dim that is a multiple of 8 (every supported model's is).
    pub fn upload(ctx: &GpuContext, cache: &PackedCache, layer: usize) -> Result<Self> {
        let shape = cache.shape;
        let d = shape.head_dim;
        check_head_dim(d)?;
        if layer >= shape.layers {
            return Err(VidkvError::InvalidConfig(format!(
                "layer {layer} is beyond the cache's {} layers",
                shape.layers
            )));
        }
        let heads = &cache.heads[layer * shape.kv_heads..(layer + 1) * shape.kv_heads];
        let plan = heads[0].plan;
        let concat = |f: &dyn Fn(&PackedHead) -> Vec<u32>| -> Vec<u32> {
            heads.iter().flat_map(f).collect()
        };
        let exact_keys =
            ctx.create_storage("exact keys", &concat(&|h| h.exact_keys.data.clone()))?;
        let exact_values =
            ctx.create_storage("exact values", &concat(&|h| h.exact_values.data.clone()))?;
        let (layout, planes) =
            upload_planes(ctx, heads, &cache.protected, cache.config.group_size)?;
        Ok(GpuLayer {
            kv_heads: shape.kv_heads,
            head_dim: d,
            group_size: cache.config.group_size,
            plan,
            exact_keys,
            exact_values,
            layout,
            planes,
        })
    }

    /// Tokens in the layer.
    pub fn tokens(&self) -> usize {
        self.plan.tokens
    }

    /// Bytes of cache this layer stores on the GPU (what one full attention pass reads).
    pub fn cache_bytes(&self) -> u64 {
        self.exact_keys.size()
            + self.exact_values.size()
            + self.planes.as_ref().map_or(0, PackedPlanes::bytes)
    }

    pub(crate) fn segments(&self) -> Vec<SegmentRef<'_>> {
        let plan = self.plan;
        let exact = |first_row| SegmentData::Exact {
            keys: &self.exact_keys,
            values: &self.exact_values,
            rows_per_head: plan.exact(),
            first_row,
        };
        let mut segments = vec![SegmentRef {
            start: 0,
            len: plan.sinks,
            data: exact(0),
        }];
        if let Some(planes) = &self.planes {
            segments.push(SegmentRef {
                start: plan.quantized_start(),
                len: plan.quantized,
                data: SegmentData::Packed(planes),
            });
        }
        segments.push(SegmentRef {
            start: plan.quantized_end(),
            len: plan.tail(),
            data: exact(plan.sinks),
        });
        segments.retain(|s| s.len > 0);
        segments
    }

    pub(crate) fn geometry(&self) -> LayerGeometry<'_> {
        LayerGeometry {
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            group_size: self.group_size,
            tokens: self.plan.tokens,
            layout: &self.layout,
        }
    }
}
