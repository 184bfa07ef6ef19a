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

use super::planner::{Action, CaRef, LeafCert, OtherRole, plan};
use super::state::{self, CaSecret, Phase, Slot, Snapshot, State, content_version, read_state};
use super::{Config, RotateError};

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
    /// Its name.
    pub name: String,
    /// The resourceVersion read; None means the Secret does not exist and is created.
    pub resource_version: Option<String>,
    /// The Secret type for a created Secret.
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
}

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// The time to plan for (the clock, or `--now`).
    pub now: OffsetDateTime,
    /// Plan only; write nothing.
    pub dry_run: bool,
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
    /// The CA phase after the run.
    pub phase: Option<Phase>,
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

/// Turn a plan into writes: issue the certificates it asks for and build each
/// Secret's full content. Warnings are returned separately.
pub fn materialize(
    snapshot: &Snapshot,
    state: &State,
    actions: &[Action],
    config: &Config,
    now: OffsetDateTime,
) -> Result<(Vec<Write>, Vec<String>), RotateError> {
    let mut pool = state.ca.ok().map(pool_from_state).unwrap_or_default();
    let mut new_ca: Option<String> = None;
    let mut writes = Vec::new();
    let mut warnings = Vec::new();
    let mut daemon_version = state.daemon.ok().map(|d| d.version());
    let now_text = crate::pki::rfc3339(now);
    for action in actions {
        match action {
            Action::Warn { message } => warnings.push(message.clone()),
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
                let signing_key = signing
                    .key_pem
                    .as_ref()
                    .ok_or_else(|| RotateError::Plan("the signing CA has no key".into()))?;
                let mut data = BTreeMap::from([
                    (
                        state::CA_CERT_KEY.to_string(),
                        signing.cert_pem.clone().into_bytes(),
                    ),
                    (state::CA_KEY_KEY.to_string(), signing_key.clone().into_bytes()),
                ]);
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
                ]);
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
                let serial = signing.serial.clone();
                let not_after = signing.not_after;
                writes.push(Write::Secret(SecretWrite {
                    role: SecretRole::Ca,
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
            Action::WriteLeaf {
                kind,
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
                    LeafKind::Client => (
                        SecretRole::Client,
                        &config.client_secret,
                        &snapshot.client,
                        &state.client,
                    ),
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
                            LeafKind::Client => ("buildkit-client".to_string(), Vec::new()),
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
                ]);
                writes.push(Write::Secret(SecretWrite {
                    role,
                    name: name.clone(),
                    resource_version: raw.exists.then(|| raw.resource_version.clone()).flatten(),
                    secret_type: config.format.secret_type().to_string(),
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

fn describe(action: &Action, config: &Config) -> Option<Change> {
    let (object, reason) = match action {
        Action::IssueCa { .. } | Action::Warn { .. } => return None,
        Action::WriteCa { reason, .. } => (format!("Secret/{}", config.ca_secret), reason.clone()),
        Action::WriteLeaf { kind, reason, .. } => {
            let name = match kind {
                LeafKind::Daemon => &config.daemon_secret,
                LeafKind::Client => &config.client_secret,
            };
            (format!("Secret/{name}"), reason.clone())
        }
        Action::Restart { reason } => (workload_object(config), reason.clone()),
    };
    Some(Change {
        object,
        reason,
        serial: None,
        not_after: None,
    })
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

/// One rotation run: read, plan, write; on a conflict re-read and re-plan, at most
/// [`MAX_ATTEMPTS`] times. A failure part-way leaves a state the next run finishes.
pub fn run(cluster: &mut impl Cluster, config: &Config, options: RunOptions) -> Result<Report, RotateError> {
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut bootstrap = None;
    for _attempt in 0..MAX_ATTEMPTS {
        let snapshot = cluster.read()?;
        let state = read_state(&snapshot, config.format);
        // A missing workload is fine only while the daemon Secret was never filled:
        // nothing runs yet, and the pods load the certificates when they start.
        let bootstrap = *bootstrap.get_or_insert(state.daemon.is_blank());
        let actions = plan(&state, options.now, &config.policy);
        report.phase = phase_after(&state, &actions);
        if options.dry_run {
            report.warnings = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Warn { message } => Some(message.clone()),
                    _ => None,
                })
                .collect();
            report.changes = actions.iter().filter_map(|a| describe(a, config)).collect();
            check_workload(&state, config, bootstrap, &mut report)?;
            return Ok(report);
        }
        let (writes, warnings) = materialize(&snapshot, &state, &actions, config, options.now)?;
        for message in warnings {
            if !report.warnings.contains(&message) {
                tracing::warn!(secret = %config.ca_secret, "{message}");
                emit(
                    cluster,
                    EventRecord {
                        kind: "Secret",
                        name: config.ca_secret.clone(),
                        reason: "RotationWarning",
                        message: message.clone(),
                        warning: true,
                    },
                );
                report.warnings.push(message);
            }
        }
        match apply_writes(cluster, config, &state, bootstrap, writes, &mut report) {
            Ok(()) => {
                check_workload(&state, config, bootstrap, &mut report)?;
                return Ok(report);
            }
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
                cluster.write_secret(&secret)?;
                tracing::info!(
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
                        name: secret.name.clone(),
                        reason: "CertificatesRotated",
                        message: secret.reason.clone(),
                        warning: false,
                    },
                );
                report.changes.push(Change {
                    object: format!("Secret/{}", secret.name),
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
