#!/usr/bin/env python3
"""Build the OCI image layouts that cairn's tests pull, unpack and compare.

Every layer tar is written here with `tarfile` (PAX format, numeric owners,
explicit modes, mtimes and xattrs) and every layout is assembled by hand:
blobs/sha256, config, manifest, index.json, oci-layout. Nothing comes from a
registry. Output is deterministic: the same inputs give the same digests, so
re-pushing an unchanged image is a no-op for the registry.

Each layout is built in a temporary directory, checked with `umoci stat` and
`umoci unpack` (layouts with zstd layers are only stat'ed: umoci 0.4.7 cannot
read zstd), checked against the expectations below, and only then renamed
into place. A stamp file records the recipe (this script, the busybox binary,
the Debian rootfs tarball) so a second run skips unchanged layouts.

Usage: build-images.py FIXTURES_DIR [NAME ...] [--debian-rootfs TAR] [--force]
Names: see LAYOUTS at the bottom; the default is every name but `debian`.
"""

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import zlib

# Fixed timestamp for every entry and config: 2023-11-14T22:13:20Z.
EPOCH = 1700000000
CREATED = "2023-11-14T22:13:20Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = "/bin/busybox"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_GZIP = MT_TAR + "+gzip"
MT_ZSTD = MT_TAR + "+zstd"
REF_NAME = "org.opencontainers.image.ref.name"

# A tar archive with no entries, exactly as Docker writes it (two zero blocks);
# its digest, sha256:5f70bf18…, is the well-known "empty layer".
EMPTY_TAR = b"\0" * 1024


class FixtureError(Exception):
    """A fixture could not be built or failed its checks."""


def log(msg):
    print(f"build-images: {msg}", file=sys.stderr, flush=True)


def sha256_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def jdump(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------
# Layer tarballs


class Layer:
    """The entries of one layer tar, in archive order.

    Parent directories are added automatically (0755 root:root) the first
    time a path below them is added, unless the caller declared them first
    or passed `implicit=True` (then the archive has no entry for them).
    """

    def __init__(self, comment, compress="gzip", raw=None):
        self.comment = comment
        self.compress = compress  # "gzip", "zstd" or None (uncompressed)
        self.raw = raw  # exact tar bytes, bypassing tarfile
        self.entries = []
        self.declared = set()

    def _parents(self, name, implicit):
        if implicit:
            return
        parts = name.rstrip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.declared:
                self.dir(parent)

    def _add(self, name, kind, mode, uid, gid, mtime, xattrs, data=None,
             linkname="", dev=(0, 0), implicit=False):
        self._parents(name, implicit)
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = mtime
        ti.linkname = linkname
        ti.devmajor, ti.devminor = dev
        ti.size = len(data) if data is not None else 0
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self.entries.append((ti, data))
        self.declared.add(name.rstrip("/"))
        return self

    def dir(self, name, mode=0o755, uid=0, gid=0, mtime=EPOCH, xattrs=None,
            implicit=False):
        return self._add(name, tarfile.DIRTYPE, mode, uid, gid, mtime, xattrs,
                         implicit=implicit)

    def file(self, name, data, mode=0o644, uid=0, gid=0, mtime=EPOCH,
             xattrs=None, implicit=False):
        if isinstance(data, str):
            data = data.encode()
        return self._add(name, tarfile.REGTYPE, mode, uid, gid, mtime, xattrs,
                         data=data, implicit=implicit)

    def symlink(self, name, target, uid=0, gid=0, mtime=EPOCH):
        return self._add(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime, None,
                         linkname=target)

    def hardlink(self, name, target, mode=0o644, uid=0, gid=0):
        """`target` is an archive path (no leading slash). Like GNU and Go tar,
        the entry repeats the target's metadata: some unpackers chmod/chown
        the link path, which changes the shared inode."""
        return self._add(name, tarfile.LNKTYPE, mode, uid, gid, EPOCH, None,
                         linkname=target)

    def chardev(self, name, major, minor, mode=0o666):
        return self._add(name, tarfile.CHRTYPE, mode, 0, 0, EPOCH, None,
                         dev=(major, minor))

    def fifo(self, name, mode=0o644):
        return self._add(name, tarfile.FIFOTYPE, mode, 0, 0, EPOCH, None)

    def whiteout(self, path):
        head, _, base = path.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}", b"")

    def opaque(self, dirpath):
        return self.file(f"{dirpath}/.wh..wh..opq", b"")

    def tar_bytes(self):
        if self.raw is not None:
            return self.raw
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for ti, data in self.entries:
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def compress(tar, how):
    if how == "gzip":
        return zlib.compress(tar, 6, wbits=31), MT_GZIP  # gzip, mtime 0
    if how == "zstd":
        out = subprocess.run(["zstd", "-q", "-c", "-3", "-T1"], input=tar,
                             stdout=subprocess.PIPE, check=True).stdout
        return out, MT_ZSTD
    if how is None:
        return tar, MT_TAR
    raise ValueError(how)


