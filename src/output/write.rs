//! Writing a rendered [`Tree`] into `<out>/` ([`write`]) and comparing it with what is there
//! ([`check`]).
//!
//! What kiln may touch in `<out>/`:
//! - a file at a path it renders: when the manifest lists it or it starts with kiln's header
//!   (and is a regular file: a symlink, a FIFO or a directory in the way is an error);
//! - a file it no longer renders: deleted only when the manifest lists it and its content
//!   still hashes to what kiln wrote; an edited one is kept, dropped from the manifest, and
//!   reported;
//! - nothing else: other files, symlinks and special files are carried over by hard link
//!   (never opened), directories keep their modes, a rewritten file keeps its mode.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use super::manifest::{self, MAX_READ, Manifest};
use super::swap::{self, Access};
use super::{FilePath, HEADER_PREFIX, MANIFEST, OutputError, Tree, in_scope, io};

/// An entry of the output directory that is not a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A regular file, and its mode.
    File { mode: u32, len: u64 },
    /// A symbolic link: never followed.
    Symlink,
    /// A FIFO, socket or device: never opened.
    Special(&'static str),
}

/// What is in the output directory now.
#[derive(Debug, Default)]
struct Existing {
    /// Everything but directories, by relative path.
    entries: BTreeMap<String, Entry>,
    /// Every directory, by relative path.
    dirs: BTreeSet<String>,
    /// Directories with nothing in them.
    empty_dirs: BTreeSet<String>,
    /// The previous manifest.
    manifest: Manifest,
    /// The previous manifest's text.
    manifest_text: Option<String>,
    /// The previous manifest's mode.
    manifest_mode: Option<u32>,
}

fn special_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// True for a directory that holds a kiln manifest: the only kind [`swap::recover`] restores.
pub(super) fn has_manifest(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(MANIFEST)).is_ok_and(|m| m.is_file())
}

fn scan(out: &Path) -> Result<Existing, OutputError> {
    let mut existing = Existing::default();
    // The output directory itself may be a symlink to a directory (write swaps its target).
    let meta = match std::fs::metadata(out) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(existing);
        }
        Err(e) => return Err(io("inspect", out)(e)),
    };
    if !meta.is_dir() {
        return Err(OutputError::BadOut {
            path: out.to_path_buf(),
            reason: "it is not a directory",
        });
    }
    if std::fs::symlink_metadata(out.join(".git")).is_ok() {
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
            let meta = std::fs::symlink_metadata(entry.path()).map_err(io("inspect", &entry.path()))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                existing.dirs.insert(path.clone());
                walk(&entry.path(), &path, existing)?;
            } else if kind.is_file() {
                let mode = meta.permissions().mode() & 0o7777;
                existing.entries.insert(
                    path,
                    Entry::File {
                        mode,
                        len: meta.size(),
                    },
                );
            } else if kind.is_symlink() {
                existing.entries.insert(path, Entry::Symlink);
            } else {
                existing.entries.insert(path, Entry::Special(special_kind(kind)));
            }
        }
        Ok(())
    }
    walk(out, "", &mut existing)?;
    match existing.entries.remove(MANIFEST) {
        None => {}
        Some(Entry::File { mode, .. }) => {
            existing.manifest_mode = Some(mode);
            let path = out.join(MANIFEST);
            let bytes = manifest::read_regular(&path, MAX_READ)
                .map_err(io("read", &path))?
                .ok_or(OutputError::Foreign {
                    path: path.clone(),
                    reason: "it is larger than 64 MiB, so kiln did not write it",
                })?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            existing.manifest = Manifest::parse(&text);
            existing.manifest_text = Some(text);
        }
        Some(_) => {
            return Err(OutputError::Foreign {
                path: out.join(MANIFEST),
                reason: "it is not a regular file, so kiln did not write it",
            });
        }
    }
    Ok(existing)
}

