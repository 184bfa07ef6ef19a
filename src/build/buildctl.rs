//! The buildctl command line (pure) and running it (process edge).
//!
//! The TLS flags are buildctl's *global* flags, so they go before `build`. The
//! three file flags are used instead of `--tlsdir` because the Secret may use
//! either naming, and buildctl refuses `--tlsdir` together with them.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::preflight::TlsFiles;
use super::{Daemon, ImageRef, Results};

/// What to build, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The image to produce.
    pub image: ImageRef,
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (a file path).
    pub dockerfile: PathBuf,
    /// `KEY=VALUE` build args, in order.
    pub build_args: Vec<(String, String)>,
    /// Target platforms (empty: the daemon's own).
    pub platforms: Vec<String>,
    /// Push the image to its registry.
    pub push: bool,
    /// Registry cache to import from (and export inline cache alongside the image).
    pub cache_ref: Option<String>,
}

/// The arguments for buildctl (without the program name).
pub fn argv(spec: &BuildSpec, daemon: &Daemon, tls: &TlsFiles, metadata_file: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |a: &str, b: OsString| {
        args.push(a.into());
        args.push(b);
    };
    push("--addr", daemon.buildctl_addr().into());
    push("--tlsservername", daemon.host.clone().into());
    push("--tlscacert", tls.ca.clone().into());
    push("--tlscert", tls.cert.clone().into());
    push("--tlskey", tls.key.clone().into());
    args.push("build".into());
    let mut push = |a: &str, b: OsString| {
        args.push(a.into());
        args.push(b);
    };
    push("--frontend", "dockerfile.v0".into());
    push("--local", prefixed("context=", &spec.context));
    let dockerfile_dir = match spec.dockerfile.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    push("--local", prefixed("dockerfile=", &dockerfile_dir));
    let file_name = spec
        .dockerfile
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| "Dockerfile".into());
    let mut filename = OsString::from("filename=");
    filename.push(file_name);
    push("--opt", filename);
    for (key, value) in &spec.build_args {
        push("--opt", format!("build-arg:{key}={value}").into());
    }
    if !spec.platforms.is_empty() {
        push("--opt", format!("platform={}", spec.platforms.join(",")).into());
    }
    push(
        "--output",
        format!("type=image,name={},push={}", spec.image.full, spec.push).into(),
    );
    if let Some(cache_ref) = &spec.cache_ref {
        push("--export-cache", "type=inline".into());
        push("--import-cache", format!("type=registry,ref={cache_ref}").into());
    }
    push("--metadata-file", metadata_file.as_os_str().to_owned());
    args
}

fn prefixed(prefix: &str, path: &Path) -> OsString {
    let mut out = OsString::from(prefix);
    out.push(path.as_os_str());
    out
}

/// Watches buildctl's stderr to tell three failures apart: a connection failure before
/// the build started (safe to retry on any daemon), the daemon lost while the build ran
/// (rerun elsewhere: [`Outcome::Interrupted`]), and a build that failed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StderrWatch {
    line: Vec<u8>,
    started: bool,
    connection_error: bool,
    /// The last `error: ` line buildctl printed (lower-cased, capped), once the build started.
    last_error: Option<String>,
}

/// stderr fragments of gRPC connection failures (daemon down, restarting, unreachable).
/// buildctl prints the gRPC code in two forms: `Unavailable: …` for unary calls and
/// `rpc error: code = Unavailable desc = …` for streams.
const CONNECTION_PATTERNS: &[&str] = &[
    "connection refused",
    "code = unavailable",
    "unavailable: ",
    "failed to dial",
    "error while dialing",
    "connection reset by peer",
    "no such host",
    "i/o timeout",
    "context deadline exceeded",
    "broken pipe",
    "connection closed before server preface",
    "error reading server preface",
];

/// How grpc-go words an established connection that went away (moby/buildkit v0.32.2
/// vendors grpc-go 1.82; `transport is closing` is older grpc-go's wording).
const LOST_PATTERNS: &[&str] = &[
    "error reading from server",
    "connection reset by peer",
    "received prior goaway",
    "graceful_stop",
    "transport is closing",
    "the connection is draining",
    "broken pipe",
];

/// Certificate and TLS failures: also `Unavailable`, but a rerun cannot fix them.
const PERMANENT_PATTERNS: &[&str] = &["authentication handshake failed", "x509:", "tls: ", "certificate"];

/// A build step that failed: its own output may quote any text, connection words included.
const STEP_FAILED: &str = "did not complete successfully";

fn is_unavailable(line: &str) -> bool {
    line.contains("code = unavailable desc =") || line.contains(": unavailable: ")
}

