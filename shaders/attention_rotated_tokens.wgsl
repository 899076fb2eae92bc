// attention_rotated_tokens.wgsl — appended to attention_rotated.wgsl (its bindings and
// helpers): attention from rotated per-token codes (src/packed/rotated.rs). With
// x̂ₜ = flagₜ·cₜ + (ŝₜ·L[codesₜ])·Rot:
// - a key logit is ŝₜ·Σᵢ q′ᵢ·L[cᵢ] plus q·m where the token is flagged;
// - values are summed in the rotated domain, Σₜ pₜ·ŝₜ·L[codesₜ], rotated back once per
//   (split, quad), and the flagged weight of each group times its centre is added.
// Bindings and Params: as in the base file (4 codes and 5 scales in the per-token layout).
// Entry points and dispatch (y: the row quads of the tile):
//   key_scores     — grid (⌈segment_len/WORKGROUP_SIZE⌉, row quads): one invocation per
//                    token, its code words read once, levels and the quad's rotated rows
//                    from workgroup memory (binds 2, 3, 4, 5, 9, 10, 11);
//   value_sums     — grid (splits of the segment, row quads) of VALUE_LANES: the lanes walk
//                    the split's tokens together, lane ℓ summing elements 8ℓ…8ℓ+7; the
//                    sums are rotated back once in workgroup memory and the group centres
//                    added (binds 2–7, 11, 12);
//   refinement_sums — grid (splits of the segment, row blocks: ⌈rows_per_head / 8⌉ per KV
//                    head, `row_blocks` on the host) of VALUE_LANES: the STP refinement rows
//                    (src/packed/stp.rs) of the split's protected tokens for two quads of a
//                    KV head's query rows (quad_pair), each code decoded once for both,
//                    summed as value_sums sums a split's tokens (rows = refinement rows per
//                    KV head, centred on the refinement state's mean), rotated back one
//                    quad after the other and added to the split's value sums (binds 2–5,
//                    11, 12, 13). After the separate passes (params.stp = 0) binding 11
//                    holds the softmax weights; after a fused or split dispatch that wrote
//                    its masked logits (params.stp ≠ 0), binding 11 reaches from the split
//                    outputs' (m, l) pairs [tile rows][total_splits] over the logits, which
//                    start at f32 index params.stp, and a protected token's weight is
//                    e^(s − m) against its split's m: no softmax pass runs.
// Binding 13 (refinement_sums only): u32 [splits][2] each split's first and end refinement
// row, then [refinement rows] each row's token position relative to the segment's start.

@group(0) @binding(13) var<storage, read> refinement_positions: array<u32>;

// The masked logit of a position a row does not see (attention_split.wgsl's and
// attention_split_groups.wgsl's).
const LOWEST: f32 = -0x1.fffffep+127f;

// The first four levels (all of them for codes of 1 or 2 bits), read once per invocation.
fn small_levels() -> vec4<f32> {
    return vec4<f32>(levels[0], levels[1], levels[2], levels[3]);
}

// The level of code c (its low bits) for codes of 1 or 2 bits: a select tree over `small`,
// cheaper than an indexed load on CPU drivers.
fn small_level(c: u32, small: vec4<f32>) -> f32 {
    let odd = (c & 1u) != 0u;
    let high = params.code_bits == 2u && (c & 2u) != 0u;
    return select(select(small.x, small.y, odd), select(small.z, small.w, odd), high);
}

