#!/usr/bin/env bash
# Measures wsproxy against a direct connection, nginx, HAProxy, Caddy and
# httputil.ReverseProxy, all on loopback in front of one gorilla/websocket
# echo backend (internal/loadtest), once with plaintext fronts (ws://) and
# once with TLS in front (wss://, the target name with -tls; the backend
# stays plain). Each figure runs against every target in ROUNDS interleaved
# rounds; the report takes medians, reports the proxy's CPU per unit of work
# and memory per idle tunnel, checks the goals of issue 15 as ratios to the
# best peer and draws a chart.
#
#   scripts/bench.sh            the tables: about 15 minutes with the defaults
#   scripts/bench.sh profile    CPU and heap profiles of wsproxy under echo@50
#                               and handshakes (CPU sorted by where it goes:
#                               kernel, netpoller, scheduler, GC, wsproxy, ...)
#                               and with IDLE_CONNS idle tunnels
#
# Settings (environment):
#   ROUNDS=3 DURATION=3s WARMUP=500ms   rounds, measured and unmeasured time per run
#   ECHO_CONNS=50 IDLE_CONNS=5000        connections for echo and idle
#   SETTLE=2s                            idle: wait before reading memory
#   TARGETS="direct wsproxy nginx haproxy caddy rproxy
#            wsproxy-tls nginx-tls haproxy-tls caddy-tls rproxy-tls"
#   PORT_BASE=9200                       echo, wsproxy, rproxy, nginx, haproxy, caddy, pprof: +0..+6;
#                                        the -tls fronts of wsproxy, rproxy, nginx, haproxy, caddy: +11..+15
#   OUT=internal/loadtest/results        bench.md, bench.svg, results.jsonl
#   REV=<commit>                         build the library at that commit instead of the work tree
#   PROFILE_DIR=/tmp/wsproxy-profiles PROFILE_SECONDS=10   where and how long "profile" works
#   PROFILE_TARGET=wsproxy               or wsproxy-tls: profile the TLS front
#
# The TLS fronts serve one self-signed ECDSA P-256 certificate that cmd/tlscert
# writes into the run directory; the peers' TLS configs are the templates in
# internal/loadtest/peers-tls, run from the run directory as peers.sh runs its own.
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
TARGETS=${TARGETS:-direct wsproxy nginx haproxy caddy rproxy wsproxy-tls nginx-tls haproxy-tls caddy-tls rproxy-tls}
PORT_BASE=${PORT_BASE:-9200}
OUT=${OUT:-$root/internal/loadtest/results}
PEERS=${PEERS:-$root/../shared/peers/peers.sh}
PROFILE_DIR=${PROFILE_DIR:-/tmp/wsproxy-profiles}

declare -A port=(
  [direct]=$PORT_BASE [wsproxy]=$((PORT_BASE + 1)) [rproxy]=$((PORT_BASE + 2))
  [nginx]=$((PORT_BASE + 3)) [haproxy]=$((PORT_BASE + 4)) [caddy]=$((PORT_BASE + 5))
  [wsproxy-tls]=$((PORT_BASE + 11)) [rproxy-tls]=$((PORT_BASE + 12))
  [nginx-tls]=$((PORT_BASE + 13)) [haproxy-tls]=$((PORT_BASE + 14)) [caddy-tls]=$((PORT_BASE + 15))
)
pprof_addr=127.0.0.1:$((PORT_BASE + 6))
backend=127.0.0.1:${port[direct]}

run=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-bench.XXXXXX")
bin=$run/bin
peers_run=$run/peers
tls_run=$run/peers-tls
tls_templates=$root/internal/loadtest/peers-tls
cert=$run/cert.pem
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

