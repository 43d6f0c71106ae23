//! cairn's embedding API, modelled on Dagger's: [`Container`]s, [`Directory`]s,
//! [`CacheVolume`]s and [`Secret`]s are lazy values; awaiting [`Container::stdout`],
//! [`Container::sync`] or [`Directory::export`] solves the DAG they describe.
//!
//! Each call that changes a container's filesystem is one solver vertex: `from` (pulls the
//! image when missing; its manifest digest is the vertex's content digest), `with_directory`,
//! `with_file` and `with_new_file` (a new committed snapshot with the directory or file copied
//! in; a new file's key holds its content's digest) and `with_exec` (the command run on the
//! container's snapshot, its writable layer committed as `exec-<cache key hex>`). Directories
//! and [`File`]s taken out of containers or host directories are vertices too, read only
//! when awaited. `with_mounted_directory`, `with_mounted_file` and `with_mounted_temp` mount
//! into later execs rather than copy: each exec gets a fresh copy (or tmpfs), so its writes
//! there reach neither the source nor its committed result; a mounted input's key is part of
//! the exec's. The
//! environment, working directory, user, network, cache volumes and secrets are container
//! state that enters the key of each later `with_exec`: by value, except cache volumes and
//! secrets, which are keyed by their *names* only. A secret's value is never in a key, a
//! snapshot, the cache database or a log line (where it is masked as `***`).
//!
//! Results are cached by key in the store's `metadata.db` (table `engine_cache`), shared by
//! every process that uses the store: a second run of an unchanged pipeline runs no container.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_engine::EngineError> {
//! cairn_images::init(); // first line of main
//! let engine = cairn_engine::Engine::open(cairn_images::StoreOptions::new("/tmp/store")).await?;
//! let src = engine.host().directory("src").with_exclude(["target/**"]);
//! let token = cairn_engine::Secret::from_env("token", "API_TOKEN")?;
//! let build = engine
//!     .container()
//!     .from("127.0.0.1:5117/fixtures/busybox:latest")
//!     .with_directory("/src", &src)
//!     .with_mounted_cache("/cache", &cairn_engine::CacheVolume::new("build"))
//!     .with_secret_variable("TOKEN", &token)
//!     .with_workdir("/src")
//!     .with_exec(["sh", "-c", "ls > /out.txt"]);
//! println!("{}", build.stdout().await?);
//! build.directory("/src").export("dist").await?;
//! // Files: read, exported, copied into another container, or mounted for one step.
//! let listing = build.file("/out.txt");
//! println!("{} bytes: {}", listing.size().await?, listing.contents().await?);
//! let test = engine
//!     .container()
//!     .from("127.0.0.1:5117/fixtures/busybox:latest")
//!     .with_new_file_permissions("/usr/bin/check", "#!/bin/sh\ntest -s /in/out.txt\n", 0o755)
//!     .with_file("/in/out.txt", &listing)
//!     .with_mounted_directory("/src", &src)
//!     .with_mounted_temp("/tmp")
//!     .with_exec(["check"]);
//! test.sync().await?;
//! println!("{:?}", build.rootfs().entries().await?);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cache;
mod error;
mod explain;
mod files;
mod fs;
mod hashcache;
mod ops;
mod publish;
pub use publish::Published;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_containers::Containers;
use cairn_images::{Store, StoreOptions};
use cairn_solver::{Edge, Solver, Vertex, VertexOptions};
use serde::{Deserialize, Serialize};

pub use cairn_images::{ArchiveFormat, CommitOptions};
pub use cairn_oci::LayerCompression;
pub use cairn_runtime::Network;
pub use cairn_solver::{
    CancellationToken, Event, EventKind, LogStream, SolveError, SolveOptions, VertexId,
};
pub use error::{EngineError, ErrorKind};
pub use explain::{KeyLog, StepFingerprint, StepHistory};
pub use files::FileSource;
pub use hashcache::{HashStats, TreeDigest, TreeHasher};
pub use ops::{CacheSharing, DirSource, ImageState};

