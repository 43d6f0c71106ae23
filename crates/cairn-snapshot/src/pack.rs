//! Packing an overlay upper directory into an OCI layer: the reverse of [`crate::apply`].
//!
//! An upper directory holds what one step changed, in overlayfs's own terms; a layer says the
//! same in OCI's. Packing translates back:
//!
//! | in the upper directory | in the tar |
//! | --- | --- |
//! | a character device 0/0 at `dir/NAME` | an empty file `dir/.wh.NAME` |
//! | a regular file with `{trusted,user}.overlay.whiteout` (overlayfs's xattr whiteout) | `dir/.wh.NAME` |
//! | `dir` with `{trusted,user}.overlay.opaque = "y"` | `dir` and `dir/.wh..wh..opq` |
//! | anything else | itself, with owner, mode, xattrs and mtime |
//!
//! Owners are the ids as the packing process sees them, so a rootless store packs inside its
//! user namespace (where the store's subordinate ids read as the container's ids). A file that
//! carries `user.rootlesscontainers` (a single-id rootless store records the owner it could not
//! give there) is written with the owner recorded in it. Overlay attributes and that record are
//! never written to the tar.
//!
//! # Reproducible
//!
//! The same tree always packs to the same bytes: entries in byte order of their names, parents
//! before children; no user or group names, no access or change times, no PAX times; modes,
//! owners and mtimes (whole seconds) only; with [`PackOptions::source_date_epoch`] every later
//! mtime is clamped to it. Hard links within the layer become tar hard links to the first path
//! (in that order) of the same inode. Compression is reproducible too: gzip is written as
//! independently compressed blocks of [`GZIP_BLOCK`] bytes (one valid gzip member, as `pigz
//! --independent` writes it) so blocks compress on every core with the same output; zstd uses
//! libzstd's multithreaded mode, whose output does not depend on the number of workers.
//!
//! ```no_run
//! use std::path::Path;
//! use cairn_oci::LayerCompression;
//! use cairn_snapshot::apply::OverlayXattrs;
//! use cairn_snapshot::pack::{pack_layer, PackOptions};
//!
//! let out = std::fs::File::create("/tmp/layer.tar.gz")?;
//! let opts = PackOptions { xattrs: OverlayXattrs::Trusted, source_date_epoch: None };
//! let packed = pack_layer(Path::new("/var/lib/cairn/snapshots/7/fs"), &opts, LayerCompression::Gzip, out)?;
//! println!("{} (diff id {}), {} bytes", packed.digest, packed.diff_id, packed.size);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_oci::{Digest, LayerCompression, Sha256Writer};

use crate::apply::{is_overlay_xattr, OverlayXattrs};
use crate::rootless_xattr::{self, Resource, NOOP_ID};

/// How big the independently compressed gzip blocks are: large enough that the ratio stays
/// within a fraction of a percent of one stream, small enough that a 20 MB layer keeps every
/// core busy.
pub const GZIP_BLOCK: usize = 1 << 20;

/// How to pack a layer.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// Which overlay attributes mark whiteouts and opaque directories in the upper directory.
    pub xattrs: OverlayXattrs,
    /// `SOURCE_DATE_EPOCH`: mtimes later than this are written as this.
    pub source_date_epoch: Option<u64>,
}

/// What packing produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackedLayer {
    /// sha256 of the compressed blob: the layer's digest in a manifest.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// sha256 of the uncompressed tar: the layer's diff id in the image config.
    pub diff_id: Digest,
    /// Tar entries written, whiteouts included (0: the directory holds no change).
    pub entries: u64,
}

