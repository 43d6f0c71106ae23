use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_content::ContentStore;
use cairn_oci::{Digest, ImageSource};
use cairn_registry::{RegistryClient, RegistryConfig};
use cairn_runtime::IdMapping;
use cairn_snapshot::{OverlayConfig, OverlaySnapshotter, Snapshotter};
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::worker::{FlattenRequest, HelperProgram, Worker, WorkerRemover};
use crate::ImagesError;

/// The default store: `/var/lib/cairn` for root, `$XDG_DATA_HOME/cairn` (or
/// `~/.local/share/cairn`) for everyone else.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/cairn");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("cairn");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map_or_else(|| PathBuf::from("/tmp"), |u| u.dir)
        });
    home.join(".local/share/cairn")
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The store directory.
    pub root: PathBuf,
    /// The program that serves as the rootless helper.
    pub helper: HelperProgram,
    /// Registry settings (insecure hosts, docker config, platform).
    pub registry: RegistryConfig,
    /// How many layers download at once.
    pub max_concurrent_downloads: usize,
}

impl StoreOptions {
    /// Defaults for a store at `root`: this program as helper, registry settings from the
    /// environment, three downloads at once.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreOptions {
            root: root.into(),
            helper: HelperProgram::CurrentExe,
            registry: RegistryConfig::from_env(),
            max_concurrent_downloads: 3,
        }
    }
}

/// An image the store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// Its reference, normalised (`127.0.0.1:5117/fixtures/busybox:latest`).
    pub reference: String,
    /// The digest of its manifest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The digest of its config.
    pub config: Digest,
    /// The chain id of its top layer: the committed snapshot holding its root filesystem
    /// (`None` for an image without layers).
    pub top_snapshot: Option<Digest>,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// When it was pulled, seconds since the epoch.
    pub created: i64,
}

/// How the store was created; written once, then authoritative.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoreConfig {
    version: u32,
    /// The uid that created the store.
    owner: u32,
    /// `None` for a root store; the user-namespace mapping of a rootless store.
    rootless: Option<IdMapping>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) content: ContentStore,
    pub(crate) snapshots: OverlaySnapshotter,
    pub(crate) worker: Arc<Worker>,
    pub(crate) registry: RegistryClient,
    pub(crate) rootless: bool,
    pub(crate) mapping: Option<IdMapping>,
    pub(crate) helper: HelperProgram,
    pub(crate) lease: String,
    pub(crate) max_concurrent_downloads: usize,
    /// The store's one connection to `metadata.db`, shared with the snapshotter.
    db: cairn_snapshot::Database,
    _lease_lock: Flock<File>,
}

/// A handle on a store; cheap to clone, usable from many tasks at once.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    reference TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    config TEXT NOT NULL,
    top_snapshot TEXT,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL
);
";

fn store_err(path: &Path, message: impl std::fmt::Display) -> ImagesError {
    ImagesError::Store {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Creates and locks this process's lease file. It is locked under a temporary name and
/// renamed into place, so that no other process ever sees it unlocked (and takes it for the
/// lease of a dead process).
fn take_lease(dir: &Path) -> Result<(String, Flock<File>), ImagesError> {
    let mut last_err = None;
    for _ in 0..5 {
        let lease = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let temp = dir.join(format!(".{lease}"));
        let locked = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&temp)
            .map_err(|e| store_err(&temp, e))
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockExclusiveNonblock)
                    .map_err(|(_, e)| store_err(&temp, e))
            });
        let lock = match locked {
            Ok(lock) => lock,
            // A cleaner took the file in the instant before we locked it: try a new name.
            Err(e) => {
                let _ = fs::remove_file(&temp);
                last_err = Some(e);
                continue;
            }
        };
        let path = dir.join(&lease);
        match fs::rename(&temp, &path) {
            Ok(()) => return Ok((lease, lock)),
            Err(e) => last_err = Some(store_err(&path, e)),
        }
    }
    Err(last_err.expect("tried at least once"))
}

