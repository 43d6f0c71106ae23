//! What runs as pid 1 of every container: a small reaper, like Docker's `--init` (tini).
//!
//! libcontainer sets up the container (namespaces, pivot_root, capabilities, seccomp, user)
//! and then hands over to an [`Executor`] instead of `exec`ing the command. cairn's executor
//! stays as pid 1 and starts the command as its child:
//!
//! - it reaps every process that is reparented to it, so a command that leaves zombies (or a
//!   pid 1 that would never reap) cannot exhaust the container's pids;
//! - it forwards the signals it gets (SIGTERM from `cairn kill`, SIGINT, SIGHUP …) to the
//!   command, which as pid 1 would otherwise ignore every signal it has no handler for;
//! - it holds no descriptor but the container's stdio (the helper's, which it was cloned
//!   from, are closed);
//! - it asks for SIGKILL when the runtime helper dies, so a killed engine leaves no container
//!   running (the pid namespace dies with its init);
//! - it exits with the command's status, 128+N when the command died of signal N.

use std::ffi::CString;
use std::os::fd::AsFd;

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::sys;

/// The container's pid 1. Cloned into the container init by libcontainer.
#[derive(Clone)]
pub(crate) struct ReaperExecutor {
    /// The working directory the command starts in (created if missing, as Docker does).
    pub(crate) cwd: String,
    /// Make stdin the controlling terminal and the command its foreground process group.
    pub(crate) tty: bool,
    /// The compiled seccomp filter, installed before the command is forked (and so on this
    /// init too, as libcontainer would have).
    pub(crate) seccomp: Option<std::sync::Arc<Vec<u8>>>,
}

impl Executor for ReaperExecutor {
    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        // A missing command is reported by the forked child (exit 127, as Docker does), with
        // the container's own stderr, rather than as a failure to create the container.
        Ok(())
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args: Vec<CString> = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .ok_or(ExecutorError::InvalidArg)?
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        if args.is_empty() {
            return Err(ExecutorError::InvalidArg);
        }
        // Nothing below reads a descriptor but stdio, and every way out is an exit.
        sys::close_descriptors_except(None);
        // Credentials were changed before this point, which clears the parent-death signal;
        // set it now that nothing changes them any more.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if let Some(program) = &self.seccomp {
            if let Err(e) = sys::install_seccomp_filter(program) {
                eprintln!("cairn: install seccomp filter: {e}");
                std::process::exit(126);
            }
        }
        // The helper ignores the terminal's signals (see `helper::ignore_terminal_signals`);
        // an ignored signal is dropped even while blocked, so restore the defaults before
        // waiting for signals to forward.
        sys::reset_signal_dispositions();
        let all = SigSet::all();
        let _ = all.thread_block();
        if self.tty {
            let _ = sys::set_controlling_terminal(std::io::stdin().as_fd());
        }
        if self.cwd != "/" {
            let _ = std::fs::create_dir_all(&self.cwd);
        }
        if let Err(e) = std::env::set_current_dir(&self.cwd) {
            eprintln!("cairn: working directory {}: {e}", self.cwd);
            std::process::exit(126);
        }
        let child = if self.tty {
            // The command must be the terminal's foreground before it runs, which only a
            // forked child can arrange (it makes itself so, then executes).
            match sys::fork_single_threaded()
                .map_err(|e| ExecutorError::Other(format!("fork the command: {e}")))?
            {
                sys::Forked::Child => run_in_terminal(&args),
                sys::Forked::Parent(child) => child,
            }
        } else {
            match sys::spawn_command(&args) {
                Ok(child) => child,
                Err(e) => std::process::exit(report_exec_failure(&args[0], e)),
            }
        };
        loop {
            let Ok(signal) = all.wait() else { continue };
            if signal == Signal::SIGCHLD {
                if let Some(code) = reap(child) {
                    std::process::exit(code);
                }
            } else {
                let _ = nix::sys::signal::kill(child, signal);
            }
        }
    }
}

/// In the forked child: become the foreground of the terminal, restore signals, exec.
fn run_in_terminal(args: &[CString]) -> ! {
    let me = nix::unistd::getpid();
    let _ = nix::unistd::setpgid(me, me);
    // Signals are still blocked, so SIGTTOU does not stop us here.
    let _ = nix::unistd::tcsetpgrp(std::io::stdin().as_fd(), me);
    sys::reset_signal_dispositions();
    let _ = SigSet::all().thread_unblock();
    let err = sys::exec(args);
    std::process::exit(report_exec_failure(&args[0], err))
}

/// Says on the container's stderr why the command could not run; returns the exit code a
/// shell (and Docker) gives that failure: 127 not found, 126 not executable.
fn report_exec_failure(program: &CString, err: nix::errno::Errno) -> i32 {
    let name = program.to_string_lossy();
    match err {
        nix::errno::Errno::ENOENT => {
            eprintln!("cairn: {name}: executable file not found in $PATH");
            127
        }
        e => {
            eprintln!("cairn: {name}: cannot execute: {}", e.desc());
            126
        }
    }
}

/// Reaps every exited child; returns the exit code once the command itself is gone.
fn reap(command: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => result = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                result = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}
