//! The embedding API end to end: a container built from an image, a filtered host
//! directory, environment, working directory and a mounted secret; its output, an exported
//! directory and its digest; a failing exec. Files (new, copied, read, exported), mounted
//! directories, files and tmpfs, directory listings and subdirectories, and the
//! `build_and_test` example, each as root and as a plain user with subordinate ids (the
//! library tests run in a copy of this test binary started as that user: see
//! `cairn_e2e::as_identity`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cairn_e2e::{as_identity, cairn_bin, example_bin, fixtures, runnable_copy, Scratch, Who};
use cairn_engine::{Engine, EngineError, ErrorKind, Secret};
use cairn_images::{HelperProgram, StoreOptions};

cairn_e2e::identity_tests!(
    [root, subids]
    new_and_copied_files,
    file_errors_name_the_path_and_step,
    mounted_directories_files_and_tmpfs,
    directory_entries_subdirectories_and_rootfs,
    debian_os_release_through_its_symlink,
    build_and_test_example_runs,
);

fn engine(scratch: &Scratch) -> (Engine, tokio::runtime::Runtime) {
    engine_at(&scratch.path.join("store"))
}

/// A store at a short path (a container's overlay takes at most 255 bytes of lower
/// directory paths), removed when the scratch directory goes.
fn short_engine() -> (Scratch, Engine, tokio::runtime::Runtime) {
    let scratch = Scratch::short("st");
    let (engine, rt) = engine_at(&scratch.path);
    (scratch, engine, rt)
}

