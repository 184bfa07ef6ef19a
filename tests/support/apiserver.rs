//! An in-process Kubernetes API server over real HTTP (hyper), for cluster tests.
//!
//! It keeps the wire rules kiln relies on:
//! - GET, POST, PUT and PATCH on Secrets, Deployments and StatefulSets; POST on Events;
//! - `metadata.resourceVersion` increments on every write; a PUT whose resourceVersion
//!   is stale gets 409 Conflict; a missing object 404 NotFound; a POST of an existing
//!   one 409 AlreadyExists; every error is a `Status` body;
//! - PATCH with `application/merge-patch+json` (RFC 7386) and
//!   `application/apply-patch+yaml` (server-side apply: `fieldManager` required, the
//!   manager recorded in `metadata.managedFields`);
//! - `metadata.generation` bumps when a workload's spec changes, and a built-in
//!   "controller" completes the rollout at once (unless told to stall).
//!
//! Fault injection: fail the next writes with given codes, forbid a verb on a resource,
//! or "crash" (answer 503 to everything) after the k-th successful write.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// A (resource, namespace, name) key; resource is `secrets`, `deployments`, `statefulsets`, `events`.
type Key = (String, String, String);

/// The server's state, shared with the test.
#[derive(Default)]
pub struct Store {
    /// Objects as JSON.
    pub objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out.
    pub resource_version: u64,
    /// Every request: "METHOD path".
    pub log: Vec<String>,
    /// Successful writes (POST/PUT/PATCH; Events excluded).
    pub writes: usize,
    /// The next writes fail with these HTTP codes (409 or 5xx), one per write.
    pub fail_writes: VecDeque<u16>,
    /// `(verb, resource)` pairs answered 403, such as `("create", "secrets")`.
    pub forbidden: Vec<(String, String)>,
    /// After this many successful writes the server answers 503 to everything.
    pub crash_after: Option<usize>,
    /// Leave workload rollouts incomplete.
    pub stall_rollouts: bool,
    /// Answer 409 to the first write of every object (by path).
    pub conflict_first_write: bool,
    /// Paths already written once (for `conflict_first_write`).
    pub written_paths: std::collections::BTreeSet<String>,
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

fn status(code: u16, reason: &str, message: String, kind: &str, name: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {"name": name, "kind": kind},
            "code": code,
        }),
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

impl ApiServer {
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