# --------------------------------------------------------------------------
# OCI layout assembly


class LayoutWriter:
    def __init__(self, path):
        self.path = path
        self.tags = []  # index.json entries
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.join(path, "blobs", "sha256"))

    def blob(self, data):
        digest = sha256_bytes(data)
        dest = os.path.join(self.path, "blobs", "sha256", digest[7:])
        if not os.path.exists(dest):
            with open(dest, "wb") as f:
                f.write(data)
        return digest, len(data)

    def blob_file(self, src, digest, size):
        """Move an already-hashed file in as a blob."""
        os.replace(src, os.path.join(self.path, "blobs", "sha256", digest[7:]))
        return digest, size

    def json_blob(self, media_type, obj):
        digest, size = self.blob(jdump(obj))
        return {"mediaType": media_type, "digest": digest, "size": size}

    def layer(self, layer, how=None):
        """Write one layer; returns (descriptor, diff_id)."""
        tar = layer.tar_bytes()
        data, mt = compress(tar, layer.compress if how is None else how)
        digest, size = self.blob(data)
        return {"mediaType": mt, "digest": digest, "size": size}, sha256_bytes(tar)

    def image(self, layer_descs, diff_ids, comments, arch="amd64",
              variant=None, config=None):
        cfg = {
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": config or {"Env": [PATH_ENV], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED,
                         "created_by": f"cairn rootfs-fixtures: {c}"}
                        for c in comments],
        }
        if variant:
            cfg["variant"] = variant
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": self.json_blob(MT_CONFIG, cfg),
            "layers": layer_descs,
        }
        desc = self.json_blob(MT_MANIFEST, manifest)
        desc["platform"] = {"architecture": arch, "os": "linux"}
        if variant:
            desc["platform"]["variant"] = variant
        return desc

    def index(self, manifests):
        return self.json_blob(MT_INDEX, {"schemaVersion": 2,
                                         "mediaType": MT_INDEX,
                                         "manifests": manifests})

    def tag(self, desc, tag):
        entry = {k: desc[k] for k in ("mediaType", "digest", "size")}
        entry["annotations"] = {REF_NAME: tag}
        self.tags.append(entry)

    def finish(self):
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(jdump({"schemaVersion": 2, "mediaType": MT_INDEX,
                           "manifests": self.tags}))


def write_image(lw, layers, tag, how=None, **kw):
    descs, diff_ids = [], []
    for layer in layers:
        d, diff = lw.layer(layer, how if layer.compress is not None else None)
        descs.append(d)
        diff_ids.append(diff)
    desc = lw.image(descs, diff_ids, [l.comment for l in layers], **kw)
    if tag:
        lw.tag(desc, tag)
    return desc


# --------------------------------------------------------------------------
# Image contents

PASSWD = """root:x:0:0:root:/root:/bin/sh
builder:x:1000:1000:builder:/home/builder:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
builder:x:1000:
nogroup:x:65534:
"""


def applets():
    out = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE,
                         check=True, text=True).stdout
    return sorted(a for a in out.split() if a != "busybox")


