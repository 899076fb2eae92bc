//! Attention straight from packed codes (no dense K̂ or V̂): the CPU mirror of the GPU
//! attention kernels.
//!
//! 2-bit groups fold their scale into the query and their minimum into one bias per group,
//! DFT-domain sign codes are dotted with the query transformed once by Mᵀ (the transpose
//! of the inverse real DFT), and values are accumulated per group with the scale applied
//! once. Accumulation is in f64 so that the reference is not the noisy side of a comparison.

use crate::config::Grouping;
use crate::packed::planes::TwoBitPlane;
use crate::packed::{PackedHead, PackedKeys, PackedValues, ValueSlot};
use crate::reference::attention::softmax_weights;
use crate::reference::rdft::CompactRdft;

/// Attention of one query straight from a packed head (no dense K̂ or V̂).
pub fn attend_packed(
    head: &PackedHead,
    protected: &[u32],
    q: &[f32],
    visible: &[bool],
) -> Vec<f32> {
    let logits = packed_logits(head, q);
    let weights = softmax_weights(&logits, visible, head.head_dim);
    packed_weighted_values(head, protected, &weights)
}

/// q·k̂ₜ for every token t of the head, computed from the packed codes.
pub fn packed_logits(head: &PackedHead, q: &[f32]) -> Vec<f32> {
    let d = head.head_dim;
    let plan = head.plan;
    let mut logits = vec![0.0f32; plan.tokens];
    for (row, t) in head.exact_positions().enumerate() {
        logits[t] = (0..d)
            .map(|c| f64::from(q[c]) * f64::from(head.exact_keys.value(row, c)))
            .sum::<f64>() as f32;
    }
    let quantized = &mut logits[plan.quantized_start()..plan.quantized_end()];
    match &head.keys {
        PackedKeys::Exact => {}
        PackedKeys::TwoBit {
            grouping: Grouping::PerChannel,
            plane,
        } => {
            let all: Vec<usize> = (0..d).collect();
            add_channel_two_bit_logits(plane, &all, q, quantized);
        }
        PackedKeys::TwoBit {
            grouping: Grouping::PerToken,
            plane,
        } => {
            for (t, logit) in quantized.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for g in 0..plane.shape.groups() {
                    let p = plane.params(t, g);
                    let range = plane.shape.group_range(g);
                    let codes: f64 = range
                        .clone()
                        .map(|c| f64::from(q[c]) * f64::from(plane.code(t, c)))
                        .sum();
                    let q_sum: f64 = range.map(|c| f64::from(q[c])).sum();
                    acc += f64::from(p.scale) * codes + f64::from(p.min) * q_sum;
                }
                *logit = acc as f32;
            }
        }
        PackedKeys::Mixed(mixed) => {
            let split = mixed.split(d);
            add_channel_two_bit_logits(&mixed.outliers, &split.outliers, q, quantized);
            let n = split.normals.len();
            if n > 0 {
                let q_normal: Vec<f32> = split.normals.iter().map(|&c| q[c]).collect();
                let mut q_tilde = vec![0.0; n];
                if mixed.fft {
                    CompactRdft::new(n).transpose_inverse(&q_normal, &mut q_tilde);
                } else {
                    q_tilde.copy_from_slice(&q_normal);
                }
                let plane = &mixed.normals;
                for g in 0..plane.shape.groups() {
                    let folded: Vec<f64> = (0..n)
                        .map(|j| f64::from(q_tilde[j]) * f64::from(plane.scale(j, g)))
                        .collect();
                    for t in plane.shape.group_range(g) {
                        let acc: f64 = folded
                            .iter()
                            .enumerate()
                            .map(|(j, &qs)| if plane.code(j, t) == 1 { qs } else { -qs })
                            .sum();
                        quantized[t] = (f64::from(quantized[t]) + acc) as f32;
                    }
                }
            }
        }
    }
    logits
}

/// Adds Σ_c q_c·k̂_{c,t} over per-channel 2-bit rows (`channels[row]` is the channel of a
/// plane row), with the scale folded into the query and the minimum into a group bias.
fn add_channel_two_bit_logits(plane: &TwoBitPlane, channels: &[usize], q: &[f32], out: &mut [f32]) {
    for g in 0..plane.shape.groups() {
        let mut bias = 0.0f64;
        let folded: Vec<f64> = channels
            .iter()
            .enumerate()
            .map(|(row, &c)| {
                let p = plane.params(row, g);
                bias += f64::from(q[c]) * f64::from(p.min);
                f64::from(q[c]) * f64::from(p.scale)
            })
            .collect();
        for t in plane.shape.group_range(g) {
            let acc: f64 = folded
                .iter()
                .enumerate()
                .map(|(row, &qs)| qs * f64::from(plane.code(row, t)))
                .sum();
            out[t] = (f64::from(out[t]) + bias + acc) as f32;
        }
    }
}

/// Σₜ wₜ·v̂ₜ over the head's tokens, computed from the packed codes.
pub fn packed_weighted_values(head: &PackedHead, protected: &[u32], weights: &[f32]) -> Vec<f32> {
    let d = head.head_dim;
    let plan = head.plan;
    let mut out = vec![0.0f64; d];
    for (row, t) in head.exact_positions().enumerate() {
        for (c, o) in out.iter_mut().enumerate() {
            *o += f64::from(weights[t]) * f64::from(head.exact_values.value(row, c));
        }
    }
    let w = &weights[plan.quantized_start()..plan.quantized_end()];
    match &head.values {
        PackedValues::Exact => {}
        PackedValues::TwoBit {
            grouping: Grouping::PerChannel,
            plane,
        } => add_channel_two_bit_values(plane, w, &mut out),
        PackedValues::TwoBit {
            grouping: Grouping::PerToken,
            plane,
        } => {
            for (t, &wt) in w.iter().enumerate() {
                for (c, o) in out.iter_mut().enumerate() {
                    *o += f64::from(wt) * f64::from(plane.value(t, c));
                }
            }
        }
        PackedValues::Ternary {
            plane,
            protected: kept,
        } => {
            let mut plain_w = Vec::new();
            let mut kept_w = Vec::new();
            for (slot, &wt) in head.value_slots(protected).zip(w) {
                match slot {
                    ValueSlot::Plain(_) => plain_w.push(wt),
                    ValueSlot::Protected(_) => kept_w.push(wt),
                }
            }
            for (c, o) in out.iter_mut().enumerate() {
                for g in 0..plane.shape.groups() {
                    let acc: f64 = plane
                        .shape
                        .group_range(g)
                        .map(|i| f64::from(plain_w[i]) * f64::from(plane.trit(c, i)))
                        .sum();
                    *o += f64::from(plane.scale(c, g)) * acc;
                }
            }
            add_channel_two_bit_values(kept, &kept_w, &mut out);
        }
    }
    out.into_iter().map(|o| o as f32).collect()
}

/// Adds Σₜ wₜ·v̂_{c,t} for per-channel 2-bit rows: scale·Σ w·code + min·Σ w per group.
fn add_channel_two_bit_values(plane: &TwoBitPlane, w: &[f32], out: &mut [f64]) {
    for (c, o) in out.iter_mut().enumerate().take(plane.shape.rows) {
        for g in 0..plane.shape.groups() {
            let p = plane.params(c, g);
            let range = plane.shape.group_range(g);
            let codes: f64 = range
                .clone()
                .map(|i| f64::from(w[i]) * f64::from(plane.code(c, i)))
                .sum();
            let w_sum: f64 = range.map(|i| f64::from(w[i])).sum();
            *o += f64::from(p.scale) * codes + f64::from(p.min) * w_sum;
        }
    }
}
