//! The orthonormal (block-)Hadamard rotation over head_dim used by the rotated schemes.
//!
//! A power-of-two `d` is one block: Rot = H_d/√d with H the Sylvester Hadamard matrix
//! (H₁ = \[1\], H₂ₙ = [[Hₙ, Hₙ], [Hₙ, −Hₙ]]). Any other multiple of [`MIN_BLOCK`] is split
//! into power-of-two blocks by its binary digits, largest first (80 = 64 + 16,
//! 96 = 64 + 32, 112 = 64 + 32 + 16, 160 = 128 + 32), each rotated on its own: the matrix
//! is block-diagonal, so it stays symmetric and orthogonal and is its own inverse.
//!
//! The fast Walsh–Hadamard transform runs its butterfly stages in a fixed order (span 1, 2,
//! 4, … within each block; one add and one subtract per pair) and then multiplies by the
//! block's f32 constant 1/√n, so a GPU kernel with the same stages computes the same bits.

use std::ops::{Add, Mul, Sub};

use crate::error::{Result, VidkvError};

/// The smallest Hadamard block: a head_dim must be a multiple of it.
pub const MIN_BLOCK: usize = 16;

/// The rotation of one head_dim: its blocks and their scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    /// Block lengths, largest first; they sum to head_dim.
    blocks: Vec<usize>,
}

impl Rotation {
    /// The rotation for `head_dim`, which must be a positive multiple of [`MIN_BLOCK`].
    pub fn new(head_dim: usize) -> Result<Self> {
        if head_dim == 0 || head_dim % MIN_BLOCK != 0 {
            return Err(VidkvError::InvalidConfig(format!(
                "the rotated schemes need a head_dim that is a positive multiple of \
                 {MIN_BLOCK} (split into power-of-two Hadamard blocks), got {head_dim}"
            )));
        }
        let blocks = (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(|&block| head_dim & block != 0)
            .collect();
        Ok(Rotation { blocks })
    }

    /// The one-block rotation H_n/√n of a power of two `n` (e.g. across a group's tokens).
    pub fn power_of_two(n: usize) -> Self {
        debug_assert!(n.is_power_of_two());
        Rotation { blocks: vec![n] }
    }

    /// head_dim.
    pub fn dim(&self) -> usize {
        self.blocks.iter().sum()
    }

    /// Block lengths, largest first.
    pub fn blocks(&self) -> &[usize] {
        &self.blocks
    }

    /// The f32 constant 1/√n that ends the transform of an `n`-long block.
    pub fn block_scale(n: usize) -> f32 {
        (1.0 / (n as f64).sqrt()) as f32
    }

    /// Rotates one f32 row in place (`x.len()` = head_dim): x ← x·Rot.
    pub fn rotate(&self, x: &mut [f32]) {
        self.rotate_with(x, Self::block_scale);
    }

    /// Rotates one f64 row in place, for accumulations that must not add f32 rounding.
    pub fn rotate_f64(&self, x: &mut [f64]) {
        self.rotate_with(x, |n| 1.0 / (n as f64).sqrt());
    }

    fn rotate_with<T>(&self, x: &mut [T], scale: impl Fn(usize) -> T)
    where
        T: Copy + Add<Output = T> + Sub<Output = T> + Mul<Output = T>,
    {
        let mut start = 0;
        for &n in &self.blocks {
            let block = &mut x[start..start + n];
            walsh_hadamard(block);
            let s = scale(n);
            for v in block.iter_mut() {
                *v = *v * s;
            }
            start += n;
        }
    }
}

/// The unscaled fast Walsh–Hadamard transform of a power-of-two-long slice, in place.
fn walsh_hadamard<T>(x: &mut [T])
where
    T: Copy + Add<Output = T> + Sub<Output = T>,
{
    let n = x.len();
    let mut span = 1;
    while span < n {
        for pair_start in (0..n).step_by(2 * span) {
            for i in pair_start..pair_start + span {
                let (a, b) = (x[i], x[i + span]);
                x[i] = a + b;
                x[i + span] = a - b;
            }
        }
        span *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_binary_digits() {
        assert_eq!(Rotation::new(128).unwrap().blocks(), &[128]);
        assert_eq!(Rotation::new(80).unwrap().blocks(), &[64, 16]);
        assert_eq!(Rotation::new(112).unwrap().blocks(), &[64, 32, 16]);
        assert_eq!(Rotation::new(160).unwrap().blocks(), &[128, 32]);
        assert!(Rotation::new(0).is_err());
        assert!(Rotation::new(72).is_err());
    }

    #[test]
    fn rotation_is_orthogonal_and_its_own_inverse() {
        for d in [16, 64, 80, 96, 128, 160, 256] {
            let rot = Rotation::new(d).unwrap();
            let x: Vec<f64> = (0..d).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
            let mut y = x.clone();
            rot.rotate_f64(&mut y);
            let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
            assert!((norm(&x) - norm(&y)).abs() < 1e-9 * norm(&x));
            rot.rotate_f64(&mut y);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn first_row_of_a_block_is_the_scaled_sum() {
        let rot = Rotation::new(16).unwrap();
        let mut x = [1.0f32; 16];
        rot.rotate(&mut x);
        assert!((x[0] - 4.0).abs() < 1e-6);
        assert!(x[1..].iter().all(|v| v.abs() < 1e-6));
    }
}
