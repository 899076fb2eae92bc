//! Saving and loading a packed cache: safetensors with metadata.
//!
//! The file holds one flat `U32` tensor per stored plane array of every head
//! (`l{layer}.h{head}.{array}`), the STP position list (`protected`), and metadata:
//! `format` = `vidkv-cache`, `version`, `shape` (JSON), `config` (JSON). Loading checks the
//! format and version, parses the configuration, recomputes every array's expected length
//! from the shape and configuration, and checks each array's contents (trit bytes, masks,
//! finite f16 metadata, sorted STP positions), so a truncated, corrupted or mismatched file
//! is a typed error, never a panic.

use std::collections::HashMap;

use safetensors::tensor::{serialize, TensorView};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::config::{Grouping, KeyScheme, QuantConfig, ValueScheme};
use crate::error::{Result, VidkvError};
use crate::packed::planes::{ExactRows, GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::rotated::{GroupMeans, RotatedRows, RotatedState};
use crate::packed::rotated_groups::{group_budget, GroupCodes};
use crate::packed::stp::{refines, takes_protection, REFINEMENT_BITS};
use crate::packed::{CacheShape, MixedKeys, PackedCache, PackedHead, PackedKeys, PackedValues};
use crate::reference::rotation::Rotation;
use crate::reference::split::outlier_count;

/// The format name stored in the metadata.
pub const FORMAT: &str = "vidkv-cache";
/// The format version this library writes (2: rotated values may carry STP refinements).
pub const VERSION: u32 = 2;
/// The oldest format version this library reads (version 1 files load unchanged).
pub const OLDEST_VERSION: u32 = 1;

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

/// The named u32 arrays of one head, in a fixed order.
pub(crate) fn head_arrays(head: &PackedHead) -> Vec<(&'static str, &[u32])> {
    let mut arrays = vec![
        ("exact_keys", head.exact_keys.data.as_slice()),
        ("exact_values", head.exact_values.data.as_slice()),
    ];
    match &head.keys {
        PackedKeys::Exact => {}
        PackedKeys::TwoBit { plane, .. } => {
            arrays.push(("key_codes", &plane.codes));
            arrays.push(("key_params", &plane.params));
        }
        PackedKeys::Mixed(m) => {
            arrays.push(("key_mask", &m.outlier_mask));
            arrays.push(("key_codes", &m.outliers.codes));
            arrays.push(("key_params", &m.outliers.params));
            arrays.push(("key_signs", &m.normals.codes));
            arrays.push(("key_sign_scales", &m.normals.scales));
        }
        PackedKeys::Rotated(rows) => push_rotated(&mut arrays, "key", rows),
        PackedKeys::RotatedGroups(codes) => push_groups(&mut arrays, "key", codes),
    }
    match &head.values {
        PackedValues::Exact => {}
        PackedValues::TwoBit { plane, .. } => {
            arrays.push(("value_codes", &plane.codes));
            arrays.push(("value_params", &plane.params));
        }
        PackedValues::Ternary { plane, protected } => {
            arrays.push(("value_trits", &plane.codes));
            arrays.push(("value_scales", &plane.scales));
            arrays.push(("protected_codes", &protected.codes));
            arrays.push(("protected_params", &protected.params));
        }
        PackedValues::Rotated { rows, means } => {
            push_rotated(&mut arrays, "value", rows);
            if let Some(means) = means {
                arrays.push(("value_mean_codes", &means.codes));
                arrays.push(("value_mean_steps", &means.steps));
            }
        }
        PackedValues::RotatedGroups(codes) => push_groups(&mut arrays, "value", codes),
    }
    if let Some(rows) = &head.value_refinement {
        push_rotated(&mut arrays, "refine", rows);
    }
    arrays
}

/// The arrays of groups coded across tokens: codes, scale bytes, width tables, state.
fn push_groups<'a>(arrays: &mut Vec<(&'static str, &'a [u32])>, side: &str, codes: &'a GroupCodes) {
    let names: [&'static str; 5] = if side == "key" {
        [
            "key_group_codes",
            "key_group_scales",
            "key_group_widths",
            "key_state_mean",
            "key_state_base",
        ]
    } else {
        [
            "value_group_codes",
            "value_group_scales",
            "value_group_widths",
            "value_state_mean",
            "value_state_base",
        ]
    };
    arrays.push((names[0], &codes.codes));
    arrays.push((names[1], &codes.scales));
    arrays.push((names[2], &codes.widths));
    arrays.push((names[3], &codes.state.mean));
    arrays.push((names[4], std::slice::from_ref(&codes.state.base)));
}

