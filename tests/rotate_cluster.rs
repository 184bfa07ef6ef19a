//! `kiln rotate` and `kiln status` against an in-process API server over real HTTP.
//!
//! The kiln binary runs with KUBECONFIG pointing at the server; the real `kube::Client`
//! does the talking. Every run's output is checked for key material.

mod support;

use std::path::PathBuf;
use std::process::Output;

use kiln::pki;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::kiln;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NS: &str = "buildkit";
const CA: &str = "buildkit-ca";
const DAEMON: &str = "buildkit-daemon-certs";
const CLIENT: &str = "buildkit-client-certs";
const T0: &str = "2027-01-01T03:17:00Z";

struct Env {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Every key PEM body line seen in the Secrets, to grep outputs for.
    keys: Vec<String>,
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::parse(T0, &Rfc3339).unwrap()
}

fn at_days(days: i64) -> String {
    (t0() + time::Duration::days(days)).format(&Rfc3339).unwrap()
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
            "selector": {"matchLabels": {"app": "buildkitd"}},
            "template": {
                "metadata": {"labels": {"app": "buildkitd"}},
                "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
            },
        },
    })
}

impl Env {
    /// A server with the rendered Secret shells (empty) and the Deployment.
    fn new() -> Self {
        let env = Self::bare();
        for name in [CA, DAEMON, CLIENT] {
            env.server.insert("secrets", NS, shell(name));
        }
        env.server.insert("deployments", NS, workload("Deployment"));
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
        }
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

    /// Run `kiln <args>` against the server; check that no key material is printed.
    fn kiln(&mut self, args: &[&str]) -> Output {
        let output = kiln()
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
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
        output
    }

    fn rotate(&mut self, now: &str, extra: &[&str]) -> Output {
        let mut args = vec!["rotate", "--namespace", NS, "--now", now];
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

    fn data(&self, name: &str) -> std::collections::BTreeMap<String, String> {
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
}

/// The PEM material a client or daemon would load from a Secret (format pem).
#[derive(Clone, Debug)]
struct Loaded {
    bundle: String,
    cert: String,
    key: String,
}

fn loaded(env: &Env, name: &str) -> Loaded {
    let data = env.data(name);
    Loaded {
        bundle: data["ca.pem"].clone(),
        cert: data["cert.pem"].clone(),
        key: data["key.pem"].clone(),
    }
}

/// A daemon that loaded `daemon` and a client that loaded `client` trust each other at `at`.
fn assert_mutual_trust(daemon: &Loaded, client: &Loaded, at: OffsetDateTime, context: &str) {
    pki::verify_chain(&daemon.cert, &client.bundle, at)
        .unwrap_or_else(|e| panic!("{context}: client rejects daemon: {e}"));
    pki::verify_chain(&client.cert, &daemon.bundle, at)
        .unwrap_or_else(|e| panic!("{context}: daemon rejects client: {e}"));
    assert!(
        pki::key_matches(&daemon.cert, &daemon.key).unwrap(),
        "{context}: daemon key"
    );
    assert!(
        pki::key_matches(&client.cert, &client.key).unwrap(),
        "{context}: client key"
    );
}

fn assert_complete(env: &Env, at: OffsetDateTime) {
    let daemon = loaded(env, DAEMON);
    let client = loaded(env, CLIENT);
    assert_mutual_trust(&daemon, &client, at, "final state");
    let ca = env.data(CA);
    assert!(pki::key_matches(&ca["ca.crt"], &ca["ca.key"]).unwrap());
    pki::verify_chain(&daemon.cert, &ca["ca.crt"], at).expect("daemon signed by the signing CA");
    let daemon_sans = pki::parse_bundle(&daemon.cert).unwrap()[0].sans.clone();
    assert!(
        daemon_sans.contains(&"buildkitd.buildkit.svc".to_string()),
        "{daemon_sans:?}"
    );
}

#[test]
fn bootstrap_fills_the_rendered_shells_then_is_a_no_op() {
    let mut env = Env::new();
    let out = env.rotate_ok(T0, &[]);
    assert!(out.contains("changed 4 object(s)"), "{out}");
    assert_complete(&env, t0());

    // CA Secret layout and annotations.
    let ca = env.data(CA);
    assert_eq!(ca.keys().collect::<Vec<_>>(), ["ca.crt", "ca.key"]);
    assert_eq!(env.annotation(CA, "kiln.dev/phase").as_deref(), Some("stable"));
    let ca_fp = pki::fingerprint(&ca["ca.crt"]).unwrap();
    assert_eq!(env.annotation(CA, "kiln.dev/ca-fingerprint"), Some(ca_fp.clone()));
    // Leaf Secrets: the overlay's key names, bundle = the CA, annotations from the data.
    let daemon = env.data(DAEMON);
    assert_eq!(
        daemon.keys().collect::<Vec<_>>(),
        ["ca.pem", "cert.pem", "key.pem"]
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

    // The restart: server-side apply by kiln of the two template annotations.
    let template = env.template_annotations("deployments");
    assert_eq!(template["kiln.dev/restartedAt"], T0);
    assert!(template["kiln.dev/daemon-certs"].is_string());
    let deployment = env.server.get("deployments", NS, "buildkitd").unwrap();
    assert_eq!(deployment["metadata"]["managedFields"][0]["manager"], "kiln");
    assert_eq!(deployment["metadata"]["generation"], 2);
    // One Event per Secret changed, one for the restart.
    let events = env.server.events();
    let mut objects: Vec<String> = events
        .iter()
        .map(|e| e["involvedObject"]["name"].as_str().unwrap().to_string())
        .collect();
    objects.sort();
    assert_eq!(objects, [CA, CLIENT, DAEMON, "buildkitd"]);
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "Normal" && e["source"]["component"] == "kiln")
    );

    // A second run, the next day, changes nothing.
    let writes = env.server.store().writes;
    let out = env.rotate_ok(&at_days(1), &[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(env.server.store().writes, writes);
}

#[test]
fn bootstrap_creates_secrets_that_do_not_exist() {
    let mut env = Env::bare();
    env.server.insert("deployments", NS, workload("Deployment"));
    env.rotate_ok(T0, &[]);
    assert_complete(&env, t0());
    let log = env.server.store().log.clone();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("POST") && l.ends_with("/secrets"))
            .count(),
        3
    );
}

#[test]
fn renewal_reissues_leaves_from_the_same_ca_and_restarts() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
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
    let when = t0() + time::Duration::days(61);
    assert_complete(&env, when);
    // Old and new processes coexist during the rolling restart: all four pairs trust.
    assert_mutual_trust(&before_daemon, &after_client, when, "old daemon, new client");
    assert_mutual_trust(&after_daemon, &before_client, when, "new daemon, old client");
    assert_eq!(
        env.template_annotations("deployments")["kiln.dev/restartedAt"],
        at_days(61)
    );
}

