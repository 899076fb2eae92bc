// attention_split.wgsl — the fused split-K decode skeleton: one workgroup per (split of the
// segment, block of up to 8 query rows that share a KV head) computes the scores, the
// split's online softmax and Σ p·v in one pass for all the block's rows (GQA heads × query
// positions): each value row is decoded once for them all, each key row scored by one lane
// per row (the query in its registers), nothing goes through a score buffer, and the split
// leaves (m, l) and the unnormalized Σ p·v for attention_combine.wgsl, exactly as the
// three-pass kernels do. A row decoder file
// completes it (its bindings from 5 on):
//   attention_split_exact.wgsl   — exact (f16) rows: the fp16 cache, and the sinks and
//                                   recent window of the quantized presets;
//   attention_split_two_bit.wgsl — 2-bit keys per channel and 2-bit values per token
//                                   (KIVI), scale and minimum folded per group.
// A decoder provides lane_scores (q·k of a query row for one lane's 32 tokens) and
// value_quad (four channels of one token's value row).
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8, at most 256),
//           segment_start, segment_len, split_size, split_offset, total_splits,
//           rows_per_head, queries, row_offset, tile_rows, scale; the decoder's own)
//           1 queries (storage, read): vec4<f32> [q_heads][queries][d/4], the call's query
//             in natural channel order (scaled by params.scale = 1/√d by the decoder, so
//             that no pass runs before this one)
//           2 visible (storage, read): vec2<u32> [queries]: visible positions [lo, hi)
//           3 stats   (storage, read_write): vec2<f32> (m, l) [tile rows][total_splits]
//           4 partial (storage, read_write): vec4<f32> [tile rows][total_splits][d/4]
// Dispatch: grid (splits of the segment, blocks): blocks count ⌈rows_per_head / 8⌉ per KV
// head the tile touches (`row_blocks` on the host); 64 invocations. Per tile of 256 tokens:
// invocation (row r, block b) scores tokens 32b…32b+31 against row r (lane_scores, the
// query in registers); the first 8 invocations update their row's running maximum and
// sum; then each invocation adds Σ p·v for its task, a task being (channel quad, part of
// the tile's tokens) for all 8 rows: each value row is decoded once per workgroup, and
// the d/4 quads take 64·4/d parts (a power of two, at most 8: two of 128 tokens at
// d = 128, one at d = 256), whose sums are added in workgroup memory at the split's end.
// Splits and tiles start at multiples of 32 tokens, so a lane's tokens never straddle a
// group of 32 or more.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> visible: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> partial: array<vec4<f32>>;

const LANES: u32 = 64u;
const TILE_TOKENS: u32 = 256u;
// Tokens a scoring invocation takes: TILE_TOKENS / (LANES / BLOCK_ROWS).
const LANE_TOKENS: u32 = 32u;
const LOWEST: f32 = -0x1.fffffep+127f;

// Per row: (tile row, lo, hi, live).
var<workgroup> block_rows: array<vec4<u32>, BLOCK_ROWS>;
// The tile's scores, then its weights: per row, TILE_TOKENS / 4 vec4s.
var<workgroup> tile_weights: array<vec4<f32>, 512>;
// Per row: the running maximum and sum, and the factor that rescales the sums so far.
var<workgroup> running: array<vec2<f32>, BLOCK_ROWS>;
var<workgroup> rescale: array<f32, BLOCK_ROWS>;

// The masked score: LOWEST where row `info` does not see the token.
fn seen_score(s: f32, info: vec4<u32>, t: u32, end: u32) -> f32 {
    let position = params.segment_start + t;
    let seen = t < end && info.w == 1u && position >= info.y && position < info.z;
    return select(LOWEST, s, seen);
}

