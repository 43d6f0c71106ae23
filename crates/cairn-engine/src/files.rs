//! Files and subdirectories of containers and directories, new files written into a
//! container, and directories, files and tmpfs mounted into an exec.
//!
//! A [`File`](crate::File) is a vertex whose result names a directory source (a host
//! directory, or a path in a committed snapshot) and a path in it; nothing is read until the
//! file is. Reading a file of a snapshot flattens the snapshot chain into a private directory
//! of the store (through the store's helper in a rootless store, so every file is readable)
//! and resolves the path there, following symlinks *inside* that root: an absolute link
//! target means the container's `/`, never the host's.
//!
//! `with_new_file` and `with_file` write one file into a new snapshot on top of the
//! container's (committed as `newfile-<key>` / `file-<key>`), as `with_directory` does for a
//! directory. Their keys hold the new file's content digest, or the key of the source file.
//!
//! A mounted directory or file is copied, for each exec, into a directory of the store that
//! is bound read-write into the container and deleted after it: the command may write
//! there, but the source (a host directory, a snapshot) never changes, and nothing written
//! there reaches the exec's committed layer. The mounted input's key is part of the exec's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cairn_images::{Store, LEASE_LABEL};
use cairn_oci::Digest;
use cairn_runtime::ExtraMount;
use cairn_snapshot::Snapshotter;
use cairn_solver::{BoxFuture, CacheDescription, Edge, ExecContext, Op, OpError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{io_err, EngineError};
use crate::fs::Filter;
use crate::ops::DirSource;
use crate::{EngineInner, Output};

/// Where a file result lives: a path inside a directory source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSource {
    /// The directory the file is in (a container's root for `Container::file`).
    pub dir: DirSource,
    /// The file's path relative to that directory (`/`-separated, no `..`).
    pub path: String,
}

/// How deep symlinks may nest while a path is resolved (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

fn op_err(e: EngineError) -> OpError {
    Box::new(e)
}

/// `path` made absolute (relative to `base`, itself absolute) with `.` and `..` resolved
/// lexically; `..` stops at `/`.
pub(crate) fn clean_path(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The host path of `path` inside the tree `root`, with every symlink on the way followed as
/// the tree's own: an absolute target starts again at `root`, `..` stops at `root`. The last
/// component is followed too. A missing component ends the walk (the result then does not
/// exist). The error says why the path cannot be resolved.
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = Vec::new();
    let push_parts = |pending: &mut Vec<OsString>, p: &Path| {
        // `pending` is a stack: its last element is the next component.
        let parts: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        pending.extend(parts.into_iter().rev());
    };
    push_parts(&mut pending, Path::new(path));
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str().to_owned())
            .chain(resolved.iter().cloned())
            .chain(std::iter::once(part.clone()))
            .collect();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!("too many levels of symbolic links in {path}"));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| format!("read link {}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_parts(&mut pending, &target);
            }
            Ok(_) => resolved.push(part),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                resolved.push(part);
                while let Some(rest) = pending.pop() {
                    resolved.push(rest);
                }
            }
            Err(e) => return Err(format!("stat {}: {e}", candidate.display())),
        }
    }
    Ok(std::iter::once(root.as_os_str().to_owned())
        .chain(resolved)
        .collect())
}

/// Where to write `path` (absolute) into a new layer over `lowers` (the layers below,
/// topmost first) so that the container sees it at `path`: symlinks among its directories
/// (and the last component too with `follow_last`) are resolved in the merged view of the
/// layers, as the container would resolve them. Without this, writing `/bin/tool` over an
/// image whose `/bin` is a symlink to `usr/bin` would put a real `/bin` directory in the new
/// layer, hiding every file of the image's `/bin`. A component that cannot be read (a
/// directory of another user in a rootless store) is taken as it is.
pub(crate) fn resolve_in_layers(lowers: &[PathBuf], path: &str, follow_last: bool) -> String {
    let clean = clean_path("/", path);
    let mut parts: Vec<String> = clean
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let last = if follow_last { None } else { parts.pop() };
    let mut pending: Vec<String> = parts.into_iter().rev().collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if part.is_empty() || part == "." {
            continue;
        }
        let rel: PathBuf = resolved.iter().chain(std::iter::once(&part)).collect();
        let topmost = lowers
            .iter()
            .map(|l| l.join(&rel))
            .find_map(|p| fs::symlink_metadata(&p).ok().map(|m| (p, m)));
        let target = match topmost {
            Some((p, m)) if m.file_type().is_symlink() && links < MAX_SYMLINKS => {
                fs::read_link(p).ok()
            }
            _ => None,
        };
        match target {
            Some(target) => {
                links += 1;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            None => resolved.push(part),
        }
    }
    resolved.extend(last);
    format!("/{}", resolved.join("/"))
}

