// pack_exact.wgsl — stores exact tokens (sinks, residual window) as f16 pairs.
//
// Bindings: 0 params (uniform Params: width, rows = tokens, invocations = rows · ⌈width/2⌉)
//           1 input  (storage, read): f32 rows [rows][width]
//           2 output (storage, read_write): u32 [rows][⌈width/2⌉], f16 pairs, low half first
// Dispatch: one invocation per output word; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<u32>;

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
    let words_per_row = (params.width + 1u) / 2u;
    let row = index / words_per_row;
    let c = 2u * (index % words_per_row);
    let lo = input[row * params.width + c];
    var hi = 0.0;
    if (c + 1u < params.width) {
        hi = input[row * params.width + c + 1u];
    }
    output[index] = pack_f16_pair(lo, hi);
}