def busybox_files(layer, marker):
    for d in ("bin", "dev", "etc", "home", "proc", "sys", "usr", "var"):
        layer.dir(d)
    layer.dir("home/builder", uid=1000, gid=1000)
    layer.dir("root", mode=0o700)
    layer.dir("tmp", mode=0o1777)
    with open(BUSYBOX, "rb") as f:
        layer.file("bin/busybox", f.read(), mode=0o755)
    for name in applets():
        layer.symlink(f"bin/{name}", "busybox")
    layer.file("etc/passwd", PASSWD)
    layer.file("etc/group", GROUP)
    layer.file("etc/cairn-fixture", marker + "\n")
    return layer


def busybox_layer(marker="busybox", how="gzip"):
    return busybox_files(Layer(f"busybox files, /etc/cairn-fixture={marker}", how),
                         marker)


def text_blob(rng, size):
    words = ("cairn layer rootfs digest whiteout opaque snapshot overlay "
             "manifest index config blob tar gzip zstd registry pull push "
             "fixture busybox debian bookworm hardlink symlink xattr").split()
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        out.append(line)
        n += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


def layers_image_layers():
    """The ~22 layers of fixtures/layers. README.md describes each one."""
    L = []

    # L01: a working busybox base, plus a char device and a fifo.
    l = busybox_layer("busybox")
    l.comment = "L01 busybox base, char device 1:3, fifo"
    l.dir("cairn")
    l.dir("cairn/dev")
    l.chardev("cairn/dev/null", 1, 3)
    l.fifo("cairn/dev/fifo")
    L.append(l)

    # L02: paths that later layers white out, replace or link to.
    l = Layer("L02 targets for later whiteouts/replacements")
    l.file("cairn/wh/file-a", "a\n")
    l.file("cairn/wh/file-b", "b\n")
    l.file("cairn/wh/dir-gone/x", "x\n")
    l.file("cairn/wh/dir-gone/sub/z", "z\n")
    for d in ("opq-before", "opq-after"):
        l.file(f"cairn/{d}/old1", "old1\n")
        l.file(f"cairn/{d}/old2", "old2\n")
    l.file("cairn/opq-before/sub/old3", "old3\n")
    l.file("cairn/d2f/x", "x\n")
    l.file("cairn/d2f/sub/y", "y\n")
    l.file("cairn/d2f-wh/x", "x\n")
    l.file("cairn/f2d", "file, becomes a directory\n")
    l.file("cairn/f2s", "file, becomes a symlink\n")
    l.symlink("cairn/s2f", "wh/file-a")
    l.symlink("cairn/link-to-dir", "wh")
    l.file("cairn/recreate/file", "original\n")
    l.file("cairn/recreate-dir/old-a", "old-a\n")
    l.file("cairn/recreate-dir/old-sub/old-b", "old-b\n")
    l.file("cairn/hl/base-file", "hard-linked from a later layer\n",
           mode=0o640, uid=1000, gid=1000)
    L.append(l)

    # L03: whiteouts and opaque directories.
    l = Layer("L03 file/dir whiteouts, opaque dirs (marker first and last)")
    l.whiteout("cairn/wh/file-b")
    l.whiteout("cairn/wh/dir-gone")
    l.whiteout("cairn/wh/never-existed")
    l.dir("cairn/opq-before")
    l.opaque("cairn/opq-before")  # marker before its siblings
    l.file("cairn/opq-before/new1", "new1\n")
    l.dir("cairn/opq-after")
    l.file("cairn/opq-after/new1", "new1\n")
    l.file("cairn/opq-after/newdir/f", "f\n")
    l.opaque("cairn/opq-after")  # marker after its siblings
    l.dir("cairn/opq-new")
    l.opaque("cairn/opq-new")  # opaque dir with nothing below it
    L.append(l)

    # L04: type changes and deletions.
    l = Layer("L04 dir->file, file->dir, symlink->dir, file<->symlink, deletions")
    l.file("cairn/d2f", "was a directory\n")  # no whiteout: implicit replace
    l.whiteout("cairn/d2f-wh")  # explicit whiteout, then the file
    l.file("cairn/d2f-wh", "was a directory (explicit whiteout)\n")
    l.file("cairn/f2d/child", "child of a former file\n")
    l.symlink("cairn/f2s", "f2d/child")
    l.file("cairn/s2f", "was a symlink\n")
    l.file("cairn/link-to-dir/child", "must not land in cairn/wh\n")
    l.whiteout("cairn/recreate/file")
    l.whiteout("cairn/recreate-dir")
    L.append(l)

    # L05: re-create what L04 deleted.
    l = Layer("L05 re-create paths deleted in L04")
    l.file("cairn/recreate/file", "recreated\n", mode=0o600, uid=1000, gid=1000)
    l.dir("cairn/recreate-dir", mode=0o750)
    l.file("cairn/recreate-dir/new", "new\n")
    L.append(l)

    # L06: hard links, inside the layer and to a file of L02.
    l = Layer("L06 hard links within the layer and to a file of L02")
    l.file("cairn/hl/a", "a v1\n")
    l.hardlink("cairn/hl/a-link", "cairn/hl/a")
    l.hardlink("cairn/hl/sub/a-link2", "cairn/hl/a")
    l.hardlink("cairn/hl/base-link", "cairn/hl/base-file", 0o640, 1000, 1000)
    L.append(l)

    # L07: symlinks.
    l = Layer("L07 relative/absolute/dangling/looping symlinks")
    for name, target in SYMLINKS.items():
        l.symlink(f"cairn/sym/{name}", target)
    L.append(l)

    # L08: xattrs on files and directories.
    l = Layer("L08 user.* xattrs on files and dirs")
    l.dir("cairn/xattr", xattrs={"user.cairn.dir": "directory xattr"})
    l.file("cairn/xattr/file", "xattrs\n",
           xattrs={"user.cairn.note": "hello", "user.cairn.utf8": "ünïcödé"})
    l.file("cairn/xattr/replaced", "old, with an xattr\n",
           xattrs={"user.cairn.old": "1"})
    L.append(l)

    # L09: modes, owners, mtimes, implicit parents.
    l = Layer("L09 special modes, owners, mtimes, implicit parent dirs")
    for name, (mode, uid, gid) in MODES.items():
        if name.endswith("/"):
            l.dir(f"cairn/modes/{name}", mode=mode, uid=uid, gid=gid)
        else:
            l.file(f"cairn/modes/{name}", "" if name == "empty-file" else f"{name}\n",
                   mode=mode, uid=uid, gid=gid)
    l.file("cairn/owners/u1000", "1000:1000\n", uid=1000, gid=1000)
    l.file("cairn/owners/u65534", "65534:65534\n", uid=65534, gid=65534)
    l.file("cairn/owners/g42", "0:42\n", gid=42)
    l.dir("cairn/owners/dir1000", uid=1000, gid=1000)
    l.file("cairn/owners/dir1000/root-owned", "root in a 1000-owned dir\n")
    l.file("cairn/mtimes/epoch0", "mtime 0\n", mtime=0)
    l.file("cairn/mtimes/y2038", "mtime 2^31\n", mtime=2**31)
    l.dir("cairn/mtimes/dir", mtime=1000000000)
    l.file("cairn/mtimes/dir/child", "dir mtime must survive this child\n")
    l.file("cairn/implicit/a/b/file", "parents have no tar entries\n",
           implicit=True)
    L.append(l)

    # L10: awkward names; this layer is stored uncompressed.
    l = Layer("L10 non-ASCII, space and long names (uncompressed layer)", None)
    for name in NAMES:
        l.file(f"cairn/names/{name}", f"{name}\n")
    l.file(LONG_PATH, "long path\n")
    l.symlink("cairn/names/long-symlink", "/" + LONG_PATH)
    l.hardlink("cairn/names/long-hardlink", LONG_PATH)
    L.append(l)

    # L11: a large file.
    l = Layer("L11 a large random file and a zero file")
    l.file("cairn/big/random.bin", random.Random("big").randbytes(BIG_SIZE))
    l.file("cairn/big/zeros.bin", bytes(4 << 20))
    L.append(l)

    L.append(Layer("L12 empty layer (1024 zero bytes)", raw=EMPTY_TAR))

    # L13-L20: filler, many small files.
    for n in range(FILLER_LAYERS):
        rng = random.Random(f"filler-{n}")
        l = Layer(f"L{13 + n} filler: {FILLER_FILES} small files")
        for i in range(FILLER_FILES):
            size = rng.randint(256, 20000)
            data = rng.randbytes(size) if rng.random() < 0.6 else text_blob(rng, size)
            l.file(f"usr/share/cairn-filler/{n:02d}/d{i % 20:02d}/f{i:04d}", data)
        L.append(l)

    L.append(Layer("L21 empty layer again (same digest as L12)", raw=EMPTY_TAR))

    # L22: overrides of lower layers.
    l = Layer("L22 replace hard-linked file, drop xattr, chmod dir, delete applet")
    l.file("etc/cairn-fixture", "layers\n")
    l.whiteout("bin/vi")
    l.file("cairn/hl/a", "a v2\n")  # a-link and sub/a-link2 keep "a v1"
    l.dir("cairn/xattr", xattrs={"user.cairn.dir": "directory xattr"})
    l.file("cairn/xattr/replaced", "new, without xattrs\n")
    l.dir("cairn/wh", mode=0o750, uid=1000, gid=1000)
    L.append(l)
    return L


