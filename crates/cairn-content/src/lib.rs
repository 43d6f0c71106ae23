//! A content-addressed blob store: the bytes of manifests, configs and layers, named by digest.
//!
//! A blob enters the store through a [`BlobWriter`]: the bytes go to a private temporary file in
//! `ingest/` while they are hashed, and [`BlobWriter::commit`] checks size and digest, syncs the
//! file and renames it to `blobs/sha256/<hex>`. A rename is atomic, so a blob that is visible under
//! its digest is always complete and verified; a writer that dies (a killed process, a full disk)
//! leaves only a temporary file, which [`ContentStore::remove_stale_ingests`] deletes later.
//!
//! Liveness of a temporary file is carried by an advisory lock held on it for the writer's whole
//! life. The kernel drops the lock when the writer's process dies, however it dies, so a cleaner
//! in any process can tell an abandoned ingest from one still being written without a daemon.

#![deny(missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cairn_oci::{Digest, Sha256Writer};
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, warn};

/// Everything that can go wrong in the content store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk filled up while a blob was written; nothing was kept.
    #[error("no space left on device while writing blob {digest} to {path}")]
    DiskFull {
        /// The blob being written.
        digest: Digest,
        /// Where.
        path: PathBuf,
    },
    /// The bytes written do not hash to the expected digest; nothing was kept.
    #[error(
        "blob {expected} has digest {actual} ({size} bytes): content does not match its digest"
    )]
    DigestMismatch {
        /// The digest the bytes were announced under.
        expected: Digest,
        /// The digest they have.
        actual: Digest,
        /// How many bytes were written.
        size: u64,
    },
    /// The number of bytes written differs from the announced size; nothing was kept.
    #[error("blob {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// No blob with that digest is in the store.
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
}

/// Coarse classes of [`ContentError`] that callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The blob does not exist.
    NotFound,
    /// The data offered is not what it claims to be.
    Corrupt,
    /// The machine ran out of a resource (disk).
    Exhausted,
    /// Any other I/O failure.
    Io,
}

impl ContentError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContentError::NotFound(_) => ErrorKind::NotFound,
            ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } => {
                ErrorKind::Corrupt
            }
            ContentError::DiskFull { .. } => ErrorKind::Exhausted,
            ContentError::Io { .. } => ErrorKind::Io,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError {
    let path = path.to_owned();
    move |source| ContentError::Io {
        action,
        path,
        source,
    }
}

