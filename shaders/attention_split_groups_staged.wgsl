// attention_split_groups_staged.wgsl — the fused kernel of attention_split_groups.wgsl for
// devices of fewer than 13 storage buffers per shader stage (Chrome exposes 10): the
// kernel binds only its planes, stats and partial sums as storage (10), and reads its
// query rows rotated by attention_rotated.wgsl's `rotate_queries` in a pass before it, as
// uniforms; the sinks and window keep dispatches of attention_split.wgsl of their own.
// Appended to the compositions `fused_kernel` picks for such devices (the _riders file
// takes its place elsewhere).
//
// Bindings (after the fused kernel's 0…13, of which 3 `queries` is not read here):
//           14 rotated_queries (uniform): vec4<f32> [4096]: the tile's rows (q/√d)·Rot,
//              [tile rows][d/4] (the host keeps tile rows · d ≤ 16384)
//           15 centre_terms (uniform): f32 [1024]: (q/√d)·m of the keys per tile row

@group(0) @binding(14) var<uniform> rotated_queries: array<vec4<f32>, 4096>;
@group(0) @binding(15) var<uniform> centre_terms: array<vec4<f32>, 256>;

// The block's rotated query rows of the chunk at c0 (see BlockQueries), read from the
// rotation pass's output; the rows' key centre terms go to key_centre. Ends with a barrier.
fn block_queries(local: u32, kv_head: u32, c0: u32) -> BlockQueries {
    if (local < BLOCK_ROWS) {
        let info = block_rows[local];
        var centre = 0.0;
        if (info.w == 1u) {
            centre = centre_terms[info.x / 4u][info.x % 4u];
        }
        key_centre[local >> 2u][local & 3u] = centre;
    }
    workgroupBarrier();
    return BlockQueries(query_block(0u, c0), query_block(0u, c0 + 4u), query_block(0u, c0 + 8u), query_block(0u, c0 + 12u),
                        query_block(4u, c0), query_block(4u, c0 + 4u), query_block(4u, c0 + 8u), query_block(4u, c0 + 12u));
}

// Four query rows' values of channels first…first+3: column j is channel first + j.
fn query_block(rows: u32, first: u32) -> mat4x4<f32> {
    return mat4x4<f32>(query_column(rows, first), query_column(rows, first + 1u),
                       query_column(rows, first + 2u), query_column(rows, first + 3u));
}

// Channel c of the rotated queries of block rows rows…rows+3 (zero for rows not live).
fn query_column(rows: u32, c: u32) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k = k + 1u) {
        let info = block_rows[rows + k];
        if (info.w == 1u) {
            let at = info.x * params.width + c;
            x[k] = rotated_queries[at / 4u][at % 4u];
        }
    }
    return x;
}

// No exact split rides in this composition's dispatches (the host sizes their grid to the
// segment's own splits), so `main` never comes here.
fn exact_split(local: u32, kv_head: u32, index: u32) {}
