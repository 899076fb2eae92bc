//! The across-token ("T2") kernels (`shaders/rotated.wgsl` with its `groups` variant): each
//! whole group coded across its tokens or per token, whichever is better, writing the words
//! of [`crate::packed::rotated_groups`]; and their decoding.
//!
//! A run is cut into chunks of whole groups under the binding limit; every chunk is one
//! submission of six passes (see the shader header). The per-head state is the per-token
//! scheme's ([`super::rotated::fit_state`]); the constant table is
//! [`super::rotated::group_kernel_table`], the CPU reference's own f32 values.

use std::sync::Arc;

use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::quantize::chunk_tokens;
use super::rotated::{fit_state, group_kernel_table, RotatedShape};
use super::shaders::ROTATED_GROUPS;
use crate::error::Result;
use crate::packed::rotated::RotatedState;
use crate::packed::rotated_groups::{group_budget, GroupCodes};

/// u32 words of the kernel's per-token scratch (`token_info`).
const INFO_WORDS: usize = 6;

/// Bit placements per invocation of `group_widths` for a group of `g` rows (each scans the
/// rows once): a pass stays well under lavapipe's 65,535 loop iterations per invocation.
fn widths_per_pass(g: usize) -> usize {
    (32_768 / g).max(1)
}

/// Shape of one across-token quantization: head_dim, group size and code bits per group.
#[derive(Clone, Copy, Debug)]
pub struct GroupShape {
    pub head_dim: usize,
    pub group_size: usize,
    pub budget: usize,
}

impl GroupShape {
    fn params(&self) -> Params {
        Params {
            width: self.head_dim as u32,
            group_size: self.group_size as u32,
            code_bits: self.budget as u32,
            ..Default::default()
        }
    }

    /// Words per group of the codes, scale bytes and width tables.
    fn record_words(&self) -> [usize; 3] {
        [
            self.budget * self.head_dim / 32,
            self.group_size / 4,
            (3 * self.group_size).div_ceil(32),
        ]
    }

    /// Tokens per chunk: whole groups whose per-element codes (two per element) fit one
    /// binding.
    fn chunk(&self, ctx: &GpuContext) -> Result<usize> {
        chunk_tokens(ctx, 2 * self.head_dim, self.group_size)
    }
}

/// The buffers of the kernel's bindings 1…11.
struct Bindings {
    table: Arc<wgpu::Buffer>,
    state: Arc<wgpu::Buffer>,
    unused: Arc<wgpu::Buffer>,
    codes: Arc<wgpu::Buffer>,
    scales: Arc<wgpu::Buffer>,
    widths: Arc<wgpu::Buffer>,
    rows: Arc<wgpu::Buffer>,
    element_codes: Arc<wgpu::Buffer>,
    token_info: Arc<wgpu::Buffer>,
    row_widths: Arc<wgpu::Buffer>,
}

impl Bindings {
    /// The bindings of a run with `state`, around the record arrays `[codes, scales,
    /// widths]`.
    fn new(
        ctx: &GpuContext,
        shape: GroupShape,
        state: &RotatedState,
        [codes, scales, widths]: [Arc<wgpu::Buffer>; 3],
    ) -> Result<Self> {
        let (chunk, d) = (shape.chunk(ctx)?, shape.head_dim);
        Ok(Bindings {
            table: ctx.upload("rotated group table", &group_kernel_table())?,
            state: ctx.upload("rotated state", &state.to_words())?,
            unused: ctx.buffer("unused binding", 16)?,
            codes,
            scales,
            widths,
            rows: ctx.buffer("group rows", (chunk * d * 4) as u64)?,
            element_codes: ctx.buffer("group element codes", (2 * chunk * d * 4) as u64)?,
            token_info: ctx.buffer("group token info", (chunk * INFO_WORDS * 4) as u64)?,
            row_widths: ctx.buffer("group row widths", (chunk * 4) as u64)?,
        })
    }

