//! `vidkv adapter`: the GPU adapter vidkv opens, what it offers and what vidkv picks on it
//! ([`crate::gpu::Capabilities`]).

use clap::Args;

use crate::error::Result;
use crate::gpu::{GpuContext, GpuOptions};

#[derive(Args, Debug, Default)]
pub(super) struct AdapterArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
    /// Show what a context with the portable kernels only picks (as `bench --portable`).
    #[arg(long)]
    portable: bool,
}

pub(super) fn run_adapter(args: &AdapterArgs) -> Result<()> {
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: args.portable,
        ..GpuOptions::default()
    })?;
    let capabilities = gpu.capabilities();
    if args.json {
        println!("{}", capabilities.to_json());
    } else {
        print!("{capabilities}");
    }
    Ok(())
}
