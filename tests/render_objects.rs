//! Rendered objects: golden snapshots of a dev-like and a prod-like overlay (with three
//! tenant namespaces), and the properties reviewers care about (restricted pods,
//! least-privilege RBAC, empty Secrets, labels everywhere, the StatefulSet layout, a
//! NetworkPolicy that admits exactly the tenants).

use std::collections::BTreeMap;

use kiln::overlay::{Cache, CacheVolume, Mode, Overlay, Tenant, Toleration, Workload};
use kiln::pki::SecretFormat;
use kiln::render::{Context, Object, render};
use serde_json::Value;

mod support;

/// A small development farm: one rootless Deployment, the defaults almost everywhere.
fn dev() -> Overlay {
    let mut overlay = Overlay {
        namespace: "buildkit-dev".into(),
        ..Default::default()
    };
    overlay.buildkit.cache.size = "10Gi".into();
    overlay.kiln.image = "ghcr.io/kiln-dev/kiln:0.1.0".into();
    overlay
}

/// The tenants of [`prod`]: team-c runs its own Task.
const PROD_TENANTS: [(&str, bool); 3] = [("team-a", true), ("team-b", true), ("team-c", false)];

/// A production farm: a StatefulSet of three userns daemons, pinned to build nodes, with
/// cert-manager key names, a daemonless Task, bigger resources and three tenants.
fn prod() -> Overlay {
    let mut overlay = Overlay {
        namespace: "buildkit-prod".into(),
        create_namespace: false,
        common_labels: BTreeMap::from([("team".into(), "platform".into())]),
        ..Default::default()
    };
    overlay.buildkit.mode = Mode::Userns;
    overlay.buildkit.workload = Workload::Statefulset;
    overlay.buildkit.replicas = 3;
    overlay.buildkit.cache = Cache {
        volume: CacheVolume::Persistent,
        size: "100Gi".into(),
        storage_class: "fast-ssd".into(),
    };
    overlay.buildkit.extra_args = vec!["--debug".into()];
    overlay.buildkit.node_selector = BTreeMap::from([("kiln.dev/builder".into(), "true".into())]);
    overlay.buildkit.tolerations = vec![Toleration {
        key: Some("kiln.dev/builder".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    overlay.buildkit.resources.requests =
        BTreeMap::from([("cpu".into(), "4".into()), ("memory".into(), "8Gi".into())]);
    overlay.buildkit.resources.limits = BTreeMap::from([("memory".into(), "16Gi".into())]);
    overlay.tekton.daemonless = true;
    overlay.tekton.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
    overlay.certs.format = SecretFormat::Tls;
    overlay.kiln.image = "ghcr.io/kiln-dev/kiln:0.1.0".into();
    overlay.tenants = PROD_TENANTS
        .map(|(namespace, task)| Tenant {
            namespace: namespace.into(),
            task,
        })
        .to_vec();
    overlay
}

fn objects(overlay: &Overlay, name: &str) -> Vec<Object> {
    render(overlay, &Context::new(name)).unwrap()
}

fn stream(objects: &[Object]) -> String {
    objects
        .iter()
        .map(|o| kiln::yaml::to_string(&o.value).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The object `kind`/`name` in the overlay's own namespace (or cluster-scoped).
fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    let farm = objects
        .iter()
        .find(|o| o.kind == "ConfigMap" && o.name == "kiln-config")
        .and_then(|o| o.namespace.clone());
    &objects
        .iter()
        .find(|o| o.kind == kind && o.name == name && (o.namespace.is_none() || o.namespace == farm))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .value
}

#[test]
fn snapshot_dev() {
    insta::assert_snapshot!("dev", stream(&objects(&dev(), "dev")));
}

#[test]
fn snapshot_prod() {
    insta::assert_snapshot!("prod", stream(&objects(&prod(), "prod")));
}

/// Every pod template kiln runs itself (CronJob, Job, Task step) with its pod-level and
/// container-level security contexts merged the way the kubelet does.
fn kiln_containers(objects: &[Object]) -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    for object in objects {
        let (pod, containers) = match object.kind.as_str() {
            "CronJob" => {
                let pod = &object.value["spec"]["jobTemplate"]["spec"]["template"]["spec"];
                (pod["securityContext"].clone(), pod["containers"].clone())
            }
            "Job" => {
                let pod = &object.value["spec"]["template"]["spec"];
                (pod["securityContext"].clone(), pod["containers"].clone())
            }
            "Task" if !object.name.ends_with("-daemonless") => {
                (Value::Null, object.value["spec"]["steps"].clone())
            }
            _ => continue,
        };
        for container in containers.as_array().unwrap() {
            found.push((
                format!("{} {}", object.kind, object.name),
                pod.clone(),
                container["securityContext"].clone(),
            ));
        }
    }
    found
}

#[test]
fn kiln_pods_meet_the_restricted_pod_security_standard() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let containers = kiln_containers(&objects);
        // CronJob, Job and the kiln build Task, and its copy in each tenant that wants one.
        let copies = overlay.tenants.iter().filter(|t| t.task).count();
        assert_eq!(containers.len(), 3 + copies, "{name}");
        for (what, pod, container) in containers {
            let field = |key: &str| {
                let c = &container[key];
                if c.is_null() { pod[key].clone() } else { c.clone() }
            };
            assert_eq!(field("runAsNonRoot"), true, "{what}: runAsNonRoot");
            assert!(
                field("runAsUser").as_i64().is_some_and(|uid| uid > 0),
                "{what}: runAsUser"
            );
            assert_eq!(
                field("seccompProfile")["type"],
                "RuntimeDefault",
                "{what}: seccomp"
            );
            assert_eq!(container["allowPrivilegeEscalation"], false, "{what}: escalation");
            assert_eq!(
                container["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}: caps"
            );
            assert!(container["capabilities"]["add"].is_null(), "{what}: added caps");
            assert_ne!(container["privileged"], true, "{what}: privileged");
            assert_eq!(
                container["readOnlyRootFilesystem"], true,
                "{what}: read-only root"
            );
        }
    }
}

/// (apiGroup, resource, resourceNames, verbs) of each rule of a Role.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let (groups, resources) = (strings(&rule["apiGroups"]), strings(&rule["resources"]));
            assert_eq!((groups.len(), resources.len()), (1, 1), "{rule}");
            (
                groups[0].clone(),
                resources[0].clone(),
                strings(&rule["resourceNames"]),
                strings(&rule["verbs"]),
            )
        })
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| i.to_string()).collect()
}