    fn list<'a>(&'a self, input: &'a wgpu::Buffer) -> [&'a wgpu::Buffer; 11] {
        [
            input,
            &self.table,
            &self.state,
            &self.unused,
            &self.codes,
            &self.scales,
            &self.widths,
            &self.rows,
            &self.element_codes,
            &self.token_info,
            &self.row_widths,
        ]
    }
}

/// Quantizes one head's whole groups `x` (`[groups · G, d]`) with `bits` average bits per
/// code on the GPU: the state fitted to its first groups unless `state` already holds the
/// head's, then [`quantize_groups`].
pub fn quantize_head(
    ctx: &GpuContext,
    x: &[f32],
    (head_dim, group_size): (usize, usize),
    bits: f32,
    state: &mut Option<RotatedState>,
) -> Result<GroupCodes> {
    let fitted = match state {
        Some(state) => state.clone(),
        None => fit_state(
            ctx,
            x,
            RotatedShape {
                head_dim,
                group_size,
                bits: 2,
            },
        )?,
    };
    *state = Some(fitted.clone());
    let shape = GroupShape {
        head_dim,
        group_size,
        budget: group_budget(bits, group_size),
    };
    quantize_groups(ctx, x, shape, &fitted)
}

/// Quantizes whole groups `x` (`[groups · G, d]`) with the per-head `state` on the GPU.
pub fn quantize_groups(
    ctx: &GpuContext,
    x: &[f32],
    shape: GroupShape,
    state: &RotatedState,
) -> Result<GroupCodes> {
    let (d, g) = (shape.head_dim, shape.group_size);
    let groups = x.len() / (d * g);
    let [cw, sw, ww] = shape.record_words();
    let records = [
        ctx.output("group codes", (groups * cw).max(1))?,
        ctx.output("group scales", (groups * sw).max(1))?,
        ctx.output("group widths", (groups * ww).max(1))?,
    ];
    let bindings = Bindings::new(ctx, shape, state, records)?;
    let chunk = shape.chunk(ctx)?;
    for (index, rows) in x.chunks(chunk * d).enumerate() {
        let len = rows.len() / d;
        let input = ctx.upload("input", rows)?;
        let mut batch = ctx.batch();
        let list = bindings.list(&input).map(Bound::from);
        record_quantize(&mut batch, shape, (len, index * chunk / g), &list);
        batch.submit()?;
    }
    let read = |buffer: &wgpu::Buffer, role: &str, words: usize| -> Result<Vec<u32>> {
        Ok(ctx.read_output(buffer, role, words.max(1))?[..words].to_vec())
    };
    Ok(GroupCodes {
        groups,
        group_size: g,
        head_dim: d,
        budget: shape.budget,
        state: state.clone(),
        codes: read(&bindings.codes, "group codes", groups * cw)?,
        scales: read(&bindings.scales, "group scales", groups * sw)?,
        widths: read(&bindings.widths, "group widths", groups * ww)?,
    })
}

/// Records the quantization passes of `len` tokens (whole groups) whose records start at
/// group `first_group` of the record arrays, with the kernel's bindings 1…11 in `list`.
fn record_quantize(
    batch: &mut Batch<'_>,
    shape: GroupShape,
    (len, first_group): (usize, usize),
    list: &[Bound<'_>; 11],
) {
    let (d, g) = (shape.head_dim, shape.group_size);
    let local_groups = len / g;
    let base = Params {
        len: len as u32,
        group_offset: first_group as u32,
        ..shape.params()
    };
    let mut dispatch = |entry: &'static str, invocations: usize, extra: Params| {
        batch.dispatch_bound(
            &ROTATED_GROUPS,
            entry,
            Params {
                invocations: invocations as u32,
                ..extra
            },
            list,
        );
    };
    dispatch("row_transforms", len, base);
    dispatch("group_columns", local_groups * d, base);
    dispatch("row_energies", len, base);
    let per_pass = widths_per_pass(g);
    for placed in (0..shape.budget).step_by(per_pass) {
        let pass = Params {
            group_count: placed as u32,
            blocks: per_pass as u32,
            ..base
        };
        dispatch("group_widths", local_groups, pass);
    }
    dispatch("row_fits", len, base);
    dispatch("group_columns", local_groups * d, base);
    dispatch("row_errors", len, base);
    dispatch("choose_groups", local_groups, base);
}

