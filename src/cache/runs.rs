//! A layer's stored runs read back from the GPU (every plane array of every run, once), and
//! the per-head views `convert` assembles into a [`crate::PackedCache`] head: rows of
//! per-channel planes, per-token rows, rotated rows, group records, the protected plane and
//! the STP refinements.

use crate::error::{Result, VidkvError};
use crate::gpu::attention::{
    GroupPlanes, PackedKeyPlanes, PackedPlanes, PackedValuePlanes, RotatedPlanes,
};
use crate::gpu::GpuContext;
use crate::packed::planes::TwoBitPlane;
use crate::packed::rotated::{GroupMeans, RotatedRows, RotatedState};
use crate::packed::rotated_groups::GroupCodes;
use crate::packed::stp::REFINEMENT_BITS;

use super::Chunk;

/// One quantized run of a layer, as stored: its planes and how many groups it holds.
pub(super) struct StoredRun<'a> {
    planes: &'a PackedPlanes,
    /// Filled groups of the key planes.
    groups: usize,
    /// Group stride and filled groups of per-channel value planes (a prefill run's ternary
    /// plane covers only its unprotected tokens).
    value_stride: usize,
    value_groups: usize,
}

impl<'a> StoredRun<'a> {
    /// The run of a chunk, or of a layer's prefill (`prefill`: its planes are exactly full).
    pub(super) fn of(c: &'a Chunk, prefill: bool) -> Self {
        let value_stride = match &c.planes.values {
            PackedValuePlanes::Ternary { groups, .. } => *groups,
            PackedValuePlanes::TwoBit { .. }
            | PackedValuePlanes::Rotated(_)
            | PackedValuePlanes::RotatedGroups(_) => c.planes.groups,
        };
        StoredRun {
            planes: &c.planes,
            groups: c.groups,
            value_stride,
            value_groups: if prefill { value_stride } else { c.groups },
        }
    }
}

/// The arrays of a stored run.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum RunArray {
    KeyCodes,
    KeyParams,
    SignCodes,
    SignScales,
    ValueCodes,
    ValueParams,
    /// Rotated schemes: the per-head states, and the values' group-mean codes and steps.
    KeyStates,
    ValueStates,
    MeanCodes,
    MeanSteps,
    /// Codes across tokens: the width tables.
    KeyWidths,
    ValueWidths,
}

/// Every array of every run, read back once.
pub(super) struct RunReads {
    /// Per run, per array: the whole buffer's words.
    arrays: Vec<std::collections::HashMap<RunArray, Vec<u32>>>,
    kept: Vec<(Vec<u32>, Vec<u32>)>,
    /// Per run, its STP refinement rows (codes, scale bytes, states), if any.
    refinements: Vec<Option<[Vec<u32>; 3]>>,
}

