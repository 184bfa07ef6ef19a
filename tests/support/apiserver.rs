//! An in-process Kubernetes API server over real HTTP (hyper), for cluster tests.
//!
//! It keeps the wire rules kiln relies on:
//! - GET (one object, or a list with `labelSelector`), POST, PUT and PATCH on Secrets,
//!   ConfigMaps, Deployments, StatefulSets, EndpointSlices (`discovery.k8s.io/v1`) and
//!   Events (core `v1` and `events.k8s.io/v1`);
//! - `metadata.resourceVersion` increments on every write that changes something (a
//!   no-op write changes nothing); a PUT whose resourceVersion is stale gets 409 Conflict;
//!   a missing object 404 NotFound; a POST of an existing one 409 AlreadyExists; every
//!   error is a `Status` body (`details.kind` is the resource, as the real server sends);
//! - PATCH with `application/merge-patch+json` (RFC 7386) and
//!   `application/apply-patch+yaml` (server-side apply);
//! - `metadata.generation` bumps when a workload's spec changes, and a built-in
//!   "controller" completes the rollout at once (unless told to stall);
//! - a Secret's `type` defaults to `Opaque` and is immutable (an update that changes it
//!   is 422 Invalid, `field is immutable`); a Secret with `immutable: true` refuses any
//!   change of its data (422 Invalid, `field is immutable when `immutable` is set`);
//! - RBAC: a Role's rules can be enforced on every request ([`Store::role`], or one Role
//!   per namespace with [`Store::roles`]), by verb,
//!   API group, resource and `resourceNames`.
//!
//! Server-side apply keeps real field ownership, after structured-merge-diff:
//! - every write records its manager in `metadata.managedFields` (`fieldsV1`): Apply
//!   entries per manager, Update entries per manager and apiVersion (POST, PUT and merge
//!   patches are Updates; the manager is `fieldManager`, else the User-Agent's first
//!   word, else `unknown`);
//! - an Update takes over the fields whose value it changed; an Apply owns exactly the
//!   fields of its configuration, and ownership of an unchanged value is shared;
//! - an Apply that changes a value another manager owns fails with 409 and a
//!   `FieldManagerConflict` cause per field naming that manager, unless `force=true`,
//!   which takes the fields over;
//! - fields a manager stops applying are removed unless another manager owns them.
//!
//! Simplifications, stated: maps (`data`, `labels`, `annotations`, `spec`, …) are
//! granular per key, every list is atomic (the real server merges `containers` by name),
//! `status` is never owned, and an Update's set is per changed leaf (the real one also
//! marks newly created maps).
//!
//! Fault injection: fail the next writes with given codes, forbid a verb on a resource,
//! or "crash" (answer 503 to everything) after the k-th successful write.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// A (resource, namespace, name) key. Resources: `secrets`, `configmaps`, `events`,
/// `deployments`, `statefulsets`, `endpointslices` and `events.events.k8s.io`.
type Key = (String, String, String);

/// A field path from the object's root: `["data", "ca.crt"]`.
type FieldPath = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    /// The field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: &'static str,
    /// The apiVersion it wrote with.
    pub api_version: String,
    /// The fields it owns.
    pub fields: BTreeSet<FieldPath>,
}

impl Manager {
    /// Apply entries are one per manager; Update entries one per manager and apiVersion.
    fn same_identity(&self, manager: &str, operation: &str, api_version: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && (operation == "Apply" || self.api_version == api_version)
    }

    fn describe(&self) -> String {
        if self.operation == "Apply" {
            format!("{:?}", self.manager)
        } else {
            format!("{:?} using {}", self.manager, self.api_version)
        }
    }
}

