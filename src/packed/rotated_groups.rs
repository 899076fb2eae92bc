//! Rotated codes across tokens too (the "T2" scheme of `docs/rotated-2bit.md`).
//!
//! Each whole group X (G tokens × d, in order) of one head is coded in one of two modes,
//! whichever has the smaller sum over its tokens of ‖x̂ₜ − xₜ‖² / ‖xₜ − m‖²:
//! - **T**: F = Rot_G·(X − 1mᵀ)·Rot_d (a Hadamard over the group's tokens as well as over
//!   head_dim), so row j of F is sequency j (row 0 is √G × the group's mean of x − m). The
//!   group's bits·G row widths go greedily, one bit at a time, to the row with the largest
//!   gain eⱼ·(δ(bⱼ) − δ(bⱼ + 1)) (eⱼ = ‖Fⱼ‖², δ the Lloyd-Max MSE of N(0, 1), widths ≤ 4,
//!   ties to the lowest j); each row with bⱼ > 0 gets a [`fit_row`] with bⱼ bits and one
//!   scale byte; X̂ = Rot_G·F̂·Rot_d + 1mᵀ.
//! - **A**: the per-token codes of [`super::rotated`] (centred on m or not, one byte each);
//!   a fractional average (e.g. 2.5 bits) gives the first tokens one more bit than the rest.
//!
//! The per-head [`RotatedState`] (m and the scale base b) is fixed at the first quantization,
//! as for the per-token scheme. ‖F‖ = ‖X − 1mᵀ‖ (both transforms are orthogonal), so the
//! one base serves both modes.
//!
//! Record of one group (the same size in both modes):
//!
//! | array | words | content |
//! |---|---|---|
//! | codes | G·bits·d/32 | T: rows j in order, bⱼ·d bits each; A: tokens in order, token t with ⌊bits⌋ or ⌊bits⌋ + 1 bits per code (the first (bits·G mod G) tokens get the extra bit) |
//! | scales | G/4 | one byte per row (T) or per token, (flag ≪ 7) \| scale code (A) |
//! | widths | ⌈3G/32⌉ | G three-bit row widths bⱼ; entry 0 = 7 marks mode A |

use super::rotated::{head_state, pack_codes, read_code, RotatedQuantizer, RotatedState, FLAG_BIT};
use crate::error::{Result, VidkvError};
use crate::reference::lloyd_max::{decode_scale, fit_row, tree_sum, Codebook};
use crate::reference::rotation::Rotation;

/// The widest row of a T group.
pub const MAX_ROW_BITS: u8 = 4;
/// The width-table entry 0 that marks a group stored per token (mode A).
const TOKEN_MODE: u32 = 7;
/// Lloyd-Max MSE of N(0, 1) with b = 0…4 bits.
pub(crate) const LLOYD_MAX_MSE: [f32; 5] = [1.0, 0.3634, 0.1175, 0.03454, 0.009497];

/// The groups of one head coded in mode T or A.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCodes {
    pub groups: usize,
    pub group_size: usize,
    pub head_dim: usize,
    /// Code bits per group, bits·G (Σ bⱼ in mode T; in mode A token t gets
    /// ⌊budget/G⌋ bits, plus one for the first budget mod G tokens).
    pub budget: usize,
    pub state: RotatedState,
    pub codes: Vec<u32>,
    pub scales: Vec<u32>,
    pub widths: Vec<u32>,
}

/// Words of the three arrays per group.
fn words_per_group(budget: usize, group_size: usize, d: usize) -> [usize; 3] {
    [
        budget * d / 32,
        group_size / 4,
        (3 * group_size).div_ceil(32),
    ]
}

impl GroupCodes {
    /// Stored words of `groups` groups, the state included.
    pub fn words(budget: usize, group_size: usize, d: usize, groups: usize) -> usize {
        groups * words_per_group(budget, group_size, d).iter().sum::<usize>()
            + RotatedState::words(d)
    }

    /// The code width of token `t` of a group in mode A.
    pub fn token_bits(&self, t: usize) -> u8 {
        token_bits(self.budget, self.group_size, t)
    }

    /// Row (T) or token (A) width table entry `j` of group `g`.
    fn width_entry(&self, g: usize, j: usize) -> u32 {
        let per = words_per_group(self.budget, self.group_size, self.head_dim)[2];
        u32::from(read_code(&self.widths[g * per..(g + 1) * per], 3 * j, 3))
    }

