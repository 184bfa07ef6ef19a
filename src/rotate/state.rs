//! The rotation state, read from the three Secrets and the buildkitd workload.
//!
//! Pure: [`read_state`] turns a [`Snapshot`] (raw Secret data and workload status, as
//! fetched by the executor) into a typed [`State`], parsing certificates with
//! [`crate::pki`]. The data is the truth; `kiln.dev/*` annotations are only read for the
//! time of the last write, which the CA rollover gates on.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::pki::{self, LeafKind, SecretFormat};

/// Annotation: when kiln last wrote this Secret (RFC 3339).
pub const ANN_UPDATED_AT: &str = "kiln.dev/updated-at";
/// Annotation: the serial of the certificate in this Secret.
pub const ANN_SERIAL: &str = "kiln.dev/serial";
/// Annotation: the not-after of the certificate in this Secret.
pub const ANN_NOT_AFTER: &str = "kiln.dev/not-after";
/// Annotation: the fingerprint of the CA that signed the leaf.
pub const ANN_ISSUER: &str = "kiln.dev/issuer-fingerprint";
/// Annotation: the fingerprints of the CAs in the trust bundle, comma-separated.
pub const ANN_BUNDLE: &str = "kiln.dev/ca-fingerprints";
/// Annotation on the CA Secret: the rollover phase.
pub const ANN_PHASE: &str = "kiln.dev/phase";
/// Annotation on the CA Secret: when the phase started.
pub const ANN_PHASE_SINCE: &str = "kiln.dev/phase-since";
/// Annotation on the CA Secret: the fingerprint of the signing CA.
pub const ANN_CA_FINGERPRINT: &str = "kiln.dev/ca-fingerprint";
/// Annotation on the CA Secret: the fingerprint of the CA being introduced.
pub const ANN_NEXT_CA_FINGERPRINT: &str = "kiln.dev/next-ca-fingerprint";
/// Annotation on the CA Secret: the fingerprint of the CA being retired.
pub const ANN_RETIRING_CA_FINGERPRINT: &str = "kiln.dev/retiring-ca-fingerprint";
/// Annotation on the CA Secret: the tenant namespaces (other than the farm's) kiln renewed
/// in its last write, each with the expiry of the certificate it wrote or found there:
/// `team-a=2027-03-01T00:00:00Z,team-b=…`. A tenant dropped from the overlay is known by it.
pub const ANN_TENANTS: &str = "kiln.dev/tenants";
/// Annotation on the CA Secret: tenants removed from the overlay whose certificates are
/// still valid, in the format of [`ANN_TENANTS`]; an entry goes once its expiry has passed.
pub const ANN_REMOVED_TENANTS: &str = "kiln.dev/removed-tenants";
/// Annotation: the data keys this Secret holds (`ca.crt, ca.key` on the CA Secret), written
/// by render on the shells and by `kiln rotate` on every write; checked before the first write.
pub const ANN_SECRET_KEYS: &str = "kiln.dev/secret-keys";
/// Annotation on the rendered shells: the `certs.format` they were rendered for.
pub const ANN_SECRET_FORMAT: &str = "kiln.dev/secret-format";
/// Pod-template annotation: when kiln last restarted the workload.
pub const ANN_RESTARTED_AT: &str = "kiln.dev/restartedAt";
/// Pod-template annotation: the version of the daemon Secret the pods were started for.
pub const ANN_DAEMON_CERTS: &str = "kiln.dev/daemon-certs";

/// Every Secret annotation `kiln rotate` writes; a write removes those it does not set
/// and leaves every other annotation (Argo CD's, render's `kiln.dev/generated-by`) alone.
pub const SECRET_ANNOTATIONS: &[&str] = &[
    ANN_UPDATED_AT,
    ANN_SERIAL,
    ANN_NOT_AFTER,
    ANN_ISSUER,
    ANN_BUNDLE,
    ANN_PHASE,
    ANN_PHASE_SINCE,
    ANN_CA_FINGERPRINT,
    ANN_NEXT_CA_FINGERPRINT,
    ANN_RETIRING_CA_FINGERPRINT,
    ANN_SECRET_KEYS,
    ANN_TENANTS,
    ANN_REMOVED_TENANTS,
];

