//! Writing the merged view of a snapshot chain as a plain directory, without mounting anything.
//!
//! This is what `cairn export` (and `umoci unpack`) produce: the filesystem a container would see
//! through the overlay, as ordinary files. Layers are copied bottom to top onto the destination,
//! reading overlay's markers the way the kernel does:
//!
//! - a character device 0/0 is a whiteout: whatever lower layers put at that path is removed;
//! - a directory with `{trusted,user}.overlay.opaque = "y"` hides the lower layers' contents of
//!   that directory: the destination directory is emptied before this layer's children go in;
//! - anything else replaces what is at its path, except that a directory over a directory merges.
//!
//! Hard links inside one layer stay hard links. Directory modes and mtimes are set last, children
//! first, so read-only directories can be filled and their mtimes survive.
//!
//! With [`ExportOwnership::Caller`] nothing is chowned: every file belongs to the caller, and a file
//! whose source owner is not root records it in `user.rootlesscontainers`, which is the layout
//! `umoci unpack --rootless` produces and `umoci repack --rootless` reads back. Owners are the
//! ids as the calling process sees them, so run it in the user namespace that applied the layers.
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use cairn_snapshot::apply::OverlayXattrs;
//! use cairn_snapshot::flatten::{flatten, ExportOwnership, FlattenOptions};
//!
//! let layers: Vec<PathBuf> = ["1", "2", "3"]
//!     .iter()
//!     .map(|id| Path::new("/var/lib/cairn/snapshots").join(id).join("fs"))
//!     .collect();
//! let opts = FlattenOptions { xattrs: OverlayXattrs::Trusted, ownership: ExportOwnership::Exact };
//! let report = flatten(&layers, Path::new("/tmp/rootfs"), &opts)?;
//! println!("{} files, {} bytes", report.files, report.bytes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use xattr::FileExt as _;

use crate::apply::{is_overlay_xattr, OverlayXattrs};
use crate::rootless_xattr::{self, Resource};

/// Who owns the exported files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportOwnership {
    /// Every file gets its source owner (needs the privilege to chown to it).
    Exact,
    /// rootless export: every file owned by the caller, original owner recorded in user.rootlesscontainers (umoci --rootless layout)
    Caller,
}

/// How to flatten.
#[derive(Debug, Clone, Copy)]
pub struct FlattenOptions {
    /// Which overlay attributes mark opaque directories in the layers.
    pub xattrs: OverlayXattrs,
    /// Who owns the exported files.
    pub ownership: ExportOwnership,
}

/// What flattening wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlattenReport {
    /// Non-directories written (files, symlinks, hard links, special files), counting files that
    /// a higher layer later replaced.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Bytes of regular file content copied.
    pub bytes: u64,
    /// Device nodes that could not be created (no `CAP_MKNOD`).
    pub skipped_devices: Vec<PathBuf>,
    /// Files given a `user.rootlesscontainers` record ([`ExportOwnership::Caller`]).
    pub recorded_owners: u64,
}

