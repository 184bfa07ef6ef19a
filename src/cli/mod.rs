//! The command line: clap definitions and one function per command.
//!
//! Every command turns its raw arguments into a validated config first, then
//! calls into the pure core. Errors bubble up as `anyhow::Error`; `main` prints
//! them with their whole chain.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod build;
mod certs;
mod completions;
mod krm;
mod render;
mod rotate;

/// Exit code for a failed run (a check that found drift, an expired cert, …).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage: a flag or argument that cannot work.
pub const EXIT_USAGE: u8 = 2;

/// A usage error found while validating arguments, after clap parsed them.
/// `main` maps it to exit code 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Write `text` to stdout. A reader that went away (`kiln render --stdout | head`) makes
/// this fail with a broken pipe, which [`exit_code`] turns into a quiet exit 0.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")
}

/// The width tables are fitted to: `COLUMNS` when it holds a number, else the terminal's
/// width when stdout is a terminal, else 100 (piped into a file or another program).
pub(crate) fn table_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return columns;
    }
    // SAFETY: isatty and TIOCGWINSZ only read the state of fd 1 into a zeroed winsize.
    unsafe {
        if libc::isatty(libc::STDOUT_FILENO) == 1 {
            let mut size: libc::winsize = std::mem::zeroed();
            if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
                return usize::from(size.ws_col);
            }
        }
    }
    100
}

/// [`print`] for a command whose exit code says more than its output (`kiln check`, `kiln
/// certs inspect`): a reader that has gone is not an error, so a stale tree still exits 1
/// under `kiln check | head`.
pub(crate) fn print_report(text: &str) -> anyhow::Result<()> {
    match print(text) {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

/// True when `err` comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// True when stdout is a pipe or socket whose reader has gone.
fn stdout_is_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Make a closed stdout end the process quietly with exit 0, as ripgrep does, also where a
/// `print!` (which panics on a write error) meets it: the panic hook exits 0 for exactly that
/// panic, when stdout is indeed closed, and leaves every other panic to the default hook.
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && stdout_is_closed() {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The exit code for a failed run, after printing the error with its whole chain: 0 for a
/// broken pipe on stdout (the reader has all it wanted), 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", error_line(err));
    ExitCode::from(EXIT_FAILURE)
}

/// Parse a `--now` value (RFC 3339). The error says how to write one; callers add the flag.
pub(crate) fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{e}; write an RFC 3339 time such as 2027-01-01T00:00:00Z"))
}

/// kiln runs a Moby BuildKit build farm on Kubernetes the GitOps way.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Examples:
  kiln render                       render overlays/ into rendered/
  kiln render --gitops argocd       also write Argo CD Applications
  kiln check                        fail with a diff when rendered/ is stale
  kiln certs generate --namespace buildkit --out .certs
  kiln certs inspect .certs
  kiln rotate --dry-run --now 2027-01-01T00:00:00Z
  kiln build --image registry.example.com/app:1.0 --context .")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The kiln commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render overlays into manifests for Kustomize, Argo CD or Flux.
    Render(render::RenderArgs),
    /// Re-render in memory and fail with a diff when the committed tree is stale.
    Check(render::CheckArgs),
    /// Print the JSON Schema of the overlay file.
    Schema(render::SchemaArgs),
    /// Create and inspect the buildkitd mTLS certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Renew certificates and roll the CA over (run by the kiln-rotate CronJob).
    Rotate(rotate::RotateArgs),
    /// Show certificate expiry, the CA phase and the next rotation action.
    Status(rotate::StatusArgs),
    /// Build an image with buildkitd over mTLS (run by the Tekton Task step).
    Build(Box<build::BuildArgs>),
    /// Run as a KRM function: read a ResourceList on stdin, write one on stdout.
    Krm(krm::KrmArgs),
    /// Install kiln as a legacy Kustomize exec plugin for kind BuildkitStack.
    InstallPlugin(krm::InstallPluginArgs),
    /// Print shell completions.
    Completions(completions::CompletionsArgs),
}

/// Parse the process arguments.
///
/// Run by a completion script (`COMPLETE` set), kiln prints completions and exits here.
/// Two invocations are not plain subcommands: run under the name `BuildkitStack` (the
/// link `kiln install-plugin` places), kiln is the legacy Kustomize exec plugin and
/// argv[1] is its config file; run with no arguments but data on stdin (a KRM `exec.path`
/// with no `args`), kiln is the KRM function.
pub fn parse() -> Cli {
    completions::complete_from_env();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|argv0| std::path::Path::new(argv0).file_name())
        .and_then(|name| name.to_str());
    if invoked_as == Some(crate::krm::STACK_KIND) {
        let rest = args.iter().skip(1).cloned();
        return Cli::parse_from(["kiln".into(), "krm".into()].into_iter().chain(rest));
    }
    if args.len() == 1 && krm::stdin_is_piped() {
        return Cli {
            command: Command::Krm(krm::KrmArgs {
                config: None,
                detected: true,
            }),
        };
    }
    Cli::parse()
}

/// An error with its whole chain on one line, as printed: through [`crate::echo::tidy`], the
/// last guard that no value runs long and no private key is shown.
pub fn error_line(err: &anyhow::Error) -> String {
    crate::echo::tidy(&format!("{err:#}"), None)
}

/// Run one parsed command and return its exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = match cli.command {
        Command::Render(args) => render::render(args),
        Command::Check(args) => render::check(args),
        Command::Schema(args) => render::schema(args),
        Command::Certs(cmd) => certs::certs(cmd),
        Command::Rotate(args) => rotate::rotate(args),
        Command::Status(args) => rotate::status(args),
        Command::Build(args) => build::build(*args),
        Command::Krm(args) => krm::krm(args),
        Command::InstallPlugin(args) => krm::install_plugin(args),
        Command::Completions(args) => completions::completions(args),
    };
    match result {
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::SUCCESS),
        Err(err) if err.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {}", error_line(&err));
            Ok(ExitCode::from(EXIT_USAGE))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
