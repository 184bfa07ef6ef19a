//! The [`Cluster`] over the Kubernetes API, with `kube`.
//!
//! - Config from the in-cluster ServiceAccount or KUBECONFIG (`kube::Config::infer`).
//! - Secret writes are a PUT of the object read, with its `metadata.resourceVersion`
//!   (a 409 means somebody wrote in between), field manager `kiln`; annotations of other
//!   owners (Argo CD's last-applied, the render stamp) are kept.
//! - A Secret that does not exist is created (POST); the rendered shells normally exist.
//! - The restart is a server-side apply of two pod-template annotations with field
//!   manager `kiln`, forced.
//! - Events go through kube's `Recorder` (`events.k8s.io/v1`, as controller-rs does), best
//!   effort.
//! - The replicas are observed over TLS ([`super::observe`]): a StatefulSet's through its
//!   per-pod DNS names, a Deployment's through the Service's EndpointSlices.
//! - The policy can come from the `kiln-config` ConfigMap ([`Connection::read_policy`]).
//!
//! The trait is synchronous; this type owns a single-threaded tokio runtime.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PodTemplateSpec, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde::Serialize;

use super::Config;
use super::apply::{Cluster, ClusterError, EventRecord, Probe, RestartWrite, SecretWrite};
use super::observe::{self, Target};
use super::state::{self, RawObservation, RawReplica, RawSecret, RawWorkload, Snapshot};
use crate::overlay::Workload;

/// kiln's field manager for writes and server-side apply.
pub const FIELD_MANAGER: &str = "kiln";
/// The ConfigMap that holds the overlay the CronJob runs with (rendered by `kiln render`).
pub const CONFIG_MAP: &str = "kiln-config";
/// Its key holding the resolved overlay YAML.
pub const CONFIG_KEY: &str = "overlay.yaml";
/// An Event's note is at most 1 kB.
const NOTE_LIMIT: usize = 1000;

/// A connection to the API server, before the policy is known.
pub struct Connection {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

/// A [`Cluster`] backed by the Kubernetes API.
pub struct KubeCluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
    config: Config,
    /// The Secrets as last read, by namespace and name, for read-modify-write.
    read: BTreeMap<(String, String), Secret>,
    /// The uid of each object read, for Event references.
    uids: BTreeMap<String, String>,
    /// The StatefulSet's `spec.replicas` and `spec.serviceName` as last read.
    statefulset: Option<(i32, String)>,
    recorder: Recorder,
    settings: observe::Settings,
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
    #[serde(skip_serializing_if = "String::is_empty")]
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

impl Connection {
    /// Connect with KUBECONFIG or the in-cluster ServiceAccount (`kube::Config::infer`).
    pub fn connect() -> Result<Self, ClusterError> {
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
        Ok(Self { runtime, client })
    }

    /// The overlay YAML in ConfigMap `kiln-config` of `namespace`; None when there is no
    /// such ConfigMap.
    pub fn read_policy(&self, namespace: &str) -> Result<Option<String>, ClusterError> {
        let what = format!("ConfigMap {namespace}/{CONFIG_MAP}");
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let found = self.runtime.block_on(api.get_opt(CONFIG_MAP)).map_err(|e| {
            map_error(
                e,
                "read",
                &what,
                &format!("the kiln-rotate Role must allow get on configmaps/{CONFIG_MAP}"),
            )
        })?;
        let Some(config_map) = found else {
            return Ok(None);
        };
        match config_map.data.and_then(|mut data| data.remove(CONFIG_KEY)) {
            Some(text) => Ok(Some(text)),
            None => Err(other(
                "read",
                &what,
                format!("it has no key {CONFIG_KEY}; render it again with kiln render"),
            )),
        }
    }
}

impl KubeCluster {
    /// A cluster view for one run's config.
    pub fn new(connection: Connection, config: &Config, settings: observe::Settings) -> Self {
        let Connection { runtime, client } = connection;
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            // In a pod, the pod name; else the controller name.
            instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            runtime,
            client,
            namespace: config.namespace.clone(),
            config: config.clone(),
            read: BTreeMap::new(),
            uids: BTreeMap::new(),
            statefulset: None,
            settings,
        }
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn what_secret(namespace: &str, name: &str) -> String {
        format!("Secret {namespace}/{name}")
    }

