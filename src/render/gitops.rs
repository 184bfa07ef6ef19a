//! The GitOps wrappers around a rendered tree: the `kustomization.yaml` of each overlay
//! directory, Argo CD Applications, and the Flux GitRepository and Kustomizations.
//! Serde structs of kiln's own (no CRD crates); pure, no IO.
//!
//! One overlay renders into several namespaces (the farm's and each tenant's), and one
//! Application or Flux Kustomization applies all of them. So nothing here overrides an
//! object's namespace: the kustomization sets no `namespace:` (Kustomize's namespace
//! transformer rewrites every namespaced object), the Flux Kustomization no
//! `targetNamespace` (the same transformer), and the Application's destination namespace
//! only fills in objects that name none (every kiln object names its own).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::overlay::{Gitops, Overlay};

/// Argo CD's namespace when `gitops.controllerNamespace` is empty.
pub const ARGOCD_NAMESPACE: &str = "argocd";
/// Flux's namespace when `gitops.controllerNamespace` is empty.
pub const FLUX_NAMESPACE: &str = "flux-system";
/// The name of the Flux GitRepository every Kustomization reads.
pub const GIT_REPOSITORY_NAME: &str = "kiln";
/// The field manager kiln writes in-cluster data with (Secret data, restart annotations).
pub const FIELD_MANAGER: &str = "kiln";

/// `kustomization.yaml` of one rendered directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// The files of the directory, sorted.
    pub resources: Vec<String>,
}

/// The kustomization listing `files`.
pub fn kustomization(files: &[String]) -> Kustomization {
    Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1".into(),
        kind: "Kustomization".into(),
        resources: files.to_vec(),
    }
}

/// The name of the GitOps object (Application, Flux Kustomization) of one overlay.
pub fn app_name(overlay_name: &str) -> String {
    format!("buildkit-{overlay_name}")
}

fn controller_namespace(gitops: &Gitops, default: &str) -> String {
    if gitops.controller_namespace.is_empty() {
        default.to_string()
    } else {
        gitops.controller_namespace.clone()
    }
}

fn metadata(name: String, namespace: String, overlay_name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".into(), "kiln".into()),
            ("app.kubernetes.io/instance".into(), overlay_name.into()),
            // kiln's objects carry kiln's version (see `Meta::version`).
            ("app.kubernetes.io/version".into(), crate::VERSION.into()),
            ("app.kubernetes.io/component".into(), "gitops".into()),
            ("app.kubernetes.io/part-of".into(), "kiln".into()),
            ("app.kubernetes.io/managed-by".into(), "kiln".into()),
        ])),
        annotations: Some(BTreeMap::from([(
            "kiln.dev/generated-by".into(),
            format!("kiln {}", crate::VERSION),
        )])),
        ..Default::default()
    }
}

/// An Argo CD Application (`argoproj.io/v1alpha1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    /// `argoproj.io/v1alpha1`.
    pub api_version: String,
    /// `Application`.
    pub kind: String,
    /// Name, namespace (Argo CD's), labels, finalizer.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: ApplicationSpec,
}

/// `Application.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// The Argo CD project.
    pub project: String,
    /// Where the rendered tree is.
    pub source: ApplicationSource,
    /// Where it is applied.
    pub destination: ApplicationDestination,
    /// Automated sync.
    pub sync_policy: SyncPolicy,
    /// Fields kiln owns in-cluster, which Argo CD must neither diff nor revert.
    pub ignore_differences: Vec<IgnoreDifference>,
    /// How many past syncs Argo CD keeps.
    pub revision_history_limit: i64,
}

/// `Application.spec.source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSource {
    /// The git repository.
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// The branch, tag or commit.
    pub target_revision: String,
    /// The overlay's rendered directory inside the repository.
    pub path: String,
}

/// `Application.spec.destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplicationDestination {
    /// The cluster Argo CD runs in.
    pub server: String,
    /// The overlay's namespace: the one `CreateNamespace=true` creates. Objects in tenant
    /// namespaces keep their own; the Application's project must allow those namespaces as
    /// destinations too, and they must exist.
    pub namespace: String,
}

/// `Application.spec.syncPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    /// Sync on every change, prune what git no longer has, revert drift.
    pub automated: Automated,
    /// `CreateNamespace=true`, `ServerSideApply=true`, … (never `Replace=true`, which would
    /// wipe the Secret data kiln writes in-cluster).
    pub sync_options: Vec<String>,
    /// Retry failed syncs (the first sync waits for the bootstrap Job).
    pub retry: Retry,
}

/// `syncPolicy.automated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Automated {
    /// Delete objects git no longer declares.
    pub prune: bool,
    /// Revert changes made outside git.
    pub self_heal: bool,
}

