//! Attention straight from packed codes (no dense K̂ or V̂): the CPU mirror of the GPU
//! attention kernels.
//!
//! 2-bit groups fold their scale into the query and their minimum into one bias per group,
//! DFT-domain sign codes are dotted with the query transformed once by Mᵀ (the transpose
//! of the inverse real DFT), and values are accumulated per group with the scale applied
//! once. Rotated codes are dotted with the query rotated once, and their values are
//! accumulated in the rotated domain and rotated back once per output row. Accumulation is in f64 so that the reference is not the noisy side of a comparison.

use crate::config::Grouping;
use crate::packed::planes::TwoBitPlane;
use crate::packed::rotated::{Centres, GroupMeans, RotatedRows};
use crate::packed::rotated_groups::GroupCodes;
use crate::packed::{PackedHead, PackedKeys, PackedValues, ValueSlot};
use crate::reference::attention::softmax_weights;
use crate::reference::rdft::CompactRdft;
use crate::reference::rotation::Rotation;

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
        PackedKeys::Rotated(rows) => add_rotated_logits(head, rows, q, quantized),
        PackedKeys::RotatedGroups(codes) => add_group_logits(head, codes, q, quantized),
    }
    logits
}

/// Logits of rotated keys: q′ = q·Rot once, then per token ŝ·Σᵢ q′ᵢ·L[cᵢ] + flag·(q·m).
fn add_rotated_logits(head: &PackedHead, rows: &RotatedRows, q: &[f32], out: &mut [f32]) {
    let d = head.head_dim;
    let (rotated, centre_term) = rotated_query(head, |c| rows.state.mean_value(c), q);
    let levels = rows.codebook().levels;
    for (t, logit) in out.iter_mut().enumerate() {
        let dot: f64 = (0..d)
            .map(|i| rotated[i] * f64::from(levels[usize::from(rows.code(t, i))]))
            .sum();
        let flag = if rows.flag(t) { centre_term } else { 0.0 };
        *logit = (f64::from(rows.scale(t)) * dot + flag) as f32;
    }
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
        PackedValues::Rotated { rows, means } => {
            add_rotated_values(head, rows, means.as_ref(), w, &mut out)
        }
        PackedValues::RotatedGroups(codes) => add_group_values(head, codes, w, &mut out),
    }
    if let Some(rows) = &head.value_refinement {
        let w: Vec<f32> = protected.iter().map(|&p| weights[p as usize]).collect();
        add_rotated_values(head, rows, None, &w, &mut out);
    }
    out.into_iter().map(|o| o as f32).collect()
}

/// q·Rot_d and q·m of one query against a rotated head's state.
fn rotated_query(head: &PackedHead, mean: impl Fn(usize) -> f32, q: &[f32]) -> (Vec<f64>, f64) {
    let mut rotated: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
    head.rotation().rotate_f64(&mut rotated);
    let centre_term = (0..head.head_dim)
        .map(|c| f64::from(q[c]) * f64::from(mean(c)))
        .sum();
    (rotated, centre_term)
}

/// Logits of groups coded across tokens: a T group's row dots r_j = F̂_j·q′ give its G
/// logits as Rot_G·r + q·m (one G-point transform); an A group is read per token.
fn add_group_logits(head: &PackedHead, codes: &GroupCodes, q: &[f32], out: &mut [f32]) {
    let (rotated, centre_term) = rotated_query(head, |c| codes.state.mean_value(c), q);
    let across = Rotation::power_of_two(codes.group_size);
    let d = head.head_dim;
    for (g, logits) in out.chunks_exact_mut(codes.group_size).enumerate() {
        let (rows, flags) = codes.rotated_rows(g);
        let mut dots: Vec<f64> = rows
            .chunks_exact(d)
            .map(|row| {
                row.iter()
                    .zip(&rotated)
                    .map(|(&x, &r)| f64::from(x) * r)
                    .sum()
            })
            .collect();
        match &flags {
            None => {
                across.rotate_f64(&mut dots);
                dots.iter_mut().for_each(|x| *x += centre_term);
            }
            Some(flags) => {
                for (x, &flag) in dots.iter_mut().zip(flags) {
                    if flag {
                        *x += centre_term;
                    }
                }
            }
        }
        for (logit, x) in logits.iter_mut().zip(dots) {
            *logit = x as f32;
        }
    }
}

/// Values of groups coded across tokens: a T group adds (Rot_G·p)ᵀ·F̂ to the rotated-domain
/// sum and Σp to the weight of m; an A group adds pₜ·ŷₜ and its flagged weight.
fn add_group_values(head: &PackedHead, codes: &GroupCodes, w: &[f32], out: &mut [f64]) {
    let d = head.head_dim;
    let across = Rotation::power_of_two(codes.group_size);
    let mut acc = vec![0.0f64; d];
    let mut centre_weight = 0.0f64;
    for (g, weights) in w.chunks_exact(codes.group_size).enumerate() {
        let (rows, flags) = codes.rotated_rows(g);
        let mut p: Vec<f64> = weights.iter().map(|&x| f64::from(x)).collect();
        match &flags {
            None => {
                centre_weight += p.iter().sum::<f64>();
                across.rotate_f64(&mut p);
            }
            Some(flags) => {
                centre_weight += p
                    .iter()
                    .zip(flags)
                    .filter(|(_, &f)| f)
                    .map(|(x, _)| x)
                    .sum::<f64>();
            }
        }
        for (row, &pj) in rows.chunks_exact(d).zip(&p) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += pj * f64::from(x);
            }
        }
    }
    head.rotation().rotate_f64(&mut acc);
    for (c, (o, a)) in out.iter_mut().zip(acc).enumerate() {
        *o += a + centre_weight * f64::from(codes.state.mean_value(c));
    }
}

/// Values of rotated rows: acc = Σₜ wₜ·ŝₜ·L[cₜ] in the rotated domain, one inverse rotation,
/// then the flagged tokens' weight times their centre (per group with group means).
fn add_rotated_values(
    head: &PackedHead,
    rows: &RotatedRows,
    means: Option<&GroupMeans>,
    w: &[f32],
    out: &mut [f64],
) {
    let d = head.head_dim;
    let levels = rows.codebook().levels;
    let mut acc = vec![0.0f64; d];
    for (t, &wt) in w.iter().enumerate() {
        let ws = f64::from(wt) * f64::from(rows.scale(t));
        for (i, a) in acc.iter_mut().enumerate() {
            *a += ws * f64::from(levels[usize::from(rows.code(t, i))]);
        }
    }
    head.rotation().rotate_f64(&mut acc);
    let centres = Centres::new(&rows.state, d, means);
    let group = means.map_or(w.len().max(1), |m| m.group_size);
    for (g, weights) in w.chunks(group).enumerate() {
        let flagged: f64 = weights
            .iter()
            .enumerate()
            .filter(|&(i, _)| rows.flag(g * group + i))
            .map(|(_, &wt)| f64::from(wt))
            .sum();
        for (o, &c) in out.iter_mut().zip(centres.of(g * group)) {
            *o += flagged * f64::from(c);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o += a;
    }
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
