#!/usr/bin/env bash
# Pull + unpack benchmark: cairn against podman, skopeo copy + umoci unpack, and Docker, all
# from the same loopback registry, run side by side (interleaved, so machine noise hits every
# tool alike). Prints medians and ratios to cairn.
#
#   benches/pull.sh [ROUNDS] [IMAGE...]     default: 5 rounds, debian:bookworm layers:peer (layers:latest minus the hard link into a lower layer, which Docker and podman refuse)
#
# Needs the fixtures (rootfs-fixtures/setup.sh) and root. Peers that are not installed are
# installed from Debian when possible (podman, docker.io) or skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(debian:bookworm layers:peer)
[ "$(id -u)" = 0 ] || { echo "pull.sh: run as root (podman, docker and the stores are root's)" >&2; exit 1; }
. .fixtures/env
REG=$CAIRN_TEST_REGISTRY
# CAIRN=path uses a binary built elsewhere; otherwise build one (and show why if that fails).
if [ -z "${CAIRN:-}" ]; then
  cargo build --release -p cairn-cli >/dev/null || { echo "pull.sh: cargo build failed" >&2; exit 1; }
  CAIRN=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn
fi
WORK=$(mktemp -d /var/tmp/cairn-bench.XXXXXX)
trap 'stop_docker; rm -rf "$WORK"' EXIT

export DEBIAN_FRONTEND=noninteractive
for p in podman docker.io; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    apt-get install -y --no-install-recommends "$p" >/dev/null 2>&1 || echo "note: $p not installable" >&2
done

DOCKER_PID=
start_docker() {
  command -v dockerd >/dev/null || return 1
  mkdir -p "$WORK/docker"
  dockerd --data-root "$WORK/docker/root" --exec-root "$WORK/docker/exec" \
    --pidfile "$WORK/docker/pid" -H "unix://$WORK/docker/sock" --insecure-registry "$REG" \
    --iptables=false --bridge=none >"$WORK/docker/log" 2>&1 &
  DOCKER_PID=$!
  for _ in $(seq 50); do docker -H "unix://$WORK/docker/sock" info >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "note: dockerd did not start (see $WORK/docker/log)" >&2
  return 1
}
stop_docker() { [ -n "$DOCKER_PID" ] && kill "$DOCKER_PID" 2>/dev/null && wait "$DOCKER_PID" 2>/dev/null || true; }
HAVE_DOCKER=0; start_docker && HAVE_DOCKER=1

now() { date +%s%N; }
declare -A TIMES
run() { # tool image command...
  local tool=$1 image=$2; shift 2
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local t0; t0=$(now)
  if "$@" >/dev/null 2>"$WORK/err"; then
    TIMES[$tool/$image]+="$(( ($(now) - t0) / 1000000 )) "
  else
    echo "note: $tool failed on $image: $(tail -1 "$WORK/err")" >&2
  fi
}

for image in "${IMAGES[@]}"; do
  ref=$REG/fixtures/$image
  for round in $(seq "$ROUNDS"); do
    rm -rf "$WORK/c" "$WORK/p" "$WORK/s"
    run cairn "$image" "$CAIRN" --root "$WORK/c" pull "$ref"
    if command -v podman >/dev/null; then
      run podman "$image" podman --root "$WORK/p/root" --runroot "$WORK/p/run" --storage-driver overlay \
        pull --tls-verify=false "$ref"
    fi
    mkdir -p "$WORK/s"
    run skopeo+umoci "$image" sh -c "skopeo copy --src-tls-verify=false docker://$ref oci:$WORK/s/layout:t && umoci unpack --image $WORK/s/layout:t $WORK/s/bundle"
    if [ $HAVE_DOCKER = 1 ]; then
      docker -H "unix://$WORK/docker/sock" rmi -f "$ref" >/dev/null 2>&1 || true
      docker -H "unix://$WORK/docker/sock" builder prune -af >/dev/null 2>&1 || true
      run docker "$image" docker -H "unix://$WORK/docker/sock" pull "$ref"
    fi
    # Free the stores before the next round (podman's overlay needs its own cleanup).
    podman --root "$WORK/p/root" --runroot "$WORK/p/run" --storage-driver overlay system reset -f >/dev/null 2>&1 || true
  done
done

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -h "$WORK" | awk 'NR==2{print $1}')"
echo "rounds: $ROUNDS (median ms; ratio = tool / cairn, higher means cairn is faster)"
for image in "${IMAGES[@]}"; do
  base=$(printf '%s\n' ${TIMES[cairn/$image]:-} | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  for tool in cairn podman skopeo+umoci docker; do
    vals=${TIMES[$tool/$image]:-}
    [ -n "$vals" ] || continue
    med=$(printf '%s\n' $vals | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    ratio=$(awk -v m="$med" -v b="$base" 'BEGIN{ if (b>0) printf "%.2f", m/b; else print "-" }')
    printf '%-16s %-14s median %6s ms   ratio %5s   (runs: %s)\n' "$image" "$tool" "$med" "$ratio" "$vals"
  done
done
