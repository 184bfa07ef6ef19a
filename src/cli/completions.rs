use std::process::ExitCode;

use clap_complete::Shell;

/// Arguments of `kiln completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs, cmd: &mut clap::Command) -> anyhow::Result<ExitCode> {
    clap_complete::generate(args.shell, cmd, "kiln", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
