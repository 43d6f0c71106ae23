//! The one module of cairn with `unsafe`: raw syscalls that neither std nor nix wrap safely.
//!
//! Every function here is small and does one syscall-shaped thing; the reasoning about why it
//! is sound sits next to each block.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

/// `pidfd_open(2)`: a file descriptor that becomes readable when `pid` exits. Lets one
/// single-threaded loop wait for many containers without SIGCHLD handling (which would mean
/// blocking signals, and the blocked mask would leak into containers).
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The two sides of `fork(2)` as cairn uses them.
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// `fork(2)`, for single-threaded processes only: the runtime helper and a container's init.
///
/// Callers guarantee there is exactly one thread (both run from `main` of a helper that
/// never starts threads, or inside a freshly cloned container init), so no lock held by
/// another thread can be inherited locked.
pub(crate) fn fork_single_threaded() -> Result<Forked, Errno> {
    // SAFETY: see above: the process has one thread, so the child can run arbitrary code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Starts `args` (its program searched in `PATH`) as a child with this process's environment,
/// every signal at its default disposition and none blocked: `posix_spawnp(3)`, which glibc
/// implements with `clone(CLONE_VM | CLONE_VFORK)`. The child shares this process's memory
/// until it executes, so no page table is copied: a container's init is a fork of the
/// runtime helper, and a `fork` of it cost about 0.2 ms here, in every container's start.
/// The error is the one the program's execution failed with (`ENOENT`: not found).
pub(crate) fn spawn_command(args: &[CString]) -> Result<Pid, Errno> {
    use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use nix::sys::signal::SigSet;
    use std::os::unix::ffi::OsStringExt as _;
    let mut attr = PosixSpawnAttr::init()?;
    let mut defaults = SigSet::all();
    defaults.remove(nix::sys::signal::Signal::SIGKILL);
    defaults.remove(nix::sys::signal::Signal::SIGSTOP);
    attr.set_sigdefault(&defaults)?;
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
    )?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            CString::new(entry).ok()
        })
        .collect();
    posix_spawnp(&args[0], &PosixSpawnFileActions::init()?, &attr, args, &env)
}

/// Brings the loopback interface of the current network namespace up (`ip link set lo up`).
pub(crate) fn loopback_up() -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into
    // `req`, which lives for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the union member `ifru_flags` is the one SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `ioctl(fd, TIOCSCTTY, 0)`: makes the terminal `fd` the controlling terminal of the calling
/// session leader.
pub(crate) fn set_controlling_terminal(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Window size of a terminal, `TIOCGWINSZ`.
pub(crate) fn window_size(fd: BorrowedFd<'_>) -> Result<libc::winsize, Errno> {
    // SAFETY: winsize is plain old data; zero is valid.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } < 0 {
        return Err(Errno::last());
    }
    Ok(size)
}

/// Sets the window size of a terminal, `TIOCSWINSZ`.
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, size: &libc::winsize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one winsize from `size`, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, size) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Resets every signal to its default disposition, so that an `exec`ed command starts as a
/// freshly started program would (the init process changed nothing but may have inherited
/// ignored signals from libcontainer's setup).
pub(crate) fn reset_signal_dispositions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { sigaction(signal, &default) };
    }
}

/// Sets `signals` to be ignored.
pub(crate) fn ignore_signals(signals: &[nix::sys::signal::Signal]) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in signals {
        // SAFETY: SIG_IGN runs no code of ours in signal context.
        let _ = unsafe { sigaction(*signal, &ignore) };
    }
}

/// Closes every descriptor of the process from 3 up, except `keep`. Two callers, neither
/// returning to code that owns one of these numbers: a helper forked from the engine, which
/// starts with what an `exec` would have left it, not with the engine's files; and a
/// container's pid 1 (the reaper, cloned from the helper), which does not `exec`, and so would
/// otherwise hold the helper's sockets, other containers' pidfds and a handle on the host's
/// `/proc` for as long as the container runs.
pub(crate) fn close_descriptors_except(keep: Option<RawFd>) {
    let close = |first: RawFd, last: RawFd| {
        if first <= last {
            // SAFETY: close_range takes two numbers and a flag; it only closes descriptors.
            // Both callers (above) own no Rust object of these numbers that they use or drop
            // again: the parent's objects are never dropped in the child.
            unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0) };
        }
    };
    match keep {
        Some(keep) if keep >= 3 => {
            close(3, keep - 1);
            close(keep + 1, RawFd::MAX);
        }
        _ => close(3, RawFd::MAX),
    }
}

/// A socket with a one-instruction classic BPF filter attached, which the kernel compiles
/// (JIT) into its shared pool of executable memory, as it does each container's seccomp
/// filter. That pool is allocated in 2 MiB packs, and a pack is freed with the last program
/// in it: on a host with no other BPF program loaded, every container start allocated,
/// filled and re-protected a fresh pack and freed it at exit. A runtime helper holds this
/// socket for its whole life so the pack stays; measured here, 10 ms of CPU per container.
pub(crate) fn socket_holding_jit_memory() -> Result<OwnedFd, Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // BPF_RET | BPF_K: accept every packet (the socket never receives one).
    let accept_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    }];
    let prog = libc::sock_fprog {
        len: accept_all.len() as u16,
        filter: accept_all.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `accept_all`, alive for the call; the kernel copies the
    // program and keeps no pointer to our memory.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(sock)
}

/// Overwrites the process's command line (`/proc/PID/cmdline`, what `ps` shows and what a
/// container reads as its pid 1's) with `title`, in the argument block the kernel placed on
/// the stack at `exec`; a title longer than that block is cut.
///
/// A runtime helper's arguments name the store, and a helper forked from the engine carries
/// the engine's whole command line; containers are clones of the helper and would show either
/// to the command as `/proc/1/cmdline`.
pub(crate) fn set_process_title(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields resume after the command name's closing parenthesis; the first one after it is
    // field 3, so arg_start and arg_end (fields 48 and 49) are at 45 and 46.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.trim().parse::<usize>().ok());
    let (Some(start), Some(end)) = (number(45), number(46)) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    // SAFETY: [arg_start, arg_end) is the argument block the kernel copied to the top of the
    // main thread's stack at exec: mapped and writable for the life of the process. The
    // process is single-threaded here (a runtime helper before it serves), and nothing reads
    // the arguments afterwards (`std::env::args` is not called again).
    let block = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    block.fill(0);
    let n = title.len().min(block.len() - 1);
    block[..n].copy_from_slice(&title.as_bytes()[..n]);
}

/// `execvp(3)` that returns only the error.
pub(crate) fn exec(args: &[CString]) -> Errno {
    match nix::unistd::execvp(&args[0], args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Takes ownership of a descriptor that arrived with `SCM_RIGHTS`.
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed this descriptor in our table while receiving the message;
    // nothing else in the process knows its number, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `_exit(2)`: ends a forked child without running the parent's exit handlers or flushing
/// buffers it inherited.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Installs a compiled seccomp filter (the bytes of `struct sock_filter`s) on the calling
/// thread. `no_new_privs` must be set already.
pub(crate) fn install_seccomp_filter(program: &[u8]) -> Result<(), Errno> {
    if program.is_empty() || program.len() % std::mem::size_of::<libc::sock_filter>() != 0 {
        return Err(Errno::EINVAL);
    }
    // Copy into properly aligned storage: `program` is a byte buffer.
    let filters: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filters`, which stays alive for the call; the kernel copies
    // the program and keeps no pointer to our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
