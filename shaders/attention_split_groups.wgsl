// attention_split_groups.wgsl — fused split-K decode attention straight from codes across
// tokens ("T2", src/packed/rotated_groups.rs: the default preset's keys and values), the
// row decoder of this format in the skeleton of attention_split.wgsl. One workgroup per
// (split of the segment, block of up to 8 query rows that share a KV head) decodes every
// key and value code once for all the block's rows, keeps the online softmax in workgroup
// memory and leaves (m, l) and Σ p·v for attention_combine.wgsl.
//
// The format (see attention_rotated_groups.wgsl): a group of G tokens is either
// - T: sequency rows F̂ⱼ = ŝⱼ·L_bⱼ[cⱼ] with X̂ = Rot_G·F̂·Rot_d + 1mᵀ: the logits are
//   Rot_G·r + q·m with rⱼ = q′·F̂ⱼ, the values add (Rot_G·p)ᵀ·F̂ and Σp times m; or
// - A: per-token rows ŷₜ = ŝₜ·L[cₜ], the logit ŝₜ·q′·L[cₜ] (+ q·m if flagged), the value
//   pₜ·ŷₜ (+ pₜ·m if flagged).
// Both are "rows" here: a row has a width b (0…5 bits per element), a scale ŝ and a kind.
//
// Bindings: 0 params (uniform Params: width = d (a multiple of 16, at most 256),
//             group_size = G (at most 128), groups = groups per KV head of both planes,
//             code_bits / value_code_bits = code bits per group of the keys / values,
//             segment_first (a multiple of G), segment_start, segment_len (whole groups),
//             split_size (a multiple of TILE_TOKENS), split_offset, total_splits,
//             rows_per_head, queries, row_offset, tile_rows)
//           1 table (uniform): vec4<f32> [40]: gpu::rotated::group_kernel_table (read here:
//             sixteenth powers of two at 32, block scales at 48 + log2 n; the levels are
//             the constants MUX_LEAVES_b)
//           2 visible (uniform): vec2<u32> [8192]: visible positions [lo, hi) per query
//             position (a uniform, so that the kernel stays within 10 storage buffers)
//           3 queries (storage, read): vec4<f32> [q_heads][queries][d/4], the call's query
//             (scaled by params.scale = 1/√d and rotated here)
//           4 states (uniform): u32 [2][kv_heads][d/2 + 1] as vec4<u32> [4096], the keys'
//             then the values' (params.kv_heads) per-head states (f16 means m, then the
//             f16 scale base)
//           5…7 key_codes, key_scales, key_widths (storage, read)
//           8…10 value_codes, value_scales, value_widths (storage, read): codes u32
//             [kv_heads][groups][budget·d/32]; scales u32 [kv_heads][groups][G/4], one
//             byte per row (flag ≪ 7 | scale code); widths u32 [kv_heads][groups][⌈3G/32⌉],
//             three bits per row, entry 0 = 7 marking an A group
//           11 outputs (storage, read_write): f32, the call's split outputs: Σ p·v
//             [tile rows][total_splits][d] from 0, (m, l) [tile rows][total_splits] from
//             params.stats_offset (what attention_combine.wgsl reads, as two bindings); for
//             a segment with STP refinements (params.stp ≠ 0), the masked logits
//             [tile rows][score_stride()] from params.stp, which the refinement pass
//             (attention_rotated_tokens.wgsl's refinement_sums) weighs against the
//             (m, l) pairs
//           12…14 the exact splits' segments and rows (_riders.wgsl)
// Storage buffers: 10 with the exact rows, what Chrome allows per shader stage.
// Dispatch: grid (splits of the segment, then the exact splits of up to two
// exact segments (the sinks, the window), row blocks: ⌈rows_per_head / 8⌉ per KV head the
// tile touches), 64 invocations; the exact splits run `exact_split` in this kernel's
// workgroup memory. Lane layout: a code row is read by L = d/16 lanes of CHUNK = 16
// elements each (its "chunk"), P = ⌊64 / L⌋ rows at a time (the lane's "phase"); every lane
// keeps its chunk of the 8 rotated queries (`block_queries`, _riders.wgsl: rotated here
// from the call's query) and of the 8 value sums in registers.
// Per tile of 128 tokens: stage the rows' widths, scales, first code bits and centre
// factors (`stage_phase`); key dots (the chunk's partial dots plus the row's share of the
// centre terms, summed over the row's L lanes by `row_dots`); the logits phase over (half of
// the query rows, group), four query rows per vec4: the G-point transform of T groups, the
// mask and the maxima; the rows' new maxima; the weights phase: e^(s − max), their sums, and
// the transform of T value groups; the rows' sums; Σ weight·scale·levels and the centre's
// weights into the registers. The files appended to this one (gpu::attention::
// rotated_groups::fused_kernel picks them): the row reads (`staged_row`, `row_weights`) and,
// for the portable kernel, `row_dots` from _portable.wgsl, or the row reads from
// _subgroup.wgsl and `row_dots` from _dots.wgsl or _dots8.wgsl; then `stage_phase`,
// `logits_phase` and `weights_phase` from _tasks.wgsl (any G), _tasks32.wgsl (G = 32) or
// _clusters.wgsl (G = 32 with subgroups); last _riders.wgsl (the query rows and the
// exact splits).
// At the split's end the phases' sums are added, rotated back (Rot_d) and given the
// centre's weight times m.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> table: array<vec4<f32>, 40>;
@group(0) @binding(2) var<uniform> visible: array<vec4<u32>, 4096>;
@group(0) @binding(3) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> states: array<vec4<u32>, 4096>;
@group(0) @binding(5) var<storage, read> key_codes: array<u32>;
@group(0) @binding(6) var<storage, read> key_scales: array<u32>;
@group(0) @binding(7) var<storage, read> key_widths: array<u32>;
@group(0) @binding(8) var<storage, read> value_codes: array<u32>;
@group(0) @binding(9) var<storage, read> value_scales: array<u32>;
@group(0) @binding(10) var<storage, read> value_widths: array<u32>;
@group(0) @binding(11) var<storage, read_write> outputs: array<f32>;

