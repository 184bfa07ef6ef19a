//! Which namespace a run works in, following kubectl: `-n`, then the kubeconfig context's
//! namespace, then (in a pod) the ServiceAccount's namespace, then the overlay's.
//!
//! [`resolve`] is pure; [`Sources::gather`] reads the kubeconfig and the pod's files.
//! kube's own `Config::infer` is not used for this: it says "default" when the context
//! has no namespace and never reads the ServiceAccount file when a kubeconfig exists.
//!
//! One rule on top of kubectl's: a policy given explicitly (`--config` or `--overlay`)
//! names its namespace, and when a namespace taken from the kubeconfig or the pod
//! disagrees with it, the run refuses instead of applying one environment's policy to
//! another. `-n` settles it.

use std::path::Path;

/// Where the ServiceAccount's namespace is mounted in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where the chosen namespace came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `-n` / `--namespace`.
    Flag,
    /// The current kubeconfig context (its name).
    Context(String),
    /// The pod's ServiceAccount (or `POD_NAMESPACE`).
    InCluster,
    /// The overlay's `namespace`.
    Overlay,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("--namespace"),
            Origin::Context(name) => write!(f, "the kubeconfig context {name}"),
            Origin::InCluster => f.write_str("the pod's ServiceAccount"),
            Origin::Overlay => f.write_str("the overlay"),
        }
    }
}

/// Every place a namespace can come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// `-n`.
    pub flag: Option<String>,
    /// The current context's name and namespace.
    pub context: Option<(String, String)>,
    /// The ServiceAccount namespace, when running in a pod.
    pub in_cluster: Option<String>,
    /// The namespace of an explicitly given policy, and how it was given (`--config
    /// FILE`), when there is one.
    pub overlay: Option<(String, String)>,
}

/// Why no namespace could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    /// Nothing names one.
    #[error(
        "no namespace to work in: pass -n NAMESPACE, set one in the kubeconfig context (kubectl config set-context --current --namespace NAMESPACE), or pass --config or --overlay"
    )]
    None,
    /// The policy is for another namespace than the one kubectl would use.
    #[error(
        "{given} is for namespace {overlay}, but {origin} points at namespace {implicit}: pass -n {overlay} (or -n {implicit} to apply this policy there)"
    )]
    Disagree {
        /// How the policy was given.
        given: String,
        /// Its namespace.
        overlay: String,
        /// Where the other one came from.
        origin: Origin,
        /// The other one.
        implicit: String,
    },
}

/// Choose the namespace (see the module docs).
pub fn resolve(sources: &Sources) -> Result<(String, Origin), NamespaceError> {
    if let Some(ns) = &sources.flag {
        return Ok((ns.clone(), Origin::Flag));
    }
    let implicit = match (&sources.context, &sources.in_cluster) {
        (Some((name, ns)), _) => Some((ns.clone(), Origin::Context(name.clone()))),
        (None, Some(ns)) => Some((ns.clone(), Origin::InCluster)),
        (None, None) => None,
    };
    match (implicit, &sources.overlay) {
        (Some((ns, origin)), Some((overlay, given))) if ns != *overlay => Err(NamespaceError::Disagree {
            given: given.clone(),
            overlay: overlay.clone(),
            origin,
            implicit: ns,
        }),
        (Some(found), _) => Ok(found),
        (None, Some((overlay, _))) => Ok((overlay.clone(), Origin::Overlay)),
        (None, None) => Err(NamespaceError::None),
    }
}

impl Sources {
    /// Read the kubeconfig's current context and, in a pod, the ServiceAccount namespace.
    /// A kubeconfig that is missing or unreadable names no namespace (connecting reports
    /// the real problem).
    pub fn gather(flag: Option<String>, overlay: Option<(String, String)>) -> Self {
        let context = kube::config::Kubeconfig::read().ok().and_then(|config| {
            let name = config.current_context.clone()?;
            let namespace = config
                .contexts
                .iter()
                .find(|c| c.name == name)?
                .context
                .as_ref()?
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())?;
            Some((name, namespace))
        });
        // As kubectl: only where an in-cluster config is possible.
        let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some()
            && Path::new(SERVICE_ACCOUNT_TOKEN).exists();
        let in_cluster = in_pod
            .then(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
                    .map(|ns| ns.trim().to_string())
                    .filter(|ns| !ns.is_empty())
            })
            .flatten();
        Self {
            flag,
            context,
            in_cluster,
            overlay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        Sources {
            flag: Some("flag".into()),
            context: Some(("dev".into(), "ctx".into())),
            in_cluster: Some("pod".into()),
            overlay: Some(("ctx".into(), "--config prod.yaml".into())),
        }
    }

    #[test]
    fn kubectl_precedence() {
        let mut s = sources();
        assert_eq!(resolve(&s).unwrap(), ("flag".into(), Origin::Flag));
        s.flag = None;
        assert_eq!(
            resolve(&s).unwrap(),
            ("ctx".into(), Origin::Context("dev".into()))
        );
        s.context = None;
        s.overlay = None;
        assert_eq!(resolve(&s).unwrap(), ("pod".into(), Origin::InCluster));
        s.in_cluster = None;
        assert_eq!(resolve(&s), Err(NamespaceError::None));
        s.overlay = Some(("buildkit".into(), "--overlay dev".into()));
        assert_eq!(resolve(&s).unwrap(), ("buildkit".into(), Origin::Overlay));
    }

    #[test]
    fn an_explicit_policy_for_another_namespace_is_refused_unless_n_says_so() {
        let mut s = sources();
        s.flag = None;
        s.overlay = Some(("buildkit-prod".into(), "--config prod.yaml".into()));
        let err = resolve(&s).unwrap_err().to_string();
        assert_eq!(
            err,
            "--config prod.yaml is for namespace buildkit-prod, but the kubeconfig context dev points at namespace ctx: pass -n buildkit-prod (or -n ctx to apply this policy there)"
        );
        s.flag = Some("ctx".into());
        assert_eq!(resolve(&s).unwrap().0, "ctx");
    }
}
