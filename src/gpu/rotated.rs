//! The rotated per-token kernels (`shaders/rotated.wgsl`): the per-head state, the 3-bit
//! group means, the per-token Lloyd-Max codes and their decoding, writing the words of
//! [`crate::packed::rotated`].
//!
//! The kernel reads its constants (codebook levels and thresholds, the sixteenth powers of
//! two, the block scales 1/√n, √(π/2) and 1/3) from a table the host fills with the CPU
//! reference's own f32 values ([`kernel_table`]), so neither side rounds a constant
//! differently. Inputs are cut into chunks of an even number of whole groups (two groups
//! share a word of f16 steps) under the binding limit.
//!
//! Every quantization records its passes through `record_fit_state` and `ResidentGroups`,
//! on GPU-resident rows: an uploaded chunk here, or, for a growing [`crate::KvCache`], the
//! state fitted at a layer's first flush and each flushed run of groups written in place
//! into its chunk planes.

use std::sync::Arc;

use super::batch::Batch;
use super::binding::Bound;
use super::context::GpuContext;
use super::params::Params;
use super::quantize::chunk_tokens;
use super::shaders::ROTATED;
use crate::error::Result;
use crate::packed::rotated::{GroupMeans, RotatedRows, RotatedState, ONE_THIRD, STATE_GROUPS};
use crate::packed::rotated_groups::LLOYD_MAX_MSE;
use crate::reference::lloyd_max::{Codebook, SIXTEENTH_POWERS, SQRT_HALF_PI};
use crate::reference::rotation::Rotation;

/// Entries of the constant table (see the shader header for the layout).
const TABLE_LEN: usize = 64;

/// The kernel's constant table for `bits`-bit codes.
pub fn kernel_table(bits: u8) -> Vec<f32> {
    let book = Codebook::new(bits).expect("bits are validated");
    let mut table = vec![0.0f32; TABLE_LEN];
    let levels = book.levels.len();
    table[..levels].copy_from_slice(book.levels);
    for i in 0..levels - 1 {
        table[16 + i] = book.threshold(i);
    }
    table[32..48].copy_from_slice(&SIXTEENTH_POWERS);
    for log2 in 0..=12 {
        table[48 + log2] = Rotation::block_scale(1 << log2);
    }
    table[62] = SQRT_HALF_PI;
    table[63] = ONE_THIRD;
    table
}

/// Where the across-token kernels' table keeps the levels of width b: 2^b − 2 past this.
pub const GROUP_LEVELS: usize = 64;
/// Where it keeps the thresholds of width b: 2^b − 2 past this.
pub const GROUP_THRESHOLDS: usize = 96;
/// Where it keeps the Lloyd-Max MSE of N(0, 1) with b = 0…4 bits: b past this.
pub const GROUP_MSE: usize = 128;

/// The constant table of the across-token kernels (`shaders/rotated_groups.wgsl`,
/// `shaders/attention_rotated_groups.wgsl`): [`kernel_table`] of 2-bit codes (the base
/// file's powers of two, block scales and constants), then the codebook of every width
/// b = 1…4 and the Lloyd-Max MSE of the width allocation, as the CPU reference's own f32
/// values.
pub fn group_kernel_table() -> Vec<f32> {
    let mut table = kernel_table(2);
    table.resize(GROUP_MSE + 32, 0.0);
    for bits in 1..=4u8 {
        let book = Codebook::new(bits).expect("1 to 4 bits");
        let first = (1usize << bits) - 2;
        table[GROUP_LEVELS + first..][..book.levels.len()].copy_from_slice(book.levels);
        for i in 0..book.levels.len() - 1 {
            table[GROUP_THRESHOLDS + first + i] = book.threshold(i);
        }
    }
    table[GROUP_MSE..GROUP_MSE + LLOYD_MAX_MSE.len()].copy_from_slice(&LLOYD_MAX_MSE);
    table
}

/// The buffers every entry point binds, in binding order 1…7.
struct Bindings {
    table: Arc<wgpu::Buffer>,
    state: Arc<wgpu::Buffer>,
    centres: Arc<wgpu::Buffer>,
    words: Arc<wgpu::Buffer>,
    bytes: Arc<wgpu::Buffer>,
}

