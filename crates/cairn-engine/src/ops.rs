//! The ops the engine's vertices run: pull an image, read a host directory, take a directory of
//! a container, copy a directory into a container, exec a command.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_containers::RunRequest;
use cairn_images::{ImagesError, Store, LEASE_LABEL};
use cairn_oci::Digest;
use cairn_runtime::{ContainerStdio, ExtraMount, Network};
use cairn_snapshot::Snapshotter;
use cairn_solver::{BoxFuture, CacheDescription, ExecContext, LogStream, Op, OpError};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{io_err, EngineError};
use crate::fs::{copy_tree, Filter};
use crate::{EngineInner, Output};

/// The configuration an image gives its containers, which a container keeps along its chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The working directory; empty for `/`.
    pub workdir: String,
    /// The user; empty for root.
    pub user: String,
    /// The entrypoint (`None`: none).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments (`None`: none).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// OCI labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Exposed ports (`80/tcp`).
    #[serde(default)]
    pub exposed_ports: std::collections::BTreeSet<String>,
    /// The digest of the image config it came from (platform and history of a publish).
    #[serde(default)]
    pub config: Option<String>,
}

/// How concurrent execs share one cache volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheSharing {
    /// All mount the same directory at once.
    #[default]
    Shared,
    /// Each concurrent exec gets a directory of its own (`<name>`, else `<name>.N`).
    Private,
    /// Execs take turns, and wait for shared users to finish.
    Locked,
}

/// Where a directory result lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirSource {
    /// A host directory, read through its include and exclude patterns.
    Host {
        /// The directory.
        path: PathBuf,
        /// Include patterns (all files when empty).
        include: Vec<String>,
        /// Exclude patterns.
        exclude: Vec<String>,
        /// The subdirectory of `path` meant (empty: `path` itself); the patterns stay
        /// relative to `path`.
        #[serde(default)]
        sub: PathBuf,
    },
    /// A directory of a container's filesystem.
    Snapshot {
        /// The committed top snapshot of the container (`None`: an empty root).
        snapshot: Option<String>,
        /// The absolute path in it.
        path: String,
    },
}

fn op_err(e: EngineError) -> OpError {
    Box::new(e)
}

async fn image(store: &Store, reference: &str) -> Result<cairn_images::ImageRecord, EngineError> {
    match store.image(reference) {
        Ok(i) => Ok(i),
        Err(ImagesError::ImageNotFound(_)) if !reference.starts_with("sha256:") => {
            Ok(store.pull(reference, &()).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// `from`: the image, pulled when missing. Its manifest digest is the content digest, so a
/// moved tag gives a new key.
pub(crate) struct FromOp {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) reference: String,
}

impl Op<Output> for FromOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("from").field("ref", &self.reference)
    }

    fn content_digest<'a>(
        &'a self,
        _: &'a ExecContext,
    ) -> BoxFuture<'a, Result<Option<Digest>, OpError>> {
        Box::pin(async move {
            let image = image(&self.engine.store, &self.reference)
                .await
                .map_err(op_err)?;
            Ok(Some(image.digest))
        })
    }

    fn exec<'a>(
        &'a self,
        _: &'a ExecContext,
        _: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let store = &self.engine.store;
            let image = image(store, &self.reference).await.map_err(op_err)?;
            let config = store.image_config(&image).map_err(|e| op_err(e.into()))?;
            let c = config.config().clone().unwrap_or_default();
            let state = ImageState {
                env: c.env().clone().unwrap_or_default(),
                workdir: c.working_dir().clone().unwrap_or_default(),
                user: c.user().clone().unwrap_or_default(),
                entrypoint: c.entrypoint().clone(),
                cmd: c.cmd().clone(),
                labels: c
                    .labels()
                    .clone()
                    .map(|l| l.into_iter().collect())
                    .unwrap_or_default(),
                exposed_ports: c
                    .exposed_ports()
                    .clone()
                    .map(|p| p.into_iter().collect())
                    .unwrap_or_default(),
                config: Some(image.config.to_string()),
            };
            Ok(vec![Output {
                snapshot: image.top_snapshot.map(|d| d.as_str().to_owned()),
                state,
                ..Output::default()
            }])
        })
    }
}

