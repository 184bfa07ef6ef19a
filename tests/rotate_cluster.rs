//! `kiln rotate` and `kiln status` against an in-process API server over real HTTP.
//!
//! The kiln binary runs with KUBECONFIG pointing at the server; the real `kube::Client`
//! does the talking. Every run's output is checked for key material.
//!
//! Trust is judged by independent TLS stacks, never by kiln's verifier: after the runs of
//! every step, a rustls daemon with the daemon Secret and a rustls client with the client
//! Secret complete mutual TLS (old and new processes alike), and `openssl s_server` and
//! `s_client` do the same in the two-CA bundle states. The "replicas" kiln observes are
//! rustls servers started by the test, serving the daemon Secret as it stood when they
//! last (re)started: the built-in controller rolls them when kiln restarts the workload,
//! and a test can pin one to keep a stale certificate.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Output;

use kiln::pki;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, decode_fields_v1};
use support::kiln;
use support::tls::{Clock, Material, Replica, openssl_mtls, rustls_mtls};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NS: &str = "buildkit";
const CA: &str = "buildkit-ca";
const DAEMON: &str = "buildkit-daemon-certs";
const CLIENT: &str = "buildkit-client-certs";
const T0: &str = "2027-01-01T03:17:00Z";
const SERVICE_NAME: &str = "buildkitd.buildkit.svc";

fn t0() -> OffsetDateTime {
    OffsetDateTime::parse(T0, &Rfc3339).unwrap()
}

fn at_days(days: i64) -> String {
    (t0() + time::Duration::days(days)).format(&Rfc3339).unwrap()
}

fn day(days: i64) -> OffsetDateTime {
    t0() + time::Duration::days(days)
}

fn shell(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "kiln"},
            "annotations": {
                "kiln.dev/generated-by": "kiln 0.1.0",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Secret\"}",
            },
        },
        "type": "Opaque",
    })
}

fn workload(kind: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "buildkitd"},
        "spec": {
            "replicas": 2,
            "serviceName": "buildkitd",
            "selector": {"matchLabels": {"app": "buildkitd"}},
            "template": {
                "metadata": {"labels": {"app": "buildkitd"}},
                "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
            },
        },
    })
}

/// The kiln-config ConfigMap with `overlay` (YAML of a resolved overlay).
fn config_map(overlay: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kiln-config"},
        "data": {"overlay.yaml": overlay},
    })
}

/// The built-in defaults as the ConfigMap would hold them, with `extra` YAML merged in
/// at the top level.
fn policy_yaml(extra: &str) -> String {
    let overlay: kiln::overlay::Overlay =
        kiln::yaml::from_str(&format!("namespace: {NS}\n{extra}"), "test policy").unwrap();
    kiln::yaml::to_string(&overlay).unwrap()
}

struct Env {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Every key PEM body line seen in the Secrets, to grep outputs for.
    keys: Vec<String>,
    /// What the replicas and the trust checks believe the time is: the run's --now.
    clock: Clock,
    replicas: Vec<Replica>,
    /// How many replicas to start once the daemon Secret has data.
    want_replicas: usize,
    /// Replicas that keep what they serve across restarts (a stale mount, a stuck pod).
    pinned: BTreeSet<usize>,
    /// The `kiln.dev/daemon-certs` the replicas were last rolled for.
    rolled_for: Option<String>,
    /// The workload resource the replicas belong to.
    workload: &'static str,
    /// Arguments every run gets (`--connect-to` for StatefulSet replicas).
    always: Vec<String>,
}

impl Env {
    /// A server with the rendered Secret shells (empty), the Deployment and the
    /// kiln-config ConfigMap holding the built-in defaults.
    fn new() -> Self {
        let env = Self::bare();
        for name in [CA, DAEMON, CLIENT] {
            env.server.insert("secrets", NS, shell(name));
        }
        env.server.insert("deployments", NS, workload("Deployment"));
        env.server.insert("configmaps", NS, config_map(&policy_yaml("")));
        env
    }

    /// [`Env::new`] with two replicas behind EndpointSlices.
    fn with_replicas() -> Self {
        let mut env = Self::new();
        env.want_replicas = 2;
        env
    }