impl StderrWatch {
    /// Feed the next chunk of stderr.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                self.finish_line();
            } else if self.line.len() < 4096 {
                self.line.push(byte);
            }
        }
    }

    fn finish_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).to_ascii_lowercase();
        let trimmed = line.trim_start();
        // Progress lines (`#1 [internal] load build definition`, tty `[+] Building`)
        // mean the daemon accepted the session: the build has started.
        let progress = trimmed.starts_with("[+] building")
            || (trimmed.starts_with('#') && trimmed[1..].starts_with(|c: char| c.is_ascii_digit()));
        let permanent = PERMANENT_PATTERNS.iter().any(|p| line.contains(p));
        if progress {
            self.started = true;
        } else if !self.started {
            if CONNECTION_PATTERNS.iter().any(|p| line.contains(p)) && !permanent {
                self.connection_error = true;
            }
        } else if trimmed.starts_with("error: ") {
            // buildctl prints its one fatal error as `error: …` (handleErr in its main.go).
            self.last_error = Some(trimmed.chars().take(400).collect());
        }
        self.line.clear();
    }

    /// True when buildctl failed to reach the daemon and nothing was built yet.
    pub fn retryable(&mut self) -> bool {
        self.finish_line();
        self.connection_error && !self.started
    }

    /// When the build had started and buildctl's error says the connection to the daemon
    /// went away (gRPC Unavailable with a lost-connection description, not a certificate
    /// problem, not a failed step), that error line.
    pub fn interrupted(&mut self) -> Option<String> {
        self.finish_line();
        let line = self.last_error.as_deref()?;
        let lost = self.started
            && is_unavailable(line)
            && LOST_PATTERNS.iter().any(|p| line.contains(p))
            && !PERMANENT_PATTERNS.iter().any(|p| line.contains(p))
            && !line.contains(STEP_FAILED);
        lost.then(|| line.to_string())
    }
}

/// How one buildctl run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// buildctl exited 0.
    Success,
    /// buildctl failed before the build started, on a connection error.
    ConnectionError(i32),
    /// The build started, then the connection to the daemon went away: buildctl's exit
    /// code and its error line.
    Interrupted(i32, String),
    /// buildctl failed with this exit code (128+signal when killed by a signal).
    Failed(i32),
    /// The build ran longer than `--timeout` and was killed.
    TimedOut,
}

/// Why buildctl could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("failed to start buildctl {program}: {source}; install it or pass --buildctl PATH")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for or reading from buildctl failed.
    #[error("failed to run buildctl {program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Run buildctl with `args`, stdout inherited, stderr copied through unchanged while
