#!/usr/bin/env bash
# Leader-election demo: three control-manager instances (cm-1..cm-3) campaign
# for one role on a local nats-server. The demo stops the leader gracefully
# (SIGTERM: it releases the key) and measures the handover, then SIGKILLs the
# new leader and measures the crash failover (about one TTL), and prints who
# led, with which term, and each handover time.
#
# Usage: scripts/demo.sh
# Environment:
#   DEMO_TTL=3s        lease TTL of the instances (e.g. 2s, 1500ms)
#   DEMO_ROUNDS=1      graceful + crash cycles; with more than one, prints
#                      min / median / max of each kind at the end
#   NATS_URL=...       use this server instead of starting one on 127.0.0.1
#   BUILD_DIR=build    CMake build directory (relative to the repository)
#   DEMO_BIN=path      run this control-manager binary instead of building one
#   DEMO_SKIP_SETUP=1  do not run scripts/setup.sh (dependencies already there)
#   DEMO_KEEP_LOGS=1   keep the temporary directory with every log
# Everything it starts is stopped by PID on exit, also on Ctrl-C or failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
DEMO_TTL=${DEMO_TTL:-3s}
DEMO_ROUNDS=${DEMO_ROUNDS:-1}
IDS=(cm-1 cm-2 cm-3)

say() { printf '%s\n' "$*" >&2; }
die() {
  say "demo: error: $*"
  exit 1
}

