#!/usr/bin/env bash
# The end-to-end tests drive Debian's Chromium through Playwright. Install it when missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "==> installing Debian's chromium for the browser tests"
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing and this user cannot apt-get install it; run: sudo apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
