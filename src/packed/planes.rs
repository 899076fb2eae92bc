//! Bit planes: the u32-aligned arrays that hold codes and f16 metadata.
//!
//! Each plane quantizes a logical row-major matrix `[rows, len]` in groups of `group_size`
//! consecutive elements of a row (the last group of a row may be partial). Rows are
//! channels for per-channel schemes (elements run along tokens) and tokens for per-token
//! schemes. Every array is indexed `[row-ish][group]` with the group fastest, so that GPU
//! invocations that each own one group of tokens read consecutive words at every channel
//! step, and a group's record never shares a word with another group.
//!
//! | plane | codes | metadata |
//! |---|---|---|
//! | [`TwoBitPlane`] | `[row][group]`, 16 codes per u32, LSB first, ⌈2G/32⌉ words | `[row][group]`: (scale, min) as one f16 pair |
//! | [`SignPlane`] | `[row][group]`, bit i = code i, ⌈G/32⌉ words | `[row pair][group]`: f16 scales of rows 2r, 2r+1 |
//! | [`TernaryPlane`] | `[5-row block][group]`, ⌈G/4⌉ words: byte i holds element i of the block's 5 rows as base-3 digits | `[row pair][group]`: f16 scales |

use half::f16;

use crate::config::TernaryScale;
use crate::error::{Result, VidkvError};
use crate::reference::quantizers::{
    dequantize_2bit, dequantize_sign, dequantize_ternary, quantize_2bit, quantize_sign,
    quantize_ternary, AsymParams,
};

/// Groups of a trit block: 3⁵ = 243 ≤ 256, so five trits share one byte.
pub const TRITS_PER_BYTE: usize = 5;

/// Packs two f32 values as f16 into one u32, the first in the low half (WGSL `pack2x16float`).
pub fn pack_f16_pair(lo: f32, hi: f32) -> u32 {
    u32::from(f16::from_f32(lo).to_bits()) | (u32::from(f16::from_f32(hi).to_bits()) << 16)
}

/// Unpacks a u32 into its two f16 halves as f32 (WGSL `unpack2x16float`).
pub fn unpack_f16_pair(word: u32) -> (f32, f32) {
    (
        f16::from_bits(word as u16).to_f32(),
        f16::from_bits((word >> 16) as u16).to_f32(),
    )
}

/// Reads f16 number `i` from a slice of f16 pairs.
pub fn f16_at(words: &[u32], i: usize) -> f32 {
    let (lo, hi) = unpack_f16_pair(words[i / 2]);
    if i % 2 == 0 {
        lo
    } else {
        hi
    }
}