impl RunReads {
    pub(super) fn read(ctx: &GpuContext, runs: &[StoredRun<'_>]) -> Result<Self> {
        let mut arrays = Vec::with_capacity(runs.len());
        let mut kept = Vec::with_capacity(runs.len());
        let mut refinements = Vec::with_capacity(runs.len());
        for run in runs {
            let mut map = std::collections::HashMap::new();
            let all = |b: &wgpu::Buffer| ctx.read_words(b, (b.size() / 4) as usize);
            match &run.planes.keys {
                PackedKeyPlanes::Packed {
                    codes,
                    scale_min,
                    sign_codes,
                    sign_scales,
                } => {
                    map.insert(RunArray::KeyCodes, all(codes)?);
                    map.insert(RunArray::KeyParams, all(scale_min)?);
                    map.insert(RunArray::SignCodes, all(sign_codes)?);
                    map.insert(RunArray::SignScales, all(sign_scales)?);
                }
                PackedKeyPlanes::Rotated(planes) => {
                    map.insert(RunArray::KeyCodes, all(&planes.codes)?);
                    map.insert(RunArray::KeyParams, all(&planes.scales)?);
                    map.insert(RunArray::KeyStates, all(&planes.states.states)?);
                }
                PackedKeyPlanes::RotatedGroups(planes) => {
                    map.insert(RunArray::KeyCodes, all(&planes.codes)?);
                    map.insert(RunArray::KeyParams, all(&planes.scales)?);
                    map.insert(RunArray::KeyStates, all(&planes.states.states)?);
                    map.insert(RunArray::KeyWidths, all(&planes.widths)?);
                }
            }
            match &run.planes.values {
                PackedValuePlanes::TwoBit {
                    codes, scale_min, ..
                } => {
                    map.insert(RunArray::ValueCodes, all(codes)?);
                    map.insert(RunArray::ValueParams, all(scale_min)?);
                    kept.push((Vec::new(), Vec::new()));
                }
                PackedValuePlanes::Ternary {
                    codes,
                    scales,
                    kept_codes,
                    kept_params,
                    ..
                } => {
                    map.insert(RunArray::ValueCodes, all(codes)?);
                    map.insert(RunArray::ValueParams, all(scales)?);
                    kept.push((all(kept_codes)?, all(kept_params)?));
                }
                PackedValuePlanes::Rotated(planes) => {
                    map.insert(RunArray::ValueCodes, all(&planes.codes)?);
                    map.insert(RunArray::ValueParams, all(&planes.scales)?);
                    map.insert(RunArray::ValueStates, all(&planes.states.states)?);
                    if let Some((codes, steps)) = &planes.means {
                        map.insert(RunArray::MeanCodes, all(codes)?);
                        map.insert(RunArray::MeanSteps, all(steps)?);
                    }
                    kept.push((Vec::new(), Vec::new()));
                }
                PackedValuePlanes::RotatedGroups(planes) => {
                    map.insert(RunArray::ValueCodes, all(&planes.codes)?);
                    map.insert(RunArray::ValueParams, all(&planes.scales)?);
                    map.insert(RunArray::ValueStates, all(&planes.states.states)?);
                    map.insert(RunArray::ValueWidths, all(&planes.widths)?);
                    kept.push((Vec::new(), Vec::new()));
                }
            }
            refinements.push(match &run.planes.refinement {
                Some(r) => Some([
                    all(&r.rows.codes)?,
                    all(&r.rows.scales)?,
                    all(&r.rows.states.states)?,
                ]),
                None => None,
            });
            arrays.push(map);
        }
        Ok(RunReads {
            arrays,
            kept,
            refinements,
        })
    }

    /// Head `head`'s STP refinement rows (only a prefill run has them), `protected` long.
    pub(super) fn refinement(
        &self,
        head: usize,
        protected: usize,
        d: usize,
    ) -> Option<RotatedRows> {
        let [codes, scales, states] = self.refinements.first()?.as_ref()?;
        let wpt = RotatedRows::words_per_token(REFINEMENT_BITS, d);
        let state_words = RotatedState::words(d);
        let scale_words = protected.div_ceil(4);
        Some(RotatedRows {
            tokens: protected,
            head_dim: d,
            bits: REFINEMENT_BITS,
            state: RotatedState::from_words(&states[head * state_words..][..state_words]),
            codes: codes[head * protected * wpt..][..protected * wpt].to_vec(),
            scales: scales[head * scale_words..][..scale_words].to_vec(),
        })
    }

    /// Rows `0..rows` of head `head` of a `[head][row][stride][per_group]` array, each row
    /// the concatenation of the runs' filled groups.
    pub(super) fn rows(
        &self,
        array: RunArray,
        runs: &[StoredRun<'_>],
        head: usize,
        rows: usize,
        per_group: usize,
    ) -> Vec<u32> {
        let values = matches!(array, RunArray::ValueCodes | RunArray::ValueParams);
        let mut out = Vec::new();
        for row in 0..rows {
            for (run, map) in runs.iter().zip(&self.arrays) {
                let words = &map[&array];
                let (stride, filled) = if values {
                    (run.value_stride, run.value_groups)
                } else {
                    (run.planes.groups, run.groups)
                };
                let base = (head * rows + row) * stride * per_group;
                out.extend_from_slice(&words[base..base + filled * per_group]);
            }
        }
        out
    }

    /// The token rows of head `head` of a per-token `[head][token][groups][..]` array.
    pub(super) fn token_rows(
        &self,
        array: RunArray,
        runs: &[StoredRun<'_>],
        head: usize,
        g: usize,
        per_token: usize,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for (run, map) in runs.iter().zip(&self.arrays) {
            let PackedValuePlanes::TwoBit { rows, .. } = &run.planes.values else {
                unreachable!("per-token planes are 2-bit");
            };
            let base = head * rows * per_token;
            out.extend_from_slice(&map[&array][base..base + run.groups * g * per_token]);
        }
        out
    }

    /// Head `head`'s rotated keys (`keys`) or values: the runs' filled tokens concatenated,
    /// with the state of the first run (every run of a layer shares it) and, for values
    /// centred on group means, the runs' group means.
    pub(super) fn rotated(
        &self,
        keys: bool,
        runs: &[StoredRun<'_>],
        head: usize,
        d: usize,
        g: usize,
    ) -> (RotatedRows, Option<GroupMeans>) {
        fn planes_of<'a>(run: &StoredRun<'a>, keys: bool) -> &'a RotatedPlanes {
            match (&run.planes.keys, &run.planes.values, keys) {
                (PackedKeyPlanes::Rotated(p), _, true)
                | (_, PackedValuePlanes::Rotated(p), false) => p,
                _ => unreachable!("the planes follow the configuration"),
            }
        }
        let (codes_array, scales_array, states_array) = if keys {
            (RunArray::KeyCodes, RunArray::KeyParams, RunArray::KeyStates)
        } else {
            (
                RunArray::ValueCodes,
                RunArray::ValueParams,
                RunArray::ValueStates,
            )
        };
        let bits = planes_of(&runs[0], keys).states.bits;
        let wpt = RotatedRows::words_per_token(bits, d);
        let state_words = RotatedState::words(d);
        let state = RotatedState::from_words(
            &self.arrays[0][&states_array][head * state_words..][..state_words],
        );
        let mean_words = GroupMeans::words_per_group(d);
        let (mut codes, mut scales, mut mean_codes, mut steps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::<u32>::new());
        let mut with_means = false;
        for (run, map) in runs.iter().zip(&self.arrays) {
            let planes = planes_of(run, keys);
            let tokens = run.groups * g;
            let base = head * planes.tokens * wpt;
            codes.extend_from_slice(&map[&codes_array][base..base + tokens * wpt]);
            let base = head * planes.tokens.div_ceil(4);
            scales.extend_from_slice(&map[&scales_array][base..base + tokens / 4]);
            if planes.means.is_some() {
                with_means = true;
                let base = head * planes.groups * mean_words;
                mean_codes.extend_from_slice(
                    &map[&RunArray::MeanCodes][base..base + run.groups * mean_words],
                );
                let base = head * planes.groups.div_ceil(2);
                let words = &map[&RunArray::MeanSteps];
                steps.extend(
                    (0..run.groups).map(|i| (words[base + i / 2] >> (16 * (i % 2))) & 0xffff),
                );
            }
        }
        let tokens = runs.iter().map(|run| run.groups * g).sum();
        let means = with_means.then(|| GroupMeans {
            groups: steps.len(),
            group_size: g,
            head_dim: d,
            codes: mean_codes,
            steps: steps
                .chunks(2)
                .map(|pair| pair[0] | pair.get(1).map_or(0, |hi| hi << 16))
                .collect(),
        });
        let rows = RotatedRows {
            tokens,
            head_dim: d,
            bits,
            state,
            codes,
            scales,
        };
        (rows, means)
    }

    /// Head `head`'s records across tokens (`keys` or values): the runs' filled groups
    /// concatenated, with the state of the first run (every run of a layer shares it).
    pub(super) fn across(
        &self,
        keys: bool,
        runs: &[StoredRun<'_>],
        head: usize,
        d: usize,
        g: usize,
    ) -> GroupCodes {
        fn planes_of<'a>(run: &StoredRun<'a>, keys: bool) -> &'a GroupPlanes {
            match (&run.planes.keys, &run.planes.values, keys) {
                (PackedKeyPlanes::RotatedGroups(p), _, true)
                | (_, PackedValuePlanes::RotatedGroups(p), false) => p,
                _ => unreachable!("the planes follow the configuration"),
            }
        }
        let arrays = if keys {
            [
                RunArray::KeyCodes,
                RunArray::KeyParams,
                RunArray::KeyWidths,
                RunArray::KeyStates,
            ]
        } else {
            [
                RunArray::ValueCodes,
                RunArray::ValueParams,
                RunArray::ValueWidths,
                RunArray::ValueStates,
            ]
        };
        let budget = planes_of(&runs[0], keys).budget;
        let per_group = [budget * d / 32, g / 4, (3 * g).div_ceil(32)];
        let mut out: [Vec<u32>; 3] = Default::default();
        for (run, map) in runs.iter().zip(&self.arrays) {
            let stride = planes_of(run, keys).groups;
            for (i, words) in out.iter_mut().enumerate() {
                let base = head * stride * per_group[i];
                words.extend_from_slice(&map[&arrays[i]][base..base + run.groups * per_group[i]]);
            }
        }
        let state_words = RotatedState::words(d);
        let [codes, scales, widths] = out;
        GroupCodes {
            groups: runs.iter().map(|run| run.groups).sum(),
            group_size: g,
            head_dim: d,
            budget,
            state: RotatedState::from_words(
                &self.arrays[0][&arrays[3]][head * state_words..][..state_words],
            ),
            codes,
            scales,
            widths,
        }
    }

    /// The protected plane of head `head` (only a prefill run has one).
    pub(super) fn kept(
        &self,
        head: usize,
        protected: usize,
        d: usize,
        g: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        if protected == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let (codes, params) = self
            .kept
            .first()
            .ok_or_else(|| VidkvError::InvalidConfig("no protected plane".into()))?;
        let groups = protected.div_ceil(g);
        let wpg = TwoBitPlane::words_per_group(g);
        let per_head_codes = d * groups * wpg;
        let per_head_params = d * groups;
        Ok((
            codes[head * per_head_codes..(head + 1) * per_head_codes].to_vec(),
            params[head * per_head_params..(head + 1) * per_head_params].to_vec(),
        ))
    }
}
