//! Loading overlays: read the files (the only IO here), resolve `extends:`, render templates,
//! read the result into [`Overlay`], validate it, and render the `extra/*.yaml.hbs` manifests.
//!
//! Which files are rendered: every `<dir>/<name>.yaml` except `base.yaml` and files whose
//! name starts with `_`; those are parents only (reachable through `extends:`), though
//! `--overlay base` still renders base on request. A `key: null` in a child resets the key
//! to its default.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::Overlay;
use super::validate::validate;
use crate::echo::{self, quote};
use crate::names::{is_dns1123_label, is_dns1123_subdomain, is_kind, quoted};
use crate::object::Object;
use crate::template::{self, Budget, Dialect, Problem, TemplateError};
use crate::yaml::{self, Node, NodeValue};

/// The name of the embedded overlay used when there is no overlays directory.
pub const DEFAULT_OVERLAY_NAME: &str = "default";

/// The overlay that is a parent only: `load_all` does not render it.
pub const BASE_OVERLAY_NAME: &str = "base";

/// The template variables every string value may use.
pub const TEMPLATE_VARIABLES: &str =
    "overlay, namespace, buildkit.version, buildkit.image, buildkit.serviceName, kiln.version, kiln.image";

/// The fields whose values are template variables themselves: their own templates may use
/// only [`FEEDING_VARIABLES`].
pub const FEEDING_FIELDS: [&str; 5] = [
    "namespace",
    "buildkit.version",
    "buildkit.image",
    "buildkit.serviceName",
    "kiln.image",
];

/// The variables the templates of [`FEEDING_FIELDS`] may use.
pub const FEEDING_VARIABLES: &str = "overlay and kiln.version";

/// The largest overlay file or extra manifest template kiln reads: 1 MiB.
pub const MAX_OVERLAY_BYTES: u64 = 1024 * 1024;

/// One overlay, fully resolved: parents merged, templates rendered, values validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The overlay name: the file name without `.yaml`, or `default`.
    pub name: String,
    /// The settings.
    pub overlay: Overlay,
    /// Where it came from, as written in file headers: `overlays/dev.yaml`, or
    /// `the embedded default overlay`.
    pub source: String,
    /// The `extends:` chain, this overlay first.
    pub chain: Vec<String>,
    /// The objects from `<dir>/<name>/extra/*.yaml.hbs` of every overlay in the chain
    /// (parents first), rendered and validated.
    pub extras: Vec<Object>,
}

/// An overlay that could not be loaded. Every message names the file, and where it can
/// the line and the field.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The directory could not be listed.
    #[error("failed to list overlays in {dir}: {error}")]
    List { dir: PathBuf, error: std::io::Error },
    /// A file could not be read.
    #[error("failed to read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// A file is not valid YAML.
    #[error("failed to parse {path}: {message}")]
    Parse { path: String, message: String },
    /// A file is YAML but not a mapping.
    #[error(
        "failed to load {path}: an overlay must be a YAML mapping of fields (such as `namespace: buildkit`), not {found}"
    )]
    NotMapping { path: String, found: &'static str },
    /// A field has an unknown name, a wrong type or a bad value.
    #[error("failed to load {location}: {field}: {message}")]
    Field {
        location: String,
        field: String,
        message: String,
    },
    /// A template in a string value failed.
    #[error("failed to render the template in {location}: {field}: {message}")]
    Template {
        location: String,
        field: String,
        message: String,
    },
    /// The requested overlay does not exist.
    #[error("failed to find overlay {}: there is no {path} (available: {available})", quote(.name))]
    NotFound {
        name: String,
        path: String,
        available: String,
    },
    /// An overlay name that cannot be a file, a directory and a label value.
    #[error(
        "failed to load {path}: the overlay name {} is not a DNS-1123 label; use a name such as dev or prod-eu", quote(.name)
    )]
    Name { name: String, path: String },
    /// An `extends:` names an overlay that does not exist.
    #[error(
        "failed to resolve extends in {location}: parent overlay {} not found: there is no {path} (chain: {chain})", quote(.parent)
    )]
    MissingParent {
        location: String,
        parent: String,
        path: String,
        chain: String,
    },
    /// `extends:` chains loop.
    #[error("failed to resolve extends in {location}: cycle {chain}; remove one of these extends")]
    Cycle { location: String, chain: String },
    /// An extra manifest is broken.
    #[error("failed to load {path}: {message}")]
    Extra { path: String, message: String },
    /// The directory holds no overlay to render.
    #[error(
        "failed to find overlays in {dir}: add {dir}/<name>.yaml (base.yaml and _*.yaml are parents only)"
    )]
    Empty { dir: String },
}

