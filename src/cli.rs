//! The `vidkv` command line: argument parsing, file reading and output formatting.
//!
//! Library modules never call into this module; it is compiled only with the `cli` feature.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{QuantConfig, PRESET_NAMES};
use crate::error::{Result, VidkvError};
use crate::io::KvSample;
use crate::report::{evaluate, to_json, to_table, FileReport};

/// The real samples bundled with the binary (cut from ../shared/data by scripts/make_sample.py).
const BUNDLED: [(&str, &[u8], &str); 2] = [
    (
        "smollm2_text_sample",
        include_bytes!("../data/smollm2_text_sample.safetensors"),
        include_str!("../data/smollm2_text_sample.json"),
    ),
    (
        "dinov2_video_sample",
        include_bytes!("../data/dinov2_video_sample.safetensors"),
        include_str!("../data/dinov2_video_sample.json"),
    ),
];

#[derive(Parser, Debug)]
#[command(
    name = "vidkv",
    version,
    about = "VidKV 1.x-bit KV-cache quantization: fidelity and size report",
    long_about = "VidKV 1.x-bit KV-cache quantization.\n\nWith no subcommand, runs `report` on the real samples bundled with the binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize K/V tensors with each preset and report errors and effective bits.
    Report(ReportArgs),
}

#[derive(Args, Debug, Default)]
struct ReportArgs {
    /// A safetensors file with `k`, `v` [layers, kv_heads, tokens, head_dim] and `q`
    /// [layers, q_heads, n_queries, head_dim]; FILE.json beside it is read as the sidecar.
    /// Repeatable. Default: the bundled samples.
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// A preset to evaluate (repeatable). Default: all of them.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Override the number of exact attention-sink tokens of every preset.
    #[arg(long)]
    sinks: Option<usize>,
    /// Override the exact residual window of every preset (a multiple of the group size).
    #[arg(long)]
    residual: Option<usize>,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Report(args)) => run_report(&args),
        None => run_report(&ReportArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_report(args: &ReportArgs) -> Result<()> {
    let presets = resolve_presets(args)?;
    let samples = if args.inputs.is_empty() {
        BUNDLED
            .iter()
            .map(|(name, bytes, sidecar)| KvSample::from_bytes(name, bytes, Some(sidecar)))
            .collect::<Result<Vec<_>>>()?
    } else {
        args.inputs
            .iter()
            .map(|p| read_sample(p))
            .collect::<Result<Vec<_>>>()?
    };
    let mut reports = Vec::with_capacity(samples.len());
    for sample in &samples {
        let presets = presets
            .iter()
            .map(|(name, config)| evaluate(sample, name, config))
            .collect::<Result<Vec<_>>>()?;
        reports.push(FileReport {
            file: sample.name.clone(),
            presets,
        });
    }
    if args.json {
        println!("{}", to_json(&reports));
    } else {
        print!("{}", to_table(&reports));
    }
    Ok(())
}

fn resolve_presets(args: &ReportArgs) -> Result<Vec<(String, QuantConfig)>> {
    let names: Vec<String> = if args.presets.is_empty() {
        PRESET_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.presets.clone()
    };
    names
        .into_iter()
        .map(|name| {
            let mut config = QuantConfig::preset(&name)?;
            if let Some(s) = args.sinks {
                config.sinks = s;
            }
            if let Some(r) = args.residual {
                config.residual = r;
            }
            config.validate()?;
            Ok((name, config))
        })
        .collect()
}

/// Reads FILE.safetensors and, when it exists, FILE.json.
pub fn read_sample(path: &Path) -> Result<KvSample> {
    let read_err = |p: &Path| {
        let p = p.display().to_string();
        move |source| VidkvError::Io { path: p, source }
    };
    let bytes = std::fs::read(path).map_err(read_err(path))?;
    let sidecar_path = path.with_extension("json");
    let sidecar = if sidecar_path.exists() {
        Some(std::fs::read_to_string(&sidecar_path).map_err(read_err(&sidecar_path))?)
    } else {
        None
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    KvSample::from_bytes(&name, &bytes, sidecar.as_deref())
}
