//! `balancer generate man DIR` and `balancer generate completions SHELL`:
//! the man pages and shell completions of this binary's own command line.
//!
//! Why the binary itself rather than a generator of its own: the pages
//! and completions then come from the very executable a package ships
//! (`cargo xtask package` runs the release binary it packages), so they
//! cannot describe another build of it; a separate generator would link
//! the whole library a second time, and xtask cannot do it, since it must
//! build before the XDP toolchain exists and so does not depend on this
//! crate. An operator who installed from source can run it too.
//!
//! Why an entry point apart from [`Cli`] rather than a hidden subcommand
//! of it: the help, the man pages and the completions are about running a
//! balancer, not about packaging one, and clap_complete writes hidden
//! subcommands into the completion scripts all the same. So
//! [`super::main`] hands a first argument `generate` to [`main`] before
//! [`Cli`] parses anything, and [`Cli`] does not know the word.

use std::{
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

use super::{Cli, exit};

/// The first argument that selects this entry point.
pub const NAME: &str = "generate";

/// `balancer generate ...`.
#[derive(Debug, Parser)]
#[command(
    name = "generate",
    bin_name = "balancer generate",
    about = "Write the man pages or the shell completions of balancer's command line"
)]
pub struct GenerateCli {
    #[command(subcommand)]
    pub what: GenerateCommand,
}

/// What to generate.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write a man page per command (balancer.1, balancer-run.1,
    /// balancer-vip-add.1, ...) into DIR, uncompressed.
    Man {
        /// The directory the pages are written to (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions {
        /// The shell the script is for.
        shell: clap_complete::Shell,
    },
}

/// Parses `args` (`generate ...`) and runs it; clap's usage errors exit
/// 2, any other failure 1.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = GenerateCli::parse_from(args);
    match run(&cli.what) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::FAILURE.code)
        }
    }
}

/// Runs `balancer generate ...`.
pub fn run(command: &GenerateCommand) -> Result<()> {
    match command {
        GenerateCommand::Man { dir } => {
            let written = man_pages(dir)?;
            println!("wrote {} man pages to {}", written.len(), dir.display());
            Ok(())
        }
        GenerateCommand::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "balancer", &mut out);
            std::io::stdout()
                .write_all(&out)
                .context("cannot write the completion script")
        }
    }
}

/// Where the package puts the documentation the pages point to.
const DOC_DIR: &str = "/usr/share/doc/balancer";

/// Writes one page per command that is not hidden into `dir` and returns
/// their paths, the root's first.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (page, text) in pages() {
        let path = dir.join(&page);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Every page as (file name, roff text): `balancer.1` and one
/// `balancer-SUB[-SUB].1` per command below it, hidden ones left out.
pub fn pages() -> Vec<(String, String)> {
    let mut root = Cli::command().disable_help_subcommand(true);
    // Building sets each subcommand's display name (balancer-vip-add)
    // and copies the global options into every subcommand.
    root.build();
    let mut pages = Vec::new();
    collect(&root, None, &mut pages);
    pages
}

/// Adds the page of `command` (whose parent's page name is `parent`) and
/// those of its subcommands to `pages`.
fn collect(command: &clap::Command, parent: Option<&str>, pages: &mut Vec<(String, String)>) {
    let name = page_name(command);
    let children: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .collect();
    pages.push((format!("{name}.1"), page(command, parent, &children)));
    for child in children {
        collect(child, Some(&name), pages);
    }
}

/// `balancer`, `balancer-vip`, `balancer-vip-add`.
fn page_name(command: &clap::Command) -> String {
    command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned()
}

