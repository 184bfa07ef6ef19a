//! The mTLS PKI for buildkitd: CA, daemon and client certificates.
//!
//! Pure: no file or cluster IO. The clock, validity and serials are passed in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

impl SecretFormat {
    /// The key names for (CA bundle, certificate, private key).
    pub fn key_names(self) -> (&'static str, &'static str, &'static str) {
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
