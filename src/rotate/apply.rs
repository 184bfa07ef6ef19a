//! From actions to writes, and the run loop shared by the executor and the simulation.
//!
//! [`materialize`] issues the certificates a plan asks for and builds the exact Secret
//! contents; [`run`] reads, plans, materializes and writes through a [`Cluster`],
//! re-reading and re-planning on a write conflict.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use crate::overlay::RestartStrategy;
use crate::pki::{self, CaRequest, Issued, LeafKind, LeafRequest, Serial};

use super::planner::{Action, CaRef, LeafCert, OtherRole, Severity, plan, waiting_for, wants_observation};
use super::state::{
    self, CaSecret, KeyPem, OtherCa, Phase, RawObservation, Slot, Snapshot, State, content_version,
    read_observation, read_state,
};
use super::{Config, RotateError, precheck};

/// How many times a run re-reads and re-plans after a write conflict.
pub const MAX_ATTEMPTS: u32 = 6;

/// Which of the three Secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretRole {
    /// The CA Secret.
    Ca,
    /// The daemon Secret.
    Daemon,
    /// The client Secret.
    Client,
}

/// One Secret write. `Debug` lists the keys, never the values.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretWrite {
    /// Which Secret.
    pub role: SecretRole,
    /// Its namespace (a tenant's, for a tenant's client Secret).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The resourceVersion read; None means the Secret does not exist and is created.
    pub resource_version: Option<String>,
    /// The Secret type: the live Secret's (a Secret's type is immutable), `Opaque` (the
    /// rendered shells' type) for a Secret that is created.
    pub secret_type: String,
    /// The whole new `data`.
    pub data: BTreeMap<String, Vec<u8>>,
    /// The annotations kiln sets; the others of [`state::SECRET_ANNOTATIONS`] are
    /// removed, annotations of other owners are kept.
    pub annotations: BTreeMap<String, String>,
    /// Why (for the Event and the report).
    pub reason: String,
    /// Serial of the certificate written, for the report.
    pub serial: String,
    /// not-after of the certificate written, for the report.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretWrite")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("resource_version", &self.resource_version)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations)
            .field("reason", &self.reason)
            .finish()
    }
}

/// A rolling restart of buildkitd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartWrite {
    /// The pod-template annotation `kiln.dev/daemon-certs`.
    pub daemon_certs: String,
    /// The pod-template annotation `kiln.dev/restartedAt`.
    pub restarted_at: String,
    /// Why.
    pub reason: String,
}

/// A Kubernetes Event kiln records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `Secret`, `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// The short CamelCase reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
    /// Type Warning instead of Normal.
    pub warning: bool,
}

/// The client certificate presented to every replica when observing them. `Debug`
/// never shows the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its key.
    pub key_pem: KeyPem,
}

/// A failed cluster call. Messages are one line and name the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// HTTP 409: somebody else wrote first.
    #[error("failed to write {what}: conflict (HTTP 409), it changed since it was read")]
    Conflict { what: String },
    /// HTTP 404.
    #[error("failed to {verb} {what}: not found (HTTP 404)")]
    NotFound { verb: &'static str, what: String },
    /// HTTP 403.
    #[error("failed to {verb} {what}: forbidden (HTTP 403); {hint}")]
    Forbidden {
        verb: &'static str,
        what: String,
        hint: String,
    },
    /// Anything else: connection, 5xx, decoding.
    #[error("failed to {verb} {what}: {message}")]
    Other {
        verb: &'static str,
        what: String,
        message: String,
    },
}

/// The cluster as the run loop sees it. The executor implements it over HTTP; the
/// simulation over an in-memory model.
pub trait Cluster {
    /// Read the three Secrets and the workload.
    fn read(&mut self) -> Result<Snapshot, ClusterError>;
    /// Write one Secret (create when `resource_version` is None, else a guarded replace).
    fn write_secret(&mut self, write: &SecretWrite) -> Result<(), ClusterError>;
    /// Patch the pod template so the workload rolls.
    fn restart(&mut self, restart: &RestartWrite) -> Result<(), ClusterError>;
    /// Record an Event (best effort: failures are logged, not fatal).
    fn event(&mut self, event: &EventRecord) -> Result<(), ClusterError>;
    /// Connect to every buildkitd replica over TLS, presenting `probe`, and report what
    /// each serves. Never fails: what cannot be reached is reported per replica.
    fn observe(&mut self, probe: Option<&Probe>) -> RawObservation;
}

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// The time to plan for (the clock, or `--now`).
    pub now: OffsetDateTime,
    /// Plan only; write nothing.
    pub dry_run: bool,
}

