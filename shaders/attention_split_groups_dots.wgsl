// attention_split_groups_dots.wgsl — the subgroup `row_dots` of attention_split_groups.wgsl
// for any L = d/16 (a power of two no larger than the adapter's smallest subgroup; appended
// after _subgroup.wgsl): the L lanes of a row, consecutive invocations of one subgroup, add
// their partial dots with butterflies of subgroupShuffleXor, and the row's lanes 0 and 1
// write query rows 0–3 and 4–7 (lane 0 both for L = 1); no workgroup memory and no barrier
// per round. _dots8.wgsl does it in fewer shuffles for L = 8 and 16.
// Needs the SUBGROUP feature.

// The smallest L this file serves (any L).
const ROW_LANES_AT_LEAST: u32 = 1u;

// tile_weights[first + phase] ← Σ over the L lanes of a phase of their partial
// dots (dot_low: query rows 0–3, dot_high: 4–7), for the rows below `count`. Called by
// every invocation (the shuffles need the whole subgroup); the caller's next barrier makes
// the writes visible.
fn row_dots(local: u32, phase: u32, phases: u32, first: u32, count: u32, dot_low: vec4<f32>, dot_high: vec4<f32>) {
    let row_lanes = params.width / CHUNK;
    var low = dot_low;
    var high = dot_high;
    for (var offset = 1u; offset < row_lanes; offset = offset * 2u) {
        low = low + subgroupShuffleXor(low, offset);
        high = high + subgroupShuffleXor(high, offset);
    }
    let r = first + phase;
    if (phase < phases && r < count) {
        for (var h = local & (row_lanes - 1u); h < 2u; h = h + row_lanes) {
            tile_weights[weight_index(r, h)] = select(low, high, h == 1u);
        }
    }
}