/// Packs f32 values as f16 pairs (an odd count gets a zero pad).
pub fn pack_f16_slice(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|pair| pack_f16_pair(pair[0], pair.get(1).copied().unwrap_or(0.0)))
        .collect()
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Shape of a grouped matrix: `rows` rows of `len` elements in groups of `group_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupedShape {
    pub rows: usize,
    pub len: usize,
    pub group_size: usize,
}

impl GroupedShape {
    /// Groups per row (the last may be partial).
    pub fn groups(&self) -> usize {
        ceil_div(self.len, self.group_size)
    }
    /// Element range of group `g` within a row.
    pub fn group_range(&self, g: usize) -> std::ops::Range<usize> {
        let start = g * self.group_size;
        start..(start + self.group_size).min(self.len)
    }
    fn check(&self, data: &[f32]) {
        debug_assert_eq!(data.len(), self.rows * self.len);
    }
}

/// 2-bit asymmetric codes with an f16 (scale, min) pair per group.
#[derive(Clone, Debug, PartialEq)]
pub struct TwoBitPlane {
    pub shape: GroupedShape,
    /// `[row][group][⌈2G/32⌉ words]`.
    pub codes: Vec<u32>,
    /// `[row][group]`: scale in the low f16, min in the high f16.
    pub params: Vec<u32>,
}

impl TwoBitPlane {
    /// Words of codes per group.
    pub fn words_per_group(group_size: usize) -> usize {
        ceil_div(2 * group_size, 32)
    }

    /// Total u32 words a plane of this shape stores.
    pub fn words(shape: GroupedShape) -> usize {
        shape.rows * shape.groups() * (Self::words_per_group(shape.group_size) + 1)
    }

    /// Quantizes a row-major `[rows, len]` matrix.
    pub fn quantize(data: &[f32], shape: GroupedShape) -> Self {
        shape.check(data);
        let wpg = Self::words_per_group(shape.group_size);
        let groups = shape.groups();
        let mut codes = vec![0u32; shape.rows * groups * wpg];
        let mut params = vec![0u32; shape.rows * groups];
        let mut group_codes = vec![0u8; shape.group_size];
        for r in 0..shape.rows {
            let row = &data[r * shape.len..(r + 1) * shape.len];
            for g in 0..groups {
                let range = shape.group_range(g);
                let n = range.len();
                let p = quantize_2bit(&row[range], &mut group_codes[..n]);
                params[r * groups + g] = pack_f16_pair(p.scale, p.min);
                let words = &mut codes[(r * groups + g) * wpg..][..wpg];
                for (i, &c) in group_codes[..n].iter().enumerate() {
                    words[i / 16] |= u32::from(c) << (2 * (i % 16));
                }
            }
        }
        TwoBitPlane {
            shape,
            codes,
            params,
        }
    }

    /// The stored (f16-rounded) parameters of a group.
    pub fn params(&self, row: usize, group: usize) -> AsymParams {
        let (scale, min) = unpack_f16_pair(self.params[row * self.shape.groups() + group]);
        AsymParams { scale, min }
    }

    /// Code of element `i` of `row`.
    pub fn code(&self, row: usize, i: usize) -> u8 {
        let g = i / self.shape.group_size;
        let j = i % self.shape.group_size;
        let wpg = Self::words_per_group(self.shape.group_size);
        let word = self.codes[(row * self.shape.groups() + g) * wpg + j / 16];
        ((word >> (2 * (j % 16))) & 3) as u8
    }

    /// Dequantized value of element `i` of `row`.
    pub fn value(&self, row: usize, i: usize) -> f32 {
        dequantize_2bit(
            self.code(row, i),
            self.params(row, i / self.shape.group_size),
        )
    }

    /// The whole matrix, dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_rows(self.shape, |r, i| self.value(r, i))
    }

    /// Checks that the arrays have the sizes the shape implies.
    pub fn validate(&self) -> Result<()> {
        let groups = self.shape.rows * self.shape.groups();
        expect_len(
            "2-bit codes",
            self.codes.len(),
            groups * Self::words_per_group(self.shape.group_size),
        )?;
        expect_len("2-bit params", self.params.len(), groups)
    }
}

/// 1-bit sign codes with an f16 mean-|x| scale per group.
#[derive(Clone, Debug, PartialEq)]
pub struct SignPlane {
    pub shape: GroupedShape,
    /// `[row][group][⌈G/32⌉ words]`; bit i = 1 when element i was ≥ 0.
    pub codes: Vec<u32>,
    /// `[⌈rows/2⌉][group]`: f16 scales of rows 2r (low half) and 2r + 1 (high half).
    pub scales: Vec<u32>,
}

impl SignPlane {
    /// Words of codes per group.
    pub fn words_per_group(group_size: usize) -> usize {
        ceil_div(group_size, 32)
    }

    /// Total u32 words a plane of this shape stores.
    pub fn words(shape: GroupedShape) -> usize {
        let groups = shape.groups();
        groups * (shape.rows * Self::words_per_group(shape.group_size) + ceil_div(shape.rows, 2))
    }

    /// Quantizes a row-major `[rows, len]` matrix.
    pub fn quantize(data: &[f32], shape: GroupedShape) -> Self {
        shape.check(data);
        let wpg = Self::words_per_group(shape.group_size);
        let groups = shape.groups();
        let mut codes = vec![0u32; shape.rows * groups * wpg];
        let mut scales = ScaleGrid::new(shape);
        let mut group_codes = vec![0u8; shape.group_size];
        for r in 0..shape.rows {
            let row = &data[r * shape.len..(r + 1) * shape.len];
            for g in 0..groups {
                let range = shape.group_range(g);
                let n = range.len();
                scales.set(r, g, quantize_sign(&row[range], &mut group_codes[..n]));
                let words = &mut codes[(r * groups + g) * wpg..][..wpg];
                for (i, &c) in group_codes[..n].iter().enumerate() {
                    words[i / 32] |= u32::from(c) << (i % 32);
                }
            }
        }
        let scales = scales.pack();
        SignPlane {
            shape,
            codes,
            scales,
        }
    }

    /// The stored (f16-rounded) scale of a group.
    pub fn scale(&self, row: usize, group: usize) -> f32 {
        scale_at(&self.scales, self.shape, row, group)
    }

    /// Code (0 or 1) of element `i` of `row`.
    pub fn code(&self, row: usize, i: usize) -> u8 {
        let g = i / self.shape.group_size;
        let j = i % self.shape.group_size;
        let wpg = Self::words_per_group(self.shape.group_size);
        let word = self.codes[(row * self.shape.groups() + g) * wpg + j / 32];
        ((word >> (j % 32)) & 1) as u8
    }

    /// Dequantized value of element `i` of `row`: ±scale.
    pub fn value(&self, row: usize, i: usize) -> f32 {
        dequantize_sign(
            self.code(row, i),
            self.scale(row, i / self.shape.group_size),
        )
    }

    /// The whole matrix, dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_rows(self.shape, |r, i| self.value(r, i))
    }

    /// Checks that the arrays have the sizes the shape implies.
    pub fn validate(&self) -> Result<()> {
        let groups = self.shape.groups();
        expect_len(
            "sign codes",
            self.codes.len(),
            self.shape.rows * groups * Self::words_per_group(self.shape.group_size),
        )?;
        expect_len(
            "sign scales",
            self.scales.len(),
            ceil_div(self.shape.rows, 2) * groups,
        )
    }
}

/// Ternary codes, five rows to a block, with an f16 scale per group.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryPlane {
    pub shape: GroupedShape,
    /// `[⌈rows/5⌉][group][⌈G/4⌉ words]`; byte i of a (block, group) record is
    /// Σ_j (t_{5b+j, i} + 1)·3^j over the block's rows j = 0…4, with t_{r,i} the trit of
    /// element i of the group in row r.
    pub codes: Vec<u32>,
    /// `[⌈rows/2⌉][group]`: f16 scales of rows 2r (low half) and 2r + 1 (high half).
    pub scales: Vec<u32>,
}

impl TernaryPlane {
    /// Words of one (block, group) record.
    pub fn words_per_record(group_size: usize) -> usize {
        ceil_div(group_size, 4)
    }

    /// Total u32 words a plane of this shape stores.
    pub fn words(shape: GroupedShape) -> usize {
        shape.groups()
            * (ceil_div(shape.rows, TRITS_PER_BYTE) * Self::words_per_record(shape.group_size)
                + ceil_div(shape.rows, 2))
    }

    /// Quantizes a row-major `[rows, len]` matrix with threshold γ and a scale rule.
    pub fn quantize(data: &[f32], shape: GroupedShape, gamma: f32, rule: TernaryScale) -> Self {
        shape.check(data);
        let wpr = Self::words_per_record(shape.group_size);
        let groups = shape.groups();
        let mut codes = vec![0u32; ceil_div(shape.rows, TRITS_PER_BYTE) * groups * wpr];
        let mut scales = ScaleGrid::new(shape);
        let mut trits = vec![0i8; shape.group_size];
        for r in 0..shape.rows {
            let row = &data[r * shape.len..(r + 1) * shape.len];
            let weight = 3u32.pow((r % TRITS_PER_BYTE) as u32);
            for g in 0..groups {
                let range = shape.group_range(g);
                let n = range.len();
                scales.set(
                    r,
                    g,
                    quantize_ternary(&row[range], gamma, rule, &mut trits[..n]),
                );
                let record = &mut codes[((r / TRITS_PER_BYTE) * groups + g) * wpr..][..wpr];
                for (i, &t) in trits[..n].iter().enumerate() {
                    record[i / 4] += ((t + 1) as u32 * weight) << (8 * (i % 4));
                }
            }
        }
        TernaryPlane {
            shape,
            codes,
            scales: scales.pack(),
        }
    }

    /// The stored (f16-rounded) scale of a group.
    pub fn scale(&self, row: usize, group: usize) -> f32 {
        scale_at(&self.scales, self.shape, row, group)
    }

    /// Trit (−1, 0 or +1) of element `i` of `row`.
    pub fn trit(&self, row: usize, i: usize) -> i8 {
        let g = i / self.shape.group_size;
        let j = i % self.shape.group_size;
        let wpr = Self::words_per_record(self.shape.group_size);
        let record = ((row / TRITS_PER_BYTE) * self.shape.groups() + g) * wpr;
        let byte = (self.codes[record + j / 4] >> (8 * (j % 4))) & 0xff;
        let digit = (byte / 3u32.pow((row % TRITS_PER_BYTE) as u32)) % 3;
        digit as i8 - 1
    }

    /// Dequantized value of element `i` of `row`: t · scale.
    pub fn value(&self, row: usize, i: usize) -> f32 {
        dequantize_ternary(
            self.trit(row, i),
            self.scale(row, i / self.shape.group_size),
        )
    }

    /// The whole matrix, dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_rows(self.shape, |r, i| self.value(r, i))
    }

    /// Checks sizes and that every byte is a valid five-trit number (< 243).
    pub fn validate(&self) -> Result<()> {
        let groups = self.shape.groups();
        expect_len(
            "ternary codes",
            self.codes.len(),
            ceil_div(self.shape.rows, TRITS_PER_BYTE)
                * groups
                * Self::words_per_record(self.shape.group_size),
        )?;
        expect_len(
            "ternary scales",
            self.scales.len(),
            ceil_div(self.shape.rows, 2) * groups,
        )?;
        if self
            .codes
            .iter()
            .any(|w| w.to_le_bytes().iter().any(|&b| b >= 243))
        {
            return Err(VidkvError::CorruptPacked(
                "a ternary byte is ≥ 243, not five base-3 digits".into(),
            ));
        }
        Ok(())
    }
}

/// f32 scales per (row, group), packed as f16 pairs of rows: `[⌈rows/2⌉][group]`.
struct ScaleGrid {
    shape: GroupedShape,
    values: Vec<f32>,
}

impl ScaleGrid {
    fn new(shape: GroupedShape) -> Self {
        ScaleGrid {
            shape,
            values: vec![0.0; ceil_div(shape.rows, 2) * 2 * shape.groups()],
        }
    }

    fn set(&mut self, row: usize, group: usize, scale: f32) {
        let groups = self.shape.groups();
        self.values[((row / 2) * groups + group) * 2 + row % 2] = scale;
    }

    fn pack(self) -> Vec<u32> {
        pack_f16_slice(&self.values)
    }
}

/// Scale of (row, group) in a `[⌈rows/2⌉][group]` grid of f16 pairs.
fn scale_at(scales: &[u32], shape: GroupedShape, row: usize, group: usize) -> f32 {
    let (lo, hi) = unpack_f16_pair(scales[(row / 2) * shape.groups() + group]);
    if row % 2 == 0 {
        lo
    } else {
        hi
    }
}

/// f16 rows stored exactly: `[rows][⌈width/2⌉]` f16 pairs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ExactRows {
    pub rows: usize,
    pub width: usize,
    pub data: Vec<u32>,
}

impl ExactRows {
    /// Total u32 words for `rows` rows of `width` f16 values.
    pub fn words(rows: usize, width: usize) -> usize {
        rows * ceil_div(width, 2)
    }

    /// Stores the given row-major rows as f16.
    pub fn from_rows(data: &[f32], width: usize) -> Self {
        let rows = data.len().checked_div(width).unwrap_or(0);
        let packed = data.chunks_exact(width).flat_map(pack_f16_slice).collect();
        ExactRows {
            rows,
            width,
            data: packed,
        }
    }

    /// Element `c` of row `r`.
    pub fn value(&self, r: usize, c: usize) -> f32 {
        f16_at(&self.data[r * ceil_div(self.width, 2)..], c)
    }

    /// Checks the array length.
    pub fn validate(&self) -> Result<()> {
        expect_len(
            "exact rows",
            self.data.len(),
            Self::words(self.rows, self.width),
        )
    }
}

fn dequantize_rows(shape: GroupedShape, value: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(shape.rows * shape.len);
    for r in 0..shape.rows {
        out.extend((0..shape.len).map(|i| value(r, i)));
    }
    out
}

fn expect_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(VidkvError::CorruptPacked(format!(
            "{what}: {got} words where the shape implies {expected}"
        )))
    }
}
