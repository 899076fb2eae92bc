// dequantize_two_bit.wgsl — 2-bit codes back to dense f32: x̂ = code · scale + min.
//
// Bindings: 0 params (uniform Params: width, rows, len, group_size, groups, group_offset,
//           group_count, row_offset, invocations)
//           1 codes     (storage, read): u32 [row][group][⌈2G/32⌉]
//           2 scale_min (storage, read): u32 [row][group], f16 scale (low) + min (high)
//           3 channels  (storage, read): u32 output channel of each plane row (per_channel)
//           4 output    (storage, read_write): f32 rows [tokens of the chunk][width]
// Entry points:
//   per_channel — invocations = rows · (tokens of the chunk); plane row r is channel
//                 channels[r], the chunk starts at element group_offset · group_size.
//   per_token   — invocations = rows of the chunk · len; plane row row_offset + r is
//                 output token r.
// Dispatch: one invocation per output element; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> scale_min: array<u32>;
@group(0) @binding(3) var<storage, read> channels: array<u32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

fn decode(row: u32, element: u32) -> f32 {
    let group = element / params.group_size;
    let i = element % params.group_size;
    let words_per_group = (2u * params.group_size + 31u) / 32u;
    let word = codes[(row * params.groups + group) * words_per_group + i / 16u];
    let code = (word >> (2u * (i % 16u))) & 3u;
    let p = unpack2x16float(scale_min[row * params.groups + group]);
    return f32(code) * p.x + p.y;
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
    let tokens = params.invocations / params.rows;
    let row = index / tokens;
    let token = index % tokens;
    let element = params.group_offset * params.group_size + token;
    output[token * params.width + channels[row]] = decode(row, element);
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
    let local_row = index / params.len;
    let channel = index % params.len;
    output[local_row * params.width + channel] = decode(params.row_offset + local_row, channel);
}
