// attention_values_ternary.wgsl — Σₜ pₜ·v̂ₜ over one split of a ternary value plane, five
// channels (one trit byte) per invocation: the trits of a group are summed with the softmax
// weights and multiplied by the group's scale once. STP-protected tokens of the split come
// from their 2-bit plane (x̂ = code·scale + min).
//
// Bindings: 0 params (uniform Params: width = d, group_size, groups = ternary groups per
//           channel, blocks = protected-plane groups per channel, len = ternary elements
//           (offset of the protected positions in `positions`), stp (1: positions are
//           listed), segment_start, segment_len, split_offset, total_splits, rows_per_head,
//           queries, row_offset, invocations = tile rows · splits · ⌈d/5⌉)
//           1 weights     (storage, read): f32 [tile rows][segment_len]
//           2 split_elements (storage, read): vec4<u32> per split of the segment:
//             (first ternary element, count, first protected element, count)
//           3 codes       (storage, read): u32 [kv_heads][⌈d/5⌉][groups][⌈G/4⌉]
//           4 scales      (storage, read): u32 [kv_heads][⌈d/2⌉][groups], f16 pairs
//           5 kept_codes  (storage, read): u32 [kv_heads][d][blocks][⌈2G/32⌉]
//           6 kept_params (storage, read): u32 [kv_heads][d][blocks], f16 scale + min
//           7 positions   (storage, read): u32 [len + protected]: absolute positions of the
//             ternary elements, then of the protected elements (read when stp = 1)
//           8 partial     (storage, read_write): f32 [tile rows][total_splits][d]
// Dispatch: one invocation per (tile row, split, five-channel block); 2-D grid.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> split_elements: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> codes: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> kept_codes: array<u32>;
@group(0) @binding(6) var<storage, read> kept_params: array<u32>;
@group(0) @binding(7) var<storage, read> positions: array<u32>;
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;

fn channel_scale(kv_head: u32, channel: u32, group: u32) -> f32 {
    let half_rows = (params.width + 1u) / 2u;
    let pair = unpack2x16float(scales[(kv_head * half_rows + channel / 2u) * params.groups + group]);
    return select(pair.x, pair.y, (channel & 1u) == 1u);
}

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
    let d = params.width;
    let g_size = params.group_size;
    let blocks5 = (d + 4u) / 5u;
    let splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    let block = index % blocks5;
    let split = (index / blocks5) % splits;
    let tile_row = index / (blocks5 * splits);
    let r = query_row(tile_row);
    let elements = split_elements[split];
    let row_weights = tile_row * params.segment_len;
    let record_words = (g_size + 3u) / 4u;
    var acc = array<f32, 5>(0.0, 0.0, 0.0, 0.0, 0.0);
    var sums = array<f32, 5>(0.0, 0.0, 0.0, 0.0, 0.0);
    let end = elements.x + elements.y;
    for (var e = elements.x; e < end; e = e + 1u) {
        var position = params.segment_start + e;
        if (params.stp == 1u) {
            position = positions[e];
        }
        let p = weights[row_weights + position - params.segment_start];
        let group = e / g_size;
        let i = e % g_size;
        let word = codes[((r.kv_head * blocks5 + block) * params.groups + group) * record_words + i / 4u];
        var byte = (word >> (8u * (i % 4u))) & 0xffu;
        for (var j = 0u; j < 5u; j = j + 1u) {
            sums[j] = sums[j] + p * (f32(byte % 3u) - 1.0);
            byte = byte / 3u;
        }
        if (i == g_size - 1u || e + 1u == end) {
            for (var j = 0u; j < 5u; j = j + 1u) {
                let channel = 5u * block + j;
                if (channel < d) {
                    acc[j] = acc[j] + sums[j] * channel_scale(r.kv_head, channel, group);
                }
                sums[j] = 0.0;
            }
        }
    }
    let kept_words = (2u * g_size + 31u) / 32u;
    let kept_end = elements.z + elements.w;
    for (var e = elements.z; e < kept_end; e = e + 1u) {
        let p = weights[row_weights + positions[params.len + e] - params.segment_start];
        let group = e / g_size;
        let i = e % g_size;
        for (var j = 0u; j < 5u; j = j + 1u) {
            let channel = 5u * block + j;
            if (channel < d) {
                let record = (r.kv_head * d + channel) * params.blocks + group;
                let word = kept_codes[record * kept_words + i / 16u];
                let code = f32((word >> (2u * (i % 16u))) & 3u);
                let q = unpack2x16float(kept_params[record]);
                acc[j] = acc[j] + p * (code * q.x + q.y);
            }
        }
    }
    let out = (tile_row * params.total_splits + params.split_offset + split) * d;
    for (var j = 0u; j < 5u; j = j + 1u) {
        let channel = 5u * block + j;
        if (channel < d) {
            partial[out + channel] = acc[j];
        }
    }
}