// Σᵢ shared_quad[i]·L[cᵢ] over the codes of the record at word `record`, each code word read
// once (a 3-bit code may span two words).
fn quad_dot(record: u32) -> vec4<f32> {
    let d = params.width;
    let bits = params.code_bits;
    let small = small_levels();
    var acc = vec4<f32>(0.0);
    if (bits <= 2u) {
        // Whole codes per word, the level by select.
        let per_word = 32u / bits;
        var i = 0u;
        for (var w = record; i < d; w = w + 1u) {
            let word = codes[w];
            for (var k = 0u; k < per_word; k = k + 1u) {
                acc = acc + shared_quad[i + k] * small_level(word >> (k * bits), small);
            }
            i = i + per_word;
        }
        return acc;
    }
    return stream_dot(record, 0u, bits, 0u);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn key_scores(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let quad = quad_rows(workgroup.y);
    let d = params.width;
    for (var i = local; i < d; i = i + WORKGROUP_SIZE) {
        var x = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j = j + 1u) {
            x[j] = rotated[quad.rows[j] * d + i] * quad.live[j];
        }
        shared_quad[i] = x;
    }
    load_levels(local, 0u, 16u);
    workgroupBarrier();
    let t = workgroup.x * WORKGROUP_SIZE + local;
    if (t >= params.segment_len) {
        return;
    }
    let kv_head = quad.kv_head;
    let row = params.segment_first + t;
    let byte = scale_byte(kv_head, row);
    var logits = token_scale(byte, state_base(kv_head)) * quad_dot(code_record(kv_head, row));
    let flagged = (byte & FLAG_BIT) != 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (quad.live[j] != 0.0) {
            let tile_row = quad.rows[j];
            let centre = select(0.0, centre_terms[tile_row], flagged);
            weights[tile_row * score_stride() + t] = logits[j] + centre;
        }
    }
}

// The 8·bits code bits of element block `block` of the record at word `record`.
fn block_bits(record: u32, block: u32) -> u32 {
    let at = block * BLOCK * params.code_bits;
    let shift = at % 32u;
    var raw = codes[record + at / 32u] >> shift;
    if (shift + BLOCK * params.code_bits > 32u) {
        raw = raw | (codes[record + at / 32u + 1u] << (32u - shift));
    }
    return raw;
}

// Adds ws·L[c] for the 8 codes of `raw` (levels by select for 1 or 2 bits).
fn add_block(sums: ptr<function, BlockSums>, ws: vec4<f32>, raw: u32, small: vec4<f32>) {
    let b = params.code_bits;
    if (b <= 2u) {
        (*sums).e0 = (*sums).e0 + ws * small_level(raw, small);
        (*sums).e1 = (*sums).e1 + ws * small_level(raw >> b, small);
        (*sums).e2 = (*sums).e2 + ws * small_level(raw >> (2u * b), small);
        (*sums).e3 = (*sums).e3 + ws * small_level(raw >> (3u * b), small);
        (*sums).e4 = (*sums).e4 + ws * small_level(raw >> (4u * b), small);
        (*sums).e5 = (*sums).e5 + ws * small_level(raw >> (5u * b), small);
        (*sums).e6 = (*sums).e6 + ws * small_level(raw >> (6u * b), small);
        (*sums).e7 = (*sums).e7 + ws * small_level(raw >> (7u * b), small);
        return;
    }
    add_block_levels(sums, ws, raw, b, 0u);
}

// Writes (or, with `accumulate`, adds) the rotated-back sums plus the centre terms of the
// quad's live rows into split `split` of `partial`; lane ℓ takes elements ℓ, ℓ + VALUE_LANES, ….
fn store_quad_sums(quad: Quad, split: u32, lane: u32, accumulate: bool) {
    let d = params.width;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (quad.live[j] == 0.0) {
            continue;
        }
        let out = (quad.rows[j] * params.total_splits + params.split_offset + split) * d;
        for (var c = lane; c < d; c = c + VALUE_LANES) {
            let sum = shared_quad[c][j] + shared_centre[c][j];
            if (accumulate) {
                partial[out + c] = partial[out + c] + sum;
            } else {
                partial[out + c] = sum;
            }
        }
    }
}

