//! `kiln completions`: shell completion through kiln itself.
//!
//! The script `kiln completions <shell>` prints is a few lines that, at each Tab, call
//! `COMPLETE=<shell> kiln -- <words>` ([`complete_from_env`], clap_complete's dynamic engine):
//! so the values offered can come from the working directory. Every `--overlay` offers the
//! overlay names of `overlays/` (`dev`, `prod`, not file names); paths complete as paths,
//! and flags and choices as clap declares them.

use std::ffi::OsStr;
use std::process::ExitCode;

use clap::CommandFactory as _;
use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};
use clap_complete::{ArgValueCompleter, CompleteEnv, CompletionCandidate};

/// The shells `kiln completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// Bash 4.4 or later.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
    /// Elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

/// Arguments of `kiln completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln completions bash > /etc/bash_completion.d/kiln
  echo 'source <(kiln completions zsh)' >> ~/.zshrc
  kiln completions fish > ~/.config/fish/completions/kiln.fish

The script calls kiln at each Tab (so --overlay offers the names in ./overlays/):
regenerate it after upgrading kiln.")]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The environment variable the completion scripts set when they call kiln.
const VAR: &str = "COMPLETE";
/// The directory `--overlay` names are read from, as `--overlays` defaults to.
const OVERLAYS: &str = "overlays";

/// Print the completion script for `args.shell`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let shell: &dyn EnvCompleter = match args.shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
        Shell::Elvish => &Elvish,
        Shell::Powershell => &Powershell,
    };
    let mut script = Vec::new();
    shell.write_registration(VAR, "kiln", "kiln", "kiln", &mut script)?;
    super::print(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// When a completion script called kiln (`COMPLETE` is set), print the candidates for the
/// words it passed and exit; otherwise return at once.
pub fn complete_from_env() {
    CompleteEnv::with_factory(command).var(VAR).complete();
}

/// The command line with kiln's own completers attached: every `--overlay`, in every
/// subcommand, completes overlay names.
fn command() -> clap::Command {
    fn attach(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.mut_args(|arg| {
            if arg.get_long() == Some("overlay") {
                arg.add(ArgValueCompleter::new(overlay_names))
            } else {
                arg
            }
        });
        cmd.mut_subcommands(attach)
    }
    attach(super::Cli::command())
}

/// The overlays in `overlays/` whose names start with `current`: the files `kiln render`
/// renders (`<name>.yaml`, neither `base.yaml` nor `_*.yaml`), sorted.
fn overlay_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(OVERLAYS) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
        .filter(|name| {
            name != "base"
                && !name.starts_with('_')
                && crate::names::is_dns1123_label(name)
                && name.starts_with(current.as_ref())
        })
        .collect();
    names.sort();
    names.into_iter().map(CompletionCandidate::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_overlay_flag_has_the_completer() {
        fn check(cmd: &clap::Command, found: &mut usize) {
            for arg in cmd.get_arguments() {
                if arg.get_long() == Some("overlay") {
                    assert!(
                        arg.get::<ArgValueCompleter>().is_some(),
                        "{} --overlay",
                        cmd.get_name()
                    );
                    *found += 1;
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, found);
            }
        }
        let mut found = 0;
        check(&command(), &mut found);
        assert!(
            found >= 3,
            "render, check and certs generate take --overlay ({found})"
        );
    }
}
