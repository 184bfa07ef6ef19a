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

use super::parse::{certificate_pems, private_key_block};
use super::{CertSummary, NAME_SETS, PkiError, bundle, key_matches, parse_bundle, rfc3339, verify_chain};
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
    /// A file that is neither PEM nor a Secret YAML.
    #[error(
        "failed to read {path}: it holds no PEM block (-----BEGIN CERTIFICATE-----) and is not a Secret YAML ({why})"
    )]
    NeitherPemNorSecret { path: PathBuf, why: Box<InspectError> },
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
    /// Signed by a CA in the bundle, both valid; None when there is no CA to check against.
    pub chain_ok: Option<bool>,
    /// Why the chain check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_error: Option<String>,
    /// Whether the key next to the certificate belongs to it (None: no key there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_matches: Option<bool>,
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

fn read_text(path: &Path) -> Result<String, InspectError> {
    fs::read_to_string(path).map_err(|error| InspectError::Read {
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
        return Ok(Some(Source {
            name: dir.display().to_string(),
            bundle: read(ca)?,
            cert: read(cert)?,
            key: read(key)?.map(|(_, text)| text),
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
        }])
    } else {
        sources_from_yaml(path, &text).map_err(|why| InspectError::NeitherPemNorSecret {
            path: path.to_path_buf(),
            why: Box::new(why),
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

/// The summaries of every certificate in `text`, each with its own PEM.
fn certificates(name: &str, text: &str) -> Result<Vec<(CertSummary, String)>, InspectError> {
    let read = |error| InspectError::Certificate {
        name: name.to_string(),
        error: Box::new(error),
    };
    let summaries = parse_bundle(text).map_err(read)?;
    let pems = certificate_pems(text).map_err(read)?;
    Ok(summaries.into_iter().zip(pems).collect())
}

fn rows_for(
    source: &Source,
    now: OffsetDateTime,
    seen: &mut BTreeSet<String>,
) -> Result<Vec<Row>, InspectError> {
    let mut rows = Vec::new();
    let row = |name: &str,
               mut summary: CertSummary,
               pem: &str,
               trust: &str,
               key: Option<&str>|
     -> Result<Row, InspectError> {
        let read = |error| InspectError::Certificate {
            name: name.to_string(),
            error: Box::new(error),
        };
        let has_ca = parse_bundle(trust).map_err(read)?.iter().any(|c| c.is_ca);
        if summary.issuer_fingerprint.is_none() {
            // The signer among the trusted CAs, found by signature whatever the dates say.
            let with_trust = parse_bundle(&bundle(&[pem, trust])).map_err(read)?;
            summary.issuer_fingerprint = with_trust.first().and_then(|c| c.issuer_fingerprint.clone());
        }
        let chain = if has_ca {
            Some(verify_chain(pem, trust, now))
        } else {
            None
        };
        let key_matches = match key {
            Some(key) => Some(key_matches(pem, key).map_err(|error| InspectError::Key {
                name: name.to_string(),
                place: source.name.clone(),
                error: Box::new(error),
            })?),
            None => None,
        };
        Ok(Row {
            name: name.to_string(),
            days_left: (summary.not_after - now).whole_days(),
            valid: summary.not_before <= now && now <= summary.not_after,
            summary,
            chain_ok: chain.as_ref().map(Result::is_ok),
            chain_error: chain.and_then(Result::err).map(|e| e.to_string()),
            key_matches,
        })
    };
    if let Some((name, text)) = &source.cert {
        let trust = match &source.bundle {
            Some((_, bundle)) => bundle.clone(),
            None => text.clone(),
        };
        for (i, (summary, pem)) in certificates(name, text)?.into_iter().enumerate() {
            // The key belongs to the first certificate of the file.
            let key = if i == 0 { source.key.as_deref() } else { None };
            seen.insert(summary.fingerprint.clone());
            rows.push(row(name, summary, &pem, &trust, key)?);
        }
    }
    // Each CA of a bundle is shown once, however many sources carry it.
    if let Some((name, text)) = &source.bundle {
        for (summary, pem) in certificates(name, text)? {
            if seen.insert(summary.fingerprint.clone()) {
                rows.push(row(name, summary, &pem, &pem, None)?);
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
        Column::fixed("CHAIN", cells(&|r| check(r.chain_ok, "FAIL"))),
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
        } else if let Some(err) = &r.chain_error {
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
