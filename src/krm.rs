//! kiln as a Kustomize plugin: a KRM function and a legacy exec plugin.
//!
//! Both read a `kiln.dev/v1alpha1` `BuildkitStack` whose `spec` is an overlay and
//! whose `metadata.name` is the overlay (instance) name. The overlay is loaded,
//! validated and rendered by the same code as `kiln render`; that code is handed in
//! as a `generate` function, so this module stays pure (no IO).
//!
//! The KRM function follows the KRM Functions Specification: a `config.kubernetes.io/v1`
//! `ResourceList` comes in (YAML or JSON), the same list goes out with the generated
//! objects appended to `items`. Input items are kept as opaque values and written back
//! unchanged (annotations such as `internal.config.kubernetes.io/*` included). Errors
//! and warnings become `results`.
//!
//! An overlay with tenants generates objects in several namespaces (the farm's and each
//! tenant's). The kustomization that runs the generator must not set `namespace:`, which
//! would move every one of them into one namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::is_dns1123_label;
use crate::object::Object;
use crate::overlay::{OverlayError, Resolver, Sources};

/// `apiVersion` of a ResourceList.
pub const RESOURCE_LIST_API_VERSION: &str = "config.kubernetes.io/v1";
/// `kind` of a ResourceList.
pub const RESOURCE_LIST_KIND: &str = "ResourceList";
/// The API group of the functionConfig.
pub const STACK_GROUP: &str = "kiln.dev";
/// The API version (without group) of the functionConfig.
pub const STACK_VERSION: &str = "v1alpha1";
/// `apiVersion` of the functionConfig.
pub const STACK_API_VERSION: &str = "kiln.dev/v1alpha1";
/// `kind` of the functionConfig.
pub const STACK_KIND: &str = "BuildkitStack";

/// Where Kustomize looks for the legacy exec plugin, relative to the plugin home:
/// `<group>/<version>/<lowercase kind>/<Kind>`.
pub fn plugin_relative_path() -> PathBuf {
    [STACK_GROUP, STACK_VERSION, &STACK_KIND.to_lowercase(), STACK_KIND]
        .iter()
        .collect()
}

/// The Kustomize plugin home when `--dir` is not given, the way Kustomize finds it:
/// `$KUSTOMIZE_PLUGIN_HOME`, else `$XDG_CONFIG_HOME/kustomize/plugin`, else
/// `$HOME/.config/kustomize/plugin`.
pub fn default_plugin_home(
    kustomize_plugin_home: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    kustomize_plugin_home
        .or_else(|| xdg_config_home.map(|dir| dir.join("kustomize/plugin")))
        .or_else(|| home.map(|dir| dir.join(".config/kustomize/plugin")))
}

/// Write objects as a YAML stream: documents separated by `---`.
pub fn yaml_stream(objects: &[&Value]) -> Result<String, KrmError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string(object).map_err(|e| KrmError::Write(e.to_string()))?);
    }
    Ok(out)
}

/// The serialization a ResourceList came in, and goes out, as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A YAML document.
    Yaml,
    /// A JSON object.
    Json,
}

impl Format {
    /// JSON when the text starts with `{`, YAML otherwise (JSON is also YAML, but
    /// answering in the caller's format is what KRM orchestrators expect).
    pub fn detect(text: &str) -> Self {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// A `config.kubernetes.io/v1` ResourceList.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    /// Always `config.kubernetes.io/v1`.
    pub api_version: String,
    /// Always `ResourceList`.
    pub kind: String,
    /// The objects, kept as opaque values so they go back out unchanged.
    #[serde(default)]
    pub items: Vec<Value>,
    /// The function's configuration: a `BuildkitStack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_config: Option<Value>,
    /// Results of this and earlier functions in the pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<KrmResult>,
}

/// One entry of `results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KrmResult {
    /// What happened, and what to do about it.
    pub message: String,
    /// error, warning or info.
    pub severity: Severity,
    /// The object the result is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_ref: Option<ResourceRef>,
    /// The field of that object the result is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<Field>,
    /// The file that object was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
}

