//! The three mTLS Secrets as shells (no key material in git).

use k8s_openapi::api::core::v1::Secret;

use super::meta::{self, Component, Meta, Wave};

/// The Secret `type` of the shells.
///
/// Always `Opaque`, whatever `certs.format` says: the API server rejects a `kubernetes.io/tls`
/// Secret without `tls.crt` and `tls.key` keys, and declaring those keys (even empty) in git
/// would make Argo CD's self-heal overwrite the data kiln writes. The key names still follow
/// the format, and buildkitd and buildctl do not look at the type.
pub const SHELL_TYPE: &str = "Opaque";

/// The Secret shells: CA, daemon, client, in that order.
pub fn secrets(meta: &Meta) -> Vec<Secret> {
    let certs = &meta.overlay.certs;
    let format = match certs.format {
        crate::pki::SecretFormat::Pem => "pem",
        crate::pki::SecretFormat::Tls => "tls",
    };
    let (ca, cert, key) = certs.format.key_names();
    let keys = format!("{ca}, {cert}, {key}");
    [&certs.secrets.ca, &certs.secrets.daemon, &certs.secrets.client]
        .into_iter()
        .map(|name| {
            let mut metadata = meta.object(name, Component::Certs, Wave::Secrets);
            meta::annotate(
                &mut metadata,
                &[
                    (
                        "kiln.dev/owned-by",
                        "kiln: git declares only this shell; kiln rotate (the kiln-bootstrap Job and the \
                         kiln-rotate CronJob) writes the data in-cluster with its own field manager",
                    ),
                    ("kiln.dev/secret-format", format),
                    ("kiln.dev/secret-keys", &keys),
                    // Flux: create once, never overwrite or prune what kiln wrote.
                    ("kustomize.toolkit.fluxcd.io/ssa", "IfNotPresent"),
                    ("kustomize.toolkit.fluxcd.io/prune", "disabled"),
                    // Argo CD: never prune; data that git does not declare is not a diff.
                    ("argocd.argoproj.io/sync-options", "Prune=false"),
                    ("argocd.argoproj.io/compare-options", "IgnoreExtraneous"),
                ],
            );
            Secret {
                metadata,
                type_: Some(SHELL_TYPE.into()),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Overlay;
    use crate::pki::SecretFormat;

    #[test]
    fn shells_have_no_data_and_keep_gitops_tools_off_it() {
        let mut overlay = Overlay::default();
        overlay.certs.format = SecretFormat::Tls;
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let secrets = secrets(&meta);
        let names: Vec<_> = secrets.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            ["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"]
        );
        for secret in &secrets {
            assert!(secret.data.is_none() && secret.string_data.is_none());
            assert_eq!(secret.type_.as_deref(), Some("Opaque"));
            let a = secret.metadata.annotations.as_ref().unwrap();
            assert_eq!(a["kustomize.toolkit.fluxcd.io/ssa"], "IfNotPresent");
            assert_eq!(a["argocd.argoproj.io/sync-options"], "Prune=false");
            assert_eq!(a["argocd.argoproj.io/sync-wave"], "-1");
            assert_eq!(a["kiln.dev/secret-keys"], "ca.crt, tls.crt, tls.key");
        }
    }
}
