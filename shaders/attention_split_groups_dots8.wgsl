// attention_split_groups_dots8.wgsl — the subgroup `row_dots` of attention_split_groups.wgsl
// for L = d/16 = 8 or 16 (no larger than the adapter's smallest subgroup; appended after
// _subgroup.wgsl): each shuffle step halves what a lane keeps and sends the other half to
// its partner, so that 4 + 2 + 1 shuffles (instead of 3 · 8 in _dots.wgsl) leave lane k of
// each 8 with query row 4·(k & 1) + 2·((k >> 1) & 1) + (k >> 2) summed over those 8; for
// L = 16 one more adds the other 8. Each of the 8 lanes writes its query row's dot.
// Needs the SUBGROUP feature.

// The smallest L this file serves (L = 8 or 16).
const ROW_LANES_AT_LEAST: u32 = 8u;

// tile_weights[first + phase] ← Σ over the L lanes of a phase of their partial dots
// (dot_low: query rows 0–3, dot_high: 4–7), for the rows below `count`. Called by every
// invocation (the shuffles need the whole subgroup); the caller's next barrier makes the
// writes visible.
fn row_dots(local: u32, phase: u32, phases: u32, first: u32, count: u32, dot_low: vec4<f32>, dot_high: vec4<f32>) {
    let row_lanes = params.width / CHUNK;
    let k = local & 7u;
    let odd = (k & 1u) == 1u;
    let v = select(dot_low, dot_high, odd) + subgroupShuffleXor(select(dot_high, dot_low, odd), 1u);
    let two = (k & 2u) != 0u;
    let w = select(v.xy, v.zw, two) + subgroupShuffleXor(select(v.zw, v.xy, two), 2u);
    let four = (k & 4u) != 0u;
    var x = select(w.x, w.y, four) + subgroupShuffleXor(select(w.y, w.x, four), 4u);
    x = x + select(0.0, subgroupShuffleXor(x, 8u), row_lanes > 8u);
    let r = first + phase;
    if (phase < phases && r < count && (local & (row_lanes - 1u)) < 8u) {
        tile_weights[weight_index(r, k & 1u)][2u * ((k >> 1u) & 1u) + (k >> 2u)] = x;
    }
}
