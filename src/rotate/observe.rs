//! Looking at the buildkitd replicas over TLS (an IO edge of `kiln rotate`).
//!
//! For each replica: resolve, connect, complete a TLS handshake presenting the probe
//! client certificate, keep the certificate the daemon served, then send the HTTP/2
//! preface and wait for the daemon's first frame. In TLS 1.3 a server checks the client
//! certificate only after the handshake, so only that answer proves it accepted the
//! probe; an alert or a closed connection means it did not.
//!
//! The served certificate is recorded, not judged: the rollover needs to know *which* CA
//! signed what a replica serves, including a stale or expired certificate. The handshake
//! signature is still verified against the served certificate's key, so a replica proves
//! it holds that key. The probe sends nothing but the HTTP/2 preface.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::apply::Probe;
use super::state::RawReplica;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How long one replica may take, from name lookup to the daemon's first frame.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod name (or the address), as reports name it.
    pub name: String,
    /// The DNS name or IP address to connect to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The TLS server name (SNI): a name the daemon certificate carries.
    pub server_name: String,
}

/// A curl-style `--connect-to HOST:PORT:HOST2:PORT2`: connections meant for HOST:PORT go
/// to HOST2:PORT2 instead (for runs outside the cluster through a port-forward, and for
/// tests). The TLS server name stays HOST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The host (pod DNS name or EndpointSlice address) as kiln would connect to it.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Where to connect instead.
    pub to_host: String,
    /// And its port.
    pub to_port: u16,
}

impl FromStr for ConnectTo {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "{:?} is not HOST:PORT:HOST2:PORT2, such as buildkitd-0.buildkitd.buildkit.svc:1234:127.0.0.1:12340",
                text.chars().take(80).collect::<String>()
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let [host, port, to_host, to_port] = parts[..] else {
            return Err(usage());
        };
        let number = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        match (number(port), number(to_port)) {
            (Some(port), Some(to_port)) if !host.is_empty() && !to_host.is_empty() => Ok(Self {
                host: host.to_string(),
                port,
                to_host: to_host.to_string(),
                to_port,
            }),
            _ => Err(usage()),
        }
    }
}

/// How the replicas are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Address overrides.
    pub connect_to: Vec<ConnectTo>,
    /// The limit for one replica.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_to: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Keeps the end-entity certificate the server presented; accepts any (see the module docs).
