//! The overlay backend: one directory per snapshot, metadata in SQLite.
//!
//! Layout under the snapshot root:
//!
//! ```text
//! snapshots/<id>/fs      the snapshot's own files (an overlay upper or lower dir)
//! snapshots/<id>/work    overlay's work dir (active snapshots only)
//! snapshots/new-<rand>   a snapshot being created, locked by its creator
//! snapshots/removed-…    a snapshot being deleted
//! snapshots/scratch-<h>  a scratch snapshot: fs, work and scratch.json (no row)
//! ```
//!
//! Scratch snapshots ([`Snapshotter::prepare_scratch`]) are the writable layers that are
//! thrown away (every `cairn exec`): they exist only as their directory, so making and
//! deleting one writes nothing to the database. Their creator holds a shared `flock` on the
//! parent's directory while they exist, and removing a committed snapshot takes an exclusive
//! one: a snapshot a running container stands on cannot be removed. A scratch snapshot whose
//! creator died is found by [`Snapshotter::walk_uncommitted`], by its labels, like any other.
//!
//! A new snapshot directory is built under a temporary name and renamed to its id inside the
//! database transaction that records it, and the database write lock serialises those
//! transactions across processes. So a numbered directory without a row can only be debris of a
//! killed process, and [`OverlaySnapshotter::cleanup`] may delete it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tracing::{debug, warn};

use crate::{Info, Kind, Mount, SnapshotError, Snapshotter, Usage};

/// Deletes directory trees. Rootless stores hold files owned by subordinate ids that the
/// calling user cannot delete directly; the caller supplies a remover that can (for example one
/// that works inside the store's user namespace).
pub trait TreeRemover: Send + Sync {
    /// Removes `path` and everything below it. A missing path is not an error.
    fn remove_tree(&self, path: &Path) -> std::io::Result<()>;
}

/// Removes trees in this process, making unreadable directories readable first (overlay leaves
/// `work/work` at mode 000; images have 000 directories).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRemover;

impl TreeRemover for LocalRemover {
    fn remove_tree(&self, path: &Path) -> std::io::Result<()> {
        remove_tree_local(path)
    }
}

/// `rm -rf` that also gets through directories without search permission we own.
pub fn remove_tree_local(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            // Open up every directory we can, then try again once.
            fn open_up(dir: &Path) {
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
                if let Ok(entries) = fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            open_up(&entry.path());
                        }
                    }
                }
            }
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                open_up(path);
                fs::remove_dir_all(path)
            } else {
                Err(first)
            }
        }
    }
}

/// Settings of an overlay snapshotter.
#[derive(Debug, Clone, Default)]
pub struct OverlayConfig {
    /// Mount with `userxattr`: required when the overlay is mounted inside a user namespace,
    /// where overlay keeps its whiteout and opaque markers in `user.overlay.*` xattrs.
    pub userxattr: bool,
}

/// A process's one connection to a store's metadata database, shared by every part of the
/// store that keeps tables there (snapshots, images): cheap to clone.
///
/// Each connection reads and parses the whole schema when first used, and the first one of
/// a process also rebuilds the log's index: about 0.6 ms here for the first and 0.25 ms for
/// each further one, in every `cairn exec`. Statements of one process are serialised by the
/// mutex (SQLite would serialise their writes anyway); other processes are kept out by
/// SQLite's own locking.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl Database {
    /// Opens the database at `path` as [`open_database`] does.
    pub fn open(path: &Path) -> Result<Database, rusqlite::Error> {
        Ok(Database {
            conn: Arc::new(Mutex::new(open_database(path)?)),
            path: path.into(),
        })
    }

    /// The connection, for one statement or transaction: do not hold it while calling
    /// anything else that uses the database (a snapshotter's methods do).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The overlay snapshotter. Cheap to share behind an `Arc`.
pub struct OverlaySnapshotter {
    root: PathBuf,
    db: Database,
    config: OverlayConfig,
    remover: Arc<dyn TreeRemover>,
    /// The shared locks on the parents of this process's scratch snapshots, by key.
    scratch_parents: Mutex<HashMap<String, Flock<File>>>,
}

/// What a scratch snapshot's directory says of it (`scratch.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ScratchInfo {
    key: String,
    parent: Option<String>,
    labels: BTreeMap<String, String>,
    created: i64,
}

impl ScratchInfo {
    fn info(self) -> Info {
        Info {
            name: self.key,
            kind: Kind::Active,
            parent: self.parent,
            labels: self.labels,
            created: self.created,
        }
    }
}

struct Row {
    id: i64,
    name: String,
    kind: Kind,
    parent_id: Option<i64>,
    labels: String,
    created: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
";

/// Opens an SQLite database the way every cairn table expects: write-ahead log (readers do not
/// block the writer), full sync (a committed transaction survives a crash), and a long busy
/// timeout because other cairn processes on the same store take the write lock in turn.
///
/// Closing the last connection does not checkpoint the log: that is a write of the changed
/// pages and an fsync at the end of every short-lived process (`cairn exec`). Instead a
/// commit that takes the log past 64 pages checkpoints it, keeping it short, since the first
/// connection of a process reads the whole log back.
pub fn open_database(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(120))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "wal_autocheckpoint", 64)?;
    conn.pragma_update(None, "journal_size_limit", 1 << 20)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(conn)
}

