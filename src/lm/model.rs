//! A llama-architecture decoder (SmolLM2) on candle, with its attention in a [`crate::cache::ModelCache`] (a GPU
//! [`crate::KvCache`] or the CPU [`crate::cache::ReferenceCache`]).
//!
//! Weights come from a GGUF file and are dequantized to f32 once, at load. llama.cpp stores
//! the query and key projections with their rows interleaved for its pairwise RoPE; the
//! loader restores the Hugging Face order (channel j pairs with channel j + head_dim/2,
//! `rotate_half`), so the cache sees keys laid out as the real dev files and Hugging Face
//! models lay them out. The attention scores are the same either way.
//!
//! [`Llama::forward`] runs a chunk of tokens: per layer it appends the chunk's keys and
//! values to the cache and attends with a causal mask over everything the cache holds, so
//! the quantized history is read exactly as in decoding.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor, D};

use super::candle_error;
use crate::cache::{ModelCache, ModelShape};
use crate::error::{Result, VidkvError};
use crate::tensor::check_host_memory;

/// The hyper-parameters a llama GGUF declares.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub vocab: usize,
}

impl LlamaConfig {
    fn from_metadata(content: &Content) -> Result<Self> {
        let arch = metadata_string(content, "general.architecture")?;
        if arch != "llama" {
            return Err(VidkvError::Model(format!(
                "architecture `{arch}` is not supported (only llama)"
            )));
        }
        let u = |key: &str| metadata_u32(content, key).map(|v| v as usize);
        let hidden = u("llama.embedding_length")?;
        let q_heads = u("llama.attention.head_count")?;
        let kv_heads = u("llama.attention.head_count_kv")?;
        if q_heads == 0 || kv_heads == 0 || hidden % q_heads != 0 || q_heads % kv_heads != 0 {
            return Err(VidkvError::Model(format!(
                "inconsistent heads: hidden {hidden}, {q_heads} query heads, {kv_heads} KV heads"
            )));
        }
        let vocab = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(tokens) => tokens.to_vec().map_err(candle_error("vocabulary"))?.len(),
            None => u("llama.vocab_size")?,
        };
        Ok(LlamaConfig {
            layers: u("llama.block_count")?,
            hidden,
            q_heads,
            kv_heads,
            head_dim: hidden / q_heads,
            rope_theta: metadata_f32(content, "llama.rope.freq_base")?,
            rms_eps: f64::from(metadata_f32(
                content,
                "llama.attention.layer_norm_rms_epsilon",
            )?),
            vocab,
        })
    }

    /// The attention shape a [`crate::KvCache`] for this model needs.
    pub fn cache_shape(&self) -> ModelShape {
        ModelShape {
            layers: self.layers,
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// The metadata value of `key`; its absence is an error naming the key.
fn metadata<'a>(content: &'a Content, key: &str) -> Result<&'a Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| VidkvError::Model(format!("GGUF metadata `{key}` is missing")))
}

pub(crate) fn metadata_string<'a>(content: &'a Content, key: &str) -> Result<&'a String> {
    metadata(content, key)?
        .to_string()
        .map_err(candle_error(key))
}

pub(crate) fn metadata_u32(content: &Content, key: &str) -> Result<u32> {
    metadata(content, key)?.to_u32().map_err(candle_error(key))
}

fn metadata_f32(content: &Content, key: &str) -> Result<f32> {
    metadata(content, key)?.to_f32().map_err(candle_error(key))
}

/// The GGUF header (metadata and tensor index) of a model file, and its bytes.
pub struct GgufFile {
    pub content: Content,
    reader: Cursor<Vec<u8>>,
}

impl GgufFile {
    /// Opens `path` and reads its header; the error names the fetch script when it is absent.
    pub fn open(path: &Path) -> Result<Self> {
        let path = super::require_model(path)?;
        let bytes = std::fs::read(&path).map_err(|e| VidkvError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// Reads the header of GGUF `bytes` (named `name` in errors). candle's reader bounds
    /// every count and length it reads by the bytes present.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        check_alignment(&bytes, name)?;
        let mut reader = Cursor::new(bytes);
        let content = Content::read(&mut reader).map_err(|e| {
            VidkvError::Model(format!(
                "{name} is not a GGUF file: {}",
                super::candle_message(e)
            ))
        })?;
        Ok(GgufFile { content, reader })
    }

    /// One tensor, dequantized to f32 on the CPU.
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        // candle checks the bytes a tensor needs against the file, but computes them with
        // wrapping arithmetic (a claimed 2⁶² f32 elements "need" 0 bytes): check them here,
        // and the f32 copy against the free memory, before candle allocates.
        if let Some(info) = self.content.tensor_infos.get(name) {
            let dims = info.shape.dims();
            let dtype = info.ggml_dtype;
            let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let end = elements
                .and_then(|n| (n / dtype.block_size()).checked_mul(dtype.type_size()))
                .and_then(|bytes| {
                    self.content
                        .tensor_data_offset
                        .checked_add(info.offset)?
                        .checked_add(bytes as u64)
                });
            let file = self.reader.get_ref().len() as u64;
            if end.is_none_or(|end| end > file) {
                return Err(VidkvError::Model(format!(
                    "tensor `{name}` claims dimensions {dims:?} of {dtype:?}, beyond the file's \
                     {file} bytes"
                )));
            }
            check_host_memory(
                &format!("tensor `{name}` in f32"),
                elements.and_then(|n| (n as u64).checked_mul(4)),
            )?;
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(candle_error(name))
    }

    /// A metadata array (the tokenizer's vocabulary, merges and token types).
    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        metadata(&self.content, key)?
            .to_vec()
            .map_err(candle_error(key))
    }

