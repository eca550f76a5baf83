#!/usr/bin/env bash
# The build-loop cost of a post-build hook: nix-build of N derivations (default 20),
# each writing a SIZE MiB output (default 20, random, so incompressible), built one
# after another (max-jobs 1: Nix runs each hook in its build loop), with
#   - no hook,
#   - /bin/true as the hook (what the timing wrapper and Nix's hook start cost alone),
#   - narpush queueing (the default: the hook queues, a detached pusher uploads),
#   - narpush --wait (the hook uploads before it returns, as before the queue),
#   - the Nix manual's example hook (`nix copy` of $OUT_PATHS; to file:// since
#     Debian's Nix 2.8 has no s3://, and from DRV_PATH's outputs since 2.8 passes an
#     empty OUT_PATHS),
# with the local S3 server up and frozen (SIGSTOP: it accepts connections and
# answers nothing). Each hook is timed by a wrapper; the table gives the median and
# the maximum per hook and the whole nix-build. --wait with the server frozen costs
# about a minute per hook, so that row builds only WAIT_STALLED derivations (3).
# Results go to stdout and replace this script's section of bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
NARPUSH=${NARPUSH:-$PWD/target/release/narpush}
S3S=${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
N=${BENCH_HOOK_BUILDS:-20}
SIZE=${BENCH_HOOK_MIB:-20}
WAIT_STALLED=${BENCH_HOOK_WAIT_STALLED_BUILDS:-3}
OUT=${BENCH_HOOK_RESULTS:-bench/results.md}
work=$(mktemp -d /tmp/narpush-bench-hook.XXXXXX)
s3pid=
cleanup() {
    if [ -n "$s3pid" ]; then kill -CONT "$s3pid" 2>/dev/null || true; kill "$s3pid" 2>/dev/null || true; fi
    # Pushers this script's hooks started (their pids are in the lock files).
    for l in "$work"/state-*/pusher.lock; do
        [ -s "$l" ] && kill "$(cat "$l")" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap "exit 1" INT TERM
nixopts=(--option sandbox false --option build-users-group "" --option substituters "" --option max-jobs 1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now_ms() { date +%s%3N; }

port=$(free_port)
mkdir -p "$work/s3/cache"
AK=bench-access-key SK=bench-secret-$RANDOM$RANDOM
"$S3S" --host 127.0.0.1 --port "$port" --access-key "$AK" --secret-key "$SK" "$work/s3" >"$work/s3s.log" 2>&1 &
s3pid=$!
wait_port "$port"
"$NARPUSH" keygen bench-1 --out "$work/bench-1" >/dev/null 2>&1
printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$AK" "$SK" > "$work/credentials"
chmod 600 "$work/credentials" "$work/bench-1.sec"

# The hook wrapper: runs the command in $BENCH_HOOK, appends its time in ms.
cat > "$work/timed-hook" <<'SH'
#!/bin/sh
t0=$(date +%s%N)
"$BENCH_HOOK" >/dev/null 2>&1
rc=$?
t1=$(date +%s%N)
echo $(( (t1 - t0) / 1000000 )) >> "$BENCH_TIMES"
exit $rc
SH
cat > "$work/nix-copy-hook" <<'SH'
#!/bin/sh
# The Nix manual's post-build-hook example, to file://.
set -eu
set -f
export IFS=' '
paths=$OUT_PATHS
[ -n "$paths" ] || paths=$(nix-store --query --outputs "$DRV_PATH")
exec nix --extra-experimental-features nix-command copy --to "file://$BENCH_NIXCOPY_DIR" $paths
SH
chmod +x "$work/timed-hook" "$work/nix-copy-hook"

# median and max of a file of numbers (ms)
stats() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "- -"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s %s\n", m, a[NR]}'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v=="-") print "-"; else if (v<1000) printf "%.1f ms", v; else printf "%.1f s", v/1000 }'; }

rows=()
run() { # name server(up|frozen) mode(none|queue|wait|nixcopy) builds
    local name=$1 server=$2 mode=$3 n=$4 tag
    tag="$mode-$server-$(date +%s%N)"
    local state="$work/state-$mode-$server"
    cat > "$work/narpush-$mode-$server.toml" <<TOML
to = "s3://cache?endpoint=127.0.0.1:$port&scheme=http"
key-file = "$work/bench-1.sec"
credentials-file = "$work/credentials"
state-dir = "$state"
TOML
    cat > "$work/bench.nix" <<NIX
builtins.genList (i: derivation {
  name = "bench-hook-\${toString i}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "head -c $((SIZE * 1048576)) /dev/urandom > \$out" ];
  tag = "$tag";
}) $n
NIX
    local times="$work/times-$mode-$server"
    : > "$times"
    local hookopt=()
    [ "$mode" = none ] || hookopt=(--option post-build-hook "$work/timed-hook")
    local hook=$NARPUSH
    [ "$mode" = nixcopy ] && hook="$work/nix-copy-hook"
    [ "$mode" = true ] && hook=/bin/true
    [ "$server" = frozen ] && kill -STOP "$s3pid"
    local t0 t1
    t0=$(now_ms)
    env NARPUSH_CONFIG="$work/narpush-$mode-$server.toml" BENCH_HOOK="$hook" BENCH_TIMES="$times" \
        BENCH_NIXCOPY_DIR="$work/nixcopy-$server" NARPUSH_WAIT=$([ "$mode" = wait ] && echo 1 || echo 0) \
        nix-build "$work/bench.nix" --no-out-link "${nixopts[@]}" "${hookopt[@]}" > "$work/build-$mode-$server.log" 2>&1
    t1=$(now_ms)
    [ "$server" = frozen ] && kill -CONT "$s3pid"
    read -r med max < <(stats "$times")
    rows+=("| $name | $n | $(fmt_ms "$med") | $(fmt_ms "$max") | $(fmt_ms $((t1 - t0))) |")
    echo "${rows[-1]}"
    if [ "$mode" = queue ]; then
        # Let the pusher finish before the next row (it would compete for the CPU).
        NARPUSH_CONFIG="$work/narpush-$mode-$server.toml" "$NARPUSH" flush --timeout 10min -q >/dev/null 2>&1 \
            || echo "warning: flush after '$name' failed" >&2
    fi
}

echo "| hook | builds | per hook, median | per hook, max | nix-build |"
echo "|---|---|---|---|---|"
run "none" up none "$N"
run "/bin/true (baseline: the wrapper's own cost)" up true "$N"
run "narpush (queue), server up" up queue "$N"
run "narpush (queue), server frozen" frozen queue "$N"
run "narpush --wait, server up" up wait "$N"
run "nix copy (manual's script, file://)" up nixcopy "$N"
run "narpush --wait, server frozen" frozen wait "$WAIT_STALLED"

{
    echo "## Build-loop cost of the post-build hook (scripts/bench-hook.sh)"
    echo
    echo "nix-build of N derivations, each writing a ${SIZE} MiB random output, one at a time"
    echo "(max-jobs 1), Nix $(nix --version | awk '{print $NF}'), on $(nproc) cores, to s3s-fs on 127.0.0.1"
    echo "(frozen = SIGSTOP: accepts connections, answers nothing). Run on $(date -u +%Y-%m-%d),"
    echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg). Per-hook times include the timing"
    echo "wrapper (a shell and two \`date\` processes): the /bin/true row is that baseline."
    echo
    echo "| hook | builds | per hook, median | per hook, max | nix-build |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} > "$work/section.md"
cat "$work/section.md"
# Replace this script's section of $OUT (up to the next "## " heading), leaving the
# other benchmarks' sections as they are; a new file gets a title first.
python3 - "$OUT" "$work/section.md" <<'PY'
import sys
out, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n") + "\n"
head = "## Build-loop cost of the post-build hook"
try:
    text = open(out).read()
except FileNotFoundError:
    text = "# Benchmarks\n\n"
start = text.find(head)
if start < 0:
    text = text.rstrip("\n") + "\n\n" + section
else:
    end = text.find("\n## ", start + len(head))
    rest = text[end + 1:] if end >= 0 else ""
    text = text[:start] + section + ("\n" + rest if rest else "")
open(out, "w").write(text)
PY
echo "its section of $OUT replaced"
