//! The [`Cluster`] over the Kubernetes API, with `kube`.
//!
//! - Config from the in-cluster ServiceAccount or KUBECONFIG (`kube::Config::infer`).
//! - Secret writes are a PUT of the object read, with its `metadata.resourceVersion`
//!   (a 409 means somebody wrote in between), field manager `kiln`; annotations of other
//!   owners (Argo CD's last-applied, the render stamp) are kept.
//! - A Secret that does not exist is created (POST); the rendered shells normally exist.
//! - The restart is a server-side apply of two pod-template annotations with field
//!   manager `kiln`, forced.
//! - Events are core/v1 Events, best effort.
//!
//! The trait is synchronous; this type owns a single-threaded tokio runtime.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde::Serialize;

use super::Config;
use super::apply::{Cluster, ClusterError, EventRecord, RestartWrite, SecretWrite};
use super::state::{self, RawSecret, RawWorkload, Snapshot};
use crate::overlay::Workload;

/// kiln's field manager for writes and server-side apply.
pub const FIELD_MANAGER: &str = "kiln";

/// A [`Cluster`] backed by the Kubernetes API.
pub struct KubeCluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
    config: Config,
    /// The Secrets as last read, for read-modify-write.
    read: BTreeMap<String, Secret>,
    events_sent: u32,
}

fn other(verb: &'static str, what: &str, message: impl ToString) -> ClusterError {
    ClusterError::Other {
        verb,
        what: what.to_string(),
        message: message.to_string(),
    }
}

