//! Writing the configuration file back after a CLI change.

use std::path::Path;

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, flushed to disk, then renamed over the file, so a crash
/// leaves the old file or the new one, never half of one. The file keeps
/// its permissions and owner; a symlink is followed (the link stays, its
/// target is replaced); the temporary file is removed when a step fails.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    // A symlinked file is replaced where it lives; the link stays.
    let path = match std::fs::canonicalize(path) {
        Ok(target) => target,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(err) => return Err(err),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = write_new(&tmp, &path, text).and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes `text` to the new file `tmp`, with the mode and owner of
/// `original` when it exists.
fn write_new(tmp: &Path, original: &Path, text: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::MetadataExt as _};
    let mut file = std::fs::File::create(tmp)?;
    if let Ok(meta) = std::fs::metadata(original) {
        file.set_permissions(meta.permissions())?;
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::write_atomically;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("balancer-write-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlinked_file_is_replaced_where_it_lives_with_its_mode_and_owner() {
        let dir = scratch("link");
        let target = dir.join("real.toml");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let owner = std::fs::metadata(&target).unwrap();
        let link = dir.join("balancer.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, "new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (owner.uid(), owner.gid()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = scratch("fail");
        // A directory where the file should be: the final rename fails.
        let path = dir.join("balancer.toml");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        assert!(write_atomically(&path, "new").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("balancer.toml")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
