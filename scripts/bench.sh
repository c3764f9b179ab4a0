#!/usr/bin/env bash
# Measures wsproxy against a direct connection, nginx, HAProxy, Caddy and
# httputil.ReverseProxy, all on loopback in front of one gorilla/websocket
# echo backend (internal/loadtest). Each figure runs against every target in
# ROUNDS interleaved rounds; the report takes medians, checks the goals of
# issue 5 and draws a chart.
#
#   scripts/bench.sh            the table: about 7 minutes with the defaults
#   scripts/bench.sh profile    CPU and heap profiles of wsproxy under echo@50
#                               and with IDLE_CONNS idle tunnels
#
# Settings (environment):
#   ROUNDS=3 DURATION=3s WARMUP=500ms   rounds, measured and unmeasured time per run
#   ECHO_CONNS=50 IDLE_CONNS=5000        connections for echo and idle
#   SETTLE=2s                            idle: wait before reading memory
#   TARGETS="direct wsproxy nginx haproxy caddy rproxy"
#   PORT_BASE=9200                       echo, wsproxy, rproxy, nginx, haproxy, caddy, pprof: +0..+6
#   OUT=internal/loadtest/results        bench.md, bench.svg, results.jsonl
#   REV=<commit>                         build the library at that commit instead of the work tree
#   PROFILE_DIR=/tmp/wsproxy-profiles PROFILE_SECONDS=10   where and how long "profile" works
#
# Installs nginx-light, haproxy and caddy when missing (../shared/peers/peers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export GOFLAGS=${GOFLAGS:--buildvcs=false}

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3s}
WARMUP=${WARMUP:-500ms}
ECHO_CONNS=${ECHO_CONNS:-50}
IDLE_CONNS=${IDLE_CONNS:-5000}
SETTLE=${SETTLE:-2s}
TARGETS=${TARGETS:-direct wsproxy nginx haproxy caddy rproxy}
PORT_BASE=${PORT_BASE:-9200}
OUT=${OUT:-$root/internal/loadtest/results}
PEERS=${PEERS:-$root/../shared/peers/peers.sh}
PROFILE_DIR=${PROFILE_DIR:-/tmp/wsproxy-profiles}

declare -A port=(
  [direct]=$PORT_BASE [wsproxy]=$((PORT_BASE + 1)) [rproxy]=$((PORT_BASE + 2))
  [nginx]=$((PORT_BASE + 3)) [haproxy]=$((PORT_BASE + 4)) [caddy]=$((PORT_BASE + 5))
)
pprof_addr=127.0.0.1:$((PORT_BASE + 6))
backend=127.0.0.1:${port[direct]}

run=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-bench.XXXXXX")
bin=$run/bin
peers_run=$run/peers
declare -A pid=()

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

is_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_open() {
  for _ in $(seq 100); do is_open "$1" && return 0; sleep 0.05; done
  log "port $1 did not open"; return 1
}

wait_closed() {
  for _ in $(seq 100); do is_open "$1" || return 0; sleep 0.05; done
  log "port $1 is still open"; return 1
}

stop_one() {
  local name=$1
  if [ -n "${pid[$name]:-}" ]; then
    kill "${pid[$name]}" 2>/dev/null || true
    wait "${pid[$name]}" 2>/dev/null || true
    unset "pid[$name]"
  fi
}

peers_up=
stop_peers() {
  if [ -n "$peers_up" ]; then
    "$PEERS" stop "$peers_run" >/dev/null
    peers_up=
    for t in nginx haproxy caddy; do wait_closed "${port[$t]}" || true; done
  fi
}

