//! The control socket: a Unix stream socket (mode 0600) on which each
//! connection carries one request and one response, each a single line of
//! JSON (docs/control-api.md). The daemon's main loop answers every
//! request, so requests and map writes never race.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader,
    },
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
    time::timeout,
};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 32;

/// A request, as the `command` field names it. (Variants without fields
/// are written `{}` so that serde refuses unknown fields for them too.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
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
    /// Read the configuration file again and apply what changed.
    Reload {},
    /// Add a VIP (written to the configuration file, then applied).
    VipAdd {
        name: String,
        address: std::net::IpAddr,
        port: u16,
        protocol: crate::config::Protocol,
        #[serde(default)]
        scheduler: Option<crate::config::Scheduler>,
        /// Session persistence, written like the file's durations ("30s").
        #[serde(default, with = "duration_text")]
        persistence_timeout: Option<Duration>,
        /// Leading bits that make one IPv6 client, for persistence.
        #[serde(default)]
        persistence_ipv6_prefix: Option<u8>,
    },
    /// Remove a VIP.
    VipRemove { name: String },
    /// Add a backend to a VIP.
    BackendAdd {
        vip: String,
        address: std::net::IpAddr,
        #[serde(default)]
        weight: Option<u32>,
    },
    /// Remove a backend from a VIP.
    BackendRemove {
        vip: String,
        address: std::net::IpAddr,
    },
    /// Set a backend's weight.
    BackendWeight {
        vip: String,
        address: std::net::IpAddr,
        weight: u32,
    },
    /// Drain a backend: no new flows, established ones stay.
    BackendDrain {
        vip: String,
        address: std::net::IpAddr,
    },
    /// End a drain: the backend's weight applies again.
    BackendUndrain {
        vip: String,
        address: std::net::IpAddr,
    },
}

impl Request {
    /// The configuration change a request makes, if it makes one.
    pub fn edit(&self) -> Option<crate::config::edit::Edit> {
        use crate::config::edit::Edit;
        Some(match self.clone() {
            Request::VipAdd {
                name,
                address,
                port,
                protocol,
                scheduler,
                persistence_timeout,
                persistence_ipv6_prefix,
            } => Edit::AddVip {
                name,
                address,
                port,
                protocol: protocol.to_string(),
                scheduler: scheduler.map(|s| s.name().to_owned()),
                persistence_timeout,
                persistence_ipv6_prefix,
            },
            Request::VipRemove { name } => Edit::RemoveVip { name },
            Request::BackendAdd {
                vip,
                address,
                weight,
            } => Edit::AddBackend {
                vip,
                address,
                weight,
            },
            Request::BackendRemove { vip, address } => Edit::RemoveBackend { vip, address },
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => Edit::SetWeight {
                vip,
                address,
                weight,
            },
            Request::BackendDrain { vip, address } => Edit::Drain {
                vip,
                address,
                drain: true,
            },
            Request::BackendUndrain { vip, address } => Edit::Drain {
                vip,
                address,
                drain: false,
            },
            _ => return None,
        })
    }
}

/// Durations in requests: strings as the configuration file writes them
/// ("500ms", "30s", "5m"), so a script writes the same value in both.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&crate::config::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| crate::config::parse_duration(&text).map_err(D::Error::custom))
            .transpose()
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

/// Creates the socket at `path` (its directory too; a stale socket is
/// replaced), mode 0600, and serves it: each request goes to `requests`.
pub fn listen(path: &Path, requests: mpsc::Sender<Pending>) -> Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(err) = serve_one(stream, requests).await {
                    tracing::debug!(error = %err, "control connection ended badly");
                }
            });
        }
    }))
}

async fn serve_one(stream: UnixStream, requests: mpsc::Sender<Pending>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = String::new();
    let response = match timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::error("no request within 5 s"),
        Ok(Err(e)) => Response::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::error("request longer than 64 KiB"),
        Ok(Ok(_)) => match parse_request(&line) {
            Err(response) => response,
            Ok(request) => {
                let (answer, answered) = oneshot::channel();
                if requests.send((request, answer)).await.is_err() {
                    Response::error("the daemon is shutting down")
                } else {
                    answered
                        .await
                        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
                }
            }
        },
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends `request` to the daemon at `socket` and returns its result, or
/// its error as an error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    let mut stream = StdUnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `balancer run` running? --socket sets another path)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("no answer from the daemon")?;
    let response: Response =
        serde_json::from_str(&reply).context("the daemon's answer is not valid JSON")?;
    match (response.ok, response.error) {
        (true, _) => Ok(response.result.unwrap_or(serde_json::Value::Null)),
        (false, Some(error)) => bail!("{error}"),
        (false, None) => bail!("the daemon refused the request"),
    }
}

/// Where the CLI finds the socket by default.
pub fn default_socket() -> PathBuf {
    crate::config::DaemonConfig::default().control_socket
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let Some(crate::config::edit::Edit::AddVip {
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
            ..
        }) = request.edit()
        else {
            panic!("vip-add is an edit: {request:?}");
        };
        assert_eq!(
            (
                scheduler.as_deref(),
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
            Request::VipAdd {
                scheduler: None,
                persistence_timeout: None,
                persistence_ipv6_prefix: None,
                ..
            }
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
