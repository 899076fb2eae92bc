// attention_split_rotated_tokens.wgsl — the row decoder of attention_split.wgsl for rotated
// per-token codes (src/packed/rotated.rs: the `rotated`, `rotated-flat` and `rotated-k3v1`
// presets). With x̂ₜ = flagₜ·centre + (ŝₜ·L[codesₜ])·Rot (see attention_rotated.wgsl):
// - a key logit is ŝₜ·Σᵢ q′ᵢ·L[cᵢ] plus q·m where the token is flagged, against the rotated
//   query q′ = (q/√d)·Rot and its centre term that attention_rotated.wgsl's rotate_queries
//   writes: a lane decodes its 32 tokens 16 channels at a time, against four query vec4s;
// - a value task sums its channel quad in the rotated domain, ŝₜ·L[codesₜ] for four tokens
//   at a time through add_weighted, and the flagged weight of each group times the group's
//   centre (the values' mean m, or μ_g = m + D_g·z_g with group means) in the natural domain,
//   in a private accumulator rescaled with the rows' sums; finish_sums rotates the split's
//   summed rows back in workgroup memory (the rotation is its own inverse) and adds the
//   parts' centre sums.
// Codes of 1 to 3 bits (a select tree over eight levels); segments with STP refinements
// keep the separate passes.
//
// Binding 1 holds the rotated query rows, f32 [tile rows][d], then from the 256-byte
// boundary after them each tile row's centre term (q/√d)·m (centre_term).
// Bindings: 5 key_table   (uniform): vec4<f32> [16], gpu::rotated::kernel_table of the
//             keys' width (levels at 0, sixteenth powers of two at 32, block scales 1/√n at
//             48 + log2 n)
//           6 value_table (uniform): the same for the values' width
//           7 states      (uniform): u32 [2][kv_heads][d/2 + 1] as vec4<u32> [4096], the
//             keys' then the values' per-head states (f16 means m, then the f16 scale base)
//           8 key_codes, 10 value_codes (storage, read): u32 [kv_heads][rows][⌈bits·d/32⌉]
//           9 key_scales, 11 value_scales (storage, read): u32 [kv_heads][⌈rows/4⌉] scale
//             bytes (flag ≪ 7 | scale code), token t at bits 8·(t mod 4)
//           12 mean_codes (storage, read): u32 [kv_heads][groups][⌈d/10⌉] codes z + 3
//           13 mean_steps (storage, read): u32 [kv_heads][⌈groups/2⌉] f16 steps D
// Storage buffers: 10, what Chrome allows per shader stage.
// Params: width = d (a multiple of 16), code_bits / value_code_bits = the keys' / values'
// bits per element (1…3), rows = token rows per KV head of both planes, groups = groups per
// KV head of the group means, group_size = G (a multiple of 32), centre_rows (1: values
// centred on group means), kv_heads; segment_start, segment_len, split_offset.
// Dispatch: grid x = the segment's splits (no riders).

@group(0) @binding(5) var<uniform> key_table: array<vec4<f32>, 16>;
@group(0) @binding(6) var<uniform> value_table: array<vec4<f32>, 16>;
@group(0) @binding(7) var<uniform> states: array<vec4<u32>, 4096>;
@group(0) @binding(8) var<storage, read> key_codes: array<u32>;
@group(0) @binding(9) var<storage, read> key_scales: array<u32>;
@group(0) @binding(10) var<storage, read> value_codes: array<u32>;
@group(0) @binding(11) var<storage, read> value_scales: array<u32>;
@group(0) @binding(12) var<storage, read> mean_codes: array<u32>;
@group(0) @binding(13) var<storage, read> mean_steps: array<u32>;

// Table entries (vec4 indices): the sixteenth powers of two, the block scales.
const POWERS: u32 = 8u;
const BLOCK_SCALES: u32 = 12u;
const FLAG_BIT: u32 = 0x80u;
const MEAN_CODES_PER_WORD: u32 = 10u;

// A value task's centre sums, in the natural domain, rescaled as its rows' sums are.
var<private> centre_sums: RowSums;