fn engine_at(store: &Path) -> (Engine, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut options = StoreOptions::new(store);
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

fn busybox() -> String {
    fixtures().image("busybox:latest")
}

/// A line no other run of a command prints: a re-run shows a new one, a cached run replays
/// the old one.
const RUN_ID: &str = "cat /proc/sys/kernel/random/uuid";

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn new_and_copied_files(who: Who) {
    as_identity(who, || {
        let scratch = Scratch::new("files");
        let (_store, engine, rt) = short_engine();
        let base = engine.container().from(busybox());
        let c = base
            .with_new_file("/app/greeting.txt", "hello\n")
            .with_new_file_permissions("/app/run.sh", "#!/bin/sh\necho ran\n", 0o750)
            .with_workdir("/app")
            .with_new_file("rel.txt", "relative\n")
            .with_exec([
                "sh",
                "-c",
                "stat -c '%a %n' /app/greeting.txt /app/run.sh; /app/run.sh; cat greeting.txt rel.txt",
            ]);
        rt.block_on(async {
            assert_eq!(
                c.stdout().await.unwrap(),
                "644 /app/greeting.txt\n750 /app/run.sh\nran\nhello\nrelative\n"
            );
            let greeting = c.file("/app/greeting.txt");
            assert_eq!(greeting.contents().await.unwrap(), "hello\n");
            assert_eq!(greeting.contents_bytes().await.unwrap(), b"hello\n");
            assert_eq!(greeting.size().await.unwrap(), 6);
            assert_eq!(
                greeting.digest().await.unwrap().to_string(),
                cairn_e2e::sha256_digest(b"hello\n")
            );
            // Relative paths are in the working directory.
            assert_eq!(c.file("rel.txt").contents().await.unwrap(), "relative\n");

            // Export keeps the mode.
            let out = scratch.path.join("out/deep/run.sh");
            c.file("/app/run.sh").export(&out).await.unwrap();
            assert_eq!(fs::read_to_string(&out).unwrap(), "#!/bin/sh\necho ran\n");
            assert_eq!(mode(&out), 0o750);

            // with_file copies a file of another container (mode kept, or the one given) and
            // a file of a host directory.
            let host = scratch.path.join("host");
            fs::create_dir_all(host.join("sub")).unwrap();
            fs::write(host.join("sub/data.txt"), "host data\n").unwrap();
            fs::set_permissions(host.join("sub/data.txt"), fs::Permissions::from_mode(0o604))
                .unwrap();
            let host_file = engine.host().directory(&host).file("sub/data.txt");
            let copied = base
                .with_file("/copied/run.sh", &c.file("/app/run.sh"))
                .with_file_permissions("/copied/ro.txt", &greeting, 0o400)
                .with_file("/copied/data.txt", &host_file)
                .with_exec([
                    "sh",
                    "-c",
                    "stat -c '%a' /copied/run.sh /copied/ro.txt /copied/data.txt; /copied/run.sh; cat /copied/ro.txt /copied/data.txt",
                ]);
            assert_eq!(
                copied.stdout().await.unwrap(),
                "750\n400\n604\nran\nhello\nhost data\n"
            );

            // The new file's content is in the key: other content reruns the exec after it,
            // the same content is taken from the cache.
            let with = |text: &str| {
                base.with_new_file("/in.txt", text.to_owned())
                    .with_exec(["sh", "-c", &format!("cat /in.txt; echo; {RUN_ID}")])
            };
            let first = with("one").stdout().await.unwrap();
            assert!(first.starts_with("one\n"), "{first}");
            assert_eq!(with("one").stdout().await.unwrap(), first, "same content: cached");
            let second = with("two").stdout().await.unwrap();
            assert!(second.starts_with("two\n"), "{second}");
            assert_ne!(first[4..], second[4..], "other content: the exec ran again");
            assert_eq!(with("one").stdout().await.unwrap(), first, "still cached");
            // So is the source file's key for with_file: an edited host file reruns.
            let copy_run = || {
                let f = engine.host().directory(&host).file("sub/data.txt");
                base.with_file("/d.txt", &f)
                    .with_exec(["sh", "-c", &format!("cat /d.txt; {RUN_ID}")])
            };
            let before = copy_run().stdout().await.unwrap();
            assert_eq!(copy_run().stdout().await.unwrap(), before);
            fs::write(host.join("sub/data.txt"), "edited\n").unwrap();
            let after = copy_run().stdout().await.unwrap();
            assert!(after.starts_with("edited\n"), "{after}");
        });
    });
}

fn file_errors_name_the_path_and_step(who: Who) {
    as_identity(who, || {
        let scratch = Scratch::new("file-errors");
        let (_store, engine, rt) = short_engine();
        let c = engine
            .container()
            .from(busybox())
            .with_name("my-step")
            .with_exec([
                "sh",
                "-c",
                "mkdir -p /made && ln -s /nowhere /made/dangling",
            ]);
        rt.block_on(async {
            let err = c.file("/no/such/file").contents().await.unwrap_err();
            let text = error_chain(&err);
            assert!(
                text.contains("/no/such/file") && text.contains("my-step"),
                "{text}"
            );
            assert_eq!(err.kind(), ErrorKind::NotFound);
            let err = c.file("/made").contents().await.unwrap_err();
            let text = error_chain(&err);
            assert!(
                text.contains("/made") && text.contains("is a directory"),
                "{text}"
            );
            assert!(matches!(err, EngineError::WrongFileType { .. }), "{err:?}");
            let err = c.file("/made/dangling").size().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
            // A file that is missing where with_file takes it fails that step, naming it.
            let copy = engine
                .container()
                .from(busybox())
                .with_file("/x", &c.file("/missing.txt"));
            let err = copy
                .sync()
                .await
                .err()
                .expect("a missing source file fails");
            let text = error_chain(&err);
            assert!(text.contains("/missing.txt"), "{text}");
            let host = scratch.path.join("h");
            fs::create_dir_all(&host).unwrap();
            fs::write(host.join("skip.log"), "x").unwrap();
            let dir = engine.host().directory(&host).with_exclude(["*.log"]);
            let err = dir.file("skip.log").contents().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "excluded: {err}");
        });
    });
}