const LANES: u32 = 64u;
const CHUNK: u32 = 16u;
const TILE_TOKENS: u32 = 128u;
const LOWEST: f32 = -0x1.fffffep+127f;
const POWERS: u32 = 32u;
const BLOCK_SCALES: u32 = 48u;
const TOKEN_MODE: u32 = 7u;
const FLAG_BIT: u32 = 0x80u;
// The bit of a staged row's x that marks a sequency row of a T group.
const SEQUENCY_FLAG: u32 = 0x10000u;

// Per query row of the block: (tile row, lo, hi, live).
var<workgroup> block_rows: array<vec4<u32>, BLOCK_ROWS>;
// Per query row (component k of entry h: row 4h + k): the running maximum and sum, the
// factor that rescales the sums so far, the weight of the values' centre m (the phases'
// sums, at the split's end), and the row's key centre term q·m.
var<workgroup> row_max: array<vec4<f32>, 2>;
var<workgroup> row_sum: array<vec4<f32>, 2>;
var<workgroup> rescale: array<vec4<f32>, 2>;
var<workgroup> centre_weight: array<vec4<f32>, 2>;
var<workgroup> key_centre: array<vec4<f32>, 2>;
// [tile row][half h]: query rows 4h…4h+3's key dots of the row, then logits, weights and
// value-row weights (vec4s, so that the phases below read four query rows per load: on
// llvmpipe every load is a loop over the lanes).
var<workgroup> tile_weights: array<vec4<f32>, 256>;
// Per tile row of the key and of the value plane: (bits | first bit ≪ 8 | SEQUENCY_FLAG
// for a T group, first word, scale as bits, centre factor as bits); see stage_row.
var<workgroup> key_rows: array<vec4<u32>, TILE_TOKENS>;
var<workgroup> value_rows: array<vec4<u32>, TILE_TOKENS>;
// The chunks' partial dots (row_dots); per task of the logits and weights phases (half h,
// group) its maxima (at TASK_MAXIMA) and sums of weights (TASK_SUMS); at the split's end
// the phases' centre weights, then four query rows' value sums over d.
var<workgroup> exchange: array<vec4<f32>, 256>;
const TASK_MAXIMA: u32 = 0u;
const TASK_SUMS: u32 = 32u;

fn table_entry(i: u32) -> f32 {
    return table[i / 4u][i % 4u];
}

// Words of the key (values = false) or value plane's arrays.
fn code_word(values: bool, i: u32) -> u32 {
    if (values) {
        return value_codes[min(i, arrayLength(&value_codes) - 1u)];
    }
    return key_codes[min(i, arrayLength(&key_codes) - 1u)];
}

fn width_word(values: bool, i: u32) -> u32 {
    if (values) {
        return value_widths[i];
    }
    return key_widths[i];
}

fn scale_word(values: bool, i: u32) -> u32 {
    if (values) {
        return value_scales[i];
    }
    return key_scales[i];
}

fn state_word(values: bool, kv_head: u32, i: u32) -> u32 {
    let words = params.width / 2u + 1u;
    let at = (select(0u, params.kv_heads, values) + kv_head) * words + i;
    return states[at / 4u][at % 4u];
}

// Split `slot`'s (m, l) and its partial sum of channel e, in the split outputs.
fn store_stats(slot: u32, m: f32, l: f32) {
    outputs[params.stats_offset + 2u * slot] = m;
    outputs[params.stats_offset + 2u * slot + 1u] = l;
}

fn store_partial(slot: u32, e: u32, sum: f32) {
    outputs[slot * params.width + e] = sum;
}

