// attention_rotated_groups.wgsl — appended to attention_rotated.wgsl (its bindings and
// helpers): attention straight from codes across tokens ("T2",
// src/packed/rotated_groups.rs), never a decoded row. A group is stored in one of two modes:
// - T: sequency rows F̂ⱼ = ŝⱼ·L_bⱼ[cⱼ] (bⱼ bits, 0 for a dropped row) with
//   X̂ = Rot_G·F̂·Rot_d + 1mᵀ. Its G logits are Rot_G·r + q·m with rⱼ = q′·F̂ⱼ (one G-point
//   transform of the row dots); its values add (Rot_G·p)ᵀ·F̂ to the rotated-domain sum and
//   Σp to the weight of m.
// - A: per-token rows ŷₜ = ŝₜ·L[cₜ] (the first budget mod G tokens one bit wider), read as
//   in attention_rotated.wgsl: ŝₜ·q′·L[cₜ] (+ q·m if flagged), pₜ·ŷₜ and the flagged weight.
// The base file's rotate_queries rotates the queries first (the offsets of the powers and
// block scales are the same in both tables).
//
// Bindings (besides the base file's; 4 codes and 5 scales have the group layout here):
//   2 table  (storage, read): f32 [160], gpu::rotated::group_kernel_table (sixteenth powers
//            of two at 32, block scales at 48 + log2 n, the levels of b-bit rows at
//            64 + 2^b − 2)
//   4 codes  (storage, read): u32 [kv_heads][groups][budget·d/32]: rows (T) or tokens (A)
//            in order, each bⱼ·d bits, LSB first
//   5 scales (storage, read): u32 [kv_heads][groups][G/4] one byte per row or token
//            (A: flag ≪ 7 | scale code)
//   13 widths (storage, read): u32 [kv_heads][groups][⌈3G/32⌉] three-bit row widths bⱼ;
//            entry 0 = 7 marks mode A
// Params: width = d, group_size = G (at most 128), groups = groups per KV head of the planes,
//         code_bits = budget (code bits per group), segment_first (a multiple of G),
//         segment_len (whole groups), and the attention fields of the base file.
// Entry points and dispatch (y: the row quads of the tile, as in the base file):
//   group_scores — grid (groups of the segment, row quads) of VALUE_LANES: the lanes take the
//                  group's rows, then transform the row dots across tokens together;
//   group_values — grid (splits of the segment, row quads) of VALUE_LANES: group by group,
//                  the weights are staged (and transformed for T groups) in workgroup memory,
//                  lane ℓ sums elements 8ℓ…8ℓ+7 of every row; one rotation back per split.

@group(0) @binding(13) var<storage, read> widths: array<u32>;

const TOKEN_MODE: u32 = 7u;
const MAX_GROUP: u32 = 128u;

// Per row (T) or token (A) of the group: its dots with the quad's rows, or its weights.
var<workgroup> group_rows: array<vec4<f32>, MAX_GROUP>;
// Where the table keeps them.
const GROUP_LEVELS: u32 = 64u;
var<workgroup> token_mode: u32;
// The current group's row (T) or token (A) widths, and their decoded scales.
var<workgroup> row_bits: array<u32, MAX_GROUP>;
var<workgroup> row_scales: array<f32, MAX_GROUP>;


// The first word of group g's codes, and of its scales, for KV head kv_head.
fn group_record(kv_head: u32, g: u32) -> u32 {
    return (kv_head * params.groups + g) * (params.code_bits * params.width / 32u);
}

// Entry j of group g's width table.
fn width_entry(kv_head: u32, g: u32, j: u32) -> u32 {
    let per_group = (3u * params.group_size + 31u) / 32u;
    let base = (kv_head * params.groups + g) * per_group;
    let at = 3u * j;
    let shift = at % 32u;
    var raw = widths[base + at / 32u] >> shift;
    if (shift + 3u > 32u) {
        raw = raw | (widths[base + at / 32u + 1u] << (32u - shift));
    }
    return raw & 7u;
}

// The code width of token t of a group in mode A.
fn token_width(t: u32) -> u32 {
    let g = params.group_size;
    return params.code_bits / g + select(0u, 1u, t < params.code_bits % g);
}

// Scale byte j of group g.
fn group_scale_byte(kv_head: u32, g: u32, j: u32) -> u32 {
    let word = scales[(kv_head * params.groups + g) * (params.group_size / 4u) + j / 4u];
    return (word >> (8u * (j % 4u))) & 0xffu;
}

// Code bits from bit `at` of the codes at word `record` (up to 32 bits).
fn bits_at(record: u32, at: u32, count: u32) -> u32 {
    let shift = at % 32u;
    var raw = codes[record + at / 32u] >> shift;
    if (shift + count > 32u) {
        raw = raw | (codes[record + at / 32u + 1u] << (32u - shift));
    }
    return raw;
}

// group_rows[0..G) ← Rot_G·group_rows (the lanes take the butterflies of each stage).
// Starts and ends with a barrier.
fn rotate_group_rows(lane: u32) {
    let g = params.group_size;
    for (var span = 1u; span < MAX_GROUP; span = span * 2u) {
        workgroupBarrier();
        if (span < g) {
            for (var e = lane; e < g; e = e + VALUE_LANES) {
                if ((e & span) == 0u) {
                    let a = group_rows[e];
                    let b = group_rows[e + span];
                    group_rows[e] = a + b;
                    group_rows[e + span] = a - b;
                }
            }
        }
    }
    workgroupBarrier();
    for (var e = lane; e < g; e = e + VALUE_LANES) {
        group_rows[e] = group_rows[e] * table[BLOCK_SCALES + firstTrailingBit(g)];
    }
    workgroupBarrier();
}

