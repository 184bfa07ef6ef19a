//! Reading certificates back: PEM blocks, summaries, fingerprints, chain and key checks.

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};

pub(super) use super::pem::certificate_ders;
use super::pem::{key_message, x509_message};
use super::verify::{IssuerIndex, signature_ok};
use super::{PkiError, hex, pem_encode};

/// What `kiln certs inspect` shows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    /// The subject distinguished name, such as `O=kiln, CN=buildkitd`.
    pub subject: String,
    /// The subject common name, if there is one.
    pub common_name: Option<String>,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub sans: Vec<String>,
    /// Extended key usages: `serverAuth`, `clientAuth`, … (other OIDs in dotted form).
    pub extended_key_usage: Vec<String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The first instant the certificate is valid.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// The last instant the certificate is valid.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// `ecdsa-p256`, `ecdsa-p384`, `ed25519`, `rsa-2048`, … or the key type OID.
    pub key_algorithm: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The fingerprint of the certificate in the same bundle whose key signed this one
    /// (itself for a self-signed CA); None when the issuer is not in the bundle.
    pub issuer_fingerprint: Option<String>,
    /// The authority key identifier, lowercase hex, when the extension is present.
    pub authority_key_id: Option<String>,
    /// True when basicConstraints says CA:true.
    pub is_ca: bool,
}

/// Every `CERTIFICATE` block of `pem`, each as a PEM of its own, in order: for the checks
/// that look at one certificate of a bundle at a time.
pub(super) fn certificate_pems(pem: &str) -> Result<Vec<String>, PkiError> {
    Ok(certificate_ders(pem)?
        .iter()
        .map(|der| pem_encode("CERTIFICATE", der))
        .collect())
}

/// The first private key block (`BEGIN … PRIVATE KEY`) of `pem`, as a PEM of its own;
/// None when there is none (or the PEM cannot be read up to it).
pub(super) fn private_key_block(pem: &str) -> Option<String> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.ok()?;
        if block.label.ends_with("PRIVATE KEY") {
            return Some(pem_encode(&block.label, &block.contents));
        }
    }
    None
}

pub(super) fn parse_ders(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, PkiError> {
    ders.iter()
        .enumerate()
        .map(|(index, der)| match x509_parser::parse_x509_certificate(der) {
            Ok((&[], cert)) => Ok(cert),
            Ok(_) => Err(PkiError::ParseCertificate {
                index: index + 1,
                message: "trailing bytes after the certificate".into(),
            }),
            Err(e) => Err(PkiError::ParseCertificate {
                index: index + 1,
                message: x509_message(&e),
            }),
        })
        .collect()
}

/// The first certificate of `ders` (DER and parsed), as the single-certificate checks use.
fn parse_first(ders: &[Vec<u8>]) -> Result<(&[u8], X509Certificate<'_>), PkiError> {
    let first = ders.first().ok_or(PkiError::NoCertificate)?;
    let cert = parse_ders(std::slice::from_ref(first))?
        .pop()
        .ok_or(PkiError::NoCertificate)?;
    Ok((first, cert))
}

/// SHA-256 of DER bytes, lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The SHA-256 fingerprint (lowercase hex of the DER) of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Result<String, PkiError> {
    let ders = certificate_ders(pem)?;
    let (der, _) = parse_first(&ders)?;
    Ok(fingerprint_der(der))
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => "ecdsa-p256".into(),
            Some(c) if c == OID_NIST_EC_P384 => "ecdsa-p384".into(),
            Some(c) => format!("ecdsa-{c}"),
            None => "ecdsa".into(),
        }
    } else if *oid == OID_SIG_ED25519 {
        "ed25519".into()
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(key) => format!("rsa-{}", key.key_size()),
            Err(_) => "rsa".into(),
        }
    } else {
        oid.to_id_string()
    }
}

/// The extended key usages of `cert`: `serverAuth`, `clientAuth`, … (`any` for
/// anyExtendedKeyUsage, other OIDs in dotted form); empty without the extension.
pub(super) fn extended_key_usages(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let eku = eku.value;
        for (set, name) in [
            (eku.any, "any"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if set {
                names.push(name.to_string());
            }
        }
        names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }
    names
}

fn summarize(cert: &X509Certificate<'_>, der: &[u8], issuer_fingerprint: Option<String>) -> CertSummary {
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push((*dns).to_string()),
                GeneralName::IPAddress(bytes) => sans.push(ip_string(bytes)),
                other => sans.push(other.to_string()),
            }
        }
    }
    let extended_key_usage = extended_key_usages(cert);
    let authority_key_id = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| hex(id.0))
            }
            _ => None,
        });
    CertSummary {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        sans,
        extended_key_usage,
        serial: hex(cert
            .raw_serial()
            .strip_prefix(&[0u8])
            .unwrap_or(cert.raw_serial())),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        key_algorithm: key_algorithm(cert),
        fingerprint: fingerprint_der(der),
        issuer: cert.issuer().to_string(),
        issuer_fingerprint,
        authority_key_id,
        is_ca: cert.is_ca(),
    }
}

fn ip_string(bytes: &[u8]) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        std::net::Ipv4Addr::from(v4).to_string()
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        std::net::Ipv6Addr::from(v6).to_string()
    } else {
        format!("IP:{}", hex(bytes))
    }
}

/// Parse every certificate in a PEM bundle into a [`CertSummary`], in order.
///
/// Blocks that are not certificates (a private key) are skipped; a PEM without any
/// certificate, a corrupt PEM block or an invalid certificate is an error.
pub fn parse_bundle(pem: &str) -> Result<Vec<CertSummary>, PkiError> {
    let ders = certificate_ders(pem)?;
    let certs = parse_ders(&ders)?;
    // Each certificate is checked only against those named as its issuer.
    let index = IssuerIndex::new(&certs);
    Ok(certs
        .iter()
        .zip(&ders)
        .enumerate()
        .map(|(own, (cert, der))| {
            let issuer_fingerprint = index
                .candidates(Some(own), cert)
                .into_iter()
                .find(|i| signature_ok(cert, &certs[*i]))
                .map(|i| fingerprint_der(&ders[i]));
            summarize(cert, der, issuer_fingerprint)
        })
        .collect())
}

/// True when the private key in `key_pem` (unencrypted PKCS#8) belongs to the first
/// certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> Result<bool, PkiError> {
    let ders = certificate_ders(cert_pem)?;
    let (_, cert) = parse_first(&ders)?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| PkiError::ParseKey {
        message: key_message(&e),
    })?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_read_one_by_one() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
        let certs = certificate_pems(text).unwrap();
        assert_eq!(
            certs,
            [
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n",
            ]
        );
        assert_eq!(
            private_key_block(text).as_deref(),
            Some("-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n")
        );
        assert_eq!(private_key_block("-----BEGIN CERTIFICATE-----\n"), None);
        let ec = "-----BEGIN EC PRIVATE KEY-----\nDDDD\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(private_key_block(ec).as_deref(), Some(ec));
    }
}