// Code bits per group of a plane.
fn budget(values: bool) -> u32 {
    return select(params.code_bits, params.value_code_bits, values);
}

// Of group g's width table (three bits per entry, LSB first): entry 0 (the mode), entry j,
// and the sum of the entries below j, from the words up to entry j's (so that each row
// finds its first code bit on its own, with no pass over the group's rows).
fn width_prefix(values: bool, kv_head: u32, g: u32, j: u32) -> vec3<u32> {
    let base = (kv_head * params.groups + g) * ((3u * params.group_size + 31u) / 32u);
    let below = 3u * j;
    var first = 0u;
    var entry = 0u;
    var sum = 0u;
    for (var t = 0u; 32u * t < below + 3u; t = t + 1u) {
        let w = width_word(values, base + t);
        let lo = 32u * t;
        var prefix_bits = w;
        if (below < lo + 32u) {
            prefix_bits = w & ((1u << (below - min(below, lo))) - 1u);
        }
        sum = sum + weighted_count(prefix_bits, (2u * t) % 3u);
        if (t == 0u) {
            first = w & 7u;
        }
        if (below >= lo && below < lo + 32u) {
            entry = w >> (below - lo);
        }
        if (below < lo && below + 3u > lo) {
            entry = entry | (w << (lo - below));
        }
    }
    return vec3<u32>(first, entry & 7u, sum);
}

// The sum of the three-bit entries whose bits are set in `bits`, a word of the width table
// whose bit 0 is bit k (mod 3) of its entry: bit b weighs 2^((k + b) mod 3).
fn weighted_count(bits: u32, k: u32) -> u32 {
    return (countOneBits(bits & 0x49249249u) << k) + (countOneBits(bits & 0x92492492u) << ((k + 1u) % 3u))
        + (countOneBits(bits & 0x24924924u) << ((k + 2u) % 3u));
}

// ŝ = base·2^((e − 64)/8) for scale code e (0: a zero row), as the CPU reference decodes it.
fn row_scale(byte: u32, base: f32) -> f32 {
    let e = byte & ~FLAG_BIT;
    if (e == 0u) {
        return 0.0;
    }
    let m = 2i * (i32(e) - 64i);
    // 2^(m >> 4) (−8…7) built from its exponent bits: ldexp is a call per lane on llvmpipe.
    let power = bitcast<f32>(u32((m >> 4u) + 127i) << 23u);
    return (base * table_entry(POWERS + u32(m & 15i))) * power;
}

// Row j of group g of a plane whose scale base is `base`: (bits | first code bit (mod 32)
// ≪ 8 | SEQUENCY_FLAG in a T group, the word of its first code bit, scale as bits, centre
// factor as bits). The centre factor c puts the centre's share into the row's own term:
// the key logits get c·q·m from the row's dot and the value centre m the weight c·p. A
// token of an A group has c = 1 if flagged, else 0; in a T group, where every token is
// centred, sequency row 0 has c = √G and the others 0 (Rot_G's column 0 is 1/√G
// throughout, so c·x added to row 0 adds x to every token after the transform).
fn stage_row(values: bool, kv_head: u32, g: u32, j: u32, base: f32) -> vec4<u32> {
    let widths = width_prefix(values, kv_head, g, j);
    let sequency = widths.x != TOKEN_MODE;
    var code = token_code(values, j);
    if (sequency) {
        code = widths.yz;
    }
    let scales = scale_word(values, (kv_head * params.groups + g) * (params.group_size / 4u) + j / 4u);
    let byte = (scales >> (8u * (j % 4u))) & 0xffu;
    return row_record(values, kv_head, g, j, sequency, code, byte, base);
}

// Token j of a group in mode A: (its bits, the codes before it): ⌊b/G⌋ bits per code, one
// more for the first b mod G tokens.
fn token_code(values: bool, j: u32) -> vec2<u32> {
    let b = budget(values);
    let low = b >> firstTrailingBit(params.group_size);
    let extra = b & (params.group_size - 1u);
    return vec2<u32>(low + select(0u, 1u, j < extra), j * low + min(j, extra));
}

// The staged record of row j of group g (see stage_row) from its mode, (bits, codes before
// it) and scale byte.
fn row_record(values: bool, kv_head: u32, g: u32, j: u32, sequency: bool, code: vec2<u32>, byte: u32, base: f32) -> vec4<u32> {
    let bits = code.x;
    let offset = code.y * params.width;
    let word = (kv_head * params.groups + g) * (budget(values) * params.width / 32u) + offset / 32u;
    var centre = select(0.0, sqrt(f32(params.group_size)), j == 0u);
    if (!sequency) {
        centre = select(0.0, 1.0, (byte & FLAG_BIT) != 0u);
    }
    let scale_bits = bitcast<u32>(select(0.0, row_scale(byte, base), bits > 0u));
    let flag = select(0u, SEQUENCY_FLAG, sequency);
    return vec4<u32>(bits | ((offset % 32u) << 8u) | flag, word, scale_bits, bitcast<u32>(centre));
}

