//! Sweeps the knobs of the `vidkv-tuned` preset (the VidKV structure) on the real dev files
//! and prints, for each setting, the attention error on both files, the same for `kivi2`
//! with the same sinks and residual window, and the effective bits of a Qwen2-7B-shaped
//! cache at 16k tokens.
//!
//! ```text
//! cargo run --release --example tune_vidkv [-- DATA_DIR]   (default: ../shared/data)
//! ```
//!
//! This is the measurement behind the `vidkv-tuned` preset (README, "Choosing the
//! vidkv-tuned preset").

use std::path::PathBuf;

use vidkv::config::{KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme};
use vidkv::io::KvSample;
use vidkv::packed::{estimate_size, CacheShape};
use vidkv::report::evaluate;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let samples = ["smollm2_text_dev", "dinov2_video_dev"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(format!("{name}.safetensors")))?;
            let sidecar = std::fs::read_to_string(dir.join(format!("{name}.json")))?;
            Ok(KvSample::from_bytes(name, &bytes, Some(&sidecar))?)
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let qwen2_7b = CacheShape {
        layers: 28,
        kv_heads: 4,
        tokens: 16384,
        head_dim: 128,
    };
    println!(
        "{:>5} {:>4} {:>6} {:>5} {:>5} {:>9} | {:>9} {:>9} | {:>10} {:>10} | {:>6}",
        "sinks",
        "R",
        "rho",
        "gamma",
        "scale",
        "split",
        "text",
        "video",
        "kivi2 text",
        "kivi2 vid",
        "bits"
    );
    for sinks in [0usize, 1, 4] {
        for residual in [0usize, 32, 64] {
            let kivi2 = QuantConfig {
                sinks,
                residual,
                ..QuantConfig::preset("kivi2")?
            };
            let baseline: Vec<f64> = samples
                .iter()
                .map(|s| evaluate(s, "kivi2", &kivi2).map(|m| m.attn_rel_err))
                .collect::<Result<_, _>>()?;
            for rho in [0.375f32, 0.4, 0.4375, 0.5] {
                for (gamma, scale) in [
                    (0.5f32, TernaryScale::AbsMean),
                    (0.7, TernaryScale::LeastSquares),
                ] {
                    for split in [SplitGranularity::PerHead, SplitGranularity::PerLayer] {
                        let config = QuantConfig {
                            sinks,
                            residual,
                            keys: KeyScheme::Mixed {
                                outlier_ratio: rho,
                                fft: true,
                                split,
                            },
                            values: ValueScheme::Ternary { gamma, scale },
                            ..QuantConfig::preset("vidkv-tuned")?
                        };
                        let errors: Vec<f64> = samples
                            .iter()
                            .map(|s| evaluate(s, "vidkv-tuned", &config).map(|m| m.attn_rel_err))
                            .collect::<Result<_, _>>()?;
                        let bits = estimate_size(qwen2_7b, &config, 0).all_bits();
                        println!(
                            "{sinks:>5} {residual:>4} {rho:>6.4} {gamma:>5.2} {:>5} {:>9} | {:>9.4} {:>9.4} | {:>10.4} {:>10.4} | {bits:>6.3}{}",
                            if scale == TernaryScale::AbsMean { "mean" } else { "lsq" },
                            format!("{split:?}"),
                            errors[0],
                            errors[1],
                            baseline[0],
                            baseline[1],
                            if bits > 2.2 { " (over 2.2)" } else { "" }
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
