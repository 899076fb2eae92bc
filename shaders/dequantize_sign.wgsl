// dequantize_sign.wgsl — sign codes back to ±scale.
//
// Bindings: 0 params (uniform Params: width, rows, len, group_size, groups, group_offset,
//           outliers, invocations = rows · (tokens of the chunk))
//           1 codes    (storage, read): u32 [row][group][⌈G/32⌉]
//           2 scales   (storage, read): u32 [row pair][group], f16 pairs
//           3 channels (storage, read): u32 channel order (to_channels: row r → channel
//             channels[outliers + r])
//           4 output   (storage, read_write): to_coefficients — f32 [rows][tokens of the chunk]
//                                             to_channels     — f32 rows [tokens][width]
// Dispatch: one invocation per (row, token of the chunk); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> channels: array<u32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

fn decode(row: u32, element: u32) -> f32 {
    let group = element / params.group_size;
    let i = element % params.group_size;
    let words_per_group = (params.group_size + 31u) / 32u;
    let word = codes[(row * params.groups + group) * words_per_group + i / 32u];
    let pair = unpack2x16float(scales[(row / 2u) * params.groups + group]);
    let scale = select(pair.x, pair.y, (row & 1u) == 1u);
    return select(-scale, scale, ((word >> (i % 32u)) & 1u) == 1u);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn to_coefficients(
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
    output[row * tokens + token] = decode(row, params.group_offset * params.group_size + token);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn to_channels(
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
    output[token * params.width + channels[params.outliers + row]] =
        decode(row, params.group_offset * params.group_size + token);
}