fn split_segment(x: u32) -> SplitSegment {
    return SplitSegment(params.segment_start, params.segment_len, 0u, x, params.split_offset + x, false);
}

// Word i of KV head `kv_head`'s state, the keys' or the values'.
fn state_word(values: bool, kv_head: u32, i: u32) -> u32 {
    let words = params.width / 2u + 1u;
    let at = (select(0u, params.kv_heads, values) + kv_head) * words + i;
    return states[at / 4u][at % 4u];
}

fn state_base(values: bool, kv_head: u32) -> f32 {
    return unpack2x16float(state_word(values, kv_head, params.width / 2u)).x;
}

// The scales ŝ = b·2^((e − 64)/8) of the four tokens of a scale word (scale code e; 0: a
// zero row), as the CPU reference decodes them.
fn token_scales4(word: u32, base: f32) -> vec4<f32> {
    let e = (vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0x7fu);
    let m = 2i * (vec4<i32>(e) - vec4<i32>(64i));
    let sixteenths = vec4<u32>(m & vec4<i32>(15i));
    let powers = vec4<f32>(
        key_table[POWERS + sixteenths.x / 4u][sixteenths.x % 4u],
        key_table[POWERS + sixteenths.y / 4u][sixteenths.y % 4u],
        key_table[POWERS + sixteenths.z / 4u][sixteenths.z % 4u],
        key_table[POWERS + sixteenths.w / 4u][sixteenths.w % 4u],
    );
    let s = (base * powers) * ldexp(vec4<f32>(1.0), m >> vec4<u32>(4u));
    return select(s, vec4<f32>(0.0), e == vec4<u32>(0u));
}

// 1.0 for each of the four tokens of a scale word that is flagged (centred), else 0.0.
fn token_flags4(word: u32) -> vec4<f32> {
    let flag = (vec4<u32>(word) >> vec4<u32>(7u, 15u, 23u, 31u)) & vec4<u32>(1u);
    return vec4<f32>(flag);
}

// Codes 4i…4i+3 of `bits` bits each from bit 0 of `x`.
fn codes4(x: u32, i: u32, bits: u32) -> vec4<u32> {
    let shifts = vec4<u32>(bits) * (vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u));
    return (vec4<u32>(x) >> shifts) & vec4<u32>((1u << bits) - 1u);
}

// The levels of four codes of at most 3 bits: a select tree over levels 0…3 (`low`) and
// 4…7 (`high`).
fn levels4(c: vec4<u32>, low: vec4<f32>, high: vec4<f32>) -> vec4<f32> {
    let odd = (c & vec4<u32>(1u)) != vec4<u32>(0u);
    let upper = (c & vec4<u32>(2u)) != vec4<u32>(0u);
    let a = select(select(vec4<f32>(low.x), vec4<f32>(low.y), odd), select(vec4<f32>(low.z), vec4<f32>(low.w), odd), upper);
    let b = select(select(vec4<f32>(high.x), vec4<f32>(high.y), odd), select(vec4<f32>(high.z), vec4<f32>(high.w), odd), upper);
    return select(a, b, (c & vec4<u32>(4u)) != vec4<u32>(0u));
}

// Words of one token's record of `bits`-bit codes.
fn record_words(bits: u32) -> u32 {
    return (bits * params.width + 31u) / 32u;
}

// Channels 16k…16k+15 of the key record at word `record`: two words of eight codes from
// bit 0 (a chunk starts at bit 16·bits·k, so at bit 0 or 16 of a word; 3-bit chunks span two
// words).
fn key_chunk(record: u32, k: u32, bits: u32) -> vec2<u32> {
    let at = 16u * bits * k;
    let word = record + at / 32u;
    let lo = key_codes[word];
    var hi = 0u;
    if (bits == 3u) {
        hi = key_codes[word + 1u];
    }
    let halved = at % 32u == 16u;
    let low = select(lo, (lo >> 16u) | (hi << 16u), halved);
    let high = select(hi, hi >> 16u, halved);
    let half = 8u * bits;
    let mask = (1u << half) - 1u;
    return vec2<u32>(low & mask, ((low >> half) | (high << (32u - half))) & mask);
}

