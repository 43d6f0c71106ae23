//! `cairn run`: a pipeline file mapped one-to-one onto the engine's API and solved at once.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_engine::{
    CacheSharing, CacheVolume, CancellationToken, Container, Engine, EventKind, LogStream, Network,
    Secret, SolveOptions,
};
use cairn_pipeline::{Command, Input, Pipeline, SecretSource, SecretTarget, StepSource};
use clap::{Args, ValueEnum};
use tokio::sync::mpsc;

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
    /// How progress is shown: plain lines prefixed with the step, or one JSON object a line.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// Plain for now (a terminal view comes later).
    Auto,
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
    let (tx, rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(print_progress(rx, args.progress == ProgressMode::Json));
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
    let _ = printer.await;

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

/// How long a vertex may sit between `Started` and its next event before `started` is shown:
/// a cache hit comes within it and is shown as `cached` alone.
const STARTED_DELAY: Duration = Duration::from_millis(1000);

async fn print_progress(mut rx: mpsc::UnboundedReceiver<cairn_engine::Event>, json: bool) {
    let mut pending: HashMap<cairn_engine::VertexId, Instant> = HashMap::new();
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
                    emit(json, &v, "started", None, None);
                }
                continue;
            }
        };
        let v = &event.vertex;
        let was_pending = pending.remove(v).is_some();
        let show_started = |json| {
            if was_pending {
                emit(json, v, "started", None, None);
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
}

fn emit(
    json: bool,
    v: &cairn_engine::VertexId,
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
