// attention_values_ternary_portable.wgsl — the portable variant of the ternary value kernel
// (appended to attention_values_ternary.wgsl): each row's weights read as vec4s, four tokens
// per load. Needs no optional feature; always tested.

// Per-channel Σ p·t for the quad's rows over `count` tokens (a multiple of 4) from segment
// element `element` (a multiple of 4), whose trit bytes start at word `codes_at`.
fn aligned_run(quad: Quad, element: u32, codes_at: u32, count: u32, lane: u32, lanes: u32) -> TritSums {
    var sums = TritSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let stride = score_stride() / 4u;
    let base = quad.rows * stride + vec4<u32>(element / 4u);
    for (var i = 0u; i < count; i = i + 4u) {
        let w0 = weights[base.x + i / 4u] * quad.live.x;
        let w1 = weights[base.y + i / 4u] * quad.live.y;
        let w2 = weights[base.z + i / 4u] * quad.live.z;
        let w3 = weights[base.w + i / 4u] * quad.live.w;
        let word = codes[codes_at + i / 4u];
        add_token(&sums, vec4<f32>(w0.x, w1.x, w2.x, w3.x), trits(word, 0u));
        add_token(&sums, vec4<f32>(w0.y, w1.y, w2.y, w3.y), trits(word, 1u));
        add_token(&sums, vec4<f32>(w0.z, w1.z, w2.z, w3.z), trits(word, 2u));
        add_token(&sums, vec4<f32>(w0.w, w1.w, w2.w, w3.w), trits(word, 3u));
    }
    return sums;
}

@compute @workgroup_size(VALUE_LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    ternary_main(workgroup, local, 0u, 1u);
}