fn is_sequency(row: vec4<u32>) -> bool {
    return (row.x & SEQUENCY_FLAG) != 0u;
}

// The window of code bits that starts at bit `shift` (0 or 16) of word `word`: the CHUNK
// codes of a chunk (at most 80 bits).
fn code_window(values: bool, word: u32, shift: u32) -> vec3<u32> {
    let w0 = code_word(values, word);
    let w1 = code_word(values, word + 1u);
    let w2 = code_word(values, word + 2u);
    if (shift == 0u) {
        return vec3<u32>(w0, w1, w2);
    }
    return vec3<u32>((w0 >> shift) | (w1 << (32u - shift)), (w1 >> shift) | (w2 << (32u - shift)), w2 >> shift);
}

// The levels of the next four codes of `bits` (1…4) bits in `window`, which moves past them
// (they lie in its first word: 4 · bits ≤ 16). (Vectors and matrices rather than arrays
// indexed in loops: llvmpipe puts such arrays in scratch memory, one load per invocation.)
fn next_levels(window: ptr<function, vec3<u32>>, bits: u32, mux: LevelMux) -> vec4<f32> {
    let x = (*window).x;
    shift_window(window, 4u * bits);
    let top = 32u - bits;
    return vec4<f32>(mux_level(mux, x << top, bits), mux_level(mux, x << (top - bits), bits),
                     mux_level(mux, x << (top - 2u * bits), bits), mux_level(mux, x << (top - 3u * bits), bits));
}

// The level mux of a row: the magnitudes of the upper half of its width's levels, largest
// first and repeated to eight leaves (even leaves in `even`, odd ones in `odd`). The
// Lloyd-Max levels are symmetric (L[2^b − 1 − c] = −L[c]), so code c's level is ± the leaf
// at c's low bits, complemented in the upper half; the repetition makes the index bits at
// and above the width irrelevant. Three selects on the index bits instead of a table
// lookup per code (a lookup with a different index in every lane is a load per lane on
// llvmpipe, and serialized on GPUs' constant caches).
struct LevelMux {
    even: vec4<f32>,
    odd: vec4<f32>,
}

fn level_mux(bits: u32) -> LevelMux {
    let one = width_mux(MUX_LEAVES_1);
    let two = width_mux(MUX_LEAVES_2);
    let three = width_mux(MUX_LEAVES_3);
    let four = width_mux(MUX_LEAVES_4);
    let even = select(select(select(four.even, three.even, bits == 3u), two.even, bits == 2u), one.even, bits == 1u);
    let odd = select(select(select(four.odd, three.odd, bits == 3u), two.odd, bits == 2u), one.odd, bits == 1u);
    return LevelMux(even, odd);
}

// The leaves of widths 1…4: leaf k is the level of code 2^b − 1 − (k mod 2^(b−1)) of the
// Lloyd-Max levels of N(0, 1) (src/reference/lloyd_max.rs; shaders/tests.rs checks that
// they agree). Constants rather than the table, whose reads llvmpipe repeats for every row.
const MUX_LEAVES_1 = array<f32, 8>(0.7979, 0.7979, 0.7979, 0.7979, 0.7979, 0.7979, 0.7979, 0.7979);
const MUX_LEAVES_2 = array<f32, 8>(1.5104, 0.4528, 1.5104, 0.4528, 1.5104, 0.4528, 1.5104, 0.4528);
const MUX_LEAVES_3 = array<f32, 8>(2.1519, 1.3439, 0.7560, 0.2451, 2.1519, 1.3439, 0.7560, 0.2451);
const MUX_LEAVES_4 = array<f32, 8>(2.7326, 2.0690, 1.6180, 1.2562, 0.9423, 0.6568, 0.3881, 0.1284);

fn width_mux(leaves: array<f32, 8>) -> LevelMux {
    return LevelMux(vec4<f32>(leaves[0], leaves[2], leaves[4], leaves[6]), vec4<f32>(leaves[1], leaves[3], leaves[5], leaves[7]));
}

// The level of the code whose top bit is bit 31 of `u` (its bit i at bit 32 − bits + i).
// In the upper half (top bit set) the index bits are complemented, and the level is +leaf.
fn mux_level(mux: LevelMux, u: u32, bits: u32) -> f32 {
    let t = u ^ bitcast<u32>(bitcast<i32>(u) >> 31u);
    let pair = select(mux.even, mux.odd, bitcast<i32>(t << ((bits + 31u) & 31u)) < 0i);
    let quad = select(pair.xz, pair.yw, bitcast<i32>(t << ((bits + 30u) & 31u)) < 0i);
    let magnitude = select(quad.x, quad.y, bitcast<i32>(t << ((bits + 29u) & 31u)) < 0i);
    return bitcast<f32>(bitcast<u32>(magnitude) ^ (~u & 0x80000000u));
}

