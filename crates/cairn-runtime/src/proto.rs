//! The conversation between an engine and its runtime helper: JSON messages over a
//! `SOCK_SEQPACKET` socket pair (one message per packet, so no framing), with the container's
//! stdio passed along as file descriptors (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::config::ContainerConfig;

/// Largest message either side sends; a config with a huge environment still fits.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

/// What the engine asks of the helper. `seq` pairs a request with its [`Reply`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Create and start a container; three fds (stdin, stdout, stderr) travel with it.
    Create {
        seq: u64,
        id: String,
        config: Box<ContainerConfig>,
    },
    /// Send a signal to the container's init.
    Signal { seq: u64, id: String, signal: i32 },
    /// Kill and delete a container that an engine which died left behind.
    Reap { seq: u64, id: String },
}

/// What the helper answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The container runs; its init has this pid (in the helper's pid namespace).
    Created { seq: u64, pid: i32 },
    /// The request was carried out.
    Done { seq: u64 },
    /// The request failed.
    Failed { seq: u64, message: String },
    /// A container ended (sent once per created container, after its state is deleted).
    Exited {
        id: String,
        status: crate::ExitStatus,
    },
}

/// Sends one message, with `fds` attached.
pub(crate) fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    message: &T,
    fds: &[RawFd],
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {} bytes is over the limit of {MAX_MESSAGE}",
            bytes.len()
        )));
    }
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds that came with it; `Ok(None)` when the peer is gone.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    // Size the buffer to the waiting packet (SEQPACKET keeps message boundaries, and
    // MSG_TRUNC makes a peek report the whole length): a buffer of MAX_MESSAGE zeroed up
    // front cost 256 page faults on each side of every helper.
    let waiting = loop {
        match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if waiting > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {waiting} bytes is over the limit of {MAX_MESSAGE}"
        )));
    }
    buf.clear();
    buf.resize(waiting.max(1), 0);
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        fds.extend(raw.into_iter().map(owned_from_kernel));
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..len]).map_err(|e| {
        std::io::Error::other(format!(
            "unreadable message {:?}: {e}",
            String::from_utf8_lossy(&buf[..len.min(200)])
        ))
    })?;
    Ok(Some((message, fds)))
}

fn owned_from_kernel(fd: RawFd) -> OwnedFd {
    crate::sys::own_received_fd(fd)
}