/// A host directory. Its content digest is its tree's: an edited file gives a new key.
pub(crate) struct HostDirOp {
    /// Hashes the tree (in parallel, reading only files changed since it last did).
    pub(crate) hasher: Arc<crate::TreeHasher>,
    pub(crate) path: PathBuf,
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
}

impl HostDirOp {
    pub(crate) async fn digest(&self) -> Result<Digest, EngineError> {
        let (hasher, path, include, exclude) = (
            self.hasher.clone(),
            self.path.clone(),
            self.include.clone(),
            self.exclude.clone(),
        );
        tokio::task::spawn_blocking(move || Ok(hasher.digest(&path, &include, &exclude)?.digest))
            .await
            .map_err(|e| EngineError::Invalid {
                what: "hashing task".into(),
                reason: e.to_string(),
            })?
    }
}

impl Op<Output> for HostDirOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("host-directory")
            .field("path", self.path.as_os_str().as_encoded_bytes())
            .field("include", self.include.join("\0"))
            .field("exclude", self.exclude.join("\0"))
    }

    fn content_digest<'a>(
        &'a self,
        _: &'a ExecContext,
    ) -> BoxFuture<'a, Result<Option<Digest>, OpError>> {
        Box::pin(async move { Ok(Some(self.digest().await.map_err(op_err)?)) })
    }

    fn exec<'a>(
        &'a self,
        _: &'a ExecContext,
        _: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            Ok(vec![Output {
                directory: Some(DirSource::Host {
                    path: self.path.clone(),
                    include: self.include.clone(),
                    exclude: self.exclude.clone(),
                    sub: PathBuf::new(),
                }),
                ..Output::default()
            }])
        })
    }
}

/// A directory of a container: a reference to its snapshot and the path.
pub(crate) struct ContainerDirOp {
    pub(crate) path: String,
}

impl Op<Output> for ContainerDirOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("container-directory").field("path", &self.path)
    }

    fn exec<'a>(
        &'a self,
        _: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let snapshot = inputs.into_iter().next().and_then(|o| o.snapshot);
            Ok(vec![Output {
                directory: Some(DirSource::Snapshot {
                    snapshot,
                    path: self.path.clone(),
                }),
                ..Output::default()
            }])
        })
    }
}

impl EngineInner {
    /// Writes the directory `source` into `dest` (created with its parents).
    pub(crate) async fn materialize(
        &self,
        source: &DirSource,
        dest: &Path,
    ) -> Result<(), EngineError> {
        match source {
            DirSource::Host {
                path,
                include,
                exclude,
                sub,
            } => {
                let (path, include, exclude) = (path.clone(), include.clone(), exclude.clone());
                let (sub, dest) = (sub.clone(), dest.to_owned());
                tokio::task::spawn_blocking(move || {
                    let filter = Filter::new(&path, &include, &exclude)?.within(&sub);
                    copy_tree(&path.join(&sub), &dest, &filter)
                })
                .await
                .map_err(|e| EngineError::Invalid {
                    what: "copy task".into(),
                    reason: e.to_string(),
                })?
            }
            DirSource::Snapshot { snapshot, path } => {
                let flat_err = |reason: String| EngineError::Flatten {
                    snapshot: snapshot.clone().unwrap_or_default(),
                    path: path.clone(),
                    reason,
                };
                let tmp_root = self.store.root().join("tmp");
                std::fs::create_dir_all(&tmp_root).map_err(io_err("create", &tmp_root))?;
                let tmp = tmp_root.join(format!(
                    "flatten-{}",
                    hex::encode(rand::random::<[u8; 8]>())
                ));
                let result = async {
                    self.store
                        .flatten_snapshot(snapshot.as_deref(), &tmp)
                        .await?
                        .map_err(flat_err)?;
                    // Symlinks on the way are followed inside the container's root, never out
                    // of it onto the host.
                    let sub = crate::files::resolve_in_root(&tmp, path).map_err(flat_err)?;
                    if !std::fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir()) {
                        return Err(flat_err("no such directory in the container".into()));
                    }
                    let dest = dest.to_owned();
                    tokio::task::spawn_blocking(move || copy_tree(&sub, &dest, &Filter::all()))
                        .await
                        .map_err(|e| flat_err(e.to_string()))?
                }
                .await;
                if let Err(e) = self.store.remove_tree(&tmp) {
                    tracing::warn!(path = %tmp.display(), error = %e, "remove flattened copy");
                }
                result
            }
        }
    }
}

