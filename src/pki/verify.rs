//! Chain verification: rustls-webpki builds and checks the path (signatures, basic
//! constraints, extended key usage, validity of the leaf and of any intermediate), and kiln
//! adds what webpki leaves out but Go's crypto/x509 checks, so kiln judges a chain as
//! buildkitd and buildctl will:
//!
//! - the CA in the bundle must be valid at the time of the check (webpki never checks the
//!   dates of a trust anchor);
//! - a CA whose key usage extension lacks keyCertSign signs nothing (webpki ignores key usage);
//! - the CA's pathLenConstraint limits the intermediates below it (webpki keeps no
//!   constraints of a trust anchor).
//!
//! Leaf key usage is not checked: neither Go nor rustls checks it.
//!
//! A [`TrustBundle`] is parsed once and indexed by subject, so checking many certificates
//! against one bundle costs one pass over the bundle plus the signature checks of each
//! certificate's candidate issuers (`kiln certs inspect` of a 1,000-certificate file).

use std::cell::RefCell;
use std::collections::HashMap;

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use super::parse::{certificate_ders, extended_key_usages, fingerprint_der, parse_ders};
use super::{LeafKind, PkiError};

/// The outcome of a successful [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The SHA-256 fingerprint of the CA in the bundle that signed the leaf (for a CA
    /// certificate that is itself in the bundle: its own).
    pub ca_fingerprint: String,
    /// The subject of that CA.
    pub ca_subject: String,
}

/// What a certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A daemon certificate: extended key usage serverAuth, or no EKU extension (rustls,
    /// which `kiln build` uses, and Go both accept that).
    Daemon,
    /// A client certificate: clientAuth, anyExtendedKeyUsage (Go, and so buildkitd, accepts
    /// it) or no EKU extension.
    Client,
    /// Either side of a TLS connection: serverAuth, clientAuth, anyExtendedKeyUsage or no
    /// EKU extension; a CA certificate is checked as a CA.
    Tls,
}

impl From<LeafKind> for Purpose {
    fn from(kind: LeafKind) -> Self {
        match kind {
            LeafKind::Daemon => Purpose::Daemon,
            LeafKind::Client => Purpose::Client,
        }
    }
}

impl Purpose {
    /// How a message names the use.
    fn what(self) -> &'static str {
        match self {
            Purpose::Daemon => "a daemon (TLS server) certificate",
            Purpose::Client => "a client certificate",
            Purpose::Tls => "a TLS certificate",
        }
    }

    /// What the EKU extension must hold, for messages.
    fn needs(self) -> &'static str {
        match self {
            Purpose::Daemon => "serverAuth",
            Purpose::Client => "clientAuth",
            Purpose::Tls => "serverAuth or clientAuth",
        }
    }
}

// DER contents of the key purpose OIDs (RFC 5280 4.2.1.12).
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

impl ExtendedKeyUsageValidator for Purpose {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let accepted: &[&[u8]] = match self {
            Purpose::Daemon => &[SERVER_AUTH],
            Purpose::Client => &[CLIENT_AUTH, ANY_EKU],
            Purpose::Tls => &[SERVER_AUTH, CLIENT_AUTH, ANY_EKU],
        };
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if accepted.iter().any(|oid| KeyPurposeId::new(oid) == id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::required_if_present(accepted[0]),
                present,
            },
        ))
    }
}

/// What verification needs to know about one certificate, read once.
#[derive(Debug, Clone)]
struct CertFacts {
    subject: String,
    subject_raw: Vec<u8>,
    issuer: String,
    issuer_raw: Vec<u8>,
    fingerprint: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    is_ca: bool,
    /// True unless a key usage extension is present without keyCertSign.
    may_sign_certs: bool,
    path_len: Option<u32>,
    eku: Vec<String>,
}

impl CertFacts {
    fn read(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let bc = cert
            .basic_constraints()
            .ok()
            .flatten()
            .map(|ext| ext.value.clone());
        let may_sign_certs = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.key_cert_sign(),
            _ => true,
        };
        Self {
            subject: cert.subject().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().to_string(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            fingerprint: fingerprint_der(der),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: bc.as_ref().is_some_and(|bc| bc.ca),
            may_sign_certs,
            path_len: bc.and_then(|bc| bc.path_len_constraint),
            eku: extended_key_usages(cert),
        }
    }

