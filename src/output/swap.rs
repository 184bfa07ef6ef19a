//! Replacing a directory atomically: [`replace_dir`], the one writer of `kiln render`'s tree
//! and of `kiln certs generate`'s, and [`recover`], which cleans up after a run that died.
//!
//! The new tree is written into `.<name>.kiln-tmp-<pid>` beside the directory, put on disk
//! (one `syncfs` on Linux, else an fsync per file and directory), and the two trade places in one `renameat2(RENAME_EXCHANGE)`: there is
//! no moment without the directory. Where the file system cannot exchange (not Linux, or a file
//! system without it), the old tree is renamed aside to `.<name>.kiln-old-<pid>` and the new one
//! renamed in; a run killed between those two renames leaves no directory, and [`recover`] (run
//! by the next `kiln render` and `kiln certs generate`) and [`interrupted`] (read by
//! `kiln check`) find the old tree there.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{FilePath, OutputError, io};

/// Who may read the tree [`replace_dir`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// As the umask allows, and a replaced directory keeps its modes (and those of its
    /// subdirectories): rendered manifests.
    Shared,
    /// The owner only: directories 0700, files 0600: keys.
    Private,
}

/// The staging directory [`replace_dir`] hands to its `fill`: files go in by relative path.
#[derive(Debug)]
pub struct Stage {
    root: PathBuf,
    access: Access,
    /// Directories created, relative to the root.
    dirs: BTreeSet<PathBuf>,
    /// Files whose mode is set after they are written: (relative path, mode).
    modes: Vec<(PathBuf, u32)>,
    /// Files written (not linked), to be synced before the swap.
    written: Vec<PathBuf>,
}

impl Stage {
    /// Create the directory `rel` and its parents inside the stage; returns its full path.
    pub fn dir(&mut self, rel: &Path) -> Result<PathBuf, OutputError> {
        let mut at = PathBuf::new();
        for part in rel.components() {
            at.push(part);
            if self.dirs.contains(&at) {
                continue;
            }
            let path = self.root.join(&at);
            let mut builder = std::fs::DirBuilder::new();
            // Owner-only while it fills; Shared directories get their modes at the end.
            builder.mode(0o700);
            match builder.create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(io("create", &path)(e)),
            }
            self.dirs.insert(at.clone());
        }
        Ok(self.root.join(rel))
    }

    /// The full path of `rel` inside the stage, its parent directory created: for what is
    /// not a new file (a link, a copy).
    pub fn place(&mut self, rel: &Path) -> Result<PathBuf, OutputError> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(parent)?;
        }
        Ok(self.root.join(rel))
    }

    /// Write a new file at `rel` (synced to disk before the swap). Only a checked
    /// [`FilePath`] names a file kiln writes.
    pub fn write(&mut self, rel: &FilePath, contents: &[u8]) -> Result<(), OutputError> {
        use std::io::Write as _;
        let path = self.place(rel.as_ref())?;
        let mode = match self.access {
            Access::Shared => 0o666,
            Access::Private => 0o600,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io("create", &path))?;
        file.write_all(contents).map_err(io("write", &path))?;
        self.written.push(path);
        Ok(())
    }

    /// Give the file at `rel` this mode once everything is written (a rewritten file keeps
    /// the mode its user gave it). Ignored for [`Access::Private`].
    pub fn set_mode(&mut self, rel: &Path, mode: u32) {
        if self.access == Access::Shared {
            self.modes.push((rel.to_path_buf(), mode & 0o7777));
        }
    }

    /// Carry the existing entry `from` over to `rel`: a hard link (so its content is never
    /// read), a symlink recreated, or, across devices, a copy of a regular file.
    pub fn carry(&mut self, from: &Path, rel: &Path) -> Result<(), OutputError> {
        let to = self.place(rel)?;
        let meta = std::fs::symlink_metadata(from).map_err(io("inspect", from))?;
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(from).map_err(io("read link", from))?;
            return std::os::unix::fs::symlink(&link, &to).map_err(io("link", &to));
        }
        match std::fs::hard_link(from, &to) {
            Ok(()) => Ok(()),
            Err(_) if meta.is_file() => {
                std::fs::copy(from, &to).map_err(io("copy", from))?;
                self.written.push(to);
                Ok(())
            }
            Err(error) => Err(OutputError::Io {
                action: "keep (hard link)",
                path: from.to_path_buf(),
                error,
            }),
        }
    }
}

