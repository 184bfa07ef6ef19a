//! checkov over the rendered objects: kiln's own pods (rotation CronJob, bootstrap Job,
//! the kiln build Task's step, in the farm's namespace and a tenant's) and its RBAC pass the
//! checks that matter, and the daemon fails only the documented BuildKit exemptions.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use kiln::overlay::{Mode, Overlay, Tenant, Workload};
use kiln::render::{Context, Object, render};
use serde_json::{Value, json};

/// Checks every kiln-run pod must pass: no privilege, no root, no escalation, no host
/// namespaces, no added capabilities, RuntimeDefault seccomp, read-only root, high uid.
const MUST_PASS: &[&str] = &[
    "CKV_K8S_16", // privileged containers
    "CKV_K8S_17", // hostPID
    "CKV_K8S_18", // hostIPC
    "CKV_K8S_19", // hostNetwork
    "CKV_K8S_20", // allowPrivilegeEscalation
    "CKV_K8S_22", // read-only root filesystem
    "CKV_K8S_23", // root containers
    "CKV_K8S_25", // added capabilities
    "CKV_K8S_28", // NET_RAW
    "CKV_K8S_37", // capabilities dropped
    "CKV_K8S_31", // seccomp RuntimeDefault
    "CKV_K8S_40", // high uid
];

/// Failures accepted on every workload, with why: choices left to the overlay, not holes.
const EVERYWHERE: &[(&str, &str)] = &[
    (
        "CKV_K8S_43",
        "images are pinned by version tag; pin a digest in the overlay's image to go further",
    ),
    (
        "CKV_K8S_15",
        "imagePullPolicy keeps the default for versioned tags",
    ),
    (
        "CKV_K8S_11",
        "no CPU limit by default (limits throttle builds); the overlay's resources may set one",
    ),
];

/// kiln rotate needs its ServiceAccount token: it reads and writes Secrets through the API.
const ROTATE: &[(&str, &str)] = &[(
    "CKV_K8S_38",
    "kiln rotate calls the API server with its ServiceAccount token",
)];

/// A Task's pod ServiceAccount and token mount come from the TaskRun, not the Task.
const TASK: &[(&str, &str)] = &[
    ("CKV_K8S_38", "the TaskRun's podTemplate decides the token mount"),
    (
        "CKV_K8S_29",
        "a Task has no pod-level securityContext (the TaskRun's podTemplate has); the step sets it",
    ),
    (
        "CKV_K8S_8",
        "a build step runs to completion: liveness probes do not apply",
    ),
    (
        "CKV_K8S_9",
        "a build step runs to completion: readiness probes do not apply",
    ),
];

/// The rootless daemon: documented in its kiln.dev/pod-security annotation.
const ROOTLESS: &[(&str, &str)] = &[
    (
        "CKV_K8S_20",
        "rootlesskit's setuid newuidmap/newgidmap need privilege escalation",
    ),
    (
        "CKV_K8S_22",
        "rootlesskit copies /etc and /run up and buildkitd writes runtime state",
    ),
    (
        "CKV_K8S_28",
        "capabilities are not dropped: user namespace setup needs setuid helpers",
    ),
    (
        "CKV_K8S_37",
        "capabilities are not dropped: user namespace setup needs setuid helpers",
    ),
    (
        "CKV_K8S_31",
        "seccomp Unconfined: RuntimeDefault blocks the unshare/mount calls rootless needs",
    ),
    (
        "CKV_K8S_40",
        "uid 1000 is fixed by the moby/buildkit rootless image",
    ),
];

/// The privileged and userns daemons: `privileged: true` (userns: inside hostUsers: false).
const PRIVILEGED: &[(&str, &str)] = &[
    (
        "CKV_K8S_16",
        "BuildKit's OCI worker needs privileged: true outside rootless mode",
    ),
    ("CKV_K8S_20", "privileged implies privilege escalation"),
    (
        "CKV_K8S_22",
        "buildkitd writes runtime state outside its state volume",
    ),
    (
        "CKV_K8S_23",
        "buildkitd runs as root (userns: root inside the pod's user namespace only)",
    ),
    ("CKV_K8S_28", "privileged implies every capability"),
    ("CKV_K8S_37", "privileged implies every capability"),
    ("CKV_K8S_31", "a privileged container is not confined by seccomp"),
    ("CKV_K8S_40", "buildkitd runs as root"),
];

