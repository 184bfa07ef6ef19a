//! `kiln certs generate` and `kiln certs inspect` against real peers: x509-parser,
//! openssl (verify, x509 -checkend, s_server/s_client) and a rustls mTLS handshake.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kiln::pki::{self, Algorithm, CaRequest, Issued, LeafKind, LeafRequest, Serial};
use support::tls::{Killed, Material, line_reader, rustls_mtls, wait_for_line};
use support::{entries as listing, kiln, stderr, stdout, tool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_certificate;

const NOW: &str = "2026-03-01T00:00:00Z";

fn run_generate(cwd: &Path, args: &[&str]) -> Output {
    kiln()
        .current_dir(cwd)
        .args(["certs", "generate"])
        .args(args)
        .output()
        .unwrap()
}

/// Generate into `<tmp>/.certs` and return (tempdir, .certs path).
fn generated(args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_generate(tmp.path(), args);
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
    let certs = tmp.path().join(".certs");
    (tmp, certs)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn der_of(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    pem.contents
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// The CA's random id (the end of its common name) replaced by `<ca--id>`, which has the
/// same width, so snapshot tables stay aligned.
fn redact_ca_id(certs: &Path, text: &str) -> String {
    let ca = pki::parse_bundle(&read(&certs.join("daemon/ca.pem"))).unwrap();
    let cn = ca[0].common_name.clone().unwrap();
    let id = cn.rsplit(' ').next().unwrap();
    assert_eq!(id.len(), 8, "{cn}");
    text.replace(id, "<ca--id>")
}

// ------------------------------------------------------------------ generate

#[test]
fn generate_writes_the_seed_layout_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_generate(
        tmp.path(),
        &[
            "--namespace",
            "ci",
            "--san",
            "10.0.0.7",
            "--san",
            "builder.example.com",
            "--now",
            NOW,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let certs = tmp.path().join(".certs");
    insta::assert_snapshot!("generate_stdout", redact_ca_id(&certs, &stdout(&out)));

    assert_eq!(fs::metadata(&certs).unwrap().permissions().mode() & 0o777, 0o700);
    for dir in ["daemon", "client"] {
        assert_eq!(
            fs::metadata(certs.join(dir)).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            let meta = fs::metadata(certs.join(dir).join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{dir}/{file}");
        }
    }
    for yaml in [
        "buildkit-daemon-certs.yaml",
        "buildkit-client-certs.yaml",
        "buildkit-ca.yaml",
    ] {
        assert_eq!(
            fs::metadata(certs.join(yaml)).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // No temporary directory is left behind.
    assert_eq!(listing(tmp.path()), [".certs"]);

    // Keys never reach stdout or stderr.
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains("PRIVATE KEY"));
    for dir in ["daemon", "client"] {
        let key = read(&certs.join(dir).join("key.pem"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let body = key.lines().nth(1).unwrap();
        assert!(!printed.contains(body));
    }

    // The Secrets hold exactly the files.
    for (yaml, dir, name) in [
        ("buildkit-daemon-certs.yaml", "daemon", "buildkit-daemon-certs"),
        ("buildkit-client-certs.yaml", "client", "buildkit-client-certs"),
    ] {
        let secret: Secret = kiln::yaml::from_str(&read(&certs.join(yaml)), yaml).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some(name));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.pem", "cert.pem", "key.pem"]);
        for (key, value) in data {
            assert_eq!(
                String::from_utf8(value.0).unwrap(),
                read(&certs.join(dir).join(&key)),
                "{yaml} {key}"
            );
        }
    }
    let ca: Secret = kiln::yaml::from_str(&read(&certs.join("buildkit-ca.yaml")), "ca").unwrap();
    assert_eq!(ca.metadata.name.as_deref(), Some("buildkit-ca"));
    let data = ca.data.unwrap();
    let ca_cert = String::from_utf8(data["cert.pem"].0.clone()).unwrap();
    let ca_key = String::from_utf8(data["key.pem"].0.clone()).unwrap();
    assert_eq!(ca_cert, read(&certs.join("daemon/ca.pem")));
    assert!(
        pki::key_matches(&ca_cert, &ca_key).unwrap(),
        "the CA Secret keeps the CA key"
    );
}

#[test]
fn format_tls_uses_cert_manager_names() {
    let (_tmp, certs) = generated(&["--format", "tls", "--now", NOW]);
    for dir in ["daemon", "client"] {
        let mut names = listing(&certs.join(dir));
        names.sort();
        assert_eq!(names, ["ca.crt", "tls.crt", "tls.key"]);
    }
    for yaml in [
        "buildkit-daemon-certs.yaml",
        "buildkit-client-certs.yaml",
        "buildkit-ca.yaml",
    ] {
        let secret: Secret = kiln::yaml::from_str(&read(&certs.join(yaml)), yaml).unwrap();
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            secret.data.unwrap().keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
    }
    let out = kiln()
        .args(["certs", "inspect"])
        .arg(&certs)
        .args(["--now", NOW])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_certificate_parses_back_with_the_requested_fields() {
    for algorithm in ["ecdsa-p256", "ecdsa-p384", "ed25519"] {
        let (_tmp, certs) = generated(&[
            "--namespace",
            "ci",
            "--service",
            "bk",
            "--san",
            "10.0.0.7",
            "--san",
            "builder.example.com",
            "--algorithm",
            algorithm,
            "--ca-validity",
            "2y",
            "--validity",
            "30d",
            "--now",
            NOW,
        ]);
        let now = OffsetDateTime::parse(NOW, &Rfc3339).unwrap();
        let ca_der = der_of(&read(&certs.join("daemon/ca.pem")));
        let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca, "{algorithm}: CA basicConstraints");
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(
            ca.validity().not_after.to_datetime(),
            now + time::Duration::days(730)
        );
        assert!(ca.validity().not_before.to_datetime() <= now);
        assert!(ca.verify_signature(None).is_ok(), "CA is self-signed");
        assert_eq!(
            read(&certs.join("client/ca.pem")),
            read(&certs.join("daemon/ca.pem"))
        );

        for (dir, server) in [("daemon", true), ("client", false)] {
            let der = der_of(&read(&certs.join(dir).join("cert.pem")));
            let (_, cert) = parse_x509_certificate(&der).unwrap();
            assert!(
                cert.verify_signature(Some(ca.public_key())).is_ok(),
                "{algorithm} {dir}: signed by CA"
            );
            assert_eq!(cert.issuer(), ca.subject());
            assert!(
                !cert.basic_constraints().unwrap().unwrap().value.ca,
                "{dir} is not a CA"
            );
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!((eku.server_auth, eku.client_auth), (server, !server), "{dir} EKU");
            assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
            assert_eq!(
                cert.validity().not_after.to_datetime(),
                now + time::Duration::days(30)
            );
            assert!(cert.validity().not_before.to_datetime() <= now);
            assert!(cert.validity().not_before.to_datetime() >= ca.validity().not_before.to_datetime());
            assert!(
                cert.raw_serial().len() <= 17,
                "serial fits 16 bytes plus a sign byte"
            );
            let sans: Vec<String> = cert
                .subject_alternative_name()
                .unwrap()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            GeneralName::DNSName(d) => d.to_string(),
                            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                            other => format!("{other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if server {
                assert_eq!(
                    sans,
                    [
                        "bk",
                        "bk.ci",
                        "bk.ci.svc",
                        "bk.ci.svc.cluster.local",
                        "*.bk.ci.svc",
                        "*.bk.ci.svc.cluster.local",
                        "ip:[10, 0, 0, 7]",
                        "builder.example.com",
                    ]
                );
            } else {
                assert!(sans.is_empty(), "client has no SANs: {sans:?}");
            }
            let key = read(&certs.join(dir).join("key.pem"));
            assert!(pki::key_matches(&read(&certs.join(dir).join("cert.pem")), &key).unwrap());
        }
    }
}

#[test]
fn refuses_an_existing_directory_without_force() {
    let (tmp, certs) = generated(&["--now", NOW]);
    let before = read(&certs.join("daemon/cert.pem"));
    let out = run_generate(tmp.path(), &["--now", NOW]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: --out .certs already exists; pass --force to replace it\n"
    );
    assert_eq!(read(&certs.join("daemon/cert.pem")), before);

    let out = run_generate(tmp.path(), &["--now", NOW, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        read(&certs.join("daemon/cert.pem")),
        before,
        "--force replaced the certificates"
    );
    assert_eq!(
        listing(tmp.path()),
        [".certs"],
        "no temporary or old directory left"
    );

    // --force never deletes a directory holding anything kiln did not write.
    fs::write(certs.join("notes.txt"), "mine").unwrap();
    let out = run_generate(tmp.path(), &["--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: --out .certs holds .certs/notes.txt, which kiln does not write; --force only replaces \
         a directory written by `kiln certs generate`: choose another --out or remove it yourself\n"
    );
    assert_eq!(read(&certs.join("notes.txt")), "mine");
    fs::remove_file(certs.join("notes.txt")).unwrap();
    fs::write(certs.join("daemon/extra.pem"), "x").unwrap();
    let out = run_generate(tmp.path(), &["--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds .certs/daemon/extra.pem"),
        "{}",
        stderr(&out)
    );
    let out = run_generate(tmp.path(), &["--force", "--out", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: --out . holds ./.certs, which kiln does not write; --force only replaces a directory \
         written by `kiln certs generate`: choose another --out or remove it yourself\n"
    );
}

/// Each bad input fails with its one-line message and leaves the directory untouched.
#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--san", "bad_name!"],
            2,
            "error: invalid SAN \"bad_name!\": a DNS name may only hold letters, digits, '-' and '.'\n",
        ),
        (
            &["--san=-x"],
            2,
            "error: invalid SAN \"-x\": a DNS label must not start or end with '-'\n",
        ),
        (
            &["--validity", "0d"],
            2,
            "error: invalid --validity 0s: a certificate must be valid for longer than zero, such as 90d\n",
        ),
        (
            &["--ca-validity", "0s"],
            2,
            "error: invalid --ca-validity 0s: a certificate must be valid for longer than zero, such as 90d\n",
        ),
        (
            &["--validity", "2y", "--ca-validity", "1y"],
            2,
            "error: invalid --validity 2y: the daemon and client certificates would outlive the CA \
             (--ca-validity 1y); shorten --validity or lengthen --ca-validity\n",
        ),
        (
            &["--namespace", "Bad_NS"],
            2,
            "error: invalid namespace \"Bad_NS\": use lowercase letters, digits and '-', at most 63 characters\n",
        ),
    ];
    for (args, code, message) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = run_generate(tmp.path(), args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), *message, "{args:?}");
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert!(
            listing(tmp.path()).is_empty(),
            "{args:?} wrote {:?}",
            listing(tmp.path())
        );
    }

    // clap's own checks: an unknown algorithm and a negative validity (exit 2).
    for (args, needle) in [
        (
            &["--algorithm", "rsa-1024"][..],
            "invalid value 'rsa-1024' for '--algorithm <ALGORITHM>'",
        ),
        (
            &["--validity=-5d"][..],
            "invalid value '-5d' for '--validity <DURATION>'",
        ),
        (
            &["--now", "yesterday"][..],
            "invalid value 'yesterday' for '--now <RFC3339>'",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = run_generate(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(listing(tmp.path()).is_empty());
    }
}

#[test]
fn an_unwritable_output_directory_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // The parent of --out is a regular file: nothing can be created under it.
    fs::write(tmp.path().join("file"), "x").unwrap();
    let out = run_generate(tmp.path(), &["--out", "file/certs"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: failed to create file/.certs.kiln-tmp-"),
        "{err}"
    );
    assert!(err.contains("is file a writable directory?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(listing(tmp.path()), ["file"]);

    // A read-only parent (only meaningful when not running as root).
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
    if fs::write(ro.join("probe"), "x").is_ok() {
        eprintln!("running as root: the read-only directory case is covered by the file case above");
        fs::remove_file(ro.join("probe")).unwrap();
    } else {
        let out = run_generate(tmp.path(), &["--out", "ro/certs"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("is ro a writable directory?"),
            "{}",
            stderr(&out)
        );
        assert!(listing(&ro).is_empty());
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
}

// ------------------------------------------------------------------- inspect

#[test]
fn inspect_prints_a_table_and_json() {
    let (tmp, certs) = generated(&["--namespace", "ci", "--san", "10.0.0.7", "--now", NOW]);
    let out = kiln()
        .current_dir(tmp.path())
        .args([
            "certs",
            "inspect",
            ".certs",
            "--now",
            "2026-03-11T00:00:00Z",
            "-o",
            "wide",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!("inspect_table", redact_ca_id(&certs, &stdout(&out)));

    let out = kiln()
        .current_dir(tmp.path())
        .args([
            "certs",
            "inspect",
            ".certs/buildkit-daemon-certs.yaml",
            "-o",
            "json",
        ])
        .args(["--now", "2026-03-11T00:00:00Z"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "the daemon cert and its CA");
    let daemon = &rows[0];
    assert_eq!(daemon["commonName"], "buildkitd");
    assert_eq!(daemon["extendedKeyUsage"], serde_json::json!(["serverAuth"]));
    assert_eq!(daemon["daysLeft"], 80);
    assert_eq!(daemon["chainOk"], true);
    assert_eq!(daemon["keyMatches"], true);
    assert_eq!(daemon["keyAlgorithm"], "ecdsa-p256");
    assert_eq!(rows[1]["isCa"], true);
    assert_eq!(
        daemon["issuerFingerprint"], rows[1]["fingerprint"],
        "the CA from the Secret's ca.pem"
    );
    assert_eq!(rows[1]["fingerprint"].as_str().unwrap().len(), 64);
    let ca_pem = read(&tmp.path().join(".certs/daemon/ca.pem"));
    assert_eq!(rows[1]["fingerprint"], pki::fingerprint(&ca_pem).unwrap());
    assert!(!stdout(&out).contains("PRIVATE"));
}

#[test]
fn inspect_fails_on_an_expired_ca() {
    let (tmp, certs) = generated(&[
        "--now",
        "2020-01-01T00:00:00Z",
        "--ca-validity",
        "1y",
        "--validity",
        "30d",
    ]);
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", ".certs/daemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = redact_ca_id(&certs, &stderr(&out));
    assert!(
        err.contains(
            "problem: .certs/daemon/ca.pem (O=kiln, CN=kiln buildkit CA buildkit <ca--id>) expired at 2020-12-31T00:00:00Z"
        ),
        "{err}"
    );
    assert!(
        err.ends_with("error: 2 problem(s) found in .certs/daemon\n"),
        "{err}"
    );
    // Still valid in 2020: the same files pass.
    let out = kiln()
        .current_dir(tmp.path())
        .args([
            "certs",
            "inspect",
            ".certs/daemon",
            "--now",
            "2020-01-15T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn inspect_fails_on_a_mismatched_key_and_a_foreign_ca() {
    let (tmp, certs) = generated(&["--now", NOW]);
    let (_tmp2, other) = generated(&["--now", NOW]);
    // The client key in the daemon directory: the key does not match.
    fs::copy(certs.join("client/key.pem"), certs.join("daemon/key.pem")).unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", ".certs/daemon", "--now", NOW])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "problem: .certs/daemon/cert.pem (O=kiln, CN=buildkitd): the private key does not match the certificate\n\
         error: 1 problem(s) found in .certs/daemon\n"
    );
    assert!(stdout(&out).contains("MISMATCH"));

    // Another installation's CA next to this client cert: it does not chain.
    fs::copy(other.join("client/ca.pem"), certs.join("client/ca.pem")).unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", ".certs/client", "--now", NOW])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "does not chain: certificate \"O=kiln, CN=kiln-client:buildkit\" does not chain to the trust bundle"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inspect_rejects_corrupt_pem_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.pem");
    fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "bad.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: failed to read bad.pem: failed to read PEM block 1:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    fs::write(&path, "just text, no certificate").unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "bad.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    // Neither PEM nor a Secret: said so, without quoting the file back.
    assert_eq!(
        err.trim_end(),
        "error: failed to read bad.pem: it holds no PEM block (-----BEGIN CERTIFICATE-----) and is not a Secret YAML"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "missing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: failed to read missing:"),
        "{}",
        stderr(&out)
    );

    fs::create_dir(tmp.path().join("empty")).unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "empty"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: failed to find certificates in empty: expected ca/cert/key files (pem or tls names), \
         Secret YAML or PEM files\n"
    );
}

// ------------------------------------------------------------------- openssl

fn openssl() -> Option<PathBuf> {
    tool("openssl")
}

#[test]
fn openssl_verify_accepts_daemon_and_client() {
    let Some(openssl) = openssl() else { return };
    for algorithm in ["ecdsa-p256", "ecdsa-p384", "ed25519"] {
        let (_tmp, certs) = generated(&["--namespace", "ci", "--algorithm", algorithm]);
        for (dir, purpose) in [("daemon", "sslserver"), ("client", "sslclient")] {
            let out = Command::new(&openssl)
                .arg("verify")
                .arg("-CAfile")
                .arg(certs.join(dir).join("ca.pem"))
                .args(["-purpose", purpose])
                .arg(certs.join(dir).join("cert.pem"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{algorithm} {dir}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            assert!(stdout(&out).ends_with(": OK\n"), "{}", stdout(&out));
        }
        // The daemon cert names the Service; openssl checks it.
        let out = Command::new(&openssl)
            .arg("verify")
            .arg("-CAfile")
            .arg(certs.join("daemon/ca.pem"))
            .args(["-verify_hostname", "buildkitd.ci.svc.cluster.local"])
            .arg(certs.join("daemon/cert.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        // A client certificate is not a server certificate.
        let out = Command::new(&openssl)
            .arg("verify")
            .arg("-CAfile")
            .arg(certs.join("client/ca.pem"))
            .args(["-purpose", "sslserver"])
            .arg(certs.join("client/cert.pem"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "client cert must not pass as sslserver");
    }
}

#[test]
fn openssl_checkend_agrees_with_inspect() {
    let Some(openssl) = openssl() else { return };
    let now = OffsetDateTime::now_utc();
    // Issued 85 days ago for 90 days: about 5 days left. Issued 100 days ago: expired.
    for (age_days, expect_valid) in [(85, true), (100, false)] {
        let issued = rfc3339(now - time::Duration::days(age_days));
        let (_tmp, certs) = generated(&["--now", &issued, "--validity", "90d"]);
        let inspect = kiln()
            .args(["certs", "inspect", "-o", "json"])
            .arg(certs.join("daemon"))
            .output()
            .unwrap();
        assert_eq!(inspect.status.success(), expect_valid, "{}", stderr(&inspect));
        let rows: serde_json::Value = serde_json::from_str(&stdout(&inspect)).unwrap();
        let leaf = &rows[0];
        assert_eq!(leaf["commonName"], "buildkitd");
        assert_eq!(leaf["valid"], expect_valid);
        let days_left = leaf["daysLeft"].as_i64().unwrap();
        let checkend = |secs: i64| {
            Command::new(&openssl)
                .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
                .arg(certs.join("daemon/cert.pem"))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert_eq!(checkend(0), expect_valid, "checkend 0 vs inspect valid");
        if expect_valid {
            assert_eq!(days_left, 4, "90d issued 85d ago (minus a few seconds)");
            // Still valid after days_left whole days, expired after one more day.
            assert!(checkend(days_left * 86_400));
            assert!(!checkend((days_left + 1) * 86_400));
        } else {
            assert!(days_left < 0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What both openssl processes said.
struct Handshake {
    /// The server received the client's line: both sides verified each other.
    accepted: bool,
    server_log: String,
    client_log: String,
}

/// `openssl s_server -Verify 1` with `server` (daemon) files, `openssl s_client` with
/// `client` files, on 127.0.0.1 with 10 s deadlines; both processes are killed at the end.
fn openssl_handshake(openssl: &Path, server: &Path, client: &Path, server_name: &str) -> Handshake {
    let port = free_port();
    let mut s = Command::new(openssl)
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(server.join("cert.pem"))
        .arg("-key")
        .arg(server.join("key.pem"))
        .arg("-CAfile")
        .arg(server.join("ca.pem"))
        .args(["-Verify", "1", "-verify_return_error", "-naccept", "1"])
        .stdin(Stdio::piped()) // kept open: s_server stops at EOF on stdin
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_lines = line_reader(&mut s);
    let _server = Killed(s);
    let mut server_log = String::new();
    assert!(
        wait_for_line(&server_lines, "ACCEPT", Duration::from_secs(10), &mut server_log),
        "s_server did not start: {server_log}"
    );

    let mut c = Command::new(openssl)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", server_name, "-verify_hostname", server_name])
        .args(["-verify_return_error", "-nocommands"])
        .arg("-cert")
        .arg(client.join("cert.pem"))
        .arg("-key")
        .arg(client.join("key.pem"))
        .arg("-CAfile")
        .arg(client.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c.stdin.as_mut().unwrap().write_all(b"hello-from-client\n");
    let client_lines = line_reader(&mut c);
    let client = Killed(c);
    let accepted = wait_for_line(
        &server_lines,
        "hello-from-client",
        Duration::from_secs(10),
        &mut server_log,
    );
    drop(client);
    let mut client_log = String::new();
    wait_for_line(&client_lines, "\0", Duration::from_secs(2), &mut client_log);
    Handshake {
        accepted,
        server_log,
        client_log,
    }
}

#[test]
fn openssl_s_server_and_s_client_complete_an_mtls_handshake() {
    let Some(openssl) = openssl() else { return };
    for algorithm in ["ecdsa-p256", "ecdsa-p384", "ed25519"] {
        let (_tmp, certs) = generated(&["--namespace", "ci", "--algorithm", algorithm]);
        let ok = openssl_handshake(
            &openssl,
            &certs.join("daemon"),
            &certs.join("client"),
            "buildkitd.ci.svc",
        );
        assert!(ok.accepted, "{algorithm}: {}\n{}", ok.server_log, ok.client_log);
        assert!(
            ok.server_log.contains("subject=O = kiln, CN = kiln-client:ci"),
            "{}",
            ok.server_log
        );
        assert!(
            ok.client_log.contains("Verify return code: 0 (ok)"),
            "{}",
            ok.client_log
        );
    }

    let (_tmp, certs) = generated(&["--namespace", "ci"]);
    let (_tmp2, other) = generated(&["--namespace", "ci"]);
    // A client certificate from another CA (the client still trusts the right CA) is
    // refused by the server.
    let mixed = other.join("mixed");
    fs::create_dir(&mixed).unwrap();
    fs::copy(other.join("client/cert.pem"), mixed.join("cert.pem")).unwrap();
    fs::copy(other.join("client/key.pem"), mixed.join("key.pem")).unwrap();
    fs::copy(certs.join("client/ca.pem"), mixed.join("ca.pem")).unwrap();
    let stranger = openssl_handshake(&openssl, &certs.join("daemon"), &mixed, "buildkitd.ci.svc");
    assert!(!stranger.accepted);
    assert!(
        stranger
            .server_log
            .contains("verify error:num=20:unable to get local issuer certificate"),
        "{}",
        stranger.server_log
    );
    // The client refuses a name the daemon certificate does not carry.
    let wrong = openssl_handshake(
        &openssl,
        &certs.join("daemon"),
        &certs.join("client"),
        "buildkitd.other.svc",
    );
    assert!(!wrong.accepted);
    assert!(
        wrong.client_log.contains("Verification error: hostname mismatch"),
        "{}",
        wrong.client_log
    );
}

// -------------------------------------------------------------------- rustls

/// One side of a handshake: its certificate and key, and the CA bundle it trusts.
struct Side {
    cert: String,
    key: String,
    trust: String,
}

impl Side {
    fn from_dir(dir: &Path) -> Self {
        Self {
            cert: read(&dir.join("cert.pem")),
            key: read(&dir.join("key.pem")),
            trust: read(&dir.join("ca.pem")),
        }
    }
}

/// A real mTLS exchange over 127.0.0.1 with tokio-rustls ([`rustls_mtls`], on a thread of
/// its own: it runs its own runtime): the server requires a client certificate from its
/// bundle, the client verifies `server_name`. Err with both sides' errors otherwise.
async fn rustls_handshake(server: &Side, client: &Side, server_name: &str) -> Result<(), String> {
    let material = |side: &Side| Material {
        bundle: side.trust.clone(),
        cert: side.cert.clone(),
        key: side.key.clone(),
    };
    let (server, client, name) = (material(server), material(client), server_name.to_string());
    tokio::task::spawn_blocking(move || rustls_mtls(&server, &client, OffsetDateTime::now_utc(), &name))
        .await
        .expect("the handshake thread")
}

#[tokio::test]
async fn rustls_mtls_handshake_succeeds_and_fails_where_it_must() {
    let (_tmp, certs) = generated(&["--namespace", "ci"]);
    let daemon = Side::from_dir(&certs.join("daemon"));
    let client = Side::from_dir(&certs.join("client"));

    // Both directions verify: the daemon by its Service name, the client by its CA.
    for name in [
        "buildkitd.ci.svc",
        "buildkitd.ci.svc.cluster.local",
        "buildkitd-0.buildkitd.ci.svc",
    ] {
        rustls_handshake(&daemon, &client, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The other algorithms.
    for algorithm in ["ecdsa-p384", "ed25519"] {
        let (_tmp, certs) = generated(&["--namespace", "ci", "--algorithm", algorithm]);
        let (daemon, client) = (
            Side::from_dir(&certs.join("daemon")),
            Side::from_dir(&certs.join("client")),
        );
        rustls_handshake(&daemon, &client, "buildkitd.ci.svc")
            .await
            .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
    }

    // A wrong server name: the client refuses.
    let err = rustls_handshake(&daemon, &client, "buildkitd.other.svc")
        .await
        .unwrap_err();
    assert!(
        err.contains("client: invalid peer certificate: certificate not valid for name"),
        "{err}"
    );

    // A client certificate from another CA: the server refuses.
    let (_tmp2, other) = generated(&["--namespace", "ci"]);
    let stranger = Side {
        trust: client.trust.clone(),
        ..Side::from_dir(&other.join("client"))
    };
    let err = rustls_handshake(&daemon, &stranger, "buildkitd.ci.svc")
        .await
        .unwrap_err();
    assert!(
        err.contains("daemon: invalid peer certificate: UnknownIssuer"),
        "{err}"
    );

    // Expired certificates (issued in 2020 for 30 days), on either side.
    let (_tmp3, old) = generated(&[
        "--namespace",
        "ci",
        "--now",
        "2020-01-01T00:00:00Z",
        "--validity",
        "30d",
    ]);
    let expired_daemon = Side::from_dir(&old.join("daemon"));
    let err = rustls_handshake(
        &expired_daemon,
        &Side::from_dir(&old.join("client")),
        "buildkitd.ci.svc",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("client: invalid peer certificate: certificate expired"),
        "{err}"
    );
    let expired_client = Side {
        trust: client.trust.clone(),
        ..Side::from_dir(&old.join("client"))
    };
    let server_trusting_old = Side {
        trust: format!("{}{}", daemon.trust, read(&old.join("daemon/ca.pem"))),
        ..Side::from_dir(&certs.join("daemon"))
    };
    let err = rustls_handshake(&server_trusting_old, &expired_client, "buildkitd.ci.svc")
        .await
        .unwrap_err();
    assert!(
        err.contains("daemon: invalid peer certificate: certificate expired"),
        "{err}"
    );
}

// --------------------------------------------------------------- CA rollover

fn issue_ca(serial: u128) -> Issued {
    let now = OffsetDateTime::now_utc();
    pki::issue_ca(&CaRequest {
        common_name: format!("rollover CA {serial}"),
        algorithm: Algorithm::EcdsaP256,
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(365),
        serial: Serial::from_u128(serial),
    })
    .unwrap()
}

fn issue_leaf(ca: &Issued, kind: LeafKind) -> Issued {
    let now = OffsetDateTime::now_utc();
    pki::issue_leaf(
        ca,
        &LeafRequest {
            kind,
            common_name: "leaf".into(),
            sans: pki::daemon_sans("buildkitd", "ci", &[]).unwrap(),
            algorithm: Algorithm::EcdsaP256,
            not_before: now - time::Duration::minutes(5),
            not_after: now + time::Duration::days(30),
            serial: Serial::random().unwrap(),
        },
    )
    .unwrap()
}

/// During a CA rollover every bundle holds the old and the new CA: a daemon on either
/// CA and a client on either CA must trust each other.
#[tokio::test]
async fn a_bundle_with_two_cas_trusts_leaves_from_either() {
    let (old, new) = (issue_ca(1), issue_ca(2));
    let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
    let tmp = tempfile::tempdir().unwrap();
    let openssl = openssl();
    for (daemon_ca, client_ca) in [(&old, &new), (&new, &old), (&old, &old), (&new, &new)] {
        let daemon = issue_leaf(daemon_ca, LeafKind::Daemon);
        let client = issue_leaf(client_ca, LeafKind::Client);
        let server = Side {
            cert: daemon.cert_pem.clone(),
            key: daemon.key_pem.clone(),
            trust: bundle.clone(),
        };
        let client_side = Side {
            cert: client.cert_pem.clone(),
            key: client.key_pem.clone(),
            trust: bundle.clone(),
        };
        rustls_handshake(&server, &client_side, "buildkitd.ci.svc")
            .await
            .unwrap();
        assert!(pki::verify_chain(&daemon.cert_pem, &bundle, OffsetDateTime::now_utc()).is_ok());
        if let Some(openssl) = &openssl {
            let leaf = tmp.path().join("leaf.pem");
            let ca = tmp.path().join("bundle.pem");
            fs::write(&leaf, &client.cert_pem).unwrap();
            fs::write(&ca, &bundle).unwrap();
            let out = Command::new(openssl)
                .arg("verify")
                .arg("-CAfile")
                .arg(&ca)
                .arg(&leaf)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
    // Only the new CA (after phase 3): an old leaf no longer verifies.
    let old_daemon = issue_leaf(&old, LeafKind::Daemon);
    assert!(pki::verify_chain(&old_daemon.cert_pem, &new.cert_pem, OffsetDateTime::now_utc()).is_err());
}

#[test]
fn overlay_settings_feed_generate_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let overlays = tmp.path().join("overlays");
    fs::create_dir(&overlays).unwrap();
    fs::write(
        overlays.join("base.yaml"),
        "namespace: \"buildkit-{{overlay}}\"\ncerts:\n  algorithm: ed25519\n  validity: 30d\n",
    )
    .unwrap();
    fs::write(
        overlays.join("prod.yaml"),
        "extends: base\ncerts:\n  extraSans: [builder.example.com]\n  format: tls\n  secrets:\n    daemon: prod-daemon-certs\n",
    )
    .unwrap();
    let out = run_generate(
        tmp.path(),
        &["--overlay", "prod", "--san", "10.1.2.3", "--now", NOW],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let certs = tmp.path().join(".certs");
    let daemon = pki::parse_bundle(&read(&certs.join("daemon/tls.crt")))
        .unwrap()
        .remove(0);
    assert_eq!(daemon.key_algorithm, "ed25519");
    assert_eq!(
        daemon.not_after,
        OffsetDateTime::parse(NOW, &Rfc3339).unwrap() + time::Duration::days(30)
    );
    assert!(
        daemon.sans.contains(&"buildkitd.buildkit-prod.svc".to_string()),
        "{:?}",
        daemon.sans
    );
    assert!(daemon.sans.contains(&"builder.example.com".to_string()));
    assert!(
        daemon.sans.contains(&"10.1.2.3".to_string()),
        "--san adds to the overlay's SANs"
    );
    let secret: Secret =
        kiln::yaml::from_str(&read(&certs.join("buildkit-daemon-certs.yaml")), "daemon").unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("prod-daemon-certs"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("buildkit-prod"));
    // The type of the shells render writes for the overlay (see generate_overlay_type_is_the_shells').
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));

    // A flag wins over the overlay.
    let out = run_generate(
        tmp.path(),
        &[
            "--overlay",
            "prod",
            "--algorithm",
            "ecdsa-p384",
            "--namespace",
            "ci",
            "--out",
            "p384",
            "--now",
            NOW,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let daemon = pki::parse_bundle(&read(&tmp.path().join("p384/daemon/tls.crt")))
        .unwrap()
        .remove(0);
    assert_eq!(daemon.key_algorithm, "ecdsa-p384");
    assert!(daemon.sans.contains(&"buildkitd.ci.svc".to_string()));

    // An overlay that does not exist: one line naming the file, nothing written.
    let out = run_generate(tmp.path(), &["--overlay", "nope", "--out", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!tmp.path().join("nope").exists());
}

#[test]
fn generated_secrets_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    for format in ["pem", "tls"] {
        let (_tmp, certs) = generated(&["--format", format]);
        let files: Vec<PathBuf> = [
            "buildkit-daemon-certs.yaml",
            "buildkit-client-certs.yaml",
            "buildkit-ca.yaml",
        ]
        .iter()
        .map(|f| certs.join(f))
        .collect();
        for version in support::KUBE_VERSIONS {
            let (ok, report) = support::kubernetes_validate(&validate, version, &files);
            assert!(ok, "{format}, Kubernetes {version}: {report}");
            assert_eq!(
                report.matches(" passed for resource secret/").count(),
                3,
                "{report}"
            );
        }
    }
}

#[test]
fn inspect_reads_a_pem_file_holding_certificate_and_key() {
    let (tmp, certs) = generated(&["--now", NOW]);
    let combined = tmp.path().join("combined.pem");
    let daemon = |f: &str| read(&certs.join("daemon").join(f));
    fs::write(
        &combined,
        format!("{}{}{}", daemon("cert.pem"), daemon("key.pem"), daemon("ca.pem")),
    )
    .unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "combined.pem", "-o", "json", "--now", NOW])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows[0]["commonName"], "buildkitd");
    assert_eq!(rows[0]["keyMatches"], true);
    assert_eq!(rows[0]["chainOk"], true, "chained to the CA in the same file");
    assert_eq!(rows[1]["isCa"], true);

    // The client key with the daemon certificate: a mismatch, exit 1.
    let client_key = read(&certs.join("client/key.pem"));
    fs::write(&combined, format!("{}{}", daemon("cert.pem"), client_key)).unwrap();
    let out = kiln()
        .current_dir(tmp.path())
        .args(["certs", "inspect", "combined.pem", "--now", NOW])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the private key does not match the certificate"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("PRIVATE KEY"));
}

// ------------------------------------------------ RSA and ECDSA across stacks

/// `openssl <args>`: (success, stdout + stderr).
fn openssl_run(openssl: &Path, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(openssl).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

/// OpenSSL reads the key back, and the key and the certificate have `bits` (RSA) or are
/// on the named curve.
fn assert_openssl_reads(openssl: &Path, dir: &Path, algorithm: &str) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let (ok, text) = openssl_run(
        openssl,
        &[
            "pkey".as_ref(),
            "-in".as_ref(),
            key.as_os_str(),
            "-noout".as_ref(),
            "-text".as_ref(),
        ],
    );
    assert!(ok, "openssl pkey {algorithm}: {text}");
    let (ok, cert_text) = openssl_run(
        openssl,
        &[
            "x509".as_ref(),
            "-in".as_ref(),
            cert.as_os_str(),
            "-noout".as_ref(),
            "-text".as_ref(),
        ],
    );
    assert!(ok, "{cert_text}");
    match algorithm.strip_prefix("rsa-") {
        Some(bits) => {
            assert!(
                text.contains(&format!("Private-Key: ({bits} bit, 2 primes)")),
                "{text}"
            );
            assert!(
                cert_text.contains(&format!("Public-Key: ({bits} bit)")),
                "{cert_text}"
            );
            assert!(
                cert_text.contains("Signature Algorithm: sha256WithRSAEncryption"),
                "{cert_text}"
            );
        }
        None => {
            assert!(text.contains("Private-Key: (256 bit)"), "{text}");
            assert!(cert_text.contains("NIST CURVE: P-256"), "{cert_text}");
        }
    }
    // Unencrypted PKCS#8, the form every consumer reads.
    assert!(read(&key).starts_with("-----BEGIN PRIVATE KEY-----\n"));
}

/// A daemon and a client side from PEM texts, written as cert.pem/key.pem/ca.pem in `dir`
/// for openssl.
fn write_side(dir: &Path, side: &Side) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("cert.pem"), &side.cert).unwrap();
    fs::write(dir.join("key.pem"), &side.key).unwrap();
    fs::write(dir.join("ca.pem"), &side.trust).unwrap();
}

/// Mutual TLS both ways: rustls server and client, then openssl s_server and s_client.
async fn assert_mtls_everywhere(daemon: &Side, client: &Side, server_name: &str, context: &str) {
    rustls_handshake(daemon, client, server_name)
        .await
        .unwrap_or_else(|e| panic!("{context}: rustls: {e}"));
    let Some(openssl) = openssl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write_side(&tmp.path().join("daemon"), daemon);
    write_side(&tmp.path().join("client"), client);
    let shake = openssl_handshake(
        &openssl,
        &tmp.path().join("daemon"),
        &tmp.path().join("client"),
        server_name,
    );
    assert!(
        shake.accepted,
        "{context}: openssl: {}\n{}",
        shake.server_log, shake.client_log
    );
    assert!(
        shake.client_log.contains("Verify return code: 0 (ok)"),
        "{context}: {}",
        shake.client_log
    );
}

#[tokio::test]
async fn rsa_and_ecdsa_from_generate_complete_mtls_with_openssl_and_rustls() {
    for algorithm in ["ecdsa-p256", "rsa-2048", "rsa-3072"] {
        let (_tmp, certs) = generated(&["--namespace", "ci", "--algorithm", algorithm]);
        let daemon = Side::from_dir(&certs.join("daemon"));
        let client = Side::from_dir(&certs.join("client"));
        assert_mtls_everywhere(&daemon, &client, "buildkitd.ci.svc", algorithm).await;
        for dir in ["daemon", "client"] {
            let summary = &pki::parse_bundle(&read(&certs.join(dir).join("cert.pem"))).unwrap()[0];
            assert_eq!(summary.key_algorithm, algorithm);
            if let Some(openssl) = openssl() {
                assert_openssl_reads(&openssl, &certs.join(dir), algorithm);
            }
        }
        // The CA too.
        let ca = &pki::parse_bundle(&read(&certs.join("daemon/ca.pem"))).unwrap()[0];
        assert_eq!(ca.key_algorithm, algorithm);
    }
}

#[test]
fn ed25519_keys_are_standard_pkcs8_v1() {
    let Some(openssl) = openssl() else { return };
    let (_tmp, certs) = generated(&["--algorithm", "ed25519"]);
    for dir in ["daemon", "client"] {
        let key = certs.join(dir).join("key.pem");
        let (ok, text) = openssl_run(
            &openssl,
            &[
                "pkey".as_ref(),
                "-in".as_ref(),
                key.as_os_str(),
                "-noout".as_ref(),
                "-text".as_ref(),
            ],
        );
        assert!(ok, "{text}");
        assert!(text.contains("ED25519 Private-Key:"), "{text}");
        // RFC 8410 v1 (RFC 5208): SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING },
        // 48 bytes, with no [1] public key (the v2 form of RFC 5958 that OpenSSL 3.0 refuses).
        let (ok, asn1) = openssl_run(&openssl, &["asn1parse".as_ref(), "-in".as_ref(), key.as_os_str()]);
        assert!(ok, "{asn1}");
        let lines: Vec<&str> = asn1.lines().collect();
        assert!(
            lines[0].contains("d=0") && lines[0].contains("l=  46 cons: SEQUENCE"),
            "{asn1}"
        );
        assert!(
            lines[1].contains("d=1") && lines[1].ends_with("INTEGER           :00"),
            "{asn1}"
        );
        assert!(asn1.contains(":ED25519"), "{asn1}");
        assert!(!asn1.contains("cont [ 1 ]"), "{asn1}");
        assert_eq!(lines.len(), 5, "{asn1}");
    }
}

// ------------------------------------------------------ certificates from rotation

const ROTATE_NS: &str = "buildkit";
const SECRETS: [&str; 3] = ["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"];

/// An in-process API server holding the rendered Secret shells (empty) and the
/// buildkitd Deployment, and an overlays directory with `overlay` in it.
struct Cluster {
    server: support::apiserver::ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn new(overlay: &str) -> Self {
        let server = support::apiserver::ApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path(), ROTATE_NS);
        for name in SECRETS {
            server.insert(
                "secrets",
                ROTATE_NS,
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kiln"}},
                    "type": "Opaque",
                }),
            );
        }
        server.insert(
            "deployments",
            ROTATE_NS,
            serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "buildkitd"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "buildkitd"}},
                    "template": {
                        "metadata": {"labels": {"app": "buildkitd"}},
                        "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
                    },
                },
            }),
        );
        fs::create_dir(dir.path().join("overlays")).unwrap();
        fs::write(dir.path().join("overlays/test.yaml"), overlay).unwrap();
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    /// `kiln rotate` for the `test` overlay on the real clock, plus `extra`; must succeed.
    /// Its stdout and stderr.
    fn rotate(&self, extra: &[&str]) -> String {
        let overlays = self.dir.path().join("overlays");
        let out = kiln()
            .args(["rotate", "--namespace", ROTATE_NS, "--overlay", "test"])
            .arg("--overlays")
            .arg(&overlays)
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "kiln rotate failed: {all}");
        assert!(!all.contains("PRIVATE KEY"), "{all}");
        all
    }

    /// What a daemon or a client loads from its Secret (pem key names).
    fn side(&self, secret: &str) -> Side {
        let data = self.server.secret_data(ROTATE_NS, secret);
        Side {
            cert: data["cert.pem"].clone(),
            key: data["key.pem"].clone(),
            trust: data["ca.pem"].clone(),
        }
    }
}

#[tokio::test]
async fn rsa_certificates_from_rotation_complete_mtls_with_openssl_and_rustls() {
    for algorithm in ["rsa-2048", "rsa-3072"] {
        let cluster = Cluster::new(&format!(
            "namespace: {ROTATE_NS}\ncerts:\n  algorithm: {algorithm}\n"
        ));
        // Bootstrap: a CA and both leaves; then a renewal of the leaves by the same CA.
        cluster.rotate(&[]);
        let (daemon, client) = (cluster.side(SECRETS[1]), cluster.side(SECRETS[2]));
        for side in [&daemon, &client] {
            assert_eq!(pki::parse_bundle(&side.cert).unwrap()[0].key_algorithm, algorithm);
            assert_eq!(
                pki::parse_bundle(&side.trust).unwrap()[0].key_algorithm,
                algorithm
            );
        }
        let name = format!("buildkitd.{ROTATE_NS}.svc");
        assert_mtls_everywhere(&daemon, &client, &name, &format!("{algorithm} bootstrap")).await;
        if let Some(openssl) = openssl() {
            let tmp = tempfile::tempdir().unwrap();
            write_side(tmp.path(), &daemon);
            assert_openssl_reads(&openssl, tmp.path(), algorithm);
        }

        cluster.rotate(&["--force-renew", "leaf"]);
        let (renewed_daemon, renewed_client) = (cluster.side(SECRETS[1]), cluster.side(SECRETS[2]));
        assert_ne!(
            renewed_daemon.cert, daemon.cert,
            "the daemon certificate was renewed"
        );
        assert_ne!(
            renewed_client.cert, client.cert,
            "the client certificate was renewed"
        );
        assert_mtls_everywhere(
            &renewed_daemon,
            &renewed_client,
            &name,
            &format!("{algorithm} renewal"),
        )
        .await;
        // A client that loaded its certificate before the renewal still trusts, and is
        // trusted by, the renewed daemon.
        assert_mtls_everywhere(
            &renewed_daemon,
            &client,
            &name,
            &format!("{algorithm} old client"),
        )
        .await;
    }
}

#[test]
fn rotate_reissues_a_daemon_secret_that_holds_a_client_certificate() {
    let cluster = Cluster::new(&format!("namespace: {ROTATE_NS}\n"));
    let _ = cluster.rotate(&[]);
    // Someone copies the client Secret's data into the daemon Secret.
    let mut daemon = cluster.server.get("secrets", ROTATE_NS, SECRETS[1]).unwrap();
    let client = cluster.server.get("secrets", ROTATE_NS, SECRETS[2]).unwrap();
    daemon["data"] = client["data"].clone();
    cluster.server.insert("secrets", ROTATE_NS, daemon);
    let cert = cluster.side(SECRETS[1]).cert;
    assert_eq!(
        pki::parse_bundle(&cert).unwrap()[0].extended_key_usage,
        ["clientAuth"]
    );
    let bundle = cluster.side(SECRETS[1]).trust;
    let err = pki::verify_chain_for(&cert, &bundle, OffsetDateTime::now_utc(), LeafKind::Daemon).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot be used as a daemon (TLS server) certificate"),
        "{err}"
    );

    // The next run reads the daemon Secret as broken, says why, and reissues it.
    let log = cluster.rotate(&[]);
    assert!(
        log.contains("the daemon Secret is broken (key cert.pem: certificate \"O=kiln, CN=kiln-client:buildkit\" cannot be used as a daemon (TLS server) certificate: its extended key usage is clientAuth; it needs serverAuth); reissuing it"),
        "{log}"
    );
    let side = cluster.side(SECRETS[1]);
    assert_eq!(
        pki::parse_bundle(&side.cert).unwrap()[0].extended_key_usage,
        ["serverAuth"]
    );
    pki::verify_chain_for(
        &side.cert,
        &side.trust,
        OffsetDateTime::now_utc(),
        LeafKind::Daemon,
    )
    .unwrap();
}

// ---------------------------------------------------- verification cases (webpki)

/// `kiln certs inspect <path> -o json` and the plain table, as of `now`: (exit code,
/// JSON rows, table, stderr).
fn inspect_both(cwd: &Path, path: &str, now: &str) -> (Option<i32>, serde_json::Value, String, String) {
    let json = kiln()
        .current_dir(cwd)
        .args(["certs", "inspect", path, "-o", "json", "--now", now])
        .output()
        .unwrap();
    let table = kiln()
        .current_dir(cwd)
        .args(["certs", "inspect", path, "--now", now])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), table.status.code());
    (
        table.status.code(),
        serde_json::from_str(&stdout(&json)).unwrap(),
        stdout(&table),
        stderr(&table),
    )
}

/// `openssl verify -CAfile <dir>/ca.pem [-purpose p] <dir>/cert.pem`: (ok, output).
fn openssl_verify(openssl: &Path, dir: &Path, purpose: Option<&str>) -> (bool, String) {
    let mut command = Command::new(openssl);
    command.arg("verify").arg("-CAfile").arg(dir.join("ca.pem"));
    if let Some(purpose) = purpose {
        command.args(["-purpose", purpose]);
    }
    let out = command.arg(dir.join("cert.pem")).output().unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

#[test]
fn inspect_rejects_a_client_certificate_in_the_daemon_directory() {
    // On the real clock, which openssl verify uses too.
    let (tmp, certs) = generated(&[]);
    let now = rfc3339(OffsetDateTime::now_utc());
    // The client's certificate and key where the daemon's belong (the key matches it).
    for file in ["cert.pem", "key.pem"] {
        fs::copy(certs.join("client").join(file), certs.join("daemon").join(file)).unwrap();
    }
    let (code, rows, table, err) = inspect_both(tmp.path(), ".certs/daemon", &now);
    assert_eq!(code, Some(1), "{table}{err}");
    assert_eq!(rows[0]["status"], "chain-fail");
    assert_eq!(rows[0]["chainOk"], false);
    assert_eq!(rows[0]["keyMatches"], true);
    assert_eq!(
        err,
        "problem: .certs/daemon/cert.pem (O=kiln, CN=kiln-client:buildkit) does not chain: certificate \"O=kiln, CN=kiln-client:buildkit\" cannot be used as a daemon (TLS server) certificate: its extended key usage is clientAuth; it needs serverAuth\n\
         error: 1 problem(s) found in .certs/daemon\n"
    );
    assert!(table.lines().nth(1).unwrap().contains(" FAIL "), "{table}");
    // The same files in the client directory are fine.
    let (code, rows, _, err) = inspect_both(tmp.path(), ".certs/client", &now);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rows[0]["status"], "ok");
    // OpenSSL agrees: not a TLS server certificate, but a client one.
    if let Some(openssl) = openssl() {
        let (ok, text) = openssl_verify(&openssl, &certs.join("daemon"), Some("sslserver"));
        assert!(!ok, "{text}");
        assert!(text.contains("unsuitable certificate purpose"), "{text}");
        assert!(openssl_verify(&openssl, &certs.join("daemon"), Some("sslclient")).0);
    }
}

#[test]
fn inspect_rejects_a_ca_without_key_cert_sign() {
    // A CA whose key usage lacks keyCertSign, made by hand (kiln never makes one), and a
    // daemon certificate it signed. rustls-webpki alone accepts this chain; Go does not.
    let now = OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "signless CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(365);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["buildkitd.ci.svc".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "buildkitd");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(30);
    let leaf_pem = leaf.signed_by(&key, &issuer).unwrap().pem();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("daemon");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    fs::write(dir.join("cert.pem"), &leaf_pem).unwrap();
    fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let at = rfc3339(now);
    let (code, rows, _, err) = inspect_both(tmp.path(), "daemon", &at);
    assert_eq!(code, Some(1), "{err}");
    let why = "CA \"CN=signless CA\" may not sign certificates: its key usage lacks keyCertSign, so buildkitd and buildctl reject every certificate it signed; issue a new CA (kiln's CAs have keyCertSign)";
    assert_eq!(rows[0]["status"], "chain-fail");
    assert_eq!(rows[0]["chainError"], why);
    assert_eq!(rows[1]["status"], "chain-fail", "the CA row says so too");
    assert_eq!(
        err,
        format!(
            "problem: daemon/cert.pem (CN=buildkitd) does not chain: {why}\n\
             problem: daemon/ca.pem (CN=signless CA) does not chain: {why}\n\
             error: 2 problem(s) found in daemon\n"
        )
    );
    // OpenSSL refuses the chain for the same reason.
    if let Some(openssl) = openssl() {
        let (ok, text) = openssl_verify(&openssl, &dir, None);
        assert!(!ok, "{text}");
        assert!(
            text.contains("key usage does not include certificate signing"),
            "{text}"
        );
    }
}

#[test]
fn inspect_reports_an_expired_leaf_as_expired_not_as_a_chain_failure() {
    // Leaves issued in 2020 for 30 days under a 10-year CA.
    let (tmp, certs) = generated(&[
        "--now",
        "2020-01-01T00:00:00Z",
        "--ca-validity",
        "10y",
        "--validity",
        "30d",
    ]);
    let (code, rows, table, err) = inspect_both(tmp.path(), ".certs/daemon", NOW);
    assert_eq!(code, Some(1), "{err}");
    let leaf = &rows[0];
    assert_eq!(leaf["status"], "expired");
    assert_eq!(leaf["valid"], false);
    assert_eq!(leaf["chainOk"], true, "the chain itself is sound");
    assert!(leaf.get("chainError").is_none(), "{leaf}");
    assert_eq!(rows[1]["status"], "ok", "the CA is fine");
    assert_eq!(
        err,
        "problem: .certs/daemon/cert.pem (O=kiln, CN=buildkitd) expired at 2020-01-31T00:00:00Z\n\
         error: 1 problem(s) found in .certs/daemon\n"
    );
    let leaf_line = table.lines().nth(1).unwrap();
    assert!(leaf_line.contains(" expired "), "{table}");
    assert!(!table.contains("FAIL"), "{table}");
    // OpenSSL: the same verdict, for the same reason.
    if let Some(openssl) = openssl() {
        let (ok, text) = openssl_verify(&openssl, &certs.join("daemon"), None);
        assert!(!ok, "{text}");
        assert!(text.contains("certificate has expired"), "{text}");
    }
}

// ------------------------------------------------------------------ issue 15 and issue 10 point 6:
// keys out of git, the Secret type of --overlay, a table that fits

#[test]
fn generate_keeps_its_keys_out_of_git() {
    let tmp = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(tmp.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    git(&["init", "-q"]);
    fs::write(tmp.path().join("README.md"), "repo\n").unwrap();
    let out = run_generate(tmp.path(), &["--now", NOW]);
    assert!(out.status.success(), "{}", stderr(&out));
    let certs = tmp.path().join(".certs");
    assert_eq!(read(&certs.join(".gitignore")).lines().last(), Some("*"));
    assert_eq!(
        fs::metadata(certs.join(".gitignore"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    git(&["add", "-A"]);
    assert_eq!(git(&["diff", "--cached", "--name-only"]), "README.md\n");
    assert_eq!(git(&["status", "--porcelain", "--ignored=no"]), "A  README.md\n");
    // --force replaces a directory that holds the .gitignore too.
    let out = run_generate(tmp.path(), &["--force", "--now", NOW]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(certs.join(".gitignore").is_file());
}

#[test]
fn generate_overlay_type_is_the_shells() {
    let tmp = tempfile::tempdir().unwrap();
    let overlays = tmp.path().join("overlays");
    fs::create_dir(&overlays).unwrap();
    fs::write(
        overlays.join("prod.yaml"),
        "namespace: buildkit-prod\ncerts:\n  format: tls\n",
    )
    .unwrap();
    let out = run_generate(tmp.path(), &["--overlay", "prod", "--now", NOW]);
    assert!(out.status.success(), "{}", stderr(&out));
    let render = kiln()
        .current_dir(tmp.path())
        .args(["render", "--stdout", "--overlay", "prod"])
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", stderr(&render));
    let shells: Vec<serde_json::Value> = kiln::yaml::from_str_multi(&stdout(&render), "render").unwrap();
    for (file, name) in [
        ("buildkit-ca.yaml", "buildkit-ca"),
        ("buildkit-daemon-certs.yaml", "buildkit-daemon-certs"),
        ("buildkit-client-certs.yaml", "buildkit-client-certs"),
    ] {
        let shell = shells
            .iter()
            .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no rendered shell {name}"));
        let secret: Secret =
            kiln::yaml::from_str(&read(&tmp.path().join(".certs").join(file)), file).unwrap();
        assert_eq!(
            secret.type_.as_deref(),
            shell["type"].as_str(),
            "{file}: a Secret's type is immutable, so it must be the shell's"
        );
        assert!(
            secret.data.unwrap().contains_key("tls.crt"),
            "the key names still follow the format"
        );
    }
    // Without --overlay, --format tls keeps the seed flow's kubernetes.io/tls.
    let out = run_generate(tmp.path(), &["--format", "tls", "--out", "seed", "--now", NOW]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret: Secret = kiln::yaml::from_str(
        &read(&tmp.path().join("seed/buildkit-daemon-certs.yaml")),
        "daemon",
    )
    .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
}

#[test]
fn inspect_table_fits_the_terminal() {
    let (tmp, _) = generated(&["--san", "builder.example.com", "--now", NOW]);
    let inspect = |columns: Option<&str>, extra: &[&str]| {
        let mut cmd = kiln();
        cmd.current_dir(tmp.path())
            .args(["certs", "inspect", ".certs", "--now", NOW])
            .args(extra)
            .env_remove("COLUMNS");
        if let Some(columns) = columns {
            cmd.env("COLUMNS", columns);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let widest = |text: &str| text.lines().map(|l| l.chars().count()).max().unwrap();
    // Piped: 100 columns, as kubectl does.
    let piped = inspect(None, &[]);
    assert!(widest(&piped) <= 100, "{piped}");
    assert!(piped.starts_with("NAME "), "{piped}");
    for header in ["SUBJECT", "NOT AFTER", "DAYS LEFT", "CHAIN", "KEY"] {
        assert!(piped.lines().next().unwrap().contains(header), "{piped}");
    }
    assert_eq!(
        piped.lines().count(),
        6,
        "a header and five certificates: {piped}"
    );
    assert!(
        piped
            .lines()
            .any(|l| l.starts_with('…') && l.contains("-certs.yaml:cert.pem ")),
        "long names keep their end: {piped}"
    );
    let narrow = inspect(Some("80"), &[]);
    assert!(widest(&narrow) <= 80, "{narrow}");
    // -o wide: every column, nothing shortened.
    let wide = inspect(Some("80"), &["-o", "wide"]);
    assert!(widest(&wide) > 200, "{wide}");
    for needle in [
        "SANS",
        "USAGE",
        "ISSUER",
        "builder.example.com",
        ".certs/buildkit-client-certs.yaml:cert.pem",
    ] {
        assert!(wide.contains(needle), "{needle}: {wide}");
    }
    assert!(!wide.contains('…'));
}
