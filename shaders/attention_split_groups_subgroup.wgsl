// attention_split_groups_subgroup.wgsl — the subgroup row reads of
// attention_split_groups.wgsl (appended to it, before a row_dots file, _dots or _dots8),
// chosen when the adapter has subgroups no smaller than L = d/16 (a power of two): the L
// lanes of a row, consecutive invocations of one subgroup, read a staged record or a row's
// weights once and pass it on by subgroupShuffleXor.
// The row_dots file declares ROW_LANES_AT_LEAST, the smallest L it serves: the steps below
// it need no test.
// Needs the SUBGROUP feature (browsers also want `enable subgroups;`, added per target).

// The staged record of key (values = false) or value row r, read by the row's first lane
// and passed to its other lanes by shuffles (on llvmpipe a load is a loop over the lanes
// that take part in it: one instead of L). Only x, y and z are passed on: the centre factor
// w stays with the first lane (0 elsewhere), the one lane whose centre terms count.
fn staged_row(values: bool, r: u32, lane_chunk: u32) -> vec4<u32> {
    var v = vec4<u32>(0u);
    if (lane_chunk == 0u && values) {
        v = value_rows[r];
    }
    if (lane_chunk == 0u && !values) {
        v = key_rows[r];
    }
    let lanes = params.width / CHUNK;
    var s = v.xyz;
    s = s | select(vec3<u32>(0u), subgroupShuffleXor(s, 1u), 1u < ROW_LANES_AT_LEAST || lanes > 1u);
    s = s | select(vec3<u32>(0u), subgroupShuffleXor(s, 2u), 2u < ROW_LANES_AT_LEAST || lanes > 2u);
    s = s | select(vec3<u32>(0u), subgroupShuffleXor(s, 4u), 4u < ROW_LANES_AT_LEAST || lanes > 4u);
    s = s | select(vec3<u32>(0u), subgroupShuffleXor(s, 8u), 8u < ROW_LANES_AT_LEAST || lanes > 8u);
    return vec4<u32>(s, v.w);
}

// Tile row r's weights of query rows 4h…4h+3, read by lane h of the row (lane 0 for L = 1)
// and passed to the others likewise.
fn row_weights(r: u32, h: u32, lane_chunk: u32) -> vec4<f32> {
    let lanes = params.width / CHUNK;
    var v = vec4<f32>(0.0);
    if (lane_chunk == min(h, lanes - 1u)) {
        v = tile_weights[weight_index(r, h)];
    }
    v = v + select(vec4<f32>(0.0), subgroupShuffleXor(v, 1u), 1u < ROW_LANES_AT_LEAST || lanes > 1u);
    v = v + select(vec4<f32>(0.0), subgroupShuffleXor(v, 2u), 2u < ROW_LANES_AT_LEAST || lanes > 2u);
    v = v + select(vec4<f32>(0.0), subgroupShuffleXor(v, 4u), 4u < ROW_LANES_AT_LEAST || lanes > 4u);
    return v + select(vec4<f32>(0.0), subgroupShuffleXor(v, 8u), 8u < ROW_LANES_AT_LEAST || lanes > 8u);
}
