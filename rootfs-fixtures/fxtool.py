#!/usr/bin/env python3
"""Small helpers for setup.sh that are awkward in bash.

  fxtool.py spawn PIDFILE LOGFILE -- CMD...   start CMD detached (new session,
                                              stdin /dev/null, output to LOGFILE)
                                              and write its pid
  fxtool.py wait-http URL SECONDS [PIDFILE]   wait until URL gives any HTTP
                                              answer (401 counts); fail early
                                              if PIDFILE's process dies
  fxtool.py port-open HOST PORT               exit 0 if something listens
  fxtool.py tag-digest LAYOUT TAG             digest that LAYOUT's index.json
                                              gives TAG
  fxtool.py layer-digest LAYOUT TAG           digest of the first layer of TAG
  fxtool.py corrupt BLOBFILE DIGEST MODE      flip bytes of a registry blob in
                                              place (same size); MODE is
                                              gzip-header or tar-member:PATH
  fxtool.py is-corrupt BLOBFILE DIGEST        exit 0 if the file no longer
                                              matches DIGEST
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request


def die(msg):
    sys.exit(f"fxtool: {msg}")


def spawn(pidfile, logfile, cmd):
    with open(logfile, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(cmd, stdin=null, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{proc.pid}\n")
    os.replace(pidfile + ".tmp", pidfile)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; it only lingers until its parent reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_http(url, seconds, pidfile=None):
    deadline = time.monotonic() + float(seconds)
    pid = None
    if pidfile:
        with open(pidfile) as f:
            pid = int(f.read())
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code  # any HTTP answer means the server is up
        except (urllib.error.URLError, OSError) as e:
            last = e
        if pid is not None and not alive(pid):
            die(f"process {pid} exited before {url} answered")
        time.sleep(0.1)
    die(f"{url} did not answer within {seconds}s (last error: {last})")


def port_open(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def load_json(path):
    with open(path) as f:
        return json.load(f)


def tag_descriptor(layout, tag):
    for m in load_json(os.path.join(layout, "index.json"))["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    die(f"{layout} has no tag {tag}")


def blob_path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def layer_digest(layout, tag):
    m = load_json(blob_path(layout, tag_descriptor(layout, tag)["digest"]))
    return m["layers"][0]["digest"]


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def corrupt(path, digest, mode):
    """Flip bytes so that the blob still decodes: only a client that checks
    the digest notices.

    gzip-header: invert the 4-byte MTIME field of the gzip header, which
      decompressors ignore; the tar inside is unchanged.
    tar-member:PATH: invert 16 bytes in the middle of PATH's data in an
      uncompressed tar; the archive stays well-formed.
    """
    if file_digest(path) != digest:
        die(f"{path} does not match {digest}; refusing to corrupt it twice")
    if mode == "gzip-header":
        with open(path, "rb") as f:
            head = f.read(10)
        if head[:3] != b"\x1f\x8b\x08":
            die(f"{path} is not gzip")
        offset, length = 4, 4
    elif mode.startswith("tar-member:"):
        member = mode.split(":", 1)[1]
        with tarfile.open(path, "r:") as tf:
            ti = tf.getmember(member)
            offset, length = ti.offset_data + ti.size // 2, 16
    else:
        die(f"unknown corruption mode {mode}")
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "spawn":
        if len(args) < 4 or args[2] != "--":
            die("usage: spawn PIDFILE LOGFILE -- CMD...")
        spawn(args[0], args[1], args[3:])
    elif cmd == "wait-http":
        wait_http(*args)
    elif cmd == "port-open":
        sys.exit(0 if port_open(*args) else 1)
    elif cmd == "tag-digest":
        print(tag_descriptor(*args)["digest"])
    elif cmd == "layer-digest":
        print(layer_digest(*args))
    elif cmd == "corrupt":
        corrupt(*args)
    elif cmd == "is-corrupt":
        path, digest = args
        sys.exit(0 if os.path.exists(path) and file_digest(path) != digest else 1)
    else:
        die(f"unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
