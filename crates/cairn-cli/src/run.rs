//! `cairn run`: a pipeline file mapped one-to-one onto the engine's API and solved at once.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_engine::{
    CacheSharing, CacheVolume, CancellationToken, Container, Engine, Event, EventKind, KeyLog,
    LogStream, Network, Secret, SolveOptions, StepFingerprint, VertexId,
};
use cairn_pipeline::{Command, Input, Pipeline, SecretSource, SecretTarget, StepSource};
use clap::{Args, ValueEnum};
use tokio::sync::mpsc;

use crate::tty::{self, TtyView};

/// `cairn run` options.
#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file.
    file: PathBuf,
    /// Run only this step and what it needs (repeatable; default: every step).
    #[arg(long = "step", value_name = "NAME")]
    steps: Vec<String>,
    /// Run every step even when its result is cached.
    #[arg(long)]
    no_cache: bool,
    /// How progress is shown: a live view of the running steps on a terminal, plain lines
    /// prefixed with the step, or one JSON object a line.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// For every step that ran, say why its cache missed: what changed since its last run.
    #[arg(long)]
    explain: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// `tty` when standard error is a terminal, else `plain`.
    Auto,
    /// A live view of the running steps and their last log lines, redrawn in place.
    Tty,
    /// `[step] line`.
    Plain,
    /// One JSON object per line on stdout.
    Json,
}

