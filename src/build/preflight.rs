//! Preflight: check the client certificates and shake hands with the daemon before
//! buildctl starts, so a broken setup fails with one line naming the cause and the
//! fix instead of a raw gRPC error.
//!
//! [`check_client`] is pure (the clock is passed in). [`find_tls_files`] and
//! [`read_material`] read the mounted Secret; [`handshake`] and [`choose_daemon`]
//! talk to the network.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Daemon;
use crate::pki::{self, PkiError, SecretFormat};

/// The fix printed for anything certificate-related that rotation should have handled.
const FIX_ROTATE: &str = "the kiln-rotate CronJob has not run; check `kiln status`";

/// Where the client certificates come from, which decides what fixes them: `kiln rotate`
/// renews the cluster's Secrets, not a copy on someone's laptop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// A mounted Kubernetes Secret (the kubelet's `..data` layout): what the Task's step sees.
    SecretMount,
    /// Plain files, such as a `kiln certs generate` output or a Secret copied out by hand.
    LocalFiles,
}

impl CertSource {
    /// The fix for certificates that are out of date.
    pub fn renew_fix(self, dir: &Path) -> String {
        match self {
            Self::SecretMount => FIX_ROTATE.to_string(),
            Self::LocalFiles => format!(
                "{} holds local files, which `kiln rotate` does not renew: copy the current client Secret there, or issue new files with `kiln certs generate`",
                dir.display()
            ),
        }
    }

    /// The fix for files that are corrupt, mismatched or from another CA.
    pub fn rewrite_fix(self, dir: &Path, mounted: &'static str) -> String {
        match self {
            Self::SecretMount => mounted.to_string(),
            Self::LocalFiles => format!(
                "copy the current client Secret into {} again, or issue new files with `kiln certs generate`",
                dir.display()
            ),
        }
    }
}

/// Where the files in `dir` come from: a Secret volume has the kubelet's `..data` link.
pub fn cert_source(dir: &Path) -> CertSource {
    if dir.join("..data").exists() {
        CertSource::SecretMount
    } else {
        CertSource::LocalFiles
    }
}

/// The three client TLS files, in whichever naming the Secret uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA bundle (`ca.pem` or `ca.crt`).
    pub ca: PathBuf,
    /// The client certificate (`cert.pem` or `tls.crt`).
    pub cert: PathBuf,
    /// The client key (`key.pem` or `tls.key`).
    pub key: PathBuf,
}

/// The contents of the client TLS files. The key never appears in `Debug` output.
#[derive(Clone)]
pub struct ClientMaterial {
    /// The CA bundle, PEM.
    pub ca_pem: String,
    /// The client certificate, PEM.
    pub cert_pem: String,
    /// The client private key, PEM. Secret: never log it.
    pub key_pem: String,
}