/// The overlay files of one directory, read into memory.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The directory, as the user named it (for messages).
    dir: String,
    /// The last component of the directory (for file headers, so they do not depend on
    /// where the repository is checked out).
    dir_name: String,
    /// Overlay texts by name.
    files: BTreeMap<String, String>,
    /// Extra manifest templates by overlay name: (file name, text), sorted.
    extras: BTreeMap<String, Vec<(String, String)>>,
    /// True when the directory does not exist and the embedded default is used.
    embedded: bool,
    /// Files that could not be read, by overlay name: reported only when that overlay (or
    /// one that extends it) is resolved, so one broken file does not block the others.
    unreadable: BTreeMap<String, (PathBuf, std::io::ErrorKind, String)>,
    /// `*.yml` files, which are not overlays (overlay files end in `.yaml`).
    ignored: Vec<String>,
}

impl Sources {
    /// Read every overlay file and extra manifest of `dir`. A missing directory gives the
    /// embedded default overlay.
    pub fn read(dir: &Path) -> Result<Self, OverlayError> {
        let mut sources = Self {
            dir: dir.display().to_string(),
            dir_name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            ..Self::default()
        };
        if !dir.exists() {
            sources.embedded = true;
            sources.files.insert(DEFAULT_OVERLAY_NAME.into(), String::new());
            return Ok(sources);
        }
        let list = |d: &Path| -> Result<Vec<PathBuf>, OverlayError> {
            let mut paths = std::fs::read_dir(d)
                .map_err(|error| OverlayError::List {
                    dir: d.to_path_buf(),
                    error,
                })?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| OverlayError::List {
                    dir: d.to_path_buf(),
                    error,
                })?;
            paths.sort();
            Ok(paths)
        };
        let mut unreadable = BTreeMap::new();
        let mut read = |owner: &str, path: &Path| -> String {
            read_source(path).unwrap_or_else(|(kind, message)| {
                unreadable
                    .entry(owner.to_string())
                    .or_insert((path.to_path_buf(), kind, message));
                String::new()
            })
        };
        for path in list(dir)? {
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if file.ends_with(".yml") {
                sources.ignored.push(path.display().to_string());
            } else if let Some(name) = file.strip_suffix(".yaml") {
                sources.files.insert(name.to_string(), read(name, &path));
            } else if path.is_dir() && path.join("extra").is_dir() {
                let mut extras = Vec::new();
                for extra in list(&path.join("extra"))? {
                    if let Some(name) = extra.file_name().and_then(|n| n.to_str())
                        && name.ends_with(".yaml.hbs")
                    {
                        extras.push((name.to_string(), read(file, &extra)));
                    }
                }
                sources.extras.insert(file.to_string(), extras);
            }
        }
        sources.unreadable = unreadable;
        Ok(sources)
    }

    /// Sources held in memory (tests, the KRM function): overlay name → text.
    pub fn from_memory(dir: &str, files: BTreeMap<String, String>) -> Self {
        Self {
            dir: dir.to_string(),
            dir_name: dir.rsplit('/').next().unwrap_or(dir).to_string(),
            files,
            ..Self::default()
        }
    }

    /// Add an extra manifest template for an overlay (tests, the KRM function).
    pub fn add_extra(&mut self, overlay: &str, file_name: &str, text: &str) {
        self.extras
            .entry(overlay.to_string())
            .or_default()
            .push((file_name.to_string(), text.to_string()));
    }

    /// Files that look like overlays but are not read (`*.yml`), for a warning.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The names `resolve_all` renders: every overlay except `base` and `_*`, sorted.
    pub fn rendered_names(&self) -> Vec<String> {
        self.files
            .keys()
            .filter(|n| n.as_str() != BASE_OVERLAY_NAME && !n.starts_with('_'))
            .cloned()
            .collect()
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}.yaml", self.dir.trim_end_matches('/'))
    }

    fn header_source(&self, name: &str) -> String {
        if self.embedded {
            "the embedded default overlay".into()
        } else {
            format!("{}/{name}.yaml", self.dir_name)
        }
    }
}

/// Read `dir` and resolve one overlay by name.
pub fn load(dir: &Path, name: &str) -> Result<Resolved, OverlayError> {
    Resolver::new(&Sources::read(dir)?).resolve(name)
}

/// Read `dir` and resolve every overlay it renders (see the module docs), sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Resolved>, OverlayError> {
    resolve_all(&Sources::read(dir)?)
}

/// Resolve every overlay `sources` renders, sorted by name.
pub fn resolve_all(sources: &Sources) -> Result<Vec<Resolved>, OverlayError> {
    let names = sources.rendered_names();
    if names.is_empty() {
        return Err(OverlayError::Empty {
            dir: sources.dir.clone(),
        });
    }
    let resolver = Resolver::new(sources);
    names.iter().map(|name| resolver.resolve(name)).collect()
}

