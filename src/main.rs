use std::process::ExitCode;

fn main() -> ExitCode {
    kiln::cli::quiet_broken_pipe();
    let cli = kiln::cli::parse();
    kiln::cli::run(cli).unwrap_or_else(|err| kiln::cli::exit_code(&err))
}