/// `with_directory`: a new committed snapshot, the container's plus the directory at `path`.
pub(crate) struct CopyOp {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) path: String,
    /// Whether input 0 is the container (else the root starts empty).
    pub(crate) has_base: bool,
}

impl Op<Output> for CopyOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("copy")
            .field("path", &self.path)
            .field("base", if self.has_base { "1" } else { "0" })
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move { self.run(ctx, inputs).await.map_err(op_err) })
    }
}

impl CopyOp {
    async fn run(
        &self,
        ctx: &ExecContext,
        mut inputs: Vec<Output>,
    ) -> Result<Vec<Output>, EngineError> {
        let dir = inputs
            .pop()
            .and_then(|o| o.directory)
            .ok_or_else(|| EngineError::Invalid {
                what: self.path.clone(),
                reason: "copy input is not a directory".into(),
            })?;
        let base = inputs.pop().unwrap_or_default();
        let key = ctx
            .cache_key()
            .map(|k| k.digest().hex().to_owned())
            .unwrap_or_default();
        let name = format!("copy-{key}");
        let store = &self.engine.store;
        let snapshots = store.snapshots();
        let active = format!("{name}-{}", hex::encode(rand::random::<[u8; 6]>()));
        let labels = BTreeMap::from([(LEASE_LABEL.to_owned(), store.lease().to_owned())]);
        let mounts = snapshots.prepare(&active, base.snapshot.as_deref(), &labels)?;
        let result = async {
            let upper = mounts
                .first()
                .and_then(cairn_snapshot::Mount::writable_dir)
                .ok_or_else(|| EngineError::Invalid {
                    what: active.clone(),
                    reason: "prepared snapshot has no writable directory".into(),
                })?;
            // Symlinked directories of the image (`/bin` -> `usr/bin`) are followed.
            let lowers = mounts
                .first()
                .map(cairn_snapshot::Mount::lower_dirs)
                .unwrap_or_default();
            let path = crate::files::resolve_in_layers(&lowers, &self.path, true);
            let dest = upper.join(path.trim_start_matches('/'));
            self.engine.materialize(&dir, &dest).await?;
            match snapshots.commit(&name, &active, &BTreeMap::new()) {
                Ok(()) => Ok::<(), EngineError>(()),
                Err(e) if e.kind() == cairn_snapshot::ErrorKind::AlreadyExists => {
                    snapshots.remove(&active)?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        if result.is_err() {
            let _ = snapshots.remove(&active);
        }
        result?;
        Ok(vec![Output {
            snapshot: Some(name),
            state: base.state,
            ..Output::default()
        }])
    }
}

/// A secret's value, kept out of keys, records and logs.
#[derive(Clone)]
pub(crate) struct SecretValue(pub(crate) Arc<Vec<u8>>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Everything a `with_exec` runs with.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExecSpec {
    pub(crate) label: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) workdir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) network: Network,
    /// (container path, volume name): what keys see of cache volumes.
    pub(crate) caches: Vec<(String, String)>,
    /// How each cache volume (by container path) is shared; not part of the key.
    pub(crate) cache_sharing: BTreeMap<String, CacheSharing>,
    /// (variable, secret name, value).
    pub(crate) secret_env: Vec<(String, String, SecretValue)>,
    /// (container path, secret name, value).
    pub(crate) secret_files: Vec<(String, String, SecretValue)>,
    /// (container path, what): mounted directories, files and tmpfs.
    pub(crate) mounts: Vec<(String, crate::files::Mounted)>,
}

impl ExecSpec {
    /// The cache description: everything that changes the result, secret values and cache
    /// volume contents excepted (only their names and places are described).
    pub(crate) fn describe(&self) -> CacheDescription {
        let json = |v: serde_json::Value| v.to_string();
        let secrets: Vec<_> = (self
            .secret_env
            .iter()
            .map(|(var, name, _)| ("env", var, name)))
        .chain(
            self.secret_files
                .iter()
                .map(|(path, name, _)| ("file", path, name)),
        )
        .collect();
        let mut d = CacheDescription::new("exec")
            .field("args", json(serde_json::json!(self.args)))
            .field("env", json(serde_json::json!(self.env)))
            .field("workdir", self.workdir.as_deref().unwrap_or(""))
            .field("user", self.user.as_deref().unwrap_or(""))
            .field(
                "network",
                match self.network {
                    Network::Host => "host",
                    Network::None => "none",
                },
            )
            .field("caches", json(serde_json::json!(self.caches)))
            .field("secrets", json(serde_json::json!(secrets)));
        // Only when there are mounts, so the keys of execs without them stay as they were.
        // The mounted inputs' own keys come in as input keys.
        if !self.mounts.is_empty() {
            let mounts: Vec<_> = self.mounts.iter().map(|(p, m)| (p, m.kind())).collect();
            d.set("mounts", json(serde_json::json!(mounts)));
        }
        d
    }

    fn command(&self) -> String {
        serde_json::json!(self.args).to_string()
    }

    pub(crate) fn redactor(&self) -> Redactor {
        let values = (self.secret_env.iter().chain(&self.secret_files))
            .map(|(_, _, v)| String::from_utf8_lossy(&v.0).into_owned())
            .filter(|v| !v.is_empty())
            .collect();
        Redactor(values)
    }
}

/// Masks secret values in output.
pub(crate) struct Redactor(Vec<String>);

impl Redactor {
    /// Where `bytes` can be cut so that no secret (nor its start, at the end) lies across the
    /// cut: at most `bytes.len()`, at a character boundary; 0 when there is no such place.
    pub(crate) fn safe_cut(&self, bytes: &[u8]) -> usize {
        let longest = self.0.iter().map(String::len).max().unwrap_or(0);
        let mut cut = bytes.len().saturating_sub(longest.saturating_sub(1));
        let needles: Vec<&[u8]> = self
            .0
            .iter()
            .flat_map(|v| [v.as_bytes(), v.trim_end_matches('\n').as_bytes()])
            .filter(|n| !n.is_empty())
            .collect();
        // An occurrence across the cut moves it back to the occurrence's start; repeat until
        // none lies across.
        loop {
            let across = needles.iter().find_map(|n| {
                let lo = cut.saturating_sub(n.len() - 1);
                let hi = (cut + n.len() - 1).min(bytes.len());
                bytes[lo..hi]
                    .windows(n.len())
                    .position(|w| w == *n)
                    .map(|p| lo + p)
                    .filter(|p| *p < cut)
            });
            match across {
                Some(p) => cut = p,
                None => break,
            }
        }
        while cut > 0 && cut < bytes.len() && bytes[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        cut
    }

    pub(crate) fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.0 {
            out = out.replace(v.as_str(), "***");
            let trimmed = v.trim_end_matches('\n');
            if !trimmed.is_empty() && trimmed != v {
                out = out.replace(trimmed, "***");
            }
        }
        out
    }
}

/// `with_exec`: runs the command on the container's snapshot and commits its writable layer as
/// `exec-<key hex>`.
pub(crate) struct ExecOp {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) spec: ExecSpec,
    /// How many bytes of each of stdout and stderr the result keeps (the last ones); not
    /// part of the key. Log events carry all of it.
    pub(crate) output_limit: usize,
}

impl Op<Output> for ExecOp {
    fn describe(&self) -> CacheDescription {
        self.spec.describe()
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move { self.run(ctx, inputs).await.map_err(op_err) })
    }
}

