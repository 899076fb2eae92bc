// quantize_sign.wgsl — 1-bit sign quantization: code = (x ≥ 0), scale = mean |x| of the
// group (x̂ = ±scale). Each invocation owns a pair of plane rows so that it writes whole
// scale words (rows 2p and 2p + 1 share one u32 of f16 scales).
//
// Bindings: 0 params (uniform Params: width, rows, len, group_size, groups, group_offset,
//           group_count, outliers, invocations = ⌈rows/2⌉ · group_count)
//           1 input    (storage, read): from_coefficients — f32 [rows][tokens of the chunk]
//                                       from_channels     — f32 rows [tokens][width]
//           2 channels (storage, read): u32 channel order; plane row r is channel
//             channels[outliers + r] (from_channels only)
//           3 codes  (storage, read_write): u32 [row][group][⌈G/32⌉], bit i = code i
//           4 scales (storage, read_write): u32 [row pair][group], f16 pairs
// Dispatch: one invocation per (row pair, group of the chunk); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> channels: array<u32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> scales: array<u32>;

// Element i (local to the chunk) of plane row `row`.
fn load(row: u32, i: u32, from_coefficients: bool) -> f32 {
    if (from_coefficients) {
        return input[row * (params.group_count * params.group_size) + i];
    }
    return input[i * params.width + channels[params.outliers + row]];
}

fn quantize(index: u32, from_coefficients: bool) {
    let pair = index / params.group_count;
    let local_group = index % params.group_count;
    let group = params.group_offset + local_group;
    let count = min(params.group_size, params.len - group * params.group_size);
    let words_per_group = (params.group_size + 31u) / 32u;
    var pair_scales = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < 2u; k = k + 1u) {
        let row = 2u * pair + k;
        if (row >= params.rows) {
            break;
        }
        var sum = 0.0;
        let base = (row * params.groups + group) * words_per_group;
        for (var w = 0u; w < words_per_group; w = w + 1u) {
            var word = 0u;
            for (var bit = 0u; bit < 32u; bit = bit + 1u) {
                let i = w * 32u + bit;
                if (i < count) {
                    let x = load(row, local_group * params.group_size + i, from_coefficients);
                    sum = sum + abs(x);
                    word = word | (select(0u, 1u, x >= 0.0) << bit);
                }
            }
            codes[base + w] = word;
        }
        pair_scales[k] = sum / f32(count);
    }
    scales[pair * params.groups + group] = pack_f16_pair(pair_scales.x, pair_scales.y);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn from_coefficients(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index < params.invocations) {
        quantize(index, true);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn from_channels(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index < params.invocations) {
        quantize(index, false);
    }
}
