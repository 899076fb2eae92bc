// attention_scores_packed.wgsl — q·k straight from packed keys, one 32-token slice of a
// group per invocation: 2-bit outlier channels with each group's scale folded into the
// query and its minimum into one bias, then the 1-bit DFT-domain (or plain) sign rows
// dotted with the plane-order query (Mᵀq for the DFT rows). No dense key is formed.
//
// Bindings: 0 params (uniform Params: width = d, outliers = k two-bit rows, dft_len = n
//           sign rows, group_size, groups (per plane row), segment_len, rows_per_head,
//           queries, row_offset, invocations = groups · ⌈group_size/32⌉ per row)
//           1 queries     (storage, read): f32 [tile rows][d], plane order, scaled
//           2 codes       (storage, read): u32 [kv_heads][k][groups][⌈2G/32⌉]
//           3 scale_min   (storage, read): u32 [kv_heads][k][groups], f16 scale + min
//           4 sign_codes  (storage, read): u32 [kv_heads][n][groups][⌈G/32⌉]
//           5 sign_scales (storage, read): u32 [kv_heads][⌈n/2⌉][groups], f16 pairs
//           6 scores      (storage, read_write): f32 [tile rows][score_stride()]
// Dispatch: grid (⌈slices/WORKGROUP_SIZE⌉, tile rows): workgroup y is the query row, so its
// query loads are uniform; one invocation per 32-token slice of a group.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> queries: array<f32>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> scale_min: array<u32>;
@group(0) @binding(4) var<storage, read> sign_codes: array<u32>;
@group(0) @binding(5) var<storage, read> sign_scales: array<u32>;
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let item = workgroup.x * WORKGROUP_SIZE + local;
    if (item >= params.invocations) {
        return;
    }
    let g_size = params.group_size;
    let slices = (g_size + 31u) / 32u;
    let tile_row = workgroup.y;
    let group = item / slices;
    let slice = item % slices;
    let count = min(32u, g_size - slice * 32u);
    let r = query_row(tile_row);
    let d = params.width;
    let k = params.outliers;
    let n = params.dft_len;
    // 32 accumulators as eight vec4s with constant indices: dynamically indexed arrays
    // would live in memory on CPU drivers.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var bias = 0.0;
    let two_bit_words = (2u * g_size + 31u) / 32u;
    let shifts2 = vec4<u32>(0u, 2u, 4u, 6u);
    for (var c = 0u; c < k; c = c + 1u) {
        let qc = queries[tile_row * d + c];
        let record = (r.kv_head * k + c) * params.groups + group;
        let p = unpack2x16float(scale_min[record]);
        let qs = qc * p.x;
        bias = bias + qc * p.y;
        let word_base = record * two_bit_words + slice * 2u;
        let low = codes[word_base];
        var high = 0u;
        if (count > 16u) {
            high = codes[word_base + 1u];
        }
        a0 = a0 + qs * vec4<f32>((vec4<u32>(low) >> shifts2) & vec4<u32>(3u));
        a1 = a1 + qs * vec4<f32>((vec4<u32>(low >> 8u) >> shifts2) & vec4<u32>(3u));
        a2 = a2 + qs * vec4<f32>((vec4<u32>(low >> 16u) >> shifts2) & vec4<u32>(3u));
        a3 = a3 + qs * vec4<f32>((vec4<u32>(low >> 24u) >> shifts2) & vec4<u32>(3u));
        a4 = a4 + qs * vec4<f32>((vec4<u32>(high) >> shifts2) & vec4<u32>(3u));
        a5 = a5 + qs * vec4<f32>((vec4<u32>(high >> 8u) >> shifts2) & vec4<u32>(3u));
        a6 = a6 + qs * vec4<f32>((vec4<u32>(high >> 16u) >> shifts2) & vec4<u32>(3u));
        a7 = a7 + qs * vec4<f32>((vec4<u32>(high >> 24u) >> shifts2) & vec4<u32>(3u));
    }
    let sign_words = (g_size + 31u) / 32u;
    // ±qs by flipping the float sign bit where a code bit is 0: bit i of `flip`, moved to
    // bit 31, is xored into qs.
    let to_sign = vec4<u32>(31u, 30u, 29u, 28u);
    let sign_bit = vec4<u32>(0x80000000u);
    for (var j = 0u; j < n; j = j + 1u) {
        let qj = queries[tile_row * d + k + j];
        let pair = unpack2x16float(sign_scales[(r.kv_head * ((n + 1u) / 2u) + j / 2u) * params.groups + group]);
        let qs = vec4<u32>(bitcast<u32>(qj * select(pair.x, pair.y, (j & 1u) == 1u)));
        let flip = ~sign_codes[((r.kv_head * n + j) * params.groups + group) * sign_words + slice];
        a0 = a0 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip) << to_sign) & sign_bit));
        a1 = a1 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 4u) << to_sign) & sign_bit));
        a2 = a2 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 8u) << to_sign) & sign_bit));
        a3 = a3 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 12u) << to_sign) & sign_bit));
        a4 = a4 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 16u) << to_sign) & sign_bit));
        a5 = a5 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 20u) << to_sign) & sign_bit));
        a6 = a6 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 24u) << to_sign) & sign_bit));
        a7 = a7 + bitcast<vec4<f32>>(qs ^ ((vec4<u32>(flip >> 28u) << to_sign) & sign_bit));
    }
    let acc = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    let first = group * g_size + slice * 32u;
    for (var t = 0u; t < count; t = t + 1u) {
        scores[tile_row * score_stride() + first + t] = acc[t / 4u][t % 4u] + bias;
    }
}