use crate::files::{CopyFileOp, FileOp, Mounted, NewFileOp, SubdirOp};
use crate::ops::{ContainerDirOp, CopyOp, ExecOp, ExecSpec, FromOp, HostDirOp, SecretValue};

/// The result of a vertex, as the solver passes it along and the cache records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The committed snapshot holding the container's filesystem (`None`: empty root).
    pub snapshot: Option<String>,
    /// The image configuration the container carries.
    pub state: ImageState,
    /// The standard output of the last command, secrets masked.
    pub stdout: String,
    /// Its standard error, secrets masked.
    pub stderr: String,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// For a directory vertex: where the directory is.
    pub directory: Option<DirSource>,
    /// For a file vertex: where the file is.
    #[serde(default)]
    pub file: Option<FileSource>,
}

pub(crate) struct EngineInner {
    store: Store,
    containers: Containers,
    solver: Solver<Output>,
    /// Hashes host directories, with file digests recorded in `metadata.db`.
    hasher: Arc<TreeHasher>,
}

impl EngineInner {
    /// `<store>/volumes/<name>`, created when missing.
    pub(crate) fn volume_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(EngineError::Invalid {
                what: format!("cache volume {name:?}"),
                reason: "a name must be non-empty, without '/' and not start with '.'".into(),
            });
        }
        let dir = self.store.root().join("volumes").join(name);
        std::fs::create_dir_all(&dir).map_err(error::io_err("create", &dir))?;
        Ok(dir)
    }
}

/// The engine over one store; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
    ignore_cache: bool,
    output_limit: usize,
}

/// How many bytes of each of an exec's stdout and stderr its result keeps by default.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;

impl Engine {
    /// Opens the store, its container service and a solver whose cache is the store's database.
    /// Deletes what processes killed mid-exec left: their containers and their secret files.
    pub async fn open(options: StoreOptions) -> Result<Engine, EngineError> {
        let store = Store::open(options)?;
        let containers = Containers::open(store.clone()).await?;
        // Secret files of execs whose process was killed: nothing else would delete them.
        ops::remove_dead_secret_dirs();
        let cache = cache::SqliteCache::open(&store.root().join("metadata.db"))?;
        let solver = Solver::new(Arc::new(cache));
        let hasher = Arc::new(TreeHasher::open(store.root().join("metadata.db"))?);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                store,
                containers,
                solver,
                hasher,
            }),
            ignore_cache: false,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        })
    }

    /// This engine, with execs (built from it afterwards) run even when their result is
    /// cached; their fresh results are recorded.
    pub fn ignore_cache(mut self, yes: bool) -> Self {
        self.ignore_cache = yes;
        self
    }

    /// This engine, with execs (built from it afterwards) keeping only the last `bytes` bytes
    /// of each of their stdout and stderr in their results (and the cache), default
    /// [`DEFAULT_OUTPUT_LIMIT`]. A result that lost bytes starts with a line saying how many.
    /// Log events ([`EventKind::Log`]) still carry every line.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// An empty container: call [`Container::from`] next.
    pub fn container(&self) -> Container {
        Container {
            engine: self.clone(),
            label: None,
            vertex: None,
            spec: ExecSpec::default(),
            image: publish::ImageSettings::default(),
        }
    }

    /// The host, to read directories from.
    pub fn host(&self) -> Host {
        Host {
            engine: self.clone(),
        }
    }

    /// Solves every container at once, with `options` (progress events, cancellation,
    /// fail-fast); one result per container.
    pub async fn sync_all(
        &self,
        containers: &[Container],
        options: SolveOptions,
    ) -> Vec<Result<Output, EngineError>> {
        let targets: Vec<Option<Edge<Output>>> = containers
            .iter()
            .map(|c| c.vertex.as_ref().map(Vertex::edge))
            .collect();
        let edges: Vec<Edge<Output>> = targets.iter().flatten().cloned().collect();
        let solution = self.inner.solver.solve(&edges, options).await;
        let mut results = solution.into_results().into_iter();
        targets
            .iter()
            .map(|t| match t {
                Some(t) => match results.next() {
                    Some(r) => r.map_err(EngineError::from),
                    None => Err(EngineError::Invalid {
                        what: t.vertex().id().to_string(),
                        reason: "the solver returned no result".into(),
                    }),
                },
                None => Ok(Output::default()),
            })
            .collect()
    }

    async fn solve(&self, vertex: &Vertex<Output>) -> Result<Output, EngineError> {
        let solution = self
            .inner
            .solver
            .solve(&[vertex.edge()], SolveOptions::new())
            .await;
        let result = solution.into_results().into_iter().next();
        match result {
            Some(r) => Ok(r?),
            None => Err(EngineError::Invalid {
                what: vertex.id().to_string(),
                reason: "the solver returned no result".into(),
            }),
        }
    }
}

