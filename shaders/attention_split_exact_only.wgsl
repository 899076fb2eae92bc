// attention_split_exact_only.wgsl — completes attention_split.wgsl + _exact.wgsl (and its
// row reads) for a dispatch of exact rows only: one or two exact segments of one pair of
// buffers that ride in no quantized segment's dispatch (the fp16 cache; a layer's sinks and
// window beside the separate passes or the paper format's dispatch), all of them riders
// (`exact_segments`).
//
// Bindings: none of its own. Dispatch: grid x = the riders' splits.

fn split_segment(x: u32) -> SplitSegment {
    return rider_segment(x);
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

// The sums are in the natural domain already.
fn finish_sums(kv_head: u32, local: u32, summed: bool, quad: u32) {}
