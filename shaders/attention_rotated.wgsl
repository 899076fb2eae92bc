// attention_rotated.wgsl — attention straight from rotated codes, never a decoded row: the
// bindings, the helpers and the query rotation shared by its two variants, appended to it:
// attention_rotated_tokens.wgsl (per-token codes, src/packed/rotated.rs) and
// attention_rotated_groups.wgsl (codes across tokens, src/packed/rotated_groups.rs).
// - The query is rotated once per row (rotate_queries): q′ = (q/√d)·Rot, and its centre
//   term q·m once; a logit reads the codes against q′ with one level look-up and multiply-add
//   per element.
// - Values are summed in the rotated domain and rotated back once per (split, row) (the
//   rotation is its own inverse); the weight of each centre (the head's mean m, or a group
//   mean μ_g = m + D_g·z_g) times that centre is added in the natural domain.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 16, at most 256),
//             code_bits, rows = token rows per KV head of the planes, groups = groups per
//             KV head, group_size, centre_rows (1: values centred on group means), scale,
//             kv_heads, rows_per_head, queries, row_offset, segment_len, segment_first =
//             the plane row of the segment's first token, split_size, split_offset,
//             total_splits)
//           1 q            (storage, read): f32 [q_heads][queries][d]
//           2 table        (storage, read): f32 [64], gpu::rotated::kernel_table (levels at
//                          0, sixteenth powers of two at 32, block scales 1/√n at 48 + log2 n),
//                          or for codes across tokens gpu::rotated::group_kernel_table (the
//                          same, then the levels of every width b at 64 + 2^b − 2)
//           3 states       (storage, read): u32 [kv_heads][d/2 + 1] f16 means m, then the
//                          f16 scale base
//           4 codes        (storage, read): u32 [kv_heads][rows][⌈bits·d/32⌉], LSB first
//           5 scales       (storage, read): u32 [kv_heads][⌈rows/4⌉] scale bytes
//                          (flag ≪ 7 | scale code), token t at bits 8·(t mod 4)
//           6 mean_codes   (storage, read): u32 [kv_heads][groups][⌈d/10⌉] codes z + 3
//           7 mean_steps   (storage, read): u32 [kv_heads][⌈groups/2⌉] f16 steps D
//           8 natural      (storage, read_write): f32 [tile rows][d] q/√d
//           9 rotated      (storage, read_write): f32 [tile rows][d] (q/√d)·Rot
//           10 centre_terms (storage, read_write): f32 [tile rows] (q/√d)·m of the keys
//           11 weights     (storage, read_write): f32 [tile rows][score_stride()] logits
//                          (key_scores writes them), softmax weights (value_sums reads them)
//           12 partial     (storage, read_write): f32 [tile rows][total_splits][d]
// Entry point (each workgroup serves the up-to-four query rows of a quad that share a KV
// head, y: the row quads of the tile, `row_quads` on the host, so that every code is decoded
// once for them and the arithmetic runs on vec4s, one component a row):
//   rotate_queries — grid (1, row quads) of VALUE_LANES: the quad's rows rotated together in
//                    workgroup memory (binds 1, 2, 3, 8, 9, 10).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> states: array<u32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> mean_codes: array<u32>;
@group(0) @binding(7) var<storage, read> mean_steps: array<u32>;
@group(0) @binding(8) var<storage, read_write> natural: array<f32>;
@group(0) @binding(9) var<storage, read_write> rotated: array<f32>;
@group(0) @binding(10) var<storage, read_write> centre_terms: array<f32>;
@group(0) @binding(11) var<storage, read_write> weights: array<f32>;
@group(0) @binding(12) var<storage, read_write> partial: array<f32>;

const MAX_DIM: u32 = 256u;
const POWERS: u32 = 32u;
const BLOCK_SCALES: u32 = 48u;
const FLAG_BIT: u32 = 0x80u;
const MEAN_CODES_PER_WORD: u32 = 10u;
// Elements per lane block of value_sums (d is a multiple of 16).
const BLOCK: u32 = 8u;