/// What one replica served, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// The pod name or address.
    pub name: String,
    /// `current` (serves the daemon Secret's certificate), `stale`, `unreachable`.
    pub state: &'static str,
    /// The serial of the certificate it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Whether it accepted the probe client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepts_probe: Option<bool>,
    /// Why it is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The replicas as observed, for the report and `kiln status`.
pub fn replica_reports(state: &State) -> Vec<ReplicaReport> {
    let current = state.daemon.ok().map(|d| d.info.fingerprint.clone());
    let Some(observed) = &state.observed else {
        return Vec::new();
    };
    observed
        .replicas
        .iter()
        .map(|replica| match &replica.result {
            Err(why) => ReplicaReport {
                name: replica.name.clone(),
                state: "unreachable",
                serial: None,
                accepts_probe: None,
                detail: Some(why.clone()),
            },
            Ok(served) => ReplicaReport {
                name: replica.name.clone(),
                state: if current.as_deref() == Some(served.fingerprint.as_str()) {
                    "current"
                } else {
                    "stale"
                },
                serial: Some(served.serial.clone()),
                accepts_probe: served.probe_accepted,
                detail: None,
            },
        })
        .collect()
}

/// One change made (or planned, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `Secret/<name>` or `<Kind>/<name>`.
    pub object: String,
    /// What and why.
    pub reason: String,
    /// The serial of the certificate written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its not-after.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_after: Option<OffsetDateTime>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// True for `--dry-run`: `changes` were planned, not made.
    pub dry_run: bool,
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Warnings an operator must read.
    pub warnings: Vec<String>,
    /// Conflicts that were retried.
    pub conflicts: u32,
    /// The CA phase before the run (None: no usable CA yet).
    pub phase_before: Option<Phase>,
    /// The CA phase after the run.
    pub phase: Option<Phase>,
    /// The replicas as observed over TLS (empty when this run did not need to look).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaReport>,
    /// During a rollover that took no step: what the next step waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Tenant client Secrets whose write failed (other than a conflict): the run went on
    /// with the rest, and the command exits non-zero. One line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// A write the run loop performs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A Secret.
    Secret(SecretWrite),
    /// A restart.
    Restart(RestartWrite),
}

struct PoolCa {
    cert_pem: String,
    key_pem: Option<String>,
    fingerprint: String,
    serial: String,
    not_after: OffsetDateTime,
}

fn pool_from_state(ca: &CaSecret) -> Vec<PoolCa> {
    ca.all()
        .into_iter()
        .map(|c| PoolCa {
            cert_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.as_ref().map(|k| k.0.clone()),
            fingerprint: c.info.fingerprint.clone(),
            serial: c.info.serial.clone(),
            not_after: c.info.not_after,
        })
        .collect()
}

fn lookup<'a>(pool: &'a [PoolCa], new: Option<&str>, r: &CaRef) -> Result<&'a PoolCa, RotateError> {
    let fp = match r {
        CaRef::New => {
            new.ok_or_else(|| RotateError::Plan("a write refers to a new CA that was not issued".into()))?
        }
        CaRef::Existing(fp) => fp.as_str(),
    };
    pool.iter()
        .find(|c| c.fingerprint == fp)
        .ok_or_else(|| RotateError::Plan(format!("CA {fp} is not in the CA Secret")))
}

fn issue_error(what: &str) -> impl Fn(pki::PkiError) -> RotateError + '_ {
    move |source| RotateError::Issue {
        what: what.to_string(),
        source,
    }
}

/// The warnings of a plan, with how loud each is.
pub type Warnings = Vec<(String, Severity)>;

