//! The `kiln-config` ConfigMap: the resolved overlay (tenants included), which the rotate
//! CronJob and the bootstrap Job read their settings from, and which a by-hand `kiln rotate`
//! without `--config` reads through the API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::meta::{Component, Meta, Wave};
use crate::overlay::Overlay;
use crate::yaml::{self, YamlError};

/// The ConfigMap the CronJob and the bootstrap Job read the overlay from.
pub const CONFIG_MAP: &str = "kiln-config";
/// The key of the resolved overlay in [`CONFIG_MAP`], mounted at `/etc/kiln/overlay.yaml`.
pub const CONFIG_KEY: &str = "overlay.yaml";

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

    #[test]
    fn config_map_round_trips_the_overlay() {
        let mut overlay = Overlay {
            namespace: "ci".into(),
            ..Default::default()
        };
        overlay.buildkit.replicas = 3;
        // rotate reads which namespaces hold client Secrets from here.
        overlay.tenants = vec![
            crate::overlay::Tenant {
                namespace: "team-a".into(),
                task: true,
            },
            crate::overlay::Tenant {
                namespace: "team-b".into(),
                task: false,
            },
        ];
        let meta = Meta {
            overlay: &overlay,
            instance: "dev",
        };
        let cm = config_map(&meta, &overlay).unwrap();
        let text = &cm.data.unwrap()[CONFIG_KEY];
        assert!(
            text.contains(
                "tenants:\n- namespace: team-a\n  task: true\n- namespace: team-b\n  task: false\n"
            ),
            "{text}"
        );
        let back: Overlay = crate::yaml::from_str(text, "kiln-config").unwrap();
        assert_eq!(back, overlay);
        assert_eq!(
            back.tenant_namespaces().collect::<Vec<_>>(),
            ["ci", "team-a", "team-b"]
        );
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