/// `syncPolicy.retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// How many times.
    pub limit: i64,
    /// Backoff between tries.
    pub backoff: Backoff,
}

/// `syncPolicy.retry.backoff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// The first wait, such as `10s`.
    pub duration: String,
    /// The growth factor.
    pub factor: i64,
    /// The longest wait.
    pub max_duration: String,
}

/// `spec.ignoreDifferences[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreDifference {
    /// The API group (`""` for core).
    pub group: String,
    /// The kind.
    pub kind: String,
    /// Field managers whose fields Argo CD ignores.
    pub managed_fields_managers: Vec<String>,
}

/// The Argo CD Application of one overlay, whose rendered directory is `path`.
pub fn application(overlay_name: &str, overlay: &Overlay, path: &str) -> Application {
    let gitops = &overlay.gitops;
    let mut metadata = metadata(
        app_name(overlay_name),
        controller_namespace(gitops, ARGOCD_NAMESPACE),
        overlay_name,
    );
    // Deleting the Application deletes what it deployed, like `kubectl delete -k`.
    metadata.finalizers = Some(vec!["resources-finalizer.argocd.argoproj.io".into()]);
    let kiln_owned = |group: &str, kind: &str| IgnoreDifference {
        group: group.into(),
        kind: kind.into(),
        managed_fields_managers: vec![FIELD_MANAGER.into()],
    };
    Application {
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Application".into(),
        metadata,
        spec: ApplicationSpec {
            project: gitops.project.clone(),
            source: ApplicationSource {
                repo_url: gitops.repo_url.clone(),
                target_revision: gitops.revision.clone(),
                path: path.to_string(),
            },
            destination: ApplicationDestination {
                server: "https://kubernetes.default.svc".into(),
                namespace: overlay.namespace.clone(),
            },
            sync_policy: SyncPolicy {
                automated: Automated {
                    prune: true,
                    self_heal: true,
                },
                sync_options: vec![
                    "CreateNamespace=true".into(),
                    "ServerSideApply=true".into(),
                    "RespectIgnoreDifferences=true".into(),
                    "PruneLast=true".into(),
                ],
                retry: Retry {
                    limit: 5,
                    backoff: Backoff {
                        duration: "10s".into(),
                        factor: 2,
                        max_duration: "3m".into(),
                    },
                },
            },
            ignore_differences: vec![
                kiln_owned("", "Secret"),
                kiln_owned("apps", "Deployment"),
                kiln_owned("apps", "StatefulSet"),
            ],
            revision_history_limit: 10,
        },
    }
}

/// A Flux GitRepository (`source.toolkit.fluxcd.io/v1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GitRepository {
    /// `source.toolkit.fluxcd.io/v1`.
    pub api_version: String,
    /// `GitRepository`.
    pub kind: String,
    /// Name and Flux's namespace.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: GitRepositorySpec,
}

/// `GitRepository.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositorySpec {
    /// How often Flux fetches.
    pub interval: String,
    /// The repository URL.
    pub url: String,
    /// Which revision.
    #[serde(rename = "ref")]
    pub reference: GitRef,
}

/// `GitRepository.spec.ref`: exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct GitRef {
    /// A branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A full commit SHA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A full reference, such as `refs/tags/v1.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The `ref` for a revision: a 40-hex SHA is a commit, `refs/…` a full reference, the
/// rest a branch.
pub fn git_ref(revision: &str) -> GitRef {
    if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        GitRef {
            commit: Some(revision.into()),
            ..GitRef::default()
        }
    } else if revision.starts_with("refs/") {
        GitRef {
            name: Some(revision.into()),
            ..GitRef::default()
        }
    } else {
        GitRef {
            branch: Some(revision.into()),
            ..GitRef::default()
        }
    }
}

/// The GitRepository shared by every overlay's Kustomization; `overlay` supplies the
/// repository settings (every flux overlay of a render must agree on them).
pub fn git_repository(overlay_name: &str, overlay: &Overlay) -> GitRepository {
    let gitops = &overlay.gitops;
    let mut metadata = metadata(
        GIT_REPOSITORY_NAME.into(),
        controller_namespace(gitops, FLUX_NAMESPACE),
        overlay_name,
    );
    // Shared by every overlay: no instance label.
    if let Some(labels) = metadata.labels.as_mut() {
        labels.remove("app.kubernetes.io/instance");
    }
    GitRepository {
        api_version: "source.toolkit.fluxcd.io/v1".into(),
        kind: "GitRepository".into(),
        metadata,
        spec: GitRepositorySpec {
            interval: "5m".into(),
            url: gitops.repo_url.clone(),
            reference: git_ref(&gitops.revision),
        },
    }
}

