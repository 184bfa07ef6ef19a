//! `kiln certs generate`'s core: a fresh CA, a daemon and a client certificate, laid out as
//! the files and Secret manifests BuildKit's create-certs.sh writes (plus the CA Secret, kept
//! for rotation). Pure apart from key and serial generation: nothing touches the disk here.
//!
//! The directory it describes:
//! - `.gitignore` holding `*`, so that `git add -A` skips the keys;
//! - `daemon/` and `client/`: CA bundle, certificate and key, under the format's names;
//! - `buildkit-daemon-certs.yaml`, `buildkit-client-certs.yaml`, `buildkit-ca.yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use time::OffsetDateTime;

use super::{
    Algorithm, CaRequest, CertSummary, Issued, LeafKind, LeafRequest, NAME_SETS, PkiError, SecretFormat,
    Serial, Validity,
};
use crate::duration::Duration;
use crate::yaml::{self, YamlError};

/// Written first into the output, so that `git add -A` never picks up a key: it ignores
/// everything in the directory, itself included.
pub const GITIGNORE: (&str, &str) = (
    ".gitignore",
    "# Written by kiln certs generate: this directory holds private keys. Keep it out of git.\n*\n",
);
/// The subdirectories of the output: one per leaf.
const LEAF_DIRS: [&str; 2] = ["daemon", "client"];
/// The Secret manifests at the top of the output.
const SECRET_FILES: [&str; 3] = [
    "buildkit-daemon-certs.yaml",
    "buildkit-client-certs.yaml",
    "buildkit-ca.yaml",
];

/// What to issue and how to name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The namespace buildkitd runs in: in the SANs and the Secrets.
    pub namespace: String,
    /// The buildkitd Service name: the daemon certificate's common name and SANs.
    pub service: String,
    /// Extra DNS names or IP addresses for the daemon certificate.
    pub extra_sans: Vec<String>,
    /// File and Secret key names.
    pub format: SecretFormat,
    /// The Secrets' `type`: the format's ([`SecretFormat::secret_type`]), or that of the
    /// shells `kiln render` writes, when the Secrets are meant to be applied over those.
    pub secret_type: String,
    /// The key algorithm of all three certificates.
    pub algorithm: Algorithm,
    /// The CA's lifetime.
    pub ca_validity: Duration,
    /// The leaves' lifetime.
    pub validity: Duration,
    /// The CA Secret's name.
    pub ca_secret: String,
    /// The daemon Secret's name.
    pub daemon_secret: String,
    /// The client Secret's name.
    pub client_secret: String,
}

/// A file to write, relative to the output directory. No `Debug`: most hold a key.
#[derive(Clone)]
pub struct File {
    /// The path relative to the output directory.
    pub path: PathBuf,
    /// The contents.
    pub contents: Vec<u8>,
}

/// Everything `kiln certs generate` writes, in memory, and what it issued.
pub struct Generated {
    /// The files, in the order they are listed.
    pub files: Vec<File>,
    /// The CA.
    pub ca: CertSummary,
    /// The daemon certificate.
    pub daemon: CertSummary,
    /// The client certificate.
    pub client: CertSummary,
}

/// Why [`generate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A setting cannot work (a SAN, a name, a lifetime): the caller's to fix.
    #[error(transparent)]
    Invalid(PkiError),
    /// Issuing failed.
    #[error(transparent)]
    Issue(PkiError),
    /// A Secret manifest could not be written as YAML.
    #[error(transparent)]
    Yaml(YamlError),
}

/// True when `rel` (a path relative to the output directory, a directory when `is_dir`) is
/// one that [`generate`] writes: `--force` replaces only a directory that holds nothing else.
pub fn is_generated_path(rel: &Path, is_dir: bool) -> bool {
    let parts: Vec<&str> = rel.iter().map(|part| part.to_str().unwrap_or_default()).collect();
    match parts[..] {
        [top] if top == GITIGNORE.0 => !is_dir,
        [top] if LEAF_DIRS.contains(&top) => is_dir,
        [top] => !is_dir && SECRET_FILES.contains(&top),
        [dir, file] => {
            LEAF_DIRS.contains(&dir)
                && !is_dir
                && NAME_SETS
                    .iter()
                    .any(|(ca, cert, key)| [ca, cert, key].contains(&&file))
        }
        _ => false,
    }
}