// Σᵢ q′ᵢ·L[cᵢ] over channels 16k…16k+15 (the query's four vec4s `q`) for the four tokens
// whose records start at words `record`, `record` + `words`, ….
fn chunk_dots4(record: u32, words: u32, k: u32, q: mat4x4<f32>, low: vec4<f32>, high: vec4<f32>) -> vec4<f32> {
    let bits = params.code_bits;
    var dots = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = key_chunk(record + j * words, k, bits);
        dots[j] = dot(q[0], levels4(codes4(c.x, 0u, bits), low, high))
            + dot(q[1], levels4(codes4(c.x, 1u, bits), low, high))
            + dot(q[2], levels4(codes4(c.y, 0u, bits), low, high))
            + dot(q[3], levels4(codes4(c.y, 1u, bits), low, high));
    }
    return dots;
}

// Four tokens' logits from their dots: times the scales, plus the centre term where flagged.
fn logits4(dots: vec4<f32>, kv_head: u32, t: u32, base: f32, centre: f32) -> vec4<f32> {
    let word = key_scales[kv_head * ((params.rows + 3u) / 4u) + t / 4u];
    return dots * token_scales4(word, base) + token_flags4(word) * centre;
}

// Tile row `tile_row`'s centre term (q/√d)·m, after the rotated rows in binding 1.
fn centre_term(tile_row: u32) -> f32 {
    let first = (params.tile_rows * params.width + 63u) / 64u * 16u;
    return queries[first + tile_row / 4u][tile_row % 4u];
}

// The logits of tile row `tile_row` against the 32 tokens from `lane_first` of KV head
// `kv_head`'s segment (whole groups of a multiple of 32: no token is clamped).
fn lane_scores(seg: SplitSegment, tile_row: u32, kv_head: u32, lane_first: u32, last: u32) -> array<vec4<f32>, 8> {
    let words = record_words(params.code_bits);
    let first = (kv_head * params.rows + lane_first) * words;
    let step = 4u * words;
    let low = key_table[0];
    let high = key_table[1];
    let q_base = tile_row * (params.width / 4u);
    var acc = array<vec4<f32>, 8>();
    for (var k = 0u; k < params.width / 16u; k = k + 1u) {
        let q = mat4x4<f32>(queries[q_base + 4u * k], queries[q_base + 4u * k + 1u], queries[q_base + 4u * k + 2u], queries[q_base + 4u * k + 3u]);
        acc[0] = acc[0] + chunk_dots4(first, words, k, q, low, high);
        acc[1] = acc[1] + chunk_dots4(first + step, words, k, q, low, high);
        acc[2] = acc[2] + chunk_dots4(first + 2u * step, words, k, q, low, high);
        acc[3] = acc[3] + chunk_dots4(first + 3u * step, words, k, q, low, high);
        acc[4] = acc[4] + chunk_dots4(first + 4u * step, words, k, q, low, high);
        acc[5] = acc[5] + chunk_dots4(first + 5u * step, words, k, q, low, high);
        acc[6] = acc[6] + chunk_dots4(first + 6u * step, words, k, q, low, high);
        acc[7] = acc[7] + chunk_dots4(first + 7u * step, words, k, q, low, high);
    }
    let base = state_base(false, kv_head);
    let centre = centre_term(tile_row);
    return array<vec4<f32>, 8>(
        logits4(acc[0], kv_head, lane_first, base, centre),
        logits4(acc[1], kv_head, lane_first + 4u, base, centre),
        logits4(acc[2], kv_head, lane_first + 8u, base, centre),
        logits4(acc[3], kv_head, lane_first + 12u, base, centre),
        logits4(acc[4], kv_head, lane_first + 16u, base, centre),
        logits4(acc[5], kv_head, lane_first + 20u, base, centre),
        logits4(acc[6], kv_head, lane_first + 24u, base, centre),
        logits4(acc[7], kv_head, lane_first + 28u, base, centre),
    );
}

