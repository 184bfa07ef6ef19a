//! The mTLS PKI for buildkitd: CA, daemon and client certificates.
//!
//! Pure apart from [`inspect::inspect`], which reads the files it is pointed at: no other
//! file or cluster IO. The clock, validity and serials are passed in, so every function
//! here gives the same answer for the same input (apart from freshly generated keys).
//!
//! - [`issue_ca`] makes a self-signed CA; [`issue_leaf`] signs a daemon
//!   (serverAuth) or client (clientAuth) certificate with it.
//! - [`daemon_sans`] lists the names the buildkitd Service answers to.
//! - [`parse_bundle`], [`key_matches`] and [`fingerprint`] read certificates back (for
//!   `kiln certs inspect`, rotation and preflight); PEM is read with x509-parser's reader,
//!   never split by hand.
//! - [`verify_chain`], [`verify_chain_for`], [`issuer_of`], [`check_ca`] and
//!   [`TrustBundle`] verify chains with rustls-webpki, plus the CA checks Go makes and
//!   webpki does not (`verify.rs`).
//! - [`generate`] lays a fresh CA and both leaves out as the files and Secret manifests
//!   of `kiln certs generate`; [`inspect`] finds and checks certificates for `kiln certs inspect`.

use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod generate;
pub mod inspect;
mod parse;
mod pem;
pub mod table;
mod verify;

pub use parse::{CertSummary, fingerprint, fingerprint_der, key_matches, parse_bundle};
pub use pem::{MAX_PEM_BYTES, pem_text};
pub use verify::{Purpose, TrustBundle, Verified, check_ca, issuer_of, verify_chain, verify_chain_for};

/// The key algorithm for the CA and leaf certificates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256 (the default; every TLS stack accepts it).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519 (Go's crypto/tls, and so buildkitd, accepts it).
    Ed25519,
    /// RSA with a 2048-bit modulus, signed with SHA-256 (what mkcert and the seed's flow make).
    #[serde(rename = "rsa-2048")]
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus, signed with SHA-256.
    #[serde(rename = "rsa-3072")]
    #[value(name = "rsa-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus, signed with SHA-256 (slow to generate: about a second).
    #[serde(rename = "rsa-4096")]
    #[value(name = "rsa-4096")]
    Rsa4096,
}

/// How certificates are laid out in the Secrets and on disk.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SecretFormat {
    /// `ca.pem`, `cert.pem`, `key.pem` in an Opaque Secret (the seed's names).
    #[default]
    Pem,
    /// `ca.crt`, `tls.crt`, `tls.key` in a `kubernetes.io/tls` Secret (cert-manager's names).
    Tls,
}

/// The (CA bundle, certificate, key) names of every [`SecretFormat`], in the order files
/// and Secret keys are looked for.
pub const NAME_SETS: [(&str, &str, &str); 2] = [SecretFormat::Pem.key_names(), SecretFormat::Tls.key_names()];

impl SecretFormat {
    /// The key names for (CA bundle, certificate, private key).
    ///
    /// The CA Secret uses the same three names for (trust bundle of every CA still
    /// trusted, current CA certificate, current CA key).
    pub const fn key_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            SecretFormat::Pem => ("ca.pem", "cert.pem", "key.pem"),
            SecretFormat::Tls => ("ca.crt", "tls.crt", "tls.key"),
        }
    }

    /// The Secret `type`.
    pub fn secret_type(self) -> &'static str {
        match self {
            SecretFormat::Pem => "Opaque",
            SecretFormat::Tls => "kubernetes.io/tls",
        }
    }
}

