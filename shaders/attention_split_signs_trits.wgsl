// attention_split_signs_trits.wgsl — the row decoder of attention_split.wgsl for the VidKV
// paper's format (`vidkv-tuned`, `vidkv-paper`): keys as 2-bit outlier channels and 1-bit
// sign rows (of the normal channels' real DFT, or of the channels themselves), values as
// ternary trits per channel, five channels a byte. A lane's 32 tokens are one slice of a
// key group (G a multiple of 32): each outlier row's scale is folded into the query and its
// minimum into one bias, and a sign row adds ±q·scale by flipping the float's sign bit, as
// attention_scores_packed.wgsl does. A value task's four channels come from one or two trit
// bytes per token, each channel's digit decoded for four tokens at once and multiplied by
// its group's scale. Segments with STP-protected tokens keep the separate passes.
//
// Binding 1 holds the planar query of attention_queries.wgsl (f32 [tile rows][d], scaled,
// in plane order: outliers, then Mᵀq over the normals), not the call's natural query.
// Bindings: 5 key_codes    (storage, read): u32 [kv_heads][k][groups][⌈2G/32⌉]
//           6 key_scale_min (storage, read): u32 [kv_heads][k][groups], f16 scale + min
//           7 sign_codes   (storage, read): u32 [kv_heads][n][groups][⌈G/32⌉]
//           8 sign_scales  (storage, read): u32 [kv_heads][⌈n/2⌉][groups], f16 pairs
//           9 trit_codes   (storage, read): u32 [kv_heads][⌈d/5⌉][group_count][⌈G/4⌉]: a
//             word is four tokens' bytes, a byte five channels' trits (base-3 digits)
//           10 trit_scales (storage, read): u32 [kv_heads][⌈d/2⌉][group_count], f16 pairs
// Params: outliers = k, dft_len = n (k + n = d), group_size = G, groups = key groups per
// plane row, group_count = ternary groups per channel row; segment_start, segment_len,
// split_offset. Dispatch: grid x = the segment's splits (no riders).

@group(0) @binding(5) var<storage, read> key_codes: array<u32>;
@group(0) @binding(6) var<storage, read> key_scale_min: array<u32>;
@group(0) @binding(7) var<storage, read> sign_codes: array<u32>;
@group(0) @binding(8) var<storage, read> sign_scales: array<u32>;
@group(0) @binding(9) var<storage, read> trit_codes: array<u32>;
@group(0) @binding(10) var<storage, read> trit_scales: array<u32>;

// 3^-j for trit digit j (0 past the last digit, whose quotient is the digit itself).
const INVERSE_POWERS: array<f32, 6> = array<f32, 6>(1.0, 1.0 / 3.0, 1.0 / 9.0, 1.0 / 27.0, 1.0 / 81.0, 0.0);

fn split_segment(x: u32) -> SplitSegment {
    return SplitSegment(params.segment_start, params.segment_len, 0u, x, params.split_offset + x, false);
}

// ±qs per token: qs's sign bit flipped where the sign bit of token 4i…4i+3 in `flip` is set.
fn signed4(qs: u32, flip: u32, i: u32) -> vec4<f32> {
    let bits = (vec4<u32>(flip >> (4u * i)) << vec4<u32>(31u, 30u, 29u, 28u)) & vec4<u32>(0x80000000u);
    return bitcast<vec4<f32>>(vec4<u32>(qs) ^ bits);
}

// Where a lane's tokens lie: KV head, key group, 32-token slice of the group.
struct LaneSlice {
    kv_head: u32,
    group: u32,
    slice: u32,
}

// Adds outlier channel `c` (query element `q`) to the lane's scores.
fn add_outlier(acc: ptr<function, LaneScores>, at: LaneSlice, c: u32, q: f32) {
    let words = (2u * params.group_size + 31u) / 32u;
    let record = (at.kv_head * params.outliers + c) * params.groups + at.group;
    let p = unpack2x16float(key_scale_min[record]);
    let low = key_codes[record * words + 2u * at.slice];
    let high = key_codes[record * words + 2u * at.slice + 1u];
    add_two_bit_slice(acc, q * p.x, q * p.y, low, high);
}

// Adds sign row `j` (query element `q`) to the lane's scores.
fn add_sign_row(acc: ptr<function, LaneScores>, at: LaneSlice, j: u32, q: f32) {
    let n = params.dft_len;
    let pair = unpack2x16float(sign_scales[(at.kv_head * ((n + 1u) / 2u) + j / 2u) * params.groups + at.group]);
    let qs = bitcast<u32>(q * select(pair.x, pair.y, (j & 1u) == 1u));
    let flip = ~sign_codes[((at.kv_head * n + j) * params.groups + at.group) * (params.group_size / 32u) + at.slice];
    (*acc).c[0] = (*acc).c[0] + signed4(qs, flip, 0u);
    (*acc).c[1] = (*acc).c[1] + signed4(qs, flip, 1u);
    (*acc).c[2] = (*acc).c[2] + signed4(qs, flip, 2u);
    (*acc).c[3] = (*acc).c[3] + signed4(qs, flip, 3u);
    (*acc).c[4] = (*acc).c[4] + signed4(qs, flip, 4u);
    (*acc).c[5] = (*acc).c[5] + signed4(qs, flip, 5u);
    (*acc).c[6] = (*acc).c[6] + signed4(qs, flip, 6u);
    (*acc).c[7] = (*acc).c[7] + signed4(qs, flip, 7u);
}

