// pack_exact.wgsl — stores exact tokens (sinks, residual window) as f16 pairs.
//
// Entry points (one invocation per output word; 2-D grid of WORKGROUP_SIZE workgroups):
//   main  — Params: width, rows = tokens, invocations = rows · ⌈width/2⌉
//           1 input  (storage, read): f32 rows [rows][width]
//           2 output (storage, read_write): u32 [rows][⌈width/2⌉], f16 pairs, low half first
//   heads — rows row_offset…row_offset+rows of every KV head of a window in one dispatch
//           (a cache's f32 window into the f16 rows attention reads). Params: width, rows,
//           kv_heads, len = the input's rows per head, rows_per_head = the output's,
//           row_offset, invocations = kv_heads · rows · ⌈width/2⌉
//           1 input  (storage, read): f32 [kv_heads][len][width]
//           2 output (storage, read_write): u32 [kv_heads][rows_per_head][⌈width/2⌉]

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<u32>;

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
    let words_per_row = (params.width + 1u) / 2u;
    let row = index / words_per_row;
    let c = 2u * (index % words_per_row);
    output[index] = packed_pair(row * params.width + c, c);
}

// The f16 pair of input[at] (channel c of its row) and the next channel, 0 past the row's
// end (an odd width).
fn packed_pair(at: u32, c: u32) -> u32 {
    var hi = 0.0;
    if (c + 1u < params.width) {
        hi = input[at + 1u];
    }
    return pack_f16_pair(input[at], hi);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn heads(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_index(workgroup, workgroups, local);
    if (index >= params.invocations) {
        return;
    }
    let words_per_row = (params.width + 1u) / 2u;
    let per_head = params.rows * words_per_row;
    let head = index / per_head;
    let within = index - head * per_head;
    let row = params.row_offset + within / words_per_row;
    let word = within % words_per_row;
    let c = 2u * word;
    let at = (head * params.len + row) * params.width + c;
    output[(head * params.rows_per_head + row) * words_per_row + word] = packed_pair(at, c);
}
