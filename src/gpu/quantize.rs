//! GPU quantization: the kernels of `shaders/` driven to write exactly the packed format
//! of [`crate::packed`] (same planes, same words), so [`quantize_cache`] returns a
//! [`PackedCache`] that compares word for word with [`PackedCache::quantize`].
//!
//! Every input matrix is cut into chunks of whole groups that fit the storage-binding
//! limit, and every dispatch grid is split to respect the per-dimension workgroup limit,
//! so arbitrarily long heads quantize without a validation error.

use std::sync::Arc;

use super::batch::Batch;
use super::context::GpuContext;
use super::grouped::{
    GroupWindow, InputRows, NormalChannels, PackExact, PlaneTarget, Signs, Ternary, TwoBitChannels,
    TwoBitTokens,
};
use super::rotated::{self, RotatedShape};
use super::split::{channel_split, GpuSplit};
use crate::config::{
    Grouping, KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme,
};
use crate::error::{Result, VidkvError};
use crate::packed::planes::{ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::{
    exact_source_rows, prepare, split_value_rows, MixedKeys, PackedCache, PackedHead, PackedKeys,
    PackedValues, Prepared,
};
use crate::reference::split::outlier_count;
use crate::tensor::Tensor;

/// Largest head_dim the channel-split kernel handles (one workgroup of 256).
pub const MAX_HEAD_DIM: usize = 256;

/// Quantizes `k` and `v` (`[layers, kv_heads, tokens, head_dim]`) on the GPU. Same
/// arguments, checks and result as [`PackedCache::quantize`].
pub fn quantize_cache(
    ctx: &GpuContext,
    k: &Tensor,
    v: &Tensor,
    config: &QuantConfig,
    protected: &[u32],
) -> Result<PackedCache> {
    let Prepared {
        shape,
        plan,
        protected,
    } = prepare(k, v, config, protected)?;
    let _exclusive = ctx.exclusive();
    let d = shape.head_dim;
    if d > MAX_HEAD_DIM {
        return Err(VidkvError::InvalidConfig(format!(
            "the GPU kernels support head_dim up to {MAX_HEAD_DIM}, got {d}"
        )));
    }
    let head_len = shape.tokens * d;
    let quantized = plan.quantized_start() * d..plan.quantized_end() * d;
    let mut heads = Vec::with_capacity(shape.layers * shape.kv_heads);
    for l in 0..shape.layers {
        let layer = |t, h| head_slice(t, l * shape.kv_heads + h, head_len);
        let layer_split = match config.keys {
            KeyScheme::Mixed {
                outlier_ratio,
                split: SplitGranularity::PerLayer,
                ..
            } => {
                let inputs: Vec<&[f32]> = (0..shape.kv_heads)
                    .map(|h| &layer(k, h)[quantized.clone()])
                    .collect();
                Some(channel_split(
                    ctx,
                    &inputs,
                    d,
                    outlier_count(d, outlier_ratio),
                    config.group_size,
                )?)
            }
            _ => None,
        };
        for h in 0..shape.kv_heads {
            let (k_head, v_head) = (layer(k, h), layer(v, h));
            let keys = quantize_keys(
                ctx,
                &k_head[quantized.clone()],
                d,
                config,
                layer_split.as_ref(),
            )?;
            let v_rows = &v_head[quantized.clone()];
            let values = quantize_values(ctx, v_rows, d, config, plan, &protected)?;
            let value_refinement = super::stp::refine_values(
                ctx,
                &values,
                v_rows,
                plan,
                &protected,
                (d, config.group_size),
            )?;
            heads.push(PackedHead {
                plan,
                head_dim: d,
                exact_keys: exact(ctx, &exact_source_rows(k_head, d, plan), d)?,
                exact_values: exact(ctx, &exact_source_rows(v_head, d, plan), d)?,
                keys,
                values,
                value_refinement,
            });
        }
    }
    Ok(PackedCache {
        shape,
        config: config.clone(),
        protected,
        heads,
    })
}

fn head_slice(t: &Tensor, index: usize, head_len: usize) -> &[f32] {
    &t.data[index * head_len..(index + 1) * head_len]
}

/// Tokens per chunk of a `[tokens, width]` f32 matrix: whole groups within the binding limit.
pub(crate) fn chunk_tokens(ctx: &GpuContext, width: usize, group_size: usize) -> Result<usize> {
    let per_token = (width * 4) as u64;
    let groups = ctx.max_data_bytes() / per_token / group_size as u64;
    if groups == 0 {
        return Err(VidkvError::Gpu(format!(
            "one group of {group_size} tokens × {width} channels exceeds the {} byte binding limit",
            ctx.max_binding_bytes()
        )));
    }
    Ok((groups as usize * group_size).min(u32::MAX as usize / width))
}

fn quantize_keys(
    ctx: &GpuContext,
    x: &[f32],
    d: usize,
    config: &QuantConfig,
    layer_split: Option<&GpuSplit>,
) -> Result<PackedKeys> {
    let g = config.group_size;
    Ok(match config.keys {
        KeyScheme::Fp16 => PackedKeys::Exact,
        KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
            grouping,
            plane: two_bit(ctx, x, d, grouping, g)?,
        },
        KeyScheme::Mixed {
            outlier_ratio, fft, ..
        } => {
            let own_split;
            let split = match layer_split {
                Some(s) => s,
                None => {
                    own_split = channel_split(ctx, &[x], d, outlier_count(d, outlier_ratio), g)?;
                    &own_split
                }
            };
            PackedKeys::Mixed(MixedKeys {
                outlier_mask: split.read_mask(ctx)?,
                outliers: two_bit_channels(ctx, x, d, &split.order, split.outliers, g)?,
                normals: sign_plane(ctx, x, d, split, fft, g)?,
                fft,
            })
        }
        KeyScheme::Rotated { bits } => {
            let shape = RotatedShape {
                head_dim: d,
                group_size: g,
                bits,
            };
            PackedKeys::Rotated(rotated::quantize_head(ctx, x, shape, false)?.0)
        }
        KeyScheme::RotatedGroups { bits } => PackedKeys::RotatedGroups(
            super::rotated_groups::quantize_head(ctx, x, (d, g), bits, &mut None)?,
        ),
    })
}

