//! Laying rendered objects out as files, and writing the tree atomically.
//!
//! [`layout`] and [`stream`] are pure: objects in, file contents out. [`write`] and
//! [`check`] are the IO edge; [`replace_dir`] is the one atomic directory writer, for
//! render's tree and for `kiln certs generate`. kiln records the files it wrote in `<out>/.kiln-manifest`
//! (and every file it writes starts with a `# Rendered by kiln` header), so a later render
//! removes the files it no longer renders and never touches anything else.
//!
//! Layout of `<out>/`:
//! - `<overlay>/<kind>-<name>.yaml`, one per object, and `<overlay>/kustomization.yaml`;
//! - `<overlay>/<namespace>/<kind>-<name>.yaml` for an object in another namespace than the
//!   overlay's (a tenant's Role, RoleBinding, client Secret and Task), listed in the same
//!   kustomization;
//! - `argocd/<overlay>.yaml`: the overlay's Argo CD Application (flavor argocd);
//! - `flux/kustomization-<overlay>.yaml` and `flux/gitrepository.yaml` (flavor flux).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::object::Object;
use crate::overlay::{Flavor, Resolved};
use crate::render::gitops;
use crate::yaml;

/// The file listing what kiln wrote, relative to the output directory.
pub const MANIFEST: &str = ".kiln-manifest";
/// Every file kiln renders starts with this.
pub const HEADER_PREFIX: &str = "# Rendered by kiln ";
/// Overlay names that would collide with the GitOps directories.
pub const RESERVED_NAMES: &[&str] = &["argocd", "flux"];

const MANIFEST_HEADER: &str =
    "# Files kiln render wrote here; it deletes them once they are no longer rendered. Do not edit.\n";

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
    pub files: BTreeMap<String, String>,
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
    /// Two objects map to one file.
    #[error("failed to lay out {file}: two objects render to it ({first} and {second}); rename one")]
    Collision {
        file: String,
        first: String,
        second: String,
    },
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
    /// A file kiln did not write is in the way of one it renders.
    #[error(
        "failed to write {path}: kiln did not write it (it has no kiln header and is not in {MANIFEST}); move it away"
    )]
    Foreign { path: PathBuf },
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

/// The file an object is written to, relative to its overlay's directory:
/// `<kind>-<name>.yaml`, lowercase, under a `<namespace>/` directory when the object lives
/// in another namespace than `namespace` (the overlay's). A namespace is a DNS-1123 label,
/// so it never looks like a file name.
pub fn file_name(object: &Object, namespace: &str) -> String {
    let file = format!(
        "{}-{}.yaml",
        object.kind.to_lowercase(),
        object.name.to_lowercase()
    );
    match object.namespace.as_deref() {
        Some(other) if other != namespace => format!("{}/{file}", other.to_lowercase()),
        _ => file,
    }
}

/// `Kind name`, or `Kind namespace/name` for an object outside the overlay's namespace.
fn label(object: &Object, namespace: &str) -> String {
    match object.namespace.as_deref() {
        Some(other) if other != namespace => format!("{} {other}/{}", object.kind, object.name),
        _ => format!("{} {}", object.kind, object.name),
    }
}

