//! `kiln build`: preflight the mTLS setup, pick a daemon, run buildctl, write results.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;

use super::UsageError;
use crate::build::buildctl::BuildSpec;
use crate::build::choose::{self, Policy};
use crate::build::preflight::{self, Retry};
use crate::build::run::{self, DryRun, Finished, Plan};
use crate::build::{self as core, Daemon, ImageRef, Placement};

/// How `--dry-run` prints its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object (stable field order).
    Json,
}

/// Arguments of `kiln build`.
///
/// The rendered Tekton Task passes every flag in `--flag=value` form, with empty
/// values for unset params: an empty `--platform=`, `--cache-ref=`, `--addr=` or
/// `--dockerfile=` means "not set".
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln build --image registry.example.com/app:1.0 --context . --addr tcp://buildkitd.buildkit.svc:1234
  kiln build --image registry.example.com/app:1.0 --replicas 4 --namespace buildkit -- VERSION=1.0
  kiln build --image registry.example.com/app:dev --no-push --platform linux/amd64,linux/arm64
  kiln build --image registry.example.com/app:1.0 --replicas 4 --dry-run -o json")]
pub struct BuildArgs {
    /// The image to build, such as registry.example.com/team/app:1.0 (also the Tekton IMAGE_URL result).
    #[arg(long, env = "KILN_IMAGE", value_name = "REF")]
    pub image: String,

    /// The build context directory.
    #[arg(long, env = "KILN_CONTEXT", value_name = "DIR", default_value = ".")]
    pub context: PathBuf,

    /// The Dockerfile. A relative path is looked up in the context first, then in the
    /// working directory. Default: <context>/Dockerfile.
    #[arg(long, env = "KILN_DOCKERFILE", value_name = "PATH")]
    pub dockerfile: Option<String>,

    /// A build arg KEY=VALUE (repeatable). Arguments after `--` are build args too.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,

    /// Target platforms, comma-separated and/or repeated, such as linux/amd64,linux/arm64.
    /// Empty: the daemon's own platform.
    #[arg(long = "platform", env = "KILN_PLATFORMS", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,

    /// Push the image to its registry: --push, --push=true or --push=false.
    #[arg(
        long,
        env = "KILN_PUSH",
        value_name = "BOOL",
        default_value = "true",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub push: bool,

    /// Build only, do not push (same as --push=false).
    #[arg(long = "no-push")]
    pub no_push: bool,

    /// A registry cache reference: import cache from it and export inline cache with
    /// the image. Empty: no cache.
    #[arg(long, env = "KILN_CACHE_REF", value_name = "REF")]
    pub cache_ref: Option<String>,

    /// The daemon address, tcp://host:port. Empty: choose among --replicas by
    /// rendezvous hashing with bounded load.
    #[arg(long, env = "KILN_BUILDKIT_ADDR", value_name = "URL")]
    pub addr: Option<String>,

    /// The number of buildkitd StatefulSet replicas, reached as <service>-<i>.<service>.<namespace>.svc.
    /// 1 means the Service itself, <service>.<namespace>.svc.
    #[arg(long, env = "KILN_BUILDKIT_REPLICAS", value_name = "N", default_value_t = 1)]
    pub replicas: u32,

