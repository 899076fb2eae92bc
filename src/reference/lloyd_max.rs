//! Gaussian Lloyd-Max codebooks and the per-row fit of the rotated schemes.
//!
//! After a Hadamard rotation the elements of a key or value row are close to Gaussian, and
//! the Lloyd-Max levels for N(0, 1) (1–4 bits; thresholds at the midpoints between levels)
//! are the least-squares codebook for them. One row y gets one scale s and one code per
//! element, ŷᵢ = s·L\[cᵢ\]:
//!
//! 1. start from s = √(π/2)·mean|y| (the Gaussian estimate of the RMS);
//! 2. twice: cᵢ = code(yᵢ/s), then the least-squares scale s = Σ yᵢ·L\[cᵢ\] / Σ L\[cᵢ\]²;
//! 3. code the scale in 7 bits on a log grid relative to a per-head base b:
//!    e = clamp(round(8·log2(s/b)) + 64, 1, 127), e = 0 only for an all-zero row;
//!    ŝ = b·2^((e − 64)/8);
//! 4. final codes with the decoded scale, cᵢ = code(yᵢ/ŝ).
//!
//! Written so that a GPU kernel can write the same codes: no division and no square root
//! decide a code (s is kept as a numerator/denominator pair and compared by products), the
//! log-grid rounding compares s against b·2^((2e − 129)/16) from a table of sixteenth
//! powers of two, and every sum over a row is a [`tree_sum`].

/// √(π/2): E|y| = σ·√(2/π) for a Gaussian, so √(π/2)·mean|y| estimates σ.
pub const SQRT_HALF_PI: f32 = 1.253_314_1;

/// 2^(k/16) for k = 0…15, as f32.
pub const SIXTEENTH_POWERS: [f32; 16] = [
    1.0,
    1.0442737,
    1.0905077,
    1.1387886,
    1.1892071,
    1.2418578,
    1.2968396,
    1.3542556,
    std::f32::consts::SQRT_2,
    1.4768262,
    1.5422108,
    1.6104903,
    1.6817929,
    1.7562522,
    1.8340081,
    1.9152066,
];

/// The scale code of an all-zero row.
pub const ZERO_SCALE_CODE: u8 = 0;
/// The largest scale code (7 bits; the byte's top bit is the centring flag).
pub const MAX_SCALE_CODE: u8 = 127;
/// The scale code of ŝ = b.
const UNIT_SCALE_CODE: i32 = 64;

/// A Gaussian Lloyd-Max codebook.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Codebook {
    /// The 2^bits levels, ascending.
    pub levels: &'static [f32],
}

const LEVELS_1: [f32; 2] = [-0.7979, 0.7979];
const LEVELS_2: [f32; 4] = [-1.5104, -0.4528, 0.4528, 1.5104];
const LEVELS_3: [f32; 8] = [
    -2.1519, -1.3439, -0.7560, -0.2451, 0.2451, 0.7560, 1.3439, 2.1519,
];
const LEVELS_4: [f32; 16] = [
    -2.7326, -2.0690, -1.6180, -1.2562, -0.9423, -0.6568, -0.3881, -0.1284, 0.1284, 0.3881, 0.6568,
    0.9423, 1.2562, 1.6180, 2.0690, 2.7326,
];

impl Codebook {
    /// The codebook of `bits` bits per element (1 to 4).
    pub fn new(bits: u8) -> Option<Self> {
        let levels: &'static [f32] = match bits {
            1 => &LEVELS_1,
            2 => &LEVELS_2,
            3 => &LEVELS_3,
            4 => &LEVELS_4,
            _ => return None,
        };
        Some(Codebook { levels })
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.levels.len().trailing_zeros() as u8
    }

    /// Threshold `i` (between levels i and i + 1): their midpoint.
    pub fn threshold(&self, i: usize) -> f32 {
        (self.levels[i] + self.levels[i + 1]) * 0.5
    }

    /// The code of y for the scale num/den (den > 0): the number of thresholds t with
    /// y·den > num·t.
    pub fn code_for_ratio(&self, y: f32, num: f32, den: f32) -> u8 {
        (0..self.levels.len() - 1)
            .filter(|&i| y * den > num * self.threshold(i))
            .count() as u8
    }

    /// The code of y for the scale s: the number of thresholds t with y > s·t.
    pub fn code(&self, y: f32, s: f32) -> u8 {
        (0..self.levels.len() - 1)
            .filter(|&i| y > s * self.threshold(i))
            .count() as u8
    }
}

/// Σ values in the order of a workgroup tree reduction: zero-padded to a power of two,
/// then the upper half added onto the lower half until one value is left.
pub fn tree_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut buffer: Vec<f32> = values.collect();
    buffer.resize(buffer.len().next_power_of_two(), 0.0);
    let mut half = buffer.len() / 2;
    while half > 0 {
        for i in 0..half {
            buffer[i] += buffer[i + half];
        }
        half /= 2;
    }
    buffer.first().copied().unwrap_or(0.0)
}

/// b·2^(m/16), with the power taken from the table and an exact power-of-two step.
fn base_times_sixteenth_power(base: f32, m: i32) -> f32 {
    let (whole, part) = (m.div_euclid(16), m.rem_euclid(16));
    base * SIXTEENTH_POWERS[part as usize] * f32::from_bits(((127 + whole) as u32) << 23)
}

