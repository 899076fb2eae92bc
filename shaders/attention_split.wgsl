// attention_split.wgsl — the fused split-K decode skeleton: one workgroup per (split, block
// of up to 8 query rows that share a KV head) computes the scores, the split's online
// softmax and Σ p·v in one pass for all the block's rows (GQA heads × query positions):
// each value row is decoded once for them all, each key row scored by one lane per row
// (the query in its registers), nothing goes through a score buffer, and the split leaves
// (m, l) and the unnormalized Σ p·v for attention_combine.wgsl, exactly as the three-pass
// kernels do. Row decoder files complete it (their bindings from 5 on):
//   attention_split_exact.wgsl   — exact (f16) rows (exact_lane_scores, exact_value_sums),
//                                   read by the next file: _words.wgsl (u32 words,
//                                   portable) or _halves.wgsl (f16 loads, shader-f16);
//   attention_split_exact_only.wgsl — last file for a segment of exact rows on its own
//                                   (the fp16 cache; sinks and windows that ride nowhere
//                                   else);
//   attention_split_two_bit.wgsl — 2-bit keys per channel (KIVI), scale and minimum
//                                   folded per group, with up to two exact segments
//                                   riding as splits; then, last,
//   attention_split_value_tokens.wgsl or _value_channels.wgsl — 2-bit values per token
//                                   (`kivi2`) or per channel (`k2v2-channel`);
//   attention_split_signs_trits.wgsl — on its own: the VidKV paper's format (2-bit
//                                   outlier channels and sign rows against the planar
//                                   query of the queries pass, ternary values);
//   attention_split_rotated_tokens.wgsl — on its own: rotated per-token codes against the
//                                   rotated query of the query rotation, values summed in
//                                   the rotated domain and rotated back at the split's end.
// The last file provides split_segment (the segment of a workgroup's split: the dispatch's
// own, or a rider's), lane_scores (q·k of a tile row's query for one lane's 32 tokens),
// value_sums (Σ p·v of a task's tokens, through add_weighted) and finish_sums (run by every
// invocation on the split's summed rows in workgroup memory before they are written:
// nothing for the natural-domain decoders, the rotation back for rotated codes).
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8, at most 256),
//           segment_start, segment_len, split_size, split_offset, total_splits,
//           rows_per_head, queries, row_offset, tile_rows, scale; the decoder's own)
//           1 queries (storage, read): vec4<f32> [q_heads][queries][d/4], the call's query
//             in natural channel order (scaled by params.scale = 1/√d by the decoder, so
//             that no pass runs before this one; natural_query_base); the signs-and-trits
//             decoder binds its planar query here instead
//           2 visible (storage, read): vec2<u32> [queries]: visible positions [lo, hi)
//           3 stats   (storage, read_write): vec2<f32> (m, l) [tile rows][total_splits];
//             then, from vec2 index params.stp where that is not 0 (a segment with STP
//             refinements), the masked logits [tile rows][score_stride()] (store_logits)
//           4 partial (storage, read_write): vec4<f32> [tile rows][total_splits][d/4]
// Dispatch: grid (splits of the segment, then its riders', blocks): blocks count
// ⌈rows_per_head / 8⌉ per KV head the tile touches (`row_blocks` on the host); 64
// invocations. Per tile of 256 tokens:
// invocation (row r, block b) scores tokens 32b…32b+31 against row r (lane_scores, the
// query in registers); the first 8 invocations update their row's running maximum and
// sum; then each invocation adds Σ p·v for its task, a task being (channel quad, part of
// the tile's tokens) for all 8 rows: each value row is decoded once per workgroup, and
// the d/4 quads take 64·4/d parts (a power of two, at most 8: two of 128 tokens at
// d = 128, one at d = 256), whose sums are added in workgroup memory at the split's end
// ([quad][row] in tile_weights, where finish_sums finds them).
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

// A lane's 32 scores as eight vec4s (constant indices only, so that a CPU driver keeps them
// in registers) and a bias that each score gets (the 2-bit rows' Σ q·min).
struct LaneScores {
    c: array<vec4<f32>, 8>,
    bias: f32,
}

