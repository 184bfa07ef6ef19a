//! `kiln certs inspect`'s engine: find certificates in a directory, a PEM file or Secret
//! YAML, check each one (dates, chain, key), and lay the findings out as a table.
//!
//! [`inspect`] reads the files it is pointed at (the only IO in [`crate::pki`]); [`table`]
//! and [`problems`] are pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use time::OffsetDateTime;

use super::parse::{certificate_ders, certificate_pems, private_key_block};
use super::{CertSummary, NAME_SETS, PkiError, Purpose, TrustBundle, key_matches, parse_bundle, rfc3339};
use crate::yaml::{self, YamlError};

/// Why certificates could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be read.
    #[error("failed to read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// A directory could not be listed.
    #[error("failed to list {path}: {error}")]
    List { path: PathBuf, error: std::io::Error },
    /// A YAML file is not a stream of Secrets.
    #[error(transparent)]
    Yaml(YamlError),
    /// A Secret data value is not text.
    #[error("failed to read {label}: data key {key} is not UTF-8 PEM: {error}")]
    NotUtf8 {
        label: String,
        key: String,
        error: std::string::FromUtf8Error,
    },
    /// A Secret holds none of the certificate keys.
    #[error(
        "failed to read {label}: the Secret has none of the keys ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key"
    )]
    NoKeys { label: String },
    /// A file is too large, DER or binary instead of PEM text.
    #[error("failed to read {path}: {error}")]
    NotText { path: PathBuf, error: PkiError },
    /// A file that is neither PEM nor a Secret YAML. `why` is shown only for a file that
    /// holds Secrets: anything else (say /etc/passwd) is not quoted back.
    #[error(
        "failed to read {path}: it holds no PEM block (-----BEGIN CERTIFICATE-----) and is not a Secret YAML{}",
        why.as_ref().map(|why| format!(" ({why})")).unwrap_or_default()
    )]
    NeitherPemNorSecret {
        path: PathBuf,
        why: Option<Box<InspectError>>,
    },
    /// A directory with nothing to inspect.
    #[error(
        "failed to find certificates in {path}: expected ca/cert/key files (pem or tls names), Secret YAML or PEM files"
    )]
    NothingFound { path: PathBuf },
    /// A certificate (or bundle) could not be parsed.
    #[error("failed to read {name}: {error}")]
    Certificate { name: String, error: Box<PkiError> },
    /// The key next to a certificate could not be read.
    #[error("failed to read the key next to {name} in {place}: {error}")]
    Key {
        name: String,
        place: String,
        error: Box<PkiError>,
    },
}

/// What [`inspect`] says about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Where the certificate came from: a path, or `file.yaml:secret-name:key`.
    pub name: String,
    /// The certificate itself.
    #[serde(flatten)]
    pub summary: CertSummary,
    /// Whole days until not-after (negative once expired).
    pub days_left: i64,
    /// Valid at the time of the check (between not-before and not-after).
    pub valid: bool,
    /// The verdict: the certificate's own dates first, then its chain.
    pub status: Status,
    /// The chain verifies (rustls-webpki, plus the CA's dates, keyCertSign and path
    /// length), the certificate's own dates apart: an expired certificate with a sound
    /// chain has `true` here and status `expired`. None when there is no CA to check against.
    pub chain_ok: Option<bool>,
    /// Why the chain check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_error: Option<String>,
    /// Whether the key next to the certificate belongs to it (None: no key there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_matches: Option<bool>,
}

/// What [`inspect`] concludes about one certificate, most pressing first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Valid now, and the chain verifies.
    Ok,
    /// Past its not-after.
    Expired,
    /// Before its not-before.
    NotYetValid,
    /// Valid itself, but the CA that signed it is not valid now.
    CaExpired,
    /// The chain does not verify (see `chainError`).
    ChainFail,
    /// Valid, with no CA next to it to check the chain against.
    Unchecked,
}

impl Status {
    /// How the table shows it.
    pub fn text(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Expired => "expired",
            Status::NotYetValid => "not yet valid",
            Status::CaExpired => "CA expired",
            Status::ChainFail => "FAIL",
            Status::Unchecked => "-",
        }
    }
}

/// Certificates read from one place: a trust bundle, certificates, maybe their key.
/// No `Debug`: it holds a private key.
struct Source {
    /// Shown in messages: a path, or `file.yaml:secret-name`.
    name: String,
    /// The CA bundle (ca.pem / ca.crt): (name, text), when the source has one.
    bundle: Option<(String, String)>,
    /// The certificate (cert.pem / tls.crt) or the PEM file itself: (name, text).
    cert: Option<(String, String)>,
    /// The private key (key.pem / tls.key).
    key: Option<String>,
    /// What the certificate is for, when the place says so (a `daemon` or `client`
    /// directory or Secret): its extended key usage is checked for that side.
    purpose: Purpose,
}

