//! `versifier snapshots`: pictures of the real window without a display.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use versifier::engine::Precision;

use super::DeviceArg;

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Folder for the PNGs (created).
    #[arg(long)]
    out: PathBuf,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceArg,
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    #[arg(long, default_value = "月")]
    prompt: String,
    #[arg(long, default_value_t = 8)]
    variations: usize,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1180)]
    width: usize,
    #[arg(long, default_value_t = 760)]
    height: usize,
    /// Treat the device as having at most this much free memory (MiB).
    #[arg(long, env = "VERSIFIER_MEMORY_BUDGET_MIB")]
    memory_budget_mib: Option<u64>,
}

pub fn run_snapshots(args: SnapshotsArgs) -> Result<()> {
    let plan = versifier::ui::snapshot::SnapshotPlan {
        out_dir: args.out,
        device: args.device.resolve(),
        precision: args.dtype,
        prompt: args.prompt,
        variations: args.variations,
        max_tokens: args.max_tokens,
        size: [args.width, args.height],
        memory_budget: args.memory_budget_mib.map(|m| m * versifier::MIB),
    };
    for (_, line) in versifier::ui::snapshot::take_sequence(&plan)? {
        println!("{line}");
    }
    Ok(())
}
