//! The `vidkv` command line: argument parsing, file reading and output formatting, one
//! module per subcommand family.
//!
//! Library modules never call into this module; it is compiled only with the `cli` feature.

mod adapter;
mod bench;
#[cfg(feature = "lm")]
mod eval_lm;
mod progress;
mod report;
mod serve;
mod store;
mod web;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{QuantConfig, PRESET_NAMES};
use crate::error::{Result, VidkvError};
use crate::gpu::{GpuContext, GpuOptions};
use crate::io::KvSample;
use adapter::AdapterArgs;
use bench::BenchCommand;
#[cfg(feature = "lm")]
use eval_lm::EvalLmArgs;
use report::{ReportArgs, SizesArgs};
use store::{InspectArgs, QuantizeArgs};
use web::{DemoArgs, ExportWebArgs};

/// The real samples bundled with the binary (cut from ../shared/data by scripts/make_sample.py).
const BUNDLED: [(&str, &[u8], &str); 2] = [
    (
        "smollm2_text_sample",
        include_bytes!("../../data/smollm2_text_sample.safetensors"),
        include_str!("../../data/smollm2_text_sample.json"),
    ),
    (
        "dinov2_video_sample",
        include_bytes!("../../data/dinov2_video_sample.safetensors"),
        include_str!("../../data/dinov2_video_sample.json"),
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
    /// Stored bytes and effective bits per element of each preset for a cache shape,
    /// without data (default: one Qwen2-7B-shaped model at 16k tokens).
    Sizes(SizesArgs),
    /// The GPU adapter vidkv opens (`VIDKV_ADAPTER`, `WGPU_BACKEND`): its features, limits
    /// and cooperative-matrix configurations, and the fast paths and split size vidkv picks.
    Adapter(AdapterArgs),
    /// Benchmarks (`vidkv bench quantize`, `vidkv bench attention`).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Quantize the K/V of a safetensors file and save the compressed cache.
    Quantize(QuantizeArgs),
    /// Print the shape, configuration, bytes and bits per element of a saved cache.
    Inspect(InspectArgs),
    /// Write the browser demo (web/ page, the wasm package, bundled sample, expected figures) to a folder
    /// for any static web server.
    ExportWeb(ExportWebArgs),
    /// Serve the browser demo on 127.0.0.1 and print its URL.
    Demo(DemoArgs),
    /// Run SmolLM2-135M with each preset's KvCache: perplexity of a text, bits per element,
    /// and greedy agreement with the fp16 cache (feature `lm`).
    #[cfg(feature = "lm")]
    EvalLm(EvalLmArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceChoice {
    Gpu,
    Cpu,
}

/// Opens the GPU for `--device gpu`, or when no device was asked for and one exists.
fn open_device(choice: Option<DeviceChoice>) -> Result<Option<GpuContext>> {
    match choice {
        Some(DeviceChoice::Cpu) => Ok(None),
        Some(DeviceChoice::Gpu) => GpuContext::new(&GpuOptions::default()).map(Some),
        None => match GpuContext::new(&GpuOptions::default()) {
            Ok(ctx) => Ok(Some(ctx)),
            Err(e) => {
                eprintln!("notice: running on the CPU reference ({e})");
                Ok(None)
            }
        },
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    // Mesa prints a harmless warning on every start when XDG_RUNTIME_DIR is unset (as on
    // headless servers); point it at the temporary directory before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Report(args)) => report::run_report(&args),
        Some(Command::Sizes(args)) => report::run_sizes(&args),
        Some(Command::Adapter(args)) => adapter::run_adapter(&args),
        Some(Command::Bench(BenchCommand::Quantize(args))) => bench::run_bench_quantize(&args),
        Some(Command::Bench(BenchCommand::Attention(args))) => bench::run_bench_attention(&args),
        Some(Command::Bench(BenchCommand::Cache(args))) => bench::run_bench_cache(&args),
        Some(Command::Quantize(args)) => store::run_quantize(&args),
        Some(Command::Inspect(args)) => store::run_inspect(&args),
        Some(Command::ExportWeb(args)) => web::run_export_web(&args),
        Some(Command::Demo(args)) => web::run_demo(&args),
        #[cfg(feature = "lm")]
        Some(Command::EvalLm(args)) => eval_lm::run_eval_lm(&args),
        None => report::run_report(&ReportArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve_presets(
    requested: &[String],
    sinks: Option<usize>,
    residual: Option<usize>,
) -> Result<Vec<(String, QuantConfig)>> {
    let names: Vec<String> = if requested.is_empty() {
        PRESET_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        requested.to_vec()
    };
    names
        .into_iter()
        .map(|name| {
            let mut config = QuantConfig::preset(&name)?;
            if let Some(s) = sinks {
                config.sinks = s;
            }
            if let Some(r) = residual {
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
