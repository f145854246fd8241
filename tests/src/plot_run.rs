//! Which benchmark run a plot in docs/img comes from: the bench binary
//! writes it in a PNG text chunk, and the tests compare it with the run
//! that the plot's section of docs/benchmarks.md names.

use std::path::Path;

use anyhow::{Context as _, Result};

/// The keyword of the PNG text chunk that names the plot's run.
pub const RUN_KEY: &str = "balancer-bench-run";

/// The run the plot at `path` names, None when it names none.
pub fn run_of(path: &Path) -> Result<Option<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .with_context(|| format!("{} is not a PNG", path.display()))?;
    Ok(reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|chunk| chunk.keyword == RUN_KEY)
        .map(|chunk| chunk.text.clone()))
}

/// The runs a benchmarks document names, by plot: for each `![...](img/F)`
/// the plot's path (`img/F`) and the run its section names ("run ...,
/// commit ..."), None when the section names none.
pub fn plots_and_runs(doc: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for section in doc.split("<!-- bench:").skip(1) {
        let run = section.find("(run ").map(|at| {
            let label = &section[at + 1..];
            label[..label.find(')').unwrap_or(label.len())].to_owned()
        });
        let mut rest = section;
        while let Some(at) = rest.find("](img/") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push((after[..end].to_owned(), run.clone()));
            rest = &after[end..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_plot_gets_the_run_of_its_section() {
        let doc = "intro ![x](img/intro.png)
<!-- bench:a -->
Measured on a CPU, Linux 6.1 (run 2026-12-05T09:00:00Z, commit abc).
![one](img/one.png) and ![two](img/two.png)
<!-- /bench:a -->
<!-- bench:b -->
no run named ![three](img/three.png)
<!-- /bench:b -->
";
        let run = Some("run 2026-12-05T09:00:00Z, commit abc".to_owned());
        assert_eq!(
            plots_and_runs(doc),
            [
                ("img/one.png".to_owned(), run.clone()),
                ("img/two.png".to_owned(), run),
                ("img/three.png".to_owned(), None),
            ]
        );
    }
}
