//! Semantic token protection (STP): which visual tokens keep 2-bit values (spec §5.3).
//!
//! Each visual token is scored by its mean dot product with the text-query tokens,
//! score_i = mean_j ⟨v_i, t_j⟩ = ⟨v_i, mean_j t_j⟩, and the round(p·N_v) best are protected.
//! Unlike the released code there is no hard-coded position offset (the caller passes where
//! the visual span starts), no flooring to 32 and no dropped tokens.

use crate::error::{Result, VidkvError};
use crate::tensor::check_finite;

/// Positions (ascending, absolute) of the `round(ratio · N_v)` visual tokens whose
/// embeddings have the largest mean dot product with the text embeddings.
///
/// `visual` is `[N_v, dim]`, `text` is `[N_t, dim]`, both row-major; `visual_start` is the
/// absolute position of the first visual token. Ties go to the earlier token.
pub fn select_salient_tokens(
    visual: &[f32],
    text: &[f32],
    dim: usize,
    ratio: f32,
    visual_start: usize,
) -> Result<Vec<u32>> {
    if dim == 0 || visual.len() % dim != 0 || text.len() % dim != 0 {
        return Err(VidkvError::ShapeMismatch {
            tensor: "visual/text embeddings".into(),
            detail: format!(
                "lengths {} and {} are not whole rows of dim {dim}",
                visual.len(),
                text.len()
            ),
        });
    }
    if text.is_empty() {
        return Err(VidkvError::EmptyTensor("text embeddings".into()));
    }
    if !(0.0..=1.0).contains(&ratio) {
        return Err(VidkvError::InvalidConfig(format!(
            "STP ratio must lie in [0, 1], got {ratio}"
        )));
    }
    check_finite("visual embeddings", visual, &[visual.len() / dim, dim])?;
    check_finite("text embeddings", text, &[text.len() / dim, dim])?;
    let visual_count = visual.len() / dim;
    let last = visual_start as u64 + visual_count as u64;
    if last > u64::from(u32::MAX) {
        return Err(VidkvError::InvalidConfig(format!(
            "visual positions up to {last} do not fit u32"
        )));
    }

    let mut text_mean = vec![0.0f64; dim];
    for row in text.chunks_exact(dim) {
        for (m, &v) in text_mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let text_rows = (text.len() / dim) as f64;
    text_mean.iter_mut().for_each(|m| *m /= text_rows);

    let scores: Vec<f64> = visual
        .chunks_exact(dim)
        .map(|row| {
            row.iter()
                .zip(&text_mean)
                .map(|(&a, b)| f64::from(a) * b)
                .sum()
        })
        .collect();
    let keep = (f64::from(ratio) * visual_count as f64).round() as usize;
    let mut order: Vec<usize> = (0..visual_count).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut chosen: Vec<u32> = order[..keep]
        .iter()
        .map(|&i| (visual_start + i) as u32)
        .collect();
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_tokens_most_aligned_with_the_text() {
        let visual = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, -1.0, 0.0, 0.5, 0.5];
        let text = [1.0, 0.0, 1.0, 0.2];
        let chosen = select_salient_tokens(&visual, &text, 2, 0.4, 10).unwrap();
        assert_eq!(chosen, vec![10, 12]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(select_salient_tokens(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2, 0.2, 0).is_err());
        assert!(select_salient_tokens(&[1.0, f32::NAN], &[1.0, 2.0], 2, 0.2, 0).is_err());
        assert!(select_salient_tokens(&[1.0, 2.0], &[], 2, 0.2, 0).is_err());
        assert!(select_salient_tokens(&[1.0, 2.0], &[1.0, 2.0], 2, 1.5, 0).is_err());
    }
}
