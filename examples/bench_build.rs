//! Benchmark for `kiln build` (run by scripts/bench-build):
//!
//! 1. Preflight overhead: everything kiln does before buildctl starts (find and read
//!    the client files, check them, build the TLS config, pick the daemon, mTLS
//!    handshake plus HTTP/2 preface) against a bare TLS connect (TCP + mTLS handshake
//!    with a ready config) to the same loopback server.
//! 2. Cache affinity: the share of repeat builds of a repository that land on the
//!    daemon that built it the previous time, consistent hashing vs random choice
//!    (what a plain Service gives), over 4 replicas.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::build::preflight::{self, Retry};
use kiln::build::ring::{Ring, affinity_key};
use kiln::build::{Daemon, Placement, daemon_candidates};
use kiln::pki::{self, Algorithm, CaRequest, Issued, LeafKind, LeafRequest, Serial};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

type Error = Box<dyn std::error::Error>;

fn issue(ca: &Issued, kind: LeafKind, sans: Vec<pki::San>) -> Result<Issued, Error> {
    let now = OffsetDateTime::now_utc();
    Ok(pki::issue_leaf(
        ca,
        &LeafRequest {
            kind,
            common_name: "bench".into(),
            sans,
            algorithm: Algorithm::EcdsaP256,
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(90),
            serial: Serial::random()?,
        },
    )?)
}

/// A loopback mTLS server answering the HTTP/2 preface with SETTINGS, one thread per connection.
fn serve(ca: &Issued, daemon: &Issued) -> Result<SocketAddr, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
    let chain = CertificateDer::pem_slice_iter(daemon.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(daemon.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
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
    let now = OffsetDateTime::now_utc();
    let ca = pki::issue_ca(&CaRequest {
        common_name: "bench CA".into(),
        algorithm: Algorithm::EcdsaP256,
        not_before: now - time::Duration::days(30),
        not_after: now + time::Duration::days(365),
        serial: Serial::random()?,
    })?;
    let daemon = issue(&ca, LeafKind::Daemon, pki::daemon_sans("buildkitd", "ci", &[])?)?;
    let client = issue(&ca, LeafKind::Client, Vec::new())?;
    let addr = serve(&ca, &daemon)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem)?;
    std::fs::write(dir.path().join("cert.pem"), &client.cert_pem)?;
    std::fs::write(dir.path().join("key.pem"), &client.key_pem)?;

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
            preflight::check_client(&files, &material, OffsetDateTime::now_utc())?;
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

/// xorshift64*: a small deterministic generator, so every run reports the same figures.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cache_affinity(builds: usize, repos: usize, replicas: u32) {
    let ring = Ring::for_replicas("buildkitd", replicas);
    let keys: Vec<String> = (0..repos)
        .map(|i| {
            affinity_key(
                &format!("registry.example.com/team-{}/service-{i}", i % 13),
                "/workspace/source/.",
            )
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Repositories are picked with a skewed (1/rank-like) popularity, as in a real CI.
    let weights: Vec<f64> = (1..=repos).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let pick = |rng: &mut Rng| {
        let mut target = (rng.below(1 << 53) as f64 / (1u64 << 53) as f64) * total;
        for (index, weight) in weights.iter().enumerate() {
            if target < *weight {
                return index;
            }
            target -= weight;
        }
        repos - 1
    };
    // One daemon (buildkitd-1) is down for builds [40%, 50%): consistent hashing falls
    // over along the ring, random choice just avoids it.
    let down = (builds * 2 / 5)..(builds / 2);
    let mut last_hash: Vec<Option<usize>> = vec![None; repos];
    let mut last_random: Vec<Option<usize>> = vec![None; repos];
    let (mut repeats, mut hash_hits, mut random_hits) = (0usize, 0usize, 0usize);
    for build in 0..builds {
        let repo = pick(&mut rng);
        let is_down = |daemon: usize| down.contains(&build) && daemon == 1;
        let hashed = ring
            .candidates(&keys[repo])
            .into_iter()
            .find(|d| !is_down(*d))
            .unwrap_or(0);
        let random = loop {
            let d = rng.below(u64::from(replicas)) as usize;
            if !is_down(d) {
                break d;
            }
        };
        if let (Some(h), Some(r)) = (last_hash[repo], last_random[repo]) {
            repeats += 1;
            hash_hits += usize::from(h == hashed);
            random_hits += usize::from(r == random);
        }
        last_hash[repo] = Some(hashed);
        last_random[repo] = Some(random);
    }
    let share = |hits: usize| 100.0 * hits as f64 / repeats as f64;
    println!(
        "cache affinity ({builds} builds of {repos} repositories, skewed popularity, {replicas} replicas, \
         buildkitd-1 down for 10% of the builds)"
    );
    println!("  repeat builds landing on the daemon that built the repository last time:");
    println!(
        "    consistent hashing: {:5.1}%   ({hash_hits}/{repeats})",
        share(hash_hits)
    );
    println!(
        "    random (Service):   {:5.1}%   ({random_hits}/{repeats})",
        share(random_hits)
    );
    println!("    ratio: {:.2}x", share(hash_hits) / share(random_hits));
}

fn main() -> Result<(), Error> {
    let iterations = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    preflight_overhead(iterations)?;
    println!();
    cache_affinity(20_000, 400, 4);
    Ok(())
}