/// The directory name of `out` and the directory that holds it (`.` for a bare name):
/// where the temporary and old trees of a swap go. None when `out` has no name (`/`, `..`).
pub fn name_and_parent(out: &Path) -> Option<(String, PathBuf)> {
    let name = out.file_name()?.to_string_lossy().into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((name, parent))
}

/// Replace the directory `out` with the tree `fill` writes, atomically; see the module docs.
/// `out`'s parent must exist. On any failure the staging directory is removed and `out` is
/// left as it was. With [`Access::Shared`], the new tree's directories take the modes of the
/// directories at the same paths in the old one.
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
    let tmp = parent.join(format!(".{name}{TMP}{pid}"));
    let old = parent.join(format!(".{name}{OLD}{pid}"));
    // Only an earlier process with the same id leaves these behind.
    for leftover in [&tmp, &old] {
        if std::fs::symlink_metadata(leftover).is_ok() {
            remove_tree(leftover).map_err(io("remove leftover", leftover))?;
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|error| OutputError::Stage {
            path: tmp.clone(),
            parent: parent.clone(),
            error,
        })?;
    let mut stage = Stage {
        root: tmp.clone(),
        access,
        dirs: BTreeSet::new(),
        modes: Vec::new(),
        written: Vec::new(),
    };
    let result = (|| {
        fill(&mut stage)?;
        finish(&stage, out)?;
        swap(out, &tmp, &old, &parent)
    })();
    if result.is_err() {
        let _ = remove_tree(&tmp);
    }
    result
}

const TMP: &str = ".kiln-tmp-";
const OLD: &str = ".kiln-old-";

/// How [`finish`] puts the stage on disk: on Linux one `syncfs(2)` of its file system, which
/// writes the files and the directories at once; elsewhere (or if that fails) an fsync per file
/// and per directory. Measured on the build machine's ext4 under load: one syncfs took 4–60 ms
/// whatever the number of files, an fsync 5–7 ms each (a journal commit apiece), so even five
/// files cost more one by one.
/// Set the stage's modes and put what it holds on disk (the files written and every
/// directory), so that what the swap makes visible is durable.
fn finish(stage: &Stage, out: &Path) -> Result<(), OutputError> {
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", path))
    };
    for (rel, mode) in &stage.modes {
        set(&stage.root.join(rel), *mode)?;
    }
    if stage.access == Access::Shared {
        for rel in &stage.dirs {
            set(
                &stage.root.join(rel),
                dir_mode(&out.join(rel)).unwrap_or_else(default_dir_mode),
            )?;
        }
    }
    let root_mode = match stage.access {
        Access::Private => 0o700,
        Access::Shared => dir_mode(out).unwrap_or_else(default_dir_mode),
    };
    set(&stage.root, root_mode)?;
    if sync_file_system(&stage.root).is_ok() {
        return Ok(());
    }
    sync_each(stage)
}

/// fsync every file the stage wrote, then its directories, deepest first.
fn sync_each(stage: &Stage) -> Result<(), OutputError> {
    for file in &stage.written {
        sync(file)?;
    }
    let mut dirs: Vec<&PathBuf> = stage.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for rel in dirs {
        sync(&stage.root.join(rel))?;
    }
    sync(&stage.root)
}

/// `syncfs(2)`: everything of the file system that holds `path`, in one call.
#[cfg(target_os = "linux")]
fn sync_file_system(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(path)?;
    // SAFETY: a valid open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// fsync a file or a directory by path.
fn sync(path: &Path) -> Result<(), OutputError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", path))
}

/// The mode of the directory (not a symlink) at `path`, if there is one.
fn dir_mode(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.permissions().mode() & 0o7777)
}

/// The process's umask.
pub(super) fn umask() -> u32 {
    // SAFETY: umask only swaps the process's mask; it is set back at once.
    let mask = unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask
    };
    mask as u32
}

/// 0777 less the umask: what `mkdir` would have made.
fn default_dir_mode() -> u32 {
    0o777 & !umask()
}

