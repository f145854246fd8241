//! What `balancer doctor` decides: pure functions from facts about the
//! host (gathered by [`super::facts`]) to findings, one module per group
//! of checks, each tested as a table of facts and the finding they give.
//!
//! Nothing here reads the system: a decision is a function of its facts,
//! so every level and message, the failures that cannot be made to
//! happen on a test machine included, is tested directly.

pub mod backend_host;
pub mod bpffs;
pub mod interfaces;
pub mod kernel;
pub mod memory;
pub mod nat;
pub mod routes;
pub mod sockets;
pub mod veth;

use serde::Serialize;

/// `NETDEV_XDP_ACT_BASIC`, of the XDP features the kernel reports for a
/// device (Linux 6.3 and later): the driver runs XDP natively (pass,
/// drop, abort, XDP_TX).
pub const XDP_ACT_BASIC: u64 = 1;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device transmits frames redirected to
/// it (the kernel refuses a redirect to a device without it). A veth has
/// it while its peer has an XDP program or NAPI, as the kernel last saw
/// it: GRO turned on while the veth was down leaves it unset.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As the balancer needs it.
    Ok,
    /// The balancer runs, but slower, with a trap, or something could not
    /// be checked.
    Warn,
    /// The balancer will not start, or will not forward.
    Fail,
}

impl Level {
    /// The word the report prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One result of one check: what was checked (`check`), on what
/// (`subject`: an interface, a path, a VIP...), how it came out, why, and
/// for a warning or a failure the fix, in one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub subject: String,
    pub level: Level,
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    /// A check that passed.
    pub fn ok(check: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            check,
            subject: subject.into(),
            level: Level::Ok,
            message: message.into(),
            fix: None,
        }
    }

    /// A warning, with its fix.
    pub fn warn(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding::ok(check, subject, message).with_fix(Level::Warn, fix)
    }

    /// A failure, with its fix.
    pub fn fail(
        check: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding::ok(check, subject, message).with_fix(Level::Fail, fix)
    }

    /// This finding at `level`, with `fix`.
    fn with_fix(self, level: Level, fix: impl Into<String>) -> Self {
        Finding {
            level,
            fix: Some(fix.into()),
            ..self
        }
    }
}

/// `bytes` in MiB with one decimal, as `check-config` prints map memory.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The command `command` run in network namespace `namespace` (as `ip
/// netns` names it), or as is when it is this one: how a fix names an
/// interface that lives in another namespace.
pub fn in_namespace(namespace: Option<&str>, command: &str) -> String {
    match namespace {
        Some(ns) => format!("ip netns exec {ns} {command}"),
        None => command.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod table {
    //! The runner of the decision tables.

    use super::{Finding, Level};

    /// Checks that `finding` has `level` and that its message (and fix,
    /// when `fix` is given) contain the fragments: `case` names the row.
    pub fn expect(case: &str, finding: &Finding, level: Level, message: &str, fix: Option<&str>) {
        assert_eq!(finding.level, level, "{case}: {finding:?}");
        assert!(
            finding.message.contains(message),
            "{case}: message {:?} lacks {message:?}",
            finding.message
        );
        match (fix, &finding.fix) {
            (Some(want), Some(got)) => {
                assert!(got.contains(want), "{case}: fix {got:?} lacks {want:?}")
            }
            (Some(want), None) => panic!("{case}: no fix, expected one with {want:?}"),
            (None, Some(got)) if level == Level::Ok => {
                panic!("{case}: an ok finding with a fix: {got:?}")
            }
            _ => {}
        }
        if level != Level::Ok {
            assert!(finding.fix.is_some(), "{case}: a {level:?} without a fix");
        }
    }
}