#[test]
fn every_secret_rule_in_every_role_has_resource_names() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let roles: Vec<&Object> = objects.iter().filter(|o| o.kind == "Role").collect();
        assert_eq!(roles.len(), 1 + overlay.tenants.len(), "{name}");
        assert!(
            objects
                .iter()
                .all(|o| o.kind != "ClusterRole" && o.kind != "ClusterRoleBinding")
        );
        for role in roles {
            for (group, resource, names, verbs) in rules(&role.value) {
                if resource == "secrets" {
                    assert_eq!(group, "");
                    assert!(
                        !names.is_empty(),
                        "{} {:?}: a Secret rule without resourceNames",
                        role.name,
                        role.namespace
                    );
                }
                for verb in &verbs {
                    assert!(
                        ![
                            "*",
                            "watch",
                            "delete",
                            "deletecollection",
                            "escalate",
                            "bind",
                            "impersonate"
                        ]
                        .contains(&verb.as_str()),
                        "{} {verb}",
                        role.name
                    );
                }
                // A rule without names is one Kubernetes cannot scope by name.
                if names.is_empty() {
                    assert!(
                        (resource == "events" && verbs.iter().all(|v| v == "create" || v == "patch"))
                            || (resource == "endpointslices" && verbs == ["list"]),
                        "{} {resource} {verbs:?} is not scoped by resourceNames",
                        role.name
                    );
                } else {
                    assert!(
                        !verbs.iter().any(|v| v == "list" || v == "create"),
                        "{} {resource}: {verbs:?} ignore resourceNames",
                        role.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_farm_role_names_every_resource_it_can() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let role = find(&objects, "Role", "kiln-rotate");
        let mut expected = vec![
            (
                "".to_string(),
                "secrets".to_string(),
                strings(&["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"]),
                strings(&["get", "update"]),
            ),
            (
                "".into(),
                "configmaps".into(),
                strings(&["kiln-config"]),
                strings(&["get"]),
            ),
        ];
        match overlay.buildkit.workload {
            Workload::Statefulset => expected.push((
                "apps".into(),
                "statefulsets".into(),
                strings(&["buildkitd"]),
                strings(&["get", "patch"]),
            )),
            Workload::Deployment => expected.extend([
                (
                    "apps".into(),
                    "deployments".into(),
                    strings(&["buildkitd"]),
                    strings(&["get", "patch"]),
                ),
                (
                    "discovery.k8s.io".into(),
                    "endpointslices".into(),
                    vec![],
                    strings(&["list"]),
                ),
            ]),
        }
        // Only events.k8s.io Events (kube's Recorder): no core Events rule.
        expected.push((
            "events.k8s.io".into(),
            "events".into(),
            vec![],
            strings(&["create", "patch"]),
        ));
        assert_eq!(rules(role), expected, "{name}");
        // The Role says why the unnamed rules cannot be named.
        let note = role["metadata"]["annotations"]["kiln.dev/rbac-note"]
            .as_str()
            .unwrap();
        assert!(note.contains("events create and patch"), "{note}");
        assert_eq!(
            note.contains("endpointslices list"),
            overlay.buildkit.workload == Workload::Deployment,
            "{note}"
        );
        assert_eq!(
            find(&objects, "RoleBinding", "kiln-rotate")["subjects"][0]["name"],
            "kiln-rotate"
        );
    }
}

#[test]
fn each_tenant_role_lets_the_farms_service_account_renew_only_its_client_secret() {
    let overlay = prod();
    let objects = objects(&overlay, "prod");
    for (namespace, _) in PROD_TENANTS {
        let in_tenant: Vec<&Object> = objects
            .iter()
            .filter(|o| o.namespace.as_deref() == Some(namespace))
            .collect();
        let one = |kind: &str| {
            let found: Vec<_> = in_tenant.iter().filter(|o| o.kind == kind).collect();
            assert_eq!(found.len(), 1, "{namespace}: {kind}");
            &found[0].value
        };
        let role = one("Role");
        assert_eq!(role["metadata"]["name"], "kiln-rotate-buildkit-prod");
        assert_eq!(
            rules(role),
            [(
                "".to_string(),
                "secrets".to_string(),
                strings(&["buildkit-client-certs"]),
                strings(&["get", "update"])
            )]
        );
        let binding = one("RoleBinding");
        assert_eq!(binding["metadata"]["name"], "kiln-rotate-buildkit-prod");
        assert_eq!(
            binding["roleRef"],
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kiln-rotate-buildkit-prod"})
        );
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "kiln-rotate", "namespace": "buildkit-prod"}])
        );
        // The client Secret shell under the farm's name, like the farm's own.
        let secret = one("Secret");
        assert_eq!(secret["metadata"]["name"], "buildkit-client-certs");
        let farm = find(&objects, "Secret", "buildkit-client-certs");
        assert_eq!(secret["metadata"]["annotations"], farm["metadata"]["annotations"]);
        assert_eq!(secret["type"], farm["type"]);
    }
    // team-c said task: false.
    let tasks: Vec<_> = objects
        .iter()
        .filter(|o| o.kind == "Task")
        .map(|o| format!("{}/{}", o.namespace.as_deref().unwrap(), o.name))
        .collect();
    assert_eq!(
        tasks,
        [
            "buildkit-prod/buildkit",
            "buildkit-prod/buildkit-daemonless",
            "team-a/buildkit",
            "team-b/buildkit"
        ]
    );
}