/// Read one overlay file or template: at most [`MAX_OVERLAY_BYTES`], UTF-8 text. The error
/// is the kind and a message for [`OverlayError::Read`].
fn read_source(path: &Path) -> Result<String, (std::io::ErrorKind, String)> {
    use std::io::Read as _;
    let io = |e: std::io::Error| (e.kind(), e.to_string());
    // Never open a directory, a FIFO or a device (opening a FIFO blocks): say what it is.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let kind = meta.file_type();
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else {
            "a special file"
        };
        return Err((
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}, not a file; rename it or move it out of the overlays directory"),
        ));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    // Read at most one byte past the limit, whatever the size said (the file may grow).
    let mut bytes = Vec::new();
    file.take(MAX_OVERLAY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if size > MAX_OVERLAY_BYTES || bytes.len() as u64 > MAX_OVERLAY_BYTES {
        return Err((
            std::io::ErrorKind::InvalidData,
            format!(
                "it is {} bytes; overlay files and extra templates may be at most {MAX_OVERLAY_BYTES} bytes (1 MiB)",
                size.max(bytes.len() as u64)
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        (
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text (a binary file?); overlays are YAML".to_string(),
        )
    })
}

/// Read one overlay file as `Sources::read` does (at most 1 MiB, UTF-8 text), for callers
/// that collect overlay files themselves (the KRM function's parents).
pub fn read_overlay_file(path: &Path) -> Result<String, OverlayError> {
    read_source(path).map_err(|(kind, message)| OverlayError::Read {
        path: path.to_path_buf(),
        error: std::io::Error::new(kind, message),
    })
}

/// Resolves overlays of one [`Sources`] with kiln's template language ([`crate::template`]):
/// strict (unknown variables are errors) and never escaping (this is YAML, not HTML).
pub struct Resolver<'s> {
    sources: &'s Sources,
}

impl<'s> Resolver<'s> {
    /// A resolver over `sources`.
    pub fn new(sources: &'s Sources) -> Self {
        Self { sources }
    }

    /// Resolve one overlay by name.
    pub fn resolve(&self, name: &str) -> Result<Resolved, OverlayError> {
        if !is_dns1123_label(name) {
            return Err(OverlayError::Name {
                name: name.to_string(),
                path: self.sources.path(name),
            });
        }
        let sources = self.sources;
        if !sources.files.contains_key(name) {
            return Err(OverlayError::NotFound {
                name: name.to_string(),
                path: sources.path(name),
                available: sources.rendered_names().join(", "),
            });
        }

        // Walk the chain leaf first; `paths[i]` is the file of `Node::source == i`.
        let mut chain: Vec<String> = Vec::new();
        let mut paths: Vec<String> = Vec::new();
        let mut trees: Vec<Node> = Vec::new();
        let mut next = Some(name.to_string());
        // The `extends:` that led to `next`, named when it closes a cycle.
        let mut via = String::new();
        let mut visited: HashSet<String> = HashSet::new();
        while let Some(current) = next.take() {
            if !visited.insert(current.clone())
                && let Some(pos) = chain.iter().position(|c| *c == current)
            {
                let mut cycle = chain[pos..].to_vec();
                cycle.push(current);
                return Err(OverlayError::Cycle {
                    location: via,
                    chain: cycle.join(" -> "),
                });
            }
            let path = if sources.embedded {
                sources.header_source(&current)
            } else {
                sources.path(&current)
            };
            if let Some((path, kind, message)) = sources.unreadable.get(&current) {
                return Err(OverlayError::Read {
                    path: path.clone(),
                    error: std::io::Error::new(*kind, message.clone()),
                });
            }
            let text = sources
                .files
                .get(&current)
                .map(String::as_str)
                .unwrap_or_default();
            let tree = parse_overlay(text, &path, trees.len())?;
            if let Some(extends) = tree.get("extends") {
                let location = location(&path, extends.line);
                let parent = extends.as_str().ok_or_else(|| OverlayError::Field {
                    location: location.clone(),
                    field: "extends".into(),
                    message: "must be the name of a parent overlay, such as base".into(),
                })?;
                // Parents may be `_name` files; anything else cannot name one (and is not echoed whole).
                if !is_dns1123_label(parent.trim_start_matches('_')) {
                    return Err(OverlayError::Field {
                        location,
                        field: "extends".into(),
                        message: format!(
                            "{} is not an overlay name: name a parent overlay file without .yaml, such as base",
                            quote(parent)
                        ),
                    });
                }
                if !sources.files.contains_key(parent) {
                    let mut shown = chain.clone();
                    shown.push(current.clone());
                    shown.push(parent.to_string());
                    return Err(OverlayError::MissingParent {
                        location,
                        parent: parent.to_string(),
                        path: sources.path(parent),
                        chain: shown.join(" -> "),
                    });
                }
                next = Some(parent.to_string());
                via = location;
            }
            chain.push(current);
            paths.push(path);
            trees.push(tree);
        }

        let mut merged = Node::new(NodeValue::Map(Vec::new()), 0);
        for tree in trees.into_iter().rev() {
            merge(&mut merged, tree);
        }
        if let NodeValue::Map(entries) = &mut merged.value {
            entries.retain(|e| e.key != "extends");
        }

        // One budget for every template of this overlay: many small templates cannot add
        // up to an unbounded output.
        let mut budget = Budget::default();
        let context = self.context(name, &merged, &paths, &mut budget)?;
        self.render_strings(&mut merged, "", &context, &paths, &mut budget)?;

        let mut overlay: Overlay = merged.deserialize().map_err(|e| {
            let (source, line, field) = e.at.unwrap_or_default();
            // A key that moved, or that kiln sets itself, says so instead of listing the others.
            let message = match super::field_hint(&field) {
                Some(hint) if e.message.starts_with("unknown field") => hint,
                _ => e.message,
            };
            OverlayError::Field {
                location: location(source_path(&paths, source), line),
                field: echo::field_path(&field),
                message,
            }
        })?;
        overlay.extends = chain.get(1).cloned();

        if let Some(problem) = validate(&overlay).into_iter().next() {
            let (path, line) = provenance(&merged, &problem.field, &paths);
            // The checks quote values with `{:?}`: capped here, in one place.
            return Err(OverlayError::Field {
                location: location(&path, line),
                field: echo::field_path(&problem.field),
                message: echo::tidy(&problem.message, None),
            });
        }

        let mut extras = Vec::new();
        for overlay_name in chain.iter().rev() {
            for (file, text) in sources.extras.get(overlay_name).into_iter().flatten() {
                let path = format!(
                    "{}/{overlay_name}/extra/{file}",
                    sources.dir.trim_end_matches('/')
                );
                extras.extend(self.extra(&path, text, &context, &mut budget)?);
            }
        }

        Ok(Resolved {
            name: name.to_string(),
            overlay,
            source: sources.header_source(name),
            chain,
            extras,
        })
    }

    /// The template context: the overlay name, kiln's version, and the few values other
    /// strings may refer to (themselves rendered with the overlay name and kiln version only).
    fn context(
        &self,
        name: &str,
        merged: &Node,
        paths: &[String],
        budget: &mut Budget,
    ) -> Result<serde_json::Value, OverlayError> {
        let defaults = Overlay::default();
        let base = json!({ "overlay": name, "kiln": { "version": crate::VERSION } });
        let fallback = [
            defaults.namespace,
            defaults.buildkit.version,
            defaults.buildkit.image,
            defaults.buildkit.service_name,
            defaults.kiln.image,
        ];
        let mut values = Vec::new();
        for (field, default) in FEEDING_FIELDS.iter().zip(fallback) {
            let value = match merged.get_path(field) {
                Some(node) => match node.as_str() {
                    Some(text) => self.template(text, &base, field, node, paths, budget)?,
                    // A wrong type is reported with its line by the typed read that follows.
                    None => default,
                },
                None => default,
            };
            values.push(value);
        }
        let [namespace, version, image, service_name, kiln_image] =
            <[String; 5]>::try_from(values).unwrap_or_default();
        Ok(json!({
            "overlay": name,
            "namespace": namespace,
            "buildkit": {
                "version": version,
                "image": image,
                "serviceName": service_name,
            },
            "kiln": {
                "version": crate::VERSION,
                "image": kiln_image,
            },
        }))
    }

    /// Render one overlay string value (variables only).
    fn template(
        &self,
        text: &str,
        context: &serde_json::Value,
        field: &str,
        node: &Node,
        paths: &[String],
        budget: &mut Budget,
    ) -> Result<String, OverlayError> {
        if !template::is_template(text) {
            return Ok(text.to_string());
        }
        template::render(text, context, Dialect::Value, budget).map_err(|e| OverlayError::Template {
            location: location(source_path(paths, node.source), node.line),
            field: echo::field_path(field),
            message: value_template_message(&e, field, text),
        })
    }

    fn render_strings(
        &self,
        node: &mut Node,
        field: &str,
        context: &serde_json::Value,
        paths: &[String],
        budget: &mut Budget,
    ) -> Result<(), OverlayError> {
        match &mut node.value {
            NodeValue::String(text) if template::is_template(text) => {
                let rendered = {
                    let probe = Node {
                        value: NodeValue::Null,
                        line: node.line,
                        source: node.source,
                    };
                    self.template(text, context, field, &probe, paths, budget)?
                };
                node.value = NodeValue::String(rendered);
            }
            NodeValue::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.render_strings(item, &format!("{field}[{i}]"), context, paths, budget)?;
                }
            }
            NodeValue::Map(entries) => {
                for entry in entries {
                    let child = if field.is_empty() {
                        entry.key.clone()
                    } else {
                        format!("{field}.{}", entry.key)
                    };
                    self.render_strings(&mut entry.value, &child, context, paths, budget)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Render, parse and check one extra manifest file.
    fn extra(
        &self,
        path: &str,
        text: &str,
        context: &serde_json::Value,
        budget: &mut Budget,
    ) -> Result<Vec<Object>, OverlayError> {
        let err = |message: String| OverlayError::Extra {
            path: path.to_string(),
            message,
        };
        let rendered =
            template::render(text, context, Dialect::Manifest, budget).map_err(|e| OverlayError::Extra {
                path: format!("{path}:{}:{}", e.line, e.column),
                message: format!("template error: {}", manifest_template_message(&e)),
            })?;
        let docs: Vec<serde_json::Value> =
            yaml::from_str_multi(&rendered, path).map_err(|e| err(yaml_message(&e)))?;
        let mut objects = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let n = i + 1;
            if !doc.is_object() {
                return Err(err(format!(
                    "document {n} must be a Kubernetes object (a mapping), not {}",
                    json_kind(&doc)
                )));
            }
            let text_at = |pointer: &str| {
                doc.pointer(pointer)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            };
            let Some(api_version) = text_at("/apiVersion") else {
                return Err(err(format!("document {n} has no apiVersion")));
            };
            let Some(kind) = text_at("/kind") else {
                return Err(err(format!("document {n} has no kind")));
            };
            if !is_kind(kind) {
                return Err(err(format!(
                    "document {n}: kind {} is not a Kubernetes kind: a letter, then letters, digits or '-', at most 63 characters",
                    quoted(kind)
                )));
            }
            let Some(name) = text_at("/metadata/name") else {
                return Err(err(format!("document {n} ({kind}) has no metadata.name")));
            };
            if !is_dns1123_subdomain(name) {
                return Err(err(format!(
                    "document {n}: {kind} name {} is not a valid DNS-1123 name",
                    quote(name)
                )));
            }
            let namespace = match doc.pointer("/metadata/namespace") {
                None => None,
                Some(v) => match v.as_str() {
                    Some(ns) if is_dns1123_label(ns) => Some(ns.to_string()),
                    _ => {
                        return Err(err(format!(
                            "document {n}: {kind} {name}: metadata.namespace must be a DNS-1123 label"
                        )));
                    }
                },
            };
            let (api_version, kind, name) = (api_version.to_string(), kind.to_string(), name.to_string());
            let mut doc = doc;
            stamp(&mut doc, &context["overlay"], &context["buildkit"]["version"]);
            objects.push(Object {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                name: name.to_string(),
                namespace,
                value: doc,
            });
        }
        Ok(objects)
    }
}

/// Give an extra manifest kiln's recommended labels and the generated-by annotation, without
/// overriding any the user set.
fn stamp(doc: &mut serde_json::Value, overlay: &serde_json::Value, version: &serde_json::Value) {
    let Some(metadata) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
        return;
    };
    let mut add = |section: &str, entries: [(&str, serde_json::Value); 1]| {
        let map = metadata.entry(section).or_insert_with(|| json!({}));
        if let Some(map) = map.as_object_mut() {
            for (key, value) in entries {
                map.entry(key).or_insert(value);
            }
        }
    };
    add(
        "annotations",
        [("kiln.dev/generated-by", json!(format!("kiln {}", crate::VERSION)))],
    );
    for (key, value) in [
        ("app.kubernetes.io/instance", overlay.clone()),
        ("app.kubernetes.io/version", version.clone()),
        ("app.kubernetes.io/part-of", json!("kiln")),
        ("app.kubernetes.io/managed-by", json!("kiln")),
    ] {
        add("labels", [(key, value)]);
    }
}

/// Parse one overlay file into a tree whose every node carries `source`.
fn parse_overlay(text: &str, path: &str, source: usize) -> Result<Node, OverlayError> {
    let tree = yaml::parse_tree(text, path, source).map_err(|e| OverlayError::Parse {
        path: path.to_string(),
        message: yaml_message(&e),
    });
    // An empty file (or only comments) is an empty overlay.
    let tree = match tree {
        Ok(tree) => tree,
        Err(_)
            if text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---") =>
        {
            Node::new(NodeValue::Map(Vec::new()), source)
        }
        Err(e) => return Err(e),
    };
    let found = match tree.value {
        NodeValue::Map(_) => return Ok(tree),
        NodeValue::Null => return Ok(Node::new(NodeValue::Map(Vec::new()), source)),
        NodeValue::Seq(_) => "a list",
        NodeValue::String(_) => "a string",
        NodeValue::Number(_) => "a number",
        NodeValue::Bool(_) => "a boolean",
    };
    Err(OverlayError::NotMapping {
        path: path.to_string(),
        found,
    })
}

/// Deep merge: maps merge key by key, everything else (lists included) is replaced, and
/// `null` removes the key so the default applies. Linear in the size of both trees: keys
/// are found through an index, not by scanning.
fn merge(base: &mut Node, over: Node) {
    match (&mut base.value, over.value) {
        (NodeValue::Map(base_entries), NodeValue::Map(over_entries)) => {
            let mut slots: Vec<Option<yaml::Entry>> =
                std::mem::take(base_entries).into_iter().map(Some).collect();
            let mut index: HashMap<String, usize> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().map(|e| (e.key.clone(), i)))
                .collect();
            for entry in over_entries {
                let existing = index.get(&entry.key).copied();
                match (existing, &entry.value.value) {
                    (Some(i), NodeValue::Null) => {
                        slots[i] = None;
                        index.remove(&entry.key);
                    }
                    (None, NodeValue::Null) => {}
                    (Some(i), _) => {
                        if let Some(slot) = slots[i].as_mut() {
                            slot.line = entry.line;
                            merge(&mut slot.value, entry.value);
                        }
                    }
                    (None, _) => {
                        index.insert(entry.key.clone(), slots.len());
                        slots.push(Some(entry));
                    }
                }
            }
            *base_entries = slots.into_iter().flatten().collect();
            base.line = over.line;
            base.source = over.source;
        }
        (_, value) => {
            *base = Node {
                value,
                line: over.line,
                source: over.source,
            }
        }
    }
}

