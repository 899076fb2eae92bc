// inverse_dft.wgsl — compact real DFT coefficients back to the normal key channels, per
// token: x_m = (1/n)[c₀ + (−1)^m c_{n−1} + 2 Σ_j (c_{2j−1} cos 2πjm/n − c_{2j} sin 2πjm/n)]
// (the c_{n−1} term for even n only), written to channel channels[outliers + m].
//
// Bindings: 0 params (uniform Params: width, dft_len = n, outliers, invocations = tokens)
//           1 coefficients (storage, read): f32 [n][tokens of the chunk]
//           2 channels (storage, read): u32 channel order (outliers first, then normals)
//           3 twiddles (storage, read): vec2<f32> (cos 2πk/n, sin 2πk/n), k = 0…n−1
//           4 output   (storage, read_write): f32 rows [tokens of the chunk][width]
// Dispatch: one invocation per token; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> coefficients: array<f32>;
@group(0) @binding(2) var<storage, read> channels: array<u32>;
@group(0) @binding(3) var<storage, read> twiddles: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let token = linear_index(workgroup, workgroups, local);
    if (token >= params.invocations) {
        return;
    }
    let n = params.dft_len;
    let stride = params.invocations;
    for (var m = 0u; m < n; m = m + 1u) {
        var x = coefficients[token];
        if (n % 2u == 0u && n > 1u) {
            let nyquist = coefficients[(n - 1u) * stride + token];
            x = x + select(nyquist, -nyquist, (m & 1u) == 1u);
        }
        var k = m;
        for (var j = 1u; 2u * j < n; j = j + 1u) {
            let w = twiddles[k];
            k = next_twiddle_index(k, m, n);
            let re = coefficients[(2u * j - 1u) * stride + token];
            let im = coefficients[(2u * j) * stride + token];
            x = x + 2.0 * (re * w.x - im * w.y);
        }
        output[token * params.width + channels[params.outliers + m]] = x / f32(n);
    }
}
