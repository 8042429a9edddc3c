#!/usr/bin/env bash
# Runs every benchmark of docs/BENCHMARKS.md, next to etcd's election on the
# same machine, and rewrites that page and docs/benchmarks-latency.png.
#
# It installs what it needs (the build dependencies through scripts/setup.sh;
# etcd-server, golang-etcd-server-dev, golang-go and gnuplot-nox itself),
# builds the benchmarks and the etcd peer (offline, against Debian's etcd
# sources), starts a nats-server and an etcd on free loopback ports, runs the
# micro benchmarks and every end-to-end series (the 3-node NATS cluster is
# started by the harness), then writes the page and the plot.
#
# Usage: scripts/bench.sh
# Environment:
#   BENCH_QUICK=1        a short run: fewer runs, shorter windows (~2 min)
#   BUILD_DIR=build-bench  CMake build directory (relative to the repository)
#   BENCH_RESULTS=DIR    raw results (CSV, JSON); default $BUILD_DIR/bench-results
#   BENCH_IO_THREADS=N   --io-threads of multi-role in the scale series
#   BENCH_SKIP_SETUP=1   do not install packages
#   BENCH_KEEP_LOGS=1    keep the temporary directory with the servers' logs
# Everything it starts is stopped by PID on exit, also on Ctrl-C or failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build-bench}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
RES=${BENCH_RESULTS:-$BUILD_DIR/bench-results}
QUICK=${BENCH_QUICK:-0}

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

if [[ $QUICK == 1 ]]; then
  MODE="quick (BENCH_QUICK=1)"
  GRACEFUL_RUNS=30 CRASH_RUNS=10 ROUNDS=2 TAKEOVERS=3 WINDOW=5s
  MICRO_FLAGS=(--benchmark_min_time=0.05)
else
  MODE=full
  GRACEFUL_RUNS=200 CRASH_RUNS=100 ROUNDS=10 TAKEOVERS=10 WINDOW=30s
  MICRO_FLAGS=(--benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
fi

# ---- packages
install_packages() {
  local missing=() pkg sudo=()
  for pkg in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these Debian packages: ${missing[*]}"
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install as root: ${missing[*]}"
    if [[ -t 0 ]]; then sudo=(sudo); else sudo=(sudo -n); fi
  fi
  say "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
if [[ ${BENCH_SKIP_SETUP:-0} != 1 ]]; then
  bash "$ROOT/scripts/setup.sh"
  install_packages etcd-server golang-etcd-server-dev golang-go gnuplot-nox
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/leader-bench.XXXXXX")
MAIN_PID=$BASHPID
PIDS=()

cleanup() {
  local rc=$? pid f
  trap - EXIT INT TERM
  [[ $BASHPID == "$MAIN_PID" ]] || exit "$rc"
  set +e
  # The servers' data are thrown away: no need for a graceful stop.
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if ((rc != 0 && rc != 130 && rc != 143)); then
    for f in "$WORK"/*.log; do
      [[ -s $f ]] || continue
      say "---- last lines of ${f##*/}"
      tail -n 15 "$f" >&2
    done
  fi
  if [[ ${BENCH_KEEP_LOGS:-0} == 1 ]]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
say "building in $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLEADER_BUILD_BENCHMARKS=ON \
  -DLEADER_BUILD_TESTS=ON -DLEADER_BUILD_TOOLS=OFF -DLEADER_BUILD_EXAMPLES=ON "${launcher[@]}" >"$WORK/cmake.log"
cmake --build "$BUILD_DIR" -j "$(nproc)" \
  --target leader-bench-micro leader-bench-candidate leader-bench-e2e multi-role >"$WORK/build.log" 2>&1 ||
  { tail -n 40 "$WORK/build.log" >&2; die "build failed"; }
BIN=$BUILD_DIR/bench
E2E=$BIN/leader-bench-e2e

# The etcd peer, offline: Debian ships the client's sources in /usr/share/gocode.
say "building the etcd candidate (bench/etcd/election.go)"
mkdir -p "$WORK/gopath/src/leader-bench-etcd"
cp "$ROOT/bench/etcd/election.go" "$WORK/gopath/src/leader-bench-etcd/"
(cd "$WORK/gopath/src/leader-bench-etcd" &&
  GO111MODULE=off GOFLAGS='' GOPATH="$WORK/gopath:/usr/share/gocode" GOCACHE="$BUILD_DIR/go-cache" \
    go build -o "$BIN/leader-bench-etcd" .) || die "go build of bench/etcd/election.go failed"

# ---- servers, on free loopback ports
mapfile -t PORTS < <("$E2E" ports 4)
NATS_PORT=${PORTS[0]} NATS_MONITOR_PORT=${PORTS[1]} ETCD_PORT=${PORTS[2]} ETCD_PEER_PORT=${PORTS[3]}
NATS_URL=nats://127.0.0.1:$NATS_PORT
ETCD_ENDPOINT=127.0.0.1:$ETCD_PORT

cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MONITOR_PORT
jetstream {
  store_dir: "$WORK/nats"
}
EOF
# Debian installs nats-server in /usr/sbin, which a user's PATH may lack.
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
"$NATS_SERVER" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")

# etcd leases are whole seconds and at least 1.5 election timeouts: with the
# defaults (100 / 1000 ms) a 1 s TTL would become 2 s.
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$ETCD_ENDPOINT" --advertise-client-urls "http://$ETCD_ENDPOINT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
  --heartbeat-interval 50 --election-timeout 500 --log-level warn >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")

wait_for() {
  local what=$1 url=$2 pattern=$3 i
  for ((i = 0; i < 200; i++)); do
    if curl -fsS --max-time 1 "$url" 2>/dev/null | grep -q "$pattern"; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up ($url)"
}
wait_for nats-server "http://127.0.0.1:$NATS_MONITOR_PORT/healthz" ok
wait_for etcd "http://$ETCD_ENDPOINT/health" '"health":"true"'

# ---- what ran, and where
rm -rf "$RES"
mkdir -p "$RES"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "mode: $MODE"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] && echo ' (with uncommitted changes)')"
  echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "kernel: $(uname -sr), clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)"
  echo "OS: $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release)"
  echo "compiler: $(c++ --version | head -n 1), RelWithDebInfo"
  echo "nats: nats-server $("$NATS_SERVER" --version | sed 's/^nats-server: v//'), nats.c $(dpkg-query -W -f='${Version}' libnats-dev)"
  echo "etcd: $(etcd --version | sed -n 's/^etcd Version: //p') (client from golang-etcd-server-dev), $(go version | cut -d' ' -f3)"
} >"$RES/machine.txt"

