#!/usr/bin/env bash
# End-to-end test of the Raspberry Pi build (scripts/cross.sh) under qemu-aarch64:
# the aarch64 narpush pushes a real Nix build (with a reference) to a real S3 server
# (s3s-fs, which checks SigV4), and real Nix substitutes it from the bucket, served
# over HTTP, into a fresh chroot store with signatures required and only narpush's
# key trusted. Fails loudly; prints `cross: 1 passed, 0 failed` at the end.
#
# Needs: the binary from scripts/cross.sh, qemu-aarch64 (Debian qemu-user, installed
# here when missing), nix, python3, and s3s-fs (NARPUSH_S3S_FS, else .tools/bin/s3s-fs
# as installed by scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-musl
BIN="${NARPUSH_CROSS_BIN:-${CARGO_TARGET_DIR:-target}/$TARGET/cross/narpush}"
S3S_FS="${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}"

say() { echo "test-cross: $*"; }
fail() { echo "test-cross: FAIL: $*" >&2; echo "cross: 0 passed, 1 failed"; exit 1; }

[ -x "$BIN" ] || fail "no cross binary at $BIN: run scripts/cross.sh (make cross) first"
[ -x "$S3S_FS" ] || fail "s3s-fs not found at $S3S_FS: run scripts/deps.sh or set NARPUSH_S3S_FS"
for c in nix nix-store nix-build python3; do
  command -v "$c" >/dev/null 2>&1 || fail "$c not found: run scripts/deps.sh"
done
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
  say "installing Debian package qemu-user"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi
BIN=$(readlink -f "$BIN")