/// Turn a plan into writes: issue the certificates it asks for and build each
/// Secret's full content. Warnings are returned separately.
pub fn materialize(
    snapshot: &Snapshot,
    state: &State,
    actions: &[Action],
    config: &Config,
    now: OffsetDateTime,
) -> Result<(Vec<Write>, Warnings), RotateError> {
    let mut pool = state.ca.ok().map(pool_from_state).unwrap_or_default();
    let mut new_ca: Option<String> = None;
    let mut writes = Vec::new();
    let mut warnings = Vec::new();
    let mut daemon_version = state.daemon.ok().map(|d| d.version());
    let now_text = crate::pki::rfc3339(now);
    for action in actions {
        match action {
            Action::Warn { message, severity } => warnings.push((message.clone(), *severity)),
            Action::IssueCa {
                not_before,
                not_after,
            } => {
                let serial = Serial::random().map_err(issue_error("a CA serial"))?;
                let stamp = now.date();
                let issued = pki::issue_ca(&CaRequest {
                    common_name: format!("kiln buildkit CA {} {stamp}", config.namespace),
                    algorithm: config.algorithm,
                    not_before: *not_before,
                    not_after: *not_after,
                    serial,
                })
                .map_err(issue_error("the CA"))?;
                let summary = issued.summary().map_err(issue_error("the CA"))?;
                new_ca = Some(summary.fingerprint.clone());
                pool.push(PoolCa {
                    cert_pem: issued.cert_pem,
                    key_pem: Some(issued.key_pem),
                    fingerprint: summary.fingerprint,
                    serial: summary.serial,
                    not_after: summary.not_after,
                });
            }
            Action::WriteCa {
                signing,
                other,
                phase,
                reason,
            } => {
                let signing = lookup(&pool, new_ca.as_deref(), signing)?;
                let mut data = BTreeMap::from([(
                    state::CA_CERT_KEY.to_string(),
                    signing.cert_pem.clone().into_bytes(),
                )]);
                // A signing CA whose key is lost is kept without one while the rollover
                // to a new CA carries the leaves over.
                if let Some(key) = &signing.key_pem {
                    data.insert(state::CA_KEY_KEY.to_string(), key.clone().into_bytes());
                }
                let mut annotations = BTreeMap::from([
                    (state::ANN_PHASE.to_string(), phase.as_str().to_string()),
                    (state::ANN_PHASE_SINCE.to_string(), now_text.clone()),
                    (state::ANN_CA_FINGERPRINT.to_string(), signing.fingerprint.clone()),
                    (state::ANN_SERIAL.to_string(), signing.serial.clone()),
                    (
                        state::ANN_NOT_AFTER.to_string(),
                        crate::pki::rfc3339(signing.not_after),
                    ),
                    (state::ANN_UPDATED_AT.to_string(), now_text.clone()),
                    (
                        state::ANN_SECRET_KEYS.to_string(),
                        state::CA_SECRET_KEYS_ANNOTATION.to_string(),
                    ),
                ]);
                // The tenant record stays as it is unless this run's RecordTenants changes it.
                for key in [state::ANN_TENANTS, state::ANN_REMOVED_TENANTS] {
                    if let Some(value) = snapshot.ca.annotations.get(key) {
                        annotations.insert(key.to_string(), value.clone());
                    }
                }
                // The report names the CA this write brings in: the next CA when one is
                // introduced, else the signing CA.
                let mut reported = (signing.serial.clone(), signing.not_after);
                if let Some((role, other)) = other {
                    let other = lookup(&pool, new_ca.as_deref(), other)?;
                    match role {
                        OtherRole::Next => {
                            let key = other
                                .key_pem
                                .as_ref()
                                .ok_or_else(|| RotateError::Plan("the next CA has no key".into()))?;
                            data.insert(
                                state::NEXT_CA_CERT_KEY.into(),
                                other.cert_pem.clone().into_bytes(),
                            );
                            data.insert(state::NEXT_CA_KEY_KEY.into(), key.clone().into_bytes());
                            annotations
                                .insert(state::ANN_NEXT_CA_FINGERPRINT.into(), other.fingerprint.clone());
                            reported = (other.serial.clone(), other.not_after);
                        }
                        OtherRole::Retiring => {
                            data.insert(
                                state::RETIRING_CA_CERT_KEY.into(),
                                other.cert_pem.clone().into_bytes(),
                            );
                            annotations.insert(
                                state::ANN_RETIRING_CA_FINGERPRINT.into(),
                                other.fingerprint.clone(),
                            );
                        }
                    }
                }
                let (serial, not_after) = reported;
                writes.push(Write::Secret(SecretWrite {
                    role: SecretRole::Ca,
                    namespace: config.namespace.clone(),
                    name: config.ca_secret.clone(),
                    resource_version: snapshot
                        .ca
                        .exists
                        .then(|| snapshot.ca.resource_version.clone())
                        .flatten(),
                    secret_type: "Opaque".into(),
                    data,
                    annotations,
                    reason: reason.clone(),
                    serial,
                    not_after,
                }));
            }
            Action::RecordTenants { tenants, removed } => {
                record_tenants(&mut writes, snapshot, config, tenants, removed)?;
            }
            Action::WriteLeaf {
                kind,
                namespace,
                bundle,
                cert,
                reason,
            } => {
                let (role, name, raw, slot) = match kind {
                    LeafKind::Daemon => (
                        SecretRole::Daemon,
                        &config.daemon_secret,
                        &snapshot.daemon,
                        &state.daemon,
                    ),
                    LeafKind::Client => {
                        let raw = snapshot.clients.iter().find(|c| &c.namespace == namespace);
                        let slot = state.clients.iter().find(|c| &c.namespace == namespace);
                        let (Some(raw), Some(slot)) = (raw, slot) else {
                            return Err(RotateError::Plan(format!(
                                "a write to the client Secret of {namespace}, which was not read"
                            )));
                        };
                        (SecretRole::Client, &config.client_secret, &raw.secret, &slot.slot)
                    }
                };
                let mut bundle_pem = String::new();
                let mut bundle_fps = Vec::new();
                for r in bundle {
                    let ca = lookup(&pool, new_ca.as_deref(), r)?;
                    bundle_pem.push_str(ca.cert_pem.trim_end());
                    bundle_pem.push('\n');
                    bundle_fps.push(ca.fingerprint.clone());
                }
                let (cert_pem, key_pem, issuer) = match cert {
                    LeafCert::Keep => {
                        let Slot::Ok(leaf) = slot else {
                            return Err(RotateError::Plan(format!(
                                "kept the {kind} of a Secret that has none"
                            )));
                        };
                        (
                            leaf.cert_pem.clone(),
                            leaf.key_pem.0.clone(),
                            leaf.issuer.clone().unwrap_or_default(),
                        )
                    }
                    LeafCert::Issue {
                        signer,
                        not_before,
                        not_after,
                    } => {
                        let ca = lookup(&pool, new_ca.as_deref(), signer)?;
                        let key = ca
                            .key_pem
                            .clone()
                            .ok_or_else(|| RotateError::Plan("the signing CA has no key".into()))?;
                        let signer_issued = Issued {
                            cert_pem: ca.cert_pem.clone(),
                            key_pem: key,
                        };
                        let what = kind.to_string();
                        let serial = Serial::random().map_err(issue_error(&what))?;
                        let (common_name, sans) = match kind {
                            LeafKind::Daemon => (config.workload_name.clone(), config.daemon_sans.clone()),
                            // Tells the teams apart in buildkitd's logs.
                            LeafKind::Client => (pki::client_common_name(namespace), Vec::new()),
                        };
                        let issued = pki::issue_leaf(
                            &signer_issued,
                            &LeafRequest {
                                kind: *kind,
                                common_name,
                                sans,
                                algorithm: config.algorithm,
                                not_before: *not_before,
                                not_after: *not_after,
                                serial,
                            },
                        )
                        .map_err(issue_error(&what))?;
                        (issued.cert_pem, issued.key_pem, ca.fingerprint.clone())
                    }
                };
                let summary = pki::parse_bundle(&cert_pem)
                    .map_err(issue_error("the leaf read back"))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| RotateError::Plan("a written leaf has no certificate".into()))?;
                if *kind == LeafKind::Daemon {
                    daemon_version = Some(content_version(&summary.fingerprint, &bundle_fps));
                }
                let (ca_key, cert_key, key_key) = config.format.key_names();
                let data = BTreeMap::from([
                    (ca_key.to_string(), bundle_pem.into_bytes()),
                    (cert_key.to_string(), cert_pem.into_bytes()),
                    (key_key.to_string(), key_pem.into_bytes()),
                ]);
                let annotations = BTreeMap::from([
                    (state::ANN_SERIAL.to_string(), summary.serial.clone()),
                    (
                        state::ANN_NOT_AFTER.to_string(),
                        crate::pki::rfc3339(summary.not_after),
                    ),
                    (state::ANN_ISSUER.to_string(), issuer),
                    (state::ANN_BUNDLE.to_string(), bundle_fps.join(",")),
                    (state::ANN_UPDATED_AT.to_string(), now_text.clone()),
                    (
                        state::ANN_SECRET_KEYS.to_string(),
                        format!("{ca_key}, {cert_key}, {key_key}"),
                    ),
                ]);
                writes.push(Write::Secret(SecretWrite {
                    role,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    resource_version: raw.exists.then(|| raw.resource_version.clone()).flatten(),
                    secret_type: live_type(raw),
                    data,
                    annotations,
                    reason: reason.clone(),
                    serial: summary.serial,
                    not_after: summary.not_after,
                }));
            }
            Action::Restart { reason } => {
                let daemon_certs = daemon_version
                    .clone()
                    .ok_or_else(|| RotateError::Plan("a restart without a daemon Secret".into()))?;
                writes.push(Write::Restart(RestartWrite {
                    daemon_certs,
                    restarted_at: now_text.clone(),
                    reason: reason.clone(),
                }));
            }
        }
    }
    Ok((writes, warnings))
}