@compute @workgroup_size(VALUE_LANES)
fn value_sums(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let split = workgroup.x;
    let quad = quad_rows(workgroup.y);
    let kv_head = quad.kv_head;
    let d = params.width;
    let g_size = params.group_size;
    // Every lane takes the same token at a time (so the token's weights and scale are one
    // load for all lanes), lane ℓ its elements 8ℓ…8ℓ+7; lanes past d/8 only help rotate.
    let block = lane;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let base = state_base(kv_head);
    let row_bases = quad.rows * score_stride();
    load_levels(lane, 0u, 16u);
    workgroupBarrier();
    let small = small_levels();
    var sums = BlockSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
                         vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var centres: array<vec4<f32>, BLOCK>;
    if (block < d / BLOCK) {
        let scale_base = kv_head * ((params.rows + 3u) / 4u);
        // Group by group (splits start at whole groups), four tokens at a time (groups
        // and splits start at multiples of 4), so that the four tokens share a scale word.
        var t = first;
        while (t < end) {
            let group = (params.segment_first + t) / g_size;
            let group_end = min(end, (group + 1u) * g_size - params.segment_first);
            var flagged = vec4<f32>(0.0);
            for (; t < group_end; t = t + 4u) {
                let row = params.segment_first + t;
                let scale_word = scales[scale_base + row / 4u];
                for (var k = 0u; k < 4u; k = k + 1u) {
                    if (t + k < group_end) {
                        let p = vec4<f32>(weights[row_bases.x + t + k], weights[row_bases.y + t + k],
                                          weights[row_bases.z + t + k], weights[row_bases.w + t + k]) * quad.live;
                        let byte = (scale_word >> (8u * k)) & 0xffu;
                        let raw = block_bits(code_record(kv_head, row + k), block);
                        add_block(&sums, p * token_scale(byte, base), raw, small);
                        flagged = flagged + select(vec4<f32>(0.0), p, (byte & FLAG_BIT) != 0u);
                    }
                }
            }
            for (var k = 0u; k < BLOCK; k = k + 1u) {
                centres[k] = centres[k] + flagged * centre_value(kv_head, group, block * BLOCK + k);
            }
        }
        for (var k = 0u; k < BLOCK; k = k + 1u) {
            let e = block * BLOCK + k;
            shared_quad[e] = block_element(sums, k);
            shared_centre[e] = centres[k];
        }
    }
    rotate_shared_quad(lane);
    store_quad_sums(quad, split, lane, false);
}

@compute @workgroup_size(VALUE_LANES)
fn refinement_sums(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let split = workgroup.x;
    let quads = quad_pair(workgroup.y);
    let kv_head = quads[0].kv_head;
    let d = params.width;
    let block = lane;
    let splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    let first = refinement_positions[2u * split];
    let end = refinement_positions[2u * split + 1u];
    let base = state_base(kv_head);
    let logits = params.stp != 0u;
    let bases_a = vec4<u32>(params.stp) + quads[0].rows * score_stride();
    let bases_b = vec4<u32>(params.stp) + quads[1].rows * score_stride();
    let max_a = refinement_maxima(quads[0], split, logits);
    let max_b = refinement_maxima(quads[1], split, logits);
    load_levels(lane, 0u, 16u);
    workgroupBarrier();
    let small = small_levels();
    var sums_a = BlockSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
                           vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var sums_b = sums_a;
    var flagged_a = vec4<f32>(0.0);
    var flagged_b = vec4<f32>(0.0);
    if (block < d / BLOCK) {
        for (var i = first; i < end; i = i + 1u) {
            let t = refinement_positions[2u * splits + i];
            let p_a = refinement_weights(bases_a + vec4<u32>(t), max_a, logits) * quads[0].live;
            let p_b = refinement_weights(bases_b + vec4<u32>(t), max_b, logits) * quads[1].live;
            let byte = scale_byte(kv_head, i);
            let s = token_scale(byte, base);
            add_block_pair(&sums_a, &sums_b, p_a * s, p_b * s, block_bits(code_record(kv_head, i), block), small);
            let flag = (byte & FLAG_BIT) != 0u;
            flagged_a = flagged_a + select(vec4<f32>(0.0), p_a, flag);
            flagged_b = flagged_b + select(vec4<f32>(0.0), p_b, flag);
        }
    }
    store_block_sums(sums_a, flagged_a, kv_head, block);
    rotate_shared_quad(lane);
    store_quad_sums(quads[0], split, lane, true);
    workgroupBarrier();
    store_block_sums(sums_b, flagged_b, kv_head, block);
    rotate_shared_quad(lane);
    store_quad_sums(quads[1], split, lane, true);
}