/// Whole groups of one head's GPU-resident rows, quantized in place into a growing cache's
/// chunk records after the chunk's first `first_group` groups (the kernels index the records
/// by absolute group, so the bound ranges are the head's whole records).
pub(crate) struct ResidentGroupRecords<'a> {
    pub shape: GroupShape,
    /// [`group_kernel_table`] on the GPU.
    pub table: &'a wgpu::Buffer,
    /// The head's state, [`RotatedState::words`] from byte 0.
    pub state: &'a wgpu::Buffer,
    /// `[tokens][d]` f32 rows from byte 0.
    pub rows: &'a wgpu::Buffer,
    pub tokens: usize,
    pub first_group: usize,
    /// The head's codes, scale bytes and width tables.
    pub records: [Bound<'a>; 3],
}

impl ResidentGroupRecords<'_> {
    /// Records the passes (their scratch buffers are the context's pooled ones).
    pub fn record(&self, ctx: &GpuContext, batch: &mut Batch<'_>) -> Result<()> {
        let (tokens, d) = (self.tokens, self.shape.head_dim);
        let scratch = [
            ctx.buffer("group rows", (tokens * d * 4) as u64)?,
            ctx.buffer("group element codes", (2 * tokens * d * 4) as u64)?,
            ctx.buffer("group token info", (tokens * INFO_WORDS * 4) as u64)?,
            ctx.buffer("group row widths", (tokens * 4) as u64)?,
        ];
        let unused = ctx.buffer("unused binding", 16)?;
        let [codes, scales, widths] = self.records;
        let list = [
            Bound::from(self.rows),
            self.table.into(),
            self.state.into(),
            (&*unused).into(),
            codes,
            scales,
            widths,
            (&*scratch[0]).into(),
            (&*scratch[1]).into(),
            (&*scratch[2]).into(),
            (&*scratch[3]).into(),
        ];
        record_quantize(batch, self.shape, (tokens, self.first_group), &list);
        Ok(())
    }
}

/// Decodes group records on the GPU: X̂ of every token, `[groups · G, d]`.
pub fn dequantize_groups(ctx: &GpuContext, codes: &GroupCodes) -> Result<Vec<f32>> {
    let (d, g) = (codes.head_dim, codes.group_size);
    let shape = GroupShape {
        head_dim: d,
        group_size: g,
        budget: codes.budget,
    };
    if codes.groups == 0 {
        return Ok(Vec::new());
    }
    let records = [
        ctx.upload("group codes", &codes.codes)?,
        ctx.upload("group scales", &codes.scales)?,
        ctx.upload("group widths", &codes.widths)?,
    ];
    let bindings = Bindings::new(ctx, shape, &codes.state, records)?;
    let chunk = shape.chunk(ctx)?;
    let tokens = codes.groups * g;
    let mut out = Vec::with_capacity(tokens * d);
    for start in (0..tokens).step_by(chunk) {
        let len = chunk.min(tokens - start);
        let base = Params {
            len: len as u32,
            group_offset: (start / g) as u32,
            ..shape.params()
        };
        let mut batch = ctx.batch();
        for (entry, invocations, only_across) in [
            ("decode_rows", len, 0),
            ("group_columns", len / g * d, 1),
            ("finish_rows", len, 0),
        ] {
            batch.dispatch(
                &ROTATED_GROUPS,
                entry,
                Params {
                    invocations: invocations as u32,
                    centre_rows: only_across,
                    ..base
                },
                &bindings.list(&bindings.unused),
            );
        }
        batch.submit()?;
        let words = ctx.read_words(&bindings.rows, len * d)?;
        out.extend(words.into_iter().map(f32::from_bits));
    }
    Ok(out)
}
