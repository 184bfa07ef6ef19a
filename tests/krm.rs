//! kiln as a Kustomize plugin (KRM function and legacy exec plugin) and as an Argo CD
//! Config Management Plugin: the contracts, and real Kustomize runs.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::{kiln, repo_root, tool};

// ---------------------------------------------------------------- helpers

/// Run `cmd` with `stdin` piped in.
fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Parse a YAML stream into values, dropping empty documents.
fn parse_stream(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = kiln::yaml::from_str_multi(yaml, "<test>").unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn parse_yaml(yaml: &str) -> Value {
    kiln::yaml::from_str(yaml, "<test>").unwrap()
}

/// The identity Kustomize uses for an object.
fn id(object: &Value) -> String {
    let field = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    format!(
        "{} {} {}/{}",
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

/// Objects keyed by identity (fails on duplicates, which no output may have).
fn by_id(objects: &[Value]) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        assert!(
            map.insert(id(object), object.clone()).is_none(),
            "duplicate {}",
            id(object)
        );
    }
    map
}

/// Every document must be a Kubernetes object.
fn assert_objects(objects: &[Value]) {
    assert!(!objects.is_empty(), "no objects");
    for object in objects {
        for pointer in ["/apiVersion", "/kind", "/metadata/name"] {
            let value = object.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            assert!(!value.is_empty(), "{pointer} missing in {object}");
        }
    }
}

fn example(path: &str) -> PathBuf {
    repo_root().join("examples").join(path)
}

/// The legacy example's BuildkitStack.
fn example_stack() -> Value {
    parse_yaml(&std::fs::read_to_string(example("kustomize-plugin/buildkitstack.yaml")).unwrap())
}

/// A directory with `overlays/<name>.yaml` for each (name, overlay) given.
fn overlay_dir(overlays: &[(&str, &Value)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("overlays")).unwrap();
    for (name, overlay) in overlays {
        let yaml = kiln::yaml::to_string(overlay).unwrap();
        std::fs::write(dir.path().join(format!("overlays/{name}.yaml")), yaml).unwrap();
    }
    dir
}

/// `kiln render --stdout` for one overlay, chosen the way Argo CD does (plugin.env OVERLAY).
fn render_stdout(dir: &Path, overlay: &str) -> Vec<Value> {
    let out = kiln()
        .args(["render", "--stdout"])
        .current_dir(dir)
        .env("ARGOCD_ENV_OVERLAY", overlay)
        .env_remove("ARGOCD_APP_PARAMETERS")
        .env_remove("ARGOCD_APP_NAME")
        .output()
        .unwrap();
    assert!(out.status.success(), "render failed: {}", text(&out.stderr));
    parse_stream(&text(&out.stdout))
}

/// What `kiln render` produces for the example's BuildkitStack spec, as an overlay file.
fn expected_for_example() -> Vec<Value> {
    let stack = example_stack();
    let name = stack["metadata"]["name"].as_str().unwrap().to_string();
    let dir = overlay_dir(&[(&name, &stack["spec"])]);
    render_stdout(dir.path(), &name)
}

/// A ResourceList the way Kustomize hands one to a generator: the functionConfig, also as
/// the only item, marked local-config, plus an unrelated item with internal annotations.
fn resource_list(function_config: &Value) -> Value {
    let mut config_item = function_config.clone();
    config_item["metadata"]["annotations"] = json!({
        "config.kubernetes.io/local-config": "true",
        "internal.config.kubernetes.io/path": "buildkitstack.yaml",
        "internal.config.kubernetes.io/index": "0",
        "internal.config.kubernetes.io/id": "1",
    });
    json!({
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "items": [
            config_item,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "user-settings",
                    "namespace": "apps",
                    "annotations": {
                        "internal.config.kubernetes.io/path": "settings/cm.yaml",
                        "internal.config.kubernetes.io/index": "2",
                        "internal.config.kubernetes.io/id": "7",
                        "config.kubernetes.io/path": "settings/cm.yaml",
                    },
                },
                "data": {"octal": "0755", "truthy": "yes", "float": "1.10", "multi": "a\nb\n"},
            },
        ],
        "functionConfig": function_config,
    })
}

