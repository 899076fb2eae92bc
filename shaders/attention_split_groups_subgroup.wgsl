// attention_split_groups_subgroup.wgsl — the subgroup `row_dots` of
// attention_split_groups.wgsl (appended to it), chosen when the adapter has subgroups no
// smaller than L = d/16 (a power of two): the L lanes of a row, consecutive invocations of
// one subgroup, add their partial dots with butterflies of subgroupShuffleXor, and the
// row's first lane writes them; no workgroup memory and no barrier per round.
// Needs the SUBGROUP feature (browsers also want `enable subgroups;`, added per target).

// tile_weights[query row][first + phase] ← Σ over the L lanes of a phase of their partial
// dots (dot_low: query rows 0–3, dot_high: 4–7), for the rows below `count`. Called by
// every invocation (the shuffles need the whole subgroup); the caller's next barrier makes
// the writes visible.
fn row_dots(local: u32, first: u32, count: u32, dot_low: vec4<f32>, dot_high: vec4<f32>) {
    let row_lanes = params.width / CHUNK;
    let phases = LANES / row_lanes;
    var low = dot_low;
    var high = dot_high;
    for (var offset = 1u; offset < row_lanes; offset = offset * 2u) {
        low = low + subgroupShuffleXor(low, offset);
        high = high + subgroupShuffleXor(high, offset);
    }
    let phase = local / row_lanes;
    let r = first + phase;
    if (local % row_lanes == 0u && phase < phases && r < count) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            tile_weights[k * TILE_TOKENS + r] = low[k];
            tile_weights[(k + 4u) * TILE_TOKENS + r] = high[k];
        }
    }
}