// The quad's rows, one vec4 component a row: rotated queries (key_scores), the rows being
// rotated (rotate_queries, value_sums).
var<workgroup> shared_quad: array<vec4<f32>, 256>;
// value_sums: the centre part of the quad's sums, in the natural domain.
var<workgroup> shared_centre: array<vec4<f32>, 256>;
var<workgroup> lane_sums: array<vec4<f32>, VALUE_LANES>;
// The codebook levels (per-token codes: one codebook at 0; codes across tokens: every
// width b at 2^b − 2).
var<workgroup> levels: array<f32, 30>;

fn state_mean(kv_head: u32, c: u32) -> f32 {
    let pair = unpack2x16float(states[kv_head * (params.width / 2u + 1u) + c / 2u]);
    return select(pair.x, pair.y, (c & 1u) == 1u);
}

fn state_base(kv_head: u32) -> f32 {
    return unpack2x16float(states[kv_head * (params.width / 2u + 1u) + params.width / 2u]).x;
}

// The scale byte of plane row t.
fn scale_byte(kv_head: u32, t: u32) -> u32 {
    return (scales[kv_head * ((params.rows + 3u) / 4u) + t / 4u] >> (8u * (t % 4u))) & 0xffu;
}

// ŝ = b·2^((e − 64)/8) for scale code e (0: a zero row), as the CPU reference decodes it.
fn token_scale(byte: u32, base: f32) -> f32 {
    let e = byte & ~FLAG_BIT;
    if (e == 0u) {
        return 0.0;
    }
    let m = 2i * (i32(e) - 64i);
    return (base * table[POWERS + u32(m & 15i)]) * ldexp(1.0, m >> 4u);
}

// The first code word of plane row t.
fn code_record(kv_head: u32, t: u32) -> u32 {
    return (kv_head * params.rows + t) * ((params.code_bits * params.width + 31u) / 32u);
}

// Channel c of the centre of group g: μ_g = m + D_g·z_g with group means, else m.
fn centre_value(kv_head: u32, g: u32, c: u32) -> f32 {
    let m = state_mean(kv_head, c);
    if (params.centre_rows == 0u) {
        return m;
    }
    let per_group = (params.width + MEAN_CODES_PER_WORD - 1u) / MEAN_CODES_PER_WORD;
    let word = mean_codes[(kv_head * params.groups + g) * per_group + c / MEAN_CODES_PER_WORD];
    let z = i32((word >> (3u * (c % MEAN_CODES_PER_WORD))) & 7u) - 3i;
    let steps = unpack2x16float(mean_steps[kv_head * ((params.groups + 1u) / 2u) + g / 2u]);
    return m + select(steps.x, steps.y, (g & 1u) == 1u) * f32(z);
}

// shared_quad[0..d) ← shared_quad·Rot for the four rows at once: the butterfly stages of
// every block (span 1, 2, 4, …), the lanes taking the pairs of a stage, then each block's
// 1/√n. Starts and ends with a barrier, so callers may write shared_quad before and read it
// after.
fn rotate_shared_quad(lane: u32) {
    let d = params.width;
    for (var span = 1u; span < MAX_DIM; span = span * 2u) {
        workgroupBarrier();
        for (var e = lane; e < d; e = e + VALUE_LANES) {
            let block = block_of(e, d);
            if (span < block.y && ((e - block.x) & span) == 0u) {
                let a = shared_quad[e];
                let b = shared_quad[e + span];
                shared_quad[e] = a + b;
                shared_quad[e + span] = a - b;
            }
        }
    }
    workgroupBarrier();
    for (var e = lane; e < d; e = e + VALUE_LANES) {
        let n = block_of(e, d).y;
        shared_quad[e] = shared_quad[e] * table[BLOCK_SCALES + firstTrailingBit(n)];
    }
    workgroupBarrier();
}

// Loads `count` levels from table entry `entry` into workgroup memory (callers place a
// barrier after it).
fn load_levels(local: u32, entry: u32, count: u32) {
    if (local < count) {
        levels[local] = table[entry + local];
    }
}

