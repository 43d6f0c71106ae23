#!/usr/bin/env bash
# Push benchmark: a ~200 MB image (busybox plus one layer of 100 MB text and 100 MB random bytes)
# pushed to an empty local registry by `cairn push`, `podman push` and `skopeo copy` (from an OCI
# layout), side by side (interleaved, so machine noise hits every tool alike). Every push goes
# to a fresh registry (new storage, so nothing can be skipped or mounted): the numbers are full
# uploads. Prints medians and ratios to cairn.
#
#   benches/push.sh [ROUNDS]        default: 5 rounds
#
# Needs the fixtures (rootfs-fixtures/setup.sh), root and docker-registry (the fixtures' own).
# CAIRN=path uses a given binary; otherwise target/debug/cairn is built (its hot crates are
# optimised even in debug builds, see the workspace Cargo.toml) — CAIRN=target/release/cairn
# for release numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
[ "$(id -u)" = 0 ] || { echo "push.sh: run as root (podman's store is root's)" >&2; exit 1; }
FIXTURES=${CAIRN_FIXTURES_DIR:-$PWD/.fixtures}
. "$FIXTURES/env"
REG=$CAIRN_TEST_REGISTRY
if [ -z "${CAIRN:-}" ]; then
  cargo build -p cairn-cli >/dev/null || { echo "push.sh: cargo build failed" >&2; exit 1; }
  CAIRN=${CARGO_TARGET_DIR:-$PWD/target}/debug/cairn
fi
WORK=$(mktemp -d /var/tmp/cairn-push-bench.XXXXXX)
PORT=${BENCH_REGISTRY_PORT:-5190}
DEST=127.0.0.1:$PORT
REG_PID=
stop_registry() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true; REG_PID=; }
trap 'stop_registry; podman --root "$WORK/p/root" --runroot "$WORK/p/run" --storage-driver overlay system reset -f >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# A fresh, empty registry on $DEST.
fresh_registry() {
  stop_registry
  rm -rf "$WORK/registry"
  mkdir -p "$WORK/registry/data"
  cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/registry/data }, delete: { enabled: true } }
http: { addr: $DEST }
EOF
  docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -sf "http://$DEST/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "push.sh: registry did not start (see $WORK/registry/log)" >&2; exit 1
}

# The image: built by cairn (published to the fixture registry once), then given to the peers.
SRC=$REG/bench/push-src-$$:latest
mkdir -p "$WORK/project"
cat >"$WORK/project/pipeline.toml" <<EOF
[steps.big]
image = "$REG/fixtures/busybox:latest"
run = "mkdir -p /data && seq 1 14000000 > /data/text && head -c 104857600 /dev/urandom > /data/random"
publish = "$SRC"
EOF
t0=$(date +%s%N)
"$CAIRN" --root "$WORK/c" run "$WORK/project/pipeline.toml" >/dev/null 2>"$WORK/run.err" ||
  { cat "$WORK/run.err" >&2; exit 1; }
echo "setup: cairn run + publish (exec, pack 200 MB as gzip, push): $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
PODMAN=(podman --root "$WORK/p/root" --runroot "$WORK/p/run" --storage-driver overlay)
"${PODMAN[@]}" pull -q --tls-verify=false "$SRC" >/dev/null
skopeo copy -q --src-tls-verify=false "docker://$SRC" "oci:$WORK/layout:t" >/dev/null
SIZE=$(du -sm "$WORK/layout" | cut -f1)
echo "image: $SRC, $SIZE MB compressed" >&2

now() { date +%s%N; }
declare -A TIMES
run() { # tool command...
  local tool=$1; shift
  fresh_registry
  sync
  local t0; t0=$(now)
  if "$@" >/dev/null 2>"$WORK/err"; then
    TIMES[$tool]+="$(( ($(now) - t0) / 1000000 )) "
  else
    echo "note: $tool failed: $(tail -1 "$WORK/err")" >&2
  fi
}

for round in $(seq "$ROUNDS"); do
  run cairn "$CAIRN" --root "$WORK/c" push "$SRC" "$DEST/bench/img:$round"
  run podman "${PODMAN[@]}" push --tls-verify=false "$SRC" "docker://$DEST/bench/img:$round"
  run skopeo skopeo copy --dest-tls-verify=false "oci:$WORK/layout:t" "docker://$DEST/bench/img:$round"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
base=$(echo "${TIMES[cairn]:-}" | median)
printf "%-8s %10s %8s   %s\n" tool "median ms" "x cairn" "runs (ms)"
for tool in cairn podman skopeo; do
  m=$(echo "${TIMES[$tool]:-}" | median)
  ratio=-
  [ "$m" != - ] && [ "$base" != - ] && ratio=$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a/b}')
  printf "%-8s %10s %8s   %s\n" "$tool" "$m" "$ratio" "${TIMES[$tool]:-}"
done
