//! Saving and loading a packed cache: safetensors with metadata.
//!
//! The file holds one flat `U32` tensor per stored plane array of every head
//! (`l{layer}.h{head}.{array}`), the STP position list (`protected`), and metadata:
//! `format` = `vidkv-cache`, `version`, `shape` (JSON), `config` (JSON). Loading checks the
//! format and version, parses the configuration, recomputes every array's expected length
//! from the shape and configuration, and checks each array's contents (trit bytes, masks,
//! finite f16 metadata, sorted STP positions), so a truncated, corrupted or mismatched file
//! is a typed error, never a panic.

mod planes;

pub(crate) use planes::{check_f16_words, head_arrays, read_planes};

use std::collections::HashMap;

use safetensors::tensor::{serialize, TensorView};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::config::QuantConfig;
use crate::error::{Result, VidkvError};
use crate::packed::planes::ExactRows;
use crate::packed::stp::takes_protection;
use crate::packed::{CacheShape, PackedCache, PackedHead};

/// The format name and versions stored in the metadata (defined beside the format).
pub(crate) use crate::packed::{
    FILE_FORMAT as FORMAT, FILE_OLDEST_VERSION as OLDEST_VERSION, FILE_VERSION as VERSION,
};

pub(crate) fn corrupt(msg: impl Into<String>) -> VidkvError {
    VidkvError::CorruptPacked(msg.into())
}

/// A safetensors file being loaded: its arrays and string metadata, each read with a
/// typed error that names what the file should have been (`kind`).
pub(crate) struct SavedFile<'a> {
    tensors: SafeTensors<'a>,
    meta: HashMap<String, String>,
    kind: &'static str,
    /// The file's length in bytes.
    len: usize,
}

