#!/usr/bin/env bash
# A 20-step pipeline, cold and fully cached: `cairn run` against `buildah bud --layers` of an
# equivalent Containerfile, both from the busybox fixture image of the loopback registry, run
# side by side (interleaved, so machine noise hits every tool alike). Also a bare `cairn exec`
# of one step's command, for the per-step overhead of a pipeline step over an exec. Prints
# medians and ratios.
#
#   benches/pipeline.sh [ROUNDS]        default: 5 rounds
#
# The pipeline: 16 steps in a chain (each `from` the previous, appending to a file the previous
# ones wrote) and 4 independent steps from the image; the Containerfile runs the same 20
# commands as 20 RUN lines (a Containerfile is a chain). Every round starts cold by putting the
# round number into every step's command (all keys change; the image stays pulled), then runs
# again unchanged: fully cached. Needs the fixtures (rootfs-fixtures/setup.sh) and root; buildah
# is installed from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
[ "$(id -u)" = 0 ] || { echo "pipeline.sh: run as root" >&2; exit 1; }
FIXTURES=${CAIRN_FIXTURES_DIR:-.fixtures}
. "$FIXTURES/env"
REF=$CAIRN_TEST_REGISTRY/fixtures/busybox:latest
if [ -z "${CAIRN_BIN:-}" ]; then
  cargo build --release -p cairn-cli >/dev/null || { echo "pipeline.sh: cargo build failed" >&2; exit 1; }
  CAIRN_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn
fi
WORK=$(mktemp -d /var/tmp/cairn-pipeline-bench.XXXXXX)
chmod 755 "$WORK"
BUILDAH=(buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/run")
trap '"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true; "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
install -m 755 "$CAIRN_BIN" "$WORK/cairn"
CAIRN=$WORK/cairn

export DEBIAN_FRONTEND=noninteractive
dpkg-query -W -f='${Status}' buildah 2>/dev/null | grep -q "install ok installed" ||
  apt-get install -y --no-install-recommends buildah >/dev/null 2>&1 || echo "note: buildah not installable" >&2
# overlay when this kernel and filesystem take it, else vfs (a full copy per layer).
DRIVER=overlay
"${BUILDAH[@]}" --storage-driver overlay pull --tls-verify=false -q "$REF" >/dev/null 2>&1 || {
  "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$WORK/buildah"
  DRIVER=vfs
  "${BUILDAH[@]}" --storage-driver vfs pull --tls-verify=false -q "$REF" >/dev/null
}
BUILDAH+=(--storage-driver "$DRIVER")
"$CAIRN" --root "$WORK/store" pull "$REF" >/dev/null

# step N's command in round R: a chain step appends to /b/log and counts what came before.
command_of() { # round step
  echo "mkdir -p /b && echo r$1-s$2 >> /b/log && wc -l < /b/log > /b/n$2"
}

write_inputs() { # round
  local r=$1 f=$WORK/pipeline.toml c=$WORK/ctx/Containerfile
  mkdir -p "$WORK/ctx"
  : >"$f"
  echo "FROM $REF" >"$c"
  for i in $(seq 1 20); do
    if [ "$i" = 1 ] || [ "$i" -gt 16 ]; then
      printf '[steps.s%02d]\nimage = "%s"\n' "$i" "$REF" >>"$f"
    else
      printf '[steps.s%02d]\nfrom = "s%02d"\n' "$i" $((i - 1)) >>"$f"
    fi
    printf 'run = "%s"\n\n' "$(command_of "$r" "$i")" >>"$f"
    echo "RUN $(command_of "$r" "$i")" >>"$c"
  done
  # One step alone, for the cost of a pipeline step against a bare `cairn exec`.
  printf '[steps.one]\nimage = "%s"\nrun = "%s"\n' "$REF" "$(command_of "$r" one)" >"$WORK/one.toml"
}

now() { date +%s%N; }
declare -A TIMES
run() { # label command...
  local label=$1; shift
  local t0; t0=$(now)
  if "$@" >/dev/null 2>"$WORK/err"; then
    TIMES[$label]+="$(( ($(now) - t0) / 100000 )) "
  else
    echo "note: $label failed: $(tail -3 "$WORK/err")" >&2
  fi
}

for round in $(seq "$ROUNDS"); do
  write_inputs "$round"
  run "cairn run (cold)" "$CAIRN" --root "$WORK/store" run "$WORK/pipeline.toml" --progress plain
  run "cairn run (cached)" "$CAIRN" --root "$WORK/store" run "$WORK/pipeline.toml" --progress plain
  run "buildah bud (cold)" "${BUILDAH[@]}" bud --layers --isolation chroot --pull=false \
    --tls-verify=false -q -t "bench:$round" -f "$WORK/ctx/Containerfile" "$WORK/ctx"
  run "buildah bud (cached)" "${BUILDAH[@]}" bud --layers --isolation chroot --pull=false \
    --tls-verify=false -q -t "bench:$round" -f "$WORK/ctx/Containerfile" "$WORK/ctx"
  run "cairn exec (1 step)" "$CAIRN" --root "$WORK/store" exec "$REF" -- sh -c "$(command_of "$round" x)"
  run "cairn run (1 step)" "$CAIRN" --root "$WORK/store" run "$WORK/one.toml" --progress plain
done

# Check the cached run really ran nothing: every step reported cached.
write_inputs "$ROUNDS"
cached=$("$CAIRN" --root "$WORK/store" run "$WORK/pipeline.toml" --progress json | grep -c '"event":"cached"' || true)
[ "$cached" -ge 20 ] || echo "note: the last cached run reported $cached cached vertices, not >= 20" >&2

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); buildah $(buildah --version | awk '{print $3}') on $DRIVER"
echo "rounds: $ROUNDS, 20 steps (median ms; ratio = buildah / cairn, higher means cairn is faster)"
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{printf "%.1f", a[int((NR+1)/2)]/10}'; }
for label in "cairn run (cold)" "buildah bud (cold)" "cairn run (cached)" "buildah bud (cached)" "cairn exec (1 step)" "cairn run (1 step)"; do
  vals=${TIMES[$label]:-}
  [ -n "$vals" ] || continue
  printf '%-22s median %8s ms   (%s)\n' "$label" "$(med "$vals")" "$(printf '%s ' $vals | awk '{for(i=1;i<=NF;i++) printf "%.0f ", $i/10}')"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'; }
cc=$(med "${TIMES[cairn run (cold)]:-0}"); bc=$(med "${TIMES[buildah bud (cold)]:-0}")
ch=$(med "${TIMES[cairn run (cached)]:-0}"); bh=$(med "${TIMES[buildah bud (cached)]:-0}")
ex=$(med "${TIMES[cairn exec (1 step)]:-0}"); one=$(med "${TIMES[cairn run (1 step)]:-0}")
echo "cold:   buildah / cairn = $(ratio "$bc" "$cc")"
echo "cached: buildah / cairn = $(ratio "$bh" "$ch")   (aim: cairn under 100 ms)"
echo "per step, cold: $(awk -v c="$cc" 'BEGIN{printf "%.1f", c/20}') ms in the 20-step run (wall / 20; 4 steps overlap the chain)"
echo "one step: cairn run $one ms vs cairn exec $ex ms of the same command: $(awk -v o="$one" -v e="$ex" 'BEGIN{printf "%+.1f", o - e}') ms for being a pipeline step"