impl Algorithm {
    fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
            Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The name used in flags, overlays and `kiln certs inspect` (`ecdsa-p256`, …).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::EcdsaP384 => "ecdsa-p384",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa2048 => "rsa-2048",
            Algorithm::Rsa3072 => "rsa-3072",
            Algorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Every algorithm, in the order `--help` lists them.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
        Algorithm::Ed25519,
        Algorithm::Rsa2048,
        Algorithm::Rsa3072,
        Algorithm::Rsa4096,
    ];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a certificate could not be issued, read or verified.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A subject alternative name is neither a DNS name nor an IP address.
    #[error("invalid SAN {san:?}: {reason}")]
    InvalidSan { san: String, reason: &'static str },
    /// A Service name or namespace is not a DNS label.
    #[error("invalid {field} {value:?}: {}", crate::names::LABEL_RULE)]
    InvalidName { field: &'static str, value: String },
    /// not-after is not later than not-before.
    #[error("failed to issue {what}: validity is empty (not-after {} is not after not-before {}); use a positive validity such as 90d", rfc3339(*.not_after), rfc3339(*.not_before))]
    EmptyValidity {
        what: String,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// A validity window does not fit in a certificate.
    #[error("failed to compute the validity of {what}: {lifetime} from {} is out of range", rfc3339(*.start))]
    ValidityOverflow {
        what: String,
        start: OffsetDateTime,
        lifetime: crate::duration::Duration,
    },
    /// A leaf would still be valid after its CA expired.
    #[error("failed to issue {what}: it would expire at {}, after its CA ({}); shorten the leaf validity or renew the CA", rfc3339(*.leaf_not_after), rfc3339(*.ca_not_after))]
    OutlivesCa {
        what: String,
        leaf_not_after: OffsetDateTime,
        ca_not_after: OffsetDateTime,
    },
    /// A leaf would be valid before its CA.
    #[error("failed to issue {what}: it would start at {}, before its CA ({})", rfc3339(*.leaf_not_before), rfc3339(*.ca_not_before))]
    PrecedesCa {
        what: String,
        leaf_not_before: OffsetDateTime,
        ca_not_before: OffsetDateTime,
    },
    /// The CA handed to [`issue_leaf`] is not a CA certificate.
    #[error("failed to issue {what}: the signing certificate {subject:?} is not a CA")]
    NotACa { what: String, subject: String },
    /// The CA key does not belong to the CA certificate.
    #[error("failed to issue {what}: the CA key does not match the CA certificate")]
    CaKeyMismatch { what: String },
    /// The random number generator failed.
    #[error("failed to generate a random serial number")]
    Random,
    /// Key generation failed.
    #[error("failed to generate a {algorithm} key: {message}")]
    KeyGeneration { algorithm: Algorithm, message: String },
    /// Building or signing the certificate failed.
    #[error("failed to sign {what}: {message}")]
    Sign { what: String, message: String },
    /// A private key could not be read.
    #[error(
        "failed to read the private key: {message}; expected an unencrypted PKCS#8 PEM (\"BEGIN PRIVATE KEY\")"
    )]
    ParseKey { message: String },
    /// The text is not valid PEM.
    #[error("failed to read PEM block {index}: {message}")]
    ParsePem { index: usize, message: String },
    /// A PEM block labelled CERTIFICATE is not a valid X.509 certificate.
    #[error("failed to parse certificate {index}: {message}")]
    ParseCertificate { index: usize, message: String },
    /// The PEM text holds no certificate at all.
    #[error("failed to find a certificate: no \"BEGIN CERTIFICATE\" block")]
    NoCertificate,
    /// The bytes are DER, not PEM.
    #[error(
        "it is DER (binary), not PEM: kiln reads PEM; convert it with `openssl x509 -inform der -in {name} -out {out}` (a key: `openssl pkey -inform der -in {name} -out {out}`)"
    )]
    Der { name: String, out: String },
    /// The bytes are neither text nor DER.
    #[error("it is binary data, not PEM text")]
    Binary,
    /// The file is larger than kiln reads.
    #[error("it is {size} bytes; kiln reads PEM files of at most {limit} bytes (16 MiB)")]
    TooLarge { size: usize, limit: usize },
    /// The certificate expired.
    #[error("certificate {subject:?} expired at {} (checked at {})", rfc3339(*.not_after), rfc3339(*.at))]
    Expired {
        subject: String,
        at: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// The certificate is not valid yet.
    #[error("certificate {subject:?} is not valid until {} (checked at {}); check the clock", rfc3339(*.not_before), rfc3339(*.at))]
    NotYetValid {
        subject: String,
        at: OffsetDateTime,
        not_before: OffsetDateTime,
    },
    /// No CA in the bundle signed the certificate.
    #[error("certificate {subject:?} does not chain to the trust bundle (issuer {issuer:?})")]
    Untrusted { subject: String, issuer: String },
    /// The issuer named by the certificate is in the bundle, but its key did not sign it.
    #[error(
        "certificate {subject:?} names {issuer:?} as its issuer, but its signature does not verify with the key of the CA of that name in the bundle (a CA of another installation with the same name?)"
    )]
    BadSignature { subject: String, issuer: String },
    /// The certificate that signed it is not a CA.
    #[error(
        "certificate {subject:?} is signed by {issuer:?}, which is not a CA certificate (basicConstraints CA:true)"
    )]
    IssuerNotCa { subject: String, issuer: String },
    /// A CA certificate where a daemon or client certificate belongs.
    #[error(
        "certificate {subject:?} is a CA certificate (basicConstraints CA:true) and cannot be used as {what}"
    )]
    CaAsLeaf { subject: String, what: &'static str },
    /// The extended key usage does not allow the use.
    #[error("certificate {subject:?} cannot be used as {what}: {has}; it needs {needs}")]
    WrongUsage {
        subject: String,
        what: &'static str,
        needs: &'static str,
        has: String,
    },
    /// A CA whose key usage does not allow signing certificates.
    #[error(
        "CA {ca:?} may not sign certificates: its key usage lacks keyCertSign, so buildkitd and buildctl reject every certificate it signed; issue a new CA (kiln's CAs have keyCertSign)"
    )]
    CaCannotSign { ca: String },
    /// A certificate where a CA certificate belongs.
    #[error("certificate {subject:?} is not a CA certificate (basicConstraints CA:true)")]
    NotACaCert { subject: String },
    /// More intermediate CAs than the CA's pathLenConstraint allows.
    #[error(
        "certificate {subject:?} is {found} intermediate CA(s) below CA {ca:?}, which allows {limit} (pathLenConstraint)"
    )]
    PathTooLong {
        subject: String,
        ca: String,
        limit: u32,
        found: usize,
    },
    /// The chain fails for a reason that has no variant of its own.
    #[error("certificate {subject:?} does not verify: {reason}")]
    ChainInvalid { subject: String, reason: &'static str },
    /// The CA that signed the certificate is outside its validity window.
    #[error("CA {subject:?} that signed {leaf:?} is not valid at {}: valid from {} to {}", rfc3339(*.at), rfc3339(*.not_before), rfc3339(*.not_after))]
    CaNotValidAt {
        leaf: String,
        subject: String,
        at: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
}

/// A certificate serial number: 16 bytes, first bit clear so it is a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

impl Serial {
    /// A fresh serial from the system CSPRNG (aws-lc-rs).
    pub fn random() -> Result<Self, PkiError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// A serial from fixed bytes (tests); the top bit is cleared.
    pub fn from_bytes(mut bytes: [u8; 16]) -> Self {
        bytes[0] &= 0x7f;
        Self(bytes)
    }

    /// A serial from a number (tests); the top bit is cleared.
    pub fn from_u128(n: u128) -> Self {
        Self::from_bytes(n.to_be_bytes())
    }

    /// Lowercase hex without separators, as [`CertSummary::serial`] prints it
    /// (leading zero bytes dropped, like the DER integer).
    pub fn to_hex(self) -> String {
        let bytes = &self.0;
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
        hex(&bytes[first..])
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A subject alternative name: a DNS name (wildcards allowed in the first label) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum San {
    /// A DNS name such as `buildkitd.buildkit.svc` or `*.buildkitd.buildkit.svc`.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl San {
    /// Read one SAN: an IP address if it parses as one, else a DNS name.
    ///
    /// DNS names are lowercased. Labels are 1–63 letters, digits or `-`, not starting or
    /// ending with `-`; only the first label may be `*`; at most 253 characters.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let invalid = |reason| PkiError::InvalidSan {
            san: text.to_string(),
            reason,
        };
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        if text.is_empty() {
            return Err(invalid("a SAN must not be empty"));
        }
        if text.len() > 253 {
            return Err(invalid("a DNS name has at most 253 characters"));
        }
        let name = text.to_ascii_lowercase();
        let name_part = name.strip_suffix('.').unwrap_or(&name);
        for (i, label) in name_part.split('.').enumerate() {
            if label == "*" {
                if i == 0 && name_part.contains('.') {
                    continue;
                }
                return Err(invalid(
                    "a wildcard is only allowed as the whole first label, as in *.example.com",
                ));
            }
            if label.is_empty() {
                return Err(invalid("a DNS name must not have an empty label"));
            }
            if label.len() > 63 {
                return Err(invalid("a DNS label has at most 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a DNS label must not start or end with '-'"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(invalid("a DNS name may only hold letters, digits, '-' and '.'"));
            }
        }
        Ok(San::Dns(name_part.to_string()))
    }

    fn to_rcgen(&self) -> Result<rcgen::SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            San::Dns(name) => {
                rcgen::SanType::DnsName(name.clone().try_into().map_err(|_| PkiError::InvalidSan {
                    san: name.clone(),
                    reason: "not an IA5 string",
                })?)
            }
        })
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => f.write_str(name),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Check a Kubernetes DNS label (RFC 1123): a Service name or a namespace.
fn check_label(field: &'static str, value: &str) -> Result<(), PkiError> {
    if crate::names::is_dns1123_label(value) {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            field,
            value: value.to_string(),
        })
    }
}

