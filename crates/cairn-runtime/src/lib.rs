//! The one cairn crate that talks to the kernel about namespaces, ids and containers, and the
//! only one that uses `libcontainer`.
//!
//! - User namespaces for rootless stores: which ids the calling user may map
//!   ([`IdMapping::detect`]), and helpers started inside a user namespace with that mapping
//!   ([`spawn_in_user_namespace`]).
//! - Containers: [`Runtime`] runs [`ContainerConfig`]s through libcontainer in a dedicated
//!   single-threaded helper process ([`helper`]), with Docker's isolation defaults
//!   ([`spec::build_spec`]) and a reaping pid 1 in every container.
//! - Terminals for `-t` ([`tty`]).
//!
//! Helpers are ordinary code of the calling program, re-executed: the program calls its init
//! hook first thing in `main` (`cairn_images::init`, which calls [`init`] and serves
//! [`helper::RUNTIME_HELPER_ARG`]); in a helper `init` enters the namespace before any thread
//! exists (the kernel refuses `unshare(CLONE_NEWUSER)` to multithreaded processes).
//!
//! A short-lived program that will run a container may also call [`prefork_helper`] right
//! after the init hook, still single-threaded: its first runtime helper is then a fork
//! taken there instead of the program executed again (`cairn exec` and `cairn run` do).
//!
//! All `unsafe` code of cairn is in the private `sys` module.

#![deny(missing_docs)]

mod client;
pub mod config;
pub mod helper;
mod idmap;
mod init_process;
mod prefork;
mod proto;
mod seccomp;
pub mod spec;
mod sys;
pub mod tty;
mod userns;

pub use client::{ContainerStdio, ExitWaiter, Runtime, RuntimeOptions, Started};
pub use config::{ContainerConfig, ExtraMount, Network, ProcessUser, Resources, RootfsMount};
pub use idmap::{IdMapping, IdRange};
pub use prefork::prefork_helper;
pub use seccomp::{compile_filter, FilterLayout};
pub use userns::{init, spawn_in_user_namespace, UsernsChild, HELPER_ENV};

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitStatus {
    /// Its init exited with this code (the command's code, or 128+N when the command died of
    /// signal N: the init reports it that way, as a shell does).
    Code(i32),
    /// Its init was killed by this signal (a timeout or `cairn kill` that came to SIGKILL).
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128+N for signal N.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

use std::path::PathBuf;

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A system file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `newuidmap` or `newgidmap` refused the mapping.
    #[error("{tool} refused to map ids for pid {pid} ({mapping}): {stderr}")]
    MapRefused {
        /// `newuidmap` or `newgidmap`.
        tool: &'static str,
        /// The process being mapped.
        pid: u32,
        /// The mapping asked for.
        mapping: String,
        /// What the tool said.
        stderr: String,
    },
    /// The runtime helper went away (crashed, or was killed) while a container needed it.
    #[error("runtime helper: {reason}")]
    HelperDied {
        /// What is known about its end.
        reason: String,
    },
    /// A container could not be created or started.
    #[error("container {id}: {message}")]
    Create {
        /// The container.
        id: String,
        /// What libcontainer or the helper said.
        message: String,
    },
    /// An operation on a running container failed.
    #[error("container {id}: {message}")]
    Container {
        /// The container.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// A terminal operation failed.
    #[error("terminal: {action}: {source}")]
    Terminal {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: nix::errno::Errno,
    },
    /// The helper did not complete the start-up handshake.
    #[error("user namespace helper (pid {pid}) failed to start: {reason}")]
    Handshake {
        /// The helper.
        pid: u32,
        /// What went wrong, with the helper's own message when it sent one.
        reason: String,
    },
    /// A seccomp profile cannot be compiled (an unknown call name or action, a libseccomp
    /// without what the layout needs).
    #[error("seccomp filter: {reason}")]
    Seccomp {
        /// What libseccomp or the profile got wrong.
        reason: String,
    },
    /// A container config cannot be turned into a runtime spec (a relative or `..` mount
    /// destination, a network namespace missing, a limit out of range …).
    #[error("invalid container spec: {reason}")]
    Spec {
        /// What is wrong, naming the path or value at fault.
        reason: String,
    },
}
