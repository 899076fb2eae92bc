// attention_scores_packed.wgsl — q·k straight from packed keys, one 32-token slice of a
// group per invocation: 2-bit outlier channels with each group's scale folded into the
// query and its minimum into one bias, then the 1-bit DFT-domain (or plain) sign rows
// dotted with the plane-order query (Mᵀq for the DFT rows). No dense key is formed.
//
// Bindings: 0 params (uniform Params: width = d, outliers = k two-bit rows, dft_len = n
//           sign rows, group_size, groups (per plane row), segment_len, rows_per_head,
//           queries, row_offset, invocations = tile rows · groups · ⌈group_size/32⌉)
//           1 queries     (storage, read): f32 [tile rows][d], plane order, scaled
//           2 codes       (storage, read): u32 [kv_heads][k][groups][⌈2G/32⌉]
//           3 scale_min   (storage, read): u32 [kv_heads][k][groups], f16 scale + min
//           4 sign_codes  (storage, read): u32 [kv_heads][n][groups][⌈G/32⌉]
//           5 sign_scales (storage, read): u32 [kv_heads][⌈n/2⌉][groups], f16 pairs
//           6 scores      (storage, read_write): f32 [tile rows][segment_len]
// Dispatch: one invocation per (tile row, 32-token slice); 2-D grid of WORKGROUP_SIZE.

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
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let g_size = params.group_size;
    let slices = (g_size + 31u) / 32u;
    let per_row = params.groups * slices;
    let tile_row = index / per_row;
    let group = (index % per_row) / slices;
    let slice = index % slices;
    let count = min(32u, g_size - slice * 32u);
    let r = query_row(tile_row);
    let d = params.width;
    let k = params.outliers;
    let n = params.dft_len;
    var acc: array<f32, 32>;
    for (var t = 0u; t < 32u; t = t + 1u) {
        acc[t] = 0.0;
    }
    var bias = 0.0;
    let two_bit_words = (2u * g_size + 31u) / 32u;
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
        for (var t = 0u; t < 16u; t = t + 1u) {
            acc[t] = acc[t] + qs * f32((low >> (2u * t)) & 3u);
            acc[t + 16u] = acc[t + 16u] + qs * f32((high >> (2u * t)) & 3u);
        }
    }
    let sign_words = (g_size + 31u) / 32u;
    for (var j = 0u; j < n; j = j + 1u) {
        let qj = queries[tile_row * d + k + j];
        let pair = unpack2x16float(sign_scales[(r.kv_head * ((n + 1u) / 2u) + j / 2u) * params.groups + group]);
        let qs = qj * select(pair.x, pair.y, (j & 1u) == 1u);
        let word = sign_codes[((r.kv_head * n + j) * params.groups + group) * sign_words + slice];
        for (var t = 0u; t < 32u; t = t + 1u) {
            acc[t] = acc[t] + select(-qs, qs, ((word >> t) & 1u) == 1u);
        }
    }
    let first = group * g_size + slice * 32u;
    for (var t = 0u; t < count; t = t + 1u) {
        scores[tile_row * params.segment_len + first + t] = acc[t] + bias;
    }
}
