//! `cargo xtask package`: the Debian package of the balancer, made with
//! Debian's own tools (dpkg-deb, dpkg-shlibdeps) from a staged tree.
//!
//! The tree is staged where debhelper would stage it,
//! `target/debian/balancer_VERSION_ARCH/debian/balancer/`, beside a
//! minimal `debian/control`, because dpkg-shlibdeps expects that layout.
//! What goes in it:
//!
//! | path | from |
//! |---|---|
//! | `/usr/bin/balancer` | the release build, stripped as dh_strip does |
//! | `/usr/lib/systemd/system/balancer.service` | `dist/systemd/balancer.service`, as it is (it names `/usr/bin/balancer`) |
//! | `/etc/balancer/balancer.toml` (conffile) | `dist/balancer.toml` |
//! | `/usr/share/man/man1/balancer*.1.gz` | `balancer generate man`, `gzip -9n` |
//! | bash, zsh and fish completions | `balancer generate completions SHELL` |
//! | `/usr/share/doc/balancer/` | README.md, `docs/` (pages, dashboard, plots), `examples/bird/` (`dist/bird`), `copyright` (`dist/debian/copyright`) |
//! | `DEBIAN/` | `dist/debian/control` with Version, Architecture, Installed-Size and Depends added; `conffiles`; `md5sums`; `dist/debian/{postinst,prerm,postrm}` |
//!
//! The version is the crate's, as the built binary reports it (`balancer
//! --version` prints `CARGO_PKG_VERSION`), so package and binary cannot
//! disagree. Depends comes from dpkg-shlibdeps, which reads the libraries
//! the binary links (libc, libgcc_s) and the symbol versions it uses from
//! their packages' symbols files: `libc6 (>= 2.34), libgcc-s1 (>= 4.2)`
//! on Debian 12, the oldest versions that provide every symbol it calls.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{bootstrap, shell};

/// The package's name.
const PACKAGE: &str = "balancer";

/// Files copied from the source tree into the package as they are:
/// (source, relative to the workspace; destination, relative to the
/// package's root).
const COPIED: &[(&str, &str)] = &[
    (
        "dist/systemd/balancer.service",
        "usr/lib/systemd/system/balancer.service",
    ),
    ("dist/balancer.toml", "etc/balancer/balancer.toml"),
    ("README.md", "usr/share/doc/balancer/README.md"),
    ("dist/debian/copyright", "usr/share/doc/balancer/copyright"),
    (
        "dist/bird/balancer-host.conf",
        "usr/share/doc/balancer/examples/bird/balancer-host.conf",
    ),
    (
        "dist/bird/router.conf",
        "usr/share/doc/balancer/examples/bird/router.conf",
    ),
];

/// The configuration files dpkg keeps an administrator's changes of.
const CONFFILES: &[&str] = &["/etc/balancer/balancer.toml"];

/// Where the docs go: every file of `docs/` (and `docs/img/`) keeps its
/// place relative to README.md, so the links between them still work.
const DOC_DIR: &str = "usr/share/doc/balancer";

/// The shells completions are made for, with where Debian's bash-completion,
/// zsh and fish packages look for them.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/balancer"),
    ("zsh", "usr/share/zsh/vendor-completions/_balancer"),
    ("fish", "usr/share/fish/vendor_completions.d/balancer.fish"),
];

/// The maintainer scripts, from `dist/debian/`.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// Fields of `DEBIAN/control` that this task computes; `dist/debian/control`
/// must not set them.
const COMPUTED_FIELDS: &[&str] = &["Version", "Architecture", "Installed-Size", "Depends"];

/// `cargo xtask package`: builds the package and prints the path of the
/// `.deb` as the only line on stdout, so that `BALANCER_DEB=$(cargo xtask
/// package)` works. Everything the steps print (cargo, apt-get, the
/// generator, dpkg-deb) goes to stderr: this process's stdout, which they
/// inherit, points at stderr until the path is printed.
pub fn run() -> Result<()> {
    let stdout = nix::unistd::dup(std::io::stdout()).context("cannot duplicate stdout")?;
    nix::unistd::dup2_stdout(std::io::stderr()).context("cannot point stdout at stderr")?;
    let deb = build();
    nix::unistd::dup2_stdout(&stdout).context("cannot restore stdout")?;
    println!("{}", deb?.display());
    Ok(())
}

