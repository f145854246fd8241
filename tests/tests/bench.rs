//! The bench binary as a user runs it: what a run prints and what it
//! leaves behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    plot_run::{plots_and_runs, run_of},
    privilege,
};

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

/// Every plot `doc` (in `docs`) shows must name the run its section names.
fn check_plots(docs: &Path, doc: &str) -> Result<usize> {
    let plots = plots_and_runs(doc);
    for (plot, run) in &plots {
        let run = run
            .as_ref()
            .with_context(|| format!("the section of {plot} names no run"))?;
        let drawn = run_of(&docs.join(plot))?;
        ensure!(
            drawn.as_ref() == Some(run),
            "{plot} comes from {drawn:?}, but the table beside it from {run:?}: run that section's benchmark again"
        );
    }
    Ok(plots.len())
}

#[test]
fn a_run_names_itself_in_its_section_and_in_every_plot_it_draws() -> Result<()> {
    if !privilege::check("bench_plot_run") {
        return Ok(());
    }
    let docs = TempDir::new("bench-plot-run")?;
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["datapath", "--docs"])
        .arg(docs.path())
        .args(["--calls", "50", "--rounds", "1", "--path", "new_v4"])
        .output()
        .context("cannot run the bench binary")?;
    ensure!(
        out.status.success(),
        "the bench failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = std::fs::read_to_string(docs.path().join("benchmarks.md"))?;
    ensure!(
        check_plots(docs.path(), &doc)? == 1,
        "one plot expected in:\n{doc}"
    );
    Ok(())
}

#[test]
fn the_plots_in_docs_come_from_the_runs_of_the_tables_beside_them() -> Result<()> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let doc = std::fs::read_to_string(docs.join("benchmarks.md"))?;
    let shown = plots_and_runs(&doc);
    check_plots(&docs, &doc)?;
    for entry in std::fs::read_dir(docs.join("img"))? {
        let name = format!("img/{}", entry?.file_name().to_string_lossy());
        ensure!(
            shown.iter().any(|(plot, _)| *plot == name),
            "docs/{name} is not shown in docs/benchmarks.md: remove it"
        );
    }
    Ok(())
}