/// Key in the CA Secret: the signing CA certificate.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key in the CA Secret: the signing CA key.
pub const CA_KEY_KEY: &str = "ca.key";
/// Key in the CA Secret: the CA being introduced (rollover phase `introduced`).
pub const NEXT_CA_CERT_KEY: &str = "next-ca.crt";
/// Key in the CA Secret: the key of the CA being introduced.
pub const NEXT_CA_KEY_KEY: &str = "next-ca.key";
/// Key in the CA Secret: the CA being retired (rollover phase `leaves-reissued`; no key).
pub const RETIRING_CA_CERT_KEY: &str = "retiring-ca.crt";
/// Every key a CA Secret may hold.
pub const CA_SECRET_KEYS: &[&str] = &[
    CA_CERT_KEY,
    CA_KEY_KEY,
    NEXT_CA_CERT_KEY,
    NEXT_CA_KEY_KEY,
    RETIRING_CA_CERT_KEY,
];
/// The value of [`ANN_SECRET_KEYS`] on the CA Secret: the keys it always holds.
pub const CA_SECRET_KEYS_ANNOTATION: &str = "ca.crt, ca.key";

/// A private key in PEM. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(pub String);

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(<redacted>)")
    }
}

/// One Secret as read from the cluster.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawSecret {
    /// False when the GET answered 404.
    pub exists: bool,
    /// `metadata.resourceVersion`, for guarded writes.
    pub resource_version: Option<String>,
    /// The `type`.
    pub secret_type: Option<String>,
    /// The decoded `data`.
    pub data: BTreeMap<String, Vec<u8>>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSecret")
            .field("exists", &self.exists)
            .field("resource_version", &self.resource_version)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// One tenant's client Secret as read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawClient {
    /// The tenant namespace.
    pub namespace: String,
    /// The Secret.
    pub secret: RawSecret,
    /// Why this run must not write the Secret, set by [`super::precheck::admit`]: a
    /// tenant's Secret that does not match the policy holds back that tenant, never the farm.
    pub held: Option<String>,
}

impl Snapshot {
    /// The farm's own client Secret (the first client).
    pub fn farm_client(&self) -> Option<&RawSecret> {
        self.clients.first().map(|c| &c.secret)
    }
}

/// The buildkitd Deployment or StatefulSet as read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawWorkload {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.availableReplicas` (Deployment) or readyReplicas (StatefulSet).
    pub available_replicas: i32,
    /// `status.replicas`: pods of every revision, so old pods still terminating count.
    pub status_replicas: i32,
    /// `spec.template.metadata.annotations`.
    pub template_annotations: BTreeMap<String, String>,
    /// The keys the pod template mounts from the daemon Secret (`items` of its volume);
    /// None when it mounts the whole Secret or does not mount it.
    pub daemon_secret_items: Option<Vec<String>>,
}

/// Everything one run reads from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The CA Secret.
    pub ca: RawSecret,
    /// The daemon Secret.
    pub daemon: RawSecret,
    /// The client Secrets, one per tenant namespace: the farm's own first, then the
    /// tenants in the overlay's order. A tenant's Secret that cannot be read (HTTP 404:
    /// the namespace or the Secret does not exist yet; 403: nor its Role) is `exists: false`.
    pub clients: Vec<RawClient>,
    /// The workload; None when it does not exist.
    pub workload: Option<RawWorkload>,
    /// When the workload does not exist: the other kind (`StatefulSet` for a policy that
    /// says Deployment) exists under the same name. None when absent or not readable.
    pub other_workload: Option<&'static str>,
}

/// What one buildkitd replica served when kiln connected to it, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReplica {
    /// The pod name (or the address, when the EndpointSlice names no pod).
    pub name: String,
    /// The served certificate (PEM) and whether the probe client certificate was
    /// accepted (None when none was presented or the daemon did not answer in time);
    /// or why the replica could not be reached.
    pub result: Result<(String, Option<bool>), String>,
}