/// The scale that code `e` stands for relative to `base`: 0 for [`ZERO_SCALE_CODE`], else
/// b·2^((e − 64)/8).
pub fn decode_scale(e: u8, base: f32) -> f32 {
    if e == ZERO_SCALE_CODE {
        0.0
    } else {
        base_times_sixteenth_power(base, 2 * (i32::from(e) - UNIT_SCALE_CODE))
    }
}

/// The scale code of s = num/den (num, den > 0): the largest e in 1…127 with
/// s ≥ b·2^((e − 64.5)/8) (the rounding boundary below e), or 1 if there is none.
fn encode_scale(num: f32, den: f32, base: f32) -> u8 {
    let at_least =
        |e: i32| num >= den * base_times_sixteenth_power(base, 2 * (e - UNIT_SCALE_CODE) - 1);
    let (mut lo, mut hi) = (1i32, i32::from(MAX_SCALE_CODE));
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if at_least(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo as u8
}

/// One row's fit: its scale code, decoded scale and squared error Σ(yᵢ − ŝ·L\[cᵢ\])².
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowFit {
    pub scale_code: u8,
    pub scale: f32,
    pub error: f32,
}

/// Fits one row `y` (see the module docs) with scale base `base` (> 0) and writes its codes.
pub fn fit_row(y: &[f32], book: Codebook, base: f32, codes: &mut [u8]) -> RowFit {
    let abs_sum = tree_sum(y.iter().map(|v| v.abs()));
    if abs_sum == 0.0 {
        codes.fill(0);
        return RowFit {
            scale_code: ZERO_SCALE_CODE,
            scale: 0.0,
            error: 0.0,
        };
    }
    let (mut num, mut den) = (SQRT_HALF_PI * abs_sum, y.len() as f32);
    for _ in 0..2 {
        for (c, &v) in codes.iter_mut().zip(y) {
            *c = book.code_for_ratio(v, num, den);
        }
        num = tree_sum(
            y.iter()
                .zip(codes.iter())
                .map(|(&v, &c)| v * book.levels[c as usize]),
        );
        den = tree_sum(
            codes
                .iter()
                .map(|&c| book.levels[c as usize] * book.levels[c as usize]),
        );
    }
    let scale_code = encode_scale(num, den, base);
    let scale = decode_scale(scale_code, base);
    for (c, &v) in codes.iter_mut().zip(y) {
        *c = book.code(v, scale);
    }
    let error = tree_sum(y.iter().zip(codes.iter()).map(|(&v, &c)| {
        let diff = v - scale * book.levels[c as usize];
        diff * diff
    }));
    RowFit {
        scale_code,
        scale,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_grid_rounds_log2() {
        let base = 0.37f32;
        for e in 1..=MAX_SCALE_CODE {
            let s = decode_scale(e, base);
            let expected = base * 2f32.powf((f32::from(e) - 64.0) / 8.0);
            assert!((s - expected).abs() <= 1e-5 * expected, "e = {e}");
            assert_eq!(encode_scale(s, 1.0, base), e);
            assert_eq!(encode_scale(s * 1.04, 1.0, base), e);
            assert_eq!(encode_scale(s * 0.96, 1.0, base), e);
        }
        assert_eq!(encode_scale(1e-9, 1.0, base), 1);
        assert_eq!(encode_scale(1e9, 1.0, base), MAX_SCALE_CODE);
    }

    #[test]
    fn codes_split_at_midpoints() {
        let book = Codebook::new(2).unwrap();
        assert_eq!(book.code(-2.0, 1.0), 0);
        assert_eq!(book.code(-0.5, 1.0), 1);
        assert_eq!(book.code(0.0, 1.0), 1);
        assert_eq!(book.code(0.5, 1.0), 2);
        assert_eq!(book.code(2.0, 1.0), 3);
        assert_eq!(book.code_for_ratio(0.5, 2.0, 2.0), 2);
        for bits in 1..=4 {
            assert_eq!(Codebook::new(bits).unwrap().bits(), bits);
        }
        assert!(Codebook::new(5).is_none());
    }

    #[test]
    fn fit_of_gaussian_like_row_reaches_lloyd_max_error() {
        // A deterministic, roughly Gaussian row: sums of uniform draws.
        let mut state = 1u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let y: Vec<f32> = (0..4096)
            .map(|_| (0..12).map(|_| uniform()).sum::<f32>())
            .collect();
        let energy = tree_sum(y.iter().map(|v| v * v));
        for (bits, lloyd_max) in [(1u8, 0.3634f32), (2, 0.1175), (3, 0.03454), (4, 0.009497)] {
            let mut codes = vec![0u8; y.len()];
            let fit = fit_row(&y, Codebook::new(bits).unwrap(), 1.0, &mut codes);
            let relative = fit.error / energy;
            assert!(relative < lloyd_max * 1.12, "{bits} bits: {relative}");
        }
    }

    #[test]
    fn zero_row_gets_the_zero_code() {
        let mut codes = vec![9u8; 16];
        let fit = fit_row(&[0.0; 16], Codebook::new(2).unwrap(), 1.0, &mut codes);
        assert_eq!(fit.scale_code, ZERO_SCALE_CODE);
        assert!(codes.iter().all(|&c| c == 0));
    }
}
