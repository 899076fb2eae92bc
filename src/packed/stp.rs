//! STP (semantic token protection): where a protected token's value lives, and the
//! refinement that protects it under the rotated value schemes.
//!
//! - **Ternary values** (the paper's method): the protected tokens' values leave the ternary
//!   plane for a 2-bit per-channel plane of their own ([`ValueSlot`]).
//! - **Rotated values** (per token or across tokens): every quantized token keeps its place
//!   in the value plane, and each protected token also stores a *refinement*: its residual
//!   r = v − v̂ coded with [`REFINEMENT_BITS`]-bit rotated per-token codes
//!   ([`super::rotated`], one scale byte per token, its own per-head state fitted to the
//!   first residuals), so that its value decodes as v̂ + r̂. A 1-bit Gaussian code keeps
//!   ~36 % of the residual's energy, which lifts a 1.5-bit value to about the error of a
//!   2.5-bit one for 1 + 8/d more bits per protected element. Attention adds Σ pₜ·r̂ₜ over
//!   the protected tokens, per split, after the plane's own value sums.
//!
//! Refinement rows follow the cache's protected list (ascending positions inside the
//! quantized range). `docs/FORMAT.md` lists the stored arrays.

use super::rotated::{head_state, quantize_rows, Centres, RotatedQuantizer, RotatedRows};
use super::PackedHead;
use crate::config::{QuantConfig, TokenPlan, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::reference::lloyd_max::Codebook;
use crate::reference::rotation::Rotation;

/// Code bits of a protected token's refinement under the rotated value schemes.
pub const REFINEMENT_BITS: u8 = 1;

/// Where one quantized token's value is stored under ternary values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueSlot {
    /// Element `i` of the ternary plane's rows.
    Plain(usize),
    /// Element `i` of the protected 2-bit plane's rows.
    Protected(usize),
}

/// Whether `values` can protect tokens (ternary or rotated).
pub fn takes_protection(values: &ValueScheme) -> bool {
    matches!(
        values,
        ValueScheme::Ternary { .. }
            | ValueScheme::Rotated { .. }
            | ValueScheme::RotatedGroups { .. }
    )
}

/// Whether `values` protects tokens with a refinement (the rotated schemes).
pub fn refines(values: &ValueScheme) -> bool {
    matches!(
        values,
        ValueScheme::Rotated { .. } | ValueScheme::RotatedGroups { .. }
    )
}

/// The error a value scheme that cannot protect tokens gives.
pub(crate) fn unprotectable() -> VidkvError {
    VidkvError::InvalidConfig(
        "protected (STP) tokens need ternary or rotated values (2-bit and f16 values have no \
         protected form)"
            .into(),
    )
}

/// Checks an STP list (ascending, unique, inside the tokens, a scheme that takes it) and
/// keeps the positions inside the quantized range (the others are exact already).
pub(crate) fn protected_in_range(
    protected: &[u32],
    plan: TokenPlan,
    config: &QuantConfig,
) -> Result<Vec<u32>> {
    if protected.windows(2).any(|w| w[0] >= w[1]) {
        return Err(VidkvError::InvalidConfig(
            "protected positions must be ascending and unique".into(),
        ));
    }
    if let Some(&last) = protected.last() {
        if last as usize >= plan.tokens {
            return Err(VidkvError::InvalidConfig(format!(
                "protected position {last} is beyond the {} tokens",
                plan.tokens
            )));
        }
        if !takes_protection(&config.values) {
            return Err(unprotectable());
        }
    }
    let range = plan.quantized_start()..plan.quantized_end();
    Ok(protected
        .iter()
        .copied()
        .filter(|&p| range.contains(&(p as usize)))
        .collect())
}