    /// Whether group `g` is stored per token (mode A).
    pub fn is_token_mode(&self, g: usize) -> bool {
        self.width_entry(g, 0) == TOKEN_MODE
    }

    /// Width b_j of row `j` of a T group `g`.
    pub fn row_bits(&self, g: usize, j: usize) -> u8 {
        self.width_entry(g, j) as u8
    }

    /// Scale byte `i` (row or token) of group `g`.
    pub fn scale_byte(&self, g: usize, i: usize) -> u8 {
        let word = self.scales[g * self.group_size / 4 + i / 4];
        (word >> (8 * (i % 4))) as u8
    }

    /// The code words of group `g`.
    fn group_codes(&self, g: usize) -> &[u32] {
        let per = words_per_group(self.budget, self.group_size, self.head_dim)[0];
        &self.codes[g * per..(g + 1) * per]
    }

    /// The rows of group `g` in the rotated domain, `[G, d]`, and for mode A the tokens'
    /// centring flags: T gives F̂ (sequency rows), A gives ŷₜ = ŝₜ·L\[cₜ\] per token.
    pub fn rotated_rows(&self, g: usize) -> (Vec<f32>, Option<Vec<bool>>) {
        let d = self.head_dim;
        let words = self.group_codes(g);
        let base = self.state.base();
        let mut rows = vec![0.0f32; self.group_size * d];
        if self.is_token_mode(g) {
            let mut flags = Vec::with_capacity(self.group_size);
            let mut at = 0;
            for (t, row) in rows.chunks_exact_mut(d).enumerate() {
                let bits = self.token_bits(t);
                let book = Codebook::new(bits).expect("the budget is validated");
                let byte = self.scale_byte(g, t);
                let s = decode_scale(byte & !FLAG_BIT, base);
                for (i, x) in row.iter_mut().enumerate() {
                    let c = read_code(words, at + i * usize::from(bits), bits);
                    *x = s * book.levels[usize::from(c)];
                }
                at += usize::from(bits) * d;
                flags.push(byte & FLAG_BIT != 0);
            }
            return (rows, Some(flags));
        }
        let mut at = 0;
        for (j, row) in rows.chunks_exact_mut(d).enumerate() {
            let bits = self.row_bits(g, j);
            if bits == 0 {
                continue;
            }
            let book = Codebook::new(bits).expect("widths are validated");
            let s = decode_scale(self.scale_byte(g, j), base);
            for (i, x) in row.iter_mut().enumerate() {
                *x = s * book.levels
                    [usize::from(read_code(words, at + i * usize::from(bits), bits))];
            }
            at += usize::from(bits) * d;
        }
        (rows, None)
    }

    /// X̂ of every token, `[groups · G, d]`.
    pub fn dequantize(&self, rotation: &Rotation, out: &mut [f32]) {
        let d = self.head_dim;
        let m = self.state.means(d);
        for (g, group) in out.chunks_exact_mut(self.group_size * d).enumerate() {
            let (rows, flags) = self.rotated_rows(g);
            group.copy_from_slice(&rows);
            if flags.is_none() {
                rotate_columns(group, d);
            }
            for (t, token) in group.chunks_exact_mut(d).enumerate() {
                rotation.rotate(token);
                if flags.as_ref().is_none_or(|f| f[t]) {
                    for (x, &c) in token.iter_mut().zip(&m) {
                        *x += c;
                    }
                }
            }
        }
    }

    /// Checks widths and array lengths (for data read from a file).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(VidkvError::CorruptPacked(msg));
        let g = self.group_size;
        if !g.is_power_of_two()
            || g < 8
            || self.budget < g
            || self.budget > usize::from(MAX_ROW_BITS) * g
            || self.budget * self.head_dim % 32 != 0
        {
            return bad(format!(
                "group codes with {} bits per group and group size {g}",
                self.budget
            ));
        }
        let [c, s, w] = words_per_group(self.budget, self.group_size, self.head_dim);
        if self.codes.len() != c * self.groups
            || self.scales.len() != s * self.groups
            || self.widths.len() != w * self.groups
            || self.state.mean.len() != self.head_dim.div_ceil(2)
        {
            return bad("group codes: array lengths do not match the shape".into());
        }
        let budget = self.budget;
        for g in (0..self.groups).filter(|&g| !self.is_token_mode(g)) {
            let widths: Vec<u8> = (0..self.group_size).map(|j| self.row_bits(g, j)).collect();
            let total: usize = widths.iter().map(|&b| usize::from(b)).sum();
            if widths.iter().any(|&b| b > MAX_ROW_BITS) || total != budget {
                return bad(format!(
                    "group {g}: row widths {widths:?} do not spend {budget} bits"
                ));
            }
        }
        Ok(())
    }
}

