//! Reading members of an image archive, whether a directory (an OCI layout) or a tar file,
//! without ever following a name out of the archive.
//!
//! Nothing is extracted: members are looked up by name and read in place (a tar member is a
//! byte range of the file), so a hostile member name cannot write anywhere. Names that would
//! escape the archive (`..`, absolute paths) make the whole archive invalid; symbolic and hard
//! links inside a tar (old `docker save` links identical layers) are followed only to other
//! members of the same archive.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::ImagesError;

/// Most JSON documents an archive may hold (index, manifests, configs, `manifest.json`): the
/// same bound registries put on manifests, so a hostile archive cannot exhaust memory.
pub(crate) const MAX_JSON: u64 = 8 << 20;

/// Most members a tar may have: every one costs an entry in the member table.
const MAX_MEMBERS: usize = 1 << 20;

/// How many links a member name may pass through.
const MAX_LINKS: usize = 16;

#[derive(Debug)]
enum TarMember {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
    Other(&'static str),
}

/// An opened archive: a directory or a scanned tar.
pub(crate) struct ArchiveReader {
    path: PathBuf,
    kind: ReaderKind,
}

enum ReaderKind {
    Dir,
    Tar(HashMap<String, TarMember>),
}

impl ArchiveReader {
    /// Opens a directory or scans a tar file's headers (data is skipped by seeking).
    pub(crate) fn open(path: &Path) -> Result<ArchiveReader, ImagesError> {
        let meta = fs::metadata(path).map_err(|e| whole(path, format!("cannot open: {e}")))?;
        if meta.is_dir() {
            return Ok(ArchiveReader {
                path: path.to_owned(),
                kind: ReaderKind::Dir,
            });
        }
        if !meta.is_file() {
            return Err(whole(path, "neither a directory nor a regular file".into()));
        }
        let file = File::open(path).map_err(|e| whole(path, format!("cannot open: {e}")))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| whole(path, format!("not a tar archive: {e}")))?;
        let mut members = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| whole(path, format!("not a valid tar archive: {e}")))?;
            let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
                whole(
                    path,
                    format!(
                        "member name {:?} is not UTF-8",
                        String::from_utf8_lossy(e.as_bytes())
                    ),
                )
            })?;
            let Some(name) = normalize(&raw, "") else {
                return Err(member_err(
                    path,
                    &raw,
                    "member name escapes the archive (absolute or with ..)".into(),
                ));
            };
            let link = || -> Result<String, ImagesError> {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| member_err(path, &raw, "link without a target".into()))?;
                String::from_utf8(target.into_owned())
                    .map_err(|_| member_err(path, &raw, "link target is not UTF-8".into()))
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => TarMember::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => TarMember::Symlink(link()?),
                tar::EntryType::Link => TarMember::Hardlink(link()?),
                tar::EntryType::Directory => continue,
                tar::EntryType::Char => TarMember::Other("a character device"),
                tar::EntryType::Block => TarMember::Other("a block device"),
                tar::EntryType::Fifo => TarMember::Other("a fifo"),
                _ => TarMember::Other("not a regular file"),
            };
            members.insert(name, member);
            if members.len() > MAX_MEMBERS {
                return Err(whole(
                    path,
                    format!("more than {MAX_MEMBERS} members; not an image archive"),
                ));
            }
        }
        Ok(ArchiveReader {
            path: path.to_owned(),
            kind: ReaderKind::Tar(members),
        })
    }

    /// The archive's path, as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the archive is a directory.
    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, ReaderKind::Dir)
    }

    /// Whether a member exists (after following links).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.open_member(name).is_ok()
    }

    /// A reader of a member's bytes and their length. Links are followed inside the archive;
    /// anything that is not, in the end, a regular file inside it is an error naming the member.
    pub(crate) fn open_member(
        &self,
        name: &str,
    ) -> Result<(Box<dyn Read + Send>, u64), ImagesError> {
        let err = |message: String| member_err(&self.path, name, message);
        let Some(mut current) = normalize(name, "") else {
            return Err(err("escapes the archive".into()));
        };
        match &self.kind {
            ReaderKind::Dir => {
                // Refuse a symbolic link anywhere on the way, so nothing outside the layout
                // directory is read through it.
                let mut walked = self.path.clone();
                for component in current.split('/') {
                    walked.push(component);
                    let meta = fs::symlink_metadata(&walked).map_err(|e| match e.kind() {
                        io::ErrorKind::NotFound => err("not in the archive".into()),
                        _ => err(e.to_string()),
                    })?;
                    if meta.file_type().is_symlink() {
                        return Err(err(format!(
                            "{} is a symbolic link; image layouts must hold their files",
                            walked.display()
                        )));
                    }
                }
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&walked)
                    .map_err(|e| err(e.to_string()))?;
                let meta = file.metadata().map_err(|e| err(e.to_string()))?;
                if !meta.is_file() {
                    let what = if meta.is_dir() {
                        "a directory"
                    } else if meta.file_type().is_fifo() {
                        "a fifo"
                    } else {
                        "not a regular file"
                    };
                    return Err(err(format!("is {what}")));
                }
                Ok((Box::new(file), meta.len()))
            }
            ReaderKind::Tar(members) => {
                for _ in 0..MAX_LINKS {
                    let member = members
                        .get(&current)
                        .ok_or_else(|| err(format!("{current} is not in the archive")))?;
                    let (target, base) = match member {
                        TarMember::File { offset, size } => {
                            let mut file = File::open(&self.path)
                                .map_err(|e| whole(&self.path, format!("cannot open: {e}")))?;
                            file.seek(SeekFrom::Start(*offset))
                                .map_err(|e| err(e.to_string()))?;
                            return Ok((Box::new(file.take(*size)), *size));
                        }
                        TarMember::Other(what) => return Err(err(format!("is {what}"))),
                        // A symbolic link is relative to its own directory, a hard link to the
                        // archive's root.
                        TarMember::Symlink(target) => (
                            target,
                            current
                                .rsplit_once('/')
                                .map_or("", |(dir, _)| dir)
                                .to_owned(),
                        ),
                        TarMember::Hardlink(target) => (target, String::new()),
                    };
                    // Name the link itself only when it is not the member asked for.
                    let via = if current == name.trim_start_matches("./") {
                        String::new()
                    } else {
                        format!(" (through {current})")
                    };
                    if target.starts_with('/') {
                        return Err(err(format!(
                            "links to the absolute path {target}, outside the archive{via}"
                        )));
                    }
                    current = normalize(target, &base).ok_or_else(|| {
                        err(format!("links to {target}, outside the archive{via}"))
                    })?;
                }
                Err(err(format!("more than {MAX_LINKS} links")))
            }
        }
    }

    /// Reads a small member whole, refusing one larger than `limit` before reading it.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImagesError> {
        let (mut reader, size) = self.open_member(name)?;
        if size > limit {
            return Err(member_err(
                &self.path,
                name,
                format!("is {size} bytes; more than the {limit} bytes allowed for it"),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| member_err(&self.path, name, e.to_string()))?;
        Ok(bytes)
    }
}

