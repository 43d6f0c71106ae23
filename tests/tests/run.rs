//! `cairn run` end to end, as root and as a plain user with subordinate ids: a two-step
//! pipeline with a host input, a step input, a cache volume, a secret and an export; what a
//! second run and an edited host file re-execute (counted from the JSON progress and from a
//! counter each step appends to in a cache volume); a failing step; the secret's value nowhere
//! in the store; two independent steps running at once; concurrent runs on one store;
//! `--explain`; and the live terminal view under a real pty.

use std::fs;
use std::path::Path;
use std::process::Output;

use cairn_e2e::{fixtures, Cairn, Who};
use serde_json::Value;

cairn_e2e::identity_tests!(
    [root, subids]
    pipeline_runs_caches_and_reruns_what_changed,
    failing_step_stops_its_dependents,
    secret_stays_out_of_the_store_while_a_step_runs,
    cache_volume_sharing_modes,
    independent_steps_overlap,
    concurrent_runs_share_one_store,
    explain_names_what_changed,
    tty_progress_under_a_pty,
    regression_deep_step_chain_lowerdir_over_fsconfig_limit,
);

const SECRET: &str = "e2e-secret-Zq8x1T";
const SECRET_VAR: &str = "CAIRN_E2E_TOKEN";

fn pipeline(image: &str) -> String {
    format!(
        r#"[secrets]
token = {{ env = "{SECRET_VAR}" }}

[steps.deps]
image = "{image}"
run = "mkdir -p /out && echo deps-data > /out/d.txt && echo run >> /cache/deps-runs"
caches = [ {{ name = "build-cache", to = "/cache" }} ]

[steps.build]
image = "{image}"
run = """
mkdir -p /dist
cat /src/a.txt /deps/d.txt > /dist/r.txt
echo "token=$TOKEN"
[ "$TOKEN" = "{SECRET}" ] && echo secret-ok
echo run >> /cache/runs
echo built
"""
inputs = [ {{ host = "src", to = "/src", exclude = ["ignored/**"] }}, {{ step = "deps", path = "/out", to = "/deps" }} ]
caches = [ {{ name = "build-cache", to = "/cache" }} ]
secrets = [ {{ name = "token", env = "TOKEN" }} ]

[[exports]]
step = "build"
path = "/dist"
to = "out"
"#
    )
}

/// Runs `cairn run FILE --progress json` with the secret in the environment.
fn run(cairn: &Cairn, file: &Path) -> (Output, Vec<Value>) {
    let out = cairn
        .command(&["run", file.to_str().unwrap(), "--progress", "json"])
        .env(SECRET_VAR, SECRET)
        .output()
        .expect("run cairn");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (out, events)
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The events of kind `event`, as (step, vertex).
fn of(events: &[Value], event: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("step"), s("vertex"))
        })
        .collect()
}

fn logs(events: &[Value]) -> String {
    let logs = events.iter().filter(|e| e["event"] == "log");
    logs.map(|e| e["data"].as_str().unwrap_or_default())
        .collect()
}

/// Every file under `root` (as root, which reads all) that contains `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let data = fs::read(&path).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