/// The SANs of the daemon certificate: every name the Service answers to, the
/// StatefulSet replica wildcards, then `extra` (DNS names or IP addresses), without duplicates.
///
/// For `buildkitd` in `buildkit`: `buildkitd`, `buildkitd.buildkit`, `buildkitd.buildkit.svc`,
/// `buildkitd.buildkit.svc.cluster.local`, `*.buildkitd.buildkit.svc`,
/// `*.buildkitd.buildkit.svc.cluster.local`.
pub fn daemon_sans(service: &str, namespace: &str, extra: &[String]) -> Result<Vec<San>, PkiError> {
    check_label("service name", service)?;
    check_label("namespace", namespace)?;
    let mut sans = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("*.{service}.{namespace}.svc"),
        format!("*.{service}.{namespace}.svc.cluster.local"),
    ]
    .into_iter()
    .map(San::Dns)
    .collect::<Vec<_>>();
    for text in extra {
        let san = San::parse(text)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A certificate and its private key, both PEM. The key never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, one `BEGIN CERTIFICATE` block.
    pub cert_pem: String,
    /// The private key, unencrypted PKCS#8 (`BEGIN PRIVATE KEY`). Secret: never log it.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// The SHA-256 fingerprint (lowercase hex) of the certificate.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint(&self.cert_pem)
    }

    /// The parsed summary of the certificate.
    pub fn summary(&self) -> Result<CertSummary, PkiError> {
        parse_bundle(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or(PkiError::NoCertificate)
    }
}

