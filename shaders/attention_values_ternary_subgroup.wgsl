// attention_values_ternary_subgroup.wgsl — the subgroup variant of the ternary value kernel
// (appended to attention_values_ternary.wgsl), chosen when the adapter has subgroups: each
// invocation of a subgroup reads the weight of a different token and subgroupShuffle shares
// it, so a subgroup reads each weight once instead of once per invocation.
// Needs the SUBGROUP feature (browsers also want `enable subgroups;`, added per target).

fn aligned_run(weights_at: u32, codes_at: u32, count: u32, lane: u32, lanes: u32) -> TritSums {
    var low = vec4<f32>(0.0);
    var high = 0.0;
    // Subgroup sizes are powers of two ≥ 4, and `count` is a multiple of 4.
    for (var i = 0u; i < count; i = i + lanes) {
        var mine = 0.0;
        if (i + lane < count) {
            mine = weights[(weights_at + i + lane) / 4u][(weights_at + i + lane) % 4u];
        }
        for (var k = 0u; k < lanes; k = k + 4u) {
            let p = vec4<f32>(
                subgroupShuffle(mine, k),
                subgroupShuffle(mine, k + 1u),
                subgroupShuffle(mine, k + 2u),
                subgroupShuffle(mine, k + 3u),
            );
            if (i + k < count) {
                let w = codes[codes_at + (i + k) / 4u];
                let t0 = trits(w, 0u);
                let t1 = trits(w, 1u);
                let t2 = trits(w, 2u);
                let t3 = trits(w, 3u);
                low = low + p.x * t0.low + p.y * t1.low + p.z * t2.low + p.w * t3.low;
                high = high + dot(p, vec4<f32>(t0.high, t1.high, t2.high, t3.high));
            }
        }
    }
    return TritSums(low, high);
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