    fn what_workload(&self) -> String {
        let kind = match self.config.workload {
            Workload::Deployment => "Deployment",
            Workload::Statefulset => "StatefulSet",
        };
        format!("{kind} {}/{}", self.namespace, self.config.workload_name)
    }

    /// One Secret. In a tenant namespace a 403 reads as "not there" like a 404: the
    /// namespace and its Role (rendered with the tenant) do not exist yet.
    fn read_secret(&mut self, namespace: &str, name: &str) -> Result<RawSecret, ClusterError> {
        let what = Self::what_secret(namespace, name);
        let api = self.secrets(namespace);
        let key = (namespace.to_string(), name.to_string());
        let secret = match self.runtime.block_on(api.get_opt(name)) {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if status.code == 403 && namespace != self.namespace => None,
            Err(e) => {
                let hint = if namespace == self.namespace {
                    format!("the kiln-rotate Role must allow get on secrets/{name}")
                } else {
                    format!(
                        "the Role {} in namespace {namespace} must allow get on secrets/{name}",
                        crate::overlay::tenant_rbac_name(&self.namespace)
                    )
                };
                return Err(map_error(e, "read", &what, &hint));
            }
        };
        let Some(secret) = secret else {
            self.read.remove(&key);
            return Ok(RawSecret::default());
        };
        if namespace == self.namespace
            && let Some(uid) = &secret.metadata.uid
        {
            self.uids.insert(format!("Secret/{name}"), uid.clone());
        }
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
        self.read.insert(key, secret);
        Ok(raw)
    }