/// Map a kube error to a one-line [`ClusterError`]; `forbidden_hint` says how to fix a 403.
fn map_error(err: kube::Error, verb: &'static str, what: &str, forbidden_hint: &str) -> ClusterError {
    match err {
        kube::Error::Api(status) => match status.code {
            409 => ClusterError::Conflict {
                what: what.to_string(),
            },
            404 => ClusterError::NotFound {
                verb,
                what: what.to_string(),
            },
            403 => ClusterError::Forbidden {
                verb,
                what: what.to_string(),
                hint: forbidden_hint.to_string(),
            },
            code => other(
                verb,
                what,
                format!("HTTP {code} {}: {}", status.reason, one_line(&status.message)),
            ),
        },
        err => other(verb, what, one_line(&err.to_string())),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The workload's identity in a restart.
#[derive(Debug, Serialize)]
struct ApplyMeta {
    name: String,
    namespace: String,
}

/// The pod template's metadata in a restart: its annotations only (a template has no name).
#[derive(Debug, Serialize)]
struct ApplyTemplateMeta {
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct ApplyTemplate {
    metadata: ApplyTemplateMeta,
}

#[derive(Debug, Serialize)]
struct ApplySpec {
    template: ApplyTemplate,
}

/// The server-side apply body of a restart: only the two fields kiln owns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RestartPatch {
    api_version: &'static str,
    kind: &'static str,
    metadata: ApplyMeta,
    spec: ApplySpec,
}

impl KubeCluster {
    /// Connect with the in-cluster ServiceAccount or KUBECONFIG.
    pub fn connect(config: &Config) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| other("start", "the async runtime", e))?;
        let client = runtime.block_on(async {
            let mut kube_config = kube::Config::infer().await.map_err(|e| {
                other(
                    "load",
                    "the cluster config",
                    format!(
                        "{}; run in a pod with a ServiceAccount or set KUBECONFIG",
                        one_line(&e.to_string())
                    ),
                )
            })?;
            // One attempt per request, with short timeouts: kube's default retries back
            // off for many minutes, which would hold the CronJob (concurrencyPolicy
            // Forbid). Any failure is safe to leave to the next run.
            kube_config.default_retry = false;
            kube_config.connect_timeout = Some(std::time::Duration::from_secs(10));
            kube_config.read_timeout = Some(std::time::Duration::from_secs(30));
            kube_config.write_timeout = Some(std::time::Duration::from_secs(30));
            kube::Client::try_from(kube_config).map_err(|e| other("create", "the Kubernetes client", e))
        })?;
        Ok(Self {
            runtime,
            client,
            namespace: config.namespace.clone(),
            config: config.clone(),
            read: BTreeMap::new(),
            events_sent: 0,
        })
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn what_secret(&self, name: &str) -> String {
        format!("Secret {}/{name}", self.namespace)
    }

    fn what_workload(&self) -> String {
        let kind = match self.config.workload {
            Workload::Deployment => "Deployment",
            Workload::Statefulset => "StatefulSet",
        };
        format!("{kind} {}/{}", self.namespace, self.config.workload_name)
    }

    fn read_secret(&mut self, name: &str) -> Result<RawSecret, ClusterError> {
        let what = self.what_secret(name);
        let api = self.secrets();
        let secret = self.runtime.block_on(api.get_opt(name)).map_err(|e| {
            map_error(
                e,
                "read",
                &what,
                &format!("the kiln-rotate Role must allow get on secrets/{name}"),
            )
        })?;
        let Some(secret) = secret else {
            self.read.remove(name);
            return Ok(RawSecret::default());
        };
        let raw = RawSecret {
            exists: true,
            resource_version: secret.metadata.resource_version.clone(),
            secret_type: secret.type_.clone(),
            data: secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            annotations: secret.metadata.annotations.clone().unwrap_or_default(),
        };
        self.read.insert(name.to_string(), secret);
        Ok(raw)
    }

    fn read_workload(&self) -> Result<Option<RawWorkload>, ClusterError> {
        let what = self.what_workload();
        let name = self.config.workload_name.as_str();
        let hint = format!(
            "the kiln-rotate Role must allow get on {}s/{name}",
            self.config.workload_kind()
        );
        match self.config.workload {
            Workload::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
                let found = self
                    .runtime
                    .block_on(api.get_opt(name))
                    .map_err(|e| map_error(e, "read", &what, &hint))?;
                Ok(found.map(|d| {
                    let spec = d.spec.unwrap_or_default();
                    let status = d.status.unwrap_or_default();
                    RawWorkload {
                        generation: d.metadata.generation.unwrap_or(0),
                        observed_generation: status.observed_generation.unwrap_or(0),
                        replicas: spec.replicas.unwrap_or(1),
                        updated_replicas: status.updated_replicas.unwrap_or(0),
                        ready_replicas: status.ready_replicas.unwrap_or(0),
                        available_replicas: status.available_replicas.unwrap_or(0),
                        status_replicas: status.replicas.unwrap_or(0),
                        template_annotations: spec
                            .template
                            .metadata
                            .and_then(|m| m.annotations)
                            .unwrap_or_default(),
                    }
                }))
            }
            Workload::Statefulset => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
                let found = self
                    .runtime
                    .block_on(api.get_opt(name))
                    .map_err(|e| map_error(e, "read", &what, &hint))?;
                Ok(found.map(|s| {
                    let spec = s.spec.unwrap_or_default();
                    let status = s.status.unwrap_or_default();
                    RawWorkload {
                        generation: s.metadata.generation.unwrap_or(0),
                        observed_generation: status.observed_generation.unwrap_or(0),
                        replicas: spec.replicas.unwrap_or(1),
                        updated_replicas: status.updated_replicas.unwrap_or(0),
                        ready_replicas: status.ready_replicas.unwrap_or(0),
                        available_replicas: status
                            .available_replicas
                            .unwrap_or(status.ready_replicas.unwrap_or(0)),
                        status_replicas: status.replicas,
                        template_annotations: spec
                            .template
                            .metadata
                            .and_then(|m| m.annotations)
                            .unwrap_or_default(),
                    }
                }))
            }
        }
    }
}

fn merged_annotations(
    existing: Option<BTreeMap<String, String>>,
    ours: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = existing
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| !state::SECRET_ANNOTATIONS.contains(&key.as_str()))
        .collect();
    annotations.extend(ours.iter().map(|(k, v)| (k.clone(), v.clone())));
    annotations
}

fn byte_data(data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}

impl Cluster for KubeCluster {
    fn read(&mut self) -> Result<Snapshot, ClusterError> {
        let ca_name = self.config.ca_secret.clone();
        let daemon_name = self.config.daemon_secret.clone();
        let client_name = self.config.client_secret.clone();
        Ok(Snapshot {
            ca: self.read_secret(&ca_name)?,
            daemon: self.read_secret(&daemon_name)?,
            client: self.read_secret(&client_name)?,
            workload: self.read_workload()?,
        })
    }

