//! The terminal while the live view runs: raw mode (keys arrive one by
//! one, Ctrl-C among them, and nothing is echoed), the alternate screen
//! and a hidden cursor. [`Screen`] restores all three when dropped, so on
//! every way out: a key, a signal, an error, a panic.

use std::{
    io::{Stdout, Write as _},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};
use crossterm::{
    QueueableCommand as _, cursor,
    terminal::{self, ClearType},
};

/// The terminal in the live view's modes, until dropped.
pub struct Screen {
    out: Stdout,
}

/// Whether the terminal is in the live view's modes: [`restore`] undoes
/// them once, so a panic (whose hook restores, then prints) followed by the
/// screen's drop does not leave the main screen a second time, which on
/// some terminals would move the cursor back over the panic's message.
static ENTERED: AtomicBool = AtomicBool::new(false);

impl Screen {
    /// Switches the terminal to raw mode, the alternate screen and a hidden
    /// cursor.
    pub fn enter() -> Result<Screen> {
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        ENTERED.store(true, Ordering::SeqCst);
        // From here on, dropping the screen undoes what was done.
        let mut screen = Screen {
            out: std::io::stdout(),
        };
        restore_on_panic();
        screen.out.queue(terminal::EnterAlternateScreen)?;
        screen.out.queue(cursor::Hide)?;
        screen.out.flush().context("cannot write to the terminal")?;
        Ok(screen)
    }

    /// Columns and rows.
    pub fn size() -> Result<(usize, usize)> {
        let (columns, rows) = terminal::size().context("cannot read the terminal's size")?;
        Ok((usize::from(columns), usize::from(rows)))
    }

    /// Replaces what the screen shows with `lines` (already cut to its
    /// `width` and `height`), each written over the previous frame's line.
    pub fn draw(&mut self, lines: &[String], width: usize, height: usize) -> Result<()> {
        let out = &mut self.out;
        for (row, line) in (0u16..).zip(lines) {
            out.queue(cursor::MoveTo(0, row))?;
            out.queue(crossterm::style::Print(line))?;
            // A line of the full width leaves the cursor on its last
            // character, which clearing would erase.
            if line.chars().count() < width {
                out.queue(terminal::Clear(ClearType::UntilNewLine))?;
            }
        }
        // Below the last line, what the previous frame left. (A move past
        // the bottom would stop on the last row and clear it.)
        if let Ok(below) = u16::try_from(lines.len())
            && lines.len() < height
        {
            out.queue(cursor::MoveTo(0, below))?;
            out.queue(terminal::Clear(ClearType::FromCursorDown))?;
        }
        out.flush().context("cannot write to the terminal")
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Shows the cursor, leaves the alternate screen and raw mode, once per
/// [`Screen::enter`].
fn restore() {
    if !ENTERED.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout();
    let _ = out.queue(cursor::Show);
    let _ = out.queue(terminal::LeaveAlternateScreen);
    let _ = out.flush();
    let _ = terminal::disable_raw_mode();
}

/// Restores the terminal before a panic's message is printed, which would
/// otherwise land on the alternate screen and vanish with it.
fn restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
