// channel_split.wgsl — ranks channels by range and writes the outlier/normal split
// (step 2): the `outliers` widest channels are outliers, ties going to the lower index.
//
// Bindings: 0 params (uniform Params: width ≤ 256, blocks = partial blocks to reduce,
//           outliers = number of outlier channels)
//           1 ranges (storage, read): vec2<f32> (min, max) [blocks][width]
//           2 order  (storage, read_write): u32 [width]: outlier channels ascending, then
//             normal channels ascending
//           3 mask   (storage, read_write): u32 [⌈width/32⌉]: bit c set when c is an outlier
// Dispatch: exactly one workgroup of 256 invocations, one per channel.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ranges: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> mask: array<u32>;

var<workgroup> channel_range: array<f32, 256>;
var<workgroup> is_outlier: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) channel: u32) {
    let width = params.width;
    if (channel < width) {
        // With no tokens every range is 0, so the ranking falls back to channel order.
        var range = 0.0;
        if (params.blocks > 0u) {
            var lo = ranges[channel].x;
            var hi = ranges[channel].y;
            for (var b = 1u; b < params.blocks; b = b + 1u) {
                let partial = ranges[b * width + channel];
                lo = min(lo, partial.x);
                hi = max(hi, partial.y);
            }
            range = hi - lo;
        }
        channel_range[channel] = range;
    }
    workgroupBarrier();
    if (channel < width) {
        let mine = channel_range[channel];
        var rank = 0u;
        for (var c = 0u; c < width; c = c + 1u) {
            let other = channel_range[c];
            if (other > mine || (other == mine && c < channel)) {
                rank = rank + 1u;
            }
        }
        is_outlier[channel] = select(0u, 1u, rank < params.outliers);
    }
    workgroupBarrier();
    if (channel < width) {
        var before = 0u;
        for (var c = 0u; c < channel; c = c + 1u) {
            before = before + is_outlier[c];
        }
        if (is_outlier[channel] == 1u) {
            order[before] = channel;
        } else {
            order[params.outliers + channel - before] = channel;
        }
    }
    if (channel < (width + 31u) / 32u) {
        var word = 0u;
        for (var bit = 0u; bit < 32u; bit = bit + 1u) {
            let c = channel * 32u + bit;
            if (c < width && is_outlier[c] == 1u) {
                word = word | (1u << bit);
            }
        }
        mask[channel] = word;
    }
}