/// Reads directories of the host.
pub struct Host {
    engine: Engine,
}

impl Host {
    /// The host directory `path` (all of it; see [`Directory::with_include`] and
    /// [`Directory::with_exclude`]). Its content is hashed when it is solved.
    pub fn directory(&self, path: impl Into<PathBuf>) -> Directory {
        let path = path.into();
        let path = std::path::absolute(&path).unwrap_or(path);
        Directory::host(self.engine.clone(), None, path, Vec::new(), Vec::new())
    }
}

/// A directory: of the host, or of a container. Cheap to clone; lazy.
#[derive(Clone)]
pub struct Directory {
    engine: Engine,
    label: Option<String>,
    vertex: Vertex<Output>,
    host: Option<(PathBuf, Vec<String>, Vec<String>)>,
}

impl Directory {
    fn host(
        engine: Engine,
        label: Option<String>,
        path: PathBuf,
        include: Vec<String>,
        exclude: Vec<String>,
    ) -> Directory {
        let op = HostDirOp {
            hasher: engine.inner.hasher.clone(),
            path: path.clone(),
            include: include.clone(),
            exclude: exclude.clone(),
        };
        let name = label
            .clone()
            .unwrap_or_else(|| format!("host {}", path.display()));
        let vertex = Vertex::new(Arc::new(op), Vec::new(), VertexOptions::new(name));
        Directory {
            engine,
            label,
            vertex,
            host: Some((path, include, exclude)),
        }
    }

    fn rebuild(&self, f: impl FnOnce(&mut Vec<String>, &mut Vec<String>)) -> Directory {
        match &self.host {
            Some((path, include, exclude)) => {
                let (mut include, mut exclude) = (include.clone(), exclude.clone());
                f(&mut include, &mut exclude);
                Directory::host(
                    self.engine.clone(),
                    self.label.clone(),
                    path.clone(),
                    include,
                    exclude,
                )
            }
            None => self.clone(),
        }
    }

    /// Only the files matching one of these globs (relative to the directory), for a host
    /// directory; a container's directory is returned unchanged.
    pub fn with_include<S: Into<String>>(&self, globs: impl IntoIterator<Item = S>) -> Directory {
        self.rebuild(|include, _| include.extend(globs.into_iter().map(Into::into)))
    }

    /// Without the entries matching one of these globs (an excluded directory is left out
    /// whole), for a host directory.
    pub fn with_exclude<S: Into<String>>(&self, globs: impl IntoIterator<Item = S>) -> Directory {
        self.rebuild(|_, exclude| exclude.extend(globs.into_iter().map(Into::into)))
    }

    /// This directory with progress and errors naming `label` (a pipeline step).
    pub fn with_name(&self, label: impl Into<String>) -> Directory {
        let label = Some(label.into());
        match &self.host {
            Some((path, include, exclude)) => Directory::host(
                self.engine.clone(),
                label,
                path.clone(),
                include.clone(),
                exclude.clone(),
            ),
            None => Directory {
                label,
                ..self.clone()
            },
        }
    }

