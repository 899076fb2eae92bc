// common.wgsl — helpers shared by every vidkv kernel. The host prepends this file to each
// kernel's source, so a kernel file is never compiled alone.
//
// Contents: the uniform parameter block every kernel reads (binding 0 of group 0), the
// linear invocation index of a 2-D dispatch, exact f32 → f16 conversion (round to nearest
// even, identical to the CPU's `half` crate on every backend), f16 pair packing, 2-bit and
// ternary code rules, and the real-DFT twiddle lookup.

const WORKGROUP_SIZE: u32 = 64u;
// Invocations of the attention value kernels: one workgroup per (split, query row).
const VALUE_LANES: u32 = 32u;
const MAX_GROUP_SIZE: u32 = 128u;

// One parameter block for all kernels; each kernel documents the fields it reads.
struct Params {
    // Channels per input row (head_dim).
    width: u32,
    // Plane rows handled by the dispatch (channels, DFT coefficients or tokens).
    rows: u32,
    // Elements per plane row (tokens for per-channel planes, channels for per-token ones).
    len: u32,
    group_size: u32,
    // Groups per plane row in the whole plane.
    groups: u32,
    // First group of the plane that this dispatch covers.
    group_offset: u32,
    // Groups covered by this dispatch.
    group_count: u32,
    // First plane row that this dispatch covers (per-token planes are chunked by rows).
    row_offset: u32,
    // Number of invocations that do work; the rest of the last workgroup returns.
    invocations: u32,
    // Ternary threshold γ and scale rule (0: mean |x|, 1: least squares).
    gamma: f32,
    scale_rule: u32,
    // Length of the real DFT (normal channels).
    dft_len: u32,
    // Outlier channels (first entries of the channel order list).
    outliers: u32,
    // Work blocks (channel statistics) and their token span.
    blocks: u32,
    block_tokens: u32,
    // Offset (in blocks) where this dispatch writes its channel statistics.
    block_offset: u32,
    // Attention: KV heads, query rows per KV head (GQA group × query positions), query
    // positions per query head (M), query rows handled by this dispatch (a tile), first
    // absolute position of the segment, its length in tokens, splits before this segment,
    // tokens per split, total splits of the context, first stored row/element of the
    // segment, whether values carry an STP position list (the fused decode kernels: where
    // they write their logits for the STP refinement pass, 0 for nowhere: an f32 index of
    // attention_split_groups.wgsl's split outputs, a vec2 index of attention_split.wgsl's
    // stats binding), and the softmax scale 1/√d.
    kv_heads: u32,
    rows_per_head: u32,
    queries: u32,
    tile_rows: u32,
    segment_start: u32,
    segment_len: u32,
    split_offset: u32,
    split_size: u32,
    total_splits: u32,
    segment_first: u32,
    stp: u32,
    scale: f32,
    // Rotated schemes: bits per code, and whether each group has its own centre row (1) or
    // every token is centred on the per-head mean of the state (0); where one kernel reads
    // keys and values of codes across tokens, code bits per group of the keys and of the
    // values.
    code_bits: u32,
    centre_rows: u32,
    value_code_bits: u32,
    // The fused decode kernel: where the (m, l) pairs start (f32 index) in its split
    // outputs, after the partial sums.
    stats_offset: u32,
}

// Index of this invocation in a dispatch of (x, y, 1) workgroups of WORKGROUP_SIZE.
fn linear_index(workgroup: vec3<u32>, workgroups: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP_SIZE + local;
}

// f32 → f16 bits, rounding to nearest even. Inputs are finite and |x| ≤ 65504 (the host
// checks); larger magnitudes saturate to infinity like the CPU conversion.
fn f16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    if (magnitude < 0x38800000u) {
        // Below 2^-14: an f16 subnormal in steps of 2^-24 (scaling by 2^24 is exact).
        return sign | u32(round(bitcast<f32>(magnitude) * 16777216.0));
    }
    let rebased = magnitude - 0x38000000u;
    let rounded = rebased + 0xfffu + ((rebased >> 13u) & 1u);
    return sign | (rounded >> 13u);
}

// Two f32 values as f16 in one word, the first in the low half (like pack2x16float).
fn pack_f16_pair(lo: f32, hi: f32) -> u32 {
    return f16_bits(lo) | (f16_bits(hi) << 16u);
}

// The 2-bit code of v for a group minimum and scale: round_half_even(clamp((v − min)/s, 0, 3)).
fn two_bit_code(v: f32, group_min: f32, scale: f32) -> u32 {
    if (scale > 0.0) {
        return u32(round(clamp((v - group_min) / scale, 0.0, 3.0)));
    }
    return 0u;
}

// The ternary digit (t + 1 ∈ {0, 1, 2}) of v for threshold α; comparisons are strict.
fn ternary_digit(v: f32, threshold: f32) -> u32 {
    if (v > threshold) {
        return 2u;
    }
    if (v < -threshold) {
        return 0u;
    }
    return 1u;
}

