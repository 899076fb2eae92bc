// rotated_groups.wgsl — appended to rotated.wgsl (its bindings, helpers and state): codes
// across tokens ("T2", src/packed/rotated_groups.rs), quantization and decoding. Each whole
// group X (G tokens × d) is coded in mode T or A, whichever has the smaller Σₜ
// ‖x̂ₜ − xₜ‖² / ‖xₜ − m‖²:
// - T: F = Rot_G·(X − 1mᵀ)·Rot_d; the budget's row widths go greedily, one bit at a time, to
//   the row with the largest gain eⱼ·(δ(bⱼ) − δ(bⱼ + 1)); each row with bⱼ > 0 gets a
//   Lloyd-Max fit of bⱼ bits;
// - A: per-token codes (centred on m or not), the first budget mod G tokens one bit wider.
// The passes mirror the CPU reference step by step (same butterflies, tree sums, greedy
// order and comparisons); the relative errors that choose the mode are the only divisions.
//
// Bindings (besides the base file's; the table is gpu::rotated::group_kernel_table):
//           5 words   (storage, read_write): u32 codes [groups][budget·d/32] (rows in order
//                       (T) or tokens (A), each bⱼ·d bits, LSB first)
//           6 bytes   (storage, read_write): u32 scale bytes [groups][G/4]
//           7 output  (storage, read_write): u32 width tables [groups][⌈3G/32⌉] (three-bit
//                       row widths; entry 0 = 7 marks mode A)
//           8 group_rows (storage, read_write): f32 [len][d] the chunk's rows: F after
//                       row_transforms and group_columns, its residual after row_fits and
//                       group_columns (quantize); the decoded rows (decode_rows, group_columns,
//                       finish_rows)
//           9 element_codes (storage, read_write): u32 [2][len][d] per-element codes of the
//                       T rows, then of the A tokens
//           10 token_info (storage, read_write): u32 [len][6] per token t (or T row t): ‖xₜ − m‖²
//                       (f32 bits), the A error (f32 bits), the A scale byte, the T row's scale
//                       byte, the T row's energy (f32 bits), the T error of token t (f32 bits)
//           11 row_widths (storage, read_write): u32 [len] the T width of row j of each group
// Params: code_bits = budget (code bits per group), group_size = G (at most 128), len =
//         tokens of the chunk (whole groups), group_offset = the chunk's first group in the
//         record arrays, centre_rows = 1 in group_columns: only the groups stored across
//         tokens (decoding; their mode is read from the width tables); group_widths places
//         bits group_count… group_count + blocks − 1 of the budget (several passes keep every
//         invocation under lavapipe's 65,535 loop iterations).
// Dispatch (2-D grid of WORKGROUP_SIZE): quantize — row_transforms one invocation per token,
//           group_columns one per (group, channel), row_energies one per row, group_widths
//           one per group (in passes), row_fits one per row, group_columns again, row_errors
//           one per token, choose_groups one per group; decode — decode_rows one per token,
//           group_columns (centre_rows = 1), finish_rows one per token.

@group(0) @binding(8) var<storage, read_write> group_rows: array<f32>;
@group(0) @binding(9) var<storage, read_write> element_codes: array<u32>;
@group(0) @binding(10) var<storage, read_write> token_info: array<u32>;
@group(0) @binding(11) var<storage, read_write> row_widths: array<u32>;

const GROUP_LEVELS: u32 = 64u;
const GROUP_THRESHOLDS: u32 = 96u;
const GROUP_MSE: u32 = 128u;
const MAX_ROW_BITS: u32 = 4u;
const TOKEN_MODE: u32 = 7u;
const MAX_GROUP: u32 = 128u;
// u32 words of token_info per token.
const INFO: u32 = 6u;

var<private> group_values: array<f32, 128>;
var<private> group_widths_of: array<u32, 128>;

// The codebook of width b (1…4).
fn width_book(b: u32) -> Book {
    let first = (1u << b) - 2u;
    return Book(GROUP_LEVELS + first, GROUP_THRESHOLDS + first, 1u << b);
}