    /// The content digest: sha256 over the sorted relative paths, types, modes and contents.
    pub async fn digest(&self) -> Result<cairn_oci::Digest, EngineError> {
        if let Some((path, include, exclude)) = &self.host {
            let op = HostDirOp {
                hasher: self.engine.inner.hasher.clone(),
                path: path.clone(),
                include: include.clone(),
                exclude: exclude.clone(),
            };
            return op.digest().await;
        }
        let tmp = tempdir_in(self.engine.store().root())?;
        self.export(&tmp).await?;
        // A fresh temporary tree each time: nothing to gain from recording its files.
        let digest = HostDirOp {
            hasher: Arc::new(TreeHasher::uncached()),
            path: tmp.clone(),
            include: Vec::new(),
            exclude: Vec::new(),
        }
        .digest()
        .await;
        let _ = self.engine.store().remove_tree(&tmp);
        digest
    }

    fn step(&self) -> &str {
        self.vertex.id().name()
    }

    /// The subdirectory `path` of this directory (`..` stops at its root; symlinks are
    /// followed inside it). A missing one is an error when it is read.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        let path = path.into();
        let op = SubdirOp { path: path.clone() };
        let name = (self.label.clone()).unwrap_or_else(|| format!("{} {path}", self.step()));
        Directory {
            engine: self.engine.clone(),
            label: self.label.clone(),
            vertex: Vertex::new(
                Arc::new(op),
                vec![self.vertex.edge()],
                VertexOptions::new(name),
            ),
            host: None,
        }
    }

    /// The file `path` of this directory (relative to its root, symlinks followed inside it).
    pub fn file(&self, path: impl Into<String>) -> File {
        let path = path.into();
        let op = FileOp {
            path: path.clone(),
            workdir: None,
            in_container: false,
        };
        let name = (self.label.clone()).unwrap_or_else(|| format!("{} {path}", self.step()));
        File {
            engine: self.engine.clone(),
            vertex: Vertex::new(
                Arc::new(op),
                vec![self.vertex.edge()],
                VertexOptions::new(name),
            ),
        }
    }

    async fn source(&self) -> Result<DirSource, EngineError> {
        let output = self.engine.solve(&self.vertex).await?;
        output.directory.ok_or_else(|| EngineError::Invalid {
            what: self.vertex.id().to_string(),
            reason: "not a directory".into(),
        })
    }

    /// The names of the entries directly in this directory, sorted (for a host directory,
    /// those its include and exclude patterns take).
    pub async fn entries(&self) -> Result<Vec<String>, EngineError> {
        let source = self.source().await?;
        self.engine.inner.entries(self.step(), &source).await
    }

    /// Solves the directory and writes its contents into the host directory `dest` (created
    /// when missing; files already there are overwritten).
    pub async fn export(&self, dest: impl AsRef<Path>) -> Result<(), EngineError> {
        let source = self.source().await?;
        self.engine.inner.materialize(&source, dest.as_ref()).await
    }
}

/// A file of a container or a directory. Cheap to clone; lazy: nothing is read until one of
/// its async methods is awaited, and a missing file (or one that is not a regular file) is an
/// error then, naming the path and the step.
#[derive(Clone)]
pub struct File {
    engine: Engine,
    vertex: Vertex<Output>,
}

impl File {
    /// This file with progress and errors naming `name` (a pipeline step).
    pub fn with_name(&self, name: impl Into<String>) -> File {
        let op = Arc::clone(self.vertex.op());
        let inputs = self.vertex.inputs().to_vec();
        File {
            engine: self.engine.clone(),
            vertex: Vertex::new(op, inputs, VertexOptions::new(name)),
        }
    }

    async fn local(&self) -> Result<files::LocalFile, EngineError> {
        let output = self.engine.solve(&self.vertex).await?;
        let source = output.file.ok_or_else(|| EngineError::Invalid {
            what: self.vertex.id().to_string(),
            reason: "not a file".into(),
        })?;
        self.engine
            .inner
            .local_file(self.vertex.id().name(), &source)
            .await
    }

    /// The content, as bytes.
    pub async fn contents_bytes(&self) -> Result<Vec<u8>, EngineError> {
        self.local().await?.read()
    }

