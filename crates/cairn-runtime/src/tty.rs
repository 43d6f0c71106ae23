//! Terminals for `cairn exec -t`: a new pseudo-terminal whose secondary side becomes the
//! container's stdio (and controlling terminal), and raw mode for the user's own terminal
//! while the engine copies bytes between the two.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};

use crate::{sys, RuntimeError};

/// A pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The engine's side: what the container writes comes out here.
    pub primary: OwnedFd,
    /// The container's side: its stdin, stdout and stderr.
    pub secondary: OwnedFd,
}

fn err(action: &'static str) -> impl FnOnce(nix::errno::Errno) -> RuntimeError {
    move |source| RuntimeError::Terminal { action, source }
}

/// Opens a new pseudo-terminal, sized like `like` when that is a terminal.
pub fn open_pty(like: Option<BorrowedFd<'_>>) -> Result<Pty, RuntimeError> {
    let pair = nix::pty::openpty(None, None).map_err(err("open a pseudo-terminal"))?;
    // openpty does not set close-on-exec: without it, a helper started later would inherit
    // the secondary side and the primary would never see the container hang up.
    for fd in [&pair.master, &pair.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(err("set close-on-exec"))?;
    }
    if let Some(size) = like.and_then(|fd| sys::window_size(fd).ok()) {
        sys::set_window_size(pair.slave.as_fd(), &size).map_err(err("set window size"))?;
    }
    Ok(Pty {
        primary: pair.master,
        secondary: pair.slave,
    })
}

/// Copies the window size of terminal `from` to terminal `to` (on SIGWINCH).
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), RuntimeError> {
    let size = sys::window_size(from).map_err(err("read window size"))?;
    sys::set_window_size(to, &size).map_err(err("set window size"))
}

/// The user's terminal in raw mode; the previous mode comes back on drop.
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    /// Puts the terminal `fd` into raw mode, so keys (Ctrl-C among them) reach the
    /// container's terminal rather than acting on the engine.
    pub fn enable(fd: BorrowedFd<'a>) -> Result<RawMode<'a>, RuntimeError> {
        let saved = termios::tcgetattr(fd).map_err(err("read terminal mode"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(err("set raw mode"))?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}