// Adds one 2-bit key row's slice of a lane's 32 tokens (code words `low`, `high`, the
// first token in the low bits): qs = q·scale times each code, and q·min to the bias.
fn add_two_bit_slice(acc: ptr<function, LaneScores>, qs: f32, q_min: f32, low: u32, high: u32) {
    (*acc).bias = (*acc).bias + q_min;
    (*acc).c[0] = (*acc).c[0] + qs * two_bit_codes4(low, 0u);
    (*acc).c[1] = (*acc).c[1] + qs * two_bit_codes4(low, 1u);
    (*acc).c[2] = (*acc).c[2] + qs * two_bit_codes4(low, 2u);
    (*acc).c[3] = (*acc).c[3] + qs * two_bit_codes4(low, 3u);
    (*acc).c[4] = (*acc).c[4] + qs * two_bit_codes4(high, 0u);
    (*acc).c[5] = (*acc).c[5] + qs * two_bit_codes4(high, 1u);
    (*acc).c[6] = (*acc).c[6] + qs * two_bit_codes4(high, 2u);
    (*acc).c[7] = (*acc).c[7] + qs * two_bit_codes4(high, 3u);
}

// The lane's scores with the bias added.
fn lane_totals(acc: LaneScores) -> array<vec4<f32>, 8> {
    let b = vec4<f32>(acc.bias);
    return array<vec4<f32>, 8>(acc.c[0] + b, acc.c[1] + b, acc.c[2] + b, acc.c[3] + b, acc.c[4] + b, acc.c[5] + b, acc.c[6] + b, acc.c[7] + b);
}

// A task's value sums, one vec4 per row of the block (constant indices only, so that a CPU
// driver keeps them in registers).
struct RowSums {
    rows: array<vec4<f32>, 8>,
}

// The segment a workgroup's split belongs to (split_segment, from the composition's
// last file): its first position and tokens, its first stored row (exact rows), the split's
// index in it and its slot among the call's splits, and whether its rows are exact.
struct SplitSegment {
    start: u32,
    len: u32,
    first_row: u32,
    split: u32,
    slot: u32,
    exact: bool,
}

// The masked score: LOWEST where row `info` does not see the token.
fn seen_score(s: f32, info: vec4<u32>, t: u32, end: u32, start: u32) -> f32 {
    let position = start + t;
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
    let seg = split_segment(workgroup.x);
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
    // fit in the lanes (a power of two, at most 8); `sums` holds the rows' sums.
    let parts = token_parts(quads);
    let span = TILE_TOKENS / parts;
    let quad = local % quads;
    let part = local / quads;
    var sums = RowSums();
    let first = seg.split * params.split_size;
    let end = min(first + params.split_size, seg.len);
    for (var tile = first; tile < end; tile = tile + TILE_TOKENS) {
        let lane_first = tile + score_block * LANE_TOKENS;
        var scores = array<vec4<f32>, 8>();
        if (score_info.w == 1u && lane_first < end) {
            scores = lane_scores(seg, score_info.x, kv_head, lane_first, min(LANE_TOKENS, end - lane_first) - 1u);
        }
        let out = score_row * (TILE_TOKENS / 4u) + score_block * (LANE_TOKENS / 4u);
        for (var i = 0u; i < LANE_TOKENS / 4u; i = i + 1u) {
            let t = lane_first + 4u * i;
            let c = scores[i];
            let seen = vec4<f32>(
                seen_score(c.x, score_info, t, end, seg.start),
                seen_score(c.y, score_info, t + 1u, end, seg.start),
                seen_score(c.z, score_info, t + 2u, end, seg.start),
                seen_score(c.w, score_info, t + 3u, end, seg.start),
            );
            tile_weights[out + i] = seen;
            if (params.stp != 0u && score_info.w == 1u && t < end) {
                store_logits(score_info.x, t, seen);
            }
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
            sums = rescaled(sums);
            value_sums(&sums, seg, vec4<u32>(kv_head, tile, offset, quad), count);
        }
        workgroupBarrier();
    }
    // The parts' sums of each (row, quad) added up through workgroup memory (the tile's
    // weights are no longer needed): part p's sums at [p][quad][row], their total where
    // part 0's were, [quad][row] (each total's own entries, so no lane reads another's).
    if (part < parts) {
        let at = (part * quads + quad) * BLOCK_ROWS;
        tile_weights[at] = sums.rows[0];
        tile_weights[at + 1u] = sums.rows[1];
        tile_weights[at + 2u] = sums.rows[2];
        tile_weights[at + 3u] = sums.rows[3];
        tile_weights[at + 4u] = sums.rows[4];
        tile_weights[at + 5u] = sums.rows[5];
        tile_weights[at + 6u] = sums.rows[6];
        tile_weights[at + 7u] = sums.rows[7];
    }
    workgroupBarrier();
    for (var out = local; out < quads * BLOCK_ROWS; out = out + LANES) {
        var sum = vec4<f32>(0.0);
        for (var p = 0u; p < parts; p = p + 1u) {
            sum = sum + tile_weights[p * quads * BLOCK_ROWS + out];
        }
        tile_weights[out] = sum;
    }
    workgroupBarrier();
    // The decoder's last word on the sums (rotating them back, for rotated codes).
    finish_sums(kv_head, local, part < parts, quad);
    workgroupBarrier();
    for (var out = local; out < quads * BLOCK_ROWS; out = out + LANES) {
        let row = out / quads;
        let q = out % quads;
        if (block_rows[row].w == 1u) {
            let slot = block_rows[row].x * params.total_splits + seg.slot;
            partial[slot * quads + q] = tile_weights[q * BLOCK_ROWS + row];
        }
    }
    if (local < BLOCK_ROWS && block_rows[local].w == 1u) {
        let slot = block_rows[local].x * params.total_splits + seg.slot;
        stats[slot] = running[local];
    }
}

