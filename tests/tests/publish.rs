//! Publishing, end to end, as root and as a plain user with subordinate ids: a pipeline builds
//! on the busybox fixture, adds files, removes a file the base image has, sets an entrypoint
//! and publishes to the fixture registry. Then tools nobody here wrote look at the result:
//! `skopeo inspect` reads the config, `podman run` (as the same identity) sees the files and runs the
//! entrypoint, and `umoci unpack` of a `skopeo copy` matches `cairn export`. Pushing again
//! uploads nothing; the same pipeline in another store gives the same layer digests.

use std::path::Path;
use std::process::Command;

use cairn_e2e::{diff_trees, fixtures, umoci_unpack, Cairn, FixtureImage, Who};
use serde_json::Value;

cairn_e2e::identity_tests!([root, subids, nosubids] publish_push_and_check_with_other_tools);

const EPOCH: &str = "1700000000";

fn pipeline(base: &str, target: &str) -> String {
    format!(
        r#"[steps.app]
image = "{base}"
run = """
test -e /etc/cairn-fixture
rm /etc/cairn-fixture
mkdir -p /srv/data
echo generated > /srv/data/gen.txt
ln /srv/data/gen.txt /srv/data/gen-link.txt
printf '#!/bin/sh\necho "entry:$*"\ncat /srv/added.txt\n' > /entry.sh
chmod 755 /entry.sh
"""
inputs = [ {{ host = "src", to = "/srv" }} ]
publish = "{target}"
entrypoint = ["/entry.sh"]
cmd = ["default-arg"]
labels = {{ "org.opencontainers.image.title" = "cairn-e2e" }}
"#
    )
}