#[test]
fn the_network_policy_admits_exactly_the_tenant_namespaces_and_the_rotate_pods() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let policy = find(&objects, "NetworkPolicy", "buildkitd");
        assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        let ingress = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 2, "{name}");
        let port = serde_json::json!([{"port": 1234, "protocol": "TCP"}]);
        let mut namespaces: Vec<String> = vec![overlay.namespace.clone()];
        namespaces.extend(overlay.tenants.iter().map(|t| t.namespace.clone()));
        assert_eq!(
            ingress[0],
            serde_json::json!({
                "from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
                ]}}],
                "ports": port,
            }),
            "{name}"
        );
        // The rotate pods: exactly the CronJob's and the bootstrap Job's pod labels select.
        let selector = ingress[1]["from"][0]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap();
        assert_eq!(ingress[1]["from"].as_array().unwrap().len(), 1);
        assert!(ingress[1]["from"][0].get("namespaceSelector").is_none());
        assert_eq!(ingress[1]["ports"], port);
        let pods = |kind: &str| -> Vec<Value> {
            objects
                .iter()
                .filter(|o| {
                    o.kind == kind
                        || (kind == "*" && o.value.pointer("/spec/template/metadata/labels").is_some())
                })
                .map(|o| match o.kind.as_str() {
                    "CronJob" => {
                        o.value["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].clone()
                    }
                    _ => o.value["spec"]["template"]["metadata"]["labels"].clone(),
                })
                .collect()
        };
        let matches = |labels: &Value| selector.iter().all(|(k, v)| &labels[k] == v);
        for labels in pods("CronJob").iter().chain(&pods("Job")) {
            assert!(matches(labels), "{name}: rotate pod {labels} not selected");
        }
        // Not the daemon's own pods.
        let daemon = pods("*")
            .into_iter()
            .filter(|l| l["app.kubernetes.io/name"] == "buildkitd")
            .count();
        assert_eq!(daemon, 1);
        for labels in pods("*")
            .iter()
            .filter(|l| l["app.kubernetes.io/name"] == "buildkitd")
        {
            assert!(!matches(labels), "{name}: the daemon is selected as a rotate pod");
        }
    }
}

