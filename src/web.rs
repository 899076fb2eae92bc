//! The browser demo's plan: the library's own GPU code, traced, for a WebGPU page to replay
//! (a tool of the CLI's `demo` and `export-web`, not needed by hosts).
//!
//! [`demo_plan`] runs, with the context's command trace on, for each of
//! [`DEMO_PRESETS`]: GPU quantization of a sample (`quantize`), the fused attention of every
//! stored layer for the sample's queries (`attention`, portable kernels), and the same
//! attention one segment at a time with the softmax weights read back (`heat map`: the
//! weights of every token, from the kernels' split-local maxima and sums). The page
//! (`web/app.js`) replays those commands with the WGSL files of `shaders/` and computes its
//! figures from what its own GPU returns.
//!
//! [`DemoPlan::expected`] holds the Rust reference figures the browser test compares with:
//! effective bits and bytes per preset ([`PackedCache::size`]), the attention-output error
//! of the CPU reference (as `vidkv report` computes it), and an FNV-1a checksum of the code
//! planes that the GPU quantization read back, which [`demo_plan`] first checks equal the
//! CPU reference quantizer's codes word for word.

use serde_json::{json, Value};

use crate::config::QuantConfig;
use crate::error::{Result, VidkvError};
use crate::gpu::attention::{attend_segments, attend_with, GpuLayer, Kernels, SPLIT_TOKENS};
use crate::gpu::quantize::quantize_cache;
use crate::gpu::trace::Trace;
use crate::gpu::GpuContext;
use crate::io::KvSample;
use crate::packed::{PackedCache, PackedKeys, PackedValues};
use crate::report::{evaluate_on, Device};

/// Words of the kernel parameter block each traced dispatch carries (`params`).
pub const PARAMS_WORDS: usize = std::mem::size_of::<crate::gpu::params::Params>() / 4;

/// Guard words after each traced read-back (`words` counts them).
pub const READ_GUARD_WORDS: usize = crate::gpu::buffers::GUARD_WORDS;

/// The presets the page compares.
pub const DEMO_PRESETS: [&str; 4] = ["fp16", "kivi2", "vidkv-tuned", "vidkv"];

/// Read-back labels whose words make up the code checksum.
pub const CODE_LABELS: [&str; 5] = [
    "two-bit codes",
    "sign codes",
    "ternary codes",
    "rotated codes",
    "group codes",
];

/// A traced plan, its literal bytes, and the reference figures.
pub struct DemoPlan {
    pub plan: Value,
    pub blob: Vec<u8>,
    pub expected: Value,
}