# Runs a series and writes its command line, with this run's ports and
# paths as variables, to commands.txt.
run() {
  local line="$*"
  line=${line//"$E2E"/"\$E2E"}
  line=${line//"$RES"/"\$RESULTS"}
  line=${line//"$BIN"/"\$BIN"}
  line=${line//"$ROOT"/.}
  line=${line//"$NATS_URL"/"\$NATS_URL"}
  line=${line//"$ETCD_ENDPOINT"/"\$ETCD_ENDPOINT"}
  line=${line//--nats-monitor $NATS_MONITOR_PORT/--nats-monitor \$NATS_MONITOR_PORT}
  line=${line//--nats-pid $NATS_PID/--nats-pid \$NATS_PID}
  printf '%s\n' "$line" >>"$RES/commands.txt"
  "$@"
}
# A series that fails is reported and the others still run; the script
# fails at the end.
FAILED=()
series() {
  local name=${1##*/}
  [[ $1 == "$E2E" ]] && name="$2 ${*: -1}"
  run "$@" || {
    say "FAILED: $name"
    FAILED+=("$name")
  }
}
{
  echo "# scripts/bench.sh ($MODE) ran, with E2E=\$BIN/leader-bench-e2e and the servers it started:"
  echo "# nats-server -c nats.conf (listen \$NATS_URL, http \$NATS_MONITOR_PORT, jetstream)"
  echo "# etcd --heartbeat-interval 50 --election-timeout 500 (client \$ETCD_ENDPOINT)"
} >"$RES/commands.txt"
SECONDS=0

say "micro benchmarks"
series "$BIN/leader-bench-micro" "${MICRO_FLAGS[@]}" --benchmark_out="$RES/micro.json" \
  --benchmark_out_format=json >"$WORK/micro.log"

common=(--out "$RES")
etcd_flags=(--impl etcd --etcd-endpoint "$ETCD_ENDPOINT" --etcd-candidate "$BIN/leader-bench-etcd")
say "graceful handovers"
series "$E2E" graceful "${common[@]}" --runs "$GRACEFUL_RUNS" --nats-url "$NATS_URL"
series "$E2E" graceful "${common[@]}" --runs "$GRACEFUL_RUNS" --nats-url "$NATS_URL" --jitter 0ms \
  --name graceful-leader-1-j0
series "$E2E" graceful "${common[@]}" --runs "$GRACEFUL_RUNS" --servers 3
series "$E2E" graceful "${common[@]}" --runs "$GRACEFUL_RUNS" "${etcd_flags[@]}"
say "crash failovers"
series "$E2E" crash "${common[@]}" --runs "$CRASH_RUNS" --nats-url "$NATS_URL"
series "$E2E" crash "${common[@]}" --runs "$CRASH_RUNS" --servers 3
series "$E2E" crash "${common[@]}" --runs "$CRASH_RUNS" "${etcd_flags[@]}"
say "contention"
series "$E2E" contention "${common[@]}" --candidates 100 --rounds "$ROUNDS" --takeovers "$TAKEOVERS" \
  --nats-url "$NATS_URL"
say "scale"
scale_flags=(--nats-url "$NATS_URL" --nats-monitor "$NATS_MONITOR_PORT" --nats-pid "$NATS_PID" --window "$WINDOW")
[[ -n ${BENCH_IO_THREADS:-} ]] && scale_flags+=(--io-threads "$BENCH_IO_THREADS")
series "$E2E" scale "${common[@]}" --roles 1000 "${scale_flags[@]}"
series "$E2E" scale "${common[@]}" --roles 10000 "${scale_flags[@]}"
say "series done in ${SECONDS} s"

# ---- the page and the plot
mkdir -p "$ROOT/docs"
echo "gnuplot \$RESULTS/latency.gp" >>"$RES/commands.txt"
run "$E2E" report --results "$RES" --out "$ROOT/docs/BENCHMARKS.md" --plot-script "$RES/latency.gp" \
  --png "$ROOT/docs/benchmarks-latency.png" --analysis "$ROOT/bench/ANALYSIS.md"
gnuplot "$RES/latency.gp"
say "wrote docs/BENCHMARKS.md and docs/benchmarks-latency.png (raw results in $RES)"
((${#FAILED[@]} == 0)) || die "failed series: ${FAILED[*]}"
