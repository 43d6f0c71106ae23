//! The engine's one error type.

use std::path::{Path, PathBuf};

use cairn_solver::SolveError;

/// What went wrong in the engine; each variant names the step, path or key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store or an image failed.
    #[error(transparent)]
    Images(#[from] cairn_images::ImagesError),
    /// Running a container failed.
    #[error(transparent)]
    Containers(#[from] cairn_containers::ContainersError),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] cairn_snapshot::SnapshotError),
    /// The cache table of the store's database failed.
    #[error("cache database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A cache record could not be encoded or decoded.
    #[error("cache record {key}: {reason}")]
    CacheRecord {
        /// The cache key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An include or exclude pattern is not a valid glob.
    #[error("directory {path}: invalid glob {pattern:?}: {source}")]
    Glob {
        /// The host directory.
        path: PathBuf,
        /// The pattern.
        pattern: String,
        /// Why it is invalid.
        #[source]
        source: globset::Error,
    },
    /// A step's command exited with a non-zero code.
    #[error(
        "step {step:?}: command {command} exited with code {code}{}",
        tail_text(stderr_tail)
    )]
    ExecFailed {
        /// The step (the container's label).
        step: String,
        /// The command, as a JSON array.
        command: String,
        /// Its exit code (128+N for signal N).
        code: i32,
        /// The last lines of its standard error, secrets masked.
        stderr_tail: String,
    },
    /// A step's command was stopped before it ended.
    #[error("step {step:?}: command {command} was stopped")]
    Stopped {
        /// The step.
        step: String,
        /// The command, as a JSON array.
        command: String,
    },
    /// A secret's value could not be read.
    #[error("secret {name:?}: {reason}")]
    Secret {
        /// The secret's name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// The API was used in a way that cannot be solved.
    #[error("{what}: {reason}")]
    Invalid {
        /// The object at fault (a step, a path).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Flattening a snapshot chain to read a directory out of it failed.
    #[error("reading {path} out of snapshot {snapshot}: {reason}")]
    Flatten {
        /// The top snapshot.
        snapshot: String,
        /// The directory asked for.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// A path asked for (a file, a directory) is not in the container or directory.
    #[error("step {step:?}: no such file or directory {path}")]
    PathNotFound {
        /// The step (the container's name, or the vertex that reads the path).
        step: String,
        /// The path, as asked for.
        path: String,
    },
    /// A path asked for is there but of another type (a directory where a file was asked for).
    #[error("step {step:?}: {path} is {found}, not {expected}")]
    WrongFileType {
        /// The step (the container's name, or the vertex that reads the path).
        step: String,
        /// The path, as asked for.
        path: String,
        /// What was asked for: "a regular file", "a directory".
        expected: &'static str,
        /// What is there: "a directory", "a symlink loop", "a device" ...
        found: &'static str,
    },
    /// A host file kept changing while it was read to be hashed.
    #[error("{path}: changed while it was hashed, {attempts} times in a row")]
    ChangedWhileHashed {
        /// The file.
        path: PathBuf,
        /// How many reads saw it change.
        attempts: u32,
    },
    /// Solving the pipeline failed: a vertex failed or was skipped.
    #[error(transparent)]
    Solve(#[from] SolveError),
}

/// What kind of failure an [`EngineError`] is, for callers to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The pipeline's own fault: a command failed, a path or glob is wrong.
    InvalidInput,
    /// Something named does not exist (an image, a secret's variable).
    NotFound,
    /// The store, the cache or the host failed.
    Internal,
    /// The work was stopped.
    Cancelled,
}

impl EngineError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::ExecFailed { .. }
            | EngineError::Glob { .. }
            | EngineError::Invalid { .. } => ErrorKind::InvalidInput,
            EngineError::Secret { .. } | EngineError::PathNotFound { .. } => ErrorKind::NotFound,
            EngineError::WrongFileType { .. } => ErrorKind::InvalidInput,
            EngineError::Stopped { .. } => ErrorKind::Cancelled,
            EngineError::Solve(e) if e.kind() == cairn_solver::ErrorKind::Cancelled => {
                ErrorKind::Cancelled
            }
            // The op's own error, under the solver's (and a skipped vertex's dependency's).
            EngineError::Solve(e) => {
                let mut cause = std::error::Error::source(e);
                while let Some(c) = cause {
                    // The solver shares op errors as `Arc<dyn Error>`.
                    let shared = c.downcast_ref::<cairn_solver::SharedError>();
                    let inner = shared.and_then(|s| s.downcast_ref::<EngineError>());
                    if let Some(inner) = inner.or_else(|| c.downcast_ref::<EngineError>()) {
                        return inner.kind();
                    }
                    cause = c.source();
                }
                ErrorKind::Internal
            }
            EngineError::Images(e) if e.kind() == cairn_images::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            _ => ErrorKind::Internal,
        }
    }
}

fn tail_text(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr ends with:\n{tail}")
    }
}

pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_owned();
    move |source| EngineError::Io {
        action,
        path,
        source,
    }
}