#[test]
fn the_ca_shell_lists_the_keys_rotate_writes() {
    use kiln::rotate::state::{CA_CERT_KEY, CA_KEY_KEY};
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let ca = find(&objects, "Secret", "buildkit-ca");
        assert_eq!(
            ca["metadata"]["annotations"]["kiln.dev/secret-keys"],
            format!("{CA_CERT_KEY}, {CA_KEY_KEY}")
        );
        assert_eq!(
            kiln::render::secrets::CA_SECRET_KEYS,
            format!("{CA_CERT_KEY}, {CA_KEY_KEY}")
        );
    }
}

#[test]
fn secrets_carry_no_data() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let secrets: Vec<_> = objects.iter().filter(|o| o.kind == "Secret").collect();
        assert_eq!(secrets.len(), 3 + overlay.tenants.len());
        for secret in secrets {
            let keys: Vec<_> = secret.value.as_object().unwrap().keys().cloned().collect();
            assert_eq!(
                keys,
                ["apiVersion", "kind", "metadata", "type"],
                "{}",
                secret.name
            );
            let annotations = &secret.value["metadata"]["annotations"];
            // Flux creates it once and never garbage-collects it; Argo CD neither prunes it
            // nor deletes it with the Application.
            assert_eq!(annotations["kustomize.toolkit.fluxcd.io/ssa"], "IfNotPresent");
            assert_eq!(annotations["kustomize.toolkit.fluxcd.io/prune"], "disabled");
            assert_eq!(
                annotations["argocd.argoproj.io/sync-options"],
                "Prune=false,Delete=false"
            );
        }
        // No PEM anywhere in the output, not even in the ConfigMap.
        assert!(!stream(&objects).contains("-----BEGIN"));
    }
}

#[test]
fn every_object_is_labelled_and_stamped() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        for object in objects(&overlay, name) {
            let metadata = &object.value["metadata"];
            let labels = &metadata["labels"];
            for key in [
                "name",
                "instance",
                "version",
                "component",
                "part-of",
                "managed-by",
            ] {
                let value = &labels[format!("app.kubernetes.io/{key}")];
                assert!(
                    value.is_string(),
                    "{} {} lacks app.kubernetes.io/{key}",
                    object.kind,
                    object.name
                );
            }
            assert_eq!(labels["app.kubernetes.io/instance"], name);
            // The version of the app the name label names: BuildKit's for buildkitd's
            // objects, kiln's for kiln's.
            let version = match labels["app.kubernetes.io/name"].as_str() {
                Some("buildkitd") => "v0.32.2",
                _ => kiln::VERSION,
            };
            assert_eq!(
                labels["app.kubernetes.io/version"], version,
                "{} {}",
                object.kind, object.name
            );
            assert_eq!(labels["app.kubernetes.io/managed-by"], "kiln");
            for (key, value) in &overlay.common_labels {
                assert_eq!(labels[key], value.as_str(), "{} {}", object.kind, object.name);
            }
            let annotations = &metadata["annotations"];
            assert_eq!(
                annotations["kiln.dev/generated-by"],
                format!("kiln {}", kiln::VERSION)
            );
            let wave: i32 = annotations["argocd.argoproj.io/sync-wave"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((-2..=1).contains(&wave));
        }
    }
}

