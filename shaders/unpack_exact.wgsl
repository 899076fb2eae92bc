// unpack_exact.wgsl — exact f16 rows back to dense f32.
//
// Bindings: 0 params (uniform Params: width, invocations = rows · width)
//           1 input  (storage, read): u32 [rows][⌈width/2⌉], f16 pairs, low half first
//           2 output (storage, read_write): f32 rows [rows][width]
// Dispatch: one invocation per output element; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

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
    let row = index / params.width;
    let c = index % params.width;
    let pair = unpack2x16float(input[row * ((params.width + 1u) / 2u) + c / 2u]);
    output[index] = select(pair.x, pair.y, (c & 1u) == 1u);
}
