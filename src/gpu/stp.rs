//! STP refinements on the GPU (rotated values, [`crate::packed::stp`]): the value plane is
//! decoded by its own kernels, the protected tokens' residuals are gathered, and the
//! refinement's state and codes come from the rotated per-token kernels, so the words
//! match [`crate::packed::stp::quantize_refinement`] (up to rounding at code boundaries,
//! counted by the tests).

use super::context::GpuContext;
use super::rotated::{self, RotatedShape};
use crate::config::TokenPlan;
use crate::error::Result;
use crate::packed::rotated::RotatedRows;
use crate::packed::stp::{protected_residuals, REFINEMENT_BITS};
use crate::packed::PackedValues;

/// The refinement of the protected tokens (`protected`, inside the quantized range of
/// `plan`) of one head whose quantized value rows `x` (`[quantized tokens, d]`) were coded
/// as `values`; `None` without protected tokens or for values that take no refinement.
pub(crate) fn refine_values(
    ctx: &GpuContext,
    values: &PackedValues,
    x: &[f32],
    plan: TokenPlan,
    protected: &[u32],
    (head_dim, group_size): (usize, usize),
) -> Result<Option<RotatedRows>> {
    if protected.is_empty() {
        return Ok(None);
    }
    let decoded = match values {
        PackedValues::Rotated { rows, means } => {
            rotated::dequantize_rows(ctx, rows, means.as_ref(), group_size)?
        }
        PackedValues::RotatedGroups(codes) => super::rotated_groups::dequantize_groups(ctx, codes)?,
        _ => return Ok(None),
    };
    let d = head_dim;
    let residuals = protected_residuals(x, &decoded, d, plan, protected);
    let shape = RotatedShape {
        head_dim: d,
        group_size,
        bits: REFINEMENT_BITS,
    };
    let state = rotated::fit_state(ctx, &residuals, shape)?;
    // The kernels take whole groups: zero rows pad the last one, and their codes are
    // dropped (each token's codes depend on its own row only).
    let n = protected.len();
    let mut padded = residuals;
    padded.resize(n.next_multiple_of(group_size) * d, 0.0);
    let (mut rows, _) = rotated::quantize_rows(ctx, &padded, shape, &state, false)?;
    rows.tokens = n;
    rows.codes
        .truncate(n * RotatedRows::words_per_token(REFINEMENT_BITS, d));
    rows.scales.truncate(n.div_ceil(4));
    if n % 4 != 0 {
        if let Some(last) = rows.scales.last_mut() {
            *last &= (1u32 << (8 * (n % 4))) - 1;
        }
    }
    Ok(Some(rows))
}