/// Loads the pipeline, solves the wanted steps in one solve, then runs the exports.
pub async fn run(options: cairn_images::StoreOptions, args: RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::from_file(&args.file)?;
    let order = pipeline.order(&args.steps)?;
    let engine = Engine::open(options).await?.ignore_cache(args.no_cache);

    let mut secrets: HashMap<&str, Secret> = HashMap::new();
    let mut containers: BTreeMap<String, Container> = BTreeMap::new();
    for step in &order {
        let name = step.name.as_str();
        let mut c = match &step.source {
            StepSource::Image(reference) => engine.container().with_name(name).from(reference),
            StepSource::From(other) => containers[other].with_name(name),
        };
        for (k, v) in &step.env {
            c = c.with_env_variable(k, v);
        }
        if let Some(w) = &step.workdir {
            c = c.with_workdir(w);
        }
        if let Some(u) = &step.user {
            c = c.with_user(u);
        }
        c = c.with_network(match step.network {
            cairn_pipeline::Network::Host => Network::Host,
            cairn_pipeline::Network::None => Network::None,
        });
        for input in &step.inputs {
            c = match input {
                Input::Host {
                    path,
                    to,
                    include,
                    exclude,
                } => {
                    let dir = engine.host().directory(path);
                    let dir = dir.with_include(include.iter().cloned());
                    let dir = dir.with_exclude(exclude.iter().cloned()).with_name(name);
                    c.with_directory(to, &dir)
                }
                Input::Step { step, path, to } => {
                    c.with_directory(to, &containers[step].directory(path.clone()))
                }
            };
        }
        for cache in &step.caches {
            let sharing = match cache.sharing {
                cairn_pipeline::CacheSharing::Shared => CacheSharing::Shared,
                cairn_pipeline::CacheSharing::Private => CacheSharing::Private,
                cairn_pipeline::CacheSharing::Locked => CacheSharing::Locked,
            };
            c = c.with_mounted_cache_sharing(&cache.to, &CacheVolume::new(&cache.name), sharing);
        }
        for use_ in &step.secrets {
            if !secrets.contains_key(use_.name.as_str()) {
                let secret = match &pipeline.secrets[&use_.name] {
                    SecretSource::Env(var) => Secret::from_env(&use_.name, var),
                    SecretSource::File(path) => Secret::from_file(&use_.name, path),
                }
                .with_context(|| format!("step {name:?}"))?;
                secrets.insert(use_.name.as_str(), secret);
            }
            let secret = &secrets[use_.name.as_str()];
            c = match &use_.target {
                SecretTarget::Env(var) => c.with_secret_variable(var, secret),
                SecretTarget::File(path) => c.with_mounted_secret(path, secret),
            };
        }
        c = match &step.run {
            Some(Command::Shell(line)) => {
                c.with_exec(["/bin/sh".to_owned(), "-c".into(), line.clone()])
            }
            Some(Command::Argv(argv)) => c.with_exec(argv.iter().cloned()),
            None => c,
        };
        // Image configuration for `publish`: not part of any cache key.
        if let Some(entrypoint) = &step.entrypoint {
            c = c.with_entrypoint(entrypoint.iter().cloned());
        }
        if let Some(cmd) = &step.cmd {
            c = c.with_default_args(cmd.iter().cloned());
        }
        for (k, v) in &step.labels {
            c = c.with_label(k, v);
        }
        containers.insert(step.name.clone(), c);
    }

    let names: Vec<&str> = order.iter().map(|s| s.name.as_str()).collect();
    let targets: Vec<Container> = names.iter().map(|n| containers[*n].clone()).collect();
    let file = std::path::absolute(&args.file).unwrap_or_else(|_| args.file.clone());
    let file = file.canonicalize().unwrap_or(file);
    let history = engine.step_history(file.display().to_string())?;
    let mut explainer = Explainer::new(&containers, &names, &file);
    explainer.no_cache = args.no_cache;
    if args.explain {
        // Only runs that explain pay for listing host files; one without leaves the next
        // explanation naming the directory alone.
        explainer.log = KeyLog::new().list_files(true);
        let mut last = HashMap::new();
        for name in &names {
            last.insert((*name).to_owned(), history.last(name)?);
        }
        explainer.last = Some(last);
    }
    let mode = match args.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
        ProgressMode::Auto => ProgressMode::Plain,
        mode => mode,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_progress(rx, mode, explainer));
    // Ctrl-C, SIGTERM or SIGHUP cancel the solve: running steps are stopped and cleaned up.
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let watcher = tokio::spawn(async move {
        crate::exec::stop_requested().await;
        on_signal.cancel();
    });
    let options = SolveOptions::new().events(tx).cancel(cancel);
    let results = engine.sync_all(&targets, options).await;
    watcher.abort();
    let explainer = printer.await.context("progress display")?;

    // The next run compares with this one's succeeded steps.
    let succeeded = names.iter().filter_map(|name| {
        let ok = matches!(
            explainer.outcomes.get(*name),
            Some(StepOutcome::Ran | StepOutcome::Cached)
        );
        let fingerprint = explainer.fingerprints.get(*name).filter(|_| ok)?;
        Some((*name, fingerprint))
    });
    if let Err(e) = history.record(succeeded) {
        tracing::warn!("could not record the steps for --explain: {e}");
    }
    if args.explain && mode != ProgressMode::Json {
        for name in &names {
            let ran = match explainer.outcomes.get(*name) {
                Some(StepOutcome::Ran) => "ran",
                Some(StepOutcome::Failed) => "ran and failed",
                _ => continue,
            };
            let reasons = explainer.reasons.get(*name).map(|r| r.join("; "));
            let reasons = reasons.unwrap_or_else(|| "its inputs could not be keyed".into());
            eprintln!("{name}: {ran}: {reasons}");
        }
    }

    let mut failed = false;
    let mut ok = HashMap::new();
    for (name, result) in names.iter().zip(&results) {
        match result {
            Ok(_) => {
                ok.insert(*name, ());
            }
            Err(e) => {
                failed = true;
                let root = root_solve_error(e);
                match root {
                    Some(cairn_engine::SolveError::DependencyFailed { dependency, .. }) => {
                        eprintln!(
                            "cairn: step {name:?} was not run: its dependency {:?} failed",
                            dependency.name()
                        );
                    }
                    _ => eprintln!("cairn: step {name:?} failed: {}", chain(e)),
                }
            }
        }
    }
    for export in &pipeline.exports {
        if !ok.contains_key(export.step.as_str()) {
            continue;
        }
        let dir = containers[&export.step].directory(export.path.clone());
        dir.export(&export.to).await.with_context(|| {
            format!(
                "export {}:{} to {}",
                export.step,
                export.path,
                export.to.display()
            )
        })?;
        if args.progress != ProgressMode::Json {
            eprintln!(
                "[{}] exported {} to {}",
                export.step,
                export.path,
                export.to.display()
            );
        }
    }
    for step in &order {
        let Some(reference) = &step.publish else {
            continue;
        };
        if !ok.contains_key(step.name.as_str()) {
            continue;
        }
        let published = containers[&step.name]
            .publish_with(reference, &cairn_engine::CommitOptions::default())
            .await
            .with_context(|| format!("step {:?}: publish {reference}", step.name))?;
        if args.progress == ProgressMode::Json {
            let mut line = push_json(&published.push);
            line["step"] = serde_json::json!(step.name);
            line["reference"] = serde_json::json!(published.image.reference);
            println!("{line}");
        } else {
            eprintln!(
                "[{}] published {}@{}: {}",
                step.name,
                published.image.reference,
                published.push.digest,
                push_summary(&published.push)
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn root_solve_error(e: &cairn_engine::EngineError) -> Option<&cairn_engine::SolveError> {
    match e {
        cairn_engine::EngineError::Solve(s) => Some(s),
        _ => None,
    }
}

/// The error and its causes, each cause the message before it does not already include.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        let t = e.to_string();
        if !text.contains(&t) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&t);
        }
        cause = e.source();
    }
    text
}

