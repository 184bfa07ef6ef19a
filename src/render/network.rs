//! NetworkPolicies: the daemon admits only its mTLS port; kiln's own pods admit nothing.
//!
//! Egress stays open everywhere: builds pull from registries, and the API server's
//! address differs per cluster.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{Component, Meta, Wave};

/// The name of the policy over kiln's own pods.
pub const KILN_POLICY: &str = "kiln";

/// A NetworkPolicy that admits traffic to the daemon only on its mTLS port (from any
/// namespace: TaskRuns run anywhere). Egress stays open: builds pull from registries.
pub fn network_policy(meta: &Meta) -> NetworkPolicy {
    let buildkit = &meta.overlay.buildkit;
    NetworkPolicy {
        metadata: meta.object(&buildkit.service_name, Component::Daemon, Wave::App),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(meta.selector(Component::Daemon)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(buildkit.port))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
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
    fn network_policy_admits_only_the_port() {
        let mut overlay = Overlay::default();
        overlay.buildkit.port = 4321;
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let spec = network_policy(&meta).spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].from.is_none());
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(4321))
        );
        assert_eq!(
            spec.pod_selector.unwrap().match_labels,
            Some(meta.selector_labels(Component::Daemon))
        );
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