impl fmt::Debug for ClientMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why the client certificates cannot work. Each message is one line: cause, then fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    /// Some of the three files are missing.
    #[error(
        "missing client TLS files in {dir}: no {missing}; mount the buildkit-client-certs Secret there (ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key) or pass --tls-dir"
    )]
    MissingFiles { dir: String, missing: String },
    /// A file could not be read.
    #[error("failed to read {path}: {message}; check the Secret mount and its permissions")]
    Read { path: String, message: String },
    /// The CA bundle does not parse.
    #[error("failed to parse the CA bundle {path}: {message}; {fix}")]
    ParseCa {
        path: String,
        message: String,
        fix: String,
    },
    /// The client certificate does not parse.
    #[error("failed to parse the client certificate {path}: {message}; {fix}")]
    ParseCert {
        path: String,
        message: String,
        fix: String,
    },
    /// The client key does not parse.
    #[error("failed to parse the client key {path}: {message}; {fix}")]
    ParseKey {
        path: String,
        message: String,
        fix: String,
    },
    /// The key belongs to another certificate.
    #[error("client key {key} does not match the certificate {cert}: {fix}")]
    KeyMismatch { cert: String, key: String, fix: String },
    /// The client certificate expired.
    #[error("client certificate {path} expired {ago} ago (at {not_after}): {fix}")]
    Expired {
        path: String,
        ago: String,
        not_after: String,
        fix: String,
    },
    /// The client certificate is not valid yet.
    #[error(
        "client certificate {path} is not valid for another {wait} (from {not_before}): this node's clock is behind; fix NTP on the node or wait"
    )]
    NotYetValid {
        path: String,
        wait: String,
        not_before: String,
    },
    /// No CA in the bundle signed the client certificate.
    #[error("client certificate {cert} (issuer {issuer}) is not signed by any CA in {ca}: {fix}")]
    Untrusted {
        cert: String,
        ca: String,
        issuer: String,
        fix: String,
    },
    /// The CA that signed the client certificate is not valid now.
    #[error(
        "CA {subject} in {ca} that signed the client certificate is not valid now (until {not_after}): {fix}"
    )]
    CaNotValid {
        ca: String,
        subject: String,
        not_after: String,
        fix: String,
    },
    /// The chain fails for another reason (a CA that may not sign, a wrong signature, …).
    #[error("client certificate {cert} does not verify against {ca}: {message}; {fix}")]
    Chain {
        cert: String,
        ca: String,
        message: String,
        fix: String,
    },
    /// The client certificate lacks the clientAuth extended key usage.
    #[error(
        "client certificate {path} lacks the clientAuth extended key usage, so buildkitd will reject it: mount the client Secret, not the daemon's, or reissue it with `kiln rotate`"
    )]
    NoClientAuth { path: String },
    /// The material could not be turned into a TLS configuration.
    #[error("failed to set up TLS from {dir}: {message}")]
    TlsConfig { dir: String, message: String },
    /// No daemon passed the handshake.
    #[error("{0}")]
    Daemons(String),
}

/// Find the three files in `dir`, accepting either naming for each one (as buildctl's
/// own `--tlsdir` does).
pub fn find_tls_files(dir: &Path) -> Result<TlsFiles, PreflightError> {
    let pick = |names: [&str; 2]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let (pem, tls) = (SecretFormat::Pem.key_names(), SecretFormat::Tls.key_names());
    let ca = pick([pem.0, tls.0]);
    let cert = pick([pem.1, tls.1]);
    let key = pick([pem.2, tls.2]);
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(TlsFiles { ca, cert, key }),
        (ca, cert, key) => {
            let missing: Vec<&str> = [
                (ca.is_none(), "ca.pem/ca.crt"),
                (cert.is_none(), "cert.pem/tls.crt"),
                (key.is_none(), "key.pem/tls.key"),
            ]
            .iter()
            .filter(|(absent, _)| *absent)
            .map(|(_, name)| *name)
            .collect();
            Err(PreflightError::MissingFiles {
                dir: dir.display().to_string(),
                missing: missing.join(", "),
            })
        }
    }
}