/// How a step's result vertex ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepOutcome {
    Ran,
    Cached,
    Failed,
}

/// Why each step ran, worked out when its result vertex gets its key, and how each step ended.
struct Explainer {
    log: KeyLog,
    /// The steps in pipeline order.
    order: Vec<String>,
    steps: BTreeMap<String, Container>,
    /// Each step's result vertex, by digest (steps that add nothing share their base's).
    tops: HashMap<cairn_oci::Digest, Vec<String>>,
    /// The pipeline file: host directories are named relative to its directory.
    base: PathBuf,
    no_cache: bool,
    /// The last successful run's fingerprint of each step, when `--explain` asked for reasons.
    last: Option<HashMap<String, Option<StepFingerprint>>>,
    fingerprints: HashMap<String, StepFingerprint>,
    reasons: HashMap<String, Vec<String>>,
    outcomes: HashMap<String, StepOutcome>,
}

impl Explainer {
    fn new(containers: &BTreeMap<String, Container>, names: &[&str], file: &Path) -> Self {
        let mut tops: HashMap<_, Vec<String>> = HashMap::new();
        let mut steps = BTreeMap::new();
        for name in names {
            let container = containers[*name].clone();
            if let Some(id) = container.vertex_id() {
                tops.entry(id.digest().clone())
                    .or_default()
                    .push((*name).to_owned());
            }
            steps.insert((*name).to_owned(), container);
        }
        Explainer {
            log: KeyLog::new(),
            order: names.iter().map(|n| (*n).to_owned()).collect(),
            steps,
            tops,
            base: file.parent().map(Path::to_owned).unwrap_or_default(),
            no_cache: false,
            last: None,
            fingerprints: HashMap::new(),
            reasons: HashMap::new(),
            outcomes: HashMap::new(),
        }
    }

    /// The steps whose result vertex `v` is.
    fn steps_of(&self, v: &VertexId) -> Vec<String> {
        let names = self.tops.get(v.digest()).into_iter().flatten();
        names.filter(|n| n.as_str() == v.name()).cloned().collect()
    }

    fn observe(&mut self, event: &Event) {
        let v = &event.vertex;
        let keyed = self.log.observe(event);
        let steps = self.steps_of(v);
        if steps.is_empty() {
            return;
        }
        for name in steps {
            if keyed {
                let container = &self.steps[&name];
                let Some(fingerprint) = self.log.fingerprint(&name, container, &self.base) else {
                    continue;
                };
                if let Some(last) = &self.last {
                    let reasons = match self.no_cache {
                        true => vec!["--no-cache".to_owned()],
                        false => {
                            let earlier = last.get(&name).and_then(Option::as_ref);
                            let changes = fingerprint.changes(earlier);
                            match changes.is_empty() {
                                true => vec!["nothing changed since its last successful run, \
                                     but its cached result is gone"
                                    .to_owned()],
                                false => changes,
                            }
                        }
                    };
                    self.reasons.insert(name.clone(), reasons);
                }
                self.fingerprints.insert(name.clone(), fingerprint);
            }
            let outcome = match &event.kind {
                EventKind::Completed { .. } => StepOutcome::Ran,
                EventKind::Cached { .. } => StepOutcome::Cached,
                EventKind::Failed { .. } => StepOutcome::Failed,
                _ => continue,
            };
            self.outcomes.insert(name, outcome);
        }
    }

    /// Why the step whose result vertex `v` is ran, for `--explain` in JSON.
    fn reasons_for(&self, v: &VertexId) -> Option<&Vec<String>> {
        self.steps_of(v).first().and_then(|n| self.reasons.get(n))
    }
}

/// How long a vertex may sit between `Started` and its next event before `started` is shown:
/// a cache hit comes within it and is shown as `cached` alone.
const STARTED_DELAY: Duration = Duration::from_millis(1000);

async fn print_progress(
    rx: mpsc::UnboundedReceiver<Event>,
    mode: ProgressMode,
    explainer: Explainer,
) -> Explainer {
    match mode {
        ProgressMode::Tty => print_tty(rx, explainer).await,
        _ => print_lines(rx, mode == ProgressMode::Json, explainer).await,
    }
}

async fn print_tty(mut rx: mpsc::UnboundedReceiver<Event>, mut explainer: Explainer) -> Explainer {
    let steps: Vec<(String, Option<VertexId>)> = explainer
        .order
        .iter()
        .map(|name| (name.clone(), explainer.steps[name].vertex_id().cloned()))
        .collect();
    let mut view = TtyView::new(&steps);
    let mut tick = tokio::time::interval(tty::FRAME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => {
                    explainer.observe(&e);
                    view.event(&e);
                }
                None => break,
            },
            _ = tick.tick() => view.draw(),
        }
    }
    view.finish();
    explainer
}

