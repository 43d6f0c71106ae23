//! Harness for cairn's end-to-end tests: the fixture registries, test users, a `cairn` runner
//! that works as root or as a plain user, and a tree comparison that shows every difference.
//!
//! The fixtures come from `rootfs-fixtures/setup.sh`, which `.ci/run` runs first. Tests fail
//! (they never skip) when the fixtures or root privileges are missing.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// One image the fixtures pushed, with the OCI layout it came from.
#[derive(Debug, Clone)]
pub struct FixtureImage {
    pub reference: String,
    pub layout: PathBuf,
    pub tag: String,
}

#[derive(Debug)]
pub struct Fixtures {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub images: Vec<FixtureImage>,
}

impl Fixtures {
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {}/env", self.dir.display()))
    }

    /// The anonymous registry, `127.0.0.1:PORT`.
    pub fn registry(&self) -> &str {
        self.var("CAIRN_TEST_REGISTRY")
    }

    /// A reference on the anonymous registry: `image("busybox:latest")`.
    pub fn image(&self, name_tag: &str) -> String {
        format!("{}/fixtures/{name_tag}", self.registry())
    }

    /// The fixture image pushed as `reference`.
    pub fn fixture(&self, reference: &str) -> &FixtureImage {
        self.images
            .iter()
            .find(|i| i.reference == reference)
            .unwrap_or_else(|| panic!("{reference} is not in {}/images.txt", self.dir.display()))
    }
}

/// The fixtures, loaded once. Panics with instructions if they are not set up.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::var_os("CAIRN_FIXTURES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".fixtures"));
        let env_text = fs::read_to_string(dir.join("env")).unwrap_or_else(|e| {
            panic!(
                "fixtures missing ({}/env: {e}); run `bash rootfs-fixtures/setup.sh` first (.ci/run does)",
                dir.display()
            )
        });
        let env = env_text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let images = fs::read_to_string(dir.join("images.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some(FixtureImage {
                    reference: parts.next()?.to_owned(),
                    layout: PathBuf::from(parts.next()?),
                    tag: parts.next()?.to_owned(),
                })
            })
            .collect();
        Fixtures { dir, env, images }
    })
}

/// The `cairn` binary that `cargo test --workspace` built.
pub fn cairn_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CAIRN_BIN") {
        return bin.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("cairn");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The binary as `who` can run it: plain users get a copy in a world-readable place, since
/// the checkout may sit below a directory only root can enter (CI clones anywhere).
pub fn cairn_bin_for(who: Who) -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    match who {
        Who::Root => cairn_bin(),
        Who::User(_) => COPY.get_or_init(|| runnable_copy(&cairn_bin())).clone(),
    }
}

