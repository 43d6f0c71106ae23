//! Content digests of host directory trees, fast on large trees and on trees seen before.
//!
//! A tree's digest is sha256 over its taken entries in path order, each as its relative path,
//! type, mode and content (see [`crate::fs`]); owners and times are left out. Computing it
//! naively reads every byte of the tree each time. [`TreeHasher`] does the same work in two
//! cheaper ways:
//!
//! 1. **In parallel.** Directories are listed and their entries `lstat`ed by a pool of threads
//!    sharing a stack of directories still to list; files are then hashed by the same number
//!    of threads taking the next file of the sorted list. The digest is encoded afterwards, in
//!    path order, so it does not depend on which thread did what.
//! 2. **Not at all, when unchanged.** Each file's digest is recorded in the store's
//!    `metadata.db` (table `host_file_hashes`) with what `lstat` said of the file when it was
//!    read: device, inode, size, mtime and ctime (nanoseconds) and mode. A file whose `lstat`
//!    still says the same is not opened again. The ctime is what catches an edit whose mtime
//!    was put back (`touch -r`): no user can set it.
//!
//! Like git's index, the record is not trusted when the file's mtime or ctime is not clearly
//! older than the moment the file was read ("racy" entries): a write that lands in the same
//! timestamp tick as the read leaves the stat unchanged, so such a file is read again next
//! time, and recorded anew. A file is `fstat`ed before and after it is read; when the two
//! differ it was written meanwhile and is read again (a few times, then it is an error).
//!
//! Several processes share a store: records are written in one immediate transaction per
//! tree with `INSERT OR REPLACE`, so concurrent hashers of one tree only ever replace a
//! record by another valid one.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_oci::Digest;
use rusqlite::{params, Connection};
use sha2::{Digest as _, Sha256};

use crate::error::{io_err, EngineError};
use crate::fs::{Filter, Kind};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS host_file_hashes (
    root BLOB NOT NULL,
    path BLOB NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    recorded_ns INTEGER NOT NULL,
    PRIMARY KEY (root, path)
) WITHOUT ROWID;
";

/// How much older than the moment it was read a file's mtime and ctime must be for its
/// record to be trusted. Filesystem timestamps come from a coarse clock (a jiffy, up to
/// 10 ms) that may lag the clock the read time is taken from.
const RACY_MARGIN: Duration = Duration::from_millis(50);

/// How many times a file that changes while it is read is read again before giving up.
const READ_ATTEMPTS: u32 = 3;

/// What `lstat`/`fstat` says of a file, as far as telling a change goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    /// The whole `st_mode`: type and permission bits.
    mode: u32,
}

impl FileStat {
    fn of(m: &fs::Metadata) -> Self {
        FileStat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            mode: m.mode(),
        }
    }
}

/// A recorded file digest, and the stat it holds for.
#[derive(Clone, Copy, Debug)]
struct Record {
    stat: FileStat,
    sha256: [u8; 32],
    /// When the file was read (ns since the epoch, taken before opening it).
    recorded_ns: i64,
}

impl Record {
    /// Whether the record stands for a file that `lstat` now describes as `stat`.
    fn holds_for(&self, stat: &FileStat) -> bool {
        let margin = RACY_MARGIN.as_nanos() as i64;
        self.stat == *stat
            && stat.mtime_ns.max(stat.ctime_ns) < self.recorded_ns.saturating_sub(margin)
    }
}

/// One entry of a walked tree, with its `lstat`.
struct Walked {
    rel: PathBuf,
    kind: Kind,
    stat: FileStat,
}

/// How much work a digest took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HashStats {
    /// Entries taken (directories, files and symlinks).
    pub entries: u64,
    /// Regular files taken.
    pub files: u64,
    /// Files whose recorded digest was used: not opened.
    pub cache_hits: u64,
    /// Files read and hashed.
    pub files_read: u64,
    /// Bytes read from them.
    pub bytes_read: u64,
}

/// A tree's digest and what computing it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeDigest {
    /// The content digest of the tree.
    pub digest: Digest,
    /// The work done.
    pub stats: HashStats,
}

