use std::process::ExitCode;

/// Arguments of `kiln rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {}

/// Arguments of `kiln status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub fn rotate(_args: RotateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("rotate is not built yet")
}

pub fn status(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status is not built yet")
}
