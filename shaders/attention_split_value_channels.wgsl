// attention_split_value_channels.wgsl — 2-bit values per channel over groups of G ≥ 32
// tokens (`k2v2-channel`), for attention_split_two_bit.wgsl: the records have the keys'
// layout, so a quad's four channels take two code words and one scale pair each per 32
// tokens, and each 4-token step decodes a byte of each.
//
// Bindings: 10 value_codes [kv_heads][d][groups][⌈2G/32⌉], 11 value_scale_min
// [kv_heads][d][groups] (declared in _two_bit.wgsl).

// Adds Σ p·v over `count` tokens of the tile (a multiple of 32: whole groups, tiles and
// parts) for one channel quad to the 8 rows' sums, as exact_value_sums does (`at` the same).
fn two_bit_value_sums(
    sums: ptr<function, RowSums>,
    at: vec4<u32>,
    count: u32,
) {
    let g_size = params.group_size;
    let words = (2u * g_size + 31u) / 32u;
    let first_record = (at.x * params.width + 4u * at.w) * params.groups;
    for (var j = 0u; j < count; j = j + 32u) {
        let t = at.y + at.z + j;
        let record = first_record + t / g_size;
        let word = record * words + 2u * ((t % g_size) / 32u);
        let stride = params.groups;
        let low = vec4<u32>(value_codes[word], value_codes[word + stride * words], value_codes[word + 2u * stride * words], value_codes[word + 3u * stride * words]);
        let high = vec4<u32>(value_codes[word + 1u], value_codes[word + stride * words + 1u], value_codes[word + 2u * stride * words + 1u], value_codes[word + 3u * stride * words + 1u]);
        let p0 = unpack2x16float(value_scale_min[record]);
        let p1 = unpack2x16float(value_scale_min[record + stride]);
        let p2 = unpack2x16float(value_scale_min[record + 2u * stride]);
        let p3 = unpack2x16float(value_scale_min[record + 3u * stride]);
        let scale = vec4<f32>(p0.x, p1.x, p2.x, p3.x);
        let minimum = vec4<f32>(p0.y, p1.y, p2.y, p3.y);
        for (var k = 0u; k < 8u; k = k + 1u) {
            let words4 = select(high, low, k < 4u);
            // Column m: token 4k + m of the slice, its four channels' values.
            let v = transpose(mat4x4<f32>(
                two_bit_codes4(words4.x, k % 4u) * scale.x + minimum.x,
                two_bit_codes4(words4.y, k % 4u) * scale.y + minimum.y,
                two_bit_codes4(words4.z, k % 4u) * scale.z + minimum.z,
                two_bit_codes4(words4.w, k % 4u) * scale.w + minimum.w,
            ));
            add_weighted(sums, v, (at.z + j) / 4u + k);
        }
    }
}

// The sums are in the natural domain already.
fn finish_sums(kv_head: u32, local: u32, summed: bool, quad: u32) {}
