//! Image archives: `cairn export --format oci|oci-archive|docker-archive` read by tools nobody
//! here wrote (skopeo, umoci, podman), `cairn import` and the `oci:`/`oci-archive:`/
//! `docker-archive:` sources round-tripping through another store, archives written by skopeo
//! imported and run, hostile archives refused with the member named and nothing recorded, and
//! a killed export never leaving a destination that looks complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cairn_e2e::{diff_trees, fixtures, umoci_unpack, Cairn, FixtureImage, RawTar, Who};

/// Runs a command as `who` and insists on success; returns stdout.
fn run_ok(who: Who, program: &str, args: &[&str]) -> String {
    let out = who
        .command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} as {} failed ({}):\n{}",
        who.label(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The image names in a store, with their digests.
fn listing(cairn: &Cairn) -> BTreeMap<String, String> {
    cairn
        .ok(&["images", "--format", "json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["reference"].as_str().unwrap().to_owned(),
                v["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn skopeo_digest(who: Who, transport: &str) -> String {
    let out = run_ok(who, "skopeo", &["inspect", transport]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

/// Pull busybox, export it in every format; skopeo and umoci read the OCI forms; another store
/// imports each (from the file and through the transports) with the same manifest digest and
/// runs it.
fn export_formats_round_trip(who: Who) {
    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(who);
    let digest = cairn.pull(&reference);
    let rootfs = cairn.dir("rootfs");
    let layout = cairn.dir("layout");
    let oci_tar = cairn.dir("busybox-oci.tar");
    let docker_tar = cairn.dir("busybox-docker.tar");
    cairn.ok(&["export", &reference, path_str(&rootfs)]);
    cairn.ok(&["export", "--format", "oci", &reference, path_str(&layout)]);
    cairn.ok(&[
        "export",
        "--format",
        "oci-archive",
        &reference,
        path_str(&oci_tar),
    ]);
    cairn.ok(&[
        "export",
        "--format",
        "docker-archive",
        &reference,
        path_str(&docker_tar),
    ]);
    // Exporting again replaces an archive file atomically.
    cairn.ok(&[
        "export",
        "--format",
        "oci-archive",
        &reference,
        path_str(&oci_tar),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        reference.as_str()
    );
    assert!(layout.join("oci-layout").is_file());

    // Tools nobody here wrote see the very manifest the registry served.
    assert_eq!(
        skopeo_digest(who, &format!("oci:{}", layout.display())),
        digest
    );
    assert_eq!(
        skopeo_digest(who, &format!("oci-archive:{}", oci_tar.display())),
        digest
    );
    let docker_inspect = run_ok(
        who,
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("docker-archive:{}", docker_tar.display()),
        ],
    );
    assert!(docker_inspect.contains("\"diff_ids\""), "{docker_inspect}");

    // umoci unpacks the exported layout into what `cairn export` wrote.
    let umoci_scratch = cairn.dir("umoci");
    fs::create_dir(&umoci_scratch).unwrap();
    who.own(&umoci_scratch);
    let unpacked = umoci_unpack(
        &FixtureImage {
            reference: reference.clone(),
            layout: layout.clone(),
            tag: reference.clone(),
        },
        who,
        &umoci_scratch,
    );
    let diffs = diff_trees(&unpacked, &rootfs);
    assert!(
        diffs.is_empty(),
        "umoci unpack of the exported layout differs from cairn export:\n{}",
        diffs.join("\n")
    );

    // Another store imports every form.
    let other = Cairn::new(who);
    let imported = other.ok(&["import", path_str(&layout), "localhost/archive/oci:1"]);
    assert_eq!(imported.trim(), digest);
    let imported = other.ok(&["import", path_str(&oci_tar)]);
    assert_eq!(
        imported.trim(),
        digest,
        "same manifest digest after a round trip"
    );
    let imported = other.ok(&[
        "import",
        path_str(&docker_tar),
        "localhost/archive/docker:1",
    ]);
    assert!(imported.trim().starts_with("sha256:"));
    let images = listing(&other);
    assert_eq!(images.get("localhost/archive/oci:1"), Some(&digest));
    // Without a name, the archive's own ref name.
    assert_eq!(images.get(&reference), Some(&digest));
    assert_eq!(
        images.get("localhost/archive/docker:1").map(String::as_str),
        Some(imported.trim())
    );
    let out = other.ok(&[
        "exec",
        "localhost/archive/docker:1",
        "--",
        "cat",
        "/etc/passwd",
    ]);
    assert!(out.contains("root:"), "{out}");
    // The imported image's rootfs is the original's.
    let again = other.dir("again");
    other.ok(&["export", "localhost/archive/docker:1", path_str(&again)]);
    let diffs = diff_trees(&rootfs, &again);
    assert!(
        diffs.is_empty(),
        "docker-archive round trip differs:\n{}",
        diffs.join("\n")
    );

    // The transports work wherever a reference does, in a store that has never seen the image.
    for source in [
        format!("oci-archive:{}", oci_tar.display()),
        format!("oci:{}", layout.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ] {
        let fresh = Cairn::new(who);
        let out = fresh.ok(&["exec", &source, "--", "cat", "/etc/passwd"]);
        assert!(out.contains("root:"), "{source}: {out}");
        // Run again: found in the store, not imported twice.
        let out = fresh.ok(&["exec", &source, "--", "cat", "/etc/group"]);
        assert!(out.contains("root:"), "{source}: {out}");
        assert_eq!(listing(&fresh).len(), 1, "{source}");
        let pulled = fresh.pull(&source);
        assert!(pulled.starts_with("sha256:"));
    }
}

/// podman loads the OCI and docker archives and runs them (root: podman needs the host's
/// network and storage).
fn podman_loads_exports(who: Who) {
    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(who);
    cairn.pull(&reference);
    let layout = cairn.dir("layout");
    cairn.ok(&["export", "--format", "oci", &reference, path_str(&layout)]);
    let pid = std::process::id();
    for format in ["oci-archive", "docker-archive"] {
        let name = format!("localhost/cairn-archive-test/{format}:{pid}");
        cairn.ok(&["import", path_str(&layout), &name]);
        let archive = cairn.dir(&format!("{format}.tar"));
        cairn.ok(&["export", "--format", format, &name, path_str(&archive)]);
        let loaded = run_ok(who, "podman", &["load", "-i", path_str(&archive)]);
        assert!(loaded.contains(&name), "podman load {format}: {loaded}");
        // Root here lacks CAP_SYS_RESOURCE and crun cannot run on this hybrid cgroup host
        // (see shared/notes/host-facts.md).
        let out = run_ok(
            who,
            "podman",
            &[
                "run",
                "--rm",
                "--runtime",
                "runc",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1000:1000",
                &name,
                "cat",
                "/etc/passwd",
            ],
        );
        assert!(out.contains("root:"), "podman run {format}: {out}");
        run_ok(who, "podman", &["rmi", &name]);
    }
}

/// Archives that skopeo wrote from the registry import and run.
fn skopeo_archives_import_and_run(who: Who) {
    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(who);
    let oci_tar = cairn.dir("skopeo-oci.tar");
    let docker_tar = cairn.dir("skopeo-docker.tar");
    // skopeo reads registry credentials from /run/containers/UID, which a plain user of this
    // host cannot: it copies as root and the archives are given to the user.
    run_ok(
        Who::Root,
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci-archive:{}:v1", oci_tar.display()),
        ],
    );
    run_ok(
        Who::Root,
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!(
                "docker-archive:{}:localhost/skopeo/busybox:v2",
                docker_tar.display()
            ),
        ],
    );
    who.own(&oci_tar);
    who.own(&docker_tar);
    let registry_digest = skopeo_digest(who, &format!("oci-archive:{}", oci_tar.display()));
    let out = cairn.ok(&[
        "exec",
        &format!("oci-archive:{}:v1", oci_tar.display()),
        "--",
        "cat",
        "/etc/passwd",
    ]);
    assert!(out.contains("root:"), "{out}");
    let images = listing(&cairn);
    // skopeo named the entry just "v1": the file gives the repository.
    assert_eq!(
        images.get("localhost/skopeo-oci:v1"),
        Some(&registry_digest),
        "{images:?}"
    );
    let digest = cairn.ok(&["import", path_str(&docker_tar)]);
    let images = listing(&cairn);
    assert_eq!(
        images
            .get("localhost/skopeo/busybox:v2")
            .map(String::as_str),
        Some(digest.trim()),
        "{images:?}"
    );
    let out = cairn.ok(&["exec", "localhost/skopeo/busybox:v2", "--", "ls", "/bin/sh"]);
    assert!(out.contains("/bin/sh"), "{out}");
}

/// Changes (or, with `None`, drops) a member of an archive being built.
type Edit<'a> = &'a dyn Fn(&str, &[u8]) -> Option<Vec<u8>>;

/// The members of busybox's OCI layout, by name.
fn layout_members(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut members = vec![
        (
            "oci-layout".to_owned(),
            fs::read(layout.join("oci-layout")).unwrap(),
        ),
        (
            "index.json".to_owned(),
            fs::read(layout.join("index.json")).unwrap(),
        ),
    ];
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        members.push((
            format!("blobs/sha256/{}", entry.file_name().to_string_lossy()),
            fs::read(entry.path()).unwrap(),
        ));
    }
    members
}

/// Hostile archives built here fail with the archive and member named, and leave the image
/// listing as it was.
fn hostile_archives_are_refused(who: Who) {
    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(who);
    cairn.pull(&reference);
    let layout = cairn.dir("layout");
    cairn.ok(&["export", "--format", "oci", &reference, path_str(&layout)]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = format!(
        "blobs/sha256/{}",
        &manifest["layers"][0]["digest"].as_str().unwrap()[7..]
    );
    let members = layout_members(&layout);
    let build = |edit: Edit<'_>, extra: &dyn Fn(RawTar) -> RawTar| {
        let mut tar = RawTar::default();
        for (name, data) in &members {
            if let Some(data) = edit(name, data) {
                tar = tar.file(name, &data);
            }
        }
        extra(tar).finish()
    };
    let keep = |_: &str, d: &[u8]| Some(d.to_vec());
    let none = |t: RawTar| t;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "traversal",
            build(&keep, &|t| t.file("../../../tmp/cairn-owned", b"x")),
            vec!["../../../tmp/cairn-owned", "escapes the archive"],
        ),
        (
            "symlinked-layer",
            build(&|n, d| (n != layer).then(|| d.to_vec()), &|t| {
                t.symlink(&layer, "../../../../etc/shadow")
            }),
            vec![layer.as_str(), "outside the archive"],
        ),
        (
            "absolute-symlink",
            build(&|n, d| (n != layer).then(|| d.to_vec()), &|t| {
                t.symlink(&layer, "/etc/shadow")
            }),
            vec![layer.as_str(), "absolute path"],
        ),
        (
            "digest-mismatch",
            build(
                &|n, d| {
                    let mut d = d.to_vec();
                    if n == layer {
                        let mid = d.len() / 2;
                        d[mid] ^= 0xff;
                    }
                    Some(d)
                },
                &none,
            ),
            vec![layer.as_str(), "does not match its digest"],
        ),
        (
            "missing-blob",
            build(&|n, d| (n != layer).then(|| d.to_vec()), &none),
            vec![layer.as_str(), "not in the archive"],
        ),
        (
            "huge-index",
            build(
                &|n, d| {
                    if n == "index.json" {
                        let mut big = b"{\"manifests\":[],\"pad\":\"".to_vec();
                        big.resize(9 << 20, b'a');
                        big.extend_from_slice(b"\"}");
                        Some(big)
                    } else {
                        Some(d.to_vec())
                    }
                },
                &none,
            ),
            vec!["index.json", "bytes allowed"],
        ),
        (
            "not-a-tar",
            b"hello, this is not a tar archive".repeat(40),
            vec!["not"],
        ),
    ];
    let before = listing(&cairn);
    for (name, bytes, words) in cases {
        // A store that has never seen the blobs, so every check is exercised.
        let fresh = Cairn::new(who);
        let archive = fresh.dir(&format!("{name}.tar"));
        fs::write(&archive, &bytes).unwrap();
        who.own(&archive);
        for store in [&cairn, &fresh] {
            let err = store.fails(&["import", path_str(&archive)]);
            assert!(
                err.contains(path_str(&archive)),
                "{name}: the error must name the archive: {err}"
            );
            for word in &words {
                assert!(err.contains(word), "{name}: expected {word:?} in: {err}");
            }
        }
        // The same through a transport, in the store that has never seen the image (the
        // other finds the manifest digest it already holds and needs nothing from the file).
        let err = fresh.fails(&[
            "exec",
            &format!("oci-archive:{}", archive.display()),
            "--",
            "true",
        ]);
        assert!(err.contains(words[0]), "{name} via exec: {err}");
        assert!(listing(&fresh).is_empty(), "{name}: an image was recorded");
        assert_eq!(listing(&cairn), before, "{name}: the listing changed");
    }
    assert!(!Path::new("/tmp/cairn-owned").exists());
}

/// A `cairn export` killed at any moment leaves either no destination or a complete one.
fn killed_export_leaves_no_complete_dest(who: Who) {
    let fx = fixtures();
    let reference = fx.image("debian:bookworm");
    let cairn = Cairn::new(who);
    let digest = cairn.pull(&reference);
    let mut killed_midway = 0;
    for (i, delay_ms) in [30u64, 150, 400, 900, 1600].into_iter().enumerate() {
        for format in ["oci-archive", "docker-archive", "oci"] {
            let dest: PathBuf = cairn.dir(&format!("kill-{i}-{format}"));
            let mut child = cairn
                .command(&["export", "--format", format, &reference, path_str(&dest)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            // setpriv execs cairn, so the child's pid is cairn's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let status = child.wait().unwrap();
            // Finished before the kill, or killed after its rename into place (while it
            // synced the directory or exited): either way a dest that exists must be whole.
            if status.success() || dest.exists() {
                let d = skopeo_digest(who, &format!("{format}:{}", dest.display()));
                if format != "docker-archive" {
                    assert_eq!(d, digest, "{format} at {} is not whole", dest.display());
                }
                continue;
            }
            // Killed before its rename: nothing at dest (any dest took the branch above).
            killed_midway += 1;
        }
    }
    assert!(killed_midway > 0, "no export was killed before it finished");
    // What the killed runs left behind does not stop the next export.
    let dest = cairn.dir("after");
    cairn.ok(&[
        "export",
        "--format",
        "oci-archive",
        &reference,
        path_str(&dest),
    ]);
    assert_eq!(
        skopeo_digest(who, &format!("oci-archive:{}", dest.display())),
        digest
    );
}

cairn_e2e::identity_tests!([root, subids] export_formats_round_trip, skopeo_archives_import_and_run, hostile_archives_are_refused, killed_export_leaves_no_complete_dest);
cairn_e2e::identity_tests!([root] podman_loads_exports);

/// The embedding API: `Container::import` of each archive format (detected), and the
/// transports in `from`, run a container of the archived image.
#[test]
fn engine_container_import() {
    use cairn_e2e::{cairn_bin, Scratch};
    use cairn_images::{HelperProgram, StoreOptions};

    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(Who::Root);
    let digest = cairn.pull(&reference);
    let layout = cairn.dir("layout");
    let oci_tar = cairn.dir("image.tar");
    let docker_tar = cairn.dir("docker.tar");
    cairn.ok(&["export", "--format", "oci", &reference, path_str(&layout)]);
    cairn.ok(&[
        "export",
        "--format",
        "oci-archive",
        &reference,
        path_str(&oci_tar),
    ]);
    cairn.ok(&[
        "export",
        "--format",
        "docker-archive",
        &reference,
        path_str(&docker_tar),
    ]);

    let scratch = Scratch::new("engine-import");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut options = StoreOptions::new(scratch.path.join("store"));
    // The test binary does not call cairn_images::init: the cairn binary is the helper.
    options.helper = HelperProgram::Path(cairn_bin());
    let engine = rt.block_on(cairn_engine::Engine::open(options)).unwrap();
    rt.block_on(async {
        for archive in [&oci_tar, &layout, &docker_tar] {
            let c = engine.container().import(archive).unwrap().with_exec([
                "sh",
                "-c",
                "head -1 /etc/passwd",
            ]);
            let out = c.stdout().await.unwrap();
            assert!(out.starts_with("root:"), "{}: {out}", archive.display());
        }
        let from = engine
            .container()
            .from(format!("oci-archive:{}", oci_tar.display()))
            .with_exec(["true"]);
        from.sync().await.unwrap();
        // Container::export: a container's state as an image archive, which skopeo reads and
        // another store imports and runs, with the file the exec wrote and the entrypoint set.
        let built = engine
            .container()
            .from(&reference)
            .with_exec(["sh", "-c", "echo exported > /exported.txt"])
            .with_entrypoint(["cat", "/exported.txt"]);
        let exported = cairn.dir("exported.tar");
        let digest = built.export(&exported).await.unwrap();
        let inspect = std::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", exported.display()))
            .output()
            .unwrap();
        assert!(inspect.status.success(), "{inspect:?}");
        let raw = String::from_utf8_lossy(&inspect.stdout);
        let manifest_digest = format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes())
        );
        assert_eq!(manifest_digest, digest.to_string(), "{raw}");
        let other = Cairn::new(Who::Root);
        let out = other.ok(&["exec", &format!("oci-archive:{}", exported.display())]);
        assert_eq!(out, "exported\n");
        let layout = cairn.dir("exported-layout");
        built
            .export_with(
                &layout,
                "localhost/e2e/exported:v1",
                cairn_engine::ArchiveFormat::OciLayout,
                &Default::default(),
            )
            .await
            .unwrap();
        assert!(layout.join("index.json").is_file());
        let err = engine
            .container()
            .import(cairn.dir("missing.tar"))
            .err()
            .expect("a missing archive fails");
        assert!(err.to_string().contains("missing.tar"), "{err}");
    });
    let store = cairn_images::Store::open(StoreOptions::new(scratch.path.join("store"))).unwrap();
    let images = store.images().unwrap();
    assert!(
        images.iter().any(|i| i.digest.as_str() == digest),
        "{images:?}"
    );
}
