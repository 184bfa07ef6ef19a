//! `kiln render`, `kiln check` and `kiln schema` through the real binary: golden streams,
//! layouts, atomic writes, stale-file removal, drift detection and every bad-input case.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::{entries, kiln, repo_root, stderr, stdout};

/// Every file under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// A scratch directory holding `overlays/` with the given files (paths relative to it).
fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join("overlays").join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

/// A workspace with a copy of the shipped overlays.
fn shipped_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let overlays = dir.path().join("overlays");
    fs::create_dir_all(&overlays).unwrap();
    for (name, bytes) in tree(&repo_root().join("overlays")) {
        let path = overlays.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    dir
}

fn run(dir: &Path, args: &[&str]) -> Output {
    kiln().current_dir(dir).args(args).output().unwrap()
}

#[test]
fn stdout_stream_of_dev_is_golden() {
    let out = run(&repo_root(), &["render", "--stdout", "--overlay", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!("stdout_dev", stdout(&out));
}

#[test]
fn stdout_stream_of_prod_is_golden() {
    let out = run(&repo_root(), &["render", "--stdout", "--overlay", "prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!("stdout_prod", stdout(&out));
}

#[test]
fn argocd_and_flux_wrappers_are_golden() {
    let ws = shipped_workspace();
    let out = run(ws.path(), &["render", "--gitops", "argocd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = tree(&ws.path().join("rendered"));
    let listing: Vec<&str> = files.keys().map(String::as_str).collect();
    insta::assert_snapshot!("layout_argocd", listing.join("\n"));
    insta::assert_snapshot!("argocd_prod", String::from_utf8_lossy(&files["argocd/prod.yaml"]));

    let out = run(ws.path(), &["render", "--gitops", "flux"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = tree(&ws.path().join("rendered"));
    assert!(
        !files.keys().any(|f| f.starts_with("argocd/")),
        "argocd files are stale now: {:?}",
        files.keys()
    );
    insta::assert_snapshot!(
        "flux_gitrepository",
        String::from_utf8_lossy(&files["flux/gitrepository.yaml"])
    );
    insta::assert_snapshot!(
        "flux_prod",
        String::from_utf8_lossy(&files["flux/kustomization-prod.yaml"])
    );
}

#[test]
fn every_file_starts_with_a_header_naming_its_overlay() {
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render", "--gitops", "argocd"]).status.success());
    for (path, bytes) in tree(&ws.path().join("rendered")) {
        let text = String::from_utf8(bytes).unwrap();
        let first = text.lines().next().unwrap();
        if path == ".kiln-manifest" {
            assert!(first.starts_with("# Files kiln render wrote"), "{first}");
            continue;
        }
        let overlay = path.split('/').next_back().unwrap().trim_end_matches(".yaml");
        let overlay = if path.starts_with("argocd/") {
            overlay
        } else {
            path.split('/').next().unwrap()
        };
        assert_eq!(
            first,
            format!(
                "# Rendered by kiln {} from overlays/{overlay}.yaml. Do not edit: run kiln render.",
                env!("CARGO_PKG_VERSION")
            ),
            "{path}"
        );
    }
}

#[test]
fn render_is_deterministic() {
    let ws = shipped_workspace();
    assert!(
        run(ws.path(), &["render", "--gitops", "flux", "--out", "a"])
            .status
            .success()
    );
    assert!(
        run(ws.path(), &["render", "--gitops", "flux", "--out", "b"])
            .status
            .success()
    );
    let (a, b) = (tree(&ws.path().join("a")), tree(&ws.path().join("b")));
    assert!(a.len() > 40, "{} files", a.len());
    // Paths differ only in the Flux Kustomization path (./a/… vs ./b/…).
    let normalize = |m: BTreeMap<String, Vec<u8>>, dir: &str| -> BTreeMap<String, String> {
        m.into_iter()
            .map(|(k, v)| {
                let text = String::from_utf8(v)
                    .unwrap()
                    .replace(&format!("path: ./{dir}/"), "path: ./X/");
                // The manifest's hashes follow the contents, which are compared themselves.
                let text = if k == ".kiln-manifest" {
                    text.lines()
                        .map(|l| l.rsplit("  ").next().unwrap())
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    text
                };
                (k, text)
            })
            .collect()
    };
    assert_eq!(normalize(a, "a"), normalize(b, "b"));
    let one = run(&repo_root(), &["render", "--stdout"]);
    let two = run(&repo_root(), &["render", "--stdout"]);
    assert!(one.status.success());
    assert_eq!(one.stdout, two.stdout);
    // A second render into the same tree changes nothing.
    let again = run(ws.path(), &["render", "--gitops", "flux", "--out", "a"]);
    assert!(
        stderr(&again).contains(": 0 files changed, 0 removed"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn embedded_default_overlay_renders_in_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = tree(&dir.path().join("rendered"));
    assert!(files.contains_key("default/kustomization.yaml"));
    assert!(files.contains_key("default/namespace-buildkit.yaml"));
    let text = String::from_utf8_lossy(&files["default/deployment-buildkitd.yaml"]).into_owned();
    assert!(
        text.starts_with("# Rendered by kiln 0.1.0 from the embedded default overlay."),
        "{text}"
    );
    assert_eq!(entries(dir.path()), ["rendered"]);
}

#[test]
fn schema_is_json_schema_of_the_overlay() {
    let out = run(&repo_root(), &["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Overlay");
    assert_eq!(schema["additionalProperties"], false);
    for field in ["namespace", "extends", "buildkit", "certs", "rotation", "gitops"] {
        assert!(schema["properties"].get(field).is_some(), "no {field}");
    }
    let text = stdout(&out);
    assert!(
        text.contains("\"rootless\"") && text.contains("\"statefulset\""),
        "enums are listed"
    );
}

#[test]
fn check_passes_on_a_fresh_render_and_fails_with_a_diff_after_a_hand_edit() {
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render"]).status.success());
    let ok = run(ws.path(), &["check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "");

    let file = ws.path().join("rendered/prod/statefulset-buildkitd.yaml");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("replicas: 3", "replicas: 5")).unwrap();
    fs::remove_file(ws.path().join("rendered/dev/service-buildkitd.yaml")).unwrap();
    let bad = run(ws.path(), &["check"]);
    assert_eq!(bad.status.code(), Some(1));
    let diff = stdout(&bad);
    assert!(
        diff.contains("--- a/prod/statefulset-buildkitd.yaml\n+++ b/prod/statefulset-buildkitd.yaml"),
        "{diff}"
    );
    assert!(diff.contains("\n-  replicas: 5\n+  replicas: 3\n"), "{diff}");
    assert!(diff.contains("missing: dev/service-buildkitd.yaml"), "{diff}");
    assert!(
        stderr(&bad).contains("rendered is stale or hand-edited (2 differences)"),
        "{}",
        stderr(&bad)
    );

    // An overlay change makes the committed tree stale too.
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render"]).status.success());
    fs::remove_file(ws.path().join("overlays/staging.yaml")).unwrap();
    let stale = run(ws.path(), &["check"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stdout(&stale).contains("stale: staging/statefulset-buildkitd.yaml"),
        "{}",
        stdout(&stale)
    );
    // check never writes.
    assert!(
        ws.path()
            .join("rendered/staging/statefulset-buildkitd.yaml")
            .exists()
    );
}

#[test]
fn stale_files_are_removed_and_foreign_files_kept() {
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render"]).status.success());
    let rendered = ws.path().join("rendered");
    fs::write(rendered.join("README.md"), "hand-written\n").unwrap();
    fs::write(rendered.join("prod/NOTES.md"), "notes\n").unwrap();
    fs::create_dir(rendered.join("empty")).unwrap();

    // prod stops being rendered: its files go, the foreign ones stay.
    fs::remove_file(ws.path().join("overlays/prod.yaml")).unwrap();
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("3 other files left alone") || stderr(&out).contains("other files left alone")
    );
    assert_eq!(entries(&rendered.join("prod")), ["NOTES.md"]);
    assert_eq!(
        fs::read_to_string(rendered.join("README.md")).unwrap(),
        "hand-written\n"
    );
    assert!(rendered.join("empty").is_dir());
    let manifest = fs::read_to_string(rendered.join(".kiln-manifest")).unwrap();
    assert!(!manifest.contains("prod/"), "{manifest}");
    assert!(manifest.contains("dev/kustomization.yaml"), "{manifest}");
    assert!(!manifest.contains("README.md"));
    // No temporary directories are left beside the output.
    assert_eq!(entries(ws.path()), ["overlays", "rendered"]);
}

#[test]
fn rendering_some_overlays_keeps_the_others() {
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render", "--gitops", "argocd"]).status.success());
    let before = tree(&ws.path().join("rendered"));
    fs::write(
        ws.path().join("overlays/dev.yaml"),
        "extends: base\nbuildkit:\n  replicas: 2\n",
    )
    .unwrap();
    let out = run(ws.path(), &["render", "--gitops", "argocd", "--overlay", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = tree(&ws.path().join("rendered"));
    for (path, bytes) in &before {
        if path.starts_with("prod/") || path.starts_with("staging/") || path == "argocd/prod.yaml" {
            assert_eq!(after.get(path), Some(bytes), "{path} changed");
        }
    }
    assert!(
        after.contains_key("dev/poddisruptionbudget-buildkitd.yaml"),
        "2 replicas bring a PDB"
    );
    assert_eq!(
        // One more `<sha256>  <path>` line.
        before[".kiln-manifest"].len() + 64 + 2 + "dev/poddisruptionbudget-buildkitd.yaml\n".len(),
        after[".kiln-manifest"].len()
    );
}

#[test]
fn a_foreign_file_in_the_way_is_never_overwritten() {
    let ws = shipped_workspace();
    let out_dir = ws.path().join("rendered/dev");
    fs::create_dir_all(&out_dir).unwrap();
    fs::write(out_dir.join("service-buildkitd.yaml"), "mine\n").unwrap();
    let out = run(ws.path(), &["render"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("service-buildkitd.yaml: kiln did not write it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("service-buildkitd.yaml")).unwrap(),
        "mine\n"
    );
    assert_eq!(entries(&ws.path().join("rendered")), ["dev"]);
}

#[test]
fn argocd_plugin_environment_chooses_the_overlay() {
    let stream = |envs: &[(&str, &str)]| {
        let mut cmd = kiln();
        cmd.current_dir(repo_root()).args(["render", "--stdout"]);
        for var in ["ARGOCD_ENV_OVERLAY", "ARGOCD_APP_PARAMETERS", "ARGOCD_APP_NAME"] {
            cmd.env_remove(var);
        }
        cmd.envs(envs.iter().copied());
        cmd.output().unwrap()
    };
    let namespaces = |out: &Output| -> Vec<String> {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout(out)).unwrap();
        let mut ns: Vec<String> = docs
            .iter()
            .filter_map(|d| {
                d.pointer("/metadata/namespace")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .collect();
        ns.sort();
        ns.dedup();
        ns
    };
    let out = stream(&[
        ("ARGOCD_ENV_OVERLAY", "dev"),
        ("ARGOCD_APP_NAME", "buildkit-prod"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(namespaces(&out), ["buildkit-dev"]);
    assert!(
        stderr(&out).contains("rendering overlay dev"),
        "logs go to stderr"
    );
    let out = stream(&[(
        "ARGOCD_APP_PARAMETERS",
        r#"[{"name":"overlay","string":"staging"}]"#,
    )]);
    assert_eq!(namespaces(&out), ["buildkit-staging"]);
    let out = stream(&[("ARGOCD_APP_NAME", "buildkit-prod")]);
    // prod's tenants come with it: one Application serves every namespace.
    assert_eq!(namespaces(&out), ["buildkit-prod", "team-a", "team-b", "team-c"]);
    let out = stream(&[("ARGOCD_APP_NAME", "something-else")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "", "nothing on stdout when the overlay is unknown");
}

#[test]
fn usage_errors_exit_2() {
    let ws = shipped_workspace();
    let cases: &[(&[&str], &str)] = &[
        (
            &["render", "--overlay", "nope"],
            "there is no overlays/nope.yaml (available: dev, prod, staging)",
        ),
        (
            &["render", "--overlay", "../etc"],
            "the overlay name \"../etc\" is not a DNS-1123 label",
        ),
        (
            &["render", "--overlays", "missing"],
            "--overlays missing: no such directory",
        ),
        (&["render", "--gitops", "helm"], "invalid value 'helm'"),
        (&["check", "--bogus"], "unexpected argument"),
    ];
    for (args, message) in cases {
        let out = run(ws.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!ws.path().join("rendered").exists());
    }
}

/// Render a broken overlay set: exit 1, the message, and nothing written at all.
fn assert_rejected(files: &[(&str, &str)], args: &[&str], message: &str) {
    let ws = workspace(files);
    let mut all = vec!["render"];
    all.extend_from_slice(args);
    let out = run(ws.path(), &all);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(message), "expected {message:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert_eq!(
        entries(ws.path())
            .into_iter()
            .filter(|e| e != "file")
            .collect::<Vec<_>>(),
        ["overlays"],
        "nothing written"
    );
}

#[test]
fn bad_unknown_field() {
    assert_rejected(
        &[("dev.yaml", "buildkit:\n  replicas: 1\n  replica: 2\n")],
        &[],
        "failed to load overlays/dev.yaml:3: buildkit.replica: unknown field `replica`, expected one of",
    );
}

#[test]
fn bad_wrong_type() {
    assert_rejected(
        &[("dev.yaml", "buildkit:\n  port: [1234]\n")],
        &[],
        "failed to load overlays/dev.yaml:2: buildkit.port: invalid type: sequence, expected u16",
    );
}

#[test]
fn bad_dns1123_name() {
    assert_rejected(
        &[("dev.yaml", "certs:\n  secrets:\n    ca: Buildkit_CA\n")],
        &[],
        "failed to load overlays/dev.yaml:3: certs.secrets.ca: \"Buildkit_CA\" is not a valid DNS-1123 name",
    );
}

#[test]
fn bad_too_many_replicas() {
    assert_rejected(
        &[("dev.yaml", "namespace: x\nbuildkit:\n  replicas: 3000000000\n")],
        &[],
        "failed to load overlays/dev.yaml:3: buildkit.replicas: must be at most 10000, got 3000000000: kiln build spreads builds over at most that many daemons",
    );
}

#[test]
fn bad_negative_replicas() {
    assert_rejected(
        &[
            ("base.yaml", "buildkit:\n  replicas: -1\n"),
            ("dev.yaml", "extends: base\n"),
        ],
        &[],
        "failed to load overlays/base.yaml:2: buildkit.replicas: must be 0 or more, got -1",
    );
}

#[test]
fn bad_unknown_mode() {
    assert_rejected(
        &[("dev.yaml", "buildkit:\n  mode: rootful\n")],
        &[],
        "failed to load overlays/dev.yaml:2: buildkit.mode: unknown variant `rootful`, expected one of `rootless`, `privileged`, `userns`",
    );
}

#[test]
fn bad_extends_cycle() {
    assert_rejected(
        &[
            ("dev.yaml", "extends: _a\n"),
            ("_a.yaml", "extends: _b\n"),
            ("_b.yaml", "extends: dev\n"),
        ],
        &[],
        "failed to resolve extends in overlays/_b.yaml:1: cycle dev -> _a -> _b -> dev",
    );
}

#[test]
fn bad_missing_parent() {
    assert_rejected(
        &[("dev.yaml", "namespace: x\nextends: bsae\n")],
        &[],
        "failed to resolve extends in overlays/dev.yaml:2: parent overlay \"bsae\" not found: there is no overlays/bsae.yaml (chain: dev -> bsae)",
    );
}

#[test]
fn bad_template_variable() {
    assert_rejected(
        &[(
            "dev.yaml",
            "namespace: \"buildkit-{{overlay}}\"\ncommonLabels:\n  env: \"{{environment}}\"\n",
        )],
        &[],
        "failed to render the template in overlays/dev.yaml:3: commonLabels.env: unknown variable `environment` (available: overlay, namespace",
    );
}

#[test]
fn bad_template_syntax() {
    assert_rejected(
        &[("dev.yaml", "namespace: x\ncommonLabels:\n  env: \"{{overlay\"\n")],
        &[],
        "failed to render the template in overlays/dev.yaml:3: commonLabels.env: `{{overlay` is never closed: end it with `}}` (column 1 of the value)",
    );
}

#[test]
fn bad_template_in_extra_manifest() {
    assert_rejected(
        &[
            ("dev.yaml", ""),
            (
                "dev/extra/quota.yaml.hbs",
                "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: \"{{nme}}\"\n",
            ),
        ],
        &[],
        "failed to load overlays/dev/extra/quota.yaml.hbs:4:10: template error: unknown variable `nme`",
    );
}

#[test]
fn bad_duration() {
    assert_rejected(
        &[("dev.yaml", "rotation:\n  propagationDelay: 2 days\n")],
        &[],
        "failed to load overlays/dev.yaml:2: rotation.propagationDelay: invalid duration \"2 days\": write a number and a unit",
    );
}

#[test]
fn bad_unwritable_output_directory() {
    let ws = shipped_workspace();
    fs::write(ws.path().join("file"), "not a directory\n").unwrap();
    let out = run(ws.path(), &["render", "--out", "file/rendered"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("failed to use file/rendered as the output directory: its parent is not a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries(ws.path()), ["file", "overlays"]);
    assert_eq!(
        fs::read_to_string(ws.path().join("file")).unwrap(),
        "not a directory\n"
    );
}

#[test]
fn bad_yaml_that_is_not_a_mapping() {
    assert_rejected(
        &[("dev.yaml", "- namespace: buildkit\n")],
        &[],
        "failed to load overlays/dev.yaml: an overlay must be a YAML mapping of fields (such as `namespace: buildkit`), not a list",
    );
}

#[test]
fn bad_yaml_syntax() {
    assert_rejected(
        &[("dev.yaml", "buildkit: {replicas: 1\n")],
        &[],
        "failed to parse overlays/dev.yaml: line",
    );
}

#[test]
fn bad_validity_longer_than_ca() {
    assert_rejected(
        &[("dev.yaml", "certs:\n  caValidity: 1y\n  validity: 400d\n")],
        &[],
        "failed to load overlays/dev.yaml:3: certs.validity: the leaf validity 400d must be shorter than certs.caValidity 1y",
    );
}

#[test]
fn a_failed_render_leaves_the_previous_tree_untouched() {
    let ws = shipped_workspace();
    assert!(run(ws.path(), &["render", "--gitops", "argocd"]).status.success());
    let before = tree(&ws.path().join("rendered"));
    fs::write(
        ws.path().join("overlays/staging.yaml"),
        "extends: base\nbuildkit:\n  replicas: -2\n",
    )
    .unwrap();
    let out = run(ws.path(), &["render", "--gitops", "argocd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("overlays/staging.yaml:3: buildkit.replicas: must be 0 or more, got -2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree(&ws.path().join("rendered")), before);
    assert_eq!(entries(ws.path()), ["overlays", "rendered"]);
}

#[test]
fn cronjob_yaml_is_what_render_produces() {
    // CronJob.yaml = the rotation CronJob, its RBAC and config (every object labelled
    // component=rotation except the bootstrap Job) and the Secret shells it fills (component=certs:
    // the Role cannot create Secrets), of the default overlay, in namespace default.
    let ws = workspace(&[(
        "default.yaml",
        "# The top-level CronJob.yaml.\nnamespace: default\ncreateNamespace: false\n",
    )]);
    let out = run(ws.path(), &["render", "--stdout"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut expected = String::from(
        "# The kiln rotation CronJob, its RBAC and config, and the Secret shells it fills, for the\n\
         # `default` namespace: kubectl apply -f CronJob.yaml, then bootstrap the certificates now with\n\
         # kubectl create job --from=cronjob/kiln-rotate kiln-bootstrap. Rendered by kiln from the\n\
         # default overlay with namespace: default; tests/render_cli.rs keeps it equal\n\
         # (KILN_UPDATE_CRONJOB=1 rewrites it).\n",
    );
    let mut kinds = Vec::new();
    for doc in text.split("---\n").filter(|d| !d.is_empty()) {
        let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        let component = value
            .pointer("/metadata/labels/app.kubernetes.io~1component")
            .and_then(|v| v.as_str());
        if (component == Some("rotation") && value["kind"] != "Job") || component == Some("certs") {
            kinds.push(value["kind"].as_str().unwrap().to_string());
            let body = doc.split_once('\n').unwrap().1;
            expected.push_str("---\n");
            expected.push_str(body);
        }
    }
    assert!(
        kinds.contains(&"CronJob".to_string())
            && kinds.contains(&"Role".to_string())
            && kinds.iter().filter(|k| *k == "Secret").count() == 3,
        "{kinds:?}"
    );
    let path: PathBuf = repo_root().join("CronJob.yaml");
    if std::env::var_os("KILN_UPDATE_CRONJOB").is_some() {
        fs::write(&path, &expected).unwrap();
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, expected,
        "CronJob.yaml is stale: rerun with KILN_UPDATE_CRONJOB=1"
    );
}

#[test]
fn committed_examples_are_up_to_date() {
    for (out, flavor) in [("examples/argocd", "argocd"), ("examples/flux", "flux")] {
        let check = run(&repo_root(), &["check", "--out", out, "--gitops", flavor]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{out}: {}{}",
            stdout(&check),
            stderr(&check)
        );
    }
}

#[test]
fn an_unreadable_overlay_only_fails_the_renders_that_use_it() {
    let ws = workspace(&[("dev.yaml", "namespace: dev\n")]);
    fs::write(ws.path().join("overlays/broken.yaml"), b"\xff\xfe").unwrap();
    let out = run(ws.path(), &["render", "--stdout", "--overlay", "dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(ws.path(), &["render"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "failed to read overlays/broken.yaml: it is not UTF-8 text (a binary file?); overlays are YAML"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries(ws.path()), ["overlays"]);
}

#[test]
fn no_input_makes_kiln_panic() {
    let cases = [
        format!("a: {}{}\n", "[".repeat(5000), "]".repeat(5000)),
        "buildkit:\n  replicas: 99999999999999999999\n".to_string(),
        "buildkit:\n  port: 70000\n".to_string(),
        "namespace: \"{{{{raw}}}}\"\n".to_string(),
        "extends: [a]\n".to_string(),
        ": :\n".to_string(),
        "? [a]\n: b\n".to_string(),
        "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n".to_string(),
        "certs:\n  renewBefore: 0s\n".to_string(),
        "buildkit:\n  tolerations:\n    - operator: Maybe\n".to_string(),
    ];
    for text in cases {
        let ws = workspace(&[("dev.yaml", &text)]);
        let out = run(ws.path(), &["render"]);
        assert_eq!(out.status.code(), Some(1), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("error: failed to ") && !err.contains("panicked"),
            "{text}: {err}"
        );
        assert_eq!(entries(ws.path()), ["overlays"]);
    }
}

#[test]
fn yml_files_are_ignored_with_a_warning() {
    let ws = workspace(&[("dev.yaml", ""), ("prod.yml", "buildkit:\n  replicas: 3\n")]);
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kiln: warning: ignoring overlays/prod.yml: overlay files end in .yaml"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries(&ws.path().join("rendered")), [".kiln-manifest", "dev"]);
}

#[test]
fn check_hints_at_a_missing_gitops_flag() {
    let out = run(&repo_root(), &["check", "--out", "examples/argocd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("stale: argocd/prod.yaml"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("was it rendered with --gitops argocd?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_tenant_namespace() {
    assert_rejected(
        &[(
            "dev.yaml",
            "namespace: farm\ntenants:\n  - namespace: team-a\n  - namespace: Team_B\n",
        )],
        &[],
        "failed to load overlays/dev.yaml:4: tenants[1].namespace: \"Team_B\" is not a valid DNS-1123 label",
    );
    assert_rejected(
        &[(
            "dev.yaml",
            "namespace: farm\ntenants:\n  - namespace: team-a\n  - namespace: team-a\n",
        )],
        &[],
        "failed to load overlays/dev.yaml:4: tenants[1].namespace: \"team-a\" is listed twice",
    );
}

#[test]
fn two_farms_sharing_a_tenant_need_names_of_their_own() {
    const STAGING: &str = "namespace: buildkit-staging\ntenants:\n  - namespace: team-a\n";
    let prod = |client: &str| {
        format!(
            "namespace: buildkit-prod\ncerts:\n  secrets:\n    client: {client}\ntekton:\n  name: buildkit-prod\ntenants:\n  - namespace: team-a\n"
        )
    };
    assert_rejected(
        &[
            ("staging.yaml", STAGING),
            ("prod.yaml", &prod("buildkit-client-certs")),
        ],
        &[],
        "failed to lay out overlay staging: overlay prod renders Secret team-a/buildkit-client-certs too, and two overlays cannot own one object",
    );
    // With a client Secret and a Task name of its own, each farm owns its objects in team-a,
    // and its Role and RoleBinding are named after its namespace.
    let ws = workspace(&[
        ("staging.yaml", STAGING),
        ("prod.yaml", &prod("buildkit-prod-client")),
    ]);
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut team_a: Vec<String> = tree(&ws.path().join("rendered"))
        .into_keys()
        .filter(|path| path.contains("/team-a/"))
        .collect();
    team_a.sort();
    assert_eq!(
        team_a,
        [
            "prod/team-a/role-kiln-rotate-buildkit-prod.yaml",
            "prod/team-a/rolebinding-kiln-rotate-buildkit-prod.yaml",
            "prod/team-a/secret-buildkit-prod-client.yaml",
            "prod/team-a/task-buildkit-prod.yaml",
            "staging/team-a/role-kiln-rotate-buildkit-staging.yaml",
            "staging/team-a/rolebinding-kiln-rotate-buildkit-staging.yaml",
            "staging/team-a/secret-buildkit-client-certs.yaml",
            "staging/team-a/task-buildkit.yaml",
        ]
    );
}

#[test]
fn render_says_kiln_does_not_create_tenant_namespaces_and_drops_a_removed_tenant() {
    let ws = workspace(&[(
        "prod.yaml",
        "namespace: farm\ntenants:\n  - namespace: team-a\n  - namespace: team-b\n    task: false\n",
    )]);
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "kiln: overlay prod renders into tenant namespaces team-a, team-b, which kiln does not create: they must exist before the sync (Argo CD: the project's destinations must allow them)"
        ),
        "{}",
        stderr(&out)
    );
    let rendered = ws.path().join("rendered/prod");
    assert_eq!(
        entries(&rendered.join("team-b")),
        [
            "role-kiln-rotate-farm.yaml",
            "rolebinding-kiln-rotate-farm.yaml",
            "secret-buildkit-client-certs.yaml"
        ]
    );
    let kustomization = fs::read_to_string(rendered.join("kustomization.yaml")).unwrap();
    assert!(
        kustomization.contains("- team-a/task-buildkit.yaml\n"),
        "{kustomization}"
    );

    // team-b leaves the overlay: its files go, and so does its directory.
    fs::write(
        ws.path().join("overlays/prod.yaml"),
        "namespace: farm\ntenants:\n  - namespace: team-a\n",
    )
    .unwrap();
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The kustomization, the ConfigMap and the NetworkPolicy name one tenant less.
    assert!(
        stderr(&out).contains(": 3 files changed, 3 removed"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out)
            .contains("renders into tenant namespace team-a, which kiln does not create: it must exist"),
        "{}",
        stderr(&out)
    );
    assert!(!rendered.join("team-b").exists());
    assert!(rendered.join("team-a/secret-buildkit-client-certs.yaml").exists());

    // No tenants, no note.
    fs::write(ws.path().join("overlays/prod.yaml"), "namespace: farm\n").unwrap();
    let out = run(ws.path(), &["render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("tenant"), "{}", stderr(&out));
    assert_eq!(
        entries(&rendered)
            .iter()
            .filter(|e| !e.ends_with(".yaml"))
            .count(),
        0
    );
}

// ------------------------------------------------------------------ completions (issue 15)

/// The candidates the `COMPLETE=<shell>` protocol prints for `words`, completing the last one.
fn complete(dir: &Path, shell: &str, words: &[&str]) -> Vec<String> {
    let out = kiln()
        .current_dir(dir)
        .env("COMPLETE", shell)
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_IFS", "\n")
        .arg("--")
        .args(words)
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}: {}", stderr(&out));
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn overlay_completion_offers_overlay_names_in_every_shell() {
    let ws = shipped_workspace();
    fs::write(ws.path().join("devnotes.txt"), "a file, not an overlay\n").unwrap();
    fs::write(ws.path().join("overlays/_partial.yaml"), "namespace: x\n").unwrap();
    for shell in ["bash", "zsh", "fish"] {
        for words in [
            &["kiln", "render", "--overlay", ""][..],
            &["kiln", "check", "--overlay", ""],
            &["kiln", "certs", "generate", "--overlay", ""],
        ] {
            assert_eq!(
                complete(ws.path(), shell, words),
                ["dev", "prod", "staging"],
                "{shell} {words:?}"
            );
        }
        assert_eq!(
            complete(ws.path(), shell, &["kiln", "render", "--overlay", "st"]),
            ["staging"]
        );
        // Everything else still completes as clap declares it.
        let gitops = complete(ws.path(), shell, &["kiln", "render", "--gitops", ""]);
        assert!(
            gitops.iter().any(|c| c.starts_with("argocd")),
            "{shell}: {gitops:?}"
        );
    }

    // A real bash, with the script `kiln completions bash` prints, calling kiln back at Tab.
    let script = kiln().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    fs::write(ws.path().join("kiln.bash"), &script.stdout).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .current_dir(ws.path())
        .env("PATH", path)
        .args([
            "--norc",
            "-c",
            "source ./kiln.bash\n\
             COMP_WORDS=(kiln render --overlay '') COMP_CWORD=3 COMP_TYPE=9\n\
             _clap_complete_kiln kiln '' --overlay\n\
             printf '%s\\n' \"${COMPREPLY[@]}\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "dev\nprod\nstaging\n", "{}", stderr(&out));

    for (shell, needle) in [("zsh", "#compdef kiln"), ("fish", "complete --keep-order")] {
        let script = kiln().args(["completions", shell]).output().unwrap();
        assert!(script.status.success());
        let text = stdout(&script);
        assert!(
            text.contains(needle) && text.contains(&format!("COMPLETE=\"{shell}\""))
                || text.contains(&format!("COMPLETE={shell}")),
            "{shell}: {text}"
        );
    }
}