#[test]
fn sync_waves_put_rbac_and_secrets_before_bootstrap_and_daemon() {
    let objects = objects(&dev(), "dev");
    let wave = |kind: &str, name: &str| -> i32 {
        find(&objects, kind, name)["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let bootstrap = wave("Job", "kiln-bootstrap");
    for (kind, name) in [
        ("Role", "kiln-rotate"),
        ("RoleBinding", "kiln-rotate"),
        ("ServiceAccount", "kiln-rotate"),
        ("ConfigMap", "kiln-config"),
    ] {
        assert!(wave(kind, name) < wave("Secret", "buildkit-ca"), "{kind} {name}");
    }
    assert!(wave("Secret", "buildkit-daemon-certs") < bootstrap);
    assert!(bootstrap < wave("Deployment", "buildkitd"));
    assert_eq!(wave("Deployment", "buildkitd"), wave("Task", "buildkit"));
}

#[test]
fn statefulset_layout_has_headless_service_and_pdb() {
    let objects = objects(&prod(), "prod");
    let sts = find(&objects, "StatefulSet", "buildkitd");
    let service = find(&objects, "Service", "buildkitd");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(sts["spec"]["serviceName"], "buildkitd");
    assert_eq!(sts["spec"]["replicas"], 3);
    let selector = &sts["spec"]["selector"]["matchLabels"];
    assert_eq!(service["spec"]["selector"], *selector);
    assert!(selector.get("app.kubernetes.io/version").is_none());
    let pdb = find(&objects, "PodDisruptionBudget", "buildkitd");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *selector);
    // Pod labels must satisfy the selector.
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels[key], value);
    }
    assert!(objects.iter().all(|o| o.kind != "Deployment"));
    // userns mode
    assert_eq!(sts["spec"]["template"]["spec"]["hostUsers"], false);
    // the Task hashes over replicas when no address is given
    let task = find(&objects, "Task", "buildkit");
    let address = task["spec"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "BUILDKIT_DAEMON_ADDRESS")
        .unwrap();
    assert_eq!(address["default"], "");
    assert!(
        objects
            .iter()
            .any(|o| o.kind == "Task" && o.name == "buildkit-daemonless")
    );
}

#[test]
fn deployment_layout_has_cluster_ip_service_and_no_pdb() {
    let objects = objects(&dev(), "dev");
    let service = find(&objects, "Service", "buildkitd");
    assert!(service["spec"]["clusterIP"].is_null());
    assert!(
        objects
            .iter()
            .all(|o| o.kind != "PodDisruptionBudget" && o.kind != "StatefulSet")
    );
    assert!(
        objects
            .iter()
            .any(|o| o.kind == "Namespace" && o.name == "buildkit-dev")
    );
    assert!(
        !render(&prod(), &Context::new("prod"))
            .unwrap()
            .iter()
            .any(|o| o.kind == "Namespace")
    );
}

#[test]
fn same_input_same_bytes() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        assert_eq!(stream(&objects(&overlay, name)), stream(&objects(&overlay, name)));
    }
}

#[test]
fn names_are_unique_per_kind_and_namespace() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let mut seen = std::collections::BTreeSet::new();
        for object in &objects {
            assert!(
                seen.insert((object.kind.clone(), object.namespace.clone(), object.name.clone())),
                "duplicate {} {:?} {}",
                object.kind,
                object.namespace,
                object.name
            );
        }
    }
}

