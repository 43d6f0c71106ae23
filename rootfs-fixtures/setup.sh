#!/usr/bin/env bash
# Build cairn's test images from Debian packages and serve them from real
# registries on 127.0.0.1. See README.md in this directory.
#
#   setup.sh [up]     install missing packages (root), build the OCI layouts,
#                     start the registries (if not running), push the images,
#                     write and print <fixtures>/env
#   setup.sh stop     stop every registry/token server this fixtures dir started
#   setup.sh status   show what runs
#   setup.sh verify   pull every pushed ref, check auth and corruption behave,
#                     umoci-unpack every layout (run after `up`)
#
# Environment: CAIRN_FIXTURES_DIR (default <repo>/.fixtures),
# CAIRN_TEST_REGISTRY_PORT (default 5117; uses it and the next four ports),
# CAIRN_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
FX=${CAIRN_FIXTURES_DIR:-$REPO/.fixtures}
PORT=${CAIRN_TEST_REGISTRY_PORT:-5117}
DEBIAN_MIRROR=${CAIRN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=/usr/bin/python3  # Debian's, installed by ensure_packages if missing
USER_NAME=cairn
PASSWORD=s3cret
SERVICE=cairn-test
ISSUER=cairn-fixtures
HOST=127.0.0.1

PKGS=(docker-registry skopeo umoci busybox-static debootstrap debian-archive-keyring
      zstd attr uidmap apache2-utils openssl python3 tar)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
fxtool() { "$PY" "$HERE/fxtool.py" "$@"; }
is_root() { [ "$(id -u)" = 0 ]; }

case "$PORT" in
  ''|*[!0-9]*) die "CAIRN_TEST_REGISTRY_PORT must be a number, got '$PORT'" ;;
esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65530 ] ||
  die "CAIRN_TEST_REGISTRY_PORT must be in 1024..65530 (five ports are used), got $PORT"
P_PLAIN=$PORT P_BASIC=$((PORT + 1)) P_TOKEN=$((PORT + 2)) P_REALM=$((PORT + 3)) P_CORRUPT=$((PORT + 4))

case "${1:-up}" in
  stop|status) [ -d "$FX" ] || { echo "no fixtures dir $FX: nothing started" >&2; exit 0; } ;;
esac
mkdir -p "$FX" || die "cannot create fixtures dir $FX"
FX=$(cd "$FX" && pwd)
# env values are written unquoted and skopeo parses oci:DIR:TAG, so keep the
# path boring.
case "$FX" in
  *[!A-Za-z0-9._/+@-]*) die "fixtures dir '$FX' has characters this script does not quote (use [A-Za-z0-9._/+@-])" ;;
esac
LOGS=$FX/logs RUN=$FX/run STAMPS=$FX/stamps LAYOUTS=$FX/layouts REGS=$FX/registries
mkdir -p "$LOGS" "$RUN" "$STAMPS" "$LAYOUTS" "$REGS" "$FX/cache" "$FX/tmp"

# --------------------------------------------------------------------------
# Packages

ensure_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  is_root || die "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1; then
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } \
      >>"$LOGS/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed; see $LOGS/apt.log"
  fi
}

# --------------------------------------------------------------------------
# Images

DEB_TAR=$FX/cache/debian-bookworm-minbase.tar