/// The side a directory or Secret name (or a `certs generate` component label) points at.
fn purpose_of(name: &str) -> Purpose {
    match (name.contains("daemon"), name.contains("client")) {
        (true, false) => Purpose::Daemon,
        (false, true) => Purpose::Client,
        _ => Purpose::Tls,
    }
}

/// Find the certificates at `path` and check each as of `now`, one [`Row`] per certificate;
/// a CA that several sources carry is shown once.
///
/// `path` is a directory (as `kiln certs generate` writes it, or one holding ca/cert/key
/// files under either naming), a PEM file, or a Secret YAML file (pem or tls key names).
pub fn inspect(path: &Path, now: OffsetDateTime) -> Result<Vec<Row>, InspectError> {
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for source in collect_sources(path)? {
        rows.extend(rows_for(&source, now, &mut seen)?);
    }
    Ok(rows)
}

/// Read a PEM or Secret YAML file: at most [`super::MAX_PEM_BYTES`] (a device or a huge
/// file stops there), as text (DER is named as such, with the openssl command that converts it).
fn read_text(path: &Path) -> Result<String, InspectError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(super::MAX_PEM_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|error| InspectError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    super::pem_text(bytes, &path.display().to_string()).map_err(|error| InspectError::NotText {
        path: path.to_path_buf(),
        error,
    })
}

/// A directory holding ca/cert/key files under either naming scheme, if it does.
fn source_from_dir(dir: &Path) -> Result<Option<Source>, InspectError> {
    for (ca, cert, key) in NAME_SETS {
        if !dir.join(cert).is_file() && !dir.join(ca).is_file() {
            continue;
        }
        let read = |name: &str| -> Result<Option<(String, String)>, InspectError> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(Some((path.display().to_string(), read_text(&path)?)))
            } else {
                Ok(None)
            }
        };
        let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        return Ok(Some(Source {
            name: dir.display().to_string(),
            bundle: read(ca)?,
            cert: read(cert)?,
            key: read(key)?.map(|(_, text)| text),
            purpose: purpose_of(dir_name),
        }));
    }
    Ok(None)
}

fn sources_from_yaml(path: &Path, text: &str) -> Result<Vec<Source>, InspectError> {
    let secrets: Vec<Secret> =
        yaml::from_str_multi(text, &path.display().to_string()).map_err(InspectError::Yaml)?;
    let mut sources = Vec::new();
    let several = secrets.len() > 1;
    for secret in secrets {
        let secret_name = secret.metadata.name.clone().unwrap_or_default();
        let component = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("app.kubernetes.io/component"))
            .cloned();
        let purpose = purpose_of(component.as_deref().unwrap_or(&secret_name));
        // The Secret name is only needed to tell several Secrets of one file apart.
        let label = if several {
            format!("{}:{secret_name}", path.display())
        } else {
            path.display().to_string()
        };
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(value.0).map_err(|error| InspectError::NotUtf8 {
                label: label.clone(),
                key: key.clone(),
                error,
            })?;
            data.insert(key, text);
        }
        data.extend(secret.string_data.unwrap_or_default());
        let Some((ca, cert, key)) = NAME_SETS
            .into_iter()
            .find(|(ca, cert, _)| data.contains_key(*cert) || data.contains_key(*ca))
        else {
            return Err(InspectError::NoKeys { label });
        };
        sources.push(Source {
            bundle: data.get(ca).map(|t| (format!("{label}:{ca}"), t.clone())),
            cert: data.get(cert).map(|t| (format!("{label}:{cert}"), t.clone())),
            key: data.get(key).cloned(),
            name: label,
            purpose,
        });
    }
    Ok(sources)
}

fn sources_from_file(path: &Path) -> Result<Vec<Source>, InspectError> {
    // cert.pem or tls.crt inside a certificate directory: check it with its CA and key.
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(dir) = path.parent()
        && NAME_SETS
            .iter()
            .any(|(ca, cert, _)| *cert == file_name && dir.join(ca).is_file())
        && let Some(source) = source_from_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
    {
        return Ok(vec![source]);
    }
    let text = read_text(path)?;
    if text.contains("-----BEGIN") {
        // A PEM file: its certificates, chained against the CAs in the same file,
        // and the key stored with them, if any.
        Ok(vec![Source {
            name: path.display().to_string(),
            bundle: None,
            key: private_key_block(&text),
            cert: Some((path.display().to_string(), text)),
            purpose: Purpose::Tls,
        }])
    } else {
        let secrets = yaml::document_kinds(&text).is_some_and(|kinds| kinds.iter().any(|k| k == "Secret"));
        sources_from_yaml(path, &text).map_err(|why| InspectError::NeitherPemNorSecret {
            path: path.to_path_buf(),
            why: secrets.then(|| Box::new(why)),
        })
    }
}