impl<'a> SavedFile<'a> {
    pub(crate) fn parse(bytes: &'a [u8], kind: &'static str) -> Result<Self> {
        let tensors =
            SafeTensors::deserialize(bytes).map_err(|e| VidkvError::Safetensors(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| VidkvError::Safetensors(e.to_string()))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata: not a vidkv cache file"))?;
        Ok(Self {
            tensors,
            meta,
            kind,
            len: bytes.len(),
        })
    }

    /// Refuses a file whose `format` is not `format` or whose `version` is outside
    /// `versions` (both file formats read older versions too).
    pub(crate) fn check_format(
        &self,
        format: &str,
        versions: std::ops::RangeInclusive<u32>,
    ) -> Result<()> {
        let version = self.meta("version")?;
        let readable = version.parse::<u32>().is_ok_and(|v| versions.contains(&v));
        if self.meta("format")? != format || !readable {
            return Err(corrupt(format!(
                "format `{}` version {version} is not a {} this library reads ({format} {} \
                 to {})",
                self.meta("format")?,
                self.kind,
                versions.start(),
                versions.end()
            )));
        }
        Ok(())
    }

    /// Refuses a claim of `count` items (layers, heads) that would each store at least
    /// `arrays_each` arrays when the file holds fewer: checked before anything is
    /// allocated per item.
    pub(crate) fn check_claim(&self, what: &str, count: usize, arrays_each: usize) -> Result<()> {
        let present = self.tensors.len();
        match count.checked_mul(arrays_each) {
            Some(needed) if needed <= present => Ok(()),
            _ => Err(corrupt(format!(
                "the file claims {count} {what}, each with {arrays_each} or more arrays, but \
                 holds {present} arrays"
            ))),
        }
    }

    /// Refuses a shape of more elements than the file's bytes can hold at one bit per
    /// element (no scheme stores less), so that no size computed from it overflows.
    pub(crate) fn check_elements(&self, shape: CacheShape) -> Result<()> {
        let elements = shape
            .checked_elements()
            .map_err(|e| corrupt(e.to_string()))?;
        if elements / 8 > self.len {
            return Err(corrupt(format!(
                "the file claims {elements} elements per tensor but holds {} bytes",
                self.len
            )));
        }
        Ok(())
    }

    /// The metadata entry `key`.
    pub(crate) fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("metadata lacks `{key}`: not a {}", self.kind)))
    }

    /// The metadata entry `key`, parsed as JSON.
    pub(crate) fn json(&self, key: &str) -> Result<Value> {
        serde_json::from_str(self.meta(key)?)
            .map_err(|e| corrupt(format!("`{key}` is not JSON: {e}")))
    }

    /// The flat `U32` array `name`, of `expected` words when given.
    pub(crate) fn u32_array(&self, name: &str, expected: Option<usize>) -> Result<Vec<u32>> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| corrupt(format!("missing array `{name}`")))?;
        if view.dtype() != Dtype::U32
            || view.shape().len() != 1
            || expected.is_some_and(|e| view.shape()[0] != e)
        {
            let wanted = expected.map_or("a U32 list".to_string(), |e| format!("U32 [{e}]"));
            return Err(corrupt(format!(
                "array `{name}` is {:?} {:?}, expected {wanted}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(view.data()))
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name)
        .ok_or_else(|| corrupt(format!("metadata lacks `{name}`")))
}

pub(crate) fn usize_field(v: &Value, name: &str) -> Result<usize> {
    field(v, name)?
        .as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| corrupt(format!("`{name}` is not a count")))
}

/// The configuration of a file's `config` entry ([`QuantConfig::from_json`]); a bad one
/// is a corrupted file.
pub(crate) fn config_field(file: &SavedFile<'_>) -> Result<QuantConfig> {
    QuantConfig::from_json(&file.json("config")?).map_err(|e| corrupt(e.to_string()))
}

impl PackedCache {
    /// The cache as safetensors bytes (see the module docs for the layout).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        self.to_safetensors_with(HashMap::new())
    }

    /// [`PackedCache::to_safetensors`] with extra metadata entries (e.g. a model's
    /// `q_heads`, which a [`crate::KvCache`] needs to load the file).
    pub fn to_safetensors_with(&self, extra: HashMap<String, String>) -> Result<Vec<u8>> {
        let mut buffers: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, head) in self.heads.iter().enumerate() {
            let (l, h) = (index / self.shape.kv_heads, index % self.shape.kv_heads);
            for (name, words) in head_arrays(head) {
                buffers.push((
                    format!("l{l}.h{h}.{name}"),
                    bytemuck::cast_slice(words).to_vec(),
                ));
            }
        }
        buffers.push((
            "protected".into(),
            bytemuck::cast_slice(&self.protected).to_vec(),
        ));
        let views = buffers
            .iter()
            .map(|(name, bytes)| {
                TensorView::new(Dtype::U32, vec![bytes.len() / 4], bytes)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| VidkvError::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let s = self.shape;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            (
                "shape".to_string(),
                json!({"layers": s.layers, "kv_heads": s.kv_heads, "tokens": s.tokens, "head_dim": s.head_dim}).to_string(),
            ),
            ("config".to_string(), self.config.to_json().to_string()),
        ]);
        let metadata: HashMap<String, String> = extra.into_iter().chain(metadata).collect();
        serialize_canonical(views, metadata)
    }

    /// Parses and validates a cache written by [`PackedCache::to_safetensors`].
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        Self::from_safetensors_with(bytes).map(|(cache, _)| cache)
    }

    /// [`PackedCache::from_safetensors`], also returning the file's metadata entries.
    pub fn from_safetensors_with(bytes: &[u8]) -> Result<(Self, HashMap<String, String>)> {
        Self::from_saved(SavedFile::parse(bytes, "vidkv cache file")?)
    }

    /// [`PackedCache::from_safetensors_with`] on a file already parsed.
    pub(crate) fn from_saved(file: SavedFile<'_>) -> Result<(Self, HashMap<String, String>)> {
        file.check_format(FORMAT, OLDEST_VERSION..=VERSION)?;
        let shape_json = file.json("shape")?;
        let shape = CacheShape {
            layers: usize_field(&shape_json, "layers")?,
            kv_heads: usize_field(&shape_json, "kv_heads")?,
            tokens: usize_field(&shape_json, "tokens")?,
            head_dim: usize_field(&shape_json, "head_dim")?,
        };
        let heads = shape
            .layers
            .checked_mul(shape.kv_heads)
            .filter(|&n| n > 0 && shape.tokens > 0 && shape.head_dim > 0)
            .ok_or_else(|| corrupt("the cache shape is empty or overflows"))?;
        file.check_claim("heads", heads, 2)?;
        file.check_elements(shape)?;
        let config = config_field(&file)?;
        let plan = config.plan(shape.tokens);
        let protected = file.u32_array("protected", None)?;
        if protected.windows(2).any(|w| w[0] >= w[1])
            || protected
                .iter()
                .any(|&p| !(plan.quantized_start()..plan.quantized_end()).contains(&(p as usize)))
        {
            return Err(corrupt(
                "STP positions are unsorted or outside the quantized range",
            ));
        }
        if !protected.is_empty() && !takes_protection(&config.values) {
            return Err(corrupt("STP positions with values that take no protection"));
        }
        let d = shape.head_dim;
        let nq = plan.quantized;
        let mut cache_heads = Vec::with_capacity(heads);
        for index in 0..heads {
            let prefix = format!("l{}.h{}.", index / shape.kv_heads, index % shape.kv_heads);
            let named = |name: &str, expected: usize| {
                file.u32_array(&format!("{prefix}{name}"), Some(expected))
            };
            let exact = |name: &str| -> Result<ExactRows> {
                let rows = ExactRows {
                    rows: plan.exact(),
                    width: d,
                    data: named(name, ExactRows::words(plan.exact(), d))?,
                };
                check_f16_words(&rows.data, name)?;
                Ok(rows)
            };
            let planes = read_planes(&named, &config, d, nq, protected.len())?;
            cache_heads.push(PackedHead {
                plan,
                head_dim: d,
                exact_keys: exact("exact_keys")?,
                exact_values: exact("exact_values")?,
                keys: planes.keys,
                values: planes.values,
                value_refinement: planes.value_refinement,
            });
        }
        Ok((
            PackedCache {
                shape,
                config,
                protected,
                heads: cache_heads,
            },
            file.meta,
        ))
    }
}

/// Serializes safetensors `views` with `metadata` in a canonical form: the header's JSON
/// keys sorted (safetensors writes its metadata map in the process's random hash order), so
/// the same cache always gives the same file bytes.
pub(crate) fn serialize_canonical<'a>(
    views: Vec<(String, safetensors::tensor::TensorView<'a>)>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes =
        serialize(views, Some(metadata)).map_err(|e| VidkvError::Safetensors(e.to_string()))?;
    let broken = || VidkvError::Safetensors("the serialized header is malformed".into());
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(broken)?;
    let header = bytes.get(8..8 + header_len).ok_or_else(broken)?;
    // serde_json's map is ordered by key (the `preserve_order` feature is off).
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|_| broken())?;
    let mut sorted = value.to_string().into_bytes();
    sorted.resize(sorted.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}