/// A Pod equivalent to what Tekton creates for a Task's steps, so checkov can judge them
/// (checkov does not know the Task kind).
fn task_pod(task: &Object) -> Value {
    let steps = task.value["spec"]["steps"].as_array().unwrap();
    let containers: Vec<Value> = steps
        .iter()
        .map(|step| {
            let mut c = step.clone();
            let object = c.as_object_mut().unwrap();
            if let Some(resources) = object.remove("computeResources") {
                object.insert("resources".into(), resources);
            }
            // Tekton substitutes a param's default into the image; checkov needs the real tag.
            let image = object["image"].as_str().unwrap().to_string();
            if let Some(param) = image.strip_prefix("$(params.").and_then(|p| p.strip_suffix(')')) {
                let params = task.value["spec"]["params"].as_array().unwrap();
                let default = params.iter().find(|p| p["name"] == param).unwrap()["default"].clone();
                object.insert("image".into(), default);
            }
            if let Some(script) = object.remove("script") {
                object.insert("command".into(), json!(["sh", "-c", script]));
            }
            c
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": task.name,
            "namespace": task.namespace,
            "labels": task.value["metadata"]["labels"],
        },
        "spec": {
            "containers": containers,
            "volumes": task.value["spec"]["volumes"],
        },
    })
}

/// Run checkov once over every rendered object; returns resource → (passed, failed) check ids.
/// The check ids a resource passed and failed.
#[derive(Default)]
struct Verdict {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
}