// The codes of channel quad `quad` of the value record at word `record`.
fn value_quad_codes(record: u32, quad: u32, bits: u32) -> vec4<u32> {
    let at = 4u * bits * quad;
    let word = record + at / 32u;
    let shift = at % 32u;
    var raw = value_codes[word] >> shift;
    if (shift + 4u * bits > 32u) {
        raw = raw | (value_codes[word + 1u] << (32u - shift));
    }
    return codes4(raw, 0u, bits);
}

// Channel quad `quad` of group g's centre: μ_g = m + D_g·z_g with group means, else m.
fn centre_quad(kv_head: u32, g: u32, quad: u32) -> vec4<f32> {
    let c = 4u * quad;
    let m = vec4<f32>(unpack2x16float(state_word(true, kv_head, c / 2u)), unpack2x16float(state_word(true, kv_head, c / 2u + 1u)));
    if (params.centre_rows == 0u) {
        return m;
    }
    let per_group = (params.width + MEAN_CODES_PER_WORD - 1u) / MEAN_CODES_PER_WORD;
    let record = (kv_head * params.groups + g) * per_group;
    let channels = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
    let words = vec4<u32>(
        mean_codes[record + channels.x / MEAN_CODES_PER_WORD],
        mean_codes[record + channels.y / MEAN_CODES_PER_WORD],
        mean_codes[record + channels.z / MEAN_CODES_PER_WORD],
        mean_codes[record + channels.w / MEAN_CODES_PER_WORD],
    );
    let z = vec4<i32>((words >> (3u * (channels % vec4<u32>(MEAN_CODES_PER_WORD)))) & vec4<u32>(7u)) - vec4<i32>(3i);
    let steps = unpack2x16float(mean_steps[kv_head * ((params.groups + 1u) / 2u) + g / 2u]);
    return m + select(steps.x, steps.y, (g & 1u) == 1u) * vec4<f32>(z);
}

// The 8 rows' weights (tile_weights at vec4 `w`) of the flagged ones among four tokens.
fn flagged_weights(flags: vec4<f32>, w: u32) -> array<f32, 8> {
    let stride = TILE_TOKENS / 4u;
    return array<f32, 8>(
        dot(tile_weights[w], flags),
        dot(tile_weights[stride + w], flags),
        dot(tile_weights[2u * stride + w], flags),
        dot(tile_weights[3u * stride + w], flags),
        dot(tile_weights[4u * stride + w], flags),
        dot(tile_weights[5u * stride + w], flags),
        dot(tile_weights[6u * stride + w], flags),
        dot(tile_weights[7u * stride + w], flags),
    );
}

// Adds Σ p·v̂ over `count` tokens of the tile for one channel quad (in the rotated domain)
// to the 8 rows' sums, and each group's flagged weight times its centre to centre_sums
// (`at` = (KV head, tile, offset in the tile, quad); `count` a multiple of 4).
fn value_sums(
    sums: ptr<function, RowSums>,
    seg: SplitSegment,
    at: vec4<u32>,
    count: u32,
) {
    centre_sums = rescaled(centre_sums);
    let kv_head = at.x;
    let bits = params.value_code_bits;
    let words = record_words(bits);
    let low = value_table[0];
    let high = value_table[1];
    let base = state_base(true, kv_head);
    let scale_row = kv_head * ((params.rows + 3u) / 4u);
    let first = at.y + at.z;
    var t = 0u;
    while (t < count) {
        let token = first + t;
        let group = token / params.group_size;
        let run = min(count - t, params.group_size - token % params.group_size);
        var flagged = array<f32, 8>();
        for (var j = 0u; j < run; j = j + 4u) {
            let t4 = token + j;
            let scale_word = value_scales[scale_row + t4 / 4u];
            let s = token_scales4(scale_word, base);
            let record = (kv_head * params.rows + t4) * words;
            let v = mat4x4<f32>(
                levels4(value_quad_codes(record, at.w, bits), low, high) * s.x,
                levels4(value_quad_codes(record + words, at.w, bits), low, high) * s.y,
                levels4(value_quad_codes(record + 2u * words, at.w, bits), low, high) * s.z,
                levels4(value_quad_codes(record + 3u * words, at.w, bits), low, high) * s.w,
            );
            let w = (at.z + t + j) / 4u;
            add_weighted(sums, v, w);
            let flags = token_flags4(scale_word);
            if (any(flags != vec4<f32>(0.0))) {
                let f = flagged_weights(flags, w);
                flagged = array<f32, 8>(flagged[0] + f[0], flagged[1] + f[1], flagged[2] + f[2], flagged[3] + f[3],
                                        flagged[4] + f[4], flagged[5] + f[5], flagged[6] + f[6], flagged[7] + f[7]);
            }
        }
        let centre = centre_quad(kv_head, group, at.w);
        centre_sums.rows[0] = centre_sums.rows[0] + flagged[0] * centre;
        centre_sums.rows[1] = centre_sums.rows[1] + flagged[1] * centre;
        centre_sums.rows[2] = centre_sums.rows[2] + flagged[2] * centre;
        centre_sums.rows[3] = centre_sums.rows[3] + flagged[3] * centre;
        centre_sums.rows[4] = centre_sums.rows[4] + flagged[4] * centre;
        centre_sums.rows[5] = centre_sums.rows[5] + flagged[5] * centre;
        centre_sums.rows[6] = centre_sums.rows[6] + flagged[6] * centre;
        centre_sums.rows[7] = centre_sums.rows[7] + flagged[7] * centre;
        t = t + run;
    }
}