    /// A metadata array of strings (the tokenizer's vocabulary and merges).
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(VidkvError::Model(format!(
                    "GGUF metadata `{key}` holds {other:?}, not strings"
                ))),
            })
            .collect()
    }

    /// A metadata array of integers (the tokenizer's token types).
    pub(crate) fn integers(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                Value::U32(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                other => Err(VidkvError::Model(format!(
                    "GGUF metadata `{key}` holds {other:?}, not integers"
                ))),
            })
            .collect()
    }
}

/// Refuses a `general.alignment` of 0, which candle 0.11's reader divides by (a panic the
/// fuzzer found): every place the key is serialized (u64 length 17, the key, a u32 type,
/// then an integer of that type) is checked, so no zero alignment reaches candle.
fn check_alignment(bytes: &[u8], name: &str) -> Result<()> {
    const KEY: &[u8] = b"general.alignment";
    let mut pattern = (KEY.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(KEY);
    for (at, _) in bytes
        .windows(pattern.len())
        .enumerate()
        .filter(|(_, w)| *w == pattern.as_slice())
    {
        let rest = &bytes[at + pattern.len()..];
        let Some(kind) = rest
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            continue;
        };
        // GGUF value types 0–5: u8, i8, u16, i16, u32, i32 (the ones candle reads here).
        let width = match kind {
            0 | 1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            _ => continue,
        };
        if rest
            .get(4..4 + width)
            .is_some_and(|v| v.iter().all(|&b| b == 0))
        {
            return Err(VidkvError::Model(format!(
                "{name} declares a GGUF alignment of 0"
            )));
        }
    }
    Ok(())
}

