//! Labels, annotations and metadata shared by every rendered object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration as K8sToleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::overlay::{Overlay, Resources, Toleration};

/// `app.kubernetes.io/name` of the daemon's objects.
pub const DAEMON_APP: &str = "buildkitd";
/// `app.kubernetes.io/name` of every other object.
pub const KILN_APP: &str = "kiln";

/// The annotation stamped on every object.
pub const GENERATED_BY: &str = "kiln.dev/generated-by";
/// The Argo CD sync-wave annotation.
pub const SYNC_WAVE: &str = "argocd.argoproj.io/sync-wave";
/// The annotation that explains, on the object, why a pod cannot meet the restricted standard.
pub const POD_SECURITY_NOTE: &str = "kiln.dev/pod-security";

/// Argo CD sync waves: what must exist before what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wave {
    /// Namespace, ServiceAccounts, RBAC, ConfigMap.
    Setup = -2,
    /// The Secret shells, which the bootstrap Job fills.
    Secrets = -1,
    /// The bootstrap Job (a Sync hook).
    Bootstrap = 0,
    /// The daemon, its Services, the Task and the CronJob.
    App = 1,
}

/// `app.kubernetes.io/component`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The Namespace that holds the build farm.
    Namespace,
    /// buildkitd and what serves it.
    Daemon,
    /// The Tekton Task(s).
    BuildTask,
    /// The mTLS Secrets.
    Certs,
    /// The rotation CronJob, bootstrap Job, their RBAC and config.
    Rotation,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Namespace => "namespace",
            Component::Daemon => "daemon",
            Component::BuildTask => "build-task",
            Component::Certs => "certs",
            Component::Rotation => "rotation",
        }
    }

    /// `app.kubernetes.io/name`: the daemon's objects are `buildkitd`, the rest `kiln`.
    pub fn app(self) -> &'static str {
        match self {
            Component::Daemon => DAEMON_APP,
            _ => KILN_APP,
        }
    }
}

/// Builds labels and metadata for one overlay.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// The resolved overlay.
    pub overlay: &'a Overlay,
    /// The overlay name: `app.kubernetes.io/instance`.
    pub instance: &'a str,
}

impl<'a> Meta<'a> {
    /// The namespace every namespaced object goes into.
    pub fn namespace(&self) -> &'a str {
        &self.overlay.namespace
    }

    /// `app.kubernetes.io/version`: the version of the app that `app.kubernetes.io/name`
    /// names. The daemon's objects ([`Component::Daemon`]: buildkitd's ServiceAccount,
    /// Deployment or StatefulSet, Services, NetworkPolicy and PDB) carry BuildKit's version;
    /// every other object is kiln's (the Namespace, the Secret shells kiln fills, the rotation
    /// ServiceAccount, Role, RoleBinding, ConfigMap, bootstrap Job and CronJob, the Tasks
    /// that run `kiln build`, kiln's NetworkPolicy) and carries kiln's own [`crate::VERSION`].
    pub fn version(&self, component: Component) -> &'a str {
        match component {
            Component::Daemon => &self.overlay.buildkit.version,
            _ => crate::VERSION,
        }
    }

    /// The recommended labels plus the overlay's commonLabels.
    ///
    /// kiln's own labels win over commonLabels with the same key: selectors depend on them.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut labels = self.overlay.common_labels.clone();
        labels.extend(self.selector_labels(component));
        for (key, value) in [
            ("app.kubernetes.io/version", self.version(component)),
            ("app.kubernetes.io/component", component.as_str()),
            ("app.kubernetes.io/part-of", "kiln"),
            ("app.kubernetes.io/managed-by", "kiln"),
        ] {
            labels.insert(key.to_string(), value.to_string());
        }
        labels
    }

    /// The labels selectors use: name and instance only, so a version bump never
    /// touches an immutable selector.
    pub fn selector_labels(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), component.app().to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                self.instance.to_string(),
            ),
        ])
    }

    /// A label selector over [`Meta::selector_labels`].
    pub fn selector(&self, component: Component) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector_labels(component)),
            ..Default::default()
        }
    }

    /// The annotations every object carries.
    pub fn annotations(&self, wave: Wave) -> BTreeMap<String, String> {
        BTreeMap::from([
            (GENERATED_BY.to_string(), format!("kiln {}", crate::VERSION)),
            (SYNC_WAVE.to_string(), (wave as i32).to_string()),
        ])
    }

    /// Metadata for a namespaced object in the farm's namespace.
    pub fn object(&self, name: &str, component: Component, wave: Wave) -> ObjectMeta {
        self.object_in(self.namespace(), name, component, wave)
    }

    /// Metadata for a namespaced object in `namespace` (a tenant's, or the farm's).
    pub fn object_in(&self, namespace: &str, name: &str, component: Component, wave: Wave) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(self.labels(component)),
            annotations: Some(self.annotations(wave)),
            ..Default::default()
        }
    }

    /// Metadata for a pod template: labels only (the selector's plus the rest).
    pub fn pod_template(&self, component: Component) -> ObjectMeta {
        ObjectMeta {
            labels: Some(self.labels(component)),
            ..Default::default()
        }
    }
}