    fn read_workload(&mut self) -> Result<Option<RawWorkload>, ClusterError> {
        let what = self.what_workload();
        let name = self.config.workload_name.clone();
        let hint = format!(
            "the kiln-rotate Role must allow get on {}s/{name}",
            self.config.workload_kind()
        );
        let daemon_secret = self.config.daemon_secret.clone();
        let raw = |meta: &ObjectMeta, replicas: Option<i32>, template: &PodTemplateSpec| RawWorkload {
            generation: meta.generation.unwrap_or(0),
            replicas: replicas.unwrap_or(1),
            template_annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            daemon_secret_items: mounted_items(template, &daemon_secret),
            ..RawWorkload::default()
        };
        let found = match self.config.workload {
            Workload::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
                let found = self
                    .runtime
                    .block_on(api.get_opt(&name))
                    .map_err(|e| map_error(e, "read", &what, &hint))?;
                found.map(|d| {
                    let spec = d.spec.unwrap_or_default();
                    let status = d.status.unwrap_or_default();
                    let uid = d.metadata.uid.clone();
                    let workload = RawWorkload {
                        observed_generation: status.observed_generation.unwrap_or(0),
                        updated_replicas: status.updated_replicas.unwrap_or(0),
                        ready_replicas: status.ready_replicas.unwrap_or(0),
                        available_replicas: status.available_replicas.unwrap_or(0),
                        status_replicas: status.replicas.unwrap_or(0),
                        ..raw(&d.metadata, spec.replicas, &spec.template)
                    };
                    (workload, uid)
                })
            }
            Workload::Statefulset => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
                let found = self
                    .runtime
                    .block_on(api.get_opt(&name))
                    .map_err(|e| map_error(e, "read", &what, &hint))?;
                found.map(|s| {
                    let spec = s.spec.unwrap_or_default();
                    let status = s.status.unwrap_or_default();
                    let uid = s.metadata.uid.clone();
                    let service = spec.service_name.clone().unwrap_or_else(|| name.clone());
                    self.statefulset = Some((spec.replicas.unwrap_or(1), service));
                    let workload = RawWorkload {
                        observed_generation: status.observed_generation.unwrap_or(0),
                        updated_replicas: status.updated_replicas.unwrap_or(0),
                        ready_replicas: status.ready_replicas.unwrap_or(0),
                        available_replicas: status
                            .available_replicas
                            .unwrap_or(status.ready_replicas.unwrap_or(0)),
                        status_replicas: status.replicas,
                        ..raw(&s.metadata, spec.replicas, &spec.template)
                    };
                    (workload, uid)
                })
            }
        };
        Ok(found.map(|(workload, uid)| {
            if let Some(uid) = uid {
                self.uids.insert(self.workload_object(), uid);
            }
            workload
        }))
    }

    /// When the workload is missing: does one of the other kind exist under its name?
    /// Errors (the Role allows only the configured kind) count as "no".
    fn read_other_workload(&self) -> Option<&'static str> {
        let name = self.config.workload_name.as_str();
        match self.config.workload {
            Workload::Deployment => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
                matches!(self.runtime.block_on(api.get_opt(name)), Ok(Some(_))).then_some("StatefulSet")
            }
            Workload::Statefulset => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
                matches!(self.runtime.block_on(api.get_opt(name)), Ok(Some(_))).then_some("Deployment")
            }
        }
    }

    fn workload_object(&self) -> String {
        let kind = match self.config.workload {
            Workload::Deployment => "Deployment",
            Workload::Statefulset => "StatefulSet",
        };
        format!("{kind}/{}", self.config.workload_name)
    }

    /// The replicas to connect to: a StatefulSet's pods by their DNS names; a
    /// Deployment's endpoints from the Service's EndpointSlices (endpoints that are
    /// neither ready nor serving are reported as such, without a connection).
    fn targets(&self) -> Result<(Vec<Target>, Vec<RawReplica>), String> {
        let ns = &self.namespace;
        let port = self.config.port;
        let service = &self.config.workload_name;
        if self.config.workload == Workload::Statefulset {
            let (replicas, governing) = self.statefulset.clone().unwrap_or((0, service.clone()));
            let targets = (0..replicas.max(0))
                .map(|i| {
                    let pod = format!("{service}-{i}");
                    let host = format!("{pod}.{governing}.{ns}.svc");
                    Target {
                        name: pod,
                        server_name: host.clone(),
                        host,
                        port,
                    }
                })
                .collect();
            return Ok((targets, Vec::new()));
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
        let slices = self.runtime.block_on(api.list(&params)).map_err(|e| {
            map_error(
                e,
                "list",
                &format!("EndpointSlices of Service {ns}/{service}"),
                "the kiln-rotate Role must allow list on endpointslices (discovery.k8s.io)",
            )
            .to_string()
        })?;
        let mut targets = Vec::new();
        let mut not_ready = Vec::new();
        for slice in slices.items {
            let slice_port = slice
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.port)
                .find(|p| *p == i32::from(port))
                .or_else(|| {
                    slice
                        .ports
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .find_map(|p| p.port)
                })
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(port);
            for endpoint in slice.endpoints {
                let Some(address) = endpoint.addresses.first().cloned() else {
                    continue;
                };
                let name = endpoint
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| address.clone());
                let conditions = endpoint.conditions.unwrap_or_default();
                let serving = conditions.serving.or(conditions.ready).unwrap_or(true);
                if !serving {
                    not_ready.push(RawReplica {
                        name,
                        result: Err("not ready yet (its EndpointSlice says so)".into()),
                    });
                    continue;
                }
                targets.push(Target {
                    name,
                    host: address,
                    port: slice_port,
                    // The daemon certificate names the Service, not the pod address.
                    server_name: format!("{service}.{ns}.svc"),
                });
            }
        }
        Ok((targets, not_ready))
    }
}

/// The keys a pod template mounts from `secret` (its volume's `items`); None when it
/// mounts the whole Secret or does not mount it.
fn mounted_items(template: &PodTemplateSpec, secret: &str) -> Option<Vec<String>> {
    let volumes = template.spec.as_ref()?.volumes.as_ref()?;
    let source = volumes
        .iter()
        .filter_map(|v| v.secret.as_ref())
        .find(|s| s.secret_name.as_deref() == Some(secret))?;
    let items = source.items.as_ref()?;
    Some(items.iter().map(|i| i.key.clone()).collect())
}

