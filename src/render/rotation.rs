//! The rotation side: the `kiln-rotate` ServiceAccount, Role and RoleBinding, the CronJob
//! that runs `kiln rotate`, and the bootstrap Job that runs it once on first sync.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

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

/// Least privilege: the three Secrets and the one workload by name; Events by kind only.
pub fn role(meta: &Meta) -> Role {
    let overlay = meta.overlay;
    let secrets = &overlay.certs.secrets;
    let workload = match overlay.buildkit.workload {
        Workload::Deployment => "deployments",
        Workload::Statefulset => "statefulsets",
    };
    let mut metadata = meta.object(ROTATE, Component::Rotation, Wave::Setup);
    meta::annotate(
        &mut metadata,
        &[(
            "kiln.dev/rbac-note",
            "every rule is limited by resourceNames except events create: an Event's name is not known \
             before it is created, so Kubernetes cannot scope create by name",
        )],
    );
    Role {
        metadata,
        rules: Some(vec![
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
            rule(
                "apps",
                workload,
                Some(vec![overlay.buildkit.service_name.clone()]),
                &["get", "patch"],
            ),
            rule("", "events", None, &["create"]),
            rule("events.k8s.io", "events", None, &["create"]),
        ]),
    }
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(meta: &Meta) -> RoleBinding {
    RoleBinding {
        metadata: meta.object(ROTATE, Component::Rotation, Wave::Setup),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ROTATE.into(),
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
            restart_policy: Some("Never".into()),
            security_context: Some(restricted_pod_security()),
            containers: vec![Container {
                name: "rotate".into(),
                image: Some(overlay.kiln.image.clone()),
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
    CronJob {
        metadata: meta.object(ROTATE, Component::Rotation, Wave::App),
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

    #[test]
    fn role_scopes_everything_nameable_by_resource_names() {
        let mut overlay = Overlay::default();
        overlay.buildkit.workload = Workload::Statefulset;
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let rules = role(&meta).rules.unwrap();
        for rule in &rules {
            let is_events = rule.resources.as_ref().unwrap() == &["events"];
            if is_events {
                assert_eq!(rule.verbs, ["create"]);
            } else {
                assert!(
                    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "{rule:?}"
                );
                assert!(!rule.verbs.iter().any(|v| v == "list" || v == "watch" || v == "*"));
            }
        }
        assert_eq!(rules[1].resources.as_ref().unwrap(), &["statefulsets"]);
        assert_eq!(rules[1].resource_names.as_ref().unwrap(), &["buildkitd"]);
        assert_eq!(rules[0].resource_names.as_ref().unwrap().len(), 3);
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
