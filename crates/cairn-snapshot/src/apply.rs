//! Applying one OCI layer (a tar stream) to an overlay upper directory.
//!
//! An OCI layer describes changes: files to create or replace, and *whiteouts* that delete what
//! lower layers hold. Overlayfs describes the same changes with its own markers, so applying a
//! layer is a translation:
//!
//! | in the tar | in the upper directory |
//! | --- | --- |
//! | `dir/.wh.NAME` | a character device 0/0 at `dir/NAME` |
//! | `dir/.wh..wh..opq` | `dir` gets `{trusted,user}.overlay.opaque = "y"` |
//! | anything else | itself, with owner, mode, xattrs and mtime |
//!
//! Mounting the upper directory over the lower ones then shows exactly the filesystem the image
//! describes. [`apply_layer`] reads the stream once: it decompresses, hashes the uncompressed
//! bytes (the layer's *diff id*) and writes entries as they go by.
//!
//! # Hostile layers
//!
//! A layer is untrusted input. Every entry is placed through directory file descriptors opened
//! one component at a time with `O_NOFOLLOW`, so no entry — nor a hard link's target — can reach
//! outside the upper directory through `..`, an absolute path or a symlink planted by an earlier
//! entry; such entries are errors. The overlay's own attributes (`trusted.overlay.*`,
//! `user.overlay.*`) are never taken from the tar: only whiteout entries produce them.
//!
//! # Rootless
//!
//! In a user namespace `chown(2)` fails for ids that are not mapped. The file then stays owned by
//! the caller and its intended owner is written to `user.rootlesscontainers`, the way umoci's
//! rootless unpack records it (see `rootless_xattr`). Device nodes cannot be created there at
//! all; an empty file takes each one's place (as in umoci's rootless unpack) and they are listed
//! in [`ApplyReport::skipped_devices`].
//!
//! ```no_run
//! use std::fs::File;
//! use std::path::Path;
//! use cairn_oci::LayerCompression;
//! use cairn_snapshot::apply::{apply_layer, ApplyOptions, OverlayXattrs};
//!
//! let blob = File::open("/var/lib/cairn/blobs/sha256/ab12…")?;
//! let lowers = [Path::new("/var/lib/cairn/snapshots/1/fs").to_path_buf()];
//! let opts = ApplyOptions { xattrs: OverlayXattrs::Trusted, lowers: &lowers };
//! let report = apply_layer(blob, LayerCompression::Gzip, Path::new("/var/lib/cairn/snapshots/2/fs"), &opts)?;
//! println!("diff id {} ({} entries)", report.diff_id, report.entries);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use cairn_oci::{Digest, LayerCompression, Sha256Writer};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use xattr::FileExt as _;

use crate::rootless_xattr::{self, Resource};

/// Which namespace overlay's own extended attributes live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattrs {
    /// `trusted.overlay.*`: the overlay is mounted by real root.
    Trusted,
    /// `user.overlay.*`: the overlay is mounted in a user namespace with the `userxattr` option.
    User,
}

impl OverlayXattrs {
    /// The name of the attribute that marks a directory opaque.
    pub fn opaque_name(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.opaque",
            OverlayXattrs::User => "user.overlay.opaque",
        }
    }
}

/// Whether an xattr belongs to overlayfs (in either namespace) and so must never be copied from
/// a layer or between layers.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// How to apply a layer.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// Which overlay attributes to write.
    pub xattrs: OverlayXattrs,
    /// Lower layer directories of this snapshot, topmost first: used only to copy up the target of a
    /// hard link whose target is not in this layer (overlay copy-up semantics; honour whiteouts/opaque dirs in the lowers while looking up).
    ///
    /// They also lend their metadata to directories the layer implies without listing them (a
    /// whiteout in `/tmp` with no `/tmp` entry), as overlay's copy-up would.
    pub lowers: &'a [PathBuf],
}

/// What applying a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// sha256 of the whole uncompressed tar stream, read to EOF.
    pub diff_id: Digest,
    /// Tar entries applied, whiteouts included (PAX global headers are not entries).
    pub entries: u64,
    /// Length of the uncompressed tar stream.
    pub bytes: u64,
    /// Device nodes that could not be created (no `CAP_MKNOD`, as in a user namespace).
    pub skipped_devices: Vec<PathBuf>,
    /// Entries whose owner could not be set and that are owned by the caller instead; regular
    /// files and directories among them record their owner in `user.rootlesscontainers`.
    pub squashed_owners: u64,
}

/// Why a layer could not be applied. Every variant names the entry (or the upper directory) at
/// fault. On error the upper directory is left half-written; the caller discards it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The upper directory cannot be opened.
    #[error("cannot open upper directory {upper}: {source}")]
    Upper {
        /// The upper directory.
        upper: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The compressed stream or the tar inside it is truncated or corrupt.
    #[error("corrupt or truncated layer stream {}: {source}", after_entry(.last_entry))]
    Stream {
        /// The last entry read before the failure, if any.
        last_entry: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry's path is absolute, has a `..` component, or cannot be used at all.
    #[error("entry {entry}: unsafe path ({reason})")]
    UnsafePath {
        /// The entry's path as the tar spells it.
        entry: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A directory on the way to an entry is a symlink.
    #[error("entry {entry} passes through symlink {symlink}")]
    ThroughSymlink {
        /// The entry.
        entry: PathBuf,
        /// The symlink, relative to the upper directory.
        symlink: PathBuf,
    },
    /// A directory on the way to an entry is some other non-directory.
    #[error("entry {entry}: {parent} is not a directory")]
    NotADirectory {
        /// The entry.
        entry: PathBuf,
        /// The non-directory, relative to the upper directory.
        parent: PathBuf,
    },
    /// A hard link's target is absolute, has a `..` component, or is the link itself.
    #[error("hard link {entry}: unsafe target {target} ({reason})")]
    UnsafeLinkTarget {
        /// The hard link entry.
        entry: PathBuf,
        /// Its target as the tar spells it.
        target: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Resolving a hard link's target passes through a symlink, in this layer or below.
    #[error("hard link {entry}: target {target} passes through symlink {symlink}")]
    LinkThroughSymlink {
        /// The hard link entry.
        entry: PathBuf,
        /// Its target.
        target: PathBuf,
        /// The symlink on the way.
        symlink: PathBuf,
    },
    /// A hard link's target is in neither this layer nor the layers below (or is whited out).
    #[error("hard link {entry}: target {target} exists neither in this layer nor below")]
    LinkTargetMissing {
        /// The hard link entry.
        entry: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A hard link's target is a directory.
    #[error("hard link {entry}: target {target} is a directory")]
    LinkToDirectory {
        /// The hard link entry.
        entry: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A whiteout whose name is empty, `.` or `..`.
    #[error("whiteout {entry}: invalid name")]
    InvalidWhiteout {
        /// The whiteout entry.
        entry: PathBuf,
    },
    /// An entry type cairn does not apply (tape volume headers, multi-volume continuations…).
    #[error("entry {entry}: unsupported entry type {:?}", char::from(*.kind))]
    UnsupportedType {
        /// The entry.
        entry: PathBuf,
        /// Its type flag byte.
        kind: u8,
    },
    /// A header field cannot be parsed or does not fit (a uid beyond 32 bits, a bad mode).
    #[error("entry {entry}: invalid header field {field}: {source}")]
    Header {
        /// The entry.
        entry: PathBuf,
        /// The field.
        field: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation on the upper directory failed.
    #[error("entry {entry}: {op}: {source}")]
    Io {
        /// The entry being applied, relative to the upper directory.
        entry: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ApplyError {
    /// Whether the layer itself is at fault (hostile, corrupt or unsupported) rather than the
    /// machine (disk full, permissions).
    pub fn is_layer_fault(&self) -> bool {
        !matches!(self, ApplyError::Upper { .. } | ApplyError::Io { .. })
    }
}

fn after_entry(last: &Option<PathBuf>) -> String {
    match last {
        Some(entry) => format!("after entry {}", entry.display()),
        None => "before the first entry".to_owned(),
    }
}

fn io_err<'p, E: Into<io::Error>>(
    entry: &'p Path,
    op: &'static str,
) -> impl FnOnce(E) -> ApplyError + 'p {
    move |e| ApplyError::Io {
        entry: entry.to_owned(),
        op,
        source: e.into(),
    }
}

fn header_err<'p>(
    entry: &'p Path,
    field: &'static str,
) -> impl FnOnce(io::Error) -> ApplyError + 'p {
    move |source| ApplyError::Header {
        entry: entry.to_owned(),
        field,
        source,
    }
}

/// Applies one layer's tar stream to `upper`, an overlay upper directory (normally empty).
///
/// `blob` is the layer as stored, compressed as `compression` says. The stream is read to its
/// end, so [`ApplyReport::diff_id`] covers trailing padding and can be checked against the
/// image config's diff id.
pub fn apply_layer(
    blob: impl Read,
    compression: LayerCompression,
    upper: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    let span = tracing::debug_span!("apply_layer", upper = %upper.display());
    let _guard = span.enter();

    let stream = Decompressed::new(blob, compression).map_err(|source| ApplyError::Stream {
        last_entry: None,
        source,
    })?;
    let hashing = Hashing {
        inner: stream,
        hasher: Sha256Writer::new(),
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 * 1024, hashing));
    let mut applier = Applier::new(upper, opts)?;

    let mut last_entry: Option<PathBuf> = None;
    let entries = archive.entries().map_err(|source| ApplyError::Stream {
        last_entry: None,
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| ApplyError::Stream {
            last_entry: last_entry.clone(),
            source,
        })?;
        last_entry = Some(PathBuf::from(OsStr::from_bytes(&entry.path_bytes())));
        applier.apply_entry(&mut entry)?;
    }

    // The end-of-archive blocks and whatever padding follows are part of the diff id.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|source| ApplyError::Stream {
        last_entry: last_entry.clone(),
        source,
    })?;
    applier.finish()?;

    let hashing = rest.into_inner();
    let report = ApplyReport {
        bytes: hashing.hasher.written(),
        diff_id: hashing.hasher.finish(),
        entries: applier.entries,
        skipped_devices: applier.skipped_devices,
        squashed_owners: applier.squashed_owners,
    };
    tracing::debug!(
        diff_id = %report.diff_id,
        entries = report.entries,
        bytes = report.bytes,
        skipped_devices = report.skipped_devices.len(),
        squashed_owners = report.squashed_owners,
        "layer applied"
    );
    Ok(report)
}

/// The layer blob with its compression removed.
enum Decompressed<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

impl<R: Read> Decompressed<R> {
    fn new(blob: R, compression: LayerCompression) -> io::Result<Self> {
        Ok(match compression {
            LayerCompression::None => Decompressed::Plain(blob),
            LayerCompression::Gzip => {
                Decompressed::Gzip(Box::new(flate2::read::MultiGzDecoder::new(blob)))
            }
            LayerCompression::Zstd => {
                Decompressed::Zstd(Box::new(zstd::stream::read::Decoder::new(blob)?))
            }
        })
    }
}

impl<R: Read> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressed::Plain(r) => r.read(buf),
            Decompressed::Gzip(r) => r.read(buf),
            Decompressed::Zstd(r) => r.read(buf),
        }
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256Writer,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Turns a tar path into a path relative to the layer root: `./` and empty components are
/// dropped; absolute paths, `..` and NUL bytes are refused. The root itself is the empty path.
fn clean_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok(out)
}

