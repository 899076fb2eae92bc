// attention_values_ternary_portable.wgsl — the portable variant of the ternary value kernel
// (appended to attention_values_ternary.wgsl): weights read as vec4s, four tokens per load.
// Needs no optional feature; always tested.

// Per-channel Σ p·t over `count` tokens (a multiple of 4) whose weights start at float
// index `weights_at` (a multiple of 4) and whose trit bytes start at word `codes_at`.
fn aligned_run(weights_at: u32, codes_at: u32, count: u32, lane: u32, lanes: u32) -> TritSums {
    var low = vec4<f32>(0.0);
    var high = 0.0;
    for (var i = 0u; i < count; i = i + 4u) {
        let p = weights[(weights_at + i) / 4u];
        let w = codes[codes_at + i / 4u];
        let t0 = trits(w, 0u);
        let t1 = trits(w, 1u);
        let t2 = trits(w, 2u);
        let t3 = trits(w, 3u);
        low = low + p.x * t0.low + p.y * t1.low + p.z * t2.low + p.w * t3.low;
        high = high + dot(p, vec4<f32>(t0.high, t1.high, t2.high, t3.high));
    }
    return TritSums(low, high);
}

@compute @workgroup_size(VALUE_LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    ternary_main(workgroup, local, 0u, 1u);
}