/// Rot_G over the tokens of a `[G, d]` block: every column transformed in place.
pub(crate) fn rotate_columns(block: &mut [f32], d: usize) {
    let g = block.len() / d;
    let rotation = Rotation::power_of_two(g);
    let mut column = vec![0.0f32; g];
    for c in 0..d {
        for (t, x) in column.iter_mut().enumerate() {
            *x = block[t * d + c];
        }
        rotation.rotate(&mut column);
        for (t, &x) in column.iter().enumerate() {
            block[t * d + c] = x;
        }
    }
}

/// Row widths for energies `e` with `budget` bits in all: greedy by MSE gain.
fn allocate_widths(energies: &[f32], budget: usize) -> Vec<u8> {
    let mut widths = vec![0u8; energies.len()];
    for _ in 0..budget {
        let gain = |j: usize| {
            let b = usize::from(widths[j]);
            energies[j] * (LLOYD_MAX_MSE[b] - LLOYD_MAX_MSE[b + 1])
        };
        let best = (0..energies.len())
            .filter(|&j| widths[j] < MAX_ROW_BITS)
            .fold(None, |best: Option<usize>, j| match best {
                Some(b) if gain(b) >= gain(j) => Some(b),
                _ => Some(j),
            });
        match best {
            Some(j) => widths[j] += 1,
            None => break,
        }
    }
    widths
}

/// The mode-A code width of token `t`: ⌊budget/G⌋, plus one for the first budget mod G
/// tokens.
fn token_bits(budget: usize, group_size: usize, t: usize) -> u8 {
    (budget / group_size + usize::from(t < budget % group_size)) as u8
}

/// The per-group code budget bits·G of `bits` average bits per code (validated by
/// [`crate::QuantConfig::validate`] to be a whole, even number from G to 4G).
pub fn group_budget(bits: f32, group_size: usize) -> usize {
    (bits * group_size as f32).round() as usize
}

/// Quantizes one head's whole groups `x` with `bits` average bits per code; `state` as in
/// [`super::rotated::head_state`].
pub fn quantize_head(
    x: &[f32],
    rotation: &Rotation,
    bits: f32,
    group_size: usize,
    state: &mut Option<RotatedState>,
) -> GroupCodes {
    let state = head_state(x, rotation, group_size, state);
    quantize_groups(
        x,
        rotation,
        group_budget(bits, group_size),
        group_size,
        &state,
    )
}

/// Quantizes whole groups `x` (`[groups · group_size, d]`) with `budget` code bits per
/// group and the per-head `state`.
pub fn quantize_groups(
    x: &[f32],
    rotation: &Rotation,
    budget: usize,
    group_size: usize,
    state: &RotatedState,
) -> GroupCodes {
    let d = rotation.dim();
    let groups = x.len() / (d * group_size);
    let [cw, sw, ww] = words_per_group(budget, group_size, d);
    let mut codes = vec![0u32; groups * cw];
    let mut scales = vec![0u32; groups * sw];
    let mut widths = vec![0u32; groups * ww];
    let m = state.means(d);
    let quantizer = |bits: u8| RotatedQuantizer {
        rotation,
        book: Codebook::new(bits).expect("the budget is validated"),
        state,
    };
    let low = token_bits(budget, group_size, group_size - 1);
    let per_token = [quantizer(low), quantizer((low + 1).min(MAX_ROW_BITS))];
    for (g, group) in x.chunks_exact(d * group_size).enumerate() {
        let record = GroupRecord::best(group, &per_token, &m, budget, group_size);
        codes[g * cw..(g + 1) * cw].copy_from_slice(&record.codes);
        for (i, &byte) in record.scales.iter().enumerate() {
            scales[g * sw + i / 4] |= u32::from(byte) << (8 * (i % 4));
        }
        let table = &mut widths[g * ww..(g + 1) * ww];
        pack_codes(&record.widths, 3, 0, table);
    }
    GroupCodes {
        groups,
        group_size,
        head_dim: d,
        budget,
        state: state.clone(),
        codes,
        scales,
        widths,
    }
}

/// One group's record and its error sum, before packing into the head's arrays.
struct GroupRecord {
    codes: Vec<u32>,
    scales: Vec<u8>,
    widths: Vec<u8>,
    error: f32,
}

