//! The rotation side: the `kiln-rotate` ServiceAccount, Role and RoleBinding, the Role and
//! RoleBinding in each tenant namespace that let it renew the tenant's client Secret, the
//! CronJob that runs `kiln rotate`, and the bootstrap Job that runs it once on first sync.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::checkov::{self, Skip};
use super::config::{CONFIG_KEY, CONFIG_MAP};
use super::meta::{self, Component, Meta, Wave};
use crate::overlay::Workload;

/// The name of the ServiceAccount, Role, RoleBinding and CronJob.
pub const ROTATE: &str = "kiln-rotate";
/// The name of the bootstrap Job.
pub const BOOTSTRAP: &str = "kiln-bootstrap";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/kiln";
/// The uid the rotate container runs as (the kiln image's non-root user).
pub const ROTATE_UID: i64 = 65532;

/// The rotate pods' ServiceAccount.
pub fn service_account(meta: &Meta) -> ServiceAccount {
    ServiceAccount {
        metadata: meta.object(ROTATE, Component::Rotation, Wave::Setup),
        ..Default::default()
    }
}

fn rule(group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// The annotation on a Role that explains its rules.
pub const RBAC_NOTE_ANNOTATION: &str = "kiln.dev/rbac-note";

/// What the farm Role's `kiln.dev/rbac-note` says about the rules resourceNames cannot scope.
const RBAC_NOTE: &str = "every rule is limited by resourceNames except these, which cannot be: events create \
     and patch (kiln rotate creates its Events under generated names, and patches only the Events it created \
     to count repeats)";

/// What the note adds for a Deployment, whose replicas kiln rotate finds through EndpointSlices.
const ENDPOINTSLICES_NOTE: &str = "; endpointslices list (kiln rotate lists the Service's EndpointSlices by \
     the label kubernetes.io/service-name to find every Deployment replica and check over TLS which \
     certificate it serves before a CA rollover step; a label-selected list carries no object name, and \
     the slices' names are generated, so resourceNames cannot restrict it)";

/// Least privilege in the farm's namespace: the three Secrets, the `kiln-config`
/// ConfigMap and the one workload by name; Events, and for a Deployment its EndpointSlices,
/// by kind only (the Role's `kiln.dev/rbac-note` says why).
pub fn role(meta: &Meta) -> Role {
    let overlay = meta.overlay;
    let secrets = &overlay.certs.secrets;
    let workload = match overlay.buildkit.workload {
        Workload::Deployment => "deployments",
        Workload::Statefulset => "statefulsets",
    };
    let mut note = RBAC_NOTE.to_string();
    let mut rules = vec![
        rule(
            "",
            "secrets",
            Some(vec![
                secrets.ca.clone(),
                secrets.daemon.clone(),
                secrets.client.clone(),
            ]),
            // kiln rotate reads the Secrets and writes them with PUT (update); it never
            // creates them (the shells are rendered) and never patches them.
            &["get", "update"],
        ),
        // A by-hand `kiln rotate` without --config reads its policy from here.
        rule("", "configmaps", Some(vec![CONFIG_MAP.to_string()]), &["get"]),
        rule(
            "apps",
            workload,
            Some(vec![overlay.buildkit.service_name.clone()]),
            &["get", "patch"],
        ),
    ];
    if overlay.buildkit.workload == Workload::Deployment {
        rules.push(rule("discovery.k8s.io", "endpointslices", None, &["list"]));
        note.push_str(ENDPOINTSLICES_NOTE);
    }
    // kube's event Recorder (events.k8s.io/v1, the only Events kiln rotate writes): create,
    // and patch for a repeat within one run.
    rules.push(rule("events.k8s.io", "events", None, &["create", "patch"]));
    let mut metadata = meta.object(ROTATE, Component::Rotation, Wave::Setup);
    meta::annotate(&mut metadata, &[(RBAC_NOTE_ANNOTATION, &note)]);
    Role {
        metadata,
        rules: Some(rules),
    }
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(meta: &Meta) -> RoleBinding {
    binding(
        meta,
        meta.object(ROTATE, Component::Rotation, Wave::Setup),
        ROTATE,
    )
}

/// The name of the Role and RoleBinding in each tenant namespace
/// ([`crate::overlay::tenant_rbac_name`]).
pub fn tenant_rbac_name(meta: &Meta) -> String {
    crate::overlay::tenant_rbac_name(meta.namespace())
}

/// The Role in a tenant namespace: the farm's `kiln-rotate` ServiceAccount may get and
/// update exactly the tenant's client Secret, and nothing else.
pub fn tenant_role(meta: &Meta, namespace: &str) -> Role {
    let name = tenant_rbac_name(meta);
    let mut metadata = meta.object_in(namespace, &name, Component::Rotation, Wave::Setup);
    let note = format!(
        "lets ServiceAccount {ROTATE} of the build farm in namespace {} renew this namespace's client \
         Secret {}: get and update of that one Secret, nothing else",
        meta.namespace(),
        meta.overlay.certs.secrets.client
    );
    meta::annotate(&mut metadata, &[(RBAC_NOTE_ANNOTATION, &note)]);
    Role {
        metadata,
        rules: Some(vec![rule(
            "",
            "secrets",
            Some(vec![meta.overlay.certs.secrets.client.clone()]),
            &["get", "update"],
        )]),
    }
}

/// Binds a tenant namespace's Role to the farm's `kiln-rotate` ServiceAccount.
pub fn tenant_role_binding(meta: &Meta, namespace: &str) -> RoleBinding {
    let name = tenant_rbac_name(meta);
    binding(
        meta,
        meta.object_in(namespace, &name, Component::Rotation, Wave::Setup),
        &name,
    )
}

/// A RoleBinding of Role `role` (in the binding's namespace) to the farm's `kiln-rotate`
/// ServiceAccount.
fn binding(meta: &Meta, metadata: ObjectMeta, role: &str) -> RoleBinding {
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ROTATE.into(),
            namespace: Some(meta.namespace().to_string()),
            ..Default::default()
        }]),
    }
}