/// Put the staged `tmp` where `out` is; see the module docs.
fn swap(out: &Path, tmp: &Path, old: &Path, parent: &Path) -> Result<(), OutputError> {
    let exists = std::fs::symlink_metadata(out).is_ok();
    if !exists {
        std::fs::rename(tmp, out).map_err(io("move into place", out))?;
        return sync(parent);
    }
    match exchange(tmp, out) {
        Ok(()) => {
            sync(parent)?;
            // `tmp` now holds the old tree.
            return remove_tree(tmp).map_err(io("remove the previous tree", tmp));
        }
        Err(e) if exchange_unsupported(&e) => {}
        Err(e) => return Err(io("move into place", out)(e)),
    }
    rename_twice(out, tmp, old)?;
    sync(parent)?;
    remove_tree(old).map_err(io("remove the previous tree", old))
}

/// The fallback swap: `out` aside to `old`, `tmp` in. If the second rename fails, `out` is
/// put back; a process killed between the two leaves only `old` ([`recover`] restores it).
fn rename_twice(out: &Path, tmp: &Path, old: &Path) -> Result<(), OutputError> {
    std::fs::rename(out, old).map_err(io("move aside", out))?;
    if let Err(error) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(old, out);
        return Err(OutputError::Io {
            action: "move into place",
            path: out.to_path_buf(),
            error,
        });
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // The raw system call, not the libc wrapper, so that old glibc and musl link too.
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}

/// Remove a tree, making its directories writable first: a user's read-only directory
/// carried into the previous tree must not stop the cleanup.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn writable(dir: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(dir)
            && meta.is_dir()
        {
            let mode = meta.permissions().mode();
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    writable(&entry.path());
                }
            }
        }
    }
    writable(path);
    std::fs::remove_dir_all(path)
}

/// A leftover of a swap beside `out`: `.<name>.kiln-{tmp,old}-<pid>`.
struct Leftover {
    path: PathBuf,
    old: bool,
    pid: u32,
}

fn leftovers(out: &Path) -> Vec<Leftover> {
    let Some((name, parent)) = name_and_parent(out) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let prefix = format!(".{name}");
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name();
            let rest = file.to_str()?.strip_prefix(&prefix)?;
            let (old, pid) = match (rest.strip_prefix(OLD), rest.strip_prefix(TMP)) {
                (Some(pid), _) => (true, pid),
                (_, Some(pid)) => (false, pid),
                _ => return None,
            };
            Some(Leftover {
                path: e.path(),
                old,
                pid: pid.parse().ok()?,
            })
        })
        .collect()
}

/// True when no process with this id runs (a run that died), or it is this process.
fn gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A real directory (not a symlink) that `is_ours` accepts.
fn ours(path: &Path, is_ours: &dyn Fn(&Path) -> bool) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) && is_ours(path)
}

/// The tree a swap killed between its two renames left beside `out`, when `out` is missing:
/// the newest `.<name>.kiln-old-<pid>` of a process that is gone, if `is_ours` accepts it
/// (render: it holds a `.kiln-manifest`). A plain file or a stranger's directory is never
/// taken for it.
pub fn interrupted(out: &Path, is_ours: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if std::fs::symlink_metadata(out).is_ok() {
        return None;
    }
    leftovers(out)
        .into_iter()
        .filter(|l| l.old && gone(l.pid) && ours(&l.path, &is_ours))
        .max_by_key(|l| std::fs::symlink_metadata(&l.path).and_then(|m| m.modified()).ok())
        .map(|l| l.path)
}

