//! Rotated per-token codes (`docs/rotated-2bit.md`): planes, quantization, decoding.
//!
//! Per (layer, KV head) and for keys and values separately:
//! - a [`RotatedState`], fixed at the head's first quantization: the per-channel mean m of
//!   the first two groups of quantized tokens (one if only one exists) and the base b of
//!   the log scale (the RMS of those tokens' centred rotated rows), both f16;
//! - per token, the [`fit_row`] codes of its rotated row y = x·Rot or of its centred
//!   rotated row (x − c)·Rot, whichever has the smaller squared error, and one byte
//!   (flag ≪ 7) | scale code. The centre c is m (keys, and values without group means) or
//!   the group mean μ_g (values with [`GroupMeans`]). x̂ = flag·c + (ŝ·L\[codes\])·Rot;
//! - for values with group means, per group: r = the group's mean of x − m,
//!   D = f16(max|r|/3), z = round(r/D) clamped to ±3 (3 bits), μ_g = m + D·z.
//!
//! | array | layout |
//! |---|---|
//! | codes | per token ⌈bits·d/32⌉ words, element i at bit i·bits, LSB first (a 3-bit code may span two words) |
//! | scales | one byte per token, four per word, token t at bits 8·(t mod 4) |
//! | state | d/2 words of f16 mean pairs, then one word with the f16 base in its low half |
//! | means | per group ⌈d/10⌉ words of ten 3-bit codes z + 3; then the f16 steps D, two groups per word |

use half::f16;

use super::planes::{f16_at, pack_f16_pair, pack_f16_slice};
use crate::error::{Result, VidkvError};
use crate::reference::lloyd_max::{decode_scale, fit_row, tree_sum, Codebook};
use crate::reference::rotation::Rotation;

/// Groups whose tokens fix the per-head state (fewer if fewer exist at the first flush).
pub const STATE_GROUPS: usize = 2;

/// Bit of the scale byte that marks a centred token.
pub(crate) const FLAG_BIT: u8 = 0x80;

/// Three-bit group-mean codes per u32 word.
const MEAN_CODES_PER_WORD: usize = 10;
/// The largest |z| of a group-mean code.
const MEAN_CODE_LIMIT: i32 = 3;
/// 1/3 as f32: the group-mean step is D = f16(max|r| · ONE_THIRD).
pub const ONE_THIRD: f32 = 1.0 / 3.0;

/// The per-head centre and scale base, fixed at the head's first quantization.
#[derive(Clone, Debug, PartialEq)]
pub struct RotatedState {
    /// d/2 words: the f16 channel means m, two per word.
    pub mean: Vec<u32>,
    /// The f16 base b of the log scale, in the low half.
    pub base: u32,
}

impl RotatedState {
    /// Stored words for head_dim `d`.
    pub fn words(d: usize) -> usize {
        d.div_ceil(2) + 1
    }

    /// The state of the rows `first` (`[n, d]`; none gives m = 0, b = 1): m their channel mean (summed in
    /// token order), b the RMS of their rows (x − m̂)·Rot, where m̂ is m rounded to f16.
    /// A zero base (every row equal to its mean) falls back to the RMS of the uncentred
    /// rotated rows, then to 1.
    pub fn fit(first: &[f32], rotation: &Rotation) -> Self {
        let d = rotation.dim();
        let n = (first.len() / d).max(1);
        let mut sums = vec![0.0f32; d];
        for row in first.chunks_exact(d) {
            for (s, &x) in sums.iter_mut().zip(row) {
                *s += x;
            }
        }
        let mean: Vec<f32> = sums
            .iter()
            .map(|&s| f16::from_f32(s / n as f32).to_f32())
            .collect();
        let rms = |centre: Option<&[f32]>| {
            let mut total = 0.0f32;
            let mut y = vec![0.0f32; d];
            for row in first.chunks_exact(d) {
                for (c, v) in y.iter_mut().enumerate() {
                    *v = row[c] - centre.map_or(0.0, |m| m[c]);
                }
                rotation.rotate(&mut y);
                total += tree_sum(y.iter().map(|v| v * v));
            }
            f16_floor_rms(total, (n * d) as f32)
        };
        let base = [rms(Some(&mean)), rms(None)]
            .into_iter()
            .find(|&b| b > 0.0)
            .unwrap_or(1.0);
        RotatedState {
            mean: pack_f16_slice(&mean),
            base: pack_f16_pair(base, 0.0),
        }
    }

    /// The state as one array: the mean words, then the base word.
    pub fn to_words(&self) -> Vec<u32> {
        let mut words = self.mean.clone();
        words.push(self.base);
        words
    }