fn document<T: serde::Serialize>(file: &str, source: &str, value: &T) -> Result<String, OutputError> {
    let body = yaml::to_string(value).map_err(|error| OutputError::Yaml {
        file: file.to_string(),
        error,
    })?;
    Ok(format!("{}{body}", header(source)))
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
    files: BTreeMap<String, String>,
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
        let name = &unit.resolved.name;
        let source = &unit.resolved.source;
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(OutputError::Reserved { name: name.clone() });
        }
        let namespace = &unit.resolved.overlay.namespace;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for object in &unit.objects {
            let file = file_name(object, namespace);
            let label = label(object, namespace);
            if let Some(first) = names.insert(file.clone(), label.clone()) {
                return Err(OutputError::Collision {
                    file: format!("{name}/{file}"),
                    first,
                    second: label,
                });
            }
            // Two overlays that render one object would fight over it in the cluster, such
            // as two farms that serve one tenant namespace with the same Secret name.
            let identity = format!(
                "{} {}{}",
                object.kind,
                object
                    .namespace
                    .as_deref()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                object.name
            );
            match self.owners.entry(identity) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    return Err(OutputError::Shared {
                        first: self.overlays.get(*first.get()).unwrap_or(name).clone(),
                        object: first.key().clone(),
                        second: name.clone(),
                    });
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(self.overlays.len());
                }
            }
            let path = format!("{name}/{file}");
            self.files
                .insert(path.clone(), document(&path, source, &object.value)?);
        }
        self.objects += unit.objects.len();
        self.overlays.push(name.clone());
        let listed: Vec<String> = names.into_keys().collect();
        let path = format!("{name}/kustomization.yaml");
        self.files.insert(
            path.clone(),
            document(&path, source, &gitops::kustomization(&listed))?,
        );

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
                let path = format!("argocd/{name}.yaml");
                let app = gitops::application(name, overlay, &repo_path);
                self.files.insert(path.clone(), document(&path, source, &app)?);
            }
            Flavor::Flux => {
                let path = format!("flux/kustomization-{name}.yaml");
                let kustomization = gitops::flux_kustomization(name, overlay, &repo_path);
                self.files
                    .insert(path.clone(), document(&path, source, &kustomization)?);
                match &self.flux_source {
                    Some((first, first_overlay)) => {
                        let (a, b) = (&first_overlay.gitops, &overlay.gitops);
                        if (&a.repo_url, &a.revision, &a.controller_namespace)
                            != (&b.repo_url, &b.revision, &b.controller_namespace)
                        {
                            return Err(OutputError::FluxSource {
                                first: first.clone(),
                                second: name.clone(),
                            });
                        }
                    }
                    None => self.flux_source = Some((name.clone(), overlay.clone())),
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
            let path = "flux/gitrepository.yaml";
            let repo = gitops::git_repository(name, overlay);
            self.files.insert(
                path.to_string(),
                document(path, &self.flux_sources.join(", "), &repo)?,
            );
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

/// Append one overlay's documents to a YAML stream.
pub fn stream_unit(unit: &Unit, out: &mut String) -> Result<(), OutputError> {
    for object in &unit.objects {
        let file = format!(
            "{}/{}",
            unit.resolved.name,
            file_name(object, &unit.resolved.overlay.namespace)
        );
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

/// What is in the output directory now.
#[derive(Debug, Default)]
struct Existing {
    /// Files (and symlinks) by relative path.
    files: BTreeSet<String>,
    /// Directories with nothing in them.
    empty_dirs: BTreeSet<String>,
    /// The paths the previous manifest lists.
    manifest: BTreeSet<String>,
    /// The previous manifest's text.
    manifest_text: Option<String>,
}

fn scan(out: &Path) -> Result<Existing, OutputError> {
    let mut existing = Existing::default();
    if !out.exists() {
        return Ok(existing);
    }
    if !out.is_dir() {
        return Err(OutputError::BadOut {
            path: out.to_path_buf(),
            reason: "it is not a directory",
        });
    }
    if out.join(".git").exists() {
        return Err(OutputError::BadOut {
            path: out.to_path_buf(),
            reason: "it is a git work tree root; render into a subdirectory such as rendered",
        });
    }
    fn walk(dir: &Path, rel: &str, existing: &mut Existing) -> Result<(), OutputError> {
        let mut entries = std::fs::read_dir(dir)
            .map_err(io("list", dir))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("list", dir))?;
        entries.sort_by_key(|e| e.file_name());
        if entries.is_empty() && !rel.is_empty() {
            existing.empty_dirs.insert(rel.to_string());
        }
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(io("inspect", &entry.path()))?;
            if kind.is_dir() {
                walk(&entry.path(), &path, existing)?;
            } else {
                existing.files.insert(path);
            }
        }
        Ok(())
    }
    walk(out, "", &mut existing)?;
    if existing.files.remove(MANIFEST) {
        let path = out.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        existing.manifest = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        existing.manifest_text = Some(text);
    }
    Ok(existing)
}

/// True when kiln wrote the file: the manifest lists it, or it starts with kiln's header.
fn is_kiln_file(out: &Path, path: &str, existing: &Existing) -> bool {
    if existing.manifest.contains(path) {
        return true;
    }
    let full = out.join(path);
    if full.is_symlink() {
        return false;
    }
    use std::io::Read;
    let mut start = [0u8; HEADER_PREFIX.len()];
    std::fs::File::open(&full)
        .and_then(|mut f| f.read_exact(&mut start))
        .map(|()| start == HEADER_PREFIX.as_bytes())
        .unwrap_or(false)
}

/// What a write will do.
#[derive(Debug, Default)]
struct Plan {
    /// Every file kiln will have written, including the manifest.
    files: BTreeMap<String, String>,
    /// Existing files kept as they are (foreign files, other overlays' kiln files).
    carried: Vec<String>,
    /// Existing empty directories kept.
    empty_dirs: Vec<String>,
    /// Kiln files no longer rendered.
    stale: Vec<String>,
}

fn plan(out: &Path, tree: &Tree, existing: &Existing) -> Result<Plan, OutputError> {
    let mut plan = Plan {
        files: tree.files.clone(),
        ..Plan::default()
    };
    let mut kiln_files: BTreeSet<String> = tree.files.keys().cloned().collect();
    for path in &existing.files {
        let kiln = is_kiln_file(out, path, existing);
        if tree.files.contains_key(path) {
            if !kiln {
                return Err(OutputError::Foreign { path: out.join(path) });
            }
        } else if !kiln {
            plan.carried.push(path.clone());
        } else if in_scope(path, &tree.scope) {
            plan.stale.push(path.clone());
        } else {
            plan.carried.push(path.clone());
            kiln_files.insert(path.clone());
        }
    }
    plan.empty_dirs = existing.empty_dirs.iter().cloned().collect();
    let mut manifest = MANIFEST_HEADER.to_string();
    for path in &kiln_files {
        manifest.push_str(path);
        manifest.push('\n');
    }
    plan.files.insert(MANIFEST.to_string(), manifest);
    Ok(plan)
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// Files whose content is new or changed.
    pub changed: Vec<String>,
    /// Stale kiln files removed.
    pub removed: Vec<String>,
    /// Files kiln did not write, left in place.
    pub kept: usize,
}

fn read_existing(out: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(out.join(path)).ok()
}

/// Write `tree` to `out` atomically: everything is written to a temporary directory beside
/// `out`, which then replaces it. A failure leaves `out` as it was.
pub fn write(out: &Path, tree: &Tree) -> Result<WriteReport, OutputError> {
    // Swap the directory a symlink points to, never the symlink itself.
    let resolved;
    let out = if out.is_symlink() {
        resolved = std::fs::canonicalize(out).map_err(io("resolve", out))?;
        resolved.as_path()
    } else {
        out
    };
    restore_interrupted(out)?;
    let existing = scan(out)?;
    let plan = plan(out, tree, &existing)?;
    let changed: Vec<String> = plan
        .files
        .iter()
        .filter(|(path, content)| {
            !existing.files.contains(*path) || read_existing(out, path).as_deref() != Some(content.as_str())
        })
        .map(|(path, _)| path.clone())
        .filter(|path| path != MANIFEST)
        .collect();
    let manifest_same = existing.manifest_text.as_deref() == plan.files.get(MANIFEST).map(String::as_str);
    let report = WriteReport {
        changed,
        removed: plan.stale.clone(),
        kept: plan
            .carried
            .iter()
            .filter(|p| !existing.manifest.contains(*p))
            .count(),
    };
    if report.changed.is_empty() && report.removed.is_empty() && manifest_same {
        return Ok(report);
    }

    let (_, parent) = name_and_parent(out).ok_or(OutputError::BadOut {
        path: out.to_path_buf(),
        reason: "it has no directory name",
    })?;
    if parent.exists() && !parent.is_dir() {
        return Err(OutputError::BadOut {
            path: out.to_path_buf(),
            reason: "its parent is not a directory",
        });
    }
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    replace_dir(out, Access::Shared, |stage| fill(out, stage, &plan))?;
    Ok(report)
}

/// Who may read the tree [`replace_dir`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// As the umask allows, and a replaced directory keeps its permissions: rendered manifests.
    Shared,
    /// The owner only: directories 0700, files 0600 and synced to disk before the swap: keys.
    Private,
}

/// The staging directory [`replace_dir`] hands to its `fill`: files go in by relative path.
#[derive(Debug)]
pub struct Stage {
    root: PathBuf,
    access: Access,
    /// Directories known to exist, so each is created once.
    dirs: BTreeSet<PathBuf>,
}

impl Stage {
    /// Create the directory `rel` and its parents inside the stage; returns its full path.
    pub fn dir(&mut self, rel: &Path) -> Result<PathBuf, OutputError> {
        let path = self.root.join(rel);
        if !self.dirs.contains(&path) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            if self.access == Access::Private {
                builder.mode(0o700);
            }
            builder.create(&path).map_err(io("create", &path))?;
            self.dirs.insert(path.clone());
        }
        Ok(path)
    }

    /// The full path of `rel` inside the stage, its parent directory created: for what is
    /// not a new file (a link, a copy).
    pub fn place(&mut self, rel: &Path) -> Result<PathBuf, OutputError> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(parent)?;
        }
        Ok(self.root.join(rel))
    }

    /// Write a new file at `rel`.
    pub fn write(&mut self, rel: &Path, contents: &[u8]) -> Result<(), OutputError> {
        let path = self.place(rel)?;
        match self.access {
            Access::Shared => std::fs::write(&path, contents).map_err(io("write", &path)),
            Access::Private => {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io("create", &path))?;
                file.write_all(contents)
                    .and_then(|()| file.sync_all())
                    .map_err(io("write", &path))
            }
        }
    }
}

