//! Reference attention: softmax(q·Kᵀ/√d + mask)·V on dense rows, the ground truth.
//!
//! Masks, the GQA head mapping and the softmax live here; attention straight from packed
//! codes (what the GPU kernels compute) is [`crate::packed::attend`], next to the format.

use crate::error::{Result, VidkvError};

/// Which keys a query may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttentionMask {
    /// Every query sees every key.
    Full,
    /// A query at position p sees keys 0..=p.
    Causal,
    /// A query sees the keys of the half-open block `[start, end)` that holds its position.
    Block(Vec<(usize, usize)>),
}

impl AttentionMask {
    /// Whether a query at `query_pos` sees the key at `key_pos`.
    pub fn visible(&self, query_pos: usize, key_pos: usize) -> bool {
        match self {
            AttentionMask::Full => true,
            AttentionMask::Causal => key_pos <= query_pos,
            AttentionMask::Block(blocks) => blocks
                .iter()
                .any(|&(s, e)| (s..e).contains(&query_pos) && (s..e).contains(&key_pos)),
        }
    }

    /// Visibility of keys `0..tokens` for one query.
    pub fn row(&self, query_pos: usize, tokens: usize) -> Vec<bool> {
        (0..tokens).map(|k| self.visible(query_pos, k)).collect()
    }

    /// The keys `lo..hi` one query sees, when they are one non-empty contiguous range
    /// (always, for a validated mask whose blocks do not overlap).
    pub fn visible_range(&self, query_pos: usize, tokens: usize) -> Option<(usize, usize)> {
        let row = self.row(query_pos, tokens);
        let lo = row.iter().position(|&v| v)?;
        let hi = row.iter().rposition(|&v| v)? + 1;
        row[lo..hi].iter().all(|&v| v).then_some((lo, hi))
    }

    /// Checks that every query position lies inside the sequence and sees at least one key.
    pub fn validate(&self, tokens: usize, query_positions: &[usize]) -> Result<()> {
        if let AttentionMask::Block(blocks) = self {
            if let Some(&(s, e)) = blocks.iter().find(|&&(s, e)| s >= e || e > tokens) {
                return Err(VidkvError::Sidecar(format!(
                    "block [{s}, {e}) is empty or beyond the {tokens} tokens"
                )));
            }
        }
        for &p in query_positions {
            if p >= tokens {
                return Err(VidkvError::Sidecar(format!(
                    "query position {p} is beyond the {tokens} tokens"
                )));
            }
            if !self.visible(p, p) {
                return Err(VidkvError::Sidecar(format!(
                    "query position {p} lies in no attention block"
                )));
            }
        }
        Ok(())
    }
}

/// The KV head that query head `q_head` reads under grouped-query attention.
pub fn kv_head_for(q_head: usize, q_heads: usize, kv_heads: usize) -> usize {
    q_head / (q_heads / kv_heads)
}

/// softmax(logits/√d) over the visible keys, in place; hidden keys get weight 0.
pub fn softmax_weights(logits: &[f32], visible: &[bool], head_dim: usize) -> Vec<f32> {
    let scale = 1.0 / (head_dim as f64).sqrt();
    let max = logits
        .iter()
        .zip(visible)
        .filter(|(_, &v)| v)
        .map(|(&l, _)| f64::from(l) * scale)
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits
        .iter()
        .zip(visible)
        .map(|(&l, &v)| {
            if v {
                (f64::from(l) * scale - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Dense attention of one query over `keys`/`values` (`[tokens, d]` row-major).
pub fn attend_dense(q: &[f32], keys: &[f32], values: &[f32], visible: &[bool]) -> Vec<f32> {
    let d = q.len();
    let logits: Vec<f32> = keys.chunks_exact(d).map(|k| dot(q, k) as f32).collect();
    let weights = softmax_weights(&logits, visible, d);
    let mut out = vec![0.0f64; d];
    for (w, v) in weights.iter().zip(values.chunks_exact(d)) {
        if *w != 0.0 {
            for (o, &x) in out.iter_mut().zip(v) {
                *o += f64::from(*w) * f64::from(x);
            }
        }
    }
    out.into_iter().map(|o| o as f32).collect()
}

/// Σ aᵢ·bᵢ in f64.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}