impl Bindings {
    fn list<'a>(
        &'a self,
        input: &'a wgpu::Buffer,
        output: &'a wgpu::Buffer,
    ) -> [&'a wgpu::Buffer; 7] {
        [
            input,
            &self.table,
            &self.state,
            &self.centres,
            &self.words,
            &self.bytes,
            output,
        ]
    }
}

/// Shape of one rotated quantization: head_dim, group size and code width.
#[derive(Clone, Copy, Debug)]
pub struct RotatedShape {
    pub head_dim: usize,
    pub group_size: usize,
    pub bits: u8,
}

impl RotatedShape {
    fn params(&self) -> Params {
        Params {
            width: self.head_dim as u32,
            group_size: self.group_size as u32,
            code_bits: u32::from(self.bits),
            ..Default::default()
        }
    }

    /// Tokens per chunk: an even number of whole groups under the binding limit.
    fn chunk(&self, ctx: &GpuContext) -> Result<usize> {
        let tokens = chunk_tokens(ctx, self.head_dim, self.group_size)?;
        let groups = tokens / self.group_size;
        Ok((groups - groups % 2).max(1) * self.group_size)
    }
}

/// The per-head state of rows `x` (`[tokens, d]`), fitted on the GPU to its first
/// [`STATE_GROUPS`] groups (means, per-row energies, then the base); `x` empty gives the
/// reference's empty state.
pub fn fit_state(ctx: &GpuContext, x: &[f32], shape: RotatedShape) -> Result<RotatedState> {
    let d = shape.head_dim;
    let n = (STATE_GROUPS * shape.group_size).min(x.len() / d);
    if n == 0 {
        return Ok(RotatedState::fit(&[], &Rotation::new(d)?));
    }
    let words = RotatedState::words(d);
    let state = ctx.output("rotated state", words)?;
    let table = ctx.upload("rotated table", &kernel_table(shape.bits))?;
    let input = ctx.upload("input", &x[..n * d])?;
    let mut batch = ctx.batch();
    record_fit_state(ctx, &mut batch, shape, &table, (&input, n), &state)?;
    batch.submit()?;
    Ok(RotatedState::from_words(&ctx.read_output(
        &state,
        "rotated state",
        words,
    )?))
}

/// Quantizes one head's rows `x` (`[tokens, d]`, whole groups) on the GPU: its state by
/// [`fit_state`], then its codes by [`quantize_rows`].
pub fn quantize_head(
    ctx: &GpuContext,
    x: &[f32],
    shape: RotatedShape,
    group_means: bool,
) -> Result<(RotatedRows, Option<GroupMeans>)> {
    let state = fit_state(ctx, x, shape)?;
    quantize_rows(ctx, x, shape, &state, group_means)
}

/// Quantizes rows `x` (`[tokens, d]`, whole groups) on the GPU with `state`, centred on
/// the per-head mean or, with `group_means`, on 3-bit group means fitted by the kernel.
pub fn quantize_rows(
    ctx: &GpuContext,
    x: &[f32],
    shape: RotatedShape,
    state: &RotatedState,
    group_means: bool,
) -> Result<(RotatedRows, Option<GroupMeans>)> {
    let (d, g) = (shape.head_dim, shape.group_size);
    let tokens = x.len() / d;
    let groups = tokens / g;
    let wpt = RotatedRows::words_per_token(shape.bits, d);
    let mean_words = groups * GroupMeans::words_per_group(d);
    let step_words = groups.div_ceil(2);
    let code_words = tokens * wpt;
    let scale_words = tokens.div_ceil(4);
    let means = if group_means && groups > 0 {
        Some((
            ctx.output("group mean codes", mean_words)?,
            ctx.output("group mean steps", step_words)?,
        ))
    } else {
        None
    };
    let codes = ctx.output("rotated codes", code_words.max(1))?;
    let scales = ctx.output("rotated scales", scale_words.max(1))?;
    let table = ctx.upload("rotated table", &kernel_table(shape.bits))?;
    let state_buffer = ctx.upload("rotated state", &state.to_words())?;
    let chunk = shape.chunk(ctx)?;
    for (index, rows) in x.chunks(chunk * d).enumerate() {
        let input = ctx.upload("input", rows)?;
        let mut batch = ctx.batch();
        ResidentGroups {
            shape,
            table: &table,
            state: &state_buffer,
            rows: &input,
            tokens: rows.len() / d,
            first_group: index * chunk / g,
            plane_groups: groups,
            codes: (&*codes).into(),
            scales: (&*scales).into(),
            means: means
                .as_ref()
                .map(|(mean_codes, steps)| [(&**mean_codes).into(), (&**steps).into()]),
        }
        .record(ctx, &mut batch)?;
        batch.submit()?;
    }
    let rows = RotatedRows {
        tokens,
        head_dim: d,
        bits: shape.bits,
        state: state.clone(),
        codes: ctx.read_output(&codes, "rotated codes", code_words.max(1))?[..code_words].to_vec(),
        scales: ctx.read_output(&scales, "rotated scales", scale_words.max(1))?[..scale_words]
            .to_vec(),
    };
    let means = match means {
        Some((mean_codes, steps)) => Some(GroupMeans {
            groups,
            group_size: g,
            head_dim: d,
            codes: ctx.read_output(&mean_codes, "group mean codes", mean_words)?,
            steps: ctx.read_output(&steps, "group mean steps", step_words)?,
        }),
        None if group_means => Some(GroupMeans {
            groups: 0,
            group_size: g,
            head_dim: d,
            codes: Vec::new(),
            steps: Vec::new(),
        }),
        None => None,
    };
    Ok((rows, means))
}

