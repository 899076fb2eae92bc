// attention_split_words.wgsl — the portable row reads of attention_split_exact.wgsl: f16
// rows as u32 words, widened by unpack2x16float (core WebGPU).
//
// Bindings: 5 keys   (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           6 values (storage, read): vec2<u32> [kv_heads][rows][d/4], f16 pairs

@group(0) @binding(5) var<storage, read> keys: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> values: array<vec2<u32>>;

// q·k of the query octet (qa, qb) with key octet `at` (an index in octets).
fn exact_key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32) -> f32 {
    let k = unpack_f16_octet(keys[at]);
    return dot(qa, vec4<f32>(k[0], k[1], k[2], k[3])) + dot(qb, vec4<f32>(k[4], k[5], k[6], k[7]));
}

// The four f16 values of value quad `at` (an index in quads), widened to f32.
fn exact_value_quad(at: u32) -> vec4<f32> {
    let words = values[at];
    return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}
