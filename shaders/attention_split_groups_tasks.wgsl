// attention_split_groups_tasks.wgsl — the logits and weights phases of
// attention_split_groups.wgsl (appended to it, after a row_dots file) for any group size G,
// as tasks of one invocation each: task t is half t & 1 of the query rows (four of them, one
// vec4) and group t >> 1 of the tile, 2 · tile_groups tasks in all; T groups are transformed
// by butterflies in workgroup memory. The host takes it where the G = 32 files do not apply
// (_tasks32 and _clusters: on llvmpipe even a branch never taken costs its code's masked
// run, so each group-size path is a file of its own).

fn stage_phase(local: u32, count: u32, first_group: u32, kv_head: u32, bases: vec2<f32>) {
    stage_rows(local, count, first_group, kv_head, bases);
}

fn logits_phase(local: u32, tile: u32, tile_groups: u32) {
    for (var task = local; task < 2u * tile_groups; task = task + LANES) {
        logits_task(task, tile);
    }
}

fn weights_phase(local: u32, tile_groups: u32) {
    for (var task = local; task < 2u * tile_groups; task = task + LANES) {
        weights_task(task);
    }
}

// The logits task `task` of the tile that starts at `tile` (half h = task & 1 of the query
// rows, group task >> 1) for any group size, in workgroup memory: the transform of a T
// group, the mask, the task's maxima into exchange.
fn logits_task(task: u32, tile: u32) {
    let g = params.group_size;
    let h = task & 1u;
    let first_row = (task >> 1u) << firstTrailingBit(g);
    let rows = task_rows(h);
    let position = params.segment_start + tile + first_row;
    if (is_sequency(key_rows[first_row])) {
        transform_group(first_row, h);
    }
    var top = vec4<f32>(LOWEST);
    for (var j = 0u; j < g; j = j + 1u) {
        let r = first_row + j;
        let logit = masked(tile_weights[weight_index(r, h)], rows, position + j);
        tile_weights[weight_index(r, h)] = logit;
        top = max(top, logit);
    }
    exchange[TASK_MAXIMA + task] = top;
}

// The weights task `task` for any group size: the weights of its logits and, for a T value
// group, their transform; the task's sums of weights into exchange.
fn weights_task(task: u32) {
    let g = params.group_size;
    let h = task & 1u;
    let first_row = (task >> 1u) << firstTrailingBit(g);
    let top = row_max[h];
    var sum = vec4<f32>(0.0);
    for (var j = 0u; j < g; j = j + 1u) {
        let r = first_row + j;
        let p = weight(tile_weights[weight_index(r, h)], top);
        tile_weights[weight_index(r, h)] = p;
        sum = sum + p;
    }
    if (is_sequency(value_rows[first_row])) {
        transform_group(first_row, h);
    }
    exchange[TASK_SUMS + task] = sum;
}

// Rot_G over the tile rows first…first + G of query rows 4h…4h+3 (one invocation, four
// query rows at once) by butterflies in workgroup memory: the kernel's path for group sizes
// other than 32 (G = 32 stays in registers: walsh_32).
fn transform_group(first: u32, h: u32) {
    let g = params.group_size;
    for (var span = 1u; span < g; span = span * 2u) {
        for (var e = 0u; e < g; e = e + 1u) {
            if ((e & span) == 0u) {
                let a = tile_weights[weight_index(first + e, h)];
                let b = tile_weights[weight_index(first + e + span, h)];
                tile_weights[weight_index(first + e, h)] = a + b;
                tile_weights[weight_index(first + e + span, h)] = a - b;
            }
        }
    }
    let norm = table_entry(BLOCK_SCALES + firstTrailingBit(g));
    for (var e = 0u; e < g; e = e + 1u) {
        tile_weights[weight_index(first + e, h)] = tile_weights[weight_index(first + e, h)] * norm;
    }
}
