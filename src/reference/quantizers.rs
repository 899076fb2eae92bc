//! Group quantizers (spec §3), in f32 with the corrected dequantization.
//!
//! Each function quantizes one group `x` (any length ≥ 1; `group_size` in production) and
//! writes one code per element. Rounding is half-to-even, the sign bit is `x >= 0`, and
//! ternary thresholds are strict, exactly as in the spec's test vectors.

use crate::config::TernaryScale;

/// Scale and minimum of a 2-bit asymmetric group: x̂ = code · scale + min.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AsymParams {
    pub scale: f32,
    pub min: f32,
}

/// Number of levels above zero of the 2-bit quantizer (2² − 1).
pub const TWO_BIT_MAX_CODE: f32 = 3.0;

/// 2-bit asymmetric min/max: scale = (max − min)/3, code = round_half_even(clamp((x − min)/scale, 0, 3)).
/// A constant group gets scale 0, codes 0 and decodes to its minimum.
pub fn quantize_2bit(x: &[f32], codes: &mut [u8]) -> AsymParams {
    let (min, max) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let scale = (max - min) / TWO_BIT_MAX_CODE;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = two_bit_code(v, min, scale);
    }
    AsymParams { scale, min }
}

/// The 2-bit code of one value for a given group minimum and scale.
pub fn two_bit_code(v: f32, min: f32, scale: f32) -> u8 {
    if scale > 0.0 {
        ((v - min) / scale)
            .clamp(0.0, TWO_BIT_MAX_CODE)
            .round_ties_even() as u8
    } else {
        0
    }
}

/// Dequantizes one 2-bit code.
pub fn dequantize_2bit(code: u8, params: AsymParams) -> f32 {
    f32::from(code) * params.scale + params.min
}

/// 1-bit sign: code = (x ≥ 0), scale = mean |x|; x̂ = ±scale.
pub fn quantize_sign(x: &[f32], codes: &mut [u8]) -> f32 {
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = u8::from(v >= 0.0);
    }
    abs_mean(x)
}

/// Dequantizes one sign code: (2c − 1) · scale.
pub fn dequantize_sign(code: u8, scale: f32) -> f32 {
    if code != 0 {
        scale
    } else {
        -scale
    }
}

/// Ternary: t = +1 if x > γ·m, −1 if x < −γ·m, else 0, with m = mean |x|.
/// Returns the scale s chosen by `rule`; x̂ = t · s.
pub fn quantize_ternary(x: &[f32], gamma: f32, rule: TernaryScale, trits: &mut [i8]) -> f32 {
    let mean = abs_mean(x);
    let threshold = gamma * mean;
    for (t, &v) in trits.iter_mut().zip(x) {
        *t = ternary_code(v, threshold);
    }
    match rule {
        TernaryScale::AbsMean => mean,
        TernaryScale::LeastSquares => {
            let (sum, count) = x
                .iter()
                .zip(trits.iter())
                .filter(|(_, &t)| t != 0)
                .fold((0.0f64, 0usize), |(s, n), (&v, _)| {
                    (s + f64::from(v.abs()), n + 1)
                });
            if count == 0 {
                0.0
            } else {
                (sum / count as f64) as f32
            }
        }
    }
}

/// The ternary code of one value for a threshold α (strict comparisons: |x| == α → 0).
pub fn ternary_code(v: f32, threshold: f32) -> i8 {
    if v > threshold {
        1
    } else if v < -threshold {
        -1
    } else {
        0
    }
}

/// Dequantizes one trit: t · scale.
pub fn dequantize_ternary(trit: i8, scale: f32) -> f32 {
    f32::from(trit) * scale
}

/// mean |x|, summed in f32 in element order: the exact order the GPU kernels use, so that
/// both produce the same scales.
pub fn abs_mean(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().fold(0.0f32, |s, v| s + v.abs()) / x.len() as f32
}
