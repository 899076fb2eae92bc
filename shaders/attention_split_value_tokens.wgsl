// attention_split_value_tokens.wgsl — 2-bit values per token over groups of G channels
// (`kivi2`), for attention_split_two_bit.wgsl: a value quad is one byte of a token's code
// word and the token's scale pair.
//
// Bindings: 10 value_codes [kv_heads][groups·G][group_count][⌈2G/32⌉], 11 value_scale_min
// [kv_heads][groups·G][group_count] (declared in _two_bit.wgsl).
// Params: group_count = value groups per token row (⌈d/G⌉); the value rows per KV head
// are groups·G (the key planes' capacity in tokens).

// Adds Σ p·v over `count` tokens of the tile for one channel quad to the 8 rows' sums, as
// exact_value_sums does (`at` the same).
fn two_bit_value_sums(
    sums: ptr<function, RowSums>,
    at: vec4<u32>,
    count: u32,
) {
    let g_size = params.group_size;
    let channel = 4u * at.w;
    let within = channel % g_size;
    let step = params.group_count;
    let first = (at.x * params.groups * g_size + at.y + at.z) * step + channel / g_size;
    let last = first + (max(count, 1u) - 1u) * step;
    let word = within / 16u;
    let shift = 2u * (within % 16u);
    for (var j = 0u; j < count; j = j + 4u) {
        let record = first + j * step;
        let v = mat4x4<f32>(
            two_bit_value_quad(record, word, shift),
            two_bit_value_quad(min(record + step, last), word, shift),
            two_bit_value_quad(min(record + 2u * step, last), word, shift),
            two_bit_value_quad(min(record + 3u * step, last), word, shift),
        );
        add_weighted(sums, v, (at.z + j) / 4u);
    }
}

// The four values of a quad from value record `record` (a token's channel group): the
// byte at bit `shift` of the record's code word `word`, and the record's scale and minimum.
fn two_bit_value_quad(record: u32, word: u32, shift: u32) -> vec4<f32> {
    let words = (2u * params.group_size + 31u) / 32u;
    let codes = value_codes[record * words + word] >> shift;
    let p = unpack2x16float(value_scale_min[record]);
    return two_bit_codes4(codes, 0u) * p.x + p.y;
}

// The sums are in the natural domain already.
fn finish_sums(kv_head: u32, local: u32, summed: bool, quad: u32) {}