    /// A server with nothing in it.
    fn bare() -> Self {
        let server = ApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path(), NS);
        Self {
            server,
            dir,
            kubeconfig,
            keys: Vec::new(),
            clock: Clock::at(t0()),
            replicas: Vec::new(),
            want_replicas: 0,
            pinned: BTreeSet::new(),
            rolled_for: None,
            workload: "deployments",
            always: Vec::new(),
        }
    }

    fn policy(&self, extra: &str) {
        self.server
            .insert("configmaps", NS, config_map(&policy_yaml(extra)));
    }

    fn config_file(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("overlay.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn remember_keys(&mut self) {
        for name in [CA, DAEMON, CLIENT] {
            for (key, value) in self.server.secret_data(NS, name) {
                // ca.key, next-ca.key, key.pem (pem format) and tls.key (tls format).
                if key.ends_with("key") || key.ends_with(".key") || key == "key.pem" {
                    for line in value.lines().filter(|l| !l.starts_with("-----") && l.len() > 20) {
                        if !self.keys.contains(&line.to_string()) {
                            self.keys.push(line.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Start the replicas once there is something to serve; roll them (but the pinned
    /// ones) whenever kiln restarted the workload for another daemon Secret.
    fn sync_replicas(&mut self) {
        let Some(material) = loaded_opt(self, DAEMON) else {
            return;
        };
        if self.replicas.len() < self.want_replicas {
            for i in self.replicas.len()..self.want_replicas {
                let replica = Replica::start(&material, &self.clock);
                if self.workload == "deployments" {
                    self.server
                        .insert("endpointslices", NS, endpoint_slice(i, replica.port));
                } else {
                    self.always.push(format!(
                        "--connect-to=buildkitd-{i}.buildkitd.{NS}.svc:1234:127.0.0.1:{}",
                        replica.port
                    ));
                }
                self.replicas.push(replica);
            }
            self.rolled_for = self.template_version();
            return;
        }
        let version = self.template_version();
        if version != self.rolled_for {
            for (i, replica) in self.replicas.iter().enumerate() {
                if !self.pinned.contains(&i) {
                    replica.serve(&material);
                }
            }
            self.rolled_for = version;
        }
    }

    /// Restart every replica that is not pinned, whatever the template says (for
    /// `restartStrategy: none`, where a human restarts buildkitd).
    fn restart_replicas(&mut self) {
        let material = loaded(self, DAEMON);
        for (i, replica) in self.replicas.iter().enumerate() {
            if !self.pinned.contains(&i) {
                replica.serve(&material);
            }
        }
    }

    fn template_version(&self) -> Option<String> {
        self.server.get(self.workload, NS, "buildkitd")?["spec"]["template"]["metadata"]["annotations"]
            ["kiln.dev/daemon-certs"]
            .as_str()
            .map(str::to_string)
    }

    /// Run `kiln <args>` against the server; check that no key material is printed.
    fn kiln(&mut self, args: &[&str]) -> Output {
        if let Some(now) = args
            .iter()
            .position(|a| *a == "--now")
            .and_then(|i| args.get(i + 1))
            .and_then(|now| OffsetDateTime::parse(now, &Rfc3339).ok())
        {
            self.clock.set(now);
        }
        let mut command = kiln();
        command
            .args(args)
            .args(&self.always)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .env("HOME", self.dir.path());
        let output = command.output().unwrap();
        self.remember_keys();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("PRIVATE KEY"), "key material in output:\n{all}");
        for key in &self.keys {
            assert!(!all.contains(key.as_str()), "key bytes in output:\n{all}");
        }
        self.sync_replicas();
        output
    }

    /// `kiln rotate` as of `now` (for real: with --unsafe-clock).
    fn rotate(&mut self, now: &str, extra: &[&str]) -> Output {
        let mut args = vec!["rotate", "--namespace", NS, "--now", now, "--unsafe-clock"];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    fn rotate_ok(&mut self, now: &str, extra: &[&str]) -> String {
        let out = self.rotate(now, extra);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kiln rotate failed:\n{stdout}\n{stderr}");
        // Not a terminal: logs are JSON lines.
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            let parsed: Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            assert!(parsed.get("level").is_some(), "{line}");
        }
        stdout
    }

    fn status_json(&mut self, now: &str) -> Value {
        let out = self.kiln(&["status", "--namespace", NS, "--now", now, "-o", "json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
    }

    fn data(&self, name: &str) -> BTreeMap<String, String> {
        self.server.secret_data(NS, name)
    }

    fn annotation(&self, name: &str, key: &str) -> Option<String> {
        self.server.get("secrets", NS, name)?["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    fn template_annotations(&self, resource: &str) -> Value {
        self.server.get(resource, NS, "buildkitd").unwrap()["spec"]["template"]["metadata"]["annotations"]
            .clone()
    }

    fn writes(&self) -> usize {
        self.server.store().writes
    }
}

fn endpoint_slice(i: usize, port: u16) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("buildkitd-{i}x"),
            "labels": {"kubernetes.io/service-name": "buildkitd"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "name": format!("buildkitd-{i}"), "namespace": NS},
        }],
    })
}

/// The files a daemon or client would load from a Secret, in either key format.
fn loaded_opt(env: &Env, name: &str) -> Option<Material> {
    let data = env.data(name);
    let pick = |a: &str, b: &str| data.get(a).or_else(|| data.get(b)).cloned();
    Some(Material {
        bundle: pick("ca.pem", "ca.crt")?,
        cert: pick("cert.pem", "tls.crt")?,
        key: pick("key.pem", "tls.key")?,
    })
}

fn loaded(env: &Env, name: &str) -> Material {
    loaded_opt(env, name).unwrap_or_else(|| panic!("{name} has no certificates"))
}

fn bundle_size(material: &Material) -> usize {
    pki::parse_bundle(&material.bundle).unwrap().len()
}

/// A daemon that loaded `daemon` and a client that loaded `client` trust each other at
/// `at`: rustls on both sides; and openssl on both sides when a bundle holds two CAs.
fn assert_mutual_trust(daemon: &Material, client: &Material, at: OffsetDateTime, context: &str) {
    rustls_mtls(daemon, client, at, SERVICE_NAME).unwrap_or_else(|e| panic!("{context}: rustls: {e}"));
    if (bundle_size(daemon) > 1 || bundle_size(client) > 1)
        && let Some(openssl) = support::tool("openssl")
    {
        openssl_mtls(&openssl, daemon, client, at, SERVICE_NAME)
            .unwrap_or_else(|e| panic!("{context}: openssl: {e}"));
    }
}

/// Every replica, serving what it loaded, accepts a client started now.
fn assert_replicas_accept_clients(env: &Env, at: OffsetDateTime, context: &str) {
    let client = loaded(env, CLIENT);
    for (i, replica) in env.replicas.iter().enumerate() {
        assert_mutual_trust(
            &replica.material(),
            &client,
            at,
            &format!("{context}: replica {i}"),
        );
    }
}

/// The Secrets are complete: daemon and client trust each other, and the daemon
/// certificate chains to the signing CA alone (judged by rustls).
fn assert_complete(env: &Env, at: OffsetDateTime) {
    let daemon = loaded(env, DAEMON);
    let client = loaded(env, CLIENT);
    assert_mutual_trust(&daemon, &client, at, "final state");
    let signing_only = Material {
        bundle: env.data(CA)["ca.crt"].clone(),
        ..client
    };
    rustls_mtls(&daemon, &signing_only, at, SERVICE_NAME)
        .expect("the daemon certificate chains to the signing CA");
    let daemon_sans = pki::parse_bundle(&daemon.cert).unwrap()[0].sans.clone();
    assert!(
        daemon_sans.contains(&"buildkitd.buildkit.svc".to_string()),
        "{daemon_sans:?}"
    );
}

fn phase(env: &Env) -> String {
    env.annotation(CA, "kiln.dev/phase").unwrap_or_default()
}

// ------------------------------------------------------------- bootstrap, renewal

#[test]
fn bootstrap_fills_the_rendered_shells_then_is_a_no_op() {
    let mut env = Env::new();
    let out = env.rotate_ok(T0, &[]);
    assert!(
        out.contains("changed 4 object(s) in namespace buildkit (CA phase none → stable)"),
        "{out}"
    );
    assert_complete(&env, t0());

    // CA Secret layout and annotations.
    let ca = env.data(CA);
    assert_eq!(ca.keys().collect::<Vec<_>>(), ["ca.crt", "ca.key"]);
    assert_eq!(env.annotation(CA, "kiln.dev/phase").as_deref(), Some("stable"));
    assert_eq!(
        env.annotation(CA, "kiln.dev/secret-keys").as_deref(),
        Some("ca.crt, ca.key")
    );
    let ca_fp = pki::fingerprint(&ca["ca.crt"]).unwrap();
    assert_eq!(env.annotation(CA, "kiln.dev/ca-fingerprint"), Some(ca_fp.clone()));
    // Leaf Secrets: the policy's key names, bundle = the CA, annotations from the data.
    let daemon = env.data(DAEMON);
    assert_eq!(
        daemon.keys().collect::<Vec<_>>(),
        ["ca.pem", "cert.pem", "key.pem"]
    );
    assert_eq!(
        env.annotation(DAEMON, "kiln.dev/secret-keys").as_deref(),
        Some("ca.pem, cert.pem, key.pem")
    );
    assert_eq!(
        env.annotation(DAEMON, "kiln.dev/ca-fingerprints"),
        Some(ca_fp.clone())
    );
    let summary = &pki::parse_bundle(&daemon["cert.pem"]).unwrap()[0];
    assert_eq!(
        env.annotation(DAEMON, "kiln.dev/serial"),
        Some(summary.serial.clone())
    );
    assert_eq!(summary.not_after, t0() + time::Duration::days(90));
    // Foreign metadata kept (Argo CD's last-applied, the render stamp, labels).
    let secret = env.server.get("secrets", NS, DAEMON).unwrap();
    assert!(
        secret["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string()
    );
    assert_eq!(
        secret["metadata"]["annotations"]["kiln.dev/generated-by"],
        "kiln 0.1.0"
    );
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kiln"
    );
    // The data is owned by kiln's Update; the shell's fields stay with their creator.
    let managers = env.server.managers("secrets", NS, DAEMON);
    let kiln_update = managers
        .iter()
        .find(|m| m.manager == "kiln" && m.operation == "Update")
        .expect("kiln's Update entry");
    assert!(
        kiln_update
            .fields
            .contains(&vec!["data".to_string(), "key.pem".to_string()])
    );
    assert!(managers.iter().any(|m| m.manager == "test-setup"));

    // The restart: server-side apply by kiln of exactly the two template annotations.
    let template = env.template_annotations("deployments");
    assert_eq!(template["kiln.dev/restartedAt"], T0);
    assert!(template["kiln.dev/daemon-certs"].is_string());
    let deployment = env.server.get("deployments", NS, "buildkitd").unwrap();
    let applied = deployment["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "kiln" && m["operation"] == "Apply")
        .expect("kiln's Apply entry")
        .clone();
    let fields = decode_fields_v1(&applied["fieldsV1"]);
    let path = |key: &str| -> Vec<String> {
        ["spec", "template", "metadata", "annotations", key]
            .map(String::from)
            .to_vec()
    };
    assert_eq!(
        fields,
        BTreeSet::from([path("kiln.dev/daemon-certs"), path("kiln.dev/restartedAt")])
    );
    assert_eq!(deployment["metadata"]["generation"], 2);
    // Events through kube's Recorder (events.k8s.io/v1): one per Secret, one for the restart.
    let events = env.server.events();
    let mut objects: Vec<String> = events
        .iter()
        .map(|e| e["regarding"]["name"].as_str().unwrap().to_string())
        .collect();
    objects.sort();
    assert_eq!(objects, [CA, CLIENT, DAEMON, "buildkitd"]);
    assert!(
        events.iter().all(|e| e["type"] == "Normal"
            && e["reportingController"] == "kiln"
            && e["apiVersion"] == "events.k8s.io/v1"),
        "{events:?}"
    );
    let secret_uid = env.server.get("secrets", NS, CA).unwrap()["metadata"]["uid"].clone();
    assert!(events.iter().any(|e| e["regarding"]["uid"] == secret_uid));

    // A second run, the next day, changes nothing.
    let writes = env.writes();
    let out = env.rotate_ok(&at_days(1), &[]);
    assert!(
        out.contains("nothing to do in namespace buildkit (CA phase stable)"),
        "{out}"
    );
    assert_eq!(env.writes(), writes);
}

#[test]
fn bootstrap_creates_secrets_that_do_not_exist() {
    let mut env = Env::bare();
    env.server.insert("deployments", NS, workload("Deployment"));
    env.server.insert("configmaps", NS, config_map(&policy_yaml("")));
    env.rotate_ok(T0, &[]);
    assert_complete(&env, t0());
    let log = env.server.store().log.clone();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("POST") && l.split('?').next().unwrap().ends_with("/secrets"))
            .count(),
        3
    );
}

#[test]
fn renewal_reissues_leaves_from_the_same_ca_and_restarts() {
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    assert_replicas_accept_clients(&env, t0(), "bootstrap");
    let before_daemon = loaded(&env, DAEMON);
    let before_client = loaded(&env, CLIENT);
    let ca_before = env.data(CA)["ca.crt"].clone();
    // 59 days in: more than 30 days left, nothing to do.
    assert!(env.rotate_ok(&at_days(59), &[]).contains("nothing to do"));
    // 61 days in: under a third of 90 days left.
    let out = env.rotate_ok(&at_days(61), &[]);
    assert!(
        out.contains("renew: the client certificate expires in 29 days"),
        "{out}"
    );
    let after_daemon = loaded(&env, DAEMON);
    let after_client = loaded(&env, CLIENT);
    assert_ne!(before_daemon.cert, after_daemon.cert);
    assert_ne!(before_client.key, after_client.key);
    assert_eq!(env.data(CA)["ca.crt"], ca_before);
    let when = day(61);
    assert_complete(&env, when);
    // Old and new processes coexist during the rolling restart: all four pairs trust.
    assert_mutual_trust(&before_daemon, &after_client, when, "old daemon, new client");
    assert_mutual_trust(&after_daemon, &before_client, when, "new daemon, old client");
    assert_replicas_accept_clients(&env, when, "after the renewal");
    assert_eq!(
        env.template_annotations("deployments")["kiln.dev/restartedAt"],
        at_days(61)
    );
}

// ------------------------------------------------------------------ CA rollover

#[test]
fn full_ca_rollover_driven_by_now_never_breaks_trust() {
    let mut env = Env::with_replicas();
    env.policy("certs:\n  caValidity: 300d\n  validity: 30d\nrotation:\n  propagationDelay: 2d\n");
    env.rotate_ok(T0, &[]);
    let first_ca = env.data(CA)["ca.crt"].clone();
    let mut phases = vec!["stable".to_string()];
    let mut previous = (loaded(&env, DAEMON), loaded(&env, CLIENT));
    let mut introduced_serial = None;
    // Every 3 days for 400 days: more than one rollover.
    for d in (3..=400).step_by(3) {
        let out = env.rotate_ok(&at_days(d), &[]);
        let when = day(d);
        let current = (loaded(&env, DAEMON), loaded(&env, CLIENT));
        // Processes from the previous run and this one overlap: every pair must trust.
        let context = format!("day {d}");
        assert_mutual_trust(&current.0, &current.1, when, &context);
        assert_mutual_trust(&previous.0, &current.1, when, &format!("{context}, old daemon"));
        assert_mutual_trust(&current.0, &previous.1, when, &format!("{context}, old client"));
        assert_replicas_accept_clients(&env, when, &context);
        let now_phase = phase(&env);
        if phases.last() != Some(&now_phase) {
            if now_phase == "introduced" {
                // The line names the CA being introduced, not the old one.
                let next = &pki::parse_bundle(&env.data(CA)["next-ca.crt"]).unwrap()[0];
                assert!(
                    out.contains(&format!("introducing the next CA (serial {}", &next.serial[..16])),
                    "{out}"
                );
                introduced_serial = Some(next.serial.clone());
            }
            if now_phase == "leaves-reissued" {
                assert!(
                    out.contains("CA rollover: issuing the client certificate from the new CA"),
                    "{out}"
                );
                assert!(!out.contains("not signed by"), "{out}");
            }
            phases.push(now_phase);
        }
        previous = current;
    }
    assert!(introduced_serial.is_some());
    assert_ne!(env.data(CA)["ca.crt"], first_ca);
    assert!(
        phases.starts_with(&[
            "stable".to_string(),
            "introduced".into(),
            "leaves-reissued".into(),
            "stable".into()
        ]),
        "{phases:?}"
    );
    // The retired CA is gone from every bundle.
    assert_eq!(bundle_size(&loaded(&env, CLIENT)), 1);
}

/// Crash the run at `day` with `flags` after each of its writes in turn, each time from
/// the same starting objects and replicas; check that the processes from before the run
/// and those that load what was written trust each other; rerun at `rerun_day` with no
/// flags (as the CronJob does) and check the step is complete with `done`, and that
/// nothing is left to do half a day later. Leaves `env` as the uncrashed run left it.
fn crash_each_write_then_rerun(
    env: &mut Env,
    step: &str,
    (day_of_run, flags): (i64, &[&str]),
    rerun_day: i64,
    done: impl Fn(&Env, &str),
) {
    let at = day(day_of_run);
    let rerun_at = day(rerun_day);
    let start = env.server.store().objects.clone();
    let start_replicas: Vec<Material> = env.replicas.iter().map(Replica::material).collect();
    let start_rolled = env.rolled_for.clone();
    let restore = |env: &mut Env, objects: &BTreeMap<(String, String, String), Value>| {
        env.server.store().objects = objects.clone();
        for (replica, material) in env.replicas.iter().zip(&start_replicas) {
            replica.serve(material);
        }
        env.rolled_for = start_rolled.clone();
    };
    let before = (loaded(env, DAEMON), loaded(env, CLIENT));
    // Count the step's writes with a run that does not crash.
    let writes = env.writes();
    env.rotate_ok(&at_days(day_of_run), flags);
    let n = env.writes() - writes;
    assert!(n >= 3, "{step}: {n} writes");
    done(env, &format!("{step} without a crash"));
    let finished = env.server.store().objects.clone();
    let finished_replicas: Vec<Material> = env.replicas.iter().map(Replica::material).collect();
    let finished_rolled = env.rolled_for.clone();

    for k in 1..=n {
        let context = format!("{step}, crash after {k} of {n} writes");
        restore(env, &start);
        let writes = env.writes();
        env.server.store().crash_after = Some(writes + k);
        let out = env.rotate(&at_days(day_of_run), flags);
        env.server.store().crash_after = None;
        if k < n {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{context}: {stderr}");
            let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
            assert_eq!(errors, 1, "{context}: {stderr}");
        }
        assert_eq!(env.writes(), writes + k, "{context}");
        let partial = (loaded(env, DAEMON), loaded(env, CLIENT));
        assert_mutual_trust(&before.0, &partial.1, at, &format!("{context}: old daemon"));
        assert_mutual_trust(&partial.0, &before.1, at, &format!("{context}: old client"));

        env.rotate_ok(&at_days(rerun_day), &[]);
        let after = (loaded(env, DAEMON), loaded(env, CLIENT));
        assert_complete(env, rerun_at);
        for (daemon, client, who) in [
            (&before.0, &after.1, "daemon from before the crash"),
            (&after.0, &before.1, "client from before the crash"),
            (&partial.0, &after.1, "daemon from the crash"),
            (&after.0, &partial.1, "client from the crash"),
        ] {
            assert_mutual_trust(daemon, client, rerun_at, &format!("{context}: {who}"));
        }
        done(env, &context);
        let later = (rerun_at + time::Duration::hours(12)).format(&Rfc3339).unwrap();
        let out = env.rotate_ok(&later, &[]);
        assert!(out.contains("nothing to do"), "{context}: {out}");
    }
    env.server.store().objects = finished;
    for (replica, material) in env.replicas.iter().zip(&finished_replicas) {
        replica.serve(material);
    }
    env.rolled_for = finished_rolled;
}

/// The CA phase, the number of CAs in both bundles, and a complete, trusting state.
fn assert_phase(env: &Env, want: &str, cas: usize, context: &str) {
    assert_eq!(phase(env), want, "{context}");
    for name in [DAEMON, CLIENT] {
        assert_eq!(bundle_size(&loaded(env, name)), cas, "{context}: {name} bundle");
    }
}

#[test]
fn a_crash_after_any_write_is_finished_by_the_next_run() {
    // Bootstrap makes 4 writes (CA, client, daemon, restart): crash after each.
    for k in 0..4 {
        let mut env = Env::new();
        env.server.store().crash_after = Some(k);
        let out = env.rotate(T0, &[]);
        assert_eq!(out.status.code(), Some(1), "crash after {k} writes");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error: failed to"), "{stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
        env.server.store().crash_after = None;
        env.rotate_ok(&at_days(1), &[]);
        assert_complete(&env, day(1));
        assert!(
            env.rotate_ok(&at_days(2), &[]).contains("nothing to do"),
            "crash after {k}"
        );
    }
    // The steps after bootstrap crash at every write of one run, then the CronJob
    // reruns with no flags. One server: each crash point starts from the same objects.
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    let ca_a = env.data(CA)["ca.crt"].clone();

    // A leaf renewal, 61 days in (client, daemon, restart).
    crash_each_write_then_rerun(&mut env, "leaf renewal", (61, &[]), 62, |env, context| {
        assert_eq!(env.data(CA)["ca.crt"], ca_a, "{context}");
        for name in [DAEMON, CLIENT] {
            let cert = &pki::parse_bundle(&loaded(env, name).cert).unwrap()[0];
            assert!(cert.not_after >= day(61 + 90), "{context}: {name} not renewed");
        }
    });

    // CA rollover step 1, forced on day 70: the next CA is introduced into every bundle.
    crash_each_write_then_rerun(
        &mut env,
        "rollover step 1",
        (70, &["--force-renew", "ca"]),
        71,
        |env, context| {
            assert_phase(env, "introduced", 2, context);
            assert_eq!(env.data(CA)["ca.crt"], ca_a, "{context}");
        },
    );
    let ca_b = env.data(CA)["next-ca.crt"].clone();

    // Step 2, past the propagation delay (2 days): leaves reissued from the new CA.
    crash_each_write_then_rerun(&mut env, "rollover step 2", (73, &[]), 74, |env, context| {
        assert_phase(env, "leaves-reissued", 2, context);
        let ca = env.data(CA);
        assert_eq!(ca["ca.crt"], ca_b, "{context}");
        assert_eq!(ca["retiring-ca.crt"], ca_a, "{context}");
    });

    // Step 3, past the delay again: the old CA is retired from every bundle.
    crash_each_write_then_rerun(&mut env, "rollover step 3", (76, &[]), 77, |env, context| {
        assert_phase(env, "stable", 1, context);
        let ca = env.data(CA);
        assert_eq!(ca.keys().collect::<Vec<_>>(), ["ca.crt", "ca.key"], "{context}");
        assert_eq!(ca["ca.crt"], ca_b, "{context}");
    });
}

#[test]
fn force_renew_ca_starts_a_rollover_or_says_why_not() {
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    // Day 61: the leaves are due as well. Both happen in one run: a new CA beside the
    // old one, and renewed leaves (still from the old CA) carrying both.
    let out = env.rotate_ok(&at_days(61), &["--force-renew", "ca"]);
    assert!(out.contains("(CA phase stable → introduced)"), "{out}");
    assert!(
        out.contains("CA rollover (--force-renew ca): introducing the next CA"),
        "{out}"
    );
    assert!(
        out.contains("renew: the client certificate expires in 29 days"),
        "{out}"
    );
    assert_phase(&env, "introduced", 2, "forced with leaves due");
    assert_complete(&env, day(61));
    assert_replicas_accept_clients(&env, day(61), "forced with leaves due");
    // Asked again while the rollover runs: one line says which phase and why not.
    let writes = env.writes();
    let out = env.rotate_ok(&at_days(62), &["--force-renew", "ca"]);
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning: --force-renew ca:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        warning.starts_with(&format!(
            "warning: --force-renew ca: a CA rollover is already in progress (phase introduced since {}); its next step waits: waiting for the propagation delay until",
            at_days(61)
        )),
        "{warning}"
    );
    assert_eq!(env.writes(), writes);
}

#[test]
fn a_stale_replica_holds_the_rollover_back_and_status_names_it() {
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    let before_step1 = loaded(&env, DAEMON);
    env.rotate_ok(&at_days(10), &["--force-renew", "ca"]);
    assert_eq!(phase(&env), "introduced");
    // Pod buildkitd-1 kept the daemon Secret from before step 1 (a stale mount): same
    // certificate, old bundle, so it does not trust the next CA.
    env.pinned.insert(1);
    env.replicas[1].serve(&before_step1);
    let writes = env.writes();
    let out = env.rotate_ok(&at_days(13), &[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert!(
        out.contains("rollover held back: waiting for buildkitd: buildkitd-1 does not accept a client certificate from the next CA"),
        "{out}"
    );
    assert_eq!(
        env.writes(),
        writes,
        "no step while a replica does not trust the next CA"
    );
    let status = env.status_json(&at_days(13));
    let holding = status["holdingBack"].as_str().unwrap();
    assert!(
        holding.contains("buildkitd-1 does not accept a client certificate from the next CA"),
        "{holding}"
    );
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{status}");
    assert_eq!(replicas[0]["acceptsProbe"], true, "{status}");
    assert_eq!(replicas[1]["acceptsProbe"], false, "{status}");
    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(13)]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("replica buildkitd-1: serves the current daemon certificate"),
        "{table}"
    );
    assert!(table.contains("REFUSES the probe client certificate"), "{table}");
    assert!(
        table.contains("rollover held back: waiting for buildkitd: buildkitd-1"),
        "{table}"
    );
    // After twice the delay in the phase, the run and status warn.
    let out = env.rotate_ok(&at_days(15), &[]);
    assert!(
        out.contains("warning: the CA rollover has been in phase introduced since 2027-01-11T03:17:00Z, more than twice rotation.propagationDelay: waiting for buildkitd: buildkitd-1"),
        "{out}"
    );
    assert!(
        env.server
            .events()
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "RotationWarning")
    );
    // Once the pod restarts with the current Secret, the rollover moves on.
    env.pinned.clear();
    env.restart_replicas();
    let out = env.rotate_ok(&at_days(16), &[]);
    assert!(out.contains("(CA phase introduced → leaves-reissued)"), "{out}");
    assert_replicas_accept_clients(&env, day(16), "after the stale replica restarted");
}

#[test]
fn with_no_replica_reachable_the_rollover_waits_and_says_why() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    env.rotate_ok(&at_days(10), &["--force-renew", "ca"]);
    // One EndpointSlice names a pod whose port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.server.insert("endpointslices", NS, endpoint_slice(0, closed));
    let writes = env.writes();
    let out = env.rotate_ok(&at_days(13), &[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(env.writes(), writes);
    let status = env.status_json(&at_days(13));
    let holding = status["holdingBack"].as_str().unwrap();
    assert!(
        holding.contains("buildkitd-0 cannot be reached: cannot connect to 127.0.0.1:"),
        "{holding}"
    );
    assert!(holding.contains("only 1 of 2 replicas were found"), "{holding}");
    // Leaf renewals of the valid CA do not wait for the replicas.
    let out = env.rotate_ok(&at_days(62), &[]);
    assert!(out.contains("renew: the client certificate"), "{out}");
}

#[test]
fn restart_strategy_none_waits_for_a_human_restart() {
    let mut env = Env::with_replicas();
    env.policy("rotation:\n  restartStrategy: none\n");
    env.rotate_ok(T0, &[]);
    env.rotate_ok(&at_days(10), &["--force-renew", "ca"]);
    // kiln did not restart buildkitd, and nobody else did: the replicas still trust [A].
    let writes = env.writes();
    assert!(env.rotate_ok(&at_days(13), &[]).contains("nothing to do"));
    assert_eq!(env.writes(), writes);
    // Someone restarts buildkitd: the observation sees it and the rollover moves on.
    env.restart_replicas();
    let out = env.rotate_ok(&at_days(14), &[]);
    assert!(out.contains("(CA phase introduced → leaves-reissued)"), "{out}");
    assert!(out.contains("warning: restartStrategy is none"), "{out}");
    assert_replicas_accept_clients(&env, day(14), "old daemons, new client");
}

#[test]
fn statefulset_replicas_are_observed_through_their_pod_names() {
    let mut env = Env::bare();
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", NS, shell(name));
    }
    env.server.insert("statefulsets", NS, workload("StatefulSet"));
    env.server.insert(
        "configmaps",
        NS,
        config_map(&policy_yaml(
            "buildkit:\n  workload: statefulset\ncerts:\n  format: tls\n",
        )),
    );
    env.workload = "statefulsets";
    env.want_replicas = 2;
    env.rotate_ok(T0, &[]);
    let data = env.data(DAEMON);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
    assert!(env.template_annotations("statefulsets")["kiln.dev/daemon-certs"].is_string());
    let sans = pki::parse_bundle(&data["tls.crt"]).unwrap()[0].sans.clone();
    assert!(sans.contains(&"*.buildkitd.buildkit.svc".to_string()), "{sans:?}");
    env.rotate_ok(&at_days(5), &["--force-renew", "ca"]);
    let status = env.status_json(&at_days(6));
    let names: Vec<&str> = status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["buildkitd-0", "buildkitd-1"], "{status}");
    assert!(
        status["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "current"),
        "{status}"
    );
    let out = env.rotate_ok(&at_days(8), &[]);
    assert!(out.contains("(CA phase introduced → leaves-reissued)"), "{out}");
    assert_replicas_accept_clients(&env, day(8), "statefulset step 2");
}

// ----------------------------------------------------------------- lost CA key

#[test]
fn a_ca_key_deleted_mid_life_rolls_over_with_trust_after_every_run() {
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    let old_ca = env.data(CA)["ca.crt"].clone();
    let mut secret = env.server.get("secrets", NS, CA).unwrap();
    secret["data"].as_object_mut().unwrap().remove("ca.key");
    env.server.insert("secrets", NS, secret);
    let status = env.status_json(&at_days(20));
    assert_eq!(status["certs"][0]["state"], "key-lost", "{status}");
    assert_eq!(status["healthy"], false);
    assert!(
        status["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("the CA key is unusable (key ca.key is missing"),
        "{status}"
    );
    let mut previous = (loaded(&env, DAEMON), loaded(&env, CLIENT));
    let mut phases = vec![phase(&env)];
    for d in (20..=40).step_by(2) {
        let out = env.rotate_ok(&at_days(d), &[]);
        assert!(!out.contains("starting over"), "day {d}: {out}");
        let when = day(d);
        let current = (loaded(&env, DAEMON), loaded(&env, CLIENT));
        let context = format!("lost key, day {d}");
        assert_mutual_trust(&current.0, &current.1, when, &context);
        assert_mutual_trust(&previous.0, &current.1, when, &format!("{context}, old daemon"));
        assert_mutual_trust(&current.0, &previous.1, when, &format!("{context}, old client"));
        assert_replicas_accept_clients(&env, when, &context);
        if phases.last() != Some(&phase(&env)) {
            phases.push(phase(&env));
        }
        previous = current;
    }
    assert_eq!(phases, ["stable", "introduced", "leaves-reissued", "stable"]);
    let ca = env.data(CA);
    assert_ne!(ca["ca.crt"], old_ca);
    assert_eq!(ca.keys().collect::<Vec<_>>(), ["ca.crt", "ca.key"]);
    assert_complete(&env, day(40));
    assert!(
        !env.server
            .events()
            .iter()
            .any(|e| e["reason"] == "CertificatesStartedOver")
    );
}

#[test]
fn a_lost_ca_key_with_expired_leaves_starts_over_loudly() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    let old_ca = env.data(CA)["ca.crt"].clone();
    let mut secret = env.server.get("secrets", NS, CA).unwrap();
    secret["data"].as_object_mut().unwrap().remove("ca.key");
    env.server.insert("secrets", NS, secret);
    // Day 100: the 90-day leaves expired, so no rollover can carry them.
    let out = env.rotate(&at_days(100), &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("a rollover without it is impossible: the client certificate expired at"),
        "{stdout}"
    );
    assert!(stdout.contains("starting over with a new CA"), "{stdout}");
    let error_log = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error-level log line:\n{stderr}"));
    assert!(
        error_log["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("starting over"),
        "{error_log}"
    );
    assert!(
        env.server
            .events()
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "CertificatesStartedOver"),
        "{:?}",
        env.server.events()
    );
    assert_ne!(env.data(CA)["ca.crt"], old_ca);
    assert_complete(&env, day(100));
}

// --------------------------------------------------- the policy and its checks

#[test]
fn without_a_policy_a_by_hand_run_refuses_and_a_mismatched_one_writes_nothing() {
    // A prod-like farm: a StatefulSet mounting tls keys, shells rendered for tls.
    let mut env = Env::bare();
    for name in [CA, DAEMON, CLIENT] {
        let mut secret = shell(name);
        secret["metadata"]["annotations"]["kiln.dev/secret-keys"] = json!("ca.crt, tls.crt, tls.key");
        secret["metadata"]["annotations"]["kiln.dev/secret-format"] = json!("tls");
        env.server.insert("secrets", NS, secret);
    }
    env.server.insert("statefulsets", NS, workload("StatefulSet"));
    let before = env.server.snapshot();
    // No ConfigMap and no flag: refuse, naming both ways to give a policy.
    let out = env.kiln(&["rotate", "-n", NS]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        errors[0],
        "error: failed to find a policy: namespace buildkit has no ConfigMap kiln-config (kiln render writes it for the CronJob); pass --config FILE (a resolved overlay) or --overlay NAME (from --overlays DIR)"
    );
    // The built-in defaults given by hand (pem keys, a Deployment): zero writes, and
    // every mismatch named.
    let defaults = env.config_file(&policy_yaml(""));
    let out = env.kiln(&["rotate", "-n", NS, "--config", defaults.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    assert!(error.starts_with("error: failed the checks before the first write: the cluster does not match the policy, so nothing was written:"), "{error}");
    assert!(error.contains("Secret buildkit-daemon-certs says kiln.dev/secret-keys: ca.crt, tls.crt, tls.key, the policy (certs.format pem) writes ca.pem, cert.pem, key.pem"), "{error}");
    assert!(
        error.contains("the namespace runs a StatefulSet buildkitd, not the Deployment the policy names"),
        "{error}"
    );
    assert_eq!(env.server.snapshot(), before, "nothing was written");
    assert_eq!(env.writes(), 0);
    // status says the same and exits 1.
    let out = env.kiln(&["status", "-n", NS, "--config", defaults.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning: the cluster does not match the policy"));
    // With the farm's policy in its ConfigMap, a plain by-hand run works.
    env.server.insert(
        "configmaps",
        NS,
        config_map(&policy_yaml(
            "buildkit:\n  workload: statefulset\ncerts:\n  format: tls\n",
        )),
    );
    env.rotate_ok(T0, &[]);
    assert_eq!(
        env.data(DAEMON).keys().collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    assert_complete(&env, t0());
}

#[test]
fn a_policy_in_the_configmap_for_another_namespace_is_refused() {
    let mut env = Env::new();
    env.server.insert(
        "configmaps",
        NS,
        config_map(&policy_yaml("").replace("namespace: buildkit", "namespace: buildkit-prod")),
    );
    let out = env.rotate(T0, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to use the policy in ConfigMap buildkit/kiln-config key overlay.yaml: it is for namespace buildkit-prod, not buildkit"),
        "{stderr}"
    );
    assert_eq!(env.writes(), 0);
}

#[test]
fn the_namespace_follows_kubectl() {
    let mut env = Env::new();
    // A second farm in buildkit-dev with its own ConfigMap.
    let dev = "buildkit-dev";
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", dev, shell(name));
    }
    env.server.insert("deployments", dev, workload("Deployment"));
    let dev_policy = policy_yaml("").replace("namespace: buildkit", &format!("namespace: {dev}"));
    env.server.insert("configmaps", dev, config_map(&dev_policy));
    // The context points at buildkit-dev: a plain status and rotate work there.
    env.kubeconfig = env.server.kubeconfig(env.dir.path(), dev);
    let out = env.kiln(&["rotate", "--now", T0, "--unsafe-clock"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("in namespace buildkit-dev"));
    assert!(!env.server.secret_data(dev, CA).is_empty());
    assert!(env.data(CA).is_empty(), "buildkit untouched");
    let out = env.kiln(&["status", "--now", T0, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["namespace"], dev);
    assert_eq!(report["phase"], "stable");
    // -n wins over the context.
    let out = env.kiln(&["status", "-n", NS, "--now", T0, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["namespace"], NS);
    // A policy file for another namespace than the context's: refused, -n settles it.
    let prod = env.config_file(&policy_yaml("").replace("namespace: buildkit", "namespace: buildkit-prod"));
    let out = env.kiln(&["status", "--config", prod.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: --config {} is for namespace buildkit-prod, but the kubeconfig context test points at namespace buildkit-dev: pass -n buildkit-prod",
            prod.display()
        )),
        "{stderr}"
    );
    // No namespace in the context: the overlay's namespace is used.
    env.kubeconfig = env.server.kubeconfig_with(env.dir.path(), None);
    let mine = env.config_file(&policy_yaml(""));
    let out = env.kiln(&[
        "status",
        "--config",
        mine.to_str().unwrap(),
        "--now",
        T0,
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["namespace"], NS);
    // And nothing at all: a usage error naming the ways to give one.
    let out = env.kiln(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: no namespace to work in: pass -n NAMESPACE")
    );
}

#[test]
fn now_writes_only_with_unsafe_clock() {
    let mut env = Env::new();
    let out = env.kiln(&["rotate", "-n", NS, "--now", "2030-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --now 2030-01-01T00:00:00Z would write certificates dated from that time: add --dry-run to plan only, or --unsafe-clock to write them anyway"),
        "{stderr}"
    );
    assert!(env.server.store().log.is_empty(), "no request at all");
    // A dry run and status take --now freely.
    assert!(
        env.kiln(&["rotate", "-n", NS, "--now", T0, "--dry-run"])
            .status
            .success()
    );
    assert_eq!(env.writes(), 0);
    let out = env.kiln(&["status", "-n", NS, "--now", T0]);
    assert_eq!(out.status.code(), Some(1), "empty shells are unhealthy");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("CA phase none (no usable CA)"), "{table}");
}

#[test]
fn impossible_timing_in_a_deployed_policy_warns_but_keeps_renewing() {
    let mut env = Env::new();
    env.policy("certs:\n  caValidity: 3d\n  validity: 1d\nrotation:\n  propagationDelay: 2d\n");
    let out = env.rotate(T0, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the policy cannot work"), "{stderr}");
    assert!(stderr.contains("certs.caValidity"), "{stderr}");
    // While a render of the same overlay refuses it.
    let overlays = env.dir.path().join("overlays");
    std::fs::create_dir(&overlays).unwrap();
    std::fs::write(
        overlays.join("tight.yaml"),
        "namespace: buildkit\ncerts:\n  caValidity: 3d\n  validity: 1d\nrotation:\n  propagationDelay: 2d\n",
    )
    .unwrap();
    let out = kiln()
        .args(["render", "--overlays"])
        .arg(&overlays)
        .arg("--out")
        .arg(env.dir.path().join("rendered"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certs.caValidity"), "{stderr}");
    assert!(stderr.contains("use certs.caValidity: 21d or more"), "{stderr}");
}

// ------------------------------------------------------- repairs and failures

#[test]
fn a_conflict_on_every_first_write_is_retried() {
    let mut env = Env::new();
    env.server.store().conflict_first_write = true;
    let out = env.rotate(T0, &["-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["conflicts"], 4, "{report}");
    assert_eq!(report["changes"].as_array().unwrap().len(), 4, "{report}");
    assert_complete(&env, t0());
}

#[test]
fn a_dry_run_changes_nothing() {
    let mut env = Env::new();
    let before = env.server.snapshot();
    let out = env.kiln(&["rotate", "-n", NS, "--now", T0, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would change 4 object(s) in namespace buildkit (CA phase none → stable)"),
        "{stdout}"
    );
    assert!(stdout.contains("Secret/buildkit-ca"), "{stdout}");
    assert_eq!(env.server.snapshot(), before);
    assert_eq!(env.writes(), 0);
    assert!(env.server.events().is_empty());
    // And a what-if on a running system.
    env.rotate_ok(T0, &[]);
    let before = env.server.snapshot();
    let out = env.kiln(&[
        "rotate",
        "-n",
        NS,
        "--now",
        &at_days(1500),
        "--dry-run",
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["phaseBefore"], "stable");
    assert!(!report["changes"].as_array().unwrap().is_empty());
    assert_eq!(env.server.snapshot(), before);
}

#[test]
fn garbage_pem_is_repaired_loudly() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    use base64::Engine;
    let garbage = base64::engine::general_purpose::STANDARD
        .encode("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
    let mut secret = env.server.get("secrets", NS, CLIENT).unwrap();
    secret["data"]["cert.pem"] = json!(garbage);
    env.server.insert("secrets", NS, secret);
    let out = env.rotate_ok(&at_days(1), &[]);
    assert!(
        out.contains("warning: the client Secret is broken (key cert.pem"),
        "{out}"
    );
    assert_complete(&env, day(1));
    assert!(env.server.events().iter().any(|e| e["type"] == "Warning"));
}

#[test]
fn a_missing_workload_fails_clearly_but_bootstrap_proceeds() {
    // Bootstrap before the Deployment exists (an Argo CD hook): fine, with a warning.
    let mut env = Env::bare();
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", NS, shell(name));
    }
    env.server.insert("configmaps", NS, config_map(&policy_yaml("")));
    let out = env.rotate_ok(T0, &[]);
    assert!(out.contains("Deployment/buildkitd not found"), "{out}");
    assert_complete(&env, t0());
    // Later runs need it, and fail before their first write, even when leaves are due.
    let writes = env.writes();
    let out = env.rotate(&at_days(61), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: failed to find deployment buildkitd in namespace buildkit: it does not exist; check buildkit.workload and buildkit.serviceName"),
        "{stderr}"
    );
    assert_eq!(env.writes(), writes);
}

#[test]
fn forbidden_is_reported_with_the_fix_and_leaves_nothing_half_done() {
    let mut env = Env::bare();
    env.server.insert("deployments", NS, workload("Deployment"));
    env.server.insert("configmaps", NS, config_map(&policy_yaml("")));
    env.server
        .store()
        .forbidden
        .push(("create".into(), "secrets".into()));
    let out = env.rotate(T0, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forbidden (HTTP 403)"), "{stderr}");
    assert!(stderr.contains("does not allow create"), "{stderr}");
    assert!(env.server.get("secrets", NS, CA).is_none());
    // With the shells applied, the next run completes.
    env.server.store().forbidden.clear();
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", NS, shell(name));
    }
    env.rotate_ok(&at_days(1), &[]);
    assert_complete(&env, day(1));

    // Reading forbidden.
    env.server
        .store()
        .forbidden
        .push(("get".into(), "secrets".into()));
    let out = env.rotate(&at_days(2), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the kiln-rotate Role must allow get on secrets/buildkit-ca"),
        "{stderr}"
    );
    // The ConfigMap forbidden: the fix is named.
    env.server.store().forbidden = vec![("get".into(), "configmaps".into())];
    let out = env.rotate(&at_days(2), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the kiln-rotate Role must allow get on configmaps/kiln-config"),
        "{stderr}"
    );
}

#[test]
fn status_shows_expiry_phase_replicas_and_next_action() {
    let mut env = Env::with_replicas();
    env.rotate_ok(T0, &[]);
    let report = env.status_json(&at_days(10));
    assert_eq!(report["phase"], "stable");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["workloadCurrent"], true);
    let certs = report["certs"].as_array().unwrap();
    assert_eq!(certs.len(), 3);
    assert!(certs.iter().all(|c| c["state"] == "ok"));
    assert_eq!(certs[1]["role"], "daemon");
    assert_eq!(certs[1]["daysLeft"], 80);
    let next = report["nextAction"]["at"].as_str().unwrap();
    assert!(next.starts_with(&at_days(60)[..10]), "{next}");
    // Every replica seen serving the current certificate and accepting today's client.
    let replicas = report["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    assert!(
        replicas
            .iter()
            .all(|r| r["state"] == "current" && r["acceptsProbe"] == true),
        "{report}"
    );

    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(10)]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("CA phase stable"), "{table}");
    assert!(table.contains("DAYS LEFT"), "{table}");
    assert!(table.contains("renew: the client certificate"), "{table}");
    assert!(
        table.contains(
            "buildkitd: Deployment/buildkitd: restarted for the current daemon Secret, rollout complete\n"
        ),
        "{table}"
    );

    // Expired: status exits 1 and does not call the pods' certificate current.
    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(100)]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("that certificate expired at 2027-04-01T03:17:00Z"),
        "{table}"
    );
    assert!(
        !table.contains("running the current daemon certificate"),
        "{table}"
    );
}

#[test]
fn bad_now_is_a_usage_error() {
    let mut env = Env::new();
    let out = env.rotate("yesterday", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --now \"yesterday\""));
}

#[test]
fn no_cluster_config_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["rotate", "--namespace", NS])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("failed to load the cluster config"),
        "{stderr}"
    );
    assert!(
        errors[0].ends_with("run in a pod with a ServiceAccount or set KUBECONFIG"),
        "{stderr}"
    );
}

#[test]
fn bad_settings_are_reported_before_touching_the_cluster() {
    let mut env = Env::new();
    let config = env.config_file("namespace: buildkit\ncerts:\n  validity: 10y\n  caValidity: 5y\n");
    let out = env.rotate(T0, &[&format!("--config={}", config.display())]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certs.validity: the leaf validity 10y must be shorter than certs.caValidity 5y"),
        "{stderr}"
    );
    assert!(env.server.store().log.is_empty());
}

// --------------------------------------------------------------------- RBAC

/// The rules `kiln rotate` needs, as the render engineer is told to render them.
fn needed_rules(workload: &str) -> Vec<Value> {
    vec![
        json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CA, DAEMON, CLIENT], "verbs": ["get", "update"]}),
        json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kiln-config"], "verbs": ["get"]}),
        json!({"apiGroups": ["apps"], "resources": [workload], "resourceNames": ["buildkitd"], "verbs": ["get", "patch"]}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ]
}

#[test]
fn a_full_rollover_runs_within_the_rules_kiln_asks_for() {
    let mut env = Env::with_replicas();
    env.policy("certs:\n  caValidity: 60d\n  validity: 10d\nrotation:\n  propagationDelay: 1d\n");
    env.server.store().role = Some(needed_rules("deployments"));
    env.rotate_ok(T0, &[]);
    for d in 1..=45 {
        env.rotate_ok(&at_days(d), &[]);
    }
    assert_ne!(env.writes(), 0);
    let log = env.server.store().log.clone();
    assert!(log.iter().any(|l| l.contains("/endpointslices?")), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("/configmaps/kiln-config")),
        "{log:?}"
    );
    // One of the rules less and the run fails with the fix named.
    let mut rules = needed_rules("deployments");
    rules.retain(|r| r["resources"][0] != "configmaps");
    env.server.store().role = Some(rules);
    let out = env.rotate(&at_days(46), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must allow get on configmaps/kiln-config"));
}

#[test]
fn the_rendered_cronjob_runs_within_its_role() {
    let example = support::repo_root().join("examples/argocd/prod");
    let read = |file: &str| -> Value {
        let text = std::fs::read_to_string(example.join(file)).unwrap();
        kiln::yaml::from_str::<Value>(&text, file).unwrap()
    };
    let mut env = Env::bare();
    let namespace = "buildkit-prod";
    for file in [
        "secret-buildkit-ca.yaml",
        "secret-buildkit-daemon-certs.yaml",
        "secret-buildkit-client-certs.yaml",
    ] {
        env.server.insert("secrets", namespace, read(file));
    }
    env.server
        .insert("statefulsets", namespace, read("statefulset-buildkitd.yaml"));
    // The rendered Role is enforced on every request; in each tenant namespace, the
    // rendered tenant Role, next to the rendered tenant Secret shell.
    let rules = read("role-kiln-rotate.yaml")["rules"].as_array().unwrap().clone();
    env.server.store().role = Some(rules);
    let tenants = ["team-a", "team-b", "team-c"];
    for tenant in tenants {
        let role = read(&format!("{tenant}/role-kiln-rotate-buildkit-prod.yaml"));
        env.server
            .store()
            .roles
            .insert(tenant.into(), role["rules"].as_array().unwrap().clone());
        env.server.insert(
            "secrets",
            tenant,
            read(&format!("{tenant}/secret-buildkit-client-certs.yaml")),
        );
    }
    // The CronJob's own args, with the ConfigMap's overlay.yaml where it mounts it.
    let config_map = read("configmap-kiln-config.yaml");
    let config = env.config_file(config_map["data"]["overlay.yaml"].as_str().unwrap());
    let cronjob = read("cronjob-kiln-rotate.yaml");
    let container = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str().unwrap().replace(
                "--config=/etc/kiln/overlay.yaml",
                &format!("--config={}", config.display()),
            )
        })
        .collect();
    assert!(args.iter().any(|a| a == "--namespace=buildkit-prod"), "{args:?}");
    let mut full: Vec<&str> = args.iter().map(String::as_str).collect();
    full.extend(["--now", T0, "--unsafe-clock"]);
    for run in [0, 1] {
        if run == 1 {
            let at = full.iter().position(|a| *a == T0).unwrap();
            full[at] = "2027-01-02T03:17:00Z";
        }
        let out = env.kiln(&full);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The shells' own annotations survive (Argo CD would see a diff otherwise).
    let ca = env.server.get("secrets", namespace, CA).unwrap();
    assert!(
        ca["metadata"]["annotations"]["kiln.dev/owned-by"].is_string(),
        "{ca}"
    );
    assert!(ca["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/ssa"].is_string());
    // The tls format and P-384 from the overlay.
    let daemon = env.server.secret_data(namespace, DAEMON);
    let client = env.server.secret_data(namespace, CLIENT);
    assert_eq!(
        daemon.keys().collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    let material = |d: &BTreeMap<String, String>| Material {
        bundle: d["ca.crt"].clone(),
        cert: d["tls.crt"].clone(),
        key: d["tls.key"].clone(),
    };
    rustls_mtls(
        &material(&daemon),
        &material(&client),
        t0(),
        "buildkitd.buildkit-prod.svc",
    )
    .unwrap();
    assert_eq!(
        pki::parse_bundle(&daemon["tls.crt"]).unwrap()[0].key_algorithm,
        "ecdsa-p384"
    );
    assert!(env.server.store().log.len() >= 8);
    // Every tenant's Secret filled within its Role, with its own CN, trusted by the daemon.
    for tenant in tenants {
        let data = env.server.secret_data(tenant, CLIENT);
        assert_eq!(
            pki::parse_bundle(&data["tls.crt"]).unwrap()[0]
                .common_name
                .as_deref(),
            Some(format!("kiln-client:{tenant}").as_str())
        );
        rustls_mtls(
            &material(&daemon),
            &material(&data),
            t0(),
            "buildkitd.buildkit-prod.svc",
        )
        .unwrap_or_else(|e| panic!("{tenant}: {e}"));
    }
    let forbidden: Vec<String> = env
        .server
        .store()
        .log
        .iter()
        .filter(|l| tenants.iter().any(|t| l.contains(&format!("/namespaces/{t}/"))))
        .filter(|l| !l.starts_with("GET ") && !l.starts_with("PUT "))
        .cloned()
        .collect();
    assert!(
        forbidden.is_empty(),
        "beyond get and update in a tenant namespace: {forbidden:?}"
    );
    // What rotate writes into kiln.dev/secret-keys agrees with the rendered shells, so
    // Argo CD sees no drift on them.
    for (file, name) in [
        ("secret-buildkit-ca.yaml", CA),
        ("secret-buildkit-daemon-certs.yaml", DAEMON),
        ("secret-buildkit-client-certs.yaml", CLIENT),
    ] {
        let rendered = read(file);
        assert_eq!(
            env.server.get("secrets", namespace, name).unwrap()["metadata"]["annotations"]["kiln.dev/secret-keys"],
            rendered["metadata"]["annotations"]["kiln.dev/secret-keys"],
            "{file}"
        );
    }
}

#[test]
fn rotate_reads_the_configmap_render_writes() {
    use kiln::render::{config, secrets};
    use kiln::rotate::executor;
    assert_eq!(executor::CONFIG_MAP, config::CONFIG_MAP);
    assert_eq!(executor::CONFIG_KEY, config::CONFIG_KEY);
    assert_eq!(
        kiln::rotate::state::CA_SECRET_KEYS_ANNOTATION,
        secrets::CA_SECRET_KEYS
    );
}

#[test]
fn settings_come_from_a_named_overlay() {
    let mut env = Env::new();
    let overlays = env.dir.path().join("overlays");
    std::fs::create_dir(&overlays).unwrap();
    std::fs::write(
        overlays.join("dev.yaml"),
        "namespace: buildkit\ncerts:\n  validity: 20d\n",
    )
    .unwrap();
    let dir = format!("--overlays={}", overlays.display());
    env.rotate_ok(T0, &["--overlay", "dev", &dir]);
    let cert = loaded(&env, DAEMON).cert;
    assert_eq!(
        pki::parse_bundle(&cert).unwrap()[0].not_after,
        t0() + time::Duration::days(20)
    );
    let out = env.rotate(T0, &["--overlay", "nope", &dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn two_runs_at_once_converge_on_one_ca() {
    // The bootstrap Job and a CronJob run can overlap: resourceVersion guards them.
    let env = Env::new();
    let spawn = || {
        kiln()
            .args(["rotate", "--namespace", NS, "--now", T0, "--unsafe-clock"])
            .env("KUBECONFIG", &env.kubeconfig)
            .env("HOME", env.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_complete(&env, t0());
    let ca = env.data(CA)["ca.crt"].clone();
    let ca_fp = pki::fingerprint(&ca).unwrap();
    for name in [DAEMON, CLIENT] {
        assert_eq!(
            env.annotation(name, "kiln.dev/ca-fingerprints"),
            Some(ca_fp.clone())
        );
    }
}

// ------------------------------------------------- the test server's own rules

/// A kube client against the test server, on a runtime of its own.
fn client(server: &ApiServer) -> (tokio::runtime::Runtime, kube::Client) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = kube::Config::new(server.url().parse().unwrap());
    // The client's buffer task needs the runtime.
    let client = runtime.block_on(async { kube::Client::try_from(config).unwrap() });
    (runtime, client)
}

#[test]
fn the_test_server_keeps_server_side_apply_field_ownership() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let server = ApiServer::start();
    let (rt, client) = client(&server);
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let cm = |data: Value| -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": data})
    };
    // Apply by "alice" creates the object (201) and owns exactly what she applied.
    let created = rt
        .block_on(api.patch(
            "cm",
            &PatchParams::apply("alice"),
            &Patch::Apply(cm(json!({"a": "1", "b": "2"}))),
        ))
        .unwrap();
    assert_eq!(created.data.unwrap().len(), 2);
    let field = |k: &str| vec!["data".to_string(), k.to_string()];
    let alice = |server: &ApiServer| {
        server
            .managers("configmaps", NS, "cm")
            .into_iter()
            .find(|m| m.manager == "alice" && m.operation == "Apply")
    };
    assert_eq!(
        alice(&server).unwrap().fields,
        BTreeSet::from([field("a"), field("b")])
    );

    // An Update (a PUT by "bob") that changes data.a takes it over.
    let mut current = rt.block_on(api.get("cm")).unwrap();
    current.data.as_mut().unwrap().insert("a".into(), "bob".into());
    rt.block_on(api.replace(
        "cm",
        &PostParams {
            dry_run: false,
            field_manager: Some("bob".into()),
        },
        &current,
    ))
    .unwrap();
    let managers = server.managers("configmaps", NS, "cm");
    let bob = managers.iter().find(|m| m.manager == "bob").unwrap();
    assert_eq!(bob.operation, "Update");
    assert_eq!(bob.api_version, "v1");
    assert_eq!(bob.fields, BTreeSet::from([field("a")]));
    assert_eq!(alice(&server).unwrap().fields, BTreeSet::from([field("b")]));

    // Alice applying another value of data.a now conflicts: 409, naming the field and
    // the manager, and nothing is written.
    let rv = server.get("configmaps", NS, "cm").unwrap()["metadata"]["resourceVersion"].clone();
    let err = rt
        .block_on(api.patch(
            "cm",
            &PatchParams::apply("alice"),
            &Patch::Apply(cm(json!({"a": "alice", "b": "2"}))),
        ))
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"bob\" using v1: .data.a"
    );
    let body = server.get("configmaps", NS, "cm").unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], rv);
    assert_eq!(body["data"]["a"], "bob");
    // The raw Status body carries a FieldManagerConflict cause.
    let raw = raw_apply(&server, "alice", false, &cm(json!({"a": "alice", "b": "2"})));
    assert_eq!(raw["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(raw["details"]["causes"][0]["field"], ".data.a");
    assert_eq!(
        raw["details"]["causes"][0]["message"],
        "conflict with \"bob\" using v1"
    );

    // Applying the value Bob set is no conflict: ownership is shared.
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("alice"),
        &Patch::Apply(cm(json!({"a": "bob", "b": "2"}))),
    ))
    .unwrap();
    let managers = server.managers("configmaps", NS, "cm");
    assert!(
        managers
            .iter()
            .find(|m| m.manager == "bob")
            .unwrap()
            .fields
            .contains(&field("a"))
    );
    assert!(alice(&server).unwrap().fields.contains(&field("a")));

    // force=true takes the field over.
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("alice").force(),
        &Patch::Apply(cm(json!({"a": "alice", "b": "2"}))),
    ))
    .unwrap();
    assert!(
        !server
            .managers("configmaps", NS, "cm")
            .iter()
            .any(|m| m.manager == "bob")
    );
    assert_eq!(server.get("configmaps", NS, "cm").unwrap()["data"]["a"], "alice");

    // A field Alice stops applying is removed, unless someone else owns it.
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("carol"),
        &Patch::Apply(cm(json!({"b": "2", "c": "3"}))),
    ))
    .unwrap();
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("alice"),
        &Patch::Apply(cm(json!({"a": "alice"}))),
    ))
    .unwrap();
    let data = server.get("configmaps", NS, "cm").unwrap()["data"].clone();
    assert_eq!(
        data,
        json!({"a": "alice", "b": "2", "c": "3"}),
        "b stays: carol owns it too"
    );
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("carol"),
        &Patch::Apply(cm(json!({"c": "3"}))),
    ))
    .unwrap();
    let data = server.get("configmaps", NS, "cm").unwrap()["data"].clone();
    assert_eq!(
        data,
        json!({"a": "alice", "c": "3"}),
        "b goes: nobody applies it any more"
    );

    // A no-op apply writes nothing and bumps nothing.
    let rv = server.get("configmaps", NS, "cm").unwrap()["metadata"]["resourceVersion"].clone();
    let writes = server.store().writes;
    rt.block_on(api.patch(
        "cm",
        &PatchParams::apply("carol"),
        &Patch::Apply(cm(json!({"c": "3"}))),
    ))
    .unwrap();
    assert_eq!(
        server.get("configmaps", NS, "cm").unwrap()["metadata"]["resourceVersion"],
        rv
    );
    assert_eq!(server.store().writes, writes);

    // The wire rules around apply: fieldManager is required (422), the body's apiVersion
    // must match the endpoint (400), a stale resourceVersion in the body is a 409.
    let missing = raw_apply(&server, "", false, &cm(json!({"c": "3"})));
    assert_eq!(missing["code"], 422, "{missing}");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("fieldManager: Required value")
    );
    let mut wrong = cm(json!({"c": "3"}));
    wrong["apiVersion"] = json!("v2");
    assert_eq!(raw_apply(&server, "carol", false, &wrong)["code"], 400);
    let mut stale = cm(json!({"c": "4"}));
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(raw_apply(&server, "carol", false, &stale)["code"], 409);
    // A workload cannot be created by an apply that lacks its required fields.
    let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": 1}});
    let out = server.raw(
        "PATCH",
        "/apis/apps/v1/namespaces/buildkit/deployments/x?fieldManager=kiln",
        "application/apply-patch+yaml",
        &bad,
    );
    assert_eq!(out["code"], 422, "{out}");
}

