//! Containers from the images of a cairn store: what `cairn exec`, `cairn ps` and
//! `cairn kill` do, and what the pipeline engine builds on.
//!
//! Running a container goes like this:
//!
//! 1. The image is resolved (and pulled when missing); its config gives the defaults — Env,
//!    WorkingDir, User, Entrypoint, Cmd — that the caller's [`ExecOptions`] override as
//!    Docker's do.
//! 2. A fresh active snapshot is prepared on top of the image's top layer: the container
//!    writes into its own upper directory, the image's snapshots are lower layers nobody
//!    writes to, and any number of containers of one image run at once. A layer nobody will
//!    commit is a scratch snapshot, which the store's database never hears of; mount points
//!    the image lacks for the host's `/etc` files come from a shared lower layer
//!    (`run/.stubs`), not from the writable one.
//! 3. The container is recorded in `containers/<id>.json` (with this process's store lease)
//!    and started by the runtime helper ([`cairn_runtime::Runtime`]).
//! 4. When it exits its active snapshot is removed, unless the caller commits it.
//!
//! A process killed at any point leaves a record whose lease is dead: the next process that
//! opens [`Containers`] on the store kills what still runs of it and deletes its state.

#![deny(missing_docs)]

mod stubs;
mod user;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_images::{ImageRecord, ImagesError, Store, LEASE_LABEL};
use cairn_runtime::{
    ContainerConfig, ContainerStdio, ExitStatus, ExtraMount, Network, Resources, RootfsMount,
    Runtime, RuntimeError, RuntimeOptions,
};
use cairn_snapshot::Snapshotter;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use cairn_runtime::ExitStatus as Exit;

/// The `PATH` Docker gives containers whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of the container service; each names the container, image or path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainersError {
    /// The store or image failed.
    #[error(transparent)]
    Images(#[from] ImagesError),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] cairn_snapshot::SnapshotError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The options do not make a runnable container.
    #[error("{image}: {reason}")]
    InvalidOptions {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A resource limit was asked for that this host cannot enforce.
    #[error("{limit} cannot be enforced here: {reason}")]
    LimitUnavailable {
        /// The option (`--memory` …).
        limit: &'static str,
        /// Why not.
        reason: String,
    },
    /// No container has that id.
    #[error("no running container {0}")]
    NotFound(String),
    /// A file of the container's state could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainersError {
    let path = path.to_owned();
    move |source| ContainersError::Io {
        action,
        path,
        source,
    }
}

/// How long a half-written file or directory (a record, a stub directory) may stay before it
/// is taken for the debris of a killed process: writing one takes microseconds.
const DEBRIS_GRACE: Duration = Duration::from_secs(60);

/// Whether `entry` last changed more than `age` ago.
fn changed_before(entry: &std::fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// A host path bound into the container (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host path; relative paths are taken from the current directory.
    pub source: PathBuf,
    /// The absolute path inside the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;

    /// Parses `HOST:CTR` or `HOST:CTR:ro` (`rw` is accepted too).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, destination, readonly) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => return Err(format!("volume {s:?}: expected HOST:CONTAINER[:ro]")),
        };
        if source.is_empty() || destination.is_empty() {
            return Err(format!("volume {s:?}: expected HOST:CONTAINER[:ro]"));
        }
        Ok(Volume {
            source: source.into(),
            destination: destination.into(),
            readonly,
        })
    }
}

/// What the caller changes from the image's defaults; `Default` runs the image as it is.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command; empty means the image's Cmd.
    pub args: Vec<String>,
    /// Replaces the image's Entrypoint (and then its Cmd is not used either).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` entries over the image's Env; a bare `KEY` takes the caller's value.
    pub env: Vec<String>,
    /// The working directory (absolute); default the image's WorkingDir, else `/`.
    pub workdir: Option<String>,
    /// `uid[:gid]` or a name from the image's `/etc/passwd`; default the image's User.
    pub user: Option<String>,
    /// Host paths to bind.
    pub volumes: Vec<Volume>,
    /// Paths to mount an empty tmpfs on.
    pub tmpfs: Vec<String>,
    /// Host network (default) or a namespace with only loopback.
    pub network: Network,
    /// cgroup limits.
    pub resources: Resources,
    /// The container's stdio is a terminal.
    pub tty: bool,
}