// The twiddle table holds (cos 2πk/n, sin 2πk/n) for k = 0…n−1, computed by the host in
// f64; frequency j at sample m uses entry k = j·m mod n. Loops walk k incrementally:
// from entry k, the next sample (or frequency) of step `step` < n is this entry.
fn next_twiddle_index(k: u32, step: u32, n: u32) -> u32 {
    let next = k + step;
    return select(next, next - n, next >= n);
}

// Attention query rows: rows of KV head h are its query positions × its GQA group's query
// heads, position-major, so the g rows that share (KV head, position) are adjacent; a
// dispatch handles the tile of rows starting at row_offset (tiles hold whole such runs).
struct QueryRow {
    // Row index over all KV heads.
    row: u32,
    kv_head: u32,
    // Query head (over all query heads) and query position index.
    q_head: u32,
    query: u32,
}

fn query_row(row_in_tile: u32) -> QueryRow {
    let row = params.row_offset + row_in_tile;
    let kv_head = row / params.rows_per_head;
    let within = row % params.rows_per_head;
    let group = params.rows_per_head / params.queries;
    return QueryRow(row, kv_head, kv_head * group + within % group, within / group);
}

// A quad: up to four query rows that share a KV head (kernels that decode each code once
// for the quad's rows). Quad j of a KV head holds its rows 4j…4j+3; the dispatch's y
// counts the quads of the KV heads the tile touches (`row_quads` on the host). The rows
// are tile rows (clamped into the tile) with `live` 1 for those that are real.
struct Quad {
    kv_head: u32,
    rows: vec4<u32>,
    live: vec4<f32>,
}

fn quad_rows(quad: u32) -> Quad {
    let per_head = (params.rows_per_head + 3u) / 4u;
    let kv_head = params.row_offset / params.rows_per_head + quad / per_head;
    let first = kv_head * params.rows_per_head + 4u * (quad % per_head);
    var rows = vec4<u32>(0u);
    var live = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        let row = first + j;
        let inside = 4u * (quad % per_head) + j < params.rows_per_head
            && row >= params.row_offset && row < params.row_offset + params.tile_rows;
        rows[j] = select(0u, row - params.row_offset, inside);
        live[j] = select(0.0, 1.0, inside);
    }
    return Quad(kv_head, rows, live);
}

// Floats between the score rows of consecutive query rows: the segment length rounded up
// to a multiple of 4, so that weights can be read as aligned vec4s.
fn score_stride() -> u32 {
    return (params.segment_len + 3u) & ~3u;
}

// Codes 4i…4i+3 of a 2-bit code word (16 codes, the first in the low bits) as floats.
fn two_bit_codes4(word: u32, i: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word >> (8u * i)) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u));
}

fn unpack_f16_octet(words: vec4<u32>) -> array<f32, 8> {
    let a = unpack2x16float(words.x);
    let b = unpack2x16float(words.y);
    let c = unpack2x16float(words.z);
    let d = unpack2x16float(words.w);
    return array<f32, 8>(a.x, a.y, b.x, b.y, c.x, c.y, d.x, d.y);
}

// The power-of-two block [x, x + y) of head_dim d that holds element e (blocks by the
// binary digits of d, largest first, as in src/reference/rotation.rs).
fn block_of(e: u32, d: u32) -> vec2<u32> {
    var start = 0u;
    for (var bit = 8i; bit >= 0i; bit = bit - 1i) {
        let n = 1u << u32(bit);
        if ((d & n) != 0u) {
            if (e < start + n) {
                return vec2<u32>(start, n);
            }
            start = start + n;
        }
    }
    return vec2<u32>(start, 1u);
}

// Query rows per block of the fused split kernels (attention_split, attention_split_groups):
// a workgroup serves the up-to-8 rows of one KV head in its block.
const BLOCK_ROWS: u32 = 8u;
// block_tile_row of a row the block does not have in this tile.
const NO_TILE_ROW: u32 = 0xffffffffu;

// The KV head of block `block` (workgroup.y of a fused split kernel).
fn block_kv_head(block: u32) -> u32 {
    let per_head = (params.rows_per_head + BLOCK_ROWS - 1u) / BLOCK_ROWS;
    return params.row_offset / params.rows_per_head + block / per_head;
}

// The tile row of row `lane` (0…7) of block `block`, or NO_TILE_ROW where the KV head has
// fewer rows or the row lies outside this tile.
fn block_tile_row(block: u32, lane: u32) -> u32 {
    let per_head = (params.rows_per_head + BLOCK_ROWS - 1u) / BLOCK_ROWS;
    let in_head = BLOCK_ROWS * (block % per_head) + lane;
    let row = block_kv_head(block) * params.rows_per_head + in_head;
    let inside = in_head < params.rows_per_head
        && row >= params.row_offset && row < params.row_offset + params.tile_rows;
    return select(NO_TILE_ROW, row - params.row_offset, inside);
}