fn mounted_directories_files_and_tmpfs(who: Who) {
    as_identity(who, || {
        let scratch = Scratch::new("mounts");
        let (_store, engine, rt) = short_engine();
        let src = scratch.path.join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a.txt"), "a\n").unwrap();
        let host = engine.host().directory(&src);
        let base = engine.container().from(busybox());
        let c = base
            .with_mounted_directory("/mnt/src", &host)
            .with_mounted_temp("/scratch")
            .with_mounted_file("/etc/extra.conf", &host.file("a.txt"))
            .with_exec([
                "sh",
                "-c",
                "cat /mnt/src/a.txt; echo changed > /mnt/src/a.txt; echo new > /mnt/src/new.txt; \
                 echo t > /scratch/t; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; \
                 cat /etc/extra.conf; echo more >> /etc/extra.conf; echo kept > /kept.txt",
            ]);
        rt.block_on(async {
            assert_eq!(c.stdout().await.unwrap(), "a\ntmpfs\na\n");
            // The host directory did not change.
            assert_eq!(fs::read_to_string(src.join("a.txt")).unwrap(), "a\n");
            assert!(!src.join("new.txt").exists());
            // What was written through the mounts is not in the exec's result; the rest is.
            assert_eq!(c.file("/kept.txt").contents().await.unwrap(), "kept\n");
            for gone in ["/mnt/src/new.txt", "/mnt/src/a.txt", "/scratch/t"] {
                let err = c.file(gone).contents().await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::NotFound, "{gone}: {err}");
            }
            let conf = c.file("/etc/extra.conf").contents().await;
            assert!(
                conf.as_deref().map_or(true, str::is_empty),
                "the mounted file's writes reached the result: {conf:?}"
            );
            // A later exec sees the mounts afresh: the source's content, an empty tmpfs.
            let later = c.with_exec([
                "sh",
                "-c",
                "cat /mnt/src/a.txt; ls /mnt/src; ls /scratch | wc -l",
            ]);
            assert_eq!(later.stdout().await.unwrap(), "a\na.txt\n0\n");

            // A container's directory mounted elsewhere: its snapshot does not change.
            let producer = base.with_exec(["sh", "-c", "mkdir /data && echo orig > /data/f"]);
            let data = producer.directory("/data");
            let user = base.with_mounted_directory("/m", &data).with_exec([
                "sh",
                "-c",
                "cat /m/f; echo mod > /m/f; cat /m/f",
            ]);
            assert_eq!(user.stdout().await.unwrap(), "orig\nmod\n");
            assert_eq!(data.file("f").contents().await.unwrap(), "orig\n");
            assert_eq!(
                user.with_exec(["cat", "/m/f"]).stdout().await.unwrap(),
                "orig\n"
            );

            // The mounted directory's key is the exec's: an edit reruns it, else it is cached.
            let run = || {
                base.with_mounted_directory("/in", &engine.host().directory(&src))
                    .with_exec(["sh", "-c", &format!("cat /in/a.txt; {RUN_ID}")])
            };
            let first = run().stdout().await.unwrap();
            assert_eq!(run().stdout().await.unwrap(), first, "unchanged: cached");
            fs::write(src.join("a.txt"), "b\n").unwrap();
            let second = run().stdout().await.unwrap();
            assert!(second.starts_with("b\n"), "{second}");
            assert_ne!(first[2..], second[2..]);
        });
    });
}

fn directory_entries_subdirectories_and_rootfs(who: Who) {
    as_identity(who, || {
        let scratch = Scratch::new("dirs");
        let (_store, engine, rt) = short_engine();
        let src = scratch.path.join("src");
        for d in ["sub/deep", "target/x"] {
            fs::create_dir_all(src.join(d)).unwrap();
        }
        for (f, text) in [
            ("a.txt", "a\n"),
            ("b.log", "log\n"),
            ("sub/c.txt", "c\n"),
            ("sub/deep/d.txt", "d\n"),
            ("target/x/o", "o\n"),
        ] {
            fs::write(src.join(f), text).unwrap();
        }
        let dir = engine
            .host()
            .directory(&src)
            .with_exclude(["*.log", "target"]);
        let c = engine.container().from(busybox()).with_exec([
            "sh",
            "-c",
            "test -f /etc/hosts -a -f /etc/resolv.conf || exit 9; \
             mkdir -p /out/z /out/a && echo 1 > /out/m.txt && ln -s /out /link && cat /etc/cairn-fixture",
        ]);
        rt.block_on(async {
            // A host directory, filtered, and its subdirectories.
            assert_eq!(dir.entries().await.unwrap(), ["a.txt", "sub"]);
            let sub = dir.directory("sub");
            assert_eq!(sub.entries().await.unwrap(), ["c.txt", "deep"]);
            assert_eq!(sub.file("c.txt").contents().await.unwrap(), "c\n");
            assert_eq!(
                sub.directory("deep")
                    .file("d.txt")
                    .contents()
                    .await
                    .unwrap(),
                "d\n"
            );
            let exported = scratch.path.join("deep-out");
            sub.directory("deep").export(&exported).await.unwrap();
            assert_eq!(fs::read_to_string(exported.join("d.txt")).unwrap(), "d\n");
            let err = dir.directory("target").entries().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "excluded: {err}");
            let err = dir.directory("a.txt").entries().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "a file: {err}");

            // A container's filesystem.
            let fixture = c.stdout().await.unwrap();
            let rootfs = c.rootfs();
            let top = rootfs.entries().await.unwrap();
            for name in ["bin", "etc", "link", "out"] {
                assert!(top.contains(&name.to_owned()), "{name} not in {top:?}");
            }
            let mut sorted = top.clone();
            sorted.sort();
            assert_eq!(top, sorted);
            assert_eq!(
                rootfs.file("/etc/cairn-fixture").contents().await.unwrap(),
                fixture
            );
            assert_eq!(
                rootfs
                    .directory("etc")
                    .file("passwd")
                    .contents()
                    .await
                    .unwrap()[..5],
                *"root:"
            );
            assert_eq!(
                c.directory("/out").entries().await.unwrap(),
                ["a", "m.txt", "z"]
            );
            // The step saw the host's /etc/hosts and /etc/resolv.conf, which the image lacks;
            // their mount points are not left in its result (BuildKit removes such stubs).
            assert_eq!(
                c.directory("/etc").entries().await.unwrap(),
                ["cairn-fixture", "group", "passwd"]
            );
            // Symlinks are followed inside the container: /link is /out, /bin/sh busybox.
            assert_eq!(
                c.directory("/link").entries().await.unwrap(),
                ["a", "m.txt", "z"]
            );
            assert_eq!(c.file("/link/m.txt").contents().await.unwrap(), "1\n");
            let sh = c.file("/bin/sh").contents_bytes().await.unwrap();
            assert_eq!(&sh[..4], b"\x7fELF");
            assert_eq!(
                c.file("/bin/sh").size().await.unwrap(),
                c.file("/bin/busybox").size().await.unwrap()
            );
        });
    });
}

