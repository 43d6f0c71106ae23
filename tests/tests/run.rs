//! `cairn run` end to end, as root and as a plain user with subordinate ids: a two-step
//! pipeline with a host input, a step input, a cache volume, a secret and an export; what a
//! second run and an edited host file re-execute (counted from the JSON progress); a failing
//! step; and the secret's value nowhere in the store.

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
);

const SECRET: &str = "e2e-secret-Zq8x1T";
const SECRET_VAR: &str = "CAIRN_E2E_TOKEN";

fn pipeline(image: &str) -> String {
    format!(
        r#"[secrets]
token = {{ env = "{SECRET_VAR}" }}

[steps.deps]
image = "{image}"
run = "mkdir -p /out && echo deps-data > /out/d.txt"

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
            .map(|d| d.flatten().any(|e| e.path().join("record.json").exists()))
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