/// How many lines of stderr a failure shows.
const TAIL_LINES: usize = 20;

impl ExecOp {
    async fn run(
        &self,
        ctx: &ExecContext,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, EngineError> {
        let spec = &self.spec;
        // The container first (when there is one), then each mounted input.
        let mut inputs = inputs;
        let mounted_inputs = spec.mounts.iter().filter(|(_, m)| m.edge().is_some());
        let mounted = inputs.split_off(inputs.len().saturating_sub(mounted_inputs.count()));
        let base = inputs.into_iter().next().unwrap_or_default();
        let key = ctx
            .cache_key()
            .map(|k| k.digest().hex().to_owned())
            .unwrap_or_default();
        let name = format!("exec-{key}");
        let mut env = base.state.env.clone();
        for (k, v) in &spec.env {
            set_env(&mut env, k, v);
        }
        for (var, _, value) in &spec.secret_env {
            set_env(&mut env, var, &String::from_utf8_lossy(&value.0));
        }
        let cwd = spec
            .workdir
            .clone()
            .or_else(|| Some(base.state.workdir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let user = spec.user.clone().unwrap_or_else(|| base.state.user.clone());

        let mounted = (self.engine)
            .mount_inputs(&spec.label, &spec.mounts, mounted)
            .await?;
        let mut mounts = mounted.mounts.clone();
        let mut volume_locks = Vec::new();
        let mut taken: BTreeMap<&str, (PathBuf, CacheSharing)> = BTreeMap::new();
        // Locks in name order, each volume once, so two steps never wait on each other.
        let mut caches: Vec<_> = spec.caches.iter().collect();
        caches.sort_by(|a, b| a.1.cmp(&b.1));
        for (path, volume) in caches {
            let sharing = spec.cache_sharing.get(path).copied().unwrap_or_default();
            let dir = match taken.get(volume.as_str()) {
                Some((dir, _)) => dir.clone(),
                None => {
                    let (dir, lock) = self.engine.take_volume(ctx, volume, sharing).await?;
                    volume_locks.push(lock);
                    taken.insert(volume, (dir.clone(), sharing));
                    dir
                }
            };
            mounts.push(ExtraMount::Bind {
                source: dir,
                destination: path.clone(),
                readonly: false,
            });
        }
        let secrets = SecretDir::new(&spec.secret_files)?;
        for (path, file) in spec.secret_files.iter().map(|s| &s.0).zip(&secrets.files) {
            mounts.push(ExtraMount::Bind {
                source: file.clone(),
                destination: path.clone(),
                readonly: true,
            });
        }
        if spec.network == Network::Host {
            for file in ["/etc/resolv.conf", "/etc/hosts"] {
                let covered = mounts.iter().any(
                    |m| matches!(m, ExtraMount::Bind { destination, .. } if destination == file),
                );
                if Path::new(file).is_file() && !covered {
                    mounts.push(ExtraMount::Bind {
                        source: file.into(),
                        destination: file.into(),
                        readonly: true,
                    });
                }
            }
        }
        let request = RunRequest {
            label: spec.label.clone(),
            parent: base.snapshot.clone(),
            args: spec.args.clone(),
            env,
            cwd,
            user,
            mounts,
            network: spec.network,
            commit_layer: true,
            ..RunRequest::default()
        };

        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| EngineError::Io {
                action: "create pipe",
                path: PathBuf::from("pipe"),
                source: e.into(),
            })
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null =
            std::fs::File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
        let stdio = ContainerStdio {
            stdin: null.into(),
            stdout: out_w,
            stderr: err_w,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (fd, stream) in [(out_r, LogStream::Stdout), (err_r, LogStream::Stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(fd);
                let mut buf = vec![0u8; 1 << 14];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send((stream, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(tx);
        let running = self.engine.containers.start_request(request, stdio).await?;
        let redactor = spec.redactor();
        let mut captured = Captured::new(self.output_limit);
        let stop = ctx.cancellation().cancelled();
        let no_labels = BTreeMap::new();
        let finish = running.run_and_commit(None, stop, Duration::from_secs(5), &name, &no_labels);
        let pump = async {
            while let Some((stream, bytes)) = rx.recv().await {
                captured.push(ctx, &redactor, stream, &bytes);
            }
            captured.flush(ctx, &redactor);
        };
        let (outcome, ()) = tokio::join!(finish, pump);
        drop(secrets);
        drop(volume_locks);
        drop(mounted);
        let outcome = outcome?;
        let code = outcome.status.code();
        let stdout = captured.stdout.text("stdout", &redactor);
        let stderr = captured.stderr.text("stderr", &redactor);
        if outcome.stopped || outcome.timed_out {
            return Err(EngineError::Stopped {
                step: spec.label.clone(),
                command: spec.command(),
            });
        }
        if code != 0 {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            return Err(EngineError::ExecFailed {
                step: spec.label.clone(),
                command: spec.command(),
                code,
                stderr_tail: tail,
            });
        }
        Ok(vec![Output {
            snapshot: Some(name),
            state: base.state,
            stdout,
            stderr,
            exit_code: Some(code),
            ..Output::default()
        }])
    }
}

/// Output read so far: the tail of each stream the result keeps, and the partial line of each
/// stream not yet logged (lines are logged whole, so a secret is masked even when it straddles
/// two reads).
struct Captured {
    stdout: Tail,
    stderr: Tail,
    partial: [Vec<u8>; 2],
}

/// A line longer than this is logged in pieces (cut where no secret straddles the cut), so
/// that output without newlines does not pile up in memory.
const LINE_LIMIT: usize = 64 << 10;

impl Captured {
    fn new(limit: usize) -> Self {
        Captured {
            stdout: Tail::new(limit),
            stderr: Tail::new(limit),
            partial: [Vec::new(), Vec::new()],
        }
    }

    fn push(&mut self, ctx: &ExecContext, redactor: &Redactor, stream: LogStream, bytes: &[u8]) {
        let i = usize::from(stream == LogStream::Stderr);
        match stream {
            LogStream::Stdout => self.stdout.push(bytes),
            LogStream::Stderr => self.stderr.push(bytes),
        }
        let partial = &mut self.partial[i];
        partial.extend_from_slice(bytes);
        if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
            let lines: Vec<u8> = partial.drain(..=end).collect();
            ctx.log(stream, redactor.mask(&String::from_utf8_lossy(&lines)));
        }
        while partial.len() > LINE_LIMIT {
            let cut = redactor.safe_cut(partial);
            if cut == 0 {
                break;
            }
            let piece: Vec<u8> = partial.drain(..cut).collect();
            ctx.log(stream, redactor.mask(&String::from_utf8_lossy(&piece)));
        }
    }

    fn flush(&mut self, ctx: &ExecContext, redactor: &Redactor) {
        for (i, stream) in [(0, LogStream::Stdout), (1, LogStream::Stderr)] {
            if !self.partial[i].is_empty() {
                let rest = std::mem::take(&mut self.partial[i]);
                ctx.log(stream, redactor.mask(&String::from_utf8_lossy(&rest)));
            }
        }
    }
}

/// The last `limit` bytes of a stream, and how many came before them.
struct Tail {
    kept: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Tail {
            kept: Vec::new(),
            dropped: 0,
            limit,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        // Trimmed when twice the limit, so that each byte is moved about once.
        if self.kept.len() > self.limit.saturating_mul(2).max(1 << 16) {
            self.trim_to(self.limit);
        }
    }

    fn trim_to(&mut self, limit: usize) {
        let excess = self.kept.len().saturating_sub(limit);
        self.kept.drain(..excess);
        self.dropped += excess as u64;
    }

    /// The text kept, secrets masked; when bytes were dropped, it starts at a line (or at
    /// least a character) boundary, after a first line that says how many.
    fn text(mut self, stream: &str, redactor: &Redactor) -> String {
        self.trim_to(self.limit);
        if self.dropped == 0 {
            return redactor.mask(&String::from_utf8_lossy(&self.kept));
        }
        // A line cut in two may hold a secret cut in two, which masking would not see.
        let start = match self.kept.iter().position(|b| *b == b'\n') {
            Some(nl) => nl + 1,
            None => self
                .kept
                .iter()
                .position(|b| b & 0xC0 != 0x80)
                .unwrap_or(self.kept.len()),
        };
        self.dropped += start as u64;
        let rest = &self.kept[start..];
        format!(
            "[cairn: the first {} bytes of {stream} were dropped; the last {} bytes follow]\n{}",
            self.dropped,
            rest.len(),
            redactor.mask(&String::from_utf8_lossy(rest))
        )
    }
}

pub(crate) fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix) && e != key);
    env.push(format!("{key}={value}"));
}

/// A private directory (0700, outside the store, on tmpfs when there is one) holding the secret
/// files of one exec; deleted when dropped. (Secret variables travel in the runtime bundle's
/// `config.json`, which the runtime helper writes on a tmpfs of its own.)
///
/// A process killed during the exec cannot delete it, so its owner holds a lock on the file
/// `lock` in it for as long as the directory lives; [`remove_dead_secret_dirs`] (run by every
/// [`crate::Engine::open`]) deletes the directories whose lock nobody holds.
struct SecretDir {
    dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    /// Held until the directory is gone: it tells other processes its owner is alive.
    _alive: Option<Flock<std::fs::File>>,
}

const SECRET_DIR_PREFIX: &str = "cairn-secrets-";

/// Where secret directories are made: the first of `$XDG_RUNTIME_DIR`, `/dev/shm` (both tmpfs,
/// never written to disk) and the temp directory that exists.
fn secret_dir_bases() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm"), std::env::temp_dir()])
        .filter(|d| d.is_dir())
        .collect();
    bases.dedup();
    bases
}

impl SecretDir {
    fn new(secrets: &[(String, String, SecretValue)]) -> Result<Self, EngineError> {
        if secrets.is_empty() {
            return Ok(SecretDir {
                dir: None,
                files: Vec::new(),
                _alive: None,
            });
        }
        let base = secret_dir_bases()
            .into_iter()
            .next()
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "{SECRET_DIR_PREFIX}{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        let mut this = SecretDir {
            dir: Some(dir.clone()),
            files: Vec::new(),
            _alive: None,
        };
        // Locked under another name, then renamed: a cleaner never finds `lock` unlocked
        // while this process lives. No secret is written before.
        let temp = dir.join("lock.new");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            EngineError::Io {
                action: "lock",
                path: temp.clone(),
                source: e.into(),
            }
        })?;
        std::fs::rename(&temp, dir.join("lock")).map_err(io_err("rename", &temp))?;
        this._alive = Some(held);
        for (i, (_, _, value)) in secrets.iter().enumerate() {
            let file = dir.join(i.to_string());
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&file)
                .map_err(io_err("create", &file))?;
            std::io::Write::write_all(&mut f, &value.0).map_err(io_err("write", &file))?;
            this.files.push(file);
        }
        Ok(this)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(path = %dir.display(), error = %e, "remove secret directory");
            }
        }
    }
}

