// attention_values_two_bit.wgsl — Σₜ pₜ·v̂ₜ over one split of a 2-bit value plane, eight
// channels per invocation (x̂ = code·scale + min, folded per group as
// scale·Σ p·code + min·Σ p).
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = plane rows per KV
//           head (d per channel, tokens per token), group_size, groups, segment_len,
//           split_size, split_offset, total_splits, rows_per_head, queries, row_offset)
//           1 weights   (storage, read_write: the scores share the split outputs' buffer,
//                       which the kernel writes): vec4<f32> [tile rows][score_stride()/4]
//           2 codes     (storage, read): u32 [kv_heads][rows][groups][⌈2G/32⌉]
//           3 scale_min (storage, read): u32 [kv_heads][rows][groups], f16 scale + min
//           4 partial   (storage, read_write): f32 [tile rows][total_splits][d]
// Entry points:
//   per_channel — rows are channels, elements are the segment's tokens; splits hold whole
//                 groups. A group's weights are read once into registers (vec4s: arrays
//                 indexed at run time would live in memory on CPU drivers).
//   per_token   — rows are the segment's tokens, elements are channels (KIVI values).
// Dispatch: grid (splits of the segment, tile rows); the VALUE_LANES invocations of a
// workgroup share its weights (uniform loads) and take the 8-channel blocks in turn.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> weights: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> scale_min: array<u32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

fn store(tile_row: u32, split: u32, octet: u32, low: vec4<f32>, high: vec4<f32>) {
    let out = (tile_row * params.total_splits + params.split_offset + split) * params.width + octet * 8u;
    partial[out] = low.x;
    partial[out + 1u] = low.y;
    partial[out + 2u] = low.z;
    partial[out + 3u] = low.w;
    partial[out + 4u] = high.x;
    partial[out + 5u] = high.y;
    partial[out + 6u] = high.z;
    partial[out + 7u] = high.w;
}

// Codes 4i…4i+3 of a 2-bit word as floats.
fn codes4(word: u32, i: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word >> (8u * i)) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u));
}

// Weights 4i…4i+3 from float index `at` (a multiple of 4), zero from `count` on.
fn weight4(at: u32, i: u32, count: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), weights[at / 4u + i], 4u * i < count);
}

// Σ p·x̂ over one 32-token slice of a channel's group: scale·Σ p·code + min·Σ p.
fn channel_sum(w: array<vec4<f32>, 8>, weight_sum: f32, record: u32, words: u32, slice: u32, count: u32) -> f32 {
    let low = codes[record * words + 2u * slice];
    var high = 0u;
    if (count > 16u) {
        high = codes[record * words + 2u * slice + 1u];
    }
    let coded = dot(w[0], codes4(low, 0u)) + dot(w[1], codes4(low, 1u)) + dot(w[2], codes4(low, 2u))
        + dot(w[3], codes4(low, 3u)) + dot(w[4], codes4(high, 0u)) + dot(w[5], codes4(high, 1u))
        + dot(w[6], codes4(high, 2u)) + dot(w[7], codes4(high, 3u));
    let q = unpack2x16float(scale_min[record]);
    return q.x * coded + q.y * weight_sum;
}

@compute @workgroup_size(VALUE_LANES)
fn per_channel(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let split = workgroup.x;
    let tile_row = workgroup.y;
    let kv_head = query_row(tile_row).kv_head;
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let row_weights = tile_row * score_stride();
    for (var octet = local; octet < params.width / 8u; octet = octet + VALUE_LANES) {
        var low = vec4<f32>(0.0);
        var high = vec4<f32>(0.0);
        for (var start = first; start < end; start = start + g_size) {
            let group = start / g_size;
            for (var slice = 0u; slice * 32u < g_size; slice = slice + 1u) {
                let count = min(32u, g_size - slice * 32u);
                let at = row_weights + start + slice * 32u;
                let w = array<vec4<f32>, 8>(
                    weight4(at, 0u, count), weight4(at, 1u, count), weight4(at, 2u, count), weight4(at, 3u, count),
                    weight4(at, 4u, count), weight4(at, 5u, count), weight4(at, 6u, count), weight4(at, 7u, count),
                );
                let ones = vec4<f32>(1.0);
                let weight_sum = dot(w[0] + w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7], ones);
                let record = (kv_head * params.rows + octet * 8u) * params.groups + group;
                let stride = params.groups;
                low = low + vec4<f32>(
                    channel_sum(w, weight_sum, record, words, slice, count),
                    channel_sum(w, weight_sum, record + stride, words, slice, count),
                    channel_sum(w, weight_sum, record + 2u * stride, words, slice, count),
                    channel_sum(w, weight_sum, record + 3u * stride, words, slice, count),
                );
                high = high + vec4<f32>(
                    channel_sum(w, weight_sum, record + 4u * stride, words, slice, count),
                    channel_sum(w, weight_sum, record + 5u * stride, words, slice, count),
                    channel_sum(w, weight_sum, record + 6u * stride, words, slice, count),
                    channel_sum(w, weight_sum, record + 7u * stride, words, slice, count),
                );
            }
        }
        store(tile_row, split, octet, low, high);
    }
}

@compute @workgroup_size(VALUE_LANES)
fn per_token(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let split = workgroup.x;
    let tile_row = workgroup.y;
    let kv_head = query_row(tile_row).kv_head;
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    for (var octet = local; octet < params.width / 8u; octet = octet + VALUE_LANES) {
        let first_channel = octet * 8u;
        let group = first_channel / g_size;
        let within = first_channel % g_size;
        var low = vec4<f32>(0.0);
        var high = vec4<f32>(0.0);
        for (var t = first; t < end; t = t + 1u) {
            let at = tile_row * score_stride() + t;
            let p = weights[at / 4u][at % 4u];
            if (p != 0.0) {
                let record = (kv_head * params.rows + t) * params.groups + group;
                let word = codes[record * words + within / 16u] >> (2u * (within % 16u));
                let q = unpack2x16float(scale_min[record]);
                low = low + p * (codes4(word, 0u) * q.x + q.y);
                high = high + p * (codes4(word, 1u) * q.x + q.y);
            }
        }
        store(tile_row, split, octet, low, high);
    }
}
