//! The command-line contract around a pull: quiet when piped, progress on a terminal, the
//! store's default location, and `reset` of a rootless store.

use cairn_e2e::{cairn_bin, fixtures, Cairn, Who};

#[test]
fn piped_pull_prints_only_the_digest() {
    let cairn = Cairn::new(Who::Root);
    let out = cairn.run(&["pull", &fixtures().image("busybox:latest")]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("sha256:"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "stderr not empty");
}

#[test]
fn pull_on_a_terminal_shows_layer_progress() {
    let cairn = Cairn::new(Who::Root);
    let command = format!(
        "{} --root {} pull {}",
        cairn_bin().display(),
        cairn.root.display(),
        fixtures().image("layers:latest")
    );
    // `script` gives the command a pseudo-terminal, as a person's shell would.
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("done"), "no per-layer state: {screen}");
    assert!(screen.contains("B/s"), "no transfer rate: {screen}");
    assert!(
        screen.trim_end().ends_with(char::is_alphanumeric),
        "{screen}"
    );
    assert!(screen.contains("sha256:"), "{screen}");
}

#[test]
fn default_store_of_a_plain_user_is_under_xdg_data_home() {
    let user = cairn_e2e::user_without_subids();
    let who = Who::User(user);
    let scratch = cairn_e2e::Scratch::new("xdg");
    who.own(&scratch.path);
    let data_home = scratch.path.join("data");
    let out = who
        .command(cairn_e2e::cairn_bin_for(who))
        .args(["pull", &fixtures().image("busybox:latest")])
        .env("XDG_DATA_HOME", &data_home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data_home.join("cairn/metadata.db").exists());
}

#[test]
fn reset_removes_a_rootless_store_that_rm_cannot() {
    let who = Who::User(cairn_e2e::user_with_subids());
    let cairn = Cairn::new(who);
    cairn.pull(&fixtures().image("layers:latest"));
    // The store holds files of subordinate ids (and 000 directories): rm -rf as the user fails.
    let rm = who
        .command("rm")
        .arg("-rf")
        .arg(&cairn.root)
        .output()
        .unwrap();
    assert!(
        !rm.status.success(),
        "rm -rf unexpectedly removed a store with subordinate-owned files"
    );
    cairn.ok(&["reset"]);
    assert!(!cairn.root.exists(), "store still there after reset");
}

#[test]
fn rootless_export_gives_every_file_to_the_user() {
    let user = cairn_e2e::user_with_subids();
    let cairn = Cairn::new(Who::User(user));
    let reference = fixtures().image("layers:latest");
    cairn.pull(&reference);
    let dest = cairn.dir("export");
    cairn.ok(&["export", &reference, dest.to_str().unwrap()]);
    for (path, entry) in cairn_e2e::tree(&dest) {
        assert_eq!(
            (entry.uid, entry.gid),
            (user.uid, user.gid),
            "{} not the user's",
            path.display()
        );
    }
}
