//! GPU dequantization: packed planes back to dense f32 K̂ and V̂, for tests and for users
//! who want dense tensors. Mirrors [`PackedCache::dequantize`].

use super::batch::Batch;
use super::context::GpuContext;
use super::params::Params;
use super::quantize::{chunk_tokens, twiddles};
use super::shaders::{
    DEQUANTIZE_SIGN, DEQUANTIZE_TERNARY, DEQUANTIZE_TWO_BIT, INVERSE_DFT, UNPACK_EXACT,
};
use crate::config::Grouping;
use crate::error::Result;
use crate::packed::planes::{ExactRows, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::{MixedKeys, PackedCache, PackedHead, PackedKeys, PackedValues, ValueSlot};
use crate::tensor::Tensor;

/// Dense K̂ and V̂ (`[layers, kv_heads, tokens, head_dim]`) computed on the GPU.
pub fn dequantize_cache(ctx: &GpuContext, cache: &PackedCache) -> Result<(Tensor, Tensor)> {
    let _exclusive = ctx.exclusive();
    cache.dense_from_heads(|head| {
        Ok((
            dequantize_keys(ctx, head, cache.config.group_size)?,
            dequantize_values(ctx, head, &cache.protected, cache.config.group_size)?,
        ))
    })
}

/// Places exact rows (sinks, then tail) and quantized rows into a dense `[tokens, d]` head.
fn assemble(head: &PackedHead, exact: Vec<f32>, quantized: Vec<f32>) -> Vec<f32> {
    let d = head.head_dim;
    let mut out = vec![0.0; head.plan.tokens * d];
    for (row, t) in head.exact_positions().enumerate() {
        out[t * d..(t + 1) * d].copy_from_slice(&exact[row * d..(row + 1) * d]);
    }
    let start = head.plan.quantized_start() * d;
    out[start..start + quantized.len()].copy_from_slice(&quantized);
    out
}

fn dequantize_keys(ctx: &GpuContext, head: &PackedHead, group_size: usize) -> Result<Vec<f32>> {
    let d = head.head_dim;
    let tokens = head.plan.quantized;
    let quantized = match &head.keys {
        PackedKeys::Exact => Vec::new(),
        PackedKeys::TwoBit { grouping, plane } => two_bit(ctx, plane, *grouping, d)?,
        PackedKeys::Mixed(mixed) => mixed_keys(ctx, mixed, d, tokens)?,
        PackedKeys::Rotated(rows) => super::rotated::dequantize_rows(ctx, rows, None, group_size)?,
        PackedKeys::RotatedGroups(codes) => super::rotated_groups::dequantize_groups(ctx, codes)?,
    };
    Ok(assemble(head, exact(ctx, &head.exact_keys)?, quantized))
}

fn dequantize_values(
    ctx: &GpuContext,
    head: &PackedHead,
    protected: &[u32],
    group_size: usize,
) -> Result<Vec<f32>> {
    let d = head.head_dim;
    let quantized = match &head.values {
        PackedValues::Exact => Vec::new(),
        PackedValues::TwoBit { grouping, plane } => two_bit(ctx, plane, *grouping, d)?,
        PackedValues::Rotated { rows, means } => {
            super::rotated::dequantize_rows(ctx, rows, means.as_ref(), group_size)?
        }
        PackedValues::RotatedGroups(codes) => super::rotated_groups::dequantize_groups(ctx, codes)?,
        PackedValues::Ternary {
            plane,
            protected: kept,
        } => {
            let plain = ternary(ctx, plane, d)?;
            let kept = two_bit(ctx, kept, Grouping::PerChannel, d)?;
            let mut rows = Vec::with_capacity(head.plan.quantized * d);
            for slot in head.value_slots(protected) {
                let (source, i) = match slot {
                    ValueSlot::Plain(i) => (&plain, i),
                    ValueSlot::Protected(i) => (&kept, i),
                };
                rows.extend_from_slice(&source[i * d..(i + 1) * d]);
            }
            rows
        }
    };
    let mut out = assemble(head, exact(ctx, &head.exact_values)?, quantized);
    if let Some(rows) = &head.value_refinement {
        let refined = super::rotated::dequantize_rows(ctx, rows, None, group_size)?;
        for (&p, r) in protected.iter().zip(refined.chunks_exact(d)) {
            let row = &mut out[p as usize * d..(p as usize + 1) * d];
            for (x, &r) in row.iter_mut().zip(r) {
                *x += r;
            }
        }
    }
    Ok(out)
}

/// Runs `record` over chunks of whole groups of a plane with `len` elements per row (it
/// gets a batch, the chunk's dense `[tokens, width]` output, its first group and its
/// tokens), submits each chunk's batch and reads the outputs back in order.
fn by_chunks(
    ctx: &GpuContext,
    len: usize,
    width: usize,
    group_size: usize,
    mut record: impl FnMut(&mut Batch<'_>, &wgpu::Buffer, usize, usize) -> Result<()>,
) -> Result<Vec<f32>> {
    let chunk = chunk_tokens(ctx, width, group_size)?;
    let mut out = Vec::with_capacity(len * width);
    let mut start = 0;
    while start < len {
        let tokens = chunk.min(len - start);
        let output = ctx.output("dense output", tokens * width)?;
        let mut batch = ctx.batch();
        record(&mut batch, &output, start / group_size, tokens)?;
        batch.submit()?;
        let words = ctx.read_output(&output, "dense output", tokens * width)?;
        out.extend(words.into_iter().map(f32::from_bits));
        start += tokens;
    }
    Ok(out)
}

fn plane_params(rows: usize, len: usize, group_size: usize, groups: usize, width: usize) -> Params {
    Params {
        width: width as u32,
        rows: rows as u32,
        len: len as u32,
        group_size: group_size as u32,
        groups: groups as u32,
        ..Default::default()
    }
}

fn two_bit(
    ctx: &GpuContext,
    plane: &TwoBitPlane,
    grouping: Grouping,
    d: usize,
) -> Result<Vec<f32>> {
    let s = plane.shape;
    let codes = ctx.upload("plane codes", &plane.codes)?;
    let params_buffer = ctx.upload("plane params", &plane.params)?;
    let channels: Vec<u32> = (0..d as u32).collect();
    let channels = ctx.upload("plane channels", &channels)?;
    let base = plane_params(s.rows, s.len, s.group_size, s.groups(), d);
    match grouping {
        Grouping::PerChannel => by_chunks(
            ctx,
            s.len,
            d,
            s.group_size,
            |batch, output, group_offset, tokens| {
                batch.dispatch(
                    &DEQUANTIZE_TWO_BIT,
                    "per_channel",
                    Params {
                        group_offset: group_offset as u32,
                        invocations: (s.rows * tokens) as u32,
                        ..base
                    },
                    &[&codes, &params_buffer, &channels, output],
                );
                Ok(())
            },
        ),
        Grouping::PerToken => by_chunks(ctx, s.rows, d, 1, |batch, output, row_offset, rows| {
            batch.dispatch(
                &DEQUANTIZE_TWO_BIT,
                "per_token",
                Params {
                    row_offset: row_offset as u32,
                    invocations: (rows * d) as u32,
                    ..base
                },
                &[&codes, &params_buffer, &channels, output],
            );
            Ok(())
        }),
    }
}

fn mixed_keys(ctx: &GpuContext, mixed: &MixedKeys, d: usize, tokens: usize) -> Result<Vec<f32>> {
    let split = mixed.split(d);
    let order: Vec<u32> = split
        .outliers
        .iter()
        .chain(&split.normals)
        .map(|&c| c as u32)
        .collect();
    let order = ctx.upload("plane channels", &order)?;
    let outliers = split.outliers.len();
    let n = split.normals.len();
    let g = mixed.outliers.shape.group_size;
    let o = mixed.outliers.shape;
    let codes = ctx.upload("plane codes", &mixed.outliers.codes)?;
    let params_buffer = ctx.upload("plane params", &mixed.outliers.params)?;
    let sign_codes = ctx.upload("sign plane codes", &mixed.normals.codes)?;
    let sign_scales = ctx.upload("sign plane scales", &mixed.normals.scales)?;
    let table = ctx.upload("twiddles", &twiddles(n.max(1)))?;
    let normals: &SignPlane = &mixed.normals;
    by_chunks(ctx, tokens, d, g, |batch, output, group_offset, chunk| {
        batch.dispatch(
            &DEQUANTIZE_TWO_BIT,
            "per_channel",
            Params {
                group_offset: group_offset as u32,
                invocations: (outliers * chunk) as u32,
                ..plane_params(outliers, o.len, g, o.groups(), d)
            },
            &[&codes, &params_buffer, &order, output],
        );
        let sign = Params {
            group_offset: group_offset as u32,
            outliers: outliers as u32,
            dft_len: n as u32,
            invocations: (n * chunk) as u32,
            ..plane_params(n, normals.shape.len, g, normals.shape.groups(), d)
        };
        if n > 0 && mixed.fft {
            let coefficients = ctx.buffer("dft coefficients", (n * chunk * 4) as u64)?;
            batch.dispatch(
                &DEQUANTIZE_SIGN,
                "to_coefficients",
                sign,
                &[&sign_codes, &sign_scales, &order, &coefficients],
            );
            batch.dispatch(
                &INVERSE_DFT,
                "main",
                Params {
                    invocations: chunk as u32,
                    ..sign
                },
                &[&coefficients, &order, &table, output],
            );
        } else if n > 0 {
            batch.dispatch(
                &DEQUANTIZE_SIGN,
                "to_channels",
                sign,
                &[&sign_codes, &sign_scales, &order, output],
            );
        }
        Ok(())
    })
}

fn ternary(ctx: &GpuContext, plane: &TernaryPlane, d: usize) -> Result<Vec<f32>> {
    let s = plane.shape;
    let codes = ctx.upload("plane codes", &plane.codes)?;
    let scales = ctx.upload("plane params", &plane.scales)?;
    by_chunks(
        ctx,
        s.len,
        d,
        s.group_size,
        |batch, output, group_offset, tokens| {
            batch.dispatch(
                &DEQUANTIZE_TERNARY,
                "main",
                Params {
                    group_offset: group_offset as u32,
                    invocations: (tokens * d) as u32,
                    ..plane_params(d, s.len, s.group_size, s.groups(), d)
                },
                &[&codes, &scales, output],
            );
            Ok(())
        },
    )
}

/// Exact rows back to f32, chunked by rows (each chunk uploaded and read back alone).
fn exact(ctx: &GpuContext, rows: &ExactRows) -> Result<Vec<f32>> {
    let words_per_row = rows.width.div_ceil(2);
    let chunk = chunk_tokens(ctx, rows.width, 1)?;
    let mut out = Vec::with_capacity(rows.rows * rows.width);
    for packed in rows.data.chunks(chunk * words_per_row) {
        let count = packed.len() / words_per_row;
        let input = ctx.upload("plane codes", packed)?;
        let output = ctx.output("dense output", count * rows.width)?;
        let mut batch = ctx.batch();
        batch.dispatch(
            &UNPACK_EXACT,
            "main",
            Params {
                width: rows.width as u32,
                invocations: (count * rows.width) as u32,
                ..Default::default()
            },
            &[&input, &output],
        );
        batch.submit()?;
        let words = ctx.read_output(&output, "dense output", count * rows.width)?;
        out.extend(words.into_iter().map(f32::from_bits));
    }
    Ok(out)
}