/// What the example's tenant gets in its namespace.
const TEAM_A: [&str; 4] = [
    "Role/kiln-rotate-buildkit-dev",
    "RoleBinding/kiln-rotate-buildkit-dev",
    "Secret/buildkit-client-certs",
    "Task/buildkit",
];

/// `Kind/name` of the objects in namespace team-a, sorted.
fn tenant_objects(objects: &[Value]) -> Vec<String> {
    let mut found: Vec<String> = objects
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "team-a")
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    found.sort();
    found
}

fn krm(input: &str) -> Output {
    let mut cmd = kiln();
    cmd.arg("krm");
    run_with_stdin(cmd, input)
}

// ---------------------------------------------------------------- KRM contract

#[test]
fn krm_appends_generated_objects_after_untouched_items() {
    let stack = example_stack();
    let input = resource_list(&stack);
    let out = krm(&kiln::yaml::to_string(&input).unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let output = parse_yaml(&text(&out.stdout));
    assert_eq!(output["apiVersion"], "config.kubernetes.io/v1");
    assert_eq!(output["kind"], "ResourceList");
    let items = output["items"].as_array().unwrap();
    let input_items = input["items"].as_array().unwrap();
    // The input items come first and back unchanged, internal.* annotations included.
    assert_eq!(&items[..input_items.len()], &input_items[..]);
    // Then exactly what `kiln render` renders for the same overlay.
    let generated = &items[input_items.len()..];
    assert_objects(generated);
    assert_eq!(by_id(generated), by_id(&expected_for_example()));
    // The example's tenant comes out in its own namespace, as `kiln render` puts it.
    assert_eq!(tenant_objects(generated), TEAM_A);
    assert_eq!(output["functionConfig"], stack);
    assert!(
        output.get("results").is_none(),
        "unexpected results: {}",
        output["results"]
    );
}

#[test]
fn krm_accepts_json_and_answers_in_json() {
    let stack = example_stack();
    let input = resource_list(&stack);
    let yaml_out = krm(&kiln::yaml::to_string(&input).unwrap());
    let json_out = krm(&serde_json::to_string(&input).unwrap());
    assert!(json_out.status.success(), "{}", text(&json_out.stderr));
    let from_json: Value = serde_json::from_slice(&json_out.stdout).expect("JSON in, JSON out");
    assert_eq!(from_json, parse_yaml(&text(&yaml_out.stdout)));
}

#[test]
fn krm_reports_a_bad_function_config_as_an_error_result_with_the_field_path() {
    let mut stack = example_stack();
    stack["spec"]["buildkit"]["replicas"] = json!("many");
    let input = resource_list(&stack);
    let out = krm(&kiln::yaml::to_string(&input).unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let output = parse_yaml(&text(&out.stdout));
    // The list still comes back, with the items untouched and nothing generated.
    assert_eq!(output["items"], input["items"]);
    let results = output["results"].as_array().unwrap();
    let error = results
        .iter()
        .find(|r| r["severity"] == "error")
        .expect("an error result");
    assert_eq!(error["field"]["path"], "spec.buildkit.replicas");
    assert_eq!(error["resourceRef"]["kind"], "BuildkitStack");
    assert_eq!(error["resourceRef"]["name"], "dev");
    assert!(!error["message"].as_str().unwrap().is_empty());
    assert!(
        text(&out.stderr).contains("spec.buildkit.replicas"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn krm_reports_an_unknown_field_with_its_path() {
    let mut stack = example_stack();
    stack["spec"]["buildkit"]["replica"] = json!(3);
    let out = krm(&serde_json::to_string(&resource_list(&stack)).unwrap());
    assert_eq!(out.status.code(), Some(1));
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = &output["results"][0];
    assert_eq!(error["severity"], "error");
    assert_eq!(error["field"]["path"], "spec.buildkit.replica");
    assert!(error["message"].as_str().unwrap().contains("replica"), "{error}");
}

#[test]
fn krm_error_results_are_readable() {
    let config = json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildkitStack",
        "metadata": {"name": "dev", "annotations": {"internal.config.kubernetes.io/path": "stack.yaml"}},
        "spec": {"namespace": "Build Kit", "buildkit": {"replicas": 2}},
    });
    let input = json!({"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList", "items": [], "functionConfig": config});
    let out = krm(&kiln::yaml::to_string(&input).unwrap());
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("krm_error_results", text(&out.stdout));
}

#[test]
fn krm_warnings_are_results_and_exit_zero() {
    let mut stack = example_stack();
    stack["metadata"]["namespace"] = json!("somewhere-else");
    let out = krm(&kiln::yaml::to_string(&resource_list(&stack)).unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let output = parse_yaml(&text(&out.stdout));
    let results = output["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["severity"] == "warning"), "{results:?}");
    assert_eq!(results[0]["field"]["path"], "metadata.namespace");
    // Objects are still generated.
    assert!(output["items"].as_array().unwrap().len() > 2);
}

#[test]
fn krm_without_a_function_config_fails() {
    let input = json!({"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList", "items": []});
    let out = krm(&serde_json::to_string(&input).unwrap());
    assert_eq!(out.status.code(), Some(1));
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["results"][0]["field"]["path"], "functionConfig");
}

#[test]
fn krm_rejects_input_that_is_not_a_resource_list() {
    let out = krm("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("expected apiVersion config.kubernetes.io/v1"));
}

#[test]
fn bare_kiln_with_a_resource_list_on_stdin_is_the_krm_function() {
    let input = kiln::yaml::to_string(&resource_list(&example_stack())).unwrap();
    let bare = run_with_stdin(kiln(), &input);
    assert!(bare.status.success(), "{}", text(&bare.stderr));
    assert_eq!(bare.stdout, krm(&input).stdout);
    // With nothing on stdin, bare kiln is a usage error, not a hang or an empty list.
    let empty = kiln().stdin(Stdio::null()).output().unwrap();
    assert_eq!(empty.status.code(), Some(2));
    assert!(empty.stdout.is_empty());
    // Something else on stdin is a usage error that says what bare kiln expected.
    let other = run_with_stdin(kiln(), "hello\n");
    assert_eq!(other.status.code(), Some(2));
    assert!(
        text(&other.stderr).contains("KRM function"),
        "{}",
        text(&other.stderr)
    );
}

#[test]
fn krm_example_config_renders_the_same_objects_as_the_legacy_example() {
    let krm_stack =
        parse_yaml(&std::fs::read_to_string(example("kustomize-plugin/krm/buildkitstack.yaml")).unwrap());
    let function = &krm_stack["metadata"]["annotations"]["config.kubernetes.io/function"];
    let function = parse_yaml(function.as_str().unwrap());
    assert_eq!(function["exec"]["args"], json!(["krm"]));
    let out = krm(&kiln::yaml::to_string(&resource_list(&krm_stack)).unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let items = parse_yaml(&text(&out.stdout))["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_objects(&items[2..]);
    let namespaces: Vec<_> = items[2..]
        .iter()
        .filter_map(|o| o.pointer("/metadata/namespace").and_then(Value::as_str))
        .collect();
    assert!(!namespaces.is_empty() && namespaces.iter().all(|ns| *ns == "buildkit-dev"));
}

#[test]
fn extends_resolves_against_the_plugin_config_root_else_the_cwd() {
    let base = json!({"namespace": "team-{{overlay}}", "buildkit": {"replicas": 3}});
    let root = overlay_dir(&[("base", &base)]);
    let stack = json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildkitStack",
        "metadata": {"name": "qa"},
        "spec": {"extends": "base", "buildkit": {"mode": "privileged"}},
    });
    let deployment_of = |items: &[Value]| {
        let d = items.iter().find(|o| o["kind"] == "Deployment").cloned().unwrap();
        (d["metadata"]["namespace"].clone(), d["spec"]["replicas"].clone())
    };
    let expected = (json!("team-qa"), json!(3));

    // KRM function, run in the kustomization directory.
    let mut cmd = kiln();
    cmd.arg("krm")
        .current_dir(root.path())
        .env_remove("KUSTOMIZE_PLUGIN_CONFIG_ROOT");
    let out = run_with_stdin(cmd, &serde_json::to_string(&resource_list(&stack)).unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(deployment_of(items["items"].as_array().unwrap()), expected);

    // Legacy plugin, run elsewhere with KUSTOMIZE_PLUGIN_CONFIG_ROOT set as Kustomize does.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = elsewhere.path().join("kust-plugin-config-1");
    std::fs::write(&config, kiln::yaml::to_string(&stack).unwrap()).unwrap();
    let out = kiln()
        .arg("krm")
        .arg(&config)
        .current_dir(elsewhere.path())
        .env("KUSTOMIZE_PLUGIN_CONFIG_ROOT", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(deployment_of(&parse_stream(&text(&out.stdout))), expected);

    // Without the overlays, the parent is reported on spec.extends.
    let out = kiln()
        .arg("krm")
        .arg(&config)
        .current_dir(elsewhere.path())
        .env_remove("KUSTOMIZE_PLUGIN_CONFIG_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("spec.extends"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- legacy exec plugin

#[test]
fn legacy_plugin_prints_a_yaml_stream() {
    let out = kiln()
        .arg("krm")
        .arg(example("kustomize-plugin/buildkitstack.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = parse_stream(&text(&out.stdout));
    assert_objects(&objects);
    assert_eq!(by_id(&objects), by_id(&expected_for_example()));
}

#[test]
fn legacy_plugin_errors_name_the_file_and_field_and_print_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = example_stack();
    stack["spec"]["buildkit"]["replicas"] = json!("many");
    let path = dir.path().join("stack.yaml");
    std::fs::write(&path, kiln::yaml::to_string(&stack).unwrap()).unwrap();
    let out = kiln().arg("krm").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stack.yaml") && stderr.contains("spec.buildkit.replicas"),
        "{stderr}"
    );
}

#[test]
fn install_plugin_links_then_copies_kiln_at_the_kustomize_path() {
    let home = tempfile::tempdir().unwrap();
    let expected = home.path().join("kiln.dev/v1alpha1/buildkitstack/BuildkitStack");
    let out = kiln()
        .args(["install-plugin", "--dir"])
        .arg(home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), expected.display().to_string());
    let link = std::fs::read_link(&expected).expect("a symlink");
    assert_eq!(
        link,
        PathBuf::from(env!("CARGO_BIN_EXE_kiln")).canonicalize().unwrap()
    );

    // Re-running replaces the install; --copy writes an executable file.
    let out = kiln()
        .args(["install-plugin", "--copy", "--dir"])
        .arg(home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = std::fs::symlink_metadata(&expected).unwrap();
    assert!(meta.file_type().is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }

    // Run under the name BuildkitStack, kiln is the legacy plugin: argv[1] is the config.
    let out = Command::new(&expected)
        .arg(example("kustomize-plugin/buildkitstack.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        by_id(&parse_stream(&text(&out.stdout))),
        by_id(&expected_for_example())
    );
}

#[test]
fn install_plugin_defaults_to_the_kustomize_plugin_home() {
    let xdg = tempfile::tempdir().unwrap();
    let out = kiln()
        .arg("install-plugin")
        .env_remove("KUSTOMIZE_PLUGIN_HOME")
        .env("XDG_CONFIG_HOME", xdg.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = xdg
        .path()
        .join("kustomize/plugin/kiln.dev/v1alpha1/buildkitstack/BuildkitStack");
    assert!(
        std::fs::symlink_metadata(&expected).is_ok(),
        "{}",
        expected.display()
    );

    let plugin_home = tempfile::tempdir().unwrap();
    let out = kiln()
        .arg("install-plugin")
        .env("KUSTOMIZE_PLUGIN_HOME", plugin_home.path())
        .env("XDG_CONFIG_HOME", xdg.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        std::fs::symlink_metadata(
            plugin_home
                .path()
                .join("kiln.dev/v1alpha1/buildkitstack/BuildkitStack")
        )
        .is_ok()
    );
}

// ---------------------------------------------------------------- real Kustomize

/// `kubectl kustomize --enable-alpha-plugins DIR` with kiln installed in a fresh plugin home.
fn kustomize(kubectl: &Path, plugin_home: &Path, dir: &Path) -> Output {
    Command::new(kubectl)
        .args(["kustomize", "--enable-alpha-plugins"])
        .arg(dir)
        .env("KUSTOMIZE_PLUGIN_HOME", plugin_home)
        .output()
        .unwrap()
}

#[test]
fn kubectl_kustomize_builds_the_example_like_kiln_render_plus_the_patch() {
    let Some(kubectl) = tool("kubectl") else { return };
    let plugin_home = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["install-plugin", "--dir"])
        .arg(plugin_home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let built = kustomize(&kubectl, plugin_home.path(), &example("kustomize-plugin"));
    assert!(
        built.status.success(),
        "kustomize failed: {}",
        text(&built.stderr)
    );
    let actual = parse_stream(&text(&built.stdout));
    assert_objects(&actual);

    // Expected: `kiln render` of the same overlay, with the same patch applied by Kustomize.
    let stack = example_stack();
    let work = overlay_dir(&[("dev", &stack["spec"])]);
    let rendered = render_stdout(work.path(), "dev");
    let plain = work.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let stream: Vec<String> = rendered
        .iter()
        .map(|o| kiln::yaml::to_string(o).unwrap())
        .collect();
    std::fs::write(plain.join("rendered.yaml"), stream.join("---\n")).unwrap();
    std::fs::copy(
        example("kustomize-plugin/buildkitd-patch.yaml"),
        plain.join("buildkitd-patch.yaml"),
    )
    .unwrap();
    std::fs::write(
        plain.join("kustomization.yaml"),
        "resources: [rendered.yaml]\npatches:\n  - path: buildkitd-patch.yaml\n",
    )
    .unwrap();
    let reference = kustomize(&kubectl, plugin_home.path(), &plain);
    assert!(reference.status.success(), "{}", text(&reference.stderr));
    let expected = parse_stream(&text(&reference.stdout));
    assert_eq!(by_id(&actual), by_id(&expected));

    // The user's patch really landed on the generated Deployment.
    let deployment = actual
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["priorityClassName"],
        "build-farm"
    );
    assert_eq!(deployment["metadata"]["namespace"], "buildkit-dev");
    // The tenant's objects stay in team-a through Kustomize.
    assert_eq!(tenant_objects(&actual), TEAM_A);
}

#[test]
fn kubectl_kustomize_reports_a_bad_generator_config() {
    let Some(kubectl) = tool("kubectl") else { return };
    let plugin_home = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["install-plugin", "--dir"])
        .arg(plugin_home.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("kustomization.yaml"),
        "generators: [stack.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        app.path().join("stack.yaml"),
        "apiVersion: kiln.dev/v1alpha1\nkind: BuildkitStack\nmetadata:\n  name: dev\nspec:\n  buildkit:\n    mode: superuser\n",
    )
    .unwrap();
    let built = kustomize(&kubectl, plugin_home.path(), app.path());
    assert!(!built.status.success());
    assert!(built.stdout.is_empty());
    let stderr = text(&built.stderr);
    assert!(stderr.contains("spec.buildkit.mode"), "{stderr}");
}

#[test]
fn kubectl_kustomize_resolves_extends_against_the_kustomization_overlays() {
    let Some(kubectl) = tool("kubectl") else { return };
    let plugin_home = tempfile::tempdir().unwrap();
    let out = kiln()
        .args(["install-plugin", "--dir"])
        .arg(plugin_home.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let base = json!({"namespace": "buildkit-{{overlay}}", "buildkit": {"replicas": 3}});
    let app = overlay_dir(&[("base", &base)]);
    std::fs::write(
        app.path().join("kustomization.yaml"),
        "generators: [stack.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        app.path().join("stack.yaml"),
        "apiVersion: kiln.dev/v1alpha1\nkind: BuildkitStack\nmetadata:\n  name: staging\nspec:\n  extends: base\n",
    )
    .unwrap();
    let built = kustomize(&kubectl, plugin_home.path(), app.path());
    assert!(built.status.success(), "{}", text(&built.stderr));
    let objects = parse_stream(&text(&built.stdout));
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["namespace"], "buildkit-staging");
    assert_eq!(deployment["spec"]["replicas"], 3);
}

/// Items as a human writes them: octal modes, YAML 1.1 look-alikes, block scalars.
const HAND_WRITTEN_ITEMS: &str = r#"- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: awkward
    namespace: apps
    annotations:
      internal.config.kubernetes.io/path: cm.yaml
      internal.config.kubernetes.io/index: '0'
  data:
    yes: "yes"
    off: 'off'
    octal: "0644"
    time: "12:30:00"
    hash: "a # b"
    block: |
      line one
        indented
    folded: >
      folded
      text
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: app
    namespace: apps
  spec:
    replicas: 2
    selector:
      matchLabels: {app: app}
    template:
      metadata:
        labels: {app: app}
      spec:
        containers:
          - name: app
            image: example.com/app:1.0
            args: ["--flag=on", "on", "1.0", "0x1F"]
        volumes:
          - name: config
            configMap:
              name: awkward
              defaultMode: 0644
"#;

#[test]
fn kustomize_reads_passed_through_items_as_it_reads_the_input() {
    let Some(kubectl) = tool("kubectl") else { return };
    let config = kiln::yaml::to_string(&example_stack())
        .unwrap()
        .replace('\n', "\n  ");
    let input = format!(
        "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems:\n{HAND_WRITTEN_ITEMS}functionConfig:\n  {config}"
    );
    let out = krm(&input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let output = parse_yaml(&text(&out.stdout));
    let passed: Vec<Value> = output["items"].as_array().unwrap()[..2].to_vec();
    assert_eq!(
        passed[1]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
        420
    );

    // Kustomize reads our output items exactly as it reads the hand-written ones.
    let build = |name: &str, yaml: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("items.yaml"), yaml).unwrap();
        std::fs::write(dir.path().join("kustomization.yaml"), "resources: [items.yaml]\n").unwrap();
        let built = Command::new(&kubectl)
            .arg("kustomize")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(built.status.success(), "{name}: {}", text(&built.stderr));
        let docs: Vec<Value> = kiln::yaml::from_str_multi(&text(&built.stdout), name).unwrap();
        docs
    };
    // Kustomize expands a v1 List into its items.
    let list = |items: &str| format!("apiVersion: v1\nkind: List\nitems:\n{items}");
    let original = build("input", &list(HAND_WRITTEN_ITEMS));
    let ours = kiln::yaml::to_string(&passed).unwrap();
    let round_tripped = build("output", &list(&ours));
    assert_eq!(original.len(), 2);
    assert_eq!(original, round_tripped);
}

// ---------------------------------------------------------------- Argo CD CMP

/// `kiln render --stdout` as the CMP sidecar runs it: in the app's source path, with the
/// Argo CD environment.
fn cmp_generate(dir: &Path, env: &[(&str, &str)]) -> Output {
    let plugin = parse_yaml(&std::fs::read_to_string(example("argocd-cmp/plugin.yaml")).unwrap());
    let command: Vec<String> = serde_json::from_value(plugin["spec"]["generate"]["command"].clone()).unwrap();
    assert_eq!(command[0], "kiln");
    let mut cmd = kiln();
    cmd.args(&command[1..]).current_dir(dir);
    for var in ["ARGOCD_APP_NAME", "ARGOCD_ENV_OVERLAY", "ARGOCD_APP_PARAMETERS"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn two_overlays() -> tempfile::TempDir {
    overlay_dir(&[
        ("dev", &json!({"namespace": "buildkit-dev"})),
        (
            "prod",
            &json!({"namespace": "buildkit-prod", "buildkit": {"replicas": 2}}),
        ),
    ])
}

fn namespaces(objects: &[Value]) -> Vec<String> {
    let mut namespaces: Vec<String> = objects
        .iter()
        .filter_map(|o| o.pointer("/metadata/namespace").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

#[test]
fn cmp_renders_only_objects_of_the_overlay_chosen_by_the_application() {
    let dir = two_overlays();
    let out = cmp_generate(
        dir.path(),
        &[
            ("ARGOCD_APP_NAME", "buildkit-prod"),
            ("ARGOCD_ENV_OVERLAY", "prod"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = parse_stream(&text(&out.stdout));
    assert_objects(&objects);
    assert_eq!(namespaces(&objects), vec!["buildkit-prod"]);
    assert_eq!(by_id(&objects), by_id(&render_stdout(dir.path(), "prod")));

    // The `overlay` parameter (ARGOCD_APP_PARAMETERS) chooses too.
    let out = cmp_generate(
        dir.path(),
        &[
            ("ARGOCD_APP_NAME", "buildkit"),
            ("ARGOCD_APP_PARAMETERS", r#"[{"name":"overlay","string":"dev"}]"#),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = parse_stream(&text(&out.stdout));
    assert_objects(&objects);
    assert_eq!(namespaces(&objects), vec!["buildkit-dev"]);

    // plugin.env OVERLAY wins over the parameter, which wins over the Application name.
    let out = cmp_generate(
        dir.path(),
        &[
            ("ARGOCD_APP_NAME", "dev"),
            ("ARGOCD_ENV_OVERLAY", "prod"),
            ("ARGOCD_APP_PARAMETERS", r#"[{"name":"overlay","string":"dev"}]"#),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        namespaces(&parse_stream(&text(&out.stdout))),
        vec!["buildkit-prod"]
    );
    let out = cmp_generate(dir.path(), &[("ARGOCD_APP_NAME", "prod")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        namespaces(&parse_stream(&text(&out.stdout))),
        vec!["buildkit-prod"]
    );
}

#[test]
fn cmp_failures_exit_non_zero_never_empty_success() {
    let dir = two_overlays();
    // An overlay that does not exist.
    let out = cmp_generate(
        dir.path(),
        &[("ARGOCD_APP_NAME", "x"), ("ARGOCD_ENV_OVERLAY", "staging")],
    );
    assert!(!out.status.success());
    assert!(!text(&out.stderr).is_empty());
    // A broken overlay.
    std::fs::write(
        dir.path().join("overlays/broken.yaml"),
        "buildkit:\n  replicas: many\n",
    )
    .unwrap();
    let out = cmp_generate(dir.path(), &[("ARGOCD_ENV_OVERLAY", "broken")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("buildkit.replicas"),
        "{}",
        text(&out.stderr)
    );
    // An overlays directory with nothing to render.
    let empty = overlay_dir(&[]);
    let out = cmp_generate(empty.path(), &[("ARGOCD_APP_NAME", "buildkit-prod")]);
    assert!(
        !out.status.success(),
        "empty render must fail: {}",
        text(&out.stdout)
    );
}

#[test]
fn cmp_sidecar_patch_builds_onto_the_repo_server() {
    let Some(kubectl) = tool("kubectl") else { return };
    let dir = tempfile::tempdir().unwrap();
    for file in ["plugin.yaml", "repo-server-patch.yaml", "kustomization.yaml"] {
        std::fs::copy(example("argocd-cmp").join(file), dir.path().join(file)).unwrap();
    }
    // Swap the remote Argo CD install for the part the patch needs: the repo-server.
    let kustomization = std::fs::read_to_string(dir.path().join("kustomization.yaml")).unwrap();
    let remote = kustomization
        .lines()
        .find(|l| l.contains("https://raw.githubusercontent.com/argoproj/argo-cd/"))
        .expect("the upstream install");
    let kustomization = kustomization.replace(remote, "  - repo-server.yaml");
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
    std::fs::write(
        dir.path().join("repo-server.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: argocd-repo-server
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: argocd-repo-server}
  template:
    metadata:
      labels: {app.kubernetes.io/name: argocd-repo-server}
    spec:
      containers:
        - name: argocd-repo-server
          image: quay.io/argoproj/argocd:v3.1.0
      volumes:
        - name: var-files
          emptyDir: {}
        - name: plugins
          emptyDir: {}
"#,
    )
    .unwrap();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = parse_stream(&text(&out.stdout));
    let config_map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let plugin_yaml = config_map["data"]["plugin.yaml"].as_str().unwrap();
    assert_eq!(parse_yaml(plugin_yaml)["kind"], "ConfigManagementPlugin");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["namespace"], "argocd");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kiln")
        .expect("the kiln sidecar");
    assert_eq!(sidecar["command"], json!(["/var/run/argocd/argocd-cmp-server"]));
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 999);
    let mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/home/argocd/cmp-server/config/plugin.yaml")
        .expect("plugin.yaml mount");
    assert_eq!(mount["subPath"], "plugin.yaml");
    // The volume follows the generated ConfigMap's hashed name.
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    for shared in ["var-files", "plugins"] {
        assert!(
            sidecar["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == shared)
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == shared)
        );
    }
}

#[test]
fn cmp_application_uses_the_plugin_and_an_overlay() {
    let plugin = parse_yaml(&std::fs::read_to_string(example("argocd-cmp/plugin.yaml")).unwrap());
    let app = parse_yaml(&std::fs::read_to_string(example("argocd-cmp/application.yaml")).unwrap());
    assert_eq!(plugin["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(app["kind"], "Application");
    assert_eq!(
        app["spec"]["source"]["plugin"]["name"],
        plugin["metadata"]["name"]
    );
    let env = app["spec"]["source"]["plugin"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "OVERLAY" && e["value"] == "prod"));
    let parameters = plugin["spec"]["parameters"]["static"].as_array().unwrap();
    assert!(parameters.iter().any(|p| p["name"] == "overlay"));
    // Argo CD must never replace objects (kiln owns the Secret data in-cluster).
    let options = app["spec"]["syncPolicy"]["syncOptions"].as_array().unwrap();
    assert!(
        !options
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("Replace=true"))
    );
    // Same sync policy as the Applications `kiln render` writes for committed output.
    let rendered =
        kiln::render::gitops::application("prod", &kiln::overlay::Overlay::default(), "rendered/prod");
    let rendered = serde_json::to_value(rendered).unwrap();
    assert_eq!(app["metadata"]["name"], rendered["metadata"]["name"]);
    assert_eq!(app["metadata"]["finalizers"], rendered["metadata"]["finalizers"]);
    assert_eq!(app["spec"]["syncPolicy"], rendered["spec"]["syncPolicy"]);
    assert_eq!(
        app["spec"]["ignoreDifferences"],
        rendered["spec"]["ignoreDifferences"]
    );
}

#[test]
fn cmp_renders_a_farm_and_its_tenants_for_one_application() {
    let dir = overlay_dir(&[(
        "prod",
        &json!({"namespace": "buildkit-prod", "tenants": [{"namespace": "team-a"}, {"namespace": "team-b", "task": false}]}),
    )]);
    let out = cmp_generate(dir.path(), &[("ARGOCD_ENV_OVERLAY", "prod")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = parse_stream(&text(&out.stdout));
    assert_objects(&objects);
    // One Application's render holds every namespace; Argo CD keeps each object's own
    // metadata.namespace (the destination only fills in a missing one).
    assert_eq!(namespaces(&objects), ["buildkit-prod", "team-a", "team-b"]);
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"].is_string())
    );
    assert_eq!(
        tenant_objects(&objects),
        TEAM_A.map(|o| o.replace("-dev", "-prod"))
    );
    // The reminder goes to stderr, never into the stream Argo CD applies.
    assert!(
        text(&out.stderr).contains("which kiln does not create"),
        "{}",
        text(&out.stderr)
    );
}
