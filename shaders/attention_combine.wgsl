// attention_combine.wgsl — merges the splits of every segment into the attention output:
// out = Σₛ e^{mₛ−M}·accₛ / Σₛ e^{mₛ−M}·lₛ with M the largest split maximum of the row.
//
// Bindings: 0 params (uniform Params: width = d, total_splits, rows_per_head, queries,
//           row_offset, invocations = tile rows · d)
//           1 stats   (storage, read): vec2<f32> (m, l) [tile rows][total_splits]
//           2 partial (storage, read): f32 [tile rows][total_splits][d]
//           3 output  (storage, read_write): f32 [q_heads][queries][d]
// Dispatch: one invocation per (tile row, channel); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> partial: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let d = params.width;
    let tile_row = index / d;
    let channel = index % d;
    let base = tile_row * params.total_splits;
    var top = -0x1.fffffep+127f;
    for (var s = 0u; s < params.total_splits; s = s + 1u) {
        let st = stats[base + s];
        if (st.y > 0.0) {
            top = max(top, st.x);
        }
    }
    var total = 0.0;
    var acc = 0.0;
    for (var s = 0u; s < params.total_splits; s = s + 1u) {
        let st = stats[base + s];
        if (st.y > 0.0) {
            let w = exp(st.x - top);
            total = total + w * st.y;
            acc = acc + w * partial[(base + s) * d + channel];
        }
    }
    let r = query_row(tile_row);
    output[(r.q_head * params.queries + r.query) * d + channel] = acc / total;
}
