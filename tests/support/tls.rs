//! Independent TLS peers for the rotation tests: trust is judged by rustls and by openssl,
//! never by kiln's own verifier.
//!
//! - [`rustls_mtls`]: a rustls server with a daemon's files and a rustls client with a
//!   client's files complete mutual TLS and exchange a line, at a given time.
//! - [`openssl_mtls`]: the same with `openssl s_server` and `openssl s_client`.
//! - [`Replica`]: a long-running rustls "buildkitd replica" that serves whatever daemon
//!   Secret it was last (re)started with, requires a client certificate from that
//!   Secret's bundle, and answers the HTTP/2 preface with a SETTINGS frame, so
//!   `kiln rotate` can observe it.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};

/// What a daemon or a client loads from its Secret: trust bundle, certificate, key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The CA bundle it trusts.
    pub bundle: String,
    /// Its certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
}

/// A clock the test sets: what rustls peers believe the time is.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// A clock set to `at`.
    pub fn at(at: OffsetDateTime) -> Self {
        let clock = Self::default();
        clock.set(at);
        clock
    }

    /// Set the time.
    pub fn set(&self, at: OffsetDateTime) {
        self.0.store(at.unix_timestamp(), Ordering::SeqCst);
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        let secs = self.0.load(Ordering::SeqCst);
        Some(UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(secs).ok()?,
        )))
    }
}

/// The crypto provider every test TLS stack uses (kiln's own: aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM text.
pub fn certs_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A root store of every certificate in a PEM bundle.
pub fn roots_of(pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_of(pem) {
        roots.add(cert).expect("a root");
    }
    Arc::new(roots)
}

/// A rustls server config for a daemon: its certificate, and client certificates
/// required from its bundle, judged at the clock's time.
pub fn server_config(daemon: &Material, clock: &Clock) -> Arc<rustls::ServerConfig> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots_of(&daemon.bundle), provider())
            .build()
            .expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_details(provider(), Arc::new(clock.clone()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_of(&daemon.cert),
            PrivateKeyDer::from_pem_slice(daemon.key.as_bytes()).expect("daemon key"),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn client_config(client: &Material, clock: &Clock) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_details(provider(), Arc::new(clock.clone()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots_of(&client.bundle))
        .with_client_auth_cert(
            certs_of(&client.cert),
            PrivateKeyDer::from_pem_slice(client.key.as_bytes()).expect("client key"),
        )
        .expect("client config");
    Arc::new(config)
}

/// A rustls daemon and a rustls client complete mutual TLS at `at` and exchange a line;
/// Err carries both sides' errors.
pub fn rustls_mtls(
    daemon: &Material,
    client: &Material,
    at: OffsetDateTime,
    server_name: &str,
) -> Result<(), String> {
    let clock = Clock::at(at);
    let server = server_config(daemon, &clock);
    let client = client_config(client, &clock);
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let server_side = async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let tls = acceptor.accept(tcp).await.map_err(|e| format!("daemon: {e}"))?;
            let mut tls = AsyncBufReader::new(tls);
            let mut line = String::new();
            tls.read_line(&mut line)
                .await
                .map_err(|e| format!("daemon read: {e}"))?;
            tls.get_mut()
                .write_all(b"pong\n")
                .await
                .map_err(|e| format!("daemon write: {e}"))?;
            tls.get_mut().shutdown().await.ok();
            Ok::<_, String>(())
        };
        let client_side = async move {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"ping\n")
                .await
                .map_err(|e| format!("client write: {e}"))?;
            let mut tls = AsyncBufReader::new(tls);
            let mut line = String::new();
            tls.read_line(&mut line)
                .await
                .map_err(|e| format!("client read: {e}"))?;
            if line == "pong\n" {
                Ok(())
            } else {
                Err(format!("client got {line:?}"))
            }
        };
        let both = async { tokio::join!(server_side, client_side) };
        match tokio::time::timeout(Duration::from_secs(10), both).await {
            Err(_) => Err("the handshake timed out".into()),
            Ok((Ok(()), Ok(()))) => Ok(()),
            Ok((s, c)) => Err(format!("{:?} / {:?}", s.err(), c.err())),
        }
    })
}