    /// The buildkitd Service (and StatefulSet) name.
    #[arg(
        long,
        env = "KILN_BUILDKIT_SERVICE",
        value_name = "NAME",
        default_value = "buildkitd"
    )]
    pub service: String,

    /// The namespace buildkitd runs in.
    #[arg(
        long,
        env = "KILN_BUILDKIT_NAMESPACE",
        value_name = "NS",
        default_value = "buildkit"
    )]
    pub namespace: String,

    /// The buildkitd port.
    #[arg(long, env = "KILN_BUILDKIT_PORT", value_name = "PORT", default_value_t = 1234)]
    pub port: u16,

    /// The hashing key's repository part. Default: the image repository (the reference
    /// without tag or digest). The key is <affinity-key>:<context>.
    #[arg(long, env = "KILN_AFFINITY_KEY", value_name = "KEY")]
    pub affinity_key: Option<String>,

    /// The directory with the client certificates: ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key.
    #[arg(long, env = "KILN_TLS_DIR", value_name = "DIR", default_value = "/certs")]
    pub tls_dir: PathBuf,

    /// Write the Tekton results IMAGE_DIGEST and IMAGE_URL into this directory.
    /// Empty: do not write results.
    #[arg(long, env = "KILN_RESULTS_DIR", value_name = "DIR")]
    pub results_dir: Option<String>,

    /// The buildctl program.
    #[arg(long, env = "KILN_BUILDCTL", value_name = "PATH", default_value = "buildctl")]
    pub buildctl: PathBuf,

    /// Where buildctl writes its metadata (the image digest). Default: a file in the temp directory.
    #[arg(long, env = "KILN_METADATA_FILE", value_name = "PATH")]
    pub metadata_file: Option<String>,

    /// The limit for the whole build, such as 1h or 90m; buildctl is killed after it.
    #[arg(
        long,
        env = "KILN_BUILD_TIMEOUT",
        value_name = "DURATION",
        default_value = "1h"
    )]
    pub timeout: String,

    /// The limit for connecting to one daemon and completing the TLS handshake.
    #[arg(
        long,
        env = "KILN_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub connect_timeout: String,

    /// Rounds of connection attempts over the daemons, and runs of buildctl when it
    /// fails to connect before the build starts. Pauses grow from 500ms to 10s.
    #[arg(long, env = "KILN_BUILD_ATTEMPTS", value_name = "N", default_value_t = 3)]
    pub attempts: u32,

    /// Bounded load: skip a replica running more than ceil(C × (active builds on the farm + 1)
    /// / replicas) builds, for the next in the key's order; a repository that makes a large
    /// share of the builds the daemons report is spread over the key's first few replicas,
    /// least loaded first. 0 turns both off (pure hashing).
    #[arg(long, env = "KILN_LOAD_FACTOR", value_name = "C", default_value_t = choose::DEFAULT_LOAD_FACTOR)]
    pub load_factor: f64,

    /// The limit for asking one replica what it is building; one that does not answer in
    /// time counts as full. Such as 500ms or 2s.
    #[arg(
        long,
        env = "KILN_LOAD_TIMEOUT",
        value_name = "DURATION",
        default_value = "500ms"
    )]
    pub load_timeout: String,

    /// Rerun the whole build on the next daemon in the choice's order when the daemon goes
    /// away while the build runs (a restart, a lost connection), at most N times.
    #[arg(
        long,
        env = "KILN_RETRIES_AFTER_INTERRUPTION",
        value_name = "N",
        default_value_t = 1
    )]
    pub retries_after_interruption: u32,

    /// Print the daemon order, the chosen daemon and the buildctl command line, and stop:
    /// no handshake, no buildctl. Loads are still asked (use --load-factor 0 to skip that).
    #[arg(long)]
    pub dry_run: bool,

    /// The --dry-run report's format.
    #[arg(long, short = 'o', value_enum, default_value_t, requires = "dry_run")]
    pub output: OutputFormat,

    /// Connect to ADDR instead of resolving HOST:PORT, still verifying the daemon's
    /// certificate for HOST (like curl's --connect-to). Repeatable.
    #[arg(long = "connect-to", value_name = "HOST:PORT=IP:PORT")]
    pub connect_to: Vec<String>,

    /// Check certificates as of this instant (RFC 3339) instead of the clock.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,

    /// Build args KEY=VALUE after `--` (the Task passes its BUILD_ARGS array here).
    #[arg(last = true, value_name = "KEY=VALUE")]
    pub trailing_build_args: Vec<String>,
}