/// The server's state, shared with the test.
#[derive(Default)]
pub struct Store {
    /// Objects as JSON. Field ownership lives in their `metadata.managedFields`, so
    /// saving and restoring `objects` saves and restores it too.
    pub objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out.
    pub resource_version: u64,
    /// Every request: "METHOD path" (with `?query` when there is one).
    pub log: Vec<String>,
    /// Successful writes that changed something (POST/PUT/PATCH; Events excluded).
    pub writes: usize,
    /// The next writes fail with these HTTP codes (409 or 5xx), one per write.
    pub fail_writes: VecDeque<u16>,
    /// `(verb, resource)` pairs answered 403, such as `("create", "secrets")`.
    pub forbidden: Vec<(String, String)>,
    /// When set, every request must be allowed by these Role rules (RBAC `PolicyRule`s
    /// as JSON), or it is answered 403.
    pub role: Option<Vec<Value>>,
    /// Per-namespace Roles: a request in a namespace listed here must be allowed by its
    /// rules (instead of [`Store::role`]); a namespace mapped to no rules is answered 403
    /// for everything, as when its Role does not exist.
    pub roles: BTreeMap<String, Vec<Value>>,
    /// After this many successful writes the server answers 503 to everything.
    pub crash_after: Option<usize>,
    /// Leave workload rollouts incomplete.
    pub stall_rollouts: bool,
    /// Answer 409 to the first write of every object (by path).
    pub conflict_first_write: bool,
    /// Paths already written once (for `conflict_first_write`).
    pub written_paths: BTreeSet<String>,
}

/// A running server. Dropping it stops the server thread.
pub struct ApiServer {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    store: Arc<Mutex<Store>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One API resource this server knows.
struct Resource {
    /// The store key's resource.
    key: &'static str,
    /// The URL's plural.
    plural: &'static str,
    /// The API group ("" for core).
    group: &'static str,
    /// The apiVersion of its objects.
    api_version: &'static str,
    kind: &'static str,
}

const RESOURCES: &[Resource] = &[
    Resource {
        key: "secrets",
        plural: "secrets",
        group: "",
        api_version: "v1",
        kind: "Secret",
    },
    Resource {
        key: "configmaps",
        plural: "configmaps",
        group: "",
        api_version: "v1",
        kind: "ConfigMap",
    },
    Resource {
        key: "events",
        plural: "events",
        group: "",
        api_version: "v1",
        kind: "Event",
    },
    Resource {
        key: "deployments",
        plural: "deployments",
        group: "apps",
        api_version: "apps/v1",
        kind: "Deployment",
    },
    Resource {
        key: "statefulsets",
        plural: "statefulsets",
        group: "apps",
        api_version: "apps/v1",
        kind: "StatefulSet",
    },
    Resource {
        key: "endpointslices",
        plural: "endpointslices",
        group: "discovery.k8s.io",
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
    },
    Resource {
        key: "events.events.k8s.io",
        plural: "events",
        group: "events.k8s.io",
        api_version: "events.k8s.io/v1",
        kind: "Event",
    },
];

fn resource(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.key == key)
}

impl Resource {
    fn is_event(&self) -> bool {
        self.kind == "Event"
    }

    fn is_workload(&self) -> bool {
        self.group == "apps"
    }

    /// `secrets`, `deployments.apps`: how the real server names a resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn status(code: u16, reason: &str, message: String, details: Value) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }),
    )
}

fn object_status(code: u16, reason: &str, message: String, r: &Resource, name: &str) -> (u16, Value) {
    let mut details = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    status(code, reason, message, details)
}

/// The 409 of a write whose resourceVersion is stale.
fn modified(r: &Resource, name: &str) -> (u16, Value) {
    object_status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            r.qualified()
        ),
        r,
        name,
    )
}

