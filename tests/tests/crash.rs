//! `kill -9` of `cairn pull` at random moments: the store must never take a half-written
//! blob or snapshot as complete, the next command must clean up, and the pull must then
//! succeed with the right filesystem.

use std::time::{Duration, Instant};

use cairn_e2e::{diff_trees, fixtures, sha256_digest, umoci_unpack, Cairn, Who};

fn assert_consistent(cairn: &Cairn, round: usize) {
    // Any blob under its digest's name is complete and correct, killed or not.
    for blob in std::fs::read_dir(cairn.root.join("blobs/sha256"))
        .into_iter()
        .flatten()
    {
        let path = blob.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            sha256_digest(&data),
            format!("sha256:{name}"),
            "round {round}: corrupt blob"
        );
    }
}

fn after_recovery(cairn: &Cairn, round: usize) {
    // Opening the store (any command) cleans what the killed process left.
    cairn.ok(&["images"]);
    assert_eq!(
        std::fs::read_dir(cairn.root.join("ingest"))
            .unwrap()
            .count(),
        0,
        "round {round}: ingest left"
    );
    for entry in std::fs::read_dir(cairn.root.join("snapshots")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.parse::<u64>().is_ok(),
            "round {round}: leftover snapshot dir {name}"
        );
    }
    let out = std::process::Command::new("sqlite3")
        .arg(cairn.root.join("metadata.db"))
        .arg("SELECT count(*) FROM snapshots WHERE kind != 'committed'")
        .output()
        .expect("sqlite3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "round {round}: unfinished snapshots"
    );
}

fn kill_pull_repeatedly(who: Who, rounds: usize) {
    let fx = fixtures();
    let reference = fx.image("layers:latest");
    // How long an undisturbed pull takes, to spread the kills over it.
    let probe = Cairn::new(who);
    let start = Instant::now();
    probe.pull(&reference);
    let full = start.elapsed().max(Duration::from_millis(50));
    drop(probe);

    let cairn = Cairn::new(who);
    let mut killed_mid_way = 0;
    // A pull resumed after a kill has less left to do, so a kill at a random moment of a
    // whole pull often finds it finished; such rounds do not count, and more are run (up to
    // three times as many) until half of `rounds` kills have hit a running pull.
    let mut round = 0;
    while round < rounds || (killed_mid_way < rounds / 2 && round < 3 * rounds) {
        round += 1;
        let delay = full.mul_f64(rand::random::<f64>());
        let mut child = cairn.command(&["pull", &reference]).spawn().unwrap();
        std::thread::sleep(delay);
        // SIGKILL the whole job: cairn and (rootless) its helper.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            killed_mid_way += 1;
        }
        let _ = child.wait();
        assert_consistent(&cairn, round);
        after_recovery(&cairn, round);
        // A pull that got to the end leaves nothing to interrupt: start over.
        if finished {
            cairn.ok(&["reset"]);
        }
    }
    assert!(
        killed_mid_way >= rounds / 2,
        "only {killed_mid_way} of {round} kills hit a running pull"
    );
    cairn.pull(&reference);
    let dest = cairn.dir("export");
    cairn.ok(&["export", &reference, dest.to_str().unwrap()]);
    let expected = umoci_unpack(fx.fixture(&reference), who, &cairn.scratch.path);
    let diffs = diff_trees(&expected, &dest);
    assert!(
        diffs.is_empty(),
        "after {rounds} kills the export differs:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn pull_survives_kill_9_as_root() {
    kill_pull_repeatedly(Who::Root, 24);
}

#[test]
fn pull_survives_kill_9_rootless() {
    kill_pull_repeatedly(Who::User(cairn_e2e::user_with_subids()), 20);
}

/// Every file under `root` that contains `needle` (unreadable ones skipped).
fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let data = std::fs::read(&path).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

/// `kill -9` of `cairn run` while a step runs with a secret file mounted and a secret in its
/// environment: the secret's files (outside the store, on tmpfs) outlive the process, and the
/// next `cairn run` on the store deletes them.
fn killed_run_leaves_no_secret_behind(who: Who) {
    let cairn = Cairn::new(who);
    let ci = cairn.dir("ci");
    std::fs::create_dir_all(&ci).unwrap();
    // A value of this run only: other runs' live secrets are not this test's business.
    let secret = format!("crash-secret-{:016x}", rand::random::<u64>());
    let image = fixtures().image("busybox:latest");
    let slow = ci.join("slow.toml");
    std::fs::write(
        &slow,
        format!(
            r#"[secrets]
token = {{ env = "CAIRN_E2E_CRASH_TOKEN" }}

[steps.slow]
image = "{image}"
run = "sleep 60"
secrets = [ {{ name = "token", env = "TOKEN" }}, {{ name = "token", file = "/run/token" }} ]
"#
        ),
    )
    .unwrap();
    let quick = ci.join("quick.toml");
    std::fs::write(
        &quick,
        format!("[steps.quick]\nimage = \"{image}\"\nrun = \"true\"\n"),
    )
    .unwrap();
    who.own(&ci);
    // Where secret directories go: tmpfs, else the temp dir (only its secret directories are
    // searched; the rest of it is large, and holds the store, searched after the kill).
    let tmp = std::env::temp_dir();
    let places: Vec<std::path::PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(Into::into)
        .into_iter()
        .chain(["/dev/shm".into()])
        .filter(|p: &std::path::PathBuf| p.is_dir() && *p != tmp)
        .chain(
            std::fs::read_dir(&tmp)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("cairn-secrets-")
                })
                .map(|e| e.path()),
        )
        .collect();
    let find = || -> Vec<_> {
        places
            .iter()
            .flat_map(|p| files_containing(p, secret.as_bytes()))
            .collect()
    };

    let mut child = cairn
        .command(&["run", slow.to_str().unwrap(), "--progress", "plain"])
        .env("CAIRN_E2E_CRASH_TOKEN", &secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(cairn.dir("run.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(cairn.dir("run.log")).unwrap_or_default();
    // Wait until the step runs: its secret file exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut during = find();
    while during.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        during = find();
    }
    assert!(
        !during.is_empty(),
        "the step never got its secret: {}",
        log()
    );
    let running_container = || {
        std::fs::read_dir(cairn.root.join("containers"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false)
    };
    while !running_container() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // The killed process could not delete its secret files. (Any engine of this user that
    // opens meanwhile, such as another test's, may already have: they are not checked here.)
    let in_store = files_containing(&cairn.root, secret.as_bytes());
    assert!(in_store.is_empty(), "secret in the store: {in_store:?}");

    // The next engine on the store deletes what the dead one left.
    let out = cairn.run(&["run", quick.to_str().unwrap(), "--progress", "plain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<_> = find()
        .into_iter()
        .chain(files_containing(&cairn.root, secret.as_bytes()))
        .collect();
    assert!(after.is_empty(), "secret left behind: {after:?}");
    let dirs_left: Vec<_> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .chain(std::fs::read_dir(&tmp))
        .flatten()
        .flatten()
        .filter(|e| during.iter().any(|p| p.starts_with(e.path())))
        .map(|e| e.path())
        .collect();
    assert!(dirs_left.is_empty(), "secret directory left: {dirs_left:?}");
}

cairn_e2e::identity_tests!([root, subids] killed_run_leaves_no_secret_behind);
