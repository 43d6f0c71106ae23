//! The solver's one error type.

use std::error::Error as StdError;
use std::sync::Arc;

use crate::graph::VertexId;
use crate::key::CacheKey;

/// A shared error from an op or a cache store.
///
/// Shared rather than boxed because one failure reaches every caller and every target that
/// depends on it; downcast it to the engine's own error type to learn more.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Why a vertex produced no result. Every variant names the vertex at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    /// The op's `exec` returned an error.
    #[error("vertex {vertex} failed")]
    Op {
        /// The vertex whose op failed.
        vertex: VertexId,
        /// The op's error.
        #[source]
        source: SharedError,
    },
    /// The op's `content_digest` returned an error.
    #[error("computing the content digest of vertex {vertex} failed")]
    ContentDigest {
        /// The vertex whose op failed.
        vertex: VertexId,
        /// The op's error.
        #[source]
        source: SharedError,
    },
    /// A vertex this one depends on (directly or not) failed, so this one never ran.
    #[error("vertex {vertex} was skipped because its dependency {dependency} failed")]
    DependencyFailed {
        /// The skipped vertex.
        vertex: VertexId,
        /// The vertex that failed first.
        dependency: VertexId,
        /// The dependency's error.
        #[source]
        source: Arc<SolveError>,
    },
    /// The solve was cancelled (by the caller or by `fail_fast`) before the vertex finished.
    #[error("vertex {vertex} was cancelled")]
    Cancelled {
        /// The cancelled vertex.
        vertex: VertexId,
    },
    /// The cache store failed to look the vertex's key up.
    #[error("cache lookup of {key} for vertex {vertex} failed")]
    CacheLoad {
        /// The vertex being looked up.
        vertex: VertexId,
        /// Its cache key.
        key: CacheKey,
        /// The store's error.
        #[source]
        source: SharedError,
    },
    /// The cache store failed to record the vertex's result.
    #[error("saving the result of vertex {vertex} under {key} failed")]
    CacheSave {
        /// The vertex whose result was not saved.
        vertex: VertexId,
        /// Its cache key.
        key: CacheKey,
        /// The store's error.
        #[source]
        source: SharedError,
    },
    /// The op (or the cache store) returned a number of outputs other than the op declares.
    #[error("vertex {vertex} produced {got} outputs but its op declares {expected}")]
    OutputCount {
        /// The vertex at fault.
        vertex: VertexId,
        /// What `Op::outputs` says.
        expected: usize,
        /// What came back.
        got: usize,
    },
    /// The op panicked.
    #[error("vertex {vertex} panicked")]
    Panicked {
        /// The vertex whose op panicked.
        vertex: VertexId,
    },
}

/// What kind of failure a [`SolveError`] is, for callers to branch on (exit codes, retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An op failed: the pipeline's own fault (a command exited non-zero, an image is missing …).
    Op,
    /// A dependency failed; the root cause is the error's source.
    DependencyFailed,
    /// The solve was cancelled.
    Cancelled,
    /// The cache store failed.
    Cache,
    /// An op broke its contract (wrong number of outputs, panic): a bug in the op.
    Bug,
}

impl SolveError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SolveError::Op { .. } | SolveError::ContentDigest { .. } => ErrorKind::Op,
            SolveError::DependencyFailed { .. } => ErrorKind::DependencyFailed,
            SolveError::Cancelled { .. } => ErrorKind::Cancelled,
            SolveError::CacheLoad { .. } | SolveError::CacheSave { .. } => ErrorKind::Cache,
            SolveError::OutputCount { .. } | SolveError::Panicked { .. } => ErrorKind::Bug,
        }
    }

    /// The vertex the error is about.
    pub fn vertex(&self) -> &VertexId {
        match self {
            SolveError::Op { vertex, .. }
            | SolveError::ContentDigest { vertex, .. }
            | SolveError::DependencyFailed { vertex, .. }
            | SolveError::Cancelled { vertex }
            | SolveError::CacheLoad { vertex, .. }
            | SolveError::CacheSave { vertex, .. }
            | SolveError::OutputCount { vertex, .. }
            | SolveError::Panicked { vertex } => vertex,
        }
    }
}