fn capped_note(message: &str) -> String {
    if message.len() <= NOTE_LIMIT {
        return message.to_string();
    }
    let mut end = NOTE_LIMIT - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
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
        let ns = self.namespace.clone();
        let ca_name = self.config.ca_secret.clone();
        let daemon_name = self.config.daemon_secret.clone();
        let client_name = self.config.client_secret.clone();
        let ca = self.read_secret(&ns, &ca_name)?;
        let daemon = self.read_secret(&ns, &daemon_name)?;
        let namespaces: Vec<String> = self.config.client_namespaces().map(str::to_string).collect();
        let mut clients = Vec::with_capacity(namespaces.len());
        for namespace in namespaces {
            let secret = self.read_secret(&namespace, &client_name)?;
            clients.push(state::RawClient {
                namespace,
                secret,
                held: None,
            });
        }
        let workload = self.read_workload()?;
        let other_workload = if workload.is_none() {
            self.read_other_workload()
        } else {
            None
        };
        Ok(Snapshot {
            ca,
            daemon,
            clients,
            workload,
            other_workload,
        })
    }

    fn write_secret(&mut self, write: &SecretWrite) -> Result<(), ClusterError> {
        let what = Self::what_secret(&write.namespace, &write.name);
        let api = self.secrets(&write.namespace);
        let key = (write.namespace.clone(), write.name.clone());
        let tenant = write.namespace != self.namespace;
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match (&write.resource_version, self.read.get(&key)) {
            (Some(resource_version), Some(existing)) => {
                let mut secret = existing.clone();
                secret.metadata.resource_version = Some(resource_version.clone());
                secret.metadata.annotations = Some(merged_annotations(
                    secret.metadata.annotations.take(),
                    &write.annotations,
                ));
                secret.data = Some(byte_data(&write.data));
                secret.string_data = None;
                // The type is immutable: the write carries the live one.
                secret.type_ = Some(write.secret_type.clone());
                let hint = if tenant {
                    format!(
                        "the Role {} in namespace {} must allow update on secrets/{}",
                        crate::overlay::tenant_rbac_name(&self.namespace),
                        write.namespace,
                        write.name
                    )
                } else {
                    format!("the kiln-rotate Role must allow update on secrets/{}", write.name)
                };
                let written = self
                    .runtime
                    .block_on(api.replace(&write.name, &params, &secret))
                    .map_err(|e| match map_error(e, "update", &what, &hint) {
                        // Deleted since the read: re-read, then create it.
                        ClusterError::NotFound { .. } => ClusterError::Conflict { what: what.clone() },
                        err => err,
                    })?;
                self.read.insert(key, written);
            }
            _ if tenant => {
                // Never reached through the planner, which leaves absent tenants alone.
                return Err(other(
                    "create",
                    &what,
                    "kiln does not create a tenant's Secret; apply the rendered Secret shell",
                ));
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
                self.read.insert(key, written);
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
        let api_version = if event.kind == "Secret" { "v1" } else { "apps/v1" };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(event.kind.into()),
            name: Some(event.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: self.uids.get(&format!("{}/{}", event.kind, event.name)).cloned(),
            ..ObjectReference::default()
        };
        let published = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.into(),
            note: Some(capped_note(&event.message)),
            action: "Rotate".into(),
            secondary: None,
        };
        let what = format!("Event for {} {}", event.kind, event.name);
        self.runtime
            .block_on(self.recorder.publish(&published, &reference))
            .map_err(|e| {
                map_error(
                    e,
                    "create",
                    &what,
                    "the kiln-rotate Role must allow create and patch on events (events.k8s.io)",
                )
            })
    }

    fn observe(&mut self, probe: Option<&Probe>) -> RawObservation {
        let (targets, mut not_ready) = match self.targets() {
            Ok(found) => found,
            Err(error) => {
                return RawObservation {
                    replicas: Vec::new(),
                    error: Some(error),
                };
            }
        };
        let mut replicas = self
            .runtime
            .block_on(observe::probe_all(&targets, probe, &self.settings));
        replicas.append(&mut not_ready);
        RawObservation {
            replicas,
            error: None,
        }
    }
}