// Stages the widths and decoded scales of group g's rows (T) or tokens (A) in workgroup
// memory, lane ℓ taking rows ℓ, ℓ + VALUE_LANES, … (callers place a barrier after it).
fn stage_rows(kv_head: u32, g: u32, per_token: bool, base: f32, lane: u32) {
    for (var j = lane; j < params.group_size; j = j + VALUE_LANES) {
        var b = 0u;
        if (per_token) {
            b = token_width(j);
        } else {
            b = width_entry(kv_head, g, j);
        }
        row_bits[j] = b;
        row_scales[j] = select(0.0, token_scale(group_scale_byte(kv_head, g, j), base), b > 0u);
    }
}

@compute @workgroup_size(VALUE_LANES)
fn group_scores(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let quad = quad_rows(workgroup.y);
    let kv_head = quad.kv_head;
    let d = params.width;
    let g_size = params.group_size;
    let g = params.segment_first / g_size + workgroup.x;
    for (var i = lane; i < d; i = i + VALUE_LANES) {
        var x = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j = j + 1u) {
            x[j] = rotated[quad.rows[j] * d + i] * quad.live[j];
        }
        shared_quad[i] = x;
    }
    load_levels(lane, GROUP_LEVELS, 30u);
    if (lane == 0u) {
        token_mode = select(0u, 1u, width_entry(kv_head, g, 0u) == TOKEN_MODE);
    }
    let per_token = workgroupUniformLoad(&token_mode) == 1u;
    var centre = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        centre[j] = centre_terms[quad.rows[j]];
    }
    let base = state_base(kv_head);
    let record = group_record(kv_head, g);
    stage_rows(kv_head, g, per_token, base, lane);
    workgroupBarrier();
    for (var j = lane; j < g_size; j = j + VALUE_LANES) {
        let b = row_bits[j];
        var dot = vec4<f32>(0.0);
        if (b > 0u) {
            var offset = 0u;
            for (var i = 0u; i < j; i = i + 1u) {
                offset = offset + row_bits[i] * d;
            }
            dot = row_scales[j] * stream_dot(record, offset, b, (1u << b) - 2u);
        }
        if (per_token && (group_scale_byte(kv_head, g, j) & FLAG_BIT) != 0u) {
            dot = dot + centre;
        }
        group_rows[j] = dot;
    }
    if (per_token) {
        workgroupBarrier();
    } else {
        rotate_group_rows(lane);
    }
    let stride = score_stride();
    let first = workgroup.x * g_size;
    for (var t = lane; t < g_size; t = t + VALUE_LANES) {
        let logits = group_rows[t] + select(vec4<f32>(0.0), centre, !per_token);
        for (var j = 0u; j < 4u; j = j + 1u) {
            if (quad.live[j] != 0.0) {
                weights[quad.rows[j] * stride + first + t] = logits[j];
            }
        }
    }
}

@compute @workgroup_size(VALUE_LANES)
fn group_values(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let split = workgroup.x;
    let quad = quad_rows(workgroup.y);
    let kv_head = quad.kv_head;
    let d = params.width;
    let g_size = params.group_size;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let stride = score_stride();
    let base = state_base(kv_head);
    let summing = lane < d / BLOCK;
    load_levels(lane, GROUP_LEVELS, 30u);
    var sums = BlockSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
                         vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // This lane's share of the weight of m (its tokens ℓ, ℓ + VALUE_LANES, … of each group):
    // every token of a T group, the flagged tokens of an A group.
    var centre_part = vec4<f32>(0.0);
    for (var start = first; start < end; start = start + g_size) {
        let g = (params.segment_first + start) / g_size;
        workgroupBarrier();
        if (lane == 0u) {
            token_mode = select(0u, 1u, width_entry(kv_head, g, 0u) == TOKEN_MODE);
        }
        let per_token = workgroupUniformLoad(&token_mode) == 1u;
        for (var t = lane; t < g_size; t = t + VALUE_LANES) {
            var p = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j = j + 1u) {
                p[j] = weights[quad.rows[j] * stride + start + t];
            }
            p = p * quad.live;
            group_rows[t] = p;
            let centred = !per_token || (group_scale_byte(kv_head, g, t) & FLAG_BIT) != 0u;
            centre_part = centre_part + select(vec4<f32>(0.0), p, centred);
        }
        stage_rows(kv_head, g, per_token, base, lane);
        if (per_token) {
            workgroupBarrier();
        } else {
            rotate_group_rows(lane);
        }
        let record = group_record(kv_head, g);
        if (summing) {
            var offset = 0u;
            for (var j = 0u; j < g_size; j = j + 1u) {
                let b = row_bits[j];
                if (b > 0u) {
                    let raw = bits_at(record, offset + lane * BLOCK * b, BLOCK * b);
                    let ws = group_rows[j] * row_scales[j];
                    add_block_levels(&sums, ws, raw, b, (1u << b) - 2u);
                }
                offset = offset + b * d;
            }
        }
    }
    lane_sums[lane] = centre_part;
    if (summing) {
        for (var k = 0u; k < BLOCK; k = k + 1u) {
            shared_quad[lane * BLOCK + k] = block_element(sums, k);
        }
    }
    rotate_shared_quad(lane);
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (quad.live[j] == 0.0) {
            continue;
        }
        let out = (quad.rows[j] * params.total_splits + params.split_offset + split) * d;
        var centre_weight = 0.0;
        for (var i = 0u; i < VALUE_LANES; i = i + 1u) {
            centre_weight = centre_weight + lane_sums[i][j];
        }
        for (var c = lane; c < d; c = c + VALUE_LANES) {
            partial[out + c] = shared_quad[c][j] + centre_weight * state_mean(kv_head, c);
        }
    }
}
