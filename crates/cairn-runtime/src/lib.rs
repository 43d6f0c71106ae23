//! The one cairn crate that talks to the kernel about namespaces and ids.
//!
//! For now it holds the user-namespace machinery that rootless stores need: working out which
//! ids the calling user may map ([`IdMapping::detect`]), and starting a helper process inside a
//! user namespace with that mapping ([`spawn_in_user_namespace`]). Such a helper is ordinary code
//! of the calling program, re-executed: the program calls [`init`] first thing in `main`, and in
//! a helper `init` enters the namespace before any thread exists (the kernel refuses
//! `unshare(CLONE_NEWUSER)` to multithreaded processes).

#![deny(missing_docs)]

mod idmap;
mod userns;

pub use idmap::{IdMapping, IdRange};
pub use userns::{init, spawn_in_user_namespace, UsernsChild, HELPER_ENV};

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
    /// The helper did not complete the start-up handshake.
    #[error("user namespace helper (pid {pid}) failed to start: {reason}")]
    Handshake {
        /// The helper.
        pid: u32,
        /// What went wrong, with the helper's own message when it sent one.
        reason: String,
    },
}