/// A container to run on top of a committed snapshot, resolved by the caller (the pipeline
/// engine keeps its own Env, WorkingDir and User, as Dagger's containers do) except for the
/// user, which is looked up in the snapshot's `/etc/passwd`.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// What `cairn ps` shows as the image: a reference, or a pipeline step's name.
    pub label: String,
    /// The committed snapshot the root filesystem starts from; `None` for an empty root.
    pub parent: Option<String>,
    /// The command.
    pub args: Vec<String>,
    /// The environment (`PATH` and `HOSTNAME` are added when missing).
    pub env: Vec<String>,
    /// The working directory (absolute).
    pub cwd: String,
    /// `uid[:gid]` or a name from the snapshot's `/etc/passwd`; empty for root.
    pub user: String,
    /// Binds and tmpfs mounts.
    pub mounts: Vec<ExtraMount>,
    /// The network.
    pub network: Network,
    /// cgroup limits.
    pub resources: Resources,
    /// The stdio is a terminal.
    pub tty: bool,
    /// The caller may commit the writable layer ([`RunningContainer::run_and_commit`]).
    /// Otherwise it is a scratch snapshot ([`cairn_snapshot::Snapshotter::prepare_scratch`]),
    /// which is only ever thrown away and costs the store's database nothing.
    pub commit_layer: bool,
}

/// What `cairn ps` shows of a container; kept in `containers/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container id (12 hex digits).
    pub id: String,
    /// The image reference.
    pub image: String,
    /// The command.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// The store lease of the engine process that runs it.
    pub lease: String,
    /// Its init's pid, once started.
    pub pid: Option<i32>,
    /// Its init's start time (clock ticks since boot, `/proc/PID/stat` field 22), which tells
    /// a recycled pid from the container.
    pub start_time: Option<u64>,
    /// Whether it asked for cgroup limits.
    #[serde(default)]
    pub limits: bool,
}

/// One entry of `containers/` (see [`Containers::records`]).
struct RecordEntry {
    id: String,
    /// The record file, or the directory of the old layout.
    path: PathBuf,
    /// `None`: missing or unreadable.
    record: Option<ContainerRecord>,
    legacy: bool,
    /// Last changed more than a minute ago.
    old: bool,
}

struct Inner {
    store: Store,
    runtime: tokio::sync::OnceCell<Runtime>,
    /// `containers/`: one record (`ID.json`) per container this store runs.
    dir: PathBuf,
    /// `run/`: libcontainer's state, one directory per container; and `run/.stubs`, the
    /// mount points images lack (see [`stubs`]).
    state_root: PathBuf,
}

/// The container service of one store; cheap to clone.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