/// The severity of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The function failed; it exits non-zero.
    Error,
    /// Something the user should fix; the function still succeeds.
    Warning,
    /// For information only.
    Info,
}

/// A reference to an object in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    /// The object's apiVersion.
    pub api_version: String,
    /// The object's kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The object's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A field in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The dotted path of the field, such as `spec.buildkit.replicas`.
    pub path: String,
}

/// A file in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// The path of the file, as the orchestrator annotated it.
    pub path: String,
    /// The index of the document in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// A problem found in the functionConfig, before it becomes a [`KrmResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// error, warning or info.
    pub severity: Severity,
    /// The dotted field path in the BuildkitStack, such as `spec.buildkit.replicas`.
    pub field: Option<String>,
    /// One line: what is wrong and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// An error about `field`.
    pub fn error(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// A warning about `field`.
    pub fn warning(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The BuildkitStack functionConfig, checked but with its `spec` not yet loaded as an overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// `metadata.name`: the overlay name (`{{overlay}}` in templates, the instance label).
    pub name: String,
    /// `spec`: an overlay, exactly as written (an empty map when absent).
    pub spec: Value,
}

/// What the render produced for a BuildkitStack.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generated {
    /// The rendered objects, in render order.
    pub objects: Vec<Object>,
    /// Warnings about the overlay (the render still succeeded).
    pub warnings: Vec<Diagnostic>,
}

/// A ResourceList that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KrmError {
    /// The input is not a ResourceList.
    #[error("failed to read the ResourceList from {source_name}: {message}")]
    Read { source_name: String, message: String },
    /// The input parsed but is not a `config.kubernetes.io/v1` ResourceList.
    #[error(
        "failed to read the ResourceList from {source_name}: expected apiVersion {RESOURCE_LIST_API_VERSION} and kind {RESOURCE_LIST_KIND}, found {api_version} {kind}"
    )]
    NotAResourceList {
        source_name: String,
        api_version: String,
        kind: String,
    },
    /// The output could not be serialized.
    #[error("failed to write the ResourceList: {0}")]
    Write(String),
    /// A legacy plugin config file is not a YAML object.
    #[error("failed to read the BuildkitStack from {source_name}: {message}")]
    Config { source_name: String, message: String },
}

/// Parse a ResourceList from YAML or JSON text and say which it was.
///
/// YAML items are read the way Kustomize reads them (see [`crate::yaml::from_str_passthrough`]),
/// so they go back out meaning the same; the functionConfig is read like an overlay file,
/// so its spec accepts exactly what `overlays/<name>.yaml` accepts.
pub fn parse_resource_list(text: &str, source_name: &str) -> Result<(ResourceList, Format), KrmError> {
    let read_error = |message: String| KrmError::Read {
        source_name: source_name.to_string(),
        message: crate::echo::tidy(&message, Some(text)),
    };
    if text.len() > crate::yaml::MAX_YAML_BYTES {
        return Err(read_error(format!(
            "it is {} bytes; kiln reads a ResourceList of at most {} bytes (16 MiB)",
            text.len(),
            crate::yaml::MAX_YAML_BYTES
        )));
    }
    if text.trim_start().starts_with("-----BEGIN ") {
        return Err(read_error(
            "it is PEM (a certificate or key), not a ResourceList: pass a config.kubernetes.io/v1 ResourceList in YAML or JSON".into(),
        ));
    }
    let format = Format::detect(text);
    let list: ResourceList = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| read_error(e.to_string()))?,
        Format::Yaml => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct ConfigOnly {
                #[serde(default)]
                function_config: Option<Value>,
            }
            let mut list: ResourceList = crate::yaml::from_str_passthrough(text, source_name)
                .map_err(|e| read_error(e.message().to_string()))?;
            let config: ConfigOnly =
                crate::yaml::from_str(text, source_name).map_err(|e| read_error(e.message().to_string()))?;
            list.function_config = config.function_config;
            list
        }
    };
    if list.api_version != RESOURCE_LIST_API_VERSION || list.kind != RESOURCE_LIST_KIND {
        return Err(KrmError::NotAResourceList {
            source_name: source_name.to_string(),
            api_version: crate::echo::quote(&list.api_version),
            kind: crate::echo::quote(&list.kind),
        });
    }
    Ok((list, format))
}

