// rotated.wgsl — the rotated per-token scheme (src/packed/rotated.rs): per-head state,
// 3-bit group means, per-token Lloyd-Max codes, and decoding. Every step mirrors the CPU
// reference operation for operation: the block-Hadamard butterflies in the same order, sums
// as zero-padded tree reductions, and no division or square root deciding a code (scales
// are compared as products, the log-grid scale from a table of powers of two, the state's
// base by a search over f16 values). Each invocation works on whole rows in private memory.
//
// Bindings: 0 params (uniform Params: width = d, rows = state tokens n, len = tokens of this
//             chunk, group_size, groups = groups of the whole run, group_offset = the
//             chunk's first group, code_bits, centre_rows, invocations)
//           1 input   (storage, read): f32 [len][d] token rows of the chunk (state: the first n rows)
//           2 table   (storage, read): f32 [64] levels (16) · thresholds (16) · 2^(k/16) (16) ·
//                       1/√n by log2 n (13) · unused · √(π/2) · 1/3
//           3 state   (storage, read_write): u32 [d/2 + 1] f16 channel means, then the f16 base
//           4 centres (storage, read_write): f32 [groups][d] group centres μ_g (centre_rows = 1),
//                       or [n][2] state row energies (state_energies, fit_base)
//           5 words   (storage, read_write): u32 codes [tokens][⌈bits·d/32⌉] (quantize,
//                       dequantize) or group-mean codes [groups][⌈d/10⌉] (group_means)
//           6 bytes   (storage, read_write): u32 scale bytes [⌈tokens/4⌉] (quantize,
//                       dequantize) or f16 steps [⌈groups/2⌉] (pack_steps, group_centres)
//           7 output  (storage, read_write): u32 [len][d] decoded f32 rows of the chunk
//                       (dequantize), or one scale byte per token (quantize → pack_scales)
//                       or f16 step per group (group_means → pack_steps) of the chunk
// Dispatch: state_means — one invocation per channel pair; state_energies — one per state
//           row; fit_base — one invocation; group_means — one per group of the chunk, then
//           pack_steps one per step word its groups touch (the chunk may start at an odd
//           group); group_centres — one per group; quantize — one per token of the chunk,
//           then pack_scales one per 4 tokens (they share a word); dequantize — one per
//           token of the chunk. 2-D grid of WORKGROUP_SIZE. Every
//           invocation's loops stay short (lavapipe caps the loop iterations of one
//           invocation at 65,535 and silently stops a loop past it).

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

fn level_count() -> u32 {
    return 1u << params.code_bits;
}

// The code of y for the scale num/den: thresholds t with y·den > num·t.
fn code_for_ratio(y: f32, num: f32, den: f32) -> u32 {
    var code = 0u;
    for (var i = 0u; i + 1u < level_count(); i = i + 1u) {
        code = code + select(0u, 1u, y * den > num * table[THRESHOLDS + i]);
    }
    return code;
}

fn code_for_scale(y: f32, s: f32) -> u32 {
    var code = 0u;
    for (var i = 0u; i + 1u < level_count(); i = i + 1u) {
        code = code + select(0u, 1u, y > s * table[THRESHOLDS + i]);
    }
    return code;
}

