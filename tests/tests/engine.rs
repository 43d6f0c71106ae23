//! The embedding API end to end, as root: a container built from an image, a filtered host
//! directory, environment, working directory and a mounted secret; its output, an exported
//! directory and its digest; a failing exec.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cairn_e2e::{cairn_bin, fixtures, Scratch};
use cairn_engine::{Engine, ErrorKind, Secret};
use cairn_images::{HelperProgram, StoreOptions};

fn engine(scratch: &Scratch) -> (Engine, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut options = StoreOptions::new(scratch.path.join("store"));
    // The test binary does not call cairn_images::init: the cairn binary is the helper.
    options.helper = HelperProgram::Path(cairn_bin());
    let engine = rt.block_on(Engine::open(options)).unwrap();
    (engine, rt)
}

#[test]
fn container_api_runs_exports_and_masks_secrets() {
    let scratch = Scratch::new("engine");
    let (engine, rt) = engine(&scratch);
    let src = scratch.path.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a\n").unwrap();
    fs::write(src.join("b.log"), "log\n").unwrap();
    let dir = engine.host().directory(&src).with_exclude(["*.log"]);
    let secret = Secret::new("tok", "api-secret-value");
    let c = engine
        .container()
        .from(fixtures().image("busybox:latest"))
        .with_env_variable("GREETING", "hi")
        .with_workdir("/work")
        .with_directory("/work", &dir)
        .with_mounted_secret("/run/s", &secret)
        .with_exec([
            "sh",
            "-c",
            "echo $GREETING; ls; cat /run/s; echo; pwd; mkdir -p /o && echo out > /o/f",
        ]);
    rt.block_on(async {
        assert_eq!(c.stdout().await.unwrap(), "hi\na.txt\n***\n/work\n");
        assert_eq!(c.exit_code().await.unwrap(), Some(0));
        let exported = scratch.path.join("exported");
        c.directory("/o").export(&exported).await.unwrap();
        assert_eq!(fs::read_to_string(exported.join("f")).unwrap(), "out\n");

        // A container's directory hashes as the same tree on the host does.
        let same = scratch.path.join("same");
        fs::create_dir_all(&same).unwrap();
        fs::write(same.join("f"), "out\n").unwrap();
        let mode = fs::metadata(exported.join("f"))
            .unwrap()
            .permissions()
            .mode();
        fs::set_permissions(same.join("f"), fs::Permissions::from_mode(mode)).unwrap();
        let host = engine.host().directory(&same).digest().await.unwrap();
        assert_eq!(c.directory("/o").digest().await.unwrap(), host);
        let other = engine.host().directory(&src).digest().await.unwrap();
        assert_ne!(other, host);

        let failing = engine
            .container()
            .with_name("broken")
            .from(fixtures().image("busybox:latest"))
            .with_exec(["sh", "-c", "echo first >&2; echo last-words >&2; exit 4"]);
        let err = failing.sync().await.err().expect("exit 4 fails");
        let text = error_chain(&err);
        assert!(
            text.contains("\"broken\"") && text.contains("code 4"),
            "{text}"
        );
        assert!(text.contains("first\nlast-words"), "{text}");
        // The step's own fault, seen through the solver's error.
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    });
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Solves `c` with progress events; returns its result and the events.
fn solve_with_events(
    engine: &Engine,
    rt: &tokio::runtime::Runtime,
    c: &cairn_engine::Container,
) -> (cairn_engine::Output, Vec<cairn_engine::Event>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = rt.block_on(engine.sync_all(
        std::slice::from_ref(c),
        cairn_engine::SolveOptions::new().events(tx),
    ));
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let output = result.into_iter().next().unwrap().unwrap();
    (output, events)
}

fn count(events: &[cairn_engine::Event], pick: fn(&cairn_engine::EventKind) -> bool) -> usize {
    events.iter().filter(|e| pick(&e.kind)).count()
}

/// A step printing ~20 MiB: its result (and cache record) keeps the last MiB with a line saying
/// how much was dropped; the log events carry every byte.
#[test]
fn large_output_is_capped_in_the_result_and_logged_whole() {
    let scratch = Scratch::new("engine-output");
    let (engine, rt) = engine(&scratch);
    let lines = 2_500_000u64;
    let c = engine
        .container()
        .from(fixtures().image("busybox:latest"))
        .with_exec([
            "sh",
            "-c",
            &format!("seq 1 {lines}; echo tail-of-stderr >&2"),
        ]);
    let printed: u64 = (1..=lines).map(|i| i.to_string().len() as u64 + 1).sum();
    assert!(printed > 18 << 20, "{printed}");

    let (out, events) = solve_with_events(&engine, &rt, &c);
    let logged: Vec<u8> = events
        .iter()
        .filter_map(|e| match &e.kind {
            cairn_engine::EventKind::Log {
                stream: cairn_engine::LogStream::Stdout,
                bytes,
            } => Some(bytes.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(logged.len() as u64, printed, "every line is logged");
    assert!(logged.ends_with(format!("{}\n{lines}\n", lines - 1).as_bytes()));

    let (header, kept) = out.stdout.split_once('\n').unwrap();
    assert!(
        kept.len() <= cairn_engine::DEFAULT_OUTPUT_LIMIT,
        "{}",
        kept.len()
    );
    assert!(kept.len() > cairn_engine::DEFAULT_OUTPUT_LIMIT - 16);
    assert!(kept.ends_with(&format!("{}\n{lines}\n", lines - 1)));
    // It starts on a whole line: the line before it ended where the kept text starts.
    let first = kept.lines().next().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        header,
        format!(
            "[cairn: the first {} bytes of stdout were dropped; the last {} bytes follow]",
            printed - kept.len() as u64,
            kept.len()
        )
    );
    let before: u64 = (1..first).map(|i| i.to_string().len() as u64 + 1).sum();
    assert_eq!(before, printed - kept.len() as u64);
    assert_eq!(out.stderr, "tail-of-stderr\n");

    // The cached result replays the same bounded text.
    let (again, events) = solve_with_events(&engine, &rt, &c);
    assert_eq!(again.stdout, out.stdout);
    assert_eq!(
        count(&events, |k| matches!(
            k,
            cairn_engine::EventKind::Completed { .. }
        )),
        0
    );

    // A smaller limit, set on the engine, bounds a new step's result to it.
    let small = engine.clone().output_limit(100);
    let c = small
        .container()
        .from(fixtures().image("busybox:latest"))
        .with_exec(["sh", "-c", "seq 1 1000"]);
    let (out, _) = solve_with_events(&small, &rt, &c);
    let (header, kept) = out.stdout.split_once('\n').unwrap();
    assert!(header.starts_with("[cairn: the first "), "{header}");
    assert!(kept.len() <= 100 && kept.ends_with("999\n1000\n"), "{kept}");
}

/// A host directory copied into a container: unchanged, nothing runs again (the copy is a
/// cache hit); one file edited, the copy and the exec run again and see the edit.
#[test]
fn an_unchanged_host_directory_is_not_copied_again() {
    let scratch = Scratch::new("engine-copy");
    let (engine, rt) = engine(&scratch);
    let src = scratch.path.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..200 {
        fs::write(src.join("sub").join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    fs::write(src.join("a.txt"), "one\n").unwrap();
    let build = |engine: &Engine| {
        engine
            .container()
            .from(fixtures().image("busybox:latest"))
            .with_directory("/src", &engine.host().directory(&src))
            .with_exec(["sh", "-c", "cat /src/a.txt; ls /src/sub | wc -l"])
    };
    let completed =
        |k: &cairn_engine::EventKind| matches!(k, cairn_engine::EventKind::Completed { .. });
    let cached = |k: &cairn_engine::EventKind| matches!(k, cairn_engine::EventKind::Cached { .. });

    let (out, events) = solve_with_events(&engine, &rt, &build(&engine));
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["one", "200"]
    );
    assert!(count(&events, completed) >= 2, "{events:?}");

    // Unchanged: every vertex, the copy included, comes from the cache.
    let (out, events) = solve_with_events(&engine, &rt, &build(&engine));
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["one", "200"]
    );
    assert_eq!(count(&events, completed), 0, "{events:?}");
    assert!(count(&events, cached) >= 3, "{events:?}");

    // Same size, same mtime, new content: the ctime tells, the copy runs again.
    let file = src.join("a.txt");
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    fs::write(&file, "two\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (out, events) = solve_with_events(&engine, &rt, &build(&engine));
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["two", "200"]
    );
    // The host directory, the copy and the exec.
    assert_eq!(count(&events, completed), 3, "{events:?}");
}
