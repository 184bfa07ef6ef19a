//! `kiln build`: preflight against a real rustls server (certificates from the PKI
//! module), daemon choice and fallover, the exact buildctl command line (with a
//! stand-in buildctl on PATH), Tekton results, exit codes, and the Task contract.

#[path = "support/daemon.rs"]
mod daemon;
mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::stderr;

use kiln::build::preflight::{
    self, CertSource, ClientMaterial, HandshakeFailure, PreflightError, Retry, TlsFiles,
};
use kiln::build::{Daemon, Placement};
use kiln::pki::{self, Algorithm, CaRequest, Issued, LeafKind, LeafRequest, San, SecretFormat, Serial};
use time::OffsetDateTime;

// ---------------------------------------------------------------------------
// Certificates, made by the PKI module.

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn issue_ca(name: &str) -> Issued {
    pki::issue_ca(&CaRequest {
        common_name: name.into(),
        algorithm: Algorithm::EcdsaP256,
        not_before: now() - time::Duration::days(30),
        not_after: now() + time::Duration::days(365),
        serial: Serial::random().unwrap(),
    })
    .unwrap()
}

fn issue(
    ca: &Issued,
    kind: LeafKind,
    sans: Vec<San>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Issued {
    pki::issue_leaf(
        ca,
        &LeafRequest {
            kind,
            common_name: match kind {
                LeafKind::Daemon => "buildkitd".into(),
                LeafKind::Client => "buildkit-client".into(),
            },
            sans,
            algorithm: Algorithm::EcdsaP256,
            not_before,
            not_after,
            serial: Serial::random().unwrap(),
        },
    )
    .unwrap()
}

fn daemon_cert(ca: &Issued, service: &str, namespace: &str) -> Issued {
    let sans = pki::daemon_sans(service, namespace, &[]).unwrap();
    issue(
        ca,
        LeafKind::Daemon,
        sans,
        now() - time::Duration::days(1),
        now() + time::Duration::days(90),
    )
}

fn client_cert(ca: &Issued) -> Issued {
    issue(
        ca,
        LeafKind::Client,
        Vec::new(),
        now() - time::Duration::days(1),
        now() + time::Duration::days(90),
    )
}

/// Write the client files in `format`'s naming.
fn write_client_dir(dir: &Path, ca_bundle: &str, client: &Issued, format: SecretFormat) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let (ca, cert, key) = format.key_names();
    std::fs::write(dir.join(ca), ca_bundle).unwrap();
    std::fs::write(dir.join(cert), &client.cert_pem).unwrap();
    std::fs::write(dir.join(key), &client.key_pem).unwrap();
    TlsFiles {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

fn material(ca_bundle: &str, client: &Issued) -> ClientMaterial {
    ClientMaterial {
        ca_pem: ca_bundle.into(),
        cert_pem: client.cert_pem.clone(),
        key_pem: client.key_pem.clone(),
    }
}

// ---------------------------------------------------------------------------
// Stand-in daemons: tests/support/daemon.rs is buildkitd's gRPC over mTLS (rustls and
// h2), answering the build-history call; `serve_tls_only` completes TLS and then says
// nothing, like a TLS server that is not buildkitd.

fn serve(trusted_ca: &str, cert: &Issued) -> daemon::Daemon {
    serve_loaded(trusted_ca, cert, 0, daemon::Behavior::default())
}

fn serve_loaded(trusted_ca: &str, cert: &Issued, active: u32, behavior: daemon::Behavior) -> daemon::Daemon {
    daemon::serve(trusted_ca, &cert.cert_pem, &cert.key_pem, active, behavior)
}

struct Server {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
}

fn serve_tls_only(trusted_ca: &str, daemon: &Issued) -> Server {
    let config = daemon::server_config(trusted_ca, &daemon.cert_pem, &daemon.key_pem);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let config = config.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut sink = [0u8; 256];
                while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    Server { addr, handshakes }
}

/// An address where nothing listens.
/// A port that is bound but not listening, so connecting to it is refused, and that no
/// other test can take while this value lives.
struct ClosedPort {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    ClosedPort {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

fn daemon(host: &str, connect_to: SocketAddr) -> Daemon {
    Daemon {
        host: host.into(),
        port: 1234,
        connect_to: Some(connect_to),
    }
}

fn handshake(daemon: &Daemon, ca_bundle: &str, client: &Issued) -> Result<(), HandshakeFailure> {
    handshake_within(daemon, ca_bundle, client, Duration::from_secs(5))
}

fn handshake_within(
    daemon: &Daemon,
    ca_bundle: &str,
    client: &Issued,
    timeout: Duration,
) -> Result<(), HandshakeFailure> {
    let config = preflight::client_config(Path::new("/certs"), &material(ca_bundle, client)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(preflight::handshake(daemon, config, timeout))
}

// ---------------------------------------------------------------------------
// Preflight against the real TLS server.

#[test]
fn preflight_succeeds_against_a_daemon_with_a_pki_cert() {
    let ca = issue_ca("kiln CA");
    let server = serve(&ca.cert_pem, &daemon_cert(&ca, "buildkitd", "ci"));
    let client = client_cert(&ca);
    let dir = tempfile::tempdir().unwrap();
    let files = write_client_dir(dir.path(), &ca.cert_pem, &client, SecretFormat::Pem);
    let material = preflight::read_material(&files).unwrap();
    let check = preflight::check_client(&files, &material, now(), CertSource::LocalFiles).unwrap();
    assert_eq!(check.ca_fingerprint, pki::fingerprint(&ca.cert_pem).unwrap());
    handshake(&daemon("buildkitd.ci.svc", server.addr), &ca.cert_pem, &client).unwrap();
    // The StatefulSet replica names are covered by the daemon cert's wildcard.
    handshake(
        &daemon("buildkitd-2.buildkitd.ci.svc", server.addr),
        &ca.cert_pem,
        &client,
    )
    .unwrap();
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 2);
}

#[test]
fn preflight_rejects_an_expired_client_cert_with_cause_and_fix() {
    let ca = issue_ca("kiln CA");
    let expired = issue(
        &ca,
        LeafKind::Client,
        Vec::new(),
        now() - time::Duration::days(20),
        now() - time::Duration::days(3) - time::Duration::hours(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let files = write_client_dir(dir.path(), &ca.cert_pem, &expired, SecretFormat::Pem);
    let material = preflight::read_material(&files).unwrap();
    let err = preflight::check_client(&files, &material, now(), CertSource::SecretMount).unwrap_err();
    assert!(matches!(err, PreflightError::Expired { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("expired 3 days ago"), "{message}");
    assert!(
        message.contains("kiln-rotate CronJob has not run; check `kiln status`"),
        "{message}"
    );
    assert!(!message.contains('\n'));
    // Local files are not the CronJob's to renew: the message says what is.
    let local = preflight::check_client(&files, &material, now(), CertSource::LocalFiles)
        .unwrap_err()
        .to_string();
    assert!(local.contains("expired 3 days ago"), "{local}");
    assert!(!local.contains("CronJob"), "{local}");
    assert!(
        local.contains(&format!(
            "{} holds local files, which `kiln rotate` does not renew",
            dir.path().display()
        )),
        "{local}"
    );
    assert!(local.contains("kiln certs generate"), "{local}");
}

#[test]
fn preflight_rejects_key_mismatch_missing_clientauth_and_foreign_client_cert() {
    let ca = issue_ca("kiln CA");
    let other = issue_ca("other CA");
    let client = client_cert(&ca);
    let another = client_cert(&ca);
    let files = TlsFiles {
        ca: "/certs/ca.pem".into(),
        cert: "/certs/cert.pem".into(),
        key: "/certs/key.pem".into(),
    };
    let mismatch = ClientMaterial {
        key_pem: another.key_pem.clone(),
        ..material(&ca.cert_pem, &client)
    };
    let mounted = CertSource::SecretMount;
    assert!(matches!(
        preflight::check_client(&files, &mismatch, now(), mounted),
        Err(PreflightError::KeyMismatch { .. })
    ));
    let daemon_as_client = daemon_cert(&ca, "buildkitd", "ci");
    let err = preflight::check_client(&files, &material(&ca.cert_pem, &daemon_as_client), now(), mounted)
        .unwrap_err();
    assert!(matches!(err, PreflightError::NoClientAuth { .. }), "{err:?}");
    let err =
        preflight::check_client(&files, &material(&other.cert_pem, &client), now(), mounted).unwrap_err();
    assert!(matches!(err, PreflightError::Untrusted { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not signed by any CA in /certs/ca.pem"),
        "{err}"
    );
}

#[test]
fn handshake_rejects_a_daemon_from_another_ca() {
    let ca = issue_ca("kiln CA");
    let rogue = issue_ca("rogue CA");
    let server = serve(&ca.cert_pem, &daemon_cert(&rogue, "buildkitd", "ci"));
    let d = daemon("buildkitd.ci.svc", server.addr);
    let failure = handshake(&d, &ca.cert_pem, &client_cert(&ca)).unwrap_err();
    assert_eq!(failure, HandshakeFailure::UnknownCa);
    assert!(!failure.transient());
    let message = failure.describe(&d, Path::new("/certs/ca.pem"));
    assert!(
        message.contains("not signed by any CA in /certs/ca.pem"),
        "{message}"
    );
    assert!(message.contains("kiln rotate"), "{message}");
}

#[test]
fn handshake_reports_a_daemon_that_rejects_our_client_cert() {
    // The client trusts both CAs, but its certificate comes from a CA the daemon does
    // not trust: in TLS 1.3 only the daemon's answer after the handshake shows that.
    let ca = issue_ca("kiln CA");
    let new_ca = issue_ca("new CA");
    let server = serve(&ca.cert_pem, &daemon_cert(&ca, "buildkitd", "ci"));
    let bundle = format!("{}{}", ca.cert_pem, new_ca.cert_pem);
    let failure = handshake(
        &daemon("buildkitd.ci.svc", server.addr),
        &bundle,
        &client_cert(&new_ca),
    )
    .unwrap_err();
    assert!(
        matches!(failure, HandshakeFailure::ClientRejected(_)),
        "{failure:?}"
    );
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);
}

#[test]
fn handshake_rejects_a_daemon_cert_for_another_name() {
    let ca = issue_ca("kiln CA");
    let server = serve(&ca.cert_pem, &daemon_cert(&ca, "other", "elsewhere"));
    let d = daemon("buildkitd.ci.svc", server.addr);
    let failure = handshake(&d, &ca.cert_pem, &client_cert(&ca)).unwrap_err();
    assert_eq!(failure, HandshakeFailure::WrongName);
    let message = failure.describe(&d, Path::new("/certs/ca.pem"));
    assert!(message.contains("not valid for buildkitd.ci.svc"), "{message}");
    assert!(message.contains("extraSans"), "{message}");
}

#[test]
fn a_tls_server_that_never_speaks_http2_is_named_as_such() {
    let ca = issue_ca("kiln CA");
    let server = serve_tls_only(&ca.cert_pem, &daemon_cert(&ca, "buildkitd", "ci"));
    let target = daemon("buildkitd.ci.svc", server.addr);
    let failure = handshake_within(
        &target,
        &ca.cert_pem,
        &client_cert(&ca),
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert_eq!(
        failure,
        HandshakeFailure::NoHttp2Answer(Duration::from_millis(500))
    );
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 1);
    let message = failure.describe(&target, Path::new("/certs/ca.pem"));
    assert!(
        message.contains("completed the TLS handshake but sent no HTTP/2 answer within 0.5s"),
        "{message}"
    );
}

#[test]
fn handshake_to_a_down_daemon_is_refused_and_transient() {
    let ca = issue_ca("kiln CA");
    let closed = closed_port();
    let failure = handshake(
        &daemon("buildkitd.ci.svc", closed.addr),
        &ca.cert_pem,
        &client_cert(&ca),
    )
    .unwrap_err();
    assert_eq!(failure, HandshakeFailure::Refused);
    assert!(failure.transient());
}

#[test]
fn choose_daemon_falls_over_in_ring_order_and_gives_up_bounded() {
    let ca = issue_ca("kiln CA");
    let client = client_cert(&ca);
    let server = serve(&ca.cert_pem, &daemon_cert(&ca, "buildkitd", "ci"));
    let config = preflight::client_config(Path::new("/certs"), &material(&ca.cert_pem, &client)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let retry = Retry {
        rounds: 2,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
    };
    let closed = closed_port();
    let down = closed.addr;
    let candidates = vec![
        daemon("buildkitd-3.buildkitd.ci.svc", down),
        daemon("buildkitd-0.buildkitd.ci.svc", down),
        daemon("buildkitd-1.buildkitd.ci.svc", server.addr),
        daemon("buildkitd-2.buildkitd.ci.svc", server.addr),
    ];
    let chosen = runtime
        .block_on(preflight::choose_daemon(
            &candidates,
            config.clone(),
            Path::new("/certs/ca.pem"),
            retry,
        ))
        .unwrap();
    assert_eq!(chosen, 2, "the first live daemon in ring order");
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 1);

    let all_down = vec![
        daemon("buildkitd-0.buildkitd.ci.svc", down),
        daemon("buildkitd-1.buildkitd.ci.svc", down),
    ];
    let err = runtime
        .block_on(preflight::choose_daemon(
            &all_down,
            config,
            Path::new("/certs/ca.pem"),
            retry,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("no buildkitd passed the handshake: "), "{err}");
    assert!(
        err.contains("buildkitd-0.buildkitd.ci.svc:1234 refused the connection"),
        "{err}"
    );
    assert!(
        err.contains("buildkitd-1.buildkitd.ci.svc:1234 refused the connection"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

// ---------------------------------------------------------------------------
// The CLI with a stand-in buildctl on PATH.

const STUB: &str = r##"#!/usr/bin/env bash
# Stand-in buildctl: records its argv (one per line) and writes a metadata file.
set -u
log="${STUB_LOG:?}"
n=$(( $(cat "$log.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$log.count"
printf '%s\n' "$@" > "$log.$n"
echo "stub buildctl run $n" >&2
meta=""; server=""; prev=""
for arg in "$@"; do
  if [ "$prev" = "--metadata-file" ]; then meta="$arg"; fi
  if [ "$prev" = "--tlsservername" ]; then server="$arg"; fi
  prev="$arg"
done
if [ "$n" -le "${STUB_CONNECT_FAILURES:-0}" ]; then
  echo 'error: failed to get status: rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.7:1234: connect: connection refused"' >&2
  exit 1
fi
echo "#1 [internal] load build definition from Dockerfile" >&2
case " ${STUB_LOST_ON:-} " in
  *" $server "*)
    # The daemon goes away mid-build: buildkitd's GracefulStop on SIGTERM, as buildctl
    # (grpc-go) reports it.
    echo "#5 [2/3] RUN make" >&2
    echo "$server" > "$meta"
    echo 'error: failed to receive status: rpc error: code = Unavailable desc = closing transport due to: connection error: desc = "error reading from server: EOF", received prior goaway: code: NO_ERROR, debug data: "graceful_stop"' >&2
    exit 1;;
esac
if [ -n "${STUB_SLEEP:-}" ]; then exec sleep "$STUB_SLEEP"; fi
if [ -n "${STUB_EXIT:-}" ]; then
  echo 'error: failed to solve: process "/bin/sh -c make" did not complete successfully: exit code: 2' >&2
  exit "$STUB_EXIT"
fi
if [ -n "${STUB_NO_DIGEST:-}" ]; then
  echo '{}' > "$meta"
else
  printf '{"containerimage.digest":"%s","image.name":"%s"}' "$STUB_DIGEST" "stub" > "$meta"
fi
echo "stub stdout"
echo "#1 DONE 0.1s" >&2
"##;

const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    context: PathBuf,
    certs: PathBuf,
    results: PathBuf,
    log: PathBuf,
    ca: Issued,
}

impl Env {
    fn new(format: SecretFormat) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let stub = bin.join("buildctl");
        std::fs::write(&stub, STUB).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let context = root.join("src");
        std::fs::create_dir_all(context.join("docker")).unwrap();
        std::fs::write(context.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(context.join("docker/Dockerfile.prod"), "FROM scratch\n").unwrap();
        let ca = issue_ca("kiln CA");
        let certs = root.join("certs");
        write_client_dir(&certs, &ca.cert_pem, &client_cert(&ca), format);
        Env {
            root: root.clone(),
            context,
            certs,
            results: root.join("results"),
            log: root.join("argv"),
            ca,
            _dir: dir,
        }
    }

    fn serve(&self) -> daemon::Daemon {
        self.serve_loaded(0, daemon::Behavior::default())
    }

    fn serve_loaded(&self, active: u32, behavior: daemon::Behavior) -> daemon::Daemon {
        serve_loaded(
            &self.ca.cert_pem,
            &daemon_cert(&self.ca, "buildkitd", "ci"),
            active,
            behavior,
        )
    }

    fn metadata(&self) -> PathBuf {
        self.root.join("metadata.json")
    }

    fn kiln(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.root.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = support::kiln();
        for (key, _) in std::env::vars() {
            if key.starts_with("KILN_") || key.starts_with("STUB_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("build")
            .arg(format!("--tls-dir={}", self.certs.display()))
            .arg(format!("--metadata-file={}", self.metadata().display()))
            .arg(format!("--context={}", self.context.display()))
            .args(args)
            .env("PATH", path)
            .env("STUB_LOG", &self.log)
            .env("STUB_DIGEST", DIGEST)
            .env("KILN_LOG", "info");
        for (key, value) in envs {
            cmd.env(key, value);
        }
        cmd.output().unwrap()
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.log.with_extension("count"))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    }

    fn argv(&self, run: usize) -> Vec<String> {
        let text = std::fs::read_to_string(format!("{}.{run}", self.log.display())).unwrap();
        text.lines().map(String::from).collect()
    }

    fn cert(&self, name: &str) -> String {
        self.certs.join(name).display().to_string()
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

#[test]
fn plain_build_runs_buildctl_with_exact_argv_and_writes_results() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            &format!("--results-dir={}", env.results.display()),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(env.runs(), 1);
    let expected = words(&format!(
        "--addr tcp://{addr} --tlsservername buildkitd.ci.svc \
         --tlscacert {ca} --tlscert {cert} --tlskey {key} build \
         --frontend dockerfile.v0 --local context={ctx} --local dockerfile={ctx} --opt filename=Dockerfile \
         --output type=image,name=registry.example.com/team/app:1.0,push=true \
         --metadata-file {meta}",
        addr = server.addr,
        ca = env.cert("ca.pem"),
        cert = env.cert("cert.pem"),
        key = env.cert("key.pem"),
        ctx = env.context.display(),
        meta = env.metadata().display(),
    ));
    assert_eq!(env.argv(1), expected);
    assert_eq!(
        server.handshakes.load(Ordering::SeqCst),
        1,
        "one preflight handshake"
    );
    // Results: exact bytes, no trailing newline.
    assert_eq!(
        std::fs::read_to_string(env.results.join("IMAGE_DIGEST")).unwrap(),
        DIGEST
    );
    assert_eq!(
        std::fs::read_to_string(env.results.join("IMAGE_URL")).unwrap(),
        "registry.example.com/team/app:1.0"
    );
    // buildctl's output is streamed through unchanged.
    assert_eq!(String::from_utf8_lossy(&output.stdout), "stub stdout\n");
    assert!(stderr(&output).contains("#1 [internal] load build definition from Dockerfile\n"));
}

#[test]
fn cached_build_with_tls_naming_and_the_task_style_empty_values() {
    let env = Env::new(SecretFormat::Tls);
    let server = env.serve();
    // Exactly what the Task passes when PLATFORMS and BUILD_ARGS are empty.
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--dockerfile=",
            "--platform=",
            "--push=false",
            "--cache-ref=registry.example.com/team/app:buildcache",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            "--timeout=1h",
            "--",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let expected = words(&format!(
        "--addr tcp://{addr} --tlsservername buildkitd.ci.svc \
         --tlscacert {ca} --tlscert {cert} --tlskey {key} build \
         --frontend dockerfile.v0 --local context={ctx} --local dockerfile={ctx} --opt filename=Dockerfile \
         --output type=image,name=registry.example.com/team/app:1.0,push=false \
         --export-cache type=inline --import-cache type=registry,ref=registry.example.com/team/app:buildcache \
         --metadata-file {meta}",
        addr = server.addr,
        ca = env.cert("ca.crt"),
        cert = env.cert("tls.crt"),
        key = env.cert("tls.key"),
        ctx = env.context.display(),
        meta = env.metadata().display(),
    ));
    assert_eq!(env.argv(1), expected);
}

#[test]
fn multi_platform_build_with_build_args_and_a_dockerfile_in_the_context() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:2.0",
            "--dockerfile=docker/Dockerfile.prod",
            "--platform=linux/amd64,linux/arm64",
            "--platform=linux/arm/v7",
            "--no-push",
            "--build-arg=FROM_FLAG=1",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            "--",
            "VERSION=2.0",
            "EXTRA=a=b c",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mut expected = words(&format!(
        "--addr tcp://{addr} --tlsservername buildkitd.ci.svc \
         --tlscacert {ca} --tlscert {cert} --tlskey {key} build \
         --frontend dockerfile.v0 --local context={ctx} --local dockerfile={ctx}/docker --opt filename=Dockerfile.prod \
         --opt build-arg:FROM_FLAG=1 --opt build-arg:VERSION=2.0",
        addr = server.addr,
        ca = env.cert("ca.pem"),
        cert = env.cert("cert.pem"),
        key = env.cert("key.pem"),
        ctx = env.context.display(),
    ));
    expected.extend(["--opt".into(), "build-arg:EXTRA=a=b c".into()]);
    expected.extend(words(&format!(
        "--opt platform=linux/amd64,linux/arm64,linux/arm/v7 \
         --output type=image,name=registry.example.com/team/app:2.0,push=false \
         --metadata-file {meta}",
        meta = env.metadata().display()
    )));
    assert_eq!(env.argv(1), expected);
}

#[test]
fn a_failing_buildctl_exit_code_is_returned_and_no_results_are_written() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            &format!("--results-dir={}", env.results.display()),
        ],
        &[("STUB_EXIT", "7")],
    );
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert_eq!(env.runs(), 1, "a build that started is never rerun");
    assert!(stderr(&output).contains("did not complete successfully: exit code: 2"));
    assert!(!env.results.join("IMAGE_DIGEST").exists());
}

#[test]
fn a_connection_error_before_the_build_started_is_retried_once_then_succeeds() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            &format!("--results-dir={}", env.results.display()),
        ],
        &[("STUB_CONNECT_FAILURES", "1")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(env.runs(), 2);
    assert_eq!(env.argv(1), env.argv(2));
    assert!(stderr(&output).contains("could not reach buildkitd before the build started; retrying"));
    assert_eq!(
        std::fs::read_to_string(env.results.join("IMAGE_DIGEST")).unwrap(),
        DIGEST
    );

    // Bounded: with every run failing to connect, kiln stops after --attempts runs.
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            "--attempts=2",
        ],
        &[("STUB_CONNECT_FAILURES", "99")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(env.runs(), 2);
}

#[test]
fn a_pushed_image_without_digest_is_an_error() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            &format!("--results-dir={}", env.results.display()),
        ],
        &[("STUB_NO_DIGEST", "1")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("has no containerimage.digest although the image was pushed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_build_over_its_timeout_is_killed() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let started = std::time::Instant::now();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
            "--timeout=1s",
        ],
        &[("STUB_SLEEP", "20")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        stderr(&output).contains("ran longer than --timeout 1s"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_expired_client_cert_fails_before_buildctl_with_one_line() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let expired = issue(
        &env.ca,
        LeafKind::Client,
        Vec::new(),
        now() - time::Duration::days(30),
        now() - time::Duration::days(3) - time::Duration::minutes(5),
    );
    write_client_dir(&env.certs, &env.ca.cert_pem, &expired, SecretFormat::Pem);
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", server.addr),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        line.contains(&format!(
            "client certificate {} expired 3 days ago",
            env.cert("cert.pem")
        )),
        "{line}"
    );
    // The Env's certificates are plain files: rotation is not the fix.
    assert!(
        line.contains("holds local files, which `kiln rotate` does not renew"),
        "{line}"
    );
    assert!(!line.contains("CronJob"), "{line}");
    assert_eq!(env.runs(), 0, "buildctl must not start");
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);
}

#[test]
fn missing_cert_files_name_both_namings() {
    let env = Env::new(SecretFormat::Pem);
    std::fs::remove_file(env.certs.join("key.pem")).unwrap();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd:1234",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no key.pem/tls.key"),
        "{}",
        stderr(&output)
    );
    assert_eq!(env.runs(), 0);
}

/// The candidates `kiln build` will walk for this env's context and `image`.
fn ring_order(env: &Env, image: &str, replicas: u32) -> Vec<Daemon> {
    let repository = kiln::build::ImageRef::parse(image).unwrap().repository;
    let key = kiln::build::choose::affinity_key(&repository, &env.context.to_string_lossy());
    let placement = Placement::Replicas {
        replicas,
        service: "buildkitd".into(),
        namespace: "ci".into(),
        port: 1234,
    };
    kiln::build::daemon_candidates(&placement, &key, &[])
}

#[test]
fn a_down_daemon_falls_over_to_the_next_replica_on_the_ring() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let image = "registry.example.com/team/app:1.0";
    let order = ring_order(&env, image, 3);
    let closed = closed_port();
    let down = closed.addr;
    let mut args = vec![format!("--image={image}"), "--addr=".into()];
    for (i, candidate) in order.iter().enumerate() {
        let target = if i == 0 { down } else { server.addr };
        args.push(format!("--connect-to={}:1234={target}", candidate.host));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let envs = [
        ("KILN_BUILDKIT_REPLICAS", "3"),
        ("KILN_BUILDKIT_SERVICE", "buildkitd"),
        ("KILN_BUILDKIT_NAMESPACE", "ci"),
        ("KILN_BUILDKIT_PORT", "1234"),
    ];
    // The load query finds the home down and chooses the next; with load-awareness off,
    // the handshake does the same.
    let mut unloaded = args.clone();
    unloaded.push("--load-factor=0");
    for (run, args) in [(1, &args), (2, &unloaded)] {
        let output = env.kiln(args, &envs);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let argv = env.argv(run);
        assert_eq!(
            argv[..4],
            [
                "--addr".to_string(),
                format!("tcp://{}", server.addr),
                "--tlsservername".into(),
                order[1].host.clone()
            ]
        );
        let err = stderr(&output);
        let expected = if run == 1 {
            format!(
                "chose buildkitd {}:1234 (0 active builds, bound 1 for about 0 active on the farm); skipped {}:1234 (no answer: it refused the connection)",
                order[1].host, order[0].host
            )
        } else {
            format!("buildkitd {}:1234 refused the connection", order[0].host)
        };
        assert!(err.contains(&expected), "{err}");
        assert_eq!(
            run == 2,
            err.contains("falling over to the next daemon in order"),
            "{err}"
        );
    }

    // With everything up, the same repository lands on the ring owner every time.
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let order = ring_order(&env, image, 3);
    let mut args = vec![format!("--image={image}")];
    for candidate in &order {
        args.push(format!("--connect-to={}:1234={}", candidate.host, server.addr));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for run in 1..=2 {
        let output = env.kiln(&args, &envs);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(env.argv(run)[3], order[0].host);
    }
}

#[test]
fn a_single_down_daemon_fails_with_cause_and_fix() {
    let env = Env::new(SecretFormat::Pem);
    let closed = closed_port();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            &format!("--connect-to=buildkitd.ci.svc:1234={}", closed.addr),
            "--attempts=1",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        line.contains("buildkitd buildkitd.ci.svc:1234 refused the connection"),
        "{line}"
    );
    assert!(line.contains("kubectl get pods"), "{line}");
    assert_eq!(env.runs(), 0);
}

#[test]
fn bad_usage_exits_2_before_anything_runs() {
    let env = Env::new(SecretFormat::Pem);
    for (args, needle) in [
        (vec!["--image=Registry/App:1"], "--image: invalid image reference"),
        (
            vec!["--image=app:1", "--", "NOEQUALS"],
            "invalid build arg \"NOEQUALS\"",
        ),
        (vec!["--image=app:1", "--build-arg==x"], "the key is empty"),
        (vec!["--image=app:1", "--timeout=soon"], "invalid --timeout"),
        (vec!["--image=app:1", "--timeout=0s"], "invalid --timeout"),
        (
            vec!["--image=app:1", "--timeout=9223372036854775807s"],
            "invalid --timeout",
        ),
        (
            vec!["--image=app:1", "--replicas=4294967295"],
            "invalid --replicas",
        ),
        (vec!["--image=app:1", "--platform=linux"], "invalid platform"),
        (
            vec!["--image=app:1", "--load-factor=0.5"],
            "invalid --load-factor 0.5: use 0 (off) or a factor from 1 to 100",
        ),
        (
            vec!["--image=app:1", "--load-factor=NaN"],
            "invalid --load-factor",
        ),
        (
            vec!["--image=app:1", "--load-timeout=0ms"],
            "invalid --load-timeout",
        ),
        (
            vec!["--image=app:1", "--replicas=10001"],
            "at most 10000 replicas, as kiln render allows",
        ),
        (
            vec!["--image=app:1", "--addr=unix:///run/buildkit.sock"],
            "tcp:// only",
        ),
        (
            vec!["--image=app:1", "--cache-ref=Not A Ref"],
            "invalid image reference",
        ),
    ] {
        let output = env.kiln(&args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(needle), "{args:?}: {}", stderr(&output));
    }
    // clap itself rejects a non-boolean --push, and -o without --dry-run, also with 2.
    let output = env.kiln(&["--image=app:1", "--push=maybe"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let output = env.kiln(&["--image=app:1", "-o", "json"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(env.runs(), 0);
}

// ---------------------------------------------------------------------------
// Task and command agree: the rendered Task's step parses as `kiln build`.

/// Replace `$(params.NAME)` and `$(workspaces.source.path)` in `arg`; `$(params.X[*])`
/// expands to several args. Panics on a reference to an undeclared param.
fn substitute(arg: &str, params: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    if let Some(name) = arg.strip_prefix("$(params.").and_then(|a| a.strip_suffix("[*])")) {
        return params
            .get(name)
            .unwrap_or_else(|| panic!("undeclared array param {name}"))
            .clone();
    }
    let mut out = arg.replace("$(workspaces.source.path)", "/workspace/source");
    while let Some(start) = out.find("$(params.") {
        let end = start + out[start..].find(')').unwrap();
        let name = &out[start + "$(params.".len()..end];
        let value = params
            .get(name)
            .unwrap_or_else(|| panic!("undeclared param {name}"));
        out = format!("{}{}{}", &out[..start], value.join(","), &out[end + 1..]);
    }
    assert!(!out.contains("$("), "unsubstituted variable in {arg}");
    vec![out]
}

fn parse_step(task: &serde_json::Value, samples: &[(&str, &[&str])]) -> kiln::cli::Cli {
    use clap::Parser;
    let mut params = std::collections::BTreeMap::new();
    for param in task["spec"]["params"].as_array().unwrap() {
        let name = param["name"].as_str().unwrap().to_string();
        let default: Vec<String> = match &param["default"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => {
                items.iter().map(|v| v.as_str().unwrap().to_string()).collect()
            }
            _ => Vec::new(),
        };
        params.insert(name, default);
    }
    for (name, value) in samples {
        assert!(params.contains_key(*name), "the Task has no param {name}");
        params.insert(name.to_string(), value.iter().map(|v| v.to_string()).collect());
    }
    let steps = task["spec"]["steps"].as_array().unwrap();
    let step = steps
        .iter()
        .find(|s| s["command"][0] == "kiln")
        .expect("a step running kiln");
    let mut argv = vec!["kiln".to_string()];
    for arg in step["args"].as_array().unwrap() {
        argv.extend(substitute(arg.as_str().unwrap(), &params));
    }
    kiln::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("kiln rejects the Task's args {argv:?}: {e}"))
}

#[test]
fn the_rendered_task_step_and_kiln_build_agree() {
    use clap::CommandFactory;
    use kiln::overlay::{Overlay, Workload};
    let mut sts = Overlay::default();
    sts.buildkit.workload = Workload::Statefulset;
    sts.buildkit.replicas = 3;
    sts.tekton.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
    for overlay in [Overlay::default(), sts] {
        let objects = kiln::render::render(&overlay, &kiln::render::Context::new("dev")).unwrap();
        let task = &objects
            .iter()
            .find(|o| o.kind == "Task" && o.name == overlay.tekton.name)
            .expect("the kiln build Task")
            .value;
        let steps = task["spec"]["steps"].as_array().unwrap();
        let step = steps.iter().find(|s| s["command"][0] == "kiln").unwrap();
        assert_eq!(step["args"][0], "build");

        // Every KILN_* variable the step sets is one `kiln build` reads.
        let cli = kiln::cli::Cli::command();
        let build = cli.find_subcommand("build").unwrap();
        let envs: Vec<String> = build
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for var in step["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if name.starts_with("KILN_") {
                assert!(envs.iter().any(|e| e == name), "kiln build does not read {name}");
            }
        }

        // With the Task's own defaults (only IMAGE has none).
        let cli = parse_step(task, &[("IMAGE", &["registry.example.com/team/app:1.0"])]);
        let kiln::cli::Command::Build(args) = cli.command else {
            panic!("the step does not run kiln build")
        };
        assert_eq!(args.image, "registry.example.com/team/app:1.0");
        assert!(args.push);
        assert_eq!(args.tls_dir, PathBuf::from("/certs"));
        assert_eq!(args.results_dir.as_deref(), Some("/tekton/results"));
        assert_eq!(args.timeout, overlay.tekton.timeout.to_string());
        assert!(args.trailing_build_args.is_empty());
        let addr = args.addr.unwrap_or_default();
        match overlay.buildkit.workload {
            Workload::Deployment => assert_eq!(addr, "tcp://buildkitd.buildkit.svc:1234"),
            Workload::Statefulset => assert_eq!(addr, "", "an empty address makes kiln hash over replicas"),
        }
        assert_eq!(
            kiln::build::parse_platforms(&args.platforms).unwrap(),
            overlay.tekton.platforms
        );

        // With every param set.
        let cli = parse_step(
            task,
            &[
                ("IMAGE", &["registry.example.com/team/app:2.0"]),
                ("CONTEXT", &["services/api"]),
                ("DOCKERFILE", &["docker/Dockerfile"]),
                ("BUILD_ARGS", &["VERSION=2.0", "COMMIT=abc"]),
                ("PLATFORMS", &["linux/amd64,linux/arm64"]),
                ("PUSH", &["false"]),
                ("CACHE_REF", &["registry.example.com/team/app:cache"]),
                ("BUILDKIT_DAEMON_ADDRESS", &["tcp://buildkitd.other.svc:1234"]),
            ],
        );
        let kiln::cli::Command::Build(args) = cli.command else {
            panic!("the step does not run kiln build")
        };
        assert_eq!(args.context, PathBuf::from("/workspace/source/services/api"));
        assert_eq!(args.dockerfile.as_deref(), Some("docker/Dockerfile"));
        assert_eq!(args.trailing_build_args, ["VERSION=2.0", "COMMIT=abc"]);
        assert!(!args.push);
        assert_eq!(
            args.cache_ref.as_deref(),
            Some("registry.example.com/team/app:cache")
        );
        assert_eq!(args.addr.as_deref(), Some("tcp://buildkitd.other.svc:1234"));
        assert_eq!(args.platforms, ["linux/amd64,linux/arm64"]);
    }
}

// ---------------------------------------------------------------------------
// The image.

#[test]
fn the_dockerfile_pins_the_rendered_buildkit_version_and_runs_as_non_root() {
    let text = std::fs::read_to_string(support::repo_root().join("Dockerfile")).unwrap();
    let pinned = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG BUILDKIT_VERSION="))
        .expect("ARG BUILDKIT_VERSION=… in the Dockerfile");
    assert_eq!(pinned, kiln::overlay::DEFAULT_BUILDKIT_VERSION);
    assert!(text.contains("FROM docker.io/moby/buildkit:${BUILDKIT_VERSION} AS buildkit"));
    assert!(text.contains("COPY --from=buildkit /usr/bin/buildctl /usr/bin/buildctl"));
    assert!(text.contains("-unknown-linux-musl"));
    // The last stage runs as the uid the rendered pods use.
    let last_stage = &text[text.rfind("\nFROM ").unwrap()..];
    assert!(last_stage.contains("USER 65532:65532"), "{last_stage}");
    assert!(last_stage.contains("COPY --from=builder /kiln /usr/bin/kiln"));
    assert!(!last_stage.contains("USER root"));
    // The Task's step runs `kiln` by name: it must be on the distroless PATH.
    assert!(text.contains("/usr/bin/kiln"));
}

#[test]
fn now_flag_and_secrets_stay_out_of_messages() {
    let env = Env::new(SecretFormat::Pem);
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            "--now=2099-01-01T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("expired") && err.contains("days ago"), "{err}");
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
            "--now=2000-01-01T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is not valid for another"),
        "{}",
        stderr(&output)
    );

    // A key from another certificate: named by path, never printed.
    let other = client_cert(&env.ca);
    std::fs::write(env.certs.join("key.pem"), &other.key_pem).unwrap();
    let output = env.kiln(
        &[
            "--image=registry.example.com/team/app:1.0",
            "--addr=tcp://buildkitd.ci.svc:1234",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("client key {} does not match", env.cert("key.pem"))),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    assert_eq!(env.runs(), 0);
}

#[test]
fn the_committed_example_tasks_parse_as_kiln_build() {
    let mut checked = 0;
    for flavor in ["argocd", "flux"] {
        let dir = support::repo_root().join("examples").join(flavor);
        let Ok(overlays) = std::fs::read_dir(&dir) else {
            continue;
        };
        for overlay in overlays {
            let path = overlay.unwrap().path().join("task-buildkit.yaml");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let task: serde_json::Value = kiln::yaml::from_str(&text, &path.display().to_string()).unwrap();
            let cli = parse_step(
                &task,
                &[
                    ("IMAGE", &["registry.example.com/team/app:1.0"]),
                    ("BUILD_ARGS", &["A=1"]),
                ],
            );
            let kiln::cli::Command::Build(args) = cli.command else {
                panic!("{}: the step does not run kiln build", path.display())
            };
            assert_eq!(args.image, "registry.example.com/team/app:1.0");
            assert_eq!(args.trailing_build_args, ["A=1"]);
            checked += 1;
        }
    }
    assert!(checked > 0, "no committed example Task found under examples/");
}

#[test]
fn affinity_key_overrides_the_repository_in_the_hash() {
    let env = Env::new(SecretFormat::Pem);
    let server = env.serve();
    let key = kiln::build::choose::affinity_key("monorepo", &env.context.to_string_lossy());
    let placement = Placement::Replicas {
        replicas: 5,
        service: "buildkitd".into(),
        namespace: "ci".into(),
        port: 1234,
    };
    let order = kiln::build::daemon_candidates(&placement, &key, &[]);
    let mut args = vec![
        "--image=registry.example.com/team/app:1.0".to_string(),
        "--affinity-key=monorepo".into(),
        "--replicas=5".into(),
        "--service=buildkitd".into(),
        "--namespace=ci".into(),
    ];
    for candidate in &order {
        args.push(format!("--connect-to={}:1234={}", candidate.host, server.addr));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(env.argv(1)[3], order[0].host);
    assert!(
        stderr(&output).contains(&format!("key={key}")),
        "{}",
        stderr(&output)
    );
}

// ---------------------------------------------------------------------------
// The load query and the bounded-load choice, against stand-in daemons answering
// BuildKit's build-history call over real mTLS.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client_config(ca: &Issued) -> Arc<rustls::ClientConfig> {
    preflight::client_config(Path::new("/certs"), &material(&ca.cert_pem, &client_cert(ca))).unwrap()
}

#[test]
fn the_history_call_counts_builds_and_the_repositorys_over_mtls() {
    use kiln::build::choose::Load;
    use kiln::build::history::{self, LoadError};
    let ca = issue_ca("kiln CA");
    let cert = daemon_cert(&ca, "buildkitd", "ci");
    let config = client_config(&ca);
    let rt = runtime();
    let repository = "registry.example.com/team/app";
    let ask = |addr: SocketAddr, timeout: Duration| {
        rt.block_on(history::load(
            &daemon("buildkitd-0.buildkitd.ci.svc", addr),
            config.clone(),
            timeout,
            repository,
        ))
    };
    // Three active builds, one of them of the repository; 80 finished, 30 of them of the
    // repository. The daemon sends its newest 50 (the request's Limit).
    let app = daemon::Behavior {
        finished: 80,
        building: (1, 30),
        image: format!("{repository}:1.0"),
        ..Default::default()
    };
    let busy = serve_loaded(&ca.cert_pem, &cert, 3, app.clone());
    let expected = Load {
        active: 3,
        active_same: 1,
        finished: 50,
        finished_same: 30,
    };
    assert_eq!(ask(busy.addr, Duration::from_secs(5)), Ok(expected));
    busy.active.store(0, Ordering::SeqCst);
    assert_eq!(
        ask(busy.addr, Duration::from_secs(5)),
        Ok(Load {
            active: 0,
            active_same: 0,
            ..expected
        })
    );
    assert_eq!(busy.history_calls.load(Ordering::SeqCst), 2);
    assert!(
        busy.bad_requests.lock().unwrap().is_empty(),
        "{:?}",
        busy.bad_requests
    );
    // A daemon before v0.20 ignores Limit and sends all 5,000: kiln reads 50 and stops.
    let old = serve_loaded(
        &ca.cert_pem,
        &cert,
        3,
        daemon::Behavior {
            finished: 5_000,
            ignore_limit: true,
            ..app
        },
    );
    assert_eq!(ask(old.addr, Duration::from_secs(5)), Ok(expected));

    // A buildkitd before v0.11 has no such method.
    let old = serve_loaded(
        &ca.cert_pem,
        &cert,
        0,
        daemon::Behavior {
            status: Some(12),
            ..Default::default()
        },
    );
    let err = ask(old.addr, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, LoadError::Status { code: 12, .. }), "{err:?}");
    assert!(err.to_string().contains("before v0.11"), "{err}");

    // Silence after TLS is a timeout; a daemon from another CA fails the handshake.
    let mute = serve_tls_only(&ca.cert_pem, &cert);
    assert_eq!(
        ask(mute.addr, Duration::from_millis(300)),
        Err(LoadError::Timeout(Duration::from_millis(300)))
    );
    let rogue = issue_ca("rogue CA");
    let impostor = serve(&ca.cert_pem, &daemon_cert(&rogue, "buildkitd", "ci"));
    assert_eq!(
        ask(impostor.addr, Duration::from_secs(5)),
        Err(LoadError::Connect(HandshakeFailure::UnknownCa))
    );
    assert_eq!(impostor.history_calls.load(Ordering::SeqCst), 0);
}

/// Stand-ins for `replicas` StatefulSet pods, `loads[i]` active builds for the i-th in
/// the key's order of `env`'s context and `image`; with the args that point kiln at them.
fn farm(
    env: &Env,
    image: &str,
    loads: &[(u32, daemon::Behavior)],
) -> (Vec<Daemon>, Vec<daemon::Daemon>, Vec<String>) {
    let replicas = u32::try_from(loads.len()).unwrap();
    let order = ring_order(env, image, replicas);
    let servers: Vec<daemon::Daemon> = loads
        .iter()
        .map(|(active, behavior)| env.serve_loaded(*active, behavior.clone()))
        .collect();
    let mut args = vec![
        format!("--image={image}"),
        format!("--replicas={replicas}"),
        "--service=buildkitd".into(),
        "--namespace=ci".into(),
    ];
    for (candidate, server) in order.iter().zip(&servers) {
        args.push(format!("--connect-to={}:1234={}", candidate.host, server.addr));
    }
    (order, servers, args)
}

fn idle(count: usize) -> Vec<(u32, daemon::Behavior)> {
    vec![(0, daemon::Behavior::default()); count]
}

#[test]
fn the_choice_asks_every_daemon_at_once_and_skips_a_home_over_its_bound() {
    use kiln::build::choose::{Policy, Verdict};
    let env = Env::new(SecretFormat::Pem);
    let mut loads = idle(8);
    loads[0].0 = 6;
    let delay = daemon::Behavior {
        delay: Duration::from_millis(400),
        ..Default::default()
    };
    for load in &mut loads[..3] {
        load.1 = delay.clone();
    }
    let (order, servers, _) = farm(&env, "registry.example.com/team/app:1.0", &loads);
    let candidates: Vec<Daemon> = order
        .iter()
        .zip(&servers)
        .map(|(d, s)| daemon(&d.host, s.addr))
        .collect();
    let config = client_config(&env.ca);
    let started = std::time::Instant::now();
    let choice = runtime().block_on(kiln::build::run::choose_by_load(
        &candidates,
        config,
        &Policy::with_load_factor(1.25),
        Duration::from_secs(5),
        "registry.example.com/team/app",
    ));
    let elapsed = started.elapsed();
    // Every replica answered: 6 on the farm, bound ceil(1.25·7/8) = 2. (The key's first
    // three alone would have estimated 16 and a bound of 3.)
    assert_eq!(choice.bound, Some(2));
    assert_eq!(choice.total, Some((6.0, true)));
    let mut expected = vec![Verdict::Eligible(0); 8];
    expected[0] = Verdict::OverBound(6);
    assert_eq!(choice.verdicts, expected);
    assert_eq!(
        choice.chosen(),
        1,
        "the first within the bound, in the key's order"
    );
    assert_eq!(choice.order, [1, 2, 3, 4, 5, 6, 7, 0]);
    // Three 400 ms answers took one 400 ms, not three: asked at once.
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    let calls: Vec<usize> = servers
        .iter()
        .map(|s| s.history_calls.load(Ordering::SeqCst))
        .collect();
    assert_eq!(calls, [1; 8], "every daemon is asked, once");
}

#[test]
fn a_busy_repositorys_build_goes_to_the_least_loaded_of_its_first_daemons() {
    let env = Env::new(SecretFormat::Pem);
    let image = "registry.example.com/team/app:1.0";
    let with = |active: u32, building: (u32, u32)| {
        (
            active,
            daemon::Behavior {
                finished: 50,
                building,
                image: image.to_string(),
                ..Default::default()
            },
        )
    };
    // The key's home runs 2 builds, its second 1, its third none, the rest 1 each: 8 on
    // the farm, bound ceil(1.25·9/8) = 2, so the home is eligible. The daemons report 8
    // running and 400 finished builds, 12 of them (finished, none running) of the
    // repository: a share of 2.9%, 2.35 tenths of a daemon's fair share, so its builds
    // spread over the key's first 3.
    let mut loads = vec![with(2, (0, 8)), with(1, (0, 4)), with(0, (0, 0))];
    loads.extend((0..5).map(|_| with(1, (0, 0))));
    let (order, _servers, args) = farm(&env, image, &loads);
    let mut dry = args.clone();
    dry.extend(["--dry-run".to_string(), "-o".into(), "json".into()]);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let output = env.kiln(&dry, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let name = |i: usize| format!("{}:1234", order[i].host);
    assert_eq!(report["bound"], 2);
    assert_eq!(
        report["spread"],
        serde_json::json!({"over": 3, "repositoryBuilds": 12, "reportedBuilds": 408})
    );
    assert_eq!(report["chosen"], name(2), "the least loaded of the first three");
    let expected: Vec<String> = [2, 1, 0, 3, 4, 5, 6, 7].iter().map(|i| name(*i)).collect();
    assert_eq!(report["order"], serde_json::json!(expected));
    let line = stderr(&output)
        .lines()
        .find(|l| l.contains("chose buildkitd"))
        .unwrap()
        .to_string();
    assert!(
        line.ends_with(&format!(
            "chose buildkitd {} (0 active builds, bound 2 for 8 active on the farm; the least loaded of the key's first 3, \
             as its repository made 12 of the 408 builds the daemons reported); skipped {} (2 active builds, busier), {} (1 active build, busier)",
            name(2),
            name(0),
            name(1)
        )),
        "{line}"
    );
    assert_eq!(env.runs(), 0);

    // Another repository, built nowhere on the farm, keeps its home: the same loads.
    let other = "registry.example.com/team/rare:1.0";
    let (order, _servers, mut args) = farm(&env, other, &loads);
    args.extend(["--dry-run".to_string(), "-o".into(), "json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&args, &[]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["spread"], serde_json::Value::Null);
    assert_eq!(report["chosen"], format!("{}:1234", order[0].host));
}

#[test]
fn a_slow_daemon_counts_as_full_after_the_timeout() {
    let env = Env::new(SecretFormat::Pem);
    let image = "registry.example.com/team/app:1.0";
    let mut loads = idle(4);
    loads[0].1 = daemon::Behavior {
        delay: Duration::from_secs(30),
        ..Default::default()
    };
    let (order, servers, mut args) = farm(&env, image, &loads);
    args.push("--load-timeout=300ms".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let output = env.kiln(&args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.argv(1)[3], order[1].host, "built on the next daemon in order");
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "; skipped {}:1234 (no answer: no answer within 300ms)",
            order[0].host
        )),
        "{err}"
    );
    assert_eq!(servers[0].history_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn kiln_build_skips_a_busy_home_and_logs_the_choice_in_one_line() {
    let env = Env::new(SecretFormat::Pem);
    let image = "registry.example.com/team/app:1.0";
    let mut loads = idle(4);
    loads[0].0 = 5;
    loads[1].0 = 2;
    let (order, _servers, args) = farm(&env, image, &loads);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&argv, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // 5 + 2 + 0 + 0: 7 on the farm, bound ceil(1.25·8/4) = 3.
    assert_eq!(env.argv(1)[3], order[1].host);
    let err = stderr(&output);
    let line = err.lines().find(|l| l.contains("chose buildkitd")).unwrap();
    assert!(
        line.ends_with(&format!(
            "chose buildkitd {}:1234 (2 active builds, bound 3 for 7 active on the farm); skipped {}:1234 (5 active builds, over the bound)",
            order[1].host, order[0].host
        )),
        "{line}"
    );

    // --load-factor 0: pure hashing, the home whatever its load, nobody asked.
    let (order, servers, mut args) = farm(&env, image, &loads);
    args.push("--load-factor=0".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&argv, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(env.argv(2)[3], order[0].host);
    assert!(
        servers
            .iter()
            .all(|s| s.history_calls.load(Ordering::SeqCst) == 0)
    );
    assert!(stderr(&output).contains("(the key's first daemon; load not asked)"));
}

#[test]
fn dry_run_json_is_stable_and_runs_no_buildctl() {
    let env = Env::new(SecretFormat::Pem);
    let image = "registry.example.com/team/app:1.0";
    let mut loads = idle(3);
    loads[0].0 = 4;
    let (order, _servers, mut args) = farm(&env, image, &loads);
    args.push("--cache-ref=registry.example.com/team/app:cache".into());
    let mut dry = args.clone();
    dry.extend(["--dry-run".to_string(), "-o".into(), "json".into()]);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let first = env.kiln(&dry, &[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let again = env.kiln(&dry, &[]);
    assert_eq!(
        first.stdout, again.stdout,
        "the same farm state gives the same bytes"
    );
    assert_eq!(env.runs(), 0, "a dry run runs no buildctl");

    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    // The fields, in a fixed order.
    let text = String::from_utf8_lossy(&first.stdout);
    let at: Vec<usize> = [
        "key",
        "loadFactor",
        "bound",
        "spread",
        "daemons",
        "order",
        "chosen",
        "argv",
    ]
    .iter()
    .map(|k| {
        text.find(&format!("\n  \"{k}\": "))
            .unwrap_or_else(|| panic!("no {k}: {text}"))
    })
    .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(report.as_object().unwrap().len(), at.len());
    let key =
        kiln::build::choose::affinity_key("registry.example.com/team/app", &env.context.to_string_lossy());
    assert_eq!(report["key"], key);
    assert_eq!(report["loadFactor"], 1.25);
    // 4 + 0 + 0 over all 3: total 4, bound ceil(1.25·5/3) = 3.
    assert_eq!(report["bound"], 3);
    assert_eq!(
        report["spread"],
        serde_json::Value::Null,
        "no build of the repository reported"
    );
    let name = |i: usize| format!("{}:1234", order[i].host);
    assert_eq!(report["chosen"], name(1));
    assert_eq!(report["order"], serde_json::json!([name(1), name(2), name(0)]));
    assert_eq!(
        report["daemons"][0],
        serde_json::json!({"daemon": name(0), "addr": format!("tcp://{}", _servers[0].addr),
            "activeBuilds": 4, "verdict": "over-bound", "reason": null})
    );
    assert_eq!(report["daemons"][1]["verdict"], "chosen");
    assert_eq!(report["daemons"][2]["verdict"], "eligible");

    // The argv is exactly what the real run then gives buildctl.
    let real: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&real, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let argv: Vec<String> = report["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(argv[0], "buildctl");
    assert_eq!(argv[1..], env.argv(1)[..]);

    // The text form says the same for people.
    let mut text = args.clone();
    text.push("--dry-run".into());
    let text: Vec<&str> = text.iter().map(String::as_str).collect();
    let output = env.kiln(&text, &[]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains(&format!("chosen: {}\n", name(1))), "{out}");
    assert!(
        out.contains(&format!("  {} [over-bound, 4 active]\n", name(0))),
        "{out}"
    );
    assert!(out.contains("argv: buildctl --addr tcp://"), "{out}");
    assert_eq!(env.runs(), 1);
}

// ---------------------------------------------------------------------------
// A daemon lost in the middle of a build (issue 9): rerun on the next daemon, once.

#[test]
fn a_build_whose_daemon_goes_away_is_rerun_once_on_the_next_daemon() {
    let env = Env::new(SecretFormat::Pem);
    let image = "registry.example.com/team/app:1.0";
    let (order, _servers, mut args) = farm(&env, image, &idle(3));
    args.push(format!("--results-dir={}", env.results.display()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&argv, &[("STUB_LOST_ON", &order[0].host)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(env.runs(), 2);
    assert_eq!(env.argv(1)[3], order[0].host);
    assert_eq!(
        env.argv(2)[3],
        order[1].host,
        "the rerun is on the next daemon in order"
    );
    // The whole build again: the same command line but the daemon.
    let strip = |argv: Vec<String>| argv[4..].to_vec();
    assert_eq!(strip(env.argv(1)), strip(env.argv(2)));
    let err = stderr(&output);
    let line = err
        .lines()
        .find(|l| l.contains("went away while the build ran"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "buildkitd {}:1234 went away while the build ran (failed to receive status: rpc error: code = unavailable",
            order[0].host
        )),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "rerunning the whole build on {}:1234, the next daemon in the choice's order (rerun 1 of 1)",
            order[1].host
        )),
        "{line}"
    );
    // Results once, from the run that succeeded.
    assert_eq!(err.matches(" built ").count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(env.results.join("IMAGE_DIGEST")).unwrap(),
        DIGEST
    );
    assert_eq!(
        std::fs::read_to_string(env.results.join("IMAGE_URL")).unwrap(),
        image
    );

    // Lost twice: the default allows one rerun, so the second loss fails with buildctl's code.
    let env = Env::new(SecretFormat::Pem);
    let (order, _servers, mut args) = farm(&env, image, &idle(3));
    args.push(format!("--results-dir={}", env.results.display()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let lost = format!("{} {}", order[0].host, order[1].host);
    let output = env.kiln(&argv, &[("STUB_LOST_ON", &lost)]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(env.runs(), 2);
    assert!(
        stderr(&output).contains("not rerun: --retries-after-interruption 1 used up"),
        "{}",
        stderr(&output)
    );
    assert!(!env.results.join("IMAGE_URL").exists());

    // --retries-after-interruption 0: never rerun.
    let env = Env::new(SecretFormat::Pem);
    let (order, _servers, mut args) = farm(&env, image, &idle(3));
    args.push("--retries-after-interruption=0".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&argv, &[("STUB_LOST_ON", &order[0].host)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(env.runs(), 1);
}

#[test]
fn a_plain_build_failure_on_a_farm_is_not_rerun() {
    let env = Env::new(SecretFormat::Pem);
    let (_order, _servers, mut args) = farm(&env, "registry.example.com/team/app:1.0", &idle(3));
    args.push(format!("--results-dir={}", env.results.display()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = env.kiln(&argv, &[("STUB_EXIT", "7")]);
    assert_eq!(output.status.code(), Some(7), "buildctl's own exit code");
    assert_eq!(env.runs(), 1, "a failed build is never rerun");
    assert!(!stderr(&output).contains("rerunning"));
    assert!(!env.results.join("IMAGE_DIGEST").exists());
}

#[test]
fn certificates_from_a_secret_volume_blame_rotation_and_local_ones_do_not() {
    let env = Env::new(SecretFormat::Pem);
    let expired = issue(
        &env.ca,
        LeafKind::Client,
        Vec::new(),
        now() - time::Duration::days(30),
        now() - time::Duration::days(2),
    );
    // The kubelet's layout: the files are links into `..data`, a link to a dated directory.
    std::fs::remove_dir_all(&env.certs).unwrap();
    let dated = env.certs.join("..2027_01_01_00_00_00.123");
    write_client_dir(&dated, &env.ca.cert_pem, &expired, SecretFormat::Tls);
    std::os::unix::fs::symlink("..2027_01_01_00_00_00.123", env.certs.join("..data")).unwrap();
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), env.certs.join(name)).unwrap();
    }
    let args = [
        "--image=registry.example.com/team/app:1.0",
        "--addr=tcp://buildkitd:1234",
    ];
    let output = env.kiln(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("expired 2 days ago"), "{err}");
    assert!(
        err.contains("the kiln-rotate CronJob has not run; check `kiln status`"),
        "{err}"
    );

    // The same files copied out by hand.
    std::fs::remove_dir_all(&env.certs).unwrap();
    write_client_dir(&env.certs, &env.ca.cert_pem, &expired, SecretFormat::Tls);
    let output = env.kiln(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("expired 2 days ago"), "{err}");
    assert!(!err.contains("CronJob"), "{err}");
    assert!(err.contains("kiln certs generate"), "{err}");
    assert_eq!(env.runs(), 0);
}