/// What the fast lookup of a file in a snapshot's layers found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LayerLookup {
    /// The file that the container sees at the path (the path resolved through symlinks).
    Found(PathBuf),
    /// Nothing is there (or a whiteout hides it).
    Missing,
    /// The layers cannot answer for sure (an unreadable directory, a marker this lookup does
    /// not interpret, not a regular file): flatten the snapshot instead.
    Unsure,
}

fn overlay_attr(path: &Path, name: &str) -> Option<Vec<u8>> {
    ["trusted.overlay.", "user.overlay."]
        .iter()
        .find_map(|ns| xattr::get(path, format!("{ns}{name}")).ok().flatten())
}

/// Looks `path` up in the merged view of `layers` (topmost first) without flattening them,
/// as overlayfs would: the topmost entry wins, a 0/0 character device is a whiteout, a
/// directory merges with the directories of the same name below it until an opaque one or
/// a non-directory, and symlinks are followed inside the view. Host paths are only ever
/// built from components that are real directories in that layer, so no host symlink is
/// followed.
pub(crate) fn lookup_in_layers(layers: &[PathBuf], path: &str) -> LayerLookup {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut pending: Vec<String> = clean_path("/", path)
        .split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    // The resolved directory: its components, and the layers whose directory it merges.
    let all: Vec<usize> = (0..layers.len()).collect();
    let mut resolved: Vec<(String, Vec<usize>)> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            resolved.pop();
            continue;
        }
        let parent_layers = resolved.last().map_or(&all, |(_, l)| l).clone();
        let rel: PathBuf = resolved
            .iter()
            .map(|(p, _)| p.as_str())
            .chain(std::iter::once(part.as_str()))
            .collect();
        let mut found: Option<(usize, fs::Metadata)> = None;
        for &i in &parent_layers {
            match fs::symlink_metadata(layers[i].join(&rel)) {
                Ok(m) => {
                    found = Some((i, m));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return LayerLookup::Unsure,
            }
        }
        let Some((top, meta)) = found else {
            return LayerLookup::Missing;
        };
        let t = meta.file_type();
        let host = layers[top].join(&rel);
        if t.is_char_device() && meta.rdev() == 0 {
            return LayerLookup::Missing;
        }
        if t.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return LayerLookup::Unsure;
            }
            let Ok(target) = fs::read_link(&host) else {
                return LayerLookup::Unsure;
            };
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
            continue;
        }
        if t.is_dir() {
            // Which layers' directories of this name the container sees merged.
            if overlay_attr(&host, "redirect").is_some() {
                return LayerLookup::Unsure;
            }
            let mut merged = vec![top];
            let mut opaque = overlay_attr(&host, "opaque");
            for &i in parent_layers.iter().filter(|&&i| i > top) {
                match opaque.as_deref() {
                    None => {}
                    Some(b"y") => break,
                    Some(_) => return LayerLookup::Unsure,
                }
                match fs::symlink_metadata(layers[i].join(&rel)) {
                    Ok(m) if m.is_dir() => {
                        merged.push(i);
                        opaque = overlay_attr(&layers[i].join(&rel), "opaque");
                    }
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => return LayerLookup::Unsure,
                }
            }
            resolved.push((part, merged));
            continue;
        }
        // A file: the end of the path, or a path through a file (let flattening say so).
        if !pending.iter().all(|p| p.is_empty() || p == ".") || !t.is_file() {
            return LayerLookup::Unsure;
        }
        if overlay_attr(&host, "whiteout").is_some() || overlay_attr(&host, "metacopy").is_some() {
            return LayerLookup::Unsure;
        }
        return match fs::File::open(&host) {
            Ok(_) => LayerLookup::Found(host),
            Err(_) => LayerLookup::Unsure,
        };
    }
    // The path names a directory.
    LayerLookup::Unsure
}

fn type_name(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "a special file"
    }
}