/// The replicas as observed over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawObservation {
    /// Every replica found.
    pub replicas: Vec<RawReplica>,
    /// Why the replicas could not be listed (such as a 403 on EndpointSlices).
    pub error: Option<String>,
}

/// The facts about one certificate the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Lowercase hex serial.
    pub serial: String,
    /// First valid instant.
    pub not_before: OffsetDateTime,
    /// Last valid instant.
    pub not_after: OffsetDateTime,
}

/// A CA certificate with its key (None for a CA being retired, whose key is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    /// The parsed facts.
    pub info: CertInfo,
    /// The certificate PEM.
    pub cert_pem: String,
    /// The private key PEM.
    pub key_pem: Option<KeyPem>,
}

/// The second CA in the CA Secret during a rollover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherCa {
    /// Phase `introduced`: trusted everywhere, signs nothing yet.
    Next(Ca),
    /// Phase `leaves-reissued`: still trusted, no longer signs.
    Retiring(Ca),
}

/// The CA rollover phase, derived from the CA Secret's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// One CA.
    Stable,
    /// The next CA is in every trust bundle; leaves are still from the old one.
    Introduced,
    /// Leaves come from the new CA; the old one is still trusted.
    LeavesReissued,
}

impl Phase {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::Introduced => "introduced",
            Phase::LeavesReissued => "leaves-reissued",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CA Secret, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSecret {
    /// The CA that signs leaves.
    pub signing: Ca,
    /// The other CA during a rollover.
    pub other: Option<OtherCa>,
    /// When the current phase started (annotation), for the stalled-rollover warning.
    pub phase_since: Option<OffsetDateTime>,
    /// Why the signing CA has no key (lost, or not matching its certificate); None when
    /// it has one.
    pub key_problem: Option<String>,
}

impl CaSecret {
    /// The rollover phase.
    pub fn phase(&self) -> Phase {
        match self.other {
            None => Phase::Stable,
            Some(OtherCa::Next(_)) => Phase::Introduced,
            Some(OtherCa::Retiring(_)) => Phase::LeavesReissued,
        }
    }

    /// Every CA in the Secret: signing first.
    pub fn all(&self) -> Vec<&Ca> {
        let mut all = vec![&self.signing];
        match &self.other {
            Some(OtherCa::Next(ca)) | Some(OtherCa::Retiring(ca)) => all.push(ca),
            None => {}
        }
        all
    }

    /// The CA with this fingerprint.
    pub fn find(&self, fingerprint: &str) -> Option<&Ca> {
        self.all()
            .into_iter()
            .find(|ca| ca.info.fingerprint == fingerprint)
    }
}

/// A daemon or client Secret, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The certificate.
    pub info: CertInfo,
    /// Fingerprint of the CA (from the CA Secret or the bundle) that signed it.
    pub issuer: Option<String>,
    /// The SANs.
    pub sans: Vec<String>,
    /// The fingerprints of the CAs in the trust bundle, in order.
    pub bundle: Vec<String>,
    /// The certificate PEM.
    pub cert_pem: String,
    /// The key PEM (it matches the certificate, or the Secret reads as broken).
    pub key_pem: KeyPem,
    /// When kiln last wrote the Secret (annotation).
    pub updated_at: Option<OffsetDateTime>,
}

impl Leaf {
    /// A short digest of the certificate and bundle: the pod-template annotation that
    /// says which daemon Secret the running pods loaded.
    pub fn version(&self) -> String {
        content_version(&self.info.fingerprint, &self.bundle)
    }
}

/// The version string of a leaf Secret's content (see [`Leaf::version`]).
pub fn content_version(cert_fingerprint: &str, bundle: &[String]) -> String {
    let mut text = cert_fingerprint.to_string();
    for fp in bundle {
        text.push(',');
        text.push_str(fp);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A Secret as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot<T> {
    /// The Secret does not exist.
    Missing,
    /// The Secret exists with no data (the rendered shell).
    Empty,
    /// The data cannot be used; the reason names the key and the fault.
    Broken(String),
    /// Parsed.
    Ok(T),
}

impl<T> Slot<T> {
    /// The parsed value, if any.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Slot::Ok(value) => Some(value),
            _ => None,
        }
    }

    /// Missing or empty: nothing was ever written.
    pub fn is_blank(&self) -> bool {
        matches!(self, Slot::Missing | Slot::Empty)
    }
}