impl GroupRecord {
    /// The better of mode T and mode A for one group.
    fn best(
        group: &[f32],
        per_token: &[RotatedQuantizer<'_>; 2],
        m: &[f32],
        budget: usize,
        g: usize,
    ) -> Self {
        let d = m.len();
        let energy: Vec<f32> = group
            .chunks_exact(d)
            .map(|x| tree_sum(x.iter().zip(m).map(|(&v, &c)| (v - c) * (v - c))))
            .collect();
        let sequency = Self::sequency(group, &per_token[0], m, budget, g, &energy);
        let tokens = Self::tokens(group, per_token, m, budget, &energy);
        if sequency.error < tokens.error {
            sequency
        } else {
            tokens
        }
    }

    /// Σₜ err/‖xₜ − m‖² (a zero denominator counts the error as it is).
    fn relative(errors: &[f32], energy: &[f32]) -> f32 {
        errors
            .iter()
            .zip(energy)
            .fold(0.0f32, |s, (&e, &n)| s + if n > 0.0 { e / n } else { e })
    }

    fn sequency(
        group: &[f32],
        q: &RotatedQuantizer<'_>,
        m: &[f32],
        budget: usize,
        g: usize,
        energy: &[f32],
    ) -> Self {
        let d = m.len();
        let mut f: Vec<f32> = group
            .iter()
            .enumerate()
            .map(|(i, &v)| v - m[i % d])
            .collect();
        for row in f.chunks_exact_mut(d) {
            q.rotation.rotate(row);
        }
        rotate_columns(&mut f, d);
        let row_energy: Vec<f32> = f
            .chunks_exact(d)
            .map(|r| tree_sum(r.iter().map(|v| v * v)))
            .collect();
        let widths = allocate_widths(&row_energy, budget);
        let mut codes = vec![0u32; budget * d / 32];
        let mut scales = vec![0u8; g];
        let mut residual = f.clone();
        let mut row_codes = vec![0u8; d];
        let mut at = 0;
        for (j, row) in f.chunks_exact(d).enumerate() {
            if widths[j] == 0 {
                continue;
            }
            let book = Codebook::new(widths[j]).expect("widths are 1 to 4");
            let fit = fit_row(row, book, q.state.base(), &mut row_codes);
            pack_codes(&row_codes, widths[j], at, &mut codes);
            at += usize::from(widths[j]) * d;
            scales[j] = fit.scale_code;
            for (r, &c) in residual[j * d..(j + 1) * d].iter_mut().zip(&row_codes) {
                *r -= fit.scale * book.levels[usize::from(c)];
            }
        }
        rotate_columns(&mut residual, d);
        let errors: Vec<f32> = residual
            .chunks_exact(d)
            .map(|r| tree_sum(r.iter().map(|v| v * v)))
            .collect();
        GroupRecord {
            codes,
            scales,
            widths,
            error: Self::relative(&errors, energy),
        }
    }

    fn tokens(
        group: &[f32],
        per_token: &[RotatedQuantizer<'_>; 2],
        m: &[f32],
        budget: usize,
        energy: &[f32],
    ) -> Self {
        let d = m.len();
        let tokens = group.len() / d;
        let mut codes = vec![0u32; budget * d / 32];
        let mut scales = Vec::with_capacity(tokens);
        let mut errors = Vec::with_capacity(tokens);
        let mut token_codes = vec![0u8; d];
        let low = token_bits(budget, tokens, tokens - 1);
        let mut at = 0;
        for (t, x) in group.chunks_exact(d).enumerate() {
            let bits = token_bits(budget, tokens, t);
            let q = &per_token[usize::from(bits > low)];
            let (byte, error) = q.token(x, m, &mut token_codes);
            pack_codes(&token_codes, bits, at, &mut codes);
            at += usize::from(bits) * d;
            scales.push(byte);
            errors.push(error);
        }
        let mut widths = vec![0u8; tokens];
        widths[0] = TOKEN_MODE as u8;
        GroupRecord {
            codes,
            scales,
            widths,
            error: Self::relative(&errors, energy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_spend_the_budget_by_energy() {
        let widths = allocate_widths(&[100.0, 1.0, 0.0, 0.0], 8);
        assert_eq!(widths.iter().map(|&b| usize::from(b)).sum::<usize>(), 8);
        assert_eq!(widths[0], MAX_ROW_BITS);
        assert!(widths[1] >= widths[2]);
        assert_eq!(allocate_widths(&[0.0; 4], 6), vec![4, 2, 0, 0]);
    }
}
