//! `kiln certs generate` and `kiln certs inspect`: flags in, [`crate::pki::generate`] and
//! [`crate::pki::inspect`] do the work, [`crate::output::replace_dir`] writes, and this prints.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use time::OffsetDateTime;

use super::UsageError;
use crate::duration::Duration;
use crate::output::{self, Access};
use crate::overlay::Overlay;
use crate::pki::generate::{self, GenerateError, Settings};
use crate::pki::{self, Algorithm, SecretFormat, inspect};

/// `kiln certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA, a daemon and a client certificate, as files and as Secret manifests.
    ///
    /// A drop-in for BuildKit's create-certs.sh: writes daemon/{ca,cert,key}.pem,
    /// client/{ca,cert,key}.pem, buildkit-daemon-certs.yaml, buildkit-client-certs.yaml
    /// and buildkit-ca.yaml (the CA certificate and key, kept for rotation).
    Generate(GenerateArgs),
    /// Show certificates and check expiry, chains and keys; exit 1 on any problem.
    Inspect(InspectArgs),
}

/// Arguments of `kiln certs generate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln certs generate --namespace buildkit --out .certs
  kiln certs generate --san builder.example.com --san 10.0.0.7 --format tls
  kiln certs generate --overlay prod --out .certs-prod")]
pub struct GenerateArgs {
    /// The namespace buildkitd runs in: goes into the SANs and the Secrets [default: buildkit, or the overlay's].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The buildkitd Service name [default: buildkitd, or the overlay's].
    #[arg(long)]
    pub service: Option<String>,
    /// An extra DNS name or IP address for the daemon certificate (repeatable; added to the overlay's).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// The directory to create.
    #[arg(long, default_value = ".certs")]
    pub out: PathBuf,
    /// File and Secret key names: pem (ca.pem/cert.pem/key.pem) or tls (ca.crt/tls.crt/tls.key) [default: pem].
    #[arg(long, value_enum)]
    pub format: Option<SecretFormat>,
    /// The key algorithm for all three certificates [default: ecdsa-p256].
    #[arg(long, value_enum)]
    pub algorithm: Option<Algorithm>,
    /// Lifetime of the CA, such as 5y [default: 5y].
    // Hyphen values reach the Duration parser, which says why `-1d` is wrong.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ca_validity: Option<Duration>,
    /// Lifetime of the daemon and client certificates, such as 90d [default: 90d].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub validity: Option<Duration>,
    /// Take the certificate settings (algorithm, validity, extra SANs, format, Secret names,
    /// namespace, Service name) from this overlay; flags given explicitly win.
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// The directory holding the overlay files.
    #[arg(long, value_name = "DIR", default_value = "overlays")]
    pub overlays: PathBuf,
    /// Replace the output directory if it exists (only one that holds nothing but what this command writes).
    #[arg(long)]
    pub force: bool,
    /// Issue as if the time were this (RFC 3339), instead of the system clock.
    #[arg(long, value_name = "RFC3339", value_parser = super::parse_time)]
    pub now: Option<OffsetDateTime>,
}

/// How `kiln certs inspect` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table fitted to the terminal (`COLUMNS`, else its width, else 100 when
    /// piped): issuer and usage left out, long names shortened with `…`.
    #[default]
    Table,
    /// The table with every column in full.
    Wide,
    /// A JSON array, one object per certificate.
    Json,
}

/// Arguments of `kiln certs inspect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln certs inspect .certs
  kiln certs inspect .certs/buildkit-daemon-certs.yaml -o json
  kubectl get secret buildkit-client-certs -o yaml > s.yaml && kiln certs inspect s.yaml")]
pub struct InspectArgs {
    /// A directory (as written by `kiln certs generate`, or holding ca/cert/key files),
    /// a PEM file, or a Secret YAML file (pem or tls key names).
    pub path: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Check validity as of this time (RFC 3339), instead of the system clock.
    #[arg(long, value_name = "RFC3339", value_parser = super::parse_time)]
    pub now: Option<OffsetDateTime>,
}

/// Run a `kiln certs` subcommand.
pub fn certs(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Generate(args) => generate(args),
        CertsCommand::Inspect(args) => inspect(args),
    }
}

// ---------------------------------------------------------------- generate

/// The settings of one `kiln certs generate` run: the overlay's (or the defaults), then the
/// flags on top.
fn settings(args: &GenerateArgs, overlay: &Overlay) -> Result<Settings, UsageError> {
    let certs = &overlay.certs;
    let mut extra_sans = certs.extra_sans.clone();
    extra_sans.extend(args.sans.iter().cloned());
    let format = args.format.unwrap_or(certs.format);
    let settings = Settings {
        namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| overlay.namespace.clone()),
        service: args
            .service
            .clone()
            .unwrap_or_else(|| overlay.buildkit.service_name.clone()),
        extra_sans,
        format,
        // With an overlay, the Secrets go over the shells render wrote, and a Secret's type
        // is immutable: take theirs.
        secret_type: match &args.overlay {
            Some(_) => crate::render::secrets::SHELL_TYPE.to_string(),
            None => format.secret_type().to_string(),
        },
        algorithm: args.algorithm.unwrap_or(certs.algorithm),
        ca_validity: args.ca_validity.unwrap_or(certs.ca_validity),
        validity: args.validity.unwrap_or(certs.validity),
        ca_secret: certs.secrets.ca.clone(),
        daemon_secret: certs.secrets.daemon.clone(),
        client_secret: certs.secrets.client.clone(),
    };
    for (flag, value) in [
        ("--ca-validity", settings.ca_validity),
        ("--validity", settings.validity),
    ] {
        if value.is_zero() {
            return Err(UsageError(format!(
                "invalid {flag} {value}: a certificate must be valid for longer than zero, such as 90d"
            )));
        }
    }
    if settings.validity > settings.ca_validity {
        return Err(UsageError(format!(
            "invalid --validity {}: the daemon and client certificates would outlive the CA \
             (--ca-validity {}); shorten --validity or lengthen --ca-validity",
            settings.validity, settings.ca_validity
        )));
    }
    Ok(settings)
}