/// Builds the release binary and the package, and returns the path of
/// the `.deb`: `target/debian/balancer_VERSION_ARCH.deb`.
pub fn build() -> Result<PathBuf> {
    bootstrap::run(bootstrap::Needs::PACKAGE)?;
    shell::run(shell::cargo().args(["build", "--release", "--package", PACKAGE]))?;
    let binary = shell::target_dir().join("release").join(PACKAGE);
    ensure!(
        binary.is_file(),
        "the build succeeded but {} does not exist",
        binary.display()
    );
    let version = debian_version(&crate_version(&binary)?)?;
    let arch = architecture()?;
    let out = shell::target_dir().join("debian");
    let name = format!("{PACKAGE}_{version}_{arch}");
    let work = out.join(&name);
    if work.exists() {
        fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove the old {}", work.display()))?;
    }
    let root = work.join("debian").join(PACKAGE);
    stage(&root, &binary)?;
    let depends = shlib_depends(&work, &root.join("usr/bin").join(PACKAGE))?;
    let template = read(&shell::workspace_root().join("dist/debian/control"))?;
    let control = control(&template, &version, &arch, installed_size(&root)?, &depends)?;
    write_control_dir(&root, &control)?;
    let deb = out.join(format!("{name}.deb"));
    shell::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The version `balancer --version` reports (`balancer 0.1.0`).
fn crate_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", binary.display()))?;
    ensure!(
        out.status.success(),
        "{} --version failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("balancer ")
        .map(str::to_owned)
        .with_context(|| format!("unexpected --version output {text:?}"))
}

/// The Debian version of a crate version: a pre-release (`1.2.0-rc.1`)
/// gets `~` in place of its `-`, so that it sorts before the release as
/// in SemVer (`1.2.0~rc.1` < `1.2.0`); anything Debian cannot express
/// without a revision is refused.
fn debian_version(crate_version: &str) -> Result<String> {
    let version = crate_version.replacen('-', "~", 1);
    let valid = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'));
    ensure!(
        valid,
        "crate version {crate_version:?} has no Debian equivalent (Debian allows digits first, then letters, digits, '.', '+' and '~')"
    );
    Ok(version)
}

/// The Debian architecture of this machine (`amd64`), which the build is
/// for.
fn architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("cannot run `dpkg --print-architecture`")?;
    ensure!(out.status.success(), "`dpkg --print-architecture` failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Puts every file of the package under `root`, with Debian's modes (0755
/// for directories and the binary, 0644 for the rest).
fn stage(root: &Path, binary: &Path) -> Result<()> {
    let workspace = shell::workspace_root();
    let bin = root.join("usr/bin").join(PACKAGE);
    create_parent(&bin)?;
    // As dh_strip: symbols and the compiler's notes go, the build id stays.
    shell::run(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                "-o",
            ])
            .arg(&bin)
            .arg(binary),
    )?;
    set_mode(&bin, 0o755)?;
    for (from, to) in COPIED {
        copy(&workspace.join(from), &root.join(to))?;
    }
    let docs = workspace.join("docs");
    for file in files_under(&docs)? {
        let relative = file.strip_prefix(&workspace).expect("under the workspace");
        copy(&file, &root.join(DOC_DIR).join(relative))?;
    }
    man_pages(root, &bin)?;
    for (shell_name, to) in COMPLETIONS {
        let script = output(Command::new(&bin).args(["generate", "completions", shell_name]))?;
        let path = root.join(to);
        create_parent(&path)?;
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        set_mode(&path, 0o644)?;
    }
    for dir in dirs_under(root)? {
        set_mode(&dir, 0o755)?;
    }
    Ok(())
}