fn pipeline_runs_caches_and_reruns_what_changed(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(ci.join("src/ignored")).unwrap();
    fs::write(ci.join("src/a.txt"), "hello\n").unwrap();
    fs::write(ci.join("src/ignored/x"), "not part of the key\n").unwrap();
    let file = ci.join("pipeline.toml");
    fs::write(&file, pipeline(&fixtures().image("busybox:latest"))).unwrap();
    who.own(&ci);

    // First run: everything executes; the export holds both inputs.
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    let exported = fs::read_to_string(ci.join("out/r.txt")).unwrap();
    assert_eq!(exported, "hello\ndeps-data\n");
    let log = logs(&events);
    assert!(
        log.contains("token=***") && log.contains("secret-ok"),
        "{log}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
    let completed = of(&events, "completed");
    for step in ["deps", "build"] {
        assert!(
            completed.iter().any(|(s, _)| s == step),
            "{step} did not run: {events:?}"
        );
    }
    for e in events
        .iter()
        .filter(|e| e["event"] != "log" && e["event"] != "started")
    {
        assert!(e["duration_ms"].is_u64(), "no duration_ms in {e}");
    }

    // Second run: nothing runs, no container is created: only `cached` events.
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().all(|k| *k == "cached"), "{events:?}");
    let cached = of(&events, "cached");
    for step in ["deps", "build"] {
        assert!(
            cached.iter().any(|(s, _)| s == step),
            "{step} not cached: {events:?}"
        );
    }

    // A change in an excluded file changes nothing.
    fs::write(ci.join("src/ignored/x"), "still not part of the key\n").unwrap();
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(of(&events, "completed").is_empty(), "{events:?}");

    // One host file changes: exactly `build` re-executes, `deps` comes from the cache.
    fs::write(ci.join("src/a.txt"), "changed\n").unwrap();
    who.own(&ci);
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    let completed = of(&events, "completed");
    assert!(!completed.is_empty(), "{events:?}");
    assert!(completed.iter().all(|(s, _)| s == "build"), "{events:?}");
    assert!(
        of(&events, "cached").iter().any(|(s, _)| s == "deps"),
        "{events:?}"
    );
    assert!(logs(&events).contains("built"), "{events:?}");
    let exported = fs::read_to_string(ci.join("out/r.txt")).unwrap();
    assert_eq!(exported, "changed\ndeps-data\n");
    // The cache volume survived between the two executions of `build`; it is not in the key.
    let runs = cairn.root.join("volumes/build-cache/runs");
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    // No container ran for `deps` after the first run: its counter has one line.
    let runs = cairn.root.join("volumes/build-cache/deps-runs");
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");

    // The secret's value is nowhere in the store: keys, snapshots, database, logs.
    let hits = files_containing(&cairn.root, SECRET.as_bytes());
    assert!(hits.is_empty(), "secret found in {hits:?}");
}

fn failing_step_stops_its_dependents(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let file = ci.join("fail.toml");
    let text = format!(
        r#"[steps.bad]
image = "{image}"
run = "echo early-line >&2; echo boom-line >&2; exit 3"

[steps.after]
from = "bad"
run = "echo after-ran"

[steps.fine]
image = "{image}"
run = "echo fine-ran"
"#
    );
    fs::write(&file, text).unwrap();
    who.own(&ci);
    let (out, events) = run(&cairn, &file);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"bad\""), "{stderr}");
    assert!(stderr.contains("code 3"), "{stderr}");
    assert!(stderr.contains("exit 3"), "the command is named: {stderr}");
    assert!(stderr.contains("early-line\nboom-line"), "{stderr}");
    assert!(stderr.contains("\"after\""), "{stderr}");
    let log = logs(&events);
    assert!(!log.contains("after-ran"), "{log}");
    // The independent step finishes; the dependent is skipped, never started.
    assert!(log.contains("fine-ran"), "{log}");
    assert!(
        of(&events, "failed").iter().any(|(s, _)| s == "bad"),
        "{events:?}"
    );
    assert!(
        of(&events, "skipped").iter().any(|(s, _)| s == "after"),
        "{events:?}"
    );
    for kind in ["started", "completed"] {
        assert!(
            !of(&events, kind).iter().any(|(s, _)| s == "after"),
            "{events:?}"
        );
    }
}

