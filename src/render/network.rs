//! NetworkPolicies: the daemon admits its mTLS port only from the tenant namespaces (the
//! farm's own included) and kiln's rotate pods; kiln's own pods admit nothing.
//!
//! Egress stays open everywhere: builds pull from registries, and the API server's
//! address differs per cluster.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Component, Meta, Wave};

/// The name of the policy over kiln's own pods.
pub const KILN_POLICY: &str = "kiln";

/// The label the control plane sets on every Namespace to its name (immutable).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A NetworkPolicy that admits traffic to the daemon only on its mTLS port, from:
/// - any pod of a tenant namespace and of the farm's own (selected by
///   `kubernetes.io/metadata.name`): TaskRuns run there;
/// - kiln's rotate pods (the CronJob and the bootstrap Job), which check over TLS which
///   certificate each replica serves. They run in the farm's namespace, which the first
///   rule already admits; the rule of their own keeps that path explicit.
///
/// mTLS stays the real boundary: a tenant controls its pods' labels, so the policy selects
/// namespaces, not pods. Egress stays open: builds pull from registries.
pub fn network_policy(meta: &Meta) -> NetworkPolicy {
    let buildkit = &meta.overlay.buildkit;
    let ports = Some(vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(buildkit.port))),
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    let tenants = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.into(),
                operator: "In".into(),
                values: Some(meta.overlay.tenant_namespaces().map(str::to_string).collect()),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![tenants]),
        ports: ports.clone(),
    }];
    if meta.overlay.rotation.enabled {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(rotate_pod_labels(meta)),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports,
        });
    }
    NetworkPolicy {
        metadata: meta.object(&buildkit.service_name, Component::Daemon, Wave::App),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(meta.selector(Component::Daemon)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// The labels that pick out the rotate pods (CronJob and bootstrap Job) among kiln's pods:
/// the selector labels plus `app.kubernetes.io/component: rotation` (TaskRun pods of the
/// Task carry the selector labels too, with component `build-task`).
pub fn rotate_pod_labels(meta: &Meta) -> std::collections::BTreeMap<String, String> {
    let mut labels = meta.selector_labels(Component::Rotation);
    labels.insert(
        "app.kubernetes.io/component".into(),
        Component::Rotation.as_str().into(),
    );
    labels
}

/// A NetworkPolicy that denies all ingress to kiln's own pods (the rotation CronJob and
/// bootstrap Job, and TaskRun pods of the Task in this namespace, which carry the Task's
/// labels): they serve nothing.
pub fn kiln_network_policy(meta: &Meta) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta.object(KILN_POLICY, Component::Rotation, Wave::Setup),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(meta.selector(Component::Rotation)),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;

    #[test]
    fn network_policy_admits_the_port_from_the_tenants_and_the_rotate_pods_only() {
        let mut overlay = Overlay {
            namespace: "buildkit-prod".into(),
            tenants: ["team-a", "team-b"]
                .map(|namespace| crate::overlay::Tenant {
                    namespace: namespace.into(),
                    task: true,
                })
                .to_vec(),
            ..Default::default()
        };
        overlay.buildkit.port = 4321;
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let spec = network_policy(&meta).spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        assert!(spec.egress.is_none());
        assert_eq!(
            spec.pod_selector.unwrap().match_labels,
            Some(meta.selector_labels(Component::Daemon))
        );
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        for rule in &rules {
            let ports = rule.ports.as_ref().unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].port, Some(IntOrString::Int(4321)));
            assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
            assert_eq!(rule.from.as_ref().unwrap().len(), 1);
        }
        let tenants = &rules[0].from.as_ref().unwrap()[0];
        assert!(tenants.pod_selector.is_none() && tenants.ip_block.is_none());
        let selector = tenants.namespace_selector.as_ref().unwrap();
        assert!(selector.match_labels.is_none());
        let expressions = selector.match_expressions.as_ref().unwrap();
        assert_eq!(expressions.len(), 1);
        assert_eq!(expressions[0].key, "kubernetes.io/metadata.name");
        assert_eq!(expressions[0].operator, "In");
        assert_eq!(
            expressions[0].values.as_deref().unwrap(),
            ["buildkit-prod", "team-a", "team-b"]
        );
        // The rotate pods, in the policy's own namespace (no namespaceSelector).
        let rotate = &rules[1].from.as_ref().unwrap()[0];
        assert!(rotate.namespace_selector.is_none() && rotate.ip_block.is_none());
        let labels = rotate
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["app.kubernetes.io/name"], "kiln");
        assert_eq!(labels["app.kubernetes.io/instance"], "prod");
        assert_eq!(labels["app.kubernetes.io/component"], "rotation");
        // The rotate pods carry every one of them.
        let cron = super::super::rotation::cron_job(&meta);
        let pod_labels = cron
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        for (key, value) in &labels {
            assert_eq!(&pod_labels[key], value, "{key}");
        }

        // Without rotation there is no rotate pod to admit.
        overlay.rotation.enabled = false;
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        assert_eq!(network_policy(&meta).spec.unwrap().ingress.unwrap().len(), 1);
    }

    #[test]
    fn kiln_policy_denies_all_ingress_to_kiln_pods() {
        let overlay = Overlay::default();
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let spec = kiln_network_policy(&meta).spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        assert!(spec.ingress.is_none());
        let selector = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selector["app.kubernetes.io/name"], "kiln");
        assert_eq!(selector["app.kubernetes.io/instance"], "dev");
    }
}