/// Decodes rotated rows (`[tokens, d]`) on the GPU, centred as they were coded.
pub fn dequantize_rows(
    ctx: &GpuContext,
    rows: &RotatedRows,
    means: Option<&GroupMeans>,
    group_size: usize,
) -> Result<Vec<f32>> {
    let d = rows.head_dim;
    if rows.tokens == 0 {
        return Ok(Vec::new());
    }
    let shape = RotatedShape {
        head_dim: d,
        group_size,
        bits: rows.bits,
    };
    let table = ctx.upload("rotated table", &kernel_table(rows.bits))?;
    let state = ctx.upload("rotated state", &rows.state.to_words())?;
    let dummy = ctx.buffer("unused binding", 16)?;
    let centres = match means.filter(|m| m.groups > 0) {
        Some(m) => {
            let centres = ctx.buffer("rotated centres", (m.groups * d * 4) as u64)?;
            let bindings = Bindings {
                table: table.clone(),
                state: state.clone(),
                centres: centres.clone(),
                words: ctx.upload("group mean codes", &m.codes)?,
                bytes: ctx.upload("group mean steps", &m.steps)?,
            };
            let mut batch = ctx.batch();
            batch.dispatch(
                &ROTATED,
                "group_centres",
                Params {
                    invocations: m.groups as u32,
                    ..shape.params()
                },
                &bindings.list(&dummy, &dummy),
            );
            batch.submit()?;
            Some(centres)
        }
        None => None,
    };
    let bindings = Bindings {
        table,
        state,
        centres: centres.clone().unwrap_or_else(|| dummy.clone()),
        words: ctx.upload("rotated codes", &rows.codes)?,
        bytes: ctx.upload("rotated scales", &rows.scales)?,
    };
    let chunk = shape.chunk(ctx)?;
    let mut out = Vec::with_capacity(rows.tokens * d);
    for start in (0..rows.tokens).step_by(chunk) {
        let len = chunk.min(rows.tokens - start);
        let output = ctx.output("rotated rows", len * d)?;
        let mut batch = ctx.batch();
        batch.dispatch(
            &ROTATED,
            "dequantize",
            Params {
                len: len as u32,
                group_offset: (start / group_size) as u32,
                centre_rows: u32::from(centres.is_some()),
                invocations: len as u32,
                ..shape.params()
            },
            &bindings.list(&dummy, &output),
        );
        batch.submit()?;
        let words = ctx.read_output(&output, "rotated rows", len * d)?;
        out.extend(words.into_iter().map(f32::from_bits));
    }
    Ok(out)
}

/// Step words that `groups` groups from group `first` touch (two groups share a word).
fn step_words(first: usize, groups: usize) -> usize {
    (first + groups).div_ceil(2) - first / 2
}

