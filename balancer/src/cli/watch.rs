//! `balancer stats --watch`: a live view of the daemon's counters as
//! rates. Each refresh polls the daemon with one `stats` and one
//! `backend-list` request; [`rates::view`] turns two polls into rows and
//! [`render::render`] rows into lines. On a terminal the lines are drawn
//! in place on the alternate screen until q or Ctrl-C; otherwise each
//! refresh prints them as a block of plain lines.

mod rates;
mod render;
mod screen;

use std::{
    io::{IsTerminal as _, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, TryRecvError},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};

use self::{
    rates::{Snapshot, View},
    render::Heading,
    screen::Screen,
};
use crate::control::{self, Request};

/// How often the live view looks for keys, signals and new polls.
const TICK: Duration = Duration::from_millis(50);

/// Runs the view against the daemon at `socket` until the user quits
/// (terminal) or forever (plain output). Fails as soon as a poll fails,
/// with the terminal restored first.
pub fn run(socket: &Path, interval: Duration) -> Result<()> {
    if std::io::stdout().is_terminal() {
        live(socket, interval)
    } else {
        plain(socket, interval, &mut std::io::stdout().lock())
    }
}

/// One poll of the daemon and when it was made.
struct Poll {
    snapshot: Snapshot,
    at: Instant,
    time: SystemTime,
}

impl Poll {
    fn take(socket: &Path) -> Result<Poll> {
        let (at, time) = (Instant::now(), SystemTime::now());
        let stats = control::call(socket, &Request::Stats {})?;
        let backends = control::call(socket, &Request::BackendList { vip: None })?;
        Ok(Poll {
            snapshot: Snapshot::from_answers(stats, backends)?,
            at,
            time,
        })
    }
}

/// The heading and rows of the frame for `current`.
fn frame(previous: Option<&Poll>, current: &Poll, interval: Duration, keys: bool) -> Frame {
    let elapsed = previous.map(|p| current.at.saturating_duration_since(p.at));
    Frame {
        heading: Heading {
            time: humantime::format_rfc3339_seconds(current.time).to_string(),
            interval,
            elapsed,
            keys,
        },
        view: rates::view(
            previous.map(|p| &p.snapshot),
            &current.snapshot,
            elapsed.unwrap_or_default(),
        ),
    }
}

struct Frame {
    heading: Heading,
    view: View,
}

impl Frame {
    fn lines(&self, width: usize) -> Vec<String> {
        render::render(&self.heading, &self.view, width)
    }
}

/// Plain output: a block of lines per refresh, separated by an empty line,
/// without escape sequences. Ends quietly when the reader goes away.
fn plain(socket: &Path, interval: Duration, out: &mut impl Write) -> Result<()> {
    let mut previous: Option<Poll> = None;
    loop {
        let started = Instant::now();
        let current = Poll::take(socket)?;
        let lines = frame(previous.as_ref(), &current, interval, false).lines(usize::MAX);
        let mut block = if previous.is_some() {
            "\n".to_owned()
        } else {
            String::new()
        };
        for line in lines {
            block.push_str(&line);
            block.push('\n');
        }
        match out.write_all(block.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write the view"),
        }
        previous = Some(current);
        thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// The terminal view. Polls run on their own thread, so keys are answered
/// at once even while the daemon is slow to reply.
fn live(socket: &Path, interval: Duration) -> Result<()> {
    // In raw mode Ctrl-C is a key, but a signal can still come from
    // elsewhere (kill, the terminal closing): quit cleanly on those too.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot handle termination signals")?;
    }
    let polls = spawn_poller(socket.to_owned(), interval);
    let mut screen = Screen::enter()?;
    let mut previous: Option<Poll> = None;
    let mut shown: Option<Frame> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut redraw = false;
        match polls.try_recv() {
            Ok(Ok(current)) => {
                shown = Some(frame(previous.as_ref(), &current, interval, true));
                previous = Some(current);
                redraw = true;
            }
            Ok(Err(err)) => return Err(err),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => bail!("the view stopped polling the daemon"),
        }
        if event::poll(TICK).context("cannot read the terminal")? {
            match event::read().context("cannot read the terminal")? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if let (true, Some(frame)) = (redraw, &shown) {
            let (width, height) = Screen::size()?;
            let lines = render::fit_height(frame.lines(width), height, width);
            screen.draw(&lines, width, height)?;
        }
    }
}

/// Polls the daemon every `interval` on a thread of its own; stops after
/// the first failure (which it sends) or when the view has gone.
fn spawn_poller(socket: PathBuf, interval: Duration) -> mpsc::Receiver<Result<Poll>> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        loop {
            let started = Instant::now();
            let poll = Poll::take(&socket);
            let failed = poll.is_err();
            if send.send(poll).is_err() || failed {
                return;
            }
            thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    });
    receive
}

/// q, Esc and Ctrl-C quit.
fn quits(key: &KeyEvent) -> bool {
    key.is_press()
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::CONTROL)));
    }
}
