#!/usr/bin/env bash
# Runs the soak and chaos test (internal/soak) at full size, without the
# race detector: SOAK_TUNNELS tunnels through one proxy to four echo
# backends for SOAK_DURATION, with backends killed and restarted, target
# set changes, stalled clients and a final Shutdown. Prints the summary
# table (also written to WSPROXY_SOAK_REPORT when set). CI runs the same test,
# scaled for -race, as part of scripts/test.sh.
#
#   scripts/soak.sh                                  2000 tunnels, 120s
#   SOAK_TUNNELS=5000 SOAK_DURATION=10m SOAK_SEED=7 scripts/soak.sh
#
# Needs about 4 file descriptors per tunnel (ulimit -n).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export SOAK_TUNNELS=${SOAK_TUNNELS:-2000}
export SOAK_DURATION=${SOAK_DURATION:-120s}

need=$((SOAK_TUNNELS * 4 + 100))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || { echo "soak: ulimit -n is $(ulimit -n), $need needed" >&2; exit 1; }
fi
exec go test -count=1 -timeout 60m -run Soak -v ./internal/soak
