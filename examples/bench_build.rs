//! Benchmark for `kiln build` (run by scripts/bench-build):
//!
//! 1. Preflight overhead: everything kiln does before buildctl starts (find and read
//!    the client files, check them, build the TLS config, pick the daemon, mTLS
//!    handshake plus HTTP/2 preface) against a bare TLS connect (TCP + mTLS handshake
//!    with a ready config) to the same loopback server.
//! 2. The build-history query of the daemon choice (3 active and 50 finished builds): the
//!    native gRPC call against a client process making the same call (see [`load_query`]).
//!
//! Cache affinity is scripts/bench-affinity's (examples/bench_affinity.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/support/daemon.rs"]
mod daemon;

use kiln::build::choose::{DEFAULT_LOAD_FACTOR, Load, Policy};
use kiln::build::preflight::{self, CertSource, Retry};
use kiln::build::{Daemon, Placement, daemon_candidates, history, run};
use kiln::pki::Issued;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;

/// The repository the load query asks about.
const REPOSITORY: &str = "registry.example.com/team/app";

type Error = Box<dyn std::error::Error>;

/// A loopback mTLS server answering the HTTP/2 preface with SETTINGS, one thread per connection.
fn serve(ca: &Issued, daemon: &Issued) -> Result<SocketAddr, Error> {
    let config = daemon::server_config(&ca.cert_pem, &daemon.cert_pem, &daemon.key_pem);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                tcp.set_nodelay(true).ok();
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if tls
                    .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                    .and_then(|()| tls.flush())
                    .is_err()
                {
                    return;
                }
                let mut sink = [0u8; 256];
                while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn preflight_overhead(iterations: usize) -> Result<(), Error> {
    let pki = daemon::Pki::new();
    let addr = serve(&pki.ca, &pki.daemon)?;
    let dir = &pki.dir;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bare_config = {
        let files = preflight::find_tls_files(dir.path())?;
        preflight::client_config(dir.path(), &preflight::read_material(&files)?)?
    };
    let bare = |config: Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("buildkitd.ci.svc")?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        drop(tls);
        Ok::<(), Error>(())
    };
    let full = |dir: &Path| {
        let dir = dir.to_path_buf();
        async move {
            let files = preflight::find_tls_files(&dir)?;
            let material = preflight::read_material(&files)?;
            preflight::check_client(
                &files,
                &material,
                OffsetDateTime::now_utc(),
                CertSource::LocalFiles,
            )?;
            let config = preflight::client_config(&dir, &material)?;
            let placement = Placement::Addr(Daemon {
                host: "buildkitd.ci.svc".into(),
                port: 1234,
                connect_to: None,
            });
            let overrides = [(("buildkitd.ci.svc".to_string(), 1234), addr)];
            let candidates = daemon_candidates(
                &placement,
                "registry.example.com/app:/workspace/source",
                &overrides,
            );
            let retry = Retry {
                rounds: 1,
                backoff: Duration::from_millis(500),
                connect_timeout: Duration::from_secs(5),
            };
            preflight::choose_daemon(&candidates, config, &files.ca, retry).await?;
            Ok::<(), Error>(())
        }
    };
    // Warm up both paths (first connections, page cache).
    for _ in 0..10 {
        runtime.block_on(bare(bare_config.clone()))?;
        runtime.block_on(full(dir.path()))?;
    }
    let mut bare_ms = Vec::with_capacity(iterations);
    let mut full_ms = Vec::with_capacity(iterations);
    // Interleave so both see the same machine load.
    for _ in 0..iterations {
        let start = Instant::now();
        runtime.block_on(bare(bare_config.clone()))?;
        bare_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        runtime.block_on(full(dir.path()))?;
        full_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (bare_p50, bare_p90) = (percentile(&mut bare_ms, 0.5), percentile(&mut bare_ms, 0.9));
    let (full_p50, full_p90) = (percentile(&mut full_ms, 0.5), percentile(&mut full_ms, 0.9));
    println!("preflight overhead ({iterations} runs each, interleaved, loopback)");
    println!("  bare TLS connect (TCP + mTLS handshake):      p50 {bare_p50:7.3} ms   p90 {bare_p90:7.3} ms");
    println!("  kiln preflight (files, checks, config, pick,");
    println!("                  mTLS handshake + h2 preface): p50 {full_p50:7.3} ms   p90 {full_p90:7.3} ms");
    println!(
        "  ratio (p50): {:.2}x   on top of the bare connect: {:.3} ms at p50 (target < 20 ms): {}",
        full_p50 / bare_p50,
        full_p50 - bare_p50,
        if full_p50 - bare_p50 < 20.0 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    Ok(())
}

/// The build-history query: kiln's native gRPC call against running a separate client
/// process that makes the same call over the same mTLS, the way the `buildctl debug
/// histories` method would. No buildctl binary exists on this machine (Debian and PyPI
/// ship none, and no Go toolchain new enough to build one), so the process is `curl
/// --http2` doing the identical HTTP/2 gRPC exchange: a lower bound for buildctl, which
/// adds the Go runtime's start and its own dial. Both against the same stand-in daemon.
fn load_query(iterations: usize) -> Result<(), Error> {
    let pki = daemon::Pki::new();
    let stand_in = pki.serve(
        3,
        daemon::Behavior {
            // A daemon with a full history: kiln reads its 50 newest finished builds.
            finished: 200,
            building: (1, 10),
            image: format!("{REPOSITORY}:1.0"),
            ..Default::default()
        },
    );
    let dir = &pki.dir;
    let request = dir.path().join("request.bin");
    std::fs::write(&request, history::frame(&history::request_message()))?;
    let files = preflight::find_tls_files(dir.path())?;
    let material = preflight::read_material(&files)?;
    // A fresh client config per call, as each `kiln build` process (and each curl) has: no
    // TLS session resumed from an earlier call.
    let fresh_config = || preflight::client_config(dir.path(), &material);
    let target = Daemon {
        host: "buildkitd-0.buildkitd.ci.svc".into(),
        port: 1234,
        connect_to: Some(stand_in.addr),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let native = || -> Result<Load, Error> {
        Ok(runtime.block_on(history::load(
            &target,
            fresh_config()?,
            Duration::from_secs(5),
            REPOSITORY,
        ))?)
    };
    let out = dir.path().join("answer.bin");
    let curl = || -> Result<Load, Error> {
        let status = std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--http2", "--fail"])
            .arg("--cacert")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .arg("--connect-to")
            .arg(format!(
                "buildkitd-0.buildkitd.ci.svc:1234:127.0.0.1:{}",
                stand_in.addr.port()
            ))
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("--data-binary")
            .arg(format!("@{}", request.display()))
            .arg("--output")
            .arg(&out)
            .arg(format!(
                "https://buildkitd-0.buildkitd.ci.svc:1234{}",
                history::METHOD
            ))
            .status()?;
        if !status.success() {
            return Err(format!("curl failed: {status}").into());
        }
        Ok(history::summarize(&std::fs::read(&out)?, REPOSITORY)?)
    };
    // Both must read the same answer: 3 active builds, 1 of the repository; 50 finished
    // (the request's Limit), 10 of the repository.
    let expected = Load {
        active: 3,
        active_same: 1,
        finished: 50,
        finished_same: 10,
    };
    assert_eq!(native()?, expected);
    if curl().is_err() {
        println!("load query: curl with HTTP/2 is not available; only the native figure is measured");
    }
    let curl_works = curl().is_ok_and(|load| load == expected);
    // A whole choice as kiln build runs it: 3 daemons asked at once.
    let wave: Vec<Daemon> = (0..3)
        .map(|i| Daemon {
            host: format!("buildkitd-{i}.buildkitd.ci.svc"),
            port: 1234,
            connect_to: Some(stand_in.addr),
        })
        .collect();
    let policy = Policy::with_load_factor(DEFAULT_LOAD_FACTOR);
    let choice = || {
        runtime.block_on(run::choose_by_load(
            &wave,
            fresh_config().unwrap(),
            &policy,
            Duration::from_secs(5),
            REPOSITORY,
        ));
    };
    for _ in 0..10 {
        native()?;
        choice();
        if curl_works {
            curl()?;
        }
    }
    let (mut native_ms, mut curl_ms, mut choice_ms) = (Vec::new(), Vec::new(), Vec::new());
    let time = |f: &mut dyn FnMut() -> Result<(), Error>| -> Result<f64, Error> {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..iterations {
        native_ms.push(time(&mut || native().map(|_| ()))?);
        choice_ms.push(time(&mut || {
            choice();
            Ok(())
        })?);
        if curl_works {
            curl_ms.push(time(&mut || curl().map(|_| ()))?);
        }
    }
    println!(
        "build-history query, 3 active and 50 finished builds ({iterations} runs each, interleaved, loopback, stand-in gRPC daemon over mTLS)"
    );
    let (n50, n90) = (percentile(&mut native_ms, 0.5), percentile(&mut native_ms, 0.9));
    let (w50, w90) = (percentile(&mut choice_ms, 0.5), percentile(&mut choice_ms, 0.9));
    println!("  native gRPC, one daemon (TCP + mTLS + HTTP/2 + call):  p50 {n50:7.3} ms   p90 {n90:7.3} ms");
    println!("  native, a walk over 3 daemons asked at once:            p50 {w50:7.3} ms   p90 {w90:7.3} ms");
    if curl_works {
        let (c50, c90) = (percentile(&mut curl_ms, 0.5), percentile(&mut curl_ms, 0.9));
        println!(
            "  a client process per query (curl --http2, same call):  p50 {c50:7.3} ms   p90 {c90:7.3} ms"
        );
        println!(
            "  ratio (p50): the process costs {:.1}x the native call, +{:.2} ms per daemon asked",
            c50 / n50,
            c50 - n50
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let iterations = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    preflight_overhead(iterations)?;
    println!();
    load_query(iterations)?;
    Ok(())
}
