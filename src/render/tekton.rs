//! The Tekton Task (`tekton.dev/v1`) whose one step runs `kiln build`, and the optional
//! daemonless variant. Tekton kinds are kiln's own serde structs.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvVar, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::checkov::{self, Skip};
use super::meta::{self, Component, Meta, Wave};
use crate::overlay::{Mode, Workload, pinned};

/// `tekton.dev/v1`.
pub const API_VERSION: &str = "tekton.dev/v1";
/// The uid of the kiln image's non-root user.
pub const KILN_UID: i64 = 65532;

/// A Tekton Task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Always `tekton.dev/v1`.
    pub api_version: String,
    /// Always `Task`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// The Task itself.
    pub spec: TaskSpec,
}

/// `Task.spec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// What the Task does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    /// Volumes the TaskRun binds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceDeclaration>,
    /// Outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TaskResult>,
    /// Pod volumes the steps mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The containers, run in order.
    pub steps: Vec<Step>,
}

/// A param's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// One string.
    String,
    /// A list of strings.
    Array,
}

/// A param's default value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// For `type: string`.
    String(String),
    /// For `type: array`.
    Array(Vec<String>),
}

/// A declared param.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// The name, referenced as `$(params.NAME)`.
    pub name: String,
    /// string or array.
    #[serde(rename = "type")]
    pub type_: ParamType,
    /// What it means.
    pub description: String,
    /// The value when the TaskRun gives none (none: the param is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
}

/// A declared workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceDeclaration {
    /// The name, referenced as `$(workspaces.NAME.path)`.
    pub name: String,
    /// What it must hold.
    pub description: String,
    /// The TaskRun may leave it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A declared result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// The name, written to `$(results.NAME.path)`.
    pub name: String,
    /// Always `string` here.
    #[serde(rename = "type")]
    pub type_: ParamType,
    /// What it holds.
    pub description: String,
}

/// One step: a container.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The step name.
    pub name: String,
    /// The container image.
    pub image: String,
    /// The entrypoint (not used together with `script`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments (passed to the script as `$@` when `script` is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A script run instead of a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Mounts of `spec.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// The container security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_resources: Option<ResourceRequirements>,
}

fn param(name: &str, description: &str, default: Option<&str>) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        type_: ParamType::String,
        description: description.into(),
        default: default.map(|d| ParamValue::String(d.into())),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The default of BUILDKIT_DAEMON_ADDRESS: the Service for a Deployment; empty for a
/// StatefulSet, which makes `kiln build` pick a replica by consistent hashing.
pub fn daemon_address(meta: &Meta) -> String {
    let buildkit = &meta.overlay.buildkit;
    match buildkit.workload {
        Workload::Deployment => format!(
            "tcp://{}.{}.svc:{}",
            buildkit.service_name,
            meta.namespace(),
            buildkit.port
        ),
        Workload::Statefulset => String::new(),
    }
}

/// The params shared by both Tasks (everything but how to reach the daemon).
fn build_params(meta: &Meta) -> Vec<ParamSpec> {
    let tekton = &meta.overlay.tekton;
    vec![
        param(
            "IMAGE",
            "The image reference to build (and push), such as registry.example.com/team/app:tag.",
            None,
        ),
        param(
            "CONTEXT",
            "The build context, relative to the source workspace.",
            Some(&tekton.context),
        ),
        param(
            "DOCKERFILE",
            "The Dockerfile, relative to the build context.",
            Some(&tekton.dockerfile),
        ),
        ParamSpec {
            name: "BUILD_ARGS".into(),
            type_: ParamType::Array,
            description: "Build arguments, each KEY=VALUE.".into(),
            default: Some(ParamValue::Array(Vec::new())),
        },
        param(
            "PLATFORMS",
            "Target platforms, comma-separated (linux/amd64,linux/arm64); empty builds for the daemon's platform.",
            Some(&tekton.platforms.join(",")),
        ),
        param(
            "PUSH",
            "Push the image: \"true\" or \"false\".",
            Some(if tekton.push { "true" } else { "false" }),
        ),
        param(
            "CACHE_REF",
            "A registry reference to import the build cache from (the image exports an inline cache); empty for none.",
            Some(""),
        ),
    ]
}