    /// The state from [`RotatedState::to_words`]'s layout (at least one word).
    pub fn from_words(words: &[u32]) -> Self {
        let (base, mean) = words.split_last().expect("a state has its base word");
        RotatedState {
            mean: mean.to_vec(),
            base: *base,
        }
    }

    /// Channel mean `c`.
    pub fn mean_value(&self, c: usize) -> f32 {
        f16_at(&self.mean, c)
    }

    /// All channel means.
    pub fn means(&self, d: usize) -> Vec<f32> {
        (0..d).map(|c| self.mean_value(c)).collect()
    }

    /// The scale base b.
    pub fn base(&self) -> f32 {
        f16_at(&[self.base], 0)
    }
}

/// The largest finite f16 h with (h·h)·count ≤ total, or 0: an RMS √(total/count) rounded
/// down to f16, decided by products only (no division or square root) so that a kernel
/// finds the same value.
pub fn f16_floor_rms(total: f32, count: f32) -> f32 {
    let (mut lo, mut hi) = (0u16, f16::MAX.to_bits());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let h = f16::from_bits(mid).to_f32();
        if h * h * count <= total {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    f16::from_bits(lo).to_f32()
}

/// The per-token codes and scale bytes of a run of quantized tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct RotatedRows {
    pub tokens: usize,
    pub head_dim: usize,
    pub bits: u8,
    pub state: RotatedState,
    pub codes: Vec<u32>,
    pub scales: Vec<u32>,
}

impl RotatedRows {
    /// Code words per token.
    pub fn words_per_token(bits: u8, d: usize) -> usize {
        (usize::from(bits) * d).div_ceil(32)
    }

    /// Stored words of `tokens` tokens (codes, scale bytes and the state).
    pub fn words(bits: u8, d: usize, tokens: usize) -> usize {
        tokens * Self::words_per_token(bits, d) + tokens.div_ceil(4) + RotatedState::words(d)
    }

    /// The codebook of these rows.
    pub fn codebook(&self) -> Codebook {
        Codebook::new(self.bits).expect("bits are validated before quantizing")
    }

    /// Code of element `i` of token `t`.
    pub fn code(&self, t: usize, i: usize) -> u8 {
        let wpt = Self::words_per_token(self.bits, self.head_dim);
        read_code(
            &self.codes[t * wpt..(t + 1) * wpt],
            i * usize::from(self.bits),
            self.bits,
        )
    }

    /// The scale byte of token `t`: (flag ≪ 7) | scale code.
    pub fn scale_byte(&self, t: usize) -> u8 {
        (self.scales[t / 4] >> (8 * (t % 4))) as u8
    }

    /// Whether token `t` was stored centred.
    pub fn flag(&self, t: usize) -> bool {
        self.scale_byte(t) & FLAG_BIT != 0
    }

    /// The decoded scale ŝ of token `t`.
    pub fn scale(&self, t: usize) -> f32 {
        decode_scale(self.scale_byte(t) & !FLAG_BIT, self.state.base())
    }

    /// x̂ of every token, `[tokens, d]` (centres added where flagged).
    pub fn dequantize(&self, rotation: &Rotation, centres: &Centres, out: &mut [f32]) {
        for (t, token) in out.chunks_exact_mut(self.head_dim).enumerate() {
            token.copy_from_slice(&self.rotated_row(t));
            rotation.rotate(token);
            if self.flag(t) {
                for (x, &c) in token.iter_mut().zip(centres.of(t)) {
                    *x += c;
                }
            }
        }
    }

    /// ŝ·L\[codes\] of token `t`: its row in the rotated domain, without the centre.
    pub fn rotated_row(&self, t: usize) -> Vec<f32> {
        let levels = self.codebook().levels;
        let s = self.scale(t);
        (0..self.head_dim)
            .map(|i| s * levels[usize::from(self.code(t, i))])
            .collect()
    }

    /// Checks the code width and array lengths (for data read from a file; every scale
    /// byte is valid).
    pub fn validate(&self) -> Result<()> {
        let expect = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(VidkvError::CorruptPacked(format!(
                    "rotated {what}: {got} words, expected {want}"
                )))
            }
        };
        if Codebook::new(self.bits).is_none() {
            return Err(VidkvError::CorruptPacked(format!(
                "rotated rows with {} bits per code",
                self.bits
            )));
        }
        let wpt = Self::words_per_token(self.bits, self.head_dim);
        expect("codes", self.codes.len(), self.tokens * wpt)?;
        expect("scales", self.scales.len(), self.tokens.div_ceil(4))?;
        expect("state", self.state.mean.len(), self.head_dim.div_ceil(2))?;
        Ok(())
    }
}

