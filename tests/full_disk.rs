//! A full disk, for real: a node whose data dir is a small tmpfs (root
//! only; skipped with a message otherwise), filled with a ballast until
//! its writes fail, then given room again. sled 0.34 keeps its first write
//! error and returns it forever, so without the store watchdog's
//! "poisoned" rule the node would refuse every write until restarted by
//! hand (chaos seed 3 in CI: "No space left on device" for 80 s after the
//! heal). The test asserts the behaviour: writes succeed again by
//! themselves, and what was stored before reads back.

mod common;

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Unmounts the tmpfs when the test ends, whatever happened (after the
/// node, which is dropped first).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn available(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) writes into the zeroed struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn a_node_whose_disk_filled_up_writes_again_once_it_has_room() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("s1/data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs on {}", data.display());
    let _mount = Mount(data.clone());
    let mut node = TestNode::spawn(
        root.path(),
        NodeSpec {
            name: "s1",
            bootstrap: vec![],
            region: "r1",
            zone: "z1",
            config: Some(FAST),
        },
    );
    let before = vec![7u8; 4096];
    let q = "consistency=strong&replication_factor=1";
    assert_eq!(node.put("before", &before, q).status(), 201);

    // Fill the disk, leaving 64 KiB, and write until the store fails.
    let ballast = data.join("ballast");
    let f = std::fs::File::create(&ballast).unwrap();
    let len = available(&data).saturating_sub(64 * 1024);
    // SAFETY: fallocate(2) on a file we own.
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) },
        0
    );
    drop(f);
    // 16 KiB bodies stay in sled itself (values of 64 KiB or more go to
    // value files, whose writes fail alone and cleanly on a full disk and
    // poison nothing): they drive sled into the poisoned state this guards.
    let body = vec![1u8; 16 * 1024];
    let failed = (0..800).any(|i| node.put(&format!("fill-{i}"), &body, q).status() != 201);
    assert!(
        failed,
        "writes never failed on a full disk\n{}",
        node.log_tail()
    );

    // Room again: the watchdog finds the store poisoned and exits the
    // worker; the supervisor starts a new one, whose writes succeed.
    let worker = node.worker_pid();
    std::fs::remove_file(&ballast).unwrap();
    let poisoned = wait_for(Duration::from_secs(40), || {
        node.log().contains("the store is poisoned").then_some(())
    });
    assert!(
        poisoned.is_some(),
        "the node never found its store poisoned\n{}",
        node.log_tail()
    );
    node.await_serving(worker);
    let after = vec![9u8; 4096];
    let recovered = wait_for(Duration::from_secs(30), || {
        (node.put("after", &after, q).status() == 201).then_some(())
    });
    assert!(
        recovered.is_some(),
        "writes still fail after the restart\n{}",
        node.log_tail()
    );
    for (id, bytes) in [("before", &before), ("after", &after)] {
        let res = node.get(
            &format!("/api/v1/clustering/storage/data/{id}?consistency=strong"),
            Some(ADMIN),
        );
        assert_eq!(res.status(), 200, "{id}");
        assert_eq!(res.bytes().unwrap().as_ref(), bytes.as_slice(), "{id}");
    }
}
