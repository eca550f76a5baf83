#!/usr/bin/env bash
# The main job end to end, on this machine: a local S3 server (s3s-fs, which checks
# SigV4 signatures), a signing key, a Nix build with narpush as its post-build-hook
# (which only queues the outputs and returns at once; a background pusher uploads
# them), `narpush status` and `narpush flush` waiting for the pusher, and a fresh Nix store that substitutes the result from the bucket over HTTP with
# signatures required and only narpush's key trusted.
set -euo pipefail
cd "$(dirname "$0")/.."
NARPUSH=${NARPUSH:-$PWD/target/release/narpush}
S3S=${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
work=$(mktemp -d /tmp/narpush-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
nixopts=(--option sandbox false --option build-users-group "" --option substituters "")

say "1. a local S3 server with bucket nix-cache"
port=$(free_port)
mkdir -p "$work/s3/nix-cache"
AK=demo-access-key SK=demo-secret-key-$RANDOM$RANDOM
"$S3S" --host 127.0.0.1 --port "$port" --access-key "$AK" --secret-key "$SK" "$work/s3" >"$work/s3s.log" 2>&1 &
pids+=($!)
wait_port "$port"
echo "s3s-fs on 127.0.0.1:$port, data in $work/s3"

say "2. a signing key (narpush keygen), credentials and /etc/narpush.toml-style config"
"$NARPUSH" keygen demo-cache-1 --out "$work/demo-cache-1"
printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$AK" "$SK" > "$work/credentials"
chmod 600 "$work/credentials"
cat > "$work/narpush.toml" <<TOML
to = "s3://nix-cache?endpoint=127.0.0.1:$port&scheme=http"
key-file = "$work/demo-cache-1.sec"
credentials-file = "$work/credentials"
state-dir = "$work/state"
TOML
cat "$work/narpush.toml"

say "3. nix-build with post-build-hook = narpush (the hook queues and returns at once)"
tag="demo-$(date +%s%N)"
cat > "$work/demo.nix" <<NIX
let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin"; tag = "$tag"; };
  greeting = mk "demo-greeting" "echo 'hello from a narpush cache' > \$out";
in mk "demo-hello" "mkdir -p \$out/bin; printf '#!/bin/sh\\ncat %s\\n' \${greeting} > \$out/bin/hello; chmod +x \$out/bin/hello"
NIX
t0=$(date +%s%3N)
out=$(NARPUSH_CONFIG="$work/narpush.toml" nix-build "$work/demo.nix" --no-out-link "${nixopts[@]}" \
  --option post-build-hook "$NARPUSH" 2>&1 | tee "$work/build.log" | grep -v '^/nix/store' >&2; tail -1 "$work/build.log")
t1=$(date +%s%3N)
echo "built $out; nix-build returned after $((t1 - t0)) ms (the pusher uploads in the background)"

say "4. narpush status right after the build, then narpush flush (waits for the pusher)"
NARPUSH_CONFIG="$work/narpush.toml" "$NARPUSH" status || true
NARPUSH_CONFIG="$work/narpush.toml" "$NARPUSH" flush --timeout 5min
NARPUSH_CONFIG="$work/narpush.toml" "$NARPUSH" status

say "5. what is in the bucket"
(cd "$work/s3/nix-cache" && find . -type f ! -path './.*' | sort | sed 's|^\./|  |')

say "6. a fresh store substitutes it from the bucket (HTTP), signatures required"
hport=$(free_port)
python3 -m http.server --bind 127.0.0.1 "$hport" --directory "$work/s3/nix-cache" >/dev/null 2>&1 &
pids+=($!)
wait_port "$hport"
nix-store --store "$work/client" --realise "$out" "${nixopts[@]}" \
  --option substituters "http://127.0.0.1:$hport" \
  --option trusted-public-keys "$(cat "$work/demo-cache-1.pub")" \
  --option require-sigs true --option narinfo-cache-negative-ttl 0
echo "running it from the client store:"
sh -c "sed 's|/nix/store|$work/client/nix/store|' '$work/client$out/bin/hello' | sh"

say "done: the build was queued by the hook, pushed by the pusher and substituted with require-sigs (work dir $work)"