/// Write a ResourceList in `format`, ending with a newline.
pub fn write_resource_list(list: &ResourceList, format: Format) -> Result<String, KrmError> {
    match format {
        Format::Json => serde_json::to_string_pretty(list)
            .map(|text| text + "\n")
            .map_err(|e| KrmError::Write(e.to_string())),
        Format::Yaml => crate::yaml::to_string(list).map_err(|e| KrmError::Write(e.to_string())),
    }
}

/// Parse a legacy plugin config file (a BuildkitStack in YAML) into a value.
pub fn parse_config_file(text: &str, source_name: &str) -> Result<Value, KrmError> {
    let value: Value = crate::yaml::from_str(text, source_name).map_err(|e| KrmError::Config {
        source_name: source_name.to_string(),
        message: e.message().to_string(),
    })?;
    if !value.is_object() {
        return Err(KrmError::Config {
            source_name: source_name.to_string(),
            message: format!("expected a {STACK_API_VERSION} {STACK_KIND} object"),
        });
    }
    Ok(value)
}

/// Check the shape of a BuildkitStack: apiVersion, kind, `metadata.name`, and a map `spec`.
///
/// Returns the stack and its warnings, or every error found.
pub fn read_stack(config: &Value) -> Result<(Stack, Vec<Diagnostic>), Vec<Diagnostic>> {
    let text = |pointer: &str| config.pointer(pointer).and_then(Value::as_str);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let api_version = text("/apiVersion").unwrap_or_default();
    let kind = text("/kind").unwrap_or_default();
    if api_version != STACK_API_VERSION {
        errors.push(Diagnostic::error(
            Some("apiVersion"),
            format!(
                "expected {STACK_API_VERSION}, found {}: the functionConfig must be a {STACK_API_VERSION} {STACK_KIND}",
                crate::echo::quote(api_version)
            ),
        ));
    }
    if kind != STACK_KIND {
        errors.push(Diagnostic::error(
            Some("kind"),
            format!(
                "expected {STACK_KIND}, found {}: the functionConfig must be a {STACK_API_VERSION} {STACK_KIND}",
                crate::echo::quote(kind)
            ),
        ));
    }
    let name = text("/metadata/name").unwrap_or_default();
    if let Some(problem) = overlay_name_problem(name) {
        errors.push(Diagnostic::error(
            Some("metadata.name"),
            format!("{problem}: metadata.name is the overlay name, such as `dev` or `prod`"),
        ));
    }
    if text("/metadata/namespace").is_some() {
        warnings.push(Diagnostic::warning(
            Some("metadata.namespace"),
            "is not used: the objects go to the overlay's namespace; set spec.namespace instead",
        ));
    }
    let spec = match config.get("spec") {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(spec @ Value::Object(_)) => spec.clone(),
        Some(_) => {
            errors.push(Diagnostic::error(
                Some("spec"),
                "must be a map of overlay fields (the same fields as an overlays/<name>.yaml file)",
            ));
            Value::Null
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let stack = Stack {
        name: name.to_string(),
        spec,
    };
    Ok((stack, warnings))
}

/// A reference to the functionConfig and the file it came from, read leniently so that
/// results about a broken config still point at it.
fn reference(config: &Value) -> (ResourceRef, Option<File>) {
    let text = |pointer: &str| config.pointer(pointer).and_then(Value::as_str);
    let annotation = |key: &str| {
        config
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    // Orchestrators record where the config came from; newer ones under internal.*.
    let file = annotation("internal.config.kubernetes.io/path")
        .or_else(|| annotation("config.kubernetes.io/path"))
        .map(|path| File {
            path: path.to_string(),
            index: annotation("internal.config.kubernetes.io/index")
                .or_else(|| annotation("config.kubernetes.io/index"))
                .and_then(|index| index.parse().ok()),
        });
    // Read from a config that may be broken: each part capped, as an echoed value is.
    let short = crate::echo::capped;
    let resource_ref = ResourceRef {
        api_version: short(text("/apiVersion").unwrap_or_default()),
        kind: short(text("/kind").unwrap_or_default()),
        name: short(text("/metadata/name").unwrap_or_default()),
        namespace: text("/metadata/namespace").map(short),
    };
    (resource_ref, file)
}

/// Why `name` cannot be an overlay name (the same rule as overlay file names), if it cannot.
fn overlay_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is missing".to_string())
    } else if !is_dns1123_label(name) {
        Some(format!(
            "{} is not a DNS-1123 label (lowercase a-z, 0-9 and '-', at most 63 characters)",
            crate::echo::quote(name)
        ))
    } else {
        None
    }
}

/// Whether the stack's spec names a parent overlay (then the caller reads the overlays
/// directory for [`generate`]).
pub fn needs_parents(stack: &Stack) -> bool {
    stack
        .spec
        .get("extends")
        .is_some_and(|extends| !extends.is_null())
}

/// Load the stack's spec as the overlay `metadata.name`, exactly as `kiln render` loads
/// `overlays/<name>.yaml` (same merge, templates and validation), then render it.
///
/// `overlays_dir` names the directory `parents` came from (for messages); `parents`
/// holds its overlay files by name, for `extends:` (a file with the stack's own name is
/// replaced by the spec).
pub fn generate(
    stack: &Stack,
    overlays_dir: &str,
    mut parents: BTreeMap<String, String>,
) -> Result<Generated, Vec<Diagnostic>> {
    let spec_text = crate::yaml::to_string(&stack.spec)
        .map_err(|e| vec![Diagnostic::error(Some("spec"), e.to_string())])?;
    parents.insert(stack.name.clone(), spec_text);
    let sources = Sources::from_memory(overlays_dir, parents);
    let spec_path = format!("{}/{}.yaml", overlays_dir.trim_end_matches('/'), stack.name);
    let resolved = Resolver::new(&sources)
        .resolve(&stack.name)
        .map_err(|e| vec![overlay_diagnostic(e, &spec_path)])?;
    let objects = crate::render::render_resolved(&resolved)
        .map_err(|e| vec![Diagnostic::error(None, e.to_string())])?;
    if objects.is_empty() {
        // Never answer with nothing: downstream, no objects means "delete everything".
        return Err(vec![Diagnostic::error(None, "rendered no objects")]);
    }
    Ok(Generated {
        objects,
        warnings: Vec::new(),
    })
}

/// An overlay error as a diagnostic on the BuildkitStack: field paths get the `spec.`
/// prefix; places in the spec itself are dropped (its lines are not the user's), places
/// in parent overlay files are kept.
fn overlay_diagnostic(error: OverlayError, spec_path: &str) -> Diagnostic {
    let in_spec = |location: &str| location == spec_path || location.starts_with(&format!("{spec_path}:"));
    match error {
        OverlayError::Field {
            location,
            field,
            message,
        }
        | OverlayError::Template {
            location,
            field,
            message,
        } => {
            let path = format!("spec.{field}");
            if in_spec(&location) {
                Diagnostic::error(Some(&path), message)
            } else {
                Diagnostic::error(Some(&path), format!("{message} (set in {location})"))
            }
        }
        OverlayError::Name { name, .. } => Diagnostic::error(
            Some("metadata.name"),
            format!(
                "{} is not a DNS-1123 label: metadata.name is the overlay name",
                crate::echo::quote(&name)
            ),
        ),
        OverlayError::MissingParent {
            location,
            parent,
            path,
            chain,
        } => {
            let place = if in_spec(&location) {
                String::new()
            } else {
                format!(" (extended from {location})")
            };
            Diagnostic::error(
                Some("spec.extends"),
                format!("parent overlay {parent:?} not found{place}: there is no {path} (chain: {chain})"),
            )
        }
        OverlayError::Cycle { .. } => Diagnostic::error(Some("spec.extends"), error.to_string()),
        other => Diagnostic::error(
            None,
            other.to_string().replace(spec_path, "the BuildkitStack spec"),
        ),
    }
}

/// The outcome of running the KRM function on a ResourceList.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The list to write to stdout: input items, then generated ones (none on error), and results.
    pub list: ResourceList,
    /// True when any result of this run has severity error: exit non-zero.
    pub failed: bool,
}