fn secret(name: &str, settings: &Settings, component: &str, data: [(&str, &str); 3]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/component".to_string(), component.to_string()),
                ("app.kubernetes.io/managed-by".to_string(), "kiln".to_string()),
                ("app.kubernetes.io/part-of".to_string(), "buildkit".to_string()),
            ])),
            ..Default::default()
        },
        type_: Some(settings.secret_type.clone()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Issue the CA and both leaves as of `now` and lay out every file.
pub fn generate(settings: &Settings, now: OffsetDateTime) -> Result<Generated, GenerateError> {
    let invalid = GenerateError::Invalid;
    let sans =
        super::daemon_sans(&settings.service, &settings.namespace, &settings.extra_sans).map_err(invalid)?;
    let ca_window = Validity::starting_at("the CA", now, settings.ca_validity).map_err(invalid)?;
    let leaf_window =
        Validity::starting_at("the leaf certificates", now, settings.validity).map_err(invalid)?;

    let issue = GenerateError::Issue;
    let ca_serial = Serial::random().map_err(issue)?;
    let ca = super::issue_ca(&CaRequest {
        common_name: super::ca_common_name(&settings.namespace, ca_serial),
        algorithm: settings.algorithm,
        not_before: ca_window.not_before,
        not_after: ca_window.not_after,
        serial: ca_serial,
    })
    .map_err(issue)?;
    let leaf = |kind, common_name: &str, sans| -> Result<Issued, PkiError> {
        super::issue_leaf(
            &ca,
            &LeafRequest {
                kind,
                common_name: common_name.to_string(),
                sans,
                algorithm: settings.algorithm,
                not_before: leaf_window.not_before,
                not_after: leaf_window.not_after,
                serial: Serial::random()?,
            },
        )
    };
    let daemon = leaf(LeafKind::Daemon, &settings.service, sans).map_err(issue)?;
    let client_name = super::client_common_name(&settings.namespace);
    let client = leaf(LeafKind::Client, &client_name, Vec::new()).map_err(issue)?;

    let (ca_name, cert_name, key_name) = settings.format.key_names();
    let mut files = vec![File {
        path: PathBuf::from(GITIGNORE.0),
        contents: GITIGNORE.1.as_bytes().to_vec(),
    }];
    for (dir, issued) in [("daemon", &daemon), ("client", &client)] {
        for (name, text) in [
            (ca_name, &ca.cert_pem),
            (cert_name, &issued.cert_pem),
            (key_name, &issued.key_pem),
        ] {
            files.push(File {
                path: Path::new(dir).join(name),
                contents: text.clone().into_bytes(),
            });
        }
    }
    let secrets = [
        (&settings.daemon_secret, "daemon-certs", &daemon),
        (&settings.client_secret, "client-certs", &client),
        // The CA Secret uses the same key names: the trust bundle, the current CA
        // certificate and its key, so rotation can add a second CA to the bundle.
        (&settings.ca_secret, "ca", &ca),
    ];
    for (file, (name, component, issued)) in SECRET_FILES.into_iter().zip(secrets) {
        let secret = secret(
            name,
            settings,
            component,
            [
                (ca_name, &ca.cert_pem),
                (cert_name, &issued.cert_pem),
                (key_name, &issued.key_pem),
            ],
        );
        files.push(File {
            path: PathBuf::from(file),
            contents: yaml::to_string(&secret)
                .map_err(GenerateError::Yaml)?
                .into_bytes(),
        });
    }
    Ok(Generated {
        files,
        ca: ca.summary().map_err(issue)?,
        daemon: daemon.summary().map_err(issue)?,
        client: client.summary().map_err(issue)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(format: SecretFormat, namespace: &str) -> Settings {
        Settings {
            namespace: namespace.into(),
            service: "buildkitd".into(),
            extra_sans: Vec::new(),
            format,
            secret_type: format.secret_type().into(),
            algorithm: Algorithm::EcdsaP256,
            ca_validity: Duration::from_days(5 * 365),
            validity: Duration::from_days(90),
            ca_secret: "buildkit-ca".into(),
            daemon_secret: "buildkit-daemon-certs".into(),
            client_secret: "buildkit-client-certs".into(),
        }
    }

    #[test]
    fn generated_secrets_use_the_chosen_names() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let generated = generate(&settings(SecretFormat::Tls, "ci"), now).unwrap();
        let paths: Vec<String> = generated
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                ".gitignore",
                "daemon/ca.crt",
                "daemon/tls.crt",
                "daemon/tls.key",
                "client/ca.crt",
                "client/tls.crt",
                "client/tls.key",
                "buildkit-daemon-certs.yaml",
                "buildkit-client-certs.yaml",
                "buildkit-ca.yaml",
            ]
        );
        for file in &generated.files {
            assert!(is_generated_path(&file.path, false), "{}", file.path.display());
        }
        let daemon: Secret = yaml::from_str(
            std::str::from_utf8(&generated.files[7].contents).unwrap(),
            "daemon",
        )
        .unwrap();
        assert_eq!(daemon.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(daemon.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(generated.daemon.not_after, now + time::Duration::days(90));
        assert!(generated.daemon.sans.contains(&"buildkitd.ci.svc".to_string()));
    }

    #[test]
    fn a_bad_setting_is_invalid_not_a_failure() {
        let mut bad = settings(SecretFormat::Pem, "Not_A_Label");
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert!(matches!(generate(&bad, now), Err(GenerateError::Invalid(_))));
        bad.namespace = "ok".into();
        bad.extra_sans = vec!["bad..name".into()];
        assert!(matches!(generate(&bad, now), Err(GenerateError::Invalid(_))));
    }

    #[test]
    fn only_what_generate_writes_is_generated() {
        for (path, is_dir, expected) in [
            ("daemon", true, true),
            ("daemon", false, false),
            ("buildkit-ca.yaml", false, true),
            (".gitignore", false, true),
            (".gitignore", true, false),
            ("daemon/.gitignore", false, false),
            ("buildkit-ca.yaml", true, false),
            ("client/key.pem", false, true),
            ("client/tls.key", false, true),
            ("client/notes.txt", false, false),
            ("client/sub", true, false),
            ("notes.txt", false, false),
            ("daemon/ca.pem/x", false, false),
        ] {
            assert_eq!(
                is_generated_path(Path::new(path), is_dir),
                expected,
                "{path} {is_dir}"
            );
        }
    }
}
