#!/usr/bin/env bash
# What users feel over a real link: narpush pushing to s3s-fs behind TLS (stunnel, with a
# CA made here) and a loopback link emulator (examples/netproxy.rs: a round-trip delay and
# a shared bandwidth cap each way; netem is not available in this kernel). For each
# workload and configuration: wall time, narpush's CPU time (user + system), requests
# sent, TCP connections opened, peak RSS, and the floor (the round trips that cannot be avoided x RTT / requests in flight
# + bytes / bandwidth). Side by side in one run:
#   0.1            --jobs 2 (0.1's default on 2 cores), a new connection per request
#                  (idle-timeout=0, what 0.1 did)
#   no reuse       today's default --jobs 24, a new connection per request
#   now            today's defaults: --jobs 24, connections reused
# Inputs: BENCH_RTT_MS (25), BENCH_MBIT (100), BENCH_SMALL (500 small paths),
# BENCH_BIG_SRC (a directory of real binaries, default /usr/bin), BENCH_LOCAL_RUNS (9).
set -euo pipefail
cd "$(dirname "$0")/.."
NARPUSH=${NARPUSH:-$PWD/target/release/narpush}
# The link emulator and request counter, in Rust so that it takes little of the CPU
# narpush needs (the measuring chain shares the cores; its CPU time is reported below).
NETPROXY=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/netproxy
S3S=${NARPUSH_S3S_FS:-$PWD/.tools/bin/s3s-fs}
RTT=${BENCH_RTT_MS:-25}
MBIT=${BENCH_MBIT:-100}
SMALL=${BENCH_SMALL:-500}
BIG_SRC=${BENCH_BIG_SRC:-/usr/bin}
RUNS=${BENCH_LOCAL_RUNS:-9}
work=$(mktemp -d /tmp/narpush-bench-net.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export NARPUSH_CONFIG=/dev/null NARPUSH_STATE_DIR=$work/state
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key
for t in stunnel openssl python3; do
  command -v "$t" >/dev/null || { echo "bench-net: $t is missing; run 'make deps'" >&2; exit 1; }
done

${CARGO:-cargo} build --release --quiet --example netproxy

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "bench-net: nothing listens on 127.0.0.1:$1 ($2)" >&2; exit 1
}

# The S3 server, and TLS in front of it with a CA made here.
s3port=$(free_port)
mkdir -p "$work/s3"
"$S3S" --host 127.0.0.1 --port "$s3port" --access-key bench --secret-key bench-secret-key "$work/s3" \
  >"$work/s3s.log" 2>&1 &
pids+=($!)
wait_port "$s3port" s3s-fs
(
  cd "$work"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=narpush bench CA" \
    -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out server.pem 2>/dev/null
)
export SSL_CERT_FILE=$work/ca.pem NIX_SSL_CERT_FILE=$work/ca.pem
# narpush --TLS--> link (delay, bandwidth, counts connections) --> stunnel
#   --> counter (counts HTTP requests, plaintext) --> s3s-fs
count_port=$(free_port)
tls_port=$(free_port)
cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
[s3]
accept = 127.0.0.1:$tls_port
connect = 127.0.0.1:$count_port
cert = $work/server.pem
key = $work/server.key
EOF
stunnel "$work/stunnel.conf" >"$work/stunnel.log" 2>&1 &
pids+=($!)
wait_port "$tls_port" stunnel

# CPU time (user + system, with reaped children) a process has used, in clock ticks.
cpu_ticks() {
  local s
  s=$(<"/proc/$1/stat")
  s=${s##*) } # fields from the 3rd on; comm may hold spaces
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13} + ${14} + ${15}))
}
proxy_ticks=0 narpush_cpu=0
chain_t0=$(( $(cpu_ticks "${pids[0]}") + $(cpu_ticks "${pids[1]}") ))

# Start the two proxies for one measurement; stop_proxies leaves their counters in
# $work/link.json and $work/count.json (each proxy writes them and exits once its
# stop file exists).
start_proxies() {
  rm -f "$work"/link.json "$work"/count.json "$work"/link.port "$work"/link.stop "$work"/count.stop
  "$NETPROXY" --upstream "127.0.0.1:$s3port" --listen "$count_port" \
    --count-http --stats "$work/count.json" --stop-file "$work/count.stop" &
  count_pid=$!
  "$NETPROXY" --upstream "127.0.0.1:$tls_port" --rtt-ms "$RTT" --mbit "$MBIT" \
    --stats "$work/link.json" --port-file "$work/link.port" --stop-file "$work/link.stop" &
  link_pid=$!
  pids+=("$count_pid" "$link_pid")
  for _ in $(seq 200); do [ -s "$work/link.port" ] && break; sleep 0.05; done
  link_port=$(cat "$work/link.port")
  wait_port "$count_port" counter
}
stop_proxies() {
  proxy_ticks=$((proxy_ticks + $(cpu_ticks "$link_pid") + $(cpu_ticks "$count_pid")))
  touch "$work/link.stop" "$work/count.stop"
  wait "$link_pid" "$count_pid" 2>/dev/null || true
  [ -s "$work/link.json" ] && [ -s "$work/count.json" ] ||
    { echo "bench-net: the link emulator left no counters" >&2; exit 1; }
}
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

"$NARPUSH" keygen bench-1 --out "$work/k" >/dev/null 2>&1
export NARPUSH_KEY_FILE=$work/k.sec

# Workload inputs: SMALL new small paths (one nix-store call), and the big path.
mkdir -p "$work/small"
nonce=$(date +%s%N)
for i in $(seq "$SMALL"); do echo "narpush bench $nonce $i" >"$work/small/p$i"; done
mapfile -t small < <(cd "$work/small" && nix-store --add $(ls))
big=$(nix-store --add "$BIG_SRC")
bigsize=$(nix-store -q --size "$big")
# The inputs reach the disk before the clock starts: otherwise the kernel writes the
# big path back while the first rows run, and s3s-fs's writes wait behind it.
sync