// Quads 2k and 2k + 1 of a KV head (k = index mod the head's pairs): the refinement pass
// serves both in one workgroup, so that each refinement code is decoded once for up to 8
// query rows. A second quad past the head's rows has no live row.
fn quad_pair(index: u32) -> array<Quad, 2> {
    let per_head = (params.rows_per_head + 3u) / 4u;
    let pairs = (per_head + 1u) / 2u;
    let k = 2u * (index % pairs);
    let first = (index / pairs) * per_head + k;
    let a = quad_rows(first);
    var b = quad_rows(first + 1u);
    if (k + 1u >= per_head) {
        b = Quad(a.kv_head, vec4<u32>(0u), vec4<f32>(0.0));
    }
    return array<Quad, 2>(a, b);
}

// Four rows' weights of one protected token, from the scores at `at`: the softmax weights,
// or with `logits` e^(s − m) against the rows' split maxima (0 where a row does not see it).
fn refinement_weights(at: vec4<u32>, split_max: vec4<f32>, logits: bool) -> vec4<f32> {
    let w = vec4<f32>(weights[at.x], weights[at.y], weights[at.z], weights[at.w]);
    return select(w, select(vec4<f32>(0.0), exp(w - split_max), w > vec4<f32>(LOWEST)), logits);
}

// Adds ws_a·L[c] to `a` and ws_b·L[c] to `b` for the 8 codes of `raw`, each level found
// once for both by select (refinement codes have 1 bit, stp::REFINEMENT_BITS, which
// gpu::attention::rotated checks is at most 2).
fn add_block_pair(a: ptr<function, BlockSums>, b: ptr<function, BlockSums>, ws_a: vec4<f32>, ws_b: vec4<f32>, raw: u32, small: vec4<f32>) {
    let bits = params.code_bits;
    let l = array<f32, 8>(small_level(raw, small), small_level(raw >> bits, small),
                          small_level(raw >> (2u * bits), small), small_level(raw >> (3u * bits), small),
                          small_level(raw >> (4u * bits), small), small_level(raw >> (5u * bits), small),
                          small_level(raw >> (6u * bits), small), small_level(raw >> (7u * bits), small));
    (*a).e0 = (*a).e0 + ws_a * l[0];
    (*a).e1 = (*a).e1 + ws_a * l[1];
    (*a).e2 = (*a).e2 + ws_a * l[2];
    (*a).e3 = (*a).e3 + ws_a * l[3];
    (*a).e4 = (*a).e4 + ws_a * l[4];
    (*a).e5 = (*a).e5 + ws_a * l[5];
    (*a).e6 = (*a).e6 + ws_a * l[6];
    (*a).e7 = (*a).e7 + ws_a * l[7];
    (*b).e0 = (*b).e0 + ws_b * l[0];
    (*b).e1 = (*b).e1 + ws_b * l[1];
    (*b).e2 = (*b).e2 + ws_b * l[2];
    (*b).e3 = (*b).e3 + ws_b * l[3];
    (*b).e4 = (*b).e4 + ws_b * l[4];
    (*b).e5 = (*b).e5 + ws_b * l[5];
    (*b).e6 = (*b).e6 + ws_b * l[6];
    (*b).e7 = (*b).e7 + ws_b * l[7];
}

// A lane's block sums and the flagged weights times the head's mean into shared_quad and
// shared_centre (lanes past the d/BLOCK blocks write nothing).
fn store_block_sums(sums: BlockSums, flagged: vec4<f32>, kv_head: u32, block: u32) {
    if (block < params.width / BLOCK) {
        for (var k = 0u; k < BLOCK; k = k + 1u) {
            let e = block * BLOCK + k;
            shared_quad[e] = block_element(sums, k);
            shared_centre[e] = flagged * state_mean(kv_head, e);
        }
    }
}

// The quad's rows' maxima m of split `split` from the (m, l) pairs at the start of binding
// 11, where the refinements weigh logits (zeros otherwise). A row outside the tile reads
// row 0's, against row 0's logits, so that its masked-out weights stay finite.
fn refinement_maxima(quad: Quad, split: u32, logits: bool) -> vec4<f32> {
    var m = vec4<f32>(0.0);
    if (logits) {
        let slot = params.split_offset + split;
        for (var j = 0u; j < 4u; j = j + 1u) {
            m[j] = weights[2u * (quad.rows[j] * params.total_splits + slot)];
        }
    }
    return m;
}
