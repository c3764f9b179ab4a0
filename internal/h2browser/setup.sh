#!/usr/bin/env bash
# Installs what the HTTP/2 browser test needs when it is missing: Debian's
# chromium. Safe to run again; needs root (or sudo) only to install.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
sudo_cmd=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd=(sudo -n); fi
echo "setup: installing chromium"
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