/// Run the function: read the functionConfig, call `generate` (load, validate and render
/// the overlay), append the generated objects after the untouched input items.
///
/// On any error the items are returned unchanged, with the errors in `results`.
pub fn process<F>(mut list: ResourceList, generate: F) -> Outcome
where
    F: FnOnce(&Stack) -> Result<Generated, Vec<Diagnostic>>,
{
    let no_config = Value::Null;
    let config = list.function_config.as_ref().unwrap_or(&no_config);
    let (diagnostics, generated) = if config.is_null() {
        let missing = Diagnostic::error(
            Some("functionConfig"),
            format!("is missing: declare a {STACK_API_VERSION} {STACK_KIND} whose spec is an overlay"),
        );
        (vec![missing], None)
    } else {
        match read_stack(config) {
            Err(errors) => (errors, None),
            Ok((stack, mut warnings)) => match generate(&stack) {
                Err(errors) => {
                    warnings.extend(errors);
                    (warnings, None)
                }
                Ok(generated) => {
                    warnings.extend(generated.warnings.iter().cloned());
                    (warnings, Some(generated))
                }
            },
        }
    };
    let reference = (!config.is_null()).then(|| reference(config));
    let mut results: Vec<KrmResult> = diagnostics
        .into_iter()
        .map(|d| to_result(d, reference.as_ref()))
        .collect();
    if let Some(generated) = &generated {
        results.extend(conflicts(&list.items, &generated.objects));
    }
    let failed = results.iter().any(|r| r.severity == Severity::Error);
    if !failed && let Some(generated) = generated {
        list.items.extend(generated.objects.into_iter().map(|o| o.value));
    }
    list.results.extend(results);
    Outcome { list, failed }
}