fn shown(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(raw))
}

/// The directory part of a relative path (`""` for top-level names).
fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque marker, after the whiteout prefix is stripped.
const OPAQUE_REST: &[u8] = b".wh..opq";

/// Metadata of one entry (or of a lower file being copied up).
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl EntryMeta {
    fn from_entry<R: Read>(entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<Self, ApplyError> {
        let header = entry.header();
        let mode = header.mode().map_err(header_err(rel, "mode"))? & 0o7777;
        let id = |value: io::Result<u64>, field| {
            let value = value.map_err(header_err(rel, field))?;
            u32::try_from(value).map_err(|_| ApplyError::Header {
                entry: rel.to_owned(),
                field,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{value} exceeds 32 bits"),
                ),
            })
        };
        let uid = id(header.uid(), "uid")?;
        let gid = id(header.gid(), "gid")?;
        let seconds = header.mtime().map_err(header_err(rel, "mtime"))?;
        let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        let extensions = entry.pax_extensions().map_err(header_err(rel, "pax"))?;
        for extension in extensions.into_iter().flatten() {
            let extension = extension.map_err(header_err(rel, "pax"))?;
            let key = extension.key_bytes();
            if key == b"mtime" {
                if let Some(t) = pax_time(extension.value_bytes()) {
                    mtime = t;
                }
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if is_overlay_xattr(name) {
                    tracing::warn!(
                        entry = %rel.display(),
                        xattr = %String::from_utf8_lossy(name),
                        "dropping overlay attribute carried by the layer"
                    );
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(name).to_owned(),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
        Ok(EntryMeta {
            mode,
            uid,
            gid,
            atime: mtime,
            mtime,
            xattrs,
        })
    }

    fn from_lower(path: &Path, meta: &fs::Metadata, rel: &Path) -> Result<Self, ApplyError> {
        let mut xattrs = Vec::new();
        let names = xattr::list(path).map_err(io_err(rel, "list xattrs of lower file"))?;
        for name in names {
            if is_overlay_xattr(name.as_bytes()) {
                continue;
            }
            if let Some(value) =
                xattr::get(path, &name).map_err(io_err(rel, "read xattr of lower file"))?
            {
                xattrs.push((name, value));
            }
        }
        Ok(EntryMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            atime: TimeSpec::new(meta.atime(), meta.atime_nsec()),
            mtime: TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
            xattrs,
        })
    }

    fn carries_rootless_xattr(&self) -> bool {
        self.xattrs
            .iter()
            .any(|(name, _)| name.as_bytes() == rootless_xattr::XATTR_NAME.as_bytes())
    }
}

/// Parses a PAX time, `[-]seconds[.fraction]`.
fn pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10
            + fraction
                .as_bytes()
                .get(i)
                .map_or(0, |b| i64::from(b - b'0'));
    }
    Some(if !negative {
        TimeSpec::new(seconds, nanos)
    } else if nanos == 0 {
        TimeSpec::new(-seconds, 0)
    } else {
        TimeSpec::new(-seconds - 1, 1_000_000_000 - nanos)
    })
}

/// What kind of inode was just created, for metadata rules: symlinks have no mode, only regular
/// files and directories can carry `user.*` attributes, directories get mode and times last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    File,
    Dir,
    Symlink,
    Special,
}

/// A freshly created (or updated) inode: by open file, or by parent directory and name.
struct Node<'f> {
    file: Option<&'f File>,
    parent: &'f OwnedFd,
    name: &'f OsStr,
    rel: &'f Path,
    kind: NodeKind,
    /// The inode was created with its final mode already.
    mode_done: bool,
}

/// Directory metadata applied after every entry is in place.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Option<TimeSpec>,
}

/// Where a path resolves in a stack of layers.
enum Lookup {
    /// In layer `layer` (0 is the first directory given) at `path`.
    Found {
        layer: usize,
        path: PathBuf,
        meta: fs::Metadata,
    },
    /// Nowhere, or hidden by a whiteout, an opaque directory or a non-directory above it.
    Missing,
    /// A directory on the way is a symlink (`rel`-relative).
    Symlink(PathBuf),
}

/// Resolves `rel` the way overlayfs merges `layers` (topmost first), without following symlinks.
fn lookup<'p>(
    layers: impl IntoIterator<Item = &'p Path>,
    rel: &Path,
    opaque_name: &str,
) -> io::Result<Lookup> {
    let components: Vec<&OsStr> = rel.iter().collect();
    'layers: for (index, layer) in layers.into_iter().enumerate() {
        let mut path = layer.to_path_buf();
        let mut below_opaque = false;
        for (depth, component) in components.iter().enumerate() {
            path.push(component);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if below_opaque {
                        return Ok(Lookup::Missing);
                    }
                    continue 'layers;
                }
                Err(e) => return Err(e),
            };
            if is_whiteout(&meta) {
                return Ok(Lookup::Missing);
            }
            if depth + 1 == components.len() {
                return Ok(Lookup::Found {
                    layer: index,
                    path,
                    meta,
                });
            }
            if meta.file_type().is_symlink() {
                return Ok(Lookup::Symlink(components[..=depth].iter().collect()));
            }
            if !meta.is_dir() {
                return Ok(Lookup::Missing);
            }
            if !below_opaque {
                below_opaque = matches!(xattr::get(&path, opaque_name), Ok(Some(v)) if v == b"y");
            }
        }
    }
    Ok(Lookup::Missing)
}

fn open_dir_nofollow(parent: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The umask, without changing it (umask(2) can only read it by setting it, which would race
/// with other threads creating files).
fn current_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits & 0o7777)
}

struct Applier<'a> {
    upper: &'a Path,
    lowers: &'a [PathBuf],
    opaque_name: &'static str,
    root: Rc<OwnedFd>,
    /// The directory last walked to, as (name, fd) per component: tar entries come grouped by
    /// directory, so most entries reuse it whole.
    cursor: Vec<(OsString, Rc<OwnedFd>)>,
    euid: u32,
    egid: u32,
    /// The process umask, read once; `None` if /proc does not say.
    umask: Option<u32>,
    /// Owners `chown(2)` refused once (unmapped in this user namespace); not tried again.
    refused_owners: HashSet<(u32, u32)>,
    /// Directory modes and mtimes, applied at the end (children first).
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Directories created because an entry needed them, not listed (yet) by the layer.
    implicit_dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
    warned_xattrs: HashSet<OsString>,
    entries: u64,
    skipped_devices: Vec<PathBuf>,
    squashed_owners: u64,
}

impl<'a> Applier<'a> {
    fn new(upper: &'a Path, opts: &ApplyOptions<'a>) -> Result<Self, ApplyError> {
        let root = nix::fcntl::open(
            upper,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ApplyError::Upper {
            upper: upper.to_owned(),
            source: e.into(),
        })?;
        Ok(Applier {
            upper,
            lowers: opts.lowers,
            opaque_name: opts.xattrs.opaque_name(),
            root: Rc::new(root),
            cursor: Vec::new(),
            euid: Uid::effective().as_raw(),
            egid: Gid::effective().as_raw(),
            umask: current_umask(),
            refused_owners: HashSet::new(),
            dirs: BTreeMap::new(),
            implicit_dirs: HashSet::new(),
            buf: vec![0; 1024 * 1024],
            warned_xattrs: HashSet::new(),
            entries: 0,
            skipped_devices: Vec::new(),
            squashed_owners: 0,
        })
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            tracing::debug!("ignoring PAX global header");
            return Ok(());
        }
        self.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let rel = clean_path(&raw).map_err(|reason| ApplyError::UnsafePath {
            entry: shown(&raw),
            reason,
        })?;

        if let Some(hidden) = rel
            .file_name()
            .and_then(|name| name.as_bytes().strip_prefix(WHITEOUT_PREFIX))
        {
            return self.whiteout(&rel, hidden);
        }

