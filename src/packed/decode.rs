//! Decoding a packed head back to dense rows (K̂, V̂): the exact sinks and tail, and the
//! quantized range from its planes, for every scheme.

use super::rotated::Centres;
use super::{PackedHead, PackedKeys, PackedValues, ValueSlot};
use crate::config::Grouping;
use crate::packed::planes::{ExactRows, TwoBitPlane};
use crate::reference::rdft::CompactRdft;

impl PackedHead {
    /// Dense K̂ of this head, `[tokens, head_dim]`.
    pub fn dequantize_keys(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![0.0; self.plan.tokens * d];
        self.fill_exact(&self.exact_keys, &mut out);
        let start = self.plan.quantized_start();
        let q = &mut out[start * d..self.plan.quantized_end() * d];
        match &self.keys {
            PackedKeys::Exact => {}
            PackedKeys::TwoBit { grouping, plane } => fill_two_bit(plane, *grouping, d, q),
            PackedKeys::Mixed(mixed) => {
                let split = mixed.split(d);
                for (row, &c) in split.outliers.iter().enumerate() {
                    for (t, token) in q.chunks_exact_mut(d).enumerate() {
                        token[c] = mixed.outliers.value(row, t);
                    }
                }
                let n = split.normals.len();
                if n > 0 {
                    let rdft = mixed.fft.then(|| CompactRdft::new(n));
                    let mut coefficients = vec![0.0; n];
                    let mut channels = vec![0.0; n];
                    for (t, token) in q.chunks_exact_mut(d).enumerate() {
                        for (j, c) in coefficients.iter_mut().enumerate() {
                            *c = mixed.normals.value(j, t);
                        }
                        match &rdft {
                            Some(rdft) => rdft.inverse(&coefficients, &mut channels),
                            None => channels.copy_from_slice(&coefficients),
                        }
                        for (&c, &value) in split.normals.iter().zip(&channels) {
                            token[c] = value;
                        }
                    }
                }
            }
            PackedKeys::Rotated(rows) => {
                rows.dequantize(&self.rotation(), &Centres::new(&rows.state, d, None), q)
            }
            PackedKeys::RotatedGroups(codes) => codes.dequantize(&self.rotation(), q),
        }
        out
    }

    /// Dense V̂ of this head, `[tokens, head_dim]`; `protected` is the cache's STP list
    /// (under rotated values, each protected token's refinement is added).
    pub fn dequantize_values(&self, protected: &[u32]) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![0.0; self.plan.tokens * d];
        self.fill_exact(&self.exact_values, &mut out);
        let start = self.plan.quantized_start();
        let q = &mut out[start * d..self.plan.quantized_end() * d];
        match &self.values {
            PackedValues::Exact => {}
            PackedValues::TwoBit { grouping, plane } => fill_two_bit(plane, *grouping, d, q),
            PackedValues::Ternary {
                plane,
                protected: kept,
            } => {
                for (t, slot) in self.value_slots(protected).enumerate() {
                    let token = &mut q[t * d..(t + 1) * d];
                    for (c, x) in token.iter_mut().enumerate() {
                        *x = match slot {
                            ValueSlot::Plain(i) => plane.value(c, i),
                            ValueSlot::Protected(i) => kept.value(c, i),
                        };
                    }
                }
            }
            PackedValues::Rotated { rows, means } => rows.dequantize(
                &self.rotation(),
                &Centres::new(&rows.state, d, means.as_ref()),
                q,
            ),
            PackedValues::RotatedGroups(codes) => codes.dequantize(&self.rotation(), q),
        }
        self.add_refinement(protected, &mut out);
        out
    }

    fn fill_exact(&self, exact: &ExactRows, out: &mut [f32]) {
        let d = self.head_dim;
        let exact_tokens = (0..self.plan.sinks).chain(self.plan.quantized_end()..self.plan.tokens);
        for (row, t) in exact_tokens.enumerate() {
            for c in 0..d {
                out[t * d + c] = exact.value(row, c);
            }
        }
    }
}

fn fill_two_bit(plane: &TwoBitPlane, grouping: Grouping, d: usize, out: &mut [f32]) {
    for (t, token) in out.chunks_exact_mut(d).enumerate() {
        for (c, x) in token.iter_mut().enumerate() {
            *x = match grouping {
                Grouping::PerChannel => plane.value(c, t),
                Grouping::PerToken => plane.value(t, c),
            };
        }
    }
}