fn secret_stays_out_of_the_store_while_a_step_runs(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let file = ci.join("slow.toml");
    let text = format!(
        r#"[secrets]
token = {{ env = "{SECRET_VAR}" }}

[steps.slow]
image = "{image}"
run = "touch /tmp/running; sleep 3; [ -n \"$TOKEN\" ] && cat /run/token"
secrets = [ {{ name = "token", env = "TOKEN" }}, {{ name = "token", file = "/run/token" }} ]
"#
    );
    fs::write(&file, text).unwrap();
    who.own(&ci);
    let child = cairn
        .command(&["run", file.to_str().unwrap(), "--progress", "json"])
        .env(SECRET_VAR, SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the container runs (its record is in the store), then look for the value.
    let containers = cairn.root.join("containers");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let running = loop {
        let found = fs::read_dir(&containers)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false);
        if found || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let hits = files_containing(&cairn.root, SECRET.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(running, "the step never ran: {}", describe(&out));
    assert!(
        hits.is_empty(),
        "secret in the store while running: {hits:?}"
    );
    assert!(out.status.success(), "{}", describe(&out));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("***") && !log.contains(SECRET), "{log}");
}

/// Two concurrent steps mount one cache volume: `shared` lets them overlap, `locked` makes them
/// take turns, `private` gives each a directory of its own.
fn cache_volume_sharing_modes(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let step = |name: &str, sharing: &str| {
        format!(
            r#"[steps.{name}]
image = "{image}"
run = "if [ -e /c/busy ]; then echo overlap; fi; touch /c/busy; sleep 2; rm -f /c/busy; echo {name}-done {sharing}"
caches = [ {{ name = "vol", to = "/c", sharing = "{sharing}" }} ]
"#
        )
    };
    // The mode is not part of the key: each mode's command differs, so none hits the cache.
    let mut logs_by_mode = Vec::new();
    for sharing in ["shared", "locked", "private"] {
        let file = ci.join(format!("{sharing}.toml"));
        fs::write(&file, step("one", sharing) + &step("two", sharing)).unwrap();
        who.own(&ci);
        let (out, events) = run(&cairn, &file);
        assert!(out.status.success(), "{}", describe(&out));
        let log = logs(&events);
        assert!(
            log.contains("one-done") && log.contains("two-done"),
            "{log}"
        );
        logs_by_mode.push((sharing, log));
    }
    for (sharing, log) in &logs_by_mode {
        match *sharing {
            // Only where two steps can run at once does sharing show.
            "shared" if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 => {
                assert!(
                    log.contains("overlap"),
                    "steps did not run concurrently: {log}"
                )
            }
            "locked" | "private" => assert!(!log.contains("overlap"), "{sharing}: {log}"),
            _ => {}
        }
    }
    assert!(
        cairn.root.join("volumes/vol.1").is_dir(),
        "no second private volume"
    );
}

/// Two steps that depend on nothing: each leaves a marker in a shared cache volume and then
/// waits (up to 60 s) for the other's. Run one after the other, the first would time out.
fn independent_steps_overlap(who: Who) {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("one core: the solver runs one step at a time here, nothing to show");
        return;
    }
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let step = |me: &str, other: &str| {
        format!(
            r#"[steps.{me}]
image = "{image}"
run = """
touch /meet/{me}
i=0
while [ ! -e /meet/{other} ]; do
  i=$((i + 1)); [ $i -gt 600 ] && echo "{me}: no sign of {other}" >&2 && exit 7
  sleep 0.1
done
echo {me}-met-{other}
"""
caches = [ {{ name = "meet", to = "/meet" }} ]
"#
        )
    };
    let file = ci.join("overlap.toml");
    fs::write(&file, step("left", "right") + &step("right", "left")).unwrap();
    who.own(&ci);
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    let log = logs(&events);
    assert!(
        log.contains("left-met-right") && log.contains("right-met-left"),
        "{log}"
    );
}