/// A Flux Kustomization (`kustomize.toolkit.fluxcd.io/v1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxKustomization {
    /// `kustomize.toolkit.fluxcd.io/v1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// Name and Flux's namespace.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: FluxKustomizationSpec,
}

/// `Kustomization.spec` (Flux). There is no `targetNamespace`, on purpose: it would move
/// the tenants' objects into one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxKustomizationSpec {
    /// Reconcile interval.
    pub interval: String,
    /// Retry interval after a failure.
    pub retry_interval: String,
    /// Kustomizations that must be ready first (`gitops.dependsOn`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependsOn>,
    /// The overlay's rendered directory inside the repository.
    pub path: String,
    /// Delete objects git no longer declares.
    pub prune: bool,
    /// Wait for every object to be ready (the bootstrap Job to complete, the daemon to roll out).
    pub wait: bool,
    /// How long `wait` may take.
    pub timeout: String,
    /// The GitRepository.
    pub source_ref: SourceRef,
}

/// `spec.dependsOn[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependsOn {
    /// A Kustomization in the same namespace.
    pub name: String,
}

/// `spec.sourceRef`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    /// `GitRepository`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// The Flux Kustomization of one overlay, whose rendered directory is `path`.
pub fn flux_kustomization(overlay_name: &str, overlay: &Overlay, path: &str) -> FluxKustomization {
    let gitops = &overlay.gitops;
    FluxKustomization {
        api_version: "kustomize.toolkit.fluxcd.io/v1".into(),
        kind: "Kustomization".into(),
        metadata: metadata(
            app_name(overlay_name),
            controller_namespace(gitops, FLUX_NAMESPACE),
            overlay_name,
        ),
        spec: FluxKustomizationSpec {
            interval: "10m".into(),
            retry_interval: "1m".into(),
            depends_on: gitops
                .depends_on
                .iter()
                .map(|name| DependsOn { name: name.clone() })
                .collect(),
            path: format!("./{}", path.trim_start_matches("./")),
            prune: true,
            wait: true,
            timeout: "5m".into(),
            source_ref: SourceRef {
                kind: "GitRepository".into(),
                name: GIT_REPOSITORY_NAME.into(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_never_replaces_and_syncs_itself() {
        let app = application("dev", &Overlay::default(), "rendered/dev");
        let options = &app.spec.sync_policy.sync_options;
        assert!(options.contains(&"CreateNamespace=true".to_string()));
        assert!(options.contains(&"ServerSideApply=true".to_string()));
        assert!(!options.iter().any(|o| o.starts_with("Replace")));
        assert!(app.spec.sync_policy.automated.prune && app.spec.sync_policy.automated.self_heal);
        assert_eq!(app.metadata.namespace.as_deref(), Some("argocd"));
        assert_eq!(app.spec.destination.namespace, "buildkit");
    }

    #[test]
    fn wrappers_never_override_the_namespaces_of_tenant_objects() {
        let overlay = Overlay {
            namespace: "buildkit-prod".into(),
            tenants: vec![crate::overlay::Tenant {
                namespace: "team-a".into(),
                task: true,
            }],
            ..Default::default()
        };
        let app = serde_json::to_value(application("prod", &overlay, "rendered/prod")).unwrap();
        assert_eq!(app["spec"]["destination"]["namespace"], "buildkit-prod");
        assert!(app["spec"]["source"].get("kustomize").is_none(), "{app}");
        let flux = serde_json::to_value(flux_kustomization("prod", &overlay, "rendered/prod")).unwrap();
        assert!(flux["spec"].get("targetNamespace").is_none(), "{flux}");
        let kustomization = serde_json::to_value(kustomization(&["team-a/secret-x.yaml".into()])).unwrap();
        assert!(kustomization.get("namespace").is_none(), "{kustomization}");
    }

    #[test]
    fn git_refs() {
        assert_eq!(git_ref("main").branch.as_deref(), Some("main"));
        assert_eq!(git_ref("refs/tags/v1").name.as_deref(), Some("refs/tags/v1"));
        assert!(git_ref(&"a".repeat(40)).commit.is_some());
    }

    #[test]
    fn flux_kustomization_waits_and_prunes() {
        let mut overlay = Overlay::default();
        overlay.gitops.depends_on = vec!["tekton-pipelines".into()];
        let k = flux_kustomization("prod", &overlay, "rendered/prod");
        assert!(k.spec.prune && k.spec.wait);
        assert_eq!(k.spec.path, "./rendered/prod");
        assert_eq!(
            k.spec.depends_on,
            [DependsOn {
                name: "tekton-pipelines".into()
            }]
        );
        assert_eq!(k.metadata.namespace.as_deref(), Some("flux-system"));
    }
}