# The TLS peers are started here, not by peers.sh (its configs are plaintext),
# the same way: nginx -c/-p and haproxy -D from the run directory, caddy run
# with its home there; the pids to watch go into $tls_run/NAME.pids.
tls_up=
start_tls_peers() {
  mkdir -p "$tls_run/nginx-body" "$tls_run/nginx-proxy"
  fill() {
    sed -e "s|@RUN@|$tls_run|g" -e "s|@BACKEND@|$backend|g" -e "s|@PORT@|$2|g" \
      -e "s|@CERT@|$cert|g" -e "s|@KEY@|$run/key.pem|g" -e "s|@PEM@|$run/cert+key.pem|g" \
      "$tls_templates/$1" >"$tls_run/$1"
  }
  tls_up=1
  if has nginx-tls; then
    fill nginx.conf "${port[nginx-tls]}"
    nginx -c "$tls_run/nginx.conf" -p "$tls_run/" 2>>"$tls_run/nginx.err"
  fi
  if has haproxy-tls; then
    fill haproxy.cfg "${port[haproxy-tls]}"
    haproxy -D -f "$tls_run/haproxy.cfg" 2>"$tls_run/haproxy.err"
  fi
  if has caddy-tls; then
    fill Caddyfile "${port[caddy-tls]}"
    HOME="$tls_run" XDG_DATA_HOME="$tls_run" XDG_CONFIG_HOME="$tls_run" \
      nohup caddy run --config "$tls_run/Caddyfile" --adapter caddyfile >"$tls_run/caddy.log" 2>&1 </dev/null &
    echo $! >"$tls_run/caddy.pid"
  fi
  for t in nginx haproxy caddy; do
    has "$t-tls" || continue
    wait_open "${port[$t-tls]}" || { cat "$tls_run/$t".{err,log} 2>/dev/null >&2; return 1; }
  done
  if has nginx-tls; then # the master opens the port before it forks its workers
    local master workers
    master=$(cat "$tls_run/nginx.pid")
    for _ in $(seq 100); do
      workers=$(pgrep -P "$master" | paste -sd, -) || true
      [ "$(echo "$workers" | tr , '\n' | grep -c .)" -ge "$(nproc)" ] && break
      sleep 0.05
    done
    echo "$master,$workers" >"$tls_run/nginx.pids"
  fi
  if has haproxy-tls; then cat "$tls_run/haproxy.pid" >"$tls_run/haproxy.pids"; fi
  if has caddy-tls; then cat "$tls_run/caddy.pid" >"$tls_run/caddy.pids"; fi
}

stop_tls_peers() {
  [ -n "$tls_up" ] || return 0
  for t in nginx haproxy caddy; do
    [ -f "$tls_run/$t.pid" ] && kill "$(cat "$tls_run/$t.pid")" 2>/dev/null || true
  done
  for t in nginx haproxy caddy; do
    has "$t-tls" && { wait_closed "${port[$t-tls]}" || true; }
    rm -f "$tls_run/$t.pid"
  done
  tls_up=
}

has() { [[ " $TARGETS " == *" $1 "* ]]; }

cleanup() {
  stop_peers
  stop_tls_peers
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
  "$bin/tlscert" -dir "$run"
}

start_echo() {
  "$bin/echo" -listen "$backend" &
  pid[echo]=$!
  wait_open "${port[direct]}"
}

# start_proxies starts wsproxy, rproxy and the peers afresh, so that memory
# figures never include what earlier runs left in a heap.
start_proxies() {
  local extra=("$@") t
  local tls=(-tls-cert "$cert" -tls-key "$run/key.pem")
  for t in wsproxy rproxy wsproxy-tls rproxy-tls; do stop_one "$t"; done
  stop_peers
  stop_tls_peers
  for t in wsproxy rproxy wsproxy-tls rproxy-tls; do wait_closed "${port[$t]}"; done
  if has wsproxy; then
    "$bin/wsproxy" -listen "127.0.0.1:${port[wsproxy]}" -target "ws://$backend" "${extra[@]}" &
    pid[wsproxy]=$!
  fi
  if has rproxy; then
    "$bin/rproxy" -listen "127.0.0.1:${port[rproxy]}" -target "http://$backend" &
    pid[rproxy]=$!
  fi
  if has wsproxy-tls; then
    "$bin/wsproxy" -listen "127.0.0.1:${port[wsproxy-tls]}" -target "ws://$backend" "${tls[@]}" "${extra[@]}" &
    pid[wsproxy-tls]=$!
  fi
  if has rproxy-tls; then
    "$bin/rproxy" -listen "127.0.0.1:${port[rproxy-tls]}" -target "http://$backend" "${tls[@]}" &
    pid[rproxy-tls]=$!
  fi
  if has nginx || has haproxy || has caddy; then
    NGINX_PORT=${port[nginx]} HAPROXY_PORT=${port[haproxy]} CADDY_PORT=${port[caddy]} \
      "$PEERS" start "$backend" "$peers_run" >/dev/null
    peers_up=1
  fi
  if has nginx-tls || has haproxy-tls || has caddy-tls; then
    start_tls_peers
  fi
  for t in wsproxy rproxy wsproxy-tls rproxy-tls; do
    if has "$t"; then wait_open "${port[$t]}"; fi
  done
}

pids_of() {
  case $1 in
  wsproxy | rproxy | wsproxy-tls | rproxy-tls) echo "${pid[$1]}" ;;
  *-tls) cat "$tls_run/${1%-tls}.pids" ;;
  *) cat "$peers_run/$1.pids" ;;
  esac
}

