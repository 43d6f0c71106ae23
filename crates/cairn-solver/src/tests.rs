//! Scheduler tests: they count exactly which ops ran and which vertices hit the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_oci::Digest;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_util::sync::CancellationToken;

use crate::*;

/// Ops currently in `exec`, and the most there ever were.
#[derive(Default)]
struct Probe {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[derive(Clone, Default)]
struct TestOp {
    label: String,
    version: String,
    runs: Arc<AtomicUsize>,
    probe: Arc<Probe>,
    delay: Duration,
    fail: bool,
    content: Option<Digest>,
    /// Wait (up to 5 s) until this many ops are in `exec` at once.
    peers: usize,
    /// Run until cancelled, then set the flag.
    until_cancelled: Option<Arc<AtomicBool>>,
    /// Wait until this token fires.
    gate: Option<CancellationToken>,
    uncacheable: bool,
}

impl Op<String> for TestOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("test")
            .field("label", &self.label)
            .field("version", &self.version)
    }

    fn cacheable(&self) -> bool {
        !self.uncacheable
    }

    fn content_digest<'a>(
        &'a self,
        _: &'a ExecContext,
    ) -> BoxFuture<'a, Result<Option<Digest>, OpError>> {
        Box::pin(async move { Ok(self.content.clone()) })
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, OpError>> {
        Box::pin(async move {
            self.runs.fetch_add(1, SeqCst);
            let now = self.probe.now.fetch_add(1, SeqCst) + 1;
            self.probe.max.fetch_max(now, SeqCst);
            let result = self.work(ctx, inputs).await;
            self.probe.now.fetch_sub(1, SeqCst);
            result
        })
    }
}