/// The type a write keeps: the live Secret's (immutable in Kubernetes), else `Opaque`,
/// the type of the rendered shells.
fn live_type(raw: &state::RawSecret) -> String {
    raw.secret_type
        .clone()
        .filter(|t| raw.exists && !t.is_empty())
        .unwrap_or_else(|| "Opaque".into())
}

/// Put the tenant record on the CA Secret: into this run's CA write when there is one,
/// else as a write of its own that changes nothing but the record.
fn record_tenants(
    writes: &mut Vec<Write>,
    snapshot: &Snapshot,
    config: &Config,
    tenants: &BTreeMap<String, OffsetDateTime>,
    removed: &BTreeMap<String, OffsetDateTime>,
) -> Result<(), RotateError> {
    let set = |annotations: &mut BTreeMap<String, String>| {
        for (key, list) in [
            (state::ANN_TENANTS, tenants),
            (state::ANN_REMOVED_TENANTS, removed),
        ] {
            if list.is_empty() {
                annotations.remove(key);
            } else {
                annotations.insert(key.to_string(), state::format_tenant_list(list));
            }
        }
    };
    if let Some(Write::Secret(ca)) = writes
        .iter_mut()
        .find(|w| matches!(w, Write::Secret(s) if s.role == SecretRole::Ca))
    {
        set(&mut ca.annotations);
        return Ok(());
    }
    let raw = &snapshot.ca;
    if !raw.exists || raw.data.is_empty() {
        return Err(RotateError::Plan("a tenant record without a CA Secret".into()));
    }
    // Every kiln annotation as it stands (a write replaces them all), the record changed.
    let mut annotations: BTreeMap<String, String> = raw
        .annotations
        .iter()
        .filter(|(k, _)| state::SECRET_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    set(&mut annotations);
    let not_after = raw
        .annotations
        .get(state::ANN_NOT_AFTER)
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    writes.push(Write::Secret(SecretWrite {
        role: SecretRole::Ca,
        namespace: config.namespace.clone(),
        name: config.ca_secret.clone(),
        resource_version: raw.resource_version.clone(),
        secret_type: live_type(raw),
        data: raw.data.clone(),
        annotations,
        reason: "record the tenant namespaces".into(),
        serial: raw
            .annotations
            .get(state::ANN_SERIAL)
            .cloned()
            .unwrap_or_default(),
        not_after,
    }));
    Ok(())
}

fn describe(action: &Action, config: &Config) -> Option<Change> {
    let (object, reason) = match action {
        Action::IssueCa { .. } | Action::Warn { .. } => return None,
        Action::WriteCa { reason, .. } => (format!("Secret/{}", config.ca_secret), reason.clone()),
        Action::RecordTenants { .. } => (
            format!("Secret/{}", config.ca_secret),
            "record the tenant namespaces".into(),
        ),
        Action::WriteLeaf {
            kind,
            namespace,
            reason,
            ..
        } => (secret_object(config, *kind, namespace), reason.clone()),
        Action::Restart { reason } => (workload_object(config), reason.clone()),
    };
    Some(Change {
        object,
        reason,
        serial: None,
        not_after: None,
    })
}

/// `Secret/<name>` in the farm's namespace, `Secret/<namespace>/<name>` in a tenant's.
fn secret_object(config: &Config, kind: LeafKind, namespace: &str) -> String {
    let name = match kind {
        LeafKind::Daemon => &config.daemon_secret,
        LeafKind::Client => &config.client_secret,
    };
    if namespace == config.namespace {
        format!("Secret/{name}")
    } else {
        format!("Secret/{namespace}/{name}")
    }
}

fn workload_object(config: &Config) -> String {
    format!("{}/{}", workload_kind_title(config), config.workload_name)
}

fn workload_kind_title(config: &Config) -> &'static str {
    match config.workload {
        crate::overlay::Workload::Deployment => "Deployment",
        crate::overlay::Workload::Statefulset => "StatefulSet",
    }
}

