// attention_split_halves.wgsl — the shader-f16 row reads of attention_split_exact.wgsl:
// f16 rows loaded as vec4<f16> and widened to f32 at once, so that every product and sum
// stays f32 (f16 accumulation would break the 1e-4 bound). The host puts `enable f16;`
// before the composed module (a directive must precede every declaration).
//
// Bindings: 5 keys   (storage, read): vec4<f16> [kv_heads][rows][d/4]
//           6 values (storage, read): vec4<f16> [kv_heads][rows][d/4]

@group(0) @binding(5) var<storage, read> keys: array<vec4<f16>>;
@group(0) @binding(6) var<storage, read> values: array<vec4<f16>>;

// q·k of the query octet (qa, qb) with key octet `at` (an index in octets).
fn exact_key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32) -> f32 {
    return dot(qa, vec4<f32>(keys[2u * at])) + dot(qb, vec4<f32>(keys[2u * at + 1u]));
}

// The four f16 values of value quad `at` (an index in quads), widened to f32.
fn exact_value_quad(at: u32) -> vec4<f32> {
    return vec4<f32>(values[at]);
}
