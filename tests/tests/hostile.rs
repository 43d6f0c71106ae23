//! Hostile layers served by a real registry: each must fail the pull with an error that names
//! the entry, write nothing outside the store, and leave the store consistent.

use std::path::Path;

use cairn_e2e::{fixtures, gzip, push_raw_image, sha256_digest, Cairn, RawTar, Scratch, Who};

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// (case name, the layer, a word the error must contain). `OUTSIDE` is replaced by a
/// directory outside the store that must stay empty.
fn corpus(outside: &Path) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let out = outside.display().to_string();
    let rel_up = format!("../../../../../../../../..{out}");
    vec![
        (
            "dotdot",
            RawTar::default().file("../escape", b"x").finish(),
            "escape",
        ),
        (
            "absolute",
            RawTar::default().file(&format!("{out}/abs"), b"x").finish(),
            "abs",
        ),
        (
            "dotdot-inner",
            RawTar::default()
                .dir("a")
                .file(&format!("a/{rel_up}/inner"), b"x")
                .finish(),
            "inner",
        ),
        (
            "symlink-abs-then-write",
            RawTar::default()
                .symlink("evil", &out)
                .file("evil/pwned", b"x")
                .finish(),
            "evil",
        ),
        (
            "symlink-up-then-write",
            RawTar::default()
                .symlink("evil", &rel_up)
                .file("evil/pwned", b"x")
                .finish(),
            "evil",
        ),
        (
            "symlink-dir-swap",
            RawTar::default()
                .dir("d")
                .symlink("d", &out)
                .file("d/pwned", b"x")
                .finish(),
            "pwned",
        ),
        (
            "hardlink-up",
            RawTar::default()
                .hardlink("pwned", "../../../../../../../../etc/passwd")
                .finish(),
            "pwned",
        ),
        (
            "hardlink-abs",
            RawTar::default().hardlink("pwned", "/etc/passwd").finish(),
            "pwned",
        ),
        (
            "hardlink-through-symlink",
            RawTar::default()
                .symlink("etc", "/etc")
                .hardlink("pwned", "etc/passwd")
                .finish(),
            "pwned",
        ),
        (
            "whiteout-parent",
            RawTar::default().dir("a").file("a/.wh..", b"").finish(),
            ".wh..",
        ),
        (
            "whiteout-dotdot-path",
            RawTar::default().file(".wh...", b"").finish(),
            ".wh.",
        ),
        (
            "whiteout-through-symlink",
            RawTar::default()
                .symlink("evil", &out)
                .file("evil/.wh.keep", b"")
                .finish(),
            "evil",
        ),
    ]
}

fn check(who: Who) {
    let fx = fixtures();
    let outside = Scratch::new("outside");
    std::fs::write(outside.path.join("keep"), b"sentinel").unwrap();
    let before = cairn_e2e::tree(&outside.path);
    let cairn = Cairn::new(who);
    // The corpus names this test's own scratch directory, so each identity pushes different
    // layers: to a repository of its own, or concurrent pushes to one tag race.
    let run = sha256_digest(outside.path.to_string_lossy().as_bytes());
    let run = &run["sha256:".len().."sha256:".len() + 12];
    for (case, tar, word) in corpus(&outside.path) {
        let diff_id = sha256_digest(&tar);
        let reference = push_raw_image(
            fx.registry(),
            &format!("hostile/{case}-{run}"),
            "latest",
            &[(LAYER, gzip(&tar), diff_id)],
        );
        let err = cairn.fails(&["pull", &reference]);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{case}: not one line:\n{err}"
        );
        assert!(
            err.contains(word),
            "{case} as {}: error does not name the entry ({word}): {err}",
            who.label()
        );
        assert_eq!(
            cairn_e2e::tree(&outside.path),
            before,
            "{case} wrote outside the store"
        );
        assert!(!Path::new("/etc/passwd")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // Every failed unpack was thrown away: no snapshot, nothing in flight, nothing listed.
    assert_eq!(cairn.ok(&["images", "--format", "json"]), "");
    let snapshots: Vec<_> = std::fs::read_dir(cairn.root.join("snapshots"))
        .unwrap()
        .collect();
    assert!(
        snapshots.is_empty(),
        "snapshot directories left: {snapshots:?}"
    );
    assert_eq!(
        std::fs::read_dir(cairn.root.join("ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn hostile_layers_are_refused_as_root() {
    check(Who::Root);
}

#[test]
fn hostile_layers_are_refused_rootless() {
    check(Who::User(cairn_e2e::user_with_subids()));
}
