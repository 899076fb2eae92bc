//! Whole window groups quantized into a chunk's planes, every scheme's kernels recorded
//! per head.

use super::{ChunkWords, F32Rows, Heads};
use crate::config::{Grouping, QuantConfig, ValueScheme};
use crate::error::Result;
use crate::gpu::attention::{
    GroupPlanes, KeyLayout, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, RotatedPlanes,
};
use crate::gpu::batch::Batch;
use crate::gpu::binding::Bound;
use crate::gpu::context::GpuContext;
use crate::gpu::grouped::{
    GroupWindow, InputRows, NormalChannels, PlaneTarget, Signs, Ternary, TwoBitChannels,
    TwoBitTokens,
};
use crate::gpu::rotated::{ResidentGroups, RotatedShape};
use crate::gpu::rotated_groups::{GroupShape, ResidentGroupRecords};
use crate::packed::rotated::RotatedState;

/// Whole window groups to quantize into a chunk: `take` groups starting at window row
/// `first_row`, written after the chunk's `filled` groups.
pub(crate) struct GroupFlush<'a> {
    pub config: &'a QuantConfig,
    pub heads: Heads,
    pub window: &'a F32Rows,
    pub first_row: usize,
    pub planes: &'a PackedPlanes,
    pub words: &'a ChunkWords,
    pub filled: usize,
    pub take: usize,
    pub layout: &'a KeyLayout,
    /// `[0, 1, …, head_dim)`: the channel order of value planes.
    pub identity: &'a wgpu::Buffer,
}