    fn valid_at(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// `at` moved into the certificate's validity window: the time at which a chain check
    /// says everything about the chain and nothing about this certificate's own dates.
    fn clamp(&self, at: OffsetDateTime) -> OffsetDateTime {
        at.clamp(self.not_before, self.not_after.max(self.not_before))
    }
}

/// The subject key identifier and authority key identifier of `cert`, when present.
fn key_ids(cert: &X509Certificate<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (mut ski, mut aki) = (None, None);
    for ext in cert.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(id) => {
                aki = id.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            _ => {}
        }
    }
    (ski, aki)
}

/// Most candidate issuers tried for one certificate: webpki's own signature budget, so a
/// bundle of many certificates sharing one name cannot make the search quadratic.
const MAX_CANDIDATES: usize = 100;

/// Certificates indexed by subject name (and ordered by key identifier within a name): the
/// candidates for the issuer of a certificate are only those whose subject is its issuer.
pub(super) struct IssuerIndex {
    by_subject: HashMap<Vec<u8>, Vec<usize>>,
    skis: Vec<Option<Vec<u8>>>,
}

impl IssuerIndex {
    pub(super) fn new<'a>(certs: impl IntoIterator<Item = &'a X509Certificate<'a>>) -> Self {
        let mut index = Self {
            by_subject: HashMap::new(),
            skis: Vec::new(),
        };
        for cert in certs {
            index.push(cert);
        }
        index
    }

    fn push(&mut self, cert: &X509Certificate<'_>) {
        self.by_subject
            .entry(cert.subject().as_raw().to_vec())
            .or_default()
            .push(self.skis.len());
        self.skis.push(key_ids(cert).0);
    }

    /// The indexes of the certificates that may have signed `certs[own]`: those with its
    /// issuer as their subject, itself first when it is self-issued, then those whose
    /// subject key identifier matches its authority key identifier, then those without one.
    /// At most [`MAX_CANDIDATES`].
    pub(super) fn candidates(&self, own: Option<usize>, cert: &X509Certificate<'_>) -> Vec<usize> {
        let Some(named) = self.by_subject.get(cert.issuer().as_raw()) else {
            return Vec::new();
        };
        let (_, aki) = key_ids(cert);
        let rank = |i: &usize| {
            if Some(*i) == own {
                return 0;
            }
            match (&aki, self.skis[*i].as_ref()) {
                (Some(aki), Some(ski)) if aki == ski => 1,
                (Some(_), Some(_)) => 3,
                _ => 2,
            }
        };
        let mut out = named.clone();
        out.sort_by_key(rank);
        out.truncate(MAX_CANDIDATES);
        out
    }
}

