//! The `vidkv-kvcache` file format: every quantized run of every layer in the
//! `crate::persist` plane layout, the exact rows, and metadata, read through `persist`'s
//! shared readers and validated before anything reaches the GPU.

use super::convert::RunSource;
use super::runs::{RunReads, StoredRun};
use super::{Chunk, KvCache, ModelShape};
use crate::config::{KeyScheme, TokenPlan};
use crate::error::{Result, VidkvError};
use crate::gpu::attention::upload_planes;
use crate::gpu::incremental::{copy_into_window, ExactStore, LayerStates, RowSpan, Rows};
use crate::gpu::GpuContext;
use crate::packed::planes::ExactRows;
use crate::packed::stp::takes_protection;
use crate::packed::{CacheShape, PackedCache, PackedHead};

/// The format name of a saved [`KvCache`].
pub const KVCACHE_FORMAT: &str = "vidkv-kvcache";
/// The version of a saved [`KvCache`] this library writes. Version 3 added runs of the
/// rotated per-token schemes (their codes, scale bytes, per-head states and group means,
/// in the `crate::persist` plane layout); version 4 the STP refinements of a rotated
/// prefill run (`refine_*` arrays, [`crate::packed::stp`]). Version 2 and 3 files load as
/// they are.
pub const KVCACHE_VERSION: u32 = 4;
/// The oldest version of a saved [`KvCache`] this library reads.
pub const KVCACHE_OLDEST_VERSION: u32 = 2;

