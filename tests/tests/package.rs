//! The Debian package of `cargo xtask package`, installed with dpkg into a
//! fresh root: every file where Debian expects it, nothing else, with sane
//! modes and owners; the configuration registered as a conffile, kept
//! across a reinstall once edited and removed by a purge; the binary
//! reporting the crate's version and accepting the shipped configuration;
//! man pages that man renders without a warning; bash, zsh and fish
//! completions; a unit that systemd-analyze accepts; `balancer doctor`
//! from the installed binary; a removal that leaves nothing.
//!
//! The root is an empty directory with an empty dpkg database
//! (`var/lib/dpkg/status`, `info/`, `updates/`), installed into with
//! `dpkg --root`. It has no libc6 registered, so dpkg runs with
//! `--force-depends`, and the test checks that the dependencies it
//! overrides are exactly the package's Depends. It has no shell either, so
//! the maintainer scripts run outside it (`--force-script-chrootless`) with
//! `DPKG_ROOT` set, which they honour by leaving the host alone: a prerm
//! that ran `balancer teardown` on the host would fail the removal, since
//! there is no /usr/bin/balancer on the host.
//!
//! The .deb is the one `cargo xtask test` built (`BALANCER_DEB`); without
//! the variable the test runs `cargo xtask package` itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use balancer_tests::{doctor::HOST_CHECKS, privilege};

/// The workspace's root (the parent of this crate's directory).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The .deb under test: `$BALANCER_DEB`, or the one `cargo xtask package`
/// makes (once per test process).
fn deb() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| match std::env::var_os("BALANCER_DEB") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "BALANCER_DEB={} is not a file",
                path.display()
            );
            path
        }
        None => build_package(),
    })
    .clone()
}

/// Runs `cargo xtask package` and returns the path it prints.
fn build_package() -> PathBuf {
    eprintln!(
        "BALANCER_DEB is not set: running `cargo xtask package` (`cargo xtask test` builds the package and sets it)"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "package"])
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run `cargo xtask package`");
    assert!(
        out.status.success(),
        "`cargo xtask package` failed ({}); run it by hand to see why, then `BALANCER_DEB=$(cargo xtask package) cargo test -p balancer-tests --test package`",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "`cargo xtask package` printed {stdout:?}, not the path of a .deb"
    );
    path
}

