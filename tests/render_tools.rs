//! Rendered output against real tools: every overlay directory builds with `kubectl kustomize`
//! (the prod overlay's three tenants in their own namespaces), and every core object passes `kubernetes-validate --strict` for the oldest and newest
//! Kubernetes kiln supports (`support::KUBE_VERSIONS`: 1.30 and 1.37). Without the tools
//! (plain `cargo test` outside CI) the tests say SKIPPED and pass; under CI a missing tool fails.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{kiln, repo_root, tool};

/// Kinds that are not core Kubernetes (no schema in kubernetes-validate).
const NOT_CORE: &[&str] = &["kustomization.yaml"];
const NOT_CORE_PREFIXES: &[&str] = &["task-"];

/// Render the shipped overlays (with `flavor`) into a fresh directory; returns (dir, out).
fn render(flavor: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered");
    let status = kiln()
        .current_dir(repo_root())
        .args(["render", "--gitops", flavor, "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    (dir, out)
}

fn overlay_dirs(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.join("kustomization.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Every file under `dir` (tenant objects sit in `<namespace>/` subdirectories), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_overlay_directory_builds_with_kubectl_kustomize() {
    let Some(kubectl) = tool("kubectl") else { return };
    let (_dir, out) = render("argocd");
    let dirs = overlay_dirs(&out);
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    for dir in dirs {
        let text = kustomize_build(&kubectl, &dir);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        // Kustomize emits every listed object, unchanged in count.
        let files = files_under(&dir).len() - 1;
        assert_eq!(docs.len(), files, "{}", dir.display());
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "Service",
            "Secret",
            "CronJob",
            "Task",
        ] {
            assert!(kinds.contains(&kind), "{}: no {kind} in {kinds:?}", dir.display());
        }
    }
    // The committed examples build too.
    for example in ["examples/argocd", "examples/flux"] {
        for dir in overlay_dirs(&repo_root().join(example)) {
            kustomize_build(&kubectl, &dir);
        }
    }
}

/// The prod overlay's three tenants survive `kubectl kustomize` in their own namespaces: the
/// rendered kustomization sets no `namespace:`, which would move every object into one.
#[test]
fn a_farm_with_three_tenants_builds_with_kubectl_kustomize_in_four_namespaces() {
    let Some(kubectl) = tool("kubectl") else { return };
    let (_dir, out) = render("flux");
    let kustomization = fs::read_to_string(out.join("prod/kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("namespace:"), "{kustomization}");
    let flux = fs::read_to_string(out.join("flux/kustomization-prod.yaml")).unwrap();
    assert!(!flux.contains("targetNamespace"), "{flux}");
    let text = kustomize_build(&kubectl, &out.join("prod"));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut by_namespace: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for doc in &docs {
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let what = format!(
            "{}/{}",
            doc["kind"].as_str().unwrap(),
            doc["metadata"]["name"].as_str().unwrap()
        );
        by_namespace.entry(namespace).or_default().push(what);
    }
    for list in by_namespace.values_mut() {
        list.sort();
    }
    let namespaces: Vec<&str> = by_namespace.keys().map(String::as_str).collect();
    // The farm's Namespace object is cluster-scoped (""); no tenant Namespace is rendered.
    assert_eq!(namespaces, ["", "buildkit-prod", "team-a", "team-b", "team-c"]);
    assert_eq!(by_namespace[""], ["Namespace/buildkit-prod"]);
    let tenant = |task: bool| {
        let mut objects = vec![
            "Role/kiln-rotate-buildkit-prod",
            "RoleBinding/kiln-rotate-buildkit-prod",
            "Secret/buildkit-client-certs",
        ];
        if task {
            objects.push("Task/buildkit");
        }
        objects
    };
    assert_eq!(by_namespace["team-a"], tenant(true));
    assert_eq!(by_namespace["team-b"], tenant(true));
    assert_eq!(by_namespace["team-c"], tenant(false));
}

/// `kubectl kustomize DIR`, which must succeed; its output.
fn kustomize_build(kubectl: &Path, dir: &Path) -> String {
    let built = Command::new(kubectl).arg("kustomize").arg(dir).output().unwrap();
    assert!(
        built.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    String::from_utf8(built.stdout).unwrap()
}

/// Every core object file of a render (not kustomization.yaml, not Tekton Tasks).
fn core_files(out: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in overlay_dirs(out) {
        for path in files_under(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if NOT_CORE.contains(&name.as_str()) || NOT_CORE_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_core_object_passes_kubernetes_validate_strict() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let (dir, out) = render("kustomize");
    let mut files = core_files(&out);
    // The top-level CronJob.yaml too.
    files.push(repo_root().join("CronJob.yaml"));
    // And an extra manifest, rendered from a template.
    let extra_overlays = dir.path().join("overlays");
    fs::create_dir_all(extra_overlays.join("qa/extra")).unwrap();
    fs::write(
        extra_overlays.join("qa.yaml"),
        "namespace: buildkit-{{overlay}}\n",
    )
    .unwrap();
    fs::write(
        extra_overlays.join("qa/extra/quota.yaml.hbs"),
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: builds\n  namespace: \"{{namespace}}\"\nspec:\n  hard:\n    pods: \"20\"\n",
    )
    .unwrap();
    let qa_out = dir.path().join("qa-rendered");
    let status = kiln()
        .current_dir(dir.path())
        .args(["render", "--overlays", "overlays", "--out", "qa-rendered"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(qa_out.join("qa/resourcequota-builds.yaml").exists());
    files.extend(core_files(&qa_out));
    assert!(files.len() > 50, "{} files", files.len());
    // The prod overlay's three tenants are among them.
    let tenant_files = files
        .iter()
        .filter(|f| {
            f.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("team-")
        })
        .count();
    assert_eq!(tenant_files, 9, "Role, RoleBinding and Secret of three tenants");

    for version in support::KUBE_VERSIONS {
        let (ok, report) = support::kubernetes_validate(&validate, version, &files);
        assert!(ok, "Kubernetes {version}:\n{report}");
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        // CronJob.yaml holds several documents, so at least one pass per file.
        assert!(
            passed >= files.len(),
            "Kubernetes {version}: {passed} passed of {} files:\n{report}",
            files.len()
        );
        assert!(
            !report.contains("Couldn't find schema"),
            "Kubernetes {version}: a core kind has no schema:\n{report}"
        );
    }
}
