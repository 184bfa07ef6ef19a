//! `kiln rotate` and `kiln status` with tenants (issue 11), against the in-process API
//! server over real HTTP.
//!
//! The farm runs in `buildkit`; three tenants (`team-a`, `team-b`, `team-c`) each hold a
//! client Secret shell, and a Role there lets the farm's rotate ServiceAccount get and
//! update exactly that Secret (enforced by the server: no list, create or patch). Trust is
//! judged by rustls: every tenant's client Secret against what every "replica" (a rustls
//! server the test runs) serves, in both directions, after every run.

mod support;

use std::collections::BTreeMap;
use std::process::Output;

use kiln::pki;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::kiln;
use support::tls::{Clock, Material, Replica, rustls_mtls};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NS: &str = "buildkit";
const CA: &str = "buildkit-ca";
const DAEMON: &str = "buildkit-daemon-certs";
const CLIENT: &str = "buildkit-client-certs";
const TENANTS: [&str; 3] = ["team-a", "team-b", "team-c"];
const T0: &str = "2027-01-01T03:17:00Z";
const SERVICE_NAME: &str = "buildkitd.buildkit.svc";

fn day(days: i64) -> OffsetDateTime {
    OffsetDateTime::parse(T0, &Rfc3339).unwrap() + time::Duration::days(days)
}

fn at_days(days: i64) -> String {
    day(days).format(&Rfc3339).unwrap()
}

fn shell(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {"kiln.dev/generated-by": "kiln 0.1.0"}},
        "type": "Opaque",
    })
}

/// The rendered tenant Role's rules: get and update on exactly the client Secret.
fn tenant_rules() -> Vec<Value> {
    vec![json!({
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": [CLIENT],
        "verbs": ["get", "update"],
    })]
}

fn policy(tenants: &[&str], extra: &str) -> Value {
    let mut yaml = format!("namespace: {NS}\n{extra}");
    if !tenants.is_empty() {
        yaml.push_str("tenants:\n");
        for ns in tenants {
            yaml.push_str(&format!("  - namespace: {ns}\n"));
        }
    }
    let overlay: kiln::overlay::Overlay = kiln::yaml::from_str(&yaml, "test policy").unwrap();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kiln-config"},
        "data": {"overlay.yaml": kiln::yaml::to_string(&overlay).unwrap()},
    })
}

struct Env {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    clock: Clock,
    replicas: Vec<Replica>,
    rolled_for: Option<String>,
}

