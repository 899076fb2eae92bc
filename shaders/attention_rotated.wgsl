// attention_rotated.wgsl — attention straight from rotated per-token codes
// (src/packed/rotated.rs), never a decoded row. With x̂ₜ = flagₜ·cₜ + (ŝₜ·L[codesₜ])·Rot:
// - the query is rotated once per row: q′ = (q/√d)·Rot, and its centre term q·m once;
// - a key logit is ŝₜ·Σᵢ q′ᵢ·L[cᵢ] (one table look-up and multiply-add per element), plus
//   q·m where the token is flagged;
// - values are summed in the rotated domain, Σₜ pₜ·ŝₜ·L[codesₜ], rotated back once per
//   (split, row) (the rotation is its own inverse), and the flagged weight of each group
//   times its centre (the head's mean m, or the group mean μ_g = m + D_g·z_g) is added.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 16, at most 256),
//             code_bits, rows = token rows per KV head of the planes, groups = groups per
//             KV head, group_size, centre_rows (1: values centred on group means), scale,
//             kv_heads, rows_per_head, queries, row_offset, segment_len, segment_first =
//             the plane row of the segment's first token, split_size, split_offset,
//             total_splits)
//           1 q            (storage, read): f32 [q_heads][queries][d]
//           2 table        (storage, read): f32 [64], gpu::rotated::kernel_table (levels at
//                          0, sixteenth powers of two at 32, block scales 1/√n at 48 + log2 n)
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
// Entry points and dispatch:
//   rotate_queries — grid (1, tile rows) of VALUE_LANES: a workgroup rotates its row in
//                    workgroup memory (binds 1, 2, 3, 8, 9, 10);
//   key_scores     — grid (⌈segment_len/WORKGROUP_SIZE⌉, tile rows): one invocation per
//                    token (binds 2, 3, 4, 5, 9, 10, 11);
//   value_sums     — grid (splits of the segment, tile rows) of VALUE_LANES: the lanes
//                    share the elements of the row, then its rotation back (binds 2–7, 11, 12).

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

// The row being rotated (queries, value sums) and the centre part of a value sum.
var<workgroup> shared_row: array<f32, 256>;
var<workgroup> shared_centre: array<f32, 256>;
var<workgroup> lane_sums: array<f32, VALUE_LANES>;

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

// Code i of the row starting at word `record` (a 3-bit code may span two words).
fn code_at(record: u32, i: u32) -> u32 {
    let bits = params.code_bits;
    let at = i * bits;
    let word = record + at / 32u;
    let shift = at % 32u;
    var raw = codes[word] >> shift;
    if (shift + bits > 32u) {
        raw = raw | (codes[word + 1u] << (32u - shift));
    }
    return raw & ((1u << bits) - 1u);
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

// shared_row[0..d) ← shared_row·Rot: the butterfly stages of every block (span 1, 2, 4, …),
// the lanes taking the pairs of a stage, then each block's 1/√n. Starts and ends with a
// barrier, so callers may write shared_row before and read it after.
fn rotate_shared_row(lane: u32) {
    let d = params.width;
    for (var span = 1u; span < MAX_DIM; span = span * 2u) {
        workgroupBarrier();
        for (var e = lane; e < d; e = e + VALUE_LANES) {
            let block = block_of(e, d);
            if (span < block.y && ((e - block.x) & span) == 0u) {
                let a = shared_row[e];
                let b = shared_row[e + span];
                shared_row[e] = a + b;
                shared_row[e + span] = a - b;
            }
        }
    }
    workgroupBarrier();
    for (var e = lane; e < d; e = e + VALUE_LANES) {
        let n = block_of(e, d).y;
        shared_row[e] = shared_row[e] * table[BLOCK_SCALES + firstTrailingBit(n)];
    }
    workgroupBarrier();
}

@compute @workgroup_size(VALUE_LANES)
fn rotate_queries(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile_row = workgroup.y;
    let r = query_row(tile_row);
    let d = params.width;
    let base = (r.q_head * params.queries + r.query) * d;
    var centre = 0.0;
    for (var c = lane; c < d; c = c + VALUE_LANES) {
        let x = q[base + c] * params.scale;
        natural[tile_row * d + c] = x;
        shared_row[c] = x;
        centre = centre + x * state_mean(r.kv_head, c);
    }
    lane_sums[lane] = centre;
    rotate_shared_row(lane);
    for (var c = lane; c < d; c = c + VALUE_LANES) {
        rotated[tile_row * d + c] = shared_row[c];
    }
    if (lane == 0u) {
        var total = 0.0;
        for (var i = 0u; i < VALUE_LANES; i = i + 1u) {
            total = total + lane_sums[i];
        }
        centre_terms[tile_row] = total;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn key_scores(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = workgroup.x * WORKGROUP_SIZE + local;
    if (t >= params.segment_len) {
        return;
    }
    let tile_row = workgroup.y;
    let kv_head = query_row(tile_row).kv_head;
    let d = params.width;
    let row = params.segment_first + t;
    let record = code_record(kv_head, row);
    var dot = 0.0;
    for (var i = 0u; i < d; i = i + 1u) {
        dot = dot + rotated[tile_row * d + i] * table[code_at(record, i)];
    }
    let byte = scale_byte(kv_head, row);
    var logit = token_scale(byte, state_base(kv_head)) * dot;
    if ((byte & FLAG_BIT) != 0u) {
        logit = logit + centre_terms[tile_row];
    }
    weights[tile_row * score_stride() + t] = logit;
}

@compute @workgroup_size(VALUE_LANES)
fn value_sums(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let split = workgroup.x;
    let tile_row = workgroup.y;
    let kv_head = query_row(tile_row).kv_head;
    let d = params.width;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let base = state_base(kv_head);
    for (var e = lane; e < d; e = e + VALUE_LANES) {
        shared_row[e] = 0.0;
        shared_centre[e] = 0.0;
    }
    // Weight of the flagged tokens of the current group (of the whole split without
    // group means).
    var flagged = 0.0;
    for (var t = first; t < end; t = t + 1u) {
        let p = weights[tile_row * score_stride() + t];
        let row = params.segment_first + t;
        if (p != 0.0) {
            let byte = scale_byte(kv_head, row);
            let ws = p * token_scale(byte, base);
            let record = code_record(kv_head, row);
            for (var e = lane; e < d; e = e + VALUE_LANES) {
                shared_row[e] = shared_row[e] + ws * table[code_at(record, e)];
            }
            if ((byte & FLAG_BIT) != 0u) {
                flagged = flagged + p;
            }
        }
        let group_ends = params.centre_rows == 1u && (row + 1u) % params.group_size == 0u;
        if ((group_ends || t + 1u == end) && flagged != 0.0) {
            let g = row / params.group_size;
            for (var c = lane; c < d; c = c + VALUE_LANES) {
                shared_centre[c] = shared_centre[c] + flagged * centre_value(kv_head, g, c);
            }
            flagged = 0.0;
        }
    }
    rotate_shared_row(lane);
    let out = (tile_row * params.total_splits + params.split_offset + split) * d;
    for (var c = lane; c < d; c = c + VALUE_LANES) {
        partial[out + c] = shared_row[c] + shared_centre[c];
    }
}