    fn write_secret(&mut self, write: &SecretWrite) -> Result<(), ClusterError> {
        let what = self.what_secret(&write.name);
        let api = self.secrets();
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match (&write.resource_version, self.read.get(&write.name)) {
            (Some(resource_version), Some(existing)) => {
                let mut secret = existing.clone();
                secret.metadata.resource_version = Some(resource_version.clone());
                secret.metadata.annotations = Some(merged_annotations(
                    secret.metadata.annotations.take(),
                    &write.annotations,
                ));
                secret.data = Some(byte_data(&write.data));
                secret.string_data = None;
                // The type is immutable; a shell rendered with a type keeps it.
                if secret.type_.is_none() {
                    secret.type_ = Some(write.secret_type.clone());
                }
                let hint = format!("the kiln-rotate Role must allow update on secrets/{}", write.name);
                let written = self
                    .runtime
                    .block_on(api.replace(&write.name, &params, &secret))
                    .map_err(|e| match map_error(e, "update", &what, &hint) {
                        // Deleted since the read: re-read, then create it.
                        ClusterError::NotFound { .. } => ClusterError::Conflict { what: what.clone() },
                        err => err,
                    })?;
                self.read.insert(write.name.clone(), written);
            }
            _ => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(write.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        annotations: Some(write.annotations.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "kiln".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some(write.secret_type.clone()),
                    data: Some(byte_data(&write.data)),
                    ..Secret::default()
                };
                let hint = format!(
                    "the Secret does not exist and the kiln-rotate Role does not allow create (by design); apply the rendered Secret shell {} and run again",
                    write.name
                );
                let written = self
                    .runtime
                    .block_on(api.create(&params, &secret))
                    .map_err(|e| map_error(e, "create", &what, &hint))?;
                self.read.insert(write.name.clone(), written);
            }
        }
        Ok(())
    }

    fn restart(&mut self, restart: &RestartWrite) -> Result<(), ClusterError> {
        let what = self.what_workload();
        let name = self.config.workload_name.clone();
        let (api_version, kind) = match self.config.workload {
            Workload::Deployment => ("apps/v1", "Deployment"),
            Workload::Statefulset => ("apps/v1", "StatefulSet"),
        };
        let patch = RestartPatch {
            api_version,
            kind,
            metadata: ApplyMeta {
                name: name.clone(),
                namespace: self.namespace.clone(),
            },
            spec: ApplySpec {
                template: ApplyTemplate {
                    metadata: ApplyTemplateMeta {
                        annotations: BTreeMap::from([
                            (state::ANN_RESTARTED_AT.to_string(), restart.restarted_at.clone()),
                            (state::ANN_DAEMON_CERTS.to_string(), restart.daemon_certs.clone()),
                        ]),
                    },
                },
            },
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let hint = format!(
            "the kiln-rotate Role must allow patch on {}s/{name}",
            self.config.workload_kind()
        );
        let result = match self.config.workload {
            Workload::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
                self.runtime
                    .block_on(api.patch(&name, &params, &Patch::Apply(&patch)))
                    .map(|_| ())
            }
            Workload::Statefulset => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
                self.runtime
                    .block_on(api.patch(&name, &params, &Patch::Apply(&patch)))
                    .map(|_| ())
            }
        };
        result.map_err(|e| map_error(e, "patch", &what, &hint))
    }

    fn event(&mut self, event: &EventRecord) -> Result<(), ClusterError> {
        // An Event records when it happened: the real clock, even under --now.
        let now = time::OffsetDateTime::now_utc();
        self.events_sent += 1;
        let name = format!(
            "{}.{:x}{:04x}",
            event.name,
            now.unix_timestamp_nanos(),
            self.events_sent
        );
        let stamp = k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp()).ok();
        let api_version = if event.kind == "Secret" { "v1" } else { "apps/v1" };
        let body = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some(event.kind.into()),
                name: Some(event.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(event.reason.into()),
            message: Some(event.message.clone()),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            first_timestamp: stamp.map(Time),
            last_timestamp: stamp.map(Time),
            event_time: stamp.map(MicroTime),
            count: Some(1),
            reporting_component: Some("kiln".into()),
            reporting_instance: Some("kiln-rotate".into()),
            action: Some("Rotate".into()),
            source: Some(EventSource {
                component: Some("kiln".into()),
                host: None,
            }),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("Event for {} {}", event.kind, event.name);
        self.runtime
            .block_on(api.create(&PostParams::default(), &body))
            .map(|_| ())
            .map_err(|e| {
                map_error(
                    e,
                    "create",
                    &what,
                    "the kiln-rotate Role must allow create on events",
                )
            })
    }
}