/// 32-bit FNV-1a over the little-endian bytes of `words`.
pub fn fnv1a(words: impl IntoIterator<Item = u32>) -> u32 {
    let mut hash = 0x811c_9dc5u32;
    for word in words {
        for byte in word.to_le_bytes() {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// Per preset, the FNV-1a of every code-plane read-back (guard words included) of its
/// `quantize` step, in trace order: what the page computes from its own read-backs.
fn code_checksums(trace: &Trace) -> std::collections::HashMap<String, u32> {
    let mut words: std::collections::HashMap<String, Vec<u32>> = Default::default();
    let mut step = String::new();
    for event in trace.events() {
        match event["op"].as_str() {
            Some("step") => step = event["name"].as_str().unwrap_or_default().to_string(),
            Some("read") if CODE_LABELS.contains(&event["label"].as_str().unwrap_or_default()) => {
                if let Some(preset) = step.strip_suffix(": quantize") {
                    let index = event["read"].as_u64().unwrap_or_default() as usize;
                    words
                        .entry(preset.to_string())
                        .or_default()
                        .extend(trace.read_words(index).unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    words
        .into_iter()
        .map(|(preset, w)| (preset, fnv1a(w)))
        .collect()
}

/// Every code word of a cache, head by head: 2-bit key codes, sign codes, value codes.
fn code_words(cache: &PackedCache) -> Vec<u32> {
    let mut words = Vec::new();
    for head in &cache.heads {
        match &head.keys {
            PackedKeys::Exact => {}
            PackedKeys::TwoBit { plane, .. } => words.extend(&plane.codes),
            PackedKeys::Mixed(mixed) => {
                words.extend(&mixed.outliers.codes);
                words.extend(&mixed.normals.codes);
            }
            PackedKeys::Rotated(rows) => words.extend(&rows.codes),
            PackedKeys::RotatedGroups(codes) => words.extend(&codes.codes),
        }
        match &head.values {
            PackedValues::Exact => {}
            PackedValues::TwoBit { plane, .. } => words.extend(&plane.codes),
            PackedValues::Ternary { plane, protected } => {
                words.extend(&plane.codes);
                words.extend(&protected.codes);
            }
            PackedValues::Rotated { rows, .. } => words.extend(&rows.codes),
            PackedValues::RotatedGroups(codes) => words.extend(&codes.codes),
        }
    }
    words
}

/// The (lo, hi) key range each stored query of `sample` sees.
pub fn visible_ranges(sample: &KvSample) -> Result<Vec<(u32, u32)>> {
    let tokens = sample.k.dim(2);
    sample
        .q_positions
        .iter()
        .map(|&p| {
            let (lo, hi) = sample.mask.visible_range(p, tokens).ok_or_else(|| {
                VidkvError::Sidecar(format!(
                    "query at position {p} does not see one contiguous range of keys"
                ))
            })?;
            Ok((lo as u32, hi as u32))
        })
        .collect()
}

/// Traces the demo on `gpu` (a fresh context opened with portable kernels) for `sample`.
pub fn demo_plan(gpu: &GpuContext, sample: &KvSample) -> Result<DemoPlan> {
    let [layers, _, _, d] = [0, 1, 2, 3].map(|i| sample.k.dim(i));
    let (q_heads, queries) = (sample.q.dim(1), sample.q.dim(2));
    let visible = visible_ranges(sample)?;
    // The heat map reads the scores of all rows after one call: they must fit one tile.
    let score_bytes = (q_heads * queries * sample.k.dim(2).next_multiple_of(4) * 4) as u64;
    if score_bytes > gpu.max_data_bytes() {
        return Err(VidkvError::InvalidConfig(format!(
            "the sample's scores ({score_bytes} bytes) exceed one storage binding of this adapter"
        )));
    }
    let bytes = |data: &[f32]| bytemuck::cast_slice::<f32, u8>(data).to_vec();
    gpu.start_trace(vec![
        ("k".into(), bytes(&sample.k.data)),
        ("v".into(), bytes(&sample.v.data)),
        ("q".into(), bytes(&sample.q.data)),
    ]);
    let mut presets = Vec::new();
    let traced = (|| -> Result<()> {
        for name in DEMO_PRESETS {
            let config = QuantConfig::preset(name)?;
            gpu.trace_step(&format!("{name}: quantize"));
            let gpu_cache = quantize_cache(gpu, &sample.k, &sample.v, &config, &[])?;
            let cpu_cache = PackedCache::quantize(&sample.k, &sample.v, &config, &[])?;
            let (gpu_codes, cpu_codes) = (code_words(&gpu_cache), code_words(&cpu_cache));
            let differing = gpu_codes
                .iter()
                .zip(&cpu_codes)
                .filter(|(a, b)| a != b)
                .count()
                + gpu_codes.len().abs_diff(cpu_codes.len());
            gpu.trace_step(&format!("{name}: attention"));
            let mut uploaded = Vec::with_capacity(layers);
            for layer in 0..layers {
                gpu.trace_note(json!({"layer": layer}));
                let gpu_layer = GpuLayer::upload(gpu, &gpu_cache, layer)?;
                let q = &sample.q.data[layer * q_heads * queries * d..][..q_heads * queries * d];
                attend_with(gpu, &gpu_layer, q, q_heads, &visible, Kernels::Portable)?;
                uploaded.push(gpu_layer);
            }
            gpu.trace_step(&format!("{name}: heat map"));
            for (layer, gpu_layer) in uploaded.iter().enumerate() {
                let q = &sample.q.data[layer * q_heads * queries * d..][..q_heads * queries * d];
                for segment in gpu_layer.segments() {
                    if segment.len == 0 {
                        continue;
                    }
                    gpu.trace_note(json!({"layer": layer, "segment_start": segment.start,
                        "segment_len": segment.len, "splits": segment.splits(), "split_tokens": SPLIT_TOKENS}));
                    attend_segments(
                        gpu,
                        &gpu_layer.geometry(),
                        std::slice::from_ref(&segment),
                        q,
                        q_heads,
                        &visible,
                        Kernels::Portable,
                    )?;
                    let rows = q_heads * queries;
                    let stride = segment.len.next_multiple_of(4);
                    let splits = segment.splits();
                    gpu.read_pooled("attention scores", rows * stride)?;
                    gpu.read_pooled("attention stats", rows * splits * 2)?;
                }
            }
            let reference = evaluate_on(Device::Cpu, sample, name, &config)?;
            let size = cpu_cache.size();
            presets.push(json!({
                "preset": name,
                "bits": size.all_bits(),
                "bytes": size.total_bytes(),
                "attention_error": reference.attn_rel_err,
                "gpu_codes_differing_from_cpu": differing,
            }));
            if differing != 0 {
                return Err(VidkvError::Gpu(format!(
                    "{name}: {differing} code words of the GPU quantization differ from the CPU reference"
                )));
            }
        }
        Ok(())
    })();
    let trace = gpu.finish_trace();
    traced?;
    let trace = trace.ok_or_else(|| VidkvError::Gpu("the trace was lost".into()))?;
    let checksums = code_checksums(&trace);
    for preset in &mut presets {
        let name = preset["preset"].as_str().unwrap_or_default().to_string();
        preset["codes_checksum"] = json!(checksums.get(&name).copied().unwrap_or(fnv1a([])));
    }
    let (mut plan, blob) = trace.to_plan();
    plan["sample"] = json!({
        "layers": layers,
        "kv_heads": sample.k.dim(1),
        "tokens": sample.k.dim(2),
        "head_dim": d,
        "q_heads": q_heads,
        "queries": queries,
        "q_positions": sample.q_positions,
        "visible": visible,
    });
    plan["presets"] = Value::from(DEMO_PRESETS.to_vec());
    plan["code_labels"] = Value::from(CODE_LABELS.to_vec());
    let expected = json!({
        "adapter": gpu.adapter_name(),
        "presets": presets,
    });
    Ok(DemoPlan {
        plan,
        blob,
        expected,
    })
}
