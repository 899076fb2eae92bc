// attention_split_exact.wgsl — the exact (f16) row decoder of attention_split.wgsl: the
// fp16 cache, and the sinks and recent window of the quantized presets (as a segment of
// their own, or riding in a 2-bit segment's dispatch). Its rows are read by the file that
// follows it: attention_split_words.wgsl (u32 words and unpack2x16float, portable) or
// attention_split_halves.wgsl (native f16 loads where the device has shader-f16), which
// declare bindings 5 (keys) and 6 (values) and provide exact_key_dot and exact_value_quad.
//
// Up to two exact segments of one pair of buffers are a dispatch's riders: splits of their
// own, after the dispatch's own splits (none in _exact_only.wgsl), described by
// `exact_segments`.
//
// Bindings: 7 exact_segments (uniform): vec4<u32> [2]: per riding exact segment (first
//           position, tokens (0: none), first stored row, its first slot among the call's
//           splits)
// Layout: keys and values [kv_heads][rows][d] f16, row-major.
// Params: rows = exact rows per KV head; the segment's first stored row is seg.first_row.
// The query octet stays in registers while a lane walks its 32 key rows (as
// attention_scores_exact.wgsl does).

@group(0) @binding(7) var<uniform> exact_segments: array<vec4<u32>, 2>;

// The riding segment of rider split x (the dispatch's splits after its own).
fn rider_segment(x: u32) -> SplitSegment {
    let e0 = exact_segments[0];
    let splits0 = (e0.y + params.split_size - 1u) / params.split_size;
    let e = select(exact_segments[1], e0, x < splits0);
    let index = select(x - splits0, x, x < splits0);
    return SplitSegment(e.x, e.y, e.z, index, e.w + index, true);
}

// q·k of the query octet (qa, qb) with key octet `at + t · octets`, t clamped to `last`.
fn key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32, t: u32, octets: u32, last: u32) -> f32 {
    return exact_key_dot(qa, qb, at + min(t, last) * octets);
}

// The scaled scores of query row `q_base` (in vec4s) against the 32 tokens from
// `lane_first` of KV head `kv_head`'s segment, tokens past `last` (a lane offset) clamped.
fn exact_lane_scores(seg: SplitSegment, q_base: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    let octets = params.width / 8u;
    let key_base = (kv_head * params.rows + seg.first_row + lane_first) * octets;
    var acc = LaneScores();
    for (var o = 0u; o < octets; o = o + 1u) {
        let qa = queries[q_base + 2u * o] * params.scale;
        let qb = queries[q_base + 2u * o + 1u] * params.scale;
        let at = key_base + o;
        acc.c[0] = acc.c[0] + vec4<f32>(key_dot(qa, qb, at, 0u, octets, last), key_dot(qa, qb, at, 1u, octets, last), key_dot(qa, qb, at, 2u, octets, last), key_dot(qa, qb, at, 3u, octets, last));
        acc.c[1] = acc.c[1] + vec4<f32>(key_dot(qa, qb, at, 4u, octets, last), key_dot(qa, qb, at, 5u, octets, last), key_dot(qa, qb, at, 6u, octets, last), key_dot(qa, qb, at, 7u, octets, last));
        acc.c[2] = acc.c[2] + vec4<f32>(key_dot(qa, qb, at, 8u, octets, last), key_dot(qa, qb, at, 9u, octets, last), key_dot(qa, qb, at, 10u, octets, last), key_dot(qa, qb, at, 11u, octets, last));
        acc.c[3] = acc.c[3] + vec4<f32>(key_dot(qa, qb, at, 12u, octets, last), key_dot(qa, qb, at, 13u, octets, last), key_dot(qa, qb, at, 14u, octets, last), key_dot(qa, qb, at, 15u, octets, last));
        acc.c[4] = acc.c[4] + vec4<f32>(key_dot(qa, qb, at, 16u, octets, last), key_dot(qa, qb, at, 17u, octets, last), key_dot(qa, qb, at, 18u, octets, last), key_dot(qa, qb, at, 19u, octets, last));
        acc.c[5] = acc.c[5] + vec4<f32>(key_dot(qa, qb, at, 20u, octets, last), key_dot(qa, qb, at, 21u, octets, last), key_dot(qa, qb, at, 22u, octets, last), key_dot(qa, qb, at, 23u, octets, last));
        acc.c[6] = acc.c[6] + vec4<f32>(key_dot(qa, qb, at, 24u, octets, last), key_dot(qa, qb, at, 25u, octets, last), key_dot(qa, qb, at, 26u, octets, last), key_dot(qa, qb, at, 27u, octets, last));
        acc.c[7] = acc.c[7] + vec4<f32>(key_dot(qa, qb, at, 28u, octets, last), key_dot(qa, qb, at, 29u, octets, last), key_dot(qa, qb, at, 30u, octets, last), key_dot(qa, qb, at, 31u, octets, last));
    }
    return acc.c;
}

// Adds Σ p·v over `count` tokens of the tile for one channel quad to the 8 rows' sums:
// `at` is (KV head, the tile's first token, the first of the tokens within the tile, quad);
// a token past `count` is clamped to the last (its weight is then zero: it lies past the
// tile's end).
fn exact_value_sums(
    sums: ptr<function, RowSums>,
    seg: SplitSegment,
    at: vec4<u32>,
    count: u32,
) {
    let quads = params.width / 4u;
    let first = (at.x * params.rows + seg.first_row + at.y + at.z) * quads + at.w;
    let last = first + (max(count, 1u) - 1u) * quads;
    for (var j = 0u; j < count; j = j + 4u) {
        let row = first + j * quads;
        let v = mat4x4<f32>(
            exact_value_quad(row),
            exact_value_quad(min(row + quads, last)),
            exact_value_quad(min(row + 2u * quads, last)),
            exact_value_quad(min(row + 3u * quads, last)),
        );
        add_weighted(sums, v, (at.z + j) / 4u);
    }
}
