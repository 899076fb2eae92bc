//! Quantization settings and the named presets.
//!
//! A [`QuantConfig`] says how keys and values are quantized (scheme, group size) and which
//! tokens stay exact (attention sinks, the recent-token residual window). The presets are
//! stable names for the configurations compared in the report. `vidkv`, the default, is the
//! best method measured at ≤ 2.2 bits per element: rotated codes across tokens with 2.5-bit
//! keys and 1.5-bit values (the same configuration as `rotated-groups-k2.5v1.5`);
//! `vidkv-paper` is the paper's method and `vidkv-tuned` its structure with tuned constants
//! (see `README.md` for the measurements behind each).

mod json;

use crate::error::{Result, VidkvError};

/// Which axis a quantization group runs along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// A group is `group_size` consecutive tokens of one channel (VidKV, KIVI keys).
    PerChannel,
    /// A group is `group_size` consecutive channels of one token (KIVI values).
    PerToken,
}

/// How the scale of a ternary group is computed once its codes are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryScale {
    /// s = mean |x| over the whole group (the released code's statistic).
    AbsMean,
    /// s = mean |x| over the elements with a non-zero code: the least-squares scale for
    /// the chosen codes. The threshold still uses γ · mean |x| over the whole group.
    LeastSquares,
}

/// Over which tokens the key channel ranking (outlier/normal split) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitGranularity {
    /// One split per (layer, KV head), from that head's quantized tokens.
    PerHead,
    /// One split per layer, from the quantized tokens of all its KV heads.
    PerLayer,
}

/// Key quantization scheme.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyScheme {
    /// Keys stored as f16, no quantization.
    Fp16,
    /// 2-bit asymmetric min/max on every channel.
    TwoBit { grouping: Grouping },
    /// VidKV's mixed precision: the ⌈d·ρ⌉ widest-range channels get 2-bit per channel; the
    /// others are transformed by a real FFT over the channel axis (when `fft` is on) and
    /// stored as 1-bit signs with a mean-|x| scale per group.
    Mixed {
        outlier_ratio: f32,
        fft: bool,
        split: SplitGranularity,
    },
    /// Rotated per-token codes (`docs/rotated-2bit.md`): a Hadamard rotation over
    /// head_dim, `bits`-bit (1–4) Gaussian Lloyd-Max codes with one log-coded scale byte
    /// per token, and a per-token flag that centres the row on the per-head channel mean.
    Rotated { bits: u8 },
    /// Rotated codes across each group's tokens too ("T2" in `docs/rotated-2bit.md`): a
    /// second Hadamard over the group's tokens, `bits`·G row widths spent by energy, and a
    /// per-group fallback to the per-token codes of [`KeyScheme::Rotated`].
    /// `bits` is the average code width, 1 to 4 in steps that make bits·G a whole even
    /// number (2.5 with G = 32 spends 80 bits per group).
    RotatedGroups { bits: f32 },
}

/// Value quantization scheme.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueScheme {
    /// Values stored as f16, no quantization.
    Fp16,
    /// 2-bit asymmetric min/max.
    TwoBit { grouping: Grouping },
    /// Ternary (1.58-bit) per channel: t = ±1 where |x| > γ·mean|x|, else 0; x̂ = t·s.
    /// Protected (STP) tokens, when given, are stored 2-bit per channel instead.
    Ternary { gamma: f32, scale: TernaryScale },
    /// Rotated per-token codes as for [`KeyScheme::Rotated`]; with `group_means` each
    /// group also stores a 3-bit mean per channel, and the flag centres a token on its
    /// group's mean instead of the per-head one.
    Rotated { bits: u8, group_means: bool },
    /// Rotated codes across each group's tokens too, as [`KeyScheme::RotatedGroups`].
    RotatedGroups { bits: f32 },
}

/// A complete quantization configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConfig {
    /// Tokens per group (a power of two from 8 to 128; 32 in every preset).
    pub group_size: usize,
    /// The first `sinks` tokens are kept exact (f16).
    pub sinks: usize,
    /// At least the `residual` most recent tokens are kept exact (a multiple of `group_size`).
    pub residual: usize,
    pub keys: KeyScheme,
    pub values: ValueScheme,
    /// Fraction of visual tokens that [`crate::reference::stp::select_salient_tokens`]
    /// protects when asked for the configured ratio.
    pub stp_ratio: f32,
}

/// The stable preset names, in report order: every path (CPU, GPU, [`crate::KvCache`],
/// files, the browser demo) takes them; `vidkv` is the default.
pub const PRESET_NAMES: [&str; 6] = [
    "fp16",
    "kivi2",
    "vidkv-paper",
    "k2v2-channel",
    "vidkv-tuned",
    "vidkv",
];

/// The default preset ([`QuantConfig::default`], the CLI, the examples, the demo).
pub const DEFAULT_PRESET: &str = "vidkv";