fn phase_after(state: &State, actions: &[Action]) -> Option<Phase> {
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::WriteCa { phase, .. } => Some(*phase),
            _ => None,
        })
        .or_else(|| state.ca.ok().map(|ca| ca.phase()))
}

fn emit(cluster: &mut impl Cluster, event: EventRecord) {
    if let Err(err) = cluster.event(&event) {
        tracing::warn!(error = %err, "failed to record an event");
    }
}

/// The probe client certificate for observing the replicas, and the fingerprint of the
/// CA that signed it. In phase `introduced` it is a throwaway certificate from the next CA
/// (does every daemon accept the clients of the next step?); otherwise the client Secret's
/// own certificate (does every daemon accept today's clients?), or one from the signing CA.
pub fn probe(
    state: &State,
    config: &Config,
    now: OffsetDateTime,
) -> Result<Option<(Probe, String)>, RotateError> {
    let Some(ca) = state.ca.ok() else {
        return Ok(None);
    };
    let issuer = match (&ca.other, state.farm_client().ok()) {
        (Some(OtherCa::Next(next)), _) => next,
        (_, Some(client)) if client.info.not_after > now => {
            return Ok(client.issuer.clone().map(|issuer| {
                (
                    Probe {
                        cert_pem: client.cert_pem.clone(),
                        key_pem: client.key_pem.clone(),
                    },
                    issuer,
                )
            }));
        }
        _ => &ca.signing,
    };
    let Some(key) = &issuer.key_pem else {
        return Ok(None);
    };
    let signer = Issued {
        cert_pem: issuer.cert_pem.clone(),
        key_pem: key.0.clone(),
    };
    let issued = pki::issue_leaf(
        &signer,
        &LeafRequest {
            kind: LeafKind::Client,
            common_name: format!("kiln-rotate-probe:{}", config.namespace),
            sans: Vec::new(),
            // Only the signature matters to the daemon: the cheapest key will do.
            algorithm: pki::Algorithm::EcdsaP256,
            not_before: now.saturating_sub(super::planner::BACKDATE),
            not_after: now.saturating_add(time::Duration::hours(1)),
            serial: Serial::random().map_err(issue_error("the probe client certificate"))?,
        },
    )
    .map_err(issue_error("the probe client certificate"))?;
    Ok(Some((
        Probe {
            cert_pem: issued.cert_pem,
            key_pem: KeyPem(issued.key_pem),
        },
        issuer.info.fingerprint.clone(),
    )))
}