#[test]
fn full_ca_rollover_driven_by_now_never_breaks_trust() {
    let mut env = Env::new();
    let config =
        env.config_file("certs:\n  caValidity: 300d\n  validity: 30d\nrotation:\n  propagationDelay: 2d\n");
    let config = format!("--config={}", config.display());
    env.rotate_ok(T0, &[&config]);
    let first_ca = env.data(CA)["ca.crt"].clone();
    let mut phases = vec!["stable".to_string()];
    let mut previous = (loaded(&env, DAEMON), loaded(&env, CLIENT));
    // Every 3 days for 400 days: more than one rollover.
    for day in (3..=400).step_by(3) {
        let now = at_days(day);
        env.rotate_ok(&now, &[&config]);
        let when = OffsetDateTime::parse(&now, &Rfc3339).unwrap();
        let current = (loaded(&env, DAEMON), loaded(&env, CLIENT));
        // Processes from the previous run and this one overlap: every pair must trust.
        assert_mutual_trust(&current.0, &current.1, when, &format!("day {day}"));
        assert_mutual_trust(&previous.0, &current.1, when, &format!("day {day}, old daemon"));
        assert_mutual_trust(&current.0, &previous.1, when, &format!("day {day}, old client"));
        let phase = env.annotation(CA, "kiln.dev/phase").unwrap();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        previous = current;
    }
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
    let bundle = pki::parse_bundle(&loaded(&env, CLIENT).bundle).unwrap();
    assert_eq!(bundle.len(), 1);
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
        assert_complete(&env, t0() + time::Duration::days(1));
        assert!(
            env.rotate_ok(&at_days(2), &[]).contains("nothing to do"),
            "crash after {k}"
        );
    }
    // The steps after bootstrap crash at every write of one run, then the CronJob
    // reruns with no flags. One server: each crash point starts from the same objects.
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    let ca_a = env.data(CA)["ca.crt"].clone();

    // A leaf renewal, 61 days in (client, daemon, restart).
    crash_each_write_then_rerun(&mut env, "leaf renewal", (61, &[]), 62, |env, context| {
        assert_eq!(env.data(CA)["ca.crt"], ca_a, "{context}");
        for name in [DAEMON, CLIENT] {
            let cert = &pki::parse_bundle(&loaded(env, name).cert).unwrap()[0];
            assert!(
                cert.not_after >= t0() + time::Duration::days(61 + 90),
                "{context}: {name} not renewed"
            );
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

/// The CA phase, the number of CAs in both bundles, and a complete, trusting state.
fn assert_phase(env: &Env, phase: &str, cas: usize, context: &str) {
    assert_eq!(
        env.annotation(CA, "kiln.dev/phase").as_deref(),
        Some(phase),
        "{context}"
    );
    for name in [DAEMON, CLIENT] {
        let bundle = pki::parse_bundle(&loaded(env, name).bundle).unwrap();
        assert_eq!(bundle.len(), cas, "{context}: {name} bundle");
    }
}

/// Crash the run at `day` with `flags` after each of its writes in turn, each time from
/// the same starting objects; check that the processes from before the run and those
/// that load what was written trust each other; rerun at `rerun_day` with no flags
/// (as the CronJob does) and check the step is complete with `done`, and that nothing
/// is left to do half a day later. Leaves `env` as the uncrashed run left it.
fn crash_each_write_then_rerun(
    env: &mut Env,
    step: &str,
    (day, flags): (i64, &[&str]),
    rerun_day: i64,
    done: impl Fn(&Env, &str),
) {
    let at = t0() + time::Duration::days(day);
    let rerun_at = t0() + time::Duration::days(rerun_day);
    let start = env.server.store().objects.clone();
    let before = (loaded(env, DAEMON), loaded(env, CLIENT));
    // Count the step's writes with a run that does not crash.
    let writes = env.server.store().writes;
    env.rotate_ok(&at_days(day), flags);
    let n = env.server.store().writes - writes;
    assert!(n >= 3, "{step}: {n} writes");
    done(env, &format!("{step} without a crash"));
    let finished = env.server.store().objects.clone();

    for k in 1..=n {
        let context = format!("{step}, crash after {k} of {n} writes");
        env.server.store().objects = start.clone();
        let writes = env.server.store().writes;
        env.server.store().crash_after = Some(writes + k);
        let out = env.rotate(&at_days(day), flags);
        env.server.store().crash_after = None;
        if k < n {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{context}: {stderr}");
            let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
            assert_eq!(errors, 1, "{context}: {stderr}");
        }
        assert_eq!(env.server.store().writes, writes + k, "{context}");
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
}

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
    let out = env.rotate_ok(T0, &["--dry-run"]);
    assert!(out.contains("would change 4 object(s)"), "{out}");
    assert!(out.contains("Secret/buildkit-ca"), "{out}");
    assert_eq!(env.server.snapshot(), before);
    assert_eq!(env.server.store().writes, 0);
    assert!(env.server.events().is_empty());
    // And a what-if on a running system.
    env.rotate_ok(T0, &[]);
    let before = env.server.snapshot();
    let out = env.rotate(&at_days(1500), &["--dry-run", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dryRun"], true);
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
    assert_complete(&env, t0() + time::Duration::days(1));
    assert!(env.server.events().iter().any(|e| e["type"] == "Warning"));
}

#[test]
fn a_lost_ca_key_starts_over_with_a_new_ca() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    let old_ca = env.data(CA)["ca.crt"].clone();
    let mut secret = env.server.get("secrets", NS, CA).unwrap();
    secret["data"].as_object_mut().unwrap().remove("ca.key");
    env.server.insert("secrets", NS, secret);
    let out = env.rotate_ok(&at_days(1), &[]);
    assert!(out.contains("the CA key is lost"), "{out}");
    assert!(out.contains("starting over with a new CA"), "{out}");
    assert_ne!(env.data(CA)["ca.crt"], old_ca);
    assert_complete(&env, t0() + time::Duration::days(1));
}

#[test]
fn a_missing_workload_fails_clearly_but_bootstrap_proceeds() {
    // Bootstrap before the Deployment exists (an Argo CD hook): fine, with a warning.
    let mut env = Env::bare();
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", NS, shell(name));
    }
    let out = env.rotate_ok(T0, &[]);
    assert!(out.contains("Deployment/buildkitd not found"), "{out}");
    assert_complete(&env, t0());
    // Later runs need it.
    let writes = env.server.store().writes;
    let out = env.rotate(&at_days(1), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: failed to find deployment buildkitd in namespace buildkit: it does not exist; check buildkit.workload and buildkit.serviceName"),
        "{stderr}"
    );
    assert_eq!(env.server.store().writes, writes);
}

#[test]
fn forbidden_is_reported_with_the_fix_and_leaves_nothing_half_done() {
    let mut env = Env::bare();
    env.server.insert("deployments", NS, workload("Deployment"));
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
    assert_complete(&env, t0() + time::Duration::days(1));

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
}

#[test]
fn statefulset_restart_and_tls_format() {
    let mut env = Env::bare();
    for name in [CA, DAEMON, CLIENT] {
        env.server.insert("secrets", NS, shell(name));
    }
    env.server.insert("statefulsets", NS, workload("StatefulSet"));
    let config = env.config_file("buildkit:\n  workload: statefulset\ncerts:\n  format: tls\n");
    let config = format!("--config={}", config.display());
    env.rotate_ok(T0, &[&config]);
    let data = env.data(DAEMON);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
    assert!(env.template_annotations("statefulsets")["kiln.dev/daemon-certs"].is_string());
    let sans = pki::parse_bundle(&data["tls.crt"]).unwrap()[0].sans.clone();
    assert!(sans.contains(&"*.buildkitd.buildkit.svc".to_string()), "{sans:?}");
}

#[test]
fn status_shows_expiry_phase_and_next_action() {
    let mut env = Env::new();
    env.rotate_ok(T0, &[]);
    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(10), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
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

    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(10)]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("CA phase stable"), "{table}");
    assert!(table.contains("DAYS LEFT"), "{table}");
    assert!(table.contains("renew: the client certificate"), "{table}");

    // Expired: status exits 1.
    let out = env.kiln(&["status", "--namespace", NS, "--now", &at_days(100)]);
    assert_eq!(out.status.code(), Some(1));
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
    let config = env.config_file("certs:\n  validity: 10y\n  caValidity: 5y\n");
    let out = env.rotate(T0, &[&format!("--config={}", config.display())]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certs.validity (10y) must be shorter than certs.caValidity (5y)"),
        "{stderr}"
    );
    assert!(env.server.store().log.is_empty());
}

/// Is `verb` on `resource`/`name` in `group` allowed by the Role's rules?
fn role_allows(rules: &[Value], group: &str, resource: &str, name: Option<&str>, verb: &str) -> bool {
    let has = |list: &Value, item: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == item));
    rules.iter().any(|rule| {
        has(&rule["apiGroups"], group)
            && has(&rule["resources"], resource)
            && has(&rule["verbs"], verb)
            && match (&rule["resourceNames"], name) {
                (Value::Null, _) => true,
                (names, Some(name)) => has(names, name),
                (_, None) => false,
            }
    })
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
    full.extend(["--now", T0]);
    for day in [0, 1] {
        if day == 1 {
            *full.last_mut().unwrap() = "2027-01-02T03:17:00Z";
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
    pki::verify_chain(&daemon["tls.crt"], &client["ca.crt"], t0()).unwrap();
    pki::verify_chain(&client["tls.crt"], &daemon["ca.crt"], t0()).unwrap();
    assert_eq!(
        pki::parse_bundle(&daemon["tls.crt"]).unwrap()[0].key_algorithm,
        "ecdsa-p384"
    );
    // Every request kiln made is allowed by the rendered Role.
    let rules = read("role-kiln-rotate.yaml")["rules"].as_array().unwrap().clone();
    let log = env.server.store().log.clone();
    assert!(log.len() >= 8, "{log:?}");
    for entry in &log {
        let (method, path) = entry.split_once(' ').unwrap();
        let group = if path.starts_with("/apis/apps/") {
            "apps"
        } else {
            ""
        };
        let parts: Vec<&str> = path.split('/').collect();
        let ns_at = parts.iter().position(|p| *p == "namespaces").unwrap();
        assert_eq!(parts[ns_at + 1], namespace, "{entry}");
        let resource = parts[ns_at + 2];
        let name = parts.get(ns_at + 3).copied();
        let verb = match method {
            "GET" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "POST" => "create",
            other => panic!("unexpected {other}"),
        };
        assert!(
            role_allows(&rules, group, resource, name, verb),
            "the Role does not allow {entry}"
        );
    }
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
            .args(["rotate", "--namespace", NS, "--now", T0])
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
