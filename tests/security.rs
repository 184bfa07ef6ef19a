//! checkov over everything kiln renders: every mode (rootless, privileged, userns) in a
//! Deployment and a StatefulSet, with tenants and the daemonless Task; digest-pinned images;
//! the shipped overlays; and the top-level CronJob.yaml's overlay (namespace default).
//!
//! The scan must report no failed check. Every check an object fails on purpose carries a
//! `checkov.io/skip<NN>` annotation on the object itself, with a reason, and every such
//! annotation is needed: the same objects with their skip annotations removed fail exactly
//! the checks they name. A tampered copy (one skip without its reason, one skip removed)
//! proves the harness catches both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kiln::overlay::{CacheVolume, Mode, Overlay, Tenant, Workload};
use kiln::render::checkov::PREFIX;
use kiln::render::{Context, Object, render, render_resolved};
use serde_json::{Value, json};

/// Checks every kiln-run pod (the rotate CronJob and Job, the `kiln build` step) must pass
/// outright, never by a skip: no privilege, no root, no escalation, no host namespaces, no
/// added capabilities, RuntimeDefault seccomp, read-only root, high uid.
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
    "CKV_K8S_31", // seccomp RuntimeDefault
    "CKV_K8S_37", // capabilities dropped
    "CKV_K8S_40", // high uid
];

/// What the daemon passes outright in every mode: probes, memory requests and limits, no host
/// namespaces, no token.
const DAEMON_MUST_PASS: &[&str] = &[
    "CKV_K8S_8",
    "CKV_K8S_9",
    "CKV_K8S_12",
    "CKV_K8S_13",
    "CKV_K8S_17",
    "CKV_K8S_18",
    "CKV_K8S_19",
    "CKV_K8S_29",
    "CKV_K8S_38",
];

/// A Pod equivalent to what Tekton creates for a Task's steps, so checkov can judge them
/// (checkov does not know the Task kind). It carries the Task's labels and annotations, which
/// Tekton copies to the TaskRun's pod: the Task's skips are the pod's.
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
            // Tekton substitutes a param's default into the image; checkov needs the real one.
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
            "annotations": task.value["metadata"]["annotations"],
        },
        "spec": {
            "containers": containers,
            "volumes": task.value["spec"]["volumes"],
        },
    })
}

/// What checkov scans for one rendered object: the object, or for a Task its pod.
fn scanned(object: Object) -> Value {
    match object.kind.as_str() {
        "Task" => task_pod(&object),
        _ => object.value,
    }
}

/// checkov's resource id of an object: `Kind.namespace.name`.
fn resource_id(object: &Value) -> String {
    format!(
        "{}.{}.{}",
        object["kind"].as_str().unwrap(),
        object["metadata"]["namespace"].as_str().unwrap_or("default"),
        object["metadata"]["name"].as_str().unwrap()
    )
}

/// The checks an object's skip annotations name, with their reasons (None: no reason).
fn skips(object: &Value) -> BTreeMap<String, Option<String>> {
    let Some(annotations) = object["metadata"]["annotations"].as_object() else {
        return BTreeMap::new();
    };
    annotations
        .iter()
        .filter(|(key, _)| key.starts_with(PREFIX))
        .map(|(_, value)| {
            let value = value.as_str().unwrap();
            match value.split_once('=') {
                Some((check, reason)) => (check.to_string(), Some(reason.to_string())),
                None => (value.to_string(), None),
            }
        })
        .collect()
}

/// The same object without its skip annotations.
fn stripped(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.retain(|key, _| !key.starts_with(PREFIX));
    }
    object
}

/// One checkov finding.
#[derive(Debug)]
struct Finding {
    file: String,
    resource: String,
    check: String,
    /// `suppress_comment` of a skipped check.
    comment: Option<String>,
}

/// A checkov report: passed, failed and skipped checks.
struct Report {
    passed: Vec<Finding>,
    failed: Vec<Finding>,
    skipped: Vec<Finding>,
}

impl Report {
    fn ids<'a>(list: &'a [Finding], file: &str, resource: &str) -> BTreeSet<&'a str> {
        list.iter()
            .filter(|f| f.file == file && f.resource == resource)
            .map(|f| f.check.as_str())
            .collect()
    }
}

