use std::process::ExitCode;

/// Arguments of `kiln render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {}

/// Arguments of `kiln check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Arguments of `kiln schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {}

pub fn render(_args: RenderArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("render is not built yet")
}

pub fn check(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("check is not built yet")
}

pub fn schema(_args: SchemaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("schema is not built yet")
}
