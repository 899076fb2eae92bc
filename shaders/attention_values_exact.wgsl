// attention_values_exact.wgsl — Σₜ pₜ·vₜ over exact (f16) value rows of one split, eight
// channels per invocation with vec4 loads.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = exact rows per
//           KV head, segment_first, segment_len, split_size, split_offset, total_splits,
//           rows_per_head, queries, row_offset,
//           invocations = tile rows · splits of the segment · d/8)
//           1 weights (storage, read): f32 [tile rows][segment_len] (softmax weights)
//           2 values  (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           3 partial (storage, read_write): f32 [tile rows][total_splits][d]
// Dispatch: one invocation per (tile row, split, 8-channel block); 2-D grid.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

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
    let octets = params.width / 8u;
    let splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    let octet = index % octets;
    let split = (index / octets) % splits;
    let tile_row = index / (octets * splits);
    let r = query_row(tile_row);
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    let value_base = (r.kv_head * params.rows + params.segment_first) * octets + octet;
    for (var t = first; t < end; t = t + 1u) {
        let p = weights[tile_row * params.segment_len + t];
        if (p != 0.0) {
            let v = unpack_f16_octet(values[value_base + t * octets]);
            acc_a = acc_a + p * vec4<f32>(v[0], v[1], v[2], v[3]);
            acc_b = acc_b + p * vec4<f32>(v[4], v[5], v[6], v[7]);
        }
    }
    let out = ((tile_row * params.total_splits + params.split_offset + split) * params.width) + octet * 8u;
    partial[out] = acc_a.x;
    partial[out + 1u] = acc_a.y;
    partial[out + 2u] = acc_a.z;
    partial[out + 3u] = acc_a.w;
    partial[out + 4u] = acc_b.x;
    partial[out + 5u] = acc_b.y;
    partial[out + 6u] = acc_b.z;
    partial[out + 7u] = acc_b.w;
}
