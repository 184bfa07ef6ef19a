//! Rendered objects: golden snapshots of a dev-like and a prod-like overlay, and the
//! properties reviewers care about (restricted pods, least-privilege RBAC, empty Secrets,
//! labels everywhere, the StatefulSet layout).

use std::collections::BTreeMap;

use kiln::overlay::{Cache, CacheVolume, Mode, Overlay, Toleration, Workload};
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

/// A production farm: a StatefulSet of three userns daemons, pinned to build nodes, with
/// cert-manager key names, a daemonless Task and bigger resources.
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

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|o| o.kind == kind && o.name == name)
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
        // CronJob, Job and the kiln build Task.
        assert_eq!(containers.len(), 3, "{name}");
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

#[test]
fn role_names_every_resource_it_can() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let role = find(&objects, "Role", "kiln-rotate");
        let rules = role["rules"].as_array().unwrap();
        let mut scoped = Vec::new();
        for rule in rules {
            let resources = &rule["resources"];
            if resources == &serde_json::json!(["events"]) {
                // create cannot be scoped by name: the name does not exist yet.
                assert_eq!(rule["verbs"], serde_json::json!(["create"]));
                continue;
            }
            let names = rule["resourceNames"].as_array().expect("resourceNames");
            assert!(!names.is_empty());
            for verb in rule["verbs"].as_array().unwrap() {
                assert!(!["list", "watch", "create", "delete", "*"].contains(&verb.as_str().unwrap()));
            }
            scoped.push(resources[0].as_str().unwrap().to_string());
        }
        let workload = if overlay.buildkit.workload == Workload::Statefulset {
            "statefulsets"
        } else {
            "deployments"
        };
        assert_eq!(scoped, ["secrets", workload], "{name}");
        let secrets = &rules[0]["resourceNames"];
        assert_eq!(
            secrets,
            &serde_json::json!(["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"])
        );
        assert_eq!(
            find(&objects, "RoleBinding", "kiln-rotate")["subjects"][0]["name"],
            "kiln-rotate"
        );
    }
}

#[test]
fn secrets_carry_no_data() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let secrets: Vec<_> = objects.iter().filter(|o| o.kind == "Secret").collect();
        assert_eq!(secrets.len(), 3);
        for secret in secrets {
            let keys: Vec<_> = secret.value.as_object().unwrap().keys().cloned().collect();
            assert_eq!(
                keys,
                ["apiVersion", "kind", "metadata", "type"],
                "{}",
                secret.name
            );
            let annotations = &secret.value["metadata"]["annotations"];
            assert_eq!(annotations["kustomize.toolkit.fluxcd.io/ssa"], "IfNotPresent");
            assert_eq!(annotations["argocd.argoproj.io/sync-options"], "Prune=false");
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
fn names_are_unique_per_kind() {
    for (overlay, name) in [(dev(), "dev"), (prod(), "prod")] {
        let objects = objects(&overlay, name);
        let mut seen = std::collections::BTreeSet::new();
        for object in &objects {
            assert!(
                seen.insert((object.kind.clone(), object.name.clone())),
                "duplicate {} {}",
                object.kind,
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