/// `rel` (relative, `/`-separated) with `.`, `..` and empty parts resolved lexically.
fn clean_rel(rel: &str) -> String {
    clean_path("/", rel).trim_start_matches('/').to_owned()
}

/// A flattened copy of a snapshot chain in the store's `tmp`, deleted on drop.
struct Flattened {
    store: Store,
    dir: PathBuf,
}

impl Drop for Flattened {
    fn drop(&mut self) {
        if let Err(e) = self.store.remove_tree(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "remove flattened copy");
        }
    }
}

/// A private directory of the store (`<store>/tmp/<prefix>-<random>`).
fn private_dir(store: &Store, prefix: &str) -> Result<PathBuf, EngineError> {
    let tmp_root = store.root().join("tmp");
    fs::create_dir_all(&tmp_root).map_err(io_err("create", &tmp_root))?;
    Ok(tmp_root.join(format!(
        "{prefix}-{}",
        hex::encode(rand::random::<[u8; 8]>())
    )))
}

/// A file readable on the host: the source itself for a host directory, else a file of a
/// flattened copy that goes when this is dropped.
pub(crate) struct LocalFile {
    pub(crate) path: PathBuf,
    pub(crate) meta: fs::Metadata,
    _flattened: Option<Flattened>,
}

impl LocalFile {
    pub(crate) fn read(&self) -> Result<Vec<u8>, EngineError> {
        fs::read(&self.path).map_err(io_err("read", &self.path))
    }

    /// sha256 of the content.
    pub(crate) fn digest(&self) -> Result<Digest, EngineError> {
        let mut f = fs::File::open(&self.path).map_err(io_err("open", &self.path))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(io_err("read", &self.path))?;
        Ok(Digest::from_sha256_bytes(&h.finalize()))
    }

    /// Copies the file to `dest` (its parents created, whatever is at `dest` replaced) with
    /// mode `mode`, else its own.
    pub(crate) fn copy_to(&self, dest: &Path, mode: Option<u32>) -> Result<(), EngineError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        remove_existing(dest)?;
        fs::copy(&self.path, dest).map_err(io_err("copy to", dest))?;
        let mode = mode.unwrap_or(self.meta.permissions().mode()) & 0o7777;
        fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dest))
    }
}

fn remove_existing(path: &Path) -> Result<(), EngineError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replace", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replace", path)),
        Err(_) => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Invalid {
            what: what.to_owned(),
            reason: e.to_string(),
        })?
}

impl EngineInner {
    async fn flatten(&self, snapshot: Option<&str>, path: &str) -> Result<Flattened, EngineError> {
        let dir = private_dir(&self.store, "flatten")?;
        let flattened = Flattened {
            store: self.store.clone(),
            dir: dir.clone(),
        };
        self.store
            .flatten_snapshot(snapshot, &dir)
            .await?
            .map_err(|reason| EngineError::Flatten {
                snapshot: snapshot.unwrap_or_default().to_owned(),
                path: path.to_owned(),
                reason,
            })?;
        Ok(flattened)
    }

