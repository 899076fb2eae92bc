// attention_scores_exact.wgsl — q·k for exact (f16) key rows: the whole cache of the fp16
// baseline, and the sinks and recent window of quantized presets.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = exact rows per
//           KV head, segment_first = first exact row of the segment, segment_len,
//           rows_per_head, queries, row_offset, invocations = ⌈segment_len/32⌉ per row)
//           1 queries (storage, read): vec4<f32> [tile rows][d/4], natural order, scaled
//           2 keys    (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           3 scores  (storage, read_write): f32 [tile rows][score_stride()]
// Dispatch: grid (⌈blocks/WORKGROUP_SIZE⌉, tile rows): workgroup y is the query row, so its
// loads of the query are uniform; one invocation per block of 32 key rows.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> keys: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let block = workgroup.x * WORKGROUP_SIZE + local;
    if (block >= params.invocations) {
        return;
    }
    let tile_row = workgroup.y;
    let first = block * 32u;
    let count = min(32u, params.segment_len - first);
    let r = query_row(tile_row);
    let octets = params.width / 8u;
    let key_base = (r.kv_head * params.rows + params.segment_first + first) * octets;
    // 32 accumulators as eight vec4s with constant indices: dynamically indexed arrays
    // would live in memory on CPU drivers.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    let last = count - 1u;
    for (var o = 0u; o < octets; o = o + 1u) {
        let qa = queries[tile_row * octets * 2u + 2u * o];
        let qb = queries[tile_row * octets * 2u + 2u * o + 1u];
        let at = key_base + o;
        a0 = a0 + vec4<f32>(key_dot(qa, qb, at, 0u, octets, last), key_dot(qa, qb, at, 1u, octets, last), key_dot(qa, qb, at, 2u, octets, last), key_dot(qa, qb, at, 3u, octets, last));
        a1 = a1 + vec4<f32>(key_dot(qa, qb, at, 4u, octets, last), key_dot(qa, qb, at, 5u, octets, last), key_dot(qa, qb, at, 6u, octets, last), key_dot(qa, qb, at, 7u, octets, last));
        a2 = a2 + vec4<f32>(key_dot(qa, qb, at, 8u, octets, last), key_dot(qa, qb, at, 9u, octets, last), key_dot(qa, qb, at, 10u, octets, last), key_dot(qa, qb, at, 11u, octets, last));
        a3 = a3 + vec4<f32>(key_dot(qa, qb, at, 12u, octets, last), key_dot(qa, qb, at, 13u, octets, last), key_dot(qa, qb, at, 14u, octets, last), key_dot(qa, qb, at, 15u, octets, last));
        a4 = a4 + vec4<f32>(key_dot(qa, qb, at, 16u, octets, last), key_dot(qa, qb, at, 17u, octets, last), key_dot(qa, qb, at, 18u, octets, last), key_dot(qa, qb, at, 19u, octets, last));
        a5 = a5 + vec4<f32>(key_dot(qa, qb, at, 20u, octets, last), key_dot(qa, qb, at, 21u, octets, last), key_dot(qa, qb, at, 22u, octets, last), key_dot(qa, qb, at, 23u, octets, last));
        a6 = a6 + vec4<f32>(key_dot(qa, qb, at, 24u, octets, last), key_dot(qa, qb, at, 25u, octets, last), key_dot(qa, qb, at, 26u, octets, last), key_dot(qa, qb, at, 27u, octets, last));
        a7 = a7 + vec4<f32>(key_dot(qa, qb, at, 28u, octets, last), key_dot(qa, qb, at, 29u, octets, last), key_dot(qa, qb, at, 30u, octets, last), key_dot(qa, qb, at, 31u, octets, last));
    }
    let acc = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var t = 0u; t < count; t = t + 1u) {
        scores[tile_row * score_stride() + first + t] = acc[t / 4u][t % 4u];
    }
}

// q·k for key row t of a 32-row block whose octet column starts at `at`; rows past the
// block's end are clamped to its last row `last` (computed, never stored).
fn key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32, t: u32, octets: u32, last: u32) -> f32 {
    let k = unpack_f16_octet(keys[at + min(t, last) * octets]);
    return dot(qa, vec4<f32>(k[0], k[1], k[2], k[3])) + dot(qb, vec4<f32>(k[4], k[5], k[6], k[7]));
}