// The mode-A code width of token t.
fn token_width(t: u32) -> u32 {
    let g = params.group_size;
    return params.code_bits / g + select(0u, 1u, t < params.code_bits % g);
}

fn words_per_group() -> u32 {
    return params.code_bits * params.width / 32u;
}

fn width_words() -> u32 {
    return (3u * params.group_size + 31u) / 32u;
}

// ORs `count` bits of `value` into the words from bit `at` of the group record `record`.
fn put_bits(record: u32, at: u32, value: u32, count: u32) {
    let w = record + at / 32u;
    let shift = at % 32u;
    words[w] = words[w] | (value << shift);
    if (shift + count > 32u) {
        words[w + 1u] = words[w + 1u] | (value >> (32u - shift));
    }
}

// `count` bits from bit `at` of the group record `record` of `words`.
fn get_bits(record: u32, at: u32, count: u32) -> u32 {
    let w = record + at / 32u;
    let shift = at % 32u;
    var raw = words[w] >> shift;
    if (shift + count > 32u) {
        raw = raw | (words[w + 1u] << (32u - shift));
    }
    return raw & ((1u << count) - 1u);
}

// Entry j of width table `g` (absolute group) of `output`.
fn width_entry(g: u32, j: u32) -> u32 {
    let base = g * width_words();
    let at = 3u * j;
    let shift = at % 32u;
    var raw = output[base + at / 32u] >> shift;
    if (shift + 3u > 32u) {
        raw = raw | (output[base + at / 32u + 1u] << (32u - shift));
    }
    return raw & 7u;
}

// F row t (x − m, rotated over head_dim), ‖x − m‖², and the token's mode-A codes.
@compute @workgroup_size(WORKGROUP_SIZE)
fn row_transforms(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = linear_index(workgroup, workgroups, local);
    if (t >= params.invocations) {
        return;
    }
    let d = params.width;
    let base = state_base();
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[t * d + c] - state_mean(c);
        scratch[c] = row[c] * row[c];
    }
    let energy = tree_sum(d);
    rotate_row(d);
    for (var c = 0u; c < d; c = c + 1u) {
        group_rows[t * d + c] = row[c];
    }
    let book = width_book(token_width(t % params.group_size));
    let centred = fit_row(d, base, &codes_centred, book);
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[t * d + c];
    }
    rotate_row(d);
    let plain = fit_row(d, base, &codes_plain, book);
    var byte = u32(plain.x);
    var error = plain.z;
    let codes_at = params.len * d + t * d;
    if (centred.z < plain.z) {
        byte = FLAG_BIT | u32(centred.x);
        error = centred.z;
        for (var c = 0u; c < d; c = c + 1u) {
            element_codes[codes_at + c] = codes_centred[c];
        }
    } else {
        for (var c = 0u; c < d; c = c + 1u) {
            element_codes[codes_at + c] = codes_plain[c];
        }
    }
    token_info[INFO * t] = bitcast<u32>(energy);
    token_info[INFO * t + 1u] = bitcast<u32>(error);
    token_info[INFO * t + 2u] = byte;
}

// Rot_G over the tokens of one channel of one group of group_rows.
@compute @workgroup_size(WORKGROUP_SIZE)
fn group_columns(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let d = params.width;
    let g_size = params.group_size;
    let g = index / d;
    let c = index % d;
    if (params.centre_rows == 1u && width_entry(params.group_offset + g, 0u) == TOKEN_MODE) {
        return;
    }
    // A power-of-two G is one block of the head_dim rotation: the same butterflies and 1/√G.
    let first = g * g_size;
    for (var t = 0u; t < g_size; t = t + 1u) {
        row[t] = group_rows[(first + t) * d + c];
    }
    rotate_row(g_size);
    for (var t = 0u; t < g_size; t = t + 1u) {
        group_rows[(first + t) * d + c] = row[t];
    }
}

// ‖group_rows[r]‖² as a tree sum.
fn row_norm(r: u32) -> f32 {
    let d = params.width;
    for (var c = 0u; c < d; c = c + 1u) {
        let v = group_rows[r * d + c];
        scratch[c] = v * v;
    }
    return tree_sum(d);
}

