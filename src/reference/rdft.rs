//! The real DFT over a head's normal key channels, in the compact Hermitian layout (spec §4.4).
//!
//! For n real inputs x₀…x_{n−1} the n stored coefficients are
//!
//! ```text
//! c₀        = Re F₀
//! c_{2j−1}  = Re F_j,  c_{2j} = Im F_j        j = 1 … ⌈n/2⌉ − 1
//! c_{n−1}   = Re F_{n/2}                      (n even only)
//! ```
//!
//! with F = FFT(x) unnormalised. Any n ≥ 1 works, odd and non-power-of-two included. The
//! inverse applies the 1/n normalisation, so `inverse(forward(x)) == x` up to rounding.
//! The transforms run in f64 through `realfft`, so the reference is as exact as f32 data allows.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// Forward and inverse compact real DFT of one length, with plans made once.
pub struct CompactRdft {
    n: usize,
    forward: Arc<dyn RealToComplex<f64>>,
    inverse: Arc<dyn ComplexToReal<f64>>,
}

impl CompactRdft {
    /// Plans the transforms for `n ≥ 1` channels.
    pub fn new(n: usize) -> Self {
        assert!(n >= 1, "the compact real DFT needs at least one channel");
        let mut planner = RealFftPlanner::<f64>::new();
        CompactRdft {
            n,
            forward: planner.plan_fft_forward(n),
            inverse: planner.plan_fft_inverse(n),
        }
    }

    /// Transform length.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: a transform has at least one channel.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Compact coefficients of `x` (length n) into `out` (length n).
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = self.n;
        let mut input: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut spectrum = self.forward.make_output_vec();
        self.forward
            .process(&mut input, &mut spectrum)
            .expect("buffer lengths come from the plan");
        out[0] = spectrum[0].re as f32;
        for j in 1..=(n - 1) / 2 {
            out[2 * j - 1] = spectrum[j].re as f32;
            out[2 * j] = spectrum[j].im as f32;
        }
        if n % 2 == 0 && n > 1 {
            out[n - 1] = spectrum[n / 2].re as f32;
        }
    }

    /// Real signal (length n) from compact coefficients (length n), with the 1/n factor.
    pub fn inverse(&self, coefficients: &[f32], out: &mut [f32]) {
        let n = self.n;
        let mut spectrum = self.inverse.make_input_vec();
        spectrum[0] = Complex::new(f64::from(coefficients[0]), 0.0);
        for j in 1..=(n - 1) / 2 {
            spectrum[j] = Complex::new(
                f64::from(coefficients[2 * j - 1]),
                f64::from(coefficients[2 * j]),
            );
        }
        if n % 2 == 0 && n > 1 {
            spectrum[n / 2] = Complex::new(f64::from(coefficients[n - 1]), 0.0);
        }
        let mut signal = self.inverse.make_output_vec();
        self.inverse
            .process(&mut spectrum, &mut signal)
            .expect("the spectrum is Hermitian by construction");
        let norm = 1.0 / n as f64;
        for (o, s) in out.iter_mut().zip(&signal) {
            *o = (s * norm) as f32;
        }
    }

    /// Mᵀq, where M is the n × n inverse transform (`inverse(c) = M·c`).
    ///
    /// Since q·(M·ĉ) = (Mᵀq)·ĉ, attention can dot a transformed query straight with
    /// dequantized coefficients. Mᵀq is the forward transform of q weighted by 1/n for the
    /// real-only bins (F₀ and the Nyquist bin) and 2/n for each cos/sin pair.
    pub fn transpose_inverse(&self, q: &[f32], out: &mut [f32]) {
        let n = self.n;
        self.forward(q, out);
        let single = 1.0 / n as f32;
        for (i, o) in out.iter_mut().enumerate() {
            let is_real_only = i == 0 || (n % 2 == 0 && i == n - 1);
            *o *= if is_real_only { single } else { 2.0 * single };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_for_every_length() {
        for n in 1..=40 {
            let rdft = CompactRdft::new(n);
            let x: Vec<f32> = (0..n).map(|i| ((i * 7 + 3) % 11) as f32 - 5.0).collect();
            let mut c = vec![0.0; n];
            let mut y = vec![0.0; n];
            rdft.forward(&x, &mut c);
            rdft.inverse(&c, &mut y);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-5, "n = {n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn transpose_inverse_matches_dot_products() {
        for n in [1usize, 2, 3, 5, 8, 13, 32, 48, 64] {
            let rdft = CompactRdft::new(n);
            let q: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let c: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3).cos()).collect();
            let mut x = vec![0.0; n];
            rdft.inverse(&c, &mut x);
            let mut mq = vec![0.0; n];
            rdft.transpose_inverse(&q, &mut mq);
            let direct: f32 = q.iter().zip(&x).map(|(a, b)| a * b).sum();
            let folded: f32 = mq.iter().zip(&c).map(|(a, b)| a * b).sum();
            assert!(
                (direct - folded).abs() < 1e-5,
                "n = {n}: {direct} vs {folded}"
            );
        }
    }
}