    /// Write a kubeconfig for this server into `dir` and return its path.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Put an object in place (no resourceVersion rules; for arranging a test).
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
        if resource != "secrets" && object["metadata"]["generation"].is_null() {
            object["metadata"]["generation"] = json!(1);
        }
        store
            .objects
            .insert((resource.into(), namespace.into(), name), object);
        if resource != "secrets" {
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

    /// Every Event stored.
    pub fn events(&self) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|((resource, _, _), _)| resource == "events")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A copy of every Secret, Deployment and StatefulSet (not Events).
    pub fn snapshot(&self) -> BTreeMap<Key, Value> {
        self.store()
            .objects
            .iter()
            .filter(|((resource, _, _), _)| resource != "events")
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
        if stall {
            object["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas + 1,
                "updatedReplicas": 0,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            });
        } else {
            object["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            });
        }
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

/// Parse `/api/v1/namespaces/{ns}/{resource}[/{name}]` or the apps/v1 form.
fn route(path: &str) -> Option<(String, String, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")
        .or_else(|| path.strip_prefix("/apis/apps/v1/namespaces/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, resource] => Some((resource.to_string(), ns.to_string(), None)),
        [ns, resource, name] => Some((resource.to_string(), ns.to_string(), Some(name.to_string()))),
        _ => None,
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "secrets" => "Secret",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "events" => "Event",
        _ => "Unknown",
    }
}

async fn handle(store: &Arc<Mutex<Store>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    store.log.push(format!("{method} {path}"));
    let (code, value) = serve(&mut store, &method, &path, &query, &content_type, &body);
    respond(code, &value)
}

fn serve(
    store: &mut Store,
    method: &Method,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    if store.crash_after.is_some_and(|k| store.writes >= k) {
        return status(
            503,
            "ServiceUnavailable",
            "injected crash: the server is gone".into(),
            "",
            "",
        );
    }
    let Some((resource, ns, name)) = route(path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
            "",
            "",
        );
    };
    let kind = kind_of(&resource);
    if kind == "Unknown" {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
            "",
            "",
        );
    }
    let verb = match *method {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        _ => {
            return status(
                405,
                "MethodNotAllowed",
                format!("method {method} is not allowed"),
                kind,
                "",
            );
        }
    };
    let shown_name = name.clone().unwrap_or_default();
    if store.forbidden.iter().any(|(v, r)| v == verb && *r == resource) {
        return status(
            403,
            "Forbidden",
            format!(
                "{resource} \"{shown_name}\" is forbidden: User \"system:serviceaccount:{ns}:kiln-rotate\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{ns}\""
            ),
            kind,
            &shown_name,
        );
    }
    let is_write = verb != "get" && resource != "events";
    if is_write && store.conflict_first_write && store.written_paths.insert(path.to_string()) {
        return status(
            409,
            "Conflict",
            format!("injected conflict on the first write of {path}"),
            kind,
            &shown_name,
        );
    }
    if is_write && let Some(code) = store.fail_writes.pop_front() {
        let reason = if code == 409 { "Conflict" } else { "InternalError" };
        return status(code, reason, format!("injected HTTP {code}"), kind, &shown_name);
    }
    let result = match (verb, name) {
        ("get", Some(name)) => match store.objects.get(&(resource.clone(), ns.clone(), name.clone())) {
            Some(object) => (200, object.clone()),
            None => status(
                404,
                "NotFound",
                format!("{resource} \"{name}\" not found"),
                kind,
                &name,
            ),
        },
        ("create", None) => {
            let mut object: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", format!("invalid JSON: {e}"), kind, ""),
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                return status(422, "Invalid", "metadata.name: Required value".into(), kind, "");
            }
            let key = (resource.clone(), ns.clone(), name.clone());
            if store.objects.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{resource} \"{name}\" already exists"),
                    kind,
                    &name,
                );
            }
            store.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["uid"] = json!(format!("uid-{}", store.resource_version));
            store.objects.insert(key, object.clone());
            (201, object)
        }
        ("update", Some(name)) => {
            let key = (resource.clone(), ns.clone(), name.clone());
            let Some(current) = store.objects.get(&key).cloned() else {
                return status(
                    404,
                    "NotFound",
                    format!("{resource} \"{name}\" not found"),
                    kind,
                    &name,
                );
            };
            let mut object: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", format!("invalid JSON: {e}"), kind, &name),
            };
            let sent = object["metadata"]["resourceVersion"].as_str().map(str::to_string);
            let have = current["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            if sent.is_some() && sent != have {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                    kind,
                    &name,
                );
            }
            if current.get("type") != object.get("type") && resource == "secrets" {
                return status(
                    422,
                    "Invalid",
                    format!("{kind} \"{name}\" is invalid: type: Invalid value: field is immutable"),
                    kind,
                    &name,
                );
            }
            store.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
            bump_generation(&current, &mut object);
            store.objects.insert(key, object.clone());
            (200, object)
        }
        ("patch", Some(name)) => {
            let key = (resource.clone(), ns.clone(), name.clone());
            let Some(current) = store.objects.get(&key).cloned() else {
                let (code, reason) = if content_type.starts_with("application/apply-patch") {
                    (422, "Invalid")
                } else {
                    (404, "NotFound")
                };
                return status(
                    code,
                    reason,
                    format!("{resource} \"{name}\" not found"),
                    kind,
                    &name,
                );
            };
            let patch: Value = if content_type.starts_with("application/apply-patch+yaml") {
                let manager = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldManager="))
                    .unwrap_or_default()
                    .to_string();
                if manager.is_empty() {
                    return status(
                        400,
                        "BadRequest",
                        "PATCH with apply requires fieldManager".into(),
                        kind,
                        &name,
                    );
                }
                let text = String::from_utf8_lossy(body);
                match kiln::yaml::from_str::<Value>(&text, "apply patch") {
                    Ok(mut v) => {
                        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                            meta.remove("resourceVersion");
                        }
                        let mut fields = current["metadata"]["managedFields"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        if !fields.iter().any(|f| f["manager"] == json!(manager)) {
                            fields.push(json!({"manager": manager, "operation": "Apply"}));
                        }
                        v["metadata"]["managedFields"] = Value::Array(fields);
                        v
                    }
                    Err(e) => return status(400, "BadRequest", e.to_string(), kind, &name),
                }
            } else if content_type.starts_with("application/merge-patch+json") {
                match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return status(400, "BadRequest", format!("invalid JSON: {e}"), kind, &name),
                }
            } else {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("unsupported patch type {content_type}"),
                    kind,
                    &name,
                );
            };
            let mut object = current.clone();
            merge_patch(&mut object, &patch);
            store.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
            bump_generation(&current, &mut object);
            store.objects.insert(key, object.clone());
            (200, object)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not supported"),
            kind,
            "",
        ),
    };
    if is_write && result.0 < 300 {
        store.writes += 1;
    }
    if resource != "secrets" && resource != "events" && result.0 < 300 {
        settle(store);
        if let Some(name) = result.1["metadata"]["name"].as_str() {
            let key = (resource.clone(), ns.clone(), name.to_string());
            if let Some(settled) = store.objects.get(&key) {
                return (result.0, settled.clone());
            }
        }
    }
    result
}

fn bump_generation(current: &Value, object: &mut Value) {
    let generation = current["metadata"]["generation"].as_i64();
    if let Some(generation) = generation {
        let changed = current.get("spec") != object.get("spec");
        object["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
    }
}
