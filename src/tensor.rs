//! A minimal dense f32 tensor and the input checks every entry point runs.

use crate::error::{Result, VidkvError};

/// Largest finite f16 value: the packed format stores exact tokens, scales and minimums as f16.
pub const F16_MAX: f32 = 65504.0;

/// A row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and matching data.
    pub fn new(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected = element_count(name, &shape)?;
        if expected != data.len() {
            return Err(VidkvError::ShapeMismatch {
                tensor: name.into(),
                detail: format!(
                    "shape {shape:?} needs {expected} elements, got {}",
                    data.len()
                ),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// Size of dimension `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    /// Tokens `tokens` of layer `layer` of a `[layers, kv_heads, tokens, head_dim]` tensor,
    /// as `[kv_heads, n, head_dim]`: the row layout [`crate::KvCache::prefill`] and
    /// [`crate::KvCache::append`] take.
    pub fn layer_tokens(&self, layer: usize, tokens: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let [layers, heads, len, d] = self.shape[..] else {
            return Err(VidkvError::ShapeMismatch {
                tensor: "layer_tokens input".into(),
                detail: format!(
                    "expected [layers, kv_heads, tokens, head_dim], got {:?}",
                    self.shape
                ),
            });
        };
        if layer >= layers || tokens.start > tokens.end || tokens.end > len {
            return Err(VidkvError::ShapeMismatch {
                tensor: "layer_tokens input".into(),
                detail: format!(
                    "layer {layer}, tokens {tokens:?} outside {layers} layers of {len} tokens"
                ),
            });
        }
        Ok((0..heads)
            .flat_map(|head| {
                let base = (layer * heads + head) * len * d;
                &self.data[base + tokens.start * d..base + tokens.end * d]
            })
            .copied()
            .collect())
    }
}

/// Product of the dimensions, with overflow reported as an error.
pub fn element_count(name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| VidkvError::ShapeMismatch {
            tensor: name.into(),
            detail: format!("shape {shape:?} overflows the address space"),
        })
}

/// Multi-dimensional index of flat position `flat` in `shape`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &d) in index.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    index
}

/// Fails on the first NaN or infinity, naming the tensor and the index.
pub fn check_finite(name: &str, data: &[f32], shape: &[usize]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(VidkvError::NonFinite {
            tensor: name.into(),
            index: unravel(i, shape),
            value: data[i],
        }),
    }
}

/// The largest query magnitude attention takes: a logit sums at most 256 products of a
/// query value and a key value (|k| ≤ 65504 in f16 storage), so with |q| ≤ 2^100 every logit
/// stays below 2^124, far inside f32 (and its softmax exponent differences too).
pub const QUERY_MAX: f32 = 1.267_650_6e30;

/// Fails on the first query value that is not finite or whose magnitude exceeds
/// [`QUERY_MAX`] ([`VidkvError::QueryOutOfRange`]).
pub fn check_query(name: &str, data: &[f32], shape: &[usize]) -> Result<()> {
    check_finite(name, data, shape)?;
    match data.iter().position(|v| v.abs() > QUERY_MAX) {
        None => Ok(()),
        Some(i) => Err(VidkvError::QueryOutOfRange {
            tensor: name.into(),
            index: unravel(i, shape),
            value: data[i],
            limit: QUERY_MAX,
        }),
    }
}

/// Fails on the first value that f16 storage cannot hold (|x| > 65504) or that is not finite.
pub fn check_quantizable(name: &str, data: &[f32], shape: &[usize]) -> Result<()> {
    check_finite(name, data, shape)?;
    match data.iter().position(|v| v.abs() > F16_MAX) {
        None => Ok(()),
        Some(i) => Err(VidkvError::OutOfRange {
            tensor: name.into(),
            index: unravel(i, shape),
            value: data[i],
        }),
    }
}

/// Host memory free for new allocations: `MemAvailable` of `/proc/meminfo` where it exists
/// (Linux), else `None` (unknown: only overflow is checked).
pub fn available_host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses an allocation of `bytes` (`None`: it overflowed) for `what` that exceeds the free
/// host memory, with a [`VidkvError::TooLarge`] that says both numbers, before anything is
/// allocated.
pub fn check_host_memory(what: &str, bytes: Option<u64>) -> Result<()> {
    let limit = available_host_memory().unwrap_or(u64::MAX);
    match bytes {
        Some(needed) if needed <= limit => Ok(()),
        needed => Err(VidkvError::TooLarge {
            what: what.to_string(),
            needed: needed.unwrap_or(u64::MAX),
            limit,
        }),
    }
}

/// The smallest positive normal f16, 2⁻¹⁴: every scheme stores its scales, minimums and
/// bases as f16, so data whose largest magnitude is below it quantizes with subnormal scales
/// (lost precision) or, below about 2⁻²⁴, with zero scales (an all-zero cache).
pub const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// Whether `data` holds non-zero values that all lie below [`F16_MIN_NORMAL`] in magnitude:
/// quantizing it underflows the f16 scale format (reported by [`crate::report`] and
/// warned about by the CLI).
pub fn underflows_scales(data: &[f32]) -> bool {
    let largest = data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    largest > 0.0 && largest < F16_MIN_NORMAL
}