/// A fresh root with an empty dpkg database, removed on drop.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new(label: &str) -> Root {
        let dir =
            std::env::temp_dir().join(format!("balancer-package-{}-{label}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let db = dir.join("var/lib/dpkg");
        for sub in ["info", "updates"] {
            std::fs::create_dir_all(db.join(sub)).unwrap();
        }
        std::fs::write(db.join("status"), "").unwrap();
        Root { dir }
    }

    /// The path of `path` (absolute, as installed) in the root.
    fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// `dpkg --root=ROOT ARGS`, with dependencies and scripts as the
    /// module's documentation says.
    fn dpkg(&self, args: &[&str]) -> Output {
        let out = Command::new("dpkg")
            .arg(format!("--root={}", self.dir.display()))
            .args(["--force-depends", "--force-script-chrootless"])
            .args(args)
            .output()
            .expect("cannot run dpkg");
        assert!(
            out.status.success(),
            "dpkg {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn install(&self) -> Output {
        self.dpkg(&["--install", deb().to_str().unwrap()])
    }

    /// `Status-Abbrev|Version|Conffiles` of the package in the root's
    /// database.
    fn query(&self) -> String {
        let out = run(Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path("var/lib/dpkg").display()
            ))
            .args([
                "--showformat=${db:Status-Abbrev}|${Version}|${Conffiles}",
                "--show",
                "balancer",
            ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every regular file of the root outside dpkg's own `var/`, as an
    /// absolute path when installed.
    fn installed_files(&self) -> BTreeSet<String> {
        let mut files = BTreeSet::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let relative = entry.path().strip_prefix(&self.dir).unwrap().to_owned();
                if relative.starts_with("var") {
                    continue;
                }
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else {
                    files.insert(format!("/{}", relative.display()));
                }
            }
        }
        files
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`, fails the test with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the man pages and the completions are installed.
const MAN_DIR: &str = "/usr/share/man/man1";
const COMPLETIONS: [&str; 3] = [
    "/usr/share/bash-completion/completions/balancer",
    "/usr/share/zsh/vendor-completions/_balancer",
    "/usr/share/fish/vendor_completions.d/balancer.fish",
];
const DOC: &str = "/usr/share/doc/balancer";

/// Every file the package must install, with its mode.
fn expected_files() -> BTreeMap<String, u32> {
    let mut files = BTreeMap::new();
    files.insert("/usr/bin/balancer".to_owned(), 0o755);
    for file in [
        "/usr/lib/systemd/system/balancer.service",
        "/etc/balancer/balancer.toml",
        "/usr/share/doc/balancer/README.md",
        "/usr/share/doc/balancer/copyright",
        "/usr/share/doc/balancer/examples/bird/balancer-host.conf",
        "/usr/share/doc/balancer/examples/bird/router.conf",
    ]
    .into_iter()
    .chain(COMPLETIONS)
    {
        files.insert(file.to_owned(), 0o644);
    }
    for (page, _) in balancer::cli::generate::pages() {
        files.insert(format!("{MAN_DIR}/{page}.gz"), 0o644);
    }
    let docs = workspace().join("docs");
    let mut dirs = vec![docs.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(workspace()).unwrap();
                files.insert(format!("{DOC}/{}", relative.display()), 0o644);
            }
        }
    }
    files
}

/// The package's own fields, from the .deb.
fn field(name: &str) -> String {
    let out = run(Command::new("dpkg-deb").arg("--field").arg(deb()).arg(name));
    stdout(&out).trim().to_owned()
}

#[test]
fn the_package_installs_every_file_with_its_mode_and_a_conffile() {
    if !privilege::check("package_install") {
        return;
    }
    let deb = deb();
    eprintln!("testing {}", deb.display());
    let version = balancer::VERSION.replacen('-', "~", 1);
    let depends = field("Depends");
    assert_eq!(field("Package"), "balancer");
    assert_eq!(field("Version"), version);
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(
        depends.contains("libc6 (>= 2.") && depends.contains("libgcc-s1"),
        "Depends: {depends}"
    );
    let listing = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    for line in listing.lines() {
        assert_eq!(line.split_whitespace().nth(1), Some("root/root"), "{line}");
    }

    let root = Root::new("install");
    let out = root.install();
    // The dependencies dpkg overrode are exactly the package's Depends:
    // " balancer depends on libc6 (>= 2.34); however:".
    let stderr = String::from_utf8_lossy(&out.stderr);
    let overridden: BTreeSet<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("balancer depends on "))
        .filter_map(|l| l.strip_suffix("; however:"))
        .collect();
    let declared: BTreeSet<&str> = depends.split(", ").collect();
    assert_eq!(overridden, declared, "{stderr}");

    // Every file, nothing else, with its mode, owned by root.
    let expected = expected_files();
    let installed = root.installed_files();
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(
        installed.difference(&wanted).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files the package should not install"
    );
    assert_eq!(
        wanted.difference(&installed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files the package lacks"
    );
    for (file, mode) in &expected {
        let meta = std::fs::metadata(root.path(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{file}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{file}");
        let mut dir = Path::new(file).parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("/")) {
            let meta = std::fs::metadata(root.path(d.to_str().unwrap())).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{}", d.display());
            dir = d.parent();
        }
    }
    for (installed, source) in [
        (
            "/usr/lib/systemd/system/balancer.service",
            "dist/systemd/balancer.service",
        ),
        ("/etc/balancer/balancer.toml", "dist/balancer.toml"),
        ("/usr/share/doc/balancer/README.md", "README.md"),
    ] {
        assert_eq!(
            std::fs::read(root.path(installed)).unwrap(),
            std::fs::read(workspace().join(source)).unwrap(),
            "{installed} is not {source}"
        );
    }

    // Registered, with the configuration as a conffile.
    let conffile = root.path("/etc/balancer/balancer.toml");
    let md5 = stdout(&run(Command::new("md5sum").arg(&conffile)));
    let md5 = md5.split_whitespace().next().unwrap();
    assert_eq!(
        root.query(),
        format!("ii |{version}| /etc/balancer/balancer.toml {md5}")
    );

    // The binary, its version and the shipped configuration.
    let binary = root.path("/usr/bin/balancer");
    let out = run(Command::new(&binary).arg("--version"));
    assert_eq!(
        stdout(&out).trim(),
        format!("balancer {}", balancer::VERSION)
    );
    let out = run(Command::new(&binary).arg("check-config").arg(&conffile));
    assert!(
        stdout(&out).contains("valid (0 VIPs, 0 backends)"),
        "{out:?}"
    );

    // The unit: accepted by systemd, naming the installed binary.
    // --recursive-errors=no: the root holds no other unit (no
    // sysinit.target), and only this unit's own errors count.
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--recursive-errors=no"])
        .arg(format!("--root={}", root.dir.display()))
        .arg("balancer.service"));
    assert!(out.stderr.is_empty(), "{out:?}");
    let unit =
        std::fs::read_to_string(root.path("/usr/lib/systemd/system/balancer.service")).unwrap();
    for key in [
        "ExecStart=/usr/bin/balancer run --config /etc/balancer/balancer.toml",
        "ExecReload=/usr/bin/balancer reload",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key} not in the unit");
    }

    // An edited configuration survives a reinstall (an upgrade), and the
    // package's scripts ran outside the root without touching the host.
    std::fs::write(
        &conffile,
        format!(
            "{}# edited by hand\n",
            std::fs::read_to_string(&conffile).unwrap()
        ),
    )
    .unwrap();
    root.install();
    assert!(
        std::fs::read_to_string(&conffile)
            .unwrap()
            .ends_with("# edited by hand\n")
    );
    assert!(root.query().starts_with(&format!("ii |{version}|")));

    // Removal keeps the edited configuration; a purge takes it too.
    root.dpkg(&["--remove", "balancer"]);
    assert_eq!(
        root.installed_files(),
        BTreeSet::from(["/etc/balancer/balancer.toml".to_owned()])
    );
    assert!(root.query().starts_with("rc |"), "{}", root.query());
    root.dpkg(&["--purge", "balancer"]);
    assert_eq!(root.installed_files(), BTreeSet::new());
    assert!(!root.path("/etc/balancer").exists());
}

#[test]
fn the_installed_man_pages_and_completions_work() {
    if !privilege::check("package_man_completions") {
        return;
    }
    let root = Root::new("docs");
    root.install();

    let pages = balancer::cli::generate::pages();
    assert!(pages.len() > 30, "{} pages", pages.len());
    for (page, _) in &pages {
        let path = root.path(&format!("{MAN_DIR}/{page}.gz"));
        let name = page.trim_end_matches(".1");
        let roff = stdout(&run(Command::new("gzip").arg("-dc").arg(&path)));
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH {name} 1 "))),
            "{page}: no .TH header"
        );
        let out = run(Command::new("man")
            .args(["--warnings", "--local-file"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        let text = stdout(&out);
        assert!(
            out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for heading in ["NAME", "SYNOPSIS", "EXIT STATUS", "SEE ALSO"] {
            assert!(
                text.lines().any(|l| l == heading),
                "{page} has no {heading}:\n{text}"
            );
        }
        assert!(text.contains(name), "{page}:\n{text}");
    }

    // Each script names every subcommand, and no entry point beyond them.
    let command = <balancer::cli::Cli as clap::CommandFactory>::command();
    let mut names: Vec<String> = Vec::new();
    for sub in command.get_subcommands() {
        names.push(sub.get_name().to_owned());
        names.extend(sub.get_subcommands().map(|s| s.get_name().to_owned()));
    }
    assert!(names.len() > 30, "{names:?}");
    for file in COMPLETIONS {
        let text = std::fs::read_to_string(root.path(file)).unwrap();
        assert!(!text.trim().is_empty(), "{file} is empty");
        for name in &names {
            assert!(text.contains(name.as_str()), "{file} does not name {name}");
        }
        assert!(!text.contains("generate"), "{file} names `generate`");
    }
    let bash = root.path(COMPLETIONS[0]);
    let out = run(Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p balancer")
        .arg("bash")
        .arg(&bash));
    assert!(stdout(&out).contains("-F _balancer"), "{out:?}");
    let zsh = std::fs::read_to_string(root.path(COMPLETIONS[1])).unwrap();
    assert!(zsh.starts_with("#compdef balancer"), "{zsh}");
    let fish = std::fs::read_to_string(root.path(COMPLETIONS[2])).unwrap();
    assert!(fish.contains("complete -c balancer"), "{fish}");
}

#[test]
fn the_installed_binary_runs_doctor_on_the_installed_configuration() {
    if !privilege::check("package_doctor") {
        return;
    }
    let root = Root::new("doctor");
    root.install();
    // On the shipped configuration, which names no interface: every check
    // of this host passes, the missing interface is a warning, and the
    // exit status is 0 (no failure).
    let out = Command::new(root.path("/usr/bin/balancer"))
        .arg("--json")
        .arg("doctor")
        .arg("--config")
        .arg(root.path("/etc/balancer/balancer.toml"))
        .output()
        .unwrap();
    let (text, stderr) = (stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "doctor:\n{text}{stderr}");
    let checks: Vec<serde_json::Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let levels: BTreeMap<String, String> = checks
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_owned();
            (field("check"), field("level"))
        })
        .collect();
    for check in HOST_CHECKS {
        assert_eq!(
            levels.get(check).map(String::as_str),
            Some("ok"),
            "{check}: {text}"
        );
    }
    assert_eq!(
        levels.get("interface").map(String::as_str),
        Some("warn"),
        "{text}"
    );
}