/// Creates the tables of one part of the store, named `part`, unless this very `sql` was
/// applied to the database before. Every statement of `sql` must be idempotent (`CREATE …
/// IF NOT EXISTS`): a changed text is simply applied again.
///
/// Parsing a part's `CREATE` statements on every open cost more than the rest of opening a
/// store; looking up the text applied last is one indexed read.
pub fn apply_schema(conn: &Connection, part: &str, sql: &str) -> Result<(), rusqlite::Error> {
    use rusqlite::OptionalExtension as _;
    let applied: Option<String> = conn
        .query_row(
            "SELECT sql FROM cairn_schemas WHERE part = ?1",
            [part],
            |row| row.get(0),
        )
        .optional()
        // No such table yet: a new store.
        .unwrap_or(None);
    if applied.as_deref() == Some(sql) {
        return Ok(());
    }
    // IMMEDIATE: take the write lock first, waiting for it as long as the busy timeout says.
    // A deferred transaction would start reading (a `CREATE … IF NOT EXISTS` of an existing
    // table only reads), and its write at the end fails at once with "database is locked"
    // when another process committed in between, as two processes opening a new store do.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS cairn_schemas (part TEXT PRIMARY KEY, sql TEXT NOT NULL)",
    )?;
    tx.execute_batch(sql)?;
    tx.execute(
        "INSERT OR REPLACE INTO cairn_schemas (part, sql) VALUES (?1, ?2)",
        [part, sql],
    )?;
    tx.commit()
}

/// How durable a snapshot transaction must be.
///
/// Active and view snapshots are thrown away when their process is done (after every
/// `cairn exec`), and losing one's row or its deletion leaves only what recovery removes
/// anyway: a numbered directory with no row (see [`OverlaySnapshotter::cleanup`], and
/// `create` reusing an id) or an uncommitted row whose lease is dead. So their creation and
/// removal skip the log's fsync (`synchronous=NORMAL`: atomic, and durable against a killed
/// process, only not against a power cut). A commit is fsynced, and with it every earlier
/// transaction in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Survives a power cut.
    Full,
    /// Survives a killed process.
    UntilPowerCut,
}

impl Durability {
    fn of(kind: Kind) -> Durability {
        match kind {
            Kind::Committed => Durability::Full,
            Kind::Active | Kind::View => Durability::UntilPowerCut,
        }
    }
}

/// An immediate transaction at `durability`; the connection is back at full durability when
/// it ends (SQLite cannot change that setting inside a transaction).
struct DurableTx<'c> {
    tx: Option<rusqlite::Transaction<'c>>,
    conn: &'c Connection,
    relaxed: bool,
}

impl<'c> DurableTx<'c> {
    fn begin(conn: &'c Connection, durability: Durability) -> Result<Self, rusqlite::Error> {
        let relaxed = durability == Durability::UntilPowerCut;
        if relaxed {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let mut this = DurableTx {
            tx: None,
            conn,
            relaxed,
        };
        this.tx = Some(rusqlite::Transaction::new_unchecked(
            conn,
            TransactionBehavior::Immediate,
        )?);
        Ok(this)
    }

    fn commit(mut self) -> Result<(), rusqlite::Error> {
        self.tx.take().expect("open until committed").commit()
    }
}

impl std::ops::Deref for DurableTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for DurableTx<'_> {
    fn drop(&mut self) {
        // Rolls back unless committed.
        drop(self.tx.take());
        if self.relaxed {
            // Outside a transaction this cannot fail short of a broken connection, which
            // the next statement reports.
            let _ = self.conn.pragma_update(None, "synchronous", "FULL");
        }
    }
}

/// How long a `new-` directory may stay unlocked before cleaners take it for debris: its
/// creator locks it microseconds after making it.
const NEW_DIR_GRACE: Duration = Duration::from_secs(60);

/// Takes the creator's lock on a directory being built: while it is held, cleaners in any
/// process know the creator is alive.
fn lock_dir(path: &Path) -> std::io::Result<Flock<File>> {
    let dir = File::open(path)?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| errno.into())
}