    /// The file `source` on the host, checked to be a regular file (symlinks followed).
    /// Errors name `step` and the path as asked for.
    pub(crate) async fn local_file(
        &self,
        step: &str,
        source: &FileSource,
    ) -> Result<LocalFile, EngineError> {
        let not_found = |path: String| EngineError::PathNotFound {
            step: step.to_owned(),
            path,
        };
        let resolve_err = |path: String, reason: String| EngineError::Invalid {
            what: format!("step {step:?}: {path}"),
            reason,
        };
        let (path, shown, flattened) = match &source.dir {
            DirSource::Host {
                path: root,
                include,
                exclude,
                sub,
            } => {
                let rel = clean_rel(&format!("{}/{}", sub.display(), source.path));
                let shown = root.join(&rel).display().to_string();
                let resolved =
                    resolve_in_root(root, &rel).map_err(|r| resolve_err(shown.clone(), r))?;
                // The filter sees the file where it really is in the tree.
                let real = resolved.strip_prefix(root).unwrap_or(&resolved).to_owned();
                let filter = Filter::new(root, include, exclude)?;
                let hidden = real
                    .ancestors()
                    .any(|a| !a.as_os_str().is_empty() && filter.excluded(a))
                    || !filter.included(&real);
                if hidden {
                    return Err(not_found(shown));
                }
                (resolved, shown, None)
            }
            DirSource::Snapshot { snapshot, path } => {
                let full = clean_path(path, source.path.trim_start_matches('/'));
                // Most files are found in the layers directly; flattening a whole image to
                // read one file takes seconds.
                let layers = match snapshot {
                    Some(top) => self.store.snapshots().layer_dirs(top)?,
                    None => Vec::new(),
                };
                let top_first: Vec<PathBuf> = layers.into_iter().rev().collect();
                match lookup_in_layers(&top_first, &full) {
                    LayerLookup::Found(file) => {
                        let meta = fs::metadata(&file).map_err(io_err("stat", &file))?;
                        return Ok(LocalFile {
                            path: file,
                            meta,
                            _flattened: None,
                        });
                    }
                    LayerLookup::Missing => return Err(not_found(full)),
                    LayerLookup::Unsure => {}
                }
                let flattened = self.flatten(snapshot.as_deref(), &full).await?;
                let resolved = resolve_in_root(&flattened.dir, &full)
                    .map_err(|r| resolve_err(full.clone(), r))?;
                (resolved, full, Some(flattened))
            }
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found(shown)),
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        if !meta.is_file() {
            return Err(EngineError::WrongFileType {
                step: step.to_owned(),
                path: shown,
                expected: "a regular file",
                found: type_name(&meta),
            });
        }
        Ok(LocalFile {
            path,
            meta,
            _flattened: flattened,
        })
    }

    /// The names directly in the directory `source`, sorted (what the filter of a host
    /// directory takes).
    pub(crate) async fn entries(
        &self,
        step: &str,
        source: &DirSource,
    ) -> Result<Vec<String>, EngineError> {
        let (dir, filter, shown, _flattened) = match source {
            DirSource::Host {
                path,
                include,
                exclude,
                sub,
            } => {
                let filter = Filter::new(path, include, exclude)?.within(sub);
                (
                    path.join(sub),
                    Some(filter),
                    path.join(sub).display().to_string(),
                    None,
                )
            }
            DirSource::Snapshot { snapshot, path } => {
                let flattened = self.flatten(snapshot.as_deref(), path).await?;
                let dir = resolve_in_root(&flattened.dir, path).map_err(|reason| {
                    EngineError::Invalid {
                        what: format!("step {step:?}: {path}"),
                        reason,
                    }
                })?;
                (dir, None, path.clone(), Some(flattened))
            }
        };
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                return Err(EngineError::WrongFileType {
                    step: step.to_owned(),
                    path: shown,
                    expected: "a directory",
                    found: type_name(&m),
                })
            }
            Err(_) => {
                return Err(EngineError::PathNotFound {
                    step: step.to_owned(),
                    path: shown,
                })
            }
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let name = entry.file_name();
            if let Some(filter) = &filter {
                let rel = Path::new(&name);
                let t = entry.file_type().map_err(io_err("stat", &entry.path()))?;
                let taken = !filter.excluded(rel)
                    && (t.is_dir() || ((t.is_file() || t.is_symlink()) && filter.included(rel)));
                if !taken {
                    continue;
                }
            }
            names.push(String::from_utf8_lossy(name.as_bytes()).into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// A new committed snapshot `<kind>-<key hex>` over `base`: `fill` writes into its
    /// (empty) writable directory, which is then committed. A snapshot another process
    /// committed under the same name first is taken as it is (same key, same content).
    async fn commit_layer(
        &self,
        ctx: &ExecContext,
        kind: &str,
        base: Option<&str>,
        fill: impl FnOnce(PathBuf, Vec<PathBuf>) -> Result<(), EngineError> + Send + 'static,
    ) -> Result<String, EngineError> {
        let key = ctx
            .cache_key()
            .map(|k| k.digest().hex().to_owned())
            .unwrap_or_default();
        let name = format!("{kind}-{key}");
        let snapshots = self.store.snapshots();
        let active = format!("{name}-{}", hex::encode(rand::random::<[u8; 6]>()));
        let labels = BTreeMap::from([(LEASE_LABEL.to_owned(), self.store.lease().to_owned())]);
        let mounts = snapshots.prepare(&active, base, &labels)?;
        let result = async {
            let upper = mounts
                .first()
                .and_then(cairn_snapshot::Mount::writable_dir)
                .ok_or_else(|| EngineError::Invalid {
                    what: active.clone(),
                    reason: "prepared snapshot has no writable directory".into(),
                })?;
            let lowers = mounts
                .first()
                .map(cairn_snapshot::Mount::lower_dirs)
                .unwrap_or_default();
            blocking("write layer", move || fill(upper, lowers)).await?;
            match snapshots.commit(&name, &active, &BTreeMap::new()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == cairn_snapshot::ErrorKind::AlreadyExists => {
                    snapshots.remove(&active)?;
                    Ok(())
                }
                Err(e) => Err(EngineError::from(e)),
            }
        }
        .await;
        if result.is_err() {
            let _ = snapshots.remove(&active);
        }
        result.map(|()| name)
    }
}

/// The input of an op that reads a file or directory of a container *or* of a directory:
/// a directory result, or the root of a container's snapshot.
fn dir_of(input: Option<Output>) -> DirSource {
    let input = input.unwrap_or_default();
    input.directory.unwrap_or(DirSource::Snapshot {
        snapshot: input.snapshot,
        path: "/".into(),
    })
}

/// `Container::file` / `Directory::file`: names the file; reading checks it.
pub(crate) struct FileOp {
    /// The path as given: absolute in a container (relative ones start at the working
    /// directory), relative to a directory's root in a directory.
    pub(crate) path: String,
    /// A container's working directory as set by `with_workdir` (else the image's).
    pub(crate) workdir: Option<String>,
    /// Whether the input is a container (else a directory).
    pub(crate) in_container: bool,
}

impl Op<Output> for FileOp {
    fn describe(&self) -> CacheDescription {
        let mut d = CacheDescription::new("file").field("path", &self.path);
        if self.in_container && !self.path.starts_with('/') {
            d.set("workdir", self.workdir.as_deref().unwrap_or(""));
        }
        d
    }