impl GroupFlush<'_> {
    /// Quantizes the groups of every head into the chunk planes (one submission per head).
    pub fn run(&self, ctx: &GpuContext) -> Result<()> {
        let (d, g) = (self.heads.dim, self.config.group_size);
        let bytes = (self.take * g * d * 4) as u64;
        for head in 0..self.heads.count {
            let keys = ctx.buffer("input", bytes)?;
            let values = ctx.buffer("cache value input", bytes)?;
            let at = ((head * self.window.capacity + self.first_row) * d * 4) as u64;
            let mut batch = ctx.batch();
            batch.copy(&self.window.keys, at, &keys, 0, bytes);
            batch.copy(&self.window.values, at, &values, 0, bytes);
            self.record_head(ctx, &mut batch, head, &keys, &values)?;
            batch.submit()?;
        }
        Ok(())
    }

    fn record_head(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        head: usize,
        keys_input: &wgpu::Buffer,
        values_input: &wgpu::Buffer,
    ) -> Result<()> {
        let (d, g) = (self.heads.dim, self.config.group_size);
        let (layout, words, take) = (self.layout, self.words, self.take);
        let window = GroupWindow {
            len: words.capacity * g,
            groups: words.capacity,
            group_offset: self.filled,
            group_count: take,
        };
        let range = |buffer, per_head| head_range(buffer, head, per_head);
        let target = |outputs| PlaneTarget {
            group_size: g,
            window,
            outputs,
        };
        let keys = InputRows {
            buffer: keys_input,
            width: d,
        };
        let values = InputRows {
            buffer: values_input,
            width: d,
        };
        match &self.planes.keys {
            PackedKeyPlanes::RotatedGroups(planes) => self.record_across(
                ctx,
                batch,
                (head, keys_input),
                planes,
                [
                    range(&planes.codes, words.key_codes),
                    range(&planes.scales, words.key_params),
                    range(&planes.widths, words.key_widths),
                ],
            )?,
            PackedKeyPlanes::Rotated(planes) => self.record_rotated(
                ctx,
                batch,
                (head, keys_input),
                planes,
                [
                    range(&planes.codes, words.key_codes),
                    range(&planes.scales, words.key_params),
                ],
            )?,
            PackedKeyPlanes::Packed {
                codes,
                scale_min,
                sign_codes,
                sign_scales,
            } => {
                let channels = ctx.buffer("cache head channels", (d * 4) as u64)?;
                batch.copy(
                    &layout.order,
                    (head * d * 4) as u64,
                    &channels,
                    0,
                    (d * 4) as u64,
                );
                TwoBitChannels {
                    input: keys,
                    channels: &channels,
                    rows: layout.outliers,
                    target: target([
                        range(codes, words.key_codes),
                        range(scale_min, words.key_params),
                    ]),
                }
                .record(batch);
                if layout.normals > 0 {
                    let normals = NormalChannels {
                        order: &channels,
                        outliers: layout.outliers,
                        fft: layout.fft,
                        twiddles: &layout.twiddles,
                    };
                    Signs {
                        input: keys,
                        normals: &normals,
                        tokens: take * g,
                        target: target([
                            range(sign_codes, words.sign_codes),
                            range(sign_scales, words.sign_scales),
                        ]),
                    }
                    .record(ctx, batch)?;
                }
            }
        }
        match (&self.planes.values, self.config.values) {
            (PackedValuePlanes::RotatedGroups(planes), ValueScheme::RotatedGroups { .. }) => self
                .record_across(
                ctx,
                batch,
                (head, values_input),
                planes,
                [
                    range(&planes.codes, words.value_codes),
                    range(&planes.scales, words.value_params),
                    range(&planes.widths, words.value_widths),
                ],
            )?,
            (PackedValuePlanes::Rotated(planes), ValueScheme::Rotated { .. }) => self
                .record_rotated(
                    ctx,
                    batch,
                    (head, values_input),
                    planes,
                    [
                        range(&planes.codes, words.value_codes),
                        range(&planes.scales, words.value_params),
                    ],
                )?,
            (
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                },
                ValueScheme::TwoBit {
                    grouping: Grouping::PerChannel,
                },
            ) => TwoBitChannels {
                input: values,
                channels: self.identity,
                rows: d,
                target: target([
                    range(codes, words.value_codes),
                    range(scale_min, words.value_params),
                ]),
            }
            .record(batch),
            (
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                },
                ValueScheme::TwoBit {
                    grouping: Grouping::PerToken,
                },
            ) => TwoBitTokens {
                input: values,
                channels: self.identity,
                rows: take * g,
                row_offset: self.filled * g,
                group_size: g,
                outputs: [
                    range(codes, words.value_codes),
                    range(scale_min, words.value_params),
                ],
            }
            .record(batch),
            (
                PackedValuePlanes::Ternary { codes, scales, .. },
                ValueScheme::Ternary { gamma, scale },
            ) => Ternary {
                input: values,
                gamma,
                rule: scale,
                target: target([
                    range(codes, words.value_codes),
                    range(scales, words.value_params),
                ]),
            }
            .record(batch),
            _ => unreachable!("chunk planes follow the configuration"),
        }
        Ok(())
    }

    /// Records the rotated codes of `take` groups of one head (`input` holds their rows)
    /// into `planes`' ranges `[codes, scales]` of that head, with the head's fixed state.
    fn record_rotated(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        (head, input): (usize, &wgpu::Buffer),
        planes: &RotatedPlanes,
        [codes, scales]: [Bound<'_>; 2],
    ) -> Result<()> {
        let d = self.heads.dim;
        let state = head_state(ctx, batch, &planes.states.states, (head, d))?;
        let means = planes.means.as_ref().map(|(mean_codes, steps)| {
            [
                head_range(mean_codes, head, self.words.mean_codes),
                head_range(steps, head, self.words.mean_steps),
            ]
        });
        ResidentGroups {
            shape: RotatedShape {
                head_dim: d,
                group_size: self.config.group_size,
                bits: planes.states.bits,
            },
            table: &planes.states.table,
            state: &state,
            rows: input,
            tokens: self.take * self.config.group_size,
            first_group: self.filled,
            plane_groups: self.words.capacity,
            codes,
            scales,
            means,
        }
        .record(ctx, batch)
    }

    /// Records the group records of `take` groups of one head (`input` holds their rows) into
    /// `planes`' ranges `[codes, scales, widths]` of that head, with the head's fixed state.
    fn record_across(
        &self,
        ctx: &GpuContext,
        batch: &mut Batch<'_>,
        (head, input): (usize, &wgpu::Buffer),
        planes: &GroupPlanes,
        records: [Bound<'_>; 3],
    ) -> Result<()> {
        let d = self.heads.dim;
        let state = head_state(ctx, batch, &planes.states.states, (head, d))?;
        ResidentGroupRecords {
            shape: GroupShape {
                head_dim: d,
                group_size: self.config.group_size,
                budget: planes.budget,
            },
            table: &planes.states.table,
            state: &state,
            rows: input,
            tokens: self.take * self.config.group_size,
            first_group: self.filled,
            records,
        }
        .record(ctx, batch)
    }
}

/// The head's state, copied out of the layer's states (`[kv_heads][words]`) for a kernel
/// that binds one head's.
fn head_state(
    ctx: &GpuContext,
    batch: &mut Batch<'_>,
    states: &wgpu::Buffer,
    (head, d): (usize, usize),
) -> Result<std::sync::Arc<wgpu::Buffer>> {
    let bytes = (RotatedState::words(d) * 4) as u64;
    let state = ctx.buffer("rotated head state", bytes)?;
    batch.copy(states, head as u64 * bytes, &state, 0, bytes);
    Ok(state)
}

/// Head `head`'s range of a plane array that holds `per_head` words per KV head.
fn head_range(buffer: &wgpu::Buffer, head: usize, per_head: usize) -> Bound<'_> {
    let bytes = (per_head * 4) as u64;
    Bound::range(buffer, head as u64 * bytes, bytes.max(4))
}