/// True when `issuer`'s key made the signature on `cert` (names are not compared).
pub(super) fn signature_ok(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A trust bundle, parsed and indexed once: every CA certificate in it is a trust anchor,
/// as Go's `x509.CertPool` treats a `--tlscacert` file. Certificates that are not CAs are
/// not trusted (they cannot sign), but are remembered to explain a failure.
pub struct TrustBundle {
    anchors: Vec<TrustAnchor<'static>>,
    /// Facts and DER of each anchor, in the order of `anchors`.
    cas: Vec<(CertFacts, Vec<u8>)>,
    /// The anchors by subject and key identifier.
    index: IssuerIndex,
    /// Anchor indexes by SHA-256 fingerprint.
    by_fingerprint: HashMap<String, usize>,
    /// Subjects of the certificates in the bundle that are not CAs.
    not_cas: HashMap<Vec<u8>, String>,
    algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
}

impl TrustBundle {
    /// Read every certificate of a PEM bundle. A bundle without a CA is not an error
    /// ([`TrustBundle::has_ca`] says so); a corrupt one is.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let ders = certificate_ders(pem)?;
        let certs = parse_ders(&ders)?;
        let mut bundle = Self {
            anchors: Vec::new(),
            cas: Vec::new(),
            index: IssuerIndex::new([]),
            by_fingerprint: HashMap::new(),
            not_cas: HashMap::new(),
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .all,
        };
        for (index, (cert, der)) in certs.iter().zip(&ders).enumerate() {
            let facts = CertFacts::read(cert, der);
            if !facts.is_ca {
                bundle
                    .not_cas
                    .insert(facts.subject_raw.clone(), facts.subject.clone());
                continue;
            }
            let cert_der = CertificateDer::from(der.as_slice());
            let anchor = webpki::anchor_from_trusted_cert(&cert_der)
                .map_err(|e| PkiError::ParseCertificate {
                    index: index + 1,
                    message: format!("not usable as a trusted CA: {}", invalid_reason(&e)),
                })?
                .to_owned();
            bundle.index.push(cert);
            bundle
                .by_fingerprint
                .insert(facts.fingerprint.clone(), bundle.anchors.len());
            bundle.anchors.push(anchor);
            bundle.cas.push((facts, der.clone()));
        }
        Ok(bundle)
    }

    /// True when the bundle holds at least one CA certificate.
    pub fn has_ca(&self) -> bool {
        !self.cas.is_empty()
    }

    /// The fingerprint of the CA in the bundle whose key signed the first certificate of
    /// `der`, whatever the dates say; None when no CA of the bundle did.
    pub fn signer_of(&self, der: &[u8]) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        self.index.candidates(None, &cert).into_iter().find_map(|i| {
            let (facts, ca_der) = &self.cas[i];
            let (_, ca) = x509_parser::parse_x509_certificate(ca_der).ok()?;
            signature_ok(&cert, &ca).then(|| facts.fingerprint.clone())
        })
    }

    /// Verify `leaf_der` for `purpose` at `at`; `chain` holds intermediate CA certificates
    /// sent with it (the rest of a cert.pem). With `ca_dates`, the CA must be valid at `at`
    /// too; without, only the leaf's and the intermediates' dates are checked.
    pub fn verify(
        &self,
        leaf_der: &[u8],
        chain: &[Vec<u8>],
        at: OffsetDateTime,
        purpose: Purpose,
        ca_dates: bool,
    ) -> Result<Verified, PkiError> {
        let leaf = parse_one(leaf_der)?;
        if leaf.is_ca && purpose == Purpose::Tls {
            return self.verify_ca(&leaf, at);
        }
        let cert_der = CertificateDer::from(leaf_der);
        let end_entity = EndEntityCert::try_from(&cert_der).map_err(|e| PkiError::ChainInvalid {
            subject: leaf.subject.clone(),
            reason: invalid_reason(&e),
        })?;
        let intermediates: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        // Why a path that webpki accepted was refused here; the first one is reported when no
        // other path works.
        let refused: RefCell<Option<PkiError>> = RefCell::new(None);
        let check_path = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let problem = self.anchor_problem(&leaf, path, at, ca_dates);
            match problem {
                None => Ok(()),
                Some(problem) => {
                    refused.borrow_mut().get_or_insert(problem);
                    // Any error: it only tells webpki to try another path.
                    Err(webpki::Error::UnknownIssuer)
                }
            }
        };
        let result = end_entity.verify_for_usage(
            self.algorithms,
            &self.anchors,
            &intermediates,
            unix_time(at),
            purpose,
            None,
            Some(&check_path),
        );
        match result {
            Ok(path) => {
                let (facts, _) = &self.cas[self.anchor_index(path.anchor())];
                Ok(Verified {
                    ca_fingerprint: facts.fingerprint.clone(),
                    ca_subject: facts.subject.clone(),
                })
            }
            Err(error) => Err(match refused.into_inner() {
                Some(problem) => problem,
                None => self.explain(&leaf, &error, at, purpose),
            }),
        }
    }

    /// A CA certificate checked on its own: valid at `at`, allowed to sign certificates,
    /// and either in the bundle itself or signed by a CA that is.
    fn verify_ca(&self, ca: &CertFacts, at: OffsetDateTime) -> Result<Verified, PkiError> {
        check_dates(ca, at)?;
        if !ca.may_sign_certs {
            return Err(PkiError::CaCannotSign {
                ca: ca.subject.clone(),
            });
        }
        if self.by_fingerprint.contains_key(&ca.fingerprint) {
            return Ok(Verified {
                ca_fingerprint: ca.fingerprint.clone(),
                ca_subject: ca.subject.clone(),
            });
        }
        Err(PkiError::Untrusted {
            subject: ca.subject.clone(),
            issuer: ca.issuer.clone(),
        })
    }

    fn anchor_index(&self, anchor: &TrustAnchor<'_>) -> usize {
        self.anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor))
            .unwrap_or_default()
    }

    /// What kiln refuses in a path webpki accepted (see the module documentation).
    fn anchor_problem(
        &self,
        leaf: &CertFacts,
        path: &webpki::VerifiedPath<'_>,
        at: OffsetDateTime,
        ca_dates: bool,
    ) -> Option<PkiError> {
        let (ca, _) = &self.cas[self.anchor_index(path.anchor())];
        if ca_dates && !ca.valid_at(at) {
            return Some(PkiError::CaNotValidAt {
                leaf: leaf.subject.clone(),
                subject: ca.subject.clone(),
                at,
                not_before: ca.not_before,
                not_after: ca.not_after,
            });
        }
        if !ca.may_sign_certs {
            return Some(PkiError::CaCannotSign {
                ca: ca.subject.clone(),
            });
        }
        let intermediates: Vec<CertFacts> = path
            .intermediate_certificates()
            .filter_map(|cert| parse_one(cert.der().as_ref()).ok())
            .collect();
        if let Some(limit) = ca.path_len
            && intermediates.len() > limit as usize
        {
            return Some(PkiError::PathTooLong {
                subject: leaf.subject.clone(),
                ca: ca.subject.clone(),
                limit,
                found: intermediates.len(),
            });
        }
        intermediates
            .iter()
            .find(|cert| !cert.may_sign_certs)
            .map(|cert| PkiError::CaCannotSign {
                ca: cert.subject.clone(),
            })
    }

    /// webpki's verdict in the user's terms.
    fn explain(
        &self,
        leaf: &CertFacts,
        error: &webpki::Error,
        at: OffsetDateTime,
        purpose: Purpose,
    ) -> PkiError {
        use webpki::Error as E;
        let subject = leaf.subject.clone();
        match error {
            E::CertExpired { .. } | E::CertNotValidYet { .. } if !leaf.valid_at(at) => {
                check_dates(leaf, at).err().unwrap_or(PkiError::ChainInvalid {
                    subject,
                    reason: "its validity period is invalid",
                })
            }
            E::CertExpired { .. } | E::CertNotValidYet { .. } => PkiError::ChainInvalid {
                subject,
                reason: "an intermediate CA certificate sent with it is outside its validity period",
            },
            E::UnknownIssuer => match self.not_cas.get(&leaf.issuer_raw) {
                Some(issuer) => PkiError::IssuerNotCa {
                    subject,
                    issuer: issuer.clone(),
                },
                None => PkiError::Untrusted {
                    subject,
                    issuer: leaf.issuer.clone(),
                },
            },
            E::InvalidSignatureForPublicKey => PkiError::BadSignature {
                subject,
                issuer: leaf.issuer.clone(),
            },
            E::CaUsedAsEndEntity => PkiError::CaAsLeaf {
                subject,
                what: purpose.what(),
            },
            E::EndEntityUsedAsCa => PkiError::IssuerNotCa {
                subject,
                issuer: leaf.issuer.clone(),
            },
            E::EmptyEkuExtension | E::RequiredEkuNotFoundContext(_) => PkiError::WrongUsage {
                subject,
                what: purpose.what(),
                needs: purpose.needs(),
                has: if leaf.eku.is_empty() {
                    "an intermediate CA restricts it to other uses".into()
                } else {
                    format!("its extended key usage is {}", leaf.eku.join(", "))
                },
            },
            other => PkiError::ChainInvalid {
                subject,
                reason: invalid_reason(other),
            },
        }
    }
}

