// attention_values_ternary_subgroup.wgsl — the subgroup variant of the ternary value kernel
// (appended to attention_values_ternary.wgsl), chosen when the adapter has subgroups: each
// invocation of a subgroup reads the quad's weights of a different token and
// subgroupShuffle shares them, so a subgroup reads each weight once instead of once per
// invocation.
// Needs the SUBGROUP feature (browsers also want `enable subgroups;`, added per target).

fn aligned_run(quad: Quad, element: u32, codes_at: u32, count: u32, lane: u32, lanes: u32) -> TritSums {
    var sums = TritSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let stride = score_stride();
    // Subgroup sizes are powers of two ≥ 4, and `count` is a multiple of 4.
    for (var i = 0u; i < count; i = i + lanes) {
        var mine = vec4<f32>(0.0);
        if (i + lane < count) {
            let at = quad.rows * stride + vec4<u32>(element + i + lane);
            mine = vec4<f32>(
                weights[at.x / 4u][at.x % 4u],
                weights[at.y / 4u][at.y % 4u],
                weights[at.z / 4u][at.z % 4u],
                weights[at.w / 4u][at.w % 4u],
            ) * quad.live;
        }
        for (var k = 0u; k < lanes; k = k + 4u) {
            let p0 = subgroupShuffle(mine, k);
            let p1 = subgroupShuffle(mine, k + 1u);
            let p2 = subgroupShuffle(mine, k + 2u);
            let p3 = subgroupShuffle(mine, k + 3u);
            if (i + k < count) {
                let word = codes[codes_at + (i + k) / 4u];
                add_token(&sums, p0, trits(word, 0u));
                add_token(&sums, p1, trits(word, 1u));
                add_token(&sums, p2, trits(word, 2u));
                add_token(&sums, p3, trits(word, 3u));
            }
        }
    }
    return sums;
}

@compute @workgroup_size(VALUE_LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    ternary_main(workgroup, local, lane, lanes);
}
