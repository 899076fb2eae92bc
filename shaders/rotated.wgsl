// rotated.wgsl — the rotated schemes' quantization (src/packed/rotated.rs,
// src/packed/rotated_groups.rs): the bindings, the helpers and the per-head state shared by
// its two variants, appended to it: rotated_tokens.wgsl (3-bit group means, per-token
// Lloyd-Max codes, decoding) and rotated_groups.wgsl (codes across tokens, "T2"). Every step
// mirrors the CPU reference operation for operation: the block-Hadamard butterflies in the
// same order, sums as zero-padded tree reductions, and no division or square root deciding a
// code (scales are compared as products, the log-grid scale from a table of powers of two,
// the state's base by a search over f16 values). Each invocation works on whole rows in
// private memory, and its loops stay short (lavapipe caps the loop iterations of one
// invocation at 65,535 and silently stops a loop past it).
//
// Bindings: 0 params (uniform Params: width = d, rows = state tokens n, len = tokens of this
//             chunk, group_size, groups, group_offset = the chunk's first group, code_bits,
//             centre_rows, invocations; the variants say what else they read)
//           1 input   (storage, read): f32 [len][d] token rows of the chunk (state: the first n rows)
//           2 table   (storage, read): f32 [64] levels (16) · thresholds (16) · 2^(k/16) (16) ·
//                       1/√n by log2 n (13) · unused · √(π/2) · 1/3, then for the groups
//                       variant the codebooks of every width (gpu::rotated::group_kernel_table)
//           3 state   (storage, read_write): u32 [d/2 + 1] f16 channel means, then the f16 base
//           4 centres (storage, read_write): f32 [groups][d] group centres μ_g (centre_rows = 1),
//                       or [n][2] state row energies (state_energies, fit_base)
//           5 words, 6 bytes, 7 output (storage, read_write): u32, as each variant says
// Entry points of the base (dispatch on a 2-D grid of WORKGROUP_SIZE): state_means — one
//           invocation per channel pair; state_energies — one per state row; fit_base — one
//           invocation.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> centres: array<f32>;
@group(0) @binding(5) var<storage, read_write> words: array<u32>;
@group(0) @binding(6) var<storage, read_write> bytes: array<u32>;
@group(0) @binding(7) var<storage, read_write> output: array<u32>;

const MAX_DIM: u32 = 256u;
const THRESHOLDS: u32 = 16u;
const POWERS: u32 = 32u;
const BLOCK_SCALES: u32 = 48u;
const SQRT_HALF_PI: u32 = 62u;
const ONE_THIRD: u32 = 63u;
const FLAG_BIT: u32 = 0x80u;
const MEAN_CODES_PER_WORD: u32 = 10u;

var<private> row: array<f32, 256>;
var<private> scratch: array<f32, 256>;
var<private> codes_plain: array<u32, 256>;
var<private> codes_centred: array<u32, 256>;

// f16 rounding of an f32, as f32.
fn f16_round(x: f32) -> f32 {
    return unpack2x16float(f16_bits(x)).x;
}

// Σ scratch[0..d) as a tree reduction over the zero-padded power of two.
fn tree_sum(d: u32) -> f32 {
    var padded = 1u;
    while (padded < d) {
        padded = padded * 2u;
    }
    for (var i = d; i < padded; i = i + 1u) {
        scratch[i] = 0.0;
    }
    var half = padded / 2u;
    while (half > 0u) {
        for (var i = 0u; i < half; i = i + 1u) {
            scratch[i] = scratch[i] + scratch[i + half];
        }
        half = half / 2u;
    }
    return scratch[0];
}

// row ← row·Rot: power-of-two blocks by the binary digits of d, largest first.
fn rotate_row(d: u32) {
    var start = 0u;
    for (var bit = 8i; bit >= 0i; bit = bit - 1i) {
        let n = 1u << u32(bit);
        if ((d & n) == 0u) {
            continue;
        }
        var span = 1u;
        while (span < n) {
            for (var pair = 0u; pair < n; pair = pair + 2u * span) {
                for (var i = pair; i < pair + span; i = i + 1u) {
                    let a = row[start + i];
                    let b = row[start + i + span];
                    row[start + i] = a + b;
                    row[start + i + span] = a - b;
                }
            }
            span = span * 2u;
        }
        let scale = table[BLOCK_SCALES + u32(bit)];
        for (var i = 0u; i < n; i = i + 1u) {
            row[start + i] = row[start + i] * scale;
        }
        start = start + n;
    }
}

// b·2^(m/16): the table's sixteenth power, then an exact power-of-two step.
fn base_power(base: f32, m: i32) -> f32 {
    return (base * table[POWERS + u32(m & 15i)]) * ldexp(1.0, m >> 4u);
}

fn decode_scale(e: u32, base: f32) -> f32 {
    if (e == 0u) {
        return 0.0;
    }
    return base_power(base, 2i * (i32(e) - 64i));
}

// The largest e in 1…127 with num/den ≥ b·2^((e − 64.5)/8), or 1.
fn encode_scale(num: f32, den: f32, base: f32) -> u32 {
    var lo = 1i;
    var hi = 127i;
    while (lo < hi) {
        let mid = (lo + hi + 1i) / 2i;
        if (num >= den * base_power(base, 2i * (mid - 64i) - 1i)) {
            lo = mid;
        } else {
            hi = mid - 1i;
        }
    }
    return u32(lo);
}

// A codebook in the table: where its levels and thresholds start, and its level count.
struct Book {
    levels: u32,
    thresholds: u32,
    count: u32,
}

// The codebook of the per-token kernels: code_bits wide, at the start of the table.
fn token_book() -> Book {
    return Book(0u, THRESHOLDS, 1u << params.code_bits);
}

