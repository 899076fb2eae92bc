//! Typed dispatch wrappers of the grouped quantization kernels (`quantize_two_bit.wgsl`,
//! `real_dft.wgsl` + `quantize_sign.wgsl`, `quantize_ternary.wgsl`, `pack_exact.wgsl`): one
//! parameter struct per kernel, whose `record` fills the shader's `Params` and bindings.
//! Whole-cache quantization (`quantize`) and the cache's incremental flush (`incremental`)
//! both record through these, so each kernel's parameter rules live here only.

use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::shaders::{PACK_EXACT, QUANTIZE_SIGN, QUANTIZE_TERNARY, QUANTIZE_TWO_BIT, REAL_DFT};
use crate::config::TernaryScale;
use crate::error::Result;
use crate::packed::planes::ExactRows;

/// Where a dispatch writes in a plane: rows of `len` elements in `groups` groups (the plane's
/// row stride), groups `group_offset..group_offset + group_count` coming from an input
/// buffer whose first token is element `group_offset · group_size`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupWindow {
    pub len: usize,
    pub groups: usize,
    pub group_offset: usize,
    pub group_count: usize,
}

impl GroupWindow {
    /// The kernel parameters that place this window, for groups of `g` elements.
    fn params(&self, g: usize) -> Params {
        Params {
            len: self.len as u32,
            group_size: g as u32,
            groups: self.groups as u32,
            group_offset: self.group_offset as u32,
            group_count: self.group_count as u32,
            ..Default::default()
        }
    }
}

/// The `[tokens, width]` f32 rows a quantization kernel reads.
#[derive(Clone, Copy)]
pub(crate) struct InputRows<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub width: usize,
}

/// The plane a grouped kernel writes: its groups of `group_size` elements, the window of
/// them this dispatch covers, and its (codes, parameters) arrays.
#[derive(Clone, Copy)]
pub(crate) struct PlaneTarget<'a> {
    pub group_size: usize,
    pub window: GroupWindow,
    pub outputs: [Bound<'a>; 2],
}

/// `quantize_two_bit::per_channel`: 2-bit codes of plane rows r < `rows`, each the input
/// channel `channels[r]`, grouped along tokens.
pub(crate) struct TwoBitChannels<'a> {
    pub input: InputRows<'a>,
    pub channels: &'a wgpu::Buffer,
    pub rows: usize,
    pub target: PlaneTarget<'a>,
}

impl TwoBitChannels<'_> {
    pub fn record(&self, batch: &mut Batch<'_>) {
        let (window, width) = (self.target.window, self.input.width);
        batch.dispatch_bound(
            &QUANTIZE_TWO_BIT,
            "per_channel",
            Params {
                width: width as u32,
                rows: self.rows as u32,
                invocations: (self.rows * window.group_count) as u32,
                ..window.params(self.target.group_size)
            },
            &[
                self.input.buffer.into(),
                self.channels.into(),
                self.target.outputs[0],
                self.target.outputs[1],
            ],
        );
    }
}

/// `quantize_two_bit::per_token`: 2-bit codes of `rows` input tokens grouped along channels,
/// written as plane rows `row_offset…`.
pub(crate) struct TwoBitTokens<'a> {
    pub input: InputRows<'a>,
    pub channels: &'a wgpu::Buffer,
    pub rows: usize,
    pub row_offset: usize,
    pub group_size: usize,
    pub outputs: [Bound<'a>; 2],
}

impl TwoBitTokens<'_> {
    pub fn record(&self, batch: &mut Batch<'_>) {
        let width = self.input.width;
        let groups = width.div_ceil(self.group_size);
        batch.dispatch_bound(
            &QUANTIZE_TWO_BIT,
            "per_token",
            Params {
                width: width as u32,
                rows: self.rows as u32,
                len: width as u32,
                group_size: self.group_size as u32,
                groups: groups as u32,
                row_offset: self.row_offset as u32,
                invocations: (self.rows * groups) as u32,
                ..Default::default()
            },
            &[
                self.input.buffer.into(),
                self.channels.into(),
                self.outputs[0],
                self.outputs[1],
            ],
        );
    }
}

/// The normal channels of a key split: `outliers` first entries of `order` are skipped.
pub(crate) struct NormalChannels<'a> {
    pub order: &'a wgpu::Buffer,
    pub outliers: usize,
    pub fft: bool,
    pub twiddles: &'a wgpu::Buffer,
}