/// Read the three files.
pub fn read_material(files: &TlsFiles) -> Result<ClientMaterial, PreflightError> {
    let read = |path: &Path| {
        let read_error = |message: String| PreflightError::Read {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
        // DER or other binary data is named as such (with the openssl command), not "invalid UTF-8".
        crate::pki::pem_text(bytes, &path.display().to_string()).map_err(|e| read_error(e.to_string()))
    };
    Ok(ClientMaterial {
        ca_pem: read(&files.ca)?,
        cert_pem: read(&files.cert)?,
        key_pem: read(&files.key)?,
    })
}

/// A span in words, rounded down to its largest unit: `3 days`, `1 hour`, `40 seconds`.
pub fn human_span(span: time::Duration) -> String {
    let secs = span.whole_seconds().unsigned_abs();
    let (count, unit) = match secs {
        s if s >= 86_400 => (s / 86_400, "day"),
        s if s >= 3_600 => (s / 3_600, "hour"),
        s if s >= 60 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

/// What a passing client check found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCheck {
    /// The client certificate subject.
    pub subject: String,
    /// When the client certificate expires.
    pub not_after: OffsetDateTime,
    /// The fingerprint of the CA that signed it.
    pub ca_fingerprint: String,
}

/// Check the client material at `now`: everything parses, the key matches, the
/// certificate is in its validity window, chains to the bundle and has clientAuth. The
/// fixes the errors name suit `source`.
pub fn check_client(
    files: &TlsFiles,
    material: &ClientMaterial,
    now: OffsetDateTime,
    source: CertSource,
) -> Result<ClientCheck, PreflightError> {
    let dir = files.cert.parent().unwrap_or(Path::new("."));
    let corrupt = || source.rewrite_fix(dir, "the Secret is corrupt, run `kiln rotate` to rewrite it");
    let ca_path = files.ca.display().to_string();
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    pki::parse_bundle(&material.ca_pem).map_err(|e| PreflightError::ParseCa {
        path: ca_path.clone(),
        message: e.to_string(),
        fix: corrupt(),
    })?;
    let leaf = pki::parse_bundle(&material.cert_pem)
        .map_err(|e| PreflightError::ParseCert {
            path: cert_path.clone(),
            message: e.to_string(),
            fix: corrupt(),
        })?
        .into_iter()
        .next()
        .ok_or_else(|| PreflightError::ParseCert {
            path: cert_path.clone(),
            message: "no certificate".into(),
            fix: corrupt(),
        })?;
    match pki::key_matches(&material.cert_pem, &material.key_pem) {
        Ok(true) => {}
        Ok(false) => {
            return Err(PreflightError::KeyMismatch {
                cert: cert_path,
                key: key_path,
                fix: source.rewrite_fix(
                    dir,
                    "the Secret was half-written; run `kiln rotate` to reissue it",
                ),
            });
        }
        Err(e) => {
            return Err(PreflightError::ParseKey {
                path: key_path,
                message: e.to_string(),
                fix: corrupt(),
            });
        }
    }
    if now > leaf.not_after {
        return Err(PreflightError::Expired {
            path: cert_path,
            ago: human_span(now - leaf.not_after),
            not_after: pki::rfc3339(leaf.not_after),
            fix: source.renew_fix(dir),
        });
    }
    if now < leaf.not_before {
        return Err(PreflightError::NotYetValid {
            path: cert_path,
            wait: human_span(leaf.not_before - now),
            not_before: pki::rfc3339(leaf.not_before),
        });
    }
    let verified = pki::verify_chain(&material.cert_pem, &material.ca_pem, now).map_err(|e| match e {
        PkiError::CaNotValidAt {
            subject, not_after, ..
        } => PreflightError::CaNotValid {
            ca: ca_path.clone(),
            subject,
            not_after: pki::rfc3339(not_after),
            fix: source.renew_fix(dir),
        },
        PkiError::Untrusted { issuer, .. } => PreflightError::Untrusted {
            cert: cert_path.clone(),
            ca: ca_path.clone(),
            issuer,
            fix: source.rewrite_fix(
                dir,
                "the client Secret comes from another CA; run `kiln rotate`, then check `kiln status`",
            ),
        },
        other => PreflightError::Chain {
            cert: cert_path.clone(),
            ca: ca_path.clone(),
            message: other.to_string(),
            fix: corrupt(),
        },
    })?;
    // Like Go's crypto/x509 (and so buildkitd): no EKU extension means any usage.
    let usages = &leaf.extended_key_usage;
    if !usages.is_empty() && !usages.iter().any(|usage| usage == "clientAuth" || usage == "any") {
        return Err(PreflightError::NoClientAuth { path: cert_path });
    }
    Ok(ClientCheck {
        subject: leaf.subject,
        not_after: leaf.not_after,
        ca_fingerprint: verified.ca_fingerprint,
    })
}

/// The rustls client configuration: trust the bundle, present the client
/// certificate, offer ALPN `h2` (gRPC requires it).
pub fn client_config(
    dir: &Path,
    material: &ClientMaterial,
) -> Result<Arc<rustls::ClientConfig>, PreflightError> {
    let tls_error = |message: String| PreflightError::TlsConfig {
        dir: dir.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| tls_error(format!("the CA bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| tls_error(format!("the CA bundle: {e}")))?;
    }
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("the client certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| tls_error(format!("the client key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Why a handshake with one daemon failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The host name did not resolve (a StatefulSet pod that is not ready has no record).
    Resolve(String),
    /// Nothing listens on the port.
    Refused,
    /// No answer within the connect timeout.
    Timeout(Duration),
    /// TLS completed, but no HTTP/2 answer came within the connect timeout.
    NoHttp2Answer(Duration),
    /// The daemon's certificate is not signed by a CA in the bundle.
    UnknownCa,
    /// The daemon's certificate does not name the host.
    WrongName,
    /// The daemon's certificate has expired or is not valid yet.
    DaemonCertTime,
    /// The daemon refused the client certificate (a TLS alert after our Finished).
    ClientRejected(String),
    /// The connection dropped or something else went wrong.
    Other(String),
}

impl HandshakeFailure {
    /// Worth retrying later: the daemon may be restarting.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Self::Resolve(_) | Self::Refused | Self::Timeout(_) | Self::NoHttp2Answer(_) | Self::Other(_)
        )
    }

    /// One line: what happened and what to do about it.
    pub fn describe(&self, daemon: &Daemon, ca: &Path) -> String {
        let name = daemon.name();
        let ca = ca.display();
        match self {
            Self::Resolve(message) => format!(
                "cannot resolve buildkitd {name} ({message}): check --addr, or KILN_BUILDKIT_SERVICE/KILN_BUILDKIT_NAMESPACE and that the pod is Ready"
            ),
            Self::Refused => format!(
                "buildkitd {name} refused the connection: it is down or restarting; check its pods with `kubectl get pods` in its namespace"
            ),
            Self::Timeout(limit) => format!(
                "buildkitd {name} did not answer within {}s: check NetworkPolicies and the Service port, or raise --connect-timeout",
                limit.as_secs_f64()
            ),
            Self::NoHttp2Answer(limit) => format!(
                "buildkitd {name} completed the TLS handshake but sent no HTTP/2 answer within {}s: check that buildkitd (gRPC) serves this port, or raise --connect-timeout",
                limit.as_secs_f64()
            ),
            Self::UnknownCa => format!(
                "buildkitd {name} presented a certificate not signed by any CA in {ca}: the daemon and client Secrets come from different CAs; run `kiln rotate`, then check `kiln status`"
            ),
            Self::WrongName => format!(
                "buildkitd {name} presented a certificate that is not valid for {}: add the name to certs.extraSans in the overlay and run `kiln rotate`, or use an address the certificate names",
                daemon.host
            ),
            Self::DaemonCertTime => format!(
                "buildkitd {name} presented an expired (or not yet valid) certificate: {FIX_ROTATE}, and buildkitd must restart to load renewed files"
            ),
            Self::ClientRejected(alert) => format!(
                "buildkitd {name} rejected the client certificate ({alert}): it trusts a different CA than the one that signed ours; run `kiln rotate`, then check `kiln status`"
            ),
            Self::Other(message) => format!(
                "failed TLS handshake with buildkitd {name}: {message}; check `kiln status` and the buildkitd logs"
            ),
        }
    }
}

fn classify_io(error: &std::io::Error) -> HandshakeFailure {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return classify_tls(tls);
    }
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => HandshakeFailure::Refused,
        std::io::ErrorKind::UnexpectedEof => {
            HandshakeFailure::Other("the daemon closed the connection during the handshake".into())
        }
        _ => HandshakeFailure::Other(error.to_string()),
    }
}

fn classify_tls(error: &rustls::Error) -> HandshakeFailure {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension,
        ) => HandshakeFailure::UnknownCa,
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            HandshakeFailure::WrongName
        }
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => HandshakeFailure::DaemonCertTime,
        rustls::Error::AlertReceived(alert) => {
            HandshakeFailure::ClientRejected(format!("TLS alert {alert:?}"))
        }
        other => HandshakeFailure::Other(other.to_string()),
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Connect to `daemon`, complete an mTLS handshake verifying its name against the
/// bundle, then send the HTTP/2 preface and wait for the first frame: in TLS 1.3 the
/// server checks our certificate only after the handshake, so only its answer proves
/// that it accepted us. All within `timeout`.
pub async fn handshake(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), HandshakeFailure> {
    let tls_done = std::cell::Cell::new(false);
    match tokio::time::timeout(timeout, handshake_inner(daemon, config, &tls_done)).await {
        Ok(result) => result,
        Err(_) if tls_done.get() => Err(HandshakeFailure::NoHttp2Answer(timeout)),
        Err(_) => Err(HandshakeFailure::Timeout(timeout)),
    }
}