/// Runs the pipeline in `cairn`'s store; returns the publish line of the JSON progress.
fn publish(cairn: &Cairn, base: &str, target: &str) -> Value {
    let dir = cairn.dir("project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/added.txt"), "added by cairn\n").unwrap();
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, pipeline(base, target)).unwrap();
    cairn.who.own(&dir);
    let out = cairn
        .command(&["run", file.to_str().unwrap(), "--progress", "json"])
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn run as {}: {}\n{}",
        cairn.who.label(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("reference").is_some() && v.get("digest").is_some())
        .unwrap_or_else(|| {
            panic!(
                "no publish line in {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo_inspect(reference: &str, config: bool) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if config {
        cmd.arg("--config");
    }
    cmd.arg(format!("docker://{reference}"));
    serde_json::from_str(&run(&mut cmd)).unwrap()
}

/// `podman run` as `who`, with its own storage under `dir`: runc (crun cannot run on this
/// host's hybrid cgroups), explicit limits (root lacks CAP_SYS_RESOURCE here) and no network
/// (slirp4netns needs /dev/net/tun, which plain users cannot open here).
fn podman_run(who: Who, dir: &Path, runroot: &Path, args: &[&str]) -> String {
    let mut cmd = who.command("podman");
    cmd.env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(runroot);
    cmd.args([
        "run",
        "--rm",
        "--tls-verify=false",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "none",
    ]);
    cmd.args(args);
    run(&mut cmd)
}

fn publish_push_and_check_with_other_tools(who: Who) {
    let fx = fixtures();
    let base = fx.image("busybox:latest");
    let run_id = format!("{}-{}", std::process::id(), who.label());
    let target = format!("{}/publish-e2e/app-{run_id}:v1", fx.registry());

    let cairn = Cairn::new(who);
    let line = publish(&cairn, &base, &target);
    let digest = line["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{line}");
    // The base layer came from fixtures/busybox on the same registry: mounted, not uploaded.
    let base_layers = skopeo_inspect(&base, false)["Layers"].clone();
    let mounted: Vec<&str> = line["mounted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounted,
        [base_layers[0].as_str().unwrap()],
        "base layer mounted: {line}"
    );

    // skopeo sees the config.
    let inspect = skopeo_inspect(&target, false);
    assert_eq!(inspect["Digest"], digest.as_str());
    let layers = inspect["Layers"].as_array().unwrap().clone();
    assert_eq!(layers[0], base_layers[0], "base layer reused blob for blob");
    assert_eq!(layers.len(), 3, "base + copy + exec: {inspect}");
    let config = skopeo_inspect(&target, true);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/entry.sh"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["default-arg"]));
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"],
        "cairn-e2e"
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

    // podman runs it: the entrypoint, the added files, not the removed one. (Rootless podman
    // needs subordinate ids to pull; the user without them is checked by umoci below.)
    let without_subids =
        matches!(who, Who::User(u) if u.name == cairn_e2e::user_without_subids().name);
    if !without_subids {
        let podman = cairn.dir("podman");
        std::fs::create_dir_all(podman.join("xdg")).unwrap();
        who.own(&podman);
        // podman wants a run root of at most 50 characters.
        let runroot = Path::new("/tmp").join(format!("cairn-pr-{run_id}"));
        std::fs::create_dir_all(&runroot).unwrap();
        who.own(&runroot);
        let out = podman_run(who, &podman, &runroot, &[&target, "one", "two"]);
        assert_eq!(out, "entry:one two\nadded by cairn\n");
        let out = podman_run(
            who,
            &podman,
            &runroot,
            &[
                "--entrypoint",
                "sh",
                &target,
                "-c",
                "cat /srv/data/gen.txt; test ! -e /etc/cairn-fixture && echo removed; \
                 test /srv/data/gen.txt -ef /srv/data/gen-link.txt && echo linked",
            ],
        );
        let _ = std::fs::remove_dir_all(&runroot);
        assert_eq!(out, "generated\nremoved\nlinked\n");
    }

    // umoci unpack of skopeo's copy matches cairn export.
    let layout = cairn.dir("skopeo-layout");
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:v1", layout.display()),
    ]));
    let umoci_scratch = cairn.dir("umoci");
    std::fs::create_dir_all(&umoci_scratch).unwrap();
    who.own(&umoci_scratch);
    let expected = umoci_unpack(
        &FixtureImage {
            reference: target.clone(),
            layout: layout.clone(),
            tag: "v1".into(),
        },
        who,
        &umoci_scratch,
    );
    let export = cairn.dir("export");
    cairn.ok(&["export", &target, export.to_str().unwrap()]);
    let diffs = diff_trees(&expected, &export);
    assert!(
        diffs.is_empty(),
        "as {}: cairn export differs from umoci unpack in {} place(s):\n{}",
        who.label(),
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!Path::new(&export).join("etc/cairn-fixture").exists());

    // `cairn images` lists it; pushing again uploads nothing.
    assert!(cairn.ok(&["images"]).contains(&digest));
    let again: Value = serde_json::from_str(&cairn.ok(&["push", &target, "--json"])).unwrap();
    assert_eq!(again["digest"], digest.as_str());
    assert_eq!(again["uploaded"], serde_json::json!([]), "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 4, "{again}");
    // To another repository of the same registry: everything is mounted.
    let copy = format!("{}/publish-e2e/copy-{run_id}:v1", fx.registry());
    let copied: Value =
        serde_json::from_str(&cairn.ok(&["push", &target, &copy, "--json"])).unwrap();
    assert_eq!(copied["uploaded"], serde_json::json!([]), "{copied}");
    assert_eq!(copied["mounted"].as_array().unwrap().len(), 4, "{copied}");
    assert_eq!(skopeo_inspect(&copy, false)["Digest"], digest.as_str());

    // Another store, the same pipeline: the same layers.
    let other = Cairn::new(who);
    let target2 = format!("{}/publish-e2e/other-{run_id}:v1", fx.registry());
    publish(&other, &base, &target2);
    let layers2 = skopeo_inspect(&target2, false)["Layers"].clone();
    assert_eq!(layers2, Value::Array(layers), "same snapshot, same layers");
}
