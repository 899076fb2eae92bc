// attention_queries.wgsl — prepares the query rows of an attention call: each row scaled
// by 1/√d in natural channel order (for exact rows) and in plane order (for packed keys):
// first the outlier channels, then Mᵀq over the normal channels (the transpose of the
// inverse compact real DFT, spec §4.4) or the normal channels themselves without the DFT.
//
// Bindings: 0 params (uniform Params: width = d, outliers = k, dft_len = n (0: no sign
//           rows), scale_rule = 1 when the DFT is on, scale, kv_heads, rows_per_head,
//           queries, row_offset, invocations = tile rows · d)
//           1 q         (storage, read): f32 [q_heads][queries][d]
//           2 order     (storage, read): u32 [kv_heads][d] channel order (outliers, normals)
//           3 twiddles  (storage, read): vec2<f32> (cos 2πk/n, sin 2πk/n), k = 0…n−1
//           4 natural   (storage, read_write): f32 [tile rows][d]
//           5 planar    (storage, read_write): f32 [tile rows][d]
// Dispatch: one invocation per (tile row, channel); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read> twiddles: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> natural: array<f32>;
@group(0) @binding(5) var<storage, read_write> planar: array<f32>;

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
    let d = params.width;
    let tile_row = index / d;
    let j = index % d;
    let r = query_row(tile_row);
    let base = (r.q_head * params.queries + r.query) * d;
    natural[index] = q[base + j] * params.scale;
    let channels = r.kv_head * d;
    if (j < params.outliers || params.scale_rule == 0u) {
        planar[index] = q[base + order[channels + j]] * params.scale;
        return;
    }
    // Row j' of Mᵀq: weights 1/n for Re F₀ and the Nyquist bin, 2/n for a cos/sin pair.
    let n = params.dft_len;
    let jj = j - params.outliers;
    var sum = 0.0;
    if (jj == 0u) {
        for (var m = 0u; m < n; m = m + 1u) {
            sum = sum + q[base + order[channels + params.outliers + m]];
        }
        planar[index] = sum * params.scale / f32(n);
        return;
    }
    if (n % 2u == 0u && jj == n - 1u) {
        for (var m = 0u; m < n; m = m + 1u) {
            let x = q[base + order[channels + params.outliers + m]];
            sum = sum + select(x, -x, (m & 1u) == 1u);
        }
        planar[index] = sum * params.scale / f32(n);
        return;
    }
    let frequency = (jj + 1u) / 2u;
    let is_cos = (jj & 1u) == 1u;
    var k = 0u;
    for (var m = 0u; m < n; m = m + 1u) {
        let x = q[base + order[channels + params.outliers + m]];
        let w = twiddles[k];
        sum = sum + select(-x * w.y, x * w.x, is_cos);
        k = next_twiddle_index(k, frequency, n);
    }
    planar[index] = 2.0 * sum * params.scale / f32(n);
}