/// `kiln build` after validation.
#[derive(Debug)]
struct Config {
    spec: BuildSpec,
    placement: Placement,
    affinity_key: String,
    connect_to: Vec<((String, u16), SocketAddr)>,
    tls_dir: PathBuf,
    results_dir: Option<PathBuf>,
    buildctl: PathBuf,
    metadata_file: PathBuf,
    timeout: Duration,
    retry: Retry,
    now: Option<OffsetDateTime>,
    policy: Policy,
    load_timeout: Duration,
    reruns: u32,
    dry_run: Option<OutputFormat>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn usage(error: impl std::fmt::Display) -> anyhow::Error {
    UsageError(error.to_string()).into()
}

/// A usage error that names the flag it came from.
fn flag_usage(flag: &'static str) -> impl Fn(core::BuildError) -> anyhow::Error {
    move |error| usage(format!("--{flag}: {error}"))
}

fn parse_duration(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let parsed: crate::duration::Duration = value
        .parse()
        .map_err(|e| usage(format!("invalid --{flag}: {e}")))?;
    if parsed.is_zero() {
        return Err(usage(format!(
            "invalid --{flag} {value:?}: it must be longer than zero"
        )));
    }
    Ok(Duration::from_secs(parsed.as_secs().unsigned_abs()))
}

/// A duration that may also be whole milliseconds, such as 500ms.
fn parse_short_duration(flag: &str, value: &str) -> anyhow::Result<Duration> {
    match value.trim().strip_suffix("ms") {
        Some(ms) => match ms.parse::<u64>() {
            Ok(0) | Err(_) => Err(usage(format!(
                "invalid --{flag} {value:?}: write a duration longer than zero, such as 500ms or 2s"
            ))),
            Ok(ms) => Ok(Duration::from_millis(ms)),
        },
        None => parse_duration(flag, value),
    }
}

fn validate(args: BuildArgs) -> anyhow::Result<Config> {
    let image = ImageRef::parse(&args.image).map_err(flag_usage("image"))?;
    let mut build_args = Vec::new();
    for raw in args.build_args.iter().chain(&args.trailing_build_args) {
        build_args.push(core::parse_build_arg(raw).map_err(flag_usage("build-arg"))?);
    }
    let platforms = core::parse_platforms(&args.platforms).map_err(flag_usage("platform"))?;
    let cache_ref = match non_empty(args.cache_ref) {
        Some(reference) => Some(ImageRef::parse(&reference).map_err(flag_usage("cache-ref"))?.full),
        None => None,
    };
    let mut connect_to = Vec::new();
    for raw in &args.connect_to {
        connect_to.push(core::parse_connect_to(raw).map_err(usage)?);
    }
    let placement = match non_empty(args.addr) {
        Some(addr) => Placement::Addr(core::parse_addr(&addr).map_err(flag_usage("addr"))?),
        None => Placement::replicas(args.replicas, args.service, args.namespace, args.port).map_err(usage)?,
    };
    let timeout = parse_duration("timeout", &args.timeout)?;
    let connect_timeout = parse_duration("connect-timeout", &args.connect_timeout)?;
    if args.attempts == 0 {
        return Err(usage("invalid --attempts 0: use at least 1"));
    }
    let c = args.load_factor;
    if !(c == 0.0 || (1.0..=choose::MAX_LOAD_FACTOR).contains(&c)) {
        return Err(usage(format!(
            "invalid --load-factor {c}: use 0 (off) or a factor from 1 to {}, such as {}",
            choose::MAX_LOAD_FACTOR,
            choose::DEFAULT_LOAD_FACTOR
        )));
    }
    let load_timeout = parse_short_duration("load-timeout", &args.load_timeout)?;
    let now = match args.now.as_deref() {
        Some(text) => {
            Some(super::parse_time(text).map_err(|e| usage(format!("invalid --now {text:?}: {e}")))?)
        }
        None => None,
    };
    let context = core::normalize_path(&args.context);
    let dockerfile = non_empty(args.dockerfile).map(PathBuf::from);
    let repository = non_empty(args.affinity_key).unwrap_or_else(|| image.repository.clone());
    let affinity_key = choose::affinity_key(&repository, &context.to_string_lossy());
    let metadata_file = non_empty(args.metadata_file)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("kiln-build-{}.metadata.json", std::process::id()))
        });
    // Resolving the Dockerfile touches the file system; do it after every flag is known
    // to be well-formed, so usage errors come first.
    let dockerfile = core::resolve_dockerfile(&context, dockerfile.as_deref())?;
    let push = args.push && !args.no_push;
    Ok(Config {
        spec: BuildSpec {
            image,
            context,
            dockerfile,
            build_args,
            platforms,
            push,
            cache_ref,
        },
        placement,
        affinity_key,
        connect_to,
        tls_dir: args.tls_dir,
        results_dir: non_empty(args.results_dir).map(PathBuf::from),
        buildctl: args.buildctl,
        metadata_file,
        timeout,
        retry: Retry {
            rounds: args.attempts,
            backoff: Duration::from_millis(500),
            connect_timeout,
        },
        now,
        policy: Policy::with_load_factor(c),
        load_timeout,
        reruns: args.retries_after_interruption,
        dry_run: args.dry_run.then_some(args.output),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Another command (or a test harness) may have set a subscriber already.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1))
}