impl TestOp {
    async fn work(&self, ctx: &ExecContext, inputs: Vec<String>) -> Result<Vec<String>, OpError> {
        for _ in 0..1000 {
            if self.probe.now.load(SeqCst) >= self.peers {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(gate) = &self.gate {
            gate.cancelled().await;
        }
        if let Some(flag) = &self.until_cancelled {
            tokio::select! {
                () = ctx.cancellation().cancelled() => {
                    flag.store(true, SeqCst);
                    return Err("stopped".into());
                }
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
        tokio::time::sleep(self.delay).await;
        ctx.log(LogStream::Stdout, format!("{} ran", self.label));
        if self.fail {
            return Err(format!("{} broke", self.label).into());
        }
        Ok(vec![format!("{}({})", self.label, inputs.join(","))])
    }
}

/// Hands out test ops whose run counters survive rebuilding the graph.
#[derive(Default)]
struct Lab {
    runs: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    probe: Arc<Probe>,
}

impl Lab {
    fn op(&self, label: &str) -> TestOp {
        let mut runs = self.runs.lock().unwrap();
        TestOp {
            label: label.into(),
            runs: runs.entry(label.into()).or_default().clone(),
            probe: self.probe.clone(),
            ..TestOp::default()
        }
    }

    fn runs(&self, label: &str) -> usize {
        self.runs.lock().unwrap()[label].load(SeqCst)
    }
}

fn v(op: TestOp, inputs: &[&Vertex<String>]) -> Vertex<String> {
    let options = VertexOptions::new(op.label.clone());
    Vertex::new(
        Arc::new(op),
        inputs.iter().map(|v| v.edge()).collect(),
        options,
    )
}

fn solver(parallelism: usize) -> Solver<String> {
    Solver::with_parallelism(Arc::new(MemoryCache::new()), parallelism)
}

fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn names(ids: Vec<&VertexId>) -> Vec<&str> {
    let mut names: Vec<_> = ids.into_iter().map(|id| id.name()).collect();
    names.sort_unstable();
    names
}

fn status<'a>(s: &'a Solution<String>, v: &Vertex<String>) -> &'a VertexStatus {
    s.status(v.digest()).unwrap()
}

/// a1 → b, a2 → c, (b, c) → d
fn two_legs(lab: &Lab, a1: TestOp) -> Vertex<String> {
    let (a1, a2) = (v(a1, &[]), v(lab.op("a2"), &[]));
    let (b, c) = (v(lab.op("b"), &[&a1]), v(lab.op("c"), &[&a2]));
    v(lab.op("d"), &[&b, &c])
}

#[tokio::test]
async fn diamond_runs_each_vertex_once_then_hits_the_cache() {
    let lab = Lab::default();
    // Two separately built but identical roots: one vertex.
    let (a, a_again) = (v(lab.op("a"), &[]), v(lab.op("a"), &[]));
    let (b, c) = (v(lab.op("b"), &[&a]), v(lab.op("c"), &[&a_again]));
    let d = v(lab.op("d"), &[&b, &c]);
    assert_eq!(Graph::from_targets([&d.edge()]).len(), 4);

    let solver = solver(4);
    let (tx, mut rx) = unbounded_channel();
    let first = solver
        .solve(&[d.edge()], SolveOptions::new().events(tx.clone()))
        .await;
    assert_eq!(first.results()[0].as_ref().unwrap(), "d(b(a()),c(a()))");
    for label in ["a", "b", "c", "d"] {
        assert_eq!(lab.runs(label), 1, "{label}");
    }
    assert_eq!(names(first.executed()), ["a", "b", "c", "d"]);
    let events = drain(&mut rx);
    for label in ["a", "b", "c", "d"] {
        let mine: Vec<_> = events.iter().filter(|e| e.vertex.name() == label).collect();
        assert!(matches!(mine[0].kind, EventKind::Started), "{label}");
        let EventKind::Keyed { recipe } = &mine[1].kind else {
            panic!("{label}: {:?}", mine[1])
        };
        let report = first.report().iter().find(|r| r.vertex.name() == label);
        assert_eq!(Some(recipe), report.unwrap().recipe.as_ref(), "{label}");
        assert!(
            matches!(mine[3].kind, EventKind::Completed { .. }),
            "{label}"
        );
        let EventKind::Log { bytes, .. } = &mine[2].kind else {
            panic!("{label}: {:?}", mine[2])
        };
        assert_eq!(&bytes[..], format!("{label} ran").as_bytes());
    }

    let second = solver
        .solve(&[d.edge()], SolveOptions::new().events(tx))
        .await;
    assert_eq!(second.results()[0].as_ref().unwrap(), "d(b(a()),c(a()))");
    for label in ["a", "b", "c", "d"] {
        assert_eq!(lab.runs(label), 1, "{label}");
    }
    assert!(second.executed().is_empty());
    assert_eq!(names(second.cached()), ["a", "b", "c", "d"]);
    let ends = drain(&mut rx)
        .into_iter()
        .filter(|e| !matches!(e.kind, EventKind::Started | EventKind::Keyed { .. }));
    assert!(ends
        .map(|e| e.kind)
        .all(|k| matches!(k, EventKind::Cached { .. })));
}

async fn rerun_after_changing_a1(changed: TestOp, lab: &Lab) {
    let solver = solver(4);
    let before = two_legs(lab, lab.op("a1"));
    solver.solve(&[before.edge()], SolveOptions::new()).await;
    let after = two_legs(lab, changed);
    let again = solver.solve(&[after.edge()], SolveOptions::new()).await;
    assert!(again.results()[0].is_ok());
    assert_eq!(names(again.executed()), ["a1", "b", "d"]);
    assert_eq!(names(again.cached()), ["a2", "c"]);
    let runs: Vec<_> = ["a1", "a2", "b", "c", "d"].map(|l| lab.runs(l)).into();
    assert_eq!(runs, [2, 1, 2, 1, 2]);

    // --explain: d's key changed through its first input.
    let recipe = |s: &Solution<String>| s.report().last().unwrap().recipe.clone().unwrap();
    let old = solver.solve(&[before.edge()], SolveOptions::new()).await;
    assert!(old.executed().is_empty());
    let changed = recipe(&again).explain();
    assert_eq!(changed.changed(&recipe(&old).explain()), ["input:0"]);
}

#[tokio::test]
async fn changed_description_reruns_the_leaf_and_its_dependents() {
    let lab = Lab::default();
    let a1 = TestOp {
        version: "2".into(),
        ..lab.op("a1")
    };
    rerun_after_changing_a1(a1, &lab).await;
}

#[tokio::test]
async fn changed_content_digest_reruns_the_leaf_and_its_dependents() {
    let lab = Lab::default();
    let a1 = TestOp {
        content: Some(Digest::sha256_of(b"edited")),
        ..lab.op("a1")
    };
    rerun_after_changing_a1(a1, &lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelism_is_a_ceiling() {
    let lab = Lab::default();
    // Each waits (5 s at most) until two run: the max reaches the ceiling whatever the timing.
    let ops = (0..6).map(|i| TestOp {
        peers: 2,
        delay: Duration::from_millis(50),
        ..lab.op(&format!("v{i}"))
    });
    let targets: Vec<_> = ops.map(|op| v(op, &[]).edge()).collect();
    let solution = solver(2).solve(&targets, SolveOptions::new()).await;
    assert_eq!(solution.executed().len(), 6);
    assert_eq!(lab.probe.max.load(SeqCst), 2);
}

#[tokio::test]
async fn independent_vertices_overlap() {
    let lab = Lab::default();
    // Each waits until both are running: without overlap, the max stays 1.
    let op = |l| TestOp {
        peers: 2,
        delay: Duration::from_millis(100),
        ..lab.op(l)
    };
    let targets = [v(op("x"), &[]).edge(), v(op("y"), &[]).edge()];
    let solution = solver(4).solve(&targets, SolveOptions::new()).await;
    assert_eq!(solution.executed().len(), 2);
    assert_eq!(lab.probe.max.load(SeqCst), 2);
}

#[tokio::test]
async fn failure_skips_dependents_and_lets_independent_vertices_finish() {
    let lab = Lab::default();
    let a = v(
        TestOp {
            fail: true,
            ..lab.op("a")
        },
        &[],
    );
    let b = v(lab.op("b"), &[&a]);
    let d = v(lab.op("d"), &[&b]);
    let slow = TestOp {
        delay: Duration::from_millis(50),
        ..lab.op("c")
    };
    let c = v(slow, &[]);
    let solution = solver(4)
        .solve(&[d.edge(), c.edge()], SolveOptions::new())
        .await;

    let Err(e) = &solution.results()[0] else {
        panic!()
    };
    assert_eq!(e.kind(), ErrorKind::DependencyFailed);
    let SolveError::DependencyFailed {
        dependency, source, ..
    } = e
    else {
        panic!()
    };
    assert_eq!((e.vertex().name(), dependency.name()), ("d", "a"));
    assert_eq!(source.kind(), ErrorKind::Op);
    assert_eq!(solution.results()[1].as_ref().unwrap(), "c()");
    assert!(matches!(status(&solution, &a), VertexStatus::Failed { .. }));
    for skipped in [&b, &d] {
        let VertexStatus::Skipped { because, .. } = status(&solution, skipped) else {
            panic!()
        };
        assert_eq!(because, a.id());
    }
    let runs: Vec<_> = ["a", "b", "c", "d"].map(|l| lab.runs(l)).into();
    assert_eq!(runs, [1, 0, 1, 0]);
}

#[tokio::test]
async fn fail_fast_cancels_a_running_independent_vertex() {
    let lab = Lab::default();
    let stopped = Arc::new(AtomicBool::new(false));
    let long = TestOp {
        until_cancelled: Some(stopped.clone()),
        ..lab.op("long")
    };
    let failing = TestOp {
        fail: true,
        peers: 2,
        ..lab.op("failing")
    };
    let (long, failing) = (v(long, &[]), v(failing, &[]));
    let options = SolveOptions::new().fail_fast(true);
    let solution = solver(4)
        .solve(&[long.edge(), failing.edge()], options)
        .await;
    assert!(stopped.load(SeqCst), "the op saw the cancellation");
    assert!(matches!(status(&solution, &long), VertexStatus::Cancelled));
    assert!(matches!(
        status(&solution, &failing),
        VertexStatus::Failed { .. }
    ));
    let kinds: Vec<_> = solution
        .results()
        .iter()
        .map(|r| r.as_ref().unwrap_err().kind())
        .collect();
    assert_eq!(kinds, [ErrorKind::Cancelled, ErrorKind::Op]);
}

#[tokio::test]
async fn external_cancellation_stops_the_op_and_its_dependents() {
    let lab = Arc::new(Lab::default());
    let stopped = Arc::new(AtomicBool::new(false));
    let long = TestOp {
        until_cancelled: Some(stopped.clone()),
        ..lab.op("long")
    };
    let long = v(long, &[]);
    let next = v(lab.op("next"), &[&long]);
    let token = CancellationToken::new();
    let options = SolveOptions::new().cancel(token.clone());
    let task = tokio::spawn({
        let (solver, next) = (solver(4), next.clone());
        async move { solver.solve(&[next.edge()], options).await }
    });
    while lab.runs("long") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel();
    let solution = task.await.unwrap();
    assert!(stopped.load(SeqCst));
    assert!(matches!(status(&solution, &long), VertexStatus::Cancelled));
    assert!(matches!(status(&solution, &next), VertexStatus::Cancelled));
    assert_eq!(lab.runs("next"), 0);
    let error = solution.results()[0].as_ref().unwrap_err();
    assert_eq!(
        (error.kind(), error.vertex().name()),
        (ErrorKind::Cancelled, "next")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_solves_share_a_vertex() {
    let lab = Lab::default();
    let gate = CancellationToken::new();
    // Not cacheable: only in-flight sharing can keep it from running twice.
    let shared = TestOp {
        gate: Some(gate.clone()),
        uncacheable: true,
        ..lab.op("shared")
    };
    let shared = v(shared, &[]);
    let (x, y) = (v(lab.op("x"), &[&shared]), v(lab.op("y"), &[&shared]));
    let solver = solver(4);
    let mut receivers = Vec::new();
    let tasks: Vec<_> = [x, y]
        .into_iter()
        .map(|target| {
            let (tx, rx) = unbounded_channel();
            receivers.push(rx);
            let solver = solver.clone();
            let options = SolveOptions::new().events(tx);
            tokio::spawn(async move { solver.solve(&[target.edge()], options).await })
        })
        .collect();
    // Both solves are watching the shared vertex before it may finish.
    for rx in &mut receivers {
        let started = async {
            while let Some(event) = rx.recv().await {
                if event.vertex.name() == "shared" && matches!(event.kind, EventKind::Started) {
                    break;
                }
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), started).await;
        waited.expect("both solves start the shared vertex");
    }
    gate.cancel();
    let mut results = Vec::new();
    for task in tasks {
        let solution = task.await.unwrap();
        results.push(solution.into_results().remove(0).unwrap());
    }
    assert_eq!(results, ["x(shared())", "y(shared())"]);
    let runs: Vec<_> = ["shared", "x", "y"].map(|l| lab.runs(l)).into();
    assert_eq!(runs, [1, 1, 1]);
}
