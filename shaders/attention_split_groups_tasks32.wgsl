// attention_split_groups_tasks32.wgsl — the logits and weights phases of
// attention_split_groups.wgsl (appended to it, after the portable row_dots file) for G = 32
// (the presets' group size) as tasks of one invocation each, as in _tasks.wgsl, with a
// task's 32 entries in registers: one load and one store per entry and phase, Rot_32 by
// butterflies on eight mat4x4s.

fn stage_phase(local: u32, count: u32, first_group: u32, kv_head: u32, bases: vec2<f32>) {
    stage_rows(local, count, first_group, kv_head, bases);
}

fn logits_phase(local: u32, tile: u32, tile_groups: u32) {
    for (var task = local; task < 2u * tile_groups; task = task + LANES) {
        let h = task & 1u;
        let first_row = (task >> 1u) << 5u;
        let position = params.segment_start + tile + first_row;
        exchange[TASK_MAXIMA + task] = logits_32(first_row, h, position, task_rows(h));
    }
}

fn weights_phase(local: u32, tile_groups: u32) {
    for (var task = local; task < 2u * tile_groups; task = task + LANES) {
        let h = task & 1u;
        exchange[TASK_SUMS + task] = weights_32((task >> 1u) << 5u, h, row_max[h]);
    }
}

// One task's 32 entries (a group of G = 32 tile rows, four query rows each) in registers:
// tile row first + 4i + k in column k of m_i. Each phase reads and writes them once (on
// llvmpipe every load and store is a loop over the lanes).
struct Rows32 {
    m0: mat4x4<f32>,
    m1: mat4x4<f32>,
    m2: mat4x4<f32>,
    m3: mat4x4<f32>,
    m4: mat4x4<f32>,
    m5: mat4x4<f32>,
    m6: mat4x4<f32>,
    m7: mat4x4<f32>,
}

fn load_32(first: u32, h: u32) -> Rows32 {
    return Rows32(entries_4(first, h), entries_4(first + 4u, h), entries_4(first + 8u, h), entries_4(first + 12u, h),
                  entries_4(first + 16u, h), entries_4(first + 20u, h), entries_4(first + 24u, h), entries_4(first + 28u, h));
}

fn store_32(first: u32, h: u32, x: Rows32) {
    store_entries_4(first, h, x.m0);
    store_entries_4(first + 4u, h, x.m1);
    store_entries_4(first + 8u, h, x.m2);
    store_entries_4(first + 12u, h, x.m3);
    store_entries_4(first + 16u, h, x.m4);
    store_entries_4(first + 20u, h, x.m5);
    store_entries_4(first + 24u, h, x.m6);
    store_entries_4(first + 28u, h, x.m7);
}

// Rot_G of G = 32 entries: spans 1 and 2 inside a matrix, spans 4, 8 and 16 between them,
// then 1/√32.
fn walsh_32(x: Rows32) -> Rows32 {
    let v0 = butterflies_4(x.m0);
    let v1 = butterflies_4(x.m1);
    let v2 = butterflies_4(x.m2);
    let v3 = butterflies_4(x.m3);
    let v4 = butterflies_4(x.m4);
    let v5 = butterflies_4(x.m5);
    let v6 = butterflies_4(x.m6);
    let v7 = butterflies_4(x.m7);
    let a0 = v0 + v1;
    let a1 = v0 - v1;
    let a2 = v2 + v3;
    let a3 = v2 - v3;
    let a4 = v4 + v5;
    let a5 = v4 - v5;
    let a6 = v6 + v7;
    let a7 = v6 - v7;
    let b0 = a0 + a2;
    let b1 = a1 + a3;
    let b2 = a0 - a2;
    let b3 = a1 - a3;
    let b4 = a4 + a6;
    let b5 = a5 + a7;
    let b6 = a4 - a6;
    let b7 = a5 - a7;
    let norm = table_entry(BLOCK_SCALES + 5u);
    return Rows32((b0 + b4) * norm, (b1 + b5) * norm, (b2 + b6) * norm, (b3 + b7) * norm,
                  (b0 - b4) * norm, (b1 - b5) * norm, (b2 - b6) * norm, (b3 - b7) * norm);
}

// The logits task of a group of G = 32 rows from `first` (tile rows; its first position
// `position`): the key dots, the transform of a T group, the mask; returns the maxima.
fn logits_32(first: u32, h: u32, position: u32, rows: TaskRows) -> vec4<f32> {
    var x = load_32(first, h);
    if (is_sequency(key_rows[first])) {
        x = walsh_32(x);
    }
    x = Rows32(masked_4(x.m0, rows, position), masked_4(x.m1, rows, position + 4u),
               masked_4(x.m2, rows, position + 8u), masked_4(x.m3, rows, position + 12u),
               masked_4(x.m4, rows, position + 16u), masked_4(x.m5, rows, position + 20u),
               masked_4(x.m6, rows, position + 24u), masked_4(x.m7, rows, position + 28u));
    store_32(first, h, x);
    return max(max(max(max_4(x.m0), max_4(x.m1)), max(max_4(x.m2), max_4(x.m3))),
               max(max(max_4(x.m4), max_4(x.m5)), max(max_4(x.m6), max_4(x.m7))));
}

// The weights task of a group of G = 32 rows: p = e^(s − top), the transform of a T value
// group; returns Σ p.
fn weights_32(first: u32, h: u32, top: vec4<f32>) -> vec4<f32> {
    let s = load_32(first, h);
    var p = Rows32(weights_4(s.m0, top), weights_4(s.m1, top), weights_4(s.m2, top), weights_4(s.m3, top),
                   weights_4(s.m4, top), weights_4(s.m5, top), weights_4(s.m6, top), weights_4(s.m7, top));
    let sum = ((sum_4(p.m0) + sum_4(p.m1)) + (sum_4(p.m2) + sum_4(p.m3)))
        + ((sum_4(p.m4) + sum_4(p.m5)) + (sum_4(p.m6) + sum_4(p.m7)));
    if (is_sequency(value_rows[first])) {
        p = walsh_32(p);
    }
    store_32(first, h, p);
    return sum;
}