fn workspaces() -> Vec<WorkspaceDeclaration> {
    vec![
        WorkspaceDeclaration {
            name: "source".into(),
            description: "The source tree that holds the build context and the Dockerfile.".into(),
            optional: false,
            read_only: false,
        },
        WorkspaceDeclaration {
            name: "dockerconfig".into(),
            description: "Registry credentials: a directory with config.json (for a \
                          kubernetes.io/dockerconfigjson Secret, map the key .dockerconfigjson to config.json)."
                .into(),
            optional: true,
            read_only: true,
        },
    ]
}

fn results() -> Vec<TaskResult> {
    vec![
        TaskResult {
            name: "IMAGE_DIGEST".into(),
            type_: ParamType::String,
            description: "The digest of the built image (sha256:…).".into(),
        },
        TaskResult {
            name: "IMAGE_URL".into(),
            type_: ParamType::String,
            description: "The image reference that was built.".into(),
        },
    ]
}

fn task_metadata(meta: &Meta, namespace: &str, name: &str, display_name: &str) -> ObjectMeta {
    let mut metadata = meta.object_in(namespace, name, Component::BuildTask, Wave::App);
    meta::annotate(
        &mut metadata,
        &[
            ("tekton.dev/pipelines.minVersion", "0.50.0"),
            ("tekton.dev/categories", "Image Build"),
            ("tekton.dev/tags", "image-build, buildkit"),
            ("tekton.dev/displayName", display_name),
            ("tekton.dev/platforms", "linux/amd64,linux/arm64"),
        ],
    );
    metadata
}

/// The annotation that tells TaskRun authors which pod settings a Task cannot carry itself.
pub const POD_TEMPLATE_NOTE: &str = "kiln.dev/pod-template";

/// What the TaskRuns of a Task in `namespace` must set in their pod template: a Task has no
/// pod fields, so the token mount and the image pull Secrets are the TaskRun's to set.
fn pod_template_note(namespace: &str, pull_secrets: &[String], field: &str) -> String {
    let mut note = String::from(
        "a Task cannot set pod fields; TaskRuns of this Task should set podTemplate.automountServiceAccountToken: \
         false (the step never calls the API server)",
    );
    if !pull_secrets.is_empty() {
        note.push_str(&format!(
            ", and pull the image with the Secrets {field} names ({}): list them in podTemplate.imagePullSecrets \
             or in the imagePullSecrets of the TaskRun's ServiceAccount; each must exist in namespace {namespace}",
            pull_secrets.join(", ")
        ));
    }
    note
}

/// The checkov checks every Task's pod fails on purpose: what a Task cannot set, or what
/// does not apply to a step that runs to completion.
fn task_skips() -> Vec<Skip> {
    vec![
        Skip::new(
            "CKV_K8S_8",
            "a Tekton step runs to completion and takes no probes",
        ),
        Skip::new(
            "CKV_K8S_9",
            "a Tekton step runs to completion and takes no probes",
        ),
        Skip::new(
            "CKV_K8S_29",
            "a Task has no pod securityContext (a TaskRun's podTemplate may set one); the step sets the restricted \
             one itself",
        ),
        Skip::new(
            "CKV_K8S_38",
            "a Task cannot set automountServiceAccountToken and the step never calls the API server: set \
             podTemplate.automountServiceAccountToken: false in the TaskRun (see kiln.dev/pod-template)",
        ),
    ]
}

/// The restricted-profile security context of the `kiln build` step.
pub fn restricted_step_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(KILN_UID),
        run_as_group: Some(KILN_UID),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The args of the `kiln build` step: the contract with `kiln build`'s flags.
pub fn build_args(meta: &Meta) -> Vec<String> {
    [
        "build",
        "--image=$(params.IMAGE)",
        "--context=$(workspaces.source.path)/$(params.CONTEXT)",
        "--dockerfile=$(params.DOCKERFILE)",
        "--platform=$(params.PLATFORMS)",
        "--push=$(params.PUSH)",
        "--cache-ref=$(params.CACHE_REF)",
        "--addr=$(params.BUILDKIT_DAEMON_ADDRESS)",
        "--tls-dir=/certs",
        "--results-dir=/tekton/results",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!("--timeout={}", meta.overlay.tekton.timeout),
        "--".to_string(),
        "$(params.BUILD_ARGS[*])".to_string(),
    ])
    .collect()
}

