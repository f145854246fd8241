//! docs/benchmarks.md: a fixed introduction (method common to every
//! benchmark), then one section per benchmark. A run rewrites the sections
//! of the benchmarks it ran and keeps the others as the last run left them,
//! so `cargo xtask bench datapath` refreshes one table without erasing the
//! rest. Each section names the machine and date it was measured on.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use crate::stats::Summary;

/// The benchmarks, in the order of the document.
pub const ORDER: [&str; 4] = ["datapath", "e2e", "control", "scale"];

/// One benchmark's part of the document, in Markdown.
pub struct Section {
    pub name: &'static str,
    pub body: String,
}

/// A Markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as Markdown, numbers right-aligned.
    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for (i, _) in self.header.iter().enumerate() {
            out.push_str(if i == 0 { " --- |" } else { " ---: |" });
        }
        out.push('\n');
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    /// The table as aligned plain text, for the terminal (without the
    /// Markdown code marks).
    pub fn text(&self) -> String {
        let plain = |cell: &String| cell.replace('`', "");
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(plain).collect())
            .collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .chain([self.header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c == 0 {
                    let _ = write!(out, "{cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(out, "  {cell:>w$}", w = widths[c]);
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.header);
        for row in &rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A figure with its spread: "median (min-max)".
pub fn spread(s: &Summary, decimals: usize) -> [String; 3] {
    [
        number(s.median, decimals),
        number(s.min, decimals),
        number(s.max, decimals),
    ]
}

/// A number with thousands separators and `decimals` decimals.
pub fn number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_owned(), format!(".{f}")),
        None => (text.clone(), String::new()),
    };
    let (sign, digits) = match int.strip_prefix('-') {
        Some(d) => ("-", d.to_owned()),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{sign}{grouped}{frac}")
}

/// This run of the benchmarks: the commit measured and when the run
/// started. Every section it writes names it (through [`machine`]) and so
/// does every plot it draws ([`crate::plot`]).
pub struct Run {
    /// The short commit, "with uncommitted changes" when the tree differs
    /// from it outside docs/.
    pub commit: String,
    /// When the run started, RFC 3339 in UTC to the second.
    pub started: String,
}

impl Run {
    /// "run 2026-12-05T09:40:12Z, commit 1a2b3c4": how sections and plots
    /// name the run.
    pub fn label(&self) -> String {
        format!("run {}, commit {}", self.started, self.commit)
    }
}

/// The run this process makes.
pub fn run() -> &'static Run {
    static RUN: std::sync::OnceLock<Run> = std::sync::OnceLock::new();
    RUN.get_or_init(|| Run {
        commit: commit(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

/// What the figures were measured on, and in which run.
pub fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{model}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {} ({})",
        kernel.trim(),
        run().label()
    )
}

/// The commit measured: HEAD, and whether the tree differs from it.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The documents this run rewrites do not count as changes.
    let status = [
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ":(top)",
        ":(top,exclude)docs",
    ];
    if git(&status).is_some_and(|s| !s.is_empty()) {
        commit.push_str(" with uncommitted changes");
    }
    commit
}

const INTRO: &str = "# Benchmarks

Written by `cargo xtask bench` (as root; `cargo xtask bench NAME...` runs
some of: datapath, e2e, control, scale, and rewrites only their sections).
Nothing here is asserted by a test: these are measurements, and the machines
they come from are small and shared.

Common method: every figure is the median of several counted runs after
warm-up runs that are thrown away, with the lowest and highest counted run
beside it. Random choices (flows, clients) come from fixed seeds, so a run
repeats the same work. Each section says what one run is, how many there
were, and which machine and commit it was measured on.
";

/// Rewrites `path` with `sections` in place of their previous versions.
pub fn write(path: &Path, sections: &[Section]) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::from(INTRO);
    for name in ORDER {
        let body = match sections.iter().find(|s| s.name == name) {
            Some(section) => Some(section.body.trim().to_owned()),
            None => previous(&old, name),
        };
        if let Some(body) = body {
            let _ = write!(
                out,
                "\n<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->\n"
            );
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The body of section `name` in a previous document.
fn previous(doc: &str, name: &str) -> Option<String> {
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let from = doc.find(&start)? + start.len();
    let to = from + doc[from..].find(&end)?;
    Some(doc[from..to].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(1234567.891, 1), "1,234,567.9");
        assert_eq!(number(-1000.0, 0), "-1,000");
        assert_eq!(number(999.0, 0), "999");
    }

    #[test]
    fn a_run_keeps_the_sections_it_did_not_run() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let path = dir.join("benchmarks.md");
        let section = |name, body: &str| Section {
            name,
            body: body.to_owned(),
        };
        write(&path, &[section("datapath", "D1"), section("scale", "S1")]).unwrap();
        write(&path, &[section("scale", "S2"), section("control", "C2")]).unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(previous(&doc, "datapath").as_deref(), Some("D1"));
        assert_eq!(previous(&doc, "control").as_deref(), Some("C2"));
        assert_eq!(previous(&doc, "scale").as_deref(), Some("S2"));
        assert!(previous(&doc, "e2e").is_none());
        assert!(doc.find("D1").unwrap() < doc.find("C2").unwrap());
    }
}