fn collect_sources(path: &Path) -> Result<Vec<Source>, InspectError> {
    let meta = fs::metadata(path).map_err(|error| InspectError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    if !meta.is_dir() {
        return sources_from_file(path);
    }
    if let Some(source) = source_from_dir(path)? {
        return Ok(vec![source]);
    }
    let list = |error| InspectError::List {
        path: path.to_path_buf(),
        error,
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(list)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(list)?;
    entries.sort();
    let mut sources = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            sources.extend(source_from_dir(&entry)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            sources.extend(sources_from_yaml(&entry, &read_text(&entry)?)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("pem" | "crt")) {
            sources.extend(sources_from_file(&entry)?);
        }
    }
    if sources.is_empty() {
        return Err(InspectError::NothingFound {
            path: path.to_path_buf(),
        });
    }
    Ok(sources)
}

/// One certificate of a text: its summary, its PEM and its DER.
struct Parsed {
    summary: CertSummary,
    pem: String,
    der: Vec<u8>,
}

/// Every certificate in `text`, parsed once.
fn certificates(name: &str, text: &str) -> Result<Vec<Parsed>, InspectError> {
    let read = |error| InspectError::Certificate {
        name: name.to_string(),
        error: Box::new(error),
    };
    let summaries = parse_bundle(text).map_err(read)?;
    let pems = certificate_pems(text).map_err(read)?;
    let ders = certificate_ders(text).map_err(read)?;
    Ok(summaries
        .into_iter()
        .zip(pems)
        .zip(ders)
        .map(|((summary, pem), der)| Parsed { summary, pem, der })
        .collect())
}

/// The trust bundle of a source, read and indexed once for all its certificates.
fn trust_bundle(name: &str, text: &str) -> Result<TrustBundle, InspectError> {
    TrustBundle::from_pem(text).map_err(|error| InspectError::Certificate {
        name: name.to_string(),
        error: Box::new(error),
    })
}

fn rows_for(
    source: &Source,
    now: OffsetDateTime,
    seen: &mut BTreeSet<String>,
) -> Result<Vec<Row>, InspectError> {
    let mut rows = Vec::new();
    let row = |name: &str,
               cert: Parsed,
               trust: &TrustBundle,
               chain: &[Vec<u8>],
               purpose: Purpose,
               key: Option<&str>|
     -> Result<Row, InspectError> {
        let mut summary = cert.summary;
        if summary.issuer_fingerprint.is_none() {
            // The signer among the trusted CAs, found by signature whatever the dates say.
            summary.issuer_fingerprint = trust.signer_of(&cert.der);
        }
        let assessment = trust
            .has_ca()
            .then(|| trust.assess(&cert.der, chain, now, purpose));
        let key_matches = match key {
            Some(key) => Some(key_matches(&cert.pem, key).map_err(|error| InspectError::Key {
                name: name.to_string(),
                place: source.name.clone(),
                error: Box::new(error),
            })?),
            None => None,
        };
        let valid = summary.not_before <= now && now <= summary.not_after;
        let chain_error = assessment
            .as_ref()
            .and_then(|a| a.as_ref().err())
            .map(|e| e.to_string());
        let status = match &assessment {
            _ if now > summary.not_after => Status::Expired,
            _ if now < summary.not_before => Status::NotYetValid,
            None => Status::Unchecked,
            Some(a) => match a {
                Ok(_) => Status::Ok,
                Err(PkiError::CaNotValidAt { .. }) => Status::CaExpired,
                Err(_) => Status::ChainFail,
            },
        };
        Ok(Row {
            name: name.to_string(),
            days_left: (summary.not_after - now).whole_days(),
            valid,
            status,
            summary,
            chain_ok: assessment.as_ref().map(Result::is_ok),
            chain_error,
            key_matches,
        })
    };
    if let Some((name, text)) = &source.cert {
        let trust = match &source.bundle {
            Some((bundle_name, bundle)) => trust_bundle(bundle_name, bundle)?,
            None => trust_bundle(name, text)?,
        };
        let certs = certificates(name, text)?;
        // CA certificates sent along in cert.pem are intermediates; in a PEM file without a
        // bundle they are in the trust already.
        let chain: Vec<Vec<u8>> = if source.bundle.is_some() {
            certs
                .iter()
                .filter(|c| c.summary.is_ca)
                .map(|c| c.der.clone())
                .collect()
        } else {
            Vec::new()
        };
        for (i, cert) in certs.into_iter().enumerate() {
            // The key and the source's purpose belong to the first certificate of the file.
            let (key, purpose) = if i == 0 {
                (source.key.as_deref(), source.purpose)
            } else {
                (None, Purpose::Tls)
            };
            seen.insert(cert.summary.fingerprint.clone());
            rows.push(row(name, cert, &trust, &chain, purpose, key)?);
        }
    }
    // Each CA of a bundle is shown once, however many sources carry it.
    if let Some((name, text)) = &source.bundle {
        let trust = trust_bundle(name, text)?;
        for cert in certificates(name, text)? {
            if seen.insert(cert.summary.fingerprint.clone()) {
                rows.push(row(name, cert, &trust, &[], Purpose::Tls, None)?);
            }
        }
    }
    Ok(rows)
}

fn usage_text(summary: &CertSummary) -> String {
    let mut usage = summary.extended_key_usage.clone();
    if summary.is_ca {
        usage.insert(0, "CA".into());
    }
    if usage.is_empty() {
        "-".into()
    } else {
        usage.join(",")
    }
}

/// The rows as an aligned table with a header line, one line per certificate, fitted to
/// `width` characters ([`super::table::render`]: SANS, USAGE and ISSUER only in the wide view,
/// long names and subjects shortened), or every column in full when `width` is `None`.
pub fn table(rows: &[Row], width: Option<usize>) -> String {
    use super::table::{Column, Cut};
    let cells = |f: &dyn Fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let check = |v: Option<bool>, bad: &str| match v {
        Some(true) => "ok".to_string(),
        Some(false) => bad.to_string(),
        None => "-".to_string(),
    };
    let columns = vec![
        Column::shrinkable("NAME", cells(&|r| r.name.clone()), Cut::Start),
        Column::shrinkable("SUBJECT", cells(&|r| r.summary.subject.clone()), Cut::End),
        Column::fixed(
            "SANS",
            cells(&|r| {
                if r.summary.sans.is_empty() {
                    "-".into()
                } else {
                    r.summary.sans.join(",")
                }
            }),
        )
        .wide(),
        Column::fixed("USAGE", cells(&|r| usage_text(&r.summary))).wide(),
        Column::fixed("NOT AFTER", cells(&|r| rfc3339(r.summary.not_after))),
        Column::fixed("DAYS LEFT", cells(&|r| r.days_left.to_string())),
        Column::fixed("ISSUER", cells(&|r| r.summary.issuer.clone())).wide(),
        Column::fixed("CHAIN", cells(&|r| r.status.text().to_string())),
        Column::fixed("KEY", cells(&|r| check(r.key_matches, "MISMATCH"))),
    ];
    super::table::render(columns, width)
}

/// One line per problem the rows show as of `now`; empty when all is well.
pub fn problems(rows: &[Row], now: OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let what = format!("{} ({})", r.name, r.summary.subject);
        if r.summary.not_after < now {
            out.push(format!("{what} expired at {}", rfc3339(r.summary.not_after)));
        } else if r.summary.not_before > now {
            out.push(format!(
                "{what} is not valid before {}",
                rfc3339(r.summary.not_before)
            ));
        }
        if let Some(err) = &r.chain_error {
            out.push(format!("{what} does not chain: {err}"));
        }
        if r.key_matches == Some(false) {
            out.push(format!("{what}: the private key does not match the certificate"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_yaml_with_either_key_naming_or_string_data() {
        let path = Path::new("s.yaml");
        let tls = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: CERT\n  tls.key: KEY\n  ca.crt: CA\n";
        let sources = sources_from_yaml(path, tls).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, "s.yaml");
        assert_eq!(
            sources[0].cert,
            Some(("s.yaml:tls.crt".to_string(), "CERT".to_string()))
        );
        assert_eq!(
            sources[0].bundle,
            Some(("s.yaml:ca.crt".to_string(), "CA".to_string()))
        );
        assert_eq!(sources[0].key.as_deref(), Some("KEY"));

        let two = "kind: Secret\nmetadata:\n  name: a\ndata:\n  cert.pem: Q0VSVA==\n---\nkind: Secret\nmetadata:\n  name: b\ndata:\n  ca.pem: Q0E=\n";
        let sources = sources_from_yaml(path, two).unwrap();
        assert_eq!(sources[0].name, "s.yaml:a");
        assert_eq!(
            sources[0].cert,
            Some(("s.yaml:a:cert.pem".to_string(), "CERT".to_string()))
        );
        assert_eq!(
            sources[1].bundle,
            Some(("s.yaml:b:ca.pem".to_string(), "CA".to_string()))
        );

        let other = "kind: Secret\nmetadata:\n  name: x\nstringData:\n  password: hunter2\n";
        let err = sources_from_yaml(path, other).err().unwrap().to_string();
        assert_eq!(
            err,
            "failed to read s.yaml: the Secret has none of the keys ca.pem/cert.pem/key.pem or ca.crt/tls.crt/tls.key"
        );
    }
}