/// The file of `Node::source == source` (clamped to the last file of the chain).
fn source_path(paths: &[String], source: usize) -> &str {
    paths.get(source).or(paths.last()).map_or("", String::as_str)
}

/// The file and line that set a dotted field such as `tenants[1].namespace` (or its closest
/// parent that a file set; the leaf file when only defaults apply).
fn provenance(merged: &Node, field: &str, paths: &[String]) -> (String, u64) {
    let mut node = None;
    let mut current = merged;
    'path: for segment in field.split('.') {
        let mut parts = segment.split('[');
        let key = parts.next().unwrap_or(segment);
        match current.get(key) {
            Some(child) => {
                current = child;
                node = Some(child);
            }
            None => break,
        }
        // `[i]` suffixes index into sequences.
        for index in parts {
            let item = index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| match &current.value {
                    NodeValue::Seq(items) => items.get(i),
                    _ => None,
                });
            match item {
                Some(child) => {
                    current = child;
                    node = Some(child);
                }
                None => break 'path,
            }
        }
    }
    match node {
        Some(n) => (source_path(paths, n.source).to_string(), n.line),
        None => (source_path(paths, 0).to_string(), 0),
    }
}

fn location(path: &str, line: u64) -> String {
    if line == 0 {
        path.to_string()
    } else {
        format!("{path}:{line}")
    }
}

