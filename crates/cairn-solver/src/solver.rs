//! The scheduler: one tokio task per vertex, shared by every solve that needs it.
//!
//! A [`Solver`] keeps a map of *jobs* by vertex digest. `solve` joins one job per vertex of its
//! graph (creating and spawning the ones nobody runs yet) and waits for their outcomes. A job
//! waits for its input jobs, computes its key, consults the cache and, on a miss, runs the op
//! under a permit of the solver-wide semaphore. A job counts the solves waiting for it; when the
//! last one leaves (cancelled, fail-fast, or its future dropped), the job's own token fires and
//! its op is asked to stop. A job leaves the map when it finishes: later solves go to the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_oci::Digest;
use futures_util::future::{join_all, try_join_all};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::CacheStore;
use crate::error::SolveError;
use crate::graph::{Edge, Graph, Node, Vertex, VertexId};
use crate::key::{CacheKey, KeyRecipe};
use crate::op::ExecContext;
use crate::progress::{lock, Event, EventKind, Progress};

/// Solves pipelines. Clone it freely: clones share the cache, the parallelism limit and the
/// in-flight work, so concurrent `solve` calls run a vertex they both need only once.
pub struct Solver<R> {
    inner: Arc<Inner<R>>,
}

struct Inner<R> {
    cache: Arc<dyn CacheStore<R>>,
    parallelism: usize,
    permits: Semaphore,
    jobs: Mutex<HashMap<Digest, Arc<Job<R>>>>,
}

/// How one `solve` call behaves.
#[derive(Clone, Debug, Default)]
pub struct SolveOptions {
    events: Option<UnboundedSender<Event>>,
    fail_fast: bool,
    cancel: CancellationToken,
}

impl SolveOptions {
    /// Defaults: no events, independent vertices finish after a failure, never cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends progress [`Event`]s for this solve's vertices to `events`.
    pub fn events(mut self, events: UnboundedSender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// On the first failed vertex, cancel everything still running or pending.
    pub fn fail_fast(mut self, yes: bool) -> Self {
        self.fail_fast = yes;
        self
    }

    /// Stops the solve when `token` fires; unfinished vertices are reported cancelled.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }
}

/// How a vertex ended, as the [`Solution`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum VertexStatus {
    /// The op ran and succeeded (in this solve or, for a shared vertex, in a concurrent one).
    Completed {
        /// Since the inputs were ready.
        duration: Duration,
    },
    /// The result came from the cache.
    Cached {
        /// Since the inputs were ready.
        duration: Duration,
    },
    /// The vertex failed.
    Failed {
        /// Why.
        error: SolveError,
        /// Since the inputs were ready.
        duration: Duration,
    },
    /// A dependency failed first.
    Skipped {
        /// That dependency.
        because: VertexId,
        /// Its error.
        error: SolveError,
    },
    /// Cancelled before it finished.
    Cancelled,
}

impl From<&VertexStatus> for EventKind {
    fn from(status: &VertexStatus) -> Self {
        match status.clone() {
            VertexStatus::Completed { duration } => EventKind::Completed { duration },
            VertexStatus::Cached { duration } => EventKind::Cached { duration },
            VertexStatus::Failed { error, duration } => EventKind::Failed { error, duration },
            VertexStatus::Skipped { because, .. } => EventKind::Skipped { because },
            VertexStatus::Cancelled => EventKind::Cancelled,
        }
    }
}

/// What became of one vertex of the graph.
#[derive(Clone, Debug)]
pub struct VertexReport {
    /// The vertex.
    pub vertex: VertexId,
    /// How it ended.
    pub status: VertexStatus,
    /// What its cache key was made of, when it got as far as having one; its `explain()` is
    /// what `--explain` compares between runs.
    pub recipe: Option<KeyRecipe>,
}

/// The result of [`Solver::solve`]: one result per target, and a report per vertex.
#[derive(Debug)]
pub struct Solution<R> {
    results: Vec<Result<R, SolveError>>,
    report: Vec<VertexReport>,
}

