//! The op trait engines implement, and the context an op runs in.

use std::sync::Arc;

use bytes::Bytes;
use cairn_oci::Digest;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::graph::VertexId;
use crate::key::{CacheDescription, CacheKey};
use crate::progress::{Event, EventKind, LogStream, Progress};

/// A boxed, sendable future: what the async methods of [`Op`] and
/// [`CacheStore`](crate::CacheStore) return (`Box::pin(async move { … })`).
pub type BoxFuture<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// The error an op returns: the engine's own error type, boxed.
pub type OpError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a vertex does. `R` is the result type the engine chose (a snapshot reference with the
/// recorded output of the step, say); the solver only clones and forwards it.
pub trait Op<R>: Send + Sync {
    /// The stable parts of the op that identify its result (see [`CacheDescription`]). Called
    /// once, when the vertex is made. Volatile values (secrets, env marked volatile) stay out.
    fn describe(&self) -> CacheDescription;

    /// How many outputs `exec` returns. One unless the op has several (one per writable mount).
    fn outputs(&self) -> usize {
        1
    }

    /// Whether results may be loaded from and saved to the cache. A non-cacheable op still has a
    /// key, which its dependents build on: if its result can change from run to run, report the
    /// change through [`Op::content_digest`] so that their keys change too.
    fn cacheable(&self) -> bool {
        true
    }

    /// A digest of what the op reads from outside the pipeline, computed at solve time before
    /// the key (a host directory's content hash, the manifest digest a tag resolves to). It
    /// enters the cache key but not the vertex digest.
    fn content_digest<'a>(
        &'a self,
        ctx: &'a ExecContext,
    ) -> BoxFuture<'a, Result<Option<Digest>, OpError>> {
        let _ = ctx;
        Box::pin(async { Ok(None) })
    }

    /// Runs the op over its inputs' results (one per input edge, in order) and returns one
    /// result per output. Must return soon after `ctx.cancellation()` fires, having cleaned up:
    /// the solver waits for it rather than dropping it.
    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<R>,
    ) -> BoxFuture<'a, Result<Vec<R>, OpError>>;
}

/// What an op gets to run: its vertex, its cache key, the cancellation token and a log sink.
pub struct ExecContext {
    vertex: VertexId,
    key: Option<CacheKey>,
    cancel: CancellationToken,
    progress: Arc<Progress>,
}

impl ExecContext {
    /// A context outside any solve, for testing an op on its own: logs go to `events`.
    pub fn new(
        vertex: VertexId,
        cancel: CancellationToken,
        events: Option<UnboundedSender<Event>>,
    ) -> Self {
        let progress = Arc::new(Progress::default());
        if let Some(events) = events {
            progress.subscribe(vertex.clone(), events);
        }
        ExecContext {
            vertex,
            key: None,
            cancel,
            progress,
        }
    }

    pub(crate) fn for_job(
        vertex: VertexId,
        cancel: CancellationToken,
        progress: Arc<Progress>,
    ) -> Self {
        ExecContext {
            vertex,
            key: None,
            cancel,
            progress,
        }
    }

    pub(crate) fn set_key(&mut self, key: CacheKey) {
        self.key = Some(key);
    }

    /// The vertex being run.
    pub fn vertex(&self) -> &VertexId {
        &self.vertex
    }

    /// The cache key: `None` in `content_digest`, which runs before there is one.
    pub fn cache_key(&self) -> Option<&CacheKey> {
        self.key.as_ref()
    }

    /// Fires when nobody wants the result any more. Stop, clean up and return an error.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether [`ExecContext::cancellation`] has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sends output to everyone watching this vertex, as a [`EventKind::Log`] event.
    pub fn log(&self, stream: LogStream, bytes: impl Into<Bytes>) {
        self.progress.emit(&EventKind::Log {
            stream,
            bytes: bytes.into(),
        });
    }
}