async fn print_lines(
    mut rx: mpsc::UnboundedReceiver<Event>,
    json: bool,
    mut explainer: Explainer,
) -> Explainer {
    let mut pending: HashMap<VertexId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = tick.tick() => {
                let due: Vec<_> = pending
                    .iter()
                    .filter(|(_, t)| t.elapsed() >= STARTED_DELAY)
                    .map(|(v, _)| v.clone())
                    .collect();
                for v in due {
                    pending.remove(&v);
                    emit_started(json, &v, explainer.reasons_for(&v));
                }
                continue;
            }
        };
        explainer.observe(&event);
        let v = &event.vertex;
        // `Keyed` comes between `Started` and the cache lookup: not a sign the step runs.
        let keyed = matches!(event.kind, EventKind::Keyed { .. });
        let was_pending = !keyed && pending.remove(v).is_some();
        let show_started = |json| {
            if was_pending {
                emit_started(json, v, explainer.reasons_for(v));
            }
        };
        match &event.kind {
            EventKind::Started => {
                pending.insert(v.clone(), Instant::now());
            }
            EventKind::Cached { duration } => emit(json, v, "cached", Some(*duration), None),
            EventKind::Completed { duration } => {
                show_started(json);
                emit(json, v, "completed", Some(*duration), None);
            }
            EventKind::Failed { error, duration } => {
                show_started(json);
                emit(
                    json,
                    v,
                    "failed",
                    Some(*duration),
                    Some(("error", chain(error))),
                );
            }
            EventKind::Skipped { because } => {
                let why = format!("dependency {:?} failed", because.name());
                emit(json, v, "skipped", None, Some(("reason", why)));
            }
            EventKind::Cancelled => emit(json, v, "cancelled", None, None),
            EventKind::Log { stream, bytes } => {
                show_started(json);
                let text = String::from_utf8_lossy(bytes);
                let stream = match stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                };
                if json {
                    let line = serde_json::json!({
                        "step": v.name(), "vertex": v.digest().short(), "event": "log",
                        "stream": stream, "data": text,
                    });
                    println!("{line}");
                } else {
                    let mut out = std::io::stdout().lock();
                    for line in text.lines() {
                        let _ = writeln!(out, "[{}] {line}", v.name());
                    }
                }
            }
            _ => {}
        }
    }
    explainer
}

/// `started`, with the reasons the step ran when `--explain` asked for them (JSON only: the
/// plain view lists them at the end).
fn emit_started(json: bool, v: &VertexId, reasons: Option<&Vec<String>>) {
    if json && reasons.is_some() {
        let line = serde_json::json!({
            "step": v.name(), "vertex": v.digest().short(), "event": "started",
            "explain": reasons,
        });
        println!("{line}");
    } else {
        emit(json, v, "started", None, None);
    }
}

fn emit(
    json: bool,
    v: &VertexId,
    event: &str,
    duration: Option<Duration>,
    extra: Option<(&str, String)>,
) {
    if json {
        let mut line = serde_json::json!({
            "step": v.name(), "vertex": v.digest().short(), "event": event,
        });
        if let Some(d) = duration {
            line["duration_ms"] = serde_json::json!(d.as_millis() as u64);
        }
        if let Some((k, text)) = extra {
            line[k] = serde_json::json!(text);
        }
        println!("{line}");
    } else {
        let mut text = format!("[{}] {event}", v.name());
        if let Some(d) = duration {
            text.push_str(&format!(" ({:.1}s)", d.as_secs_f64()));
        }
        if let Some((_, extra)) = extra {
            text.push_str(&format!(": {extra}"));
        }
        eprintln!("{text}");
    }
}

/// What a push moved, in one line for people.
pub fn push_summary(report: &cairn_images::PushReport) -> String {
    format!(
        "{} blob(s) uploaded ({}), {} already there, {} mounted",
        report.uploaded.len(),
        crate::progress::human_bytes(report.uploaded_bytes()),
        report.skipped.len(),
        report.mounted.len()
    )
}

/// What a push moved, as JSON.
pub fn push_json(report: &cairn_images::PushReport) -> serde_json::Value {
    serde_json::json!({
        "digest": report.digest,
        "uploaded": report.uploaded.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        "uploaded_bytes": report.uploaded_bytes(),
        "skipped": report.skipped,
        "mounted": report.mounted.iter().map(|(d, from)| serde_json::json!({"digest": d, "from": from})).collect::<Vec<_>>(),
    })
}
