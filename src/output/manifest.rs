//! `<out>/.kiln-manifest`: the files kiln wrote, each with the SHA-256 of what it wrote, and
//! reading files in the output directory without ever following a link or opening anything
//! that is not a regular file.
//!
//! The format is one `<sha256 hex>  <path>` line per file, `sha256sum`'s own, under a `#`
//! comment. The first format listed bare paths; [`Manifest::parse`] still
//! reads it, and the next write replaces it with the hashed form.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The comment at the top of the manifest.
pub const HEADER: &str = "# Files kiln render wrote here, with the SHA-256 of what it wrote. A file that is no \
     longer rendered is deleted only while it still matches. Do not edit.\n";

/// The most kiln reads of one file in the output directory: more is never its own.
pub const MAX_READ: u64 = 64 << 20;

/// The entries of a manifest, by path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The SHA-256 (hex) of each file as kiln wrote it; `None` in the first format.
    pub entries: BTreeMap<String, Option<String>>,
    /// True when any entry came without a hash (the first format).
    pub old_format: bool,
}

impl Manifest {
    /// Read a manifest's text, either format.
    pub fn parse(text: &str) -> Self {
        let mut manifest = Self::default();
        for line in text.lines() {
            let line = line.trim_end();
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            match line.split_once("  ") {
                Some((hash, path)) if is_hash(hash) && !path.is_empty() => {
                    manifest.entries.insert(path.to_string(), Some(hash.to_string()));
                }
                _ => {
                    manifest.old_format = true;
                    manifest.entries.insert(line.to_string(), None);
                }
            }
        }
        manifest
    }

    /// The manifest text for `entries` (path → hash), sorted by path.
    pub fn render<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let sorted: BTreeMap<&str, &str> = entries.into_iter().collect();
        let mut text = HEADER.to_string();
        for (path, hash) in sorted {
            text.push_str(hash);
            text.push_str("  ");
            text.push_str(path);
            text.push('\n');
        }
        text
    }
}

fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 of `bytes`, lowercase hex.
pub fn hash(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Open `path` for reading only if it is a regular file: a symlink is not followed, and a
/// FIFO or a device is never waited on (`O_NONBLOCK`, then checked before any read).
/// `Ok(None)` for anything that is not a regular file.
fn open_regular(path: &Path) -> std::io::Result<Option<(std::fs::File, u64)>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        // O_NOFOLLOW on a symlink.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let len = meta.len();
    Ok(meta.is_file().then_some((file, len)))
}

/// The contents of the regular file `path`, if it is one no larger than `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let Some((file, len)) = open_regular(path)? else {
        return Ok(None);
    };
    if len > limit {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The SHA-256 of the regular file `path`, read in blocks; `None` when it is not one.
pub fn hash_regular(path: &Path) -> std::io::Result<Option<String>> {
    let Some((mut file, _)) = open_regular(path)? else {
        return Ok(None);
    };
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut block = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        context.update(&block[..n]);
    }
    Ok(Some(hex(context.finish().as_ref())))
}

/// True when the regular file `path` starts with `prefix`.
pub fn starts_with(path: &Path, prefix: &[u8]) -> bool {
    let Ok(Some((file, len))) = open_regular(path) else {
        return false;
    };
    if len < prefix.len() as u64 {
        return false;
    }
    let mut start = vec![0u8; prefix.len()];
    let mut file = file;
    file.read_exact(&mut start).is_ok() && start == prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_parse() {
        let h = hash(b"x\n");
        assert_eq!(h.len(), 64);
        let new = Manifest::render([("dev/a.yaml", h.as_str())]);
        assert!(new.starts_with("# Files kiln render wrote here"));
        let parsed = Manifest::parse(&new);
        assert!(!parsed.old_format);
        assert_eq!(parsed.entries["dev/a.yaml"].as_deref(), Some(h.as_str()));

        let old = Manifest::parse("# Files kiln render wrote here; ...\ndev/a.yaml\nargocd/dev.yaml\n");
        assert!(old.old_format);
        assert_eq!(old.entries.len(), 2);
        assert_eq!(old.entries["dev/a.yaml"], None);
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "# Rendered by kiln 1\n").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        assert_eq!(
            read_regular(&file, 100).unwrap().unwrap(),
            b"# Rendered by kiln 1\n"
        );
        assert_eq!(read_regular(&file, 3).unwrap(), None, "over the limit");
        assert_eq!(
            hash_regular(&file).unwrap(),
            Some(hash(b"# Rendered by kiln 1\n"))
        );
        assert!(starts_with(&file, b"# Rendered"));
        for other in ["link", "fifo"] {
            let path = dir.path().join(other);
            assert_eq!(read_regular(&path, 100).unwrap(), None, "{other}");
            assert_eq!(hash_regular(&path).unwrap(), None, "{other}");
            assert!(!starts_with(&path, b"# Rendered"), "{other}");
        }
    }
}