/// Records the state fit of one head on GPU-resident rows (an uploaded head, or a growing
/// cache's first flush): `rows` holds its first `n` rows `[n][d]` f32 from byte 0; the state's
/// [`RotatedState::words`] land in `state` from byte 0. Nothing is read back.
pub(crate) fn record_fit_state(
    ctx: &GpuContext,
    batch: &mut Batch<'_>,
    shape: RotatedShape,
    table: &wgpu::Buffer,
    (rows, n): (&wgpu::Buffer, usize),
    state: &wgpu::Buffer,
) -> Result<()> {
    let d = shape.head_dim;
    let energies = ctx.buffer("state energies", (n * 2 * 4) as u64)?;
    let unused = ctx.buffer("unused binding", 16)?;
    let params = Params {
        rows: n as u32,
        ..shape.params()
    };
    for (entry, invocations) in [
        ("state_means", d / 2),
        ("state_energies", n),
        ("fit_base", 1),
    ] {
        batch.dispatch(
            &ROTATED,
            entry,
            Params {
                invocations: invocations as u32,
                ..params
            },
            &[rows, table, state, &energies, &unused, &unused, &unused],
        );
    }
    Ok(())
}

/// Whole groups of one head's GPU-resident rows, quantized in place into its planes after
/// their first `first_group` groups (an uploaded chunk of a run, or a flush into a growing
/// cache's chunk; the kernels index the planes by absolute group and token, so the bound
/// ranges are the head's whole planes).
pub(crate) struct ResidentGroups<'a> {
    pub shape: RotatedShape,
    pub table: &'a wgpu::Buffer,
    /// The head's state, [`RotatedState::words`] from byte 0.
    pub state: &'a wgpu::Buffer,
    /// `[tokens][d]` f32 rows from byte 0.
    pub rows: &'a wgpu::Buffer,
    pub tokens: usize,
    pub first_group: usize,
    /// Groups the planes hold per head (the whole run's, or a cache chunk's).
    pub plane_groups: usize,
    /// The head's code words and scale bytes.
    pub codes: Bound<'a>,
    pub scales: Bound<'a>,
    /// Values centred on group means: the head's mean codes and steps.
    pub means: Option<[Bound<'a>; 2]>,
}

impl ResidentGroups<'_> {
    /// Records the group means (when centred on them), the codes and the scale bytes.
    pub fn record(&self, ctx: &GpuContext, batch: &mut Batch<'_>) -> Result<()> {
        let (d, g) = (self.shape.head_dim, self.shape.group_size);
        let groups = self.tokens / g;
        let base = Params {
            len: self.tokens as u32,
            group_offset: self.first_group as u32,
            groups: self.plane_groups as u32,
            ..self.shape.params()
        };
        let centres = ctx.buffer(
            "rotated centres",
            ((self.first_group + groups) * d * 4) as u64,
        )?;
        let fixed = [
            Bound::from(self.rows),
            self.table.into(),
            self.state.into(),
            (&*centres).into(),
        ];
        if let Some([mean_codes, steps]) = self.means {
            let group_steps = ctx.buffer("group steps", (groups * 4) as u64)?;
            let list = [fixed[0], fixed[1], fixed[2], fixed[3], mean_codes, steps];
            for (entry, invocations) in [
                ("group_means", groups),
                ("pack_steps", step_words(self.first_group, groups)),
            ] {
                let mut bound = list.to_vec();
                bound.push((&*group_steps).into());
                batch.dispatch_bound(
                    &ROTATED,
                    entry,
                    Params {
                        invocations: invocations as u32,
                        ..base
                    },
                    &bound,
                );
            }
        }
        let token_bytes = ctx.buffer("token scale bytes", (self.tokens * 4) as u64)?;
        let list = [
            fixed[0],
            fixed[1],
            fixed[2],
            fixed[3],
            self.codes,
            self.scales,
            (&*token_bytes).into(),
        ];
        for (entry, invocations) in [
            ("quantize", self.tokens),
            ("pack_scales", self.tokens.div_ceil(4)),
        ] {
            batch.dispatch_bound(
                &ROTATED,
                entry,
                Params {
                    centre_rows: u32::from(self.means.is_some()),
                    invocations: invocations as u32,
                    ..base
                },
                &list,
            );
        }
        Ok(())
    }
}