unmount_below() {  # unmount anything a failed debootstrap left mounted
  local m
  awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

debootstrap_rootfs() {
  [ -s "$DEB_TAR" ] && return
  is_root || die "debootstrap needs root (the Debian rootfs is not cached yet)"
  local root=$FX/cache/debootstrap
  if [ -e "$root" ]; then unmount_below "$root"; rm -rf --one-file-system "$root"; fi
  say "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (about a minute; log: $LOGS/debootstrap.log)"
  if ! debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$LOGS/debootstrap.log" 2>&1; then
    unmount_below "$root"
    die "debootstrap failed; see $LOGS/debootstrap.log"
  fi
  unmount_below "$root"
  # Drop the downloaded .debs, the apt lists and host-specific files, as
  # official Debian images do. /dev keeps the nodes debootstrap made.
  find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  find "$root/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
  rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
  tar --create --file "$DEB_TAR.tmp" --directory "$root" --format=posix --numeric-owner \
      --xattrs --xattrs-include='*' --sort=name \
      --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' . ||
    die "tar of the debootstrap rootfs failed"
  mv "$DEB_TAR.tmp" "$DEB_TAR"
  rm -rf --one-file-system "$root"
}

build_layouts() {
  "$PY" "$HERE/build-images.py" "$FX" || die "building the OCI layouts failed"
  debootstrap_rootfs
  "$PY" "$HERE/build-images.py" "$FX" debian --debian-rootfs "$DEB_TAR" ||
    die "building the debian layout failed"
}

# --------------------------------------------------------------------------
# Services: registries and the token server, each detached with a pid file,
# a log, and a "spec" (command line + config) that decides whether a running
# instance can stay.

svc_pid() {  # prints the pid if NAME runs (and is what we started)
  local name=$1 pid marker
  [ -f "$RUN/$name.pid" ] && [ -f "$RUN/$name.marker" ] || return 1
  pid=$(cat "$RUN/$name.pid") marker=$(cat "$RUN/$name.marker")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  echo "$pid"
}

svc_stop() {
  local name=$1 pid i
  if pid=$(svc_pid "$name"); then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do svc_pid "$name" >/dev/null || break; sleep 0.1; done
    if svc_pid "$name" >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$RUN/$name.pid" "$RUN/$name.marker" "$RUN/$name.spec"
}

# svc_ensure NAME PORT URL SPECFILE MARKER -- CMD...
svc_ensure() {
  local name=$1 port=$2 url=$3 specfile=$4 marker=$5
  shift 6
  local spec
  spec="$(printf '%s\n' "$*"; cat "$specfile")"
  if svc_pid "$name" >/dev/null; then
    if [ "$spec" = "$(cat "$RUN/$name.spec" 2>/dev/null)" ]; then
      fxtool wait-http "$url" 10 || die "$name runs but $url does not answer; see $LOGS/$name.log"
      return
    fi
    svc_stop "$name"
  fi
  rm -f "$RUN/$name.pid"
  if fxtool port-open "$HOST" "$port"; then
    die "port $port is in use by a process this fixtures dir did not start; stop it or set CAIRN_TEST_REGISTRY_PORT (a registry left over from a deleted fixtures dir?)
$(ss -Hltnp "sport = :$port" 2>/dev/null)"
  fi
  say "starting $name on $HOST:$port (log: $LOGS/$name.log)"
  printf '%s\n' "$marker" >"$RUN/$name.marker"
  printf '%s' "$spec" >"$RUN/$name.spec"
  printf '\n--- %s start: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$name.log"
  fxtool spawn "$RUN/$name.pid" "$LOGS/$name.log" -- "$@"
  fxtool wait-http "$url" 30 "$RUN/$name.pid" ||
    die "$name did not come up on $url; last log lines:
$(tail -n 15 "$LOGS/$name.log")"
}

registry_config() {  # registry_config NAME PORT <<auth yaml
  local name=$1 port=$2 dir=$REGS/$1
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml.new" <<EOF
# Written by rootfs-fixtures/setup.sh: the $name test registry.
version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: cairn-fixtures-$name
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $HOST:$port
  secret: cairn-fixtures-$name
  headers:
    X-Content-Type-Options: [nosniff]
$(cat)
EOF
  if cmp -s "$dir/config.yml.new" "$dir/config.yml"; then
    rm "$dir/config.yml.new"
  else
    mv "$dir/config.yml.new" "$dir/config.yml"
  fi
}

registry_up() {  # registry_up NAME PORT
  local cfg=$REGS/$1/config.yml
  svc_ensure "$1" "$2" "http://$HOST:$2/v2/" "$cfg" "$cfg" -- /usr/bin/docker-registry serve "$cfg"
}

start_services() {
  # 1. plain, anonymous
  registry_config plain "$P_PLAIN" </dev/null
  registry_up plain "$P_PLAIN"

  # 2. basic auth (htpasswd, bcrypt)
  local htp=$REGS/basic/htpasswd
  mkdir -p "$REGS/basic"
  if ! htpasswd -vb "$htp" "$USER_NAME" "$PASSWORD" >/dev/null 2>&1; then
    htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$htp.tmp" && mv "$htp.tmp" "$htp"
  fi
  registry_config basic "$P_BASIC" <<EOF
auth:
  htpasswd:
    realm: cairn-fixtures-basic
    path: $htp
EOF
  registry_up basic "$P_BASIC"

  # 3. bearer tokens from token-server.py
  local tok=$REGS/token
  mkdir -p "$tok"
  if [ ! -s "$tok/signer.crt" ] || [ ! -s "$tok/signer.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -subj "/CN=cairn-fixtures token signer" \
      -keyout "$tok/signer.key" -out "$tok/signer.crt" >"$LOGS/openssl.log" 2>&1 ||
      die "openssl could not create the token signing certificate; see $LOGS/openssl.log"
  fi
  local realm=http://$HOST:$P_REALM/token
  sha256sum "$HERE/token-server.py" "$tok/signer.crt" >"$tok/token-server.spec"
  svc_ensure token-server "$P_REALM" "$realm" "$tok/token-server.spec" "$HERE/token-server.py" -- \
    "$PY" "$HERE/token-server.py" --listen "$HOST:$P_REALM" \
    --key "$tok/signer.key" --cert "$tok/signer.crt" --issuer "$ISSUER" \
    --service "$SERVICE" --user "$USER_NAME" --password "$PASSWORD"
  registry_config token "$P_TOKEN" <<EOF
auth:
  token:
    realm: $realm
    service: $SERVICE
    issuer: $ISSUER
    rootcertbundle: $tok/signer.crt
# The registry reads the certificate only at start; this line makes a new
# certificate change the config, which restarts the registry.
# signer.crt sha256: $(sha256sum <"$tok/signer.crt" | cut -d' ' -f1)
EOF
  registry_up token "$P_TOKEN"

  # 4. the lying registry
  registry_config corrupt "$P_CORRUPT" </dev/null
  registry_up corrupt "$P_CORRUPT"
}

# --------------------------------------------------------------------------
# Pushes. A stamp remembers (source manifest, flags, registry's tag link);
# when the registry still has that link, the push is skipped.

IMAGES=()  # "ref layout tag" lines for images.txt
UNPACK=()  # "ref layout tag" lines for unpack.txt

creds_for() {
  case "$1" in basic|token) echo "--dest-creds=$USER_NAME:$PASSWORD" ;; esac
}

port_of() {
  case "$1" in
    plain) echo "$P_PLAIN" ;; basic) echo "$P_BASIC" ;;
    token) echo "$P_TOKEN" ;; corrupt) echo "$P_CORRUPT" ;;
  esac
}

