//! `kiln rotate` and `kiln status`.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use time::OffsetDateTime;

use super::UsageError;
use crate::overlay::Overlay;
use crate::rotate::executor::KubeCluster;
use crate::rotate::{Cluster, Config, ForceRenew, RunOptions, read_state, status};

/// Output format of `kiln rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotateOutput {
    /// One line per change, for humans.
    Text,
    /// The run report as JSON, for scripts.
    Json,
}

/// Output format of `kiln status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// A table, for humans.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Where the settings come from, shared by rotate and status.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// The namespace of the Secrets and the buildkitd workload [default: the overlay's].
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// A resolved overlay YAML file (the CronJob mounts it at /etc/kiln/overlay.yaml).
    /// Without it or --overlay, the built-in defaults are used.
    #[arg(long, value_name = "FILE", conflicts_with = "overlay")]
    pub config: Option<PathBuf>,
    /// Read the settings from this overlay (file name without `.yaml`) in --overlays.
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// The overlays directory for --overlay.
    #[arg(long, value_name = "DIR", default_value = "overlays")]
    pub overlays: PathBuf,
    /// Plan as if it were this time (RFC 3339, such as 2027-01-01T00:00:00Z), for dry
    /// runs, what-if questions and tests.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
}

/// Arguments of `kiln rotate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when all is well (changed or not), 1 on failure, 2 on bad usage.
Examples:
  kiln rotate --config /etc/kiln/overlay.yaml --namespace buildkit
  kiln rotate --dry-run --now 2029-01-01T00:00:00Z -o json"
)]
pub struct RotateArgs {
    #[command(flatten)]
    pub source: Source,
    /// Plan and print what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Renew now: `leaf` reissues the daemon and client certificates, `ca` starts a CA
    /// rollover (its later phases still wait for the propagation delay).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub force_renew: Option<ForceRenew>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: RotateOutput,
}

/// Arguments of `kiln status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: Source,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: StatusOutput,
}

/// Logs go to stderr: JSON when it is not a terminal (the CronJob), text otherwise.
/// `RUST_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().with_current_span(false).try_init()
    };
    // Already initialised (tests call in-process): keep the first.
    drop(result);
}

fn load_config(source: &Source, force: Option<ForceRenew>) -> anyhow::Result<(Config, OffsetDateTime)> {
    let now = match &source.now {
        None => OffsetDateTime::now_utc(),
        Some(text) => {
            super::parse_time(text).map_err(|e| UsageError(format!("invalid --now {text:?}: {e}")))?
        }
    };
    let overlay = match (&source.config, &source.overlay) {
        (None, Some(name)) => crate::overlay::load(&source.overlays, name)?.overlay,
        (None, None) => Overlay::default(),
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("failed to read --config {}", path.display()))?;
            crate::yaml::from_bytes::<Overlay>(&bytes, &path.display().to_string())?
        }
    };
    let config = Config::from_overlay(&overlay, source.namespace.as_deref(), force)?;
    Ok((config, now))
}

/// `kiln rotate`.
pub fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, now) = load_config(&args.source, args.force_renew)?;
    let mut cluster = KubeCluster::connect(&config)?;
    let report = crate::rotate::run(
        &mut cluster,
        &config,
        RunOptions {
            now,
            dry_run: args.dry_run,
        },
    )?;
    match args.output {
        RotateOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        RotateOutput::Text => {
            let phase = report
                .phase
                .map(|p| p.to_string())
                .unwrap_or_else(|| "none".into());
            let verb = if report.dry_run { "would change" } else { "changed" };
            if report.changes.is_empty() {
                println!(
                    "nothing to do in namespace {} (CA phase {phase})",
                    config.namespace
                );
            } else {
                println!(
                    "{verb} {} object(s) in namespace {} (CA phase {phase}):",
                    report.changes.len(),
                    config.namespace
                );
            }
            for change in &report.changes {
                let mut line = format!("  {:<40} {}", change.object, change.reason);
                if let (Some(serial), Some(not_after)) = (&change.serial, change.not_after) {
                    let date = crate::pki::rfc3339(not_after);
                    line.push_str(&format!(
                        " (serial {}, expires {date})",
                        crate::rotate::short_hex(serial)
                    ));
                }
                println!("{line}");
            }
            for warning in &report.warnings {
                println!("warning: {warning}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln status`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, now) = load_config(&args.source, None)?;
    let mut cluster = KubeCluster::connect(&config)?;
    let snapshot = cluster.read()?;
    let state = read_state(&snapshot, config.format);
    let report = status::summarize(&state, &config, now);
    match args.output {
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        StatusOutput::Table => print!("{}", status::table(&report)),
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}