/// Why an upper directory could not be packed; names the path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Reading the tree failed.
    #[error("{action} {path}: {source}")]
    Read {
        /// What was being done.
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing or compressing the blob failed.
    #[error("write layer blob: {0}")]
    Write(#[source] io::Error),
}

fn read_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PackError + 'a {
    move |source| PackError::Read {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Packs the upper directory `upper` as a layer compressed with `compression` into `out`.
pub fn pack_layer<W: Write + Send>(
    upper: &Path,
    opts: &PackOptions,
    compression: LayerCompression,
    out: W,
) -> Result<PackedLayer, PackError> {
    let span = tracing::debug_span!("pack_layer", upper = %upper.display());
    let _enter = span.enter();
    let counted = HashingWriter {
        inner: out,
        hasher: Sha256Writer::new(),
    };
    let (entries, diff_id, counted) = match compression {
        LayerCompression::None => {
            let (entries, diff_id, counted) = write_tar(upper, opts, counted)?;
            (entries, diff_id, counted)
        }
        LayerCompression::Gzip => {
            let gz = ParallelGzip::new(counted).map_err(PackError::Write)?;
            let (entries, diff_id, gz) = write_tar(upper, opts, gz)?;
            (entries, diff_id, gz.finish().map_err(PackError::Write)?)
        }
        LayerCompression::Zstd => {
            let mut enc =
                zstd::stream::write::Encoder::new(counted, 3).map_err(PackError::Write)?;
            enc.multithread(workers()).map_err(PackError::Write)?;
            enc.include_checksum(false).map_err(PackError::Write)?;
            let (entries, diff_id, enc) = write_tar(upper, opts, enc)?;
            (entries, diff_id, enc.finish().map_err(PackError::Write)?)
        }
    };
    let HashingWriter { mut inner, hasher } = counted;
    inner.flush().map_err(PackError::Write)?;
    let size = hasher.written();
    let packed = PackedLayer {
        digest: hasher.finish(),
        size,
        diff_id,
        entries,
    };
    tracing::debug!(digest = %packed.digest, diff_id = %packed.diff_id, size, entries, "packed layer");
    Ok(packed)
}

fn workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .max(1)
}

/// Writes the tar of `upper` into `out`, hashing it on the way. Returns the entry count, the
/// diff id and `out`.
fn write_tar<W: Write>(
    upper: &Path,
    opts: &PackOptions,
    out: W,
) -> Result<(u64, Digest, W), PackError> {
    let hashing = HashingWriter {
        inner: out,
        hasher: Sha256Writer::new(),
    };
    let mut packer = Packer {
        builder: tar::Builder::new(hashing),
        upper,
        opts,
        links: HashMap::new(),
        entries: 0,
    };
    packer.builder.mode(tar::HeaderMode::Deterministic);
    packer.builder.follow_symlinks(false);
    packer.dir_children(Path::new(""))?;
    let entries = packer.entries;
    let hashing = packer.builder.into_inner().map_err(PackError::Write)?;
    let HashingWriter { inner, hasher } = hashing;
    Ok((entries, hasher.finish(), inner))
}

struct Packer<'a, W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    upper: &'a Path,
    opts: &'a PackOptions,
    /// (device, inode) of files with several links → the first path packed.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

/// An entry's owner and the xattrs that go into the tar.
struct Attrs {
    uid: u32,
    gid: u32,
    xattrs: Vec<(OsString, Vec<u8>)>,
    opaque: bool,
    whiteout: bool,
}

impl<W: Write> Packer<'_, W> {
    fn dir_children(&mut self, rel: &Path) -> Result<(), PackError> {
        let path = self.upper.join(rel);
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .map_err(read_err("list", &path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err("list", &path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            self.entry(&rel.join(&name), &name)?;
        }
        Ok(())
    }

    fn attrs(&self, path: &Path, meta: &fs::Metadata) -> Result<Attrs, PackError> {
        let mut attrs = Attrs {
            uid: meta.uid(),
            gid: meta.gid(),
            xattrs: Vec::new(),
            opaque: false,
            whiteout: false,
        };
        // Symlinks cannot carry user.* attributes; reading them only costs a syscall each.
        if meta.file_type().is_symlink() {
            return Ok(attrs);
        }
        let names = match xattr::list(path) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(attrs),
            Err(e) => return Err(read_err("list xattrs of", path)(e)),
        };
        let prefix = match self.opts.xattrs {
            OverlayXattrs::Trusted => "trusted.overlay.",
            OverlayXattrs::User => "user.overlay.",
        };
        let mut names: Vec<OsString> = names.collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let bytes = name.as_bytes();
            let value = match xattr::get(path, &name) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => return Err(read_err("read xattr of", path)(e)),
            };
            if let Some(rest) = bytes.strip_prefix(prefix.as_bytes()) {
                match rest {
                    b"opaque" => attrs.opaque = value == b"y",
                    b"whiteout" => attrs.whiteout = true,
                    // A renamed directory or a metadata-only copy-up keeps its content in a
                    // lower layer: the upper directory alone does not describe the change.
                    // (Mounted with redirect_dir and metacopy off, as the kernel defaults, this
                    // never happens; refusing beats writing a layer that lacks the files.)
                    b"redirect" | b"metacopy" => {
                        return Err(PackError::Read {
                            action: "pack (overlay redirect or metacopy entry, whose content lives in a lower layer)",
                            path: path.to_owned(),
                            source: io::Error::from(io::ErrorKind::Unsupported),
                        })
                    }
                    _ => {}
                }
                continue;
            }
            if is_overlay_xattr(bytes) {
                continue;
            }
            if bytes == rootless_xattr::XATTR_NAME.as_bytes() {
                if let Some(r) = Resource::decode(&value) {
                    if r.uid != NOOP_ID {
                        attrs.uid = r.uid;
                    }
                    if r.gid != NOOP_ID {
                        attrs.gid = r.gid;
                    }
                }
                continue;
            }
            attrs.xattrs.push((name, value));
        }
        Ok(attrs)
    }

    fn mtime(&self, meta: &fs::Metadata) -> u64 {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        match self.opts.source_date_epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        }
    }

    fn header(&self, meta: &fs::Metadata, attrs: &Attrs, kind: tar::EntryType) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(attrs.uid.into());
        header.set_gid(attrs.gid.into());
        header.set_mtime(self.mtime(meta));
        header.set_size(0);
        header
    }

    /// The header of a whiteout or opaque marker: an empty root-owned file.
    fn marker_header(&self, meta: &fs::Metadata) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime(meta));
        header.set_size(0);
        header
    }

    fn append(
        &mut self,
        header: &mut tar::Header,
        rel: &Path,
        attrs: &Attrs,
        data: impl Read,
    ) -> Result<(), PackError> {
        if !attrs.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = attrs
                .xattrs
                .iter()
                .map(|(name, value)| {
                    (
                        format!("SCHILY.xattr.{}", name.to_string_lossy()),
                        value.as_slice(),
                    )
                })
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(PackError::Write)?;
        }
        self.builder
            .append_data(header, rel, data)
            .map_err(PackError::Write)?;
        self.entries += 1;
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path, name: &[u8], meta: &fs::Metadata) -> Result<(), PackError> {
        let mut marker = b".wh.".to_vec();
        marker.extend_from_slice(name);
        let path = rel
            .parent()
            .unwrap_or(Path::new(""))
            .join(OsString::from_vec(marker));
        let mut header = self.marker_header(meta);
        self.builder
            .append_data(&mut header, &path, io::empty())
            .map_err(PackError::Write)?;
        self.entries += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &Path, name: &OsString) -> Result<(), PackError> {
        let path = self.upper.join(rel);
        let meta = fs::symlink_metadata(&path).map_err(read_err("stat", &path))?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            return self.whiteout(rel, name.as_bytes(), &meta);
        }
        let attrs = self.attrs(&path, &meta)?;
        if attrs.whiteout && ft.is_file() && meta.len() == 0 {
            return self.whiteout(rel, name.as_bytes(), &meta);
        }
        if ft.is_dir() {
            let mut header = self.header(&meta, &attrs, tar::EntryType::Directory);
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            self.append(&mut header, Path::new(&name), &attrs, io::empty())?;
            if attrs.opaque {
                let mut marker = self.marker_header(&meta);
                self.builder
                    .append_data(&mut marker, rel.join(".wh..wh..opq"), io::empty())
                    .map_err(PackError::Write)?;
                self.entries += 1;
            }
            return self.dir_children(rel);
        }
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(read_err("read link", &path))?;
            let mut header = self.header(&meta, &attrs, tar::EntryType::Symlink);
            self.builder
                .append_link(&mut header, rel, &target)
                .map_err(PackError::Write)?;
            self.entries += 1;
            return Ok(());
        }
        if meta.nlink() > 1 && !ft.is_dir() {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = self.header(&meta, &attrs, tar::EntryType::Link);
                self.builder
                    .append_link(&mut header, rel, &first)
                    .map_err(PackError::Write)?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, rel.to_owned());
        }
        if ft.is_file() {
            let file = File::open(&path).map_err(read_err("open", &path))?;
            let mut header = self.header(&meta, &attrs, tar::EntryType::Regular);
            header.set_size(meta.len());
            // A file that changes while it is packed would give a corrupt tar: read exactly
            // the size the header announces, and fail if the file got shorter.
            let mut exact = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
                path: path.clone(),
            };
            return self.append(&mut header, rel, &attrs, &mut exact);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets have no tar form; Docker and containerd leave them out too.
            tracing::debug!(path = %path.display(), "skipping socket");
            return Ok(());
        };
        let mut header = self.header(&meta, &attrs, kind);
        let rdev = meta.rdev();
        header
            .set_device_major(libc::major(rdev))
            .map_err(PackError::Write)?;
        header
            .set_device_minor(libc::minor(rdev))
            .map_err(PackError::Write)?;
        self.append(&mut header, rel, &attrs, io::empty())
    }
}