    fn exec<'a>(
        &'a self,
        _: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let input = inputs.into_iter().next();
            let path = if self.in_container {
                let image_workdir = input.as_ref().map(|i| i.state.workdir.clone());
                let workdir = (self.workdir.clone())
                    .or(image_workdir.filter(|w| !w.is_empty()))
                    .unwrap_or_else(|| "/".into());
                clean_path(&workdir, &self.path)
            } else {
                clean_rel(&self.path)
            };
            Ok(vec![Output {
                file: Some(FileSource {
                    dir: dir_of(input),
                    path: path.trim_start_matches('/').to_owned(),
                }),
                ..Output::default()
            }])
        })
    }
}

/// `Directory::directory`: a subdirectory. Of a host directory it is checked at once (and
/// its symlinks resolved inside the directory); of a snapshot, when it is read.
pub(crate) struct SubdirOp {
    pub(crate) path: String,
}

impl Op<Output> for SubdirOp {
    fn describe(&self) -> CacheDescription {
        CacheDescription::new("subdirectory").field("path", &self.path)
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let dir = match dir_of(inputs.into_iter().next()) {
                DirSource::Snapshot { snapshot, path } => DirSource::Snapshot {
                    snapshot,
                    path: clean_path(&path, self.path.trim_start_matches('/')),
                },
                DirSource::Host {
                    path,
                    include,
                    exclude,
                    sub,
                } => {
                    let rel = clean_rel(&format!("{}/{}", sub.display(), self.path));
                    let step = ctx.vertex().name().to_owned();
                    let sub =
                        host_subdir(&step, &path, &include, &exclude, &rel).map_err(op_err)?;
                    DirSource::Host {
                        path,
                        include,
                        exclude,
                        sub,
                    }
                }
            };
            Ok(vec![Output {
                directory: Some(dir),
                ..Output::default()
            }])
        })
    }
}

/// The subdirectory `rel` of a filtered host directory, its symlinks resolved inside it;
/// an error when it is missing, excluded or not a directory.
fn host_subdir(
    step: &str,
    root: &Path,
    include: &[String],
    exclude: &[String],
    rel: &str,
) -> Result<PathBuf, EngineError> {
    let shown = root.join(rel).display().to_string();
    let resolved = resolve_in_root(root, rel).map_err(|reason| EngineError::Invalid {
        what: format!("step {step:?}: {shown}"),
        reason,
    })?;
    let real = resolved.strip_prefix(root).unwrap_or(&resolved).to_owned();
    let filter = Filter::new(root, include, exclude)?;
    let excluded = real
        .ancestors()
        .any(|a| !a.as_os_str().is_empty() && filter.excluded(a));
    match fs::metadata(&resolved) {
        Ok(m) if m.is_dir() && !excluded => Ok(real),
        Ok(m) if !excluded => Err(EngineError::WrongFileType {
            step: step.to_owned(),
            path: shown,
            expected: "a directory",
            found: type_name(&m),
        }),
        _ => Err(EngineError::PathNotFound {
            step: step.to_owned(),
            path: shown,
        }),
    }
}