/// The daemonless step's script, run by a real `sh` against a stand-in
/// `buildctl-daemonless.sh` that records its argv and writes a metadata file.
#[test]
fn daemonless_script_builds_the_buildctl_command_and_writes_results() {
    use std::os::unix::fs::PermissionsExt;

    let objects = objects(&prod(), "prod");
    let task = find(&objects, "Task", "buildkit-daemonless");
    let step = &task["spec"]["steps"][0];
    assert_eq!(step["args"], serde_json::json!(["$(params.BUILD_ARGS[*])"]));
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // What Tekton substitutes before it runs the script.
    let script = step["script"]
        .as_str()
        .unwrap()
        .replace("$(results.IMAGE_DIGEST.path)", &path("digest"))
        .replace("$(results.IMAGE_URL.path)", &path("url"))
        .replace("/tmp/metadata.json", &path("metadata.json"));
    for prefix in ["$(params.", "$(results.", "$(workspaces.", "$(context."] {
        assert!(
            !script.contains(prefix),
            "Tekton variable {prefix}… left in the script: pass it as env"
        );
    }
    std::fs::write(dir.path().join("script.sh"), script).unwrap();
    let stub = dir.path().join("buildctl-daemonless.sh");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {argv}\n\
             printf '{{\\n  \"containerimage.digest\": \"sha256:abc\"\\n}}\\n' > {meta}\n",
            argv = path("argv"),
            meta = path("metadata.json")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = std::process::Command::new("sh")
        .arg(path("script.sh"))
        .args(["A=1", "B=two words"])
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .env("IMAGE", "registry.example.com/app:1")
        .env("CONTEXT_DIR", "/workspace/source/.")
        .env("DOCKERFILE", "./Dockerfile")
        .env("PLATFORMS", "linux/amd64,linux/arm64")
        .env("PUSH", "true")
        .env("CACHE_REF", "registry.example.com/app:cache")
        .status()
        .unwrap();
    assert!(status.success());
    let argv = std::fs::read_to_string(path("argv")).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    assert_eq!(
        argv,
        [
            "build",
            "--progress=plain",
            "--frontend=dockerfile.v0",
            "--local",
            "context=/workspace/source/.",
            "--local",
            "dockerfile=/workspace/source/.",
            "--opt",
            "filename=./Dockerfile",
            "--output",
            "type=image,name=registry.example.com/app:1,push=true",
            "--metadata-file",
            &path("metadata.json"),
            "--opt",
            "build-arg:A=1",
            "--opt",
            "build-arg:B=two words",
            "--opt",
            "platform=linux/amd64,linux/arm64",
            "--export-cache",
            "type=inline",
            "--import-cache",
            "type=registry,ref=registry.example.com/app:cache",
        ]
    );
    assert_eq!(std::fs::read_to_string(path("digest")).unwrap(), "sha256:abc");
    assert_eq!(
        std::fs::read_to_string(path("url")).unwrap(),
        "registry.example.com/app:1"
    );
}

/// Every core object of every mode and workload passes `kubernetes-validate --strict`
/// for the oldest and newest supported Kubernetes (`support::KUBE_VERSIONS`).
#[test]
fn core_objects_pass_kubernetes_validate_in_every_mode() {
    let Some(validate) = support::tool("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for mode in [Mode::Rootless, Mode::Privileged, Mode::Userns] {
        for workload in [Workload::Deployment, Workload::Statefulset] {
            let mut overlay = prod();
            overlay.buildkit.mode = mode;
            overlay.buildkit.workload = workload;
            overlay.create_namespace = true;
            for object in objects(&overlay, "matrix") {
                if object.api_version == "tekton.dev/v1" {
                    continue; // not a core kind: no schema to validate against
                }
                let file = dir.path().join(format!(
                    "{mode:?}-{workload:?}-{}-{}.yaml",
                    object.kind, object.name
                ));
                std::fs::write(&file, kiln::yaml::to_string(&object.value).unwrap()).unwrap();
                files.push(file);
            }
        }
    }
    for version in support::KUBE_VERSIONS {
        let (passed, report) = support::kubernetes_validate(&validate, version, &files);
        assert!(passed, "kubernetes-validate {version} failed:\n{report}");
    }
}