// The split's summed rows ([quad][row] in tile_weights) rotated back: the butterfly stages
// of every block (spans 1 and 2 inside a quad, then between quads), each block's 1/√n, then
// each part's centre sums added, one part after another.
fn finish_sums(kv_head: u32, local: u32, summed: bool, quad: u32) {
    let d = params.width;
    let entries = d / 4u * BLOCK_ROWS;
    for (var e = local; e < entries; e = e + LANES) {
        let v = tile_weights[e];
        let a = vec4<f32>(v.x + v.y, v.x - v.y, v.z + v.w, v.z - v.w);
        tile_weights[e] = vec4<f32>(a.x + a.z, a.y + a.w, a.x - a.z, a.y - a.w);
    }
    for (var span = 1u; 4u * span < d; span = span * 2u) {
        workgroupBarrier();
        for (var e = local; e < entries; e = e + LANES) {
            let q = e / BLOCK_ROWS;
            let block = block_of(4u * q, d);
            if (4u * span < block.y && ((q - block.x / 4u) & span) == 0u) {
                let a = tile_weights[e];
                let b = tile_weights[e + span * BLOCK_ROWS];
                tile_weights[e] = a + b;
                tile_weights[e + span * BLOCK_ROWS] = a - b;
            }
        }
    }
    workgroupBarrier();
    for (var e = local; e < entries; e = e + LANES) {
        let n = firstTrailingBit(block_of(4u * (e / BLOCK_ROWS), d).y);
        tile_weights[e] = tile_weights[e] * key_table[BLOCK_SCALES + n / 4u][n % 4u];
    }
    let parts = token_parts(d / 4u);
    for (var p = 0u; p < parts; p = p + 1u) {
        workgroupBarrier();
        if (summed && local / (d / 4u) == p) {
            let at = quad * BLOCK_ROWS;
            tile_weights[at] = tile_weights[at] + centre_sums.rows[0];
            tile_weights[at + 1u] = tile_weights[at + 1u] + centre_sums.rows[1];
            tile_weights[at + 2u] = tile_weights[at + 2u] + centre_sums.rows[2];
            tile_weights[at + 3u] = tile_weights[at + 3u] + centre_sums.rows[3];
            tile_weights[at + 4u] = tile_weights[at + 4u] + centre_sums.rows[4];
            tile_weights[at + 5u] = tile_weights[at + 5u] + centre_sums.rows[5];
            tile_weights[at + 6u] = tile_weights[at + 6u] + centre_sums.rows[6];
            tile_weights[at + 7u] = tile_weights[at + 7u] + centre_sums.rows[7];
        }
    }
}
