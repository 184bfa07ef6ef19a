//! The one place where render's file names are made.
//!
//! Every file kiln writes (render's tree, `certs generate`'s) is named by a [`FilePath`]
//! ([`super::Stage::write`] takes nothing else), and [`FilePath::new`] is its constructor:
//! each part must be lowercase letters, digits, `.` and `-`, start with a letter or a digit,
//! and fit a file name ([`FilePath::kiln_file`] adds kiln's own two dot files). So no name from the input (an overlay, an object's kind,
//! name or namespace) can climb out of the output directory, hide a file, or hold `/` or NUL,
//! whichever object type it comes from. [`object_file`] checks an object's names against the
//! Kubernetes rules first, so that its error names the field.

use std::borrow::Borrow;

use crate::names::{is_dns1123_label, is_dns1123_subdomain, is_kind, quoted as echo};

use crate::object::Object;

/// The longest part (a file or directory name) most file systems allow.
const MAX_PART: usize = 255;

/// A path relative to the output directory whose every part is a safe file name; see the
/// module docs. Compares and borrows as its text, so a map keyed by it is looked up by `&str`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePath(String);

/// A part that cannot be a file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} cannot be part of a file name: {reason}")]
pub struct PathError {
    /// The part, quoted and shortened.
    part: String,
    reason: &'static str,
}

impl FilePath {
    /// Join `parts` with `/`; fails on the first part that is not a safe file name.
    pub fn new<S: AsRef<str>>(parts: &[S]) -> Result<Self, PathError> {
        if parts.is_empty() {
            return Err(PathError {
                part: "\"\"".into(),
                reason: "a path needs at least one part",
            });
        }
        let mut path = String::new();
        for part in parts {
            let part = part.as_ref();
            check_part(part)?;
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
        }
        Ok(Self(path))
    }

