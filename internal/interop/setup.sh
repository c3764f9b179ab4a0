#!/usr/bin/env bash
# Installs what the interop and browser tests need, when it is missing:
# Debian's chromium and python3-websockets, and the Node packages in node/
# (ws, playwright-core, socket.io, socket.io-client).
# Safe to run again; needs root (or sudo) only when something is missing.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

sudo_cmd=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd=(sudo -n); fi

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
/usr/bin/python3 -c 'import websockets' 2>/dev/null || missing+=(python3-websockets)
command -v node >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci is exact and fast when node_modules already matches the lock file.
npm_ci=false
for pkg in ws playwright-core socket.io socket.io-client; do
  [ -f "node/node_modules/$pkg/package.json" ] || npm_ci=true
done
[ node/package-lock.json -nt node/node_modules/.package-lock.json ] && npm_ci=true
if $npm_ci; then
  echo "setup: npm ci in node/"
  (cd node && npm ci --no-audit --no-fund --loglevel=error)
fi