fn debian_os_release_through_its_symlink(who: Who) {
    as_identity(who, || {
        let (_store, engine, rt) = short_engine();
        let debian = engine.container().from(fixtures().image("debian:bookworm"));
        rt.block_on(async {
            // /etc/os-release is a relative symlink to ../usr/lib/os-release.
            let text = debian
                .rootfs()
                .file("/etc/os-release")
                .contents()
                .await
                .unwrap();
            assert!(text.contains("VERSION_CODENAME=bookworm"), "{text}");
            // /bin is a symlink to usr/bin: a new file there goes to /usr/bin and /bin keeps
            // the image's files.
            let tool = debian
                .with_new_file_permissions("/bin/cairn-tool", "#!/bin/sh\necho tool\n", 0o755)
                .with_exec(["sh", "-c", "cairn-tool; ls /bin/ls /usr/bin/cairn-tool"]);
            assert_eq!(
                tool.stdout().await.unwrap(),
                "tool\n/bin/ls\n/usr/bin/cairn-tool\n"
            );
        });
    });
}

fn build_and_test_example_runs(who: Who) {
    let scratch = Scratch::new("example");
    who.own(&scratch.path);
    let project = scratch.path.join("project");
    fs::create_dir_all(project.join("src")).unwrap();
    fs::create_dir_all(project.join("target")).unwrap();
    fs::write(project.join("Makefile"), "all:\n").unwrap();
    fs::write(project.join("src/main.c"), "int main(){}\n").unwrap();
    fs::write(project.join("target/junk"), "x").unwrap();
    who.own(&scratch.path);
    let bin = match who {
        Who::Root => example_bin("build_and_test"),
        Who::User(_) => runnable_copy(&example_bin("build_and_test")),
    };
    let out_dir = scratch.path.join("out");
    let run = || {
        who.command(&bin)
            .arg(busybox())
            .arg(&project)
            .arg(&out_dir)
            .env("CAIRN_ROOT", scratch.path.join("store"))
            .output()
            .unwrap()
    };
    for attempt in ["first", "cached"] {
        let out = run();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{attempt} run as {}: {}\n{stdout}{}",
            who.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("test: ok 2 files\n"), "{stdout}");
        assert!(stdout.contains("Makefile\nsrc/main.c\n"), "{stdout}");
        assert!(stdout.contains("exported: count.txt files.txt"), "{stdout}");
        assert_eq!(
            fs::read_to_string(out_dir.join("files.txt")).unwrap(),
            "Makefile\nsrc/main.c\n"
        );
        assert_eq!(
            fs::read_to_string(out_dir.join("count.txt")).unwrap(),
            "2\n"
        );
    }
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
