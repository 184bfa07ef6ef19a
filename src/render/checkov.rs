//! checkov skip annotations: where a rendered object fails a checkov check on purpose, the
//! object itself says which check and why, as `checkov.io/skip<NN>: <check>=<reason>`.
//!
//! checkov reads these from the object's own `metadata.annotations` only (not from a pod
//! template), and splits the value at `=` into exactly two parts, so a reason never contains
//! one. Tekton copies a Task's annotations to its TaskRuns' pods, so a Task's skips reach the
//! pods a cluster scanner sees.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::object::Object;

/// The annotation key prefix checkov reads (kiln writes `checkov.io/skip01`, `checkov.io/skip02`, …).
pub const PREFIX: &str = "checkov.io/skip";

/// One accepted checkov finding: the check id and why, in the user's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The check id, such as `CKV_K8S_43`.
    pub check: &'static str,
    /// Why the object fails it on purpose, and how to change that where the overlay can.
    pub reason: String,
}

impl Skip {
    /// A skip of `check` for `reason`.
    pub fn new(check: &'static str, reason: impl Into<String>) -> Self {
        Self {
            check,
            reason: reason.into(),
        }
    }
}

/// Add `skips` to `annotations`, numbered after the skips already there.
pub fn add(annotations: &mut BTreeMap<String, String>, skips: &[Skip]) {
    let first = annotations.keys().filter(|k| k.starts_with(PREFIX)).count() + 1;
    for (next, skip) in (first..).zip(skips) {
        // checkov crashes on a second `=`. kiln's reasons have none (every test render
        // checks), and a release build replaces one rather than break the scan.
        debug_assert!(!skip.reason.contains('='), "{}", skip.reason);
        let reason = skip.reason.replace('=', ":");
        // Two digits keep the keys in order in the sorted YAML (skip02 before skip10).
        annotations.insert(format!("{PREFIX}{next:02}"), format!("{}={reason}", skip.check));
    }
}

/// Add `skips` to an object's metadata.
pub fn annotate(meta: &mut ObjectMeta, skips: &[Skip]) {
    if !skips.is_empty() {
        add(meta.annotations.get_or_insert_with(BTreeMap::new), skips);
    }
}

/// CKV_K8S_43 (no digest) and CKV_K8S_15 (pull policy not Always) for an image pinned by its
/// tag only, naming the overlay field that pins it (`field`); nothing for `reference@digest`,
/// which passes both.
pub fn unpinned(what: &str, reference: &str, field: &str) -> Vec<Skip> {
    if reference.contains('@') {
        return Vec::new();
    }
    vec![
        Skip::new(
            "CKV_K8S_43",
            format!("{what} is pinned by its release tag only; set {field} to pin it by digest"),
        ),
        Skip::new(
            "CKV_K8S_15",
            format!(
                "imagePullPolicy stays IfNotPresent (the default for a release tag), so a restart on a node \
                 that has the image does not need the registry; set {field} to pin the exact image"
            ),
        ),
    ]
}

/// CKV_K8S_11 (no CPU limit) for a container whose resources set none.
pub fn no_cpu_limit(resources: &crate::overlay::Resources, reason: &str) -> Vec<Skip> {
    if resources.limits.contains_key("cpu") {
        Vec::new()
    } else {
        vec![Skip::new("CKV_K8S_11", reason)]
    }
}

/// The checks an object's annotations skip, in key order (for tests).
#[cfg(test)]
pub fn skipped(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    annotations
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(PREFIX))
        .map(|(_, value)| value.split('=').next().unwrap_or_default().to_string())
        .collect()
}

/// The kinds CKV_K8S_21 ("the default namespace should not be used") judges, and the Task,
/// whose annotations reach its pods.
const DEFAULT_NAMESPACE_KINDS: &[&str] = &[
    "ConfigMap",
    "CronJob",
    "Deployment",
    "Job",
    "Role",
    "RoleBinding",
    "Secret",
    "Service",
    "ServiceAccount",
    "StatefulSet",
    "Task",
];

/// The reason an object in the namespace `default` gives for CKV_K8S_21.
const DEFAULT_NAMESPACE: &str = "the overlay sets namespace: default on purpose (the top-level CronJob.yaml \
     does, for a plain kubectl apply); set another namespace to avoid it";