// The code of y for the scale num/den: thresholds t with y·den > num·t.
fn code_for_ratio(y: f32, num: f32, den: f32, book: Book) -> u32 {
    var code = 0u;
    for (var i = 0u; i + 1u < book.count; i = i + 1u) {
        code = code + select(0u, 1u, y * den > num * table[book.thresholds + i]);
    }
    return code;
}

fn code_for_scale(y: f32, s: f32, book: Book) -> u32 {
    var code = 0u;
    for (var i = 0u; i + 1u < book.count; i = i + 1u) {
        code = code + select(0u, 1u, y > s * table[book.thresholds + i]);
    }
    return code;
}

// The Lloyd-Max fit of `row` with `book` (src/reference/lloyd_max.rs::fit_row): writes its
// codes and returns (scale code, decoded scale, squared error). `row` is left as it was.
fn fit_row(d: u32, base: f32, codes: ptr<private, array<u32, 256>>, book: Book) -> vec3<f32> {
    for (var i = 0u; i < d; i = i + 1u) {
        scratch[i] = abs(row[i]);
    }
    let abs_sum = tree_sum(d);
    if (abs_sum == 0.0) {
        for (var i = 0u; i < d; i = i + 1u) {
            (*codes)[i] = 0u;
        }
        return vec3<f32>(0.0, 0.0, 0.0);
    }
    var num = table[SQRT_HALF_PI] * abs_sum;
    var den = f32(d);
    for (var refit = 0u; refit < 2u; refit = refit + 1u) {
        for (var i = 0u; i < d; i = i + 1u) {
            (*codes)[i] = code_for_ratio(row[i], num, den, book);
        }
        for (var i = 0u; i < d; i = i + 1u) {
            scratch[i] = row[i] * table[book.levels + (*codes)[i]];
        }
        num = tree_sum(d);
        for (var i = 0u; i < d; i = i + 1u) {
            let level = table[book.levels + (*codes)[i]];
            scratch[i] = level * level;
        }
        den = tree_sum(d);
    }
    let e = encode_scale(num, den, base);
    let s = decode_scale(e, base);
    for (var i = 0u; i < d; i = i + 1u) {
        (*codes)[i] = code_for_scale(row[i], s, book);
    }
    for (var i = 0u; i < d; i = i + 1u) {
        let diff = row[i] - s * table[book.levels + (*codes)[i]];
        scratch[i] = diff * diff;
    }
    return vec3<f32>(f32(e), s, tree_sum(d));
}

fn state_mean(c: u32) -> f32 {
    let pair = unpack2x16float(state[c / 2u]);
    return select(pair.x, pair.y, (c & 1u) == 1u);
}

fn state_base() -> f32 {
    return unpack2x16float(state[params.width / 2u]).x;
}

// The centre of token t (absolute in the run) and channel c.
fn centre(t: u32, c: u32) -> f32 {
    if (params.centre_rows == 0u) {
        return state_mean(c);
    }
    return centres[(t / params.group_size) * params.width + c];
}

// The largest finite f16 h with (h·h)·count ≤ total, or 0.
fn f16_floor_rms(total: f32, count: f32) -> f32 {
    var lo = 0u;
    var hi = 0x7bffu;
    while (lo < hi) {
        let mid = lo + (hi - lo + 1u) / 2u;
        let h = unpack2x16float(mid).x;
        if (h * h * count <= total) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return unpack2x16float(lo).x;
}

// ‖(x_t − centred·m̂)·Rot‖² of row t.
fn rotated_energy(t: u32, d: u32, centred: bool) -> f32 {
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[t * d + c] - select(0.0, state_mean(c), centred);
    }
    rotate_row(d);
    for (var c = 0u; c < d; c = c + 1u) {
        scratch[c] = row[c] * row[c];
    }
    return tree_sum(d);
}

// The state's channel means m̂ (f16) of the first n rows, one invocation per channel pair.
@compute @workgroup_size(WORKGROUP_SIZE)
fn state_means(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let pair = linear_index(workgroup, workgroups, local);
    if (pair >= params.invocations) {
        return;
    }
    let d = params.width;
    let n = params.rows;
    var sums = vec2<f32>(0.0, 0.0);
    for (var t = 0u; t < n; t = t + 1u) {
        sums = sums + vec2<f32>(input[t * d + 2u * pair], input[t * d + 2u * pair + 1u]);
    }
    state[pair] = pack_f16_pair(sums.x * (1.0 / f32(n)), sums.y * (1.0 / f32(n)));
}

// Each state row's centred and uncentred rotated energies, into centres[2t] and [2t + 1].
@compute @workgroup_size(WORKGROUP_SIZE)
fn state_energies(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = linear_index(workgroup, workgroups, local);
    if (t >= params.invocations) {
        return;
    }
    centres[2u * t] = rotated_energy(t, params.width, true);
    centres[2u * t + 1u] = rotated_energy(t, params.width, false);
}

// The base from the energies (summed in token order): the f16 floor RMS of the centred
// rows, else of the uncentred rows, else 1. One invocation.
@compute @workgroup_size(1)
fn fit_base() {
    let d = params.width;
    let n = params.rows;
    var centred = 0.0;
    var plain = 0.0;
    for (var t = 0u; t < n; t = t + 1u) {
        centred = centred + centres[2u * t];
        plain = plain + centres[2u * t + 1u];
    }
    let count = f32(n * d);
    var base = f16_floor_rms(centred, count);
    if (base == 0.0) {
        base = f16_floor_rms(plain, count);
    }
    if (base == 0.0) {
        base = 1.0;
    }
    state[d / 2u] = pack_f16_pair(base, 0.0);
}