fn quantize_values(
    ctx: &GpuContext,
    x: &[f32],
    d: usize,
    config: &QuantConfig,
    plan: crate::config::TokenPlan,
    protected: &[u32],
) -> Result<PackedValues> {
    let g = config.group_size;
    Ok(match config.values {
        ValueScheme::Fp16 => PackedValues::Exact,
        ValueScheme::TwoBit { grouping } => PackedValues::TwoBit {
            grouping,
            plane: two_bit(ctx, x, d, grouping, g)?,
        },
        ValueScheme::Ternary { gamma, scale } => {
            let (plain, kept) = split_value_rows(x, d, plan, protected);
            PackedValues::Ternary {
                plane: ternary(ctx, &plain, d, g, gamma, scale)?,
                protected: two_bit(ctx, &kept, d, Grouping::PerChannel, g)?,
            }
        }
        ValueScheme::Rotated { bits, group_means } => {
            let shape = RotatedShape {
                head_dim: d,
                group_size: g,
                bits,
            };
            let (rows, means) = rotated::quantize_head(ctx, x, shape, group_means)?;
            PackedValues::Rotated { rows, means }
        }
        ValueScheme::RotatedGroups { bits } => PackedValues::RotatedGroups(
            super::rotated_groups::quantize_head(ctx, x, (d, g), bits, &mut None)?,
        ),
    })
}

fn identity_channels(ctx: &GpuContext, width: usize) -> Result<Arc<wgpu::Buffer>> {
    let channels: Vec<u32> = (0..width as u32).collect();
    ctx.upload("identity channels", &channels)
}

fn two_bit(
    ctx: &GpuContext,
    x: &[f32],
    d: usize,
    grouping: Grouping,
    g: usize,
) -> Result<TwoBitPlane> {
    match grouping {
        Grouping::PerChannel => {
            let identity = identity_channels(ctx, d)?;
            two_bit_channels(ctx, x, d, &identity, d, g)
        }
        Grouping::PerToken => two_bit_tokens(ctx, x, d, g),
    }
}