/// The man pages, written by the staged binary and compressed as Debian
/// does (`gzip -9n`: no name or time stamp inside, so the same pages give
/// the same bytes).
fn man_pages(root: &Path, bin: &Path) -> Result<()> {
    let dir = root.join("usr/share/man/man1");
    shell::run(Command::new(bin).arg("generate").arg("man").arg(&dir))?;
    let pages = files_under(&dir)?;
    ensure!(!pages.is_empty(), "`balancer generate man` wrote no page");
    for page in &pages {
        set_mode(page, 0o644)?;
    }
    let names = pages
        .iter()
        .map(|p| p.file_name().expect("a page has a name"));
    shell::run(
        Command::new("gzip")
            .current_dir(&dir)
            .args(["-9n", "--"])
            .args(names),
    )
}

/// The `Depends` that dpkg-shlibdeps finds for the binary at `binary`;
/// `work` is where it looks for `debian/control`.
fn shlib_depends(work: &Path, binary: &Path) -> Result<String> {
    fs::write(
        work.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )
    .context("cannot write debian/control for dpkg-shlibdeps")?;
    let relative = binary
        .strip_prefix(work)
        .expect("the binary is staged in work");
    let text = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(work)
            .args(["-O", "-e"])
            .arg(relative),
    )?;
    parse_shlibs(&text)
}

/// The value of `shlibs:Depends=...` in dpkg-shlibdeps's output.
fn parse_shlibs(text: &str) -> Result<String> {
    let depends = text
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text:?}"))?;
    ensure!(
        depends.contains("libc6"),
        "dpkg-shlibdeps found no libc6 dependency ({depends}): is the binary dynamically linked?"
    );
    Ok(depends.trim().to_owned())
}

/// Installed-Size as dpkg-gencontrol computes it: each file's size
/// rounded up to KiB, and 1 KiB for each directory.
fn installed_size(root: &Path) -> Result<u64> {
    let mut kib = 0;
    for dir in dirs_under(root)? {
        kib += 1;
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let meta = entry?.metadata()?;
            if meta.is_file() {
                kib += meta.len().div_ceil(1024);
            }
        }
    }
    Ok(kib)
}

/// `DEBIAN/control`: the static fields of `template` with the computed
/// ones after `Package:`.
fn control(
    template: &str,
    version: &str,
    arch: &str,
    installed_size: u64,
    depends: &str,
) -> Result<String> {
    for field in COMPUTED_FIELDS {
        ensure!(
            !template
                .lines()
                .any(|line| line.starts_with(&format!("{field}:"))),
            "dist/debian/control sets {field}, which `cargo xtask package` computes"
        );
    }
    let mut lines = template.lines();
    let first = lines.next().unwrap_or_default();
    ensure!(
        first == format!("Package: {PACKAGE}"),
        "dist/debian/control must start with `Package: {PACKAGE}`, not {first:?}"
    );
    let mut text = format!(
        "{first}\nVersion: {version}\nArchitecture: {arch}\nInstalled-Size: {installed_size}\nDepends: {depends}\n"
    );
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    Ok(text)
}

/// Writes `DEBIAN/` under `root`: control, conffiles, md5sums of every
/// other file, and the maintainer scripts.
fn write_control_dir(root: &Path, control: &str) -> Result<()> {
    let md5sums = md5sums(root)?;
    let dir = root.join("DEBIAN");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(&dir, 0o755)?;
    let mut conffiles = String::new();
    for conffile in CONFFILES {
        ensure!(
            root.join(conffile.trim_start_matches('/')).is_file(),
            "conffile {conffile} is not in the package"
        );
        conffiles.push_str(conffile);
        conffiles.push('\n');
    }
    for (name, text) in [
        ("control", control),
        ("conffiles", &conffiles),
        ("md5sums", &md5sums),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        set_mode(&path, 0o644)?;
    }
    for script in SCRIPTS {
        let path = dir.join(script);
        copy(
            &shell::workspace_root().join("dist/debian").join(script),
            &path,
        )?;
        set_mode(&path, 0o755)?;
    }
    Ok(())
}

/// `md5sum` of every file but the conffiles (dpkg records theirs itself),
/// with paths relative to `root`, as dh_md5sums writes it.
fn md5sums(root: &Path) -> Result<String> {
    let files: Vec<PathBuf> = files_under(root)?
        .into_iter()
        .map(|f| f.strip_prefix(root).expect("under root").to_path_buf())
        .filter(|f| !CONFFILES.contains(&format!("/{}", f.display()).as_str()))
        .collect();
    output(
        Command::new("md5sum")
            .current_dir(root)
            .arg("--")
            .args(&files),
    )
}