        let is_dir = kind.is_dir() || (kind == tar::EntryType::Regular && raw.ends_with(b"/"));
        if rel.as_os_str().is_empty() && !is_dir {
            return Err(ApplyError::UnsafePath {
                entry: shown(&raw),
                reason: "replaces the root directory with a non-directory",
            });
        }
        let meta = EntryMeta::from_entry(entry, &rel)?;
        use tar::EntryType as T;
        match kind {
            _ if is_dir => self.directory(&rel, &meta),
            T::Regular | T::Continuous | T::GNUSparse => self.regular(entry, &rel, &meta),
            T::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| ApplyError::Header {
                    entry: rel.clone(),
                    field: "linkname",
                    source: io::Error::new(io::ErrorKind::InvalidData, "symlink without a target"),
                })?;
                self.symlink(&rel, OsStr::from_bytes(&target), &meta)
            }
            T::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| ApplyError::Header {
                    entry: rel.clone(),
                    field: "linkname",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "hard link without a target",
                    ),
                })?;
                self.hard_link(&rel, &target)
            }
            T::Char | T::Block | T::Fifo => {
                let (sflag, dev) = match kind {
                    T::Char | T::Block => {
                        let header = entry.header();
                        let major = header
                            .device_major()
                            .map_err(header_err(&rel, "devmajor"))?
                            .unwrap_or(0);
                        let minor = header
                            .device_minor()
                            .map_err(header_err(&rel, "devminor"))?
                            .unwrap_or(0);
                        let sflag = if kind == T::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (
                            sflag,
                            nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                        )
                    }
                    // Device numbers mean nothing for a fifo; some writers leave them blank.
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.special(&rel, sflag, dev, &meta)
            }
            other => Err(ApplyError::UnsupportedType {
                entry: rel,
                kind: other.as_byte(),
            }),
        }
    }

    /// The directory `dir` (relative to the upper directory), opened without following
    /// symlinks. Missing directories are created when `create`, else `None` is returned.
    fn walk(
        &mut self,
        dir: &Path,
        entry: &Path,
        create: bool,
    ) -> Result<Option<Rc<OwnedFd>>, ApplyError> {
        let mut keep = 0;
        for (component, (name, _)) in dir.iter().zip(&self.cursor) {
            if component != name.as_os_str() {
                break;
            }
            keep += 1;
        }
        self.cursor.truncate(keep);
        let mut prefix: PathBuf = dir.iter().take(keep).collect();
        for component in dir.iter().skip(keep) {
            prefix.push(component);
            let at = self.top();
            let fd = match open_dir_nofollow(&at, component) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    self.create_implicit_dir(&at, component, &prefix)?;
                    open_dir_nofollow(&at, component).map_err(io_err(&prefix, "open directory"))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    let stat =
                        nix::sys::stat::fstatat(&at, component, AtFlags::AT_SYMLINK_NOFOLLOW)
                            .map_err(io_err(&prefix, "stat"))?;
                    return Err(
                        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
                            == SFlag::S_IFLNK
                        {
                            ApplyError::ThroughSymlink {
                                entry: entry.to_owned(),
                                symlink: prefix,
                            }
                        } else {
                            ApplyError::NotADirectory {
                                entry: entry.to_owned(),
                                parent: prefix,
                            }
                        },
                    );
                }
                Err(e) => return Err(io_err(&prefix, "open directory")(e)),
            };
            self.cursor.push((component.to_owned(), Rc::new(fd)));
        }
        Ok(Some(self.top()))
    }

    fn top(&self) -> Rc<OwnedFd> {
        self.cursor
            .last()
            .map_or_else(|| Rc::clone(&self.root), |(_, fd)| Rc::clone(fd))
    }

    /// The parent directory of `rel` (created if missing) and `rel`'s last component.
    fn parent_and_name<'r>(
        &mut self,
        rel: &'r Path,
    ) -> Result<(Rc<OwnedFd>, &'r OsStr), ApplyError> {
        let name = rel.file_name().ok_or_else(|| ApplyError::UnsafePath {
            entry: rel.to_owned(),
            reason: "no file name",
        })?;
        let parent = self.walk(parent_of(rel), rel, true)?.ok_or_else(|| {
            io_err(rel, "open parent directory")(io::Error::from(io::ErrorKind::NotFound))
        })?;
        Ok((parent, name))
    }

    /// Creates a directory a deeper entry needs but the layer has not listed. It takes the
    /// owner, mode, xattrs and mtime of the directory the lower layers show there, as overlay's
    /// copy-up does; with nothing below it is `0755` and owned by root.
    fn create_implicit_dir(
        &mut self,
        at: &OwnedFd,
        name: &OsStr,
        rel: &Path,
    ) -> Result<(), ApplyError> {
        nix::sys::stat::mkdirat(at, name, mode(0o755)).map_err(io_err(rel, "create directory"))?;
        self.implicit_dirs.insert(rel.to_owned());
        let below = lookup(
            self.lowers.iter().map(PathBuf::as_path),
            rel,
            self.opaque_name,
        )
        .map_err(io_err(rel, "look up directory in lower layers"))?;
        match below {
            Lookup::Found { path, meta, .. } if meta.is_dir() => {
                let lower = EntryMeta::from_lower(&path, &meta, rel)?;
                let node = Node {
                    file: None,
                    parent: at,
                    name,
                    rel,
                    kind: NodeKind::Dir,
                    mode_done: false,
                };
                self.restore_metadata(&node, &lower)
            }
            _ => {
                if (self.euid, self.egid) != (0, 0) {
                    // Best effort: a caller that is not root cannot give files to root anyway.
                    let _ = nix::unistd::fchownat(
                        at,
                        name,
                        Some(Uid::from_raw(0)),
                        Some(Gid::from_raw(0)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                }
                self.dirs.insert(
                    rel.to_owned(),
                    DirMeta {
                        mode: 0o755,
                        mtime: None,
                    },
                );
                Ok(())
            }
        }
    }

    /// Removes whatever is at `parent/name` (`rel`), recursively for a directory.
    fn remove_at(&mut self, parent: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), ApplyError> {
        match nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                // Every parent of `rel` was just opened without following symlinks, and nothing
                // else writes to the upper directory, so the path names this very directory.
                // remove_dir_all does not follow symlinks inside it.
                fs::remove_dir_all(self.upper.join(rel))
                    .map_err(io_err(rel, "remove directory"))?;
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range(rel.to_path_buf()..)
                    .take_while(|(key, _)| key.starts_with(rel))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in gone {
                    self.dirs.remove(&key);
                }
                self.implicit_dirs.retain(|dir| !dir.starts_with(rel));
                let depth = rel.iter().count();
                if self.cursor.len() >= depth
                    && self.cursor[..depth]
                        .iter()
                        .map(|(n, _)| n.as_os_str())
                        .eq(rel.iter())
                {
                    self.cursor.truncate(depth - 1);
                }
                Ok(())
            }
            Err(e) => Err(io_err(rel, "remove existing entry")(e)),
        }
    }

    /// Runs `create`; if something is in the way, removes it and runs `create` again. The outer
    /// error is from the removal, the inner one from `create`.
    fn create_replacing<T>(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        mut create: impl FnMut() -> nix::Result<T>,
    ) -> Result<nix::Result<T>, ApplyError> {
        match create() {
            Err(Errno::EEXIST) => {
                self.remove_at(parent, name, rel)?;
                Ok(create())
            }
            result => Ok(result),
        }
    }

    fn whiteout(&mut self, rel: &Path, hidden: &[u8]) -> Result<(), ApplyError> {
        let dir = parent_of(rel);
        if hidden == OPAQUE_REST {
            self.walk(dir, rel, true)?;
            let path = self.upper.join(dir);
            return xattr::set(&path, self.opaque_name, b"y")
                .map_err(io_err(rel, "mark directory opaque"));
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // `.wh..wh.plnk` and friends: AUFS bookkeeping, meaningless here (Docker skips them too).
            tracing::debug!(entry = %rel.display(), "skipping AUFS metadata entry");
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(ApplyError::InvalidWhiteout {
                entry: rel.to_owned(),
            });
        }
        let name = OsStr::from_bytes(hidden);
        let target = dir.join(name);
        let parent = self
            .walk(dir, rel, true)?
            .expect("walk with create returns a directory");
        self.remove_at(&parent, name, &target)?;
        nix::sys::stat::mknodat(&parent, name, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(io_err(rel, "create whiteout device"))
    }

    fn directory(&mut self, rel: &Path, meta: &EntryMeta) -> Result<(), ApplyError> {
        if rel.as_os_str().is_empty() {
            let root = Rc::clone(&self.root);
            let node = Node {
                file: None,
                parent: &root,
                name: OsStr::new("."),
                rel,
                kind: NodeKind::Dir,
                mode_done: false,
            };
            return self.restore_metadata(&node, meta);
        }
        let (parent, name) = self.parent_and_name(rel)?;
        let created =
            self.create_replacing(&parent, name, rel, || {
                match nix::sys::stat::mkdirat(&*parent, name, mode(0o755)) {
                    Err(Errno::EEXIST) => {
                        let stat =
                            nix::sys::stat::fstatat(&*parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
                            == SFlag::S_IFDIR
                        {
                            Ok(false)
                        } else {
                            Err(Errno::EEXIST)
                        }
                    }
                    result => result.map(|()| true),
                }
            })?;
        let created = created.map_err(io_err(rel, "create directory"))?;
        if !created && self.implicit_dirs.remove(rel) {
            // The layer lists a directory we made up for an earlier entry: its attributes are
            // the layer's, not the ones copied from below.
            let path = self.upper.join(rel);
            for name in xattr::list(&path).map_err(io_err(rel, "list xattrs"))? {
                if !is_overlay_xattr(name.as_bytes()) {
                    xattr::remove(&path, &name).map_err(io_err(rel, "remove xattr"))?;
                }
            }
        }
        let node = Node {
            file: None,
            parent: &parent,
            name,
            rel,
            kind: NodeKind::Dir,
            mode_done: false,
        };
        self.restore_metadata(&node, meta)
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        let (parent, name) = self.parent_and_name(rel)?;
        // Most files can be created with their final mode, which saves a chmod each: not when
        // the umask would take bits away, nor with setuid/setgid/sticky bits (a later chown
        // clears setuid and setgid, and open(2) ignores them under a umask anyway).
        let mode_done =
            meta.mode & 0o7000 == 0 && self.umask.is_some_and(|umask| meta.mode & umask == 0);
        let create_mode = if mode_done { meta.mode } else { 0o600 };
        let fd = self
            .create_replacing(&parent, name, rel, || {
                nix::fcntl::openat(
                    &*parent,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    mode(create_mode),
                )
            })?
            .map_err(io_err(rel, "create file"))?;
        let mut file = File::from(fd);
        let expected = entry.size();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ApplyError::Stream {
                        last_entry: Some(rel.to_owned()),
                        source,
                    })
                }
            };
            file.write_all(&self.buf[..n])
                .map_err(io_err(rel, "write file"))?;
            written += n as u64;
        }
        if written != expected {
            return Err(ApplyError::Stream {
                last_entry: Some(rel.to_owned()),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file content ends after {written} of {expected} bytes"),
                ),
            });
        }
        let node = Node {
            file: Some(&file),
            parent: &parent,
            name,
            rel,
            kind: NodeKind::File,
            mode_done,
        };
        self.restore_metadata(&node, meta)
    }

    fn symlink(&mut self, rel: &Path, target: &OsStr, meta: &EntryMeta) -> Result<(), ApplyError> {
        let (parent, name) = self.parent_and_name(rel)?;
        self.create_replacing(&parent, name, rel, || {
            nix::unistd::symlinkat(target, &*parent, name)
        })?
        .map_err(io_err(rel, "create symlink"))?;
        let node = Node {
            file: None,
            parent: &parent,
            name,
            rel,
            kind: NodeKind::Symlink,
            mode_done: false,
        };
        self.restore_metadata(&node, meta)
    }

    fn special(
        &mut self,
        rel: &Path,
        sflag: SFlag,
        dev: u64,
        meta: &EntryMeta,
    ) -> Result<(), ApplyError> {
        let (parent, name) = self.parent_and_name(rel)?;
        let made = self.create_replacing(&parent, name, rel, || {
            nix::sys::stat::mknodat(&*parent, name, sflag, mode(meta.mode & 0o777), dev)
        })?;
        match made {
            Ok(()) => {}
            Err(Errno::EPERM) if sflag != SFlag::S_IFIFO => {
                // Without root a device cannot exist; leave an empty file in its place, as
                // umoci's rootless unpack does, so the path is there for a runtime to
                // bind-mount the host's device over it.
                tracing::debug!(entry = %rel.display(), "cannot create device node, leaving an empty file");
                self.skipped_devices.push(rel.to_owned());
                let fd = nix::fcntl::openat(
                    &*parent,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    mode(0),
                )
                .map_err(io_err(rel, "create device placeholder"))?;
                let file = File::from(fd);
                let node = Node {
                    file: Some(&file),
                    parent: &parent,
                    name,
                    rel,
                    kind: NodeKind::File,
                    mode_done: false,
                };
                return self.restore_metadata(&node, meta);
            }
            Err(e) => return Err(io_err(rel, "create device node")(e)),
        }
        let node = Node {
            file: None,
            parent: &parent,
            name,
            rel,
            kind: NodeKind::Special,
            mode_done: false,
        };
        self.restore_metadata(&node, meta)
    }

    fn hard_link(&mut self, rel: &Path, raw_target: &[u8]) -> Result<(), ApplyError> {
        let unsafe_target = |reason| ApplyError::UnsafeLinkTarget {
            entry: rel.to_owned(),
            target: shown(raw_target),
            reason,
        };
        let target = clean_path(raw_target).map_err(unsafe_target)?;
        if target.as_os_str().is_empty() {
            return Err(unsafe_target("the root directory"));
        }
        if target == rel {
            return Err(unsafe_target("the link itself"));
        }
        let layers = std::iter::once(self.upper).chain(self.lowers.iter().map(PathBuf::as_path));
        let found = lookup(layers, &target, self.opaque_name)
            .map_err(io_err(rel, "look up hard link target"))?;
        match found {
            Lookup::Missing => {
                return Err(ApplyError::LinkTargetMissing {
                    entry: rel.to_owned(),
                    target,
                })
            }
            Lookup::Symlink(symlink) => {
                return Err(ApplyError::LinkThroughSymlink {
                    entry: rel.to_owned(),
                    target,
                    symlink,
                })
            }
            Lookup::Found { meta, .. } if meta.is_dir() => {
                return Err(ApplyError::LinkToDirectory {
                    entry: rel.to_owned(),
                    target,
                })
            }
            Lookup::Found { layer: 0, .. } => {}
            Lookup::Found { path, meta, .. } => self.copy_up(&target, &path, &meta, rel)?,
        }
        let target_name = target.file_name().expect("non-empty path has a file name");
        let target_parent = self.walk(parent_of(&target), rel, false)?.ok_or_else(|| {
            ApplyError::LinkTargetMissing {
                entry: rel.to_owned(),
                target: target.clone(),
            }
        })?;
        let (parent, name) = self.parent_and_name(rel)?;
        self.create_replacing(&parent, name, rel, || {
            nix::unistd::linkat(
                &*target_parent,
                target_name,
                &*parent,
                name,
                AtFlags::empty(),
            )
        })?
        .map_err(io_err(rel, "create hard link"))
    }

    /// Copies the lower file at `source` (which overlay shows at `target`) into the upper
    /// directory, with its metadata, so that a hard link to it can be made there.
    fn copy_up(
        &mut self,
        target: &Path,
        source: &Path,
        meta: &fs::Metadata,
        entry: &Path,
    ) -> Result<(), ApplyError> {
        tracing::debug!(entry = %entry.display(), target = %target.display(), "copying up hard link target");
        let lower = EntryMeta::from_lower(source, meta, target)?;
        let (parent, name) = self.parent_and_name(target)?;
        let file_type = meta.file_type();
        if file_type.is_file() {
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(source)
                .map_err(io_err(target, "open lower file"))?;
            let fd = nix::fcntl::openat(
                &*parent,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                mode(0o600),
            )
            .map_err(io_err(target, "create copied-up file"))?;
            let mut dst = File::from(fd);
            io::copy(&mut src, &mut dst).map_err(io_err(target, "copy up file content"))?;
            let node = Node {
                file: Some(&dst),
                parent: &parent,
                name,
                rel: target,
                kind: NodeKind::File,
                mode_done: false,
            };
            return self.restore_metadata(&node, &lower);
        }
        let kind = if file_type.is_symlink() {
            let link = fs::read_link(source).map_err(io_err(target, "read lower symlink"))?;
            nix::unistd::symlinkat(&link, &*parent, name)
                .map_err(io_err(target, "copy up symlink"))?;
            NodeKind::Symlink
        } else {
            let sflag = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
            nix::sys::stat::mknodat(&*parent, name, sflag, mode(lower.mode & 0o777), meta.rdev())
                .map_err(io_err(target, "copy up special file"))?;
            NodeKind::Special
        };
        let node = Node {
            file: None,
            parent: &parent,
            name,
            rel: target,
            kind,
            mode_done: false,
        };
        self.restore_metadata(&node, &lower)
    }

    /// Owner first (it clears setuid bits and file capabilities), then mode, xattrs and times;
    /// for directories mode and times are only recorded, for [`Applier::finish`].
    fn restore_metadata(&mut self, node: &Node<'_>, meta: &EntryMeta) -> Result<(), ApplyError> {
        let squashed = self.set_owner(node, meta.uid, meta.gid)?;
        match node.kind {
            NodeKind::Dir => {
                self.dirs.insert(
                    node.rel.to_owned(),
                    DirMeta {
                        mode: meta.mode,
                        mtime: Some(meta.mtime),
                    },
                );
            }
            NodeKind::Symlink => {}
            NodeKind::File => {
                let file = node
                    .file
                    .expect("regular files are restored through their fd");
                if !node.mode_done {
                    nix::sys::stat::fchmod(file, mode(meta.mode))
                        .map_err(io_err(node.rel, "chmod"))?;
                }
            }
            NodeKind::Special => {
                nix::sys::stat::fchmodat(
                    node.parent,
                    node.name,
                    mode(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(io_err(node.rel, "chmod"))?;
            }
        }
        for (name, value) in &meta.xattrs {
            self.set_xattr(node, name, value)?;
        }
        if squashed {
            self.squashed_owners += 1;
            let may_hold_user_xattrs = matches!(node.kind, NodeKind::File | NodeKind::Dir);
            if may_hold_user_xattrs && !meta.carries_rootless_xattr() {
                if let Some(resource) = Resource::for_owner(meta.uid, meta.gid) {
                    self.set_xattr(
                        node,
                        OsStr::new(rootless_xattr::XATTR_NAME),
                        &resource.encode(),
                    )?;
                }
            }
        }
        match node.kind {
            NodeKind::Dir => Ok(()),
            NodeKind::File => {
                let file = node
                    .file
                    .expect("regular files are restored through their fd");
                nix::sys::stat::futimens(file, &meta.atime, &meta.mtime)
                    .map_err(io_err(node.rel, "set times"))
            }
            NodeKind::Symlink | NodeKind::Special => nix::sys::stat::utimensat(
                node.parent,
                node.name,
                &meta.atime,
                &meta.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io_err(node.rel, "set times")),
        }
    }

    /// Gives the node its owner. Returns `true` when the owner had to be squashed to the caller
    /// because `chown(2)` refused it (`EPERM`, or `EINVAL` for an id unmapped in this namespace).
    fn set_owner(&mut self, node: &Node<'_>, uid: u32, gid: u32) -> Result<bool, ApplyError> {
        if (uid, gid) == (self.euid, self.egid) {
            return Ok(false);
        }
        if self.refused_owners.contains(&(uid, gid)) {
            return Ok(true);
        }
        let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let result = match node.file {
            Some(file) => nix::unistd::fchown(file, owner, group),
            None => nix::unistd::fchownat(
                node.parent,
                node.name,
                owner,
                group,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
        };
        match result {
            Ok(()) => Ok(false),
            Err(Errno::EPERM | Errno::EINVAL) => {
                tracing::debug!(uid, gid, "cannot chown, recording the owner instead");
                self.refused_owners.insert((uid, gid));
                Ok(true)
            }
            Err(e) => Err(io_err(node.rel, "chown")(e)),
        }
    }

    fn set_xattr(&mut self, node: &Node<'_>, name: &OsStr, value: &[u8]) -> Result<(), ApplyError> {
        let result = match node.file {
            Some(file) => file.set_xattr(name, value),
            None => xattr::set(self.upper.join(node.rel), name, value),
        };
        let Err(e) = result else { return Ok(()) };
        match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            // user.* on a symlink or device: the kernel never allows it.
            Errno::EPERM
                if name.as_bytes().starts_with(b"user.")
                    && !matches!(node.kind, NodeKind::File | NodeKind::Dir) =>
            {
                Ok(())
            }
            // trusted.* and some security.* need privileges a rootless caller lacks; some
            // filesystems have no xattrs at all. Skipping is what umoci and containerd do.
            Errno::EPERM | Errno::EACCES | Errno::ENOTSUP => {
                if self.warned_xattrs.insert(name.to_owned()) {
                    tracing::warn!(
                        entry = %node.rel.display(),
                        xattr = %name.to_string_lossy(),
                        error = %e,
                        "cannot set extended attribute, dropping it (further ones of this name are dropped silently)"
                    );
                }
                Ok(())
            }
            _ => Err(io_err(node.rel, "set xattr")(e)),
        }
    }

    /// Applies directory modes and mtimes, children before parents, so that creating entries
    /// did not disturb the mtimes and read-only directories could be filled.
    fn finish(&mut self) -> Result<(), ApplyError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in dirs.iter().rev() {
            let (parent, name) = match rel.file_name() {
                None => (Rc::clone(&self.root), OsStr::new(".")),
                Some(name) => match self.walk(parent_of(rel), rel, false)? {
                    Some(parent) => (parent, name),
                    None => continue,
                },
            };
            match nix::sys::stat::fstatat(&*parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat)
                    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
                        == SFlag::S_IFDIR => {}
                _ => continue,
            }
            nix::sys::stat::fchmodat(
                &*parent,
                name,
                mode(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(io_err(rel, "chmod directory"))?;
            if let Some(mtime) = meta.mtime {
                nix::sys::stat::utimensat(
                    &*parent,
                    name,
                    &mtime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(io_err(rel, "set directory times"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::process::Command;

    /// Builds layer tars entry by entry. Names and link names are written into the header bytes
    /// directly, so hostile paths the `tar` crate would refuse can be built too.
    pub(crate) struct Tar {
        builder: tar::Builder<Vec<u8>>,
    }

    /// Per-entry header fields.
    #[derive(Clone, Copy)]
    pub(crate) struct Attrs {
        pub mode: u32,
        pub uid: u64,
        pub gid: u64,
        pub mtime: u64,
    }

    pub(crate) const DEFAULT: Attrs = Attrs {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
    };

    /// Header fields for a plain directory.
    pub(crate) const DIR: Attrs = Attrs {
        mode: 0o755,
        ..DEFAULT
    };

    pub(crate) fn attrs(mode: u32, uid: u64, gid: u64, mtime: u64) -> Attrs {
        Attrs {
            mode,
            uid,
            gid,
            mtime,
        }
    }

    impl Tar {
        pub(crate) fn new() -> Self {
            Tar {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        #[allow(clippy::too_many_arguments)]
        pub(crate) fn raw(
            &mut self,
            kind: tar::EntryType,
            name: &[u8],
            link: &[u8],
            data: &[u8],
            a: Attrs,
            xattrs: &[(&str, &[u8])],
            dev: (u32, u32),
        ) -> &mut Self {
            if !xattrs.is_empty() {
                let keys: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                self.builder
                    .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(a.mode);
            header.set_uid(a.uid);
            header.set_gid(a.gid);
            header.set_mtime(a.mtime);
            if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
                header.set_device_major(dev.0).unwrap();
                header.set_device_minor(dev.1).unwrap();
            }
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        pub(crate) fn dir(&mut self, name: &str, a: Attrs) -> &mut Self {
            self.raw(
                tar::EntryType::Directory,
                name.as_bytes(),
                b"",
                b"",
                a,
                &[],
                (0, 0),
            )
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8], a: Attrs) -> &mut Self {
            self.raw(
                tar::EntryType::Regular,
                name.as_bytes(),
                b"",
                data,
                a,
                &[],
                (0, 0),
            )
        }

        pub(crate) fn file_x(
            &mut self,
            name: &str,
            data: &[u8],
            a: Attrs,
            x: &[(&str, &[u8])],
        ) -> &mut Self {
            self.raw(
                tar::EntryType::Regular,
                name.as_bytes(),
                b"",
                data,
                a,
                x,
                (0, 0),
            )
        }

        pub(crate) fn symlink(&mut self, name: &str, target: &str, a: Attrs) -> &mut Self {
            self.raw(
                tar::EntryType::Symlink,
                name.as_bytes(),
                target.as_bytes(),
                b"",
                a,
                &[],
                (0, 0),
            )
        }

        pub(crate) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(
                tar::EntryType::Link,
                name.as_bytes(),
                target.as_bytes(),
                b"",
                DEFAULT,
                &[],
                (0, 0),
            )
        }

        pub(crate) fn device(
            &mut self,
            kind: tar::EntryType,
            name: &str,
            dev: (u32, u32),
            a: Attrs,
        ) -> &mut Self {
            self.raw(kind, name.as_bytes(), b"", b"", a, &[], dev)
        }

        /// An OCI whiteout entry, as Docker writes them: an empty regular file.
        pub(crate) fn whiteout(&mut self, name: &str) -> &mut Self {
            self.file(name, b"", DEFAULT)
        }

        pub(crate) fn finish(&mut self) -> Vec<u8> {
            let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
            builder.into_inner().unwrap()
        }
    }

    pub(crate) fn apply_with(
        tar: &[u8],
        upper: &Path,
        lowers: &[PathBuf],
        xattrs: OverlayXattrs,
    ) -> Result<ApplyReport, ApplyError> {
        let opts = ApplyOptions { xattrs, lowers };
        apply_layer(tar, LayerCompression::None, upper, &opts)
    }

    fn apply(tar: &[u8], upper: &Path) -> Result<ApplyReport, ApplyError> {
        apply_with(tar, upper, &[], OverlayXattrs::Trusted)
    }

    pub(crate) fn is_root() -> bool {
        Uid::effective().is_root() && !in_user_namespace()
    }

    /// Whether this process runs in a user namespace other than the initial one.
    fn in_user_namespace() -> bool {
        fs::read_to_string("/proc/self/uid_map")
            .map(|map| map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
            .unwrap_or(false)
    }

    macro_rules! require_root {
        () => {
            if !is_root() {
                eprintln!(
                    "SKIPPED: this test needs real root (chown to any id, mknod, trusted.* xattrs)"
                );
                return;
            }
        };
    }

    fn lstat(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
        xattr::get(p, name).unwrap()
    }

    #[test]
    fn clean_path_normalises_and_refuses() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), Path::new("a/b/c"));
        assert_eq!(clean_path(b"./").unwrap(), Path::new(""));
        assert_eq!(clean_path(b"a").unwrap(), Path::new("a"));
        assert_eq!(clean_path(b"../x"), Err("`..` component"));
        assert_eq!(clean_path(b"a/../../x"), Err("`..` component"));
        assert_eq!(clean_path(b"a/.."), Err("`..` component"));
        assert_eq!(clean_path(b"/etc/passwd"), Err("absolute path"));
        assert_eq!(clean_path(b""), Err("empty path"));
        assert_eq!(clean_path(b"a\0b"), Err("contains a NUL byte"));
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        let t = pax_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 123_456_789));
        let t = pax_time(b"5.5").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (5, 500_000_000));
        let t = pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (-2, 750_000_000));
        assert!(pax_time(b"12a").is_none());
        assert!(pax_time(b"").is_none());
    }

    #[test]
    fn applies_files_dirs_links_and_metadata() {
        require_root!();
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let tar = Tar::new()
            .dir("./", attrs(0o755, 0, 0, 100))
            .dir("./etc/", attrs(0o755, 0, 0, 1000))
            .file(
                "./etc/passwd",
                b"root:x:0:0::/root:/bin/sh\n",
                attrs(0o644, 0, 0, 2000),
            )
            .symlink("etc/alt", "/etc/passwd", attrs(0o777, 1000, 1001, 3000))
            .dir("usr/bin/", attrs(0o755, 0, 0, 1100))
            .file("usr/bin/su", b"\x7fELF", attrs(0o4755, 0, 0, 1200))
            .file("usr/bin/newgrp", b"\x7fELF2", attrs(0o2755, 0, 42, 1200))
            .hardlink("usr/bin/sudo", "usr/bin/su")
            .dir("tmp/", attrs(0o1777, 0, 0, 1300))
            .dir("secret/", attrs(0o000, 0, 0, 1400))
            .file("secret/inside", b"s", attrs(0o000, 0, 0, 1500))
            .dir("home/u/", attrs(0o700, 1000, 1000, 1600))
            .file_x(
                "home/u/notes",
                b"hello",
                attrs(0o640, 1000, 1000, 1700),
                &[("user.note", b"v1"), ("trusted.cairn", b"t")],
            )
            .device(
                tar::EntryType::Fifo,
                "run/fifo",
                (0, 0),
                attrs(0o600, 0, 0, 1800),
            )
            .device(
                tar::EntryType::Char,
                "dev/null",
                (1, 3),
                attrs(0o666, 0, 0, 1900),
            )
            .device(
                tar::EntryType::Block,
                "dev/loop9",
                (7, 9),
                attrs(0o660, 0, 6, 1900),
            )
            .finish();
        let report = apply(&tar, &upper).unwrap();

        assert_eq!(report.diff_id, Digest::sha256_of(&tar));
        assert_eq!(report.bytes, tar.len() as u64);
        assert_eq!(report.entries, 16);
        assert!(report.skipped_devices.is_empty());
        assert_eq!(report.squashed_owners, 0);

        let m = lstat(&upper.join("etc/passwd"));
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o644, 0, 0, 2000)
        );
        assert_eq!(
            fs::read(upper.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        // Directory mtimes survive the creation of their children.
        assert_eq!(lstat(&upper.join("etc")).mtime(), 1000);
        assert_eq!(lstat(&upper).mtime(), 100);
        let m = lstat(&upper.join("etc/alt"));
        assert!(m.file_type().is_symlink());
        assert_eq!(
            fs::read_link(upper.join("etc/alt")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!((m.uid(), m.gid(), m.mtime()), (1000, 1001, 3000));

        let su = lstat(&upper.join("usr/bin/su"));
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid survives");
        let newgrp = lstat(&upper.join("usr/bin/newgrp"));
        assert_eq!(
            (newgrp.mode() & 0o7777, newgrp.gid()),
            (0o2755, 42),
            "setgid survives chown"
        );
        let sudo = lstat(&upper.join("usr/bin/sudo"));
        assert_eq!((sudo.ino(), sudo.nlink()), (su.ino(), 2));

        assert_eq!(lstat(&upper.join("tmp")).mode() & 0o7777, 0o1777);
        assert_eq!(lstat(&upper.join("secret")).mode() & 0o7777, 0);
        assert_eq!(lstat(&upper.join("secret/inside")).mode() & 0o7777, 0);
        assert_eq!(lstat(&upper.join("secret")).mtime(), 1400);

        let home = lstat(&upper.join("home/u"));
        assert_eq!(
            (home.mode() & 0o7777, home.uid(), home.gid()),
            (0o700, 1000, 1000)
        );
        // An implied parent: root-owned 0755.
        assert_eq!(lstat(&upper.join("home")).mode() & 0o7777, 0o755);
        let notes = upper.join("home/u/notes");
        assert_eq!(xattr_of(&notes, "user.note").as_deref(), Some(&b"v1"[..]));
        assert_eq!(
            xattr_of(&notes, "trusted.cairn").as_deref(),
            Some(&b"t"[..])
        );
        assert_eq!(xattr_of(&notes, rootless_xattr::XATTR_NAME), None);
        assert_eq!(lstat(&notes).mtime(), 1700);

        let fifo = lstat(&upper.join("run/fifo"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);
        let null = lstat(&upper.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777),
            (nix::sys::stat::makedev(1, 3), 0o666)
        );
        let lp = lstat(&upper.join("dev/loop9"));
        assert!(lp.file_type().is_block_device());
        assert_eq!((lp.rdev(), lp.gid()), (nix::sys::stat::makedev(7, 9), 6));
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        // mknod of a 0/0 character device needs root or a user namespace.
        require_root!();
        for (xattrs, opaque) in [
            (OverlayXattrs::Trusted, "trusted.overlay.opaque"),
            (OverlayXattrs::User, "user.overlay.opaque"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let upper = dir.path();
            let tar = Tar::new()
                .whiteout("a/.wh.gone")
                .dir("b/", attrs(0o755, 0, 0, 5))
                .file("b/before", b"1", DEFAULT)
                .whiteout("b/.wh..wh..opq")
                .file("b/after", b"2", DEFAULT)
                .file("c/x", b"replaced by a whiteout", DEFAULT)
                .whiteout("c/.wh.x")
                .dir("d/sub/", DIR)
                .file("d/sub/f", b"", DEFAULT)
                .whiteout("d/.wh.sub")
                .whiteout(".wh..wh.plnk")
                .whiteout(".wh.top")
                .finish();
            let report = apply_with(&tar, upper, &[], xattrs).unwrap();
            assert_eq!(report.entries, 12);
            for gone in ["a/gone", "c/x", "d/sub", "top"] {
                let m = lstat(&upper.join(gone));
                assert!(m.file_type().is_char_device(), "{gone}");
                assert_eq!((m.rdev(), m.uid(), m.gid()), (0, 0, 0), "{gone}");
            }
            assert_eq!(
                xattr_of(&upper.join("b"), opaque).as_deref(),
                Some(&b"y"[..])
            );
            assert_eq!(xattr_of(&upper.join("a"), opaque), None);
            assert!(upper.join("b/before").exists() && upper.join("b/after").exists());
            assert!(!upper.join(".wh..wh.plnk").exists());
            assert!(!upper.join("plnk").exists());
            assert_eq!(lstat(&upper.join("b")).mtime(), 5);
        }
    }

    #[test]
    fn file_modes_survive_the_umask() {
        assert!(
            current_umask().is_some(),
            "/proc/self/status has no Umask line"
        );
        let dir = tempfile::tempdir().unwrap();
        let modes = [0o666, 0o777, 0o000, 0o444, 0o640, 0o4755, 0o2711, 0o1644];
        let mut tar = Tar::new();
        for m in modes {
            tar.file(&format!("f{m:o}"), b"x", attrs(m, 0, 0, 9));
        }
        let tar = tar.finish();
        apply(&tar, dir.path()).unwrap();
        for m in modes {
            let got = lstat(&dir.path().join(format!("f{m:o}")));
            assert_eq!(
                (got.mode() & 0o7777, got.mtime(), got.len()),
                (m, 9, 1),
                "{m:o}"
            );
        }
    }

    #[test]
    fn entries_replace_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        let tar = Tar::new()
            .file("f", b"file first", DEFAULT)
            .dir("f/", attrs(0o700, 0, 0, 7))
            .file("f/child", b"", DEFAULT)
            .dir("d/", DIR)
            .file("d/child", b"", DEFAULT)
            .dir("d/deeper/", DIR)
            .file("d", b"dir replaced", attrs(0o600, 0, 0, 8))
            .dir("m/", attrs(0o755, 0, 0, 1))
            .file("m/kept", b"", DEFAULT)
            .dir("m/", attrs(0o711, 0, 0, 2))
            .symlink("s", "/nowhere", DEFAULT)
            .file("s", b"symlink replaced", DEFAULT)
            .file("h1", b"x", DEFAULT)
            .hardlink("h2", "h1")
            .file("h2", b"unlinked", DEFAULT)
            .finish();
        apply(&tar, upper).unwrap();
        assert!(lstat(&upper.join("f")).is_dir());
        assert_eq!(lstat(&upper.join("f")).mode() & 0o7777, 0o700);
        assert_eq!(fs::read(upper.join("d")).unwrap(), b"dir replaced");
        assert_eq!(lstat(&upper.join("d")).mode() & 0o7777, 0o600);
        let m = lstat(&upper.join("m"));
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 2));
        assert!(upper.join("m/kept").exists(), "dir over dir keeps children");
        assert_eq!(fs::read(upper.join("s")).unwrap(), b"symlink replaced");
        assert_eq!(fs::read(upper.join("h1")).unwrap(), b"x");
        assert_eq!(lstat(&upper.join("h1")).nlink(), 1);
    }

    #[test]
    fn hard_links_to_lower_layers_copy_the_target_up() {
        require_root!();
        let dir = tempfile::tempdir().unwrap();
        let (base, middle, upper) = (
            dir.path().join("base"),
            dir.path().join("middle"),
            dir.path().join("upper"),
        );
        for d in [&base, &middle, &upper] {
            fs::create_dir(d).unwrap();
        }
        let tar = Tar::new()
            .dir("bin/", attrs(0o751, 3, 4, 50))
            .file_x(
                "bin/tool",
                b"#!tool",
                attrs(0o4750, 7, 8, 1234),
                &[("user.k", b"v")],
            )
            .file("bin/hidden", b"", DEFAULT)
            .dir("opq/", DIR)
            .file("opq/old", b"", DEFAULT)
            .dir("tmp/", attrs(0o1777, 0, 0, 60))
            .finish();
        apply(&tar, &base).unwrap();
        let tar = Tar::new()
            .whiteout("bin/.wh.hidden")
            .dir("opq/", DIR)
            .whiteout("opq/.wh..wh..opq")
            .finish();
        apply_with(
            &tar,
            &middle,
            std::slice::from_ref(&base),
            OverlayXattrs::Trusted,
        )
        .unwrap();

        let lowers = [middle.clone(), base.clone()];
        let tar = Tar::new()
            .hardlink("bin/tool2", "bin/tool")
            .whiteout("tmp/.wh.x")
            .finish();
        apply_with(&tar, &upper, &lowers, OverlayXattrs::Trusted).unwrap();
        let tool = lstat(&upper.join("bin/tool"));
        let tool2 = lstat(&upper.join("bin/tool2"));
        assert_eq!(tool.ino(), tool2.ino());
        assert_eq!(fs::read(upper.join("bin/tool")).unwrap(), b"#!tool");
        assert_eq!(
            (tool.mode() & 0o7777, tool.uid(), tool.gid(), tool.mtime()),
            (0o4750, 7, 8, 1234)
        );
        assert_eq!(
            xattr_of(&upper.join("bin/tool"), "user.k").as_deref(),
            Some(&b"v"[..])
        );
        // The implied parents took the metadata overlay shows from below (copy-up).
        let bin = lstat(&upper.join("bin"));
        assert_eq!(
            (bin.mode() & 0o7777, bin.uid(), bin.gid(), bin.mtime()),
            (0o751, 3, 4, 50)
        );
        let tmp = lstat(&upper.join("tmp"));
        assert_eq!((tmp.mode() & 0o7777, tmp.mtime()), (0o1777, 60));

        // Whited out in the middle layer, hidden by an opaque directory, or absent: no target.
        for (link, target) in [("x", "bin/hidden"), ("y", "opq/old"), ("z", "nope")] {
            let other = dir.path().join(format!("upper-{link}"));
            fs::create_dir(&other).unwrap();
            let tar = Tar::new().hardlink(link, target).finish();
            let err = apply_with(&tar, &other, &lowers, OverlayXattrs::Trusted).unwrap_err();
            assert!(
                matches!(err, ApplyError::LinkTargetMissing { .. }),
                "{target}: {err}"
            );
        }
        // A link to a directory is refused.
        let other = dir.path().join("upper-dir");
        fs::create_dir(&other).unwrap();
        let tar = Tar::new().hardlink("l", "bin").finish();
        let err = apply_with(&tar, &other, &lowers, OverlayXattrs::Trusted).unwrap_err();
        assert!(matches!(err, ApplyError::LinkToDirectory { .. }), "{err}");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn diff_id_is_the_uncompressed_stream_for_every_compression() {
        let mut tar = Tar::new()
            .dir("a/", DIR)
            .file("a/big", &vec![7u8; 3 * 1024 * 1024 + 11], DEFAULT)
            .file("a/small", b"s", DEFAULT)
            .finish();
        // Docker pads layers with extra zero blocks after the end-of-archive marker.
        tar.extend_from_slice(&[0u8; 10 * 1024]);
        let expected = Digest::sha256_of(&tar);
        let zstd_blob = zstd::stream::encode_all(&tar[..], 3).unwrap();
        // Two gzip members back to back are one stream (pigz, some registries).
        let (first, second) = tar.split_at(4096);
        let mut multi = gzip(first);
        multi.extend(gzip(second));
        for (compression, blob) in [
            (LayerCompression::None, tar.clone()),
            (LayerCompression::Gzip, gzip(&tar)),
            (LayerCompression::Gzip, multi),
            (LayerCompression::Zstd, zstd_blob),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let opts = ApplyOptions {
                xattrs: OverlayXattrs::Trusted,
                lowers: &[],
            };
            let report = apply_layer(&blob[..], compression, dir.path(), &opts).unwrap();
            assert_eq!(report.diff_id, expected, "{compression:?}");
            assert_eq!(report.bytes, tar.len() as u64);
            assert_eq!(
                fs::metadata(dir.path().join("a/big")).unwrap().len(),
                3 * 1024 * 1024 + 11
            );
        }
    }

    // ---- hostile layers ----

    /// Everything under `root` except `upper`, as comparable text: type, mode, owner, size,
    /// content, link target and xattrs of each entry.
    fn tree(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == skip {
                    continue;
                }
                let m = lstat(&path);
                let mut desc = format!(
                    "{:o} {}:{} {} mtime={}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len(),
                    m.mtime()
                );
                if m.is_file() {
                    desc += &format!(" {:?}", fs::read(&path).unwrap());
                }
                if m.file_type().is_symlink() {
                    desc += &format!(" -> {:?}", fs::read_link(&path).unwrap());
                }
                for name in xattr::list(&path).unwrap() {
                    desc += &format!(" {name:?}={:?}", xattr::get(&path, &name).unwrap());
                }
                if m.is_dir() {
                    stack.push(path.clone());
                }
                out.insert(path, desc);
            }
        }
        out
    }

    struct Hostile {
        _dir: tempfile::TempDir,
        root: PathBuf,
        upper: PathBuf,
        outside: PathBuf,
    }

    fn hostile_setup() -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let upper = root.join("upper");
        let outside = root.join("outside");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"do not touch").unwrap();
        fs::create_dir(outside.join("subdir")).unwrap();
        Hostile {
            _dir: dir,
            root,
            upper,
            outside,
        }
    }

    /// Applies the layer `build` makes for a fresh sandbox and checks that nothing outside the
    /// upper directory changed, and that no file there is a hard link to `/etc/passwd`. Returns
    /// the result and the sandbox.
    fn hostile(
        build: impl FnOnce(&Hostile) -> Vec<u8>,
        compression: LayerCompression,
        lowers: &[PathBuf],
    ) -> (Result<ApplyReport, ApplyError>, Hostile) {
        let h = hostile_setup();
        let blob = build(&h);
        let before = tree(&h.root, &h.upper);
        let opts = ApplyOptions {
            xattrs: OverlayXattrs::Trusted,
            lowers,
        };
        let result = apply_layer(&blob[..], compression, &h.upper, &opts);
        assert_eq!(
            tree(&h.root, &h.upper),
            before,
            "something outside the upper directory changed"
        );
        // (Compared by inode rather than by a before/after snapshot: other processes on this
        // machine may rewrite /etc/passwd meanwhile, useradd does.)
        let passwd = lstat(Path::new("/etc/passwd"));
        assert_eq!(passwd.nlink(), 1, "/etc/passwd gained a link");
        let mut stack = vec![h.upper.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let m = lstat(&path);
                assert!(
                    (m.dev(), m.ino()) != (passwd.dev(), passwd.ino()),
                    "{} is linked to /etc/passwd",
                    path.display()
                );
                if m.is_dir() {
                    stack.push(path);
                }
            }
        }
        (result, h)
    }

    fn expect_err(
        name: &str,
        result: Result<ApplyReport, ApplyError>,
        pred: impl Fn(&ApplyError) -> bool,
    ) {
        match result {
            Ok(report) => panic!("{name}: applied without error: {report:?}"),
            Err(e) => {
                assert!(pred(&e), "{name}: unexpected error {e:?}");
                assert!(
                    e.is_layer_fault(),
                    "{name}: {e} should be the layer's fault"
                );
                let text = e.to_string();
                assert_eq!(text, text.trim_end_matches('.'));
                eprintln!("{name}: {text}");
            }
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        let abs = format!("/cairn-hostile-{}/file", std::process::id());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dot-dot",
                Tar::new().file("../escape", b"x", DEFAULT).finish(),
            ),
            ("absolute", Tar::new().file(&abs, b"x", DEFAULT).finish()),
            (
                "inner dot-dot",
                Tar::new().file("a/../../x", b"x", DEFAULT).finish(),
            ),
            (
                "trailing dot-dot",
                Tar::new().dir("a/b/../..", DIR).finish(),
            ),
            (
                "dot-dot symlink name",
                Tar::new()
                    .symlink("../link", "/etc/passwd", DEFAULT)
                    .finish(),
            ),
        ];
        for (name, tar) in cases {
            let (result, _h) = hostile(|_| tar.to_vec(), LayerCompression::None, &[]);
            expect_err(name, result, |e| matches!(e, ApplyError::UnsafePath { .. }));
        }
        assert!(!Path::new(&abs).parent().unwrap().exists());
    }

    #[test]
    fn hostile_symlinks_in_parents_are_refused() {
        // Each case gets the absolute path of its sandbox's `outside` directory.
        type Build = fn(&str) -> Vec<u8>;
        let cases: Vec<(&str, Build)> = vec![
            ("symlink to outside then a file through it", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .file("evil/file", b"x", DEFAULT)
                    .finish()
            }),
            ("symlink to .. then a file through it", |_| {
                Tar::new()
                    .symlink("evil", "..", DEFAULT)
                    .file("evil/x", b"x", DEFAULT)
                    .finish()
            }),
            ("symlink to outside then a directory through it", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .dir("evil/newdir/", DIR)
                    .finish()
            }),
            ("symlink to outside then a symlink through it", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .symlink("evil/sentinel", "/x", DEFAULT)
                    .finish()
            }),
            ("symlink to outside then a fifo through it", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .device(tar::EntryType::Fifo, "evil/fifo", (0, 0), DEFAULT)
                    .finish()
            }),
            (
                "symlink to outside then a hard link placed through it",
                |out| {
                    Tar::new()
                        .file("a", b"", DEFAULT)
                        .symlink("evil", out, DEFAULT)
                        .hardlink("evil/link", "a")
                        .finish()
                },
            ),
            ("whiteout through a symlinked parent", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .whiteout("evil/.wh.sentinel")
                    .finish()
            }),
            ("opaque marker through a symlinked parent", |out| {
                Tar::new()
                    .symlink("evil", out, DEFAULT)
                    .whiteout("evil/.wh..wh..opq")
                    .finish()
            }),
            ("dir replaced by a symlink, then written through", |out| {
                Tar::new()
                    .dir("d/", attrs(0o700, 0, 0, 1))
                    .file("d/f", b"", DEFAULT)
                    .symlink("d", out, DEFAULT)
                    .file("d/g", b"x", DEFAULT)
                    .finish()
            }),
            ("relative symlink climbing out, deep", |_| {
                Tar::new()
                    .dir("a/b/", DIR)
                    .symlink("a/b/c", "../../../outside", DEFAULT)
                    .file("a/b/c/subdir/x", b"x", DEFAULT)
                    .finish()
            }),
        ];
        for (name, build) in cases {
            let (result, _h) = hostile(
                |h| build(h.outside.to_str().unwrap()),
                LayerCompression::None,
                &[],
            );
            expect_err(name, result, |e| {
                matches!(e, ApplyError::ThroughSymlink { .. })
            });
        }
    }

    #[test]
    fn hostile_hard_links_are_refused() {
        type Check = fn(&ApplyError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            (
                "link to ../../etc/passwd",
                Tar::new().hardlink("h", "../../etc/passwd").finish(),
                |e| matches!(e, ApplyError::UnsafeLinkTarget { .. }),
            ),
            (
                "link to /etc/passwd",
                Tar::new().hardlink("h", "/etc/passwd").finish(),
                |e| matches!(e, ApplyError::UnsafeLinkTarget { .. }),
            ),
            (
                "link through a symlinked directory",
                Tar::new()
                    .symlink("ln", "../outside", DEFAULT)
                    .hardlink("h", "ln/sentinel")
                    .finish(),
                |e| matches!(e, ApplyError::LinkThroughSymlink { .. }),
            ),
            (
                "link through an absolute symlink to /etc",
                Tar::new()
                    .symlink("etc", "/etc", DEFAULT)
                    .hardlink("h", "etc/passwd")
                    .finish(),
                |e| matches!(e, ApplyError::LinkThroughSymlink { .. }),
            ),
            (
                "link to itself",
                Tar::new().hardlink("h", "./h").finish(),
                |e| matches!(e, ApplyError::UnsafeLinkTarget { .. }),
            ),
            (
                "link to the root",
                Tar::new().hardlink("h", "./").finish(),
                |e| matches!(e, ApplyError::UnsafeLinkTarget { .. }),
            ),
        ];
        for (name, tar, pred) in cases {
            let (result, _h) = hostile(|_| tar.to_vec(), LayerCompression::None, &[]);
            expect_err(name, result, pred);
        }

        // A symlink planted in a lower layer is no way out either.
        let lower_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", lower_dir.path().join("lib")).unwrap();
        let lowers = [lower_dir.path().to_path_buf()];
        let tar = Tar::new().hardlink("h", "lib/passwd").finish();
        let (result, h) = hostile(|_| tar.to_vec(), LayerCompression::None, &lowers);
        expect_err("link through a symlink in a lower layer", result, |e| {
            matches!(e, ApplyError::LinkThroughSymlink { .. })
        });
        assert!(!h.upper.join("lib").exists());
    }

    #[test]
    fn hostile_whiteouts_are_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("whiteout of ..", Tar::new().whiteout(".wh...").finish()),
            (
                "whiteout of . in a directory",
                Tar::new().whiteout("dir/.wh..").finish(),
            ),
            (
                "whiteout with an empty name",
                Tar::new().whiteout("dir/.wh.").finish(),
            ),
        ];
        for (name, tar) in cases {
            let (result, _h) = hostile(|_| tar.to_vec(), LayerCompression::None, &[]);
            expect_err(name, result, |e| {
                matches!(e, ApplyError::InvalidWhiteout { .. })
            });
        }
    }

    #[test]
    fn hostile_overlay_xattrs_are_stripped() {
        let tar = Tar::new()
            .raw(
                tar::EntryType::Directory,
                b"d/",
                b"",
                b"",
                DIR,
                &[
                    ("trusted.overlay.opaque", b"y"),
                    ("user.overlay.opaque", b"y"),
                    ("trusted.overlay.redirect", b"/etc"),
                    ("user.kept", b"1"),
                ],
                (0, 0),
            )
            .file_x(
                "d/f",
                b"",
                DEFAULT,
                &[
                    ("trusted.overlay.metacopy", b""),
                    ("user.overlay.origin", b"x"),
                ],
            )
            .finish();
        let (result, h) = hostile(|_| tar.to_vec(), LayerCompression::None, &[]);
        result.unwrap();
        for path in [h.upper.join("d"), h.upper.join("d/f")] {
            let names: Vec<OsString> = xattr::list(&path).unwrap().collect();
            assert!(
                names.iter().all(|n| !is_overlay_xattr(n.as_bytes())),
                "{}: {names:?}",
                path.display()
            );
        }
        assert_eq!(
            xattr_of(&h.upper.join("d"), "user.kept").as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn hostile_streams_are_refused() {
        let tar = Tar::new()
            .file("a", &vec![1u8; 100_000], DEFAULT)
            .file("b", &vec![2u8; 100_000], DEFAULT)
            .finish();

        let gz = gzip(&tar);
        let (result, _h) = hostile(|_| gz[..gz.len() / 2].to_vec(), LayerCompression::Gzip, &[]);
        expect_err("truncated gzip", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });
        let (result, _h) = hostile(|_| gz[..gz.len() - 4].to_vec(), LayerCompression::Gzip, &[]);
        expect_err("gzip without its size trailer", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });
        let mut corrupt = gz.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        let (result, _h) = hostile(|_| corrupt.to_vec(), LayerCompression::Gzip, &[]);
        expect_err("corrupt gzip", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });

        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let (result, _h) = hostile(
            |_| zst[..zst.len() / 2].to_vec(),
            LayerCompression::Zstd,
            &[],
        );
        expect_err("truncated zstd", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });

        let (result, _h) = hostile(|_| tar[..150_000].to_vec(), LayerCompression::None, &[]);
        expect_err("tar truncated inside a file", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });

        let mut bad_checksum = tar.clone();
        bad_checksum[0] ^= 1;
        let (result, _h) = hostile(|_| bad_checksum.to_vec(), LayerCompression::None, &[]);
        expect_err("header checksum mismatch", result, |e| {
            matches!(e, ApplyError::Stream { .. })
        });

        let volume = Tar::new()
            .raw(
                tar::EntryType::new(b'V'),
                b"label",
                b"",
                b"",
                DEFAULT,
                &[],
                (0, 0),
            )
            .finish();
        let (result, _h) = hostile(|_| volume.to_vec(), LayerCompression::None, &[]);
        expect_err("tape volume header", result, |e| {
            matches!(e, ApplyError::UnsupportedType { kind: b'V', .. })
        });

        let root_symlink = Tar::new().symlink("./", "/", DEFAULT).finish();
        let (result, _h) = hostile(|_| root_symlink.to_vec(), LayerCompression::None, &[]);
        expect_err("root replaced by a symlink", result, |e| {
            matches!(e, ApplyError::UnsafePath { .. })
        });
    }

    #[test]
    fn hostile_directories_over_symlinks_replace_them() {
        // A directory entry where a symlink stands replaces the symlink: its mode and mtime must
        // not land on the symlink's target, neither now nor when directory modes are applied.
        let tar = Tar::new()
            .symlink("evil", "../outside", DEFAULT)
            .dir("evil/", attrs(0o777, 0, 0, 1))
            .file("evil/sentinel", b"new", DEFAULT)
            .symlink("abs", "/", DEFAULT)
            .dir("abs/", attrs(0o700, 0, 0, 1))
            .finish();
        let (result, h) = hostile(|_| tar.to_vec(), LayerCompression::None, &[]);
        result.unwrap();
        assert!(lstat(&h.upper.join("evil")).is_dir());
        assert_eq!(fs::read(h.upper.join("evil/sentinel")).unwrap(), b"new");
        assert_eq!(lstat(&h.upper.join("abs")).mode() & 0o7777, 0o700);
        assert_ne!(lstat(Path::new("/")).mode() & 0o7777, 0o700);
    }

    // ---- rootless ----

    const USERNS_CHILD: &str = "CAIRN_SNAPSHOT_TEST_IN_USERNS";

    /// Runs one test of this binary again inside `unshare --user --map-root-user --mount`, where
    /// only the caller's id is mapped: the setting of rootless CI runners. Returns false (after
    /// saying so) when user namespaces are unavailable.
    pub(crate) fn run_in_user_namespace(test: &str) -> bool {
        let probe = Command::new("unshare")
            .args(["-U", "-r", "-m", "true"])
            .status();
        if !matches!(probe, Ok(status) if status.success()) {
            eprintln!("SKIPPED: cannot create a user namespace with `unshare -U -r -m`");
            return false;
        }
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("unshare")
            .args(["-U", "-r", "-m"])
            .arg(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(USERNS_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "in the user namespace:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "the test did not run:\n{stdout}\n{stderr}"
        );
        true
    }

    pub(crate) fn in_child() -> bool {
        std::env::var_os(USERNS_CHILD).is_some()
    }

    #[test]
    fn rootless_apply_in_user_namespace() {
        if !in_child() {
            run_in_user_namespace("apply::tests::rootless_apply_in_user_namespace");
            return;
        }
        assert!(in_user_namespace());
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        let kept = Resource { uid: 42, gid: 43 }.encode();
        let tar = Tar::new()
            .dir("home/", attrs(0o755, 0, 0, 10))
            .dir("home/user/", attrs(0o700, 1000, 1000, 11))
            .file("home/user/f", b"x", attrs(0o4755, 1000, 1000, 12))
            .symlink("home/user/link", "f", attrs(0o777, 1000, 1000, 13))
            .file("g", b"", attrs(0o640, 0, 5, 14))
            .file_x(
                "keep",
                b"",
                attrs(0o644, 7, 7, 15),
                &[
                    (rootless_xattr::XATTR_NAME, &kept),
                    ("trusted.dropped", b"1"),
                ],
            )
            .device(
                tar::EntryType::Char,
                "dev/null",
                (1, 3),
                attrs(0o666, 0, 0, 16),
            )
            .device(
                tar::EntryType::Fifo,
                "dev/fifo",
                (0, 0),
                attrs(0o600, 1000, 0, 16),
            )
            .whiteout("gone/.wh.x")
            .dir("o/", DIR)
            .whiteout("o/.wh..wh..opq")
            .finish();
        let report = apply_with(&tar, upper, &[], OverlayXattrs::User).unwrap();
        assert_eq!(report.skipped_devices, [PathBuf::from("dev/null")]);
        // home/user, home/user/f, home/user/link, g, keep, dev/fifo.
        assert_eq!(report.squashed_owners, 6);

        let record = |p: &str| {
            xattr_of(&upper.join(p), rootless_xattr::XATTR_NAME)
                .map(|v| Resource::decode(&v).unwrap())
        };
        let user = Some(Resource {
            uid: 1000,
            gid: 1000,
        });
        assert_eq!(record("home/user"), user);
        assert_eq!(record("home/user/f"), user);
        assert_eq!(
            record("g"),
            Some(Resource {
                uid: rootless_xattr::NOOP_ID,
                gid: 5
            })
        );
        assert_eq!(
            record("keep"),
            Some(Resource { uid: 42, gid: 43 }),
            "the layer's own record is kept"
        );
        assert_eq!(record("home"), None);
        assert_eq!(record("dev/fifo"), None, "fifos cannot carry user.* xattrs");
        assert_eq!(
            xattr::list(upper.join("home/user/link")).unwrap().count(),
            0
        );
        for p in ["home/user", "home/user/f", "home/user/link", "g", "keep"] {
            let m = lstat(&upper.join(p));
            assert_eq!((m.uid(), m.gid()), (0, 0), "{p} belongs to the caller");
        }
        assert_eq!(lstat(&upper.join("home/user/f")).mode() & 0o7777, 0o4755);
        assert_eq!(lstat(&upper.join("home/user")).mode() & 0o7777, 0o700);
        assert_eq!(lstat(&upper.join("home/user/link")).mtime(), 13);
        // The device became an empty placeholder file with the device's mode.
        let null = lstat(&upper.join("dev/null"));
        assert!(
            null.file_type().is_file() && null.len() == 0,
            "dev/null placeholder"
        );
        let gone = lstat(&upper.join("gone/x"));
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert_eq!(
            xattr_of(&upper.join("o"), "user.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(xattr_of(&upper.join("keep"), "trusted.dropped"), None);
    }

    /// Applies the tar named by `CAIRN_APPLY_BENCH_TAR` and prints the time taken:
    /// `CAIRN_APPLY_BENCH_TAR=/tmp/usr.tar cargo test -p cairn-snapshot --release -- --ignored bench --nocapture`
    #[test]
    #[ignore = "benchmark; needs CAIRN_APPLY_BENCH_TAR"]
    fn bench_apply_large_tar() {
        let Some(path) = std::env::var_os("CAIRN_APPLY_BENCH_TAR") else {
            eprintln!("SKIPPED: set CAIRN_APPLY_BENCH_TAR to a tar file");
            return;
        };
        let compression = match Path::new(&path).extension().and_then(OsStr::to_str) {
            Some("gz") => LayerCompression::Gzip,
            Some("zst") => LayerCompression::Zstd,
            _ => LayerCompression::None,
        };
        let dir = tempfile::tempdir_in(
            std::env::var_os("CAIRN_APPLY_BENCH_DIR").unwrap_or_else(|| "/tmp".into()),
        )
        .unwrap();
        let blob = io::BufReader::with_capacity(1 << 20, File::open(&path).unwrap());
        let opts = ApplyOptions {
            xattrs: OverlayXattrs::Trusted,
            lowers: &[],
        };
        let start = std::time::Instant::now();
        let report = apply_layer(blob, compression, dir.path(), &opts).unwrap();
        let elapsed = start.elapsed();
        eprintln!(
            "applied {} entries, {} MB uncompressed in {:.2?} ({:.0} MB/s), diff id {}",
            report.entries,
            report.bytes / 1_000_000,
            elapsed,
            report.bytes as f64 / 1e6 / elapsed.as_secs_f64(),
            report.diff_id
        );
    }
}
