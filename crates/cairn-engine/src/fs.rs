//! Host directory trees: walking them through include and exclude globs, hashing their content,
//! and copying them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{io_err, EngineError};

/// Which entries of a tree to take: all but the excluded ones (an excluded directory is not
/// entered); of the files and symlinks, only those an include pattern matches, when there are
/// include patterns. Patterns match paths relative to the tree's root (`src/**/*.rs`).
pub(crate) struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// Where the walked tree sits in the tree the patterns are relative to (empty: its root),
    /// for a subdirectory of a filtered host directory.
    prefix: PathBuf,
}

impl Filter {
    pub(crate) fn new(
        root: &Path,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, EngineError> {
        let set = |patterns: &[String]| -> Result<GlobSet, EngineError> {
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                let glob = Glob::new(p).map_err(|source| EngineError::Glob {
                    path: root.to_owned(),
                    pattern: p.clone(),
                    source,
                })?;
                b.add(glob);
            }
            b.build().map_err(|source| EngineError::Glob {
                path: root.to_owned(),
                pattern: patterns.join(","),
                source,
            })
        };
        Ok(Filter {
            include: if include.is_empty() {
                None
            } else {
                Some(set(include)?)
            },
            exclude: set(exclude)?,
            prefix: PathBuf::new(),
        })
    }

    /// This filter for walking the subdirectory `prefix` of the tree its patterns are
    /// relative to.
    pub(crate) fn within(mut self, prefix: &Path) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Everything.
    pub(crate) fn all() -> Self {
        Filter {
            include: None,
            exclude: GlobSet::empty(),
            prefix: PathBuf::new(),
        }
    }

    /// Whether the entry `rel` (relative to the walked tree) is excluded.
    pub(crate) fn excluded(&self, rel: &Path) -> bool {
        if self.prefix.as_os_str().is_empty() {
            self.exclude.is_match(rel)
        } else {
            self.exclude.is_match(self.prefix.join(rel))
        }
    }

    /// Whether the file or symlink `rel` (relative to the walked tree) is included.
    pub(crate) fn included(&self, rel: &Path) -> bool {
        self.include.as_ref().is_none_or(|set| {
            if self.prefix.as_os_str().is_empty() {
                set.is_match(rel)
            } else {
                set.is_match(self.prefix.join(rel))
            }
        })
    }

    /// Whether a file at `rel` would be taken: included, and neither it nor a directory
    /// above it excluded.
    pub(crate) fn takes(&self, rel: &Path) -> bool {
        self.included(rel)
            && rel
                .ancestors()
                .all(|a| a.as_os_str().is_empty() || !self.excluded(a))
    }
}

/// One entry of a walked tree.
pub(crate) struct Entry {
    pub(crate) rel: PathBuf,
    pub(crate) kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    /// What a walk takes an entry of type `ft` at `rel` for: every directory not excluded
    /// (it may hold included files), files and symlinks the filter includes, and nothing else
    /// (sockets, fifos, devices). Shared by [`walk`] and the parallel hashing walk.
    pub(crate) fn of_entry(ft: fs::FileType, rel: &Path, filter: &Filter) -> Option<Kind> {
        if filter.excluded(rel) {
            None
        } else if ft.is_dir() {
            Some(Kind::Dir)
        } else if ft.is_file() && filter.included(rel) {
            Some(Kind::File)
        } else if ft.is_symlink() && filter.included(rel) {
            Some(Kind::Symlink)
        } else {
            None
        }
    }
}

