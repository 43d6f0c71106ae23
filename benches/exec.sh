#!/usr/bin/env bash
# Start-to-exit latency of `true`: `cairn exec` (as root and as a plain user) against
# `crun run` and `runc run` on the same root filesystem and `podman run --rm` of the same
# image, run side by side (interleaved, so machine noise hits every tool alike). Prints
# medians and ratios to cairn as root.
#
#   benches/exec.sh [ROUNDS]            default: 30 rounds, the busybox fixture image
#
# runc and crun run twice: with the spec their `spec` command writes (three capabilities, no
# seccomp profile, a network namespace), and with the isolation `cairn exec` gives every
# container (Docker's capabilities and seccomp profile, the host's network), written into
# the same spec by `same-isolation` (benches/same_isolation.rs). The second pair is the
# like-for-like comparison: a seccomp profile is part of a container's start-up cost.
#
# Needs the fixtures (rootfs-fixtures/setup.sh) and root. crun needs a cgroup namespace of its
# own on this hybrid-cgroup host (../shared/notes/host-facts.md); podman runs with runc.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-30}
[ "$(id -u)" = 0 ] || { echo "exec.sh: run as root" >&2; exit 1; }
. .fixtures/env
REF=$CAIRN_TEST_REGISTRY/fixtures/busybox:latest
if [ -z "${CAIRN_BIN:-}" ]; then
  cargo build --release -p cairn-cli >/dev/null || { echo "exec.sh: cargo build failed" >&2; exit 1; }
  CAIRN_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn
fi
cargo build --release -p cairn-benches --bin same-isolation >/dev/null 2>&1 ||
  { echo "exec.sh: cargo build of same-isolation failed" >&2; exit 1; }
SAME_ISOLATION=${CARGO_TARGET_DIR:-$PWD/target}/release/same-isolation
WORK=$(mktemp -d /var/tmp/cairn-exec-bench.XXXXXX)
chmod 755 "$WORK"
trap 'podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver overlay system reset -f >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
install -m 755 "$CAIRN_BIN" "$WORK/cairn"
CAIRN=$WORK/cairn

export DEBIAN_FRONTEND=noninteractive
for p in crun runc podman; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    apt-get install -y --no-install-recommends "$p" >/dev/null 2>&1 || echo "note: $p not installable" >&2
done

# A plain user with a subordinate id range, for rootless cairn.
BENCH_USER=cairn-bench
id "$BENCH_USER" >/dev/null 2>&1 || useradd -m "$BENCH_USER"
grep -q "^$BENCH_USER:" /etc/subuid || echo "$BENCH_USER:300000:65536" >>/etc/subuid
grep -q "^$BENCH_USER:" /etc/subgid || echo "$BENCH_USER:300000:65536" >>/etc/subgid

