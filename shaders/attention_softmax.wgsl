// attention_softmax.wgsl — the split-local half of a numerically stable softmax
// (flash-decoding): for each (query row, split of the segment) the maximum m of the visible
// scores, the weights p = exp(score − m) written over the scores (0 where masked), and
// their sum l. The combine kernel rescales the splits by exp(m − max m).
//
// Bindings: 0 params (uniform Params: segment_start, segment_len, split_size, split_offset,
//           total_splits, rows_per_head, queries, row_offset,
//           invocations = tile rows · splits of the segment)
//           1 visible (storage, read): vec2<u32> [queries]: visible positions [lo, hi)
//           2 scores  (storage, read_write): f32 [tile rows][score_stride()]; the
//             padding after the segment's last token is set to 0
//           3 stats   (storage, read_write): vec2<f32> (m, l) [tile rows][total_splits]
// Dispatch: one invocation per (tile row, split); 2-D grid of WORKGROUP_SIZE.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> visible: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<vec2<f32>>;

const LOWEST: f32 = -0x1.fffffep+127f;

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
    let splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    let tile_row = index / splits;
    let split = index % splits;
    let r = query_row(tile_row);
    let range = visible[r.query];
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    let base = tile_row * score_stride();
    var m = LOWEST;
    for (var t = first; t < end; t = t + 1u) {
        let position = params.segment_start + t;
        if (position >= range.x && position < range.y) {
            m = max(m, scores[base + t]);
        }
    }
    var l = 0.0;
    for (var t = first; t < end; t = t + 1u) {
        let position = params.segment_start + t;
        var p = 0.0;
        if (position >= range.x && position < range.y) {
            p = exp(scores[base + t] - m);
        }
        scores[base + t] = p;
        l = l + p;
    }
    if (end == params.segment_len) {
        for (var t = end; t < score_stride(); t = t + 1u) {
            scores[base + t] = 0.0;
        }
    }
    stats[tile_row * params.total_splits + params.split_offset + split] = vec2<f32>(m, l);
}