    /// The same for a relative path, split at `/`: no `..`, no root, every part safe (or
    /// the path is one of [`KILN_FILES`]).
    pub fn from_path(path: &std::path::Path) -> Result<Self, PathError> {
        if let Some(name) = path.to_str().filter(|p| KILN_FILES.contains(p)) {
            return Self::kiln_file(name);
        }
        let parts = path
            .components()
            .map(|c| match c {
                std::path::Component::Normal(part) => Ok(part.to_string_lossy().into_owned()),
                other => Err(PathError {
                    part: echo(&other.as_os_str().to_string_lossy()),
                    reason: "a path inside the output is relative and plain",
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&parts)
    }

    /// One of the files kiln keeps at the top of a directory it writes, whose names start
    /// with `.` ([`KILN_FILES`]); any other name is refused.
    pub fn kiln_file(name: &str) -> Result<Self, PathError> {
        if KILN_FILES.contains(&name) {
            Ok(Self(name.to_string()))
        } else {
            Err(PathError {
                part: echo(name),
                reason: "it is not one of kiln's own files",
            })
        }
    }

    /// The path, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The dot files kiln writes itself: render's manifest and certs generate's `.gitignore`.
pub const KILN_FILES: [&str; 2] = [super::MANIFEST, ".gitignore"];

impl Borrow<str> for FilePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for FilePath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_part(part: &str) -> Result<(), PathError> {
    let refuse = |reason| {
        Err(PathError {
            part: echo(part),
            reason,
        })
    };
    if part.is_empty() {
        return refuse("it is empty");
    }
    if part.len() > MAX_PART {
        return refuse("it is longer than 255 characters");
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return refuse("use only lowercase letters, digits, '.' and '-'");
    }
    if !part.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return refuse("it must start with a letter or a digit");
    }
    Ok(())
}

/// An object name that cannot reach a file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} {rule}")]
pub struct NameError {
    /// The object field: `kind`, `metadata.name` or `metadata.namespace`.
    pub field: &'static str,
    /// The value, quoted and shortened.
    pub value: String,
    /// What the value must look like.
    pub rule: &'static str,
}

/// The file an object is written to inside its overlay's directory: `<kind>-<name>.yaml`,
/// lowercase, under `<namespace>/` when the object lives in a namespace other than `home`
/// (the overlay's own): tenant namespaces hold objects of the same kind and name.
///
/// The kind must be a Kubernetes kind (its lowercase form a DNS-1035 label, as the API server
/// requires), the name a DNS-1123 subdomain and the namespace a DNS-1123 label.
pub fn object_file(object: &Object, home: &str) -> Result<Vec<String>, NameError> {
    if !is_kind(&object.kind) {
        return Err(NameError {
            field: "kind",
            value: echo(&object.kind),
            rule: "is not a Kubernetes kind: a letter, then letters, digits or '-', at most 63 characters",
        });
    }
    if !is_dns1123_subdomain(&object.name) {
        return Err(NameError {
            field: "metadata.name",
            value: echo(&object.name),
            rule: "is not a DNS-1123 name: lowercase letters, digits, '-' and '.', at most 253 characters",
        });
    }
    let file = format!("{}-{}.yaml", object.kind.to_ascii_lowercase(), object.name);
    match object.namespace.as_deref() {
        Some(namespace) if namespace != home => {
            if !is_dns1123_label(namespace) {
                return Err(NameError {
                    field: "metadata.namespace",
                    value: echo(namespace),
                    rule: "is not a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters",
                });
            }
            Ok(vec![namespace.to_string(), file])
        }
        _ => Ok(vec![file]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_parts_make_a_path() {
        assert_eq!(
            FilePath::new(&["dev", "configmap-a.yaml"]).unwrap().as_str(),
            "dev/configmap-a.yaml"
        );
        for bad in [
            "", ".", "..", "../x", "a/b", "/", "a\0b", ".hidden", "-x", "Dev", "a b", "é",
        ] {
            assert!(FilePath::new(&["dev", bad]).is_err(), "{bad:?}");
        }
        assert!(FilePath::new(&[&"a".repeat(256)]).is_err());
        assert!(FilePath::new::<&str>(&[]).is_err());
        let from = |p: &str| FilePath::from_path(std::path::Path::new(p)).map(|p| p.to_string());
        assert_eq!(from("daemon/ca.pem").unwrap(), "daemon/ca.pem");
        assert_eq!(from(".gitignore").unwrap(), ".gitignore");
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "./a",
            ".git",
            "daemon/.gitignore",
        ] {
            assert!(from(bad).is_err(), "{bad}");
        }
        assert_eq!(FilePath::kiln_file(".gitignore").unwrap().as_str(), ".gitignore");
        assert!(FilePath::kiln_file(".git").is_err());
        let e = FilePath::new(&["../../etc"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "\"../../etc\" cannot be part of a file name: use only lowercase letters, digits, '.' and '-'"
        );
    }

    #[test]
    fn echoed_values_are_capped() {
        let e = FilePath::new(&["X".repeat(10_000)]).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("(10000 bytes)"), "{e}");
    }

    fn object(kind: &str, name: &str, namespace: Option<&str>) -> Object {
        Object {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(str::to_string),
            value: serde_json::Value::Null,
        }
    }

    #[test]
    fn object_files_come_from_checked_names() {
        assert_eq!(
            object_file(&object("ConfigMap", "a.b", Some("ci")), "ci").unwrap(),
            ["configmap-a.b.yaml"]
        );
        assert_eq!(
            object_file(&object("Secret", "s", Some("team-a")), "ci").unwrap(),
            ["team-a", "secret-s.yaml"]
        );
        for (kind, name, namespace, field) in [
            ("../../../escape", "x", None, "kind"),
            ("Config/Map", "x", None, "kind"),
            ("Config\0Map", "x", None, "kind"),
            ("1Map", "x", None, "kind"),
            ("", "x", None, "kind"),
            ("ConfigMap", "../x", None, "metadata.name"),
            ("ConfigMap", "X", None, "metadata.name"),
            ("ConfigMap", "a/b", None, "metadata.name"),
            ("ConfigMap", "x", Some("../up"), "metadata.namespace"),
            ("ConfigMap", "x", Some("a.b"), "metadata.namespace"),
        ] {
            let e = object_file(&object(kind, name, namespace), "ci").unwrap_err();
            assert_eq!(e.field, field, "{kind} {name} {namespace:?}");
        }
    }
}