/// Where a new file goes in a container: `path`, relative ones in the working directory.
fn destination(path: &str, workdir: Option<&str>, base: &Output) -> String {
    let workdir = workdir
        .map(str::to_owned)
        .or_else(|| Some(base.state.workdir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    clean_path(&workdir, path)
}

/// `with_new_file`: a new snapshot with one file of the given content and mode. The key
/// holds the content's digest, not the content.
pub(crate) struct NewFileOp {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) path: String,
    pub(crate) contents: Arc<Vec<u8>>,
    pub(crate) mode: u32,
    pub(crate) workdir: Option<String>,
    /// Whether input 0 is the container (else the root starts empty).
    pub(crate) has_base: bool,
}

impl Op<Output> for NewFileOp {
    fn describe(&self) -> CacheDescription {
        let mut d = CacheDescription::new("new-file")
            .field("path", &self.path)
            .field("contents", Digest::sha256_of(&self.contents).as_str())
            .field("mode", format!("{:o}", self.mode))
            .field("base", if self.has_base { "1" } else { "0" });
        if !self.path.starts_with('/') {
            d.set("workdir", self.workdir.as_deref().unwrap_or(""));
        }
        d
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let base = inputs.into_iter().next().unwrap_or_default();
            let dest = destination(&self.path, self.workdir.as_deref(), &base);
            let (contents, mode) = (self.contents.clone(), self.mode);
            let snapshot = self
                .engine
                .commit_layer(
                    ctx,
                    "newfile",
                    base.snapshot.as_deref(),
                    move |upper, lowers| {
                        let dest = resolve_in_layers(&lowers, &dest, false);
                        write_new_file(&upper.join(dest.trim_start_matches('/')), &contents, mode)
                    },
                )
                .await
                .map_err(op_err)?;
            Ok(vec![Output {
                snapshot: Some(snapshot),
                state: base.state,
                ..Output::default()
            }])
        })
    }
}

fn write_new_file(dest: &Path, contents: &[u8], mode: u32) -> Result<(), EngineError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    remove_existing(dest)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io_err("create", dest))?;
    f.write_all(contents).map_err(io_err("write", dest))?;
    // Set after writing, so the umask does not cut it and a read-only mode is allowed.
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", dest))
}

/// `with_file`: a new snapshot with a copy of a file (its mode kept unless one is given).
/// The key holds the source file's key.
pub(crate) struct CopyFileOp {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) path: String,
    pub(crate) mode: Option<u32>,
    pub(crate) workdir: Option<String>,
    /// The name of the step the file comes from, for errors.
    pub(crate) source_step: String,
    /// Whether input 0 is the container (else the root starts empty); the file is last.
    pub(crate) has_base: bool,
}

impl Op<Output> for CopyFileOp {
    fn describe(&self) -> CacheDescription {
        let mut d = CacheDescription::new("copy-file")
            .field("path", &self.path)
            .field(
                "mode",
                self.mode.map(|m| format!("{m:o}")).unwrap_or_default(),
            )
            .field("base", if self.has_base { "1" } else { "0" });
        if !self.path.starts_with('/') {
            d.set("workdir", self.workdir.as_deref().unwrap_or(""));
        }
        d
    }