/// Write `files` (name → objects) into `dir` and start checkov over it.
fn start_checkov(checkov: &Path, dir: &Path, files: &BTreeMap<String, Vec<Value>>) -> Child {
    for (name, objects) in files {
        let text = objects
            .iter()
            .map(|o| kiln::yaml::to_string(o).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        std::fs::write(dir.join(name), text).unwrap();
    }
    Command::new(checkov)
        .arg("-d")
        .arg(dir)
        .args(["--framework", "kubernetes", "--output", "json", "--skip-download"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish_checkov(child: Child) -> Report {
    let output = child.wait_with_output().unwrap();
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
        "checkov could not parse: {}",
        report["results"]["parsing_errors"]
    );
    let list = |key: &str| -> Vec<Finding> {
        report["results"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Finding {
                file: c["file_path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string(),
                resource: c["resource"].as_str().unwrap().to_string(),
                check: c["check_id"].as_str().unwrap().to_string(),
                comment: c["check_result"]["suppress_comment"].as_str().map(str::to_string),
            })
            .collect()
    };
    Report {
        passed: list("passed_checks"),
        failed: list("failed_checks"),
        skipped: list("skipped_checks"),
    }
}

/// Everything wrong with the scan of `files`: failed checks, skips without a reason, and
/// skip annotations that name a check the object does not fail (`bare` is the scan of the
/// same objects with their skips removed).
fn problems(files: &BTreeMap<String, Vec<Value>>, scan: &Report, bare: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for f in &scan.failed {
        out.push(format!(
            "{}: {} fails {} with no skip annotation",
            f.file, f.resource, f.check
        ));
    }
    for f in &scan.skipped {
        match f.comment.as_deref() {
            None | Some("") | Some("No comment provided") => out.push(format!(
                "{}: {} skips {} without a reason",
                f.file, f.resource, f.check
            )),
            Some(_) => {}
        }
    }
    for (file, objects) in files {
        for object in objects {
            let resource = resource_id(object);
            let named: BTreeSet<String> = skips(object).into_keys().collect();
            let failed: BTreeSet<String> = Report::ids(&bare.failed, file, &resource)
                .into_iter()
                .map(str::to_string)
                .collect();
            for check in named.difference(&failed) {
                out.push(format!(
                    "{file}: {resource} skips {check}, which it passes without the skip"
                ));
            }
            for check in failed.difference(&named) {
                // Reported by the first loop too, unless checkov dropped a skip.
                if !Report::ids(&scan.failed, file, &resource).contains(check.as_str()) {
                    out.push(format!("{file}: {resource} fails {check} only without its skips"));
                }
            }
        }
    }
    out
}

fn case(name: &str, mode: Mode, workload: Workload, replicas: u32) -> Overlay {
    let mut overlay = Overlay {
        namespace: format!("buildkit-{name}"),
        ..Default::default()
    };
    overlay.buildkit.mode = mode;
    overlay.buildkit.workload = workload;
    overlay.buildkit.replicas = replicas;
    overlay.tekton.daemonless = true;
    overlay.tenants = vec![
        Tenant {
            namespace: format!("team-{name}"),
            task: true,
        },
        Tenant {
            namespace: format!("secret-only-{name}"),
            task: false,
        },
    ];
    overlay
}

const DIGEST_A: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const DIGEST_B: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// Every scanned file: file name → the objects checkov reads.
fn inputs() -> BTreeMap<String, Vec<Value>> {
    let mut overlays: Vec<(String, Overlay)> = Vec::new();
    for mode in [Mode::Rootless, Mode::Privileged, Mode::Userns] {
        for (workload, replicas) in [(Workload::Deployment, 1), (Workload::Statefulset, 3)] {
            let name = format!("{mode:?}-{workload:?}").to_lowercase();
            overlays.push((name.clone(), case(&name, mode, workload, replicas)));
        }
    }
    // Pinned images, pull Secrets, a CPU limit on the daemon and a persistent cache: no
    // CKV_K8S_43, _15 or _11 skip is left to render.
    let mut pinned = case("pinned", Mode::Privileged, Workload::Statefulset, 2);
    pinned.buildkit.digest = DIGEST_A.into();
    pinned.tekton.daemonless_digest = DIGEST_B.into();
    pinned.kiln.digest = DIGEST_B.into();
    pinned.kiln.image_pull_secrets = vec!["ghcr-pull".into()];
    pinned.buildkit.image_pull_secrets = vec!["mirror-pull".into()];
    pinned.buildkit.resources.limits.insert("cpu".into(), "8".into());
    pinned.buildkit.cache.volume = CacheVolume::Persistent;
    pinned.buildkit.cache.size = "100Gi".into();
    overlays.push(("pinned".into(), pinned));
    // Rootless: buildkit.digest pins the daemonless Task's image too.
    let mut rootless_pinned = case("rootless-pinned", Mode::Rootless, Workload::Deployment, 1);
    rootless_pinned.buildkit.digest = DIGEST_A.into();
    rootless_pinned.kiln.image = format!("registry.example.com/kiln:1.0@{DIGEST_B}");
    overlays.push(("rootless-pinned".into(), rootless_pinned));
    // The overlay of the top-level CronJob.yaml.
    overlays.push((
        "default".into(),
        Overlay {
            namespace: "default".into(),
            create_namespace: false,
            ..Default::default()
        },
    ));

    let mut files = BTreeMap::new();
    for (name, overlay) in overlays {
        let objects = render(&overlay, &Context::new(name.clone())).unwrap();
        files.insert(format!("{name}.yaml"), objects.into_iter().map(scanned).collect());
    }
    for resolved in kiln::overlay::load_all(&support::repo_root().join("overlays")).unwrap() {
        let objects = render_resolved(&resolved).unwrap();
        files.insert(
            format!("shipped-{}.yaml", resolved.name),
            objects.into_iter().map(scanned).collect(),
        );
    }
    files
}

/// A copy of one CronJob in its own namespace with its first skip's reason cut off and its
/// last skip removed: the harness must report both.
fn tampered(files: &BTreeMap<String, Vec<Value>>) -> (String, Vec<Value>) {
    let mut cron = files["rootless-deployment.yaml"]
        .iter()
        .find(|o| o["kind"] == "CronJob")
        .unwrap()
        .clone();
    cron["metadata"]["namespace"] = json!("tampered");
    let annotations = cron["metadata"]["annotations"].as_object_mut().unwrap();
    let first = format!("{PREFIX}01");
    let check = annotations[&first]
        .as_str()
        .unwrap()
        .split('=')
        .next()
        .unwrap()
        .to_string();
    annotations.insert(first, json!(check));
    let last = annotations
        .keys()
        .filter(|k| k.starts_with(PREFIX))
        .max()
        .unwrap()
        .clone();
    annotations.remove(&last);
    ("tampered.yaml".into(), vec![cron])
}

#[test]
fn checkov_finds_nothing_unannotated_and_every_skip_is_needed() {
    let Some(checkov) = support::tool("checkov") else {
        return;
    };
    let mut files = inputs();
    let (name, objects) = tampered(&files);
    files.insert(name, objects);
    let bare_files: BTreeMap<String, Vec<Value>> = files
        .iter()
        .map(|(name, objects)| (name.clone(), objects.iter().map(stripped).collect()))
        .collect();

    // Both scans at once: each takes a while. checkov skips hidden directories, so the
    // temporary ones get a name without the default leading dot.
    let dir = || {
        tempfile::Builder::new()
            .prefix("kiln-checkov-")
            .tempdir()
            .unwrap()
    };
    let (scan_dir, bare_dir) = (dir(), dir());
    let scan = start_checkov(&checkov, scan_dir.path(), &files);
    let bare = start_checkov(&checkov, bare_dir.path(), &bare_files);
    let (scan, bare) = (finish_checkov(scan), finish_checkov(bare));

    // The tampered copy: both faults are caught, and nothing else in it is.
    let all = problems(&files, &scan, &bare);
    let (tampered, real): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| p.starts_with("tampered.yaml"));
    assert_eq!(tampered.len(), 2, "{tampered:#?}");
    assert!(
        tampered[0].contains("fails") && tampered[0].contains("with no skip annotation"),
        "{tampered:#?}"
    );
    assert!(tampered[1].contains("without a reason"), "{tampered:#?}");
    assert!(real.is_empty(), "checkov findings:\n{}", real.join("\n"));

    // Every case and shipped overlay was scanned, with its workloads and Task pods.
    let scanned: BTreeSet<&str> = scan.passed.iter().map(|f| f.file.as_str()).collect();
    for name in files.keys() {
        assert!(scanned.contains(name.as_str()), "checkov did not scan {name}");
    }
    let passed = |file: &str, resource: &str| Report::ids(&scan.passed, file, resource);
    let skipped = |file: &str, resource: &str| Report::ids(&scan.skipped, file, resource);

    for (file, objects) in &files {
        if file == "tampered.yaml" {
            continue;
        }
        for object in objects {
            let resource = resource_id(object);
            let kind = object["kind"].as_str().unwrap();
            let component = object["metadata"]["labels"]["app.kubernetes.io/component"].as_str();
            let kiln_pod =
                matches!(kind, "CronJob" | "Job") || (kind == "Pod" && !resource.ends_with("-daemonless"));
            if kiln_pod {
                let passed = passed(file, &resource);
                for check in MUST_PASS {
                    assert!(
                        passed.contains(check),
                        "{file}: {resource} must pass {check} outright; skipped: {:?}",
                        skipped(file, &resource)
                    );
                }
                // A CPU limit is set where it costs nothing.
                assert!(
                    passed.contains("CKV_K8S_11"),
                    "{file}: {resource} has no CPU limit"
                );
            }
            if matches!(kind, "Deployment" | "StatefulSet") && component == Some("daemon") {
                let passed = passed(file, &resource);
                for check in DAEMON_MUST_PASS {
                    assert!(passed.contains(check), "{file}: {resource} must pass {check}");
                }
                let rootless = object["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .contains("-rootless");
                if rootless {
                    for check in ["CKV_K8S_16", "CKV_K8S_23"] {
                        assert!(
                            passed.contains(check),
                            "{file}: rootless {resource} must pass {check}"
                        );
                    }
                }
            }
            // RBAC, ServiceAccounts and Secrets need no skip (outside the namespace default).
            if matches!(kind, "Role" | "RoleBinding" | "ServiceAccount" | "Secret")
                && object["metadata"]["namespace"] != "default"
            {
                assert!(skips(object).is_empty(), "{file}: {resource} carries skips");
            }
        }
        // RBAC passes what checkov has for it: no wildcards, bind or escalate (Role); no
        // reading all Secrets, no impersonation (RoleBinding).
        for object in objects.iter().filter(|o| o["kind"] == "Role") {
            assert!(passed(file, &resource_id(object)).contains("CKV_K8S_49"));
        }
        for object in objects.iter().filter(|o| o["kind"] == "RoleBinding") {
            assert!(passed(file, &resource_id(object)).contains("CKV2_K8S_5"));
        }
    }

    // Pinned images pass CKV_K8S_43 and _15 outright, and a CPU limit CKV_K8S_11: none of the
    // pinned cases' objects skips them.
    for file in ["pinned.yaml", "rootless-pinned.yaml"] {
        for object in &files[file] {
            let named = skips(object);
            for check in ["CKV_K8S_43", "CKV_K8S_15"] {
                assert!(
                    !named.contains_key(check),
                    "{file}: {} skips {check}",
                    resource_id(object)
                );
            }
            if file == "pinned.yaml" {
                assert!(!named.contains_key("CKV_K8S_11"), "{}", resource_id(object));
            }
        }
    }
    // The namespace default is skipped only there (that it is skipped wherever checkov
    // judges it is checked above), and it was scanned.
    for (file, objects) in &files {
        for object in objects {
            if object["metadata"]["namespace"] != "default" {
                assert!(
                    !skips(object).contains_key("CKV_K8S_21"),
                    "{file}: {}",
                    resource_id(object)
                );
            }
        }
    }
    assert!(skipped("default.yaml", "CronJob.default.kiln-rotate").contains("CKV_K8S_21"));
}
