//! A stand-in buildkitd for `kiln build`'s tests and benchmark: a rustls server that
//! requires a client certificate from the trusted CA, speaking HTTP/2 (the `h2` crate's
//! server) and answering BuildKit's `/moby.buildkit.v1.Control/ListenBuildHistory` the way
//! buildkitd does: one `BuildHistoryEvent` per active build (STARTED, `type` omitted as
//! Go's protobuf encoder omits a zero enum), then its finished builds (COMPLETE), at most
//! the request's `Limit`, each record naming the image its exporter writes; then
//! `grpc-status: 0` in the trailers.
//!
//! [`Pki`] issues the certificates a stand-in and its client need.
//!
//! Shared by tests/build.rs and the benchmarks (examples/bench_build.rs,
//! examples/bench_affinity.rs) through `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::build::history::{bytes_field, map_entry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA, a daemon certificate for `buildkitd` in namespace `ci` and a client certificate
/// (P-256, valid from a day ago for four weeks), with the client's files written as
/// `kiln build --tls-dir` reads them: `ca.pem`, `cert.pem`, `key.pem` in [`Pki::dir`].
pub struct Pki {
    pub ca: kiln::pki::Issued,
    pub daemon: kiln::pki::Issued,
    pub client: kiln::pki::Issued,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        use kiln::pki::{self, Algorithm, CaRequest, LeafKind, LeafRequest, Serial};
        let now = time::OffsetDateTime::now_utc();
        let ca = pki::issue_ca(&CaRequest {
            common_name: "bench CA".into(),
            algorithm: Algorithm::EcdsaP256,
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(30),
            serial: Serial::random().unwrap(),
        })
        .unwrap();
        let leaf = |kind, sans| {
            pki::issue_leaf(
                &ca,
                &LeafRequest {
                    kind,
                    common_name: "bench".into(),
                    sans,
                    algorithm: Algorithm::EcdsaP256,
                    not_before: now - time::Duration::days(1),
                    not_after: now + time::Duration::days(29),
                    serial: Serial::random().unwrap(),
                },
            )
            .unwrap()
        };
        let daemon = leaf(
            LeafKind::Daemon,
            pki::daemon_sans("buildkitd", "ci", &[]).unwrap(),
        );
        let client = leaf(LeafKind::Client, Vec::new());
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("ca.pem", &ca.cert_pem),
            ("cert.pem", &client.cert_pem),
            ("key.pem", &client.key_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Self {
            ca,
            daemon,
            client,
            dir,
        }
    }

    /// A stand-in presenting the daemon certificate and trusting this CA's clients.
    pub fn serve(&self, active: u32, behavior: Behavior) -> Daemon {
        serve(
            &self.ca.cert_pem,
            &self.daemon.cert_pem,
            &self.daemon.key_pem,
            active,
            behavior,
        )
    }
}

/// The image the stand-in's builds export unless [`Behavior::building`] says otherwise.
pub const OTHER_IMAGE: &str = "registry.example.com/other/service:1";

/// The `Limit` kiln asks for (`history::FINISHED_LIMIT`), which the stand-in checks.
pub const LIMIT: u32 = 50;

/// What the stand-in answers.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Finished builds it has; it sends at most the request's `Limit` of them (all with
    /// `ignore_limit`) as COMPLETE events after the active ones.
    pub finished: u32,
    /// Of the active builds, the first `.0` export [`Behavior::image`]; of the finished
    /// builds, the first `.1`. The others export [`OTHER_IMAGE`].
    pub building: (u32, u32),
    /// The image of the builds [`Behavior::building`] counts.
    pub image: String,
    /// Send every finished build, as buildkitd before v0.20 (which has no `Limit`) does.
    pub ignore_limit: bool,
    /// Wait this long before answering the history call.
    pub delay: Duration,
    /// Answer with this gRPC status (trailers-only) instead of the events.
    pub status: Option<u32>,
}

/// A running stand-in. It serves until the process ends.
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Completed TLS handshakes (preflight handshakes and history calls alike).
    pub handshakes: Arc<AtomicUsize>,
    /// History calls answered (or started, when delayed).
    pub history_calls: Arc<AtomicUsize>,
    /// The active builds it reports; change it at any time.
    pub active: Arc<AtomicU32>,
    /// Requests that were not a well-formed history call, described.
    pub bad_requests: Arc<Mutex<Vec<String>>>,
}