/// The message for a failed overlay value template. A field that feeds a variable may use
/// only [`FEEDING_VARIABLES`]; the message says so instead of offering the others.
fn value_template_message(e: &TemplateError, field: &str, text: &str) -> String {
    let message = match &e.problem {
        Problem::UnknownVariable(var) if FEEDING_FIELDS.contains(&field) => {
            if is_variable(var) {
                format!(
                    "`{var}` cannot be used here: fields that feed template variables ({}) may use only {FEEDING_VARIABLES}",
                    FEEDING_FIELDS.join(", ")
                )
            } else {
                format!("unknown variable `{var}` (available here: {FEEDING_VARIABLES})")
            }
        }
        Problem::UnknownVariable(var) => {
            format!("unknown variable `{var}` (available: {TEMPLATE_VARIABLES})")
        }
        Problem::Other(message) if text.contains('\n') => {
            format!("{message} (line {} column {} of the value)", e.line, e.column)
        }
        Problem::Other(message) => format!("{message} (column {} of the value)", e.column),
    };
    crate::echo::tidy(&message, None)
}

/// The message for a failed extra manifest template.
fn manifest_template_message(e: &TemplateError) -> String {
    let message = match &e.problem {
        Problem::UnknownVariable(var) => {
            format!("unknown variable `{var}` (available: {TEMPLATE_VARIABLES})")
        }
        Problem::Other(message) => message.clone(),
    };
    crate::echo::tidy(&message, None)
}

