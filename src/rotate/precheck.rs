//! The preconditions every run checks before its first write. Pure.
//!
//! A policy that does not match the cluster would rewrite the Secrets under names the
//! pods do not mount (issue 10: a by-hand run with the built-in `pem` defaults against a
//! farm rendered with `tls` keys). So before anything is written, the live objects must
//! agree with the policy:
//! - each leaf Secret's data keys, its `kiln.dev/secret-keys` and `kiln.dev/secret-format`
//!   annotations (when present) and its type;
//! - the CA Secret's data keys, annotations and type;
//! - the workload kind (a StatefulSet where the policy says Deployment, or the reverse),
//!   and the keys the pod template mounts from the daemon Secret.
//!
//! Any disagreement in the farm's own namespace stops the run with [`Mismatch`], which
//! names every object and field. A tenant's client Secret that disagrees holds back only
//! that tenant ([`admit`]): each team can edit its own namespace, and one team's mistake
//! must not stop the renewals of the farm and every other team.

use std::fmt;

use crate::overlay::Workload;
use crate::pki::SecretFormat;

use super::Config;
use super::state::{
    ANN_SECRET_FORMAT, ANN_SECRET_KEYS, CA_SECRET_KEYS, CA_SECRET_KEYS_ANNOTATION, RawSecret, Snapshot,
};

/// The cluster does not match the policy; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// One entry per disagreement, each naming the object and the field.
    pub problems: Vec<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the cluster does not match the policy, so nothing was written: {}; fix the policy (--config, --overlay or the kiln-config ConfigMap) or the objects, then run again",
            self.problems.join("; ")
        )
    }
}

impl std::error::Error for Mismatch {}

fn format_name(format: SecretFormat) -> &'static str {
    match format {
        SecretFormat::Pem => "pem",
        SecretFormat::Tls => "tls",
    }
}

fn leaf_keys(format: SecretFormat) -> [&'static str; 3] {
    let (ca, cert, key) = format.key_names();
    [ca, cert, key]
}

/// A comma-separated key list, as the annotation holds it.
fn listed(value: &str) -> Vec<String> {
    let mut keys: Vec<String> = value
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    keys.sort();
    keys
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys
}

