#!/usr/bin/env bash
# Runs every test of the project: the library (with -race), every nested
# module (interop matrix, browser tests, examples, load tool), the fuzz
# targets for a short time each, and the static checks. Installs what the
# tests need when it is missing (each nested module's setup.sh does its part).
#
#   scripts/test.sh            everything
#   FUZZTIME=60s scripts/test.sh   longer fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export GOFLAGS=${GOFLAGS:--buildvcs=false}

step() { printf '\n=== %s\n' "$*"; }

# Modules: the root one and every nested go.mod (examples, internal tools).
mapfile -t modules < <(find . -name go.mod -not -path './node_modules/*' -not -path '*/node_modules/*' -printf '%h\n' | sort)

for m in "${modules[@]}"; do
  if [ -x "$m/setup.sh" ]; then
    step "setup $m"
    "$m/setup.sh"
  fi
done

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go') 2>/dev/null || true)
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted"; exit 1; fi

# go test hides a passing package's output; the interop test also writes its
# client x backend matrix here so it can be shown.
export WSPROXY_INTEROP_REPORT="${TMPDIR:-/tmp}/wsproxy-interop-matrix.$$.txt"
export WSPROXY_SOAK_REPORT="${TMPDIR:-/tmp}/wsproxy-soak.$$.txt"
for m in "${modules[@]}"; do
  step "go vet + go test -race ($m)"
  (cd "$m" && go vet ./... && go test -race -count=1 -timeout 20m ./...)
done
# On Linux plain TCP tunnels run in event loops; the goroutine driver (TLS,
# HTTP/2 streams, other systems) gets the whole suite too, and its reactor.
step "library and engine again, with the goroutine driver forced"
WSPROXY_TEST_DRIVER=goroutine go test -race -count=1 -timeout 10m . ./internal/tunnel
step "library again, goroutine driver, with every idle pump parked in the reactor after 5ms"
WSPROXY_TEST_DRIVER=goroutine WSPROXY_TEST_PARK_AFTER=5ms go test -race -count=1 -timeout 10m .

if [ -s "$WSPROXY_SOAK_REPORT" ]; then
  step "soak and chaos summary"
  cat "$WSPROXY_SOAK_REPORT" && rm -f "$WSPROXY_SOAK_REPORT"
fi
if [ -s "$WSPROXY_INTEROP_REPORT" ]; then
  step "interop matrix"
  cat "$WSPROXY_INTEROP_REPORT" && rm -f "$WSPROXY_INTEROP_REPORT"
fi

if [ -x scripts/fuzz.sh ]; then
  step "fuzz"
  scripts/fuzz.sh
fi
if [ -x scripts/static.sh ]; then
  step "static checks"
  scripts/static.sh
fi
step "all tests passed"