/// Observe the replicas into `state` (see [`Cluster::observe`]) and log what each serves.
pub fn observe(
    cluster: &mut impl Cluster,
    state: &mut State,
    config: &Config,
    now: OffsetDateTime,
) -> Result<(), RotateError> {
    let probe = probe(state, config, now)?;
    let raw = cluster.observe(probe.as_ref().map(|(p, _)| p));
    state.observed = Some(read_observation(&raw, state, probe.map(|(_, ca)| ca)));
    for replica in replica_reports(state) {
        tracing::info!(
            replica = %replica.name,
            state = replica.state,
            serial = replica.serial.as_deref().unwrap_or("-"),
            accepts_probe = ?replica.accepts_probe,
            detail = replica.detail.as_deref().unwrap_or(""),
            "observed buildkitd"
        );
    }
    if let Some(error) = &raw.error {
        tracing::warn!(error = %error, "failed to list the buildkitd replicas");
    }
    Ok(())
}

fn record_warning(cluster: &mut impl Cluster, config: &Config, message: &str, severity: Severity) {
    let reason = match severity {
        Severity::Warning => {
            tracing::warn!(secret = %config.ca_secret, "{message}");
            "RotationWarning"
        }
        Severity::Outage => {
            tracing::error!(secret = %config.ca_secret, "{message}");
            "CertificatesStartedOver"
        }
    };
    emit(
        cluster,
        EventRecord {
            kind: "Secret",
            name: config.ca_secret.clone(),
            reason,
            message: message.to_string(),
            warning: true,
        },
    );
}