/// Maps an I/O error to [`SnapshotError::Io`] naming `action` and `path`.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io {
        action,
        path,
        source,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl OverlaySnapshotter {
    /// Opens the snapshotter whose directories live under `root` and whose metadata lives in
    /// `db` (which other tables of the store share).
    pub fn open(
        root: &Path,
        db: Database,
        config: OverlayConfig,
        remover: Arc<dyn TreeRemover>,
    ) -> Result<Self, SnapshotError> {
        fs::create_dir_all(root).map_err(|source| SnapshotError::Io {
            action: "create snapshot directory",
            path: root.to_owned(),
            source,
        })?;
        apply_schema(&db.lock(), "snapshots", SCHEMA).map_err(|source| {
            SnapshotError::Database {
                path: db.path().to_owned(),
                source,
            }
        })?;
        Ok(OverlaySnapshotter {
            root: root.to_owned(),
            db,
            config,
            remover,
            scratch_parents: Mutex::default(),
        })
    }

    fn db_err(&self) -> impl Fn(rusqlite::Error) -> SnapshotError + '_ {
        |source| SnapshotError::Database {
            path: self.db.path().to_owned(),
            source,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.db.lock()
    }

    fn dir(&self, id: i64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The directory holding a snapshot's own files.
    fn fs_dir(&self, id: i64) -> PathBuf {
        self.dir(id).join("fs")
    }

    fn row(conn: &Connection, name: &str) -> rusqlite::Result<Option<Row>> {
        conn.query_row(
            "SELECT id, name, kind, parent_id, labels, created FROM snapshots WHERE name = ?1",
            [name],
            Self::map_row,
        )
        .optional()
    }

    fn row_by_id(conn: &Connection, id: i64) -> rusqlite::Result<Row> {
        conn.query_row(
            "SELECT id, name, kind, parent_id, labels, created FROM snapshots WHERE id = ?1",
            [id],
            Self::map_row,
        )
    }

    fn map_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let kind: String = r.get(2)?;
        Ok(Row {
            id: r.get(0)?,
            name: r.get(1)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Active),
            parent_id: r.get(3)?,
            labels: r.get(4)?,
            created: r.get(5)?,
        })
    }

    /// Ids of a snapshot's committed ancestors, nearest first.
    fn ancestors(conn: &Connection, mut parent: Option<i64>) -> rusqlite::Result<Vec<i64>> {
        let mut out = Vec::new();
        while let Some(id) = parent {
            out.push(id);
            parent = conn
                .prepare_cached("SELECT parent_id FROM snapshots WHERE id = ?1")?
                .query_row([id], |r| r.get(0))?;
        }
        Ok(out)
    }

    fn info(&self, conn: &Connection, row: Row) -> Result<Info, SnapshotError> {
        let parent = match row.parent_id {
            Some(pid) => Some(Self::row_by_id(conn, pid).map_err(self.db_err())?.name),
            None => None,
        };
        Ok(Info {
            name: row.name,
            kind: row.kind,
            parent,
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            created: row.created,
        })
    }

    fn mounts_for(&self, conn: &Connection, row: &Row) -> Result<Vec<Mount>, SnapshotError> {
        let parents = Self::ancestors(conn, row.parent_id).map_err(self.db_err())?;
        let lowerdir = || self.lowerdir(&parents);
        let mut options = Vec::new();
        let mount = match (row.kind, parents.len()) {
            (Kind::Active, _) => return Ok(self.writable_mounts(&self.dir(row.id), &parents)),
            (Kind::View, 0) => Mount {
                kind: "bind".into(),
                source: self.fs_dir(row.id),
                options: vec!["rbind".into(), "ro".into()],
            },
            (Kind::View, 1) => Mount {
                kind: "bind".into(),
                source: self.fs_dir(parents[0]),
                options: vec!["rbind".into(), "ro".into()],
            },
            (Kind::View, _) => {
                options.push("ro".into());
                if self.config.userxattr {
                    options.push("userxattr".into());
                }
                options.push(lowerdir());
                Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }
            }
            (Kind::Committed, _) => {
                return Err(SnapshotError::Precondition {
                    name: row.name.clone(),
                    reason: "a committed snapshot has no mounts; prepare or view on top of it"
                        .into(),
                })
            }
        };
        Ok(vec![mount])
    }

    /// A new snapshot directory under a temporary name (`new-PID-RAND`), locked so that
    /// cleaners leave it alone while its creator builds it; renamed when complete.
    fn new_dir(&self) -> Result<(PathBuf, Flock<File>), SnapshotError> {
        let temp = self.root.join(format!(
            "new-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir(&temp).map_err(io_err("create snapshot directory", &temp))?;
        let lock = lock_dir(&temp).map_err(io_err("lock snapshot directory", &temp))?;
        Ok((temp, lock))
    }

    /// The directory of scratch snapshot `key`.
    fn scratch_dir(&self, key: &str) -> PathBuf {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(key.as_bytes());
        self.root
            .join(format!("scratch-{}", hex::encode(&digest[..8])))
    }

    /// Scratch snapshot `key`, if there is one.
    fn scratch(&self, key: &str) -> Option<ScratchInfo> {
        Self::read_scratch(&self.scratch_dir(key)).filter(|info| info.key == key)
    }

    fn read_scratch(dir: &Path) -> Option<ScratchInfo> {
        let bytes = fs::read(dir.join("scratch.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every scratch snapshot in the store, of any process.
    fn scratches(&self) -> Result<Vec<ScratchInfo>, SnapshotError> {
        let entries = fs::read_dir(&self.root).map_err(|source| SnapshotError::Io {
            action: "list snapshot directory",
            path: self.root.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("scratch-"))
            .filter_map(|e| Self::read_scratch(&e.path()))
            .collect())
    }

    /// overlayfs's `lowerdir` option for the snapshots `lowers`, topmost first.
    fn lowerdir(&self, lowers: &[i64]) -> String {
        let dirs: Vec<String> = lowers
            .iter()
            .map(|&p| self.fs_dir(p).display().to_string())
            .collect();
        format!("lowerdir={}", dirs.join(":"))
    }

    /// The overlay mounts of a writable layer at `dir` on the snapshots `lowers` (topmost
    /// first), or a bind of its `fs` without any.
    fn writable_mounts(&self, dir: &Path, lowers: &[i64]) -> Vec<Mount> {
        if lowers.is_empty() {
            return vec![Mount {
                kind: "bind".into(),
                source: dir.join("fs"),
                options: vec!["rbind".into(), "rw".into()],
            }];
        }
        let mut options = Vec::new();
        if self.config.userxattr {
            options.push("userxattr".into());
        }
        options.push(format!("workdir={}", dir.join("work").display()));
        options.push(format!("upperdir={}", dir.join("fs").display()));
        options.push(self.lowerdir(lowers));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }

    /// The chain of committed snapshot `parent` (its id first), with a shared lock on its
    /// directory that keeps [`Snapshotter::remove`] from deleting it while held.
    fn lock_parent(&self, parent: &str) -> Result<(Vec<i64>, Flock<File>), SnapshotError> {
        let row = Self::row(&self.conn(), parent)
            .map_err(self.db_err())?
            .ok_or_else(|| SnapshotError::NotFound(parent.to_owned()))?;
        if row.kind != Kind::Committed {
            return Err(SnapshotError::Precondition {
                name: parent.to_owned(),
                reason: "parent is not committed".into(),
            });
        }
        let dir = self.dir(row.id);
        let lock = File::open(&dir)
            .map_err(|_| SnapshotError::NotFound(parent.to_owned()))
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockShared).map_err(|(_, errno)| SnapshotError::Io {
                    action: "lock snapshot",
                    path: dir.clone(),
                    source: errno.into(),
                })
            })?;
        // Read under the lock: a removal that won the race has deleted the row (and renamed
        // the directory this lock is on), and ids are never reused.
        match Self::ancestors(&self.conn(), Some(row.id)) {
            Ok(chain) => Ok((chain, lock)),
            Err(rusqlite::Error::QueryReturnedNoRows) => {
                Err(SnapshotError::NotFound(parent.to_owned()))
            }
            Err(e) => Err(self.db_err()(e)),
        }
    }

    fn create_scratch(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let target = self.scratch_dir(key);
        if target.exists()
            || Self::row(&self.conn(), key)
                .map_err(self.db_err())?
                .is_some()
        {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        let (lowers, parent_lock) = match parent {
            Some(p) => {
                let (chain, lock) = self.lock_parent(p)?;
                (chain, Some(lock))
            }
            None => (Vec::new(), None),
        };
        let (temp, _lock) = self.new_dir()?;
        let result = (|| {
            for sub in ["fs", "work"] {
                fs::create_dir(temp.join(sub))
                    .map_err(io_err("create snapshot directory", &temp))?;
            }
            let info = ScratchInfo {
                key: key.to_owned(),
                parent: parent.map(str::to_owned),
                labels: labels.clone(),
                created: now(),
            };
            let file = temp.join("scratch.json");
            fs::write(&file, serde_json::to_vec(&info).expect("serialises"))
                .map_err(io_err("write", &file))?;
            fs::rename(&temp, &target).map_err(|source| {
                if target.exists() {
                    SnapshotError::AlreadyExists(key.to_owned())
                } else {
                    io_err("rename snapshot directory", &target)(source)
                }
            })
        })();
        if let Err(e) = result {
            let _ = self.remover.remove_tree(&temp);
            return Err(e);
        }
        if let Some(lock) = parent_lock {
            self.scratch_parents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_owned(), lock);
        }
        debug!(key, ?parent, "created scratch snapshot");
        Ok(self.writable_mounts(&target, &lowers))
    }

    /// Deletes scratch snapshot `key`; `false` when there is none.
    fn remove_scratch(&self, key: &str) -> Result<bool, SnapshotError> {
        if self.scratch(key).is_none() {
            return Ok(false);
        }
        let dir = self.scratch_dir(key);
        let grave = self
            .root
            .join(format!("removed-scratch-{:08x}", rand::random::<u32>()));
        match fs::rename(&dir, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound(key.to_owned()))
            }
            Err(source) => {
                return Err(SnapshotError::Io {
                    action: "rename snapshot",
                    path: dir,
                    source,
                })
            }
        }
        self.scratch_parents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Err(e) = self.remover.remove_tree(&grave) {
            warn!(path = %grave.display(), error = %e, "snapshot removed, its directory is left for cleanup");
        }
        Ok(true)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if self.scratch_dir(key).exists() {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        let (temp, _lock) = self.new_dir()?;
        let result = (|| {
            fs::create_dir(temp.join("fs")).map_err(io_err("create snapshot directory", &temp))?;
            if kind == Kind::Active {
                fs::create_dir(temp.join("work"))
                    .map_err(io_err("create snapshot directory", &temp))?;
            }
            let conn = self.conn();
            let tx = DurableTx::begin(&conn, Durability::of(kind)).map_err(self.db_err())?;
            if Self::row(&tx, key).map_err(self.db_err())?.is_some() {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            let parent_id = match parent {
                None => None,
                Some(p) => {
                    let row = Self::row(&tx, p)
                        .map_err(self.db_err())?
                        .ok_or_else(|| SnapshotError::NotFound(p.to_owned()))?;
                    if row.kind != Kind::Committed {
                        return Err(SnapshotError::Precondition {
                            name: p.to_owned(),
                            reason: "parent is not committed".into(),
                        });
                    }
                    Some(row.id)
                }
            };
            let labels_json = serde_json::to_string(labels).expect("labels serialise");
            tx.execute(
                "INSERT INTO snapshots (name, kind, parent_id, labels, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, kind.as_str(), parent_id, labels_json, now()],
            )
            .map_err(self.db_err())?;
            let id = tx.last_insert_rowid();
            let target = self.dir(id);
            if fs::symlink_metadata(&target).is_ok() {
                // We hold the write lock, so nobody is creating this id: it is debris of a
                // process killed between its rename and its commit.
                warn!(path = %target.display(), "removing orphaned snapshot directory");
                self.remover
                    .remove_tree(&target)
                    .map_err(io_err("remove orphaned snapshot directory", &target))?;
            }
            fs::rename(&temp, &target).map_err(io_err("rename snapshot directory", &target))?;
            let row = Self::row_by_id(&tx, id).map_err(self.db_err())?;
            let mounts = self.mounts_for(&tx, &row)?;
            tx.commit().map_err(self.db_err())?;
            debug!(key, id, ?parent, kind = kind.as_str(), "created snapshot");
            Ok(mounts)
        })();
        if result.is_err() && temp.exists() {
            let _ = self.remover.remove_tree(&temp);
        }
        result
    }

    /// The `fs` directories of a committed snapshot and its ancestors, bottom layer first:
    /// what [`crate::flatten::flatten`] takes.
    pub fn layer_dirs(&self, name: &str) -> Result<Vec<PathBuf>, SnapshotError> {
        let conn = self.conn();
        let row = Self::row(&conn, name)
            .map_err(self.db_err())?
            .ok_or_else(|| SnapshotError::NotFound(name.to_owned()))?;
        let mut ids = vec![row.id];
        ids.extend(Self::ancestors(&conn, row.parent_id).map_err(self.db_err())?);
        Ok(ids.into_iter().rev().map(|id| self.fs_dir(id)).collect())
    }

    /// Deletes what killed processes left behind: directories still being created by a process
    /// that is gone, directories whose deletion was interrupted, and numbered directories with
    /// no metadata. Safe to run while other processes use the store. Returns how many
    /// directories were deleted.
    pub fn cleanup(&self) -> Result<usize, SnapshotError> {
        let mut doomed = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(io_err("list snapshots", &self.root))?;
        let mut numbered = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with("new-") {
                // Its creator makes it and then locks it: between the two it is unlocked
                // but alive, and probing its lock then would make the creator's fail. So a
                // directory whose creator (named in it) still runs is left alone unless it
                // stayed unlocked for longer than any creator takes.
                let creator_alive = name
                    .split('-')
                    .nth(1)
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
                let young = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < NEW_DIR_GRACE);
                if creator_alive && young {
                    continue;
                }
                let Ok(dir) = File::open(&path) else { continue };
                if Flock::lock(dir, FlockArg::LockExclusiveNonblock).is_ok() {
                    doomed.push(path);
                }
            } else if name.starts_with("removed-") {
                doomed.push(path);
            } else if let Ok(id) = name.parse::<i64>() {
                numbered.push((id, path));
            }
        }
        if !numbered.is_empty() {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.db_err())?;
            let known: HashSet<i64> = tx
                .prepare("SELECT id FROM snapshots")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(self.db_err())?;
            for (id, path) in numbered {
                if !known.contains(&id) {
                    let grave = self
                        .root
                        .join(format!("removed-{id}-{:08x}", rand::random::<u32>()));
                    match fs::rename(&path, &grave) {
                        Ok(()) => doomed.push(grave),
                        // Listed before our transaction began, removed by its owner since.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("rename orphaned snapshot", &path)(e)),
                    }
                }
            }
            tx.commit().map_err(self.db_err())?;
        }
        let count = doomed.len();
        for path in doomed {
            debug!(path = %path.display(), "removing leftover snapshot directory");
            // Another process's cleanup may be deleting the same debris: what is left over
            // is retried by the next cleanup, and never worth failing the caller for.
            if let Err(e) = self.remover.remove_tree(&path) {
                if path.exists() {
                    warn!(path = %path.display(), error = %e, "cannot remove leftover snapshot directory");
                }
            }
        }
        Ok(count)
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn prepare_scratch(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create_scratch(key, parent, labels)
    }

    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let conn = self.conn();
        match Self::row(&conn, key).map_err(self.db_err())? {
            Some(row) => self.mounts_for(&conn, &row),
            None => {
                let info = self
                    .scratch(key)
                    .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
                let lowers = match &info.parent {
                    Some(p) => {
                        let row = Self::row(&conn, p)
                            .map_err(self.db_err())?
                            .ok_or_else(|| SnapshotError::NotFound(p.clone()))?;
                        Self::ancestors(&conn, Some(row.id)).map_err(self.db_err())?
                    }
                    None => Vec::new(),
                };
                Ok(self.writable_mounts(&self.scratch_dir(key), &lowers))
            }
        }
    }

    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db_err())?;
        let Some(row) = Self::row(&tx, key).map_err(self.db_err())? else {
            return Err(match self.scratch(key) {
                Some(_) => SnapshotError::Precondition {
                    name: key.to_owned(),
                    reason: "a scratch snapshot is only ever removed, never committed".into(),
                },
                None => SnapshotError::NotFound(key.to_owned()),
            });
        };
        if row.kind != Kind::Active {
            return Err(SnapshotError::Precondition {
                name: key.to_owned(),
                reason: format!(
                    "only an active snapshot can be committed, this is {}",
                    row.kind.as_str()
                ),
            });
        }
        if Self::row(&tx, name).map_err(self.db_err())?.is_some() {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        let mut merged: BTreeMap<String, String> =
            serde_json::from_str(&row.labels).unwrap_or_default();
        merged.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        tx.execute(
            "UPDATE snapshots SET name = ?1, kind = 'committed', labels = ?2 WHERE id = ?3",
            params![
                name,
                serde_json::to_string(&merged).expect("labels serialise"),
                row.id
            ],
        )
        .map_err(self.db_err())?;
        tx.commit().map_err(self.db_err())?;
        // The work dir is only needed while the snapshot is an overlay upper.
        let work = self.dir(row.id).join("work");
        if work.exists() {
            if let Err(e) = self.remover.remove_tree(&work) {
                warn!(path = %work.display(), error = %e, "could not remove overlay work dir");
            }
        }
        debug!(key, name, id = row.id, "committed snapshot");
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        if self.remove_scratch(key)? {
            return Ok(());
        }
        let grave;
        {
            let conn = self.conn();
            // The kind decides the durability, which must be set before the transaction:
            // most removals are of throw-away snapshots, so begin relaxed and start again
            // fully durable when the row turns out to be committed.
            let mut durability = Durability::UntilPowerCut;
            let (tx, row) = loop {
                let tx = DurableTx::begin(&conn, durability).map_err(self.db_err())?;
                let row = Self::row(&tx, key)
                    .map_err(self.db_err())?
                    .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
                if Durability::of(row.kind) == durability || durability == Durability::Full {
                    break (tx, row);
                }
                durability = Durability::Full;
            };
            let children: i64 = tx
                .query_row(
                    "SELECT count(*) FROM snapshots WHERE parent_id = ?1",
                    [row.id],
                    |r| r.get(0),
                )
                .map_err(self.db_err())?;
            if children > 0 {
                return Err(SnapshotError::Precondition {
                    name: key.to_owned(),
                    reason: format!("{children} snapshot(s) are built on it"),
                });
            }
            // Scratch snapshots on it hold shared locks on its directory (see the module
            // doc); this exclusive one is held until the row and directory are gone.
            let _in_use = if row.kind == Kind::Committed {
                match File::open(self.dir(row.id)) {
                    Ok(dir) => Some(Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(
                        |_| SnapshotError::Precondition {
                            name: key.to_owned(),
                            reason: "a running container's writable layer is built on it".into(),
                        },
                    )?),
                    Err(_) => None,
                }
            } else {
                None
            };
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [row.id])
                .map_err(self.db_err())?;
            let dir = self.dir(row.id);
            grave = self
                .root
                .join(format!("removed-{}-{:08x}", row.id, rand::random::<u32>()));
            match fs::rename(&dir, &grave) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        action: "rename snapshot",
                        path: dir,
                        source,
                    })
                }
            }
            tx.commit().map_err(self.db_err())?;
        }
        // Out of the transaction: deleting a big tree must not hold the store's write lock.
        if let Err(e) = self.remover.remove_tree(&grave) {
            warn!(path = %grave.display(), error = %e, "snapshot removed, its directory is left for cleanup");
        }
        Ok(())
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let conn = self.conn();
        match Self::row(&conn, key).map_err(self.db_err())? {
            Some(row) => self.info(&conn, row),
            None => self
                .scratch(key)
                .map(ScratchInfo::info)
                .ok_or_else(|| SnapshotError::NotFound(key.to_owned())),
        }
    }

    fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        let conn = self.conn();
        let rows: Vec<Row> = conn
            .prepare("SELECT id, name, kind, parent_id, labels, created FROM snapshots ORDER BY id")
            .and_then(|mut s| s.query_map([], Self::map_row)?.collect())
            .map_err(self.db_err())?;
        let mut out: Vec<Info> = rows
            .into_iter()
            .map(|r| self.info(&conn, r))
            .collect::<Result<_, _>>()?;
        out.extend(self.scratches()?.into_iter().map(ScratchInfo::info));
        Ok(out)
    }

    fn walk_uncommitted(&self) -> Result<Vec<Info>, SnapshotError> {
        let conn = self.conn();
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT id, name, kind, parent_id, labels, created FROM snapshots \
                 WHERE kind != ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([Kind::Committed.as_str()], Self::map_row)?
                    .collect()
            })
            .map_err(self.db_err())?;
        let mut out: Vec<Info> = rows
            .into_iter()
            .map(|r| self.info(&conn, r))
            .collect::<Result<_, _>>()?;
        out.extend(self.scratches()?.into_iter().map(ScratchInfo::info));
        Ok(out)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let row = Self::row(&self.conn(), key).map_err(self.db_err())?;
        let fs_dir = match row {
            Some(row) => self.fs_dir(row.id),
            None if self.scratch(key).is_some() => self.scratch_dir(key).join("fs"),
            None => return Err(SnapshotError::NotFound(key.to_owned())),
        };
        let mut usage = Usage::default();
        let mut seen = HashSet::new();
        let mut stack = vec![fs_dir];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(|source| SnapshotError::Io {
                action: "measure snapshot",
                path: dir.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !seen.insert(meta.ino()) {
                    continue;
                }
                usage.inodes += 1;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    usage.size += meta.len();
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    //! The behaviour every snapshotter must show, written against the trait so that a second
    //! backend runs the same suite.
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn overlay(dir: &Path) -> OverlaySnapshotter {
        OverlaySnapshotter::open(
            &dir.join("snapshots"),
            Database::open(&dir.join("metadata.db")).unwrap(),
            OverlayConfig::default(),
            Arc::new(LocalRemover),
        )
        .unwrap()
    }

    fn conformance(s: &dyn Snapshotter) {
        // A first layer: active with no parent is a writable bind.
        let m = s.prepare("extract-1", None, &labels()).unwrap();
        assert_eq!(m[0].kind, "bind");
        let upper = m[0].writable_dir().unwrap();
        fs::write(upper.join("a"), "1").unwrap();
        s.commit("layer-1", "extract-1", &labels()).unwrap();
        assert!(matches!(
            s.stat("extract-1"),
            Err(SnapshotError::NotFound(_))
        ));
        assert_eq!(s.stat("layer-1").unwrap().kind, Kind::Committed);
        assert!(matches!(
            s.mounts("layer-1"),
            Err(SnapshotError::Precondition { .. })
        ));

        // A second layer: an overlay whose lower is the first.
        let m = s.prepare("extract-2", Some("layer-1"), &labels()).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(m[0].lower_dirs().len(), 1);
        assert!(m[0].lower_dirs()[0].join("a").exists());
        assert_eq!(s.mounts("extract-2").unwrap(), m);
        s.commit("layer-2", "extract-2", &labels()).unwrap();

        // Views: one parent is a read-only bind, more are a read-only overlay, lowers top first.
        let v = s.view("view-1", Some("layer-1"), &labels()).unwrap();
        assert_eq!((v[0].kind.as_str(), v[0].writable_dir()), ("bind", None));
        let v = s.view("view-2", Some("layer-2"), &labels()).unwrap();
        assert_eq!(v[0].kind, "overlay");
        assert_eq!(v[0].lower_dirs().len(), 2);
        assert!(v[0].lower_dirs()[1].join("a").exists());
        assert!(matches!(
            s.commit("x", "view-2", &labels()),
            Err(SnapshotError::Precondition { .. })
        ));

        // Names are unique; parents must exist and be committed.
        assert!(matches!(
            s.prepare("view-1", None, &labels()),
            Err(SnapshotError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.prepare("k", Some("nope"), &labels()),
            Err(SnapshotError::NotFound(_))
        ));
        s.prepare("active", None, &labels()).unwrap();
        assert!(matches!(
            s.prepare("k", Some("active"), &labels()),
            Err(SnapshotError::Precondition { .. })
        ));
        // What an interrupted process may leave: the views and the active one, in order,
        // and none of the committed layers.
        let uncommitted: Vec<(String, Kind)> = s
            .walk_uncommitted()
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.kind))
            .collect();
        assert_eq!(
            uncommitted,
            [
                ("view-1".to_owned(), Kind::View),
                ("view-2".to_owned(), Kind::View),
                ("active".to_owned(), Kind::Active)
            ]
        );
        assert_eq!(s.walk().unwrap().len(), 5);
        let err = s.commit("layer-1", "active", &labels()).unwrap_err();
        assert!(matches!(err, SnapshotError::AlreadyExists(_)), "{err}");

        // A parent cannot go while children stand on it.
        assert!(matches!(
            s.remove("layer-1"),
            Err(SnapshotError::Precondition { .. })
        ));
        s.remove("view-1").unwrap();
        s.remove("view-2").unwrap();
        s.remove("layer-2").unwrap();
        s.remove("layer-1").unwrap();
        s.remove("active").unwrap();
        assert!(s.walk().unwrap().is_empty());

        // Labels survive commit and merge.
        let mut l = labels();
        l.insert("cairn.lease".into(), "x".into());
        s.prepare("labelled", None, &l).unwrap();
        let mut l2 = labels();
        l2.insert("cairn.diff-id".into(), "y".into());
        s.commit("done", "labelled", &l2).unwrap();
        let info = s.stat("done").unwrap();
        assert_eq!(info.labels.len(), 2);
        assert!(s.usage("done").unwrap().inodes == 0);
    }

    #[test]
    fn overlay_conformance() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&overlay(dir.path()));
    }

    #[test]
    fn cleanup_removes_debris_but_not_live_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = overlay(dir.path());
        let m = s.prepare("keep", None, &labels()).unwrap();
        let root = dir.path().join("snapshots");
        // What a killed process leaves: an unlocked temp dir, an interrupted removal, and a
        // numbered dir that never got its row.
        fs::create_dir_all(root.join("new-dead/fs")).unwrap();
        // A creator that still runs (this test) between making its directory and locking it.
        let starting = root.join(format!("new-{}-0000000000000001", std::process::id()));
        fs::create_dir(&starting).unwrap();
        fs::create_dir_all(root.join("removed-9-00/fs/x")).unwrap();
        fs::create_dir_all(root.join("4242/fs")).unwrap();
        // A live creator's temp dir is locked and must survive.
        fs::create_dir(root.join("new-live")).unwrap();
        let _live = Flock::lock(
            File::open(root.join("new-live")).unwrap(),
            FlockArg::LockExclusive,
        )
        .unwrap();
        assert_eq!(s.cleanup().unwrap(), 3);
        assert!(root.join("new-live").exists());
        assert!(
            starting.exists(),
            "a live creator's unlocked directory was taken"
        );
        assert!(m[0].writable_dir().unwrap().exists());
        assert_eq!(s.cleanup().unwrap(), 0);
    }

    #[test]
    fn two_handles_on_one_store_agree() {
        let dir = tempfile::tempdir().unwrap();
        let a = overlay(dir.path());
        let b = overlay(dir.path());
        a.prepare("k", None, &labels()).unwrap();
        assert!(matches!(
            b.prepare("k", None, &labels()),
            Err(SnapshotError::AlreadyExists(_))
        ));
        b.commit("n", "k", &labels()).unwrap();
        assert_eq!(a.stat("n").unwrap().kind, Kind::Committed);
    }

    /// One number from the snapshotter's database.
    fn scalar(s: &OverlaySnapshotter, sql: &str) -> i64 {
        s.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn rows(s: &OverlaySnapshotter) -> i64 {
        scalar(s, "SELECT count(*) FROM snapshots")
    }

    /// A scratch snapshot is a writable overlay like any active one, but never a row: making
    /// and removing it leaves the database as it was.
    #[test]
    fn scratch_snapshots_live_outside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let s = overlay(dir.path());
        let m = s.prepare("base-active", None, &labels()).unwrap();
        fs::write(m[0].writable_dir().unwrap().join("a"), "1").unwrap();
        s.commit("base", "base-active", &labels()).unwrap();
        let before = rows(&s);
        let lease = BTreeMap::from([("lease".to_owned(), "x".to_owned())]);
        let m = s.prepare_scratch("exec", Some("base"), &lease).unwrap();
        assert_eq!(rows(&s), before);
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].lower_dirs()[0].join("a").exists());
        assert!(m[0].writable_dir().unwrap().is_dir());
        assert_eq!(s.mounts("exec").unwrap(), m);
        let info = s.stat("exec").unwrap();
        assert_eq!(
            (info.kind, info.parent.as_deref(), &info.labels),
            (Kind::Active, Some("base"), &lease)
        );
        assert!(s
            .walk_uncommitted()
            .unwrap()
            .iter()
            .any(|i| i.name == "exec"));
        for taken in [
            s.prepare_scratch("exec", Some("base"), &labels()),
            s.prepare("exec", Some("base"), &labels()),
        ] {
            assert!(matches!(taken, Err(SnapshotError::AlreadyExists(_))));
        }
        assert!(matches!(
            s.commit("kept", "exec", &labels()),
            Err(SnapshotError::Precondition { .. })
        ));
        assert!(s.usage("exec").is_ok());
        s.remove("exec").unwrap();
        assert!(matches!(s.stat("exec"), Err(SnapshotError::NotFound(_))));
        assert!(matches!(s.remove("exec"), Err(SnapshotError::NotFound(_))));
        assert_eq!(rows(&s), before);
        assert!(s.walk().unwrap().iter().all(|i| i.name != "exec"));
        // No parent: a writable bind, as for `prepare`.
        let m = s.prepare_scratch("empty", None, &labels()).unwrap();
        assert_eq!(m[0].kind, "bind");
        s.remove("empty").unwrap();
        assert_eq!(s.cleanup().unwrap(), 0);
    }

    /// The snapshot a scratch snapshot stands on cannot be removed, from this handle or
    /// another (another process), until the scratch snapshot is.
    #[test]
    fn a_scratch_snapshots_parent_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = overlay(dir.path());
        let other = overlay(dir.path());
        s.prepare("base-active", None, &labels()).unwrap();
        s.commit("base", "base-active", &labels()).unwrap();
        s.prepare_scratch("exec", Some("base"), &labels()).unwrap();
        for handle in [&s, &other] {
            assert!(matches!(
                handle.remove("base"),
                Err(SnapshotError::Precondition { .. })
            ));
        }
        assert_eq!(other.stat("base").unwrap().kind, Kind::Committed);
        // Its lock goes with it.
        s.remove("exec").unwrap();
        other.remove("base").unwrap();
        assert!(matches!(
            s.prepare_scratch("late", Some("base"), &labels()),
            Err(SnapshotError::NotFound(_))
        ));
    }

    fn synchronous(s: &OverlaySnapshotter) -> i64 {
        scalar(s, "PRAGMA synchronous")
    }

    /// Throw-away snapshots skip the log's fsync; nothing else may: the connection is back at
    /// FULL (2) after each of their transactions, committed or failed.
    #[test]
    fn relaxed_durability_ends_with_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = overlay(dir.path());
        const FULL: i64 = 2;
        assert_eq!(synchronous(&s), FULL);
        s.prepare("base-active", None, &labels()).unwrap();
        assert_eq!(synchronous(&s), FULL);
        s.commit("base", "base-active", &labels()).unwrap();
        s.prepare("exec", Some("base"), &labels()).unwrap();
        assert_eq!(synchronous(&s), FULL);
        // A failing relaxed transaction (the key exists) rolls back and restores it too.
        assert!(matches!(
            s.prepare("exec", Some("base"), &labels()),
            Err(SnapshotError::AlreadyExists(_))
        ));
        assert_eq!(synchronous(&s), FULL);
        s.remove("exec").unwrap();
        assert_eq!(synchronous(&s), FULL);
        // Removing a committed snapshot is fully durable throughout.
        let conn = s.conn();
        let tx = DurableTx::begin(&conn, Durability::of(Kind::Committed)).unwrap();
        assert_eq!(
            tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            FULL
        );
        drop(tx);
        let tx = DurableTx::begin(&conn, Durability::of(Kind::Active)).unwrap();
        assert_eq!(
            tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );
        drop(tx);
        drop(conn);
        s.remove("base").unwrap();
        assert_eq!(synchronous(&s), FULL);
    }
}