/// How a container run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit status.
    pub status: ExitStatus,
    /// It was stopped because its timeout ran out.
    pub timed_out: bool,
    /// It was stopped because the caller asked (Ctrl-C, SIGTERM).
    pub stopped: bool,
    /// Its writable layer was committed as the snapshot the caller named.
    pub committed: bool,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`).
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

impl Containers {
    /// The container service of `store`. Kills and cleans up containers whose engine died.
    pub async fn open(store: Store) -> Result<Containers, ContainersError> {
        let dir = store.root().join("containers");
        let state_root = store.root().join("run");
        for d in [&dir, &state_root] {
            std::fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let containers = Containers {
            inner: Arc::new(Inner {
                store,
                runtime: tokio::sync::OnceCell::new(),
                dir,
                state_root,
            }),
        };
        containers.recover().await?;
        Ok(containers)
    }

    /// Starts, in the background, the runtime helper that containers asking for `resources`
    /// will run in, so that its start overlaps what the caller does before its first
    /// container (looking up the image, preparing the snapshot). Optional: the first
    /// container starts it otherwise.
    pub async fn start_runtime_for(&self, resources: &Resources) -> Result<(), ContainersError> {
        self.runtime().await?.start_helper_for(resources);
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    async fn runtime(&self) -> Result<&Runtime, ContainersError> {
        let inner = &self.inner;
        inner
            .runtime
            .get_or_try_init(|| async {
                Ok::<_, ContainersError>(Runtime::new(RuntimeOptions {
                    program: inner.store.helper_program()?,
                    state_root: inner.state_root.clone(),
                    mapping: inner.store.id_mapping().cloned(),
                }))
            })
            .await
    }

    /// `containers/ID.json`: a file of its own rather than a directory, which on the store's
    /// disk cost a directory made and removed in every exec.
    fn record_path(&self, id: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.json"))
    }

    fn write_record(&self, record: &ContainerRecord) -> Result<(), ContainersError> {
        let path = self.record_path(&record.id);
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, serde_json::to_vec(record).expect("serialises"))
            .map_err(io_err("write", &temp))?;
        std::fs::rename(&temp, &path).map_err(io_err("write", &path))
    }

    /// Deletes container `id`'s record, if it is there.
    fn remove_record(&self, id: &str) -> Result<(), ContainersError> {
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every container record in `containers/`, read. Also takes what a killed process left
    /// half-written (a `.json.tmp` older than a minute) and the layout of cairn before
    /// records were files (`ID/record.json`), which a killed engine of that version may have
    /// left.
    fn records(&self) -> Result<Vec<RecordEntry>, ContainersError> {
        let dir = &self.inner.dir;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = || changed_before(&entry, DEBRIS_GRACE);
            let (id, file, legacy) = if let Some(id) = name.strip_suffix(".json") {
                (id.to_owned(), entry.path(), false)
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                (name.clone(), entry.path().join("record.json"), true)
            } else {
                if name.ends_with(".json.tmp") && old() {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let record = std::fs::read(&file)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            out.push(RecordEntry {
                id,
                path: entry.path(),
                record,
                legacy,
                old: old(),
            });
        }
        Ok(out)
    }

    /// Containers whose engine is gone: kill them, delete their runtime state, snapshot and
    /// record. Containers of live engines are left alone.
    async fn recover(&self) -> Result<(), ContainersError> {
        let store = &self.inner.store;
        let mut stale = Vec::new();
        for entry in self.records()? {
            match &entry.record {
                Some(r) if store.lease_is_live(&r.lease) => {}
                Some(_) => stale.push(entry),
                // Records are written whole (write and rename), before anything else is
                // started; an unreadable one, or a directory of the old layout without one,
                // is only taken when old enough not to be one being written.
                None if entry.old => stale.push(entry),
                None => {}
            }
        }
        for RecordEntry {
            id,
            path,
            record,
            legacy,
            ..
        } in &stale
        {
            if let Some(ContainerRecord {
                pid: Some(pid),
                start_time: Some(start),
                ..
            }) = record
            {
                if process_start_time(*pid) == Some(*start) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if self.inner.state_root.join(id).exists() {
                let had_limits = record.as_ref().is_some_and(|r| r.limits);
                self.runtime().await?.reap(id, had_limits).await?;
            }
            let key = snapshot_key(id);
            match store.snapshots().remove(&key) {
                Ok(()) => {}
                Err(e) if e.kind() == cairn_snapshot::ErrorKind::NotFound => {}
                Err(e) => warn!(container = %id, error = %e, "remove snapshot of dead container"),
            }
            if *legacy {
                store.remove_tree(path)?;
            } else {
                self.remove_record(id)?;
            }
        }
        stubs::remove_stale(&self.inner.state_root.join(".stubs"));
        if !stale.is_empty() {
            info!(
                count = stale.len(),
                "cleaned up containers of engines that died"
            );
        }
        Ok(())
    }

    /// The containers of live engines on this store.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainersError> {
        let mut out: Vec<ContainerRecord> = self
            .records()?
            .into_iter()
            .filter_map(|entry| entry.record)
            .filter(|r| r.pid.is_some() && self.inner.store.lease_is_live(&r.lease))
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Finds a running container by id or unique id prefix.
    pub fn find(&self, id: &str) -> Result<ContainerRecord, ContainersError> {
        let mut matches: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|r| !id.is_empty() && r.id.starts_with(id))
            .collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            _ => Err(ContainersError::NotFound(id.to_owned())),
        }
    }

    /// Stops a container that may belong to another engine process: SIGTERM to its init
    /// (which forwards it to the command), then SIGKILL after `grace` if it still runs.
    /// With `signal` set, sends only that signal.
    pub async fn kill(
        &self,
        id: &str,
        signal: Option<nix::sys::signal::Signal>,
        grace: Duration,
    ) -> Result<ContainerRecord, ContainersError> {
        let record = self.find(id)?;
        let (Some(pid), Some(start)) = (record.pid, record.start_time) else {
            return Err(ContainersError::NotFound(id.to_owned()));
        };
        let pid_t = nix::unistd::Pid::from_raw(pid);
        let alive = || process_start_time(pid) == Some(start);
        let send = |sig| match nix::sys::signal::kill(pid_t, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ContainersError::Io {
                action: "signal",
                path: format!("/proc/{pid}").into(),
                source: e.into(),
            }),
        };
        if !alive() {
            return Ok(record);
        }
        if let Some(sig) = signal {
            send(sig)?;
            return Ok(record);
        }
        send(nix::sys::signal::Signal::SIGTERM)?;
        let deadline = tokio::time::Instant::now() + grace;
        while alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if alive() {
            send(nix::sys::signal::Signal::SIGKILL)?;
        }
        Ok(record)
    }

    /// Creates and starts a container of `image` (pulled first if the store lacks it).
    pub async fn start(
        &self,
        image: &str,
        options: &ExecOptions,
        stdio: ContainerStdio,
    ) -> Result<RunningContainer, ContainersError> {
        let store = &self.inner.store;
        let image = match store.image(image) {
            Ok(i) => i,
            Err(ImagesError::ImageNotFound(_)) if !image.starts_with("sha256:") => {
                store.pull(image, &()).await?
            }
            Err(e) => return Err(e.into()),
        };
        let request = self.image_request(&image, options)?;
        self.start_request(request, stdio).await
    }

    /// Creates and starts a container on top of a committed snapshot (or an empty root),
    /// with everything but the user resolved by the caller: the pipeline engine's way in.
    pub async fn start_request(
        &self,
        request: RunRequest,
        stdio: ContainerStdio,
    ) -> Result<RunningContainer, ContainersError> {
        let store = &self.inner.store;
        let runtime = self.runtime().await?.clone();
        runtime.start_helper_for(&request.resources);
        let id = hex::encode(rand::random::<[u8; 6]>());
        debug!(container = %id, label = %request.label, "creating container");
        let mut record = ContainerRecord {
            id: id.clone(),
            image: request.label.clone(),
            command: request.args.clone(),
            created: now(),
            lease: store.lease().to_owned(),
            pid: None,
            start_time: None,
            limits: request.resources.any(),
        };
        let key = snapshot_key(&id);
        self.write_record(&record)?;
        let prepared = (|| {
            let labels = BTreeMap::from([(LEASE_LABEL.to_owned(), store.lease().to_owned())]);
            let parent = request.parent.as_deref();
            let mounts = if request.commit_layer {
                store.snapshots().prepare(&key, parent, &labels)?
            } else {
                store.snapshots().prepare_scratch(&key, parent, &labels)?
            };
            // The image's layers, bottom first, as the snapshotter just found them.
            let mut layers = mounts.first().map(|m| m.lower_dirs()).unwrap_or_default();
            layers.reverse();
            let mut config = self.container_config(&request, &id, &layers)?;
            let stubs = stubs::lower_for(
                &self.inner.state_root.join(".stubs"),
                &layers,
                etc_files_mounted(&request.mounts),
            )?;
            config.rootfs = rootfs_from(&mounts, stubs.as_deref());
            Ok(config)
        })();
        let config = match prepared {
            Ok(c) => c,
            Err(e) => {
                self.discard(&id);
                return Err(e);
            }
        };
        let started = match runtime.create(&id, config, stdio).await {
            Ok(s) => s,
            Err(e) => {
                self.discard(&id);
                return Err(e.into());
            }
        };
        record.pid = Some(started.pid);
        record.start_time = process_start_time(started.pid);
        self.write_record(&record)?;
        debug!(pid = started.pid, "container running");
        Ok(RunningContainer {
            containers: self.clone(),
            runtime,
            record,
            exit: Some(started.exit),
        })
    }

    /// The runtime config of a request: the user looked up in the parent's `/etc/passwd`
    /// and checked against the store's id mapping.
    fn container_config(
        &self,
        request: &RunRequest,
        id: &str,
        layers: &[PathBuf],
    ) -> Result<ContainerConfig, ContainersError> {
        let store = &self.inner.store;
        let invalid = |reason: String| ContainersError::InvalidOptions {
            image: request.label.clone(),
            reason,
        };
        if request.args.is_empty() {
            return Err(invalid("no command to run".into()));
        }
        if !user::is_clean_absolute(&request.cwd) {
            return Err(invalid(format!(
                "working directory {:?} is not an absolute path",
                request.cwd
            )));
        }
        let passwd = user::read_from_layers(layers, "etc/passwd");
        let group = user::read_from_layers(layers, "etc/group");
        let mut process_user =
            user::resolve_user(&request.user, passwd.as_deref(), group.as_deref())
                .map_err(invalid)?;
        if let Some(mapping) = store.id_mapping() {
            check_mapped(mapping, &mut process_user).map_err(invalid)?;
        }
        check_limits(&request.resources, store.is_rootless())?;
        let mut env = request.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={id}"));
        }
        Ok(ContainerConfig {
            args: request.args.clone(),
            env,
            cwd: request.cwd.clone(),
            user: process_user,
            hostname: id.to_owned(),
            rootfs: RootfsMount::Bind {
                source: PathBuf::new(),
            },
            mounts: request.mounts.clone(),
            network: request.network,
            resources: request.resources,
            tty: request.tty,
        })
    }

    /// Commits container `id`'s writable layer as snapshot `name`, after syncing it. Returns
    /// false when `name` exists already (committed by another process).
    fn commit(
        &self,
        id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, ContainersError> {
        let snapshots = self.inner.store.snapshots();
        let key = snapshot_key(id);
        if let Some(upper) = snapshots
            .mounts(&key)?
            .first()
            .and_then(cairn_snapshot::Mount::writable_dir)
        {
            let dir = std::fs::File::open(&upper).map_err(io_err("open", &upper))?;
            nix::unistd::syncfs(&dir).map_err(|e| ContainersError::Io {
                action: "sync",
                path: upper.clone(),
                source: e.into(),
            })?;
        }
        match snapshots.commit(name, &key, labels) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == cairn_snapshot::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a container's snapshot and record.
    fn discard(&self, id: &str) {
        let store = &self.inner.store;
        if let Err(e) = store.snapshots().remove(&snapshot_key(id)) {
            if e.kind() != cairn_snapshot::ErrorKind::NotFound {
                warn!(container = %id, error = %e, "remove container snapshot");
            }
        }
        if let Err(e) = self.remove_record(id) {
            warn!(container = %id, error = %e, "remove container record");
        }
    }

    /// The request for `image` with `options` applied, as Docker would run it.
    fn image_request(
        &self,
        image: &ImageRecord,
        options: &ExecOptions,
    ) -> Result<RunRequest, ContainersError> {
        let invalid = |reason: String| ContainersError::InvalidOptions {
            image: image.reference.clone(),
            reason,
        };
        let store = &self.inner.store;
        let image_config = store.image_config(image)?;
        let defaults = image_config.config().clone().unwrap_or_default();

        let entrypoint = match &options.entrypoint {
            Some(e) => e.clone(),
            None => defaults.entrypoint().clone().unwrap_or_default(),
        };
        let cmd = if !options.args.is_empty() {
            options.args.clone()
        } else if options.entrypoint.is_some() {
            Vec::new()
        } else {
            defaults.cmd().clone().unwrap_or_default()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(invalid(
                "no command given and the image has no Entrypoint or Cmd".into(),
            ));
        }

        let mut env: Vec<String> = defaults.env().clone().unwrap_or_default();
        for entry in &options.env {
            let (key, value) = match entry.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => match std::env::var(entry) {
                    Ok(v) => (entry.clone(), v),
                    Err(_) => continue,
                },
            };
            if key.is_empty() {
                return Err(invalid(format!("environment entry {entry:?} has no name")));
            }
            set_env(&mut env, &key, &value);
        }
        if options.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }

        let cwd = options
            .workdir
            .clone()
            .or_else(|| defaults.working_dir().clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        if !user::is_clean_absolute(&cwd) {
            return Err(invalid(format!(
                "working directory {cwd:?} is not an absolute path"
            )));
        }

        let user_spec = options
            .user
            .clone()
            .or_else(|| defaults.user().clone())
            .unwrap_or_default();

        let mut mounts = Vec::new();
        for v in &options.volumes {
            if !user::is_clean_absolute(&v.destination) {
                return Err(invalid(format!(
                    "volume destination {:?} is not an absolute path",
                    v.destination
                )));
            }
            let source =
                std::path::absolute(&v.source).map_err(io_err("resolve volume", &v.source))?;
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(invalid(format!(
                    "volume source {} does not exist",
                    source.display()
                )));
            }
            mounts.push(ExtraMount::Bind {
                source,
                destination: v.destination.clone(),
                readonly: v.readonly,
            });
        }
        for t in &options.tmpfs {
            if !user::is_clean_absolute(t) {
                return Err(invalid(format!("tmpfs path {t:?} is not an absolute path")));
            }
            mounts.push(ExtraMount::Tmpfs {
                destination: t.clone(),
            });
        }
        if options.network == Network::Host {
            // Name resolution as on the host, as Docker and podman give host-network
            // containers; read-only, so a step cannot change the host's.
            for file in ["/etc/resolv.conf", "/etc/hosts"] {
                if Path::new(file).is_file() && !mounts_cover(&mounts, file) {
                    mounts.push(ExtraMount::Bind {
                        source: file.into(),
                        destination: file.into(),
                        readonly: true,
                    });
                }
            }
        }
        Ok(RunRequest {
            label: image.reference.clone(),
            parent: image.top_snapshot.as_ref().map(|d| d.as_str().to_owned()),
            args,
            env,
            cwd,
            user: user_spec,
            mounts,
            network: options.network,
            resources: options.resources,
            tty: options.tty,
            commit_layer: false,
        })
    }
}

fn mounts_cover(mounts: &[ExtraMount], path: &str) -> bool {
    mounts.iter().any(|m| match m {
        ExtraMount::Bind { destination, .. } | ExtraMount::Tmpfs { destination } => {
            destination == path
        }
    })
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix) && e != key);
    env.push(format!("{key}={value}"));
}

/// The snapshot key of a container's writable layer.
pub fn snapshot_key(id: &str) -> String {
    format!("container-{id}")
}

/// The names of the files bound directly under `/etc` (where [`stubs`] may supply their
/// mount points).
fn etc_files_mounted(mounts: &[ExtraMount]) -> impl Iterator<Item = &str> {
    mounts.iter().filter_map(|m| match m {
        ExtraMount::Bind {
            source,
            destination,
            ..
        } if source.is_file() => destination.strip_prefix("/etc/"),
        _ => None,
    })
}

/// The container's root from the snapshotter's mounts, with `stubs` (see [`stubs`]) as the
/// topmost lower layer. The writable layer of an exec is thrown away afterwards, so the
/// overlay is `volatile`: no sync of the upper filesystem when it is unmounted, which
/// otherwise costs 5–50 ms per container on a busy disk. (A caller that commits the layer
/// syncs it explicitly first.)
fn rootfs_from(mounts: &[cairn_snapshot::Mount], stubs: Option<&Path>) -> RootfsMount {
    match mounts.first() {
        Some(m) if m.kind == "overlay" => RootfsMount::Overlay {
            options: m
                .options
                .iter()
                .map(|option| match (option.strip_prefix("lowerdir="), stubs) {
                    (Some(lowers), Some(stubs)) => {
                        format!("lowerdir={}:{lowers}", stubs.display())
                    }
                    _ => option.clone(),
                })
                .chain(std::iter::once("volatile".to_owned()))
                .collect(),
        },
        Some(m) => RootfsMount::Bind {
            source: m.source.clone(),
        },
        None => RootfsMount::Bind {
            source: PathBuf::new(),
        },
    }
}

/// In a rootless store only the mapped ids exist: refuse others with a clear reason rather
/// than letting `setresuid` fail inside the container.
fn check_mapped(
    mapping: &cairn_runtime::IdMapping,
    user: &mut cairn_runtime::ProcessUser,
) -> Result<(), String> {
    use cairn_runtime::IdMapping;
    match mapping {
        IdMapping::Single { .. } => {
            if user.uid != 0 || user.gid != 0 {
                return Err(format!(
                    "user {}:{} does not exist in this rootless store: only root (your own \
                     uid) is mapped, as you have no subordinate ids in /etc/subuid and \
                     /etc/subgid",
                    user.uid, user.gid
                ));
            }
            user.additional_gids.clear();
        }
        IdMapping::Full { uids, gids } => {
            let covered = |ranges: &[cairn_runtime::IdRange], id: u32| {
                ranges
                    .iter()
                    .any(|r| id >= r.inside && id - r.inside < r.count)
            };
            if !covered(uids, user.uid) || !covered(gids, user.gid) {
                return Err(format!(
                    "user {}:{} is outside this rootless store's subordinate id range ({mapping})",
                    user.uid, user.gid
                ));
            }
            user.additional_gids.retain(|g| covered(gids, *g));
        }
    }
    Ok(())
}

/// Limits need cgroups this process can write; say so instead of ignoring them.
fn check_limits(resources: &Resources, rootless: bool) -> Result<(), ContainersError> {
    let asked: Vec<&'static str> = [
        (resources.memory.is_some(), "--memory"),
        (resources.pids.is_some(), "--pids-limit"),
        (resources.cpus.is_some(), "--cpus"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let Some(first) = asked.first().copied() else {
        return Ok(());
    };
    if rootless {
        return Err(ContainersError::LimitUnavailable {
            limit: first,
            reason: "a rootless store has no cgroup it may write on this host (cgroup v1, or \
                     no delegated cgroup v2 subtree); run as root or on a cgroup v2 host with \
                     delegation"
                .into(),
        });
    }
    for (on, limit, controller) in [
        (resources.memory.is_some(), "--memory", "memory"),
        (resources.pids.is_some(), "--pids-limit", "pids"),
        (resources.cpus.is_some(), "--cpus", "cpu"),
    ] {
        if on && !cgroup_controller_available(controller) {
            return Err(ContainersError::LimitUnavailable {
                limit,
                reason: format!("the {controller} cgroup controller is not available"),
            });
        }
    }
    Ok(())
}

fn cgroup_controller_available(controller: &str) -> bool {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    if v1.join("tasks").exists() {
        return true;
    }
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|c| c.split_whitespace().any(|x| x == controller))
        .unwrap_or(false)
}

/// A container that runs. Dropping it without [`RunningContainer::run_to_end`] leaves the
/// container to the runtime helper, which kills it when the engine exits.
pub struct RunningContainer {
    containers: Containers,
    runtime: Runtime,
    record: ContainerRecord,
    exit: Option<cairn_runtime::ExitWaiter>,
}

impl RunningContainer {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Its record.
    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    /// Sends a signal to the container's init, which forwards it to the command.
    pub async fn signal(&self, signal: i32) -> Result<(), ContainersError> {
        Ok(self.runtime.signal(&self.record.id, signal).await?)
    }

    /// Waits for the container to exit, stopping it when `timeout` runs out or `stop`
    /// resolves (SIGTERM, then SIGKILL after `grace`); then removes its writable layer and
    /// state.
    pub async fn run_to_end(
        self,
        timeout: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> Result<Outcome, ContainersError> {
        self.finish(timeout, stop, grace, None).await
    }

    /// As [`RunningContainer::run_to_end`], but when the command succeeds (exit 0, not
    /// stopped) its writable layer becomes the committed snapshot `name` — synced first, as
    /// the container's overlay was volatile. If another process committed the same name
    /// meanwhile, that snapshot stands and this layer is dropped.
    pub async fn run_and_commit(
        self,
        timeout: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, ContainersError> {
        self.finish(timeout, stop, grace, Some((name, labels)))
            .await
    }

    async fn finish(
        mut self,
        timeout: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
        commit: Option<(&str, &BTreeMap<String, String>)>,
    ) -> Result<Outcome, ContainersError> {
        let exit = self.exit.take().expect("waited once");
        let mut result = self.wait_or_stop(exit, timeout, stop, grace).await;
        self.runtime.forget(&self.record.id);
        if let (Ok(outcome), Some((name, labels))) = (&mut result, commit) {
            if outcome.status.code() == 0 && !outcome.timed_out && !outcome.stopped {
                match self.containers.commit(&self.record.id, name, labels) {
                    Ok(committed) => outcome.committed = committed,
                    Err(e) => {
                        self.containers.discard(&self.record.id);
                        return Err(e);
                    }
                }
            }
        }
        if result.as_ref().is_ok_and(|o| o.committed) {
            if let Err(e) = self.containers.remove_record(&self.record.id) {
                warn!(container = %self.record.id, error = %e, "remove container record");
            }
        } else {
            self.containers.discard(&self.record.id);
        }
        result
    }

    async fn wait_or_stop(
        &self,
        exit: cairn_runtime::ExitWaiter,
        timeout: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> Result<Outcome, ContainersError> {
        let exit = exit.wait();
        tokio::pin!(exit);
        tokio::pin!(stop);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let (timed_out, stopped) = tokio::select! {
            status = &mut exit => {
                return Ok(Outcome { status: status?, timed_out: false, stopped: false, committed: false });
            }
            _ = deadline => (true, false),
            _ = &mut stop => (false, true),
        };
        debug!(container = %self.record.id, timed_out, "stopping container");
        self.signal(libc_signal(nix::sys::signal::Signal::SIGTERM))
            .await?;
        let status = tokio::select! {
            status = &mut exit => status?,
            _ = tokio::time::sleep(grace) => {
                self.signal(libc_signal(nix::sys::signal::Signal::SIGKILL)).await?;
                exit.await?
            }
        };
        Ok(Outcome {
            status,
            timed_out,
            stopped,
            committed: false,
        })
    }
}

fn libc_signal(s: nix::sys::signal::Signal) -> i32 {
    s as i32
}

/// The caller's stdio for a container: `/dev/null` for stdin unless `interactive`.
pub fn inherit_stdio(interactive: bool) -> Result<ContainerStdio, ContainersError> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> Result<OwnedFd, ContainersError> {
        fd.try_clone_to_owned()
            .map_err(io_err("duplicate stdio", Path::new("/dev/stdio")))
    };
    use std::os::fd::AsFd;
    let stdin = if interactive {
        dup(std::io::stdin().as_fd())?
    } else {
        std::fs::File::open("/dev/null")
            .map_err(io_err("open", Path::new("/dev/null")))?
            .into()
    };
    Ok(ContainerStdio {
        stdin,
        stdout: dup(std::io::stdout().as_fd())?,
        stderr: dup(std::io::stderr().as_fd())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_volumes() {
        let v: Volume = "/src:/dst:ro".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                source: "/src".into(),
                destination: "/dst".into(),
                readonly: true
            }
        );
        assert!(!"a:/b".parse::<Volume>().unwrap().readonly);
        assert!("nodest".parse::<Volume>().is_err());
        assert!("a:/b:rx".parse::<Volume>().is_err());
    }

    #[test]
    fn env_overrides_replace_earlier_values() {
        let mut env = vec!["PATH=/bin".to_owned(), "A=1".to_owned()];
        set_env(&mut env, "A", "2");
        set_env(&mut env, "B", "x=y");
        assert_eq!(env, vec!["PATH=/bin", "A=2", "B=x=y"]);
    }

    #[test]
    fn rootless_limits_are_refused_and_no_limits_pass() {
        assert!(check_limits(&Resources::default(), true).is_ok());
        let err = check_limits(
            &Resources {
                memory: Some(1 << 20),
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--memory"), "{err}");
    }

    #[test]
    fn single_mapping_allows_only_root() {
        let m = cairn_runtime::IdMapping::Single {
            uid: 1000,
            gid: 1000,
        };
        let mut root = cairn_runtime::ProcessUser::default();
        assert!(check_mapped(&m, &mut root).is_ok());
        let mut other = cairn_runtime::ProcessUser {
            uid: 5,
            gid: 5,
            additional_gids: vec![],
        };
        assert!(check_mapped(&m, &mut other)
            .unwrap_err()
            .contains("subordinate"));
    }

    #[test]
    fn reads_own_start_time() {
        let pid = std::process::id() as i32;
        assert!(process_start_time(pid).is_some());
    }
}
