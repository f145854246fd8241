//! The exit statuses of `balancer`: one per outcome that a script or a
//! systemd unit acts on differently. Stated once here, and shown by
//! `balancer --help`, every man page (EXIT STATUS) and
//! docs/control-api.md.
//!
//! Small numbers after clap's own 2, rather than sysexits.h's 64 to 78:
//! clap already reports usage errors with 2, not sysexits' EX_USAGE (64),
//! so borrowing a few sysexits codes would mix two conventions in one
//! command; 3 and 4 follow 1 and 2 without colliding with either.

use crate::control::CallError;

/// An exit status and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub code: u8,
    pub meaning: &'static str,
}

/// The command did what was asked.
pub const SUCCESS: Status = Status {
    code: 0,
    meaning: "Success.",
};

/// Anything not below: an invalid or unreadable configuration file, a
/// failed start or teardown, an I/O error, a control socket this user may
/// not use, an answer that is not a response.
pub const FAILURE: Status = Status {
    code: 1,
    meaning: "Failure: an invalid or unreadable file, a daemon that failed to start, \
              an I/O error, a control socket this user may not use (permission denied), \
              or any other error.",
};

/// clap's status for a command line it cannot parse.
pub const USAGE: Status = Status {
    code: 2,
    meaning: "Usage error: an unknown command or option, a missing or malformed argument; \
              nothing was done.",
};

/// The daemon answered with an error ([`CallError::Refused`]).
pub const REFUSED: Status = Status {
    code: 3,
    meaning: "The daemon refused the request: it answered with an error, such as an \
              unknown VIP or backend, an invalid change or reload, or too many clients \
              at once; nothing was changed.",
};

/// No daemon answered ([`CallError::NoDaemon`]).
pub const NO_DAEMON: Status = Status {
    code: 4,
    meaning: "No daemon answered: the control socket is missing or refuses connections \
              (no `balancer run` serves it), or the connection closed or timed out \
              without an answer.",
};

/// Every status, in order.
pub const STATUSES: [Status; 5] = [SUCCESS, FAILURE, USAGE, REFUSED, NO_DAEMON];

/// The status of a command that failed with `err`: [`REFUSED`] or
/// [`NO_DAEMON`] when a [`CallError`] of those kinds is in its chain,
/// [`FAILURE`] otherwise.
pub fn of(err: &anyhow::Error) -> Status {
    match err.chain().find_map(|e| e.downcast_ref::<CallError>()) {
        Some(CallError::Refused { .. }) => REFUSED,
        Some(CallError::NoDaemon { .. }) => NO_DAEMON,
        Some(CallError::Failed { .. }) | None => FAILURE,
    }
}

/// Width the help paragraph is wrapped to (clap wraps nothing here).
const HELP_WIDTH: usize = 79;

/// The "Exit status:" paragraph of `balancer --help`: each status with
/// its meaning wrapped under it.
pub fn help() -> String {
    let mut text = String::from("Exit status:");
    for status in STATUSES {
        let mut line = format!("  {}  ", status.code);
        let indent = line.len();
        for word in status.meaning.split_whitespace() {
            if line.len() > indent && line.len() + 1 + word.len() > HELP_WIDTH {
                text.push('\n');
                text.push_str(line.trim_end());
                line = " ".repeat(indent);
            } else if line.len() > indent {
                line.push(' ');
            }
            line.push_str(word);
        }
        text.push('\n');
        text.push_str(&line);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn the_statuses_are_distinct_and_in_order() {
        for (i, status) in STATUSES.iter().enumerate() {
            assert_eq!(usize::from(status.code), i);
        }
    }

    #[test]
    fn usage_is_what_clap_exits_with() {
        let err = Cli::try_parse_from(["balancer", "vip", "show"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(USAGE.code));
    }

    #[test]
    fn call_errors_decide_the_status_wherever_they_are_in_the_chain() {
        let socket = PathBuf::from("/run/balancer/control.sock");
        let refused = || CallError::Refused {
            message: "no VIP named \"x\"".into(),
        };
        let no_daemon = || CallError::NoDaemon {
            socket: socket.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        let failed = || CallError::Failed {
            socket: socket.clone(),
            what: "cannot connect to the daemon at",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert_eq!(of(&refused().into()).code, REFUSED.code);
        assert_eq!(of(&no_daemon().into()).code, NO_DAEMON.code);
        assert_eq!(of(&failed().into()).code, FAILURE.code);
        let wrapped = anyhow::Error::new(no_daemon()).context("the view stopped");
        assert_eq!(of(&wrapped).code, NO_DAEMON.code);
        assert_eq!(of(&anyhow::anyhow!("cannot read FILE")).code, FAILURE.code);
    }

    #[test]
    fn the_help_lists_every_status_wrapped() {
        let help = help();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for status in STATUSES {
            assert!(
                flat.contains(&format!("{} {}", status.code, status.meaning)),
                "{help}"
            );
        }
        assert!(help.lines().all(|l| l.len() <= HELP_WIDTH), "{help}");
        assert!(help.lines().count() > STATUSES.len() + 1, "{help}");
    }
}
