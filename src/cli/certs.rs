use std::process::ExitCode;

/// `kiln certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA, a daemon and a client certificate.
    Generate(GenerateArgs),
}

/// Arguments of `kiln certs generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {}

pub fn certs(_cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("certs is not built yet")
}