impl KvCache {
    /// Saves the cache to `path` atomically (see [`KvCache::to_safetensors`] and
    /// [`crate::io::write_atomic`]).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_safetensors()?)
    }

    /// Loads a cache saved by [`KvCache::save`] (or a [`PackedCache`] file that names the
    /// model's `q_heads`), validating every field.
    pub fn load(path: &std::path::Path, gpu: &GpuContext) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| VidkvError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_safetensors(&bytes, gpu)
    }

    /// The cache as safetensors bytes: the `crate::persist` layout with one quantized
    /// run per chunk (`l{layer}.h{head}.r{run}.{array}`), each run's STP list
    /// (`l{layer}.r{run}.protected`), the exact sinks and window of each head
    /// (`l{layer}.h{head}.exact_keys` / `exact_values`), and metadata: `format` =
    /// `vidkv-kvcache`, `version` = [`KVCACHE_VERSION`], `shape` (with `q_heads`), `config`, and per layer its
    /// tokens and runs (`[start, groups, protected]`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let (h, d, g) = (
            self.shape.kv_heads,
            self.shape.head_dim,
            self.config.group_size,
        );
        let gpu = self.gpu.clone();
        let ctx = &gpu;
        let mut arrays: Vec<(String, Vec<u32>)> = Vec::new();
        let mut layers_meta = Vec::with_capacity(self.shape.layers);
        for (l, state) in self.layers.iter().enumerate() {
            let plan = self.config.plan(state.tokens);
            let heads = self.heads();
            let exact = |store: &ExactStore, rows: std::ops::Range<usize>, keys: bool| {
                store.read_heads(ctx, heads, rows, keys)
            };
            let mut exact_keys = vec![Vec::new(); h];
            let mut exact_values = vec![Vec::new(); h];
            let mut add = |store: &ExactStore, rows: std::ops::Range<usize>| -> Result<()> {
                for (head, (k, v)) in exact(store, rows.clone(), true)?
                    .into_iter()
                    .zip(exact(store, rows, false)?)
                    .enumerate()
                {
                    exact_keys[head].extend(k);
                    exact_values[head].extend(v);
                }
                Ok(())
            };
            for (store, used) in &state.exact_chunks {
                add(store, 0..*used)?;
            }
            if let Some(store) = &state.exact {
                let window = self.sink_rows()..self.sink_rows() + state.window_rows;
                add(store, 0..plan.sinks)?;
                add(store, window)?;
            }
            for head in 0..h {
                arrays.push((
                    format!("l{l}.h{head}.exact_keys"),
                    std::mem::take(&mut exact_keys[head]),
                ));
                arrays.push((
                    format!("l{l}.h{head}.exact_values"),
                    std::mem::take(&mut exact_values[head]),
                ));
            }
            let order = match &state.layout {
                Some(layout) if matches!(self.config.keys, KeyScheme::Mixed { .. }) => Some((
                    ctx.read_words(&layout.order, h * d)?,
                    layout.outliers,
                    layout.fft,
                )),
                _ => None,
            };
            let runs: Vec<(&Chunk, usize, bool)> = state
                .prefill
                .iter()
                .map(|(c, p)| (c, *p, true))
                .chain(state.chunks.iter().map(|c| (c, 0, false)))
                .filter(|(c, _, _)| c.groups > 0)
                .collect();
            let mut runs_meta = Vec::with_capacity(runs.len());
            for (r, &(chunk, protected, prefill)) in runs.iter().enumerate() {
                let run = [StoredRun::of(chunk, prefill)];
                let reads = RunReads::read(ctx, &run)?;
                let tokens = chunk.groups * g;
                let run_plan = TokenPlan {
                    tokens,
                    sinks: 0,
                    quantized: tokens,
                };
                for head in 0..h {
                    let planes = self.packed_head(
                        run_plan,
                        head,
                        (Vec::new(), Vec::new()),
                        RunSource {
                            reads: &reads,
                            runs: &run,
                            order: order.as_ref(),
                            protected,
                        },
                    )?;
                    for (name, words) in crate::persist::head_arrays(&planes).into_iter().skip(2) {
                        arrays.push((format!("l{l}.h{head}.r{r}.{name}"), words.to_vec()));
                    }
                }
                let list: Vec<u32> = self
                    .protected
                    .iter()
                    .copied()
                    .filter(|&p| (chunk.start..chunk.start + tokens).contains(&(p as usize)))
                    .take(protected)
                    .collect();
                arrays.push((format!("l{l}.r{r}.protected"), list));
                runs_meta.push(serde_json::json!([chunk.start, chunk.groups, protected]));
            }
            layers_meta.push(serde_json::json!({"tokens": state.tokens, "runs": runs_meta}));
        }
        let views = arrays
            .iter()
            .map(|(name, words)| {
                let bytes: &[u8] = bytemuck::cast_slice(words);
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U32,
                    vec![words.len()],
                    bytes,
                )
                .map(|view| (name.clone(), view))
                .map_err(|e| VidkvError::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let s = self.shape;
        let metadata = std::collections::HashMap::from([
            ("format".to_string(), KVCACHE_FORMAT.to_string()),
            ("version".to_string(), KVCACHE_VERSION.to_string()),
            (
                "shape".to_string(),
                serde_json::json!({"layers": s.layers, "q_heads": s.q_heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim}).to_string(),
            ),
            ("config".to_string(), self.config.to_json().to_string()),
            ("layers".to_string(), serde_json::Value::Array(layers_meta).to_string()),
        ]);
        crate::persist::serialize_canonical(views, metadata)
    }

    /// Parses and validates bytes written by [`KvCache::to_safetensors`] (or a
    /// [`PackedCache`] file with a `q_heads` metadata entry) into a cache on `gpu`.
    pub fn from_safetensors(bytes: &[u8], gpu: &GpuContext) -> Result<Self> {
        use crate::persist::{corrupt, read_planes, usize_field, SavedFile};
        let file = SavedFile::parse(bytes, "saved KvCache")?;
        if file.meta("format")? == crate::persist::FORMAT {
            let (packed, meta) = PackedCache::from_saved(file)?;
            let q_heads = meta
                .get("q_heads")
                .and_then(|q| q.parse::<usize>().ok())
                .ok_or_else(|| {
                    corrupt("a packed-cache file needs a `q_heads` entry to load as a KvCache")
                })?;
            let s = packed.shape;
            ModelShape {
                layers: s.layers,
                q_heads,
                kv_heads: s.kv_heads,
                head_dim: s.head_dim,
            }
            .validate()
            .map_err(|e| corrupt(e.to_string()))?;
            return KvCache::from_packed(&packed, q_heads, gpu);
        }
        file.check_format(KVCACHE_FORMAT, KVCACHE_OLDEST_VERSION..=KVCACHE_VERSION)?;
        let shape_json = file.json("shape")?;
        let shape = ModelShape {
            layers: usize_field(&shape_json, "layers")?,
            q_heads: usize_field(&shape_json, "q_heads")?,
            kv_heads: usize_field(&shape_json, "kv_heads")?,
            head_dim: usize_field(&shape_json, "head_dim")?,
        };
        let config = crate::persist::config_field(&file)?;
        shape.validate().map_err(|e| corrupt(e.to_string()))?;
        let layer_heads = shape.layers.saturating_mul(shape.kv_heads);
        file.check_claim("layer heads", layer_heads, 2)?;
        let mut cache = KvCache::new(shape, config.clone(), gpu)?;
        let layers = file.json("layers")?;
        let layers = layers
            .as_array()
            .filter(|a| a.len() == shape.layers)
            .ok_or_else(|| corrupt("`layers` does not list every layer"))?;
        let (h, d, g) = (shape.kv_heads, shape.head_dim, config.group_size);
        let array = |name: &str, expected: usize| file.u32_array(name, Some(expected));
        for (l, layer_meta) in layers.iter().enumerate() {
            let tokens = usize_field(layer_meta, "tokens")?;
            if tokens > u32::MAX as usize {
                return Err(corrupt(format!("layer {l} claims {tokens} tokens")));
            }
            file.check_elements(CacheShape {
                layers: 1,
                kv_heads: h,
                tokens: tokens.max(1),
                head_dim: d,
            })?;
            let plan = config.plan(tokens);
            let runs = layer_meta
                .get("runs")
                .and_then(|r| r.as_array())
                .ok_or_else(|| corrupt(format!("layer {l} lists no runs")))?;
            let exact_rows = if config.is_fp16() {
                tokens
            } else {
                plan.exact()
            };
            let mut exact_keys = Vec::with_capacity(h);
            let mut exact_values = Vec::with_capacity(h);
            for head in 0..h {
                for (name, out) in [
                    ("exact_keys", &mut exact_keys),
                    ("exact_values", &mut exact_values),
                ] {
                    let words = array(&format!("l{l}.h{head}.{name}"), exact_rows * d / 2)?;
                    crate::persist::check_f16_words(&words, name)?;
                    out.push(words);
                }
            }
            cache.restore_exact(l, tokens, &exact_keys, &exact_values)?;
            let mut position = plan.quantized_start();
            for (r, run) in runs.iter().enumerate() {
                let field = |i: usize| run.get(i).and_then(|x| x.as_u64()).map(|x| x as usize);
                let (Some(start), Some(groups), Some(protected)) = (field(0), field(1), field(2))
                else {
                    return Err(corrupt(format!(
                        "layer {l} run {r} is not [start, groups, protected]"
                    )));
                };
                let run_tokens = groups
                    .checked_mul(g)
                    .filter(|&t| t > 0 && t <= plan.quantized)
                    .ok_or_else(|| corrupt(format!("layer {l} run {r} has {groups} groups")))?;
                if start != position || protected > run_tokens {
                    return Err(corrupt(format!(
                        "layer {l} run {r} starts at {start}, expected {position}"
                    )));
                }
                let list = array(&format!("l{l}.r{r}.protected"), protected)?;
                if list.windows(2).any(|w| w[0] >= w[1])
                    || list
                        .iter()
                        .any(|&p| !(start..start + run_tokens).contains(&(p as usize)))
                {
                    return Err(corrupt(format!(
                        "layer {l} run {r}: STP positions unsorted or outside the run"
                    )));
                }
                if protected > 0 && (r != 0 || !takes_protection(&config.values)) {
                    return Err(corrupt(format!(
                        "layer {l} run {r}: STP positions outside a prefill run whose values \
                         take protection"
                    )));
                }
                let run_plan = TokenPlan {
                    tokens: start + run_tokens,
                    sinks: start,
                    quantized: run_tokens,
                };
                let mut heads = Vec::with_capacity(h);
                for head in 0..h {
                    let prefix = format!("l{l}.h{head}.r{r}.");
                    let named =
                        |name: &str, expected: usize| array(&format!("{prefix}{name}"), expected);
                    let planes = read_planes(&named, &config, d, run_tokens, protected)?;
                    heads.push(PackedHead {
                        plan: run_plan,
                        head_dim: d,
                        exact_keys: ExactRows {
                            rows: 0,
                            width: d,
                            data: Vec::new(),
                        },
                        exact_values: ExactRows {
                            rows: 0,
                            width: d,
                            data: Vec::new(),
                        },
                        keys: planes.keys,
                        values: planes.values,
                        value_refinement: planes.value_refinement,
                    });
                }
                let (layout, planes) = upload_planes(gpu, &heads, &list, g)?;
                let chunk = Chunk {
                    start,
                    groups,
                    capacity: groups,
                    growable: false,
                    planes: planes.ok_or_else(|| corrupt("a quantized run of an fp16 cache"))?,
                };
                let state = &mut cache.layers[l];
                if state.layout.is_none() {
                    state.layout = Some(layout);
                    state.states = LayerStates::of_planes(&chunk.planes);
                }
                state.quantized += run_tokens;
                if protected > 0 {
                    cache.protected = list;
                    state.prefill = Some((chunk, protected));
                } else {
                    state.chunks.push(chunk);
                }
                position += run_tokens;
            }
            if position != plan.quantized_end() {
                return Err(corrupt(format!(
                    "layer {l}: the runs cover {} tokens, the plan {}",
                    position - plan.quantized_start(),
                    plan.quantized
                )));
            }
        }
        Ok(cache)
    }

    /// Restores a layer's token count and exact rows (f16 words per head: every token for
    /// fp16, else the sinks then the window).
    pub(super) fn restore_exact(
        &mut self,
        l: usize,
        tokens: usize,
        keys: &[Vec<u32>],
        values: &[Vec<u32>],
    ) -> Result<()> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let gpu = &self.gpu.clone();
        let heads = self.heads();
        let plan = self.config.plan(tokens);
        let words_per_row = d / 2;
        self.layers[l].tokens = tokens;
        if self.config.is_fp16() {
            let mut at = 0;
            while at < tokens {
                let store = ExactStore::sized_for(gpu, heads, tokens - at)?;
                let take = store.capacity.min(tokens - at);
                let rows = at * words_per_row..(at + take) * words_per_row;
                for head in 0..h {
                    store.write_words(
                        gpu,
                        (head, 0, d),
                        &keys[head][rows.clone()],
                        &values[head][rows.clone()],
                    );
                }
                self.layers[l].exact_chunks.push((store, take));
                at += take;
            }
            return Ok(());
        }
        if plan.sinks > 0 {
            self.ensure_exact_rows(l)?;
            let store = self.layers[l].exact.as_ref().expect("just made");
            let rows = ..plan.sinks * words_per_row;
            for head in 0..h {
                store.write_words(gpu, (head, 0, d), &keys[head][rows], &values[head][rows]);
            }
        }
        // The window's f32 rows come back from its f16 form.
        let unpack = |words: &[u32]| -> Vec<f32> {
            words
                .iter()
                .flat_map(|&w| {
                    let (a, b) = crate::packed::planes::unpack_f16_pair(w);
                    [a, b]
                })
                .collect()
        };
        let tail = plan.tail();
        let rows = |all: &[Vec<u32>]| -> Vec<f32> {
            all.iter()
                .flat_map(|head| unpack(&head[plan.sinks * words_per_row..]))
                .collect()
        };
        let (window_keys, window_values) = (rows(keys), rows(values));
        self.ensure_window(l, tail)?;
        let span = RowSpan {
            k: Rows::Host(&window_keys),
            v: Rows::Host(&window_values),
            n: tail,
            from: 0,
            count: tail,
        };
        let window = self.layers[l].window_f32.as_ref().expect("ensured");
        copy_into_window(gpu, window, heads, 0, span)?;
        self.layers[l].window_rows = tail;
        self.repack_window(l)
    }
}
