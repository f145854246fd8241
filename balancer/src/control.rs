//! The control socket: a Unix stream socket (mode 0600) on which each
//! connection carries one request and one response, each a single line of
//! JSON (docs/control-api.md). The daemon's main loop answers every
//! request, so requests and map writes never race. This file holds the
//! protocol and the client; [`server`] the daemon's side.

mod server;

pub use server::{Limits, listen, listen_with};

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use tokio::sync::oneshot;

use crate::edit::Edit;

/// A request, as the `command` field names it: a query of the daemon's
/// state, or a change of its configuration. (Variants without fields are
/// written `{}` so that serde refuses unknown fields for them too.)
///
/// A change is written as the [`Edit`] it is, under its own command name
/// (`{"command":"vip-add",...}`), so the wire stays flat while the daemon
/// receives the edit as one value. The derives, with serde's `remote =
/// "Self"`, become the inherent `Request::serialize` and
/// `Request::deserialize` for the queries; the `Serialize` and
/// `Deserialize` impls below route changes to [`Edit`] and queries to
/// them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    remote = "Self",
    tag = "command",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum Request {
    /// The daemon's state in brief.
    Status {},
    /// Every VIP with its counters.
    VipList {},
    /// One VIP in detail: per backend its weight, state, active
    /// connections, smoothed latency and share of new flows.
    VipShow { name: String },
    /// The backends of one VIP, or of all.
    BackendList {
        #[serde(default)]
        vip: Option<String>,
    },
    /// Every counter.
    Stats {},
    /// The allow and deny lists, global and per VIP, with the packets
    /// each dropped; only `list` with it, only the global list and `vip`'s
    /// with `vip`.
    AccessList {
        #[serde(default)]
        list: Option<crate::config::List>,
        #[serde(default)]
        vip: Option<String>,
    },
    /// Read the configuration file again and apply what changed;
    /// `allow_empty` lets a file without any VIP withdraw every VIP.
    Reload {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_empty: bool,
    },
    /// What a reload would change, changing nothing: of the daemon's own
    /// file, or of `text` (named `path` in messages) when given.
    /// `allow_empty` as for `Reload`.
    Preview {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_empty: bool,
    },
    /// Withdraw every VIP of this host (the drain mark is put in; the
    /// datapath keeps serving what still arrives).
    HostDrain {},
    /// Take the drain mark out: VIPs servable for `announce_delay` are
    /// announced again at once.
    HostUndrain {},
    /// Change the configuration file, then apply it.
    #[serde(skip)]
    Change(Edit),
}

/// A change is written as the [`Edit`] it is, anything else as derived.
impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Request::Change(edit) => edit.serialize(serializer),
            query => Request::serialize(query, serializer),
        }
    }
}

impl Request {
    /// The `command` of each query (each request but a change).
    pub const QUERIES: [&'static str; 10] = [
        "status",
        "vip-list",
        "vip-show",
        "backend-list",
        "stats",
        "access-list",
        "reload",
        "preview",
        "host-drain",
        "host-undrain",
    ];
}

/// A change is read as an [`Edit`], a query as derived, so that an error
/// names what is wrong with the command given; an unknown command is
/// refused with every known one.
impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Request, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let request = match value.get("command").and_then(serde_json::Value::as_str) {
            Some(change) if Edit::COMMANDS.contains(&change) => {
                Edit::deserialize(value).map(Request::Change)
            }
            Some(unknown) if !Request::QUERIES.contains(&unknown) => {
                let known: Vec<String> = Request::QUERIES
                    .iter()
                    .chain(&Edit::COMMANDS)
                    .map(|command| format!("`{command}`"))
                    .collect();
                return Err(D::Error::custom(format!(
                    "unknown variant `{unknown}`, expected one of {}",
                    known.join(", ")
                )));
            }
            _ => Request::deserialize(value),
        };
        request.map_err(D::Error::custom)
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        Response {
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or(serde_json::Value::Null)),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// A request waiting for the main loop, with where its answer goes.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Parses one request line; the error is the response to send.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line.trim())
        .map_err(|e| Response::error(format!("malformed request: {e}")))
}