tag_link() {  # tag_link REG REPO TAG
  echo "$REGS/$1/storage/docker/registry/v2/repositories/$2/_manifests/tags/$3/current/link"
}

# push REG SRC_LAYOUT SRC_TAG REPO TAG UNPACK_LAYOUT UNPACK_TAG [skopeo flags...]
push() {
  local reg=$1 layout=$LAYOUTS/$2 stag=$3 repo=$4 tag=$5 ulayout=$LAYOUTS/$6 utag=$7
  shift 7
  local port ref src key stamp link creds
  port=$(port_of "$reg")
  ref=$HOST:$port/$repo:$tag
  src=$(fxtool tag-digest "$layout" "$stag")
  key="$src $*"
  stamp=$STAMPS/push-$reg-${repo//\//_}-$tag
  link=$(tag_link "$reg" "$repo" "$tag")
  if [ "$reg" != corrupt ]; then
    IMAGES+=("$ref $layout $stag")
    UNPACK+=("$ref $ulayout $utag")
  fi
  if [ -f "$stamp" ] && [ -f "$link" ] && [ "$(cat "$stamp")" = "$key $(cat "$link")" ]; then
    return
  fi
  say "push $ref  (from oci:$layout:$stag${*:+ $*})"
  creds=$(creds_for "$reg")
  skopeo copy -q --dest-tls-verify=false ${creds:+"$creds"} "$@" \
    "oci:$layout:$stag" "docker://$ref" 2>>"$LOGS/skopeo.log" ||
    die "skopeo copy to $ref failed; see $LOGS/skopeo.log"
  [ -f "$link" ] || die "pushed $ref but $link does not exist"
  printf '%s %s\n' "$key" "$(cat "$link")" >"$stamp"
}

# corrupt_push SRC_LAYOUT SRC_TAG TAG MODE: push, then flip bytes of the layer
corrupt_push() {
  local layout=$LAYOUTS/$1 digest hex data
  push corrupt "$1" "$2" fixtures/corrupt "$3" "$1" "$2" --preserve-digests
  digest=$(fxtool layer-digest "$layout" "$2")
  hex=${digest#sha256:}
  data=$REGS/corrupt/storage/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data
  [ -f "$data" ] || die "the corrupt registry has no blob file $data"
  if ! fxtool is-corrupt "$data" "$digest"; then
    say "corrupting $digest in the corrupt registry ($4)"
    fxtool corrupt "$data" "$digest" "$4"
  fi
  CORRUPT_BLOBS+=("$3=$digest")
}

push_images() {
  local p="--preserve-digests" v2="--format=v2s2"
  push plain busybox latest fixtures/busybox latest busybox latest $p
  push plain busybox latest fixtures/busybox docker busybox latest $v2
  push plain busybox-uncompressed uncompressed fixtures/busybox uncompressed \
    busybox-uncompressed uncompressed $p
  push plain busybox-config config fixtures/busybox config busybox-config config $p
  push plain busybox-multi multi fixtures/busybox multi busybox-multi multi-amd64 --all $p
  push plain busybox-multi multi fixtures/busybox multi-docker busybox-multi multi-amd64 --all $v2
  push plain busybox-multi multi-arm64 fixtures/busybox arm64-only busybox-multi multi-arm64 $p
  push plain layers latest fixtures/layers latest layers latest $p
  push plain layers-zstd zstd fixtures/layers zstd layers latest $p
  push plain layers-peer peer fixtures/layers peer layers-peer peer $p
  push plain debian bookworm fixtures/debian bookworm debian bookworm $p
  push basic busybox latest fixtures/busybox latest busybox latest $p
  push token busybox latest fixtures/busybox latest busybox latest $p
  CORRUPT_BLOBS=()
  corrupt_push busybox latest latest gzip-header
  corrupt_push busybox-uncompressed uncompressed uncompressed tar-member:bin/busybox
}

write_outputs() {
  printf '%s\n' "${IMAGES[@]}" >"$FX/images.txt.tmp" && mv "$FX/images.txt.tmp" "$FX/images.txt"
  printf '%s\n' "${UNPACK[@]}" >"$FX/unpack.txt.tmp" && mv "$FX/unpack.txt.tmp" "$FX/unpack.txt"
  local c
  {
    echo "CAIRN_FIXTURES_DIR=$FX"
    echo "CAIRN_TEST_REGISTRY=$HOST:$P_PLAIN"
    echo "CAIRN_TEST_REGISTRY_BASIC=$HOST:$P_BASIC"
    echo "CAIRN_TEST_REGISTRY_TOKEN=$HOST:$P_TOKEN"
    echo "CAIRN_TEST_REGISTRY_CORRUPT=$HOST:$P_CORRUPT"
    echo "CAIRN_TEST_REGISTRY_USER=$USER_NAME"
    echo "CAIRN_TEST_REGISTRY_PASSWORD=$PASSWORD"
    echo "CAIRN_TEST_TOKEN_REALM=http://$HOST:$P_REALM/token"
    echo "CAIRN_TEST_TOKEN_SERVICE=$SERVICE"
    echo "CAIRN_TEST_IMAGES=$FX/images.txt"
    echo "CAIRN_TEST_UNPACK=$FX/unpack.txt"
    for c in "${CORRUPT_BLOBS[@]}"; do
      case "$c" in
        latest=*) echo "CAIRN_TEST_CORRUPT_GZIP_BLOB=${c#*=}" ;;
        uncompressed=*) echo "CAIRN_TEST_CORRUPT_TAR_BLOB=${c#*=}" ;;
      esac
    done
  } >"$FX/env.tmp"
  mv "$FX/env.tmp" "$FX/env"
}