/// Presets of the rotated schemes (`docs/rotated-2bit.md`), the candidates the default was
/// chosen from; every path takes them too.
pub const ROTATED_PRESET_NAMES: [&str; 6] = [
    "rotated",
    "rotated-flat",
    "rotated-k3v1",
    "rotated-groups",
    "rotated-groups-k3v1",
    "rotated-groups-k2.5v1.5",
];

impl QuantConfig {
    /// The configuration behind a preset name.
    pub fn preset(name: &str) -> Result<Self> {
        let base = QuantConfig {
            group_size: 32,
            sinks: 0,
            residual: 0,
            keys: KeyScheme::Fp16,
            values: ValueScheme::Fp16,
            stp_ratio: 0.2,
        };
        // The rotated presets keep the `vidkv-tuned` preset's exact sinks and window.
        let rotated = |keys, values| QuantConfig {
            sinks: VIDKV_SINKS,
            residual: VIDKV_RESIDUAL,
            keys,
            values,
            ..base.clone()
        };
        let config = match name {
            "fp16" => base,
            "kivi2" => QuantConfig {
                keys: KeyScheme::TwoBit {
                    grouping: Grouping::PerChannel,
                },
                values: ValueScheme::TwoBit {
                    grouping: Grouping::PerToken,
                },
                ..base
            },
            "vidkv-paper" => QuantConfig {
                keys: KeyScheme::Mixed {
                    outlier_ratio: 0.5,
                    fft: true,
                    split: SplitGranularity::PerHead,
                },
                values: ValueScheme::Ternary {
                    gamma: 0.5,
                    scale: TernaryScale::AbsMean,
                },
                ..base
            },
            "k2v2-channel" => QuantConfig {
                keys: KeyScheme::TwoBit {
                    grouping: Grouping::PerChannel,
                },
                values: ValueScheme::TwoBit {
                    grouping: Grouping::PerChannel,
                },
                ..base
            },
            "vidkv" | "rotated-groups-k2.5v1.5" => rotated(
                KeyScheme::RotatedGroups { bits: 2.5 },
                ValueScheme::RotatedGroups { bits: 1.5 },
            ),
            "vidkv-tuned" => QuantConfig {
                sinks: VIDKV_SINKS,
                residual: VIDKV_RESIDUAL,
                keys: KeyScheme::Mixed {
                    outlier_ratio: VIDKV_OUTLIER_RATIO,
                    fft: true,
                    split: VIDKV_SPLIT,
                },
                values: ValueScheme::Ternary {
                    gamma: VIDKV_GAMMA,
                    scale: TernaryScale::LeastSquares,
                },
                ..base
            },
            "rotated" => rotated(
                KeyScheme::Rotated { bits: 2 },
                ValueScheme::Rotated {
                    bits: 2,
                    group_means: true,
                },
            ),
            "rotated-flat" => rotated(
                KeyScheme::Rotated { bits: 2 },
                ValueScheme::Rotated {
                    bits: 2,
                    group_means: false,
                },
            ),
            "rotated-k3v1" => rotated(
                KeyScheme::Rotated { bits: 3 },
                ValueScheme::Rotated {
                    bits: 1,
                    group_means: true,
                },
            ),
            "rotated-groups" => rotated(
                KeyScheme::RotatedGroups { bits: 2.0 },
                ValueScheme::RotatedGroups { bits: 2.0 },
            ),
            "rotated-groups-k3v1" => rotated(
                KeyScheme::RotatedGroups { bits: 3.0 },
                ValueScheme::RotatedGroups { bits: 1.0 },
            ),
            other => {
                return Err(VidkvError::UnknownPreset {
                    name: other.to_string(),
                    known: PRESET_NAMES
                        .iter()
                        .chain(&ROTATED_PRESET_NAMES)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        Ok(config)
    }

    /// Whether nothing is quantized (every token stays f16).
    pub fn is_fp16(&self) -> bool {
        matches!(self.keys, KeyScheme::Fp16)
    }

    /// Whether keys or values use a rotated scheme (they need a head_dim the rotation takes).
    pub fn uses_rotation(&self) -> bool {
        matches!(
            self.keys,
            KeyScheme::Rotated { .. } | KeyScheme::RotatedGroups { .. }
        ) || matches!(
            self.values,
            ValueScheme::Rotated { .. } | ValueScheme::RotatedGroups { .. }
        )
    }

    /// Whether keys or values use the across-token rotated scheme ("T2").
    pub fn uses_rotated_groups(&self) -> bool {
        matches!(self.keys, KeyScheme::RotatedGroups { .. })
            || matches!(self.values, ValueScheme::RotatedGroups { .. })
    }

    /// Checks every field; returns the first problem found.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(VidkvError::InvalidConfig(msg));
        let g = self.group_size;
        if !(8..=128).contains(&g) || !g.is_power_of_two() {
            return bad(format!(
                "group_size must be a power of two from 8 to 128, got {g}"
            ));
        }
        if self.residual % g != 0 {
            return bad(format!(
                "residual ({}) must be a multiple of group_size ({g})",
                self.residual
            ));
        }
        if matches!(self.keys, KeyScheme::Fp16) != matches!(self.values, ValueScheme::Fp16) {
            return bad("keys and values must both be fp16 or both be quantized".into());
        }
        if let KeyScheme::Mixed { outlier_ratio, .. } = self.keys {
            if !(0.0..=1.0).contains(&outlier_ratio) {
                return bad(format!(
                    "outlier_ratio must lie in [0, 1], got {outlier_ratio}"
                ));
            }
        }
        if let KeyScheme::Rotated { bits } = self.keys {
            check_rotated_bits("key", bits)?;
        }
        if let ValueScheme::Rotated { bits, .. } = self.values {
            check_rotated_bits("value", bits)?;
        }
        if let KeyScheme::RotatedGroups { bits } = self.keys {
            check_group_bits("key", bits, g)?;
        }
        if let ValueScheme::RotatedGroups { bits } = self.values {
            check_group_bits("value", bits, g)?;
        }
        if let ValueScheme::Ternary { gamma, .. } = self.values {
            if !gamma.is_finite() || gamma < 0.0 {
                return bad(format!("gamma must be finite and ≥ 0, got {gamma}"));
            }
        }
        if !(0.0..=1.0).contains(&self.stp_ratio) {
            return bad(format!(
                "stp_ratio must lie in [0, 1], got {}",
                self.stp_ratio
            ));
        }
        Ok(())
    }

    /// Which tokens of a `tokens`-long sequence are quantized and which stay exact.
    pub fn plan(&self, tokens: usize) -> TokenPlan {
        if self.is_fp16() {
            return TokenPlan {
                tokens,
                sinks: tokens,
                quantized: 0,
            };
        }
        let sinks = self.sinks.min(tokens);
        let free = tokens.saturating_sub(sinks + self.residual);
        TokenPlan {
            tokens,
            sinks,
            quantized: free / self.group_size * self.group_size,
        }
    }
}

fn check_rotated_bits(what: &str, bits: u8) -> Result<()> {
    if (1..=4).contains(&bits) {
        Ok(())
    } else {
        Err(VidkvError::InvalidConfig(format!(
            "rotated {what} codes take 1 to 4 bits, got {bits}"
        )))
    }
}

fn check_group_bits(what: &str, bits: f32, group_size: usize) -> Result<()> {
    let budget = bits * group_size as f32;
    if (1.0..=4.0).contains(&bits) && budget == budget.round() && budget as usize % 2 == 0 {
        Ok(())
    } else {
        Err(VidkvError::InvalidConfig(format!(
            "rotated-group {what} codes take 1 to 4 bits on average with bits·group_size a \
             whole even number, got {bits} with groups of {group_size}"
        )))
    }
}

/// The split of a sequence into exact sinks, quantized groups and an exact tail.
///
/// Tokens `[0, sinks)` are exact, `[sinks, sinks + quantized)` are quantized in whole
/// groups, and `[sinks + quantized, tokens)` (the residual window plus any incomplete
/// group) are exact. For `fp16` every token counts as a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPlan {
    pub tokens: usize,
    pub sinks: usize,
    pub quantized: usize,
}

impl TokenPlan {
    /// First quantized token.
    pub fn quantized_start(&self) -> usize {
        self.sinks
    }
    /// One past the last quantized token.
    pub fn quantized_end(&self) -> usize {
        self.sinks + self.quantized
    }
    /// Number of exact tokens after the quantized range.
    pub fn tail(&self) -> usize {
        self.tokens - self.quantized_end()
    }
    /// Number of exact (f16) tokens in all.
    pub fn exact(&self) -> usize {
        self.tokens - self.quantized
    }
}

/// Attention sinks of the `vidkv`, `vidkv-tuned` and rotated presets (see README, "Choosing
/// the vidkv-tuned preset").
pub const VIDKV_SINKS: usize = 1;
/// Residual window of the `vidkv`, `vidkv-tuned` and rotated presets.
pub const VIDKV_RESIDUAL: usize = 64;
/// Outlier-channel ratio ρ of the `vidkv-tuned` preset.
pub const VIDKV_OUTLIER_RATIO: f32 = 0.375;
/// Key channel split granularity of the `vidkv-tuned` preset.
pub const VIDKV_SPLIT: SplitGranularity = SplitGranularity::PerLayer;
/// Ternary threshold γ of the `vidkv-tuned` preset (with the least-squares scale).
pub const VIDKV_GAMMA: f32 = 0.7;

impl Default for QuantConfig {
    /// The [`DEFAULT_PRESET`].
    fn default() -> Self {
        QuantConfig::preset(DEFAULT_PRESET).expect("the default preset exists")
    }
}