# url_of prints the load tool's flags that reach a target.
url_of() {
  case $1 in
  *-tls) echo "-url wss://127.0.0.1:${port[$1]}/ -ca $cert" ;;
  *) echo "-url ws://127.0.0.1:${port[$1]}/" ;;
  esac
}

# load runs one figure against one target and appends its JSON line.
load() {
  local target=$1 round=$2
  shift 2
  local line
  local url
  read -ra url <<<"$(url_of "$target")"
  if ! line=$("$bin/load" -target "$target" -round "$round" "${url[@]}" "$@"); then
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
  local load_start
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
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
        local pidarg=(-backend-pid "${pid[echo]}")
        [ "$t" != direct ] && pidarg+=(-pid "$(pids_of "$t")")
        load "$t" "$round" -mode "$mode" "${conns[@]}" "${dur[@]}" "${pidarg[@]}"
      done
    done
  done
  "$bin/report" -md "$OUT/bench.md" -svg "$OUT/bench.svg" "$results"
  printf '\nBuilt from %s, run %s on %s cores, ROUNDS=%s DURATION=%s WARMUP=%s IDLE_CONNS=%s; load average (1, 5, 15 min) %s at the start, %s at the end.\n' \
    "${REV:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.go' 2>/dev/null || echo ' with uncommitted changes')}" \
    "$(date -u '+%F %H:%M UTC')" "$(nproc)" "$ROUNDS" "$DURATION" "$WARMUP" "$IDLE_CONNS" \
    "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/bench.md"
  log "wrote $OUT/bench.md, $OUT/bench.svg and $results"
}

profile() {
  mkdir -p "$PROFILE_DIR"
  local t=${PROFILE_TARGET:-wsproxy}
  case $t in wsproxy | wsproxy-tls) ;; *) log "PROFILE_TARGET is wsproxy or wsproxy-tls"; exit 2 ;; esac
  results=$PROFILE_DIR/results.jsonl
  : >"$results"
  TARGETS=$t start_proxies -pprof "$pprof_addr"
  local secs=${PROFILE_SECONDS:-10}
  log "CPU profile of $t under echo@$ECHO_CONNS for ${secs}s"
  curl -s -o "$PROFILE_DIR/cpu-echo.pprof" "http://$pprof_addr/debug/pprof/profile?seconds=$secs" &
  local curl_pid=$!
  load "$t" 0 -mode echo -conns "$ECHO_CONNS" -duration "$((secs + 1))s" -warmup 0s -pid "${pid[$t]}"
  wait "$curl_pid"
  curl -s -o "$PROFILE_DIR/allocs-echo.pprof" "http://$pprof_addr/debug/pprof/allocs"
  log "CPU profile of $t under handshake load for ${secs}s"
  curl -s -o "$PROFILE_DIR/cpu-handshake.pprof" "http://$pprof_addr/debug/pprof/profile?seconds=$secs" &
  curl_pid=$!
  load "$t" 0 -mode handshake -duration "$((secs + 1))s" -warmup 0s -pid "${pid[$t]}"
  wait "$curl_pid"
  TARGETS=$t start_proxies -pprof "$pprof_addr"
  log "heap profile of $t with $IDLE_CONNS idle tunnels"
  local pp=http://$pprof_addr/debug/pprof
  load "$t" 0 -mode idle -conns "$IDLE_CONNS" -settle "$SETTLE" -pid "${pid[$t]}" -profile-dir "$PROFILE_DIR" \
    -profile "heap.pprof=$pp/heap?gc=1" -profile "heap.txt=$pp/heap?debug=1" -profile "goroutine.txt=$pp/goroutine?debug=1" \
    -profile "allocs.pprof=$pp/allocs"
  {
    for phase in echo handshake; do
      echo "== where the CPU goes, $phase (cmd/pprofsum: each sample to the first class its stack matches)"
      go tool pprof -traces "$bin/wsproxy" "$PROFILE_DIR/cpu-$phase.pprof" 2>/dev/null | "$bin/pprofsum"
    done
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

mode=${1:-bench}
case $mode in
bench | profile) ;;
*) sed -n '2,33p' "$0"; exit 2 ;;
esac
for t in "${!port[@]}"; do
  if is_open "${port[$t]}"; then log "port ${port[$t]} ($t) is in use: set PORT_BASE"; exit 1; fi
done
if is_open "${pprof_addr##*:}"; then log "port ${pprof_addr##*:} is in use: set PORT_BASE"; exit 1; fi
log "building into $bin"
build
start_echo
"$mode"
