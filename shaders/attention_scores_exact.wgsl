// attention_scores_exact.wgsl — q·k for exact (f16) key rows: the whole cache of the fp16
// baseline, and the sinks and recent window of quantized presets.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = exact rows per
//           KV head, segment_first = first exact row of the segment, segment_len,
//           rows_per_head, queries, row_offset, invocations = tile rows · ⌈segment_len/32⌉)
//           1 queries (storage, read): vec4<f32> [tile rows][d/4], natural order, scaled
//           2 keys    (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           3 scores  (storage, read_write): f32 [tile rows][segment_len]
// Dispatch: one invocation per (tile row, block of 32 rows); 2-D grid of WORKGROUP_SIZE.

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
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let blocks = (params.segment_len + 31u) / 32u;
    let tile_row = index / blocks;
    let first = (index % blocks) * 32u;
    let count = min(32u, params.segment_len - first);
    let r = query_row(tile_row);
    let octets = params.width / 8u;
    let key_base = (r.kv_head * params.rows + params.segment_first + first) * octets;
    var acc: array<f32, 32>;
    for (var t = 0u; t < 32u; t = t + 1u) {
        acc[t] = 0.0;
    }
    for (var o = 0u; o < octets; o = o + 1u) {
        let qa = queries[tile_row * octets * 2u + 2u * o];
        let qb = queries[tile_row * octets * 2u + 2u * o + 1u];
        for (var t = 0u; t < count; t = t + 1u) {
            let k = unpack_f16_octet(keys[key_base + t * octets + o]);
            acc[t] = acc[t] + dot(qa, vec4<f32>(k[0], k[1], k[2], k[3]))
                + dot(qb, vec4<f32>(k[4], k[5], k[6], k[7]));
        }
    }
    for (var t = 0u; t < count; t = t + 1u) {
        scores[tile_row * params.segment_len + first + t] = acc[t];
    }
}
