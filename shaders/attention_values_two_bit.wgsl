// attention_values_two_bit.wgsl — Σₜ pₜ·v̂ₜ over one split of a 2-bit value plane, eight
// channels per invocation (x̂ = code·scale + min, folded per group as
// scale·Σ p·code + min·Σ p).
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 8), rows = plane rows per KV
//           head (d per channel, tokens per token), group_size, groups, segment_len,
//           split_size, split_offset, total_splits, rows_per_head, queries, row_offset,
//           invocations = tile rows · splits · d/8)
//           1 weights   (storage, read): f32 [tile rows][segment_len]
//           2 codes     (storage, read): u32 [kv_heads][rows][groups][⌈2G/32⌉]
//           3 scale_min (storage, read): u32 [kv_heads][rows][groups], f16 scale + min
//           4 partial   (storage, read_write): f32 [tile rows][total_splits][d]
// Entry points:
//   per_channel — rows are channels, elements are the segment's tokens; splits hold whole
//                 groups.
//   per_token   — rows are the segment's tokens, elements are channels (KIVI values).
// Dispatch: one invocation per (tile row, split, 8-channel block); 2-D grid.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> scale_min: array<u32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

struct Slot {
    tile_row: u32,
    kv_head: u32,
    split: u32,
    octet: u32,
}

fn slot(index: u32) -> Slot {
    let octets = params.width / 8u;
    let splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    let tile_row = index / (octets * splits);
    return Slot(tile_row, query_row(tile_row).kv_head, (index / octets) % splits, index % octets);
}

fn store(s: Slot, acc: array<f32, 8>) {
    let out = (s.tile_row * params.total_splits + params.split_offset + s.split) * params.width + s.octet * 8u;
    for (var j = 0u; j < 8u; j = j + 1u) {
        partial[out + j] = acc[j];
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn per_channel(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let s = slot(index);
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let first = s.split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let row_weights = s.tile_row * params.segment_len;
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var start = first; start < end; start = start + g_size) {
        let group = start / g_size;
        var weight_sum = 0.0;
        for (var i = 0u; i < g_size; i = i + 1u) {
            weight_sum = weight_sum + weights[row_weights + start + i];
        }
        for (var j = 0u; j < 8u; j = j + 1u) {
            let record = (s.kv_head * params.rows + s.octet * 8u + j) * params.groups + group;
            var coded = 0.0;
            for (var i = 0u; i < g_size; i = i + 1u) {
                let word = codes[record * words + i / 16u];
                coded = coded + weights[row_weights + start + i] * f32((word >> (2u * (i % 16u))) & 3u);
            }
            let q = unpack2x16float(scale_min[record]);
            acc[j] = acc[j] + q.x * coded + q.y * weight_sum;
        }
    }
    store(s, acc);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn per_token(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let s = slot(index);
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let first_channel = s.octet * 8u;
    let group = first_channel / g_size;
    let within = first_channel % g_size;
    let first = s.split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var t = first; t < end; t = t + 1u) {
        let p = weights[s.tile_row * params.segment_len + t];
        if (p != 0.0) {
            let record = (s.kv_head * params.rows + t) * params.groups + group;
            let word = codes[record * words + within / 16u] >> (2u * (within % 16u));
            let q = unpack2x16float(scale_min[record]);
            for (var j = 0u; j < 8u; j = j + 1u) {
                acc[j] = acc[j] + p * (f32((word >> (2u * j)) & 3u) * q.x + q.y);
            }
        }
    }
    store(s, acc);
}
