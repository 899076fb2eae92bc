// attention_split_two_bit.wgsl — the 2-bit row decoder of attention_split.wgsl (KIVI): keys
// 2-bit per channel over groups of G ≥ 32 tokens, values 2-bit per token over groups of G
// channels, x̂ = code·scale + min. A lane's 32 tokens lie in one key group, so each
// channel's scale is folded into the query (q·scale) and its minimum into one bias
// (Σ q·min) for the lane: a key channel costs two code words and one scale pair per 32
// tokens. A value quad is one byte of a code word and its token's scale pair.
//
// Bindings: 5 key_codes       (storage, read): u32 [kv_heads][d][groups][⌈2G/32⌉]
//           6 key_scale_min   (storage, read): u32 [kv_heads][d][groups], f16 scale + min
//           7 value_codes     (storage, read): u32 [kv_heads][rows][group_count][⌈2G/32⌉]
//           8 value_scale_min (storage, read): u32 [kv_heads][rows][group_count], f16 pairs
// Params: group_size = G (a multiple of 32), groups = key groups per channel row (the
// planes' capacity), rows = value rows per KV head (token capacity), group_count = value
// groups per token row (⌈d/G⌉).

@group(0) @binding(5) var<storage, read> key_codes: array<u32>;
@group(0) @binding(6) var<storage, read> key_scale_min: array<u32>;
@group(0) @binding(7) var<storage, read> value_codes: array<u32>;
@group(0) @binding(8) var<storage, read> value_scale_min: array<u32>;

// Codes 4i…4i+3 of a 2-bit word as floats.
fn two_bit_codes4(word: u32, i: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word >> (8u * i)) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u));
}

// The scaled scores of query row `q_base` (in vec4s) against the 32 tokens from
// `lane_first` of KV head `kv_head`'s segment (whole groups: no token is clamped).
fn lane_scores(q_base: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let group = lane_first / g_size;
    let slice_word = 2u * ((lane_first % g_size) / 32u);
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var bias = 0.0;
    let first_record = kv_head * params.width * params.groups + group;
    for (var o = 0u; o < params.width / 4u; o = o + 1u) {
        let q4 = queries[q_base + o] * params.scale;
        for (var i = 0u; i < 4u; i = i + 1u) {
            let record = first_record + (4u * o + i) * params.groups;
            let p = unpack2x16float(key_scale_min[record]);
            let qs = q4[i] * p.x;
            bias = bias + q4[i] * p.y;
            let low = key_codes[record * words + slice_word];
            let high = key_codes[record * words + slice_word + 1u];
            c0 = c0 + qs * two_bit_codes4(low, 0u);
            c1 = c1 + qs * two_bit_codes4(low, 1u);
            c2 = c2 + qs * two_bit_codes4(low, 2u);
            c3 = c3 + qs * two_bit_codes4(low, 3u);
            c4 = c4 + qs * two_bit_codes4(high, 0u);
            c5 = c5 + qs * two_bit_codes4(high, 1u);
            c6 = c6 + qs * two_bit_codes4(high, 2u);
            c7 = c7 + qs * two_bit_codes4(high, 3u);
        }
    }
    return array<vec4<f32>, 8>(c0 + bias, c1 + bias, c2 + bias, c3 + bias, c4 + bias, c5 + bias, c6 + bias, c7 + bias);
}

// Channels 4·quad…4·quad+3 of the value row of `token` (of the segment) of KV head `kv_head`.
fn value_quad(kv_head: u32, token: u32, quad: u32) -> vec4<f32> {
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let channel = 4u * quad;
    let within = channel % g_size;
    let record = (kv_head * params.rows + token) * params.group_count + channel / g_size;
    let word = value_codes[record * words + within / 16u] >> (2u * (within % 16u));
    let p = unpack2x16float(value_scale_min[record]);
    return two_bit_codes4(word, 0u) * p.x + p.y;
}
