//! The plane arrays of one head in a file: their names and order when writing
//! ([`head_arrays`]), and reading them back with every length and field checked
//! ([`read_planes`]), shared by both file formats.

use super::corrupt;
use crate::config::{Grouping, KeyScheme, QuantConfig, ValueScheme};
use crate::error::Result;
use crate::packed::planes::{GroupedShape, SignPlane, TernaryPlane, TwoBitPlane};
use crate::packed::rotated::{GroupMeans, RotatedRows, RotatedState};
use crate::packed::rotated_groups::{group_budget, GroupCodes};
use crate::packed::stp::{refines, REFINEMENT_BITS};
use crate::packed::{MixedKeys, PackedHead, PackedKeys, PackedValues};
use crate::reference::rotation::Rotation;
use crate::reference::split::outlier_count;

/// The named u32 arrays of one head, in a fixed order.
pub(crate) fn head_arrays(head: &PackedHead) -> Vec<(&'static str, &[u32])> {
    let mut arrays = vec![
        ("exact_keys", head.exact_keys.data.as_slice()),
        ("exact_values", head.exact_values.data.as_slice()),
    ];
    match &head.keys {
        PackedKeys::Exact => {}
        PackedKeys::TwoBit { plane, .. } => {
            arrays.push(("key_codes", &plane.codes));
            arrays.push(("key_params", &plane.params));
        }
        PackedKeys::Mixed(m) => {
            arrays.push(("key_mask", &m.outlier_mask));
            arrays.push(("key_codes", &m.outliers.codes));
            arrays.push(("key_params", &m.outliers.params));
            arrays.push(("key_signs", &m.normals.codes));
            arrays.push(("key_sign_scales", &m.normals.scales));
        }
        PackedKeys::Rotated(rows) => push_rotated(&mut arrays, "key", rows),
        PackedKeys::RotatedGroups(codes) => push_groups(&mut arrays, "key", codes),
    }
    match &head.values {
        PackedValues::Exact => {}
        PackedValues::TwoBit { plane, .. } => {
            arrays.push(("value_codes", &plane.codes));
            arrays.push(("value_params", &plane.params));
        }
        PackedValues::Ternary { plane, protected } => {
            arrays.push(("value_trits", &plane.codes));
            arrays.push(("value_scales", &plane.scales));
            arrays.push(("protected_codes", &protected.codes));
            arrays.push(("protected_params", &protected.params));
        }
        PackedValues::Rotated { rows, means } => {
            push_rotated(&mut arrays, "value", rows);
            if let Some(means) = means {
                arrays.push(("value_mean_codes", &means.codes));
                arrays.push(("value_mean_steps", &means.steps));
            }
        }
        PackedValues::RotatedGroups(codes) => push_groups(&mut arrays, "value", codes),
    }
    if let Some(rows) = &head.value_refinement {
        push_rotated(&mut arrays, "refine", rows);
    }
    arrays
}

/// The arrays of groups coded across tokens: codes, scale bytes, width tables, state.
fn push_groups<'a>(arrays: &mut Vec<(&'static str, &'a [u32])>, side: &str, codes: &'a GroupCodes) {
    let names: [&'static str; 5] = if side == "key" {
        [
            "key_group_codes",
            "key_group_scales",
            "key_group_widths",
            "key_state_mean",
            "key_state_base",
        ]
    } else {
        [
            "value_group_codes",
            "value_group_scales",
            "value_group_widths",
            "value_state_mean",
            "value_state_base",
        ]
    };
    arrays.push((names[0], &codes.codes));
    arrays.push((names[1], &codes.scales));
    arrays.push((names[2], &codes.widths));
    arrays.push((names[3], &codes.state.mean));
    arrays.push((names[4], std::slice::from_ref(&codes.state.base)));
}

