// attention_split_groups_riders.wgsl — the last stage of attention_split_groups.wgsl: it
// scales and rotates its block's query rows itself (from the call's query), and a quantized
// preset's sinks and recent window ride in its dispatch as splits of their own, instead of
// dispatches of attention_split.wgsl before and after it. A default-preset layer is then
// this dispatch and the combine. Appended to every composition `fused_kernel` picks; `main`
// sends the workgroups past the segment's own splits to `exact_split`.
//
// Bindings (after the fused kernel's 0…11, whose `queries` the exact splits read too):
//           12 exact_segments (uniform): vec4<u32> [2]: per exact segment (first position,
//              tokens (0: none), first stored row, splits of the call before it)
//           13 exact_keys   (storage, read): vec4<u32> [kv_heads][rows][d/8], f16 pairs
//           14 exact_values (storage, read): vec2<u32> [kv_heads][rows][d/4], f16 pairs
//           (params.rows: the exact rows per KV head of both.)
// Queries: the block's rows q/√d are rotated (Rot_d) in exchange, four at a time, while the
// lanes sum their shares of the rows' key centre terms (q/√d)·m; each workgroup does this
// for itself, which saves the call a dispatch and a barrier before this one.
// Exact splits: the fused kernel's grid, whose x counts the exact segments' splits after
// the segment's own (`rotated_groups::record_fused` on the host). Per tile of TILE_TOKENS
// tokens, in the fused kernel's workgroup memory (no more of it): invocation (row r, block
// b) scores tokens 16b…16b+15 against row r into tile_weights (entry (token, half) holds
// four rows, as in the fused kernel); two invocations update the running maxima and sums
// of four rows each; then every invocation adds Σ p·v for its tasks, a task being (channel
// quad, half of the rows): 2·d/4 tasks, one per invocation up to d = 128 and two for
// d = 256. The split leaves (m, l) and Σ p·v as attention_split.wgsl does.

@group(0) @binding(12) var<uniform> exact_segments: array<vec4<u32>, 2>;
@group(0) @binding(13) var<storage, read> exact_keys: array<vec4<u32>>;
@group(0) @binding(14) var<storage, read> exact_values: array<vec2<u32>>;

// The block's rotated query rows of the chunk at c0 (see BlockQueries); the rows' key
// centre terms go to key_centre. Starts and ends with a barrier.
fn block_queries(local: u32, kv_head: u32, c0: u32) -> BlockQueries {
    let centre_low = load_query_rows(local, 0u, kv_head);
    rotate_exchange(local);
    let low = array<mat4x4<f32>, 4>(exchange_block(c0), exchange_block(c0 + 4u), exchange_block(c0 + 8u), exchange_block(c0 + 12u));
    workgroupBarrier();
    let centre_high = load_query_rows(local, 1u, kv_head);
    rotate_exchange(local);
    let high = array<mat4x4<f32>, 4>(exchange_block(c0), exchange_block(c0 + 4u), exchange_block(c0 + 8u), exchange_block(c0 + 12u));
    workgroupBarrier();
    exchange[local] = centre_low;
    exchange[LANES + local] = centre_high;
    workgroupBarrier();
    if (local < 2u) {
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < LANES; i = i + 1u) {
            sum = sum + exchange[local * LANES + i];
        }
        key_centre[local] = sum;
    }
    workgroupBarrier();
    return BlockQueries(low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3]);
}

// exchange[0..d) ← block rows 4h…4h+3 of the query, q/√d (zero for rows not live);
// returns this invocation's share of their key centre terms Σ (q/√d)·m over its channels.
fn load_query_rows(local: u32, h: u32, kv_head: u32) -> vec4<f32> {
    let d = params.width;
    var centre = vec4<f32>(0.0);
    for (var e = local; e < d; e = e + LANES) {
        var x = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k = k + 1u) {
            let info = block_rows[4u * h + k];
            if (info.w == 1u) {
                let r = query_row(info.x);
                x[k] = queries[((r.q_head * params.queries + r.query) * d + e) / 4u][e % 4u] * params.scale;
            }
        }
        exchange[e] = x;
        let pair = unpack2x16float(state_word(false, kv_head, e / 2u));
        centre = centre + x * select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return centre;
}

// Four rows' values of channels first…first+3 from exchange: column j is channel first + j.
fn exchange_block(first: u32) -> mat4x4<f32> {
    return mat4x4<f32>(exchange[first], exchange[first + 1u], exchange[first + 2u], exchange[first + 3u]);
}