/// The blob store rooted at one directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) a store under `root`.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The size of a committed blob, or `None` if the store does not have it.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>, ContentError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat blob", &path)(e)),
        }
    }

    /// Whether the store holds the blob.
    pub fn contains(&self, digest: &Digest) -> Result<bool, ContentError> {
        Ok(self.size(digest)?.is_some())
    }

    /// Opens a committed blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ContentError::NotFound(digest.clone())
            } else {
                io_err("open blob", &path)(e)
            }
        })
    }

    /// Reads a whole committed blob (for manifests and configs, which are small).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ContentError::NotFound(digest.clone())
            } else {
                io_err("read blob", &path)(e)
            }
        })
    }

    /// Starts writing a blob that must turn out to be `expected` and `expected_size` bytes long.
    pub fn writer(
        &self,
        expected: &Digest,
        expected_size: u64,
    ) -> Result<BlobWriter, ContentError> {
        let name = format!("{}-{:016x}", expected.hex(), rand::random::<u64>());
        let path = self.ingest.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err("create ingest file", &path))?;
        let writable = file
            .try_clone()
            .map_err(io_err("open ingest file", &path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io_err("lock ingest file", &path)(errno.into()))?;
        Ok(BlobWriter {
            out: Some(BufWriter::with_capacity(1 << 20, writable)),
            _lock: lock,
            hasher: Sha256Writer::new(),
            path,
            target: self.blob_path(expected),
            blobs_dir: self.blobs.clone(),
            expected: expected.clone(),
            expected_size,
        })
    }

    /// Writes a small blob held in memory, verifying it like any other.
    pub fn write_blob(&self, expected: &Digest, data: &[u8]) -> Result<(), ContentError> {
        if self.contains(expected)? {
            return Ok(());
        }
        let mut writer = self.writer(expected, data.len() as u64)?;
        writer.write_chunk(data)?;
        writer.commit()
    }

    /// Removes a blob. Removing a blob that is not there is not an error.
    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove blob", &path)(e)),
        }
    }

    /// Every committed blob.
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err("list blobs", &self.blobs))? {
            let entry = entry.map_err(io_err("list blobs", &self.blobs))?;
            let name = entry.file_name();
            match format!("sha256:{}", name.to_string_lossy()).parse() {
                Ok(d) => out.push(d),
                Err(_) => warn!(path = %entry.path().display(), "stray file in blob directory"),
            }
        }
        Ok(out)
    }

    /// Deletes ingest files whose writer is gone (its process exited or was killed), leaving
    /// those still being written by live writers in this or any other process. Returns how many
    /// were removed.
    pub fn remove_stale_ingests(&self) -> Result<usize, ContentError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.ingest).map_err(io_err("list ingests", &self.ingest))? {
            let path = entry.map_err(io_err("list ingests", &self.ingest))?.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // A lock we can take means nobody holds it: the writer is dead.
            if let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                if fs::remove_file(&path).is_ok() {
                    debug!(path = %path.display(), "removed abandoned ingest");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A blob being written. Dropping it without [`commit`](BlobWriter::commit) discards it.
pub struct BlobWriter {
    out: Option<BufWriter<File>>,
    /// Held for the writer's life: it tells cleaners in other processes that we are alive.
    _lock: Flock<File>,
    hasher: Sha256Writer,
    path: PathBuf,
    target: PathBuf,
    blobs_dir: PathBuf,
    expected: Digest,
    expected_size: u64,
}

impl BlobWriter {
    /// Appends bytes. Writing past the announced size fails at once, so a registry that sends
    /// an endless body cannot fill the disk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        let total = self.hasher.written() + chunk.len() as u64;
        if total > self.expected_size {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.expected_size,
                actual: total,
            });
        }
        self.hasher.update(chunk);
        let out = self.out.as_mut().expect("writer used after commit");
        out.write_all(chunk).map_err(|e| self.write_error(e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.written()
    }

    /// The digest this writer must produce.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    fn write_error(&self, e: io::Error) -> ContentError {
        if e.raw_os_error() == Some(libc_enospc()) {
            ContentError::DiskFull {
                digest: self.expected.clone(),
                path: self.path.clone(),
            }
        } else {
            io_err("write ingest file", &self.path)(e)
        }
    }

    /// Verifies the blob and makes it visible under its digest. On any error the temporary
    /// file is deleted and nothing is kept.
    pub fn commit(mut self) -> Result<(), ContentError> {
        let out = self.out.take().expect("writer committed twice");
        let size = self.hasher.written();
        if size != self.expected_size {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.expected_size,
                actual: size,
            });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
                size,
            });
        }
        let file = out
            .into_inner()
            .map_err(|e| self.write_error(e.into_error()))?;
        file.sync_all().map_err(|e| self.write_error(e))?;
        fs::rename(&self.path, &self.target).map_err(io_err("commit blob", &self.target))?;
        // The rename is durable only once the directory is synced.
        if let Ok(dir) = File::open(&self.blobs_dir) {
            let _ = dir.sync_all();
        }
        debug!(digest = %self.expected, size, "committed blob");
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Still present unless commit renamed it; removing is harmless either way.
        if self.out.is_some() || self.path.exists() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn ingest_count(dir: &Path) -> usize {
        fs::read_dir(dir.join("ingest")).unwrap().count()
    }

    #[test]
    fn verified_blob_is_committed() {
        let (dir, store) = store();
        let data = b"hello blob";
        let d = Digest::sha256_of(data);
        let mut w = store.writer(&d, data.len() as u64).unwrap();
        w.write_chunk(&data[..4]).unwrap();
        assert!(!store.contains(&d).unwrap(), "visible before commit");
        w.write_chunk(&data[4..]).unwrap();
        w.commit().unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), data);
        assert_eq!(store.size(&d).unwrap(), Some(data.len() as u64));
        assert_eq!(store.list().unwrap(), vec![d]);
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn mismatched_digest_keeps_nothing() {
        let (dir, store) = store();
        let claimed = Digest::sha256_of(b"what the registry promised");
        let mut w = store.writer(&claimed, 5).unwrap();
        w.write_chunk(b"lies!").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(claimed.as_str()));
        assert!(!store.contains(&claimed).unwrap());
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn oversize_and_short_blobs_are_rejected() {
        let (dir, store) = store();
        let d = Digest::sha256_of(b"abc");
        let mut w = store.writer(&d, 3).unwrap();
        assert!(matches!(
            w.write_chunk(b"abcd"),
            Err(ContentError::SizeMismatch { .. })
        ));
        drop(w);
        let mut w = store.writer(&d, 3).unwrap();
        w.write_chunk(b"ab").unwrap();
        assert!(matches!(w.commit(), Err(ContentError::SizeMismatch { .. })));
        assert!(!store.contains(&d).unwrap());
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn stale_ingests_are_removed_but_live_ones_kept() {
        let (dir, store) = store();
        let d = Digest::sha256_of(b"x");
        let live = store.writer(&d, 1).unwrap();
        // An ingest file with no lock holder: what a killed process leaves.
        fs::write(dir.path().join("ingest").join("dead-0000"), b"partial").unwrap();
        assert_eq!(store.remove_stale_ingests().unwrap(), 1);
        assert_eq!(ingest_count(dir.path()), 1);
        drop(live);
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn concurrent_writers_of_one_blob_both_succeed() {
        let (_dir, store) = store();
        let data = vec![7u8; 100_000];
        let d = Digest::sha256_of(&data);
        let mut a = store.writer(&d, data.len() as u64).unwrap();
        let mut b = store.writer(&d, data.len() as u64).unwrap();
        a.write_chunk(&data).unwrap();
        b.write_chunk(&data).unwrap();
        a.commit().unwrap();
        b.commit().unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), data);
    }
}