/// Cap a value from the cluster before it goes into a message.
fn capped(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn check_format_annotation(secret: &RawSecret, name: &str, config: &Config, out: &mut Vec<String>) {
    if let Some(format) = secret.annotations.get(ANN_SECRET_FORMAT)
        && format != format_name(config.format)
    {
        out.push(format!(
            "Secret {name} was rendered for certs.format {} (annotation {ANN_SECRET_FORMAT}), the policy says {}",
            capped(format),
            format_name(config.format)
        ));
    }
}

fn check_leaf(secret: &RawSecret, name: &str, config: &Config, out: &mut Vec<String>) {
    if !secret.exists {
        return;
    }
    let want = leaf_keys(config.format);
    let format = format_name(config.format);
    let want_text = want.join(", ");
    let foreign: Vec<&str> = secret
        .data
        .keys()
        .map(String::as_str)
        .filter(|k| !want.contains(k))
        .collect();
    if !foreign.is_empty() {
        let have: Vec<&str> = secret.data.keys().map(String::as_str).collect();
        out.push(format!(
            "Secret {name} holds the keys {}, the policy (certs.format {format}) writes {want_text}",
            capped(&have.join(", "))
        ));
    }
    if let Some(keys) = secret.annotations.get(ANN_SECRET_KEYS)
        && listed(keys) != sorted(&want)
    {
        out.push(format!(
            "Secret {name} says {ANN_SECRET_KEYS}: {}, the policy (certs.format {format}) writes {want_text}",
            capped(keys)
        ));
    }
    check_format_annotation(secret, name, config, out);
    if let Some(kind) = &secret.secret_type
        && kind != "Opaque"
        && kind != config.format.secret_type()
    {
        out.push(format!(
            "Secret {name} has type {}, which certs.format {format} cannot write (use Opaque{})",
            capped(kind),
            if config.format == SecretFormat::Tls {
                " or kubernetes.io/tls"
            } else {
                ""
            }
        ));
    }
}

fn check_ca(secret: &RawSecret, name: &str, config: &Config, out: &mut Vec<String>) {
    if !secret.exists {
        return;
    }
    let foreign: Vec<&str> = secret
        .data
        .keys()
        .map(String::as_str)
        .filter(|k| !CA_SECRET_KEYS.contains(k))
        .collect();
    if !foreign.is_empty() {
        out.push(format!(
            "Secret {name} holds the keys {}, which a kiln CA Secret never holds (it holds {CA_SECRET_KEYS_ANNOTATION}, and during a rollover next-ca.crt, next-ca.key or retiring-ca.crt): is certs.secrets.ca the right name?",
            capped(&foreign.join(", "))
        ));
    }
    if let Some(keys) = secret.annotations.get(ANN_SECRET_KEYS) {
        let keys_sorted = listed(keys);
        // Shells rendered before kiln 0.2 carry the leaf key names on the CA Secret too;
        // they still say which certs.format they were rendered for.
        let legacy = keys_sorted == sorted(&leaf_keys(config.format));
        if keys_sorted != listed(CA_SECRET_KEYS_ANNOTATION) && !legacy {
            out.push(format!(
                "Secret {name} says {ANN_SECRET_KEYS}: {}, the policy expects {CA_SECRET_KEYS_ANNOTATION} (certs.format {})",
                capped(keys),
                format_name(config.format)
            ));
        }
    }
    check_format_annotation(secret, name, config, out);
    if let Some(kind) = &secret.secret_type
        && kind != "Opaque"
    {
        out.push(format!(
            "Secret {name} has type {}, a CA Secret must be Opaque",
            capped(kind)
        ));
    }
}

/// [`check`], then each tenant's client Secret: one that does not match the policy is
/// marked [`held`](super::state::RawClient::held) (this run does not write it, and a CA rollover step waits
/// for it) instead of stopping the run.
pub fn admit(snapshot: &mut Snapshot, config: &Config) -> Result<(), Mismatch> {
    check(snapshot, config)?;
    for client in snapshot.clients.iter_mut().skip(1) {
        let mut problems = Vec::new();
        let name = format!("{}/{}", client.namespace, config.client_secret);
        check_leaf(&client.secret, &name, config, &mut problems);
        client.held = (!problems.is_empty()).then(|| problems.join("; "));
    }
    Ok(())
}

/// Check the farm's own objects against the policy: the CA, daemon and client Secrets in
/// its namespace and the workload. See the module docs.
pub fn check(snapshot: &Snapshot, config: &Config) -> Result<(), Mismatch> {
    let mut problems = Vec::new();
    check_ca(&snapshot.ca, &config.ca_secret, config, &mut problems);
    check_leaf(&snapshot.daemon, &config.daemon_secret, config, &mut problems);
    if let Some(farm) = snapshot.farm_client() {
        check_leaf(farm, &config.client_secret, config, &mut problems);
    }
    let wanted = match config.workload {
        Workload::Deployment => "Deployment",
        Workload::Statefulset => "StatefulSet",
    };
    if snapshot.workload.is_none()
        && let Some(other) = snapshot.other_workload
    {
        problems.push(format!(
            "the namespace runs a {other} {name}, not the {wanted} the policy names (buildkit.workload {})",
            config.workload_kind(),
            name = config.workload_name
        ));
    }
    if let Some(items) = snapshot
        .workload
        .as_ref()
        .and_then(|w| w.daemon_secret_items.as_ref())
    {
        let want = leaf_keys(config.format);
        if items.iter().any(|k| !want.contains(&k.as_str())) {
            problems.push(format!(
                "{wanted} {} mounts the keys {} of Secret {}, the policy (certs.format {}) writes {}",
                config.workload_name,
                capped(&items.join(", ")),
                config.daemon_secret,
                format_name(config.format),
                want.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Mismatch { problems })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::overlay::Overlay;
    use crate::rotate::state::{RawClient, RawWorkload};

    fn config(format: SecretFormat, workload: Workload) -> Config {
        let mut overlay = Overlay::default();
        overlay.certs.format = format;
        overlay.buildkit.workload = workload;
        Config::from_overlay(&overlay, None, None).unwrap()
    }

    fn secret(keys: &[&str], annotation: Option<&str>, kind: &str) -> RawSecret {
        RawSecret {
            exists: true,
            resource_version: Some("1".into()),
            secret_type: Some(kind.into()),
            data: keys.iter().map(|k| (k.to_string(), b"x".to_vec())).collect(),
            annotations: annotation
                .map(|a| BTreeMap::from([(ANN_SECRET_KEYS.to_string(), a.to_string())]))
                .unwrap_or_default(),
        }
    }

    /// A StatefulSet farm rendered with `tls` keys, as issue 10 found it.
    fn tls_farm() -> Snapshot {
        let leaf = || {
            secret(
                &["ca.crt", "tls.crt", "tls.key"],
                Some("ca.crt, tls.crt, tls.key"),
                "Opaque",
            )
        };
        Snapshot {
            ca: secret(&["ca.crt", "ca.key"], Some("ca.crt, tls.crt, tls.key"), "Opaque"),
            daemon: leaf(),
            clients: vec![RawClient {
                namespace: "buildkit".into(),
                secret: leaf(),
                held: None,
            }],
            workload: None,
            other_workload: Some("StatefulSet"),
        }
    }

    #[test]
    fn the_built_in_defaults_against_a_tls_statefulset_farm_name_every_mismatch() {
        let err = check(&tls_farm(), &config(SecretFormat::Pem, Workload::Deployment)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "Secret buildkit-daemon-certs holds the keys ca.crt, tls.crt, tls.key, the policy (certs.format pem) writes ca.pem, cert.pem, key.pem"
            ),
            "{text}"
        );
        assert!(
            text.contains("Secret buildkit-client-certs says kiln.dev/secret-keys"),
            "{text}"
        );
        assert!(
            text.contains("Secret buildkit-ca says kiln.dev/secret-keys: ca.crt, tls.crt, tls.key"),
            "{text}"
        );
        assert!(
            text.contains("the namespace runs a StatefulSet buildkitd, not the Deployment the policy names"),
            "{text}"
        );
        assert!(text.starts_with("the cluster does not match the policy, so nothing was written"));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn a_matching_policy_passes_including_old_shells() {
        let mut snapshot = tls_farm();
        snapshot.workload = Some(RawWorkload {
            daemon_secret_items: Some(vec!["ca.crt".into(), "tls.crt".into(), "tls.key".into()]),
            ..RawWorkload::default()
        });
        snapshot.other_workload = None;
        // The CA shell's old annotation (leaf key names) still agrees with the format.
        check(&snapshot, &config(SecretFormat::Tls, Workload::Statefulset)).unwrap();
        snapshot
            .ca
            .annotations
            .insert(ANN_SECRET_KEYS.into(), "ca.crt, ca.key".into());
        snapshot.ca.data.insert("next-ca.crt".into(), b"x".to_vec());
        snapshot.daemon.secret_type = Some("kubernetes.io/tls".into());
        check(&snapshot, &config(SecretFormat::Tls, Workload::Statefulset)).unwrap();
        // Empty shells and missing Secrets pass.
        let blank = Snapshot {
            ca: secret(&[], None, "Opaque"),
            ..Snapshot::default()
        };
        check(&blank, &config(SecretFormat::Pem, Workload::Deployment)).unwrap();
    }

    #[test]
    fn types_mounts_and_foreign_ca_keys_are_mismatches() {
        let mut snapshot = Snapshot {
            ca: secret(&["ca.crt", "tls.key"], None, "kubernetes.io/tls"),
            daemon: secret(&[], None, "kubernetes.io/tls"),
            clients: vec![RawClient {
                namespace: "buildkit".into(),
                secret: secret(&[], None, "Opaque"),
                held: None,
            }],
            workload: Some(RawWorkload {
                daemon_secret_items: Some(vec!["ca.crt".into(), "tls.crt".into(), "tls.key".into()]),
                ..RawWorkload::default()
            }),
            other_workload: None,
        };
        snapshot.clients[0]
            .secret
            .annotations
            .insert(ANN_SECRET_FORMAT.into(), "tls".into());
        let err = check(&snapshot, &config(SecretFormat::Pem, Workload::Deployment)).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(
            text.contains("Secret buildkit-ca holds the keys tls.key"),
            "{text}"
        );
        assert!(
            text.contains("Secret buildkit-ca has type kubernetes.io/tls, a CA Secret must be Opaque"),
            "{text}"
        );
        assert!(
            text.contains(
                "Secret buildkit-daemon-certs has type kubernetes.io/tls, which certs.format pem cannot write"
            ),
            "{text}"
        );
        assert!(
            text.contains("Secret buildkit-client-certs was rendered for certs.format tls"),
            "{text}"
        );
        assert!(
            text.contains("Deployment buildkitd mounts the keys ca.crt, tls.crt, tls.key"),
            "{text}"
        );
    }
}