    fn exec<'a>(
        &'a self,
        ctx: &'a ExecContext,
        mut inputs: Vec<Output>,
    ) -> BoxFuture<'a, Result<Vec<Output>, OpError>> {
        Box::pin(async move {
            let source = inputs.pop().and_then(|o| o.file).ok_or_else(|| {
                op_err(EngineError::Invalid {
                    what: self.path.clone(),
                    reason: "copy input is not a file".into(),
                })
            })?;
            let base = inputs.pop().unwrap_or_default();
            let file = self
                .engine
                .local_file(&self.source_step, &source)
                .await
                .map_err(op_err)?;
            let dest = destination(&self.path, self.workdir.as_deref(), &base);
            let mode = self.mode;
            let snapshot = self
                .engine
                .commit_layer(
                    ctx,
                    "file",
                    base.snapshot.as_deref(),
                    move |upper, lowers| {
                        let dest = resolve_in_layers(&lowers, &dest, false);
                        file.copy_to(&upper.join(dest.trim_start_matches('/')), mode)
                    },
                )
                .await
                .map_err(op_err)?;
            Ok(vec![Output {
                snapshot: Some(snapshot),
                state: base.state,
                ..Output::default()
            }])
        })
    }
}

/// What an exec mounts besides caches and secrets. Directories and files are inputs of the
/// exec's vertex (after the container), in the order of the exec's mount list.
#[derive(Clone, Debug)]
pub(crate) enum Mounted {
    /// A copy of a directory, read-write.
    Directory(Edge<Output>),
    /// A copy of a file, read-write.
    File(Edge<Output>),
    /// An empty tmpfs.
    Temp,
}

impl Mounted {
    pub(crate) fn edge(&self) -> Option<&Edge<Output>> {
        match self {
            Mounted::Directory(e) | Mounted::File(e) => Some(e),
            Mounted::Temp => None,
        }
    }

    /// What the exec's key sees of the mount besides its input's key.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Mounted::Directory(_) => "directory",
            Mounted::File(_) => "file",
            Mounted::Temp => "tmpfs",
        }
    }
}

/// The mounts of one exec's directories, files and tmpfs, and the copies behind them,
/// deleted on drop.
pub(crate) struct MountedInputs {
    pub(crate) mounts: Vec<ExtraMount>,
    store: Store,
    copies: Vec<PathBuf>,
}

impl Drop for MountedInputs {
    fn drop(&mut self) {
        for copy in &self.copies {
            if let Err(e) = self.store.remove_tree(copy) {
                tracing::warn!(path = %copy.display(), error = %e, "remove mounted copy");
            }
        }
    }
}

