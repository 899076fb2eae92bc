//! vidkv for JavaScript: the library itself, compiled to wasm32, running its WGSL kernels on
//! the page's WebGPU device through wgpu. Every call that waits for the GPU returns a
//! `Promise` (a page cannot block).
//!
//! ```js
//! import init, { Gpu, Cache } from './pkg/vidkv_web.js';
//! await init();
//! const gpu = await Gpu.open();                       // rejects without WebGPU
//! const cache = new Cache(gpu, 'vidkv', layers, kvHeads, qHeads, headDim);
//! cache.append(0, k, v);                              // Float32Array [kvHeads, n, headDim]
//! const out = await cache.attend(0, q, visible);      // q [qHeads, m, headDim]; visible [lo, hi] × m
//! console.log(cache.bitsPerElement, cache.bytes);
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Float32Array, Promise};
use vidkv::io::KvSample;
use vidkv::{GpuContext, GpuOptions, KvCache, ModelShape, QuantConfig, VidkvError};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

fn js_error(e: VidkvError) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The page's WebGPU device, opened by the library ([`GpuContext::new_async`]).
#[wasm_bindgen]
pub struct Gpu {
    context: GpuContext,
}

#[wasm_bindgen]
impl Gpu {
    /// Opens the page's WebGPU adapter and device; rejects with the library's message when
    /// the browser offers none.
    pub async fn open() -> Result<Gpu, JsValue> {
        let context = GpuContext::new_async(&GpuOptions {
            portable_only: true,
            ..GpuOptions::default()
        })
        .await
        .map_err(js_error)?;
        Ok(Gpu { context })
    }

    /// The adapter's name as wgpu reports it (empty through WebGPU: read
    /// `navigator.gpu.requestAdapter().info` for the browser's).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.context.adapter_name()
    }
}

/// A whole-model compressed KV cache on the page's GPU ([`KvCache`]).
#[wasm_bindgen]
pub struct Cache {
    cache: Rc<RefCell<KvCache>>,
}

#[wasm_bindgen]
impl Cache {
    /// An empty cache of `preset` (`vidkv`, `kivi2`, `fp16`, … as in the Rust library).
    #[wasm_bindgen(constructor)]
    pub fn new(
        gpu: &Gpu,
        preset: &str,
        layers: usize,
        kv_heads: usize,
        q_heads: usize,
        head_dim: usize,
    ) -> Result<Cache, JsValue> {
        let shape = ModelShape {
            layers,
            q_heads,
            kv_heads,
            head_dim,
        };
        let config = QuantConfig::preset(preset).map_err(js_error)?;
        let cache = KvCache::new(shape, config, &gpu.context).map_err(js_error)?;
        Ok(Cache {
            cache: Rc::new(RefCell::new(cache)),
        })
    }

    /// Appends keys and values (`Float32Array`s `[kv_heads, n, head_dim]`) to `layer`;
    /// whole groups leaving the window are quantized on the GPU.
    pub fn append(&self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), JsValue> {
        let mut cache = self
            .cache
            .try_borrow_mut()
            .map_err(|_| JsError::new("the cache is busy with an attention call"))?;
        cache.append(layer, k, v).map_err(js_error)
    }

    /// Attention of `q` (`[q_heads, queries, head_dim]`) over `layer`, query m seeing
    /// positions `visible[2m] .. visible[2m + 1]`: a `Promise` of a `Float32Array`
    /// `[q_heads, queries, head_dim]`.
    pub fn attend(&self, layer: usize, q: Vec<f32>, visible: Vec<u32>) -> Promise {
        let cache = Rc::clone(&self.cache);
        future_to_promise(async move {
            let ranges: Vec<(u32, u32)> =
                visible.chunks(2).map(|r| (r[0], r[r.len() - 1])).collect();
            let cache = cache
                .try_borrow()
                .map_err(|_| JsError::new("the cache is being appended to"))?;
            let out = cache
                .attend_async(layer, &q, &ranges)
                .await
                .map_err(js_error)?;
            Ok(Float32Array::from(out.as_slice()).into())
        })
    }

    /// Tokens stored in `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.cache.borrow().len(layer)
    }

    /// Bytes the cache stores.
    #[wasm_bindgen(getter)]
    pub fn bytes(&self) -> usize {
        self.cache.borrow().bytes()
    }

    /// Stored bits per cached key/value element.
    #[wasm_bindgen(getter, js_name = bitsPerElement)]
    pub fn bits_per_element(&self) -> f64 {
        self.cache.borrow().bits_per_element()
    }
}

/// A K/V/Q sample (safetensors bytes and its JSON sidecar), parsed and checked once by
/// `vidkv::io::KvSample::from_bytes`; the demo's functions take it.
#[wasm_bindgen]
pub struct Sample {
    sample: Rc<KvSample>,
}

#[wasm_bindgen]
impl Sample {
    #[wasm_bindgen(constructor)]
    pub fn new(tensors: &[u8], sidecar: &str) -> Result<Sample, JsValue> {
        let sample = KvSample::from_bytes("sample", tensors, Some(sidecar)).map_err(js_error)?;
        Ok(Sample {
            sample: Rc::new(sample),
        })
    }
}

/// The demo's figures for `preset` on `sample`: a `Promise` of `{preset, bytes,
/// bits_per_element, attention_error, first_layer}` computed by `vidkv::web::cache_figures`,
/// the same function the native test runs.
#[wasm_bindgen(js_name = evaluateSample)]
pub fn evaluate_sample(gpu: &Gpu, sample: &Sample, preset: String) -> Promise {
    let (context, sample) = (gpu.context.clone(), Rc::clone(&sample.sample));
    future_to_promise(async move {
        let figures = vidkv::web::cache_figures(&context, &sample, &preset)
            .await
            .map_err(js_error)?;
        let object = js_sys::JSON::parse(&figures.to_json().to_string())?;
        js_sys::Reflect::set(
            &object,
            &"first_layer".into(),
            &Float32Array::from(figures.first_layer.as_slice()),
        )?;
        Ok(object)
    })
}

/// The attention weights of stored query `query` of `layer` for every query head over the
/// keys as `preset` stores them (`vidkv::web::attention_weights`, computed on the CPU in
/// the page): a `Float32Array` `[q_heads][tokens]`.
#[wasm_bindgen(js_name = attentionWeights)]
pub fn attention_weights(
    sample: &Sample,
    preset: &str,
    layer: usize,
    query: usize,
) -> Result<Float32Array, JsValue> {
    let weights =
        vidkv::web::attention_weights(&sample.sample, preset, layer, query).map_err(js_error)?;
    Ok(Float32Array::from(weights.as_slice()))
}
