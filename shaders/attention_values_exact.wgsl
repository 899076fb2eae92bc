// attention_values_exact.wgsl — Σₜ pₜ·vₜ over exact (f16) value rows of one split, eight
// channels per invocation with vec4 loads.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = exact rows per
//           KV head, segment_first, segment_len, split_size, split_offset, total_splits,
//           rows_per_head, queries, row_offset)
//           1 weights (storage, read_write: the scores share the split outputs' buffer,
//             which the kernel writes): vec4<f32> [tile rows][score_stride()/4] (softmax
//             weights, zero past the segment)
//           2 values  (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           3 partial (storage, read_write): f32 [tile rows][total_splits][d]
// Dispatch: grid (splits of the segment, tile rows); the VALUE_LANES invocations of a
// workgroup share its weights (uniform loads) and take the 8-channel blocks in turn.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> values: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

@compute @workgroup_size(VALUE_LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let octets = params.width / 8u;
    let split = workgroup.x;
    let tile_row = workgroup.y;
    let r = query_row(tile_row);
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let row_weights = tile_row * score_stride() / 4u;
    let out_base = (tile_row * params.total_splits + params.split_offset + split) * params.width;
    for (var octet = local; octet < octets; octet = octet + VALUE_LANES) {
        var acc_a = vec4<f32>(0.0);
        var acc_b = vec4<f32>(0.0);
        let value_base = (r.kv_head * params.rows + params.segment_first) * octets + octet;
        let last = end - 1u;
        // Four tokens per weight load; splits start at multiples of 4 and the weights past
        // the segment are zero.
        for (var t = first; t < end; t = t + 4u) {
            let p = weights[row_weights + t / 4u];
            let v0 = unpack_f16_octet(values[value_base + t * octets]);
            let v1 = unpack_f16_octet(values[value_base + min(t + 1u, last) * octets]);
            let v2 = unpack_f16_octet(values[value_base + min(t + 2u, last) * octets]);
            let v3 = unpack_f16_octet(values[value_base + min(t + 3u, last) * octets]);
            acc_a = acc_a + p.x * vec4<f32>(v0[0], v0[1], v0[2], v0[3]) + p.y * vec4<f32>(v1[0], v1[1], v1[2], v1[3])
                + p.z * vec4<f32>(v2[0], v2[1], v2[2], v2[3]) + p.w * vec4<f32>(v3[0], v3[1], v3[2], v3[3]);
            acc_b = acc_b + p.x * vec4<f32>(v0[4], v0[5], v0[6], v0[7]) + p.y * vec4<f32>(v1[4], v1[5], v1[6], v1[7])
                + p.z * vec4<f32>(v2[4], v2[5], v2[6], v2[7]) + p.w * vec4<f32>(v3[4], v3[5], v3[6], v3[7]);
        }
        let out = out_base + octet * 8u;
        partial[out] = acc_a.x;
        partial[out + 1u] = acc_a.y;
        partial[out + 2u] = acc_a.z;
        partial[out + 3u] = acc_a.w;
        partial[out + 4u] = acc_b.x;
        partial[out + 5u] = acc_b.y;
        partial[out + 6u] = acc_b.z;
        partial[out + 7u] = acc_b.w;
    }
}
