// quantize_two_bit.wgsl — 2-bit asymmetric min/max quantization of groups:
// scale = (max − min)/3, code = round_half_even(clamp((x − min)/scale, 0, 3)).
//
// Bindings: 0 params (uniform Params: width, rows, len, group_size, groups, group_offset,
//           group_count, row_offset, invocations = rows · group_count)
//           1 input    (storage, read): f32 rows [tokens of this chunk][width]
//           2 channels (storage, read): u32 input channel of each plane row (per_channel)
//           3 codes    (storage, read_write): u32 [row][group][⌈2G/32⌉], 16 codes per word
//           4 scale_min (storage, read_write): u32 [row][group], f16 scale (low) + min (high)
// Entry points:
//   per_channel — plane row r is channel channels[r]; its elements are the chunk's tokens,
//                 whose first token is element group_offset · group_size of the row.
//   per_token   — plane row row_offset + r is input token r; its elements are channels.
// Dispatch: one invocation per (row, group of the chunk); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> channels: array<u32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> scale_min: array<u32>;

var<private> group_values: array<f32, MAX_GROUP_SIZE>;

// Quantizes group_values[0..count) and stores the group's record at (row, group).
fn store_group(row: u32, group: u32, count: u32) {
    var lo = group_values[0];
    var hi = lo;
    for (var i = 1u; i < count; i = i + 1u) {
        lo = min(lo, group_values[i]);
        hi = max(hi, group_values[i]);
    }
    let scale = (hi - lo) / 3.0;
    let words_per_group = (2u * params.group_size + 31u) / 32u;
    let base = (row * params.groups + group) * words_per_group;
    for (var w = 0u; w < words_per_group; w = w + 1u) {
        var word = 0u;
        for (var j = 0u; j < 16u; j = j + 1u) {
            let i = w * 16u + j;
            if (i < count) {
                word = word | (two_bit_code(group_values[i], lo, scale) << (2u * j));
            }
        }
        codes[base + w] = word;
    }
    scale_min[row * params.groups + group] = pack_f16_pair(scale, lo);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn per_channel(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let row = index / params.group_count;
    let local_group = index % params.group_count;
    let group = params.group_offset + local_group;
    let channel = channels[row];
    let first = group * params.group_size;
    let count = min(params.group_size, params.len - first);
    let local_first = local_group * params.group_size;
    for (var i = 0u; i < count; i = i + 1u) {
        group_values[i] = input[(local_first + i) * params.width + channel];
    }
    store_group(row, group, count);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn per_token(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let local_row = index / params.groups;
    let group = index % params.groups;
    let first = group * params.group_size;
    let count = min(params.group_size, params.len - first);
    for (var i = 0u; i < count; i = i + 1u) {
        group_values[i] = input[local_row * params.width + first + i];
    }
    store_group(params.row_offset + local_row, group, count);
}