/// The time window a certificate is valid in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// The last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// How far `not_before` is set back from `now`, so a node whose clock runs a little
    /// behind accepts a certificate issued this instant.
    pub const BACKDATE: time::Duration = time::Duration::minutes(5);

    /// `lifetime` starting at `now`, with `not_before` backdated by [`Self::BACKDATE`].
    /// A zero lifetime is an error naming `what`.
    pub fn starting_at(
        what: &str,
        now: OffsetDateTime,
        lifetime: crate::duration::Duration,
    ) -> Result<Self, PkiError> {
        let overflow = || PkiError::ValidityOverflow {
            what: what.to_string(),
            start: now,
            lifetime,
        };
        let not_after = now.checked_add(lifetime.as_time()).ok_or_else(overflow)?;
        let not_before = now.checked_sub(Self::BACKDATE).ok_or_else(overflow)?;
        // Certificates encode years 0..=9999 only.
        if not_after.year() > 9999 || not_before.year() < 1 {
            return Err(overflow());
        }
        if lifetime.is_zero() {
            return Err(PkiError::EmptyValidity {
                what: what.to_string(),
                not_before: now,
                not_after,
            });
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }
}

/// The common name kiln gives a CA: `kiln buildkit CA <namespace> <id>`, where the id is
/// the first 8 hex digits of the serial. Each CA gets its own subject, so a certificate
/// from another installation fails as an unknown issuer (not a bad signature), and the
/// old and new CA of a rollover can be told apart.
pub fn ca_common_name(namespace: &str, serial: Serial) -> String {
    let id: String = hex(&serial.0).chars().take(8).collect();
    format!("kiln buildkit CA {namespace} {id}")
}

/// The CN of a client certificate for tenant namespace `namespace` (the farm's own
/// included): `kiln-client:<namespace>`, so buildkitd's logs tell the teams apart.
pub fn client_common_name(namespace: &str) -> String {
    format!("kiln-client:{namespace}")
}

/// What to put in a new CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRequest {
    /// The subject common name, such as `kiln buildkit CA (buildkit)`.
    pub common_name: String,
    /// The CA key algorithm.
    pub algorithm: Algorithm,
    /// When the CA becomes valid.
    pub not_before: OffsetDateTime,
    /// When the CA expires.
    pub not_after: OffsetDateTime,
    /// The serial number (use [`Serial::random`] outside tests).
    pub serial: Serial,
}

/// Which side of the mTLS connection a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeafKind {
    /// buildkitd: extended key usage serverAuth.
    Daemon,
    /// buildctl / kiln build: extended key usage clientAuth.
    Client,
}

impl fmt::Display for LeafKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeafKind::Daemon => "daemon certificate",
            LeafKind::Client => "client certificate",
        })
    }
}

/// What to put in a new daemon or client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// Daemon (serverAuth) or client (clientAuth).
    pub kind: LeafKind,
    /// The subject common name, such as `buildkitd` or `buildkit-client`.
    pub common_name: String,
    /// The subject alternative names (see [`daemon_sans`]); may be empty for a client.
    pub sans: Vec<San>,
    /// The leaf key algorithm (the signature algorithm follows the CA key).
    pub algorithm: Algorithm,
    /// When the certificate becomes valid; not before the CA.
    pub not_before: OffsetDateTime,
    /// When the certificate expires; not after the CA.
    pub not_after: OffsetDateTime,
    /// The serial number (use [`Serial::random`] outside tests).
    pub serial: Serial,
}