/// The args of the rotate container: the contract with `kiln rotate`.
pub fn rotate_args(meta: &Meta) -> Vec<String> {
    vec![
        "rotate".into(),
        format!("--config={CONFIG_DIR}/{CONFIG_KEY}"),
        format!("--namespace={}", meta.namespace()),
    ]
}

/// The pod security context of the rotate pods (restricted Pod Security Standard).
pub fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(ROTATE_UID),
        run_as_group: Some(ROTATE_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container security context of the rotate container (restricted Pod Security Standard).
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_template(meta: &Meta) -> PodTemplateSpec {
    let overlay = meta.overlay;
    PodTemplateSpec {
        metadata: Some(meta.pod_template(Component::Rotation)),
        spec: Some(PodSpec {
            service_account_name: Some(ROTATE.into()),
            // kiln rotate talks to the API server with this ServiceAccount's token.
            automount_service_account_token: Some(true),
            image_pull_secrets: super::workload::pull_secrets(&overlay.kiln.image_pull_secrets),
            restart_policy: Some("Never".into()),
            security_context: Some(restricted_pod_security()),
            containers: vec![Container {
                name: "rotate".into(),
                image: Some(overlay.kiln.reference()),
                command: Some(vec!["kiln".into()]),
                args: Some(rotate_args(meta)),
                env: Some(vec![EnvVar {
                    name: "RUST_LOG".into(),
                    value: Some("info".into()),
                    ..Default::default()
                }]),
                resources: meta::resources(&overlay.rotation.resources),
                security_context: Some(restricted_container_security()),
                volume_mounts: Some(vec![VolumeMount {
                    name: "config".into(),
                    mount_path: CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: CONFIG_MAP.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The checkov checks the rotate pods (CronJob and bootstrap Job) fail on purpose.
fn skips(meta: &Meta) -> Vec<Skip> {
    let mut skips = vec![Skip::new(
        "CKV_K8S_38",
        "kiln rotate reads and renews the Secrets and restarts buildkitd through the API server, with this \
         ServiceAccount's token (Role kiln-rotate, limited by resourceNames)",
    )];
    skips.extend(checkov::unpinned(
        "the kiln image",
        &meta.overlay.kiln.reference(),
        "kiln.digest",
    ));
    skips
}

fn job_spec(meta: &Meta) -> JobSpec {
    JobSpec {
        backoff_limit: Some(2),
        active_deadline_seconds: Some(600),
        template: pod_template(meta),
        ..Default::default()
    }
}

/// The CronJob that runs `kiln rotate` on the overlay's schedule.
pub fn cron_job(meta: &Meta) -> CronJob {
    let rotation = &meta.overlay.rotation;
    let mut metadata = meta.object(ROTATE, Component::Rotation, Wave::App);
    checkov::annotate(&mut metadata, &skips(meta));
    CronJob {
        metadata,
        spec: Some(CronJobSpec {
            schedule: rotation.schedule.clone(),
            time_zone: (!rotation.time_zone.is_empty()).then(|| rotation.time_zone.clone()),
            // Two rotations at once would race on the Secrets' resourceVersions.
            concurrency_policy: Some("Forbid".into()),
            // A run missed by more than 6 hours waits for the next slot: renewals start a third
            // of a lifetime early, so one missed day is harmless.
            starting_deadline_seconds: Some(6 * 3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(meta.pod_template(Component::Rotation)),
                spec: Some(job_spec(meta)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bootstrap Job: the same `kiln rotate` once, so the Secrets have data before the
/// daemon starts. An Argo CD Sync hook after the RBAC and Secret waves; for Flux a plain
/// Job that Flux recreates when it changes (Jobs are immutable).
pub fn bootstrap_job(meta: &Meta) -> Job {
    let mut metadata = meta.object(BOOTSTRAP, Component::Rotation, Wave::Bootstrap);
    meta::annotate(
        &mut metadata,
        &[
            ("argocd.argoproj.io/hook", "Sync"),
            ("argocd.argoproj.io/hook-delete-policy", "BeforeHookCreation"),
            ("kustomize.toolkit.fluxcd.io/force", "Enabled"),
        ],
    );
    checkov::annotate(&mut metadata, &skips(meta));
    Job {
        metadata,
        spec: Some(job_spec(meta)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;

    /// (apiGroup, resource, resourceNames, verbs) of each rule.
    fn rules(role: &Role) -> Vec<(String, String, Vec<String>, Vec<String>)> {
        role.rules
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r.api_groups.as_ref().unwrap().len(), 1);
                assert_eq!(r.resources.as_ref().unwrap().len(), 1);
                (
                    r.api_groups.as_ref().unwrap()[0].clone(),
                    r.resources.as_ref().unwrap()[0].clone(),
                    r.resource_names.clone().unwrap_or_default(),
                    r.verbs.clone(),
                )
            })
            .collect()
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn role_scopes_everything_nameable_by_resource_names() {
        let mut overlay = Overlay::default();
        overlay.buildkit.workload = Workload::Statefulset;
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let secrets = s(&["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"]);
        let events = [(s(&["events.k8s.io"]), s(&["create", "patch"]))];
        let expected = |workload: &str| {
            let mut rules = vec![
                (
                    "".into(),
                    "secrets".into(),
                    secrets.clone(),
                    s(&["get", "update"]),
                ),
                ("".into(), "configmaps".into(), s(&["kiln-config"]), s(&["get"])),
                (
                    "apps".into(),
                    workload.into(),
                    s(&["buildkitd"]),
                    s(&["get", "patch"]),
                ),
            ];
            if workload == "deployments" {
                rules.push((
                    "discovery.k8s.io".into(),
                    "endpointslices".into(),
                    vec![],
                    s(&["list"]),
                ));
            }
            for (group, verbs) in events.clone() {
                rules.push((group[0].clone(), "events".into(), vec![], verbs));
            }
            rules
        };
        let role = role(&meta);
        assert_eq!(rules(&role), expected("statefulsets"));
        let note = &role.metadata.annotations.as_ref().unwrap()[RBAC_NOTE_ANNOTATION];
        assert!(!note.contains("endpointslices"), "{note}");

        // A Deployment's replicas are found through its Service's EndpointSlices: a list that
        // cannot be scoped by name, which the note explains.
        overlay.buildkit.workload = Workload::Deployment;
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let role = super::role(&meta);
        assert_eq!(rules(&role), expected("deployments"));
        let note = &role.metadata.annotations.as_ref().unwrap()[RBAC_NOTE_ANNOTATION];
        assert!(note.contains("endpointslices list"), "{note}");
        assert!(note.contains("resourceNames cannot restrict it"), "{note}");
    }

    #[test]
    fn a_tenant_role_allows_exactly_the_client_secret_to_the_farms_service_account() {
        let mut overlay = Overlay {
            namespace: "buildkit-prod".into(),
            ..Default::default()
        };
        overlay.certs.secrets.client = "ci-client".into();
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let role = tenant_role(&meta, "team-a");
        assert_eq!(role.metadata.name.as_deref(), Some("kiln-rotate-buildkit-prod"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            rules(&role),
            [(
                "".into(),
                "secrets".into(),
                s(&["ci-client"]),
                s(&["get", "update"])
            )]
        );
        let binding = tenant_role_binding(&meta, "team-a");
        assert_eq!(binding.metadata, {
            let mut m = role.metadata.clone();
            m.annotations.as_mut().unwrap().remove(RBAC_NOTE_ANNOTATION);
            m
        });
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, "kiln-rotate-buildkit-prod");
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "kiln-rotate");
        assert_eq!(subjects[0].namespace.as_deref(), Some("buildkit-prod"));
    }

    #[test]
    fn rotate_pods_meet_restricted_and_run_the_contract() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let cron = cron_job(&meta);
        let spec = cron.spec.unwrap();
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.schedule, "17 3 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Etc/UTC"));
        let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = &pod.containers[0];
        assert_eq!(c.command.as_deref().unwrap(), ["kiln"]);
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "rotate",
                "--config=/etc/kiln/overlay.yaml",
                "--namespace=buildkit"
            ]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
            ["ALL"]
        );
        assert_eq!(pod.service_account_name.as_deref(), Some(ROTATE));
    }

    #[test]
    fn rotate_pods_pull_the_pinned_kiln_image_with_the_overlays_secrets() {
        let digest = "sha256:28a898719c18a33f4e8000685287fa36fd0dd9560c6440227d3a732d79bb41d8";
        let mut overlay = Overlay::default();
        overlay.kiln.image = "registry.example.com/platform/kiln:1.2.3".into();
        overlay.kiln.digest = digest.into();
        overlay.kiln.image_pull_secrets = vec!["registry-pull".into()];
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let cron = cron_job(&meta);
        let job = bootstrap_job(&meta);
        let pods = [cron.spec.and_then(|s| s.job_template.spec), job.spec];
        for pod in pods.map(|spec| spec.and_then(|s| s.template.spec).unwrap()) {
            assert_eq!(
                pod.containers[0].image.as_deref(),
                Some(format!("registry.example.com/platform/kiln:1.2.3@{digest}").as_str())
            );
            assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry-pull");
            let limits = pod.containers[0].resources.clone().unwrap().limits.unwrap();
            assert!(limits.contains_key("cpu"));
        }
        // Pinned: the only skip left is the token, which kiln rotate needs.
        for annotations in [cron.metadata.annotations, job.metadata.annotations] {
            assert_eq!(checkov::skipped(annotations.as_ref()), ["CKV_K8S_38"]);
        }
    }

    #[test]
    fn bootstrap_job_is_a_sync_hook_flux_can_recreate() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let job = bootstrap_job(&meta);
        let a = job.metadata.annotations.unwrap();
        assert_eq!(a["argocd.argoproj.io/hook"], "Sync");
        assert_eq!(a["argocd.argoproj.io/hook-delete-policy"], "BeforeHookCreation");
        assert_eq!(a["argocd.argoproj.io/sync-wave"], "0");
        assert_eq!(a["kustomize.toolkit.fluxcd.io/force"], "Enabled");
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(args, rotate_args(&meta));
    }
}
