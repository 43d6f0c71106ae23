//! A runtime helper forked from the program while it is still single-threaded.
//!
//! A runtime helper is normally the program executed again ([`crate::helper::RUNTIME_HELPER_ARG`]):
//! loading and relocating a large binary a second time is most of a millisecond of page faults
//! and symbol lookups, and more on a virtual machine. A short-lived program that knows it will
//! run a container (`cairn exec`) calls [`prefork_helper`] in `main`, before any thread exists:
//! the child is forked there and waits, and the first runtime helper the program needs is this
//! child, told its state root and mode over its socket. Programs that never call it, or need a
//! second helper, execute the program as before.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{proto, sys, RuntimeError};

/// The forked child, waiting to be told what to serve.
#[derive(Debug)]
pub(crate) struct Preforked {
    pub(crate) pid: Pid,
    pub(crate) sock: OwnedFd,
}

/// The one waiting child of this process, taken by the first helper the process starts.
static WAITING: Mutex<Option<Preforked>> = Mutex::new(None);

/// What the forked child is to become: the arguments an executed helper would get.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Role {
    pub(crate) state_root: PathBuf,
    pub(crate) mode: String,
    /// Enter a user namespace first, and wait for the parent to write its id mapping.
    pub(crate) userns: bool,
}

/// Forks the runtime helper of this process now, to be used by its first container.
///
/// Call it from `main`, after cairn's init hook and before any thread is started (an async
/// runtime, a thread pool, a logging thread): forking a multithreaded process could leave the
/// child with a lock held by a thread that does not exist there. The child does nothing until
/// it is used, dies with the calling thread (so call it from the main thread), and exits when
/// the program drops it unused. Calling it again while a child waits does nothing.
pub fn prefork_helper() -> Result<(), RuntimeError> {
    let mut waiting = WAITING.lock().unwrap_or_else(|p| p.into_inner());
    if waiting.is_some() {
        return Ok(());
    }
    let spawn_err = |e: nix::errno::Errno| RuntimeError::Spawn {
        program: "forked runtime helper".into(),
        source: e.into(),
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(spawn_err)?;
    let parent = nix::unistd::getpid();
    match sys::fork_single_threaded().map_err(spawn_err)? {
        sys::Forked::Child => child_main(theirs, parent),
        sys::Forked::Parent(pid) => {
            drop(theirs);
            *waiting = Some(Preforked { pid, sock: ours });
            Ok(())
        }
    }
}

/// The waiting child of this process, if [`prefork_helper`] made one and no helper took it.
pub(crate) fn take() -> Option<Preforked> {
    WAITING.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Tells the waiting child what to become.
pub(crate) fn send_role(preforked: &Preforked, role: &Role) -> std::io::Result<()> {
    proto::send(preforked.sock.as_fd(), role, &[])
}

/// The forked child: wait for its [`Role`], then serve as an executed helper would.
fn child_main(sock: OwnedFd, parent: Pid) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        sys::exit_now(0);
    }
    // Ctrl-C reaches this waiting child too (it shares the program's process group); the
    // program decides what it means, and may still need its helper to stop containers.
    crate::helper::ignore_terminal_signals();
    // An executed helper has the socket for stdin and stdout and keeps only stderr of the
    // program's descriptors; a pipe on the program's stdout must not stay open in the helper.
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
    sys::close_descriptors_except(Some(sock.as_raw_fd()));
    // Taken now, while the program is still opening its store, rather than on the way to the
    // first container (see its doc).
    let jit_memory = sys::socket_holding_jit_memory().ok();
    let mut buf = Vec::new();
    let role: Role = match proto::recv(sock.as_fd(), &mut buf) {
        Ok(Some((role, _))) => role,
        // The program ended, or never needed a helper.
        _ => sys::exit_now(0),
    };
    if role.userns {
        let entered = crate::userns::enter_user_namespace(
            |line| {
                nix::unistd::write(&sock, line.as_bytes())?;
                Ok(())
            },
            || {
                let mut line = [0u8; 128];
                let n = nix::unistd::read(&sock, &mut line)?;
                Ok(String::from_utf8_lossy(&line[..n]).into_owned())
            },
        );
        if let Err(e) = entered {
            let _ = nix::unistd::write(&sock, format!("error: {e}").as_bytes());
            sys::exit_now(125);
        }
    }
    let args = [role.state_root.into_os_string(), role.mode.into()];
    crate::helper::serve_on(sock, &args, jit_memory)
}