/// One rotation run: check the preconditions, read, plan, write; on a conflict re-read
/// and re-plan, at most [`MAX_ATTEMPTS`] times. Nothing is written when the cluster does
/// not match the policy, or when the workload is missing outside a bootstrap. A failure
/// part-way leaves a state the next run finishes.
pub fn run(cluster: &mut impl Cluster, config: &Config, options: RunOptions) -> Result<Report, RotateError> {
    // Certificates and the kiln.dev/* annotations hold whole seconds: plan in whole
    // seconds too, so what this run records equals what the next run reads back.
    let options = RunOptions {
        now: options.now.replace_nanosecond(0).unwrap_or(options.now),
        ..options
    };
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut bootstrap = None;
    let mut observed = None;
    for attempt in 0..MAX_ATTEMPTS {
        let mut snapshot = cluster.read()?;
        precheck::admit(&mut snapshot, config)?;
        let mut state = read_state(&snapshot, config.format);
        // A missing workload is fine only while the daemon Secret was never filled:
        // nothing runs yet, and the pods load the certificates when they start.
        let bootstrap = *bootstrap.get_or_insert(state.daemon.is_blank());
        check_workload(&state, config, bootstrap, &mut report)?;
        if attempt == 0 {
            report.phase_before = state.ca.ok().map(|ca| ca.phase());
            if wants_observation(&state, options.now, &config.policy) {
                observe(cluster, &mut state, config, options.now)?;
                observed = state.observed.clone();
            }
        } else {
            state.observed = observed.clone();
        }
        report.replicas = replica_reports(&state);
        let actions = plan(&state, options.now, &config.policy);
        report.phase = phase_after(&state, &actions);
        let stepped = actions.iter().any(|a| matches!(a, Action::WriteCa { .. }));
        report.waiting = (!stepped)
            .then(|| waiting_for(&state, options.now, &config.policy))
            .flatten();
        if options.dry_run {
            report.warnings = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Warn { message, .. } => Some(message.clone()),
                    _ => None,
                })
                .collect();
            report.changes = actions.iter().filter_map(|a| describe(a, config)).collect();
            return Ok(report);
        }
        let (writes, warnings) = materialize(&snapshot, &state, &actions, config, options.now)?;
        for (message, severity) in warnings {
            if !report.warnings.contains(&message) {
                record_warning(cluster, config, &message, severity);
                report.warnings.push(message);
            }
        }
        match apply_writes(cluster, config, &state, bootstrap, writes, &mut report) {
            Ok(()) => return Ok(report),
            Err(RotateError::Cluster(ClusterError::Conflict { what })) => {
                tracing::info!(object = %what, "write conflict; re-reading and re-planning");
                report.conflicts += 1;
            }
            Err(err) => return Err(err),
        }
    }
    Err(RotateError::Conflicts {
        attempts: MAX_ATTEMPTS,
    })
}