// Σᵢ shared_quad[i]·levels[first + cᵢ] over d codes of `bits` bits from bit `at` of the
// codes at word `record`, each code word read once (a 3-bit code may span two words).
fn stream_dot(record: u32, at: u32, bits: u32, first: u32) -> vec4<f32> {
    let d = params.width;
    let mask = (1u << bits) - 1u;
    var acc = vec4<f32>(0.0);
    var w = record + at / 32u;
    var word = codes[w];
    var used = at % 32u;
    for (var i = 0u; i < d; i = i + 1u) {
        var raw = word >> used;
        used = used + bits;
        if (used >= 32u) {
            used = used - 32u;
            if (i + 1u < d || used > 0u) {
                w = w + 1u;
                word = codes[w];
                if (used > 0u) {
                    raw = raw | (word << (bits - used));
                }
            }
        }
        acc = acc + shared_quad[i] * levels[first + (raw & mask)];
    }
    return acc;
}

// Σₜ wsₜ·L[cₜ,e] for the 8 elements e of a lane's block, one vec4 (the quad's rows) each.
struct BlockSums {
    e0: vec4<f32>,
    e1: vec4<f32>,
    e2: vec4<f32>,
    e3: vec4<f32>,
    e4: vec4<f32>,
    e5: vec4<f32>,
    e6: vec4<f32>,
    e7: vec4<f32>,
}

fn block_element(sums: BlockSums, k: u32) -> vec4<f32> {
    switch (k) {
        case 0u: { return sums.e0; }
        case 1u: { return sums.e1; }
        case 2u: { return sums.e2; }
        case 3u: { return sums.e3; }
        case 4u: { return sums.e4; }
        case 5u: { return sums.e5; }
        case 6u: { return sums.e6; }
        default: { return sums.e7; }
    }
}

// Adds ws·levels[first + c] for the 8 codes of `bits` bits in `raw`.
fn add_block_levels(sums: ptr<function, BlockSums>, ws: vec4<f32>, raw: u32, bits: u32, first: u32) {
    let mask = (1u << bits) - 1u;
    (*sums).e0 = (*sums).e0 + ws * levels[first + (raw & mask)];
    (*sums).e1 = (*sums).e1 + ws * levels[first + ((raw >> bits) & mask)];
    (*sums).e2 = (*sums).e2 + ws * levels[first + ((raw >> (2u * bits)) & mask)];
    (*sums).e3 = (*sums).e3 + ws * levels[first + ((raw >> (3u * bits)) & mask)];
    (*sums).e4 = (*sums).e4 + ws * levels[first + ((raw >> (4u * bits)) & mask)];
    (*sums).e5 = (*sums).e5 + ws * levels[first + ((raw >> (5u * bits)) & mask)];
    (*sums).e6 = (*sums).e6 + ws * levels[first + ((raw >> (6u * bits)) & mask)];
    (*sums).e7 = (*sums).e7 + ws * levels[first + ((raw >> (7u * bits)) & mask)];
}

@compute @workgroup_size(VALUE_LANES)
fn rotate_queries(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let quad = quad_rows(workgroup.y);
    let d = params.width;
    var centre = vec4<f32>(0.0);
    for (var c = lane; c < d; c = c + VALUE_LANES) {
        var x = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j = j + 1u) {
            let r = query_row(quad.rows[j]);
            x[j] = q[(r.q_head * params.queries + r.query) * d + c] * params.scale * quad.live[j];
        }
        shared_quad[c] = x;
        centre = centre + x * state_mean(quad.kv_head, c);
    }
    lane_sums[lane] = centre;
    rotate_shared_quad(lane);
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (quad.live[j] == 0.0) {
            continue;
        }
        let row = quad.rows[j];
        for (var c = lane; c < d; c = c + VALUE_LANES) {
            rotated[row * d + c] = shared_quad[c][j];
            let r = query_row(row);
            natural[row * d + c] = q[(r.q_head * params.queries + r.query) * d + c] * params.scale;
        }
        if (lane == 0u) {
            var total = 0.0;
            for (var i = 0u; i < VALUE_LANES; i = i + 1u) {
                total = total + lane_sums[i][j];
            }
            centre_terms[row] = total;
        }
    }
}