// Adds planar channel `c` (query element `q`) to the lane's scores: an outlier row below k,
// else a sign row.
fn add_channel(acc: ptr<function, LaneScores>, at: LaneSlice, c: u32, q: f32) {
    if (c < params.outliers) {
        add_outlier(acc, at, c, q);
    } else {
        add_sign_row(acc, at, c - params.outliers, q);
    }
}

// The scores of tile row `tile_row` against the 32 tokens from `lane_first` of KV head
// `kv_head`'s segment (whole groups: no token is clamped). The query is read a vec4 at a
// time: the quads wholly of outlier rows, the quad that holds the boundary (channel by
// channel), then the quads wholly of sign rows.
fn lane_scores(seg: SplitSegment, tile_row: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    let at = LaneSlice(kv_head, lane_first / params.group_size, (lane_first % params.group_size) / 32u);
    let quads = params.width / 4u;
    let q_base = tile_row * quads;
    let boundary = params.outliers / 4u;
    var acc = LaneScores();
    for (var o = 0u; o < boundary; o = o + 1u) {
        let q4 = queries[q_base + o];
        add_outlier(&acc, at, 4u * o, q4.x);
        add_outlier(&acc, at, 4u * o + 1u, q4.y);
        add_outlier(&acc, at, 4u * o + 2u, q4.z);
        add_outlier(&acc, at, 4u * o + 3u, q4.w);
    }
    if (boundary < quads) {
        let q4 = queries[q_base + boundary];
        add_channel(&acc, at, 4u * boundary, q4.x);
        add_channel(&acc, at, 4u * boundary + 1u, q4.y);
        add_channel(&acc, at, 4u * boundary + 2u, q4.z);
        add_channel(&acc, at, 4u * boundary + 3u, q4.w);
    }
    let k = params.outliers;
    for (var o = boundary + 1u; o < quads; o = o + 1u) {
        let q4 = queries[q_base + o];
        add_sign_row(&acc, at, 4u * o - k, q4.x);
        add_sign_row(&acc, at, 4u * o + 1u - k, q4.y);
        add_sign_row(&acc, at, 4u * o + 2u - k, q4.z);
        add_sign_row(&acc, at, 4u * o + 3u - k, q4.w);
    }
    return lane_totals(acc);
}

// The quad's four values of token `i` of a step: byte i of each channel's word `words`,
// its digit 3^-j (`low`; `high` = 3^-(j+1)) as ⌊b/3^j⌋ − 3⌊b/3^(j+1)⌋ − 1 from exact float
// arithmetic (the offset 0.01 is below every fractional gap of a byte < 243), times the
// channels' scales.
fn trit_quad(words: vec4<u32>, i: u32, low: vec4<f32>, high: vec4<f32>, scales: vec4<f32>) -> vec4<f32> {
    let b = vec4<f32>((words >> vec4<u32>(8u * i)) & vec4<u32>(0xffu));
    return (floor(b * low + 0.01) - 3.0 * floor(b * high + 0.01) - 1.0) * scales;
}

// Adds Σ p·v over `count` tokens of the tile for one channel quad to the 8 rows' sums, as
// exact_value_sums does (`at` the same; `count` a multiple of 4: whole groups).
fn value_sums(
    sums: ptr<function, RowSums>,
    seg: SplitSegment,
    at: vec4<u32>,
    count: u32,
) {
    let g_size = params.group_size;
    let blocks = (params.width + 4u) / 5u;
    let record_words = g_size / 4u;
    let channel = 4u * at.w;
    let block = channel / 5u;
    // Channel 4·quad + c is digit (r + c) mod 5 of block `block`, or of the next block.
    let digits = vec4<u32>(channel % 5u) + vec4<u32>(0u, 1u, 2u, 3u);
    let next = digits >= vec4<u32>(5u);
    let digit = select(digits, digits - vec4<u32>(5u), next);
    var powers = INVERSE_POWERS;
    let low = vec4<f32>(powers[digit.x], powers[digit.y], powers[digit.z], powers[digit.w]);
    let high = vec4<f32>(powers[digit.x + 1u], powers[digit.y + 1u], powers[digit.z + 1u], powers[digit.w + 1u]);
    let second = min(block + 1u, blocks - 1u);
    let half_rows = (params.width + 1u) / 2u;
    let first = at.y + at.z;
    var t = 0u;
    while (t < count) {
        let token = first + t;
        let group = token / g_size;
        let run = min(count - t, g_size - token % g_size);
        let pairs = (at.x * half_rows + 2u * at.w) * params.group_count + group;
        let scales = vec4<f32>(unpack2x16float(trit_scales[pairs]), unpack2x16float(trit_scales[pairs + params.group_count]));
        let word0 = ((at.x * blocks + block) * params.group_count + group) * record_words + (token % g_size) / 4u;
        let word1 = ((at.x * blocks + second) * params.group_count + group) * record_words + (token % g_size) / 4u;
        for (var j = 0u; j < run; j = j + 4u) {
            // Each channel's word: the block's, or the next block's.
            let words = select(vec4<u32>(trit_codes[word0 + j / 4u]), vec4<u32>(trit_codes[word1 + j / 4u]), next);
            let v = mat4x4<f32>(
                trit_quad(words, 0u, low, high, scales),
                trit_quad(words, 1u, low, high, scales),
                trit_quad(words, 2u, low, high, scales),
                trit_quad(words, 3u, low, high, scales),
            );
            add_weighted(sums, v, (at.z + t + j) / 4u);
        }
        t = t + run;
    }
}


// The sums are in the natural domain already.
fn finish_sums(kv_head: u32, local: u32, summed: bool, quad: u32) {}