fn check_workload(
    state: &State,
    config: &Config,
    bootstrap: bool,
    report: &mut Report,
) -> Result<(), RotateError> {
    if state.workload.is_some() || config.policy.restart == RestartStrategy::None {
        return Ok(());
    }
    if bootstrap {
        let message = format!(
            "{} not found: it will load the certificates when it starts",
            workload_object(config)
        );
        if !report.warnings.contains(&message) {
            tracing::warn!("{message}");
            report.warnings.push(message);
        }
        return Ok(());
    }
    Err(RotateError::WorkloadMissing {
        kind: config.workload_kind(),
        name: config.workload_name.clone(),
        namespace: config.namespace.clone(),
    })
}

fn apply_writes(
    cluster: &mut impl Cluster,
    config: &Config,
    state: &State,
    bootstrap: bool,
    writes: Vec<Write>,
    report: &mut Report,
) -> Result<(), RotateError> {
    for write in writes {
        match write {
            Write::Secret(secret) => {
                match cluster.write_secret(&secret) {
                    Ok(()) => {}
                    // One team's Secret (immutable, refused by an admission policy, its
                    // Role deleted since the read) must not stop the farm's and the other
                    // teams' renewals. Going on is safe: the tenant keeps what it holds,
                    // which the planner already judged trusted by every bundle written
                    // after it, and a CA rollover step waits until it has caught up.
                    Err(err)
                        if secret.namespace != config.namespace
                            && !matches!(err, ClusterError::Conflict { .. }) =>
                    {
                        let message = format!(
                            "tenant {}: {err}; the other Secrets are written, this one is tried again on the next run, and a CA rollover step waits for it",
                            secret.namespace
                        );
                        record_warning(cluster, config, &message, Severity::Warning);
                        report.warnings.push(message.clone());
                        report.failed.push(message);
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                }
                let object = if secret.namespace == config.namespace {
                    format!("Secret/{}", secret.name)
                } else {
                    format!("Secret/{}/{}", secret.namespace, secret.name)
                };
                // Events stay in the farm's namespace, where kiln may write them: a
                // tenant's write is recorded on the CA Secret, naming the tenant's Secret.
                let (event_name, message) = if secret.namespace == config.namespace {
                    (secret.name.clone(), secret.reason.clone())
                } else {
                    (config.ca_secret.clone(), format!("{object}: {}", secret.reason))
                };
                tracing::info!(
                    namespace = %secret.namespace,
                    secret = %secret.name,
                    serial = %secret.serial,
                    not_after = %crate::pki::rfc3339(secret.not_after),
                    reason = %secret.reason,
                    "wrote Secret"
                );
                emit(
                    cluster,
                    EventRecord {
                        kind: "Secret",
                        name: event_name,
                        reason: "CertificatesRotated",
                        message,
                        warning: false,
                    },
                );
                report.changes.push(Change {
                    object,
                    reason: secret.reason,
                    serial: Some(secret.serial),
                    not_after: Some(secret.not_after),
                });
            }
            Write::Restart(restart) => {
                if state.workload.is_none() {
                    if bootstrap {
                        continue;
                    }
                    return Err(RotateError::WorkloadMissing {
                        kind: config.workload_kind(),
                        name: config.workload_name.clone(),
                        namespace: config.namespace.clone(),
                    });
                }
                match cluster.restart(&restart) {
                    Err(ClusterError::NotFound { .. }) => {
                        return Err(RotateError::WorkloadMissing {
                            kind: config.workload_kind(),
                            name: config.workload_name.clone(),
                            namespace: config.namespace.clone(),
                        });
                    }
                    other => other?,
                }
                tracing::info!(workload = %workload_object(config), reason = %restart.reason, "restarted");
                emit(
                    cluster,
                    EventRecord {
                        kind: workload_kind_title(config),
                        name: config.workload_name.clone(),
                        reason: "RestartedForCertificates",
                        message: restart.reason.clone(),
                        warning: false,
                    },
                );
                report.changes.push(Change {
                    object: workload_object(config),
                    reason: restart.reason,
                    serial: None,
                    not_after: None,
                });
            }
        }
    }
    Ok(())
}
