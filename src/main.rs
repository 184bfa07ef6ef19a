use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kiln::cli::parse();
    match kiln::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", kiln::cli::error_line(&err));
            ExitCode::from(kiln::cli::EXIT_FAILURE)
        }
    }
}