/// `name` resolved against the archive directory `base` ("" for the root), with `.` and empty
/// components removed; `None` if it is absolute or climbs out of the archive.
fn normalize(name: &str, base: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|c| !c.is_empty()).collect();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    // A name that climbs and comes back (`a/../b`) is still refused when it came from a tar
    // header: no tool writes one, and it hides what it names.
    if name.split('/').any(|c| c == "..") && base.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

pub(crate) fn whole(archive: &Path, message: String) -> ImagesError {
    ImagesError::ArchiveInvalid {
        archive: archive.to_owned(),
        message,
    }
}

pub(crate) fn member_err(archive: &Path, member: &str, message: String) -> ImagesError {
    ImagesError::ArchiveMember {
        archive: archive.to_owned(),
        member: member.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_inside_the_archive() {
        assert_eq!(normalize("./index.json", "").as_deref(), Some("index.json"));
        assert_eq!(
            normalize("blobs//sha256/ab", "").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../x", ""), None);
        assert_eq!(normalize("a/../../x", ""), None);
        assert_eq!(normalize("/etc/passwd", ""), None);
        assert_eq!(normalize("a/../b", ""), None);
        // Symlink targets are relative to the link's directory.
        assert_eq!(
            normalize("../b/layer.tar", "a").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalize("../../x", "a"), None);
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file
    }

    fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as a hostile tool would.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn add_link(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str, kind: tar::EntryType) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        let raw = &mut h.as_old_mut().linkname;
        raw[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    #[test]
    fn tar_members_are_read_in_place_and_links_stay_inside() {
        let file = tar_with(|b| {
            add_file(b, "a/layer.tar", b"layer bytes");
            add_link(b, "b/layer.tar", "../a/layer.tar", tar::EntryType::Symlink);
            add_link(b, "c", "a/layer.tar", tar::EntryType::Link);
            add_link(b, "evil", "/etc/passwd", tar::EntryType::Symlink);
            add_link(b, "d/evil", "../../etc/passwd", tar::EntryType::Symlink);
        });
        let reader = ArchiveReader::open(file.path()).unwrap();
        for name in ["a/layer.tar", "b/layer.tar", "./c"] {
            let bytes = reader.read_small(name, 100).unwrap();
            assert_eq!(bytes, b"layer bytes", "{name}");
        }
        let err = reader.read_small("a/layer.tar", 4).unwrap_err().to_string();
        assert!(
            err.contains("a/layer.tar") && err.contains("more than"),
            "{err}"
        );
        for name in ["evil", "d/evil"] {
            let err = reader.open_member(name).err().unwrap().to_string();
            assert!(
                err.contains(name) && err.contains("outside the archive"),
                "{err}"
            );
        }
        let err = reader.open_member("missing").err().unwrap().to_string();
        assert!(
            err.contains("missing") && err.contains("not in the archive"),
            "{err}"
        );
    }

    #[test]
    fn traversal_in_a_member_name_refuses_the_archive() {
        let file = tar_with(|b| {
            add_file(b, "index.json", b"{}");
            add_file(b, "../../../tmp/owned", b"x");
        });
        let err = ArchiveReader::open(file.path()).err().unwrap().to_string();
        assert!(err.contains("../../../tmp/owned"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }

    #[test]
    fn layout_directories_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("index.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("blobs/sha256/aa")).unwrap();
        let reader = ArchiveReader::open(dir.path()).unwrap();
        assert_eq!(reader.read_small("index.json", 10).unwrap(), b"{}");
        let err = reader
            .open_member("blobs/sha256/aa")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = reader.open_member("../x").err().unwrap().to_string();
        assert!(err.contains("escapes"), "{err}");
    }
}