impl<R> Solution<R> {
    /// One result per target, in the order the targets were given.
    pub fn results(&self) -> &[Result<R, SolveError>] {
        &self.results
    }

    /// The results, by value.
    pub fn into_results(self) -> Vec<Result<R, SolveError>> {
        self.results
    }

    /// Every vertex of the graph, inputs first.
    pub fn report(&self) -> &[VertexReport] {
        &self.report
    }

    /// How the vertex with this digest ended, if it was in the graph.
    pub fn status(&self, digest: &Digest) -> Option<&VertexStatus> {
        let r = self.report.iter().find(|r| r.vertex.digest() == digest);
        r.map(|r| &r.status)
    }

    /// The vertices whose op ran to success.
    pub fn executed(&self) -> Vec<&VertexId> {
        self.with(|s| matches!(s, VertexStatus::Completed { .. }))
    }

    /// The vertices that hit the cache.
    pub fn cached(&self) -> Vec<&VertexId> {
        self.with(|s| matches!(s, VertexStatus::Cached { .. }))
    }

    fn with(&self, f: impl Fn(&VertexStatus) -> bool) -> Vec<&VertexId> {
        let hits = self.report.iter().filter(|r| f(&r.status));
        hits.map(|r| &r.vertex).collect()
    }
}

/// The work of one vertex, shared by every solve that needs it while it runs.
struct Job<R> {
    id: VertexId,
    /// Fires when no solve waits for the job any more.
    token: CancellationToken,
    progress: Arc<Progress>,
    outcome: watch::Receiver<Option<Arc<Outcome<R>>>>,
    recipe: OnceLock<KeyRecipe>,
}

/// How a job ended; `outputs` and `key` are set when it succeeded.
struct Outcome<R> {
    status: VertexStatus,
    outputs: Vec<R>,
    key: Option<CacheKey>,
}

impl<R> Outcome<R> {
    fn stopped(status: VertexStatus) -> Self {
        Outcome {
            status,
            outputs: Vec::new(),
            key: None,
        }
    }
}

impl<R> Job<R> {
    async fn wait(&self) -> Arc<Outcome<R>> {
        let mut rx = self.outcome.clone();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        // The sender only goes away unsent if the task panicked.
        done.unwrap_or_else(|| {
            let error = SolveError::Panicked {
                vertex: self.id.clone(),
            };
            let duration = Duration::ZERO;
            Arc::new(Outcome::stopped(VertexStatus::Failed { error, duration }))
        })
    }
}

/// One solve's hold on a job; dropping the last one cancels the job.
struct Waiter<R> {
    job: Arc<Job<R>>,
    subscriber: Option<u64>,
}

impl<R> Drop for Waiter<R> {
    fn drop(&mut self) {
        let mut state = lock(&self.job.progress.state);
        state.subscribers.retain(|s| Some(s.id) != self.subscriber);
        state.waiters = state.waiters.saturating_sub(1);
        if state.waiters == 0 {
            self.job.token.cancel();
        }
    }
}

/// One solve's waiters, in topological order, released in reverse: a job is let go of before
/// its inputs, so a concurrent solve never joins a live job whose input was just cancelled.
struct Holds<R>(Vec<Waiter<R>>);

impl<R> Drop for Holds<R> {
    fn drop(&mut self) {
        while self.0.pop().is_some() {}
    }
}

/// Removes a finished (or panicked) job from the map.
struct Finish<R> {
    inner: Arc<Inner<R>>,
    job: Arc<Job<R>>,
}

impl<R> Drop for Finish<R> {
    fn drop(&mut self) {
        let mut jobs = lock(&self.inner.jobs);
        let digest = self.job.id.digest();
        if jobs.get(digest).is_some_and(|j| Arc::ptr_eq(j, &self.job)) {
            jobs.remove(digest);
        }
    }
}