/// True for one of the [`TEMPLATE_VARIABLES`].
fn is_variable(name: &str) -> bool {
    TEMPLATE_VARIABLES.split(", ").any(|v| v == name)
}

fn yaml_message(e: &yaml::YamlError) -> String {
    match e {
        yaml::YamlError::Parse { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> Sources {
        Sources::from_memory(
            "overlays",
            files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        )
    }

    fn err(files: &[(&str, &str)], name: &str) -> String {
        Resolver::new(&sources(files))
            .resolve(name)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn extends_merges_maps_and_replaces_lists() {
        let s = sources(&[
            (
                "base",
                "buildkit:\n  replicas: 2\n  extraArgs: [--a, --b]\n  nodeSelector:\n    a: x\n",
            ),
            (
                "dev",
                "extends: base\nbuildkit:\n  extraArgs: [--c]\n  nodeSelector:\n    b: z\n",
            ),
        ]);
        let r = Resolver::new(&s).resolve("dev").unwrap();
        assert_eq!(r.overlay.buildkit.replicas, 2);
        assert_eq!(r.overlay.buildkit.extra_args, ["--c"]);
        assert_eq!(r.overlay.buildkit.node_selector.len(), 2);
        assert_eq!(r.chain, ["dev", "base"]);
        assert_eq!(r.overlay.extends.as_deref(), Some("base"));
        assert_eq!(r.source, "overlays/dev.yaml");
    }

    #[test]
    fn null_resets_to_default() {
        let s = sources(&[
            ("base", "buildkit:\n  replicas: 5\n"),
            ("dev", "extends: base\nbuildkit:\n  replicas: null\n"),
        ]);
        assert_eq!(
            Resolver::new(&s)
                .resolve("dev")
                .unwrap()
                .overlay
                .buildkit
                .replicas,
            1
        );
    }

    #[test]
    fn templates_render_with_context() {
        let s = sources(&[(
            "dev",
            "namespace: buildkit-{{overlay}}\ncommonLabels:\n  ns: \"{{namespace}}\"\n  v: \"{{buildkit.version}}\"\n",
        )]);
        let r = Resolver::new(&s).resolve("dev").unwrap();
        assert_eq!(r.overlay.namespace, "buildkit-dev");
        assert_eq!(r.overlay.common_labels["ns"], "buildkit-dev");
        assert_eq!(
            r.overlay.common_labels["v"],
            crate::overlay::DEFAULT_BUILDKIT_VERSION
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(
            &[("base", "buildkit:\n  bogus: 1\n"), ("dev", "extends: base\n")],
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/base.yaml:2: buildkit.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = err(&[("dev", "buildkit:\n  replicas: -3\n")], "dev");
        assert_eq!(
            e,
            "failed to load overlays/dev.yaml:2: buildkit.replicas: must be 0 or more, got -3"
        );
        let e = err(&[("dev", "buildkit:\n  replicas: lots\n")], "dev");
        assert!(
            e.starts_with(
                "failed to load overlays/dev.yaml:2: buildkit.replicas: invalid type: string \"lots\""
            ),
            "{e}"
        );
        let e = err(&[("dev", "namespace: Bad_NS\n")], "dev");
        assert!(
            e.starts_with(
                "failed to load overlays/dev.yaml:1: namespace: \"Bad_NS\" is not a valid DNS-1123 label"
            ),
            "{e}"
        );
        let e = err(&[("dev", "buildkit:\n  mode: turbo\n")], "dev");
        assert!(
            e.contains(
                "overlays/dev.yaml:2: buildkit.mode: unknown variant `turbo`, expected one of `rootless`"
            ),
            "{e}"
        );
        let e = err(&[("dev", "certs:\n  validity: 90 days\n")], "dev");
        assert!(
            e.contains("overlays/dev.yaml:2: certs.validity: invalid duration \"90 days\""),
            "{e}"
        );
        let e = err(&[("dev", "certs:\n  validity: 10y\n")], "dev");
        assert!(e.contains("overlays/dev.yaml:2: certs.validity: the leaf validity 10y must be shorter than certs.caValidity 5y"), "{e}");
        let e = err(&[("dev", "rotation:\n  schedule: every night\n")], "dev");
        assert!(
            e.contains("overlays/dev.yaml:2: rotation.schedule: \"every night\" is not a cron schedule"),
            "{e}"
        );
    }

    #[test]
    fn value_errors_name_the_file_that_set_the_value() {
        let e = err(
            &[
                ("base", "# comment\nbuildkit:\n  serviceName: Build_Kit\n"),
                ("dev", "extends: base\nnamespace: ok\n"),
            ],
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/base.yaml:3: buildkit.serviceName: \"Build_Kit\""),
            "{e}"
        );
        // The child's value wins, so the child is named.
        let e = err(
            &[
                ("base", "certs:\n  caValidity: 1y\n"),
                ("dev", "extends: base\ncerts:\n  validity: 2y\n"),
            ],
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:3: certs.validity: the leaf validity 2y"),
            "{e}"
        );
        // Rendered templates keep their place.
        let e = err(&[("dev", "\nnamespace: \"Ns-{{overlay}}\"\n")], "dev");
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:2: namespace: \"Ns-dev\""),
            "{e}"
        );
    }

    #[test]
    fn tenant_errors_name_the_line_of_the_entry() {
        fn files(text: &str) -> [(&str, &str); 2] {
            [("base", "namespace: farm\n"), ("dev", text)]
        }
        let e = err(
            &files("extends: base\ntenants:\n  - namespace: team-a\n  - namespace: Team_B\n"),
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:4: tenants[1].namespace: \"Team_B\" is not a valid DNS-1123 label"),
            "{e}"
        );
        let e = err(
            &files(
                "extends: base\ntenants:\n  - namespace: team-a\n    task: false\n  - namespace: team-a\n",
            ),
            "dev",
        );
        assert_eq!(
            e,
            "failed to load overlays/dev.yaml:5: tenants[1].namespace: \"team-a\" is listed twice; list each tenant namespace once"
        );
        let e = err(&files("extends: base\ntenants:\n\n  - namespace: farm\n"), "dev");
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:4: tenants[0].namespace: \"farm\" is the farm's own namespace"),
            "{e}"
        );
        // A template is rendered before the checks, and keeps its line.
        let e = err(
            &files("extends: base\ntenants:\n  - namespace: \"{{namespace}}\"\n"),
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:3: tenants[0].namespace:"),
            "{e}"
        );
        // Typed errors name the entry's line too.
        let e = err(&files("tenants:\n  - namespace: a\n    tsk: false\n"), "dev");
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:3: tenants[0].tsk: unknown field `tsk`"),
            "{e}"
        );
        let e = err(&files("tenants:\n  - {}\n"), "dev");
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:2: tenants[0]"),
            "{e}"
        );
        assert!(e.contains("missing field `namespace`"), "{e}");
        let e = err(&files("tenants: team-a\n"), "dev");
        assert!(
            e.starts_with("failed to load overlays/dev.yaml:1: tenants:"),
            "{e}"
        );
        // A parent's tenants are named in the parent's file.
        let e = err(
            &[
                ("base", "tenants:\n  - namespace: ok\n  - namespace: \"-bad\"\n"),
                ("dev", "extends: base\n"),
            ],
            "dev",
        );
        assert!(
            e.starts_with("failed to load overlays/base.yaml:3: tenants[1].namespace:"),
            "{e}"
        );
        // And a good list loads, in order.
        let s = sources(&files(
            "extends: base\ntenants:\n  - namespace: team-b\n  - namespace: team-a\n    task: false\n",
        ));
        let overlay = Resolver::new(&s).resolve("dev").unwrap().overlay;
        assert_eq!(
            overlay.tenant_namespaces().collect::<Vec<_>>(),
            ["farm", "team-b", "team-a"]
        );
        assert!(overlay.tenants[0].task && !overlay.tenants[1].task);
    }

    #[test]
    fn extends_errors_name_the_chain() {
        let e = err(
            &[
                ("a", "extends: b\n"),
                ("b", "extends: c\n"),
                ("c", "extends: a\n"),
            ],
            "a",
        );
        assert_eq!(
            e,
            "failed to resolve extends in overlays/c.yaml:1: cycle a -> b -> c -> a; remove one of these extends"
        );
        let e = err(&[("dev", "extends: base\n"), ("base", "extends: nope\n")], "dev");
        assert_eq!(
            e,
            "failed to resolve extends in overlays/base.yaml:1: parent overlay \"nope\" not found: there is no overlays/nope.yaml (chain: dev -> base -> nope)"
        );
    }

    #[test]
    fn template_errors_are_strict() {
        let e = err(&[("dev", "namespace: \"{{nope}}\"\n")], "dev");
        assert!(
            e.starts_with(
                "failed to render the template in overlays/dev.yaml:1: namespace: unknown variable `nope`"
            ),
            "{e}"
        );
        let e = err(&[("dev", "commonLabels:\n  a: \"{{#if}}\"\n")], "dev");
        assert!(
            e.starts_with("failed to render the template in overlays/dev.yaml:2: commonLabels.a:"),
            "{e}"
        );
    }

    #[test]
    fn not_a_mapping_and_empty_files() {
        let e = err(&[("dev", "- a\n- b\n")], "dev");
        assert!(
            e.contains("overlays/dev.yaml: an overlay must be a YAML mapping"),
            "{e}"
        );
        assert!(e.ends_with("not a list"), "{e}");
        let s = sources(&[("dev", "# nothing yet\n")]);
        assert_eq!(
            Resolver::new(&s).resolve("dev").unwrap().overlay.namespace,
            "buildkit"
        );
    }

    #[test]
    fn base_and_underscore_files_are_parents_only() {
        let s = sources(&[("base", ""), ("_common", ""), ("dev", ""), ("prod", "")]);
        assert_eq!(s.rendered_names(), ["dev", "prod"]);
        let names: Vec<_> = resolve_all(&s).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["dev", "prod"]);
        assert!(
            resolve_all(&sources(&[("base", "")]))
                .unwrap_err()
                .to_string()
                .contains("failed to find overlays")
        );
    }

    #[test]
    fn extras_are_rendered_and_checked() {
        let mut s = sources(&[
            ("base", ""),
            ("dev", "extends: base\nnamespace: ns-{{overlay}}\n"),
        ]);
        s.add_extra("base", "cm.yaml.hbs", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{overlay}}\n  namespace: \"{{namespace}}\"\n---\n");
        s.add_extra(
            "dev",
            "quota.yaml.hbs",
            "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: q\n",
        );
        let r = Resolver::new(&s).resolve("dev").unwrap();
        let names: Vec<_> = r
            .extras
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(names, [("ConfigMap", "cm-dev"), ("ResourceQuota", "q")]);
        assert_eq!(r.extras[0].namespace.as_deref(), Some("ns-dev"));

        let mut s = sources(&[("dev", "")]);
        s.add_extra("dev", "bad.yaml.hbs", "apiVersion: v1\nkind: ConfigMap\n");
        let e = Resolver::new(&s).resolve("dev").unwrap_err().to_string();
        assert_eq!(
            e,
            "failed to load overlays/dev/extra/bad.yaml.hbs: document 1 (ConfigMap) has no metadata.name"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(err(&[("dev", "")], "../x").contains("the overlay name \"../x\" is not a DNS-1123 label"));
        assert!(err(&[("dev", "")], "prod").contains("there is no overlays/prod.yaml (available: dev)"));
    }
}