/// A TLS connection to a daemon, its certificate verified for the daemon's host name.
pub type DaemonStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connect to `daemon` (its `--connect-to` address, or its host name resolved) and complete
/// an mTLS handshake verifying the daemon's name against the bundle. No timeout of its own:
/// callers bound it. In TLS 1.3 the daemon judges our certificate only after this returns,
/// so only its first answer proves that it accepted us.
pub async fn connect_tls(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
) -> Result<DaemonStream, HandshakeFailure> {
    let server_name = ServerName::try_from(daemon.host.clone()).map_err(|e| {
        HandshakeFailure::Other(format!("{:?} is not a valid TLS server name: {e}", daemon.host))
    })?;
    let tcp = match daemon.connect_to {
        Some(addr) => tokio::net::TcpStream::connect(addr).await,
        None => {
            let addrs: Vec<_> = tokio::net::lookup_host((daemon.host.as_str(), daemon.port))
                .await
                .map_err(|e| HandshakeFailure::Resolve(e.to_string()))?
                .collect();
            if addrs.is_empty() {
                return Err(HandshakeFailure::Resolve("no addresses".into()));
            }
            tokio::net::TcpStream::connect(&addrs[..]).await
        }
    }
    .map_err(|e| classify_io(&e))?;
    tcp.set_nodelay(true).ok();
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| classify_io(&e))
}