printf 'link: %s ms RTT, %s Mbit/s each way, TLS (stunnel); %s cores\n' "$RTT" "$MBIT" "$(nproc)"
printf '%-32s %-10s %8s %6s %9s %6s %8s %8s\n' workload config "wall s" "CPU s" requests conns "RSS MiB" "floor s"
row() { # WORKLOAD CONFIG BUCKET NARPUSH-ARGS...; FLIGHT: requests in flight at best
  local wl=$1 cfg=$2 bucket=$3
  shift 3
  local url="s3://$bucket?endpoint=localhost:$link_port&scheme=https$URL_EXTRA"
  /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$NARPUSH" push --no-deps --to "$url" "$@" \
    >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  stop_proxies
  read -r wall rss user sys <"$work/time"
  reqs=$(json "$work/count.json" requests)
  conns=$(json "$work/link.json" connections)
  up=$(json "$work/link.json" bytes_up)
  # Floor: requests x RTT / requests in flight + bytes / bandwidth.
  floor=$(awk -v r="$reqs" -v p="$FLIGHT" -v rtt="$RTT" -v b="$up" -v m="$MBIT" \
    'BEGIN { printf "%.2f", r * rtt / 1000 / p + b * 8 / (m * 1e6) }')
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  narpush_cpu=$(awk -v a="$narpush_cpu" -v c="$cpu" 'BEGIN { printf "%.2f", a + c }')
  printf '%-32s %-10s %8.2f %6s %9s %6s %8d %8s\n' "$wl" "$cfg" "$wall" "$cpu" "$reqs" "$conns" $((rss / 1024)) "$floor"
}

for cfg in 0.1 "no reuse" now; do
  case $cfg in
    0.1) jobs=2 URL_EXTRA="&idle-timeout=0" ;;
    "no reuse") jobs=24 URL_EXTRA="&idle-timeout=0" ;;
    now) jobs=24 URL_EXTRA="" ;;
  esac
  bucket="b$(echo "$cfg" | tr -dc a-z0-9)"
  mkdir -p "$work/s3/$bucket"
  # New paths: each needs its HEAD, its NAR and its narinfo (2 in a row); cached: a HEAD.
  FLIGHT=$jobs
  start_proxies
  row "$SMALL small paths, new" "$cfg" "$bucket" --jobs "$jobs" "${small[@]}"
  FLIGHT=$(( jobs < 8 ? 8 : (jobs > 32 ? 32 : jobs) ))
  start_proxies
  row "$SMALL small paths, cached" "$cfg" "$bucket" --jobs "$jobs" "${small[@]}"
done
for cfg in 0.1 now; do
  case $cfg in
    0.1) jobs=2 URL_EXTRA="&idle-timeout=0" ;;
    now) jobs=24 URL_EXTRA="" ;;
  esac
  bucket="big$(echo "$cfg" | tr -dc a-z0-9)"
  mkdir -p "$work/s3/$bucket"
  FLIGHT=1
  start_proxies
  row "$(basename "$BIG_SRC") ($((bigsize >> 20)) MiB NAR), zstd" "$cfg" "$bucket" --jobs "$jobs" "$big"
  rm -rf "${work:?}/s3/$bucket"
done

# What shared the cores with narpush during the runs above.
chain_t1=$(( $(cpu_ticks "${pids[0]}") + $(cpu_ticks "${pids[1]}") ))
awk -v p="$proxy_ticks" -v c="$((chain_t1 - chain_t0))" -v hz="$(getconf CLK_TCK)" -v n="$narpush_cpu" \
  'BEGIN { printf "measuring chain CPU s over these runs: %.2f (link emulator and counter %.2f, stunnel and s3s-fs %.2f); narpush %.2f\n", (p + c) / hz, p / hz, c / hz, n }'

# Fixed costs on loopback (no proxy, no TLS): one small path, new and already cached.
mkdir -p "$work/s3/local" "$work/one"
url="s3://local?endpoint=127.0.0.1:$s3port&scheme=http"
"$NARPUSH" push --no-deps --to "$url" "${small[0]}" >/dev/null 2>&1 # nix-cache-info
for i in $(seq "$RUNS"); do echo "narpush bench one $nonce $i" >"$work/one/o$i"; done
mapfile -t ones < <(cd "$work/one" && nix-store --add $(ls))
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1 || exit 1; t1=$(date +%s%N); echo $(((t1 - t0) / 1000)); }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR + 1) / 2)] / 1000}'; }
new_ms=$(for p in "${ones[@]}"; do ms "$NARPUSH" push --no-deps --to "$url" "$p"; done | median)
cached_ms=$(for p in "${ones[@]}"; do ms "$NARPUSH" push --no-deps --to "$url" "$p"; done | median)
copy_ms=$(for p in "${ones[@]}"; do ms nix --extra-experimental-features nix-command copy --to "file://$work/copy" "$p"; done | median)
# The one child process a push runs, alone: what bounds the cached case.
info_ms=$(for p in "${ones[@]}"; do ms nix --extra-experimental-features nix-command path-info --json "$p"; done | median)
printf '\nloopback, one small path (median of %s): new %s ms, already cached %s ms; nix copy to file:// %s ms;\n' \
  "$RUNS" "$new_ms" "$cached_ms" "$copy_ms"
printf 'of which nix path-info --json alone (narpush'"'"'s one child process): %s ms\n' "$info_ms"
nix-store --delete "$big" "${small[@]}" "${ones[@]}" >/dev/null 2>&1 || true
