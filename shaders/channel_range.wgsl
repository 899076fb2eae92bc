// channel_range.wgsl — partial per-channel min/max over blocks of tokens (step 1 of the
// outlier/normal key channel split).
//
// Bindings: 0 params (uniform Params: width, len = tokens in the input, blocks,
//           block_tokens, block_offset, invocations = blocks · width)
//           1 input  (storage, read): f32 rows [tokens][width]
//           2 ranges (storage, read_write): vec2<f32> (min, max) [block_offset + block][width]
// Dispatch: one invocation per (block, channel); 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> ranges: array<vec2<f32>>;

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
    let channel = index % params.width;
    let block = index / params.width;
    let first = block * params.block_tokens;
    let end = min(first + params.block_tokens, params.len);
    var lo = input[first * params.width + channel];
    var hi = lo;
    for (var t = first + 1u; t < end; t = t + 1u) {
        let v = input[t * params.width + channel];
        lo = min(lo, v);
        hi = max(hi, v);
    }
    ranges[(params.block_offset + block) * params.width + channel] = vec2<f32>(lo, hi);
}