/// The arrays of rotated rows: codes, scale bytes and the per-head state.
fn push_rotated<'a>(
    arrays: &mut Vec<(&'static str, &'a [u32])>,
    side: &str,
    rows: &'a RotatedRows,
) {
    let names: [&'static str; 4] = match side {
        "key" => [
            "key_rot_codes",
            "key_rot_scales",
            "key_state_mean",
            "key_state_base",
        ],
        "value" => [
            "value_rot_codes",
            "value_rot_scales",
            "value_state_mean",
            "value_state_base",
        ],
        _ => [
            "refine_rot_codes",
            "refine_rot_scales",
            "refine_state_mean",
            "refine_state_base",
        ],
    };
    arrays.push((names[0], &rows.codes));
    arrays.push((names[1], &rows.scales));
    arrays.push((names[2], &rows.state.mean));
    arrays.push((names[3], std::slice::from_ref(&rows.state.base)));
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
        if file.meta("format")? != FORMAT {
            return Err(corrupt(format!(
                "format is `{}`, expected `{FORMAT}`",
                file.meta("format")?
            )));
        }
        let version = file.meta("version")?.parse::<u32>().ok();
        if !version.is_some_and(|v| (OLDEST_VERSION..=VERSION).contains(&v)) {
            return Err(corrupt(format!(
                "format version {} is not supported (this library reads {OLDEST_VERSION} to \
                 {VERSION})",
                file.meta("version")?
            )));
        }
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

/// The quantized planes of one head, as read from a file.
pub(crate) struct HeadPlanes {
    pub keys: PackedKeys,
    pub values: PackedValues,
    pub value_refinement: Option<RotatedRows>,
}

/// Reads and validates the quantized planes of one head: `nq` quantized tokens of which
/// `protected` are STP-protected, each array fetched by `named(name, expected words)`.
pub(crate) fn read_planes(
    named: &dyn Fn(&str, usize) -> Result<Vec<u32>>,
    config: &QuantConfig,
    d: usize,
    nq: usize,
    protected: usize,
) -> Result<HeadPlanes> {
    let g = config.group_size;
    if config.uses_rotation() {
        Rotation::new(d).map_err(|e| corrupt(e.to_string()))?;
    }
    let state = |side: &str| -> Result<RotatedState> {
        let name = |array: &str| format!("{side}_{array}");
        let state = RotatedState {
            mean: named(&name("state_mean"), d.div_ceil(2))?,
            base: named(&name("state_base"), 1)?[0],
        };
        check_f16_words(&state.mean, &name("state_mean"))?;
        check_f16_words(&[state.base], &name("state_base"))?;
        Ok(state)
    };
    let groups = |side: &str, bits: f32| -> Result<GroupCodes> {
        let name = |array: &str| format!("{side}_{array}");
        let groups = nq / g;
        let budget = group_budget(bits, g);
        let codes = GroupCodes {
            groups,
            group_size: g,
            head_dim: d,
            budget,
            codes: named(&name("group_codes"), groups * budget * d / 32)?,
            scales: named(&name("group_scales"), groups * g / 4)?,
            widths: named(&name("group_widths"), groups * (3 * g).div_ceil(32))?,
            state: state(side)?,
        };
        codes.validate()?;
        Ok(codes)
    };
    let rotated = |side: &str, bits: u8, tokens: usize| -> Result<RotatedRows> {
        let name = |array: &str| format!("{side}_{array}");
        let state = state(side)?;
        let rows = RotatedRows {
            tokens,
            head_dim: d,
            bits,
            codes: named(
                &name("rot_codes"),
                tokens * RotatedRows::words_per_token(bits, d),
            )?,
            scales: named(&name("rot_scales"), tokens.div_ceil(4))?,
            state,
        };
        rows.validate()?;
        Ok(rows)
    };
    let channel_rows = |len| GroupedShape {
        rows: d,
        len,
        group_size: g,
    };
    let two_bit = |name: &str, shape: GroupedShape| -> Result<TwoBitPlane> {
        let plane = TwoBitPlane {
            shape,
            codes: named(
                &format!("{name}_codes"),
                shape.rows * shape.groups() * TwoBitPlane::words_per_group(g),
            )?,
            params: named(&format!("{name}_params"), shape.rows * shape.groups())?,
        };
        plane.validate()?;
        check_f16_words(&plane.params, name)?;
        Ok(plane)
    };
    let per_token = |len: usize, grouping: Grouping| match grouping {
        Grouping::PerChannel => channel_rows(len),
        Grouping::PerToken => GroupedShape {
            rows: len,
            len: d,
            group_size: g,
        },
    };
    let keys = match config.keys {
        KeyScheme::Fp16 => PackedKeys::Exact,
        KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
            grouping,
            plane: two_bit("key", per_token(nq, grouping))?,
        },
        KeyScheme::Mixed {
            outlier_ratio, fft, ..
        } => {
            let k = outlier_count(d, outlier_ratio);
            let mask = named("key_mask", d.div_ceil(32))?;
            let set: u32 = mask.iter().map(|w| w.count_ones()).sum();
            let stray = d % 32 != 0 && mask.last().is_some_and(|&w| w >> (d % 32) != 0);
            if set as usize != k || stray {
                return Err(corrupt(format!(
                    "key_mask marks {set} channels, expected {k}"
                )));
            }
            let normals = GroupedShape {
                rows: d - k,
                len: nq,
                group_size: g,
            };
            let signs = SignPlane {
                shape: normals,
                codes: named(
                    "key_signs",
                    SignPlane::words(normals) - (d - k).div_ceil(2) * normals.groups(),
                )?,
                scales: named("key_sign_scales", (d - k).div_ceil(2) * normals.groups())?,
            };
            signs.validate()?;
            check_f16_words(&signs.scales, "key_sign_scales")?;
            PackedKeys::Mixed(MixedKeys {
                outlier_mask: mask,
                outliers: two_bit(
                    "key",
                    GroupedShape {
                        rows: k,
                        len: nq,
                        group_size: g,
                    },
                )?,
                normals: signs,
                fft,
            })
        }
        KeyScheme::Rotated { bits } => PackedKeys::Rotated(rotated("key", bits, nq)?),
        KeyScheme::RotatedGroups { bits } => PackedKeys::RotatedGroups(groups("key", bits)?),
    };
    let values = match config.values {
        ValueScheme::Fp16 => PackedValues::Exact,
        ValueScheme::TwoBit { grouping } => PackedValues::TwoBit {
            grouping,
            plane: two_bit("value", per_token(nq, grouping))?,
        },
        ValueScheme::Ternary { .. } => {
            let plain = channel_rows(nq - protected);
            let scales = d.div_ceil(2) * plain.groups();
            let plane = TernaryPlane {
                shape: plain,
                codes: named("value_trits", TernaryPlane::words(plain) - scales)?,
                scales: named("value_scales", scales)?,
            };
            plane.validate()?;
            check_f16_words(&plane.scales, "value_scales")?;
            PackedValues::Ternary {
                plane,
                protected: two_bit("protected", channel_rows(protected))?,
            }
        }
        ValueScheme::Rotated { bits, group_means } => {
            let rows = rotated("value", bits, nq)?;
            let means = if group_means {
                let groups = nq / g;
                let means = GroupMeans {
                    groups,
                    group_size: g,
                    head_dim: d,
                    codes: named("value_mean_codes", groups * GroupMeans::words_per_group(d))?,
                    steps: named("value_mean_steps", groups.div_ceil(2))?,
                };
                means.validate()?;
                check_f16_words(&means.steps, "value_mean_steps")?;
                Some(means)
            } else {
                None
            };
            PackedValues::Rotated { rows, means }
        }
        ValueScheme::RotatedGroups { bits } => PackedValues::RotatedGroups(groups("value", bits)?),
    };
    let value_refinement = if protected > 0 && refines(&config.values) {
        Some(rotated("refine", REFINEMENT_BITS, protected)?)
    } else {
        None
    };
    Ok(HeadPlanes {
        keys,
        values,
        value_refinement,
    })
}