/// The entries under `root` the filter takes, sorted by relative path (parents first).
/// Sockets, fifos and devices are left out.
pub(crate) fn walk(root: &Path, filter: &Filter) -> Result<Vec<Entry>, EngineError> {
    let meta = fs::metadata(root).map_err(io_err("read directory", root))?;
    if !meta.is_dir() {
        return Err(EngineError::Invalid {
            what: root.display().to_string(),
            reason: "not a directory".into(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let full = root.join(&dir);
        let mut names: Vec<_> = fs::read_dir(&full)
            .map_err(io_err("read directory", &full))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read directory", &full))?;
        names.sort();
        for name in names {
            let rel = dir.join(&name);
            if filter.excluded(&rel) {
                continue;
            }
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            let Some(kind) = Kind::of_entry(meta.file_type(), &rel, filter) else {
                continue;
            };
            if kind == Kind::Dir {
                stack.push(rel.clone());
            }
            out.push(Entry { rel, kind });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The first field of a tree's digest encoding: a change of the encoding changes it, so that no
/// digest of one encoding is taken for a digest of another.
pub(crate) const TREE_ENCODING: &[u8] = b"cairn-tree-v1";

/// The content digest of a tree: sha256 over each taken entry, in path order, as its relative
/// path, type, mode and content (a file's sha256, a symlink's target), each length-prefixed.
/// Owners and times are left out: a fresh checkout hashes like the old one. Computed by
/// [`TreeHasher`](crate::TreeHasher), here without its record of file digests.
#[cfg(test)]
pub(crate) fn digest(root: &Path, filter: &Filter) -> Result<cairn_oci::Digest, EngineError> {
    Ok(crate::TreeHasher::uncached()
        .digest_filtered(root, filter)?
        .digest)
}

/// Copies the entries of `src` the filter takes into `dst` (created with its parents),
/// keeping modes. What exists in `dst` is overwritten.
pub(crate) fn copy_tree(src: &Path, dst: &Path, filter: &Filter) -> Result<(), EngineError> {
    let entries = walk(src, filter)?;
    fs::create_dir_all(dst).map_err(io_err("create", dst))?;
    for e in entries {
        let (from, to) = (src.join(&e.rel), dst.join(&e.rel));
        match e.kind {
            Kind::Dir => {
                match fs::symlink_metadata(&to) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&to).map_err(io_err("replace", &to))?;
                        fs::create_dir(&to).map_err(io_err("create", &to))?;
                    }
                    Err(_) => fs::create_dir(&to).map_err(io_err("create", &to))?,
                }
                // Owner-writable while filling it; its mode is set once its files are in.
            }
            Kind::File => {
                remove_existing(&to)?;
                fs::copy(&from, &to).map_err(io_err("copy to", &to))?;
            }
            Kind::Symlink => {
                remove_existing(&to)?;
                let target = fs::read_link(&from).map_err(io_err("read link", &from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(io_err("create link", &to))?;
            }
        }
    }
    // Directory modes last, deepest first, so a read-only directory was still writable
    // while its contents were copied.
    let mut dirs: Vec<_> = walk(dst, &Filter::all())?
        .into_iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    dirs.reverse();
    for d in dirs {
        let (from, to) = (src.join(&d.rel), dst.join(&d.rel));
        if let Ok(m) = fs::metadata(&from) {
            fs::set_permissions(&to, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_err("chmod", &to))?;
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) -> Result<(), EngineError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replace", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replace", path)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cairn_oci::Digest;
    use sha2::{Digest as _, Sha256};

    /// The tree digest as it was first defined, computed plainly: one thread, every file read.
    /// The parallel, recorded digest must stay equal to it.
    pub(crate) fn reference_digest(root: &Path, filter: &Filter) -> Digest {
        let mut h = Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        put(b"cairn-tree-v1");
        for e in walk(root, filter).unwrap() {
            let path = root.join(&e.rel);
            put(e.rel.as_os_str().as_encoded_bytes());
            let (kind, content): (&[u8], Vec<u8>) = match e.kind {
                Kind::Dir => (b"d", Vec::new()),
                Kind::File => (b"f", Sha256::digest(fs::read(&path).unwrap()).to_vec()),
                Kind::Symlink => (
                    b"l",
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ),
            };
            put(kind);
            let mode = fs::symlink_metadata(&path).unwrap().mode() & 0o7777;
            put(&mode.to_be_bytes());
            put(&content);
        }
        Digest::from_sha256_bytes(&h.finalize())
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("src/target")).unwrap();
        fs::write(t.path().join("src/a.rs"), "fn a() {}").unwrap();
        fs::write(t.path().join("src/target/x.o"), "obj").unwrap();
        fs::write(t.path().join("README"), "hi").unwrap();
        std::os::unix::fs::symlink("README", t.path().join("link")).unwrap();
        t
    }

    #[test]
    fn digest_follows_content_and_filters() {
        let t = tree();
        let all = digest(t.path(), &Filter::all()).unwrap();
        assert_eq!(all, digest(t.path(), &Filter::all()).unwrap());
        let ex = Filter::new(t.path(), &[], &["src/target".into()]).unwrap();
        let without = digest(t.path(), &ex).unwrap();
        assert_ne!(all, without);
        // A change in an excluded file does not change the digest; in a taken one it does.
        fs::write(t.path().join("src/target/x.o"), "obj2").unwrap();
        assert_eq!(without, digest(t.path(), &ex).unwrap());
        fs::write(t.path().join("src/a.rs"), "fn b() {}").unwrap();
        assert_ne!(without, digest(t.path(), &ex).unwrap());
        // So does a mode change.
        let before = digest(t.path(), &ex).unwrap();
        fs::set_permissions(t.path().join("README"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(before, digest(t.path(), &ex).unwrap());
    }

    #[test]
    fn copy_takes_only_included_files() {
        let t = tree();
        let out = tempfile::tempdir().unwrap();
        let f = Filter::new(t.path(), &["**/*.rs".into()], &[]).unwrap();
        copy_tree(t.path(), &out.path().join("dst"), &f).unwrap();
        let dst = out.path().join("dst");
        assert_eq!(
            fs::read_to_string(dst.join("src/a.rs")).unwrap(),
            "fn a() {}"
        );
        assert!(!dst.join("README").exists() && !dst.join("src/target/x.o").exists());
        copy_tree(t.path(), &dst, &Filter::all()).unwrap();
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("README")
        );
    }

    #[test]
    fn invalid_globs_are_named() {
        let err = Filter::new(Path::new("/x"), &["a[".into()], &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