/// What a write will do.
#[derive(Debug, Default)]
struct Plan {
    /// The manifest to write.
    manifest: String,
    /// Rendered files that replace an existing file: the mode to keep.
    modes: Vec<(String, u32)>,
    /// Existing entries kept as they are (foreign files, other overlays' kiln files, edits).
    carried: Vec<String>,
    /// Existing empty directories kept.
    empty_dirs: Vec<String>,
    /// Kiln files no longer rendered, unchanged: removed.
    stale: Vec<String>,
    /// Kiln files no longer rendered but edited since: kept, and no longer kiln's.
    edited: Vec<String>,
    /// Entries that are not regular files, kept without being opened: (path, what it is).
    special: Vec<(String, &'static str)>,
}

/// The mode a new file gets: 0666 less the umask.
fn default_file_mode() -> u32 {
    0o666 & !swap::umask()
}

fn plan(out: &Path, tree: &Tree, existing: &Existing) -> Result<Plan, OutputError> {
    let mut plan = Plan {
        empty_dirs: existing.empty_dirs.iter().cloned().collect(),
        ..Plan::default()
    };
    let foreign = |path: &str, reason| OutputError::Foreign {
        path: out.join(path),
        reason,
    };
    let new_mode = default_file_mode();
    for path in tree.files.keys() {
        let path = path.as_str();
        // A non-directory where the rendered file needs a directory.
        let mut prefix = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if existing.entries.contains_key(&prefix) {
                return Err(foreign(&prefix, "kiln renders a directory there"));
            }
        }
        if existing.dirs.contains(path) {
            return Err(foreign(path, "it is a directory where kiln renders a file"));
        }
        match existing.entries.get(path) {
            None => {}
            Some(Entry::File { mode, .. }) => {
                let kiln = existing.manifest.entries.contains_key(path)
                    || manifest::starts_with(&out.join(path), HEADER_PREFIX.as_bytes());
                if !kiln {
                    return Err(foreign(
                        path,
                        "kiln did not write it (it has no kiln header and is not in .kiln-manifest)",
                    ));
                }
                if *mode != new_mode {
                    plan.modes.push((path.to_string(), *mode));
                }
            }
            Some(Entry::Symlink) => return Err(foreign(path, "it is a symlink, which kiln never follows")),
            Some(Entry::Special(what)) => {
                return Err(OutputError::Foreign {
                    path: out.join(path),
                    reason: match *what {
                        "a FIFO" => "it is a FIFO, which kiln never opens",
                        "a socket" => "it is a socket, which kiln never opens",
                        _ => "it is not a regular file, which kiln never opens",
                    },
                });
            }
        }
    }
    if let Some(mode) = existing.manifest_mode.filter(|m| *m != new_mode) {
        plan.modes.push((MANIFEST.to_string(), mode));
    }
    let mut listed: BTreeMap<String, String> = tree
        .files
        .iter()
        .map(|(path, content)| (path.to_string(), manifest::hash(content.as_bytes())))
        .collect();
    for (path, entry) in &existing.entries {
        if tree.files.contains_key(path.as_str()) {
            continue;
        }
        if let Entry::Special(what) = entry {
            plan.special.push((path.clone(), what));
        }
        let full = out.join(path);
        let recorded = existing.manifest.entries.get(path);
        match (recorded, entry) {
            (Some(recorded), Entry::File { .. }) if in_scope(path, &tree.scope) => {
                let unchanged = match recorded {
                    Some(hash) => manifest::hash_regular(&full)
                        .map_err(io("read", &full))?
                        .is_some_and(|now| now == *hash),
                    // The first manifest format has no hashes: kiln's header must still be there.
                    None => manifest::starts_with(&full, HEADER_PREFIX.as_bytes()),
                };
                if unchanged {
                    plan.stale.push(path.clone());
                } else {
                    plan.edited.push(path.clone());
                    plan.carried.push(path.clone());
                }
            }
            (Some(recorded), Entry::File { .. }) => {
                // Another overlay's file, kept as it is and still kiln's.
                let hash = match recorded {
                    Some(hash) => hash.clone(),
                    None => manifest::hash_regular(&full)
                        .map_err(io("read", &full))?
                        .unwrap_or_default(),
                };
                listed.insert(path.clone(), hash);
                plan.carried.push(path.clone());
            }
            _ => plan.carried.push(path.clone()),
        }
    }
    plan.manifest = Manifest::render(listed.iter().map(|(p, h)| (p.as_str(), h.as_str())));
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
    /// Files kiln wrote and no longer renders, kept because they were edited since; they are
    /// no longer in the manifest, so they are the user's from now on.
    pub edited: Vec<String>,
    /// Entries that are not regular files (FIFOs, sockets, devices), kept and never opened.
    pub special: Vec<(String, &'static str)>,
    /// The previous manifest was in the first format (no hashes) and was rewritten.
    pub upgraded_manifest: bool,
    /// The tree of an interrupted earlier run that was put back first.
    pub restored: Option<std::path::PathBuf>,
}

/// True when the regular file at `path` (of `len` bytes) holds exactly `content`.
fn same_content(path: &Path, entry: Option<&Entry>, content: &str) -> bool {
    match entry {
        Some(Entry::File { len, .. }) if *len == content.len() as u64 => {
            manifest::read_regular(path, *len).ok().flatten().as_deref() == Some(content.as_bytes())
        }
        _ => false,
    }
}

/// Write `tree` to `out` atomically: everything is written to a temporary directory beside
/// `out`, which then takes its place ([`super::replace_dir`]). A failure leaves `out` as it
/// was. A render that changes nothing touches nothing.
pub fn write(out: &Path, tree: &Tree) -> Result<WriteReport, OutputError> {
    // Swap the directory a symlink points to, never the symlink itself.
    let resolved;
    let out = if out.is_symlink() {
        resolved = std::fs::canonicalize(out).map_err(io("resolve", out))?;
        resolved.as_path()
    } else {
        out
    };
    let restored = swap::recover(out, has_manifest)?;
    let existing = scan(out)?;
    let plan = plan(out, tree, &existing)?;
    let changed: Vec<String> = tree
        .files
        .iter()
        .filter(|(path, content)| {
            !same_content(
                &out.join(path.as_str()),
                existing.entries.get(path.as_str()),
                content,
            )
        })
        .map(|(path, _)| path.to_string())
        .collect();
    let manifest_same = existing.manifest_text.as_deref() == Some(plan.manifest.as_str());
    let report = WriteReport {
        changed,
        removed: plan.stale.clone(),
        kept: plan
            .carried
            .iter()
            .filter(|p| !existing.manifest.entries.contains_key(*p))
            .count(),
        edited: plan.edited.clone(),
        special: plan.special.clone(),
        upgraded_manifest: existing.manifest.old_format,
        restored,
    };
    if report.changed.is_empty() && report.removed.is_empty() && manifest_same {
        return Ok(report);
    }

    let (_, parent) = swap::name_and_parent(out).ok_or(OutputError::BadOut {
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
    // A file whose content stays the same is linked, not rewritten: it keeps its inode, mode
    // and time, and there is nothing new of it to sync.
    let changed: BTreeSet<&str> = report.changed.iter().map(String::as_str).collect();
    swap::replace_dir(out, Access::Shared, |stage| {
        for (path, content) in &tree.files {
            if changed.contains(path.as_str()) {
                stage.write(path, content.as_bytes())?;
            } else {
                stage.carry(&out.join(path.as_str()), path.as_ref())?;
            }
        }
        for (path, mode) in &plan.modes {
            if changed.contains(path.as_str()) || path == MANIFEST {
                stage.set_mode(Path::new(path), *mode);
            }
        }
        let manifest = FilePath::kiln_file(MANIFEST).map_err(|error| OutputError::Path {
            what: MANIFEST.into(),
            error,
        })?;
        stage.write(&manifest, plan.manifest.as_bytes())?;
        for path in &plan.carried {
            stage.carry(&out.join(path), Path::new(path))?;
        }
        for dir in &plan.empty_dirs {
            stage.dir(Path::new(dir))?;
        }
        Ok(())
    })?;
    Ok(report)
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
    /// A file kiln wrote, no longer renders, and that was edited since: render keeps it.
    Edited { path: String },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Changed { diff, .. } => f.write_str(diff),
            Drift::Missing { path } => writeln!(f, "missing: {path} (rendered, not on disk)"),
            Drift::Stale { path } => writeln!(f, "stale: {path} (kiln wrote it, no longer rendered)"),
            Drift::Edited { path } => writeln!(
                f,
                "edited: {path} (kiln wrote it, no longer renders it, and it was edited since: render keeps it)"
            ),
        }
    }
}

/// The most changed lines `kiln check` diffs: the lines between the first and the last
/// difference, both sides together. Beyond, it reports the sizes and the first differing line.
/// A diff costs about the product of the lengths of that region when most of its lines
/// differ, so this bounds it, while a small edit in a huge file still gets its diff.
pub const DIFF_MAX_LINES: usize = 10_000;
/// How much of the first differing line such a report shows.
const DIFF_LINE_MAX: usize = 200;

/// A unified diff from `old` (on disk) to `new` (rendered), bounded by [`DIFF_MAX_LINES`].
fn unified_diff(path: &str, old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let changed = (a.len() - prefix - suffix) + (b.len() - prefix - suffix);
    if changed <= DIFF_MAX_LINES {
        return similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string();
    }
    let line = |lines: &[&str]| {
        let line = lines.get(prefix).copied().unwrap_or("(end of file)");
        match line.char_indices().nth(DIFF_LINE_MAX) {
            Some((at, _)) => format!("{}…", &line[..at]),
            None => line.to_string(),
        }
    };
    format!(
        "--- a/{path}\n+++ b/{path}\ndiffers: {} lines on disk, {} rendered, {changed} of them in the changed \
         region (too many to diff: more than {DIFF_MAX_LINES}); first difference at line {}:\n-{}\n+{}\n",
        a.len(),
        b.len(),
        prefix + 1,
        line(&a),
        line(&b),
    )
}

/// Compare `tree` with `out` without writing anything. When a render was interrupted
/// between its two renames (the fallback swap), the tree it left aside is compared.
pub fn check(out: &Path, tree: &Tree) -> Result<Vec<Drift>, OutputError> {
    let aside = swap::interrupted(out, has_manifest);
    let dir = aside.as_deref().unwrap_or(out);
    let existing = scan(dir)?;
    let plan = plan(dir, tree, &existing)?;
    let mut drift = Vec::new();
    let files = tree
        .files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .chain([(MANIFEST, plan.manifest.as_str())]);
    for (path, content) in files {
        let on_disk = if path == MANIFEST {
            existing.manifest_text.clone().map(String::into_bytes)
        } else {
            match existing.entries.get(path) {
                Some(Entry::File { len, .. }) if *len > MAX_READ => {
                    drift.push(Drift::Changed {
                        path: path.into(),
                        diff: format!(
                            "--- a/{path}\n+++ b/{path}\ndiffers: {len} bytes on disk (too large to compare), {} rendered\n",
                            content.len()
                        ),
                    });
                    continue;
                }
                Some(Entry::File { .. }) => {
                    manifest::read_regular(&dir.join(path), MAX_READ).map_err(io("read", &dir.join(path)))?
                }
                _ => None,
            }
        };
        match on_disk {
            None => drift.push(Drift::Missing { path: path.into() }),
            Some(old) if old != content.as_bytes() => drift.push(Drift::Changed {
                path: path.into(),
                diff: unified_diff(path, &String::from_utf8_lossy(&old), content),
            }),
            Some(_) => {}
        }
    }
    drift.extend(plan.stale.into_iter().map(|path| Drift::Stale { path }));
    drift.extend(plan.edited.into_iter().map(|path| Drift::Edited { path }));
    Ok(drift)
}