[[ $DEMO_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "DEMO_ROUNDS must be a positive integer, not '$DEMO_ROUNDS'"
case $DEMO_TTL in
  *ms) TTL_MS=${DEMO_TTL%ms} ;;
  *s) TTL_MS=${DEMO_TTL%s}000 ;;
  *m) TTL_MS=${DEMO_TTL%m}; [[ $TTL_MS =~ ^[0-9]+$ ]] && TTL_MS=$((10#$TTL_MS * 60000)) ;;
  *) TTL_MS=x ;;
esac
if [[ ! $TTL_MS =~ ^[0-9]+$ ]] || ((10#$TTL_MS == 0)); then
  die "DEMO_TTL must look like 3s or 1500ms, not '$DEMO_TTL'"
fi
TTL_MS=$((10#$TTL_MS))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/leader-demo.XXXXXX")
MAIN_PID=$BASHPID
declare -A PID=()
declare -A STARTED_NS=()
NATS_PID=""

# Stops a process we started, by PID: SIGTERM, then SIGKILL after $2 tenths
# of a second; reaps it.
stop_pid() {
  local pid=$1 tenths=${2:-30} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Only the script itself cleans up, never a forked child that has not
  # exec'd yet.
  [[ $BASHPID == "$MAIN_PID" ]] || exit "$rc"
  set +e
  local id
  for id in "${!PID[@]}"; do kill -TERM "${PID[$id]}" 2>/dev/null || true; done
  for id in "${!PID[@]}"; do stop_pid "${PID[$id]}" 30; done
  [[ -n $NATS_PID ]] && stop_pid "$NATS_PID" 50
  if ((rc != 0 && rc != 130 && rc != 143)); then
    local f
    for f in "$WORK"/*.log "$WORK"/*.err; do
      [[ -s $f ]] || continue
      say "---- last lines of ${f##*/}"
      tail -n 15 "$f" >&2
    done
  fi
  if [[ ${DEMO_KEEP_LOGS:-0} == 1 ]]; then
    say "demo: logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wall-clock time in ns (the instances stamp their lines with CLOCK_REALTIME),
# into REPLY without a fork when bash can.
now_ns() {
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    REPLY=${EPOCHREALTIME//[!0-9]/}000
  else
    REPLY=$(date +%s%N)
  fi
}

# Formats microseconds as milliseconds with two decimals.
fmt_ms() {
  local us=$1 sign=""
  ((us < 0)) && sign=- && us=$((-us))
  printf '%s%d.%02d' "$sign" $((us / 1000)) $(((us % 1000) / 10))
}

# Prints the value of key $2 in event line $1.
field() {
  local word
  for word in $1; do
    if [[ $word == "$2="* ]]; then
      printf '%s' "${word#*=}"
      return 0
    fi
  done
  return 1
}

# Sets REPLY to the earliest line with event $2 stamped after $1 (ns) in the
# logs of the instances named after it; fails if there is none yet.
first_event_after() {
  local since=$1 event=$2 id ts rest best=""
  shift 2
  REPLY=""
  for id in "$@"; do
    [[ -f $WORK/$id.log ]] || continue
    while read -r ts rest; do
      if [[ ! $ts =~ ^[0-9]+$ ]] || ((ts <= since)); then continue; fi
      if [[ -z $best ]] || ((ts < best)); then
        best=$ts
        REPLY="$ts $rest"
      fi
    done < <(grep -E " event=$event( |\$)" "$WORK/$id.log" || true)
  done
  [[ -n $REPLY ]]
}

# Like first_event_after, waiting up to $3 ms; dies on timeout.
wait_event() {
  local since=$1 event=$2 timeout_ms=$3 deadline
  shift 3
  now_ns
  deadline=$((REPLY + timeout_ms * 1000000))
  while ! first_event_after "$since" "$event" "$@"; do
    now_ns
    ((REPLY < deadline)) || die "no '$event' from $* within ${timeout_ms} ms"
    sleep 0.02
  done
}

# Sets OTHERS to every instance id but $1.
others() {
  local id
  OTHERS=()
  for id in "${IDS[@]}"; do [[ $id == "$1" ]] || OTHERS+=("$id"); done
}

# Starts instance $1 (appending to its log) and waits for its 'started' line.
spawn() {
  local id=$1 since
  now_ns
  since=$REPLY
  STARTED_NS[$id]=$since
  "$BIN" --nats-url "$URL" --bucket "$BUCKET" --role demo --id "$id" --ttl "$DEMO_TTL" \
    >>"$WORK/$id.log" 2>>"$WORK/$id.err" &
  PID[$id]=$!
  local deadline=$((since + 15 * 1000000000))
  until first_event_after "$since" started "$id"; do
    kill -0 "${PID[$id]}" 2>/dev/null || die "$id exited at start: $(tail -n 3 "$WORK/$id.err")"
    now_ns
    ((REPLY < deadline)) || die "$id did not start within 15 s"
    sleep 0.02
  done
}

# Sets REPLY to the 'promoted' line of the one running instance that
# believes it leads (its last promoted/demoted line since it was started is
# a promoted one); fails if none or several do.
current_leader() {
  local id ts rest last found="" n=0
  for id in "${!PID[@]}"; do
    last=""
    while read -r ts rest; do
      if [[ $ts =~ ^[0-9]+$ ]] && ((ts > STARTED_NS[$id])); then last="$ts $rest"; fi
    done < <(grep -E " event=(promoted|demoted)( |\$)" "$WORK/$id.log" || true)
    if [[ $last == *" event=promoted "* ]]; then
      found=$last
      n=$((n + 1))
    fi
  done
  REPLY=$found
  ((n == 1))
}

# Waits until one instance leads, the same one over 200 ms (a leader that
# demotes itself right after promotion would be a bug worth seeing); sets
# LEADER and TERM_NOW.
settle_leader() {
  local deadline previous="" stable=0
  now_ns
  deadline=$((REPLY + (TTL_MS + 10000) * 1000000))
  while ((stable < 4)); do
    if current_leader && [[ $REPLY == "$previous" ]]; then
      stable=$((stable + 1))
    else
      stable=0
      previous=$REPLY
    fi
    now_ns
    ((REPLY < deadline)) || die "no stable leader within $((TTL_MS + 10000)) ms"
    sleep 0.05
  done
  LEADER=$(field "$previous" id)
  TERM_NOW=$(field "$previous" term)
}

# Waits up to 10 s for instance $1 to exit after SIGTERM; sets REPLY to its
# exit status.
reap() {
  local id=$1 pid=${PID[$1]} i rc=0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && die "$id did not exit within 10 s of SIGTERM"
  wait "$pid" 2>/dev/null || rc=$?
  unset "PID[$id]"
  REPLY=$rc
}

# 1. Dependencies and build: only the example and the library it needs.
if [[ ${DEMO_SKIP_SETUP:-0} != 1 ]]; then
  [[ -f $ROOT/scripts/setup.sh ]] || die "scripts/setup.sh is missing"
  bash "$ROOT/scripts/setup.sh" >&2 || die "scripts/setup.sh failed"
fi
if [[ -n ${DEMO_BIN:-} ]]; then
  BIN=$DEMO_BIN
else
  say "demo: building control-manager in $BUILD_DIR (log: build.log)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -DLEADER_BUILD_EXAMPLES=ON >"$WORK/build.log" 2>&1 || die "cmake configure failed"
  cmake --build "$BUILD_DIR" --target control-manager -j "$(nproc)" >>"$WORK/build.log" 2>&1 ||
    die "build failed"
  BIN=$BUILD_DIR/examples/control-manager/control-manager
fi
[[ -x $BIN ]] || die "no control-manager binary at $BIN"

# 2. A server of our own on a free loopback port (-p -1: the server picks one
#    and logs it), unless NATS_URL names one.
if [[ -n ${NATS_URL:-} ]]; then
  URL=$NATS_URL
  say "demo: using NATS at $URL"
else
  NATS_BIN=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
  [[ -x $NATS_BIN ]] || die "nats-server not found (run scripts/setup.sh)"
  mkdir -p "$WORK/store"
  : >"$WORK/nats.log"
  "$NATS_BIN" -a 127.0.0.1 -p -1 -js -sd "$WORK/store" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  port=""
  for ((i = 0; i < 100; i++)); do
    port=$(sed -n 's/.*Listening for client connections on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/nats.log")
    [[ -n $port ]] && grep -q "Server is ready" "$WORK/nats.log" && break
    kill -0 "$NATS_PID" 2>/dev/null || die "nats-server exited: $(tail -n 3 "$WORK/nats.log")"
    sleep 0.05
  done
  [[ -n $port ]] || die "nats-server did not start within 5 s"
  URL=nats://127.0.0.1:$port
  say "demo: nats-server -js on $URL (pid $NATS_PID)"
fi
BUCKET=demo-$(date +%s)-$$

# 3. Three candidates; wait for the first leader.
now_ns
t_begin=$REPLY
for id in "${IDS[@]}"; do spawn "$id"; done
wait_event "$t_begin" promoted $((TTL_MS + 10000)) "${IDS[@]}"
settle_leader
say "demo: ${IDS[*]} running (bucket $BUCKET, ttl $DEMO_TTL); $LEADER leads, term $TERM_NOW"

# Warns when the first instance to be promoted is not the one that leads
# once things settled (it lost the role again at once).
check_first() {
  local first_id first_term
  first_id=$(field "$1" id)
  first_term=$(field "$1" term)
  if [[ $first_id != "$LEADER" || $first_term != "$TERM_NOW" ]]; then
    say "demo: warning: $first_id was promoted first (term $first_term), but $LEADER leads (term $TERM_NOW)"
  fi
}

ROWS=()
GRACEFUL=()
LIBRARY=()
CRASH=()
row() { ROWS+=("$(printf '%-5s %-9s %-6s %-6s %-8s %15s %15s' "$@")"); }

for ((round = 1; round <= DEMO_ROUNDS; round++)); do
  # (a) Graceful: SIGTERM; the leader stops its work, releases the key, and
  # a follower sees the delete and acquires.
  old=$LEADER
  now_ns
  t_signal=$REPLY
  kill -TERM "${PID[$old]}"
  others "$old"
  wait_event "$t_signal" promoted $((TTL_MS + 10000)) "${OTHERS[@]}"
  new_line=$REPLY
  wait_event "$t_signal" demoted 10000 "$old"
  demoted_line=$REPLY
  reap "$old"
  ((REPLY == 0)) || die "$old exited with status $REPLY after SIGTERM"
  first_event_after "$t_signal" stopped "$old" || die "$old printed no 'stopped' line"
  settle_leader
  check_first "$new_line"
  t_new=${new_line%% *}
  t_demoted=${demoted_line%% *}
  handover_us=$(((t_new - t_signal) / 1000))
  library_us=$(((t_new - t_demoted) / 1000))
  GRACEFUL+=("$handover_us")
  LIBRARY+=("$library_us")
  row "$round" graceful "$old" "$LEADER" "$TERM_NOW" "$(fmt_ms "$handover_us")" "$(fmt_ms "$library_us")"
  say "demo: round $round: SIGTERM $old -> $LEADER leads (term $TERM_NOW) after $(fmt_ms "$handover_us") ms"
  spawn "$old"

  # (b) Crash: SIGKILL; nobody releases, a follower takes over when the
  # lease expires (TTL after the dead leader's last renewal).
  old=$LEADER
  now_ns
  t_kill=$REPLY
  kill -KILL "${PID[$old]}"
  wait "${PID[$old]}" 2>/dev/null || true
  unset "PID[$old]"
  others "$old"
  wait_event "$t_kill" promoted $((TTL_MS + 10000)) "${OTHERS[@]}"
  new_line=$REPLY
  settle_leader
  check_first "$new_line"
  crash_us=$(((${new_line%% *} - t_kill) / 1000))
  CRASH+=("$crash_us")
  row "$round" crash "$old" "$LEADER" "$TERM_NOW" "$(fmt_ms "$crash_us")" "-"
  say "demo: round $round: SIGKILL $old -> $LEADER leads (term $TERM_NOW) after $(fmt_ms "$crash_us") ms"
  spawn "$old"
done

echo
echo "Leader election demo: ${#IDS[@]} control-manager instances, bucket $BUCKET, TTL $DEMO_TTL"
echo "  handover = new leader's 'promoted' time - time just before the signal"
echo "  library  = new leader's 'promoted' time - old leader's 'demoted' time"
echo
printf '%-5s %-9s %-6s %-6s %-8s %15s %15s\n' round kind from to term "handover (ms)" "library (ms)"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "Now leading: $LEADER (term $TERM_NOW)"

# min / median / max of microsecond values, as "min median max" in ms.
stats() {
  local sorted n mid median
  mapfile -t sorted < <(printf '%s\n' "$@" | sort -n)
  n=${#sorted[@]}
  mid=$((n / 2))
  if ((n % 2 == 1)); then
    median=${sorted[$mid]}
  else
    median=$(((sorted[mid - 1] + sorted[mid]) / 2))
  fi
  printf '%12s %12s %12s' "$(fmt_ms "${sorted[0]}")" "$(fmt_ms "$median")" "$(fmt_ms "${sorted[n - 1]}")"
}
if ((DEMO_ROUNDS > 1)); then
  echo
  printf '%-36s %12s %12s %12s\n' "over $DEMO_ROUNDS rounds (ms)" min median max
  printf '%-36s %s\n' "graceful: SIGTERM -> promoted" "$(stats "${GRACEFUL[@]}")"
  printf '%-36s %s\n' "graceful: demoted -> promoted" "$(stats "${LIBRARY[@]}")"
  printf '%-36s %s\n' "crash: SIGKILL -> promoted" "$(stats "${CRASH[@]}")"
fi