    /// The content, as text (an error when it is not UTF-8: see [`File::contents_bytes`]).
    pub async fn contents(&self) -> Result<String, EngineError> {
        let local = self.local().await?;
        String::from_utf8(local.read()?).map_err(|_| EngineError::Invalid {
            what: format!(
                "step {:?}: {}",
                self.vertex.id().name(),
                local.path.display()
            ),
            reason: "the file is not UTF-8 text; read it with contents_bytes".into(),
        })
    }

    /// The sha256 digest of the content.
    pub async fn digest(&self) -> Result<cairn_oci::Digest, EngineError> {
        let local = self.local().await?;
        tokio::task::spawn_blocking(move || local.digest())
            .await
            .map_err(|e| EngineError::Invalid {
                what: "hashing task".into(),
                reason: e.to_string(),
            })?
    }

    /// The size in bytes.
    pub async fn size(&self) -> Result<u64, EngineError> {
        Ok(self.local().await?.meta.len())
    }

    /// Writes the file to the host path `dest` (its parent directories created, a file there
    /// replaced), with the file's permission bits.
    pub async fn export(&self, dest: impl AsRef<Path>) -> Result<(), EngineError> {
        let local = self.local().await?;
        let dest = dest.as_ref().to_owned();
        tokio::task::spawn_blocking(move || local.copy_to(&dest, None))
            .await
            .map_err(|e| EngineError::Invalid {
                what: "export task".into(),
                reason: e.to_string(),
            })?
    }
}

fn tempdir_in(root: &Path) -> Result<PathBuf, EngineError> {
    let dir = root
        .join("tmp")
        .join(format!("digest-{}", hex::encode(rand::random::<[u8; 8]>())));
    std::fs::create_dir_all(&dir).map_err(error::io_err("create", &dir))?;
    Ok(dir)
}

/// A named directory of the store (`<store>/volumes/<name>`) mounted into containers; its
/// content is deliberately not part of any cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheVolume {
    name: String,
}

impl CacheVolume {
    /// The volume `name`; containers naming the same volume share its contents.
    pub fn new(name: impl Into<String>) -> Self {
        CacheVolume { name: name.into() }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A secret: a name (what cache keys see) and a value (what only the container sees).
#[derive(Clone)]
pub struct Secret {
    name: String,
    value: SecretValue,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// A secret with this value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Secret {
            name: name.into(),
            value: SecretValue(Arc::new(value.into())),
        }
    }

    /// The value of the host environment variable `var`, read now.
    pub fn from_env(name: impl Into<String>, var: &str) -> Result<Self, EngineError> {
        let name = name.into();
        match std::env::var_os(var) {
            Some(v) => Ok(Secret::new(name, v.into_encoded_bytes())),
            None => Err(EngineError::Secret {
                name,
                reason: format!("environment variable {var} is not set"),
            }),
        }
    }