/// Connect, handshake and wait for the HTTP/2 SETTINGS frame; `tls_done` is set once
/// the TLS handshake has completed, so a timeout can say which part hung.
async fn handshake_inner(
    daemon: &Daemon,
    config: Arc<rustls::ClientConfig>,
    tls_done: &std::cell::Cell<bool>,
) -> Result<(), HandshakeFailure> {
    let mut tls = connect_tls(daemon, config).await?;
    tls_done.set(true);
    tls.write_all(H2_PREFACE).await.map_err(|e| classify_io(&e))?;
    tls.flush().await.map_err(|e| classify_io(&e))?;
    let mut header = [0u8; 9];
    match tls.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(HandshakeFailure::Other(
                "the daemon closed the connection right after the handshake: it rejected our client certificate, or it is not buildkitd serving gRPC".into(),
            ));
        }
        Err(e) => return Err(classify_io(&e)),
    }
    // An HTTP/2 server's first frame is SETTINGS (type 4).
    if header[3] != 4 {
        return Err(HandshakeFailure::Other(
            "the daemon did not answer with HTTP/2 SETTINGS: is it buildkitd, serving gRPC?".into(),
        ));
    }
    tls.shutdown().await.ok();
    Ok(())
}

/// How hard to try before giving up on every daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Rounds over all candidates (at least 1).
    pub rounds: u32,
    /// The pause before the second round; doubled each round, at most 10 s.
    pub backoff: Duration,
    /// The limit for one connection and handshake.
    pub connect_timeout: Duration,
}