/// The arrays of rotated rows: codes, scale bytes and the per-head state.
fn push_rotated<'a>(
    arrays: &mut Vec<(&'static str, &'a [u32])>,
    side: &str,
    rows: &'a RotatedRows,
) {
    let names: [&'static str; 4] = match side {
        "key" => [
            "key_rot_codes",
            "key_rot_scales",
            "key_state_mean",
            "key_state_base",
        ],
        "value" => [
            "value_rot_codes",
            "value_rot_scales",
            "value_state_mean",
            "value_state_base",
        ],
        _ => [
            "refine_rot_codes",
            "refine_rot_scales",
            "refine_state_mean",
            "refine_state_base",
        ],
    };
    arrays.push((names[0], &rows.codes));
    arrays.push((names[1], &rows.scales));
    arrays.push((names[2], &rows.state.mean));
    arrays.push((names[3], std::slice::from_ref(&rows.state.base)));
}

/// The quantized planes of one head, as read from a file.
pub(crate) struct HeadPlanes {
    pub keys: PackedKeys,
    pub values: PackedValues,
    pub value_refinement: Option<RotatedRows>,
}

/// Reads and validates the quantized planes of one head: `nq` quantized tokens of which
/// `protected` are STP-protected, each array fetched by `named(name, expected words)`.
pub(crate) fn read_planes(
    named: &dyn Fn(&str, usize) -> Result<Vec<u32>>,
    config: &QuantConfig,
    d: usize,
    nq: usize,
    protected: usize,
) -> Result<HeadPlanes> {
    let g = config.group_size;
    if config.uses_rotation() {
        Rotation::new(d).map_err(|e| corrupt(e.to_string()))?;
    }
    let state = |side: &str| -> Result<RotatedState> {
        let name = |array: &str| format!("{side}_{array}");
        let state = RotatedState {
            mean: named(&name("state_mean"), d.div_ceil(2))?,
            base: named(&name("state_base"), 1)?[0],
        };
        check_f16_words(&state.mean, &name("state_mean"))?;
        check_f16_words(&[state.base], &name("state_base"))?;
        Ok(state)
    };
    let groups = |side: &str, bits: f32| -> Result<GroupCodes> {
        let name = |array: &str| format!("{side}_{array}");
        let groups = nq / g;
        let budget = group_budget(bits, g);
        let codes = GroupCodes {
            groups,
            group_size: g,
            head_dim: d,
            budget,
            codes: named(&name("group_codes"), groups * budget * d / 32)?,
            scales: named(&name("group_scales"), groups * g / 4)?,
            widths: named(&name("group_widths"), groups * (3 * g).div_ceil(32))?,
            state: state(side)?,
        };
        codes.validate()?;
        Ok(codes)
    };
    let rotated = |side: &str, bits: u8, tokens: usize| -> Result<RotatedRows> {
        let name = |array: &str| format!("{side}_{array}");
        let state = state(side)?;
        let rows = RotatedRows {
            tokens,
            head_dim: d,
            bits,
            codes: named(
                &name("rot_codes"),
                tokens * RotatedRows::words_per_token(bits, d),
            )?,
            scales: named(&name("rot_scales"), tokens.div_ceil(4))?,
            state,
        };
        rows.validate()?;
        Ok(rows)
    };
    let channel_rows = |len| GroupedShape {
        rows: d,
        len,
        group_size: g,
    };
    let two_bit = |name: &str, shape: GroupedShape| -> Result<TwoBitPlane> {
        let plane = TwoBitPlane {
            shape,
            codes: named(
                &format!("{name}_codes"),
                shape.rows * shape.groups() * TwoBitPlane::words_per_group(g),
            )?,
            params: named(&format!("{name}_params"), shape.rows * shape.groups())?,
        };
        plane.validate()?;
        check_f16_words(&plane.params, name)?;
        Ok(plane)
    };
    let per_token = |len: usize, grouping: Grouping| match grouping {
        Grouping::PerChannel => channel_rows(len),
        Grouping::PerToken => GroupedShape {
            rows: len,
            len: d,
            group_size: g,
        },
    };
    let keys = match config.keys {
        KeyScheme::Fp16 => PackedKeys::Exact,
        KeyScheme::TwoBit { grouping } => PackedKeys::TwoBit {
            grouping,
            plane: two_bit("key", per_token(nq, grouping))?,
        },
        KeyScheme::Mixed {
            outlier_ratio, fft, ..
        } => {
            let k = outlier_count(d, outlier_ratio);
            let mask = named("key_mask", d.div_ceil(32))?;
            let set: u32 = mask.iter().map(|w| w.count_ones()).sum();
            let stray = d % 32 != 0 && mask.last().is_some_and(|&w| w >> (d % 32) != 0);
            if set as usize != k || stray {
                return Err(corrupt(format!(
                    "key_mask marks {set} channels, expected {k}"
                )));
            }
            let normals = GroupedShape {
                rows: d - k,
                len: nq,
                group_size: g,
            };
            let signs = SignPlane {
                shape: normals,
                codes: named(
                    "key_signs",
                    SignPlane::words(normals) - (d - k).div_ceil(2) * normals.groups(),
                )?,
                scales: named("key_sign_scales", (d - k).div_ceil(2) * normals.groups())?,
            };
            signs.validate()?;
            check_f16_words(&signs.scales, "key_sign_scales")?;
            PackedKeys::Mixed(MixedKeys {
                outlier_mask: mask,
                outliers: two_bit(
                    "key",
                    GroupedShape {
                        rows: k,
                        len: nq,
                        group_size: g,
                    },
                )?,
                normals: signs,
                fft,
            })
        }
        KeyScheme::Rotated { bits } => PackedKeys::Rotated(rotated("key", bits, nq)?),
        KeyScheme::RotatedGroups { bits } => PackedKeys::RotatedGroups(groups("key", bits)?),
    };
    let values = match config.values {
        ValueScheme::Fp16 => PackedValues::Exact,
        ValueScheme::TwoBit { grouping } => PackedValues::TwoBit {
            grouping,
            plane: two_bit("value", per_token(nq, grouping))?,
        },
        ValueScheme::Ternary { .. } => {
            let plain = channel_rows(nq - protected);
            let scales = d.div_ceil(2) * plain.groups();
            let plane = TernaryPlane {
                shape: plain,
                codes: named("value_trits", TernaryPlane::words(plain) - scales)?,
                scales: named("value_scales", scales)?,
            };
            plane.validate()?;
            check_f16_words(&plane.scales, "value_scales")?;
            PackedValues::Ternary {
                plane,
                protected: two_bit("protected", channel_rows(protected))?,
            }
        }
        ValueScheme::Rotated { bits, group_means } => {
            let rows = rotated("value", bits, nq)?;
            let means = if group_means {
                let groups = nq / g;
                let means = GroupMeans {
                    groups,
                    group_size: g,
                    head_dim: d,
                    codes: named("value_mean_codes", groups * GroupMeans::words_per_group(d))?,
                    steps: named("value_mean_steps", groups.div_ceil(2))?,
                };
                means.validate()?;
                check_f16_words(&means.steps, "value_mean_steps")?;
                Some(means)
            } else {
                None
            };
            PackedValues::Rotated { rows, means }
        }
        ValueScheme::RotatedGroups { bits } => PackedValues::RotatedGroups(groups("value", bits)?),
    };
    let value_refinement = if protected > 0 && refines(&config.values) {
        Some(rotated("refine", REFINEMENT_BITS, protected)?)
    } else {
        None
    };
    Ok(HeadPlanes {
        keys,
        values,
        value_refinement,
    })
}

/// Fails when an array of f16 pairs holds infinity or NaN (a corrupted file).
pub(crate) fn check_f16_words(words: &[u32], name: &str) -> Result<()> {
    let bad = |half: u32| half & 0x7c00 == 0x7c00;
    match words.iter().position(|&w| bad(w & 0xffff) || bad(w >> 16)) {
        None => Ok(()),
        Some(i) => Err(corrupt(format!(
            "`{name}` holds a non-finite f16 in word {i}"
        ))),
    }
}