/// Why a chain could not be flattened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlattenError {
    /// The destination exists and is not an empty directory.
    #[error("export destination {dest} exists and is not an empty directory")]
    DestinationNotEmpty {
        /// The destination.
        dest: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path at fault (in a layer or in the destination).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'p, E: Into<io::Error>>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(E) -> FlattenError + 'p {
    move |e| FlattenError::Io {
        op,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Merges `layers_bottom_first` (overlay layer directories, the base first) into `dest`, which
/// must not exist (its parent must) or be an empty directory.
pub fn flatten(
    layers_bottom_first: &[PathBuf],
    dest: &Path,
    opts: &FlattenOptions,
) -> Result<FlattenReport, FlattenError> {
    let span =
        tracing::debug_span!("flatten", dest = %dest.display(), layers = layers_bottom_first.len());
    let _guard = span.enter();

    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(dest).map_err(io_err("create", dest))?;
        }
        Err(e) => return Err(io_err("stat", dest)(e)),
        Ok(meta) => {
            let empty = meta.is_dir()
                && fs::read_dir(dest)
                    .map_err(io_err("read directory", dest))?
                    .next()
                    .is_none();
            if !empty {
                return Err(FlattenError::DestinationNotEmpty {
                    dest: dest.to_owned(),
                });
            }
        }
    }

    let mut flattener = Flattener {
        dest,
        opaque_name: opts.xattrs.opaque_name(),
        ownership: opts.ownership,
        dirs: BTreeMap::new(),
        links: HashMap::new(),
        warned_xattrs: HashSet::new(),
        report: FlattenReport::default(),
    };
    for layer in layers_bottom_first {
        flattener.links.clear();
        let root = fs::symlink_metadata(layer).map_err(io_err("stat layer", layer))?;
        if flattener.is_opaque(layer) {
            flattener.clear_dir(Path::new(""))?;
        }
        flattener.dir_metadata(layer, &root, Path::new(""), true)?;
        flattener.copy_children(layer, Path::new(""))?;
    }
    flattener.finish()?;
    tracing::debug!(
        files = flattener.report.files,
        dirs = flattener.report.dirs,
        bytes = flattener.report.bytes,
        "chain flattened"
    );
    Ok(flattener.report)
}

struct DirMeta {
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

struct Flattener<'a> {
    dest: &'a Path,
    opaque_name: &'static str,
    ownership: ExportOwnership,
    /// Directory modes and times for the end, the topmost layer's winning.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// (dev, ino) of multiply-linked files of the current layer → first destination path.
    links: HashMap<(u64, u64), PathBuf>,
    warned_xattrs: HashSet<OsString>,
    report: FlattenReport,
}

impl Flattener<'_> {
    fn is_opaque(&self, path: &Path) -> bool {
        matches!(xattr::get(path, self.opaque_name), Ok(Some(v)) if v == b"y")
    }

    fn copy_children(&mut self, layer: &Path, rel: &Path) -> Result<(), FlattenError> {
        let src_dir = layer.join(rel);
        let mut names: Vec<OsString> = Vec::new();
        for entry in fs::read_dir(&src_dir).map_err(io_err("read directory", &src_dir))? {
            names.push(
                entry
                    .map_err(io_err("read directory", &src_dir))?
                    .file_name(),
            );
        }
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let src = layer.join(&child);
            let meta = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
            let file_type = meta.file_type();
            if file_type.is_char_device() && meta.rdev() == 0 {
                self.remove(&child)?;
            } else if file_type.is_dir() {
                let dst = self.dest.join(&child);
                let existing = match fs::symlink_metadata(&dst) {
                    Ok(m) => Some(m.is_dir()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_err("stat", &dst)(e)),
                };
                let merge = match existing {
                    Some(true) => {
                        if self.is_opaque(&src) {
                            self.clear_dir(&child)?;
                        }
                        true
                    }
                    Some(false) => {
                        fs::remove_file(&dst).map_err(io_err("remove", &dst))?;
                        false
                    }
                    None => false,
                };
                if !merge {
                    fs::create_dir(&dst).map_err(io_err("create directory", &dst))?;
                    self.report.dirs += 1;
                }
                self.dir_metadata(&src, &meta, &child, merge)?;
                self.copy_children(layer, &child)?;
            } else {
                self.remove(&child)?;
                self.copy_non_dir(&src, &meta, &child)?;
            }
        }
        Ok(())
    }

    /// Removes whatever the destination has at `rel`.
    fn remove(&mut self, rel: &Path) -> Result<(), FlattenError> {
        let dst = self.dest.join(rel);
        match fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", &dst)(e)),
            Ok(meta) if meta.is_dir() => {
                fs::remove_dir_all(&dst).map_err(io_err("remove directory", &dst))?;
                self.forget_dirs_under(rel);
                Ok(())
            }
            Ok(_) => fs::remove_file(&dst).map_err(io_err("remove", &dst)),
        }
    }

    /// Empties the destination directory at `rel` (an opaque directory hides what is below).
    fn clear_dir(&mut self, rel: &Path) -> Result<(), FlattenError> {
        let dst = self.dest.join(rel);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dst).map_err(io_err("read directory", &dst))? {
            names.push(entry.map_err(io_err("read directory", &dst))?.file_name());
        }
        for name in names {
            self.remove(&rel.join(name))?;
        }
        Ok(())
    }

    fn forget_dirs_under(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .dirs
            .range(rel.to_path_buf()..)
            .take_while(|(key, _)| key.starts_with(rel))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.dirs.remove(&key);
        }
    }

    /// Owner and xattrs of a destination directory now, mode and times at the end. A directory
    /// that merges over one from a lower layer takes this layer's attributes, as overlay shows.
    fn dir_metadata(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        rel: &Path,
        merge: bool,
    ) -> Result<(), FlattenError> {
        let dst = self.dest.join(rel);
        if merge {
            let stale = xattr::list(&dst).map_err(io_err("list xattrs", &dst))?;
            for name in stale {
                if !is_overlay_xattr(name.as_bytes()) {
                    xattr::remove(&dst, &name).map_err(io_err("remove xattr", &dst))?;
                }
            }
        }
        let target = Target {
            file: None,
            path: &dst,
        };
        self.owner_and_xattrs(src, meta, &target, true)?;
        self.dirs.insert(
            rel.to_owned(),
            DirMeta {
                mode: meta.mode() & 0o7777,
                atime: TimeSpec::new(meta.atime(), meta.atime_nsec()),
                mtime: TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
            },
        );
        Ok(())
    }

    fn copy_non_dir(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        rel: &Path,
    ) -> Result<(), FlattenError> {
        let dst = self.dest.join(rel);
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                let first = self.dest.join(first);
                fs::hard_link(&first, &dst).map_err(io_err("hard link", &dst))?;
                self.report.files += 1;
                return Ok(());
            }
        }
        let file_type = meta.file_type();
        let times = (
            TimeSpec::new(meta.atime(), meta.atime_nsec()),
            TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        );
        if file_type.is_file() {
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(src)
                .map_err(io_err("open", src))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&dst)
                .map_err(io_err("create", &dst))?;
            // copy_file_range underneath: reflinks where the filesystem can.
            self.report.bytes += io::copy(&mut from, &mut to).map_err(io_err("copy", &dst))?;
            let target = Target {
                file: Some(&to),
                path: &dst,
            };
            self.owner(meta, &target)?;
            to.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("chmod", &dst))?;
            self.xattrs(src, meta, &target, true)?;
            nix::sys::stat::futimens(&to, &times.0, &times.1).map_err(io_err("set times", &dst))?;
        } else {
            if file_type.is_symlink() {
                let link = fs::read_link(src).map_err(io_err("read symlink", src))?;
                std::os::unix::fs::symlink(&link, &dst).map_err(io_err("create symlink", &dst))?;
            } else {
                let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
                let perm = Mode::from_bits_truncate(meta.mode() & 0o777);
                match nix::sys::stat::mknod(&dst, kind, perm, meta.rdev()) {
                    Ok(()) => {}
                    Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                        tracing::debug!(path = %rel.display(), "cannot create device node, skipping it");
                        self.report.skipped_devices.push(rel.to_owned());
                        return Ok(());
                    }
                    Err(e) => return Err(io_err("create special file", &dst)(e)),
                }
            }
            let target = Target {
                file: None,
                path: &dst,
            };
            self.owner(meta, &target)?;
            if !file_type.is_symlink() {
                // A device node or fifo we just made: chmod cannot be redirected.
                fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                    .map_err(io_err("chmod", &dst))?;
            }
            self.xattrs(src, meta, &target, false)?;
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &dst,
                &times.0,
                &times.1,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io_err("set times", &dst))?;
        }
        if meta.nlink() > 1 {
            self.links.insert(key, rel.to_owned());
        }
        self.report.files += 1;
        Ok(())
    }

    fn owner_and_xattrs(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        target: &Target<'_>,
        user_xattrs_ok: bool,
    ) -> Result<(), FlattenError> {
        self.owner(meta, target)?;
        self.xattrs(src, meta, target, user_xattrs_ok)
    }

    fn owner(&mut self, meta: &fs::Metadata, target: &Target<'_>) -> Result<(), FlattenError> {
        if self.ownership != ExportOwnership::Exact {
            return Ok(());
        }
        let (uid, gid) = (
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
        );
        match target.file {
            Some(file) => nix::unistd::fchown(file, uid, gid),
            None => nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                target.path,
                uid,
                gid,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
        }
        .map_err(io_err("chown", target.path))
    }

    /// Copies the source's xattrs (not overlay's own) and, in [`ExportOwnership::Caller`] mode,
    /// records a non-root source owner unless the source already carries a record.
    fn xattrs(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        target: &Target<'_>,
        user_xattrs_ok: bool,
    ) -> Result<(), FlattenError> {
        let mut has_record = false;
        for name in xattr::list(src).map_err(io_err("list xattrs", src))? {
            if is_overlay_xattr(name.as_bytes()) {
                continue;
            }
            has_record |= name.as_bytes() == rootless_xattr::XATTR_NAME.as_bytes();
            if let Some(value) = xattr::get(src, &name).map_err(io_err("read xattr", src))? {
                self.set_xattr(target, &name, &value)?;
            }
        }
        if self.ownership == ExportOwnership::Caller && user_xattrs_ok && !has_record {
            if let Some(resource) = Resource::for_owner(meta.uid(), meta.gid()) {
                self.set_xattr(
                    target,
                    OsStr::new(rootless_xattr::XATTR_NAME),
                    &resource.encode(),
                )?;
                self.report.recorded_owners += 1;
            }
        }
        Ok(())
    }

    fn set_xattr(
        &mut self,
        target: &Target<'_>,
        name: &OsStr,
        value: &[u8],
    ) -> Result<(), FlattenError> {
        let result = match target.file {
            Some(file) => file.set_xattr(name, value),
            None => xattr::set(target.path, name, value),
        };
        let Err(e) = result else { return Ok(()) };
        match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            Errno::EPERM | Errno::EACCES | Errno::ENOTSUP => {
                if self.warned_xattrs.insert(name.to_owned()) {
                    tracing::warn!(
                        path = %target.path.display(),
                        xattr = %name.to_string_lossy(),
                        error = %e,
                        "cannot set extended attribute, dropping it (further ones of this name are dropped silently)"
                    );
                }
                Ok(())
            }
            _ => Err(io_err("set xattr", target.path)(e)),
        }
    }

    fn finish(&mut self) -> Result<(), FlattenError> {
        for (rel, meta) in self.dirs.iter().rev() {
            let dst = self.dest.join(rel);
            match fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode))
                .map_err(io_err("chmod", &dst))?;
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &dst,
                &meta.atime,
                &meta.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io_err("set times", &dst))?;
        }
        Ok(())
    }
}

/// A destination inode: by open file, or by path (never followed).
struct Target<'f> {
    file: Option<&'f File>,
    path: &'f Path,
}