/// Hashes host directory trees in parallel, with a record of file digests in a SQLite
/// database (the store's `metadata.db`) so that unchanged files are not read again.
///
/// ```no_run
/// # fn demo() -> Result<(), cairn_engine::EngineError> {
/// let hasher = cairn_engine::TreeHasher::open("/tmp/store/metadata.db")?;
/// let tree = hasher.digest("src".as_ref(), &[], &["target/**".into()])?;
/// println!("{} ({} of {} files unchanged)", tree.digest, tree.stats.cache_hits, tree.stats.files);
/// # Ok(()) }
/// ```
pub struct TreeHasher {
    db: Option<(PathBuf, Mutex<Connection>)>,
    threads: usize,
}

impl std::fmt::Debug for TreeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeHasher")
            .field("db", &self.db.as_ref().map(|(p, _)| p))
            .field("threads", &self.threads)
            .finish()
    }
}

impl TreeHasher {
    /// A hasher recording file digests in the database at `path` (created when missing).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, EngineError> {
        let path = path.as_ref();
        let err = |source| EngineError::Database {
            path: path.to_owned(),
            source,
        };
        let db = cairn_snapshot::open_database(path).map_err(err)?;
        cairn_snapshot::apply_schema(&db, "host_file_hashes", SCHEMA).map_err(err)?;
        Ok(TreeHasher {
            db: Some((path.to_owned(), Mutex::new(db))),
            threads: default_threads(),
        })
    }

    /// A hasher that records nothing: every file is read.
    pub fn uncached() -> Self {
        TreeHasher {
            db: None,
            threads: default_threads(),
        }
    }

    /// This hasher, with `threads` threads (at least one) listing and reading files.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The digest of the tree at `root` through include and exclude globs (see
    /// [`crate::Directory::with_include`]).
    pub fn digest(
        &self,
        root: &Path,
        include: &[String],
        exclude: &[String],
    ) -> Result<TreeDigest, EngineError> {
        self.digest_filtered(root, &Filter::new(root, include, exclude)?)
    }

    pub(crate) fn digest_filtered(
        &self,
        root: &Path,
        filter: &Filter,
    ) -> Result<TreeDigest, EngineError> {
        let meta = fs::metadata(root).map_err(io_err("read directory", root))?;
        if !meta.is_dir() {
            return Err(EngineError::Invalid {
                what: root.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        // Records are kept by the tree's real path, so `./src` and `/abs/src` share them.
        let root_key = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        let root_key = root_key.as_os_str().as_bytes();

        let (walked, records) = std::thread::scope(|s| {
            let loader = s.spawn(|| self.load(root_key));
            let walked = walk_parallel(root, filter, self.threads);
            let records = loader.join().expect("record loader does not panic");
            (walked, records)
        });
        let mut walked = walked?;
        let records = records?;
        // Path order (component by component), compared as bytes with `/` below every other
        // byte, which is the same order: `Path::cmp` took a tenth of a warm run.
        walked.sort_unstable_by(|a, b| {
            path_order(a.rel.as_os_str().as_bytes(), b.rel.as_os_str().as_bytes())
        });

        let hits = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        // Per entry: its content (file digest or link target) and the mode to encode, and
        // for files read afresh, the record to keep.
        let contents = parallel_map(&walked, self.threads, |e| {
            let path = root.join(&e.rel);
            match e.kind {
                Kind::Dir => Ok((Vec::new(), e.stat.mode, None)),
                Kind::Symlink => {
                    let target = fs::read_link(&path).map_err(io_err("read link", &path))?;
                    Ok((
                        target.into_os_string().into_encoded_bytes(),
                        e.stat.mode,
                        None,
                    ))
                }
                Kind::File => {
                    let rel = e.rel.as_os_str().as_bytes();
                    if let Some(r) = records.get(rel).filter(|r| r.holds_for(&e.stat)) {
                        hits.fetch_add(1, Ordering::Relaxed);
                        return Ok((r.sha256.to_vec(), e.stat.mode, None));
                    }
                    let record = hash_file(&path)?;
                    bytes.fetch_add(record.stat.size, Ordering::Relaxed);
                    Ok((record.sha256.to_vec(), record.stat.mode, Some(record)))
                }
            }
        })?;

        let mut h = Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        put(crate::fs::TREE_ENCODING);
        let mut stats = HashStats::default();
        for (e, (content, mode, _)) in walked.iter().zip(&contents) {
            put(e.rel.as_os_str().as_bytes());
            put(match e.kind {
                Kind::Dir => b"d",
                Kind::File => b"f",
                Kind::Symlink => b"l",
            });
            put(&(mode & 0o7777).to_be_bytes());
            put(content);
            stats.entries += 1;
            stats.files += u64::from(e.kind == Kind::File);
        }
        stats.cache_hits = hits.into_inner();
        stats.bytes_read = bytes.into_inner();
        stats.files_read = stats.files - stats.cache_hits;

        let fresh: Vec<(&[u8], &Record)> = walked
            .iter()
            .zip(&contents)
            .filter_map(|(e, (_, _, r))| Some((e.rel.as_os_str().as_bytes(), r.as_ref()?)))
            .collect();
        // Records of files this filter would take but that are gone.
        let seen: std::collections::HashSet<&[u8]> = walked
            .iter()
            .map(|e| e.rel.as_os_str().as_bytes())
            .collect();
        let gone: Vec<&[u8]> = records
            .keys()
            .map(Vec::as_slice)
            .filter(|p| {
                !seen.contains(p) && filter.takes(Path::new(std::ffi::OsStr::from_bytes(p)))
            })
            .collect();
        if let Err(e) = self.store(root_key, &fresh, &gone) {
            // The digest is right all the same; the next run reads the files again.
            tracing::warn!(root = %root.display(), error = %e, "record file digests");
        }
        let digest = Digest::from_sha256_bytes(&h.finalize());
        tracing::debug!(
            root = %root.display(),
            %digest,
            files = stats.files,
            cache_hits = stats.cache_hits,
            bytes_read = stats.bytes_read,
            "hashed host directory"
        );
        Ok(TreeDigest { digest, stats })
    }

    fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> EngineError + '_ {
        move |source| EngineError::Database {
            path: path.to_owned(),
            source,
        }
    }

    /// The records of the tree at `root`, by relative path.
    fn load(&self, root: &[u8]) -> Result<HashMap<Vec<u8>, Record>, EngineError> {
        let Some((path, db)) = &self.db else {
            return Ok(HashMap::new());
        };
        let err = Self::db_err(path);
        let db = db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db
            .prepare_cached(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, mode, sha256, recorded_ns
                 FROM host_file_hashes WHERE root = ?1",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([root], |r| {
                let sha: Vec<u8> = r.get(7)?;
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Record {
                        stat: FileStat {
                            dev: r.get::<_, i64>(1)? as u64,
                            ino: r.get::<_, i64>(2)? as u64,
                            size: r.get::<_, i64>(3)? as u64,
                            mtime_ns: r.get(4)?,
                            ctime_ns: r.get(5)?,
                            mode: r.get::<_, i64>(6)? as u32,
                        },
                        // A record of the wrong length is never trusted (recorded_ns 0).
                        sha256: sha.as_slice().try_into().unwrap_or([0; 32]),
                        recorded_ns: if sha.len() == 32 { r.get(8)? } else { 0 },
                    },
                ))
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Records the files read afresh and forgets those gone, in one transaction.
    fn store(
        &self,
        root: &[u8],
        fresh: &[(&[u8], &Record)],
        gone: &[&[u8]],
    ) -> Result<(), EngineError> {
        let Some((path, db)) = &self.db else {
            return Ok(());
        };
        if fresh.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let err = Self::db_err(path);
        let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO host_file_hashes
                     (root, path, dev, ino, size, mtime_ns, ctime_ns, mode, sha256, recorded_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(&err)?;
            for (rel, r) in fresh {
                let s = &r.stat;
                insert
                    .execute(params![
                        root,
                        rel,
                        s.dev as i64,
                        s.ino as i64,
                        s.size as i64,
                        s.mtime_ns,
                        s.ctime_ns,
                        i64::from(s.mode),
                        &r.sha256[..],
                        r.recorded_ns
                    ])
                    .map_err(&err)?;
            }
            let mut delete = tx
                .prepare_cached("DELETE FROM host_file_hashes WHERE root = ?1 AND path = ?2")
                .map_err(&err)?;
            for rel in gone {
                delete.execute(params![root, rel]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }
}

/// The order of [`Path::cmp`] for relative paths without `.` or empty components: bytes
/// compared with `/` (the component separator) ranked below every other byte.
fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let rank = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    a.iter().map(|&c| rank(c)).cmp(b.iter().map(|&c| rank(c)))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 32))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Reads and hashes the file at `path`, checking it did not change meanwhile (a symlink
/// swapped in is not followed).
fn hash_file(path: &Path) -> Result<Record, EngineError> {
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..READ_ATTEMPTS {
        let recorded_ns = now_ns();
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(io_err("open", path))?;
        let before = FileStat::of(&f.metadata().map_err(io_err("stat", path))?);
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut buf).map_err(io_err("read", path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let after = FileStat::of(&f.metadata().map_err(io_err("stat", path))?);
        if before == after {
            return Ok(Record {
                stat: before,
                sha256: h.finalize().into(),
                recorded_ns,
            });
        }
    }
    Err(EngineError::ChangedWhileHashed {
        path: path.to_owned(),
        attempts: READ_ATTEMPTS,
    })
}

/// Directories still to list, how many are being listed, and the first error.
struct WalkState {
    todo: Vec<PathBuf>,
    busy: usize,
    error: Option<EngineError>,
}

/// The entries under `root` the filter takes, in no particular order, listed by `threads`
/// threads. Sockets, fifos and devices are left out; an excluded directory is not entered.
fn walk_parallel(root: &Path, filter: &Filter, threads: usize) -> Result<Vec<Walked>, EngineError> {
    let state = Mutex::new(WalkState {
        todo: vec![PathBuf::new()],
        busy: 0,
        error: None,
    });
    let wake = Condvar::new();
    let parts: Vec<Vec<Walked>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut found = Vec::new();
                    loop {
                        let dir = {
                            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                            loop {
                                if st.error.is_some() {
                                    return found;
                                }
                                if let Some(d) = st.todo.pop() {
                                    st.busy += 1;
                                    break d;
                                }
                                if st.busy == 0 {
                                    return found;
                                }
                                st = wake.wait(st).unwrap_or_else(|p| p.into_inner());
                            }
                        };
                        let mut subdirs = Vec::new();
                        let listed = list_dir(root, &dir, filter, &mut found, &mut subdirs);
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        st.busy -= 1;
                        st.todo.append(&mut subdirs);
                        if let Err(e) = listed {
                            st.error.get_or_insert(e);
                        }
                        wake.notify_all();
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("walker does not panic"))
            .collect()
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = st.error {
        return Err(e);
    }
    Ok(parts.into_iter().flatten().collect())
}

/// Lists one directory (`dir`, relative to `root`): its taken entries go to `found`, its
/// subdirectories to `subdirs`.
fn list_dir(
    root: &Path,
    dir: &Path,
    filter: &Filter,
    found: &mut Vec<Walked>,
    subdirs: &mut Vec<PathBuf>,
) -> Result<(), EngineError> {
    let full = root.join(dir);
    for entry in fs::read_dir(&full).map_err(io_err("read directory", &full))? {
        let entry = entry.map_err(io_err("read directory", &full))?;
        let rel = dir.join(entry.file_name());
        if filter.excluded(&rel) {
            continue;
        }
        // fstatat on the directory's descriptor: no path lookup from the root.
        let meta = entry.metadata().map_err(io_err("stat", &root.join(&rel)))?;
        let Some(kind) = Kind::of_entry(meta.file_type(), &rel, filter) else {
            continue;
        };
        if kind == Kind::Dir {
            subdirs.push(rel.clone());
        }
        found.push(Walked {
            rel,
            kind,
            stat: FileStat::of(&meta),
        });
    }
    Ok(())
}

/// `f` over every item, by `threads` threads each taking the next item; the results in the
/// items' order, or the first error.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, EngineError> + Sync,
) -> Result<Vec<R>, EngineError> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let parts: Vec<Result<Vec<(usize, R)>, EngineError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(items.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        match f(item) {
                            Ok(r) => done.push((i, r)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("hasher does not panic"))
            .collect()
    });
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for part in parts {
        for (i, r) in part? {
            slots[i] = Some(r);
        }
    }
    Ok(slots
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in ["src/target/deep", "docs", "a.b", "a"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(t.path().join("src/a.rs"), "fn a() {}").unwrap();
        fs::write(t.path().join("src/target/x.o"), "obj").unwrap();
        fs::write(t.path().join("src/target/deep/y.o"), "obj").unwrap();
        fs::write(t.path().join("docs/guide.md"), "# guide").unwrap();
        fs::write(t.path().join("a/b"), "ab").unwrap();
        fs::write(t.path().join("a.b/c"), "abc").unwrap();
        fs::write(t.path().join("README"), "hi").unwrap();
        fs::set_permissions(t.path().join("README"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("README", t.path().join("link")).unwrap();
        t
    }

    /// Backdates every file so that its records are trusted at once (not racy).
    fn age(root: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in walk_parallel(root, &Filter::all(), 1).unwrap() {
            if e.kind == Kind::File {
                let f = fs::File::options()
                    .write(true)
                    .open(root.join(&e.rel))
                    .unwrap();
                f.set_modified(old).unwrap();
            }
        }
        // The ctime just changed with the mtime: let the racy margin pass.
        std::thread::sleep(RACY_MARGIN * 2);
    }

    fn hasher(dir: &Path) -> TreeHasher {
        TreeHasher::open(dir.join("metadata.db")).unwrap()
    }

    #[test]
    fn path_order_is_the_order_of_paths() {
        let mut names = vec![
            "a", "a/b", "a-c", "a/b/c", "a.b", "ab", "a/-", "b", "a/b-c", "a/b/-", "A", "a0",
        ];
        let mut by_path = names.clone();
        by_path.sort_by(|x, y| Path::new(x).cmp(Path::new(y)));
        names.sort_by(|x, y| path_order(x.as_bytes(), y.as_bytes()));
        assert_eq!(names, by_path);
    }

    #[test]
    fn the_digest_is_the_sequential_reference_digest() {
        let t = tree();
        let db = tempfile::tempdir().unwrap();
        for threads in [1, 2, 7] {
            for (inc, exc) in [
                (vec![], vec![]),
                (vec![], vec!["src/target".to_owned()]),
                (vec!["**/*.rs".to_owned(), "README".to_owned()], vec![]),
            ] {
                let filter = Filter::new(t.path(), &inc, &exc).unwrap();
                let reference = crate::fs::tests::reference_digest(t.path(), &filter);
                let h = hasher(db.path()).with_threads(threads);
                assert_eq!(h.digest(t.path(), &inc, &exc).unwrap().digest, reference);
                // And again from the records.
                assert_eq!(h.digest(t.path(), &inc, &exc).unwrap().digest, reference);
                assert_eq!(
                    TreeHasher::uncached()
                        .with_threads(threads)
                        .digest(t.path(), &inc, &exc)
                        .unwrap()
                        .digest,
                    reference
                );
            }
        }
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let t = tree();
        age(t.path());
        let db = tempfile::tempdir().unwrap();
        let h = hasher(db.path());
        let first = h.digest(t.path(), &[], &[]).unwrap();
        assert_eq!(first.stats.files, 7);
        assert_eq!(first.stats.cache_hits, 0);
        assert_eq!(first.stats.files_read, 7);
        let second = h.digest(t.path(), &[], &[]).unwrap();
        assert_eq!(second.digest, first.digest);
        assert_eq!(second.stats.cache_hits, 7);
        assert_eq!((second.stats.files_read, second.stats.bytes_read), (0, 0));
        // Another process's hasher on the same database sees the records too.
        let third = hasher(db.path()).digest(t.path(), &[], &[]).unwrap();
        assert_eq!(third.stats.cache_hits, 7);
    }

    #[test]
    fn an_edit_with_the_mtime_put_back_is_seen() {
        let t = tree();
        age(t.path());
        let db = tempfile::tempdir().unwrap();
        let h = hasher(db.path());
        let before = h.digest(t.path(), &[], &[]).unwrap();
        let file = t.path().join("src/a.rs");
        let stamp = t.path().join("stamp");
        fs::write(&stamp, "").unwrap();
        let touch = |args: &[&Path]| {
            let ok = std::process::Command::new("touch")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        };
        touch(&[Path::new("-r"), &file, &stamp]);
        // Same size, same mtime: only the ctime tells.
        fs::write(&file, "fn b() {}").unwrap();
        touch(&[Path::new("-r"), &stamp, &file]);
        fs::remove_file(&stamp).unwrap();
        let m = fs::metadata(&file).unwrap();
        assert_eq!(m.len(), 9);
        let after = h.digest(t.path(), &[], &[]).unwrap();
        assert_ne!(after.digest, before.digest);
        assert_eq!(after.stats.files_read, 1);
        assert_eq!(after.stats.cache_hits, 6);
    }

    #[test]
    fn a_renamed_file_changes_the_digest() {
        let t = tree();
        age(t.path());
        let db = tempfile::tempdir().unwrap();
        let h = hasher(db.path());
        let before = h.digest(t.path(), &[], &[]).unwrap();
        fs::rename(
            t.path().join("docs/guide.md"),
            t.path().join("docs/howto.md"),
        )
        .unwrap();
        let after = h.digest(t.path(), &[], &[]).unwrap();
        assert_ne!(after.digest, before.digest);
        assert_eq!(
            after.digest,
            crate::fs::tests::reference_digest(t.path(), &Filter::all())
        );
        // The renamed file is read under its new name; the old name's record is dropped.
        assert_eq!(after.stats.cache_hits, 6);
        let root = fs::canonicalize(t.path()).unwrap();
        let records = h.load(root.as_os_str().as_bytes()).unwrap();
        assert!(records.contains_key(b"docs/howto.md".as_slice()));
        assert!(!records.contains_key(b"docs/guide.md".as_slice()));
    }

    #[test]
    fn excluded_directories_are_not_entered() {
        let t = tree();
        // An unreadable directory under an excluded one: entering it would fail.
        let locked = t.path().join("src/target/deep");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let readable = fs::read_dir(&locked).is_ok(); // root reads it anyway
        let h = TreeHasher::uncached();
        let tree = h.digest(t.path(), &[], &["src/target".into()]).unwrap();
        assert_eq!(tree.stats.files, 5);
        if !readable {
            assert!(h.digest(t.path(), &[], &[]).is_err());
        }
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        // Nothing under it was walked: adding files there leaves the digest alone.
        fs::write(locked.join("z.o"), "more").unwrap();
        let again = h.digest(t.path(), &[], &["src/target".into()]).unwrap();
        assert_eq!(again.digest, tree.digest);
        let walked = walk_parallel(
            t.path(),
            &Filter::new(t.path(), &[], &["src/target".into()]).unwrap(),
            3,
        )
        .unwrap();
        assert!(walked.iter().all(|e| !e.rel.starts_with("src/target")));
    }

    #[test]
    fn a_freshly_written_file_is_read_again_until_it_is_old_enough() {
        let t = tree();
        age(t.path());
        let db = tempfile::tempdir().unwrap();
        let h = hasher(db.path());
        h.digest(t.path(), &[], &[]).unwrap();
        // Written just now: in the same tick as a read right after, a second write of the
        // same size would leave its stat unchanged, so its record is not trusted yet.
        fs::write(t.path().join("README"), "ho").unwrap();
        let racy = h.digest(t.path(), &[], &[]).unwrap();
        assert_eq!(racy.stats.files_read, 1);
        let still = h.digest(t.path(), &[], &[]).unwrap();
        assert_eq!(still.stats.files_read, 1, "recorded within the margin");
        std::thread::sleep(RACY_MARGIN * 2);
        h.digest(t.path(), &[], &[]).unwrap();
        let settled = h.digest(t.path(), &[], &[]).unwrap();
        assert_eq!(settled.stats.files_read, 0);
        assert_eq!(settled.digest, racy.digest);
    }

    #[test]
    fn a_symlink_is_hashed_as_its_target_string() {
        let t = tree();
        let h = TreeHasher::uncached();
        let before = h.digest(t.path(), &[], &[]).unwrap().digest;
        // The link's target changes content: the link does not.
        fs::write(t.path().join("README"), "changed").unwrap();
        let readme_only = h.digest(t.path(), &["link".into()], &[]).unwrap().digest;
        fs::write(t.path().join("README"), "hi").unwrap();
        assert_eq!(
            readme_only,
            h.digest(t.path(), &["link".into()], &[]).unwrap().digest
        );
        fs::remove_file(t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("docs", t.path().join("link")).unwrap();
        assert_ne!(before, h.digest(t.path(), &[], &[]).unwrap().digest);
    }

    #[test]
    fn a_file_that_keeps_changing_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("growing");
        fs::write(&path, vec![b'x'; 8 << 20]).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::io::Write::write_all(&mut f, b"y").unwrap();
                }
            });
            let mut saw_error = false;
            for _ in 0..20 {
                if let Err(e) = hash_file(&path) {
                    assert!(e.to_string().contains("growing"), "{e}");
                    saw_error = true;
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert!(
                saw_error,
                "a file appended to while read is never taken as read"
            );
        });
    }
}
