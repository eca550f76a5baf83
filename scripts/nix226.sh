#!/usr/bin/env bash
# Debian 13's Nix 2.26 in a chroot, for the tests that hold narpush against a second,
# newer Nix than the host's 2.8 (tests/nix226.rs, tests/fixtures/path-info/gen.sh).
#
#   scripts/nix226.sh            make the chroot once (debootstrap trixie + nix-bin),
#                                reuse it when its marker says it is complete
#   scripts/nix226.sh run CMD…   run CMD inside it, as root, with the host's network
#
# The chroot lives in .tools/nix-2.26/root (NARPUSH_NIX226 overrides the directory).
# It is made in a temporary directory and renamed into place only when complete, under
# a lock, so an interrupted or concurrent run never leaves a half-made chroot in use.
#
# `run` gives each command its own private mount namespace (unshare --mount) in which
# /dev, /proc and the host's temporary directory are bind-mounted into the chroot at
# the same paths (plus any directories in NARPUSH_NIX226_BIND, colon-separated). The
# mounts vanish when the command exits, whatever happens to it: nothing to unmount,
# and concurrent tests never share or fight over a mount. Paths under the temporary
# directory (and the bound directories) are the same inside and outside, so a test
# can hand the chroot's Nix a file it wrote and read back what the Nix wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump when the recipe below changes: a chroot with another marker is made again.
RECIPE=1
SUITE=trixie
# The Debian mirror apt uses on this machine (its first .../debian URI in
# /etc/apt/sources.list*), else deb.debian.org; NARPUSH_DEBIAN_MIRROR overrides it.
host_mirror() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -Eo 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ' || true
}
MIRROR=${NARPUSH_DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DIR=${NARPUSH_NIX226:-$PWD/.tools/nix-2.26}
ROOT=$DIR/root
MARKER=$DIR/ready

die() { echo "nix226: $*" >&2; exit 1; }

# run_in ROOT CMD…: CMD inside ROOT with /dev, /proc and the bind list mounted, in a
# mount namespace of its own.
run_in() {
  local root=$1; shift
  local tmp=${TMPDIR:-/tmp}
  # shellcheck disable=SC2016
  exec unshare --mount --propagation private -- /bin/sh -euc '
    root=$1; tmp=$2; binds=$3; shift 3
    mount --rbind /dev "$root/dev"
    mount --rbind /proc "$root/proc"
    for d in "$tmp" $(printf %s "$binds" | tr : " "); do
      [ -n "$d" ] || continue
      mkdir -p "$root$d"
      mount --rbind "$d" "$root$d"
    done
    # The host'"'"'s Nix settings name host paths; the chroot'"'"'s Nix uses its own.
    exec chroot "$root" /usr/bin/env -u NIX_REMOTE -u NIX_CONF_DIR -u NIX_USER_CONF_FILES \
      -u NIX_STORE_DIR -u NIX_STATE_DIR -u NIX_LOG_DIR -u NIX_PATH \
      HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
  ' nix226-run "$root" "$tmp" "${NARPUSH_NIX226_BIND:-}" "$@"
}

if [ "${1:-}" = run ]; then
  shift
  [ $# -gt 0 ] || die "usage: scripts/nix226.sh run CMD [ARG…]"
  grep -qx "recipe $RECIPE" "$MARKER" 2>/dev/null \
    || die "no Nix 2.26 chroot at $ROOT: run scripts/nix226.sh (or make test) first"
  run_in "$ROOT" "$@"
fi
[ $# -eq 0 ] || die "unknown argument $1 (usage: scripts/nix226.sh [run CMD…])"

if grep -qx "recipe $RECIPE" "$MARKER" 2>/dev/null; then
  echo "nix226: reusing $ROOT ($(sed -n 's/^nix //p' "$MARKER"))"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "making the chroot needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/deps.sh (make deps)"
mkdir -p "$DIR"
exec 9>"$DIR.lock"
flock 9
# Another run may have finished while this one waited for the lock.
if grep -qx "recipe $RECIPE" "$MARKER" 2>/dev/null; then
  echo "nix226: reusing $ROOT"
  exit 0
fi

start=$(date +%s)
new=$DIR/root.new
rm -rf --one-file-system "$new" "$MARKER"
echo "nix226: making a Debian $SUITE chroot with nix-bin in $ROOT (from $MIRROR)"
# debootstrap mounts /proc and /sys in the target itself; in a namespace of its own,
# those mounts end with it even when it fails half-way.
unshare --mount --propagation private -- \
  debootstrap --variant=minbase "$SUITE" "$new" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
  || die "debootstrap failed; see $DIR/debootstrap.log"
# debootstrap's --include=nix-bin fails on a virtual perl package; apt inside resolves it.
(run_in "$new" /bin/sh -ec '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nix-bin
  apt-get clean
') >"$DIR/apt.log" 2>&1 || die "installing nix-bin in the chroot failed; see $DIR/apt.log"
mkdir -p "$new/etc/nix" "$new/root" "$new/nix/var/nix/profiles/per-user/root" \
  "$new/nix/var/nix/gcroots/per-user/root"
# Root without a daemon, no build users, no sandbox, no network substituters: the
# same settings the host tests pass on every command line.
cat >"$new/etc/nix/nix.conf" <<'CONF'
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command
CONF
version=$(run_in "$new" nix --version) || die "nix --version fails in the chroot"
# Touch the store once so its database exists before tests open it concurrently.
(run_in "$new" /bin/sh -ec 'echo narpush > /root/narpush-nix226-check; nix-store --add /root/narpush-nix226-check') >/dev/null \
  || die "nix-store --add fails in the chroot"
rm -rf --one-file-system "$ROOT"
mv "$new" "$ROOT"
printf 'recipe %s\nsuite %s\nmirror %s\nnix %s\n' "$RECIPE" "$SUITE" "$MIRROR" "$version" >"$MARKER"
echo "nix226: made $ROOT ($version) in $(( $(date +%s) - start )) s"