/// Fails when an array of f16 pairs holds infinity or NaN (a corrupted file).
pub(crate) fn check_f16_words(words: &[u32], name: &str) -> Result<()> {
    let bad = |half: u32| half & 0x7c00 == 0x7c00;
    match words.iter().position(|&w| bad(w & 0xffff) || bad(w >> 16)) {
        None => Ok(()),
        Some(i) => Err(corrupt(format!(
            "`{name}` holds a non-finite f16 in word {i}"
        ))),
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

/// Writes `bytes` to `path` atomically: into a temporary file beside it (an unpredictable
/// name, created exclusively), then renamed over it, so a failed or interrupted write never
/// leaves a truncated file in place of an existing one. `path` must be a new name or a
/// regular file ([`check_output`]): a directory, device, FIFO or symbolic link is refused
/// with [`VidkvError::UnsafeOutput`] and left as it is.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io_error = |source| VidkvError::Io {
        path: path.display().to_string(),
        source,
    };
    check_output(path, None)?;
    let name = path
        .file_name()
        .ok_or_else(|| io_error(std::io::Error::other("the path names no file")))?;
    // An unpredictable name beside the target, created exclusively: a file or link planted
    // there makes the save fail instead of writing through it.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{:016x}.tmp", random_u64()));
    let temp = path.with_file_name(temp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(io_error)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = written {
        // Best effort: the temporary file is ours (created exclusively above).
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(source));
    }
    Ok(())
}

/// Checks that a save may write `output`: a new name, or an existing regular file that is
/// not a symbolic link and not `input` (the same file through any path or hard link).
pub fn check_output(output: &std::path::Path, input: Option<&std::path::Path>) -> Result<()> {
    let refuse = |reason: &str| {
        Err(VidkvError::UnsafeOutput {
            path: output.display().to_string(),
            reason: reason.to_string(),
        })
    };
    let Ok(meta) = std::fs::symlink_metadata(output) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link (name its target instead)");
    }
    if !meta.is_file() {
        return refuse("it exists and is not a regular file (a directory, device or FIFO)");
    }
    if let Some(input) = input {
        if let Ok(input_meta) = std::fs::metadata(input) {
            if same_file(&meta, &input_meta) {
                return refuse(
                    "it is the input file (the same file through another path or a hard link)",
                );
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len()
        && a.modified().ok() == b.modified().ok()
        && a.created().ok() == b.created().ok()
}

/// 64 random bits from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}