/// Why [`call`] got no result: the three outcomes a caller must tell apart
/// (the CLI turns them into distinct exit statuses, [`crate::cli::exit`]),
/// as variants rather than message text.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No daemon answered: nothing listens at the socket (the file is
    /// missing, or left by a daemon that is gone: connection refused), or
    /// the connection closed or timed out before any answer came (a
    /// daemon that exited or hung meanwhile).
    #[error(
        "cannot reach the daemon at {} (is `balancer run` running? --socket sets another path)",
        socket.display()
    )]
    NoDaemon {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered, refusing the request: its error names why
    /// (an unknown VIP, an invalid change, a refused reload, too many
    /// clients).
    #[error("{message}")]
    Refused { message: String },
    /// Anything else: the socket exists but cannot be used by this user
    /// (permission denied), or the answer is not a response.
    #[error("{what} {}", socket.display())]
    Failed {
        socket: PathBuf,
        /// What failed, as the message's start: "cannot connect to the
        /// daemon at", "cannot send the request to the daemon at", ...
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How long [`call`] waits for an answer: a reload that resolves and
/// checks many backends takes a while, a hung daemon must not hang the
/// caller forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `request` to the daemon at `socket` and returns its result; a
/// refusal, or the lack of any daemon to answer, is an error of its own
/// ([`CallError`]).
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, CallError> {
    let failed = |what, source: Box<dyn std::error::Error + Send + Sync>| CallError::Failed {
        socket: socket.to_owned(),
        what,
        source,
    };
    let no_daemon = |source| CallError::NoDaemon {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = StdUnixStream::connect(socket).map_err(|err| {
        if nothing_listens(&err) {
            no_daemon(err)
        } else {
            failed("cannot connect to the daemon at", err.into())
        }
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|err| failed("cannot set a timeout on the connection to", err.into()))?;
    let mut line = serde_json::to_string(request)
        .map_err(|err| failed("cannot write the request for the daemon at", err.into()))?;
    line.push('\n');
    // A daemon with too many clients answers so without reading the
    // request and closes: the write may fail, the answer is still there.
    let sent = stream.write_all(line.as_bytes());
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        // Whatever went wrong first: the write, the read, or a close
        // without a word (the daemon exited meanwhile).
        let err = sent.err().or(read.err()).unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed without an answer",
            )
        });
        return Err(no_daemon(err));
    }
    let response: Response = serde_json::from_str(&reply).map_err(|err| {
        failed(
            "the answer is not valid JSON from the daemon at",
            err.into(),
        )
    })?;
    match (response.ok, response.error) {
        (true, _) => Ok(response.result.unwrap_or(serde_json::Value::Null)),
        (false, Some(message)) => Err(CallError::Refused { message }),
        (false, None) => Err(CallError::Refused {
            message: "the daemon refused the request".to_owned(),
        }),
    }
}

/// Whether a connect error means that no daemon serves the socket: the
/// path does not exist, or nothing listens on it (a socket file left by a
/// daemon that was killed). Other errors (permission denied, not a
/// socket) say that this caller cannot use what is there.
fn nothing_listens(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::NotADirectory
    )
}

/// Where the CLI finds the socket by default.
pub fn default_socket() -> PathBuf {
    crate::config::DaemonConfig::default().control_socket
}

/// A directory of its own for a test's control socket, removed on drop:
/// for the tests of this module and of the server.
#[cfg(test)]
pub(crate) struct Scratch(PathBuf);