// Tokens a scoring invocation takes: TILE_TOKENS / (LANES / BLOCK_ROWS).
const EXACT_LANE_TOKENS: u32 = 16u;

// Exact split `index` of the dispatch (counted after the segment's own splits): (segment,
// split within it), or segment 2 where there is no such split.
fn exact_split_of(index: u32) -> vec2<u32> {
    var rest = index;
    for (var e = 0u; e < 2u; e = e + 1u) {
        let splits = (exact_segments[e].y + params.split_size - 1u) / params.split_size;
        if (rest < splits) {
            return vec2<u32>(e, rest);
        }
        rest = rest - splits;
    }
    return vec2<u32>(2u, 0u);
}

// q·k of the query octet (qa, qb) with exact key row `at + t · octets`, t clamped to `last`.
fn exact_key_dot(qa: vec4<f32>, qb: vec4<f32>, at: u32, t: u32, octets: u32, last: u32) -> f32 {
    let k = unpack_f16_octet(exact_keys[at + min(t, last) * octets]);
    return dot(qa, vec4<f32>(k[0], k[1], k[2], k[3])) + dot(qb, vec4<f32>(k[4], k[5], k[6], k[7]));
}

// The masked score of token t at `position`: LOWEST where row `info` does not see it.
fn exact_seen(s: f32, info: vec4<u32>, t: u32, end: u32, position: u32) -> f32 {
    let seen = t < end && info.w == 1u && position >= info.y && position < info.z;
    return select(LOWEST, s, seen);
}

// Stores the masked scores c of tokens i…i+3 of a scoring invocation (`at`: its first
// token in the tile, its row, the split's end) into tile_weights; `start` is the
// segment's first position.
fn store_scores(c: vec4<f32>, at: vec3<u32>, i: u32, info: vec4<u32>, tile: u32, start: u32) {
    let h = at.y / 4u;
    let k = at.y % 4u;
    for (var n = 0u; n < 4u; n = n + 1u) {
        let r = at.x + i + n;
        let t = tile + r;
        tile_weights[weight_index(r, h)][k] = exact_seen(c[n], info, t, at.z, start + t);
    }
}

// Channels 4c…4c+3 of exact value row `j` of the tile (from `base`, the row of the tile's
// first token and quad c), j clamped to `last`: its weight past the tile's end is zero.
fn exact_value_quad(base: u32, j: u32, quads: u32, last: u32) -> vec4<f32> {
    let words = exact_values[base + min(j, last) * quads];
    return vec4<f32>(unpack2x16float(words.x), unpack2x16float(words.y));
}

// Rescales a task's sums (rows 4h…4h+3 as components, channels as columns) to the rows' new
// maxima, then adds Σ p·v over the tile's `count` tokens for the channel quad whose first
// value is at `base`.
fn exact_accumulate(sums: mat4x4<f32>, base: u32, h: u32, count: u32, quads: u32) -> mat4x4<f32> {
    var s = rows_scaled(sums, rescale[h]);
    for (var j = 0u; j < count; j = j + 1u) {
        s = s + outer(tile_weights[weight_index(j, h)], exact_value_quad(base, j, quads, count - 1u));
    }
    return s;
}

// Writes task `task`'s sums (see exact_accumulate) of split `slot_split` to partial.
fn exact_store(task: u32, quads: u32, slot_split: u32, sums: mat4x4<f32>) {
    let h = task / quads;
    let quad = task % quads;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let info = block_rows[4u * h + k];
        if (info.w == 1u) {
            let slot = info.x * params.total_splits + slot_split;
            store_partial(slot, 4u * quad, sums[0][k]);
            store_partial(slot, 4u * quad + 1u, sums[1][k]);
            store_partial(slot, 4u * quad + 2u, sums[2][k]);
            store_partial(slot, 4u * quad + 3u, sums[3][k]);
        }
    }
}