# Stores with the image present, and one bundle for runc and crun from cairn's export.
"$CAIRN" --root "$WORK/cairn-root" pull "$REF" >/dev/null
mkdir -p "$WORK/user"; chown "$BENCH_USER" "$WORK/user"
su "$BENCH_USER" -c "$CAIRN --root $WORK/user/store pull $REF" >/dev/null
mkdir -p "$WORK/bundle"
"$CAIRN" --root "$WORK/cairn-root" export "$REF" "$WORK/bundle/rootfs"
(cd "$WORK/bundle" && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
# crun: the same bundle, rootless-style spec (it runs in its own user namespace here).
mkdir -p "$WORK/crun"
ln -s "$WORK/bundle/rootfs" "$WORK/crun/rootfs"
(cd "$WORK/crun" && crun spec --rootless && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
# The same two bundles with cairn's isolation.
for b in bundle crun; do
  mkdir -p "$WORK/$b-same"
  cp "$WORK/$b/config.json" "$WORK/$b-same/config.json"
  "$SAME_ISOLATION" "$WORK/$b-same/config.json"
  # runc takes no symlink for a rootfs: name the bundle's directory itself.
  sed -i "s|\"path\": \"rootfs\"|\"path\": \"$WORK/bundle/rootfs\"|" "$WORK/$b-same/config.json"
done
# And crun as it runs with its seccomp cache. Debian 12's crun 1.8.1 never looks into that
# cache (strace shows no lookup; the cache needs a libgcrypt build option) and compiles the
# profile for every container, which cairn does once per store. Its `run.oci.seccomp_bpf_data`
# annotation takes a compiled filter instead: `linear` is the filter crun compiles (and its
# cache would hold), `binary-tree` the faster-loading layout cairn's containers get.
for layout in linear binary-tree; do
  mkdir -p "$WORK/crun-$layout"
  cp "$WORK/crun/config.json" "$WORK/crun-$layout/config.json"
  "$SAME_ISOLATION" "$WORK/crun-$layout/config.json" --precompiled "$layout"
  sed -i "s|\"path\": \"rootfs\"|\"path\": \"$WORK/bundle/rootfs\"|" "$WORK/crun-$layout/config.json"
done
PODMAN=(podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver overlay --runtime runc)
# Root lacks CAP_SYS_RESOURCE on these hosts: podman's default nofile/nproc limits fail.
PODMAN_RUN=(run --rm --network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
"${PODMAN[@]}" pull --tls-verify=false "$REF" >/dev/null 2>&1 || echo "note: podman pull failed" >&2

now() { date +%s%N; }
declare -A TIMES
run() { # tool command...
  local tool=$1; shift
  local t0; t0=$(now)
  if "$@" >/dev/null 2>"$WORK/err"; then
    TIMES[$tool]+="$(( ($(now) - t0) / 100000 )) "
  else
    echo "note: $tool failed: $(tail -1 "$WORK/err")" >&2
  fi
}

n=0
for round in $(seq "$ROUNDS"); do
  n=$((n + 1))
  run "cairn exec (root)" "$CAIRN" --root "$WORK/cairn-root" exec "$REF" -- true
  run "cairn exec (rootless)" su "$BENCH_USER" -c "$CAIRN --root $WORK/user/store exec $REF -- true"
  run "su (baseline)" su "$BENCH_USER" -c true
  run "runc run" runc --root "$WORK/runc-state" run --bundle "$WORK/bundle" "b$n"
  run "runc run, same isolation" runc --root "$WORK/runc-state" run --bundle "$WORK/bundle-same" "s$n"
  run "crun run" unshare --user --map-root-user --mount --cgroup sh -c \
    "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec crun --root $WORK/crun-state run --bundle $WORK/crun c$n"
  run "crun run, same isolation" unshare --user --map-root-user --mount --cgroup sh -c \
    "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec crun --root $WORK/crun-state run --bundle $WORK/crun-same s$n"
  run "crun run, same, precompiled" unshare --user --map-root-user --mount --cgroup sh -c \
    "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec crun --root $WORK/crun-state run --bundle $WORK/crun-linear p$n"
  run "crun run, same, cairn's filter" unshare --user --map-root-user --mount --cgroup sh -c \
    "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec crun --root $WORK/crun-state run --bundle $WORK/crun-binary-tree t$n"
  run "podman run --rm" "${PODMAN[@]}" "${PODMAN_RUN[@]}" "$REF" true
done

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
echo "rounds: $ROUNDS (median ms; ratio = tool / cairn exec as root, higher means cairn is faster)"
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{printf "%.1f", a[int((NR+1)/2)]/10}'; }
base=$(med "${TIMES[cairn exec (root)]:-0}")
for tool in "cairn exec (root)" "cairn exec (rootless)" "su (baseline)" "runc run" "runc run, same isolation" \
  "crun run" "crun run, same isolation" "crun run, same, precompiled" "crun run, same, cairn's filter" \
  "podman run --rm"; do
  vals=${TIMES[$tool]:-}
  [ -n "$vals" ] || continue
  m=$(med "$vals")
  ratio=$(awk -v m="$m" -v b="$base" 'BEGIN{ if (b>0) printf "%.2f", m/b; else print "-" }')
  printf '%-31s median %7s ms   ratio %5s\n' "$tool" "$m" "$ratio"
done
echo "(rootless cairn includes su's own start-up: compare with the su baseline)"
echo "(same isolation: Docker's capabilities and seccomp profile, host network, as cairn exec;"
echo " precompiled: that profile handed to crun already compiled, as its seccomp cache would;"
echo " cairn's filter: compiled as cairn compiles it, a binary tree that loads faster)"
echo "versions: $(crun --version | head -1); $(runc --version | head -1)"