/// Reads `store.json`, or writes it for a new store.
fn load_or_create_config(root: &Path) -> Result<StoreConfig, ImagesError> {
    let path = root.join("store.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| store_err(&path, format!("unreadable store config: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let uid = nix::unistd::geteuid();
            let config = StoreConfig {
                version: 1,
                owner: uid.as_raw(),
                rootless: (!uid.is_root()).then(IdMapping::detect),
            };
            // Write-then-rename so a concurrent first open sees the whole file or none.
            let temp = root.join(format!(".store.json.{}", std::process::id()));
            fs::write(
                &temp,
                serde_json::to_vec_pretty(&config).expect("serialises"),
            )
            .map_err(|e| store_err(&temp, e))?;
            fs::rename(&temp, &path).map_err(|e| store_err(&path, e))?;
            Ok(config)
        }
        Err(e) => Err(store_err(&path, e)),
    }
}

impl Store {
    /// Opens the store at `options.root`, creating it if needed, and cleans what killed
    /// processes left behind.
    pub fn open(options: StoreOptions) -> Result<Store, ImagesError> {
        let root = options.root.clone();
        for dir in ["", "leases", "locks"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(|e| store_err(&d, e))?;
        }
        let config = load_or_create_config(&root)?;
        let euid = nix::unistd::geteuid().as_raw();
        if config.owner != euid {
            return Err(store_err(
                &root,
                format!("belongs to uid {}, not to the current uid {euid}; use --root to pick your own store", config.owner),
            ));
        }
        let worker = Arc::new(match &config.rootless {
            None => Worker::InProcess,
            Some(mapping) => Worker::Helper {
                program: options.helper.clone(),
                mapping: mapping.clone(),
                child: Mutex::new(None),
            },
        });
        let db_path = root.join("metadata.db");
        let db_err = |source| ImagesError::Database {
            path: db_path.clone(),
            source,
        };
        let db = cairn_snapshot::Database::open(&db_path).map_err(db_err)?;
        let content = ContentStore::open(&root).map_err(|source| ImagesError::Content {
            context: "open store".into(),
            source,
        })?;
        let snapshots = OverlaySnapshotter::open(
            &root.join("snapshots"),
            db.clone(),
            OverlayConfig {
                userxattr: config.rootless.is_some(),
            },
            Arc::new(WorkerRemover(worker.clone())),
        )?;
        {
            let conn = db.lock();
            cairn_snapshot::apply_schema(&conn, "images", SCHEMA).map_err(db_err)?;
            cairn_snapshot::apply_schema(&conn, "publish", crate::publish::SCHEMA)
                .map_err(db_err)?;
        }

        let (lease, lease_lock) = take_lease(&root.join("leases"))?;
        let store = Store {
            inner: Arc::new(Inner {
                root,
                content,
                snapshots,
                worker,
                registry: RegistryClient::new(options.registry),
                rootless: config.rootless.is_some(),
                mapping: config.rootless.clone(),
                helper: options.helper.clone(),
                lease,
                max_concurrent_downloads: options.max_concurrent_downloads.max(1),
                db,
                _lease_lock: lease_lock,
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether this is a rootless store.
    pub fn is_rootless(&self) -> bool {
        self.inner.rootless
    }

    /// The user-namespace mapping of a rootless store; `None` for a root store.
    pub fn id_mapping(&self) -> Option<&IdMapping> {
        self.inner.mapping.as_ref()
    }

    /// The program that serves as this store's helpers (see [`crate::init`]).
    pub fn helper_program(&self) -> Result<PathBuf, ImagesError> {
        match &self.inner.helper {
            HelperProgram::CurrentExe => std::env::current_exe()
                .map_err(|e| ImagesError::Helper(format!("cannot find own executable: {e}"))),
            HelperProgram::Path(p) => Ok(p.clone()),
        }
    }

    /// This process's lease: label what it creates with it (`cairn.lease`), and
    /// [`Store::lease_is_live`] tells other processes whether the creator still runs.
    pub fn lease(&self) -> &str {
        &self.inner.lease
    }

    /// Whether the process holding `lease` still runs.
    pub fn lease_is_live(&self, lease: &str) -> bool {
        if lease == self.inner.lease {
            return true;
        }
        if lease.contains('/') || lease.starts_with('.') {
            return false;
        }
        File::open(self.inner.root.join("leases").join(lease))
            .map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err())
            .unwrap_or(false)
    }

    /// Deletes a directory tree of the store, whoever owns its files (through the helper in
    /// a rootless store).
    pub fn remove_tree(&self, path: &Path) -> Result<(), ImagesError> {
        self.inner
            .worker
            .remove_tree(path)
            .map_err(|e| store_err(path, e))
    }

    /// The parsed config of an image (Env, WorkingDir, User, Entrypoint, Cmd …).
    pub fn image_config(
        &self,
        image: &ImageRecord,
    ) -> Result<oci_spec::image::ImageConfiguration, ImagesError> {
        let bytes = self
            .inner
            .content
            .read_blob(&image.config)
            .map_err(|source| ImagesError::Content {
                context: format!("config of {}", image.reference),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ImagesError::InvalidConfig {
            image: image.reference.clone(),
            config: image.config.clone(),
            reason: e.to_string(),
        })
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// The snapshotter.
    pub fn snapshots(&self) -> &OverlaySnapshotter {
        &self.inner.snapshots
    }

    /// Deletes what dead processes left: their partial downloads, their half-unpacked
    /// snapshots and snapshot directories nobody recorded.
    fn recover(&self) -> Result<(), ImagesError> {
        let inner = &self.inner;
        let removed_ingests =
            inner
                .content
                .remove_stale_ingests()
                .map_err(|source| ImagesError::Content {
                    context: "clean up ingests".into(),
                    source,
                })?;
        let leases_dir = inner.root.join("leases");
        let mut live = HashSet::new();
        for entry in fs::read_dir(&leases_dir)
            .map_err(|e| store_err(&leases_dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(temp) = name.strip_prefix('.') {
                // A lease being taken: unlocked for an instant by a live process. Only one
                // whose process is gone is removed.
                let pid = temp.split('-').next().unwrap_or("");
                if !Path::new("/proc").join(pid).exists() || pid.is_empty() {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let alive = File::open(entry.path())
                .map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err())
                .unwrap_or(false);
            if alive {
                live.insert(name);
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
        let mut removed_snapshots = 0;
        for info in inner.snapshots.walk_uncommitted()? {
            let Some(owner) = info.labels.get(LEASE_LABEL) else {
                continue;
            };
            // The lease list above may predate the owner: a process that took its lease
            // after the list was read and has prepared this snapshot since. Its lease file
            // was locked and named before it made anything, so asking again now is exact.
            if !live.contains(owner) && !self.lease_is_live(owner) {
                match inner.snapshots.remove(&info.name) {
                    Ok(()) => removed_snapshots += 1,
                    Err(e) => {
                        warn!(snapshot = %info.name, error = %e, "could not remove abandoned snapshot")
                    }
                }
            }
        }
        let removed_dirs = inner.snapshots.cleanup()?;
        if removed_ingests + removed_snapshots + removed_dirs > 0 {
            info!(
                removed_ingests,
                removed_snapshots, removed_dirs, "cleaned up after interrupted operations"
            );
        }
        Ok(())
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        self.inner.db.lock()
    }

    pub(crate) fn db_err(&self) -> impl Fn(rusqlite::Error) -> ImagesError + '_ {
        |source| ImagesError::Database {
            path: self.inner.db.path().to_owned(),
            source,
        }
    }

    pub(crate) fn record_image(&self, image: &ImageRecord) -> Result<(), ImagesError> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO images (reference, digest, media_type, config, top_snapshot, size, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    image.reference,
                    image.digest.as_str(),
                    image.media_type,
                    image.config.as_str(),
                    image.top_snapshot.as_ref().map(Digest::as_str),
                    image.size as i64,
                    image.created
                ],
            )
            .map_err(self.db_err())?;
        Ok(())
    }

    fn map_image(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
        let parse = |i: usize, s: String| {
            s.parse::<Digest>().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
            })
        };
        Ok(ImageRecord {
            reference: r.get(0)?,
            digest: parse(1, r.get(1)?)?,
            media_type: r.get(2)?,
            config: parse(3, r.get(3)?)?,
            top_snapshot: r
                .get::<_, Option<String>>(4)?
                .map(|s| parse(4, s))
                .transpose()?,
            size: r.get::<_, i64>(5)? as u64,
            created: r.get(6)?,
        })
    }

    /// Every image, by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, ImagesError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT reference, digest, media_type, config, top_snapshot, size, created FROM images ORDER BY reference")
            .map_err(self.db_err())?;
        let rows = stmt.query_map([], Self::map_image).map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    /// The image a user names: a reference (normalised as Docker does, `busybox` is
    /// `docker.io/library/busybox:latest`), a manifest digest, or an archive source
    /// (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`) whose manifest has been imported before.
    pub fn image(&self, name: &str) -> Result<ImageRecord, ImagesError> {
        let db = self.db();
        let query =
            "SELECT reference, digest, media_type, config, top_snapshot, size, created FROM images";
        let found = if name.starts_with("sha256:") {
            db.query_row(
                &format!("{query} WHERE digest = ?1 LIMIT 1"),
                [name],
                Self::map_image,
            )
        } else {
            let reference = match name.parse::<ImageSource>()? {
                ImageSource::Registry(r) => r,
                archive => {
                    drop(db);
                    return self.archive_image(&archive);
                }
            };
            db.query_row(
                &format!("{query} WHERE reference = ?1"),
                [reference.to_string()],
                Self::map_image,
            )
        };
        found
            .optional()
            .map_err(self.db_err())?
            .ok_or_else(|| ImagesError::ImageNotFound(name.to_owned()))
    }

    /// Forgets an image reference. Its blobs and snapshots stay until garbage collection.
    pub fn remove_image(&self, name: &str) -> Result<ImageRecord, ImagesError> {
        let image = self.image(name)?;
        self.db()
            .execute(
                "DELETE FROM images WHERE reference = ?1",
                [&image.reference],
            )
            .map_err(self.db_err())?;
        debug!(reference = %image.reference, "removed image");
        Ok(image)
    }

    /// Writes the image's root filesystem, whiteouts applied, into the new directory `dest`.
    /// In a rootless store every file is given to the caller and its owner in the image is
    /// recorded in the `user.rootlesscontainers` xattr, as `umoci unpack --rootless` does.
    pub async fn export(&self, name: &str, dest: &Path) -> Result<ImageRecord, ImagesError> {
        let image = self.image(name)?;
        let export_err = |message: String| ImagesError::Export {
            image: image.reference.clone(),
            dest: dest.to_owned(),
            message,
        };
        if fs::symlink_metadata(dest).is_ok() {
            let empty = fs::read_dir(dest)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(export_err(
                    "destination exists and is not an empty directory".into(),
                ));
            }
        }
        let top = image.top_snapshot.as_ref().map(Digest::as_str);
        self.flatten_snapshot(top, dest)
            .await?
            .map_err(export_err)?;
        Ok(image)
    }

    /// Writes the flattened filesystem of the committed snapshot `top` (and its parents;
    /// `None` for an empty root) into the new or empty directory `dest`, as
    /// [`Store::export`] does for an image: in a rootless store every file is given to the
    /// caller. The outer error is the store's; the inner one says why flattening failed.
    pub async fn flatten_snapshot(
        &self,
        top: Option<&str>,
        dest: &Path,
    ) -> Result<Result<(), String>, ImagesError> {
        let layers = match top {
            Some(top) => self.inner.snapshots.layer_dirs(top)?,
            None => Vec::new(),
        };
        let request = FlattenRequest {
            layers,
            dest: std::path::absolute(dest).map_err(|e| store_err(dest, e))?,
            userxattr: self.inner.rootless,
            to_caller: self.inner.rootless,
        };
        let worker = self.inner.worker.clone();
        tokio::task::spawn_blocking(move || worker.flatten(request))
            .await
            .map_err(|e| ImagesError::Helper(format!("flatten task failed: {e}")))?
    }

    /// Deletes the whole store at `root`, including files owned by subordinate ids that the
    /// user could not delete with `rm -rf`.
    pub fn reset(options: StoreOptions) -> Result<(), ImagesError> {
        let root = options.root.clone();
        if fs::symlink_metadata(&root).is_err() {
            return Ok(());
        }
        let config = fs::read(root.join("store.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<StoreConfig>(&b).ok());
        // A store without a readable config was never used rootless by us; as a plain user
        // fall back to the detected mapping so files of subordinate ids still go.
        let rootless = match config {
            Some(c) => c.rootless,
            None => (!nix::unistd::geteuid().is_root()).then(IdMapping::detect),
        };
        let worker = match rootless {
            Some(mapping) => Worker::Helper {
                program: options.helper,
                mapping,
                child: Mutex::new(None),
            },
            None => Worker::InProcess,
        };
        worker.remove_tree(&root).map_err(|e| store_err(&root, e))?;
        Ok(())
    }
}

/// The label that ties an unfinished snapshot to the process working on it.
pub const LEASE_LABEL: &str = "cairn.lease";