/// The `bits`-bit code at bit `at` of `words` (LSB first; it may span two words).
pub(crate) fn read_code(words: &[u32], at: usize, bits: u8) -> u8 {
    let bits = usize::from(bits);
    let (word, shift) = (at / 32, at % 32);
    let mut raw = u64::from(words[word]) >> shift;
    if shift + bits > 32 {
        raw |= u64::from(words[word + 1]) << (32 - shift);
    }
    (raw & ((1 << bits) - 1)) as u8
}

/// The 3-bit per-group value means.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupMeans {
    pub groups: usize,
    /// Tokens per group.
    pub group_size: usize,
    pub head_dim: usize,
    /// Per group ⌈d/10⌉ words of ten codes z + 3.
    pub codes: Vec<u32>,
    /// The f16 steps D, two groups per word.
    pub steps: Vec<u32>,
}

impl GroupMeans {
    /// Code words per group.
    pub fn words_per_group(d: usize) -> usize {
        d.div_ceil(MEAN_CODES_PER_WORD)
    }

    /// Stored words for `groups` groups.
    pub fn words(d: usize, groups: usize) -> usize {
        groups * Self::words_per_group(d) + groups.div_ceil(2)
    }

    /// z of channel `c` in group `g` (−3…3).
    pub fn code(&self, g: usize, c: usize) -> i32 {
        let word = self.codes[g * Self::words_per_group(self.head_dim) + c / MEAN_CODES_PER_WORD];
        (word >> (3 * (c % MEAN_CODES_PER_WORD)) & 7) as i32 - MEAN_CODE_LIMIT
    }

    /// The step D of group `g`.
    pub fn step(&self, g: usize) -> f32 {
        f16_at(&self.steps, g)
    }

    /// μ_g = m + D·z.
    pub fn mean(&self, g: usize, state: &RotatedState) -> Vec<f32> {
        let step = self.step(g);
        (0..self.head_dim)
            .map(|c| state.mean_value(c) + step * self.code(g, c) as f32)
            .collect()
    }

    /// Checks array lengths and codes (for data read from a file).
    pub fn validate(&self) -> Result<()> {
        let want = Self::words(self.head_dim, self.groups);
        let got = self.codes.len() + self.steps.len();
        if self.steps.len() != self.groups.div_ceil(2) || got != want {
            return Err(VidkvError::CorruptPacked(format!(
                "group means: {got} words, expected {want}"
            )));
        }
        for g in 0..self.groups {
            if (0..self.head_dim).any(|c| self.code(g, c) > MEAN_CODE_LIMIT) {
                return Err(VidkvError::CorruptPacked(format!(
                    "group {g} has a mean code above 6"
                )));
            }
        }
        Ok(())
    }
}

/// The centre each token is coded against: μ_g of its group with group means, else m.
pub struct Centres {
    centres: Vec<Vec<f32>>,
    group_size: usize,
}

impl Centres {
    /// The centres of a head with `state` and optional group `means`.
    pub fn new(state: &RotatedState, d: usize, means: Option<&GroupMeans>) -> Self {
        match means {
            Some(means) => Centres {
                centres: (0..means.groups).map(|g| means.mean(g, state)).collect(),
                group_size: means.group_size,
            },
            None => Centres {
                centres: vec![state.means(d)],
                group_size: usize::MAX,
            },
        }
    }

    /// The centre of token `t`.
    pub fn of(&self, t: usize) -> &[f32] {
        &self.centres[t / self.group_size]
    }
}

/// What a rotated quantization needs besides the rows: the transform, codebook and state.
pub struct RotatedQuantizer<'a> {
    pub rotation: &'a Rotation,
    pub book: Codebook,
    pub state: &'a RotatedState,
}

impl RotatedQuantizer<'_> {
    /// Codes one token `x` against the uncentred and the `centre`d row; writes its codes and
    /// returns its scale byte and squared error.
    pub fn token(&self, x: &[f32], centre: &[f32], codes: &mut [u8]) -> (u8, f32) {
        let base = self.state.base();
        let mut plain = x.to_vec();
        self.rotation.rotate(&mut plain);
        let plain_fit = fit_row(&plain, self.book, base, codes);
        let mut centred: Vec<f32> = x.iter().zip(centre).map(|(&v, &c)| v - c).collect();
        self.rotation.rotate(&mut centred);
        let mut centred_codes = vec![0u8; codes.len()];
        let centred_fit = fit_row(&centred, self.book, base, &mut centred_codes);
        if centred_fit.error < plain_fit.error {
            codes.copy_from_slice(&centred_codes);
            (FLAG_BIT | centred_fit.scale_code, centred_fit.error)
        } else {
            (plain_fit.scale_code, plain_fit.error)
        }
    }
}

