//! The full-disk fault (root only): each node's data dir on its own small
//! tmpfs ([`TMPFS_MIB`]), a ballast file that leaves almost nothing free
//! ([`fill`]), deleted at heal ([`drain`]); the mounts go at cleanup
//! ([`unmount_source`], also for a crashed earlier run: every tmpfs whose
//! source is the plan's name). [`ballast_len`] is the pure part.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Size of each node's tmpfs: room for the store (about 450 MiB after a
/// short run, the update's release object included) and the two copies the
/// pre-check asks for before an update (its backup and a restore). Memory
/// is taken only as it is written (the `disk_full` ballast fills one node's
/// tmpfs at a time).
pub const TMPFS_MIB: u64 = 2560;
/// What the ballast leaves free.
pub const LEAVE_FREE_BYTES: u64 = 64 * 1024;
/// The ballast's name in the data dir.
pub const BALLAST: &str = "chaos-ballast";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] crate::net::NetError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { what, path, source }
}

/// The ballast for `free` bytes available: all but `leave`.
pub fn ballast_len(free: u64, leave: u64) -> u64 {
    free.saturating_sub(leave)
}

/// Mounts a tmpfs of `mib` MiB named `source` on `dir` (created).
pub fn mount_tmpfs(dir: &Path, source: &str, mib: u64) -> Result<(), DiskError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let size = format!("size={mib}m,mode=0700");
    let d = dir.to_string_lossy();
    crate::net::run("mount", &["-t", "tmpfs", "-o", &size, source, &d])?;
    Ok(())
}

/// Mount points of every mount named `source`, from `/proc/mounts` text.
pub fn parse_mounts(text: &str, source: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == source).then(|| f.next().map(PathBuf::from))?
        })
        .collect()
}

/// Unmounts every mount named `source` (lazily if busy); returns problems.
pub fn unmount_source(source: &str) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut problems = Vec::new();
    for dir in parse_mounts(&text, source).into_iter().rev() {
        let d = dir.to_string_lossy().into_owned();
        if crate::net::run("umount", &[&d]).is_err() {
            if let Err(e) = crate::net::run("umount", &["-l", &d]) {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

fn available(dir: &Path) -> Result<u64, DiskError> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io("statvfs", dir)(std::io::Error::other(e)))?;
    // SAFETY: statvfs(3) writes into the zeroed struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io("statvfs", dir)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fills `dir`'s filesystem with a ballast file (allocated, not sparse)
/// leaving [`LEAVE_FREE_BYTES`]; returns (ballast bytes, bytes free after).
pub fn fill(dir: &Path) -> Result<(u64, u64), DiskError> {
    let path = dir.join(BALLAST);
    let len = ballast_len(available(dir)?, LEAVE_FREE_BYTES);
    let f = std::fs::File::create(&path).map_err(io("creating", &path))?;
    // SAFETY: fallocate(2) on a file we own; no memory is involved.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        return Err(io("fallocate", &path)(std::io::Error::last_os_error()));
    }
    Ok((len, available(dir)?))
}

/// Deletes the ballast (no error when there is none).
pub fn drain(dir: &Path) -> Result<(), DiskError> {
    let path = dir.join(BALLAST);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ballast_leaves_what_it_should() {
        assert_eq!(ballast_len(1 << 20, LEAVE_FREE_BYTES), (1 << 20) - 65536);
        assert_eq!(ballast_len(1000, LEAVE_FREE_BYTES), 0);
    }

    #[test]
    fn mounts_are_found_by_source() {
        let text = "pxc17tmpfs /tmp/a/c1/data tmpfs rw,size=262144k 0 0\n\
                    tmpfs /run tmpfs rw 0 0\n\
                    pxc17tmpfs /tmp/a/c2/data tmpfs rw 0 0\n";
        assert_eq!(
            parse_mounts(text, "pxc17tmpfs"),
            vec![
                PathBuf::from("/tmp/a/c1/data"),
                PathBuf::from("/tmp/a/c2/data")
            ]
        );
        assert!(parse_mounts(text, "pxc1tmpfs").is_empty());
    }

    /// A real tmpfs (root only; skipped otherwise): fill leaves almost
    /// nothing, a write then fails with ENOSPC, drain gives it back.
    #[test]
    fn a_filled_tmpfs_refuses_writes_until_drained() {
        if !crate::net::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("chaos-disk-{}", std::process::id()));
        let source = format!("pxctest{}", std::process::id());
        mount_tmpfs(&dir, &source, 4).unwrap();
        let (ballast, free) = fill(&dir).unwrap();
        assert!(ballast > 3 << 20, "{ballast}");
        assert!(free <= LEAVE_FREE_BYTES, "{free}");
        let big = vec![7u8; 1 << 20];
        let err = std::fs::write(dir.join("x"), &big).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        drain(&dir).unwrap();
        std::fs::write(dir.join("x"), &big).unwrap();
        assert!(unmount_source(&source).is_empty());
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(&source));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