cleanup() {
  stop_peers
  for name in "${!pid[@]}"; do stop_one "$name"; done
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build() {
  local src=$root
  if [ -n "${REV:-}" ]; then
    src=$run/src
    mkdir -p "$src"
    git archive "$REV" | tar -x -C "$src"
    rm -rf "$src/internal/loadtest"
    cp -r "$root/internal/loadtest" "$src/internal/loadtest"
    log "building the library at $REV"
  fi
  (cd "$src/internal/loadtest" && go build -o "$bin/" ./cmd/...)
}

start_echo() {
  "$bin/echo" -listen "$backend" &
  pid[echo]=$!
  wait_open "${port[direct]}"
}

# start_proxies starts wsproxy, rproxy and the peers afresh, so that memory
# figures never include what earlier runs left in a heap.
start_proxies() {
  local extra=("$@")
  stop_one wsproxy
  stop_one rproxy
  stop_peers
  wait_closed "${port[wsproxy]}"
  wait_closed "${port[rproxy]}"
  "$bin/wsproxy" -listen "127.0.0.1:${port[wsproxy]}" -target "ws://$backend" "${extra[@]}" &
  pid[wsproxy]=$!
  "$bin/rproxy" -listen "127.0.0.1:${port[rproxy]}" -target "http://$backend" &
  pid[rproxy]=$!
  if [[ " $TARGETS " =~ \ (nginx|haproxy|caddy)\  ]]; then
    NGINX_PORT=${port[nginx]} HAPROXY_PORT=${port[haproxy]} CADDY_PORT=${port[caddy]} \
      "$PEERS" start "$backend" "$peers_run" >/dev/null
    peers_up=1
  fi
  wait_open "${port[wsproxy]}"
  wait_open "${port[rproxy]}"
}

pids_of() {
  case $1 in
  wsproxy | rproxy) echo "${pid[$1]}" ;;
  *) cat "$peers_run/$1.pids" ;;
  esac
}

# load runs one figure against one target and appends its JSON line.
load() {
  local target=$1 round=$2
  shift 2
  local line
  if ! line=$("$bin/load" -target "$target" -round "$round" -url "ws://127.0.0.1:${port[$target]}/" "$@"); then
    log "$target $*: failed: $line"
  fi
  echo "$line" >>"$results"
  log "round $round $target $*: $line"
}