SYMLINKS = {
    "rel": "../hl/a",
    "abs": "/cairn/hl/a",
    "dangling": "/nonexistent/target",
    "dangling-rel": "missing",
    "dirlink": "../wh",
    "escape": "../../../../../../etc/passwd",
    "chain": "rel",
    "loop": "loop",
}
MODES = {  # name: (mode, uid, gid); a trailing / makes a directory
    "setuid": (0o4755, 0, 0),
    "setgid": (0o2755, 0, 0),
    "setgid-dir/": (0o2775, 0, 42),
    "setgid-dir/inside": (0o644, 0, 42),
    "sticky/": (0o1777, 0, 0),
    "sticky/file": (0o666, 1000, 1000),
    "f000": (0o000, 0, 0),
    "d000/": (0o000, 0, 0),
    "d000/inside": (0o644, 0, 0),
    "d0700/": (0o700, 1000, 1000),
    "d0700/secret": (0o600, 1000, 1000),
    "readonly-dir/": (0o555, 0, 0),
    "readonly-dir/file": (0o444, 0, 0),
    "empty-dir/": (0o755, 0, 0),
    "empty-file": (0o644, 0, 0),
    "exec": (0o755, 0, 0),
}
NAMES = ["with space", "ünïcödé", "файл", "日本語.txt", "emoji-🦀",
         "dir with space/file in dir", "-leading-dash", "quote'\"\\backslash"]