/// A copy of the program `source` that every user can run, in a world-readable place;
/// one copy per build (named by size and time), shared by the test processes of a run.
pub fn runnable_copy(source: &Path) -> PathBuf {
    let meta = fs::metadata(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let dir = std::env::temp_dir().join("cairn-e2e-bin");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stem = source.file_name().unwrap().to_string_lossy();
    let bin = dir.join(format!("{stem}-{}-{}", meta.len(), meta.mtime()));
    if !bin.exists() {
        // Copies of other builds may be in use by another checkout's test run: only old
        // ones go.
        for stale in fs::read_dir(&dir).unwrap().flatten() {
            let old = stale
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if old {
                let _ = fs::remove_file(stale.path());
            }
        }
        let temp = dir.join(format!(".{stem}-{}", std::process::id()));
        fs::copy(source, &temp).unwrap();
        fs::rename(&temp, &bin).unwrap();
    }
    bin
}

/// An example program of the workspace (`target/debug/examples/NAME`), which
/// `cargo build --workspace --examples` builds (`scripts/test` does).
pub fn example_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("examples").join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --examples` first",
        bin.display()
    );
    bin
}

/// Set in a test process that [`as_identity`] started as a plain user.
const INNER: &str = "CAIRN_E2E_INNER";

fn is_inner() -> bool {
    std::env::var_os(INNER).is_some()
}

/// Runs the test body `body` as `who`. As root it runs here. For a plain user, this test
/// binary (a copy the user can run) is started as that user to run the same test alone (its
/// name is the name of the current thread, as libtest sets it), and it runs `body` there:
/// so a test of the library reaches the rootless paths for real. That run sees `CAIRN_BIN`
/// (a copy of cairn the user can run, the store's helper) and a `TMPDIR` the user owns; its
/// output is shown, and the test fails unless exactly that one test ran and passed.
pub fn as_identity(who: Who, body: impl FnOnce()) {
    let user = match who {
        Who::Root => return body(),
        Who::User(_) if is_inner() => return body(),
        Who::User(u) => u,
    };
    let test = std::thread::current()
        .name()
        .expect("libtest names each test's thread after the test")
        .to_owned();
    let exe = runnable_copy(&std::env::current_exe().unwrap());
    // A short TMPDIR: overlay takes at most 255 bytes of lower directories per mount option,
    // so deep store paths limit how many layers a container can have.
    let scratch = Scratch::short("u");
    who.own(&scratch.path);
    let out = who
        .command(&exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .env("CAIRN_BIN", cairn_bin_for(who))
        .env("CAIRN_FIXTURES_DIR", &fixtures().dir)
        .env("TMPDIR", &scratch.path)
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary as a plain user");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} as {} failed ({})",
        user.name,
        out.status
    );
}

/// A plain user the tests run cairn as.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub subids: bool,
}

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

fn ensure_user(name: &str, subids: Option<(u32, u32)>) -> TestUser {
    if is_inner() {
        // Started by `as_identity` as this very user, which the outer process set up.
        let user = nix::unistd::User::from_name(name).unwrap().unwrap();
        return TestUser {
            name: name.into(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            subids: subids.is_some(),
        };
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests run as root: they create the plain users they test as"
    );
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let out = sh(&format!("useradd --create-home --shell /bin/sh {name}"));
        assert!(
            out.status.success() || nix::unistd::User::from_name(name).unwrap().is_some(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let user = nix::unistd::User::from_name(name).unwrap().unwrap();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        let has = text.lines().any(|l| l.starts_with(&format!("{name}:")));
        match (subids, has) {
            (Some((start, count)), false) => {
                let mut text = text.clone();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("{name}:{start}:{count}\n"));
                fs::write(file, text).unwrap();
            }
            (None, true) => {
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{name}:")))
                    .map(|l| format!("{l}\n"))
                    .collect();
                fs::write(file, kept).unwrap();
            }
            _ => {}
        }
    }
    TestUser {
        name: name.into(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        subids: subids.is_some(),
    }
}

/// A plain user with a subordinate id range in /etc/subuid and /etc/subgid.
pub fn user_with_subids() -> &'static TestUser {
    static U: OnceLock<TestUser> = OnceLock::new();
    U.get_or_init(|| ensure_user("cairn-e2e-sub", Some((300000, 65536))))
}

/// A plain user without subordinate ids.
pub fn user_without_subids() -> &'static TestUser {
    static U: OnceLock<TestUser> = OnceLock::new();
    U.get_or_init(|| ensure_user("cairn-e2e-nosub", None))
}

/// Who runs a command.
#[derive(Debug, Clone, Copy)]
pub enum Who {
    Root,
    User(&'static TestUser),
}

impl Who {
    /// All three identities the tests cover.
    pub fn all() -> [Who; 3] {
        [
            Who::Root,
            Who::User(user_with_subids()),
            Who::User(user_without_subids()),
        ]
    }

    pub fn label(&self) -> String {
        match self {
            Who::Root => "root".into(),
            Who::User(u) => u.name.clone(),
        }
    }

    /// A command run as this identity, with a clean environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Who::Root => {
                let mut c = Command::new(program);
                c.env("HOME", "/root");
                c
            }
            Who::User(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={}", u.uid),
                    format!("--regid={}", u.gid),
                    "--init-groups".into(),
                    "--".into(),
                ])
                .arg(program)
                .env("HOME", format!("/home/{}", u.name))
                .env("USER", &u.name)
                .env_remove("XDG_DATA_HOME")
                .env_remove("DOCKER_CONFIG");
                c
            }
        }
    }

    /// Gives a directory to this identity.
    pub fn own(&self, path: &Path) {
        if let Who::User(u) = self {
            let out = sh(&format!(
                "chown -R {}:{} '{}'",
                u.uid,
                u.gid,
                path.display()
            ));
            assert!(out.status.success());
        }
    }
}

/// A scratch directory, removed on drop (as root, so subordinate-owned files go too).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "cairn-e2e-{}-{}-{label}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Scratch { path }
    }

    /// A scratch directory with a short name (`<tmp>/<prefix><pid>-<n>`), for stores: the
    /// overlay mount of a container takes at most 255 bytes of lower directory paths.
    pub fn short(prefix: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("CAIRN_E2E_KEEP").is_none() {
            let _ = sh(&format!(
                "chmod -R u+rwx '{0}' 2>/dev/null; rm -rf '{0}'",
                self.path.display()
            ));
        }
    }
}

/// `cairn` with its own store, run as one identity.
pub struct Cairn {
    pub who: Who,
    pub scratch: Scratch,
    pub root: PathBuf,
}

impl Cairn {
    pub fn new(who: Who) -> Cairn {
        let scratch = Scratch::new(&who.label());
        let root = scratch.path.join("store");
        who.own(&scratch.path);
        Cairn { who, scratch, root }
    }

    /// A directory the identity owns, for export destinations and the like.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path.join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.who.command(cairn_bin_for(self.who));
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run cairn")
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} as {} failed ({}):\n{}",
            self.who.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and insists on failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "cairn {args:?} as {} should have failed; stdout:\n{}",
            self.who.label(),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Pulls and returns the digest printed last.
    pub fn pull(&self, reference: &str) -> String {
        let out = self.ok(&["pull", reference]);
        let digest = out.lines().last().unwrap_or_default().to_owned();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "pull printed {out:?}"
        );
        digest
    }
}

/// What the comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub link: String,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, String>,
}

/// Every path under `root` (relative, `.` for the root itself) with its metadata.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut sha256 = String::new();
        if ft.is_file() {
            let mut hasher = Sha256::new();
            let mut f = fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            sha256 = hex::encode(hasher.finalize());
        }
        let link = if ft.is_symlink() {
            fs::read_link(&path).unwrap().to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let xattrs = xattr::list(&path)
            .map(|names| {
                names
                    .map(|n| {
                        let v = xattr::get(&path, &n).ok().flatten().unwrap_or_default();
                        (n.to_string_lossy().into_owned(), hex::encode(v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if ft.is_file() { meta.len() } else { 0 },
                sha256,
                link,
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    meta.rdev()
                } else {
                    0
                },
                xattrs,
            },
        );
        if ft.is_dir() {
            for child in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(child.unwrap().file_name()));
            }
        }
    }
    out
}

/// Every difference between two trees, one line each; empty when they are the same.
pub fn diff_trees(expected: &Path, actual: &Path) -> Vec<String> {
    let (a, b) = (tree(expected), tree(actual));
    let mut diffs = Vec::new();
    for (path, ea) in &a {
        match b.get(path) {
            None => diffs.push(format!("missing: {} ({})", path.display(), ea.kind)),
            Some(eb) if eb != ea => diffs.push(format!(
                "differs: {}\n  expected {ea:?}\n  actual   {eb:?}",
                path.display()
            )),
            _ => {}
        }
    }
    for (path, eb) in &b {
        if !a.contains_key(path) {
            diffs.push(format!("extra: {} ({})", path.display(), eb.kind));
        }
    }
    diffs
}

/// `umoci unpack` of a fixture layout, run as `who` (`--rootless` for plain users). Returns the
/// rootfs directory.
pub fn umoci_unpack(image: &FixtureImage, who: Who, scratch: &Path) -> PathBuf {
    // umoci takes a lock inside the layout: give each run its own copy.
    let layout = scratch.join("layout");
    let out = sh(&format!(
        "cp -a '{}' '{}'",
        image.layout.display(),
        layout.display()
    ));
    assert!(
        out.status.success(),
        "copy layout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    who.own(&layout);
    let bundle = scratch.join("umoci-bundle");
    let mut cmd = who.command("umoci");
    cmd.arg("--log=error").arg("unpack");
    if let Who::User(_) = who {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:{}", layout.display(), image.tag))
        .arg(&bundle);
    let out = cmd.output().expect("run umoci");
    assert!(
        out.status.success(),
        "umoci unpack {}: {}",
        image.reference,
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

/// Pushes an image made in the test straight through the distribution API (plain HTTP on
/// loopback), so tests can serve what no well-behaved tool would produce: hostile layers,
/// unknown media types. `layers` are (media type, blob bytes, diff id); returns the reference.
pub fn push_raw_image(
    registry: &str,
    repository: &str,
    tag: &str,
    layers: &[(&str, Vec<u8>, String)],
) -> String {
    let diff_ids: Vec<&str> = layers.iter().map(|(_, _, d)| d.as_str()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let config_digest = upload_blob(registry, repository, &config);
    let mut layer_descs = Vec::new();
    for (media_type, blob, _) in layers {
        let digest = upload_blob(registry, repository, blob);
        layer_descs.push(
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": blob.len()}),
        );
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    })
    .to_string();
    let (status, _, body) = http(
        registry,
        "PUT",
        &format!("/v2/{repository}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert!(
        status == 201,
        "manifest push: {status} {}",
        String::from_utf8_lossy(&body)
    );
    format!("{registry}/{repository}:{tag}")
}

/// sha256 of `data` as a digest string.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn upload_blob(registry: &str, repository: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let (status, headers, _) = http(
        registry,
        "POST",
        &format!("/v2/{repository}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "start upload");
    let location = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone())
        .expect("upload location");
    let path = location
        .split_once("//")
        .map_or(location.as_str(), |(_, rest)| {
            rest.find('/').map_or("/", |i| &rest[i..])
        });
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, _, body) = http(
        registry,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(
        status,
        201,
        "finish upload: {}",
        String::from_utf8_lossy(&body)
    );
    digest
}

/// A minimal HTTP/1.1 exchange with a loopback registry.
fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(host).expect("connect to registry");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

/// Builds tar streams byte by byte, so entries can carry names and link targets that the
/// `tar` crate (rightly) refuses to write.
#[derive(Default)]
pub struct RawTar {
    data: Vec<u8>,
}

impl RawTar {
    /// Appends an entry: `kind` is the ustar type flag (`b'0'` file, `b'5'` dir, `b'2'`
    /// symlink, `b'1'` hard link).
    pub fn entry(mut self, kind: u8, name: &str, link: &str, content: &[u8], mode: u32) -> Self {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], off: usize, len: usize, s: &[u8]| {
            h[off..off + s.len().min(len)].copy_from_slice(&s[..s.len().min(len)]);
        };
        put(&mut h, 0, 100, name.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(
            &mut h,
            124,
            12,
            format!("{:011o}\0", content.len()).as_bytes(),
        );
        put(&mut h, 136, 12, b"14000000000\0");
        h[156] = kind;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 8, b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.data.extend_from_slice(&h);
        self.data.extend_from_slice(content);
        let pad = (512 - content.len() % 512) % 512;
        self.data.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(self, name: &str, content: &[u8]) -> Self {
        self.entry(b'0', name, "", content, 0o644)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(b'5', name, "", b"", 0o755)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(b'2', name, target, b"", 0o777)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(b'1', name, target, b"", 0o644)
    }

    /// The finished uncompressed tar (with its two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.data.extend(std::iter::repeat_n(0u8, 1024));
        self.data
    }
}

/// gzip-compresses a layer.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// One test per identity: `identity_tests!([root, subids, nosubids] name, …)` runs each
/// `fn name(who: Who)` as `name::as_root`, `name::as_user_with_subids` and
/// `name::as_user_without_subids` (any subset of the three, in brackets).
#[macro_export]
macro_rules! identity_tests {
    ($whos:tt $($name:ident),* $(,)?) => {$(
        $crate::identity_tests!(@mod $name $whos);
    )*};
    (@mod $name:ident [$($who:ident),+ $(,)?]) => {
        mod $name {
            $( $crate::identity_tests!(@test $name $who); )+
        }
    };
    (@test $name:ident root) => {
        #[test]
        fn as_root() {
            super::$name($crate::Who::Root)
        }
    };
    (@test $name:ident subids) => {
        #[test]
        fn as_user_with_subids() {
            super::$name($crate::Who::User($crate::user_with_subids()))
        }
    };
    (@test $name:ident nosubids) => {
        #[test]
        fn as_user_without_subids() {
            super::$name($crate::Who::User($crate::user_without_subids()))
        }
    };
}
