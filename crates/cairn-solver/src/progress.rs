//! Progress: the events a solve reports, and the fan-out that sends one job's events to every
//! solve watching it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::SolveError;
use crate::graph::VertexId;
use crate::key::KeyRecipe;

/// A progress event about one vertex.
#[derive(Clone, Debug)]
pub struct Event {
    /// The vertex, named as in this solve's graph.
    pub vertex: VertexId,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to a vertex. Each vertex gets exactly one of the final kinds (all but `Started`
/// and `Log`) per solve; `Started` comes when its inputs are ready, before the cache lookup.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EventKind {
    /// Inputs are solved; the key, cache lookup and maybe the op follow.
    Started,
    /// The cache key is known (sent after `Started`, before the cache lookup): what it was made
    /// of, so a caller can say why it differs from an earlier run's (`--explain`).
    Keyed {
        /// The key's recipe.
        recipe: KeyRecipe,
    },
    /// The result came from the cache; the op did not run.
    Cached {
        /// Since `Started`.
        duration: Duration,
    },
    /// The op ran and succeeded.
    Completed {
        /// Since `Started`.
        duration: Duration,
    },
    /// The vertex failed.
    Failed {
        /// Why.
        error: SolveError,
        /// Since `Started`.
        duration: Duration,
    },
    /// A dependency failed, so the vertex never ran.
    Skipped {
        /// The dependency that failed first.
        because: VertexId,
    },
    /// The solve was cancelled before the vertex finished.
    Cancelled,
    /// Output of the op, sent through [`ExecContext::log`](crate::ExecContext::log).
    Log {
        /// Which stream.
        stream: LogStream,
        /// The bytes, as the op read them (not split into lines).
        bytes: Bytes,
    },
}

/// Which output stream a [`EventKind::Log`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The event fan-out and waiter count of one job; shared with its
/// [`ExecContext`](crate::ExecContext).
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) state: Mutex<ProgressState>,
}

#[derive(Default)]
pub(crate) struct ProgressState {
    pub(crate) waiters: usize,
    started: bool,
    next_id: u64,
    pub(crate) subscribers: Vec<Subscriber>,
}

pub(crate) struct Subscriber {
    pub(crate) id: u64,
    vertex: VertexId,
    events: UnboundedSender<Event>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Progress {
    pub(crate) fn emit(&self, kind: &EventKind) {
        lock(&self.state).emit(kind);
    }

    pub(crate) fn subscribe(&self, vertex: VertexId, events: UnboundedSender<Event>) -> u64 {
        lock(&self.state).subscribe(vertex, events)
    }

    pub(crate) fn start(&self) {
        let mut state = lock(&self.state);
        state.started = true;
        state.emit(&EventKind::Started);
    }
}

impl ProgressState {
    fn emit(&self, kind: &EventKind) {
        for s in &self.subscribers {
            let vertex = s.vertex.clone();
            // A caller that hung up its receiver just stops seeing progress.
            let _ = s.events.send(Event {
                vertex,
                kind: kind.clone(),
            });
        }
    }

    /// Late subscribers are told `Started` if they missed it.
    pub(crate) fn subscribe(&mut self, vertex: VertexId, events: UnboundedSender<Event>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if self.started {
            let kind = EventKind::Started;
            let _ = events.send(Event {
                vertex: vertex.clone(),
                kind,
            });
        }
        self.subscribers.push(Subscriber { id, vertex, events });
        id
    }
}