/// A protobuf `BuildHistoryEvent`: `kind` (0 STARTED, 1 COMPLETE) and a record whose `Ref`
/// (field 1) is `reference`, whose `FrontendAttrs` (field 3) hold a build arg and whose
/// image exporter (field 4) writes `image` and pushes it. A finished record also carries
/// what buildkitd adds at the end, about 2 KiB: the logs descriptor (8), the exporter's
/// response (9: the image descriptor, base64, and digests) and the result (10).
pub fn event(kind: u8, reference: &str, image: &str) -> Vec<u8> {
    let exporter = [
        bytes_field(1, b"image"),
        map_entry(2, "name", image),
        map_entry(2, "push", "true"),
    ]
    .concat();
    let record = [
        bytes_field(1, reference.as_bytes()),
        map_entry(3, "build-arg:GIT", "abc"),
        bytes_field(4, &exporter),
    ]
    .concat();
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let record = if kind == 1 {
        [
            record,
            bytes_field(
                8,
                format!("application/vnd.buildkit.status.v0 {digest} 18231").as_bytes(),
            ),
            map_entry(
                9,
                "containerimage.descriptor",
                &"eyJtZWRpYVR5cGUiOiJhcHBsaWNhdGlvbi92bmQub2Np".repeat(14),
            ),
            map_entry(9, "containerimage.digest", &digest),
            map_entry(9, "containerimage.config.digest", &digest),
            map_entry(9, "image.name", image),
            bytes_field(10, "r".repeat(900).as_bytes()),
        ]
        .concat()
    } else {
        record
    };
    let mut out = Vec::new();
    if kind != 0 {
        out.extend_from_slice(&[0x08, kind]);
    }
    out.extend(bytes_field(2, &record));
    out
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A daemon's rustls server configuration: `cert_pem` and `key_pem`, a client certificate
/// from `trusted_ca` required, HTTP/2 offered by ALPN.
pub fn server_config(trusted_ca: &str, cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted_ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Start a stand-in presenting `cert_pem`/`key_pem` and trusting client certificates
/// from `trusted_ca`, reporting `active` builds.
pub fn serve(trusted_ca: &str, cert_pem: &str, key_pem: &str, active: u32, behavior: Behavior) -> Daemon {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(trusted_ca, cert_pem, key_pem));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = Daemon {
        addr,
        handshakes: Arc::new(AtomicUsize::new(0)),
        history_calls: Arc::new(AtomicUsize::new(0)),
        active: Arc::new(AtomicU32::new(active)),
        bad_requests: Arc::new(Mutex::new(Vec::new())),
    };
    let (handshakes, calls, active, bad) = (
        daemon.handshakes.clone(),
        daemon.history_calls.clone(),
        daemon.active.clone(),
        daemon.bad_requests.clone(),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).ok();
                let (acceptor, handshakes, calls, active, bad, behavior) = (
                    acceptor.clone(),
                    handshakes.clone(),
                    calls.clone(),
                    active.clone(),
                    bad.clone(),
                    behavior.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut connection) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        let (calls, active, bad, behavior) =
                            (calls.clone(), active.clone(), bad.clone(), behavior.clone());
                        tokio::spawn(async move {
                            answer(request, respond, &calls, &active, &bad, &behavior).await;
                        });
                    }
                });
            }
        });
    });
    daemon
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    calls: &AtomicUsize,
    active: &AtomicU32,
    bad: &Mutex<Vec<String>>,
    behavior: &Behavior,
) {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut problems = Vec::new();
    if request.method() != http::Method::POST {
        problems.push(format!("method {}", request.method()));
    }
    if request.uri().path() != "/moby.buildkit.v1.Control/ListenBuildHistory" {
        problems.push(format!("path {}", request.uri().path()));
    }
    if header("content-type") != "application/grpc" {
        problems.push(format!("content-type {:?}", header("content-type")));
    }
    if header("te") != "trailers" {
        problems.push(format!("te {:?}", header("te")));
    }
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    // BuildHistoryRequest{EarlyExit: true, Limit: 50}; EarlyExit matters most: without it
    // buildkitd streams forever.
    if bytes != grpc_frame(&[0x18, 1, 0x28, LIMIT as u8]) {
        problems.push(format!("body {bytes:02x?}"));
    }
    calls.fetch_add(1, Ordering::SeqCst);
    if !problems.is_empty() {
        bad.lock().unwrap().push(problems.join(", "));
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "3")
            .header("grpc-message", "bad%20request")
            .body(())
            .unwrap();
        let _ = respond.send_response(response, true);
        return;
    }
    tokio::time::sleep(behavior.delay).await;
    if let Some(code) = behavior.status {
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code.to_string())
            .header("grpc-message", "unknown%20service%20moby.buildkit.v1.Control")
            .body(())
            .unwrap();
        let _ = respond.send_response(response, true);
        return;
    }
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    let mut stream = Vec::new();
    let image = |i: u32, same: u32| {
        if i < same {
            behavior.image.as_str()
        } else {
            OTHER_IMAGE
        }
    };
    for i in 0..active.load(Ordering::SeqCst) {
        stream.extend(grpc_frame(&event(
            0,
            &format!("active{i}"),
            image(i, behavior.building.0),
        )));
    }
    let sent = if behavior.ignore_limit {
        behavior.finished
    } else {
        behavior.finished.min(LIMIT)
    };
    for i in 0..sent {
        stream.extend(grpc_frame(&event(
            1,
            &format!("done{i}"),
            image(i, behavior.building.1),
        )));
    }
    if !stream.is_empty() && send.send_data(bytes::Bytes::from(stream), false).is_err() {
        return;
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
