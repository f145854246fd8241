//! The control socket's path and BIRD's control socket, looked at and
//! connected to; nothing is created, locked or changed.

use std::{
    io::{BufReader, Write as _},
    os::unix::{fs::FileTypeExt as _, net::UnixStream},
    path::Path,
    time::Duration,
};

use crate::doctor::checks::sockets::{Bird, ControlFacts, Directory, Session, Socket};

/// How long a socket may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What a file is, in words.
fn kind(metadata: &std::fs::Metadata) -> String {
    let t = metadata.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
    .to_owned()
}

/// Whether this process may create entries in directory `dir`
/// (access(2): permissions, and a read-only mount).
fn writable(dir: &Path) -> Result<(), String> {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|errno| errno.desc().to_owned())
}

/// The control socket at `path`: its directory, and what is at the path.
pub fn control(path: &Path) -> ControlFacts {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let directory = match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Directory::Exists {
            writable: writable(&dir),
        },
        Ok(m) => Directory::NotADirectory(kind(&m)),
        Err(_) => {
            let mut ancestor = dir.as_path();
            let mut blocked = None;
            while let Some(up) = ancestor.parent() {
                ancestor = up;
                match std::fs::metadata(ancestor) {
                    Ok(m) if m.is_dir() => break,
                    Ok(m) => {
                        blocked = Some(format!("{} is {}", ancestor.display(), kind(&m)));
                        break;
                    }
                    Err(_) => {}
                }
            }
            Directory::Missing {
                ancestor: ancestor.to_path_buf(),
                creatable: match blocked {
                    Some(why) => Err(why),
                    None => writable(ancestor),
                },
            }
        }
    };
    let socket = match std::fs::symlink_metadata(path) {
        Err(_) => Socket::Absent,
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Socket::Live {
                pid: crate::daemon::lock::socket_holder(path),
            },
            Err(_) => Socket::Stale,
        },
        Ok(m) => Socket::Other(kind(&m)),
    };
    ControlFacts {
        path: path.to_path_buf(),
        directory,
        socket,
    }
}

/// Reads one reply of BIRD's control protocol: lines `CODE-text` (more
/// follow), ` text` (continues the last code) and `CODE text` (the last).
/// Returns the lines' texts and the last code.
fn reply(reader: &mut impl std::io::BufRead) -> std::io::Result<(Vec<String>, u32)> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "BIRD closed the connection",
            ));
        }
        let line = line.trim_end_matches('\n');
        let code = line.get(..4).and_then(|c| c.parse::<u32>().ok());
        match (code, line.as_bytes().get(4)) {
            (Some(code), Some(b' ')) | (Some(code), None) => {
                lines.push(line.get(5..).unwrap_or_default().to_owned());
                return Ok((lines, code));
            }
            (Some(_), Some(b'-')) => lines.push(line[5..].to_owned()),
            _ => lines.push(line.trim_start_matches(' ').to_owned()),
        }
    }
}

/// The BGP protocols of `show protocols` lines (`name proto table state
/// since info`).
pub fn bgp_sessions(lines: &[String]) -> Vec<Session> {
    lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"BGP")).then(|| Session {
                name: fields[0].to_owned(),
                info: fields.get(5..).unwrap_or_default().join(" "),
            })
        })
        .collect()
}

/// Asks BIRD at `socket` for its version and its protocols.
pub fn bird(socket: &Path) -> Bird {
    if std::fs::symlink_metadata(socket).is_err() {
        return Bird::Missing;
    }
    let ask = || -> std::io::Result<Bird> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let (greeting, _) = reply(&mut reader)?;
        let version = greeting
            .last()
            .map(|g| g.trim_end_matches(" ready.").to_owned())
            .unwrap_or_default();
        (&stream).write_all(b"show protocols\n")?;
        let (lines, code) = reply(&mut reader)?;
        if code >= 8000 {
            return Err(std::io::Error::other(format!(
                "show protocols: {}",
                lines.join(" ")
            )));
        }
        Ok(Bird::Answered {
            version,
            sessions: bgp_sessions(&lines),
        })
    };
    ask().unwrap_or_else(|e| Bird::Silent(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birds_replies_are_read_to_their_last_line() {
        let text = "0001 BIRD 2.0.12 ready.\n\
                    2002-Name       Proto      Table      State  Since         Info\n\
                    1002-device1    Device     ---        up     10:00:00.000  \n \
                    router_v4  BGP        ---        up     10:00:01.000  Established   \n \
                    router_v6  BGP        ---        start  10:00:01.000  Active        Socket: Connection refused\n\
                    0000 \n";
        let mut reader = std::io::Cursor::new(text);
        let (greeting, code) = reply(&mut reader).unwrap();
        assert_eq!((greeting, code), (vec!["BIRD 2.0.12 ready.".to_owned()], 1));
        let (lines, code) = reply(&mut reader).unwrap();
        assert_eq!(code, 0);
        assert_eq!(
            bgp_sessions(&lines),
            vec![
                Session {
                    name: "router_v4".to_owned(),
                    info: "Established".to_owned()
                },
                Session {
                    name: "router_v6".to_owned(),
                    info: "Active Socket: Connection refused".to_owned()
                },
            ]
        );
        assert!(reply(&mut reader).is_err(), "end of input");
    }

    #[test]
    fn the_control_sockets_surroundings_are_read() {
        let dir =
            std::env::temp_dir().join(format!("balancer-doctor-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let facts = control(&dir.join("control.sock"));
        assert_eq!(facts.directory, Directory::Exists { writable: Ok(()) });
        assert_eq!(facts.socket, Socket::Absent);

        let missing = control(&dir.join("a/b/control.sock"));
        assert_eq!(
            missing.directory,
            Directory::Missing {
                ancestor: dir.clone(),
                creatable: Ok(())
            }
        );

        std::fs::write(dir.join("file"), "").unwrap();
        let under_file = control(&dir.join("file/control.sock"));
        assert_eq!(
            under_file.directory,
            Directory::NotADirectory("a regular file".to_owned())
        );
        let under_file_deeper = control(&dir.join("file/x/control.sock"));
        assert!(
            matches!(&under_file_deeper.directory, Directory::Missing { creatable: Err(why), .. } if why.ends_with("is a regular file")),
            "{under_file_deeper:?}"
        );

        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert_eq!(control(&stale).socket, Socket::Stale);
        let live = dir.join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert_eq!(control(&live).socket, Socket::Live { pid: None });
        assert_eq!(
            control(&dir.join("file")).socket,
            Socket::Other("a regular file".to_owned())
        );
        assert_eq!(bird(&dir.join("none.ctl")), Bird::Missing);
        assert!(matches!(bird(&stale), Bird::Silent(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
