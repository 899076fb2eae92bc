// real_dft.wgsl — compact real DFT over a head's normal key channels, per token
// (spec §4.4): c₀ = Σ x_m, c_{2j−1} = Σ x_m cos(2πjm/n), c_{2j} = −Σ x_m sin(2πjm/n),
// c_{n−1} = Σ (−1)^m x_m for even n. x_m is input channel channels[outliers + m].
//
// Bindings: 0 params (uniform Params: width, len = tokens of the chunk, dft_len = n,
//           outliers, invocations = tokens of the chunk)
//           1 input    (storage, read): f32 rows [tokens][width]
//           2 channels (storage, read): u32 channel order (outliers first, then normals)
//           3 twiddles (storage, read): vec2<f32> (cos 2πk/n, sin 2πk/n), k = 0…n−1
//           4 coefficients (storage, read_write): f32 [n][tokens of the chunk]
// Dispatch: one invocation per token; 2-D grid of WORKGROUP_SIZE workgroups.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> channels: array<u32>;
@group(0) @binding(3) var<storage, read> twiddles: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> coefficients: array<f32>;

const MAX_DFT_LEN: u32 = 256u;
var<private> samples: array<f32, MAX_DFT_LEN>;

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
    var dc = 0.0;
    var nyquist = 0.0;
    for (var m = 0u; m < n; m = m + 1u) {
        let x = input[token * params.width + channels[params.outliers + m]];
        samples[m] = x;
        dc = dc + x;
        nyquist = nyquist + select(x, -x, (m & 1u) == 1u);
    }
    let stride = params.len;
    coefficients[token] = dc;
    for (var j = 1u; 2u * j < n; j = j + 1u) {
        var re = 0.0;
        var im = 0.0;
        // k = j·m mod n, advanced by j per sample instead of a modulo per product.
        var k = 0u;
        for (var m = 0u; m < n; m = m + 1u) {
            let w = twiddles[k];
            re = re + samples[m] * w.x;
            im = im - samples[m] * w.y;
            k = next_twiddle_index(k, j, n);
        }
        coefficients[(2u * j - 1u) * stride + token] = re;
        coefficients[(2u * j) * stride + token] = im;
    }
    if (n % 2u == 0u && n > 1u) {
        coefficients[(n - 1u) * stride + token] = nyquist;
    }
}
