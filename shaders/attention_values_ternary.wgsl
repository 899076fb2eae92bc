// attention_values_ternary.wgsl — Σₜ pₜ·v̂ₜ over one split of a ternary value plane for a
// quad of query rows that share a KV head, five channels (one trit byte) per invocation: each
// trit byte is decoded once for the four rows (GQA heads and query positions of the KV head),
// the trits of a group are summed with the rows' softmax weights and multiplied by the
// group's scale once. STP-protected tokens of the split come from their 2-bit plane
// (x̂ = code·scale + min).
//
// Bindings: 0 params (uniform Params: width = d, group_size, groups = ternary groups per
//           channel, blocks = protected-plane groups per channel, len = ternary elements
//           (offset of the protected positions in `positions`), stp (1: positions are
//           listed), segment_start, segment_len, split_offset, total_splits, rows_per_head,
//           queries, row_offset, tile_rows)
//           1 weights     (storage, read_write: the scores share the split outputs'
//                         buffer, which the kernel writes): vec4<f32>
//                         [tile rows][score_stride()/4]
//           2 split_elements (storage, read): vec4<u32> per split of the segment, read when
//             stp = 1: (first ternary element, count, first protected element, count)
//           3 codes       (storage, read): u32 [kv_heads][⌈d/5⌉][groups][⌈G/4⌉]
//           4 scales      (storage, read): u32 [kv_heads][⌈d/2⌉][groups], f16 pairs
//           5 kept_codes  (storage, read): u32 [kv_heads][d][blocks][⌈2G/32⌉]
//           6 kept_params (storage, read): u32 [kv_heads][d][blocks], f16 scale + min
//           7 positions   (storage, read): u32 [len + protected]: absolute positions of the
//             ternary elements, then of the protected elements (read when stp = 1)
//           8 partial     (storage, read_write): f32 [tile rows][total_splits][d]
// Dispatch: grid (splits of the segment, row quads): the KV heads the tile touches, from
//           row_offset / rows_per_head on, times ⌈rows_per_head/4⌉ quads each; quad j of a
//           KV head holds its rows 4j…4j+3 (rows outside the tile or the head are masked).
//           The VALUE_LANES invocations of a workgroup share its weights and take the
//           five-channel blocks in turn, in uniform control flow (idle invocations compute
//           without storing), so that a variant may use subgroups.
// The entry point and `aligned_run` come from a variant file appended to this one:
// attention_values_ternary_portable.wgsl or attention_values_ternary_subgroup.wgsl.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> split_elements: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> codes: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> kept_codes: array<u32>;
@group(0) @binding(6) var<storage, read> kept_params: array<u32>;
@group(0) @binding(7) var<storage, read> positions: array<u32>;
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;

fn channel_scale(kv_head: u32, channel: u32, group: u32) -> f32 {
    if (channel >= params.width) {
        return 0.0;
    }
    let half_rows = (params.width + 1u) / 2u;
    let pair = unpack2x16float(scales[(kv_head * half_rows + channel / 2u) * params.groups + group]);
    return select(pair.x, pair.y, (channel & 1u) == 1u);
}

// x̂ of element i of a protected-plane group for one channel (0 past the last channel).
fn kept_value(kv_head: u32, channel: u32, group: u32, i: u32) -> f32 {
    if (channel >= params.width) {
        return 0.0;
    }
    let words = (2u * params.group_size + 31u) / 32u;
    let record = (kv_head * params.width + channel) * params.blocks + group;
    let code = f32((kept_codes[record * words + i / 16u] >> (2u * (i % 16u))) & 3u);
    let q = unpack2x16float(kept_params[record]);
    return code * q.x + q.y;
}

// Per-channel sums of a block's five channels for the four rows of a quad (component r of
// each vec4 is row r).
struct TritSums {
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
    c4: vec4<f32>,
}

// The five trits (base-3 digits − 1) of byte `k` of a word: digits 0…3 and digit 4.
// qᵢ = ⌊byte / 3^(i+1)⌋ comes from exact float arithmetic (the offset 0.01 is below every
// fractional gap of a byte < 243), which is cheaper than integer division on CPU drivers.
struct Trits {
    low: vec4<f32>,
    high: f32,
}

fn trits(word: u32, k: u32) -> Trits {
    let byte = f32((word >> (8u * k)) & 0xffu);
    let q = floor(byte * vec4<f32>(1.0 / 3.0, 1.0 / 9.0, 1.0 / 27.0, 1.0 / 81.0) + vec4<f32>(0.01));
    let digits = vec4<f32>(byte, q.x, q.y, q.z) - 3.0 * q;
    return Trits(digits - vec4<f32>(1.0), q.w - 1.0);
}

