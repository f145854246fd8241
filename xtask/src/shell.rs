//! Running the commands the tasks are made of, each echoed first.

use std::{
    env,
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};
use balancer_tests::cmd::describe;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo that runs this task (`$CARGO`), so every step uses the same
/// toolchain.
pub fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Echoes `command`, runs it with inherited output, and fails unless it
/// exits with status 0.
pub fn run(command: &mut Command) -> Result<()> {
    let line = describe(command);
    eprintln!("+ {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `program args...` quietly and returns its output whatever the exit
/// status; `None` if it cannot be started at all (not installed).
pub fn probe<I, S>(program: impl AsRef<OsStr>, args: I) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program).args(args).output().ok()
}