/// Run `kiln build`.
pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let config = validate(args)?;
    init_logging();
    let files = preflight::find_tls_files(&config.tls_dir)?;
    let material = preflight::read_material(&files)?;
    let now = config.now.unwrap_or_else(OffsetDateTime::now_utc);
    let source = preflight::cert_source(&config.tls_dir);
    let client = preflight::check_client(&files, &material, now, source)?;
    tracing::info!(
        subject = %client.subject,
        expires = %crate::pki::rfc3339(client.not_after),
        "client certificate is valid and chains to the CA bundle"
    );
    let tls_config = preflight::client_config(&config.tls_dir, &material)?;
    let candidates = core::daemon_candidates(&config.placement, &config.affinity_key, &config.connect_to);
    tracing::info!(
        key = %config.affinity_key,
        order = %candidates.iter().map(Daemon::name).collect::<Vec<_>>().join(","),
        "daemon order"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    // A --timeout of billions of years parses, but would overflow the monotonic clock.
    if Instant::now().checked_add(config.timeout).is_none() {
        return Err(usage(format!(
            "invalid --timeout: {}s is too long; use a duration such as 30m",
            config.timeout.as_secs()
        )));
    }
    let choice = runtime.block_on(run::choose_by_load(
        &candidates,
        tls_config.clone(),
        &config.policy,
        config.load_timeout,
        &config.spec.image.repository,
    ));
    let names: Vec<String> = candidates.iter().map(Daemon::name).collect();
    tracing::info!("{}", choice.describe(&names));
    let order = run::ordered(&candidates, &choice);
    if let Some(format) = config.dry_run {
        let argv = run::argv_line(
            &config.buildctl,
            &config.spec,
            &candidates[choice.chosen()],
            &files,
            &config.metadata_file,
        );
        let report = DryRun::new(&config.affinity_key, &config.policy, &candidates, &choice, argv);
        let text = match format {
            OutputFormat::Text => report.text(),
            OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
        };
        let mut stdout = std::io::stdout().lock();
        match std::io::Write::write_all(&mut stdout, text.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut stdout))
        {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).context("failed to write to stdout");
            }
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
    let plan = Plan {
        spec: config.spec,
        files,
        order,
        buildctl: config.buildctl,
        metadata_file: config.metadata_file,
        results_dir: config.results_dir,
        timeout: config.timeout,
        retry: config.retry,
        reruns_after_interruption: config.reruns,
    };
    match run::execute(&plan, tls_config, &runtime)? {
        Finished::Built(_) => Ok(ExitCode::SUCCESS),
        Finished::Failed(code) => Ok(exit_code(code)),
    }
}