impl EngineInner {
    /// Prepares the mounts `mounted` (container path, what) of step `step`; `inputs` are the
    /// results of their edges, in order.
    pub(crate) async fn mount_inputs(
        &self,
        step: &str,
        mounted: &[(String, Mounted)],
        inputs: Vec<Output>,
    ) -> Result<MountedInputs, EngineError> {
        let mut out = MountedInputs {
            mounts: Vec::new(),
            store: self.store.clone(),
            copies: Vec::new(),
        };
        let mut inputs = inputs.into_iter();
        for (path, what) in mounted {
            let destination = clean_path("/", path);
            let input = if what.edge().is_some() {
                inputs.next().ok_or_else(|| EngineError::Invalid {
                    what: format!("step {step:?}: mount {path}"),
                    reason: "the mounted input has no result".into(),
                })?
            } else {
                Output::default()
            };
            let source = match what {
                Mounted::Temp => {
                    out.mounts.push(ExtraMount::Tmpfs { destination });
                    continue;
                }
                Mounted::Directory(_) => {
                    let dir = input.directory.ok_or_else(|| EngineError::Invalid {
                        what: format!("step {step:?}: mount {path}"),
                        reason: "not a directory".into(),
                    })?;
                    let copy = private_dir(&self.store, "mount")?;
                    out.copies.push(copy.clone());
                    self.materialize(&dir, &copy).await?;
                    copy
                }
                Mounted::File(e) => {
                    let file = input.file.ok_or_else(|| EngineError::Invalid {
                        what: format!("step {step:?}: mount {path}"),
                        reason: "not a file".into(),
                    })?;
                    let local = self.local_file(e.vertex().id().name(), &file).await?;
                    let copy = private_dir(&self.store, "mount")?;
                    out.copies.push(copy.clone());
                    let dest = copy.join("file");
                    blocking("copy mounted file", move || local.copy_to(&dest, None)).await?;
                    copy.join("file")
                }
            };
            out.mounts.push(ExtraMount::Bind {
                source,
                destination,
                readonly: false,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_stays_under_root() {
        assert_eq!(clean_path("/", "a/./b/../c"), "/a/c");
        assert_eq!(clean_path("/work", "x"), "/work/x");
        assert_eq!(clean_path("/work", "/x"), "/x");
        assert_eq!(clean_path("/", "../../etc"), "/etc");
        assert_eq!(clean_rel("/a//b/"), "a/b");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("usr/lib/os-release"), "ID=x\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        // An absolute target is the tree's root, not the host's.
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/etc/os-release").unwrap(),
            root.join("usr/lib/os-release")
        );
        assert_eq!(
            resolve_in_root(root, "lib/os-release").unwrap(),
            root.join("usr/lib/os-release")
        );
        assert_eq!(resolve_in_root(root, "/up").unwrap(), root.join("etc"));
        assert_eq!(
            resolve_in_root(root, "/missing/x").unwrap(),
            root.join("missing/x")
        );
        assert!(resolve_in_root(root, "/loop1")
            .unwrap_err()
            .contains("symbolic links"));
    }

    #[test]
    fn lookup_in_layers_sees_what_overlay_shows() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, l2) = (t.path().join("0"), t.path().join("1"), t.path().join("2"));
        // Bottom: /usr/lib/os-release, /etc/os-release -> ../usr/lib/os-release, /gone,
        // /opq/old, /dir/keep.
        for d in ["usr/lib", "etc", "opq", "dir"] {
            fs::create_dir_all(l0.join(d)).unwrap();
        }
        fs::write(l0.join("usr/lib/os-release"), "ID=x\n").unwrap();
        symlink("../usr/lib/os-release", l0.join("etc/os-release")).unwrap();
        fs::write(l0.join("gone"), "old").unwrap();
        fs::write(l0.join("opq/old"), "old").unwrap();
        fs::write(l0.join("dir/keep"), "keep").unwrap();
        // Middle: /dir/new, /opq opaque with /opq/new.
        fs::create_dir_all(l1.join("dir")).unwrap();
        fs::create_dir_all(l1.join("opq")).unwrap();
        fs::write(l1.join("dir/new"), "new").unwrap();
        fs::write(l1.join("opq/new"), "new").unwrap();
        let opaque_set = xattr::set(l1.join("opq"), "user.overlay.opaque", b"y").is_ok();
        // Top: an absolute link out of the view, which stays inside it.
        fs::create_dir_all(&l2).unwrap();
        symlink("/usr/lib", l2.join("lib")).unwrap();
        let layers = [l2.clone(), l1.clone(), l0.clone()];
        let found = |p: &str| match lookup_in_layers(&layers, p) {
            LayerLookup::Found(f) => fs::read_to_string(f).unwrap(),
            other => format!("{other:?}"),
        };
        assert_eq!(found("/etc/os-release"), "ID=x\n");
        assert_eq!(found("/lib/os-release"), "ID=x\n");
        assert_eq!(found("/dir/keep"), "keep");
        assert_eq!(found("/dir/new"), "new");
        assert_eq!(found("/missing"), "Missing");
        assert_eq!(found("/gone"), "old");
        assert_eq!(found("/dir"), "Unsure");
        if opaque_set {
            assert_eq!(found("/opq/old"), "Missing");
            assert_eq!(found("/opq/new"), "new");
        }
    }

    #[test]
    fn destinations_follow_symlinks_of_the_layers_below() {
        let t = tempfile::tempdir().unwrap();
        let (bottom, top) = (t.path().join("bottom"), t.path().join("top"));
        fs::create_dir_all(bottom.join("usr/bin")).unwrap();
        fs::create_dir_all(top.join("opt")).unwrap();
        std::os::unix::fs::symlink("usr/bin", bottom.join("bin")).unwrap();
        // The upper layer's link wins over the lower one's directory.
        fs::create_dir_all(bottom.join("data")).unwrap();
        std::os::unix::fs::symlink("/opt", top.join("data")).unwrap();
        let lowers = [top.clone(), bottom.clone()];
        assert_eq!(
            resolve_in_layers(&lowers, "/bin/tool", false),
            "/usr/bin/tool"
        );
        assert_eq!(resolve_in_layers(&lowers, "/data/x/y", false), "/opt/x/y");
        assert_eq!(resolve_in_layers(&lowers, "/bin", false), "/bin");
        assert_eq!(resolve_in_layers(&lowers, "/bin", true), "/usr/bin");
        assert_eq!(resolve_in_layers(&[], "/a/../b/c", false), "/b/c");
    }
}