/// Expired and not-yet-valid as errors of their own.
fn check_dates(cert: &CertFacts, at: OffsetDateTime) -> Result<(), PkiError> {
    if at > cert.not_after {
        Err(PkiError::Expired {
            subject: cert.subject.clone(),
            at,
            not_after: cert.not_after,
        })
    } else if at < cert.not_before {
        Err(PkiError::NotYetValid {
            subject: cert.subject.clone(),
            at,
            not_before: cert.not_before,
        })
    } else {
        Ok(())
    }
}

/// The reason for the webpki errors that have no variant of their own.
fn invalid_reason(error: &webpki::Error) -> &'static str {
    use webpki::Error as E;
    match error {
        E::PathLenConstraintViolated => "the chain has more intermediate CAs than a CA's path length allows",
        E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumNameConstraintComparisonsExceeded => {
            "the chain is too long, or the bundle holds too many candidate CAs, to verify"
        }
        E::UnsupportedCriticalExtension => "it carries a critical extension kiln does not understand",
        E::NameConstraintViolation | E::MalformedNameConstraint | E::InvalidNetworkMaskConstraint => {
            "a CA's name constraints do not allow its names"
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch => {
            "it is signed with an algorithm kiln does not accept (ECDSA P-256/P-384/P-521, Ed25519, RSA 2048-8192 bits)"
        }
        E::CertDistrusted => "its CA is on the list of distrusted CAs",
        E::InvalidCertValidity => "its validity period ends before it starts",
        _ => "it is not a well-formed X.509 v3 certificate",
    }
}