// ‖F_r‖² of one row of F.
@compute @workgroup_size(WORKGROUP_SIZE)
fn row_energies(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let r = linear_index(workgroup, workgroups, local);
    if (r >= params.invocations) {
        return;
    }
    token_info[INFO * r + 4u] = bitcast<u32>(row_norm(r));
}

// Bits group_count… group_count + blocks − 1 of one group's greedy row widths, each to the
// row of the largest gain eⱼ·(δ(bⱼ) − δ(bⱼ + 1)) (ties to the lowest j).
@compute @workgroup_size(WORKGROUP_SIZE)
fn group_widths(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let g = linear_index(workgroup, workgroups, local);
    if (g >= params.invocations) {
        return;
    }
    let g_size = params.group_size;
    for (var j = 0u; j < g_size; j = j + 1u) {
        group_values[j] = bitcast<f32>(token_info[INFO * (g * g_size + j) + 4u]);
        group_widths_of[j] = select(row_widths[g * g_size + j], 0u, params.group_count == 0u);
    }
    let last = min(params.code_bits, params.group_count + params.blocks);
    for (var spent = params.group_count; spent < last; spent = spent + 1u) {
        var best = MAX_GROUP;
        var best_gain = 0.0;
        for (var j = 0u; j < g_size; j = j + 1u) {
            let b = group_widths_of[j];
            if (b >= MAX_ROW_BITS) {
                continue;
            }
            let gain = group_values[j] * (table[GROUP_MSE + b] - table[GROUP_MSE + b + 1u]);
            if (best == MAX_GROUP || !(best_gain >= gain)) {
                best = j;
                best_gain = gain;
            }
        }
        if (best == MAX_GROUP) {
            break;
        }
        group_widths_of[best] = group_widths_of[best] + 1u;
    }
    for (var j = 0u; j < g_size; j = j + 1u) {
        row_widths[g * g_size + j] = group_widths_of[j];
    }
}

// The fit of one T row of its width: its codes, scale byte, and the row minus its
// reconstruction (the residual, in place).
@compute @workgroup_size(WORKGROUP_SIZE)
fn row_fits(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let r = linear_index(workgroup, workgroups, local);
    if (r >= params.invocations) {
        return;
    }
    let d = params.width;
    let b = row_widths[r];
    if (b == 0u) {
        token_info[INFO * r + 3u] = 0u;
        return;
    }
    let book = width_book(b);
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = group_rows[r * d + c];
    }
    let fit = fit_row(d, state_base(), &codes_plain, book);
    for (var c = 0u; c < d; c = c + 1u) {
        element_codes[r * d + c] = codes_plain[c];
        group_rows[r * d + c] = row[c] - fit.y * table[book.levels + codes_plain[c]];
    }
    token_info[INFO * r + 3u] = u32(fit.x);
}

// The T error of token t: ‖residual row t‖² (after the residual's transform over tokens).
@compute @workgroup_size(WORKGROUP_SIZE)
fn row_errors(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = linear_index(workgroup, workgroups, local);
    if (t >= params.invocations) {
        return;
    }
    token_info[INFO * t + 5u] = bitcast<u32>(row_norm(t));
}

// Σₜ errₜ/‖xₜ − m‖² in token order (a zero denominator counts the error as it is).
fn add_relative(sum: f32, error: f32, energy: f32) -> f32 {
    if (energy > 0.0) {
        return sum + error / energy;
    }
    return sum + error;
}

