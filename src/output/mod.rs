//! Laying rendered objects out as files, and writing the tree atomically.
//!
//! [`layout`] and [`stream`] are pure: objects in, file contents out; every file name goes
//! through [`path::FilePath`], the one place names are made. [`write`] and [`check`] are the
//! IO edge; [`replace_dir`] is the one atomic directory writer, for render's tree and for
//! `kiln certs generate`. kiln records the files it wrote, with the hash of each, in
//! `<out>/.kiln-manifest` ([`manifest`]), so a later render removes the files it no longer
//! renders while they are as it wrote them, and never touches anything else.
//!
//! Layout of `<out>/`:
//! - `<overlay>/<kind>-<name>.yaml`, one per object, and `<overlay>/kustomization.yaml`;
//!   an object in a namespace other than the overlay's (a tenant's) goes to
//!   `<overlay>/<namespace>/<kind>-<name>.yaml`;
//! - `argocd/<overlay>.yaml`: the overlay's Argo CD Application (flavor argocd);
//! - `flux/kustomization-<overlay>.yaml` and `flux/gitrepository.yaml` (flavor flux).
//!
//! One flavor's files replace another's: a full render with `--gitops flux` removes the
//! `argocd/` files of the overlays it renders (two controllers must not both apply them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::object::Object;
use crate::overlay::{Flavor, Resolved};
use crate::render::gitops;
use crate::yaml;

pub mod manifest;
pub mod path;
mod swap;
mod write;

pub use path::FilePath;
pub use swap::{Access, Stage, interrupted, name_and_parent, recover, replace_dir};
pub use write::{Drift, WriteReport, check, write};

/// The file listing what kiln wrote, relative to the output directory.
pub const MANIFEST: &str = ".kiln-manifest";
/// Every file kiln renders starts with this.
pub const HEADER_PREFIX: &str = "# Rendered by kiln ";
/// Overlay names that would collide with the GitOps directories.
pub const RESERVED_NAMES: &[&str] = &["argocd", "flux"];

/// The one-line header of a file rendered from `source`.
pub fn header(source: &str) -> String {
    format!(
        "{HEADER_PREFIX}{} from {source}. Do not edit: run kiln render.\n",
        crate::VERSION
    )
}

/// One overlay's render, ready to be laid out.
#[derive(Debug, Clone)]
pub struct Unit<'a> {
    /// The overlay.
    pub resolved: &'a Resolved,
    /// Its objects (render's, then the extras), in apply order.
    pub objects: Vec<Object>,
    /// The GitOps flavor to lay it out for.
    pub flavor: Flavor,
}

/// The files of one render, in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// File contents by path relative to the output directory.
    pub files: BTreeMap<FilePath, String>,
    /// The overlays this render covers: kiln files of other overlays are kept as they are.
    /// `None`: every overlay (a full render), so files of deleted overlays are removed.
    pub scope: Option<BTreeSet<String>>,
}