#[derive(Debug)]
struct Capture {
    served: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.served.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_of(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// One line, at most 160 characters: error texts of the network stack can be long.
fn short(text: impl ToString) -> String {
    let text = text.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(160) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn client_config(probe: Option<&Probe>, capture: Arc<Capture>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(capture.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(short)?
        .dangerous()
        .with_custom_certificate_verifier(capture);
    let mut config = match probe {
        None => builder.with_no_client_auth(),
        Some(probe) => {
            let chain = CertificateDer::pem_slice_iter(probe.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "the probe client certificate cannot be read".to_string())?;
            let key = PrivateKeyDer::from_pem_slice(probe.key_pem.0.as_bytes())
                .map_err(|_| "the probe client key cannot be read".to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| "the probe client certificate and key do not fit together".to_string())?
        }
    };
    // buildkitd serves gRPC, which insists on HTTP/2 by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What the daemon said after the handshake: Some(true) it answered (it accepted the
/// probe), Some(false) it refused, None no answer in time.
async fn first_answer<S>(tls: &mut S) -> Option<bool>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    if tls.write_all(H2_PREFACE).await.is_err() || tls.flush().await.is_err() {
        return Some(false);
    }
    let mut header = [0u8; 9];
    match tls.read_exact(&mut header).await {
        Ok(_) => Some(true),
        Err(_) => Some(false),
    }
}

async fn probe_one(
    target: &Target,
    probe: Option<&Probe>,
    settings: &Settings,
) -> Result<(String, Option<bool>), String> {
    let (host, port) = settings
        .connect_to
        .iter()
        .find(|c| c.host == target.host && c.port == target.port)
        .map(|c| (c.to_host.clone(), c.to_port))
        .unwrap_or_else(|| (target.host.clone(), target.port));
    let server_name = ServerName::try_from(target.server_name.clone())
        .map_err(|_| format!("{:?} is not a TLS server name", target.server_name))?;
    let capture = Arc::new(Capture {
        served: Mutex::new(None),
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    });
    let config = client_config(probe, capture.clone())?;
    let served = || {
        capture
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|der| pem_of(&der))
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {}", short(e)))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {host}: no addresses"));
    }
    let tcp = tokio::net::TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {}", short(e)))?;
    tcp.set_nodelay(true).ok();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match connector.connect(server_name, tcp).await {
        Ok(tls) => tls,
        // In TLS 1.2 a refused client certificate ends the handshake after the server
        // presented its own.
        Err(e) => {
            return match served() {
                Some(pem) if probe.is_some() => Ok((pem, Some(false))),
                _ => Err(format!("TLS handshake failed: {}", short(e))),
            };
        }
    };
    let accepted = first_answer(&mut tls).await;
    tls.shutdown().await.ok();
    let pem = served().ok_or("it presented no certificate")?;
    Ok((pem, probe.and(accepted)))
}

/// Connect to every target at once, each within `settings.timeout`.
pub async fn probe_all(targets: &[Target], probe: Option<&Probe>, settings: &Settings) -> Vec<RawReplica> {
    let mut set = tokio::task::JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let target = target.clone();
        let probe = probe.cloned();
        let settings = settings.clone();
        set.spawn(async move {
            let result =
                match tokio::time::timeout(settings.timeout, probe_one(&target, probe.as_ref(), &settings))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} s", settings.timeout.as_secs())),
                };
            (
                index,
                RawReplica {
                    name: target.name,
                    result,
                },
            )
        });
    }
    let mut out: Vec<(usize, RawReplica)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(item) = joined {
            out.push(item);
        }
    }
    out.sort_by_key(|(index, _)| *index);
    out.into_iter().map(|(_, replica)| replica).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_parses_like_curl() {
        let c: ConnectTo = "buildkitd-0.buildkitd.ns.svc:1234:127.0.0.1:4000"
            .parse()
            .unwrap();
        assert_eq!(
            c,
            ConnectTo {
                host: "buildkitd-0.buildkitd.ns.svc".into(),
                port: 1234,
                to_host: "127.0.0.1".into(),
                to_port: 4000,
            }
        );
        for bad in ["a:1:b", "a:0:b:1", "a:1:b:x", ":1:b:2", "a:1:b:2:3"] {
            let err = bad.parse::<ConnectTo>().unwrap_err();
            assert!(err.contains("HOST:PORT:HOST2:PORT2"), "{err}");
        }
    }

    #[test]
    fn pem_round_trips() {
        let ca = crate::pki::issue_ca(&crate::pki::CaRequest {
            common_name: "t".into(),
            algorithm: crate::pki::Algorithm::EcdsaP256,
            not_before: time::OffsetDateTime::now_utc(),
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(1),
            serial: crate::pki::Serial::from_u128(7),
        })
        .unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::pki::fingerprint(&pem_of(&der)).unwrap(),
            crate::pki::fingerprint(&ca.cert_pem).unwrap()
        );
    }

    #[tokio::test]
    async fn an_unreachable_replica_is_reported_not_fatal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let targets = [Target {
            name: "buildkitd-0".into(),
            host: "127.0.0.1".into(),
            port,
            server_name: "buildkitd".into(),
        }];
        let out = probe_all(&targets, None, &Settings::default()).await;
        assert_eq!(out.len(), 1);
        let err = out[0].result.clone().unwrap_err();
        assert!(err.starts_with("cannot connect to 127.0.0.1:"), "{err}");
    }
}