fn shift_window(window: ptr<function, vec3<u32>>, bits: u32) {
    let w = *window;
    *window = vec3<u32>((w.x >> bits) | (w.y << (32u - bits)), (w.y >> bits) | (w.z << (32u - bits)), w.z >> bits);
}

// The chunk's levels of a staged row (bits > 0): channels 4k…4k+3 in component k's vec4.
fn chunk_levels(values: bool, row: vec4<u32>, lane_chunk: u32) -> mat4x4<f32> {
    let bits = row.x & 0xffu;
    let bit = ((row.x >> 8u) & 0xffu) + lane_chunk * CHUNK * bits;
    var window = code_window(values, row.y + bit / 32u, bit % 32u);
    let mux = level_mux(bits);
    let l0 = next_levels(&window, bits, mux);
    let l1 = next_levels(&window, bits, mux);
    let l2 = next_levels(&window, bits, mux);
    let l3 = next_levels(&window, bits, mux);
    return mat4x4<f32>(l0, l1, l2, l3);
}

// The rotated query rows of the block for a lane's chunk (its first channel c0): column j
// of low_k holds channel c0 + 4k + j of rows 0–3, of high_k of rows 4–7. `block_queries`
// (the _riders file) returns them and leaves the rows' key centre terms in
// key_centre.
struct BlockQueries {
    low_0: mat4x4<f32>,
    low_1: mat4x4<f32>,
    low_2: mat4x4<f32>,
    low_3: mat4x4<f32>,
    high_0: mat4x4<f32>,
    high_1: mat4x4<f32>,
    high_2: mat4x4<f32>,
    high_3: mat4x4<f32>,
}

// m with each column's components multiplied by f's (the rows' rescale factors).
fn rows_scaled(m: mat4x4<f32>, f: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(m[0] * f, m[1] * f, m[2] * f, m[3] * f);
}

// w ⊗ l: column j is w · l[j] (the rows' weights times channel j's level).
fn outer(w: vec4<f32>, l: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * l.x, w * l.y, w * l.z, w * l.w);
}

// exchange[first…first+4) += the columns of m.
fn add_columns(first: u32, m: mat4x4<f32>) {
    exchange[first] = exchange[first] + m[0];
    exchange[first + 1u] = exchange[first + 1u] + m[1];
    exchange[first + 2u] = exchange[first + 2u] + m[2];
    exchange[first + 3u] = exchange[first + 3u] + m[3];
}

// The entry of tile row r for query rows 4h…4h+3 (see tile_weights).
fn weight_index(r: u32, h: u32) -> u32 {
    return 2u * r + h;
}

// The butterflies of spans 1 and 2 on four consecutive entries (the matrix's columns).
fn butterflies_4(a: mat4x4<f32>) -> mat4x4<f32> {
    let b0 = a[0] + a[1];
    let b1 = a[0] - a[1];
    let b2 = a[2] + a[3];
    let b3 = a[2] - a[3];
    return mat4x4<f32>(b0 + b2, b1 + b3, b0 - b2, b1 - b3);
}

fn entries_4(first: u32, h: u32) -> mat4x4<f32> {
    return mat4x4<f32>(tile_weights[weight_index(first, h)], tile_weights[weight_index(first + 1u, h)],
                       tile_weights[weight_index(first + 2u, h)], tile_weights[weight_index(first + 3u, h)]);
}

fn store_entries_4(first: u32, h: u32, m: mat4x4<f32>) {
    tile_weights[weight_index(first, h)] = m[0];
    tile_weights[weight_index(first + 1u, h)] = m[1];
    tile_weights[weight_index(first + 2u, h)] = m[2];
    tile_weights[weight_index(first + 3u, h)] = m[3];
}

// The query rows a task serves (four of them: 4h…4h+3) and their visible positions.
struct TaskRows {
    lo: vec4<u32>,
    hi: vec4<u32>,
    live: vec4<bool>,
}

fn task_rows(h: u32) -> TaskRows {
    let i0 = block_rows[4u * h];
    let i1 = block_rows[4u * h + 1u];
    let i2 = block_rows[4u * h + 2u];
    let i3 = block_rows[4u * h + 3u];
    return TaskRows(vec4<u32>(i0.y, i1.y, i2.y, i3.y), vec4<u32>(i0.z, i1.z, i2.z, i3.z),
                    vec4<u32>(i0.w, i1.w, i2.w, i3.w) == vec4<u32>(1u));
}

// The logits of four query rows at `position` (LOWEST where the rows do not see it).
fn masked(logit: vec4<f32>, rows: TaskRows, position: u32) -> vec4<f32> {
    let at = vec4<u32>(position);
    return select(vec4<f32>(LOWEST), logit, rows.live & (at >= rows.lo) & (at < rows.hi));
}

