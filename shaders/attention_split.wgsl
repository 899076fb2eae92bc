// attention_split.wgsl — fused split-K decode attention over exact (f16) K/V rows: the
// fp16 cache, and the sinks and recent window of the quantized presets. One workgroup per
// (split of the segment, block of up to 8 query rows that share a KV head) computes the
// scores, the split's online softmax and Σ p·v in one pass: every key and value row is
// read once for all the block's rows (GQA heads × query positions), nothing goes through
// a score buffer, and the split leaves (m, l) and the unnormalized Σ p·v for
// attention_combine.wgsl, exactly as the three-pass kernels do.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8, at most 256), rows =
//           exact rows per KV head, segment_first, segment_start, segment_len, split_size,
//           split_offset, total_splits, rows_per_head, queries, row_offset, tile_rows)
//           1 queries (storage, read): vec4<f32> [q_heads][queries][d/4], the call's query
//             (scaled by params.scale = 1/√d here, so that no pass runs before this one)
//           2 visible (storage, read): vec2<u32> [queries]: visible positions [lo, hi)
//           3 keys    (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           4 values  (storage, read): vec2<u32> [kv_heads][rows][d/4], f16 pairs
//           5 stats   (storage, read_write): vec2<f32> (m, l) [tile rows][total_splits]
//           6 partial (storage, read_write): vec4<f32> [tile rows][total_splits][d/4]
// Dispatch: grid (splits of the segment, blocks): blocks count ⌈rows_per_head / 8⌉ per KV
// head the tile touches (`row_blocks` on the host); 64 invocations. Per tile of 256 tokens:
// invocation (row r, block b) scores tokens 32b…32b+31 against row r with the query octet
// in registers (as attention_scores_exact.wgsl does); the first 8 invocations update their
// row's running maximum and sum; then each invocation adds Σ p·v for its tasks, a task
// being (channel quad, half of the rows): 2·d/4 tasks, so one task per invocation up to
// d = 128 and two for d = 256, four tokens per weight load. On lavapipe this is about as
// fast as the three passes it replaces (BENCHMARKS.md); its point is a real GPU, where it
// saves two dispatches, two full barriers and the score round trip per segment.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> visible: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> keys: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> values: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> partial: array<vec4<f32>>;

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

// q·k of the query octet (qa, qb) with key row `at + t · octets`, t clamped to `last`.
fn key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32, t: u32, octets: u32, last: u32) -> f32 {
    let k = unpack_f16_octet(keys[at + min(t, last) * octets]);
    return dot(qa, vec4<f32>(k[0], k[1], k[2], k[3])) + dot(qb, vec4<f32>(k[4], k[5], k[6], k[7]));
}

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
    let octets = d / 8u;
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

    // Scoring: this invocation's row and its 16 tokens of each tile.
    let score_row = local / (LANES / BLOCK_ROWS);
    let score_block = local % (LANES / BLOCK_ROWS);
    let score_info = block_rows[score_row];
    // Accumulating: tasks of (channel quad, half of the rows): task `local` and, for d > 128,
    // task `local + LANES`; accumulators a0…a3 are the first task's rows, a4…a7 the second's.
    let tasks = 2u * quads;
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
    let head_row = kv_head * params.rows + params.segment_first;
    for (var tile = first; tile < end; tile = tile + TILE_TOKENS) {
        let lane_first = tile + score_block * LANE_TOKENS;
        var c0 = vec4<f32>(0.0);
        var c1 = vec4<f32>(0.0);
        var c2 = vec4<f32>(0.0);
        var c3 = vec4<f32>(0.0);
        var c4 = vec4<f32>(0.0);
        var c5 = vec4<f32>(0.0);
        var c6 = vec4<f32>(0.0);
        var c7 = vec4<f32>(0.0);
        if (score_info.w == 1u && lane_first < end) {
            let last = min(LANE_TOKENS, end - lane_first) - 1u;
            let key_base = (head_row + lane_first) * octets;
            let q = query_row(score_info.x);
            let q_base = (q.q_head * params.queries + q.query) * quads;
            for (var o = 0u; o < octets; o = o + 1u) {
                let qa = queries[q_base + 2u * o] * params.scale;
                let qb = queries[q_base + 2u * o + 1u] * params.scale;
                let at = key_base + o;
                c0 = c0 + vec4<f32>(key_dot(qa, qb, at, 0u, octets, last), key_dot(qa, qb, at, 1u, octets, last), key_dot(qa, qb, at, 2u, octets, last), key_dot(qa, qb, at, 3u, octets, last));
                c1 = c1 + vec4<f32>(key_dot(qa, qb, at, 4u, octets, last), key_dot(qa, qb, at, 5u, octets, last), key_dot(qa, qb, at, 6u, octets, last), key_dot(qa, qb, at, 7u, octets, last));
                c2 = c2 + vec4<f32>(key_dot(qa, qb, at, 8u, octets, last), key_dot(qa, qb, at, 9u, octets, last), key_dot(qa, qb, at, 10u, octets, last), key_dot(qa, qb, at, 11u, octets, last));
                c3 = c3 + vec4<f32>(key_dot(qa, qb, at, 12u, octets, last), key_dot(qa, qb, at, 13u, octets, last), key_dot(qa, qb, at, 14u, octets, last), key_dot(qa, qb, at, 15u, octets, last));
                c4 = c4 + vec4<f32>(key_dot(qa, qb, at, 16u, octets, last), key_dot(qa, qb, at, 17u, octets, last), key_dot(qa, qb, at, 18u, octets, last), key_dot(qa, qb, at, 19u, octets, last));
                c5 = c5 + vec4<f32>(key_dot(qa, qb, at, 20u, octets, last), key_dot(qa, qb, at, 21u, octets, last), key_dot(qa, qb, at, 22u, octets, last), key_dot(qa, qb, at, 23u, octets, last));
                c6 = c6 + vec4<f32>(key_dot(qa, qb, at, 24u, octets, last), key_dot(qa, qb, at, 25u, octets, last), key_dot(qa, qb, at, 26u, octets, last), key_dot(qa, qb, at, 27u, octets, last));
                c7 = c7 + vec4<f32>(key_dot(qa, qb, at, 28u, octets, last), key_dot(qa, qb, at, 29u, octets, last), key_dot(qa, qb, at, 30u, octets, last), key_dot(qa, qb, at, 31u, octets, last));
            }
        }
        let scores = array<vec4<f32>, 8>(c0, c1, c2, c3, c4, c5, c6, c7);
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
        // Σ p·v over the tile for this invocation's tasks.
        let count = min(TILE_TOKENS, end - tile);
        if (local < tasks) {
            let r = 4u * (local / quads);
            accumulate(&a0, &a1, &a2, &a3, (head_row + tile) * quads + local % quads, r, count, quads);
        }
        if (local + LANES < tasks) {
            let r = 4u * ((local + LANES) / quads);
            accumulate(&a4, &a5, &a6, &a7, (head_row + tile) * quads + (local + LANES) % quads, r, count, quads);
        }
        workgroupBarrier();
    }
    let sums = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var k = 0u; k < 8u; k = k + 1u) {
        let task = local + (k / 4u) * LANES;
        let row = 4u * (task / quads) + k % 4u;
        if (task < tasks && block_rows[row].w == 1u) {
            let slot = block_rows[row].x * params.total_splits + params.split_offset + split;
            partial[slot * quads + task % quads] = sums[k];
        }
    }
    if (local < BLOCK_ROWS && block_rows[local].w == 1u) {
        let slot = block_rows[local].x * params.total_splits + params.split_offset + split;
        stats[slot] = running[local];
    }
}

