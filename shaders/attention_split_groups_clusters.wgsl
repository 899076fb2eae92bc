// attention_split_groups_clusters.wgsl — the staging, logits and weights phases of
// attention_split_groups.wgsl for G = 32 (the presets' group size) by clusters of 8
// consecutive invocations of a subgroup (appended after the subgroup row_dots file; the host
// picks this file only for G = 32 and subgroups of at least 8 invocations): cluster c takes
// task c (half c & 1 of the query rows, group c >> 1 of the tile) and its lane k the tile
// rows 4k…4k+3 as one mat4x4; Rot_G's spans 4, 8 and 16 cross the lanes by
// subgroupShuffleXor, and the task's maxima and sums are cluster reductions. Every
// invocation has work, where a task per invocation leaves 7 of 8 lane groups running the
// phase masked on llvmpipe. A file of its own: a branch to the tasks file's code, never
// taken, still cost its masked run (≈ 2.5 ms at 16k, BENCHMARKS.md).
// Needs the SUBGROUP feature.

// Staging by clusters too: clusters 0–3 take the key rows of groups 0–3 of the tile,
// clusters 4–7 the value rows, lane k rows 4k…4k+3 of its group: their four width entries
// (from at most two width words), the scale word of the four, and the codes before them by
// a prefix sum over the cluster (subgroupShuffleUp).
fn stage_phase(local: u32, count: u32, first_group: u32, kv_head: u32, bases: vec2<f32>) {
    let cluster = local >> 3u;
    let k = local & 7u;
    let values = cluster >= 4u;
    let group = cluster & 3u;
    let g = first_group + group;
    let live = (group << 5u) < count;
    // Width entries 4k…4k+3: bits 12k…12k+11 of the group's three width words.
    let first_word = (kv_head * params.groups + g) * 3u;
    let at = 12u * k;
    var mode = 0u;
    var low = 0u;
    var high = 0u;
    var scales = 0u;
    if (live) {
        mode = width_word(values, first_word) & 7u;
        low = width_word(values, first_word + (at >> 5u));
        high = width_word(values, first_word + min((at >> 5u) + 1u, 2u));
        scales = scale_word(values, (kv_head * params.groups + g) * 8u + k);
    }
    let shift = at & 31u;
    let entries = select(low >> shift, (low >> shift) | (high << (32u - shift)), shift > 20u);
    let b = vec4<u32>(entries & 7u, (entries >> 3u) & 7u, (entries >> 6u) & 7u, (entries >> 9u) & 7u);
    let own = b.x + b.y + b.z + b.w;
    let before = cluster_prefix(own, k) - own;
    let sequency = mode != TOKEN_MODE;
    let base = select(bases.x, bases.y, values);
    let before_rows = vec4<u32>(before, before + b.x, before + b.x + b.y, before + b.x + b.y + b.z);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let j = 4u * k + i;
        var code = token_code(values, j);
        if (sequency) {
            code = vec2<u32>(b[i], before_rows[i]);
        }
        let record = row_record(values, kv_head, g, j, sequency, code, (scales >> (8u * i)) & 0xffu, base);
        if (live && values) {
            value_rows[(group << 5u) + j] = record;
        }
        if (live && !values) {
            key_rows[(group << 5u) + j] = record;
        }
    }
}

// The inclusive prefix sum of x over the lanes 0…k of an 8-lane cluster.
fn cluster_prefix(x: u32, k: u32) -> u32 {
    var s = x;
    s = s + select(0u, subgroupShuffleUp(s, 1u), k >= 1u);
    s = s + select(0u, subgroupShuffleUp(s, 2u), k >= 2u);
    return s + select(0u, subgroupShuffleUp(s, 4u), k >= 4u);
}

// An invocation's part of the phases: its cluster's task (half h, the group's first tile
// row), its lane k in the cluster, its first tile row, and whether the tile has the group.
struct ClusterLane {
    task: u32,
    h: u32,
    first_row: u32,
    k: u32,
    row: u32,
    live: bool,
}

fn cluster_lane(local: u32, tile_groups: u32) -> ClusterLane {
    let task = local >> 3u;
    let first_row = (task >> 1u) << 5u;
    let k = local & 7u;
    return ClusterLane(task, task & 1u, first_row, k, first_row + 4u * k, task < 2u * tile_groups);
}

fn logits_phase(local: u32, tile: u32, tile_groups: u32) {
    let lane = cluster_lane(local, tile_groups);
    var x = mat4x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var sequency = false;
    if (lane.live) {
        x = entries_4(lane.row, lane.h);
        sequency = is_sequency(key_rows[lane.first_row]);
    }
    let transformed = walsh_lanes(x, lane.k);
    if (sequency) {
        x = transformed;
    }
    x = masked_4(x, task_rows(lane.h), params.segment_start + tile + lane.row);
    let top = cluster_max(max_4(x));
    if (lane.live) {
        store_entries_4(lane.row, lane.h, x);
        if (lane.k == 0u) {
            exchange[TASK_MAXIMA + lane.task] = top;
        }
    }
}

fn weights_phase(local: u32, tile_groups: u32) {
    let lane = cluster_lane(local, tile_groups);
    var p = mat4x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var sequency = false;
    if (lane.live) {
        p = weights_4(entries_4(lane.row, lane.h), row_max[lane.h]);
        sequency = is_sequency(value_rows[lane.first_row]);
    }
    let sum = cluster_sum(sum_4(p));
    let transformed = walsh_lanes(p, lane.k);
    if (sequency) {
        p = transformed;
    }
    if (lane.live) {
        store_entries_4(lane.row, lane.h, p);
        if (lane.k == 0u) {
            exchange[TASK_SUMS + lane.task] = sum;
        }
    }
}

// Rot_32 of the cluster's 32 entries, lane k holding entries 4k…4k+3.
fn walsh_lanes(x: mat4x4<f32>, k: u32) -> mat4x4<f32> {
    var v = butterflies_4(x);
    for (var lanes = 1u; lanes < 8u; lanes = lanes * 2u) {
        let other = mat4x4<f32>(subgroupShuffleXor(v[0], lanes), subgroupShuffleXor(v[1], lanes),
                                subgroupShuffleXor(v[2], lanes), subgroupShuffleXor(v[3], lanes));
        // The lower lane of a pair keeps a + b, the upper one a − b.
        let upper = (k & lanes) != 0u;
        v = mat4x4<f32>(select(v[0] + other[0], other[0] - v[0], upper), select(v[1] + other[1], other[1] - v[1], upper),
                        select(v[2] + other[2], other[2] - v[2], upper), select(v[3] + other[3], other[3] - v[3], upper));
    }
    return v * table_entry(BLOCK_SCALES + 5u);
}

fn cluster_max(x: vec4<f32>) -> vec4<f32> {
    var m = max(x, subgroupShuffleXor(x, 1u));
    m = max(m, subgroupShuffleXor(m, 2u));
    return max(m, subgroupShuffleXor(m, 4u));
}

fn cluster_sum(x: vec4<f32>) -> vec4<f32> {
    var m = x + subgroupShuffleXor(x, 1u);
    m = m + subgroupShuffleXor(m, 2u);
    return m + subgroupShuffleXor(m, 4u);
}