// The Lloyd-Max fit of `row` (src/reference/lloyd_max.rs::fit_row): writes its codes and
// returns (scale code, decoded scale, squared error).
fn fit_row(d: u32, base: f32, codes: ptr<private, array<u32, 256>>) -> vec3<f32> {
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
            (*codes)[i] = code_for_ratio(row[i], num, den);
        }
        for (var i = 0u; i < d; i = i + 1u) {
            scratch[i] = row[i] * table[(*codes)[i]];
        }
        num = tree_sum(d);
        for (var i = 0u; i < d; i = i + 1u) {
            let level = table[(*codes)[i]];
            scratch[i] = level * level;
        }
        den = tree_sum(d);
    }
    let e = encode_scale(num, den, base);
    let s = decode_scale(e, base);
    for (var i = 0u; i < d; i = i + 1u) {
        (*codes)[i] = code_for_scale(row[i], s);
    }
    for (var i = 0u; i < d; i = i + 1u) {
        let diff = row[i] - s * table[(*codes)[i]];
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

// The 3-bit mean codes and f16 step of one group; writes its centre row μ_g.
fn group_mean(local_group: u32) -> f32 {
    let d = params.width;
    let g = params.group_size;
    let group = params.group_offset + local_group;
    let per_word = MEAN_CODES_PER_WORD;
    let words_per_group = (d + per_word - 1u) / per_word;
    var largest = 0.0;
    for (var c = 0u; c < d; c = c + 1u) {
        var sum = 0.0;
        for (var t = 0u; t < g; t = t + 1u) {
            sum = sum + (input[(local_group * g + t) * d + c] - state_mean(c));
        }
        row[c] = sum * (1.0 / f32(g));
        largest = max(largest, abs(row[c]));
    }
    let step = f16_round(largest * table[ONE_THIRD]);
    for (var w = 0u; w < words_per_group; w = w + 1u) {
        words[group * words_per_group + w] = 0u;
    }
    for (var c = 0u; c < d; c = c + 1u) {
        var magnitude = 0i;
        if (step > 0.0) {
            magnitude = select(0i, 1i, abs(row[c]) >= step * 0.5)
                + select(0i, 1i, abs(row[c]) >= step * 1.5)
                + select(0i, 1i, abs(row[c]) >= step * 2.5);
        }
        let z = select(magnitude, -magnitude, row[c] < 0.0);
        let at = group * words_per_group + c / per_word;
        words[at] = words[at] | (u32(z + 3i) << (3u * (c % per_word)));
        centres[group * d + c] = state_mean(c) + step * f32(z);
    }
    return step;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn group_means(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let local_group = linear_index(workgroup, workgroups, local);
    if (local_group >= params.invocations) {
        return;
    }
    output[local_group] = bitcast<u32>(group_mean(local_group));
}

// The chunk's f16 steps into their words, two groups a word: one invocation per word the
// chunk's groups touch (a growing cache's chunk may start at an odd group). A half of a
// group outside the chunk keeps its bits, or is 0 from `groups` (the groups of the whole
// run, or of a cache chunk's planes) on.
@compute @workgroup_size(WORKGROUP_SIZE)
fn pack_steps(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let first = params.group_offset;
    let local_groups = params.len / params.group_size;
    let word = first / 2u + index;
    var halves = array<u32, 2>(bytes[word] & 0xffffu, bytes[word] >> 16u);
    for (var half = 0u; half < 2u; half = half + 1u) {
        let group = 2u * word + half;
        if (group >= params.groups) {
            halves[half] = 0u;
        } else if (group >= first && group < first + local_groups) {
            halves[half] = f16_bits(bitcast<f32>(output[group - first]));
        }
    }
    bytes[word] = halves[0] | (halves[1] << 16u);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn group_centres(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let group = linear_index(workgroup, workgroups, local);
    if (group >= params.invocations) {
        return;
    }
    let d = params.width;
    let words_per_group = (d + MEAN_CODES_PER_WORD - 1u) / MEAN_CODES_PER_WORD;
    let steps = unpack2x16float(bytes[group / 2u]);
    let step = select(steps.x, steps.y, (group & 1u) == 1u);
    for (var c = 0u; c < d; c = c + 1u) {
        let word = words[group * words_per_group + c / MEAN_CODES_PER_WORD];
        let z = i32((word >> (3u * (c % MEAN_CODES_PER_WORD))) & 7u) - 3i;
        centres[group * d + c] = state_mean(c) + step * f32(z);
    }
}

fn words_per_token() -> u32 {
    return (params.code_bits * params.width + 31u) / 32u;
}

// Packs one token's codes into its words (element i at bit i·bits, LSB first).
fn store_codes(t: u32, codes: ptr<private, array<u32, 256>>) {
    let d = params.width;
    let bits = params.code_bits;
    let first = t * words_per_token();
    for (var w = 0u; w < words_per_token(); w = w + 1u) {
        words[first + w] = 0u;
    }
    for (var i = 0u; i < d; i = i + 1u) {
        let at = i * bits;
        let w = first + at / 32u;
        let shift = at % 32u;
        words[w] = words[w] | ((*codes)[i] << shift);
        if (shift + bits > 32u) {
            words[w + 1u] = words[w + 1u] | ((*codes)[i] >> (32u - shift));
        }
    }
}

// Codes token `local` of the chunk; returns its scale byte.
fn quantize_token(local: u32) -> u32 {
    let d = params.width;
    let t = params.group_offset * params.group_size + local;
    let base = state_base();
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[local * d + c];
    }
    rotate_row(d);
    let plain = fit_row(d, base, &codes_plain);
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[local * d + c] - centre(t, c);
    }
    rotate_row(d);
    let centred = fit_row(d, base, &codes_centred);
    if (centred.z < plain.z) {
        store_codes(t, &codes_centred);
        return FLAG_BIT | u32(centred.x);
    }
    store_codes(t, &codes_plain);
    return u32(plain.x);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn quantize(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let token = linear_index(workgroup, workgroups, local);
    if (token >= params.invocations) {
        return;
    }
    output[token] = quantize_token(token);
}

// Four tokens' scale bytes into one word (chunks hold whole groups of ≥ 8 tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn pack_scales(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let quad = linear_index(workgroup, workgroups, local);
    if (quad >= params.invocations) {
        return;
    }
    var word = 0u;
    for (var k = 0u; k < 4u; k = k + 1u) {
        if (4u * quad + k < params.len) {
            word = word | (output[4u * quad + k] << (8u * k));
        }
    }
    bytes[(params.group_offset * params.group_size) / 4u + quad] = word;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn dequantize(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let d = params.width;
    let bits = params.code_bits;
    let t = params.group_offset * params.group_size + index;
    let byte = (bytes[t / 4u] >> (8u * (t % 4u))) & 0xffu;
    let s = decode_scale(byte & 0x7fu, state_base());
    let first = t * words_per_token();
    for (var i = 0u; i < d; i = i + 1u) {
        let at = i * bits;
        let shift = at % 32u;
        var code = words[first + at / 32u] >> shift;
        if (shift + bits > 32u) {
            code = code | (words[first + at / 32u + 1u] << (32u - shift));
        }
        row[i] = s * table[code & ((1u << bits) - 1u)];
    }
    rotate_row(d);
    let flagged = (byte & FLAG_BIT) != 0u;
    for (var c = 0u; c < d; c = c + 1u) {
        output[index * d + c] = bitcast<u32>(row[c] + select(0.0, centre(t, c), flagged));
    }
}