/// `real_dft::main` (when the split uses the DFT) then `quantize_sign`: 1-bit signs of the
/// normal channels of `tokens` input tokens, or of their compact DFT.
pub(crate) struct Signs<'a> {
    pub input: InputRows<'a>,
    pub normals: &'a NormalChannels<'a>,
    pub tokens: usize,
    pub target: PlaneTarget<'a>,
}

impl Signs<'_> {
    /// Records the passes; the DFT's coefficient buffer comes from `ctx`'s pool.
    pub fn record(&self, ctx: &GpuContext, batch: &mut Batch<'_>) -> Result<()> {
        let (width, normals) = (self.input.width, self.normals);
        let n = width - normals.outliers;
        if n == 0 {
            return Ok(());
        }
        let window = self.target.window;
        let params = Params {
            width: width as u32,
            rows: n as u32,
            outliers: normals.outliers as u32,
            dft_len: n as u32,
            invocations: (n.div_ceil(2) * window.group_count) as u32,
            ..window.params(self.target.group_size)
        };
        let [codes, scales] = self.target.outputs;
        if normals.fft {
            let coefficients = ctx.buffer("dft coefficients", (n * self.tokens * 4) as u64)?;
            batch.dispatch(
                &REAL_DFT,
                "main",
                Params {
                    len: self.tokens as u32,
                    invocations: self.tokens as u32,
                    ..params
                },
                &[
                    self.input.buffer,
                    normals.order,
                    normals.twiddles,
                    &coefficients,
                ],
            );
            batch.dispatch_bound(
                &QUANTIZE_SIGN,
                "from_coefficients",
                params,
                &[(&*coefficients).into(), normals.order.into(), codes, scales],
            );
        } else {
            batch.dispatch_bound(
                &QUANTIZE_SIGN,
                "from_channels",
                params,
                &[
                    self.input.buffer.into(),
                    normals.order.into(),
                    codes,
                    scales,
                ],
            );
        }
        Ok(())
    }
}

/// `quantize_ternary::main`: ternary codes of every channel of the input tokens, with the
/// threshold `gamma` and the scale `rule`.
pub(crate) struct Ternary<'a> {
    pub input: InputRows<'a>,
    pub gamma: f32,
    pub rule: TernaryScale,
    pub target: PlaneTarget<'a>,
}

impl Ternary<'_> {
    pub fn record(&self, batch: &mut Batch<'_>) {
        let (window, width) = (self.target.window, self.input.width);
        batch.dispatch_bound(
            &QUANTIZE_TERNARY,
            "main",
            Params {
                width: width as u32,
                rows: width as u32,
                gamma: self.gamma,
                scale_rule: u32::from(self.rule == TernaryScale::LeastSquares),
                invocations: (width.div_ceil(10) * window.group_count) as u32,
                ..window.params(self.target.group_size)
            },
            &[
                self.input.buffer.into(),
                self.target.outputs[0],
                self.target.outputs[1],
            ],
        );
    }
}

/// `pack_exact::heads`: rows `first..first + rows` of every one of `kv_heads` heads, from
/// f32 rows with `input_rows` rows per head into f16 pairs with `output_rows` rows per head
/// (`output` bound from an aligned row offset where the rows go further down each head).
pub(crate) struct PackHeads<'a> {
    pub width: usize,
    pub kv_heads: usize,
    pub first: usize,
    pub rows: usize,
    pub input_rows: usize,
    pub output_rows: usize,
    pub input: &'a wgpu::Buffer,
    pub output: Bound<'a>,
}

impl PackHeads<'_> {
    pub fn record(&self, batch: &mut Batch<'_>) {
        batch.dispatch_bound(
            &PACK_EXACT,
            "heads",
            Params {
                width: self.width as u32,
                rows: self.rows as u32,
                kv_heads: self.kv_heads as u32,
                len: self.input_rows as u32,
                rows_per_head: self.output_rows as u32,
                row_offset: self.first as u32,
                invocations: (self.kv_heads * ExactRows::words(self.rows, self.width)) as u32,
                ..Default::default()
            },
            &[self.input.into(), self.output],
        );
    }
}

/// `pack_exact::main`: `rows` f32 rows of `width` channels packed as f16 pairs.
pub(crate) struct PackExact<'a> {
    pub width: usize,
    pub rows: usize,
    pub input: Bound<'a>,
    pub output: Bound<'a>,
}

impl PackExact<'_> {
    pub fn record(&self, batch: &mut Batch<'_>) {
        batch.dispatch_bound(
            &PACK_EXACT,
            "main",
            Params {
                width: self.width as u32,
                rows: self.rows as u32,
                invocations: ExactRows::words(self.rows, self.width) as u32,
                ..Default::default()
            },
            &[self.input, self.output],
        );
    }
}