@compute @workgroup_size(LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let d = params.width;
    let quads = d / 4u;
    let split = workgroup.x;
    let kv_head = block_kv_head(workgroup.y);
    if (local < BLOCK_ROWS) {
        let tile_row = block_tile_row(workgroup.y, local);
        var info = vec4<u32>(0u);
        if (tile_row != NO_TILE_ROW) {
            let range = visible[query_row(tile_row).query];
            info = vec4<u32>(tile_row, range.x, range.y, 1u);
        }
        block_rows[local] = info;
        running[local] = vec2<f32>(LOWEST, 0.0);
    }
    workgroupBarrier();

    // Scoring: this invocation's row and its LANE_TOKENS tokens of each tile.
    let score_row = local / (LANES / BLOCK_ROWS);
    let score_block = local % (LANES / BLOCK_ROWS);
    let score_info = block_rows[score_row];
    // Accumulating: a task is (channel quad, part of the tile's tokens) for all 8 rows, so
    // that each value row is decoded once per workgroup: `parts` tasks per quad, as many as
    // fit in the lanes (a power of two, at most 8); a0…a7 are the rows' sums.
    let parts = token_parts(quads);
    let span = TILE_TOKENS / parts;
    let quad = local % quads;
    let part = local / quads;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    for (var tile = first; tile < end; tile = tile + TILE_TOKENS) {
        let lane_first = tile + score_block * LANE_TOKENS;
        var scores = array<vec4<f32>, 8>();
        if (score_info.w == 1u && lane_first < end) {
            let q = query_row(score_info.x);
            let q_base = (q.q_head * params.queries + q.query) * quads;
            scores = lane_scores(q_base, kv_head, lane_first, min(LANE_TOKENS, end - lane_first) - 1u);
        }
        let out = score_row * (TILE_TOKENS / 4u) + score_block * (LANE_TOKENS / 4u);
        for (var i = 0u; i < LANE_TOKENS / 4u; i = i + 1u) {
            let t = lane_first + 4u * i;
            let c = scores[i];
            tile_weights[out + i] = vec4<f32>(
                seen_score(c.x, score_info, t, end),
                seen_score(c.y, score_info, t + 1u, end),
                seen_score(c.z, score_info, t + 2u, end),
                seen_score(c.w, score_info, t + 3u, end),
            );
        }
        workgroupBarrier();
        // The running softmax of each row over this tile.
        if (local < BLOCK_ROWS) {
            let before = running[local];
            let base = local * (TILE_TOKENS / 4u);
            var top = vec4<f32>(before.x);
            for (var j = 0u; j < TILE_TOKENS / 4u; j = j + 1u) {
                top = max(top, tile_weights[base + j]);
            }
            let m = max(max(top.x, top.y), max(top.z, top.w));
            var sum = vec4<f32>(0.0);
            for (var j = 0u; j < TILE_TOKENS / 4u; j = j + 1u) {
                let s = tile_weights[base + j];
                let p = select(vec4<f32>(0.0), exp(s - m), s > vec4<f32>(LOWEST));
                tile_weights[base + j] = p;
                sum = sum + p;
            }
            let factor = select(1.0, exp(before.x - m), before.x > LOWEST);
            rescale[local] = factor;
            running[local] = vec2<f32>(m, before.y * factor + sum.x + sum.y + sum.z + sum.w);
        }
        workgroupBarrier();
        // Σ p·v over this invocation's part of the tile (none past the split's end, where
        // the sums are still rescaled).
        let offset = min(part * span, end - tile);
        let count = min(span, end - tile - offset);
        if (part < parts) {
            accumulate(&a0, &a1, &a2, &a3, &a4, &a5, &a6, &a7, vec4<u32>(kv_head, tile, offset, quad), count);
        }
        workgroupBarrier();
    }
    // The parts' sums of each (row, quad) added up through workgroup memory (the tile's
    // weights are no longer needed): part p's sums at [p][quad][row].
    if (part < parts) {
        let at = (part * quads + quad) * BLOCK_ROWS;
        tile_weights[at] = a0;
        tile_weights[at + 1u] = a1;
        tile_weights[at + 2u] = a2;
        tile_weights[at + 3u] = a3;
        tile_weights[at + 4u] = a4;
        tile_weights[at + 5u] = a5;
        tile_weights[at + 6u] = a6;
        tile_weights[at + 7u] = a7;
    }
    workgroupBarrier();
    for (var out = local; out < quads * BLOCK_ROWS; out = out + LANES) {
        let row = out / quads;
        let q = out % quads;
        if (block_rows[row].w == 1u) {
            var sum = vec4<f32>(0.0);
            for (var p = 0u; p < parts; p = p + 1u) {
                sum = sum + tile_weights[(p * quads + q) * BLOCK_ROWS + row];
            }
            let slot = block_rows[row].x * params.total_splits + params.split_offset + split;
            partial[slot * quads + q] = sum;
        }
    }
    if (local < BLOCK_ROWS && block_rows[local].w == 1u) {
        let slot = block_rows[local].x * params.total_splits + params.split_offset + split;
        stats[slot] = running[local];
    }
}