/// How long a secret directory may be without its `lock` before it is taken for the leftover
/// of a process killed while making it (it is locked microseconds after it is made).
const SECRET_DIR_GRACE: Duration = Duration::from_secs(60);

/// Deletes the secret directories (of this user, where this process would make them) whose
/// process died during an exec (`kill -9`, a crash): their `lock` is held by nobody. Returns
/// how many were deleted.
pub(crate) fn remove_dead_secret_dirs() -> usize {
    let mut removed = 0;
    for base in secret_dir_bases() {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_ours = name
                .to_str()
                .is_some_and(|n| n.starts_with(SECRET_DIR_PREFIX));
            // Another user's directory (in a shared /dev/shm) is not ours to judge.
            let mine = entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw());
            if !is_ours || !mine {
                continue;
            }
            let dir = entry.path();
            let dead = match std::fs::File::open(dir.join("lock")) {
                // Held while we delete, so a (hypothetical) reuse of the name waits.
                Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock)
                    .ok()
                    .map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .filter(|age| *age > SECRET_DIR_GRACE)
                    .map(|_| None),
                Err(_) => None,
            };
            let Some(_held) = dead else { continue };
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "remove dead secret directory")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            count = removed,
            "removed secret directories of processes that died"
        );
    }
    removed
}

