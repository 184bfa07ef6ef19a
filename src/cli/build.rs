use std::process::ExitCode;

/// Arguments of `kiln build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {}

pub fn build(_args: BuildArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("build is not built yet")
}
