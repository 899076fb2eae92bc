//! What a layer fixes at its first flush: the key channel split and the rotated schemes'
//! per-head states.

use super::{F32Rows, Heads};
use crate::config::{KeyScheme, QuantConfig, SplitGranularity, ValueScheme};
use crate::error::Result;
use crate::gpu::attention::{
    KeyLayout, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, RotatedStates,
};
use crate::gpu::context::GpuContext;
use crate::gpu::quantize::twiddles;
use crate::gpu::rotated::{group_kernel_table, kernel_table, record_fit_state, RotatedShape};
use crate::gpu::split::{channel_split_on_gpu, GpuSplit};
use crate::packed::rotated::{RotatedState, STATE_GROUPS};
use crate::reference::split::outlier_count;

/// A layer's rotated key and value states (rotated per-token schemes only), fixed at its
/// first flush and shared by every chunk.
#[derive(Clone, Default)]
pub(crate) struct LayerStates {
    pub keys: Option<RotatedStates>,
    pub values: Option<RotatedStates>,
}

impl LayerStates {
    /// The states of `config`'s rotated schemes, each head's fitted on the GPU to the first
    /// [`STATE_GROUPS`] groups of the first `tokens` rows of `window` (the first flush), as
    /// [`crate::packed::rotated::head_state`] fits them on the CPU. Nothing is read back.
    pub fn fit(
        ctx: &GpuContext,
        config: &QuantConfig,
        window: &F32Rows,
        heads: Heads,
        tokens: usize,
    ) -> Result<Self> {
        // `bits` 0: codes across tokens, whose kernels read the table of every width.
        let fit = |keys: bool, bits: u8| -> Result<RotatedStates> {
            let (h, d) = (heads.count, heads.dim);
            let shape = RotatedShape {
                head_dim: d,
                group_size: config.group_size,
                bits: bits.max(1),
            };
            let n = (STATE_GROUPS * config.group_size).min(tokens);
            let words = RotatedState::words(d);
            let table = if bits == 0 {
                ctx.create_storage("rotated group table", &group_kernel_table())?
            } else {
                ctx.create_storage("rotated table", &kernel_table(bits))?
            };
            let states = ctx.create_zeroed("rotated states", h * words)?;
            let source = if keys { &window.keys } else { &window.values };
            for head in 0..h {
                let rows = ctx.buffer("state rows", (n * d * 4) as u64)?;
                let fitted = ctx.buffer("fitted state", (words * 4) as u64)?;
                let mut batch = ctx.batch();
                let at = (head * window.capacity * d * 4) as u64;
                batch.copy(source, at, &rows, 0, (n * d * 4) as u64);
                record_fit_state(ctx, &mut batch, shape, &table, (&rows, n), &fitted)?;
                let bytes = (words * 4) as u64;
                batch.copy(&fitted, 0, &states, head as u64 * bytes, bytes);
                batch.submit()?;
            }
            Ok(RotatedStates {
                bits,
                table,
                states,
            })
        };
        Ok(LayerStates {
            keys: match config.keys {
                KeyScheme::Rotated { bits } => Some(fit(true, bits)?),
                KeyScheme::RotatedGroups { .. } => Some(fit(true, 0)?),
                _ => None,
            },
            values: match config.values {
                ValueScheme::Rotated { bits, .. } => Some(fit(false, bits)?),
                ValueScheme::RotatedGroups { .. } => Some(fit(false, 0)?),
                _ => None,
            },
        })
    }

    /// The states a stored run's planes carry (a loaded or converted cache).
    pub fn of_planes(planes: &PackedPlanes) -> Self {
        LayerStates {
            keys: match &planes.keys {
                PackedKeyPlanes::Rotated(p) => Some(p.states.clone()),
                PackedKeyPlanes::RotatedGroups(p) => Some(p.states.clone()),
                PackedKeyPlanes::Packed { .. } => None,
            },
            values: match &planes.values {
                PackedValuePlanes::Rotated(p) => Some(p.states.clone()),
                PackedValuePlanes::RotatedGroups(p) => Some(p.states.clone()),
                _ => None,
            },
        }
    }
}

/// The layer's key channel split from the first `tokens` rows of `window` (spec §2.5): the
/// identity layout for presets without mixed keys.
pub(crate) fn freeze_split(
    ctx: &GpuContext,
    config: &QuantConfig,
    window: &F32Rows,
    heads: Heads,
    tokens: usize,
) -> Result<KeyLayout> {
    let (h, d) = (heads.count, heads.dim);
    let KeyScheme::Mixed {
        outlier_ratio,
        fft,
        split,
    } = config.keys
    else {
        return KeyLayout::identity(ctx, h, d);
    };
    let k = outlier_count(d, outlier_ratio);
    let order = ctx.create_zeroed("channel order", h * d)?;
    let rows = |head: usize| {
        (
            &window.keys,
            (head * window.capacity * d * 4) as u64,
            tokens,
        )
    };
    let copy = |split: &GpuSplit, head: usize| -> Result<()> {
        let mut batch = ctx.batch();
        batch.copy(
            &split.order,
            0,
            &order,
            (head * d * 4) as u64,
            (d * 4) as u64,
        );
        batch.submit()
    };
    match split {
        SplitGranularity::PerLayer => {
            let inputs: Vec<_> = (0..h).map(rows).collect();
            let shared = channel_split_on_gpu(ctx, &inputs, d, k)?;
            for head in 0..h {
                copy(&shared, head)?;
            }
        }
        SplitGranularity::PerHead => {
            for head in 0..h {
                let own = channel_split_on_gpu(ctx, &[rows(head)], d, k)?;
                copy(&own, head)?;
            }
        }
    }
    Ok(KeyLayout {
        outliers: k,
        normals: d - k,
        fft,
        order,
        twiddles: ctx.create_storage("twiddles", &twiddles((d - k).max(1)))?,
        rotated: None,
    })
}