/// Before a run reads `out`: put back the tree of an interrupted swap ([`interrupted`]), and
/// remove what runs that died left beside it (staging directories; old trees that `is_ours`
/// accepts, when `out` is one too). Returns the directory restored, if any.
pub fn recover(out: &Path, is_ours: impl Fn(&Path) -> bool) -> Result<Option<PathBuf>, OutputError> {
    let restored = match interrupted(out, &is_ours) {
        Some(old) => {
            std::fs::rename(&old, out).map_err(io("restore", &old))?;
            Some(old)
        }
        None => None,
    };
    // An old tree beside a finished one is the rest of a swap that completed; beside anything
    // else (a directory the user made again, say) it may be the only copy, and stays.
    let out_done = ours(out, &is_ours);
    for leftover in leftovers(out) {
        if !gone(leftover.pid) {
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&leftover.path).is_ok_and(|m| m.is_dir());
        let remove = if leftover.old {
            out_done && ours(&leftover.path, &is_ours)
        } else {
            is_dir
        };
        if remove {
            remove_tree(&leftover.path).map_err(io("remove leftover", &leftover.path))?;
        }
    }
    Ok(restored)
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

    fn has_manifest(dir: &Path) -> bool {
        dir.join(".kiln-manifest").is_file()
    }

    #[test]
    fn the_fallback_swap_is_recovered_from_only_a_kiln_tree() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rendered");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join(".kiln-manifest"), "# x\n").unwrap();
        std::fs::write(out.join("NOTES.md"), "mine\n").unwrap();
        let tmp = dir.path().join(".rendered.kiln-tmp-999999999");
        std::fs::create_dir(&tmp).unwrap();
        // A process killed between the two renames: the first happened, the second did not.
        let old = dir.path().join(".rendered.kiln-old-999999999");
        std::fs::rename(&out, &old).unwrap();
        // A plain file and a stranger's directory with the same kind of name.
        std::fs::write(dir.path().join(".rendered.kiln-old-999999998"), "x").unwrap();
        std::fs::create_dir(dir.path().join(".rendered.kiln-old-999999997")).unwrap();

        assert_eq!(interrupted(&out, has_manifest).as_deref(), Some(old.as_path()));
        assert_eq!(
            recover(&out, has_manifest).unwrap().as_deref(),
            Some(old.as_path())
        );
        assert_eq!(std::fs::read_to_string(out.join("NOTES.md")).unwrap(), "mine\n");
        assert!(!tmp.exists(), "a dead run's staging directory is removed");
        assert!(
            dir.path().join(".rendered.kiln-old-999999998").is_file(),
            "a file is left alone"
        );
        assert!(
            dir.path().join(".rendered.kiln-old-999999997").is_dir(),
            "so is a stranger's directory"
        );

        // A kiln tree aside while `out` is a directory that is not one: kept, it may be the
        // only copy.
        let aside = dir.path().join(".rendered.kiln-old-999999996");
        std::fs::rename(&out, &aside).unwrap();
        std::fs::create_dir(&out).unwrap();
        assert_eq!(recover(&out, has_manifest).unwrap(), None);
        assert!(aside.join("NOTES.md").is_file());
        // Once `out` is a kiln tree again, the leftover goes.
        std::fs::write(out.join(".kiln-manifest"), "").unwrap();
        recover(&out, has_manifest).unwrap();
        assert!(!aside.exists());
    }

    #[test]
    fn a_plain_file_is_never_restored() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rendered");
        std::fs::write(dir.path().join(".rendered.kiln-old-999999999"), "not a tree").unwrap();
        assert_eq!(recover(&out, has_manifest).unwrap(), None);
        assert!(!out.exists());
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "a").unwrap();
        match exchange(&a, &b) {
            Ok(()) => assert_eq!(std::fs::read_to_string(b.join("x")).unwrap(), "a"),
            Err(e) => assert!(exchange_unsupported(&e), "{e}"),
        }
    }

    #[test]
    fn the_fallback_syncs_each_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = Stage {
            root: dir.path().to_path_buf(),
            access: Access::Private,
            dirs: BTreeSet::new(),
            modes: Vec::new(),
            written: Vec::new(),
        };
        stage.write(&FilePath::new(&["a", "b"]).unwrap(), b"x").unwrap();
        assert_eq!(stage.written, [dir.path().join("a/b")]);
        sync_each(&stage).unwrap();
        std::fs::remove_file(dir.path().join("a/b")).unwrap();
        assert!(
            sync_each(&stage)
                .unwrap_err()
                .to_string()
                .starts_with("failed to sync ")
        );
    }

    #[test]
    fn modes_of_the_replaced_tree_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("mine/deep")).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::set_permissions(out.join("mine"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(out.join("mine/deep"), std::fs::Permissions::from_mode(0o500)).unwrap();
        replace_dir(&out, Access::Shared, |stage| {
            stage.dir(Path::new("mine/deep"))?;
            stage.write(&FilePath::new(&["mine", "f"]).unwrap(), b"x")?;
            stage.set_mode(Path::new("mine/f"), 0o640);
            Ok(())
        })
        .unwrap();
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(""), 0o750);
        assert_eq!(mode("mine"), 0o700);
        assert_eq!(mode("mine/deep"), 0o500);
        assert_eq!(mode("mine/f"), 0o640);
        // And a read-only directory in the old tree does not stop the next swap.
        replace_dir(&out, Access::Shared, |stage| {
            stage.write(&FilePath::new(&["g"]).unwrap(), b"y")
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("g")).unwrap(), "y");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["out"], "nothing is left beside it");
    }
}
