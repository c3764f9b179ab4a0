#!/usr/bin/env bash
# Installs what the README commands need when it is missing: curl (the
# metrics example scrapes with it). Safe to run again; needs root (or sudo)
# only to install.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if command -v curl >/dev/null; then
  exit 0
fi
sudo_cmd=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd=(sudo -n); fi
echo "setup: installing curl"
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
