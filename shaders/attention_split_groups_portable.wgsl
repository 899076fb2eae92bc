// attention_split_groups_portable.wgsl — the portable row reads and `row_dots` of
// attention_split_groups.wgsl (appended to it, before a phases file): every lane reads a
// row's staged record and weights itself; the lanes' partial dots go through workgroup
// memory, and P rows × 2 halves of sums (four query rows each) are added by the lanes
// together.
// The inner loop has a constant bound (16 chunks, masked to the L of d): on llvmpipe, a
// loop with a bound read at run time nested here cost a fixed ≈ 35 ms per dispatch
// (BENCHMARKS.md), even in dispatches that never reached it.

// tile_weights[first + phase] ← Σ over the L lanes of a phase of their partial
// dots (dot_low: query rows 0–3, dot_high: 4–7), for the rows below `count`. Called by
// every invocation; starts writing at once and ends with a barrier.
fn row_dots(local: u32, phase: u32, phases: u32, first: u32, count: u32, dot_low: vec4<f32>, dot_high: vec4<f32>) {
    let row_lanes = params.width / CHUNK;
    if (phase < phases) {
        exchange[2u * local] = dot_low;
        exchange[2u * local + 1u] = dot_high;
    }
    workgroupBarrier();
    // phases · 2 ≤ 128 sums of four query rows (d ≥ 16), each over row_lanes ≤ 16 chunks
    // (d ≤ 256).
    for (var task = local; task < phases * 2u; task = task + LANES) {
        let sum_phase = task / 2u;
        let h = task % 2u;
        var sum = vec4<f32>(0.0);
        for (var c = 0u; c < 16u; c = c + 1u) {
            if (c < row_lanes) {
                sum = sum + exchange[2u * (sum_phase * row_lanes + c) + h];
            }
        }
        if (first + sum_phase < count) {
            tile_weights[weight_index(first + sum_phase, h)] = sum;
        }
    }
    workgroupBarrier();
}

// The staged record of key (values = false) or value row r, for every lane of the row (the
// kernel uses the centre factor w only in the row's first lane).
fn staged_row(values: bool, r: u32, lane_chunk: u32) -> vec4<u32> {
    if (values) {
        return value_rows[r];
    }
    return key_rows[r];
}

// Tile row r's weights of query rows 4h…4h+3, for every lane of the row.
fn row_weights(r: u32, h: u32, lane_chunk: u32) -> vec4<f32> {
    return tile_weights[weight_index(r, h)];
}