fn raw_apply(server: &ApiServer, manager: &str, force: bool, body: &Value) -> Value {
    let mut path = format!("/api/v1/namespaces/{NS}/configmaps/cm?fieldManager={manager}");
    if force {
        path.push_str("&force=true");
    }
    server.raw("PATCH", &path, "application/apply-patch+yaml", body)
}

#[test]
fn the_test_server_lists_by_label_and_enforces_a_role() {
    let server = ApiServer::start();
    server.insert("endpointslices", NS, endpoint_slice(0, 1000));
    let mut other = endpoint_slice(1, 1001);
    other["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
    server.insert("endpointslices", NS, other);
    let (rt, client) = client(&server);
    let api: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(client.clone(), NS);
    let listed = rt
        .block_on(api.list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=buildkitd")))
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("buildkitd-0x"));
    // A Role with resourceNames cannot allow a list; a named get is allowed only by name.
    server.store().role = Some(vec![
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "resourceNames": ["buildkitd-0x"], "verbs": ["get", "list"]}),
    ]);
    let err = rt
        .block_on(api.list(&kube::api::ListParams::default()))
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
    assert!(rt.block_on(api.get("buildkitd-0x")).is_ok());
    assert!(matches!(rt.block_on(api.get("buildkitd-1x")), Err(kube::Error::Api(s)) if s.code == 403));
    // A 404 carries the resource, as the real server says it.
    server.store().role = None;
    let err = rt.block_on(api.get("nope")).unwrap_err();
    let kube::Error::Api(status) = err else { panic!() };
    assert_eq!(
        status.message,
        "endpointslices.discovery.k8s.io \"nope\" not found"
    );
}
