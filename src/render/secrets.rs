//! The three mTLS Secrets as shells (no key material in git) and the `kiln-config` ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::meta::{self, Component, Meta, Wave};
use crate::overlay::Overlay;
use crate::yaml::{self, YamlError};

/// The ConfigMap the CronJob and the bootstrap Job read the overlay from.
pub const CONFIG_MAP: &str = "kiln-config";
/// The key of the resolved overlay in [`CONFIG_MAP`], mounted at `/etc/kiln/overlay.yaml`.
pub const CONFIG_KEY: &str = "overlay.yaml";
/// `kiln.dev/secret-keys` of the CA Secret (the same value `kiln rotate` writes).
pub const CA_SECRET_KEYS: &str = "ca.crt, ca.key";

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
    let leaf_keys = format!("{ca}, {cert}, {key}");
    [&certs.secrets.ca, &certs.secrets.daemon, &certs.secrets.client]
        .into_iter()
        .map(|name| {
            // The keys the Secret holds, as `kiln rotate` writes them (it checks them before
            // its first write): the CA Secret holds the CA, the leaves the format's names.
            let keys = if *name == certs.secrets.ca {
                CA_SECRET_KEYS
            } else {
                leaf_keys.as_str()
            };
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
                    ("kiln.dev/secret-keys", keys),
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

/// The ConfigMap holding the resolved overlay as YAML.
///
/// `extends` is dropped: the settings are already merged, and the parent file does not
/// exist next to `/etc/kiln/overlay.yaml` for `kiln rotate --config` to load.
pub fn config_map(meta: &Meta, overlay: &Overlay) -> Result<ConfigMap, YamlError> {
    let resolved = Overlay {
        extends: None,
        ..overlay.clone()
    };
    Ok(ConfigMap {
        metadata: meta.object(CONFIG_MAP, Component::Rotation, Wave::Setup),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            yaml::to_string(&resolved)?,
        )])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        for (i, secret) in secrets.iter().enumerate() {
            assert!(secret.data.is_none() && secret.string_data.is_none());
            assert_eq!(secret.type_.as_deref(), Some("Opaque"));
            let a = secret.metadata.annotations.as_ref().unwrap();
            assert_eq!(a["kustomize.toolkit.fluxcd.io/ssa"], "IfNotPresent");
            assert_eq!(a["argocd.argoproj.io/sync-options"], "Prune=false");
            assert_eq!(a["argocd.argoproj.io/sync-wave"], "-1");
            let keys = if i == 0 {
                "ca.crt, ca.key"
            } else {
                "ca.crt, tls.crt, tls.key"
            };
            assert_eq!(a["kiln.dev/secret-keys"], keys);
        }
    }

    #[test]
    fn config_map_round_trips_the_overlay() {
        let mut overlay = Overlay {
            namespace: "ci".into(),
            ..Default::default()
        };
        overlay.buildkit.replicas = 3;
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let cm = config_map(&meta, &overlay).unwrap();
        let text = &cm.data.unwrap()[CONFIG_KEY];
        let back: Overlay = crate::yaml::from_str(text, "kiln-config").unwrap();
        assert_eq!(back, overlay);
    }

    #[test]
    fn config_map_drops_extends() {
        let overlay = Overlay {
            extends: Some("base".into()),
            ..Default::default()
        };
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let text = config_map(&meta, &overlay).unwrap().data.unwrap()[CONFIG_KEY].clone();
        assert!(!text.contains("extends"), "{text}");
        let back: Overlay = crate::yaml::from_str(&text, "kiln-config").unwrap();
        assert_eq!(
            back,
            Overlay {
                extends: None,
                ..overlay
            }
        );
    }
}
