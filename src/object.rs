//! [`Object`]: one Kubernetes object as a JSON value with its identity read out.
//!
//! Pure, and at the bottom of the crate: render makes objects, overlay loading makes the
//! extra manifests into objects, and the layout, the KRM plugin and the CLI write them.

use serde::Serialize;

/// One rendered Kubernetes object, ready to be written as YAML.
///
/// Typed objects (k8s-openapi structs, kiln's own CRD structs) are converted once
/// into a JSON value so that the layout code can sort, label and write them uniformly.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `apps/v1`, `tekton.dev/v1`, …
    pub api_version: String,
    /// `Deployment`, `Task`, …
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, for namespaced objects.
    pub namespace: Option<String>,
    /// The whole object.
    pub value: serde_json::Value,
}

/// An object that could not be turned into a value.
#[derive(Debug, thiserror::Error)]
#[error("failed to serialize {kind} {name}: {source}")]
pub struct ObjectError {
    kind: String,
    name: String,
    source: serde_json::Error,
}

impl Object {
    /// Convert a typed object. `api_version`, `kind`, `name` and `namespace` are read back from it.
    pub fn from_typed<T: Serialize>(typed: &T) -> Result<Self, ObjectError> {
        let value = serde_json::to_value(typed).map_err(|source| ObjectError {
            kind: std::any::type_name::<T>().to_string(),
            name: String::new(),
            source,
        })?;
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_string();
        Ok(Self {
            api_version: text(value.get("apiVersion")),
            kind: text(value.get("kind")),
            name: text(value.pointer("/metadata/name")),
            namespace: value
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_typed_reads_identity_back() {
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let object = Object::from_typed(&ns).unwrap();
        assert_eq!(
            (object.api_version.as_str(), object.kind.as_str()),
            ("v1", "Namespace")
        );
        assert_eq!(object.name, "x");
        assert_eq!(object.namespace, None);
    }
}
