//! Snapshots: the filesystem layers of images and containers, and how OCI layers get into them.
//!
//! The model is containerd's snapshotter. A snapshot is either *active* (writable, named by a
//! key), a *view* (read-only, named by a key) or *committed* (immutable, named by a name, usable
//! as a parent). Unpacking an image layer goes like this:
//!
//! 1. [`Snapshotter::prepare`] an active snapshot whose parent is the committed snapshot of the
//!    layers below. It returns [`Mount`]s — plain data, nothing is mounted.
//! 2. [`apply::apply_layer`] writes the layer's tar stream into the upper directory named in
//!    those mounts, turning OCI whiteouts into overlay whiteouts.
//! 3. [`Snapshotter::commit`] the active snapshot under the layer's chain id. Commit changes
//!    metadata only; the directory stays where it is.
//!
//! Running a container is the same with a different ending: prepare on top of the image's top
//! snapshot, mount what `prepare` returned, run, then remove (or commit) the active snapshot.
//! [`flatten::flatten`] merges a chain into a plain directory without mounting anything, which is
//! what `cairn export` writes. [`pack::pack_layer`] goes the other way: an upper directory back
//! into an OCI layer, which is how a container's changes become an image.

#![deny(missing_docs)]

pub mod apply;
pub mod flatten;
mod overlay;
pub mod pack;
mod rootless_xattr;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use overlay::{
    apply_schema, open_database, remove_tree_local, Database, LocalRemover, OverlayConfig,
    OverlaySnapshotter, TreeRemover,
};

/// One mount a caller performs to see a snapshot: the data form of `mount(2)` arguments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub kind: String,
    /// What is mounted: a directory for `bind`, the literal `overlay` for overlay.
    pub source: PathBuf,
    /// Mount options, one per entry (`ro`, `lowerdir=…`, `upperdir=…`, `workdir=…`, `userxattr`).
    pub options: Vec<String>,
}

impl Mount {
    /// The value of a `name=value` option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    }

    /// The directory writes go to, if the mount is writable: the overlay upper directory or
    /// the bind source.
    pub fn writable_dir(&self) -> Option<PathBuf> {
        if self.options.iter().any(|o| o == "ro") {
            return None;
        }
        match self.kind.as_str() {
            "bind" => Some(self.source.clone()),
            "overlay" => self.option("upperdir").map(PathBuf::from),
            _ => None,
        }
    }

    /// The read-only layers below, topmost first: the overlay lower directories, or the bind
    /// source of a read-only bind.
    pub fn lower_dirs(&self) -> Vec<PathBuf> {
        match self.kind.as_str() {
            "overlay" => self
                .option("lowerdir")
                .map(|l| l.split(':').map(PathBuf::from).collect())
                .unwrap_or_default(),
            "bind" if self.options.iter().any(|o| o == "ro") => vec![self.source.clone()],
            _ => Vec::new(),
        }
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Writable, named by a key; becomes committed through [`Snapshotter::commit`].
    Active,
    /// Read-only view of a parent, named by a key.
    View,
    /// Immutable, named by its name; can be a parent.
    Committed,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "active" => Some(Kind::Active),
            "view" => Some(Kind::View),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// What the store knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// The committed snapshot below it.
    pub parent: Option<String>,
    /// Free-form labels; callers use them for ownership (`cairn.lease`) and bookkeeping.
    pub labels: BTreeMap<String, String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// Disk used by one snapshot's own directory (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of regular file content.
    pub size: u64,
    /// Number of inodes.
    pub inodes: u64,
}

/// Errors of snapshot bookkeeping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// No snapshot has that key or name.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key or name is taken.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the snapshot's state (committing a view, a parent that is
    /// not committed, removing a snapshot that has children).
    #[error("snapshot {name:?}: {reason}")]
    Precondition {
        /// The snapshot at fault.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The metadata database failed.
    #[error("snapshot metadata at {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A filesystem operation failed.
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

/// Coarse classes of [`SnapshotError`] that callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The snapshot does not exist.
    NotFound,
    /// The snapshot exists already.
    AlreadyExists,
    /// The snapshot is in the wrong state for the operation.
    Precondition,
    /// Storage failed.
    Io,
}

impl SnapshotError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::NotFound(_) => ErrorKind::NotFound,
            SnapshotError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            SnapshotError::Precondition { .. } => ErrorKind::Precondition,
            SnapshotError::Database { .. } | SnapshotError::Io { .. } => ErrorKind::Io,
        }
    }
}

/// The snapshotter contract. Every method is synchronous and safe to call from several
/// processes on one store at once; async callers use `spawn_blocking`.
pub trait Snapshotter: Send + Sync {
    /// Creates an active snapshot on top of the committed `parent` and returns its mounts.
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// Creates an active snapshot that will only ever be removed, never committed (a
    /// container's writable layer that is thrown away), and returns its mounts. Everything
    /// but [`Snapshotter::commit`] treats it as an active snapshot. An implementation may keep
    /// it out of its metadata, since nothing is ever built on it.
    fn prepare_scratch(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.prepare(key, parent, labels)
    }

    /// Creates a read-only view of the committed `parent` and returns its mounts.
    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// The mounts of an active snapshot or view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;

    /// Turns the active snapshot `key` into the committed snapshot `name`. Metadata only.
    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), SnapshotError>;

    /// Removes a snapshot that has no children, with its directory.
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;

    /// What the store knows about one snapshot.
    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;

    /// Every snapshot.
    fn walk(&self) -> Result<Vec<Info>, SnapshotError>;

    /// The snapshots not committed (active ones and views): what a process that died may
    /// have left. A store looks at these on every open, so an implementation should not
    /// read the committed ones, which grow with every cached step.
    fn walk_uncommitted(&self) -> Result<Vec<Info>, SnapshotError> {
        Ok(self
            .walk()?
            .into_iter()
            .filter(|info| info.kind != Kind::Committed)
            .collect())
    }

    /// Disk used by one snapshot's own directory.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;
}
