// attention_split_exact_only.wgsl — completes attention_split.wgsl + _exact.wgsl (and its
// row reads) for a segment of exact rows on its own (the fp16 cache, or sinks and windows
// that ride in no other dispatch): every split is the segment's.
//
// Params: segment_start, segment_len, segment_first (its first stored row), split_offset.
// Bindings: none of its own.

fn split_segment(x: u32) -> SplitSegment {
    return SplitSegment(params.segment_start, params.segment_len, params.segment_first, x, params.split_offset + x, true);
}

fn lane_scores(seg: SplitSegment, tile_row: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    return exact_lane_scores(seg, natural_query_base(tile_row), kv_head, lane_first, last);
}

fn value_sums(
    sums: ptr<function, RowSums>,
    seg: SplitSegment,
    at: vec4<u32>,
    count: u32,
) {
    exact_value_sums(sums, seg, at, count);
}