// m's four entries (tile rows first…first+3, the first at `position`) masked.
fn masked_4(m: mat4x4<f32>, rows: TaskRows, position: u32) -> mat4x4<f32> {
    return mat4x4<f32>(masked(m[0], rows, position), masked(m[1], rows, position + 1u),
                       masked(m[2], rows, position + 2u), masked(m[3], rows, position + 3u));
}

fn max_4(m: mat4x4<f32>) -> vec4<f32> {
    return max(max(m[0], m[1]), max(m[2], m[3]));
}

// The weights e^(s − top) of four logits (0 where masked).
fn weights_4(m: mat4x4<f32>, top: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(weight(m[0], top), weight(m[1], top), weight(m[2], top), weight(m[3], top));
}

fn weight(s: vec4<f32>, top: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp(s - top), s > vec4<f32>(LOWEST));
}

fn sum_4(m: mat4x4<f32>) -> vec4<f32> {
    return (m[0] + m[1]) + (m[2] + m[3]);
}

// Four query rows' dots with a chunk's levels l (column k: channels 4k…4k+3), the rows'
// queries in q0…q3 (query_block).
fn chunk_dot(l: mat4x4<f32>, q0: mat4x4<f32>, q1: mat4x4<f32>, q2: mat4x4<f32>, q3: mat4x4<f32>) -> vec4<f32> {
    return q0 * l[0] + q1 * l[1] + q2 * l[2] + q3 * l[3];
}

// exchange[0..d) ← exchange·Rot_d for four query rows at once (the butterflies of every
// power-of-two block of d, then each block's 1/√n). Starts and ends with a barrier.
fn rotate_exchange(local: u32) {
    let d = params.width;
    for (var span = 1u; span < 256u; span = span * 2u) {
        workgroupBarrier();
        for (var e = local; e < d; e = e + LANES) {
            let block = block_of(e, d);
            if (span < block.y && ((e - block.x) & span) == 0u) {
                let a = exchange[e];
                let b = exchange[e + span];
                exchange[e] = a + b;
                exchange[e + span] = a - b;
            }
        }
    }
    workgroupBarrier();
    for (var e = local; e < d; e = e + LANES) {
        exchange[e] = exchange[e] * table_entry(BLOCK_SCALES + firstTrailingBit(block_of(e, d).y));
    }
    workgroupBarrier();
}

// Stages the `count` rows of the tile whose first group is `first_group` in both planes, a
// row per invocation at a time (`bases`: the planes' scale bases).
fn stage_rows(local: u32, count: u32, first_group: u32, kv_head: u32, bases: vec2<f32>) {
    let g_shift = firstTrailingBit(params.group_size);
    for (var r = local; r < count; r = r + LANES) {
        let g = first_group + (r >> g_shift);
        let j = r & (params.group_size - 1u);
        key_rows[r] = stage_row(false, kv_head, g, j, bases.x);
        value_rows[r] = stage_row(true, kv_head, g, j, bases.y);
    }
}

// The tile's logits (tile_weights after the logits phase) into the outputs from f32 index
// params.stp, [tile rows][score_stride()] by the segment's tokens, for the STP refinement
// pass that follows a segment with refinements (see the header).
fn store_logits(local: u32, tile: u32, count: u32) {
    for (var e = local; e < 2u * count; e = e + LANES) {
        let r = e >> 1u;
        let h = e & 1u;
        let logits = tile_weights[weight_index(r, h)];
        for (var k = 0u; k < 4u; k = k + 1u) {
            let info = block_rows[4u * h + k];
            if (info.w == 1u) {
                outputs[params.stp + info.x * score_stride() + tile + r] = logits[k];
            }
        }
    }
}

