//! `versifier selftest`: this build on a device against the reference fixtures.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use versifier::engine::{DeviceChoice, Precision};

#[derive(Args)]
pub struct SelftestArgs {
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

pub fn run_selftest(args: SelftestArgs) -> Result<()> {
    let report = versifier::eval::selftest::run_selftest(&args.fixtures, args.device, args.dtype)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.passed {
        bail!("selftest failed on {} {}", report.device, report.dtype);
    }
    Ok(())
}