LONG_PATH = "cairn/names/long/" + "d" * 90 + "/" + "f" * 120
BIG_SIZE = 6 << 20
FILLER_LAYERS = 8
FILLER_FILES = 440


# --------------------------------------------------------------------------
# Checks after `umoci unpack` (root) of fixtures/layers


def check_layers_rootfs(root):
    errors = []

    def p(rel):
        return os.path.join(root, rel)

    def expect(cond, what):
        if not cond:
            errors.append(what)

    def content(rel):
        with open(p(rel), "rb") as f:
            return f.read().decode()

    def lexists(rel):
        return os.path.lexists(p(rel))

    def mode_of(rel):
        return stat.S_IMODE(os.lstat(p(rel)).st_mode)

    st = os.lstat(p("cairn/dev/null"))
    if os.geteuid() == 0:
        expect(stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1
               and os.minor(st.st_rdev) == 3, "cairn/dev/null is char 1:3")
        expect(stat.S_ISFIFO(os.lstat(p("cairn/dev/fifo")).st_mode), "fifo")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            expect(not n.startswith(".wh."), f"whiteout left: {dirpath}/{n}")
    expect(content("cairn/wh/file-a") == "a\n", "wh/file-a kept")
    for gone in ("cairn/wh/file-b", "cairn/wh/dir-gone", "cairn/wh/never-existed",
                 "cairn/wh/child", "cairn/opq-before/old1", "cairn/opq-before/sub",
                 "cairn/opq-after/old1", "cairn/opq-after/old2",
                 "cairn/recreate-dir/old-a", "cairn/recreate-dir/old-sub",
                 "bin/vi"):
        expect(not lexists(gone), f"{gone} must not exist")
    expect(sorted(os.listdir(p("cairn/opq-before"))) == ["new1"], "opq-before")
    expect(sorted(os.listdir(p("cairn/opq-after"))) == ["new1", "newdir"], "opq-after")
    expect(os.listdir(p("cairn/opq-new")) == [], "opq-new empty")
    expect(content("cairn/d2f") == "was a directory\n", "d2f is a file")
    expect(content("cairn/d2f-wh").startswith("was a directory"), "d2f-wh is a file")
    expect(content("cairn/f2d/child").startswith("child"), "f2d is a dir")
    expect(os.readlink(p("cairn/f2s")) == "f2d/child", "f2s is a symlink")
    expect(not os.path.islink(p("cairn/s2f")) and content("cairn/s2f") == "was a symlink\n", "s2f")
    expect(not os.path.islink(p("cairn/link-to-dir")) and os.path.isdir(p("cairn/link-to-dir")),
           "link-to-dir is a real dir")
    expect(content("cairn/recreate/file") == "recreated\n" and mode_of("cairn/recreate/file") == 0o600,
           "recreate/file")
    expect(os.listdir(p("cairn/recreate-dir")) == ["new"], "recreate-dir has only new")
    expect(content("cairn/hl/a") == "a v2\n", "hl/a replaced")
    expect(content("cairn/hl/a-link") == "a v1\n", "hl/a-link keeps a v1")
    expect(os.stat(p("cairn/hl/a-link")).st_ino == os.stat(p("cairn/hl/sub/a-link2")).st_ino,
           "a-link and a-link2 share an inode")
    expect(os.stat(p("cairn/hl/base-link")).st_ino == os.stat(p("cairn/hl/base-file")).st_ino,
           "base-link is a hard link to base-file")
    for name, target in SYMLINKS.items():
        expect(os.readlink(p(f"cairn/sym/{name}")) == target, f"sym/{name}")
    xa = dict((k, os.getxattr(p("cairn/xattr/file"), k))
              for k in os.listxattr(p("cairn/xattr/file")))
    expect(xa.get("user.cairn.note") == b"hello", "xattr on file")
    expect(xa.get("user.cairn.utf8") == "ünïcödé".encode(), "utf-8 xattr")
    expect(os.getxattr(p("cairn/xattr"), "user.cairn.dir") == b"directory xattr", "xattr on dir")
    expect(not [x for x in os.listxattr(p("cairn/xattr/replaced")) if x.startswith("user.")],
           "replaced file lost its xattr")
    for name, (mode, uid, gid) in MODES.items():
        st = os.lstat(p("cairn/modes/" + name.rstrip("/")))
        expect((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid),
               f"modes/{name}: {oct(stat.S_IMODE(st.st_mode))} {st.st_uid}:{st.st_gid}")
    for rel, ids in (("cairn/owners/u1000", (1000, 1000)), ("cairn/owners/u65534", (65534, 65534)),
                     ("cairn/owners/g42", (0, 42)), ("cairn/owners/dir1000", (1000, 1000))):
        st = os.lstat(p(rel))
        expect((st.st_uid, st.st_gid) == ids, f"owner of {rel}")
    st = os.lstat(p("cairn/wh"))
    expect((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1000), "wh chmod")
    expect(os.lstat(p("cairn/mtimes/epoch0")).st_mtime == 0, "mtime 0")
    expect(os.lstat(p("cairn/mtimes/y2038")).st_mtime == 2**31, "mtime 2^31")
    expect(os.lstat(p("cairn/mtimes/dir")).st_mtime == 1000000000, "dir mtime")
    expect(os.path.isfile(p("cairn/implicit/a/b/file")), "implicit parents")
    for name in NAMES:
        expect(content(f"cairn/names/{name}") == f"{name}\n", f"names/{name}")
    expect(os.stat(p("cairn/names/long-hardlink")).st_ino == os.stat(p(LONG_PATH)).st_ino, "long hardlink")
    expect(os.path.getsize(p("cairn/big/random.bin")) == BIG_SIZE, "big file")
    nfill = sum(len(f) for _, _, f in os.walk(p("usr/share/cairn-filler")))
    expect(nfill == FILLER_LAYERS * FILLER_FILES, f"filler count {nfill}")
    expect(content("etc/cairn-fixture") == "layers\n", "marker")
    if errors:
        raise FixtureError("layers rootfs differs from expectations:\n  " + "\n  ".join(errors))