// Adds the trits of one token, weighted per row by `p`, to `sums`.
fn add_token(sums: ptr<function, TritSums>, p: vec4<f32>, t: Trits) {
    (*sums).c0 = (*sums).c0 + p * t.low.x;
    (*sums).c1 = (*sums).c1 + p * t.low.y;
    (*sums).c2 = (*sums).c2 + p * t.low.z;
    (*sums).c3 = (*sums).c3 + p * t.low.w;
    (*sums).c4 = (*sums).c4 + p * t.high;
}

// Weights of element `element` of the segment (or listed element) for the quad's rows.
fn quad_weight(quad: Quad, element: u32, listed: bool) -> vec4<f32> {
    var position = params.segment_start + element;
    if (listed) {
        position = positions[element];
    }
    let offset = position - params.segment_start;
    var p = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        let at = quad.rows[j] * score_stride() + offset;
        p[j] = weights[at / 4u][at % 4u];
    }
    return p * quad.live;
}

// The kernel body; `lane` and `lanes` are the invocation's subgroup index and the
// subgroup size for the subgroup variant (0 and 1 in the portable one).
fn ternary_main(workgroup: vec3<u32>, local: u32, lane: u32, lanes: u32) {
    let d = params.width;
    let g_size = params.group_size;
    let blocks5 = (d + 4u) / 5u;
    let split = workgroup.x;
    let quad = quad_rows(workgroup.y);
    let kv_head = quad.kv_head;
    // Without STP list, the split's elements are its positions.
    let first = split * params.split_size;
    var elements = vec4<u32>(first, min(params.split_size, params.segment_len - first), 0u, 0u);
    if (params.stp == 1u) {
        elements = split_elements[split];
    }
    let record_words = (g_size + 3u) / 4u;
    let listed = params.stp == 1u;
    let end = elements.x + elements.y;
    for (var first_block = 0u; first_block < blocks5; first_block = first_block + VALUE_LANES) {
        let in_range = first_block + local < blocks5;
        let block = min(first_block + local, blocks5 - 1u);
        let c = 5u * block;
        var acc = TritSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        // Group by group, so that the only divisions by the group size are per group.
        var e = elements.x;
        while (e < end) {
            let group = e / g_size;
            let first_i = e % g_size;
            let count = min(end - e, g_size - first_i);
            let record = ((kv_head * blocks5 + block) * params.groups + group) * record_words;
            var sums = TritSums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
            // t = digit − 1 (subtracting Σ p afterwards would cancel catastrophically).
            if (listed || first_i % 4u != 0u || count % 4u != 0u) {
                var word = codes[record + first_i / 4u];
                for (var i = first_i; i < first_i + count; i = i + 1u) {
                    if (i % 4u == 0u) {
                        word = codes[record + i / 4u];
                    }
                    add_token(&sums, quad_weight(quad, e + i - first_i, listed), trits(word, i % 4u));
                }
            } else {
                sums = aligned_run(quad, e, record + first_i / 4u, count, lane, lanes);
            }
            acc.c0 = acc.c0 + sums.c0 * channel_scale(kv_head, c, group);
            acc.c1 = acc.c1 + sums.c1 * channel_scale(kv_head, c + 1u, group);
            acc.c2 = acc.c2 + sums.c2 * channel_scale(kv_head, c + 2u, group);
            acc.c3 = acc.c3 + sums.c3 * channel_scale(kv_head, c + 3u, group);
            acc.c4 = acc.c4 + sums.c4 * channel_scale(kv_head, c + 4u, group);
            e = e + count;
        }
        let kept_end = elements.z + elements.w;
        for (var e = elements.z; e < kept_end; e = e + 1u) {
            let p = quad_weight(quad, params.len + e, true);
            let group = e / g_size;
            let i = e % g_size;
            acc.c0 = acc.c0 + p * kept_value(kv_head, c, group, i);
            acc.c1 = acc.c1 + p * kept_value(kv_head, c + 1u, group, i);
            acc.c2 = acc.c2 + p * kept_value(kv_head, c + 2u, group, i);
            acc.c3 = acc.c3 + p * kept_value(kv_head, c + 3u, group, i);
            acc.c4 = acc.c4 + p * kept_value(kv_head, c + 4u, group, i);
        }
        if (!in_range) {
            continue;
        }
        for (var j = 0u; j < 4u; j = j + 1u) {
            if (quad.live[j] == 0.0) {
                continue;
            }
            let out = (quad.rows[j] * params.total_splits + params.split_offset + split) * d + c;
            partial[out] = acc.c0[j];
            if (c + 1u < d) {
                partial[out + 1u] = acc.c1[j];
            }
            if (c + 2u < d) {
                partial[out + 2u] = acc.c2[j];
            }
            if (c + 3u < d) {
                partial[out + 3u] = acc.c3[j];
            }
            if (c + 4u < d) {
                partial[out + 4u] = acc.c4[j];
            }
        }
    }
}
