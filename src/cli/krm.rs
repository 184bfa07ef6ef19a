use std::process::ExitCode;

/// Arguments of `kiln krm`.
#[derive(Debug, clap::Args)]
pub struct KrmArgs {}

/// Arguments of `kiln install-plugin`.
#[derive(Debug, clap::Args)]
pub struct InstallPluginArgs {}

pub fn krm(_args: KrmArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("krm is not built yet")
}

pub fn install_plugin(_args: InstallPluginArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("install-plugin is not built yet")
}