/// Replace the directory `out` with the tree `fill` writes, atomically: `fill` writes into a
/// fresh staging directory `.<name>.kiln-tmp-<pid>` beside `out` (whose parent must exist),
/// which then takes the place of `out` ([`swap`]; the old tree goes to `.<name>.kiln-old-<pid>`
/// for the moment between the two renames). On any failure the staging directory is removed
/// and `out` is left as it was. `kiln render` and `kiln certs generate` both write this way.
pub fn replace_dir(
    out: &Path,
    access: Access,
    fill: impl FnOnce(&mut Stage) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let (name, parent) = name_and_parent(out).ok_or(OutputError::BadOut {
        path: out.to_path_buf(),
        reason: "it has no directory name",
    })?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.kiln-tmp-{pid}"));
    let old = parent.join(format!(".{name}.kiln-old-{pid}"));
    // Only a run of an earlier process with the same id leaves these behind.
    for leftover in [&tmp, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io("remove leftover", leftover))?;
        }
    }
    let mut builder = std::fs::DirBuilder::new();
    if access == Access::Private {
        builder.mode(0o700);
    }
    builder.create(&tmp).map_err(|error| OutputError::Stage {
        path: tmp.clone(),
        parent: parent.clone(),
        error,
    })?;
    let mut stage = Stage {
        root: tmp.clone(),
        access,
        dirs: BTreeSet::from([tmp.clone()]),
    };
    let result = (|| {
        if access == Access::Shared
            && let Ok(meta) = std::fs::metadata(out)
        {
            std::fs::set_permissions(&tmp, meta.permissions()).map_err(io("set permissions of", &tmp))?;
        }
        fill(&mut stage)?;
        swap(out, &tmp, &old)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The directory name of `out` and the directory that holds it (`.` for a bare name):
/// where the temporary and old trees of a [`swap`] go. None when `out` has no name (`/`, `..`).
pub fn name_and_parent(out: &Path) -> Option<(String, PathBuf)> {
    let name = out.file_name()?.to_string_lossy().into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((name, parent))
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

/// A render killed between the two renames of [`swap`] leaves no `out`, only
/// `.<out>.kiln-old-<pid>`: put that tree back before anything else.
fn restore_interrupted(out: &Path) -> Result<(), OutputError> {
    if out.exists() || out.is_symlink() {
        return Ok(());
    }
    let (Some(name), Some(parent)) = (out.file_name(), out.parent()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.kiln-old-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let mut olds: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    olds.sort();
    if let Some(old) = olds.pop() {
        std::fs::rename(&old, out).map_err(io("restore", &old))?;
    }
    Ok(())
}

/// Fill the stage of a [`write`]: the rendered files, then what is carried over from `out`.
fn fill(out: &Path, stage: &mut Stage, plan: &Plan) -> Result<(), OutputError> {
    for (path, content) in &plan.files {
        stage.write(Path::new(path), content.as_bytes())?;
    }
    for path in &plan.carried {
        let from = out.join(path);
        let to = stage.place(Path::new(path))?;
        if from.is_symlink() {
            let link = std::fs::read_link(&from).map_err(io("read link", &from))?;
            std::os::unix::fs::symlink(&link, &to).map_err(io("link", &to))?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io("copy", &from))?;
        }
    }
    for dir in &plan.empty_dirs {
        stage.dir(Path::new(dir))?;
    }
    Ok(())
}

/// Replace the directory `out` with the filled directory `tmp`: move `out` aside to `old`,
/// move `tmp` in, then remove `old`. If the second rename fails, `out` is put back.
pub fn swap(out: &Path, tmp: &Path, old: &Path) -> Result<(), OutputError> {
    if out.exists() {
        std::fs::rename(out, old).map_err(io("move aside", out))?;
        if let Err(error) = std::fs::rename(tmp, out) {
            let _ = std::fs::rename(old, out);
            return Err(OutputError::Io {
                action: "move into place",
                path: out.to_path_buf(),
                error,
            });
        }
        std::fs::remove_dir_all(old).map_err(io("remove", old))?;
    } else {
        std::fs::rename(tmp, out).map_err(io("move into place", out))?;
    }
    Ok(())
}

/// One difference between the rendered tree and the one on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A file differs; the unified diff goes from disk (`a/`) to the render (`b/`).
    Changed { path: String, diff: String },
    /// A rendered file is not on disk.
    Missing { path: String },
    /// A file kiln wrote that is no longer rendered.
    Stale { path: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Changed { diff, .. } => f.write_str(diff),
            Drift::Missing { path } => writeln!(f, "missing: {path} (rendered, not on disk)"),
            Drift::Stale { path } => writeln!(f, "stale: {path} (kiln wrote it, no longer rendered)"),
        }
    }
}

/// Compare `tree` with `out` without writing anything.
pub fn check(out: &Path, tree: &Tree) -> Result<Vec<Drift>, OutputError> {
    let existing = scan(out)?;
    let plan = plan(out, tree, &existing)?;
    let mut drift = Vec::new();
    for (path, content) in &plan.files {
        let on_disk = if path == MANIFEST {
            existing.manifest_text.clone()
        } else {
            read_existing(out, path)
        };
        match on_disk {
            None => drift.push(Drift::Missing { path: path.clone() }),
            Some(old) if old != *content => {
                let diff = similar::TextDiff::from_lines(&old, content)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{path}"), &format!("b/{path}"))
                    .to_string();
                drift.push(Drift::Changed {
                    path: path.clone(),
                    diff,
                });
            }
            Some(_) => {}
        }
    }
    drift.extend(plan.stale.into_iter().map(|path| Drift::Stale { path }));
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_parent_of_output_dirs() {
        let split = |p: &str| name_and_parent(Path::new(p));
        assert_eq!(split("rendered"), Some(("rendered".into(), PathBuf::from("."))));
        assert_eq!(split("a/b/out"), Some(("out".into(), PathBuf::from("a/b"))));
        assert_eq!(split("/"), None);
        assert_eq!(split(".."), None);
    }

    #[test]
    fn owners() {
        assert_eq!(owner("dev/deployment-buildkitd.yaml"), Some("dev"));
        assert_eq!(owner("argocd/dev.yaml"), Some("dev"));
        assert_eq!(owner("flux/kustomization-prod.yaml"), Some("prod"));
        assert_eq!(owner("flux/gitrepository.yaml"), None);
        assert_eq!(owner(".kiln-manifest"), None);
    }

    fn resolved(name: &str) -> Resolved {
        Resolved {
            name: name.into(),
            overlay: crate::overlay::Overlay::default(),
            source: format!("overlays/{name}.yaml"),
            chain: vec![name.into()],
            extras: Vec::new(),
        }
    }

    fn object(kind: &str, name: &str) -> Object {
        Object {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: None,
            value: serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}),
        }
    }

    #[test]
    fn layout_lists_files_in_a_kustomization() {
        let r = resolved("dev");
        let unit = Unit {
            resolved: &r,
            objects: vec![object("ConfigMap", "b"), object("ConfigMap", "a")],
            flavor: Flavor::Argocd,
        };
        let tree = layout(&[unit], "rendered", None).unwrap();
        let paths: Vec<&str> = tree.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "argocd/dev.yaml",
                "dev/configmap-a.yaml",
                "dev/configmap-b.yaml",
                "dev/kustomization.yaml"
            ]
        );
        assert!(
            tree.files["dev/kustomization.yaml"]
                .ends_with("resources:\n- configmap-a.yaml\n- configmap-b.yaml\n")
        );
        assert!(tree.files["argocd/dev.yaml"].contains("path: rendered/dev\n"));
        assert!(tree.files["dev/configmap-a.yaml"].starts_with("# Rendered by kiln "));
    }

    fn in_namespace(mut object: Object, namespace: &str) -> Object {
        object.namespace = Some(namespace.into());
        object.value["metadata"]["namespace"] = namespace.into();
        object
    }

    #[test]
    fn objects_of_other_namespaces_go_in_a_directory_of_their_namespace() {
        let r = resolved("prod");
        let farm = &r.overlay.namespace;
        let unit = Unit {
            resolved: &r,
            objects: vec![
                in_namespace(object("Secret", "client"), farm),
                in_namespace(object("Secret", "client"), "team-a"),
                in_namespace(object("Role", "kiln-rotate-x"), "team-a"),
                object("ClusterRole", "c"),
            ],
            flavor: Flavor::Kustomize,
        };
        let tree = layout(std::slice::from_ref(&unit), "rendered", None).unwrap();
        let paths: Vec<&str> = tree.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "prod/clusterrole-c.yaml",
                "prod/kustomization.yaml",
                "prod/secret-client.yaml",
                "prod/team-a/role-kiln-rotate-x.yaml",
                "prod/team-a/secret-client.yaml",
            ]
        );
        assert!(
            tree.files["prod/kustomization.yaml"].ends_with(
                "resources:\n- clusterrole-c.yaml\n- secret-client.yaml\n- team-a/role-kiln-rotate-x.yaml\n- team-a/secret-client.yaml\n"
            ),
            "{}",
            tree.files["prod/kustomization.yaml"]
        );
        assert_eq!(owner("prod/team-a/secret-client.yaml"), Some("prod"));
        // The stream names the same files.
        let text = stream(&[unit]).unwrap();
        assert_eq!(text.matches("---\n").count(), 4);
    }

    #[test]
    fn layout_errors() {
        let r = resolved("dev");
        let twice = Unit {
            resolved: &r,
            objects: vec![object("ConfigMap", "a"), object("ConfigMap", "a")],
            flavor: Flavor::Kustomize,
        };
        let e = layout(&[twice], "rendered", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "failed to lay out dev/configmap-a.yaml: two objects render to it (ConfigMap a and ConfigMap a); rename one"
        );

        let flux = resolved("flux");
        let unit = Unit {
            resolved: &flux,
            objects: vec![object("ConfigMap", "a")],
            flavor: Flavor::Kustomize,
        };
        assert!(
            layout(&[unit], "rendered", None)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );

        let mut prod = resolved("prod");
        prod.overlay.gitops.revision = "release".into();
        let units = [
            Unit {
                resolved: &r,
                objects: vec![object("ConfigMap", "a")],
                flavor: Flavor::Flux,
            },
            Unit {
                resolved: &prod,
                objects: vec![object("ConfigMap", "b")],
                flavor: Flavor::Flux,
            },
        ];
        assert!(matches!(
            layout(&units, "rendered", None),
            Err(OutputError::FluxSource { .. })
        ));

        // Two overlays that render one object (here: two farms serving team-a with the same
        // client Secret name).
        let prod = resolved("prod");
        let shared = |r| Unit {
            resolved: r,
            objects: vec![in_namespace(object("Secret", "client"), "team-a")],
            flavor: Flavor::Kustomize,
        };
        let e = layout(&[shared(&r), shared(&prod)], "rendered", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "failed to lay out overlay prod: overlay dev renders Secret team-a/client too, and two overlays cannot own one object;"
            ),
            "{e}"
        );
        assert!(
            e.contains("a certs.secrets.client and tekton.name of its own, or task: false"),
            "{e}"
        );

        let empty = Unit {
            resolved: &r,
            objects: vec![],
            flavor: Flavor::Kustomize,
        };
        assert!(matches!(
            layout(std::slice::from_ref(&empty), "rendered", None),
            Err(OutputError::Empty)
        ));
        assert!(matches!(stream(&[empty]), Err(OutputError::Empty)));
    }

    #[test]
    fn refuses_a_git_work_tree_as_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        let e = write(dir.path(), &Tree::default()).unwrap_err().to_string();
        assert!(e.contains("it is a git work tree root"), "{e}");
    }

    #[test]
    fn writes_through_a_symlinked_output_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let tree = Tree {
            files: BTreeMap::from([("a/b.yaml".to_string(), "x\n".to_string())]),
            scope: None,
        };
        write(&dir.path().join("link"), &tree).unwrap();
        assert!(dir.path().join("link").is_symlink());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("real/a/b.yaml")).unwrap(),
            "x\n"
        );
        assert!(check(&dir.path().join("link"), &tree).unwrap().is_empty());
    }

    #[test]
    fn a_write_that_fails_halfway_leaves_the_old_tree() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rendered");
        std::fs::create_dir(&out).unwrap();
        // A foreign *file* named like an overlay directory: carrying it over collides with
        // the directory the new files need, after some files are already written.
        std::fs::write(out.join("dev"), "mine\n").unwrap();
        let tree = Tree {
            files: BTreeMap::from([
                ("a/x.yaml".to_string(), "a\n".to_string()),
                ("dev/x.yaml".to_string(), "x\n".to_string()),
            ]),
            scope: None,
        };
        let err = write(&out, &tree).unwrap_err().to_string();
        assert!(err.starts_with("failed to "), "{err}");
        assert_eq!(std::fs::read_to_string(out.join("dev")).unwrap(), "mine\n");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["rendered"], "no temporary directory is left behind");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }

    #[test]
    fn an_interrupted_swap_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".rendered.kiln-old-42");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("NOTES.md"), "mine\n").unwrap();
        let tree = Tree {
            files: BTreeMap::from([("a/x.yaml".to_string(), "x\n".to_string())]),
            scope: None,
        };
        write(&dir.path().join("rendered"), &tree).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rendered/NOTES.md")).unwrap(),
            "mine\n"
        );
        assert!(!old.exists());
    }

    #[test]
    fn paths_join() {
        assert_eq!(join_path("rendered", "dev"), "rendered/dev");
        assert_eq!(join_path("./examples/argocd/", "dev"), "examples/argocd/dev");
        assert_eq!(join_path(".", "dev"), "dev");
    }
}