/// Mark the objects an overlay renders into the namespace `default`: a choice the overlay
/// made in so many words, which checkov reports as CKV_K8S_21.
pub fn default_namespace(objects: &mut [Object]) {
    for object in objects {
        if object.namespace.as_deref() != Some("default")
            || !DEFAULT_NAMESPACE_KINDS.contains(&object.kind.as_str())
        {
            continue;
        }
        let Some(metadata) = object.value.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
            continue;
        };
        let mut annotations: BTreeMap<String, String> = metadata
            .get("annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        add(&mut annotations, &[Skip::new("CKV_K8S_21", DEFAULT_NAMESPACE)]);
        metadata.insert(
            "annotations".into(),
            serde_json::to_value(annotations).unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_numbered_after_the_ones_there() {
        let mut annotations = BTreeMap::from([("other".to_string(), "x".to_string())]);
        add(&mut annotations, &[Skip::new("CKV_K8S_38", "a")]);
        add(
            &mut annotations,
            &[Skip::new("CKV_K8S_43", "b"), Skip::new("CKV_K8S_15", "c")],
        );
        assert_eq!(annotations["checkov.io/skip01"], "CKV_K8S_38=a");
        assert_eq!(annotations["checkov.io/skip02"], "CKV_K8S_43=b");
        assert_eq!(annotations["checkov.io/skip03"], "CKV_K8S_15=c");
        assert_eq!(annotations["other"], "x");
    }

    #[test]
    #[should_panic(expected = "c=d")]
    fn a_reason_with_an_equals_sign_is_a_bug() {
        // checkov splits the value at every `=` and crashes on a second one.
        add(&mut BTreeMap::new(), &[Skip::new("CKV_K8S_15", "c=d")]);
    }

    #[test]
    fn unpinned_images_and_missing_cpu_limits_are_skipped_only_when_so() {
        let tagged = unpinned("the kiln image", "ghcr.io/kiln-dev/kiln:1.0", "kiln.digest");
        let checks: Vec<_> = tagged.iter().map(|s| s.check).collect();
        assert_eq!(checks, ["CKV_K8S_43", "CKV_K8S_15"]);
        assert!(tagged.iter().all(|s| s.reason.contains("set kiln.digest")));
        assert!(unpinned("x", "ghcr.io/kiln-dev/kiln:1.0@sha256:00", "kiln.digest").is_empty());

        let mut resources = crate::overlay::Resources::default();
        assert_eq!(no_cpu_limit(&resources, "why")[0].check, "CKV_K8S_11");
        resources.limits.insert("cpu".into(), "2".into());
        assert!(no_cpu_limit(&resources, "why").is_empty());
    }

    #[test]
    fn only_objects_in_the_namespace_default_skip_ckv_k8s_21() {
        let mut overlay = crate::overlay::Overlay {
            namespace: "default".into(),
            create_namespace: false,
            ..Default::default()
        };
        let objects = crate::render::render(&overlay, &crate::render::Context::new("d")).unwrap();
        let skipped = |o: &Object| {
            o.value["metadata"]["annotations"]
                .as_object()
                .unwrap()
                .values()
                .any(|v| v.as_str().unwrap().starts_with("CKV_K8S_21="))
        };
        for object in &objects {
            assert_eq!(
                skipped(object),
                DEFAULT_NAMESPACE_KINDS.contains(&object.kind.as_str()),
                "{} {}",
                object.kind,
                object.name
            );
        }
        // The CronJob keeps its own skips and numbers this one after them.
        let cron = objects.iter().find(|o| o.kind == "CronJob").unwrap();
        let annotations = cron.value["metadata"]["annotations"].as_object().unwrap();
        assert!(
            annotations["checkov.io/skip01"]
                .as_str()
                .unwrap()
                .starts_with("CKV_K8S_38=")
        );
        assert!(
            annotations["checkov.io/skip04"]
                .as_str()
                .unwrap()
                .starts_with("CKV_K8S_21=")
        );

        overlay.namespace = "buildkit".into();
        let objects = crate::render::render(&overlay, &crate::render::Context::new("d")).unwrap();
        assert!(!objects.iter().any(skipped));
    }
}