struct Block {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// A llama-architecture decoder with f32 weights.
pub struct Llama {
    pub config: LlamaConfig,
    embedding: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
}

/// Rows of a q/k projection from llama.cpp's interleaved RoPE order back to Hugging Face
/// order: per head, row (i, j) of `[head_dim/2, 2]` becomes row (j, i) of `[2, head_dim/2]`.
fn rope_rows_to_hf(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

impl Llama {
    /// Loads every weight of a llama GGUF (the output projection falls back to the token
    /// embedding when the file ties them, as SmolLM2 does).
    pub fn load(gguf: &mut GgufFile) -> Result<Self> {
        let config = LlamaConfig::from_metadata(&gguf.content)?;
        // Each block stores 9 weights: a claim of more blocks than that is refused before
        // anything is allocated per block.
        if config.layers.saturating_mul(9) > gguf.content.tensor_infos.len() {
            return Err(VidkvError::Model(format!(
                "{} blocks claimed, but the file holds {} tensors",
                config.layers,
                gguf.content.tensor_infos.len()
            )));
        }
        let (hq, hk, d) = (config.q_heads, config.kv_heads, config.head_dim);
        let embedding = gguf.tensor("token_embd.weight")?;
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut t = |name: &str| gguf.tensor(&format!("blk.{i}.{name}.weight"));
            let wq = t("attn_q")?;
            let wk = t("attn_k")?;
            let block = Block {
                attn_norm: t("attn_norm")?,
                wq: rope_rows_to_hf(&wq, hq, d).map_err(candle_error("attn_q"))?,
                wk: rope_rows_to_hf(&wk, hk, d).map_err(candle_error("attn_k"))?,
                wv: t("attn_v")?,
                wo: t("attn_output")?,
                ffn_norm: t("ffn_norm")?,
                w_gate: t("ffn_gate")?,
                w_up: t("ffn_up")?,
                w_down: t("ffn_down")?,
            };
            blocks.push(block);
        }
        let final_norm = gguf.tensor("output_norm.weight")?;
        let lm_head = if gguf.content.tensor_infos.contains_key("output.weight") {
            gguf.tensor("output.weight")?
        } else {
            embedding.clone()
        };
        let half = d / 2;
        let inv_freq = (0..half)
            .map(|i| config.rope_theta.powf(-((2 * i) as f32) / d as f32))
            .collect();
        Ok(Llama {
            config,
            embedding,
            blocks,
            final_norm,
            lm_head,
            inv_freq,
        })
    }

    /// Runs `tokens` (the next positions after what `cache` holds) through the model:
    /// every layer appends the tokens' keys and values to `cache` and attends causally over
    /// the whole cache. Returns the logits, `[tokens.len(), vocab]` row-major.
    pub fn forward<C: ModelCache + ?Sized>(
        &self,
        tokens: &[u32],
        cache: &mut C,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        if cache.shape() != c.cache_shape() {
            return Err(VidkvError::InvalidConfig(format!(
                "the cache is shaped {:?}, the model needs {:?}",
                cache.shape(),
                c.cache_shape()
            )));
        }
        if tokens.is_empty() {
            return Err(VidkvError::EmptyTensor("tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(VidkvError::InvalidConfig(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let start = cache.len(0);
        let n = tokens.len();
        let err = candle_error("forward pass");
        let ids = Tensor::from_slice(tokens, n, &Device::Cpu).map_err(&err)?;
        let mut x = self.embedding.embedding(&ids).map_err(&err)?;
        let (cos, sin) = self.rope_tables(start, n).map_err(&err)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.attn_norm, c.rms_eps).map_err(&err)?;
            let q = self
                .project_heads(&h, &block.wq, c.q_heads, &cos, &sin)
                .map_err(&err)?;
            let k = self
                .project_heads(&h, &block.wk, c.kv_heads, &cos, &sin)
                .map_err(&err)?;
            let v = linear(&h, &block.wv)
                .and_then(|v| heads_first(&v, c.kv_heads, c.head_dim))
                .map_err(&err)?;
            cache.append(layer, &k, &v)?;
            let attended = cache.attend_causal(layer, &q)?;
            let attended = Tensor::from_vec(attended, (c.q_heads, n, c.head_dim), &Device::Cpu)
                .and_then(|a| a.transpose(0, 1)?.contiguous()?.reshape((n, c.hidden)))
                .map_err(&err)?;
            x = (x + linear(&attended, &block.wo).map_err(&err)?).map_err(&err)?;
            let h = rms_norm(&x, &block.ffn_norm, c.rms_eps).map_err(&err)?;
            let gate = linear(&h, &block.w_gate)
                .and_then(|g| g.silu())
                .map_err(&err)?;
            let up = linear(&h, &block.w_up).map_err(&err)?;
            let mlp = (gate * up)
                .and_then(|m| linear(&m, &block.w_down))
                .map_err(&err)?;
            x = (x + mlp).map_err(&err)?;
        }
        rms_norm(&x, &self.final_norm, c.rms_eps)
            .and_then(|h| linear(&h, &self.lm_head))
            .and_then(|logits| logits.flatten_all()?.to_vec1::<f32>())
            .map_err(&err)
    }

    /// `[n, head_dim]` cosine and sine tables for positions `start..start + n`, in
    /// `rotate_half` layout (the half-dimension angles repeated twice).
    fn rope_tables(&self, start: usize, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let d = self.config.head_dim;
        let mut cos = Vec::with_capacity(n * d);
        let mut sin = Vec::with_capacity(n * d);
        for p in start..start + n {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, 1, d), &Device::Cpu)?,
            Tensor::from_vec(sin, (n, 1, d), &Device::Cpu)?,
        ))
    }

    /// Projects `h` with `w`, applies RoPE and returns `[heads, n, head_dim]` row-major f32.
    fn project_heads(
        &self,
        h: &Tensor,
        w: &Tensor,
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Vec<f32>> {
        let d = self.config.head_dim;
        let n = h.dim(0)?;
        let x = linear(h, w)?.reshape((n, heads, d))?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let x = (x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
        x.transpose(0, 1)?.contiguous()?.flatten_all()?.to_vec1()
    }
}

/// `x · wᵀ` for a `[out, in]` weight.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

/// `[n, heads·d]` to `[heads, n, d]` row-major f32.
fn heads_first(x: &Tensor, heads: usize, d: usize) -> candle_core::Result<Vec<f32>> {
    let n = x.dim(0)?;
    x.reshape((n, heads, d))?
        .transpose(0, 1)?
        .contiguous()?
        .flatten_all()?
        .to_vec1()
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(mean_square + eps)?.sqrt()?)?
        .broadcast_mul(weight)
}