    /// The contents of the host file `path`, read now.
    pub fn from_file(name: impl Into<String>, path: impl AsRef<Path>) -> Result<Self, EngineError> {
        let name = name.into();
        match std::fs::read(path.as_ref()) {
            Ok(v) => Ok(Secret::new(name, v)),
            Err(e) => Err(EngineError::Secret {
                name,
                reason: format!("read {}: {e}", path.as_ref().display()),
            }),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A container: a filesystem (a chain of vertices) and the state later execs run with.
/// Cheap to clone; every `with_*` returns a new value; nothing runs until awaited.
#[derive(Clone)]
pub struct Container {
    engine: Engine,
    label: Option<String>,
    vertex: Option<Vertex<Output>>,
    spec: ExecSpec,
    /// Image configuration set on the container (entrypoint, labels …): not in any key.
    image: publish::ImageSettings,
}

impl Container {
    fn name(&self, what: impl FnOnce() -> String) -> String {
        self.label.clone().unwrap_or_else(what)
    }

    fn vertex(
        &self,
        op: Arc<dyn cairn_solver::Op<Output>>,
        inputs: Vec<Edge<Output>>,
        name: String,
    ) -> Vertex<Output> {
        Vertex::new(op, inputs, VertexOptions::new(name))
    }

    /// This container with progress and errors naming `label` (a pipeline step). Not an OCI
    /// label: those are image configuration.
    pub fn with_name(&self, label: impl Into<String>) -> Container {
        let mut c = self.clone();
        c.label = Some(label.into());
        c.spec.label = c.label.clone().unwrap_or_default();
        c
    }

    /// The image `reference` (pulled when missing) as the filesystem and configuration.
    pub fn from(&self, reference: impl Into<String>) -> Container {
        let reference = reference.into();
        let op = FromOp {
            engine: self.engine.inner.clone(),
            reference: reference.clone(),
        };
        let name = self.name(|| format!("from {reference}"));
        let mut c = self.clone();
        c.vertex = Some(self.vertex(Arc::new(op), Vec::new(), name));
        c
    }

    /// The image in an archive (an OCI layout directory, an OCI archive or a docker archive,
    /// detected now) as the filesystem and configuration: `from("oci-archive:PATH")` and its
    /// siblings. The archive is imported into the store when the container is first needed,
    /// every blob checked against its digest.
    pub fn import(&self, path: impl AsRef<Path>) -> Result<Container, EngineError> {
        let path = std::path::absolute(path.as_ref()).unwrap_or_else(|_| path.as_ref().to_owned());
        let format = cairn_images::ArchiveFormat::detect(&path)?;
        Ok(self.from(format!("{}:{}", format.transport(), path.display())))
    }

    /// Runs `args` in the container; later calls see its filesystem changes.
    pub fn with_exec<S: Into<String>>(&self, args: impl IntoIterator<Item = S>) -> Container {
        let mut spec = self.spec.clone();
        spec.args = args.into_iter().map(Into::into).collect();
        spec.label = self.name(|| format!("exec {}", spec.args.join(" ")));
        let name = spec.label.clone();
        let op = ExecOp {
            engine: self.engine.inner.clone(),
            spec,
            output_limit: self.engine.output_limit,
        };
        // The container, then the mounted directories and files (their keys are the exec's).
        let mounted = self
            .spec
            .mounts
            .iter()
            .filter_map(|(_, m)| m.edge().cloned());
        let inputs = self
            .vertex
            .iter()
            .map(Vertex::edge)
            .chain(mounted)
            .collect();
        let mut c = self.clone();
        let options = VertexOptions::new(name).ignore_cache(self.engine.ignore_cache);
        c.vertex = Some(Vertex::new(Arc::new(op), inputs, options));
        c
    }

    /// Sets an environment variable for later execs.
    pub fn with_env_variable(&self, key: impl Into<String>, value: impl Into<String>) -> Container {
        let mut c = self.clone();
        c.spec.env.insert(key.into(), value.into());
        c
    }

    /// Sets the working directory of later execs.
    pub fn with_workdir(&self, path: impl Into<String>) -> Container {
        let mut c = self.clone();
        c.spec.workdir = Some(path.into());
        c
    }

    /// Sets the user of later execs (`name`, `uid` or `uid:gid`).
    pub fn with_user(&self, user: impl Into<String>) -> Container {
        let mut c = self.clone();
        c.spec.user = Some(user.into());
        c
    }

    /// Sets the network of later execs.
    pub fn with_network(&self, network: Network) -> Container {
        let mut c = self.clone();
        c.spec.network = network;
        c
    }

    /// Copies `directory` into the container's filesystem at `path`, as a new snapshot.
    pub fn with_directory(&self, path: impl Into<String>, directory: &Directory) -> Container {
        let path = path.into();
        let op = CopyOp {
            engine: self.engine.inner.clone(),
            path: path.clone(),
            has_base: self.vertex.is_some(),
        };
        let mut inputs: Vec<_> = self.vertex.iter().map(Vertex::edge).collect();
        inputs.push(directory.vertex.edge());
        let name = self.name(|| format!("copy to {path}"));
        let mut c = self.clone();
        c.vertex = Some(self.vertex(Arc::new(op), inputs, name));
        c
    }

    /// Mounts the cache volume at `path` in later execs, shared with concurrent users; its
    /// content is not part of any key.
    pub fn with_mounted_cache(&self, path: impl Into<String>, cache: &CacheVolume) -> Container {
        self.with_mounted_cache_sharing(path, cache, CacheSharing::Shared)
    }

    /// Mounts the cache volume at `path` in later execs, shared with concurrent execs as
    /// `sharing` says. Neither its content nor the sharing mode is part of any key.
    pub fn with_mounted_cache_sharing(
        &self,
        path: impl Into<String>,
        cache: &CacheVolume,
        sharing: CacheSharing,
    ) -> Container {
        let mut c = self.clone();
        let path = path.into();
        c.spec.caches.retain(|(p, _)| *p != path);
        c.spec.caches.push((path.clone(), cache.name.clone()));
        c.spec.cache_sharing.insert(path, sharing);
        c
    }

    /// Sets the environment variable `name` to the secret's value in later execs; keys see
    /// only the secret's name.
    pub fn with_secret_variable(&self, name: impl Into<String>, secret: &Secret) -> Container {
        let mut c = self.clone();
        let var = name.into();
        c.spec.secret_env.retain(|(v, _, _)| *v != var);
        c.spec
            .secret_env
            .push((var, secret.name.clone(), secret.value.clone()));
        c
    }

    /// Mounts the secret as a read-only file at `path` in later execs (from a private tmpfs
    /// directory outside the store, deleted after each exec).
    pub fn with_mounted_secret(&self, path: impl Into<String>, secret: &Secret) -> Container {
        let mut c = self.clone();
        let path = path.into();
        c.spec.secret_files.retain(|(p, _, _)| *p != path);
        c.spec
            .secret_files
            .push((path, secret.name.clone(), secret.value.clone()));
        c
    }

    /// Writes a file of content `contents` (mode 0644) at `path` (relative paths are in the
    /// working directory), as a new snapshot. The key holds the content's digest: another
    /// content gives another key, and so reruns later execs.
    pub fn with_new_file(
        &self,
        path: impl Into<String>,
        contents: impl Into<Vec<u8>>,
    ) -> Container {
        self.with_new_file_permissions(path, contents, 0o644)
    }

    /// [`Container::with_new_file`] with the permission bits `permissions` (`0o755`).
    pub fn with_new_file_permissions(
        &self,
        path: impl Into<String>,
        contents: impl Into<Vec<u8>>,
        permissions: u32,
    ) -> Container {
        let path = path.into();
        let op = NewFileOp {
            engine: self.engine.inner.clone(),
            path: path.clone(),
            contents: Arc::new(contents.into()),
            mode: permissions,
            workdir: self.spec.workdir.clone(),
            has_base: self.vertex.is_some(),
        };
        let inputs = self.vertex.iter().map(Vertex::edge).collect();
        let name = self.name(|| format!("new file {path}"));
        let mut c = self.clone();
        c.vertex = Some(self.vertex(Arc::new(op), inputs, name));
        c
    }

    /// Copies `file` to `path` (relative paths are in the working directory), keeping its
    /// permission bits, as a new snapshot.
    pub fn with_file(&self, path: impl Into<String>, file: &File) -> Container {
        self.copy_file(path.into(), file, None)
    }

    /// [`Container::with_file`] with the permission bits `permissions` instead of the file's.
    pub fn with_file_permissions(
        &self,
        path: impl Into<String>,
        file: &File,
        permissions: u32,
    ) -> Container {
        self.copy_file(path.into(), file, Some(permissions))
    }

    fn copy_file(&self, path: String, file: &File, mode: Option<u32>) -> Container {
        let op = CopyFileOp {
            engine: self.engine.inner.clone(),
            path: path.clone(),
            mode,
            workdir: self.spec.workdir.clone(),
            source_step: file.vertex.id().name().to_owned(),
            has_base: self.vertex.is_some(),
        };
        let mut inputs: Vec<_> = self.vertex.iter().map(Vertex::edge).collect();
        inputs.push(file.vertex.edge());
        let name = self.name(|| format!("copy file to {path}"));
        let mut c = self.clone();
        c.vertex = Some(self.vertex(Arc::new(op), inputs, name));
        c
    }

    fn with_mount(&self, path: String, mounted: Mounted) -> Container {
        let mut c = self.clone();
        c.spec.mounts.retain(|(p, _)| *p != path);
        c.spec.mounts.push((path, mounted));
        c
    }

    /// Mounts `directory` at `path` in later execs instead of copying it into the
    /// filesystem: each exec sees a fresh read-write copy, so what it writes there changes
    /// neither the directory's source nor the exec's committed result. The directory's key
    /// is part of each later exec's key.
    pub fn with_mounted_directory(
        &self,
        path: impl Into<String>,
        directory: &Directory,
    ) -> Container {
        self.with_mount(path.into(), Mounted::Directory(directory.vertex.edge()))
    }

    /// Mounts `file` at `path` in later execs (a fresh read-write copy each time, as
    /// [`Container::with_mounted_directory`] does); its key is part of each later exec's.
    pub fn with_mounted_file(&self, path: impl Into<String>, file: &File) -> Container {
        self.with_mount(path.into(), Mounted::File(file.vertex.edge()))
    }

    /// Mounts an empty tmpfs at `path` in later execs; what is written there is gone after
    /// each exec.
    pub fn with_mounted_temp(&self, path: impl Into<String>) -> Container {
        self.with_mount(path.into(), Mounted::Temp)
    }

    /// The file `path` of the container's filesystem (relative paths are in the working
    /// directory; symlinks are followed inside the container). Mounts are not part of the
    /// filesystem.
    pub fn file(&self, path: impl Into<String>) -> File {
        let path = path.into();
        let op = FileOp {
            path: path.clone(),
            workdir: self.spec.workdir.clone(),
            in_container: true,
        };
        let inputs = self.vertex.iter().map(Vertex::edge).collect();
        let name = self.name(|| format!("file {path}"));
        File {
            engine: self.engine.clone(),
            vertex: self.vertex(Arc::new(op), inputs, name),
        }
    }

    /// The container's whole filesystem, as a directory.
    pub fn rootfs(&self) -> Directory {
        self.directory("/")
    }

    /// The directory `path` of the container's filesystem (symlinks are followed inside the
    /// container). Mounts are not part of the filesystem: under a mount point it is what the
    /// snapshot holds there.
    pub fn directory(&self, path: impl Into<String>) -> Directory {
        let path = path.into();
        let op = ContainerDirOp { path: path.clone() };
        let inputs = self.vertex.iter().map(Vertex::edge).collect();
        let name = self.name(|| format!("directory {path}"));
        Directory {
            engine: self.engine.clone(),
            label: self.label.clone(),
            vertex: self.vertex(Arc::new(op), inputs, name),
            host: None,
        }
    }

    async fn output(&self) -> Result<Output, EngineError> {
        match &self.vertex {
            Some(v) => self.engine.solve(v).await,
            None => Ok(Output::default()),
        }
    }

    /// Solves the container: runs what is not cached.
    pub async fn sync(&self) -> Result<Container, EngineError> {
        self.output().await?;
        Ok(self.clone())
    }

    /// The standard output of the last exec (secrets masked).
    pub async fn stdout(&self) -> Result<String, EngineError> {
        Ok(self.output().await?.stdout)
    }

    /// The standard error of the last exec (secrets masked).
    pub async fn stderr(&self) -> Result<String, EngineError> {
        Ok(self.output().await?.stderr)
    }

    /// The exit code of the last exec (0: a failing exec is an error).
    pub async fn exit_code(&self) -> Result<Option<i32>, EngineError> {
        Ok(self.output().await?.exit_code)
    }
}

#[cfg(test)]
mod tests;