/// Reads exactly `left` bytes or fails naming the file.
struct Exact<R> {
    inner: R,
    left: u64,
    path: PathBuf,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was packed", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes what is written through it: the uncompressed tar (the diff id) and, wrapped around
/// the compressor's output, the blob (its digest).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Writer,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip writer that compresses [`GZIP_BLOCK`]-sized blocks independently on every core and
/// writes them in order as one gzip member: each block is a raw deflate stream ended with a
/// full flush (byte-aligned, no dictionary carried over), the last one with the final block.
/// The output depends only on the input, never on the number of threads.
pub struct ParallelGzip<W: Write> {
    out: W,
    pending: Vec<Vec<u8>>,
    current: Vec<u8>,
    crc: flate2::Crc,
    threads: usize,
}

impl<W: Write> ParallelGzip<W> {
    /// Starts a gzip member: a fixed header (no name, no mtime, OS "unknown").
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let threads = workers() as usize;
        Ok(ParallelGzip {
            out,
            pending: Vec::new(),
            current: Vec::with_capacity(GZIP_BLOCK),
            crc: flate2::Crc::new(),
            threads,
        })
    }

    /// Compresses the pending blocks, `last` marking the final one, and writes them in order.
    fn drain(&mut self, last: bool) -> io::Result<()> {
        let blocks = std::mem::take(&mut self.pending);
        if blocks.is_empty() {
            return Ok(());
        }
        let count = blocks.len();
        let compressed: Vec<io::Result<Vec<u8>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = blocks
                .iter()
                .enumerate()
                .map(|(i, block)| {
                    let finish = last && i + 1 == count;
                    scope.spawn(move || deflate_block(block, finish))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("compression thread panicked")))
                })
                .collect()
        });
        for block in compressed {
            self.out.write_all(&block?)?;
        }
        Ok(())
    }

    /// Writes the last block and the trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let current = std::mem::take(&mut self.current);
        self.pending.push(current);
        self.drain(true)?;
        let crc = self.crc.sum();
        let len = self.crc.amount();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn deflate_block(block: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut compress = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(block.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Full
    };
    loop {
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&block[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done_input = compress.total_in() as usize == block.len();
        match status {
            Status::StreamEnd => break,
            // A full flush is complete when all input is in and output room was left over.
            _ if !last && done_input && out.len() < out.capacity() => break,
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
    }
    Ok(out)
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_BLOCK - self.current.len();
        let n = room.min(buf.len());
        self.current.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.current.len() == GZIP_BLOCK {
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(GZIP_BLOCK));
            self.pending.push(full);
            if self.pending.len() >= self.threads * 2 {
                self.drain(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::{apply_with, attrs, is_root, Tar};
    use std::os::unix::fs::PermissionsExt;

    fn pack(upper: &Path, xattrs: OverlayXattrs, c: LayerCompression) -> (PackedLayer, Vec<u8>) {
        let mut out = Vec::new();
        let opts = PackOptions {
            xattrs,
            source_date_epoch: Some(1_700_000_000),
        };
        let packed = pack_layer(upper, &opts, c, &mut out).unwrap();
        (packed, out)
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u64, u32, u64)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn gzip_blocks_decode_and_do_not_depend_on_threads() {
        let data: Vec<u8> = (0..(GZIP_BLOCK * 5 + 12345))
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let mut outputs = Vec::new();
        for threads in [1, 3, 8] {
            let mut gz = ParallelGzip::new(Vec::new()).unwrap();
            gz.threads = threads;
            gz.write_all(&data).unwrap();
            outputs.push(gz.finish().unwrap());
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&outputs[0][..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, data);
        // The empty stream is a valid gzip member too.
        let empty = ParallelGzip::new(Vec::new()).unwrap().finish().unwrap();
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert!(decoded.is_empty());
    }

    /// A layer with whiteouts and an opaque directory, applied and packed again, says the
    /// same thing in OCI terms; the same tree packs to the same digest twice.
    #[test]
    fn whiteouts_and_opaque_dirs_round_trip_and_packing_is_reproducible() {
        if !is_root() {
            eprintln!("SKIPPED: needs real root (mknod whiteouts, trusted.* xattrs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for (i, xattrs) in [OverlayXattrs::Trusted, OverlayXattrs::User]
            .into_iter()
            .enumerate()
        {
            let upper = tmp.path().join(format!("upper{i}"));
            fs::create_dir(&upper).unwrap();
            let a = attrs(0o755, 0, 0, 1_600_000_000);
            let f = attrs(0o640, 1000, 100, 1_800_000_000);
            let tar = Tar::new()
                .dir("etc", a)
                .whiteout("etc/.wh.motd")
                .dir("opq", a)
                .whiteout("opq/.wh..wh..opq")
                .file("opq/new", b"fresh", f)
                .file("bin/tool", b"#!/bin/sh\n", f)
                .hardlink("bin/alias", "bin/tool")
                .symlink("bin/sh", "busybox", a)
                .finish();
            apply_with(&tar, &upper, &[], xattrs).unwrap();
            let (first, plain) = pack(&upper, xattrs, LayerCompression::None);
            let (second, _) = pack(&upper, xattrs, LayerCompression::None);
            assert_eq!(first, second, "same tree, same digest");
            assert_eq!(
                first.digest, first.diff_id,
                "uncompressed: digest is diff id"
            );
            let got = entries(&plain);
            let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
            assert_eq!(
                names,
                [
                    "bin/",
                    "bin/alias",
                    "bin/sh",
                    "bin/tool",
                    "etc/",
                    "etc/.wh.motd",
                    "opq/",
                    "opq/.wh..wh..opq",
                    "opq/new"
                ]
            );
            let by_name = |n: &str| got.iter().find(|e| e.0 == n).unwrap().clone();
            assert_eq!(by_name("bin/alias").1, tar::EntryType::Regular);
            assert_eq!(by_name("bin/tool").1, tar::EntryType::Link);
            assert_eq!(by_name("opq/new").2, 1000);
            assert_eq!(by_name("opq/new").3, 0o640);
            // Clamped to SOURCE_DATE_EPOCH; older times kept.
            assert_eq!(by_name("opq/new").4, 1_700_000_000);
            assert_eq!(by_name("etc/").4, 1_600_000_000);

            // Applying the packed layer again gives back the same upper directory.
            let again = tmp.path().join(format!("again{i}"));
            fs::create_dir(&again).unwrap();
            apply_with(&plain, &again, &[], xattrs).unwrap();
            let (third, _) = pack(&again, xattrs, LayerCompression::None);
            assert_eq!(third.diff_id, first.diff_id);

            // Compressed forms are reproducible and carry the same diff id.
            for c in [LayerCompression::Gzip, LayerCompression::Zstd] {
                let (x, _) = pack(&upper, xattrs, c);
                let (y, _) = pack(&upper, xattrs, c);
                assert_eq!(x, y);
                assert_eq!(x.diff_id, first.diff_id);
            }
        }
    }

    /// overlayfs's xattr whiteouts and the rootless owner record, as a plain user can make
    /// them (no mknod, no chown).
    #[test]
    fn xattr_whiteouts_and_recorded_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path();
        fs::create_dir(upper.join("d")).unwrap();
        File::create(upper.join("d/gone")).unwrap();
        if xattr::set(upper.join("d/gone"), "user.overlay.whiteout", b"").is_err() {
            eprintln!("SKIPPED: no user xattrs on this filesystem");
            return;
        }
        fs::write(upper.join("d/owned"), b"x").unwrap();
        fs::set_permissions(upper.join("d/owned"), fs::Permissions::from_mode(0o600)).unwrap();
        let record = Resource {
            uid: 1234,
            gid: NOOP_ID,
        };
        xattr::set(
            upper.join("d/owned"),
            rootless_xattr::XATTR_NAME,
            &record.encode(),
        )
        .unwrap();
        xattr::set(upper.join("d/owned"), "user.kept", b"v").unwrap();
        let (_, plain) = pack(upper, OverlayXattrs::User, LayerCompression::None);
        let mut archive = tar::Archive::new(&plain[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let uid = e.header().uid().unwrap();
            let gid = e.header().gid().unwrap();
            let mut pax = Vec::new();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    pax.push(ext.key().unwrap().to_owned());
                }
            }
            seen.push((path, uid, gid, pax));
        }
        let me = nix::unistd::getgid().as_raw() as u64;
        assert_eq!(
            seen,
            [
                (
                    "d/".to_owned(),
                    nix::unistd::getuid().as_raw() as u64,
                    me,
                    vec![]
                ),
                ("d/.wh.gone".to_owned(), 0, 0, vec![]),
                (
                    "d/owned".to_owned(),
                    1234,
                    me,
                    vec!["SCHILY.xattr.user.kept".to_owned()]
                ),
            ]
        );
    }
}