/// being watched for connection errors; kill it after `timeout`.
pub async fn run(program: &Path, args: &[OsString], timeout: Duration) -> Result<Outcome, RunError> {
    let name = program.display().to_string();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: name.clone(),
            source,
        })?;
    let io_error = |source| RunError::Io {
        program: name.clone(),
        source,
    };
    let mut stderr = child.stderr.take();
    let mut watch = StderrWatch::default();
    let copy_and_wait = async {
        if let Some(pipe) = stderr.as_mut() {
            let mut buffer = [0u8; 8192];
            loop {
                let read = pipe.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                let chunk = &buffer[..read];
                watch.feed(chunk);
                let mut out = std::io::stderr().lock();
                // A closed stderr must not stop the build; keep draining the pipe.
                let _ = out.write_all(chunk).and_then(|()| out.flush());
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(timeout, copy_and_wait).await {
        Ok(status) => status.map_err(io_error)?,
        Err(_) => {
            child.kill().await.map_err(io_error)?;
            return Ok(Outcome::TimedOut);
        }
    };
    if status.success() {
        return Ok(Outcome::Success);
    }
    let code = exit_code(&status);
    Ok(if watch.retryable() {
        Outcome::ConnectionError(code)
    } else if let Some(line) = watch.interrupted() {
        Outcome::Interrupted(code, line)
    } else {
        Outcome::Failed(code)
    })
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(1)
}

/// Why the Tekton results could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to write Tekton result {path}: {source}; check that --results-dir is writable")]
pub struct ResultsError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Write `IMAGE_URL` and (when known) `IMAGE_DIGEST` into `dir`, without trailing
/// newlines, as Tekton Chains reads them.
pub fn write_results(dir: &Path, results: &Results) -> Result<(), ResultsError> {
    let write = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, value).map_err(|source| ResultsError {
            path: path.display().to_string(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| ResultsError {
        path: dir.display().to_string(),
        source,
    })?;
    write("IMAGE_URL", &results.image_url)?;
    if let Some(digest) = &results.image_digest {
        write("IMAGE_DIGEST", digest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BuildSpec {
        BuildSpec {
            image: ImageRef::parse("registry.example.com/app:1").unwrap(),
            context: "/ws/src".into(),
            dockerfile: "/ws/src/docker/Dockerfile.prod".into(),
            build_args: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            push: true,
            cache_ref: Some("registry.example.com/app:cache".into()),
        }
    }

    #[test]
    fn argv_puts_tls_flags_before_build() {
        let daemon = Daemon {
            host: "buildkitd-1.buildkitd.ci.svc".into(),
            port: 1234,
            connect_to: None,
        };
        let tls = TlsFiles {
            ca: "/certs/ca.crt".into(),
            cert: "/certs/tls.crt".into(),
            key: "/certs/tls.key".into(),
        };
        let args: Vec<String> = argv(&spec(), &daemon, &tls, Path::new("/tmp/m.json"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let expected = "--addr tcp://buildkitd-1.buildkitd.ci.svc:1234 --tlsservername buildkitd-1.buildkitd.ci.svc \
            --tlscacert /certs/ca.crt --tlscert /certs/tls.crt --tlskey /certs/tls.key build \
            --frontend dockerfile.v0 --local context=/ws/src --local dockerfile=/ws/src/docker \
            --opt filename=Dockerfile.prod --opt build-arg:A=1 --opt build-arg:B=x=y \
            --opt platform=linux/amd64,linux/arm64 \
            --output type=image,name=registry.example.com/app:1,push=true \
            --export-cache type=inline --import-cache type=registry,ref=registry.example.com/app:cache \
            --metadata-file /tmp/m.json";
        assert_eq!(
            args.join(" "),
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn connection_errors_before_progress_are_retryable() {
        let mut watch = StderrWatch::default();
        watch.feed(b"error: failed to get status: rpc error: code = Unavailable desc = connection error: ");
        watch.feed(
            b"\"transport: Error while dialing: dial tcp 10.0.0.1:1234: connect: connection refused\"\n",
        );
        assert!(watch.retryable());

        let mut started = StderrWatch::default();
        started.feed(b"#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n");
        started.feed(b"error: rpc error: code = Unavailable desc = connection reset by peer\n");
        assert!(!started.retryable(), "a build that started must not be rerun");

        let mut build_failed = StderrWatch::default();
        build_failed
            .feed(b"error: failed to solve: process \"/bin/sh -c make\" did not complete successfully\n");
        assert!(!build_failed.retryable());

        let mut tty = StderrWatch::default();
        tty.feed(b"[+] Building 0.3s (2/5)\r\nerror: connection refused\n");
        assert!(!tty.retryable());

        let mut tls = StderrWatch::default();
        tls.feed(b"error: listing workers for Build: failed to list workers: Unavailable: connection error: desc = \"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority\"\n");
        assert!(!tls.retryable(), "a certificate problem is not fixed by retrying");
    }

    /// buildctl's real wording when the daemon goes away mid-build (grpc-go via
    /// moby/buildkit's client: unary `Unavailable: …`, streams `rpc error: code = …`).
    const LOST: &[&str] = &[
        "error: failed to solve: Unavailable: error reading from server: EOF",
        "error: failed to receive status: rpc error: code = Unavailable desc = error reading from server: EOF",
        "error: failed to receive status: rpc error: code = Unavailable desc = closing transport due to: connection error: desc = \"error reading from server: EOF\", received prior goaway: code: NO_ERROR, debug data: \"graceful_stop\"",
        "error: failed to receive status: rpc error: code = Unavailable desc = transport is closing",
        "error: failed to solve: Unavailable: error reading from server: read tcp 10.0.0.2:50412->10.0.0.7:1234: read: connection reset by peer",
        "error: failed to get status: rpc error: code = Unavailable desc = the connection is draining",
    ];

    #[test]
    fn a_daemon_lost_mid_build_is_an_interruption() {
        for line in LOST {
            let mut watch = StderrWatch::default();
            watch.feed(
                b"#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n#5 [2/3] RUN make\n",
            );
            watch.feed(line.as_bytes());
            watch.feed(b"\n");
            assert!(!watch.retryable(), "{line}");
            assert_eq!(
                watch.interrupted().as_deref(),
                Some(line.to_ascii_lowercase().as_str()),
                "{line}"
            );
        }
    }

    #[test]
    fn other_failures_are_not_interruptions() {
        for (progress, last) in [
            // A failed step, even one whose command quotes connection words.
            (
                "#5 0.52 curl: (56) Recv failure: Connection reset by peer\n",
                "error: failed to solve: process \"/bin/sh -c curl https://example.com\" did not complete successfully: exit code: 56",
            ),
            (
                "#5 [2/3] RUN echo\n",
                "error: failed to solve: process \"/bin/sh -c echo 'code = Unavailable desc = transport is closing'; exit 1\" did not complete successfully: exit code: 1",
            ),
            // A registry that hung up while pushing: not the daemon connection.
            (
                "#9 pushing layers\n",
                "error: failed to solve: failed to push registry.example.com/app:1: failed to do request: Put \"https://registry.example.com/v2/\": read: connection reset by peer",
            ),
            // A certificate problem.
            (
                "#1 [internal] load\n",
                "error: failed to solve: Unavailable: connection error: desc = \"transport: authentication handshake failed: x509: certificate has expired\"",
            ),
        ] {
            let mut watch = StderrWatch::default();
            watch.feed(progress.as_bytes());
            watch.feed(last.as_bytes());
            assert_eq!(watch.interrupted(), None, "{last}");
        }
        // The same lost-connection line before any progress is a connection error instead.
        let mut early = StderrWatch::default();
        early.feed(LOST[0].as_bytes());
        assert!(early.retryable());
        assert_eq!(early.interrupted(), None);
    }
}