/// Refuse an `--out` that cannot be (re)placed: not a directory, exists without `--force`,
/// holds anything `kiln certs generate` does not write, or has no name.
fn check_out(args: &GenerateArgs) -> anyhow::Result<()> {
    let out = &args.out;
    match fs::symlink_metadata(out) {
        Ok(meta) if !meta.is_dir() => {
            bail!(UsageError(format!(
                "--out {} exists and is not a directory; choose another --out",
                out.display()
            )))
        }
        Ok(_) if !args.force => bail!(UsageError(format!(
            "--out {} already exists; pass --force to replace it",
            out.display()
        ))),
        Ok(_) => {
            if let Some(stranger) = output::foreign_entry(out, generate::is_generated_path)? {
                bail!(UsageError(format!(
                    "--out {} holds {}, which kiln does not write; --force only replaces a directory \
                     written by `kiln certs generate`: choose another --out or remove it yourself",
                    out.display(),
                    stranger.display()
                )));
            }
        }
        Err(_) => {}
    }
    if output::name_and_parent(out).is_none() {
        bail!(UsageError(format!(
            "invalid --out {}: name a new directory, such as .certs",
            out.display()
        )));
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let overlay = match &args.overlay {
        Some(name) => crate::overlay::load(&args.overlays, name)?.overlay,
        None => Overlay::default(),
    };
    let settings = settings(&args, &overlay)?;
    let now = args.now.unwrap_or_else(OffsetDateTime::now_utc);
    // A run killed mid-swap (where the file system cannot swap in one step) left the previous
    // directory aside: put it back, so that --force decides about it as about any other.
    output::recover(&args.out, |dir| {
        dir.join(generate::GITIGNORE.0).is_file()
            && output::foreign_entry(dir, generate::is_generated_path).is_ok_and(|e| e.is_none())
    })?;
    check_out(&args)?;
    let generated = generate::generate(&settings, now).map_err(|e| match e {
        GenerateError::Invalid(e) => anyhow::Error::new(UsageError(e.to_string())),
        other => other.into(),
    })?;
    let out = &args.out;
    output::replace_dir(out, Access::Private, |stage| {
        generated.files.iter().try_for_each(|file| {
            let path =
                output::FilePath::from_path(&file.path).map_err(|error| output::OutputError::Path {
                    what: file.path.display().to_string(),
                    error,
                })?;
            stage.write(&path, &file.contents)
        })
    })?;

    let mut report = format!(
        "wrote {} ({}, namespace {}, {} key names):\n",
        out.display(),
        settings.algorithm,
        settings.namespace,
        match settings.format {
            SecretFormat::Pem => "pem",
            SecretFormat::Tls => "tls",
        }
    );
    for file in &generated.files {
        let _ = writeln!(report, "  {}", out.join(&file.path).display());
    }
    for (what, summary) in [
        ("CA", &generated.ca),
        ("daemon", &generated.daemon),
        ("client", &generated.client),
    ] {
        let _ = writeln!(
            report,
            "{what:<7} {:<40} expires {}",
            summary.subject,
            pki::rfc3339(summary.not_after)
        );
    }
    let _ = writeln!(report, "daemon SANs: {}", generated.daemon.sans.join(", "));
    super::print(&report)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- inspect

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = inspect::inspect(&args.path, now)?;
    match args.output {
        OutputFormat::Table => super::print_report(&inspect::table(&rows, Some(super::table_width())))?,
        OutputFormat::Wide => super::print_report(&inspect::table(&rows, None))?,
        OutputFormat::Json => super::print_report(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?,
    }
    let problems = inspect::problems(&rows, now);
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    eprintln!(
        "error: {} problem(s) found in {}",
        problems.len(),
        args.path.display()
    );
    Ok(ExitCode::from(super::EXIT_FAILURE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> GenerateArgs {
        let cli = crate::cli::Cli::try_parse_from(["kiln", "certs", "generate"].iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Certs(CertsCommand::Generate(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_the_overlay() {
        let mut overlay = Overlay {
            namespace: "ci".into(),
            ..Default::default()
        };
        overlay.certs.extra_sans = vec!["a.example.com".into()];
        overlay.certs.algorithm = Algorithm::Ed25519;
        let settings = settings(
            &args(&["--san", "b.example.com", "--algorithm", "ecdsa-p384"]),
            &overlay,
        )
        .unwrap();
        assert_eq!(settings.namespace, "ci");
        assert_eq!(settings.extra_sans, ["a.example.com", "b.example.com"]);
        assert_eq!(settings.algorithm, Algorithm::EcdsaP384);
        assert_eq!(settings.validity, Duration::from_days(90));
    }

    #[test]
    fn zero_and_outliving_validity_are_usage_errors() {
        let overlay = Overlay::default();
        let err = settings(&args(&["--validity", "0d"]), &overlay).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --validity 0s: a certificate must be valid for longer than zero, such as 90d"
        );
        let err = settings(&args(&["--validity", "6y"]), &overlay).unwrap_err();
        assert!(err.to_string().contains("would outlive the CA"), "{err}");
    }

    #[test]
    fn format_and_namespace_flags_reach_the_settings() {
        let settings = settings(&args(&["--format", "tls", "-n", "ci"]), &Overlay::default()).unwrap();
        assert_eq!(settings.format, SecretFormat::Tls);
        assert_eq!(settings.namespace, "ci");
    }
}