impl EngineInner {
    /// The directory of cache volume `name` for one exec, and the lock that holds it for the
    /// exec: shared users hold a shared lock, a locked user an exclusive one (waiting for its
    /// turn, or until `ctx` is cancelled), a private user the first free `<name>[.N]`.
    pub(crate) async fn take_volume(
        &self,
        ctx: &ExecContext,
        name: &str,
        sharing: CacheSharing,
    ) -> Result<(PathBuf, Flock<std::fs::File>), EngineError> {
        let dir = self.volume_dir(name)?;
        let locks = dir.parent().unwrap_or(&dir).join(".locks");
        std::fs::create_dir_all(&locks).map_err(io_err("create", &locks))?;
        let open = |file: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(file)
                .map_err(io_err("open", file))
        };
        if sharing == CacheSharing::Private {
            for n in 0u32.. {
                let lock = locks.join(format!("{name}.private.{n}"));
                if let Ok(held) = Flock::lock(open(&lock)?, FlockArg::LockExclusiveNonblock) {
                    let dir = match n {
                        0 => dir,
                        n => self.volume_dir(&format!("{name}.{n}"))?,
                    };
                    return Ok((dir, held));
                }
            }
        }
        let lock = locks.join(name);
        let arg = match sharing {
            CacheSharing::Locked => FlockArg::LockExclusiveNonblock,
            _ => FlockArg::LockSharedNonblock,
        };
        let mut file = open(&lock)?;
        loop {
            match Flock::lock(file, arg) {
                Ok(held) => return Ok((dir, held)),
                Err((f, _)) => file = f,
            }
            if ctx.is_cancelled() {
                return Err(EngineError::Invalid {
                    what: format!("cache volume {name:?}"),
                    reason: "cancelled while waiting for the volume".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor(secrets.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn a_tail_keeps_the_last_lines_and_says_what_it_dropped() {
        let r = redactor(&[]);
        let mut tail = Tail::new(1000);
        let mut total = 0u64;
        for i in 0..100_000 {
            let line = format!("line {i}\n");
            total += line.len() as u64;
            tail.push(line.as_bytes());
            assert!(tail.kept.len() <= 1 << 17, "memory stays bounded");
        }
        let text = tail.text("stdout", &r);
        let (head, rest) = text.split_once('\n').unwrap();
        assert!(
            rest.starts_with("line ") && rest.ends_with("line 99999\n"),
            "{rest}"
        );
        assert!(rest.len() <= 1000);
        let dropped = total - rest.len() as u64;
        assert_eq!(
            head,
            format!(
                "[cairn: the first {dropped} bytes of stdout were dropped; the last {} bytes follow]",
                rest.len()
            )
        );
    }

    #[test]
    fn a_short_output_is_kept_whole() {
        let mut tail = Tail::new(1000);
        tail.push(b"one\ntwo");
        assert_eq!(tail.text("stderr", &redactor(&["two"])), "one\n***");
    }

    #[test]
    fn a_cut_never_splits_a_secret_or_a_character() {
        let r = redactor(&["hunter2"]);
        let text = b"aaaa hunter2 bbbb";
        for end in 0..=text.len() {
            let cut = r.safe_cut(&text[..end]);
            assert!(cut <= end);
            // The secret is bytes 5..12: no cut inside it, whole or partly written.
            assert!(
                !(5 < cut && cut < 12),
                "cut {cut} of {end} splits the secret"
            );
        }
        assert_eq!(r.safe_cut(b"xx hunte"), 2);
        assert_eq!(r.safe_cut(b"xx hunter2 yyyyyyyy"), 13);
        assert_eq!(redactor(&[]).safe_cut("aé".as_bytes()), 3);
        assert_eq!(redactor(&["xx"]).safe_cut("aéx".as_bytes()), 3);
        assert_eq!(redactor(&["xy"]).safe_cut("aé".as_bytes()), 1);
    }
}

#[cfg(test)]
mod secret_dir_tests {
    use super::*;

    #[test]
    fn only_secret_dirs_of_dead_processes_are_removed() {
        let value = SecretValue(Arc::new(b"s3cret".to_vec()));
        let live = SecretDir::new(&[("/run/s".into(), "s".into(), value)]).unwrap();
        let live_dir = live.dir.clone().unwrap();
        assert_eq!(std::fs::read(&live.files[0]).unwrap(), b"s3cret");
        // A directory left by a killed process: its lock file is there, held by nobody.
        let base = live_dir.parent().unwrap();
        let dead = base.join(format!("{SECRET_DIR_PREFIX}test-{}", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("lock"), "").unwrap();
        std::fs::write(dead.join("0"), "s3cret").unwrap();
        // One being made right now, not locked yet: left alone during its grace time.
        let young = base.join(format!("{SECRET_DIR_PREFIX}young-{}", std::process::id()));
        std::fs::create_dir(&young).unwrap();

        assert!(remove_dead_secret_dirs() >= 1);
        assert!(!dead.exists());
        assert!(young.exists());
        assert!(live_dir.join("0").exists(), "a live exec keeps its secrets");
        drop(live);
        assert!(!live_dir.exists());
        std::fs::remove_dir(&young).unwrap();
    }
}