// Four tokens' masked logits (from token t of the segment) of tile row `tile_row` into the
// scores after the (m, l) pairs in binding 3, for the STP refinement pass that follows a
// segment with refinements (it weighs them against the pairs): [tile rows][score_stride()]
// f32 from vec2 index params.stp (score_stride() and t are multiples of 4).
fn store_logits(tile_row: u32, t: u32, logits: vec4<f32>) {
    let at = params.stp + (tile_row * score_stride() + t) / 2u;
    stats[at] = logits.xy;
    stats[at + 1u] = logits.zw;
}

// The first vec4 of tile row `tile_row`'s query in the call's natural query (binding 1).
fn natural_query_base(tile_row: u32) -> u32 {
    let q = query_row(tile_row);
    return (q.q_head * params.queries + q.query) * (params.width / 4u);
}

// Tasks per channel quad: the largest power of two, at most 8, with quads · parts ≤ LANES.
fn token_parts(quads: u32) -> u32 {
    var parts = 8u;
    while (parts > 1u && parts * quads > LANES) {
        parts = parts / 2u;
    }
    return parts;
}

// The 8 rows' sums rescaled to their new running maxima.
fn rescaled(sums: RowSums) -> RowSums {
    return RowSums(array<vec4<f32>, 8>(
        sums.rows[0] * rescale[0],
        sums.rows[1] * rescale[1],
        sums.rows[2] * rescale[2],
        sums.rows[3] * rescale[3],
        sums.rows[4] * rescale[4],
        sums.rows[5] * rescale[5],
        sums.rows[6] * rescale[6],
        sums.rows[7] * rescale[7],
    ));
}

// Adds the weighted value quads v0…v3 of four consecutive tokens to the 8 rows' sums; `w`
// is the tokens' vec4 of weights in the tile (tile_weights, per row).
fn add_weighted(
    sums: ptr<function, RowSums>,
    v: mat4x4<f32>,
    w: u32,
) {
    let stride = TILE_TOKENS / 4u;
    (*sums).rows[0] = (*sums).rows[0] + v * tile_weights[w];
    (*sums).rows[1] = (*sums).rows[1] + v * tile_weights[stride + w];
    (*sums).rows[2] = (*sums).rows[2] + v * tile_weights[2u * stride + w];
    (*sums).rows[3] = (*sums).rows[3] + v * tile_weights[3u * stride + w];
    (*sums).rows[4] = (*sums).rows[4] + v * tile_weights[4u * stride + w];
    (*sums).rows[5] = (*sums).rows[5] + v * tile_weights[5u * stride + w];
    (*sums).rows[6] = (*sums).rows[6] + v * tile_weights[6u * stride + w];
    (*sums).rows[7] = (*sums).rows[7] + v * tile_weights[7u * stride + w];
}
