//! The control socket is never open to other users, even under a umask of
//! 000: a watcher looks at its path while it is created again and again,
//! and must only ever see mode 0600. A test binary of its own, since the
//! umask it clears is the whole process's.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use balancer::control;

#[test]
fn the_socket_is_never_open_to_others() {
    let dir = std::env::temp_dir().join(format!("balancer-socket-mode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    // SAFETY: umask changes no memory; this binary runs no other test.
    let umask = unsafe { libc::umask(0) };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (socket, done) = (socket.clone(), done.clone());
        move || {
            let mut modes = BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&socket) {
                    modes.insert(meta.permissions().mode() & 0o777);
                }
            }
            modes
        }
    });
    for _ in 0..300 {
        let (requests, _pending) = tokio::sync::mpsc::channel(1);
        let server = control::listen(&socket, requests).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        server.abort();
    }
    done.store(true, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    let modes = watcher.join().unwrap();
    assert_eq!(modes, BTreeSet::from([0o600]), "the modes seen");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["control.sock"], "no private directory is left");
    let _ = std::fs::remove_dir_all(&dir);
}