/// The Task that builds with `kiln build` against the buildkitd Service over mTLS, in the
/// farm's namespace.
pub fn task(meta: &Meta) -> Task {
    task_in(meta, meta.namespace())
}

/// The same Task in `namespace` (a tenant's): it still builds on the farm's daemon, and its
/// `BUILDKIT_CLIENT_CERTS` default names the client Secret, which a tenant namespace holds
/// under the same name.
pub fn task_in(meta: &Meta, namespace: &str) -> Task {
    let overlay = meta.overlay;
    let buildkit = &overlay.buildkit;
    let mut params = build_params(meta);
    params.push(param(
        "BUILDKIT_DAEMON_ADDRESS",
        "The buildkitd address, tcp://host:port; empty picks a StatefulSet replica by consistent hashing \
         of the image repository and context.",
        Some(&daemon_address(meta)),
    ));
    params.push(param(
        "BUILDKIT_CLIENT_CERTS",
        "The Secret with the client certificate, key and CA bundle (ca.pem/cert.pem/key.pem or \
         ca.crt/tls.crt/tls.key), mounted at /certs.",
        Some(&overlay.certs.secrets.client),
    ));
    let step = Step {
        name: "build".into(),
        image: overlay.kiln.reference(),
        command: vec!["kiln".into()],
        args: build_args(meta),
        env: vec![
            env("KILN_BUILDKIT_REPLICAS", buildkit.replicas.to_string()),
            env("KILN_BUILDKIT_SERVICE", buildkit.service_name.clone()),
            env("KILN_BUILDKIT_NAMESPACE", meta.namespace()),
            env("KILN_BUILDKIT_PORT", buildkit.port.to_string()),
            // An unbound optional workspace gives an empty path, which buildctl treats as unset.
            env("DOCKER_CONFIG", "$(workspaces.dockerconfig.path)"),
        ],
        volume_mounts: vec![
            VolumeMount {
                name: "certs".into(),
                mount_path: "/certs".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ],
        security_context: Some(restricted_step_security()),
        compute_resources: meta::resources(&overlay.tekton.step_resources),
        ..Default::default()
    };
    let mut metadata = task_metadata(meta, namespace, &overlay.tekton.name, "BuildKit (kiln)");
    let note = pod_template_note(
        namespace,
        &overlay.kiln.image_pull_secrets,
        "kiln.imagePullSecrets",
    );
    meta::annotate(&mut metadata, &[(POD_TEMPLATE_NOTE, &note)]);
    let mut skips = task_skips();
    skips.extend(checkov::unpinned("the kiln image", &step.image, "kiln.digest"));
    checkov::annotate(&mut metadata, &skips);
    Task {
        api_version: API_VERSION.into(),
        kind: "Task".into(),
        metadata,
        spec: TaskSpec {
            description: Some(
                "Builds a container image with Moby BuildKit: kiln build checks the client certificates, \
                 picks a buildkitd replica, runs buildctl over mTLS and reports IMAGE_DIGEST and IMAGE_URL."
                    .into(),
            ),
            params,
            workspaces: workspaces(),
            results: results(),
            volumes: vec![
                Volume {
                    name: "certs".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("$(params.BUILDKIT_CLIENT_CERTS)".into()),
                        // The step runs as a non-root uid and must read the key.
                        default_mode: Some(0o444),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
            ],
            steps: vec![step],
        },
    }
}

/// The script of the daemonless step; BUILD_ARGS arrive as `$@`, other params as env.
const DAEMONLESS_SCRIPT: &str = r#"#!/bin/sh
set -eu
n=$#
for arg in "$@"; do set -- "$@" --opt "build-arg:$arg"; done
shift "$n"
if [ -n "$PLATFORMS" ]; then set -- "$@" --opt "platform=$PLATFORMS"; fi
if [ -n "$CACHE_REF" ]; then
  set -- "$@" --export-cache type=inline --import-cache "type=registry,ref=$CACHE_REF"
fi
buildctl-daemonless.sh build \
  --progress=plain \
  --frontend=dockerfile.v0 \
  --local "context=$CONTEXT_DIR" \
  --local "dockerfile=$CONTEXT_DIR" \
  --opt "filename=$DOCKERFILE" \
  --output "type=image,name=$IMAGE,push=$PUSH" \
  --metadata-file /tmp/metadata.json \
  "$@"
digest=$(grep -o '"containerimage.digest": *"[^"]*"' /tmp/metadata.json | cut -d'"' -f4)
printf '%s' "$digest" > "$(results.IMAGE_DIGEST.path)"
printf '%s' "$IMAGE" > "$(results.IMAGE_URL.path)"
"#;

/// The daemonless Task's image: `<image>:<version>-rootless`, pinned by
/// `tekton.daemonlessDigest`, or in rootless mode by `buildkit.digest` (the daemon's image
/// is the same one).
pub fn daemonless_image(meta: &Meta) -> String {
    let overlay = meta.overlay;
    let digest = match (&overlay.tekton.daemonless_digest, overlay.buildkit.mode) {
        (digest, _) if !digest.is_empty() => digest,
        (_, Mode::Rootless) => &overlay.buildkit.digest,
        _ => "",
    };
    pinned(&super::workload::rootless_image(meta), digest)
}

/// The daemonless Task: buildkitd runs inside the step (rootless), no Service or certs.
///
/// It cannot meet the restricted Pod Security Standard: like the rootless daemon, the
/// step needs Unconfined seccomp and AppArmor to create user namespaces.
pub fn daemonless_task(meta: &Meta) -> Task {
    let overlay = meta.overlay;
    let buildkit = &overlay.buildkit;
    let image = daemonless_image(meta);
    let mut params = build_params(meta);
    params.push(param(
        "BUILDKIT_IMAGE",
        "The rootless BuildKit image that runs buildctl-daemonless.sh.",
        Some(&image),
    ));
    let mut metadata = task_metadata(
        meta,
        meta.namespace(),
        &format!("{}-daemonless", overlay.tekton.name),
        "BuildKit daemonless (kiln)",
    );
    let note = pod_template_note(
        meta.namespace(),
        &buildkit.image_pull_secrets,
        "buildkit.imagePullSecrets",
    );
    meta::annotate(
        &mut metadata,
        &[
            (
                super::meta::POD_SECURITY_NOTE,
                super::workload::pod_security_reason(Mode::Rootless),
            ),
            (POD_TEMPLATE_NOTE, &note),
        ],
    );
    let mut skips = task_skips();
    skips.extend(checkov::no_cpu_limit(
        &buildkit.resources,
        super::workload::NO_CPU_LIMIT,
    ));
    skips.extend(super::workload::mode_skips(Mode::Rootless));
    skips.extend(checkov::unpinned(
        "the rootless BuildKit image",
        &image,
        "tekton.daemonlessDigest",
    ));
    checkov::annotate(&mut metadata, &skips);
    let step = Step {
        name: "build".into(),
        image: "$(params.BUILDKIT_IMAGE)".into(),
        args: vec!["$(params.BUILD_ARGS[*])".into()],
        script: Some(DAEMONLESS_SCRIPT.into()),
        env: vec![
            env("IMAGE", "$(params.IMAGE)"),
            env("CONTEXT_DIR", "$(workspaces.source.path)/$(params.CONTEXT)"),
            env("DOCKERFILE", "$(params.DOCKERFILE)"),
            env("PLATFORMS", "$(params.PLATFORMS)"),
            env("PUSH", "$(params.PUSH)"),
            env("CACHE_REF", "$(params.CACHE_REF)"),
            env("DOCKER_CONFIG", "$(workspaces.dockerconfig.path)"),
            env("BUILDKITD_FLAGS", "--oci-worker-no-process-sandbox"),
        ],
        volume_mounts: vec![VolumeMount {
            name: "state".into(),
            mount_path: super::workload::state_dir(Mode::Rootless).into(),
            ..Default::default()
        }],
        security_context: Some(super::workload::container_security(Mode::Rootless)),
        compute_resources: meta::resources(&buildkit.resources),
        ..Default::default()
    };
    Task {
        api_version: API_VERSION.into(),
        kind: "Task".into(),
        metadata,
        spec: TaskSpec {
            description: Some(
                "Builds a container image with a rootless BuildKit started inside the step \
                 (buildctl-daemonless.sh): no daemon, Service or certificates, and no shared cache."
                    .into(),
            ),
            params,
            workspaces: workspaces(),
            results: results(),
            volumes: vec![Volume {
                name: "state".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }],
            steps: vec![step],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;

    fn param_default<'a>(task: &'a Task, name: &str) -> Option<&'a ParamValue> {
        task.spec
            .params
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.default.as_ref())
    }

    #[test]
    fn step_runs_kiln_build_with_the_contract_args() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let task = task(&meta);
        let step = &task.spec.steps[0];
        assert_eq!(step.command, ["kiln"]);
        assert_eq!(step.args.first().map(String::as_str), Some("build"));
        assert_eq!(
            step.args.last().map(String::as_str),
            Some("$(params.BUILD_ARGS[*])")
        );
        assert!(step.args.contains(&"--timeout=1h".to_string()));
        assert_eq!(step.image, overlay.kiln.image);
        let env: Vec<_> = step
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert!(env.contains(&("KILN_BUILDKIT_REPLICAS", "1")));
        assert!(env.contains(&("KILN_BUILDKIT_NAMESPACE", "buildkit")));
        assert!(env.contains(&("KILN_BUILDKIT_PORT", "1234")));
    }

    #[test]
    fn every_param_the_step_references_is_declared() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        for task in [task(&meta), daemonless_task(&meta)] {
            let text = serde_json::to_string(&task.spec.steps).unwrap()
                + &serde_json::to_string(&task.spec.volumes).unwrap();
            for reference in text.split("$(params.").skip(1) {
                let name = reference.split([')', '[']).next().unwrap();
                assert!(
                    task.spec.params.iter().any(|p| p.name == name),
                    "{} references undeclared param {name}",
                    task.metadata.name.as_deref().unwrap()
                );
            }
        }
    }

    #[test]
    fn daemon_address_depends_on_workload() {
        let mut overlay = Overlay {
            namespace: "ci".into(),
            ..Default::default()
        };
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        assert_eq!(
            param_default(&task(&meta), "BUILDKIT_DAEMON_ADDRESS"),
            Some(&ParamValue::String("tcp://buildkitd.ci.svc:1234".into()))
        );
        overlay.buildkit.workload = Workload::Statefulset;
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        assert_eq!(
            param_default(&task(&meta), "BUILDKIT_DAEMON_ADDRESS"),
            Some(&ParamValue::String(String::new()))
        );
    }

    #[test]
    fn defaults_come_from_the_overlay() {
        let mut overlay = Overlay::default();
        overlay.tekton.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        overlay.tekton.push = false;
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let task = task(&meta);
        assert_eq!(
            param_default(&task, "PLATFORMS"),
            Some(&ParamValue::String("linux/amd64,linux/arm64".into()))
        );
        assert_eq!(
            param_default(&task, "PUSH"),
            Some(&ParamValue::String("false".into()))
        );
        assert_eq!(
            param_default(&task, "BUILD_ARGS"),
            Some(&ParamValue::Array(vec![]))
        );
        assert_eq!(param_default(&task, "IMAGE"), None);
        assert_eq!(
            param_default(&task, "BUILDKIT_CLIENT_CERTS"),
            Some(&ParamValue::String("buildkit-client-certs".into()))
        );
    }

    #[test]
    fn a_tenant_task_differs_only_in_its_namespace() {
        let overlay = Overlay {
            namespace: "buildkit-prod".into(),
            ..Default::default()
        };
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let farm = task(&meta);
        let mut tenant = task_in(&meta, "team-a");
        assert_eq!(tenant.metadata.namespace.as_deref(), Some("team-a"));
        // It still builds on the farm's daemon.
        assert_eq!(
            param_default(&tenant, "BUILDKIT_DAEMON_ADDRESS"),
            Some(&ParamValue::String(
                "tcp://buildkitd.buildkit-prod.svc:1234".into()
            ))
        );
        tenant.metadata.namespace = farm.metadata.namespace.clone();
        assert_eq!(tenant, farm);
    }

    const DIGEST: &str = "sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8";
    const OTHER: &str = "sha256:504731e577c20559c00f968f33219f30115e70be29ab96728d1d06e963fc494b";

    fn skipped(task: &Task) -> Vec<String> {
        checkov::skipped(task.metadata.annotations.as_ref())
    }

    #[test]
    fn the_step_runs_the_pinned_kiln_image_and_says_which_pull_secrets_taskruns_need() {
        let mut overlay = Overlay::default();
        overlay.kiln.digest = DIGEST.into();
        overlay.kiln.image_pull_secrets = vec!["ghcr-pull".into()];
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let tenant = task_in(&meta, "team-a");
        assert_eq!(
            tenant.spec.steps[0].image,
            format!("ghcr.io/kiln-dev/kiln:{}@{DIGEST}", crate::VERSION)
        );
        let note = &tenant.metadata.annotations.as_ref().unwrap()[POD_TEMPLATE_NOTE];
        assert!(note.contains("automountServiceAccountToken: false"), "{note}");
        assert!(note.contains("kiln.imagePullSecrets names (ghcr-pull)"), "{note}");
        assert!(note.contains("must exist in namespace team-a"), "{note}");
        assert_eq!(
            skipped(&tenant),
            ["CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_29", "CKV_K8S_38"]
        );

        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let farm = task(&meta);
        let note = &farm.metadata.annotations.as_ref().unwrap()[POD_TEMPLATE_NOTE];
        assert!(!note.contains("imagePullSecrets"), "{note}");
        assert!(skipped(&farm).contains(&"CKV_K8S_43".to_string()));
    }

    #[test]
    fn the_daemonless_image_is_pinned_by_its_own_digest_or_the_rootless_daemons() {
        let image = |mode, digest: &str, daemonless: &str| {
            let mut overlay = Overlay::default();
            overlay.buildkit.mode = mode;
            overlay.buildkit.digest = digest.into();
            overlay.tekton.daemonless_digest = daemonless.into();
            let meta = Meta {
                overlay: &overlay,
                instance: "dev",
            };
            let task = daemonless_task(&meta);
            assert_eq!(
                param_default(&task, "BUILDKIT_IMAGE"),
                Some(&ParamValue::String(daemonless_image(&meta)))
            );
            (daemonless_image(&meta), skipped(&task))
        };
        let tagged = "docker.io/moby/buildkit:v0.32.2-rootless";
        // Rootless: the daemon's digest is the same image's.
        assert_eq!(image(Mode::Rootless, DIGEST, "").0, format!("{tagged}@{DIGEST}"));
        // Privileged: the daemon's digest is another tag's; only the daemonless one pins.
        let (unpinned, skips) = image(Mode::Privileged, DIGEST, "");
        assert_eq!(unpinned, tagged);
        assert!(skips.contains(&"CKV_K8S_43".to_string()), "{skips:?}");
        let (pinned, skips) = image(Mode::Privileged, DIGEST, OTHER);
        assert_eq!(pinned, format!("{tagged}@{OTHER}"));
        assert!(!skips.contains(&"CKV_K8S_43".to_string()), "{skips:?}");
        // The step runs rootless buildkitd: the rootless exemptions and no CPU limit.
        for check in ["CKV_K8S_11", "CKV_K8S_20", "CKV_K8S_31", "CKV_K8S_40"] {
            assert!(skips.contains(&check.to_string()), "{check} in {skips:?}");
        }
    }

    #[test]
    fn task_round_trips_through_serde() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let task = task(&meta);
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["apiVersion"], "tekton.dev/v1");
        assert_eq!(json["spec"]["params"][3]["type"], "array");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
    }
}