// The exact split `index` (see exact_split_of) of the block's rows of KV head `kv_head`;
// block_rows, row_max and row_sum are set up by `main`.
fn exact_split(local: u32, kv_head: u32, index: u32) {
    let d = params.width;
    let quads = d / 4u;
    let octets = d / 8u;
    let which = exact_split_of(index);
    let segment = exact_segments[min(which.x, 1u)];
    let first = which.y * params.split_size;
    let end = select(0u, min(first + params.split_size, segment.y), which.x < 2u);
    let head_row = kv_head * params.rows + segment.z;
    let score_row = local / (LANES / BLOCK_ROWS);
    let score_block = local % (LANES / BLOCK_ROWS);
    let score_info = block_rows[score_row];
    let tasks = 2u * quads;
    let zero = mat4x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var first_sums = zero;
    var second_sums = zero;
    for (var tile = first; tile < end; tile = tile + TILE_TOKENS) {
        let lane_first = tile + score_block * EXACT_LANE_TOKENS;
        var c0 = vec4<f32>(0.0);
        var c1 = vec4<f32>(0.0);
        var c2 = vec4<f32>(0.0);
        var c3 = vec4<f32>(0.0);
        if (score_info.w == 1u && lane_first < end) {
            let last = min(EXACT_LANE_TOKENS, end - lane_first) - 1u;
            let key_base = (head_row + lane_first) * octets;
            let q = query_row(score_info.x);
            let q_base = (q.q_head * params.queries + q.query) * quads;
            for (var o = 0u; o < octets; o = o + 1u) {
                let qa = queries[q_base + 2u * o] * params.scale;
                let qb = queries[q_base + 2u * o + 1u] * params.scale;
                let at = key_base + o;
                c0 = c0 + vec4<f32>(exact_key_dot(qa, qb, at, 0u, octets, last), exact_key_dot(qa, qb, at, 1u, octets, last), exact_key_dot(qa, qb, at, 2u, octets, last), exact_key_dot(qa, qb, at, 3u, octets, last));
                c1 = c1 + vec4<f32>(exact_key_dot(qa, qb, at, 4u, octets, last), exact_key_dot(qa, qb, at, 5u, octets, last), exact_key_dot(qa, qb, at, 6u, octets, last), exact_key_dot(qa, qb, at, 7u, octets, last));
                c2 = c2 + vec4<f32>(exact_key_dot(qa, qb, at, 8u, octets, last), exact_key_dot(qa, qb, at, 9u, octets, last), exact_key_dot(qa, qb, at, 10u, octets, last), exact_key_dot(qa, qb, at, 11u, octets, last));
                c3 = c3 + vec4<f32>(exact_key_dot(qa, qb, at, 12u, octets, last), exact_key_dot(qa, qb, at, 13u, octets, last), exact_key_dot(qa, qb, at, 14u, octets, last), exact_key_dot(qa, qb, at, 15u, octets, last));
            }
        }
        let at = vec3<u32>(lane_first - tile, score_row, end);
        store_scores(c0, at, 0u, score_info, tile, segment.x);
        store_scores(c1, at, 4u, score_info, tile, segment.x);
        store_scores(c2, at, 8u, score_info, tile, segment.x);
        store_scores(c3, at, 12u, score_info, tile, segment.x);
        workgroupBarrier();
        // The running softmax of rows 4h…4h+3 (invocation h) over this tile.
        let count = min(TILE_TOKENS, end - tile);
        if (local < 2u) {
            let before = row_max[local];
            var top = before;
            for (var j = 0u; j < count; j = j + 1u) {
                top = max(top, tile_weights[weight_index(j, local)]);
            }
            var sum = vec4<f32>(0.0);
            for (var j = 0u; j < count; j = j + 1u) {
                let p = weight(tile_weights[weight_index(j, local)], top);
                tile_weights[weight_index(j, local)] = p;
                sum = sum + p;
            }
            let factor = select(vec4<f32>(1.0), exp(before - top), before > vec4<f32>(LOWEST));
            rescale[local] = factor;
            row_max[local] = top;
            row_sum[local] = row_sum[local] * factor + sum;
        }
        workgroupBarrier();
        // Σ p·v over the tile for this invocation's tasks.
        if (local < tasks) {
            let base = (head_row + tile) * quads + local % quads;
            first_sums = exact_accumulate(first_sums, base, local / quads, count, quads);
        }
        if (local + LANES < tasks) {
            let base = (head_row + tile) * quads + (local + LANES) % quads;
            second_sums = exact_accumulate(second_sums, base, (local + LANES) / quads, count, quads);
        }
        workgroupBarrier();
    }
    if (which.x < 2u) {
        let slot_split = segment.w + which.y;
        if (local < tasks) {
            exact_store(local, quads, slot_split, first_sums);
        }
        if (local + LANES < tasks) {
            exact_store(local + LANES, quads, slot_split, second_sums);
        }
        if (local < BLOCK_ROWS && block_rows[local].w == 1u) {
            let slot = block_rows[local].x * params.total_splits + slot_split;
            store_stats(slot, row_max[local >> 2u][local & 3u], row_sum[local >> 2u][local & 3u]);
        }
    }
}
