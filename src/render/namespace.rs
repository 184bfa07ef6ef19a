//! The Namespace that holds the build farm.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::meta::{self, Component, Meta, POD_SECURITY_NOTE, Wave};

/// The Namespace, labelled for the `privileged` Pod Security level the daemon needs.
pub fn namespace(meta: &Meta) -> Namespace {
    let mut labels = meta.labels(Component::Namespace);
    labels.insert("pod-security.kubernetes.io/enforce".into(), "privileged".into());
    let mut metadata = ObjectMeta {
        name: Some(meta.namespace().to_string()),
        labels: Some(labels),
        annotations: Some(meta.annotations(Wave::Setup)),
        ..Default::default()
    };
    meta::annotate(
        &mut metadata,
        &[(
            POD_SECURITY_NOTE,
            "privileged: buildkitd needs Unconfined seccomp and AppArmor (rootless) or privileged: true \
             (privileged, userns), which baseline and restricted forbid; kiln's own pods meet restricted",
        )],
    );
    Namespace {
        metadata,
        ..Default::default()
    }
}
