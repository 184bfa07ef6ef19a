//! `kiln build`: preflight the mTLS setup, pick a daemon, run buildctl, write results.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;

use super::UsageError;
use crate::build::buildctl::{self, BuildSpec, Outcome};
use crate::build::preflight::{self, Retry};
use crate::build::{self as core, Daemon, ImageRef, Placement};

/// Arguments of `kiln build`.
///
/// The rendered Tekton Task passes every flag in `--flag=value` form, with empty
/// values for unset params: an empty `--platform=`, `--cache-ref=`, `--addr=` or
/// `--dockerfile=` means "not set".
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kiln build --image registry.example.com/app:1.0 --context . --addr tcp://buildkitd.buildkit.svc:1234
  kiln build --image registry.example.com/app:1.0 --replicas 4 --namespace buildkit -- VERSION=1.0
  kiln build --image registry.example.com/app:dev --no-push --platform linux/amd64,linux/arm64")]
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
    /// consistent hashing.
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

    /// The consistent-hashing key's repository part. Default: the image repository
    /// (the reference without tag or digest). The key is <affinity-key>:<context>.
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
        None => {
            if args.replicas == 0 {
                return Err(usage(
                    "invalid --replicas 0: there must be at least one buildkitd",
                ));
            }
            if args.replicas > core::MAX_REPLICAS {
                return Err(usage(format!(
                    "invalid --replicas {}: kiln build hashes over at most {} replicas; pass --addr for a Service instead",
                    args.replicas,
                    core::MAX_REPLICAS
                )));
            }
            for (flag, value) in [("service", &args.service), ("namespace", &args.namespace)] {
                if !crate::names::is_dns1123_label(value) {
                    return Err(usage(format!(
                        "invalid --{flag} {value:?}: {}",
                        crate::names::LABEL_RULE
                    )));
                }
            }
            if args.port == 0 {
                return Err(usage("invalid --port 0: use buildkitd's port, 1234 by default"));
            }
            Placement::Replicas {
                replicas: args.replicas,
                service: args.service,
                namespace: args.namespace,
                port: args.port,
            }
        }
    };
    let timeout = parse_duration("timeout", &args.timeout)?;
    let connect_timeout = parse_duration("connect-timeout", &args.connect_timeout)?;
    if args.attempts == 0 {
        return Err(usage("invalid --attempts 0: use at least 1"));
    }
    let now = match args.now.as_deref() {
        Some(text) => {
            Some(super::parse_time(text).map_err(|e| usage(format!("invalid --now {text:?}: {e}")))?)
        }
        None => None,
    };
    let context = core::normalize_path(&args.context);
    let dockerfile = non_empty(args.dockerfile).map(PathBuf::from);
    let repository = non_empty(args.affinity_key).unwrap_or_else(|| image.repository.clone());
    let affinity_key = crate::build::ring::affinity_key(&repository, &context.to_string_lossy());
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
    let client = preflight::check_client(&files, &material, now)?;
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
    let deadline = Instant::now().checked_add(config.timeout).ok_or_else(|| {
        usage(format!(
            "invalid --timeout: {}s is too long; use a duration such as 30m",
            config.timeout.as_secs()
        ))
    })?;
    let attempts = config.retry.rounds.max(1);
    for attempt in 0..attempts {
        let chosen = runtime.block_on(preflight::choose_daemon(
            &candidates,
            tls_config.clone(),
            &files.ca,
            config.retry,
        ))?;
        let daemon = &candidates[chosen];
        if chosen > 0 {
            tracing::warn!(daemon = %daemon.name(), "building on a fallover daemon; its cache for this repository may be cold");
        }
        let args: Vec<OsString> = buildctl::argv(&config.spec, daemon, &files, &config.metadata_file);
        // A metadata file left from an earlier run must not be mistaken for this one's.
        match std::fs::remove_file(&config.metadata_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "failed to remove stale metadata file {}",
                        config.metadata_file.display()
                    )
                });
            }
        }
        tracing::info!(daemon = %daemon.name(), image = %config.spec.image, attempt = attempt + 1, "running buildctl");
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = runtime.block_on(buildctl::run(&config.buildctl, &args, remaining))?;
        match outcome {
            Outcome::Success => return finish(&config),
            Outcome::ConnectionError(code) if attempt + 1 < attempts => {
                let pause = config.retry.pause(attempt);
                tracing::warn!(
                    code,
                    daemon = %daemon.name(),
                    "buildctl could not reach buildkitd before the build started; retrying in {pause:?}"
                );
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            }
            Outcome::ConnectionError(code) | Outcome::Failed(code) => {
                tracing::error!(code, "buildctl failed");
                return Ok(exit_code(code));
            }
            Outcome::TimedOut => anyhow::bail!(
                "the build ran longer than --timeout {} and buildctl was killed: raise --timeout, or check the daemon's load",
                humantime(config.timeout)
            ),
        }
    }
    anyhow::bail!("buildctl could not reach buildkitd after {attempts} attempts: see the errors above")
}

fn humantime(d: Duration) -> String {
    crate::duration::Duration::from_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).to_string()
}

fn finish(config: &Config) -> anyhow::Result<ExitCode> {
    let metadata_path = config.metadata_file.display().to_string();
    let metadata = match std::fs::read_to_string(&config.metadata_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !config.spec.push => "{}".to_string(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("failed to read buildctl metadata file {metadata_path}: buildctl succeeded but wrote no digest")
            });
        }
    };
    let results =
        core::results_from_metadata(&config.spec.image, config.spec.push, &metadata_path, &metadata)?;
    match &results.image_digest {
        Some(digest) => tracing::info!(image = %results.image_url, %digest, "built"),
        None => {
            tracing::warn!(image = %results.image_url, "built, but buildctl reported no digest; IMAGE_DIGEST is not written")
        }
    }
    if let Some(dir) = &config.results_dir {
        buildctl::write_results(dir, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}
