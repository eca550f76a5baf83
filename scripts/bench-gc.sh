#!/usr/bin/env bash
# narpush gc on a large bucket, measured: BENCH_GC_N synthetic paths (default 50,000:
# a narinfo and a NAR each, so 100,000 objects) written straight into s3s-fs's
# directory, in chains of 10 references, all ten days old by the server's clock
# except every 50th chain head; then `narpush gc --dry-run --older-than 7d` over
# S3 (ListObjectsV2 pages, every narinfo read), with its wall time and peak RSS
# (NIX_STORE_DIR is set so that no `nix` child process counts in the peak).
set -euo pipefail
cd "$(dirname "$0")/.."
NARPUSH=${NARPUSH:-$PWD/target/debug/narpush}
S3S=${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
N=${BENCH_GC_N:-50000}
work=$(mktemp -d /tmp/narpush-bench-gc.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export NARPUSH_CONFIG=/dev/null

mkdir -p "$work/data/cache/nar"
python3 - "$work/data/cache" "$N" <<'PY'
import os, sys, time, hashlib
root, n = sys.argv[1], int(sys.argv[2])
alpha = "0123456789abcdfghijklmnpqrsvwxyz"
def h32(i, salt):
    d = hashlib.sha256(f"{salt}{i}".encode()).digest()
    return "".join(alpha[b % 32] for b in d[:32])
def nix32(b):
    out = []
    for k in range((len(b) * 8 - 1) // 5, -1, -1):
        i, j = divmod(k * 5, 8)
        c = (b[i] >> j) | ((b[i + 1] << (8 - j)) if i + 1 < len(b) else 0)
        out.append(alpha[c & 0x1f])
    return "".join(out)
def sha(i, salt):
    return nix32(hashlib.sha256(f"{salt}{i}".encode()).digest())
old = time.time() - 10 * 86400
hashes = [h32(i, "p") for i in range(n)]
for i in range(n):
    name = f"{hashes[i]}-bench-{i}"
    refs = [name]
    if i % 10 != 9:
        refs.append(f"{hashes[i + 1]}-bench-{i + 1}")
    nar = f"nar/{h32(i, 'f')}.nar.zst"
    with open(os.path.join(root, nar), "wb") as f:
        f.write(os.urandom(64))
    text = (f"StorePath: /nix/store/{name}\nURL: {nar}\nCompression: zstd\n"
            f"FileHash: sha256:{sha(i, 'f')}\nFileSize: 64\n"
            f"NarHash: sha256:{sha(i, 'n')}\nNarSize: 120\nReferences: {' '.join(refs)}\n"
            f"Deriver: {h32(i, 'd')}-bench-{i}.drv\nSig: bench-1:AAAA\n")
    p = os.path.join(root, f"{hashes[i]}.narinfo")
    with open(p, "w") as f:
        f.write(text)
    fresh = i % 500 == 0
    t = time.time() if fresh else old
    os.utime(p, (t, t))
    os.utime(os.path.join(root, nar), (t, t))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/data" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
objects=$(find "$work/data/cache" -type f | wc -l)
echo "bucket: $objects objects ($N narinfos, $N NARs); $(nproc) cores"
AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret HOME="$work" NIX_STORE_DIR=/nix/store \
  /usr/bin/time -f '%e s wall, %M KiB peak RSS' -o "$work/time" \
  "$NARPUSH" gc --dry-run --older-than 7d --to "s3://cache?endpoint=127.0.0.1:$port&scheme=http" \
  > "$work/out"
tail -1 "$work/out"
echo "gc --dry-run: $(cat "$work/time")"