// The better mode of one group, packed into its record: codes, scale bytes, width table.
@compute @workgroup_size(WORKGROUP_SIZE)
fn choose_groups(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let g = linear_index(workgroup, workgroups, local);
    if (g >= params.invocations) {
        return;
    }
    let d = params.width;
    let g_size = params.group_size;
    let first = g * g_size;
    var sequency = 0.0;
    var tokens = 0.0;
    for (var t = 0u; t < g_size; t = t + 1u) {
        let info = INFO * (first + t);
        let energy = bitcast<f32>(token_info[info]);
        sequency = add_relative(sequency, bitcast<f32>(token_info[info + 5u]), energy);
        tokens = add_relative(tokens, bitcast<f32>(token_info[info + 1u]), energy);
    }
    let per_token = !(sequency < tokens);
    let absolute = params.group_offset + g;
    let record = absolute * words_per_group();
    for (var w = 0u; w < words_per_group(); w = w + 1u) {
        words[record + w] = 0u;
    }
    for (var w = 0u; w < g_size / 4u; w = w + 1u) {
        bytes[absolute * (g_size / 4u) + w] = 0u;
    }
    for (var w = 0u; w < width_words(); w = w + 1u) {
        output[absolute * width_words() + w] = 0u;
    }
    let codes_base = select(0u, params.len * d, per_token);
    var at = 0u;
    for (var j = 0u; j < g_size; j = j + 1u) {
        var b = row_widths[first + j];
        var byte = token_info[INFO * (first + j) + 3u];
        if (per_token) {
            b = token_width(j);
            byte = token_info[INFO * (first + j) + 2u];
        }
        for (var c = 0u; c < d; c = c + 1u) {
            if (b > 0u) {
                put_bits(record, at + c * b, element_codes[codes_base + (first + j) * d + c], b);
            }
        }
        at = at + b * d;
        let scale_word = absolute * (g_size / 4u) + j / 4u;
        bytes[scale_word] = bytes[scale_word] | (byte << (8u * (j % 4u)));
        var entry = b;
        if (per_token) {
            entry = select(0u, TOKEN_MODE, j == 0u);
        }
        let bit = 3u * j;
        let width_word = absolute * width_words() + bit / 32u;
        output[width_word] = output[width_word] | (entry << (bit % 32u));
        if (bit % 32u + 3u > 32u) {
            output[width_word + 1u] = output[width_word + 1u] | (entry >> (32u - bit % 32u));
        }
    }
}

// Decoding, first pass: row (T) or token (A) t of the chunk in the rotated domain, ŝ·L[c]
// (0 for a T row without bits); an A token's scale byte goes to token_info for its flag.
@compute @workgroup_size(WORKGROUP_SIZE)
fn decode_rows(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = linear_index(workgroup, workgroups, local);
    if (t >= params.invocations) {
        return;
    }
    let d = params.width;
    let g_size = params.group_size;
    let j = t % g_size;
    let absolute = params.group_offset + t / g_size;
    let per_token = width_entry(absolute, 0u) == TOKEN_MODE;
    let record = absolute * words_per_group();
    var at = 0u;
    var b = 0u;
    for (var i = 0u; i <= j; i = i + 1u) {
        at = at + b * d;
        if (per_token) {
            b = token_width(i);
        } else {
            b = width_entry(absolute, i);
        }
    }
    let byte = (bytes[absolute * (g_size / 4u) + j / 4u] >> (8u * (j % 4u))) & 0xffu;
    token_info[INFO * t + 2u] = select(0u, byte, per_token);
    if (b == 0u) {
        for (var c = 0u; c < d; c = c + 1u) {
            group_rows[t * d + c] = 0.0;
        }
        return;
    }
    let book = width_book(b);
    let s = decode_scale(byte & 0x7fu, state_base());
    for (var c = 0u; c < d; c = c + 1u) {
        group_rows[t * d + c] = s * table[book.levels + get_bits(record, at + c * b, b)];
    }
}

// Decoding, last pass: token t rotated back over head_dim, plus m for every token of a T
// group and for the flagged tokens of an A group.
@compute @workgroup_size(WORKGROUP_SIZE)
fn finish_rows(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = linear_index(workgroup, workgroups, local);
    if (t >= params.invocations) {
        return;
    }
    let d = params.width;
    let absolute = params.group_offset + t / params.group_size;
    let per_token = width_entry(absolute, 0u) == TOKEN_MODE;
    let centred = !per_token || (token_info[INFO * t + 2u] & FLAG_BIT) != 0u;
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = group_rows[t * d + c];
    }
    rotate_row(d);
    for (var c = 0u; c < d; c = c + 1u) {
        group_rows[t * d + c] = row[c] + select(0.0, state_mean(c), centred);
    }
}
