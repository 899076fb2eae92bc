// attention_split_two_bit.wgsl — the 2-bit key decoder of attention_split.wgsl (KIVI),
// composed after _exact.wgsl and before a value decoder: keys 2-bit per channel over
// groups of G ≥ 32 tokens, x̂ = code·scale + min. A lane's 32 tokens lie in one key group,
// so each channel's scale is folded into the query (q·scale) and its minimum into one bias
// (Σ q·min) for the lane: a key channel costs two code words and one scale pair per 32
// tokens. The values are 2-bit too, per token (_value_tokens.wgsl, `kivi2`) or per channel
// (_value_channels.wgsl, `k2v2-channel`); each provides two_bit_value_sums. Up to two
// exact segments (the sinks, the window) ride in the same dispatch as splits of their own
// after the segment's (`exact_segments`), decoded by _exact.wgsl.
//
// Bindings: 5, 6 the riders' exact rows, 7 their records (_exact.wgsl)
//           8 key_codes       (storage, read): u32 [kv_heads][d][groups][⌈2G/32⌉]
//           9 key_scale_min   (storage, read): u32 [kv_heads][d][groups], f16 scale + min
//           10 value_codes    (storage, read): u32, 2-bit value records of ⌈2G/32⌉ words
//           11 value_scale_min (storage, read): u32, a record's f16 scale + min
// Params: group_size = G (a multiple of 32), groups = key groups per channel row (the
// planes' capacity), rows = the riders' exact rows per KV head; segment_start,
// segment_len, split_offset of the 2-bit segment; the value decoder's own.
// Dispatch: grid x = the segment's splits, then the riders' splits.

@group(0) @binding(8) var<storage, read> key_codes: array<u32>;
@group(0) @binding(9) var<storage, read> key_scale_min: array<u32>;
@group(0) @binding(10) var<storage, read> value_codes: array<u32>;
@group(0) @binding(11) var<storage, read> value_scale_min: array<u32>;

// The segment of split x: the 2-bit segment's own splits first, then each rider's.
fn split_segment(x: u32) -> SplitSegment {
    let own = (params.segment_len + params.split_size - 1u) / params.split_size;
    if (x < own) {
        return SplitSegment(params.segment_start, params.segment_len, 0u, x, params.split_offset + x, false);
    }
    return rider_segment(x - own);
}

fn lane_scores(seg: SplitSegment, tile_row: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    let q_base = natural_query_base(tile_row);
    if (seg.exact) {
        return exact_lane_scores(seg, q_base, kv_head, lane_first, last);
    }
    return two_bit_lane_scores(q_base, kv_head, lane_first);
}

fn value_sums(
    sums: ptr<function, RowSums>,
    seg: SplitSegment,
    at: vec4<u32>,
    count: u32,
) {
    if (seg.exact) {
        exact_value_sums(sums, seg, at, count);
    } else {
        two_bit_value_sums(sums, at, count);
    }
}

// The scaled scores of query row `q_base` (in vec4s) against the 32 tokens from
// `lane_first` of KV head `kv_head`'s segment (whole groups: no token is clamped).
fn two_bit_lane_scores(q_base: u32, kv_head: u32, lane_first: u32) -> array<vec4<f32>, 8> {
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let group = lane_first / g_size;
    let slice_word = 2u * ((lane_first % g_size) / 32u);
    var acc = LaneScores();
    let first_record = kv_head * params.width * params.groups + group;
    for (var o = 0u; o < params.width / 4u; o = o + 1u) {
        let q4 = queries[q_base + o] * params.scale;
        for (var i = 0u; i < 4u; i = i + 1u) {
            let record = first_record + (4u * o + i) * params.groups;
            let p = unpack2x16float(key_scale_min[record]);
            let low = key_codes[record * words + slice_word];
            let high = key_codes[record * words + slice_word + 1u];
            add_two_bit_slice(&acc, q4[i] * p.x, q4[i] * p.y, low, high);
        }
    }
    return lane_totals(acc);
}
