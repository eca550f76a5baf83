#!/usr/bin/env bash
# narpush beside `nix copy`, measured: wall time, peak RSS and compressed size for
# the same store path, per compression; then narpush's peak RSS streaming a large NAR
# to the local S3 server (multipart). Inputs: BENCH_SRC (a directory to add to the
# store, default /usr/lib/gcc: real binaries), BENCH_BIG_MB (size of the large NAR,
# default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
NARPUSH=${NARPUSH:-$PWD/target/release/narpush}
S3S=${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
SRC=${BENCH_SRC:-/usr/lib/gcc}
BIG_MB=${BENCH_BIG_MB:-1024}
work=$(mktemp -d /tmp/narpush-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export NARPUSH_CONFIG=/dev/null

path=$(nix-store --add "$SRC")
narsize=$(nix-store -q --size "$path")
"$NARPUSH" keygen bench-1 --out "$work/k" >/dev/null 2>&1
echo "store path: $path (NAR $((narsize / 1048576)) MiB, from $SRC); $(nproc) cores"
filesize() { awk '/^FileSize:/ {print $2}' "$1"/*.narinfo; }
measure() { /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/time"; }

printf '\n%-6s | %-28s | %-28s\n' compr "nix copy (s, MiB RSS, ratio)" "narpush (s, MiB RSS, ratio)"
printf -- '-------+------------------------------+------------------------------\n'
for c in zstd xz none; do
  read -r nt nm < <(measure nix --extra-experimental-features nix-command copy --to "file://$work/nix-$c?compression=$c" "$path")
  read -r pt pm < <(measure "$NARPUSH" push --no-deps --compression "$c" --key-file "$work/k.sec" --to "file://$work/np-$c" "$path")
  nr=$(awk -v f="$(filesize "$work/nix-$c")" -v n="$narsize" 'BEGIN{printf "%.3f", f/n}')
  pr=$(awk -v f="$(filesize "$work/np-$c")" -v n="$narsize" 'BEGIN{printf "%.3f", f/n}')
  printf '%-6s | %6.1f s %6d MiB  %6s   | %6.1f s %6d MiB  %6s\n' "$c" "$nt" $((nm / 1024)) "$nr" "$pt" $((pm / 1024)) "$pr"
done

# A large incompressible NAR through the S3 path (multipart), for peak RSS.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
"$S3S" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
mkdir -p "$work/big"
head -c $((BIG_MB * 1048576)) /dev/urandom > "$work/big/random.bin"
big=$(nix-store --add "$work/big")
rm -rf "$work/big"
for c in zstd none; do
  read -r bt bm < <(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret measure "$NARPUSH" push --no-deps \
    --compression "$c" --to "s3://bench?endpoint=127.0.0.1:$port&scheme=http" "$big")
  printf '\nnarpush to S3 (s3s-fs), %d MiB NAR, %s: %.1f s, peak RSS %d MiB\n' "$BIG_MB" "$c" "$bt" $((bm / 1024))
  rm -f "$work/s3/bench/"*.narinfo
done
nix-store --delete "$big" >/dev/null 2>&1 || true