/// Three `cairn run` at once on one store: the same pipeline twice and a second pipeline that
/// shares a step with it. All succeed; a later run finds every step cached.
fn concurrent_runs_share_one_store(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let shared = format!(
        r#"[steps.base]
image = "{image}"
run = "sleep 1; mkdir -p /data; echo base > /data/base.txt"
"#
    );
    let own = |name: &str| {
        format!(
            r#"
[steps.{name}]
from = "base"
run = "cat /data/base.txt; echo {name}-done"
"#
        )
    };
    let (a, b) = (ci.join("a.toml"), ci.join("b.toml"));
    fs::write(&a, shared.clone() + &own("first")).unwrap();
    fs::write(&b, shared + &own("second")).unwrap();
    who.own(&ci);
    let spawn = |file: &Path| {
        cairn
            .command(&["run", file.to_str().unwrap(), "--progress", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cairn")
    };
    let children = [spawn(&a), spawn(&a), spawn(&b)];
    for (child, wanted) in children.into_iter().zip(["first", "first", "second"]) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Each run shows the step's log, or its cached result: the run succeeded either way.
        let events: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let done = of(&events, "completed")
            .into_iter()
            .chain(of(&events, "cached"));
        assert!(done.into_iter().any(|(s, _)| s == wanted), "{stdout}");
    }
    for file in [&a, &b] {
        let (out, events) = run(&cairn, file);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(events.iter().all(|e| e["event"] == "cached"), "{events:?}");
    }
}

/// `cairn run --explain`: why each step that ran missed the cache, named in words.
fn explain_names_what_changed(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(ci.join("src")).unwrap();
    fs::write(ci.join("src/a.txt"), "one\n").unwrap();
    fs::write(ci.join("src/b.txt"), "same\n").unwrap();
    let image = fixtures().image("busybox:latest");
    let text = |mode: &str| {
        format!(
            r#"[steps.deps]
image = "{image}"
env = {{ MODE = "{mode}", KEEP = "k" }}
run = "mkdir -p /out && echo $MODE > /out/mode"

[steps.build]
image = "{image}"
run = "cat /src/a.txt /deps/mode"
inputs = [ {{ host = "src", to = "/src" }}, {{ step = "deps", path = "/out", to = "/deps" }} ]
"#
        )
    };
    let file = ci.join("explain.toml");
    fs::write(&file, text("fast")).unwrap();
    who.own(&ci);
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--explain",
            "--progress",
            "plain",
        ];
        args.extend_from_slice(extra);
        let out = cairn.run(&args);
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let lines = |stderr: &str, step: &str| -> Vec<String> {
        let prefix = format!("{step}: ran");
        let hits = stderr.lines().filter(|l| l.starts_with(&prefix));
        hits.map(str::to_owned).collect()
    };

    let first = explain(&[]);
    assert_eq!(
        lines(&first, "build"),
        ["build: ran: never ran before"],
        "{first}"
    );
    assert_eq!(
        lines(&first, "deps"),
        ["deps: ran: never ran before"],
        "{first}"
    );

    // A host file changes: only `build` runs, and the file is named.
    fs::write(ci.join("src/a.txt"), "two\n").unwrap();
    who.own(&ci);
    let second = explain(&[]);
    assert_eq!(
        lines(&second, "build"),
        ["build: ran: host directory src changed (a.txt)"],
        "{second}"
    );
    assert!(lines(&second, "deps").is_empty(), "{second}");

    // An env var of `deps` changes: `deps` says env and names it; `build` says its input.
    fs::write(&file, text("slow")).unwrap();
    who.own(&ci);
    let third = explain(&[]);
    assert_eq!(
        lines(&third, "deps"),
        ["deps: ran: env changed (MODE)"],
        "{third}"
    );
    assert_eq!(
        lines(&third, "build"),
        ["build: ran: input from step deps changed"],
        "{third}"
    );

    // Nothing changed: nothing ran, nothing to explain.
    let fourth = explain(&[]);
    assert!(
        lines(&fourth, "build").is_empty() && lines(&fourth, "deps").is_empty(),
        "{fourth}"
    );

    // JSON: the reasons ride on `started`.
    let out = cairn.run(&[
        "run",
        file.to_str().unwrap(),
        "--explain",
        "--no-cache",
        "--progress",
        "json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let started: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "started" && e["step"] == "build" && e.get("explain").is_some())
        .collect();
    assert_eq!(started.len(), 1, "{stdout}");
    assert_eq!(
        started[0]["explain"],
        serde_json::json!(["--no-cache"]),
        "{stdout}"
    );

    // Another pipeline file with a step of the same name keeps its own history.
    let other = ci.join("other.toml");
    let text = format!("[steps.build]\nimage = \"{image}\"\nrun = \"echo other\"\n");
    fs::write(&other, text).unwrap();
    who.own(&ci);
    let out = cairn.run(&[
        "run",
        other.to_str().unwrap(),
        "--explain",
        "--progress",
        "plain",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        lines(&stderr, "build"),
        ["build: ran: never ran before"],
        "{stderr}"
    );
}

/// Without escape sequences: what a terminal's text would hold.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// `--progress tty` under a real pseudo-terminal (util-linux `script`): the steps and their
/// final states are drawn, the failing step's stderr tail stays on screen; `auto` picks the
/// live view on a terminal and plain lines off one.
fn tty_progress_under_a_pty(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let file = ci.join("tty.toml");
    let text = format!(
        r#"[steps.fetch]
image = "{image}"
run = "for i in 1 2 3 4 5 6; do echo fetch-line-$i; sleep 0.2; done"

[steps.compile]
from = "fetch"
run = "echo compile-out"

[steps.broken]
image = "{image}"
run = "echo broken-tail-line >&2; exit 4"
"#
    );
    fs::write(&file, text).unwrap();
    who.own(&ci);
    let in_pty = |progress: &str| {
        let command = format!(
            "{} --root {} run {} --progress {progress}",
            cairn_e2e::cairn_bin_for(who).display(),
            cairn.root.display(),
            file.display()
        );
        let out = who
            .command("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env("TERM", "xterm-256color")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, raw) = in_pty("tty");
    // `script -e` passes on cairn's exit code: the broken step fails the run.
    assert_eq!(code, Some(1), "{raw}");
    assert!(
        raw.contains("\x1b["),
        "no escape sequences, not drawn live: {raw:?}"
    );
    let screen = strip_ansi(&raw);
    assert!(screen.contains("✔ fetch done"), "{screen}");
    assert!(screen.contains("✔ compile done"), "{screen}");
    assert!(screen.contains("✘ broken failed"), "{screen}");
    assert!(screen.contains("│ broken-tail-line"), "{screen}");
    assert!(screen.contains("fetch-line-"), "{screen}");
    assert!(screen.contains("2 done, 0 cached, 1 failed"), "{screen}");

    // A second run: the two good steps are cached.
    let (_, raw) = in_pty("auto");
    let screen = strip_ansi(&raw);
    assert!(screen.contains("● fetch cached"), "{screen}");
    assert!(screen.contains("● compile cached"), "{screen}");

    // Off a terminal, `auto` is plain: no escape sequences, the plain lines.
    let out = cairn.run(&["run", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("\x1b["), "{stderr:?}");
    assert!(stderr.contains("[fetch] cached"), "{stderr}");
    assert!(stderr.contains("[broken] failed"), "{stderr}");
}

/// Regression: a chain of more than about five steps failed with "failed to prepare rootfs":
/// the overlay's `lowerdir=` list passed 255 bytes, the most `fsconfig` takes in one value.
fn regression_deep_step_chain_lowerdir_over_fsconfig_limit(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    fs::create_dir_all(&ci).unwrap();
    let image = fixtures().image("busybox:latest");
    let mut text = String::new();
    for n in 1..=12 {
        match n {
            1 => text += &format!("[steps.s{n}]\nimage = \"{image}\"\n"),
            _ => text += &format!("[steps.s{n}]\nfrom = \"s{}\"\n", n - 1),
        }
        text += &format!("run = \"echo s{n} >> /chain; wc -l < /chain\"\n\n");
    }
    let file = ci.join("chain.toml");
    fs::write(&file, text).unwrap();
    who.own(&ci);
    let (out, events) = run(&cairn, &file);
    assert!(out.status.success(), "{}", describe(&out));
    let last = events
        .iter()
        .filter(|e| e["event"] == "log" && e["step"] == "s12")
        .map(|e| e["data"].as_str().unwrap_or_default())
        .collect::<String>();
    assert_eq!(last.trim(), "12", "{events:?}");
}
