// rotated_tokens.wgsl — appended to rotated.wgsl (its bindings, helpers and state): the
// rotated per-token scheme (src/packed/rotated.rs): 3-bit group means, per-token Lloyd-Max
// codes, and decoding.
//
// Bindings (besides the base file's):
//           5 words   (storage, read_write): u32 codes [tokens][⌈bits·d/32⌉] (quantize,
//                       dequantize) or group-mean codes [groups][⌈d/10⌉] (group_means)
//           6 bytes   (storage, read_write): u32 scale bytes [⌈tokens/4⌉] (quantize,
//                       dequantize) or f16 steps [⌈groups/2⌉] (pack_steps, group_centres)
//           7 output  (storage, read_write): u32 [len][d] decoded f32 rows of the chunk
//                       (dequantize), or one scale byte per token (quantize → pack_scales)
//                       or f16 step per group (group_means → pack_steps) of the chunk
//           Params: groups = groups of the whole run (or of a cache chunk's planes).
// Dispatch: group_means — one invocation per group of the chunk, then pack_steps one per
//           step word its groups touch (the chunk may start at an odd group); group_centres —
//           one per group; quantize — one per token of the chunk, then pack_scales one per 4
//           tokens (they share a word); dequantize — one per token of the chunk.

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
    let plain = fit_row(d, base, &codes_plain, token_book());
    for (var c = 0u; c < d; c = c + 1u) {
        row[c] = input[local * d + c] - centre(t, c);
    }
    rotate_row(d);
    let centred = fit_row(d, base, &codes_centred, token_book());
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