fn generate_key(algorithm: Algorithm) -> Result<rcgen::KeyPair, PkiError> {
    let failed = |message: String| PkiError::KeyGeneration { algorithm, message };
    let rsa = |size| {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).map_err(|e| failed(e.to_string()))
    };
    match algorithm {
        Algorithm::EcdsaP256 | Algorithm::EcdsaP384 => {
            rcgen::KeyPair::generate_for(algorithm.signature_algorithm()).map_err(|e| failed(e.to_string()))
        }
        // rcgen keeps whatever PKCS#8 document the backend generated, and for Ed25519 that
        // is the v2 form (RFC 5958, public key appended), which OpenSSL 3.0 refuses. So the
        // key is generated here and serialized as the v1 form of RFC 8410 that OpenSSL,
        // Go's crypto/x509 (buildkitd, buildctl) and rustls all read.
        Algorithm::Ed25519 => {
            let key = aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(|e| failed(e.to_string()))?;
            let der = key.to_pkcs8v1().map_err(|e| failed(e.to_string()))?;
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec());
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
                .map_err(|e| failed(e.to_string()))
        }
        Algorithm::Rsa2048 => rsa(rcgen::RsaKeySize::_2048),
        Algorithm::Rsa3072 => rsa(rcgen::RsaKeySize::_3072),
        Algorithm::Rsa4096 => rsa(rcgen::RsaKeySize::_4096),
    }
}

/// The private key as unencrypted PKCS#8 PEM, the form every consumer reads.
fn private_key_pem(key: &rcgen::KeyPair) -> String {
    pem_encode("PRIVATE KEY", &key.serialize_der())
}

/// PEM with 64-character lines, as OpenSSL writes it.
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn check_window(what: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<(), PkiError> {
    if not_after <= not_before {
        return Err(PkiError::EmptyValidity {
            what: what.to_string(),
            not_before,
            not_after,
        });
    }
    Ok(())
}

fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "kiln");
    dn.push(rcgen::DnType::CommonName, common_name);
    dn
}

/// Issue a self-signed CA: basicConstraints CA:true with path length 0 (it signs leaves
/// only), key usage keyCertSign, cRLSign and digitalSignature, a subject key identifier.
pub fn issue_ca(request: &CaRequest) -> Result<Issued, PkiError> {
    let what = format!("CA {:?}", request.common_name);
    check_window(&what, request.not_before, request.not_after)?;
    let key = generate_key(request.algorithm)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = distinguished_name(&request.common_name);
    params.not_before = request.not_before;
    params.not_after = request.not_after;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&request.serial.0));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(|e| PkiError::Sign {
        what,
        message: e.to_string(),
    })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: private_key_pem(&key),
    })
}

/// Issue a daemon or client certificate signed by `ca` (a CA from [`issue_ca`] or one
/// read back from a Secret).
///
/// Errors when the leaf would be valid outside the CA's window, when `ca` is not a CA,
/// or when the CA key does not match the CA certificate.
pub fn issue_leaf(ca: &Issued, request: &LeafRequest) -> Result<Issued, PkiError> {
    let what = format!("{} {:?}", request.kind, request.common_name);
    check_window(&what, request.not_before, request.not_after)?;
    let ca_summary = ca.summary()?;
    if !ca_summary.is_ca {
        return Err(PkiError::NotACa {
            what,
            subject: ca_summary.subject,
        });
    }
    if request.not_after > ca_summary.not_after {
        return Err(PkiError::OutlivesCa {
            what,
            leaf_not_after: request.not_after,
            ca_not_after: ca_summary.not_after,
        });
    }
    if request.not_before < ca_summary.not_before {
        return Err(PkiError::PrecedesCa {
            what,
            leaf_not_before: request.not_before,
            ca_not_before: ca_summary.not_before,
        });
    }
    if !key_matches(&ca.cert_pem, &ca.key_pem)? {
        return Err(PkiError::CaKeyMismatch { what });
    }
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::ParseKey {
        message: pem::key_message(&e),
    })?;
    let sign_error = |e: rcgen::Error| PkiError::Sign {
        what: what.clone(),
        message: e.to_string(),
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(sign_error)?;

    let key = generate_key(request.algorithm)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = distinguished_name(&request.common_name);
    params.not_before = request.not_before;
    params.not_after = request.not_after;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&request.serial.0));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match request.kind {
        LeafKind::Daemon => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        LeafKind::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = request.sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    let cert = params.signed_by(&key, &issuer).map_err(sign_error)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: private_key_pem(&key),
    })
}