# --------------------------------------------------------------------------
# verify: what a test would do, with skopeo and umoci

verify() {
  [ -f "$FX/images.txt" ] || die "run setup.sh first"
  local fails=0 ref layout tag reg creds raw mt want got dest
  local tmp=$FX/tmp/verify
  rm -rf "$tmp"; mkdir -p "$tmp"
  fail() { printf 'FAIL %s\n' "$*" >&2; fails=$((fails + 1)); }
  ok() { printf 'ok   %s\n' "$*" >&2; }
  while read -r ref layout tag; do
    creds=()
    case "$ref" in
      "$HOST:$P_BASIC"/*|"$HOST:$P_TOKEN"/*) creds=(--creds "$USER_NAME:$PASSWORD") ;;
    esac
    raw=$(skopeo inspect --raw --tls-verify=false "${creds[@]}" "docker://$ref" </dev/null) ||
      { fail "$ref: inspect --raw"; continue; }
    mt=$("$PY" -c 'import json,sys; print(json.load(sys.stdin).get("mediaType",""))' <<<"$raw")
    case "$ref" in
      *:docker) want=application/vnd.docker.distribution.manifest.v2+json ;;
      *:multi-docker) want=application/vnd.docker.distribution.manifest.list.v2+json ;;
      *:multi) want=application/vnd.oci.image.index.v1+json ;;
      *) want=application/vnd.oci.image.manifest.v1+json ;;
    esac
    [ "$mt" = "$want" ] || { fail "$ref: mediaType $mt, want $want"; continue; }
    case "$ref" in
      *:docker|*:multi-docker) ;;
      *) got=sha256:$(printf '%s' "$raw" | sha256sum | cut -d' ' -f1)
         want=$(fxtool tag-digest "$layout" "$tag")
         [ "$got" = "$want" ] || { fail "$ref: registry manifest $got, layout $want"; continue; } ;;
    esac
    if [ "${ref##*:}" = arm64-only ]; then
      skopeo inspect --tls-verify=false --override-arch arm64 "docker://$ref" </dev/null >/dev/null ||
        { fail "$ref: inspect"; continue; }
    else
      skopeo inspect --tls-verify=false "${creds[@]}" "docker://$ref" </dev/null >/dev/null ||
        { fail "$ref: inspect"; continue; }
    fi
    dest=$tmp/pull
    rm -rf "$dest"
    skopeo copy -q --src-tls-verify=false ${creds[@]:+--src-creds "$USER_NAME:$PASSWORD"} \
      --override-arch "$([ "${ref##*:}" = arm64-only ] && echo arm64 || echo amd64)" \
      "docker://$ref" "dir:$dest" </dev/null 2>"$tmp/err" || { fail "$ref: pull: $(cat "$tmp/err")"; continue; }
    ok "$ref ($mt)"
  done <"$FX/images.txt"

  # auth must really be required
  local b=docker://$HOST:$P_BASIC/fixtures/busybox:latest t=docker://$HOST:$P_TOKEN/fixtures/busybox:latest
  for r in "$b" "$t"; do
    if skopeo inspect --tls-verify=false --creds "$USER_NAME:wrong" "$r" >/dev/null 2>"$tmp/err"; then
      fail "$r accepted a wrong password"
    else ok "$r refuses a wrong password: $(tail -c 120 "$tmp/err")"; fi
    if skopeo inspect --tls-verify=false --no-creds "$r" >/dev/null 2>"$tmp/err"; then
      fail "$r allowed anonymous access"
    else ok "$r refuses anonymous access"; fi
  done

  # the corrupt registry must serve manifests but bad blobs
  for tag in latest uncompressed; do
    r=docker://$HOST:$P_CORRUPT/fixtures/corrupt:$tag
    skopeo inspect --tls-verify=false "$r" >/dev/null || fail "$r: inspect"
    rm -rf "$tmp/pull"
    if skopeo copy -q --src-tls-verify=false "$r" "dir:$tmp/pull" 2>"$tmp/err"; then
      fail "$r: pull succeeded although its layer is corrupt"
    elif grep -qi 'digest' "$tmp/err"; then ok "$r fails: $(tr '\n' ' ' <"$tmp/err" | tail -c 200)"
    else fail "$r failed, but not with a digest error: $(cat "$tmp/err")"; fi
  done

  # every layout a test compares against must unpack with umoci
  sort -u -k2,3 "$FX/unpack.txt" | while read -r ref layout tag; do
    rm -rf "$tmp/bundle"
    if umoci unpack --image "$layout:$tag" "$tmp/bundle" >/dev/null 2>"$tmp/err"; then
      ok "umoci unpack $layout:$tag"
    else
      echo "FAIL umoci unpack $layout:$tag: $(cat "$tmp/err")" >&2; echo fail >>"$tmp/unpack-fails"
    fi
  done
  [ -f "$tmp/unpack-fails" ] && fails=$((fails + $(wc -l <"$tmp/unpack-fails")))
  chmod -R u+rwx "$tmp" 2>/dev/null || true
  rm -rf "$tmp"
  [ "$fails" -eq 0 ] || die "$fails verification(s) failed"
  say "all fixtures verified"
}

# --------------------------------------------------------------------------

cmd=${1:-up}
case "$cmd" in
  up)
    ensure_packages
    build_layouts
    start_services
    push_images
    write_outputs
    say "fixtures ready in $FX; registries keep running (stop: $0 stop)"
    cat "$FX/env"
    ;;
  stop)
    shopt -s nullglob
    pids=("$RUN"/*.pid)
    [ ${#pids[@]} -gt 0 ] || say "nothing to stop in $FX"
    for f in "${pids[@]}"; do n=${f##*/}; svc_stop "${n%.pid}"; done
    ;;
  status)
    shopt -s nullglob
    pids=("$RUN"/*.pid)
    [ ${#pids[@]} -gt 0 ] || echo "nothing started from $FX"
    for f in "${pids[@]}"; do
      n=${f##*/} n=${n%.pid}
      if pid=$(svc_pid "$n"); then echo "$n: running (pid $pid)"; else echo "$n: not running"; fi
    done
    ;;
  verify) verify ;;
  *) die "unknown command '$cmd' (up, stop, status, verify)" ;;
esac
