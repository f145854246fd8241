//! Running the system tools the harness drives (ip, ethtool), with errors
//! that quote the command and what it printed.

use std::{
    ffi::OsStr,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Runs `program args...` and returns its stdout, or an error quoting the
/// command line and its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    let output = output(&mut command)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` to completion and fails unless it exits with status 0.
pub fn output(command: &mut Command) -> Result<Output> {
    let line = describe(command);
    let output = command
        .output()
        .with_context(|| format!("cannot run `{line}` (is it installed? `cargo xtask bootstrap` installs the tools the tests use)"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// The command line as a shell would show it, for messages.
pub fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