/// Runs `record` for each chunk of whole groups of the `[tokens, width]` rows `x` that fits
/// a binding: the chunk is uploaded to the pooled input, `record` gets the batch, the input
/// buffer, the chunk's group window in a plane of `len` elements per row, and its tokens;
/// the batch is submitted.
fn for_each_chunk(
    ctx: &GpuContext,
    x: &[f32],
    width: usize,
    g: usize,
    len: usize,
    mut record: impl FnMut(&mut Batch<'_>, &wgpu::Buffer, GroupWindow, usize) -> Result<()>,
) -> Result<()> {
    let groups = len.div_ceil(g);
    let chunk = chunk_tokens(ctx, width, g)?;
    for (index, input) in x.chunks(chunk * width).enumerate() {
        let tokens = input.len() / width;
        let buffer = ctx.upload("input", input)?;
        let mut batch = ctx.batch();
        let window = GroupWindow {
            len,
            groups,
            group_offset: index * chunk / g,
            group_count: tokens.div_ceil(g),
        };
        record(&mut batch, &buffer, window, tokens)?;
        batch.submit()?;
    }
    Ok(())
}

/// 2-bit plane whose row r is input channel `channels[r]`, r < `rows`, over all tokens of `x`.
fn two_bit_channels(
    ctx: &GpuContext,
    x: &[f32],
    width: usize,
    channels: &wgpu::Buffer,
    rows: usize,
    g: usize,
) -> Result<TwoBitPlane> {
    let shape = GroupedShape {
        rows,
        len: x.len() / width,
        group_size: g,
    };
    let groups = shape.groups();
    let code_words = rows * groups * TwoBitPlane::words_per_group(g);
    let codes = ctx.output("two-bit codes", code_words)?;
    let params = ctx.output("two-bit params", rows * groups)?;
    for_each_chunk(ctx, x, width, g, shape.len, |batch, buffer, window, _| {
        TwoBitChannels {
            input: InputRows { buffer, width },
            channels,
            rows,
            target: PlaneTarget {
                group_size: g,
                window,
                outputs: [(&*codes).into(), (&*params).into()],
            },
        }
        .record(batch);
        Ok(())
    })?;
    Ok(TwoBitPlane {
        shape,
        codes: ctx.read_output(&codes, "two-bit codes", code_words)?,
        params: ctx.read_output(&params, "two-bit params", rows * groups)?,
    })
}

/// 2-bit plane whose rows are the tokens of `x`, grouped along channels.
fn two_bit_tokens(ctx: &GpuContext, x: &[f32], width: usize, g: usize) -> Result<TwoBitPlane> {
    let shape = GroupedShape {
        rows: x.len() / width,
        len: width,
        group_size: g,
    };
    let groups = shape.groups();
    let code_words = shape.rows * groups * TwoBitPlane::words_per_group(g);
    let codes = ctx.output("two-bit codes", code_words)?;
    let params = ctx.output("two-bit params", shape.rows * groups)?;
    let identity = identity_channels(ctx, width)?;
    let chunk = chunk_tokens(ctx, width, 1)?;
    for (index, input) in x.chunks(chunk * width).enumerate() {
        let rows = input.len() / width;
        let buffer = ctx.upload("input", input)?;
        let mut batch = ctx.batch();
        TwoBitTokens {
            input: InputRows {
                buffer: &buffer,
                width,
            },
            channels: &identity,
            rows,
            row_offset: index * chunk,
            group_size: g,
            outputs: [(&*codes).into(), (&*params).into()],
        }
        .record(&mut batch);
        batch.submit()?;
    }
    Ok(TwoBitPlane {
        shape,
        codes: ctx.read_output(&codes, "two-bit codes", code_words)?,
        params: ctx.read_output(&params, "two-bit params", shape.rows * groups)?,
    })
}

/// The real-DFT twiddle table (cos 2πk/n, sin 2πk/n), computed in f64.
pub(crate) fn twiddles(n: usize) -> Vec<[f32; 2]> {
    (0..n)
        .map(|k| {
            let angle = 2.0 * std::f64::consts::PI * k as f64 / n as f64;
            [angle.cos() as f32, angle.sin() as f32]
        })
        .collect()
}

/// Sign plane over the normal channels: of their compact DFT when `fft`, else of themselves.
fn sign_plane(
    ctx: &GpuContext,
    x: &[f32],
    width: usize,
    split: &GpuSplit,
    fft: bool,
    g: usize,
) -> Result<SignPlane> {
    let n = width - split.outliers;
    let shape = GroupedShape {
        rows: n,
        len: x.len() / width,
        group_size: g,
    };
    let groups = shape.groups();
    let code_words = n * groups * SignPlane::words_per_group(g);
    let scale_words = n.div_ceil(2) * groups;
    if n == 0 {
        return Ok(SignPlane {
            shape,
            codes: Vec::new(),
            scales: Vec::new(),
        });
    }
    let codes = ctx.output("sign codes", code_words)?;
    let scales = ctx.output("sign scales", scale_words)?;
    let table = ctx.upload("twiddles", &twiddles(n))?;
    let normals = NormalChannels {
        order: &split.order,
        outliers: split.outliers,
        fft,
        twiddles: &table,
    };
    for_each_chunk(
        ctx,
        x,
        width,
        g,
        shape.len,
        |batch, buffer, window, tokens| {
            Signs {
                input: InputRows { buffer, width },
                normals: &normals,
                tokens,
                target: PlaneTarget {
                    group_size: g,
                    window,
                    outputs: [(&*codes).into(), (&*scales).into()],
                },
            }
            .record(ctx, batch)
        },
    )?;
    Ok(SignPlane {
        shape,
        codes: ctx.read_output(&codes, "sign codes", code_words)?,
        scales: ctx.read_output(&scales, "sign scales", scale_words)?,
    })
}

fn ternary(
    ctx: &GpuContext,
    x: &[f32],
    width: usize,
    g: usize,
    gamma: f32,
    rule: TernaryScale,
) -> Result<TernaryPlane> {
    let shape = GroupedShape {
        rows: width,
        len: x.len() / width,
        group_size: g,
    };
    let groups = shape.groups();
    let code_words = width.div_ceil(5) * groups * TernaryPlane::words_per_record(g);
    let scale_words = width.div_ceil(2) * groups;
    let codes = ctx.output("ternary codes", code_words)?;
    let scales = ctx.output("ternary scales", scale_words)?;
    for_each_chunk(ctx, x, width, g, shape.len, |batch, buffer, window, _| {
        Ternary {
            input: InputRows { buffer, width },
            gamma,
            rule,
            target: PlaneTarget {
                group_size: g,
                window,
                outputs: [(&*codes).into(), (&*scales).into()],
            },
        }
        .record(batch);
        Ok(())
    })?;
    Ok(TernaryPlane {
        shape,
        codes: ctx.read_output(&codes, "ternary codes", code_words)?,
        scales: ctx.read_output(&scales, "ternary scales", scale_words)?,
    })
}

/// Exact rows as f16 pairs, chunked by rows (each chunk is packed and read back alone, so
/// the packed rows never need one binding of their own).
fn exact(ctx: &GpuContext, rows: &[f32], width: usize) -> Result<ExactRows> {
    let count = rows.len() / width;
    let mut data = Vec::with_capacity(ExactRows::words(count, width));
    let chunk = chunk_tokens(ctx, width, 1)?;
    for input in rows.chunks(chunk * width) {
        let chunk_rows = input.len() / width;
        let words = ExactRows::words(chunk_rows, width);
        let output = ctx.output("exact rows", words)?;
        let buffer = ctx.upload("input", input)?;
        let mut batch = ctx.batch();
        PackExact {
            width,
            rows: chunk_rows,
            input: (&*buffer).into(),
            output: (&*output).into(),
        }
        .record(&mut batch);
        batch.submit()?;
        data.extend(ctx.read_output(&output, "exact rows", words)?);
    }
    Ok(ExactRows {
        rows: count,
        width,
        data,
    })
}