impl Retry {
    /// The pause after round `round` (0-based).
    pub fn pause(&self, round: u32) -> Duration {
        let factor = 1u32 << round.min(16);
        self.backoff.saturating_mul(factor).min(Duration::from_secs(10))
    }
}

/// Try the candidates in order until one passes the handshake. A daemon that
/// fails is logged and the next one tried; while any failure looks transient, the
/// whole list is retried after a growing pause, for at most `retry.rounds` rounds.
/// Returns the index of the chosen candidate.
pub async fn choose_daemon(
    candidates: &[Daemon],
    config: Arc<rustls::ClientConfig>,
    ca: &Path,
    retry: Retry,
) -> Result<usize, PreflightError> {
    let mut last: Vec<String> = Vec::new();
    for round in 0..retry.rounds.max(1) {
        last.clear();
        let mut any_transient = false;
        for (index, daemon) in candidates.iter().enumerate() {
            match handshake(daemon, config.clone(), retry.connect_timeout).await {
                Ok(()) => {
                    tracing::info!(daemon = %daemon.name(), round, "handshake with buildkitd succeeded");
                    return Ok(index);
                }
                Err(failure) => {
                    let message = failure.describe(daemon, ca);
                    any_transient |= failure.transient();
                    if index + 1 < candidates.len() {
                        tracing::warn!(daemon = %daemon.name(), next = %candidates[index + 1].name(), "{message}; falling over to the next daemon in order");
                    } else {
                        tracing::warn!(daemon = %daemon.name(), "{message}");
                    }
                    last.push(message);
                }
            }
        }
        if !any_transient || round + 1 >= retry.rounds.max(1) {
            break;
        }
        let pause = retry.pause(round);
        tracing::warn!(
            round = round + 1,
            rounds = retry.rounds,
            "no buildkitd answered; retrying in {pause:?}"
        );
        tokio::time::sleep(pause).await;
    }
    Err(PreflightError::Daemons(match last.as_slice() {
        [one] => one.clone(),
        many => format!("no buildkitd passed the handshake: {}", many.join("; ")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_in_words() {
        assert_eq!(
            human_span(time::Duration::days(3) + time::Duration::hours(2)),
            "3 days"
        );
        assert_eq!(human_span(time::Duration::hours(1)), "1 hour");
        assert_eq!(human_span(time::Duration::seconds(-90)), "1 minute");
        assert_eq!(human_span(time::Duration::seconds(5)), "5 seconds");
    }

    #[test]
    fn finds_either_naming() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "tls.crt", "key.pem"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let files = find_tls_files(dir.path()).unwrap();
        assert_eq!(files.ca, dir.path().join("ca.crt"));
        assert_eq!(files.cert, dir.path().join("tls.crt"));
        assert_eq!(files.key, dir.path().join("key.pem"));
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        let err = find_tls_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no key.pem/tls.key"), "{err}");
        assert!(!err.contains("ca.pem/ca.crt"), "{err}");
    }

    #[test]
    fn a_secret_volume_is_told_from_local_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cert_source(dir.path()), CertSource::LocalFiles);
        let local = CertSource::LocalFiles.renew_fix(dir.path());
        assert!(
            local.contains("does not renew") && local.contains("kiln certs generate"),
            "{local}"
        );
        assert!(!local.contains("CronJob"), "{local}");
        // The kubelet's atomic writer: files are links into `..data`, itself a link.
        std::fs::create_dir(dir.path().join("..2026_01_01_00_00_00.1")).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
        assert_eq!(cert_source(dir.path()), CertSource::SecretMount);
        assert_eq!(CertSource::SecretMount.renew_fix(dir.path()), FIX_ROTATE);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = Retry {
            rounds: 5,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
        };
        assert_eq!(retry.pause(0), Duration::from_millis(500));
        assert_eq!(retry.pause(2), Duration::from_secs(2));
        assert_eq!(retry.pause(10), Duration::from_secs(10));
    }
}