fn not_found(r: &Resource, name: &str) -> (u16, Value) {
    object_status(
        404,
        "NotFound",
        format!("{} {name:?} not found", r.qualified()),
        r,
        name,
    )
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().expect("object");
            for (key, value) in fields {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

// ------------------------------------------------------------ field ownership

/// Fields that are never owned (structured-merge-diff strips them from every set).
fn untracked(path: &[String]) -> bool {
    match path {
        [first] => first == "apiVersion" || first == "kind" || first == "status",
        [first, ..] if first == "status" => true,
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Every owned leaf of `value`: scalars, lists (atomic) and empty maps.
pub fn leaves(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        if untracked(path) {
            return;
        }
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// Remove the field at `path`, and maps left empty by it.
fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(parent) = parents
        .iter()
        .try_fold(&mut *value, |v, key| v.get_mut(key))
        .and_then(Value::as_object_mut)
    {
        parent.remove(last);
        if parent.is_empty() && !parents.is_empty() {
            remove_path(value, parents);
        }
    }
}

/// Apply merge: maps merge key by key, anything else is replaced by the configuration.
fn apply_merge(target: &mut Value, config: &Value) {
    match (target.as_object_mut(), config) {
        (Some(map), Value::Object(fields)) => {
            for (key, value) in fields {
                match map.get_mut(key) {
                    Some(existing) => apply_merge(existing, value),
                    None => {
                        map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *target = config.clone(),
    }
}

/// True when two paths overlap (one is a prefix of the other).
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// `.data.ca.crt`, as the real server prints a field path.
fn dotted(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// A field ownership conflict: the 409 body.
fn conflict_status(conflicts: &BTreeMap<String, Vec<FieldPath>>) -> (u16, Value) {
    let count: usize = conflicts.values().map(Vec::len).sum();
    let mut causes = Vec::new();
    for (manager, paths) in conflicts {
        for path in paths {
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {manager}"),
                "field": dotted(path),
            }));
        }
    }
    let message = if count == 1 {
        let (manager, paths) = conflicts.iter().next().expect("one conflict");
        format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            dotted(&paths[0])
        )
    } else {
        let mut lines = vec![format!("Apply failed with {count} conflicts:")];
        for (manager, paths) in conflicts {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.iter().map(|p| format!("- {}", dotted(p))));
        }
        lines.join("\n")
    };
    status(409, "Conflict", message, json!({"causes": causes}))
}

/// An Update (POST, PUT, merge patch) by `manager`: it takes over every field whose
/// value it changed; removed fields leave every set.
fn record_update(
    managers: &mut Vec<Manager>,
    live: Option<&Value>,
    new: &Value,
    manager: &str,
    api_version: &str,
) {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let new_leaves = leaves(new);
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|p| lookup(live, p) != lookup(new, p))
        .cloned()
        .collect();
    let removed: BTreeSet<FieldPath> = leaves(live)
        .into_iter()
        .filter(|p| lookup(new, p).is_none())
        .collect();
    for m in managers.iter_mut() {
        m.fields
            .retain(|p| !changed.iter().chain(&removed).any(|q| overlaps(p, q)));
    }
    let index = match managers
        .iter()
        .position(|m| m.same_identity(manager, "Update", api_version))
    {
        Some(index) => index,
        None => {
            managers.push(Manager {
                manager: manager.to_string(),
                operation: "Update",
                api_version: api_version.to_string(),
                fields: BTreeSet::new(),
            });
            managers.len() - 1
        }
    };
    managers[index].fields.extend(changed);
    managers.retain(|m| !m.fields.is_empty());
}

/// A server-side apply of `config` by `manager` over `live` (None: create). Returns the
/// new object, or the 409 conflict.
fn server_side_apply(
    managers: &mut Vec<Manager>,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, (u16, Value)> {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let applied = leaves(config);
    let mut new = live.clone();
    apply_merge(&mut new, config);
    let mine = managers
        .iter()
        .position(|m| m.same_identity(manager, "Apply", api_version));
    let previous = mine.map(|i| managers[i].fields.clone()).unwrap_or_default();
    // Fields this manager stopped applying go, unless someone else owns them.
    for path in previous.difference(&applied) {
        let owned_elsewhere = managers
            .iter()
            .enumerate()
            .any(|(i, m)| Some(i) != mine && m.fields.contains(path));
        if !owned_elsewhere {
            remove_path(&mut new, path);
        }
    }
    let changed: Vec<FieldPath> = applied
        .iter()
        .filter(|p| lookup(live, p) != lookup(&new, p))
        .cloned()
        .collect();
    let mut conflicts: BTreeMap<String, Vec<FieldPath>> = BTreeMap::new();
    for (i, m) in managers.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        let hits: Vec<FieldPath> = m
            .fields
            .iter()
            .filter(|p| changed.iter().any(|q| overlaps(p, q)))
            .cloned()
            .collect();
        if !hits.is_empty() {
            conflicts.entry(m.describe()).or_default().extend(hits);
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_status(&conflicts));
    }
    for (i, m) in managers.iter_mut().enumerate() {
        if Some(i) != mine {
            m.fields.retain(|p| !changed.iter().any(|q| overlaps(p, q)));
        }
    }
    match mine {
        Some(i) => managers[i].fields = applied,
        None => managers.push(Manager {
            manager: manager.to_string(),
            operation: "Apply",
            api_version: api_version.to_string(),
            fields: applied,
        }),
    }
    // Fields that no longer exist leave every set.
    let present = leaves(&new);
    for m in managers.iter_mut() {
        m.fields.retain(|p| present.contains(p));
    }
    managers.retain(|m| !m.fields.is_empty());
    Ok(new)
}

/// `fieldsV1`: the trie of `{"f:<name>": {...}}` with `{}` leaves.
fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = json!({});
    for path in fields {
        let mut node = &mut root;
        for key in path {
            node = node
                .as_object_mut()
                .expect("trie node")
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}));
        }
    }
    root
}