/// Runs `command` and returns its stdout; fails with its stderr.
fn output(command: &mut Command) -> Result<String> {
    let line = shell::describe(command);
    let out = command
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Copies `from` to `to` with mode 0644, making `to`'s directory.
fn copy(from: &Path, to: &Path) -> Result<()> {
    create_parent(to)?;
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o644)
}

fn create_parent(path: &Path) -> Result<()> {
    let dir = path.parent().expect("a file in the tree has a parent");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// Every regular file under `dir`, sorted; symlinks and other kinds are
/// refused (the package holds none).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for sub in dirs_under(dir)? {
        for entry in fs::read_dir(&sub).with_context(|| format!("cannot list {}", sub.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_file() {
                files.push(entry.path());
            } else if !kind.is_dir() {
                bail!(
                    "{} is neither a file nor a directory",
                    entry.path().display()
                );
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `dir` and every directory under it.
fn dirs_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut at = 0;
    while let Some(current) = dirs.get(at).cloned() {
        at += 1;
        for entry in
            fs::read_dir(&current).with_context(|| format!("cannot list {}", current.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_versions_become_debian_versions_that_sort_alike() {
        assert_eq!(debian_version("0.1.0").unwrap(), "0.1.0");
        assert_eq!(debian_version("1.2.0-rc.1").unwrap(), "1.2.0~rc.1");
        assert_eq!(debian_version("1.2.0+build.5").unwrap(), "1.2.0+build.5");
        for bad in ["1.2.0-rc-1", "v1.0.0", "1.0.0_x", ""] {
            let err = debian_version(bad).unwrap_err().to_string();
            assert!(err.contains("has no Debian equivalent"), "{bad}: {err}");
        }
    }

    #[test]
    fn control_adds_the_computed_fields_after_the_package_name() {
        let template = read(&shell::workspace_root().join("dist/debian/control")).unwrap();
        let text = control(&template, "0.1.0", "amd64", 12345, "libc6 (>= 2.34)").unwrap();
        let fields: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .collect();
        assert_eq!(
            fields[..5],
            [
                "Package",
                "Version",
                "Architecture",
                "Installed-Size",
                "Depends"
            ]
        );
        for field in ["Maintainer", "Description", "Section", "Priority"] {
            assert!(fields.contains(&field), "{field}: {text}");
        }
        assert!(text.contains("\nDepends: libc6 (>= 2.34)\n"), "{text}");
        let doubled = format!("{template}Version: 9\n");
        let err = control(&doubled, "0.1.0", "amd64", 1, "libc6").unwrap_err();
        assert!(err.to_string().contains("sets Version"), "{err}");
        let err = control("Source: x\n", "0.1.0", "amd64", 1, "libc6").unwrap_err();
        assert!(err.to_string().contains("must start with"), "{err}");
    }

    #[test]
    fn shlibs_depends_is_read_from_dpkg_shlibdeps_output() {
        assert_eq!(
            parse_shlibs("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n").unwrap(),
            "libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
        );
        assert!(parse_shlibs("").is_err());
        assert!(parse_shlibs("shlibs:Depends=libfoo1\n").is_err());
    }

    #[test]
    fn the_files_copied_and_the_scripts_exist() {
        let workspace = shell::workspace_root();
        for (from, _) in COPIED {
            assert!(workspace.join(from).is_file(), "{from}");
        }
        for script in SCRIPTS {
            let path = workspace.join("dist/debian").join(script);
            let text = read(&path).unwrap();
            assert!(text.starts_with("#!/bin/sh\n"), "{script}");
            // dpkg --root runs them outside the root with DPKG_ROOT set:
            // every one must leave the host alone then.
            assert!(text.contains("DPKG_ROOT"), "{script}");
        }
        for conffile in CONFFILES {
            assert!(
                COPIED.iter().any(|(_, to)| format!("/{to}") == *conffile),
                "{conffile}"
            );
        }
    }
}