// Rescales the sums of rows r…r+3 to the rows' new running maxima, then adds Σ p·v over the
// tile's `count` tokens for the channel quad whose first value is at `base` (the tile's
// first token).
fn accumulate(
    a0: ptr<function, vec4<f32>>,
    a1: ptr<function, vec4<f32>>,
    a2: ptr<function, vec4<f32>>,
    a3: ptr<function, vec4<f32>>,
    base: u32,
    r: u32,
    count: u32,
    quads: u32,
) {
    let last = count - 1u;
    let stride = TILE_TOKENS / 4u;
    var s0 = *a0 * rescale[r];
    var s1 = *a1 * rescale[r + 1u];
    var s2 = *a2 * rescale[r + 2u];
    var s3 = *a3 * rescale[r + 3u];
    for (var j = 0u; j < count; j = j + 4u) {
        let v0 = value_quad(base, j, quads, last);
        let v1 = value_quad(base, j + 1u, quads, last);
        let v2 = value_quad(base, j + 2u, quads, last);
        let v3 = value_quad(base, j + 3u, quads, last);
        let w = j / 4u;
        let p0 = tile_weights[r * stride + w];
        let p1 = tile_weights[(r + 1u) * stride + w];
        let p2 = tile_weights[(r + 2u) * stride + w];
        let p3 = tile_weights[(r + 3u) * stride + w];
        s0 = s0 + p0.x * v0 + p0.y * v1 + p0.z * v2 + p0.w * v3;
        s1 = s1 + p1.x * v0 + p1.y * v1 + p1.z * v2 + p1.w * v3;
        s2 = s2 + p2.x * v0 + p2.y * v1 + p2.z * v2 + p2.w * v3;
        s3 = s3 + p3.x * v0 + p3.y * v1 + p3.z * v2 + p3.w * v3;
    }
    *a0 = s0;
    *a1 = s1;
    *a2 = s2;
    *a3 = s3;
}

// Channels 4c…4c+3 of value row `j` of the tile (from `base`, the row of the tile's first
// token and quad c), j clamped to `last`: its weight past the tile's end is zero.
fn value_quad(base: u32, j: u32, quads: u32, last: u32) -> vec4<f32> {
    let words = values[base + min(j, last) * quads];
    return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}