/// Add annotations to an object's metadata.
pub fn annotate(meta: &mut ObjectMeta, extra: &[(&str, &str)]) {
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in extra {
        annotations.insert((*key).to_string(), (*value).to_string());
    }
}

/// Overlay resources as Kubernetes resource requirements (None when both maps are empty).
pub fn resources(resources: &Resources) -> Option<ResourceRequirements> {
    let quantities = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(name, value)| (name.clone(), Quantity(value.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let requirements = ResourceRequirements {
        requests: quantities(&resources.requests),
        limits: quantities(&resources.limits),
        ..Default::default()
    };
    (requirements.requests.is_some() || requirements.limits.is_some()).then_some(requirements)
}

/// Overlay tolerations as Kubernetes tolerations (None when there are none).
pub fn tolerations(tolerations: &[Toleration]) -> Option<Vec<K8sToleration>> {
    (!tolerations.is_empty()).then(|| {
        tolerations
            .iter()
            .map(|t| K8sToleration {
                key: t.key.clone(),
                operator: t.operator.clone(),
                value: t.value.clone(),
                effect: t.effect.clone(),
                toleration_seconds: t.toleration_seconds,
            })
            .collect()
    })
}

/// A map, or None when it is empty (so the YAML leaves the field out).
pub fn non_empty(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(overlay: &Overlay) -> Meta<'_> {
        Meta {
            overlay,
            instance: "dev",
        }
    }

    fn overlay() -> Overlay {
        Overlay {
            common_labels: BTreeMap::from([
                ("team".to_string(), "platform".to_string()),
                ("app.kubernetes.io/name".to_string(), "hijack".to_string()),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn labels_carry_recommended_keys_and_common_labels() {
        let overlay = overlay();
        let meta = meta(&overlay);
        let labels = meta.labels(Component::Daemon);
        assert_eq!(labels["app.kubernetes.io/name"], "buildkitd");
        assert_eq!(labels["app.kubernetes.io/instance"], "dev");
        assert_eq!(labels["app.kubernetes.io/version"], overlay.buildkit.version);
        assert_eq!(labels["app.kubernetes.io/component"], "daemon");
        assert_eq!(labels["app.kubernetes.io/part-of"], "kiln");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kiln");
        assert_eq!(labels["team"], "platform");
        assert_eq!(meta.labels(Component::Rotation)["app.kubernetes.io/name"], "kiln");
    }

    #[test]
    fn the_daemon_carries_buildkits_version_and_the_rest_kilns() {
        let overlay = overlay();
        let meta = meta(&overlay);
        assert_ne!(overlay.buildkit.version, crate::VERSION);
        for component in [
            Component::Namespace,
            Component::BuildTask,
            Component::Certs,
            Component::Rotation,
        ] {
            assert_eq!(
                meta.labels(component)["app.kubernetes.io/version"],
                crate::VERSION
            );
        }
        assert_eq!(
            meta.labels(Component::Daemon)["app.kubernetes.io/version"],
            overlay.buildkit.version
        );
    }

    #[test]
    fn selector_has_no_version() {
        let overlay = overlay();
        let meta = meta(&overlay);
        let selector = meta.selector_labels(Component::Daemon);
        assert_eq!(selector.len(), 2);
        assert!(!selector.contains_key("app.kubernetes.io/version"));
    }

    #[test]
    fn annotations_stamp_version_and_wave() {
        let overlay = overlay();
        let meta = meta(&overlay);
        let annotations = meta.annotations(Wave::Secrets);
        assert_eq!(annotations[GENERATED_BY], format!("kiln {}", crate::VERSION));
        assert_eq!(annotations[SYNC_WAVE], "-1");
    }

    #[test]
    fn empty_resources_render_nothing() {
        assert!(
            resources(&Resources {
                requests: BTreeMap::new(),
                limits: BTreeMap::new()
            })
            .is_none()
        );
        let r = resources(&Resources::default()).unwrap();
        assert_eq!(r.requests.unwrap()["cpu"], Quantity("500m".into()));
        assert!(r.limits.unwrap().contains_key("memory"));
    }
}