/// A trust bundle: the given PEM certificates concatenated, each ending in a newline,
/// duplicates (same text) dropped, order kept.
pub fn bundle<S: AsRef<str>>(pems: &[S]) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for pem in pems {
        let pem = pem.as_ref().trim();
        if pem.is_empty() || seen.contains(&pem) {
            continue;
        }
        seen.push(pem);
        out.push_str(pem);
        out.push('\n');
    }
    out
}

/// A time as RFC 3339 (`2026-01-31T12:00:00Z`), for messages and output.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Lowercase hex of `bytes`, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn ca(algorithm: Algorithm, days: i64, serial: u128) -> Issued {
        issue_ca(&CaRequest {
            common_name: format!("test CA {serial}"),
            algorithm,
            not_before: NOW,
            not_after: NOW + time::Duration::days(days),
            serial: Serial::from_u128(serial),
        })
        .unwrap()
    }

    fn leaf_request(kind: LeafKind, algorithm: Algorithm, days: i64) -> LeafRequest {
        LeafRequest {
            kind,
            common_name: "buildkitd".into(),
            sans: daemon_sans("buildkitd", "buildkit", &["10.0.0.1".into()]).unwrap(),
            algorithm,
            not_before: NOW,
            not_after: NOW + time::Duration::days(days),
            serial: Serial::from_u128(0x1234),
        }
    }

    #[test]
    fn daemon_sans_cover_every_service_form() {
        let sans = daemon_sans(
            "buildkitd",
            "ci",
            &["builder.example.com".into(), "10.1.2.3".into()],
        )
        .unwrap();
        let names: Vec<String> = sans.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "buildkitd",
                "buildkitd.ci",
                "buildkitd.ci.svc",
                "buildkitd.ci.svc.cluster.local",
                "*.buildkitd.ci.svc",
                "*.buildkitd.ci.svc.cluster.local",
                "builder.example.com",
                "10.1.2.3",
            ]
        );
        assert_eq!(sans[7], San::Ip("10.1.2.3".parse().unwrap()));
        // Duplicates of the built-in names are dropped.
        assert_eq!(
            daemon_sans("buildkitd", "ci", &["buildkitd.ci.svc".into()])
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn invalid_sans_and_names_are_rejected_by_name() {
        for bad in [
            "bad_name!",
            "-x",
            "",
            "a..b",
            "foo.*.com",
            "*",
            "x-.com",
            &"a".repeat(64),
        ] {
            let err = daemon_sans("buildkitd", "ci", &[bad.to_string()]).unwrap_err();
            assert!(matches!(err, PkiError::InvalidSan { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(San::parse("*.Example.COM").unwrap() == San::Dns("*.example.com".into()));
        assert!(San::parse("::1").unwrap() == San::Ip("::1".parse().unwrap()));
        let err = daemon_sans("Build_kitd", "ci", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid service name \"Build_kitd\": use lowercase letters, digits and '-', at most 63 characters"
        );
        assert!(matches!(
            daemon_sans("buildkitd", "-ns", &[]),
            Err(PkiError::InvalidName {
                field: "namespace",
                ..
            })
        ));
    }

    #[test]
    fn ca_is_a_constrained_ca_with_the_requested_fields() {
        for algorithm in Algorithm::ALL {
            let ca = ca(algorithm, 365, 0xabcdef);
            let summary = ca.summary().unwrap();
            assert!(summary.is_ca);
            assert_eq!(summary.serial, "abcdef");
            assert_eq!(summary.not_before, NOW);
            assert_eq!(summary.not_after, NOW + time::Duration::days(365));
            assert_eq!(summary.key_algorithm, algorithm.name());
            assert_eq!(summary.common_name.as_deref(), Some("test CA 11259375"));
            assert_eq!(
                summary.issuer_fingerprint.as_deref(),
                Some(summary.fingerprint.as_str())
            );
            assert!(key_matches(&ca.cert_pem, &ca.key_pem).unwrap());

            let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
            let cert = pem.parse_x509().unwrap();
            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca);
            assert_eq!(bc.path_len_constraint, Some(0));
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
        }
    }

    #[test]
    fn leaves_chain_to_their_ca_with_the_right_usage() {
        for algorithm in Algorithm::ALL {
            let ca = ca(algorithm, 365, 1);
            for (kind, eku) in [(LeafKind::Daemon, "serverAuth"), (LeafKind::Client, "clientAuth")] {
                let leaf = issue_leaf(&ca, &leaf_request(kind, algorithm, 90)).unwrap();
                let summary = leaf.summary().unwrap();
                assert!(!summary.is_ca);
                assert_eq!(summary.extended_key_usage, [eku]);
                assert_eq!(summary.serial, "1234");
                assert_eq!(summary.key_algorithm, algorithm.name());
                assert_eq!(summary.sans.len(), 7);
                assert!(summary.sans.contains(&"*.buildkitd.buildkit.svc".to_string()));
                assert!(summary.sans.contains(&"10.0.0.1".to_string()));
                assert!(summary.authority_key_id.is_some());
                assert!(key_matches(&leaf.cert_pem, &leaf.key_pem).unwrap());
                assert!(!key_matches(&leaf.cert_pem, &ca.key_pem).unwrap());
                let verified =
                    verify_chain(&leaf.cert_pem, &ca.cert_pem, NOW + time::Duration::days(1)).unwrap();
                assert_eq!(verified.ca_fingerprint, ca.fingerprint().unwrap());

                let bundle = format!("{}{}", leaf.cert_pem, ca.cert_pem);
                let parsed = parse_bundle(&bundle).unwrap();
                assert_eq!(parsed[0].issuer_fingerprint, Some(parsed[1].fingerprint.clone()));
            }
        }
    }

    #[test]
    fn a_bundle_of_two_cas_trusts_leaves_of_either() {
        let old = ca(Algorithm::EcdsaP256, 365, 1);
        let new = ca(Algorithm::Ed25519, 365, 2);
        let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
        let at = NOW + time::Duration::days(10);
        for ca in [&old, &new] {
            let leaf = issue_leaf(ca, &leaf_request(LeafKind::Client, Algorithm::EcdsaP256, 30)).unwrap();
            assert_eq!(
                verify_chain(&leaf.cert_pem, &bundle, at).unwrap().ca_fingerprint,
                ca.fingerprint().unwrap()
            );
        }
        let other = ca(Algorithm::EcdsaP256, 365, 3);
        let stranger = issue_leaf(&other, &leaf_request(LeafKind::Client, Algorithm::EcdsaP256, 30)).unwrap();
        assert!(matches!(
            verify_chain(&stranger.cert_pem, &bundle, at),
            Err(PkiError::Untrusted { .. })
        ));
    }

    #[test]
    fn expiry_is_checked_for_leaf_and_ca() {
        let ca = ca(Algorithm::EcdsaP256, 100, 1);
        let leaf = issue_leaf(&ca, &leaf_request(LeafKind::Daemon, Algorithm::EcdsaP256, 30)).unwrap();
        let late = NOW + time::Duration::days(31);
        let err = verify_chain(&leaf.cert_pem, &ca.cert_pem, late).unwrap_err();
        assert!(matches!(err, PkiError::Expired { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "certificate \"O=kiln, CN=buildkitd\" expired at 2026-01-31T00:00:00Z (checked at 2026-02-01T00:00:00Z)"
        );
        let early = NOW - time::Duration::days(1);
        let err = verify_chain(&leaf.cert_pem, &ca.cert_pem, early).unwrap_err();
        assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");
        // The CA itself, checked against itself after it expired.
        let after_ca = NOW + time::Duration::days(101);
        assert!(matches!(
            verify_chain(&ca.cert_pem, &ca.cert_pem, after_ca),
            Err(PkiError::Expired { .. })
        ));
    }

    #[test]
    fn leaf_may_not_outlive_or_precede_its_ca() {
        let ca = ca(Algorithm::EcdsaP256, 30, 1);
        let err = issue_leaf(&ca, &leaf_request(LeafKind::Daemon, Algorithm::EcdsaP256, 31)).unwrap_err();
        assert!(matches!(err, PkiError::OutlivesCa { .. }), "{err}");
        assert!(err.to_string().contains("after its CA"), "{err}");
        let mut early = leaf_request(LeafKind::Daemon, Algorithm::EcdsaP256, 10);
        early.not_before = NOW - time::Duration::days(1);
        assert!(matches!(
            issue_leaf(&ca, &early),
            Err(PkiError::PrecedesCa { .. })
        ));
    }

    #[test]
    fn empty_validity_is_an_error() {
        let err = issue_ca(&CaRequest {
            common_name: "x".into(),
            algorithm: Algorithm::EcdsaP256,
            not_before: NOW,
            not_after: NOW,
            serial: Serial::from_u128(1),
        })
        .unwrap_err();
        assert!(matches!(err, PkiError::EmptyValidity { .. }));
        let zero = Validity::starting_at("the CA", NOW, crate::duration::Duration::from_secs(0)).unwrap_err();
        assert!(
            zero.to_string()
                .starts_with("failed to issue the CA: validity is empty"),
            "{zero}"
        );
        let huge = Validity::starting_at("the CA", NOW, "9000y".parse().unwrap()).unwrap_err();
        assert!(matches!(huge, PkiError::ValidityOverflow { .. }));
        let ok = Validity::starting_at("the CA", NOW, crate::duration::Duration::from_days(1)).unwrap();
        assert_eq!(ok.not_before, NOW - Validity::BACKDATE);
        assert_eq!(ok.not_after, NOW + time::Duration::days(1));
    }

    #[test]
    fn leaf_needs_a_ca_with_its_own_key() {
        let ca1 = ca(Algorithm::EcdsaP256, 365, 1);
        let ca2 = ca(Algorithm::EcdsaP256, 365, 2);
        let leaf = issue_leaf(&ca1, &leaf_request(LeafKind::Client, Algorithm::EcdsaP256, 30)).unwrap();
        assert!(matches!(
            issue_leaf(&leaf, &leaf_request(LeafKind::Client, Algorithm::EcdsaP256, 30)),
            Err(PkiError::NotACa { .. })
        ));
        let mixed = Issued {
            cert_pem: ca1.cert_pem.clone(),
            key_pem: ca2.key_pem.clone(),
        };
        assert!(matches!(
            issue_leaf(&mixed, &leaf_request(LeafKind::Client, Algorithm::EcdsaP256, 30)),
            Err(PkiError::CaKeyMismatch { .. })
        ));
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(matches!(parse_bundle("hello"), Err(PkiError::NoCertificate)));
        assert!(matches!(parse_bundle(""), Err(PkiError::NoCertificate)));
        let corrupt = "-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_bundle(corrupt),
            Err(PkiError::ParsePem { index: 1, .. })
        ));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_bundle(not_der),
            Err(PkiError::ParseCertificate { index: 1, .. })
        ));
        let unterminated = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n";
        assert!(parse_bundle(unterminated).is_err());
        let ca = ca(Algorithm::EcdsaP256, 365, 1);
        assert!(matches!(
            key_matches(&ca.cert_pem, "garbage"),
            Err(PkiError::ParseKey { .. })
        ));
        // A key next to the certificate in one file is skipped.
        assert_eq!(
            parse_bundle(&format!("{}{}", ca.key_pem, ca.cert_pem))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let ca = ca(Algorithm::EcdsaP256, 365, 1);
        let debug = format!("{ca:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
        let body: String = ca.key_pem.lines().nth(1).unwrap().into();
        assert!(!debug.contains(&body));
    }

    #[test]
    fn bundles_concatenate_without_duplicates() {
        let (a, b) = (ca(Algorithm::EcdsaP256, 10, 1), ca(Algorithm::Ed25519, 10, 2));
        let joined = bundle(&[a.cert_pem.trim_end(), &b.cert_pem, &a.cert_pem]);
        let parsed = parse_bundle(&joined).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].fingerprint, a.fingerprint().unwrap());
        assert_eq!(parsed[1].fingerprint, b.fingerprint().unwrap());
        assert!(joined.ends_with("-----END CERTIFICATE-----\n"));
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1() {
        use base64::Engine;
        let ca = ca(Algorithm::Ed25519, 10, 1);
        let body: String = ca.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..5],
            &[0x30, 0x2e, 0x02, 0x01, 0x00],
            "version 0, no public key"
        );
        assert!(key_matches(&ca.cert_pem, &ca.key_pem).unwrap());
        // The CA still signs with the rewritten key.
        let leaf = issue_leaf(&ca, &leaf_request(LeafKind::Daemon, Algorithm::Ed25519, 5)).unwrap();
        assert!(verify_chain(&leaf.cert_pem, &ca.cert_pem, NOW).is_ok());
        let p256 = issue_ca(&CaRequest {
            common_name: "p".into(),
            algorithm: Algorithm::EcdsaP256,
            not_before: NOW,
            not_after: NOW + time::Duration::days(1),
            serial: Serial::from_u128(1),
        })
        .unwrap();
        assert!(p256.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }

    #[test]
    fn ca_names_carry_the_serial() {
        assert_eq!(
            ca_common_name("ci", Serial::from_u128(0x0123_4567_89ab_cdef << 64)),
            "kiln buildkit CA ci 01234567"
        );
    }

    #[test]
    fn random_serials_are_positive_and_distinct() {
        let a = Serial::random().unwrap();
        let b = Serial::random().unwrap();
        assert_ne!(a, b);
        assert!(a.0[0] < 0x80 && b.0[0] < 0x80);
        assert_eq!(
            Serial::from_bytes([0xff; 16]).to_hex(),
            format!("7f{}", "ff".repeat(15))
        );
        assert_eq!(Serial::from_u128(0).to_hex(), "00");
    }

    #[test]
    fn algorithm_names_match_serde() {
        for algorithm in Algorithm::ALL {
            assert_eq!(serde_json::to_value(algorithm).unwrap(), algorithm.name());
        }
    }
}