// Tasks per channel quad: the largest power of two, at most 8, with quads · parts ≤ LANES.
fn token_parts(quads: u32) -> u32 {
    var parts = 8u;
    while (parts > 1u && parts * quads > LANES) {
        parts = parts / 2u;
    }
    return parts;
}

// Rescales the 8 rows' sums to their new running maxima, then adds Σ p·v over `count`
// tokens of the tile for one channel quad: `at` is (KV head, the tile's first token, the
// first of the tokens within the tile, quad); past `count` a token is clamped to the last
// (its weight is then zero: it lies past the tile's end).
fn accumulate(
    a0: ptr<function, vec4<f32>>,
    a1: ptr<function, vec4<f32>>,
    a2: ptr<function, vec4<f32>>,
    a3: ptr<function, vec4<f32>>,
    a4: ptr<function, vec4<f32>>,
    a5: ptr<function, vec4<f32>>,
    a6: ptr<function, vec4<f32>>,
    a7: ptr<function, vec4<f32>>,
    at: vec4<u32>,
    count: u32,
) {
    let first = at.y + at.z;
    let last = first + max(count, 1u) - 1u;
    let stride = TILE_TOKENS / 4u;
    var s0 = *a0 * rescale[0];
    var s1 = *a1 * rescale[1];
    var s2 = *a2 * rescale[2];
    var s3 = *a3 * rescale[3];
    var s4 = *a4 * rescale[4];
    var s5 = *a5 * rescale[5];
    var s6 = *a6 * rescale[6];
    var s7 = *a7 * rescale[7];
    for (var j = 0u; j < count; j = j + 4u) {
        let t = first + j;
        let v0 = value_quad(at.x, t, at.w);
        let v1 = value_quad(at.x, min(t + 1u, last), at.w);
        let v2 = value_quad(at.x, min(t + 2u, last), at.w);
        let v3 = value_quad(at.x, min(t + 3u, last), at.w);
        let w = (at.z + j) / 4u;
        let p0 = tile_weights[w];
        let p1 = tile_weights[stride + w];
        let p2 = tile_weights[2u * stride + w];
        let p3 = tile_weights[3u * stride + w];
        let p4 = tile_weights[4u * stride + w];
        let p5 = tile_weights[5u * stride + w];
        let p6 = tile_weights[6u * stride + w];
        let p7 = tile_weights[7u * stride + w];
        s0 = s0 + p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3;
        s1 = s1 + p1.x * v0 + p1.y * v1 + p1.z * v2 + p1.w * v3;
        s2 = s2 + p2.x * v0 + p2.y * v1 + p2.z * v2 + p2.w * v3;
        s3 = s3 + p3.x * v0 + p3.y * v1 + p3.z * v2 + p3.w * v3;
        s4 = s4 + p4.x * v0 + p4.y * v1 + p4.z * v2 + p4.w * v3;
        s5 = s5 + p5.x * v0 + p5.y * v1 + p5.z * v2 + p5.w * v3;
        s6 = s6 + p6.x * v0 + p6.y * v1 + p6.z * v2 + p6.w * v3;
        s7 = s7 + p7.x * v0 + p7.y * v1 + p7.z * v2 + p7.w * v3;
    }
    *a0 = s0;
    *a1 = s1;
    *a2 = s2;
    *a3 = s3;
    *a4 = s4;
    *a5 = s5;
    *a6 = s6;
    *a7 = s7;
}
