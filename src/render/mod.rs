//! Render: overlay → Kubernetes objects. Pure: no IO.
//!
//! [`render`] builds every object of one resolved overlay, in a stable order
//! (the order they are applied in: setup, secrets, bootstrap, then the app).

pub use crate::object::{Object, ObjectError};
use crate::overlay::{Overlay, Workload};

/// buildkitd.toml: GC sized from the cache volume, plus `buildkit.config`.
pub mod buildkitd;
/// checkov skip annotations: the checks an object fails on purpose, and why.
pub mod checkov;
pub mod config;
/// The buildkitd preStop drain hook.
pub mod drain;
/// GitOps wrappers (kustomization.yaml, Argo CD, Flux): owned by render-core.
pub mod gitops;
pub mod meta;
pub mod namespace;
pub mod network;
pub mod rotation;
pub mod secrets;
pub mod tekton;
pub mod workload;

use meta::Meta;

/// What render needs besides the overlay itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    /// The overlay's name (file name without `.yaml`): `app.kubernetes.io/instance`.
    pub overlay_name: String,
}

impl Context {
    /// A context for the overlay called `overlay_name`.
    pub fn new(overlay_name: impl Into<String>) -> Self {
        Self {
            overlay_name: overlay_name.into(),
        }
    }
}

/// Why an overlay could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A typed object could not be converted to a value.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The overlay could not be written into the `kiln-config` ConfigMap.
    #[error("failed to write the overlay into ConfigMap kiln-config: {0}")]
    Config(#[from] crate::yaml::YamlError),
    /// buildkitd.toml could not be written.
    #[error(transparent)]
    Buildkitd(#[from] buildkitd::TomlError),
}

/// Render one resolved overlay: kiln's objects in apply order, then the overlay's extra
/// manifests (`overlays/<name>/extra/*.yaml.hbs`). `kiln render`, `kiln check` and the
/// Kustomize/KRM plugins all go through here.
pub fn render_resolved(resolved: &crate::overlay::Resolved) -> Result<Vec<Object>, RenderError> {
    let mut objects = render(&resolved.overlay, &Context::new(resolved.name.clone()))?;
    objects.extend(resolved.extras.iter().cloned());
    Ok(objects)
}

/// Render every object of one resolved overlay, in apply order: Namespace, ServiceAccounts,
/// the buildkitd.toml ConfigMap and a Deployment's cache PVC, RBAC and the kiln-config
/// ConfigMap (sync wave -2), the Secret shells (-1), the bootstrap Job (0), then the
/// daemon, its Service, NetworkPolicy and PDB, the Task(s) and the CronJob (1).
///
/// Each tenant namespace gets, in the same waves: a Role and RoleBinding that let the farm's
/// `kiln-rotate` ServiceAccount renew its client Secret (-2), the client Secret shell (-1),
/// and a copy of the Task unless the tenant says `task: false` (1). kiln never renders a
/// tenant's Namespace: the namespace must exist already.
///
/// `rotation.enabled: false` leaves out the rotation objects (the Secrets stay: the daemon
/// and the Tasks mount them); `tekton.enabled: false` leaves out the Tasks.
pub fn render(overlay: &Overlay, ctx: &Context) -> Result<Vec<Object>, RenderError> {
    let meta = Meta {
        overlay,
        instance: &ctx.overlay_name,
    };
    let rotation = overlay.rotation.enabled;
    let mut objects = Vec::new();
    let mut push = |object: Result<Object, ObjectError>| -> Result<(), RenderError> {
        objects.push(object?);
        Ok(())
    };

    // Wave -2: setup.
    if overlay.create_namespace {
        push(Object::from_typed(&namespace::namespace(&meta)))?;
    }
    push(Object::from_typed(&workload::service_account(&meta)))?;
    let buildkitd_toml = buildkitd::render(&overlay.buildkit.cache, &overlay.buildkit.config)?;
    push(Object::from_typed(&buildkitd::config_map(&meta, &buildkitd_toml)))?;
    if let Some(claim) = workload::persistent_volume_claim(&meta) {
        push(Object::from_typed(&claim))?;
    }
    push(Object::from_typed(&network::kiln_network_policy(&meta)))?;
    if rotation {
        push(Object::from_typed(&rotation::service_account(&meta)))?;
        push(Object::from_typed(&rotation::role(&meta)))?;
        push(Object::from_typed(&rotation::role_binding(&meta)))?;
        push(Object::from_typed(&config::config_map(&meta, overlay)?))?;
        for tenant in &overlay.tenants {
            push(Object::from_typed(&rotation::tenant_role(
                &meta,
                &tenant.namespace,
            )))?;
            push(Object::from_typed(&rotation::tenant_role_binding(
                &meta,
                &tenant.namespace,
            )))?;
        }
    }
    // Wave -1: the Secret shells.
    for secret in secrets::secrets(&meta) {
        push(Object::from_typed(&secret))?;
    }
    for tenant in &overlay.tenants {
        push(Object::from_typed(&secrets::tenant_secret(
            &meta,
            &tenant.namespace,
        )))?;
    }
    // Wave 0: the bootstrap hook.
    if rotation {
        push(Object::from_typed(&rotation::bootstrap_job(&meta)))?;
    }
    // Wave 1: the app.
    match overlay.buildkit.workload {
        Workload::Deployment => push(Object::from_typed(&workload::deployment(&meta, &buildkitd_toml)))?,
        Workload::Statefulset => push(Object::from_typed(&workload::stateful_set(
            &meta,
            &buildkitd_toml,
        )))?,
    }
    push(Object::from_typed(&workload::service(&meta)))?;
    push(Object::from_typed(&network::network_policy(&meta)))?;
    if let Some(pdb) = workload::pod_disruption_budget(&meta) {
        push(Object::from_typed(&pdb))?;
    }
    if overlay.tekton.enabled {
        push(Object::from_typed(&tekton::task(&meta)))?;
        if overlay.tekton.daemonless {
            push(Object::from_typed(&tekton::daemonless_task(&meta)))?;
        }
        // The daemonless Task needs no farm (and a namespace that allows Unconfined pods),
        // so tenants get only the Task that builds on the farm.
        for tenant in overlay.tenants.iter().filter(|t| t.task) {
            push(Object::from_typed(&tekton::task_in(&meta, &tenant.namespace)))?;
        }
    }
    if rotation {
        push(Object::from_typed(&rotation::cron_job(&meta)))?;
    }
    checkov::default_namespace(&mut objects);
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(objects: &[Object]) -> Vec<String> {
        objects.iter().map(|o| format!("{}/{}", o.kind, o.name)).collect()
    }

    #[test]
    fn renders_in_apply_order() {
        let objects = render(&Overlay::default(), &Context::new("dev")).unwrap();
        assert_eq!(
            kinds(&objects),
            [
                "Namespace/buildkit",
                "ServiceAccount/buildkitd",
                "ConfigMap/buildkitd-config",
                "NetworkPolicy/kiln",
                "ServiceAccount/kiln-rotate",
                "Role/kiln-rotate",
                "RoleBinding/kiln-rotate",
                "ConfigMap/kiln-config",
                "Secret/buildkit-ca",
                "Secret/buildkit-daemon-certs",
                "Secret/buildkit-client-certs",
                "Job/kiln-bootstrap",
                "Deployment/buildkitd",
                "Service/buildkitd",
                "NetworkPolicy/buildkitd",
                "Task/buildkit",
                "CronJob/kiln-rotate",
            ]
        );
        let namespaced = objects.iter().filter(|o| o.kind != "Namespace");
        assert!(
            namespaced
                .clone()
                .all(|o| o.namespace.as_deref() == Some("buildkit"))
        );
        assert!(objects.iter().all(|o| !o.api_version.is_empty()));
    }

    fn tenants(list: &[(&str, bool)]) -> Vec<crate::overlay::Tenant> {
        list.iter()
            .map(|(namespace, task)| crate::overlay::Tenant {
                namespace: namespace.to_string(),
                task: *task,
            })
            .collect()
    }

    fn in_namespace(objects: &[Object], namespace: &str) -> Vec<String> {
        let objects = objects
            .iter()
            .filter(|o| o.namespace.as_deref() == Some(namespace));
        kinds(&objects.cloned().collect::<Vec<_>>())
    }

    #[test]
    fn each_tenant_gets_rbac_a_client_secret_and_a_task_in_its_namespace() {
        let overlay = Overlay {
            namespace: "buildkit-prod".into(),
            tenants: tenants(&[("team-a", true), ("team-b", false)]),
            ..Default::default()
        };
        let objects = render(&overlay, &Context::new("prod")).unwrap();
        assert_eq!(
            in_namespace(&objects, "team-a"),
            [
                "Role/kiln-rotate-buildkit-prod",
                "RoleBinding/kiln-rotate-buildkit-prod",
                "Secret/buildkit-client-certs",
                "Task/buildkit",
            ]
        );
        assert_eq!(
            in_namespace(&objects, "team-b"),
            [
                "Role/kiln-rotate-buildkit-prod",
                "RoleBinding/kiln-rotate-buildkit-prod",
                "Secret/buildkit-client-certs",
            ]
        );
        // No Namespace object for a tenant: kiln does not create tenant namespaces.
        let namespaces: Vec<_> = objects.iter().filter(|o| o.kind == "Namespace").collect();
        assert_eq!(namespaces.len(), 1);
        assert_eq!(namespaces[0].name, "buildkit-prod");
        // Tenant objects come in the waves of their farm twins: RBAC, then the Secrets, ...
        let position = |kind: &str, namespace: &str| {
            objects
                .iter()
                .position(|o| o.kind == kind && o.namespace.as_deref() == Some(namespace))
                .unwrap()
        };
        assert!(position("RoleBinding", "team-b") < position("Secret", "buildkit-prod"));
        assert!(position("Secret", "team-b") < position("Job", "buildkit-prod"));
        assert!(position("Task", "team-a") < position("CronJob", "buildkit-prod"));
        // ... and everything else stays in the farm's namespace.
        assert!(objects.iter().all(|o| o.kind == "Namespace"
            || ["buildkit-prod", "team-a", "team-b"].contains(&o.namespace.as_deref().unwrap())));
    }

    #[test]
    fn switches_leave_out_tenant_objects_too() {
        let mut overlay = Overlay {
            tenants: tenants(&[("team-a", true)]),
            ..Default::default()
        };
        overlay.rotation.enabled = false;
        overlay.tekton.enabled = false;
        let objects = render(&overlay, &Context::new("dev")).unwrap();
        // The Secret stays (the team's TaskRuns mount it); no RBAC, no Task.
        assert_eq!(in_namespace(&objects, "team-a"), ["Secret/buildkit-client-certs"]);
    }

    #[test]
    fn switches_leave_out_their_objects() {
        let mut overlay = Overlay {
            create_namespace: false,
            ..Default::default()
        };
        overlay.rotation.enabled = false;
        overlay.tekton.enabled = false;
        let objects = render(&overlay, &Context::new("dev")).unwrap();
        let kinds = kinds(&objects);
        assert!(!kinds.iter().any(|k| k.starts_with("Namespace/")));
        assert!(
            !kinds
                .iter()
                .any(|k| k.contains("kiln-rotate") || k.contains("kiln-bootstrap"))
        );
        assert!(
            !kinds
                .iter()
                .any(|k| k.starts_with("Task/") || k == "ConfigMap/kiln-config")
        );
        // The daemon still needs its Secrets.
        assert_eq!(kinds.iter().filter(|k| k.starts_with("Secret/")).count(), 3);
    }

    #[test]
    fn statefulset_with_replicas_adds_pdb_and_daemonless_adds_a_task() {
        let mut overlay = Overlay::default();
        overlay.buildkit.workload = Workload::Statefulset;
        overlay.buildkit.replicas = 2;
        overlay.tekton.daemonless = true;
        let kinds = kinds(&render(&overlay, &Context::new("prod")).unwrap());
        for expected in [
            "StatefulSet/buildkitd",
            "PodDisruptionBudget/buildkitd",
            "Task/buildkit-daemonless",
        ] {
            assert!(kinds.contains(&expected.to_string()), "{expected} in {kinds:?}");
        }
        assert!(!kinds.contains(&"Deployment/buildkitd".to_string()));
    }

    #[test]
    fn edge_values_render_without_panicking() {
        let mut overlay = Overlay::default();
        overlay.buildkit.replicas = u32::MAX;
        overlay.buildkit.port = u16::MAX;
        overlay.buildkit.service_name = String::new();
        overlay.buildkit.resources.requests.clear();
        overlay.buildkit.resources.limits.clear();
        overlay.certs.secrets.ca = "ünïcode".into();
        overlay.tekton.platforms = vec![String::new(); 3];
        let objects = render(&overlay, &Context::new("")).unwrap();
        let deployment = objects.iter().find(|o| o.kind == "Deployment").unwrap();
        // Replicas beyond i32 are clamped, not wrapped.
        assert_eq!(deployment.value["spec"]["replicas"], i32::MAX);
        assert!(deployment.value["spec"]["template"]["spec"]["containers"][0]["resources"].is_null());
    }
}