fn to_result(diagnostic: Diagnostic, reference: Option<&(ResourceRef, Option<File>)>) -> KrmResult {
    KrmResult {
        // Results are printed and passed down the pipeline: capped, never a key.
        message: crate::echo::tidy(&diagnostic.message, None),
        severity: diagnostic.severity,
        resource_ref: reference.map(|(r, _)| r.clone()),
        field: diagnostic.field.map(|path| Field { path }),
        file: reference.and_then(|(_, f)| f.clone()),
    }
}

/// The identity Kustomize keys objects by.
fn identity(value: &Value) -> (String, String, String, String) {
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (
        text("/apiVersion"),
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name"),
    )
}

/// An error for each generated object that an input item already declares: Kustomize
/// would reject the duplicate later with a less helpful message.
fn conflicts(items: &[Value], objects: &[Object]) -> Vec<KrmResult> {
    objects
        .iter()
        .filter(|object| items.iter().any(|item| identity(item) == identity(&object.value)))
        .map(|object| KrmResult {
            message: format!(
                "{} {}{} is generated by kiln but is already among the input items: remove it from the kustomization's resources, or patch the generated one",
                object.kind,
                object.namespace.as_deref().map(|ns| format!("{ns}/")).unwrap_or_default(),
                object.name
            ),
            severity: Severity::Error,
            resource_ref: Some(ResourceRef {
                api_version: object.api_version.clone(),
                kind: object.kind.clone(),
                name: object.name.clone(),
                namespace: object.namespace.clone(),
            }),
            field: None,
            file: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stack_config(spec: Value) -> Value {
        json!({
            "apiVersion": STACK_API_VERSION,
            "kind": STACK_KIND,
            "metadata": {"name": "dev", "annotations": {"internal.config.kubernetes.io/path": "stack.yaml"}},
            "spec": spec,
        })
    }

    fn list_with(config: Option<Value>, items: Vec<Value>) -> ResourceList {
        ResourceList {
            api_version: RESOURCE_LIST_API_VERSION.into(),
            kind: RESOURCE_LIST_KIND.into(),
            items,
            function_config: config,
            results: Vec::new(),
        }
    }

    fn config_map(name: &str) -> Object {
        Object {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: name.into(),
            namespace: Some("buildkit".into()),
            value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "buildkit"}}),
        }
    }

    #[test]
    fn plugin_path_follows_the_kustomize_convention() {
        assert_eq!(
            plugin_relative_path(),
            PathBuf::from("kiln.dev/v1alpha1/buildkitstack/BuildkitStack")
        );
    }

    #[test]
    fn plugin_home_prefers_kustomize_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(default_plugin_home(p("/k"), p("/x"), p("/h")), p("/k"));
        assert_eq!(
            default_plugin_home(None, p("/x"), p("/h")),
            p("/x/kustomize/plugin")
        );
        assert_eq!(
            default_plugin_home(None, None, p("/h")),
            p("/h/.config/kustomize/plugin")
        );
        assert_eq!(default_plugin_home(None, None, None), None);
    }

    #[test]
    fn format_is_detected_from_the_first_character() {
        assert_eq!(Format::detect("  \n{\"a\": 1}"), Format::Json);
        assert_eq!(Format::detect("apiVersion: v1"), Format::Yaml);
        assert_eq!(Format::detect("---\n{}"), Format::Yaml);
    }

    #[test]
    fn generated_objects_follow_the_input_items() {
        let item = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"}});
        let list = list_with(Some(stack_config(json!({}))), vec![item.clone()]);
        let outcome = process(list, |stack| {
            assert_eq!(stack.name, "dev");
            Ok(Generated {
                objects: vec![config_map("a")],
                warnings: Vec::new(),
            })
        });
        assert!(!outcome.failed);
        assert_eq!(outcome.list.items.len(), 2);
        assert_eq!(outcome.list.items[0], item);
        assert_eq!(outcome.list.items[1]["metadata"]["name"], "a");
        assert!(outcome.list.results.is_empty());
    }

    #[test]
    fn generate_errors_become_results_and_keep_the_items() {
        let item = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"}});
        let list = list_with(
            Some(stack_config(json!({"buildkit": {"replicas": -1}}))),
            vec![item.clone()],
        );
        let outcome = process(list, |_| {
            Err(vec![Diagnostic::error(
                Some("spec.buildkit.replicas"),
                "must be at least 1",
            )])
        });
        assert!(outcome.failed);
        assert_eq!(outcome.list.items, vec![item]);
        let result = &outcome.list.results[0];
        assert_eq!(result.severity, Severity::Error);
        assert_eq!(
            result.field.as_ref().map(|f| f.path.as_str()),
            Some("spec.buildkit.replicas")
        );
        assert_eq!(result.file.as_ref().map(|f| f.path.as_str()), Some("stack.yaml"));
        assert_eq!(result.resource_ref.as_ref().map(|r| r.name.as_str()), Some("dev"));
    }

    #[test]
    fn warnings_do_not_fail_the_run() {
        let mut config = stack_config(json!({}));
        config["metadata"]["namespace"] = json!("elsewhere");
        let outcome = process(list_with(Some(config), Vec::new()), |_| {
            Ok(Generated {
                objects: vec![config_map("a")],
                warnings: vec![Diagnostic::warning(None, "heads up")],
            })
        });
        assert!(!outcome.failed);
        assert_eq!(outcome.list.items.len(), 1);
        let severities: Vec<_> = outcome.list.results.iter().map(|r| r.severity).collect();
        assert_eq!(severities, vec![Severity::Warning, Severity::Warning]);
        assert_eq!(
            outcome.list.results[0].field.as_ref().map(|f| f.path.as_str()),
            Some("metadata.namespace")
        );
    }

    #[test]
    fn a_missing_function_config_is_an_error() {
        let outcome = process(list_with(None, Vec::new()), |_| {
            unreachable!("no config, no render")
        });
        assert!(outcome.failed);
        assert_eq!(
            outcome.list.results[0].field.as_ref().map(|f| f.path.as_str()),
            Some("functionConfig")
        );
    }

    #[test]
    fn a_wrong_kind_and_bad_name_are_reported_with_their_fields() {
        let config =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Dev_1"}, "spec": []});
        let errors = read_stack(&config).unwrap_err();
        let fields: Vec<_> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, vec!["apiVersion", "kind", "metadata.name", "spec"]);
    }

    fn stack(spec: Value) -> Stack {
        read_stack(&stack_config(spec)).unwrap().0
    }

    #[test]
    fn generate_renders_the_spec_as_the_named_overlay() {
        let generated = generate(
            &stack(json!({"namespace": "bk-{{overlay}}"})),
            "overlays",
            BTreeMap::new(),
        )
        .unwrap();
        assert!(generated.objects.iter().any(|o| o.kind == "Deployment"));
        assert!(
            generated
                .objects
                .iter()
                .filter_map(|o| o.namespace.as_deref())
                .all(|ns| ns == "bk-dev")
        );
    }

    #[test]
    fn generate_errors_carry_spec_field_paths() {
        let errors = generate(
            &stack(json!({"buildkit": {"replicas": "many"}})),
            "overlays",
            BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(errors[0].field.as_deref(), Some("spec.buildkit.replicas"));
        assert!(
            !errors[0].message.contains("overlays/dev.yaml"),
            "{}",
            errors[0].message
        );
        let errors = generate(&stack(json!({"bogus": 1})), "overlays", BTreeMap::new()).unwrap_err();
        assert_eq!(errors[0].field.as_deref(), Some("spec.bogus"));
    }

    #[test]
    fn generate_resolves_extends_from_the_given_overlays() {
        let parents = BTreeMap::from([(
            "base".to_string(),
            "namespace: from-base\nbuildkit:\n  replicas: 3\n".to_string(),
        )]);
        let generated = generate(&stack(json!({"extends": "base"})), "app/overlays", parents).unwrap();
        let deployment = generated.objects.iter().find(|o| o.kind == "Deployment").unwrap();
        assert_eq!(deployment.namespace.as_deref(), Some("from-base"));
        assert_eq!(deployment.value["spec"]["replicas"], 3);

        let errors = generate(
            &stack(json!({"extends": "nope"})),
            "app/overlays",
            BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(errors[0].field.as_deref(), Some("spec.extends"));
        assert!(
            errors[0].message.contains("app/overlays/nope.yaml"),
            "{}",
            errors[0].message
        );

        let parents = BTreeMap::from([("base".to_string(), "buildkit:\n  port: 99999\n".to_string())]);
        let errors = generate(&stack(json!({"extends": "base"})), "app/overlays", parents).unwrap_err();
        assert_eq!(errors[0].field.as_deref(), Some("spec.buildkit.port"));
        assert!(
            errors[0].message.contains("app/overlays/base.yaml:2"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_generated_object_already_in_the_items_is_an_error() {
        let item = config_map("a").value;
        let outcome = process(
            list_with(Some(stack_config(json!({}))), vec![item.clone()]),
            |_| {
                Ok(Generated {
                    objects: vec![config_map("a")],
                    warnings: Vec::new(),
                })
            },
        );
        assert!(outcome.failed);
        assert_eq!(outcome.list.items, vec![item]);
        assert!(
            outcome.list.results[0]
                .message
                .starts_with("ConfigMap buildkit/a is generated by kiln"),
            "{}",
            outcome.list.results[0].message
        );
    }

    #[test]
    fn yaml_items_round_trip_unchanged() {
        let text = r#"apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: tricky
    annotations:
      internal.config.kubernetes.io/path: cm.yaml
      internal.config.kubernetes.io/index: "0"
      config.kubernetes.io/index: '0'
  data:
    yes: "yes"
    octal: "0777"
    float: "1.0"
    empty: ""
    tilde: "~"
    multi: |
      line one
      line two
    colon: "a: b"
  binaryData: {}
  replicas: 3
  ratio: 1.5
  list: [1, "2", true, null]
"#;
        let (list, format) = parse_resource_list(text, "<stdin>").unwrap();
        assert_eq!(format, Format::Yaml);
        let written = write_resource_list(&list, format).unwrap();
        let (again, _) = parse_resource_list(&written, "<out>").unwrap();
        assert_eq!(again, list);
        assert_eq!(list.items[0]["data"]["octal"], json!("0777"));
        assert_eq!(list.items[0]["data"]["yes"], json!("yes"));
        assert_eq!(list.items[0]["ratio"], json!(1.5));
        assert_eq!(list.items[0]["list"], json!([1, "2", true, null]));
    }

    #[test]
    fn items_read_like_kustomize_and_the_config_like_an_overlay_file() {
        let text = "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems:\n- kind: Secret\n  mode: 0644\n  flag: on\nfunctionConfig:\n  spec:\n    tekton:\n      push: yes\n";
        let (list, _) = parse_resource_list(text, "<stdin>").unwrap();
        assert_eq!(list.items[0]["mode"], json!(420));
        assert_eq!(list.items[0]["flag"], json!("on"));
        let overlay: Value = crate::yaml::from_str("tekton:\n  push: yes\n", "overlay").unwrap();
        assert_eq!(list.function_config.unwrap()["spec"], overlay);
    }

    #[test]
    fn awkward_strings_round_trip() {
        let strings = [
            " leading",
            "trailing ",
            "a # b",
            "- x",
            "*alias",
            "&anchor",
            "!tag",
            "%x",
            "@x",
            "`x",
            "\tx",
            "é ✓",
            "null",
            "Null",
            "~",
            "",
            "[x]",
            "{x}",
            "x: y",
            "multi\nline  \n indented\n",
            ">",
            "|",
            "0644",
            "0o10",
            "0x1F",
            "1e3",
            ".inf",
            "-.NaN",
            "yes",
            "off",
            "2024-01-01",
            "12:30:00",
            "---",
            "...",
            "'quoted'",
            "\"dq\"",
            "back\\slash",
            "\u{7}bell",
            "\r\n",
            " lead\nnext\n",
            "keep\n\n\n",
            "no end\nx",
            "\n",
            "\nleading newline",
            "  two\n spaces\n",
        ];
        let item = json!({"kind": "ConfigMap", "data": strings.iter().enumerate().map(|(i, v)| (format!("k{i}"), json!(v))).collect::<serde_json::Map<_, _>>()});
        let list = list_with(None, vec![item.clone()]);
        let written = write_resource_list(&list, Format::Yaml).unwrap();
        let (back, _) = parse_resource_list(&written, "<out>").unwrap();
        assert_eq!(back.items, vec![item], "{written}");
    }

    #[test]
    fn json_input_is_answered_in_json() {
        let text = r#"{"apiVersion":"config.kubernetes.io/v1","kind":"ResourceList","items":[{"kind":"X","metadata":{"name":"y"}}]}"#;
        let (list, format) = parse_resource_list(text, "<stdin>").unwrap();
        assert_eq!(format, Format::Json);
        let written = write_resource_list(&list, format).unwrap();
        let back: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(back["items"][0]["metadata"]["name"], "y");
    }

    #[test]
    fn a_non_resource_list_is_rejected() {
        let err = parse_resource_list("apiVersion: v1\nkind: List\n", "<stdin>").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected apiVersion config.kubernetes.io/v1")
        );
        let err = parse_resource_list("{", "<stdin>").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to read the ResourceList from <stdin>")
        );
    }
}
