//! The solver of cairn pipelines: vertices, cache keys, concurrent scheduling, cancellation.
//!
//! It knows nothing about containers, images or mounts. A pipeline is a DAG of [`Vertex`]es; each
//! runs an [`Op`] over the results of its inputs. The engine implements the ops (pull an image,
//! exec, read a host directory, copy) and picks the result type `R` — a snapshot name plus the
//! recorded stdout, stderr and exit code of the step, say. The solver decides what runs, when,
//! and what can come from the cache.
//!
//! # From a vertex to a key
//!
//! 1. **Description.** [`Op::describe`] returns a [`CacheDescription`]: the op kind and named
//!    fields (the command, the environment, the image reference …), sorted by name so insertion
//!    order does not matter. Values the pipeline marks volatile, and secret values, are simply
//!    left out: they can never cause a cache miss, and two vertices differing only in them are
//!    the same vertex.
//! 2. **Digest.** [`Vertex::new`] hashes the description and, for each input [`Edge`], the input
//!    vertex's digest and the output it reads. The digest identifies the vertex and everything
//!    upstream of it, so [`Graph`] (a petgraph graph) merges identical vertices built separately,
//!    and concurrent solves share work by it. Since a vertex can only be built from vertices that
//!    already exist, the graph cannot have a cycle.
//! 3. **Key.** At solve time, once the inputs are solved, the solver asks the op for a
//!    [`content_digest`](Op::content_digest) (a host directory's content hash, the manifest digest
//!    a tag resolves to) and hashes a [`KeyRecipe`]: the description, the *cache keys* of the
//!    inputs (not their digests: an input whose host files changed gets a new key, and so does
//!    every vertex downstream) and the content digest. The encoding is length-prefixed and opens
//!    with [`CACHE_KEY_VERSION`]; a test pins one key's hex value.
//! 4. **Cache.** The [`CacheStore`] is asked for the key. On a hit the op does not run and the
//!    vertex is reported [`Cached`](VertexStatus::Cached); on a miss the op runs under a permit
//!    (at most [`Solver::parallelism`] ops at once) and its outputs are saved under the key.
//!
//! [`KeyRecipe::explain`] lists a key's components with a digest of each value. The engine
//! stores it next to the cache record (every [`VertexReport`] carries its recipe), and on a miss
//! [`Explanation::changed`] tells `--explain` which component differs from last time.
//!
//! # Failure, cancellation, progress
//!
//! A failing vertex fails nothing but its dependents, which are [skipped](VertexStatus::Skipped)
//! naming the vertex that failed first; independent vertices finish. With
//! [`SolveOptions::fail_fast`] the first failure cancels the rest, as does the caller's
//! [`CancellationToken`]. Ops see cancellation through
//! [`ExecContext::cancellation`] and must stop; the solver waits for them to return, so they can
//! kill their processes and drop their temporary snapshots. A vertex two solves share keeps
//! running until neither wants it. [`Event`]s report each vertex as it starts and ends, and the
//! ops' output ([`ExecContext::log`]).
//!
//! # How the engine uses it
//!
//! ```no_run
//! use std::sync::Arc;
//! use cairn_solver::*;
//!
//! /// The engine's result: a snapshot name (and, in the real engine, the step's output).
//! #[derive(Clone)]
//! struct Snapshot(String);
//!
//! struct Exec { args: Vec<String>, secret_env: Vec<(String, String)> }
//!
//! impl Op<Snapshot> for Exec {
//!     fn describe(&self) -> CacheDescription {
//!         // The secret values are not described: they never reach the key or the cache.
//!         CacheDescription::new("exec").field("args", self.args.join("\0"))
//!     }
//!     fn exec<'a>(&'a self, ctx: &'a ExecContext, inputs: Vec<Snapshot>)
//!         -> BoxFuture<'a, Result<Vec<Snapshot>, OpError>> {
//!         Box::pin(async move {
//!             // Prepare a snapshot on inputs[0], run the container until it exits or
//!             // ctx.cancellation() fires, ctx.log() its output, commit.
//!             ctx.log(LogStream::Stdout, "built\n");
//!             Ok(vec![Snapshot(format!("{}-run", inputs[0].0))])
//!         })
//!     }
//! }
//! # struct Base;
//! # impl Op<Snapshot> for Base {
//! #     fn describe(&self) -> CacheDescription { CacheDescription::new("pull") }
//! #     fn exec<'a>(&'a self, _: &'a ExecContext, _: Vec<Snapshot>)
//! #         -> BoxFuture<'a, Result<Vec<Snapshot>, OpError>> {
//! #         Box::pin(async { Ok(vec![Snapshot("alpine".into())]) })
//! #     }
//! # }
//!
//! # async fn run() {
//! let base = Vertex::new(Arc::new(Base), vec![], VertexOptions::new("FROM alpine"));
//! let exec = Exec { args: vec!["make".into()], secret_env: vec![] };
//! let make = Vertex::new(Arc::new(exec), vec![base.edge()], VertexOptions::new("RUN make"));
//!
//! let solver = Solver::new(Arc::new(MemoryCache::new()));
//! let (events, mut progress) = tokio::sync::mpsc::unbounded_channel();
//! let solution = solver.solve(&[make.edge()], SolveOptions::new().events(events)).await;
//! while let Ok(event) = progress.try_recv() {
//!     println!("{}: {:?}", event.vertex, event.kind);
//! }
//! match &solution.results()[0] {
//!     Ok(snapshot) => println!("result in {}", snapshot.0),
//!     Err(e) => eprintln!("{e} ({:?})", e.kind()),
//! }
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cache;
mod error;
mod graph;
mod key;
mod op;
mod progress;
mod solver;
#[cfg(test)]
mod tests;

pub use cache::{CacheError, CacheStore, MemoryCache};
pub use error::{ErrorKind, SharedError, SolveError};
pub use graph::{Edge, Graph, Vertex, VertexId, VertexOptions};
pub use key::{
    CacheDescription, CacheKey, Explanation, KeyComponent, KeyRecipe, CACHE_KEY_VERSION,
    VERTEX_DIGEST_VERSION,
};
pub use op::{BoxFuture, ExecContext, Op, OpError};
pub use progress::{Event, EventKind, LogStream};
pub use solver::{Solution, SolveOptions, Solver, VertexReport, VertexStatus};
pub use tokio_util::sync::CancellationToken;