/// The roff text of one page: clap_mangen's page (the global options
/// only on the root's: each other page points to it), then EXIT STATUS and
/// SEE ALSO.
fn page(command: &clap::Command, parent: Option<&str>, children: &[&clap::Command]) -> String {
    // The root's --help ends with the exit statuses, which the page gives
    // a section of its own instead.
    let mut shown = command.clone().after_help(None::<&str>);
    if parent.is_some() {
        // Subcommands carry copies of the global options: hidden here so
        // that they are described once, in balancer(1).
        shown = shown.mut_args(|arg| {
            if arg.is_global_set() {
                arg.hide(true)
            } else {
                arg
            }
        });
    }
    let mut out = Vec::new();
    Man::new(shown)
        .manual("balancer manual")
        .source(concat!("balancer ", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .expect("writing to a Vec cannot fail");
    let mut roff = Roff::new();
    if parent.is_some() {
        roff.control("SH", ["GLOBAL OPTIONS"]).text([
            roman("The global options of "),
            bold("balancer"),
            roman("(1) ("),
            bold("--socket"),
            roman(", "),
            bold("--json"),
            roman(", "),
            bold("--log-format"),
            roman(") apply to this command too."),
        ]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for status in exit::STATUSES {
        roff.control("TP", [])
            .text([bold(status.code.to_string())])
            .text([roman(status.meaning)]);
    }
    let mut see_also = Vec::new();
    for name in parent
        .into_iter()
        .map(str::to_owned)
        .chain(children.iter().map(|c| page_name(c)))
    {
        if !see_also.is_empty() {
            see_also.push(roman(", "));
        }
        see_also.push(bold(name));
        see_also.push(roman("(1)"));
    }
    if !see_also.is_empty() {
        see_also.push(roman("; "));
    }
    see_also.extend([
        roman("the documentation in "),
        italic(DOC_DIR),
        roman(": README.md, and docs/ with configuration.md, operations.md and control-api.md."),
    ]);
    roff.control("SH", ["SEE ALSO"]).text(see_also);
    roff.to_writer(&mut out)
        .expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("roff text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a user can run, as its page name.
    fn commands() -> Vec<String> {
        pages()
            .into_iter()
            .map(|(page, _)| page.trim_end_matches(".1").to_owned())
            .collect()
    }

    #[test]
    fn every_visible_command_has_a_page_and_generate_has_none() {
        let commands = commands();
        for expected in [
            "balancer",
            "balancer-run",
            "balancer-check-config",
            "balancer-vip",
            "balancer-vip-add",
            "balancer-backend-weight",
            "balancer-deny-add",
            "balancer-host-drain",
            "balancer-teardown",
            "balancer-decap",
        ] {
            assert!(commands.contains(&expected.to_owned()), "{expected}");
        }
        assert!(
            !commands.iter().any(|c| c.contains("generate")),
            "{commands:?}"
        );
        assert!(
            !commands.iter().any(|c| c.ends_with("-help")),
            "{commands:?}"
        );
    }

    #[test]
    fn pages_state_the_exit_statuses_and_the_global_options_once() {
        for (name, text) in pages() {
            let title = text
                .lines()
                .find(|l| l.starts_with(".TH "))
                .unwrap_or_default();
            assert!(
                title.starts_with(&format!(".TH {} 1 ", name.trim_end_matches(".1"))),
                "{name}: {title}"
            );
            assert!(text.contains(".SH \"EXIT STATUS\""), "{name}");
            for status in exit::STATUSES {
                assert!(text.contains(status.meaning), "{name}: {}", status.code);
            }
            let socket_option = text.contains("\\-\\-socket");
            if name == "balancer.1" {
                assert!(text.contains(".SH \"GLOBAL OPTIONS\""), "{text}");
                assert!(
                    socket_option && text.contains("\\-\\-log\\-format"),
                    "{text}"
                );
            } else {
                // Named in the pointer to balancer(1), never described.
                assert!(!text.contains("answer as JSON"), "{name}:\n{text}");
                assert!(text.contains("apply to this command too"), "{name}");
            }
        }
    }

    /// Every command below `command` (itself included) with its path.
    fn walk(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in command.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
        out.push((path, command.clone()));
    }

    #[test]
    fn every_argument_of_every_command_has_a_help_line() {
        let mut commands = Vec::new();
        for (mut root, path) in [
            (Cli::command(), "balancer"),
            (GenerateCli::command(), "balancer generate"),
        ] {
            root.build();
            walk(&root, path.into(), &mut commands);
        }
        assert!(commands.len() > 30, "{}", commands.len());
        for (path, command) in commands {
            assert!(command.get_about().is_some(), "`{path}` has no help line");
            for arg in command.get_arguments() {
                let help = arg.get_help().map(ToString::to_string);
                assert!(
                    help.is_some_and(|h| !h.trim().is_empty()),
                    "`{path}`: argument {} has no help line",
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn pages_point_to_their_parent_and_children() {
        let pages: std::collections::BTreeMap<String, String> = pages().into_iter().collect();
        let vip = &pages["balancer-vip.1"];
        assert!(vip.contains("\\fBbalancer\\fR(1)"), "{vip}");
        assert!(vip.contains("\\fBbalancer\\-vip\\-add\\fR(1)"), "{vip}");
        let add = &pages["balancer-vip-add.1"];
        assert!(add.contains("\\fBbalancer\\-vip\\fR(1)"), "{add}");
        assert!(add.contains("NAME"), "{add}");
    }
}