fn parse_one(der: &[u8]) -> Result<CertFacts, PkiError> {
    let owned = [der.to_vec()];
    let certs = parse_ders(&owned)?;
    let cert = certs.first().ok_or(PkiError::NoCertificate)?;
    Ok(CertFacts::read(cert, der))
}

fn unix_time(at: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

/// Check that the first certificate in `leaf_pem` chains to a CA in `bundle_pem` at `at`,
/// for either side of a TLS connection (see [`verify_chain_for`] to name the side).
///
/// The certificates after the first in `leaf_pem` are intermediates sent with it. With
/// several CAs in the bundle (a CA rollover), any one of them may have signed it. A CA
/// certificate is checked as a CA: valid, allowed to sign, and in the bundle.
pub fn verify_chain(leaf_pem: &str, bundle_pem: &str, at: OffsetDateTime) -> Result<Verified, PkiError> {
    verify_pem(leaf_pem, bundle_pem, at, Purpose::Tls)
}

/// [`verify_chain`] for one side: a daemon certificate must allow serverAuth, a client
/// certificate clientAuth.
pub fn verify_chain_for(
    leaf_pem: &str,
    bundle_pem: &str,
    at: OffsetDateTime,
    kind: LeafKind,
) -> Result<Verified, PkiError> {
    verify_pem(leaf_pem, bundle_pem, at, kind.into())
}

fn verify_pem(
    leaf_pem: &str,
    bundle_pem: &str,
    at: OffsetDateTime,
    purpose: Purpose,
) -> Result<Verified, PkiError> {
    let ders = certificate_ders(leaf_pem)?;
    let (leaf, chain) = ders.split_first().ok_or(PkiError::NoCertificate)?;
    TrustBundle::from_pem(bundle_pem)?.verify(leaf, chain, at, purpose, true)
}

/// Which CA in `bundle_pem` signed the leaf in `leaf_pem`, with everything but the dates
/// checked for `kind` (rotation renews by date on its own): Ok(None) when no CA of the
/// bundle signed it; an error when the certificate cannot serve as `kind` at all (wrong
/// extended key usage, a CA certificate) or its CA may not sign certificates.
pub fn issuer_of(leaf_pem: &str, bundle_pem: &str, kind: LeafKind) -> Result<Option<Verified>, PkiError> {
    let ders = certificate_ders(leaf_pem)?;
    let (leaf, chain) = ders.split_first().ok_or(PkiError::NoCertificate)?;
    let facts = parse_one(leaf)?;
    let bundle = TrustBundle::from_pem(bundle_pem)?;
    match bundle.verify(leaf, chain, facts.not_before, kind.into(), false) {
        Ok(verified) => Ok(Some(verified)),
        Err(PkiError::Untrusted { .. } | PkiError::BadSignature { .. } | PkiError::IssuerNotCa { .. }) => {
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// Check a CA certificate on its own, whatever the dates: a CA (basicConstraints CA:true)
/// that may sign certificates (keyCertSign, when a key usage extension is present).
pub fn check_ca(ca_pem: &str) -> Result<(), PkiError> {
    let ders = certificate_ders(ca_pem)?;
    let facts = parse_one(ders.first().ok_or(PkiError::NoCertificate)?)?;
    if !facts.is_ca {
        return Err(PkiError::NotACaCert {
            subject: facts.subject,
        });
    }
    if !facts.may_sign_certs {
        return Err(PkiError::CaCannotSign { ca: facts.subject });
    }
    Ok(())
}

impl TrustBundle {
    /// The chain of `der` (with intermediates `chain`) for `purpose`, checked at `at` moved
    /// into the certificate's own validity window, as `kiln certs inspect` shows it apart
    /// from the certificate's own dates: at `at` itself when the certificate is valid (so an
    /// expired CA fails a valid leaf), and an expired certificate whose chain was sound
    /// while it was valid passes.
    pub fn assess(
        &self,
        der: &[u8],
        chain: &[Vec<u8>],
        at: OffsetDateTime,
        purpose: Purpose,
    ) -> Result<Verified, PkiError> {
        let facts = parse_one(der)?;
        let within = facts.clamp(at);
        if facts.is_ca && purpose == Purpose::Tls {
            self.verify_ca(&facts, within)
        } else {
            self.verify(der, chain, within, purpose, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

    /// A certificate made by hand, and an issuer to sign others with it.
    struct Made {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    struct Spec<'a> {
        cn: &'a str,
        /// (keyCertSign in the key usage, pathLenConstraint) for a CA.
        ca: Option<(bool, Option<u8>)>,
        eku: Vec<Eku>,
        days: (i64, i64),
    }

    fn leaf<'a>(cn: &'a str, eku: Vec<Eku>) -> Spec<'a> {
        Spec {
            cn,
            ca: None,
            eku,
            days: (-10, 30),
        }
    }

    fn ca_spec(cn: &str, key_cert_sign: bool, path_len: Option<u8>) -> Spec<'_> {
        Spec {
            cn,
            ca: Some((key_cert_sign, path_len)),
            eku: Vec::new(),
            days: (-100, 365),
        }
    }

    fn make(spec: Spec<'_>, signer: Option<&Made>) -> Made {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, spec.cn);
        params.not_before = NOW + time::Duration::days(spec.days.0);
        params.not_after = NOW + time::Duration::days(spec.days.1);
        params.extended_key_usages = spec.eku;
        params.use_authority_key_identifier_extension = signer.is_some();
        match spec.ca {
            Some((key_cert_sign, path_len)) => {
                params.is_ca = IsCa::Ca(match path_len {
                    Some(n) => BasicConstraints::Constrained(n),
                    None => BasicConstraints::Unconstrained,
                });
                params.key_usages = if key_cert_sign {
                    vec![
                        rcgen::KeyUsagePurpose::KeyCertSign,
                        rcgen::KeyUsagePurpose::DigitalSignature,
                    ]
                } else {
                    vec![rcgen::KeyUsagePurpose::DigitalSignature]
                };
            }
            None => params.is_ca = IsCa::ExplicitNoCa,
        }
        let cert = match signer {
            Some(signer) => params.signed_by(&key, &signer.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        Made {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    #[test]
    fn a_leaf_verifies_for_its_own_side_only() {
        let ca = make(ca_spec("CA", true, Some(0)), None);
        let daemon = make(leaf("daemon", vec![Eku::ServerAuth]), Some(&ca));
        let client = make(leaf("client", vec![Eku::ClientAuth]), Some(&ca));
        let verified = verify_chain_for(&daemon.pem, &ca.pem, NOW, LeafKind::Daemon).unwrap();
        assert_eq!(verified.ca_subject, "CN=CA");
        verify_chain_for(&client.pem, &ca.pem, NOW, LeafKind::Client).unwrap();
        // Either side when the side is not named.
        verify_chain(&daemon.pem, &ca.pem, NOW).unwrap();
        verify_chain(&client.pem, &ca.pem, NOW).unwrap();

        let err = verify_chain_for(&client.pem, &ca.pem, NOW, LeafKind::Daemon).unwrap_err();
        assert!(matches!(err, PkiError::WrongUsage { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "certificate \"CN=client\" cannot be used as a daemon (TLS server) certificate: its extended key usage is clientAuth; it needs serverAuth"
        );
        let err = verify_chain_for(&daemon.pem, &ca.pem, NOW, LeafKind::Client).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate \"CN=daemon\" cannot be used as a client certificate: its extended key usage is serverAuth; it needs clientAuth"
        );
        // Code signing is neither side.
        let signer = make(leaf("signer", vec![Eku::CodeSigning]), Some(&ca));
        let err = verify_chain(&signer.pem, &ca.pem, NOW).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "cannot be used as a TLS certificate: its extended key usage is codeSigning; it needs serverAuth or clientAuth"
            ),
            "{err}"
        );
        // No EKU at all: any use (RFC 5280, Go and rustls agree). anyExtendedKeyUsage: a
        // client (Go verifies clients), not a daemon (rustls verifies daemons for kiln build).
        let bare = make(leaf("bare", Vec::new()), Some(&ca));
        verify_chain_for(&bare.pem, &ca.pem, NOW, LeafKind::Daemon).unwrap();
        verify_chain_for(&bare.pem, &ca.pem, NOW, LeafKind::Client).unwrap();
        let any = make(leaf("any", vec![Eku::Any]), Some(&ca));
        verify_chain_for(&any.pem, &ca.pem, NOW, LeafKind::Client).unwrap();
        assert!(verify_chain_for(&any.pem, &ca.pem, NOW, LeafKind::Daemon).is_err());
        // A CA certificate is no leaf.
        let err = verify_chain_for(&ca.pem, &ca.pem, NOW, LeafKind::Daemon).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate \"CN=CA\" is a CA certificate (basicConstraints CA:true) and cannot be used as a daemon (TLS server) certificate"
        );
    }

    #[test]
    fn a_ca_without_key_cert_sign_signs_nothing() {
        // webpki accepts this chain; Go's crypto/x509 (buildkitd, buildctl) does not.
        let ca = make(ca_spec("no certsign", false, Some(0)), None);
        let daemon = make(leaf("daemon", vec![Eku::ServerAuth]), Some(&ca));
        let err = verify_chain(&daemon.pem, &ca.pem, NOW).unwrap_err();
        assert!(matches!(err, PkiError::CaCannotSign { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "CA \"CN=no certsign\" may not sign certificates: its key usage lacks keyCertSign, so buildkitd and buildctl reject every certificate it signed; issue a new CA (kiln's CAs have keyCertSign)"
        );
        assert!(matches!(check_ca(&ca.pem), Err(PkiError::CaCannotSign { .. })));
        assert!(matches!(check_ca(&daemon.pem), Err(PkiError::NotACaCert { .. })));
        assert!(matches!(
            issuer_of(&daemon.pem, &ca.pem, LeafKind::Daemon),
            Err(PkiError::CaCannotSign { .. })
        ));
        // The same CA inspected on its own.
        let bundle = TrustBundle::from_pem(&ca.pem).unwrap();
        let der = certificate_ders(&ca.pem).unwrap().remove(0);
        assert!(matches!(
            bundle.assess(&der, &[], NOW, Purpose::Tls),
            Err(PkiError::CaCannotSign { .. })
        ));
        // A CA with keyCertSign (and one with no key usage extension at all) signs.
        let good = make(ca_spec("good", true, Some(0)), None);
        let signed = make(leaf("daemon", vec![Eku::ServerAuth]), Some(&good));
        verify_chain(&signed.pem, &good.pem, NOW).unwrap();
        check_ca(&good.pem).unwrap();
    }

    #[test]
    fn expired_leaves_and_cas_are_reported_as_such() {
        let ca = make(ca_spec("CA", true, Some(0)), None);
        let old = make(
            Spec {
                days: (-60, -30),
                ..leaf("old", vec![Eku::ServerAuth])
            },
            Some(&ca),
        );
        let err = verify_chain(&old.pem, &ca.pem, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate \"CN=old\" expired at 2026-05-02T00:00:00Z (checked at 2026-06-01T00:00:00Z)"
        );
        let late = make(
            Spec {
                days: (5, 30),
                ..leaf("late", vec![Eku::ServerAuth])
            },
            Some(&ca),
        );
        assert!(matches!(
            verify_chain(&late.pem, &ca.pem, NOW),
            Err(PkiError::NotYetValid { .. })
        ));
        // The dates apart, both chains are sound: inspect shows them as expired, not failed.
        let bundle = TrustBundle::from_pem(&ca.pem).unwrap();
        for pem in [&old.pem, &late.pem] {
            let der = certificate_ders(pem).unwrap().remove(0);
            bundle.assess(&der, &[], NOW, Purpose::Daemon).unwrap();
        }
        // Rotation reads the issuer of an expired leaf (to renew it).
        let found = issuer_of(&old.pem, &ca.pem, LeafKind::Daemon).unwrap().unwrap();
        assert_eq!(found.ca_subject, "CN=CA");

        // A valid leaf under an expired CA: the chain fails now.
        let dead = make(
            Spec {
                days: (-400, -3),
                ..ca_spec("dead CA", true, Some(0))
            },
            None,
        );
        let orphan = make(
            Spec {
                days: (-10, -1),
                ..leaf("orphan", vec![Eku::ClientAuth])
            },
            Some(&dead),
        );
        let at = NOW - time::Duration::days(5);
        verify_chain(&orphan.pem, &dead.pem, at).unwrap();
        let later = NOW - time::Duration::hours(36);
        assert!(matches!(
            verify_chain(&orphan.pem, &dead.pem, later),
            Err(PkiError::CaNotValidAt { .. })
        ));
    }

    #[test]
    fn path_length_signatures_and_issuers_are_checked() {
        let root = make(ca_spec("root", true, Some(0)), None);
        let intermediate = make(ca_spec("intermediate", true, None), Some(&root));
        let leaf_cert = make(leaf("leaf", vec![Eku::ServerAuth]), Some(&intermediate));
        let chain = format!("{}{}", leaf_cert.pem, intermediate.pem);
        let err = verify_chain(&chain, &root.pem, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate \"CN=leaf\" is 1 intermediate CA(s) below CA \"CN=root\", which allows 0 (pathLenConstraint)"
        );
        let open_root = make(ca_spec("root", true, Some(1)), None);
        let intermediate = make(ca_spec("intermediate", true, None), Some(&open_root));
        let leaf_cert = make(leaf("leaf", vec![Eku::ServerAuth]), Some(&intermediate));
        let chain = format!("{}{}", leaf_cert.pem, intermediate.pem);
        assert_eq!(
            verify_chain(&chain, &open_root.pem, NOW).unwrap().ca_subject,
            "CN=root"
        );
        // Without the intermediate there is no path.
        assert!(matches!(
            verify_chain(&leaf_cert.pem, &open_root.pem, NOW),
            Err(PkiError::Untrusted { .. })
        ));

        // Another CA with the same name: the signature gives it away.
        let twin = make(ca_spec("root", true, Some(1)), None);
        let err = verify_chain(&chain, &twin.pem, NOW).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature { .. }), "{err}");
        assert!(matches!(issuer_of(&chain, &twin.pem, LeafKind::Daemon), Ok(None)));

        // Signed by a certificate that is not a CA.
        let not_ca = make(leaf("plain", vec![Eku::ServerAuth]), None);
        let signed = make(leaf("victim", vec![Eku::ServerAuth]), Some(&not_ca));
        let err = verify_chain(&signed.pem, &not_ca.pem, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate \"CN=victim\" is signed by \"CN=plain\", which is not a CA certificate (basicConstraints CA:true)"
        );
    }

    #[test]
    fn many_certificates_with_one_name_find_their_own_issuer() {
        // 150 self-signed CAs all named "same": each is checked against itself first, so
        // every one finds itself, past the candidate cap.
        let cas: Vec<Made> = (0..150)
            .map(|_| make(ca_spec("same", true, None), None))
            .collect();
        let text: String = cas.iter().map(|c| c.pem.as_str()).collect();
        let parsed = super::super::parse_bundle(&text).unwrap();
        for summary in &parsed {
            assert_eq!(summary.issuer_fingerprint.as_ref(), Some(&summary.fingerprint));
        }
        let bundle = TrustBundle::from_pem(&text).unwrap();
        let leaf_cert = make(leaf("leaf", vec![Eku::ServerAuth]), Some(&cas[149]));
        let der = certificate_ders(&leaf_cert.pem).unwrap().remove(0);
        assert_eq!(bundle.signer_of(&der), Some(parsed[149].fingerprint.clone()));
    }
}
