//! The configuration as JSON: the `config` entry of both cache files and of `inspect --json`.

use serde_json::{json, Value};

use super::{Grouping, KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme};
use crate::error::{Result, VidkvError};

impl QuantConfig {
    /// The configuration as JSON (the `config` entry of both cache files).
    pub fn to_json(&self) -> Value {
        let config = self;
        let grouping = |g: Grouping| match g {
            Grouping::PerChannel => "per_channel",
            Grouping::PerToken => "per_token",
        };
        let keys = match config.keys {
            KeyScheme::Fp16 => json!({"type": "fp16"}),
            KeyScheme::TwoBit { grouping: g } => {
                json!({"type": "two_bit", "grouping": grouping(g)})
            }
            KeyScheme::Mixed {
                outlier_ratio,
                fft,
                split,
            } => json!({
                "type": "mixed",
                "outlier_ratio": outlier_ratio,
                "fft": fft,
                "split": match split { SplitGranularity::PerHead => "per_head", SplitGranularity::PerLayer => "per_layer" },
            }),
            KeyScheme::Rotated { bits } => json!({"type": "rotated", "bits": bits}),
            KeyScheme::RotatedGroups { bits } => json!({"type": "rotated_groups", "bits": bits}),
        };
        let values = match config.values {
            ValueScheme::Fp16 => json!({"type": "fp16"}),
            ValueScheme::TwoBit { grouping: g } => {
                json!({"type": "two_bit", "grouping": grouping(g)})
            }
            ValueScheme::Ternary { gamma, scale } => json!({
                "type": "ternary",
                "gamma": gamma,
                "scale": match scale { TernaryScale::AbsMean => "abs_mean", TernaryScale::LeastSquares => "least_squares" },
            }),
            ValueScheme::Rotated { bits, group_means } => json!({
                "type": "rotated",
                "bits": bits,
                "group_means": group_means,
            }),
            ValueScheme::RotatedGroups { bits } => json!({"type": "rotated_groups", "bits": bits}),
        };
        json!({
            "group_size": config.group_size,
            "sinks": config.sinks,
            "residual": config.residual,
            "keys": keys,
            "values": values,
            "stp_ratio": config.stp_ratio,
        })
    }

    /// Parses and validates a configuration written by [`QuantConfig::to_json`].
    pub fn from_json(v: &Value) -> Result<QuantConfig> {
        let keys = field(v, "keys")?;
        let values = field(v, "values")?;
        let config = QuantConfig {
            group_size: usize_field(v, "group_size")?,
            sinks: usize_field(v, "sinks")?,
            residual: usize_field(v, "residual")?,
            stp_ratio: f32_field(v, "stp_ratio")?,
            keys: match str_field(keys, "type")? {
                "fp16" => KeyScheme::Fp16,
                "two_bit" => KeyScheme::TwoBit {
                    grouping: grouping_field(keys)?,
                },
                "mixed" => KeyScheme::Mixed {
                    outlier_ratio: f32_field(keys, "outlier_ratio")?,
                    fft: field(keys, "fft")?
                        .as_bool()
                        .ok_or_else(|| bad("`fft` is not a boolean".into()))?,
                    split: match str_field(keys, "split")? {
                        "per_head" => SplitGranularity::PerHead,
                        "per_layer" => SplitGranularity::PerLayer,
                        other => return Err(bad(format!("unknown split `{other}`"))),
                    },
                },
                "rotated" => KeyScheme::Rotated {
                    bits: bits_field(keys)?,
                },
                "rotated_groups" => KeyScheme::RotatedGroups {
                    bits: f32_field(keys, "bits")?,
                },
                other => return Err(bad(format!("unknown key scheme `{other}`"))),
            },
            values: match str_field(values, "type")? {
                "fp16" => ValueScheme::Fp16,
                "two_bit" => ValueScheme::TwoBit {
                    grouping: grouping_field(values)?,
                },
                "ternary" => ValueScheme::Ternary {
                    gamma: f32_field(values, "gamma")?,
                    scale: match str_field(values, "scale")? {
                        "abs_mean" => TernaryScale::AbsMean,
                        "least_squares" => TernaryScale::LeastSquares,
                        other => return Err(bad(format!("unknown ternary scale `{other}`"))),
                    },
                },
                "rotated" => ValueScheme::Rotated {
                    bits: bits_field(values)?,
                    group_means: field(values, "group_means")?
                        .as_bool()
                        .ok_or_else(|| bad("`group_means` is not a boolean".into()))?,
                },
                "rotated_groups" => ValueScheme::RotatedGroups {
                    bits: f32_field(values, "bits")?,
                },
                other => return Err(bad(format!("unknown value scheme `{other}`"))),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// An error in configuration JSON.
fn bad(msg: String) -> VidkvError {
    VidkvError::InvalidConfig(format!("configuration JSON: {msg}"))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value> {
    v.get(name).ok_or_else(|| bad(format!("lacks `{name}`")))
}

fn usize_field(v: &Value, name: &str) -> Result<usize> {
    field(v, name)?
        .as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| bad(format!("`{name}` is not a count")))
}

fn f32_field(v: &Value, name: &str) -> Result<f32> {
    field(v, name)?
        .as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| bad(format!("`{name}` is not a number")))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    field(v, name)?
        .as_str()
        .ok_or_else(|| bad(format!("`{name}` is not a string")))
}

fn grouping_field(v: &Value) -> Result<Grouping> {
    match str_field(v, "grouping")? {
        "per_channel" => Ok(Grouping::PerChannel),
        "per_token" => Ok(Grouping::PerToken),
        other => Err(bad(format!("unknown grouping `{other}`"))),
    }
}

/// The `bits` of a rotated scheme (range-checked by [`QuantConfig::validate`]).
fn bits_field(v: &Value) -> Result<u8> {
    u8::try_from(usize_field(v, "bits")?).map_err(|_| bad("`bits` is out of range".into()))
}