#[cfg(test)]
impl Scratch {
    /// A fresh directory named after this process and `name` (unique
    /// among the tests of this crate).
    pub(crate) fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("balancer-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The socket's path in it.
    pub(crate) fn socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
}

#[cfg(test)]
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        command::{AccessEntry, BackendAdd, BackendRef, BackendWeight, VipAdd, VipName},
        config::List,
    };

    #[test]
    fn requests_are_json_objects_named_by_command() {
        assert_eq!(
            parse_request(r#"{"command":"status"}"#),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(r#"{"command":"backend-list","vip":"web"}"#),
            Ok(Request::BackendList {
                vip: Some("web".into())
            })
        );
        assert_eq!(
            parse_request(r#"{"command":"backend-list"}"#),
            Ok(Request::BackendList { vip: None })
        );
        assert_eq!(
            parse_request(r#"{"command":"vip-show","name":"web"}"#),
            Ok(Request::VipShow { name: "web".into() })
        );
        assert!(parse_request(r#"{"command":"vip-show"}"#).is_err());
    }

    #[test]
    fn vip_add_takes_scheduler_and_persistence() {
        let request = parse_request(
            r#"{"command":"vip-add","name":"app","address":"2001:db8::80","port":443,"protocol":"tcp","scheduler":"round-robin","persistence_timeout":"5m","persistence_ipv6_prefix":56}"#,
        )
        .unwrap();
        let Request::Change(Edit::VipAdd(VipAdd {
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
            ..
        })) = request.clone()
        else {
            panic!("vip-add is an edit: {request:?}");
        };
        assert_eq!(
            (
                scheduler.map(crate::config::Scheduler::name),
                persistence_timeout,
                persistence_ipv6_prefix
            ),
            (
                Some("round-robin"),
                Some(Duration::from_secs(300)),
                Some(56)
            )
        );
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains(r#""persistence_timeout":"5m""#), "{text}");
        assert_eq!(parse_request(&text), Ok(request));
        let without = parse_request(
            r#"{"command":"vip-add","name":"web","address":"192.0.2.10","port":80,"protocol":"tcp"}"#,
        )
        .unwrap();
        assert!(matches!(
            without,
            Request::Change(Edit::VipAdd(VipAdd {
                scheduler: None,
                persistence_timeout: None,
                persistence_ipv6_prefix: None,
                ..
            }))
        ));
        let bad = parse_request(
            r#"{"command":"vip-add","name":"web","address":"192.0.2.10","port":80,"protocol":"tcp","persistence_timeout":"soon"}"#,
        )
        .unwrap_err();
        assert!(
            bad.error.unwrap().contains("invalid duration \"soon\""),
            "a bad duration is named"
        );
    }

    #[test]
    fn changes_are_written_as_their_own_commands() {
        let backend = || BackendRef {
            vip: "web".into(),
            address: "10.0.0.1".parse().unwrap(),
        };
        let changes = [
            (
                Edit::VipAdd(VipAdd {
                    name: "app".into(),
                    service: crate::command::Service {
                        address: "2001:db8::80".parse().unwrap(),
                        port: 443,
                        protocol: crate::config::Protocol::Tcp,
                    },
                    scheduler: Some(crate::config::Scheduler::RoundRobin),
                    persistence_timeout: Some(Duration::from_secs(300)),
                    persistence_ipv6_prefix: Some(56),
                    forwarding: Some(crate::config::Forwarding::Ipip),
                    snat: None,
                }),
                r#"{"command":"vip-add","name":"app","address":"2001:db8::80","port":443,"protocol":"tcp","scheduler":"round-robin","persistence_timeout":"5m","persistence_ipv6_prefix":56,"forwarding":"ipip"}"#,
            ),
            (
                Edit::VipRemove(VipName { name: "app".into() }),
                r#"{"command":"vip-remove","name":"app"}"#,
            ),
            (
                Edit::BackendAdd(BackendAdd {
                    vip: "web".into(),
                    address: "10.0.0.1".parse().unwrap(),
                    weight: None,
                    port: None,
                }),
                r#"{"command":"backend-add","vip":"web","address":"10.0.0.1","weight":null}"#,
            ),
            (
                Edit::BackendRemove(backend()),
                r#"{"command":"backend-remove","vip":"web","address":"10.0.0.1"}"#,
            ),
            (
                Edit::BackendWeight(BackendWeight {
                    vip: "web".into(),
                    address: "10.0.0.1".parse().unwrap(),
                    weight: 7,
                }),
                r#"{"command":"backend-weight","vip":"web","address":"10.0.0.1","weight":7}"#,
            ),
            (
                Edit::BackendDrain(backend()),
                r#"{"command":"backend-drain","vip":"web","address":"10.0.0.1"}"#,
            ),
            (
                Edit::BackendUndrain(backend()),
                r#"{"command":"backend-undrain","vip":"web","address":"10.0.0.1"}"#,
            ),
            (
                Edit::AccessAdd(AccessEntry {
                    list: List::Deny,
                    prefix: "203.0.113.0/24".parse().unwrap(),
                    vip: Some("web".into()),
                }),
                r#"{"command":"access-add","list":"deny","prefix":"203.0.113.0/24","vip":"web"}"#,
            ),
            (
                Edit::AccessRemove(AccessEntry {
                    list: List::Allow,
                    prefix: "2001:db8::/32".parse().unwrap(),
                    vip: Some("web".into()),
                }),
                r#"{"command":"access-remove","list":"allow","prefix":"2001:db8::/32","vip":"web"}"#,
            ),
        ];
        assert_eq!(changes.len(), Edit::COMMANDS.len());
        for (edit, text) in changes {
            let request = Request::Change(edit);
            assert_eq!(serde_json::to_string(&request).unwrap(), text);
            assert_eq!(parse_request(text), Ok(request.clone()));
            let extra = text.replace('}', r#","extra":1}"#);
            assert!(parse_request(&extra).is_err(), "{extra}");
            let misnamed = text
                .replace(r#""vip":"#, r#""vips":"#)
                .replace(r#""name":"#, r#""names":"#);
            assert!(parse_request(&misnamed).is_err(), "{misnamed}");
            let command = text.split('"').nth(3).unwrap();
            assert!(Edit::COMMANDS.contains(&command), "{command}");
        }
    }

    #[test]
    fn every_query_is_named_in_queries() {
        let queries = [
            Request::Status {},
            Request::VipList {},
            Request::VipShow { name: "web".into() },
            Request::BackendList { vip: None },
            Request::Stats {},
            Request::AccessList {
                list: Some(List::Deny),
                vip: None,
            },
            Request::Reload { allow_empty: true },
            Request::Preview {
                path: Some("b.toml".into()),
                text: Some("[datapath]".into()),
                allow_empty: false,
            },
            Request::HostDrain {},
            Request::HostUndrain {},
        ];
        assert_eq!(queries.len(), Request::QUERIES.len());
        for query in queries {
            let text = serde_json::to_string(&query).unwrap();
            let command = text.split('"').nth(3).unwrap();
            assert!(Request::QUERIES.contains(&command), "{command}");
            assert_eq!(parse_request(&text), Ok(query));
        }
        let unknown = parse_request(r#"{"command":"explode"}"#).unwrap_err();
        assert!(
            unknown.error.unwrap().contains(
                "unknown variant `explode`, expected one of `status`, `vip-list`, `vip-show`, `backend-list`, `stats`, `access-list`, `reload`, `preview`, `host-drain`, `host-undrain`, `vip-add`, `vip-remove`, `backend-add`, `backend-remove`, `backend-weight`, `backend-drain`, `backend-undrain`, `access-add`, `access-remove`"
            )
        );
    }

    #[test]
    fn malformed_requests_get_an_error_response() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"command":"explode"}"#,
            r#"{"command":"status","extra":1}"#,
        ] {
            let response = parse_request(bad).unwrap_err();
            assert!(!response.ok);
            assert!(
                response.error.unwrap().starts_with("malformed request"),
                "{bad}"
            );
        }
    }

    /// `call` on a socket served by a thread that reads one request and
    /// answers `reply` (nothing at all: `None`).
    fn call_answered(
        name: &str,
        reply: Option<&'static str>,
    ) -> Result<serde_json::Value, CallError> {
        let scratch = Scratch::new(name);
        let listener = std::os::unix::net::UnixListener::bind(scratch.socket()).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            if let Some(reply) = reply {
                (&stream).write_all(reply.as_bytes()).unwrap();
            }
        });
        let outcome = call(&scratch.socket(), &Request::Status {});
        server.join().unwrap();
        outcome
    }

    #[test]
    fn call_tells_a_result_a_refusal_no_daemon_and_a_bad_answer_apart() {
        let ok = call_answered("ok", Some("{\"ok\":true,\"result\":3}\n"));
        assert_eq!(ok.unwrap(), serde_json::json!(3));
        let refused = call_answered(
            "refused",
            Some("{\"ok\":false,\"error\":\"no VIP named \\\"x\\\"\"}\n"),
        );
        assert!(
            matches!(&refused, Err(CallError::Refused { message }) if message == "no VIP named \"x\""),
            "{refused:?}"
        );
        let silent = call_answered("silent", None);
        assert!(
            matches!(silent, Err(CallError::NoDaemon { .. })),
            "{silent:?}"
        );
        let garbled = call_answered("garbled", Some("hello\n"));
        assert!(
            matches!(garbled, Err(CallError::Failed { .. })),
            "{garbled:?}"
        );
    }

    #[test]
    fn a_missing_socket_or_one_nothing_listens_on_is_no_daemon() {
        let scratch = Scratch::new("missing");
        let missing = call(&scratch.socket(), &Request::Status {});
        assert!(
            matches!(missing, Err(CallError::NoDaemon { .. })),
            "{missing:?}"
        );
        let message = missing.unwrap_err().to_string();
        assert!(message.contains("cannot reach the daemon at"), "{message}");
        // A daemon killed with SIGKILL leaves its socket file behind.
        drop(std::os::unix::net::UnixListener::bind(scratch.socket()).unwrap());
        assert!(scratch.socket().exists());
        let stale = call(&scratch.socket(), &Request::Status {});
        assert!(
            matches!(stale, Err(CallError::NoDaemon { .. })),
            "{stale:?}"
        );
    }

    #[test]
    fn responses_serialize_without_empty_fields() {
        assert_eq!(
            serde_json::to_string(&Response::ok(3)).unwrap(),
            r#"{"ok":true,"result":3}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
