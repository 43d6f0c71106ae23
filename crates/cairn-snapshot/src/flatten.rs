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
    /// `user.rootlesscontainers` records written ([`ExportOwnership::Caller`]); a path that a
    /// higher layer writes again counts again.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::{
        apply_with, attrs, in_child, is_root, run_in_user_namespace, Tar, DEFAULT, DIR,
    };
    use std::process::Command;

    fn lstat(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// What a reader of the merged tree sees: one line per path, and hard link groups.
    fn view(root: &Path) -> (BTreeMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let rel = rel.join(entry.unwrap().file_name());
                let path = root.join(&rel);
                let m = lstat(&path);
                let ft = m.file_type();
                let mut desc = format!(
                    "{:o} {}:{} mtime={}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.mtime()
                );
                if ft.is_dir() {
                    desc.insert_str(0, "dir ");
                    stack.push(rel.clone());
                } else if ft.is_symlink() {
                    desc = format!(
                        "symlink -> {:?} {}:{}",
                        fs::read_link(&path).unwrap(),
                        m.uid(),
                        m.gid()
                    );
                } else if ft.is_file() {
                    desc = format!(
                        "file {desc} nlink={} {:?}",
                        m.nlink(),
                        String::from_utf8_lossy(&fs::read(&path).unwrap())
                    );
                    if m.nlink() > 1 {
                        inodes.entry(m.ino()).or_default().push(rel.clone());
                    }
                } else {
                    desc = format!("special {:o} rdev={} {desc}", m.mode(), m.rdev());
                }
                let mut names: Vec<OsString> = xattr::list(&path)
                    .unwrap()
                    .filter(|n| !is_overlay_xattr(n.as_bytes()))
                    .collect();
                names.sort();
                for name in names {
                    desc += &format!(
                        " {}={:?}",
                        name.to_string_lossy(),
                        xattr::get(&path, &name).unwrap().unwrap()
                    );
                }
                out.insert(rel, desc);
            }
        }
        let mut groups: Vec<Vec<PathBuf>> = inodes
            .into_values()
            .map(|mut g| {
                g.sort();
                g
            })
            .collect();
        groups.sort();
        (out, groups)
    }

    /// Three layers exercising whiteouts, opaque directories, type changes and hard links,
    /// applied as a snapshotter would; returns the layer directories bottom first.
    fn chain(base: &Path, xattrs: OverlayXattrs) -> Vec<PathBuf> {
        let layers: Vec<PathBuf> = (1..=3).map(|i| base.join(format!("l{i}"))).collect();
        for l in &layers {
            fs::create_dir(l).unwrap();
        }
        let l1 = Tar::new()
            .dir("a/", attrs(0o755, 0, 0, 10))
            .file("a/f1", b"one", DEFAULT)
            .file("a/f2", b"two", attrs(0o640, 1000, 1000, 11))
            .dir("b/", DIR)
            .file("b/x", b"x", DEFAULT)
            .dir("c/", DIR)
            .file("c/keep", b"hidden by opaque", DEFAULT)
            .dir("c/sub/", DIR)
            .file("c/sub/deep", b"", DEFAULT)
            .file("d", b"file d", DEFAULT)
            .file("link1", b"L", attrs(0o4755, 0, 0, 12))
            .hardlink("link2", "link1")
            .dir("e/", attrs(0o700, 1000, 0, 20))
            .file("e/old", b"old", DEFAULT)
            .symlink("s", "a", DEFAULT)
            .dir("ro/", attrs(0o555, 0, 0, 13))
            .file("ro/f", b"ro", attrs(0o444, 0, 0, 14))
            .file_x("x", b"", attrs(0o644, 0, 0, 15), &[("user.one", b"1")])
            .finish();
        let l2 = Tar::new()
            .whiteout("a/.wh.f1")
            .dir("c/", attrs(0o711, 0, 0, 21))
            .whiteout("c/.wh..wh..opq")
            .file("c/new", b"new", DEFAULT)
            .dir("d/", DIR)
            .file("d/inner", b"", DEFAULT)
            .symlink("b", "a", DEFAULT)
            .file("s", b"was a symlink", attrs(0o600, 0, 0, 22))
            .finish();
        let l3 = Tar::new()
            .file("a/f3", b"three", DEFAULT)
            .hardlink("a/f2link", "a/f2")
            .whiteout(".wh.d")
            .dir("e/", attrs(0o750, 1000, 0, 30))
            .file("e/g", b"g", attrs(0o600, 1234, 5678, 31))
            .file_x(
                "e/recorded",
                b"",
                attrs(0o644, 9, 9, 32),
                &[(
                    rootless_xattr::XATTR_NAME,
                    &Resource { uid: 42, gid: 43 }.encode(),
                )],
            )
            .dir("b/", DIR)
            .file("b/y", b"y", DEFAULT)
            .finish();
        for (i, tar) in [l1, l2, l3].iter().enumerate() {
            let lowers: Vec<PathBuf> = layers[..i].iter().rev().cloned().collect();
            apply_with(tar, &layers[i], &lowers, xattrs).unwrap();
        }
        layers
    }

    #[test]
    fn flatten_merges_a_chain_as_overlay_shows_it() {
        if !is_root() {
            eprintln!("SKIPPED: this test needs real root (owners, trusted.overlay.*, mount)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layers = chain(dir.path(), OverlayXattrs::Trusted);
        let dest = dir.path().join("rootfs");
        let opts = FlattenOptions {
            xattrs: OverlayXattrs::Trusted,
            ownership: ExportOwnership::Exact,
        };
        let report = flatten(&layers, &dest, &opts).unwrap();
        assert!(report.skipped_devices.is_empty());
        assert_eq!(report.recorded_owners, 0);

        let (tree, links) = view(&dest);
        let paths: Vec<&str> = tree.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "a",
                "a/f2",
                "a/f2link",
                "a/f3",
                "b",
                "b/y",
                "c",
                "c/new",
                "e",
                "e/g",
                "e/old",
                "e/recorded",
                "link1",
                "link2",
                "ro",
                "ro/f",
                "s",
                "x"
            ]
        );
        assert_eq!(
            links,
            [
                vec![PathBuf::from("a/f2"), PathBuf::from("a/f2link")],
                vec![PathBuf::from("link1"), PathBuf::from("link2")]
            ]
        );
        assert_eq!(
            tree[Path::new("a/f2")],
            "file 640 1000:1000 mtime=11 nlink=2 \"two\""
        );
        assert_eq!(
            tree[Path::new("link1")],
            "file 4755 0:0 mtime=12 nlink=2 \"L\""
        );
        assert_eq!(tree[Path::new("e")], "dir 750 1000:0 mtime=30");
        assert_eq!(
            tree[Path::new("e/g")],
            "file 600 1234:5678 mtime=31 nlink=1 \"g\""
        );
        assert_eq!(tree[Path::new("c")], "dir 711 0:0 mtime=21");
        assert_eq!(tree[Path::new("ro")], "dir 555 0:0 mtime=13");
        assert_eq!(
            tree[Path::new("s")],
            "file 600 0:0 mtime=22 nlink=1 \"was a symlink\""
        );
        assert_eq!(
            tree[Path::new("x")],
            "file 644 0:0 mtime=15 nlink=1 \"\" user.one=[49]"
        );

        // The kernel's overlay over the same layers must show the same tree.
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let lowerdir = layers
            .iter()
            .rev()
            .map(|l| l.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!("ro,lowerdir={lowerdir}"),
            ])
            .arg(&mnt)
            .status();
        if !matches!(mounted, Ok(s) if s.success()) {
            eprintln!("SKIPPED (part): cannot mount overlay to compare with the kernel's view");
            return;
        }
        let kernel = view(&mnt);
        let _ = Command::new("umount").arg(&mnt).status();
        assert_eq!(kernel, (tree, links));
    }

    #[test]
    fn flatten_as_caller_records_owners() {
        if !is_root() {
            eprintln!("SKIPPED: this test needs real root to build layers with arbitrary owners");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layers = chain(dir.path(), OverlayXattrs::Trusted);
        let dest = dir.path().join("rootfs");
        let opts = FlattenOptions {
            xattrs: OverlayXattrs::Trusted,
            ownership: ExportOwnership::Caller,
        };
        let report = flatten(&layers, &dest, &opts).unwrap();
        let record = |p: &str| {
            xattr::get(dest.join(p), rootless_xattr::XATTR_NAME)
                .unwrap()
                .map(|v| Resource::decode(&v).unwrap())
        };
        assert_eq!(
            record("e/g"),
            Some(Resource {
                uid: 1234,
                gid: 5678
            })
        );
        assert_eq!(
            record("a/f2"),
            Some(Resource {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            record("e"),
            Some(Resource {
                uid: 1000,
                gid: rootless_xattr::NOOP_ID
            })
        );
        assert_eq!(
            record("e/recorded"),
            Some(Resource { uid: 42, gid: 43 }),
            "an existing record is kept"
        );
        assert_eq!(record("link1"), None);
        assert_eq!(record("a"), None);
        // e/g; a/f2 and e twice each, as the bottom and the top layer both write them (a/f2link
        // is a/f2's inode).
        assert_eq!(report.recorded_owners, 5);
        for p in ["e/g", "a/f2", "e", "e/recorded"] {
            let m = lstat(&dest.join(p));
            assert_eq!((m.uid(), m.gid()), (0, 0), "{p} belongs to the caller");
        }
        assert_eq!(lstat(&dest.join("link1")).mode() & 0o7777, 0o4755);
    }

    #[test]
    fn rootless_flatten_in_user_namespace() {
        if !in_child() {
            run_in_user_namespace("flatten::tests::rootless_flatten_in_user_namespace");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layers = chain(dir.path(), OverlayXattrs::User);
        let dest = dir.path().join("rootfs");
        let opts = FlattenOptions {
            xattrs: OverlayXattrs::User,
            ownership: ExportOwnership::Caller,
        };
        flatten(&layers, &dest, &opts).unwrap();
        let (tree, links) = view(&dest);
        let paths: Vec<&str> = tree.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "a",
                "a/f2",
                "a/f2link",
                "a/f3",
                "b",
                "b/y",
                "c",
                "c/new",
                "e",
                "e/g",
                "e/old",
                "e/recorded",
                "link1",
                "link2",
                "ro",
                "ro/f",
                "s",
                "x"
            ]
        );
        assert_eq!(links.len(), 2);
        let record = |p: &str| {
            xattr::get(dest.join(p), rootless_xattr::XATTR_NAME)
                .unwrap()
                .map(|v| Resource::decode(&v).unwrap())
        };
        // Squashed while applying, carried through the copy-up and the export.
        assert_eq!(
            record("a/f2"),
            Some(Resource {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            record("e/g"),
            Some(Resource {
                uid: 1234,
                gid: 5678
            })
        );
        assert_eq!(
            record("e"),
            Some(Resource {
                uid: 1000,
                gid: rootless_xattr::NOOP_ID
            })
        );
        assert_eq!(record("e/recorded"), Some(Resource { uid: 42, gid: 43 }));

        // The kernel's overlay, mounted the rootless way (userxattr), shows the same tree.
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let lowerdir = layers
            .iter()
            .rev()
            .map(|l| l.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let mounted = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,userxattr,lowerdir={lowerdir}"))
            .arg(&mnt)
            .status();
        if !matches!(mounted, Ok(s) if s.success()) {
            eprintln!("SKIPPED (part): cannot mount overlay in the user namespace");
            return;
        }
        let kernel = view(&mnt);
        let _ = Command::new("umount").arg(&mnt).status();
        assert_eq!(kernel, (tree, links));
    }

    #[test]
    fn destination_must_be_new_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        fs::write(layer.join("f"), b"f").unwrap();
        let opts = FlattenOptions {
            xattrs: OverlayXattrs::User,
            ownership: ExportOwnership::Caller,
        };
        let busy = dir.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("x"), b"").unwrap();
        let err = flatten(std::slice::from_ref(&layer), &busy, &opts).unwrap_err();
        assert!(
            matches!(err, FlattenError::DestinationNotEmpty { .. }),
            "{err}"
        );
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            flatten(std::slice::from_ref(&layer), &file, &opts),
            Err(FlattenError::DestinationNotEmpty { .. })
        ));

        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        flatten(std::slice::from_ref(&layer), &empty, &opts).unwrap();
        assert_eq!(fs::read(empty.join("f")).unwrap(), b"f");
        let fresh = dir.path().join("fresh");
        let report = flatten(std::slice::from_ref(&layer), &fresh, &opts).unwrap();
        assert_eq!((report.files, report.bytes), (1, 1));
    }
}
