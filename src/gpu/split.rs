//! The key channel split on the GPU: per-channel (min, max) over blocks of tokens
//! (`channel_range.wgsl`), then the ranking by range into outlier and normal channels
//! (`channel_split.wgsl`), for rows uploaded from the host or already on the GPU. The CPU
//! mirror is [`crate::reference::split`].

use std::sync::Arc;

use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::quantize::chunk_tokens;
use super::shaders::{CHANNEL_RANGE, CHANNEL_SPLIT};
use crate::error::Result;

/// Tokens per block of the channel-statistics kernel.
const RANGE_BLOCK_TOKENS: u32 = 256;

/// A channel split living on the GPU: the channel order list and its mask.
pub struct GpuSplit {
    /// u32 channel order: outliers ascending, then normals ascending.
    pub order: Arc<wgpu::Buffer>,
    /// The outlier mask (bit c set for an outlier channel c), on the GPU: read only by
    /// whole-cache quantization ([`GpuSplit::read_mask`]), so a growing cache freezes its
    /// split without a read-back.
    mask: wgpu::Buffer,
    width: usize,
    pub outliers: usize,
}

impl GpuSplit {
    /// The outlier mask, read back (`⌈width / 32⌉` words).
    pub fn read_mask(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        ctx.read_words(&self.mask, self.width.div_ceil(32))
    }
}

/// Ranks channels by range over rows that already live on the GPU: each input is
/// `tokens` rows `[tokens, width]` of f32 at a byte offset of a buffer (aligned to the
/// device's storage offset alignment).
pub fn channel_split_on_gpu(
    ctx: &GpuContext,
    inputs: &[(&wgpu::Buffer, u64, usize)],
    width: usize,
    outliers: usize,
) -> Result<GpuSplit> {
    let total_blocks: usize = inputs
        .iter()
        .map(|&(_, _, tokens)| tokens.div_ceil(RANGE_BLOCK_TOKENS as usize))
        .sum();
    let ranges = ctx.buffer("split ranges", (total_blocks.max(1) * width * 8) as u64)?;
    let mut block_offset = 0usize;
    let mut batch = ctx.batch();
    for &(buffer, offset, tokens) in inputs {
        let input = Bound::range(buffer, offset, (tokens * width * 4) as u64);
        block_offset += record_ranges(&mut batch, input, (tokens, width), block_offset, &ranges);
    }
    batch.submit()?;
    finish_split(ctx, &ranges, block_offset, width, outliers)
}

/// Ranks channels by range over the given heads' rows (`[tokens, width]` each).
pub fn channel_split(
    ctx: &GpuContext,
    inputs: &[&[f32]],
    width: usize,
    outliers: usize,
    group_size: usize,
) -> Result<GpuSplit> {
    let chunk = chunk_tokens(ctx, width, group_size)?;
    let total_blocks: usize = inputs
        .iter()
        .flat_map(|x| x.chunks(chunk * width))
        .map(|c| (c.len() / width).div_ceil(RANGE_BLOCK_TOKENS as usize))
        .sum();
    let ranges = ctx.buffer("split ranges", (total_blocks.max(1) * width * 8) as u64)?;
    let mut block_offset = 0usize;
    for input in inputs {
        for rows in input.chunks(chunk * width) {
            let tokens = rows.len() / width;
            let buffer = ctx.upload("input", rows)?;
            let mut batch = ctx.batch();
            let input = (&*buffer).into();
            block_offset +=
                record_ranges(&mut batch, input, (tokens, width), block_offset, &ranges);
            batch.submit()?;
        }
    }
    finish_split(ctx, &ranges, block_offset, width, outliers)
}

/// Records the per-channel (min, max) of `tokens` rows `[tokens, width]` of `input` into
/// `ranges` from block `block_offset` on; returns the blocks written.
fn record_ranges(
    batch: &mut Batch<'_>,
    input: Bound<'_>,
    (tokens, width): (usize, usize),
    block_offset: usize,
    ranges: &wgpu::Buffer,
) -> usize {
    let blocks = tokens.div_ceil(RANGE_BLOCK_TOKENS as usize);
    batch.dispatch_bound(
        &CHANNEL_RANGE,
        "main",
        Params {
            width: width as u32,
            len: tokens as u32,
            block_tokens: RANGE_BLOCK_TOKENS,
            block_offset: block_offset as u32,
            invocations: (blocks * width) as u32,
            ..Default::default()
        },
        &[input, ranges.into()],
    );
    blocks
}

/// The split from `blocks` partial (min, max) blocks.
fn finish_split(
    ctx: &GpuContext,
    ranges: &wgpu::Buffer,
    blocks: usize,
    width: usize,
    outliers: usize,
) -> Result<GpuSplit> {
    let block_offset = blocks;
    let order = ctx.buffer("split order", (width * 4) as u64)?;
    let mask_words = width.div_ceil(32);
    let mask = ctx.create_zeroed("split mask", mask_words)?;
    let mut batch = ctx.batch();
    batch.dispatch_grid(
        &CHANNEL_SPLIT,
        "main",
        Params {
            width: width as u32,
            blocks: block_offset as u32,
            outliers: outliers as u32,
            invocations: width as u32,
            ..Default::default()
        },
        &[ranges, &order, &mask],
        (1, 1),
    );
    batch.submit()?;
    Ok(GpuSplit {
        order,
        mask,
        width,
        outliers,
    })
}