/// Reads a child's stdout and stderr lines on threads, so a test can wait with a deadline.
pub fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [stdout, stderr] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits until a line containing `needle` arrives; every line read is appended to `log`.
pub fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration, log: &mut String) -> bool {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(needle) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Kills the child when dropped, so a failed assertion never leaks a server.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_material(dir: &Path, name: &str, m: &Material) -> [std::path::PathBuf; 3] {
    let paths = [
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    ];
    std::fs::write(&paths[0], &m.bundle).unwrap();
    std::fs::write(&paths[1], &m.cert).unwrap();
    std::fs::write(&paths[2], &m.key).unwrap();
    paths
}

/// `openssl s_server` with the daemon's files (client certificate required) and
/// `openssl s_client` with the client's files complete mutual TLS, both verifying at
/// `at` (`-attime`), and the client's line reaches the server.
pub fn openssl_mtls(
    openssl: &Path,
    daemon: &Material,
    client: &Material,
    at: OffsetDateTime,
    server_name: &str,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let [s_ca, s_cert, s_key] = write_material(dir.path(), "daemon", daemon);
    let [c_ca, c_cert, c_key] = write_material(dir.path(), "client", client);
    let attime = at.unix_timestamp().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut s = Command::new(openssl)
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&s_cert)
        .arg("-key")
        .arg(&s_key)
        .arg("-CAfile")
        .arg(&s_ca)
        .args([
            "-Verify",
            "2",
            "-verify_return_error",
            "-naccept",
            "1",
            "-attime",
            &attime,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_lines = line_reader(&mut s);
    let _server = Killed(s);
    let mut server_log = String::new();
    if !wait_for_line(&server_lines, "ACCEPT", Duration::from_secs(10), &mut server_log) {
        return Err(format!("s_server did not start: {server_log}"));
    }
    let mut c = Command::new(openssl)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", server_name, "-verify_hostname", server_name])
        .args(["-verify_return_error", "-nocommands", "-attime", &attime])
        .arg("-cert")
        .arg(&c_cert)
        .arg("-key")
        .arg(&c_key)
        .arg("-CAfile")
        .arg(&c_ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c.stdin.as_mut().unwrap().write_all(b"hello-from-client\n");
    let client_lines = line_reader(&mut c);
    let client_process = Killed(c);
    let accepted = wait_for_line(
        &server_lines,
        "hello-from-client",
        Duration::from_secs(10),
        &mut server_log,
    );
    drop(client_process);
    let mut client_log = String::new();
    wait_for_line(&client_lines, "\0", Duration::from_millis(500), &mut client_log);
    if accepted
        && !client_log.contains("Verify return code: 0 (ok)")
        && client_log.contains("Verify return code")
    {
        return Err(format!("s_client did not verify the daemon:\n{client_log}"));
    }
    if accepted {
        Ok(())
    } else {
        Err(format!("server:\n{server_log}\nclient:\n{client_log}"))
    }
}

/// The HTTP/2 SETTINGS frame a gRPC server sends first (empty).
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A buildkitd stand-in on 127.0.0.1 that serves the daemon Secret it was last given.
pub struct Replica {
    /// Its port.
    pub port: u16,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    /// What it serves now.
    pub serving: Mutex<Material>,
    clock: Clock,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Start serving `daemon`, judging client certificates at the clock's time.
    pub fn start(daemon: &Material, clock: &Clock) -> Self {
        let config = Arc::new(Mutex::new(server_config(daemon, clock)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = config.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let config = shared.lock().unwrap().clone();
                            tokio::spawn(async move {
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                                let mut preface = [0u8; 33];
                                if tls.read_exact(&mut preface).await.is_ok() {
                                    let _ = tls.write_all(&SETTINGS).await;
                                    let _ = tls.flush().await;
                                }
                                let _ = tls.shutdown().await;
                            });
                        }
                    }
                }
            });
        });
        Self {
            port,
            config,
            serving: Mutex::new(daemon.clone()),
            clock: clock.clone(),
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// "Restart" with new files: new connections get `daemon`.
    pub fn serve(&self, daemon: &Material) {
        *self.config.lock().unwrap() = server_config(daemon, &self.clock);
        *self.serving.lock().unwrap() = daemon.clone();
    }

    /// What it serves now.
    pub fn material(&self) -> Material {
        self.serving.lock().unwrap().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
