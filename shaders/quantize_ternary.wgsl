// quantize_ternary.wgsl — ternary value quantization per channel: m = mean |x| of the
// group, t = +1 if x > γm, −1 if x < −γm, else 0; scale = m (mean rule) or the mean |x|
// over the non-zero codes (least squares). Trits of five channels share a byte:
// byte i of a (block, group) record = Σ_j (t_{5b+j,i} + 1)·3^j.
// Each invocation owns ten channels (two trit blocks, five scale pairs) so that it writes
// whole words only.
//
// Bindings: 0 params (uniform Params: width = rows = channels, len, group_size, groups,
//           group_offset, group_count, gamma, scale_rule, invocations = ⌈rows/10⌉ · group_count)
//           1 input  (storage, read): f32 rows [tokens of the chunk][width]
//           2 codes  (storage, read_write): u32 [⌈rows/5⌉][group][⌈G/4⌉]
//           3 scales (storage, read_write): u32 [⌈rows/2⌉][group], f16 pairs
// Dispatch: one invocation per (ten-channel block, group of the chunk); 2-D grid.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;

const MAX_RECORD_WORDS: u32 = MAX_GROUP_SIZE / 4u;
var<private> record: array<u32, MAX_RECORD_WORDS>;
var<private> channel_scales: array<f32, 10>;

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
    let decade = index / params.group_count;
    let local_group = index % params.group_count;
    let group = params.group_offset + local_group;
    let count = min(params.group_size, params.len - group * params.group_size);
    let first_token = local_group * params.group_size;
    let words = (params.group_size + 3u) / 4u;
    for (var half = 0u; half < 2u; half = half + 1u) {
        let block = 2u * decade + half;
        if (5u * block >= params.rows) {
            break;
        }
        for (var w = 0u; w < words; w = w + 1u) {
            record[w] = 0u;
        }
        var weight = 1u;
        for (var j = 0u; j < 5u; j = j + 1u) {
            let channel = 5u * block + j;
            if (channel < params.rows) {
                var abs_sum = 0.0;
                for (var i = 0u; i < count; i = i + 1u) {
                    abs_sum = abs_sum + abs(input[(first_token + i) * params.width + channel]);
                }
                let mean = abs_sum / f32(count);
                let threshold = params.gamma * mean;
                var kept_sum = 0.0;
                var kept = 0u;
                for (var i = 0u; i < count; i = i + 1u) {
                    let x = input[(first_token + i) * params.width + channel];
                    let digit = ternary_digit(x, threshold);
                    if (digit != 1u) {
                        kept_sum = kept_sum + abs(x);
                        kept = kept + 1u;
                    }
                    record[i / 4u] = record[i / 4u] + ((digit * weight) << (8u * (i % 4u)));
                }
                var scale = mean;
                if (params.scale_rule == 1u) {
                    scale = select(0.0, kept_sum / f32(kept), kept > 0u);
                }
                channel_scales[5u * half + j] = scale;
            } else {
                channel_scales[5u * half + j] = 0.0;
            }
            weight = weight * 3u;
        }
        let base = (block * params.groups + group) * words;
        for (var w = 0u; w < words; w = w + 1u) {
            codes[base + w] = record[w];
        }
    }
    for (var p = 0u; p < 5u; p = p + 1u) {
        let pair = 5u * decade + p;
        if (2u * pair < params.rows) {
            scales[pair * params.groups + group] =
                pack_f16_pair(channel_scales[2u * p], channel_scales[2u * p + 1u]);
        }
    }
}