fn checkov(objects: &[Value]) -> Option<BTreeMap<String, Verdict>> {
    let checkov = support::tool("checkov")?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    let text = objects
        .iter()
        .map(|o| kiln::yaml::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(checkov)
        .arg("-f")
        .arg(&file)
        .args(["--framework", "kubernetes", "--output", "json", "--skip-download"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report = if report.is_array() {
        report[0].clone()
    } else {
        report
    };
    assert!(
        report["results"]["parsing_errors"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let mut by_resource: BTreeMap<String, Verdict> = BTreeMap::new();
    for (key, failed) in [("passed_checks", false), ("failed_checks", true)] {
        for check in report["results"][key].as_array().unwrap() {
            let resource = check["resource"].as_str().unwrap().to_string();
            let id = check["check_id"].as_str().unwrap().to_string();
            let entry = by_resource.entry(resource).or_default();
            if failed {
                entry.failed.insert(id);
            } else {
                entry.passed.insert(id);
            }
        }
    }
    Some(by_resource)
}

fn overlay(name: &str, mode: Mode, workload: Workload, replicas: u32) -> Overlay {
    let mut overlay = Overlay {
        namespace: format!("buildkit-{name}"),
        ..Default::default()
    };
    overlay.buildkit.mode = mode;
    overlay.buildkit.workload = workload;
    overlay.buildkit.replicas = replicas;
    overlay.tekton.daemonless = true;
    overlay.tenants = vec![Tenant {
        namespace: format!("team-{name}"),
        task: true,
    }];
    overlay
}

fn ids(list: &[&[(&str, &str)]]) -> BTreeSet<String> {
    list.iter()
        .flat_map(|l| l.iter().map(|(id, _)| id.to_string()))
        .collect()
}

#[test]
fn checkov_passes_kiln_pods_and_only_documented_daemon_exemptions() {
    let cases = [
        ("rootless", Mode::Rootless, Workload::Deployment, 1),
        ("privileged", Mode::Privileged, Workload::Statefulset, 2),
        ("userns", Mode::Userns, Workload::Statefulset, 3),
    ];
    let mut values = Vec::new();
    for (name, mode, workload, replicas) in cases {
        for object in render(&overlay(name, mode, workload, replicas), &Context::new(name)).unwrap() {
            if object.kind == "Task" {
                values.push(task_pod(&object));
            }
            values.push(object.value);
        }
    }
    let Some(results) = checkov(&values) else { return };
    let result = |resource: &str| {
        results
            .get(resource)
            .unwrap_or_else(|| panic!("checkov did not check {resource}; it saw {:?}", results.keys()))
    };

    for (name, mode, workload, _) in cases {
        let ns = format!("buildkit-{name}");
        // kiln's own pods.
        for (resource, allowed) in [
            (format!("CronJob.{ns}.kiln-rotate"), ids(&[EVERYWHERE, ROTATE])),
            (format!("Job.{ns}.kiln-bootstrap"), ids(&[EVERYWHERE, ROTATE])),
            (format!("Pod.{ns}.buildkit"), ids(&[EVERYWHERE, TASK])),
            // The tenant's copy of the Task.
            (format!("Pod.team-{name}.buildkit"), ids(&[EVERYWHERE, TASK])),
        ] {
            let Verdict { passed, failed } = result(&resource);
            for check in MUST_PASS {
                assert!(
                    passed.contains(*check),
                    "{resource} must pass {check}; failed: {failed:?}"
                );
            }
            let unexpected: Vec<_> = failed.difference(&allowed).collect();
            assert!(
                unexpected.is_empty(),
                "{resource} fails undocumented checks {unexpected:?}"
            );
        }
        // RBAC, the farm's and the tenant's, passes every check checkov has for it: no
        // wildcards, bind or escalate (Role); no reading all Secrets, no impersonation
        // (RoleBinding).
        for (resource, must) in [
            (format!("Role.{ns}.kiln-rotate"), "CKV_K8S_49"),
            (format!("RoleBinding.{ns}.kiln-rotate"), "CKV2_K8S_5"),
            (format!("Role.team-{name}.kiln-rotate-{ns}"), "CKV_K8S_49"),
            (format!("RoleBinding.team-{name}.kiln-rotate-{ns}"), "CKV2_K8S_5"),
        ] {
            let Verdict { passed, failed } = result(&resource);
            assert!(failed.is_empty(), "{resource} fails {failed:?}");
            assert!(passed.contains(must), "{resource} must pass {must}");
        }
        // The daemon and the daemonless Task: only the documented BuildKit exemptions.
        let kind = match workload {
            Workload::Deployment => "Deployment",
            Workload::Statefulset => "StatefulSet",
        };
        let exempt = match mode {
            Mode::Rootless => ROOTLESS,
            Mode::Privileged | Mode::Userns => PRIVILEGED,
        };
        let daemon = format!("{kind}.{ns}.buildkitd");
        let Verdict { passed, failed } = result(&daemon);
        let allowed = ids(&[EVERYWHERE, exempt]);
        let unexpected: Vec<_> = failed.difference(&allowed).collect();
        assert!(
            unexpected.is_empty(),
            "{daemon} fails undocumented checks {unexpected:?}"
        );
        for check in [
            "CKV_K8S_8",
            "CKV_K8S_9",
            "CKV_K8S_12",
            "CKV_K8S_13",
            "CKV_K8S_17",
            "CKV_K8S_19",
            "CKV_K8S_38",
        ] {
            assert!(passed.contains(check), "{daemon} must pass {check}");
        }
        if mode == Mode::Rootless {
            for check in ["CKV_K8S_16", "CKV_K8S_23"] {
                assert!(passed.contains(check), "rootless {daemon} must pass {check}");
            }
        }
        let daemonless = format!("Pod.{ns}.buildkit-daemonless");
        let Verdict { failed, .. } = result(&daemonless);
        let allowed = ids(&[EVERYWHERE, TASK, ROOTLESS]);
        let unexpected: Vec<_> = failed.difference(&allowed).collect();
        assert!(
            unexpected.is_empty(),
            "{daemonless} fails undocumented checks {unexpected:?}"
        );
    }
}
