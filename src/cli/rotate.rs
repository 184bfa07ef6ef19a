//! `kiln rotate` and `kiln status`.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use time::OffsetDateTime;

use super::UsageError;
use crate::overlay::Overlay;
use crate::rotate::executor::{CONFIG_KEY, CONFIG_MAP, Connection, KubeCluster};
use crate::rotate::namespace::{self, NamespaceError, Origin};
use crate::rotate::observe::{self, ConnectTo};
use crate::rotate::status::phase_label;
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
    /// The namespace of the Secrets and the buildkitd workload [default: as kubectl picks
    /// it: the kubeconfig context's, then the pod's ServiceAccount's, then the overlay's].
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// A resolved overlay YAML file (the CronJob mounts it at /etc/kiln/overlay.yaml).
    /// Without it or --overlay, the policy is read from the kiln-config ConfigMap in the
    /// namespace.
    #[arg(long, value_name = "FILE", conflicts_with = "overlay")]
    pub config: Option<PathBuf>,
    /// Read the settings from this overlay (file name without `.yaml`) in --overlays.
    #[arg(long, value_name = "NAME")]
    pub overlay: Option<String>,
    /// The overlays directory for --overlay.
    #[arg(long, value_name = "DIR", default_value = "overlays")]
    pub overlays: PathBuf,
    /// Plan as if it were this time (RFC 3339, such as 2027-01-01T00:00:00Z). `status`
    /// and `rotate --dry-run` take it freely; a real `rotate` also needs --unsafe-clock.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Connect to a buildkitd replica at another address, as curl's --connect-to does
    /// (repeatable): HOST:PORT is the pod DNS name or EndpointSlice address and port kiln
    /// would use, HOST2:PORT2 where to go instead (a `kubectl port-forward`, say).
    #[arg(long, value_name = "HOST:PORT:HOST2:PORT2")]
    pub connect_to: Vec<ConnectTo>,
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
    /// rollover (its later phases still wait for their gates).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub force_renew: Option<ForceRenew>,
    /// Let --now write for real: certificates dated from that time, which clients with a
    /// true clock may reject as not yet valid or expired. For tests, not for on-call.
    #[arg(long)]
    pub unsafe_clock: bool,
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

/// An overlay given on the command line, and how it was given (for messages).
fn explicit_overlay(source: &Source) -> anyhow::Result<Option<(Overlay, String)>> {
    Ok(match (&source.config, &source.overlay) {
        (None, None) => None,
        (None, Some(name)) => Some((
            crate::overlay::load(&source.overlays, name)?.overlay,
            format!("--overlay {name}"),
        )),
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("failed to read --config {}", path.display()))?;
            let overlay = crate::yaml::from_bytes::<Overlay>(&bytes, &path.display().to_string())?;
            Some((overlay, format!("--config {}", path.display())))
        }
    })
}

/// The policy in the kiln-config ConfigMap: it must exist and be for this namespace.
fn cluster_policy(connection: &Connection, namespace: &str) -> anyhow::Result<Overlay> {
    let Some(text) = connection.read_policy(namespace)? else {
        anyhow::bail!(
            "failed to find a policy: namespace {namespace} has no ConfigMap {CONFIG_MAP} (kiln render writes it for the CronJob); pass --config FILE (a resolved overlay) or --overlay NAME (from --overlays DIR)"
        );
    };
    let origin = format!("ConfigMap {namespace}/{CONFIG_MAP} key {CONFIG_KEY}");
    let overlay = crate::yaml::from_str::<Overlay>(&text, &origin)?;
    if overlay.namespace != namespace {
        anyhow::bail!(
            "failed to use the policy in {origin}: it is for namespace {}, not {namespace}; render it again, or pass --config or --overlay",
            overlay.namespace
        );
    }
    Ok(overlay)
}

/// Refuse settings that cannot produce certificates; warn about timing that cannot work
/// (a CronJob must keep renewing under an old policy rather than stop).
fn check_policy(overlay: &Overlay, given: &str) -> anyhow::Result<()> {
    let timing = crate::overlay::rotation_timing(overlay);
    for problem in &timing {
        tracing::warn!(field = %problem.field, "the policy cannot work: {}", problem.message);
    }
    if let Some(problem) = crate::overlay::validate(overlay)
        .into_iter()
        .find(|p| !timing.contains(p))
    {
        anyhow::bail!(
            "failed to read the policy ({given}): {}: {}",
            problem.field,
            problem.message
        );
    }
    Ok(())
}

/// Parse the flags, pick the namespace, find the policy and connect.
fn prepare(
    source: &Source,
    force: Option<ForceRenew>,
    writes: bool,
    unsafe_clock: bool,
) -> anyhow::Result<(Config, OffsetDateTime, KubeCluster)> {
    let now = match &source.now {
        None => OffsetDateTime::now_utc(),
        Some(text) => {
            if writes && !unsafe_clock {
                return Err(UsageError(format!(
                    "--now {text} would write certificates dated from that time: add --dry-run to plan only, or --unsafe-clock to write them anyway"
                ))
                .into());
            }
            super::parse_time(text).map_err(|e| UsageError(format!("invalid --now {text:?}: {e}")))?
        }
    };
    let explicit = explicit_overlay(source)?;
    let sources = namespace::Sources::gather(
        source.namespace.clone(),
        explicit
            .as_ref()
            .map(|(o, given)| (o.namespace.clone(), given.clone())),
    );
    let (namespace, origin) = namespace::resolve(&sources).map_err(|e| match e {
        NamespaceError::None | NamespaceError::Disagree { .. } => UsageError(e.to_string()),
    })?;
    if origin != Origin::Flag {
        tracing::debug!(namespace = %namespace, from = %origin, "namespace chosen");
    }
    let connection = Connection::connect()?;
    let (overlay, given) = match explicit {
        Some(found) => found,
        None => (
            cluster_policy(&connection, &namespace)?,
            format!("ConfigMap {namespace}/{CONFIG_MAP}"),
        ),
    };
    check_policy(&overlay, &given)?;
    let config = Config::from_overlay(&overlay, Some(&namespace), force)?;
    let settings = observe::Settings {
        connect_to: source.connect_to.clone(),
        ..observe::Settings::default()
    };
    let cluster = KubeCluster::new(connection, &config, settings);
    Ok((config, now, cluster))
}

/// `kiln rotate`.
pub fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, now, mut cluster) =
        prepare(&args.source, args.force_renew, !args.dry_run, args.unsafe_clock)?;
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
            let phase = match (report.phase_before, report.phase) {
                (before, after) if before == after => phase_label(after),
                (before, after) => format!("{} → {}", phase_label(before), phase_label(after)),
            };
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
            if let Some(waiting) = &report.waiting {
                println!("rollover held back: {waiting}");
            }
            for warning in &report.warnings {
                println!("warning: {warning}");
            }
        }
    }
    if !report.failed.is_empty() {
        eprintln!(
            "kiln: failed to write the client Secret of {} tenant(s); every other Secret was written (see the warnings)",
            report.failed.len()
        );
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln status`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let (config, now, mut cluster) = prepare(&args.source, None, false, false)?;
    let mut snapshot = cluster.read()?;
    let mismatch = crate::rotate::precheck::admit(&mut snapshot, &config).err();
    let mut state = read_state(&snapshot, config.format);
    crate::rotate::apply::observe(&mut cluster, &mut state, &config, now)?;
    let mut report = status::summarize(&state, &config, now);
    if let Some(mismatch) = mismatch {
        report.healthy = false;
        report.warnings.insert(0, mismatch.to_string());
    }
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
