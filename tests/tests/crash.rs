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
    for round in 0..rounds {
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
        "only {killed_mid_way} of {rounds} kills hit a running pull"
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