tmp=$(mktemp -d /tmp/narpush-test-cross.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    say "logs kept in $tmp"
    for l in "$tmp"/*.log; do [ -f "$l" ] && { echo "--- $l"; tail -n 30 "$l"; }; done
    # An unexpected error (set -e) must still leave the line the CI reads.
    [ -f "$tmp/.reported" ] || echo "cross: 0 passed, 1 failed"
  else
    chmod -R u+w "$tmp" 2>/dev/null || true
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "test-cross: FAIL: $*" >&2; echo "cross: 0 passed, 1 failed"; touch "$tmp/.reported"; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # PORT WHAT PID
  for _ in $(seq 200); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "$2 exited before listening on 127.0.0.1:$1"
    sleep 0.1
  done
  fail "$2 did not listen on 127.0.0.1:$1 within 20 s"
}

# Nix as in the integration tests: no sandbox, no build users, no network substituters.
NIX_OPTS=(--option sandbox false --option build-users-group "" --option substituters "")

# 1. The binary runs under qemu and says what it is.
say "binary: $BIN ($(stat -c %s "$BIN") bytes; $(file -b "$BIN" | cut -d, -f1-2))"
version=$(qemu-aarch64 "$BIN" --version) || fail "qemu-aarch64 narpush --version failed"
say "qemu-aarch64 narpush --version: $version"
expected="narpush $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[ "$version" = "$expected" ] || fail "--version printed '$version', expected '$expected'"

# 2. A real S3 server with a bucket.
bucket=nix-cache
access_key=narpush-cross-key
secret_key=narpush-cross-secret-Zq8v
mkdir -p "$tmp/s3/$bucket"
s3_port=$(free_port)
"$S3S_FS" --host 127.0.0.1 --port "$s3_port" --access-key "$access_key" --secret-key "$secret_key" \
  "$tmp/s3" </dev/null >"$tmp/s3s-fs.log" 2>&1 &
pids+=($!)
wait_port "$s3_port" s3s-fs "$!"
say "s3s-fs on 127.0.0.1:$s3_port, bucket $bucket in $tmp/s3/$bucket"

# 3. Store paths, unique per run: an added file and a derivation that refers to it.
nonce="cross-$$-$(date +%s%N)"
printf 'narpush cross test %s\n' "$nonce" > "$tmp/note-$nonce.txt"
added=$(nix-store --add "$tmp/note-$nonce.txt")
say "added $added"
cat > "$tmp/default.nix" <<NIX
derivation {
  name = "narpush-cross-test";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  nonce = "$nonce";
  PATH = "/usr/bin:/bin";  # no sandbox: the host coreutils
  note = builtins.storePath "$added";  # an input, so the output may refer to it
  args = [ "-c" "mkdir \$out; echo hello from the pi test > \$out/hello; ln -s \$note \$out/note" ];
}
NIX
built=$(nix-build "$tmp/default.nix" --no-out-link "${NIX_OPTS[@]}" 2>"$tmp/nix-build.log") \
  || fail "nix-build failed: $(tail -n 5 "$tmp/nix-build.log")"
say "built $built"
nix-store --query --references "$built" | grep -qx "$added" || fail "$built does not refer to $added"

# 4. A signing key made by Nix.
(umask 077; nix key generate-secret --extra-experimental-features nix-command --key-name "narpush-cross-$nonce" > "$tmp/k.sec")
nix key convert-secret-to-public --extra-experimental-features nix-command < "$tmp/k.sec" > "$tmp/k.pub"
say "key $(cat "$tmp/k.pub")"

# 5. The aarch64 narpush pushes the build (and its reference) to S3.
url="s3://$bucket?endpoint=127.0.0.1:$s3_port&scheme=http"
say "+ qemu-aarch64 narpush push --to '$url' --key-file k.sec $built"
env -u OUT_PATHS -u DRV_PATH -u AWS_PROFILE -u AWS_SESSION_TOKEN \
  NARPUSH_CONFIG=/dev/null NARPUSH_STATE_DIR="$tmp/state" \
  AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" \
  qemu-aarch64 "$BIN" push --strict --to "$url" --key-file "$tmp/k.sec" "$built" \
  >"$tmp/push.log" 2>&1 || { cat "$tmp/push.log" >&2; fail "narpush push under qemu-aarch64 failed"; }
sed 's/^/  | /' "$tmp/push.log"
for p in "$built" "$added"; do
  h=$(basename "$p" | cut -c1-32)
  [ -f "$tmp/s3/$bucket/$h.narinfo" ] || fail "$h.narinfo is not in the bucket after the push"
  grep -q "^Sig: narpush-cross-$nonce:" "$tmp/s3/$bucket/$h.narinfo" || fail "$h.narinfo is not signed by our key"
done
say "bucket holds: $(cd "$tmp/s3/$bucket" && find . -type f | sort | tr '\n' ' ')"

# 6. Real Nix substitutes it from the bucket (over plain HTTP) into a fresh store,
#    trusting only our key.
http_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 "$http_port" --directory "$tmp/s3/$bucket" \
  </dev/null >"$tmp/http.log" 2>&1 &
pids+=($!)
wait_port "$http_port" "python3 http.server" "$!"
say "+ nix-store --store $tmp/root --realise $built (substituter http://127.0.0.1:$http_port, only our key trusted, require-sigs)"
nix-store --store "$tmp/root" --realise "$built" \
  --option substituters "http://127.0.0.1:$http_port" \
  --option trusted-public-keys "$(cat "$tmp/k.pub")" \
  --option require-sigs true --option narinfo-cache-negative-ttl 0 \
  --option sandbox false --option build-users-group "" >"$tmp/realise.log" 2>&1 \
  || { cat "$tmp/realise.log" >&2; fail "nix-store --realise from the bucket failed"; }
sed 's/^/  | /' "$tmp/realise.log"
[ "$(cat "$tmp/root$built/hello")" = "hello from the pi test" ] || fail "substituted $built has the wrong content"
[ -f "$tmp/root$added" ] || fail "the reference $added was not substituted"
cmp -s "$tmp/root$added" "$added" || fail "substituted $added differs from the original"
[ "$(readlink "$tmp/root$built/note")" = "$added" ] || fail "substituted $built lost its reference"
say "substituted $built and $added into $tmp/root with signatures required"

echo "cross: 1 passed, 0 failed"