/// A render that could not be laid out or written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An object could not be written as YAML.
    #[error("failed to write {file} as YAML: {error}")]
    Yaml { file: String, error: yaml::YamlError },
    /// An object's kind, name or namespace cannot name a file.
    #[error(
        "failed to lay out overlay {overlay} ({source_file}): {error}; fix the manifest that declares it"
    )]
    Name {
        overlay: String,
        source_file: String,
        error: path::NameError,
    },
    /// A name that cannot be part of a file name.
    #[error("failed to lay out {what}: {error}")]
    Path { what: String, error: path::PathError },
    /// Two overlays render the same object.
    #[error(
        "failed to lay out overlay {second}: overlay {first} renders {object} too, and two overlays cannot own one object; \
         give one of them another name or namespace (for a tenant namespace that two farms share: a certs.secrets.client \
         and tekton.name of its own, or task: false)"
    )]
    Shared {
        object: String,
        first: String,
        second: String,
    },
    /// Two objects map to one file.
    #[error("failed to lay out {file}: two objects render to it ({first} and {second}); rename one")]
    Collision {
        file: String,
        first: String,
        second: String,
    },
    /// An overlay name that is also a GitOps directory.
    #[error(
        "failed to lay out overlay {name:?}: the name is reserved for the {name}/ directory; rename the overlay file"
    )]
    Reserved { name: String },
    /// Flux overlays that disagree on the repository their Kustomizations read.
    #[error(
        "failed to lay out flux/gitrepository.yaml: overlays {first} and {second} set different gitops.repoURL or gitops.revision; the flux layout reads one repository"
    )]
    FluxSource { first: String, second: String },
    /// Nothing to write.
    #[error("failed to render: no objects (every overlay is empty)")]
    Empty,
    /// Something kiln did not write is in the way of a file it renders.
    #[error("failed to write {path}: {reason}; move it away")]
    Foreign { path: PathBuf, reason: &'static str },
    /// The output directory is a repository root, or not a directory.
    #[error("failed to use {path} as the output directory: {reason}")]
    BadOut { path: PathBuf, reason: &'static str },
    /// The staging directory beside the output directory could not be created.
    #[error("failed to create {path}: is {parent} a writable directory?: {error}")]
    Stage {
        path: PathBuf,
        parent: PathBuf,
        error: std::io::Error,
    },
    /// A filesystem step failed.
    #[error("failed to {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + use<> {
    let path = path.to_path_buf();
    move |error| OutputError::Io { action, path, error }
}

fn document<T: serde::Serialize>(file: &str, source: &str, value: &T) -> Result<String, OutputError> {
    let body = yaml::to_string(value).map_err(|error| OutputError::Yaml {
        file: file.to_string(),
        error,
    })?;
    Ok(format!("{}{body}", header(source)))
}

/// A path made of `parts`, or an error naming `what` the parts came from.
fn file_path(what: impl FnOnce() -> String, parts: &[&str]) -> Result<FilePath, OutputError> {
    FilePath::new(parts).map_err(|error| OutputError::Path { what: what(), error })
}

/// The files of one object inside its overlay's directory, checked: see [`path::object_file`].
fn object_parts(unit: &Unit, object: &Object) -> Result<Vec<String>, OutputError> {
    let r = unit.resolved;
    path::object_file(object, &r.overlay.namespace).map_err(|error| OutputError::Name {
        overlay: r.name.clone(),
        source_file: r.source.clone(),
        error,
    })
}

/// Join a repository path and an overlay name: `rendered` + `dev` → `rendered/dev`.
fn join_path(base: &str, name: &str) -> String {
    let base = base.trim_start_matches("./").trim_end_matches('/');
    if base.is_empty() || base == "." {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// Lay the units out as files. `default_path` is the path of the output directory inside the
/// repository, used where an overlay leaves `gitops.path` empty.
pub fn layout(
    units: &[Unit],
    default_path: &str,
    scope: Option<BTreeSet<String>>,
) -> Result<Tree, OutputError> {
    let mut builder = Layout::new(default_path);
    for unit in units {
        builder.add(unit)?;
    }
    builder.finish(scope)
}

/// Lays units out one at a time, so a large render holds only text, never every overlay's
/// objects at once.
#[derive(Debug, Default)]
pub struct Layout {
    default_path: String,
    files: BTreeMap<FilePath, String>,
    /// The first flux overlay: (name, overlay), the GitRepository's settings.
    flux_source: Option<(String, crate::overlay::Overlay)>,
    /// The sources of every flux overlay, for the GitRepository's header.
    flux_sources: Vec<String>,
    objects: usize,
    /// The overlays added so far, in order.
    overlays: Vec<String>,
    /// Which of them renders each object, by `Kind namespace/name` (only looked up, never
    /// iterated, so a hash map keeps the output deterministic).
    owners: std::collections::HashMap<String, usize>,
}

impl Layout {
    /// An empty layout; see [`layout`] for `default_path`.
    pub fn new(default_path: &str) -> Self {
        Self {
            default_path: default_path.to_string(),
            ..Self::default()
        }
    }

    /// Add one overlay's files.
    pub fn add(&mut self, unit: &Unit) -> Result<(), OutputError> {
        let name = unit.resolved.name.as_str();
        let source = &unit.resolved.source;
        if RESERVED_NAMES.contains(&name) {
            return Err(OutputError::Reserved { name: name.into() });
        }
        let what = || format!("overlay {}", crate::names::quoted(name));
        // Inside the overlay's directory: file → the object it holds.
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for object in &unit.objects {
            let parts = object_parts(unit, object)?;
            let mut full: Vec<&str> = vec![name];
            full.extend(parts.iter().map(String::as_str));
            let path = file_path(what, &full)?;
            let label = format!("{} {}", object.kind, object.name);
            if let Some(first) = names.insert(parts.join("/"), label.clone()) {
                return Err(OutputError::Collision {
                    file: path.to_string(),
                    first,
                    second: label,
                });
            }
            // Two overlays that render one object would fight over it in the cluster, such
            // as two farms that serve one tenant namespace with the same Secret name.
            let identity = match object.namespace.as_deref() {
                Some(namespace) => format!("{} {namespace}/{}", object.kind, object.name),
                None => format!("{} {}", object.kind, object.name),
            };
            match self.owners.entry(identity) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    return Err(OutputError::Shared {
                        first: self
                            .overlays
                            .get(*first.get())
                            .map_or(name, String::as_str)
                            .to_string(),
                        object: first.key().clone(),
                        second: name.to_string(),
                    });
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(self.overlays.len());
                }
            }
            let text = document(path.as_str(), source, &object.value)?;
            self.files.insert(path, text);
        }
        self.objects += unit.objects.len();
        self.overlays.push(name.to_string());
        let listed: Vec<String> = names.into_keys().collect();
        let path = file_path(what, &[name, "kustomization.yaml"])?;
        let text = document(path.as_str(), source, &gitops::kustomization(&listed))?;
        self.files.insert(path, text);

        let overlay = &unit.resolved.overlay;
        let base = if overlay.gitops.path.is_empty() {
            &self.default_path
        } else {
            &overlay.gitops.path
        };
        let repo_path = join_path(base, name);
        match unit.flavor {
            Flavor::Kustomize => {}
            Flavor::Argocd => {
                let path = file_path(what, &["argocd", &format!("{name}.yaml")])?;
                let app = gitops::application(name, overlay, &repo_path);
                let text = document(path.as_str(), source, &app)?;
                self.files.insert(path, text);
            }
            Flavor::Flux => {
                let path = file_path(what, &["flux", &format!("kustomization-{name}.yaml")])?;
                let kustomization = gitops::flux_kustomization(name, overlay, &repo_path);
                let text = document(path.as_str(), source, &kustomization)?;
                self.files.insert(path, text);
                match &self.flux_source {
                    Some((first, first_overlay)) => {
                        let (a, b) = (&first_overlay.gitops, &overlay.gitops);
                        if (&a.repo_url, &a.revision, &a.controller_namespace)
                            != (&b.repo_url, &b.revision, &b.controller_namespace)
                        {
                            return Err(OutputError::FluxSource {
                                first: first.clone(),
                                second: name.into(),
                            });
                        }
                    }
                    None => self.flux_source = Some((name.into(), overlay.clone())),
                }
                self.flux_sources.push(source.clone());
            }
        }
        Ok(())
    }

    /// The tree; `scope` as in [`Tree::scope`].
    pub fn finish(mut self, scope: Option<BTreeSet<String>>) -> Result<Tree, OutputError> {
        if self.objects == 0 {
            return Err(OutputError::Empty);
        }
        if let Some((name, overlay)) = &self.flux_source {
            let path = file_path(
                || "flux/gitrepository.yaml".into(),
                &["flux", "gitrepository.yaml"],
            )?;
            let repo = gitops::git_repository(name, overlay);
            let text = document(path.as_str(), &self.flux_sources.join(", "), &repo)?;
            self.files.insert(path, text);
        }
        Ok(Tree {
            files: self.files,
            scope,
        })
    }
}

/// One YAML stream of every object (no GitOps wrappers), each document headed by its source.
pub fn stream(units: &[Unit]) -> Result<String, OutputError> {
    let mut out = String::new();
    for unit in units {
        stream_unit(unit, &mut out)?;
    }
    if out.is_empty() {
        return Err(OutputError::Empty);
    }
    Ok(out)
}

/// Append one overlay's documents to a YAML stream. The objects' names are checked as for
/// files, so `--stdout` and the tree refuse the same input.
pub fn stream_unit(unit: &Unit, out: &mut String) -> Result<(), OutputError> {
    for object in &unit.objects {
        let file = format!("{}/{}", unit.resolved.name, object_parts(unit, object)?.join("/"));
        out.push_str("---\n");
        out.push_str(&document(&file, &unit.resolved.source, &object.value)?);
    }
    Ok(())
}

/// The overlay a kiln file belongs to; `None` for files every overlay shares.
fn owner(path: &str) -> Option<&str> {
    let (first, rest) = path.split_once('/')?;
    match first {
        "argocd" => rest.strip_suffix(".yaml"),
        "flux" => rest
            .strip_prefix("kustomization-")
            .and_then(|r| r.strip_suffix(".yaml")),
        _ => Some(first),
    }
}

fn in_scope(path: &str, scope: &Option<BTreeSet<String>>) -> bool {
    match (scope, owner(path)) {
        (None, _) | (Some(_), None) => true,
        (Some(set), Some(owner)) => set.contains(owner),
    }
}

/// The first entry below `dir` (in name order, depth first) that `expected` refuses, given
/// its path relative to `dir` and whether it is a directory (a symlink is not); directories
/// it accepts are looked into. Before a tool replaces a directory it wrote, this finds what
/// it did not write, so that it never deletes anything else (think `--out ~`).
pub fn foreign_entry(
    dir: &Path,
    expected: impl Fn(&Path, bool) -> bool,
) -> Result<Option<PathBuf>, OutputError> {
    fn walk(
        dir: &Path,
        rel: &Path,
        expected: &dyn Fn(&Path, bool) -> bool,
    ) -> Result<Option<PathBuf>, OutputError> {
        let mut entries = std::fs::read_dir(dir)
            .map_err(io("list", dir))?
            .map(|entry| {
                let entry = entry?;
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                Ok((entry.file_name(), entry.path(), is_dir))
            })
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(io("list", dir))?;
        entries.sort();
        for (name, path, is_dir) in entries {
            let rel = rel.join(name);
            if !expected(&rel, is_dir) {
                return Ok(Some(path));
            }
            if is_dir && let Some(found) = walk(&path, &rel, expected)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
    walk(dir, Path::new(""), &expected)
}

#[cfg(test)]
mod tests;