/// The workload as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The daemon-Secret version in the pod template (see [`Leaf::version`]).
    pub daemon_certs: Option<String>,
    /// Every replica runs the current template and is ready; no old pod is left.
    pub rollout_complete: bool,
    /// `spec.replicas`.
    pub replicas: usize,
}

/// What one replica serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The served certificate's fingerprint.
    pub fingerprint: String,
    /// Its serial (hex).
    pub serial: String,
    /// Its not-after.
    pub not_after: OffsetDateTime,
    /// The CA of the CA Secret that signed it; None for any other issuer.
    pub issuer: Option<String>,
    /// Whether the replica accepted the probe client certificate.
    pub probe_accepted: Option<bool>,
}

/// One replica's observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObservation {
    /// The pod name or address.
    pub name: String,
    /// What it serves, or why it could not be reached.
    pub result: Result<Served, String>,
}

/// The buildkitd replicas as seen over TLS, before the planner runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The fingerprint of the CA that signed the probe client certificate.
    pub probe_ca: Option<String>,
    /// Every replica found.
    pub replicas: Vec<ReplicaObservation>,
    /// How many replicas the workload wants (`spec.replicas`).
    pub expected: usize,
    /// Why the replicas could not be listed.
    pub error: Option<String>,
}

/// One tenant's client Secret as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The tenant namespace.
    pub namespace: String,
    /// The Secret. For a tenant other than the farm, [`Slot::Missing`] means "not there
    /// yet" (kiln never creates it: its Role allows only get and update).
    pub slot: Slot<Leaf>,
    /// True for the farm's own namespace.
    pub farm: bool,
    /// Why kiln must not write this tenant's Secret (it does not match the policy).
    pub held: Option<String>,
}

impl Client {
    /// A tenant kiln cannot write this run: its namespace, Secret or Role does not exist
    /// yet, or its Secret is [`Client::held`]. It is not renewed, and a CA rollover step
    /// waits for it.
    pub fn absent(&self) -> bool {
        !self.farm && (self.slot == Slot::Missing || self.held.is_some())
    }
}

/// The tenants remembered in the CA Secret: namespace → expiry of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantRecord {
    /// The tenants of the last write ([`ANN_TENANTS`]).
    pub tenants: BTreeMap<String, OffsetDateTime>,
    /// Tenants removed from the overlay, certificate still valid ([`ANN_REMOVED_TENANTS`]).
    pub removed: BTreeMap<String, OffsetDateTime>,
}

/// Parse `ns=time,ns=time`; entries that do not parse are skipped.
pub fn parse_tenant_list(value: &str) -> BTreeMap<String, OffsetDateTime> {
    value
        .split(',')
        .filter_map(|entry| {
            let (ns, at) = entry.trim().split_once('=')?;
            let at = OffsetDateTime::parse(at.trim(), &Rfc3339).ok()?;
            Some((ns.trim().to_string(), at))
        })
        .collect()
}

/// The annotation value of a tenant list (see [`ANN_TENANTS`]).
pub fn format_tenant_list(list: &BTreeMap<String, OffsetDateTime>) -> String {
    list.iter()
        .map(|(ns, at)| format!("{ns}={}", pki::rfc3339(*at)))
        .collect::<Vec<_>>()
        .join(",")
}

impl State {
    /// The farm's own client Secret.
    pub fn farm_client(&self) -> &Slot<Leaf> {
        static MISSING: Slot<Leaf> = Slot::Missing;
        self.clients.first().map_or(&MISSING, |c| &c.slot)
    }
}

