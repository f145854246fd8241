//! A start that fails leaves no partial pins.
//!
//! `balancer run` pins every map as it loads the program, and the link of
//! each interface as it attaches, so a start that fails after the load (a
//! map that cannot be created or filled, an interface that refuses the
//! program, a control socket that cannot be made) would leave pinned state
//! that no daemon serves. [`Undo`] notes what the pin directory held before
//! the start and, unless the start completes, removes what the start added
//! when it is dropped:
//!
//! - on a fresh start (nothing pinned before), every map and link it
//!   pinned, and the directory if the start created it;
//! - on a start that adopted a previous daemon's pins, only the pins it
//!   added (the link of an interface newly attached, which detaches it):
//!   the adopted maps and links stay, since the attached program uses them.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::lock::DaemonLock;
use crate::datapath::pin;

/// Whether the pin directory existed before the start: noted before the
/// daemon's lock creates it.
pub struct Noted {
    dir: PathBuf,
    existed: bool,
}

impl Noted {
    /// Notes whether `dir` exists, before [`super::lock::take`].
    pub fn before_lock(dir: &Path) -> Noted {
        Noted {
            dir: dir.to_path_buf(),
            existed: dir.exists(),
        }
    }

    /// Notes the pins the directory holds, once `lock` keeps any other
    /// daemon from changing them, and arms the undo.
    pub fn arm(self, _lock: &DaemonLock) -> Result<Undo> {
        let kept = pin::names(&self.dir).context("cannot list the pin directory")?;
        Ok(Undo {
            dir: self.dir,
            existed: self.existed,
            kept,
            armed: true,
        })
    }
}

/// Removes what the start pinned when dropped before [`Undo::disarm`].
///
/// Drop it after the datapath (declare it before): the program's own
/// descriptors are closed first, so unpinning a link detaches it.
#[must_use = "dropping it undoes the start"]
pub struct Undo {
    dir: PathBuf,
    /// Whether the directory existed before the start.
    existed: bool,
    /// The pins the directory held before the start.
    kept: BTreeSet<OsString>,
    armed: bool,
}

impl Undo {
    /// The start completed: what it pinned stays.
    pub fn disarm(mut self) {
        self.armed = false;
    }

    fn undo(&self) {
        let fresh = self.kept.is_empty();
        let remove_dir = fresh && !self.existed;
        let pin_path = self.dir.display();
        match pin::remove_except(&self.dir, &self.kept, remove_dir) {
            Ok(removed) if fresh => tracing::warn!(
                %pin_path,
                pins = removed.pins.join(","),
                detached = removed.detached.join(","),
                "the start failed: removed the pins it created"
            ),
            Ok(removed) if removed.pins.is_empty() => tracing::warn!(
                %pin_path,
                "the start failed: left the adopted pins as they were"
            ),
            Ok(removed) => tracing::warn!(
                %pin_path,
                pins = removed.pins.join(","),
                detached = removed.detached.join(","),
                "the start failed: removed the pins it added, left the adopted ones forwarding"
            ),
            Err(err) => tracing::error!(
                %pin_path,
                error = format!("{err:#}"),
                "the start failed and cannot remove the pins it created; `balancer teardown` removes them"
            ),
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            self.undo();
        }
    }
}