impl Env {
    /// The farm with two replicas, and the tenants in `present` with their shells and Roles.
    fn new(present: &[&str]) -> Self {
        let server = ApiServer::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.kubeconfig(dir.path(), NS);
        for name in [CA, DAEMON, CLIENT] {
            server.insert("secrets", NS, shell(name));
        }
        server.insert(
            "deployments",
            NS,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "buildkitd"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "buildkitd"}},
                    "template": {
                        "metadata": {"labels": {"app": "buildkitd"}},
                        "spec": {"containers": [{"name": "buildkitd", "image": "moby/buildkit"}]},
                    },
                },
            }),
        );
        server.insert("configmaps", NS, policy(&TENANTS, ""));
        let env = Self {
            server,
            dir,
            kubeconfig,
            clock: Clock::at(day(0)),
            replicas: Vec::new(),
            rolled_for: None,
        };
        for ns in TENANTS {
            // A tenant namespace that does not exist: no Secret, no Role (403 on everything).
            env.server.store().roles.insert(ns.into(), Vec::new());
        }
        for ns in present {
            env.add_tenant(ns);
        }
        env
    }

    fn add_tenant(&self, ns: &str) {
        self.server.insert("secrets", ns, shell(CLIENT));
        self.server.store().roles.insert(ns.into(), tenant_rules());
    }

    fn data(&self, ns: &str, name: &str) -> BTreeMap<String, String> {
        self.server.secret_data(ns, name)
    }

    fn material(&self, ns: &str, name: &str) -> Material {
        let data = self.data(ns, name);
        let pick = |pem: &str, tls: &str| data.get(pem).or_else(|| data.get(tls)).cloned().unwrap();
        Material {
            bundle: pick("ca.pem", "ca.crt"),
            cert: pick("cert.pem", "tls.crt"),
            key: pick("key.pem", "tls.key"),
        }
    }

    fn template_version(&self) -> Option<String> {
        self.server.get("deployments", NS, "buildkitd")?["spec"]["template"]["metadata"]["annotations"]
            ["kiln.dev/daemon-certs"]
            .as_str()
            .map(str::to_string)
    }

    /// Start the replicas once the daemon Secret has data; roll them when kiln restarted.
    fn sync_replicas(&mut self) {
        if self.data(NS, DAEMON).is_empty() {
            return;
        }
        let daemon = self.material(NS, DAEMON);
        if self.replicas.is_empty() {
            for i in 0..2 {
                let replica = Replica::start(&daemon, &self.clock);
                self.server.insert(
                    "endpointslices",
                    NS,
                    json!({
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {
                            "name": format!("buildkitd-{i}x"),
                            "labels": {"kubernetes.io/service-name": "buildkitd"},
                        },
                        "addressType": "IPv4",
                        "ports": [{"name": "grpc", "port": replica.port, "protocol": "TCP"}],
                        "endpoints": [{
                            "addresses": ["127.0.0.1"],
                            "conditions": {"ready": true, "serving": true},
                            "targetRef": {"kind": "Pod", "name": format!("buildkitd-{i}"), "namespace": NS},
                        }],
                    }),
                );
                self.replicas.push(replica);
            }
            self.rolled_for = self.template_version();
            return;
        }
        let version = self.template_version();
        if version != self.rolled_for {
            for replica in &self.replicas {
                replica.serve(&daemon);
            }
            self.rolled_for = version;
        }
    }

    fn kiln(&mut self, args: &[&str]) -> Output {
        if let Some(now) = args
            .iter()
            .position(|a| *a == "--now")
            .and_then(|i| args.get(i + 1))
            .and_then(|now| OffsetDateTime::parse(now, &Rfc3339).ok())
        {
            self.clock.set(now);
        }
        let output = kiln()
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("PRIVATE KEY"), "key material in output:\n{all}");
        self.sync_replicas();
        output
    }

    fn rotate(&mut self, now: &str, extra: &[&str]) -> Output {
        let mut args = vec!["rotate", "--namespace", NS, "--now", now, "--unsafe-clock"];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    fn rotate_ok(&mut self, now: &str, extra: &[&str]) -> String {
        let out = self.rotate(now, extra);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kiln rotate failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn status_json(&mut self, now: &str) -> Value {
        let out = self.kiln(&["status", "--namespace", NS, "--now", now, "-o", "json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
    }

    fn status_table(&mut self, now: &str) -> String {
        let out = self.kiln(&["status", "--namespace", NS, "--now", now]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn phase(&self) -> String {
        self.server.get("secrets", NS, CA).unwrap()["metadata"]["annotations"]["kiln.dev/phase"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn writes(&self) -> usize {
        self.server.store().writes
    }

    /// Every client Secret there is: the farm's and the present tenants'.
    fn clients(&self) -> Vec<(&'static str, Material)> {
        std::iter::once(NS)
            .chain(TENANTS)
            .filter(|ns| !self.data(ns, CLIENT).is_empty())
            .map(|ns| (ns, self.material(ns, CLIENT)))
            .collect()
    }
}

/// Every replica accepts every client and every client accepts every replica (rustls,
/// both directions: the client checks the daemon against its bundle, the daemon the
/// client against the bundle it loaded).
fn assert_every_tenant_trusted(env: &Env, clients: &[(&str, Material)], at: OffsetDateTime, context: &str) {
    assert_eq!(env.replicas.len(), 2, "{context}: replicas");
    for (ns, client) in clients {
        for (i, replica) in env.replicas.iter().enumerate() {
            rustls_mtls(&replica.material(), client, at, SERVICE_NAME)
                .unwrap_or_else(|e| panic!("{context}: tenant {ns} against replica {i}: {e}"));
        }
    }
}

fn leaf(material: &Material) -> pki::CertSummary {
    pki::parse_bundle(&material.cert).unwrap().remove(0)
}

fn tenant_rows(status: &Value) -> BTreeMap<String, Value> {
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["namespace"].as_str().unwrap().to_string(), row.clone()))
        .collect()
}

#[test]
fn bootstrap_fills_every_tenant_and_a_renewal_updates_them_all() {
    let mut env = Env::new(&TENANTS);
    env.rotate_ok(T0, &[]);
    let ca = env.data(NS, CA)["ca.crt"].clone();
    let clients = env.clients();
    assert_eq!(clients.len(), 4);
    for (ns, client) in &clients {
        let cert = leaf(client);
        assert_eq!(cert.common_name, Some(format!("kiln-client:{ns}")), "{ns}");
        // Chains to the CA alone (rustls, with the CA as the daemon's only root).
        let daemon = Material {
            bundle: ca.clone(),
            ..env.material(NS, DAEMON)
        };
        rustls_mtls(&daemon, client, day(0), SERVICE_NAME).unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
    assert_every_tenant_trusted(&env, &clients, day(0), "bootstrap");
    // The tenants are remembered on the CA Secret.
    let record = env.server.get("secrets", NS, CA).unwrap()["metadata"]["annotations"]["kiln.dev/tenants"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        record.starts_with("team-a=") && record.contains(",team-b=") && record.contains(",team-c="),
        "{record}"
    );
    let status = env.status_json(&at_days(1));
    let rows = tenant_rows(&status);
    assert_eq!(rows.len(), 4, "{status:#}");
    for ns in std::iter::once(NS).chain(TENANTS) {
        assert_eq!(rows[ns]["state"], "ok", "{ns}: {status:#}");
        assert_eq!(rows[ns]["ca"], "ca", "{ns}");
        assert_eq!(rows[ns]["daysLeft"], 89, "{ns}");
    }
    let table = env.status_table(&at_days(1));
    assert!(table.contains("TENANT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("team-b") && l.contains(" ok ")),
        "{table}"
    );
    assert!(env.rotate_ok(&at_days(1), &[]).contains("nothing to do"));

    // 61 days in: every client certificate is renewed, from the same CA.
    let serials: Vec<String> = clients.iter().map(|(_, m)| leaf(m).serial).collect();
    let out = env.rotate_ok(&at_days(61), &[]);
    assert!(out.contains("Secret/team-c/buildkit-client-certs"), "{out}");
    let renewed = env.clients();
    for ((ns, client), old) in renewed.iter().zip(&serials) {
        let cert = leaf(client);
        assert_ne!(&cert.serial, old, "{ns} not renewed");
        assert!(cert.not_after >= day(61 + 89), "{ns}");
    }
    assert_eq!(env.data(NS, CA)["ca.crt"], ca);
    assert_every_tenant_trusted(&env, &renewed, day(61), "after the renewal");
    // Old clients (still running) and the renewed ones alike.
    assert_every_tenant_trusted(&env, &clients, day(61), "old clients after the renewal");
}

#[test]
fn a_full_ca_rollover_keeps_every_tenant_trusted_by_every_replica() {
    let mut env = Env::new(&TENANTS);
    env.server.insert(
        "configmaps",
        NS,
        policy(&TENANTS, "rotation:\n  propagationDelay: 2d\n"),
    );
    env.rotate_ok(T0, &[]);
    let first_ca = env.data(NS, CA)["ca.crt"].clone();
    let mut previous = env.clients();
    let mut phases = vec![env.phase()];
    for d in [3, 4, 6, 7, 9, 10, 12, 13] {
        let flags: &[&str] = if d == 3 { &["--force-renew", "ca"] } else { &[] };
        env.rotate_ok(&at_days(d), flags);
        let current = env.clients();
        assert_eq!(current.len(), 4);
        let context = format!("day {d}, phase {}", env.phase());
        assert_every_tenant_trusted(&env, &current, day(d), &context);
        assert_every_tenant_trusted(
            &env,
            &previous,
            day(d),
            &format!("{context}, clients of the run before"),
        );
        if phases.last() != Some(&env.phase()) {
            phases.push(env.phase());
        }
        previous = current;
    }
    assert_eq!(phases, ["stable", "introduced", "leaves-reissued", "stable"]);
    let new_ca = env.data(NS, CA)["ca.crt"].clone();
    assert_ne!(new_ca, first_ca);
    for (ns, client) in env.clients() {
        assert_eq!(pki::parse_bundle(&client.bundle).unwrap().len(), 1, "{ns}");
        let daemon = Material {
            bundle: new_ca.clone(),
            ..env.material(NS, DAEMON)
        };
        rustls_mtls(&daemon, &client, day(13), SERVICE_NAME)
            .unwrap_or_else(|e| panic!("{ns} is not from the new CA: {e}"));
    }
}

#[test]
fn a_crash_after_each_tenant_write_is_finished_by_a_plain_rerun() {
    let mut env = Env::new(&TENANTS);
    env.rotate_ok(T0, &[]);
    let start = env.server.store().objects.clone();
    let before = env.clients();
    let writes = env.writes();
    env.rotate_ok(&at_days(61), &[]);
    // The record on the CA Secret, 4 clients, the daemon, the restart.
    let n = env.writes() - writes;
    assert_eq!(n, 7, "writes of a renewal with 3 tenants");
    for k in 1..n {
        let context = format!("crash after {k} of {n} writes");
        env.server.store().objects = start.clone();
        let daemon = env.material(NS, DAEMON);
        for replica in &env.replicas {
            replica.serve(&daemon);
        }
        env.rolled_for = env.template_version();
        let writes = env.writes();
        env.server.store().crash_after = Some(writes + k);
        let out = env.rotate(&at_days(61), &[]);
        env.server.store().crash_after = None;
        assert_eq!(out.status.code(), Some(1), "{context}");
        assert_eq!(env.writes(), writes + k, "{context}");
        // Half-written: the old processes and the new Secrets still trust each other.
        assert_every_tenant_trusted(&env, &env.clients(), day(61), &context);
        env.rotate_ok(&at_days(62), &[]);
        let after = env.clients();
        for (ns, client) in &after {
            assert!(
                leaf(client).not_after >= day(61 + 89),
                "{context}: {ns} not renewed"
            );
        }
        assert_every_tenant_trusted(&env, &after, day(62), &context);
        assert_every_tenant_trusted(&env, &before, day(62), &format!("{context}: old clients"));
        assert!(
            env.rotate_ok(&at_days(62), &[]).contains("nothing to do"),
            "{context}"
        );
    }
}

#[test]
fn a_missing_tenant_namespace_warns_never_blocks_renewals_but_holds_the_rollover() {
    let mut env = Env::new(&["team-a", "team-b"]);
    env.server.insert(
        "configmaps",
        NS,
        policy(&TENANTS, "rotation:\n  propagationDelay: 2d\n"),
    );
    let out = env.rotate_ok(T0, &[]);
    assert!(
        out.contains("warning: tenant team-c: its client Secret cannot be read"),
        "{out}"
    );
    assert_eq!(env.clients().len(), 3, "the others are filled");
    let events = env.server.events();
    assert!(
        events.iter().any(
            |e| e["note"].as_str().is_some_and(|n| n.starts_with("tenant team-c")) && e["type"] == "Warning"
        ),
        "{events:#?}"
    );
    let status = env.status_json(&at_days(1));
    let rows = tenant_rows(&status);
    assert_eq!(rows["team-c"]["state"], "missing", "{status:#}");
    assert_eq!(
        status["healthy"], true,
        "a missing tenant is a warning: {status:#}"
    );

    // Renewals elsewhere go on.
    env.rotate_ok(&at_days(61), &[]);
    for (ns, client) in env.clients() {
        assert!(leaf(&client).not_after >= day(61 + 89), "{ns}");
    }

    // A rollover: step 1 (adding trust) is taken, step 2 waits for team-c.
    env.rotate_ok(&at_days(62), &["--force-renew", "ca"]);
    assert_eq!(env.phase(), "introduced");
    let out = env.rotate_ok(&at_days(66), &[]);
    assert_eq!(env.phase(), "introduced", "{out}");
    assert!(
        out.contains("rollover held back: waiting for tenant namespace team-c to exist before the CA rollover can go on"),
        "{out}"
    );
    let status = env.status_json(&at_days(66));
    assert!(
        status["holdingBack"]
            .as_str()
            .unwrap()
            .starts_with("waiting for tenant namespace team-c to exist"),
        "{status:#}"
    );
    assert_eq!(
        tenant_rows(&status)["team-c"]["detail"],
        "waiting for tenant namespace team-c to exist before the CA rollover can go on"
    );

    // Its Role is synced before its Secret shell: a 404 now, still "not there yet".
    env.server.store().roles.insert("team-c".into(), tenant_rules());
    let out = env.rotate_ok(&at_days(66), &[]);
    assert!(
        out.contains("warning: tenant team-c: its client Secret cannot be read"),
        "{out}"
    );
    assert_eq!(env.phase(), "introduced", "{out}");
    assert!(
        env.server
            .store()
            .log
            .iter()
            .any(|l| l.starts_with("GET /api/v1/namespaces/team-c/secrets/")),
        "team-c read"
    );
    // The namespace appears: the next run fills it (with both CAs), then the rollover goes on.
    env.add_tenant("team-c");
    env.rotate_ok(&at_days(67), &[]);
    assert_eq!(env.clients().len(), 4);
    assert_eq!(
        pki::parse_bundle(&env.material("team-c", CLIENT).bundle)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        leaf(&env.material("team-c", CLIENT)).common_name.as_deref(),
        Some("kiln-client:team-c")
    );
    assert_every_tenant_trusted(&env, &env.clients(), day(67), "team-c filled");
    for d in [70, 73] {
        env.rotate_ok(&at_days(d), &[]);
        assert_every_tenant_trusted(&env, &env.clients(), day(d), &format!("day {d}"));
    }
    assert_eq!(env.phase(), "stable");
    for (ns, client) in env.clients() {
        assert_eq!(pki::parse_bundle(&client.bundle).unwrap().len(), 1, "{ns}");
    }
}

#[test]
fn a_removed_tenant_is_left_alone_and_named_in_status() {
    let mut env = Env::new(&TENANTS);
    env.rotate_ok(T0, &[]);
    let kept = env.server.get("secrets", "team-b", CLIENT).unwrap();
    let expiry = leaf(&env.material("team-b", CLIENT)).not_after;
    env.server
        .insert("configmaps", NS, policy(&["team-a", "team-c"], ""));
    env.server.store().log.clear();
    env.rotate_ok(&at_days(1), &[]);
    // Renewals go on for the others, never for team-b.
    env.rotate_ok(&at_days(61), &[]);
    assert!(leaf(&env.material("team-a", CLIENT)).not_after >= day(61 + 89));
    assert_eq!(env.server.get("secrets", "team-b", CLIENT).unwrap(), kept);
    assert!(
        !env.server
            .store()
            .log
            .iter()
            .any(|l| l.contains("/namespaces/team-b/")),
        "a request to team-b after its removal"
    );
    let status = env.status_json(&at_days(61));
    let row = &tenant_rows(&status)["team-b"];
    assert_eq!(row["state"], "removed", "{status:#}");
    let want = format!(
        "team-b: removed from the overlay; its certificate stays valid until {}; kiln cannot revoke (buildkitd has no CRL)",
        pki::rfc3339(expiry)
    );
    assert_eq!(row["detail"], want.as_str());
    assert!(env.status_table(&at_days(61)).contains(&want));
    // Once that certificate has expired, status no longer names it.
    let status = env.status_json(&at_days(91));
    assert!(!tenant_rows(&status).contains_key("team-b"), "{status:#}");
}

#[test]
fn rotate_keeps_the_live_secret_type_which_the_server_will_not_change() {
    let mut env = Env::new(&[]);
    env.server
        .insert("configmaps", NS, policy(&[], "certs:\n  format: tls\n"));
    // The farm's client Secret does not exist: rotate creates it with the shells' type.
    env.server
        .store()
        .objects
        .remove(&("secrets".into(), NS.into(), CLIENT.into()));
    env.rotate_ok(T0, &[]);
    env.rotate_ok(&at_days(61), &["--force-renew", "leaf"]);
    for name in [CA, DAEMON, CLIENT] {
        assert_eq!(
            env.server.get("secrets", NS, name).unwrap()["type"],
            "Opaque",
            "{name}"
        );
    }
    assert!(env.data(NS, CLIENT).contains_key("tls.crt"));
    // The server keeps the real rule: a type change is 422, whatever the writer.
    let mut changed = env.server.get("secrets", NS, DAEMON).unwrap();
    changed["type"] = json!("kubernetes.io/tls");
    let answer = env.server.raw(
        "PUT",
        &format!("/api/v1/namespaces/{NS}/secrets/{DAEMON}"),
        "application/json",
        &changed,
    );
    assert_eq!(answer["code"], 422, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("field is immutable"),
        "{answer}"
    );
    let patched = env.server.raw(
        "PATCH",
        &format!("/api/v1/namespaces/{NS}/secrets/{DAEMON}"),
        "application/merge-patch+json",
        &json!({"type": "kubernetes.io/tls"}),
    );
    assert_eq!(patched["code"], 422, "{patched}");
    assert_eq!(env.server.get("secrets", NS, DAEMON).unwrap()["type"], "Opaque");
}

/// One team's mistake in its own namespace never stops the farm: a tenant whose Secret
/// does not match the policy is held (not written, named, the rollover waits), a tenant
/// whose Secret refuses the write (`immutable: true`) fails only its own renewal, and a
/// tenant kiln renewed before but can no longer read is a failure in `status`.
#[test]
fn one_tenants_broken_secret_holds_only_that_tenant() {
    let mut env = Env::new(&TENANTS);
    env.server.insert(
        "configmaps",
        NS,
        policy(&TENANTS, "rotation:\n  propagationDelay: 2d\n"),
    );
    env.rotate_ok(T0, &[]);

    // team-a adds a key of its own; team-b freezes its Secret.
    let mut a = env.server.get("secrets", "team-a", CLIENT).unwrap();
    a["data"]["extra.txt"] = json!("aGVsbG8=");
    env.server.insert("secrets", "team-a", a.clone());
    let held = env.server.get("secrets", "team-a", CLIENT).unwrap();
    let mut b = env.server.get("secrets", "team-b", CLIENT).unwrap();
    b["immutable"] = json!(true);
    env.server.insert("secrets", "team-b", b);
    let frozen = env.server.get("secrets", "team-b", CLIENT).unwrap();

    // A renewal: every other Secret is renewed, team-a is left alone, team-b's write is
    // refused and the run exits 1 after finishing the rest.
    let out = env.rotate(&at_days(61), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("warning: tenant team-a: its client Secret does not match the policy"),
        "{stdout}"
    );
    assert!(
        stdout.contains("extra.txt"),
        "the held Secret's problem is named: {stdout}"
    );
    assert!(
        stdout.contains("warning: tenant team-b: failed to update Secret team-b/buildkit-client-certs"),
        "{stdout}"
    );
    assert!(
        stderr.contains("failed to write the client Secret of 1 tenant(s)"),
        "{stderr}"
    );
    assert_eq!(env.server.get("secrets", "team-a", CLIENT).unwrap(), held);
    assert_eq!(env.server.get("secrets", "team-b", CLIENT).unwrap(), frozen);
    for ns in [NS, "team-c"] {
        assert!(leaf(&env.material(ns, CLIENT)).not_after >= day(61 + 89), "{ns}");
    }
    assert!(
        leaf(&env.material(NS, DAEMON)).not_after >= day(61 + 89),
        "daemon"
    );
    // The old certificates of team-a and team-b are still trusted by the renewed daemons.
    assert_every_tenant_trusted(&env, &env.clients(), day(61), "after a partial renewal");

    let status = env.status_json(&at_days(61));
    let rows = tenant_rows(&status);
    assert_eq!(rows["team-a"]["state"], "held", "{status:#}");
    assert!(
        rows["team-a"]["detail"]
            .as_str()
            .unwrap()
            .contains("does not match the policy"),
        "{status:#}"
    );
    assert_eq!(status["healthy"], false, "a held tenant is a failure: {status:#}");

    // A rollover takes step 1 (the held tenant's bundle is left as it is) and waits at step 2.
    env.server
        .store()
        .objects
        .remove(&("secrets".into(), "team-b".into(), CLIENT.into()));
    env.server.insert("secrets", "team-b", shell(CLIENT));
    env.rotate_ok(&at_days(62), &["--force-renew", "ca"]);
    assert_eq!(env.phase(), "introduced");
    let out = env.rotate_ok(&at_days(66), &[]);
    assert_eq!(env.phase(), "introduced", "{out}");
    assert!(
        out.contains("waiting for the client Secret of tenant team-a to match the policy"),
        "{out}"
    );
    // Fixed: the rollover goes on and every tenant stays trusted.
    env.server.insert("secrets", "team-a", a_without_extra(&held));
    env.rotate_ok(&at_days(67), &[]);
    env.rotate_ok(&at_days(70), &[]);
    assert_eq!(env.phase(), "leaves-reissued");
    assert_every_tenant_trusted(&env, &env.clients(), day(70), "after step 2");

    // team-c's Role is deleted: kiln renewed it before, so status calls it a failure.
    env.server.store().roles.insert("team-c".into(), Vec::new());
    let status = env.status_json(&at_days(70));
    let row = &tenant_rows(&status)["team-c"];
    assert_eq!(row["state"], "unreadable", "{status:#}");
    assert!(row["notAfter"].is_string(), "{status:#}");
    assert_eq!(status["healthy"], false, "{status:#}");
}

fn a_without_extra(secret: &Value) -> Value {
    let mut secret = secret.clone();
    secret["data"].as_object_mut().unwrap().remove("extra.txt");
    secret
}

/// A run at a time with a fraction of a second records what the next run reads back: the
/// next run, a second later, has nothing to do.
#[test]
fn a_renewal_at_a_fractional_second_leaves_nothing_for_the_next_run() {
    let mut env = Env::new(&TENANTS);
    env.rotate_ok("2027-01-01T03:17:00.734Z", &[]);
    let writes = env.writes();
    let out = env.rotate_ok("2027-01-01T03:17:01Z", &[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(env.writes(), writes);
    env.rotate_ok("2027-03-03T03:17:00.251Z", &[]);
    let writes = env.writes();
    let out = env.rotate_ok("2027-03-03T03:18:00Z", &[]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(env.writes(), writes);
}