/// Everything the planner knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The CA Secret.
    pub ca: Slot<CaSecret>,
    /// The daemon Secret.
    pub daemon: Slot<Leaf>,
    /// The client Secrets: the farm's own first, then the tenants.
    pub clients: Vec<Client>,
    /// The tenants kiln remembered in the CA Secret ([`ANN_TENANTS`], [`ANN_REMOVED_TENANTS`]).
    pub record: TenantRecord,
    /// The workload; None when it does not exist.
    pub workload: Option<Workload>,
    /// Problems found while reading that the planner repairs around (a broken next CA).
    pub warnings: Vec<String>,
    /// The replicas as observed over TLS (None when not observed in this run).
    pub observed: Option<Observed>,
}

fn text<'a>(secret: &'a RawSecret, key: &str) -> Result<Option<&'a str>, String> {
    match secret.data.get(key) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("key {key} is not UTF-8 text")),
    }
}

fn annotation_time(secret: &RawSecret, key: &str) -> Option<OffsetDateTime> {
    secret
        .annotations
        .get(key)
        .and_then(|value| OffsetDateTime::parse(value, &Rfc3339).ok())
}

fn cert_info(pem: &str, key: &str) -> Result<CertInfo, String> {
    let summary = pki::parse_bundle(pem)
        .map_err(|e| format!("key {key}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("key {key}: no certificate"))?;
    Ok(CertInfo {
        fingerprint: summary.fingerprint,
        serial: summary.serial,
        not_before: summary.not_before,
        not_after: summary.not_after,
    })
}

/// A CA from the Secret. `Ok(None)` when the certificate key is absent. A key that is
/// missing, unreadable or not matching comes back as `key_pem: None` with the reason.
fn read_ca(
    secret: &RawSecret,
    cert_key: &str,
    key_key: Option<&str>,
) -> Result<Option<(Ca, Option<String>)>, String> {
    let Some(cert_pem) = text(secret, cert_key)? else {
        return Ok(None);
    };
    let info = cert_info(cert_pem, cert_key)?;
    pki::check_ca(cert_pem).map_err(|e| format!("key {cert_key}: {e}"))?;
    let (key_pem, key_problem) = match key_key {
        None => (None, None),
        Some(key_key) => match text(secret, key_key) {
            Err(e) => (None, Some(e)),
            Ok(None) => (
                None,
                Some(format!("key {key_key} is missing: the CA key is lost")),
            ),
            Ok(Some(key)) => match pki::key_matches(cert_pem, key) {
                Ok(true) => (Some(KeyPem(key.to_string())), None),
                Ok(false) => (None, Some(format!("key {key_key} does not match {cert_key}"))),
                Err(e) => (None, Some(format!("key {key_key}: {e}"))),
            },
        },
    };
    Ok(Some((
        Ca {
            info,
            cert_pem: cert_pem.to_string(),
            key_pem,
        },
        key_problem,
    )))
}

fn read_ca_secret(secret: &RawSecret, warnings: &mut Vec<String>) -> Slot<CaSecret> {
    if !secret.exists {
        return Slot::Missing;
    }
    if secret.data.is_empty() {
        return Slot::Empty;
    }
    let (signing, key_problem) = match read_ca(secret, CA_CERT_KEY, Some(CA_KEY_KEY)) {
        Ok(Some(ca)) => ca,
        Ok(None) => return Slot::Broken(format!("key {CA_CERT_KEY} is missing")),
        Err(reason) => return Slot::Broken(reason),
    };
    let next = read_ca(secret, NEXT_CA_CERT_KEY, Some(NEXT_CA_KEY_KEY));
    let retiring = read_ca(secret, RETIRING_CA_CERT_KEY, None);
    let other = match (next, retiring) {
        (Ok(Some((next, None))), _) => Some(OtherCa::Next(next)),
        (Ok(Some((_, Some(reason)))) | Err(reason), _) => {
            // Nothing was signed by the next CA yet, so dropping it is safe: the
            // rollover restarts with a fresh one.
            warnings.push(format!(
                "the next CA in the CA Secret is unusable ({reason}); dropping it"
            ));
            None
        }
        (Ok(None), Ok(Some((retiring, _)))) => Some(OtherCa::Retiring(retiring)),
        (Ok(None), Err(reason)) => {
            warnings.push(format!(
                "the retiring CA in the CA Secret is unusable ({reason}); dropping it early"
            ));
            None
        }
        (Ok(None), Ok(None)) => None,
    };
    Slot::Ok(CaSecret {
        signing,
        other,
        phase_since: annotation_time(secret, ANN_PHASE_SINCE),
        key_problem,
    })
}

fn read_leaf(secret: &RawSecret, format: SecretFormat, cas: &[&Ca], kind: LeafKind) -> Slot<Leaf> {
    if !secret.exists {
        return Slot::Missing;
    }
    if secret.data.is_empty() {
        return Slot::Empty;
    }
    match read_leaf_data(secret, format, cas, kind) {
        Ok(leaf) => Slot::Ok(leaf),
        Err(reason) => Slot::Broken(reason),
    }
}

fn read_leaf_data(
    secret: &RawSecret,
    format: SecretFormat,
    cas: &[&Ca],
    kind: LeafKind,
) -> Result<Leaf, String> {
    let (bundle_key, cert_key, key_key) = format.key_names();
    let missing = |key: &str| format!("key {key} is missing");
    let bundle_pem = text(secret, bundle_key)?.ok_or_else(|| missing(bundle_key))?;
    let cert_pem = text(secret, cert_key)?.ok_or_else(|| missing(cert_key))?;
    let key_pem = text(secret, key_key)?.ok_or_else(|| missing(key_key))?;
    let bundle = pki::parse_bundle(bundle_pem).map_err(|e| format!("key {bundle_key}: {e}"))?;
    if let Some(not_ca) = bundle.iter().find(|c| !c.is_ca) {
        return Err(format!(
            "key {bundle_key}: {:?} is not a CA certificate",
            not_ca.subject
        ));
    }
    let summary = pki::parse_bundle(cert_pem)
        .map_err(|e| format!("key {cert_key}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| missing(cert_key))?;
    match pki::key_matches(cert_pem, key_pem) {
        Ok(true) => {}
        Ok(false) => return Err(format!("key {key_key} does not match {cert_key}")),
        Err(e) => return Err(format!("key {key_key}: {e}")),
    }
    // Which CA signed the leaf (rustls-webpki, dates apart): look among the CA Secret's CAs
    // and the bundle. A certificate unfit for its side (a client certificate in the daemon
    // Secret) makes the Secret broken, so it is reissued.
    let mut issuer = None;
    let candidates = cas
        .iter()
        .map(|ca| ca.cert_pem.as_str())
        .chain(std::iter::once(bundle_pem));
    for candidate in candidates {
        if let Some(verified) =
            pki::issuer_of(cert_pem, candidate, kind).map_err(|e| format!("key {cert_key}: {e}"))?
        {
            issuer = Some(verified.ca_fingerprint);
            break;
        }
    }
    Ok(Leaf {
        info: CertInfo {
            fingerprint: summary.fingerprint,
            serial: summary.serial,
            not_before: summary.not_before,
            not_after: summary.not_after,
        },
        issuer,
        sans: summary.sans,
        bundle: bundle.into_iter().map(|c| c.fingerprint).collect(),
        cert_pem: cert_pem.to_string(),
        key_pem: KeyPem(key_pem.to_string()),
        updated_at: annotation_time(secret, ANN_UPDATED_AT),
    })
}

fn read_workload(raw: &RawWorkload) -> Workload {
    let complete = raw.observed_generation >= raw.generation
        && raw.updated_replicas >= raw.replicas
        && raw.ready_replicas >= raw.replicas
        && raw.available_replicas >= raw.replicas
        && raw.status_replicas <= raw.replicas;
    Workload {
        daemon_certs: raw.template_annotations.get(ANN_DAEMON_CERTS).cloned(),
        rollout_complete: complete,
        replicas: usize::try_from(raw.replicas).unwrap_or(0),
    }
}

/// Parse a snapshot into the planner's state. Never fails: what cannot be read becomes
/// [`Slot::Broken`] with the reason, which the planner repairs.
pub fn read_state(snapshot: &Snapshot, format: SecretFormat) -> State {
    let mut warnings = Vec::new();
    let ca = read_ca_secret(&snapshot.ca, &mut warnings);
    let cas: Vec<&Ca> = ca.ok().map(|c| c.all()).unwrap_or_default();
    let daemon = read_leaf(&snapshot.daemon, format, &cas, LeafKind::Daemon);
    let clients = snapshot
        .clients
        .iter()
        .enumerate()
        .map(|(i, raw)| Client {
            namespace: raw.namespace.clone(),
            slot: read_leaf(&raw.secret, format, &cas, LeafKind::Client),
            farm: i == 0,
            held: raw.held.clone(),
        })
        .collect();
    let list = |key: &str| {
        snapshot
            .ca
            .annotations
            .get(key)
            .map(|v| parse_tenant_list(v))
            .unwrap_or_default()
    };
    let record = TenantRecord {
        tenants: list(ANN_TENANTS),
        removed: list(ANN_REMOVED_TENANTS),
    };
    State {
        ca,
        daemon,
        clients,
        record,
        workload: snapshot.workload.as_ref().map(read_workload),
        warnings,
        observed: None,
    }
}

/// Read an observation: fingerprints of what each replica serves and which of the CA
/// Secret's CAs signed it. `probe_ca` is the CA that signed the probe client certificate.
pub fn read_observation(raw: &RawObservation, state: &State, probe_ca: Option<String>) -> Observed {
    let cas: Vec<&Ca> = state.ca.ok().map(|c| c.all()).unwrap_or_default();
    let replicas = raw
        .replicas
        .iter()
        .map(|replica| ReplicaObservation {
            name: replica.name.clone(),
            result: match &replica.result {
                Err(why) => Err(why.clone()),
                Ok((cert_pem, accepted)) => served(cert_pem, &cas, *accepted),
            },
        })
        .collect();
    Observed {
        probe_ca,
        replicas,
        expected: state.workload.as_ref().map_or(0, |w| w.replicas),
        error: raw.error.clone(),
    }
}

fn served(cert_pem: &str, cas: &[&Ca], probe_accepted: Option<bool>) -> Result<Served, String> {
    let summary = pki::parse_bundle(cert_pem)
        .map_err(|e| format!("its certificate cannot be read: {e}"))?
        .into_iter()
        .next()
        .ok_or("it presented no certificate")?;
    let issuer = cas.iter().find_map(|ca| {
        let joined = format!("{cert_pem}\n{}", ca.cert_pem);
        pki::parse_bundle(&joined)
            .ok()
            .and_then(|parsed| parsed.first().and_then(|c| c.issuer_fingerprint.clone()))
            .filter(|fp| *fp == ca.info.fingerprint)
    });
    Ok(Served {
        fingerprint: summary.fingerprint,
        serial: summary.serial,
        not_after: summary.not_after,
        issuer,
        probe_accepted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;
    use crate::rotate::apply::{Write, materialize};
    use crate::rotate::{Config, plan};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2030-06-01 03:17 UTC);

    fn shell() -> RawSecret {
        RawSecret {
            exists: true,
            resource_version: Some("1".into()),
            ..RawSecret::default()
        }
    }

    /// A snapshot after a bootstrap, built by the real plan and materialize.
    fn bootstrapped() -> (Snapshot, Config) {
        let config = Config::from_overlay(&Overlay::default(), None, None).unwrap();
        let mut snapshot = Snapshot {
            ca: shell(),
            daemon: shell(),
            clients: vec![RawClient {
                namespace: config.namespace.clone(),
                secret: shell(),
                held: None,
            }],
            workload: None,
            other_workload: None,
        };
        let state = read_state(&snapshot, config.format);
        let actions = plan(&state, NOW, &config.policy);
        let (writes, warnings) = materialize(&snapshot, &state, &actions, &config, NOW).unwrap();
        assert!(warnings.is_empty());
        for write in writes {
            if let Write::Secret(w) = write {
                let target = match w.role {
                    crate::rotate::apply::SecretRole::Ca => &mut snapshot.ca,
                    crate::rotate::apply::SecretRole::Daemon => &mut snapshot.daemon,
                    crate::rotate::apply::SecretRole::Client => &mut snapshot.clients[0].secret,
                };
                target.data = w.data;
                target.annotations = w.annotations;
            }
        }
        (snapshot, config)
    }

    #[test]
    fn a_bootstrapped_snapshot_reads_back_consistently() {
        let (snapshot, config) = bootstrapped();
        let state = read_state(&snapshot, config.format);
        let ca = state.ca.ok().expect("CA");
        assert_eq!(ca.phase(), Phase::Stable);
        let fp = &ca.signing.info.fingerprint;
        for leaf in [state.daemon.ok().unwrap(), state.farm_client().ok().unwrap()] {
            assert_eq!(leaf.issuer.as_ref(), Some(fp));
            assert_eq!(&leaf.bundle, &vec![fp.clone()]);
            assert_eq!(leaf.updated_at, Some(NOW));
            assert_eq!(leaf.info.not_before, NOW - crate::rotate::planner::BACKDATE);
        }
        assert!(state.warnings.is_empty());
        // A bootstrapped state plans nothing (no workload: nothing to restart).
        assert!(plan(&state, NOW, &config.policy).is_empty());
    }

    #[test]
    fn broken_data_is_named_by_key() {
        let (snapshot, config) = bootstrapped();

        let mut garbage = snapshot.clone();
        garbage.clients[0]
            .secret
            .data
            .insert("cert.pem".into(), b"-----BEGIN CERTIFICATE-----\nxx\n".to_vec());
        let state = read_state(&garbage, config.format);
        assert!(
            matches!(state.farm_client(), Slot::Broken(why) if why.starts_with("key cert.pem")),
            "{:?}",
            state.farm_client()
        );

        let mut swapped = snapshot.clone();
        let client_key = swapped.clients[0].secret.data["key.pem"].clone();
        swapped.daemon.data.insert("key.pem".into(), client_key);
        let state = read_state(&swapped, config.format);
        assert_eq!(
            state.daemon,
            Slot::Broken("key key.pem does not match cert.pem".into())
        );

        // A lost key leaves the certificate usable, without a key, and says why.
        let mut lost = snapshot.clone();
        lost.ca.data.remove(CA_KEY_KEY);
        let state = read_state(&lost, config.format);
        let ca = state.ca.ok().expect("the CA certificate still reads");
        assert!(ca.signing.key_pem.is_none());
        assert_eq!(
            ca.key_problem.as_deref(),
            Some("key ca.key is missing: the CA key is lost")
        );
        assert!(state.daemon.ok().is_some());
        let mut mismatched = snapshot.clone();
        let client_key = mismatched.clients[0].secret.data["key.pem"].clone();
        mismatched.ca.data.insert(CA_KEY_KEY.into(), client_key);
        let state = read_state(&mismatched, config.format);
        assert_eq!(
            state.ca.ok().unwrap().key_problem.as_deref(),
            Some("key ca.key does not match ca.crt")
        );

        let mut not_utf8 = snapshot;
        not_utf8.ca.data.insert(CA_CERT_KEY.into(), vec![0xff, 0xfe]);
        let state = read_state(&not_utf8, config.format);
        assert_eq!(state.ca, Slot::Broken("key ca.crt is not UTF-8 text".into()));
    }

    #[test]
    fn an_unusable_next_ca_is_dropped_with_a_warning() {
        let (mut snapshot, config) = bootstrapped();
        let ca_cert = snapshot.ca.data[CA_CERT_KEY].clone();
        snapshot.ca.data.insert(NEXT_CA_CERT_KEY.into(), ca_cert);
        let state = read_state(&snapshot, config.format);
        assert_eq!(state.ca.ok().unwrap().phase(), Phase::Stable);
        assert_eq!(state.warnings.len(), 1);
        assert!(
            state.warnings[0].contains("next-ca.key is missing"),
            "{:?}",
            state.warnings
        );
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let (snapshot, config) = bootstrapped();
        let state = read_state(&snapshot, config.format);
        let text = format!("{snapshot:?} {state:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}