@compute @workgroup_size(LANES)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let d = params.width;
    // G is a power of two (8…128): shifts, not divisions (which llvmpipe does one lane at a
    // time).
    let g_shift = firstTrailingBit(params.group_size);
    let split = workgroup.x;
    let kv_head = block_kv_head(workgroup.y);
    if (local < BLOCK_ROWS) {
        let tile_row = block_tile_row(workgroup.y, local);
        var info = vec4<u32>(0u);
        if (tile_row != NO_TILE_ROW) {
            let query = query_row(tile_row).query;
            let pair = visible[query / 2u];
            let range = select(pair.xy, pair.zw, query % 2u == 1u);
            info = vec4<u32>(tile_row, range.x, range.y, 1u);
        }
        block_rows[local] = info;
        row_max[local >> 2u][local & 3u] = LOWEST;
        row_sum[local >> 2u][local & 3u] = 0.0;
    }
    workgroupBarrier();
    // Workgroups past the segment's own splits take the exact splits (sinks, window).
    let own_splits = (params.segment_len + params.split_size - 1u) / params.split_size;
    if (split >= own_splits) {
        exact_split(local, kv_head, split - own_splits);
        return;
    }
    // This lane's chunk of a code row and its phase (the rows it takes); lanes past the
    // last phase only join the barriers and the shared steps.
    // (Quotients by L in f32: integer division by a value not known when the shader is
    // compiled is a loop over the lanes on llvmpipe, and its compiler repeats it in the
    // loops below. Exact: the dividends are at most 64 and L at most 16, so n + ½ is at
    // least 1/32 from a multiple of L.)
    let row_lanes = d / CHUNK;
    let phases = u32((f32(LANES) + 0.5) / f32(row_lanes));
    let phase = u32((f32(local) + 0.5) / f32(row_lanes));
    let lane_chunk = local - phase * row_lanes;
    let in_phase = phase < phases;
    // The chunk's rotated queries and value sums, as matrices whose column j holds channel
    // 4k + j of the chunk for query rows 0–3 (…_low_k) or 4–7 (…_high_k).
    let c0 = lane_chunk * CHUNK;
    let queries_of_chunk = block_queries(local, kv_head, c0);
    let q_low_0 = queries_of_chunk.low_0;
    let q_low_1 = queries_of_chunk.low_1;
    let q_low_2 = queries_of_chunk.low_2;
    let q_low_3 = queries_of_chunk.low_3;
    let q_high_0 = queries_of_chunk.high_0;
    let q_high_1 = queries_of_chunk.high_1;
    let q_high_2 = queries_of_chunk.high_2;
    let q_high_3 = queries_of_chunk.high_3;
    // The key centre terms q·m of query rows 0–3 and 4–7, and the running weights of the
    // value centre m (every lane keeps its rows'; the rows' first chunks count).
    let key_centre_low = key_centre[0];
    let key_centre_high = key_centre[1];
    var centre_low = vec4<f32>(0.0);
    var centre_high = vec4<f32>(0.0);
    let zero = mat4x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var s_low_0 = zero;
    var s_low_1 = zero;
    var s_low_2 = zero;
    var s_low_3 = zero;
    var s_high_0 = zero;
    var s_high_1 = zero;
    var s_high_2 = zero;
    var s_high_3 = zero;

    // The planes' scale bases (f16 after the means in each KV head's state).
    let key_base = unpack2x16float(state_word(false, kv_head, d / 2u)).x;
    let value_base = unpack2x16float(state_word(true, kv_head, d / 2u)).x;
    let first = split * params.split_size;
    let end = min(first + params.split_size, params.segment_len);
    for (var tile = first; tile < end; tile = tile + TILE_TOKENS) {
        let count = min(TILE_TOKENS, end - tile);
        let tile_groups = count >> g_shift;
        let first_group = (params.segment_first + tile) >> g_shift;
        // Stage the rows of both planes (stage_phase, from the phases file).
        stage_phase(local, count, first_group, kv_head, vec2<f32>(key_base, value_base));
        workgroupBarrier();

        // Key dots: row r = first_row + phase; `row_dots` sums the chunks into tile_weights.
        for (var first_row = 0u; first_row < count; first_row = first_row + phases) {
            let r = first_row + phase;
            var low = vec4<f32>(0.0);
            var high = vec4<f32>(0.0);
            let row = staged_row(false, min(r, count - 1u), lane_chunk);
            if (in_phase && r < count) {
                if ((row.x & 0xffu) > 0u) {
                    let l = chunk_levels(false, row, lane_chunk);
                    low = chunk_dot(l, q_low_0, q_low_1, q_low_2, q_low_3) * bitcast<f32>(row.z);
                    high = chunk_dot(l, q_high_0, q_high_1, q_high_2, q_high_3) * bitcast<f32>(row.z);
                }
                // The row's share of the centre terms, on its first chunk (row_dots adds
                // the chunks).
                let centre = select(0.0, bitcast<f32>(row.w), lane_chunk == 0u);
                low = low + key_centre_low * centre;
                high = high + key_centre_high * centre;
            }
            row_dots(local, phase, phases, first_row, count, low, high);
        }
        workgroupBarrier();

        // Logits, a task per (half h of the query rows, group): T groups transformed across
        // tokens, the mask; each task's maxima. (The centre terms came with the key dots.)
        logits_phase(local, tile, tile_groups);
        workgroupBarrier();
        if (params.stp != 0u) {
            store_logits(local, tile, count);
        }

        // The rows' new running maxima and the factors that rescale the sums so far.
        if (local < 2u) {
            let before = row_max[local];
            var top = before;
            for (var group = 0u; group < tile_groups; group = group + 1u) {
                top = max(top, exchange[TASK_MAXIMA + 2u * group + local]);
            }
            row_max[local] = top;
            rescale[local] = select(vec4<f32>(1.0), exp(before - top), before > vec4<f32>(LOWEST));
        }
        workgroupBarrier();

        // Weights, a task per (half, group): p = e^(s − max) and each task's sums, then T
        // groups' weights transformed across tokens (the value sums multiply them by the row
        // scales).
        weights_phase(local, tile_groups);
        workgroupBarrier();

        // The rows' running sums.
        if (local < 2u) {
            var sum = vec4<f32>(0.0);
            for (var group = 0u; group < tile_groups; group = group + 1u) {
                sum = sum + exchange[TASK_SUMS + 2u * group + local];
            }
            row_sum[local] = row_sum[local] * rescale[local] + sum;
        }
        // Σ weight · scale · levels over this lane's rows of the tile, for its chunk.
        if (in_phase) {
            let low_factor = rescale[0];
            let high_factor = rescale[1];
            s_low_0 = rows_scaled(s_low_0, low_factor);
            s_low_1 = rows_scaled(s_low_1, low_factor);
            s_low_2 = rows_scaled(s_low_2, low_factor);
            s_low_3 = rows_scaled(s_low_3, low_factor);
            s_high_0 = rows_scaled(s_high_0, high_factor);
            s_high_1 = rows_scaled(s_high_1, high_factor);
            s_high_2 = rows_scaled(s_high_2, high_factor);
            s_high_3 = rows_scaled(s_high_3, high_factor);
            centre_low = centre_low * low_factor;
            centre_high = centre_high * high_factor;
            for (var r = phase; r < count; r = r + phases) {
                let row = staged_row(true, r, lane_chunk);
                let p_low = row_weights(r, 0u, lane_chunk);
                let p_high = row_weights(r, 1u, lane_chunk);
                centre_low = centre_low + p_low * bitcast<f32>(row.w);
                centre_high = centre_high + p_high * bitcast<f32>(row.w);
                if ((row.x & 0xffu) > 0u) {
                    let l = chunk_levels(true, row, lane_chunk);
                    let scale = bitcast<f32>(row.z);
                    let w_low = p_low * scale;
                    let w_high = p_high * scale;
                    s_low_0 = s_low_0 + outer(w_low, l[0]);
                    s_low_1 = s_low_1 + outer(w_low, l[1]);
                    s_low_2 = s_low_2 + outer(w_low, l[2]);
                    s_low_3 = s_low_3 + outer(w_low, l[3]);
                    s_high_0 = s_high_0 + outer(w_high, l[0]);
                    s_high_1 = s_high_1 + outer(w_high, l[1]);
                    s_high_2 = s_high_2 + outer(w_high, l[2]);
                    s_high_3 = s_high_3 + outer(w_high, l[3]);
                }
            }
        }
        workgroupBarrier();
    }

    // The centre weights: the phases' sums (from their first chunks).
    if (in_phase && lane_chunk == 0u) {
        exchange[2u * phase] = centre_low;
        exchange[2u * phase + 1u] = centre_high;
    }
    workgroupBarrier();
    if (local < 2u) {
        var sum = vec4<f32>(0.0);
        for (var p = 0u; p < phases; p = p + 1u) {
            sum = sum + exchange[2u * p + local];
        }
        centre_weight[local] = sum;
    }
    workgroupBarrier();
    // The phases' sums added in exchange (four query rows at a time), rotated back, plus the
    // centre's weight times the values' mean m.
    for (var h = 0u; h < 2u; h = h + 1u) {
        for (var e = local; e < d; e = e + LANES) {
            exchange[e] = vec4<f32>(0.0);
        }
        for (var p = 0u; p < phases; p = p + 1u) {
            workgroupBarrier();
            if (phase == p && h == 0u) {
                add_columns(c0, s_low_0);
                add_columns(c0 + 4u, s_low_1);
                add_columns(c0 + 8u, s_low_2);
                add_columns(c0 + 12u, s_low_3);
            }
            if (phase == p && h == 1u) {
                add_columns(c0, s_high_0);
                add_columns(c0 + 4u, s_high_1);
                add_columns(c0 + 8u, s_high_2);
                add_columns(c0 + 12u, s_high_3);
            }
        }
        rotate_exchange(local);
        for (var k = 0u; k < 4u; k = k + 1u) {
            let info = block_rows[4u * h + k];
            if (info.w == 1u) {
                let slot = info.x * params.total_splits + params.split_offset + split;
                let weight = centre_weight[h][k];
                for (var e = local; e < d; e = e + LANES) {
                    let pair = unpack2x16float(state_word(true, kv_head, e / 2u));
                    let mean = select(pair.x, pair.y, (e & 1u) == 1u);
                    store_partial(slot, e, exchange[e][k] + weight * mean);
                }
            }
        }
        workgroupBarrier();
    }
    if (local < BLOCK_ROWS && block_rows[local].w == 1u) {
        let slot = block_rows[local].x * params.total_splits + params.split_offset + split;
        store_stats(slot, row_max[local >> 2u][local & 3u], row_sum[local >> 2u][local & 3u]);
    }
}