/// Packs `codes` (one per element) of `bits` bits into `out` from bit `offset`, LSB first.
pub(crate) fn pack_codes(codes: &[u8], bits: u8, offset: usize, out: &mut [u32]) {
    let bits = usize::from(bits);
    for (i, &c) in codes.iter().enumerate() {
        let at = offset + i * bits;
        let value = u64::from(c) << (at % 32);
        out[at / 32] |= value as u32;
        if at % 32 + bits > 32 {
            out[at / 32 + 1] |= (value >> 32) as u32;
        }
    }
}

/// The head's state: the one already fixed in `state`, or (at the head's first
/// quantization) one fitted to the first [`STATE_GROUPS`] groups of `x` and kept there.
pub fn head_state(
    x: &[f32],
    rotation: &Rotation,
    group_size: usize,
    state: &mut Option<RotatedState>,
) -> RotatedState {
    let first = (STATE_GROUPS * group_size * rotation.dim()).min(x.len());
    state
        .get_or_insert_with(|| RotatedState::fit(&x[..first], rotation))
        .clone()
}

/// Quantizes one head's rows `x` (`[tokens, d]`, whole groups) with `bits`-bit per-token
/// codes, centred on the per-head mean or, with `group_means`, on fitted group means;
/// `state` as in [`head_state`].
pub fn quantize_head(
    x: &[f32],
    rotation: &Rotation,
    bits: u8,
    group_size: usize,
    group_means: bool,
    state: &mut Option<RotatedState>,
) -> (RotatedRows, Option<GroupMeans>) {
    let d = rotation.dim();
    let state = head_state(x, rotation, group_size, state);
    let quantizer = RotatedQuantizer {
        rotation,
        book: Codebook::new(bits).expect("validate checked the bits"),
        state: &state,
    };
    let means = group_means.then(|| fit_group_means(x, d, group_size, &state));
    let rows = quantize_rows(x, &quantizer, &Centres::new(&state, d, means.as_ref()));
    (rows, means)
}

/// Quantizes `x` (`[tokens, d]`, whole groups) against `centres`, returning the packed rows.
pub fn quantize_rows(
    x: &[f32],
    quantizer: &RotatedQuantizer<'_>,
    centres: &Centres,
) -> RotatedRows {
    let d = quantizer.rotation.dim();
    let tokens = x.len() / d;
    let bits = quantizer.book.bits();
    let wpt = RotatedRows::words_per_token(bits, d);
    let mut codes = vec![0u32; tokens * wpt];
    let mut scales = vec![0u32; tokens.div_ceil(4)];
    let mut token_codes = vec![0u8; d];
    for (t, row) in x.chunks_exact(d).enumerate() {
        let (byte, _) = quantizer.token(row, centres.of(t), &mut token_codes);
        pack_codes(&token_codes, bits, 0, &mut codes[t * wpt..(t + 1) * wpt]);
        scales[t / 4] |= u32::from(byte) << (8 * (t % 4));
    }
    RotatedRows {
        tokens,
        head_dim: d,
        bits,
        state: quantizer.state.clone(),
        codes,
        scales,
    }
}

/// The group means of `x` (`[groups · group_size, d]`) around the state's mean.
pub fn fit_group_means(x: &[f32], d: usize, group_size: usize, state: &RotatedState) -> GroupMeans {
    let groups = x.len() / (d * group_size);
    let m = state.means(d);
    let wpg = GroupMeans::words_per_group(d);
    let mut codes = vec![0u32; groups * wpg];
    let mut steps = Vec::with_capacity(groups);
    for (g, group) in x.chunks_exact(d * group_size).enumerate() {
        let mut r = vec![0.0f32; d];
        for row in group.chunks_exact(d) {
            for ((s, &v), &mc) in r.iter_mut().zip(row).zip(&m) {
                *s += v - mc;
            }
        }
        for s in r.iter_mut() {
            *s /= group_size as f32;
        }
        let largest = r.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let step = f16::from_f32(largest * ONE_THIRD).to_f32();
        for (c, &rc) in r.iter().enumerate() {
            let magnitude = [0.5f32, 1.5, 2.5]
                .iter()
                .filter(|&&k| step > 0.0 && rc.abs() >= step * k)
                .count() as i32;
            let z = if rc < 0.0 { -magnitude } else { magnitude };
            codes[g * wpg + c / MEAN_CODES_PER_WORD] |=
                ((z + MEAN_CODE_LIMIT) as u32) << (3 * (c % MEAN_CODES_PER_WORD));
        }
        steps.push(step);
    }
    GroupMeans {
        groups,
        group_size,
        head_dim: d,
        codes,
        steps: pack_f16_slice(&steps),
    }
}
