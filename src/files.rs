//! Small durable files: JSON written through a temp file, fsync and
//! rename (then the directory fsynced), read back leniently; recursive
//! copies that fsync what they write; private directories. Used by the
//! switch protocol, the supervisor and the node's data dir alike.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

/// Makes a directory's entries (renames, creations) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `path` as JSON, `None` if it is missing or does not decode.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// tmp file + fsync + rename + fsync dir.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Removes `path` (missing is fine) and fsyncs its directory.
pub fn remove_file_synced(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Recursive copy; files and directories are fsynced.
pub fn copy_dir(src: &Path, dst: &Path) -> io::Result<()> {
    copy_dir_except(src, dst, None)
}

/// [`copy_dir`], leaving out the top-level entry named `except`.
pub fn copy_dir_except(src: &Path, dst: &Path, except: Option<&str>) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        if except.is_some_and(|x| entry.file_name() == x) {
            continue;
        }
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
            File::open(&to)?.sync_all()?;
        }
    }
    fsync_dir(dst)
}

/// Mirrors the tree `src` to `dst` with hard links, for files that are
/// never changed once written; directories fsynced. A file that cannot be
/// linked (another file system) is copied into a new file and fsynced: never
/// written through an existing name, which may be a link to `src`'s file.
pub fn link_dir(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            link_dir(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            link_file(&entry.path(), &to)?;
        }
    }
    fsync_dir(dst)
}

/// Hard-links `src` as `to` (a new name), or where that fails (another
/// file system) copies it into a new file, fsynced: never writes through
/// an existing name, which may be a link to `src` itself.
pub fn link_file(src: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(src, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            io::copy(&mut File::open(src)?, &mut out)?;
            out.sync_all()
        }
    }
}

/// Removes `dir` recursively; a missing one is fine.
pub fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates `dir` and its parents, the last with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `path` with mode 0600, failing if it exists, writes `contents`
/// and fsyncs the file and its directory (secrets: tokens, keys).
pub fn create_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}
