//! The mTLS Secrets as shells (no key material in git): the farm's three, and one client
//! Secret per tenant namespace.

use k8s_openapi::api::core::v1::Secret;

use super::meta::{self, Component, Meta, Wave};

/// The Secret `type` of the shells.
///
/// Always `Opaque`, whatever `certs.format` says: the API server rejects a `kubernetes.io/tls`
/// Secret without `tls.crt` and `tls.key` keys, and declaring those keys (even empty) in git
/// would make Argo CD's self-heal overwrite the data kiln writes. The key names still follow
/// the format, and buildkitd and buildctl do not look at the type.
pub const SHELL_TYPE: &str = "Opaque";

/// `kiln.dev/secret-keys` of the CA Secret: the keys it always holds, whatever
/// `certs.format` says (during a rollover it also holds `next-ca.*` or `retiring-ca.crt`).
/// `kiln rotate` writes the same value (tests/render_objects.rs keeps them equal).
pub const CA_SECRET_KEYS: &str = "ca.crt, ca.key";

/// The GitOps annotations every shell carries, and what each one protects (docs/objects.md
/// says the same to users).
pub const GITOPS_ANNOTATIONS: [(&str, &str); 4] = [
    // Flux: apply only when the Secret does not exist, so what kiln wrote is never
    // overwritten. IfNotPresent never patches the live object again, which is why the next
    // annotation must be in the manifest from the first apply.
    ("kustomize.toolkit.fluxcd.io/ssa", "IfNotPresent"),
    // Flux: never garbage-collect it, neither when it leaves git nor when the Kustomization
    // is deleted (an IfNotPresent object is still in the Kustomization's inventory).
    ("kustomize.toolkit.fluxcd.io/prune", "disabled"),
    // Argo CD: Prune=false keeps it when it leaves git; Delete=false keeps it when the
    // Application is deleted (with the resources finalizer, which kiln's Applications carry).
    ("argocd.argoproj.io/sync-options", "Prune=false,Delete=false"),
    // Argo CD: once it has left git and Prune=false kept it, it does not hold the
    // Application OutOfSync. (It does not protect the data: ignoreDifferences does.)
    ("argocd.argoproj.io/compare-options", "IgnoreExtraneous"),
];

/// One shell: `name` in `namespace`, whose data keys are `keys`.
fn shell(meta: &Meta, namespace: &str, name: &str, keys: &str) -> Secret {
    let format = match meta.overlay.certs.format {
        crate::pki::SecretFormat::Pem => "pem",
        crate::pki::SecretFormat::Tls => "tls",
    };
    let mut metadata = meta.object_in(namespace, name, Component::Certs, Wave::Secrets);
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
        ],
    );
    meta::annotate(&mut metadata, &GITOPS_ANNOTATIONS);
    Secret {
        metadata,
        type_: Some(SHELL_TYPE.into()),
        ..Default::default()
    }
}

/// The leaf Secrets' key names, as `kiln.dev/secret-keys` lists them.
fn leaf_keys(meta: &Meta) -> String {
    let (ca, cert, key) = meta.overlay.certs.format.key_names();
    format!("{ca}, {cert}, {key}")
}

/// The farm's shells, in its namespace: CA, daemon, client, in that order.
pub fn secrets(meta: &Meta) -> Vec<Secret> {
    let names = &meta.overlay.certs.secrets;
    let leaf = leaf_keys(meta);
    let ns = meta.namespace();
    vec![
        shell(meta, ns, &names.ca, CA_SECRET_KEYS),
        shell(meta, ns, &names.daemon, &leaf),
        shell(meta, ns, &names.client, &leaf),
    ]
}

/// A tenant's client Secret shell: the farm's client Secret name, in the tenant's namespace.
/// `kiln rotate` fills it with a client certificate whose CN is `kiln-client:<namespace>`.
pub fn tenant_secret(meta: &Meta, namespace: &str) -> Secret {
    shell(
        meta,
        namespace,
        &meta.overlay.certs.secrets.client,
        &leaf_keys(meta),
    )
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
        let mut secrets = secrets(&meta);
        let names: Vec<_> = secrets.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            ["buildkit-ca", "buildkit-daemon-certs", "buildkit-client-certs"]
        );
        secrets.push(tenant_secret(&meta, "team-a"));
        for secret in &secrets {
            assert!(secret.data.is_none() && secret.string_data.is_none());
            assert_eq!(secret.type_.as_deref(), Some("Opaque"));
            let a = secret.metadata.annotations.as_ref().unwrap();
            assert_eq!(a["kustomize.toolkit.fluxcd.io/ssa"], "IfNotPresent");
            assert_eq!(a["kustomize.toolkit.fluxcd.io/prune"], "disabled");
            assert_eq!(a["argocd.argoproj.io/sync-options"], "Prune=false,Delete=false");
            assert_eq!(a["argocd.argoproj.io/sync-wave"], "-1");
        }
        let keys = |s: &Secret| s.metadata.annotations.as_ref().unwrap()["kiln.dev/secret-keys"].clone();
        assert_eq!(keys(&secrets[0]), "ca.crt, ca.key");
        for leaf in &secrets[1..] {
            assert_eq!(keys(leaf), "ca.crt, tls.crt, tls.key");
        }
    }

    #[test]
    fn a_tenant_secret_is_the_client_secret_in_the_tenant_namespace() {
        let mut overlay = Overlay::default();
        overlay.certs.secrets.client = "ci-client".into();
        let meta = Meta {
            overlay: &overlay,
            instance: "prod",
        };
        let farm = secrets(&meta).pop().unwrap();
        let tenant = tenant_secret(&meta, "team-a");
        assert_eq!(tenant.metadata.name.as_deref(), Some("ci-client"));
        assert_eq!(tenant.metadata.namespace.as_deref(), Some("team-a"));
        // Everything else is the farm's client shell.
        let mut moved = tenant.clone();
        moved.metadata.namespace = farm.metadata.namespace.clone();
        assert_eq!(moved, farm);
    }
}
