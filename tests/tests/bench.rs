//! The bench binary as a user runs it: what a run prints and what it
//! leaves behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::privilege;

/// A fresh, empty directory, removed when dropped (also on failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Everything under the directory, or an empty list if it is gone.
    fn entries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.0.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                pending.push(entry.path());
                found.push(entry.path());
            }
        }
        found
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_run_with_no_write_prints_its_rows_and_leaves_the_docs_alone() -> Result<()> {
    if !privilege::check("bench_no_write") {
        return Ok(());
    }
    let docs = TempDir::new("bench-no-write")?;
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["datapath", "--no-write", "--docs"])
        .arg(docs.path())
        .args(["--calls", "50", "--rounds", "1"])
        .args(["--path", "new_v4", "--path", "new_v4_round_robin"])
        .output()
        .context("cannot run the bench binary")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the bench failed ({}):\n{stderr}",
        out.status
    );
    let written = docs.entries();
    ensure!(
        written.is_empty(),
        "--no-write created {written:?} under the docs directory"
    );
    for row in ["floor", "new_v4", "new_v4_round_robin"] {
        ensure!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(row)),
            "no row {row} in:\n{stdout}"
        );
    }
    Ok(())
}
