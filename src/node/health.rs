//! The node's own health checks (store, disk space, peers) and the file
//! system figures behind capacity.

use std::path::Path;

pub use plexi_util::units::GIB;

use plexi_api::model::HealthCheck;

/// Total and available bytes of the file system holding `path`.
pub fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// Below this much free space the node calls itself unhealthy.
const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

pub fn disk_check(path: &Path) -> HealthCheck {
    match fs_space(path) {
        Ok((total, avail)) => HealthCheck {
            name: "disk_space".into(),
            ok: avail >= MIN_FREE_BYTES,
            detail: format!(
                "{:.1} GiB free of {:.1} GiB",
                avail as f64 / GIB,
                total as f64 / GIB
            ),
        },
        Err(e) => HealthCheck {
            name: "disk_space".into(),
            ok: false,
            detail: format!("statvfs failed: {e}"),
        },
    }
}