rotate() { # the targets, starting at the round's offset, so none is always first
  local -a ts=($TARGETS)
  local n=${#ts[@]} off=$(($1 % ${#ts[@]}))
  echo "${ts[@]:off}" "${ts[@]:0:off}"
}

bench() {
  mkdir -p "$OUT"
  results=$OUT/results.jsonl
  : >"$results"
  local dur=(-duration "$DURATION" -warmup "$WARMUP")
  for round in $(seq "$ROUNDS"); do
    start_proxies
    for t in $(rotate "$round"); do
      [ "$t" = direct ] && continue
      load "$t" "$round" -mode idle -conns "$IDLE_CONNS" -settle "$SETTLE" -pid "$(pids_of "$t")"
    done
    for mode in echo latency bulk handshake; do
      local conns=()
      [ "$mode" = echo ] && conns=(-conns "$ECHO_CONNS")
      for t in $(rotate "$round"); do
        local pidarg=()
        [ "$t" != direct ] && pidarg=(-pid "$(pids_of "$t")")
        load "$t" "$round" -mode "$mode" "${conns[@]}" "${dur[@]}" "${pidarg[@]}"
      done
    done
  done
  "$bin/report" -md "$OUT/bench.md" -svg "$OUT/bench.svg" "$results"
  printf '\nBuilt from %s, run %s on %s cores, ROUNDS=%s DURATION=%s WARMUP=%s.\n' \
    "${REV:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.go' 2>/dev/null || echo ' with uncommitted changes')}" \
    "$(date -u '+%F %H:%M UTC')" "$(nproc)" "$ROUNDS" "$DURATION" "$WARMUP" | tee -a "$OUT/bench.md"
  log "wrote $OUT/bench.md, $OUT/bench.svg and $results"
}

profile() {
  mkdir -p "$PROFILE_DIR"
  results=$PROFILE_DIR/results.jsonl
  : >"$results"
  TARGETS=wsproxy start_proxies -pprof "$pprof_addr"
  local secs=${PROFILE_SECONDS:-10}
  log "CPU profile of wsproxy under echo@$ECHO_CONNS for ${secs}s"
  curl -s -o "$PROFILE_DIR/cpu-echo.pprof" "http://$pprof_addr/debug/pprof/profile?seconds=$secs" &
  local curl_pid=$!
  load wsproxy 0 -mode echo -conns "$ECHO_CONNS" -duration "$((secs + 1))s" -warmup 0s -pid "${pid[wsproxy]}"
  wait "$curl_pid"
  curl -s -o "$PROFILE_DIR/allocs-echo.pprof" "http://$pprof_addr/debug/pprof/allocs"
  log "CPU profile of wsproxy under handshake load for ${secs}s"
  curl -s -o "$PROFILE_DIR/cpu-handshake.pprof" "http://$pprof_addr/debug/pprof/profile?seconds=$secs" &
  curl_pid=$!
  load wsproxy 0 -mode handshake -duration "$((secs + 1))s" -warmup 0s -pid "${pid[wsproxy]}"
  wait "$curl_pid"
  TARGETS=wsproxy start_proxies -pprof "$pprof_addr"
  log "heap profile of wsproxy with $IDLE_CONNS idle tunnels"
  local pp=http://$pprof_addr/debug/pprof
  load wsproxy 0 -mode idle -conns "$IDLE_CONNS" -settle "$SETTLE" -pid "${pid[wsproxy]}" -profile-dir "$PROFILE_DIR" \
    -profile "heap.pprof=$pp/heap?gc=1" -profile "heap.txt=$pp/heap?debug=1" -profile "goroutine.txt=$pp/goroutine?debug=1" \
    -profile "allocs.pprof=$pp/allocs"
  {
    echo "== CPU, echo@$ECHO_CONNS (flat)"
    go tool pprof -top -nodecount=30 "$bin/wsproxy" "$PROFILE_DIR/cpu-echo.pprof" 2>/dev/null
    echo "== CPU, echo@$ECHO_CONNS (cumulative)"
    go tool pprof -top -cum -nodecount=40 "$bin/wsproxy" "$PROFILE_DIR/cpu-echo.pprof" 2>/dev/null
    echo "== CPU, handshakes (cumulative)"
    go tool pprof -top -cum -nodecount=45 "$bin/wsproxy" "$PROFILE_DIR/cpu-handshake.pprof" 2>/dev/null
    echo "== allocations since start, echo@$ECHO_CONNS then handshakes (bytes)"
    go tool pprof -top -sample_index=alloc_space -nodecount=20 "$bin/wsproxy" "$PROFILE_DIR/allocs-echo.pprof" 2>/dev/null
    for phase in open echoed; do
      echo "== $IDLE_CONNS idle tunnels ($phase): live heap, runtime memory, goroutines"
      go tool pprof -top -sample_index=inuse_space -nodecount=25 "$bin/wsproxy" "$PROFILE_DIR/$phase-heap.pprof" 2>/dev/null
      grep -E '^# (HeapAlloc|HeapSys|HeapInuse|HeapIdle|HeapReleased|Stack|MSpan|Sys|NumGC) ' "$PROFILE_DIR/$phase-heap.txt" || true
      grep -E '^goroutine profile|^[0-9]+ @' "$PROFILE_DIR/$phase-goroutine.txt" | head -8 || true
      grep -A12 -E '^[0-9]{3,} @' "$PROFILE_DIR/$phase-goroutine.txt" | grep -E '^#' | head -24 || true
    done
    echo "== allocations while every idle tunnel echoed once (bytes)"
    go tool pprof -top -sample_index=alloc_space -nodecount=15 -diff_base "$PROFILE_DIR/open-allocs.pprof" \
      "$bin/wsproxy" "$PROFILE_DIR/echoed-allocs.pprof" 2>/dev/null
  } >"$PROFILE_DIR/summary.txt"
  cat "$PROFILE_DIR/summary.txt"
  log "profiles in $PROFILE_DIR (go tool pprof -http=: $PROFILE_DIR/cpu-echo.pprof)"
}

for t in direct wsproxy rproxy nginx haproxy caddy; do
  if is_open "${port[$t]}"; then log "port ${port[$t]} ($t) is in use: set PORT_BASE"; exit 1; fi
done
if is_open "${pprof_addr##*:}"; then log "port ${pprof_addr##*:} is in use: set PORT_BASE"; exit 1; fi
log "building into $bin"
build
start_echo
case ${1:-bench} in
bench) bench ;;
profile) profile ;;
*) sed -n '2,23p' "$0"; exit 2 ;;
esac