def check_busybox_rootfs(marker):
    def check(root):
        with open(os.path.join(root, "etc/cairn-fixture")) as f:
            got = f.read()
        if got != marker + "\n":
            raise FixtureError(f"/etc/cairn-fixture is {got!r}, want {marker!r}")
        if os.readlink(os.path.join(root, "bin/sh")) != "busybox":
            raise FixtureError("bin/sh is not a symlink to busybox")
        if stat.S_IMODE(os.lstat(os.path.join(root, "tmp")).st_mode) != 0o1777:
            raise FixtureError("/tmp is not 1777")
    return check


def check_debian_rootfs(root):
    for rel in ("bin/bash", "usr/bin/apt", "etc/debian_version"):
        if not os.path.lexists(os.path.join(root, rel)):
            raise FixtureError(f"debian rootfs lacks {rel}")


# --------------------------------------------------------------------------
# Layout recipes


def build_busybox(lw):
    write_image(lw, [busybox_layer()], "latest")
    return [("latest", check_busybox_rootfs("busybox"))]


def build_busybox_uncompressed(lw):
    write_image(lw, [busybox_layer(how=None)], "uncompressed")
    return [("uncompressed", check_busybox_rootfs("busybox"))]


def build_busybox_config(lw):
    config = {
        "User": "builder",
        "Env": [PATH_ENV, "FOO=bar", "EMPTY=", "WITH_EQUALS=a=b"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ['echo "FOO=$FOO uid=$(id -u) gid=$(id -g) pwd=$(pwd)"'],
        "WorkingDir": "/home/builder",
        "Labels": {"org.cairn.fixture": "config"},
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/data": {}},
        "StopSignal": "SIGTERM",
    }
    write_image(lw, [busybox_layer()], "config", config=config)
    return [("config", check_busybox_rootfs("busybox"))]


def build_busybox_multi(lw):
    amd = write_image(lw, [busybox_layer()], "multi-amd64")
    arm = write_image(lw, [busybox_layer("busybox-arm64")], "multi-arm64",
                      arch="arm64", variant="v8")
    lw.tag(lw.index([amd, arm]), "multi")
    return [("multi-amd64", check_busybox_rootfs("busybox")),
            ("multi-arm64", check_busybox_rootfs("busybox-arm64")),
            ("multi", "index")]


_LAYERS = []


def layers_cached():
    if not _LAYERS:
        _LAYERS.extend(layers_image_layers())
    return _LAYERS


def build_layers(lw):
    write_image(lw, layers_cached(), "latest", how="gzip")
    return [("latest", check_layers_rootfs)]


def build_layers_peer(lw):
    """layers:latest without the hard link into a lower layer (L06's base-link).

    Docker and podman unpack each layer on its own and cannot resolve such a link, so the
    benchmarks compare tools on this variant; everything else is identical.
    """
    import copy
    layers = copy.deepcopy(layers_cached())
    for l in layers:
        if l.comment.startswith("L06"):
            l.entries = [e for e in l.entries if e[0].name != "cairn/hl/base-link"]
    write_image(lw, layers, "peer", how="gzip")
    return [("peer", lambda rootfs: None)]


def build_layers_zstd(lw):
    write_image(lw, layers_cached(), "zstd", how="zstd")
    return [("zstd", "stat")]  # umoci 0.4.7 cannot unpack zstd


def build_debian(lw, rootfs_tar):
    tmp = os.path.join(lw.path, "layer.tmp")
    h_tar, h_gz = hashlib.sha256(), hashlib.sha256()
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(rootfs_tar, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            h_tar.update(chunk)
            out = comp.compress(chunk)
            h_gz.update(out)
            dst.write(out)
        out = comp.flush()
        h_gz.update(out)
        dst.write(out)
    size = os.path.getsize(tmp)
    digest = "sha256:" + h_gz.hexdigest()
    lw.blob_file(tmp, digest, size)
    desc = lw.image([{"mediaType": MT_GZIP, "digest": digest, "size": size}],
                    ["sha256:" + h_tar.hexdigest()],
                    ["debootstrap --variant=minbase bookworm"])
    lw.tag(desc, "bookworm")
    return [("bookworm", check_debian_rootfs)]


LAYOUTS = {  # layout dir name: builder
    "busybox": build_busybox,
    "busybox-uncompressed": build_busybox_uncompressed,
    "busybox-config": build_busybox_config,
    "busybox-multi": build_busybox_multi,
    "layers": build_layers,
    "layers-zstd": build_layers_zstd,
    "layers-peer": build_layers_peer,
    "debian": build_debian,
}


# --------------------------------------------------------------------------
# Driver


def recipe(name, debian_rootfs):
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    h.update(name.encode())
    if name == "debian":
        st = os.stat(debian_rootfs)
        h.update(f"{debian_rootfs} {st.st_size} {st.st_mtime_ns}".encode())
    else:
        with open(BUSYBOX, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def umoci_check(layout, tag, check, tmpdir):
    """check: a function of the unpacked rootfs, "stat" (only `umoci stat`)
    or "index" (an image index, which umoci 0.4.7 cannot stat)."""
    ref = f"{layout}:{tag}"
    if check == "index":
        return
    r = subprocess.run(["umoci", "stat", "--image", ref], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise FixtureError(f"umoci stat {ref} failed: {r.stderr.strip()}")
    if check == "stat":
        return
    bundle = os.path.join(tmpdir, "umoci-check")
    if os.path.exists(bundle):
        rmtree_force(bundle)
    cmd = ["umoci", "unpack", "--image", ref, bundle]
    if os.geteuid() != 0:
        cmd.insert(2, "--rootless")
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise FixtureError(f"umoci unpack {ref} failed: {r.stderr.strip()}")
    try:
        check(os.path.join(bundle, "rootfs"))
    finally:
        rmtree_force(bundle)


def rmtree_force(path):
    """rmtree that also works for mode-000 directories when not root."""
    def onerror(func, p, _exc):
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)
    shutil.rmtree(path, onerror=onerror)


def build(fixtures, name, force, debian_rootfs):
    layouts = os.path.join(fixtures, "layouts")
    stamps = os.path.join(fixtures, "stamps")
    tmpdir = os.path.join(fixtures, "tmp")
    for d in (layouts, stamps, tmpdir):
        os.makedirs(d, exist_ok=True)
    final = os.path.join(layouts, name)
    stamp = os.path.join(stamps, f"layout-{name}")
    want = recipe(name, debian_rootfs)
    if not force and os.path.isdir(final) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == want:
                return False
    log(f"building layout {name}")
    work = os.path.join(layouts, f".{name}.tmp")
    lw = LayoutWriter(work)
    builder = LAYOUTS[name]
    checks = builder(lw, debian_rootfs) if name == "debian" else builder(lw)
    lw.finish()
    for tag, check in checks:
        umoci_check(work, tag, check, tmpdir)
    if os.path.exists(stamp):
        os.unlink(stamp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(work, final)
    with open(stamp, "w") as f:
        f.write(want + "\n")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixtures")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--debian-rootfs", help="tar of a debootstrap'ed rootfs")
    ap.add_argument("--force", action="store_true", help="rebuild even if stamped")
    args = ap.parse_args()
    names = args.names or [n for n in LAYOUTS if n != "debian"]
    for n in names:
        if n not in LAYOUTS:
            ap.error(f"unknown layout {n!r}; known: {', '.join(LAYOUTS)}")
        if n == "debian" and not args.debian_rootfs:
            ap.error("layout debian needs --debian-rootfs")
    if not os.access(BUSYBOX, os.X_OK):
        sys.exit(f"build-images: {BUSYBOX} missing: install busybox-static")
    try:
        for n in names:
            build(os.path.abspath(args.fixtures), n, args.force, args.debian_rootfs)
    except (FixtureError, subprocess.CalledProcessError, OSError) as e:
        sys.exit(f"build-images: error: {e}")


if __name__ == "__main__":
    main()