impl<R> Clone for Solver<R> {
    fn clone(&self) -> Self {
        Solver {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Solver<R> {
    /// A solver over `cache` running as many ops at once as there are cores.
    pub fn new(cache: Arc<dyn CacheStore<R>>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_parallelism(cache, cores)
    }

    /// A solver over `cache` running at most `parallelism` ops at once (at least one).
    pub fn with_parallelism(cache: Arc<dyn CacheStore<R>>, parallelism: usize) -> Self {
        let parallelism = parallelism.max(1);
        let permits = Semaphore::new(parallelism);
        let jobs = Mutex::new(HashMap::new());
        let inner = Inner {
            cache,
            parallelism,
            permits,
            jobs,
        };
        Solver {
            inner: Arc::new(inner),
        }
    }

    /// How many ops may run at once, across all solves.
    pub fn parallelism(&self) -> usize {
        self.inner.parallelism
    }

    /// Solves `targets` and everything they depend on.
    ///
    /// Returns once every vertex has an outcome. After a cancellation, it also waits for the
    /// ops that no other solve wants to return, so that they have cleaned up.
    pub async fn solve(&self, targets: &[Edge<R>], options: SolveOptions) -> Solution<R> {
        let graph = Graph::from_targets(targets);
        let cancel = options.cancel.child_token();
        let events = options.events.as_ref();
        let mut holds = Holds(Vec::with_capacity(graph.len()));
        for (i, node) in graph.nodes().enumerate() {
            let inputs = graph.inputs(i).into_iter();
            let inputs = inputs.map(|(n, out)| (holds.0[n].job.clone(), out));
            let waiter = self.join(node, inputs.collect(), events);
            holds.0.push(waiter);
        }
        let jobs: Vec<_> = holds.0.iter().map(|w| w.job.clone()).collect();
        let mut outcomes: Vec<Option<Arc<Outcome<R>>>> = vec![None; jobs.len()];
        let record = |outcomes: &mut Vec<_>, i: usize, outcome: Arc<Outcome<R>>| {
            if let Some(tx) = events {
                let vertex = graph.node(i).vertex.id().clone();
                let kind = EventKind::from(&outcome.status);
                let _ = tx.send(Event { vertex, kind });
            }
            outcomes[i] = Some(outcome);
        };

        let waits = jobs.iter().enumerate();
        let mut pending: FuturesUnordered<_> = waits
            .map(|(i, job)| async move { (i, job.wait().await) })
            .collect();
        loop {
            tokio::select! {
                biased;
                next = pending.next() => {
                    let Some((i, outcome)) = next else { break };
                    if options.fail_fast && matches!(outcome.status, VertexStatus::Failed { .. }) {
                        cancel.cancel();
                    }
                    record(&mut outcomes, i, outcome);
                }
                () = cancel.cancelled() => break,
            }
        }
        drop(pending);

        // Cancelled: let go of the unfinished jobs. Those nobody else wants are cancelled
        // now; wait for them to wind down. The others go on for their other solves.
        let mut winding = Vec::new();
        let waiters = std::mem::take(&mut holds.0);
        for (i, waiter) in waiters.into_iter().enumerate().rev() {
            if outcomes[i].is_some() {
                continue;
            }
            let job = waiter.job.clone();
            drop(waiter);
            if job.token.is_cancelled() || job.outcome.borrow().is_some() {
                winding.push((i, job));
            } else {
                let cancelled = Outcome::stopped(VertexStatus::Cancelled);
                record(&mut outcomes, i, Arc::new(cancelled));
            }
        }
        let wound = winding
            .iter()
            .map(|(i, j)| async move { (*i, j.wait().await) });
        for (i, outcome) in join_all(wound).await {
            record(&mut outcomes, i, outcome);
        }
        solution(&graph, &jobs, outcomes)
    }

    /// Joins the running job for `node`'s digest, or starts one.
    fn join(
        &self,
        node: &Node<R>,
        inputs: Vec<(Arc<Job<R>>, usize)>,
        events: Option<&UnboundedSender<Event>>,
    ) -> Waiter<R> {
        let id = node.vertex.id();
        let mut jobs = lock(&self.inner.jobs);
        if let Some(job) = jobs.get(id.digest()) {
            let mut state = lock(&job.progress.state);
            // A cancelled job is winding down for nobody; start afresh instead. So is a
            // finished one not yet out of the map: its inputs may have changed since (an
            // edited host file), and a new job finds an unchanged result in the cache.
            let usable = match &*job.outcome.borrow() {
                Some(_) => false,
                None => !job.token.is_cancelled(),
            };
            if usable {
                state.waiters += 1;
                let subscriber = events.map(|tx| state.subscribe(id.clone(), tx.clone()));
                drop(state);
                let job = job.clone();
                return Waiter { job, subscriber };
            }
        }
        let (tx, rx) = watch::channel(None);
        let progress = Arc::new(Progress::default());
        let subscriber = {
            let mut state = lock(&progress.state);
            state.waiters = 1;
            events.map(|events| state.subscribe(id.clone(), events.clone()))
        };
        let job = Arc::new(Job {
            id: id.clone(),
            token: CancellationToken::new(),
            progress,
            outcome: rx,
            recipe: OnceLock::new(),
        });
        jobs.insert(id.digest().clone(), job.clone());
        drop(jobs);
        let span = tracing::info_span!(
            "vertex",
            name = id.name(),
            digest = %id.digest(),
            key = tracing::field::Empty,
        );
        let finish = Finish {
            inner: self.inner.clone(),
            job: job.clone(),
        };
        let (vertex, ignore_cache) = (node.vertex.clone(), node.ignore_cache);
        let task = async move {
            let outcome = run(&finish.inner, &finish.job, &vertex, ignore_cache, inputs).await;
            tx.send_replace(Some(Arc::new(outcome)));
            drop(finish);
        };
        tokio::spawn(task.instrument(span));
        Waiter { job, subscriber }
    }
}

fn solution<R: Clone>(
    graph: &Graph<R>,
    jobs: &[Arc<Job<R>>],
    outcomes: Vec<Option<Arc<Outcome<R>>>>,
) -> Solution<R> {
    let cancelled = || Arc::new(Outcome::stopped(VertexStatus::Cancelled));
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(cancelled))
        .collect();
    let results = graph.targets().iter().map(|&(i, output)| {
        let vertex = graph.node(i).vertex.id().clone();
        match (&outcomes[i].status, outcomes[i].outputs.get(output)) {
            (VertexStatus::Failed { error, .. }, _) => Err(error.clone()),
            (VertexStatus::Skipped { because, error }, _) => Err(SolveError::DependencyFailed {
                vertex,
                dependency: because.clone(),
                source: Arc::new(error.clone()),
            }),
            (_, Some(result)) => Ok(result.clone()),
            _ => Err(SolveError::Cancelled { vertex }),
        }
    });
    let report = graph.nodes().zip(jobs).zip(&outcomes);
    let report = report.map(|((node, job), outcome)| VertexReport {
        vertex: node.vertex.id().clone(),
        status: outcome.status.clone(),
        recipe: job.recipe.get().cloned(),
    });
    Solution {
        results: results.collect(),
        report: report.collect(),
    }
}

/// Runs one job: inputs, key, cache, op.
async fn run<R: Clone + Send + Sync + 'static>(
    inner: &Inner<R>,
    job: &Job<R>,
    vertex: &Vertex<R>,
    ignore_cache: bool,
    inputs: Vec<(Arc<Job<R>>, usize)>,
) -> Outcome<R> {
    let token = &job.token;
    let cancelled = || Outcome::stopped(VertexStatus::Cancelled);
    let gathered = try_join_all(inputs.iter().map(|(input, output)| async move {
        let outcome = input.wait().await;
        match (&outcome.status, outcome.outputs.get(*output), &outcome.key) {
            (_, Some(result), Some(key)) => Ok((result.clone(), key.clone(), *output)),
            (VertexStatus::Failed { error, .. }, ..) => Err(VertexStatus::Skipped {
                because: input.id.clone(),
                error: error.clone(),
            }),
            (skipped @ VertexStatus::Skipped { .. }, ..) => Err(skipped.clone()),
            _ => Err(VertexStatus::Cancelled),
        }
    }));
    let inputs = tokio::select! {
        gathered = gathered => match gathered {
            Ok(inputs) => inputs,
            Err(status) => return Outcome::stopped(status),
        },
        () = token.cancelled() => return cancelled(),
    };

    let start = Instant::now();
    let fail = |error| {
        let duration = start.elapsed();
        Outcome::stopped(VertexStatus::Failed { error, duration })
    };
    job.progress.start();
    let (id, op, expected) = (vertex.id(), vertex.op(), vertex.outputs());
    let mut ctx = ExecContext::for_job(id.clone(), token.clone(), job.progress.clone());
    let content = match op.content_digest(&ctx).await {
        Ok(content) => content,
        Err(_) if token.is_cancelled() => return cancelled(),
        Err(e) => {
            let (vertex, source) = (id.clone(), e.into());
            return fail(SolveError::ContentDigest { vertex, source });
        }
    };
    let mut recipe = KeyRecipe::new(vertex.description().clone()).content(content);
    let mut values = Vec::with_capacity(inputs.len());
    for (value, key, output) in inputs {
        recipe = recipe.input(key, output);
        values.push(value);
    }
    let key = recipe.key();
    tracing::Span::current().record("key", tracing::field::display(&key));
    job.progress.emit(&EventKind::Keyed {
        recipe: recipe.clone(),
    });
    let _ = job.recipe.set(recipe);
    ctx.set_key(key.clone());
    let done = |outputs, cached| {
        let duration = start.elapsed();
        let status = match cached {
            true => VertexStatus::Cached { duration },
            false => VertexStatus::Completed { duration },
        };
        let key = Some(key.clone());
        Outcome {
            status,
            outputs,
            key,
        }
    };
    let miscount = |got| {
        let vertex = id.clone();
        SolveError::OutputCount {
            vertex,
            expected,
            got,
        }
    };

    let cacheable = op.cacheable();
    if cacheable && !ignore_cache {
        match inner.cache.load(&key).await {
            Ok(Some(outputs)) if outputs.len() == expected => {
                tracing::debug!("cache hit");
                return done(outputs, true);
            }
            Ok(Some(outputs)) => return fail(miscount(outputs.len())),
            Ok(None) => {}
            Err(e) => {
                let (vertex, key, source) = (id.clone(), key.clone(), e.into());
                return fail(SolveError::CacheLoad {
                    vertex,
                    key,
                    source,
                });
            }
        }
    }

    let permit = tokio::select! {
        permit = inner.permits.acquire() => permit,
        () = token.cancelled() => return cancelled(),
    };
    tracing::debug!("running");
    let result = op.exec(&ctx, values).await;
    drop(permit);
    let outputs = match result {
        Ok(outputs) if outputs.len() != expected => return fail(miscount(outputs.len())),
        Ok(outputs) => outputs,
        Err(_) if token.is_cancelled() => return cancelled(),
        Err(e) => {
            tracing::debug!(error = %e, "failed");
            let (vertex, source) = (id.clone(), e.into());
            return fail(SolveError::Op { vertex, source });
        }
    };
    if cacheable {
        if let Err(e) = inner.cache.save(&key, &outputs).await {
            let (vertex, key, source) = (id.clone(), key.clone(), e.into());
            return fail(SolveError::CacheSave {
                vertex,
                key,
                source,
            });
        }
    }
    done(outputs, false)
}
