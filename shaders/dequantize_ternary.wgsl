// dequantize_ternary.wgsl — ternary codes back to dense f32: x̂ = t · scale, with
// t = ⌊byte / 3^(c mod 5)⌋ mod 3 − 1 read from the five-channel trit records.
//
// Bindings: 0 params (uniform Params: width = rows, len, group_size, groups, group_offset,
//           invocations = (tokens of the chunk) · width)
//           1 codes  (storage, read): u32 [⌈rows/5⌉][group][⌈G/4⌉]
//           2 scales (storage, read): u32 [row pair][group], f16 pairs
//           3 output (storage, read_write): f32 rows [tokens of the chunk][width]
// Dispatch: one invocation per output element; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

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
    let token = index / params.width;
    let channel = index % params.width;
    let element = params.group_offset * params.group_size + token;
    let group = element / params.group_size;
    let i = element % params.group_size;
    let words = (params.group_size + 3u) / 4u;
    let word = codes[((channel / 5u) * params.groups + group) * words + i / 4u];
    let byte = (word >> (8u * (i % 4u))) & 0xffu;
    var power = 1u;
    for (var j = 0u; j < channel % 5u; j = j + 1u) {
        power = power * 3u;
    }
    let trit = f32((byte / power) % 3u) - 1.0;
    let pair = unpack2x16float(scales[(channel / 2u) * params.groups + group]);
    output[index] = trit * select(pair.x, pair.y, (channel & 1u) == 1u);
}
