//! Loading K/V/Q tensors from safetensors bytes and their JSON sidecar.
//!
//! A sample holds `k` and `v` `[layers, kv_heads, tokens, head_dim]` and `q`
//! `[layers, q_heads, n_queries, head_dim]` in F32, F16 or BF16. The optional sidecar gives
//! `q_positions` and `attention` (`{"type":"causal"}` or
//! `{"type":"block","blocks":[[start,end],...]}`); without it every query sees every token.
//! Loading works on byte slices (no file system), so the core stays wasm-friendly; the CLI
//! reads the files. Saving goes through [`write_atomic`]: atomic, never through a link or
//! onto a special file, never over the input ([`check_output`]).

mod output;

pub use output::{check_output, write_atomic};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{Result, VidkvError};
use crate::reference::attention::AttentionMask;
use crate::tensor::{check_finite, element_count, Tensor};

/// Real K/V/Q tensors with the attention pattern of their queries.
#[derive(Clone, Debug)]
pub struct KvSample {
    /// A display name (the file name).
    pub name: String,
    pub k: Tensor,
    pub v: Tensor,
    pub q: Tensor,
    /// Token position of each stored query.
    pub q_positions: Vec<usize>,
    pub mask: AttentionMask,
}

impl KvSample {
    /// Parses and validates a sample from safetensors bytes and optional sidecar JSON text.
    pub fn from_bytes(name: &str, tensors: &[u8], sidecar: Option<&str>) -> Result<Self> {
        let st = SafeTensors::deserialize(tensors)
            .map_err(|e| VidkvError::Safetensors(e.to_string()))?;
        let k = read_tensor(&st, "k")?;
        let v = read_tensor(&st, "v")?;
        let q = read_tensor(&st, "q")?;
        check_shapes(&k, &v, &q)?;
        let tokens = k.dim(2);
        let n_queries = q.dim(2);
        let (q_positions, mask) = match sidecar {
            Some(text) => parse_sidecar(text, n_queries)?,
            None => (vec![tokens - 1; n_queries], AttentionMask::Full),
        };
        mask.validate(tokens, &q_positions)?;
        Ok(KvSample {
            name: name.to_string(),
            k,
            v,
            q,
            q_positions,
            mask,
        })
    }
}

/// Reads one tensor as f32, rejecting unsupported dtypes, bad ranks, empty and non-finite data.
pub fn read_tensor(st: &SafeTensors<'_>, name: &str) -> Result<Tensor> {
    let view = st
        .tensor(name)
        .map_err(|_| VidkvError::MissingTensor(name.to_string()))?;
    let shape = view.shape().to_vec();
    if shape.len() != 4 {
        return Err(VidkvError::ShapeMismatch {
            tensor: name.into(),
            detail: format!("expected 4 dimensions, got shape {shape:?}"),
        });
    }
    let count = element_count(name, &shape)?;
    if count == 0 {
        return Err(VidkvError::EmptyTensor(name.into()));
    }
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(VidkvError::UnsupportedDtype {
                tensor: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    };
    if data.len() != count {
        return Err(VidkvError::ShapeMismatch {
            tensor: name.into(),
            detail: format!(
                "shape {shape:?} needs {count} elements, data holds {}",
                data.len()
            ),
        });
    }
    check_finite(name, &data, &shape)?;
    Ok(Tensor { shape, data })
}

fn check_shapes(k: &Tensor, v: &Tensor, q: &Tensor) -> Result<()> {
    crate::tensor::check_query("q", &q.data, &q.shape)?;
    let mismatch = |tensor: &str, detail: String| {
        Err(VidkvError::ShapeMismatch {
            tensor: tensor.into(),
            detail,
        })
    };
    if v.shape != k.shape {
        return mismatch("v", format!("v is {:?} but k is {:?}", v.shape, k.shape));
    }
    if q.dim(0) != k.dim(0) || q.dim(3) != k.dim(3) {
        return mismatch(
            "q",
            format!(
                "q is {:?}; it needs k's layers ({}) and head_dim ({})",
                q.shape,
                k.dim(0),
                k.dim(3)
            ),
        );
    }
    if q.dim(1) % k.dim(1) != 0 {
        return mismatch(
            "q",
            format!(
                "{} query heads are not a multiple of {} KV heads (GQA)",
                q.dim(1),
                k.dim(1)
            ),
        );
    }
    Ok(())
}

/// Parses `q_positions` and `attention` from sidecar JSON.
pub fn parse_sidecar(text: &str, n_queries: usize) -> Result<(Vec<usize>, AttentionMask)> {
    let bad = |msg: String| VidkvError::Sidecar(msg);
    let json: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let positions = json
        .get("q_positions")
        .ok_or_else(|| bad("missing `q_positions`".into()))?
        .as_array()
        .ok_or_else(|| bad("`q_positions` is not an array".into()))?
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| usize::try_from(p).ok())
                .ok_or_else(|| bad(format!("`q_positions` holds {p}, not a token index")))
        })
        .collect::<Result<Vec<usize>>>()?;
    if positions.len() != n_queries {
        return Err(bad(format!(
            "`q_positions` has {} entries but q stores {n_queries} queries",
            positions.len()
        )));
    }
    let attention = json
        .get("attention")
        .ok_or_else(|| bad("missing `attention`".into()))?;
    let kind = attention
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`attention.type` is missing or not a string".into()))?;
    let mask = match kind {
        "causal" => AttentionMask::Causal,
        "full" => AttentionMask::Full,
        "block" => {
            let blocks = attention
                .get("blocks")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("`attention.blocks` is missing or not an array".into()))?
                .iter()
                .map(|b| {
                    let pair = b.as_array().filter(|a| a.len() == 2);
                    let bound = |i: usize| {
                        pair.and_then(|a| a[i].as_u64())
                            .and_then(|x| usize::try_from(x).ok())
                    };
                    match (bound(0), bound(1)) {
                        (Some(s), Some(e)) => Ok((s, e)),
                        _ => Err(bad(format!("block {b} is not [start, end]"))),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            AttentionMask::Block(blocks)
        }
        other => {
            return Err(bad(format!(
                "`attention.type` is `{other}`; expected causal, block or full"
            )))
        }
    };
    Ok((positions, mask))
}
