//! The outlier/normal key channel split (spec §4.2).
//!
//! Channels are ranked by range (max − min over the tokens being quantized); the
//! ⌈d·ρ⌉ widest get 2-bit quantization, ties going to the lower channel index. Both sets
//! are returned in ascending channel order.

/// A key channel split for one head (or one layer, when shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSplit {
    /// Channels quantized at 2 bits, ascending.
    pub outliers: Vec<usize>,
    /// Channels transformed by the real DFT and sign-quantized, ascending.
    pub normals: Vec<usize>,
}

/// Number of outlier channels for head dimension `d` and ratio `rho`: ⌈d·ρ⌉.
pub fn outlier_count(d: usize, rho: f32) -> usize {
    // The product is rounded to 1e-4 first so that ratios such as 0.4 × 80 = 32.000002 in
    // f32 do not gain a channel.
    let product = (f64::from(rho) * d as f64 * 1e4).round() / 1e4;
    (product.ceil() as usize).min(d)
}

/// Per-channel range over the rows of `x` (row-major `[rows, d]`), accumulated into `ranges`
/// as running (min, max) pairs so that several heads can share one split.
pub fn accumulate_min_max(x: &[f32], d: usize, min_max: &mut [(f32, f32)]) {
    for row in x.chunks_exact(d) {
        for (mm, &v) in min_max.iter_mut().zip(row) {
            mm.0 = mm.0.min(v);
            mm.1 = mm.1.max(v);
        }
    }
}

/// Fresh running (min, max) pairs for `d` channels.
pub fn empty_min_max(d: usize) -> Vec<(f32, f32)> {
    vec![(f32::INFINITY, f32::NEG_INFINITY); d]
}

/// The split from running (min, max) pairs: the `outlier_count` widest channels are outliers.
pub fn split_by_range(min_max: &[(f32, f32)], outlier_count: usize) -> ChannelSplit {
    let ranges: Vec<f32> = min_max.iter().map(|(lo, hi)| hi - lo).collect();
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by(|&a, &b| ranges[b].total_cmp(&ranges[a]).then(a.cmp(&b)));
    let mut outliers = order[..outlier_count].to_vec();
    let mut normals = order[outlier_count..].to_vec();
    outliers.sort_unstable();
    normals.sort_unstable();
    ChannelSplit { outliers, normals }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index() {
        let mm = vec![(0.0, 1.0), (0.0, 2.0), (0.0, 1.0), (0.0, 1.0)];
        let split = split_by_range(&mm, 2);
        assert_eq!(split.outliers, vec![0, 1]);
        assert_eq!(split.normals, vec![2, 3]);
    }

    #[test]
    fn outlier_count_rounds_up() {
        assert_eq!(outlier_count(128, 0.5), 64);
        assert_eq!(outlier_count(64, 0.4), 26);
        assert_eq!(outlier_count(80, 0.4), 32);
        assert_eq!(outlier_count(8, 0.5), 4);
        assert_eq!(outlier_count(7, 0.5), 4);
        assert_eq!(outlier_count(64, 0.0), 0);
        assert_eq!(outlier_count(64, 1.0), 64);
    }
}