/// Splits the quantized value rows (`[quantized tokens, d]`) into (unprotected, protected)
/// rows, each in position order.
pub(crate) fn split_value_rows(
    x: &[f32],
    d: usize,
    plan: TokenPlan,
    protected: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let start = plan.quantized_start();
    let mut is_protected = vec![false; x.len() / d];
    for &p in protected {
        is_protected[p as usize - start] = true;
    }
    let mut plain_rows = Vec::new();
    let mut kept_rows = Vec::new();
    for (row, &p) in x.chunks_exact(d).zip(&is_protected) {
        if p {
            kept_rows.extend_from_slice(row);
        } else {
            plain_rows.extend_from_slice(row);
        }
    }
    (plain_rows, kept_rows)
}

/// The residuals x − x̂ of the protected tokens, in list order: `x` and `decoded` are the
/// quantized range's rows (`[quantized tokens, d]`) and their decoding by the value plane.
pub(crate) fn protected_residuals(
    x: &[f32],
    decoded: &[f32],
    d: usize,
    plan: TokenPlan,
    protected: &[u32],
) -> Vec<f32> {
    let start = plan.quantized_start();
    protected
        .iter()
        .flat_map(|&p| {
            let row = (p as usize - start) * d..(p as usize - start + 1) * d;
            x[row.clone()]
                .iter()
                .zip(&decoded[row])
                .map(|(&a, &b)| a - b)
        })
        .collect()
}

/// Codes `residuals` (`[protected, d]`) as the refinement: [`REFINEMENT_BITS`]-bit
/// per-token rotated codes centred on their own state, fitted to the first
/// [`super::rotated::STATE_GROUPS`] groups' worth of them.
pub fn quantize_refinement(
    residuals: &[f32],
    rotation: &Rotation,
    group_size: usize,
) -> RotatedRows {
    let d = rotation.dim();
    let state = head_state(residuals, rotation, group_size, &mut None);
    let quantizer = RotatedQuantizer {
        rotation,
        book: Codebook::new(REFINEMENT_BITS).expect("a supported width"),
        state: &state,
    };
    quantize_rows(residuals, &quantizer, &Centres::new(&state, d, None))
}

impl PackedHead {
    /// Where each quantized token's value lives under ternary values, in token order.
    pub fn value_slots<'a>(&self, protected: &'a [u32]) -> impl Iterator<Item = ValueSlot> + 'a {
        let start = self.plan.quantized_start();
        let end = self.plan.quantized_end();
        let mut next = protected.iter().peekable();
        let (mut plain, mut kept) = (0usize, 0usize);
        (start..end).map(move |t| {
            if next.next_if(|&&p| p as usize == t).is_some() {
                kept += 1;
                ValueSlot::Protected(kept - 1)
            } else {
                plain += 1;
                ValueSlot::Plain(plain - 1)
            }
        })
    }

    /// Codes the refinement of the protected tokens (`protected`, inside the quantized
    /// range) from the head's source rows `x` (`[quantized tokens, d]`); nothing when the
    /// list is empty or the values take no refinement.
    pub(crate) fn refine(&mut self, x: &[f32], protected: &[u32], config: &QuantConfig) {
        if protected.is_empty() || !refines(&config.values) {
            return;
        }
        let d = self.head_dim;
        let range = self.plan.quantized_start() * d..self.plan.quantized_end() * d;
        let decoded = self.dequantize_values(&[]);
        let residuals = protected_residuals(x, &decoded[range], d, self.plan, protected);
        self.value_refinement = Some(quantize_refinement(
            &residuals,
            &self.rotation(),
            config.group_size,
        ));
    }

    /// Adds the decoded refinement r̂ of each protected token to its row of `out`
    /// (`[tokens, d]`); `protected` is the cache's STP list.
    pub(crate) fn add_refinement(&self, protected: &[u32], out: &mut [f32]) {
        let Some(rows) = &self.value_refinement else {
            return;
        };
        let d = self.head_dim;
        let mut refined = vec![0.0f32; rows.tokens * d];
        rows.dequantize(
            &self.rotation(),
            &Centres::new(&rows.state, d, None),
            &mut refined,
        );
        for (&p, r) in protected.iter().zip(refined.chunks_exact(d)) {
            let p = p as usize;
            for (x, &r) in out[p * d..(p + 1) * d].iter_mut().zip(r) {
                *x += r;
            }
        }
    }
}
