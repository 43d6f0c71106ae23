//! Every failure exits non-zero with one clear line on stderr naming what is at fault.

use std::path::Path;

use cairn_e2e::{fixtures, gzip, push_raw_image, sha256_digest, Cairn, RawTar, Scratch, Who};

fn one_line(err: &str) -> &str {
    let trimmed = err.trim();
    assert_eq!(
        trimmed.lines().count(),
        1,
        "expected one line on stderr, got:\n{err}"
    );
    trimmed
}

#[test]
fn unknown_image() {
    let cairn = Cairn::new(Who::Root);
    let reference = fixtures().image("does-not-exist:latest");
    let err = cairn.fails(&["pull", &reference]);
    let line = one_line(&err);
    assert!(
        line.contains("does-not-exist") && line.contains("no manifest"),
        "{line}"
    );
    let err = cairn.fails(&["export", "nothing:here", cairn.dir("x").to_str().unwrap()]);
    assert!(one_line(&err).contains("not in the store"), "{err}");
}

#[test]
fn malformed_reference() {
    let cairn = Cairn::new(Who::Root);
    let err = cairn.fails(&["pull", "Not A//Reference"]);
    assert!(one_line(&err).contains("invalid image reference"), "{err}");
}

#[test]
fn registry_unreachable() {
    let cairn = Cairn::new(Who::Root);
    // Nothing listens on port 9 of loopback.
    let err = cairn.fails(&["pull", "127.0.0.1:9/fixtures/busybox:latest"]);
    let line = one_line(&err);
    assert!(
        line.contains("127.0.0.1:9") && line.contains("unreachable"),
        "{line}"
    );
}

#[test]
fn corrupted_blob_is_rejected_and_not_kept() {
    let fx = fixtures();
    let registry = fx.var("CAIRN_TEST_REGISTRY_CORRUPT");
    for who in [Who::Root, Who::User(cairn_e2e::user_with_subids())] {
        let cairn = Cairn::new(who);
        let err = cairn.fails(&["pull", &format!("{registry}/fixtures/corrupt:latest")]);
        let line = one_line(&err);
        assert!(
            line.contains(registry) && line.contains("sha256:"),
            "{line}"
        );
        assert!(line.contains("digest"), "{line}");
        // The corrupted blob is nowhere in the store, and nothing is half-done.
        let manifest_layers = cairn.root.join("blobs/sha256");
        for blob in std::fs::read_dir(&manifest_layers).unwrap() {
            let path = blob.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                sha256_digest(&data),
                format!("sha256:{name}"),
                "blob {name} is not what its name says"
            );
        }
        assert_eq!(
            std::fs::read_dir(cairn.root.join("ingest"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(cairn.ok(&["images", "--format", "json"]), "");
    }
}

#[test]
fn unsupported_layer_media_type() {
    let fx = fixtures();
    let tar = RawTar::default().file("hello", b"hi").finish();
    let reference = push_raw_image(
        fx.registry(),
        "odd/mediatype",
        "latest",
        &[(
            "application/vnd.example.layer.v1.tar+lz4",
            tar.clone(),
            sha256_digest(&tar),
        )],
    );
    let cairn = Cairn::new(Who::Root);
    let err = cairn.fails(&["pull", &reference]);
    let line = one_line(&err);
    assert!(
        line.contains("unsupported") && line.contains("tar+lz4"),
        "{line}"
    );
}

#[test]
fn diff_id_that_does_not_match_is_rejected() {
    let fx = fixtures();
    let tar = RawTar::default().file("hello", b"hi").finish();
    let wrong = sha256_digest(b"something else");
    let reference = push_raw_image(
        fx.registry(),
        "odd/diffid",
        "latest",
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            gzip(&tar),
            wrong.clone(),
        )],
    );
    let cairn = Cairn::new(Who::Root);
    let err = cairn.fails(&["pull", &reference]);
    assert!(one_line(&err).contains(&wrong), "{err}");
    assert_eq!(
        std::fs::read_dir(cairn.root.join("snapshots"))
            .unwrap()
            .count(),
        0
    );
}

fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let auth = {
        // base64 of user:password, by hand to keep the harness small.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let data = format!("{user}:{password}").into_bytes();
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let mut f = std::fs::File::create(dir.join("config.json")).unwrap();
    write!(f, r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#).unwrap();
}

#[test]
fn basic_and_token_auth_from_docker_config() {
    let fx = fixtures();
    let (user, password) = (
        fx.var("CAIRN_TEST_REGISTRY_USER"),
        fx.var("CAIRN_TEST_REGISTRY_PASSWORD"),
    );
    for key in ["CAIRN_TEST_REGISTRY_BASIC", "CAIRN_TEST_REGISTRY_TOKEN"] {
        let registry = fx.var(key);
        let reference = format!("{registry}/fixtures/busybox:latest");
        let cairn = Cairn::new(Who::Root);
        // Anonymous: refused, and the message says so.
        let err = cairn.fails(&["pull", &reference]);
        let line = one_line(&err);
        assert!(
            line.contains(registry) && line.contains("refused"),
            "{key}: {line}"
        );
        // Wrong password: refused.
        let bad = Scratch::new("docker-bad");
        docker_config(&bad.path, registry, user, "wrong");
        let out = cairn
            .command(&["pull", &reference])
            .env("DOCKER_CONFIG", &bad.path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}: wrong password accepted");
        assert!(one_line(&String::from_utf8_lossy(&out.stderr)).contains("refused"));
        // Right password: pulled.
        let good = Scratch::new("docker-good");
        docker_config(&good.path, registry, user, password);
        let out = cairn
            .command(&["pull", &reference])
            .env("DOCKER_CONFIG", &good.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn disk_full_is_reported_and_leaves_nothing_half_written() {
    let fx = fixtures();
    let cairn = Cairn::new(Who::Root);
    std::fs::create_dir_all(&cairn.root).unwrap();
    // A store on a 6 MiB tmpfs: the Debian layer cannot fit.
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&cairn.root)
        .status()
        .unwrap();
    assert!(mount.success(), "mount tmpfs");
    let result = std::panic::catch_unwind(|| {
        let err = cairn.fails(&["pull", &fx.image("debian:bookworm")]);
        let line = one_line(&err);
        assert!(
            line.contains("No space left") || line.contains("no space left"),
            "{line}"
        );
        // Nothing half-written is taken as complete: every blob verifies, nothing in flight.
        for blob in std::fs::read_dir(cairn.root.join("blobs/sha256")).unwrap() {
            let path = blob.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                sha256_digest(&std::fs::read(&path).unwrap()),
                format!("sha256:{name}")
            );
        }
        assert_eq!(
            std::fs::read_dir(cairn.root.join("ingest"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(cairn.ok(&["images", "--format", "json"]), "");
        // A small image still fits afterwards.
        cairn.pull(&fx.image("busybox:latest"));
    });
    let _ = std::process::Command::new("umount")
        .arg(&cairn.root)
        .status();
    result.unwrap();
}

#[test]
fn credentials_from_a_docker_credential_helper() {
    let fx = fixtures();
    let registry = fx.var("CAIRN_TEST_REGISTRY_TOKEN");
    let (user, password) = (
        fx.var("CAIRN_TEST_REGISTRY_USER"),
        fx.var("CAIRN_TEST_REGISTRY_PASSWORD"),
    );
    let dir = Scratch::new("cred-helper");
    // A helper as Docker runs them: `docker-credential-NAME get`, server on stdin, JSON out.
    let helper = dir.path.join("docker-credential-cairntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = {registry} ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"{registry}\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = dir.path.join("docker");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(r#"{{"credHelpers": {{"{registry}": "cairntest"}}}}"#),
    )
    .unwrap();
    let cairn = Cairn::new(Who::Root);
    let path = format!(
        "{}:{}",
        dir.path.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cairn
        .command(&["pull", &format!("{registry}/fixtures/busybox:latest")])
        .env("DOCKER_CONFIG", &config)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