/// Decode a `fieldsV1` trie back into paths (for the tests of this server).
pub fn decode_fields_v1(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(map) = value.as_object() else { return };
        let children: Vec<_> = map.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (key, child) in children {
            path.push(key["f:".len()..].to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// The managers recorded in an object's `metadata.managedFields`.
pub fn managers_of(object: &Value) -> Vec<Manager> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| Manager {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    operation: if e["operation"] == "Apply" {
                        "Apply"
                    } else {
                        "Update"
                    },
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                    fields: decode_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn managed_fields_json(managers: &[Manager]) -> Value {
    let mut sorted: Vec<&Manager> = managers.iter().collect();
    sorted.sort_by(|a, b| {
        (a.operation, &a.manager, &a.api_version).cmp(&(b.operation, &b.manager, &b.api_version))
    });
    Value::Array(
        sorted
            .into_iter()
            .map(|m| {
                json!({
                    "manager": m.manager,
                    "operation": m.operation,
                    "apiVersion": m.api_version,
                    "time": "2027-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&m.fields),
                })
            })
            .collect(),
    )
}

/// The object without the fields that change on every write, for no-op detection.
fn content(value: &Value) -> Value {
    let mut v = value.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    v
}

// ------------------------------------------------------------------- server

impl ApiServer {
    /// One raw HTTP/1.1 request with a JSON body, as no client library would send it (to
    /// test the server's own rules); the response body as JSON.
    pub fn raw(&self, method: &str, path: &str, content_type: &str, body: &Value) -> Value {
        use std::io::{Read, Write};
        let body = body.to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, json) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(json).unwrap_or_else(|_| panic!("{response}"))
    }

    /// Start a server on an ephemeral port.
    pub fn start() -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = store.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let store = shared.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let store = store.clone();
                                    async move { Ok::<_, Infallible>(handle(&store, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Self {
            port,
            store,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Lock the store to inspect or arrange state and faults.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Write a kubeconfig for this server into `dir` and return its path; `namespace`
    /// is the context's namespace (None: the context names none).
    pub fn kubeconfig_with(&self, dir: &std::path::Path, namespace: Option<&str>) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let namespace = namespace
            .map(|ns| format!("    namespace: {ns}\n"))
            .unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n{namespace}current-context: test\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Write a kubeconfig for this server into `dir`, context namespace `namespace`.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
        self.kubeconfig_with(dir, Some(namespace))
    }

    /// Put an object in place (no resourceVersion rules; for arranging a test). Its
    /// fields are owned by the Update manager `test-setup`, as if a tool had created it.
    pub fn insert(&self, resource: &str, namespace: &str, mut object: Value) {
        let mut store = self.store();
        store.resource_version += 1;
        let rv = store.resource_version.to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        object["metadata"]["resourceVersion"] = json!(rv);
        object["metadata"]["namespace"] = json!(namespace);
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let is_workload = resource == "deployments" || resource == "statefulsets";
        if is_workload && object["metadata"]["generation"].is_null() {
            object["metadata"]["generation"] = json!(1);
        }
        let key = (resource.to_string(), namespace.to_string(), name);
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let mut managers = Vec::new();
        record_update(&mut managers, None, &object, "test-setup", &api_version);
        object["metadata"]["managedFields"] = managed_fields_json(&managers);
        store.objects.insert(key, object);
        if is_workload {
            settle(&mut store);
        }
    }

    /// An object, if present.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store()
            .objects
            .get(&(resource.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The field managers of an object.
    pub fn managers(&self, resource: &str, namespace: &str, name: &str) -> Vec<Manager> {
        self.get(resource, namespace, name)
            .map(|o| managers_of(&o))
            .unwrap_or_default()
    }

    /// The decoded `data` of a Secret.
    pub fn secret_data(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        use base64::Engine;
        let Some(secret) = self.get("secrets", namespace, name) else {
            return BTreeMap::new();
        };
        secret["data"]
            .as_object()
            .map(|data| {
                data.iter()
                    .map(|(k, v)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str().unwrap_or_default())
                            .unwrap_or_default();
                        (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every Event stored (core and events.k8s.io).
    pub fn events(&self) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|((resource, _, _), _)| resource.starts_with("events"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A copy of every object but Events.
    pub fn snapshot(&self) -> BTreeMap<Key, Value> {
        self.store()
            .objects
            .iter()
            .filter(|((resource, _, _), _)| !resource.starts_with("events"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The built-in controller: complete every workload's rollout, unless stalled.
fn settle(store: &mut Store) {
    let stall = store.stall_rollouts;
    for ((resource, _, _), object) in store.objects.iter_mut() {
        if resource != "deployments" && resource != "statefulsets" {
            continue;
        }
        let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
        object["status"] = if stall {
            json!({
                "observedGeneration": generation,
                "replicas": replicas + 1,
                "updatedReplicas": 0,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            })
        } else {
            json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            })
        };
    }
}

fn respond(code: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Parse `/api/v1/namespaces/{ns}/{plural}[/{name}]` or `/apis/{group}/{version}/…`.
fn route(path: &str) -> Option<(&'static Resource, String, Option<String>)> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        ("", rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let (group, rest) = rest.split_once('/')?;
        let (_version, rest) = rest.split_once('/')?;
        (group, rest.strip_prefix("namespaces/")?)
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, plural, name) = match parts.as_slice() {
        [ns, plural] => (*ns, *plural, None),
        [ns, plural, name] => (*ns, *plural, Some(name.to_string())),
        _ => return None,
    };
    let r = RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)?;
    Some((r, ns.to_string(), name))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 3 <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An equality-based label selector: `a=b,c==d,e!=f,g`.
fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k).and_then(Value::as_str) != Some(v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels.get(k).and_then(Value::as_str) == Some(v)
            } else {
                labels.get(term).is_some()
            }
        })
}

/// Does one of the Role's rules allow this request?
fn role_allows(rules: &[Value], group: &str, resource: &str, name: Option<&str>, verb: &str) -> bool {
    let has = |list: &Value, item: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == item || v == "*"))
    };
    rules.iter().any(|rule| {
        has(&rule["apiGroups"], group)
            && has(&rule["resources"], resource)
            && has(&rule["verbs"], verb)
            && match (&rule["resourceNames"], name) {
                (Value::Null, _) => true,
                (Value::Array(names), _) if names.is_empty() => true,
                (names, Some(name)) => has(names, name),
                (_, None) => false,
            }
    })
}

async fn handle(store: &Arc<Mutex<Store>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let user_agent = header(hyper::header::USER_AGENT);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    store.log.push(if query.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}?{query}")
    });
    let request = Call {
        method: &method,
        path: &path,
        query: &query,
        content_type: &content_type,
        user_agent: &user_agent,
        body: &body,
    };
    let (code, value) = serve(&mut store, &request);
    respond(code, &value)
}

struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    content_type: &'a str,
    user_agent: &'a str,
    body: &'a [u8],
}

impl Call<'_> {
    /// The manager of a non-apply write: fieldManager, else the User-Agent's first word.
    fn manager(&self) -> String {
        query_param(self.query, "fieldManager")
            .filter(|m| !m.is_empty())
            .or_else(|| {
                let agent = self.user_agent.split('/').next().unwrap_or_default();
                (!agent.is_empty()).then(|| agent.to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    }
}

fn serve(store: &mut Store, call: &Call) -> (u16, Value) {
    if store.crash_after.is_some_and(|k| store.writes >= k) {
        return status(
            503,
            "ServiceUnavailable",
            "injected crash: the server is gone".into(),
            json!({}),
        );
    }
    let Some((r, ns, name)) = route(call.path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {}", call.path),
            json!({}),
        );
    };
    let verb = match (call.method, &name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                format!("{} {} is not supported", call.method, call.path),
                json!({}),
            );
        }
    };
    let shown_name = name.clone().unwrap_or_default();
    let denied = |verb: &str| {
        object_status(
            403,
            "Forbidden",
            format!(
                "{} {shown_name:?} is forbidden: User \"system:serviceaccount:{ns}:kiln-rotate\" cannot {verb} resource {:?} in API group {:?} in the namespace {ns:?}",
                r.qualified(),
                r.plural,
                r.group
            ),
            r,
            &shown_name,
        )
    };
    if store.forbidden.iter().any(|(v, res)| v == verb && res == r.key) {
        return denied(verb);
    }
    if let Some(rules) = store.roles.get(&ns).or(store.role.as_ref())
        && !role_allows(rules, r.group, r.plural, name.as_deref(), verb)
    {
        return denied(verb);
    }
    let is_write = !matches!(verb, "get" | "list") && !r.is_event();
    if is_write && store.conflict_first_write && store.written_paths.insert(call.path.to_string()) {
        return object_status(
            409,
            "Conflict",
            format!("injected conflict on the first write of {}", call.path),
            r,
            &shown_name,
        );
    }
    if is_write && let Some(code) = store.fail_writes.pop_front() {
        let reason = if code == 409 { "Conflict" } else { "InternalError" };
        return object_status(code, reason, format!("injected HTTP {code}"), r, &shown_name);
    }
    let result = match (verb, name) {
        ("get", Some(name)) => match store.objects.get(&(r.key.to_string(), ns.clone(), name.clone())) {
            Some(object) => (200, object.clone()),
            None => not_found(r, &name),
        },
        ("list", None) => list(store, r, &ns, call.query),
        ("create", None) => create(store, r, &ns, call),
        ("update", Some(name)) => update(store, r, &ns, &name, call),
        ("patch", Some(name)) => patch(store, r, &ns, &name, call),
        _ => status(405, "MethodNotAllowed", "unsupported".into(), json!({})),
    };
    if r.is_workload() && result.0 < 300 {
        settle(store);
        if let Some(name) = result.1["metadata"]["name"].as_str() {
            let key = (r.key.to_string(), ns.clone(), name.to_string());
            if let Some(settled) = store.objects.get(&key) {
                return (result.0, settled.clone());
            }
        }
    }
    result
}

fn list(store: &Store, r: &Resource, ns: &str, query: &str) -> (u16, Value) {
    let selector = query_param(query, "labelSelector").unwrap_or_default();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((res, n, _), _)| res == r.key && n == ns)
        .map(|(_, v)| v)
        .filter(|v| selector_matches(&selector, &v["metadata"]["labels"]))
        .cloned()
        .collect();
    (
        200,
        json!({
            "apiVersion": r.api_version,
            "kind": format!("{}List", r.kind),
            "metadata": {"resourceVersion": store.resource_version.to_string()},
            "items": items,
        }),
    )
}

fn parse_json(r: &Resource, name: &str, body: &[u8]) -> Result<Value, (u16, Value)> {
    serde_json::from_slice(body)
        .map_err(|e| object_status(400, "BadRequest", format!("invalid JSON: {e}"), r, name))
}

/// Store a write: new resourceVersion, managedFields, generation. A write that changes
/// nothing (content and owners alike) is not stored and bumps nothing.
fn commit(
    store: &mut Store,
    key: Key,
    mut object: Value,
    mut managers: Vec<Manager>,
    code: u16,
) -> (u16, Value) {
    managers.sort_by(|a, b| {
        (a.operation, &a.manager, &a.api_version).cmp(&(b.operation, &b.manager, &b.api_version))
    });
    let current = store.objects.get(&key).cloned();
    if let Some(current) = &current
        && content(current) == content(&object)
        && managers_of(current) == managers
    {
        return (200, current.clone());
    }
    store.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
    object["metadata"]["managedFields"] = managed_fields_json(&managers);
    if let Some(current) = &current {
        object["metadata"]["uid"] = current["metadata"]["uid"].clone();
        object["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
        let generation = current["metadata"]["generation"].as_i64();
        if let Some(generation) = generation {
            let changed = current.get("spec") != object.get("spec");
            object["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
        }
        // The status belongs to the status subresource: a write to the object keeps it.
        if let Some(status) = current.get("status") {
            object["status"] = status.clone();
        }
    }
    let is_event = key.0.starts_with("events");
    store.objects.insert(key, object.clone());
    if !is_event {
        store.writes += 1;
    }
    (code, object)
}

/// Fields a create fills in.
fn created(store: &Store, r: &Resource, ns: &str, object: &mut Value) {
    object["metadata"]["namespace"] = json!(ns);
    // The real server defaults a Secret's type.
    if r.key == "secrets" && object.get("type").is_none_or(Value::is_null) {
        object["type"] = json!("Opaque");
    }
    object["metadata"]["uid"] = json!(format!("uid-{}", store.resource_version + 1));
    if r.is_workload() && object["metadata"]["generation"].is_null() {
        object["metadata"]["generation"] = json!(1);
    }
}

fn create(store: &mut Store, r: &Resource, ns: &str, call: &Call) -> (u16, Value) {
    let mut object = match parse_json(r, "", call.body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return object_status(422, "Invalid", "metadata.name: Required value".into(), r, "");
    }
    let key = (r.key.to_string(), ns.to_string(), name.clone());
    if store.objects.contains_key(&key) {
        return object_status(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", r.qualified()),
            r,
            &name,
        );
    }
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    created(store, r, ns, &mut object);
    let mut managers = Vec::new();
    record_update(&mut managers, None, &object, &call.manager(), r.api_version);
    commit(store, key, object, managers, 201)
}

fn update(store: &mut Store, r: &Resource, ns: &str, name: &str, call: &Call) -> (u16, Value) {
    let key = (r.key.to_string(), ns.to_string(), name.to_string());
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found(r, name);
    };
    let object = match parse_json(r, name, call.body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let sent = object["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let have = current["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    if sent.is_some() && sent != have {
        return modified(r, name);
    }
    if let Some(invalid) = secret_update_invalid(r, name, &current, &object) {
        return invalid;
    }
    let managers = managers_of(&current);
    commit_update(store, r, key, &current, object, managers, call)
}

fn patch(store: &mut Store, r: &Resource, ns: &str, name: &str, call: &Call) -> (u16, Value) {
    let key = (r.key.to_string(), ns.to_string(), name.to_string());
    let current = store.objects.get(&key).cloned();
    let mut managers = current.as_ref().map(managers_of).unwrap_or_default();
    if call.content_type.starts_with("application/apply-patch") {
        let Some(manager) = query_param(call.query, "fieldManager").filter(|m| !m.is_empty()) else {
            return status(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
                    .into(),
                json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{
                    "reason": "FieldValueRequired",
                    "message": "Required value: is required for apply patch",
                    "field": "fieldManager",
                }]}),
            );
        };
        let force = query_param(call.query, "force").as_deref() == Some("true");
        let text = String::from_utf8_lossy(call.body);
        let mut config = match kiln::yaml::from_str::<Value>(&text, "apply patch") {
            Ok(v) => v,
            Err(e) => return object_status(400, "BadRequest", e.to_string(), r, name),
        };
        if config["apiVersion"].as_str() != Some(r.api_version) {
            return object_status(
                400,
                "BadRequest",
                format!(
                    "Incorrect version specified in apply patch. Specified patch version: {}, expected: {}",
                    config["apiVersion"].as_str().unwrap_or_default(),
                    r.api_version
                ),
                r,
                name,
            );
        }
        if !config["metadata"]["managedFields"].is_null() {
            return object_status(
                400,
                "BadRequest",
                "metadata.managedFields must be nil".into(),
                r,
                name,
            );
        }
        // A resourceVersion in the configuration is a precondition.
        if let Some(sent) = config["metadata"]["resourceVersion"].as_str()
            && current
                .as_ref()
                .and_then(|c| c["metadata"]["resourceVersion"].as_str())
                != Some(sent)
        {
            return modified(r, name);
        }
        if let Some(meta) = config["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        if current.is_none() {
            // Apply creates, when the object would be valid and create is allowed.
            if store
                .forbidden
                .iter()
                .any(|(v, res)| v == "create" && res == r.key)
                || store
                    .roles
                    .get(ns)
                    .or(store.role.as_ref())
                    .is_some_and(|rules| !role_allows(rules, r.group, r.plural, None, "create"))
            {
                return object_status(
                    403,
                    "Forbidden",
                    format!(
                        "{} {name:?} is forbidden: cannot create resource {:?}",
                        r.qualified(),
                        r.plural
                    ),
                    r,
                    name,
                );
            }
            if r.is_workload()
                && (config["spec"]["selector"].is_null()
                    || config["spec"]["template"]["spec"]["containers"].is_null())
            {
                return object_status(
                    422,
                    "Invalid",
                    format!(
                        "{} {name:?} is invalid: spec.selector: Required value, spec.template.spec.containers: Required value",
                        r.kind
                    ),
                    r,
                    name,
                );
            }
        }
        let mut object = match server_side_apply(
            &mut managers,
            current.as_ref(),
            &config,
            &manager,
            r.api_version,
            force,
        ) {
            Ok(object) => object,
            Err(conflict) => return conflict,
        };
        let code = match &current {
            None => {
                created(store, r, ns, &mut object);
                object["metadata"]["name"] = json!(name);
                201
            }
            Some(current) => {
                if let Some(invalid) = secret_update_invalid(r, name, current, &object) {
                    return invalid;
                }
                200
            }
        };
        return commit(store, key, object, managers, code);
    }
    let Some(current) = current else {
        return not_found(r, name);
    };
    if !call.content_type.starts_with("application/merge-patch+json") {
        return object_status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {})",
                call.content_type
            ),
            r,
            name,
        );
    }
    let patch: Value = match parse_json(r, name, call.body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut object = current.clone();
    merge_patch(&mut object, &patch);
    if let Some(invalid) = secret_update_invalid(r, name, &current, &object) {
        return invalid;
    }
    commit_update(store, r, key, &current, object, managers, call)
}

/// A Secret's `type` is immutable: an update that changes it is 422 Invalid. So is any
/// change to the data of a Secret marked `immutable: true`.
fn secret_update_invalid(r: &Resource, name: &str, current: &Value, object: &Value) -> Option<(u16, Value)> {
    if r.key != "secrets" {
        return None;
    }
    let invalid = |field: &str| {
        object_status(
            422,
            "Invalid",
            format!("Secret {name:?} is invalid: {field}"),
            r,
            name,
        )
    };
    if current.get("type") != object.get("type") {
        return Some(invalid("type: Invalid value: field is immutable"));
    }
    let frozen = current["immutable"] == Value::Bool(true);
    if frozen && (current.get("data") != object.get("data") || object["immutable"] != Value::Bool(true)) {
        return Some(invalid(
            "data: Forbidden: field is immutable when `immutable` is set",
        ));
    }
    None
}

/// Store an Update (PUT or merge patch): the managedFields the client sent back are the
/// server's to keep, and the caller takes over the fields it changed.
fn commit_update(
    store: &mut Store,
    r: &Resource,
    key: Key,
    current: &Value,
    mut object: Value,
    mut managers: Vec<Manager>,
    call: &Call,
) -> (u16, Value) {
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    record_update(
        &mut managers,
        Some(current),
        &object,
        &call.manager(),
        r.api_version,
    );
    commit(store, key, object, managers, 200)
}
